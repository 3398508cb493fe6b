//! `Cancel`, `RequeueDeadLetters`, `PurgeDeadLetters` and `CollectGarbage`: how tasks end and
//! what happens to them afterwards (a dead letter may be requeued; a finished task is eventually
//! dropped, its count kept in the totals; with `forget_gone_workers`, so is a worker long gone).

use std::collections::BTreeSet;

use kiln_types::{TaskId, WorkerId};

use crate::command::{DeadLetterFilter, Effect, Outcome, Rejection};
use crate::engine::{Note, Step};
use crate::features::FORGET_GONE_WORKERS;
use crate::task::{EventKind, Task, TaskState};
use crate::Ledger;
use crate::Millis;

impl Ledger {
    pub(crate) fn cancel(&mut self, id: TaskId, step: &mut Step) -> Result<Outcome, Rejection> {
        let task = self.tasks.get(&id).ok_or(Rejection::UnknownTask(id))?;
        if task.state.is_terminal() {
            return Err(Rejection::AlreadyTerminal { task: id, state: task.state.to_string() });
        }
        if let (TaskState::Leased, Some(worker)) = (task.state, task.worker.clone()) {
            step.effect(Effect::Revoke { worker, task: id, lease_seq: task.lease_seq, reason: "cancelled".into() });
        }
        if let (TaskState::Leased, Some((victim, seq))) = (task.state, task.stolen_from.clone()) {
            step.effect(Effect::Revoke { worker: victim, task: id, lease_seq: seq, reason: "cancelled".into() });
        }
        self.finish(id, TaskState::Cancelled, step.now);
        self.record(id, step.now, Note::new(EventKind::Cancelled, None, ""));
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

    pub(crate) fn requeue(&mut self, filter: &DeadLetterFilter, step: &mut Step) -> Outcome {
        let now = step.now;
        let ids = self.dead_letters(filter);
        let mut queues = BTreeSet::new();
        for id in &ids {
            self.transition(*id, |t| {
                t.attempts = 0;
                queues.insert(t.job.queue.clone());
            });
            self.requeue_task(*id, 0, now);
            self.batch_task_requeued(*id, now);
            self.record(*id, now, Note::new(EventKind::Requeued, None, "requeued from the dead letters"));
        }
        step.tasks_ready(queues);
        Outcome::Count(ids.len() as u64)
    }

    /// Removes a terminal task, keeping its count in the totals.
    pub(crate) fn drop_task(&mut self, id: TaskId) {
        self.batches.remove_member(id);
        if let Some(task) = self.tasks.remove(&id) {
            self.ix.remove(&task);
            self.ix.by_request.remove(&task.job.request_id);
            *self.collected.slot(task.state) += 1;
        }
    }

    pub(crate) fn purge(&mut self, filter: &DeadLetterFilter) -> Outcome {
        let ids = self.dead_letters(filter);
        for id in &ids {
            self.drop_task(*id);
        }
        Outcome::Count(ids.len() as u64)
    }

    /// Drops tasks finished before `now - gc_ttl` (their counts stay), and with
    /// `forget_gone_workers` enabled the records of workers gone as long and holding no lease.
    /// The count is of tasks.
    pub(crate) fn collect_garbage(&mut self, now: Millis) -> Outcome {
        let horizon = now.saturating_sub(self.config.gc_ttl_ms);
        let old: Vec<TaskId> = self.ix.finished.range(..=(horizon, TaskId(u64::MAX))).map(|(_, id)| *id).collect();
        for id in &old {
            self.drop_task(*id);
        }
        if self.features.is_enabled(FORGET_GONE_WORKERS) {
            for worker in self.gone_workers(horizon) {
                if let Some(record) = self.workers.remove(&worker) {
                    self.ix.sums.remove_worker(&record);
                }
                self.features.forget(&worker);
            }
        }
        Outcome::Count(old.len() as u64)
    }

    /// Workers disconnected since before `horizon` that hold no lease.
    pub(crate) fn gone_workers(&self, horizon: Millis) -> Vec<WorkerId> {
        self.workers
            .values()
            .filter(|w| !w.connected && w.last_seen <= horizon && w.leased == 0)
            .filter(|w| self.ix.by_worker.get(&w.spec.id).is_none_or(|held| held.is_empty()))
            .map(|w| w.spec.id.clone())
            .collect()
    }
}
