//! The ledger's wire and disk format: Raft log entries and snapshots, versioned.
//!
//! Every replica must read every committed entry exactly as the leader meant it, including
//! replicas running another build during a rolling upgrade. So the bytes are a contract owned
//! here, not whatever the in-memory types happen to serialise to:
//!
//! ```text
//!  log entry:  "KLNE" │ version u16 LE │ body(version)      body v1: origin, now, n, n × (seq, tag, fields)
//!  snapshot:   "KLNS" │ version u16 LE │ body(version)      body v1: members, ledger record
//!                                                            body v2: members, ledger record, features
//!                                                            body v3: … features, batches
//! ```
//!
//! - Each command is written as its explicit wire tag (the table in `tags`, see [`COMMAND_TAGS`])
//!   followed by its fields; the order of `Command`'s variants is not part of the format.
//! - Field and body encoding is postcard (varints, length-prefixed strings and sequences).
//! - Decoding never skips: an unknown magic, version or command tag, a truncated or over-long
//!   body is an [`Error`] naming what was not understood. The shell halts on it (a replica that
//!   cannot apply a committed entry must not carry on without it).
//! - Golden byte fixtures (`ledger/tests/golden/`) pin every command and a snapshot; a fixture that
//!   changes is a format change and needs a new version.
//!
//! # Versions
//!
//! [`FORMAT_VERSION`] is what this build writes by default; [`READABLE_VERSIONS`] is what it reads.
//! The encoders take the version to write as an argument because, in a cluster being upgraded, the
//! version is the one every member has agreed to (a feature flag), not the newest this build
//! knows: a leader on a new build keeps writing the old version until the flag is enabled.
//! Format 0 is the headerless postcard of the releases before this codec: read (a node upgraded
//! from one must read its own data and its old peers' entries), never written; see `v0`.
//! Adding format 2 means: a `v2` module beside `v1`, 2 appended to [`WRITABLE_VERSIONS`] and
//! [`READABLE_VERSIONS`], an arm in each dispatch below, and its own golden fixtures
//! (`tests/golden/v2/`); version 1 keeps decoding as before.
//!
//!
//! Format 2 (feature flags, `crate::features`) changes snapshots only: it adds the `features`
//! field after the ledger record. A snapshot is written in format 2 exactly when the ledger has
//! something enabled — which happens only once every member reported that it reads format 2 — and
//! in the requested format otherwise, so a ledger that enabled nothing snapshots (and digests)
//! byte for byte as format 1 and an older release compares equal. Log entries keep envelope
//! version 1: the commands format 2 added are new wire tags (18–20), which an older build refuses
//! as [`Error::UnknownCommand`] and halts on.
//!
//! Format 3 (catalog batches, `crate::batches`) likewise changes snapshots only: it appends the
//! batches after the features, and is written exactly when the `batches` feature is enabled. Its
//! commands are wire tags 21–24.
//!
//! ```
//! use kiln_ledger::codec::{self, Batch, FORMAT_VERSION};
//! use kiln_ledger::Command;
//!
//! let batch = Batch { origin: 7, now: 1_700_000_000_000, commands: vec![(1, Command::ExpireLeases)] };
//! let bytes = codec::encode_batch(FORMAT_VERSION, &batch).unwrap();
//! assert_eq!(codec::decode_batch(&bytes).unwrap(), batch);
//! ```

mod record;
mod tags;
mod v0;
mod v1;
mod v2;
mod v3;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use tags::{tag_of, COMMAND_TAGS};

use crate::command::Command;
use crate::{Ledger, Millis};

/// The format this build writes unless told otherwise.
pub const FORMAT_VERSION: u16 = 1;
/// Log entry formats this build can write (what a cluster may agree on while this build is a member).
pub const WRITABLE_VERSIONS: &[u16] = &[1];
/// Log entry formats this build can read (0: the headerless bytes of the release before).
pub const READABLE_VERSIONS: &[u16] = &[0, 1];
/// Snapshot formats this build writes (2: with the enabled feature flags); it reads these and 0.
pub const SNAPSHOT_VERSIONS: &[u16] = &[1, 2, 3];

const ENTRY_MAGIC: [u8; 4] = *b"KLNE";
const SNAPSHOT_MAGIC: [u8; 4] = *b"KLNS";
const HEADER_LEN: usize = 6;

/// One Raft log entry: the commands proposed together, stamped with the leader's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The proposing process (its incarnation): only that process holds waiters for the
    /// sequence numbers below.
    pub origin: u64,
    /// The leader's time, at which every replica applies these commands.
    pub now: Millis,
    /// (proposer's sequence number, command), in apply order.
    pub commands: Vec<(u64, Command)>,
}

/// What a snapshot holds: the Raft members' ids and addresses (carried for the shell) and the
/// ledger, both as of the snapshot's index.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub members: Vec<(u64, String)>,
    pub ledger: Ledger,
}

/// Which kind of bytes failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LogEntry,
    Snapshot,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::LogEntry => "log entry",
            Kind::Snapshot => "snapshot",
        })
    }
}

/// Why bytes could not be decoded (or a version not written). Deterministic: every replica of the
/// same build fails on the same bytes the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a Kiln {kind}: it does not start with the {kind} header")]
    NotKiln { kind: Kind },
    #[error("{kind} format version {version} is unknown to this build; upgrade this node")]
    UnknownVersion { kind: Kind, version: u16 },
    #[error("command {index} of the log entry has wire tag {tag}, unknown to this build (format {version}); upgrade this node")]
    UnknownCommand { version: u16, index: usize, tag: u16 },
    #[error("malformed {kind} (format {version}): {what}: {source}")]
    Malformed { kind: Kind, version: u16, what: String, source: postcard::Error },
    #[error("{kind} (format {version}) has {extra} unread bytes after its end")]
    TrailingBytes { kind: Kind, version: u16, extra: usize },
    #[error("this build cannot write format version {version} (log entries {WRITABLE_VERSIONS:?}, snapshots {SNAPSHOT_VERSIONS:?})")]
    CannotWrite { version: u16 },
}

/// Encodes a log entry in format `version`.
pub fn encode_batch(version: u16, batch: &Batch) -> Result<Vec<u8>, Error> {
    let mut out = header(ENTRY_MAGIC, WRITABLE_VERSIONS, version)?;
    match version {
        1 => v1::encode_batch(batch, &mut out),
        _ => return Err(Error::CannotWrite { version }),
    }
    .map_err(|source| Error::Malformed { kind: Kind::LogEntry, version, what: "encoding".into(), source })?;
    Ok(out)
}

/// Decodes a log entry of any readable format.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, Error> {
    if is_headerless(bytes) {
        return v0::decode_batch(bytes);
    }
    let (version, body) = split_header(Kind::LogEntry, ENTRY_MAGIC, bytes)?;
    let (batch, rest) = match version {
        1 => v1::decode_batch(body)?,
        _ => return Err(Error::UnknownVersion { kind: Kind::LogEntry, version }),
    };
    no_trailing(Kind::LogEntry, version, rest)?;
    Ok(batch)
}

/// Encodes a snapshot of `ledger` and the Raft `members` in format `version`, or in format 2 if
/// the ledger has enabled features, which format 1 cannot hold (see the module docs). The buffer
/// is sized first and allocated once: a growing `Vec` of a 100 MB snapshot briefly holds its old
/// and new halves, which was the replica's peak memory.
pub fn encode_snapshot(version: u16, members: &[(u64, String)], ledger: &Ledger) -> Result<Vec<u8>, Error> {
    let version = snapshot_version(version, ledger);
    let malformed = |source| Error::Malformed { kind: Kind::Snapshot, version, what: "encoding".into(), source };
    let size = match version {
        1 => v1::snapshot_size(members, ledger),
        2 => v2::snapshot_size(members, ledger),
        3 => v3::snapshot_size(members, ledger),
        _ => return Err(Error::CannotWrite { version }),
    }
    .map_err(malformed)?;
    let mut out = Vec::with_capacity(HEADER_LEN + size);
    out.extend_from_slice(&header(SNAPSHOT_MAGIC, SNAPSHOT_VERSIONS, version)?);
    match version {
        1 => v1::encode_snapshot(members, ledger, &mut out),
        2 => v2::encode_snapshot(members, ledger, &mut out),
        _ => v3::encode_snapshot(members, ledger, &mut out),
    }
    .map_err(malformed)?;
    Ok(out)
}

/// The format a snapshot of `ledger` is written in when `requested` is asked for: at least 2 once
/// a feature is enabled (every member reads format 2 by then, or it could not have been), and 3
/// once `batches` is (every member reads format 3).
pub fn snapshot_version(requested: u16, ledger: &Ledger) -> u16 {
    if ledger.features.is_enabled(crate::features::BATCHES) {
        requested.max(3)
    } else if ledger.features.is_empty() {
        requested
    } else {
        requested.max(2)
    }
}

/// Decodes a snapshot of any readable format; the ledger's indexes are rebuilt.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, Error> {
    if is_headerless(bytes) {
        return v0::decode_snapshot(bytes);
    }
    let (version, body) = split_header(Kind::Snapshot, SNAPSHOT_MAGIC, bytes)?;
    let (snapshot, rest) = match version {
        1 => v1::decode_snapshot(body)?,
        2 => v2::decode_snapshot(body)?,
        3 => v3::decode_snapshot(body)?,
        _ => return Err(Error::UnknownVersion { kind: Kind::Snapshot, version }),
    };
    no_trailing(Kind::Snapshot, version, rest)?;
    Ok(snapshot)
}

/// The format version of encoded bytes (a log entry or a snapshot), without decoding the body.
pub fn version_of(bytes: &[u8]) -> Option<(Kind, u16)> {
    [(Kind::LogEntry, ENTRY_MAGIC), (Kind::Snapshot, SNAPSHOT_MAGIC)]
        .into_iter()
        .find_map(|(kind, magic)| split_header(kind, magic, bytes).ok().map(|(v, _)| (kind, v)))
}

impl Ledger {
    /// The ledger alone as a snapshot in the current format (no members); format 2 once a
    /// feature is enabled. Replicas compare digests of these bytes.
    pub fn to_snapshot(&self) -> Vec<u8> {
        // The current version is always writable, and plain data always encodes.
        encode_snapshot(FORMAT_VERSION, &[], self).unwrap_or_default()
    }

    /// A ledger from snapshot bytes of any readable format (members, if any, are dropped).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, Error> {
        decode_snapshot(bytes).map(|s| s.ledger)
    }
}

/// Bytes that carry neither header: format 0, written by the releases before this codec.
fn is_headerless(bytes: &[u8]) -> bool {
    !bytes.starts_with(&ENTRY_MAGIC) && !bytes.starts_with(&SNAPSHOT_MAGIC)
}

fn header(magic: [u8; 4], writable: &[u16], version: u16) -> Result<Vec<u8>, Error> {
    if !writable.contains(&version) {
        return Err(Error::CannotWrite { version });
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    Ok(out)
}

fn split_header(kind: Kind, magic: [u8; 4], bytes: &[u8]) -> Result<(u16, &[u8]), Error> {
    match bytes {
        [m0, m1, m2, m3, v0, v1, body @ ..] if [*m0, *m1, *m2, *m3] == magic => {
            Ok((u16::from_le_bytes([*v0, *v1]), body))
        }
        _ => Err(Error::NotKiln { kind }),
    }
}

fn no_trailing(kind: Kind, version: u16, rest: &[u8]) -> Result<(), Error> {
    match rest.len() {
        0 => Ok(()),
        extra => Err(Error::TrailingBytes { kind, version, extra }),
    }
}

/// Appends one value, postcard-encoded.
fn put<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(value, buf)?;
    Ok(())
}

/// Where a value being read sits, for the error if it cannot be.
struct At<F> {
    kind: Kind,
    version: u16,
    what: F,
}

/// Reads one postcard-encoded value.
fn take<T: DeserializeOwned, F: FnOnce() -> String>(bytes: &[u8], at: At<F>) -> Result<(T, &[u8]), Error> {
    postcard::take_from_bytes(bytes).map_err(|source| Error::Malformed {
        kind: at.kind,
        version: at.version,
        what: (at.what)(),
        source,
    })
}
