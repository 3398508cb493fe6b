//! The analysis signal shared by `bpm` and `key`: downmixed and resampled once, onsets computed once.
//!
//! Tempo and key need neither stereo nor anything above ~5 kHz, and the whole derivative set has to
//! run at ≥ 70× real time, so both work on one mono signal at [`RATE`] (11025 Hz): a quarter of the
//! samples of a 44.1 kHz master. The pipeline builds an [`Analysis`] the first time `bpm` or `key`
//! is asked for and hands the same value to both.
//!
//! ```text
//!  Audio (any rate, interleaved) ─▶ downmix ─▶ windowed-sinc resample ─▶ mono @ 11025 Hz ──▶ key
//!                                                                          │ (8192-point STFT)
//!                                                                          ▼
//!                               512-point STFT, hop 128 ─▶ log-magnitude flux in 4 bands ─▶ bpm
//! ```
//!
//! The two renderers want different spectrograms (tempo wants 12 ms time resolution, key wants
//! 1.3 Hz bins to separate bass notes), so only the onset spectrogram lives here; `key` computes its
//! long-window STFT from [`Analysis::mono`] (a few milliseconds per minute of audio).

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::Audio;

/// Sample rate of the analysis signal in Hz.
pub const RATE: u32 = 11_025;
/// Onset STFT frame length (46 ms at [`RATE`]).
pub const ONSET_FRAME: usize = 512;
/// Onset STFT hop (11.6 ms at [`RATE`]): 86.13 novelty frames per second.
pub const ONSET_HOP: usize = 128;
/// Number of onset bands.
pub const BANDS: usize = 4;
/// Upper edges of the onset bands in Hz: kick, bass/low-mid, snare/clap body, hats and noise.
pub const BAND_EDGES_HZ: [f32; BANDS] = [150.0, 600.0, 2500.0, RATE as f32 / 2.0];

/// The shared analysis signal.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Mono PCM at `sample_rate` ([`RATE`]).
    pub mono: Vec<f32>,
    pub sample_rate: u32,
    /// Half-wave rectified log-magnitude spectral flux, one `[f32; BANDS]` per onset frame.
    /// Frame `i` describes the change at time `(i * ONSET_HOP + ONSET_FRAME / 2) / RATE` seconds.
    pub flux: Vec<[f32; BANDS]>,
    /// Duration of the original audio in seconds (read by the accuracy tool, through `synth`).
    #[cfg_attr(not(feature = "synth"), allow(dead_code))]
    pub duration_secs: f64,
}

impl Analysis {
    pub fn new(audio: &Audio) -> Self {
        let mono = resample(&downmix(audio), audio.sample_rate, RATE);
        let flux = onset_flux(&mono);
        Self { mono, sample_rate: RATE, flux, duration_secs: audio.duration_secs() }
    }

    /// Novelty frames per second.
    pub fn frame_rate(&self) -> f64 {
        f64::from(self.sample_rate) / ONSET_HOP as f64
    }
}

fn downmix(audio: &Audio) -> Vec<f32> {
    let ch = usize::from(audio.channels.max(1));
    let scale = 1.0 / ch as f32;
    audio.samples.chunks_exact(ch).map(|f| f.iter().sum::<f32>() * scale).collect()
}

/// Zero crossings of the sinc kernel on each side (at the lower of the two rates).
const SINC_ZEROS: usize = 6;
/// Fractional positions tabulated per input sample (kernel phases); positions are rounded to these.
const PHASES: usize = 64;

/// Band-limited resampling with a Blackman-windowed sinc, cut off at 0.45 of the lower rate.
///
/// The kernel is tabulated at [`PHASES`] fractional positions, so each output sample is one short
/// dot product; for 44.1 kHz → 11025 Hz the phase is always 0 and the table is exact.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || from == 0 || to == 0 || input.is_empty() {
        return input.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to); // input samples per output sample
    let scale = ratio.max(1.0); // kernel stretch when decimating
    let cutoff = 0.9 / (2.0 * scale); // cycles per input sample
    let half = (SINC_ZEROS as f64 * scale).ceil() as usize;
    let taps = 2 * half;
    // table[p * taps + k] = h(k - half + 1 - p / PHASES)
    let mut table = vec![0.0f32; PHASES * taps];
    for p in 0..PHASES {
        let frac = p as f64 / PHASES as f64;
        let row = &mut table[p * taps..(p + 1) * taps];
        let mut sum = 0.0;
        for (k, h) in row.iter_mut().enumerate() {
            let t = k as f64 - half as f64 + 1.0 - frac;
            let x = 2.0 * cutoff * t;
            let sinc =
                if x.abs() < 1e-12 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
            let w_pos = (t + half as f64) / (2.0 * half as f64); // 0..1 across the kernel
            let w = if (0.0..=1.0).contains(&w_pos) {
                let a = std::f64::consts::TAU * w_pos;
                0.42 - 0.5 * a.cos() + 0.08 * (2.0 * a).cos()
            } else {
                0.0
            };
            let v = sinc * w;
            *h = v as f32;
            sum += v;
        }
        // Unity DC gain per phase.
        if sum.abs() > 1e-12 {
            row.iter_mut().for_each(|h| *h = (f64::from(*h) / sum) as f32);
        }
    }
    // Exact integer arithmetic: 96,000 samples at 48 kHz are 22,050 at 11,025 Hz, not 22,049.
    let out_len = (input.len() as u128 * u128::from(to) / u128::from(from)) as usize;
    let mut out = Vec::with_capacity(out_len);
    let n = input.len() as isize;
    for j in 0..out_len {
        let pos = j as f64 * ratio;
        let mut base = pos.floor() as isize;
        let mut p = ((pos - base as f64) * PHASES as f64).round() as usize;
        if p == PHASES {
            p = 0;
            base += 1;
        }
        let row = &table[p * taps..(p + 1) * taps];
        let first = base - half as isize + 1;
        let acc = if first >= 0 && first + taps as isize <= n {
            let start = first as usize;
            row.iter().zip(&input[start..start + taps]).map(|(h, x)| h * x).sum()
        } else {
            let mut acc = 0.0f32;
            for (k, h) in row.iter().enumerate() {
                let i = first + k as isize;
                if (0..n).contains(&i) {
                    acc += h * input[i as usize];
                }
            }
            acc
        };
        out.push(acc);
    }
    out
}

/// Reusable real FFT with its buffers: planned once, no allocation per frame.
pub(crate) struct Stft {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl Stft {
    pub(crate) fn new(frame: usize) -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(frame);
        let window =
            (0..frame).map(|i| (0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / frame as f64).cos()) as f32).collect();
        let input = fft.make_input_vec();
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        Self { fft, window, input, spectrum, scratch }
    }

    /// Windows `frame` (zero-padded if short) and returns its spectrum (`frame/2 + 1` bins).
    pub(crate) fn process(&mut self, frame: &[f32]) -> &[Complex<f32>] {
        let n = frame.len().min(self.input.len());
        for ((x, &s), &w) in self.input.iter_mut().zip(&frame[..n]).zip(&self.window) {
            *x = s * w;
        }
        self.input[n..].iter_mut().for_each(|x| *x = 0.0);
        // Lengths come from the plan itself, so this cannot fail; keep silence if it ever did.
        if self.fft.process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch).is_err() {
            self.spectrum.iter_mut().for_each(|c| *c = Complex::new(0.0, 0.0));
        }
        &self.spectrum
    }
}

/// Log-magnitude spectral flux per band. Log compression (`ln(1 + 1000·|X|)`) makes a hat as
/// visible as a kick and a quiet intro as visible as a drop; half-wave rectification keeps onsets.
fn onset_flux(mono: &[f32]) -> Vec<[f32; BANDS]> {
    let bins = ONSET_FRAME / 2 + 1;
    let hz_per_bin = RATE as f32 / ONSET_FRAME as f32;
    let band_of: Vec<usize> = (0..bins)
        .map(|b| {
            let f = b as f32 * hz_per_bin;
            BAND_EDGES_HZ.iter().position(|&e| f < e).unwrap_or(BANDS - 1)
        })
        .collect();
    let frames = if mono.len() >= ONSET_FRAME { (mono.len() - ONSET_FRAME) / ONSET_HOP + 1 } else { 1 };
    let mut stft = Stft::new(ONSET_FRAME);
    let mut prev = vec![0.0f32; bins];
    let mut flux = Vec::with_capacity(frames);
    for i in 0..frames {
        let start = (i * ONSET_HOP).min(mono.len());
        let end = (start + ONSET_FRAME).min(mono.len());
        let spectrum = stft.process(&mono[start..end]);
        let mut f = [0.0f32; BANDS];
        // Skip DC and the first bin (rumble).
        for b in 1..bins {
            let c = spectrum[b];
            let m = (1.0 + 1000.0 * (c.re * c.re + c.im * c.im).sqrt()).ln();
            let d = m - prev[b];
            if d > 0.0 && i > 0 {
                f[band_of[b]] += d;
            }
            prev[b] = m;
        }
        flux.push(f);
    }
    flux
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f64, secs: f64) -> Vec<f32> {
        (0..(f64::from(rate) * secs) as usize)
            .map(|i| (std::f64::consts::TAU * hz * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    }

    /// Slow reference: the amplitude of `hz` in `x` by direct correlation.
    fn amplitude(x: &[f32], rate: u32, hz: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            let a = std::f64::consts::TAU * hz * i as f64 / f64::from(rate);
            re += f64::from(s) * a.cos();
            im += f64::from(s) * a.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn resampling_keeps_passband_and_removes_aliases() {
        for from in [44_100u32, 48_000, 22_050, 8_000] {
            let x = sine(from, 440.0, 2.0);
            let y = resample(&x, from, RATE);
            let expected_len = (x.len() as f64 * f64::from(RATE) / f64::from(from)).floor() as usize;
            assert_eq!(y.len(), expected_len, "from {from}");
            let a = amplitude(&y[2000..y.len() - 2000], RATE, 440.0);
            assert!((a - 1.0).abs() < 0.02, "from {from}: 440 Hz amplitude {a}");
        }
        // 9 kHz at 44.1 kHz would alias to 2025 Hz at 11025 Hz.
        let x = sine(44_100, 9000.0, 2.0);
        let y = resample(&x, 44_100, RATE);
        let alias = amplitude(&y[2000..y.len() - 2000], RATE, 2025.0);
        assert!(alias < 0.01, "alias amplitude {alias}");
    }

    #[test]
    fn onsets_land_in_their_bands_at_their_times() {
        // Kicks every 0.5 s (a 60 Hz tone with a fast attack and an exponential decay, as a bass
        // drum sounds): flux in the kick band at 2 Hz. A gated tone that stops dead would also
        // (rightly) show an onset where it stops.
        let mut x = vec![0.0f32; RATE as usize * 4];
        for k in 0..8 {
            let s = k * RATE as usize / 2;
            for i in 0..3000 {
                let env = (-(i as f64) / 600.0).exp();
                x[s + i] = (env * (std::f64::consts::TAU * 60.0 * i as f64 / f64::from(RATE)).sin()) as f32;
            }
        }
        let flux = onset_flux(&x);
        let fps = f64::from(RATE) / ONSET_HOP as f64;
        // The strongest kick-band frame near each kick, and how far apart those frames are.
        let strongest: Vec<usize> = (1..8usize)
            .map(|k| {
                let centre = k as f64 * 0.5 * fps;
                let (lo, hi) = ((centre - 0.2 * fps) as usize, ((centre + 0.2 * fps) as usize).min(flux.len()));
                (lo..hi).max_by(|&a, &b| flux[a][0].total_cmp(&flux[b][0])).expect("a window")
            })
            .collect();
        for w in strongest.windows(2) {
            let dt = (w[1] - w[0]) as f64 / fps;
            assert!((dt - 0.5).abs() < 0.03, "kick onsets {dt} s apart: {strongest:?}");
        }
        // Each lands within a frame or two of its kick (frame time = hop·i + frame/2).
        for (k, &i) in (1..8).zip(&strongest) {
            let t = (i * ONSET_HOP + ONSET_FRAME / 2) as f64 / f64::from(RATE);
            assert!((t - k as f64 * 0.5).abs() < 0.03, "kick {k} at {t} s");
        }
        // In the kick band the onsets stand far above the band's average (bands differ in width,
        // so each is judged against itself; `bpm` normalises them the same way).
        let mean = flux.iter().map(|f| f[0]).sum::<f32>() / flux.len() as f32;
        for &i in &strongest {
            assert!(flux[i][0] > 5.0 * mean, "onset {} vs mean {mean}", flux[i][0]);
        }
    }
}
