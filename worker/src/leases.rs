//! The leases this worker holds, and where each one stands. Owned by the worker loop alone.
//!
//! ```text
//!  Assign ─▶ Working ──report──▶ Reported ──Ack──▶ (forgotten)
//!              │ not started: Revoke ──▶ (forgotten, the ledger already took it back)
//!              └ not started: drain ───▶ Released ──Ack──▶ (forgotten)
//! ```
//!
//! A lease counts against capacity while Working. It is *held* — listed in `Hello` and heartbeats —
//! while Working or Reported: a reconnecting worker must claim the leases whose reports it is about
//! to re-send, or the scheduler would release them as lost with a previous process. Released leases
//! are not held; they only wait for the scheduler to confirm.
//! Whether a Working lease has started rendering is its [`Stage`], shared with the slot threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::AbortHandle;

use kiln_proto::v1::LeaseRef;

use crate::slots::Stage;

/// `(task_id, lease_seq)`: one lease of one task.
pub type LeaseKey = (u64, u32);

pub fn key_of(lease: &LeaseRef) -> LeaseKey {
    (lease.task_id, lease.lease_seq)
}

pub fn lease_ref((task_id, lease_seq): LeaseKey) -> LeaseRef {
    LeaseRef { task_id, lease_seq }
}

#[derive(Debug)]
enum Phase {
    Working { stage: Arc<Stage>, abort: Option<AbortHandle> },
    Reported,
    Released,
}

/// What a revocation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The task had not started: dropped.
    Dropped,
    /// Rendering had begun: it finishes and its report goes up anyway (the ledger ignores it).
    Started,
    /// Not held here (already reported, or never seen).
    NotHeld,
}

#[derive(Debug, Default)]
pub struct Leases {
    map: BTreeMap<LeaseKey, Phase>,
}

impl Leases {
    pub fn contains(&self, key: LeaseKey) -> bool {
        self.map.contains_key(&key)
    }

    /// Records a newly started task. False if the lease is already known (a duplicate Assign).
    pub fn insert(&mut self, key: LeaseKey, stage: Arc<Stage>, abort: Option<AbortHandle>) -> bool {
        if self.map.contains_key(&key) {
            return false;
        }
        self.map.insert(key, Phase::Working { stage, abort });
        true
    }

    /// Records a lease given back or refused without running it; it waits for its ack.
    pub fn insert_released(&mut self, key: LeaseKey) {
        self.map.insert(key, Phase::Released);
    }

    /// Records a lease that failed before it ran (an invalid job); it waits for its ack.
    pub fn insert_reported(&mut self, key: LeaseKey) {
        self.map.insert(key, Phase::Reported);
    }

    /// Leases being worked on or reported but not yet acknowledged, in task order.
    pub fn held(&self) -> Vec<LeaseRef> {
        self.map.iter().filter(|(_, p)| !matches!(p, Phase::Released)).map(|(k, _)| lease_ref(*k)).collect()
    }

    /// Working leases and their stages, so the session can tell started from unstarted at
    /// heartbeat time (a slot may take a job at any moment without the loop hearing of it).
    pub fn working(&self) -> Vec<(LeaseKey, Arc<Stage>)> {
        self.map
            .iter()
            .filter_map(|(k, p)| match p {
                Phase::Working { stage, .. } => Some((*k, stage.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn held_count(&self) -> usize {
        self.map.values().filter(|p| matches!(p, Phase::Working { .. })).count()
    }

    /// How many more tasks to ask for to hold `target`.
    pub fn want(&self, target: usize) -> u32 {
        u32::try_from(target.saturating_sub(self.held_count())).unwrap_or(u32::MAX)
    }

    /// A Working task produced its report. False if the lease is not Working any more (it was
    /// given back meanwhile), in which case the report must not be sent.
    pub fn reported(&mut self, key: LeaseKey) -> bool {
        match self.map.get_mut(&key) {
            Some(p @ Phase::Working { .. }) => {
                *p = Phase::Reported;
                true
            }
            _ => false,
        }
    }

    /// A Working task ended without a report (cancelled before it started).
    pub fn forget_working(&mut self, key: LeaseKey) {
        if matches!(self.map.get(&key), Some(Phase::Working { .. })) {
            self.map.remove(&key);
        }
    }

    /// The scheduler revoked a lease.
    pub fn revoke(&mut self, key: LeaseKey) -> Revoked {
        let Some(Phase::Working { stage, abort }) = self.map.get(&key) else {
            return Revoked::NotHeld;
        };
        if !stage.cancel() {
            return Revoked::Started;
        }
        if let Some(a) = abort {
            a.abort();
        }
        self.map.remove(&key);
        Revoked::Dropped
    }

    /// Cancels every Working task no slot has started, marks it Released and returns its key.
    /// With `started` too, gives back the running ones as well (drain grace expired): their
    /// threads finish in the background and the result is dropped.
    pub fn release_working(&mut self, started: bool) -> Vec<LeaseKey> {
        let mut released = Vec::new();
        for (key, phase) in self.map.iter_mut() {
            let Phase::Working { stage, abort } = phase else { continue };
            if stage.cancel() || started {
                if let Some(a) = abort {
                    a.abort();
                }
                *phase = Phase::Released;
                released.push(*key);
            }
        }
        released
    }

    /// The scheduler recorded the report (or the release): forget the lease.
    pub fn acked(&mut self, key: LeaseKey) {
        if matches!(self.map.get(&key), Some(Phase::Reported | Phase::Released)) {
            self.map.remove(&key);
        }
    }

    /// Reports and releases not yet acknowledged.
    pub fn awaiting_ack(&self) -> usize {
        self.map.values().filter(|p| !matches!(p, Phase::Working { .. })).count()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage() -> Arc<Stage> {
        Arc::default()
    }

    #[test]
    fn want_counts_only_working_leases() {
        let mut l = Leases::default();
        assert_eq!(l.want(4), 4);
        assert!(l.insert((1, 1), stage(), None));
        assert!(!l.insert((1, 1), stage(), None), "duplicate assign");
        assert!(l.insert((2, 1), stage(), None));
        assert_eq!(l.want(4), 2);
        assert!(l.reported((1, 1)));
        assert_eq!(l.want(4), 3);
        assert_eq!(l.held(), vec![lease_ref((1, 1)), lease_ref((2, 1))], "a reported lease is held until acked");
        assert_eq!(l.awaiting_ack(), 1);
        l.acked((1, 1));
        assert_eq!(l.awaiting_ack(), 0);
        assert_eq!(l.held(), vec![lease_ref((2, 1))]);
        l.acked((2, 1)); // an ack for a working lease changes nothing
        assert_eq!(l.held_count(), 1);
        assert_eq!(Leases::default().want(0), 0);
    }

    #[test]
    fn revoke_drops_only_unstarted_tasks() {
        let mut l = Leases::default();
        let running = stage();
        assert!(running.start());
        l.insert((1, 1), running, None);
        l.insert((2, 1), stage(), None);
        assert_eq!(l.revoke((1, 1)), Revoked::Started);
        assert_eq!(l.revoke((2, 1)), Revoked::Dropped);
        assert_eq!(l.revoke((3, 1)), Revoked::NotHeld);
        assert!(l.contains((1, 1)) && !l.contains((2, 1)));
        assert!(l.reported((1, 1)), "a started revoked task still reports");
    }

    #[test]
    fn drain_releases_unstarted_then_everything() {
        let mut l = Leases::default();
        let running = stage();
        assert!(running.start());
        let waiting = stage();
        l.insert((1, 1), running, None);
        l.insert((2, 1), waiting.clone(), None);
        l.insert((3, 1), stage(), None);
        assert_eq!(l.release_working(false), vec![(2, 1), (3, 1)]);
        assert!(waiting.is_cancelled() && !waiting.start(), "a slot must not start a released task");
        assert_eq!(l.held(), vec![lease_ref((1, 1))]);
        assert!(!l.reported((2, 1)), "a released lease never reports");
        assert_eq!(l.release_working(true), vec![(1, 1)]);
        assert_eq!(l.held_count(), 0);
        for k in [(1, 1), (2, 1), (3, 1)] {
            l.acked(k);
        }
        assert!(l.is_empty());
    }
}
