//! What an operator does to a running cluster from the shell, against real processes: drain a
//! worker before taking its machine down, and watch listings refresh.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_testkit::{run, wait_for_or_explain, TestCluster};

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

const SETTINGS: &[(&str, &str)] = &[("raft_tick", "\"50ms\""), ("heartbeat_interval", "\"500ms\"")];

fn workers_json(scheduler: &str) -> serde_json::Value {
    let out = run(&kiln(), &["--scheduler", scheduler, "-o", "json", "workers"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("workers as JSON")
}

/// Runs `kiln ARGS` until its output holds `count` copies of `needle` (at most 20 s), then stops
/// it: `--watch` never ends on its own.
fn watch_until(scheduler: &str, args: &[&str], needle: &str, count: usize) {
    let mut child = Command::new(kiln())
        .args(["--scheduler", scheduler])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln");
    let mut stdout = child.stdout.take().expect("stdout");
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let text = || seen.lock().expect("lock").clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while text().matches(needle).count() < count && Instant::now() < deadline {
        assert!(child.try_wait().ok().flatten().is_none(), "--watch exited on its own:\n{}", text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text().matches(needle).count() >= count, "wanted {count}× {needle:?} in:\n{}", text());
}

#[test]
fn a_drained_worker_takes_nothing_new_and_listings_can_be_watched() {
    let data = tempfile::tempdir().expect("tempdir");
    let (masters, derivatives) = (data.path().join("masters"), data.path().join("derivatives"));
    std::fs::create_dir_all(&masters).expect("mkdir");
    let mut cluster = TestCluster::start(&kiln(), 1, SETTINGS);
    cluster.start_worker("worker-a", 2, &masters, &derivatives);
    let scheduler = cluster.scheduler_arg();
    wait_for_or_explain(
        "worker-a connected",
        Duration::from_secs(30),
        || workers_json(&scheduler).as_array().is_some_and(|w| w.iter().any(|w| w["id"] == "worker-a")),
        || cluster.logs(),
    );

    let out = run(&kiln(), &["--scheduler", &scheduler, "drain", "worker-a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("worker worker-a is draining"));
    let workers = workers_json(&scheduler);
    let a = workers.as_array().and_then(|w| w.iter().find(|w| w["id"] == "worker-a")).expect("worker-a listed");
    assert_eq!(a["draining"], true, "{workers}");

    // A master in a queue only worker-a serves stays queued while it drains.
    kiln_testkit::write_sine_wav(&masters.join("held.wav"), 44_100, 1.0, 440.0, 0.5).expect("write a master");
    let submit = ["submit", "--asset-guid", "held.wav", "--renderers", "loudness", "--release-id", "9"];
    let out = run(&kiln(), &[&["--scheduler", scheduler.as_str()][..], &submit].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    let out = run(&kiln(), &["--scheduler", &scheduler, "-o", "json", "tasks", "--release", "9"]);
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tasks as JSON");
    assert_eq!(tasks["tasks"][0]["state"], "queued", "a draining worker was leased a task: {tasks}");

    let nobody = run(&kiln(), &["--scheduler", &scheduler, "drain", "nobody"]);
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no worker nobody"), "{nobody:?}");

    // `--watch` prints the listing again and again until stopped.
    watch_until(&scheduler, &["dlq", "list", "--watch", "--interval", "300ms"], "no dead letters", 2);
    watch_until(&scheduler, &["-o", "json", "cluster", "--watch", "--interval", "300ms"], "\"leader_id\"", 2);
}
