//! The scheduler shell over real sockets and real sled directories: restart recovery, and a
//! three-member cluster that keeps every acknowledged task through a leader loss.

use std::time::{Duration, Instant};

use kiln_config::{PeerOptions, SchedulerOptions};
use kiln_proto::v1;
use kiln_scheduler::Running;
use kiln_testkit::free_port;

fn options(dir: &std::path::Path, node_id: u64, port: u16, peers: Vec<PeerOptions>) -> SchedulerOptions {
    SchedulerOptions {
        node_id,
        data_dir: dir.join(format!("node-{node_id}")),
        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        peers,
        raft_tick: Duration::from_millis(50),
        snapshot_every: 50,
        ..Default::default()
    }
}

fn jobs(prefix: &str, n: usize) -> Vec<v1::EncodeJob> {
    (0..n)
        .map(|i| v1::EncodeJob {
            request_id: format!("{prefix}-{i}"),
            release_id: 1,
            asset_id: i as i64,
            asset_guid: format!("m/{prefix}-{i}.wav"),
            derivative_assets: vec!["loudness".into()],
            ..Default::default()
        })
        .collect()
}

async fn submit(addresses: Vec<String>, jobs: Vec<v1::EncodeJob>) -> v1::SubmitResponse {
    let mut client = kiln_proto::Client::new(addresses).expect("client");
    let req = v1::SubmitRequest { jobs };
    client
        .call(|mut s| {
            let req = req.clone();
            async move { s.submit(req).await }
        })
        .await
        .expect("submit")
}

async fn task_count(node: &Running) -> u64 {
    node.handle().read(|l, _| l.submitted_total()).await.expect("read")
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_recovers_every_task_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let opts = options(dir.path(), 1, port, vec![]);
    let node = kiln_scheduler::start(&opts).await.expect("start");
    let address = format!("http://127.0.0.1:{port}");
    // More entries than snapshot_every, so recovery goes through a snapshot and a log suffix.
    for batch in 0..120 {
        submit(vec![address.clone()], jobs(&format!("b{batch}"), 5)).await;
    }
    assert_eq!(task_count(&node).await, 600);
    node.shutdown().await;

    let node = kiln_scheduler::start(&opts).await.expect("restart");
    wait_until("the restarted node to lead", || async { node.handle().status().await.is_ok_and(|s| s.is_leader) })
        .await;
    assert_eq!(task_count(&node).await, 600);
    // Idempotency survives the restart too.
    let again = submit(vec![address], jobs("b0", 5)).await;
    assert!(again.results.iter().all(|r| !r.created));
    assert_eq!(task_count(&node).await, 600);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_losing_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<PeerOptions> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| PeerOptions { id: i as u64 + 1, address: format!("http://127.0.0.1:{p}") })
        .collect();
    let addresses: Vec<String> = peers.iter().map(|p| p.address.clone()).collect();
    let mut nodes: Vec<Option<Running>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let opts = options(dir.path(), i as u64 + 1, *port, peers.clone());
        nodes.push(Some(kiln_scheduler::start(&opts).await.expect("start")));
    }

    // Submitting through the last member works whichever node leads: the client follows.
    let resp = submit(vec![addresses[2].clone()], jobs("first", 300)).await;
    assert_eq!(resp.results.len(), 300);
    for node in nodes.iter().flatten() {
        wait_until("replication to every member", || async { task_count(node).await == 300 }).await;
    }

    let leader = nodes[0].as_ref().expect("node").handle().status().await.expect("status").leader_id;
    assert!(leader != 0);
    let leader_index = (leader - 1) as usize;
    if let Some(n) = nodes[leader_index].take() {
        n.shutdown().await;
    }
    let survivors: Vec<String> =
        addresses.iter().enumerate().filter(|(i, _)| *i != leader_index).map(|(_, a)| a.clone()).collect();
    let resp = submit(survivors, jobs("second", 200)).await;
    assert_eq!(resp.results.len(), 200);
    for node in nodes.iter().flatten() {
        wait_until("the new leader's entries everywhere", || async { task_count(node).await == 500 }).await;
        let status = node.handle().status().await.expect("status");
        assert_ne!(status.leader_id, leader, "a new leader must have been elected");
    }
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

fn three_peers() -> (Vec<u16>, Vec<PeerOptions>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| PeerOptions { id: i as u64 + 1, address: format!("http://127.0.0.1:{p}") })
        .collect();
    (ports, peers)
}

async fn digest(node: &Running) -> (u64, u64) {
    node.handle().read(|l, s| (s.applied_index, l.digest())).await.expect("read")
}

/// Waits until every node has applied the same index and holds the same ledger.
async fn wait_identical(nodes: &[&Running]) {
    wait_until("identical ledgers on every node", || async {
        let mut seen = Vec::new();
        for n in nodes {
            seen.push(digest(n).await);
        }
        seen.windows(2).all(|w| w[0] == w[1])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ports, peers) = three_peers();
    let addresses: Vec<String> = peers.iter().map(|p| p.address.clone()).collect();
    let opts: Vec<SchedulerOptions> = (0..3)
        .map(|i| SchedulerOptions { snapshot_every: 20, ..options(dir.path(), i as u64 + 1, ports[i], peers.clone()) })
        .collect();
    let mut nodes = Vec::new();
    for o in &opts {
        nodes.push(Some(kiln_scheduler::start(o).await.expect("start")));
    }
    submit(addresses.clone(), jobs("before", 10)).await;
    let leader = nodes[0].as_ref().expect("node").handle().status().await.expect("status").leader_id;
    // Stop a follower, then write far more entries than snapshot_every so the leader compacts
    // past everything the follower has.
    let follower = (0..3).find(|i| *i as u64 + 1 != leader).expect("a follower");
    if let Some(n) = nodes[follower].take() {
        n.shutdown().await;
    }
    // Enough tasks that the snapshot is several 1 MiB chunks on the wire.
    for b in 0..90 {
        submit(addresses.clone(), jobs(&format!("while-down-{b}"), 300)).await;
    }
    let leader_node = nodes[(leader - 1) as usize].as_ref().expect("leader");
    let s = leader_node.handle().status().await.expect("status");
    assert!(s.snapshot_index > 20, "the leader compacted its log: {s:?}");
    let ledger_bytes = leader_node.handle().read(|l, _| l.to_snapshot().len()).await.expect("read");
    assert!(ledger_bytes > 2 << 20, "the snapshot must span several chunks: {ledger_bytes} bytes");
    nodes[follower] = Some(kiln_scheduler::start(&opts[follower]).await.expect("restart"));
    let all: Vec<&Running> = nodes.iter().flatten().collect();
    wait_identical(&all).await;
    assert_eq!(task_count(all[follower]).await, 27010);
    let caught_up = all[follower].handle().status().await.expect("status");
    assert!(caught_up.snapshot_index >= s.snapshot_index, "caught up through a snapshot: {caught_up:?}");
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_replaced_by_adding_a_new_one_and_removing_the_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ports, peers) = three_peers();
    let addresses: Vec<String> = peers.iter().map(|p| p.address.clone()).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        nodes.push(Some(
            kiln_scheduler::start(&options(dir.path(), i as u64 + 1, *port, peers.clone())).await.expect("start"),
        ));
    }
    submit(addresses.clone(), jobs("before", 100)).await;

    // Node 4 starts empty, knowing whom to answer, and waits to be added.
    let port4 = free_port();
    let address4 = format!("http://127.0.0.1:{port4}");
    let mut peers4 = peers.clone();
    peers4.push(PeerOptions { id: 4, address: address4.clone() });
    let opts4 = SchedulerOptions { join: true, ..options(dir.path(), 4, port4, peers4) };
    let node4 = kiln_scheduler::start(&opts4).await.expect("start node 4");
    assert_eq!(task_count(&node4).await, 0);

    let mut client = kiln_proto::Client::new(addresses.clone()).expect("client");
    let add = v1::MembershipRequest { node_id: 4, address: address4.clone(), remove: false };
    let after_add = client
        .call(|mut s| {
            let r = add.clone();
            async move { s.change_membership(r).await }
        })
        .await
        .expect("add node 4");
    assert_eq!(after_add.members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    wait_until("node 4 to catch up", || async { task_count(&node4).await == 100 }).await;

    // Remove node 1 (whoever leads), then stop it.
    let remove = v1::MembershipRequest { node_id: 1, remove: true, ..Default::default() };
    let after_remove = client
        .call(|mut s| {
            let r = remove.clone();
            async move { s.change_membership(r).await }
        })
        .await
        .expect("remove node 1");
    assert_eq!(after_remove.members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2, 3, 4]);
    if let Some(n) = nodes[0].take() {
        n.shutdown().await;
    }
    let survivors = vec![addresses[1].clone(), addresses[2].clone(), address4.clone()];
    submit(survivors, jobs("after", 50)).await;
    let all: Vec<&Running> = nodes.iter().flatten().chain(std::iter::once(&node4)).collect();
    wait_identical(&all).await;
    assert_eq!(task_count(&node4).await, 150);

    // The new membership survives a restart of the new node (it is in its log/snapshot now).
    node4.shutdown().await;
    let node4 = kiln_scheduler::start(&opts4).await.expect("restart node 4");
    wait_until("node 4 back with everything", || async { task_count(&node4).await == 150 }).await;
    let s = node4.handle().status().await.expect("status");
    assert_eq!(s.members.iter().map(|m| m.0).collect::<Vec<_>>(), vec![2, 3, 4]);
    node4.shutdown().await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_a_lost_majority_restarts_as_a_new_cluster_with_every_committed_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ports, peers) = three_peers();
    let addresses: Vec<String> = peers.iter().map(|p| p.address.clone()).collect();
    let opts: Vec<SchedulerOptions> = (0..3)
        .map(|i| SchedulerOptions { snapshot_every: 20, ..options(dir.path(), i as u64 + 1, ports[i], peers.clone()) })
        .collect();
    let mut nodes = Vec::new();
    for o in &opts {
        nodes.push(kiln_scheduler::start(o).await.expect("start"));
    }
    // Enough entries that the survivor holds a snapshot and a log suffix after it.
    for b in 0..30 {
        submit(addresses.clone(), jobs(&format!("b{b}"), 4)).await;
    }
    for n in &nodes {
        wait_until("replication everywhere", || async { task_count(n).await == 120 }).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
    // Nodes 1 and 3 are gone for good; node 2 alone cannot elect itself, until forced.
    let forced = SchedulerOptions { force_new_cluster: true, ..opts[1].clone() };
    let survivor = kiln_scheduler::start(&forced).await.expect("force a new cluster");
    wait_until("the survivor to lead alone", || async { survivor.handle().status().await.is_ok_and(|s| s.is_leader) })
        .await;
    assert_eq!(task_count(&survivor).await, 120);
    submit(vec![addresses[1].clone()], jobs("after", 10)).await;
    survivor.shutdown().await;
    // Without the flag it is now simply a one-member cluster.
    let survivor = kiln_scheduler::start(&opts[1]).await.expect("restart");
    wait_until("the survivor to lead again", || async { survivor.handle().status().await.is_ok_and(|s| s.is_leader) })
        .await;
    assert_eq!(task_count(&survivor).await, 130);
    let members = survivor.handle().status().await.expect("status").members;
    assert_eq!(members.iter().map(|m| m.0).collect::<Vec<_>>(), vec![2]);
    survivor.shutdown().await;
}
