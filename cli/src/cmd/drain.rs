//! `kiln drain WORKER`: empty a worker before taking its machine down. The scheduler leases it
//! nothing more; the tasks it holds finish (or are stolen by idle workers) as usual. The drain
//! lasts until the worker registers again: a restart, or a reconnect after a network failure.

use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    /// The worker's id, as `kiln workers` lists it.
    worker: String,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let request = v1::DrainWorkerRequest { worker_id: args.worker };
    let w = client
        .call(|mut s| {
            let r = request.clone();
            async move { s.drain_worker(r).await }
        })
        .await?;
    if ctx.output == OutputFormat::Json {
        return output::json(&serde_json::json!({
            "id": w.id, "draining": w.draining, "connected": w.connected, "leased": w.leased,
        }));
    }
    println!(
        "worker {} is draining: it takes no new tasks and still holds {} lease(s). \
         `kiln workers` shows when LEASED reaches 0.",
        w.id, w.leased
    );
    Ok(())
}
