//! Streaming admission: on the leader, read each running batch's manifest ahead of its committed
//! cursor and propose `AdmitBatch` as its window frees.
//!
//! Only committed state drives it: the cursor and the free window are read from the ledger, and a
//! proposal names the cursor it starts from, so a proposal that raced another (a leader change,
//! a retry) is refused by the ledger instead of admitting lines twice. After any refusal or error
//! the batch's reader is dropped and reopened at the committed cursor.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use kiln_config::BatchOptions;
use kiln_ledger::batches::{BadLinePolicy, BatchSpec, Cursor};
use kiln_ledger::{Command, Rejection};
use kiln_proto::v1;
use tokio::sync::watch;

use super::source::{Chunk, Reader, Source};
use crate::handle::Handle;

/// How often an idle leader looks for batches with room in their window.
const POLL: Duration = Duration::from_millis(50);

/// Admissions of one batch proposed and not yet applied.
const IN_FLIGHT: usize = 4;

/// A batch the leader may admit lines for, as the ledger has it now.
struct Wanting {
    id: u64,
    spec: BatchSpec,
    cursor: Cursor,
    free: u64,
}

/// Runs until `stop` turns true.
pub(crate) async fn run(handle: Handle, opts: BatchOptions, mut stop: watch::Receiver<bool>) {
    let mut readers: HashMap<u64, Reader> = HashMap::new();
    let mut failing: HashMap<u64, (String, tokio::time::Instant)> = HashMap::new();
    while super::next_round(&mut stop, POLL).await {
        let wanting = match handle
            .read(|l, node| {
                if !node.is_leader {
                    return None;
                }
                let wanting = l.batches().iter().filter(|b| b.wants_lines());
                Some(
                    wanting
                        .map(|b| Wanting { id: b.id, spec: b.spec.clone(), cursor: b.cursor, free: b.free_window() })
                        .collect::<Vec<_>>(),
                )
            })
            .await
        {
            Ok(Some(wanting)) => wanting,
            Ok(None) => {
                readers.clear();
                continue;
            }
            Err(_) => continue,
        };
        readers.retain(|id, _| wanting.iter().any(|w| w.id == *id));
        for batch in wanting {
            let id = batch.id;
            if failing.get(&id).is_some_and(|(_, retry_at)| tokio::time::Instant::now() < *retry_at) {
                continue;
            }
            match admit(&handle, &opts, &mut readers, batch).await {
                Ok(()) => {
                    if failing.remove(&id).is_some() {
                        tracing::info!(batch = id, "batch admission resumed");
                    }
                }
                Err(error) => {
                    readers.remove(&id);
                    // Said once per distinct error, not every 5 s.
                    if failing.get(&id).is_none_or(|(last, _)| *last != error) {
                        tracing::warn!(batch = id, %error, "batch admission paused; retrying every 5 s");
                    }
                    failing.insert(id, (error, tokio::time::Instant::now() + Duration::from_secs(5)));
                }
            }
        }
    }
}

/// Fills one batch's free window, a chunk per proposal.
async fn admit(
    handle: &Handle,
    opts: &BatchOptions,
    readers: &mut HashMap<u64, Reader>,
    batch: Wanting,
) -> Result<(), String> {
    let id = batch.id;
    let reader = match readers.entry(id) {
        std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
        std::collections::hash_map::Entry::Vacant(slot) => {
            let source = Source::open(&batch.spec.source).map_err(|e| e.to_string())?;
            slot.insert(Reader::open(source, batch.spec.format).await.map_err(|e| e.to_string())?)
        }
    };
    let stop_at_bad = batch.spec.on_bad_line == BadLinePolicy::Stop;
    let (mut cursor, mut free) = (batch.cursor, batch.free);
    // Up to IN_FLIGHT admissions are proposed before the first commits: Raft applies one
    // leader's proposals in order, so each starts where the one before it ends, and if one is
    // refused (the batch paused, a new leader) the ones after it are refused as stale too.
    let mut pending = FuturesOrdered::new();
    let (mut reading, mut error, mut reopen) = (true, None, false);
    loop {
        while reading && pending.len() < IN_FLIGHT && free > 0 {
            let max = (free as usize).min(opts.lines_per_admission);
            let chunk = match reader.next_chunk(cursor, max, stop_at_bad).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            };
            let Chunk { jobs, mut bad_lines, to, end, source_bytes } = chunk;
            let jobs = to_ledger_jobs(&batch.spec, jobs, &mut bad_lines);
            let stopping = stop_at_bad && !bad_lines.is_empty();
            free = free.saturating_sub(jobs.len() as u64);
            let cmd = Command::AdmitBatch { batch: id, from: cursor, to, jobs, bad_lines, end, source_bytes };
            pending.push_back(handle.propose(cmd));
            cursor = to;
            reading = !(end || stopping);
        }
        if error.is_some() {
            reading = false;
        }
        let Some(result) = pending.next().await else { break };
        match result {
            Ok(Ok(_)) => {}
            // Another proposal got there first, or the batch was paused or cancelled meanwhile:
            // nothing to do until the next look at the ledger.
            Ok(Err(Rejection::StaleCursor { .. } | Rejection::BatchNotRunning { .. })) => {
                (reading, reopen) = (false, true);
            }
            Ok(Err(rejection)) => {
                reading = false;
                error.get_or_insert(rejection.to_string());
            }
            Err(e) => {
                reading = false;
                error.get_or_insert(e.to_string());
            }
        }
    }
    if reopen {
        readers.remove(&id);
    }
    error.map_or(Ok(()), Err)
}

/// The batch's defaults applied to each line's job, then the job as the ledger holds it. The
/// reader has checked every line already; a line that still does not convert (a batch queue name
/// that is invalid) becomes a bad line.
fn to_ledger_jobs(
    spec: &BatchSpec,
    jobs: Vec<(u64, v1::EncodeJob)>,
    bad_lines: &mut Vec<kiln_ledger::batches::BadLine>,
) -> Vec<(u64, kiln_types::EncodeJob)> {
    jobs.into_iter()
        .filter_map(|(line, mut job)| {
            if job.queue.is_empty() {
                job.queue = spec.queue.clone();
            }
            if job.priority == 0 {
                job.priority = spec.priority;
            }
            match kiln_proto::job_from_pb(job) {
                Ok(job) => Some((line, job)),
                Err(e) => {
                    bad_lines.push(kiln_ledger::batches::BadLine { line, reason: e.to_string() });
                    None
                }
            }
        })
        .collect()
}
