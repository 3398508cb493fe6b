//! One job of a manifest, as text: the JSONL line format and the checks every manifest job
//! passes before it is submitted, so a bad line is reported with its line number instead of
//! being refused later by the scheduler. Files (and the CSV format) are read by the CLI; this is
//! the part that sees the untrusted text, kept where a fuzz target can reach it.

use kiln_types::BUILTIN_RENDERERS;
use serde::Deserialize;

use crate::v1;

/// Longest JSONL line read (a job takes a few hundred bytes).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonJob {
    request_id: String,
    release_id: i64,
    asset_id: i64,
    asset_guid: String,
    derivative_assets: Vec<String>,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    max_attempts: u32,
}

/// The job on one JSONL line (already trimmed, not blank, not a comment), checked with
/// [`validate`].
pub fn parse_jsonl_line(line: &str) -> Result<v1::EncodeJob, String> {
    if line.len() > MAX_LINE_BYTES {
        return Err(format!("a line of {} bytes (the longest read is {MAX_LINE_BYTES})", line.len()));
    }
    let j = serde_json::from_str::<JsonJob>(line).map_err(|e| e.to_string())?;
    let job = v1::EncodeJob {
        request_id: j.request_id,
        release_id: j.release_id,
        asset_id: j.asset_id,
        asset_guid: j.asset_guid,
        derivative_assets: j.derivative_assets,
        queue: j.queue,
        priority: j.priority,
        max_attempts: j.max_attempts,
    };
    validate(&job)?;
    Ok(job)
}

/// Checks a wire job the way the scheduler will.
pub fn validate(job: &v1::EncodeJob) -> Result<(), String> {
    crate::job_from_pb(job.clone()).map_err(|e| e.to_string())?;
    if let Some(r) = job.derivative_assets.iter().find(|r| !BUILTIN_RENDERERS.contains(&r.as_str())) {
        return Err(format!("unknown renderer `{r}` (known: {})", BUILTIN_RENDERERS.join(", ")));
    }
    Ok(())
}
