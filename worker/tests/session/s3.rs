//! The worker against a real S3-compatible server on loopback: `s3s` (the S3 protocol, SigV4
//! authentication included) over `s3s-fs` (objects as files in a temp folder), started in-process
//! on port 0. Between the client and the server sits a fault switch that can answer HTTP 500 or
//! send half a body and then go silent, so the tests see what a flaky store does to tasks.
//!
//! Nothing here reaches beyond 127.0.0.1.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

use super::*;

const ACCESS_KEY: &str = "kiln-test-access";
const SECRET_KEY: &str = "kiln-test-secret-key";

/// Faults injected into the next object GETs, counted down as they fire.
#[derive(Default)]
struct Faults {
    /// The next this-many object GETs answer 500 Internal Server Error.
    fail_gets: AtomicU32,
    /// The next this-many object GETs send their headers and half the body, then stall forever.
    stall_gets: AtomicU32,
    /// Object GETs seen (after faults), to check a master is read once per task.
    gets: AtomicU32,
    /// Multipart uploads started (`POST ?uploads`).
    multipart_starts: AtomicU32,
}

fn take_one(counter: &AtomicU32) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

/// A body that yields its first chunk and then never another byte: a server that stalls midway.
struct Stalled {
    first: Option<Bytes>,
    size: u64,
}

impl HttpBody for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            // Never woken: the client's timeout is what ends this.
            None => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.size)
    }
}

/// The loopback S3 server; its buckets are folders of `root`.
struct S3Server {
    endpoint: String,
    root: PathBuf,
    faults: Arc<Faults>,
    accept: JoinHandle<()>,
}

impl S3Server {
    async fn start(root: &Path, buckets: &[&str]) -> Self {
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).expect("bucket folder");
        }
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let (service, faults) = (service.clone(), f.clone());
                tokio::spawn(async move {
                    let handler = hyper::service::service_fn(move |req| handle(service.clone(), faults.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), handler)
                        .await;
                });
            }
        });
        Self { endpoint, root: root.to_path_buf(), faults, accept }
    }

    fn put_file(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write object");
    }

    fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(bucket).join(key)).ok()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn handle(
    service: S3Service,
    faults: Arc<Faults>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<s3s::Body>, s3s::HttpError> {
    let object_get =
        req.method() == http::Method::GET && req.uri().path().matches('/').count() >= 2 && req.uri().query().is_none();
    if req.method() == http::Method::POST && req.uri().query().is_some_and(|q| q.starts_with("uploads")) {
        faults.multipart_starts.fetch_add(1, Ordering::SeqCst);
    }
    if object_get && take_one(&faults.fail_gets) {
        let mut resp = http::Response::new(s3s::Body::from("<Error><Code>InternalError</Code></Error>".to_owned()));
        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(resp);
    }
    if object_get && take_one(&faults.stall_gets) {
        let resp = service.call(req.map(s3s::Body::from)).await?;
        let (parts, body) = resp.into_parts();
        let all = collect_body(body).await;
        let size = all.len() as u64;
        let half = all.slice(..all.len() / 2);
        return Ok(http::Response::from_parts(parts, s3s::Body::http_body(Stalled { first: Some(half), size })));
    }
    if object_get {
        faults.gets.fetch_add(1, Ordering::SeqCst);
    }
    service.call(req.map(s3s::Body::from)).await
}

/// Reads a whole s3s body (it is a `Stream` of byte chunks).
async fn collect_body(mut body: s3s::Body) -> Bytes {
    use futures::StreamExt as _;
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.expect("body chunk"));
    }
    Bytes::from(all)
}

/// A harness whose worker reads `s3://masters/catalog/…` and writes `s3://derivatives/out/…`.
struct S3Setup {
    h: Harness,
    s3: S3Server,
}

impl S3Setup {
    async fn new() -> Self {
        let h = Harness::new().await;
        let s3 = S3Server::start(&h.temp.path().join("s3"), &["masters", "derivatives"]).await;
        Self { h, s3 }
    }

    fn worker_options(&self, id: &str, slots: usize) -> kiln_config::WorkerOptions {
        kiln_config::WorkerOptions {
            masters: "s3://masters/catalog".into(),
            derivatives: "s3://derivatives/out".into(),
            s3_endpoint: Some(self.s3.endpoint.clone()),
            s3_path_style: true,
            store_allow_http: true,
            store_timeout: Duration::from_secs(10),
            store_retries: 0,
            store_options: [
                ("aws_access_key_id".to_owned(), ACCESS_KEY.to_owned()),
                ("aws_secret_access_key".to_owned(), SECRET_KEY.to_owned()),
                ("aws_region".to_owned(), "us-east-1".to_owned()),
            ]
            .into(),
            ..self.h.worker_options(id, slots)
        }
    }

    fn sine(&self, guid: &str, secs: f32) -> Vec<u8> {
        let tmp = self.h.temp.path().join("sine.wav");
        kiln_testkit::write_sine_wav(&tmp, 44_100, secs, 440.0, 0.5).expect("write wav");
        let bytes = std::fs::read(&tmp).expect("read wav");
        self.s3.put_file("masters", &format!("catalog/{guid}"), &bytes);
        bytes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_renders_through_s3_with_checksums_in_the_manifest() {
    let mut s = S3Setup::new().await;
    let guids = ["rel-1/a.wav", "rel-1/b.wav", "rel-2/c.wav", "d.wav"];
    for (i, g) in guids.iter().enumerate() {
        s.sine(g, 1.0 + i as f32 * 0.5);
    }
    // A low threshold so the waveform PNG/JSON outputs go through the multipart path too.
    let opts = kiln_config::WorkerOptions { multipart_threshold: 1024, ..s.worker_options("w-s3", 2) };
    let running = spawn(Worker::new(opts).expect("worker"));
    let jobs: Vec<(&str, &[&str])> = guids.iter().map(|g| (*g, &["loudness", "waveform"][..])).collect();
    let ids = s.h.submit(&jobs).await;
    let tasks = s.h.wait_terminal(&ids).await;
    for t in &tasks {
        let guid = t.job.as_ref().expect("job").asset_guid.clone();
        assert_eq!(t.state(), v1::TaskState::Succeeded, "{guid}: {}", t.last_error);
        assert_eq!(t.attempts, 0, "no failed attempt: {guid}");
        let result = t.result.as_ref().expect("result");
        assert_eq!(result.manifest_uri, format!("s3://derivatives/out/{guid}/manifest.json"));
        let manifest_bytes =
            s.s3.object("derivatives", &format!("out/{guid}/manifest.json")).expect("manifest.json in the bucket");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("manifest json");
        assert_eq!(manifest["master"]["uri"], format!("s3://masters/catalog/{guid}"));
        let outputs = manifest["outputs"].as_array().expect("outputs");
        assert!(!outputs.is_empty());
        for o in outputs {
            let uri = o["uri"].as_str().expect("uri");
            let key = uri.strip_prefix("s3://derivatives/").expect("under the derivatives bucket");
            let bytes = s.s3.object("derivatives", key).unwrap_or_else(|| panic!("{uri} missing"));
            assert_eq!(o["sha256"], sha256_hex(&bytes), "{uri}");
            assert_eq!(o["bytes"], bytes.len() as u64, "{uri}");
        }
    }
    assert_eq!(s.s3.faults.gets.load(Ordering::SeqCst), guids.len() as u32, "each master is read exactly once");
    assert!(s.s3.faults.multipart_starts.load(Ordering::SeqCst) > 0, "outputs over the threshold went up in parts");
    running.finish().await;
    s.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_from_the_store_is_a_retry_not_a_dead_letter() {
    let mut s = S3Setup::new().await;
    s.sine("flaky.wav", 1.0);
    s.s3.faults.fail_gets.store(2, Ordering::SeqCst);
    let running = spawn(Worker::new(s.worker_options("w-500", 1)).expect("worker"));
    let ids = s.h.submit(&[("flaky.wav", &["loudness"])]).await;
    let t = s.h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
    assert_eq!(t.attempts, 2, "two failed fetches counted, then success: {t:#?}");
    let failures: Vec<&str> = t.history.iter().filter(|e| e.kind == "failed").map(|e| e.detail.as_str()).collect();
    assert_eq!(failures.len(), 2, "{t:#?}");
    assert!(failures.iter().all(|e| e.contains("flaky.wav")), "the retried failures name the key: {failures:?}");
    assert_eq!(s.s3.faults.fail_gets.load(Ordering::SeqCst), 0);
    running.finish().await;
    s.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stalls_midway_is_a_retry_and_other_slots_keep_going() {
    let mut s = S3Setup::new().await;
    s.sine("stalls.wav", 2.0);
    s.sine("fine-1.wav", 1.0);
    s.sine("fine-2.wav", 1.0);
    s.s3.faults.stall_gets.store(1, Ordering::SeqCst);
    let opts = kiln_config::WorkerOptions { store_timeout: Duration::from_secs(5), ..s.worker_options("w-stall", 2) };
    let running = spawn(Worker::new(opts).expect("worker"));
    let stalled = s.h.submit(&[("stalls.wav", &["loudness"])]).await;
    // Wait until the stalled download is under way before submitting the others.
    let started = Instant::now();
    while s.s3.faults.stall_gets.load(Ordering::SeqCst) != 0 {
        assert!(started.elapsed() < WAIT, "the stall never fired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fine = s.h.submit(&[("fine-1.wav", &["loudness"]), ("fine-2.wav", &["loudness"])]).await;
    let fine_tasks = s.h.wait_terminal(&fine).await;
    for t in &fine_tasks {
        assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
        assert_eq!(t.attempts, 0);
    }
    // The stalled download holds only its own task: the healthy ones finished while it was still
    // on its first attempt (the store timeout is 5 s; the healthy renders take milliseconds).
    let stalled_now = s.h.tasks().await.into_iter().find(|t| t.id == stalled[0]).expect("task");
    assert_eq!((stalled_now.state(), stalled_now.attempts), (v1::TaskState::Leased, 0), "{stalled_now:#?}");
    let t = s.h.wait_terminal(&stalled).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
    assert_eq!(t.attempts, 1, "the stall failed the first attempt, the retry succeeded: {t:#?}");
    assert!(t.history.iter().any(|e| e.kind == "failed" && e.detail.contains("stalls.wav")), "{t:#?}");
    running.finish().await;
    s.h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_missing_from_the_bucket_is_dead_lettered_with_its_key() {
    let mut s = S3Setup::new().await;
    let running = spawn(Worker::new(s.worker_options("w-s3-missing", 1)).expect("worker"));
    let ids = s.h.submit(&[("rel-7/absent.wav", &["loudness"])]).await;
    let t = s.h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::DeadLettered, "{t:#?}");
    assert_eq!(t.attempts, 1, "{t:#?}");
    assert!(t.last_error.contains("s3://masters/catalog/rel-7/absent.wav"), "reason: {}", t.last_error);
    running.finish().await;
    s.h.shutdown().await;
}
