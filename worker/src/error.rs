//! The worker's errors, split by who has to act on them.
//!
//! [`Error`] stops the worker: bad configuration, an unusable store, a listener that cannot bind.
//! [`TaskError`] fails one task and knows which way it goes: a permanent error (the master is
//! missing, undecodable or over a limit) dead-letters the task at once with the message as its
//! reason, anything else (network, storage, a crashed renderer) is transient and the ledger retries
//! it with backoff, on this worker or another.

use thiserror::Error;

/// Why the worker could not start or had to stop.
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid worker options: {0}")]
    Options(String),
    #[error("cannot open the {role} store at {location:?}: {reason}")]
    Store { role: &'static str, location: String, reason: String },
    #[error("cannot start render thread {slot}: {source}")]
    Thread { slot: usize, source: std::io::Error },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("invalid scheduler address {address:?}: {reason}")]
    Scheduler { address: String, reason: String },
}

/// Why one task failed. The message is what an operator reads in the dead-letter queue, so it
/// names the key or the renderer involved.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The master is not in the store. Retrying will not make it appear.
    #[error("master {key} does not exist")]
    MasterMissing { key: String },
    /// The master is over `max_master_bytes`; refused before it is downloaded.
    #[error("master {key} is {size} bytes, the limit is {limit}")]
    MasterTooLarge { key: String, size: u64, limit: u64 },
    /// Reading the master failed for a reason that may pass (network, permissions being fixed, …).
    #[error("cannot fetch master {key}: {reason}")]
    Fetch { key: String, reason: String },
    /// Writing an output failed (network, full disk, …).
    #[error("cannot upload {key}: {reason}")]
    Upload { key: String, reason: String },
    /// A renderer produced a file name that is not a single safe path segment: a bug in the
    /// renderer, never written to storage.
    #[error("renderer produced an invalid output name {name:?}")]
    OutputName { name: String },
    /// The renderers refused the master (permanent) or failed inside (transient).
    #[error(transparent)]
    Render(#[from] kiln_render::Error),
    /// A renderer panicked. A bug, not a verdict on the master: retried, and dead-lettered only
    /// once the attempts run out.
    #[error("renderer panicked: {0}")]
    Panicked(String),
    /// The task's job failed validation on this side of the wire.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The render threads are gone (the worker is shutting down).
    #[error("render threads stopped")]
    SlotsClosed,
    /// The render ran past `render_timeout`. Retried (a loaded host may be why); a master that
    /// hangs a renderer every time is dead-lettered once its attempts run out.
    #[error("render still running after {limit:?} (render_timeout): abandoned")]
    RenderTimeout { limit: std::time::Duration },
}

impl TaskError {
    /// Permanent errors dead-letter the task at once; the rest are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            TaskError::MasterMissing { .. } | TaskError::MasterTooLarge { .. } | TaskError::InvalidJob(_) => true,
            TaskError::Render(e) => e.is_permanent(),
            TaskError::Fetch { .. }
            | TaskError::Upload { .. }
            | TaskError::OutputName { .. }
            | TaskError::Panicked(_)
            | TaskError::SlotsClosed
            | TaskError::RenderTimeout { .. } => false,
        }
    }

    /// Classifies a failed read of the master: only "not found" is a verdict on the task.
    pub(crate) fn from_fetch(key: &str, e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => TaskError::MasterMissing { key: key.to_owned() },
            other => TaskError::Fetch { key: key.to_owned(), reason: other.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found() -> object_store::Error {
        object_store::Error::NotFound {
            path: "masters/a.wav".into(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    #[test]
    fn missing_master_is_permanent_and_names_the_key() {
        let e = TaskError::from_fetch("file:///srv/masters/rel-1/a.wav", not_found());
        assert!(e.is_permanent());
        assert!(e.to_string().contains("file:///srv/masters/rel-1/a.wav"), "{e}");
    }

    #[test]
    fn storage_trouble_is_transient() {
        let generic = object_store::Error::Generic { store: "S3", source: "connection reset".into() };
        let e = TaskError::from_fetch("s3://b/a.wav", generic);
        assert!(!e.is_permanent(), "{e}");
        assert!(e.to_string().contains("connection reset"), "{e}");
        let up = TaskError::Upload { key: "d/a/x.json".into(), reason: "No space left on device".into() };
        assert!(!up.is_permanent());
        assert!(!TaskError::Panicked("index out of bounds".into()).is_permanent());
        assert!(!TaskError::SlotsClosed.is_permanent());
    }

    #[test]
    fn render_errors_keep_their_own_verdict() {
        let corrupt = TaskError::from(kiln_render::Error::Undecodable("no RIFF header".into()));
        assert!(corrupt.is_permanent());
        assert_eq!(corrupt.to_string(), "undecodable master: no RIFF header");
        let internal =
            TaskError::from(kiln_render::Error::Internal { renderer: "aac128".into(), reason: "oom".into() });
        assert!(!internal.is_permanent());
        let big = TaskError::MasterTooLarge { key: "a.wav".into(), size: 10, limit: 5 };
        assert!(big.is_permanent());
    }
}
