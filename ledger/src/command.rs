//! Commands the ledger accepts, and what applying one produces.

use kiln_types::{EncodeJob, QueueName, RequestId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::batches::{BadLine, BatchAction, BatchSpec, Cursor};
use crate::task::TaskResult;

/// A worker as it introduces itself on its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub id: WorkerId,
    pub hostname: String,
    pub slots: u32,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Relative speed in thousandths of the reference core, so the ledger stays free of floats.
    pub speed_milli: u32,
    pub queues: Vec<QueueName>,
    pub version: String,
}

/// Selects dead-lettered tasks. An empty filter selects nothing unless `all` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterFilter {
    pub task_ids: Vec<TaskId>,
    pub queue: Option<QueueName>,
    pub release_id: Option<i64>,
    pub error_contains: Option<String>,
    pub all: bool,
}

/// One replicated state change. The leader stamps `now` on it; `apply` never reads a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Admit jobs. Idempotent per `request_id`. All-or-nothing against the live-task limit.
    Submit {
        jobs: Vec<EncodeJob>,
    },
    /// A worker opened a session (or reconnected). Re-registering updates the record.
    RegisterWorker {
        spec: WorkerSpec,
    },
    /// A worker's session ended. Its leases stay until they expire or it reconnects.
    DisconnectWorker {
        worker: WorkerId,
    },
    /// Stop leasing to this worker (SIGTERM drain).
    DrainWorker {
        worker: WorkerId,
    },
    /// Lease up to `max` ready tasks from the worker's queues: highest priority first, then FIFO.
    Lease {
        worker: WorkerId,
        max: u32,
    },
    /// Work stealing: lease these tasks, held by other workers and not started there, to the idle
    /// `thief`. Chosen by [`crate::Ledger::steal_plan`]; each is re-checked here (still held
    /// under that lease, never stolen before, in one of the thief's queues) and skipped if not.
    /// The previous holder gets a `Revoke`; if it had started anyway, the first completion counts.
    Steal {
        thief: WorkerId,
        tasks: Vec<(TaskId, u32)>,
    },
    /// Extend every lease the worker holds to `now + lease_ttl` (coalesced heartbeats).
    Renew {
        worker: WorkerId,
    },
    Complete {
        task: TaskId,
        lease_seq: u32,
        worker: WorkerId,
        result: TaskResult,
    },
    Fail {
        task: TaskId,
        lease_seq: u32,
        worker: WorkerId,
        error: String,
        permanent: bool,
    },
    /// Give leases back without counting an attempt (drain, unstarted prefetch).
    Release {
        worker: WorkerId,
        leases: Vec<(TaskId, u32)>,
        reason: String,
    },
    /// Expire every lease whose deadline is at or before `now`; each counts as a failed attempt.
    ExpireLeases,
    /// After a leader change: no live lease may expire before `now + grace_ms`.
    GraceLeases {
        grace_ms: i64,
    },
    Cancel {
        task: TaskId,
    },
    RequeueDeadLetters {
        filter: DeadLetterFilter,
    },
    PurgeDeadLetters {
        filter: DeadLetterFilter,
    },
    /// Drop terminal tasks older than the GC TTL, keeping their counts.
    CollectGarbage,
    /// The tail of a batch: lease a backup copy of these tasks, which slower workers are still
    /// rendering, to the idle `thief`. Chosen by [`crate::Ledger::backup_plan`] and re-checked like
    /// a `Steal`; the previous holder keeps rendering (it is not told), and whichever completion
    /// comes first counts. A task is copied at most once, and never stolen after that.
    Backup {
        thief: WorkerId,
        tasks: Vec<(TaskId, u32)>,
    },
    // Log format 2 (see `crate::features`): appended, so every earlier variant keeps its tag.
    /// Turn a feature flag on for good (idempotent). Proposed only once every member supports it.
    EnableFeature {
        name: String,
    },
    /// `fenced_sessions`: `RegisterWorker` that gives the session an identity
    /// ([`Outcome::SessionOpened`]), which its close must quote.
    OpenSession {
        spec: WorkerSpec,
    },
    /// `fenced_sessions`: `DisconnectWorker` that only counts if `session` is still the worker's
    /// current one, so the late close of an old stream cannot disconnect a reconnected worker.
    CloseSession {
        worker: WorkerId,
        session: u64,
    },
    // Log format 3 (feature `batches`, see `crate::batches`).
    /// Create a batch ([`Outcome::BatchCreated`]); idempotent per `spec.request_id`.
    CreateBatch {
        spec: BatchSpec,
    },
    /// Admit the next lines of a running batch's source: `jobs` (each with its line number) and
    /// the `bad_lines` between `from` and `to`. Applied only if `from` is the batch's committed
    /// cursor, so lines are admitted exactly once across leader changes; the cursor moves to
    /// `to`. `end`: the source has no more lines. `source_bytes`: its size, for progress.
    AdmitBatch {
        batch: u64,
        from: Cursor,
        to: Cursor,
        jobs: Vec<(u64, EncodeJob)>,
        bad_lines: Vec<BadLine>,
        end: bool,
        source_bytes: u64,
    },
    /// Pause, resume or cancel a batch. Cancel also cancels the batch's tasks not yet leased.
    BatchControl {
        batch: u64,
        action: BatchAction,
    },
    /// The notification of the batch's `event`-th final state was delivered (or given up on).
    BatchNotified {
        batch: u64,
        event: u32,
    },
}

/// One lease, as a report names it: the task, the lease's sequence number and its holder. A
/// report about any other lease of the task is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    pub task: TaskId,
    pub lease_seq: u32,
    pub worker: WorkerId,
}

/// Why a command was refused. Deterministic: every replica refuses the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("the ledger is full: {live} live tasks, limit {limit}; retry when tasks complete")]
    Full { live: u64, limit: u64 },
    #[error("no task {0}")]
    UnknownTask(TaskId),
    #[error("no task with request_id {0}")]
    UnknownRequest(RequestId),
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    #[error("task {task} is already {state}")]
    AlreadyTerminal { task: TaskId, state: String },
    #[error("request_id {request_id} is used by task {task} with a different job")]
    ConflictingRequest { request_id: RequestId, task: TaskId },
    #[error("no feature named `{0}` (see `kiln cluster features`)")]
    UnknownFeature(String),
    #[error("{command} needs feature `{feature}`, which is not enabled")]
    FeatureDisabled { feature: String, command: String },
    #[error("no batch {0}")]
    UnknownBatch(u64),
    #[error("batch {batch} is {state}")]
    BatchNotRunning { batch: u64, state: String },
    #[error("batch {batch} has read to {committed}, not {proposed}: these lines were already admitted")]
    StaleCursor { batch: u64, committed: Cursor, proposed: Cursor },
    #[error("batch {batch} holds {live} live tasks of a window of {window}; {more} more do not fit")]
    BatchWindowFull { batch: u64, live: u64, window: u64, more: u64 },
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitOutcome {
    pub task: TaskId,
    /// False when the request_id was already known: the existing task is returned.
    pub created: bool,
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub task: TaskId,
    pub lease_seq: u32,
    /// 1 on the first try.
    pub attempt: u32,
    pub job: EncodeJob,
    /// How long the task waited in its queue (since submission, requeue or release; a retry's
    /// backoff included) before this lease: the "lease latency" operators watch. 0 for a steal.
    pub waited_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Submitted(Vec<SubmitOutcome>),
    Leased(Vec<Lease>),
    /// Complete / Fail / Release: `accepted` is false for a stale lease (ignored, changes nothing).
    Reported {
        accepted: bool,
    },
    /// Requeue, purge, expire, GC, renew: how many tasks were affected.
    Count(u64),
    Done,
    /// OpenSession: the identity the worker's close must quote.
    SessionOpened {
        session: u64,
    },
    /// CreateBatch: the batch, and false when the request id named an existing one.
    BatchCreated {
        batch: u64,
        created: bool,
    },
}

/// Something the shell must do because of a command (only the leader acts on effects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Tell the worker to drop this task (cancelled, expired, stolen).
    Revoke { worker: WorkerId, task: TaskId, lease_seq: u32, reason: String },
    /// Tasks became ready in these queues: wake idle workers.
    TasksReady { queues: Vec<QueueName> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Result<Outcome, Rejection>,
    pub effects: Vec<Effect>,
}
