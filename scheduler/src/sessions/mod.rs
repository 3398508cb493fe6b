//! Worker sessions: the `kiln.v1.WorkerSession` service and the hub that leases work to them. A thin
//! adapter between the workers' streams and the node: the policy (leases, steals, backups,
//! expiry) is the ledger's; this module only turns messages into commands and outcomes into
//! messages, through `convert`.
//!
//! Workers pull. Each session tells the hub how many more tasks it can take (`Want`); the
//! dispatcher proposes `Lease` commands for sessions that want work whenever tasks become ready,
//! and pushes the leased tasks down the session's stream. Lease sizes follow capacity: a worker
//! wants `slots × (1 + prefetch)` and asks again only as it finishes, so each gets work in
//! proportion to what it completes. When a wanting worker has a free slot and nothing in its
//! queues is ready, the dispatcher asks the ledger for a steal plan
//! ([`kiln_ledger::Ledger::steal_plan`], then [`kiln_ledger::Ledger::backup_plan`]) from what each
//! worker's latest heartbeat listed as unstarted or running; `docs/fleet.md` explains the policy.
//!
//! ```text
//!  worker ◀──Assign/Revoke/Ack── stream ◀── dispatch ◀── wake (TasksReady, Want, timer)
//!  worker ──Hello/Want/Heartbeat──▶ stream ──▶ registry, heartbeat (renewal every TTL/3)
//!  worker ──Completed/Failed/Released/Drain──▶ stream ──▶ reports ──▶ Handle::propose_many
//! ```
//!
//! Layout: `stream` (one reader per session), `registry` (the connected sessions), `dispatch`
//! (leasing and stealing), `heartbeat` (in-memory liveness, renewals), `reports` (reports to
//! commands, acks once durable).
//!
//! Every task the hub starts — a session's reader, a batch of reports, a renewal, the dispatcher and
//! the event loop — is tracked and cancelled on [`Hub::shutdown`], which returns once all of them
//! have ended; the workers' streams end with it.

mod dispatch;
mod heartbeat;
mod registry;
mod reports;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use kiln_ledger::Effect;
use kiln_types::WorkerId;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

pub use dispatch::MAX_HELD_PER_SLOT;
pub use registry::Live;
pub use stream::SessionService;

use crate::convert;
use crate::handle::Handle;
use crate::node::NodeEvent;
use crate::status::from_propose;

/// What the hub needs from the scheduler's options.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub node_id: u64,
    /// Work stealing on (the default) or off (to measure what it buys).
    pub work_stealing: bool,
}

pub struct Hub {
    handle: Handle,
    registry: registry::Registry,
    /// Woken when work may be leasable: tasks became ready, a worker asked for more, a new leader.
    wake: Notify,
    next_conn: AtomicU64,
    config: HubConfig,
    /// Every task the hub spawned, for [`Hub::shutdown`] to wait for.
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Latencies and bytes seen on the sessions, for `/metrics`.
    pub kpis: crate::kpi::Kpis,
}

impl Hub {
    pub fn new(handle: Handle, config: HubConfig) -> Arc<Self> {
        Arc::new(Self {
            handle,
            registry: registry::Registry::default(),
            wake: Notify::new(),
            next_conn: AtomicU64::new(1),
            config,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            kpis: crate::kpi::Kpis::default(),
        })
    }

    /// Starts the dispatcher and the loop that acts on the node's events.
    pub fn start(self: &Arc<Self>, events: mpsc::UnboundedReceiver<NodeEvent>) {
        self.spawn(self.clone().run_events(events));
        self.spawn(self.clone().run_dispatcher());
    }

    /// The latest heartbeat of every worker with a session on this node.
    pub fn live(&self) -> HashMap<WorkerId, Live> {
        self.registry.live()
    }

    /// Runs `work` as a tracked task that shutdown cancels.
    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// Ends every session (each worker's stream ends with `UNAVAILABLE`, so it reconnects to
    /// another node), cancels every task the hub started, and returns once they have all ended.
    /// Sessions that open afterwards are refused.
    pub async fn shutdown(&self) {
        let closing = Status::unavailable("this scheduler is shutting down");
        for tx in self.registry.drain(true) {
            let _ = tx.try_send(Err(closing.clone()));
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Tasks of the hub still running (0 once [`Hub::shutdown`] has returned).
    #[cfg(test)]
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Acts on what the node reports: revocations go to their worker, readiness wakes the dispatcher.
    async fn run_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<NodeEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                NodeEvent::Effect(Effect::TasksReady { .. }) | NodeEvent::BecameLeader => self.wake.notify_one(),
                NodeEvent::Effect(Effect::Revoke { worker, task, lease_seq, reason }) => {
                    if let Some(tx) = self.registry.sender(&worker) {
                        let msg = convert::revoke_to_pb(task, lease_seq, reason);
                        // Bounded: a worker that stopped reading must not stall every other one.
                        let _ = tx.send_timeout(Ok(msg), dispatch::SEND_TIMEOUT).await;
                    }
                }
                NodeEvent::LostLeadership => {
                    // Workers must follow the new leader: end every stream with a hint.
                    let leader = self.handle.status().await.ok().and_then(|s| convert::leader_address(&s));
                    let err =
                        from_propose(crate::node::ProposeError::NotLeader { leader_id: 0, leader_address: leader });
                    for tx in self.registry.drain(false) {
                        // A full stream ends anyway once its sender is dropped here.
                        let _ = tx.try_send(Err(err.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kiln_proto::v1::{self, worker_message::Msg as Up};
    use tokio_stream::StreamExt as _;

    fn up(msg: Up) -> v1::WorkerMessage {
        v1::WorkerMessage { msg: Some(msg) }
    }

    #[tokio::test]
    async fn shutdown_ends_every_worker_stream_and_waits_for_the_session_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = kiln_config::SchedulerOptions {
            data_dir: dir.path().join("ledger"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        let running = crate::start(&opts).await.expect("start");
        while running.handle().status().await.map_or(true, |s| !s.is_leader) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let hub = running.hub.clone();

        let mut client =
            v1::worker_session_client::WorkerSessionClient::connect(format!("http://{}", running.grpc_addr()))
                .await
                .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let hello =
            v1::Hello { worker_id: "w1".into(), slots: 2, queues: vec!["default".into()], ..Default::default() };
        tx.send(up(Up::Hello(hello))).await.expect("hello");
        let mut inbound =
            client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("session").into_inner();
        let welcome = inbound.next().await.expect("a message").expect("welcome");
        assert!(matches!(welcome.msg, Some(v1::scheduler_message::Msg::Welcome(_))), "{welcome:?}");
        tx.send(up(Up::Want(v1::Want { count: 4 }))).await.expect("want");
        let stale = v1::Completed { lease: Some(v1::LeaseRef { task_id: 99, lease_seq: 1 }), result: None };
        tx.send(up(Up::Completed(stale))).await.expect("report");
        // The reader has taken the session's messages once the report is acknowledged (as stale).
        let ack = tokio::time::timeout(Duration::from_secs(10), inbound.next()).await.expect("an ack in time");
        assert!(matches!(ack, Some(Ok(v1::SchedulerMessage { msg: Some(v1::scheduler_message::Msg::Ack(_)) }))));
        assert!(hub.running_tasks() >= 3, "the dispatcher, the event loop and the session's reader");

        tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await.expect("shutdown returns");
        assert_eq!(hub.running_tasks(), 0, "no session task outlives the shutdown");
        assert_eq!(hub.registry.len(), 0);
        // The worker is told, so it can go to another node; its stream does not hang open.
        let end = tokio::time::timeout(Duration::from_secs(5), inbound.next()).await.expect("the stream ends");
        match end {
            Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
            None => {}
            Some(Ok(m)) => panic!("unexpected message after shutdown: {m:?}"),
        }
        drop(tx);
    }
}
