//! Load against a replicated cluster, with chaos: `--cluster 3` starts three `kiln scheduler`
//! processes on loopback (or `--schedulers a,b,c` targets running ones), simulated workers follow
//! the leader across failovers, and `--chaos-every N` kills (SIGKILL) or pauses (SIGSTOP) the
//! leader or a random node every N seconds, bringing it back after `--chaos-down`.
//!
//! The workers are the real worker (`crate::worker`): a session that ends goes to the leader named
//! in `kiln-leader` (or the next address), says `Hello` with the leases it still holds, and
//! re-sends every report not yet acknowledged. So the end of a run says whether the cluster and
//! the worker that ships together lost, duplicated or stranded anything — the audit reads every
//! task back.
//!
//! ```text
//!  submitters ──Submit──▶ ┌ node 1 ┐
//!  workers ◀─Assign/Ack── │ node 2 │ ◀── chaos: kill -9 / SIGSTOP, restart
//!          ──Completed──▶ └ node 3 ┘
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kiln_proto::{v1, Credentials};

use crate::worker::{self, Probe, Spec};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Leader,
    Random,
}

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Start this many `kiln scheduler` processes on loopback and drive them.
    #[arg(long, default_value_t = 0)]
    pub cluster: u64,
    /// Addresses of a running cluster (comma-separated) instead of --cluster.
    #[arg(long, value_delimiter = ',')]
    pub schedulers: Vec<String>,
    /// The `kiln` binary for --cluster (default: `kiln` next to this executable).
    #[arg(long)]
    pub kiln_bin: Option<PathBuf>,
    /// Keep the nodes' data and logs here (default: a temporary directory).
    #[arg(long)]
    pub cluster_dir: Option<PathBuf>,
    /// Raft tick of spawned nodes, in milliseconds (election timeout is 10–20 ticks).
    #[arg(long, default_value_t = 100)]
    pub raft_tick_ms: u64,
    /// Raft entries between snapshots on spawned nodes.
    #[arg(long, default_value_t = 20_000)]
    pub snapshot_every: u64,
    /// Group-commit window of spawned nodes, in milliseconds (`batch_window`; default: theirs).
    #[arg(long)]
    pub batch_window_ms: Option<u64>,
    /// Kill or pause a node every this many seconds (0: no chaos). Needs --cluster.
    #[arg(long, default_value_t = 0.0)]
    pub chaos_every: f64,
    /// Which node chaos hits.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    pub chaos_target: Target,
    /// SIGSTOP the node (a partition, as far as the others can tell) instead of SIGKILL.
    #[arg(long)]
    pub chaos_pause: bool,
    /// How long a killed or paused node stays down, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub chaos_down: f64,
    /// Seed for choosing random targets.
    #[arg(long, default_value_t = 1)]
    pub chaos_seed: u64,
    /// Run the spawned nodes with mutual TLS: `kiln tls init` writes the certificates, workers
    /// present theirs (ids `worker-1` …), submitters and the audit the admin's. Needs --cluster.
    #[arg(long, requires = "cluster")]
    pub tls: bool,
}

impl ClusterArgs {
    pub fn wanted(&self) -> bool {
        self.cluster > 0 || !self.schedulers.is_empty()
    }
}

/// The load itself, as main's options give it.
pub struct Load {
    pub tasks: u64,
    pub workers: u32,
    pub slots: u32,
    pub prefetch: u32,
    pub batch: usize,
    pub submitters: usize,
    pub task_ms: u64,
    pub json: bool,
}

/// A spawned scheduler node.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) address: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    binary: PathBuf,
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = tokio::process::Command::new(&self.binary)
            .arg("scheduler")
            .arg("--config")
            .arg(&self.config)
            .env("KILN_LOG", "warn,kiln_scheduler=info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on a child we own with a valid signal has no memory effects.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    pub(crate) async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Below the ephemeral range, so a killed node's port is still free when it restarts.
fn free_port() -> anyhow::Result<u16> {
    Ok(kiln_testkit::free_port())
}

fn kiln_binary(args: &ClusterArgs) -> anyhow::Result<PathBuf> {
    let binary = match &args.kiln_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("kiln"),
    };
    anyhow::ensure!(binary.exists(), "no kiln binary at {} (build it, or pass --kiln-bin)", binary.display());
    Ok(binary)
}

/// With `--tls`: the directory of certificates `kiln tls init` wrote for `nodes` nodes and
/// `workers` workers.
fn tls_init(args: &ClusterArgs, dir: &std::path::Path, workers: u32) -> anyhow::Result<Option<PathBuf>> {
    if !args.tls {
        return Ok(None);
    }
    let tls = dir.join("tls");
    kiln_testkit::tls_init(&kiln_binary(args)?, &tls, args.cluster, workers);
    Ok(Some(tls))
}

pub(crate) fn spawn_cluster(
    args: &ClusterArgs,
    dir: &std::path::Path,
    max_live: u64,
    tls: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Node>> {
    let binary = kiln_binary(args)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ports: Vec<(u16, u16)> =
        (0..args.cluster).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
    let mut peers = String::new();
    for (i, (grpc, _)) in ports.iter().enumerate() {
        peers.push_str(&format!("[[scheduler.peers]]\nid = {}\naddress = \"{scheme}://127.0.0.1:{grpc}\"\n", i + 1));
    }
    let mut nodes = Vec::new();
    for (i, (grpc, http)) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let config = dir.join(format!("node-{id}.toml"));
        let tls_section = tls.map_or(String::new(), |t| kiln_testkit::scheduler_tls_toml(t, id));
        let toml = format!(
            "[scheduler]\nnode_id = {id}\ndata_dir = {:?}\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             raft_tick = \"{}ms\"\nsnapshot_every = {}\nmax_live_tasks = {max_live}\n{}{tls_section}{peers}",
            dir.join(format!("node-{id}")).display().to_string(),
            args.raft_tick_ms,
            args.snapshot_every,
            args.batch_window_ms.map(|ms| format!("batch_window = \"{ms}ms\"\n")).unwrap_or_default(),
        );
        std::fs::write(&config, toml)?;
        let mut node = Node {
            id,
            address: format!("{scheme}://127.0.0.1:{grpc}"),
            config,
            log: dir.join(format!("node-{id}.log")),
            child: None,
            binary: binary.clone(),
        };
        node.spawn()?;
        nodes.push(node);
    }
    Ok(nodes)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn view(address: &str, credentials: &Credentials) -> Option<v1::ClusterResponse> {
    let mut client = kiln_proto::Client::with_credentials([address], credentials.clone()).ok()?;
    client.deadline = Duration::from_millis(800);
    client.attempt_timeout = Duration::from_millis(800);
    client.call(|mut s| async move { s.cluster(v1::ClusterRequest {}).await }).await.ok()
}

pub(crate) async fn leader_of(nodes: &[(u64, String)], credentials: &Credentials) -> Option<u64> {
    for (_, address) in nodes {
        if let Some(v) = view(address, credentials).await {
            if v.role == "leader" {
                return Some(v.node_id);
            }
        }
    }
    None
}

/// Counts of what the audit found (`kiln_proto::audit`, the same check as `kiln audit`).
#[derive(Default, serde::Serialize)]
struct Audit {
    tasks_in_ledger: u64,
    lost: u64,
    duplicated: u64,
    stuck: u64,
    completed_twice: u64,
}

async fn audit(addresses: &[String], credentials: &Credentials, submitted: &BTreeSet<String>) -> anyhow::Result<Audit> {
    // The replicas' agreement is reported per node below, so no time is spent waiting for it here.
    let client = kiln_proto::Client::with_credentials(addresses.to_vec(), credentials.clone())?;
    let r = kiln_proto::audit::audit(client, Some(submitted), Duration::ZERO).await?;
    Ok(Audit {
        tasks_in_ledger: r.tasks_in_ledger,
        lost: r.lost,
        duplicated: r.duplicated,
        stuck: r.stuck,
        completed_twice: r.completed_twice,
    })
}

fn percentiles(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let p = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v[(((v.len() - 1) as f64) * q).round() as usize] as f64 / 1000.0
    };
    serde_json::json!({"p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "max": p(1.0), "samples": v.len()})
}

pub async fn run(load: Load, args: ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.chaos_every == 0.0 || args.cluster > 0,
        "chaos needs nodes this process started: use --cluster"
    );
    let temp = tempfile::tempdir()?;
    let dir = args.cluster_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let tls = tls_init(&args, &dir, load.workers)?;
    // Submitters, the audit and the chaos loop act as the admin; workers present their own.
    let credentials = match &tls {
        Some(t) => Credentials::tls(
            &t.join("ca.pem"),
            Some((&t.join("admin.pem"), &t.join("admin-key.pem"))),
            kiln_config::SCHEDULER_SERVER_NAME,
        )?,
        None => Credentials::plaintext(),
    };
    let mut nodes =
        if args.cluster > 0 { spawn_cluster(&args, &dir, load.tasks.max(1) * 2, tls.as_deref())? } else { Vec::new() };
    let addresses: Vec<String> =
        if nodes.is_empty() { args.schedulers.clone() } else { nodes.iter().map(|n| n.address.clone()).collect() };
    let members: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.address.clone())).collect();
    let started_wait = Instant::now();
    while leader_of(&members, &credentials).await.is_none() && !members.is_empty() {
        anyhow::ensure!(
            started_wait.elapsed() < Duration::from_secs(30),
            "no leader elected within 30 s; see the logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let load = Arc::new(load);
    let probe = Arc::new(Probe::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run_id = format!("lt-{}", std::process::id());
    let mut workers = Vec::new();
    for w in 0..load.workers {
        let worker_tls = tls.as_ref().map(|t| kiln_config::TlsOptions {
            ca_file: t.join("ca.pem"),
            cert_file: t.join(format!("worker-{}.pem", w + 1)),
            key_file: t.join(format!("worker-{}-key.pem", w + 1)),
            server_name: kiln_config::SCHEDULER_SERVER_NAME.to_owned(),
        });
        // Under TLS a worker's id is the one its certificate names.
        let id = if tls.is_some() { format!("worker-{}", w + 1) } else { format!("{run_id}-w{w}") };
        let spec =
            Spec { tls: worker_tls, ..Spec::fixed(id, addresses.clone(), load.slots, load.prefetch, load.task_ms) };
        workers.push(worker::spawn(spec, probe.clone(), stop_rx.clone())?);
    }

    // Chaos: every N seconds take a node down (kill or pause), bring it back after chaos_down.
    let kills = Arc::new(AtomicU64::new(0));
    let chaos = if args.chaos_every > 0.0 {
        let (every, down, pause, target) = (args.chaos_every, args.chaos_down, args.chaos_pause, args.chaos_target);
        let (probe, kills, members, credentials) = (probe.clone(), kills.clone(), members.clone(), credentials.clone());
        let mut stop = stop_rx.clone();
        let mut seed = args.chaos_seed;
        let mut nodes = std::mem::take(&mut nodes);
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(every)) => {}
                    _ = stop.changed() => return nodes,
                }
                let leader = leader_of(&members, &credentials).await;
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let victim = match target {
                    Target::Leader => leader,
                    Target::Random => Some((seed >> 33) % members.len() as u64 + 1),
                };
                let Some(victim) = victim else { continue };
                let Some(node) = nodes.iter_mut().find(|n| n.id == victim) else { continue };
                if Some(victim) == leader {
                    probe.killed(victim);
                }
                kills.fetch_add(1, Ordering::Relaxed);
                if pause {
                    node.signal(libc::SIGSTOP);
                    tokio::time::sleep(Duration::from_secs_f64(down)).await;
                    node.signal(libc::SIGCONT);
                } else {
                    node.kill9().await;
                    tokio::time::sleep(Duration::from_secs_f64(down)).await;
                    if let Err(e) = node.spawn() {
                        eprintln!("chaos: cannot restart node {victim}: {e:#}");
                    }
                }
                eprintln!(
                    "chaos: node {victim}{} {} for {down:.1} s",
                    if Some(victim) == leader { " (leader)" } else { "" },
                    if pause { "paused" } else { "killed" }
                );
            }
        }))
    } else {
        None
    };

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let submitted = Arc::new(Mutex::new(BTreeSet::new()));
    let mut submitters = Vec::new();
    for _ in 0..load.submitters {
        let (next, addresses, run_id, probe, submitted, load) =
            (next.clone(), addresses.clone(), run_id.clone(), probe.clone(), submitted.clone(), load.clone());
        let credentials = credentials.clone();
        submitters.push(tokio::spawn(async move {
            let mut client = kiln_proto::Client::with_credentials(addresses, credentials)?;
            client.attempt_timeout = Duration::from_secs(5);
            client.deadline = Duration::from_secs(120);
            loop {
                let from = next.fetch_add(load.batch as u64, Ordering::Relaxed);
                if from >= load.tasks {
                    return anyhow::Ok(());
                }
                let jobs: Vec<v1::EncodeJob> =
                    (from..(from + load.batch as u64).min(load.tasks)).map(|i| crate::sim::job(&run_id, i)).collect();
                let ids: Vec<String> = jobs.iter().map(|j| j.request_id.clone()).collect();
                lock(&submitted).extend(ids.iter().cloned());
                crate::sim::submit(&mut client, jobs).await?;
                probe.submitted(ids);
            }
        }));
    }
    for s in submitters {
        s.await??;
    }
    let submit_secs = started.elapsed().as_secs_f64();

    // Done when the ledger says every task finished (acks alone miss completions whose ack was
    // lost in a failover and that the ledger then reported as already done).
    let mut status_client = kiln_proto::Client::with_credentials(addresses.clone(), credentials.clone())?;
    status_client.attempt_timeout = Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let finished = status_client
            .call(|mut s| async move { s.status(v1::StatusRequest {}).await })
            .await
            .ok()
            .and_then(|s| s.total)
            .map(|t| t.succeeded + t.dead_lettered + t.cancelled);
        if finished.is_some_and(|f| f >= load.tasks) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out: {finished:?} of {} tasks finished", load.tasks);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut nodes = match chaos {
        Some(c) => c.await.unwrap_or_default(),
        None => nodes,
    };
    // A paused node must run again before the audit reads from every node.
    for n in &nodes {
        n.signal(libc::SIGCONT);
    }
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("a worker failed: {e:#}"),
            Err(e) => eprintln!("a worker panicked: {e}"),
        }
    }
    let submitted: BTreeSet<String> = std::mem::take(&mut *lock(&submitted));
    let audit = audit(&addresses, &credentials, &submitted).await?;
    // Each node's own view at the end: applied index, ledger digest, disk (bounded by compaction).
    let mut views = Vec::new();
    for a in &addresses {
        let v = view(a, &credentials).await;
        views.push(serde_json::json!({
            "address": a,
            "applied_index": v.as_ref().map(|v| v.applied_index),
            "snapshot_index": v.as_ref().map(|v| v.snapshot_index),
            "log_entries": v.as_ref().map(|v| v.log_entries),
            "ledger_digest": v.as_ref().map(|v| format!("{:016x}", v.ledger_digest)),
            "disk_bytes": v.as_ref().map(|v| v.disk_bytes),
        }));
    }
    let failovers: Vec<u64> = probe.failovers().iter().map(|d| d.as_micros() as u64).collect();
    // Every worker's first session is not a reconnect.
    let reconnects = probe.sessions.load(Ordering::Relaxed).saturating_sub(u64::from(load.workers));
    let report = serde_json::json!({
        "tasks": load.tasks,
        "nodes": if members.is_empty() { addresses.len() } else { members.len() },
        "workers": load.workers, "slots": load.slots, "prefetch": load.prefetch,
        "submit_tasks_per_sec": load.tasks as f64 / submit_secs,
        "end_to_end_secs": total_secs,
        "end_to_end_tasks_per_sec": load.tasks as f64 / total_secs,
        "lease_latency_ms": percentiles(probe.lease_latencies()),
        "completion_ack_latency_ms": percentiles(probe.ack_latencies()),
        "chaos_events": kills.load(Ordering::Relaxed),
        "failover_to_first_lease_ms": percentiles(failovers),
        "worker_reconnects": reconnects,
        "audit": audit,
        "nodes_at_end": views,
    });
    if load.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let ms = |v: &serde_json::Value| {
            format!(
                "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                v["p50"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0),
                v["max"].as_f64().unwrap_or(0.0)
            )
        };
        println!("tasks                 {} on {} nodes", load.tasks, report["nodes"]);
        println!("workers × slots       {} × {} (prefetch {})", load.workers, load.slots, load.prefetch);
        println!("submit                {:.0} tasks/s", load.tasks as f64 / submit_secs);
        println!(
            "end to end            {:.0} tasks/s ({total_secs:.2} s, submit + lease + ack, each durable on a quorum)",
            load.tasks as f64 / total_secs
        );
        println!("submit→lease          {}", ms(&report["lease_latency_ms"]));
        println!("completion→ack        {}", ms(&report["completion_ack_latency_ms"]));
        println!("chaos events          {}", report["chaos_events"]);
        println!(
            "kill→first new lease  {} ({} failovers)",
            ms(&report["failover_to_first_lease_ms"]),
            report["failover_to_first_lease_ms"]["samples"]
        );
        println!("worker reconnects     {}", report["worker_reconnects"]);
        for v in report["nodes_at_end"].as_array().into_iter().flatten() {
            println!(
                "node {}  applied {}  snapshot {}  log {} entries  ledger {}  disk {:.1} MiB",
                v["address"].as_str().unwrap_or("?"),
                v["applied_index"],
                v["snapshot_index"],
                v["log_entries"],
                v["ledger_digest"].as_str().unwrap_or("unreachable"),
                v["disk_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64
            );
        }
        println!(
            "audit                 {} in ledger; lost {}, duplicated {}, stuck {}, completed twice {}",
            audit.tasks_in_ledger, audit.lost, audit.duplicated, audit.stuck, audit.completed_twice
        );
    }
    for n in &mut nodes {
        n.kill9().await;
    }
    let clean = audit.lost == 0 && audit.duplicated == 0 && audit.stuck == 0 && audit.completed_twice == 0;
    anyhow::ensure!(clean, "the audit is not clean (node logs in {})", dir.display());
    Ok(())
}
