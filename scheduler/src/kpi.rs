//! Latency histograms and byte counters the ledger does not keep: observed by the worker sessions
//! as leases go out and completions come in, served on `/metrics`.
//!
//! Counts and gauges of tasks come from the ledger at scrape time ([`crate::metrics`]), so they
//! agree on every replica. These do not: they live in the memory of the node that served the
//! sessions (the leader; followers serve none and report zeros) and start from zero when it
//! restarts or leadership moves — which Prometheus handles as a counter reset (`rate()` and
//! `histogram_quantile()` over `_bucket` series stay correct).
//!
//! Label cardinality is bounded: renderers are the built-in names plus `other`, never a task, a
//! worker or a free-form string from the wire.

use kiln_proto::metrics::{Histogram, RendererHistograms};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// What the sessions observe. Cloning shares the counts.
#[derive(Debug, Default, Clone)]
pub struct Kpis {
    /// Queue wait before a lease (submission, requeue or release to lease).
    pub lease_wait: Histogram,
    /// Per renderer (built-ins, then `other`): render time reported with each completion.
    render: RendererHistograms,
    /// Fetch and upload time per completed task.
    pub fetch: Histogram,
    pub upload: Histogram,
    /// Bytes of derivatives the accepted completions report.
    uploaded_bytes: Counter,
}

impl Kpis {
    /// Records one accepted completion's timings and output sizes.
    pub fn completed(&self, result: &kiln_proto::v1::TaskResult) {
        for t in &result.timings {
            self.render.observe_micros(&t.renderer, t.micros);
        }
        self.fetch.observe_micros(result.fetch_micros);
        self.upload.observe_micros(result.upload_micros);
        self.uploaded_bytes.inc_by(result.outputs.iter().map(|o| o.bytes).sum());
    }

    /// Adds every series here to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.lease_wait.register(
            registry,
            "kiln_scheduler_lease_wait_seconds",
            "Time a task waited in its queue before a worker leased it (observed by the leader).",
        );
        self.render.register(
            registry,
            "kiln_scheduler_render_seconds",
            "Render time per renderer, as reported with each accepted completion (observed by the leader).",
        );
        self.fetch.register(
            registry,
            "kiln_scheduler_fetch_seconds",
            "Time to fetch the master, per accepted completion (observed by the leader).",
        );
        self.upload.register(
            registry,
            "kiln_scheduler_upload_seconds",
            "Time to upload outputs and manifest, per accepted completion (observed by the leader).",
        );
        registry.register(
            "kiln_scheduler_uploaded_bytes",
            "Bytes of derivatives reported by accepted completions (observed by the leader).",
            self.uploaded_bytes.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_fill_the_histograms_and_renderers_stay_bounded() {
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
        let mut registry = Registry::default();
        k.register(&mut registry);
        let text = kiln_proto::metrics::encode(&registry);
        for line in [
            "kiln_scheduler_lease_wait_seconds_bucket{le=\"0.001\"} 0",
            "kiln_scheduler_lease_wait_seconds_bucket{le=\"0.005\"} 1",
            "kiln_scheduler_lease_wait_seconds_bucket{le=\"2.5\"} 2",
            "kiln_scheduler_lease_wait_seconds_bucket{le=\"+Inf\"} 2",
            "kiln_scheduler_lease_wait_seconds_count 2",
            "kiln_scheduler_lease_wait_seconds_sum 2.003",
            "kiln_scheduler_render_seconds_bucket{le=\"0.05\",renderer=\"loudness\"} 1",
            "kiln_scheduler_render_seconds_count{renderer=\"loudness\"} 1",
            "kiln_scheduler_render_seconds_count{renderer=\"other\"} 1",
            "kiln_scheduler_uploaded_bytes_total 10",
            "# TYPE kiln_scheduler_render_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("some-plugin-x"), "free-form names never become labels");
    }
}
