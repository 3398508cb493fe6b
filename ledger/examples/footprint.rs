//! How much memory the ledger needs per queued task, and what a snapshot of it costs: the figure
//! behind "under 1 GB per replica with a million tasks known" (docs/benchmarks.md).
//!
//! `cargo run --release -p kiln-ledger --example footprint -- 1000000`
//!
//! Jobs look like a catalog manifest's (five renderers, release/track GUIDs). Reads the process's
//! own RSS from /proc, so it is Linux-only; elsewhere it prints the sizes it can.

use kiln_ledger::{Command, Ledger, LedgerConfig};
use kiln_types::{AssetGuid, EncodeJob, QueueName, RendererName, RendererSet, RequestId};

/// `VmRSS` and `VmHWM` of this process in MiB, where /proc has them.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let renderers: RendererSet = ["bpm", "key", "loudness", "waveform", "aac128"]
        .into_iter()
        .filter_map(|r| RendererName::new(r).ok())
        .collect();
    let mut ledger = Ledger::new(LedgerConfig { max_live_tasks: n as u64 + 1, ..LedgerConfig::default() });
    println!(
        "sizes: Task {} B, EncodeJob {} B, HistoryEvent {} B",
        std::mem::size_of::<kiln_ledger::Task>(),
        std::mem::size_of::<EncodeJob>(),
        std::mem::size_of::<kiln_ledger::HistoryEvent>()
    );
    let (base, _) = rss_mib();
    let batch = 2_000;
    for start in (0..n).step_by(batch) {
        let jobs: Vec<EncodeJob> = (start..(start + batch).min(n))
            .filter_map(|i| {
                Some(EncodeJob {
                    request_id: RequestId::new(format!("cat-{i:07}")).ok()?,
                    release_id: (i / 12) as i64,
                    asset_id: i as i64,
                    asset_guid: AssetGuid::new(format!("rel-{}/track_{:02}.wav", i / 12, i % 12)).ok()?,
                    derivative_assets: renderers.clone(),
                    queue: QueueName::default(),
                    priority: 0,
                    max_attempts: 3,
                })
            })
            .collect();
        ledger.apply(Command::Submit { jobs }, 1);
    }
    let (full, _) = rss_mib();
    let snapshot = ledger.to_snapshot();
    let (_, peak) = rss_mib();
    let per_task = (full - base) * 1024.0 * 1024.0 / n as f64;
    println!(
        "{n} tasks: ledger {:.0} MiB ({per_task:.0} B/task); snapshot {:.0} MiB; peak RSS {peak:.0} MiB",
        full - base,
        snapshot.len() as f64 / (1024.0 * 1024.0),
    );
}
