//! A cluster of real `kiln scheduler` processes on loopback, plus `kiln worker`s, for tests that
//! kill, pause and restart nodes the way an operator's bad day would.
//!
//! Each node gets its own data directory and TOML file (its id, ports and the founding peers) in
//! one temporary directory, so a node restarts exactly as it started: same file, same data.
//! Tests ask the nodes themselves (over gRPC or the CLI) who leads; this only runs processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{free_port, KilnProcess};

/// `[scheduler]` settings for tests that kill leaders: elections in 0.5–1 s, leases that lapse in
/// 4 s, retries after 200 ms, so failures resolve within a test's patience.
pub const FAST_FAILOVER: &[(&str, &str)] = &[
    ("raft_tick", "\"50ms\""),
    ("election_ticks", "10"),
    ("lease_ttl", "\"4s\""),
    ("heartbeat_interval", "\"500ms\""),
    ("retry_backoff_base", "\"200ms\""),
];

/// Runs `kiln tls init DIR --nodes N --workers M`: a CA and certificates for nodes `node-1…`,
/// workers `worker-1…` and an `admin`, in `dir`.
pub fn tls_init(binary: &Path, dir: &Path, nodes: u64, workers: u32) {
    let out = crate::run(
        binary,
        &["tls", "init", &dir.display().to_string(), "--nodes", &nodes.to_string(), "--workers", &workers.to_string()],
    );
    assert!(out.status.success(), "kiln tls init: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `[scheduler.tls]` section of node `id`, for the certificates `tls_init` wrote into `dir`.
pub fn scheduler_tls_toml(dir: &Path, id: u64) -> String {
    let file = |name: String| format!("{:?}", dir.join(name).display().to_string());
    format!(
        "[scheduler.tls]\nca_file = {}\ncert_file = {}\nkey_file = {}\n",
        file("ca.pem".into()),
        file(format!("node-{id}.pem")),
        file(format!("node-{id}-key.pem"))
    )
}

/// One scheduler node: its Raft id, address, config file and process.
pub struct Node {
    pub id: u64,
    /// gRPC address, e.g. `http://127.0.0.1:40123`.
    pub address: String,
    /// HTTP (`/metrics`, `/healthz`, `/ui`) socket address, e.g. `127.0.0.1:40124`.
    pub http: String,
    pub config: PathBuf,
    pub process: KilnProcess,
    args: Vec<String>,
}

impl Node {
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the process again (after `kill9` or `terminate`) with the same config and data,
    /// once its ports can be bound again (a dead process's sockets may linger a moment).
    pub fn start(&mut self) {
        self.process.kill9();
        let grpc = self.address.split_once("://").map_or(self.address.as_str(), |(_, a)| a);
        for address in [grpc, self.http.as_str()] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpListener::bind(address).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {}: {address} is still taken by another socket 10 s after the process stopped",
                    self.id
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.process.restart();
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    binary: PathBuf,
    /// `[scheduler]` settings written into every node's TOML (values in TOML syntax).
    settings: Vec<(String, String)>,
    pub nodes: Vec<Node>,
    pub workers: Vec<KilnProcess>,
    /// Under TLS: the directory `kiln tls init` wrote (CA, node, worker and admin certificates).
    pub tls: Option<PathBuf>,
}

impl TestCluster {
    /// Node `id`'s TOML: its id, data directory, ports, the shared settings, TLS, the peers.
    fn toml_config(&self, id: u64, grpc: u16, http: u16, peers: &[(u64, String)], join: bool) -> String {
        let (dir, settings, tls) = (self.dir.path(), &self.settings, self.tls.as_deref());
        let mut s = String::from("[scheduler]\n");
        s.push_str(&format!("node_id = {id}\n"));
        s.push_str(&format!("data_dir = {:?}\n", dir.join(format!("node-{id}")).display().to_string()));
        s.push_str(&format!("listen = \"127.0.0.1:{grpc}\"\n"));
        s.push_str(&format!("http_listen = \"127.0.0.1:{http}\"\n"));
        s.push_str(&format!("join = {join}\n"));
        for (k, v) in settings {
            s.push_str(&format!("{k} = {v}\n"));
        }
        if let Some(tls) = tls {
            s.push_str(&scheduler_tls_toml(tls, id));
        }
        for (pid, address) in peers {
            s.push_str(&format!("[[scheduler.peers]]\nid = {pid}\naddress = \"{address}\"\n"));
        }
        s
    }

    /// Starts `n` founding scheduler nodes (ids 1..=n). `settings` are `[scheduler]` keys with
    /// TOML values, e.g. `("snapshot_every", "50")` or `("lease_ttl", "\"4s\"")`.
    pub fn start(binary: &Path, n: u64, settings: &[(&str, &str)]) -> Self {
        Self::start_with(binary, n, settings, false)
    }

    /// As [`Self::start`], with mutual TLS: `kiln tls init` writes a CA and certificates for
    /// the nodes, two workers (`worker-1`, `worker-2`) and an admin into `dir/tls`.
    pub fn start_tls(binary: &Path, n: u64, settings: &[(&str, &str)]) -> Self {
        Self::start_with(binary, n, settings, true)
    }

    fn start_with(binary: &Path, n: u64, settings: &[(&str, &str)], tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let tls = tls.then(|| {
            let tls = dir.path().join("tls");
            tls_init(binary, &tls, n, 2);
            tls
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ports: Vec<(u64, u16, u16)> = (1..=n).map(|id| (id, free_port(), free_port())).collect();
        let peers: Vec<(u64, String)> =
            ports.iter().map(|(id, g, _)| (*id, format!("{scheme}://127.0.0.1:{g}"))).collect();
        let mut cluster =
            Self { dir, binary: binary.to_owned(), settings, nodes: Vec::new(), workers: Vec::new(), tls };
        for (id, grpc, http) in ports {
            cluster.spawn_node(id, grpc, http, &peers, false);
        }
        cluster
    }

    fn spawn_node(&mut self, id: u64, grpc: u16, http: u16, peers: &[(u64, String)], join: bool) -> &mut Node {
        let config = self.dir.path().join(format!("node-{id}.toml"));
        let toml = self.toml_config(id, grpc, http, peers, join);
        std::fs::write(&config, toml).unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let args = vec!["scheduler".to_owned(), "--config".to_owned(), config.display().to_string()];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let process =
            KilnProcess::start(&format!("node-{id}"), &self.binary, &argv, &[("KILN_LOG", "info")], self.dir.path());
        let (address, http) = (format!("{}://127.0.0.1:{grpc}", self.scheme()), format!("127.0.0.1:{http}"));
        self.nodes.push(Node { id, address, http, config, process, args });
        let last = self.nodes.len() - 1;
        &mut self.nodes[last]
    }

    /// Starts a new, empty node with `id` that waits to be added (`kiln cluster add`). Its peers
    /// are the current nodes and itself.
    pub fn start_joining_node(&mut self, id: u64) -> String {
        if let Some(tls) = &self.tls {
            let out = crate::run(
                &self.binary,
                &["tls", "cert", "--dir", &tls.display().to_string(), "--node", &id.to_string()],
            );
            assert!(out.status.success(), "kiln tls cert --node {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (grpc, http) = (free_port(), free_port());
        let mut peers: Vec<(u64, String)> = self.nodes.iter().map(|n| (n.id, n.address.clone())).collect();
        peers.push((id, format!("{}://127.0.0.1:{grpc}", self.scheme())));
        self.spawn_node(id, grpc, http, &peers, true).address.clone()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `--ca/--cert/--key` for a client holding the certificate `name` (`admin`, `worker-1`, or
    /// one issued later with `kiln tls cert`); nothing without TLS.
    pub fn tls_args(&self, name: &str) -> Vec<String> {
        match &self.tls {
            Some(dir) => vec![
                "--ca".into(),
                dir.join("ca.pem").display().to_string(),
                "--cert".into(),
                dir.join(format!("{name}.pem")).display().to_string(),
                "--key".into(),
                dir.join(format!("{name}-key.pem")).display().to_string(),
            ],
            None => Vec::new(),
        }
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Node `id`'s gRPC address.
    pub fn address(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.address.clone()).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Every node's address, comma-separated, for `--scheduler`.
    pub fn scheduler_arg(&self) -> String {
        self.addresses().join(",")
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// Starts a `kiln worker` with `slots` slots that knows every node's address. Under TLS it
    /// presents the certificate named `id` (`worker-1`, `worker-2`, or one issued later).
    pub fn start_worker(&mut self, id: &str, slots: u32, masters: &Path, derivatives: &Path) {
        let scheduler = self.scheduler_arg();
        let slots = slots.to_string();
        let tls = self.tls_args(id);
        let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
        args.extend([
            "--scheduler",
            scheduler.as_str(),
            "worker",
            "--id",
            id,
            "--slots",
            slots.as_str(),
            "--no-pin",
            "--masters",
            masters.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", masters.display())),
            "--derivatives",
            derivatives.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", derivatives.display())),
        ]);
        self.workers.push(KilnProcess::start(id, &self.binary, &args, &[], self.dir.path()));
    }

    /// SIGTERM every worker (they drain) and wait for them.
    pub fn stop_workers(&mut self) {
        for w in &mut self.workers {
            w.terminate(Duration::from_secs(30));
        }
    }

    /// Every process's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = n.process.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("---- node {} (last 40 lines)\n", n.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
