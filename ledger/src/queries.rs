//! The read API: what the shell asks the ledger between commands (listings, counts, the next
//! timer to arm). Reads never change the ledger; none of them is replicated.

use kiln_types::{QueueName, RequestId, TaskId, WorkerId};

use crate::records::{QueueCounts, StateCounts, WorkerRecord, RATE_WINDOW_SECS};
use crate::task::{Task, TaskState};
use crate::Ledger;
use crate::Millis;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub queue: Option<QueueName>,
    pub release_id: Option<i64>,
    pub after: Option<TaskId>,
    pub limit: usize,
}

impl Ledger {
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
        let tasks = self.ix.finished.first().map(|(at, _)| *at);
        // With `forget_gone_workers`, a worker gone without leases is due too (a walk over the
        // workers: a fleet is thousands, not millions).
        let workers = self
            .features
            .is_enabled(crate::features::FORGET_GONE_WORKERS)
            .then(|| {
                self.workers
                    .values()
                    .filter(|w| !w.connected && w.leased == 0)
                    .filter(|w| self.ix.by_worker.get(&w.spec.id).is_none_or(|held| held.is_empty()))
                    .map(|w| w.last_seen)
                    .min()
            })
            .flatten();
        tasks.into_iter().chain(workers).min().map(|at| at.saturating_add(self.config.gc_ttl_ms))
    }
}
