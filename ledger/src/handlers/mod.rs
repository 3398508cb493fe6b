//! The command handlers, one file per family. Each is an `impl Ledger` block reached only from
//! [`crate::Ledger::apply`]; each changes a stored task only through `transition`.
//!
//! | file | commands |
//! |---|---|
//! | `submit` | `Submit` |
//! | `leasing` | `Lease`, `Steal`, `Backup` |
//! | `reports` | `Complete`, `Fail`, `Release` |
//! | `expiry` | `ExpireLeases`, `GraceLeases` |
//! | `terminal` | `Cancel`, `RequeueDeadLetters`, `PurgeDeadLetters`, `CollectGarbage` |
//! | `workers` | `RegisterWorker`, `DisconnectWorker`, `DrainWorker`, `Renew`, `OpenSession`, `CloseSession` |
//! | `batches` | `CreateBatch`, `AdmitBatch`, `BatchControl`, `BatchNotified`, and the batch hooks |
//!
//! `EnableFeature` is applied by `features` itself (the flags are its state).

mod batches;
mod expiry;
mod leasing;
mod reports;
mod submit;
mod terminal;
mod workers;

use kiln_types::WorkerId;

/// What a steal takes: a task its holder has not started (the holder drops it), or a backup copy
/// of one it is rendering (the holder carries on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taking {
    Unstarted,
    BackupCopy,
}

/// Whose failure an attempt was, which decides the retry: a worker's report retries after a
/// backoff (or never, if the error is permanent); a lapsed lease retries at once, because the
/// lease TTL has already waited long enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Reported { worker: WorkerId, permanent: bool },
    LeaseExpired { worker: Option<WorkerId> },
}
