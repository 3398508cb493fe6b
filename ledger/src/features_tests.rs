//! Feature flags: the registry, what a build supports, and the gated `fenced_sessions` commands.

use kiln_types::{QueueName, WorkerId};

use super::*;
use crate::{Ledger, LedgerConfig, WorkerSpec};

const NOW: i64 = 1_000_000;

fn wid(name: &str) -> WorkerId {
    WorkerId::new(name).expect("worker id")
}

fn spec(name: &str) -> WorkerSpec {
    WorkerSpec {
        id: wid(name),
        hostname: name.into(),
        slots: 2,
        cores: 2,
        memory_bytes: 1 << 30,
        speed_milli: 1000,
        queues: vec![QueueName::new("default").expect("queue")],
        version: "test".into(),
    }
}

fn enable(ledger: &mut Ledger) -> Result<Outcome, Rejection> {
    ledger.apply(Command::EnableFeature { name: FENCED_SESSIONS.into() }, NOW).outcome
}

fn open(ledger: &mut Ledger, worker: &str) -> u64 {
    match ledger.apply(Command::OpenSession { spec: spec(worker) }, NOW).outcome {
        Ok(Outcome::SessionOpened { session }) => session,
        other => panic!("OpenSession: {other:?}"),
    }
}

fn connected(ledger: &Ledger, worker: &str) -> bool {
    ledger.worker(&wid(worker)).is_some_and(|w| w.connected)
}

#[test]
fn every_registered_feature_has_a_format_this_build_reads_and_says_what_it_changes() {
    for f in FEATURES {
        assert!((BASE_FORMAT..=FORMAT).contains(&f.min_format), "{}", f.name);
        assert!(!f.description.is_empty(), "{}", f.name);
    }
    // Every command newer than the first format belongs to some feature.
    let gated: BTreeSet<&str> = FEATURES.iter().flat_map(|f| f.commands.iter().copied()).collect();
    assert!(gated.contains("OpenSession") && gated.contains("CloseSession"));
    let names: BTreeSet<&str> = FEATURES.iter().map(|f| f.name).collect();
    assert_eq!(names.len(), FEATURES.len(), "feature names are unique");
}

#[test]
fn enabling_a_feature_is_idempotent_and_an_unknown_one_is_refused() {
    let mut ledger = Ledger::new(LedgerConfig::default());
    assert_eq!(enable(&mut ledger), Ok(Outcome::Count(1)));
    assert_eq!(enable(&mut ledger), Ok(Outcome::Count(0)));
    assert!(ledger.features().is_enabled(FENCED_SESSIONS));
    let unknown = ledger.apply(Command::EnableFeature { name: "time_travel".into() }, NOW).outcome;
    assert_eq!(unknown, Err(Rejection::UnknownFeature("time_travel".into())));
    assert_eq!(ledger.features().enabled().collect::<Vec<_>>(), [FENCED_SESSIONS]);
}

#[test]
fn a_gated_command_is_refused_while_its_feature_is_off_and_changes_nothing() {
    let mut ledger = Ledger::new(LedgerConfig::default());
    let before = ledger.to_snapshot();
    let refused = ledger.apply(Command::OpenSession { spec: spec("w1") }, NOW).outcome;
    assert_eq!(
        refused,
        Err(Rejection::FeatureDisabled { feature: FENCED_SESSIONS.into(), command: "OpenSession".into() })
    );
    let refused = ledger.apply(Command::CloseSession { worker: wid("w1"), session: 1 }, NOW).outcome;
    assert!(matches!(refused, Err(Rejection::FeatureDisabled { .. })), "{refused:?}");
    assert_eq!(ledger.to_snapshot(), before);
}

#[test]
fn without_fencing_the_late_close_of_an_old_session_disconnects_a_reconnected_worker() {
    // The bug the feature fixes, shown with the base commands: reconnect, then the old close.
    let mut ledger = Ledger::new(LedgerConfig::default());
    ledger.apply(Command::RegisterWorker { spec: spec("w1") }, NOW);
    ledger.apply(Command::RegisterWorker { spec: spec("w1") }, NOW + 1);
    ledger.apply(Command::DisconnectWorker { worker: wid("w1") }, NOW + 2);
    assert!(!connected(&ledger, "w1"));
}

#[test]
fn with_fencing_the_late_close_of_an_old_session_is_ignored() {
    let mut ledger = Ledger::new(LedgerConfig::default());
    enable(&mut ledger).expect("enabled");
    let old = open(&mut ledger, "w1");
    let new = open(&mut ledger, "w1");
    assert_ne!(old, new);
    let late = ledger.apply(Command::CloseSession { worker: wid("w1"), session: old }, NOW + 2).outcome;
    assert_eq!(late, Ok(Outcome::Reported { accepted: false }));
    assert!(connected(&ledger, "w1"), "the reconnected worker stays connected");
    let current = ledger.apply(Command::CloseSession { worker: wid("w1"), session: new }, NOW + 3).outcome;
    assert_eq!(current, Ok(Outcome::Reported { accepted: true }));
    assert!(!connected(&ledger, "w1"));
    assert_eq!(ledger.features().session_of(&wid("w1")), None);
    ledger.check_invariants().expect("invariants");
}

#[test]
fn closing_a_session_of_an_unknown_worker_is_refused() {
    let mut ledger = Ledger::new(LedgerConfig::default());
    enable(&mut ledger).expect("enabled");
    let outcome = ledger.apply(Command::CloseSession { worker: wid("ghost"), session: 1 }, NOW).outcome;
    assert_eq!(outcome, Err(Rejection::UnknownWorker(wid("ghost"))));
}

#[test]
fn a_ledger_that_enabled_nothing_snapshots_exactly_as_the_previous_format() {
    let mut ledger = Ledger::new(LedgerConfig::default());
    ledger.apply(Command::RegisterWorker { spec: spec("w1") }, NOW);
    let bytes = ledger.to_snapshot();
    // An older release's snapshot is this one: no trailer.
    let restored = Ledger::from_snapshot(&bytes).expect("decodes");
    assert_eq!(restored.features(), &Features::default());
    assert_eq!(restored.to_snapshot(), bytes);
}

#[test]
fn enabled_flags_and_sessions_survive_a_snapshot_and_change_the_digest() {
    let mut ledger = Ledger::new(LedgerConfig::default());
    ledger.apply(Command::RegisterWorker { spec: spec("w1") }, NOW);
    let before = ledger.to_snapshot();
    let digest_before = ledger.digest();
    enable(&mut ledger).expect("enabled");
    assert_ne!(ledger.digest(), digest_before, "replicas comparing digests see the flag");
    let session = open(&mut ledger, "w2");
    let bytes = ledger.to_snapshot();
    assert_ne!(bytes, before, "replicas comparing snapshots see the flag");
    let restored = Ledger::from_snapshot(&bytes).expect("decodes");
    assert!(restored.features().is_enabled(FENCED_SESSIONS));
    assert_eq!(restored.features().session_of(&wid("w2")), Some(session));
    assert_eq!(restored, ledger);
    assert_eq!(restored.digest(), ledger.digest());
    // The next identity continues after the restored one, never reusing it.
    let mut restored = restored;
    assert!(open(&mut restored, "w2") > session);
}

#[test]
fn this_build_supports_every_command_and_every_feature() {
    let support = Support::this_build();
    for cmd in [
        Command::EnableFeature { name: FENCED_SESSIONS.into() },
        Command::OpenSession { spec: spec("w1") },
        Command::CloseSession { worker: wid("w1"), session: 1 },
        Command::ExpireLeases,
    ] {
        assert_eq!(support.check(&cmd), Ok(()), "{cmd:?}");
    }
    assert_eq!(support.emulating, None);
}

#[test]
fn a_build_emulating_the_base_format_refuses_newer_commands_and_enabled_features() {
    let old = Support::emulating(BASE_FORMAT);
    assert_eq!(old.max_format, BASE_FORMAT);
    assert!(!old.has(FENCED_SESSIONS));
    assert_eq!(old.check(&Command::ExpireLeases), Ok(()));
    let err = old.check(&Command::EnableFeature { name: FENCED_SESSIONS.into() }).expect_err("unsupported");
    assert!(matches!(err, Unsupported::Format { command: "EnableFeature", needs: 2, max: 1, .. }), "{err:?}");
    assert!(old.check(&Command::OpenSession { spec: spec("w1") }).is_err());

    let mut ledger = Ledger::new(LedgerConfig::default());
    assert_eq!(old.check_enabled(ledger.features()), Ok(()));
    enable(&mut ledger).expect("enabled");
    assert_eq!(old.check_enabled(ledger.features()), Err(Unsupported::Feature(FENCED_SESSIONS.into())));
    assert_eq!(Support::this_build().check_enabled(ledger.features()), Ok(()));
}

#[test]
fn enabling_a_feature_this_build_does_not_know_is_unsupported_even_at_its_format() {
    let support = Support::this_build();
    let err = support.check(&Command::EnableFeature { name: "from_the_future".into() }).expect_err("unsupported");
    assert_eq!(err, Unsupported::Feature("from_the_future".into()));
}

#[test]
fn emulating_a_format_above_this_build_is_this_build() {
    let support = Support::emulating(FORMAT + 5);
    assert_eq!(support.max_format, FORMAT);
    assert_eq!(support.features, Support::this_build().features);
}

#[test]
fn garbage_collection_forgets_gone_workers_only_once_the_feature_is_enabled() {
    let config = LedgerConfig { gc_ttl_ms: 60_000, ..LedgerConfig::default() };
    let mut ledger = Ledger::new(config);
    let later = NOW + 60_001;
    for name in ["gone", "here"] {
        ledger.apply(Command::RegisterWorker { spec: spec(name) }, NOW);
    }
    ledger.apply(Command::DisconnectWorker { worker: wid("gone") }, NOW);
    assert_eq!(ledger.next_gc_at(), None, "nothing is due while the feature is off");
    ledger.apply(Command::CollectGarbage, later);
    assert!(ledger.worker(&wid("gone")).is_some(), "kept while the feature is off");

    let outcome = ledger.apply(Command::EnableFeature { name: FORGET_GONE_WORKERS.into() }, later).outcome;
    assert_eq!(outcome, Ok(Outcome::Count(1)));
    assert_eq!(ledger.next_gc_at(), Some(NOW + 60_000), "due gc_ttl after the worker left");
    ledger.apply(Command::CollectGarbage, NOW + 30_000);
    assert!(ledger.worker(&wid("gone")).is_some(), "kept until gc_ttl has passed");
    let before = ledger.digest();
    ledger.apply(Command::CollectGarbage, later);
    assert!(ledger.worker(&wid("gone")).is_none(), "a worker gone for gc_ttl is forgotten");
    assert!(ledger.worker(&wid("here")).is_some(), "a connected worker stays");
    assert_ne!(ledger.digest(), before);
    assert_eq!(ledger.next_gc_at(), None);
    ledger.check_invariants().expect("invariants");

    // It comes back as new when it registers again.
    ledger.apply(Command::RegisterWorker { spec: spec("gone") }, later);
    assert!(connected(&ledger, "gone"));
}
