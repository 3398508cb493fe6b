//! The ledger's record as one serde struct, shared by the encoder (borrowing) and the decoder
//! (owning), so the two can never drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use crate::config::LedgerConfig;
use crate::indexes::Indexes;
use crate::records::{RateBucket, StateCounts, WorkerRecord};
use crate::task::Task;
use crate::Ledger;

/// The record, as written to a snapshot. Field order is wire format.
#[derive(Serialize, Deserialize)]
struct Record<C, T, W, R> {
    config: C,
    next_task: u64,
    next_ready_seq: u64,
    tasks: T,
    workers: W,
    submitted_total: u64,
    collected: StateCounts,
    rates: R,
    steals_total: u64,
}

/// A sequence written straight from a collection's iterator: encodes exactly as a `Vec` of its
/// items, without collecting one (a `Vec` of a million task references is 8 MB for nothing).
struct Seq<I>(I);

impl<I> Serialize for Seq<I>
where
    I: Clone + ExactSizeIterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

type Owned = Record<LedgerConfig, Vec<Task>, Vec<WorkerRecord>, Vec<RateBucket>>;

fn borrowed(ledger: &Ledger) -> impl Serialize + '_ {
    Record {
        config: &ledger.config,
        next_task: ledger.next_task,
        next_ready_seq: ledger.next_ready_seq,
        tasks: Seq(ledger.tasks.values()),
        workers: Seq(ledger.workers.values()),
        submitted_total: ledger.submitted_total,
        collected: ledger.collected,
        rates: Seq(ledger.rates.iter()),
        steals_total: ledger.steals_total,
    }
}

/// How many bytes [`encode`] appends, so a snapshot's buffer is allocated once.
pub(super) fn size(ledger: &Ledger) -> Result<usize, postcard::Error> {
    postcard::serialize_with_flavor(&borrowed(ledger), postcard::ser_flavors::Size::default())
}

/// Appends the ledger's record.
pub(super) fn encode(ledger: &Ledger, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    super::put(&borrowed(ledger), out)
}

/// Reads a ledger's record and rebuilds its indexes; returns the bytes after it.
pub(super) fn decode(bytes: &[u8]) -> Result<(Ledger, &[u8]), postcard::Error> {
    let (r, rest): (Owned, _) = postcard::take_from_bytes(bytes)?;
    Ok((from_record(r), rest))
}

fn from_record(r: Owned) -> Ledger {
    let tasks: BTreeMap<_, Box<Task>> = r.tasks.into_iter().map(|t| (t.id, Box::new(t))).collect();
    let workers = r.workers.into_iter().map(|w| (w.spec.id.clone(), w)).collect();
    let ix = Indexes::build(&tasks, &workers);
    Ledger {
        config: r.config,
        next_task: r.next_task,
        next_ready_seq: r.next_ready_seq,
        tasks,
        workers,
        submitted_total: r.submitted_total,
        collected: r.collected,
        rates: r.rates.into_iter().collect(),
        steals_total: r.steals_total,
        // Not in the record: format 1 has none, format 2 writes them after it (`v2`).
        features: Default::default(),
        // Format 3 writes them after the features (`v3`).
        batches: Default::default(),
        ix,
        folding: Vec::new(),
    }
}
