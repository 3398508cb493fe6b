//! The ledger audit: after an incident (or a chaos run), did the cluster lose, duplicate, strand
//! or complete twice anything, and do the replicas agree?
//!
//! It reads every task back, with its history, from the leader (fresh reads), and asks every
//! member for its own view (applied index and ledger digest). It is meant for a quiet cluster:
//! while workers complete tasks the replicas legitimately differ for a moment, so the member check
//! waits up to `settle` for them to agree before it reports a disagreement. The CLI (`kiln audit`),
//! the loadtest and the container tests share it, so all three judge a run the same way.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::v1;
use crate::{Client, ClientError, Credentials};

/// One member's own answer, or `None` where it did not answer.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    pub own: Option<v1::ClusterResponse>,
}

/// What the audit found. [`AuditReport::clean`] is the verdict.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub tasks_in_ledger: u64,
    pub succeeded: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// Tasks not in a terminal state (queued, leased or waiting for a retry).
    pub stuck: u64,
    /// Request ids held by more than one task.
    pub duplicated: u64,
    /// Tasks whose history shows more than one success.
    pub completed_twice: u64,
    /// Expected request ids the ledger does not hold (only when the caller knows what it sent).
    pub lost: u64,
    /// Catalog batches, and those whose counters do not add up (every admitted task must be
    /// succeeded, dead-lettered, cancelled or live; a finished batch holds nothing live).
    pub batches: u64,
    pub batches_inconsistent: u64,
    pub members: Vec<MemberView>,
    /// Every member answered with the same applied index and ledger digest.
    pub replicas_agree: bool,
    /// The first anomalies found (at most forty), one line each, for the operator to look at.
    pub examples: Vec<String>,
}

impl AuditReport {
    pub fn clean(&self) -> bool {
        self.stuck == 0
            && self.duplicated == 0
            && self.completed_twice == 0
            && self.lost == 0
            && self.batches_inconsistent == 0
            && self.replicas_agree
    }
}

const EXAMPLES: usize = 40;

/// Audits the cluster `client` reaches. `expected`: the request ids the caller submitted, if it
/// knows them; `settle`: how long the replicas get to agree.
pub async fn audit(
    mut client: Client,
    expected: Option<&BTreeSet<String>>,
    settle: Duration,
) -> Result<AuditReport, ClientError> {
    client.attempt_timeout = Duration::from_secs(30);
    let mut report = AuditReport::default();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let terminal = [v1::TaskState::Succeeded, v1::TaskState::DeadLettered, v1::TaskState::Cancelled].map(|s| s as i32);
    let mut after_id = 0;
    loop {
        let req = v1::ListTasksRequest { after_id, limit: 10_000, with_history: true, ..Default::default() };
        let page = client
            .call(|mut s| {
                let req = req.clone();
                async move { s.list_tasks(req).await }
            })
            .await?;
        for t in &page.tasks {
            report.tasks_in_ledger += 1;
            let request_id = t.job.as_ref().map(|j| j.request_id.clone()).unwrap_or_default();
            match v1::TaskState::try_from(t.state) {
                Ok(v1::TaskState::Succeeded) => report.succeeded += 1,
                Ok(v1::TaskState::DeadLettered) => report.dead_lettered += 1,
                Ok(v1::TaskState::Cancelled) => report.cancelled += 1,
                _ => {}
            }
            if !terminal.contains(&t.state) {
                report.stuck += 1;
                note(&mut report.examples, || format!("stuck: task {} ({request_id})", t.id));
            }
            if t.history.iter().filter(|h| h.kind == "succeeded").count() > 1 {
                report.completed_twice += 1;
                note(&mut report.examples, || format!("completed twice: task {} ({request_id})", t.id));
            }
            *seen.entry(request_id).or_default() += 1;
        }
        if page.next_after_id == 0 {
            break;
        }
        after_id = page.next_after_id;
    }
    for (request_id, n) in &seen {
        if *n > 1 {
            report.duplicated += 1;
            note(&mut report.examples, || format!("duplicated: request {request_id} held by {n} tasks"));
        }
    }
    if let Some(expected) = expected {
        for request_id in expected.iter().filter(|r| !seen.contains_key(*r)) {
            report.lost += 1;
            note(&mut report.examples, || format!("lost: request {request_id}"));
        }
    }
    // A release without batches answers UNIMPLEMENTED: nothing to check there.
    let batches = client.call(|mut s| async move { s.list_batches(v1::ListBatchesRequest {}).await }).await;
    for b in batches.map(|r| r.batches).unwrap_or_default() {
        report.batches += 1;
        let accounted = b.succeeded + b.dead_lettered + b.cancelled + b.live;
        let finished = matches!(b.state.as_str(), "done" | "cancelled" | "failed");
        if accounted != b.admitted || (b.state == "done" && b.live > 0) {
            report.batches_inconsistent += 1;
            note(&mut report.examples, || {
                format!(
                    "batch {} ({}): {} admitted but {} succeeded + {} dead-lettered + {} cancelled + {} live",
                    b.id, b.state, b.admitted, b.succeeded, b.dead_lettered, b.cancelled, b.live
                )
            });
        } else if !finished || b.live > 0 {
            note(&mut report.examples, || format!("batch {} is still {} ({} live)", b.id, b.state, b.live));
        }
    }
    let (members, agree) = settled_members(&mut client, settle).await?;
    report.members = members;
    report.replicas_agree = agree;
    Ok(report)
}

fn note(examples: &mut Vec<String>, line: impl FnOnce() -> String) {
    if examples.len() < EXAMPLES {
        examples.push(line());
    }
}

/// Every member's own view, asked again until they agree or `settle` has passed.
async fn settled_members(client: &mut Client, settle: Duration) -> Result<(Vec<MemberView>, bool), ClientError> {
    let membership = client.call(|mut s| async move { s.cluster(v1::ClusterRequest {}).await }).await?;
    let credentials = client.credentials().clone();
    let deadline = Instant::now() + settle;
    loop {
        let mut views = Vec::new();
        for m in &membership.members {
            views.push(MemberView { id: m.id, address: m.address.clone(), own: view(&m.address, &credentials).await });
        }
        let first = views.first().and_then(|v| v.own.as_ref()).map(|o| (o.applied_index, o.ledger_digest));
        let agree = first.is_some()
            && views.iter().all(|v| v.own.as_ref().map(|o| (o.applied_index, o.ledger_digest)) == first);
        if agree || Instant::now() >= deadline {
            return Ok((views, agree));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One node's own view (not redirected: every node answers `Cluster` itself).
pub async fn view(address: &str, credentials: &Credentials) -> Option<v1::ClusterResponse> {
    let mut client = Client::with_credentials([address], credentials.clone()).ok()?;
    client.deadline = Duration::from_secs(2);
    client.attempt_timeout = Duration::from_secs(2);
    client.call(|mut s| async move { s.cluster(v1::ClusterRequest {}).await }).await.ok()
}
