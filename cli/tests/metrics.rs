//! `/metrics` as Prometheus sees it on a real deployment: three `kiln scheduler` processes and a
//! `kiln worker`, scraped after real work (successes and a dead letter). Every series the shipped
//! Grafana dashboard and alert rules query must be served, and no query may need to add up a
//! series across scheduler replicas: ledger series must agree on every replica, session series
//! must be zero on followers, and no dashboard or alert expression may `sum` a ledger series.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_proto::v1;
use kiln_testkit::{free_port, wait_for, write_sine_wav, KilnProcess, TestCluster, FAST_FAILOVER};

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// Series computed from the replicated ledger: the same on every replica.
const LEDGER: &[&str] = &[
    "kiln_scheduler_tasks",
    "kiln_scheduler_tasks_finished_total",
    "kiln_scheduler_tasks_submitted_total",
    "kiln_scheduler_task_attempts_failed_total",
    "kiln_scheduler_steals_total",
    "kiln_scheduler_queue_tasks",
    "kiln_scheduler_workers_connected",
    "kiln_scheduler_workers_draining",
    "kiln_scheduler_fleet_slots",
];

/// Series from the worker sessions, which only the leader serves: zero on followers.
const SESSION: &[&str] = &[
    "kiln_scheduler_fleet_busy_slots",
    "kiln_scheduler_fleet_prefetched_tasks",
    "kiln_scheduler_lease_wait_seconds",
    "kiln_scheduler_render_seconds",
    "kiln_scheduler_fetch_seconds",
    "kiln_scheduler_upload_seconds",
    "kiln_scheduler_uploaded_bytes_total",
];

/// Series about one replica, read per instance.
const NODE: &[&str] =
    &["kiln_scheduler_is_leader", "kiln_scheduler_node_id", "kiln_scheduler_raft_", "kiln_build_info", "process_"];

/// `name{labels}` → value, for every sample of an exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn name_of(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// Whether sample `name` belongs to family `family` (`_bucket`, `_sum`, `_count` of histograms).
fn in_family(name: &str, family: &str) -> bool {
    if family.ends_with('_') {
        return name.starts_with(family);
    }
    name == family || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(family))
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "GET {addr}{path}: {response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Every `kiln_…` and `process_…` name an expression mentions.
fn series_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (rest.starts_with("kiln_") || rest.starts_with("process_")) {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            i += end;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

/// The PromQL of the dashboard's panels and variables, and of the alert rules.
fn shipped_queries() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/kiln-fleet.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
            }
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "panel {:?} has no description",
            panel["title"]
        );
    }
    for var in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = var["definition"].as_str() {
            queries.push((format!("variable {:?}", var["name"]), q.to_owned()));
        }
    }
    let alerts = std::fs::read_to_string(root.join("deploy/k8s/alerts.yaml")).expect("alerts");
    for line in alerts.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            queries.push(("alert rule".to_owned(), expr.trim().to_owned()));
        }
    }
    queries
}

fn status(addresses: Vec<String>) -> Option<v1::StatusResponse> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = kiln_proto::Client::new(addresses).ok()?;
        client.deadline = Duration::from_secs(3);
        client.call(|mut s| async move { s.status(v1::StatusRequest {}).await }).await.ok()
    })
}

fn submit(addresses: Vec<String>, guids: &[&str]) {
    let jobs: Vec<v1::EncodeJob> = guids
        .iter()
        .enumerate()
        .map(|(i, guid)| v1::EncodeJob {
            request_id: format!("metrics-{i}"),
            release_id: 3,
            asset_id: i as i64,
            asset_guid: (*guid).to_owned(),
            derivative_assets: vec!["loudness".into()],
            ..Default::default()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let response = rt.block_on(async move {
        let mut client = kiln_proto::Client::new(addresses).expect("client");
        client.deadline = Duration::from_secs(30);
        let req = v1::SubmitRequest { jobs };
        client
            .call(|mut s| {
                let req = req.clone();
                async move { s.submit(req).await }
            })
            .await
    });
    assert!(response.is_ok(), "submit: {response:?}");
}

#[test]
fn a_three_node_cluster_serves_every_dashboard_and_alert_series_and_none_needs_summing() {
    let data = tempfile::tempdir().expect("tempdir");
    let masters = data.path().join("masters");
    std::fs::create_dir_all(&masters).expect("mkdir");
    for i in 0..4 {
        write_sine_wav(&masters.join(format!("ok-{i}.wav")), 8_000, 0.5, 220.0 + 20.0 * i as f32, 0.5).expect("wav");
    }
    std::fs::write(masters.join("bad.wav"), b"not audio").expect("write");

    let cluster = TestCluster::start(&kiln(), 3, FAST_FAILOVER);
    let addresses = cluster.addresses();
    wait_for("a leader", Duration::from_secs(30), || status(addresses.clone()).is_some());
    // Submitted before the worker starts, so the queue series are observed while tasks wait
    // (a queue with no live task has no series).
    submit(addresses.clone(), &["ok-0.wav", "ok-1.wav", "ok-2.wav", "ok-3.wav", "bad.wav"]);
    let waiting: BTreeMap<String, f64> =
        cluster.nodes.iter().flat_map(|n| samples(&get(&n.http, "/metrics"))).collect();
    assert!(waiting.keys().any(|k| k.starts_with("kiln_scheduler_queue_tasks{")), "{waiting:?}");
    let worker_http = format!("127.0.0.1:{}", free_port());
    let scheduler = cluster.scheduler_arg();
    let derivatives = data.path().join("derivatives");
    let args = [
        "--scheduler",
        &scheduler,
        "worker",
        "--id",
        "w-metrics",
        "--slots",
        "2",
        "--no-pin",
        "--masters",
        masters.to_str().expect("utf-8"),
        "--derivatives",
        derivatives.to_str().expect("utf-8"),
    ];
    let worker = KilnProcess::start(
        "w-metrics",
        &kiln(),
        &args,
        &[("KILN_WORKER__HTTP_LISTEN", worker_http.as_str())],
        data.path(),
    );

    wait_for("every task finished", Duration::from_secs(90), || {
        status(addresses.clone()).and_then(|s| s.total).is_some_and(|t| t.succeeded + t.dead_lettered == 5)
    });

    // Followers apply what the leader committed a moment later: wait until the ledger series agree.
    let scrape_all = |cluster: &TestCluster| -> Vec<BTreeMap<String, f64>> {
        cluster.nodes.iter().map(|n| samples(&get(&n.http, "/metrics"))).collect()
    };
    let ledger_of = |s: &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        s.iter()
            .filter(|(k, _)| LEDGER.iter().any(|f| in_family(name_of(k), f)))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let nodes = scrape_all(&cluster);
        if nodes.iter().all(|n| ledger_of(n) == ledger_of(&nodes[0])) || Instant::now() > deadline {
            break nodes;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let worker_text = get(&worker_http, "/metrics");
    let worker_samples = samples(&worker_text);

    // Ledger series: identical on every replica, so max (or the leader's) is the answer.
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(ledger_of(node), ledger_of(&nodes[0]), "node {} disagrees with node 1 on ledger series", i + 1);
    }
    let first = &nodes[0];
    assert_eq!(first.get("kiln_scheduler_tasks_finished_total{state=\"succeeded\"}"), Some(&4.0), "{first:?}");
    assert_eq!(first.get("kiln_scheduler_tasks_finished_total{state=\"dead_lettered\"}"), Some(&1.0));
    assert_eq!(first.get("kiln_scheduler_workers_connected"), Some(&1.0));
    assert_eq!(first.get("kiln_scheduler_fleet_slots"), Some(&2.0));

    // Exactly one leader; session series are zero on the followers.
    let leaders: Vec<usize> =
        (0..nodes.len()).filter(|i| nodes[*i].get("kiln_scheduler_is_leader") == Some(&1.0)).collect();
    assert_eq!(
        leaders.len(),
        1,
        "one leader among {:?}",
        nodes.iter().map(|n| n.get("kiln_scheduler_is_leader")).collect::<Vec<_>>()
    );
    let leader = &nodes[leaders[0]];
    assert_eq!(leader.get("kiln_scheduler_render_seconds_count{renderer=\"loudness\"}"), Some(&4.0));
    assert!(leader.get("kiln_scheduler_raft_proposal_duration_seconds_count").is_some_and(|n| *n > 0.0));
    assert!(leader.get("kiln_scheduler_raft_fsync_duration_seconds_count").is_some_and(|n| *n > 0.0));
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != leaders[0]) {
        for (series, value) in node.iter().filter(|(k, _)| SESSION.iter().any(|f| in_family(name_of(k), f))) {
            assert_eq!(*value, 0.0, "follower node {} reports session series {series}", i + 1);
        }
        assert!(node.get("kiln_scheduler_raft_leader_changes_total").is_some_and(|n| *n >= 1.0));
    }

    // Every scheduler series is classified, so each has a known way to aggregate.
    for series in leader.keys() {
        let name = name_of(series);
        assert!(
            [LEDGER, SESSION, NODE].concat().iter().any(|f| in_family(name, f)),
            "series {name} is neither ledger, session nor node: say how it aggregates"
        );
    }
    // Schedulers and workers never share a name, except the per-process ones.
    let scheduler_names: BTreeSet<&str> = leader.keys().map(|k| name_of(k)).collect();
    for name in worker_samples.keys().map(|k| name_of(k)) {
        assert!(
            !scheduler_names.contains(name) || name == "kiln_build_info" || name.starts_with("process_"),
            "{name} is exported by both schedulers and workers"
        );
        assert!(
            name.starts_with("kiln_worker_") || name == "kiln_build_info" || name.starts_with("process_"),
            "{name}"
        );
    }
    assert_eq!(worker_samples.get("kiln_worker_slots"), Some(&2.0));
    assert_eq!(worker_samples.get("kiln_worker_tasks_completed_total"), Some(&4.0));

    // Every series the dashboard and the alerts query is served, and none is summed over replicas.
    let served: BTreeSet<&str> =
        nodes.iter().chain([&worker_samples, &waiting]).flat_map(|s| s.keys().map(|k| name_of(k))).collect();
    let queries = shipped_queries();
    assert!(queries.len() > 30, "{} queries", queries.len());
    let mut missing = Vec::new();
    for (place, expr) in &queries {
        for name in series_in(expr) {
            if !served.contains(name.as_str()) {
                missing.push(format!("{place}: {name}"));
            }
            let ledger = LEDGER.iter().any(|f| in_family(&name, f));
            assert!(!(ledger && expr.contains("sum")), "{place} sums ledger series {name}: {expr}");
        }
    }
    assert!(missing.is_empty(), "queried but not served: {missing:#?}");
    drop(worker);
    drop(cluster);
}
