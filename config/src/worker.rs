//! Options of `kiln worker`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, TlsOptions};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerOptions {
    /// Stable worker name; defaults to the host name.
    pub id: Option<String>,
    /// Scheduler gRPC addresses; any member will do, the client follows the leader.
    pub schedulers: Vec<String>,
    /// Render slots; defaults to the number of physical cores.
    pub slots: Option<usize>,
    /// Pin each render thread to its own core.
    pub pin_cores: bool,
    /// Leased tasks held ahead of each slot, downloading while the slot renders.
    pub prefetch: usize,
    /// Hold more than `prefetch` when the round trip to the scheduler is long against the render
    /// time (a WAN): `ceil(round trip / render time)` per slot, measured, at most 15.
    pub auto_prefetch: bool,
    /// Relative speed reported to the scheduler (1.0 = the reference core). Unset: measured at
    /// start-up by a short benchmark. Work stealing only moves tasks to workers with at least
    /// two thirds of the victim's speed, so set it where the benchmark misleads (a shared host).
    pub speed: Option<f64>,
    pub queues: Vec<String>,
    /// Where masters are read: a local path or a URL (`file:///srv/masters`).
    pub masters: String,
    /// Where derivatives are written: `{derivatives}/{asset_guid}/…`.
    pub derivatives: String,
    /// HTTP listen address for `/metrics` and `/healthz`.
    pub http_listen: Option<SocketAddr>,
    /// On SIGTERM, running tasks get this long to finish.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Masters larger than this are refused (permanent error).
    pub max_master_bytes: u64,
    /// Bytes of masters held in memory at once (downloading, prefetched or rendering); a task
    /// waits before its download until its master fits. Unset: half the memory this process may
    /// use (the cgroup limit in a container).
    pub master_memory_bytes: Option<u64>,
    /// Masters longer than this are refused (permanent error).
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// A render still running after this long is abandoned: the task fails (and is retried,
    /// then dead-lettered), and the worker's `/healthz` fails so it gets restarted, because the
    /// stuck thread cannot be taken back. Renders run at ~100x real time, so the default leaves a
    /// wide margin over `max_duration`.
    #[serde(with = "humantime_serde")]
    pub render_timeout: Duration,
    /// Most bytes of decoded audio (4 per sample per channel) one master may expand to: checked
    /// from the header and while decoding, so a small compressed file cannot take all memory.
    pub max_decoded_bytes: u64,
    /// Artwork sizes in pixels (longest side).
    pub artwork_sizes: Vec<u32>,
    /// S3-compatible endpoint for `s3://` locations (MinIO, Ceph, …); unset means AWS, or
    /// `AWS_ENDPOINT` from the environment.
    pub s3_endpoint: Option<String>,
    /// Address buckets as `{endpoint}/{bucket}` (path style) rather than `{bucket}.{endpoint}`.
    /// Most S3-compatible servers want path style.
    pub s3_path_style: bool,
    /// Allow plain `http://` endpoints (a store on a private network, tests on loopback).
    pub store_allow_http: bool,
    /// One request to a cloud store (headers and body) gives up after this long, so a stalled
    /// download becomes a retry instead of a task stuck forever.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// Retries of one request inside the store client before the task itself fails (transient)
    /// and is retried by the ledger, possibly elsewhere.
    pub store_retries: usize,
    /// Outputs of at least this many bytes are uploaded in parts (multipart upload).
    pub multipart_threshold: u64,
    /// Extra `object_store` options (`aws_access_key_id`, `google_service_account`, …), applied
    /// over the `AWS_*`/`GOOGLE_*`/`AZURE_*` environment. Credentials normally come from the
    /// environment; this is for the cases where they cannot.
    pub store_options: BTreeMap<String, String>,
    /// Mutual TLS to the schedulers: this worker's certificate names its id (`kiln tls init`).
    pub tls: Option<TlsOptions>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: None,
            schedulers: vec!["http://127.0.0.1:7450".to_owned()],
            slots: None,
            pin_cores: true,
            prefetch: 1,
            speed: None,
            queues: vec!["default".to_owned()],
            masters: "masters".to_owned(),
            derivatives: "derivatives".to_owned(),
            http_listen: None,
            drain_grace: Duration::from_secs(60),
            max_master_bytes: 2 << 30,
            master_memory_bytes: None,
            max_duration: Duration::from_secs(60 * 60),
            render_timeout: Duration::from_secs(30 * 60),
            max_decoded_bytes: 3 << 30,
            artwork_sizes: vec![1400, 500, 250],
            auto_prefetch: false,
            s3_endpoint: None,
            s3_path_style: true,
            store_allow_http: false,
            store_timeout: Duration::from_secs(60),
            store_retries: 3,
            multipart_threshold: 16 << 20,
            store_options: BTreeMap::new(),
            tls: None,
        }
    }
}

impl WorkerOptions {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Invalid(format!("worker: {m}")));
        if self.schedulers.is_empty() {
            return bad("schedulers must list at least one address");
        }
        if self.slots == Some(0) {
            return bad("slots must be at least 1");
        }
        if self.queues.is_empty() {
            return bad("queues must list at least one queue");
        }
        if self.masters.is_empty() || self.derivatives.is_empty() {
            return bad("masters and derivatives must be set");
        }
        if self.artwork_sizes.iter().any(|s| *s == 0 || *s > 10_000) {
            return bad("artwork_sizes must be between 1 and 10000 px");
        }
        if self.speed.is_some_and(|s| !(s.is_finite() && s > 0.0 && s <= 1000.0)) {
            return bad("speed must be a positive number up to 1000");
        }
        if self.render_timeout.is_zero() {
            return bad("render_timeout must be positive");
        }
        if self.store_timeout.is_zero() {
            return bad("store_timeout must be positive");
        }
        if self.multipart_threshold == 0 {
            return bad("multipart_threshold must be positive");
        }
        Ok(())
    }
}
