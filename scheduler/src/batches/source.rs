//! Reading a batch's manifest: a local or NFS path, or an object store URL (`s3://`, `gs://`,
//! `az://`, `http(s)://`), read in ranges from a byte offset so that a new leader resumes at the
//! committed cursor without reading what came before, and the leader never holds more of an
//! 8-million-line manifest than one read-ahead buffer.
//!
//! Cloud stores take their credentials and endpoints from the environment (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`), like the workers' stores.

use std::sync::Arc;

use kiln_ledger::batches::{BadLine, Cursor, SourceFormat};
use kiln_proto::manifest::{parse_jsonl_line, CsvColumns, MAX_LINE_BYTES};
use kiln_proto::v1;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;

/// Bytes fetched per read: about ten thousand manifest lines.
const READ_BYTES: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {location}: {reason}")]
    Open { location: String, reason: String },
    #[error("cannot read {location}: {source}")]
    Read { location: String, source: object_store::Error },
}

/// Where a manifest is: a store and the object in it.
#[derive(Debug, Clone)]
pub struct Source {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
}

impl Source {
    /// The manifest at `location`; cloud stores are configured from the environment.
    pub fn open(location: &str) -> Result<Self, SourceError> {
        Self::open_with(location, cloud_env())
    }

    /// As [`Self::open`], with explicit store options (`aws_endpoint`, `aws_access_key_id`, …)
    /// instead of the environment's.
    pub fn open_with(location: &str, options: Vec<(String, String)>) -> Result<Self, SourceError> {
        let fail = |reason: String| SourceError::Open { location: location.to_owned(), reason };
        let local = location.strip_prefix("file://").or((!location.contains("://")).then_some(location));
        if let Some(path) = local {
            let absolute = std::path::absolute(path).map_err(|e| fail(e.to_string()))?;
            let path = Path::from_absolute_path(&absolute).map_err(|e| fail(e.to_string()))?;
            return Ok(Self { store: Arc::new(LocalFileSystem::new()), path, location: location.to_owned() });
        }
        let url = url::Url::parse(location).map_err(|e| fail(e.to_string()))?;
        let (store, path) = object_store::parse_url_opts(&url, options).map_err(|e| fail(e.to_string()))?;
        Ok(Self { store: Arc::from(store), path, location: location.to_owned() })
    }

    /// The manifest's size in bytes (an error if it is missing or unreadable).
    pub async fn size(&self) -> Result<u64, SourceError> {
        let meta = self.store.head(&self.path).await.map_err(|source| self.read_error(source))?;
        Ok(meta.size)
    }

    async fn range(&self, start: u64, end: u64) -> Result<bytes::Bytes, SourceError> {
        self.store.get_range(&self.path, start..end).await.map_err(|source| self.read_error(source))
    }

    fn read_error(&self, source: object_store::Error) -> SourceError {
        SourceError::Read { location: self.location.clone(), source }
    }
}

/// Options for the cloud builders from the environment (credentials, region, endpoint).
fn cloud_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| ["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// The next lines of a manifest, ready to propose.
#[derive(Debug, Default)]
pub struct Chunk {
    pub jobs: Vec<(u64, v1::EncodeJob)>,
    pub bad_lines: Vec<BadLine>,
    /// The cursor after the last line taken.
    pub to: Cursor,
    /// The source has no lines after `to`.
    pub end: bool,
    pub source_bytes: u64,
}

/// Reads one batch's manifest forward from a cursor, keeping one read-ahead buffer.
pub struct Reader {
    source: Source,
    format: SourceFormat,
    size: u64,
    /// The CSV header's columns, once read.
    columns: Option<CsvColumns>,
    /// Bytes of the source from `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
}

/// One line as found in the buffer.
enum Found {
    /// The line's bytes (without its newline) and the offset after it.
    Line(Vec<u8>, u64),
    /// A line longer than [`MAX_LINE_BYTES`]: its length and the offset after it.
    TooLong(u64, u64),
    End,
}

impl Reader {
    pub async fn open(source: Source, format: SourceFormat) -> Result<Self, SourceError> {
        let size = source.size().await?;
        Ok(Self { source, format, size, columns: None, buf: Vec::new(), buf_start: 0 })
    }

    /// Up to `max_lines` lines from `from` (blank and comment lines are passed over without
    /// counting against it). With `stop_at_bad`, the chunk ends right after the first bad line.
    pub async fn next_chunk(
        &mut self,
        from: Cursor,
        max_lines: usize,
        stop_at_bad: bool,
    ) -> Result<Chunk, SourceError> {
        if self.format == SourceFormat::Csv && self.columns.is_none() && from.line > 0 {
            self.read_header().await?;
        }
        let mut chunk = Chunk { to: from, source_bytes: self.size, ..Chunk::default() };
        let mut at = from;
        while chunk.jobs.len() + chunk.bad_lines.len() < max_lines {
            let (text, next) = match self.line_at(at.offset).await? {
                Found::End => {
                    chunk.end = true;
                    break;
                }
                Found::TooLong(length, next) => {
                    (Err(format!("a line of {length} bytes (the longest read is {MAX_LINE_BYTES})")), next)
                }
                Found::Line(bytes, next) => {
                    (String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {}", e.utf8_error())), next)
                }
            };
            at = Cursor { line: at.line + 1, offset: next };
            chunk.to = at;
            let parsed = match text {
                Err(reason) => Some(Err(reason)),
                Ok(text) => self.parse(text.trim()),
            };
            match parsed {
                None => {}
                Some(Ok(job)) => chunk.jobs.push((at.line, job)),
                Some(Err(reason)) => {
                    chunk.bad_lines.push(BadLine { line: at.line, reason });
                    if stop_at_bad {
                        break;
                    }
                }
            }
        }
        if at.offset >= self.size {
            chunk.end = true;
        }
        // What is before the cursor will not be read again (unless a proposal fails, and then
        // the reader is reopened).
        self.discard_before(at.offset);
        Ok(chunk)
    }

    /// A line's job, its error, or `None` for a line that holds none (blank, comment, header).
    fn parse(&mut self, text: &str) -> Option<Result<v1::EncodeJob, String>> {
        if text.is_empty() || text.starts_with('#') {
            return None;
        }
        match (self.format, &self.columns) {
            (SourceFormat::Jsonl, _) => Some(parse_jsonl_line(text)),
            (SourceFormat::Csv, Some(columns)) => Some(columns.parse(text)),
            (SourceFormat::Csv, None) => match CsvColumns::from_header(text) {
                Ok(columns) => {
                    self.columns = Some(columns);
                    None
                }
                Err(reason) => Some(Err(reason)),
            },
        }
    }

    async fn read_header(&mut self) -> Result<(), SourceError> {
        let mut offset = 0;
        loop {
            match self.line_at(offset).await? {
                Found::End => return Ok(()),
                Found::TooLong(_, next) => offset = next,
                Found::Line(bytes, next) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let text = text.trim();
                    if !text.is_empty() && !text.starts_with('#') {
                        self.columns = CsvColumns::from_header(text).ok();
                        return Ok(());
                    }
                    offset = next;
                }
            }
        }
    }

    /// The line that starts at `offset`, reading more of the source as needed.
    async fn line_at(&mut self, offset: u64) -> Result<Found, SourceError> {
        if offset >= self.size {
            return Ok(Found::End);
        }
        if offset < self.buf_start || offset > self.buf_start + self.buf.len() as u64 {
            self.buf.clear();
            self.buf_start = offset;
        }
        let mut scanned = 0usize;
        loop {
            let start = (offset - self.buf_start) as usize;
            let held = &self.buf[start..];
            if let Some(i) = held[scanned.min(held.len())..].iter().position(|b| *b == b'\n').map(|i| i + scanned) {
                let next = offset + i as u64 + 1;
                return Ok(if i > MAX_LINE_BYTES {
                    Found::TooLong(i as u64, next)
                } else {
                    Found::Line(held[..i].to_vec(), next)
                });
            }
            scanned = held.len();
            let end_of_buf = self.buf_start + self.buf.len() as u64;
            if end_of_buf >= self.size {
                // The last line, without a newline.
                let length = held.len();
                return Ok(if length > MAX_LINE_BYTES {
                    Found::TooLong(length as u64, self.size)
                } else {
                    Found::Line(held.to_vec(), self.size)
                });
            }
            if held.len() > MAX_LINE_BYTES {
                // Too long already: drop what is held of it, keep looking for its end.
                let skipped = held.len() as u64;
                return self.skip_long_line(offset, skipped).await;
            }
            let more = self.source.range(end_of_buf, (end_of_buf + READ_BYTES).min(self.size)).await?;
            self.buf.extend_from_slice(&more);
        }
    }

    /// Finds the end of a line too long to hold, reading and dropping it a buffer at a time.
    async fn skip_long_line(&mut self, offset: u64, mut length: u64) -> Result<Found, SourceError> {
        let mut pos = offset + length;
        self.buf.clear();
        loop {
            if pos >= self.size {
                self.buf_start = self.size;
                return Ok(Found::TooLong(length, self.size));
            }
            let more = self.source.range(pos, (pos + READ_BYTES).min(self.size)).await?;
            if let Some(i) = more.iter().position(|b| *b == b'\n') {
                self.buf_start = pos + i as u64 + 1;
                self.buf.extend_from_slice(&more[i + 1..]);
                return Ok(Found::TooLong(length + i as u64, pos + i as u64 + 1));
            }
            length += more.len() as u64;
            pos += more.len() as u64;
        }
    }

    fn discard_before(&mut self, offset: u64) {
        if offset <= self.buf_start {
            return;
        }
        let drop = ((offset - self.buf_start) as usize).min(self.buf.len());
        self.buf.drain(..drop);
        self.buf_start += drop as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"request_id":"r{n}","release_id":1,"asset_id":{n},"asset_guid":"m/{n}.wav","derivative_assets":["loudness"]}"#;

    fn good(n: u32) -> String {
        GOOD.replace("{n}", &n.to_string())
    }

    async fn reader(text: &str, format: SourceFormat) -> (tempfile::TempDir, Reader) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        std::fs::write(&path, text).expect("write");
        let source = Source::open(path.to_str().expect("utf-8 path")).expect("open");
        (dir, Reader::open(source, format).await.expect("reader"))
    }

    #[tokio::test]
    async fn chunks_resume_exactly_at_the_cursor_and_name_bad_lines() {
        let text = format!("{}\n\n# comment\n{}\nnot json\n{}", good(1), good(2), good(3));
        let (_dir, mut r) = reader(&text, SourceFormat::Jsonl).await;
        let first = r.next_chunk(Cursor::default(), 2, false).await.expect("chunk");
        assert_eq!(first.jobs.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 4]);
        assert!(!first.end);
        let second = r.next_chunk(first.to, 10, false).await.expect("chunk");
        assert_eq!(second.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), vec![5]);
        assert_eq!(second.jobs.iter().map(|(l, j)| (*l, j.asset_id)).collect::<Vec<_>>(), vec![(6, 3)]);
        assert!(second.end);
        assert_eq!(second.to.offset, text.len() as u64);
        // A new reader (a new leader) from the first chunk's cursor reads the same second chunk.
        let (_dir2, mut again) = reader(&text, SourceFormat::Jsonl).await;
        let replay = again.next_chunk(first.to, 10, false).await.expect("chunk");
        assert_eq!(replay.jobs, second.jobs);
        assert_eq!(replay.to, second.to);
    }

    #[tokio::test]
    async fn stop_ends_the_chunk_at_the_first_bad_line() {
        let text = format!("{}\nbroken\n{}\n", good(1), good(2));
        let (_dir, mut r) = reader(&text, SourceFormat::Jsonl).await;
        let chunk = r.next_chunk(Cursor::default(), 10, true).await.expect("chunk");
        assert_eq!((chunk.jobs.len(), chunk.bad_lines[0].line, chunk.to.line), (1, 2, 2));
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_one_bad_line_and_reading_goes_on() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{}\n{long}\n{}\n", good(1), good(2));
        let (_dir, mut r) = reader(&text, SourceFormat::Jsonl).await;
        let chunk = r.next_chunk(Cursor::default(), 10, false).await.expect("chunk");
        assert_eq!(chunk.jobs.len(), 2);
        assert_eq!(chunk.bad_lines.len(), 1);
        assert!(chunk.bad_lines[0].reason.contains("bytes"), "{}", chunk.bad_lines[0].reason);
    }

    #[tokio::test]
    async fn csv_reads_its_header_again_when_resuming_past_it() {
        let text = "request_id,release_id,asset_id,asset_guid,derivative_assets\nr1,1,1,m/1.wav,loudness;bpm\nr2,1,2,m/2.wav,loudness\n";
        let (_dir, mut r) = reader(text, SourceFormat::Csv).await;
        let first = r.next_chunk(Cursor::default(), 1, false).await.expect("chunk");
        assert_eq!(first.jobs[0].1.derivative_assets, vec!["loudness", "bpm"]);
        let (_dir2, mut resumed) = reader(text, SourceFormat::Csv).await;
        let rest = resumed.next_chunk(first.to, 10, false).await.expect("chunk");
        assert_eq!(rest.jobs.iter().map(|(l, j)| (*l, j.asset_id)).collect::<Vec<_>>(), vec![(3, 2)]);
    }

    #[test]
    fn a_missing_manifest_is_an_error_naming_it() {
        let source = Source::open("/nonexistent/kiln/manifest.jsonl").expect("a path opens lazily");
        let err = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(source.size())
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/kiln/manifest.jsonl"), "{err}");
    }
}
