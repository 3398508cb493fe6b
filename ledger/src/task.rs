//! A task, its lifecycle state and its history.

use kiln_types::{EncodeJob, RendererName, TaskId, WorkerId};
use serde::{Deserialize, Serialize};

use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Queued,
    Leased,
    Succeeded,
    DeadLettered,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::DeadLettered | TaskState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Succeeded => "succeeded",
            TaskState::DeadLettered => "dead_lettered",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub renderer: RendererName,
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
    pub content_type: String,
}

/// What a worker reports for a successful task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Renderer metadata as a JSON object: `{"loudness": {...}, "bpm": {...}}`.
    pub metadata_json: String,
    pub outputs: Vec<OutputFile>,
    /// Microseconds spent in each renderer.
    pub timings: Vec<(RendererName, u64)>,
    pub manifest_uri: String,
    pub fetch_micros: u64,
    pub decode_micros: u64,
    pub upload_micros: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Submitted,
    Leased,
    Succeeded,
    Failed,
    RetryScheduled,
    LeaseExpired,
    Released,
    DeadLettered,
    Requeued,
    Cancelled,
    Revoked,
    /// Leased to an idle worker while its previous holder had not started it (work stealing).
    Stolen,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Leased => "leased",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::RetryScheduled => "retry_scheduled",
            EventKind::LeaseExpired => "lease_expired",
            EventKind::Released => "released",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Requeued => "requeued",
            EventKind::Cancelled => "cancelled",
            EventKind::Revoked => "revoked",
            EventKind::Stolen => "stolen",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at: Millis,
    pub kind: EventKind,
    pub worker: Option<WorkerId>,
    pub attempt: u32,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub job: EncodeJob,
    pub state: TaskState,
    /// Failed attempts so far (lease expiries included, releases not).
    pub attempts: u32,
    /// Increases with every lease; a report carrying an older value is stale.
    pub lease_seq: u32,
    /// Current lease holder, or the last one once terminal.
    pub worker: Option<WorkerId>,
    /// Deadline of the current lease.
    pub lease_expires_at: Option<Millis>,
    /// A queued task is not leasable before this (retry backoff).
    pub ready_at: Millis,
    /// Position among ready tasks of equal priority: assigned each time the task (re)enters its
    /// queue, so queues are FIFO and a retried task goes to the back.
    pub ready_seq: u64,
    pub submitted_at: Millis,
    pub updated_at: Millis,
    pub last_error: Option<String>,
    /// Boxed: most of a big ledger is queued tasks, which have none.
    pub result: Option<Box<TaskResult>>,
    pub history: Vec<HistoryEvent>,
    /// While leased after a steal: the lease it was stolen from. Its holder was told to drop it,
    /// but may have started it already; its completion still counts if it comes first. A task
    /// with this set is never stolen again, so it cannot bounce between workers.
    pub stolen_from: Option<(WorkerId, u32)>,
}

impl Task {
    /// What a history event says, for display. The submission's detail is not stored (it would
    /// repeat the job in every task); it is written out here from the job.
    pub fn event_detail(&self, event: &HistoryEvent) -> String {
        if event.kind == EventKind::Submitted && event.detail.is_empty() {
            let renderers: Vec<&str> = self.job.derivative_assets.iter().map(|r| r.as_str()).collect();
            return format!(
                "queue {} priority {} renderers {}",
                self.job.queue,
                self.job.priority,
                renderers.join(",")
            );
        }
        event.detail.clone()
    }
}
