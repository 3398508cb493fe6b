//! `key`: one of the 24 major/minor keys, with Camelot and Open Key names, tuning and confidence.
//!
//! Harmonic mixing needs the key a DJ hears, which in club music is carried by sustained pads and a
//! bass line on the root, over drums that are loud and pitchless. The estimate therefore looks at
//! spectral *peaks* that stand out of the spectrum around them (noise and drums contribute little),
//! measures the tuning before folding to pitch classes (A4 is often 435–445 Hz), and weighs the
//! bass register separately because the bass names the tonic where the chords alone are ambiguous.
//!
//! ```text
//!  Analysis.mono (11025 Hz) ─▶ 8192-point STFT, hop 4096 (1.35 Hz bins)
//!    ─▶ per frame: local maxima, parabolic interpolation; a peak is a note only if it is within
//!       40 dB of the frame's strongest and 3 dB above the mean log level of the peaks within a
//!       major third of it (an adaptive floor: noise and drum maxima sit at that level)
//!    ─▶ tuning: magnitude-weighted circular mean of the peaks' deviations from the 440 Hz grid
//!    ─▶ chroma: peaks mapped to pitch (with that tuning), cos² semitone weighting, each peak also
//!       credited to the notes it could be the 2nd–4th harmonic of (decaying weights)
//!    ─▶ full-range chroma and bass chroma (< 200 Hz) correlated with 24 rotated profiles
//!    ─▶ relative major/minor too close to call: the one whose tonic the bass opens on
//! ```
//!
//! Profiles: the major and minor key profiles D. Temperley derived from the Kostka–Payne corpus
//! (Music and Probability, MIT Press 2007), published figures rather than anyone's code, with one
//! change for the music we analyse: in the minor profile the weights of the subtonic (♭7) and the
//! leading tone (7) are exchanged. Kostka–Payne is common-practice music, whose minor raises the
//! seventh to make a dominant; electronic dance music is mostly *Aeolian* minor (i–VI–III–VII,
//! i–VII–VI–VII, i–iv–VII), where ♭7 is the usual seventh and the raised one is rare (the modal
//! character of EDM minor is what led Faraldo et al., "Key estimation in electronic dance music",
//! ECIR 2016, to build EDM-specific profiles; we take the observation, not their figures). With the
//! classical weights a minor loop over VII loses to its relative major by more than any other cue
//! can recover. The bass profiles are ours. No code or tables were copied from Essentia or any
//! AGPL/GPL source.
//!
//! **Relative keys.** A minor and C major share all seven notes, so pitch-class statistics can
//! barely separate them: Am–F–C–G (i–VI–III–VII) and C–G–Am–F (I–V–vi–IV) are the same four
//! chords. What tells them apart is where the loop starts: a phrase, and above all a track, opens on
//! its tonic — the cue key finders have used since Longuet-Higgins and Steedman (1971), who took
//! the first note as the tonic when the notes alone left a choice. So when the best key and its
//! relative score within [`RELATIVE_MARGIN`] of each other, the one whose tonic the bass sounds
//! more in the first ~2 s after the bass enters (a drums-only intro is skipped) is reported. The
//! cue only ever chooses between relatives, never moves the key by a fifth, and a clear profile
//! win is left alone; the confidence of a key decided this way is halved.

use serde_json::json;

use crate::analysis::{Analysis, Stft};
use crate::{Error, Rendered};

const FRAME: usize = 8192;
const HOP: usize = 4096;
const NOTE_NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
/// Frequency range of the peaks used (Hz).
const MIN_HZ: f64 = 40.0;
const MAX_HZ: f64 = 3000.0;
/// Peaks below this frequency also feed the bass chroma.
const BASS_MAX_HZ: f64 = 200.0;
/// Harmonic credit: a peak adds `HARMONIC_DECAY^(h-1)` to the note it would be harmonic h of.
const HARMONICS: usize = 4;
const HARMONIC_DECAY: f64 = 0.55;
/// Weight of the bass-chroma correlation relative to the full-range one.
const BASS_WEIGHT: f64 = 0.25;
/// Peaks are collected down to this fraction of their frame's strongest (60 dB) to measure the
/// spectrum's local level; only those above [`PEAK_FLOOR`] (40 dB) can count as notes.
const REFERENCE_FLOOR: f64 = 0.001;
const PEAK_FLOOR: f64 = 0.01;
/// Half-width, in octaves, of the neighbourhood a peak is compared with (a major third each way).
const LOCAL_HALF_OCTAVES: f64 = 1.0 / 6.0;
/// Fewest peaks (the peak itself included) a neighbourhood is averaged over.
const LOCAL_MIN_PEAKS: usize = 4;
/// How far a note's peak stands above the mean log magnitude of its neighbourhood: ln of 3 dB.
const PROMINENCE: f64 = 0.345;
/// Frames of the bass's entrance that make the opening (4 hops of 0.37 s: its first ~2 s).
const OPENING_FRAMES: usize = 4;
/// The bass has entered once a frame's bass level reaches this fraction of its median.
const ENTRANCE_LEVEL: f64 = 0.3;
/// Relative keys closer than this in score are decided by the bass of the opening.
const RELATIVE_MARGIN: f64 = 0.3;

/// Pitch-class profiles (index 0 = tonic). See the module docs for their provenance.
const MAJOR: [f64; 12] = [0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400];
const MINOR: [f64; 12] = [0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.330, 0.133];
/// Bass profiles: the bass rests on the tonic, then the fifth and the other primary chord roots.
const BASS_MAJOR: [f64; 12] = [1.00, 0.05, 0.20, 0.05, 0.25, 0.55, 0.05, 0.60, 0.05, 0.40, 0.05, 0.10];
const BASS_MINOR: [f64; 12] = [1.00, 0.05, 0.15, 0.35, 0.05, 0.55, 0.05, 0.55, 0.40, 0.05, 0.35, 0.05];

/// A key estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEstimate {
    /// Pitch class of the tonic, 0 = C.
    pub tonic: u8,
    pub minor: bool,
    /// 0..1: how far the best key is ahead of the runner-up.
    pub confidence: f64,
    /// Estimated concert pitch of A4 in Hz.
    pub tuning_hz: f64,
}

impl KeyEstimate {
    /// `A minor`, `F# major` (sharps, as the catalog stores them).
    pub fn name(&self) -> String {
        format!("{} {}", NOTE_NAMES[usize::from(self.tonic % 12)], if self.minor { "minor" } else { "major" })
    }
    /// Camelot wheel: C major = 8B, A minor = 8A; one step clockwise is a fifth up.
    pub fn camelot(&self) -> String {
        let n = (self.wheel() + 7) % 12 + 1;
        format!("{n}{}", if self.minor { 'A' } else { 'B' })
    }
    /// Open Key notation: C major = 1d, A minor = 1m.
    pub fn open_key(&self) -> String {
        format!("{}{}", self.wheel() + 1, if self.minor { 'm' } else { 'd' })
    }
    /// Steps of fifths from C major (for minor keys, of the relative major).
    fn wheel(&self) -> u32 {
        let major_pc = u32::from(if self.minor { (self.tonic + 3) % 12 } else { self.tonic % 12 });
        (major_pc * 7) % 12
    }
}

/// Metadata `{"key", "camelot", "open_key", "confidence", "tuning_hz"}`. Audio with no tonal
/// content is an answer, not a failure: `key` is null and `reason` says why.
pub fn render(signal: &Analysis) -> Result<Rendered, Error> {
    let key = match estimate(signal) {
        Ok(key) => key,
        Err(Error::Unsupported { reason, .. }) => {
            return Ok(Rendered {
                metadata: json!({ "key": null, "confidence": 0.0, "reason": reason }),
                files: Vec::new(),
            })
        }
        Err(other) => return Err(other),
    };
    Ok(Rendered {
        metadata: json!({
            "key": key.name(),
            "camelot": key.camelot(),
            "open_key": key.open_key(),
            "confidence": (key.confidence * 1000.0).round() / 1000.0,
            "tuning_hz": (key.tuning_hz * 10.0).round() / 10.0,
        }),
        files: Vec::new(),
    })
}

/// One spectral peak: interpolated frequency and compressed magnitude.
#[derive(Debug, Clone, Copy)]
struct Peak {
    hz: f64,
    weight: f64,
    /// STFT frame the peak was found in.
    frame: usize,
}

/// Estimates the key of the analysis signal.
pub fn estimate(signal: &Analysis) -> Result<KeyEstimate, Error> {
    let peaks = tonal_peaks(signal, PROMINENCE);
    if peaks.is_empty() {
        return Err(Error::Unsupported {
            renderer: "key".into(),
            reason: "no tonal content: no spectral peaks".into(),
        });
    }
    let frames = peaks.last().map_or(0, |p| p.frame + 1);
    let tuning_hz = tuning(&peaks);
    let (chroma, bass, bass_frames) = chromas(&peaks, tuning_hz, frames);
    let mut scores = [(0.0f64, 0u8, false); 24];
    for tonic in 0..12u8 {
        for (j, minor) in [false, true].into_iter().enumerate() {
            let (profile, bass_profile) = if minor { (&MINOR, &BASS_MINOR) } else { (&MAJOR, &BASS_MAJOR) };
            let s = correlation(&chroma, profile, tonic) + BASS_WEIGHT * correlation(&bass, bass_profile, tonic);
            scores[usize::from(tonic) * 2 + j] = (s, tonic, minor);
        }
    }
    let score_of = |tonic: u8, minor: bool| scores[usize::from(tonic) * 2 + usize::from(minor)].0;
    let mut ranked = scores;
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (best, second) = (ranked[0], ranked[1]);
    let mut confidence = ((best.0 - second.0) / best.0.abs().max(1e-9) * 4.0).clamp(0.0, 1.0);
    let (mut tonic, mut minor) = (best.1, best.2);
    // Relative keys share their notes, so the profiles can barely tell them apart: the one whose
    // tonic the bass opens on is the key (see the module docs).
    let (rel_tonic, rel_minor) = relative(tonic, minor);
    let open = opening(&bass_frames);
    if best.0 - score_of(rel_tonic, rel_minor) < RELATIVE_MARGIN
        && open[usize::from(rel_tonic)] > open[usize::from(tonic)]
    {
        (tonic, minor) = (rel_tonic, rel_minor);
        // Decided by a cue, not by a clear profile win: say so.
        confidence *= 0.5;
    }
    Ok(KeyEstimate { tonic, minor, confidence, tuning_hz })
}

/// The relative key: same notes, tonic a minor third lower (major → minor) or higher.
fn relative(tonic: u8, minor: bool) -> (u8, bool) {
    if minor {
        ((tonic + 3) % 12, false)
    } else {
        ((tonic + 9) % 12, true)
    }
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
fn tonal_peaks(signal: &Analysis, prominence: f64) -> Vec<Peak> {
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

/// The bass chroma of the opening: [`OPENING_FRAMES`] frames from the first in which the bass
/// sounds (at [`ENTRANCE_LEVEL`] of its median level), so a drums-only intro is skipped.
fn opening(bass_frames: &[[f64; 12]]) -> [f64; 12] {
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

/// Concert pitch from the peaks' deviations from the equal-tempered grid on A4 = 440 Hz, as a
/// weighted circular mean (a deviation of +0.5 and −0.5 semitone are the same thing).
fn tuning(peaks: &[Peak]) -> f64 {
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

/// Full-range and bass pitch-class profiles of the peaks, and the bass profile of each frame.
fn chromas(peaks: &[Peak], tuning_hz: f64, frames: usize) -> ([f64; 12], [f64; 12], Vec<[f64; 12]>) {
    let mut chroma = [0.0f64; 12];
    let mut bass = [0.0f64; 12];
    let mut bass_frames = vec![[0.0f64; 12]; frames];
    for p in peaks {
        for h in 1..=(HARMONICS) {
            let f = p.hz / h as f64;
            if f < MIN_HZ {
                break;
            }
            let midi = 69.0 + 12.0 * (f / tuning_hz).log2();
            let nearest = midi.round();
            let d = midi - nearest;
            // cos² window one semitone wide: full credit on the note, none half a semitone away.
            let w = (std::f64::consts::FRAC_PI_2 * d / 0.5).cos().powi(2);
            let credit = p.weight * w * HARMONIC_DECAY.powi(h as i32 - 1);
            let pc = (nearest as i64).rem_euclid(12) as usize;
            chroma[pc] += credit;
            if h == 1 && p.hz < BASS_MAX_HZ {
                bass[pc] += credit;
                if let Some(frame) = bass_frames.get_mut(p.frame) {
                    frame[pc] += credit;
                }
            }
        }
    }
    (chroma, bass, bass_frames)
}

/// Pearson correlation of `chroma` with `profile` rotated to `tonic`.
fn correlation(chroma: &[f64; 12], profile: &[f64; 12], tonic: u8) -> f64 {
    let mc = chroma.iter().sum::<f64>() / 12.0;
    let mp = profile.iter().sum::<f64>() / 12.0;
    let (mut num, mut dc, mut dp) = (0.0, 0.0, 0.0);
    for pc in 0..12 {
        let c = chroma[pc] - mc;
        let p = profile[(pc + 12 - usize::from(tonic)) % 12] - mp;
        num += c * p;
        dc += c * c;
        dp += p * p;
    }
    if dc <= 0.0 || dp <= 0.0 {
        0.0
    } else {
        num / (dc * dp).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Audio;

    #[test]
    fn camelot_and_open_key_follow_the_wheel() {
        let k = |tonic, minor| KeyEstimate { tonic, minor, confidence: 1.0, tuning_hz: 440.0 };
        assert_eq!((k(9, true).camelot(), k(9, true).open_key()), ("8A".into(), "1m".into()));
        assert_eq!((k(0, false).camelot(), k(0, false).open_key()), ("8B".into(), "1d".into()));
        assert_eq!(k(7, false).camelot(), "9B");
        assert_eq!(k(5, false).camelot(), "7B");
        assert_eq!(k(4, true).camelot(), "9A");
        assert_eq!(k(6, false).camelot(), "2B");
        assert_eq!(k(11, false).camelot(), "1B");
        assert_eq!(k(5, false).open_key(), "12d");
        assert_eq!(k(4, true).open_key(), "2m");
        assert_eq!(k(6, true).name(), "F# minor");
    }

    /// A sustained triad (with harmonics) and its root in the bass, detuned to `a4` Hz.
    fn chord(root_midi: f64, minor: bool, a4: f64) -> Audio {
        let sr = 44_100u32;
        let third = if minor { 3.0 } else { 4.0 };
        let notes = [root_midi - 24.0, root_midi, root_midi + third, root_midi + 7.0];
        let samples = (0..sr as usize * 8)
            .map(|i| {
                let t = i as f64 / f64::from(sr);
                notes
                    .iter()
                    .map(|&m| {
                        let f = a4 * 2f64.powf((m - 69.0) / 12.0);
                        (1..=4).map(|h| (std::f64::consts::TAU * f * h as f64 * t).sin() / h as f64).sum::<f64>()
                    })
                    .sum::<f64>() as f32
                    * 0.1
            })
            .collect();
        Audio { sample_rate: sr, channels: 1, samples }
    }

    /// A loop of triads (with harmonics), each over its root two octaves down, `secs` each,
    /// played `times` times from the first chord. `(root_midi, minor)` per chord.
    fn progression(chords: &[(f64, bool)], secs: f64, times: usize) -> Audio {
        let sr = 44_100u32;
        let per_chord = (secs * f64::from(sr)) as usize;
        let mut samples = Vec::with_capacity(per_chord * chords.len() * times);
        for &(root, minor) in chords.iter().cycle().take(chords.len() * times) {
            let third = if minor { 3.0 } else { 4.0 };
            let notes = [root - 24.0, root, root + third, root + 7.0];
            samples.extend((0..per_chord).map(|i| {
                let t = i as f64 / f64::from(sr);
                // 10 ms fades: chord changes without clicks.
                let fade = (t / 0.01).min(1.0).min((secs - t) / 0.01);
                let v: f64 = notes
                    .iter()
                    .map(|&m| {
                        let f = 440.0 * 2f64.powf((m - 69.0) / 12.0);
                        (1..=4).map(|h| (std::f64::consts::TAU * f * h as f64 * t).sin() / h as f64).sum::<f64>()
                    })
                    .sum();
                (v * fade * 0.1) as f32
            }));
        }
        Audio { sample_rate: sr, channels: 1, samples }
    }

    #[test]
    fn a_loop_of_relative_keys_is_named_by_the_bass_it_opens_on() {
        // The same four chords. Opening on A minor they are i–VI–III–VII in A minor; opening on
        // C major, I–V–vi–IV in C major. Only the opening tells them apart.
        let (am, f, c, g) = ((57.0, true), (53.0, false), (60.0, false), (55.0, false));
        let minor = estimate(&Analysis::new(&progression(&[am, f, c, g], 2.0, 3))).expect("key");
        assert_eq!(minor.name(), "A minor");
        let major = estimate(&Analysis::new(&progression(&[c, g, am, f], 2.0, 3))).expect("key");
        assert_eq!(major.name(), "C major");
    }

    #[test]
    fn an_aeolian_loop_names_its_minor_tonic_not_its_subtonic() {
        // i–VII–VI–VII (Am G F G): G natural (♭7) sounds half the time. A minor profile that
        // expects the leading tone G# instead (classical harmonic minor) leaves A minor so far
        // behind C major that not even the opening on A can win it back.
        let (am, g, f) = ((57.0, true), (55.0, false), (53.0, false));
        let k = estimate(&Analysis::new(&progression(&[am, g, f, g], 2.0, 3))).expect("key");
        assert_eq!(k.name(), "A minor");
    }

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

    #[test]
    fn tuning_is_measured_and_a_held_triad_names_its_key() {
        for (a4, root, minor, name) in
            [(440.0, 57.0, true, "A minor"), (436.0, 60.0, false, "C major"), (444.5, 66.0, true, "F# minor")]
        {
            let k = estimate(&Analysis::new(&chord(root, minor, a4))).expect("key");
            assert_eq!(k.name(), name);
            assert!((k.tuning_hz - a4).abs() < 0.8, "{a4}: {}", k.tuning_hz);
        }
    }
}
