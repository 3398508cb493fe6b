//! The compose cluster of `deploy/compose.yaml` (three schedulers, two workers, a shared store)
//! put through network and process failures on a real Docker network. Every scenario ends with
//! `kiln audit` clean — each task in exactly one terminal state, succeeded once, the three ledgers
//! identical — and every task's outputs in the store.
//!
//! Run by `deploy/tests/run.sh` (from `.ci/run` when `docker info` works), which builds the image
//! first. By hand: `TAG=kiln:test PROFILE=dev deploy/build-image.sh` then
//! `cargo test -p kiln-deploy-tests -- --ignored --test-threads 1`.

use std::time::Duration;

use kiln_deploy_tests::{docker, wait_for, Cluster};

fn role(c: &Cluster, service: &str) -> Option<String> {
    let view = c.kiln_json(&["cluster"])?;
    let id: u64 = service.strip_prefix("scheduler-")?.parse().ok()?;
    let member = view["members"].as_array()?.iter().find(|m| m["id"].as_u64() == Some(id))?.clone();
    member["role"].as_str().map(str::to_owned)
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (`2026-11-29T16:03:14.152791558Z`).
fn time_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Tasks a worker holds now, by id.
fn leased_to(c: &Cluster, worker: &str) -> Vec<u64> {
    let Some(page) = c.kiln_json(&["tasks", "--state", "leased", "--limit", "10000"]) else { return Vec::new() };
    page["tasks"]
        .as_array()
        .map(|ts| ts.iter().filter(|t| t["worker"] == worker).filter_map(|t| t["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// (a) The leader is disconnected from the network mid-run: the other two elect a new leader and
/// the workers follow it; reconnected, the old leader rejoins as a follower and its ledger ends
/// identical to the others'.
#[test]
#[ignore = "needs a Docker engine and the kiln:test image; run by deploy/tests/run.sh"]
fn the_leader_cut_off_from_the_network_is_replaced_and_rejoins_as_a_follower() {
    let mut c = Cluster::up("leader-cut");
    c.submit("a", 400);
    c.wait_finished(40, Duration::from_secs(180));
    let old = c.wait_for_leader(&[], Duration::from_secs(30));
    c.disconnect(&old);
    let new = c.wait_for_leader(&[&old], Duration::from_secs(60));
    assert_ne!(new, old);
    // Work goes on under the new leader while the old one is away: tasks submitted to it now
    // (the first batch may be done already on a fast machine) are leased and rendered.
    let before = c.finished().unwrap_or(0);
    c.submit("a-after", 40);
    c.wait_finished(before + 40, Duration::from_secs(120));
    c.connect(&old);
    wait_for("the old leader to rejoin as a follower", Duration::from_secs(60), || {
        role(&c, &old).as_deref() == Some("follower")
    });
    c.audit();
}

/// (b) A worker is cut off for longer than its lease: its leases lapse and the other worker
/// renders those tasks; when it comes back its late completions are deduplicated.
#[test]
#[ignore = "needs a Docker engine and the kiln:test image; run by deploy/tests/run.sh"]
fn a_worker_cut_off_longer_than_its_lease_loses_its_tasks_to_the_other() {
    let mut c = Cluster::up("worker-cut");
    c.submit("b", 300);
    c.wait_finished(30, Duration::from_secs(180));
    let mut held = Vec::new();
    wait_for("worker-1 to hold leases", Duration::from_secs(30), || {
        held = leased_to(&c, "worker-1");
        !held.is_empty()
    });
    c.disconnect("worker-1");
    // Lease TTL 6 s; well past it, none of those tasks may still be leased to worker-1.
    std::thread::sleep(Duration::from_secs(16));
    let still = leased_to(&c, "worker-1");
    let stranded: Vec<_> = held.iter().filter(|id| still.contains(id)).collect();
    assert!(stranded.is_empty(), "tasks still leased to the cut-off worker: {stranded:?}\n{}", c.logs());
    c.connect("worker-1");
    c.audit();
}

/// (c) Every scheduler restarted one after the other, then every worker, while tasks run.
#[test]
#[ignore = "needs a Docker engine and the kiln:test image; run by deploy/tests/run.sh"]
fn a_rolling_restart_of_schedulers_then_workers_under_load_loses_nothing() {
    let mut c = Cluster::up("rolling");
    c.submit("c", 500);
    c.wait_finished(30, Duration::from_secs(180));
    for s in ["scheduler-1", "scheduler-2", "scheduler-3"] {
        c.restart(s, Duration::from_secs(20));
        wait_for("all three schedulers to answer again", Duration::from_secs(60), || {
            c.kiln_json(&["cluster"]).is_some_and(|v| {
                v["members"].as_array().is_some_and(|ms| ms.len() == 3 && ms.iter().all(|m| m["reachable"] == true))
            })
        });
    }
    for w in ["worker-1", "worker-2"] {
        let before = c.finished().unwrap_or(0);
        c.restart(w, Duration::from_secs(60));
        if (before as usize) < c.submitted() {
            c.wait_finished(before + 5, Duration::from_secs(120));
        }
    }
    c.audit();
}

/// (d) `docker kill` (SIGKILL) of a worker mid-render; it is started again later. Also measures
/// the cold start: container start to its first lease.
#[test]
#[ignore = "needs a Docker engine and the kiln:test image; run by deploy/tests/run.sh"]
fn a_worker_killed_mid_render_loses_nothing() {
    let mut c = Cluster::up("worker-kill");
    c.submit("d", 300);
    c.wait_finished(30, Duration::from_secs(180));
    wait_for("worker-1 to hold leases", Duration::from_secs(30), || !leased_to(&c, "worker-1").is_empty());
    c.kill("worker-1");
    let before = c.finished().unwrap_or(0);
    // Enough work that the other worker goes on alone, and cannot finish it all before worker-1
    // is back. Submitted now: 300 short tasks can all be done by the time the kill lands.
    c.submit("d-more", 400);
    c.wait_finished(before + 20, Duration::from_secs(120));
    c.start("worker-1");
    wait_for("worker-1's first lease after its restart", Duration::from_secs(60), || {
        c.service_logs("worker-1").matches("first lease").count() >= 2
    });
    // Docker's own clocks: when the container started, and when it logged its first lease.
    let started_at = docker(&["inspect", "-f", "{{.State.StartedAt}}", &c.container("worker-1")]);
    let logs = c.service_logs("worker-1");
    let line = logs.lines().rfind(|l| l.contains("first lease")).unwrap_or_default();
    let logged_at = line.split_whitespace().find(|w| w.contains('T') && w.ends_with('Z')).unwrap_or_default();
    match (time_of_day(&started_at), time_of_day(logged_at)) {
        (Some(a), Some(b)) => {
            println!("cold start: container start to first lease {:.0} ms", (b - a).rem_euclid(86_400.0) * 1000.0)
        }
        _ => println!("cold start: could not read the timestamps ({started_at:?}, {line:?})"),
    }
    c.audit();
}
