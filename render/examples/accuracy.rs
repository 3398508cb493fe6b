//! Accuracy of `bpm` and `key` on the seeded, annotated synthetic set (docs/accuracy.md).
//!
//! ```sh
//! cargo run --release -p kiln-render --features synth --example accuracy -- \
//!     [--n 120] [--seed 2026] [--seconds 60] [--out DIR] [--verbose]
//! ```
//!
//! Prints BPM Accuracy1 (within 4 %), Accuracy2 (also ×2, ×½, ×3, ×⅓), the share within ±0.5 BPM,
//! key exact and the MIREX weighted key score. With `--out DIR` it also writes every track as a
//! 16-bit WAV plus `annotations.csv` and `kiln.csv`, so `scripts/accuracy_peers.py` can run
//! Essentia and librosa on the very same files.
//!
//! With `--wavs DIR` it instead analyses the WAVs listed in `DIR/annotations.csv` (first column
//! `file`, the WAVs under `DIR/wav/`) and writes `DIR/kiln.csv` with Kiln's tempo, key and their
//! confidences, the input of `scripts/eval/evaluate.py score`. It prints no score: the annotations
//! are read by the scoring script only, so a frozen test part is never looked at file by file here.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use kiln_render::synth::{self, measure, Key};

struct Args {
    n: usize,
    seed: u64,
    seconds: f64,
    out: Option<PathBuf>,
    verbose: bool,
    only: Option<usize>,
    wavs: Option<PathBuf>,
    features: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a =
        Args { n: 120, seed: 2026, seconds: 60.0, out: None, verbose: false, only: None, wavs: None, features: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--verbose" => a.verbose = true,
            "--features" => a.features = true,
            "--wavs" => a.wavs = Some(PathBuf::from(value()?)),
            "--only" => a.only = Some(value()?.parse().map_err(|e| format!("--only: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// MIREX key score: 1 exact, 0.5 fifth (same mode), 0.3 relative, 0.2 parallel, else 0.
pub fn mirex(reference: Key, estimate: Key) -> f64 {
    let (r, e) = (i32::from(reference.tonic), i32::from(estimate.tonic));
    if reference == estimate {
        1.0
    } else if reference.minor == estimate.minor && ((e - r).rem_euclid(12) == 7 || (e - r).rem_euclid(12) == 5) {
        0.5
    } else if relative(reference, estimate) {
        0.3
    } else if reference.tonic == estimate.tonic {
        0.2
    } else {
        0.0
    }
}

/// The relative major or minor: a major key's relative minor sits three semitones below it.
fn relative(reference: Key, estimate: Key) -> bool {
    let (r, e) = (i32::from(reference.tonic), i32::from(estimate.tonic));
    match (reference.minor, estimate.minor) {
        (false, true) => (r - e).rem_euclid(12) == 3,
        (true, false) => (e - r).rem_euclid(12) == 3,
        _ => false,
    }
}

/// Kiln's answers for every WAV a set's `annotations.csv` lists, written to `kiln.csv` beside it.
///
/// With `features`, also what the key and tempo models are fitted on (`scripts/eval/fit_*.py`):
/// `features.csv` (the treble and bass chroma) and `levels.csv` (every candidate metrical level and
/// its evidence).
fn analyse_set(dir: &std::path::Path, features: bool) -> Result<(), Box<dyn std::error::Error>> {
    let listing = std::fs::read_to_string(dir.join("annotations.csv"))?;
    let files: Vec<&str> =
        listing.lines().skip(1).filter_map(|l| l.split(',').next()).filter(|f| !f.is_empty()).collect();
    let mut out = String::from("file,bpm,key,bpm_confidence,key_confidence,tuning_hz\n");
    let mut chroma_csv = String::from("file");
    for register in ["t", "b", "o", "s"] {
        for pc in 0..12 {
            write!(chroma_csv, ",{register}{pc}")?;
        }
    }
    chroma_csv.push('\n');
    let mut levels_csv = format!("file,bpm,{}\n", measure::LEVEL_FEATURE_NAMES.join(","));
    let (mut analysis_secs, mut audio_secs) = (0.0f64, 0.0f64);
    for file in files {
        let bytes = std::fs::read(dir.join("wav").join(file))?;
        let audio = kiln_render::decode(&bytes, Some("wav"), &kiln_render::DecodeLimits::default())?;
        let started = Instant::now();
        let analysis = measure::Analysis::new(&audio);
        let tempo = measure::tempo(&analysis).ok();
        let key = measure::key(&analysis).ok();
        analysis_secs += started.elapsed().as_secs_f64();
        audio_secs += audio.duration_secs();
        if features {
            if let Some(c) = measure::chroma(&analysis) {
                let opening = measure::opening(&c.bass_frames);
                let values: Vec<String> = c
                    .treble
                    .iter()
                    .chain(&c.bass)
                    .chain(&c.overtone)
                    .chain(&opening)
                    .map(|v| format!("{v:.4}"))
                    .collect();
                writeln!(chroma_csv, "{file},{}", values.join(","))?;
            }
            for (bpm, evidence) in measure::tempo_levels(&analysis).unwrap_or_default() {
                let values: Vec<String> = evidence.features().iter().map(|v| format!("{v:.5}")).collect();
                writeln!(levels_csv, "{file},{bpm:.3},{}", values.join(","))?;
            }
        }
        writeln!(
            out,
            "{file},{},{},{},{},{}",
            tempo.as_ref().map_or(String::new(), |t| format!("{:.2}", t.bpm)),
            key.as_ref().map_or(String::new(), |k| k.name()),
            tempo.as_ref().map_or(String::new(), |t| format!("{:.3}", t.confidence)),
            key.as_ref().map_or(String::new(), |k| format!("{:.3}", k.confidence)),
            key.as_ref().map_or(String::new(), |k| format!("{:.2}", k.tuning_hz)),
        )?;
    }
    std::fs::write(dir.join("kiln.csv"), out)?;
    if features {
        std::fs::write(dir.join("features.csv"), chroma_csv)?;
        std::fs::write(dir.join("levels.csv"), levels_csv)?;
    }
    println!(
        "analysis CPU: {:.3} s per minute of audio ({:.1} min; Analysis::new + tempo + key, wall clock, 1 thread)",
        analysis_secs / (audio_secs / 60.0).max(1e-9),
        audio_secs / 60.0
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if let Some(dir) = &args.wavs {
        return analyse_set(dir, args.features);
    }
    let specs = synth::annotated_set(args.n, args.seed, args.seconds);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    let mut annotations = String::from("file,bpm,key,style,progression,tuning_hz\n");
    let mut detected = String::from("file,bpm,key,bpm_confidence,key_confidence,tuning_hz\n");
    let (mut acc1, mut acc2, mut half_bpm, mut exact, mut score) = (0usize, 0usize, 0usize, 0usize, 0.0f64);
    let (mut tonal_n, mut tonal_score) = (0usize, 0.0f64);
    let mut analysis_secs = 0.0f64;
    for (i, spec) in specs.iter().enumerate() {
        if args.only.is_some_and(|o| o != i) {
            continue;
        }
        let plan = synth::plan(spec);
        let audio = synth::track(spec);
        let name = format!("track_{i:03}.wav");
        if let Some(dir) = &args.out {
            std::fs::write(dir.join(&name), audio.to_wav())?;
        }
        let started = Instant::now();
        let analysis = measure::Analysis::new(&audio);
        let tempo = measure::tempo(&analysis)?;
        let key = measure::key(&analysis)?;
        analysis_secs += started.elapsed().as_secs_f64();
        let est_key = Key::new(key.tonic, key.minor);
        let err = (tempo.bpm - spec.bpm).abs();
        let ok1 = err <= 0.04 * spec.bpm;
        let ok2 =
            [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0].iter().any(|m| (tempo.bpm - m * spec.bpm).abs() <= 0.04 * m * spec.bpm);
        let m = mirex(spec.key, est_key);
        acc1 += usize::from(ok1);
        acc2 += usize::from(ok2);
        half_bpm += usize::from(err <= 0.5);
        exact += usize::from(m == 1.0);
        score += m;
        if plan.tonal() {
            tonal_n += 1;
            tonal_score += m;
        }
        writeln!(
            annotations,
            "{name},{},{},{:?},{:?},{:.2}",
            spec.bpm, spec.key, plan.style, plan.progression, plan.tuning_hz
        )?;
        writeln!(
            detected,
            "{name},{:.2},{},{:.3},{:.3},{:.2}",
            tempo.bpm,
            key.name(),
            tempo.confidence,
            key.confidence,
            key.tuning_hz
        )?;
        if args.verbose || err > 0.5 || m < 1.0 {
            println!(
                "{name}  bpm {:>7.2} → {:>7.2} ({:?}, swing {:.2}, conf {:.2})   key {:>9} → {:>9} ({:?}, A4 {:.1} → {:.1})  {}",
                spec.bpm,
                tempo.bpm,
                plan.style,
                plan.swing,
                tempo.confidence,
                spec.key.to_string(),
                key.name(),
                plan.progression,
                plan.tuning_hz,
                key.tuning_hz,
                if err > 0.5 || m < 1.0 { "✗" } else { "" }
            );
        }
        std::io::stdout().flush()?;
    }
    if let Some(dir) = &args.out {
        std::fs::write(dir.join("annotations.csv"), &annotations)?;
        std::fs::write(dir.join("kiln.csv"), &detected)?;
    }
    let n = specs.len().max(1) as f64;
    println!();
    println!("tracks: {} × {:.0} s (seed {})", specs.len(), args.seconds, args.seed);
    println!("BPM Accuracy1 (±4 %):        {:.3}", acc1 as f64 / n);
    println!("BPM Accuracy2 (octaves ok):  {:.3}", acc2 as f64 / n);
    println!("BPM within ±0.5:             {:.3}", half_bpm as f64 / n);
    println!("key exact:                   {:.3}", exact as f64 / n);
    println!("key MIREX weighted:          {:.3}", score / n);
    println!("key MIREX, tonal loops only: {:.3} ({} tracks)", tonal_score / tonal_n.max(1) as f64, tonal_n);
    let audio_minutes = n * args.seconds / 60.0;
    println!(
        "analysis CPU: {:.3} s per minute of audio (Analysis::new + tempo + key, wall clock, 1 thread)",
        analysis_secs / audio_minutes
    );
    Ok(())
}
