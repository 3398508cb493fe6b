//! Render slots: one OS thread per slot, optionally pinned to its own core, fed by one channel.
//!
//! Rendering is seconds of blocking CPU work per master, so it never runs on the async runtime.
//! Tasks send a [`Job`] (the master's bytes and the renderer names) into a shared channel; the first
//! idle thread takes it, renders, hashes every output file (sha256 is CPU work too) and answers on
//! the job's own reply channel. A job carries the memory permit of its master, so the permit is
//! returned exactly when the thread lets go of the bytes.
//!
//! ```text
//!  task ──Job──▶ flume ──▶ slot 0 (core 0) ─┐
//!  task ──Job──▶  MPMC ──▶ slot 1 (core 1) ─┼──reply──▶ task (upload, report)
//!                     └──▶ slot n (core n) ─┘
//! ```
//!
//! A job is *started* once a thread takes it: [`Stage`] records that with one compare-and-swap, and
//! the worker's revoke and drain paths use the same atomic to cancel a job that has not started,
//! so exactly one side wins and a cancelled job is never rendered.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use kiln_render::RenderReport;

use crate::error::{Error, TaskError};
use crate::metrics::Metrics;

/// What runs on a slot thread. [`kiln_render::Pipeline`] in production; tests substitute their own
/// to control timing and failures.
pub trait Render: Send + Sync + 'static {
    /// Decodes `master` once and runs `renderers` over it. Blocking.
    fn render(&self, master: &[u8], hint: Option<&str>, renderers: &[&str])
        -> Result<RenderReport, kiln_render::Error>;

    /// Renderer names this implementation offers (sent in `Hello`).
    fn names(&self) -> Vec<String>;
}

impl Render for kiln_render::Pipeline {
    fn render(
        &self,
        master: &[u8],
        hint: Option<&str>,
        renderers: &[&str],
    ) -> Result<RenderReport, kiln_render::Error> {
        self.run(master, hint, renderers)
    }

    fn names(&self) -> Vec<String> {
        kiln_render::available_renderers().into_iter().map(str::to_owned).collect()
    }
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;

/// Whether a task's render has started (and when); shared by the task, its slot thread and the
/// worker loop.
#[derive(Debug, Default)]
pub struct Stage {
    state: AtomicU8,
    /// When a thread claimed the job: the render deadline counts from here, not from the queue.
    started_at: std::sync::OnceLock<Instant>,
}

impl Stage {
    /// Claims the job for rendering. False if it was cancelled first.
    pub fn start(&self) -> bool {
        let claimed = self.state.compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if claimed {
            let _ = self.started_at.set(Instant::now());
        }
        claimed
    }

    /// When the render began, if it has.
    pub fn started_at(&self) -> Option<Instant> {
        self.started_at.get().copied()
    }

    /// Cancels the job if no thread has started it. False if rendering already began.
    pub fn cancel(&self) -> bool {
        self.state.compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Neither started nor cancelled: fetching or waiting for a slot (what stealing may take).
    pub fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    #[cfg(test)]
    pub fn is_started(&self) -> bool {
        self.state.load(Ordering::Acquire) == STARTED
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }
}

/// One master to render.
pub struct Job {
    pub master: Bytes,
    /// The file extension of the master, if it has one.
    pub hint: Option<String>,
    pub renderers: Vec<String>,
    pub stage: Arc<Stage>,
    /// The master's share of the memory budget, returned when the thread drops the job.
    pub permit: OwnedSemaphorePermit,
    pub reply: oneshot::Sender<Result<Rendered, TaskError>>,
}

/// One output file, hashed.
#[derive(Debug, Clone)]
pub struct File {
    pub renderer: String,
    pub name: String,
    pub content_type: String,
    pub bytes: Bytes,
    pub sha256: String,
}

/// What a slot hands back: metadata and timing per renderer, and every file to upload.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub decode_micros: u64,
    pub duration_secs: f64,
    /// `(renderer, metadata, micros)` in the order the renderers ran.
    pub renderers: Vec<(String, serde_json::Value, u64)>,
    pub files: Vec<File>,
}

impl Rendered {
    fn from_report(report: RenderReport) -> Self {
        let mut renderers = Vec::with_capacity(report.outputs.len());
        let mut files = Vec::new();
        for out in report.outputs {
            for f in out.rendered.files {
                let sha256 = hex::encode(Sha256::digest(&f.bytes));
                files.push(File {
                    renderer: out.renderer.clone(),
                    name: f.name,
                    content_type: f.content_type.to_owned(),
                    bytes: Bytes::from(f.bytes),
                    sha256,
                });
            }
            renderers.push((out.renderer, out.rendered.metadata, out.micros));
        }
        Self { decode_micros: report.decode_micros, duration_secs: report.duration_secs, renderers, files }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

fn render_one(renderer: &dyn Render, job: Job, metrics: &Metrics) {
    let Job { master, hint, renderers, stage, permit, reply } = job;
    if !stage.start() {
        return; // cancelled while queued: the worker already gave the lease back
    }
    metrics.slot_started();
    let started = Instant::now();
    let names: Vec<&str> = renderers.iter().map(String::as_str).collect();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| renderer.render(&master, hint.as_deref(), &names)));
    drop(master);
    drop(permit);
    let result = match outcome {
        Ok(Ok(report)) => Ok(Rendered::from_report(report)),
        Ok(Err(e)) => Err(TaskError::Render(e)),
        Err(payload) => Err(TaskError::Panicked(panic_message(payload.as_ref()))),
    };
    metrics.slot_finished(started.elapsed());
    let _ = reply.send(result);
}

/// The render threads. Dropping every sender of the channel stops them after their current job.
pub struct Slots {
    tx: flume::Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

impl Slots {
    pub fn start(count: usize, pin: bool, renderer: Arc<dyn Render>, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let (tx, rx) = flume::unbounded::<Job>();
        let cores = if pin { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        if pin && cores.is_empty() {
            tracing::warn!("cannot list CPU cores; render threads are not pinned");
        }
        let mut threads = Vec::with_capacity(count);
        for slot in 0..count {
            let (rx, renderer, metrics) = (rx.clone(), renderer.clone(), metrics.clone());
            // Linux numbers one hyperthread of every physical core first, so slot i on CPU i
            // gives each slot its own physical core while slots ≤ physical cores.
            let core = (!cores.is_empty()).then(|| cores[slot % cores.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("kiln-slot-{slot}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(slot, core = core.id, "cannot pin render thread");
                        }
                    }
                    while let Ok(job) = rx.recv() {
                        render_one(renderer.as_ref(), job, &metrics);
                    }
                })
                .map_err(|source| Error::Thread { slot, source })?;
            threads.push(thread);
        }
        Ok(Self { tx, threads })
    }

    /// Where tasks send jobs.
    pub fn sender(&self) -> flume::Sender<Job> {
        self.tx.clone()
    }

    /// Closes the channel and waits for the threads, which finish their current job first. Call
    /// only when no render is running or the wait is acceptable: a thread cannot be interrupted.
    pub fn join(self) {
        drop(self.tx);
        for t in self.threads {
            if t.join().is_err() {
                tracing::warn!("a render thread panicked outside a render");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_render::{OutputFile, RendererOutput};
    use tokio::sync::Semaphore;

    struct Fake;

    impl Render for Fake {
        fn render(
            &self,
            master: &[u8],
            _hint: Option<&str>,
            renderers: &[&str],
        ) -> Result<RenderReport, kiln_render::Error> {
            if master == b"panic" {
                panic!("boom");
            }
            if master == b"bad" {
                return Err(kiln_render::Error::Undecodable("not audio".into()));
            }
            let outputs = renderers
                .iter()
                .map(|r| RendererOutput {
                    renderer: (*r).to_owned(),
                    rendered: kiln_render::Rendered {
                        metadata: serde_json::json!({ "len": master.len() }),
                        files: vec![OutputFile {
                            name: format!("{r}.txt"),
                            content_type: "text/plain",
                            bytes: b"abc".to_vec(),
                        }],
                    },
                    micros: 7,
                })
                .collect();
            Ok(RenderReport { decode_micros: 3, duration_secs: 1.5, outputs })
        }

        fn names(&self) -> Vec<String> {
            vec!["fake".into()]
        }
    }

    async fn render(slots: &Slots, master: &'static [u8], stage: Arc<Stage>) -> Option<Result<Rendered, TaskError>> {
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.expect("permit");
        let (reply, rx) = oneshot::channel();
        let job = Job {
            master: Bytes::from_static(master),
            hint: None,
            renderers: vec!["loudness".into()],
            stage,
            permit,
            reply,
        };
        slots.sender().send_async(job).await.expect("send");
        rx.await.ok()
    }

    #[tokio::test]
    async fn renders_hashes_and_survives_panics() {
        let metrics = Arc::new(Metrics::new(2));
        let slots = Slots::start(2, false, Arc::new(Fake), metrics.clone()).expect("start");
        let ok = render(&slots, b"RIFF", Arc::default()).await.expect("reply").expect("ok");
        assert_eq!(ok.files.len(), 1);
        assert_eq!(ok.files[0].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(ok.renderers[0].0, "loudness");
        let bad = render(&slots, b"bad", Arc::default()).await.expect("reply").expect_err("bad");
        assert!(bad.is_permanent(), "{bad}");
        let panicked = render(&slots, b"panic", Arc::default()).await.expect("reply").expect_err("panic");
        assert!(matches!(&panicked, TaskError::Panicked(m) if m == "boom"), "{panicked}");
        assert!(!panicked.is_permanent());
        // The threads are still there after a panic.
        assert!(render(&slots, b"RIFF", Arc::default()).await.expect("reply").is_ok());
        // A cancelled job is dropped without rendering.
        let stage = Arc::new(Stage::default());
        assert!(stage.cancel());
        assert!(render(&slots, b"RIFF", stage.clone()).await.is_none());
        assert!(!stage.start() && stage.is_cancelled());
        assert_eq!(metrics.busy_slots(), 0);
        tokio::task::spawn_blocking(move || slots.join()).await.expect("join");
    }

    #[test]
    fn stage_is_claimed_once() {
        let s = Stage::default();
        assert!(s.start());
        assert!(!s.cancel());
        assert!(s.is_started());
    }
}
