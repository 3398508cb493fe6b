//! The `kiln.v1.RaftPeer` service: Raft messages from other scheduler nodes, as opaque bytes.
//!
//! Ordinary messages arrive in batches (`Step`); a snapshot arrives alone, in chunks
//! (`StepChunked`), and is reassembled here before the node sees it, one stream at a time and at
//! most `MAX_SNAPSHOT_BYTES`. What reaches raft-rs is decided by `peer_guard`.

use kiln_proto::v1::{self, raft_peer_server::RaftPeer};
use protobuf::Message as _;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller;
use crate::handle::Handle;
use crate::status::from_propose;
use crate::transport::MAX_SNAPSHOT_BYTES;

pub struct PeerService {
    handle: Handle,
    /// One snapshot stream at a time: each may hold up to `MAX_SNAPSHOT_BYTES` while it is
    /// reassembled, and a node needs at most one (its leader's).
    snapshot_stream: tokio::sync::Semaphore,
}

impl PeerService {
    pub fn new(handle: Handle) -> Self {
        Self { handle, snapshot_stream: tokio::sync::Semaphore::new(1) }
    }

    /// `sender` is the node the caller's certificate names (`None` on a plaintext cluster): a
    /// message claiming to come from another node is refused, so one member cannot speak for
    /// another.
    async fn step_bytes(&self, bytes: &[u8], sender: Option<u64>) -> Result<(), Status> {
        crate::raft_wire::check(bytes)
            .map_err(|e| Status::invalid_argument(format!("raft message refused before parsing: {e}")))?;
        let msg = raft::prelude::Message::parse_from_bytes(bytes)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        if let Some(sender) = sender.filter(|s| *s != msg.from) {
            return Err(Status::permission_denied(format!(
                "node {sender}'s certificate sent a raft message from node {}",
                msg.from
            )));
        }
        self.handle.step(msg).await.map_err(from_propose)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn step(&self, request: Request<v1::RaftBatch>) -> Result<Response<v1::RaftAck>, Status> {
        let sender = caller(&request).bound_node();
        for bytes in request.into_inner().messages {
            self.step_bytes(&bytes, sender).await?;
        }
        Ok(Response::new(v1::RaftAck {}))
    }

    async fn step_chunked(&self, request: Request<Streaming<v1::RaftChunk>>) -> Result<Response<v1::RaftAck>, Status> {
        let Ok(_stream) = self.snapshot_stream.try_acquire() else {
            return Err(Status::resource_exhausted("another snapshot is being received; retry when it is done"));
        };
        let sender = caller(&request).bound_node();
        let mut chunks = request.into_inner();
        let mut message = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if message.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "raft message larger than {MAX_SNAPSHOT_BYTES} bytes refused"
                )));
            }
            message.extend_from_slice(&chunk.data);
        }
        self.step_bytes(&message, sender).await?;
        Ok(Response::new(v1::RaftAck {}))
    }
}
