//! `ExpireLeases` and `GraceLeases`: the clock's side of leasing. A lease whose deadline passed
//! counts as a failed attempt; after a leader change, every live lease gets a grace period
//! because the new leader never saw the old one's clock.

use std::collections::BTreeSet;

use kiln_types::{QueueName, TaskId};

use super::Failure;
use crate::command::{Effect, Outcome};
use crate::engine::Step;
use crate::Ledger;
use crate::Millis;

impl Ledger {
    pub(crate) fn expire(&mut self, step: &mut Step) -> Outcome {
        let now = step.now;
        let lapsed: Vec<TaskId> = self.ix.deadlines.range(..=(now, TaskId(u64::MAX))).map(|(_, id)| *id).collect();
        for id in &lapsed {
            let Some(task) = self.tasks.get(id) else { continue };
            let (worker, lease_seq) = (task.worker.clone(), task.lease_seq);
            let error = match &worker {
                Some(w) => format!("lease expired: worker {w} stopped heartbeating"),
                None => "lease expired".to_owned(),
            };
            self.failed_attempt(*id, Failure::LeaseExpired { worker: worker.clone() }, error, now);
            if let Some(worker) = worker {
                step.effect(Effect::Revoke { worker, task: *id, lease_seq, reason: "lease expired".into() });
            }
        }
        let mut queues: BTreeSet<QueueName> = self.promote_due(now).into_iter().collect();
        queues.extend(lapsed.iter().filter_map(|id| self.tasks.get(id)).map(|t| t.job.queue.clone()));
        step.tasks_ready(queues);
        Outcome::Count(lapsed.len() as u64)
    }

    /// No live lease may expire before `until`.
    pub(crate) fn grace(&mut self, until: Millis) -> Outcome {
        let short: Vec<TaskId> = self.ix.deadlines.range(..(until, TaskId(0))).map(|(_, id)| *id).collect();
        for id in &short {
            self.transition(*id, |t| t.lease_expires_at = Some(until));
        }
        Outcome::Count(short.len() as u64)
    }
}
