//! A rolling upgrade rehearsed with one binary: three `kiln scheduler` processes start as the older
//! release (`emulate_format = 1`) and are upgraded one at a time by restarting them without the
//! emulation. The new feature (`fenced_sessions`) stays off and cannot be enabled while any member
//! lacks it; a node rolled back before enabling rejoins a healthy cluster; once every member is
//! upgraded the feature is enabled, worker sessions go through the new commands, and every replica
//! reports the same applied index and ledger digest. Last, a node rolled back *after* enabling
//! refuses to start instead of diverging.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_proto::v1;
use kiln_testkit::{run, wait_for, wait_for_or_explain, TestCluster};

const FEATURE: &str = "fenced_sessions";

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// Short elections so restarts settle fast; a small `snapshot_every` so snapshots follow the log
/// closely; every node starts as the older release.
const SETTINGS: &[(&str, &str)] = &[
    ("raft_tick", "\"50ms\""),
    ("election_ticks", "10"),
    ("lease_ttl", "\"4s\""),
    ("heartbeat_interval", "\"500ms\""),
    ("snapshot_every", "20"),
    ("emulate_format", "1"),
];

/// Rewrites a node's TOML so its next start emulates `format` (or runs this release: `None`).
fn set_emulation(config: &Path, format: Option<u32>) {
    let text = std::fs::read_to_string(config).expect("read node config");
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with("emulate_format")) {
        out.push_str(line);
        out.push('\n');
        if line == "[scheduler]" {
            if let Some(format) = format {
                out.push_str(&format!("emulate_format = {format}\n"));
            }
        }
    }
    std::fs::write(config, out).expect("write node config");
}

struct Harness {
    rt: tokio::runtime::Runtime,
    cluster: TestCluster,
    data: tempfile::TempDir,
    parked: u32,
}

impl Harness {
    fn client(&self) -> kiln_proto::Client {
        let mut client = kiln_proto::Client::new(self.cluster.addresses()).expect("addresses");
        client.deadline = Duration::from_secs(10);
        client
    }

    fn support(&self, id: u64) -> Option<v1::NodeSupport> {
        let address = self.cluster.address(id);
        self.rt.block_on(async {
            let mut client = kiln_proto::Client::new([address]).ok()?;
            client.deadline = Duration::from_secs(1);
            client.call(|mut s| async move { s.support(v1::SupportRequest {}).await }).await.ok()
        })
    }

    fn features(&self) -> v1::Feature {
        let mut client = self.client();
        let list = self
            .rt
            .block_on(client.call(|mut s| async move { s.list_features(v1::ListFeaturesRequest {}).await }))
            .expect("list features");
        list.features.into_iter().find(|f| f.name == FEATURE).expect("the feature is listed")
    }

    fn enable(&self) -> Result<v1::Feature, kiln_proto::ClientError> {
        let mut client = self.client();
        self.rt.block_on(
            client
                .call(|mut s| async move { s.enable_feature(v1::EnableFeatureRequest { name: FEATURE.into() }).await }),
        )
    }

    /// Enabling is refused with FAILED_PRECONDITION naming exactly the members in `lacking`.
    fn assert_enable_refused(&self, lacking: &[u64]) {
        let err = self.enable().expect_err("enabling must be refused");
        assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
        let message = err.to_string();
        for id in 1..=3 {
            assert_eq!(message.contains(&format!("node {id} ")), lacking.contains(&id), "node {id} in: {message}");
        }
        let feature = self.features();
        assert!(!feature.enabled);
        assert_eq!(feature.lacking.len(), lacking.len(), "{:?}", feature.lacking);
    }

    fn worker(&self, id: &str) -> Option<v1::WorkerInfo> {
        let mut client = self.client();
        let workers = self
            .rt
            .block_on(client.call(|mut s| async move { s.list_workers(v1::ListWorkersRequest {}).await }))
            .ok()?;
        workers.workers.into_iter().find(|w| w.id == id)
    }

    /// Tasks in a queue no worker serves: log entries that stay put, so the ledger keeps changing
    /// (and snapshots are taken) without waiting for renders.
    fn submit_parked(&mut self, n: u32) {
        for _ in 0..n {
            self.parked += 1;
            let job = v1::EncodeJob {
                request_id: format!("00000000-0000-4000-8000-{:012}", self.parked),
                release_id: 1,
                asset_id: i64::from(self.parked),
                asset_guid: format!("parked/{}.wav", self.parked),
                derivative_assets: vec!["loudness".into()],
                queue: "parked".into(),
                priority: 0,
                max_attempts: 1,
            };
            let mut client = self.client();
            self.rt
                .block_on(client.call(|mut s| {
                    let job = job.clone();
                    async move { s.submit(v1::SubmitRequest { jobs: vec![job] }).await }
                }))
                .expect("submit");
        }
    }

    /// Every member answers with the same applied index and ledger digest.
    fn replicas_agree(&self) -> Vec<v1::ClusterResponse> {
        let report = self
            .rt
            .block_on(kiln_proto::audit::audit(
                kiln_proto::Client::new(self.cluster.addresses()).expect("addresses"),
                None,
                Duration::from_secs(20),
            ))
            .expect("audit");
        assert!(report.replicas_agree, "replicas disagree: {:#?}\n{}", report.members, self.cluster.logs());
        report.members.into_iter().filter_map(|m| m.own).collect()
    }

    /// Restarts node `id` (SIGTERM, then the same data) emulating `format`, or as this release,
    /// and waits until it reports that support and the cluster agrees again.
    fn restart(&mut self, id: u64, format: Option<u32>) {
        let node = self.cluster.node(id);
        set_emulation(&node.config, format);
        node.process.terminate(Duration::from_secs(20));
        node.start();
        wait_for_or_explain(
            &format!("node {id} back with format {format:?}"),
            Duration::from_secs(30),
            || self.support(id).is_some_and(|s| s.emulated_format == format.unwrap_or(0)),
            || self.cluster.logs(),
        );
        self.replicas_agree();
    }
}

#[test]
fn a_rolling_upgrade_enables_the_new_command_only_once_every_member_supports_it() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let data = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(&kiln(), 3, SETTINGS);
    let mut h = Harness { rt, cluster, data, parked: 0 };
    wait_for("every node answering", Duration::from_secs(30), || (1..=3).all(|id| h.support(id).is_some()));
    let (masters, derivatives) = (h.data.path().join("masters"), h.data.path().join("derivatives"));
    std::fs::create_dir_all(&masters).expect("mkdir");
    h.cluster.start_worker("worker-a", 1, &masters, &derivatives);
    wait_for("worker-a registered", Duration::from_secs(30), || h.worker("worker-a").is_some_and(|w| w.connected));
    assert_eq!(h.worker("worker-a").map(|w| w.session), Some(0), "the old release registers unfenced");

    // The older release: nobody supports the feature, so it cannot be enabled.
    let old = h.support(1).expect("node 1");
    assert_eq!((old.max_format, old.emulated_format), (1, 1));
    assert!(old.features.is_empty(), "{old:?}");
    h.assert_enable_refused(&[1, 2, 3]);

    // `kiln cluster` shows every member's release and formats, and no enabled flag.
    let scheduler = h.cluster.scheduler_arg();
    let out = run(&kiln(), &["--scheduler", &scheduler, "--output", "json", "cluster"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["enabled_features"], serde_json::json!([]));
    let members = json["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["formats"] == serde_json::json!([1, 1]) && m["emulated_format"] == 1), "{json}");

    // One node upgraded: the others still lack it.
    h.restart(3, None);
    let new = h.support(3).expect("node 3");
    assert_eq!((new.max_format, new.emulated_format), (kiln_ledger::features::FORMAT, 0));
    assert!(new.features.iter().any(|f| f == FEATURE));
    h.assert_enable_refused(&[1, 2]);

    // Rollback before enabling: node 3 goes back to the older release and rejoins a healthy cluster.
    h.restart(3, Some(1));
    h.submit_parked(25);
    h.replicas_agree();
    h.assert_enable_refused(&[1, 2, 3]);

    // A member that is down counts as lacking the feature.
    h.restart(3, None);
    h.restart(2, None);
    h.cluster.node(1).process.terminate(Duration::from_secs(20));
    wait_for("a leader among nodes 2 and 3", Duration::from_secs(30), || h.features().supported_by == [2, 3]);
    let err = h.enable().expect_err("node 1 is down");
    assert!(err.to_string().contains("node 1 ") && err.to_string().contains("did not answer"), "{err}");

    // The last member upgraded: now it can be enabled, through the CLI.
    set_emulation(&h.cluster.node(1).config, None);
    h.cluster.node(1).start();
    wait_for("node 1 back", Duration::from_secs(30), || h.support(1).is_some_and(|s| s.emulated_format == 0));
    h.replicas_agree();
    assert!(h.features().lacking.is_empty());
    let out = run(&kiln(), &["--scheduler", &scheduler, "cluster", "enable-feature", FEATURE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(h.features().enabled);
    assert!(h.enable().expect("enabling again is a no-op").enabled);
    let enabled_at = h.replicas_agree().iter().map(|v| v.applied_index).max().unwrap_or_default();

    // Traffic goes through the new commands: a reconnecting worker opens a fenced session, and its
    // close (quoting that session) disconnects it.
    h.cluster.workers[0].terminate(Duration::from_secs(20));
    wait_for("worker-a disconnected", Duration::from_secs(30), || h.worker("worker-a").is_some_and(|w| !w.connected));
    h.cluster.workers[0].restart();
    wait_for("worker-a in a fenced session", Duration::from_secs(30), || {
        h.worker("worker-a").is_some_and(|w| w.connected && w.session != 0)
    });
    h.cluster.workers[0].terminate(Duration::from_secs(20));
    wait_for("worker-a closed its fenced session", Duration::from_secs(30), || {
        h.worker("worker-a").is_some_and(|w| !w.connected)
    });
    h.submit_parked(25);
    let views = h.replicas_agree();
    assert!(views.iter().all(|v| v.support.as_ref().is_some_and(|s| s.enabled_features == [FEATURE])), "{views:?}");

    // Rolling back past an enabled feature is refused: node 3, once its snapshot holds the flag,
    // will not start as the older release, and starts again as this one.
    wait_for("node 3's snapshot past the flag", Duration::from_secs(30), || {
        h.submit_parked(5);
        h.replicas_agree().iter().all(|v| v.snapshot_index >= enabled_at)
    });
    let node = h.cluster.node(3);
    set_emulation(&node.config, Some(1));
    node.process.terminate(Duration::from_secs(20));
    node.start();
    wait_for("node 3 to refuse to start", Duration::from_secs(30), || !h.cluster.node(3).process.is_running());
    let log = h.cluster.node(3).process.log_text();
    assert!(log.contains(FEATURE) && log.contains("does not support"), "{log}");
    h.restart(3, None);
    assert!(h.features().enabled);
}
