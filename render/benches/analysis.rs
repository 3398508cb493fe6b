//! CPU cost of the analysis renderers and of the whole derivative set, on one synthesized minute
//! of dance music (44.1 kHz stereo, the shape of the catalog's masters).
//!
//! ```sh
//! cargo bench -p kiln-render --features synth --bench analysis
//! ```
//! One iteration is one minute of audio, so the figures read directly as CPU seconds per minute.
//! They are the bench thread's own CPU time (Linux schedstat), not wall clock: on a shared
//! 2-core machine, wall clock would count the other processes' turns too.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_render::synth::{self, measure, Key, TrackSpec};
use kiln_render::{DecodeLimits, Pipeline, PipelineConfig};

fn minute() -> kiln_render::Audio {
    synth::track(&TrackSpec { bpm: 126.0, key: Key::new(9, true), seconds: 60.0, seed: 42 })
}

/// CPU time of the calling thread (first field of /proc/thread-self/schedstat, in ns).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .map(Duration::from_nanos)
        .expect("Linux /proc/thread-self/schedstat")
}

/// Times `f` in thread CPU.
fn cpu<R>(iters: u64, mut f: impl FnMut() -> R) -> Duration {
    let start = thread_cpu();
    for _ in 0..iters {
        black_box(f());
    }
    thread_cpu() - start
}

fn analysis(c: &mut Criterion) {
    let audio = minute();
    let wav = audio.to_wav();
    let prepared = measure::Analysis::new(&audio);
    let pipeline = Pipeline::new(PipelineConfig { limits: DecodeLimits::default(), artwork_sizes: Vec::new() });

    let mut g = c.benchmark_group("cpu_per_minute_of_audio");
    g.sample_size(10);
    g.bench_function("analysis_signal", |b| b.iter_custom(|n| cpu(n, || measure::Analysis::new(black_box(&audio)))));
    g.bench_function("bpm", |b| b.iter_custom(|n| cpu(n, || measure::tempo(black_box(&prepared)).is_ok())));
    g.bench_function("key", |b| b.iter_custom(|n| cpu(n, || measure::key(black_box(&prepared)).is_ok())));
    for (name, renderers) in [
        ("decode+bpm+key", &["bpm", "key"][..]),
        ("decode+bpm+key+loudness+waveform", &["bpm", "key", "loudness", "waveform"][..]),
        ("whole_set_with_aac128", &["bpm", "key", "loudness", "waveform", "aac128"][..]),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| cpu(n, || pipeline.run(black_box(&wav), Some("wav"), renderers).is_ok()))
        });
    }
    g.finish();
}

criterion_group!(benches, analysis);
criterion_main!(benches);
