//! `--catalog-lines N`: a whole catalog through spawned schedulers, as one batch (or, with
//! `--plain`, the same lines through ordinary Submit calls, for the comparison): a generated
//! JSONL manifest of N no-op jobs, the loadtest's workers, and every few seconds each
//! scheduler's RSS, the batch's progress and whether the workers had ready work. At the end: the
//! largest snapshot a node wrote, the peak RSS of each node, the rate and the total time.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kiln_proto::{v1, Credentials};

use crate::chaos::{leader_of, spawn_cluster, ClusterArgs};
use crate::worker::{self, Probe, Spec};

pub struct Catalog {
    pub lines: u64,
    /// Plain Submit calls instead of one batch.
    pub plain: bool,
    /// The batch's window (0: the scheduler's default).
    pub window: u64,
    pub workers: u32,
    pub slots: u32,
    pub prefetch: u32,
    pub task_ms: u64,
    pub json: bool,
}

/// One sample of the run.
#[derive(serde::Serialize)]
struct Sample {
    secs: f64,
    done: u64,
    rss_mib: Vec<u64>,
    queued: u64,
    source_done: bool,
}

fn rss_mib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kib / 1024
}

fn write_manifest(path: &std::path::Path, run_id: &str, lines: u64) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in 0..lines {
        let j = crate::sim::job(run_id, i);
        writeln!(
            out,
            r#"{{"request_id":"{}","release_id":{},"asset_id":{},"asset_guid":"{}","derivative_assets":["loudness"]}}"#,
            j.request_id, j.release_id, j.asset_id, j.asset_guid
        )?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

pub async fn run(load: Catalog, args: ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.cluster > 0, "--catalog-lines needs --cluster N (spawned nodes, to read their RSS)");
    let temp = tempfile::tempdir()?;
    let dir = args.cluster_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let run_id = format!("cat-{}", std::process::id());
    let manifest = dir.join("catalog.jsonl");
    let generated = Instant::now();
    let bytes = write_manifest(&manifest, &run_id, load.lines)?;
    eprintln!(
        "manifest: {} lines, {} MiB, written in {:.1} s",
        load.lines,
        bytes >> 20,
        generated.elapsed().as_secs_f64()
    );

    // Plain submits need room for every line; a batch runs under the default limit.
    let max_live = if load.plain { load.lines.max(1) * 2 } else { 2_000_000 };
    let mut nodes = spawn_cluster(&args, &dir, max_live, None)?;
    let members: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.address.clone())).collect();
    let addresses: Vec<String> = members.iter().map(|(_, a)| a.clone()).collect();
    let credentials = Credentials::plaintext();
    let wait = Instant::now();
    while leader_of(&members, &credentials).await.is_none() {
        anyhow::ensure!(wait.elapsed() < Duration::from_secs(30), "no leader within 30 s; logs in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let probe = Arc::new(Probe::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for w in 0..load.workers {
        let id = format!("{run_id}-w{w}");
        let spec = Spec::fixed(id, addresses.clone(), load.slots, load.prefetch, load.task_ms);
        workers.push(worker::spawn(spec, probe.clone(), stop_rx.clone())?);
    }

    let mut client = kiln_proto::Client::with_credentials(addresses.clone(), credentials.clone())?;
    client.deadline = Duration::from_secs(120);
    let started = Instant::now();
    let batch_id = if load.plain {
        let (lines, run_id, addresses) = (load.lines, run_id.clone(), addresses.clone());
        let mut submitters = Vec::new();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..4 {
            let (next, run_id, addresses) = (next.clone(), run_id.clone(), addresses.clone());
            submitters.push(tokio::spawn(async move {
                let mut client = kiln_proto::Client::new(addresses)?;
                client.deadline = Duration::from_secs(120);
                loop {
                    let from = next.fetch_add(1000, Ordering::Relaxed);
                    if from >= lines {
                        return anyhow::Ok(());
                    }
                    let jobs = (from..(from + 1000).min(lines)).map(|i| crate::sim::job(&run_id, i)).collect();
                    crate::sim::submit(&mut client, jobs).await?;
                }
            }));
        }
        tokio::spawn(async move {
            for s in submitters {
                if let Ok(Err(e)) = s.await {
                    eprintln!("a submitter failed: {e:#}");
                }
            }
        });
        None
    } else {
        let spec = v1::BatchSpec {
            name: "catalog".into(),
            source: manifest.display().to_string(),
            window: load.window,
            on_bad_line: "stop".into(),
            request_id: run_id.clone(),
            ..Default::default()
        };
        let batch = client
            .call(|mut s| {
                let spec = spec.clone();
                async move { s.submit_batch(spec).await }
            })
            .await
            .context("submitting the batch")?;
        Some(batch.id)
    };

    let mut samples = Vec::new();
    let mut starved = 0u64;
    let mut peak = vec![0u64; nodes.len()];
    // Snapshots are rewritten as the log grows: the largest seen during the run is the figure.
    let snapshot_bytes =
        |id: u64| std::fs::metadata(dir.join(format!("node-{id}")).join("raft-snapshot")).map_or(0, |m| m.len());
    let mut largest_snapshot = vec![0u64; nodes.len()];
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = probe.accepted.load(Ordering::Relaxed);
        let status = client.call(|mut s| async move { s.status(v1::StatusRequest {}).await }).await.ok();
        let queued = status.and_then(|s| s.live).map_or(0, |l| l.queued);
        let batch = match batch_id {
            Some(id) => client.call(|mut s| async move { s.get_batch(v1::GetBatchRequest { id }).await }).await.ok(),
            None => None,
        };
        let source_done = batch.as_ref().is_some_and(|b| b.source_done);
        let rss: Vec<u64> = nodes.iter().map(|n| rss_mib(n.pid())).collect();
        for (p, r) in peak.iter_mut().zip(&rss) {
            *p = (*p).max(*r);
        }
        for (largest, n) in largest_snapshot.iter_mut().zip(&nodes) {
            *largest = (*largest).max(snapshot_bytes(n.id));
        }
        // Starved: the source had lines but no task waited for a worker.
        if batch_id.is_some() && !source_done && queued == 0 && done < load.lines {
            starved += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        if last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            eprintln!("{secs:6.0} s  {done:>9} done  {:>7.0}/s  rss MiB {rss:?}  queued {queued}", done as f64 / secs);
        }
        samples.push(Sample { secs, done, rss_mib: rss, queued, source_done });
        let finished = match &batch {
            Some(b) => b.state == "done" && b.live == 0,
            None => done >= load.lines,
        };
        if finished {
            break;
        }
        anyhow::ensure!(!workers.iter().any(|w| w.is_finished()), "a worker stopped early");
        anyhow::ensure!(secs < 6.0 * 3600.0, "gave up after six hours");
    }
    let total = started.elapsed().as_secs_f64();
    let snapshot_mib: Vec<f64> = largest_snapshot.iter().map(|b| *b as f64 / (1 << 20) as f64).collect();
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let report = serde_json::json!({
        "mode": if load.plain { "plain submit" } else { "batch" },
        "lines": load.lines,
        "manifest_mib": bytes >> 20,
        "workers": load.workers, "slots": load.slots, "prefetch": load.prefetch, "task_ms": load.task_ms,
        "total_secs": total,
        "tasks_per_sec": load.lines as f64 / total,
        "peak_rss_mib": peak,
        "largest_snapshot_mib": snapshot_mib,
        "starved_samples": starved,
        "samples": samples.len(),
    });
    if load.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "report": report, "samples": samples }))?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    for n in &mut nodes {
        n.kill9().await;
    }
    Ok(())
}
