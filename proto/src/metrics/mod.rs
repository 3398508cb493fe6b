//! Metric building blocks both the scheduler and the worker serve on `/metrics`, through
//! `prometheus-client` (OpenMetrics text): latency histograms with one set of buckets, per-renderer
//! histograms with bounded labels, `kiln_build_info`, and the standard `process_*` series.
//!
//! Each binary names its own series (`kiln_scheduler_…`, `kiln_worker_…`), so no two jobs export
//! the same name with different meanings and summing one name across a job is always meaningful.
//! Observing is a few relaxed atomic adds on the render path; a scrape reads them without stopping
//! anyone.
//!
//! Label cardinality is bounded: per-renderer histograms exist for the built-in renderers plus
//! `other`, never for a task, a worker or a free-form string from the wire.

mod process;

use std::time::Duration;

use kiln_types::BUILTIN_RENDERERS;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use process::ProcessCollector;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the buckets, in seconds: from a millisecond (a no-op lease) to ten minutes (a
/// long master on an old core).
pub const BUCKETS: [f64; 15] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0];

/// The commit this binary was built from (`KILN_COMMIT` at build time, else `git`), or `unknown`.
pub const COMMIT: &str = match option_env!("KILN_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// A latency histogram in seconds with Kiln's buckets. Cloning shares the counts.
#[derive(Debug, Clone)]
pub struct Histogram(histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Self(histogram::Histogram::new(BUCKETS))
    }
}

impl Histogram {
    /// A histogram with other bucket bounds (seconds), for latencies far from a render's scale.
    pub fn with_buckets(bounds: impl IntoIterator<Item = f64>) -> Self {
        Self(histogram::Histogram::new(bounds))
    }

    pub fn observe_micros(&self, micros: u64) {
        self.0.observe(micros as f64 / 1e6);
    }

    pub fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }

    /// Adds this histogram to `registry` as `name` (which ends in `_seconds`).
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.0.clone());
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RendererLabel {
    renderer: &'static str,
}

/// One histogram per built-in renderer, and one for every other name. Cloning shares the counts.
#[derive(Debug, Clone)]
pub struct RendererHistograms(Family<RendererLabel, histogram::Histogram>);

impl Default for RendererHistograms {
    fn default() -> Self {
        let family =
            Family::new_with_constructor((|| histogram::Histogram::new(BUCKETS)) as fn() -> histogram::Histogram);
        // Every renderer's series exists from the start, at zero, so a dashboard never shows a
        // renderer as missing rather than idle.
        for renderer in BUILTIN_RENDERERS.iter().copied().chain(std::iter::once("other")) {
            drop(family.get_or_create(&RendererLabel { renderer }));
        }
        Self(family)
    }
}

impl RendererHistograms {
    fn label(renderer: &str) -> RendererLabel {
        let known = BUILTIN_RENDERERS.iter().copied().find(|r| *r == renderer);
        RendererLabel { renderer: known.unwrap_or("other") }
    }

    /// Records one run of `renderer` (a name the build does not know counts as `other`).
    pub fn observe_micros(&self, renderer: &str, micros: u64) {
        self.0.get_or_create(&Self::label(renderer)).observe(micros as f64 / 1e6);
    }

    /// Adds every renderer's series to `registry` as `name`, labelled `renderer="…"`.
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.0.clone());
    }
}

/// Registers `kiln_build_info{component, version, commit} 1`, the series to join on for "which
/// build runs where" and to alert on mixed versions.
pub fn register_build_info(registry: &mut Registry, component: &'static str) {
    let labels: Vec<(&'static str, &'static str)> =
        vec![("component", component), ("version", env!("CARGO_PKG_VERSION")), ("commit", COMMIT)];
    registry.register("kiln_build", "The running build: version and commit, always 1.", Info::new(labels));
}

/// Registers the `process_*` series (CPU, memory, file descriptors, threads, start time) read from
/// `/proc/self` at scrape time; nothing on platforms without `/proc`.
pub fn register_process(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

/// The OpenMetrics text of `registry`, `# EOF` included.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; a metric whose encoder did would be a bug in it.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        out.push_str(&format!("# encoding failed: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_unknown_renderers_share_other() {
        let h = RendererHistograms::default();
        h.observe_micros("loudness", 3_000);
        h.observe_micros("loudness", 2_000_000);
        h.observe_micros("some-plugin-x", 1);
        let mut registry = Registry::default();
        h.register(&mut registry, "r_seconds", "help");
        let text = encode(&registry);
        for line in [
            "r_seconds_bucket{le=\"0.001\",renderer=\"loudness\"} 0",
            "r_seconds_bucket{le=\"0.005\",renderer=\"loudness\"} 1",
            "r_seconds_bucket{le=\"+Inf\",renderer=\"loudness\"} 2",
            "r_seconds_sum{renderer=\"loudness\"} 2.003",
            "r_seconds_count{renderer=\"loudness\"} 2",
            "r_seconds_count{renderer=\"other\"} 1",
            "r_seconds_count{renderer=\"bpm\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("some-plugin-x"), "free-form names never become labels");
    }

    #[test]
    fn build_info_names_the_component_version_and_commit() {
        let mut registry = Registry::default();
        register_build_info(&mut registry, "worker");
        let text = encode(&registry);
        let line = text.lines().find(|l| l.starts_with("kiln_build_info{")).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("component=\"worker\""), "{line}");
        assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
        assert!(line.contains("commit=\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
