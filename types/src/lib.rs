//! Validated domain types shared by every Kiln crate.
//!
//! Everything that crosses a trust boundary (a manifest line, a gRPC request, a CLI flag) is parsed
//! into one of these types once, at the edge. After that the rest of the system can rely on the
//! invariant each type carries: an [`AssetGuid`] can never name a path outside its storage prefix, a
//! [`RendererName`] is a short lowercase token, a [`RequestId`] is a usable idempotency key.
//!
//! The types are deliberately small and `serde`-transparent so the ledger can snapshot them and the
//! proto layer can convert to and from wire strings in one place.

mod ids;
mod job;

pub use ids::{AssetGuid, QueueName, RendererName, RequestId, TaskId, WorkerId};
pub use job::{default_max_attempts as job_default_max_attempts, EncodeJob, JobError, RendererSet, BUILTIN_RENDERERS};

use thiserror::Error;

/// Why a string was refused as one of the domain types. The message names the field and the rule,
/// so it can be shown to a user as is ("asset_guid `../x`: segment `..` would escape the prefix").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} `{value}`: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

impl InvalidValue {
    pub(crate) fn new(field: &'static str, value: &str, reason: impl Into<String>) -> Self {
        // Never echo megabytes of garbage back to a terminal.
        let mut shown: String = value.chars().take(80).collect();
        if value.chars().count() > 80 {
            shown.push('…');
        }
        Self { field, value: shown, reason: reason.into() }
    }
}
