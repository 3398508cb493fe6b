//! `kiln cluster`: who leads, how far each member has come, and membership changes.
//!
//! Without a subcommand it asks one node for the membership, then asks every member for its own
//! view (role, term, commit and applied index, how long since it heard from the leader, a digest
//! of its ledger), so one table shows whether the replicas agree. `add` and `remove` change the
//! membership one node at a time (ConfChangeV2), which is how a node is replaced without downtime.
//! The table also shows each member's release and the log formats it reads, and the cluster's
//! enabled feature flags: what a rolling upgrade checks between steps (`features`,
//! `enable-feature`).

use anyhow::Context as _;
use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    change: Option<Change>,
    #[command(flatten)]
    watch: crate::cmd::Watch,
}

#[derive(clap::Subcommand)]
enum Change {
    /// Add a voter. Start it first with `kiln scheduler --join` (its peers listing the cluster).
    Add {
        /// Raft id of the new node (unique, never reused).
        id: u64,
        /// Its gRPC address as the other nodes reach it, e.g. http://10.0.0.4:7450.
        address: String,
    },
    /// Remove a voter (it may be dead). Stop its process afterwards.
    Remove { id: u64 },
    /// Feature flags: enabled, ready (every member supports it), or waiting for upgrades.
    Features,
    /// Enable a feature flag for good, once every member runs a release that supports it.
    ///
    /// Upgrade every node first, one at a time, checking `kiln cluster` after each. Enabling is
    /// one-way: afterwards no node can be rolled back to a release without the feature (it would
    /// refuse to start). Refused, naming the members, while any member lacks it or is down.
    EnableFeature {
        /// The feature's name, as `kiln cluster features` lists it.
        name: String,
    },
}

/// One member as the table shows it: the leader's view of it plus its own answer, if it gave one.
struct Row {
    member: v1::ClusterMember,
    own: Option<v1::ClusterResponse>,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    if let Some(change) = args.change {
        let request = match change {
            Change::Add { id, address } => v1::MembershipRequest { node_id: id, address, remove: false },
            Change::Remove { id } => v1::MembershipRequest { node_id: id, remove: true, ..Default::default() },
            Change::Features => return crate::cmd::features::list(ctx).await,
            Change::EnableFeature { name } => return crate::cmd::features::enable(ctx, name).await,
        };
        let after = client
            .call(|mut s| {
                let r = request.clone();
                async move { s.change_membership(r).await }
            })
            .await
            .context("membership change failed")?;
        let ids: Vec<String> = after.members.iter().map(|m| m.id.to_string()).collect();
        println!("members now: {}", ids.join(", "));
        return Ok(());
    }
    args.watch.repeat(ctx.output, || show(ctx)).await
}

/// The table (or JSON document) of every member's own view.
async fn show(ctx: &Context) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let first = client.call(|mut s| async move { s.cluster(v1::ClusterRequest {}).await }).await?;
    // The leader knows how far each member has acknowledged; ask it when it is not `first`.
    let leader_view = if first.node_id == first.leader_id || first.leader_address.is_empty() {
        first.clone()
    } else {
        kiln_proto::audit::view(&first.leader_address, client.credentials()).await.unwrap_or_else(|| first.clone())
    };
    let mut rows = Vec::new();
    for m in &leader_view.members {
        rows.push(Row { member: m.clone(), own: kiln_proto::audit::view(&m.address, client.credentials()).await });
    }
    let leader_commit = leader_view.commit_index;

    let support = |r: &Row| r.own.as_ref().and_then(|o| o.support.clone());
    let enabled = leader_view.support.as_ref().map(|s| s.enabled_features.clone()).unwrap_or_default();
    if ctx.output == OutputFormat::Json {
        return output::json(&serde_json::json!({
            "leader_id": leader_view.leader_id, "leader_address": leader_view.leader_address, "term": leader_view.term,
            "commit_index": leader_commit,
            "enabled_features": enabled,
            "members": rows.iter().map(|r| {
                let own = r.own.as_ref();
                serde_json::json!({
                    "id": r.member.id, "address": r.member.address, "matched_index": r.member.matched_index,
                    "reachable": own.is_some(),
                    "role": own.map(|o| o.role.clone()),
                    "term": own.map(|o| o.term),
                    "commit_index": own.map(|o| o.commit_index),
                    "applied_index": own.map(|o| o.applied_index),
                    "lag": own.map(|o| leader_commit.saturating_sub(o.applied_index)),
                    "snapshot_index": own.map(|o| o.snapshot_index),
                    "log_entries": own.map(|o| o.log_entries),
                    "leader_heard_ms": own.map(|o| o.leader_heard_ms),
                    "ledger_digest": own.map(|o| format!("{:016x}", o.ledger_digest)),
                    "disk_bytes": own.map(|o| o.disk_bytes),
                    "version": support(r).map(|s| s.version),
                    "formats": support(r).map(|s| [s.min_format, s.max_format]),
                    "emulated_format": support(r).map(|s| s.emulated_format).filter(|f| *f != 0),
                    "features": support(r).map(|s| s.features),
                })
            }).collect::<Vec<_>>(),
        }));
    }
    println!(
        "leader {} ({}); term {}; commit {}",
        leader_view.leader_id, leader_view.leader_address, leader_view.term, leader_commit
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match &r.own {
            Some(o) => vec![
                r.member.id.to_string(),
                o.role.clone(),
                r.member.address.clone(),
                o.term.to_string(),
                o.commit_index.to_string(),
                o.applied_index.to_string(),
                leader_commit.saturating_sub(o.applied_index).to_string(),
                o.snapshot_index.to_string(),
                if o.role == "leader" { "-".into() } else { format!("{} ms", o.leader_heard_ms) },
                format!("{:016x}", o.ledger_digest),
                support(r).map_or_else(|| "-".into(), |s| release(&s)),
            ],
            None => {
                let mut row = vec![r.member.id.to_string(), "unreachable".into(), r.member.address.clone()];
                row.extend(std::iter::repeat_n("-".to_owned(), 8));
                row
            }
        })
        .collect();
    output::table(
        &["ID", "ROLE", "ADDRESS", "TERM", "COMMIT", "APPLIED", "LAG", "SNAPSHOT", "LEADER SEEN", "LEDGER", "RELEASE"],
        &table,
    );
    println!("enabled features: {}", if enabled.is_empty() { "none".into() } else { enabled.join(", ") });
    Ok(())
}

/// A member's release as one cell: `0.1.0 formats 1-2 [fenced_sessions]`, with the format it
/// emulates when it pretends to be an older release.
fn release(s: &v1::NodeSupport) -> String {
    let emulating = match s.emulated_format {
        0 => String::new(),
        n => format!(" (emulating format {n})"),
    };
    format!("{} formats {}-{}{emulating} [{}]", s.version, s.min_format, s.max_format, s.features.join(","))
}
