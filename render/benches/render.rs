//! Criterion figures for the render core: decode, loudness and waveform on one minute of
//! 16-bit stereo 44.1 kHz audio (the shape of the catalog's masters).
//!
//! `cargo bench -p kiln-render --bench render` (add `-- --quick` for a fast look). Throughput is
//! reported in bytes of master (decode) and in frames of audio (renderers), so
//! `time per iteration ÷ 60` is the CPU seconds per minute of audio that docs/benchmarks.md
//! records.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_render::{decode, Audio, DecodeLimits, Pipeline, PipelineConfig};

const RATE: u32 = 44_100;
const SECONDS: usize = 60;

/// A deterministic, music-like test signal: a decaying 55 Hz kick every 0.5 s, a chord of three
/// partials, and noise, so no renderer sees an easy constant.
fn minute() -> Audio {
    let frames = RATE as usize * SECONDS;
    let mut samples = Vec::with_capacity(frames * 2);
    let mut noise: u32 = 0x1234_5678;
    for i in 0..frames {
        let t = i as f32 / RATE as f32;
        let beat = t % 0.5;
        let kick = (std::f32::consts::TAU * 55.0 * t).sin() * (-beat * 12.0).exp() * 0.6;
        let chord: f32 = [220.0f32, 277.18, 329.63].iter().map(|f| (std::f32::consts::TAU * f * t).sin() * 0.08).sum();
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let hiss = (noise as f32 / u32::MAX as f32 - 0.5) * 0.05;
        samples.push(kick + chord + hiss);
        samples.push(kick + chord - hiss);
    }
    Audio { sample_rate: RATE, channels: 2, samples }
}

fn benches(c: &mut Criterion) {
    let audio = minute();
    let wav = audio.to_wav();
    let audio = decode(&wav, Some("wav"), &DecodeLimits::default()).expect("the bench signal decodes");
    let pipeline =
        Pipeline::new(PipelineConfig { limits: DecodeLimits::default(), artwork_sizes: vec![1400, 500, 250] });

    let mut group = c.benchmark_group("render-60s-stereo-44k1");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(wav.len() as u64));
    group.bench_function("decode", |b| b.iter(|| decode(black_box(&wav), Some("wav"), &DecodeLimits::default())));
    group.throughput(Throughput::Elements(audio.frames() as u64));
    // The renderers are private to the crate; the pipeline times each one itself, so the
    // figures below are the pipeline's own per-renderer micros (decode excluded).
    for renderer in ["loudness", "waveform"] {
        group.bench_function(renderer, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let report = pipeline.run(black_box(&wav), Some("wav"), &[renderer]).expect("renders");
                    total += report.outputs.iter().map(|o| Duration::from_micros(o.micros)).sum::<Duration>();
                }
                total
            })
        });
    }
    group.bench_function("decode+loudness+waveform", |b| {
        b.iter(|| pipeline.run(black_box(&wav), Some("wav"), &["loudness", "waveform"]).map(|r| r.outputs.len()))
    });
    group.finish();
}

criterion_group!(render, benches);
criterion_main!(render);
