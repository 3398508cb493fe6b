//! The batch RPCs' work: turning a `BatchSpec` request into the ledger's (checking that the
//! source is readable before anything is replicated), and a batch into its wire form with a rate
//! and an ETA.

use kiln_config::BatchOptions;
use kiln_ledger::batches::{BadLinePolicy, BatchAction, BatchRecord, BatchSpec, BatchState, SourceFormat};
use kiln_ledger::features::BATCHES;
use kiln_ledger::{Command, DeadLetterFilter, Outcome, Support};
use kiln_proto::v1;
use tonic::Status;

use super::source::Source;
use crate::handle::Handle;
use crate::status::{from_propose, from_rejection};

/// Most characters of a batch name.
const MAX_NAME: usize = 200;

/// The ledger's spec for a request, with the scheduler's defaults filled in.
pub(crate) async fn spec_from_pb(pb: v1::BatchSpec, opts: &BatchOptions) -> Result<BatchSpec, Status> {
    let source = pb.source.trim().to_owned();
    if source.is_empty() {
        return Err(Status::invalid_argument("a batch needs a source: the path or URL of its manifest"));
    }
    let format = match pb.format.trim().to_ascii_lowercase().as_str() {
        "jsonl" | "json" => SourceFormat::Jsonl,
        "csv" => SourceFormat::Csv,
        "" if source.to_ascii_lowercase().ends_with(".csv") => SourceFormat::Csv,
        "" => SourceFormat::Jsonl,
        other => return Err(Status::invalid_argument(format!("format `{other}`: use jsonl or csv"))),
    };
    let on_bad_line = match pb.on_bad_line.trim() {
        "" | "stop" => BadLinePolicy::Stop,
        "skip" => BadLinePolicy::Skip,
        other => return Err(Status::invalid_argument(format!("on_bad_line `{other}`: use stop or skip"))),
    };
    if !pb.queue.is_empty() {
        kiln_types::QueueName::new(pb.queue.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let webhook = match pb.webhook.trim() {
        "" => None,
        url => {
            let parsed = url::Url::parse(url).map_err(|e| Status::invalid_argument(format!("webhook {url}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Status::invalid_argument(format!("webhook {url}: use an http or https URL")));
            }
            Some(url.to_owned())
        }
    };
    let allowed = &opts.allowed_sources;
    if !allowed.is_empty() && !allowed.iter().any(|prefix| source.starts_with(prefix.as_str())) {
        return Err(Status::permission_denied(format!(
            "{source} is outside batches.allowed_sources ({})",
            allowed.join(", ")
        )));
    }
    if source.split('/').any(|segment| segment == "..") {
        return Err(Status::invalid_argument(format!("{source}: a source may not contain `..`")));
    }
    // Refused now, with the reason, rather than retried by the leader forever.
    let opened = Source::open(&source).map_err(|e| Status::invalid_argument(e.to_string()))?;
    opened.size().await.map_err(|e| Status::failed_precondition(e.to_string()))?;
    let name = match pb.name.trim() {
        "" => source.rsplit('/').next().unwrap_or(&source).to_owned(),
        name => name.chars().take(MAX_NAME).collect(),
    };
    let request_id = match pb.request_id.trim() {
        "" => uuid::Uuid::new_v4().to_string(),
        id => id.to_owned(),
    };
    Ok(BatchSpec {
        name,
        source,
        format,
        queue: pb.queue,
        priority: pb.priority,
        window: if pb.window == 0 { opts.window } else { pb.window },
        on_bad_line,
        webhook,
        request_id,
    })
}

/// Creates the batch, enabling the `batches` feature first when every member supports it.
pub(crate) async fn submit(handle: &Handle, support: &Support, spec: BatchSpec) -> Result<u64, Status> {
    let enabled = handle.read(|l, _| l.features().is_enabled(BATCHES)).await.map_err(from_propose)?;
    if !enabled {
        crate::upgrade::enable(handle, support, BATCHES).await?;
        tracing::info!("the first batch enabled the `batches` feature");
    }
    match handle.propose(Command::CreateBatch { spec }).await.map_err(from_propose)?.map_err(from_rejection)? {
        Outcome::BatchCreated { batch, .. } => Ok(batch),
        other => Err(Status::internal(format!("unexpected ledger outcome: {other:?}"))),
    }
}

pub(crate) fn action_from_pb(action: &str) -> Result<BatchAction, Status> {
    match action.trim() {
        "pause" => Ok(BatchAction::Pause),
        "resume" => Ok(BatchAction::Resume),
        "cancel" => Ok(BatchAction::Cancel),
        other => Err(Status::invalid_argument(format!("action `{other}`: use pause, resume or cancel"))),
    }
}

/// The batch's dead letters, as a filter naming them.
pub(crate) fn dead_letters(l: &kiln_ledger::Ledger, batch: u64) -> Option<DeadLetterFilter> {
    l.batches().get(batch)?;
    let task_ids = l
        .batches()
        .tasks_of(batch)
        .filter(|id| l.task(*id).is_some_and(|t| t.state == kiln_ledger::TaskState::DeadLettered))
        .collect();
    Some(DeadLetterFilter { task_ids, ..DeadLetterFilter::default() })
}

/// The batch as clients see it, at leader time `now`.
pub(crate) fn to_pb(b: &BatchRecord, now: i64) -> v1::Batch {
    let c = b.counts;
    let finished = b.finished_tasks();
    let elapsed_ms = b.finished_at.unwrap_or(now).saturating_sub(b.created_at).max(1);
    let rate = finished as f64 * 1000.0 / elapsed_ms as f64;
    // Lines in the source: known once read to the end, estimated from the bytes read so far.
    let estimated_lines = if b.source_done || b.cursor.offset == 0 {
        b.cursor.line
    } else {
        (b.cursor.line as f64 * b.source_bytes as f64 / b.cursor.offset as f64).round() as u64
    };
    // Every line becomes a finished task, a bad line or a duplicate.
    let settled = finished + c.bad_lines + c.duplicates;
    let eta_ms = match b.state {
        BatchState::Done | BatchState::Cancelled | BatchState::Failed => 0,
        _ if rate <= 0.0 || estimated_lines == 0 => -1,
        _ => (estimated_lines.saturating_sub(settled) as f64 / rate * 1000.0) as i64,
    };
    v1::Batch {
        id: b.id,
        spec: Some(v1::BatchSpec {
            name: b.spec.name.clone(),
            source: b.spec.source.clone(),
            format: match b.spec.format {
                SourceFormat::Jsonl => "jsonl".into(),
                SourceFormat::Csv => "csv".into(),
            },
            queue: b.spec.queue.clone(),
            priority: b.spec.priority,
            window: b.spec.window,
            on_bad_line: match b.spec.on_bad_line {
                BadLinePolicy::Stop => "stop".into(),
                BadLinePolicy::Skip => "skip".into(),
            },
            webhook: b.spec.webhook.clone().unwrap_or_default(),
            request_id: b.spec.request_id.clone(),
        }),
        state: b.state.as_str().into(),
        admitted: c.admitted,
        succeeded: c.succeeded,
        failed: c.failed,
        dead_lettered: c.dead_lettered,
        cancelled: c.cancelled,
        bad_lines: c.bad_lines,
        duplicates: c.duplicates,
        live: b.live,
        line: b.cursor.line,
        offset: b.cursor.offset,
        source_bytes: b.source_bytes,
        source_done: b.source_done,
        first_bad_lines: b.bad_lines.iter().map(|l| v1::BadLine { line: l.line, reason: l.reason.clone() }).collect(),
        error: b.error.clone().unwrap_or_default(),
        created_at_ms: b.created_at,
        updated_at_ms: b.updated_at,
        finished_at_ms: b.finished_at.unwrap_or(0),
        events: b.events,
        notified: b.notified,
        rate_per_second: rate,
        eta_ms,
        estimated_lines,
    }
}
