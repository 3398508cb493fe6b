//! `/metrics` (OpenMetrics text), `/healthz` (readiness: a leader is known) and `/livez` (liveness)
//! over plain HTTP, for scrapers and probes, and the dashboard under `/ui` ([`crate::ui`]).
//!
//! What `/metrics` holds, and how each series aggregates across replicas, is in
//! [`crate::metrics`]; a scrape costs one read of the node. The port is served within
//! [`kiln_proto::http::Limits`]: a deadline for request heads and a cap on connections.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use std::sync::Arc;

use crate::failure::Health;
use crate::handle::Handle;
use crate::sessions::Hub;

#[derive(Clone)]
struct Shared {
    handle: Handle,
    hub: Arc<Hub>,
    health: Health,
}

pub fn router(
    handle: Handle,
    hub: Arc<Hub>,
    health: Health,
    sampler: Arc<crate::ui::Sampler>,
    support: kiln_ledger::Support,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(Shared { handle: handle.clone(), hub: hub.clone(), health })
        .merge(crate::ui::router(handle, hub, sampler, support))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    hub: Arc<Hub>,
    health: Health,
    support: kiln_ledger::Support,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let sampler = crate::ui::Sampler::new();
    let sampling = tokio::spawn(sampler.clone().run(handle.clone(), hub.clone()));
    let app = router(handle, hub, health, sampler, support);
    kiln_proto::http::serve(listener, app, kiln_proto::http::Limits::default(), shutdown).await;
    sampling.abort();
}

/// A node whose Raft thread died is neither ready nor alive, and says why (until the process exits).
fn failed(health: &Health) -> Option<(StatusCode, String)> {
    health.failure().map(|f| (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {f}\n")))
}

async fn healthz(State(Shared { handle, health, .. }): State<Shared>) -> impl IntoResponse {
    if let Some(failed) = failed(&health) {
        return failed;
    }
    match handle.status().await {
        Ok(s) if s.leader_id != 0 => {
            (StatusCode::OK, format!("ok: node {} leader {} term {}\n", s.id, s.leader_id, s.term))
        }
        Ok(s) => (StatusCode::SERVICE_UNAVAILABLE, format!("no leader known (node {}, term {})\n", s.id, s.term)),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Liveness, as opposed to readiness (`/healthz`): the node's loop answers, leader or not. An
/// election must not get a node restarted by its orchestrator.
async fn livez(State(Shared { handle, health, .. }): State<Shared>) -> impl IntoResponse {
    if let Some(failed) = failed(&health) {
        return failed;
    }
    match handle.status().await {
        Ok(s) => (StatusCode::OK, format!("alive: node {} term {}\n", s.id, s.term)),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn metrics(State(Shared { handle, hub, .. }): State<Shared>) -> impl IntoResponse {
    match crate::metrics::render(&handle, &hub).await {
        Ok(text) => (StatusCode::OK, [("content-type", kiln_proto::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
