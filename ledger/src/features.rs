//! Feature flags: how a command newer than some replicas enters the log without splitting them.
//!
//! A rolling upgrade runs old and new binaries side by side. If a new leader proposed a command
//! an old follower cannot read, the replicas would part ways. So every command newer than the
//! first log format belongs to a *feature*, and is proposed only once that feature is *enabled*
//! in the ledger — a replicated fact, set by [`Command::EnableFeature`], which the shell proposes
//! only when every member reports that it supports the feature (the way RabbitMQ does it).
//!
//! ```text
//!   build ──▶ Support { formats, features }  (compiled in; `emulate_format` hides the newer ones)
//!                │ reported by every member
//!                ▼
//!   operator ──▶ EnableFeature { name } ──▶ Features::enabled (replicated, in snapshots)
//!                                                 │ checked by the leader before proposing
//!                                                 ▼
//!                                          the feature's commands
//! ```
//!
//! A feature may also change what an existing command does (`forget_gone_workers` makes
//! `CollectGarbage` remove long-gone workers): that, too, must wait until every replica would do
//! the same, so it is gated the same way.
//!
//! Two rules keep a replica from ever applying what it does not understand: a replica refuses to
//! start from a snapshot with a feature it does not support ([`Support::check_enabled`]), and it
//! halts rather than apply a committed command beyond its support ([`Support::check`]).
//!
//! [`Features`] is also where the state of a gated feature lives. A ledger that has enabled
//! nothing snapshots (and digests) byte for byte as format 1, so an older release compares equal;
//! once something is enabled the snapshot is format 2, which carries the features (`codec`).
//!
//! The format numbers here are the codec's: format 2 is the first that knows the commands with wire
//! tags 18–20 and the snapshot `features` field. Log entries keep their version-1 envelope: a new
//! command is a new wire tag, which an older build refuses (and halts on) by itself.

use std::collections::{BTreeMap, BTreeSet};

use kiln_types::WorkerId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::command::{Command, Outcome, Rejection};

/// The log format of the first release: every command up to `Backup`.
pub const BASE_FORMAT: u32 = 1;
/// The newest log format this build reads and writes: format 2 added `EnableFeature` and the
/// session commands, format 3 the batch commands (and the snapshot section that holds batches).
pub const FORMAT: u32 = 3;

/// Name of the feature that fences worker sessions (`OpenSession` / `CloseSession`).
pub const FENCED_SESSIONS: &str = "fenced_sessions";

/// Name of the feature under which garbage collection also forgets workers that are gone.
pub const FORGET_GONE_WORKERS: &str = "forget_gone_workers";

/// Name of the feature that adds catalog batches (`crate::batches`).
pub const BATCHES: &str = "batches";

/// One entry of the registry of known features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// The lowest log format that can carry the feature's commands.
    pub min_format: u32,
    /// The commands the feature unlocks (proposed only while it is enabled).
    pub commands: &'static [&'static str],
}

/// Every feature this build knows, oldest first. A feature is never removed from this table:
/// a ledger may have it enabled.
pub const FEATURES: &[FeatureSpec] = &[
    FeatureSpec {
        name: FENCED_SESSIONS,
        description: "worker sessions carry an identity the ledger assigns, so the late close of an old \
                      session can no longer mark a reconnected worker disconnected",
        min_format: 2,
        commands: &["OpenSession", "CloseSession"],
    },
    FeatureSpec {
        name: FORGET_GONE_WORKERS,
        description: "garbage collection also removes the record of a worker disconnected for longer than \
                      gc_ttl and holding no lease, so a fleet that churns through worker ids (autoscaled \
                      pods) does not grow the ledger without bound",
        min_format: 2,
        // No new command: `CollectGarbage` does more, which every replica must agree to first.
        commands: &[],
    },
    FeatureSpec {
        name: BATCHES,
        description: "catalog batches: a manifest admitted a window at a time as the leader reads it, with a \
                      replicated cursor, counters, pause/resume/cancel and notifications",
        min_format: 3,
        commands: &["CreateBatch", "AdmitBatch", "BatchControl", "BatchNotified"],
    },
];

/// The registry entry of `name`.
pub fn lookup(name: &str) -> Option<&'static FeatureSpec> {
    FEATURES.iter().find(|f| f.name == name)
}

/// The command's wire name (its variant), for messages.
pub fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Submit { .. } => "Submit",
        Command::RegisterWorker { .. } => "RegisterWorker",
        Command::DisconnectWorker { .. } => "DisconnectWorker",
        Command::DrainWorker { .. } => "DrainWorker",
        Command::Lease { .. } => "Lease",
        Command::Steal { .. } => "Steal",
        Command::Renew { .. } => "Renew",
        Command::Complete { .. } => "Complete",
        Command::Fail { .. } => "Fail",
        Command::Release { .. } => "Release",
        Command::ExpireLeases => "ExpireLeases",
        Command::GraceLeases { .. } => "GraceLeases",
        Command::Cancel { .. } => "Cancel",
        Command::RequeueDeadLetters { .. } => "RequeueDeadLetters",
        Command::PurgeDeadLetters { .. } => "PurgeDeadLetters",
        Command::CollectGarbage => "CollectGarbage",
        Command::Backup { .. } => "Backup",
        Command::EnableFeature { .. } => "EnableFeature",
        Command::OpenSession { .. } => "OpenSession",
        Command::CloseSession { .. } => "CloseSession",
        Command::CreateBatch { .. } => "CreateBatch",
        Command::AdmitBatch { .. } => "AdmitBatch",
        Command::BatchControl { .. } => "BatchControl",
        Command::BatchNotified { .. } => "BatchNotified",
    }
}

/// The log format a command first appeared in, and the feature that must be enabled before it is
/// proposed (none for the base commands and for `EnableFeature` itself).
pub fn requirement(cmd: &Command) -> (u32, Option<&'static str>) {
    match cmd {
        Command::EnableFeature { .. } => (2, None),
        Command::OpenSession { .. } | Command::CloseSession { .. } => (2, Some(FENCED_SESSIONS)),
        Command::CreateBatch { .. }
        | Command::AdmitBatch { .. }
        | Command::BatchControl { .. }
        | Command::BatchNotified { .. } => (3, Some(BATCHES)),
        _ => (BASE_FORMAT, None),
    }
}

/// Why this build cannot apply something the cluster committed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unsupported {
    #[error(
        "command {command} needs log format {needs}, this node reads formats {min}..={max}; \
         upgrade this node (or stop emulating an older release)"
    )]
    Format { command: &'static str, needs: u32, min: u32, max: u32 },
    #[error(
        "feature `{0}` is enabled in the cluster but this node does not support it; run a release \
         that does (a cluster cannot be rolled back past an enabled feature)"
    )]
    Feature(String),
}

/// What one build can read: its log formats and the features it knows. Compiled in; reported
/// to the other members so the cluster knows what it may enable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    pub min_format: u32,
    pub max_format: u32,
    pub features: BTreeSet<String>,
    /// The format this node pretends to be limited to (`emulate_format`), if any.
    pub emulating: Option<u32>,
}

impl Support {
    /// Everything this build supports.
    pub fn this_build() -> Self {
        Self {
            min_format: BASE_FORMAT,
            max_format: FORMAT,
            features: FEATURES.iter().map(|f| f.name.to_owned()).collect(),
            emulating: None,
        }
    }

    /// This build behaving as the release whose newest format is `format`: newer formats and the
    /// features that need them are hidden. For tests and for rehearsing a rollback.
    pub fn emulating(format: u32) -> Self {
        let max_format = format.clamp(BASE_FORMAT, FORMAT);
        Self {
            min_format: BASE_FORMAT,
            max_format,
            features: FEATURES.iter().filter(|f| f.min_format <= max_format).map(|f| f.name.to_owned()).collect(),
            emulating: Some(max_format),
        }
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    /// Whether this node can apply the committed `cmd`. A replica that cannot must stop: applying
    /// it differently from the others (or skipping it) would split the replicas.
    pub fn check(&self, cmd: &Command) -> Result<(), Unsupported> {
        let (needs, feature) = requirement(cmd);
        if needs > self.max_format {
            return Err(Unsupported::Format {
                command: command_name(cmd),
                needs,
                min: self.min_format,
                max: self.max_format,
            });
        }
        let named = match cmd {
            Command::EnableFeature { name } => Some(name.as_str()),
            _ => feature,
        };
        match named {
            Some(name) if !self.has(name) => Err(Unsupported::Feature(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Whether this node can hold a ledger with these features enabled.
    pub fn check_enabled(&self, features: &Features) -> Result<(), Unsupported> {
        match features.enabled.iter().find(|f| !self.has(f)) {
            Some(missing) => Err(Unsupported::Feature(missing.clone())),
            None => Ok(()),
        }
    }
}

/// The enabled flags and the state of the gated features: replicated, carried by snapshots (the
/// `features` field of snapshot format 2, see `codec`), and so part of the ledger digest replicas
/// compare. Field order is wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    enabled: BTreeSet<String>,
    /// `fenced_sessions`: the session each worker is registered under now.
    sessions: BTreeMap<WorkerId, u64>,
    /// `fenced_sessions`: the identity the next session gets (0 is never one).
    last_session: u64,
}

impl Features {
    pub fn is_enabled(&self, name: &str) -> bool {
        self.enabled.contains(name)
    }

    pub fn enabled(&self) -> impl Iterator<Item = &str> {
        self.enabled.iter().map(String::as_str)
    }

    /// The session `worker` is registered under, if it opened a fenced session.
    pub fn session_of(&self, worker: &WorkerId) -> Option<u64> {
        self.sessions.get(worker).copied()
    }

    /// `EnableFeature`: idempotent; `Count(1)` when the flag changed, `Count(0)` when it was on.
    pub(crate) fn enable(&mut self, name: &str) -> Result<Outcome, Rejection> {
        if lookup(name).is_none() {
            return Err(Rejection::UnknownFeature(name.to_owned()));
        }
        Ok(Outcome::Count(u64::from(self.enabled.insert(name.to_owned()))))
    }

    /// Refuses a gated command while its feature is off: a ledger never holds state written by a
    /// command some member might not read.
    pub(crate) fn require(&self, feature: &str, command: &str) -> Result<(), Rejection> {
        if self.is_enabled(feature) {
            return Ok(());
        }
        Err(Rejection::FeatureDisabled { feature: feature.to_owned(), command: command.to_owned() })
    }

    /// Gives `worker` a new session identity and makes it the current one.
    pub(crate) fn open_session(&mut self, worker: &WorkerId) -> u64 {
        self.last_session += 1;
        self.sessions.insert(worker.clone(), self.last_session);
        self.last_session
    }

    /// True (and the session forgotten) when `session` is `worker`'s current one; false for the
    /// close of a session a newer one has replaced.
    pub(crate) fn close_session(&mut self, worker: &WorkerId, session: u64) -> bool {
        if self.sessions.get(worker) != Some(&session) {
            return false;
        }
        self.sessions.remove(worker);
        true
    }

    /// Forgets `worker`'s session (its record is being removed).
    pub(crate) fn forget(&mut self, worker: &WorkerId) {
        self.sessions.remove(worker);
    }

    /// Nothing enabled and no gated state: what format 1 snapshots, which cannot hold more.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl crate::Ledger {
    /// The enabled flags (and the gated features' state) of this replica.
    pub fn features(&self) -> &Features {
        &self.features
    }
}

#[cfg(test)]
#[path = "features_tests.rs"]
mod tests;
