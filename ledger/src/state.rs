//! The `Ledger` value and `apply`: every state transition of every task lives here.
//!
//! The ledger holds two kinds of data. The *record* (tasks, workers, counters) is what a snapshot
//! carries and what replicas must agree on. The *indexes* (ready queues, backoff timers, lease
//! deadlines, per-worker leases, counts) are derived from the record and rebuilt when a snapshot is
//! loaded; keeping them out of snapshots means they can never disagree with the record on disk.
//!
//! Every transition goes through [`Ledger::transition`]: remove the task from the indexes of its
//! old state, change it, insert it into the indexes of its new state. `invariants` rebuilds the
//! indexes from scratch and compares, so a transition that forgets a counter is caught by the
//! property tests rather than by an operator reading a wrong `kiln status`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kiln_types::{EncodeJob, QueueName, RequestId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};

use crate::command::{
    Applied, Command, DeadLetterFilter, Effect, Lease, Outcome, Rejection, SubmitOutcome, WorkerSpec,
};
use crate::features::Features;
use crate::task::{EventKind, HistoryEvent, Task, TaskResult, TaskState};
use crate::Millis;

/// Replicated settings: part of the state, so every replica applies with the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerConfig {
    pub lease_ttl_ms: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub gc_ttl_ms: i64,
    pub max_live_tasks: u64,
    /// History events kept per task (oldest dropped first, the first `submitted` always kept).
    pub max_history: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 30_000,
            backoff_base_ms: 2_000,
            backoff_max_ms: 300_000,
            gc_ttl_ms: 24 * 3_600_000,
            max_live_tasks: 2_000_000,
            max_history: 32,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// Queued tasks still waiting out a retry backoff (a subset of `queued`).
    pub retrying: u64,
}

impl StateCounts {
    fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Queued => &mut self.queued,
            TaskState::Leased => &mut self.leased,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::DeadLettered => &mut self.dead_lettered,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }

    pub fn terminal(&self) -> u64 {
        self.succeeded + self.dead_lettered + self.cancelled
    }

    pub fn all(&self) -> u64 {
        self.queued + self.leased + self.terminal()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub name: Option<QueueName>,
    pub ready: u64,
    pub retrying: u64,
    pub leased: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub spec: WorkerSpec,
    pub connected: bool,
    pub draining: bool,
    pub registered_at: Millis,
    pub last_seen: Millis,
    /// Leases held now (derived; kept here so listings need no second lookup).
    pub leased: u32,
    pub completed: u64,
    pub failed: u64,
    /// Tasks this worker took from others by stealing, and tasks others took from it.
    pub stole: u64,
    pub stolen_from: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub queue: Option<QueueName>,
    pub release_id: Option<i64>,
    pub after: Option<TaskId>,
    pub limit: usize,
}

/// Completions and failures per second of leader time, for "per minute" rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RateBucket {
    second: i64,
    completions: u64,
    failures: u64,
}

const RATE_WINDOW_SECS: i64 = 60;

/// Order of ready tasks inside one queue: highest priority first, then FIFO.
type ReadyKey = (Reverse<i32>, u64, TaskId);

/// Everything derivable from the record. Rebuilt on snapshot load; compared by the invariants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Indexes {
    pub(crate) by_request: BTreeMap<RequestId, TaskId>,
    pub(crate) ready: BTreeMap<QueueName, BTreeSet<ReadyKey>>,
    /// Queued tasks waiting out a retry backoff: (ready_at, task).
    pub(crate) backoff: BTreeSet<(Millis, TaskId)>,
    /// Live leases: (deadline, task).
    pub(crate) deadlines: BTreeSet<(Millis, TaskId)>,
    pub(crate) by_worker: BTreeMap<WorkerId, BTreeSet<TaskId>>,
    /// Terminal tasks by the time they finished, for garbage collection.
    pub(crate) finished: BTreeSet<(Millis, TaskId)>,
    pub(crate) counts: StateCounts,
    pub(crate) queue_counts: BTreeMap<QueueName, QueueCounts>,
}

impl Indexes {
    fn build(tasks: &BTreeMap<TaskId, Box<Task>>) -> Self {
        let mut ix = Indexes::default();
        for task in tasks.values() {
            ix.by_request.insert(task.job.request_id.clone(), task.id);
            ix.insert(task);
        }
        ix
    }

    fn queue(&mut self, name: &QueueName) -> &mut QueueCounts {
        self.queue_counts
            .entry(name.clone())
            .or_insert_with(|| QueueCounts { name: Some(name.clone()), ..QueueCounts::default() })
    }

    /// Adds `task` to the indexes of its current state.
    fn insert(&mut self, task: &Task) {
        *self.counts.slot(task.state) += 1;
        let queue = &task.job.queue;
        match task.state {
            TaskState::Queued if task.ready_at > 0 => {
                self.backoff.insert((task.ready_at, task.id));
                self.counts.retrying += 1;
                self.queue(queue).retrying += 1;
            }
            TaskState::Queued => {
                self.ready.entry(queue.clone()).or_default().insert(ready_key(task));
                self.queue(queue).ready += 1;
            }
            TaskState::Leased => {
                if let Some(deadline) = task.lease_expires_at {
                    self.deadlines.insert((deadline, task.id));
                }
                if let Some(worker) = &task.worker {
                    self.by_worker.entry(worker.clone()).or_default().insert(task.id);
                }
                self.queue(queue).leased += 1;
            }
            TaskState::Succeeded | TaskState::DeadLettered | TaskState::Cancelled => {
                self.finished.insert((task.updated_at, task.id));
            }
        }
    }

    /// Removes `task` from the indexes of its current state (the exact inverse of `insert`).
    fn remove(&mut self, task: &Task) {
        *self.counts.slot(task.state) -= 1;
        let queue = &task.job.queue;
        match task.state {
            TaskState::Queued if task.ready_at > 0 => {
                self.backoff.remove(&(task.ready_at, task.id));
                self.counts.retrying -= 1;
                self.queue(queue).retrying -= 1;
            }
            TaskState::Queued => {
                if let Some(set) = self.ready.get_mut(queue) {
                    set.remove(&ready_key(task));
                    if set.is_empty() {
                        self.ready.remove(queue);
                    }
                }
                self.queue(queue).ready -= 1;
            }
            TaskState::Leased => {
                if let Some(deadline) = task.lease_expires_at {
                    self.deadlines.remove(&(deadline, task.id));
                }
                if let Some(worker) = &task.worker {
                    if let Some(set) = self.by_worker.get_mut(worker) {
                        set.remove(&task.id);
                        if set.is_empty() {
                            self.by_worker.remove(worker);
                        }
                    }
                }
                self.queue(queue).leased -= 1;
            }
            TaskState::Succeeded | TaskState::DeadLettered | TaskState::Cancelled => {
                self.finished.remove(&(task.updated_at, task.id));
            }
        }
        let empty = self.queue_counts.get(queue).is_some_and(|q| q.ready + q.retrying + q.leased == 0);
        if empty {
            self.queue_counts.remove(queue);
        }
    }
}

fn ready_key(task: &Task) -> ReadyKey {
    (Reverse(task.job.priority), task.ready_seq, task.id)
}

/// The replicated task ledger. See the crate docs for how it is driven.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    config: LedgerConfig,
    next_task: u64,
    next_ready_seq: u64,
    /// Boxed tasks: a B-tree node holds eleven slots, mostly half empty, so inline tasks wasted
    /// hundreds of bytes each.
    tasks: BTreeMap<TaskId, Box<Task>>,
    workers: BTreeMap<WorkerId, WorkerRecord>,
    submitted_total: u64,
    /// Terminal tasks already garbage-collected or purged, by final state.
    collected: StateCounts,
    rates: VecDeque<RateBucket>,
    /// Tasks moved by work stealing since the cluster began.
    steals_total: u64,
    /// Enabled feature flags and the state of gated features (snapshotted after the record).
    pub(crate) features: Features,
    ix: Indexes,
}

/// The record, as written to a snapshot. Indexes are rebuilt on load.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    config: LedgerConfig,
    next_task: u64,
    next_ready_seq: u64,
    tasks: Vec<Task>,
    workers: Vec<WorkerRecord>,
    submitted_total: u64,
    collected: StateCounts,
    rates: Vec<RateBucket>,
    steals_total: u64,
}

/// [`Snapshot`] by reference, for writing one without copying the ledger.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    config: &'a LedgerConfig,
    next_task: u64,
    next_ready_seq: u64,
    tasks: Vec<&'a Task>,
    workers: Vec<&'a WorkerRecord>,
    submitted_total: u64,
    collected: StateCounts,
    rates: Vec<&'a RateBucket>,
    steals_total: u64,
}

/// Deterministic jitter in [0, 1): a hash of the task and attempt, never a thread RNG, so every
/// replica computes the same backoff.
/// What a steal takes: a task its holder has not started (the holder drops it), or a backup copy
/// of one it is rendering (the holder carries on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taking {
    Unstarted,
    BackupCopy,
}

fn jitter(task: TaskId, attempt: u32) -> f64 {
    let mut x = task.0 ^ (u64::from(attempt) << 48) ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Ledger {
    pub fn new(config: LedgerConfig) -> Self {
        Self { config, next_task: 1, next_ready_seq: 1, ..Self::default() }
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Applies one committed command at leader time `now`. Never panics on any input: a command
    /// that makes no sense in the current state is a [`Rejection`], identical on every replica.
    pub fn apply(&mut self, cmd: Command, now: Millis) -> Applied {
        let mut effects = Vec::new();
        let outcome = match cmd {
            Command::Submit { jobs } => self.submit(jobs, now, &mut effects),
            Command::RegisterWorker { spec } => Ok(self.register(spec, now)),
            Command::DisconnectWorker { worker } => self.with_worker(&worker, now, |w| w.connected = false),
            Command::DrainWorker { worker } => self.with_worker(&worker, now, |w| w.draining = true),
            Command::Lease { worker, max } => self.lease(&worker, max, now),
            Command::Steal { thief, tasks } => self.steal(&thief, &tasks, Taking::Unstarted, now, &mut effects),
            Command::Backup { thief, tasks } => self.steal(&thief, &tasks, Taking::BackupCopy, now, &mut effects),
            Command::Renew { worker } => Ok(self.renew(&worker, now)),
            Command::Complete { task, lease_seq, worker, result } => {
                Ok(self.complete(task, lease_seq, &worker, result, now, &mut effects))
            }
            Command::Fail { task, lease_seq, worker, error, permanent } => {
                Ok(self.fail(task, lease_seq, &worker, error, permanent, now))
            }
            Command::Release { worker, leases, reason } => {
                Ok(self.release(&worker, &leases, &reason, now, &mut effects))
            }
            Command::ExpireLeases => Ok(self.expire(now, &mut effects)),
            Command::GraceLeases { grace_ms } => Ok(self.grace(now.saturating_add(grace_ms))),
            Command::Cancel { task } => self.cancel(task, now, &mut effects),
            Command::RequeueDeadLetters { filter } => Ok(self.requeue(&filter, now, &mut effects)),
            Command::PurgeDeadLetters { filter } => Ok(self.purge(&filter)),
            Command::CollectGarbage => Ok(self.collect_garbage(now)),
            Command::EnableFeature { name } => self.features.enable(&name),
            Command::OpenSession { spec } => self.open_session(spec, now),
            Command::CloseSession { worker, session } => self.close_session(&worker, session, now),
        };
        Applied { outcome, effects }
    }

    // ---------------------------------------------------------------------------------------
    // Transitions

    /// The one way a stored task changes: out of its old indexes, `change`, into the new ones.
    fn transition<R>(&mut self, id: TaskId, change: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let task = self.tasks.get_mut(&id)?;
        self.ix.remove(task);
        let old_worker = task.worker.clone().filter(|_| task.state == TaskState::Leased);
        let result = change(task);
        let new_worker = task.worker.clone().filter(|_| task.state == TaskState::Leased);
        self.ix.insert(task);
        if old_worker != new_worker {
            for (worker, delta) in [(old_worker, -1i64), (new_worker, 1)] {
                if let Some(record) = worker.and_then(|w| self.workers.get_mut(&w)) {
                    record.leased = (i64::from(record.leased) + delta).max(0) as u32;
                }
            }
        }
        Some(result)
    }

    fn push_history(max: usize, task: &mut Task, event: HistoryEvent) {
        task.history.push(event);
        if task.history.len() > max.max(2) {
            // Keep the first event (submission): it says where the task came from.
            task.history.remove(1);
        }
    }

    fn record(&mut self, id: TaskId, now: Millis, kind: EventKind, worker: Option<WorkerId>, detail: String) {
        let max = self.config.max_history;
        if let Some(task) = self.tasks.get_mut(&id) {
            let attempt = match kind {
                EventKind::Leased => task.attempts + 1,
                _ => task.attempts,
            };
            Self::push_history(max, task, HistoryEvent { at: now, kind, worker, attempt, detail });
        }
    }

    fn take_ready_seq(&mut self) -> u64 {
        let seq = self.next_ready_seq;
        self.next_ready_seq += 1;
        seq
    }

    fn backoff_ms(&self, task: TaskId, attempts: u32) -> i64 {
        let base = self.config.backoff_base_ms.max(1);
        let exp = attempts.saturating_sub(1).min(30);
        let raw = base.saturating_mul(1i64 << exp).min(self.config.backoff_max_ms.max(base));
        // Up to 20 % spread so that a batch failing together does not retry together.
        raw + (raw as f64 * 0.2 * jitter(task, attempts)) as i64
    }

    /// Sends a task back to its queue: at once (`ready_at == 0`) or after a backoff.
    fn requeue_task(&mut self, id: TaskId, ready_at: Millis, now: Millis) {
        let seq = self.take_ready_seq();
        self.transition(id, |t| {
            t.state = TaskState::Queued;
            t.lease_expires_at = None;
            t.stolen_from = None;
            t.ready_at = if ready_at > now { ready_at } else { 0 };
            t.ready_seq = seq;
            t.updated_at = now;
        });
    }

    fn finish(&mut self, id: TaskId, state: TaskState, now: Millis) {
        self.transition(id, |t| {
            t.state = state;
            t.lease_expires_at = None;
            t.stolen_from = None;
            t.ready_at = 0;
            t.updated_at = now;
        });
    }

    fn count_rate(&mut self, now: Millis, completions: u64, failures: u64) {
        let second = now.div_euclid(1000);
        match self.rates.back_mut() {
            Some(b) if b.second == second => {
                b.completions += completions;
                b.failures += failures;
            }
            Some(b) if b.second > second => {
                // The leader's clock never runs backwards; a new leader's may be slightly behind.
                b.completions += completions;
                b.failures += failures;
            }
            _ => self.rates.push_back(RateBucket { second, completions, failures }),
        }
        while self.rates.front().is_some_and(|b| b.second <= second - RATE_WINDOW_SECS) {
            self.rates.pop_front();
        }
    }

    /// Moves tasks whose backoff has ended into their ready queues. Returns their queues.
    fn promote_due(&mut self, now: Millis) -> Vec<QueueName> {
        let due: Vec<TaskId> = self.ix.backoff.range(..=(now, TaskId(u64::MAX))).map(|(_, id)| *id).collect();
        let mut queues = BTreeSet::new();
        for id in due {
            let seq = self.take_ready_seq();
            let queue = self.transition(id, |t| {
                t.ready_at = 0;
                t.ready_seq = seq;
                t.job.queue.clone()
            });
            queues.extend(queue);
        }
        queues.into_iter().collect()
    }

    // ---------------------------------------------------------------------------------------
    // Commands

    fn submit(&mut self, jobs: Vec<EncodeJob>, now: Millis, effects: &mut Vec<Effect>) -> Result<Outcome, Rejection> {
        // Resolve every job first, so a rejection admits nothing (all-or-nothing).
        let mut fresh: BTreeMap<RequestId, &EncodeJob> = BTreeMap::new();
        for job in &jobs {
            let known = match self.ix.by_request.get(&job.request_id) {
                Some(id) => self.tasks.get(id).map(|t| (&t.job, *id)),
                None => fresh.get(&job.request_id).map(|j| (*j, TaskId(0))),
            };
            match known {
                Some((existing, id)) if existing != job => {
                    return Err(Rejection::ConflictingRequest { request_id: job.request_id.clone(), task: id });
                }
                Some(_) => {}
                None => {
                    fresh.insert(job.request_id.clone(), job);
                }
            }
        }
        let live = self.tasks.len() as u64;
        if live + fresh.len() as u64 > self.config.max_live_tasks {
            return Err(Rejection::Full { live, limit: self.config.max_live_tasks });
        }
        let mut results = Vec::with_capacity(jobs.len());
        let mut queues = BTreeSet::new();
        for job in jobs {
            if let Some(id) = self.ix.by_request.get(&job.request_id) {
                results.push(SubmitOutcome { task: *id, created: false });
                continue;
            }
            let id = TaskId(self.next_task);
            self.next_task += 1;
            self.submitted_total += 1;
            queues.insert(job.queue.clone());
            // The submission's detail is derived from the job when read (`Task::event_detail`):
            // stored, it was ~80 bytes per task of a million-task ledger.
            let detail = String::new();
            let task = Task {
                id,
                state: TaskState::Queued,
                attempts: 0,
                lease_seq: 0,
                worker: None,
                lease_expires_at: None,
                ready_at: 0,
                ready_seq: self.take_ready_seq(),
                submitted_at: now,
                updated_at: now,
                last_error: None,
                result: None,
                history: vec![HistoryEvent { at: now, kind: EventKind::Submitted, worker: None, attempt: 0, detail }],
                stolen_from: None,
                job,
            };
            self.ix.by_request.insert(task.job.request_id.clone(), id);
            self.ix.insert(&task);
            self.tasks.insert(id, Box::new(task));
            results.push(SubmitOutcome { task: id, created: true });
        }
        if !queues.is_empty() {
            effects.push(Effect::TasksReady { queues: queues.into_iter().collect() });
        }
        Ok(Outcome::Submitted(results))
    }

    pub(crate) fn register(&mut self, spec: WorkerSpec, now: Millis) -> Outcome {
        let leased = self.ix.by_worker.get(&spec.id).map_or(0, |s| s.len() as u32);
        match self.workers.get_mut(&spec.id) {
            Some(record) => {
                record.spec = spec;
                record.connected = true;
                record.draining = false;
                record.last_seen = now;
                record.leased = leased;
            }
            None => {
                let record = WorkerRecord {
                    spec: spec.clone(),
                    connected: true,
                    draining: false,
                    registered_at: now,
                    last_seen: now,
                    leased,
                    completed: 0,
                    failed: 0,
                    stole: 0,
                    stolen_from: 0,
                };
                self.workers.insert(spec.id, record);
            }
        }
        Outcome::Done
    }

    pub(crate) fn with_worker(
        &mut self,
        worker: &WorkerId,
        now: Millis,
        f: impl FnOnce(&mut WorkerRecord),
    ) -> Result<Outcome, Rejection> {
        let record = self.workers.get_mut(worker).ok_or_else(|| Rejection::UnknownWorker(worker.clone()))?;
        record.last_seen = now;
        f(record);
        Ok(Outcome::Done)
    }

    fn lease(&mut self, worker: &WorkerId, max: u32, now: Millis) -> Result<Outcome, Rejection> {
        let record = self.workers.get(worker).ok_or_else(|| Rejection::UnknownWorker(worker.clone()))?;
        if !record.connected || record.draining || max == 0 {
            return Ok(Outcome::Leased(Vec::new()));
        }
        let queues = record.spec.queues.clone();
        self.promote_due(now);
        let deadline = now.saturating_add(self.config.lease_ttl_ms);
        let mut leases = Vec::new();
        while leases.len() < max as usize {
            // Strict priority across the worker's queues, FIFO within a priority.
            let next = queues
                .iter()
                .filter_map(|q| self.ix.ready.get(q).and_then(|set| set.first()))
                .min()
                .map(|(_, _, id)| *id);
            let Some(id) = next else { break };
            let lease = self.transition(id, |t| {
                let waited_ms = now.saturating_sub(t.updated_at).max(0);
                t.state = TaskState::Leased;
                t.lease_seq += 1;
                t.worker = Some(worker.clone());
                t.lease_expires_at = Some(deadline);
                t.updated_at = now;
                Lease { task: t.id, lease_seq: t.lease_seq, attempt: t.attempts + 1, job: t.job.clone(), waited_ms }
            });
            if let Some(lease) = lease {
                let detail = format!("lease {} until {deadline}", lease.lease_seq);
                self.record(id, now, EventKind::Leased, Some(worker.clone()), detail);
                leases.push(lease);
            }
        }
        if let Some(record) = self.workers.get_mut(worker) {
            record.last_seen = now;
        }
        Ok(Outcome::Leased(leases))
    }

    fn steal(
        &mut self,
        thief: &WorkerId,
        tasks: &[(TaskId, u32)],
        taking: Taking,
        now: Millis,
        effects: &mut Vec<Effect>,
    ) -> Result<Outcome, Rejection> {
        let record = self.workers.get(thief).ok_or_else(|| Rejection::UnknownWorker(thief.clone()))?;
        if !record.connected || record.draining {
            return Ok(Outcome::Leased(Vec::new()));
        }
        let queues = record.spec.queues.clone();
        let deadline = now.saturating_add(self.config.lease_ttl_ms);
        let mut leases = Vec::new();
        for (id, seq) in tasks {
            let victim = match self.tasks.get(id) {
                Some(t)
                    if t.state == TaskState::Leased
                        && t.lease_seq == *seq
                        && t.stolen_from.is_none()
                        && t.worker.as_ref().is_some_and(|w| w != thief)
                        && queues.contains(&t.job.queue) =>
                {
                    t.worker.clone()
                }
                _ => None,
            };
            let Some(victim) = victim else { continue };
            let lease = self.transition(*id, |t| {
                t.lease_seq += 1;
                t.stolen_from = Some((victim.clone(), *seq));
                t.worker = Some(thief.clone());
                t.lease_expires_at = Some(deadline);
                t.updated_at = now;
                Lease { task: t.id, lease_seq: t.lease_seq, attempt: t.attempts + 1, job: t.job.clone(), waited_ms: 0 }
            });
            let Some(lease) = lease else { continue };
            let detail = match taking {
                Taking::Unstarted => format!("from {victim} (lease {seq}, not started there); lease {} until {deadline}", lease.lease_seq),
                Taking::BackupCopy => format!(
                    "backup copy: {victim} is still rendering it (lease {seq}), the first completion counts; lease {} until {deadline}",
                    lease.lease_seq
                ),
            };
            self.record(*id, now, EventKind::Stolen, Some(thief.clone()), detail);
            if taking == Taking::Unstarted {
                effects.push(Effect::Revoke {
                    worker: victim.clone(),
                    task: *id,
                    lease_seq: *seq,
                    reason: format!("stolen by idle worker {thief}"),
                });
            }
            if let Some(v) = self.workers.get_mut(&victim) {
                v.stolen_from += 1;
            }
            self.steals_total += 1;
            leases.push(lease);
        }
        if let Some(record) = self.workers.get_mut(thief) {
            record.last_seen = now;
            record.stole += leases.len() as u64;
        }
        Ok(Outcome::Leased(leases))
    }

    fn renew(&mut self, worker: &WorkerId, now: Millis) -> Outcome {
        if let Some(record) = self.workers.get_mut(worker) {
            record.last_seen = now;
        }
        let held: Vec<TaskId> = self.ix.by_worker.get(worker).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let deadline = now.saturating_add(self.config.lease_ttl_ms);
        for id in &held {
            self.transition(*id, |t| {
                // Never shorten a lease (a grace period may reach further).
                t.lease_expires_at = t.lease_expires_at.map(|d| d.max(deadline));
            });
        }
        Outcome::Count(held.len() as u64)
    }

    /// True when `task` is held under exactly this lease: the only report that may change it.
    fn is_current(&self, task: TaskId, lease_seq: u32, worker: &WorkerId) -> bool {
        self.tasks.get(&task).is_some_and(|t| {
            t.state == TaskState::Leased && t.lease_seq == lease_seq && t.worker.as_ref() == Some(worker)
        })
    }

    fn complete(
        &mut self,
        id: TaskId,
        lease_seq: u32,
        worker: &WorkerId,
        result: TaskResult,
        now: Millis,
        effects: &mut Vec<Effect>,
    ) -> Outcome {
        // A completion for the latest lease is accepted even if that lease lapsed meanwhile and
        // the task went back to the queue: nobody else holds it, and the work is done. Anything
        // older, or for a finished task, is stale and changes nothing.
        let acceptable = self.tasks.get(&id).is_some_and(|t| {
            t.lease_seq == lease_seq
                && t.worker.as_ref() == Some(worker)
                && matches!(t.state, TaskState::Leased | TaskState::Queued)
        });
        // The victim of a steal that had started the task anyway: the first completion counts,
        // and the thief is told to drop its copy.
        let stolen = self.tasks.get(&id).and_then(|t| {
            let from_victim = t.state == TaskState::Leased
                && t.stolen_from.as_ref().is_some_and(|(w, s)| w == worker && *s == lease_seq);
            from_victim.then(|| (t.worker.clone(), t.lease_seq))
        });
        if !acceptable && stolen.is_none() {
            return Outcome::Reported { accepted: false };
        }
        if let Some((Some(thief), thief_seq)) = &stolen {
            effects.push(Effect::Revoke {
                worker: thief.clone(),
                task: id,
                lease_seq: *thief_seq,
                reason: format!("completed first by {worker}"),
            });
        }
        let late = self.tasks.get(&id).is_some_and(|t| t.state == TaskState::Queued);
        self.transition(id, |t| {
            t.result = Some(Box::new(result));
            t.last_error = None;
            // The record names who did the work.
            t.worker = Some(worker.clone());
        });
        self.finish(id, TaskState::Succeeded, now);
        let detail = if late {
            "completed after its lease lapsed (no newer lease existed)".to_owned()
        } else if stolen.is_some() {
            "completed by the worker it was stolen from, before the thief".to_owned()
        } else {
            String::new()
        };
        self.record(id, now, EventKind::Succeeded, Some(worker.clone()), detail);
        if let Some(record) = self.workers.get_mut(worker) {
            record.completed += 1;
            record.last_seen = now;
        }
        self.count_rate(now, 1, 0);
        Outcome::Reported { accepted: true }
    }

    fn fail(
        &mut self,
        id: TaskId,
        lease_seq: u32,
        worker: &WorkerId,
        error: String,
        permanent: bool,
        now: Millis,
    ) -> Outcome {
        if !self.is_current(id, lease_seq, worker) {
            return Outcome::Reported { accepted: false };
        }
        if let Some(record) = self.workers.get_mut(worker) {
            record.failed += 1;
            record.last_seen = now;
        }
        self.count_rate(now, 0, 1);
        self.failed_attempt(id, now, EventKind::Failed, Some(worker.clone()), error, permanent, false);
        Outcome::Reported { accepted: true }
    }

    /// Counts a failed attempt and either schedules a retry (after a backoff unless
    /// `retry_now`) or dead-letters the task.
    fn failed_attempt(
        &mut self,
        id: TaskId,
        now: Millis,
        kind: EventKind,
        worker: Option<WorkerId>,
        error: String,
        permanent: bool,
        retry_now: bool,
    ) {
        let Some(attempts) = self.transition(id, |t| {
            t.attempts += 1;
            t.last_error = Some(error.clone());
            t.attempts
        }) else {
            return;
        };
        self.record(id, now, kind, worker, error.clone());
        let max_attempts = self.tasks.get(&id).map_or(1, |t| t.job.max_attempts);
        if permanent || attempts >= max_attempts {
            let reason = if permanent {
                format!("permanent error: {error}")
            } else {
                format!("{attempts} of {max_attempts} attempts failed; last: {error}")
            };
            self.transition(id, |t| t.last_error = Some(reason.clone()));
            self.finish(id, TaskState::DeadLettered, now);
            self.record(id, now, EventKind::DeadLettered, None, reason);
        } else if retry_now {
            self.requeue_task(id, 0, now);
            self.record(id, now, EventKind::RetryScheduled, None, format!("retry {} now", attempts + 1));
        } else {
            let wait = self.backoff_ms(id, attempts);
            self.requeue_task(id, now.saturating_add(wait), now);
            self.record(id, now, EventKind::RetryScheduled, None, format!("retry {} in {wait} ms", attempts + 1));
        }
    }

    fn release(
        &mut self,
        worker: &WorkerId,
        leases: &[(TaskId, u32)],
        reason: &str,
        now: Millis,
        effects: &mut Vec<Effect>,
    ) -> Outcome {
        let mut queues = BTreeSet::new();
        for (id, seq) in leases {
            if !self.is_current(*id, *seq, worker) {
                continue;
            }
            self.requeue_task(*id, 0, now);
            self.record(*id, now, EventKind::Released, Some(worker.clone()), reason.to_owned());
            if let Some(t) = self.tasks.get(id) {
                queues.insert(t.job.queue.clone());
            }
        }
        let accepted = !queues.is_empty();
        if accepted {
            effects.push(Effect::TasksReady { queues: queues.into_iter().collect() });
        }
        Outcome::Reported { accepted }
    }

    fn expire(&mut self, now: Millis, effects: &mut Vec<Effect>) -> Outcome {
        let lapsed: Vec<TaskId> = self.ix.deadlines.range(..=(now, TaskId(u64::MAX))).map(|(_, id)| *id).collect();
        for id in &lapsed {
            let Some(task) = self.tasks.get(id) else { continue };
            let (worker, lease_seq) = (task.worker.clone(), task.lease_seq);
            let error = match &worker {
                Some(w) => format!("lease expired: worker {w} stopped heartbeating"),
                None => "lease expired".to_owned(),
            };
            // Heartbeats stopped: retry at once, the lease TTL has already waited long enough.
            self.failed_attempt(*id, now, EventKind::LeaseExpired, worker.clone(), error, false, true);
            if let Some(worker) = worker {
                effects.push(Effect::Revoke { worker, task: *id, lease_seq, reason: "lease expired".into() });
            }
        }
        let mut queues: BTreeSet<QueueName> = self.promote_due(now).into_iter().collect();
        queues.extend(lapsed.iter().filter_map(|id| self.tasks.get(id)).map(|t| t.job.queue.clone()));
        if !queues.is_empty() {
            effects.push(Effect::TasksReady { queues: queues.into_iter().collect() });
        }
        Outcome::Count(lapsed.len() as u64)
    }

    fn grace(&mut self, until: Millis) -> Outcome {
        let short: Vec<TaskId> = self.ix.deadlines.range(..(until, TaskId(0))).map(|(_, id)| *id).collect();
        for id in &short {
            self.transition(*id, |t| t.lease_expires_at = Some(until));
        }
        Outcome::Count(short.len() as u64)
    }

    fn cancel(&mut self, id: TaskId, now: Millis, effects: &mut Vec<Effect>) -> Result<Outcome, Rejection> {
        let task = self.tasks.get(&id).ok_or(Rejection::UnknownTask(id))?;
        if task.state.is_terminal() {
            return Err(Rejection::AlreadyTerminal { task: id, state: task.state.to_string() });
        }
        if let (TaskState::Leased, Some(worker)) = (task.state, task.worker.clone()) {
            effects.push(Effect::Revoke { worker, task: id, lease_seq: task.lease_seq, reason: "cancelled".into() });
        }
        if let (TaskState::Leased, Some((victim, seq))) = (task.state, task.stolen_from.clone()) {
            effects.push(Effect::Revoke { worker: victim, task: id, lease_seq: seq, reason: "cancelled".into() });
        }
        self.finish(id, TaskState::Cancelled, now);
        self.record(id, now, EventKind::Cancelled, None, String::new());
        Ok(Outcome::Done)
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> Vec<TaskId> {
        let selective = filter.all
            || !filter.task_ids.is_empty()
            || filter.queue.is_some()
            || filter.release_id.is_some()
            || filter.error_contains.is_some();
        if !selective {
            return Vec::new();
        }
        let matches = |t: &Task| {
            t.state == TaskState::DeadLettered
                && filter.queue.as_ref().is_none_or(|q| *q == t.job.queue)
                && filter.release_id.is_none_or(|r| r == t.job.release_id)
                && filter
                    .error_contains
                    .as_ref()
                    .is_none_or(|needle| t.last_error.as_deref().is_some_and(|e| e.contains(needle.as_str())))
        };
        if filter.task_ids.is_empty() {
            self.tasks.values().filter(|t| matches(t)).map(|t| t.id).collect()
        } else {
            filter.task_ids.iter().filter_map(|id| self.tasks.get(id)).filter(|t| matches(t)).map(|t| t.id).collect()
        }
    }

    fn requeue(&mut self, filter: &DeadLetterFilter, now: Millis, effects: &mut Vec<Effect>) -> Outcome {
        let ids = self.dead_letters(filter);
        let mut queues = BTreeSet::new();
        for id in &ids {
            self.transition(*id, |t| {
                t.attempts = 0;
                queues.insert(t.job.queue.clone());
            });
            self.requeue_task(*id, 0, now);
            self.record(*id, now, EventKind::Requeued, None, "requeued from the dead letters".into());
        }
        if !queues.is_empty() {
            effects.push(Effect::TasksReady { queues: queues.into_iter().collect() });
        }
        Outcome::Count(ids.len() as u64)
    }

    /// Removes a terminal task, keeping its count in the totals.
    fn drop_task(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.remove(&id) {
            self.ix.remove(&task);
            self.ix.by_request.remove(&task.job.request_id);
            *self.collected.slot(task.state) += 1;
        }
    }

    fn purge(&mut self, filter: &DeadLetterFilter) -> Outcome {
        let ids = self.dead_letters(filter);
        for id in &ids {
            self.drop_task(*id);
        }
        Outcome::Count(ids.len() as u64)
    }

    fn collect_garbage(&mut self, now: Millis) -> Outcome {
        let horizon = now.saturating_sub(self.config.gc_ttl_ms);
        let old: Vec<TaskId> = self.ix.finished.range(..=(horizon, TaskId(u64::MAX))).map(|(_, id)| *id).collect();
        for id in &old {
            self.drop_task(*id);
        }
        Outcome::Count(old.len() as u64)
    }

    // ---------------------------------------------------------------------------------------
    // Reads

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(Box::as_ref)
    }

    pub fn task_by_request(&self, id: &RequestId) -> Option<&Task> {
        self.ix.by_request.get(id).and_then(|t| self.tasks.get(t)).map(Box::as_ref)
    }

    /// Tasks matching `filter` in id order, at most `filter.limit` (0 means no limit).
    pub fn list(&self, filter: &TaskFilter) -> Vec<&Task> {
        let start = filter.after.map_or(0, |a| a.0.saturating_add(1));
        let limit = if filter.limit == 0 { usize::MAX } else { filter.limit };
        self.tasks
            .range(TaskId(start)..)
            .map(|(_, t)| t.as_ref())
            .filter(|t| filter.state.is_none_or(|s| s == t.state))
            .filter(|t| filter.queue.as_ref().is_none_or(|q| *q == t.job.queue))
            .filter(|t| filter.release_id.is_none_or(|r| r == t.job.release_id))
            .take(limit)
            .collect()
    }

    /// Live counts (tasks held now).
    pub fn counts(&self) -> StateCounts {
        self.ix.counts
    }

    /// Live plus garbage-collected counts.
    pub fn totals(&self) -> StateCounts {
        let (l, c) = (self.ix.counts, self.collected);
        StateCounts {
            queued: l.queued,
            leased: l.leased,
            succeeded: l.succeeded + c.succeeded,
            dead_lettered: l.dead_lettered + c.dead_lettered,
            cancelled: l.cancelled + c.cancelled,
            retrying: l.retrying,
        }
    }

    pub fn submitted_total(&self) -> u64 {
        self.submitted_total
    }

    pub fn queues(&self) -> Vec<QueueCounts> {
        self.ix.queue_counts.values().cloned().collect()
    }

    pub fn workers(&self) -> Vec<&WorkerRecord> {
        self.workers.values().collect()
    }

    pub fn worker(&self, id: &WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    /// Leases `worker` holds now.
    pub fn leases_of(&self, worker: &WorkerId) -> Vec<&Task> {
        self.ix
            .by_worker
            .get(worker)
            .map_or_else(Vec::new, |ids| ids.iter().filter_map(|id| self.tasks.get(id).map(Box::as_ref)).collect())
    }

    /// Completions and failures over the minute before `now`.
    pub fn rates_per_minute(&self, now: Millis) -> (u64, u64) {
        let second = now.div_euclid(1000);
        self.rates
            .iter()
            .filter(|b| b.second > second - RATE_WINDOW_SECS && b.second <= second)
            .fold((0, 0), |(c, f), b| (c + b.completions, f + b.failures))
    }

    /// Which tasks an idle `thief` should steal, at most `max`: tasks leased to other connected
    /// workers, in the thief's queues, never stolen before, and not started (`started` answers
    /// from what the workers' heartbeats say; a task that started since is still safe to steal,
    /// the first completion counts). Victims are taken one task at a time from the deepest buffer
    /// (unstarted tasks per slot), so the load evens out instead of draining one worker. A worker
    /// much faster than the thief is left alone: it would start the task sooner than the thief
    /// would finish it (the thief must have at least two thirds of its speed).
    ///
    /// Pure and deterministic: equal inputs give equal plans. `apply(Steal)` re-checks each task.
    pub fn steal_plan(&self, thief: &WorkerId, max: u32, started: &dyn Fn(TaskId, u32) -> bool) -> Vec<(TaskId, u32)> {
        let Some(me) = self.workers.get(thief) else { return Vec::new() };
        if !me.connected || me.draining || max == 0 {
            return Vec::new();
        }
        let speed = |w: &WorkerRecord| u64::from(if w.spec.speed_milli == 0 { 1000 } else { w.spec.speed_milli });
        let my_speed = speed(me);
        // Per victim: its stealable tasks, the ones it would start last at the end.
        let mut victims: Vec<(u64, &WorkerId, Vec<(TaskId, u32)>)> = Vec::new();
        for (id, record) in &self.workers {
            if id == thief || !record.connected || my_speed * 3 < speed(record) * 2 {
                continue;
            }
            let Some(held) = self.ix.by_worker.get(id) else { continue };
            let stealable: Vec<(TaskId, u32)> = held
                .iter()
                .filter_map(|t| self.tasks.get(t))
                .filter(|t| {
                    t.stolen_from.is_none() && me.spec.queues.contains(&t.job.queue) && !started(t.id, t.lease_seq)
                })
                .map(|t| (t.id, t.lease_seq))
                .collect();
            if !stealable.is_empty() {
                victims.push((u64::from(record.spec.slots.max(1)), id, stealable));
            }
        }
        let mut plan = Vec::new();
        while plan.len() < max as usize {
            // Deepest buffer first: most unstarted tasks per slot; ties by worker id.
            let deepest = victims.iter_mut().filter(|(_, _, s)| !s.is_empty()).max_by(|(sa, ia, a), (sb, ib, b)| {
                ((a.len() as u64) * sb).cmp(&((b.len() as u64) * sa)).then_with(|| ib.cmp(ia))
            });
            let Some((_, _, stealable)) = deepest else { break };
            if let Some(task) = stealable.pop() {
                plan.push(task);
            }
        }
        plan
    }

    /// Which tasks an idle `thief` should render a backup copy of, at most `max`, once nothing is
    /// ready and nothing unstarted is left to steal: tasks that workers at most half as fast have
    /// been rendering for at least `min_age_ms` (`started_at` answers from their heartbeats; `None`
    /// for a task not known to have started). Render times are heavy-tailed, so a task that has
    /// run long is likely to run long still — for a Pareto tail of shape 1.5, twice as long again
    /// — while a fresh start on the thief takes its whole length divided by the thief's speed. The
    /// tasks where the copy is expected to save the most time come first: elapsed × (2·thief speed
    /// − 3·holder speed). Tasks copied or stolen before are left alone.
    ///
    /// Pure and deterministic, like [`Self::steal_plan`].
    pub fn backup_plan(
        &self,
        thief: &WorkerId,
        max: u32,
        now: Millis,
        min_age_ms: i64,
        started_at: &dyn Fn(TaskId, u32) -> Option<Millis>,
    ) -> Vec<(TaskId, u32)> {
        let Some(me) = self.workers.get(thief) else { return Vec::new() };
        if !me.connected || me.draining || max == 0 {
            return Vec::new();
        }
        let speed = |w: &WorkerRecord| i128::from(if w.spec.speed_milli == 0 { 1000 } else { w.spec.speed_milli });
        let my_speed = speed(me);
        let mut candidates: Vec<(std::cmp::Reverse<i128>, TaskId, u32)> = Vec::new();
        for (id, record) in &self.workers {
            let holder_speed = speed(record);
            if id == thief || holder_speed * 2 > my_speed {
                continue;
            }
            let Some(held) = self.ix.by_worker.get(id) else { continue };
            for t in held.iter().filter_map(|t| self.tasks.get(t)) {
                if t.stolen_from.is_some() || !me.spec.queues.contains(&t.job.queue) {
                    continue;
                }
                let Some(elapsed) = started_at(t.id, t.lease_seq).map(|at| now.saturating_sub(at)) else { continue };
                if elapsed >= min_age_ms {
                    let saving = i128::from(elapsed) * (2 * my_speed - 3 * holder_speed);
                    candidates.push((std::cmp::Reverse(saving), t.id, t.lease_seq));
                }
            }
        }
        candidates.sort_unstable();
        candidates.into_iter().take(max as usize).map(|(_, id, seq)| (id, seq)).collect()
    }

    pub fn steals_total(&self) -> u64 {
        self.steals_total
    }

    /// True when `worker` could lease something at `now` (cheap; used before proposing a Lease).
    pub fn has_ready_for(&self, worker: &WorkerId, now: Millis) -> bool {
        let Some(record) = self.workers.get(worker) else { return false };
        if !record.connected || record.draining {
            return false;
        }
        let queues = &record.spec.queues;
        queues.iter().any(|q| self.ix.ready.contains_key(q))
            || self
                .ix
                .backoff
                .range(..=(now, TaskId(u64::MAX)))
                .filter_map(|(_, id)| self.tasks.get(id))
                .any(|t| queues.contains(&t.job.queue))
    }

    /// The earliest lease deadline or backoff end, for arming the shell's timer.
    pub fn next_deadline(&self) -> Option<Millis> {
        let lease = self.ix.deadlines.first().map(|(d, _)| *d);
        let backoff = self.ix.backoff.first().map(|(d, _)| *d);
        match (lease, backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest terminal task becomes collectable, so the shell knows when GC has work.
    pub fn next_gc_at(&self) -> Option<Millis> {
        self.ix.finished.first().map(|(at, _)| at.saturating_add(self.config.gc_ttl_ms))
    }

    pub fn to_snapshot(&self) -> Vec<u8> {
        // Borrowed, not cloned: a clone of a million-task ledger doubled the replica's peak memory.
        // `SnapshotRef` serializes exactly as `Snapshot` does.
        let snapshot = SnapshotRef {
            config: &self.config,
            next_task: self.next_task,
            next_ready_seq: self.next_ready_seq,
            tasks: self.tasks.values().map(Box::as_ref).collect(),
            workers: self.workers.values().collect(),
            submitted_total: self.submitted_total,
            collected: self.collected,
            rates: self.rates.iter().collect(),
            steals_total: self.steals_total,
        };
        // Sized first, so the buffer is allocated once at its final size: a growing Vec of a
        // 100 MB snapshot briefly holds its old and new halves, which is the replica's peak.
        // Serializing plain data structures cannot fail.
        let size = postcard::serialize_with_flavor(&snapshot, postcard::ser_flavors::Size::default()).unwrap_or(0);
        let mut bytes = postcard::to_extend(&snapshot, Vec::with_capacity(size)).unwrap_or_default();
        self.features.write_trailer(&mut bytes);
        bytes
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let (s, rest): (Snapshot, _) = postcard::take_from_bytes(bytes)?;
        let tasks: BTreeMap<TaskId, Box<Task>> = s.tasks.into_iter().map(|t| (t.id, Box::new(t))).collect();
        let workers = s.workers.into_iter().map(|w| (w.spec.id.clone(), w)).collect();
        let ix = Indexes::build(&tasks);
        Ok(Self {
            config: s.config,
            next_task: s.next_task,
            next_ready_seq: s.next_ready_seq,
            tasks,
            workers,
            submitted_total: s.submitted_total,
            collected: s.collected,
            rates: s.rates.into_iter().collect(),
            steals_total: s.steals_total,
            features: Features::read_trailer(rest)?,
            ix,
        })
    }

    /// Replaces the replicated settings (new options after a restart). Takes effect for leases
    /// and backoffs granted from now on.
    pub fn set_config(&mut self, config: LedgerConfig) {
        self.config = config;
    }

    /// Checks every invariant of DESIGN §3; returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        crate::invariants::check(self)
    }

    // For the invariant checker.
    pub(crate) fn parts(
        &self,
    ) -> (&BTreeMap<TaskId, Box<Task>>, &BTreeMap<WorkerId, WorkerRecord>, &Indexes, StateCounts, u64) {
        (&self.tasks, &self.workers, &self.ix, self.collected, self.submitted_total)
    }

    pub(crate) fn rebuilt_indexes(&self) -> Indexes {
        Indexes::build(&self.tasks)
    }
}

impl PartialEq for Ledger {
    /// Two ledgers are equal when their records are; indexes follow from the records.
    fn eq(&self, other: &Self) -> bool {
        self.to_snapshot() == other.to_snapshot()
    }
}
