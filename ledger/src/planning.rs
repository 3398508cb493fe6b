//! Work-stealing and backup planning: which tasks an idle worker should take from busier or
//! slower ones. Pure reads of the ledger plus what the shell knows from heartbeats (which leases
//! have started, and when); the plan becomes a `Steal` or `Backup` command, and `apply` re-checks
//! every task in it, because the ledger may have moved on before the command is committed.

use kiln_types::{TaskId, WorkerId};

use crate::records::WorkerRecord;
use crate::Ledger;
use crate::Millis;

/// A worker tasks may be stolen from: its slots, its id, and its stealable leases.
type Victim<'a> = (u64, &'a WorkerId, Vec<(TaskId, u32)>);

impl Ledger {
    /// Which tasks an idle `thief` should steal, at most `max`: tasks leased to other connected
    /// workers, in the thief's queues, never stolen before, and not started (`started` answers
    /// from what the workers' heartbeats say; a task that started since is still safe to steal,
    /// the first completion counts). Victims are taken one task at a time from the deepest buffer
    /// (unstarted tasks per slot), so the load evens out instead of draining one worker. A worker
    /// much faster than the thief is left alone: it would start the task sooner than the thief
    /// would finish it (the thief must have at least two thirds of its speed).
    ///
    /// Pure and deterministic: equal inputs give equal plans. `apply(Steal)` re-checks each task.
    pub fn steal_plan(&self, thief: &WorkerId, max: u32, started: &dyn Fn(TaskId, u32) -> bool) -> Vec<(TaskId, u32)> {
        let Some(me) = self.workers.get(thief) else { return Vec::new() };
        if !me.connected || me.draining || max == 0 {
            return Vec::new();
        }
        let speed = |w: &WorkerRecord| u64::from(if w.spec.speed_milli == 0 { 1000 } else { w.spec.speed_milli });
        let my_speed = speed(me);
        // Per victim: its stealable tasks, the ones it would start last at the end.
        let mut victims: Vec<Victim<'_>> = Vec::new();
        for (id, record) in &self.workers {
            if id == thief || !record.connected || my_speed * 3 < speed(record) * 2 {
                continue;
            }
            let Some(held) = self.ix.by_worker.get(id) else { continue };
            let stealable: Vec<(TaskId, u32)> = held
                .iter()
                .filter_map(|t| self.tasks.get(t))
                .filter(|t| {
                    t.stolen_from.is_none() && me.spec.queues.contains(&t.job.queue) && !started(t.id, t.lease_seq)
                })
                .map(|t| (t.id, t.lease_seq))
                .collect();
            if !stealable.is_empty() {
                victims.push((u64::from(record.spec.slots.max(1)), id, stealable));
            }
        }
        let mut plan = Vec::new();
        while plan.len() < max as usize {
            // Deepest buffer first: most unstarted tasks per slot; ties by worker id.
            let deepest = victims.iter_mut().filter(|(_, _, s)| !s.is_empty()).max_by(|(sa, ia, a), (sb, ib, b)| {
                ((a.len() as u64) * sb).cmp(&((b.len() as u64) * sa)).then_with(|| ib.cmp(ia))
            });
            let Some((_, _, stealable)) = deepest else { break };
            if let Some(task) = stealable.pop() {
                plan.push(task);
            }
        }
        plan
    }

    /// Which tasks an idle `thief` should render a backup copy of, at most `max`, once nothing is
    /// ready and nothing unstarted is left to steal: tasks that workers at most half as fast have
    /// been rendering for at least `min_age_ms` (`started_at` answers from their heartbeats; `None`
    /// for a task not known to have started). Render times are heavy-tailed, so a task that has
    /// run long is likely to run long still — for a Pareto tail of shape 1.5, twice as long again
    /// — while a fresh start on the thief takes its whole length divided by the thief's speed. The
    /// tasks where the copy is expected to save the most time come first: elapsed × (2·thief speed
    /// − 3·holder speed). Tasks copied or stolen before are left alone.
    ///
    /// Pure and deterministic, like [`Self::steal_plan`].
    pub fn backup_plan(
        &self,
        thief: &WorkerId,
        max: u32,
        now: Millis,
        min_age_ms: i64,
        started_at: &dyn Fn(TaskId, u32) -> Option<Millis>,
    ) -> Vec<(TaskId, u32)> {
        let Some(me) = self.workers.get(thief) else { return Vec::new() };
        if !me.connected || me.draining || max == 0 {
            return Vec::new();
        }
        let speed = |w: &WorkerRecord| i128::from(if w.spec.speed_milli == 0 { 1000 } else { w.spec.speed_milli });
        let my_speed = speed(me);
        let mut candidates: Vec<(std::cmp::Reverse<i128>, TaskId, u32)> = Vec::new();
        for (id, record) in &self.workers {
            let holder_speed = speed(record);
            if id == thief || holder_speed * 2 > my_speed {
                continue;
            }
            let Some(held) = self.ix.by_worker.get(id) else { continue };
            for t in held.iter().filter_map(|t| self.tasks.get(t)) {
                if t.stolen_from.is_some() || !me.spec.queues.contains(&t.job.queue) {
                    continue;
                }
                let Some(elapsed) = started_at(t.id, t.lease_seq).map(|at| now.saturating_sub(at)) else { continue };
                if elapsed >= min_age_ms {
                    let saving = i128::from(elapsed) * (2 * my_speed - 3 * holder_speed);
                    candidates.push((std::cmp::Reverse(saving), t.id, t.lease_seq));
                }
            }
        }
        candidates.sort_unstable();
        candidates.into_iter().take(max as usize).map(|(_, id, seq)| (id, seq)).collect()
    }
}
