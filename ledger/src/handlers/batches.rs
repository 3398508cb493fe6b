//! `CreateBatch`, `AdmitBatch`, `BatchControl` and `BatchNotified`, and the hooks through which a
//! batch's tasks move its counters: a task that finishes is counted in its batch and, if it
//! succeeded or was cancelled, folded (dropped from the ledger) at the end of the command.

use std::collections::BTreeSet;

use kiln_types::{EncodeJob, TaskId};

use crate::batches::{
    BadLine, BadLinePolicy, BatchAction, BatchCounts, BatchRecord, BatchSpec, BatchState, Cursor, MAX_KEPT_BAD_LINES,
};
use crate::command::{Outcome, Rejection};
use crate::engine::Step;
use crate::features::BATCHES;
use crate::task::TaskState;
use crate::{Ledger, Millis};

impl Ledger {
    pub(crate) fn create_batch(&mut self, spec: BatchSpec, now: Millis) -> Result<Outcome, Rejection> {
        self.features.require(BATCHES, "CreateBatch")?;
        if let Some(existing) = self.batches.by_request(&spec.request_id) {
            return Ok(Outcome::BatchCreated { batch: existing.id, created: false });
        }
        if spec.window == 0 {
            return Err(Rejection::InvalidBatch("the window must hold at least one task".into()));
        }
        if spec.source.is_empty() {
            return Err(Rejection::InvalidBatch("the batch names no source".into()));
        }
        self.batches.last_id += 1;
        let id = self.batches.last_id;
        let record = BatchRecord {
            id,
            spec,
            state: BatchState::Running,
            counts: BatchCounts::default(),
            cursor: Cursor::default(),
            source_done: false,
            source_bytes: 0,
            live: 0,
            bad_lines: Vec::new(),
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            events: 0,
            notified: 0,
        };
        self.batches.records.insert(id, record);
        Ok(Outcome::BatchCreated { batch: id, created: true })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn admit_batch(
        &mut self,
        batch: u64,
        (from, to): (Cursor, Cursor),
        jobs: Vec<(u64, EncodeJob)>,
        bad_lines: Vec<BadLine>,
        end: bool,
        source_bytes: u64,
        step: &mut Step,
    ) -> Result<Outcome, Rejection> {
        self.features.require(BATCHES, "AdmitBatch")?;
        let now = step.now;
        let record = self.batches.records.get(&batch).ok_or(Rejection::UnknownBatch(batch))?;
        if record.state != BatchState::Running {
            return Err(Rejection::BatchNotRunning { batch, state: record.state.to_string() });
        }
        if record.cursor != from || to < from {
            return Err(Rejection::StaleCursor { batch, committed: record.cursor, proposed: from });
        }
        let more = jobs.len() as u64;
        if record.live + more > record.spec.window {
            return Err(Rejection::BatchWindowFull { batch, live: record.live, window: record.spec.window, more });
        }
        let live = self.tasks.len() as u64;
        if live + more > self.config.max_live_tasks {
            return Err(Rejection::Full { live, limit: self.config.max_live_tasks });
        }
        let mut bad = bad_lines;
        let (mut admitted, mut duplicates) = (0u64, 0u64);
        let mut queues = BTreeSet::new();
        for (line, job) in jobs {
            match self.ix.by_request.get(&job.request_id).map(|id| (*id, self.tasks.get(id).map(|t| &t.job))) {
                Some((_, Some(existing))) if *existing == job => duplicates += 1,
                Some((task, _)) => bad.push(BadLine {
                    line,
                    reason: format!("request_id {} is used by task {task} with a different job", job.request_id),
                }),
                None => {
                    queues.insert(job.queue.clone());
                    let id = self.admit(job, now);
                    self.batches.add_member(id, batch);
                    admitted += 1;
                }
            }
        }
        bad.sort_by_key(|b| b.line);
        let Some(record) = self.batches.records.get_mut(&batch) else {
            return Err(Rejection::UnknownBatch(batch));
        };
        record.counts.admitted += admitted;
        record.counts.duplicates += duplicates;
        record.counts.bad_lines += bad.len() as u64;
        record.live += admitted;
        record.cursor = to;
        record.source_done = end;
        record.source_bytes = source_bytes;
        record.updated_at = now;
        let first_bad = bad.first().cloned();
        let room = MAX_KEPT_BAD_LINES.saturating_sub(record.bad_lines.len());
        record.bad_lines.extend(bad.into_iter().take(room));
        if let (BadLinePolicy::Stop, Some(first)) = (record.spec.on_bad_line, first_bad) {
            record.error = Some(format!("line {}: {}", first.line, first.reason));
            finish_batch(record, BatchState::Failed, now);
        }
        self.settle(batch, now);
        step.tasks_ready(queues);
        Ok(Outcome::Count(admitted))
    }

    pub(crate) fn control_batch(
        &mut self,
        batch: u64,
        action: BatchAction,
        step: &mut Step,
    ) -> Result<Outcome, Rejection> {
        self.features.require(BATCHES, "BatchControl")?;
        let now = step.now;
        let record = self.batches.records.get_mut(&batch).ok_or(Rejection::UnknownBatch(batch))?;
        let refuse = |state: BatchState| Err(Rejection::BatchNotRunning { batch, state: state.to_string() });
        match (action, record.state) {
            (BatchAction::Pause, BatchState::Running) => record.state = BatchState::Paused,
            (BatchAction::Resume, BatchState::Paused) => record.state = BatchState::Running,
            (BatchAction::Pause, BatchState::Paused) | (BatchAction::Resume, BatchState::Running) => {
                return Ok(Outcome::Count(0));
            }
            (BatchAction::Cancel, state) if state.is_final() => return refuse(state),
            (BatchAction::Cancel, _) => {
                finish_batch(record, BatchState::Cancelled, now);
                let unstarted: Vec<TaskId> = self
                    .batches
                    .tasks_of(batch)
                    .filter(|id| self.tasks.get(id).is_some_and(|t| t.state == TaskState::Queued))
                    .collect();
                for id in &unstarted {
                    // Queued tasks only: cancelling one cannot be refused.
                    let _ = self.cancel(*id, step);
                }
                return Ok(Outcome::Count(unstarted.len() as u64));
            }
            (_, state) => return refuse(state),
        }
        record.updated_at = now;
        self.settle(batch, now);
        Ok(Outcome::Done)
    }

    pub(crate) fn batch_notified(&mut self, batch: u64, event: u32) -> Result<Outcome, Rejection> {
        self.features.require(BATCHES, "BatchNotified")?;
        let record = self.batches.records.get_mut(&batch).ok_or(Rejection::UnknownBatch(batch))?;
        record.notified = record.notified.max(event.min(record.events));
        Ok(Outcome::Done)
    }

    /// A running batch whose source is read to the end and whose tasks have all finished is done.
    fn settle(&mut self, batch: u64, now: Millis) {
        if let Some(record) = self.batches.records.get_mut(&batch) {
            if record.state == BatchState::Running && record.source_done && record.live == 0 {
                finish_batch(record, BatchState::Done, now);
            }
        }
    }

    /// Hook: a task reached `state` (terminal). Counts it in its batch and marks it for folding.
    pub(crate) fn batch_task_finished(&mut self, id: TaskId, state: TaskState, now: Millis) {
        let Some(batch) = self.batches.batch_of(id) else { return };
        if let Some(record) = self.batches.records.get_mut(&batch) {
            record.live = record.live.saturating_sub(1);
            record.updated_at = now;
            match state {
                TaskState::Succeeded => record.counts.succeeded += 1,
                TaskState::DeadLettered => record.counts.dead_lettered += 1,
                TaskState::Cancelled => record.counts.cancelled += 1,
                TaskState::Queued | TaskState::Leased => {}
            }
        }
        if matches!(state, TaskState::Succeeded | TaskState::Cancelled) {
            self.folding.push(id);
        }
        self.settle(batch, now);
    }

    /// Hook: a task failed an attempt.
    pub(crate) fn batch_task_failed(&mut self, id: TaskId) {
        if let Some(record) = self.batches.batch_of(id).and_then(|b| self.batches.records.get_mut(&b)) {
            record.counts.failed += 1;
        }
    }

    /// Hook: a dead letter went back to its queue. A batch that had finished runs again.
    pub(crate) fn batch_task_requeued(&mut self, id: TaskId, now: Millis) {
        if let Some(record) = self.batches.batch_of(id).and_then(|b| self.batches.records.get_mut(&b)) {
            record.counts.dead_lettered = record.counts.dead_lettered.saturating_sub(1);
            record.live += 1;
            record.updated_at = now;
            if record.state == BatchState::Done {
                record.state = BatchState::Running;
                record.finished_at = None;
            }
        }
    }

    /// Drops the batch tasks that finished during this command: their batch has counted them and
    /// their outputs are in the store, so the ledger need not hold them.
    pub(crate) fn fold_finished(&mut self) {
        for id in std::mem::take(&mut self.folding) {
            self.drop_task(id);
        }
    }
}

fn finish_batch(record: &mut BatchRecord, state: BatchState, now: Millis) {
    record.state = state;
    record.finished_at = Some(now);
    record.updated_at = now;
    record.events += 1;
}
