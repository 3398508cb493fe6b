//! End-to-end tests of the real `kiln` binary: processes, ports, files, signals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_testkit::{free_port, run, wait_for, write_sine_wav, KilnProcess};
use serde_json::Value;

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

fn kiln_json(scheduler: &str, args: &[&str]) -> Value {
    let mut full = vec!["--scheduler", scheduler, "--output", "json"];
    full.extend_from_slice(args);
    let out = run(&kiln(), &full);
    assert!(out.status.success(), "kiln {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln {args:?}: bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn status(scheduler: &str) -> Option<Value> {
    let out = run(&kiln(), &["--scheduler", scheduler, "--output", "json", "status"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn finished(s: &Value) -> u64 {
    let t = &s["total"];
    t["succeeded"].as_u64().unwrap_or(0)
        + t["dead_lettered"].as_u64().unwrap_or(0)
        + t["cancelled"].as_u64().unwrap_or(0)
}

struct Cluster {
    dir: tempfile::TempDir,
    grpc: String,
    scheduler: KilnProcess,
    workers: Vec<KilnProcess>,
}

fn scheduler_args(dir: &Path, grpc_port: u16, http_port: u16) -> Vec<String> {
    vec![
        "scheduler".into(),
        "--data-dir".into(),
        dir.join("ledger").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{grpc_port}"),
        "--http-listen".into(),
        format!("127.0.0.1:{http_port}"),
    ]
}

fn start_cluster(masters: &Path, derivatives: &Path, workers: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc_port, http_port) = (free_port(), free_port());
    let grpc = format!("http://127.0.0.1:{grpc_port}");
    let sargs = scheduler_args(dir.path(), grpc_port, http_port);
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    // Short leases so a killed worker's tasks come back within the test's patience.
    let env = [
        ("KILN_SCHEDULER__LEASE_TTL", "\"4s\""),
        ("KILN_SCHEDULER__HEARTBEAT_INTERVAL", "\"500ms\""),
        ("KILN_SCHEDULER__RETRY_BACKOFF_BASE", "\"200ms\""),
        ("KILN_SCHEDULER__SNAPSHOT_EVERY", "200"),
    ];
    let scheduler = KilnProcess::start("scheduler", &kiln(), &sargs, &env, dir.path());
    wait_for("the scheduler to answer", Duration::from_secs(30), || status(&grpc).is_some());
    let workers = (0..workers)
        .map(|i| {
            let id = format!("worker-{i}");
            let args = [
                "--scheduler",
                &grpc,
                "worker",
                "--id",
                &id,
                "--slots",
                "2",
                "--no-pin",
                "--masters",
                masters.to_str().expect("utf-8 path"),
                "--derivatives",
                derivatives.to_str().expect("utf-8 path"),
            ];
            KilnProcess::start(&id, &kiln(), &args, &[], dir.path())
        })
        .collect();
    Cluster { dir, grpc, scheduler, workers }
}

#[test]
fn kill9_of_worker_and_scheduler_loses_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let masters = data.path().join("masters");
    let derivatives = data.path().join("derivatives");
    std::fs::create_dir_all(&masters).expect("mkdir");
    // 40 real masters; 200 tasks name them through hard links so every task has its own GUID.
    let sources: Vec<PathBuf> = (0..40)
        .map(|i| {
            let p = masters.join(format!("src-{i}.wav"));
            write_sine_wav(&p, 22_050, 6.0, 220.0 + i as f32 * 7.0, 0.5).expect("write wav");
            p
        })
        .collect();
    let corrupt: Vec<usize> = vec![17, 58, 123, 190];
    let mut lines = String::new();
    for i in 0..200usize {
        let guid = format!("track-{i:03}.wav");
        if corrupt.contains(&i) {
            std::fs::write(masters.join(&guid), b"RIFF\x10\x00\x00\x00WAVEthis is not audio at all")
                .expect("write corrupt");
        } else {
            std::fs::hard_link(&sources[i % sources.len()], masters.join(&guid)).expect("link");
        }
        lines.push_str(&format!(
            "{{\"request_id\":\"req-{i}\",\"release_id\":{},\"asset_id\":{i},\"asset_guid\":\"{guid}\",\"derivative_assets\":[\"loudness\",\"waveform\"]}}\n",
            1000 + i / 50
        ));
    }
    let manifest = data.path().join("jobs.jsonl");
    std::fs::write(&manifest, lines).expect("manifest");

    let mut c = start_cluster(&masters, &derivatives, 2);

    // A GUID that would escape the storage prefix is refused at submit, with the reason.
    let out = run(&kiln(), &["--scheduler", &c.grpc, "submit", "--asset-guid", "../../etc", "--renderers", "loudness"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("asset_guid") && err.contains("escape"), "unclear refusal: {err}");

    let submitted = kiln_json(&c.grpc, &["submit", "--manifest", manifest.to_str().expect("utf-8")]);
    assert_eq!(submitted["created"], 200);

    // Kill a worker mid-run, then the scheduler, then bring both back.
    wait_for("some completions", Duration::from_secs(60), || status(&c.grpc).is_some_and(|s| finished(&s) >= 20));
    c.workers[0].kill9();
    wait_for("progress without worker-0", Duration::from_secs(60), || {
        status(&c.grpc).is_some_and(|s| finished(&s) >= 60)
    });
    c.scheduler.kill9();
    std::thread::sleep(Duration::from_millis(500));
    c.scheduler.restart();
    c.workers[0].restart();
    wait_for("all 200 tasks to finish", Duration::from_secs(180), || {
        status(&c.grpc).is_some_and(|s| finished(&s) == 200)
    });

    let s = status(&c.grpc).expect("status");
    assert_eq!(s["submitted_total"], 200);
    assert_eq!(s["total"]["succeeded"], 196, "status: {s}");
    assert_eq!(s["total"]["dead_lettered"], 4, "status: {s}");
    assert_eq!(s["live"]["queued"], 0);
    assert_eq!(s["live"]["leased"], 0);

    let listed = kiln_json(&c.grpc, &["tasks", "--limit", "1000"]);
    let tasks = listed["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 200);
    for t in tasks {
        let id = t["id"].as_u64().expect("id");
        let detail = kiln_json(&c.grpc, &["task", &id.to_string()]);
        let successes =
            detail["history"].as_array().expect("history").iter().filter(|h| h["kind"] == "succeeded").count();
        let guid = detail["asset_guid"].as_str().expect("guid").to_owned();
        let asset: usize = detail["asset_id"].as_u64().expect("asset id") as usize;
        if corrupt.contains(&asset) {
            assert_eq!(detail["state"], "dead_lettered", "{detail}");
            let reason = detail["last_error"].as_str().unwrap_or_default();
            assert!(reason.contains(&guid) || reason.to_lowercase().contains("decod"), "unreadable reason: {reason}");
            assert_eq!(successes, 0);
        } else {
            assert_eq!(detail["state"], "succeeded", "{detail}");
            assert_eq!(successes, 1, "task {id} succeeded {successes} times: {detail}");
            let manifest_json = derivatives.join(&guid).join("manifest.json");
            assert!(manifest_json.exists(), "missing {}", manifest_json.display());
            let outputs = detail["result"]["outputs"].as_array().expect("outputs");
            assert!(!outputs.is_empty());
        }
    }

    // The dead letters are inspectable and requeueable by filter.
    let dlq = kiln_json(&c.grpc, &["dlq", "list"]);
    assert_eq!(dlq.as_array().map(Vec::len), Some(4));

    for w in &mut c.workers {
        assert_eq!(w.terminate(Duration::from_secs(30)), Some(0), "worker did not drain cleanly:\n{}", w.log_text());
    }
    assert_eq!(c.scheduler.terminate(Duration::from_secs(30)), Some(0));
    drop(c.dir);
}

#[test]
fn run_renders_a_folder_and_refuses_empty_or_missing_ones() {
    let data = tempfile::tempdir().expect("tempdir");
    let masters = data.path().join("masters");
    std::fs::create_dir_all(masters.join("album")).expect("mkdir");
    write_sine_wav(&masters.join("one.wav"), 44_100, 3.0, 440.0, 0.5).expect("wav");
    write_sine_wav(&masters.join("album/two.wav"), 44_100, 3.0, 330.0, 0.25).expect("wav");
    std::fs::write(masters.join("broken.wav"), b"definitely not a wav").expect("broken");
    let out_dir = data.path().join("out");

    let out = run(
        &kiln(),
        &[
            "--output",
            "json",
            "run",
            masters.to_str().expect("utf-8"),
            "--out",
            out_dir.to_str().expect("utf-8"),
            "--renderers",
            "loudness,waveform",
        ],
    );
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(!out.status.success(), "a failed master must make the run exit non-zero");
    assert_eq!(report["succeeded"], 2, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    assert!(out_dir.join("one.wav/manifest.json").exists());
    assert!(out_dir.join("album/two.wav/manifest.json").exists());
    let one =
        report["tasks"].as_array().expect("tasks").iter().find(|t| t["file"] == "one.wav").expect("one.wav").clone();
    let lufs = one["metadata"]["loudness"]["integrated_lufs"].as_f64().expect("lufs");
    // A 0.5-peak sine is -6 dBFS peak, -9 dBFS RMS; a mono master is measured as dual mono
    // (played on both speakers, EBU Tech 3344), +3 dB: about -6.7 LUFS at 440 Hz.
    assert!((lufs - -6.7).abs() < 0.3, "lufs {lufs}");

    let empty = data.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = run(&kiln(), &["run", empty.to_str().expect("utf-8"), "--out", out_dir.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no masters found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = data.path().join("nope");
    let out = run(&kiln(), &["run", missing.to_str().expect("utf-8"), "--out", out_dir.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_manifest_line_admits_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let manifest = data.path().join("jobs.csv");
    std::fs::write(
        &manifest,
        "request_id,release_id,asset_id,asset_guid,derivative_assets\nok-1,1,1,a.wav,loudness\nbad-2,1,2,../x.wav,loudness\n",
    )
    .expect("write");
    let port = free_port();
    let out = run(
        &kiln(),
        &[
            "--scheduler",
            &format!("http://127.0.0.1:{port}"),
            "submit",
            "--manifest",
            manifest.to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jobs.csv:3:") && err.contains("nothing was submitted"), "{err}");
}

#[test]
fn demo_renders_known_answers_on_a_fresh_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let run_out = run(
        &kiln(),
        &["--output", "json", "demo", "--out", out.to_str().expect("utf-8"), "--seconds", "15", "--slots", "2"],
    );
    assert!(run_out.status.success(), "demo failed: {}", String::from_utf8_lossy(&run_out.stderr));
    let report: Value = serde_json::from_slice(&run_out.stdout).expect("json");
    let masters = report["masters"].as_array().expect("masters");
    assert_eq!(masters.len(), 5);
    for m in masters {
        assert_eq!(m["state"], "succeeded", "{m}");
        let (expected, detected) =
            (m["expected"]["bpm"].as_f64().expect("bpm"), m["detected"]["bpm"].as_f64().expect("detected bpm"));
        assert!((expected - detected).abs() <= 0.5, "{m}");
        assert!(m["detected"]["key"].as_str().is_some_and(|k| k.ends_with(" major") || k.ends_with(" minor")), "{m}");
        let folder = PathBuf::from(m["outputs"].as_str().expect("outputs"));
        for file in ["manifest.json", "waveform-256.json", "waveform-256.dat", "waveform.png", "aac128.m4a"] {
            assert!(folder.join(file).exists(), "{} missing", folder.join(file).display());
        }
    }
}

#[test]
fn analyze_writes_csv_with_file_bpm_key_first() {
    use kiln_render::synth::{track, Key, TrackSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("house.wav");
    let spec = TrackSpec { bpm: 124.0, key: Key::new(9, true), seconds: 20.0, seed: 11 };
    std::fs::write(&wav, track(&spec).to_wav()).expect("write");
    let garbage = dir.path().join("notes.wav");
    std::fs::write(&garbage, b"not audio").expect("write");

    let out = run(&kiln(), &["analyze", wav.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert!(lines.next().expect("header").starts_with("file,bpm,key,"), "{text}");
    let row: Vec<&str> = lines.next().expect("row").split(',').collect();
    assert!(row[0].ends_with("house.wav"));
    assert!((row[1].parse::<f64>().expect("bpm") - 124.0).abs() <= 0.1, "{text}");
    assert!(row[2].ends_with(" minor") || row[2].ends_with(" major"), "{text}");

    // A file that is not audio: the others are still reported, the exit status says one failed.
    let out =
        run(&kiln(), &["analyze", "--format", "json", wav.to_str().expect("utf-8"), garbage.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    assert!(rows[1]["error"].as_str().is_some_and(|e| e.contains("notes.wav") || e.contains("undecodable")), "{rows}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 files"));
}

#[test]
fn a_manifest_of_many_batches_is_admitted_concurrently_and_resubmitting_admits_nothing_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut scheduler, grpc) = start_scheduler(dir.path());
    // Six batches (5 × 2000 + 500), sent several at a time.
    let n = 10_500;
    let lines: String = (0..n)
        .map(|i| format!("{{\"request_id\":\"big-{i}\",\"release_id\":{},\"asset_id\":{i},\"asset_guid\":\"rel/{i}.wav\",\"derivative_assets\":[\"loudness\"]}}\n", i / 12))
        .collect();
    let manifest = dir.path().join("big.jsonl");
    std::fs::write(&manifest, lines).expect("manifest");
    let first = kiln_json(&grpc, &["submit", "--manifest", manifest.to_str().expect("utf-8")]);
    assert_eq!(
        (first["submitted"].as_u64(), first["created"].as_u64(), first["existing"].as_u64()),
        (Some(n), Some(n), Some(0)),
        "{first}"
    );
    assert_eq!((first["first_task_id"].as_u64(), first["last_task_id"].as_u64()), (Some(1), Some(n)), "{first}");
    let again = kiln_json(&grpc, &["submit", "--manifest", manifest.to_str().expect("utf-8")]);
    assert_eq!((again["created"].as_u64(), again["existing"].as_u64()), (Some(0), Some(n)), "{again}");
    let s = status(&grpc).expect("status");
    assert_eq!(s["submitted_total"].as_u64(), Some(n), "{s}");
    scheduler.terminate(Duration::from_secs(10));
}

/// A one-node scheduler with its data in `dir`, answering; returns it and its gRPC address.
fn start_scheduler(dir: &Path) -> (KilnProcess, String) {
    let (grpc_port, http_port) = (free_port(), free_port());
    let grpc = format!("http://127.0.0.1:{grpc_port}");
    let sargs = scheduler_args(dir, grpc_port, http_port);
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    let scheduler = KilnProcess::start("scheduler", &kiln(), &sargs, &[], dir);
    wait_for("the scheduler to answer", Duration::from_secs(30), || status(&grpc).is_some());
    (scheduler, grpc)
}

/// Serves `body` at `path` over plain HTTP/1.1 on loopback (404 elsewhere), like a bucket behind
/// an HTTP endpoint; returns the port.
fn serve_http(path: &'static str, body: String) -> u16 {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let found = request_line.split_whitespace().nth(1) == Some(path);
            let (status, content) = if found { ("200 OK", body.as_str()) } else { ("404 Not Found", "") };
            let _ = write!(
                &stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/csv\r\nConnection: close\r\n\r\n{content}",
                content.len()
            );
        }
    });
    port
}

#[test]
fn a_manifest_at_a_url_is_downloaded_validated_and_admitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut scheduler, grpc) = start_scheduler(dir.path());
    let mut csv = String::from("request_id,release_id,asset_id,asset_guid,derivative_assets\n");
    for i in 0..2500 {
        csv.push_str(&format!("url-{i},3,{i},rel-3/{i}.wav,loudness;waveform\n"));
    }
    csv.push_str("url-bad,3,9999,../escape.wav,loudness\n");
    let port = serve_http("/manifests/catalog.csv", csv);
    let url = format!("http://127.0.0.1:{port}/manifests/catalog.csv");

    // The bad line is reported with the URL and its line number, and nothing is admitted.
    let refused = run(&kiln(), &["--scheduler", &grpc, "submit", "--manifest", &url]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains(&format!("{url}:2502:")) && err.contains("nothing was submitted"), "{err}");
    assert_eq!(status(&grpc).expect("status")["submitted_total"].as_u64(), Some(0));

    let admitted = kiln_json(&grpc, &["submit", "--manifest", &url, "--skip-invalid"]);
    assert_eq!((admitted["created"].as_u64(), admitted["invalid"].as_u64()), (Some(2500), Some(1)), "{admitted}");
    let missing =
        run(&kiln(), &["--scheduler", &grpc, "submit", "--manifest", &format!("http://127.0.0.1:{port}/nope.jsonl")]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot download the manifest"), "{missing:?}");
    scheduler.terminate(Duration::from_secs(10));
}
