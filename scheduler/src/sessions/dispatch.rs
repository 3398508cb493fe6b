//! The dispatcher: leases ready tasks to the sessions that want them, and plans work stealing for
//! the ones that want work but find nothing ready.
//!
//! Each round reads the ledger once, on the node thread, for lookups only: is each wanting worker
//! registered, and is anything ready in its queues. Steal planning walks every lease of every
//! connected worker, so it is a second read made only when some wanting worker is idle, and at
//! most once per [`STEAL_PLAN_EVERY`]: its inputs (the workers' heartbeats) change at heartbeat
//! rate, and the node thread has consensus work to do in between.
//!
//! Every lease of a round is one hand-over to the node (`propose_many`), so they share one Raft
//! entry; deliveries are bounded by [`SEND_TIMEOUT`] so one worker that stopped reading cannot
//! stall the leasing to all the others.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kiln_ledger::{Command, Lease, Ledger, Outcome};
use kiln_types::{TaskId, WorkerId};
use tokio::time::Instant;

use super::registry::StealInputs;
use super::Hub;
use crate::convert::{self, LeaseKey};
use crate::node::now_ms;

/// How long a message to a worker may wait for room on its stream before it counts as undelivered.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry backoffs end silently; the dispatcher polls for them at this rate.
const POLL: Duration = Duration::from_millis(250);
/// Steal plans are made at most this often.
pub(super) const STEAL_PLAN_EVERY: Duration = Duration::from_millis(100);

/// Most leases a worker holds per slot (rendering and prefetched together), however much it asks
/// for: a `Want` beyond this is clipped, so no session can take the whole queue and sit on it.
/// Workers ask for `slots × (1 + prefetch)`; this leaves room for a prefetch of up to 15.
pub const MAX_HELD_PER_SLOT: u32 = kiln_proto::MAX_LEASES_PER_SLOT;

/// One round's lookups: who can lease now, who is idle (with the room it has), who is unknown.
struct Round {
    ready: Vec<(WorkerId, u32)>,
    idle: Vec<(WorkerId, u32)>,
    unregistered: Vec<WorkerId>,
}

/// On the node thread: lookups only, one per wanting worker.
fn classify(l: &Ledger, wanting: Vec<(WorkerId, u32)>, now: i64) -> Round {
    let mut round = Round { ready: Vec::new(), idle: Vec::new(), unregistered: Vec::new() };
    for (worker, want) in wanting {
        let Some(record) = l.worker(&worker).filter(|r| r.connected) else {
            round.unregistered.push(worker);
            continue;
        };
        let room = record.spec.slots.saturating_mul(MAX_HELD_PER_SLOT).saturating_sub(record.leased);
        let want = want.min(room);
        if want == 0 {
            continue;
        }
        if l.has_ready_for(&worker, now) {
            round.ready.push((worker, want));
        } else {
            // Stealing fills free slots only (fewer leases than slots), never the prefetch.
            let free = record.spec.slots.saturating_sub(record.leased).min(want);
            if free > 0 {
                round.idle.push((worker, free));
            }
        }
    }
    round
}

/// What one idle worker takes in a round: unstarted tasks to steal, or, when none are left,
/// backup copies of long-running ones.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StealPlan {
    pub thief: WorkerId,
    pub unstarted: Vec<(TaskId, u32)>,
    pub backups: Vec<(TaskId, u32)>,
}

/// A task must have been rendering this long (since the first heartbeat that listed it as started)
/// before a faster worker starts a backup copy: two heartbeats, so that the copier, idle anyway,
/// starts early in the tail, but a task that is just finishing is left be.
pub(super) fn backup_min_age(heartbeat_interval: Duration) -> i64 {
    i64::try_from((heartbeat_interval * 2).as_millis()).unwrap_or(i64::MAX)
}

/// Steal plans for idle workers, each taking up to its free slots of unstarted tasks or, if there
/// are none, that many backup copies. Plans of one round never share a task.
pub(super) fn plan_steals(
    l: &Ledger,
    idle: Vec<(WorkerId, u32)>,
    inputs: &StealInputs,
    now: i64,
    min_age_ms: i64,
) -> Vec<StealPlan> {
    let mut taken: BTreeSet<LeaseKey> = BTreeSet::new();
    let mut plans = Vec::new();
    for (thief, free) in idle {
        let unstarted = l
            .steal_plan(&thief, free, &|t, seq| !inputs.unstarted.contains(&(t.0, seq)) || taken.contains(&(t.0, seq)));
        let backups = if unstarted.is_empty() {
            l.backup_plan(&thief, free, now, min_age_ms, &|t, seq| {
                if taken.contains(&(t.0, seq)) {
                    None
                } else {
                    inputs.started_at.get(&(t.0, seq)).copied()
                }
            })
        } else {
            Vec::new()
        };
        if !unstarted.is_empty() || !backups.is_empty() {
            taken.extend(unstarted.iter().chain(&backups).map(|(t, s)| (t.0, *s)));
            plans.push(StealPlan { thief, unstarted, backups });
        }
    }
    plans
}

impl Hub {
    /// Leases ready tasks to sessions that want them, until shutdown.
    pub(super) async fn run_dispatcher(self: Arc<Self>) {
        let mut next_steal_plan = Instant::now();
        // Idle workers were left waiting for the steal-plan limit: come back when it ends.
        let mut steal_pending = false;
        loop {
            let wait = if steal_pending { next_steal_plan.max(Instant::now()) } else { Instant::now() + POLL };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(wait) => {}
            }
            steal_pending = false;
            let wanting = self.registry.wanting();
            if wanting.is_empty() {
                continue;
            }
            let now = now_ms();
            let Ok(Some(round)) =
                self.handle.read(move |l, node| node.is_leader.then(|| classify(l, wanting, now))).await
            else {
                continue;
            };
            for worker in round.unregistered {
                self.register_again(&worker).await;
            }
            let mut steals = Vec::new();
            if self.config.work_stealing && !round.idle.is_empty() {
                if Instant::now() >= next_steal_plan {
                    next_steal_plan = Instant::now() + STEAL_PLAN_EVERY;
                    steals = self.plan_steals(round.idle, now).await;
                } else {
                    steal_pending = true;
                }
            }
            let stolen = steals.into_iter().map(|plan| {
                let hub = self.clone();
                async move { hub.steal_to(plan).await }
            });
            futures::future::join(self.lease_to(round.ready), futures::future::join_all(stolen)).await;
        }
    }

    async fn plan_steals(&self, idle: Vec<(WorkerId, u32)>, now: i64) -> Vec<StealPlan> {
        let inputs = self.registry.steal_inputs();
        let min_age_ms = backup_min_age(self.config.heartbeat_interval);
        self.handle
            .read(
                move |l, node| {
                    if node.is_leader {
                        plan_steals(l, idle, &inputs, now, min_age_ms)
                    } else {
                        Vec::new()
                    }
                },
            )
            .await
            .unwrap_or_default()
    }

    /// A live session whose worker the ledger counts as disconnected would never be leased to:
    /// register it again.
    async fn register_again(&self, worker: &WorkerId) {
        let Some(spec) = self.registry.with(worker, |s| s.spec.clone()) else { return };
        tracing::warn!(%worker, "the ledger had this connected worker as disconnected; registering it again");
        match crate::upgrade::register_session(&self.handle, spec).await {
            Ok(Ok(Some(session))) => {
                self.registry.with(worker, |s| s.ledger_session = Some(session));
            }
            Ok(Ok(None)) => {}
            Ok(Err(r)) => tracing::debug!(%worker, rejection = %r, "registration refused"),
            Err(e) => tracing::debug!(%worker, error = %e, "registration not proposed"),
        }
        self.wake.notify_one();
    }

    async fn steal_to(&self, plan: StealPlan) {
        let thief = plan.thief.clone();
        let backup = !plan.backups.is_empty();
        let cmd = if backup {
            Command::Backup { thief: plan.thief, tasks: plan.backups }
        } else {
            Command::Steal { thief: plan.thief, tasks: plan.unstarted }
        };
        match self.handle.propose(cmd).await {
            Ok(Ok(Outcome::Leased(leases))) => {
                if !leases.is_empty() {
                    if backup {
                        tracing::info!(%thief, count = leases.len(), "leased backup copies of long-running tasks to an idle, faster worker");
                    } else {
                        tracing::info!(%thief, count = leases.len(), "stole unstarted tasks for an idle worker");
                    }
                    self.deliver(thief, leases).await;
                }
            }
            Ok(other) => tracing::debug!(%thief, ?other, "steal refused"),
            Err(e) => tracing::debug!(%thief, error = %e, "steal not proposed"),
        }
    }

    /// Leases to each worker up to the number of tasks it wants, and delivers them.
    async fn lease_to(&self, wanting: Vec<(WorkerId, u32)>) {
        if wanting.is_empty() {
            return;
        }
        let commands =
            wanting.iter().map(|(worker, want)| Command::Lease { worker: worker.clone(), max: *want }).collect();
        let outcomes = self.handle.propose_many(commands).await;
        let deliveries = wanting.into_iter().zip(outcomes).filter_map(|((worker, _), outcome)| match outcome {
            Ok(Ok(Outcome::Leased(leases))) if !leases.is_empty() => {
                for l in &leases {
                    self.kpis.lease_wait.observe_micros(u64::try_from(l.waited_ms).unwrap_or(0).saturating_mul(1000));
                }
                Some(self.deliver(worker, leases))
            }
            Ok(Ok(_)) => None,
            Ok(Err(rejection)) => {
                tracing::debug!(%worker, %rejection, "lease refused");
                None
            }
            Err(e) => {
                tracing::debug!(%worker, error = %e, "lease not proposed");
                None
            }
        });
        futures::future::join_all(deliveries).await;
    }

    /// Pushes freshly leased tasks down the worker's stream, or gives them back if it is gone.
    async fn deliver(&self, worker: WorkerId, leases: Vec<Lease>) {
        let tx = self.registry.with(&worker, |s| {
            s.want = s.want.saturating_sub(leases.len() as u32);
            s.tx.clone()
        });
        let refs: Vec<(TaskId, u32)> = leases.iter().map(|l| (l.task, l.lease_seq)).collect();
        let delivered = match tx {
            Some(tx) => tx.send_timeout(Ok(convert::assign_to_pb(leases)), SEND_TIMEOUT).await.is_ok(),
            None => false,
        };
        if !delivered {
            // The session vanished between lease and delivery: give the tasks straight back
            // instead of letting them wait out a lease TTL.
            let cmd = Command::Release { worker, leases: refs, reason: "session closed before delivery".into() };
            let _ = self.handle.propose(cmd).await;
            self.wake.notify_one();
        }
    }
}
