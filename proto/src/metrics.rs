//! Prometheus histograms that both the scheduler and the worker serve on `/metrics`.
//!
//! Fixed buckets and lock-free atomics: observing is a handful of relaxed adds on the render
//! path, and a scrape reads them without stopping anyone. Written out in the text exposition
//! format (version 0.0.4) by hand; a registry crate would add little for a few series.
//!
//! Label cardinality is bounded: per-renderer histograms exist for the built-in renderers plus
//! `other`, never for a task, a worker or a free-form string from the wire.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use kiln_types::BUILTIN_RENDERERS;

/// Upper bounds of the buckets, in seconds: from a millisecond (a no-op lease) to ten minutes (a
/// long master on an old core).
const BOUNDS: [f64; 15] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0];

/// A Prometheus histogram with fixed buckets: one atomic add per bucket crossed.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Cumulative counts per bucket (`le` bound), as Prometheus exposes them.
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe_micros(&self, micros: u64) {
        let secs = micros as f64 / 1e6;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn sum_secs(&self) -> f64 {
        self.sum_micros.load(Relaxed) as f64 / 1e6
    }

    /// Writes the `_bucket`, `_sum` and `_count` series; `labels` is `` or `key="value",`.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {}", bucket.load(Relaxed));
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let plain = labels.trim_end_matches(',');
        let braces = |s: &str| if s.is_empty() { String::new() } else { format!("{{{s}}}") };
        let _ = writeln!(out, "{name}_sum{} {}", braces(plain), self.sum_secs());
        let _ = writeln!(out, "{name}_count{} {count}", braces(plain));
    }
}

/// One histogram per built-in renderer, and one for every other name.
#[derive(Debug)]
pub struct RendererHistograms(Vec<(&'static str, Histogram)>);

impl Default for RendererHistograms {
    fn default() -> Self {
        Self(
            BUILTIN_RENDERERS
                .iter()
                .copied()
                .chain(std::iter::once("other"))
                .map(|r| (r, Histogram::default()))
                .collect(),
        )
    }
}

impl RendererHistograms {
    /// The histogram for `renderer`, or the `other` one for a name the build does not know.
    pub fn get(&self, renderer: &str) -> &Histogram {
        let other = self.0.len() - 1;
        let i = self.0.iter().position(|(r, _)| *r == renderer).unwrap_or(other);
        &self.0[i].1
    }

    /// Every renderer's label and histogram, built-ins first.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        self.0.iter().map(|(r, h)| (*r, h))
    }

    /// Writes every renderer's series under `name`, labelled `renderer="…"`.
    pub fn write(&self, out: &mut String, name: &str) {
        for (renderer, h) in &self.0 {
            h.write(out, name, &format!("renderer=\"{renderer}\","));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_unknown_renderers_share_other() {
        let h = RendererHistograms::default();
        h.get("loudness").observe_micros(3_000);
        h.get("loudness").observe_micros(2_000_000);
        h.get("some-plugin-x").observe_micros(1);
        let mut text = String::new();
        h.write(&mut text, "r");
        for line in [
            "r_bucket{renderer=\"loudness\",le=\"0.001\"} 0",
            "r_bucket{renderer=\"loudness\",le=\"0.005\"} 1",
            "r_bucket{renderer=\"loudness\",le=\"+Inf\"} 2",
            "r_sum{renderer=\"loudness\"} 2.003",
            "r_count{renderer=\"loudness\"} 2",
            "r_count{renderer=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("some-plugin-x"), "free-form names never become labels");
    }
}
