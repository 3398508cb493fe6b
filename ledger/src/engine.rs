//! The `Ledger` value, [`Ledger::apply`] (the single entry point) and [`Ledger::transition`] (the
//! one way a stored task changes), plus the small helpers every command family shares.
//!
//! The ledger holds two kinds of data. The *record* (tasks, workers, counters) is what a snapshot
//! carries and what replicas must agree on. The *indexes* (`indexes`) are derived from the record
//! and rebuilt when a snapshot is loaded.
//!
//! Every task transition goes through [`Ledger::transition`]: remove the task from the indexes of
//! its old state, change it, insert it into the indexes of its new state. `invariants` rebuilds the
//! indexes from scratch and compares, so a transition that forgets a counter is caught by the
//! property tests rather than by an operator reading a wrong `kiln status`. The command handlers
//! themselves live in `handlers`, one file per family.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kiln_types::{QueueName, TaskId, WorkerId};

use crate::batches::Batches;
use crate::command::{Applied, Command, Effect};
use crate::config::LedgerConfig;
use crate::features::Features;
use crate::handlers::{Failure, Taking};
use crate::indexes::Indexes;
use crate::records::{RateBucket, StateCounts, WorkerRecord, RATE_WINDOW_SECS};
use crate::task::{EventKind, HistoryEvent, Task, TaskState};
use crate::Millis;

/// The replicated task ledger. See the crate docs for how it is driven.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub(crate) config: LedgerConfig,
    pub(crate) next_task: u64,
    pub(crate) next_ready_seq: u64,
    /// Boxed tasks: a B-tree node holds eleven slots, mostly half empty, so inline tasks wasted
    /// hundreds of bytes each.
    pub(crate) tasks: BTreeMap<TaskId, Box<Task>>,
    pub(crate) workers: BTreeMap<WorkerId, WorkerRecord>,
    pub(crate) submitted_total: u64,
    /// Terminal tasks already garbage-collected or purged, by final state.
    pub(crate) collected: StateCounts,
    pub(crate) rates: VecDeque<RateBucket>,
    /// Tasks moved by work stealing since the cluster began.
    pub(crate) steals_total: u64,
    /// Enabled feature flags and the state of gated features (see `features`). Part of the record:
    /// snapshots carry it (format 2) as soon as anything is enabled.
    pub(crate) features: Features,
    /// `batches`: every batch and which of them each batch task belongs to. Snapshot format 3.
    pub(crate) batches: Batches,
    pub(crate) ix: Indexes,
    /// Batch tasks that finished during the command being applied, dropped at its end. Always
    /// empty between commands.
    pub(crate) folding: Vec<TaskId>,
}

/// One command's context: the leader's time and the effects the shell must carry out.
pub(crate) struct Step {
    pub(crate) now: Millis,
    pub(crate) effects: Vec<Effect>,
}

impl Step {
    pub(crate) fn effect(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// Wakes idle workers of these queues, if there are any.
    pub(crate) fn tasks_ready(&mut self, queues: BTreeSet<QueueName>) {
        if !queues.is_empty() {
            self.effects.push(Effect::TasksReady { queues: queues.into_iter().collect() });
        }
    }
}

/// A history entry about to be written: what happened, by whom, and why.
pub(crate) struct Note {
    pub(crate) kind: EventKind,
    pub(crate) worker: Option<WorkerId>,
    pub(crate) detail: String,
}

impl Note {
    pub(crate) fn new(kind: EventKind, worker: Option<WorkerId>, detail: impl Into<String>) -> Self {
        Self { kind, worker, detail: detail.into() }
    }
}

/// Deterministic jitter in [0, 1): a hash of the task and attempt, never a thread RNG, so every
/// replica computes the same backoff.
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
    /// that makes no sense in the current state is a [`crate::Rejection`], identical on every
    /// replica.
    pub fn apply(&mut self, cmd: Command, now: Millis) -> Applied {
        let mut step = Step { now, effects: Vec::new() };
        let s = &mut step;
        let outcome = match cmd {
            Command::Submit { jobs } => self.submit(jobs, s),
            Command::RegisterWorker { spec } => Ok(self.register(spec, s)),
            Command::DisconnectWorker { worker } => self.with_worker(&worker, s, |w| w.connected = false),
            Command::DrainWorker { worker } => self.with_worker(&worker, s, |w| w.draining = true),
            Command::Lease { worker, max } => self.lease(&worker, max, s),
            Command::Steal { thief, tasks } => self.steal(&thief, &tasks, Taking::Unstarted, s),
            Command::Backup { thief, tasks } => self.steal(&thief, &tasks, Taking::BackupCopy, s),
            Command::Renew { worker } => Ok(self.renew(&worker, s)),
            Command::Complete { task, lease_seq, worker, result } => {
                Ok(self.complete(&crate::LeaseRef { task, lease_seq, worker }, result, s))
            }
            Command::Fail { task, lease_seq, worker, error, permanent } => {
                Ok(self.fail(crate::LeaseRef { task, lease_seq, worker }, error, permanent, s))
            }
            Command::Release { worker, leases, reason } => Ok(self.release(&worker, &leases, &reason, s)),
            Command::ExpireLeases => Ok(self.expire(s)),
            Command::GraceLeases { grace_ms } => Ok(self.grace(now.saturating_add(grace_ms))),
            Command::Cancel { task } => self.cancel(task, s),
            Command::RequeueDeadLetters { filter } => Ok(self.requeue(&filter, s)),
            Command::PurgeDeadLetters { filter } => Ok(self.purge(&filter)),
            Command::CollectGarbage => Ok(self.collect_garbage(now)),
            Command::EnableFeature { name } => self.features.enable(&name),
            Command::OpenSession { spec } => self.open_session(spec, s),
            Command::CloseSession { worker, session } => self.close_session(&worker, session, s),
            Command::CreateBatch { spec } => self.create_batch(spec, now),
            Command::AdmitBatch { batch, from, to, jobs, bad_lines, end, source_bytes } => {
                self.admit_batch(batch, (from, to), jobs, bad_lines, end, source_bytes, s)
            }
            Command::BatchControl { batch, action } => self.control_batch(batch, action, s),
            Command::BatchNotified { batch, event } => self.batch_notified(batch, event),
        };
        self.fold_finished();
        Applied { outcome, effects: step.effects }
    }

    /// The one way a stored task changes: out of its old indexes (and its hash out of the
    /// digest), `change`, into the new ones.
    pub(crate) fn transition<R>(&mut self, id: TaskId, change: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let task = self.tasks.get_mut(&id)?;
        self.ix.remove(task);
        let old_worker = task.worker.clone().filter(|_| task.state == TaskState::Leased);
        let result = change(task);
        let new_worker = task.worker.clone().filter(|_| task.state == TaskState::Leased);
        self.ix.insert(task);
        if old_worker != new_worker {
            for (worker, delta) in [(old_worker, -1i64), (new_worker, 1)] {
                if let Some(worker) = worker {
                    self.update_worker(&worker, |record| {
                        record.leased = (i64::from(record.leased) + delta).max(0) as u32;
                    });
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

    /// Appends a history event to a task (the attempt number is the task's own).
    pub(crate) fn record(&mut self, id: TaskId, at: Millis, note: Note) {
        let max = self.config.max_history;
        self.transition(id, |task| {
            let attempt = match note.kind {
                EventKind::Leased => task.attempts + 1,
                _ => task.attempts,
            };
            let event = HistoryEvent { at, kind: note.kind, worker: note.worker, attempt, detail: note.detail };
            Self::push_history(max, task, event);
        });
    }

    pub(crate) fn take_ready_seq(&mut self) -> u64 {
        let seq = self.next_ready_seq;
        self.next_ready_seq += 1;
        seq
    }

    pub(crate) fn backoff_ms(&self, task: TaskId, attempts: u32) -> i64 {
        let base = self.config.backoff_base_ms.max(1);
        let exp = attempts.saturating_sub(1).min(30);
        let raw = base.saturating_mul(1i64 << exp).min(self.config.backoff_max_ms.max(base));
        // Up to 20 % spread so that a batch failing together does not retry together.
        raw + (raw as f64 * 0.2 * jitter(task, attempts)) as i64
    }

    /// Sends a task back to its queue: at once (`ready_at == 0`) or after a backoff.
    pub(crate) fn requeue_task(&mut self, id: TaskId, ready_at: Millis, now: Millis) {
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

    pub(crate) fn finish(&mut self, id: TaskId, state: TaskState, now: Millis) {
        let was_live = self.transition(id, |t| {
            let was_live = !t.state.is_terminal();
            t.state = state;
            t.lease_expires_at = None;
            t.stolen_from = None;
            t.ready_at = 0;
            t.updated_at = now;
            was_live
        });
        if was_live == Some(true) {
            self.batch_task_finished(id, state, now);
        }
    }

    pub(crate) fn count_rate(&mut self, now: Millis, completions: u64, failures: u64) {
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
    pub(crate) fn promote_due(&mut self, now: Millis) -> Vec<QueueName> {
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

    /// Counts a failed attempt and either schedules a retry or dead-letters the task; `failure`
    /// says whose failure it was and so how soon the retry comes.
    pub(crate) fn failed_attempt(&mut self, id: TaskId, failure: Failure, error: String, now: Millis) {
        let Some(attempts) = self.transition(id, |t| {
            t.attempts += 1;
            t.last_error = Some(error.clone());
            t.attempts
        }) else {
            return;
        };
        self.batch_task_failed(id);
        let (kind, worker, permanent, retry_now) = match failure {
            Failure::Reported { worker, permanent } => (EventKind::Failed, Some(worker), permanent, false),
            // Heartbeats stopped: retry at once, the lease TTL has already waited long enough.
            Failure::LeaseExpired { worker } => (EventKind::LeaseExpired, worker, false, true),
        };
        self.record(id, now, Note::new(kind, worker, error.clone()));
        let max_attempts = self.tasks.get(&id).map_or(1, |t| t.job.max_attempts);
        if permanent || attempts >= max_attempts {
            let reason = if permanent {
                format!("permanent error: {error}")
            } else {
                format!("{attempts} of {max_attempts} attempts failed; last: {error}")
            };
            self.transition(id, |t| t.last_error = Some(reason.clone()));
            self.finish(id, TaskState::DeadLettered, now);
            self.record(id, now, Note::new(EventKind::DeadLettered, None, reason));
        } else if retry_now {
            self.requeue_task(id, 0, now);
            self.record(id, now, Note::new(EventKind::RetryScheduled, None, format!("retry {} now", attempts + 1)));
        } else {
            let wait = self.backoff_ms(id, attempts);
            self.requeue_task(id, now.saturating_add(wait), now);
            let detail = format!("retry {} in {wait} ms", attempts + 1);
            self.record(id, now, Note::new(EventKind::RetryScheduled, None, detail));
        }
    }

    /// Replaces the replicated settings (new options after a restart). Takes effect for leases
    /// and backoffs granted from now on.
    pub fn set_config(&mut self, config: LedgerConfig) {
        self.config = config;
    }

    /// Checks every invariant the ledger promises; returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        crate::invariants::check(self)
    }

    pub(crate) fn rebuilt_indexes(&self) -> Indexes {
        Indexes::build(&self.tasks, &self.workers)
    }
}

impl PartialEq for Ledger {
    /// Two ledgers are equal when their records are; indexes follow from the records.
    fn eq(&self, other: &Self) -> bool {
        self.to_snapshot() == other.to_snapshot()
    }
}
