//! How many leases a worker holds ahead of its slots, sized from what it measures when
//! `auto_prefetch` is on.
//!
//! A slot that finishes waits for its next task unless one is already held: the wait is about
//! one round trip to the scheduler (report, ack, `Want`, `Assign`). Holding `prefetch` tasks per
//! slot hides that wait when `prefetch × render time ≥ round trip`. On a LAN one is plenty; across
//! a WAN (80 ms) with short renders it is not, and the right value depends on both, so it is
//! measured instead of guessed:
//!
//! ```text
//!   prefetch = clamp(ceil(round trip / render time), configured prefetch, MAX_AUTO)
//! ```
//!
//! The round trip is a report's time to its ack. The render time is what a slot takes per task,
//! seen from outside: slots × the time between two reports. Timing a task from its assignment
//! would count the time it waited in the prefetch buffer, so a deeper prefetch would look like
//! slower renders and talk itself down again. Both are smoothed (EWMA) so one slow task does not
//! swing the target.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::leases::LeaseKey;

/// The deepest prefetch chosen automatically: one slot's rendering lease plus this many fill the
/// scheduler's allowance per slot.
pub const MAX_AUTO: usize = kiln_proto::MAX_LEASES_PER_SLOT as usize - 1;

/// Weight of a new sample in the running averages.
const ALPHA: f64 = 0.2;

#[derive(Debug, Default, Clone, Copy)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, sample: Duration) {
        let x = sample.as_secs_f64();
        self.0 = Some(self.0.map_or(x, |v| v + ALPHA * (x - v)));
    }
}

/// The measurements and the prefetch they give.
#[derive(Debug)]
pub struct AutoPrefetch {
    floor: usize,
    slots: u32,
    round_trip: Ewma,
    per_task: Ewma,
    last_report: Option<Instant>,
    reported_at: HashMap<LeaseKey, Instant>,
}

impl AutoPrefetch {
    /// Never below `floor` (the configured prefetch).
    pub fn new(floor: usize, slots: usize) -> Self {
        Self {
            floor: floor.min(MAX_AUTO),
            slots: u32::try_from(slots.max(1)).unwrap_or(u32::MAX),
            round_trip: Ewma::default(),
            per_task: Ewma::default(),
            last_report: None,
            reported_at: HashMap::new(),
        }
    }

    pub fn reported(&mut self, key: LeaseKey, at: Instant) {
        if let Some(previous) = self.last_report.replace(at) {
            self.per_task.add(at.saturating_duration_since(previous) * self.slots);
        }
        self.reported_at.insert(key, at);
    }

    pub fn acked(&mut self, key: LeaseKey, at: Instant) {
        if let Some(sent) = self.reported_at.remove(&key) {
            self.round_trip.add(at.saturating_duration_since(sent));
        }
    }

    /// A lease that ends without a report (revoked, released) leaves nothing to time.
    pub fn forget(&mut self, key: LeaseKey) {
        self.reported_at.remove(&key);
    }

    /// The prefetch to hold now.
    pub fn prefetch(&self) -> usize {
        match (self.round_trip.0, self.per_task.0) {
            (Some(rtt), Some(per_task)) => {
                let needed = if per_task <= 0.0 { MAX_AUTO as f64 } else { (rtt / per_task).ceil() };
                (needed.min(MAX_AUTO as f64) as usize).max(self.floor)
            }
            _ => self.floor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` reports `every` apart, each acked `rtt` later, from a worker with `slots` slots.
    fn run(p: &mut AutoPrefetch, n: u64, every_ms: u64, rtt_ms: u64) {
        let t0 = Instant::now();
        for i in 0..n {
            let at = t0 + Duration::from_millis(i * every_ms);
            p.reported((i, 1), at);
            p.acked((i, 1), at + Duration::from_millis(rtt_ms));
        }
    }

    #[test]
    fn the_prefetch_covers_the_round_trip_with_tasks_of_the_measured_length() {
        let mut lan = AutoPrefetch::new(1, 8);
        assert_eq!(lan.prefetch(), 1, "the configured prefetch until something is measured");
        run(&mut lan, 50, 60, 5); // 8 slots, a report every 60 ms: 480 ms a task
        assert_eq!(lan.prefetch(), 1, "a LAN round trip is hidden by one task");

        let mut wan = AutoPrefetch::new(1, 8);
        run(&mut wan, 50, 3, 80); // 24 ms a task, 80 ms round trip
        assert_eq!(wan.prefetch(), 4);

        let mut noop = AutoPrefetch::new(2, 8);
        run(&mut noop, 50, 0, 80);
        assert_eq!(noop.prefetch(), MAX_AUTO, "capped where the scheduler's limit is");

        let mut slow = AutoPrefetch::new(3, 8);
        run(&mut slow, 50, 250, 80);
        assert_eq!(slow.prefetch(), 3, "never below the configured prefetch");
    }

    #[test]
    fn leases_without_a_report_leave_no_trace() {
        let t0 = Instant::now();
        let mut p = AutoPrefetch::new(1, 4);
        p.reported((1, 1), t0);
        p.forget((1, 1));
        p.acked((1, 1), t0 + Duration::from_secs(5));
        assert_eq!(p.prefetch(), 1);
        assert!(p.reported_at.is_empty());
    }
}
