//! `kiln status`: counts, rates and progress; `--watch` keeps a live bar.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Keep a live progress bar until every submitted task has finished (Ctrl-C to stop). Exits
    /// non-zero if tasks were dead-lettered while it watched, so a script can stop there.
    #[arg(long)]
    watch: bool,
    /// Refresh interval for --watch.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

pub async fn fetch(client: &mut kiln_proto::Client) -> anyhow::Result<v1::StatusResponse> {
    Ok(client.call(|mut s| async move { s.status(v1::StatusRequest {}).await }).await?)
}

fn finished(t: &v1::StateCounts) -> u64 {
    t.succeeded + t.dead_lettered + t.cancelled
}

pub fn status_json(s: &v1::StatusResponse) -> serde_json::Value {
    let counts = |c: &Option<v1::StateCounts>| {
        let c = c.unwrap_or_default();
        serde_json::json!({
            "queued": c.queued, "retrying": c.retrying, "leased": c.leased, "succeeded": c.succeeded,
            "dead_lettered": c.dead_lettered, "cancelled": c.cancelled,
        })
    };
    let cluster = s.cluster.clone().unwrap_or_default();
    serde_json::json!({
        "submitted_total": s.submitted_total,
        "live": counts(&s.live),
        "total": counts(&s.total),
        "workers": s.workers, "slots": s.slots, "running": s.running,
        "completions_per_minute": s.completions_per_minute,
        "failures_per_minute": s.failures_per_minute,
        "queues": s.queues.iter().map(|q| serde_json::json!({"name": q.name, "ready": q.ready, "retrying": q.retrying, "leased": q.leased})).collect::<Vec<_>>(),
        "node_id": cluster.node_id, "leader_id": cluster.leader_id, "term": cluster.term, "applied_index": cluster.applied_index,
        "commit_index": cluster.commit_index, "role": cluster.role, "leader_heard_ms": cluster.leader_heard_ms,
        "as_of": output::ms_to_rfc3339(s.now_ms),
    })
}

fn eta(remaining: u64, per_minute: f64) -> String {
    if remaining == 0 {
        return "done".into();
    }
    if per_minute <= 0.0 {
        return "unknown".into();
    }
    let secs = (remaining as f64 / per_minute * 60.0).round() as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    if args.watch {
        return watch(&mut client, args.interval).await;
    }
    let s = fetch(&mut client).await?;
    if ctx.output == OutputFormat::Json {
        return output::json(&status_json(&s));
    }
    let total = s.total.unwrap_or_default();
    let live = s.live.unwrap_or_default();
    let remaining = s.submitted_total.saturating_sub(finished(&total));
    println!(
        "submitted {}  finished {}  remaining {}  (eta {})",
        s.submitted_total,
        finished(&total),
        remaining,
        eta(remaining, s.completions_per_minute)
    );
    println!();
    output::table(
        &["STATE", "NOW", "ALL TIME"],
        &[
            vec!["queued".into(), live.queued.to_string(), "".into()],
            vec!["  retrying".into(), live.retrying.to_string(), "".into()],
            vec!["leased".into(), live.leased.to_string(), "".into()],
            vec!["succeeded".into(), live.succeeded.to_string(), total.succeeded.to_string()],
            vec!["dead_lettered".into(), live.dead_lettered.to_string(), total.dead_lettered.to_string()],
            vec!["cancelled".into(), live.cancelled.to_string(), total.cancelled.to_string()],
        ],
    );
    println!();
    println!(
        "rate: {:.0} completed/min, {:.0} failed/min   workers: {} ({} slots, {} running)",
        s.completions_per_minute, s.failures_per_minute, s.workers, s.slots, s.running
    );
    if let Some(c) = &s.cluster {
        // Any node answers status from its own copy; say how fresh that copy is.
        let freshness = if c.role == "leader" {
            "the leader's own copy".to_owned()
        } else {
            format!(
                "a {} copy: applied {} of commit {}, leader last heard {} ms ago",
                c.role, c.applied_index, c.commit_index, c.leader_heard_ms
            )
        };
        println!(
            "answered by node {} (leader {}, term {}, applied index {}; {freshness})",
            c.node_id, c.leader_id, c.term, c.applied_index
        );
    }
    if !s.queues.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .queues
            .iter()
            .map(|q| vec![q.name.clone(), q.ready.to_string(), q.retrying.to_string(), q.leased.to_string()])
            .collect();
        output::table(&["QUEUE", "READY", "RETRYING", "LEASED"], &rows);
    }
    // Batches still running (or still finishing their last tasks); a cluster that never ran one,
    // or runs a release without them, shows none.
    let batches = crate::cmd::batch::fetch_all(&mut client).await.unwrap_or_default();
    let active: Vec<v1::Batch> = batches.into_iter().filter(|b| !crate::cmd::batch::finished(b)).collect();
    if !active.is_empty() {
        println!();
        output::table(
            &["BATCH", "NAME", "STATE", "DONE", "LIVE", "DEAD", "BAD", "RATE/S", "ETA"],
            &crate::cmd::batch::rows(&active),
        );
    }
    Ok(())
}

async fn watch(client: &mut kiln_proto::Client, interval: Duration) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&crate::output::bar_template("{bar:40.cyan/blue} {pos}/{len} finished  {msg}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut dead_before = None;
    loop {
        let s = fetch(client).await?;
        let total = s.total.unwrap_or_default();
        let dead_before = *dead_before.get_or_insert(total.dead_lettered);
        let done = finished(&total);
        bar.set_length(s.submitted_total);
        bar.set_position(done);
        let remaining = s.submitted_total.saturating_sub(done);
        bar.set_message(format!(
            "{:.0}/min  running {}  failed {}  workers {}  eta {}",
            s.completions_per_minute,
            s.running,
            total.dead_lettered,
            s.workers,
            eta(remaining, s.completions_per_minute)
        ));
        if remaining == 0 && s.submitted_total > 0 {
            bar.finish();
            println!(
                "all {} tasks finished in {}",
                s.submitted_total,
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            );
            let dead = total.dead_lettered.saturating_sub(dead_before);
            if dead > 0 {
                anyhow::bail!("{dead} tasks were dead-lettered while watching (`kiln dlq list` says why)");
            }
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}
