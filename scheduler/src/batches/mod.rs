//! Catalog batches in the shell: the leader's streaming admission (`admission`, reading
//! `source`), its webhooks (`webhook`), and what the API needs (`api`: checking a submission,
//! the batch as clients see it, with its rate and ETA).

pub(crate) mod admission;
pub(crate) mod api;
pub mod source;
pub mod webhook;

use std::time::Duration;

use tokio::sync::watch;

/// Waits `poll`, or until `stop` turns true; false once the loop should end. The leader's batch
/// loops go round on this.
pub(crate) async fn next_round(stop: &mut watch::Receiver<bool>, poll: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(poll) => {}
        _ = stop.changed() => return false,
    }
    !*stop.borrow()
}
