//! Deterministic simulation of the Raft shell: three real [`Node`]s (raft-rs, sled, the ledger)
//! driven round by round in one thread, over a simulated network that drops, delays and
//! reorders messages, with partitions and crash-restarts — all drawn from one seed.
//!
//! Each round: deliver the messages that are due, let each live node run one [`Node::round`]
//! (requests, a tick, proposals, its `Ready`), collect what it sent, and inject faults and client
//! traffic. Time is the simulation's: 50 ms per round, read by the nodes through their `clock`.
//!
//! The oracle checks the task invariants (docs/architecture.md) the way a client can know it. A submit that was acknowledged must
//! be in the ledger at the end; one that timed out, failed over or hit a crashed node is *unknown*
//! — it may or may not be there, and both are correct — but never twice, and never a task nobody
//! submitted. Along the way every replica's ledger must satisfy the ledger's own invariants, and
//! two replicas that have applied the same index must hold identical ledgers.
//!
//! A failure prints its seed; `KILN_SIM_SEED=<seed>` replays that run alone.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_ledger::{Command, EventKind, LedgerConfig, Millis, Outcome, Rejection, WorkerSpec};
use kiln_types::{AssetGuid, EncodeJob, QueueName, RendererName, RequestId, TaskId, WorkerId};
use raft::prelude::{Message, MessageType};
use tokio::sync::{mpsc, oneshot};

use crate::node::{Node, NodeConfig, NodeEvent, ProposeError, Request, RunError, Transport};

const ROUND_MS: Millis = 50;

thread_local! {
    /// The simulated wall clock, read by the nodes as their `clock`.
    static NOW: Cell<Millis> = const { Cell::new(1_700_000_000_000) };
}

fn sim_clock() -> Millis {
    NOW.with(Cell::get)
}

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Collects what a node sends; the simulation decides what arrives.
struct Outbox(Arc<Mutex<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&mut self, messages: Vec<Message>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(messages);
    }
}

struct SimNode {
    id: u64,
    dir: PathBuf,
    node: Option<Node>,
    outbox: Arc<Mutex<Vec<Message>>>,
    events: Option<mpsc::UnboundedReceiver<NodeEvent>>,
    inbox: Vec<Request>,
    /// Round at which a crashed node starts again.
    restart_at: Option<u64>,
}

struct Flight {
    at: u64,
    msg: Message,
}

type Reply = oneshot::Receiver<Result<Result<Outcome, Rejection>, ProposeError>>;

#[derive(Default)]
struct Oracle {
    /// Acknowledged submits: request id → the task id the ledger gave it.
    acked: BTreeMap<String, TaskId>,
    /// Every request id ever sent (acknowledged or not).
    sent: BTreeSet<String>,
    /// Submits with no definite answer: they may or may not have been applied.
    unknown: BTreeSet<String>,
    pending: Vec<(String, u64, Reply)>,
}

/// A simulated worker's view: what it holds, and its outstanding requests.
#[derive(Default)]
struct Worker {
    registered: bool,
    held: Vec<(TaskId, u32, u64)>,
    lease_reply: Option<Reply>,
    reports: Vec<Reply>,
}

struct Sim {
    rng: Rng,
    round: u64,
    _tmp: tempfile::TempDir,
    nodes: Vec<SimNode>,
    net: Vec<Flight>,
    isolated: BTreeMap<u64, u64>,
    drop_p: f64,
    max_delay: u64,
    oracle: Oracle,
    worker: Worker,
    next_request: u64,
    /// applied index → ledger digest, as first seen on any replica.
    digests: HashMap<u64, u64>,
    seed: u64,
}

fn job(request_id: &str) -> EncodeJob {
    let rid = RequestId::new(request_id).unwrap_or_else(|e| panic!("request id {request_id}: {e}"));
    let guid = AssetGuid::new(format!("sim/{request_id}.wav")).unwrap_or_else(|e| panic!("guid: {e}"));
    let renderer = RendererName::new("loudness").unwrap_or_else(|e| panic!("renderer: {e}"));
    EncodeJob {
        request_id: rid,
        release_id: 1,
        asset_id: 1,
        asset_guid: guid,
        derivative_assets: [renderer].into_iter().collect(),
        queue: QueueName::default(),
        priority: 0,
        max_attempts: 3,
    }
}

fn worker_id() -> WorkerId {
    WorkerId::new("sim-worker").unwrap_or_else(|e| panic!("worker id: {e}"))
}

impl Sim {
    fn new(seed: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let nodes = (1..=3)
            .map(|id| SimNode {
                id,
                dir: tmp.path().join(format!("node-{id}")),
                node: None,
                outbox: Arc::new(Mutex::new(Vec::new())),
                events: None,
                inbox: Vec::new(),
                restart_at: None,
            })
            .collect();
        let mut sim = Self {
            rng: Rng(seed),
            round: 0,
            _tmp: tmp,
            nodes,
            net: Vec::new(),
            isolated: BTreeMap::new(),
            drop_p: 0.05,
            max_delay: 4,
            oracle: Oracle::default(),
            worker: Worker::default(),
            next_request: 0,
            digests: HashMap::new(),
            seed,
        };
        for i in 0..3 {
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let config = NodeConfig {
            id: n.id,
            data_dir: n.dir.clone(),
            members: (1..=3).map(|id| (id, format!("sim://{id}"))).collect(),
            join: false,
            force_new_cluster: false,
            ledger: LedgerConfig {
                lease_ttl_ms: 2_000,
                backoff_base_ms: 100,
                backoff_max_ms: 1_000,
                ..LedgerConfig::default()
            },
            tick: Duration::from_millis(ROUND_MS as u64),
            // Distinct, fixed election timeouts: raft-rs's own randomness would make runs unrepeatable.
            election_ticks: 10 + 4 * (n.id as usize - 1),
            max_batch: 64,
            batch_window: Duration::ZERO,
            snapshot_every: 25,
            clock: sim_clock,
            support: kiln_ledger::Support::this_build(),
            randomized_election: false,
            metrics: Default::default(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let node = Node::open(config, Box::new(Outbox(n.outbox.clone())), tx)
            .unwrap_or_else(|e| panic!("seed {}: node {} cannot open: {e}", self.seed, n.id));
        n.node = Some(node);
        n.events = Some(rx);
        n.restart_at = None;
    }

    fn up(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].node.is_some()
    }

    fn reachable(&self, from: u64, to: u64) -> bool {
        self.up(to) && !self.isolated.contains_key(&from) && !self.isolated.contains_key(&to)
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().filter_map(|n| n.node.as_ref()).map(Node::node_status).find(|s| s.is_leader).map(|s| s.id)
    }

    fn step(&mut self, faults: bool, clients: bool) {
        self.round += 1;
        NOW.with(|n| n.set(n.get() + ROUND_MS));
        // Deliver what is due.
        let due: Vec<Flight>;
        (due, self.net) = std::mem::take(&mut self.net).into_iter().partition(|f| f.at <= self.round);
        for f in due {
            let (from, to) = (f.msg.from, f.msg.to);
            let snapshot = f.msg.get_msg_type() == MessageType::MsgSnapshot;
            if self.reachable(from, to) {
                self.nodes[(to - 1) as usize].inbox.push(Request::Step(Box::new(f.msg)));
                if snapshot {
                    self.nodes[(from - 1) as usize].inbox.push(Request::SnapshotStatus { peer: to, ok: true });
                }
            } else if self.up(from) {
                let inbox = &mut self.nodes[(from - 1) as usize].inbox;
                inbox.push(Request::Unreachable(to));
                if snapshot {
                    inbox.push(Request::SnapshotStatus { peer: to, ok: false });
                }
            }
        }
        // Each live node runs one round.
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            let Some(node) = n.node.as_mut() else { continue };
            let requests = std::mem::take(&mut n.inbox);
            if let Err(e) = node.round(requests, true) {
                panic!("seed {}: node {} failed: {e}", self.seed, n.id);
            }
            if let Some(rx) = n.events.as_mut() {
                while rx.try_recv().is_ok() {}
            }
            let sent: Vec<Message> = std::mem::take(&mut *n.outbox.lock().unwrap_or_else(|p| p.into_inner()));
            for msg in sent {
                // A snapshot's fate is reported like the real transport does, on delivery.
                if self.drop_p > 0.0 && self.rng.chance(self.drop_p) && msg.get_msg_type() != MessageType::MsgSnapshot {
                    continue;
                }
                let at = self.round + 1 + self.rng.below(self.max_delay);
                self.net.push(Flight { at, msg });
            }
        }
        self.check_replicas();
        if faults {
            self.inject_faults();
        } else {
            self.heal();
        }
        self.drive_worker();
        if clients {
            self.drive_clients();
        }
        self.collect_replies();
    }

    fn inject_faults(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_at.is_some_and(|r| r <= self.round) {
                self.start(i);
            }
        }
        self.isolated.retain(|_, until| *until > self.round);
        let faulty = self.nodes.iter().filter(|n| n.node.is_none()).count() + self.isolated.len();
        if faulty >= 2 {
            return;
        }
        let victim = 1 + self.rng.below(3);
        if self.rng.chance(0.004) && self.up(victim) {
            // A crash: the process and everything in memory is gone; sled keeps what was flushed.
            let n = &mut self.nodes[(victim - 1) as usize];
            n.node = None;
            n.events = None;
            n.inbox.clear();
            n.restart_at = Some(self.round + 20 + self.rng.below(100));
        } else if self.rng.chance(0.006) {
            self.isolated.insert(victim, self.round + 20 + self.rng.below(120));
        }
    }

    fn heal(&mut self) {
        self.isolated.clear();
        self.drop_p = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() {
                self.start(i);
            }
        }
    }

    fn propose(&mut self, to: u64, cmd: Command) -> Reply {
        let (reply, rx) = oneshot::channel();
        let n = &mut self.nodes[(to - 1) as usize];
        if n.node.is_some() {
            n.inbox.push(Request::Propose { cmd, reply });
        }
        // A crashed node drops `reply`: the receiver sees it closed, an unknown outcome.
        rx
    }

    fn drive_clients(&mut self) {
        if !self.rng.chance(0.3) {
            return;
        }
        // Clients retry a submit whose outcome they do not know, as the real client does.
        let request_id = match self.oracle.unknown.iter().next().cloned() {
            Some(r) if self.rng.chance(0.3) => r,
            _ => {
                self.next_request += 1;
                format!("t{}", self.next_request)
            }
        };
        let to = 1 + self.rng.below(3);
        self.oracle.sent.insert(request_id.clone());
        let rx = self.propose(to, Command::Submit { jobs: vec![job(&request_id)] });
        self.oracle.pending.push((request_id, self.round, rx));
    }

    /// One worker that registers, leases a few tasks, holds them a while, and completes them.
    fn drive_worker(&mut self) {
        let Some(leader) = self.leader() else { return };
        let w = worker_id();
        if !self.worker.registered {
            let spec = WorkerSpec {
                id: w.clone(),
                hostname: "sim".into(),
                slots: 3,
                cores: 3,
                memory_bytes: 0,
                speed_milli: 1000,
                queues: vec![QueueName::default()],
                version: "sim".into(),
            };
            let rx = self.propose(leader, Command::RegisterWorker { spec });
            self.worker.reports.push(rx);
            self.worker.registered = true;
        }
        if let Some(mut rx) = self.worker.lease_reply.take() {
            match rx.try_recv() {
                Ok(Ok(Ok(Outcome::Leased(leases)))) => {
                    for l in leases {
                        let done_at = self.round + 2 + self.rng.below(30);
                        self.worker.held.push((l.task, l.lease_seq, done_at));
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => self.worker.lease_reply = Some(rx),
                _ => {}
            }
        }
        if self.worker.lease_reply.is_none() && self.worker.held.len() < 3 && self.rng.chance(0.5) {
            let rx = self.propose(leader, Command::Lease { worker: w.clone(), max: 3 });
            self.worker.lease_reply = Some(rx);
        }
        if self.rng.chance(0.1) {
            let rx = self.propose(leader, Command::Renew { worker: w.clone() });
            self.worker.reports.push(rx);
        }
        let round = self.round;
        let (done, held): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.worker.held).into_iter().partition(|(_, _, at)| *at <= round);
        self.worker.held = held;
        for (task, lease_seq, _) in done {
            let cmd = Command::Complete { task, lease_seq, worker: w.clone(), result: Default::default() };
            let rx = self.propose(leader, cmd);
            self.worker.reports.push(rx);
        }
        self.worker.reports.retain_mut(|rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }

    fn collect_replies(&mut self) {
        let round = self.round;
        let mut still = Vec::new();
        for (request_id, sent_at, mut rx) in std::mem::take(&mut self.oracle.pending) {
            match rx.try_recv() {
                Ok(Ok(Ok(Outcome::Submitted(results)))) => {
                    let task = results
                        .first()
                        .map(|r| r.task)
                        .unwrap_or_else(|| panic!("seed {}: empty submit outcome", self.seed));
                    if let Some(previous) = self.oracle.acked.insert(request_id.clone(), task) {
                        assert_eq!(
                            previous, task,
                            "seed {}: {request_id} acknowledged as two different tasks",
                            self.seed
                        );
                    }
                    self.oracle.unknown.remove(&request_id);
                }
                Ok(Ok(other)) => panic!("seed {}: submit {request_id} answered {other:?}", self.seed),
                // Not leader, leadership lost, node crashed: the submit may or may not be in the log.
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                    if !self.oracle.acked.contains_key(&request_id) {
                        self.oracle.unknown.insert(request_id);
                    }
                }
                // A client gives up after a while: a timeout is unknown, never absent.
                Err(oneshot::error::TryRecvError::Empty) if round - sent_at > 200 => {
                    if !self.oracle.acked.contains_key(&request_id) {
                        self.oracle.unknown.insert(request_id);
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => still.push((request_id, sent_at, rx)),
            }
        }
        self.oracle.pending = still;
    }

    /// Every replica's ledger keeps its own invariants; equal applied index, equal ledger.
    fn check_replicas(&mut self) {
        for n in &self.nodes {
            let Some(node) = n.node.as_ref() else { continue };
            let ledger = node.ledger();
            if let Err(e) = ledger.check_invariants() {
                panic!("seed {}: node {} ledger invariant broken at round {}: {e}", self.seed, n.id, self.round);
            }
            let applied = node.node_status().applied_index;
            let digest = ledger.digest();
            let seen = *self.digests.entry(applied).or_insert(digest);
            assert_eq!(seen, digest, "seed {}: node {} diverged at applied index {applied}", self.seed, n.id);
        }
    }

    fn converged(&self) -> bool {
        let views: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|node| (node.node_status().applied_index, node.ledger().digest()))
            .collect();
        views.len() == self.nodes.len() && views.windows(2).all(|w| w[0] == w[1]) && self.oracle.pending.is_empty()
    }

    /// The end of a run: every acknowledged submit is there once, nothing nobody sent is.
    fn audit(&self) {
        let leader = self.leader().unwrap_or_else(|| panic!("seed {}: no leader after healing", self.seed));
        let ledger =
            self.nodes[(leader - 1) as usize].node.as_ref().map(Node::ledger).unwrap_or_else(|| panic!("leader down"));
        for (request_id, task) in &self.oracle.acked {
            let rid = RequestId::new(request_id.as_str()).unwrap_or_else(|e| panic!("{e}"));
            let found = ledger
                .task_by_request(&rid)
                .unwrap_or_else(|| panic!("seed {}: acknowledged {request_id} was lost", self.seed));
            assert_eq!(found.id, *task, "seed {}: {request_id} changed task id", self.seed);
        }
        let all = ledger.list(&kiln_ledger::TaskFilter { limit: usize::MAX, ..Default::default() });
        let mut seen = BTreeSet::new();
        for t in &all {
            let rid = t.job.request_id.as_str().to_owned();
            assert!(self.oracle.sent.contains(&rid), "seed {}: task {} was never submitted", self.seed, t.id);
            assert!(seen.insert(rid.clone()), "seed {}: {rid} admitted twice", self.seed);
            let successes = t.history.iter().filter(|h| h.kind == EventKind::Succeeded).count();
            assert!(successes <= 1, "seed {}: task {} succeeded {successes} times", self.seed, t.id);
        }
        assert!(all.len() <= self.oracle.sent.len());
        assert!(all.len() >= self.oracle.acked.len());
    }
}

/// Runs one seeded simulation: `rounds` of faults and traffic, then healing until the replicas
/// agree, then the audit. Returns (acknowledged, unknown, tasks) for the caller's sanity checks.
fn simulate(seed: u64, rounds: u64) -> (usize, usize, usize) {
    let mut sim = Sim::new(seed);
    for _ in 0..rounds {
        sim.step(true, true);
    }
    let mut settle = 0;
    while !sim.converged() {
        sim.step(false, false);
        settle += 1;
        assert!(settle < 2_000, "seed {seed}: replicas did not converge after healing");
    }
    // Let the worker finish what it holds, so completions are checked too.
    for _ in 0..100 {
        sim.step(false, false);
    }
    while !sim.converged() {
        sim.step(false, false);
        settle += 1;
        assert!(settle < 4_000, "seed {seed}: replicas did not converge after healing");
    }
    sim.audit();
    let leader = sim.leader().unwrap_or(1);
    let tasks = sim.nodes[(leader - 1) as usize].node.as_ref().map_or(0, |n| n.ledger().submitted_total() as usize);
    (sim.oracle.acked.len(), sim.oracle.unknown.len(), tasks)
}

#[test]
fn replicas_agree_and_lose_nothing_under_drops_reordering_partitions_and_crashes() {
    let seeds: Vec<u64> = match std::env::var("KILN_SIM_SEED") {
        Ok(s) => vec![s.parse().unwrap_or_else(|e| panic!("KILN_SIM_SEED={s}: {e}"))],
        Err(_) => (1..=6).collect(),
    };
    for seed in seeds {
        let (acked, unknown, tasks) = simulate(seed, 1_500);
        eprintln!("seed {seed}: {acked} acknowledged, {unknown} unknown, {tasks} tasks");
        // The run must have done something, or it proves nothing.
        assert!(acked > 50, "seed {seed}: only {acked} submits acknowledged");
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    assert_eq!(simulate(42, 400), simulate(42, 400));
}

/// A one-member cluster in `dir`, driven until it leads.
fn lone_leader(dir: &std::path::Path, batch_window: Duration) -> Node {
    let config = NodeConfig {
        id: 1,
        data_dir: dir.join("node-1"),
        members: vec![(1, "sim://1".into())],
        join: false,
        force_new_cluster: false,
        ledger: LedgerConfig::default(),
        tick: Duration::from_millis(ROUND_MS as u64),
        election_ticks: 10,
        max_batch: 64,
        batch_window,
        snapshot_every: 1_000,
        clock: sim_clock,
        randomized_election: false,
        metrics: Default::default(),
        support: kiln_ledger::Support::this_build(),
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut node = Node::open(config, Box::new(Outbox(Arc::new(Mutex::new(Vec::new())))), tx)
        .unwrap_or_else(|e| panic!("open: {e}"));
    for _ in 0..5 {
        node.round(Vec::new(), true).unwrap_or_else(|e| panic!("round: {e}"));
    }
    assert!(node.node_status().is_leader);
    node
}

/// Commands that arrive together share an entry, unless that entry would be too big for a peer to
/// receive in one message: then the batch is split, and every command still gets its outcome.
#[test]
fn a_batch_too_big_for_one_entry_is_split() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut node = lone_leader(tmp.path(), Duration::ZERO);
    let before = node.node_status().last_index;
    // Two submits of 10,000 jobs with long GUIDs: about 5.5 MB each, 11 MB together.
    let big = |tag: &str| {
        let jobs = (0..10_000)
            .map(|i| {
                let mut j = job(&format!("{tag}-{i}"));
                j.asset_guid = AssetGuid::new(format!("{}/{tag}-{i}.wav", "x".repeat(480)))
                    .unwrap_or_else(|e| panic!("guid: {e}"));
                j
            })
            .collect();
        Command::Submit { jobs }
    };
    let (a_tx, mut a_rx) = oneshot::channel();
    let (b_tx, mut b_rx) = oneshot::channel();
    let requests =
        vec![Request::Propose { cmd: big("a"), reply: a_tx }, Request::Propose { cmd: big("b"), reply: b_tx }];
    node.round(requests, false).unwrap_or_else(|e| panic!("round: {e}"));
    assert_eq!(node.node_status().last_index, before + 2, "one entry per half of the batch");
    for rx in [&mut a_rx, &mut b_rx] {
        match rx.try_recv() {
            Ok(Ok(Ok(Outcome::Submitted(results)))) => assert_eq!(results.len(), 10_000),
            other => panic!("no outcome: {other:?}"),
        }
    }
    assert_eq!(node.ledger().submitted_total(), 20_000);
}

/// Group commit: under load, proposals that arrive within the batch window of the previous entry
/// wait and share the next one (one fsync for all); an idle node proposes at once. Proposals
/// handed over together (`ProposeMany`) get their own outcomes, in order.
#[test]
fn proposals_within_the_batch_window_share_one_entry() {
    const WINDOW: Duration = Duration::from_millis(300);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut node = lone_leader(tmp.path(), WINDOW);
    let round =
        |node: &mut Node, requests: Vec<Request>| node.round(requests, false).unwrap_or_else(|e| panic!("round: {e}"));
    // Let the new leader's own proposal (the lease grace) go out, then let its window pass.
    std::thread::sleep(WINDOW);
    round(&mut node, Vec::new());
    std::thread::sleep(WINDOW);
    let idle = node.node_status().last_index;

    let (a_tx, mut a_rx) = oneshot::channel();
    round(&mut node, vec![Request::Propose { cmd: Command::Submit { jobs: vec![job("a")] }, reply: a_tx }]);
    assert_eq!(node.node_status().last_index, idle + 1, "an idle node proposes at once");
    assert!(matches!(a_rx.try_recv(), Ok(Ok(Ok(Outcome::Submitted(_))))));

    // Within the window of that entry: these wait, and then go out together.
    let (b_tx, mut b_rx) = oneshot::channel();
    let (c_tx, mut c_rx) = oneshot::channel();
    let (d_tx, mut d_rx) = oneshot::channel();
    round(&mut node, vec![Request::Propose { cmd: Command::Submit { jobs: vec![job("b")] }, reply: b_tx }]);
    round(
        &mut node,
        vec![Request::ProposeMany(vec![
            (Command::Submit { jobs: vec![job("c")] }, c_tx),
            (Command::Cancel { task: TaskId(999_999) }, d_tx),
        ])],
    );
    assert_eq!(node.node_status().last_index, idle + 1, "proposals inside the window wait");
    assert!(b_rx.try_recv().is_err() && c_rx.try_recv().is_err());
    std::thread::sleep(WINDOW);
    round(&mut node, Vec::new());
    assert_eq!(node.node_status().last_index, idle + 2, "the waiting proposals share one entry");
    assert!(matches!(b_rx.try_recv(), Ok(Ok(Ok(Outcome::Submitted(_))))));
    assert!(matches!(c_rx.try_recv(), Ok(Ok(Ok(Outcome::Submitted(_))))));
    assert!(matches!(d_rx.try_recv(), Ok(Ok(Err(Rejection::UnknownTask(_))))), "each command keeps its own outcome");
    assert_eq!(node.ledger().submitted_total(), 3);
}

/// Decode or halt: a replica handed a committed entry it cannot read — a command from a newer
/// build, or a newer format — stops with an error naming the entry, and applies nothing from it or
/// after it. Skipping it instead would let it diverge from the replicas that can read it.
#[test]
fn a_node_that_cannot_decode_a_committed_entry_halts() {
    use kiln_ledger::codec::{self, Batch, Error};
    let readable = Batch { origin: 1, now: sim_clock(), commands: vec![(1, Command::ExpireLeases)] };
    let mut unknown_tag = codec::encode_batch(codec::FORMAT_VERSION, &readable).unwrap_or_else(|e| panic!("{e}"));
    // ExpireLeases has no fields: the entry ends with its tag. Tag 999 is a varint of two bytes.
    assert_eq!(unknown_tag.pop(), Some(11));
    unknown_tag.extend([0xE7, 0x07]);
    let mut unknown_version = codec::encode_batch(codec::FORMAT_VERSION, &readable).unwrap_or_else(|e| panic!("{e}"));
    unknown_version[4..6].copy_from_slice(&2u16.to_le_bytes());

    type Case = (Vec<u8>, &'static str, fn(&Error) -> bool);
    let cases: [Case; 2] = [
        (unknown_tag, "an unknown command tag", |e| {
            matches!(e, Error::UnknownCommand { tag: 999, index: 0, version: 1 })
        }),
        (unknown_version, "an unknown format version", |e| matches!(e, Error::UnknownVersion { version: 2, .. })),
    ];
    for (entry, what, expected) in cases {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut node = lone_leader(tmp.path(), Duration::ZERO);
        let applied = node.node_status().applied_index;
        let before = node.ledger().clone();
        node.propose_raw(entry).unwrap_or_else(|e| panic!("propose: {e}"));
        // A readable command right behind it must not be applied either.
        let (tx, _rx) = oneshot::channel();
        let submit = Request::Propose { cmd: Command::Submit { jobs: vec![job("after")] }, reply: tx };
        let error = match node.round(vec![submit], false) {
            Ok(()) => panic!("{what}: the node applied past an entry it cannot decode"),
            Err(e) => e,
        };
        let RunError::Undecodable { index, source } = &error else { panic!("{what}: wrong error {error}") };
        assert_eq!(*index, applied + 1, "{what}: the error names the entry's log index");
        assert!(expected(source), "{what}: wrong codec error {source}");
        assert!(error.to_string().contains(&format!("entry {}", applied + 1)), "{what}: {error}");
        assert_eq!(node.node_status().applied_index, applied, "{what}: nothing was applied");
        assert!(*node.ledger() == before, "{what}: the ledger changed");
    }
}

/// raft-rs drops a ReadIndex that reaches a leader before it has committed an entry of its term.
/// A fresh read in that window is answered at once (retry), instead of waiting forever; once the
/// leader's first entry commits, fresh reads are served.
#[test]
fn a_fresh_read_at_a_leader_just_elected_is_refused_not_lost() {
    let mut sim = Sim::new(7);
    sim.drop_p = 0.0;
    let mut rounds = 0;
    while sim.leader().is_none() {
        sim.step(false, false);
        rounds += 1;
        assert!(rounds < 500, "no leader elected");
    }
    let leader = sim.leader().unwrap_or_default();
    let answer = |sim: &mut Sim| {
        let seen: Arc<Mutex<Option<Result<u64, ProposeError>>>> = Arc::default();
        let out = seen.clone();
        let read: crate::node::FreshReadFn = Box::new(move |r| {
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.map(|(_, status)| status.id));
        });
        sim.nodes[(leader - 1) as usize].inbox.push(Request::FreshRead(read));
        // Long enough for a ReadIndex round trip to the followers.
        for _ in 0..20 {
            sim.step(false, false);
        }
        let answer = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
        answer
    };
    // Elected this round: its empty entry cannot have reached a quorum yet.
    assert!(matches!(answer(&mut sim), Some(Err(ProposeError::LeaderNotReady))), "the read was lost or served early");
    assert!(matches!(answer(&mut sim), Some(Ok(id)) if id == leader), "once committed, fresh reads are served");
}
