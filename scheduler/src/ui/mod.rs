//! The dashboard at `/ui` on the scheduler's HTTP port: server-rendered HTML, one stylesheet and
//! one small script compiled into the binary, live figures over Server-Sent Events, and a strict
//! Content-Security-Policy (nothing is loaded from anywhere but this origin; no inline script or
//! style). Every page reads this node's own copy of the ledger and says which node answered and
//! how fresh that copy is; write actions go through [`actions`]' guards and are proposed like any
//! client's command (so on a follower they are refused and name the leader).
//!
//! Layout: [`html`] (escaping, layout, times), [`overview`], [`tasks`], [`fleet`] (dead letters,
//! workers, cluster), [`chart`] (the last hour as SVG), [`sampler`] (that hour's history and the
//! live stream), [`actions`].

mod actions;
mod chart;
mod fleet;
mod html;
mod overview;
mod sampler;
mod tasks;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{Stream, StreamExt as _};

use self::html::{page, Section};
use crate::handle::Handle;
use crate::node::{now_ms, ProposeError};
use crate::sessions::Hub;

pub use sampler::Sampler;

/// Everything is same-origin; no inline script or style anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Clone)]
struct Ui {
    handle: Handle,
    hub: Arc<Hub>,
    sampler: Arc<Sampler>,
    /// This process's CSRF token: random, only ever written into its own pages.
    csrf: Arc<str>,
    /// What this node supports, for its own row of the cluster page.
    support: kiln_ledger::Support,
}

/// The `/ui` routes. `sampler` must be running ([`Sampler::run`]) for live updates and the chart.
pub fn router(handle: Handle, hub: Arc<Hub>, sampler: Arc<Sampler>, support: kiln_ledger::Support) -> Router {
    let csrf: Arc<str> = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()).into();
    Router::new()
        .route("/ui", get(overview_page))
        .route("/ui/", get(overview_page))
        .route("/ui/tasks", get(tasks_page))
        .route("/ui/tasks/{id}", get(task_page))
        .route("/ui/dead-letters", get(dead_letters_page))
        .route("/ui/workers", get(workers_page))
        .route("/ui/cluster", get(cluster_page))
        .route("/ui/chart.svg", get(chart_svg))
        .route("/ui/events", get(events))
        .route("/ui/actions/{action}", post(act))
        .route("/ui/static/app.css", get(|| asset("text/css; charset=utf-8", include_str!("assets/app.css"))))
        .route("/ui/static/app.js", get(|| asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))))
        .route("/ui/static/favicon.svg", get(|| asset("image/svg+xml", include_str!("assets/favicon.svg"))))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Ui { handle, hub, sampler, csrf, support })
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body)
}

/// A page about the node being unreachable or stopped, rather than a bare error.
fn unavailable(e: ProposeError) -> Response {
    let body = format!("<p class=\"error\">{}</p>", html::esc(&e.to_string()));
    (StatusCode::SERVICE_UNAVAILABLE, Html(page(Section::Overview, "Node unavailable", "", &body))).into_response()
}

async fn overview_page(State(ui): State<Ui>) -> Response {
    let now = now_ms();
    let live = ui.hub.live();
    match ui.handle.read(move |l, node| overview::Overview::read(l, node, &live, now)).await {
        Ok(o) => {
            let rate = ui.sampler.history().recent_rate();
            let body = overview::body(&o, rate);
            Html(page(Section::Overview, "Overview", &html::node_line(&o.node, now), &body)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn tasks_page(State(ui): State<Ui>, Query(query): Query<tasks::ListQuery>) -> Response {
    let now = now_ms();
    let filter = query.filter();
    let _turn = ui.handle.heavy_read_turn().await;
    let result = ui
        .handle
        .read(move |l, node| {
            let rows = filter.map(|f| l.list(&f).into_iter().map(tasks::Row::of).collect::<Vec<_>>());
            (rows, html::node_line(node, now))
        })
        .await;
    let (body, node) = match result {
        Ok((Ok(rows), node)) => (tasks::list_body(&query, &rows, None), node),
        Ok((Err(e), node)) => (tasks::list_body(&query, &[], Some(&e.to_string())), node),
        Err(e) => return unavailable(e),
    };
    Html(page(Section::Tasks, "Tasks", &node, &body)).into_response()
}

async fn task_page(State(ui): State<Ui>, Path(id): Path<String>) -> Response {
    let now = now_ms();
    let Ok(id) = id.parse::<u64>() else {
        let body = format!("<p class=\"error\">{} is not a task id.</p>", html::esc(&id));
        return (StatusCode::NOT_FOUND, Html(page(Section::Tasks, "No such task", "", &body))).into_response();
    };
    let csrf = ui.csrf.clone();
    let result = ui
        .handle
        .read(move |l, node| {
            let body = l.task(kiln_types::TaskId(id)).map(|t| tasks::task_body(t, now, &csrf));
            (body, html::node_line(node, now))
        })
        .await;
    match result {
        Ok((Some(body), node)) => Html(page(Section::Tasks, &format!("Task {id}"), &node, &body)).into_response(),
        Ok((None, node)) => {
            let body = "<p>This node holds no such task: it may never have existed, or it finished and was garbage-collected.</p>";
            (StatusCode::NOT_FOUND, Html(page(Section::Tasks, &format!("Task {id}"), &node, body))).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn dead_letters_page(State(ui): State<Ui>) -> Response {
    let now = now_ms();
    let _turn = ui.handle.heavy_read_turn().await;
    match ui.handle.read(move |l, node| (fleet::dead_letter_groups(l), html::node_line(node, now))).await {
        Ok(((groups, truncated), node)) => {
            let body = fleet::dead_letters_body(&groups, truncated, &ui.csrf);
            Html(page(Section::DeadLetters, "Dead letters", &node, &body)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn workers_page(State(ui): State<Ui>) -> Response {
    let now = now_ms();
    let live = ui.hub.live();
    match ui
        .handle
        .read(move |l, node| (fleet::worker_rows(l, &live), node.is_leader, html::node_line(node, now)))
        .await
    {
        Ok((rows, leader, node)) => {
            let body = fleet::workers_body(&rows, leader, &ui.csrf);
            Html(page(Section::Workers, "Workers", &node, &body)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn cluster_page(State(ui): State<Ui>) -> Response {
    let now = now_ms();
    let own = ui.support.clone();
    let read = ui.handle.read(move |l, node| {
        let mine = crate::convert::support_to_pb(&own, l.features());
        (node.clone(), l.digest(), html::node_line(node, now), mine)
    });
    match read.await {
        Ok((status, digest, node, mine)) => {
            // Every other member answers for its own release, at once; this one from memory.
            let members = status.members.iter().map(|(id, address, _)| (*id, address.clone())).collect();
            let reports = crate::upgrade::ask_all(status.id, members, mine, ui.handle.peer_credentials()).await;
            let releases = reports.into_iter().map(|r| (r.id, r.support)).collect();
            let body = fleet::cluster_body(&status, digest, &releases);
            Html(page(Section::Cluster, "Cluster", &node, &body)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn chart_svg(State(ui): State<Ui>) -> Response {
    let minutes = ui.sampler.history().minutes();
    let svg = chart::svg(&minutes, now_ms().div_euclid(60_000));
    ([(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")], svg).into_response()
}

/// One `snapshot` event per change of this node's figures (at most one a second).
async fn events(State(ui): State<Ui>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let updates = tokio_stream::wrappers::WatchStream::new(ui.sampler.latest.subscribe());
    let stream = updates.filter(|s| std::future::ready(!s.node.is_empty())).map(|s| {
        let data = serde_json::json!({ "node": s.node, "minute": s.minute, "values": s.values });
        Ok(Event::default().event("snapshot").data(data.to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn act(
    State(ui): State<Ui>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<actions::ActionForm>,
) -> Response {
    let now = now_ms();
    let node = ui.handle.status().await.map(|s| html::node_line(&s, now)).unwrap_or_default();
    let refused = |status: StatusCode, message: String| {
        let body = format!("<p class=\"error\">{}</p>", html::esc(&message));
        (status, Html(page(Section::Overview, "Action refused", &node, &body))).into_response()
    };
    let Some(action) = actions::Action::parse(&name) else {
        return refused(StatusCode::NOT_FOUND, format!("no action {name:?}"));
    };
    // The HTTP port has no client certificates: where the gRPC port demands the admin role, the
    // dashboard cannot tell an admin from anyone who reaches the port, so it only shows.
    if ui.handle.peer_credentials().is_tls() {
        return refused(StatusCode::FORBIDDEN, actions::Refused::NeedsAdmin.to_string());
    }
    if let Err(e) = actions::check(&headers, &form, &ui.csrf) {
        return refused(StatusCode::FORBIDDEN, e.to_string());
    }
    let (command, what) = match actions::plan(action, &form) {
        Ok(p) => p,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let section = match action {
        actions::Action::Cancel => Section::Tasks,
        actions::Action::Drain => Section::Workers,
        actions::Action::Requeue | actions::Action::Purge => Section::DeadLetters,
    };
    if form.confirmed.as_deref() != Some("yes") {
        let count = if matches!(action, actions::Action::Cancel | actions::Action::Drain) {
            None
        } else {
            let f = actions::ActionForm { reason: form.reason.clone(), ..Default::default() };
            let _turn = ui.handle.heavy_read_turn().await;
            ui.handle.read(move |l, _| actions::affected(l, &f)).await.ok()
        };
        let body = actions::confirm_body(action, &form, &what, count, &ui.csrf);
        return Html(page(section, "Confirm", &node, &body)).into_response();
    }
    if let kiln_ledger::Command::DrainWorker { worker } = &command {
        if let Err(status) = crate::api::drainable(&ui.handle, worker).await {
            return refused(StatusCode::CONFLICT, status.message().to_owned());
        }
    }
    match ui.handle.propose(command).await {
        Ok(Ok(outcome)) => {
            Html(page(section, "Done", &node, &actions::done_body(action, &form, &outcome))).into_response()
        }
        Ok(Err(rejection)) => refused(StatusCode::CONFLICT, rejection.to_string()),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
