//! `aac128` cost: encode + mux 60 s of stereo 44.1 kHz (fdk-aac, afterburner on, 128 kb/s CBR).
//! Criterion's time per iteration is CPU seconds per minute of audio (single-threaded encoder).
//!
//! `cargo bench -p kiln-render --bench aac`
//!
//! Environment, for comparing with other encoders on one file (docs/benchmarks.md):
//! - `KILN_AAC_WRITE_WAV=path`: write the synthesized 60 s signal as 16-bit WAV and exit;
//! - `KILN_AAC_WAV=path`: encode that WAV instead of the synthesized signal;
//! - `KILN_AAC_CPU=n`: skip criterion, encode `n` times and print the thread's CPU seconds per run.

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../src/aac/mod.rs"]
mod aac;

use std::f32::consts::TAU;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use kiln_render::{Audio, Error, OutputFile, Rendered};

/// Music-like test signal: a chord progression with harmonics, a bass line, noisy hats and a kick,
/// so the encoder has transients and a full spectrum to work on (pure tones would flatter it).
fn music(sample_rate: u32, seconds: u32) -> Audio {
    let frames = (sample_rate * seconds) as usize;
    let mut samples = Vec::with_capacity(frames * 2);
    let mut noise: u32 = 0x1234_5678;
    let beat = sample_rate as f32 * 60.0 / 124.0;
    for i in 0..frames {
        let t = i as f32 / sample_rate as f32;
        let bar = (i as f32 / (beat * 4.0)) as usize % 4;
        let root = [220.0f32, 174.61, 261.63, 196.0][bar];
        let chord: f32 = [1.0f32, 1.26, 1.5]
            .iter()
            .map(|r| (1..4).map(|h| (TAU * root * r * h as f32 * t).sin() / h as f32).sum::<f32>())
            .sum::<f32>()
            / 6.0;
        let bass = (TAU * root / 4.0 * t).sin();
        let in_beat = (i as f32 % beat) / sample_rate as f32;
        let kick = (TAU * (50.0 + 100.0 * (-in_beat * 30.0).exp()) * in_beat).sin() * (-in_beat * 8.0).exp();
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let white = noise as f32 / u32::MAX as f32 * 2.0 - 1.0;
        let off = ((i as f32 + beat / 2.0) % beat) / sample_rate as f32;
        let hat = white * (-off * 60.0).exp();
        let mid = 0.3 * chord + 0.25 * bass + 0.35 * kick;
        samples.push(mid + 0.12 * hat);
        samples.push(0.9 * mid + 0.1 * hat + 0.05 * (TAU * 2.0 * root * t).sin());
    }
    Audio { sample_rate, channels: 2, samples }
}

/// The benchmark input: `KILN_AAC_WAV` decoded, or the synthesized minute.
fn input() -> Audio {
    match std::env::var_os("KILN_AAC_WAV") {
        Some(path) => read_wav(&std::fs::read(path).expect("read KILN_AAC_WAV")),
        None => music(44_100, 60),
    }
}

fn read_wav(bytes: &[u8]) -> Audio {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::io::MediaSourceStream;
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes.to_vec())), Default::default());
    let mut hint = symphonia::core::probe::Hint::new();
    hint.with_extension("wav");
    let mut format = symphonia::default::get_probe()
        .format(&hint, mss, &Default::default(), &Default::default())
        .expect("a WAV file")
        .format;
    let params = format.default_track().expect("a track").codec_params.clone();
    let mut decoder = symphonia::default::get_codecs().make(&params, &Default::default()).expect("PCM decoder");
    let (mut samples, mut sample_rate, mut channels) = (Vec::new(), 0, 0);
    while let Ok(packet) = format.next_packet() {
        let decoded = decoder.decode(&packet).expect("decodes");
        sample_rate = decoded.spec().rate;
        channels = decoded.spec().channels.count() as u16;
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, *decoded.spec());
        buf.copy_interleaved_ref(decoded);
        samples.extend_from_slice(buf.samples());
    }
    Audio { sample_rate, channels, samples }
}

fn write_wav(audio: &Audio, path: &std::ffi::OsStr) {
    let data_len = (audio.samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    let block = audio.channels * 2;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&audio.channels.to_le_bytes());
    out.extend_from_slice(&audio.sample_rate.to_le_bytes());
    out.extend_from_slice(&(audio.sample_rate * u32::from(block)).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &x in &audio.samples {
        out.extend_from_slice(&((x * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, out).expect("write WAV");
}

/// CPU time of the calling thread (Linux: first field of /proc/thread-self/schedstat, in ns).
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    stat.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()).expect("schedstat ns") / 1e9
}

fn bench(c: &mut Criterion) {
    let audio = input();
    let mut group = c.benchmark_group("aac128");
    group.sample_size(10).measurement_time(Duration::from_secs(40)).warm_up_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(audio.frames() as u64));
    group.bench_function("encode_60s_stereo_44k1", |b| {
        b.iter(|| {
            let rendered: Result<Rendered, Error> = aac::render(black_box(&audio));
            let files: Vec<OutputFile> = rendered.expect("renders").files;
            black_box(files)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Some(path) = std::env::var_os("KILN_AAC_WRITE_WAV") {
        write_wav(&music(44_100, 60), &path);
        return;
    }
    if let Some(runs) = std::env::var("KILN_AAC_CPU").ok().and_then(|n| n.parse::<usize>().ok()) {
        let audio = input();
        let minutes = audio.duration_secs() / 60.0;
        for _ in 0..runs {
            let before = thread_cpu_secs();
            let rendered = aac::render(&audio).expect("renders");
            let cpu = thread_cpu_secs() - before;
            println!(
                "aac128: {:.3} CPU s for {:.2} min of audio = {:.3} CPU s/min, {} bytes",
                cpu,
                minutes,
                cpu / minutes,
                rendered.files[0].bytes.len()
            );
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
