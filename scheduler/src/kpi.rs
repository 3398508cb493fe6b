//! Latency histograms and byte counters the ledger does not keep: observed by the worker sessions
//! as leases go out and completions come in, rendered on `/metrics`.
//!
//! Counts and gauges of tasks come from the ledger at scrape time (`http`), so they agree on every
//! replica. These do not: they live in the memory of the node that served the sessions (the
//! leader) and start from zero when it restarts or leadership moves — which Prometheus handles as
//! a counter reset (`rate()`/`histogram_quantile()` over `_bucket` series stay correct).
//!
//! Label cardinality is bounded: renderers are the built-in names plus `other`, never a task, a
//! worker or a free-form string from the wire.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use kiln_proto::metrics::{Histogram, RendererHistograms};

/// What the sessions observe.
#[derive(Debug, Default)]
pub struct Kpis {
    /// Queue wait before a lease (submission, requeue or release to lease).
    pub lease_wait: Histogram,
    /// Per renderer (built-ins, then `other`): render time reported with each completion.
    render: RendererHistograms,
    /// Fetch and upload time per completed task.
    pub fetch: Histogram,
    pub upload: Histogram,
    /// Bytes of derivatives the accepted completions report.
    pub uploaded_bytes: AtomicU64,
}

impl Kpis {
    /// Records one accepted completion's timings and output sizes.
    pub fn completed(&self, result: &kiln_proto::v1::TaskResult) {
        for t in &result.timings {
            self.render.get(&t.renderer).observe_micros(t.micros);
        }
        self.fetch.observe_micros(result.fetch_micros);
        self.upload.observe_micros(result.upload_micros);
        self.uploaded_bytes.fetch_add(result.outputs.iter().map(|o| o.bytes).sum(), Relaxed);
    }

    /// The Prometheus text of every series here.
    pub fn write(&self, out: &mut String) {
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            out,
            "kiln_lease_wait_seconds",
            "histogram",
            "Time a task waited in its queue before a worker leased it.",
        );
        self.lease_wait.write(out, "kiln_lease_wait_seconds", "");
        family(
            out,
            "kiln_render_seconds",
            "histogram",
            "Render time per renderer, as reported with each accepted completion.",
        );
        self.render.write(out, "kiln_render_seconds");
        family(out, "kiln_fetch_seconds", "histogram", "Time to fetch the master, per accepted completion.");
        self.fetch.write(out, "kiln_fetch_seconds", "");
        family(
            out,
            "kiln_upload_seconds",
            "histogram",
            "Time to upload outputs and manifest, per accepted completion.",
        );
        self.upload.write(out, "kiln_upload_seconds", "");
        family(out, "kiln_uploaded_bytes_total", "counter", "Bytes of derivatives reported by accepted completions.");
        let _ = writeln!(out, "kiln_uploaded_bytes_total {}", self.uploaded_bytes.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_renderers_bounded() {
        let k = Kpis::default();
        k.lease_wait.observe_micros(3_000); // 3 ms
        k.lease_wait.observe_micros(2_000_000); // 2 s
        let result = kiln_proto::v1::TaskResult {
            timings: vec![
                kiln_proto::v1::RendererTiming { renderer: "loudness".into(), micros: 40_000 },
                kiln_proto::v1::RendererTiming { renderer: "some-plugin-x".into(), micros: 1 },
            ],
            outputs: vec![kiln_proto::v1::OutputFile { bytes: 10, ..Default::default() }],
            ..Default::default()
        };
        k.completed(&result);
        let mut text = String::new();
        k.write(&mut text);
        for line in [
            "kiln_lease_wait_seconds_bucket{le=\"0.001\"} 0",
            "kiln_lease_wait_seconds_bucket{le=\"0.005\"} 1",
            "kiln_lease_wait_seconds_bucket{le=\"2.5\"} 2",
            "kiln_lease_wait_seconds_bucket{le=\"+Inf\"} 2",
            "kiln_lease_wait_seconds_count 2",
            "kiln_lease_wait_seconds_sum 2.003",
            "kiln_render_seconds_bucket{renderer=\"loudness\",le=\"0.05\"} 1",
            "kiln_render_seconds_count{renderer=\"loudness\"} 1",
            "kiln_render_seconds_count{renderer=\"other\"} 1",
            "kiln_uploaded_bytes_total 10",
            "# TYPE kiln_render_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("some-plugin-x"), "free-form names never become labels");
    }
}
