//! The command tag table: the one place that says which number stands for which command on the
//! wire. A command's position in the `Command` enum means nothing to the codec.
//!
//! Rules (see `docs/formats.md`):
//! - A tag, once released, is never reused or renumbered, even after its command is retired.
//! - Adding a command is one line here (its tag, its name, its fields) plus its golden fixture.
//!   The `Command` match in [`tag_of`] is exhaustive, so a new variant without a line does not
//!   compile.
//! - A command's fields are encoded in the order written here (postcard); changing them is a
//!   format change, caught by the golden fixtures.

use kiln_types::{EncodeJob, TaskId, WorkerId};

use super::Error;
use crate::batches::{BadLine, BatchAction, BatchSpec, Cursor};
use crate::command::{Command, DeadLetterFilter, WorkerSpec};
use crate::task::TaskResult;

/// Builds, from one table, the tag lookup, the field encoder and the field decoder.
macro_rules! wire_commands {
    ($( $tag:literal => $variant:ident { $($field:ident : $ty:ty),* } ),* $(,)?) => {
        /// Every command this build knows, as (wire tag, name), in tag order.
        pub const COMMAND_TAGS: &[(u16, &str)] = &[$(($tag, stringify!($variant))),*];

        /// The wire tag of a command.
        pub fn tag_of(cmd: &Command) -> u16 {
            match cmd {
                $(Command::$variant { .. } => $tag,)*
            }
        }

        /// Appends the command's tag and fields.
        pub(super) fn encode(cmd: &Command, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
            match cmd {
                $(Command::$variant { $($field),* } => {
                    super::put(&($tag as u16), out)?;
                    $(super::put($field, out)?;)*
                })*
            }
            Ok(())
        }

        /// Reads one command's tag and fields; `index` (its place in the batch) and `version`
        /// only name it in errors.
        pub(super) fn decode(bytes: &[u8], version: u16, index: usize) -> Result<(Command, &[u8]), Error> {
            let at = |what: fn(usize) -> String| super::At { kind: super::Kind::LogEntry, version, what: move || what(index) };
            let (tag, rest) = super::take::<u16, _>(bytes, at(|i| format!("the tag of command {i}")))?;
            match tag {
                $($tag => {
                    $(let ($field, rest) = super::take::<$ty, _>(rest, at(|i| {
                        format!("field `{}` of command {i} ({})", stringify!($field), stringify!($variant))
                    }))?;)*
                    Ok((Command::$variant { $($field),* }, rest))
                })*
                tag => Err(Error::UnknownCommand { version, index, tag }),
            }
        }
    };
}

wire_commands! {
    1 => Submit { jobs: Vec<EncodeJob> },
    2 => RegisterWorker { spec: WorkerSpec },
    3 => DisconnectWorker { worker: WorkerId },
    4 => DrainWorker { worker: WorkerId },
    5 => Lease { worker: WorkerId, max: u32 },
    6 => Steal { thief: WorkerId, tasks: Vec<(TaskId, u32)> },
    7 => Renew { worker: WorkerId },
    8 => Complete { task: TaskId, lease_seq: u32, worker: WorkerId, result: TaskResult },
    9 => Fail { task: TaskId, lease_seq: u32, worker: WorkerId, error: String, permanent: bool },
    10 => Release { worker: WorkerId, leases: Vec<(TaskId, u32)>, reason: String },
    11 => ExpireLeases {},
    12 => GraceLeases { grace_ms: i64 },
    13 => Cancel { task: TaskId },
    14 => RequeueDeadLetters { filter: DeadLetterFilter },
    15 => PurgeDeadLetters { filter: DeadLetterFilter },
    16 => CollectGarbage {},
    17 => Backup { thief: WorkerId, tasks: Vec<(TaskId, u32)> },
    // Format 2 (feature flags, `crate::features`): proposed only once enabled cluster-wide.
    18 => EnableFeature { name: String },
    19 => OpenSession { spec: WorkerSpec },
    20 => CloseSession { worker: WorkerId, session: u64 },
    // Format 3 (feature `batches`).
    21 => CreateBatch { spec: BatchSpec },
    22 => AdmitBatch {
        batch: u64,
        from: Cursor,
        to: Cursor,
        jobs: Vec<(u64, EncodeJob)>,
        bad_lines: Vec<BadLine>,
        end: bool,
        source_bytes: u64
    },
    23 => BatchControl { batch: u64, action: BatchAction },
    24 => BatchNotified { batch: u64, event: u32 },
}
