//! Wire ⇄ domain conversions for the types in `kiln-types`.

use kiln_types::{AssetGuid, EncodeJob, JobError, QueueName, RendererName, RequestId};
use thiserror::Error;

use crate::v1;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("missing field `{0}`")]
    Missing(&'static str),
}

impl From<kiln_types::InvalidValue> for ConvertError {
    fn from(value: kiln_types::InvalidValue) -> Self {
        ConvertError::Job(JobError::Invalid(value))
    }
}

/// Parses and validates a wire job. Empty `queue` and zero `max_attempts` take their defaults.
pub fn job_from_pb(pb: v1::EncodeJob) -> Result<EncodeJob, ConvertError> {
    let derivative_assets =
        pb.derivative_assets.into_iter().map(RendererName::new).collect::<Result<Vec<_>, _>>()?.into_iter().collect();
    let job = EncodeJob {
        request_id: RequestId::new(pb.request_id)?,
        release_id: pb.release_id,
        asset_id: pb.asset_id,
        asset_guid: AssetGuid::new(pb.asset_guid)?,
        derivative_assets,
        queue: if pb.queue.is_empty() { QueueName::default() } else { QueueName::new(pb.queue)? },
        priority: pb.priority,
        max_attempts: if pb.max_attempts == 0 { kiln_types::job_default_max_attempts() } else { pb.max_attempts },
    };
    job.validate()?;
    Ok(job)
}

pub fn job_to_pb(job: &EncodeJob) -> v1::EncodeJob {
    v1::EncodeJob {
        request_id: job.request_id.to_string(),
        release_id: job.release_id,
        asset_id: job.asset_id,
        asset_guid: job.asset_guid.to_string(),
        derivative_assets: job.derivative_assets.iter().map(|r| r.to_string()).collect(),
        queue: job.queue.to_string(),
        priority: job.priority,
        max_attempts: job.max_attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb() -> v1::EncodeJob {
        v1::EncodeJob {
            request_id: "r-1".into(),
            release_id: 7,
            asset_id: 9,
            asset_guid: "masters/a.wav".into(),
            derivative_assets: vec!["loudness".into(), "waveform".into()],
            queue: String::new(),
            priority: 0,
            max_attempts: 0,
        }
    }

    #[test]
    fn defaults_fill_empty_fields_and_round_trip() {
        let job = job_from_pb(pb()).expect("valid");
        assert_eq!(job.queue.as_str(), "default");
        assert_eq!(job.max_attempts, 3);
        let back = job_from_pb(job_to_pb(&job)).expect("round trip");
        assert_eq!(back, job);
    }

    #[test]
    fn escaping_guid_is_refused() {
        let mut bad = pb();
        bad.asset_guid = "../../etc".into();
        let err = job_from_pb(bad).unwrap_err();
        assert!(err.to_string().contains("asset_guid"), "{err}");
    }
}
