//! The worker's counters, gauges and histograms, and their Prometheus text form.
//!
//! Plain atomics updated where things happen (slot threads, tasks, the session) and read at scrape
//! time; no registry, no per-task labels. The only labels are the renderer name (the built-ins
//! plus `other`) and the failure class.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use kiln_proto::metrics::{Histogram, RendererHistograms};

#[derive(Debug, Default)]
pub struct Metrics {
    slots: AtomicU64,
    busy_slots: AtomicU64,
    held: AtomicU64,
    /// Leases not started yet (prefetched), as of the latest heartbeat.
    buffered: AtomicU64,
    completed: AtomicU64,
    failed_permanent: AtomicU64,
    failed_transient: AtomicU64,
    released: AtomicU64,
    revoked: AtomicU64,
    bytes_fetched: AtomicU64,
    bytes_uploaded: AtomicU64,
    slot_busy_micros: AtomicU64,
    sessions_opened: AtomicU64,
    connected: AtomicBool,
    draining: AtomicBool,
    /// Per renderer: how long each run took.
    render: RendererHistograms,
    /// Per task: reading the master, and writing its derivatives and manifest.
    fetch: Histogram,
    upload: Histogram,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Metrics {
    pub fn new(slots: usize) -> Self {
        let m = Self::default();
        m.slots.store(slots as u64, Relaxed);
        m
    }

    pub fn slot_started(&self) {
        self.busy_slots.fetch_add(1, Relaxed);
    }

    pub fn slot_finished(&self, took: Duration) {
        self.busy_slots.fetch_sub(1, Relaxed);
        self.slot_busy_micros.fetch_add(micros(took), Relaxed);
    }

    pub fn busy_slots(&self) -> u32 {
        u32::try_from(self.busy_slots.load(Relaxed)).unwrap_or(u32::MAX)
    }

    pub fn set_held(&self, n: usize) {
        self.held.store(n as u64, Relaxed);
    }

    pub fn set_buffered(&self, n: usize) {
        self.buffered.store(n as u64, Relaxed);
    }

    pub fn fetched(&self, bytes: usize, micros: u64) {
        self.bytes_fetched.fetch_add(bytes as u64, Relaxed);
        self.fetch.observe_micros(micros);
    }

    pub fn uploaded(&self, bytes: usize) {
        self.bytes_uploaded.fetch_add(bytes as u64, Relaxed);
    }

    pub fn upload_time(&self, micros: u64) {
        self.upload.observe_micros(micros);
    }

    pub fn rendered(&self, renderer: &str, micros: u64) {
        self.render.get(renderer).observe_micros(micros);
    }

    pub fn completed(&self) {
        self.completed.fetch_add(1, Relaxed);
    }

    pub fn failed(&self, permanent: bool) {
        if permanent { &self.failed_permanent } else { &self.failed_transient }.fetch_add(1, Relaxed);
    }

    pub fn released(&self, n: usize) {
        self.released.fetch_add(n as u64, Relaxed);
    }

    pub fn revoked(&self) {
        self.revoked.fetch_add(1, Relaxed);
    }

    pub fn set_connected(&self, connected: bool) {
        if connected {
            self.sessions_opened.fetch_add(1, Relaxed);
        }
        self.connected.store(connected, Relaxed);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render_text(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let g = |a: &AtomicU64| a.load(Relaxed) as f64;
        let secs = |a: &AtomicU64| a.load(Relaxed) as f64 / 1e6;
        family("kiln_worker_slots", "gauge", "Render slots of this worker.", &[("", g(&self.slots))]);
        family("kiln_worker_busy_slots", "gauge", "Slots rendering right now.", &[("", g(&self.busy_slots))]);
        family("kiln_worker_held_leases", "gauge", "Leases held and not yet reported.", &[("", g(&self.held))]);
        family(
            "kiln_worker_prefetched_tasks",
            "gauge",
            "Leases held but not started (prefetch depth).",
            &[("", g(&self.buffered))],
        );
        family(
            "kiln_worker_tasks_completed_total",
            "counter",
            "Tasks rendered and reported as completed.",
            &[("", g(&self.completed))],
        );
        family(
            "kiln_worker_tasks_failed_total",
            "counter",
            "Tasks reported as failed, by class.",
            &[
                ("{class=\"permanent\"}", g(&self.failed_permanent)),
                ("{class=\"transient\"}", g(&self.failed_transient)),
            ],
        );
        family(
            "kiln_worker_tasks_released_total",
            "counter",
            "Leases given back unstarted (drain).",
            &[("", g(&self.released))],
        );
        family(
            "kiln_worker_tasks_revoked_total",
            "counter",
            "Unstarted tasks dropped on the scheduler's word.",
            &[("", g(&self.revoked))],
        );
        family("kiln_worker_fetched_bytes_total", "counter", "Bytes of masters read.", &[("", g(&self.bytes_fetched))]);
        family(
            "kiln_worker_uploaded_bytes_total",
            "counter",
            "Bytes of derivatives written.",
            &[("", g(&self.bytes_uploaded))],
        );
        family(
            "kiln_worker_fetch_seconds_total",
            "counter",
            "Time spent reading masters.",
            &[("", self.fetch.sum_secs())],
        );
        family(
            "kiln_worker_upload_seconds_total",
            "counter",
            "Time spent writing derivatives.",
            &[("", self.upload.sum_secs())],
        );
        family(
            "kiln_worker_slot_busy_seconds_total",
            "counter",
            "Time slots spent rendering.",
            &[("", secs(&self.slot_busy_micros))],
        );
        family(
            "kiln_worker_sessions_opened_total",
            "counter",
            "Sessions opened with a scheduler.",
            &[("", g(&self.sessions_opened))],
        );
        family(
            "kiln_worker_connected",
            "gauge",
            "1 while a session is open.",
            &[("", f64::from(u8::from(self.connected.load(Relaxed))))],
        );
        family(
            "kiln_worker_draining",
            "gauge",
            "1 once the worker drains.",
            &[("", f64::from(u8::from(self.draining.load(Relaxed))))],
        );
        let ran: Vec<(String, f64, f64)> = self
            .render
            .iter()
            .filter(|(_, h)| h.count() > 0)
            .map(|(r, h)| (format!("{{renderer=\"{r}\"}}"), h.count() as f64, h.sum_secs()))
            .collect();
        let runs: Vec<(&str, f64)> = ran.iter().map(|(l, n, _)| (l.as_str(), *n)).collect();
        let time: Vec<(&str, f64)> = ran.iter().map(|(l, _, t)| (l.as_str(), *t)).collect();
        family("kiln_worker_renders_total", "counter", "Renderer runs, by renderer.", &runs);
        family("kiln_worker_render_seconds_total", "counter", "Time spent per renderer.", &time);
        let mut histogram = |name: &str, help: &str, write: &dyn Fn(&mut String)| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            write(&mut out);
        };
        histogram("kiln_worker_render_duration_seconds", "Time of each renderer run, by renderer.", &|o| {
            self.render.write(o, "kiln_worker_render_duration_seconds")
        });
        histogram("kiln_worker_fetch_duration_seconds", "Time to read one task's master.", &|o| {
            self.fetch.write(o, "kiln_worker_fetch_duration_seconds", "")
        });
        histogram("kiln_worker_upload_duration_seconds", "Time to write one task's derivatives and manifest.", &|o| {
            self.upload.write(o, "kiln_worker_upload_duration_seconds", "")
        });
        out
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
        let text = m.render_text();
        for line in [
            "kiln_worker_slots 4",
            "kiln_worker_tasks_completed_total 1",
            "kiln_worker_tasks_failed_total{class=\"permanent\"} 1",
            "kiln_worker_fetched_bytes_total 1000",
            "kiln_worker_fetch_seconds_total 2",
            "kiln_worker_renders_total{renderer=\"loudness\"} 2",
            "kiln_worker_render_seconds_total{renderer=\"loudness\"} 2",
            "# TYPE kiln_worker_busy_slots gauge",
            "# TYPE kiln_worker_render_duration_seconds histogram",
            "kiln_worker_render_duration_seconds_bucket{renderer=\"loudness\",le=\"0.5\"} 1",
            "kiln_worker_render_duration_seconds_bucket{renderer=\"loudness\",le=\"2.5\"} 2",
            "kiln_worker_render_duration_seconds_count{renderer=\"loudness\"} 2",
            "kiln_worker_render_duration_seconds_count{renderer=\"bpm\"} 0",
            "kiln_worker_fetch_duration_seconds_bucket{le=\"2.5\"} 1",
            "kiln_worker_fetch_duration_seconds_bucket{le=\"1\"} 0",
            "kiln_worker_upload_duration_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
