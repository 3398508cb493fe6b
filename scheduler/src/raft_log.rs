//! Durable Raft storage in sled: the log, the hard state, the configuration and the latest snapshot.
//!
//! raft-rs owns consensus but not persistence; this is the one seam (`raft::Storage`) through which
//! it reads what it has written. Writes happen from the node loop, which must make a `Ready`'s
//! entries and hard state durable ([`RaftLog::sync`]) before sending its messages or acknowledging
//! anything, or a crash could forget an entry the cluster counted as stored.
//!
//! Layout:
//! - sled tree `log`:  big-endian index → protobuf `Entry`
//! - sled tree `meta`: `hard_state`
//! - file `raft-snapshot`: the latest snapshot (protobuf `Snapshot`: metadata, conf state and the
//!   state bytes), replaced atomically (write, fsync, rename, fsync the directory). The snapshot
//!   is the whole ledger; kept out of sled, whose log-structured files keep old versions of large
//!   values around for a while, so disk use stays one snapshot plus the log since it.
//!
//! The membership (`ConfState`) is stored only inside snapshots. raft-rs starts from the snapshot's
//! configuration and the node re-applies every conf change after it while replaying the log, the
//! same way it re-applies ledger commands; persisting a later configuration separately would make
//! that replay apply a change twice (which raft-rs refuses for joint changes).
//!
//! A fresh cluster is bootstrapped with a snapshot at index 1 (the initial voters and an empty
//! state) instead of an empty log: a node added later has no log and no configuration, and must
//! start from a snapshot rather than replay a log whose first configuration it never saw.

use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use thiserror::Error;

use crate::failpoint;

mod reconcile;

#[derive(Debug, Error)]
pub enum Error {
    #[error("raft storage (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("raft storage holds a corrupt {what}: {source}")]
    Corrupt { what: &'static str, source: protobuf::ProtobufError },
    #[error("raft snapshot file {path} is corrupt: {source}")]
    CorruptSnapshot { path: PathBuf, source: protobuf::ProtobufError },
    /// The log, the snapshot and the hard state cannot be reconciled: something on disk is missing.
    #[error("raft storage in {dir} is inconsistent: {problem}")]
    Inconsistent { dir: PathBuf, problem: String },
    #[error("raft storage: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft storage {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What kind of trouble a storage error is, for the operator: each calls for a different action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// No space left: free some and restart.
    DiskFull,
    /// The disk or file system failed a read or write.
    Io,
    /// What is on disk cannot be read back or does not fit together.
    Corrupt,
    /// Anything else (a refusal from raft-rs, a bug).
    Other,
}

/// True for "no space left on device" (ENOSPC), and for EDQUOT, which means the same to an operator.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

fn io_trouble(e: &std::io::Error) -> Trouble {
    if is_disk_full(e) {
        Trouble::DiskFull
    } else {
        Trouble::Io
    }
}

impl Error {
    pub fn trouble(&self) -> Trouble {
        match self {
            Error::Sled(sled::Error::Io(e)) | Error::Io { source: e, .. } => io_trouble(e),
            Error::Sled(sled::Error::Corruption { .. }) => Trouble::Corrupt,
            Error::Corrupt { .. } | Error::CorruptSnapshot { .. } | Error::Inconsistent { .. } => Trouble::Corrupt,
            Error::Sled(_) | Error::Raft(_) => Trouble::Other,
        }
    }
}

impl From<Error> for raft::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Raft(e) => e,
            other => raft::Error::Store(StorageError::Other(Box::new(other))),
        }
    }
}

const HARD_STATE: &[u8] = b"hard_state";
const SNAPSHOT_FILE: &str = "raft-snapshot";

/// The index and term of the bootstrap snapshot every founding member writes identically.
pub const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

/// What a founding member starts from: the initial voters and the state machine's empty image.
pub struct Bootstrap {
    pub voters: Vec<u64>,
    pub data: Vec<u8>,
}

pub struct RaftLog {
    dir: std::path::PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    // Cached copies of what is on disk, so raft's frequent reads never touch sled for metadata.
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    first_index: u64,
    last_index: u64,
    /// Set when raft-rs asked for a snapshot the stored one cannot serve (too old, or taken before
    /// the recipient joined); the node then takes a fresh one. raft-rs retries on its own.
    snapshot_wanted: std::sync::atomic::AtomicBool,
    /// Entries were written since the last [`RaftLog::sync`] (for the `append-after-sync` failpoint).
    appended_since_sync: bool,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The snapshot every founding member starts from: index 1, term 1, the founding voters.
fn bootstrap_snapshot(b: Bootstrap) -> Snapshot {
    let mut snapshot = Snapshot { data: b.data.into(), ..Default::default() };
    let m = snapshot.mut_metadata();
    m.index = BOOTSTRAP_INDEX;
    m.term = BOOTSTRAP_TERM;
    m.mut_conf_state().voters = b.voters;
    snapshot
}

fn bootstrap_hard_state() -> HardState {
    HardState { term: BOOTSTRAP_TERM, commit: BOOTSTRAP_INDEX, ..Default::default() }
}

/// Who writes a snapshot; failpoints are named after the step of each (none at bootstrap, so a
/// test's count of hits starts with the first real snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Bootstrap,
    /// Taken by this node from its own ledger (then the log is compacted to it).
    Taken,
    /// Received from the leader.
    Installed,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    BeforeWrite,
    AfterWrite,
    AfterFsync,
    AfterRename,
}

fn snapshot_step(origin: Origin, step: Step) -> std::io::Result<()> {
    let name = match (origin, step) {
        (Origin::Bootstrap, _) => return Ok(()),
        (Origin::Taken, Step::BeforeWrite) => "snapshot-before-write",
        (Origin::Taken, Step::AfterWrite) => "snapshot-after-write",
        (Origin::Taken, Step::AfterFsync) => "snapshot-after-fsync",
        (Origin::Taken, Step::AfterRename) => "snapshot-after-rename",
        (Origin::Installed, Step::BeforeWrite) => "install-before-write",
        (Origin::Installed, Step::AfterRename) => "install-after-rename",
        (Origin::Installed, Step::AfterWrite | Step::AfterFsync) => return Ok(()),
    };
    failpoint::hit(name)
}

fn tmp_snapshot_path(dir: &Path) -> PathBuf {
    dir.join(format!("{SNAPSHOT_FILE}.tmp"))
}

/// Replaces the snapshot file atomically: a crash leaves the old snapshot or the new one. A write
/// that fails (a full disk) removes its temporary file and leaves the old snapshot in place.
fn write_snapshot(dir: &Path, snapshot: &Snapshot, origin: Origin) -> Result<(), Error> {
    let path = dir.join(SNAPSHOT_FILE);
    let tmp = tmp_snapshot_path(dir);
    let written = write_temp_snapshot(&tmp, snapshot, origin);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let io = |source| Error::Io { path: path.clone(), source };
    std::fs::rename(&tmp, &path).map_err(io)?;
    snapshot_step(origin, Step::AfterRename).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn write_temp_snapshot(tmp: &Path, snapshot: &Snapshot, origin: Origin) -> Result<(), Error> {
    use std::io::Write as _;
    let io = |source| Error::Io { path: tmp.to_owned(), source };
    snapshot_step(origin, Step::BeforeWrite).map_err(io)?;
    // Streamed to the file rather than encoded into one more whole-ledger buffer.
    let f = std::fs::File::create(tmp).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    protobuf::Message::write_to_writer(snapshot, &mut w).map_err(|source| match source {
        protobuf::ProtobufError::IoError(e) => io(e),
        source => Error::Corrupt { what: "snapshot", source },
    })?;
    w.flush().map_err(io)?;
    snapshot_step(origin, Step::AfterWrite).map_err(io)?;
    w.get_ref().sync_all().map_err(io)?;
    snapshot_step(origin, Step::AfterFsync).map_err(io)
}

fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, Error> {
    let path = dir.join(SNAPSHOT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match Snapshot::parse_from_bytes(&bytes) {
            Ok(s) => Ok(Some(s)),
            Err(source) => Err(Error::CorruptSnapshot { path, source }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// How long a restart waits for the previous instance's lock on the database to go away.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled, waiting a little for the file lock. A node stopped in the same process (a restart,
/// a test) drops its `Db` at once, but after heavy writing sled's background I/O still holds the
/// files, and their lock, for a moment: opening again right away fails with "could not acquire
/// lock" (seen in the cluster test that restarts a survivor). A store that really is open
/// elsewhere is still reported, after `LOCK_WAIT`.
fn open_db(dir: &Path) -> Result<sled::Db, Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open() {
            // sled reports the lock as an io::Error of kind Other with this message, nothing more specific.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

fn decode<M: protobuf::Message>(what: &'static str, bytes: &[u8]) -> Result<M, Error> {
    M::parse_from_bytes(bytes).map_err(|source| Error::Corrupt { what, source })
}

fn encode<M: protobuf::Message>(what: &'static str, m: &M) -> Result<Vec<u8>, Error> {
    m.write_to_bytes().map_err(|source| Error::Corrupt { what, source })
}

impl RaftLog {
    /// Opens (or creates) the storage in `dir`. A fresh store is bootstrapped from `bootstrap`
    /// (a founding member) or left empty (a node that waits to be added to a running cluster).
    /// What a crash left inconsistent is repaired, and what no crash explains is refused as
    /// corruption (see `reconcile`).
    pub fn open(dir: &Path, bootstrap: Option<Bootstrap>) -> Result<Self, Error> {
        let db = open_db(dir)?;
        let log = db.open_tree("log")?;
        let meta = db.open_tree("meta")?;
        let mut hard_state = match meta.get(HARD_STATE)? {
            Some(b) => decode("hard state", &b)?,
            None => HardState::default(),
        };
        let mut snapshot_meta = match read_snapshot(dir)? {
            Some(mut s) => s.take_metadata(),
            None => SnapshotMetadata::default(),
        };
        let fresh = snapshot_meta.index == 0 && hard_state.term == 0 && log.is_empty();
        if let (true, Some(b)) = (fresh, bootstrap) {
            let mut snapshot = bootstrap_snapshot(b);
            hard_state = bootstrap_hard_state();
            write_snapshot(dir, &snapshot, Origin::Bootstrap)?;
            meta.insert(HARD_STATE, encode("hard state", &hard_state)?)?;
            db.flush()?;
            snapshot_meta = snapshot.take_metadata();
        }
        let stored = reconcile::Stored { dir, log: &log, meta: &meta, snapshot: &snapshot_meta };
        let (first_index, last_index) = match reconcile::reconcile(&stored, &mut hard_state)? {
            Some(span) => span,
            None => (snapshot_meta.index + 1, snapshot_meta.index),
        };
        let conf_state = snapshot_meta.get_conf_state().clone();
        Ok(Self {
            dir: dir.to_owned(),
            db,
            log,
            meta,
            hard_state,
            conf_state,
            snapshot_meta,
            first_index,
            last_index,
            snapshot_wanted: std::sync::atomic::AtomicBool::new(false),
            appended_since_sync: false,
        })
    }

    /// Throws away the log, the hard state and the snapshot, and starts over from `bootstrap` as a
    /// fresh founding store would. Only for recovering a cluster that lost its majority.
    pub fn reset(&mut self, bootstrap: Bootstrap) -> Result<(), Error> {
        self.log.clear()?;
        self.meta.clear()?;
        self.db.flush()?;
        self.hard_state = HardState::default();
        self.snapshot_meta = SnapshotMetadata::default();
        self.first_index = 1;
        self.last_index = 0;
        let mut snapshot = bootstrap_snapshot(bootstrap);
        write_snapshot(&self.dir, &snapshot, Origin::Bootstrap)?;
        self.set_hard_state(bootstrap_hard_state())?;
        self.conf_state = snapshot.get_metadata().get_conf_state().clone();
        self.snapshot_meta = snapshot.take_metadata();
        self.first_index = BOOTSTRAP_INDEX + 1;
        self.last_index = BOOTSTRAP_INDEX;
        self.sync()
    }

    /// Appends entries, replacing any conflicting suffix (a new leader may overwrite uncommitted
    /// entries). Not durable until [`sync`](Self::sync).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), Error> {
        let Some(first) = entries.first() else { return Ok(()) };
        failpoint::hit("append-before-write").map_err(|e| self.io_error(e))?;
        let mut batch = sled::Batch::default();
        for stale in first.index..=self.last_index {
            batch.remove(&key(stale));
        }
        for e in entries {
            batch.insert(&key(e.index), encode("entry", e)?);
        }
        self.log.apply_batch(batch)?;
        self.appended_since_sync = true;
        failpoint::hit("append-after-write").map_err(|e| self.io_error(e))?;
        self.last_index = entries.last().map_or(self.last_index, |e| e.index);
        if self.first_index > first.index {
            self.first_index = first.index;
        }
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), Error> {
        self.meta.insert(HARD_STATE, encode("hard state", &hs)?)?;
        self.hard_state = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), Error> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// Records the configuration as of the last applied entry, for the next snapshot. It reaches
    /// the disk only with that snapshot: see the module docs.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Makes everything written so far durable: one fsync per Raft batch.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.db.flush()?;
        if std::mem::take(&mut self.appended_since_sync) {
            failpoint::hit("append-after-sync").map_err(|e| self.io_error(e))?;
        }
        Ok(())
    }

    /// An I/O error of the log itself (sled reports none with a path: this names the directory).
    fn io_error(&self, source: std::io::Error) -> Error {
        Error::Io { path: self.dir.clone(), source }
    }

    /// Records a snapshot of the state machine at `index` and drops the log up to it.
    pub fn compact_with_snapshot(&mut self, index: u64, data: Vec<u8>) -> Result<(), Error> {
        let term = self.term_of(index)?;
        let mut snapshot = Snapshot { data: data.into(), ..Default::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        // The commit index that covers the snapshot is durable before the snapshot is: a restart
        // must never find a snapshot past its commit index (raft-rs refuses to start from one).
        if self.hard_state.commit < index {
            self.set_commit(index)?;
        }
        self.sync()?;
        // The snapshot is durable before the log it replaces is dropped.
        write_snapshot(&self.dir, &snapshot, Origin::Taken)?;
        self.snapshot_meta = snapshot.take_metadata();
        let mut batch = sled::Batch::default();
        for i in self.first_index..=index.min(self.last_index) {
            batch.remove(&key(i));
        }
        self.log.apply_batch(batch)?;
        self.first_index = index + 1;
        self.last_index = self.last_index.max(index);
        failpoint::hit("snapshot-after-compaction").map_err(|e| self.io_error(e))?;
        self.sync()
    }

    /// Installs a snapshot received from the leader: the log is replaced by it.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let meta = snapshot.get_metadata();
        if meta.index < self.first_index.saturating_sub(1) {
            return Err(Error::Raft(raft::Error::Store(StorageError::SnapshotOutOfDate)));
        }
        // The hard state is on disk before the snapshot is: a snapshot past the bootstrap one
        // with no hard state beside it is then always damage, never a crash (see `reconcile`).
        if self.hard_state.term < meta.term {
            // A vote stored with an older term was cast in that term, not this one.
            let hs = HardState { term: meta.term, vote: 0, commit: self.hard_state.commit, ..Default::default() };
            self.set_hard_state(hs)?;
            self.sync()?;
        }
        write_snapshot(&self.dir, snapshot, Origin::Installed)?;
        self.log.clear()?;
        failpoint::hit("install-after-log-clear").map_err(|e| self.io_error(e))?;
        self.snapshot_meta = meta.clone();
        self.first_index = meta.index + 1;
        self.last_index = meta.index;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.set_hard_state(hs)?;
        self.conf_state = meta.get_conf_state().clone();
        self.sync()
    }

    /// The latest stored snapshot's state-machine bytes and index, for recovery at start-up.
    pub fn stored_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, Error> {
        Ok(read_snapshot(&self.dir)?.map(|s| (s.get_metadata().index, s.data.to_vec())))
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// True (once) if a peer needs a newer snapshot than the stored one.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_meta.index
    }

    /// Bytes sled holds on disk (log, snapshots and its own overhead), for `kiln cluster`.
    pub fn size_on_disk(&self) -> u64 {
        let snapshot = std::fs::metadata(self.dir.join(SNAPSHOT_FILE)).map_or(0, |m| m.len());
        self.db.size_on_disk().unwrap_or(0) + snapshot
    }

    pub fn entry_count(&self) -> u64 {
        (self.last_index + 1).saturating_sub(self.first_index)
    }

    #[cfg(test)]
    fn sync_for_test(&self) {
        self.db.flush().expect("flush");
    }

    fn term_of(&self, idx: u64) -> Result<u64, Error> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.first_index {
            return Err(Error::Raft(raft::Error::Store(StorageError::Compacted)));
        }
        if idx > self.last_index {
            return Err(Error::Raft(raft::Error::Store(StorageError::Unavailable)));
        }
        match self.log.get(key(idx))? {
            Some(b) => Ok(decode::<Entry>("entry", &b)?.term),
            None => Err(Error::Raft(raft::Error::Store(StorageError::Unavailable))),
        }
    }
}

fn conf_contains(cs: &ConfState, id: u64) -> bool {
    cs.voters.contains(&id)
        || cs.learners.contains(&id)
        || cs.voters_outgoing.contains(&id)
        || cs.learners_next.contains(&id)
}

fn index_of(k: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = k.len().min(8);
    buf[8 - n..].copy_from_slice(&k[..n]);
    u64::from_be_bytes(buf)
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for item in self.log.range(key(low)..key(high)) {
            let (_, bytes) = item.map_err(Error::from)?;
            size += bytes.len() as u64;
            // raft-rs requires at least one entry even when it alone exceeds max_size.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(decode::<Entry>("entry", &bytes)?);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let stored = read_snapshot(&self.dir)?;
        match stored {
            // A node refuses a snapshot whose configuration does not include it, so a node added
            // after the stored snapshot was taken needs a newer one.
            Some(s)
                if s.get_metadata().index >= request_index && conf_contains(s.get_metadata().get_conf_state(), to) =>
            {
                Ok(s)
            }
            _ => {
                self.snapshot_wanted.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("cmd-{index}").into_bytes().into(), ..Default::default() }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(dir.path(), None).expect("open");
            log.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).expect("append");
            log.set_hard_state(HardState { term: 2, commit: 3, ..Default::default() }).expect("hs");
            log.sync().expect("sync");
        }
        let log = RaftLog::open(dir.path(), None).expect("reopen");
        assert_eq!(log.first_index().expect("first"), 1);
        assert_eq!(log.last_index().expect("last"), 3);
        assert_eq!(log.term(3).expect("term"), 2);
        assert_eq!(log.hard_state().commit, 3);
        let got = log.entries(2, 4, None, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_store_dropped_in_this_process_can_be_opened_again_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Busy stores are the ones whose background writes outlive the `Db` for a moment.
        let mut next = 1u64;
        for _ in 0..5 {
            let mut log = RaftLog::open(dir.path(), None).expect("a restart must not trip over the old lock");
            let batch: Vec<Entry> = (next..next + 2000).map(|i| entry(i, 1)).collect();
            log.append(&batch).expect("append");
            next += 2000;
        }
        assert_eq!(RaftLog::open(dir.path(), None).expect("open").last_index().expect("last"), next - 1);
    }

    #[test]
    fn a_store_still_open_is_refused_after_the_lock_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = RaftLog::open(dir.path(), None).expect("open");
        let started = std::time::Instant::now();
        assert!(RaftLog::open(dir.path(), None).is_err(), "two owners of one log");
        assert!(started.elapsed() >= LOCK_WAIT);
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).expect("append");
        log.append(&[entry(2, 2)]).expect("overwrite");
        assert_eq!(log.last_index().expect("last"), 2);
        assert_eq!(log.term(2).expect("term"), 2);
        assert!(log.term(3).is_err());
    }

    #[test]
    fn snapshot_compacts_and_is_recovered() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(dir.path(), None).expect("open");
            log.set_conf_state(ConfState { voters: vec![1, 2], ..Default::default() });
            log.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
            log.compact_with_snapshot(7, b"ledger@7".to_vec()).expect("snapshot");
            assert_eq!(log.first_index().expect("first"), 8);
            assert_eq!(log.term(7).expect("term at snapshot"), 1);
            assert!(matches!(log.term(5), Err(raft::Error::Store(StorageError::Compacted))));
        }
        let log = RaftLog::open(dir.path(), None).expect("reopen");
        assert_eq!(log.first_index().expect("first"), 8);
        assert_eq!(log.last_index().expect("last"), 10);
        assert_eq!(log.stored_snapshot().expect("read"), Some((7, b"ledger@7".to_vec())));
        assert_eq!(log.snapshot(7, 2).expect("snapshot").get_metadata().index, 7);
    }

    #[test]
    fn bootstrap_is_a_snapshot_and_membership_lives_only_in_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot = || Some(Bootstrap { voters: vec![1, 2, 3], data: b"empty".to_vec() });
        {
            let mut log = RaftLog::open(dir.path(), boot()).expect("open");
            assert_eq!(log.first_index().expect("first"), BOOTSTRAP_INDEX + 1);
            assert_eq!(log.last_index().expect("last"), BOOTSTRAP_INDEX);
            assert_eq!(log.initial_state().expect("state").conf_state.voters, vec![1, 2, 3]);
            assert_eq!(log.snapshot(0, 2).expect("a member gets this").get_data(), b"empty");
            // Node 4 is not in the bootstrap configuration and would refuse this snapshot: the
            // node is asked for a fresh one instead.
            assert!(!log.take_snapshot_request());
            assert!(matches!(
                log.snapshot(0, 4),
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            ));
            assert!(log.take_snapshot_request());
            assert!(!log.take_snapshot_request(), "the request is taken once");
            log.append(&[entry(2, 1), entry(3, 1)]).expect("append");
            // A conf change applied at 3 is remembered for the next snapshot, not written alone.
            log.set_conf_state(ConfState { voters: vec![1, 2, 3, 4], ..Default::default() });
            log.sync().expect("sync");
        }
        // Reopening with other bootstrap values changes nothing: only a fresh store bootstraps.
        let mut log = RaftLog::open(dir.path(), Some(Bootstrap { voters: vec![9], data: vec![] })).expect("reopen");
        assert_eq!(
            log.initial_state().expect("state").conf_state.voters,
            vec![1, 2, 3],
            "replay re-applies the change at 3"
        );
        assert_eq!(log.last_index().expect("last"), 3);
        log.set_conf_state(ConfState { voters: vec![1, 2, 3, 4], ..Default::default() });
        log.compact_with_snapshot(3, b"at 3".to_vec()).expect("snapshot");
        drop(log);
        let log = RaftLog::open(dir.path(), None).expect("reopen");
        assert_eq!(log.initial_state().expect("state").conf_state.voters, vec![1, 2, 3, 4]);
        assert_eq!(log.stored_snapshot().expect("read"), Some((3, b"at 3".to_vec())));
    }

    #[test]
    fn a_node_waiting_to_join_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RaftLog::open(dir.path(), None).expect("open");
        assert!(log.initial_state().expect("state").conf_state.voters.is_empty());
        assert_eq!(log.stored_snapshot().expect("read"), None);
        assert_eq!(log.last_index().expect("last"), 0);
    }

    /// What a `kill -9` leaves when it falls after a snapshot's rename and before anything else of
    /// its round reached the disk: the snapshot at 8, the commit index at 5, the log still 1..=10.
    fn crash_after_snapshot_rename(dir: &Path, snapshot_term: u64) {
        let mut log = RaftLog::open(dir, None).expect("open");
        log.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
        log.set_hard_state(HardState { term: 1, commit: 5, ..Default::default() }).expect("hs");
        log.sync().expect("sync");
        let mut snapshot = Snapshot { data: b"ledger@8".to_vec().into(), ..Default::default() };
        snapshot.mut_metadata().index = 8;
        snapshot.mut_metadata().term = snapshot_term;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1];
        write_snapshot(dir, &snapshot, Origin::Taken).expect("snapshot");
    }

    #[test]
    fn a_snapshot_newer_than_the_flushed_commit_index_starts_raft_instead_of_crash_looping() {
        let dir = tempfile::tempdir().expect("tempdir");
        crash_after_snapshot_rename(dir.path(), 1);
        let log = RaftLog::open(dir.path(), None).expect("reopen");
        assert_eq!(log.hard_state().commit, 8, "a snapshot holds only committed entries");
        assert_eq!((log.first_index().expect("first"), log.last_index().expect("last")), (9, 10));
        assert!(matches!(log.term(7), Err(raft::Error::Store(StorageError::Compacted))));
        // What the node does at start: tell raft-rs everything up to the snapshot is applied.
        // Before reconciling, raft-rs panicked here ("applied(8) is out of range") on every start.
        let config = raft::Config { id: 1, applied: 8, ..Default::default() };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = raft::RawNode::new(&config, log, &logger).expect("raft starts");
        assert_eq!(raw.raft.raft_log.committed, 8);
        drop(raw);
        let log = RaftLog::open(dir.path(), None).expect("a second start changes nothing");
        assert_eq!((log.hard_state().commit, log.first_index().expect("first")), (8, 9));
    }

    #[test]
    fn a_log_from_another_history_than_an_installed_snapshot_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The leader's snapshot says term 2 at index 8; this node's log had term 1 there.
        crash_after_snapshot_rename(dir.path(), 2);
        let log = RaftLog::open(dir.path(), None).expect("reopen");
        assert_eq!((log.first_index().expect("first"), log.last_index().expect("last")), (9, 8));
        assert_eq!((log.hard_state().term, log.hard_state().commit), (2, 8));
    }

    #[test]
    fn a_commit_index_past_the_stored_log_is_clamped() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(dir.path(), None).expect("open");
            log.append(&(1..=4).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
            log.set_hard_state(HardState { term: 1, commit: 9, ..Default::default() }).expect("hs");
            log.sync().expect("sync");
        }
        assert_eq!(RaftLog::open(dir.path(), None).expect("reopen").hard_state().commit, 4);
    }

    #[test]
    fn a_half_written_snapshot_is_removed_and_the_old_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(dir.path(), None).expect("open");
            log.append(&(1..=6).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
            log.compact_with_snapshot(3, b"at 3".to_vec()).expect("snapshot");
        }
        std::fs::write(tmp_snapshot_path(dir.path()), b"half a snap").expect("write");
        let log = RaftLog::open(dir.path(), None).expect("reopen");
        assert!(!tmp_snapshot_path(dir.path()).exists());
        assert_eq!(log.stored_snapshot().expect("read"), Some((3, b"at 3".to_vec())));
    }

    fn log_with_snapshot_at_5(dir: &Path) -> RaftLog {
        let mut log = RaftLog::open(dir, None).expect("open");
        log.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
        log.compact_with_snapshot(5, b"at 5".to_vec()).expect("snapshot");
        log
    }

    fn open_error(dir: &Path) -> String {
        match RaftLog::open(dir, None) {
            Ok(_) => panic!("a damaged store opened"),
            Err(e) => {
                assert_eq!(e.trouble(), Trouble::Corrupt, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn a_log_that_starts_after_the_snapshot_is_reported_as_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log_with_snapshot_at_5(dir.path());
        log.log.remove(key(6)).expect("remove");
        log.log.remove(key(7)).expect("remove");
        log.sync_for_test();
        drop(log);
        let msg = open_error(dir.path());
        assert!(msg.contains("starts at index 8 but the snapshot ends at 5"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "names the directory: {msg}");
    }

    #[test]
    fn a_hole_in_the_log_is_reported_as_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log_with_snapshot_at_5(dir.path());
        log.log.remove(key(8)).expect("remove");
        log.sync_for_test();
        drop(log);
        assert!(open_error(dir.path()).contains("entries 8..8 are missing"));
    }

    #[test]
    fn garbage_in_the_log_is_reported_as_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log_with_snapshot_at_5(dir.path());
        log.log.insert(key(7), &[0xff; 16][..]).expect("insert");
        log.sync_for_test();
        drop(log);
        assert!(open_error(dir.path()).contains("corrupt log entry"));
    }

    #[test]
    fn a_garbage_or_truncated_snapshot_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(log_with_snapshot_at_5(dir.path()));
        let path = dir.path().join(SNAPSHOT_FILE);
        let good = std::fs::read(&path).expect("read");
        for bad in [vec![0xffu8; 64], good[..good.len() / 2].to_vec()] {
            std::fs::write(&path, bad).expect("write");
            let msg = open_error(dir.path());
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn a_damaged_sled_database_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(log_with_snapshot_at_5(dir.path()));
        let db = dir.path().join("db");
        let len = std::fs::metadata(&db).expect("sled's file").len() as usize;
        std::fs::write(&db, vec![0x5a; len]).expect("overwrite");
        let opened = std::panic::catch_unwind(|| RaftLog::open(dir.path(), None).map(|_| ()));
        match opened {
            Ok(result) => assert!(result.is_err(), "garbage in sled opened as a store"),
            Err(_) => panic!("sled panicked on a damaged database"),
        }
    }
}
