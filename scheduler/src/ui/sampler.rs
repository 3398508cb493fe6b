//! The dashboard's memory of the last hour, and the stream of live figures.
//!
//! The ledger keeps counts, not a time series, so this node samples its cumulative counters
//! (tasks succeeded, attempts failed) once a second and keeps the first sample of each minute:
//! the difference between consecutive minutes is that minute's completions and failures. Each
//! sample also becomes the [`Overview`] every open page receives over Server-Sent Events. The
//! history starts when this node starts; it is the node's own view, like everything on the page.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::overview::Overview;
use crate::handle::Handle;
use crate::node::now_ms;
use crate::sessions::Hub;

/// Minutes of history kept (the chart shows the last hour).
pub const MINUTES: usize = 60;

/// Completions and failed attempts in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub completions: u64,
    pub failures: u64,
}

/// Cumulative counters at the first sample of each minute, oldest first.
#[derive(Debug, Default)]
pub struct History {
    marks: VecDeque<(i64, u64, u64)>,
    latest: Option<(i64, u64, u64)>,
}

impl History {
    /// Records the cumulative `completions` and `failures` seen at `now_ms`.
    pub fn record(&mut self, now_ms: i64, completions: u64, failures: u64) {
        let minute = now_ms.div_euclid(60_000);
        if self.marks.back().is_none_or(|(m, _, _)| *m < minute) {
            self.marks.push_back((minute, completions, failures));
            while self.marks.len() > MINUTES + 1 {
                self.marks.pop_front();
            }
        }
        self.latest = Some((minute, completions, failures));
    }

    /// Per-minute figures for the `MINUTES` minutes up to the current one; minutes this node did
    /// not see are absent.
    pub fn minutes(&self) -> Vec<Minute> {
        let Some(latest) = self.latest else { return Vec::new() };
        let mut out = Vec::with_capacity(MINUTES);
        let ends = self.marks.iter().skip(1).copied().chain(std::iter::once(latest));
        for (start, end) in self.marks.iter().zip(ends) {
            // Only consecutive marks measure one minute; a gap (the node was busy or stopped)
            // would smear several minutes into one.
            if end.0 == start.0 + 1 || (end == latest && end.0 == start.0) {
                out.push(Minute {
                    minute: start.0,
                    completions: end.1.saturating_sub(start.1),
                    failures: end.2.saturating_sub(start.2),
                });
            }
        }
        out.retain(|m| m.minute > latest.0 - MINUTES as i64);
        out
    }

    /// Completions per minute over the last five whole minutes, if this node saw them.
    pub fn recent_rate(&self) -> Option<(f64, f64)> {
        let minutes = self.minutes();
        let current = self.latest?.0;
        let whole: Vec<&Minute> = minutes.iter().filter(|m| m.minute < current).rev().take(5).collect();
        if whole.is_empty() {
            return None;
        }
        let n = whole.len() as f64;
        Some((
            whole.iter().map(|m| m.completions as f64).sum::<f64>() / n,
            whole.iter().map(|m| m.failures as f64).sum::<f64>() / n,
        ))
    }
}

/// What one sample produced, for every page's live values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub minute: i64,
    pub node: String,
    pub values: BTreeMap<String, String>,
}

/// The history and the latest snapshot, shared by the pages and the event streams.
pub struct Sampler {
    pub history: Mutex<History>,
    pub latest: watch::Sender<Snapshot>,
}

impl Sampler {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { history: Mutex::new(History::default()), latest: watch::channel(Snapshot::default()).0 })
    }

    pub fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A panic while recording leaves a consistent history (each step is one push/pop).
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one sample: reads the ledger, extends the history, publishes the snapshot.
    pub async fn sample(&self, handle: &Handle, hub: &Hub) -> Result<(), crate::node::ProposeError> {
        let now = now_ms();
        let live = hub.live();
        let overview = handle.read(move |l, node| Overview::read(l, node, &live, now)).await?;
        let rate = {
            let mut history = self.history();
            history.record(now, overview.total.succeeded, overview.attempts_failed);
            history.recent_rate()
        };
        let snapshot = Snapshot {
            minute: now.div_euclid(60_000),
            node: super::html::node_line(&overview.node, now),
            values: overview.values(rate),
        };
        self.latest.send_if_modified(|old| {
            let changed = *old != snapshot;
            *old = snapshot;
            changed
        });
        Ok(())
    }

    /// Samples every second until the node stops.
    pub async fn run(self: Arc<Self>, handle: Handle, hub: Arc<Hub>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(crate::node::ProposeError::Stopped) = self.sample(&handle, &hub).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_differences_between_the_first_samples_of_consecutive_minutes() {
        let mut h = History::default();
        let t0 = 1_000 * 60_000; // minute 1000
        h.record(t0 + 5_000, 10, 1);
        h.record(t0 + 50_000, 14, 1);
        h.record(t0 + 60_000, 16, 2); // minute 1001 starts: minute 1000 saw 6 completions, 1 failure
        h.record(t0 + 90_000, 19, 2);
        let minutes = h.minutes();
        assert_eq!(
            minutes,
            vec![
                Minute { minute: 1000, completions: 6, failures: 1 },
                Minute { minute: 1001, completions: 3, failures: 0 },
            ]
        );
        assert_eq!(h.recent_rate(), Some((6.0, 1.0)));
    }

    #[test]
    fn a_gap_is_not_reported_as_one_busy_minute_and_old_minutes_fall_off() {
        let mut h = History::default();
        h.record(0, 0, 0);
        h.record(5 * 60_000, 50, 0); // four minutes unseen
        h.record(6 * 60_000, 55, 0);
        assert_eq!(
            h.minutes(),
            vec![Minute { minute: 5, completions: 5, failures: 0 }, Minute { minute: 6, completions: 0, failures: 0 }]
        );
        for m in 7..200 {
            h.record(m * 60_000, 55 + m as u64, 0);
        }
        let minutes = h.minutes();
        assert_eq!(minutes.len(), MINUTES);
        assert_eq!(minutes.last().map(|m| m.minute), Some(199));
        assert_eq!(minutes.first().map(|m| (m.minute, m.completions)), Some((140, 1)));
    }
}
