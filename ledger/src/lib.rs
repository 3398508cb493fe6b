//! The ledger: Kiln's task state machine. Pure, deterministic, no async, no I/O, no clock.
//!
//! Every scheduler replica holds one [`Ledger`] and feeds it the same committed [`Command`]s in the
//! same order, each with the timestamp the leader stamped on it. Because `apply` depends on nothing
//! else, every replica reaches the same state, and the whole thing can be tested exhaustively with
//! property tests and deterministic simulations.
//!
//! ```text
//!            Command + now                       Applied { outcome, effects }
//!  shell ───────────────────────▶ Ledger::apply ─────────────────────────────▶ shell
//!  (raft log, committed order)      │  tasks, queues, leases,                 (reply to the caller,
//!                                   │  workers, dead letters,                  revoke leases on
//!                                   ▼  counters, history                       worker sessions, wake
//!                              snapshot bytes                                  idle workers)
//! ```
//!
//! Layout (one concern per file):
//! - [`command`]: the commands, their outcomes, the effects the shell must carry out, and the
//!   [`LeaseRef`] every report names.
//! - [`task`]: a task, its state and its history.
//! - `config`: [`LedgerConfig`], the replicated settings.
//! - `records`: worker records, per-state and per-queue counts, rate buckets.
//! - `indexes`: everything derivable from the tasks (ready queues, deadlines, counts), rebuilt on
//!   snapshot load.
//! - `engine`: the [`Ledger`] value, `apply` (the single entry point) and `transition` (the one
//!   way a stored task changes).
//! - `handlers/`: one file per command family (submit; leasing; reports; expiry; terminal:
//!   cancel, dead letters, GC; workers).
//! - `queries`: the read API ([`TaskFilter`], listings, counts, timers).
//! - `planning`: the pure work-stealing and backup plans.
//! - `digest`: [`Ledger::digest`], kept up to date by every command so that comparing replicas
//!   costs O(1).
//! - [`codec`]: the versioned wire and disk format of log entries and snapshots, with its
//!   command tag table (described in `docs/formats.md`).
//! - [`features`]: feature flags for rolling upgrades: the registry, what a build supports, and
//!   the enabled flags the ledger replicates.
//! - [`batches`]: catalog batches: a manifest admitted a window at a time behind a replicated
//!   cursor, its counters and its final events.
//! - `invariants`: checks that must hold after every command (used by tests and debug builds).

pub mod batches;
pub mod codec;
pub mod command;
mod config;
mod digest;
mod engine;
pub mod features;
mod handlers;
mod indexes;
mod invariants;
mod planning;
mod queries;
mod records;
pub mod task;

pub use command::{
    Applied, Command, DeadLetterFilter, Effect, Lease, LeaseRef, Outcome, Rejection, SubmitOutcome, WorkerSpec,
};
pub use config::LedgerConfig;
pub use engine::Ledger;
pub use features::{Features, Support, Unsupported};
pub use queries::TaskFilter;
pub use records::{QueueCounts, StateCounts, WorkerRecord};
pub use task::{EventKind, HistoryEvent, OutputFile, Task, TaskResult, TaskState};

/// Milliseconds since the Unix epoch, as stamped by the leader on each command.
pub type Millis = i64;
