//! The one table that maps scheduler errors to gRPC status codes.
//!
//! `NotLeader` is an answer, not a failure: it carries the leader's address in the `kiln-leader`
//! metadata so clients can follow it without parsing messages.

use kiln_ledger::Rejection;
use tonic::{Code, Status};

use crate::node::ProposeError;

pub const LEADER_METADATA: &str = "kiln-leader";

pub fn from_propose(e: ProposeError) -> Status {
    match &e {
        ProposeError::NotLeader { leader_address, .. } => {
            let mut status = Status::unavailable(e.to_string());
            if let Some(addr) = leader_address {
                if let Ok(v) = addr.parse() {
                    status.metadata_mut().insert(LEADER_METADATA, v);
                }
            }
            status
        }
        ProposeError::Unknown => Status::new(Code::Unavailable, e.to_string()),
        ProposeError::Stopped => Status::new(Code::Unavailable, e.to_string()),
        ProposeError::LeaderNotReady => Status::new(Code::Unavailable, e.to_string()),
    }
}

pub fn from_rejection(r: Rejection) -> Status {
    let code = match &r {
        Rejection::Full { .. } => Code::ResourceExhausted,
        Rejection::UnknownTask(_) | Rejection::UnknownRequest(_) => Code::NotFound,
        Rejection::UnknownWorker(_) => Code::FailedPrecondition,
        Rejection::AlreadyTerminal { .. } => Code::FailedPrecondition,
        Rejection::ConflictingRequest { .. } => Code::AlreadyExists,
        Rejection::UnknownFeature(_) => Code::NotFound,
        Rejection::FeatureDisabled { .. } => Code::FailedPrecondition,
        Rejection::UnknownBatch(_) => Code::NotFound,
        Rejection::BatchNotRunning { .. } | Rejection::StaleCursor { .. } => Code::FailedPrecondition,
        Rejection::BatchWindowFull { .. } => Code::ResourceExhausted,
        Rejection::InvalidBatch(_) => Code::InvalidArgument,
    };
    Status::new(code, r.to_string())
}
