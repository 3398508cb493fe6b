//! Golden bytes: the exact encoding of every command (as a one-command log entry) and of a
//! snapshot, in every format this build writes. The files under `tests/golden/v<N>/` are the
//! format; this test proves both directions — today's values encode to exactly those bytes, and
//! those bytes decode to today's values.
//!
//! A fixture that stops matching is a format change, not a test to re-bless: either undo the
//! change, or make it a new format version beside the old one (docs/formats.md). To write the
//! fixtures of a new version, or of a newly added command: `KILN_BLESS=1 cargo test -p kiln-ledger
//! --test golden`, then review the diff — existing files must not change.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kiln_ledger::batches::{BadLine, BadLinePolicy, BatchAction, BatchSpec, BatchState, Cursor, SourceFormat};
use kiln_ledger::codec::{self, Batch, COMMAND_TAGS, FORMAT_VERSION};
use kiln_ledger::features::{BATCHES, FENCED_SESSIONS};
use kiln_ledger::{
    Command, DeadLetterFilter, Ledger, LedgerConfig, Outcome, OutputFile, TaskResult, TaskState, WorkerSpec,
};
use kiln_types::{AssetGuid, EncodeJob, QueueName, RendererName, RequestId, TaskId, WorkerId};

const ORIGIN: u64 = 0x0001_2345_6789_abcd;
const NOW: i64 = 1_764_748_800_000;

fn wid(name: &str) -> WorkerId {
    WorkerId::new(name).expect("worker id")
}

fn queue(name: &str) -> QueueName {
    QueueName::new(name).expect("queue")
}

fn renderer(name: &str) -> RendererName {
    RendererName::new(name).expect("renderer")
}

fn job(n: i64, q: &str, priority: i32) -> EncodeJob {
    EncodeJob {
        request_id: RequestId::new(format!("release-77.asset-{n}")).expect("request id"),
        release_id: 77,
        asset_id: 9_000 + n,
        asset_guid: AssetGuid::new(format!("masters/77/{n:03}-track.wav")).expect("guid"),
        derivative_assets: ["loudness", "waveform", "aac"].into_iter().map(renderer).collect(),
        queue: queue(q),
        priority,
        max_attempts: 3,
    }
}

fn spec(name: &str) -> WorkerSpec {
    WorkerSpec {
        id: wid(name),
        hostname: format!("{name}.render.example.net"),
        slots: 8,
        cores: 16,
        memory_bytes: 64 << 30,
        speed_milli: 1_250,
        queues: vec![queue("default"), queue("priority")],
        version: "0.9.0".into(),
    }
}

fn result() -> TaskResult {
    TaskResult {
        metadata_json: r#"{"loudness":{"integrated_lufs":-9.8},"bpm":{"bpm":124.0}}"#.into(),
        outputs: vec![OutputFile {
            renderer: renderer("aac"),
            uri: "s3://derivatives/77/001-track.m4a".into(),
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            bytes: 7_340_032,
            content_type: "audio/mp4".into(),
        }],
        timings: vec![(renderer("loudness"), 812_000), (renderer("aac"), 2_950_000)],
        manifest_uri: "s3://derivatives/77/001-track.manifest.json".into(),
        fetch_micros: 120_000,
        decode_micros: 340_000,
        upload_micros: 95_000,
    }
}

fn filter() -> DeadLetterFilter {
    DeadLetterFilter {
        task_ids: vec![TaskId(17), TaskId(18)],
        queue: Some(queue("default")),
        release_id: Some(77),
        error_contains: Some("decode".into()),
        all: false,
    }
}

/// One realistic value of every command, with the name of its fixture.
fn commands() -> Vec<(&'static str, Command)> {
    let w = wid("render-01");
    vec![
        ("submit", Command::Submit { jobs: vec![job(1, "default", 0), job(2, "priority", 5)] }),
        ("register-worker", Command::RegisterWorker { spec: spec("render-01") }),
        ("disconnect-worker", Command::DisconnectWorker { worker: w.clone() }),
        ("drain-worker", Command::DrainWorker { worker: w.clone() }),
        ("lease", Command::Lease { worker: w.clone(), max: 8 }),
        ("steal", Command::Steal { thief: wid("render-02"), tasks: vec![(TaskId(41), 1), (TaskId(42), 3)] }),
        ("renew", Command::Renew { worker: w.clone() }),
        ("complete", Command::Complete { task: TaskId(41), lease_seq: 2, worker: w.clone(), result: result() }),
        (
            "fail",
            Command::Fail {
                task: TaskId(43),
                lease_seq: 1,
                worker: w.clone(),
                error: "decode: unsupported sample format".into(),
                permanent: true,
            },
        ),
        (
            "release",
            Command::Release {
                worker: w.clone(),
                leases: vec![(TaskId(44), 1), (TaskId(45), 2)],
                reason: "draining: SIGTERM".into(),
            },
        ),
        ("expire-leases", Command::ExpireLeases),
        ("grace-leases", Command::GraceLeases { grace_ms: 30_000 }),
        ("cancel", Command::Cancel { task: TaskId(46) }),
        ("requeue-dead-letters", Command::RequeueDeadLetters { filter: filter() }),
        ("purge-dead-letters", Command::PurgeDeadLetters { filter: DeadLetterFilter { all: true, ..filter() } }),
        ("collect-garbage", Command::CollectGarbage),
        ("backup", Command::Backup { thief: wid("render-02"), tasks: vec![(TaskId(47), 4)] }),
        ("enable-feature", Command::EnableFeature { name: FENCED_SESSIONS.into() }),
        ("open-session", Command::OpenSession { spec: spec("render-01") }),
        ("close-session", Command::CloseSession { worker: w.clone(), session: 3 }),
        ("create-batch", Command::CreateBatch { spec: batch_spec(BadLinePolicy::Skip) }),
        (
            "admit-batch",
            Command::AdmitBatch {
                batch: 1,
                from: Cursor { line: 2, offset: 310 },
                to: Cursor { line: 5, offset: 777 },
                jobs: vec![(3, job(3, "default", 0)), (5, job(5, "default", 0))],
                bad_lines: vec![BadLine { line: 4, reason: "missing field `asset_guid`".into() }],
                end: false,
                source_bytes: 4_096,
            },
        ),
        ("batch-control", Command::BatchControl { batch: 1, action: BatchAction::Cancel }),
        ("batch-notified", Command::BatchNotified { batch: 1, event: 1 }),
    ]
}

fn batch_spec(on_bad_line: BadLinePolicy) -> BatchSpec {
    BatchSpec {
        name: "catalog-2026".into(),
        source: "s3://masters/manifests/catalog.jsonl".into(),
        format: SourceFormat::Jsonl,
        queue: "backfill".into(),
        priority: -10,
        window: 50_000,
        on_bad_line,
        webhook: Some("https://hooks.example.com/kiln".into()),
        request_id: "batch-7f3a".into(),
    }
}

/// A small ledger with a task in every state, two workers (one gone), and dead letters.
fn ledger() -> Ledger {
    let mut l = Ledger::new(LedgerConfig::default());
    let mut at = NOW;
    let mut apply = |l: &mut Ledger, cmd: Command| -> Outcome {
        at += 1_000;
        l.apply(cmd, at).outcome.unwrap_or_else(|e| panic!("fixture command refused: {e}"))
    };
    apply(&mut l, Command::RegisterWorker { spec: spec("render-01") });
    apply(&mut l, Command::RegisterWorker { spec: spec("render-02") });
    apply(&mut l, Command::Submit { jobs: (1..=7).map(|n| job(n, "default", (n % 2) as i32)).collect() });
    let leases = match apply(&mut l, Command::Lease { worker: wid("render-01"), max: 5 }) {
        Outcome::Leased(leases) => leases,
        other => panic!("no leases: {other:?}"),
    };
    let w = wid("render-01");
    let lease = |i: usize| (leases[i].task, leases[i].lease_seq);
    let (t, s) = lease(0);
    apply(&mut l, Command::Complete { task: t, lease_seq: s, worker: w.clone(), result: result() });
    let (t, s) = lease(1);
    let error = "decode: unsupported sample format".to_owned();
    apply(&mut l, Command::Fail { task: t, lease_seq: s, worker: w.clone(), error, permanent: true });
    let (t, s) = lease(2);
    let error = "upload: connection reset".to_owned();
    apply(&mut l, Command::Fail { task: t, lease_seq: s, worker: w.clone(), error, permanent: false });
    apply(&mut l, Command::Cancel { task: lease(3).0 });
    apply(&mut l, Command::Steal { thief: wid("render-02"), tasks: vec![lease(4)] });
    apply(&mut l, Command::DisconnectWorker { worker: wid("render-02") });
    l
}

fn fixture(version: u16, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/v{version}/{name}.hex"))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(32) {
        out.extend(line.iter().map(|b| format!("{b:02x}")));
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(pair, 16).unwrap_or_else(|e| panic!("bad hex {pair:?}: {e}"))
        })
        .collect()
}

/// The fixture's bytes; with `KILN_BLESS=1`, `encoded` is written as the fixture first.
fn golden(version: u16, name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = fixture(version, name);
    if std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("fixture dir")).expect("create fixture dir");
        std::fs::write(&path, to_hex(encoded)).expect("write fixture");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("no fixture {}: {e}. A new command or version? Bless with KILN_BLESS=1.", path.display())
    });
    from_hex(&text)
}

#[test]
fn every_command_encodes_to_its_golden_bytes_and_back() {
    for (name, cmd) in commands() {
        let batch = Batch { origin: ORIGIN, now: NOW, commands: vec![(42, cmd)] };
        let encoded = codec::encode_batch(FORMAT_VERSION, &batch).expect("encodes");
        let expected = golden(FORMAT_VERSION, &format!("command-{name}"), &encoded);
        assert!(
            encoded == expected,
            "the encoding of `{name}` changed: that is a format change and needs a new format version\n\
             expected {}\n     got {}",
            to_hex(&expected),
            to_hex(&encoded)
        );
        assert_eq!(codec::decode_batch(&expected).expect("the fixture decodes"), batch, "`{name}` decodes");
    }
}

#[test]
fn every_command_has_a_tag_and_a_golden_fixture() {
    let fixtures: BTreeSet<u16> = commands().iter().map(|(_, cmd)| codec::tag_of(cmd)).collect();
    let table: BTreeSet<u16> = COMMAND_TAGS.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(table.len(), COMMAND_TAGS.len(), "two commands share a wire tag");
    assert_eq!(fixtures, table, "a command without a golden fixture");
    assert!(!table.contains(&0), "tag 0 is reserved");
}

#[test]
fn a_snapshot_encodes_to_its_golden_bytes_and_back() {
    let ledger = ledger();
    let states: BTreeSet<&str> = ledger.list(&Default::default()).iter().map(|t| t.state.as_str()).collect();
    assert_eq!(states.len(), 5, "the fixture ledger has a task in every state: {states:?}");
    assert!(ledger.list(&Default::default()).iter().any(|t| t.state == TaskState::Queued && t.ready_at > 0));
    let members = vec![(1, "10.0.0.1:7400".to_owned()), (2, "10.0.0.2:7400".to_owned())];
    let encoded = codec::encode_snapshot(FORMAT_VERSION, &members, &ledger).expect("encodes");
    let expected = golden(FORMAT_VERSION, "snapshot", &encoded);
    assert!(
        encoded == expected,
        "the snapshot encoding changed: that is a format change and needs a new format version"
    );
    let decoded = codec::decode_snapshot(&expected).expect("the fixture decodes");
    assert_eq!(decoded.members, members);
    assert!(decoded.ledger == ledger, "the fixture decodes to the same ledger");
    decoded.ledger.check_invariants().expect("indexes rebuilt");
    assert_eq!(decoded.ledger.digest(), ledger.digest(), "the digest survives a snapshot");
}

/// The fixture ledger after enabling `fenced_sessions`, with one worker on a fenced session and
/// one session closed.
fn ledger_with_features() -> Ledger {
    let mut l = ledger();
    let mut apply = |cmd: Command| {
        l.apply(cmd, NOW + 60_000).outcome.unwrap_or_else(|e| panic!("fixture command refused: {e}"));
    };
    apply(Command::EnableFeature { name: FENCED_SESSIONS.into() });
    apply(Command::OpenSession { spec: spec("render-02") });
    apply(Command::OpenSession { spec: spec("render-03") });
    apply(Command::CloseSession { worker: wid("render-03"), session: 2 });
    l
}

#[test]
fn a_snapshot_with_enabled_features_is_format_2_and_encodes_to_its_golden_bytes_and_back() {
    let ledger = ledger_with_features();
    let members = vec![(1, "10.0.0.1:7400".to_owned())];
    let encoded = codec::encode_snapshot(FORMAT_VERSION, &members, &ledger).expect("encodes");
    assert_eq!(codec::version_of(&encoded), Some((codec::Kind::Snapshot, 2)), "format 1 cannot hold the flags");
    let expected = golden(2, "snapshot", &encoded);
    assert!(encoded == expected, "the format 2 snapshot encoding changed: that is a format change");
    let decoded = codec::decode_snapshot(&expected).expect("the fixture decodes");
    assert_eq!(decoded.members, members);
    assert!(decoded.ledger.features().is_enabled(FENCED_SESSIONS));
    assert_eq!(decoded.ledger.features().session_of(&wid("render-02")), Some(1));
    assert_eq!(decoded.ledger.features().session_of(&wid("render-03")), None);
    assert!(decoded.ledger == ledger, "the fixture decodes to the same ledger");
}

/// The fixture ledger with `batches` enabled: one batch that admitted three lines (one succeeded
/// and was folded, one dead-lettered, one live), skipped a bad line and is paused.
fn ledger_with_batches() -> Ledger {
    let mut l = ledger_with_features();
    let mut apply =
        |cmd: Command| l.apply(cmd, NOW + 120_000).outcome.unwrap_or_else(|e| panic!("fixture command refused: {e}"));
    apply(Command::EnableFeature { name: BATCHES.into() });
    apply(Command::CreateBatch { spec: batch_spec(BadLinePolicy::Skip) });
    apply(Command::AdmitBatch {
        batch: 1,
        from: Cursor::default(),
        to: Cursor { line: 4, offset: 600 },
        jobs: vec![(1, job(101, "default", 9)), (2, job(102, "default", 9)), (4, job(104, "default", 9))],
        bad_lines: vec![BadLine { line: 3, reason: "not JSON".into() }],
        end: false,
        source_bytes: 1_200,
    });
    let leases = match apply(Command::Lease { worker: wid("render-01"), max: 10 }) {
        Outcome::Leased(leases) => leases,
        other => panic!("no leases: {other:?}"),
    };
    let w = wid("render-01");
    let of = |n: i64| leases.iter().find(|x| x.job.asset_id == 9_000 + n).expect("leased");
    let (a, b) = (of(101), of(102));
    apply(Command::Complete { task: a.task, lease_seq: a.lease_seq, worker: w.clone(), result: result() });
    let error = "decode: not audio".to_owned();
    apply(Command::Fail { task: b.task, lease_seq: b.lease_seq, worker: w, error, permanent: true });
    apply(Command::BatchControl { batch: 1, action: BatchAction::Pause });
    l
}

#[test]
fn a_snapshot_with_batches_is_format_3_and_encodes_to_its_golden_bytes_and_back() {
    let ledger = ledger_with_batches();
    ledger.check_invariants().expect("invariants");
    let batch = ledger.batches().get(1).expect("batch 1");
    assert_eq!((batch.counts.admitted, batch.counts.succeeded, batch.counts.dead_lettered), (3, 1, 1));
    assert_eq!((batch.live, batch.counts.bad_lines), (1, 1));
    let members = vec![(1, "10.0.0.1:7400".to_owned())];
    let encoded = codec::encode_snapshot(FORMAT_VERSION, &members, &ledger).expect("encodes");
    assert_eq!(codec::version_of(&encoded), Some((codec::Kind::Snapshot, 3)), "format 2 cannot hold batches");
    let expected = golden(3, "snapshot", &encoded);
    assert!(encoded == expected, "the format 3 snapshot encoding changed: that is a format change");
    let decoded = codec::decode_snapshot(&expected).expect("the fixture decodes");
    assert!(decoded.ledger == ledger, "the fixture decodes to the same ledger");
    decoded.ledger.check_invariants().expect("invariants after a load");
    assert_eq!(decoded.ledger.digest(), ledger.digest(), "the digest survives a snapshot");
    assert_eq!(decoded.ledger.batches().get(1).map(|b| b.state), Some(BatchState::Paused));
}

#[test]
fn a_ledger_that_enabled_nothing_still_snapshots_as_format_1() {
    let encoded = codec::encode_snapshot(FORMAT_VERSION, &[], &ledger()).expect("encodes");
    assert_eq!(codec::version_of(&encoded), Some((codec::Kind::Snapshot, 1)));
    assert_eq!(
        codec::encode_snapshot(2, &[], &ledger()).map(|b| codec::version_of(&b)),
        Ok(Some((codec::Kind::Snapshot, 2)))
    );
}

/// Decoding never guesses: whatever it does not understand is an error that says what and where.
#[test]
fn bytes_this_build_cannot_read_are_refused_with_what_was_not_understood() {
    use codec::{Error, Kind};
    let batch = Batch {
        origin: ORIGIN,
        now: NOW,
        commands: vec![(1, Command::Renew { worker: wid("w") }), (2, Command::CollectGarbage)],
    };
    let bytes = codec::encode_batch(FORMAT_VERSION, &batch).expect("encodes");
    assert_eq!(codec::version_of(&bytes), Some((Kind::LogEntry, 1)));

    let mut newer = bytes.clone();
    newer[4..6].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(codec::decode_batch(&newer), Err(Error::UnknownVersion { kind: Kind::LogEntry, version: 2 }));

    // The second command's tag is the last byte (CollectGarbage has no fields).
    let mut unknown = bytes.clone();
    *unknown.last_mut().expect("bytes") = 100;
    assert_eq!(codec::decode_batch(&unknown), Err(Error::UnknownCommand { version: 1, index: 1, tag: 100 }));
    let message = codec::decode_batch(&unknown).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("command 1 of the log entry has wire tag 100"), "{message}");

    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(codec::decode_batch(&longer), Err(Error::TrailingBytes { kind: Kind::LogEntry, version: 1, extra: 1 }));

    let truncated = &bytes[..bytes.len() - 3];
    assert!(matches!(codec::decode_batch(truncated), Err(Error::Malformed { kind: Kind::LogEntry, version: 1, .. })));

    let snapshot = codec::encode_snapshot(FORMAT_VERSION, &[], &Ledger::default()).expect("encodes");
    assert_eq!(codec::decode_batch(&snapshot), Err(Error::NotKiln { kind: Kind::LogEntry }));
    assert_eq!(codec::decode_snapshot(&bytes).map(|_| ()), Err(Error::NotKiln { kind: Kind::Snapshot }));
    assert!(Ledger::from_snapshot(b"garbage").is_err());

    assert_eq!(codec::encode_batch(9, &batch), Err(Error::CannotWrite { version: 9 }));
}
