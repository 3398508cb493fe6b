//! Power cuts, a full disk and a damaged data directory, on real `kiln scheduler` processes.
//!
//! A failpoint (`KILN_FAILPOINTS`, see docs/operations.md) aborts the process at one step of
//! taking a snapshot, installing one from the leader, or appending to the log: `abort()` runs no
//! destructor, so nothing is flushed that a `kill -9` or a power cut would not flush either. Each
//! test then restarts the node without failpoints and checks what an operator would: it starts (no
//! crash loop), it takes writes again, every task acknowledged before the cut is still there, and
//! `kiln audit` is clean.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_proto::v1;
use kiln_testkit::{free_port, run, wait_for, KilnProcess, TestCluster};

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// A snapshot every few entries, so a handful of submits reaches every snapshot step.
const SETTINGS: &[(&str, &str)] = &[("raft_tick", "\"50ms\""), ("election_ticks", "10"), ("snapshot_every", "6")];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn job(request_id: &str) -> v1::EncodeJob {
    v1::EncodeJob {
        request_id: request_id.to_owned(),
        release_id: 1,
        asset_id: 1,
        asset_guid: format!("{request_id}.wav"),
        derivative_assets: vec!["loudness".into()],
        ..Default::default()
    }
}

/// Submits one task; true once the cluster acknowledged it (committed and durable).
fn submit(rt: &tokio::runtime::Runtime, addresses: &[String], request_id: &str, patience: Duration) -> bool {
    let addresses = addresses.to_vec();
    let req = v1::SubmitRequest { jobs: vec![job(request_id)] };
    rt.block_on(async move {
        let Ok(mut client) = kiln_proto::Client::new(addresses) else { return false };
        client.deadline = patience;
        client
            .call(|mut s| {
                let req = req.clone();
                async move { s.submit(req).await }
            })
            .await
            .is_ok()
    })
}

fn serving(rt: &tokio::runtime::Runtime, addresses: &[String]) -> bool {
    let addresses = addresses.to_vec();
    rt.block_on(async move {
        let Ok(mut client) = kiln_proto::Client::new(addresses) else { return false };
        client.deadline = Duration::from_millis(500);
        client.call(|mut s| async move { s.status(v1::StatusRequest {}).await }).await.is_ok()
    })
}

/// Cancels every unfinished task (no worker runs in these tests), then runs `kiln audit` with
/// the acknowledged request ids as the ones that must be there.
fn cancel_all_and_audit(rt: &tokio::runtime::Runtime, addresses: &[String], acked: &BTreeSet<String>, dir: &Path) {
    let list = addresses.to_vec();
    rt.block_on(async move {
        let mut client = kiln_proto::Client::new(list).expect("client");
        client.deadline = Duration::from_secs(10);
        let tasks = client
            .call(
                |mut s| async move { s.list_tasks(v1::ListTasksRequest { limit: 10_000, ..Default::default() }).await },
            )
            .await
            .expect("list tasks")
            .tasks;
        for t in tasks.iter().filter(|t| t.state == v1::TaskState::Queued as i32) {
            let id = t.id;
            client
                .call(|mut s| async move { s.cancel(v1::CancelRequest { task_id: id }).await })
                .await
                .expect("cancel");
        }
    });
    let expect = dir.join("acknowledged.txt");
    std::fs::write(&expect, acked.iter().map(|id| format!("{id}\n")).collect::<String>()).expect("write ids");
    let out = run(
        &kiln(),
        &["--scheduler", &addresses.join(","), "audit", "--settle", "20s", "--expect", expect.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "audit after the restart is not clean:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One founding node, started and restarted with the same config and data.
struct OneNode {
    dir: tempfile::TempDir,
    args: Vec<String>,
    address: String,
    data_dir: PathBuf,
    process: Option<KilnProcess>,
    starts: u32,
    acked: BTreeSet<String>,
}

impl OneNode {
    fn new(data_dir: Option<PathBuf>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = data_dir.unwrap_or_else(|| dir.path().join("data"));
        let (grpc, http) = (free_port(), free_port());
        let mut toml = format!(
            "[scheduler]\nnode_id = 1\ndata_dir = {:?}\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n",
            data_dir.display().to_string()
        );
        for (k, v) in SETTINGS {
            toml.push_str(&format!("{k} = {v}\n"));
        }
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write config");
        let args = vec!["scheduler".to_owned(), "--config".to_owned(), config.display().to_string()];
        Self {
            dir,
            args,
            address: format!("http://127.0.0.1:{grpc}"),
            data_dir,
            process: None,
            starts: 0,
            acked: BTreeSet::new(),
        }
    }

    fn start(&mut self, failpoints: &str) {
        self.starts += 1;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let name = format!("start-{}", self.starts);
        let env = [("KILN_LOG", "info"), ("KILN_FAILPOINTS", failpoints)];
        self.process = Some(KilnProcess::start(&name, &kiln(), &args, &env, self.dir.path()));
    }

    fn process(&mut self) -> &mut KilnProcess {
        self.process.as_mut().expect("started")
    }

    fn log(&self) -> String {
        self.process.as_ref().map(KilnProcess::log_text).unwrap_or_default()
    }

    fn addresses(&self) -> Vec<String> {
        vec![self.address.clone()]
    }

    /// Waits until the node answers — and fails at once if it exits instead (a crash loop).
    fn wait_serving(&mut self, rt: &tokio::runtime::Runtime) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serving(rt, &self.addresses()) {
            assert!(self.process().is_running(), "the node exited at start:\n{}", self.log());
            assert!(Instant::now() < deadline, "the node does not serve:\n{}", self.log());
        }
    }

    /// Submits tasks one at a time until the process dies; returns how many were acknowledged.
    fn submit_until_dead(&mut self, rt: &tokio::runtime::Runtime, prefix: &str) -> usize {
        let before = self.acked.len();
        for i in 0..300 {
            let id = format!("{prefix}-{i}");
            if submit(rt, &self.addresses(), &id, Duration::from_millis(1500)) {
                self.acked.insert(id);
            } else if !self.process().is_running() {
                return self.acked.len() - before;
            }
        }
        panic!("{prefix}: the process never died:\n{}", self.log());
    }

    fn submit_all(&mut self, rt: &tokio::runtime::Runtime, prefix: &str, n: usize) {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            assert!(submit(rt, &self.addresses(), &id, Duration::from_secs(10)), "{id} refused:\n{}", self.log());
            self.acked.insert(id);
        }
    }
}

/// For each step: the process aborts there, restarts cleanly, keeps every acknowledged task, and
/// goes on taking writes and snapshots.
fn cut_power_at_each(steps: &[&str]) {
    let rt = runtime();
    for step in steps {
        let mut node = OneNode::new(None);
        node.start(step);
        node.wait_serving(&rt);
        let acked = node.submit_until_dead(&rt, "before");
        let log = node.log();
        let step_name = step.split(':').next().unwrap_or(step);
        assert!(log.contains(&format!("failpoint {step_name}: aborting")), "{step}: died elsewhere:\n{log}");
        assert!(acked > 0, "{step}: the cut came before any acknowledgement; the test proves nothing");
        node.start("");
        node.wait_serving(&rt);
        // Enough writes for two more snapshots: the recovered store compacts like any other.
        node.submit_all(&rt, &format!("after-{step_name}"), 14);
        cancel_all_and_audit(&rt, &node.addresses(), &node.acked, node.dir.path());
        assert!(node.process().is_running(), "{step}: the node died after restarting:\n{}", node.log());
    }
}

#[test]
fn a_power_cut_at_any_step_of_taking_a_snapshot_loses_nothing_acknowledged() {
    // The second snapshot: the first comes right after the election, before most submits.
    cut_power_at_each(&[
        "snapshot-before-write:abort@2",
        "snapshot-after-write:abort@2",
        "snapshot-after-fsync:abort@2",
        "snapshot-after-rename:abort@2",
        "snapshot-after-compaction:abort@2",
    ]);
}

#[test]
fn a_power_cut_at_any_step_of_appending_to_the_log_loses_nothing_acknowledged() {
    cut_power_at_each(&["append-before-write:abort@12", "append-after-write:abort@12", "append-after-sync:abort@12"]);
}

/// The id of a node that says it follows (not the leader), once there is a leader.
fn a_follower(rt: &tokio::runtime::Runtime, cluster: &TestCluster) -> u64 {
    let mut follower = None;
    wait_for("a leader and a follower", Duration::from_secs(30), || {
        let roles: Vec<(u64, String)> = cluster
            .nodes
            .iter()
            .filter_map(|n| {
                let address = n.address.clone();
                rt.block_on(async move {
                    let mut client = kiln_proto::Client::new([address]).ok()?;
                    client.deadline = Duration::from_millis(500);
                    client.call(|mut s| async move { s.cluster(v1::ClusterRequest {}).await }).await.ok()
                })
                .map(|v| (v.node_id, v.role))
            })
            .collect();
        follower = roles.iter().find(|(_, r)| r == "follower").map(|(id, _)| *id);
        roles.iter().any(|(_, r)| r == "leader") && follower.is_some()
    });
    follower.unwrap_or_default()
}

#[test]
fn a_power_cut_while_installing_a_snapshot_from_the_leader_loses_nothing() {
    let rt = runtime();
    let mut cluster = TestCluster::start(&kiln(), 3, SETTINGS);
    let mut acked = BTreeSet::new();
    let mut submit_n = |cluster: &TestCluster, prefix: &str, n: usize| {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            assert!(submit(&rt, &cluster.addresses(), &id, Duration::from_secs(20)), "{id}:\n{}", cluster.logs());
            acked.insert(id);
        }
    };
    submit_n(&cluster, "warmup", 3);
    // Nodes restarted by this test, by id (the cluster's own handle on them is dead).
    let mut restarted: std::collections::BTreeMap<u64, KilnProcess> = Default::default();
    for step in ["install-after-rename", "install-after-log-clear"] {
        let id = a_follower(&rt, &cluster);
        let node = cluster.node(id);
        let args: Vec<String> = node.args().to_vec();
        node.kill9();
        if let Some(mut p) = restarted.remove(&id) {
            p.kill9();
        }
        // The others go on and compact past everything the stopped node has: only a snapshot
        // can catch it up.
        submit_n(&cluster, &format!("while-{step}"), 14);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let fp = format!("{step}:abort");
        let env = [("KILN_LOG", "info"), ("KILN_FAILPOINTS", fp.as_str())];
        let mut cut = KilnProcess::start(&format!("node-{id}-{step}"), &kiln(), &argv, &env, cluster.dir.path());
        wait_for(&format!("node {id} to die installing the snapshot at {step}"), Duration::from_secs(30), || {
            !cut.is_running()
        });
        assert!(cut.log_text().contains(&format!("failpoint {step}: aborting")), "{}", cut.log_text());
        let mut again = KilnProcess::start(&format!("node-{id}-after-{step}"), &kiln(), &argv, &[], cluster.dir.path());
        let address = cluster.address(id);
        wait_for(&format!("node {id} to serve again"), Duration::from_secs(30), || {
            assert!(again.is_running(), "node {id} exited at start:\n{}", again.log_text());
            rt.block_on(async {
                let Ok(mut client) = kiln_proto::Client::new([address.clone()]) else { return false };
                client.deadline = Duration::from_millis(500);
                let view = client.call(|mut s| async move { s.cluster(v1::ClusterRequest {}).await }).await;
                view.is_ok_and(|v| v.leader_id != 0)
            })
        });
        restarted.insert(id, again);
        submit_n(&cluster, &format!("after-{step}"), 4);
    }
    cancel_all_and_audit(&rt, &cluster.addresses(), &acked, cluster.dir.path());
    for (id, p) in &mut restarted {
        assert!(p.is_running(), "node {id} died after restarting:\n{}", p.log_text());
    }
}

#[test]
fn a_full_disk_stops_the_node_with_a_clear_error_and_a_restart_after_freeing_space_loses_nothing() {
    let rt = runtime();
    let mut node = OneNode::new(None);
    // Injected ENOSPC on the 12th append, as a full disk would answer it.
    node.start("append-before-write:enospc@12");
    node.wait_serving(&rt);
    node.submit_until_dead(&rt, "before");
    let status = node.process().wait_exit(Duration::from_secs(10)).expect("exited");
    let log = node.log();
    let expected =
        format!("disk full at {}: free space and restart; nothing committed is lost", node.data_dir.display());
    assert!(log.contains(&expected), "no clear message:\n{log}");
    assert_eq!(status.code(), Some(74), "exit code (EX_IOERR):\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    // "Space is freed": the failpoint is off.
    node.start("");
    node.wait_serving(&rt);
    node.submit_all(&rt, "after", 8);
    cancel_all_and_audit(&rt, &node.addresses(), &node.acked, node.dir.path());
}

#[test]
fn a_damaged_data_directory_is_reported_with_its_path_and_what_to_do() {
    let rt = runtime();
    let mut node = OneNode::new(None);
    node.start("");
    node.wait_serving(&rt);
    node.submit_all(&rt, "t", 8);
    assert_eq!(node.process().terminate(Duration::from_secs(10)), Some(0), "{}", node.log());
    let snapshot = node.data_dir.join("raft-snapshot");
    let bytes = std::fs::read(&snapshot).expect("snapshot");
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).expect("truncate");
    node.start("");
    let status = node.process().wait_exit(Duration::from_secs(20)).expect("a damaged node must exit");
    let log = node.log();
    assert_eq!(status.code(), Some(65), "exit code (EX_DATAERR):\n{log}");
    assert!(log.contains(&snapshot.display().to_string()), "names the file:\n{log}");
    assert!(log.contains("restore it from a backup"), "says what to do:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None when mounting is not allowed here (not root, no tmpfs): the test is then skipped.
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        out.status.success().then(|| Self(at.to_owned()))
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("mount");
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_real_full_disk_stops_the_node_cleanly_and_growing_it_lets_it_restart() {
    let rt = runtime();
    let holder = tempfile::tempdir().expect("tempdir");
    let Some(disk) = Tmpfs::mount(&holder.path().join("disk"), "2m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); the injected-ENOSPC test covers the path");
        return;
    };
    let mut node = OneNode::new(Some(disk.0.join("data")));
    node.start("");
    node.wait_serving(&rt);
    // Batches of tasks with long names fill 2 MiB within a few dozen entries and snapshots.
    let mut died = false;
    for b in 0..400 {
        let ids: Vec<String> = (0..20).map(|i| format!("fill-{b}-{i}")).collect();
        let addresses = node.addresses();
        let jobs: Vec<v1::EncodeJob> = ids
            .iter()
            .map(|id| v1::EncodeJob { asset_guid: format!("{id}-{}.wav", "x".repeat(480)), ..job(id) })
            .collect();
        let ok = rt.block_on(async move {
            let mut client = kiln_proto::Client::new(addresses).expect("client");
            client.deadline = Duration::from_millis(1500);
            let req = v1::SubmitRequest { jobs };
            client
                .call(|mut s| {
                    let req = req.clone();
                    async move { s.submit(req).await }
                })
                .await
                .is_ok()
        });
        if ok {
            node.acked.extend(ids);
        } else if !node.process().is_running() {
            died = true;
            break;
        }
    }
    assert!(died, "2 MiB never filled up:\n{}", node.log());
    let status = node.process().wait_exit(Duration::from_secs(10)).expect("exited");
    let log = node.log();
    assert!(log.contains(&format!("disk full at {}", node.data_dir.display())), "no clear message:\n{log}");
    assert_eq!(status.code(), Some(74), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    disk.resize("256m");
    node.start("");
    node.wait_serving(&rt);
    node.submit_all(&rt, "after", 4);
    cancel_all_and_audit(&rt, &node.addresses(), &node.acked, node.dir.path());
}
