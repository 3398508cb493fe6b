//! What `/metrics` serves, assembled per scrape into one `prometheus-client` registry.
//!
//! Three kinds of series, told apart in every help text because they aggregate differently:
//! - **ledger series** (`kiln_scheduler_tasks`, `…_queue_tasks`, `…_fleet_slots`, …) are computed
//!   from the replicated ledger at scrape time. Every replica exports them with the same value (a
//!   follower may lag by a few entries), so a query takes the leader's
//!   (`kiln_scheduler_is_leader == 1`) or `max` — never `sum`, which would count each task once per
//!   replica.
//! - **session series** (`…_fleet_busy_slots`, the latency histograms of [`crate::kpi`]) come
//!   from the worker sessions, which only the leader serves: followers report zeros, so `sum` and
//!   `max` agree.
//! - **node series** (`…_is_leader`, `…_raft_*`, `process_*`) describe the replica itself and are
//!   read per instance.
//!
//! Label values are bounded by the number of states and queues, never by tasks. Rates are left to
//! `rate()`: nothing here is a per-minute figure.

use kiln_ledger::Ledger;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::handle::Handle;
use crate::node::{NodeStatus, ProposeError};
use crate::sessions::Hub;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    state: &'static str,
}

/// One read of the ledger and the node, taken on the node thread; the registry is built from it
/// outside.
struct Figures {
    live: [(&'static str, u64); 6],
    finished: [(&'static str, u64); 3],
    submitted: u64,
    attempts_failed: u64,
    steals: u64,
    queues: Vec<(String, [(&'static str, u64); 3])>,
    workers_connected: u64,
    workers_draining: u64,
    fleet_slots: u64,
    node: NodeStatus,
}

impl Figures {
    fn read(l: &Ledger, node: &NodeStatus) -> Self {
        let live = l.counts();
        let total = l.totals();
        let workers: Vec<_> = l.workers().into_iter().filter(|w| w.connected).collect();
        Self {
            live: [
                ("queued", live.queued),
                ("retrying", live.retrying),
                ("leased", live.leased),
                ("succeeded", live.succeeded),
                ("dead_lettered", live.dead_lettered),
                ("cancelled", live.cancelled),
            ],
            finished: [
                ("succeeded", total.succeeded),
                ("dead_lettered", total.dead_lettered),
                ("cancelled", total.cancelled),
            ],
            submitted: l.submitted_total(),
            attempts_failed: l.workers().iter().map(|w| w.failed).sum(),
            steals: l.steals_total(),
            queues: l
                .queues()
                .into_iter()
                .map(|q| {
                    let name = q.name.map(|n| n.to_string()).unwrap_or_else(|| "default".to_owned());
                    (name, [("ready", q.ready), ("retrying", q.retrying), ("leased", q.leased)])
                })
                .collect(),
            workers_connected: workers.len() as u64,
            workers_draining: workers.iter().filter(|w| w.draining).count() as u64,
            fleet_slots: workers.iter().map(|w| u64::from(w.spec.slots)).sum(),
            node: node.clone(),
        }
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)));
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstCounter::new(value));
}

const LEDGER: &str = "Ledger series: same on every replica; use the leader's or max, never sum.";

fn register_ledger(r: &mut Registry, f: &Figures) {
    let tasks = Family::<StateLabel, Gauge>::default();
    for (state, v) in f.live {
        tasks.get_or_create(&StateLabel { state }).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    r.register("kiln_scheduler_tasks", format!("Tasks held in the ledger, by state. {LEDGER}"), tasks);
    let finished = Family::<StateLabel, prometheus_client::metrics::counter::Counter>::default();
    for (state, v) in f.finished {
        finished.get_or_create(&StateLabel { state }).inc_by(v);
    }
    r.register(
        "kiln_scheduler_tasks_finished",
        format!("Tasks that reached a terminal state, garbage-collected ones included. {LEDGER}"),
        finished,
    );
    counter(r, "kiln_scheduler_tasks_submitted", &format!("Tasks ever admitted. {LEDGER}"), f.submitted);
    counter(
        r,
        "kiln_scheduler_task_attempts_failed",
        &format!("Failed attempts reported by workers (transient and permanent). {LEDGER}"),
        f.attempts_failed,
    );
    counter(
        r,
        "kiln_scheduler_steals",
        &format!("Unstarted tasks moved to idle workers by work stealing. {LEDGER}"),
        f.steals,
    );
    let queues = Family::<QueueLabels, Gauge>::default();
    for (queue, states) in &f.queues {
        for (state, v) in states {
            queues
                .get_or_create(&QueueLabels { queue: queue.clone(), state })
                .set(i64::try_from(*v).unwrap_or(i64::MAX));
        }
    }
    r.register("kiln_scheduler_queue_tasks", format!("Live tasks per queue and state. {LEDGER}"), queues);
    gauge(
        r,
        "kiln_scheduler_workers_connected",
        &format!("Workers with an open session. {LEDGER}"),
        f.workers_connected,
    );
    gauge(
        r,
        "kiln_scheduler_workers_draining",
        &format!("Connected workers that are draining. {LEDGER}"),
        f.workers_draining,
    );
    gauge(
        r,
        "kiln_scheduler_fleet_slots",
        &format!("Render slots across connected workers (per worker: kiln_worker_slots). {LEDGER}"),
        f.fleet_slots,
    );
}

fn register_node(r: &mut Registry, n: &NodeStatus) {
    gauge(r, "kiln_scheduler_is_leader", "1 on the Raft leader, 0 elsewhere.", u64::from(n.is_leader));
    gauge(r, "kiln_scheduler_node_id", "This replica's Raft id.", n.id);
    gauge(r, "kiln_scheduler_raft_term", "Current Raft term as this node knows it.", n.term);
    gauge(
        r,
        "kiln_scheduler_raft_members",
        "Members of the Raft configuration this node knows.",
        n.members.len() as u64,
    );
    gauge(r, "kiln_scheduler_raft_commit_index", "Raft commit index on this node.", n.commit_index);
    gauge(r, "kiln_scheduler_raft_applied_index", "Raft index applied to this node's ledger.", n.applied_index);
    gauge(r, "kiln_scheduler_raft_last_index", "Index of the last entry in this node's log.", n.last_index);
    gauge(r, "kiln_scheduler_raft_log_entries", "Entries in this node's log since its last snapshot.", n.log_entries);
    gauge(r, "kiln_scheduler_raft_disk_bytes", "Bytes of Raft storage on this node's disk.", n.disk_bytes);
    r.register(
        "kiln_scheduler_raft_leader_heard_seconds",
        "Seconds since this follower last heard from its leader (0 on the leader).",
        ConstGauge::new(n.leader_heard_ms as f64 / 1000.0),
    );
}

/// The OpenMetrics text of everything this node serves, or why the node could not be read.
pub async fn render(handle: &Handle, hub: &Hub) -> Result<String, ProposeError> {
    let figures = handle.read(Figures::read).await?;
    let live = hub.live();
    let mut r = Registry::default();
    register_ledger(&mut r, &figures);
    gauge(
        &mut r,
        "kiln_scheduler_fleet_busy_slots",
        "Render slots busy across the workers whose sessions this node serves (the leader; 0 on followers).",
        live.values().map(|w| u64::from(w.busy_slots)).sum(),
    );
    gauge(
        &mut r,
        "kiln_scheduler_fleet_prefetched_tasks",
        "Leased tasks not started yet, across the workers whose sessions this node serves (0 on followers).",
        live.values().map(|w| u64::from(w.buffered)).sum(),
    );
    hub.kpis.register(&mut r);
    register_node(&mut r, &figures.node);
    handle.raft_metrics().register(&mut r);
    kiln_proto::metrics::register_build_info(&mut r, "scheduler");
    kiln_proto::metrics::register_process(&mut r);
    Ok(kiln_proto::metrics::encode(&r))
}
