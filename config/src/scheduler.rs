//! Options of `kiln scheduler`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BatchOptions, Error, TlsOptions, TokenOptions};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerOptions {
    pub id: u64,
    /// gRPC address of that node, e.g. `http://10.0.0.2:7450`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerOptions {
    /// This node's Raft id (unique in the cluster, never reused). 0: the id of the `peers` entry
    /// whose address is this node's `advertise` address, so every replica of a Kubernetes
    /// StatefulSet can share one config and differ only in the advertised pod name.
    pub node_id: u64,
    /// Where the Raft log, hard state and snapshots live (sled).
    pub data_dir: PathBuf,
    /// gRPC listen address (clients, workers, peers).
    pub listen: SocketAddr,
    /// HTTP listen address for `/metrics` and `/healthz`.
    pub http_listen: SocketAddr,
    /// Address other processes should use to reach this node. Defaults to `http://{listen}`, or
    /// to `http://{host name}:{port}` when `listen` is every interface (`0.0.0.0`) — `kiln scheduler`
    /// fills that in.
    pub advertise: Option<String>,
    /// All founding voting members including this one. Empty: a single-member cluster. Read on
    /// the very first start only; later, membership is what `kiln cluster add|remove` made it.
    pub peers: Vec<PeerOptions>,
    /// Start with an empty store and wait to be added to a running cluster with
    /// `kiln cluster add` (instead of founding a cluster of `peers`).
    pub join: bool,
    /// Disaster recovery only (a majority of nodes lost for good): start as a one-member cluster
    /// holding everything this node knew to be committed. Pass it once, as a flag; never keep it
    /// in a config file.
    pub force_new_cluster: bool,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// How long finished tasks stay inspectable before they are compacted into counters.
    #[serde(with = "humantime_serde")]
    pub gc_ttl: Duration,
    /// Submissions are refused beyond this many unfinished-or-uncollected tasks.
    pub max_live_tasks: u64,
    /// Raft log entries between snapshots.
    pub snapshot_every: u64,
    /// Most ledger commands carried by one Raft entry.
    pub max_batch: usize,
    /// Group commit: under load, how long proposals wait for others to share their Raft entry
    /// (one fsync per replica, one message per follower). Adds at most this much to a write's
    /// latency; an idle scheduler proposes at once. Off (`0ms`) by default: on the benchmark
    /// machine it saved CPU but cost throughput (docs/benchmarks.md).
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    #[serde(with = "humantime_serde")]
    pub raft_tick: Duration,
    pub election_ticks: usize,
    /// Idle workers take unstarted tasks from the deepest buffers when the queues run dry
    /// (docs/fleet.md). Off only to measure what it buys.
    pub work_stealing: bool,
    /// For tests and for rehearsing a rollback: behave as the older release whose newest log
    /// format is this one, hiding the newer formats and feature flags from the cluster. A node
    /// emulating a format refuses to start once the cluster has enabled a feature it hides.
    pub emulate_format: Option<u32>,
    /// The leader enables every feature flag as soon as every member supports it. Off by default:
    /// enabling is one-way (no rollback past it), so an operator should choose when.
    pub auto_enable_features: bool,
    /// Mutual TLS on the gRPC port: clients, workers and peers must present a certificate signed
    /// by `ca_file` (`kiln tls init` writes them all).
    pub tls: Option<TlsOptions>,
    /// Serve gRPC in plaintext, with no authentication, on an address other machines can reach.
    /// Without it a scheduler listening beyond loopback refuses to start unless `[tls]` is set.
    pub insecure: bool,
    /// Bearer tokens accepted besides certificates (over TLS only), stored as SHA-256.
    pub tokens: Vec<TokenOptions>,
    /// Catalog batches: default window, admission size, webhooks.
    pub batches: BatchOptions,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("kiln-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7450)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7451)),
            advertise: None,
            peers: Vec::new(),
            join: false,
            force_new_cluster: false,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            retry_backoff_base: Duration::from_secs(2),
            retry_backoff_max: Duration::from_secs(300),
            gc_ttl: Duration::from_secs(24 * 3600),
            max_live_tasks: 2_000_000,
            snapshot_every: 20_000,
            max_batch: 4096,
            batch_window: Duration::ZERO,
            raft_tick: Duration::from_millis(100),
            election_ticks: 10,
            work_stealing: true,
            emulate_format: None,
            auto_enable_features: false,
            tls: None,
            insecure: false,
            tokens: Vec::new(),
            batches: BatchOptions::default(),
        }
    }
}

impl SchedulerOptions {
    pub fn advertise_address(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| format!("{}://{}", self.scheme(), self.listen))
    }

    /// `https` when the gRPC port speaks TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Fills in `node_id = 0` from `peers` and `advertise` (see the field). Call before
    /// [`Self::validate`].
    pub fn resolve_node_id(&mut self) -> Result<(), Error> {
        if self.node_id != 0 {
            return Ok(());
        }
        let advertise = self.advertise_address();
        match self.peers.iter().find(|p| p.address.trim_end_matches('/') == advertise.trim_end_matches('/')) {
            Some(p) => {
                self.node_id = p.id;
                Ok(())
            }
            None => Err(Error::Invalid(format!(
                "scheduler: node_id is 0 but no entry of peers has this node's advertise address {advertise:?}"
            ))),
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(format!("scheduler: {m}")));
        if self.node_id == 0 {
            return bad("node_id must be non-zero (or resolved from peers and advertise)".into());
        }
        if self.heartbeat_interval * 2 > self.lease_ttl {
            return bad(format!(
                "heartbeat_interval ({:?}) must be at most half of lease_ttl ({:?}) or leases lapse between beats",
                self.heartbeat_interval, self.lease_ttl
            ));
        }
        if self.retry_backoff_base > self.retry_backoff_max {
            return bad("retry_backoff_base is larger than retry_backoff_max".into());
        }
        if self.max_batch == 0 || self.snapshot_every == 0 || self.max_live_tasks == 0 {
            return bad("max_batch, snapshot_every and max_live_tasks must be positive".into());
        }
        if !self.peers.is_empty() && !self.peers.iter().any(|p| p.id == self.node_id) {
            return bad(format!("peers does not list this node (node_id {})", self.node_id));
        }
        if self.election_ticks < 3 {
            return bad("election_ticks must be at least 3".into());
        }
        if self.batches.window == 0 || self.batches.lines_per_admission == 0 {
            return bad("batches.window and batches.lines_per_admission must be positive".into());
        }
        if self.tls.is_none() && !self.insecure && !self.listen.ip().is_loopback() {
            return bad(format!(
                "refusing to serve gRPC on {} in plaintext: anyone who reaches it could submit, cancel and \
                 join the cluster. Set [tls] (`kiln tls init` writes the certificates), listen on loopback, \
                 or set insecure = true on a network you trust",
                self.listen
            ));
        }
        if !self.tokens.is_empty() && self.tls.is_none() {
            return bad("tokens are accepted over TLS only: set [tls] too, or remove them".into());
        }
        for token in &self.tokens {
            token.validate().or_else(&bad)?;
            if token.role == crate::Role::Peer {
                return bad(format!("token {:?}: the peer role comes only from a node certificate", token.name));
            }
        }
        if self.emulate_format == Some(0) {
            return bad(
                "emulate_format must be a log format (1 is the first); leave it unset to run this release".into()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_pods() -> SchedulerOptions {
        SchedulerOptions {
            node_id: 0,
            peers: (0..3)
                .map(|i| PeerOptions { id: i + 1, address: format!("http://kiln-scheduler-{i}.kiln-scheduler:7450") })
                .collect(),
            ..SchedulerOptions::default()
        }
    }

    #[test]
    fn node_id_zero_is_found_in_peers_by_the_advertised_address() {
        let mut s = three_pods();
        s.advertise = Some("http://kiln-scheduler-2.kiln-scheduler:7450/".into());
        s.resolve_node_id().expect("resolved");
        assert_eq!(s.node_id, 3);
        s.validate().expect("valid");
    }

    #[test]
    fn node_id_zero_without_a_matching_peer_is_an_error_naming_the_address() {
        let mut s = three_pods();
        s.advertise = Some("http://elsewhere:7450".into());
        let err = s.resolve_node_id().unwrap_err().to_string();
        assert!(err.contains("http://elsewhere:7450"), "{err}");
    }
}
