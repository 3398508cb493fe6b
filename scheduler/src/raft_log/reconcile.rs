//! Making the snapshot, the hard state and the log agree again when a store is opened.
//!
//! They are three writes to two places (a file and sled), and a crash can fall between any two of
//! them: a snapshot renamed into place before the commit index that covers it was flushed, a log
//! still holding the entries a new snapshot replaced, a received snapshot installed over a log
//! from another leader's history. raft-rs trusts what storage tells it and panics on what does not
//! fit (`applied` past `commit`, `commit` past the last entry), which made such a node crash-loop.
//! Every repair here is one a crash can call for and none can lose a committed entry:
//!
//! - a snapshot only ever holds committed entries, so a commit index below it is raised to it;
//! - entries the snapshot covers are dropped (a stale suffix from another term: the whole log);
//! - a commit index past everything stored is clamped (the leader tells it again);
//! - a leftover temporary snapshot (a crash mid-write) is removed.
//!
//! What no crash can produce — a log that starts after the snapshot ends, a hole in the log, an
//! entry that does not decode, a snapshot without any hard state — is corruption, reported with
//! the directory and never repaired.

use std::path::Path;

use raft::prelude::{Entry, HardState, SnapshotMetadata};

use super::{decode, encode, index_of, key, tmp_snapshot_path, Error, BOOTSTRAP_INDEX, HARD_STATE};

/// The stored pieces, as read at open.
pub(super) struct Stored<'a> {
    pub dir: &'a Path,
    pub log: &'a sled::Tree,
    pub meta: &'a sled::Tree,
    pub snapshot: &'a SnapshotMetadata,
}

/// What the log holds after reconciling: its first and last index, if it holds any entry.
pub(super) type Span = Option<(u64, u64)>;

/// Repairs what a crash can leave behind and checks the rest; returns the log's span. Each repair
/// is logged once at warn.
pub(super) fn reconcile(stored: &Stored<'_>, hard_state: &mut HardState) -> Result<Span, Error> {
    let Stored { dir, log, meta, snapshot } = *stored;
    // Every write path stores a hard state before any snapshot past the bootstrap one (see
    // `RaftLog::apply_snapshot`), so its absence means sled's files were lost or replaced: sled
    // opens unreadable files as an empty database rather than failing.
    if snapshot.index > BOOTSTRAP_INDEX && *hard_state == HardState::default() {
        return Err(Error::Inconsistent {
            dir: dir.to_owned(),
            problem: format!(
                "the snapshot is at index {} but the log database holds no Raft state (term, vote, commit): its files were lost or damaged",
                snapshot.index
            ),
        });
    }
    let tmp = tmp_snapshot_path(dir);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|source| Error::Io { path: tmp.clone(), source })?;
        tracing::warn!(path = %tmp.display(), "removed a snapshot a crash left half-written");
    }
    let mut changed = drop_covered_entries(log, snapshot)?;
    let span = check_log(dir, log, snapshot)?;
    let before = hard_state.clone();
    if hard_state.commit < snapshot.index {
        tracing::warn!(
            commit = hard_state.commit,
            snapshot = snapshot.index,
            "the snapshot is newer than the stored commit index (a crash before it was flushed): raised it"
        );
        hard_state.commit = snapshot.index;
    }
    if hard_state.term < snapshot.term {
        tracing::warn!(term = hard_state.term, snapshot_term = snapshot.term, "raised the term to the snapshot's");
        hard_state.term = snapshot.term;
        // The stored vote was cast in an older term.
        hard_state.vote = 0;
    }
    let last = span.map_or(snapshot.index, |(_, last)| last.max(snapshot.index));
    if hard_state.commit > last {
        tracing::warn!(commit = hard_state.commit, last, "the commit index is past the stored log: clamped it");
        hard_state.commit = last;
    }
    if *hard_state != before {
        meta.insert(HARD_STATE, encode("hard state", hard_state)?)?;
        changed = true;
    }
    if changed {
        meta.flush()?;
    }
    Ok(span)
}

/// Drops the entries at or below the snapshot's index. If the log's entry at that index has
/// another term than the snapshot says, what follows it came from a history the cluster did not
/// keep (a snapshot from the leader was installed over it when the crash came): all of it goes.
fn drop_covered_entries(log: &sled::Tree, snapshot: &SnapshotMetadata) -> Result<bool, Error> {
    let covered = match log.first()? {
        Some((k, _)) if snapshot.index > 0 && index_of(&k) <= snapshot.index => index_of(&k),
        _ => return Ok(false),
    };
    let diverged = match log.get(key(snapshot.index))? {
        Some(bytes) => decode::<Entry>("log entry", &bytes)?.term != snapshot.term,
        None => false,
    };
    if diverged {
        let dropped = log.len();
        log.clear()?;
        tracing::warn!(
            snapshot = snapshot.index,
            dropped,
            "the log disagrees with the snapshot at its index (another leader's history): dropped it; the leader sends the entries again"
        );
        return Ok(true);
    }
    let mut batch = sled::Batch::default();
    let mut dropped = 0u64;
    for k in log.range(key(covered)..=key(snapshot.index)).keys() {
        batch.remove(k?);
        dropped += 1;
    }
    log.apply_batch(batch)?;
    tracing::warn!(
        snapshot = snapshot.index,
        dropped,
        "dropped log entries the snapshot already holds (a crash before the log was compacted)"
    );
    Ok(true)
}

/// Every entry decodes, sits under its own index, and the log runs without a hole from the entry
/// right after the snapshot.
fn check_log(dir: &Path, log: &sled::Tree, snapshot: &SnapshotMetadata) -> Result<Span, Error> {
    let inconsistent = |problem: String| Error::Inconsistent { dir: dir.to_owned(), problem };
    let mut span: Span = None;
    for item in log.iter() {
        let (k, bytes) = item?;
        let index = index_of(&k);
        let entry: Entry = decode("log entry", &bytes)?;
        if entry.index != index {
            return Err(inconsistent(format!("the log entry stored under index {index} says it is {}", entry.index)));
        }
        span = match span {
            None if index != snapshot.index + 1 => {
                return Err(inconsistent(format!(
                    "the log starts at index {index} but the snapshot ends at {}: entries {}..{} are missing",
                    snapshot.index,
                    snapshot.index + 1,
                    index - 1
                )))
            }
            None => Some((index, index)),
            Some((first, last)) if index != last + 1 => {
                return Err(inconsistent(format!(
                    "the log has a hole: entries {}..{} are missing between {first} and {index}",
                    last + 1,
                    index - 1
                )))
            }
            Some((first, _)) => Some((first, index)),
        };
    }
    Ok(span)
}
