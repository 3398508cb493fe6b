//! Heartbeats and lease renewal. A heartbeat updates the worker's session in memory (busy slots,
//! unstarted leases, when each render started); it becomes a Raft write only when a third of the
//! lease TTL has passed since the worker's last renewal, so a fleet's heartbeats cost the log
//! one `Renew` per worker per third of a TTL, not one entry per heartbeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_ledger::Command;
use kiln_proto::v1;
use kiln_types::WorkerId;

use super::registry::Session;
use super::Hub;
use crate::convert;
use crate::node::now_ms;

/// Records `hb` on the session; true when the worker's leases are due for renewal.
fn record(s: &mut Session, hb: &v1::Heartbeat, lease_ttl: Duration, now_ms: i64) -> bool {
    s.busy_slots = hb.busy_slots;
    s.unstarted = convert::lease_keys(&hb.unstarted);
    let held = convert::lease_keys(&hb.held);
    s.started_at.retain(|lease, _| held.contains(lease));
    for lease in held.difference(&s.unstarted) {
        s.started_at.entry(*lease).or_insert(now_ms);
    }
    if s.last_renewal.elapsed() >= lease_ttl / 3 {
        s.last_renewal = Instant::now();
        true
    } else {
        false
    }
}

impl Hub {
    pub(super) fn on_heartbeat(self: &Arc<Self>, worker: &WorkerId, hb: &v1::Heartbeat) {
        let now = now_ms();
        let renew = self.registry.with(worker, |s| record(s, hb, self.config.lease_ttl, now)).unwrap_or(false);
        if self.config.work_stealing && !hb.unstarted.is_empty() {
            // New stealable work may help an idle worker.
            self.wake.notify_one();
        }
        if renew {
            let hub = self.clone();
            let worker = worker.clone();
            self.spawn(async move {
                if let Err(e) = hub.handle.propose(Command::Renew { worker: worker.clone() }).await {
                    tracing::debug!(%worker, error = %e, "lease renewal not proposed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ledger::WorkerSpec;

    fn session() -> Session {
        let spec = WorkerSpec {
            id: WorkerId::new("w").expect("valid"),
            hostname: String::new(),
            slots: 2,
            cores: 2,
            memory_bytes: 0,
            speed_milli: 1000,
            queues: Vec::new(),
            version: String::new(),
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Session::new(1, tx, spec)
    }

    fn lease(task_id: u64) -> v1::LeaseRef {
        v1::LeaseRef { task_id, lease_seq: 1 }
    }

    #[test]
    fn a_render_keeps_the_time_of_the_first_heartbeat_that_saw_it_started() {
        let mut s = session();
        let ttl = Duration::from_secs(30);
        let hb = |held: Vec<u64>, unstarted: Vec<u64>| v1::Heartbeat {
            held: held.into_iter().map(lease).collect(),
            unstarted: unstarted.into_iter().map(lease).collect(),
            busy_slots: 1,
        };
        record(&mut s, &hb(vec![1, 2], vec![2]), ttl, 1_000);
        assert_eq!(s.started_at.get(&(1, 1)), Some(&1_000));
        assert!(!s.started_at.contains_key(&(2, 1)), "an unstarted lease has no start time");
        record(&mut s, &hb(vec![1, 2], vec![]), ttl, 2_000);
        assert_eq!(s.started_at.get(&(1, 1)), Some(&1_000), "the first sighting counts");
        assert_eq!(s.started_at.get(&(2, 1)), Some(&2_000));
        record(&mut s, &hb(vec![2], vec![]), ttl, 3_000);
        assert!(!s.started_at.contains_key(&(1, 1)), "a lease no longer held is forgotten");
    }

    #[test]
    fn renewal_is_due_only_after_a_third_of_the_ttl() {
        let mut s = session();
        let hb = v1::Heartbeat::default();
        assert!(!record(&mut s, &hb, Duration::from_secs(30), 0), "just registered");
        s.last_renewal = Instant::now() - Duration::from_secs(11);
        assert!(record(&mut s, &hb, Duration::from_secs(30), 0));
        assert!(!record(&mut s, &hb, Duration::from_secs(30), 0), "renewed just now");
    }
}
