//! A minimal 16-bit PCM WAV writer, enough to give tests real masters with known content.

use std::io::Write;
use std::path::Path;

/// Writes interleaved samples in [-1, 1] as 16-bit PCM.
pub fn write_wav(path: &Path, sample_rate: u32, channels: u16, samples: &[f32]) -> std::io::Result<()> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::File::create(path)?.write_all(&out)
}

/// A mono sine of `freq` Hz at `amplitude` (peak, linear) for `secs` seconds.
pub fn write_sine_wav(path: &Path, sample_rate: u32, secs: f32, freq: f32, amplitude: f32) -> std::io::Result<()> {
    let n = (sample_rate as f32 * secs) as usize;
    let samples: Vec<f32> =
        (0..n).map(|i| amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / sample_rate as f32).sin()).collect();
    write_wav(path, sample_rate, 1, &samples)
}
