//! One job of a manifest, as text: the JSONL and CSV line formats and the checks every manifest
//! job passes before it is submitted, so a bad line is reported with its line number instead of
//! being refused later by the scheduler. Files are read by the CLI (`kiln submit --manifest`) and
//! by the leader (catalog batches); this is the part that sees the untrusted text, kept where a
//! fuzz target can reach it.

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

/// The columns of a CSV manifest, from its header line: where each field of a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    names: Vec<String>,
}

/// Columns a CSV manifest must have.
pub const CSV_REQUIRED: [&str; 5] = ["request_id", "release_id", "asset_id", "asset_guid", "derivative_assets"];

/// One CSV line's fields (no field spans lines: a manifest row is one line).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(line.as_bytes());
    match reader.records().next() {
        Some(Ok(record)) => Ok(record.iter().map(|f| f.trim().to_owned()).collect()),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(Vec::new()),
    }
}

impl CsvColumns {
    /// The header line; refused unless it names every column of [`CSV_REQUIRED`].
    pub fn from_header(line: &str) -> Result<Self, String> {
        let names = csv_fields(line)?;
        if let Some(missing) = CSV_REQUIRED.iter().find(|c| !names.iter().any(|n| n == *c)) {
            return Err(format!("the CSV header has no `{missing}` column (needs {})", CSV_REQUIRED.join(",")));
        }
        Ok(Self { names })
    }

    /// The job on one data line (already trimmed, not blank, not a comment), checked with
    /// [`validate`]. `derivative_assets` separates renderers with `;`, `|` or spaces.
    pub fn parse(&self, line: &str) -> Result<v1::EncodeJob, String> {
        if line.len() > MAX_LINE_BYTES {
            return Err(format!("a line of {} bytes (the longest read is {MAX_LINE_BYTES})", line.len()));
        }
        let fields = csv_fields(line)?;
        if fields.len() != self.names.len() {
            return Err(format!("{} fields, the header names {}", fields.len(), self.names.len()));
        }
        let get = |name: &str| {
            self.names.iter().position(|n| n == name).and_then(|i| fields.get(i)).map_or("", String::as_str)
        };
        let int = |name: &str| -> Result<i64, String> {
            let v = get(name);
            v.parse::<i64>().map_err(|_| format!("{name} `{v}` is not an integer"))
        };
        let job = v1::EncodeJob {
            request_id: get("request_id").to_owned(),
            release_id: int("release_id")?,
            asset_id: int("asset_id")?,
            asset_guid: get("asset_guid").to_owned(),
            derivative_assets: get("derivative_assets")
                .split(|c: char| c == ';' || c == '|' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            queue: get("queue").to_owned(),
            priority: match get("priority") {
                "" => 0,
                v => v.parse().map_err(|_| format!("priority `{v}` is not an integer"))?,
            },
            max_attempts: match get("max_attempts") {
                "" => 0,
                v => v.parse().map_err(|_| format!("max_attempts `{v}` is not a positive integer"))?,
            },
        };
        validate(&job)?;
        Ok(job)
    }
}

/// Checks a wire job the way the scheduler will.
pub fn validate(job: &v1::EncodeJob) -> Result<(), String> {
    crate::job_from_pb(job.clone()).map_err(|e| e.to_string())?;
    if let Some(r) = job.derivative_assets.iter().find(|r| !BUILTIN_RENDERERS.contains(&r.as_str())) {
        return Err(format!("unknown renderer `{r}` (known: {})", BUILTIN_RENDERERS.join(", ")));
    }
    Ok(())
}
