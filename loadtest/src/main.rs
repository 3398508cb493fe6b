//! `kiln-loadtest`: drives a real scheduler with simulated submitters and workers and reports
//! throughput and latency.
//!
//! The workers are the real `kiln-worker` (session, leases, slots, outbox, drain) with a render
//! that sleeps for `--task-ms` and a storage that moves no bytes (see the `worker` module), so
//! the measured path is the one production takes: submit → Raft commit + fsync → lease →
//! assignment on the stream → completion → Raft commit + fsync → ack, and the scheduler is the
//! only thing measured.
//!
//! With `--embedded` it starts a one-node scheduler in-process on a temporary data dir; otherwise
//! it targets `--scheduler`. With `--cluster N` (or `--schedulers a,b,c`) it drives a replicated
//! cluster of real processes, optionally with chaos: see the `chaos` module.
//! `--fleet` runs the heterogeneous-fleet scenario instead (see
//! [`fleet`]): makespan against its lower bound, with work stealing on and off.

mod catalog;
mod chaos;
mod fleet;
mod sim;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::ToSocketAddrs as _;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Load-test a Kiln scheduler with simulated workers and submitters.")]
struct Args {
    /// Scheduler address (ignored with --embedded).
    #[arg(long, default_value = "http://127.0.0.1:7450")]
    scheduler: String,
    /// Start a one-node scheduler in this process (temporary data dir).
    #[arg(long)]
    embedded: bool,
    #[arg(long, default_value_t = 20_000)]
    tasks: u64,
    #[arg(long, default_value_t = 8)]
    workers: u32,
    #[arg(long, default_value_t = 8)]
    slots: u32,
    /// Tasks each worker holds ahead of its slots.
    #[arg(long, default_value_t = 1)]
    prefetch: u32,
    /// Workers size their prefetch from the measured round trip (at least --prefetch).
    #[arg(long)]
    auto_prefetch: bool,
    /// Jobs per Submit call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// Simulated render time per task.
    #[arg(long, default_value_t = 0)]
    task_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Put an emulated WAN between the workers and the scheduler: this round trip (e.g. 80ms)
    /// on every worker connection (submitters stay local). See `kiln_testkit::wan`.
    #[arg(long, value_parser = humantime::parse_duration)]
    wan_rtt: Option<Duration>,
    /// With --wan-rtt: the link's bandwidth in each direction, in Mbit/s (default: unlimited).
    #[arg(long, requires = "wan_rtt")]
    wan_mbit: Option<f64>,
    #[command(flatten)]
    cluster: chaos::ClusterArgs,
    /// Heterogeneous-fleet scenario: one simulated worker per `--speeds` entry, heavy-tailed
    /// task durations, run with work stealing on and then off (embedded scheduler).
    #[arg(long)]
    fleet: bool,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4", requires = "fleet")]
    speeds: Vec<f64>,
    /// Shortest task at 1× (Pareto scale), for --fleet.
    #[arg(long, default_value_t = 20.0, requires = "fleet")]
    min_ms: f64,
    /// Pareto shape for --fleet: smaller is heavier-tailed.
    #[arg(long, default_value_t = 1.5, requires = "fleet")]
    alpha: f64,
    #[arg(long, default_value_t = 1, requires = "fleet")]
    seed: u64,
    /// A catalog of this many lines through --cluster N: one batch from a generated manifest,
    /// sampling each scheduler's RSS, then the snapshot size, the rate and the total time.
    #[arg(long, default_value_t = 0)]
    catalog_lines: u64,
    /// With --catalog-lines: the same lines as plain Submit calls instead of a batch.
    #[arg(long)]
    plain: bool,
    /// With --catalog-lines: the batch's window (default: the scheduler's).
    #[arg(long, default_value_t = 0)]
    window: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The workers' reconnect warnings are expected under chaos; the report counts them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kiln_worker=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.catalog_lines > 0 {
        let load = catalog::Catalog {
            lines: args.catalog_lines,
            plain: args.plain,
            window: args.window,
            workers: args.workers,
            slots: args.slots,
            prefetch: args.prefetch,
            task_ms: args.task_ms,
            json: args.json,
        };
        return catalog::run(load, args.cluster).await;
    }
    if args.cluster.wanted() {
        let load = chaos::Load {
            tasks: args.tasks,
            workers: args.workers,
            slots: args.slots,
            prefetch: args.prefetch,
            batch: args.batch,
            submitters: args.submitters,
            task_ms: args.task_ms,
            json: args.json,
        };
        return chaos::run(load, args.cluster).await;
    }
    if args.fleet {
        let o = fleet::Options {
            tasks: args.tasks,
            speeds: args.speeds.clone(),
            slots: args.slots,
            prefetch: args.prefetch,
            min_ms: args.min_ms,
            alpha: args.alpha,
            seed: args.seed,
        };
        let report = fleet::run(&o).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let embedded = if args.embedded {
        let opts = kiln_config::SchedulerOptions {
            data_dir: temp.path().join("ledger"),
            listen: "127.0.0.1:0".parse()?,
            http_listen: "127.0.0.1:0".parse()?,
            max_live_tasks: args.tasks.max(1) * 2,
            ..Default::default()
        };
        let running = kiln_scheduler::start(&opts).await.context("starting the embedded scheduler")?;
        // A one-member cluster elects itself within a tick or two; measure from there.
        while running.handle().status().await.map_or(true, |s| s.leader_id == 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(running)
    } else {
        None
    };
    let address = match &embedded {
        Some(s) => format!("http://{}", s.grpc_addr()),
        None => args.scheduler.clone(),
    };
    // The workers reach the scheduler through the WAN, if there is one.
    let wan = match args.wan_rtt {
        Some(rtt) => {
            let target = address
                .trim_start_matches("http://")
                .to_socket_addrs()
                .context("the scheduler address for --wan-rtt")?
                .next()
                .context("the scheduler address resolves to nothing")?;
            let bytes_per_sec = args.wan_mbit.map(|m| (m * 1e6 / 8.0) as u64);
            let link = kiln_testkit::wan::Link { rtt, bytes_per_sec };
            Some(kiln_testkit::wan::WanProxy::start(target, link).await.context("starting the WAN proxy")?)
        }
        None => None,
    };
    let worker_address = wan.as_ref().map_or_else(|| address.clone(), |w| format!("http://{}", w.addr));
    let run_id = format!("lt-{}", std::process::id());
    let probe = Arc::new(worker::Probe::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let spec = worker::Spec {
            tls: None,
            id: format!("{run_id}-w{w}"),
            schedulers: vec![worker_address.clone()],
            slots: args.slots,
            prefetch: args.prefetch,
            auto_prefetch: args.auto_prefetch,
            speed: 1.0,
            pace: worker::Pace::Fixed(Duration::from_millis(args.task_ms)),
        };
        workers.push(worker::spawn(spec, probe.clone(), stop_rx.clone())?);
    }

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for _ in 0..args.submitters {
        let (next, address, run_id, probe) = (next.clone(), address.clone(), run_id.clone(), probe.clone());
        let (total, batch) = (args.tasks, args.batch as u64);
        submitters.push(tokio::spawn(async move {
            let mut client = kiln_proto::Client::new([address])?;
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= total {
                    return anyhow::Ok(());
                }
                let jobs = (from..(from + batch).min(total)).map(|i| crate::sim::job(&run_id, i)).collect::<Vec<_>>();
                let ids: Vec<String> = jobs.iter().map(|j| j.request_id.clone()).collect();
                crate::sim::submit(&mut client, jobs).await?;
                probe.submitted(ids);
            }
        }));
    }
    for s in submitters {
        s.await??;
    }
    let submit_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while probe.accepted.load(Ordering::Relaxed) < args.tasks {
        if Instant::now() > deadline {
            anyhow::bail!("timed out: {} of {} tasks acknowledged", probe.accepted.load(Ordering::Relaxed), args.tasks);
        }
        if workers.iter().any(|w| w.is_finished()) {
            anyhow::bail!("a worker stopped early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for w in workers {
        w.await.context("a worker panicked")?.context("a worker failed")?;
    }
    let mut latencies = probe.ack_latencies();
    latencies.sort_unstable();
    let report = serde_json::json!({
        "tasks": args.tasks,
        "workers": args.workers,
        "slots": args.slots,
        "prefetch": args.prefetch,
        "submit_secs": submit_secs,
        "submit_tasks_per_sec": args.tasks as f64 / submit_secs,
        "end_to_end_secs": total_secs,
        "end_to_end_tasks_per_sec": args.tasks as f64 / total_secs,
        "completion_ack_latency_ms": {
            "p50": percentile(&latencies, 0.50) as f64 / 1000.0,
            "p99": percentile(&latencies, 0.99) as f64 / 1000.0,
            "max": latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("tasks                 {}", args.tasks);
        println!("workers × slots       {} × {} (prefetch {})", args.workers, args.slots, args.prefetch);
        println!("submit                {:.0} tasks/s ({:.2} s)", args.tasks as f64 / submit_secs, submit_secs);
        println!(
            "end to end            {:.0} tasks/s ({:.2} s, submit + lease + ack, each durable)",
            args.tasks as f64 / total_secs,
            total_secs
        );
        println!(
            "completion→ack        p50 {:.1} ms  p99 {:.1} ms",
            percentile(&latencies, 0.50) as f64 / 1000.0,
            percentile(&latencies, 0.99) as f64 / 1000.0
        );
    }
    if let Some(s) = embedded {
        s.shutdown().await;
    }
    Ok(())
}
