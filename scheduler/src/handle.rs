//! The cheap, cloneable way to talk to the node thread: propose a command, or read the ledger.

use std::sync::Arc;
use std::time::Instant;

use kiln_ledger::{Command, Ledger, Outcome, Rejection};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::node::{MemberChange, MembershipOutcome, NodeStatus, ProposeError, Request};
use crate::raft_metrics::RaftMetrics;

#[derive(Clone)]
pub struct Handle {
    requests: flume::Sender<Request>,
    metrics: Arc<RaftMetrics>,
    /// One turn for reads that walk many tasks (listings, dead-letter scans).
    heavy: Arc<Semaphore>,
    /// What this node presents when it calls another member (its node certificate under TLS).
    peer_credentials: kiln_proto::Credentials,
}

impl Handle {
    pub(crate) fn new(
        requests: flume::Sender<Request>,
        metrics: Arc<RaftMetrics>,
        peer_credentials: kiln_proto::Credentials,
    ) -> Self {
        Self { requests, metrics, heavy: Arc::new(Semaphore::new(1)), peer_credentials }
    }

    /// What this node presents when it calls another member.
    pub(crate) fn peer_credentials(&self) -> &kiln_proto::Credentials {
        &self.peer_credentials
    }

    /// Waits for this node's one turn for a read that walks many tasks; hold it across the read.
    /// Such reads run on the node thread, between Raft rounds: taking turns means a burst of
    /// listings (a dashboard left open in many tabs, a script in a loop) queues here, off the
    /// node thread, instead of delaying consensus by the sum of all of them.
    pub async fn heavy_read_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.heavy.clone().acquire_owned().await.ok()
    }

    /// The node's Raft latencies and leader changes, for `/metrics`.
    pub(crate) fn raft_metrics(&self) -> &RaftMetrics {
        &self.metrics
    }

    /// Replicates `cmd` and returns its outcome once it is committed, durable and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Result<Outcome, Rejection>, ProposeError> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.requests.send_async(Request::Propose { cmd, reply }).await.map_err(|_| ProposeError::Stopped)?;
        let outcome = rx.await.map_err(|_| ProposeError::Stopped)?;
        if outcome.is_ok() {
            self.metrics.proposed(started.elapsed());
        }
        outcome
    }

    /// Replicates several commands, handed to the node thread together, and returns each one's
    /// outcome in order. The commands may share a Raft entry with one another and with others.
    pub async fn propose_many(&self, cmds: Vec<Command>) -> Vec<Result<Result<Outcome, Rejection>, ProposeError>> {
        let started = Instant::now();
        let (proposals, replies): (Vec<_>, Vec<_>) = cmds
            .into_iter()
            .map(|cmd| {
                let (reply, rx) = oneshot::channel();
                ((cmd, reply), rx)
            })
            .unzip();
        if self.requests.send_async(Request::ProposeMany(proposals)).await.is_err() {
            return replies.iter().map(|_| Err(ProposeError::Stopped)).collect();
        }
        let mut outcomes = Vec::with_capacity(replies.len());
        for rx in replies {
            let outcome = rx.await.unwrap_or(Err(ProposeError::Stopped));
            if outcome.is_ok() {
                self.metrics.proposed(started.elapsed());
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Runs `f` against this node's applied ledger. On the leader this sees every acknowledged
    /// write; on a follower it may lag (the status says by how much).
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Ledger, &NodeStatus) -> R + Send + 'static,
    ) -> Result<R, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |ledger: &Ledger, status: &NodeStatus| {
            let _ = tx.send(f(ledger, status));
        });
        self.requests.send_async(Request::Read(job)).await.map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)
    }

    /// Like [`read`](Self::read) but linearizable: served by the leader after confirming its
    /// leadership with a quorum, so it sees every write acknowledged before the call.
    pub async fn read_fresh<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Ledger, &NodeStatus) -> R + Send + 'static,
    ) -> Result<R, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |state: Result<(&Ledger, &NodeStatus), ProposeError>| {
            let _ = tx.send(state.map(|(ledger, status)| f(ledger, status)));
        });
        self.requests.send_async(Request::FreshRead(job)).await.map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Hands a Raft message from a peer to the node.
    pub async fn step(&self, msg: raft::prelude::Message) -> Result<(), ProposeError> {
        self.requests.send_async(Request::Step(Box::new(msg))).await.map_err(|_| ProposeError::Stopped)
    }

    /// Proposes a membership change (leader only) and returns the members once it is applied.
    pub async fn change_membership(&self, change: MemberChange) -> Result<MembershipOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send_async(Request::ChangeMembership { change, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Asks the node thread to stop after its current round.
    pub(crate) fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
    }

    pub async fn status(&self) -> Result<NodeStatus, ProposeError> {
        self.read(|_, status| status.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heavy_reads_take_turns_and_every_clone_shares_the_turn() {
        let (requests, _node) = flume::unbounded();
        let handle = Handle::new(requests, Arc::default(), kiln_proto::Credentials::plaintext());
        let first = handle.heavy_read_turn().await.expect("a turn");
        let other = handle.clone();
        let second = tokio::spawn(async move { other.heavy_read_turn().await.is_some() });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "a second heavy read ran beside the first");
        drop(first);
        assert!(second.await.expect("join"), "the second read gets its turn once the first ends");
    }
}
