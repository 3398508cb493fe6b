//! Pitch-class profiles ("chroma") of the analysis signal: the front end of `key`.
//!
//! Harmonic mixing needs the key a DJ hears, which in club music is carried by sustained pads and a
//! bass line on the root, over drums that are loud and pitchless. The front end therefore looks at
//! spectral *peaks* that stand out of the spectrum around them (noise and drums contribute little),
//! measures the tuning before folding to pitch classes (A4 is often 435–445 Hz), and keeps the bass
//! register apart from the rest, because the bass and the chords above it say different things
//! about the key (see `key`).
//!
//! ```text
//!  Analysis.mono (11025 Hz) ─▶ 8192-point STFT, hop 4096 (1.35 Hz bins)
//!    ─▶ per frame: local maxima, parabolic interpolation; a peak is a note only if it is within
//!       40 dB of the frame's strongest and 3 dB above the mean log level of the peaks within a
//!       major third of it (an adaptive floor: noise and drum maxima sit at that level)
//!    ─▶ tuning: magnitude-weighted circular mean of the peaks' deviations from the 440 Hz grid
//!    ─▶ peaks mapped to pitch (with that tuning), cos² semitone weighting, into a bass (< 200 Hz)
//!       and a treble profile, and per frame for the bass
//! ```

use crate::analysis::{Analysis, Stft};

const FRAME: usize = 8192;
const HOP: usize = 4096;
/// Frequency range of the peaks used (Hz).
const MIN_HZ: f64 = 40.0;
const MAX_HZ: f64 = 3000.0;
/// Peaks below this frequency are the bass.
const BASS_MAX_HZ: f64 = 200.0;
/// Harmonic credit: a peak adds `HARMONIC_DECAY^(h-1)` to the note it would be harmonic h of.
const HARMONICS: usize = 4;
const HARMONIC_DECAY: f64 = 0.55;
/// Frames of the bass's entrance that make the opening (4 hops of 0.37 s: its first ~2 s).
const OPENING_FRAMES: usize = 4;
/// The bass has entered once a frame's bass level reaches this fraction of its median.
const ENTRANCE_LEVEL: f64 = 0.3;
/// Peaks are collected down to this fraction of their frame's strongest (60 dB) to measure the
/// spectrum's local level; only those above [`PEAK_FLOOR`] (40 dB) can count as notes.
const REFERENCE_FLOOR: f64 = 0.001;
const PEAK_FLOOR: f64 = 0.01;
/// Half-width, in octaves, of the neighbourhood a peak is compared with (a major third each way).
const LOCAL_HALF_OCTAVES: f64 = 1.0 / 6.0;
/// Fewest peaks (the peak itself included) a neighbourhood is averaged over.
const LOCAL_MIN_PEAKS: usize = 4;
/// How far a note's peak stands above the mean log magnitude of its neighbourhood: ln of 3 dB.
pub(crate) const PROMINENCE: f64 = 0.345;

/// The pitch-class content of a track, register by register.
#[derive(Debug, Clone)]
pub struct Chroma {
    /// Peaks at or above [`BASS_MAX_HZ`], each on its own pitch class.
    pub treble: [f64; 12],
    /// Peaks below [`BASS_MAX_HZ`].
    pub bass: [f64; 12],
    /// The bass of each STFT frame (0.37 s apart).
    pub bass_frames: Vec<[f64; 12]>,
    /// Credit each peak gives the notes it could be the 2nd–4th harmonic of (decaying weights).
    pub overtone: [f64; 12],
    /// Estimated concert pitch of A4 in Hz.
    pub tuning_hz: f64,
}

/// The chroma of the analysis signal; `None` when it has no tonal peak at all.
pub fn chroma(signal: &Analysis) -> Option<Chroma> {
    let peaks = tonal_peaks(signal, PROMINENCE);
    if peaks.is_empty() {
        return None;
    }
    let frames = peaks.last().map_or(0, |p| p.frame + 1);
    let tuning_hz = tuning(&peaks);
    let mut c = Chroma {
        treble: [0.0; 12],
        bass: [0.0; 12],
        bass_frames: vec![[0.0; 12]; frames],
        overtone: [0.0; 12],
        tuning_hz,
    };
    for p in &peaks {
        let midi = 69.0 + 12.0 * (p.hz / tuning_hz).log2();
        let nearest = midi.round();
        let d = midi - nearest;
        // cos² window one semitone wide: full credit on the note, none half a semitone away.
        let credit = p.weight * (std::f64::consts::FRAC_PI_2 * d / 0.5).cos().powi(2);
        let pc = (nearest as i64).rem_euclid(12) as usize;
        if p.hz < BASS_MAX_HZ {
            c.bass[pc] += credit;
            if let Some(frame) = c.bass_frames.get_mut(p.frame) {
                frame[pc] += credit;
            }
        } else {
            c.treble[pc] += credit;
        }
        for h in 2..=HARMONICS {
            let f = p.hz / h as f64;
            if f < MIN_HZ {
                break;
            }
            let midi = 69.0 + 12.0 * (f / tuning_hz).log2();
            let nearest = midi.round();
            let w = (std::f64::consts::FRAC_PI_2 * (midi - nearest) / 0.5).cos().powi(2);
            c.overtone[(nearest as i64).rem_euclid(12) as usize] += p.weight * w * HARMONIC_DECAY.powi(h as i32 - 1);
        }
    }
    Some(c)
}

/// One spectral peak: interpolated frequency and compressed magnitude.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peak {
    pub(crate) hz: f64,
    pub(crate) weight: f64,
    /// STFT frame the peak was found in.
    pub(crate) frame: usize,
}

/// The bass chroma of the opening: [`OPENING_FRAMES`] frames from the first in which the bass
/// sounds (at [`ENTRANCE_LEVEL`] of its median level), so a drums-only intro is skipped.
pub fn opening(bass_frames: &[[f64; 12]]) -> [f64; 12] {
    let levels: Vec<f64> = bass_frames.iter().map(|b| b.iter().sum()).collect();
    let mut sounding: Vec<f64> = levels.iter().copied().filter(|&l| l > 0.0).collect();
    let mut open = [0.0f64; 12];
    if sounding.is_empty() {
        return open;
    }
    sounding.sort_by(f64::total_cmp);
    let median = sounding[sounding.len() / 2];
    let first = levels.iter().position(|&l| l > ENTRANCE_LEVEL * median).unwrap_or(0);
    for frame in bass_frames.iter().skip(first).take(OPENING_FRAMES) {
        for (o, b) in open.iter_mut().zip(frame) {
            *o += b;
        }
    }
    open
}

/// Spectral peaks that are notes: within 40 dB of their frame's strongest, and standing clear of
/// the spectrum around them.
///
/// Drums, noise and window side lobes leave a dense field of weak local maxima (one every few
/// bins); counted as notes they flatten the chroma towards "all twelve" and blur major against
/// minor. A sustained tone stands above its neighbourhood; noise maxima sit at its average. So a
/// peak counts only when its log magnitude exceeds, by `prominence` ([`PROMINENCE`]), the mean log magnitude of
/// the peaks (down to 60 dB) within [`LOCAL_HALF_OCTAVES`] around it: an adaptive floor that
/// follows the spectral envelope, so it works in a loud mix and a quiet breakdown alike.
pub(crate) fn tonal_peaks(signal: &Analysis, prominence: f64) -> Vec<Peak> {
    let rate = f64::from(signal.sample_rate);
    let hz_per_bin = rate / FRAME as f64;
    let lo = (MIN_HZ / hz_per_bin).floor().max(2.0) as usize;
    let hi = ((MAX_HZ / hz_per_bin).ceil() as usize).min(FRAME / 2 - 1);
    let mono = &signal.mono;
    let frames = if mono.len() >= FRAME { (mono.len() - FRAME) / HOP + 1 } else { 1 };
    let mut stft = Stft::new(FRAME);
    let mut mags = vec![0.0f64; FRAME / 2 + 1];
    let mut peaks: Vec<Peak> = Vec::with_capacity(frames * 32);
    // Per frame, in rising frequency: (hz, magnitude relative to the frame's strongest).
    let mut candidates: Vec<(f64, f64)> = Vec::with_capacity(512);
    let mut log_prefix: Vec<f64> = Vec::with_capacity(513);
    let (down, up) = (2f64.powf(-LOCAL_HALF_OCTAVES), 2f64.powf(LOCAL_HALF_OCTAVES));
    for i in 0..frames {
        let start = (i * HOP).min(mono.len());
        let end = (start + FRAME).min(mono.len());
        let spectrum = stft.process(&mono[start..end]);
        for (m, c) in mags.iter_mut().zip(spectrum) {
            *m = f64::from(c.norm());
        }
        let frame_max = mags[lo..hi].iter().fold(0.0f64, |a, &b| a.max(b));
        if frame_max <= 1e-6 {
            continue;
        }
        let floor = frame_max * REFERENCE_FLOOR;
        candidates.clear();
        for b in lo..hi {
            let m = mags[b];
            if m > floor && m > mags[b - 1] && m >= mags[b + 1] {
                // Parabolic interpolation on log magnitude.
                let (l, c, r) = (mags[b - 1].ln(), m.ln(), mags[b + 1].ln());
                let denom = l - 2.0 * c + r;
                let delta = if denom.abs() > 1e-12 { (0.5 * (l - r) / denom).clamp(-0.5, 0.5) } else { 0.0 };
                candidates.push(((b as f64 + delta) * hz_per_bin, m / frame_max));
            }
        }
        log_prefix.clear();
        log_prefix.push(0.0);
        for &(_, rel) in &candidates {
            let last = log_prefix.last().copied().unwrap_or(0.0);
            log_prefix.push(last + rel.ln());
        }
        // The neighbourhood [from, to) only moves up as the peaks do.
        let (mut from, mut to) = (0usize, 0usize);
        for &(hz, rel) in &candidates {
            while from < candidates.len() && candidates[from].0 < hz * down {
                from += 1;
            }
            while to < candidates.len() && candidates[to].0 < hz * up {
                to += 1;
            }
            // A sparse neighbourhood (a clean recording, a lone bass note) is padded to
            // LOCAL_MIN_PEAKS with the 60 dB floor: where there is no peak, the spectrum is
            // at most that loud. Otherwise a lone tone would be its own neighbourhood.
            let count = to - from;
            let padding = LOCAL_MIN_PEAKS.saturating_sub(count) as f64 * REFERENCE_FLOOR.ln();
            let local = (log_prefix[to] - log_prefix[from] + padding) / count.max(LOCAL_MIN_PEAKS) as f64;
            if rel > PEAK_FLOOR && rel.ln() - local > prominence {
                // Square-root compression: loud pads still lead, but the bass and quieter
                // voices are heard too.
                peaks.push(Peak { hz, weight: rel.sqrt(), frame: i });
            }
        }
    }
    peaks
}

/// Concert pitch from the peaks' deviations from the equal-tempered grid on A4 = 440 Hz, as a
/// weighted circular mean (a deviation of +0.5 and −0.5 semitone are the same thing).
pub(crate) fn tuning(peaks: &[Peak]) -> f64 {
    let (mut re, mut im) = (0.0f64, 0.0f64);
    for p in peaks {
        if p.hz < 80.0 {
            continue; // too few bins per semitone down there
        }
        let semis = 12.0 * (p.hz / 440.0).log2();
        let a = std::f64::consts::TAU * semis; // one turn per semitone
        re += p.weight * a.cos();
        im += p.weight * a.sin();
    }
    let offset = im.atan2(re) / std::f64::consts::TAU; // semitones in (-0.5, 0.5]
    440.0 * 2f64.powf(offset / 12.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Audio;

    #[test]
    fn noise_maxima_are_not_taken_for_notes() {
        // A 440 Hz tone 20 dB above white noise (a deterministic LCG) in every bin: the noise
        // leaves a local maximum every few bins, the tone one peak per frame. The tone must be
        // kept in every frame, and most of the noise maxima's weight dropped.
        let sr = 11_025u32;
        let mut state = 12_345u64;
        let samples: Vec<f32> = (0..sr as usize * 10)
            .map(|i| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let noise = ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0;
                let tone = (std::f64::consts::TAU * 440.0 * i as f64 / f64::from(sr)).sin();
                (0.3 * noise + 0.05 * tone) as f32
            })
            .collect();
        let signal = Analysis::new(&Audio { sample_rate: sr, channels: 1, samples });
        let is_tone = |p: &&Peak| (p.hz - 440.0).abs() < 2.0; // within the main lobe
        let split = |peaks: &[Peak]| {
            let tone: Vec<&Peak> = peaks.iter().filter(is_tone).collect();
            let noise: f64 = peaks.iter().filter(|p| !is_tone(p)).map(|p| p.weight).sum();
            (tone.len(), noise)
        };
        let (tone_all, noise_all) = split(&tonal_peaks(&signal, f64::NEG_INFINITY));
        let (tone_kept, noise_kept) = split(&tonal_peaks(&signal, PROMINENCE));
        assert_eq!(tone_kept, tone_all, "the tone is kept in every frame");
        assert!(noise_kept < 0.5 * noise_all, "noise weight {noise_kept:.1} kept of {noise_all:.1}");
    }
}
