//! The registry of connected sessions on this node: what the leader knows of each worker beyond
//! the ledger (its stream, how much it wants, its latest heartbeat).
//!
//! In memory only and never replicated: a new leader starts empty and fills up as the workers
//! reconnect to it. One mutex, held only for map operations, never across an `.await`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use kiln_ledger::WorkerSpec;
use kiln_proto::v1;
use kiln_types::WorkerId;
use tokio::sync::mpsc;
use tonic::Status;

use crate::convert::LeaseKey;

/// The sending half of a worker's stream: assignments, revocations, acks.
pub type Outbound = mpsc::Sender<Result<v1::SchedulerMessage, Status>>;

/// One connected worker.
pub struct Session {
    /// Distinguishes this connection from a later reconnect of the same worker, so the old
    /// stream's cleanup never removes the new one.
    pub conn: u64,
    /// The ledger's identity of this session once `fenced_sessions` is enabled (`None`: it was
    /// registered unfenced): its close quotes it, so a late close cannot disconnect a newer one.
    pub ledger_session: Option<u64>,
    pub tx: Outbound,
    /// As registered, to register again if the ledger ever says this live session's worker is
    /// disconnected (the close of an older stream can commit after this one's registration).
    pub spec: WorkerSpec,
    pub want: u32,
    pub draining: bool,
    pub last_renewal: Instant,
    /// From the latest heartbeat: slots rendering now, and the leases not started yet.
    pub busy_slots: u32,
    pub unstarted: BTreeSet<LeaseKey>,
    /// Leases a heartbeat listed as held and started, with the time (ms) of the first such
    /// heartbeat: how long a render has run, for backup copies.
    pub started_at: HashMap<LeaseKey, i64>,
}

impl Session {
    pub fn new(conn: u64, tx: Outbound, spec: WorkerSpec) -> Self {
        Self {
            conn,
            ledger_session: None,
            tx,
            spec,
            want: 0,
            draining: false,
            last_renewal: Instant::now(),
            busy_slots: 0,
            unstarted: BTreeSet::new(),
            started_at: HashMap::new(),
        }
    }
}

/// What the leader knows of a connected worker beyond the ledger: its latest heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub busy_slots: u32,
    /// Leased but not started: the worker's prefetch depth.
    pub buffered: u32,
}

/// What work stealing plans from: every connected worker's latest heartbeat, copied out of the
/// registry so the plan can be made without holding its lock.
#[derive(Debug, Default, Clone)]
pub struct StealInputs {
    pub unstarted: BTreeSet<LeaseKey>,
    pub started_at: HashMap<LeaseKey, i64>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<WorkerId, Session>,
    /// Set once on shutdown: no session may register after that.
    closed: bool,
}

/// Refused because the node is shutting down.
#[derive(Debug)]
pub struct Closed;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the session of `worker`, if it is connected here.
    pub fn with<R>(&self, worker: &WorkerId, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.lock().sessions.get_mut(worker).map(f)
    }

    /// Registers a new connection, replacing an older one of the same worker.
    pub fn insert(&self, worker: WorkerId, session: Session) -> Result<(), Closed> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Closed);
        }
        inner.sessions.insert(worker, session);
        Ok(())
    }

    /// Removes `worker`'s session if it is still connection `conn`, returning it.
    pub fn remove_if_current(&self, worker: &WorkerId, conn: u64) -> Option<Session> {
        let mut inner = self.lock();
        match inner.sessions.get(worker) {
            Some(s) if s.conn == conn => inner.sessions.remove(worker),
            _ => None,
        }
    }

    /// Removes every session (leadership lost, or shutdown when `close`), returning their streams.
    pub fn drain(&self, close: bool) -> Vec<Outbound> {
        let mut inner = self.lock();
        inner.closed |= close;
        inner.sessions.drain().map(|(_, s)| s.tx).collect()
    }

    pub fn sender(&self, worker: &WorkerId) -> Option<Outbound> {
        self.with(worker, |s| s.tx.clone())
    }

    /// Workers that want work and are not draining, with how much they want.
    pub fn wanting(&self) -> Vec<(WorkerId, u32)> {
        self.lock()
            .sessions
            .iter()
            .filter(|(_, s)| s.want > 0 && !s.draining)
            .map(|(w, s)| (w.clone(), s.want))
            .collect()
    }

    pub fn steal_inputs(&self) -> StealInputs {
        let inner = self.lock();
        StealInputs {
            unstarted: inner.sessions.values().flat_map(|s| s.unstarted.iter().copied()).collect(),
            started_at: inner.sessions.values().flat_map(|s| s.started_at.iter().map(|(k, v)| (*k, *v))).collect(),
        }
    }

    pub fn live(&self) -> HashMap<WorkerId, Live> {
        self.lock()
            .sessions
            .iter()
            .map(|(w, s)| (w.clone(), Live { busy_slots: s.busy_slots, buffered: s.unstarted.len() as u32 }))
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }
}
