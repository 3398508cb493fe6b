//! One leased task, from lease to report: fetch the master once, render it on a slot, upload each
//! output, write `manifest.json`, and turn the outcome into the report the session sends.
//!
//! ```text
//!  memory permit ─▶ fetch master ─▶ Job ─▶ slot thread (render + sha256) ─▶ upload outputs
//!   (bounds masters                 (permit rides along,                    ─▶ manifest.json
//!    held in RAM)                    freed with the bytes)                  ─▶ Completed | Failed
//! ```
//!
//! Every task of a worker runs this as its own async task, so a slow download only holds its own
//! memory permit: other tasks keep fetching and rendering. The permit reserves the master's size
//! in the worker's memory budget (`master_memory_bytes`) before the download starts; the leases
//! bound the count (`slots × (1 + prefetch)`), the budget bounds the bytes. A task the worker cancels before a slot took it simply stops (its future is
//! aborted, or its slot skips it); it produces no report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use kiln_proto::v1;
use kiln_types::EncodeJob;

use crate::budget::MemoryBudget;
use crate::error::TaskError;
use crate::manifest::{self, Manifest};
use crate::metrics::Metrics;
use crate::slots::{Job, Rendered, Stage};
use crate::storage::Storage;
use crate::store::MANIFEST_FILE;

/// What every task of this worker shares.
pub struct Shared {
    pub store: Arc<dyn Storage>,
    /// Into the render threads.
    pub slots: flume::Sender<Job>,
    /// Bytes of masters held in memory, from fetch until the slot lets go of them.
    pub memory: MemoryBudget,
    pub metrics: Arc<Metrics>,
    pub worker_id: String,
    pub max_master_bytes: u64,
    /// A render running longer than this is abandoned (see [`await_render`]).
    pub render_timeout: Duration,
}

/// A task as leased to this worker.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub lease: v1::LeaseRef,
    pub attempt: u32,
    pub job: EncodeJob,
}

/// What a task ends with, for the session to deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Completed(v1::Completed),
    Failed(v1::Failed),
    Released { leases: Vec<v1::LeaseRef>, reason: String },
}

impl Report {
    pub fn failed(lease: v1::LeaseRef, e: &TaskError) -> Self {
        Report::Failed(v1::Failed {
            lease: Some(lease),
            error: e.to_string(),
            permanent: e.is_permanent(),
            timings: Vec::new(),
        })
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The file extension of a GUID's last segment, as a decoder hint.
pub fn extension_hint(guid: &str) -> Option<String> {
    let last = guid.rsplit('/').next()?;
    let (stem, ext) = last.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// Runs one task to its report. `None` means it was cancelled before a slot started it.
pub async fn run(shared: Arc<Shared>, task: Assigned, stage: Arc<Stage>) -> Option<Report> {
    let lease = task.lease;
    match execute(&shared, &task, stage).await {
        Ok(result) => {
            shared.metrics.completed();
            Some(Report::Completed(v1::Completed { lease: Some(lease), result: Some(result) }))
        }
        Err(Stop::Cancelled) => None,
        Err(Stop::Failed(e)) => {
            shared.metrics.failed(e.is_permanent());
            tracing::info!(task = lease.task_id, permanent = e.is_permanent(), error = %e, "task failed");
            Some(Report::failed(lease, &e))
        }
    }
}

/// The render's reply, or `None` once it has run `limit` past its start (time queued for a slot
/// does not count). A Rust thread cannot be stopped from outside: the abandoned render keeps its
/// thread until it ends, so the worker counts it and reports itself unhealthy (`/healthz`) for a
/// restart, while the task is failed and retried elsewhere.
async fn await_render(
    mut reply: oneshot::Receiver<Result<Rendered, TaskError>>,
    stage: &Stage,
    limit: Duration,
) -> Option<Result<Result<Rendered, TaskError>, oneshot::error::RecvError>> {
    loop {
        let wait = match stage.started_at() {
            Some(at) => limit.saturating_sub(at.elapsed()),
            None => Duration::from_secs(1),
        };
        tokio::select! {
            result = &mut reply => return Some(result),
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {
                if stage.started_at().is_some_and(|at| at.elapsed() >= limit) {
                    return None;
                }
            }
        }
    }
}

enum Stop {
    Cancelled,
    Failed(TaskError),
}

impl From<TaskError> for Stop {
    fn from(e: TaskError) -> Self {
        Stop::Failed(e)
    }
}

async fn execute(shared: &Shared, task: &Assigned, stage: Arc<Stage>) -> Result<v1::TaskResult, Stop> {
    let job = &task.job;
    let guid = &job.asset_guid;
    let master_uri = shared.store.master_uri(guid)?;
    let fetch_started = Instant::now();
    let size = shared.store.master_size(guid, shared.max_master_bytes).await?;
    let permit = shared.memory.reserve(size).await.map_err(|_| TaskError::SlotsClosed)?;
    let master = shared.store.fetch(guid, shared.max_master_bytes).await?;
    let fetch_micros = micros(fetch_started);
    let master_bytes = master.len() as u64;
    shared.metrics.fetched(master.len(), fetch_micros);

    let (reply, rendered) = oneshot::channel();
    let render_job = Job {
        master,
        hint: extension_hint(job.asset_guid.as_str()),
        renderers: job.derivative_assets.iter().map(|r| r.to_string()).collect(),
        stage: stage.clone(),
        permit,
        reply,
    };
    shared.slots.send_async(render_job).await.map_err(|_| TaskError::SlotsClosed)?;
    let rendered: Rendered = match await_render(rendered, &stage, shared.render_timeout).await {
        Some(Ok(result)) => result?,
        Some(Err(_)) if stage.is_cancelled() => return Err(Stop::Cancelled),
        Some(Err(_)) => return Err(TaskError::SlotsClosed.into()),
        None => {
            shared.metrics.render_abandoned();
            return Err(TaskError::RenderTimeout { limit: shared.render_timeout }.into());
        }
    };
    for (renderer, _, us) in &rendered.renderers {
        shared.metrics.rendered(renderer, *us);
    }

    // Outputs first, concurrently; the manifest last, so it only ever names files that exist.
    let upload_started = Instant::now();
    let uploads = rendered.files.iter().map(|f| async move {
        let uri = shared.store.put(guid, &f.name, f.bytes.clone()).await?;
        shared.metrics.uploaded(f.bytes.len());
        Ok::<_, TaskError>(manifest::Output {
            renderer: f.renderer.clone(),
            name: f.name.clone(),
            uri,
            sha256: f.sha256.clone(),
            bytes: f.bytes.len() as u64,
            content_type: f.content_type.clone(),
        })
    });
    let outputs = futures::future::try_join_all(uploads).await?;
    let outputs_micros = micros(upload_started);

    let metadata: BTreeMap<String, serde_json::Value> =
        rendered.renderers.iter().map(|(r, meta, _)| (r.clone(), meta.clone())).collect();
    let timings = manifest::Timings {
        fetch_micros,
        decode_micros: rendered.decode_micros,
        upload_micros: outputs_micros,
        renderers: rendered.renderers.iter().map(|(r, _, us)| (r.clone(), *us)).collect(),
    };
    let master_info = manifest::Master { uri: master_uri, bytes: master_bytes, duration_secs: rendered.duration_secs };
    let origin =
        manifest::Origin { job, task_id: task.lease.task_id, attempt: task.attempt, worker: &shared.worker_id };
    let manifest = Manifest::new(origin, master_info, metadata, outputs, timings);
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| TaskError::Upload {
        key: MANIFEST_FILE.to_owned(),
        reason: format!("cannot encode the manifest: {e}"),
    })?;
    shared.metrics.uploaded(body.len());
    let manifest_uri = shared.store.put(guid, MANIFEST_FILE, body.into()).await?;
    let upload_micros = micros(upload_started);
    shared.metrics.upload_time(upload_micros);
    Ok(manifest.task_result(manifest_uri, upload_micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_from_the_last_segment() {
        assert_eq!(extension_hint("rel-1/a.WAV").as_deref(), Some("wav"));
        assert_eq!(extension_hint("rel.1/track").as_deref(), None);
        assert_eq!(extension_hint(".hidden").as_deref(), None);
        assert_eq!(extension_hint("a.flac").as_deref(), Some("flac"));
    }
}
