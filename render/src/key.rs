//! `key`: one of the 24 major/minor keys, with Camelot and Open Key names, tuning and confidence.
//!
//! ```text
//!  chroma (see `chroma`): treble, bass and overtone pitch-class profiles, the bass of each frame
//!    ─▶ full-range chroma (treble + bass + overtone credit) and bass chroma correlated with the
//!       24 rotated key profiles and bass profiles
//!    ─▶ relative major/minor too close to call: the one whose tonic the bass opens on
//!    ─▶ confidence: a logistic function of the best key's lead, fitted so that it is a probability
//! ```
//!
//! Profiles: the major and minor key profiles D. Temperley derived from the Kostka–Payne corpus
//! (Music and Probability, MIT Press 2007), published figures rather than anyone's code, with one
//! change for the music we analyse: in the minor profile the weights of the subtonic (♭7) and the
//! leading tone (7) are exchanged. Kostka–Payne is common-practice music, whose minor raises the
//! seventh to make a dominant; electronic dance music is mostly *Aeolian* minor (i–VI–III–VII,
//! i–VII–VI–VII, i–iv–VII), where ♭7 is the usual seventh and the raised one is rare (the modal
//! character of EDM minor is what led Faraldo et al., "Key estimation in electronic dance music",
//! ECIR 2016, to build EDM-specific profiles; we take the observation, not their figures).
//!
//! **Bass profiles** are *learned*: the mean bass chroma, rotated to the annotated tonic, of the
//! tuning parts of every source of docs/accuracy.md (synthetic dance music, accompaniment songs in
//! many groove styles, classical scores), each source weighted equally, by
//! `scripts/eval/fit_key.py`. They replace hand-set bass profiles that were tuned on our dance
//! generator alone. No code or tables were copied from Essentia or any AGPL/GPL source.
//!
//! **Relative keys.** A minor and C major share all seven notes, so pitch-class statistics can
//! barely separate them: Am–F–C–G (i–VI–III–VII) and C–G–Am–F (I–V–vi–IV) are the same four
//! chords. What tells them apart is where the loop starts: a phrase, and above all a track, opens on
//! its tonic — the cue key finders have used since Longuet-Higgins and Steedman (1971), who took
//! the first note as the tonic when the notes alone left a choice. So when the best key and its
//! relative score within [`RELATIVE_MARGIN`] of each other, the one whose tonic the bass sounds
//! more in the first ~2 s after the bass enters (a drums-only intro is skipped) is reported. The
//! cue only ever chooses between relatives, never moves the key by a fifth, and a clear profile
//! win is left alone. Measured on the tuning parts of two sources (docs/accuracy.md), removing the
//! cue costs more than it saves, so it stays; a key decided by it carries a lower confidence.
//!
//! **Confidence** is a probability: a logistic function of the best key's lead over the
//! runner-up (and of whether the opening cue decided it), whose two coefficients were fitted on the
//! tuning parts by `scripts/eval/fit_key.py`, so that of the answers given with confidence 0.8,
//! about 8 in 10 were right there. docs/accuracy.md reports how well that holds on the test parts,
//! as accuracy against coverage.

use serde_json::json;

use crate::analysis::Analysis;
use crate::chroma::{chroma, opening};
use crate::{Error, Rendered};

const NOTE_NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
/// Weight of the bass-chroma correlation relative to the full-range one.
const BASS_WEIGHT: f64 = 0.25;
/// Relative keys closer than this in score are decided by the bass of the opening.
const RELATIVE_MARGIN: f64 = 0.3;

/// Pitch-class profiles (index 0 = tonic). See the module docs for their provenance.
const MAJOR: [f64; 12] = [0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400];
const MINOR: [f64; 12] = [0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.330, 0.133];
/// Learned bass profiles (see the module docs).
const BASS_MAJOR: [f64; 12] = [1.000, 0.156, 0.387, 0.152, 0.354, 0.529, 0.138, 0.773, 0.148, 0.565, 0.162, 0.300];
const BASS_MINOR: [f64; 12] = [1.000, 0.111, 0.279, 0.469, 0.135, 0.411, 0.130, 0.735, 0.423, 0.137, 0.407, 0.184];
/// Confidence = σ(a + b·lead + c·[decided by the opening cue]), fitted (see the module docs).
const CONFIDENCE: [f64; 3] = [1.940, 3.645, -2.362];

/// A key estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEstimate {
    /// Pitch class of the tonic, 0 = C.
    pub tonic: u8,
    pub minor: bool,
    /// 0..1: the fitted probability that this key is right (see the module docs).
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

/// Estimates the key of the analysis signal.
pub fn estimate(signal: &Analysis) -> Result<KeyEstimate, Error> {
    let Some(c) = chroma(signal) else {
        return Err(Error::Unsupported {
            renderer: "key".into(),
            reason: "no tonal content: no spectral peaks".into(),
        });
    };
    let mut full = [0.0f64; 12];
    for (pc, f) in full.iter_mut().enumerate() {
        *f = c.treble[pc] + c.bass[pc] + c.overtone[pc];
    }
    let score_of = |tonic: u8, minor: bool| {
        let (profile, bass_profile) = if minor { (&MINOR, &BASS_MINOR) } else { (&MAJOR, &BASS_MAJOR) };
        correlation(&full, profile, tonic) + BASS_WEIGHT * correlation(&c.bass, bass_profile, tonic)
    };
    let mut ranked: Vec<(f64, u8, bool)> =
        (0..12u8).flat_map(|t| [false, true].map(|minor| (score_of(t, minor), t, minor))).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (best, second) = (ranked[0], ranked[1]);
    let lead = best.0 - second.0;
    let (mut tonic, mut minor) = (best.1, best.2);
    // Relative keys share their notes, so the profiles can barely tell them apart: the one whose
    // tonic the bass opens on is the key (see the module docs).
    let (rel_tonic, rel_minor) = relative(tonic, minor);
    let open = opening(&c.bass_frames);
    let cued = best.0 - score_of(rel_tonic, rel_minor) < RELATIVE_MARGIN
        && open[usize::from(rel_tonic)] > open[usize::from(tonic)];
    if cued {
        (tonic, minor) = (rel_tonic, rel_minor);
    }
    let confidence = calibrated(lead, cued);
    Ok(KeyEstimate { tonic, minor, confidence, tuning_hz: c.tuning_hz })
}

/// The fitted probability that a key with this lead over the runner-up is right (module docs).
fn calibrated(lead: f64, cued: bool) -> f64 {
    let z = CONFIDENCE[0] + CONFIDENCE[1] * lead + CONFIDENCE[2] * if cued { 1.0 } else { 0.0 };
    1.0 / (1.0 + (-z).exp())
}

/// The relative key: same notes, tonic a minor third lower (major → minor) or higher.
fn relative(tonic: u8, minor: bool) -> (u8, bool) {
    if minor {
        ((tonic + 3) % 12, false)
    } else {
        ((tonic + 9) % 12, true)
    }
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
    fn a_full_cadence_is_more_confident_than_a_vamp_that_is_also_v_i_of_another_key() {
        // I–IV–V–I names C major beyond doubt; C–F alternating is I–IV in C or V–I in F.
        let (c, f, g) = ((60.0, false), (53.0, false), (55.0, false));
        let cadence = estimate(&Analysis::new(&progression(&[c, f, g, c], 2.0, 3))).expect("key");
        let vamp = estimate(&Analysis::new(&progression(&[c, c, f, f], 2.0, 3))).expect("key");
        assert_eq!(cadence.name(), "C major");
        assert!(cadence.confidence > vamp.confidence, "cadence {cadence:?}, vamp {vamp:?}");
        assert!((0.0..=1.0).contains(&vamp.confidence));
    }

    #[test]
    fn a_key_decided_by_the_opening_cue_is_less_confident_than_the_same_lead_without_it() {
        assert!(calibrated(0.1, true) < calibrated(0.1, false));
        assert!(calibrated(0.3, false) > calibrated(0.05, false));
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
