//! Catalog batches end to end, through `kiln batch` against real schedulers and workers: the
//! leader killed mid-batch (no line skipped, none admitted twice, replicas identical), pause and
//! resume, cancel, a bad line under each policy, and a webhook receiver that fails twice before it
//! takes exactly one delivery.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::v1;
use kiln_testkit::{run, wait_for, write_sine_wav, TestCluster, FAST_FAILOVER};

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// A JSONL line for master `{guid}` (request id `{prefix}-{n}`).
fn line(prefix: &str, n: usize, queue: &str) -> String {
    format!(
        r#"{{"request_id":"{prefix}-{n}","release_id":1,"asset_id":{n},"asset_guid":"{prefix}-{n}.wav","derivative_assets":["loudness"],"queue":"{queue}"}}"#
    )
}

/// `n` one-second masters named `{prefix}-{i}.wav` (hard links to a few sources) and a manifest
/// of them; `bad` puts `not json` at those 1-based line numbers.
fn manifest(dir: &Path, prefix: &str, n: usize, queue: &str, bad: &[usize]) -> PathBuf {
    let masters = dir.join("masters");
    std::fs::create_dir_all(&masters).expect("mkdir");
    for i in 0..8 {
        let src = masters.join(format!("src-{i}.wav"));
        if !src.exists() {
            write_sine_wav(&src, 8_000, 1.0, 220.0 + i as f32 * 30.0, 0.5).expect("wav");
        }
    }
    let mut text = String::new();
    let mut job = 0;
    for number in 1..=n + bad.len() {
        if bad.contains(&number) {
            text.push_str("not json\n");
            continue;
        }
        let link = masters.join(format!("{prefix}-{job}.wav"));
        if !link.exists() {
            std::fs::hard_link(masters.join(format!("src-{}.wav", job % 8)), &link).expect("link");
        }
        text.push_str(&line(prefix, job, queue));
        text.push('\n');
        job += 1;
    }
    let path = dir.join(format!("{prefix}.jsonl"));
    std::fs::write(&path, text).expect("manifest");
    path
}

fn cli(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    let scheduler = cluster.scheduler_arg();
    let mut all = vec!["--scheduler", scheduler.as_str()];
    all.extend_from_slice(args);
    run(&kiln(), &all)
}

/// `kiln batch submit … -o json`: the new batch's id.
fn submit(cluster: &TestCluster, source: &Path, extra: &[&str]) -> u64 {
    let source = source.to_str().expect("utf-8 path");
    let mut args = vec!["-o", "json", "batch", "submit", source];
    args.extend_from_slice(extra);
    let out = cli(cluster, &args);
    assert!(out.status.success(), "batch submit failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    json["id"].as_u64().expect("batch id")
}

fn batch(cluster: &TestCluster, id: u64) -> Option<v1::Batch> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = kiln_proto::Client::new(cluster.addresses()).ok()?;
        client.deadline = Duration::from_secs(5);
        client.call(|mut s| async move { s.get_batch(v1::GetBatchRequest { id }).await }).await.ok()
    })
}

fn wait_state(cluster: &TestCluster, id: u64, what: &str, timeout: Duration, check: impl Fn(&v1::Batch) -> bool) {
    wait_for(what, timeout, || batch(cluster, id).is_some_and(|b| check(&b)));
}

/// `kiln batch wait ID`'s exit code.
fn wait_exit(cluster: &TestCluster, id: u64) -> i32 {
    let id = id.to_string();
    let out = cli(cluster, &["batch", "wait", &id, "--timeout", "120s"]);
    out.status.code().unwrap_or(-1)
}

#[test]
fn the_leader_killed_mid_batch_skips_no_line_and_admits_none_twice() {
    let settings =
        [FAST_FAILOVER, &[("snapshot_every", "50"), ("batches.window", "30"), ("batches.lines_per_admission", "10")]]
            .concat();
    let mut cluster = TestCluster::start(&kiln(), 3, &settings);
    let data = tempfile::tempdir().expect("tempdir");
    let source = manifest(data.path(), "kill", 600, "", &[]);
    let (masters, derivatives) = (data.path().join("masters"), data.path().join("derivatives"));
    cluster.start_worker("worker-a", 3, &masters, &derivatives);
    cluster.start_worker("worker-b", 3, &masters, &derivatives);
    let id = submit(&cluster, &source, &["--name", "catalog"]);

    wait_state(&cluster, id, "part of the batch admitted", Duration::from_secs(120), |b| b.admitted >= 60);
    let leader = leader(&cluster).expect("a leader");
    cluster.node(leader).kill9();
    let at_kill = batch(&cluster, id).map_or(0, |b| b.admitted);
    assert!(at_kill < 500, "the leader was killed mid-batch ({at_kill} of 600 admitted)");
    wait_state(&cluster, id, "admission resumed under a new leader", Duration::from_secs(60), |b| {
        b.admitted >= at_kill + 60
    });
    cluster.node(leader).start();
    assert_eq!(wait_exit(&cluster, id), 0, "every line rendered: {}", cluster.logs());

    let b = batch(&cluster, id).expect("batch");
    assert_eq!(b.state, "done");
    assert_eq!((b.admitted, b.succeeded, b.duplicates, b.bad_lines, b.live), (600, 600, 0, 0, 0), "{b:?}");
    assert_eq!(b.line, 600, "the cursor read every line once");
    for n in 0..600 {
        let manifest = derivatives.join(format!("kill-{n}.wav")).join("manifest.json");
        assert!(manifest.is_file(), "line {} has no outputs: {}", n + 1, manifest.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let report = rt.block_on(async {
        let client = kiln_proto::Client::new(cluster.addresses()).expect("client");
        kiln_proto::audit::audit(client, Some(&BTreeSet::new()), Duration::from_secs(30)).await.expect("audit")
    });
    assert!(report.clean(), "audit: {report:?}");
    assert_eq!(report.tasks_in_ledger, 0, "every finished batch task was folded into the counters");
}

fn leader(cluster: &TestCluster) -> Option<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    cluster.nodes.iter().find_map(|n| {
        let view = rt.block_on(kiln_proto::audit::view(&n.address, &kiln_proto::Credentials::plaintext()))?;
        (view.role == "leader").then_some(view.node_id)
    })
}

#[test]
fn pause_resume_cancel_and_bad_lines_under_each_policy() {
    let mut cluster = TestCluster::start(&kiln(), 1, &[("batches.window", "5")]);
    let data = tempfile::tempdir().expect("tempdir");
    let (masters, derivatives) = (data.path().join("masters"), data.path().join("derivatives"));

    // Pause: admission stops at what was admitted; resume runs the rest.
    let held = manifest(data.path(), "held", 20, "", &[]);
    let id = submit(&cluster, &held, &[]);
    let out = cli(&cluster, &["batch", "pause", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paused = batch(&cluster, id).expect("batch");
    assert_eq!(paused.state, "paused");
    cluster.start_worker("worker-a", 2, &masters, &derivatives);
    wait_state(&cluster, id, "the admitted tasks done", Duration::from_secs(60), |b| b.live == 0);
    std::thread::sleep(Duration::from_millis(500));
    let still = batch(&cluster, id).expect("batch");
    assert_eq!((still.state.as_str(), still.admitted), ("paused", paused.admitted), "nothing admitted while paused");
    assert!(still.admitted < 20);
    assert!(cli(&cluster, &["batch", "resume", &id.to_string()]).status.success());
    assert_eq!(wait_exit(&cluster, id), 0);
    assert_eq!(batch(&cluster, id).map(|b| b.succeeded), Some(20));

    // Cancel: a queue no worker serves, so the window fills and stays; cancel empties it.
    let stuck = manifest(data.path(), "stuck", 12, "nobody", &[]);
    let id = submit(&cluster, &stuck, &["--window", "4"]);
    wait_state(&cluster, id, "the window filled", Duration::from_secs(30), |b| b.live == 4);
    let out = cli(&cluster, &["-o", "json", "batch", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = batch(&cluster, id).expect("batch");
    assert_eq!((b.state.as_str(), b.cancelled, b.live, b.admitted), ("cancelled", 4, 0, 4));
    assert_eq!(wait_exit(&cluster, id), 2, "a cancelled batch exits 2");

    // A bad line, skipped: recorded with its number; the rest runs; exit code 1.
    let skipped = manifest(data.path(), "skip", 6, "", &[3]);
    let id = submit(&cluster, &skipped, &["--on-bad-line", "skip"]);
    assert_eq!(wait_exit(&cluster, id), 1, "a bad line makes `wait` exit 1");
    let b = batch(&cluster, id).expect("batch");
    assert_eq!((b.state.as_str(), b.succeeded, b.bad_lines), ("done", 6, 1));
    assert_eq!(b.first_bad_lines.first().map(|l| l.line), Some(3));

    // The same under `stop` (the default): the batch fails at line 3; the two lines before run.
    let stopped = manifest(data.path(), "stop", 6, "", &[3]);
    let id = submit(&cluster, &stopped, &[]);
    assert_eq!(wait_exit(&cluster, id), 2, "a batch stopped by a bad line exits 2");
    let b = batch(&cluster, id).expect("batch");
    assert_eq!((b.state.as_str(), b.admitted, b.succeeded), ("failed", 2, 2));
    assert!(b.error.starts_with("line 3:"), "{}", b.error);

    // `kiln batch list` and `kiln status` show them.
    let out = cli(&cluster, &["batch", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cancelled") && text.contains("failed") && text.contains("done"), "{text}");
}

/// Every request a receiver took: its head (request line and headers) and body.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP receiver that answers 500 to its first `failures` requests and 204 after, keeping
/// every request's headers and body.
fn receiver(failures: usize) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body) = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                raw.extend_from_slice(&buf[..n]);
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while raw.len() < end + 4 + length {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                break (head, raw[end + 4..].to_vec());
            };
            let mut seen = kept.lock().expect("lock");
            seen.push((head, body));
            let status = if seen.len() <= failures { "500 Internal Server Error" } else { "204 No Content" };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (url, seen)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_webhook_that_fails_twice_gets_exactly_one_delivery_per_event_signed() {
    let data = tempfile::tempdir().expect("tempdir");
    let secret = data.path().join("webhook.secret");
    std::fs::write(&secret, b"shared-secret").expect("secret");
    let secret_setting = format!("{:?}", secret.display().to_string());
    let mut cluster = TestCluster::start(&kiln(), 1, &[("batches.webhook_secret_file", secret_setting.as_str())]);
    let (masters, derivatives) = (data.path().join("masters"), data.path().join("derivatives"));
    let source = manifest(data.path(), "hook", 4, "", &[]);
    cluster.start_worker("worker-a", 2, &masters, &derivatives);
    let (url, seen) = receiver(2);
    let id = submit(&cluster, &source, &["--webhook", &url]);
    assert_eq!(wait_exit(&cluster, id), 0);
    // Retries come after 1 s and 2 s; the delivery is recorded once the third attempt succeeds.
    wait_state(&cluster, id, "the delivery recorded", Duration::from_secs(30), |b| b.notified == 1 && b.events == 1);
    std::thread::sleep(Duration::from_secs(3));
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "two failures, then one delivery, then nothing more");
    let delivery = format!("batch-{id}-event-1");
    for (head, body) in &seen {
        assert!(head.starts_with("POST /hook "), "{head}");
        assert_eq!(header(head, "x-kiln-delivery"), Some(delivery.as_str()), "one delivery id for every attempt");
        assert_eq!(header(head, "x-kiln-event"), Some("done"));
        let expected = kiln_scheduler::batches::webhook::signature(b"shared-secret", body);
        assert_eq!(header(head, "x-kiln-signature"), Some(expected.as_str()), "signed with the shared secret");
        let json: serde_json::Value = serde_json::from_slice(body).expect("json body");
        assert_eq!(json["batch"]["succeeded"], 4);
        assert_eq!(json["event"], "done");
    }
}
