//! The Kiln scheduler: the shell around the pure ledger.
//!
//! It replicates ledger commands through a raft-rs `RawNode` with sled storage, serves gRPC to
//! clients and workers, leases work to worker sessions, runs lease-expiry and GC timers as
//! replicated commands, and exposes `/metrics` and `/healthz`. A single node is simply a
//! one-member cluster: the same code path as three.
//!
//! Layout, bottom-up:
//! - [`raft_log`]: sled-backed `raft::Storage` (log, hard state, snapshots with the membership).
//! - `node`: the one thread that owns the `RawNode` and the ledger; batches proposals; applies
//!   membership changes; its `round` can be driven from outside (the `sim` tests do).
//! - `transport`: per-peer send queues to other nodes; snapshots streamed in chunks.
//! - [`Handle`]: the cheap cloneable way in (propose, read).
//! - `sessions`: worker streams and the dispatcher that leases to them (a thin adapter; its tasks are
//!   tracked and drained on shutdown).
//! - `convert`: every proto ⇄ ledger conversion; `limits`: what it keeps of the network's input.
//! - `auth`: who may call what (certificates, tokens, the role of every RPC), in front of them all.
//! - `api`, `peer`: the `Scheduler` and `RaftPeer` gRPC services; `status` maps errors to codes;
//!   `peer_guard` decides which peer messages reach raft-rs; `raft_wire` refuses encodings the
//!   `protobuf` 2 parser would overflow its stack on.
//! - `http`: metrics and health; `metrics`, `kpi`, `raft_metrics`: what `/metrics` serves.
//! - `ui`: the dashboard at `/ui`.
//! - [`batches`]: catalog batches: the leader's streaming admission from the manifest, webhooks.
//! - `upgrade`: rolling upgrades: what each member supports, and the gate for feature flags.

mod api;
mod auth;
pub mod batches;
mod convert;
mod failpoint;
mod failure;
mod handle;
mod http;
mod kpi;
mod limits;
mod metrics;
mod node;
mod peer;
mod peer_guard;
pub mod raft_log;
mod raft_logging;
mod raft_metrics;
mod raft_wire;
mod reflection;
mod sessions;
#[cfg(test)]
mod sim;
mod status;
mod transport;
mod ui;
mod upgrade;

use std::net::SocketAddr;

use kiln_config::SchedulerOptions;
use kiln_ledger::LedgerConfig;
use kiln_proto::v1;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use auth::token_hash;
pub use failure::{FailureKind, NodeFailure};
pub use handle::Handle;
pub use limits::{MAX_ERROR, MAX_LABEL, MAX_METADATA, MAX_OUTPUTS, MAX_SLOTS, MAX_URI};
pub use node::{MemberChange, MembershipOutcome, NodeStatus, ProposeError};
pub use sessions::MAX_HELD_PER_SLOT;
pub use status::LEADER_METADATA;
pub use upgrade::VERSION;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot open the scheduler's data in {dir}: {source}{}", start_advice(.kind))]
    Start { dir: std::path::PathBuf, source: node::StartError, kind: FailureKind },
    /// Opening the data directory tripped a panic (in raft-rs, on state it refuses).
    #[error("cannot open the scheduler's data in {dir}: {panic}; {}", failure::CORRUPT_ADVICE)]
    StartPanic { dir: std::path::PathBuf, panic: NodeFailure },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    Failpoints(#[from] failpoint::ParseError),
    #[error("TLS: {0}")]
    Tls(#[from] kiln_proto::TlsError),
    #[error("TLS: {0}")]
    TlsConfig(String),
    #[error("cannot read batches.webhook_secret_file {0}: {1}")]
    WebhookSecret(std::path::PathBuf, std::io::Error),
}

fn start_advice(kind: &FailureKind) -> String {
    match kind {
        FailureKind::DiskFull => "; the disk is full: free space and restart; nothing committed is lost".to_owned(),
        FailureKind::Corrupt => format!("; {}", failure::CORRUPT_ADVICE),
        FailureKind::Unsupported => format!("; {}", failure::UNSUPPORTED_ADVICE),
        _ => String::new(),
    }
}

impl Error {
    fn start(dir: &std::path::Path, source: node::StartError) -> Self {
        let kind = NodeFailure::from_error(&source, dir).kind;
        Error::Start { dir: dir.to_owned(), source, kind }
    }

    /// The process exit code for this error: as [`NodeFailure::exit_code`] for a data directory
    /// that cannot be opened, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Start { kind, .. } => kind.exit_code(),
            Error::StartPanic { .. } => FailureKind::Corrupt.exit_code(),
            _ => 1,
        }
    }
}

fn ledger_config(opts: &SchedulerOptions) -> LedgerConfig {
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    LedgerConfig {
        lease_ttl_ms: ms(opts.lease_ttl),
        backoff_base_ms: ms(opts.retry_backoff_base),
        backoff_max_ms: ms(opts.retry_backoff_max),
        gc_ttl_ms: ms(opts.gc_ttl),
        max_live_tasks: opts.max_live_tasks,
        ..LedgerConfig::default()
    }
}

/// What the peer service does with a Raft message's bytes before the node sees it: the wire
/// check, the protobuf parse and the membership guard (for a node 1 of three with 100 entries).
/// Public for the fuzz targets only.
#[doc(hidden)]
pub fn check_peer_message(bytes: &[u8]) -> Result<(), String> {
    use protobuf::Message as _;
    raft_wire::check(bytes).map_err(|e| e.to_string())?;
    let msg = raft::prelude::Message::parse_from_bytes(bytes).map_err(|e| e.to_string())?;
    peer_guard::admit(msg, 1, |id| (1..=3).contains(&id), 100).map(|_| ()).map_err(|e| e.to_string())
}

/// The files of the `[tls]` section.
pub fn tls_files(tls: &kiln_config::TlsOptions) -> kiln_proto::TlsFiles {
    kiln_proto::TlsFiles {
        ca: tls.ca_file.clone(),
        cert: tls.cert_file.clone(),
        key: tls.key_file.clone(),
        server_name: tls.server_name.clone(),
    }
}

/// What this node supports: this build, or the older release it emulates.
fn support(opts: &SchedulerOptions) -> kiln_ledger::Support {
    match opts.emulate_format {
        Some(format) => kiln_ledger::Support::emulating(format),
        None => kiln_ledger::Support::this_build(),
    }
}

/// A started scheduler: its addresses, a [`Handle`], and a way to stop it.
pub struct Running {
    handle: Handle,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// The worker sessions and every task they started.
    hub: std::sync::Arc<sessions::Hub>,
    tasks: JoinSet<()>,
    node_thread: Option<std::thread::JoinHandle<()>>,
    health: failure::Health,
}

impl Running {
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Resolves when the node thread stops on an error or a panic (never, if it does not). The
    /// process should then exit with [`NodeFailure::exit_code`]: the node serves nothing anymore.
    pub async fn failed(&self) -> NodeFailure {
        self.health.failed().await
    }

    /// The node thread's failure, if it has failed.
    pub fn failure(&self) -> Option<NodeFailure> {
        self.health.failure()
    }

    /// Stops serving, ends the worker sessions and waits for every task they started, lets the
    /// node thread finish its current batch, and returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.hub.shutdown().await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.handle.stop();
        drop(self.handle);
        if let Some(thread) = self.node_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Opens the node's storage, binds its listeners (port 0 picks a free port) and starts serving.
pub async fn start(opts: &SchedulerOptions) -> Result<Running, Error> {
    failpoint::init_from_env()?;
    let grpc_listener =
        tokio::net::TcpListener::bind(opts.listen).await.map_err(|source| Error::Bind { addr: opts.listen, source })?;
    let http_listener = tokio::net::TcpListener::bind(opts.http_listen)
        .await
        .map_err(|source| Error::Bind { addr: opts.http_listen, source })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| Error::Bind { addr: opts.listen, source })?;
    let http_addr = http_listener.local_addr().map_err(|source| Error::Bind { addr: opts.http_listen, source })?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| format!("{}://{grpc_addr}", opts.scheme()));
    let tls = opts.tls.as_ref().map(tls_files);
    let peer_credentials = match &tls {
        Some(files) => kiln_proto::Credentials::from_files(files)?,
        None => kiln_proto::Credentials::plaintext(),
    };
    let members = if opts.peers.is_empty() {
        vec![(opts.node_id, advertise)]
    } else {
        opts.peers.iter().map(|p| (p.id, p.address.clone())).collect()
    };

    let raft_metrics = std::sync::Arc::new(raft_metrics::RaftMetrics::default());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (requests_tx, requests_rx) = flume::unbounded();
    let node_config = node::NodeConfig {
        id: opts.node_id,
        data_dir: opts.data_dir.clone(),
        members,
        join: opts.join,
        force_new_cluster: opts.force_new_cluster,
        ledger: ledger_config(opts),
        tick: opts.raft_tick,
        election_ticks: opts.election_ticks,
        max_batch: opts.max_batch,
        batch_window: opts.batch_window,
        snapshot_every: opts.snapshot_every,
        clock: node::now_ms,
        randomized_election: true,
        metrics: raft_metrics.clone(),
        support: support(opts),
    };
    // Every node gets a real transport, even a one-member cluster: members can be added later.
    let transport: Box<dyn node::Transport> =
        Box::new(transport::GrpcTransport::new(opts.node_id, requests_tx.clone(), peer_credentials.clone()));
    let dir = opts.data_dir.clone();
    // raft-rs panics on stored state it refuses; that is a damaged directory, not a crash loop.
    let opened =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node::Node::open(node_config, transport, events_tx)));
    let node = match opened {
        Ok(node) => node.map_err(|source| Error::start(&dir, source))?,
        Err(panic) => return Err(Error::StartPanic { dir, panic: NodeFailure::from_panic(&*panic) }),
    };
    let health = failure::Health::default();
    let thread_health = health.clone();
    let node_thread = std::thread::Builder::new()
        .name(format!("kiln-raft-{}", opts.node_id))
        .spawn(move || {
            // Held until the failure is recorded: callers see the channel close only after it is.
            let keep_open = requests_rx.clone();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run(requests_rx))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => thread_health.fail(NodeFailure::from_error(&e, &dir)),
                Err(panic) => thread_health.fail(NodeFailure::from_panic(&*panic)),
            }
            drop(keep_open);
        })
        .map_err(|e| Error::start(&opts.data_dir, node::StartError::Thread(e)))?;
    let handle = Handle::new(requests_tx, raft_metrics, peer_credentials);

    let hub = sessions::Hub::new(
        handle.clone(),
        sessions::HubConfig {
            lease_ttl: opts.lease_ttl,
            heartbeat_interval: opts.heartbeat_interval,
            node_id: opts.node_id,
            work_stealing: opts.work_stealing,
        },
    );
    hub.start(events_rx);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if opts.auto_enable_features {
        tasks.spawn(upgrade::auto_enable(handle.clone(), support(opts), std::time::Duration::from_secs(5)));
    }
    let webhook_secret = match &opts.batches.webhook_secret_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| Error::WebhookSecret(path.clone(), e))?),
        None => None,
    };
    tasks.spawn(batches::admission::run(handle.clone(), opts.batches.clone(), stop_rx.clone()));
    tasks.spawn(batches::webhook::run(handle.clone(), opts.batches.clone(), webhook_secret, stop_rx.clone()));
    if let Some(format) = opts.emulate_format {
        tracing::warn!(format, "emulating an older release: newer log formats and feature flags are hidden");
    }

    let (reflection_v1, reflection_v1alpha) = reflection::services()?;
    let mut grpc = tonic::transport::Server::builder();
    let authorizer = match &tls {
        Some(files) => {
            grpc = grpc.tls_config(files.server_config()?).map_err(|e| Error::TlsConfig(e.to_string()))?;
            auth::Authorizer::tls(&opts.tokens)
        }
        None => auth::Authorizer::open(),
    };
    let grpc = grpc
        // A client, worker or peer that vanished without closing (a cut WAN link, a powered-off
        // rack) is noticed within a minute, and its session and leases end as if it had closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        // One connection cannot occupy the node with unbounded parallel calls: past 64 running
        // calls its next ones wait, and past 256 open streams the client is refused more.
        .concurrency_limit_per_connection(64)
        .max_concurrent_streams(Some(256))
        .layer(auth::AuthLayer(std::sync::Arc::new(authorizer)))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(v1::scheduler_server::SchedulerServer::new(api::Api::new(
            handle.clone(),
            hub.clone(),
            support(opts),
            opts.batches.clone(),
        )))
        .add_service(v1::worker_session_server::WorkerSessionServer::new(sessions::SessionService::new(hub.clone())))
        .add_service(
            v1::raft_peer_server::RaftPeerServer::new(peer::PeerService::new(handle.clone()))
                .max_decoding_message_size(transport::MAX_PEER_MESSAGE),
        );
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
    let mut grpc_stop = stop_rx.clone();
    tasks.spawn(async move {
        let shutdown = async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = grpc.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let http_handle = handle.clone();
    let http_support = support(opts);
    let http_hub = hub.clone();
    let http_health = health.clone();
    let mut http_stop = stop_rx;
    tasks.spawn(async move {
        let shutdown = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        http::serve(http_listener, http_handle, http_hub, http_health, http_support, shutdown).await;
    });
    tracing::info!(node = opts.node_id, %grpc_addr, %http_addr, data_dir = %opts.data_dir.display(), "scheduler started");
    Ok(Running { handle, grpc_addr, http_addr, stop, hub, tasks, node_thread: Some(node_thread), health })
}
