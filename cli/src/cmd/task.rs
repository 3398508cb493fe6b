//! `kiln task <ID>` (one task and its history) and `kiln cancel <ID>`.

use anyhow::Context as _;
use kiln_proto::v1;

use crate::cmd::{state_name, task_json, Context};
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Task id (a number) or, with --request-id, the submitter's request id.
    id: String,
    /// Look the task up by request_id instead of task id.
    #[arg(long)]
    request_id: bool,
}

#[derive(clap::Args)]
pub struct CancelArgs {
    /// Task id.
    id: u64,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let key = if args.request_id {
        v1::get_task_request::Key::RequestId(args.id.clone())
    } else {
        v1::get_task_request::Key::TaskId(args.id.parse().with_context(|| {
            format!("task id `{}` is not a number (use --request-id to look up by request id)", args.id)
        })?)
    };
    show(ctx, key).await
}

pub async fn show(ctx: &Context, key: v1::get_task_request::Key) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let task = client
        .call(|mut s| {
            let key = key.clone();
            async move { s.get_task(v1::GetTaskRequest { key: Some(key) }).await }
        })
        .await?;
    if ctx.output == OutputFormat::Json {
        return output::json(&task_json(&task));
    }
    print_task(&task);
    Ok(())
}

pub fn print_task(t: &v1::Task) {
    let job = t.job.clone().unwrap_or_default();
    println!("task {}  {}", t.id, state_name(t.state));
    println!("  request_id   {}", job.request_id);
    println!("  release/asset {}/{}", job.release_id, job.asset_id);
    println!("  asset_guid   {}", job.asset_guid);
    println!("  renderers    {}", job.derivative_assets.join(", "));
    println!("  queue        {} (priority {})", job.queue, job.priority);
    println!("  attempts     {}", attempts_line(t, job.max_attempts));
    println!("  submitted    {}", output::ms_to_rfc3339(t.submitted_at_ms));
    println!("  updated      {}", output::ms_to_rfc3339(t.updated_at_ms));
    if t.ready_at_ms > t.updated_at_ms && state_name(t.state) == "queued" {
        println!("  retry at     {}", output::ms_to_rfc3339(t.ready_at_ms));
    }
    if !t.worker.is_empty() {
        println!("  worker       {}", t.worker);
    }
    if !t.last_error.is_empty() {
        println!("  last error   {}", t.last_error);
    }
    if let Some(r) = &t.result {
        if let Ok(meta) = serde_json::from_str::<serde_json::Value>(&r.metadata_json) {
            println!("  metadata     {meta}");
        }
        for o in &r.outputs {
            println!(
                "  output       {} ({} bytes, sha256 {})",
                o.uri,
                o.bytes,
                o.sha256.get(..12).unwrap_or(&o.sha256)
            );
        }
        if !r.manifest_uri.is_empty() {
            println!("  manifest     {}", r.manifest_uri);
        }
    }
    println!();
    let rows: Vec<Vec<String>> = t
        .history
        .iter()
        .map(|h| {
            vec![
                output::ms_to_rfc3339(h.at_ms),
                h.kind.clone(),
                h.worker.clone(),
                h.attempt.to_string(),
                output::detail_with_times(&h.detail),
            ]
        })
        .collect();
    output::table(&["AT", "EVENT", "WORKER", "ATTEMPT", "DETAIL"], &rows);
}

/// `attempts` counts failed attempts; a succeeded task reads better as the attempt that succeeded.
fn attempts_line(t: &v1::Task, max: u32) -> String {
    if state_name(t.state) == "succeeded" {
        if let Some(h) = t.history.iter().rev().find(|h| h.kind == "succeeded") {
            return format!("succeeded on attempt {} of {max}", h.attempt.max(1));
        }
    }
    format!("{} failed of {max} allowed", t.attempts)
}

pub async fn cancel(ctx: &Context, args: CancelArgs) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let resp = client.call(|mut s| async move { s.cancel(v1::CancelRequest { task_id: args.id }).await }).await?;
    if ctx.output == OutputFormat::Json {
        return output::json(&resp.task.as_ref().map(task_json));
    }
    println!("task {} cancelled", args.id);
    Ok(())
}
