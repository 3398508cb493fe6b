//! Worker sessions: the `kiln.v1.WorkerSession` service and the hub that leases work to them.
//!
//! Workers pull. Each session tells the hub how many more tasks it can take (`Want`); the
//! dispatcher proposes `Lease` commands for sessions that want work whenever tasks become ready,
//! and pushes the leased tasks down the session's stream. Lease sizes follow capacity: a worker
//! wants `slots × (1 + prefetch)` and asks again only as it finishes, so each gets work in
//! proportion to what it completes.
//!
//! Work stealing (DESIGN §3): when a wanting worker has a free slot and nothing in its queues is
//! ready, the dispatcher asks the ledger for a [`kiln_ledger::Ledger::steal_plan`] — tasks other
//! workers hold but have not started, deepest buffers first — using what each worker's latest
//! heartbeat listed as `unstarted` (a lease not listed counts as started, so a worker that has
//! not heartbeated yet is never robbed). It proposes `Steal`, assigns the tasks to the thief, and
//! the ledger's `Revoke` effects tell each victim to drop its copy. A victim that had started
//! meanwhile finishes anyway; the ledger counts the first completion. Once nothing unstarted is
//! left, an idle worker at least twice as fast as a busy one renders a backup copy of the task
//! that has been running longest there ([`kiln_ledger::Ledger::backup_plan`]): with heavy-tailed
//! render times, that copy is what keeps one long task on an old server from setting the
//! makespan of a whole batch. Each task is copied at most once; the first completion counts. Completions, failures and releases come
//! up the same stream and become ledger commands; each is acknowledged once it is durable, so a
//! worker can forget it. Heartbeats stay in memory: a lease is renewed in the ledger (a Raft write)
//! only when a third of its TTL has passed since the last renewal.
//!
//! ```text
//!  worker ◀──Assign/Revoke/Ack── session ◀── dispatcher ◀── wake (TasksReady, Want, timer)
//!  worker ──Hello/Want/Heartbeat/Completed/Failed/Released──▶ session ──▶ Handle::propose
//! ```

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, Stream};
use kiln_ledger::{Command, Effect, Outcome, WorkerSpec};
use kiln_proto::v1::{
    self, scheduler_message::Msg as Down, worker_message::Msg as Up, worker_session_server::WorkerSession,
};
use kiln_types::{QueueName, TaskId, WorkerId};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::handle::Handle;
use crate::node::{now_ms, NodeEvent};
use crate::status::from_propose;

type Outbound = mpsc::Sender<Result<v1::SchedulerMessage, Status>>;

/// How long a message to a worker may wait for room on its stream before it counts as undelivered.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most messages of one worker taken off its stream in one turn (and their reports proposed
/// together).
const MAX_MESSAGES_PER_TURN: usize = 512;

struct Session {
    /// Distinguishes this connection from a later reconnect of the same worker, so the old
    /// stream's cleanup never removes the new one.
    conn: u64,
    /// The ledger's identity of this session once `fenced_sessions` is enabled (`None`: it was
    /// registered unfenced): its close quotes it, so a late close cannot disconnect a newer one.
    ledger_session: Option<u64>,
    /// The worker's half of the bidirectional stream: assignments, revocations, acks.
    tx: Outbound,
    /// As registered, to register again if the ledger ever says this live session's worker is
    /// disconnected (the close of an older stream can commit after this one's registration).
    spec: WorkerSpec,
    want: u32,
    draining: bool,
    last_renewal: Instant,
    /// From the latest heartbeat: slots rendering now, and the leases not started yet.
    busy_slots: u32,
    unstarted: BTreeSet<(u64, u32)>,
    /// Leases a heartbeat listed as held and started, with the time (ms) of the first such
    /// heartbeat: how long a render has run, for backup copies.
    started_at: HashMap<(u64, u32), i64>,
}

/// What the leader knows of a connected worker beyond the ledger: its latest heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub busy_slots: u32,
    /// Leased but not started: the worker's prefetch depth.
    pub buffered: u32,
}

pub struct Hub {
    handle: Handle,
    sessions: Mutex<HashMap<WorkerId, Session>>,
    /// Woken when work may be leasable: tasks became ready, a worker asked for more, a new leader.
    wake: Notify,
    next_conn: AtomicU64,
    lease_ttl: Duration,
    heartbeat_interval: Duration,
    node_id: u64,
    /// Work stealing on (the default) or off (to measure what it buys).
    steal: bool,
    /// Latencies and bytes seen on the sessions, for `/metrics`.
    pub kpis: crate::kpi::Kpis,
}

impl Hub {
    pub fn new(
        handle: Handle,
        lease_ttl: Duration,
        heartbeat_interval: Duration,
        node_id: u64,
        steal: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            sessions: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            next_conn: AtomicU64::new(1),
            lease_ttl,
            heartbeat_interval,
            node_id,
            steal,
            kpis: crate::kpi::Kpis::default(),
        })
    }

    /// The latest heartbeat of every worker with a session on this node.
    pub fn live(&self) -> HashMap<WorkerId, Live> {
        self.sessions()
            .iter()
            .map(|(w, s)| (w.clone(), Live { busy_slots: s.busy_slots, buffered: s.unstarted.len() as u32 }))
            .collect()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Session>> {
        // A panic while holding this lock would be a bug in this module; keep serving.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sender(&self, worker: &WorkerId) -> Option<Outbound> {
        self.sessions().get(worker).map(|s| s.tx.clone())
    }

    /// Acts on what the node reports: revocations go to their worker, readiness wakes the dispatcher.
    pub async fn run_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<NodeEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                NodeEvent::Effect(Effect::TasksReady { .. }) | NodeEvent::BecameLeader => self.wake.notify_one(),
                NodeEvent::Effect(Effect::Revoke { worker, task, lease_seq, reason }) => {
                    if let Some(tx) = self.sender(&worker) {
                        let msg = Down::Revoke(v1::Revoke {
                            leases: vec![v1::LeaseRef { task_id: task.0, lease_seq }],
                            reason,
                        });
                        // Bounded: a worker that stopped reading must not stall every other one.
                        let _ = tx.send_timeout(Ok(v1::SchedulerMessage { msg: Some(msg) }), SEND_TIMEOUT).await;
                    }
                }
                NodeEvent::LostLeadership => {
                    // Workers must follow the new leader: end every stream with a hint.
                    let leader = self.handle.status().await.ok().and_then(|s| {
                        s.members.iter().find(|(id, _, _)| *id == s.leader_id).map(|(_, a, _)| a.clone())
                    });
                    let err =
                        from_propose(crate::node::ProposeError::NotLeader { leader_id: 0, leader_address: leader });
                    let drained: Vec<Session> = self.sessions().drain().map(|(_, s)| s).collect();
                    for s in drained {
                        // A full stream ends anyway once its sender is dropped here.
                        let _ = s.tx.try_send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Leases ready tasks to sessions that want them. Runs for the life of the server.
    pub async fn run_dispatcher(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                // Retry backoffs end silently; poll for them at a modest rate.
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let wanting: Vec<(WorkerId, u32)> = self
                .sessions()
                .iter()
                .filter(|(_, s)| s.want > 0 && !s.draining)
                .map(|(w, s)| (w.clone(), s.want))
                .collect();
            if wanting.is_empty() {
                continue;
            }
            let now = now_ms();
            let (unstarted, started_at): (BTreeSet<(u64, u32)>, HashMap<(u64, u32), i64>) = if self.steal {
                let sessions = self.sessions();
                (
                    sessions.values().flat_map(|s| s.unstarted.iter().copied()).collect(),
                    sessions.values().flat_map(|s| s.started_at.iter().map(|(k, v)| (*k, *v))).collect(),
                )
            } else {
                Default::default()
            };
            let steal = self.steal;
            let min_age_ms = backup_min_age(self.heartbeat_interval);
            let Ok(Some((ready, steals, unregistered))) = self
                .handle
                .read(move |l, node| {
                    node.is_leader.then(|| {
                        let unregistered: Vec<WorkerId> = wanting
                            .iter()
                            .filter(|(w, _)| l.worker(w).is_none_or(|r| !r.connected))
                            .map(|(w, _)| w.clone())
                            .collect();
                        let (ready, idle): (Vec<_>, Vec<_>) =
                            wanting.into_iter().partition(|(w, _)| l.has_ready_for(w, now));
                        let steals = if steal {
                            plan_steals(l, idle, &unstarted, &started_at, now, min_age_ms)
                        } else {
                            Vec::new()
                        };
                        (ready, steals, unregistered)
                    })
                })
                .await
            else {
                continue;
            };
            for worker in unregistered {
                self.register_again(&worker).await;
            }
            // Every lease of the round is one hand-over to the node and shares one Raft entry.
            let stolen = steals.into_iter().map(|plan| {
                let hub = self.clone();
                async move { hub.steal_to(plan).await }
            });
            futures::future::join(self.lease_to(ready), futures::future::join_all(stolen)).await;
        }
    }

    /// A live session whose worker the ledger counts as disconnected would never be leased to:
    /// register it again.
    async fn register_again(&self, worker: &WorkerId) {
        let Some(spec) = self.sessions().get(worker).map(|s| s.spec.clone()) else { return };
        tracing::warn!(%worker, "the ledger had this connected worker as disconnected; registering it again");
        match crate::upgrade::register_session(&self.handle, spec).await {
            Ok(Ok(Some(session))) => {
                if let Some(s) = self.sessions().get_mut(worker) {
                    s.ledger_session = Some(session);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%worker, error = %e, "registration not proposed"),
        }
        self.wake.notify_one();
    }

    async fn steal_to(&self, plan: StealPlan) {
        let thief = plan.thief.clone();
        let backup = !plan.backups.is_empty();
        let cmd = if backup {
            Command::Backup { thief: plan.thief, tasks: plan.backups }
        } else {
            Command::Steal { thief: plan.thief, tasks: plan.unstarted }
        };
        match self.handle.propose(cmd).await {
            Ok(Ok(Outcome::Leased(leases))) => {
                if !leases.is_empty() {
                    if backup {
                        tracing::info!(%thief, count = leases.len(), "leased backup copies of long-running tasks to an idle, faster worker");
                    } else {
                        tracing::info!(%thief, count = leases.len(), "stole unstarted tasks for an idle worker");
                    }
                    self.deliver(thief, leases).await;
                }
            }
            Ok(other) => tracing::debug!(%thief, ?other, "steal refused"),
            Err(e) => tracing::debug!(%thief, error = %e, "steal not proposed"),
        }
    }

    /// Leases to each worker up to the number of tasks it wants, and delivers them.
    async fn lease_to(&self, wanting: Vec<(WorkerId, u32)>) {
        if wanting.is_empty() {
            return;
        }
        let commands =
            wanting.iter().map(|(worker, want)| Command::Lease { worker: worker.clone(), max: *want }).collect();
        let outcomes = self.handle.propose_many(commands).await;
        let deliveries = wanting.into_iter().zip(outcomes).filter_map(|((worker, _), outcome)| match outcome {
            Ok(Ok(Outcome::Leased(leases))) if !leases.is_empty() => {
                for l in &leases {
                    self.kpis.lease_wait.observe_micros(u64::try_from(l.waited_ms).unwrap_or(0).saturating_mul(1000));
                }
                Some(self.deliver(worker, leases))
            }
            Ok(Ok(_)) => None,
            Ok(Err(rejection)) => {
                tracing::debug!(%worker, %rejection, "lease refused");
                None
            }
            Err(e) => {
                tracing::debug!(%worker, error = %e, "lease not proposed");
                None
            }
        });
        futures::future::join_all(deliveries).await;
    }

    /// Pushes freshly leased tasks down the worker's stream, or gives them back if it is gone.
    async fn deliver(&self, worker: WorkerId, leases: Vec<kiln_ledger::Lease>) {
        let tx = {
            let mut sessions = self.sessions();
            sessions.get_mut(&worker).map(|s| {
                s.want = s.want.saturating_sub(leases.len() as u32);
                s.tx.clone()
            })
        };
        let refs: Vec<(TaskId, u32)> = leases.iter().map(|l| (l.task, l.lease_seq)).collect();
        let assign = v1::Assign {
            tasks: leases
                .into_iter()
                .map(|l| v1::Assignment {
                    lease: Some(v1::LeaseRef { task_id: l.task.0, lease_seq: l.lease_seq }),
                    job: Some(kiln_proto::job_to_pb(&l.job)),
                    attempt: l.attempt,
                })
                .collect(),
        };
        // Bounded, because the dispatcher waits for every delivery of a round: one worker that
        // stopped reading its stream must not stop the leasing to all the others.
        let delivered = match tx {
            Some(tx) => tx
                .send_timeout(Ok(v1::SchedulerMessage { msg: Some(Down::Assign(assign)) }), SEND_TIMEOUT)
                .await
                .is_ok(),
            None => false,
        };
        if !delivered {
            // The session vanished between lease and delivery: give the tasks straight back
            // instead of letting them wait out a lease TTL.
            let cmd = Command::Release { worker, leases: refs, reason: "session closed before delivery".into() };
            let _ = self.handle.propose(cmd).await;
            self.wake.notify_one();
        }
    }

    fn on_heartbeat(self: &Arc<Self>, worker: &WorkerId, hb: &v1::Heartbeat) {
        let renew = {
            let mut sessions = self.sessions();
            match sessions.get_mut(worker) {
                Some(s) => {
                    s.busy_slots = hb.busy_slots;
                    s.unstarted = hb.unstarted.iter().map(|l| (l.task_id, l.lease_seq)).collect();
                    let held: BTreeSet<(u64, u32)> = hb.held.iter().map(|l| (l.task_id, l.lease_seq)).collect();
                    s.started_at.retain(|lease, _| held.contains(lease));
                    let now = now_ms();
                    for lease in held.difference(&s.unstarted) {
                        s.started_at.entry(*lease).or_insert(now);
                    }
                    if s.last_renewal.elapsed() >= self.lease_ttl / 3 {
                        s.last_renewal = Instant::now();
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if self.steal && !hb.unstarted.is_empty() {
            // New stealable work may help an idle worker.
            self.wake.notify_one();
        }
        if renew {
            let hub = self.clone();
            let worker = worker.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.handle.propose(Command::Renew { worker: worker.clone() }).await {
                    tracing::debug!(%worker, error = %e, "lease renewal not proposed");
                }
            });
        }
    }

    /// Records a worker's reports that arrived together. Completions and failures go to the node
    /// in one hand-over (one wake-up of its thread, one Raft entry); each is acknowledged once it
    /// is durable. Releases and drains are rare and go on their own.
    async fn handle_reports(self: Arc<Self>, worker: WorkerId, tx: Outbound, reports: Vec<Up>) {
        let mut commands = Vec::with_capacity(reports.len());
        let mut acks = Vec::with_capacity(reports.len());
        for msg in reports {
            match msg {
                Up::Completed(c) => {
                    let Some(lease) = c.lease else { continue };
                    let reported = c.result.clone().unwrap_or_default();
                    let result = match c.result.map(crate::convert::result_from_pb).transpose() {
                        Ok(r) => r.unwrap_or_default(),
                        Err(e) => {
                            tracing::warn!(%worker, error = %e, "malformed completion rejected");
                            continue;
                        }
                    };
                    commands.push(Command::Complete {
                        task: TaskId(lease.task_id),
                        lease_seq: lease.lease_seq,
                        worker: worker.clone(),
                        result,
                    });
                    acks.push((lease, Some(reported)));
                }
                Up::Failed(f) => {
                    let Some(lease) = f.lease else { continue };
                    commands.push(Command::Fail {
                        task: TaskId(lease.task_id),
                        lease_seq: lease.lease_seq,
                        worker: worker.clone(),
                        error: f.error,
                        permanent: f.permanent,
                    });
                    acks.push((lease, None));
                }
                Up::Released(r) => {
                    tokio::spawn(self.clone().release(worker.clone(), tx.clone(), r));
                }
                Up::Drain(_) => {
                    let hub = self.clone();
                    let worker = worker.clone();
                    tokio::spawn(async move {
                        let _ = hub.handle.propose(Command::DrainWorker { worker }).await;
                    });
                }
                // Taken in stream order by `on_session_state`.
                Up::Hello(_) | Up::Heartbeat(_) | Up::Want(_) => {}
            }
        }
        if commands.is_empty() {
            return;
        }
        let outcomes = self.handle.propose_many(commands).await;
        for ((lease, reported), outcome) in acks.into_iter().zip(outcomes) {
            // Not durable, or not known to be: no ack, so the worker sends the report again.
            let Ok(Ok(Outcome::Reported { accepted })) = outcome else { continue };
            if let (true, Some(reported)) = (accepted, reported) {
                self.kpis.completed(&reported);
            }
            let _ = tx.send(Ok(ack(lease, accepted))).await;
        }
    }

    async fn release(self: Arc<Self>, worker: WorkerId, tx: Outbound, released: v1::Released) {
        let leases: Vec<(TaskId, u32)> = released.leases.iter().map(|l| (TaskId(l.task_id), l.lease_seq)).collect();
        let cmd = Command::Release { worker, leases, reason: released.reason };
        if let Ok(Ok(_)) = self.handle.propose(cmd).await {
            for lease in released.leases {
                let _ = tx.send(Ok(ack(lease, true))).await;
            }
            self.wake.notify_one();
        }
    }

    /// The part of a worker's message that changes its session here, not the ledger.
    fn on_session_state(self: &Arc<Self>, worker: &WorkerId, msg: &Up) {
        match msg {
            Up::Heartbeat(hb) => self.on_heartbeat(worker, hb),
            Up::Want(want) => {
                if let Some(s) = self.sessions().get_mut(worker) {
                    s.want = want.count;
                }
                self.wake.notify_one();
            }
            Up::Drain(_) => {
                if let Some(s) = self.sessions().get_mut(worker) {
                    s.draining = true;
                    s.want = 0;
                }
            }
            Up::Hello(_) | Up::Completed(_) | Up::Failed(_) | Up::Released(_) => {}
        }
    }
}

/// The scheduler's word that a report is durable (or was stale and ignored).
fn ack(lease: v1::LeaseRef, accepted: bool) -> v1::SchedulerMessage {
    v1::SchedulerMessage { msg: Some(Down::Ack(v1::Ack { lease: Some(lease), accepted })) }
}

/// What one idle worker takes in a round: unstarted tasks to steal, or, when none are left,
/// backup copies of long-running ones.
#[derive(Debug)]
struct StealPlan {
    thief: WorkerId,
    unstarted: Vec<(TaskId, u32)>,
    backups: Vec<(TaskId, u32)>,
}

/// A task must have been rendering this long (since the first heartbeat that listed it as started)
/// before a faster worker starts a backup copy: two heartbeats, so that the copier, idle anyway,
/// starts early in the tail, but a task that is just finishing is left be.
fn backup_min_age(heartbeat_interval: Duration) -> i64 {
    i64::try_from((heartbeat_interval * 2).as_millis()).unwrap_or(i64::MAX)
}

/// Steal plans for wanting workers with nothing ready in their queues: each with a free slot
/// (fewer leases than slots) may take up to that many unstarted tasks, or, if there are none,
/// that many backup copies. Plans of one round never share a task.
fn plan_steals(
    l: &kiln_ledger::Ledger,
    idle: Vec<(WorkerId, u32)>,
    unstarted: &BTreeSet<(u64, u32)>,
    started_at: &HashMap<(u64, u32), i64>,
    now: i64,
    min_age_ms: i64,
) -> Vec<StealPlan> {
    let mut taken: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut plans = Vec::new();
    for (thief, want) in idle {
        let Some(record) = l.worker(&thief) else { continue };
        let free = record.spec.slots.saturating_sub(record.leased).min(want);
        if free == 0 {
            continue;
        }
        let plan =
            l.steal_plan(&thief, free, &|t, seq| !unstarted.contains(&(t.0, seq)) || taken.contains(&(t.0, seq)));
        let backups = if plan.is_empty() {
            l.backup_plan(&thief, free, now, min_age_ms, &|t, seq| {
                if taken.contains(&(t.0, seq)) {
                    None
                } else {
                    started_at.get(&(t.0, seq)).copied()
                }
            })
        } else {
            Vec::new()
        };
        if !plan.is_empty() || !backups.is_empty() {
            taken.extend(plan.iter().chain(&backups).map(|(t, s)| (t.0, *s)));
            plans.push(StealPlan { thief, unstarted: plan, backups });
        }
    }
    plans
}

fn spec_from_hello(hello: v1::Hello) -> Result<WorkerSpec, Status> {
    let invalid = |e: kiln_types::InvalidValue| Status::invalid_argument(e.to_string());
    let queues = if hello.queues.is_empty() {
        vec![QueueName::default()]
    } else {
        hello.queues.into_iter().map(QueueName::new).collect::<Result<_, _>>().map_err(invalid)?
    };
    Ok(WorkerSpec {
        id: WorkerId::new(hello.worker_id).map_err(invalid)?,
        hostname: hello.hostname,
        slots: hello.slots.max(1),
        cores: hello.cores,
        memory_bytes: hello.memory_bytes,
        speed_milli: (hello.speed.clamp(0.0, 1000.0) * 1000.0) as u32,
        queues,
        version: hello.version,
    })
}

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
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))?;
        let hello = match first {
            Some(Ok(v1::WorkerMessage { msg: Some(Up::Hello(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("a session must open with Hello")),
        };
        let held: std::collections::BTreeSet<(u64, u32)> =
            hello.held.iter().map(|l| (l.task_id, l.lease_seq)).collect();
        let spec = spec_from_hello(hello)?;
        let worker = spec.id.clone();
        let hub = self.hub.clone();
        let ledger_session = crate::upgrade::register_session(&hub.handle, spec.clone())
            .await
            .map_err(from_propose)?
            .map_err(crate::status::from_rejection)?;
        let (tx, rx) = mpsc::channel(1024);
        let welcome = v1::Welcome {
            lease_ttl_ms: hub.lease_ttl.as_millis() as u64,
            heartbeat_interval_ms: hub.heartbeat_interval.as_millis() as u64,
            node_id: hub.node_id,
        };
        let _ = tx.send(Ok(v1::SchedulerMessage { msg: Some(Down::Welcome(welcome)) })).await;
        let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
        hub.sessions().insert(
            worker.clone(),
            Session {
                conn,
                ledger_session,
                tx: tx.clone(),
                spec,
                want: 0,
                draining: false,
                last_renewal: Instant::now(),
                busy_slots: 0,
                unstarted: BTreeSet::new(),
                started_at: HashMap::new(),
            },
        );
        tracing::info!(%worker, "worker session opened");
        // A reconnecting worker still holds the leases it lists: renew them at once. Leases it
        // does not list were lost with a previous process (kill -9, OOM, reboot): give them back
        // now instead of waiting out their TTL.
        let _ = hub.handle.propose(Command::Renew { worker: worker.clone() }).await;
        let lookup = worker.clone();
        let orphaned = hub
            .handle
            .read(move |l, _| l.leases_of(&lookup).iter().map(|t| (t.id, t.lease_seq)).collect::<Vec<_>>())
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, seq)| !held.contains(&(id.0, *seq)))
            .collect::<Vec<_>>();
        if !orphaned.is_empty() {
            tracing::info!(%worker, count = orphaned.len(), "worker came back without some of its leases: releasing them");
            let cmd = Command::Release {
                worker: worker.clone(),
                leases: orphaned,
                reason: "worker restarted without this task".into(),
            };
            let _ = hub.handle.propose(cmd).await;
            hub.wake.notify_one();
        }
        tokio::spawn(async move {
            let mut open = true;
            while open {
                let Some(first) = inbound.next().await else { break };
                // Take whatever else the worker has sent already, so that its reports reach the
                // node together rather than one wake-up and one proposal each.
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
                            // What changes the session's own state is taken in stream order: a
                            // `Want` overtaken by an older one would leave the hub with a stale
                            // count (and an idle worker nobody leases to), and a `Drain` must be
                            // in force before the `Released` that follows it.
                            hub.on_session_state(&worker, &msg);
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
                    // Off the reader: the next messages are read while these are made durable.
                    tokio::spawn(hub.clone().handle_reports(worker.clone(), tx.clone(), reports));
                }
            }
            let current = {
                let mut sessions = hub.sessions();
                match sessions.get(&worker) {
                    Some(s) if s.conn == conn => sessions.remove(&worker).map(|s| s.ledger_session),
                    _ => None,
                }
            };
            if let Some(ledger_session) = current {
                tracing::info!(%worker, "worker session closed");
                let _ = hub.handle.propose(crate::upgrade::close_command(worker, ledger_session)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
