//! `RegisterWorker`, `DisconnectWorker`, `DrainWorker` and `Renew`: the workers' own records and
//! the heartbeat that keeps their leases alive. `OpenSession` and `CloseSession` (feature
//! `fenced_sessions`) are the same registration and disconnect, fenced by a session identity.

use kiln_types::{TaskId, WorkerId};

use crate::command::{Outcome, Rejection, WorkerSpec};
use crate::engine::Step;
use crate::features::FENCED_SESSIONS;
use crate::records::WorkerRecord;
use crate::Ledger;

impl Ledger {
    pub(crate) fn register(&mut self, spec: WorkerSpec, step: &mut Step) -> Outcome {
        let now = step.now;
        let leased = self.ix.by_worker.get(&spec.id).map_or(0, |s| s.len() as u32);
        if self.workers.contains_key(&spec.id) {
            let id = spec.id.clone();
            self.update_worker(&id, |record| {
                record.spec = spec;
                record.connected = true;
                record.draining = false;
                record.last_seen = now;
                record.leased = leased;
            });
        } else {
            let record = WorkerRecord::new(spec, now, leased);
            self.ix.sums.add_worker(&record);
            self.workers.insert(record.spec.id.clone(), record);
        }
        Outcome::Done
    }

    /// Changes a known worker's record (disconnect, drain).
    pub(crate) fn with_worker(
        &mut self,
        worker: &WorkerId,
        step: &mut Step,
        f: impl FnOnce(&mut WorkerRecord),
    ) -> Result<Outcome, Rejection> {
        let now = step.now;
        self.update_worker(worker, |record| {
            record.last_seen = now;
            f(record);
        })
        .map(|()| Outcome::Done)
        .ok_or_else(|| Rejection::UnknownWorker(worker.clone()))
    }

    /// Extends every lease the worker holds to `now + lease_ttl` (never shortening one).
    pub(crate) fn renew(&mut self, worker: &WorkerId, step: &mut Step) -> Outcome {
        let now = step.now;
        self.update_worker(worker, |record| record.last_seen = now);
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

    /// `OpenSession`: registers the worker under a new session identity.
    pub(crate) fn open_session(&mut self, spec: WorkerSpec, step: &mut Step) -> Result<Outcome, Rejection> {
        self.features.require(FENCED_SESSIONS, "OpenSession")?;
        let session = self.features.open_session(&spec.id);
        self.register(spec, step);
        Ok(Outcome::SessionOpened { session })
    }

    /// `CloseSession`: disconnects the worker only if `session` is still its current one; the
    /// close of a replaced session is `Reported { accepted: false }` and changes nothing.
    pub(crate) fn close_session(
        &mut self,
        worker: &WorkerId,
        session: u64,
        step: &mut Step,
    ) -> Result<Outcome, Rejection> {
        self.features.require(FENCED_SESSIONS, "CloseSession")?;
        if !self.workers.contains_key(worker) {
            return Err(Rejection::UnknownWorker(worker.clone()));
        }
        let current = self.features.close_session(worker, session);
        if current {
            self.with_worker(worker, step, |w| w.connected = false)?;
        }
        Ok(Outcome::Reported { accepted: current })
    }
}
