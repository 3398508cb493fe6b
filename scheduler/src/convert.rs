//! Ledger ⇄ wire conversions: the only place that sees both `kiln_ledger` and `kiln_proto`.

use kiln_ledger::{HistoryEvent, OutputFile, StateCounts, Task, TaskResult, TaskState, WorkerRecord};
use kiln_proto::v1;
use kiln_types::RendererName;

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
