//! `/metrics` (Prometheus text), `/healthz` (readiness: a leader is known) and `/livez` (liveness)
//! over plain HTTP, for scrapers and probes.
//!
//! Gauges are computed from the ledger at scrape time, so a scrape costs one read of the node and
//! label values are bounded by the number of states and queues, never by tasks. Latency
//! histograms and byte counters come from what this node's worker sessions observed
//! ([`crate::kpi`]), and heartbeat figures (busy slots, prefetched tasks) from its sessions.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use std::sync::Arc;

use crate::failure::Health;
use crate::handle::Handle;
use crate::node::now_ms;
use crate::sessions::Hub;

#[derive(Clone)]
struct Shared {
    handle: Handle,
    hub: Arc<Hub>,
    health: Health,
}

pub fn router(handle: Handle, hub: Arc<Hub>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(Shared { handle, hub, health })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    hub: Arc<Hub>,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle, hub, health)).with_graceful_shutdown(shutdown).await
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

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

async fn metrics(State(Shared { handle, hub, .. }): State<Shared>) -> impl IntoResponse {
    let now = now_ms();
    let live = hub.live();
    let body = handle
        .read(move |l, node| {
            let mut out = String::with_capacity(4096);
            family(&mut out, "kiln_steals_total", "counter", "Unstarted tasks moved to idle workers by work stealing.");
            let _ = writeln!(out, "kiln_steals_total {}", l.steals_total());
            family(
                &mut out,
                "kiln_busy_slots",
                "gauge",
                "Render slots busy across the workers connected to this node (from heartbeats).",
            );
            let _ = writeln!(out, "kiln_busy_slots {}", live.values().map(|w| u64::from(w.busy_slots)).sum::<u64>());
            family(
                &mut out,
                "kiln_prefetched_tasks",
                "gauge",
                "Leased tasks not started yet, across the workers connected to this node.",
            );
            let _ =
                writeln!(out, "kiln_prefetched_tasks {}", live.values().map(|w| u64::from(w.buffered)).sum::<u64>());
            let live = l.counts();
            let total = l.totals();
            family(&mut out, "kiln_tasks", "gauge", "Tasks held in the ledger by state.");
            for (state, v) in [
                ("queued", live.queued),
                ("leased", live.leased),
                ("succeeded", live.succeeded),
                ("dead_lettered", live.dead_lettered),
                ("cancelled", live.cancelled),
                ("retrying", live.retrying),
            ] {
                let _ = writeln!(out, "kiln_tasks{{state=\"{state}\"}} {v}");
            }
            family(
                &mut out,
                "kiln_tasks_finished_total",
                "counter",
                "Tasks that reached a terminal state, garbage-collected ones included.",
            );
            for (state, v) in
                [("succeeded", total.succeeded), ("dead_lettered", total.dead_lettered), ("cancelled", total.cancelled)]
            {
                let _ = writeln!(out, "kiln_tasks_finished_total{{state=\"{state}\"}} {v}");
            }
            family(&mut out, "kiln_tasks_submitted_total", "counter", "Tasks ever admitted.");
            let _ = writeln!(out, "kiln_tasks_submitted_total {}", l.submitted_total());
            let (completions, failures) = l.rates_per_minute(now);
            family(&mut out, "kiln_completions_per_minute", "gauge", "Successful completions over the last minute.");
            let _ = writeln!(out, "kiln_completions_per_minute {completions}");
            family(&mut out, "kiln_failures_per_minute", "gauge", "Failed attempts over the last minute.");
            let _ = writeln!(out, "kiln_failures_per_minute {failures}");
            family(&mut out, "kiln_queue_depth", "gauge", "Tasks per queue and state.");
            for q in l.queues() {
                let name = q.name.map(|n| n.to_string()).unwrap_or_default();
                let _ = writeln!(out, "kiln_queue_depth{{queue=\"{name}\",state=\"ready\"}} {}", q.ready);
                let _ = writeln!(out, "kiln_queue_depth{{queue=\"{name}\",state=\"retrying\"}} {}", q.retrying);
                let _ = writeln!(out, "kiln_queue_depth{{queue=\"{name}\",state=\"leased\"}} {}", q.leased);
            }
            family(
                &mut out,
                "kiln_task_attempts_failed_total",
                "counter",
                "Failed attempts reported by workers (transient and permanent).",
            );
            let _ =
                writeln!(out, "kiln_task_attempts_failed_total {}", l.workers().iter().map(|w| w.failed).sum::<u64>());
            let workers: Vec<_> = l.workers().into_iter().filter(|w| w.connected).collect();
            family(&mut out, "kiln_workers_connected", "gauge", "Workers with an open session.");
            let _ = writeln!(out, "kiln_workers_connected {}", workers.len());
            family(&mut out, "kiln_worker_slots", "gauge", "Render slots across connected workers.");
            let _ = writeln!(out, "kiln_worker_slots {}", workers.iter().map(|w| u64::from(w.spec.slots)).sum::<u64>());
            family(&mut out, "kiln_raft_term", "gauge", "Current Raft term.");
            let _ = writeln!(out, "kiln_raft_term {}", node.term);
            family(&mut out, "kiln_raft_is_leader", "gauge", "1 on the leader.");
            let _ = writeln!(out, "kiln_raft_is_leader {}", u8::from(node.is_leader));
            family(&mut out, "kiln_raft_commit_index", "gauge", "Raft commit index.");
            let _ = writeln!(out, "kiln_raft_commit_index {}", node.commit_index);
            family(&mut out, "kiln_raft_applied_index", "gauge", "Raft applied index.");
            let _ = writeln!(out, "kiln_raft_applied_index {}", node.applied_index);
            family(&mut out, "kiln_raft_log_entries", "gauge", "Entries in the Raft log since the last snapshot.");
            let _ = writeln!(out, "kiln_raft_log_entries {}", node.log_entries);
            out
        })
        .await;
    let body = body.map(|mut text| {
        hub.kpis.write(&mut text);
        text
    });
    match body {
        Ok(text) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
