//! `/healthz` and `/metrics` over plain HTTP, for probes and scrapers (optional: `http_listen`).
//!
//! `/healthz` answers 200 as long as the process serves, connected or not: a worker that lost its
//! scheduler keeps rendering what it holds, and a liveness probe must not kill it for that. The
//! body says whether a session is open and whether the worker drains. It answers 503 once a
//! render was abandoned past `render_timeout`: that render's thread cannot be taken back, so only
//! a restart returns the slot.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(metrics_text)).route("/healthz", get(healthz)).with_state(metrics)
}

/// Serves until `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    kiln_proto::http::serve(listener, router(metrics), kiln_proto::http::Limits::default(), shutdown).await;
}

async fn healthz(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    let abandoned = metrics.renders_abandoned();
    if abandoned > 0 {
        let body = format!("unhealthy: {abandoned} render(s) ran past render_timeout and still hold a slot's thread\n");
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let session = if metrics.is_connected() { "connected" } else { "disconnected, reconnecting" };
    let state = if metrics.is_draining() { "draining" } else { "running" };
    format!("ok: {state}, {session}, {} busy slots\n", metrics.busy_slots()).into_response()
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([("content-type", kiln_proto::metrics::CONTENT_TYPE)], metrics.render_text())
}
