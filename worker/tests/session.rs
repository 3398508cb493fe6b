//! The worker against a real in-process scheduler (one-node Raft on port 0, sled in a temp dir),
//! reading masters from and writing derivatives to temp folders.
//!
//! Tests that need real DSP use `Worker::new` (kiln_render::Pipeline); the ones about session
//! behaviour (drain, retries, reconnects) use a scripted renderer so their timing is controlled
//! rather than guessed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_proto::v1;
use kiln_render::{OutputFile, RenderReport, Rendered, RendererOutput};
use kiln_worker::{Render, Worker};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

fn scheduler_options(data_dir: &Path) -> kiln_config::SchedulerOptions {
    kiln_config::SchedulerOptions {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        lease_ttl: Duration::from_secs(20),
        heartbeat_interval: Duration::from_millis(200),
        retry_backoff_base: Duration::from_millis(100),
        retry_backoff_max: Duration::from_millis(500),
        ..Default::default()
    }
}

async fn start_scheduler(opts: &kiln_config::SchedulerOptions) -> kiln_scheduler::Running {
    let running = kiln_scheduler::start(opts).await.expect("scheduler starts");
    let started = Instant::now();
    while running.handle().status().await.map_or(true, |s| s.leader_id == 0) {
        assert!(started.elapsed() < WAIT, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

struct Harness {
    temp: tempfile::TempDir,
    sched_opts: kiln_config::SchedulerOptions,
    scheduler: Option<kiln_scheduler::Running>,
    address: String,
    client: kiln_proto::Client,
    masters: PathBuf,
    out: PathBuf,
}

impl Harness {
    async fn new() -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let masters = temp.path().join("masters");
        let out = temp.path().join("out");
        std::fs::create_dir_all(&masters).expect("mkdir");
        let sched_opts = scheduler_options(&temp.path().join("ledger"));
        let scheduler = start_scheduler(&sched_opts).await;
        let address = format!("http://{}", scheduler.grpc_addr());
        let client = kiln_proto::Client::new([address.clone()]).expect("client");
        Self { temp, sched_opts, scheduler: Some(scheduler), address, client, masters, out }
    }

    fn worker_options(&self, id: &str, slots: usize) -> kiln_config::WorkerOptions {
        kiln_config::WorkerOptions {
            id: Some(id.to_owned()),
            schedulers: vec![self.address.clone()],
            slots: Some(slots),
            pin_cores: false,
            prefetch: 1,
            // Measured speeds vary with the load of parallel tests; stealing compares them.
            speed: Some(1.0),
            masters: self.masters.to_string_lossy().into_owned(),
            derivatives: self.out.to_string_lossy().into_owned(),
            drain_grace: Duration::from_secs(30),
            ..Default::default()
        }
    }

    fn sine(&self, name: &str, secs: f32) {
        kiln_testkit::write_sine_wav(&self.masters.join(name), 44_100, secs, 440.0, 0.5).expect("write wav");
    }

    async fn submit(&mut self, jobs: &[(&str, &[&str])]) -> Vec<u64> {
        let jobs: Vec<v1::EncodeJob> = jobs
            .iter()
            .map(|(guid, renderers)| v1::EncodeJob {
                request_id: format!("req-{}", guid.replace('/', "-")),
                release_id: 1,
                asset_id: 1,
                asset_guid: (*guid).to_owned(),
                derivative_assets: renderers.iter().map(|r| (*r).to_owned()).collect(),
                ..Default::default()
            })
            .collect();
        let resp = self
            .client
            .call(|mut c| {
                let req = v1::SubmitRequest { jobs: jobs.clone() };
                async move { c.submit(req).await }
            })
            .await
            .expect("submit");
        resp.results.iter().map(|r| r.task_id).collect()
    }

    async fn workers(&mut self) -> Vec<v1::WorkerInfo> {
        self.client
            .call(|mut c| async move { c.list_workers(v1::ListWorkersRequest {}).await })
            .await
            .expect("workers")
            .workers
    }

    async fn tasks(&mut self) -> Vec<v1::Task> {
        let resp = self
            .client
            .call(|mut c| async move {
                c.list_tasks(v1::ListTasksRequest { with_history: true, limit: 10_000, ..Default::default() }).await
            })
            .await
            .expect("list tasks");
        resp.tasks
    }

    /// Polls until `done` holds for the task list.
    async fn wait_for(&mut self, what: &str, mut done: impl FnMut(&[v1::Task]) -> bool) -> Vec<v1::Task> {
        let started = Instant::now();
        loop {
            let tasks = self.tasks().await;
            if done(&tasks) {
                return tasks;
            }
            assert!(started.elapsed() < WAIT, "timed out waiting for {what}: {tasks:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_terminal(&mut self, ids: &[u64]) -> Vec<v1::Task> {
        let ids = ids.to_vec();
        let tasks = self
            .wait_for("terminal states", |ts| ids.iter().all(|id| ts.iter().any(|t| t.id == *id && is_terminal(t))))
            .await;
        ids.iter().map(|id| tasks.iter().find(|t| t.id == *id).cloned().expect("task")).collect()
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.scheduler.take() {
            s.shutdown().await;
        }
        drop(self.temp);
    }
}

fn is_terminal(t: &v1::Task) -> bool {
    matches!(t.state(), v1::TaskState::Succeeded | v1::TaskState::DeadLettered | v1::TaskState::Cancelled)
}

/// A running worker and the sender that starts its drain.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), kiln_worker::Error>>,
}

fn spawn(worker: Worker) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    Running { stop: Some(stop), join }
}

impl Running {
    fn drain(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    async fn finish(mut self) {
        self.drain();
        let result = tokio::time::timeout(WAIT, self.join).await.expect("worker drains in time").expect("worker task");
        result.expect("worker returns Ok");
    }
}

/// A renderer whose behaviour a test scripts: optionally waits for a gate, announces each start,
/// and fails transiently the first `fail_first` times.
struct Scripted {
    started: flume::Sender<usize>,
    gate: Option<flume::Receiver<()>>,
    fail_first: u32,
    calls: AtomicU32,
}

impl Scripted {
    fn new(gated: bool, fail_first: u32) -> (Arc<Self>, flume::Receiver<usize>, flume::Sender<()>) {
        let (started_tx, started_rx) = flume::unbounded();
        let (gate_tx, gate_rx) = flume::unbounded();
        let me = Self { started: started_tx, gate: gated.then_some(gate_rx), fail_first, calls: AtomicU32::new(0) };
        (Arc::new(me), started_rx, gate_tx)
    }
}

impl Render for Scripted {
    fn render(
        &self,
        master: &[u8],
        _hint: Option<&str>,
        renderers: &[&str],
    ) -> Result<RenderReport, kiln_render::Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.started.send(master.len());
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        if call < self.fail_first {
            return Err(kiln_render::Error::Internal {
                renderer: renderers.first().copied().unwrap_or("?").into(),
                reason: "scripted hiccup".into(),
            });
        }
        let outputs = renderers
            .iter()
            .map(|r| RendererOutput {
                renderer: (*r).to_owned(),
                rendered: Rendered {
                    metadata: serde_json::json!({ "bytes": master.len() }),
                    files: vec![OutputFile {
                        name: format!("{r}.json"),
                        content_type: "application/json",
                        bytes: b"{}".to_vec(),
                    }],
                },
                micros: 1,
            })
            .collect();
        Ok(RenderReport { decode_micros: 1, duration_secs: 1.0, outputs })
    }

    fn names(&self) -> Vec<String> {
        vec!["loudness".into(), "waveform".into()]
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_succeed_with_outputs_and_manifest() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 2.0);
    std::fs::create_dir_all(h.masters.join("rel-2")).expect("mkdir");
    h.sine("rel-2/b.wav", 3.0);
    let worker = Worker::new(h.worker_options("w-real", 2)).expect("worker");
    let running = spawn(worker);
    let ids = h.submit(&[("a.wav", &["loudness", "waveform"]), ("rel-2/b.wav", &["loudness", "waveform"])]).await;
    let tasks = h.wait_terminal(&ids).await;
    for t in &tasks {
        let guid = t.job.as_ref().expect("job").asset_guid.clone();
        assert_eq!(t.state(), v1::TaskState::Succeeded, "{guid}: {}", t.last_error);
        let result = t.result.as_ref().expect("result");
        let meta: serde_json::Value = serde_json::from_str(&result.metadata_json).expect("metadata json");
        assert!(meta.get("loudness").is_some() && meta.get("waveform").is_some(), "{meta}");
        assert!(!result.outputs.is_empty());
        let dir = h.out.join(&guid);
        for o in &result.outputs {
            let name = o.uri.rsplit('/').next().expect("file name");
            let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{} missing: {e}", o.uri));
            assert_eq!(o.bytes, bytes.len() as u64);
            assert_eq!(o.sha256, sha256_hex(&bytes), "{}", o.uri);
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
                .expect("manifest json");
        assert_eq!(manifest["asset_guid"], guid);
        assert_eq!(manifest["worker"], "w-real");
        assert_eq!(manifest["attempt"], 1);
        assert_eq!(manifest["task_id"], t.id);
        assert!(manifest["metadata"]["loudness"].is_object(), "{manifest}");
        assert_eq!(manifest["outputs"].as_array().map(Vec::len), Some(result.outputs.len()));
        assert!(result.manifest_uri.ends_with(&format!("{guid}/manifest.json")), "{}", result.manifest_uri);
    }
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_master_is_dead_lettered_with_a_readable_reason() {
    let mut h = Harness::new().await;
    std::fs::write(h.masters.join("corrupt.wav"), b"this is not a RIFF file, just text pretending to be audio")
        .expect("write");
    let running = spawn(Worker::new(h.worker_options("w-corrupt", 1)).expect("worker"));
    let ids = h.submit(&[("corrupt.wav", &["loudness"])]).await;
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::DeadLettered);
    assert_eq!(t.attempts, 1, "a permanent error dead-letters at once: {t:#?}");
    assert!(t.last_error.contains("undecodable"), "reason: {}", t.last_error);
    assert!(!h.out.join("corrupt.wav/manifest.json").exists());
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_master_is_dead_lettered_naming_the_key() {
    let mut h = Harness::new().await;
    let running = spawn(Worker::new(h.worker_options("w-missing", 1)).expect("worker"));
    let ids = h.submit(&[("rel-9/nowhere.wav", &["loudness"])]).await;
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::DeadLettered);
    assert_eq!(t.attempts, 1, "{t:#?}");
    assert!(
        t.last_error.contains("rel-9/nowhere.wav") && t.last_error.contains("does not exist"),
        "reason: {}",
        t.last_error
    );
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_render_errors_are_retried() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 0.1);
    let (scripted, _started, _gate) = Scripted::new(false, 1);
    let running = spawn(Worker::with_renderer(h.worker_options("w-retry", 1), scripted).expect("worker"));
    let ids = h.submit(&[("a.wav", &["loudness"])]).await;
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
    assert_eq!(t.attempts, 1, "one failed attempt counted");
    assert!(t.history.iter().any(|e| e.kind == "failed" && e.detail.contains("scripted hiccup")), "{t:#?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.out.join("a.wav/manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["attempt"], 2);
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_unstarted_tasks_and_finishes_running_ones() {
    let mut h = Harness::new().await;
    for name in ["a.wav", "b.wav", "c.wav", "d.wav"] {
        h.sine(name, 0.1);
    }
    // One slot, one prefetched: the worker holds two tasks, one rendering (held at the gate).
    let (scripted, started, gate) = Scripted::new(true, 0);
    let mut running = spawn(Worker::with_renderer(h.worker_options("w-drain", 1), scripted).expect("worker"));
    let ids = h
        .submit(&[
            ("a.wav", &["loudness"]),
            ("b.wav", &["loudness"]),
            ("c.wav", &["loudness"]),
            ("d.wav", &["loudness"]),
        ])
        .await;
    tokio::time::timeout(WAIT, started.recv_async()).await.expect("a render starts").expect("started");
    h.wait_for("two leases held", |ts| ts.iter().filter(|t| t.state() == v1::TaskState::Leased).count() == 2).await;

    running.drain();
    let tasks = h
        .wait_for("the unstarted lease released", |ts| {
            ts.iter().any(|t| t.history.iter().any(|e| e.kind == "released" && e.detail.contains("draining")))
        })
        .await;
    let leased: Vec<_> = tasks.iter().filter(|t| t.state() == v1::TaskState::Leased).collect();
    assert_eq!(leased.len(), 1, "only the running task stays leased: {tasks:#?}");
    let running_id = leased[0].id;

    // Nothing more is leased to a draining worker, and the running render still completes.
    gate.send(()).expect("open the gate");
    running.finish().await;
    let tasks = h.tasks().await;
    for t in &tasks {
        if t.id == running_id {
            assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
        } else {
            assert_eq!(t.state(), v1::TaskState::Queued, "{t:#?}");
            assert_eq!(t.attempts, 0, "a release is not a failed attempt: {t:#?}");
        }
    }
    assert_eq!(tasks.len(), ids.len());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_made_while_the_scheduler_is_down_are_delivered_after_it_returns() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 0.1);
    let (scripted, started, gate) = Scripted::new(true, 0);
    let running = spawn(Worker::with_renderer(h.worker_options("w-outage", 1), scripted).expect("worker"));
    let ids = h.submit(&[("a.wav", &["loudness"])]).await;
    tokio::time::timeout(WAIT, started.recv_async()).await.expect("a render starts").expect("started");

    // Stop the scheduler mid-render, finish the render while it is down, then bring it back on
    // the same address and data: the buffered completion must arrive and count.
    let addr = h.scheduler.as_ref().expect("running").grpc_addr();
    if let Some(s) = h.scheduler.take() {
        s.shutdown().await;
    }
    gate.send(()).expect("open the gate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut opts = h.sched_opts.clone();
    opts.listen = addr;
    h.scheduler = Some(start_scheduler(&opts).await);
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
    assert_eq!(t.attempts, 0, "{t:#?}");
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 0.1);
    let port = kiln_testkit::free_port();
    let mut opts = h.worker_options("w-http", 1);
    opts.http_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
    let (scripted, _started, _gate) = Scripted::new(false, 0);
    let running = spawn(Worker::with_renderer(opts, scripted).expect("worker"));
    let ids = h.submit(&[("a.wav", &["loudness"])]).await;
    h.wait_terminal(&ids).await;
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("read");
        body
    };
    let health = get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("connected"), "{health}");
    let metrics = get("/metrics").await;
    assert!(metrics.contains("kiln_worker_tasks_completed_total 1"), "{metrics}");
    assert!(metrics.contains("kiln_worker_render_duration_seconds_count{renderer=\"loudness\"} 1"), "{metrics}");
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_task_that_has_not_started_is_dropped() {
    let mut h = Harness::new().await;
    // Different lengths tell the renders apart.
    h.sine("a.wav", 0.1);
    h.sine("b.wav", 0.2);
    let size = |h: &Harness, name: &str| std::fs::metadata(h.masters.join(name)).expect("master").len() as usize;
    let (scripted, started, gate) = Scripted::new(true, 0);
    let calls = scripted.clone();
    let running = spawn(Worker::with_renderer(h.worker_options("w-revoke", 1), scripted).expect("worker"));
    let ids = h.submit(&[("a.wav", &["loudness"]), ("b.wav", &["loudness"])]).await;
    let first = tokio::time::timeout(WAIT, started.recv_async()).await.expect("a render starts").expect("started");
    h.wait_for("both leased", |ts| ts.iter().filter(|t| t.state() == v1::TaskState::Leased).count() == 2).await;
    let (rendering, waiting) = if first == size(&h, "a.wav") { (ids[0], ids[1]) } else { (ids[1], ids[0]) };

    h.client.call(|mut c| async move { c.cancel(v1::CancelRequest { task_id: waiting }).await }).await.expect("cancel");
    // Give the revocation time to arrive before the slot frees up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.send(()).expect("open the gate");
    let done = h.wait_terminal(&[rendering, waiting]).await;
    assert_eq!(done[0].state(), v1::TaskState::Succeeded, "{:#?}", done[0]);
    assert_eq!(done[1].state(), v1::TaskState::Cancelled, "{:#?}", done[1]);
    // The freed slot never rendered the revoked task.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.calls.load(Ordering::SeqCst), 1);
    running.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_steals_the_unstarted_tasks_of_a_busy_one() {
    let mut h = Harness::new().await;
    let names = ["a.wav", "b.wav", "c.wav", "d.wav"];
    for n in names {
        h.sine(n, 0.1);
    }
    // The victim: one slot, three prefetched, its one render held at the gate.
    let (slow, slow_started, slow_gate) = Scripted::new(true, 0);
    let slow_calls = slow.clone();
    let victim_opts = kiln_config::WorkerOptions { prefetch: 3, ..h.worker_options("w-victim", 1) };
    let victim = spawn(Worker::with_renderer(victim_opts, slow).expect("worker"));
    let jobs: Vec<(&str, &[&str])> = names.iter().map(|n| (*n, &["loudness"][..])).collect();
    let ids = h.submit(&jobs).await;
    tokio::time::timeout(WAIT, slow_started.recv_async()).await.expect("a render starts").expect("started");
    h.wait_for("the victim holds all four", |ts| ts.iter().filter(|t| t.state() == v1::TaskState::Leased).count() == 4)
        .await;

    // The thief: idle, nothing left in the queue. It gets the three unstarted tasks.
    let (fast, _fast_started, _fast_gate) = Scripted::new(false, 0);
    let fast_calls = fast.clone();
    let thief = spawn(Worker::with_renderer(h.worker_options("w-thief", 4), fast).expect("worker"));
    let tasks = h
        .wait_for("three tasks stolen and done", |ts| {
            ts.iter().filter(|t| t.state() == v1::TaskState::Succeeded).count() == 3
        })
        .await;
    for t in tasks.iter().filter(|t| t.state() == v1::TaskState::Succeeded) {
        assert_eq!(t.worker, "w-thief", "{t:#?}");
        let stolen = t.history.iter().find(|e| e.kind == "stolen").unwrap_or_else(|| panic!("no steal in {t:#?}"));
        assert!(stolen.detail.contains("w-victim"), "{stolen:?}");
    }
    let workers = h.workers().await;
    let by_id = |id: &str| workers.iter().find(|w| w.id == id).cloned().expect("worker listed");
    assert_eq!((by_id("w-thief").stole, by_id("w-victim").stolen_from), (3, 3));

    slow_gate.send(()).expect("open the gate");
    let done = h.wait_terminal(&ids).await;
    assert!(done.iter().all(|t| t.state() == v1::TaskState::Succeeded), "{done:#?}");
    // The victim rendered only the task it had started; the thief rendered the other three.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slow_calls.calls.load(Ordering::SeqCst), 1);
    assert_eq!(fast_calls.calls.load(Ordering::SeqCst), 3);
    let metrics = http_get(h.scheduler.as_ref().expect("scheduler").http_addr(), "/metrics").await;
    assert!(metrics.lines().any(|l| l == "kiln_scheduler_steals_total 3"), "{metrics}");
    victim.finish().await;
    thief.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_twice_as_fast_renders_a_backup_of_a_long_task_and_the_first_completion_counts() {
    let mut h = Harness::new().await;
    h.sine("long.wav", 0.1);
    // The slow holder: its render never ends until the gate opens.
    let (slow, slow_started, slow_gate) = Scripted::new(true, 0);
    let slow_opts = kiln_config::WorkerOptions { speed: Some(1.0), ..h.worker_options("w-old", 1) };
    let old = spawn(Worker::with_renderer(slow_opts, slow).expect("worker"));
    let ids = h.submit(&[("long.wav", &["loudness"])]).await;
    tokio::time::timeout(WAIT, slow_started.recv_async()).await.expect("the render starts").expect("started");

    // A worker four times as fast joins with the queue empty: it renders a backup copy, which
    // finishes first and counts, while the old server is still busy.
    let (fast, _fast_started, _fast_gate) = Scripted::new(false, 0);
    let fast_calls = fast.clone();
    let fast_opts = kiln_config::WorkerOptions { speed: Some(4.0), ..h.worker_options("w-new", 2) };
    let new = spawn(Worker::with_renderer(fast_opts, fast).expect("worker"));
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!((t.state(), t.worker.as_str(), t.attempts), (v1::TaskState::Succeeded, "w-new", 0), "{t:#?}");
    let copied = t.history.iter().find(|e| e.kind == "stolen").unwrap_or_else(|| panic!("no backup in {t:#?}"));
    assert!(copied.detail.starts_with("backup copy") && copied.detail.contains("w-old"), "{copied:?}");
    assert_eq!(fast_calls.calls.load(Ordering::SeqCst), 1);

    // The old server's late completion is refused; the task stays done once, by the copy.
    slow_gate.send(()).expect("open the gate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = h.tasks().await.into_iter().find(|t| t.id == ids[0]).expect("task");
    assert_eq!((t.state(), t.worker.as_str()), (v1::TaskState::Succeeded, "w-new"), "{t:#?}");
    assert_eq!(t.history.iter().filter(|e| e.kind == "succeeded").count(), 1, "{t:#?}");
    old.finish().await;
    new.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_the_ledger_has_as_disconnected_is_registered_again_and_gets_work() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 0.1);
    let (render, _, _) = Scripted::new(false, 0);
    let worker = spawn(Worker::with_renderer(h.worker_options("w-lost", 1), render).expect("worker"));
    let started = Instant::now();
    loop {
        if h.workers().await.iter().any(|w| w.id == "w-lost" && w.connected) {
            break;
        }
        assert!(started.elapsed() < WAIT, "the worker never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What a reconnect race can leave behind: the close of the worker's previous stream committed
    // after this session registered, so the ledger has the worker as disconnected while its
    // session is open and asking for work. Nothing would ever be leased to it.
    let id = kiln_types::WorkerId::new("w-lost".to_owned()).expect("worker id");
    let handle = h.scheduler.as_ref().expect("scheduler").handle();
    handle.propose(kiln_ledger::Command::DisconnectWorker { worker: id }).await.expect("proposed").expect("applied");
    let ids = h.submit(&[("a.wav", &["loudness"])]).await;
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!((t.state(), t.worker.as_str()), (v1::TaskState::Succeeded, "w-lost"), "{t:#?}");
    worker.finish().await;
    h.shutdown().await;
}

/// The value of one sample line (`name{labels} value`) in a Prometheus text body.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_worker_kpis_move_as_tasks_complete() {
    let mut h = Harness::new().await;
    for n in ["a.wav", "b.wav", "c.wav"] {
        h.sine(n, 0.1);
    }
    std::fs::write(h.masters.join("bad.wav"), b"not audio").expect("write");
    let sched_http = h.scheduler.as_ref().expect("scheduler").http_addr();
    let worker_port = kiln_testkit::free_port();
    let opts = kiln_config::WorkerOptions {
        http_listen: Some(format!("127.0.0.1:{worker_port}").parse().expect("addr")),
        ..h.worker_options("w-kpi", 1)
    };
    let worker_http: std::net::SocketAddr = format!("127.0.0.1:{worker_port}").parse().expect("addr");

    // Probes: ready once a leader is known, alive whenever the node answers.
    let ready = http_get(sched_http, "/healthz").await;
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("leader 1"), "{ready}");
    let alive = http_get(sched_http, "/livez").await;
    assert!(alive.starts_with("HTTP/1.1 200") && alive.contains("alive: node 1"), "{alive}");

    let before = http_get(sched_http, "/metrics").await;
    assert_eq!(sample(&before, "kiln_scheduler_tasks_finished_total{state=\"succeeded\"}"), 0.0);
    assert_eq!(sample(&before, "kiln_scheduler_render_seconds_count{renderer=\"loudness\"}"), 0.0);
    assert_eq!(sample(&before, "kiln_scheduler_lease_wait_seconds_count"), 0.0);

    // Submitted before the worker connects, so the queue is observably deep in between.
    let jobs: Vec<(&str, &[&str])> =
        ["a.wav", "b.wav", "c.wav", "bad.wav"].iter().map(|n| (*n, &["loudness", "waveform"][..])).collect();
    let ids = h.submit(&jobs).await;
    let mid = http_get(sched_http, "/metrics").await;
    assert_eq!(sample(&mid, "kiln_scheduler_tasks_submitted_total"), 4.0);
    assert_eq!(sample(&mid, "kiln_scheduler_queue_tasks{queue=\"default\",state=\"ready\"}"), 4.0);

    let running = spawn(Worker::new(opts).expect("worker"));
    h.wait_terminal(&ids).await;

    let after = http_get(sched_http, "/metrics").await;
    assert_eq!(sample(&after, "kiln_scheduler_tasks_finished_total{state=\"succeeded\"}"), 3.0);
    assert_eq!(sample(&after, "kiln_scheduler_tasks_finished_total{state=\"dead_lettered\"}"), 1.0);
    assert_eq!(sample(&after, "kiln_scheduler_task_attempts_failed_total"), 1.0);
    assert_eq!(sample(&after, "kiln_scheduler_render_seconds_count{renderer=\"loudness\"}"), 3.0);
    assert_eq!(sample(&after, "kiln_scheduler_render_seconds_count{renderer=\"waveform\"}"), 3.0);
    assert_eq!(sample(&after, "kiln_scheduler_lease_wait_seconds_count"), 4.0);
    assert_eq!(sample(&after, "kiln_scheduler_lease_wait_seconds_bucket{le=\"+Inf\"}"), 4.0);
    assert!(sample(&after, "kiln_scheduler_uploaded_bytes_total") > 0.0);
    assert_eq!(sample(&after, "kiln_scheduler_workers_connected"), 1.0);
    assert_eq!(sample(&after, "kiln_scheduler_tasks{state=\"leased\"}"), 0.0);

    let w = http_get(worker_http, "/metrics").await;
    assert_eq!(sample(&w, "kiln_worker_tasks_completed_total"), 3.0);
    assert_eq!(sample(&w, "kiln_worker_tasks_failed_total{class=\"permanent\"}"), 1.0);
    assert!(sample(&w, "kiln_worker_fetched_bytes_total") > 0.0);
    assert!(sample(&w, "kiln_worker_uploaded_bytes_total") > 0.0);
    assert_eq!(sample(&w, "kiln_worker_render_duration_seconds_count{renderer=\"waveform\"}"), 3.0);
    assert_eq!(sample(&w, "kiln_worker_render_duration_seconds_bucket{le=\"+Inf\",renderer=\"waveform\"}"), 3.0);
    assert!(sample(&w, "kiln_worker_fetch_duration_seconds_count") >= 3.0);
    assert_eq!(sample(&w, "kiln_worker_upload_duration_seconds_count"), 3.0);

    // Every series the shipped Grafana dashboard queries is one these processes serve.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/kiln-fleet.json"))
        .expect("dashboard");
    let served = |name: &str| {
        [&mid, &after, &w]
            .iter()
            .any(|text| text.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' ']))))
    };
    let mut queried: Vec<&str> = dashboard
        .match_indices("kiln_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .filter(|name| !name.starts_with("kiln_fleet"))
        .collect();
    queried.sort_unstable();
    queried.dedup();
    assert!(queried.len() > 10, "the dashboard queries kiln series: {queried:?}");
    let missing: Vec<&&str> = queried.iter().filter(|n| !served(n)).collect();
    assert!(missing.is_empty(), "the dashboard queries series nobody serves: {missing:?}");
    running.finish().await;
    h.shutdown().await;
}

/// A plain HTTP/1.1 GET over a TCP socket (the tests need no HTTP client crate).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

/// A scheduler node that is not the leader: refuses every session, naming the leader.
struct Follower {
    leader: String,
}

#[tonic::async_trait]
impl v1::worker_session_server::WorkerSession for Follower {
    type SessionStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::SchedulerMessage, tonic::Status>> + Send>>;

    async fn session(
        &self,
        _request: tonic::Request<tonic::Streaming<v1::WorkerMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        let mut status = tonic::Status::unavailable("not the leader");
        status.metadata_mut().insert(kiln_proto::client::LEADER_METADATA, self.leader.parse().expect("ascii"));
        Err(status)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_follows_the_leader_named_by_a_follower() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 0.1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let follower_addr = listener.local_addr().expect("addr");
    let (stop_follower, follower_stopped) = oneshot::channel::<()>();
    let follower = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::worker_session_server::WorkerSessionServer::new(Follower { leader: h.address.clone() }))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                let _ = follower_stopped.await;
            }),
    );
    let mut opts = h.worker_options("w-follow", 1);
    opts.schedulers = vec![follower_addr.to_string()];
    let (scripted, _started, _gate) = Scripted::new(false, 0);
    let running = spawn(Worker::with_renderer(opts, scripted).expect("worker"));
    let ids = h.submit(&[("a.wav", &["loudness"])]).await;
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
    running.finish().await;
    let _ = stop_follower.send(());
    let _ = follower.await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_scheduler_still_drains() {
    let temp = tempfile::tempdir().expect("tempdir");
    let opts = kiln_config::WorkerOptions {
        id: Some("w-alone".into()),
        schedulers: vec![format!("http://127.0.0.1:{}", kiln_testkit::free_port())],
        slots: Some(1),
        pin_cores: false,
        masters: temp.path().to_string_lossy().into_owned(),
        derivatives: temp.path().join("out").to_string_lossy().into_owned(),
        ..Default::default()
    };
    let mut running = spawn(Worker::new(opts).expect("worker"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.drain();
    let result =
        tokio::time::timeout(Duration::from_secs(5), running.join).await.expect("drains at once").expect("task");
    result.expect("Ok");
}

#[test]
fn bad_options_are_refused_with_a_reason() {
    let temp = tempfile::tempdir().expect("tempdir");
    let base = kiln_config::WorkerOptions {
        masters: temp.path().to_string_lossy().into_owned(),
        derivatives: temp.path().join("out").to_string_lossy().into_owned(),
        ..Default::default()
    };
    let missing =
        kiln_config::WorkerOptions { masters: temp.path().join("nope").to_string_lossy().into_owned(), ..base.clone() };
    let e = Worker::new(missing).err().expect("missing masters folder");
    assert!(e.to_string().contains("nope"), "{e}");
    let bad_id = kiln_config::WorkerOptions { id: Some("a b".into()), ..base.clone() };
    assert!(Worker::new(bad_id).err().expect("bad id").to_string().contains("worker_id"));
    let bad_url = kiln_config::WorkerOptions { derivatives: "nosuchscheme://x/y".into(), ..base };
    assert!(Worker::new(bad_url).is_err());
}

/// The same worker against a loopback S3 server, with faults.
#[path = "session/s3.rs"]
mod s3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_wan_auto_prefetch_holds_enough_ahead_to_cover_the_round_trip() {
    let mut h = Harness::new().await;
    let names: Vec<String> = (0..200).map(|i| format!("wan-{i}.wav")).collect();
    for n in &names {
        h.sine(n, 0.01);
    }
    // Every byte between the worker and the scheduler takes 40 ms each way.
    let scheduler = h.scheduler.as_ref().expect("scheduler").grpc_addr();
    let link = kiln_testkit::wan::Link { rtt: Duration::from_millis(80), bytes_per_sec: None };
    let wan = kiln_testkit::wan::WanProxy::start(scheduler, link).await.expect("WAN proxy");
    let (quick, _started, _gate) = Scripted::new(false, 0);
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", kiln_testkit::free_port()).parse().expect("addr");
    let opts = kiln_config::WorkerOptions {
        schedulers: vec![format!("http://{}", wan.addr)],
        auto_prefetch: true,
        http_listen: Some(http),
        ..h.worker_options("w-far", 2)
    };
    let worker = spawn(Worker::with_renderer(opts, quick).expect("worker"));
    let jobs: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["loudness"][..])).collect();
    let ids = h.submit(&jobs).await;

    // Renders take a few milliseconds and the round trip 80, so the measured prefetch goes from
    // the configured 1 up to its cap; the worker's metrics say which is in force.
    let metrics_at = http;
    let mut highest = 0.0f64;
    let started = Instant::now();
    loop {
        highest = highest.max(sample(&http_get(metrics_at, "/metrics").await, "kiln_worker_prefetch_per_slot"));
        let tasks = h.tasks().await;
        if ids.iter().all(|id| tasks.iter().any(|t| t.id == *id && is_terminal(t))) {
            break;
        }
        assert!(started.elapsed() < WAIT, "the tasks did not finish; the prefetch reached {highest}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(highest > 1.0, "the prefetch never grew past the configured 1 across an 80 ms link");
    assert!(highest <= 15.0, "{highest}: past the cap");
    let done = h.wait_terminal(&ids).await;
    assert!(done.iter().all(|t| t.state() == v1::TaskState::Succeeded));
    worker.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_past_render_timeout_is_abandoned_retried_and_reported_unhealthy() {
    let mut h = Harness::new().await;
    h.sine("a.wav", 0.1);
    let port = kiln_testkit::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut opts = h.worker_options("w-stuck", 2);
    opts.http_listen = Some(addr);
    opts.render_timeout = Duration::from_millis(300);
    let (scripted, started, gate) = Scripted::new(true, 0);
    let running = spawn(Worker::with_renderer(opts, scripted).expect("worker"));
    let ids = h.submit(&[("a.wav", &["loudness"])]).await;
    tokio::time::timeout(WAIT, started.recv_async()).await.expect("render starts").expect("started");

    // The render hangs on its gate: past the deadline the worker gives up on it and says so.
    let deadline = tokio::time::Instant::now() + WAIT;
    let health = loop {
        let health = http_get(addr, "/healthz").await;
        if health.starts_with("HTTP/1.1 503") || tokio::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(health.starts_with("HTTP/1.1 503") && health.contains("render_timeout"), "{health}");
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("kiln_worker_renders_abandoned_total 1"), "{metrics}");

    // Unstuck, the retry (on the other slot) renders it; the abandoned attempt is in its history.
    for _ in 0..4 {
        let _ = gate.send(());
    }
    let t = h.wait_terminal(&ids).await.remove(0);
    assert_eq!(t.state(), v1::TaskState::Succeeded, "{t:#?}");
    assert!(t.history.iter().any(|e| e.kind == "failed" && e.detail.contains("render_timeout")), "{t:#?}");
    running.finish().await;
    h.shutdown().await;
}
