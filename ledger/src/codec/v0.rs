//! Format 0: the headerless bytes of the releases before this codec existed. Read-only.
//!
//! Those releases wrote a log entry as postcard of `(origin, now, [(seq, command)])`, with each
//! command as its serde variant index, and a snapshot as postcard of `(members, ledger bytes)`,
//! the ledger bytes being the same record `record` reads. A node upgraded from such a release
//! must still read its own data directory and the entries its old peers write until every member
//! runs this build, so format 0 stays readable; nothing writes it any more.
//!
//! The variant order of `Command` is frozen for the first seventeen commands (`Submit` …
//! `Backup`) because of this module: new commands are appended, never inserted.

use super::{record, Batch, Error, Kind, Snapshot};
use crate::command::Command;
use crate::Millis;

const VERSION: u16 = 0;

type LegacyBatch = (u64, Millis, Vec<(u64, Command)>);

pub(super) fn decode_batch(bytes: &[u8]) -> Result<Batch, Error> {
    let (origin, now, commands): LegacyBatch = postcard::from_bytes(bytes).map_err(|source| Error::Malformed {
        kind: Kind::LogEntry,
        version: VERSION,
        what: "a headerless (pre-codec) log entry".into(),
        source,
    })?;
    Ok(Batch { origin, now, commands })
}

pub(super) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, Error> {
    let malformed =
        |what: &str, source| Error::Malformed { kind: Kind::Snapshot, version: VERSION, what: what.into(), source };
    let (members, ledger): (Vec<(u64, String)>, Vec<u8>) =
        postcard::from_bytes(bytes).map_err(|e| malformed("a headerless (pre-codec) snapshot", e))?;
    let (ledger, rest) = record::decode(&ledger).map_err(|e| malformed("the ledger record", e))?;
    super::no_trailing(Kind::Snapshot, VERSION, rest)?;
    Ok(Snapshot { members, ledger })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ledger;
    use crate::LedgerConfig;

    /// The bytes the pre-codec release wrote, built the way it built them.
    fn legacy_entry(batch: &LegacyBatch) -> Vec<u8> {
        postcard::to_stdvec(batch).expect("encodes")
    }

    #[test]
    fn a_log_entry_written_before_the_codec_is_still_read() {
        let legacy = (7, 1_700_000_000_000, vec![(1, Command::ExpireLeases), (2, Command::CollectGarbage)]);
        let batch = super::super::decode_batch(&legacy_entry(&legacy)).expect("reads format 0");
        assert_eq!((batch.origin, batch.now, batch.commands), legacy);
    }

    #[test]
    fn a_snapshot_written_before_the_codec_is_still_read() {
        let ledger = Ledger::new(LedgerConfig::default());
        let mut record = Vec::new();
        record::encode(&ledger, &mut record).expect("encodes");
        let members = vec![(1u64, "http://127.0.0.1:7450".to_owned())];
        let legacy = postcard::to_stdvec(&(members.clone(), record)).expect("encodes");
        let snapshot = super::super::decode_snapshot(&legacy).expect("reads format 0");
        assert_eq!(snapshot.members, members);
        assert!(snapshot.ledger == ledger);
    }

    #[test]
    fn headerless_garbage_is_refused_not_applied() {
        assert!(matches!(super::super::decode_batch(&[0xff; 3]), Err(Error::Malformed { version: 0, .. })));
    }
}
