//! Rolling upgrades in the shell: what this node supports, what every member supports, and the
//! gate in front of `EnableFeature`.
//!
//! The ledger holds which feature flags are enabled (`kiln_ledger::features`); this module is how
//! the cluster decides it may enable one. The leader asks every member of the configuration for
//! its [`Support`] over the `Scheduler.Support` RPC; a member that does not answer counts as not
//! supporting anything, so a feature is never enabled while a member is down. Commands a feature
//! unlocks are proposed only while the ledger has it enabled (see [`register_session`]).
//!
//! ```text
//!  kiln cluster enable-feature NAME ──▶ leader: survey every member ──▶ all support it?
//!                                                                     yes: propose EnableFeature
//!                                                                     no:  FAILED_PRECONDITION,
//!                                                                          naming the members
//! ```

use std::time::Duration;

use kiln_ledger::features::{self, FeatureSpec, FENCED_SESSIONS};
use kiln_ledger::{Command, Features, Outcome, Rejection, Support, WorkerSpec};
use kiln_proto::v1;
use kiln_types::WorkerId;
use tonic::Status;

use crate::convert::support_to_pb;
use crate::handle::Handle;
use crate::node::ProposeError;
use crate::status::{from_propose, from_rejection};

/// The release of this binary, as `kiln cluster` shows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the leader waits for a member's report before counting it as not supporting anything.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// One member's report, `None` when it did not answer.
pub(crate) struct Report {
    pub id: u64,
    pub address: String,
    pub support: Option<v1::NodeSupport>,
}

/// One member's own report, `None` if it does not answer within [`ASK_TIMEOUT`].
async fn ask(address: String, credentials: kiln_proto::Credentials) -> Option<v1::NodeSupport> {
    let mut client = kiln_proto::Client::with_credentials([address], credentials).ok()?;
    client.deadline = ASK_TIMEOUT;
    client.attempt_timeout = ASK_TIMEOUT;
    client.call(|mut s| async move { s.support(v1::SupportRequest {}).await }).await.ok()
}

/// Every member's report and the enabled flags, as the leader sees them (a fresh read, so a flag
/// enabled a moment ago is seen). This node answers from memory; the others over gRPC, at once.
pub(crate) async fn survey(handle: &Handle, own: &Support) -> Result<(Vec<Report>, Features), ProposeError> {
    let own = own.clone();
    let (me, members, enabled, mine) = handle
        .read_fresh(move |l, status| {
            let members: Vec<(u64, String)> = status.members.iter().map(|(id, a, _)| (*id, a.clone())).collect();
            (status.id, members, l.features().clone(), support_to_pb(&own, l.features()))
        })
        .await?;
    Ok((ask_all(me, members, mine, handle.peer_credentials()).await, enabled))
}

/// Every member's report, at once: this node (`me`) answers from memory with `mine`, the others
/// over gRPC.
pub(crate) async fn ask_all(
    me: u64,
    members: Vec<(u64, String)>,
    mine: v1::NodeSupport,
    credentials: &kiln_proto::Credentials,
) -> Vec<Report> {
    let asks = members.into_iter().map(|(id, address)| {
        let mine = mine.clone();
        let credentials = credentials.clone();
        async move {
            let support = if id == me { Some(mine) } else { ask(address.clone(), credentials).await };
            Report { id, address, support }
        }
    });
    futures::future::join_all(asks).await
}

/// One line per member that does not support `spec`, saying why.
pub(crate) fn lacking(spec: &FeatureSpec, reports: &[Report]) -> Vec<String> {
    reports
        .iter()
        .filter_map(|r| match &r.support {
            None => Some(format!("node {} ({}) did not answer", r.id, r.address)),
            Some(s) if !s.features.iter().any(|f| f == spec.name) => {
                let emulating = match s.emulated_format {
                    0 => String::new(),
                    n => format!(", emulating format {n}"),
                };
                Some(format!(
                    "node {} runs {} (formats {}..={}{emulating})",
                    r.id, s.version, s.min_format, s.max_format
                ))
            }
            Some(_) => None,
        })
        .collect()
}

pub(crate) fn feature_to_pb(spec: &FeatureSpec, enabled: &Features, reports: &[Report]) -> v1::Feature {
    v1::Feature {
        name: spec.name.to_owned(),
        description: spec.description.to_owned(),
        min_format: spec.min_format,
        commands: spec.commands.iter().map(|c| (*c).to_owned()).collect(),
        enabled: enabled.is_enabled(spec.name),
        supported_by: reports
            .iter()
            .filter(|r| r.support.as_ref().is_some_and(|s| s.features.iter().any(|f| f == spec.name)))
            .map(|r| r.id)
            .collect(),
        lacking: lacking(spec, reports),
    }
}

pub(crate) async fn list(handle: &Handle, own: &Support) -> Result<Vec<v1::Feature>, Status> {
    let (reports, enabled) = survey(handle, own).await.map_err(from_propose)?;
    Ok(features::FEATURES.iter().map(|spec| feature_to_pb(spec, &enabled, &reports)).collect())
}

/// Enables `name` once every member supports it. Idempotent: an enabled flag is answered as is.
pub(crate) async fn enable(handle: &Handle, own: &Support, name: &str) -> Result<v1::Feature, Status> {
    let Some(spec) = features::lookup(name) else {
        let known: Vec<&str> = features::FEATURES.iter().map(|f| f.name).collect();
        return Err(Status::not_found(format!("no feature named `{name}` (known: {})", known.join(", "))));
    };
    let (reports, mut enabled) = survey(handle, own).await.map_err(from_propose)?;
    if !enabled.is_enabled(name) {
        let lacking = lacking(spec, &reports);
        if !lacking.is_empty() {
            return Err(Status::failed_precondition(format!(
                "feature `{name}` is not supported by every member: {}; upgrade those nodes (one at a time) and \
                 check `kiln cluster` before enabling it",
                lacking.join("; ")
            )));
        }
        let cmd = Command::EnableFeature { name: name.to_owned() };
        handle.propose(cmd).await.map_err(from_propose)?.map_err(from_rejection)?;
        tracing::info!(feature = name, "feature enabled");
        enabled = survey(handle, own).await.map_err(from_propose)?.1;
    }
    Ok(feature_to_pb(spec, &enabled, &reports))
}

/// `auto_enable_features`: on the leader, enable every feature all members support, checking
/// every `every`. Off by default: enabling is a one-way door an operator should open.
pub(crate) async fn auto_enable(handle: Handle, own: Support, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if !handle.status().await.is_ok_and(|s| s.is_leader) {
            continue;
        }
        let Ok((reports, enabled)) = survey(&handle, &own).await else { continue };
        for spec in features::FEATURES.iter().filter(|f| !enabled.is_enabled(f.name)) {
            if lacking(spec, &reports).is_empty() {
                tracing::info!(feature = spec.name, "every member supports this feature: enabling it");
                let _ = handle.propose(Command::EnableFeature { name: spec.name.to_owned() }).await;
            }
        }
    }
}

/// Registers a worker's session: `OpenSession` (fenced, the ledger's session identity returned)
/// once `fenced_sessions` is enabled, the base `RegisterWorker` (`None`) before.
pub(crate) async fn register_session(
    handle: &Handle,
    spec: WorkerSpec,
) -> Result<Result<Option<u64>, Rejection>, ProposeError> {
    let fenced = handle.read(|l, _| l.features().is_enabled(FENCED_SESSIONS)).await?;
    if !fenced {
        return Ok(handle.propose(Command::RegisterWorker { spec }).await?.map(|_| None));
    }
    Ok(handle.propose(Command::OpenSession { spec }).await?.map(|outcome| match outcome {
        Outcome::SessionOpened { session } => Some(session),
        _ => None,
    }))
}

/// What ends a session: quoting its identity if it was opened fenced (a flag never turns off, so
/// a session closes the way it opened).
pub(crate) fn close_command(worker: WorkerId, session: Option<u64>) -> Command {
    match session {
        Some(session) => Command::CloseSession { worker, session },
        None => Command::DisconnectWorker { worker },
    }
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;
