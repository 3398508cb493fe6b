//! Dead letters grouped by reason, the workers, and the cluster as this node sees it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use kiln_ledger::{Ledger, TaskFilter, TaskState};
use kiln_types::WorkerId;

use kiln_proto::v1;

use super::html::{bytes, esc, span, utc};
use crate::node::NodeStatus;
use crate::sessions::Live;

/// Dead letters looked at to group them; beyond this the page says it stopped counting.
const DEAD_LETTER_SCAN: usize = 100_000;
const EXAMPLES: usize = 5;

/// Dead letters sharing a reason: the first line of their last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub reason: String,
    pub count: u64,
    pub examples: Vec<u64>,
}

/// The reason a dead letter is grouped under: its error's first line, at most 200 characters.
pub fn reason_of(error: Option<&str>) -> String {
    let line = error.unwrap_or("").lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

/// Groups by reason, largest first; `true` when there were more than the page looked at.
pub fn dead_letter_groups(l: &Ledger) -> (Vec<Group>, bool) {
    let tasks =
        l.list(&TaskFilter { state: Some(TaskState::DeadLettered), limit: DEAD_LETTER_SCAN + 1, ..Default::default() });
    let truncated = tasks.len() > DEAD_LETTER_SCAN;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for t in tasks.iter().take(DEAD_LETTER_SCAN) {
        let reason = reason_of(t.last_error.as_deref());
        let g = groups.entry(reason.clone()).or_insert_with(|| Group { reason, count: 0, examples: Vec::new() });
        g.count += 1;
        if g.examples.len() < EXAMPLES {
            g.examples.push(t.id.0);
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    (groups, truncated)
}

/// A form field the action posts besides the token.
#[derive(Clone, Copy)]
enum Field<'a> {
    None,
    Reason(&'a str),
    Worker(&'a str),
}

fn action_form(out: &mut String, action: &str, csrf: &str, field: Field<'_>, label: &str, danger: bool) {
    let _ = write!(
        out,
        "<form class=\"inline\" method=\"post\" action=\"/ui/actions/{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    );
    match field {
        Field::None => {}
        Field::Reason(r) => {
            let _ = write!(out, "<input type=\"hidden\" name=\"reason\" value=\"{}\">", esc(r));
        }
        Field::Worker(w) => {
            let _ = write!(out, "<input type=\"hidden\" name=\"worker\" value=\"{}\">", esc(w));
        }
    }
    let class = if danger { " class=\"danger\"" } else { "" };
    let _ = write!(out, "<button type=\"submit\"{class}>{}</button></form> ", esc(label));
}

pub fn dead_letters_body(groups: &[Group], truncated: bool, csrf: &str) -> String {
    let mut out = String::new();
    if groups.is_empty() {
        out.push_str("<p>No dead letters.</p>");
        return out;
    }
    let total: u64 = groups.iter().map(|g| g.count).sum();
    let _ = write!(out, "<p>{total} dead-lettered tasks in {} groups. ", groups.len());
    if truncated {
        let _ = write!(out, "Only the first {DEAD_LETTER_SCAN} were grouped. ");
    }
    out.push_str(
        "Requeueing gives a task a fresh set of attempts; purging deletes it for good (its count stays).</p><p>",
    );
    action_form(&mut out, "requeue", csrf, Field::None, "Requeue all…", false);
    action_form(&mut out, "purge", csrf, Field::None, "Purge all…", true);
    out.push_str(
        "</p><table><thead><tr><th>Reason</th><th class=\"num\">Tasks</th><th>Examples</th><th>Actions</th></tr></thead><tbody>",
    );
    for g in groups {
        let reason = if g.reason.is_empty() { "(no error recorded)" } else { g.reason.as_str() };
        let _ = write!(out, "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td>", esc(reason), g.count);
        for id in &g.examples {
            let _ = write!(out, "<a href=\"/ui/tasks/{id}\">{id}</a> ");
        }
        out.push_str("</td><td>");
        if !g.reason.is_empty() {
            action_form(&mut out, "requeue", csrf, Field::Reason(&g.reason), "Requeue…", false);
            action_form(&mut out, "purge", csrf, Field::Reason(&g.reason), "Purge…", true);
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// One worker's row, copied out of the ledger and the sessions.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub connected: bool,
    pub draining: bool,
    pub slots: u32,
    pub busy: Option<u32>,
    pub prefetched: Option<u32>,
    pub leased: u32,
    pub completed: u64,
    pub failed: u64,
    pub speed_milli: u32,
    pub queues: String,
    pub last_seen: i64,
}

pub fn worker_rows(l: &Ledger, live: &HashMap<WorkerId, Live>) -> Vec<WorkerRow> {
    l.workers()
        .into_iter()
        .map(|w| {
            let session = live.get(&w.spec.id);
            WorkerRow {
                id: w.spec.id.to_string(),
                hostname: w.spec.hostname.clone(),
                version: w.spec.version.clone(),
                connected: w.connected,
                draining: w.draining,
                slots: w.spec.slots,
                busy: session.map(|s| s.busy_slots),
                prefetched: session.map(|s| s.buffered),
                leased: w.leased,
                completed: w.completed,
                failed: w.failed,
                speed_milli: w.spec.speed_milli,
                queues: w.spec.queues.iter().map(|q| q.to_string()).collect::<Vec<_>>().join(", "),
                last_seen: w.last_seen,
            }
        })
        .collect()
}

/// The fleet table; a connected worker that is not draining yet gets a "Drain…" button.
pub fn workers_body(rows: &[WorkerRow], is_leader: bool, csrf: &str) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("<p>No worker has ever connected.</p>");
        return out;
    }
    if !is_leader {
        out.push_str("<p class=\"note\">Busy slots and prefetch depth come from the worker sessions, which only the leader serves.</p>");
    }
    out.push_str(
        "<table><thead><tr><th>Worker</th><th>Host</th><th>State</th><th class=\"num\">Slots</th><th class=\"num\">Busy</th>\
         <th class=\"num\">Prefetched</th><th class=\"num\">Leased</th><th class=\"num\">Completed</th><th class=\"num\">Failed</th>\
         <th class=\"num\">Speed</th><th>Queues</th><th>Version</th><th>Last seen</th><th>Actions</th></tr></thead><tbody>",
    );
    for w in rows {
        let state = match (w.connected, w.draining) {
            (true, true) => "draining",
            (true, false) => "connected",
            (false, _) => "disconnected",
        };
        let opt = |v: Option<u32>| v.map_or("–".to_owned(), |v| v.to_string());
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{state}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{:.2}×</td><td>{}</td><td>{}</td><td>{}</td><td>",
            esc(&w.id),
            esc(&w.hostname),
            w.slots,
            opt(w.busy),
            opt(w.prefetched),
            w.leased,
            w.completed,
            w.failed,
            f64::from(w.speed_milli) / 1000.0,
            esc(&w.queues),
            esc(&w.version),
            esc(&utc(w.last_seen)),
        );
        if w.connected && !w.draining {
            action_form(&mut out, "drain", csrf, Field::Worker(&w.id), "Drain…", true);
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// This node's view of the cluster, and every member's release as it reported it (`None`: it did
/// not answer).
pub fn cluster_body(s: &NodeStatus, digest: u64, releases: &HashMap<u64, Option<v1::NodeSupport>>) -> String {
    let mut out = String::new();
    out.push_str("<dl class=\"kv\">");
    let mut kv = |k: &str, v: String| {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    };
    kv("This node", format!("{} ({})", s.id, s.role));
    kv("Leader", if s.leader_id == 0 { "none known".to_owned() } else { format!("node {}", s.leader_id) });
    kv("Term", s.term.to_string());
    kv("Commit / applied / last index", format!("{} / {} / {}", s.commit_index, s.applied_index, s.last_index));
    kv("Snapshot index, log entries", format!("{}, {}", s.snapshot_index, s.log_entries));
    kv("Raft storage", bytes(s.disk_bytes));
    if !s.is_leader {
        kv("Last heard from the leader", span(s.leader_heard_ms as i64));
    }
    kv("Ledger digest", format!("{digest:016x}"));
    kv("Version", format!("{} ({})", env!("CARGO_PKG_VERSION"), kiln_proto::metrics::COMMIT));
    out.push_str("</dl><h2>Members</h2>");
    out.push_str(
        "<table><thead><tr><th class=\"num\">Node</th><th>Address</th><th>Role</th><th class=\"num\">Matched index</th>\
         <th class=\"num\">Lag (entries)</th><th>Release</th><th>Log formats</th><th>Features</th></tr></thead><tbody>",
    );
    for (id, address, matched) in &s.members {
        let role = if *id == s.leader_id { "leader" } else { "follower" };
        let (matched, lag) = if s.is_leader {
            (matched.to_string(), s.last_index.saturating_sub(*matched).to_string())
        } else {
            ("–".to_owned(), "known on the leader".to_owned())
        };
        let (release, formats, features) = match releases.get(id).and_then(Option::as_ref) {
            Some(r) => (
                r.version.clone(),
                match r.emulated_format {
                    0 => format!("{}–{}", r.min_format, r.max_format),
                    n => format!("{}–{} (emulating {n})", r.min_format, r.max_format),
                },
                if r.features.is_empty() { "none".to_owned() } else { r.features.join(", ") },
            ),
            None => ("did not answer".to_owned(), "–".to_owned(), "–".to_owned()),
        };
        let _ = write!(
            out,
            "<tr><td class=\"num\">{id}</td><td class=\"mono\">{}</td><td>{role}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(address),
            esc(&matched),
            esc(&lag),
            esc(&release),
            esc(&formats),
            esc(&features)
        );
    }
    out.push_str("</tbody></table><p>Each node shows its own view; compare digests across nodes' dashboards (or `kiln cluster`) to check that the replicas agree.</p>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_the_first_line_of_the_error_cut_to_200_characters() {
        assert_eq!(reason_of(Some("decode: bad header\nat byte 12")), "decode: bad header");
        assert_eq!(reason_of(None), "");
        assert_eq!(reason_of(Some(&"x".repeat(300))).len(), 200);
    }
}
