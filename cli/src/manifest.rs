//! Manifests of EncodeJobs: JSON Lines or CSV, validated line by line with the line number in
//! every error.
//!
//! JSONL: one object per line with the EncodeJob fields. CSV: a header naming the columns
//! `request_id,release_id,asset_id,asset_guid,derivative_assets` (plus optional `queue`,
//! `priority`, `max_attempts`); `derivative_assets` separates renderers with `;`, `|` or spaces.
//! Blank lines and lines starting with `#` are skipped. A JSONL line longer than
//! [`MAX_LINE_BYTES`] or not UTF-8 is a bad line like any other: the reader never holds more than
//! one bounded line, whatever the file holds.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context as _;
use kiln_proto::v1;

pub use kiln_proto::manifest::{validate, MAX_LINE_BYTES};

/// One JSONL line as read: its text, or why it has none.
enum Line {
    Text(String),
    TooLong(usize),
    NotUtf8(std::str::Utf8Error),
}

/// The next line of `reader` (without its newline), holding at most [`MAX_LINE_BYTES`] + 1 bytes
/// of it; `None` at the end.
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
    buf.clear();
    let limit = MAX_LINE_BYTES as u64 + 1;
    if reader.by_ref().take(limit).read_until(b'\n', buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_BYTES {
        // Skip the rest of the line a buffer at a time.
        let mut length = buf.len();
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let (used, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            reader.consume(used);
            length += used;
            if done {
                break;
            }
        }
        return Ok(Some(Line::TooLong(length)));
    }
    Ok(Some(match std::str::from_utf8(buf) {
        Ok(text) => Line::Text(text.to_owned()),
        Err(e) => Line::NotUtf8(e),
    }))
}

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

/// A manifest line that failed, with its 1-based line number.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
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
            let mut reader = BufReader::new(file);
            let mut buf = Vec::new();
            for i in 0.. {
                let line = next_line(&mut reader, &mut buf)
                    .with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
                let line = match line {
                    None => break,
                    Some(Line::Text(text)) => text,
                    Some(Line::TooLong(n)) => {
                        each(i + 1, Err(format!("a line of {n} bytes (the longest read is {MAX_LINE_BYTES})")));
                        continue;
                    }
                    Some(Line::NotUtf8(e)) => {
                        each(i + 1, Err(format!("not UTF-8: {e}")));
                        continue;
                    }
                };
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                each(i + 1, kiln_proto::manifest::parse_jsonl_line(trimmed));
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
    fn a_huge_or_non_utf8_line_is_one_bad_line_and_the_rest_is_read() {
        let good =
            r#"{"request_id":"r1","release_id":1,"asset_id":1,"asset_guid":"a.wav","derivative_assets":["bpm"]}"#;
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b'x', 10 << 20));
        bytes.extend_from_slice(b"\n\xff\xfe not text\n");
        bytes.extend_from_slice(good.replace("r1", "r2").as_bytes());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        std::fs::write(&path, &bytes).expect("write");
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        read(&path, Format::Jsonl, |line, r| match r {
            Ok(j) => ok.push((line, j.request_id)),
            Err(reason) => bad.push((line, reason)),
        })
        .expect("read");
        assert_eq!(ok, vec![(1, "r1".to_owned()), (4, "r2".to_owned())]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].0, 2);
        assert!(bad[0].1.contains("a line of 10485761 bytes"), "{}", bad[0].1);
        assert_eq!(bad[1].0, 3);
        assert!(bad[1].1.contains("not UTF-8"), "{}", bad[1].1);
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
