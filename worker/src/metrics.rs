//! The worker's counters and gauges, and their Prometheus text form.
//!
//! Plain atomics updated where things happen (slot threads, tasks, the session) and read at scrape
//! time; no registry, no per-task labels. The only label is the renderer name, a set fixed by the
//! build, and the failure class.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy)]
struct RenderStat {
    count: u64,
    micros: u64,
}

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
    fetch_micros: AtomicU64,
    upload_micros: AtomicU64,
    slot_busy_micros: AtomicU64,
    sessions_opened: AtomicU64,
    connected: AtomicBool,
    draining: AtomicBool,
    /// Per renderer: runs and time spent. Keys are renderer names the build knows.
    render: Mutex<BTreeMap<String, RenderStat>>,
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
        self.fetch_micros.fetch_add(micros, Relaxed);
    }

    pub fn uploaded(&self, bytes: usize) {
        self.bytes_uploaded.fetch_add(bytes as u64, Relaxed);
    }

    pub fn upload_time(&self, micros: u64) {
        self.upload_micros.fetch_add(micros, Relaxed);
    }

    pub fn rendered(&self, renderer: &str, micros: u64) {
        let mut map = self.render.lock().unwrap_or_else(|p| p.into_inner());
        let stat = map.entry(renderer.to_owned()).or_default();
        stat.count += 1;
        stat.micros += micros;
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
        family("kiln_worker_prefetched_tasks", "gauge", "Leases held but not started (prefetch depth).", &[("", g(&self.buffered))]);
        family("kiln_worker_tasks_completed_total", "counter", "Tasks rendered and reported as completed.", &[("", g(&self.completed))]);
        family(
            "kiln_worker_tasks_failed_total",
            "counter",
            "Tasks reported as failed, by class.",
            &[("{class=\"permanent\"}", g(&self.failed_permanent)), ("{class=\"transient\"}", g(&self.failed_transient))],
        );
        family("kiln_worker_tasks_released_total", "counter", "Leases given back unstarted (drain).", &[("", g(&self.released))]);
        family("kiln_worker_tasks_revoked_total", "counter", "Unstarted tasks dropped on the scheduler's word.", &[("", g(&self.revoked))]);
        family("kiln_worker_fetched_bytes_total", "counter", "Bytes of masters read.", &[("", g(&self.bytes_fetched))]);
        family("kiln_worker_uploaded_bytes_total", "counter", "Bytes of derivatives written.", &[("", g(&self.bytes_uploaded))]);
        family("kiln_worker_fetch_seconds_total", "counter", "Time spent reading masters.", &[("", secs(&self.fetch_micros))]);
        family("kiln_worker_upload_seconds_total", "counter", "Time spent writing derivatives.", &[("", secs(&self.upload_micros))]);
        family("kiln_worker_slot_busy_seconds_total", "counter", "Time slots spent rendering.", &[("", secs(&self.slot_busy_micros))]);
        family("kiln_worker_sessions_opened_total", "counter", "Sessions opened with a scheduler.", &[("", g(&self.sessions_opened))]);
        family("kiln_worker_connected", "gauge", "1 while a session is open.", &[("", f64::from(u8::from(self.connected.load(Relaxed))))]);
        family("kiln_worker_draining", "gauge", "1 once the worker drains.", &[("", f64::from(u8::from(self.draining.load(Relaxed))))]);
        let stats: Vec<(String, RenderStat)> =
            self.render.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect();
        let labels: Vec<String> = stats.iter().map(|(r, _)| format!("{{renderer=\"{r}\"}}")).collect();
        let runs: Vec<(&str, f64)> = labels.iter().zip(&stats).map(|(l, (_, s))| (l.as_str(), s.count as f64)).collect();
        let time: Vec<(&str, f64)> = labels.iter().zip(&stats).map(|(l, (_, s))| (l.as_str(), s.micros as f64 / 1e6)).collect();
        family("kiln_worker_renders_total", "counter", "Renderer runs, by renderer.", &runs);
        family("kiln_worker_render_seconds_total", "counter", "Time spent per renderer.", &time);
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
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
