//! One worker's stream: the `WorkerSession` handshake (Hello → register → Welcome), then a reader
//! that takes the worker's messages in order until the stream ends or the node shuts down.
//!
//! What changes the session itself (`Want`, `Drain`, heartbeats) is applied in stream order as it
//! is read; reports are batched — everything the worker has already sent, up to
//! [`MAX_MESSAGES_PER_TURN`] — and handed to a tracked task, so the next messages are read while
//! these are made durable.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, Stream};
use kiln_ledger::Command;
use kiln_proto::v1::{self, worker_message::Msg as Up, worker_session_server::WorkerSession};
use kiln_types::{TaskId, WorkerId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::registry::{Outbound, Session};
use super::Hub;
use crate::convert::{self, LeaseKey};
use crate::status::{from_propose, from_rejection};

/// Most messages of one worker taken off its stream in one turn (and their reports proposed
/// together).
const MAX_MESSAGES_PER_TURN: usize = 512;
/// A new stream must say Hello within this long.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one worker.
const OUTBOUND_CAPACITY: usize = 1024;

pub struct SessionService {
    hub: Arc<Hub>,
}

impl SessionService {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl WorkerSession for SessionService {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::SchedulerMessage, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let bound = crate::auth::caller(&request).bound_worker().map(str::to_owned);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))?;
        let hello = match first {
            Some(Ok(v1::WorkerMessage { msg: Some(Up::Hello(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("a session must open with Hello")),
        };
        if let Some(bound) = bound.filter(|b| *b != hello.worker_id) {
            return Err(Status::permission_denied(format!(
                "this identity may open a session as worker {bound:?} only, not {:?}",
                hello.worker_id
            )));
        }
        let held = convert::lease_keys(&hello.held);
        let spec = convert::spec_from_hello(hello).map_err(convert::Invalid::from)?;
        let worker = spec.id.clone();
        let hub = self.hub.clone();
        // Fenced (`OpenSession`) once the cluster enabled `fenced_sessions`, `RegisterWorker` before.
        let ledger_session = crate::upgrade::register_session(&hub.handle, spec.clone())
            .await
            .map_err(from_propose)?
            .map_err(from_rejection)?;
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let welcome = convert::welcome_to_pb(hub.config.lease_ttl, hub.config.heartbeat_interval, hub.config.node_id);
        let _ = tx.send(Ok(welcome)).await;
        let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
        let session = Session { ledger_session, ..Session::new(conn, tx.clone(), spec) };
        if hub.registry.insert(worker.clone(), session).is_err() {
            return Err(Status::unavailable("this scheduler is shutting down"));
        }
        tracing::info!(%worker, "worker session opened");
        hub.reclaim(&worker, &held).await;
        hub.spawn(hub.clone().read_stream(worker, conn, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Hub {
    /// A reconnecting worker still holds the leases it lists: renew them at once. Leases it does
    /// not list were lost with a previous process (kill -9, OOM, reboot): give them back now
    /// instead of waiting out their TTL.
    async fn reclaim(&self, worker: &WorkerId, held: &std::collections::BTreeSet<LeaseKey>) {
        let _ = self.handle.propose(Command::Renew { worker: worker.clone() }).await;
        let lookup = worker.clone();
        let orphaned: Vec<(TaskId, u32)> = self
            .handle
            .read(move |l, _| l.leases_of(&lookup).iter().map(|t| (t.id, t.lease_seq)).collect::<Vec<_>>())
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, seq)| !held.contains(&(id.0, *seq)))
            .collect();
        if !orphaned.is_empty() {
            tracing::info!(%worker, count = orphaned.len(), "worker came back without some of its leases: releasing them");
            let cmd = Command::Release {
                worker: worker.clone(),
                leases: orphaned,
                reason: "worker restarted without this task".into(),
            };
            let _ = self.handle.propose(cmd).await;
            self.wake.notify_one();
        }
    }

    /// Reads one worker's stream until it ends; then, if this is still the worker's current
    /// connection, records the disconnect. Cancelled (without a disconnect) on shutdown.
    async fn read_stream(
        self: Arc<Self>,
        worker: WorkerId,
        conn: u64,
        mut inbound: Streaming<v1::WorkerMessage>,
        tx: Outbound,
    ) {
        let mut open = true;
        while open {
            let Some(first) = inbound.next().await else { break };
            // Take whatever else the worker has sent already, so that its reports reach the node
            // together rather than one wake-up and one proposal each.
            let mut received = vec![first];
            while received.len() < MAX_MESSAGES_PER_TURN {
                match inbound.next().now_or_never() {
                    Some(Some(message)) => received.push(message),
                    Some(None) => {
                        open = false;
                        break;
                    }
                    None => break,
                }
            }
            let mut reports = Vec::new();
            for message in received {
                match message {
                    Ok(v1::WorkerMessage { msg: Some(msg) }) => {
                        // What changes the session's own state is taken in stream order: a `Want`
                        // overtaken by an older one would leave the hub with a stale count (and an
                        // idle worker nobody leases to), and a `Drain` must be in force before the
                        // `Released` that follows it.
                        self.on_session_state(&worker, &msg);
                        if matches!(msg, Up::Completed(_) | Up::Failed(_) | Up::Released(_) | Up::Drain(_)) {
                            reports.push(msg);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(%worker, error = %e, "worker stream error");
                        open = false;
                        break;
                    }
                }
            }
            if !reports.is_empty() {
                self.spawn(self.clone().handle_reports(worker.clone(), tx.clone(), reports));
            }
        }
        if let Some(session) = self.registry.remove_if_current(&worker, conn) {
            tracing::info!(%worker, "worker session closed");
            let _ = self.handle.propose(crate::upgrade::close_command(worker, session.ledger_session)).await;
        }
    }

    /// The part of a worker's message that changes its session here, not the ledger.
    fn on_session_state(self: &Arc<Self>, worker: &WorkerId, msg: &Up) {
        match msg {
            Up::Heartbeat(hb) => self.on_heartbeat(worker, hb),
            Up::Want(want) => {
                self.registry.with(worker, |s| s.want = want.count);
                self.wake.notify_one();
            }
            Up::Drain(_) => {
                self.registry.with(worker, |s| {
                    s.draining = true;
                    s.want = 0;
                });
            }
            Up::Hello(_) | Up::Completed(_) | Up::Failed(_) | Up::Released(_) => {}
        }
    }
}
