//! The ledger's invariants: what must hold after every command.
//!
//! Property tests call [`crate::Ledger::check_invariants`] after each step of a random command
//! sequence; the checks here are the ones a single state can prove. Checks that compare two states
//! (a stale report changes nothing, a terminal task stays terminal) live in the property tests.

use std::collections::BTreeSet;

use crate::task::TaskState;
use crate::Ledger;

pub(crate) fn check(ledger: &Ledger) -> Result<(), String> {
    let (tasks, workers, ix, collected, submitted_total) =
        (&ledger.tasks, &ledger.workers, &ledger.ix, ledger.collected, ledger.submitted_total);

    // Nothing is lost: every task ever admitted is either held or counted as collected.
    let held = tasks.len() as u64;
    if held + collected.all() != submitted_total {
        return Err(format!("lost tasks: {submitted_total} submitted, {held} held + {} collected", collected.all()));
    }
    if collected.queued + collected.leased != 0 {
        return Err("a task was collected before it finished".into());
    }

    for (id, t) in tasks {
        if *id != t.id {
            return Err(format!("task {} stored under id {id}", t.id));
        }
        let leased = t.state == TaskState::Leased;
        if leased != t.lease_expires_at.is_some() {
            return Err(format!("task {id} is {} but lease deadline is {:?}", t.state, t.lease_expires_at));
        }
        if !leased && t.stolen_from.is_some() {
            return Err(format!("task {id} is {} but still marked as stolen", t.state));
        }
        if t.stolen_from.as_ref().is_some_and(|(victim, _)| Some(victim) == t.worker.as_ref()) {
            return Err(format!("task {id} was stolen by the worker it was stolen from"));
        }
        if leased && t.worker.is_none() {
            return Err(format!("task {id} is leased to nobody"));
        }
        if t.state == TaskState::Queued && t.attempts >= t.job.max_attempts {
            return Err(format!("task {id} is queued after {} of {} attempts", t.attempts, t.job.max_attempts));
        }
        if t.attempts > t.job.max_attempts {
            return Err(format!("task {id} ran {} attempts, more than {}", t.attempts, t.job.max_attempts));
        }
        if t.state != TaskState::Queued && t.ready_at != 0 {
            return Err(format!("task {id} is {} with a retry time", t.state));
        }
        if t.state == TaskState::Succeeded && t.result.is_none() {
            return Err(format!("task {id} succeeded without a result"));
        }
        if t.history.first().map(|e| e.kind) != Some(crate::EventKind::Submitted) {
            return Err(format!("task {id} history does not start with its submission"));
        }
    }

    // Indexes agree with the record: counts, queues, deadlines, leases per worker.
    let rebuilt = ledger.rebuilt_indexes();
    if rebuilt != *ix {
        let what = if rebuilt.counts != ix.counts {
            format!("counts {:?} != {:?}", ix.counts, rebuilt.counts)
        } else if rebuilt.ready != ix.ready {
            "ready queues".to_owned()
        } else if rebuilt.by_worker != ix.by_worker {
            "leases per worker".to_owned()
        } else if rebuilt.queue_counts != ix.queue_counts {
            format!("queue counts {:?} != {:?}", ix.queue_counts, rebuilt.queue_counts)
        } else if rebuilt.sums != ix.sums {
            "the record hashes behind the digest (a change bypassed transition or update_worker)".to_owned()
        } else {
            "deadline, backoff, request or finished index".to_owned()
        };
        return Err(format!("indexes drifted from the tasks: {what}"));
    }

    // One holder per task: per-worker lease sets are disjoint and match each worker's count.
    let mut seen = BTreeSet::new();
    for (worker, ids) in &ix.by_worker {
        for id in ids {
            if !seen.insert(*id) {
                return Err(format!("task {id} is leased to two workers"));
            }
        }
        if let Some(record) = workers.get(worker) {
            if record.leased as usize != ids.len() {
                return Err(format!("worker {worker} shows {} leases but holds {}", record.leased, ids.len()));
            }
        }
    }
    for (id, record) in workers {
        if record.leased > 0 && !ix.by_worker.contains_key(id) {
            return Err(format!("worker {id} shows {} leases but holds none", record.leased));
        }
    }
    check_batches(ledger)
}

/// Batches agree with their tasks: each member is in the ledger and not yet folded, each batch's
/// live count is its members still queued or leased, and no window is overrun.
fn check_batches(ledger: &Ledger) -> Result<(), String> {
    let batches = &ledger.batches;
    let mut live = std::collections::BTreeMap::<u64, u64>::new();
    for (task, batch) in &batches.members {
        let Some(t) = ledger.tasks.get(task) else {
            return Err(format!("task {task} of batch {batch} is gone but still a member"));
        };
        if matches!(t.state, TaskState::Succeeded | TaskState::Cancelled) {
            return Err(format!("task {task} of batch {batch} is {} but was not folded", t.state));
        }
        if !batches.records.contains_key(batch) {
            return Err(format!("task {task} belongs to batch {batch}, which does not exist"));
        }
        if !t.state.is_terminal() {
            *live.entry(*batch).or_default() += 1;
        }
    }
    for (id, b) in &batches.records {
        let members = live.get(id).copied().unwrap_or(0);
        if b.live != members {
            return Err(format!("batch {id} counts {} live tasks but holds {members}", b.live));
        }
        let c = b.counts;
        if c.succeeded + c.dead_lettered + c.cancelled + b.live > c.admitted {
            return Err(format!("batch {id} finished more tasks than it admitted: {c:?}, {} live", b.live));
        }
        if b.notified > b.events {
            return Err(format!("batch {id} notified {} of {} events", b.notified, b.events));
        }
    }
    let mut rebuilt = batches.clone();
    rebuilt.rebuild_sum();
    if rebuilt.members_sum != batches.members_sum {
        return Err("the batch membership sum behind the digest drifted".into());
    }
    Ok(())
}
