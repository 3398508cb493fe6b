//! The overview page: counts now and all-time, progress and ETA, rate, the fleet, the queues, the
//! cluster role and term, and the last hour's chart. The same figures feed the live updates.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use kiln_ledger::{Ledger, StateCounts};
use kiln_types::WorkerId;

use super::html::{esc, span};
use crate::node::NodeStatus;
use crate::sessions::Live;

/// The figures of the overview, read in one go on the node thread.
#[derive(Debug, Clone)]
pub struct Overview {
    pub live: StateCounts,
    pub total: StateCounts,
    pub submitted: u64,
    pub attempts_failed: u64,
    pub workers: u64,
    pub slots: u64,
    pub busy: u64,
    pub queues: Vec<(String, u64, u64, u64)>,
    pub node: NodeStatus,
    /// The ledger's own count of the last minute (leader time), used until this node has a
    /// history of its own.
    pub ledger_rate: (u64, u64),
}

impl Overview {
    pub fn read(l: &Ledger, node: &NodeStatus, live: &HashMap<WorkerId, Live>, now: i64) -> Self {
        let workers: Vec<_> = l.workers().into_iter().filter(|w| w.connected).collect();
        Self {
            live: l.counts(),
            total: l.totals(),
            submitted: l.submitted_total(),
            attempts_failed: l.workers().iter().map(|w| w.failed).sum(),
            workers: workers.len() as u64,
            slots: workers.iter().map(|w| u64::from(w.spec.slots)).sum(),
            busy: live.values().map(|w| u64::from(w.busy_slots)).sum(),
            queues: l
                .queues()
                .into_iter()
                .map(|q| (q.name.map(|n| n.to_string()).unwrap_or_default(), q.ready, q.retrying, q.leased))
                .collect(),
            node: node.clone(),
            ledger_rate: l.rates_per_minute(now),
        }
    }

    /// Every live figure as text, keyed as the page's `data-live` attributes name them.
    /// `rate` is completions and failures per minute from this node's history, when it has one.
    pub fn values(&self, rate: Option<(f64, f64)>) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        let mut put = |k: &str, value: String| {
            v.insert(k.to_owned(), value);
        };
        let (l, t) = (&self.live, &self.total);
        put("live.queued", l.queued.to_string());
        put("live.retrying", l.retrying.to_string());
        put("live.leased", l.leased.to_string());
        put("live.succeeded", l.succeeded.to_string());
        put("live.dead_lettered", l.dead_lettered.to_string());
        put("live.cancelled", l.cancelled.to_string());
        put("total.submitted", self.submitted.to_string());
        put("total.succeeded", t.succeeded.to_string());
        put("total.dead_lettered", t.dead_lettered.to_string());
        put("total.cancelled", t.cancelled.to_string());
        put("total.attempts_failed", self.attempts_failed.to_string());
        let finished = t.terminal();
        let pct = (finished * 100).checked_div(self.submitted).unwrap_or(100);
        put("progress.pct", pct.to_string());
        put("progress.text", format!("{finished} of {} finished ({pct}%)", self.submitted));
        let (completions, failures) = rate.unwrap_or((self.ledger_rate.0 as f64, self.ledger_rate.1 as f64));
        put("rate.completions", format!("{completions:.1}"));
        put("rate.failures", format!("{failures:.1}"));
        let remaining = l.queued + l.leased;
        let eta = if remaining == 0 {
            "nothing left to do".to_owned()
        } else if completions <= 0.0 {
            "unknown (nothing completed lately)".to_owned()
        } else {
            span((remaining as f64 / completions * 60_000.0) as i64)
        };
        put("progress.eta", eta);
        put("workers.connected", self.workers.to_string());
        put("workers.slots", self.slots.to_string());
        put("workers.busy", self.busy.to_string());
        put("cluster.role", self.node.role.to_owned());
        put("cluster.term", self.node.term.to_string());
        put(
            "cluster.leader",
            if self.node.leader_id == 0 { "none".to_owned() } else { self.node.leader_id.to_string() },
        );
        for (name, ready, retrying, leased) in &self.queues {
            put(&format!("queue.{name}.ready"), ready.to_string());
            put(&format!("queue.{name}.retrying"), retrying.to_string());
            put(&format!("queue.{name}.leased"), leased.to_string());
        }
        v
    }
}

fn card(out: &mut String, values: &BTreeMap<String, String>, key: &str, label: &str) {
    let value = values.get(key).map_or("", String::as_str);
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\" data-live=\"{}\">{}</div></div>",
        esc(label),
        esc(key),
        esc(value)
    );
}

/// The overview's body.
pub fn body(o: &Overview, rate: Option<(f64, f64)>) -> String {
    let v = o.values(rate);
    let mut out = String::new();
    out.push_str("<h2>Now</h2><div class=\"cards\">");
    for (key, label) in [
        ("live.queued", "Queued"),
        ("live.retrying", "Waiting to retry"),
        ("live.leased", "Running (leased)"),
        ("live.succeeded", "Succeeded (held)"),
        ("live.dead_lettered", "Dead-lettered"),
        ("live.cancelled", "Cancelled (held)"),
    ] {
        card(&mut out, &v, key, label);
    }
    out.push_str("</div><h2>All time</h2><div class=\"cards\">");
    for (key, label) in [
        ("total.submitted", "Submitted"),
        ("total.succeeded", "Succeeded"),
        ("total.dead_lettered", "Dead-lettered"),
        ("total.cancelled", "Cancelled"),
        ("total.attempts_failed", "Failed attempts"),
    ] {
        card(&mut out, &v, key, label);
    }
    out.push_str("</div><h2>Progress</h2><div class=\"cards\">");
    let pct = v.get("progress.pct").map_or("0", String::as_str);
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"k\">Finished</div><div class=\"v\" data-live=\"progress.text\">{}</div>\
         <progress max=\"100\" value=\"{}\" data-live-value=\"progress.pct\"></progress></div>",
        esc(v.get("progress.text").map_or("", String::as_str)),
        esc(pct)
    );
    card(&mut out, &v, "progress.eta", "ETA at the current rate");
    card(&mut out, &v, "rate.completions", "Completions / min");
    card(&mut out, &v, "rate.failures", "Failed attempts / min");
    out.push_str("</div><h2>Fleet and cluster</h2><div class=\"cards\">");
    for (key, label) in [
        ("workers.connected", "Workers connected"),
        ("workers.slots", "Slots"),
        ("workers.busy", "Busy slots (leader's sessions)"),
        ("cluster.role", "This node's role"),
        ("cluster.term", "Raft term"),
        ("cluster.leader", "Leader node"),
    ] {
        card(&mut out, &v, key, label);
    }
    out.push_str("</div><h2>Completions and failed attempts per minute, last hour</h2>");
    out.push_str(
        "<img class=\"chart\" src=\"/ui/chart.svg\" width=\"900\" height=\"240\" \
         alt=\"Completions and failed attempts per minute over the last hour, as this node saw them\">",
    );
    out.push_str("<h2>Queues</h2>");
    if o.queues.is_empty() {
        out.push_str("<p>No live tasks in any queue.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Queue</th><th class=\"num\">Ready</th><th class=\"num\">Waiting to retry</th>\
             <th class=\"num\">Leased</th></tr></thead><tbody>",
        );
        for (name, ..) in &o.queues {
            let _ = write!(
                out,
                "<tr><td><a href=\"/ui/tasks?queue={q}\">{n}</a></td>",
                q = esc(&super::html::url_component(name)),
                n = esc(name)
            );
            for col in ["ready", "retrying", "leased"] {
                let key = format!("queue.{name}.{col}");
                let _ = write!(
                    out,
                    "<td class=\"num\" data-live=\"{}\">{}</td>",
                    esc(&key),
                    esc(v.get(&key).map_or("", String::as_str))
                );
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out
}
