//! The heterogeneous-fleet scenario: how close a mixed fleet gets to the ideal makespan, with work
//! stealing on and off.
//!
//! Real workers (`crate::worker`) of different speeds (by default 1×, 2× and 4×, like a PE2950
//! beside an R620 beside a cloud pod) work for an embedded one-node scheduler: they pull with
//! `Want`, hold `prefetch` tasks per slot, list their unstarted leases in heartbeats, drop revoked
//! tasks that have not started, and "render" by sleeping `duration / speed`. Task
//! durations are heavy-tailed (Pareto, seeded, so both runs get the same tasks), which is what
//! makes the tail of a batch hard: one long task prefetched behind another on a slow worker is
//! exactly what stealing exists for.
//!
//! The lower bound on the makespan is the larger of total work over total speed (every slot busy
//! until the end) and the longest task on the fastest worker. The report gives the measured
//! makespan against it, per run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kiln_proto::v1;

use crate::worker::{self, Pace, Probe, Spec};

/// What the scenario needs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub tasks: u64,
    /// One simulated worker per entry, with that relative speed.
    pub speeds: Vec<f64>,
    pub slots: u32,
    pub prefetch: u32,
    /// Pareto scale (the shortest task, at 1×) and shape (smaller is heavier-tailed).
    pub min_ms: f64,
    pub alpha: f64,
    pub seed: u64,
}

/// SplitMix64: a deterministic stream from the seed, so both runs see the same durations.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Task durations at 1× speed, in milliseconds: Pareto(min_ms, alpha), capped at 100 × min_ms so
/// one sample cannot dominate a short run.
pub fn durations(o: &Options) -> Vec<f64> {
    (0..o.tasks)
        .map(|i| {
            let u =
                ((splitmix(o.seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407)) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            (o.min_ms / u.powf(1.0 / o.alpha)).min(o.min_ms * 100.0)
        })
        .collect()
}

/// The makespan no schedule can beat, in seconds.
pub fn lower_bound(o: &Options, durations: &[f64]) -> f64 {
    let total_speed: f64 = o.speeds.iter().sum::<f64>() * f64::from(o.slots);
    let fastest = o.speeds.iter().copied().fold(f64::MIN, f64::max);
    let work: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    (work / total_speed).max(longest / fastest) / 1000.0
}

/// Runs the scenario once against a fresh embedded scheduler; returns the report.
pub async fn run_once(o: &Options, steal: bool) -> anyhow::Result<serde_json::Value> {
    let temp = tempfile::tempdir()?;
    let opts = kiln_config::SchedulerOptions {
        data_dir: temp.path().join("ledger"),
        listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        heartbeat_interval: Duration::from_millis(250),
        max_live_tasks: o.tasks.max(1) * 2,
        work_stealing: steal,
        ..Default::default()
    };
    let scheduler = kiln_scheduler::start(&opts).await.context("starting the embedded scheduler")?;
    while scheduler.handle().status().await.map_or(true, |s| s.leader_id == 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let address = format!("http://{}", scheduler.grpc_addr());
    let durations = Arc::new(durations(o));

    // Everything is queued before the first worker connects, so the makespan is the fleet's.
    let mut client = kiln_proto::Client::new([address.clone()])?;
    for chunk in (0..o.tasks).collect::<Vec<_>>().chunks(1000) {
        let jobs = chunk
            .iter()
            .map(|i| v1::EncodeJob {
                request_id: format!("fleet-{i}"),
                asset_id: *i as i64,
                asset_guid: format!("fleet/{i}.wav"),
                derivative_assets: vec!["loudness".into()],
                ..Default::default()
            })
            .collect::<Vec<_>>();
        crate::sim::submit(&mut client, jobs).await?;
    }

    let probe = Arc::new(Probe::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (n, speed) in o.speeds.iter().enumerate() {
        let spec = Spec {
            tls: None,
            id: format!("sim-{n}-{speed}x"),
            schedulers: vec![address.clone()],
            slots: o.slots,
            prefetch: o.prefetch,
            auto_prefetch: false,
            speed: *speed,
            pace: Pace::PerTask { durations_ms: durations.clone(), speed: *speed },
        };
        workers.push(worker::spawn(spec, probe.clone(), stop_rx.clone())?);
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    while probe.accepted.load(Ordering::Relaxed) < o.tasks {
        if Instant::now() > deadline {
            anyhow::bail!("timed out: {} of {} tasks done", probe.accepted.load(Ordering::Relaxed), o.tasks);
        }
        if workers.iter().any(|w| w.is_finished()) {
            anyhow::bail!("a worker stopped early");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let makespan = started.elapsed().as_secs_f64();
    // Backup copies that lost may still be "rendering": the drain gives them back.
    let _ = stop_tx.send(true);
    for w in workers {
        w.await.context("a worker panicked")?.context("a worker failed")?;
    }
    let steals = scheduler
        .handle()
        .read(|l, _| l.steals_total())
        .await
        .map_err(|e| anyhow::anyhow!("reading the ledger: {e}"))?;
    scheduler.shutdown().await;
    let bound = lower_bound(o, &durations);
    Ok(serde_json::json!({
        "work_stealing": steal,
        "makespan_secs": makespan,
        "lower_bound_secs": bound,
        "over_bound_pct": (makespan / bound - 1.0) * 100.0,
        "steals": steals,
        "revoked_unstarted_dropped": probe.revoked_dropped.load(Ordering::Relaxed),
        "stale_completions": probe.stale.load(Ordering::Relaxed),
    }))
}

/// Both runs, stealing on then off, with the inputs.
pub async fn run(o: &Options) -> anyhow::Result<serde_json::Value> {
    let d = durations(o);
    let work: f64 = d.iter().sum();
    let longest = d.iter().copied().fold(0.0, f64::max);
    let on = run_once(o, true).await?;
    let off = run_once(o, false).await?;
    Ok(serde_json::json!({
        "tasks": o.tasks,
        "speeds": o.speeds,
        "slots_per_worker": o.slots,
        "prefetch": o.prefetch,
        "durations_ms": { "pareto_min": o.min_ms, "alpha": o.alpha, "seed": o.seed, "total_work_at_1x": work, "longest": longest },
        "runs": [on, off],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options { tasks: 1000, speeds: vec![1.0, 2.0, 4.0], slots: 2, prefetch: 1, min_ms: 10.0, alpha: 1.5, seed: 7 }
    }

    #[test]
    fn durations_are_seeded_heavy_tailed_and_capped() {
        let o = opts();
        let d = durations(&o);
        assert_eq!(d, durations(&o), "same seed, same tasks");
        assert!(d.iter().all(|x| *x >= 10.0 && *x <= 1000.0));
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let median = {
            let mut s = d.clone();
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        };
        assert!(mean > median * 1.3, "a heavy tail pulls the mean above the median: {mean} vs {median}");
    }

    #[test]
    fn the_bound_is_work_over_speed_or_the_longest_task() {
        let o = Options { tasks: 3, speeds: vec![1.0, 3.0], slots: 1, ..opts() };
        assert!((lower_bound(&o, &[400.0, 400.0, 400.0]) - 0.3).abs() < 1e-9);
        assert!((lower_bound(&o, &[4000.0, 1.0, 1.0]) - 4000.0 / 3.0 / 1000.0).abs() < 1e-9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_workers_render_every_task_no_faster_than_the_bound() {
        let o = Options { tasks: 40, speeds: vec![1.0, 4.0], slots: 2, prefetch: 1, min_ms: 5.0, alpha: 1.5, seed: 3 };
        let report = run_once(&o, true).await.expect("every task accepted");
        let makespan = report["makespan_secs"].as_f64().expect("makespan");
        let bound = report["lower_bound_secs"].as_f64().expect("bound");
        assert!(makespan >= bound, "the renders really slept: {makespan} s against a bound of {bound} s");
    }
}
