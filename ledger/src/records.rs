//! The records the ledger keeps besides tasks: workers, per-state and per-queue counts, and the
//! completion-rate buckets behind "per minute" figures.
//!
//! Worker records and rate buckets are part of the replicated record (snapshots carry them);
//! [`StateCounts`] is both a derived index (live counts) and a record (counts of collected tasks).

use kiln_types::QueueName;
use serde::{Deserialize, Serialize};

use crate::command::WorkerSpec;
use crate::task::TaskState;
use crate::Millis;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// Queued tasks still waiting out a retry backoff (a subset of `queued`).
    pub retrying: u64,
}

impl StateCounts {
    pub(crate) fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Queued => &mut self.queued,
            TaskState::Leased => &mut self.leased,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::DeadLettered => &mut self.dead_lettered,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }

    pub fn terminal(&self) -> u64 {
        self.succeeded + self.dead_lettered + self.cancelled
    }

    pub fn all(&self) -> u64 {
        self.queued + self.leased + self.terminal()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub name: Option<QueueName>,
    pub ready: u64,
    pub retrying: u64,
    pub leased: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub spec: WorkerSpec,
    pub connected: bool,
    pub draining: bool,
    pub registered_at: Millis,
    pub last_seen: Millis,
    /// Leases held now (derived; kept here so listings need no second lookup).
    pub leased: u32,
    pub completed: u64,
    pub failed: u64,
    /// Tasks this worker took from others by stealing, and tasks others took from it.
    pub stole: u64,
    pub stolen_from: u64,
}

impl WorkerRecord {
    /// A worker seen for the first time.
    pub(crate) fn new(spec: WorkerSpec, now: Millis, leased: u32) -> Self {
        Self {
            spec,
            connected: true,
            draining: false,
            registered_at: now,
            last_seen: now,
            leased,
            completed: 0,
            failed: 0,
            stole: 0,
            stolen_from: 0,
        }
    }
}

/// Completions and failures per second of leader time, for "per minute" rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RateBucket {
    pub(crate) second: i64,
    pub(crate) completions: u64,
    pub(crate) failures: u64,
}

pub(crate) const RATE_WINDOW_SECS: i64 = 60;
