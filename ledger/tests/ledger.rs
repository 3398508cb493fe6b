//! The ledger's behaviour, as scenarios (one story each) and as properties over random command
//! sequences with clock jumps. Everything runs in memory: the ledger is a pure value.

use std::collections::BTreeSet;

use kiln_ledger::{
    Command, DeadLetterFilter, Effect, EventKind, Lease, Ledger, LedgerConfig, Outcome, Rejection, TaskFilter,
    TaskResult, TaskState, WorkerSpec,
};
use kiln_types::{AssetGuid, EncodeJob, QueueName, RendererName, RequestId, TaskId, WorkerId};
use proptest::prelude::*;

const TTL: i64 = 10_000;

fn config() -> LedgerConfig {
    LedgerConfig {
        lease_ttl_ms: TTL,
        backoff_base_ms: 1_000,
        backoff_max_ms: 8_000,
        gc_ttl_ms: 60_000,
        max_live_tasks: 1_000,
        max_history: 8,
    }
}

fn job(n: u32) -> EncodeJob {
    job_in(n, "default", 0)
}

fn job_in(n: u32, queue: &str, priority: i32) -> EncodeJob {
    EncodeJob {
        request_id: RequestId::new(format!("req-{n}")).expect("request id"),
        release_id: i64::from(n % 3),
        asset_id: i64::from(n),
        asset_guid: AssetGuid::new(format!("masters/{n}.wav")).expect("guid"),
        derivative_assets: [RendererName::new("loudness").expect("renderer")].into_iter().collect(),
        queue: QueueName::new(queue).expect("queue"),
        priority,
        max_attempts: 3,
    }
}

fn wid(name: &str) -> WorkerId {
    WorkerId::new(name).expect("worker id")
}

fn spec(name: &str, queues: &[&str]) -> WorkerSpec {
    WorkerSpec {
        id: wid(name),
        hostname: name.into(),
        slots: 2,
        cores: 2,
        memory_bytes: 1 << 30,
        speed_milli: 1000,
        queues: queues.iter().map(|q| QueueName::new(*q).expect("queue")).collect(),
        version: "test".into(),
    }
}

fn result() -> TaskResult {
    TaskResult { metadata_json: "{}".into(), ..TaskResult::default() }
}

/// Applies a command and checks every invariant afterwards.
fn apply(l: &mut Ledger, cmd: Command, now: i64) -> (Result<Outcome, Rejection>, Vec<Effect>) {
    let applied = l.apply(cmd, now);
    if let Err(e) = l.check_invariants() {
        panic!("invariant broken: {e}");
    }
    (applied.outcome, applied.effects)
}

/// Applies a command that must be accepted.
fn ok(l: &mut Ledger, cmd: Command, now: i64) -> Outcome {
    apply(l, cmd, now).0.expect("command accepted")
}

fn submit(l: &mut Ledger, jobs: Vec<EncodeJob>, now: i64) -> Vec<TaskId> {
    match apply(l, Command::Submit { jobs }, now).0 {
        Ok(Outcome::Submitted(r)) => r.into_iter().map(|s| s.task).collect(),
        other => panic!("submit: {other:?}"),
    }
}

fn lease(l: &mut Ledger, worker: &str, max: u32, now: i64) -> Vec<Lease> {
    match apply(l, Command::Lease { worker: wid(worker), max }, now).0 {
        Ok(Outcome::Leased(v)) => v,
        other => panic!("lease: {other:?}"),
    }
}

fn report(l: &mut Ledger, cmd: Command, now: i64) -> bool {
    match apply(l, cmd, now).0 {
        Ok(Outcome::Reported { accepted }) => accepted,
        other => panic!("report: {other:?}"),
    }
}

fn complete(l: &mut Ledger, lease: &Lease, worker: &str, now: i64) -> bool {
    report(
        l,
        Command::Complete { task: lease.task, lease_seq: lease.lease_seq, worker: wid(worker), result: result() },
        now,
    )
}

fn fail(l: &mut Ledger, lease: &Lease, worker: &str, permanent: bool, now: i64) -> bool {
    let cmd = Command::Fail {
        task: lease.task,
        lease_seq: lease.lease_seq,
        worker: wid(worker),
        error: "boom".into(),
        permanent,
    };
    report(l, cmd, now)
}

fn ledger_with_worker(names: &[&str]) -> Ledger {
    let mut l = Ledger::new(config());
    for n in names {
        ok(&mut l, Command::RegisterWorker { spec: spec(n, &["default"]) }, 0);
    }
    l
}

fn state(l: &Ledger, id: TaskId) -> TaskState {
    l.task(id).map(|t| t.state).expect("task exists")
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[test]
fn submit_is_idempotent_per_request_id() {
    let mut l = Ledger::new(config());
    let first = submit(&mut l, vec![job(1), job(2)], 0);
    let again = submit(&mut l, vec![job(2), job(1), job(3)], 5);
    assert_eq!(again[0], first[1]);
    assert_eq!(again[1], first[0]);
    assert_eq!(l.submitted_total(), 3);
    let mut changed = job(1);
    changed.priority = 9;
    let err = apply(&mut l, Command::Submit { jobs: vec![job(4), changed] }, 6).0.unwrap_err();
    assert!(matches!(err, Rejection::ConflictingRequest { .. }), "{err:?}");
    assert!(l.task_by_request(&RequestId::new("req-4").expect("id")).is_none(), "a rejected batch admits nothing");
}

#[test]
fn a_full_ledger_refuses_the_whole_batch_with_a_reason() {
    let mut l = Ledger::new(LedgerConfig { max_live_tasks: 3, ..config() });
    submit(&mut l, vec![job(1), job(2)], 0);
    let err = apply(&mut l, Command::Submit { jobs: vec![job(3), job(4)] }, 0).0.unwrap_err();
    assert_eq!(err, Rejection::Full { live: 2, limit: 3 });
    assert!(err.to_string().contains("retry when tasks complete"));
    assert_eq!(l.submitted_total(), 2);
}

#[test]
fn priority_first_then_fifo_and_only_the_workers_queues() {
    let mut l = Ledger::new(config());
    ok(&mut l, Command::RegisterWorker { spec: spec("w", &["default", "urgent"]) }, 0);
    let ids = submit(
        &mut l,
        vec![
            job_in(1, "default", 0),
            job_in(2, "default", 5),
            job_in(3, "other", 9),
            job_in(4, "urgent", 5),
            job_in(5, "default", 0),
        ],
        0,
    );
    let order: Vec<TaskId> = lease(&mut l, "w", 10, 1).into_iter().map(|x| x.task).collect();
    assert_eq!(order, vec![ids[1], ids[3], ids[0], ids[4]], "priority 5 (FIFO between them), then priority 0 FIFO");
    assert_eq!(state(&l, ids[2]), TaskState::Queued, "queue `other` is not the worker's");
}

#[test]
fn completion_records_result_and_history() {
    let mut l = ledger_with_worker(&["w"]);
    let id = submit(&mut l, vec![job(1)], 0)[0];
    let got = lease(&mut l, "w", 1, 10);
    assert_eq!(got[0].attempt, 1);
    assert!(complete(&mut l, &got[0], "w", 20));
    let t = l.task(id).expect("task");
    assert_eq!(t.state, TaskState::Succeeded);
    let kinds: Vec<EventKind> = t.history.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Submitted, EventKind::Leased, EventKind::Succeeded]);
    assert_eq!(l.rates_per_minute(30_000), (1, 0));
    assert_eq!(l.rates_per_minute(120_000), (0, 0), "the rate window is one minute");
    assert_eq!(l.worker(&wid("w")).map(|w| (w.completed, w.leased)), Some((1, 0)));
}

#[test]
fn transient_failures_back_off_exponentially_then_dead_letter() {
    let mut l = ledger_with_worker(&["w"]);
    let id = submit(&mut l, vec![job(1)], 0)[0];
    let mut now = 0;
    let mut waits = Vec::new();
    for attempt in 1..=3 {
        let got = lease(&mut l, "w", 1, now);
        assert_eq!(got.len(), 1, "attempt {attempt} leases the task");
        assert_eq!(got[0].attempt, attempt);
        assert!(fail(&mut l, &got[0], "w", false, now));
        if attempt < 3 {
            let ready_at = l.task(id).expect("task").ready_at;
            waits.push(ready_at - now);
            assert!(lease(&mut l, "w", 1, ready_at - 1).is_empty(), "not leasable during backoff");
            assert_eq!(l.counts().retrying, 1);
            now = ready_at;
        }
    }
    assert!(waits[0] >= 1_000 && waits[0] < 1_200, "first backoff ~ base: {waits:?}");
    assert!(waits[1] >= 2_000 && waits[1] < 2_400, "second backoff doubles: {waits:?}");
    let t = l.task(id).expect("task");
    assert_eq!(t.state, TaskState::DeadLettered);
    assert!(t.last_error.as_deref().is_some_and(|e| e.contains("3 of 3 attempts")), "{:?}", t.last_error);
}

#[test]
fn a_permanent_error_dead_letters_at_once_and_requeue_brings_it_back() {
    let mut l = ledger_with_worker(&["w"]);
    let ids = submit(&mut l, vec![job(1), job(2)], 0);
    let got = lease(&mut l, "w", 2, 0);
    assert!(fail(&mut l, &got[0], "w", true, 1));
    assert!(complete(&mut l, &got[1], "w", 1));
    assert_eq!(state(&l, ids[0]), TaskState::DeadLettered);
    assert!(l.task(ids[0]).and_then(|t| t.last_error.clone()).is_some_and(|e| e.starts_with("permanent error")));
    let none = apply(&mut l, Command::RequeueDeadLetters { filter: DeadLetterFilter::default() }, 2).0;
    assert_eq!(none, Ok(Outcome::Count(0)), "an empty filter selects nothing");
    let filter = DeadLetterFilter { error_contains: Some("boom".into()), ..DeadLetterFilter::default() };
    assert_eq!(apply(&mut l, Command::RequeueDeadLetters { filter }, 3).0, Ok(Outcome::Count(1)));
    let t = l.task(ids[0]).expect("task");
    assert_eq!((t.state, t.attempts), (TaskState::Queued, 0));
    assert_eq!(state(&l, ids[1]), TaskState::Succeeded, "requeue touches dead letters only");
}

#[test]
fn purge_removes_dead_letters_but_keeps_their_count() {
    let mut l = ledger_with_worker(&["w"]);
    let id = submit(&mut l, vec![job(1)], 0)[0];
    let got = lease(&mut l, "w", 1, 0);
    fail(&mut l, &got[0], "w", true, 0);
    let filter = DeadLetterFilter { task_ids: vec![id], ..DeadLetterFilter::default() };
    assert_eq!(apply(&mut l, Command::PurgeDeadLetters { filter }, 1).0, Ok(Outcome::Count(1)));
    assert!(l.task(id).is_none());
    assert_eq!(l.totals().dead_lettered, 1);
}

#[test]
fn an_expired_lease_requeues_revokes_and_ignores_the_stale_completion() {
    let mut l = ledger_with_worker(&["a", "b"]);
    let id = submit(&mut l, vec![job(1)], 0)[0];
    let first = lease(&mut l, "a", 1, 0);
    assert_eq!(l.next_deadline(), Some(TTL));
    let (_, effects) = apply(&mut l, Command::ExpireLeases, TTL - 1);
    assert!(effects.is_empty(), "nothing lapses early");
    let (outcome, effects) = apply(&mut l, Command::ExpireLeases, TTL);
    assert_eq!(outcome, Ok(Outcome::Count(1)));
    assert!(effects.iter().any(|e| matches!(e, Effect::Revoke { worker, .. } if *worker == wid("a"))));
    assert_eq!(l.task(id).map(|t| (t.state, t.attempts)), Some((TaskState::Queued, 1)));
    let second = lease(&mut l, "b", 1, TTL + 1);
    assert_eq!(second[0].attempt, 2);
    let before = l.task(id).cloned();
    assert!(!complete(&mut l, &first[0], "a", TTL + 2), "the old lease is stale");
    assert_eq!(l.task(id).cloned(), before, "a stale completion changes nothing");
    assert!(complete(&mut l, &second[0], "b", TTL + 3));
    assert!(!complete(&mut l, &second[0], "b", TTL + 4), "a duplicate completion is not counted twice");
    assert_eq!(l.totals().succeeded, 1);
}

#[test]
fn a_late_completion_of_the_latest_lease_is_kept() {
    let mut l = ledger_with_worker(&["a"]);
    let id = submit(&mut l, vec![job(1)], 0)[0];
    let got = lease(&mut l, "a", 1, 0);
    ok(&mut l, Command::ExpireLeases, TTL);
    assert!(complete(&mut l, &got[0], "a", TTL + 5), "no newer lease exists: the work counts");
    assert_eq!(state(&l, id), TaskState::Succeeded);
}

#[test]
fn heartbeats_renew_and_a_new_leader_grants_grace() {
    let mut l = ledger_with_worker(&["w"]);
    let id = submit(&mut l, vec![job(1)], 0)[0];
    lease(&mut l, "w", 1, 0);
    ok(&mut l, Command::Renew { worker: wid("w") }, 8_000);
    ok(&mut l, Command::ExpireLeases, TTL + 1);
    assert_eq!(state(&l, id), TaskState::Leased, "renewed at 8 s, so alive until 18 s");
    ok(&mut l, Command::GraceLeases { grace_ms: 30_000 }, 17_000);
    ok(&mut l, Command::ExpireLeases, 40_000);
    assert_eq!(state(&l, id), TaskState::Leased, "grace until 47 s");
    ok(&mut l, Command::ExpireLeases, 47_000);
    assert_eq!(state(&l, id), TaskState::Queued);
}

#[test]
fn release_and_drain_give_work_back_without_counting_an_attempt() {
    let mut l = ledger_with_worker(&["w"]);
    let ids = submit(&mut l, vec![job(1), job(2)], 0);
    let got = lease(&mut l, "w", 2, 0);
    ok(&mut l, Command::DrainWorker { worker: wid("w") }, 1);
    assert!(lease(&mut l, "w", 5, 1).is_empty(), "a draining worker gets nothing");
    let refs = got.iter().map(|x| (x.task, x.lease_seq)).collect();
    assert!(report(&mut l, Command::Release { worker: wid("w"), leases: refs, reason: "drain".into() }, 2));
    for id in ids {
        assert_eq!(l.task(id).map(|t| (t.state, t.attempts)), Some((TaskState::Queued, 0)));
    }
    assert!(!l.has_ready_for(&wid("w"), 3));
}

#[test]
fn cancel_revokes_a_running_task_and_refuses_a_finished_one() {
    let mut l = ledger_with_worker(&["w"]);
    let ids = submit(&mut l, vec![job(1), job(2)], 0);
    let got = lease(&mut l, "w", 1, 0);
    let (outcome, effects) = apply(&mut l, Command::Cancel { task: got[0].task }, 1);
    assert_eq!(outcome, Ok(Outcome::Done));
    assert!(matches!(&effects[..], [Effect::Revoke { .. }]));
    assert!(!complete(&mut l, &got[0], "w", 2), "a cancelled task stays cancelled");
    ok(&mut l, Command::Cancel { task: ids[1] }, 3);
    let err = apply(&mut l, Command::Cancel { task: ids[1] }, 4).0.unwrap_err();
    assert!(matches!(err, Rejection::AlreadyTerminal { .. }));
    assert_eq!(apply(&mut l, Command::Cancel { task: TaskId(999) }, 4).0, Err(Rejection::UnknownTask(TaskId(999))));
}

#[test]
fn garbage_collection_compacts_finished_tasks_into_counters() {
    let mut l = ledger_with_worker(&["w"]);
    let ids = submit(&mut l, vec![job(1), job(2)], 0);
    let got = lease(&mut l, "w", 1, 0);
    complete(&mut l, &got[0], "w", 1_000);
    assert_eq!(l.next_gc_at(), Some(61_000));
    assert_eq!(apply(&mut l, Command::CollectGarbage, 60_999).0, Ok(Outcome::Count(0)));
    assert_eq!(apply(&mut l, Command::CollectGarbage, 61_000).0, Ok(Outcome::Count(1)));
    assert!(l.task(got[0].task).is_none());
    assert_eq!(state(&l, ids[1]), TaskState::Queued, "unfinished tasks are never collected");
    assert_eq!((l.counts().succeeded, l.totals().succeeded), (0, 1));
}

#[test]
fn snapshots_round_trip_records_and_indexes() {
    let mut l = ledger_with_worker(&["w"]);
    submit(&mut l, (1..=20).map(job).collect(), 0);
    let got = lease(&mut l, "w", 5, 0);
    fail(&mut l, &got[0], "w", false, 1);
    complete(&mut l, &got[1], "w", 2);
    let restored = Ledger::from_snapshot(&l.to_snapshot()).expect("decode");
    restored.check_invariants().expect("restored invariants");
    assert_eq!(restored, l);
    assert_eq!(restored.counts(), l.counts());
    assert_eq!(restored.next_deadline(), l.next_deadline());
    assert!(Ledger::from_snapshot(b"garbage").is_err());
}

#[test]
fn listing_filters_and_paginates() {
    let mut l = Ledger::new(config());
    submit(&mut l, (1..=10).map(job).collect(), 0);
    let page = l.list(&TaskFilter { release_id: Some(1), limit: 2, ..TaskFilter::default() });
    assert_eq!(page.iter().map(|t| t.job.asset_id).collect::<Vec<_>>(), vec![1, 4]);
    let next = l.list(&TaskFilter { release_id: Some(1), after: Some(page[1].id), limit: 2, ..TaskFilter::default() });
    assert_eq!(next.iter().map(|t| t.job.asset_id).collect::<Vec<_>>(), vec![7, 10]);
}

#[test]
fn history_is_bounded_but_keeps_the_submission() {
    let mut l = ledger_with_worker(&["w"]);
    let id = submit(&mut l, vec![EncodeJob { max_attempts: 100, ..job(1) }], 0)[0];
    for now in 0..20 {
        let got = lease(&mut l, "w", 1, now);
        let refs = vec![(got[0].task, got[0].lease_seq)];
        report(&mut l, Command::Release { worker: wid("w"), leases: refs, reason: "x".into() }, now);
    }
    let t = l.task(id).expect("task");
    assert_eq!(t.history.len(), 8);
    assert_eq!(t.history[0].kind, EventKind::Submitted);
}

// ---------------------------------------------------------------------------------------------
// Work stealing

fn spec_with(name: &str, slots: u32, speed_milli: u32) -> WorkerSpec {
    WorkerSpec { slots, speed_milli, ..spec(name, &["default"]) }
}

fn leased(l: &mut Ledger, cmd: Command, now: i64) -> (Vec<Lease>, Vec<Effect>) {
    match apply(l, cmd, now) {
        (Ok(Outcome::Leased(v)), effects) => (v, effects),
        other => panic!("expected leases: {other:?}"),
    }
}

fn steal(l: &mut Ledger, thief: &str, tasks: Vec<(TaskId, u32)>, now: i64) -> (Vec<Lease>, Vec<Effect>) {
    leased(l, Command::Steal { thief: wid(thief), tasks }, now)
}

/// A slow worker holding six tasks (two rendering, four prefetched) and an idle fast one.
fn slow_holds_six() -> (Ledger, Vec<Lease>) {
    let mut l = Ledger::new(config());
    ok(&mut l, Command::RegisterWorker { spec: spec_with("slow", 2, 1000) }, 0);
    submit(&mut l, (0..6).map(job).collect(), 1);
    let held = lease(&mut l, "slow", 6, 2);
    ok(&mut l, Command::RegisterWorker { spec: spec_with("fast", 4, 4000) }, 3);
    (l, held)
}

#[test]
fn an_idle_worker_steals_only_unstarted_tasks_and_the_victim_is_told() {
    let (mut l, held) = slow_holds_six();
    let started: BTreeSet<TaskId> = held[..2].iter().map(|x| x.task).collect();
    let plan = l.steal_plan(&wid("fast"), 10, &|t, _| started.contains(&t));
    assert_eq!(plan.len(), 4, "every unstarted task, none of the started: {plan:?}");
    assert!(plan.iter().all(|(t, _)| !started.contains(t)));
    // The ones the victim would start last go first.
    assert_eq!(plan[0].0, held[5].task);
    let (leases, effects) = steal(&mut l, "fast", plan.clone(), 4);
    assert_eq!(leases.len(), 4);
    for (lease, (task, old_seq)) in leases.iter().zip(&plan) {
        assert_eq!(lease.task, *task);
        assert_eq!(lease.lease_seq, old_seq + 1);
        assert_eq!(lease.attempt, 1, "a steal is not a failed attempt");
        let t = l.task(*task).expect("task");
        assert_eq!((t.state, t.worker.clone()), (TaskState::Leased, Some(wid("fast"))));
        assert_eq!(t.history.last().map(|e| e.kind), Some(EventKind::Stolen));
        assert!(effects.contains(&Effect::Revoke {
            worker: wid("slow"),
            task: *task,
            lease_seq: *old_seq,
            reason: "stolen by idle worker fast".into()
        }));
    }
    assert_eq!(l.worker(&wid("slow")).map(|w| (w.leased, w.stolen_from)), Some((2, 4)));
    assert_eq!(l.worker(&wid("fast")).map(|w| (w.leased, w.stole)), Some((4, 4)));
    assert_eq!(l.steals_total(), 4);
    // Nothing is left to steal, and a stolen task is never stolen back.
    assert!(l.steal_plan(&wid("fast"), 10, &|t, _| started.contains(&t)).is_empty());
    assert!(l.steal_plan(&wid("slow"), 10, &|_, _| false).is_empty(), "a stolen task is never stolen back");
    let (again, effects) = steal(&mut l, "slow", vec![(leases[0].task, leases[0].lease_seq)], 5);
    assert!(again.is_empty() && effects.is_empty(), "the ledger re-checks an explicit steal");
}

fn backup(l: &mut Ledger, thief: &str, tasks: Vec<(TaskId, u32)>, now: i64) -> (Vec<Lease>, Vec<Effect>) {
    leased(l, Command::Backup { thief: wid(thief), tasks }, now)
}

/// A slow worker rendering two tasks, one since t=2 and one since t=600, and idle workers of
/// 1.5× and 4× its speed.
fn slow_renders_two() -> (Ledger, Vec<Lease>) {
    let mut l = Ledger::new(config());
    ok(&mut l, Command::RegisterWorker { spec: spec_with("slow", 2, 1000) }, 0);
    submit(&mut l, (0..2).map(job).collect(), 1);
    let mut held = lease(&mut l, "slow", 1, 2);
    held.extend(lease(&mut l, "slow", 1, 600));
    ok(&mut l, Command::RegisterWorker { spec: spec_with("mid", 2, 1500) }, 3);
    ok(&mut l, Command::RegisterWorker { spec: spec_with("fast", 2, 4000) }, 3);
    (l, held)
}

#[test]
fn a_worker_twice_as_fast_backs_up_the_longest_running_task_and_the_holder_keeps_it() {
    let (mut l, held) = slow_renders_two();
    // Both started when leased.
    let started = |t: TaskId, _: u32| Some(if t == held[0].task { 2 } else { 600 });
    // Longest-running first, and only once a task has run for the minimum age.
    assert_eq!(l.backup_plan(&wid("fast"), 2, 1_500, 1_000, &started), vec![(held[0].task, held[0].lease_seq)]);
    let plan = l.backup_plan(&wid("fast"), 2, 3_000, 1_000, &started);
    assert_eq!(plan, vec![(held[0].task, held[0].lease_seq), (held[1].task, held[1].lease_seq)]);
    // Age counts from the start of the render, not from the lease (a prefetched task waits).
    let late_start = |t: TaskId, _: u32| Some(if t == held[0].task { 2_500 } else { 600 });
    assert_eq!(l.backup_plan(&wid("fast"), 2, 3_000, 1_000, &late_start), vec![(held[1].task, held[1].lease_seq)]);
    assert!(l.backup_plan(&wid("mid"), 2, 3_000, 1_000, &started).is_empty(), "1.5× is not fast enough to gain");
    assert!(
        l.backup_plan(&wid("fast"), 2, 3_000, 1_000, &|_, _| None).is_empty(),
        "unstarted tasks are stolen, not copied"
    );

    let (copies, effects) = backup(&mut l, "fast", plan[..1].to_vec(), 3_000);
    assert_eq!(copies.len(), 1);
    assert!(effects.is_empty(), "the holder is not told to drop a task it is rendering");
    let t = l.task(held[0].task).expect("task");
    assert_eq!((t.state, t.worker.clone(), t.attempts), (TaskState::Leased, Some(wid("fast")), 0));
    assert!(t.history.last().is_some_and(|e| e.kind == EventKind::Stolen && e.detail.starts_with("backup copy")));
    // Copied at most once, and never stolen afterwards.
    assert!(!l.backup_plan(&wid("fast"), 2, 9_000, 1_000, &started).contains(&plan[0]));
    assert!(l.steal_plan(&wid("slow"), 2, &|_, _| false).is_empty());

    // The copy wins: the slow holder's late completion changes nothing.
    assert!(complete(&mut l, &copies[0], "fast", 4_000));
    assert!(!complete(&mut l, &held[0], "slow", 9_000));
    let t = l.task(held[0].task).expect("task");
    assert_eq!((t.state, t.worker.clone()), (TaskState::Succeeded, Some(wid("fast"))));
    assert_eq!(l.totals().succeeded, 1);
    l.check_invariants().expect("invariants");
}

#[test]
fn when_the_slow_holder_finishes_first_its_completion_counts_and_the_copy_is_revoked() {
    let (mut l, held) = slow_renders_two();
    let (copies, _) = backup(&mut l, "fast", vec![(held[1].task, held[1].lease_seq)], 3_000);
    let (accepted, effects) = match apply(
        &mut l,
        Command::Complete { task: held[1].task, lease_seq: held[1].lease_seq, worker: wid("slow"), result: result() },
        3_100,
    ) {
        (Ok(Outcome::Reported { accepted }), effects) => (accepted, effects),
        other => panic!("complete: {other:?}"),
    };
    assert!(accepted);
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Revoke { worker, task, .. } if *worker == wid("fast") && *task == held[1].task)));
    assert!(!complete(&mut l, &copies[0], "fast", 3_200), "the copy's completion is stale");
    assert_eq!(
        l.task(held[1].task).map(|t| (t.state, t.worker.clone())),
        Some((TaskState::Succeeded, Some(wid("slow"))))
    );
    assert_eq!(l.totals().succeeded, 1);
    l.check_invariants().expect("invariants");
}

#[test]
fn the_deepest_buffer_is_robbed_first_and_much_faster_workers_are_left_alone() {
    let mut l = Ledger::new(config());
    ok(&mut l, Command::RegisterWorker { spec: spec_with("a", 1, 1000) }, 0);
    ok(&mut l, Command::RegisterWorker { spec: spec_with("b", 4, 1000) }, 0);
    ok(&mut l, Command::RegisterWorker { spec: spec_with("quick", 1, 3000) }, 0);
    submit(&mut l, (0..12).map(job).collect(), 1);
    let a = lease(&mut l, "a", 3, 2); // 3 per slot
    let b = lease(&mut l, "b", 6, 2); // 1.5 per slot
    let q = lease(&mut l, "quick", 3, 2);
    ok(&mut l, Command::RegisterWorker { spec: spec_with("idle", 2, 1000) }, 3);
    let plan = l.steal_plan(&wid("idle"), 3, &|_, _| false);
    let from = |t: TaskId| {
        if a.iter().any(|x| x.task == t) {
            "a"
        } else if b.iter().any(|x| x.task == t) {
            "b"
        } else {
            "quick"
        }
    };
    let victims: Vec<&str> = plan.iter().map(|(t, _)| from(*t)).collect();
    // a: 3/1 > b: 6/4 → a; then a 2/1 > 1.5 → a; then a 1/1 < b 1.5 → b.
    assert_eq!(victims, ["a", "a", "b"]);
    assert!(q.iter().all(|x| !plan.iter().any(|(t, _)| *t == x.task)), "a 3× faster worker starts them sooner");
    assert!(l.steal_plan(&wid("idle"), 0, &|_, _| false).is_empty());
    ok(&mut l, Command::DrainWorker { worker: wid("idle") }, 4);
    assert!(l.steal_plan(&wid("idle"), 3, &|_, _| false).is_empty(), "a draining worker steals nothing");
}

#[test]
fn after_a_steal_only_the_first_completion_counts() {
    // The victim had started after all (its heartbeat was late): it finishes first.
    let (mut l, held) = slow_holds_six();
    let victim_lease = held[5].clone();
    let (stolen, _) = steal(&mut l, "fast", vec![(victim_lease.task, victim_lease.lease_seq)], 4);
    let thief_lease = stolen[0].clone();
    let applied = l.apply(
        Command::Complete {
            task: victim_lease.task,
            lease_seq: victim_lease.lease_seq,
            worker: wid("slow"),
            result: result(),
        },
        5,
    );
    assert_eq!(applied.outcome, Ok(Outcome::Reported { accepted: true }));
    assert!(
        applied.effects.iter().any(|e| matches!(e, Effect::Revoke { worker, .. } if *worker == wid("fast"))),
        "the thief drops its copy"
    );
    l.check_invariants().expect("invariants");
    let t = l.task(victim_lease.task).expect("task");
    assert_eq!((t.state, t.worker.clone()), (TaskState::Succeeded, Some(wid("slow"))));
    let before = l.clone();
    assert!(!complete(&mut l, &thief_lease, "fast", 6), "the second completion is stale");
    assert!(!fail(&mut l, &thief_lease, "fast", false, 6));
    assert!(before == l, "a stale report changes nothing");
    assert_eq!(l.totals().succeeded, 1);

    // The other way round: the thief finishes first, the victim's late report is stale.
    let (mut l, held) = slow_holds_six();
    let victim_lease = held[4].clone();
    let (stolen, _) = steal(&mut l, "fast", vec![(victim_lease.task, victim_lease.lease_seq)], 4);
    assert!(complete(&mut l, &stolen[0], "fast", 5));
    let before = l.clone();
    assert!(!complete(&mut l, &victim_lease, "slow", 6));
    assert!(before == l);
    assert_eq!(l.task(victim_lease.task).map(|t| t.worker.clone()), Some(Some(wid("fast"))));

    // The victim's failure or release of a stolen lease changes nothing: the thief has it.
    let (mut l, held) = slow_holds_six();
    let v = held[3].clone();
    steal(&mut l, "fast", vec![(v.task, v.lease_seq)], 4);
    let before = l.clone();
    assert!(!fail(&mut l, &v, "slow", true, 5));
    assert!(!report(
        &mut l,
        Command::Release { worker: wid("slow"), leases: vec![(v.task, v.lease_seq)], reason: "drain".into() },
        5
    ));
    assert!(before == l);
}

#[test]
fn a_stale_completion_after_a_stolen_lease_lapses_never_resurrects_the_task() {
    let (mut l, held) = slow_holds_six();
    let v = held[5].clone();
    steal(&mut l, "fast", vec![(v.task, v.lease_seq)], 4);
    // The thief dies: its lease lapses, the task goes back to the queue, no longer marked stolen.
    ok(&mut l, Command::ExpireLeases, 4 + TTL);
    assert_eq!(state(&l, v.task), TaskState::Queued);
    let before = l.clone();
    assert!(!complete(&mut l, &v, "slow", 5 + TTL), "the victim's lease is older than the lapsed one");
    assert!(before == l);
    // Cancelling a stolen task revokes both copies.
    let (mut l, held) = slow_holds_six();
    let v = held[5].clone();
    let (stolen, _) = steal(&mut l, "fast", vec![(v.task, v.lease_seq)], 4);
    let (_, effects) = apply(&mut l, Command::Cancel { task: v.task }, 5);
    let revoked: BTreeSet<(String, u32)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Revoke { worker, lease_seq, .. } => Some((worker.to_string(), *lease_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(
        revoked,
        [("fast".to_owned(), stolen[0].lease_seq), ("slow".to_owned(), v.lease_seq)].into_iter().collect()
    );
    assert!(!complete(&mut l, &v, "slow", 6));
    assert_eq!(state(&l, v.task), TaskState::Cancelled);
}

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Debug, Clone)]
enum Step {
    Submit(Vec<u32>),
    Register(usize),
    Disconnect(usize),
    Drain(usize),
    Lease(usize, u32),
    /// An idle worker steals up to n tasks; tasks whose id is a multiple of 3 count as started.
    Steal(usize, u32),
    /// An idle worker takes backup copies of up to n started tasks (same rule for "started").
    Backup(usize, u32),
    Renew(usize),
    /// Report on the n-th lease ever granted (possibly stale).
    Complete(usize),
    Fail(usize, bool),
    Release(usize),
    Expire,
    Grace(i64),
    Cancel(u64),
    Requeue,
    Purge,
    Gc,
    /// Move the clock: mostly forward, sometimes far, sometimes a little back.
    Clock(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec(0u32..40, 1..5).prop_map(Step::Submit),
        1 => (0usize..3).prop_map(Step::Register),
        1 => (0usize..3).prop_map(Step::Disconnect),
        1 => (0usize..3).prop_map(Step::Drain),
        4 => ((0usize..3), (0u32..4)).prop_map(|(w, n)| Step::Lease(w, n)),
        2 => ((0usize..3), (0u32..4)).prop_map(|(w, n)| Step::Steal(w, n)),
        2 => ((0usize..3), (0u32..4)).prop_map(|(w, n)| Step::Backup(w, n)),
        1 => (0usize..3).prop_map(Step::Renew),
        4 => (0usize..64).prop_map(Step::Complete),
        2 => ((0usize..64), any::<bool>()).prop_map(|(n, p)| Step::Fail(n, p)),
        1 => (0usize..64).prop_map(Step::Release),
        2 => Just(Step::Expire),
        1 => (0i64..20_000).prop_map(Step::Grace),
        1 => (1u64..40).prop_map(Step::Cancel),
        1 => Just(Step::Requeue),
        1 => Just(Step::Purge),
        1 => Just(Step::Gc),
        4 => prop_oneof![0i64..3_000, 10_000i64..100_000, -2_000i64..0].prop_map(Step::Clock),
    ]
}

const WORKERS: [&str; 3] = ["w0", "w1", "w2"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_command_sequence(steps in proptest::collection::vec(step(), 1..120)) {
        let mut l = Ledger::new(config());
        let mut now: i64 = 1_000;
        let mut granted: Vec<(Lease, usize)> = Vec::new();
        let mut ever_succeeded: BTreeSet<TaskId> = BTreeSet::new();
        for s in steps {
            let before = l.clone();
            let cmd = match s {
                Step::Clock(d) => { now = (now + d).max(0); continue; }
                Step::Submit(ns) => Command::Submit { jobs: ns.into_iter().map(job).collect() },
                // Speeds 1×, 2×, 4×: every pair can steal or copy one way or the other.
                Step::Register(w) => Command::RegisterWorker { spec: spec_with(WORKERS[w], 2, 1000 << w) },
                Step::Disconnect(w) => Command::DisconnectWorker { worker: wid(WORKERS[w]) },
                Step::Drain(w) => Command::DrainWorker { worker: wid(WORKERS[w]) },
                Step::Lease(w, n) => Command::Lease { worker: wid(WORKERS[w]), max: n },
                Step::Steal(w, n) => {
                    let tasks = l.steal_plan(&wid(WORKERS[w]), n, &|t, _| t.0 % 3 == 0);
                    Command::Steal { thief: wid(WORKERS[w]), tasks }
                }
                Step::Backup(w, n) => {
                    let tasks = l.backup_plan(&wid(WORKERS[w]), n, now, 0, &|t, _| (t.0 % 3 == 0).then_some(0));
                    Command::Backup { thief: wid(WORKERS[w]), tasks }
                }
                Step::Renew(w) => Command::Renew { worker: wid(WORKERS[w]) },
                Step::Complete(i) | Step::Fail(i, _) | Step::Release(i) if granted.is_empty() => { let _ = i; continue; }
                Step::Complete(i) => {
                    let (g, w) = &granted[i % granted.len()];
                    Command::Complete { task: g.task, lease_seq: g.lease_seq, worker: wid(WORKERS[*w]), result: result() }
                }
                Step::Fail(i, permanent) => {
                    let (g, w) = &granted[i % granted.len()];
                    Command::Fail { task: g.task, lease_seq: g.lease_seq, worker: wid(WORKERS[*w]), error: "e".into(), permanent }
                }
                Step::Release(i) => {
                    let (g, w) = &granted[i % granted.len()];
                    Command::Release { worker: wid(WORKERS[*w]), leases: vec![(g.task, g.lease_seq)], reason: "r".into() }
                }
                Step::Expire => Command::ExpireLeases,
                Step::Grace(ms) => Command::GraceLeases { grace_ms: ms },
                Step::Cancel(id) => Command::Cancel { task: TaskId(id) },
                Step::Requeue => Command::RequeueDeadLetters { filter: DeadLetterFilter { all: true, ..DeadLetterFilter::default() } },
                Step::Purge => Command::PurgeDeadLetters { filter: DeadLetterFilter { all: true, ..DeadLetterFilter::default() } },
                Step::Gc => Command::CollectGarbage,
            };
            let is_report = matches!(cmd, Command::Complete { .. } | Command::Fail { .. } | Command::Release { .. });
            let report_task = match &cmd {
                Command::Complete { task, .. } | Command::Fail { task, .. } => Some(*task),
                _ => None,
            };
            let lease_worker = match &cmd { Command::Lease { worker, .. } => WORKERS.iter().position(|w| *w == worker.as_str()), _ => None };
            let thief = match &cmd { Command::Steal { thief, .. } => WORKERS.iter().position(|w| *w == thief.as_str()), _ => None };
            let copier = match &cmd { Command::Backup { thief, .. } => WORKERS.iter().position(|w| *w == thief.as_str()), _ => None };
            let applied = l.apply(cmd, now);
            if let Err(e) = l.check_invariants() {
                prop_assert!(false, "invariant broken: {}", e);
            }
            // Determinism: a replica applying the same command to the same state agrees.
            if let (Ok(Outcome::Leased(leases)), Some(w)) = (&applied.outcome, lease_worker) {
                for lease in leases {
                    // Only queued tasks are leased: never two holders at once.
                    prop_assert_eq!(before.task(lease.task).map(|t| t.state), Some(TaskState::Queued));
                    granted.push((lease.clone(), w));
                }
            }
            if let (Ok(Outcome::Leased(leases)), Some(w)) = (&applied.outcome, thief) {
                for lease in leases {
                    // Only a lease held elsewhere, never stolen before, never a started task.
                    let was = before.task(lease.task).expect("stolen task existed");
                    prop_assert_eq!(was.state, TaskState::Leased);
                    prop_assert!(was.stolen_from.is_none(), "task {} stolen twice", lease.task);
                    prop_assert!(was.worker.as_ref().is_some_and(|v| v.as_str() != WORKERS[w]));
                    prop_assert!(lease.task.0 % 3 != 0, "a started task was stolen");
                    granted.push((lease.clone(), w));
                }
            }
            if let (Ok(Outcome::Leased(leases)), Some(w)) = (&applied.outcome, copier) {
                prop_assert!(applied.effects.is_empty(), "a backup copy revokes nothing");
                for lease in leases {
                    // Only a started task held by a worker at most half as fast, copied once.
                    let was = before.task(lease.task).expect("copied task existed");
                    prop_assert_eq!(was.state, TaskState::Leased);
                    prop_assert!(was.stolen_from.is_none(), "task {} copied twice", lease.task);
                    let holder = was.worker.as_ref().and_then(|v| WORKERS.iter().position(|x| *x == v.as_str()));
                    prop_assert!(holder.is_some_and(|h| h < w), "copied from a worker not slower than the copier");
                    prop_assert!(lease.task.0 % 3 == 0, "an unstarted task was copied");
                    granted.push((lease.clone(), w));
                }
            }
            if is_report {
                if let Ok(Outcome::Reported { accepted: false }) = applied.outcome {
                    // A stale report changes nothing at all.
                    prop_assert!(before == l, "a rejected report changed the ledger");
                }
            }
            if let Some(task) = report_task {
                if before.task(task).is_some_and(|t| t.state.is_terminal()) {
                    prop_assert_eq!(before.task(task).map(|t| t.state), l.task(task).map(|t| t.state),
                        "a report resurrected a finished task");
                }
            }
            // Exactly one terminal state: a success is never undone (only GC removes it).
            for id in &ever_succeeded {
                if let Some(t) = l.task(*id) { prop_assert_eq!(t.state, TaskState::Succeeded); }
            }
            ever_succeeded.extend(l.list(&TaskFilter { state: Some(TaskState::Succeeded), ..TaskFilter::default() }).iter().map(|t| t.id));
            prop_assert_eq!(l.totals().succeeded as usize, ever_succeeded.len(), "a success was double-counted or lost");
        }
        let snapshot = Ledger::from_snapshot(&l.to_snapshot()).expect("snapshot decodes");
        prop_assert!(snapshot == l);
        snapshot.check_invariants().map_err(TestCaseError::fail)?;
    }

    #[test]
    fn replicas_applying_the_same_log_agree(jobs in proptest::collection::vec(0u32..30, 1..30), leases in 1u32..10, t in 0i64..100_000) {
        let run = || {
            let mut l = ledger_with_worker(&["w0"]);
            l.apply(Command::Submit { jobs: jobs.iter().copied().map(job).collect() }, 1);
            l.apply(Command::Lease { worker: wid("w0"), max: leases }, 2);
            l.apply(Command::ExpireLeases, t);
            l.apply(Command::Lease { worker: wid("w0"), max: leases }, t + 1);
            l.to_snapshot()
        };
        prop_assert_eq!(run(), run());
    }
}
