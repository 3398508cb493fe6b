//! Format 2 snapshots: format 1's body followed by the enabled feature flags and the gated
//! features' state (`crate::features::Features`). Frozen like `v1`: pinned by `tests/golden/v2/`.
//! Format 2 has no log entry body of its own (its new commands are wire tags in `tags`).
//!
//! ```text
//!  snapshot body:   members [(id u64, address str)] │ ledger record (see `record`) │ features
//!  features:        enabled [str] │ sessions [(worker str, session u64)] │ last_session u64
//! ```

use super::{put, take, v1, At, Error, Kind, Snapshot};
use crate::features::Features;
use crate::Ledger;

const VERSION: u16 = 2;

pub(super) fn snapshot_size(members: &[(u64, String)], ledger: &Ledger) -> Result<usize, postcard::Error> {
    let features = postcard::serialize_with_flavor(&ledger.features, postcard::ser_flavors::Size::default())?;
    Ok(v1::snapshot_size(members, ledger)? + features)
}

pub(super) fn encode_snapshot(
    members: &[(u64, String)],
    ledger: &Ledger,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    v1::encode_snapshot(members, ledger, out)?;
    put(&ledger.features, out)
}

pub(super) fn decode_snapshot(body: &[u8]) -> Result<(Snapshot, &[u8]), Error> {
    // The body up to the record is format 1's; only its errors would name version 1.
    let (mut snapshot, rest) = v1::decode_snapshot(body).map_err(|e| match e {
        Error::Malformed { kind, what, source, .. } => Error::Malformed { kind, version: VERSION, what, source },
        other => other,
    })?;
    let at = At { kind: Kind::Snapshot, version: VERSION, what: || "the features".to_owned() };
    let (features, rest) = take::<Features, _>(rest, at)?;
    snapshot.ledger.features = features;
    Ok((snapshot, rest))
}
