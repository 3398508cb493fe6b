//! Catalog batches: one replicated object per "run this manifest", so that a catalog of millions
//! of masters flows through a ledger that holds only a window of it.
//!
//! The leader reads the manifest (the shell's job: I/O stays out of the ledger) and proposes
//! `AdmitBatch` with the next lines and the cursor they end at. Applying it admits the jobs and
//! moves the cursor in one step, so a new leader resumes exactly where the old one stopped: the
//! cursor a proposal starts from must equal the committed one, or nothing is admitted. A task of a
//! batch that succeeds or is cancelled is *folded*: counted in its batch and dropped from the
//! ledger at once (its outputs and manifest are in the store), so memory and snapshots are bounded
//! by the window, not by the catalog.
//!
//! ```text
//!  CreateBatch ──▶ running ──AdmitBatch (cursor a→b, jobs, bad lines)──▶ running … ──▶ done
//!                   │  ▲                                                   (source read to the
//!             pause │  │ resume                                             end, nothing live)
//!                   ▼  │
//!                  paused        cancel (any state) ──▶ cancelled   bad line under `stop` ──▶ failed
//! ```
//!
//! Every time a batch reaches a final state its `events` count goes up; the leader delivers a
//! webhook for each event and records the delivery with `BatchNotified`, so a new leader knows
//! which events are still owed. Requeuing a finished batch's dead letters makes it run again.

use std::collections::BTreeMap;

use kiln_types::TaskId;
use serde::{Deserialize, Serialize};

use crate::Millis;

/// The most bad lines a batch keeps (with their reasons); later ones are only counted.
pub const MAX_KEPT_BAD_LINES: usize = 100;

/// What a manifest's lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceFormat {
    Jsonl,
    Csv,
}

/// What a bad line does to its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BadLinePolicy {
    /// Stop admitting: the batch fails at the first bad line (the lines before it run).
    Stop,
    /// Record the line and go on.
    Skip,
}

/// What the operator asked for. Field order is wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSpec {
    pub name: String,
    /// Where the manifest is: a path or a URL the scheduler can read.
    pub source: String,
    pub format: SourceFormat,
    /// Lines that name no queue go here (empty: the default queue).
    pub queue: String,
    /// Lines that set no priority get this one.
    pub priority: i32,
    /// The most live (queued or leased) tasks of this batch at any time.
    pub window: u64,
    pub on_bad_line: BadLinePolicy,
    /// Where to POST the batch's final events, if anywhere.
    pub webhook: Option<String>,
    /// Makes creation idempotent: the same request id returns the same batch.
    pub request_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchState {
    Running,
    Paused,
    Cancelled,
    Done,
    /// Stopped by a bad line under [`BadLinePolicy::Stop`].
    Failed,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Paused => "paused",
            BatchState::Cancelled => "cancelled",
            BatchState::Done => "done",
            BatchState::Failed => "failed",
        }
    }

    /// No more lines will be admitted (tasks already admitted may still be running).
    pub fn is_final(self) -> bool {
        matches!(self, BatchState::Cancelled | BatchState::Done | BatchState::Failed)
    }
}

impl std::fmt::Display for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far into its source a batch has read: the lines consumed and the byte offset after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub line: u64,
    pub offset: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} (byte {})", self.line, self.offset)
    }
}

/// A manifest line that could not be admitted, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
}

/// What happened to a batch's lines and tasks. Field order is wire format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    pub admitted: u64,
    pub succeeded: u64,
    /// Failed attempts (each retry counts; a task that then succeeds counts here too).
    pub failed: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    pub bad_lines: u64,
    /// Lines whose request id was already a live task: not admitted twice.
    pub duplicates: u64,
}

/// One batch. Field order is wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: u64,
    pub spec: BatchSpec,
    pub state: BatchState,
    pub counts: BatchCounts,
    pub cursor: Cursor,
    /// The source has been read to its end.
    pub source_done: bool,
    /// The source's size in bytes, as last seen by the leader reading it (for progress).
    pub source_bytes: u64,
    /// Queued or leased tasks of this batch now in the ledger.
    pub live: u64,
    pub bad_lines: Vec<BadLine>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    /// Final states reached so far (each owes one notification).
    pub events: u32,
    /// Events whose notification was delivered (or given up on).
    pub notified: u32,
}

impl BatchRecord {
    /// Tasks of this batch that reached a final state.
    pub fn finished_tasks(&self) -> u64 {
        self.counts.succeeded + self.counts.dead_lettered + self.counts.cancelled
    }

    /// Room left in the window.
    pub fn free_window(&self) -> u64 {
        self.spec.window.saturating_sub(self.live)
    }

    /// Whether the leader should read more of the source for this batch.
    pub fn wants_lines(&self) -> bool {
        self.state == BatchState::Running && !self.source_done && self.free_window() > 0
    }
}

/// What one `BatchControl` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchAction {
    Pause,
    Resume,
    Cancel,
}

/// Every batch, and which batch each of their tasks in the ledger belongs to. Field order is wire
/// format (snapshot format 3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batches {
    pub(crate) records: BTreeMap<u64, BatchRecord>,
    /// Tasks of a batch still in the ledger (live, or dead-lettered) → their batch.
    pub(crate) members: BTreeMap<TaskId, u64>,
    pub(crate) last_id: u64,
    /// Wrapping sum of a hash of every membership, kept as members change so the ledger digest
    /// stays O(1) with a window of a million tasks. Derived: not written, rebuilt on load.
    #[serde(skip)]
    pub(crate) members_sum: u64,
}

impl Batches {
    pub fn get(&self, id: u64) -> Option<&BatchRecord> {
        self.records.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &BatchRecord> {
        self.records.values()
    }

    /// The batch a task belongs to, while the task is in the ledger.
    pub fn batch_of(&self, task: TaskId) -> Option<u64> {
        self.members.get(&task).copied()
    }

    /// The tasks of `batch` still in the ledger.
    pub fn tasks_of(&self, batch: u64) -> impl Iterator<Item = TaskId> + '_ {
        self.members.iter().filter(move |(_, b)| **b == batch).map(|(t, _)| *t)
    }

    pub(crate) fn by_request(&self, request_id: &str) -> Option<&BatchRecord> {
        self.records.values().find(|b| b.spec.request_id == request_id)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn add_member(&mut self, task: TaskId, batch: u64) {
        self.members.insert(task, batch);
        self.members_sum = self.members_sum.wrapping_add(member_hash(task, batch));
    }

    /// Forgets `task`'s membership; returns its batch.
    pub(crate) fn remove_member(&mut self, task: TaskId) -> Option<u64> {
        let batch = self.members.remove(&task)?;
        self.members_sum = self.members_sum.wrapping_sub(member_hash(task, batch));
        Some(batch)
    }

    /// Recomputes the derived sum (after a snapshot load).
    pub(crate) fn rebuild_sum(&mut self) {
        self.members_sum = self.members.iter().fold(0u64, |sum, (t, b)| sum.wrapping_add(member_hash(*t, *b)));
    }
}

fn member_hash(task: TaskId, batch: u64) -> u64 {
    let mut x = task.0.rotate_left(17) ^ batch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl crate::Ledger {
    /// The batches of this replica.
    pub fn batches(&self) -> &Batches {
        &self.batches
    }
}
