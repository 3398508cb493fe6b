//! `kiln run`: the main job on one machine — an embedded one-node scheduler and a local worker on
//! all cores, a progress bar, and a summary table at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_ledger::{TaskFilter, TaskState};
use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

const AUDIO: &[&str] = &["wav", "wave", "aif", "aiff", "flac", "mp3"];
const IMAGES: &[&str] = &["jpg", "jpeg", "png"];

#[derive(clap::Args)]
pub struct Args {
    /// A folder of masters (searched recursively), or a manifest (JSONL/CSV) of EncodeJobs.
    input: PathBuf,
    /// Where derivatives go: `{out}/{asset_guid}/…` plus a `manifest.json` per master.
    #[arg(long)]
    out: PathBuf,
    /// Renderers for audio masters (default: every audio renderer this build has).
    #[arg(long, value_delimiter = ',')]
    renderers: Option<Vec<String>>,
    /// For a manifest input: the folder asset GUIDs are relative to (default: the manifest's folder).
    #[arg(long)]
    masters: Option<PathBuf>,
    /// Render slots (default: physical cores).
    #[arg(long)]
    slots: Option<usize>,
    /// Keep the scheduler's ledger here (default: a temporary folder removed at the end).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub struct Plan {
    pub masters: PathBuf,
    pub jobs: Vec<v1::EncodeJob>,
    pub skipped: Vec<(String, String)>,
}

fn default_audio_renderers() -> Vec<String> {
    kiln_render::available_renderers().into_iter().filter(|r| *r != "artwork").map(str::to_owned).collect()
}

/// A stable request id per master path, so re-running into the same state dir admits nothing twice.
fn request_id_for(rel: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rel.hash(&mut h);
    format!("run-{:016x}", h.finish())
}

/// Turns a folder into jobs: one per audio or image file, each file once however many links
/// reach it (see [`crate::folder`]).
pub fn plan_folder(dir: &Path, renderers: &[String]) -> anyhow::Result<Plan> {
    if !dir.exists() {
        bail!("{} does not exist", dir.display());
    }
    let crate::folder::Listing { files, left_out: mut skipped } = crate::folder::files_under(dir)?;
    let mut jobs = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        let renderers = if AUDIO.contains(&ext.as_str()) {
            renderers.to_vec()
        } else if IMAGES.contains(&ext.as_str()) {
            vec!["artwork".to_owned()]
        } else {
            continue;
        };
        let rel = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().replace('\\', "/");
        let job = v1::EncodeJob {
            request_id: request_id_for(&rel),
            release_id: 0,
            asset_id: i as i64 + 1,
            asset_guid: rel.clone(),
            derivative_assets: renderers,
            queue: String::new(),
            priority: 0,
            max_attempts: 0,
        };
        match crate::manifest::validate(&job) {
            Ok(()) => jobs.push(job),
            Err(reason) => skipped.push((rel, reason)),
        }
    }
    if jobs.is_empty() && skipped.is_empty() {
        bail!(
            "no masters found in {} (looked for {} and {} files)",
            dir.display(),
            AUDIO.join(", "),
            IMAGES.join(", ")
        );
    }
    Ok(Plan { masters: dir.to_path_buf(), jobs, skipped })
}

fn plan_manifest(path: &Path, masters: Option<PathBuf>) -> anyhow::Result<Plan> {
    let mut jobs = Vec::new();
    let mut bad = Vec::new();
    crate::manifest::read(path, crate::manifest::Format::detect(path), |line, job| match job {
        Ok(j) => jobs.push(j),
        Err(e) => bad.push(format!("{}:{line}: {e}", path.display())),
    })?;
    if !bad.is_empty() {
        for b in bad.iter().take(20) {
            eprintln!("{b}");
        }
        bail!("{}: {} invalid lines; nothing was run", path.display(), bad.len());
    }
    if jobs.is_empty() {
        bail!("{}: the manifest has no jobs", path.display());
    }
    let masters = masters.unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok(Plan { masters, jobs, skipped: Vec::new() })
}

/// Everything `kiln run` and `kiln demo` share: start, submit, watch, collect.
pub struct Outcome {
    pub tasks: Vec<kiln_ledger::Task>,
    pub elapsed: Duration,
}

pub async fn execute(
    plan: &Plan,
    out: &Path,
    slots: Option<usize>,
    state_dir: Option<PathBuf>,
    show_progress: bool,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))?;
    let temp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let mut sched = kiln_config::SchedulerOptions {
        data_dir: state_dir.unwrap_or_else(|| temp.path().join("ledger")),
        listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    // One machine: a short lease keeps a crashed render from stalling the run for long.
    sched.lease_ttl = Duration::from_secs(20);
    sched.heartbeat_interval = Duration::from_secs(2);
    sched.retry_backoff_base = Duration::from_millis(500);
    let scheduler = kiln_scheduler::start(&sched).await.context("cannot start the embedded scheduler")?;
    let handle = scheduler.handle();

    let worker_opts = kiln_config::WorkerOptions {
        id: Some("local".into()),
        schedulers: vec![format!("http://{}", scheduler.grpc_addr())],
        slots,
        masters: plan.masters.to_string_lossy().into_owned(),
        derivatives: out.to_string_lossy().into_owned(),
        ..Default::default()
    };
    worker_opts.validate()?;
    let worker = kiln_worker::Worker::new(worker_opts).context("cannot start the local worker")?;
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async move {
        let _ = worker_stopped.await;
    }));

    let started = Instant::now();
    let mut client = kiln_proto::Client::new([format!("http://{}", scheduler.grpc_addr())])?;
    for chunk in plan.jobs.chunks(2000) {
        crate::cmd::submit::send(&mut client, chunk.to_vec()).await?;
    }
    let total = plan.jobs.len() as u64;
    let bar = if show_progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(&crate::output::bar_template(
            "{spinner} {bar:40.cyan/blue} {pos}/{len} masters  {msg}  [{elapsed_precise}]",
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let counts = match handle.read(|l, _| l.counts()).await {
            Ok(counts) => counts,
            // The embedded node stopped: say why (a full disk, a damaged state dir), not just that.
            Err(e) => match scheduler.failure() {
                Some(failure) => return Err(anyhow::Error::new(failure).context("the embedded scheduler stopped")),
                None => return Err(e.into()),
            },
        };
        let done = counts.succeeded + counts.dead_lettered + counts.cancelled;
        bar.set_position(done);
        bar.set_message(format!("{} rendering, {} failed", counts.leased, counts.dead_lettered));
        if done >= total {
            break;
        }
        if worker_task.is_finished() {
            bail!("the local worker stopped before the run finished");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let tasks = handle
        .read(|l, _| {
            l.list(&TaskFilter { limit: usize::MAX, ..Default::default() }).into_iter().cloned().collect::<Vec<_>>()
        })
        .await?;
    let _ = stop_worker.send(());
    match tokio::time::timeout(Duration::from_secs(30), worker_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "local worker stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "local worker panicked"),
        _ => {}
    }
    scheduler.shutdown().await;
    Ok(Outcome { tasks, elapsed })
}

fn metadata(task: &kiln_ledger::Task) -> serde_json::Value {
    task.result.as_ref().and_then(|r| serde_json::from_str(&r.metadata_json).ok()).unwrap_or(serde_json::Value::Null)
}

pub fn summary_row(task: &kiln_ledger::Task) -> BTreeMap<&'static str, String> {
    let meta = metadata(task);
    let num = |v: &serde_json::Value, digits: usize| v.as_f64().map(|f| format!("{f:.digits$}")).unwrap_or_default();
    let mut row = BTreeMap::new();
    row.insert("file", task.job.asset_guid.to_string());
    row.insert("state", task.state.as_str().to_owned());
    row.insert("bpm", num(&meta["bpm"]["bpm"], 1));
    row.insert("key", meta["key"]["key"].as_str().unwrap_or_default().to_owned());
    row.insert("lufs", num(&meta["loudness"]["integrated_lufs"], 1));
    row.insert("error", task.last_error.clone().unwrap_or_default());
    row
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let renderers = args.renderers.clone().unwrap_or_else(default_audio_renderers);
    let plan = if args.input.is_dir() || !args.input.exists() {
        plan_folder(&args.input, &renderers)?
    } else {
        plan_manifest(&args.input, args.masters.clone())?
    };
    for (file, reason) in &plan.skipped {
        eprintln!("skipped {file}: {reason}");
    }
    if plan.jobs.is_empty() {
        bail!("nothing to render in {}", args.input.display());
    }
    let outcome = execute(&plan, &args.out, args.slots, args.state_dir, ctx.output == OutputFormat::Table).await?;
    let succeeded = outcome.tasks.iter().filter(|t| t.state == TaskState::Succeeded).count();
    let failed = outcome.tasks.len() - succeeded;
    if ctx.output == OutputFormat::Json {
        output::json(&serde_json::json!({
            "out": args.out,
            "elapsed_secs": outcome.elapsed.as_secs_f64(),
            "succeeded": succeeded,
            "failed": failed,
            "tasks": outcome.tasks.iter().map(|t| serde_json::json!({
                "file": t.job.asset_guid.as_str(), "state": t.state.as_str(), "metadata": metadata(t),
                "error": t.last_error, "manifest": t.result.as_ref().map(|r| r.manifest_uri.clone()),
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        let rows: Vec<Vec<String>> = outcome
            .tasks
            .iter()
            .map(|t| {
                let r = summary_row(t);
                ["file", "state", "bpm", "key", "lufs", "error"].iter().map(|k| r[k].clone()).collect()
            })
            .collect();
        output::table(&["FILE", "STATE", "BPM", "KEY", "LUFS", "ERROR"], &rows);
        println!();
        println!(
            "{succeeded} of {} masters rendered in {:.1} s; outputs in {}",
            outcome.tasks.len(),
            outcome.elapsed.as_secs_f64(),
            args.out.display()
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} masters failed (reasons above; each has a dead letter with its history)",
            outcome.tasks.len()
        );
    }
    Ok(())
}
