//! Why a node stopped for good, in words an operator can act on, and how the process reports it.
//!
//! A node whose Raft thread has died can promise nothing: it must not linger answering UNAVAILABLE
//! (systemd and compose restart only a process that exits). The thread's outcome — an error from a
//! round, or a panic — becomes a [`NodeFailure`]: `/healthz` and `/livez` report it, and
//! [`crate::Running::failed`] hands it to the binary, which exits with its [`exit_code`](NodeFailure::exit_code).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::node::{RunError, StartError};
use crate::raft_log::{self, Trouble};

/// What stopped the node, classified for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The disk holding the data directory is full.
    DiskFull,
    /// A read or write of the data directory failed.
    Io,
    /// The data directory holds something this node cannot read or reconcile.
    Corrupt,
    /// The cluster committed (or this node's snapshot holds) a log format or an enabled feature
    /// flag this release does not support: the data is fine, the binary is too old.
    Unsupported,
    /// The node thread panicked (a bug).
    Panic,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The process exit code (sysexits.h): 74 EX_IOERR for a full or failing disk, 65 EX_DATAERR
    /// for a damaged data directory or data this release cannot apply, 70 EX_SOFTWARE otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            FailureKind::DiskFull | FailureKind::Io => 74,
            FailureKind::Corrupt | FailureKind::Unsupported => 65,
            FailureKind::Panic | FailureKind::Other => 70,
        }
    }
}

/// The node thread stopped on an error or a panic; its message says what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct NodeFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// The advice printed when this release cannot apply the cluster's data.
pub(crate) const UNSUPPORTED_ADVICE: &str = "run the newer release on this node: its data directory is intact \
(do not move it aside), see 'Upgrade (rolling)' in docs/operations.md";

/// The advice printed with a damaged data directory.
pub(crate) const CORRUPT_ADVICE: &str = "the data directory is damaged: move it aside (keep it for a post-mortem), \
then restore it from a backup, or start this node empty with a new id and `kiln cluster add` it \
(see 'A damaged data directory' in docs/operations.md)";

impl NodeFailure {
    /// Classifies the error a node round returned (or the node failed to open with).
    pub fn from_error(err: &(dyn std::error::Error + 'static), data_dir: &Path) -> Self {
        let kind = classify(err);
        let dir = data_dir.display();
        let message = match kind {
            FailureKind::DiskFull => {
                format!("disk full at {dir}: free space and restart; nothing committed is lost ({})", chain(err))
            }
            FailureKind::Io => format!(
                "I/O error in {dir}: {}; check the disk (dmesg, SMART) and restart; nothing committed is lost",
                chain(err)
            ),
            FailureKind::Corrupt => format!("{}; {CORRUPT_ADVICE}", chain(err)),
            FailureKind::Unsupported => format!("{}; {UNSUPPORTED_ADVICE}", chain(err)),
            FailureKind::Panic | FailureKind::Other => format!("the Raft node stopped: {}", chain(err)),
        };
        Self { kind, message }
    }

    /// A panic of the node thread, with its message when it has one.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Self { kind: FailureKind::Panic, message: format!("the Raft node thread panicked: {what}") }
    }

    /// The process exit code for this failure: see [`FailureKind::exit_code`].
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }
}

/// Every message of an error's chain, joined, without repeating a message its wrapper already says.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

fn classify(err: &(dyn std::error::Error + 'static)) -> FailureKind {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<kiln_ledger::Unsupported>().is_some() {
            return FailureKind::Unsupported;
        }
        // The node's errors wrap storage errors transparently, which hides them from `source()`.
        let storage = match (e.downcast_ref::<StartError>(), e.downcast_ref::<RunError>()) {
            (Some(StartError::Storage(s)), _) | (_, Some(RunError::Storage(s))) => Some(s),
            _ => e.downcast_ref::<raft_log::Error>(),
        };
        if let Some(storage) = storage {
            match storage.trouble() {
                Trouble::DiskFull => return FailureKind::DiskFull,
                Trouble::Io => return FailureKind::Io,
                Trouble::Corrupt => return FailureKind::Corrupt,
                Trouble::Other => {}
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return if raft_log::is_disk_full(io) { FailureKind::DiskFull } else { FailureKind::Io };
        }
        if e.downcast_ref::<postcard::Error>().is_some() {
            return FailureKind::Corrupt;
        }
        next = e.source();
    }
    FailureKind::Other
}

/// The node thread's fate, shared by the thread (which records a failure once) and whoever asks.
#[derive(Clone, Default)]
pub(crate) struct Health {
    failure: Arc<OnceLock<NodeFailure>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Health {
    pub(crate) fn fail(&self, failure: NodeFailure) {
        tracing::error!(error = %failure, "the scheduler node stopped");
        let _ = self.failure.set(failure);
        self.notify.notify_waiters();
    }

    pub(crate) fn failure(&self) -> Option<NodeFailure> {
        self.failure.get().cloned()
    }

    /// Resolves once the node has failed (never, if it does not).
    pub(crate) async fn failed(&self) -> NodeFailure {
        loop {
            let notified = self.notify.notified();
            if let Some(f) = self.failure() {
                return f;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_with_the_data_directory_and_what_to_do() {
        let err = raft_log::Error::Io {
            path: "/var/lib/kiln/raft-snapshot.tmp".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let f = NodeFailure::from_error(&err, Path::new("/var/lib/kiln"));
        assert_eq!(f.kind, FailureKind::DiskFull);
        assert!(f.message.starts_with("disk full at /var/lib/kiln: free space and restart; nothing committed is lost"));
        assert_eq!(f.exit_code(), 74);
    }

    #[test]
    fn a_sled_write_error_behind_a_wrapper_is_still_an_io_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("round failed: {0}")]
        struct Wrapper(#[source] raft_log::Error);
        let err = Wrapper(raft_log::Error::Sled(sled::Error::Io(std::io::Error::from_raw_os_error(5))));
        let f = NodeFailure::from_error(&err, Path::new("/data"));
        assert_eq!(f.kind, FailureKind::Io);
        assert!(f.message.contains("I/O error in /data"), "{}", f.message);
    }

    #[test]
    fn a_damaged_directory_says_how_to_recover() {
        let err = raft_log::Error::Inconsistent { dir: "/data".into(), problem: "a gap".into() };
        let f = NodeFailure::from_error(&err, Path::new("/data"));
        assert_eq!((f.kind.clone(), f.exit_code()), (FailureKind::Corrupt, 65));
        assert!(f.message.contains("restore it from a backup"), "{}", f.message);
    }

    #[test]
    fn a_node_too_old_for_what_the_cluster_committed_is_told_to_run_the_newer_release() {
        let unsupported = kiln_ledger::Unsupported::Feature("fenced_sessions".into());
        for err in [
            &RunError::Unsupported(unsupported.clone()) as &(dyn std::error::Error + 'static),
            &StartError::Unsupported(unsupported.clone()),
        ] {
            let f = NodeFailure::from_error(err, Path::new("/data"));
            assert_eq!((f.kind.clone(), f.exit_code()), (FailureKind::Unsupported, 65));
            assert!(f.message.contains("fenced_sessions"), "{}", f.message);
            assert!(f.message.contains("run the newer release"), "{}", f.message);
            assert!(!f.message.contains(CORRUPT_ADVICE), "the data is not damaged: {}", f.message);
        }
    }

    #[test]
    fn a_panic_keeps_its_message() {
        let f = NodeFailure::from_panic(&"applied(9) is out of range");
        assert_eq!(f.kind, FailureKind::Panic);
        assert!(f.message.contains("applied(9) is out of range"));
        assert_eq!(f.exit_code(), 70);
    }
}
