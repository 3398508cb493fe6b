//! `manifest.json`: the record a task leaves next to its outputs, and the `TaskResult` it acks with.
//!
//! Results outlive the ledger (finished tasks are garbage-collected after a TTL), so the manifest
//! is self-contained: the job's fields, what each renderer found, every output with its URI,
//! sha256, size and content type, the timings, and who rendered it when. `kiln results` reads these.
//! It is written after every output, so a manifest never points at a file that is not there.
//!
//! ```json
//! { "request_id": "…", "release_id": 7, "asset_id": 9, "asset_guid": "rel-7/a.wav",
//!   "derivative_assets": ["loudness", "waveform"], "queue": "default",
//!   "task_id": 12, "attempt": 1, "worker": "r620-07", "rendered_at": "2026-…Z",
//!   "master": { "uri": "file:///srv/masters/rel-7/a.wav", "bytes": 52918844, "duration_secs": 300.0 },
//!   "metadata": { "loudness": { … }, "waveform": { … } },
//!   "outputs": [ { "renderer": "waveform", "name": "waveform.json", "uri": "…", "sha256": "…",
//!                  "bytes": 12034, "content_type": "application/json" } ],
//!   "timings": { "fetch_micros": 1200, "decode_micros": 80000, "upload_micros": 900,
//!                "renderers": { "loudness": 20000, "waveform": 9000 } },
//!   "kiln_version": "0.1.0" }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use kiln_proto::v1;
use kiln_types::EncodeJob;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Master {
    pub uri: String,
    pub bytes: u64,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub renderer: String,
    pub name: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub fetch_micros: u64,
    pub decode_micros: u64,
    /// Outputs only; the manifest's own write is not in it.
    pub upload_micros: u64,
    pub renderers: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub request_id: String,
    pub release_id: i64,
    pub asset_id: i64,
    pub asset_guid: String,
    pub derivative_assets: Vec<String>,
    pub queue: String,
    pub task_id: u64,
    pub attempt: u32,
    pub worker: String,
    /// RFC 3339, UTC, milliseconds.
    pub rendered_at: String,
    pub master: Master,
    /// What each renderer found, keyed by renderer name.
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub outputs: Vec<Output>,
    pub timings: Timings,
    pub kiln_version: String,
}

/// Who rendered which lease of which job.
pub struct Origin<'a> {
    pub job: &'a EncodeJob,
    pub task_id: u64,
    pub attempt: u32,
    pub worker: &'a str,
}

impl Manifest {
    pub fn new(
        origin: Origin<'_>,
        master: Master,
        metadata: BTreeMap<String, serde_json::Value>,
        outputs: Vec<Output>,
        timings: Timings,
    ) -> Self {
        let job = origin.job;
        Self {
            request_id: job.request_id.to_string(),
            release_id: job.release_id,
            asset_id: job.asset_id,
            asset_guid: job.asset_guid.to_string(),
            derivative_assets: job.derivative_assets.iter().map(|r| r.to_string()).collect(),
            queue: job.queue.to_string(),
            task_id: origin.task_id,
            attempt: origin.attempt,
            worker: origin.worker.to_owned(),
            rendered_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            master,
            metadata,
            outputs,
            timings,
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The ack's payload. `upload_micros` there includes the manifest's own write.
    pub fn task_result(&self, manifest_uri: String, upload_micros: u64) -> v1::TaskResult {
        v1::TaskResult {
            metadata_json: serde_json::Value::Object(self.metadata.clone().into_iter().collect()).to_string(),
            outputs: self
                .outputs
                .iter()
                .map(|o| v1::OutputFile {
                    renderer: o.renderer.clone(),
                    uri: o.uri.clone(),
                    sha256: o.sha256.clone(),
                    bytes: o.bytes,
                    content_type: o.content_type.clone(),
                })
                .collect(),
            timings: self
                .timings
                .renderers
                .iter()
                .map(|(r, us)| v1::RendererTiming { renderer: r.clone(), micros: *us })
                .collect(),
            manifest_uri,
            fetch_micros: self.timings.fetch_micros,
            decode_micros: self.timings.decode_micros,
            upload_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> EncodeJob {
        kiln_proto::job_from_pb(v1::EncodeJob {
            request_id: "r-1".into(),
            release_id: 7,
            asset_id: 9,
            asset_guid: "rel-7/a.wav".into(),
            derivative_assets: vec!["waveform".into(), "loudness".into()],
            ..Default::default()
        })
        .expect("valid job")
    }

    fn manifest() -> Manifest {
        let job = job();
        let mut metadata = BTreeMap::new();
        metadata.insert("loudness".to_owned(), serde_json::json!({ "integrated_lufs": -9.5 }));
        metadata.insert("waveform".to_owned(), serde_json::json!({ "zoom_levels": [256] }));
        let outputs = vec![Output {
            renderer: "waveform".into(),
            name: "waveform.json".into(),
            uri: "file:///out/rel-7/a.wav/waveform.json".into(),
            sha256: "00".repeat(32),
            bytes: 12,
            content_type: "application/json".into(),
        }];
        let timings = Timings {
            fetch_micros: 10,
            decode_micros: 20,
            upload_micros: 30,
            renderers: [("loudness".to_owned(), 40), ("waveform".to_owned(), 50)].into_iter().collect(),
        };
        let master = Master { uri: "file:///m/rel-7/a.wav".into(), bytes: 1000, duration_secs: 3.0 };
        Manifest::new(Origin { job: &job, task_id: 12, attempt: 2, worker: "w1" }, master, metadata, outputs, timings)
    }

    #[test]
    fn manifest_has_the_documented_shape() {
        let v = serde_json::to_value(manifest()).expect("json");
        for key in [
            "request_id",
            "release_id",
            "asset_id",
            "asset_guid",
            "derivative_assets",
            "queue",
            "task_id",
            "attempt",
            "worker",
            "rendered_at",
            "master",
            "metadata",
            "outputs",
            "timings",
            "kiln_version",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["asset_guid"], "rel-7/a.wav");
        assert_eq!(v["derivative_assets"], serde_json::json!(["loudness", "waveform"]));
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["metadata"]["loudness"]["integrated_lufs"], -9.5);
        let out = &v["outputs"][0];
        for key in ["renderer", "name", "uri", "sha256", "bytes", "content_type"] {
            assert!(out.get(key).is_some(), "output lacks {key}: {out}");
        }
        assert_eq!(v["timings"]["renderers"]["waveform"], 50);
        let at = v["rendered_at"].as_str().expect("string");
        assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
        let back: Manifest = serde_json::from_value(v).expect("round trip");
        assert_eq!(back.task_id, 12);
    }

    #[test]
    fn task_result_carries_metadata_keyed_by_renderer() {
        let r = manifest().task_result("file:///out/rel-7/a.wav/manifest.json".into(), 99);
        let meta: serde_json::Value = serde_json::from_str(&r.metadata_json).expect("json");
        assert_eq!(meta["loudness"]["integrated_lufs"], -9.5);
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(r.timings.len(), 2);
        assert_eq!((r.fetch_micros, r.decode_micros, r.upload_micros), (10, 20, 99));
        assert!(r.manifest_uri.ends_with("/manifest.json"));
    }
}
