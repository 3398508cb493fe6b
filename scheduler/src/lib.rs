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
//! - `sessions`: worker streams and the dispatcher that leases to them.
//! - `api`, `peer`: the `Scheduler` and `RaftPeer` gRPC services; `status` maps errors to codes.
//! - `http`: metrics and health.

mod api;
mod convert;
mod handle;
mod http;
mod kpi;
mod node;
mod peer;
pub mod raft_log;
mod raft_logging;
mod sessions;
#[cfg(test)]
mod sim;
mod status;
mod transport;

use std::net::SocketAddr;

use kiln_config::SchedulerOptions;
use kiln_ledger::LedgerConfig;
use kiln_proto::v1;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use handle::Handle;
pub use node::{MemberChange, MembershipOutcome, NodeStatus, ProposeError};
pub use status::LEADER_METADATA;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot open the scheduler's data in {dir}: {source}")]
    Start { dir: std::path::PathBuf, source: node::StartError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
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

pub(crate) fn cluster_to_pb(s: &NodeStatus) -> v1::ClusterResponse {
    v1::ClusterResponse {
        node_id: s.id,
        leader_id: s.leader_id,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        members: s
            .members
            .iter()
            .map(|(id, address, matched)| v1::ClusterMember {
                id: *id,
                address: address.clone(),
                matched_index: *matched,
            })
            .collect(),
        leader_address: s
            .members
            .iter()
            .find(|(id, _, _)| *id == s.leader_id)
            .map(|(_, a, _)| a.clone())
            .unwrap_or_default(),
        role: s.role.to_owned(),
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        log_entries: s.log_entries,
        leader_heard_ms: s.leader_heard_ms,
        ledger_digest: 0,
        disk_bytes: s.disk_bytes,
    }
}

/// A started scheduler: its addresses, a [`Handle`], and a way to stop it.
pub struct Running {
    handle: Handle,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    node_thread: Option<std::thread::JoinHandle<()>>,
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

    /// Stops serving, lets the node thread finish its current batch, and returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
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
    let grpc_listener =
        tokio::net::TcpListener::bind(opts.listen).await.map_err(|source| Error::Bind { addr: opts.listen, source })?;
    let http_listener = tokio::net::TcpListener::bind(opts.http_listen)
        .await
        .map_err(|source| Error::Bind { addr: opts.http_listen, source })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| Error::Bind { addr: opts.listen, source })?;
    let http_addr = http_listener.local_addr().map_err(|source| Error::Bind { addr: opts.http_listen, source })?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| format!("http://{grpc_addr}"));
    let members = if opts.peers.is_empty() {
        vec![(opts.node_id, advertise)]
    } else {
        opts.peers.iter().map(|p| (p.id, p.address.clone())).collect()
    };

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
    };
    // Every node gets a real transport, even a one-member cluster: members can be added later.
    let transport: Box<dyn node::Transport> =
        Box::new(transport::GrpcTransport::new(opts.node_id, requests_tx.clone()));
    let node = node::Node::open(node_config, transport, events_tx)
        .map_err(|source| Error::Start { dir: opts.data_dir.clone(), source })?;
    let node_thread = std::thread::Builder::new()
        .name(format!("kiln-raft-{}", opts.node_id))
        .spawn(move || node.run(requests_rx))
        .map_err(|e| Error::Start { dir: opts.data_dir.clone(), source: node::StartError::Thread(e) })?;
    let handle = Handle::new(requests_tx);

    let hub =
        sessions::Hub::new(handle.clone(), opts.lease_ttl, opts.heartbeat_interval, opts.node_id, opts.work_stealing);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(hub.clone().run_events(events_rx));
    tasks.spawn(hub.clone().run_dispatcher());

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kiln_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let grpc = tonic::transport::Server::builder()
        .add_service(reflection)
        .add_service(v1::scheduler_server::SchedulerServer::new(api::Api::new(handle.clone(), hub.clone())))
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
    let http_hub = hub.clone();
    let mut http_stop = stop_rx;
    tasks.spawn(async move {
        let shutdown = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = http::serve(http_listener, http_handle, http_hub, shutdown).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(node = opts.node_id, %grpc_addr, %http_addr, data_dir = %opts.data_dir.display(), "scheduler started");
    Ok(Running { handle, grpc_addr, http_addr, stop, tasks, node_thread: Some(node_thread) })
}
