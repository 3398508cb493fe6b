//! `Complete`, `Fail` and `Release`: what a worker says about a lease it holds. Every report
//! names its lease ([`LeaseRef`]); a report for any other lease is stale and changes nothing.

use std::collections::BTreeSet;

use kiln_types::{TaskId, WorkerId};

use super::Failure;
use crate::command::{Effect, LeaseRef, Outcome};
use crate::engine::{Note, Step};
use crate::task::{EventKind, TaskResult, TaskState};
use crate::Ledger;

impl Ledger {
    /// True when the task is held under exactly this lease: the only report that may change it.
    fn is_current(&self, lease: &LeaseRef) -> bool {
        self.tasks.get(&lease.task).is_some_and(|t| {
            t.state == TaskState::Leased && t.lease_seq == lease.lease_seq && t.worker.as_ref() == Some(&lease.worker)
        })
    }

    pub(crate) fn complete(&mut self, lease: &LeaseRef, result: TaskResult, step: &mut Step) -> Outcome {
        let LeaseRef { task: id, lease_seq, worker } = lease;
        let (id, lease_seq, now) = (*id, *lease_seq, step.now);
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
            step.effect(Effect::Revoke {
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
            "completed after its lease lapsed (no newer lease existed)"
        } else if stolen.is_some() {
            "completed by the worker it was stolen from, before the thief"
        } else {
            ""
        };
        self.record(id, now, Note::new(EventKind::Succeeded, Some(worker.clone()), detail));
        self.update_worker(worker, |record| {
            record.completed += 1;
            record.last_seen = now;
        });
        self.count_rate(now, 1, 0);
        Outcome::Reported { accepted: true }
    }

    pub(crate) fn fail(&mut self, lease: LeaseRef, error: String, permanent: bool, step: &mut Step) -> Outcome {
        if !self.is_current(&lease) {
            return Outcome::Reported { accepted: false };
        }
        let now = step.now;
        self.update_worker(&lease.worker, |record| {
            record.failed += 1;
            record.last_seen = now;
        });
        self.count_rate(now, 0, 1);
        self.failed_attempt(lease.task, Failure::Reported { worker: lease.worker, permanent }, error, now);
        Outcome::Reported { accepted: true }
    }

    /// Gives leases back without counting an attempt: the tasks go to the back of their queues,
    /// ready at once.
    pub(crate) fn release(
        &mut self,
        worker: &WorkerId,
        leases: &[(TaskId, u32)],
        reason: &str,
        step: &mut Step,
    ) -> Outcome {
        let now = step.now;
        let mut queues = BTreeSet::new();
        for (task, lease_seq) in leases {
            let lease = LeaseRef { task: *task, lease_seq: *lease_seq, worker: worker.clone() };
            if !self.is_current(&lease) {
                continue;
            }
            self.requeue_task(lease.task, 0, now);
            self.record(lease.task, now, Note::new(EventKind::Released, Some(lease.worker), reason));
            if let Some(t) = self.tasks.get(task) {
                queues.insert(t.job.queue.clone());
            }
        }
        let accepted = !queues.is_empty();
        step.tasks_ready(queues);
        Outcome::Reported { accepted }
    }
}
