//! The replicated settings a ledger applies with.
//!
//! They are part of the ledger's state (and of its snapshots), not read from the environment, so
//! every replica leases, backs off and collects with the same values.

use serde::{Deserialize, Serialize};

/// Replicated settings: part of the state, so every replica applies with the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerConfig {
    pub lease_ttl_ms: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub gc_ttl_ms: i64,
    pub max_live_tasks: u64,
    /// History events kept per task (oldest dropped first, the first `submitted` always kept).
    pub max_history: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 30_000,
            backoff_base_ms: 2_000,
            backoff_max_ms: 300_000,
            gc_ttl_ms: 24 * 3_600_000,
            max_live_tasks: 2_000_000,
            max_history: 32,
        }
    }
}
