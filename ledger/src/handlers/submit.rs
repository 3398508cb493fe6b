//! `Submit`: admitting jobs, idempotently per request id and all-or-nothing against the limit;
//! [`Ledger::admit`] stores one new task (batches admit through it too).

use std::collections::{BTreeMap, BTreeSet};

use kiln_types::{EncodeJob, RequestId, TaskId};

use crate::command::{Outcome, Rejection, SubmitOutcome};
use crate::engine::Step;
use crate::task::{EventKind, HistoryEvent, Task, TaskState};
use crate::{Ledger, Millis};

impl Ledger {
    pub(crate) fn submit(&mut self, jobs: Vec<EncodeJob>, step: &mut Step) -> Result<Outcome, Rejection> {
        let now = step.now;
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
            queues.insert(job.queue.clone());
            let id = self.admit(job, now);
            results.push(SubmitOutcome { task: id, created: true });
        }
        step.tasks_ready(queues);
        Ok(Outcome::Submitted(results))
    }

    /// Stores a new queued task for `job` (whose request id is not yet known) and returns its id.
    pub(crate) fn admit(&mut self, job: EncodeJob, now: Millis) -> TaskId {
        let id = TaskId(self.next_task);
        self.next_task += 1;
        self.submitted_total += 1;
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
        id
    }
}
