//! Raft messages to other scheduler nodes over the `RaftPeer` gRPC service.
//!
//! The node thread must never block on the network, so [`GrpcTransport::send`] only sorts messages
//! into one unbounded queue per peer. A task per peer drains its queue in batches (one RPC carries
//! everything queued, up to [`MAX_BATCH_BYTES`]), reconnects with backoff, and tells the node when
//! a peer is unreachable so raft-rs stops pipelining to it.
//!
//! Snapshots are the one kind of message that can be large (the whole ledger). They travel alone
//! on the client-streaming `StepChunked` call in [`CHUNK_BYTES`] pieces, so no gRPC message ever
//! exceeds the limit whatever the size of the ledger, and the node learns whether it arrived
//! (raft-rs waits for that report before sending the follower anything else).
//!
//! ```text
//!  node thread ──send()──▶ queue(peer 2) ──▶ task ──Step(batch)──────────▶ peer 2
//!                         queue(peer 3) ──▶ task ──StepChunked(chunks)──▶ peer 3  (snapshot)
//! ```

use std::collections::HashMap;
use std::time::Duration;

use kiln_proto::{v1, Credentials};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;

use crate::node::{Request, Transport};

/// Largest gRPC message a peer accepts. Ordinary batches stay far below it (raft-rs caps one
/// append at `max_size_per_msg`, and a batch at [`MAX_BATCH_BYTES`]); snapshots are chunked.
pub const MAX_PEER_MESSAGE: usize = 64 << 20;
/// Most bytes of raft messages sent in one `Step` call.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Size of one snapshot chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// How long a peer may take to step one batch.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole snapshot may take to arrive.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest snapshot a node accepts (reassembled), so a confused peer cannot exhaust memory.
pub const MAX_SNAPSHOT_BYTES: usize = 8 << 30;

struct Peer {
    address: String,
    /// Dropping the sender ends the peer's task once its queue is empty.
    queue: mpsc::UnboundedSender<Message>,
}

pub struct GrpcTransport {
    self_id: u64,
    peers: HashMap<u64, Peer>,
    node: flume::Sender<Request>,
    /// Peers come and go with membership changes, which the node thread applies; it is not on the
    /// runtime, so it spawns the new peer's task through this handle.
    runtime: tokio::runtime::Handle,
    /// What this node presents to its peers: its node certificate under TLS.
    credentials: Credentials,
}

impl GrpcTransport {
    /// Must be called on the runtime that will run the per-peer tasks.
    pub fn new(self_id: u64, node: flume::Sender<Request>, credentials: Credentials) -> Self {
        Self { self_id, peers: HashMap::new(), node, runtime: tokio::runtime::Handle::current(), credentials }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            match self.peers.get(&m.to) {
                Some(p) => {
                    let _ = p.queue.send(m);
                }
                None => tracing::debug!(to = m.to, "raft message for a peer with no known address dropped"),
            }
        }
    }

    fn set_peers(&mut self, peers: &[(u64, String)]) {
        self.peers.retain(|id, p| peers.iter().any(|(pid, addr)| pid == id && *addr == p.address));
        for (id, address) in peers {
            if *id == self.self_id || self.peers.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            self.peers.insert(*id, Peer { address: address.clone(), queue: tx });
            let peer = PeerLink {
                self_id: self.self_id,
                id: *id,
                address: address.clone(),
                credentials: self.credentials.clone(),
            };
            self.runtime.spawn(peer_sender(peer, rx, self.node.clone()));
        }
    }
}

type PeerClient = v1::raft_peer_client::RaftPeerClient<tonic::transport::Channel>;

/// One peer as its sender task sees it.
struct PeerLink {
    self_id: u64,
    id: u64,
    address: String,
    credentials: Credentials,
}

async fn peer_sender(link: PeerLink, mut queue: mpsc::UnboundedReceiver<Message>, node: flume::Sender<Request>) {
    let PeerLink { self_id, id: peer, address, credentials } = link;
    let mut client: Option<PeerClient> = None;
    let mut backoff = Duration::from_millis(50);
    let mut held: Option<Message> = None;
    loop {
        let first = match held.take() {
            Some(m) => m,
            None => match queue.recv().await {
                Some(m) => m,
                None => return,
            },
        };
        if client.is_none() {
            client = connect(&address, &credentials).await;
        }
        let delivered = if first.get_msg_type() == MessageType::MsgSnapshot {
            let ok = match client.as_mut() {
                Some(c) => send_snapshot(c, self_id, &first).await,
                None => false,
            };
            let _ = node.send_async(Request::SnapshotStatus { peer, ok }).await;
            ok
        } else {
            let mut batch = vec![first.write_to_bytes().unwrap_or_default()];
            let mut bytes = batch[0].len();
            while bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    // A snapshot goes alone, on the chunked call.
                    Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot => {
                        held = Some(m);
                        break;
                    }
                    Ok(m) => {
                        let encoded = m.write_to_bytes().unwrap_or_default();
                        bytes += encoded.len();
                        batch.push(encoded);
                    }
                    Err(_) => break,
                }
            }
            let mut request = tonic::Request::new(v1::RaftBatch { from: self_id, messages: batch });
            // A paused peer keeps its socket open: without a deadline this call would hang and
            // raft-rs would keep pipelining into a queue nobody drains.
            request.set_timeout(STEP_TIMEOUT);
            match client.as_mut() {
                Some(c) => c.step(request).await.is_ok(),
                None => false,
            }
        };
        if delivered {
            backoff = Duration::from_millis(50);
        } else {
            // Dropping messages is safe: Raft retransmits. Tell it so it probes instead of streaming.
            client = None;
            let _ = node.send_async(Request::Unreachable(peer)).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            // Whatever queued up meanwhile is stale; Raft will resend what matters (a held
            // snapshot too: raft-rs was told it failed, or will be when it is sent again).
            if held.as_ref().is_some_and(|m| m.get_msg_type() == MessageType::MsgSnapshot) {
                held = None;
                let _ = node.send_async(Request::SnapshotStatus { peer, ok: false }).await;
            }
            while let Ok(m) = queue.try_recv() {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let _ = node.send_async(Request::SnapshotStatus { peer, ok: false }).await;
                }
            }
        }
    }
}

/// Streams one snapshot message in [`CHUNK_BYTES`] pieces; true once the peer has stepped it.
async fn send_snapshot(client: &mut PeerClient, self_id: u64, msg: &Message) -> bool {
    let Ok(bytes) = msg.write_to_bytes() else { return false };
    let total = bytes.len();
    let chunks: Vec<v1::RaftChunk> =
        bytes.chunks(CHUNK_BYTES).map(|c| v1::RaftChunk { from: self_id, data: c.to_vec() }).collect();
    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(tokio_stream::iter(chunks));
    request.set_timeout(SNAPSHOT_TIMEOUT);
    let result = client.step_chunked(request).await;
    match result {
        Ok(_) => {
            tracing::info!(to = msg.to, bytes = total, index = msg.get_snapshot().get_metadata().index, elapsed = ?started.elapsed(), "snapshot sent");
            true
        }
        Err(e) => {
            tracing::warn!(to = msg.to, bytes = total, error = %e, "snapshot not delivered");
            false
        }
    }
}

async fn connect(address: &str, credentials: &Credentials) -> Option<PeerClient> {
    let endpoint = credentials.endpoint(address).ok()?.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true);
    let channel = endpoint.connect().await.ok()?;
    Some(
        v1::raft_peer_client::RaftPeerClient::new(channel)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
            .max_decoding_message_size(MAX_PEER_MESSAGE),
    )
}
