//! `kiln demo`: the whole pipeline on masters with known answers, on a fresh machine.
//!
//! It synthesizes a handful of dance tracks whose tempo and key are known (the same generator the
//! accuracy benchmark uses), renders them through an embedded one-node cluster and a local worker
//! exactly as `kiln run` does, and prints what was expected beside what was detected. Nothing to
//! download, nothing to configure: it is the first thing to run after cloning.

use std::path::PathBuf;

use anyhow::Context as _;
use kiln_ledger::TaskState;
use kiln_render::synth::{track, Key, TrackSpec};

use crate::cmd::run::{execute, plan_folder};
use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Where the synthesized masters and their derivatives go (default: `kiln-demo` in the OS
    /// temporary directory, so a run inside a checkout leaves nothing behind in it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds of audio per master.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Render slots (default: physical cores).
    #[arg(long)]
    slots: Option<usize>,
}

/// Tempos and keys a DJ store sees every day: house, techno, trance, drum & bass, hip-hop.
const TRACKS: &[(&str, f64, &str)] = &[
    ("deep-house", 122.0, "A minor"),
    ("tech-house", 126.0, "F# minor"),
    ("trance", 138.0, "D major"),
    ("drum-and-bass", 174.0, "E minor"),
    ("hip-hop", 92.0, "C# major"),
];

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| std::env::temp_dir().join("kiln-demo"));
    let masters = out.join("masters");
    let derivatives = out.join("derivatives");
    std::fs::create_dir_all(&masters).with_context(|| format!("cannot create {}", masters.display()))?;
    let json = ctx.output == OutputFormat::Json;
    if !json {
        println!("Writing the demo under {} (choose another place with --out)", out.display());
        println!("Synthesizing {} masters ({:.0} s each) into {}", TRACKS.len(), args.seconds, masters.display());
    }
    let mut expected = Vec::new();
    for (i, (name, bpm, key)) in TRACKS.iter().enumerate() {
        let key = Key::parse(key).with_context(|| format!("demo key {key:?} does not parse"))?;
        let spec = TrackSpec { bpm: *bpm, key, seconds: args.seconds, seed: 7 + i as u64 };
        let file = format!("{name}.wav");
        let audio = tokio::task::spawn_blocking(move || track(&spec)).await?;
        std::fs::write(masters.join(&file), audio.to_wav()).with_context(|| format!("cannot write {file}"))?;
        expected.push((file, *bpm, key.to_string()));
    }

    let renderers: Vec<String> =
        kiln_render::available_renderers().into_iter().filter(|r| *r != "artwork").map(str::to_owned).collect();
    if !json {
        println!("Rendering {} through an embedded scheduler and a local worker…", renderers.join(", "));
    }
    let plan = plan_folder(&masters, &renderers)?;
    let outcome = execute(&plan, &derivatives, args.slots, None, !json).await?;

    let mut rows = Vec::new();
    let mut report = Vec::new();
    for (file, bpm, key) in &expected {
        let task = outcome.tasks.iter().find(|t| t.job.asset_guid.as_str() == file);
        let meta = task
            .and_then(|t| t.result.as_ref())
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.metadata_json).ok())
            .unwrap_or_default();
        let state = task.map_or("missing", |t| t.state.as_str());
        let detected_bpm = meta["bpm"]["bpm"].as_f64();
        let detected_key = meta["key"]["key"].as_str().map(str::to_owned);
        let lufs = meta["loudness"]["integrated_lufs"].as_f64();
        let dash = || "—".to_owned();
        rows.push(vec![
            file.clone(),
            state.to_owned(),
            format!("{bpm:.1}"),
            detected_bpm.map_or_else(dash, |b| format!("{b:.1}")),
            key.clone(),
            detected_key.clone().unwrap_or_else(dash),
            meta["key"]["camelot"].as_str().map_or_else(dash, str::to_owned),
            lufs.map_or_else(dash, |l| format!("{l:.1}")),
        ]);
        report.push(serde_json::json!({
            "file": file, "state": state,
            "expected": { "bpm": bpm, "key": key },
            "detected": { "bpm": detected_bpm, "key": detected_key, "camelot": meta["key"]["camelot"], "loudness": meta["loudness"] },
            "outputs": derivatives.join(file),
        }));
    }
    let succeeded = outcome.tasks.iter().filter(|t| t.state == TaskState::Succeeded).count();
    if json {
        output::json(
            &serde_json::json!({ "out": out, "masters": report, "elapsed_secs": outcome.elapsed.as_secs_f64() }),
        )?;
    } else {
        println!();
        output::table(&["MASTER", "STATE", "BPM", "DETECTED", "KEY", "DETECTED", "CAMELOT", "LUFS"], &rows);
        println!();
        println!(
            "{succeeded} of {} masters rendered in {:.1} s. Outputs (waveforms, M4A, manifest.json) are in {}",
            expected.len(),
            outcome.elapsed.as_secs_f64(),
            derivatives.display()
        );
    }
    if succeeded != expected.len() {
        anyhow::bail!(
            "{} of {} demo masters failed; see `{}`",
            expected.len() - succeeded,
            expected.len(),
            derivatives.display()
        );
    }
    Ok(())
}
