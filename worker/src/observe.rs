//! Watching a worker from the outside: what its session was told, as it happens. Nothing in the
//! worker depends on an observer; the loadtest uses one to measure lease and ack latencies and
//! failovers on the real worker instead of a copy of its protocol.

use kiln_proto::v1;

/// Called from the worker's loop; keep every method short and non-blocking.
pub trait Observer: Send + Sync + 'static {
    /// A session opened on scheduler node `node_id`.
    fn connected(&self, _node_id: u64) {}

    /// Leases arrived on the session with node `node_id`.
    fn assigned(&self, _node_id: u64, _tasks: &[v1::Assignment]) {}

    /// The scheduler acknowledged a report: durable and counted (`accepted`), or stale and ignored.
    fn acked(&self, _lease: v1::LeaseRef, _accepted: bool) {}

    /// The scheduler revoked a lease; `dropped` when its render had not started, so the worker let
    /// it go.
    fn revoked(&self, _lease: v1::LeaseRef, _dropped: bool) {}
}
