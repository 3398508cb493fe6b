//! How the ledger's record becomes bytes: the snapshot body.
//!
//! One definition, [`Record`], generic over owned and borrowed fields: borrowed to write a
//! snapshot without copying the ledger, owned to read one.

mod record;

pub(crate) use record::{decode_ledger, encode_ledger};

use crate::Ledger;

impl Ledger {
    /// The ledger's record as bytes (indexes are not included; they are rebuilt on load).
    pub fn to_snapshot(&self) -> Vec<u8> {
        encode_ledger(self)
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, postcard::Error> {
        decode_ledger(bytes)
    }
}
