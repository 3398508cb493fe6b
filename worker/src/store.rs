//! Where masters come from and derivatives go: two `object_store` locations and the one function
//! that turns an asset GUID and a file name into a key under them.
//!
//! ```text
//!  masters      {masters}/{asset_guid}                       read once per task (one GET)
//!  derivatives  {derivatives}/{asset_guid}/{file}            one per output file; multipart
//!                                                            from `multipart_threshold` bytes
//!               {derivatives}/{asset_guid}/manifest.json     written last: its presence means
//!                                                            every output above is complete
//! ```
//!
//! A location is a local path (`/srv/masters`, `masters`) or a URL: `file:///srv/masters`,
//! `s3://bucket/prefix` (AWS or any S3-compatible endpoint, path-style or virtual-hosted),
//! `gs://bucket/prefix`, `az://container/prefix` (and `abfs[s]://`, `azure://`), `http(s)://host/prefix`
//! (read-mostly: WebDAV-style PUT is what `object_store` does for HTTP). Cloud builders start from
//! their environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`: credentials, region, endpoint), then the
//! worker's options override: endpoint, path style, plain HTTP, and `store_options`.
//!
//! Timeouts and retries are set here on purpose rather than left at the client defaults (30 s per
//! request, ten retries over up to three minutes): a stalled or failing store must turn into a
//! *task* failure quickly, classified transient, so the ledger retries the task with backoff,
//! possibly on a worker with a healthier path to the store, instead of one download holding a
//! lease for minutes.
//!
//! Keys are built segment by segment and every segment is checked here, even though
//! [`AssetGuid`] already guarantees it cannot escape the prefix: the two checks are independent on
//! purpose.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

use kiln_config::WorkerOptions;

use kiln_types::AssetGuid;

use crate::error::{Error, TaskError};

/// Size of each part of a multipart upload: S3's minimum part is 5 MiB (except the last).
const MULTIPART_PART_BYTES: usize = 8 << 20;

/// The file every task writes last, next to its outputs.
pub const MANIFEST_FILE: &str = "manifest.json";

/// An object's key inside its store, and how it is shown to people and in manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub path: Path,
    pub uri: String,
}

/// One configured location: a store and the prefix inside it.
#[derive(Debug, Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    /// Every key of this location lives under this prefix inside `store`.
    prefix: Path,
    /// `{base}/{relative key}` is the URI reported for a key (no trailing `/`).
    base: String,
    /// Writes of at least this many bytes go up in parts.
    multipart_threshold: u64,
}

/// Why a key could not be built: a segment that would leave the prefix or is not a plain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{segment:?} is not a valid key segment: {reason}")]
pub struct BadSegment {
    pub segment: String,
    pub reason: &'static str,
}

fn check_segment(segment: &str) -> Result<PathPart<'_>, BadSegment> {
    let bad = |reason| Err(BadSegment { segment: segment.to_owned(), reason });
    if segment.is_empty() {
        return bad("empty");
    }
    if segment == "." || segment == ".." {
        return bad("a relative path segment");
    }
    if segment.contains(['/', '\\']) {
        return bad("contains a path separator");
    }
    if segment.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    PathPart::parse(segment).map_err(|_| BadSegment { segment: segment.to_owned(), reason: "refused by object_store" })
}

/// How cloud stores are reached: the worker options that concern them, gathered once.
#[derive(Debug, Clone)]
pub struct Remote {
    pub s3_endpoint: Option<String>,
    pub s3_path_style: bool,
    pub allow_http: bool,
    pub timeout: std::time::Duration,
    pub retries: usize,
    pub multipart_threshold: u64,
    /// `(key, value)` options for the builders, environment first, explicit options last.
    pub options: Vec<(String, String)>,
}

impl Remote {
    pub fn from_options(opts: &WorkerOptions) -> Self {
        let mut options = env_options(std::env::vars());
        options.extend(opts.store_options.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
        Self {
            s3_endpoint: opts.s3_endpoint.clone(),
            s3_path_style: opts.s3_path_style,
            allow_http: opts.store_allow_http,
            timeout: opts.store_timeout,
            retries: opts.store_retries,
            multipart_threshold: opts.multipart_threshold,
            options,
        }
    }

    fn client(&self) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.timeout)
            .with_connect_timeout(self.timeout.min(std::time::Duration::from_secs(10)))
            .with_allow_http(self.allow_http)
    }

    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: self.retries,
            // Bounds the retries of one request; the task as a whole is retried by the ledger.
            retry_timeout: self.timeout.saturating_mul(2),
        }
    }

    /// Builds the store for a cloud URL. Unknown option keys are skipped: the environment holds
    /// many `AWS_*` variables no builder knows, and a typo in `store_options` is logged.
    fn build(&self, url: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
        let base = &url[..url::Position::BeforePath];
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::new();
                for (k, v) in &self.options {
                    match k.parse::<AmazonS3ConfigKey>() {
                        Ok(key) => b = b.with_config(key, v),
                        Err(_) => skipped(k, "s3"),
                    }
                }
                b = b.with_url(url.as_str()).with_virtual_hosted_style_request(!self.s3_path_style);
                if let Some(endpoint) = &self.s3_endpoint {
                    b = b.with_endpoint(endpoint);
                }
                Arc::new(
                    b.with_client_options(self.client()).with_retry(self.retry()).build().map_err(|e| e.to_string())?,
                )
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::new();
                for (k, v) in &self.options {
                    match k.parse::<GoogleConfigKey>() {
                        Ok(key) => b = b.with_config(key, v),
                        Err(_) => skipped(k, "gcs"),
                    }
                }
                let b = b.with_url(url.as_str()).with_client_options(self.client()).with_retry(self.retry());
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
            "az" | "azure" | "abfs" | "abfss" | "adl" => {
                let mut b = MicrosoftAzureBuilder::new();
                for (k, v) in &self.options {
                    match k.parse::<AzureConfigKey>() {
                        Ok(key) => b = b.with_config(key, v),
                        Err(_) => skipped(k, "azure"),
                    }
                }
                let b = b.with_url(url.as_str()).with_client_options(self.client()).with_retry(self.retry());
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
            "http" | "https" => {
                let b = HttpBuilder::new().with_url(base).with_client_options(self.client()).with_retry(self.retry());
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
            other => {
                return Err(format!(
                    "unsupported scheme {other:?} (use a path, file://, s3://, gs://, az:// or http(s)://)"
                ))
            }
        };
        Ok(store)
    }
}

/// Downloads the object at `url` (s3://, gs://, az://, http(s)://) into `file` one chunk at a
/// time, so a manifest of millions of lines kept in a store never sits in memory whole. Returns
/// the bytes written. This is how `kiln submit --manifest s3://…` reads its manifest.
pub async fn download(url: &str, remote: &Remote, file: &std::path::Path) -> Result<u64, String> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let store = remote.build(&parsed).map_err(|e| format!("{url}: {e}"))?;
    let path = Path::from_url_path(parsed.path()).map_err(|e| format!("{url}: {e}"))?;
    let got = store.get(&path).await.map_err(|e| format!("{url}: {e}"))?;
    let mut out = tokio::fs::File::create(file).await.map_err(|e| format!("{}: {e}", file.display()))?;
    let mut stream = got.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: {e}"))?;
        out.write_all(&chunk).await.map_err(|e| format!("{}: {e}", file.display()))?;
        written += chunk.len() as u64;
    }
    out.flush().await.map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(written)
}

fn skipped(key: &str, store: &str) {
    // Environment variables of other clouds and tools are normal; only say so at debug level.
    tracing::debug!(key, store, "option not understood by this store; skipped");
}

/// Environment variables handed to cloud store builders as options (`AWS_REGION` → `aws_region`).
fn env_options(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .filter(|(k, _)| ["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

impl Location {
    /// Opens `location` (a local path or a URL). With `create`, a missing local folder is
    /// created (derivatives); otherwise it must exist (masters). Cloud locations are not probed:
    /// credentials may be scoped to objects, and a store that is down at start-up is a transient
    /// condition the tasks will report, not a reason to refuse to start.
    pub fn open(role: &'static str, location: &str, create: bool, remote: &Remote) -> Result<Self, Error> {
        let fail = |reason: String| Error::Store { role, location: location.to_owned(), reason };
        if location.contains("://") {
            let url = url::Url::parse(location).map_err(|e| fail(e.to_string()))?;
            if url.scheme() == "file" {
                let dir = url.to_file_path().map_err(|()| fail("not a local file URL".into()))?;
                return Self::local(role, location, &dir, create);
            }
            let store = remote.build(&url).map_err(fail)?;
            let prefix = Path::from_url_path(url.path()).map_err(|e| fail(e.to_string()))?;
            let base = location.trim_end_matches('/').to_owned();
            return Ok(Self { store, prefix, base, multipart_threshold: remote.multipart_threshold });
        }
        Self::local(role, location, std::path::Path::new(location), create)
    }

    fn local(role: &'static str, location: &str, dir: &std::path::Path, create: bool) -> Result<Self, Error> {
        let fail = |reason: String| Error::Store { role, location: location.to_owned(), reason };
        if create {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the folder: {e}")))?;
        } else if !dir.is_dir() {
            return Err(fail("no such folder".into()));
        }
        let canonical = std::fs::canonicalize(dir).map_err(|e| fail(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&canonical).map_err(|e| fail(e.to_string()))?;
        let base = url::Url::from_directory_path(&canonical)
            .map_err(|()| fail("not an absolute path".into()))?
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        Ok(Self { store: Arc::new(store), prefix: Path::default(), base, multipart_threshold: u64::MAX })
    }

    /// An in-memory location, for tests.
    #[cfg(test)]
    pub fn memory(base: &str) -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: Path::default(),
            base: base.to_owned(),
            multipart_threshold: u64::MAX,
        }
    }

    /// The key of `segments` under this location's prefix. Each segment must be one plain name.
    pub fn key<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Result<Key, BadSegment> {
        let mut rel = Vec::new();
        for s in segments {
            check_segment(s)?;
            rel.push(s);
        }
        if rel.is_empty() {
            return Err(BadSegment { segment: String::new(), reason: "a key needs at least one segment" });
        }
        let parts = rel.iter().map(|s| PathPart::from(*s));
        let path: Path = self.prefix.parts().chain(parts).collect();
        Ok(Key { path, uri: format!("{}/{}", self.base, rel.join("/")) })
    }
}

/// Masters in, derivatives out.
#[derive(Debug, Clone)]
pub struct Store {
    masters: Location,
    derivatives: Location,
}

impl Store {
    pub fn open(masters: &str, derivatives: &str, remote: &Remote) -> Result<Self, Error> {
        Ok(Self {
            masters: Location::open("masters", masters, false, remote)?,
            derivatives: Location::open("derivatives", derivatives, true, remote)?,
        })
    }

    #[cfg(test)]
    pub fn from_locations(masters: Location, derivatives: Location) -> Self {
        Self { masters, derivatives }
    }

    /// `{masters}/{asset_guid}`.
    pub fn master_key(&self, guid: &AssetGuid) -> Result<Key, TaskError> {
        self.masters.key(guid.as_str().split('/')).map_err(|e| TaskError::InvalidJob(format!("asset_guid {guid}: {e}")))
    }

    /// `{derivatives}/{asset_guid}/{file}`.
    pub fn output_key(&self, guid: &AssetGuid, file: &str) -> Result<Key, TaskError> {
        if check_segment(file).is_err() {
            return Err(TaskError::OutputName { name: file.to_owned() });
        }
        self.derivatives
            .key(guid.as_str().split('/').chain(std::iter::once(file)))
            .map_err(|e| TaskError::InvalidJob(format!("asset_guid {guid}: {e}")))
    }

    /// Reads a master whole, refusing one over `max_bytes` before downloading it.
    /// The master's size, from the store's metadata; refused if it is over `max_bytes`.
    pub async fn master_size(&self, key: &Key, max_bytes: u64) -> Result<u64, TaskError> {
        let meta = self.masters.store.head(&key.path).await.map_err(|e| TaskError::from_fetch(&key.uri, e))?;
        if meta.size > max_bytes {
            return Err(TaskError::MasterTooLarge { key: key.uri.clone(), size: meta.size, limit: max_bytes });
        }
        Ok(meta.size)
    }

    pub async fn fetch(&self, key: &Key, max_bytes: u64) -> Result<Bytes, TaskError> {
        let got = self.masters.store.get(&key.path).await.map_err(|e| TaskError::from_fetch(&key.uri, e))?;
        if got.meta.size > max_bytes {
            return Err(TaskError::MasterTooLarge { key: key.uri.clone(), size: got.meta.size, limit: max_bytes });
        }
        got.bytes().await.map_err(|e| TaskError::from_fetch(&key.uri, e))
    }

    /// Writes one derivative. Overwrites are idempotent: a retried task writes the same key.
    /// Large outputs go up in parts, so one failed part is retried alone and no request carries
    /// a whole large file.
    pub async fn put(&self, key: &Key, bytes: Bytes) -> Result<(), TaskError> {
        let fail = |e: object_store::Error| TaskError::Upload { key: key.uri.clone(), reason: e.to_string() };
        let store = &self.derivatives.store;
        if (bytes.len() as u64) < self.derivatives.multipart_threshold {
            return store.put(&key.path, PutPayload::from(bytes)).await.map(|_| ()).map_err(fail);
        }
        let upload = store.put_multipart(&key.path).await.map_err(fail)?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_BYTES);
        parts.put(bytes);
        parts.finish().await.map(|_| ()).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid(s: &str) -> AssetGuid {
        AssetGuid::new(s).expect("valid guid")
    }

    #[test]
    fn keys_join_under_the_prefix() {
        let store = Store::from_locations(Location::memory("file:///srv/masters"), Location::memory("s3://b/out"));
        let m = store.master_key(&guid("rel-12/track_01.wav")).expect("key");
        assert_eq!(m.path.as_ref(), "rel-12/track_01.wav");
        assert_eq!(m.uri, "file:///srv/masters/rel-12/track_01.wav");
        let o = store.output_key(&guid("rel-12/track_01.wav"), "waveform.json").expect("key");
        assert_eq!(o.path.as_ref(), "rel-12/track_01.wav/waveform.json");
        assert_eq!(o.uri, "s3://b/out/rel-12/track_01.wav/waveform.json");
    }

    #[test]
    fn a_prefix_inside_the_store_is_kept() {
        let loc =
            Location { prefix: Path::from("bucket-prefix/derivs"), ..Location::memory("s3://b/bucket-prefix/derivs") };
        let k = loc.key(["a", "manifest.json"]).expect("key");
        assert_eq!(k.path.as_ref(), "bucket-prefix/derivs/a/manifest.json");
        assert_eq!(k.uri, "s3://b/bucket-prefix/derivs/a/manifest.json");
    }

    #[test]
    fn no_segment_can_leave_the_prefix() {
        let loc = Location::memory("file:///srv");
        for bad in [vec![".."], vec!["a", ".."], vec!["."], vec![""], vec!["a/b"], vec!["..\\x"], vec!["a\0"], vec![]] {
            assert!(loc.key(bad.iter().copied()).is_err(), "{bad:?} should be refused");
        }
        let store = Store::from_locations(Location::memory("m"), Location::memory("d"));
        for bad in ["..", "../x", "a/b", "", "."] {
            let e = store.output_key(&guid("a"), bad).expect_err(bad);
            assert!(matches!(e, TaskError::OutputName { .. }), "{bad:?}: {e}");
            assert!(!e.is_permanent());
        }
    }

    #[tokio::test]
    async fn local_paths_and_file_urls_open_the_same_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let masters = dir.path().join("m");
        std::fs::create_dir_all(masters.join("rel")).expect("mkdir");
        std::fs::write(masters.join("rel/a.wav"), b"RIFF").expect("write");
        let out = dir.path().join("out");
        let url = url::Url::from_directory_path(&out).expect("url").to_string();
        let remote = Remote::from_options(&WorkerOptions::default());
        let store = Store::open(&masters.to_string_lossy(), &url, &remote).expect("open");
        let key = store.master_key(&guid("rel/a.wav")).expect("key");
        assert_eq!(store.fetch(&key, 100).await.expect("fetch").as_ref(), b"RIFF");
        let e = store.fetch(&key, 3).await.expect_err("too large");
        assert!(matches!(e, TaskError::MasterTooLarge { size: 4, limit: 3, .. }), "{e}");
        let missing = store.master_key(&guid("rel/b.wav")).expect("key");
        let e = store.fetch(&missing, 100).await.expect_err("missing");
        assert!(e.is_permanent() && e.to_string().contains("rel/b.wav"), "{e}");
        let o = store.output_key(&guid("rel/a.wav"), "x.json").expect("key");
        store.put(&o, Bytes::from_static(b"{}")).await.expect("put");
        assert_eq!(std::fs::read(out.join("rel/a.wav/x.json")).expect("read"), b"{}");
        assert!(o.uri.starts_with("file:///") && o.uri.ends_with("/out/rel/a.wav/x.json"), "{}", o.uri);
        assert!(Store::open(&dir.path().join("nope").to_string_lossy(), "d", &remote).is_err());
    }

    #[test]
    fn cloud_urls_open_without_touching_the_network() {
        let opts = WorkerOptions {
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            store_allow_http: true,
            store_options: [("aws_access_key_id".into(), "k".into()), ("aws_secret_access_key".into(), "s".into())]
                .into(),
            ..WorkerOptions::default()
        };
        let remote = Remote::from_options(&opts);
        let s3 = Location::open("masters", "s3://bucket/some/prefix/", false, &remote).expect("s3");
        let k = s3.key(["a", "b.wav"]).expect("key");
        assert_eq!(k.path.as_ref(), "some/prefix/a/b.wav");
        assert_eq!(k.uri, "s3://bucket/some/prefix/a/b.wav");
        let http = Location::open("masters", "https://cdn.example.invalid/masters", false, &remote).expect("http");
        assert_eq!(http.key(["x.wav"]).expect("key").path.as_ref(), "masters/x.wav");
        let az = Location::open(
            "masters",
            "az://container/p",
            false,
            &Remote {
                options: vec![
                    ("azure_storage_account_name".into(), "acct".into()),
                    ("azure_storage_use_emulator".into(), "true".into()),
                ],
                ..remote.clone()
            },
        );
        assert!(az.is_ok(), "{az:?}");
        let e = Location::open("masters", "ftp://host/x", false, &remote).expect_err("ftp");
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
    }

    #[test]
    fn only_cloud_variables_of_the_environment_become_options() {
        let env = [
            ("AWS_REGION", "eu-west-1"),
            ("PATH", "/bin"),
            ("GOOGLE_BUCKET", "b"),
            ("AZURE_X", "y"),
            ("HOME", "/root"),
        ];
        let got = env_options(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["aws_region", "google_bucket", "azure_x"]);
    }
}
