//! The `[batches]` table of `kiln scheduler`: how the leader admits catalog batches and notifies
//! about them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchOptions {
    /// Most live tasks of one batch when `kiln batch submit` gives no `--window`. Each live task
    /// costs every replica about 800 bytes; 100,000 keeps a batch near 80 MiB per replica however
    /// long its manifest.
    pub window: u64,
    /// Most manifest lines admitted by one replicated command.
    pub lines_per_admission: usize,
    /// Where batches without a webhook of their own send their final events.
    pub webhook: Option<String>,
    /// A file holding the key that signs webhook bodies (HMAC-SHA256 in `X-Kiln-Signature`).
    /// Without it the bodies are sent unsigned.
    pub webhook_secret_file: Option<PathBuf>,
    /// Deliveries tried per event before it is recorded as given up (backoff doubles from 1 s to
    /// at most 60 s between them).
    pub webhook_attempts: u32,
    /// Where batch manifests may be read from: prefixes of paths or URLs (`/srv/manifests/`,
    /// `s3://catalog/manifests/`). Empty: anywhere the scheduler can read. Set it on any cluster
    /// where a `submit` caller should not be able to make the leader open arbitrary files.
    pub allowed_sources: Vec<String>,
    /// How long one delivery may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            window: 100_000,
            lines_per_admission: 2_000,
            webhook: None,
            webhook_secret_file: None,
            webhook_attempts: 10,
            allowed_sources: Vec::new(),
            webhook_timeout: Duration::from_secs(10),
        }
    }
}
