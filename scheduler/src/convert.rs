//! Ledger ⇄ wire conversions: the only place in the scheduler that sees both `kiln_ledger` and
//! `kiln_proto`. The gRPC services (`api`, `sessions`) parse with these and answer with these, so a
//! field added to the proto or to a ledger type is mapped here and nowhere else.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln_ledger::{
    Command, DeadLetterFilter, HistoryEvent, Lease, Ledger, OutputFile, QueueCounts, StateCounts, SubmitOutcome, Task,
    TaskFilter, TaskResult, TaskState, WorkerRecord, WorkerSpec,
};
use kiln_proto::v1::{self, scheduler_message::Msg as Down};
use kiln_types::{EncodeJob, InvalidValue, QueueName, RendererName, TaskId, WorkerId};
use tonic::Status;

use crate::limits;
use crate::node::{MemberChange, NodeStatus};

/// A request or report the wire allows but the domain refuses; answered with `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<InvalidValue> for Invalid {
    fn from(e: InvalidValue) -> Self {
        Self(e.to_string())
    }
}

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        Status::invalid_argument(e.0)
    }
}

pub fn state_to_pb(state: TaskState) -> v1::TaskState {
    match state {
        TaskState::Queued => v1::TaskState::Queued,
        TaskState::Leased => v1::TaskState::Leased,
        TaskState::Succeeded => v1::TaskState::Succeeded,
        TaskState::DeadLettered => v1::TaskState::DeadLettered,
        TaskState::Cancelled => v1::TaskState::Cancelled,
    }
}

pub fn state_from_pb(state: v1::TaskState) -> Option<TaskState> {
    match state {
        v1::TaskState::Unspecified => None,
        v1::TaskState::Queued => Some(TaskState::Queued),
        v1::TaskState::Leased => Some(TaskState::Leased),
        v1::TaskState::Succeeded => Some(TaskState::Succeeded),
        v1::TaskState::DeadLettered => Some(TaskState::DeadLettered),
        v1::TaskState::Cancelled => Some(TaskState::Cancelled),
    }
}

pub fn task_to_pb(task: &Task, with_history: bool) -> v1::Task {
    v1::Task {
        id: task.id.0,
        job: Some(kiln_proto::job_to_pb(&task.job)),
        state: state_to_pb(task.state) as i32,
        attempts: task.attempts,
        lease_seq: task.lease_seq,
        worker: task.worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
        submitted_at_ms: task.submitted_at,
        updated_at_ms: task.updated_at,
        ready_at_ms: task.ready_at,
        last_error: task.last_error.clone().unwrap_or_default(),
        result: task.result.as_deref().map(result_to_pb),
        history: if with_history { task.history.iter().map(|e| event_to_pb(task, e)).collect() } else { Vec::new() },
    }
}

fn event_to_pb(task: &Task, e: &HistoryEvent) -> v1::HistoryEvent {
    v1::HistoryEvent {
        at_ms: e.at,
        kind: e.kind.as_str().to_owned(),
        worker: e.worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
        attempt: e.attempt,
        detail: task.event_detail(e),
    }
}

pub fn result_to_pb(r: &TaskResult) -> v1::TaskResult {
    v1::TaskResult {
        metadata_json: r.metadata_json.clone(),
        outputs: r
            .outputs
            .iter()
            .map(|o| v1::OutputFile {
                renderer: o.renderer.to_string(),
                uri: o.uri.clone(),
                sha256: o.sha256.clone(),
                bytes: o.bytes,
                content_type: o.content_type.clone(),
            })
            .collect(),
        timings: r.timings.iter().map(|(n, us)| v1::RendererTiming { renderer: n.to_string(), micros: *us }).collect(),
        manifest_uri: r.manifest_uri.clone(),
        fetch_micros: r.fetch_micros,
        decode_micros: r.decode_micros,
        upload_micros: r.upload_micros,
    }
}

/// A worker's report, validated: renderer names must be well-formed.
pub fn result_from_pb(r: v1::TaskResult) -> Result<TaskResult, kiln_types::InvalidValue> {
    Ok(TaskResult {
        metadata_json: r.metadata_json,
        outputs: r
            .outputs
            .into_iter()
            .map(|o| {
                Ok(OutputFile {
                    renderer: RendererName::new(o.renderer)?,
                    uri: o.uri,
                    sha256: o.sha256,
                    bytes: o.bytes,
                    content_type: o.content_type,
                })
            })
            .collect::<Result<_, kiln_types::InvalidValue>>()?,
        timings: r
            .timings
            .into_iter()
            .map(|t| Ok((RendererName::new(t.renderer)?, t.micros)))
            .collect::<Result<_, kiln_types::InvalidValue>>()?,
        manifest_uri: r.manifest_uri,
        fetch_micros: r.fetch_micros,
        decode_micros: r.decode_micros,
        upload_micros: r.upload_micros,
    })
}

pub fn counts_to_pb(c: &StateCounts) -> v1::StateCounts {
    v1::StateCounts {
        queued: c.queued,
        leased: c.leased,
        succeeded: c.succeeded,
        dead_lettered: c.dead_lettered,
        cancelled: c.cancelled,
        retrying: c.retrying,
    }
}

pub fn worker_to_pb(w: &WorkerRecord) -> v1::WorkerInfo {
    v1::WorkerInfo {
        id: w.spec.id.to_string(),
        hostname: w.spec.hostname.clone(),
        slots: w.spec.slots,
        cores: w.spec.cores,
        memory_bytes: w.spec.memory_bytes,
        speed: f64::from(w.spec.speed_milli) / 1000.0,
        queues: w.spec.queues.iter().map(|q| q.to_string()).collect(),
        leased: w.leased,
        draining: w.draining,
        connected: w.connected,
        last_seen_ms: w.last_seen,
        completed: w.completed,
        failed: w.failed,
        version: w.spec.version.clone(),
        stole: w.stole,
        stolen_from: w.stolen_from,
        busy_slots: 0,
        buffered: 0,
        session: 0,
    }
}

/// A worker as `ListWorkers` shows it: its record and the fenced session it is registered under
/// (0: none, or `fenced_sessions` not enabled).
pub fn listed_worker_to_pb(w: &WorkerRecord, features: &kiln_ledger::Features) -> v1::WorkerInfo {
    v1::WorkerInfo { session: features.session_of(&w.spec.id).unwrap_or(0), ..worker_to_pb(w) }
}

/// What a node reports it supports (its release, log formats and feature flags), with the flags
/// its ledger has enabled.
pub fn support_to_pb(support: &kiln_ledger::Support, features: &kiln_ledger::Features) -> v1::NodeSupport {
    v1::NodeSupport {
        version: crate::upgrade::VERSION.to_owned(),
        min_format: support.min_format,
        max_format: support.max_format,
        features: support.features.iter().cloned().collect(),
        emulated_format: support.emulating.unwrap_or(0),
        enabled_features: features.enabled().map(str::to_owned).collect(),
    }
}

/// A job as submitted; the scheduler's only path from the wire's `EncodeJob` into the ledger.
pub fn job_from_pb(pb: v1::EncodeJob) -> Result<EncodeJob, kiln_proto::ConvertError> {
    kiln_proto::job_from_pb(pb)
}

pub fn submitted_to_pb(results: Vec<SubmitOutcome>) -> v1::SubmitResponse {
    v1::SubmitResponse {
        results: results.into_iter().map(|r| v1::SubmitResult { task_id: r.task.0, created: r.created }).collect(),
    }
}

/// An empty queue name means "any queue".
fn queue_from_pb(queue: &str) -> Result<Option<QueueName>, InvalidValue> {
    match queue {
        "" => Ok(None),
        q => QueueName::new(q).map(Some),
    }
}

pub fn dead_letter_filter_from_pb(f: v1::DeadLetterFilter) -> Result<DeadLetterFilter, InvalidValue> {
    Ok(DeadLetterFilter {
        task_ids: f.task_ids.into_iter().map(TaskId).collect(),
        queue: queue_from_pb(&f.queue)?,
        release_id: f.release_id,
        error_contains: Some(f.error_contains).filter(|s| !s.is_empty()),
        all: f.all,
    })
}

/// A task listing's filter; `limit` is the page size the caller settled on.
pub fn task_filter_from_pb(r: &v1::ListTasksRequest, limit: usize) -> Result<TaskFilter, Invalid> {
    let state = v1::TaskState::try_from(r.state).map_err(|_| Invalid("unknown task state".into()))?;
    Ok(TaskFilter {
        state: state_from_pb(state),
        queue: queue_from_pb(&r.queue)?,
        release_id: r.release_id,
        after: (r.after_id > 0).then_some(TaskId(r.after_id)),
        limit,
    })
}

pub fn queue_to_pb(q: QueueCounts) -> v1::QueueStatus {
    v1::QueueStatus {
        name: q.name.map(|n| n.to_string()).unwrap_or_default(),
        ready: q.ready,
        retrying: q.retrying,
        leased: q.leased,
    }
}

/// `kiln status`: counts, rates, queues and this node's view of the cluster, at `now`.
pub fn status_to_pb(l: &Ledger, node: &NodeStatus, now: i64) -> v1::StatusResponse {
    let (completions, failures) = l.rates_per_minute(now);
    let workers: Vec<_> = l.workers().into_iter().filter(|w| w.connected).collect();
    let counts = l.counts();
    v1::StatusResponse {
        live: Some(counts_to_pb(&counts)),
        total: Some(counts_to_pb(&l.totals())),
        submitted_total: l.submitted_total(),
        workers: workers.len() as u64,
        slots: workers.iter().map(|w| u64::from(w.spec.slots)).sum(),
        running: counts.leased,
        completions_per_minute: completions as f64,
        failures_per_minute: failures as f64,
        queues: l.queues().into_iter().map(queue_to_pb).collect(),
        cluster: Some(cluster_to_pb(node)),
        now_ms: now,
    }
}

pub fn cluster_to_pb(s: &NodeStatus) -> v1::ClusterResponse {
    v1::ClusterResponse {
        node_id: s.id,
        leader_id: s.leader_id,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        members: s
            .members
            .iter()
            .map(|(id, address, matched)| v1::ClusterMember {
                id: *id,
                address: address.clone(),
                matched_index: *matched,
            })
            .collect(),
        leader_address: leader_address(s).unwrap_or_default(),
        role: s.role.to_owned(),
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        log_entries: s.log_entries,
        leader_heard_ms: s.leader_heard_ms,
        ledger_digest: 0,
        disk_bytes: s.disk_bytes,
        support: None,
    }
}

/// The leader's address as this node knows it.
pub fn leader_address(s: &NodeStatus) -> Option<String> {
    s.members.iter().find(|(id, _, _)| *id == s.leader_id).map(|(_, a, _)| a.clone())
}

/// `kiln cluster add|remove`: a member change, with the new member's address checked.
pub fn member_change_from_pb(r: v1::MembershipRequest) -> Result<MemberChange, Invalid> {
    if r.node_id == 0 {
        return Err(Invalid("node_id must be non-zero".into()));
    }
    if r.remove {
        return Ok(MemberChange::Remove { id: r.node_id });
    }
    let address = r.address.trim().to_owned();
    if tonic::transport::Endpoint::from_shared(address.clone()).is_err() || !address.contains("://") {
        return Err(Invalid(format!(
            "node {} needs an address like http://10.0.0.4:7450 (got {address:?})",
            r.node_id
        )));
    }
    Ok(MemberChange::Add { id: r.node_id, address })
}

// ---- worker sessions ----

/// A lease as the wire names it: `(task_id, lease_seq)`.
pub type LeaseKey = (u64, u32);

pub fn lease_keys(leases: &[v1::LeaseRef]) -> BTreeSet<LeaseKey> {
    leases.iter().map(|l| (l.task_id, l.lease_seq)).collect()
}

/// What a worker says about itself when it opens a session. No queues means the default queue.
/// Slots are clamped to `1..=MAX_SLOTS`, speed to `0..=1000`, labels to [`limits::MAX_LABEL`] bytes.
pub fn spec_from_hello(hello: v1::Hello) -> Result<WorkerSpec, InvalidValue> {
    let queues = if hello.queues.is_empty() {
        vec![QueueName::default()]
    } else {
        hello.queues.into_iter().map(QueueName::new).collect::<Result<_, _>>()?
    };
    Ok(WorkerSpec {
        id: WorkerId::new(hello.worker_id)?,
        hostname: limits::cut(hello.hostname, limits::MAX_LABEL),
        slots: hello.slots.clamp(1, limits::MAX_SLOTS),
        cores: hello.cores,
        memory_bytes: hello.memory_bytes,
        speed_milli: (hello.speed.clamp(0.0, 1000.0) * 1000.0) as u32,
        queues,
        version: limits::cut(hello.version, limits::MAX_LABEL),
    })
}

fn down(msg: Down) -> v1::SchedulerMessage {
    v1::SchedulerMessage { msg: Some(msg) }
}

pub fn welcome_to_pb(lease_ttl: Duration, heartbeat_interval: Duration, node_id: u64) -> v1::SchedulerMessage {
    down(Down::Welcome(v1::Welcome {
        lease_ttl_ms: u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX),
        heartbeat_interval_ms: u64::try_from(heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
        node_id,
    }))
}

pub fn assign_to_pb(leases: Vec<Lease>) -> v1::SchedulerMessage {
    let tasks = leases
        .into_iter()
        .map(|l| v1::Assignment {
            lease: Some(v1::LeaseRef { task_id: l.task.0, lease_seq: l.lease_seq }),
            job: Some(kiln_proto::job_to_pb(&l.job)),
            attempt: l.attempt,
        })
        .collect();
    down(Down::Assign(v1::Assign { tasks }))
}

pub fn revoke_to_pb(task: TaskId, lease_seq: u32, reason: String) -> v1::SchedulerMessage {
    down(Down::Revoke(v1::Revoke { leases: vec![v1::LeaseRef { task_id: task.0, lease_seq }], reason }))
}

/// The scheduler's word that a report is durable (or was stale and ignored).
pub fn ack_to_pb(lease: v1::LeaseRef, accepted: bool) -> v1::SchedulerMessage {
    down(Down::Ack(v1::Ack { lease: Some(lease), accepted }))
}

/// A worker's report of one lease, as the command that records it.
#[derive(Debug)]
pub struct Report {
    pub lease: v1::LeaseRef,
    pub command: Command,
    /// A completion's result as the worker sent it, for the latency and byte KPIs.
    pub result: Option<v1::TaskResult>,
}

/// A completion becomes `Complete`; one whose result cannot be stored (malformed, or beyond
/// [`limits`]) becomes a permanent `Fail` saying why, so the task does not wait for a report that
/// will never be valid and the worker's report is still answered.
pub fn completed_from_pb(worker: &WorkerId, c: v1::Completed) -> Option<Report> {
    let lease = c.lease?;
    let reported = c.result.unwrap_or_default();
    let refused = |why: String| Command::Fail {
        task: TaskId(lease.task_id),
        lease_seq: lease.lease_seq,
        worker: worker.clone(),
        error: limits::cut(format!("the worker's result was refused: {why}"), limits::MAX_ERROR),
        permanent: true,
    };
    if let Some(why) = limits::oversized(&reported) {
        return Some(Report { lease, command: refused(why), result: None });
    }
    let command = match result_from_pb(reported.clone()) {
        Ok(result) => Command::Complete {
            task: TaskId(lease.task_id),
            lease_seq: lease.lease_seq,
            worker: worker.clone(),
            result,
        },
        Err(e) => return Some(Report { lease, command: refused(e.to_string()), result: None }),
    };
    Some(Report { lease, command, result: Some(reported) })
}

pub fn failed_from_pb(worker: &WorkerId, f: v1::Failed) -> Option<Report> {
    let lease = f.lease?;
    let command = Command::Fail {
        task: TaskId(lease.task_id),
        lease_seq: lease.lease_seq,
        worker: worker.clone(),
        error: limits::cut(f.error, limits::MAX_ERROR),
        permanent: f.permanent,
    };
    Some(Report { lease, command, result: None })
}

pub fn released_from_pb(worker: &WorkerId, r: &v1::Released) -> Command {
    let leases = r.leases.iter().map(|l| (TaskId(l.task_id), l.lease_seq)).collect();
    Command::Release { worker: worker.clone(), leases, reason: limits::cut(r.reason.clone(), limits::MAX_LABEL) }
}
