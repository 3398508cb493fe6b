//! A check of a Raft message's protobuf encoding before raft-rs's `protobuf` 2 parser reads it.
//!
//! RUSTSEC-2024-0437 reports that `protobuf` before 3.7.2 can recurse without limit while
//! skipping unknown group fields, overflowing the stack on a few kilobytes of nested start-group
//! tags. The 2.28 that raft-rs pulls in refuses a group inside a skipped group instead of
//! recursing (a test below holds it to that on a small stack), but Kiln does not lean on it: no
//! field of `eraftpb` is a group, so a group tag anywhere the parser would look — the message,
//! its entries, its snapshot's metadata and conf state, and the conf changes carried in entries —
//! can only be an attack or damage. [`check`] walks exactly those places, no deeper than the
//! schema, and refuses the message before it is parsed. Everything else it leaves to the parser
//! (unknown length-delimited fields are skipped without recursion).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a group field ({field}) where raft's messages have none")]
    Group { field: u64 },
    #[error("wire type {0} does not exist")]
    WireType(u64),
    #[error("truncated")]
    Truncated,
}

/// The messages of `eraftpb` that nest other messages (the rest hold scalars and bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
    ConfChange,
    ConfChangeV2,
    ConfChangeSingle,
}

impl Schema {
    /// The message type of length-delimited field `field`, if it is a message.
    fn nested(self, field: u64) -> Option<Schema> {
        match (self, field) {
            (Schema::Message, 7) => Some(Schema::Entry),
            (Schema::Message, 9) => Some(Schema::Snapshot),
            (Schema::Snapshot, 2) => Some(Schema::SnapshotMetadata),
            (Schema::SnapshotMetadata, 1) => Some(Schema::ConfState),
            (Schema::ConfChangeV2, 2) => Some(Schema::ConfChangeSingle),
            _ => None,
        }
    }
}

/// Checks a `raft::prelude::Message` as received from a peer.
pub fn check(bytes: &[u8]) -> Result<(), WireError> {
    walk(bytes, Schema::Message)
}

fn varint(b: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or(WireError::Truncated)?;
        *b = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Truncated)
}

fn take<'a>(b: &mut &'a [u8], n: u64) -> Result<&'a [u8], WireError> {
    let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
    if n > b.len() {
        return Err(WireError::Truncated);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn walk(mut b: &[u8], schema: Schema) -> Result<(), WireError> {
    // An entry's data is a conf change when its type (field 1) says so; the type may come after
    // the data, so both are noted and checked at the end.
    let (mut entry_type, mut entry_data) = (0u64, None);
    while !b.is_empty() {
        let tag = varint(&mut b)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let value = varint(&mut b)?;
                if schema == Schema::Entry && field == 1 {
                    entry_type = value;
                }
            }
            1 => {
                take(&mut b, 8)?;
            }
            5 => {
                take(&mut b, 4)?;
            }
            2 => {
                let len = varint(&mut b)?;
                let payload = take(&mut b, len)?;
                if let Some(nested) = schema.nested(field) {
                    walk(payload, nested)?;
                } else if schema == Schema::Entry && field == 4 {
                    entry_data = Some(payload);
                }
            }
            3 | 4 => return Err(WireError::Group { field }),
            other => return Err(WireError::WireType(other)),
        }
    }
    match (entry_type, entry_data) {
        (1, Some(data)) => walk(data, Schema::ConfChange),
        (2, Some(data)) => walk(data, Schema::ConfChangeV2),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use protobuf::Message as _;
    use raft::prelude::{ConfChangeSingle, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};

    use super::*;

    fn real_message() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 2;
        m.to = 1;
        m.term = 7;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(ConfChangeSingle { node_id: 4, ..Default::default() });
        let mut conf = Entry::default();
        conf.set_entry_type(EntryType::EntryConfChangeV2);
        conf.data = cc.write_to_bytes().expect("encode").into();
        // Ledger commands are arbitrary bytes; a 0x0b (field 1, start group) among them is fine.
        let normal = Entry { data: vec![0x0b, 0x0b, 0x0c, 0xff].into(), index: 9, ..Default::default() };
        m.mut_entries().push(conf);
        m.mut_entries().push(normal);
        let mut snapshot = Snapshot { data: vec![0x0b; 64].into(), ..Default::default() };
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.set_snapshot(snapshot);
        m
    }

    #[test]
    fn real_messages_pass_whatever_bytes_their_entries_carry() {
        let bytes = real_message().write_to_bytes().expect("encode");
        assert_eq!(check(&bytes), Ok(()));
    }

    /// The advisory's input: start-group tags of an unknown field (100) nested deeper than any
    /// stack.
    fn nested_groups(depth: usize) -> Vec<u8> {
        [0xa3, 0x06].repeat(depth)
    }

    #[test]
    fn the_protobuf_parser_itself_refuses_nested_groups_without_deep_recursion() {
        // On a 256 KiB stack: a parser that recursed per level would abort this test process.
        let bytes = nested_groups(100_000);
        let parsed = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || Message::parse_from_bytes(&bytes).is_ok())
            .expect("thread")
            .join();
        assert_eq!(parsed.ok(), Some(false));
    }

    #[test]
    fn nested_groups_are_refused_wherever_the_parser_would_meet_them() {
        let groups = nested_groups(200_000);
        assert!(matches!(check(&groups), Err(WireError::Group { .. })));
        // Inside an entry of the message.
        let mut in_entry = vec![0x3a]; // field 7, length-delimited
        let mut len = groups.len();
        while len >= 0x80 {
            in_entry.push((len as u8) | 0x80);
            len >>= 7;
        }
        in_entry.push(len as u8);
        in_entry.extend(&groups);
        assert!(matches!(check(&in_entry), Err(WireError::Group { .. })));
        // Inside a conf change carried by an entry.
        let mut m = Message::default();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.data = nested_groups(500).into();
        m.mut_entries().push(e);
        let bytes = m.write_to_bytes().expect("encode");
        assert!(matches!(check(&bytes), Err(WireError::Group { .. })));
    }

    #[test]
    fn truncated_or_impossible_encodings_are_errors_not_panics() {
        let bytes = real_message().write_to_bytes().expect("encode");
        for cut in 0..bytes.len() {
            let _ = check(&bytes[..cut]);
        }
        assert_eq!(check(&[0x0f]), Err(WireError::WireType(7)));
        assert_eq!(check(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]), Err(WireError::Truncated));
    }
}
