//! `kiln submit`: one task from flags, or a manifest of many.
//!
//! A manifest is validated in full before anything is sent: a bad line admits nothing unless
//! `--skip-invalid` is given. Jobs then go in batches; every batch is idempotent by request_id, so
//! re-running an interrupted submit is safe and admits only what is missing.
//!
//! Memory stays bounded for manifests of millions of lines: the file is read twice as a stream
//! (validate, then send), and while sending a reader thread hands batches to a few concurrent
//! senders through a short queue, so at most `IN_FLIGHT + QUEUED` batches exist at once. The
//! concurrent batches share Raft entries on the scheduler, which is where the admission rate
//! comes from.

use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_proto::v1;

use crate::cmd::Context;
use crate::manifest::{self, BadLine, Format};
use crate::output::{self, OutputFormat};

const BATCH: usize = 2000;
/// Batches being submitted at once.
const IN_FLIGHT: usize = 4;
/// Batches read ahead of the senders.
const QUEUED: usize = 4;

#[derive(clap::Args)]
pub struct Args {
    /// A manifest of EncodeJobs (JSONL or CSV): a path, or a URL in an object store
    /// (s3://, gs://, az://, http(s)://; credentials from AWS_*/GOOGLE_*/AZURE_* variables, an
    /// S3-compatible endpoint from AWS_ENDPOINT). See `docs/api.md` for the fields.
    #[arg(long, conflicts_with_all = ["asset_guid", "request_id"])]
    manifest: Option<PathBuf>,
    /// Manifest format (default: from the file extension; .csv is CSV, anything else JSONL).
    #[arg(long, value_enum, requires = "manifest")]
    format: Option<Format>,
    /// Admit the valid lines of a manifest and report the bad ones, instead of admitting nothing.
    #[arg(long, requires = "manifest")]
    skip_invalid: bool,

    /// Idempotency key of a single task (default: a new UUID).
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long, default_value_t = 0)]
    release_id: i64,
    #[arg(long, default_value_t = 0)]
    asset_id: i64,
    /// Names the master in storage, relative to the masters prefix.
    #[arg(long, required_unless_present = "manifest")]
    asset_guid: Option<String>,
    /// Renderers to run, comma-separated: bpm, key, loudness, waveform, aac128, artwork.
    #[arg(long, value_delimiter = ',', default_value = "loudness,waveform")]
    renderers: Vec<String>,
    #[arg(long, default_value = "default")]
    queue: String,
    #[arg(long, default_value_t = 0)]
    priority: i32,
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
}

#[derive(Default, serde::Serialize)]
struct Summary {
    submitted: u64,
    created: u64,
    existing: u64,
    invalid: usize,
    first_task_id: Option<u64>,
    last_task_id: Option<u64>,
}

/// The manifest as a local file: `given` itself, or a temporary download of a URL (kept alive
/// by the returned guard).
async fn local_manifest(given: &std::path::Path) -> anyhow::Result<(PathBuf, Option<tempfile::TempPath>)> {
    let text = given.to_string_lossy();
    if let Some(rest) = text.strip_prefix("file://") {
        return Ok((PathBuf::from(rest), None));
    }
    if !text.contains("://") {
        return Ok((given.to_owned(), None));
    }
    let suffix = given.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = tempfile::Builder::new().prefix("kiln-manifest-").suffix(&suffix).tempfile()?.into_temp_path();
    let mut remote = kiln_worker::Remote::from_options(&kiln_config::WorkerOptions::default());
    // An http:// URL typed on the command line is the user's explicit choice of plain HTTP.
    remote.allow_http = text.starts_with("http://");
    let bytes = kiln_worker::download(&text, &remote, &tmp)
        .await
        .map_err(|e| anyhow::anyhow!("cannot download the manifest: {e}"))?;
    tracing::info!(url = %text, bytes, "manifest downloaded");
    Ok((tmp.to_path_buf(), Some(tmp)))
}

/// Sends jobs in batches; returns the per-job results in order.
pub async fn send(client: &mut kiln_proto::Client, jobs: Vec<v1::EncodeJob>) -> anyhow::Result<Vec<v1::SubmitResult>> {
    let req = v1::SubmitRequest { jobs };
    let resp = client
        .call(|mut s| {
            let req = req.clone();
            async move { s.submit(req).await }
        })
        .await?;
    Ok(resp.results)
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let Some(given) = args.manifest.clone() else {
        return submit_one(ctx, &mut client, args).await;
    };
    let name = given.display().to_string();
    let format = args.format.unwrap_or_else(|| Format::detect(&given));
    // A manifest in an object store is downloaded to a temporary file first (streamed, so its
    // size does not matter), then read twice like a local one.
    let (path, _download) = local_manifest(&given).await?;
    let path = path.as_path();
    // Pass 1: validate everything, so a bad line is found before anything is admitted.
    let mut bad: Vec<BadLine> = Vec::new();
    let mut total = 0usize;
    manifest::read(path, format, |line, job| {
        total += 1;
        if let Err(reason) = job {
            bad.push(BadLine { line, reason });
        }
    })?;
    if total == 0 {
        anyhow::bail!("{name}: the manifest has no jobs");
    }
    if !bad.is_empty() {
        for b in bad.iter().take(20) {
            eprintln!("{name}:{}: {}", b.line, b.reason);
        }
        if bad.len() > 20 {
            eprintln!("… and {} more bad lines", bad.len() - 20);
        }
        if !args.skip_invalid {
            anyhow::bail!(
                "{name}: {} of {} lines are invalid; nothing was submitted (fix them, or pass --skip-invalid to admit the rest)",
                bad.len(),
                total
            );
        }
    }
    // Pass 2: stream the valid jobs in batches.
    let bar = if ctx.output == OutputFormat::Table && total > BATCH {
        let bar = ProgressBar::new((total - bad.len()) as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} submitted ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = Summary { invalid: bad.len(), ..Summary::default() };
    let (batches_tx, batches_rx) = flume::bounded::<Vec<v1::EncodeJob>>(QUEUED);
    let reader_path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(BATCH);
        manifest::read(&reader_path, format, |_, job| {
            if let Ok(job) = job {
                batch.push(job);
                if batch.len() == BATCH {
                    // A closed queue means the senders stopped on an error; that error is reported.
                    let _ = batches_tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                }
            }
        })?;
        if !batch.is_empty() {
            let _ = batches_tx.send(batch);
        }
        anyhow::Ok(())
    });
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (rx, mut client, bar) = (batches_rx.clone(), client.clone(), bar.clone());
        senders.spawn(async move {
            let mut part = Summary::default();
            while let Ok(b) = rx.recv_async().await {
                let n = b.len() as u64;
                let results = send(&mut client, b).await?;
                for r in &results {
                    part.first_task_id = Some(part.first_task_id.map_or(r.task_id, |f| f.min(r.task_id)));
                    part.last_task_id = Some(part.last_task_id.map_or(r.task_id, |l| l.max(r.task_id)));
                    if r.created {
                        part.created += 1;
                    } else {
                        part.existing += 1;
                    }
                }
                part.submitted += n;
                bar.inc(n);
            }
            anyhow::Ok(part)
        });
    }
    drop(batches_rx);
    let mut failure = None;
    while let Some(joined) = senders.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(part) => {
                summary.submitted += part.submitted;
                summary.created += part.created;
                summary.existing += part.existing;
                summary.first_task_id = match (summary.first_task_id, part.first_task_id) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                summary.last_task_id = summary.last_task_id.max(part.last_task_id);
            }
            Err(e) => {
                // Stop reading: the queue closes once every sender is gone.
                senders.abort_all();
                failure.get_or_insert(e);
            }
        }
    }
    reader.await.context("the manifest reader stopped")??;
    if let Some(e) = failure {
        return Err(e.context(format!("submitting {name} (some batches may be admitted; re-running is safe)")));
    }
    bar.finish_and_clear();
    if ctx.output == OutputFormat::Json {
        return output::json(&summary);
    }
    println!(
        "submitted {} tasks from {name} ({} new, {} already known{})",
        summary.submitted,
        summary.created,
        summary.existing,
        if summary.invalid > 0 { format!(", {} invalid lines skipped", summary.invalid) } else { String::new() }
    );
    Ok(())
}

async fn submit_one(ctx: &Context, client: &mut kiln_proto::Client, args: Args) -> anyhow::Result<()> {
    let job = v1::EncodeJob {
        request_id: args.request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        release_id: args.release_id,
        asset_id: args.asset_id,
        asset_guid: args.asset_guid.unwrap_or_default(),
        derivative_assets: args.renderers,
        queue: args.queue,
        priority: args.priority,
        max_attempts: args.max_attempts,
    };
    manifest::validate(&job).map_err(|e| anyhow::anyhow!("{e}"))?;
    let request_id = job.request_id.clone();
    let results = send(client, vec![job]).await?;
    let r = results.first().context("the scheduler returned no result")?;
    if ctx.output == OutputFormat::Json {
        return output::json(
            &serde_json::json!({"task_id": r.task_id, "created": r.created, "request_id": request_id}),
        );
    }
    if r.created {
        println!("task {} submitted (request_id {request_id})", r.task_id);
    } else {
        println!("task {} already exists for request_id {request_id}; nothing new submitted", r.task_id);
    }
    Ok(())
}
