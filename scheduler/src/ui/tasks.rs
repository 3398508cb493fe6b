//! The task list (filters and cursor pagination) and one task's page (job, attempts, history,
//! outputs, analysis).

use std::fmt::Write as _;

use kiln_ledger::{EventKind, Task, TaskFilter, TaskState};
use kiln_types::QueueName;
use serde::Deserialize;

use super::html::{bytes, esc, url_component, utc};

pub const PAGE_SIZE: usize = 50;
const STATES: [TaskState; 5] =
    [TaskState::Queued, TaskState::Leased, TaskState::Succeeded, TaskState::DeadLettered, TaskState::Cancelled];

/// The list's query string: every field optional, as a browser sends an unfilled form.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub after: String,
}

/// A query a person got wrong, said back to them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(String);

impl ListQuery {
    pub fn filter(&self) -> Result<TaskFilter, BadQuery> {
        let state = match self.state.as_str() {
            "" => None,
            s => Some(
                STATES
                    .into_iter()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| BadQuery(format!("unknown state {s:?}")))?,
            ),
        };
        let queue = match self.queue.trim() {
            "" => None,
            q => Some(QueueName::new(q).map_err(|e| BadQuery(format!("queue: {e}")))?),
        };
        let release_id = match self.release.trim() {
            "" => None,
            r => Some(r.parse().map_err(|_| BadQuery(format!("release must be a number, got {r:?}")))?),
        };
        let after = match self.after.trim() {
            "" => None,
            a => Some(kiln_types::TaskId(a.parse().map_err(|_| BadQuery(format!("bad cursor {a:?}")))?)),
        };
        // One more than a page, to know whether there is a next one.
        Ok(TaskFilter { state, queue, release_id, after, limit: PAGE_SIZE + 1 })
    }

    fn link(&self, after: Option<u64>) -> String {
        let mut q = format!(
            "/ui/tasks?state={}&queue={}&release={}",
            url_component(&self.state),
            url_component(&self.queue),
            url_component(&self.release)
        );
        if let Some(a) = after {
            let _ = write!(q, "&after={a}");
        }
        q
    }
}

/// One row of the list, copied out of the ledger.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: u64,
    pub request_id: String,
    pub asset_guid: String,
    pub queue: String,
    pub release_id: i64,
    pub state: TaskState,
    pub attempts: u32,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

impl Row {
    pub fn of(t: &Task) -> Self {
        Self {
            id: t.id.0,
            request_id: t.job.request_id.to_string(),
            asset_guid: t.job.asset_guid.to_string(),
            queue: t.job.queue.to_string(),
            release_id: t.job.release_id,
            state: t.state,
            attempts: t.attempts,
            updated_at: t.updated_at,
            last_error: t.last_error.clone(),
        }
    }
}

fn selected(a: &str, b: &str) -> &'static str {
    if a == b {
        " selected"
    } else {
        ""
    }
}

/// The list page's body for `rows` (at most one more than a page) under `query`.
pub fn list_body(query: &ListQuery, rows: &[Row], error: Option<&str>) -> String {
    let mut out = String::new();
    out.push_str("<form class=\"filters\" method=\"get\" action=\"/ui/tasks\"><label>State<select name=\"state\">");
    let _ = write!(out, "<option value=\"\"{}>any</option>", selected(&query.state, ""));
    for s in STATES {
        let _ = write!(out, "<option value=\"{0}\"{1}>{0}</option>", s.as_str(), selected(&query.state, s.as_str()));
    }
    let _ = write!(
        out,
        "</select></label><label>Queue<input name=\"queue\" value=\"{}\" placeholder=\"any\"></label>\
         <label>Release<input name=\"release\" value=\"{}\" inputmode=\"numeric\" placeholder=\"any\"></label>\
         <button type=\"submit\">Filter</button></form>",
        esc(&query.queue),
        esc(&query.release)
    );
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
        return out;
    }
    let page = &rows[..rows.len().min(PAGE_SIZE)];
    if page.is_empty() {
        out.push_str("<p>No task matches.</p>");
        return out;
    }
    out.push_str(
        "<table><thead><tr><th class=\"num\">Task</th><th>Request</th><th>Asset</th><th>Queue</th>\
         <th class=\"num\">Release</th><th>State</th><th class=\"num\">Attempts</th><th>Updated</th><th>Last error</th>\
         </tr></thead><tbody>",
    );
    for r in page {
        let _ = write!(
            out,
            "<tr><td class=\"num\"><a href=\"/ui/tasks/{id}\">{id}</a></td><td class=\"mono\">{}</td><td class=\"mono\">{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"state-{st}\">{st}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.request_id),
            esc(&r.asset_guid),
            esc(&r.queue),
            r.release_id,
            r.attempts,
            esc(&utc(r.updated_at)),
            esc(r.last_error.as_deref().unwrap_or("")),
            id = r.id,
            st = r.state.as_str(),
        );
    }
    out.push_str("</tbody></table><div class=\"pager\">");
    if query.after.trim().is_empty() {
        out.push_str("<span>First page</span>");
    } else {
        let _ = write!(out, "<a href=\"{}\">First page</a>", esc(&query.link(None)));
    }
    if rows.len() > PAGE_SIZE {
        if let Some(last) = page.last() {
            let _ = write!(out, "<a href=\"{}\" rel=\"next\">Next page</a>", esc(&query.link(Some(last.id))));
        }
    }
    out.push_str("</div>");
    out
}

/// The attempt a person asks about: for a succeeded task the one that succeeded, otherwise the
/// attempts used so far.
fn attempt_line(t: &Task) -> String {
    let max = t.job.max_attempts;
    if t.state == TaskState::Succeeded {
        if let Some(ev) = t.history.iter().rev().find(|e| e.kind == EventKind::Succeeded) {
            return format!("succeeded on attempt {} of {max}", ev.attempt.max(1));
        }
    }
    format!("{} of {max} used", t.attempts)
}

/// The analysis figures (BPM, key, loudness, …) from the result's metadata, one row per value.
fn analysis(metadata_json: &str) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(metadata_json) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (renderer, value) in map {
        match value {
            serde_json::Value::Object(fields) => {
                for (k, v) in fields {
                    if !(v.is_object() || v.is_array()) {
                        rows.push((format!("{renderer} · {k}"), scalar(&v)));
                    }
                }
            }
            v if !v.is_array() => rows.push((renderer, scalar(&v))),
            _ => {}
        }
    }
    rows
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => {
            n.as_f64().map_or_else(|| n.to_string(), |f| format!("{}", (f * 100.0).round() / 100.0))
        }
        other => other.to_string(),
    }
}

/// A task's page body; `csrf` goes into the cancel form.
pub fn task_body(t: &Task, now: i64, csrf: &str) -> String {
    let mut out = String::new();
    let kv = |out: &mut String, k: &str, v: &str| {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    };
    out.push_str("<dl class=\"kv\">");
    let _ = write!(out, "<dt>State</dt><dd class=\"state-{0}\">{0}</dd>", t.state.as_str());
    kv(&mut out, "Attempts", &attempt_line(t));
    kv(&mut out, "Request", t.job.request_id.as_str());
    kv(&mut out, "Asset", &format!("{} (asset {}, release {})", t.job.asset_guid, t.job.asset_id, t.job.release_id));
    kv(&mut out, "Renderers", &t.job.derivative_assets.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "));
    kv(&mut out, "Queue and priority", &format!("{} · priority {}", t.job.queue, t.job.priority));
    kv(&mut out, "Submitted", &utc(t.submitted_at));
    kv(&mut out, "Updated", &utc(t.updated_at));
    if let Some(w) = &t.worker {
        kv(&mut out, "Worker", w.as_str());
    }
    if let Some(until) = t.lease_expires_at {
        kv(&mut out, "Lease until", &format!("{} (in {})", utc(until), super::html::span(until - now)));
    }
    if t.state == TaskState::Queued && t.ready_at > now {
        kv(&mut out, "Retry at", &utc(t.ready_at));
    }
    out.push_str("</dl>");
    if let Some(e) = &t.last_error {
        let _ = write!(out, "<h2>Last error</h2><pre id=\"last-error\">{}</pre>", esc(e));
    }
    if !t.state.is_terminal() {
        let _ = write!(
            out,
            "<h2>Actions</h2><form class=\"inline\" method=\"post\" action=\"/ui/actions/cancel\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"task\" value=\"{}\">\
             <button class=\"danger\" type=\"submit\">Cancel this task…</button></form>",
            esc(csrf),
            t.id.0
        );
    }
    if let Some(result) = &t.result {
        let rows = analysis(&result.metadata_json);
        if !rows.is_empty() {
            out.push_str("<h2>Analysis</h2><dl class=\"kv\" id=\"analysis\">");
            for (k, v) in rows {
                kv(&mut out, &k, &v);
            }
            out.push_str("</dl>");
        }
        out.push_str(
            "<h2>Outputs</h2><table><thead><tr><th>Renderer</th><th>File</th><th class=\"num\">Size</th>\
             <th>SHA-256</th><th>Type</th></tr></thead><tbody>",
        );
        for o in &result.outputs {
            // Only web URLs become links: a file:// or s3:// URI means nothing to a browser.
            let file = if o.uri.starts_with("https://") || o.uri.starts_with("http://") {
                format!("<a href=\"{0}\" rel=\"noreferrer noopener\">{0}</a>", esc(&o.uri))
            } else {
                esc(&o.uri)
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"mono\">{file}</td><td class=\"num\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                esc(o.renderer.as_str()),
                esc(&bytes(o.bytes)),
                esc(&o.sha256),
                esc(&o.content_type)
            );
        }
        out.push_str("</tbody></table>");
        if !result.manifest_uri.is_empty() {
            let _ = write!(out, "<p>Manifest: <span class=\"mono\">{}</span></p>", esc(&result.manifest_uri));
        }
    }
    out.push_str(
        "<h2>History</h2><table><thead><tr><th>Time</th><th>Event</th><th>Worker</th><th class=\"num\">Attempt</th>\
         <th>Detail</th></tr></thead><tbody>",
    );
    for ev in &t.history {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&utc(ev.at)),
            ev.kind.as_str(),
            esc(ev.worker.as_ref().map_or("", |w| w.as_str())),
            ev.attempt,
            esc(&super::html::detail_with_times(&t.event_detail(ev)))
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_rows_come_from_the_metadata_and_bad_json_gives_none() {
        let rows = analysis(
            r#"{"bpm": {"bpm": 120.004, "confidence": 0.9}, "key": {"key": "A minor"}, "waveform": {"points": [1, 2]}}"#,
        );
        assert_eq!(
            rows,
            vec![
                ("bpm · bpm".to_owned(), "120".to_owned()),
                ("bpm · confidence".to_owned(), "0.9".to_owned()),
                ("key · key".to_owned(), "A minor".to_owned()),
            ]
        );
        assert!(analysis("not json").is_empty());
    }

    #[test]
    fn a_bad_filter_is_said_back_and_a_good_one_asks_for_one_row_more_than_a_page() {
        let q = ListQuery { state: "sleeping".into(), ..Default::default() };
        assert!(q.filter().is_err_and(|e| e.to_string().contains("sleeping")));
        let q = ListQuery { state: "queued".into(), release: "7".into(), after: "40".into(), ..Default::default() };
        let f = q.filter().expect("filter");
        assert_eq!(
            (f.state, f.release_id, f.after.map(|a| a.0), f.limit),
            (Some(TaskState::Queued), Some(7), Some(40), PAGE_SIZE + 1)
        );
        assert_eq!(q.link(Some(90)), "/ui/tasks?state=queued&queue=&release=7&after=90");
    }
}
