//! `Lease`, `Steal` and `Backup`: handing tasks to workers. A lease takes ready tasks in strict
//! priority order; a steal or a backup takes tasks other workers hold, as planned by `planning`
//! and re-checked here, because the plan was made before the command was committed.

use kiln_types::{TaskId, WorkerId};

use super::Taking;
use crate::command::{Effect, Lease, Outcome, Rejection};
use crate::engine::{Note, Step};
use crate::task::{EventKind, TaskState};
use crate::Ledger;

impl Ledger {
    pub(crate) fn lease(&mut self, worker: &WorkerId, max: u32, step: &mut Step) -> Result<Outcome, Rejection> {
        let now = step.now;
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
                self.record(id, now, Note::new(EventKind::Leased, Some(worker.clone()), detail));
                leases.push(lease);
            }
        }
        self.update_worker(worker, |record| record.last_seen = now);
        Ok(Outcome::Leased(leases))
    }

    /// `Steal` and `Backup`: lease `tasks`, each named with the lease it is taken from, to the
    /// idle `thief`. A task no longer held under that lease (or stolen before, or outside the
    /// thief's queues) is skipped.
    pub(crate) fn steal(
        &mut self,
        thief: &WorkerId,
        tasks: &[(TaskId, u32)],
        taking: Taking,
        step: &mut Step,
    ) -> Result<Outcome, Rejection> {
        let now = step.now;
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
            self.record(*id, now, Note::new(EventKind::Stolen, Some(thief.clone()), detail));
            if taking == Taking::Unstarted {
                step.effect(Effect::Revoke {
                    worker: victim.clone(),
                    task: *id,
                    lease_seq: *seq,
                    reason: format!("stolen by idle worker {thief}"),
                });
            }
            self.update_worker(&victim, |v| v.stolen_from += 1);
            self.steals_total += 1;
            leases.push(lease);
        }
        let stole = leases.len() as u64;
        self.update_worker(thief, |record| {
            record.last_seen = now;
            record.stole += stole;
        });
        Ok(Outcome::Leased(leases))
    }
}
