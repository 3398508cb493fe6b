//! `kiln batch submit|list|show|pause|resume|cancel|wait|requeue`: a whole manifest as one
//! replicated batch, admitted by the leader a window at a time (docs/operations.md, "Running a
//! catalog batch").

use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run a manifest as one batch: the leader reads it and admits its lines as the window frees.
    ///
    /// SOURCE is read by the schedulers, not by this command: a path they can all see (an NFS
    /// mount) or a URL (s3://bucket/key, gs://…, az://…, https://…). Lines are JSONL or CSV, as for
    /// `kiln submit --manifest`. The ledger holds at most --window live tasks of the batch however
    /// long the manifest is; finished tasks are counted and dropped (their outputs are in the
    /// store). A leader change resumes at the committed line, never skipping or repeating one.
    Submit(SubmitArgs),
    /// Every batch with its state and progress.
    List {
        #[command(flatten)]
        watch: crate::cmd::Watch,
    },
    /// One batch: counts, cursor, rate, ETA and its first bad lines.
    Show { id: u64 },
    /// Stop admitting lines (tasks already admitted keep running); `resume` carries on.
    Pause { id: u64 },
    /// Admit lines again after `pause`.
    Resume { id: u64 },
    /// Stop admitting and cancel the batch's tasks not yet leased (leased ones finish).
    Cancel { id: u64 },
    /// Follow a batch until it has finished. Exits 0 if every line rendered, 1 if a line was bad
    /// or a task dead-lettered, 2 if the batch was cancelled or stopped by a bad line.
    Wait {
        id: u64,
        /// Give up after this long (exit 3), e.g. `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Put the batch's dead letters back in their queues; a finished batch runs again.
    Requeue { id: u64 },
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// The manifest: a path the schedulers can read, or a URL.
    source: String,
    /// A name to recognise the batch by (default: the manifest's file name).
    #[arg(long)]
    name: Option<String>,
    /// jsonl or csv (default: from the extension).
    #[arg(long)]
    format: Option<String>,
    /// Queue for lines that name none.
    #[arg(long)]
    queue: Option<String>,
    /// Priority for lines that set none (higher runs first; backfills use negative values).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Most live tasks of this batch at a time (default: the scheduler's `batches.window`).
    #[arg(long)]
    window: Option<u64>,
    /// What a bad line does: `stop` the batch there, or `skip` it and record it.
    #[arg(long, default_value = "stop", value_parser = ["stop", "skip"])]
    on_bad_line: String,
    /// POST the batch's final event (done, failed, cancelled) here, signed with the scheduler's
    /// webhook secret.
    #[arg(long)]
    webhook: Option<String>,
    /// Makes the submission idempotent: the same id returns the same batch (safe to retry).
    #[arg(long)]
    request_id: Option<String>,
    /// Follow the batch until it finishes, as `kiln batch wait` does.
    #[arg(long)]
    wait: bool,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Submit(a) => submit(ctx, a).await,
        Command::List { watch } => watch.repeat(ctx.output, || list(ctx)).await,
        Command::Show { id } => show(ctx, id).await,
        Command::Pause { id } => control(ctx, id, "pause").await,
        Command::Resume { id } => control(ctx, id, "resume").await,
        Command::Cancel { id } => control(ctx, id, "cancel").await,
        Command::Wait { id, timeout } => wait(ctx, id, timeout).await,
        Command::Requeue { id } => requeue(ctx, id).await,
    }
}

async fn submit(ctx: &Context, a: SubmitArgs) -> anyhow::Result<()> {
    let spec = v1::BatchSpec {
        name: a.name.unwrap_or_default(),
        source: a.source.clone(),
        format: a.format.unwrap_or_default(),
        queue: a.queue.unwrap_or_default(),
        priority: a.priority,
        window: a.window.unwrap_or(0),
        on_bad_line: a.on_bad_line,
        webhook: a.webhook.unwrap_or_default(),
        // Generated here, so a retried call (leader change mid-call) cannot create two batches.
        request_id: a.request_id.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4())),
    };
    let mut client = ctx.client()?;
    let batch = client
        .call(|mut s| {
            let spec = spec.clone();
            async move { s.submit_batch(spec).await }
        })
        .await
        .with_context(|| format!("cannot submit {} as a batch", a.source))?;
    if a.wait {
        if ctx.output == OutputFormat::Table {
            println!("batch {} submitted ({}); following it", batch.id, name_of(&batch));
        }
        return wait(ctx, batch.id, None).await;
    }
    if ctx.output == OutputFormat::Json {
        return output::json(&batch_json(&batch));
    }
    println!("batch {} submitted: {} (window {})", batch.id, name_of(&batch), window_of(&batch));
    println!("follow it with `kiln batch wait {}` or `kiln batch show {}`", batch.id, batch.id);
    Ok(())
}

fn name_of(b: &v1::Batch) -> &str {
    b.spec.as_ref().map_or("", |s| s.name.as_str())
}

fn window_of(b: &v1::Batch) -> u64 {
    b.spec.as_ref().map_or(0, |s| s.window)
}

pub fn batch_json(b: &v1::Batch) -> serde_json::Value {
    let spec = b.spec.clone().unwrap_or_default();
    serde_json::json!({
        "id": b.id, "name": spec.name, "source": spec.source, "format": spec.format, "queue": spec.queue,
        "priority": spec.priority, "window": spec.window, "on_bad_line": spec.on_bad_line,
        "webhook": spec.webhook, "request_id": spec.request_id,
        "state": b.state, "admitted": b.admitted, "succeeded": b.succeeded, "failed": b.failed,
        "dead_lettered": b.dead_lettered, "cancelled": b.cancelled, "bad_lines": b.bad_lines,
        "duplicates": b.duplicates, "live": b.live,
        "cursor": {"line": b.line, "offset": b.offset}, "source_bytes": b.source_bytes, "source_done": b.source_done,
        "estimated_lines": b.estimated_lines, "rate_per_second": b.rate_per_second,
        "eta_seconds": if b.eta_ms < 0 { None } else { Some(b.eta_ms / 1000) },
        "error": if b.error.is_empty() { None } else { Some(&b.error) },
        "first_bad_lines": b.first_bad_lines.iter().map(|l| serde_json::json!({"line": l.line, "reason": l.reason})).collect::<Vec<_>>(),
        "created_at": output::ms_to_rfc3339(b.created_at_ms),
        "finished_at": (b.finished_at_ms > 0).then(|| output::ms_to_rfc3339(b.finished_at_ms)),
        "events": b.events, "notified": b.notified,
    })
}

fn eta_text(b: &v1::Batch) -> String {
    match b.eta_ms {
        ms if ms < 0 => "unknown".into(),
        0 if finished(b) => "-".into(),
        ms => humantime::format_duration(Duration::from_secs((ms / 1000) as u64)).to_string(),
    }
}

/// Final state and nothing of it still running.
pub fn finished(b: &v1::Batch) -> bool {
    matches!(b.state.as_str(), "done" | "cancelled" | "failed") && b.live == 0
}

fn progress(b: &v1::Batch) -> String {
    let done = b.succeeded + b.dead_lettered + b.cancelled;
    match b.estimated_lines {
        0 => format!("{done}"),
        n => format!("{done}/{n}{}", if b.source_done { "" } else { "~" }),
    }
}

pub async fn fetch_all(client: &mut kiln_proto::Client) -> anyhow::Result<Vec<v1::Batch>> {
    Ok(client.call(|mut s| async move { s.list_batches(v1::ListBatchesRequest {}).await }).await?.batches)
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let batches = fetch_all(&mut client).await.context("cannot list batches")?;
    if ctx.output == OutputFormat::Json {
        return output::json(&batches.iter().map(batch_json).collect::<Vec<_>>());
    }
    if batches.is_empty() {
        println!("no batches (submit one with `kiln batch submit MANIFEST`)");
        return Ok(());
    }
    output::table(&["ID", "NAME", "STATE", "DONE", "LIVE", "DEAD", "BAD", "RATE/S", "ETA"], &rows(&batches));
    Ok(())
}

pub fn rows(batches: &[v1::Batch]) -> Vec<Vec<String>> {
    batches
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                name_of(b).to_owned(),
                b.state.clone(),
                progress(b),
                b.live.to_string(),
                b.dead_lettered.to_string(),
                b.bad_lines.to_string(),
                format!("{:.1}", b.rate_per_second),
                eta_text(b),
            ]
        })
        .collect()
}

async fn get(ctx: &Context, id: u64) -> anyhow::Result<v1::Batch> {
    let mut client = ctx.client()?;
    client
        .call(|mut s| async move { s.get_batch(v1::GetBatchRequest { id }).await })
        .await
        .with_context(|| format!("cannot read batch {id}"))
}

async fn show(ctx: &Context, id: u64) -> anyhow::Result<()> {
    let b = get(ctx, id).await?;
    if ctx.output == OutputFormat::Json {
        return output::json(&batch_json(&b));
    }
    let spec = b.spec.clone().unwrap_or_default();
    println!("batch {}  {}  [{}]", b.id, spec.name, b.state);
    println!("  source      {} ({}, {} bytes)", spec.source, spec.format, b.source_bytes);
    println!("  read to     line {} (byte {}){}", b.line, b.offset, if b.source_done { ", end of source" } else { "" });
    println!("  window      {} live of {}", b.live, spec.window);
    println!(
        "  tasks       {} admitted, {} succeeded, {} dead-lettered, {} cancelled ({} failed attempts)",
        b.admitted, b.succeeded, b.dead_lettered, b.cancelled, b.failed
    );
    println!("  lines       {} bad ({}), {} duplicates", b.bad_lines, spec.on_bad_line, b.duplicates);
    println!("  progress    {}  {:.1} tasks/s  ETA {}", progress(&b), b.rate_per_second, eta_text(&b));
    println!("  created     {}", output::ms_to_rfc3339(b.created_at_ms));
    if b.finished_at_ms > 0 {
        println!("  finished    {}", output::ms_to_rfc3339(b.finished_at_ms));
    }
    if !spec.webhook.is_empty() || b.events > 0 {
        let hook = if spec.webhook.is_empty() { "(the scheduler's default)" } else { spec.webhook.as_str() };
        println!("  webhook     {hook}: {} of {} events delivered", b.notified, b.events);
    }
    if !b.error.is_empty() {
        println!("  error       {}", b.error);
    }
    for line in &b.first_bad_lines {
        println!("  bad line {}: {}", line.line, line.reason);
    }
    if b.bad_lines > b.first_bad_lines.len() as u64 {
        println!("  … {} more bad lines (only the first are kept)", b.bad_lines - b.first_bad_lines.len() as u64);
    }
    Ok(())
}

async fn control(ctx: &Context, id: u64, action: &str) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let b = client
        .call(|mut s| {
            let request = v1::BatchControlRequest { id, action: action.to_owned() };
            async move { s.control_batch(request).await }
        })
        .await
        .with_context(|| format!("cannot {action} batch {id}"))?;
    if ctx.output == OutputFormat::Json {
        return output::json(&batch_json(&b));
    }
    match action {
        "cancel" => println!(
            "batch {id} cancelled: {} unstarted tasks cancelled, {} leased still finishing",
            b.cancelled, b.live
        ),
        _ => println!("batch {id} is {}", b.state),
    }
    Ok(())
}

async fn requeue(ctx: &Context, id: u64) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let count = client
        .call(|mut s| async move { s.requeue_batch(v1::GetBatchRequest { id }).await })
        .await
        .with_context(|| format!("cannot requeue the dead letters of batch {id}"))?
        .count;
    if ctx.output == OutputFormat::Json {
        return output::json(&serde_json::json!({ "batch": id, "requeued": count }));
    }
    println!("{count} dead-lettered tasks of batch {id} requeued");
    Ok(())
}

/// Follows the batch with a progress bar (on a terminal) until it finishes; the exit code says
/// how it ended.
async fn wait(ctx: &Context, id: u64, timeout: Option<Duration>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let show_bar = ctx.output == OutputFormat::Table && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = ProgressBar::hidden();
    if show_bar {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(&output::bar_template(
                "{spinner} batch {prefix} [{bar:40}] {pos}/{len} {msg}",
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(id.to_string());
    }
    let b = loop {
        let b = get(ctx, id).await?;
        bar.set_length(b.estimated_lines.max(b.admitted));
        bar.set_position(b.succeeded + b.dead_lettered + b.cancelled + b.bad_lines + b.duplicates);
        bar.set_message(format!("{} {:.0}/s ETA {}", b.state, b.rate_per_second, eta_text(&b)));
        if finished(&b) {
            break b;
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            bar.abandon();
            eprintln!("batch {id} has not finished after {:?}: {} live, state {}", started.elapsed(), b.live, b.state);
            std::process::exit(3);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    if ctx.output == OutputFormat::Json {
        output::json(&batch_json(&b))?;
    } else {
        println!(
            "batch {id} {}: {} succeeded, {} dead-lettered, {} cancelled, {} bad lines",
            b.state, b.succeeded, b.dead_lettered, b.cancelled, b.bad_lines
        );
        if !b.error.is_empty() {
            println!("  {}", b.error);
        }
    }
    let code = match b.state.as_str() {
        "cancelled" | "failed" => 2,
        _ if b.dead_lettered > 0 || b.bad_lines > 0 => 1,
        _ => 0,
    };
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
