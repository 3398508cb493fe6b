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
//! Layout:
//! - [`command`]: the commands, their outcomes and the effects the shell must carry out.
//! - [`task`]: a task, its state and its history.
//! - [`features`]: feature flags for rolling upgrades: the registry, what a build supports, and
//!   the enabled flags the ledger replicates.
//! - `state`: the `Ledger` itself and `apply`.
//! - `invariants`: checks that must hold after every command (used by tests and debug builds).

pub mod command;
pub mod features;
mod invariants;
mod state;
pub mod task;

pub use command::{Applied, Command, DeadLetterFilter, Effect, Lease, Outcome, Rejection, SubmitOutcome, WorkerSpec};
pub use features::{Features, Support, Unsupported};
pub use state::{Ledger, LedgerConfig, QueueCounts, StateCounts, TaskFilter, WorkerRecord};
pub use task::{EventKind, HistoryEvent, OutputFile, Task, TaskResult, TaskState};

/// Milliseconds since the Unix epoch, as stamped by the leader on each command.
pub type Millis = i64;
