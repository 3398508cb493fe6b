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

pub(crate) fn encode_ledger(ledger: &Ledger) -> Vec<u8> {
    let record = Record {
        config: &ledger.config,
        next_task: ledger.next_task,
        next_ready_seq: ledger.next_ready_seq,
        tasks: Seq(ledger.tasks.values()),
        workers: Seq(ledger.workers.values()),
        submitted_total: ledger.submitted_total,
        collected: ledger.collected,
        rates: Seq(ledger.rates.iter()),
        steals_total: ledger.steals_total,
    };
    // Sized first, so the buffer is allocated once at its final size: a growing Vec of a
    // 100 MB snapshot briefly holds its old and new halves, which is the replica's peak.
    // Serializing plain data structures cannot fail.
    let size = postcard::serialize_with_flavor(&record, postcard::ser_flavors::Size::default()).unwrap_or(0);
    postcard::to_extend(&record, Vec::with_capacity(size)).unwrap_or_default()
}

pub(crate) fn decode_ledger(bytes: &[u8]) -> Result<Ledger, postcard::Error> {
    let r: Owned = postcard::from_bytes(bytes)?;
    Ok(from_record(r))
}

fn from_record(r: Owned) -> Ledger {
    let tasks: BTreeMap<_, Box<Task>> = r.tasks.into_iter().map(|t| (t.id, Box::new(t))).collect();
    let workers = r.workers.into_iter().map(|w| (w.spec.id.clone(), w)).collect();
    let ix = Indexes::build(&tasks);
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
        ix,
    }
}
