//! What the Raft side of one node observes about itself: how long a proposal takes to be
//! committed, fsynced and applied, how long each fsync of the log takes, and how often the leader
//! changed. The node thread and every [`crate::Handle`] hold the same [`RaftMetrics`]; `/metrics`
//! serves it as `kiln_scheduler_raft_…`.
//!
//! These are per node by nature (each replica fsyncs its own disk) and are read per instance,
//! never summed across replicas.

use std::time::Duration;

use kiln_proto::metrics::Histogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone)]
pub struct RaftMetrics {
    proposal: Histogram,
    fsync: Histogram,
    leader_changes: Counter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        // 100 µs (an fsync on a good NVMe) to 3.3 s (a stalled disk or a lost quorum).
        let buckets = || exponential_buckets(0.0001, 2.0, 16);
        Self {
            proposal: Histogram::with_buckets(buckets()),
            fsync: Histogram::with_buckets(buckets()),
            leader_changes: Counter::default(),
        }
    }
}

impl RaftMetrics {
    /// A proposal was committed and applied `took` after it was handed to the node.
    pub fn proposed(&self, took: Duration) {
        self.proposal.observe(took);
    }

    /// One fsync of the Raft log and hard state took `took`.
    pub fn synced(&self, took: Duration) {
        self.fsync.observe(took);
    }

    /// The node learned of leader `now` while it knew `before` (0: none): a change when both
    /// differ and a leader is known.
    pub fn leader_seen(&self, before: u64, now: u64) {
        if now != 0 && now != before {
            self.leader_changes.inc();
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        self.proposal.register(
            registry,
            "kiln_scheduler_raft_proposal_duration_seconds",
            "Time from handing a command to this node until it was committed, durable and applied.",
        );
        self.fsync.register(
            registry,
            "kiln_scheduler_raft_fsync_duration_seconds",
            "Time of each fsync of this node's Raft log and hard state.",
        );
        registry.register(
            "kiln_scheduler_raft_leader_changes",
            "Times this node saw a new leader (elections it witnessed, its own included).",
            self.leader_changes.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_known_leader_counts_as_a_change() {
        let m = RaftMetrics::default();
        m.leader_seen(0, 1); // first leader after start
        m.leader_seen(1, 1); // same leader, new soft state
        m.leader_seen(1, 0); // election running: no leader yet
        m.leader_seen(0, 2); // new leader
        assert_eq!(m.leader_changes.get(), 2);
        m.synced(Duration::from_micros(150));
        let mut registry = Registry::default();
        m.register(&mut registry);
        let text = kiln_proto::metrics::encode(&registry);
        assert!(text.contains("kiln_scheduler_raft_leader_changes_total 2"), "{text}");
        assert!(text.contains("kiln_scheduler_raft_fsync_duration_seconds_bucket{le=\"0.0002\"} 1"), "{text}");
        assert!(text.contains("kiln_scheduler_raft_proposal_duration_seconds_count 0"), "{text}");
    }
}
