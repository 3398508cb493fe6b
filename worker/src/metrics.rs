//! The worker's counters, gauges and histograms, served on `/metrics` through
//! `prometheus-client`.
//!
//! Updated where things happen (slot threads, tasks, the session) and read at scrape time; no
//! per-task labels. The only labels are the renderer name (the built-ins plus `other`) and the
//! failure class. Every series is named `kiln_worker_…`: the scheduler's are `kiln_scheduler_…`,
//! so `sum(kiln_worker_slots)` is the fleet's slots whatever else is scraped. Rates are left to
//! `rate()` in PromQL; nothing here is a per-minute figure.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use kiln_proto::metrics::{Histogram, RendererHistograms};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Class {
    permanent,
    transient,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: Class,
}

#[derive(Debug)]
pub struct Metrics {
    slots: Gauge,
    busy_slots: Gauge,
    held: Gauge,
    /// Tasks held ahead of each slot: the configured prefetch, or the measured one.
    prefetch: Gauge,
    /// Leases not started yet (prefetched), as of the latest heartbeat.
    buffered: Gauge,
    completed: Counter,
    failed: Family<ClassLabel, Counter>,
    released: Counter,
    revoked: Counter,
    bytes_fetched: Counter,
    bytes_uploaded: Counter,
    slot_busy_seconds: Counter<f64, AtomicU64>,
    sessions_opened: Counter,
    /// Renders past `render_timeout`: each still holds its thread (it cannot be stopped).
    renders_abandoned: Counter,
    connected: Gauge,
    draining: Gauge,
    /// Per renderer: how long each run took.
    render: RendererHistograms,
    /// Per task: reading the master, and writing its derivatives and manifest.
    fetch: Histogram,
    upload: Histogram,
    registry: Registry,
}

impl Metrics {
    pub fn new(slots: usize) -> Self {
        let mut m = Self {
            slots: Gauge::default(),
            busy_slots: Gauge::default(),
            held: Gauge::default(),
            prefetch: Gauge::default(),
            buffered: Gauge::default(),
            completed: Counter::default(),
            failed: Family::default(),
            released: Counter::default(),
            revoked: Counter::default(),
            bytes_fetched: Counter::default(),
            bytes_uploaded: Counter::default(),
            slot_busy_seconds: Counter::default(),
            sessions_opened: Counter::default(),
            renders_abandoned: Counter::default(),
            connected: Gauge::default(),
            draining: Gauge::default(),
            render: RendererHistograms::default(),
            fetch: Histogram::default(),
            upload: Histogram::default(),
            registry: Registry::default(),
        };
        m.slots.set(i64::try_from(slots).unwrap_or(i64::MAX));
        // Both classes exist from the start, at zero, so `rate()` sees the first failure.
        for class in [Class::permanent, Class::transient] {
            drop(m.failed.get_or_create(&ClassLabel { class }));
        }
        m.registry = m.build_registry();
        m
    }

    fn build_registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register("kiln_worker_slots", "Render slots of this worker.", self.slots.clone());
        r.register("kiln_worker_busy_slots", "Slots rendering right now.", self.busy_slots.clone());
        r.register("kiln_worker_held_leases", "Leases held and not yet reported.", self.held.clone());
        r.register(
            "kiln_worker_prefetch_per_slot",
            "Tasks this worker holds ahead of each slot: its prefetch, or with auto_prefetch the one it measured.",
            self.prefetch.clone(),
        );
        r.register(
            "kiln_worker_prefetched_tasks",
            "Leases held but not started (prefetch depth).",
            self.buffered.clone(),
        );
        r.register("kiln_worker_tasks_completed", "Tasks rendered and reported as completed.", self.completed.clone());
        r.register("kiln_worker_tasks_failed", "Tasks reported as failed, by class.", self.failed.clone());
        r.register("kiln_worker_tasks_released", "Leases given back unstarted (drain).", self.released.clone());
        r.register(
            "kiln_worker_tasks_revoked",
            "Unstarted tasks dropped on the scheduler's word.",
            self.revoked.clone(),
        );
        r.register("kiln_worker_fetched_bytes", "Bytes of masters read.", self.bytes_fetched.clone());
        r.register("kiln_worker_uploaded_bytes", "Bytes of derivatives written.", self.bytes_uploaded.clone());
        r.register(
            "kiln_worker_slot_busy_seconds",
            "Time slots spent rendering; rate() over it divided by kiln_worker_slots is utilisation.",
            self.slot_busy_seconds.clone(),
        );
        r.register("kiln_worker_sessions_opened", "Sessions opened with a scheduler.", self.sessions_opened.clone());
        r.register(
            "kiln_worker_renders_abandoned",
            "Renders that ran past render_timeout; each still holds its thread, so /healthz fails.",
            self.renders_abandoned.clone(),
        );
        r.register("kiln_worker_connected", "1 while a session with the leader is open.", self.connected.clone());
        r.register("kiln_worker_draining", "1 once the worker drains.", self.draining.clone());
        self.render.register(
            &mut r,
            "kiln_worker_render_duration_seconds",
            "Time of each renderer run, by renderer (built-ins, else other).",
        );
        self.fetch.register(&mut r, "kiln_worker_fetch_duration_seconds", "Time to read one task's master.");
        self.upload.register(
            &mut r,
            "kiln_worker_upload_duration_seconds",
            "Time to write one task's derivatives and manifest.",
        );
        kiln_proto::metrics::register_build_info(&mut r, "worker");
        kiln_proto::metrics::register_process(&mut r);
        r
    }

    pub fn slot_started(&self) {
        self.busy_slots.inc();
    }

    pub fn render_abandoned(&self) {
        self.renders_abandoned.inc();
    }

    /// Renders abandoned past their deadline (their threads may still be busy).
    pub fn renders_abandoned(&self) -> u64 {
        self.renders_abandoned.get()
    }

    pub fn slot_finished(&self, took: Duration) {
        self.busy_slots.dec();
        self.slot_busy_seconds.inc_by(took.as_secs_f64());
    }

    pub fn busy_slots(&self) -> u32 {
        u32::try_from(self.busy_slots.get()).unwrap_or(0)
    }

    pub fn set_prefetch(&self, n: usize) {
        self.prefetch.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_held(&self, n: usize) {
        self.held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_buffered(&self, n: usize) {
        self.buffered.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn fetched(&self, bytes: usize, micros: u64) {
        self.bytes_fetched.inc_by(bytes as u64);
        self.fetch.observe_micros(micros);
    }

    pub fn uploaded(&self, bytes: usize) {
        self.bytes_uploaded.inc_by(bytes as u64);
    }

    pub fn upload_time(&self, micros: u64) {
        self.upload.observe_micros(micros);
    }

    pub fn rendered(&self, renderer: &str, micros: u64) {
        self.render.observe_micros(renderer, micros);
    }

    pub fn completed(&self) {
        self.completed.inc();
    }

    pub fn failed(&self, permanent: bool) {
        let class = if permanent { Class::permanent } else { Class::transient };
        self.failed.get_or_create(&ClassLabel { class }).inc();
    }

    pub fn released(&self, n: usize) {
        self.released.inc_by(n as u64);
    }

    pub fn revoked(&self) {
        self.revoked.inc();
    }

    pub fn set_connected(&self, connected: bool) {
        if connected {
            self.sessions_opened.inc();
        }
        self.connected.set(i64::from(connected));
    }

    pub fn is_connected(&self) -> bool {
        self.connected.get() == 1
    }

    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get() == 1
    }

    /// The OpenMetrics text of every series ([`kiln_proto::metrics::CONTENT_TYPE`]).
    pub fn render_text(&self) -> String {
        kiln_proto::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_the_kpis() {
        let m = Metrics::new(4);
        m.completed();
        m.failed(true);
        m.fetched(1000, 2_000_000);
        m.rendered("loudness", 1_500_000);
        m.rendered("loudness", 500_000);
        m.slot_started();
        m.slot_finished(Duration::from_millis(1500));
        let text = m.render_text();
        for line in [
            "kiln_worker_slots 4",
            "kiln_worker_busy_slots 0",
            "kiln_worker_tasks_completed_total 1",
            "kiln_worker_tasks_failed_total{class=\"permanent\"} 1",
            "kiln_worker_tasks_failed_total{class=\"transient\"} 0",
            "kiln_worker_fetched_bytes_total 1000",
            "kiln_worker_slot_busy_seconds_total 1.5",
            "# TYPE kiln_worker_busy_slots gauge",
            "# TYPE kiln_worker_render_duration_seconds histogram",
            "kiln_worker_render_duration_seconds_bucket{le=\"0.5\",renderer=\"loudness\"} 1",
            "kiln_worker_render_duration_seconds_bucket{le=\"2.5\",renderer=\"loudness\"} 2",
            "kiln_worker_render_duration_seconds_count{renderer=\"loudness\"} 2",
            "kiln_worker_render_duration_seconds_sum{renderer=\"loudness\"} 2.0",
            "kiln_worker_render_duration_seconds_count{renderer=\"bpm\"} 0",
            "kiln_worker_fetch_duration_seconds_bucket{le=\"2.5\"} 1",
            "kiln_worker_fetch_duration_seconds_bucket{le=\"1.0\"} 0",
            "kiln_worker_upload_duration_seconds_count 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("kiln_build_info{") && l.contains("component=\"worker\"")),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{text}");
        assert!(!text.contains("kiln_scheduler_"), "a worker exports only its own names");
    }
}
