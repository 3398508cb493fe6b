//! Format 3 snapshots: format 2's body followed by the batches (`crate::batches::Batches`).
//! Frozen like `v1` and `v2`: pinned by `tests/golden/v3/`. Format 3 has no log entry body of its
//! own (its new commands are wire tags 21–24 in `tags`).
//!
//! ```text
//!  snapshot body:   members │ ledger record │ features (as format 2) │ batches
//!  batches:         records [(id u64, record)] │ members [(task u64, batch u64)] │ last_id u64
//! ```

use super::{put, take, v2, At, Error, Kind, Snapshot};
use crate::batches::Batches;
use crate::Ledger;

const VERSION: u16 = 3;

pub(super) fn snapshot_size(members: &[(u64, String)], ledger: &Ledger) -> Result<usize, postcard::Error> {
    let batches = postcard::serialize_with_flavor(&ledger.batches, postcard::ser_flavors::Size::default())?;
    Ok(v2::snapshot_size(members, ledger)? + batches)
}

pub(super) fn encode_snapshot(
    members: &[(u64, String)],
    ledger: &Ledger,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    v2::encode_snapshot(members, ledger, out)?;
    put(&ledger.batches, out)
}

pub(super) fn decode_snapshot(body: &[u8]) -> Result<(Snapshot, &[u8]), Error> {
    let (mut snapshot, rest) = v2::decode_snapshot(body).map_err(|e| match e {
        Error::Malformed { kind, what, source, .. } => Error::Malformed { kind, version: VERSION, what, source },
        other => other,
    })?;
    let at = At { kind: Kind::Snapshot, version: VERSION, what: || "the batches".to_owned() };
    let (mut batches, rest) = take::<Batches, _>(rest, at)?;
    batches.rebuild_sum();
    snapshot.ledger.batches = batches;
    Ok((snapshot, rest))
}
