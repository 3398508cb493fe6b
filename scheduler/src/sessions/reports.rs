//! Reports: what a worker says about its leases (completed, failed, released, draining) becomes
//! ledger commands, and each report is acknowledged on the worker's stream once it is durable, so
//! the worker can forget it. A report that is not known to be durable gets no ack: the worker
//! sends it again, and the ledger ignores the duplicate as stale.

use std::sync::Arc;

use kiln_ledger::{Command, Outcome};
use kiln_proto::v1::{self, worker_message::Msg as Up};
use kiln_types::WorkerId;

use super::registry::Outbound;
use super::Hub;
use crate::convert;

impl Hub {
    /// Records a worker's reports that arrived together. Completions and failures go to the node
    /// in one hand-over (one wake-up of its thread, one Raft entry); releases and drains are rare
    /// and go on their own, as tracked tasks of their own.
    pub(super) async fn handle_reports(self: Arc<Self>, worker: WorkerId, tx: Outbound, reports: Vec<Up>) {
        let mut batch = Vec::with_capacity(reports.len());
        for msg in reports {
            let report = match msg {
                Up::Completed(c) => convert::completed_from_pb(&worker, c),
                Up::Failed(f) => convert::failed_from_pb(&worker, f),
                Up::Released(r) => {
                    self.spawn(self.clone().release(worker.clone(), tx.clone(), r));
                    None
                }
                Up::Drain(_) => {
                    let hub = self.clone();
                    let worker = worker.clone();
                    self.spawn(async move {
                        if let Err(e) = hub.handle.propose(Command::DrainWorker { worker: worker.clone() }).await {
                            tracing::debug!(%worker, error = %e, "drain not proposed");
                        }
                    });
                    None
                }
                // Taken in stream order by `on_session_state`.
                Up::Hello(_) | Up::Heartbeat(_) | Up::Want(_) => None,
            };
            batch.extend(report);
        }
        if batch.is_empty() {
            return;
        }
        let (commands, acks): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| (r.command, (r.lease, r.result))).unzip();
        let outcomes = self.handle.propose_many(commands).await;
        for ((lease, reported), outcome) in acks.into_iter().zip(outcomes) {
            // Not durable, or not known to be: no ack, so the worker sends the report again.
            let Ok(Ok(Outcome::Reported { accepted })) = outcome else { continue };
            if let (true, Some(reported)) = (accepted, reported) {
                self.kpis.completed(&reported);
            }
            let _ = tx.send(Ok(convert::ack_to_pb(lease, accepted))).await;
        }
    }

    async fn release(self: Arc<Self>, worker: WorkerId, tx: Outbound, released: v1::Released) {
        let cmd = convert::released_from_pb(&worker, &released);
        if let Ok(Ok(_)) = self.handle.propose(cmd).await {
            for lease in released.leases {
                let _ = tx.send(Ok(convert::ack_to_pb(lease, true))).await;
            }
            self.wake.notify_one();
        }
    }
}
