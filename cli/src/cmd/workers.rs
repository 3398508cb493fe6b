//! `kiln workers`: the fleet as the scheduler sees it.
//!
//! `BUSY` and `PREFETCHED` come from each worker's latest heartbeat to the leader (slots rendering,
//! leases not started yet); `STOLE`/`LOST` count work stealing: tasks this worker took from
//! others, and tasks others took from it.

use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Include workers whose session is closed.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    watch: crate::cmd::Watch,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    args.watch.repeat(ctx.output, || show(ctx, args.all)).await
}

async fn show(ctx: &Context, all: bool) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let resp = client.call(|mut s| async move { s.list_workers(v1::ListWorkersRequest {}).await }).await?;
    let workers: Vec<_> = resp.workers.into_iter().filter(|w| all || w.connected).collect();
    if ctx.output == OutputFormat::Json {
        return output::json(&workers.iter().map(|w| serde_json::json!({
            "id": w.id, "hostname": w.hostname, "slots": w.slots, "cores": w.cores, "memory_bytes": w.memory_bytes,
            "speed": w.speed, "queues": w.queues, "leased": w.leased, "draining": w.draining, "connected": w.connected,
            "last_seen": output::ms_to_rfc3339(w.last_seen_ms), "completed": w.completed, "failed": w.failed, "version": w.version,
            "busy_slots": w.busy_slots, "prefetched": w.buffered, "stole": w.stole, "stolen_from": w.stolen_from,
        })).collect::<Vec<_>>());
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let state = match (w.connected, w.draining) {
                (false, _) => "disconnected",
                (true, true) => "draining",
                (true, false) => "ready",
            };
            vec![
                w.id.clone(),
                state.into(),
                w.slots.to_string(),
                w.busy_slots.to_string(),
                w.leased.to_string(),
                w.buffered.to_string(),
                w.completed.to_string(),
                w.failed.to_string(),
                w.stole.to_string(),
                w.stolen_from.to_string(),
                format!("{:.2}", w.speed),
                w.queues.join(","),
            ]
        })
        .collect();
    output::table(
        &[
            "WORKER",
            "STATE",
            "SLOTS",
            "BUSY",
            "LEASED",
            "PREFETCHED",
            "DONE",
            "FAILED",
            "STOLE",
            "LOST",
            "SPEED",
            "QUEUES",
        ],
        &rows,
    );
    Ok(())
}
