//! `kiln analyze <FILES…>`: BPM, key and loudness of local files, no scheduler involved.
//!
//! Files are analysed in parallel, one per core. CSV (the default) starts with a header whose first
//! columns are `file,bpm,key`, so it drops into the spreadsheets DJ stores already keep.
//! `key_confidence` is a calibrated probability that the key is right, and `bpm_confidence` grows with
//! how periodic the onsets are and how clearly one metrical level won: sort by them to send the least
//! certain answers to review (docs/accuracy.md reports accuracy against coverage).

use std::path::PathBuf;

use anyhow::Context as _;
use kiln_render::{DecodeLimits, Pipeline, PipelineConfig};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// Audio files (WAV, AIFF, FLAC, MP3).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// CSV (the default) or JSON; `-o json` also selects JSON.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Parallel analyses (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
}

const COLUMNS: &[&str] = &[
    "file",
    "bpm",
    "key",
    "camelot",
    "open_key",
    "bpm_confidence",
    "key_confidence",
    "tuning_hz",
    "integrated_lufs",
    "loudness_range_lu",
    "true_peak_dbtp",
    "duration_secs",
    "error",
];

fn analyze_one(pipeline: &Pipeline, renderers: &[&str], path: &PathBuf) -> Value {
    let mut row = serde_json::json!({ "file": path.display().to_string() });
    let result = std::fs::read(path).with_context(|| format!("cannot read {}", path.display())).and_then(|bytes| {
        let hint = path.extension().and_then(|e| e.to_str());
        pipeline.run(&bytes, hint, renderers).map_err(anyhow::Error::from)
    });
    match result {
        Ok(report) => {
            row["duration_secs"] = serde_json::json!((report.duration_secs * 100.0).round() / 100.0);
            for out in report.outputs {
                let m = &out.rendered.metadata;
                match out.renderer.as_str() {
                    "bpm" => {
                        row["bpm"] = m["bpm"].clone();
                        row["bpm_confidence"] = m["confidence"].clone();
                    }
                    "key" => {
                        for k in ["key", "camelot", "open_key", "tuning_hz"] {
                            row[k] = m[k].clone();
                        }
                        row["key_confidence"] = m["confidence"].clone();
                    }
                    "loudness" => {
                        row["integrated_lufs"] = m["integrated_lufs"].clone();
                        row["loudness_range_lu"] = m["range_lu"].clone();
                        row["true_peak_dbtp"] = m["true_peak_dbtp"].clone();
                    }
                    _ => {}
                }
            }
        }
        Err(e) => row["error"] = Value::String(format!("{e:#}")),
    }
    row
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{:.2}", f).trim_end_matches('0').trim_end_matches('.').to_owned(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub async fn run(ctx: &crate::cmd::Context, args: Args) -> anyhow::Result<()> {
    let available = kiln_render::available_renderers();
    let renderers: Vec<&str> = ["bpm", "key", "loudness"].into_iter().filter(|r| available.contains(r)).collect();
    let pipeline = Pipeline::new(PipelineConfig { limits: DecodeLimits::default(), artwork_sizes: Vec::new() });
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let files = args.files;
    // DSP is CPU-bound: plain threads, off the async runtime.
    let rows = tokio::task::spawn_blocking(move || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<Value>>> = files.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..jobs.min(files.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(path) = files.get(i) else { break };
                    let row = analyze_one(&pipeline, &renderers, path);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(row);
                    }
                });
            }
        });
        slots.into_iter().filter_map(|slot| slot.into_inner().ok().flatten()).collect::<Vec<_>>()
    })
    .await?;
    let failed = rows.iter().filter(|r| !r["error"].is_null()).count();
    let json_output = ctx.output == crate::output::OutputFormat::Json;
    match args.format.unwrap_or(if json_output { Format::Json } else { Format::Csv }) {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(COLUMNS)?;
            for row in &rows {
                w.write_record(COLUMNS.iter().map(|c| cell(&row[*c])))?;
            }
            w.flush()?;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be analysed (see the error column)", rows.len());
    }
    Ok(())
}
