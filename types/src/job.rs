//! The `EncodeJob`: the unit of work users already submit today, validated.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{AssetGuid, InvalidValue, QueueName, RendererName, RequestId};

/// The renderers every worker ships. Plugin renderers extend this set at run time.
pub const BUILTIN_RENDERERS: &[&str] = &["bpm", "key", "loudness", "waveform", "aac128", "artwork"];

/// One task as submitted: the `EncodeJob` contract plus Kiln's scheduling fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeJob {
    pub request_id: RequestId,
    pub release_id: i64,
    pub asset_id: i64,
    pub asset_guid: AssetGuid,
    pub derivative_assets: BTreeSet<RendererName>,
    #[serde(default)]
    pub queue: QueueName,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

pub const fn default_max_attempts() -> u32 {
    3
}

/// Why a job was refused before it reached the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobError {
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("derivative_assets is empty: name at least one renderer ({})", BUILTIN_RENDERERS.join(", "))]
    NoRenderers,
    #[error("max_attempts must be between 1 and 100, got {0}")]
    MaxAttempts(u32),
}

impl EncodeJob {
    /// Checks the rules that the individual field types cannot express alone.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.derivative_assets.is_empty() {
            return Err(JobError::NoRenderers);
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(JobError::MaxAttempts(self.max_attempts));
        }
        Ok(())
    }
}
