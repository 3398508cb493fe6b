//! The derived indexes: everything the ledger can recompute from its tasks.
//!
//! Ready queues, backoff timers, lease deadlines, per-worker leases, the request-id lookup and the
//! counts are kept here so that every command is cheap, and kept *out* of snapshots so that they
//! can never disagree with the record on disk: a snapshot load rebuilds them with [`Indexes::build`].
//! [`Indexes::insert`] and [`Indexes::remove`] are exact inverses; `transition` calls one before
//! and the other after each change, and the invariants rebuild the indexes and compare.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use kiln_types::{QueueName, RequestId, TaskId, WorkerId};

use crate::digest::RecordSums;
use crate::records::{QueueCounts, StateCounts, WorkerRecord};
use crate::task::{Task, TaskState};
use crate::Millis;

/// Order of ready tasks inside one queue: highest priority first, then FIFO.
pub(crate) type ReadyKey = (Reverse<i32>, u64, TaskId);

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
    /// The record hashes behind the ledger's digest (see `digest`).
    pub(crate) sums: RecordSums,
}

impl Indexes {
    pub(crate) fn build(tasks: &BTreeMap<TaskId, Box<Task>>, workers: &BTreeMap<WorkerId, WorkerRecord>) -> Self {
        let mut ix = Indexes::default();
        ix.sums.set_workers(RecordSums::of_workers(workers.values()));
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
    pub(crate) fn insert(&mut self, task: &Task) {
        self.sums.add_task(task);
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
    pub(crate) fn remove(&mut self, task: &Task) {
        self.sums.remove_task(task);
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

pub(crate) fn ready_key(task: &Task) -> ReadyKey {
    (Reverse(task.job.priority), task.ready_seq, task.id)
}
