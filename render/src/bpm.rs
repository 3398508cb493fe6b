//! `bpm`: the tempo of a track to 0.1 BPM, with a confidence and the phase of the beat grid.
//!
//! DJs beat-match by ear within about ±0.5 BPM, and electronic music is made on a constant-tempo
//! grid, so the estimate is a *whole-track* fit rather than a median of local tempi:
//!
//! ```text
//!  Analysis.flux (4 bands, 86 fps) ─▶ detrend + normalise per band ─▶ novelty n(t)
//!    ─▶ autocorrelation A(τ) ─▶ comb salience S(bpm) = mean A(k·τ), k=1..4   (coarse, 50–230 BPM)
//!    ─▶ metrical level: S, a log-normal prior, the backbeat of the snare band and how the beat
//!       subdivides pick among {½, ⅔, 1, 3⁄2, 2}× the comb peak
//!    ─▶ beat-grid fit: maximise Σₕ |Σₜ n(t)·e^(−2πi·h·t·bpm/60)| (h = 1..4) over ±2 % (0.005 BPM steps)
//! ```
//!
//! **Octave errors.** A four-on-the-floor loop is just as periodic at 64 as at 128 BPM, so the
//! autocorrelation alone cannot choose the metrical level. Two pieces of evidence decide it, and
//! neither is a hard clamp (any tempo in 50–230 BPM can be reported):
//! - a prior on tempo: log-normal, centred on [`PRIOR_CENTRE_BPM`] with [`PRIOR_OCTAVES`] octaves
//!   of standard deviation — broad enough that 75 BPM hip-hop and 174 BPM drum & bass are
//!   reachable, narrow enough to break ties the way dance-music charts annotate tempo;
//! - the backbeat: in almost all 4/4 popular music the snare or clap returns every *two* beats
//!   (beats 2 and 4). The snare-band autocorrelation at two beats, minus its value at one and three
//!   beats, is large at the annotated level and near zero at half or double it. This is what puts
//!   drum & bass at 174 rather than 87, and a 75 BPM hip-hop groove at 75 rather than 150. It only
//!   counts at a tempo whose beat the onsets themselves repeat at: a dense snare band (8th-note
//!   claps and hats) is anti-correlated at an off-grid lag such as 2¼ beats and correlated at twice
//!   it, which looks like a backbeat at a tempo that is no beat at all.
//!
//! **Two-thirds errors.** Syncopated grooves (the 3-3-2 of reggaeton's dembow, the kick of a
//! drum & bass two-step falling 1½ beats after the last) put strong onsets a dotted beat apart, so
//! ⅔ of the tempo is a strong periodicity too, and the prior, centred on 120 BPM, favours it for
//! the fastest tracks: 180 BPM was read as 120. What tells them apart is how the beat
//! *subdivides*. Dance and popular music divide the beat in two (8ths, 16ths): at the true tempo
//! the onsets repeat at half a beat. A dotted beat read as the beat divides in *three* instead (its
//! third is the true 8th note; its half falls between the 16ths). A level pays for that in
//! proportion to how much more the onsets repeat at a third of its beat than at a half
//! ([`TERNARY_SUBDIVISION_WEIGHT`]). The assumption is duple subdivision; music in a true triplet
//! feel (12/8, a hard shuffle) may see its beat moved by an octave, never to a ⅔ level.

use realfft::num_complex::Complex;
use realfft::RealFftPlanner;
use serde_json::json;

use crate::analysis::{Analysis, BANDS};
use crate::meter;
use crate::{Error, Rendered};

/// Centre of the tempo prior (BPM).
pub const PRIOR_CENTRE_BPM: f64 = 120.0;
/// Standard deviation of the tempo prior, in octaves.
pub const PRIOR_OCTAVES: f64 = 0.8;
/// Range searched for the tempo (BPM). Beyond it, the metrical level above or below is reported.
pub const MIN_BPM: f64 = 50.0;
pub const MAX_BPM: f64 = 230.0;
/// Weight of each onset band in the novelty: kick, low-mid, snare, hats. Hats are light because
/// 16th hats would otherwise pull the estimate towards double tempo.
const BAND_WEIGHTS: [f32; BANDS] = [1.0, 0.6, 0.8, 0.3];
/// Snare band used for the backbeat.
const SNARE_BAND: usize = 2;
/// Shortest input with a meaningful tempo (seconds).
const MIN_SECONDS: f64 = 4.0;

/// A tempo estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Tempo {
    /// Beats per minute (to 0.01 BPM; the metadata carries it to 0.1).
    pub bpm: f64,
    /// 0..1: how periodic the onsets are, times how clearly one metrical level won.
    pub confidence: f64,
    /// Time of the first beat of the fitted grid, in seconds from the start.
    pub first_beat_secs: f64,
}

/// Metadata `{"bpm", "bpm_precise", "confidence", "first_beat_secs"}`. Audio without a measurable
/// tempo (too short, no onsets: a drone, speech) is an answer, not a failure: `bpm` is null and
/// `reason` says why, so one ambient track in a batch does not dead-letter its other renderers.
pub fn render(signal: &Analysis) -> Result<Rendered, Error> {
    let tempo = match estimate(signal) {
        Ok(tempo) => tempo,
        Err(Error::Unsupported { reason, .. }) => {
            return Ok(Rendered {
                metadata: json!({ "bpm": null, "confidence": 0.0, "reason": reason }),
                files: Vec::new(),
            })
        }
        Err(other) => return Err(other),
    };
    Ok(Rendered {
        metadata: json!({
            "bpm": (tempo.bpm * 10.0).round() / 10.0,
            "bpm_precise": (tempo.bpm * 100.0).round() / 100.0,
            "confidence": (tempo.confidence * 1000.0).round() / 1000.0,
            "first_beat_secs": (tempo.first_beat_secs * 1000.0).round() / 1000.0,
        }),
        files: Vec::new(),
    })
}

/// Estimates the tempo of the analysis signal.
pub fn estimate(signal: &Analysis) -> Result<Tempo, Error> {
    let fps = signal.frame_rate();
    let frames = signal.flux.len();
    if (frames as f64) < MIN_SECONDS * fps {
        return Err(unsupported(format!(
            "{:.1} s of audio is too short for a tempo (at least {MIN_SECONDS} s)",
            frames as f64 / fps
        )));
    }
    let o = Onsets::new(signal);
    if o.novelty.iter().all(|&v| v <= 0.0) {
        return Err(unsupported("no onsets: the audio has no rhythm to measure".into()));
    }
    let coarse = o.comb_peak();

    // Metrical level among ½, ⅔, 1, 3⁄2 and 2 times the comb peak (see `meter`).
    let levels = o.level_candidates(coarse);
    let scores: Vec<f64> = levels.iter().map(|(_, e)| e.score()).collect();
    let chosen = levels.iter().zip(&scores).max_by(|a, b| a.1.total_cmp(b.1)).map_or(coarse, |((bpm, _), _)| *bpm);
    let level_probability = meter::winner_probability(&scores);
    let novelty = o.novelty;

    // Whole-track beat-grid fit around the chosen level.
    let mean = novelty.iter().sum::<f32>() / frames as f32;
    let centred: Vec<f32> = novelty.iter().map(|v| v - mean).collect();
    let grid = |bpm: f64| grid_fit(&centred, bpm / 60.0 / fps);
    let (mut best_bpm, mut best_fit) = (chosen, f64::MIN);
    for (step, span) in [(0.05, chosen * 0.02), (0.005, 0.06)] {
        let centre = best_bpm;
        let n = (span / step).round() as i64;
        for i in -n..=n {
            let b = centre + i as f64 * step;
            let f = grid(b).0;
            if f > best_fit {
                best_fit = f;
                best_bpm = b;
            }
        }
    }
    let (_, fundamental) = grid(best_bpm);
    let period = 60.0 / best_bpm;
    // Phase of the fundamental → time of a beat, then the first one after 0.
    let frame_offset = crate::analysis::ONSET_FRAME as f64 / 2.0 / f64::from(signal.sample_rate);
    let beat_time = (-fundamental.arg() / std::f64::consts::TAU) * period + frame_offset;
    let first_beat_secs = beat_time.rem_euclid(period);

    let total: f64 = centred.iter().map(|v| f64::from(v.abs())).sum::<f64>().max(1e-9);
    let periodicity = (2.0 * fundamental.norm() / total).clamp(0.0, 1.0);
    let confidence = (periodicity.sqrt() * level_probability).clamp(0.0, 1.0);
    Ok(Tempo { bpm: best_bpm, confidence, first_beat_secs })
}

/// The onset novelty and the autocorrelations a metrical level is judged by.
struct Onsets {
    novelty: Vec<f32>,
    all: Vec<f32>,
    snare: Vec<f32>,
    /// Kick and bass bands: where a bass line's beat is.
    low: Vec<f32>,
    /// How little the snare band coincides with the kick (0..1).
    distinct: f64,
    fps: f64,
}

impl Onsets {
    fn new(signal: &Analysis) -> Self {
        let fps = signal.frame_rate();
        let frames = signal.flux.len();
        let bands = normalised_bands(&signal.flux, fps);
        let novelty: Vec<f32> = (0..frames).map(|t| (0..BANDS).map(|b| BAND_WEIGHTS[b] * bands[b][t]).sum()).collect();
        let max_lag = (4.0 * 60.0 / MIN_BPM * fps).ceil() as usize + 2;
        let mut acf = Autocorrelation::new(frames);
        let all = acf.compute(&novelty, max_lag);
        // Snares and claps are broadband noise: onsets present in both the snare and the hat band at
        // once (geometric mean). Tonal onsets (arps, stabs, chord changes) are mostly in one.
        let snare_onsets: Vec<f32> =
            bands[SNARE_BAND].iter().zip(&bands[SNARE_BAND + 1]).map(|(a, b)| (a * b).sqrt()).collect();
        let snare = acf.compute(&snare_onsets, max_lag);
        // A backbeat is a *second instrument* returning every two beats. When the snare band only
        // echoes the kick (the click of a kick drum, a click track), its "every two half-beats"
        // pattern is the kick's own pulse and must not double the tempo: weigh the backbeat by how
        // little the snare band's onsets coincide with the kick's.
        let distinct = 1.0 - correlation(&snare_onsets, &bands[0]).clamp(0.0, 1.0);
        let low_onsets: Vec<f32> = bands[0].iter().zip(&bands[1]).map(|(a, b)| a + b).collect();
        let low = acf.compute(&low_onsets, max_lag);
        Self { novelty, all, snare, low, distinct, fps }
    }

    fn salience(&self, bpm: f64) -> f64 {
        comb(&self.all, 60.0 * self.fps / bpm).max(0.0)
    }

    /// The best comb-salience peak under the tempo prior, on a 0.25 BPM grid.
    fn comb_peak(&self) -> f64 {
        let mut best = (MIN_BPM, f64::MIN);
        let mut bpm = MIN_BPM;
        while bpm <= MAX_BPM {
            let s = self.salience(bpm) * prior(bpm);
            if s > best.1 {
                best = (bpm, s);
            }
            bpm += 0.25;
        }
        best.0
    }

    /// The candidate levels around the comb peak `coarse` within the searched range, with their evidence.
    fn level_candidates(&self, coarse: f64) -> Vec<(f64, meter::Evidence)> {
        let s_max = self.salience(coarse).max(1e-6);
        [(0.5, false), (2.0 / 3.0, true), (1.0, false), (1.5, true), (2.0, false)]
            .iter()
            .map(|&(m, ternary_level)| (coarse * m, ternary_level))
            .filter(|(b, _)| (MIN_BPM..=MAX_BPM).contains(b))
            .map(|(bpm, ternary_level)| {
                let lag = 60.0 * self.fps / bpm;
                let mut backbeat = self.distinct * two_beat_accent(&self.snare, lag);
                // No backbeat credit where the onsets do not repeat at the beat itself (module docs).
                if at(&self.all, lag) <= 0.0 {
                    backbeat = backbeat.min(0.0);
                }
                let evidence = meter::Evidence {
                    log2_tempo: (bpm / PRIOR_CENTRE_BPM).log2(),
                    salience: self.salience(bpm) / s_max,
                    backbeat,
                    ternary: (at(&self.all, lag / 3.0) - at(&self.all, lag / 2.0)).max(0.0) / s_max,
                    ternary_level: if ternary_level { 1.0 } else { 0.0 },
                    bass_on: at(&self.low, lag),
                    bass_between: at(&self.low, lag / 2.0),
                };
                (bpm, evidence)
            })
            .collect()
    }
}

/// The candidate metrical levels of a track and their evidence: for the accuracy tool, which
/// fits `meter::WEIGHTS` on annotated sets (through `synth`).
#[cfg_attr(not(feature = "synth"), allow(dead_code))]
pub fn levels(signal: &Analysis) -> Result<Vec<(f64, meter::Evidence)>, Error> {
    if (signal.flux.len() as f64) < MIN_SECONDS * signal.frame_rate() {
        return Err(unsupported("too short for a tempo".into()));
    }
    let o = Onsets::new(signal);
    Ok(o.level_candidates(o.comb_peak()))
}

fn unsupported(reason: String) -> Error {
    Error::Unsupported { renderer: "bpm".into(), reason }
}

/// Log-normal tempo prior (unnormalised, 1 at the centre).
pub fn prior(bpm: f64) -> f64 {
    let z = (bpm / PRIOR_CENTRE_BPM).log2() / PRIOR_OCTAVES;
    (-0.5 * z * z).exp()
}

/// Per band: subtract a moving average (0.4 s), half-wave rectify, scale to unit mean.
fn normalised_bands(flux: &[[f32; BANDS]], fps: f64) -> Vec<Vec<f32>> {
    let n = flux.len();
    let half = ((0.2 * fps).round() as usize).max(1);
    let mut out = vec![vec![0.0f32; n]; BANDS];
    let mut prefix = vec![0.0f64; n + 1];
    for (b, band) in out.iter_mut().enumerate() {
        for t in 0..n {
            prefix[t + 1] = prefix[t] + f64::from(flux[t][b]);
        }
        for (t, v) in band.iter_mut().enumerate() {
            let lo = t.saturating_sub(half);
            let hi = (t + half + 1).min(n);
            let local = (prefix[hi] - prefix[lo]) / (hi - lo) as f64;
            *v = (f64::from(flux[t][b]) - local).max(0.0) as f32;
        }
        let mean = band.iter().map(|&v| f64::from(v)).sum::<f64>() / n.max(1) as f64;
        if mean > 1e-9 {
            band.iter_mut().for_each(|v| *v = (f64::from(*v) / mean) as f32);
        }
    }
    out
}

/// Normalised, unbiased autocorrelation by FFT, with the plan and buffers reused across calls.
struct Autocorrelation {
    size: usize,
    forward: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
    inverse: std::sync::Arc<dyn realfft::ComplexToReal<f32>>,
    time: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
}

impl Autocorrelation {
    fn new(frames: usize) -> Self {
        let size = (2 * frames).next_power_of_two();
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(size);
        let inverse = planner.plan_fft_inverse(size);
        let time = forward.make_input_vec();
        let spectrum = forward.make_output_vec();
        Self { size, forward, inverse, time, spectrum }
    }

    /// A(τ) for τ < `max_lag`, mean removed, unbiased, A(0) = 1.
    fn compute(&mut self, x: &[f32], max_lag: usize) -> Vec<f32> {
        let n = x.len().min(self.size / 2);
        let mean = x[..n].iter().sum::<f32>() / n.max(1) as f32;
        self.time.iter_mut().for_each(|v| *v = 0.0);
        for (t, v) in self.time.iter_mut().zip(&x[..n]) {
            *t = v - mean;
        }
        if self.forward.process(&mut self.time, &mut self.spectrum).is_err() {
            return vec![0.0; max_lag];
        }
        for c in self.spectrum.iter_mut() {
            *c = Complex::new(c.norm_sqr(), 0.0);
        }
        if self.inverse.process(&mut self.spectrum, &mut self.time).is_err() {
            return vec![0.0; max_lag];
        }
        let zero = self.time[0] / n.max(1) as f32;
        let lags = max_lag.min(n);
        (0..lags).map(|l| if zero > 0.0 { self.time[l] / (n - l) as f32 / zero } else { 0.0 }).collect()
    }
}

/// Linear interpolation of `a` at fractional lag `lag`, with a ±1-frame peak search so that a
/// peak falling between frames is not missed.
fn at(a: &[f32], lag: f64) -> f64 {
    let i = lag.floor() as usize;
    if i + 2 >= a.len() || lag < 1.0 {
        return 0.0;
    }
    let f = lag - i as f64;
    let interp = |j: usize, f: f64| f64::from(a[j]) * (1.0 - f) + f64::from(a[j + 1]) * f;
    interp(i, f).max(interp(i - 1, f)).max(interp(i + 1, f))
}

/// Pearson correlation of two equally long signals (0 when either is constant).
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mean = |x: &[f32]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// How much more a band repeats every two beats than every one or three beats.
fn two_beat_accent(a: &[f32], lag: f64) -> f64 {
    at(a, 2.0 * lag) - 0.5 * (at(a, lag) + at(a, 3.0 * lag))
}

/// Comb salience: the mean autocorrelation at 1–4 beat periods.
fn comb(a: &[f32], lag: f64) -> f64 {
    (1..=4).map(|k| at(a, k as f64 * lag)).sum::<f64>() / 4.0
}

/// Strength of a beat grid at `freq` cycles per frame over the whole track: the magnitude of the
/// novelty's Fourier coefficients at the beat frequency and its first harmonics. Returns the sum
/// of magnitudes and the fundamental's coefficient (for the phase).
fn grid_fit(x: &[f32], freq: f64) -> (f64, Complex<f64>) {
    const HARMONICS: usize = 4;
    let mut acc = [Complex::new(0.0f64, 0.0); HARMONICS];
    let mut rot = [Complex::new(1.0f64, 0.0); HARMONICS];
    let mut step = [Complex::new(1.0f64, 0.0); HARMONICS];
    for (h, s) in step.iter_mut().enumerate() {
        let w = -std::f64::consts::TAU * freq * (h + 1) as f64;
        *s = Complex::new(w.cos(), w.sin());
    }
    for (t, &v) in x.iter().enumerate() {
        let v = f64::from(v);
        for h in 0..HARMONICS {
            acc[h] += rot[h] * v;
            rot[h] *= step[h];
        }
        // Renormalise the phasors now and then so rounding does not let them drift.
        if t % 1024 == 1023 {
            for r in rot.iter_mut() {
                *r /= r.norm();
            }
        }
    }
    (acc.iter().map(|c| c.norm()).sum(), acc[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Audio;

    fn clicks(bpm: f64, secs: f64) -> Audio {
        let sr = 44_100u32;
        let mut samples = vec![0.0f32; (secs * f64::from(sr)) as usize];
        let period = 60.0 / bpm;
        let mut t = 0.1;
        while t < secs {
            let s = (t * f64::from(sr)) as usize;
            for i in 0..2000.min(samples.len().saturating_sub(s)) {
                let env = (-(i as f64) / 400.0).exp();
                samples[s + i] += (env * (std::f64::consts::TAU * 60.0 * i as f64 / 44_100.0).sin()) as f32;
            }
            t += period;
        }
        Audio { sample_rate: sr, channels: 1, samples }
    }

    #[test]
    fn a_click_track_is_measured_to_the_hundredth() {
        for bpm in [96.0, 123.45, 140.0] {
            let t = estimate(&Analysis::new(&clicks(bpm, 30.0))).expect("tempo");
            assert!((t.bpm - bpm).abs() < 0.05, "{bpm}: {t:?}");
            assert!(t.first_beat_secs >= 0.0 && t.first_beat_secs < 60.0 / bpm);
        }
    }

    /// A drum pattern looped in 4-beat bars: `(beat, voice)` hits, voice 0 a kick (60 Hz sine),
    /// 1 a snare (noise, 120 ms), 2 a hat (noise, 25 ms).
    fn pattern(bpm: f64, secs: f64, hits: &[(f64, u8)]) -> Audio {
        let sr = 44_100u32;
        let mut samples = vec![0.0f32; (secs * f64::from(sr)) as usize];
        let mut noise = 0x2545_f491_u32;
        let beat = 60.0 / bpm;
        let mut bar = 0.05;
        while bar < secs {
            for &(at_beat, voice) in hits {
                let start = ((bar + at_beat * beat) * f64::from(sr)) as usize;
                let (len, decay, amp) = match voice {
                    0 => (6000, 1500.0, 1.0),
                    1 => (5300, 1200.0, 0.5),
                    _ => (1100, 250.0, 0.15),
                };
                for i in 0..len.min(samples.len().saturating_sub(start)) {
                    let env = amp * (-(i as f64) / decay).exp();
                    let v = if voice == 0 {
                        (std::f64::consts::TAU * 60.0 * i as f64 / f64::from(sr)).sin()
                    } else {
                        noise ^= noise << 13;
                        noise ^= noise >> 17;
                        noise ^= noise << 5;
                        f64::from(noise) / f64::from(u32::MAX) * 2.0 - 1.0
                    };
                    samples[start + i] += (env * v) as f32;
                }
            }
            bar += 4.0 * beat;
        }
        Audio { sample_rate: sr, channels: 1, samples }
    }

    fn eighth_hats() -> impl Iterator<Item = (f64, u8)> {
        (0..8).map(|i| (f64::from(i) * 0.5, 2))
    }

    #[test]
    fn a_drum_and_bass_two_step_is_not_read_at_two_thirds_of_its_tempo() {
        // Kicks 2½ and 1½ beats apart, snare on 2 and 4: the onsets repeat every 1½ beats almost
        // as strongly as every beat, and 117 BPM sits at the centre of the prior.
        let mut hits = vec![(0.0, 0), (2.5, 0), (1.0, 1), (3.0, 1)];
        hits.extend(eighth_hats());
        let t = estimate(&Analysis::new(&pattern(176.0, 40.0, &hits))).expect("tempo");
        assert!((t.bpm - 176.0).abs() < 0.5, "{t:?}");
    }

    #[test]
    fn prior_is_smooth_and_centred() {
        assert!((prior(PRIOR_CENTRE_BPM) - 1.0).abs() < 1e-12);
        assert!(prior(60.0) > 0.3 && prior(240.0) > 0.3);
        assert!(prior(100.0) > prior(70.0));
    }

    #[test]
    fn silence_and_short_input_are_refused() {
        let silent = Audio { sample_rate: 44_100, channels: 2, samples: vec![0.0; 44_100 * 20] };
        assert!(estimate(&Analysis::new(&silent)).is_err());
        assert!(estimate(&Analysis::new(&clicks(120.0, 2.0))).is_err());
    }
}
