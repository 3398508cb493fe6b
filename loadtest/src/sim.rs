//! The pieces every scenario's simulated submitters and workers share: one submit call, and a
//! no-op render that reports its completion after the configured time.

use std::time::Duration;

use kiln_proto::v1::{self, worker_message::Msg as Up};
use tokio::sync::mpsc;

/// The no-op job number `i` of a loadtest run: `loudness` on a master nobody fetches.
pub fn job(run_id: &str, i: u64) -> v1::EncodeJob {
    v1::EncodeJob {
        request_id: format!("{run_id}-{i}"),
        release_id: (i / 100) as i64,
        asset_id: i as i64,
        asset_guid: format!("loadtest/{i}.wav"),
        derivative_assets: vec!["loudness".into()],
        ..Default::default()
    }
}

/// Submits one batch through the leader-following client (retried there: submit is idempotent).
pub async fn submit(client: &mut kiln_proto::Client, jobs: Vec<v1::EncodeJob>) -> anyhow::Result<()> {
    let req = v1::SubmitRequest { jobs };
    client
        .call(|mut s| {
            let req = req.clone();
            async move { s.submit(req).await }
        })
        .await?;
    Ok(())
}

/// "Renders" `lease` for `task_ms` and sends its completion up the session, off the reader's
/// task so a slow render never stalls the stream.
pub fn complete_after(tx: mpsc::Sender<v1::WorkerMessage>, lease: v1::LeaseRef, task_ms: u64) {
    tokio::spawn(async move {
        if task_ms > 0 {
            tokio::time::sleep(Duration::from_millis(task_ms)).await;
        }
        let done = v1::Completed { lease: Some(lease), result: Some(v1::TaskResult::default()) };
        let _ = tx.send(v1::WorkerMessage { msg: Some(Up::Completed(done)) }).await;
    });
}
