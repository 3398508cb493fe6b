//! The ledger's digest: one number that two replicas compare to know they hold the same record.
//!
//! `kiln cluster` and `kiln audit` ask every node for it, and the simulation checks it after every
//! round, so it must cost O(1) on the Raft thread, not a serialisation of the whole ledger. It is
//! kept incrementally: each task and each worker record has a hash (of its encoded bytes), and the
//! ledger keeps the wrapping sum of them — an order-independent combination, so the sum depends
//! only on *which* records exist, never on the order in which they were changed. `transition`
//! (through the indexes) swaps a task's hash out and in around every change; `update_worker` does
//! the same for workers. The few remaining fields (settings, counters, rate buckets) are hashed
//! when the digest is asked for, and so are the enabled feature flags, once there are any. The
//! invariants recompute the sums from scratch and compare.
//!
//! The hash is computed over the records' postcard bytes — the same bytes a format-1 snapshot
//! holds, pinned by the golden fixtures — with a fixed function, so it is equal on every replica
//! and every build that reads the same format.

use serde::Serialize;

use crate::records::WorkerRecord;
use crate::task::Task;
use crate::Ledger;

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A postcard output that hashes the bytes instead of storing them, eight at a time.
struct HashFlavor {
    state: u64,
    word: u64,
    filled: u32,
    len: u64,
}

impl HashFlavor {
    fn new(seed: u64) -> Self {
        Self { state: seed ^ K, word: 0, filled: 0, len: 0 }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(K).rotate_left(31);
    }

    fn push(&mut self, byte: u8) {
        self.word |= u64::from(byte) << (8 * self.filled);
        self.filled += 1;
        if self.filled == 8 {
            let word = self.word;
            self.mix(word);
            self.word = 0;
            self.filled = 0;
        }
    }

    fn finish(mut self) -> u64 {
        let (word, len) = (self.word, self.len);
        self.mix(word ^ (len << 56));
        // splitmix64's finaliser: every input bit reaches every output bit.
        let mut x = self.state;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
}

impl postcard::ser_flavors::Flavor for HashFlavor {
    type Output = u64;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.len += 1;
        self.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.len += data.len() as u64;
        let mut data = data;
        while self.filled != 0 && !data.is_empty() {
            self.push(data[0]);
            data = &data[1..];
        }
        let mut chunks = data.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        for byte in chunks.remainder() {
            self.push(*byte);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<u64> {
        Ok(self.finish())
    }
}

/// A fixed 64-bit hash of a value's postcard bytes. `seed` keeps kinds of record apart.
fn hash_of<T: Serialize + ?Sized>(seed: u64, value: &T) -> u64 {
    // Hashing plain data cannot fail; 0 would only weaken the digest, never make it differ.
    postcard::serialize_with_flavor(value, HashFlavor::new(seed)).unwrap_or(0)
}

const TASK_SEED: u64 = 1;
const WORKER_SEED: u64 = 2;
const HEADER_SEED: u64 = 3;
const FEATURES_SEED: u64 = 4;
const BATCHES_SEED: u64 = 5;

/// Wrapping sums of the hashes of every task and every worker record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecordSums {
    tasks: u64,
    workers: u64,
}

impl RecordSums {
    pub(crate) fn add_task(&mut self, task: &Task) {
        self.tasks = self.tasks.wrapping_add(hash_of(TASK_SEED, task));
    }

    pub(crate) fn remove_task(&mut self, task: &Task) {
        self.tasks = self.tasks.wrapping_sub(hash_of(TASK_SEED, task));
    }

    pub(crate) fn add_worker(&mut self, worker: &WorkerRecord) {
        self.workers = self.workers.wrapping_add(hash_of(WORKER_SEED, worker));
    }

    pub(crate) fn remove_worker(&mut self, worker: &WorkerRecord) {
        self.workers = self.workers.wrapping_sub(hash_of(WORKER_SEED, worker));
    }

    /// From scratch, for snapshot loads and the invariants.
    pub(crate) fn of_workers<'a>(workers: impl IntoIterator<Item = &'a WorkerRecord>) -> u64 {
        let mut sums = RecordSums::default();
        workers.into_iter().for_each(|w| sums.add_worker(w));
        sums.workers
    }

    pub(crate) fn set_workers(&mut self, workers: u64) {
        self.workers = workers;
    }
}

impl Ledger {
    /// A 64-bit digest of the replicated record (tasks, workers, settings, counters): equal on two
    /// replicas that hold equal records, and almost surely different otherwise. O(1): it is kept
    /// up to date by every command rather than computed by reading the ledger.
    pub fn digest(&self) -> u64 {
        let sums = self.ix.sums;
        let header = (
            &self.config,
            self.next_task,
            self.next_ready_seq,
            self.submitted_total,
            self.collected,
            &self.rates,
            self.steals_total,
            (self.tasks.len() as u64, self.workers.len() as u64),
            (sums.tasks, sums.workers),
        );
        let digest = hash_of(HEADER_SEED, &header);
        // Feature flags (and the gated features' state) count only once something is enabled, so
        // a ledger that enabled nothing digests as on a release without flags and compares equal
        // to it during a rolling upgrade. Hashed when asked: a handful of names and one session
        // per worker, not worth keeping incrementally.
        let digest = if self.features.is_empty() { digest } else { hash_of(FEATURES_SEED, &(digest, &self.features)) };
        // Batches: their records (a few hundred bytes each) when asked, their memberships (up to
        // a window per batch) through the sum kept as they change.
        if self.batches.is_empty() {
            digest
        } else {
            let b = &self.batches;
            hash_of(BATCHES_SEED, &(digest, &b.records, b.last_id, b.members.len() as u64, b.members_sum))
        }
    }

    /// The one way a stored worker record changes: its hash out of the digest, `change`, in again.
    pub(crate) fn update_worker<R>(
        &mut self,
        id: &kiln_types::WorkerId,
        change: impl FnOnce(&mut WorkerRecord) -> R,
    ) -> Option<R> {
        let record = self.workers.get_mut(id)?;
        self.ix.sums.remove_worker(record);
        let result = change(record);
        self.ix.sums.add_worker(record);
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use kiln_types::{AssetGuid, EncodeJob, QueueName, RendererName, RequestId, TaskId, WorkerId};
    use proptest::prelude::*;

    use crate::{Command, DeadLetterFilter, Ledger, LedgerConfig, TaskResult, WorkerSpec};

    fn wid(n: u8) -> WorkerId {
        WorkerId::new(format!("w{n}")).expect("worker id")
    }

    fn job(n: u8) -> EncodeJob {
        EncodeJob {
            request_id: RequestId::new(format!("r{n}")).expect("request id"),
            release_id: i64::from(n % 2),
            asset_id: i64::from(n),
            asset_guid: AssetGuid::new(format!("m/{n}.wav")).expect("guid"),
            derivative_assets: [RendererName::new("loudness").expect("renderer")].into_iter().collect(),
            queue: QueueName::default(),
            priority: i32::from(n % 3),
            max_attempts: 2,
        }
    }

    fn spec(n: u8) -> WorkerSpec {
        WorkerSpec {
            id: wid(n),
            hostname: format!("h{n}"),
            slots: 2,
            cores: 2,
            memory_bytes: 0,
            speed_milli: 500 + 500 * u32::from(n),
            queues: vec![QueueName::default()],
            version: String::new(),
        }
    }

    /// Any command, on a handful of tasks and workers so that most of them do something.
    fn command() -> impl Strategy<Value = Command> {
        let task = || (1u64..12, 0u32..4, 0u8..3);
        prop_oneof![
            proptest::collection::vec(0u8..12, 1..4)
                .prop_map(|n| Command::Submit { jobs: n.into_iter().map(job).collect() }),
            (0u8..3).prop_map(|n| Command::RegisterWorker { spec: spec(n) }),
            (0u8..3).prop_map(|n| Command::DisconnectWorker { worker: wid(n) }),
            (0u8..3).prop_map(|n| Command::DrainWorker { worker: wid(n) }),
            (0u8..3, 1u32..4).prop_map(|(n, max)| Command::Lease { worker: wid(n), max }),
            (0u8..3, 1u64..12, 0u32..4)
                .prop_map(|(n, t, s)| Command::Steal { thief: wid(n), tasks: vec![(TaskId(t), s)] }),
            (0u8..3, 1u64..12, 0u32..4)
                .prop_map(|(n, t, s)| Command::Backup { thief: wid(n), tasks: vec![(TaskId(t), s)] }),
            (0u8..3).prop_map(|n| Command::Renew { worker: wid(n) }),
            task().prop_map(|(t, s, n)| Command::Complete {
                task: TaskId(t),
                lease_seq: s,
                worker: wid(n),
                result: TaskResult::default()
            }),
            (task(), any::<bool>()).prop_map(|((t, s, n), permanent)| Command::Fail {
                task: TaskId(t),
                lease_seq: s,
                worker: wid(n),
                error: "e".into(),
                permanent
            }),
            task().prop_map(|(t, s, n)| Command::Release {
                worker: wid(n),
                leases: vec![(TaskId(t), s)],
                reason: "r".into()
            }),
            Just(Command::ExpireLeases),
            (0i64..60_000).prop_map(|grace_ms| Command::GraceLeases { grace_ms }),
            (1u64..12).prop_map(|t| Command::Cancel { task: TaskId(t) }),
            Just(Command::RequeueDeadLetters { filter: DeadLetterFilter { all: true, ..DeadLetterFilter::default() } }),
            Just(Command::PurgeDeadLetters { filter: DeadLetterFilter { all: true, ..DeadLetterFilter::default() } }),
            Just(Command::CollectGarbage),
            Just(Command::EnableFeature { name: crate::features::FENCED_SESSIONS.into() }),
            Just(Command::EnableFeature { name: crate::features::FORGET_GONE_WORKERS.into() }),
            (0u8..3).prop_map(|n| Command::OpenSession { spec: spec(n) }),
            (0u8..3, 1u64..4).prop_map(|(n, session)| Command::CloseSession { worker: wid(n), session }),
        ]
    }

    proptest! {
        /// After any command sequence, the digest kept by the commands is the one computed from
        /// scratch (the invariants rebuild it; a snapshot load computes it anew), and a replica
        /// restored from a snapshot goes on agreeing with the original.
        #[test]
        fn the_incremental_digest_matches_one_computed_from_scratch(
            steps in proptest::collection::vec((command(), 0i64..40_000), 1..60),
            tail in proptest::collection::vec((command(), 0i64..40_000), 1..10),
        ) {
            let config = LedgerConfig { lease_ttl_ms: 10_000, gc_ttl_ms: 30_000, ..LedgerConfig::default() };
            let mut l = Ledger::new(config);
            let mut now = 1_000;
            for (cmd, dt) in steps {
                now += dt;
                let before = l.digest();
                let snapshot_before = l.to_snapshot();
                l.apply(cmd, now);
                l.check_invariants().map_err(TestCaseError::fail)?;
                if l.to_snapshot() != snapshot_before {
                    prop_assert_ne!(before, l.digest(), "a change left the digest as it was");
                }
            }
            let mut restored = Ledger::from_snapshot(&l.to_snapshot()).expect("decodes");
            prop_assert_eq!(restored.digest(), l.digest());
            for (cmd, dt) in tail {
                now += dt;
                l.apply(cmd.clone(), now);
                restored.apply(cmd, now);
                prop_assert_eq!(restored.digest(), l.digest());
            }
        }
    }

    #[test]
    fn equal_ledgers_built_in_different_orders_have_equal_digests() {
        let mut a = Ledger::new(LedgerConfig::default());
        let mut b = Ledger::new(LedgerConfig::default());
        a.apply(Command::RegisterWorker { spec: spec(1) }, 1);
        a.apply(Command::RegisterWorker { spec: spec(2) }, 1);
        b.apply(Command::RegisterWorker { spec: spec(2) }, 1);
        b.apply(Command::RegisterWorker { spec: spec(1) }, 1);
        assert!(a == b);
        assert_eq!(a.digest(), b.digest());
        a.apply(Command::DrainWorker { worker: wid(1) }, 2);
        assert_ne!(a.digest(), b.digest(), "a drained worker is a different record");
    }
}
