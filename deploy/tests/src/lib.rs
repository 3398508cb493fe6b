//! A harness for Kiln's compose cluster (`deploy/compose.yaml`) on a real Docker network: bring it
//! up under a project name of its own, run `kiln` commands on the cluster's network, cut
//! containers off the network, kill and restart them, and audit the result.
//!
//! The tests that use it are `#[ignore]`d, because they need a Docker engine and an image built by
//! `deploy/build-image.sh`; `deploy/tests/run.sh` (called by `.ci/run`) builds the image and runs
//! them. `KILN_IMAGE` names the image (default `kiln:test`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use kiln_testkit::wait_for;

/// One compose project: three schedulers, two workers, a bind-mounted store.
pub struct Cluster {
    project: String,
    compose_file: PathBuf,
    image: String,
    store: tempfile::TempDir,
    compose: Vec<String>,
    submitted: BTreeSet<String>,
    guids: Vec<String>,
}

/// Lease and heartbeat settings short enough for a test's patience.
const LEASE_TTL: &str = "6s";
const HEARTBEAT: &str = "1s";

fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `docker compose` (v2 plugin) where it exists, else the standalone `docker-compose`.
fn compose_command() -> Vec<String> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// Runs `docker …`, panicking with its output on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(out.status.success(), "docker {args:?} failed:\n{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Cluster {
    /// Starts the compose cluster as project `kiln-{name}` and waits for a leader.
    pub fn up(name: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let compose_file = root.join("deploy/compose.yaml");
        let store = tempfile::tempdir().expect("tempdir");
        for dir in ["masters", "derivatives", "manifests"] {
            std::fs::create_dir_all(store.path().join(dir)).expect("mkdir");
        }
        // The containers run as uid 10001; the store is the host's temporary directory.
        for dir in [store.path().to_owned(), store.path().join("derivatives"), store.path().join("manifests")] {
            chmod_777(&dir);
        }
        let image = std::env::var("KILN_IMAGE").unwrap_or_else(|_| "kiln:test".into());
        let c = Self {
            project: format!("kiln-{name}"),
            compose_file,
            image,
            store,
            compose: compose_command(),
            submitted: BTreeSet::new(),
            guids: Vec::new(),
        };
        c.compose_run(&["down", "-v", "--remove-orphans"]);
        let out = c.compose_run(&["up", "-d"]);
        assert!(out.status.success(), "compose up failed:\n{}", output_text(&out));
        c.wait_for_leader(&[], Duration::from_secs(60));
        c
    }

    fn compose_run(&self, args: &[&str]) -> Output {
        let (program, first) = self.compose.split_first().expect("compose command");
        Command::new(program)
            .args(first)
            .args(["-p", &self.project, "-f"])
            .arg(&self.compose_file)
            .args(args)
            .env("KILN_IMAGE", &self.image)
            .env("KILN_STORE", self.store.path())
            .env("KILN_LEASE_TTL", LEASE_TTL)
            .env("KILN_HEARTBEAT_INTERVAL", HEARTBEAT)
            .env("KILN_LOG", "info,kiln_scheduler::raft_logging=warn")
            .output()
            .expect("run compose")
    }

    pub fn network(&self) -> String {
        format!("{}_kiln", self.project)
    }

    /// The container id of a service (`scheduler-2`, `worker-1`).
    pub fn container(&self, service: &str) -> String {
        let out = self.compose_run(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}: {}", output_text(&out));
        id
    }

    /// `kiln ARGS` in a throwaway container on the cluster's network, the store mounted.
    pub fn kiln(&self, args: &[&str]) -> Output {
        let store = format!("{}:/store", self.store.path().display());
        // The certificates `tls-init` wrote; the admin's is presented.
        let tls = format!("{}_tls:/etc/kiln/tls:ro", self.project);
        let schedulers = "https://scheduler-1:7450,https://scheduler-2:7450,https://scheduler-3:7450";
        Command::new("docker")
            .args(["run", "--rm", "--network", &self.network(), "-v", &store, "-v", &tls])
            .args(["-e", "KILN_CA=/etc/kiln/tls/ca.pem", "-e", "KILN_CERT=/etc/kiln/tls/admin.pem"])
            .args(["-e", "KILN_KEY=/etc/kiln/tls/admin-key.pem", "-e"])
            .arg(format!("KILN_SCHEDULER={schedulers}"))
            .arg(&self.image)
            .args(args)
            .output()
            .expect("docker run kiln")
    }

    /// `kiln ARGS -o json`, parsed; `None` when the command failed.
    pub fn kiln_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kiln(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The service name of the node that says it leads, among those not in `cut_off`.
    pub fn leader(&self, cut_off: &[&str]) -> Option<String> {
        let view = self.kiln_json(&["cluster"])?;
        view["members"].as_array()?.iter().find_map(|m| {
            let service = format!("scheduler-{}", m["id"].as_u64()?);
            (m["role"].as_str() == Some("leader") && !cut_off.contains(&service.as_str())).then_some(service)
        })
    }

    pub fn wait_for_leader(&self, cut_off: &[&str], timeout: Duration) -> String {
        let mut leader = None;
        wait_for("a leader", timeout, || {
            leader = self.leader(cut_off);
            leader.is_some()
        });
        leader.unwrap_or_default()
    }

    /// Writes `n` masters (hard links of a few distinct ten-second tones) and submits one task for
    /// each through a manifest in the store.
    pub fn submit(&mut self, prefix: &str, n: usize) {
        let masters = self.store.path().join("masters");
        for k in 0..8 {
            let p = masters.join(format!("tone-{k}.wav"));
            if !p.exists() {
                kiln_testkit::write_sine_wav(&p, 22_050, 10.0, 220.0 + 55.0 * k as f32, 0.5).expect("write wav");
            }
        }
        let mut manifest = String::new();
        for i in 0..n {
            let guid = format!("{prefix}-{i}.wav");
            let link = masters.join(&guid);
            if !link.exists() {
                std::fs::hard_link(masters.join(format!("tone-{}.wav", i % 8)), &link).expect("link");
            }
            let request_id = format!("{prefix}-{i}");
            manifest.push_str(
                &serde_json::json!({
                    "request_id": request_id, "release_id": 1, "asset_id": i, "asset_guid": guid,
                    "derivative_assets": ["loudness", "waveform", "aac128"],
                })
                .to_string(),
            );
            manifest.push('\n');
            self.submitted.insert(request_id);
            self.guids.push(guid);
        }
        let path = self.store.path().join("manifests").join(format!("{prefix}.jsonl"));
        std::fs::write(&path, manifest).expect("write manifest");
        let inside = format!("/store/manifests/{prefix}.jsonl");
        let out = self.kiln(&["submit", "--manifest", &inside]);
        assert!(out.status.success(), "submit failed:\n{}\n{}", output_text(&out), self.logs());
    }

    /// Finished tasks (terminal states) according to `kiln status`, if a scheduler answered.
    pub fn finished(&self) -> Option<u64> {
        let s = self.kiln_json(&["status"])?;
        let t = &s["total"];
        Some(["succeeded", "dead_lettered", "cancelled"].iter().filter_map(|k| t[*k].as_u64()).sum())
    }

    pub fn wait_finished(&self, at_least: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.finished().is_some_and(|f| f >= at_least) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("fewer than {at_least} tasks finished within {timeout:?}: {:?}\n{}", self.finished(), self.logs());
    }

    pub fn submitted(&self) -> usize {
        self.submitted.len()
    }

    /// Waits for every task, then checks with `kiln audit` that each submitted task is in the
    /// ledger exactly once, succeeded exactly once, that all three schedulers hold identical
    /// ledgers, and that every task's outputs and `manifest.json` are in the store.
    pub fn audit(&self) {
        self.wait_finished(self.submitted.len() as u64, Duration::from_secs(300));
        let expect: String = self.submitted.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(self.store.path().join("manifests/expect.txt"), expect).expect("write expect");
        let out = self.kiln(&["audit", "--expect", "/store/manifests/expect.txt", "--settle", "60s", "-o", "json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success() && report["clean"] == true,
            "audit not clean:\n{}\n{}",
            output_text(&out),
            self.logs()
        );
        assert_eq!(report["succeeded"].as_u64(), Some(self.submitted.len() as u64), "{report}");
        assert_eq!(report["members"].as_array().map(Vec::len), Some(3), "{report}");
        let derivatives = self.store.path().join("derivatives");
        for guid in &self.guids {
            let dir = derivatives.join(guid);
            for file in ["manifest.json", "waveform-256.json", "waveform.png", "aac128.m4a"] {
                assert!(dir.join(file).is_file(), "missing {}", dir.join(file).display());
            }
        }
    }

    pub fn disconnect(&self, service: &str) {
        docker(&["network", "disconnect", &self.network(), &self.container(service)]);
    }

    pub fn connect(&self, service: &str) {
        // The alias keeps the service name resolvable by the others after reconnecting.
        docker(&["network", "connect", "--alias", service, &self.network(), &self.container(service)]);
    }

    pub fn kill(&self, service: &str) {
        docker(&["kill", &self.container(service)]);
    }

    pub fn start(&self, service: &str) {
        docker(&["start", &self.container(service)]);
    }

    /// `docker restart` (SIGTERM, then SIGKILL after `grace`).
    pub fn restart(&self, service: &str, grace: Duration) {
        docker(&["restart", "-t", &grace.as_secs().to_string(), &self.container(service)]);
    }

    pub fn service_logs(&self, service: &str) -> String {
        let out = self.compose_run(&["logs", "--no-color", "-t", service]);
        output_text(&out)
    }

    /// The last lines of every service's log, for failure messages.
    pub fn logs(&self) -> String {
        let out = self.compose_run(&["logs", "--no-color", "--tail", "40"]);
        output_text(&out)
    }

    pub fn store(&self) -> &Path {
        self.store.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.compose_run(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

fn chmod_777(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}
