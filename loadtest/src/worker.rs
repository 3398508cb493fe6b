//! The loadtest's workers: the real `kiln-worker` — its session, leases, slots, drain and outbox —
//! with two edges replaced, so the cluster is proven against the worker that ships and the
//! scheduler stays the thing measured:
//!
//! - [`Sleep`], the render: sleeps for the task's duration on the slot thread (a fixed `--task-ms`,
//!   or a per-task duration divided by the worker's speed in the fleet scenario);
//! - [`NoBytes`], the storage: the "master" is its own GUID, and every upload is dropped.
//!
//! A [`Probe`] observes every worker's session (assignments, acks, revocations, reconnects) and
//! the storage (a task's manifest written is its completion), which is where the reports'
//! latencies come from. Many workers share one process cheaply: render threads are not pinned
//! and the speed is given, not measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use kiln_proto::v1;
use kiln_types::AssetGuid;
use kiln_worker::{Edges, Observer, Render, Storage, TaskError, Worker};
use tokio::sync::watch;

/// How long a task "renders".
#[derive(Debug, Clone)]
pub enum Pace {
    Fixed(Duration),
    /// Milliseconds at 1× per asset id, divided by the worker's speed.
    PerTask {
        durations_ms: Arc<Vec<f64>>,
        speed: f64,
    },
}

/// The asset id of a loadtest GUID (`loadtest/17.wav`, `fleet/17.wav`).
fn asset_id(guid: &str) -> Option<u64> {
    let name = guid.rsplit('/').next()?;
    name.split('.').next()?.parse().ok()
}

/// The render edge: sleeps, renders nothing.
pub struct Sleep {
    pace: Pace,
}

impl Render for Sleep {
    fn render(
        &self,
        master: &[u8],
        _hint: Option<&str>,
        _renderers: &[&str],
    ) -> Result<kiln_render::RenderReport, kiln_render::Error> {
        let took = match &self.pace {
            Pace::Fixed(d) => *d,
            Pace::PerTask { durations_ms, speed } => std::str::from_utf8(master)
                .ok()
                .and_then(asset_id)
                .and_then(|i| durations_ms.get(usize::try_from(i).ok()?))
                .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0 / speed)),
        };
        if !took.is_zero() {
            std::thread::sleep(took);
        }
        Ok(kiln_render::RenderReport { decode_micros: 0, duration_secs: 0.0, outputs: Vec::new() })
    }

    fn names(&self) -> Vec<String> {
        vec!["loudness".into()]
    }
}

/// The storage edge: the master is its GUID's bytes (so the render knows the task), uploads are
/// dropped, and the manifest's upload tells the probe the task is done.
pub struct NoBytes {
    probe: Arc<Probe>,
}

impl Storage for NoBytes {
    fn master_uri(&self, guid: &AssetGuid) -> Result<String, TaskError> {
        Ok(format!("loadtest:{guid}"))
    }

    fn master_size<'a>(&'a self, guid: &'a AssetGuid, _max: u64) -> BoxFuture<'a, Result<u64, TaskError>> {
        Box::pin(async move { Ok(guid.as_str().len() as u64) })
    }

    fn fetch<'a>(&'a self, guid: &'a AssetGuid, _max: u64) -> BoxFuture<'a, Result<Bytes, TaskError>> {
        Box::pin(async move { Ok(Bytes::copy_from_slice(guid.as_str().as_bytes())) })
    }

    fn put<'a>(
        &'a self,
        guid: &'a AssetGuid,
        file: &'a str,
        _bytes: Bytes,
    ) -> BoxFuture<'a, Result<String, TaskError>> {
        Box::pin(async move {
            if file == "manifest.json" {
                if let Some(id) = asset_id(guid.as_str()) {
                    self.probe.reported(id);
                }
            }
            Ok(format!("loadtest:{guid}/{file}"))
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every worker of a run saw, for the report.
#[derive(Default)]
pub struct Probe {
    /// Completions the ledger accepted (acks with `accepted`).
    pub accepted: AtomicU64,
    /// Reports the ledger refused as stale (a stolen or copied task the other worker finished first).
    pub stale: AtomicU64,
    /// Revoked leases whose render had not started, dropped by their worker.
    pub revoked_dropped: AtomicU64,
    /// Sessions opened, first ones included.
    pub sessions: AtomicU64,
    /// request_id → when its submit returned (the task was durable from then on).
    submitted_at: Mutex<HashMap<String, Instant>>,
    /// Durable submit → assignment at a worker, µs.
    lease_latency: Mutex<Vec<u64>>,
    /// Lease → asset id, to find a report's completion time when its ack comes.
    leased_asset: Mutex<HashMap<(u64, u32), u64>>,
    /// Asset id → when its manifest was written (the task done, its report on its way).
    reported_at: Mutex<HashMap<u64, Instant>>,
    /// Completion → its ack, µs.
    ack_latency: Mutex<Vec<u64>>,
    /// The last kill not yet followed by a lease from another node: (when, which node).
    kill: Mutex<Option<(Instant, u64)>>,
    /// Kill of the leader → first lease granted by its successor.
    failovers: Mutex<Vec<Duration>>,
}

impl Probe {
    pub fn submitted(&self, request_ids: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut at = lock(&self.submitted_at);
        for id in request_ids {
            at.insert(id, now);
        }
    }

    /// The chaos task took `node` (the leader) down just now.
    pub fn killed(&self, node: u64) {
        *lock(&self.kill) = Some((Instant::now(), node));
    }

    fn reported(&self, asset: u64) {
        lock(&self.reported_at).insert(asset, Instant::now());
    }

    pub fn lease_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.lease_latency))
    }

    pub fn ack_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.ack_latency))
    }

    pub fn failovers(&self) -> Vec<Duration> {
        std::mem::take(&mut *lock(&self.failovers))
    }
}

impl Observer for Probe {
    fn connected(&self, _node_id: u64) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    fn assigned(&self, node_id: u64, tasks: &[v1::Assignment]) {
        let now = Instant::now();
        {
            let mut kill = lock(&self.kill);
            if let Some((at, killed)) = *kill {
                if killed != node_id {
                    lock(&self.failovers).push(now - at);
                    *kill = None;
                }
            }
        }
        let submitted = lock(&self.submitted_at);
        let mut latencies = lock(&self.lease_latency);
        let mut leased = lock(&self.leased_asset);
        for t in tasks {
            let (Some(lease), Some(job)) = (t.lease, t.job.as_ref()) else { continue };
            if let Some(at) = submitted.get(&job.request_id) {
                latencies.push(now.saturating_duration_since(*at).as_micros() as u64);
            }
            leased.insert((lease.task_id, lease.lease_seq), job.asset_id as u64);
        }
    }

    fn acked(&self, lease: v1::LeaseRef, accepted: bool) {
        let counter = if accepted { &self.accepted } else { &self.stale };
        counter.fetch_add(1, Ordering::Relaxed);
        let asset = lock(&self.leased_asset).remove(&(lease.task_id, lease.lease_seq));
        if let Some(done) = asset.and_then(|a| lock(&self.reported_at).remove(&a)) {
            lock(&self.ack_latency).push(done.elapsed().as_micros() as u64);
        }
    }

    fn revoked(&self, lease: v1::LeaseRef, dropped: bool) {
        if dropped {
            self.revoked_dropped.fetch_add(1, Ordering::Relaxed);
            lock(&self.leased_asset).remove(&(lease.task_id, lease.lease_seq));
        }
    }
}

/// One simulated worker of a run.
pub struct Spec {
    pub id: String,
    /// The worker's certificate, against a cluster that runs TLS.
    pub tls: Option<kiln_config::TlsOptions>,
    pub schedulers: Vec<String>,
    pub slots: u32,
    pub prefetch: u32,
    pub auto_prefetch: bool,
    pub speed: f64,
    pub pace: Pace,
}

impl Spec {
    /// A plaintext worker at full speed whose every task takes `task_ms`.
    pub fn fixed(id: String, schedulers: Vec<String>, slots: u32, prefetch: u32, task_ms: u64) -> Self {
        Self {
            id,
            tls: None,
            schedulers,
            slots,
            prefetch,
            auto_prefetch: false,
            speed: 1.0,
            pace: Pace::Fixed(Duration::from_millis(task_ms)),
        }
    }
}

/// Starts a real worker with the loadtest's edges; it runs until `stop` turns true, then drains
/// (gives back what it has not started, delivers its last reports) and ends.
pub fn spawn(
    spec: Spec,
    probe: Arc<Probe>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let opts = kiln_config::WorkerOptions {
        id: Some(spec.id),
        schedulers: spec.schedulers,
        slots: Some(spec.slots as usize),
        pin_cores: false,
        prefetch: spec.prefetch as usize,
        auto_prefetch: spec.auto_prefetch,
        speed: Some(spec.speed),
        master_memory_bytes: Some(1 << 30),
        drain_grace: Duration::from_secs(2),
        tls: spec.tls,
        ..Default::default()
    };
    let edges = Edges {
        render: Arc::new(Sleep { pace: spec.pace }),
        storage: Arc::new(NoBytes { probe: probe.clone() }),
        observer: Some(probe),
    };
    let worker = Worker::with_edges(opts, edges)?;
    Ok(tokio::spawn(async move {
        worker
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_render_finds_the_task_from_its_guid() {
        assert_eq!(asset_id("loadtest/17.wav"), Some(17));
        assert_eq!(asset_id("fleet/0.wav"), Some(0));
        assert_eq!(asset_id("fleet/x.wav"), None);
    }
}
