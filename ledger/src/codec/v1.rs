//! Format 1 bodies. Frozen: what is written here is pinned by `tests/golden/v1/`; a change is a
//! new format beside this one, never an edit of this one.
//!
//! ```text
//!  log entry body:  origin u64 │ now i64 │ n │ n × ( seq u64 │ tag u16 │ fields… )
//!  snapshot body:   members [(id u64, address str)] │ ledger record (see `record`)
//! ```
//! All integers are postcard varints (signed ones zigzag); `n` and lengths are varints too.

use super::record;
use super::{put, tags, take, At, Batch, Error, Kind, Snapshot};
use crate::{Ledger, Millis};

const VERSION: u16 = 1;

fn at(kind: Kind, what: &'static str) -> At<impl FnOnce() -> String> {
    At { kind, version: VERSION, what: move || what.to_owned() }
}

pub(super) fn encode_batch(batch: &Batch, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    put(&batch.origin, out)?;
    put(&batch.now, out)?;
    put(&batch.commands.len(), out)?;
    for (seq, cmd) in &batch.commands {
        put(seq, out)?;
        tags::encode(cmd, out)?;
    }
    Ok(())
}

pub(super) fn decode_batch(body: &[u8]) -> Result<(Batch, &[u8]), Error> {
    let (origin, rest) = take::<u64, _>(body, at(Kind::LogEntry, "origin"))?;
    let (now, rest) = take::<Millis, _>(rest, at(Kind::LogEntry, "time"))?;
    let (n, mut rest) = take::<usize, _>(rest, at(Kind::LogEntry, "command count"))?;
    // Every command takes at least two bytes: a count beyond that is corrupt, not a reason to
    // allocate.
    let mut commands = Vec::with_capacity(n.min(rest.len() / 2));
    for index in 0..n {
        let (seq, after_seq) = take::<u64, _>(
            rest,
            At { kind: Kind::LogEntry, version: VERSION, what: || format!("the sequence number of command {index}") },
        )?;
        let (cmd, after_cmd) = tags::decode(after_seq, VERSION, index)?;
        commands.push((seq, cmd));
        rest = after_cmd;
    }
    Ok((Batch { origin, now, commands }, rest))
}

pub(super) fn snapshot_size(members: &[(u64, String)], ledger: &Ledger) -> Result<usize, postcard::Error> {
    let members = postcard::serialize_with_flavor(members, postcard::ser_flavors::Size::default())?;
    Ok(members + record::size(ledger)?)
}

pub(super) fn encode_snapshot(
    members: &[(u64, String)],
    ledger: &Ledger,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    put(members, out)?;
    record::encode(ledger, out)
}

pub(super) fn decode_snapshot(body: &[u8]) -> Result<(Snapshot, &[u8]), Error> {
    let (members, rest) = take::<Vec<(u64, String)>, _>(body, at(Kind::Snapshot, "members"))?;
    let (ledger, rest) = record::decode(rest).map_err(|source| Error::Malformed {
        kind: Kind::Snapshot,
        version: VERSION,
        what: "the ledger record".into(),
        source,
    })?;
    Ok((Snapshot { members, ledger }, rest))
}
