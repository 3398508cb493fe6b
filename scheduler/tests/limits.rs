//! What a worker session can claim is bounded by the server, whatever the worker says: its slot
//! count is clamped, and a `Want` for the whole queue is clipped to what its slots may hold.

mod common;

use std::time::Duration;

use common::{jobs, replying_session, session, start, submit, wait_for_ledger};
use kiln_proto::v1;

/// Opens a session as `id` with `slots`, asks for `want` tasks, and keeps every lease it gets
/// (never reporting), until the returned task is aborted.
async fn greedy_session(
    node: &kiln_scheduler::Running,
    id: &str,
    slots: u32,
    want: u32,
) -> tokio::task::JoinHandle<()> {
    let hello = v1::Hello {
        worker_id: id.into(),
        hostname: "h".repeat(10_000),
        slots,
        cores: 1,
        speed: 1e9,
        version: "test".into(),
        renderers: vec!["loudness".into()],
        ..Default::default()
    };
    session(node, hello, want, |_| None).await
}

fn leased_to(l: &kiln_ledger::Ledger, id: &str) -> u32 {
    l.workers().iter().find(|w| w.spec.id.as_str() == id).map_or(0, |w| w.leased)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_for_the_whole_queue_is_clipped_to_what_the_slots_may_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs("greedy", 200)).await;
    let session = greedy_session(&node, "greedy", 2, 1_000_000).await;
    let cap = 2 * kiln_scheduler::MAX_HELD_PER_SLOT;
    wait_for_ledger(&node, "the greedy worker leased up to its cap", move |l| leased_to(l, "greedy") >= cap).await;
    // More rounds of dispatch go by (it polls every 250 ms): the cap holds.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (leased, queued) = node.handle().read(|l, _| (leased_to(l, "greedy"), l.counts().queued)).await.expect("read");
    assert_eq!(leased, cap, "a worker with 2 slots holds at most {cap} leases");
    assert_eq!(queued, 200 - u64::from(cap), "the rest stays queued for other workers");
    let record = node
        .handle()
        .read(|l, _| l.workers().into_iter().find(|w| w.spec.id.as_str() == "greedy").cloned())
        .await
        .expect("read")
        .expect("registered");
    assert_eq!(record.spec.hostname.len(), 255, "a 10 kB hostname is cut");
    assert_eq!(record.spec.speed_milli, 1_000_000, "speed is clamped to 1000×");
    session.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_claim_more_slots_than_a_machine_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let session = greedy_session(&node, "huge", u32::MAX, 0).await;
    wait_for_ledger(&node, "the worker registered", |l| l.workers().iter().any(|w| w.spec.id.as_str() == "huge")).await;
    let slots = node
        .handle()
        .read(|l, _| l.workers().iter().find(|w| w.spec.id.as_str() == "huge").map(|w| w.spec.slots))
        .await
        .expect("read");
    assert_eq!(slots, Some(kiln_scheduler::MAX_SLOTS));
    session.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_from_a_non_member_is_refused_and_the_node_stays_healthy() {
    use protobuf::Message as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs("before", 3)).await;
    let before = node.handle().status().await.expect("status");
    let mut forged = raft::prelude::Message::default();
    forged.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    forged.from = 99;
    forged.to = 1;
    forged.term = before.term + 1_000;
    forged.commit = 1_000_000;
    let bytes = forged.write_to_bytes().expect("encode");
    let address = format!("http://{}", node.grpc_addr());
    let mut peer = v1::raft_peer_client::RaftPeerClient::connect(address).await.expect("connect");
    peer.step(v1::RaftBatch { from: 99, messages: vec![bytes] }).await.expect("the peer port answers");
    // Still the leader of its own term, and still taking work.
    submit(&node, jobs("after", 3)).await;
    let after = node.handle().status().await.expect("status");
    assert_eq!((after.term, after.leader_id), (before.term, 1), "a forged heartbeat changed the term or leader");
    assert!(node.failure().is_none());
    let submitted = node.handle().read(|l, _| l.counts().queued).await.expect("read");
    assert_eq!(submitted, 6);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_to_store_fails_the_task_and_errors_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs("huge", 1)).await;
    let session = replying_session(&node, "bloated", "", |lease| {
        let result = v1::TaskResult { metadata_json: "x".repeat(1 << 20), ..Default::default() };
        v1::worker_message::Msg::Completed(v1::Completed { lease: Some(lease), result: Some(result) })
    })
    .await;
    wait_for_ledger(&node, "the task dead-lettered", |l| l.counts().dead_lettered == 1).await;
    session.abort();
    let error = node.handle().read(|l, _| l.list(&Default::default())[0].last_error.clone()).await.expect("read");
    let error = error.expect("an error is recorded");
    assert!(error.contains("result was refused") && error.contains("metadata of 1048576 bytes"), "{error}");

    submit(&node, common::jobs("long-error", 1)).await;
    let session = replying_session(&node, "verbose", "", |lease| {
        let error = "e".repeat(1 << 20);
        v1::worker_message::Msg::Failed(v1::Failed { lease: Some(lease), error, permanent: true, timings: vec![] })
    })
    .await;
    wait_for_ledger(&node, "the second task dead-lettered", |l| l.counts().dead_lettered == 2).await;
    session.abort();
    let errors: Vec<usize> = node
        .handle()
        .read(|l, _| {
            l.list(&Default::default()).iter().filter_map(|t| t.last_error.as_ref().map(String::len)).collect()
        })
        .await
        .expect("read");
    // The dead letter's reason is the worker's (cut) error behind a short prefix.
    let cap = kiln_scheduler::MAX_ERROR + "permanent error: ".len();
    assert!(errors.iter().all(|n| *n <= cap), "{errors:?}");
    node.shutdown().await;
}
