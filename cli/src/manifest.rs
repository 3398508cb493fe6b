//! Manifests of EncodeJobs: JSON Lines or CSV, validated line by line with the line number in
//! every error.
//!
//! JSONL: one object per line with the EncodeJob fields. CSV: a header naming the columns
//! `request_id,release_id,asset_id,asset_guid,derivative_assets` (plus optional `queue`,
//! `priority`, `max_attempts`); `derivative_assets` separates renderers with `;`, `|` or spaces.
//! Blank lines and lines starting with `#` are skipped.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context as _;
use kiln_proto::v1;
use kiln_types::BUILTIN_RENDERERS;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    pub fn detect(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

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

/// A manifest line that failed, with its 1-based line number.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Checks a wire job the way the scheduler will, so errors carry line numbers.
pub fn validate(job: &v1::EncodeJob) -> Result<(), String> {
    kiln_proto::job_from_pb(job.clone()).map_err(|e| e.to_string())?;
    if let Some(r) = job.derivative_assets.iter().find(|r| !BUILTIN_RENDERERS.contains(&r.as_str())) {
        return Err(format!("unknown renderer `{r}` (known: {})", BUILTIN_RENDERERS.join(", ")));
    }
    Ok(())
}

/// Reads every line of the manifest, calling `each` with the line number and the parsed job.
pub fn read(
    path: &Path,
    format: Format,
    mut each: impl FnMut(usize, Result<v1::EncodeJob, String>),
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open manifest {}", path.display()))?;
    match format {
        Format::Jsonl => {
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let job = serde_json::from_str::<JsonJob>(trimmed)
                    .map_err(|e| e.to_string())
                    .map(|j| v1::EncodeJob {
                        request_id: j.request_id,
                        release_id: j.release_id,
                        asset_id: j.asset_id,
                        asset_guid: j.asset_guid,
                        derivative_assets: j.derivative_assets,
                        queue: j.queue,
                        priority: j.priority,
                        max_attempts: j.max_attempts,
                    })
                    .and_then(|j| validate(&j).map(|()| j));
                each(i + 1, job);
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(false).comment(Some(b'#')).from_reader(file);
            let headers =
                reader.headers().with_context(|| format!("{}: cannot read the CSV header", path.display()))?.clone();
            let col = |name: &str| headers.iter().position(|h| h.trim() == name);
            let required = ["request_id", "release_id", "asset_id", "asset_guid", "derivative_assets"];
            if let Some(missing) = required.iter().find(|c| col(c).is_none()) {
                anyhow::bail!(
                    "{}:1: the CSV header has no `{missing}` column (needs {})",
                    path.display(),
                    required.join(",")
                );
            }
            let idx = |name: &str| col(name);
            for record in reader.records() {
                let record = match record {
                    Ok(r) => r,
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line() as usize);
                        each(line, Err(e.to_string()));
                        continue;
                    }
                };
                let line = record.position().map_or(0, |p| p.line() as usize);
                let get = |name: &str| idx(name).and_then(|i| record.get(i)).unwrap_or("").trim().to_owned();
                let int = |name: &str| -> Result<i64, String> {
                    let v = get(name);
                    v.parse::<i64>().map_err(|_| format!("{name} `{v}` is not an integer"))
                };
                let job = (|| -> Result<v1::EncodeJob, String> {
                    let job = v1::EncodeJob {
                        request_id: get("request_id"),
                        release_id: int("release_id")?,
                        asset_id: int("asset_id")?,
                        asset_guid: get("asset_guid"),
                        derivative_assets: get("derivative_assets")
                            .split(|c: char| c == ';' || c == '|' || c.is_whitespace())
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        queue: get("queue"),
                        priority: match get("priority").as_str() {
                            "" => 0,
                            v => v.parse().map_err(|_| format!("priority `{v}` is not an integer"))?,
                        },
                        max_attempts: match get("max_attempts").as_str() {
                            "" => 0,
                            v => v.parse().map_err(|_| format!("max_attempts `{v}` is not a positive integer"))?,
                        },
                    };
                    validate(&job)?;
                    Ok(job)
                })();
                each(line, job);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str, ext: &str) -> (Vec<v1::EncodeJob>, Vec<BadLine>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(format!("m.{ext}"));
        std::fs::write(&path, text).expect("write");
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        read(&path, Format::detect(&path), |line, r| match r {
            Ok(j) => good.push(j),
            Err(reason) => bad.push(BadLine { line, reason }),
        })
        .expect("read");
        (good, bad)
    }

    #[test]
    fn jsonl_errors_name_the_line_and_field() {
        let text = concat!(
            "{\"request_id\":\"a\",\"release_id\":1,\"asset_id\":1,\"asset_guid\":\"x.wav\",\"derivative_assets\":[\"loudness\"]}\n",
            "\n",
            "{\"request_id\":\"b\",\"release_id\":1,\"asset_id\":2,\"asset_guid\":\"../../etc\",\"derivative_assets\":[\"loudness\"]}\n",
            "{\"request_id\":\"c\",\"release_id\":1,\"asset_id\":3,\"asset_guid\":\"y.wav\",\"derivative_assets\":[\"sparkle\"]}\n",
            "not json\n",
        );
        let (good, bad) = collect(text, "jsonl");
        assert_eq!(good.len(), 1);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 4, 5]);
        assert!(bad[0].reason.contains("asset_guid"), "{}", bad[0].reason);
        assert!(bad[1].reason.contains("sparkle"), "{}", bad[1].reason);
    }

    #[test]
    fn csv_with_renderer_lists() {
        let text = "request_id,release_id,asset_id,asset_guid,derivative_assets,priority\n\
                    r1,10,1,a.wav,loudness;waveform,5\n\
                    r2,10,x,b.wav,loudness,\n";
        let (good, bad) = collect(text, "csv");
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].derivative_assets, vec!["loudness", "waveform"]);
        assert_eq!(good[0].priority, 5);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 3);
        assert!(bad[0].reason.contains("asset_id"), "{}", bad[0].reason);
    }

    #[test]
    fn csv_without_required_column_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.csv");
        std::fs::write(&path, "request_id,asset_guid\nr1,a.wav\n").expect("write");
        let err = read(&path, Format::Csv, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("release_id"), "{err}");
    }
}
