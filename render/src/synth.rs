//! Annotated dance-music generator (feature `synth`): known tempo and key, deterministic from a seed.
//!
//! `bpm` and `key` are judged against answers we know exactly, so we make the music ourselves. The
//! generator is meant to be hard in the ways real club tracks are hard, not easy in the ways that
//! would flatter a detector:
//!
//! ```text
//!  TrackSpec{bpm,key,seconds,seed} ──▶ plan (style, progression, tuning, arrangement, mix)
//!        ──▶ drums (kick, clap/snare, hats; swing; half-time bars) ─┐
//!        ──▶ bass on the chord root, chords/pads (sidechained), arp ─┼─▶ mix, pan, noise ──▶ Audio
//! ```
//!
//! - styles follow tempo the way genres do: downtempo/hip-hop backbeats below ~100 BPM, four-on-the-
//!   floor house/techno/trance in the middle, four-on-the-floor or drum & bass two-step above ~145;
//! - arrangements have intros without harmony, breakdowns without drums and occasional half-time bars;
//! - A4 is detuned to 435–445 Hz; timbres, levels, swing, noise and voicings vary per seed;
//! - minor tracks use either a tonal loop (i–iv–V–i, bass on the root: unambiguous) or a modal loop
//!   (i–VI–III–VII, which most detectors hear as the relative major). [`Plan::tonal`] tells which, so
//!   a known-answer test can assert exact keys only where the music itself is unambiguous.
//!
//! Nothing here reads a clock or a thread RNG: the same [`TrackSpec`] always yields the same samples.

use std::f64::consts::TAU;
use std::fmt;

use crate::Audio;

/// Output sample rate of [`track`].
pub const SAMPLE_RATE: u32 = 44_100;

const NOTE_NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

/// One of the 24 major/minor keys. `tonic` is a pitch class, 0 = C … 11 = B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub tonic: u8,
    pub minor: bool,
}

impl Key {
    pub fn new(tonic: u8, minor: bool) -> Self {
        Self { tonic: tonic % 12, minor }
    }

    /// All 24 keys: C major, C minor, C# major, …
    pub fn all() -> impl Iterator<Item = Key> {
        (0..24u8).map(|i| Key::new(i / 2, i % 2 == 1))
    }

    /// Parses `A minor`, `F# major`, `Bb minor`, `Am`, `F#m`, `C` (major), `A min`, `C maj`.
    pub fn parse(text: &str) -> Option<Key> {
        let text = text.trim();
        let mut chars = text.chars();
        let letter = chars.next()?.to_ascii_uppercase();
        let mut pc: i32 = match letter {
            'C' => 0,
            'D' => 2,
            'E' => 4,
            'F' => 5,
            'G' => 7,
            'A' => 9,
            'B' => 11,
            _ => return None,
        };
        let mut rest = chars.as_str();
        if let Some(r) = rest.strip_prefix('#').or_else(|| rest.strip_prefix('♯')) {
            pc += 1;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('b').or_else(|| rest.strip_prefix('♭')) {
            pc -= 1;
            rest = r;
        }
        let mode = rest.trim().to_ascii_lowercase();
        let minor = match mode.as_str() {
            "" | "maj" | "major" => false,
            "m" | "min" | "minor" => true,
            _ => return None,
        };
        Some(Key::new(pc.rem_euclid(12) as u8, minor))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.minor { "minor" } else { "major" };
        write!(f, "{} {}", NOTE_NAMES[usize::from(self.tonic % 12)], mode)
    }
}

/// What to synthesize. `bpm` is the annotation: the beat the kick/snare pattern is written in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackSpec {
    pub bpm: f64,
    pub key: Key,
    pub seconds: f64,
    pub seed: u64,
}

/// The groove family, chosen from tempo (as genres are) and the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Kick on 1 and the "and" of 3, snare on 2 and 4, swung 16th hats (70–100 BPM).
    Downtempo,
    /// Four-on-the-floor kick, clap on 2 and 4, off-beat open hats (house, techno, trance).
    FourOnTheFloor,
    /// Drum & bass two-step: kick on 1 and the "and" of 2, snare on 2 and 4 (above ~150 BPM).
    TwoStep,
}

/// Harmony of the loop, as the key detector will meet it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progression {
    /// Major: I–V–vi–IV, I–IV–V–I, I–vi–IV–V, I–IV. Minor: i–iv–V–i, i–iv–i–v, i (drone). Bass on the root.
    Tonal(u8),
    /// Minor modal loops (i–VI–III–VII, i–VII–VI–VII): the relative major is a fair reading.
    Modal(u8),
}

/// Everything derived from a [`TrackSpec`] before a sample is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub style: Style,
    pub progression: Progression,
    /// Concert pitch of A4 in Hz (435–445).
    pub tuning_hz: f64,
    /// Swing of off-beat 16ths as a fraction of a 16th (0 = straight).
    pub swing: f64,
    /// Bars (of 4 beats) of each section, in order.
    pub sections: Vec<(Section, u32)>,
}

impl Plan {
    /// True where the harmony itself names the annotated key (see [`Progression`]).
    pub fn tonal(&self) -> bool {
        matches!(self.progression, Progression::Tonal(_))
    }
}

/// Arrangement sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Drums and bass, no chords.
    Intro,
    /// Everything.
    Main,
    /// Chords, arp and pads, no kick or snare.
    Breakdown,
    /// Kick on 1, snare on 3: the half-time feel of a build or a dubstep bar.
    HalfTime,
}

/// A small, fast, seedable RNG (SplitMix64): the generator needs reproducibility, not cryptography.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// White noise in [-1, 1).
    fn noise(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u32 << 23) as f32) - 1.0
    }
}

/// Derives the plan of a track from its spec (deterministic).
pub fn plan(spec: &TrackSpec) -> Plan {
    let mut rng = Rng::new(spec.seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x5EED);
    let bpm = spec.bpm;
    let style = if bpm < 100.0 {
        Style::Downtempo
    } else if bpm < 145.0 {
        Style::FourOnTheFloor
    } else if bpm < 160.0 {
        if rng.chance(0.6) {
            Style::FourOnTheFloor
        } else {
            Style::TwoStep
        }
    } else if rng.chance(0.8) {
        Style::TwoStep
    } else {
        Style::FourOnTheFloor
    };
    let progression = if spec.key.minor {
        if rng.chance(0.75) {
            Progression::Tonal(rng.below(3) as u8)
        } else {
            Progression::Modal(rng.below(2) as u8)
        }
    } else {
        Progression::Tonal(rng.below(4) as u8)
    };
    let tuning_hz = rng.range(435.0, 445.0);
    let swing = match style {
        Style::Downtempo => rng.range(0.0, 0.5),
        _ if rng.chance(0.4) => rng.range(0.05, 0.35),
        _ => 0.0,
    };
    let bar_s = 240.0 / bpm.max(1.0);
    let total_bars = (spec.seconds / bar_s).ceil().max(1.0) as u32;
    let mut sections = Vec::new();
    let mut bars = 0;
    // Blocks of 4 bars (or 2 when the whole track is short), mostly full arrangement.
    let block = if total_bars >= 16 { 4 } else { 2 };
    let half_time_ok = rng.chance(0.35);
    while bars < total_bars {
        let kind = if bars == 0 && rng.chance(0.6) {
            Section::Intro
        } else {
            let r = rng.unit();
            if r < 0.15 && bars > 0 {
                Section::Breakdown
            } else if r < 0.25 && half_time_ok {
                Section::HalfTime
            } else {
                Section::Main
            }
        };
        let len = block.min(total_bars - bars);
        sections.push((kind, len));
        bars += len;
    }
    Plan { style, progression, tuning_hz, swing, sections }
}

/// A chord: root offset from the tonic in semitones and its intervals above the root.
#[derive(Debug, Clone, Copy)]
struct Chord {
    root: i32,
    intervals: &'static [i32],
}

const MAJ: &[i32] = &[0, 4, 7];
const MIN: &[i32] = &[0, 3, 7];
const MIN7: &[i32] = &[0, 3, 7, 10];
const MAJ7: &[i32] = &[0, 4, 7, 11];

fn chords(key: Key, progression: Progression) -> [Chord; 4] {
    let c = |root, intervals| Chord { root, intervals };
    match (key.minor, progression) {
        (false, Progression::Tonal(0)) => [c(0, MAJ), c(7, MAJ), c(9, MIN), c(5, MAJ)],
        (false, Progression::Tonal(1)) => [c(0, MAJ), c(5, MAJ), c(7, MAJ), c(0, MAJ)],
        (false, Progression::Tonal(2)) => [c(0, MAJ7), c(9, MIN), c(5, MAJ), c(7, MAJ)],
        (false, _) => [c(0, MAJ), c(0, MAJ), c(5, MAJ7), c(5, MAJ)],
        (true, Progression::Tonal(0)) => [c(0, MIN), c(5, MIN), c(7, MAJ), c(0, MIN)],
        (true, Progression::Tonal(1)) => [c(0, MIN7), c(5, MIN), c(0, MIN), c(7, MIN)],
        (true, Progression::Tonal(_)) => [c(0, MIN), c(0, MIN7), c(0, MIN), c(8, MAJ)],
        (true, Progression::Modal(0)) => [c(0, MIN), c(8, MAJ), c(3, MAJ), c(10, MAJ)],
        (true, Progression::Modal(_)) => [c(0, MIN), c(10, MAJ), c(8, MAJ), c(10, MAJ)],
    }
}

/// Mono buses, one per instrument group, mixed to stereo at the end.
struct Buses {
    kick: Vec<f32>,
    snare: Vec<f32>,
    hats: Vec<f32>,
    bass: Vec<f32>,
    chords_l: Vec<f32>,
    chords_r: Vec<f32>,
    arp: Vec<f32>,
}

/// Synthesizes a stereo 44.1 kHz track (see the module docs for what it contains).
pub fn track(spec: &TrackSpec) -> Audio {
    let plan = plan(spec);
    let sr = f64::from(SAMPLE_RATE);
    let frames = (spec.seconds.max(0.0) * sr).round() as usize;
    let mut rng = Rng::new(spec.seed);
    let mut b = Buses {
        kick: vec![0.0; frames],
        snare: vec![0.0; frames],
        hats: vec![0.0; frames],
        bass: vec![0.0; frames],
        chords_l: vec![0.0; frames],
        chords_r: vec![0.0; frames],
        arp: vec![0.0; frames],
    };
    if frames == 0 {
        return Audio { sample_rate: SAMPLE_RATE, channels: 2, samples: Vec::new() };
    }
    let beat = 60.0 / spec.bpm.max(1.0);
    let sixteenth = beat / 4.0;
    let lead_in = rng.range(0.0, 0.4);
    let swing = plan.swing;
    // Position of 16th `i` of the bar, swing delaying the odd ones.
    let t16 = |bar_start: f64, i: u32| -> f64 {
        bar_start + f64::from(i) * sixteenth + if i % 2 == 1 { swing * sixteenth } else { 0.0 }
    };
    let progression = chords(spec.key, plan.progression);
    let bars_per_chord = if rng.chance(0.5) { 1 } else { 2 };
    let tonic_midi = 24 + i32::from(spec.key.tonic); // C1 + tonic
    let hz = |midi: f64| plan.tuning_hz * 2f64.powf((midi - 69.0) / 12.0);

    // Per-track timbres.
    let kick_t = KickTone {
        start_hz: rng.range(110.0, 220.0),
        end_hz: rng.range(42.0, 60.0),
        pitch_tau: rng.range(0.02, 0.06),
        amp_tau: rng.range(0.12, 0.35),
        click: rng.range(0.0, 0.4) as f32,
    };
    let clap = rng.chance(0.5);
    let snare_tone_hz = rng.range(170.0, 260.0);
    let snare_decay = rng.range(0.08, 0.2);
    let hat_decay = rng.range(0.02, 0.06);
    let open_hats = plan.style == Style::FourOnTheFloor && rng.chance(0.7);
    let hats_16 = rng.chance(0.6);
    let bass_pattern = rng.below(3);
    let bass_cutoff = rng.range(200.0, 900.0);
    let bass_octave = if rng.chance(0.5) { 12 } else { 0 };
    let pad_stabs = rng.chance(0.35);
    let pad_detune = rng.range(0.002, 0.012);
    let pad_cutoff = rng.range(900.0, 4000.0);
    let pad_octave = 36 + 12 * (rng.below(2) as i32); // C4 or C5 region
    let has_arp = rng.chance(0.55);
    let arp_rate = if rng.chance(0.5) { 1 } else { 2 }; // every 16th or every 8th

    let mut bar_index: u32 = 0;
    let mut bar_start = lead_in;
    for &(section, bars) in &plan.sections {
        for _ in 0..bars {
            if bar_start >= spec.seconds {
                break;
            }
            let chord = progression[((bar_index / bars_per_chord) % 4) as usize];
            let drums = section != Section::Breakdown;
            let harmony = section != Section::Intro;
            // Drums.
            if drums {
                let kicks: &[u32] = match (section, plan.style) {
                    (Section::HalfTime, _) => &[0],
                    (_, Style::FourOnTheFloor) => &[0, 4, 8, 12],
                    (_, Style::Downtempo) => &[0, 10],
                    (_, Style::TwoStep) => &[0, 10],
                };
                for &k in kicks {
                    kick(&mut b.kick, t16(bar_start, k), &kick_t, sr);
                }
                let snares: &[u32] = if section == Section::HalfTime { &[8] } else { &[4, 12] };
                for &s in snares {
                    snare(&mut b.snare, t16(bar_start, s), clap, snare_tone_hz, snare_decay, sr, &mut rng);
                }
                for i in 0..16u32 {
                    let on = if hats_16 { true } else { i % 2 == 0 };
                    if !on {
                        continue;
                    }
                    let accent = if i % 4 == 2 {
                        1.0
                    } else if i % 2 == 0 {
                        0.6
                    } else {
                        0.4
                    };
                    let open = open_hats && i % 4 == 2;
                    let decay = if open { hat_decay * 5.0 } else { hat_decay };
                    hat(&mut b.hats, t16(bar_start, i), accent * rng.range(0.8, 1.0), decay, sr, &mut rng);
                }
            }
            // Bass on the chord root.
            let bass_midi = f64::from(tonic_midi + chord.root.rem_euclid(12) + bass_octave);
            let bass_hz = hz(if bass_midi < 28.0 { bass_midi + 12.0 } else { bass_midi });
            if drums || rng.chance(0.3) {
                match bass_pattern {
                    0 => {
                        // Off-beat 8ths (house).
                        for k in [2u32, 6, 10, 14] {
                            tone_bass(&mut b.bass, t16(bar_start, k), sixteenth * 1.6, bass_hz, bass_cutoff, sr);
                        }
                    }
                    1 => tone_bass(&mut b.bass, bar_start, beat * 3.9, bass_hz, bass_cutoff, sr),
                    _ => {
                        for k in [0u32, 3, 6, 8, 11, 14] {
                            tone_bass(&mut b.bass, t16(bar_start, k), sixteenth * 1.8, bass_hz, bass_cutoff, sr);
                        }
                    }
                }
            }
            // Chords / pads and an arp on chord tones.
            if harmony {
                let notes: Vec<f64> = chord
                    .intervals
                    .iter()
                    .map(|iv| {
                        // Voice within an octave above C4/C5 region, closest position.
                        let pc = (i32::from(spec.key.tonic) + chord.root + iv).rem_euclid(12);
                        f64::from(pad_octave + 12 + pc)
                    })
                    .collect();
                if pad_stabs {
                    for k in [2u32, 6, 10, 14] {
                        for &m in &notes {
                            pad(
                                &mut b.chords_l,
                                &mut b.chords_r,
                                t16(bar_start, k),
                                sixteenth * 1.5,
                                hz(m),
                                pad_detune,
                                pad_cutoff,
                                0.004,
                                sr,
                            );
                        }
                    }
                } else {
                    for &m in &notes {
                        pad(
                            &mut b.chords_l,
                            &mut b.chords_r,
                            bar_start,
                            beat * 4.0,
                            hz(m),
                            pad_detune,
                            pad_cutoff,
                            beat * 0.5,
                            sr,
                        );
                    }
                }
                if has_arp {
                    let mut step = 0usize;
                    let mut i = 0u32;
                    while i < 16 {
                        let m = notes[step % notes.len()] + 12.0;
                        pluck(&mut b.arp, t16(bar_start, i), sixteenth * f64::from(arp_rate) * 0.9, hz(m), sr);
                        step += 1;
                        i += arp_rate;
                    }
                }
            }
            bar_index += 1;
            bar_start += 4.0 * beat;
        }
    }

    // Sidechain pump on pads from kick onsets (four-on-the-floor character), then mix.
    let pump = rng.range(0.0, 0.6) as f32;
    let gains = [
        rng.range(0.7, 1.0) as f32,   // kick
        rng.range(0.25, 0.5) as f32,  // snare
        rng.range(0.05, 0.2) as f32,  // hats
        rng.range(0.35, 0.7) as f32,  // bass
        rng.range(0.12, 0.3) as f32,  // chords
        rng.range(0.03, 0.12) as f32, // arp
    ];
    let hat_pan = rng.range(-0.4, 0.4) as f32;
    let noise_level = rng.range(0.0005, 0.006) as f32;
    let mut samples = vec![0.0f32; frames * 2];
    let mut env = 0.0f32;
    let release = (-1.0 / (0.15 * sr)).exp() as f32;
    for i in 0..frames {
        let k = b.kick[i].abs();
        env = if k > env { k } else { env * release };
        let duck = 1.0 - pump * env.min(1.0);
        let centre = gains[0] * b.kick[i] + gains[1] * b.snare[i] + gains[3] * b.bass[i];
        let hats = gains[2] * b.hats[i];
        let arp = gains[5] * b.arp[i];
        let n = noise_level * rng.noise();
        samples[2 * i] = centre + hats * (1.0 - hat_pan) + gains[4] * duck * b.chords_l[i] + arp * 0.7 + n;
        samples[2 * i + 1] = centre + hats * (1.0 + hat_pan) + gains[4] * duck * b.chords_r[i] + arp * 1.3 + n;
    }
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    if peak > 0.0 {
        let g = rng.range(0.5, 0.95) as f32 / peak;
        samples.iter_mut().for_each(|s| *s *= g);
    }
    Audio { sample_rate: SAMPLE_RATE, channels: 2, samples }
}

struct KickTone {
    start_hz: f64,
    end_hz: f64,
    pitch_tau: f64,
    amp_tau: f64,
    click: f32,
}

fn span(buf_len: usize, at: f64, dur: f64, sr: f64) -> (usize, usize) {
    let start = (at.max(0.0) * sr) as usize;
    let end = ((at + dur) * sr) as usize;
    (start.min(buf_len), end.min(buf_len))
}

fn kick(buf: &mut [f32], at: f64, t: &KickTone, sr: f64) {
    let (s, e) = span(buf.len(), at, t.amp_tau * 5.0, sr);
    let mut phase = 0.0f64;
    for (n, out) in buf[s..e].iter_mut().enumerate() {
        let time = n as f64 / sr;
        let f = t.end_hz + (t.start_hz - t.end_hz) * (-time / t.pitch_tau).exp();
        phase += TAU * f / sr;
        let amp = (-time / t.amp_tau).exp() * (1.0 - (-time * 2000.0).exp());
        let click = if n < 90 { t.click * (1.0 - n as f32 / 90.0) } else { 0.0 };
        *out += (amp * phase.sin()) as f32 + click * if n % 2 == 0 { 1.0 } else { -1.0 };
    }
}

fn snare(buf: &mut [f32], at: f64, clap: bool, tone_hz: f64, decay: f64, sr: f64, rng: &mut Rng) {
    let (s, e) = span(buf.len(), at, decay * 5.0, sr);
    // Band-passed noise: a difference of two one-pole lowpasses (~700 Hz … ~5 kHz).
    let (a_lo, a_hi) = (1.0 - (-TAU * 700.0 / sr).exp(), 1.0 - (-TAU * 5000.0 / sr).exp());
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for (n, out) in buf[s..e].iter_mut().enumerate() {
        let time = n as f64 / sr;
        let x = f64::from(rng.noise());
        hi += a_hi * (x - hi);
        lo += a_lo * (hi - lo);
        let band = hi - lo;
        let env = if clap {
            // Three quick bursts, then the tail.
            let burst = (time * 100.0).fract();
            if time < 0.03 {
                (-burst * 8.0).exp()
            } else {
                (-(time - 0.03) / decay).exp()
            }
        } else {
            (-time / decay).exp()
        };
        let tone = if clap { 0.0 } else { (TAU * tone_hz * time).sin() * (-time / 0.05).exp() * 0.6 };
        *out += ((band * 2.5) * env + tone) as f32;
    }
}

fn hat(buf: &mut [f32], at: f64, gain: f64, decay: f64, sr: f64, rng: &mut Rng) {
    let (s, e) = span(buf.len(), at, decay * 6.0, sr);
    let a = 1.0 - (-TAU * 7000.0 / sr).exp();
    let mut lp = 0.0f64;
    for (n, out) in buf[s..e].iter_mut().enumerate() {
        let time = n as f64 / sr;
        let x = f64::from(rng.noise());
        lp += a * (x - lp);
        *out += ((x - lp) * gain * (-time / decay).exp()) as f32;
    }
}

/// Saw + sine bass through a one-pole lowpass, short attack/release.
fn tone_bass(buf: &mut [f32], at: f64, dur: f64, f: f64, cutoff: f64, sr: f64) {
    let (s, e) = span(buf.len(), at, dur, sr);
    let a = 1.0 - (-TAU * cutoff / sr).exp();
    let mut lp = 0.0f64;
    let len = (e - s).max(1) as f64;
    for (n, out) in buf[s..e].iter_mut().enumerate() {
        let time = n as f64 / sr;
        let ph = (f * time).fract();
        let saw = 2.0 * ph - 1.0;
        lp += a * (saw - lp);
        let env = (time / 0.005).min(1.0) * ((len - n as f64) / (0.01 * sr)).min(1.0);
        *out += ((lp * 0.6 + (TAU * ph).sin() * 0.8) * env) as f32;
    }
}

/// Two detuned saws (one per side) through a one-pole lowpass.
#[allow(clippy::too_many_arguments)]
fn pad(l: &mut [f32], r: &mut [f32], at: f64, dur: f64, f: f64, detune: f64, cutoff: f64, attack: f64, sr: f64) {
    let (s, e) = span(l.len(), at, dur, sr);
    let a = 1.0 - (-TAU * cutoff / sr).exp();
    let (mut lp_l, mut lp_r) = (0.0f64, 0.0f64);
    let len = (e - s).max(1) as f64;
    for n in 0..(e - s) {
        let time = n as f64 / sr;
        let sl = 2.0 * (f * (1.0 + detune) * time).fract() - 1.0;
        let sr_ = 2.0 * (f * (1.0 - detune) * time + 0.3).fract() - 1.0;
        lp_l += a * (sl - lp_l);
        lp_r += a * (sr_ - lp_r);
        let env = (time / attack.max(0.002)).min(1.0) * ((len - n as f64) / (0.02 * sr)).min(1.0);
        l[s + n] += (lp_l * env) as f32;
        r[s + n] += (lp_r * env) as f32;
    }
}

/// A plucked square-ish tone with an exponential decay.
fn pluck(buf: &mut [f32], at: f64, dur: f64, f: f64, sr: f64) {
    let (s, e) = span(buf.len(), at, dur, sr);
    for (n, out) in buf[s..e].iter_mut().enumerate() {
        let time = n as f64 / sr;
        let ph = TAU * f * time;
        let v = ph.sin() + 0.3 * (3.0 * ph).sin() + 0.15 * (2.0 * ph).sin();
        *out += (v * (-time / (dur * 0.4)).exp()) as f32;
    }
}

/// `n` annotated specs from a seed: tempi spread over 70–180 BPM (about a third of them fractional,
/// like 123.5 or 174.25), every key used equally often, one seed per track.
pub fn annotated_set(n: usize, seed: u64, seconds: f64) -> Vec<TrackSpec> {
    let mut rng = Rng::new(seed ^ 0xD1CE);
    let keys: Vec<Key> = Key::all().collect();
    // A shuffled key order so keys and tempi are not correlated.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    (0..n)
        .map(|i| {
            if i % keys.len() == 0 {
                for j in (1..order.len()).rev() {
                    order.swap(j, rng.below(j + 1));
                }
            }
            let stratum = (i % 11) as f64; // 11 strata of 10 BPM each over 70–180
            let mut bpm = 70.0 + 10.0 * stratum + rng.range(0.0, 10.0);
            bpm = if rng.chance(0.65) { bpm.round() } else { (bpm * 4.0).round() / 4.0 };
            let bpm = bpm.clamp(70.0, 180.0);
            TrackSpec { bpm, key: keys[order[i % keys.len()]], seconds, seed: rng.next_u64() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_round_trip() {
        for k in Key::all() {
            assert_eq!(Key::parse(&k.to_string()), Some(k));
        }
        assert_eq!(Key::parse("Bb minor"), Some(Key::new(10, true)));
        assert_eq!(Key::parse("F#m"), Some(Key::new(6, true)));
        assert_eq!(Key::parse("C"), Some(Key::new(0, false)));
        assert_eq!(Key::parse("H minor"), None);
        assert_eq!(Key::new(9, true).to_string(), "A minor");
    }

    #[test]
    fn tracks_are_deterministic_and_sized() {
        let spec = TrackSpec { bpm: 128.0, key: Key::new(9, true), seconds: 3.0, seed: 7 };
        let a = track(&spec);
        let b = track(&spec);
        assert_eq!(a, b);
        assert_eq!(a.channels, 2);
        assert_eq!(a.sample_rate, SAMPLE_RATE);
        assert_eq!(a.frames(), 3 * 44_100);
        assert!(a.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
        assert!(a.samples.iter().any(|s| s.abs() > 0.1));
    }

    #[test]
    fn annotated_set_covers_keys_and_tempi() {
        let set = annotated_set(48, 1, 30.0);
        let keys: std::collections::HashSet<_> = set.iter().map(|s| s.key).collect();
        assert_eq!(keys.len(), 24);
        assert!(set.iter().all(|s| (70.0..=180.0).contains(&s.bpm)));
        assert_eq!(set, annotated_set(48, 1, 30.0));
    }
}

/// The analysis entry points, exposed for known-answer tests, the accuracy tool and benches
/// (the pipeline calls them through `bpm::render` and `key::render`).
pub mod measure {
    pub use crate::analysis::Analysis;
    pub use crate::bpm::{estimate as tempo, levels as tempo_levels, Tempo};
    pub use crate::chroma::{chroma, opening, Chroma};
    pub use crate::key::{estimate as key, KeyEstimate};
    pub use crate::meter::{Evidence, FEATURES as LEVEL_FEATURES, FEATURE_NAMES as LEVEL_FEATURE_NAMES};
}
