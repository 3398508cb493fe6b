//! The dashboard's write actions — cancel a task, requeue or purge dead letters, drain a worker —
//! and the three
//! guards in front of them: the request must come from a page of this origin (`Origin`, else
//! `Referer`), carry this process's CSRF token (only its own pages know it), and be confirmed on a
//! second page that says what will happen. Without JavaScript all of it still works.

use std::fmt::Write as _;

use axum::http::HeaderMap;
use kiln_ledger::{Command, DeadLetterFilter, Outcome, TaskFilter, TaskState};
use kiln_types::{TaskId, WorkerId};
use serde::Deserialize;

use super::html::esc;

/// The form every action posts.
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub task: Option<u64>,
    /// Dead letters whose error contains this text; none means all of them.
    #[serde(default)]
    pub reason: Option<String>,
    /// The worker to drain.
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub confirmed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Requeue,
    Purge,
    Drain,
}

impl Action {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "cancel" => Some(Self::Cancel),
            "requeue" => Some(Self::Requeue),
            "purge" => Some(Self::Purge),
            "drain" => Some(Self::Drain),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Requeue => "requeue",
            Self::Purge => "purge",
            Self::Drain => "drain",
        }
    }

    /// The page an action's forms link back to.
    fn back(self, form: &ActionForm) -> String {
        match self {
            Self::Cancel => form.task.map_or("/ui/tasks".to_owned(), |t| format!("/ui/tasks/{t}")),
            Self::Drain => "/ui/workers".to_owned(),
            Self::Requeue | Self::Purge => "/ui/dead-letters".to_owned(),
        }
    }
}

/// Why an action was refused before anything was proposed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the request did not come from this dashboard (Origin {origin:?}, expected {expected:?})")]
    CrossOrigin { origin: String, expected: String },
    #[error("the request names no origin (neither Origin nor Referer): refused")]
    NoOrigin,
    #[error("the form's token is missing or stale: reload the page and try again")]
    BadToken,
    #[error("{0}")]
    BadForm(String),
    #[error(
        "this cluster runs with TLS and roles, and the dashboard cannot check for the admin role: it is \
         read-only. Use the kiln command with an admin certificate (kiln --ca … --cert … --key …)"
    )]
    NeedsAdmin,
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the origin of the request against its `Host`, then the CSRF token.
pub fn check(headers: &HeaderMap, form: &ActionForm, token: &str) -> Result<(), Refused> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let host = header("host").unwrap_or_default();
    let origin = match (header("origin"), header("referer")) {
        (Some(o), _) if o != "null" => o,
        (_, Some(r)) => {
            // scheme://host[:port] of the referring page.
            let after_scheme = r.find("://").map_or(0, |i| i + 3);
            let end = r[after_scheme..].find('/').map_or(r.len(), |i| after_scheme + i);
            r[..end].to_owned()
        }
        _ => return Err(Refused::NoOrigin),
    };
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    if host.is_empty() || origin_host != host {
        return Err(Refused::CrossOrigin { origin, expected: format!("http(s)://{host}") });
    }
    if !same_secret(&form.csrf, token) {
        return Err(Refused::BadToken);
    }
    Ok(())
}

/// What the action will do, as a command and in words for the confirmation page.
pub fn plan(action: Action, form: &ActionForm) -> Result<(Command, String), Refused> {
    let filter = || match form.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => DeadLetterFilter { error_contains: Some(r.to_owned()), ..Default::default() },
        _ => DeadLetterFilter { all: true, ..Default::default() },
    };
    let which = || match form.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => format!("the dead letters whose error contains “{r}”"),
        _ => "every dead letter".to_owned(),
    };
    Ok(match action {
        Action::Cancel => {
            let id = form.task.ok_or_else(|| Refused::BadForm("which task? the form names none".to_owned()))?;
            (
                Command::Cancel { task: TaskId(id) },
                format!("Cancel task {id}. A worker rendering it stops being waited for; the task will not run again."),
            )
        }
        Action::Requeue => (
            Command::RequeueDeadLetters { filter: filter() },
            format!("Requeue {}, each with a fresh set of attempts.", which()),
        ),
        Action::Purge => (
            Command::PurgeDeadLetters { filter: filter() },
            format!("Delete {} for good. Their counts stay; their history and errors are gone.", which()),
        ),
        Action::Drain => {
            let name = form.worker.as_deref().map(str::trim).unwrap_or_default();
            let worker = WorkerId::new(name.to_owned()).map_err(|e| Refused::BadForm(format!("which worker? {e}")))?;
            (
                Command::DrainWorker { worker },
                format!(
                    "Drain worker {name}. It is leased nothing more; the tasks it holds finish as usual. \
                     It takes work again once it registers anew (a restart or a reconnect)."
                ),
            )
        }
    })
}

/// How many dead letters `form` selects now (for the confirmation page).
pub fn affected(l: &kiln_ledger::Ledger, form: &ActionForm) -> usize {
    let reason = form.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    l.list(&TaskFilter { state: Some(TaskState::DeadLettered), ..Default::default() })
        .into_iter()
        .filter(|t| reason.is_none_or(|r| t.last_error.as_deref().is_some_and(|e| e.contains(r))))
        .count()
}

/// The confirmation page's body: the same form again, confirmed.
pub fn confirm_body(action: Action, form: &ActionForm, what: &str, count: Option<usize>, token: &str) -> String {
    let mut out = String::from("<div class=\"confirm\">");
    let _ = write!(out, "<p>{}</p>", esc(what));
    if let Some(n) = count {
        let _ = write!(out, "<p>That is <strong>{n}</strong> task{} right now.</p>", if n == 1 { "" } else { "s" });
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/ui/actions/{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"confirmed\" value=\"yes\">",
        action.name(),
        esc(token)
    );
    if let Some(t) = form.task {
        let _ = write!(out, "<input type=\"hidden\" name=\"task\" value=\"{t}\">");
    }
    if let Some(r) = &form.reason {
        let _ = write!(out, "<input type=\"hidden\" name=\"reason\" value=\"{}\">", esc(r));
    }
    if let Some(w) = &form.worker {
        let _ = write!(out, "<input type=\"hidden\" name=\"worker\" value=\"{}\">", esc(w));
    }
    let back = action.back(form);
    let _ = write!(
        out,
        "<button class=\"danger\" type=\"submit\">Yes, {}</button> <a href=\"{}\">No, go back</a></form></div>",
        action.name(),
        esc(&back)
    );
    out
}

/// The result page's body.
pub fn done_body(action: Action, form: &ActionForm, outcome: &Outcome) -> String {
    let what = match (action, outcome) {
        (_, Outcome::Count(n)) => format!(
            "{} {n} task{}.",
            if action == Action::Purge { "Purged" } else { "Requeued" },
            if *n == 1 { "" } else { "s" }
        ),
        (Action::Cancel, _) => format!("Task {} is cancelled.", form.task.unwrap_or_default()),
        (Action::Drain, _) => format!(
            "Worker {} is draining: it takes no new tasks. The Leased column shows when it is empty.",
            form.worker.as_deref().unwrap_or_default().trim()
        ),
        _ => "Done.".to_owned(),
    };
    let back = action.back(form);
    format!("<p>{}</p><p><a href=\"{}\">Back</a></p>", esc(&what), esc(&back))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn only_this_origin_with_the_token_may_act() {
        let form = ActionForm { csrf: "t0k3n".into(), ..Default::default() };
        let ok = headers(&[("host", "127.0.0.1:7451"), ("origin", "http://127.0.0.1:7451")]);
        assert_eq!(check(&ok, &form, "t0k3n"), Ok(()));
        let evil = headers(&[("host", "127.0.0.1:7451"), ("origin", "https://evil.example")]);
        assert!(matches!(check(&evil, &form, "t0k3n"), Err(Refused::CrossOrigin { .. })));
        let referer = headers(&[("host", "kiln:7451"), ("referer", "http://kiln:7451/ui/dead-letters")]);
        assert_eq!(check(&referer, &form, "t0k3n"), Ok(()));
        let none = headers(&[("host", "kiln:7451")]);
        assert_eq!(check(&none, &form, "t0k3n"), Err(Refused::NoOrigin));
        assert_eq!(check(&ok, &form, "other"), Err(Refused::BadToken));
        let empty = ActionForm::default();
        assert_eq!(check(&ok, &empty, "t0k3n"), Err(Refused::BadToken));
    }

    #[test]
    fn a_reason_selects_by_error_text_and_none_selects_all() {
        let by_reason = ActionForm { reason: Some("decode failed".into()), ..Default::default() };
        let (cmd, what) = plan(Action::Requeue, &by_reason).expect("plan");
        assert!(
            matches!(cmd, Command::RequeueDeadLetters { filter } if filter.error_contains.as_deref() == Some("decode failed") && !filter.all)
        );
        assert!(what.contains("decode failed"));
        let (cmd, _) = plan(Action::Purge, &ActionForm::default()).expect("plan");
        assert!(matches!(cmd, Command::PurgeDeadLetters { filter } if filter.all));
        assert!(plan(Action::Cancel, &ActionForm::default()).is_err());
        let page = confirm_body(
            Action::Purge,
            &ActionForm { reason: Some("<x>".into()), ..Default::default() },
            "w",
            Some(2),
            "tok",
        );
        assert!(page.contains("value=\"&lt;x&gt;\"") && page.contains("name=\"confirmed\" value=\"yes\""), "{page}");
    }

    #[test]
    fn a_drain_names_its_worker_and_goes_back_to_the_workers() {
        let form = ActionForm { worker: Some("render-07".into()), ..Default::default() };
        let (cmd, what) = plan(Action::Drain, &form).expect("plan");
        assert!(matches!(cmd, Command::DrainWorker { worker } if worker.as_str() == "render-07"));
        assert!(what.contains("render-07"));
        assert!(plan(Action::Drain, &ActionForm::default()).is_err(), "a drain must name a worker");
        let page = confirm_body(Action::Drain, &form, &what, None, "tok");
        assert!(
            page.contains("name=\"worker\" value=\"render-07\"") && page.contains("href=\"/ui/workers\""),
            "{page}"
        );
    }
}
