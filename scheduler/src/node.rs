//! The Raft node: one thread that owns the `RawNode`, the sled log and the ledger.
//!
//! Everything that changes the ledger arrives here as a [`Request`] over one channel and leaves as
//! a committed, fsynced log entry applied in order. Proposals that arrive together are batched into
//! one entry (one fsync for the batch), which is what makes a single node fast.
//!
//! ```text
//!  Handle ──Propose/Read/Step──▶ ┌──────────── node thread ────────────┐
//!                                │ batch ─▶ RawNode::propose            │
//!                                │ tick / step                          │
//!                                │ Ready: append+hard state ─▶ fsync    │──▶ peers (Transport)
//!                                │        committed ─▶ Ledger::apply    │──▶ waiters (outcomes)
//!                                │        snapshot every N entries      │──▶ sessions (effects)
//!                                └──────────────────────────────────────┘
//! ```
//!
//! The thread is synchronous on purpose: fsync and snapshot serialisation block, and keeping them
//! off the async runtime keeps gRPC responsive. Time enters here only, as `now` stamped on each
//! batch by the leader, so every replica applies the same commands at the same logical time.
//!
//! What survives a crash, and why a restart neither re-applies nor skips a command: the ledger
//! lives in memory and reaches the disk only as a snapshot, stored together with the index it was
//! taken at (the applied index) and the membership at that index. A restart loads that snapshot,
//! tells raft-rs it has applied exactly up to its index, and raft-rs re-delivers every committed
//! entry after it — ledger commands and conf changes alike — in order, once.
//!
//! Membership is replicated state too: conf changes carry the new member's address, so every node
//! (and every snapshot) knows where each member listens; the transport follows it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_ledger::codec::{self, Batch};
use kiln_ledger::{Applied, Command, Effect, Ledger, LedgerConfig, Millis, Outcome, Rejection, Support, Unsupported};
use raft::prelude::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot};

use crate::raft_log::{Bootstrap, RaftLog};

/// Why a proposal produced no outcome. Each variant tells the caller what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Ask the leader instead (its address if known).
    #[error("not the leader{}", leader_hint(.leader_address))]
    NotLeader { leader_id: u64, leader_address: Option<String> },
    /// Leadership changed while the proposal was in flight: it may or may not have been applied.
    /// Retrying is safe because every client command is idempotent.
    #[error("leadership changed before the command was committed; its outcome is unknown, retry it")]
    Unknown,
    /// The node is shutting down or has failed.
    #[error("the scheduler node has stopped")]
    Stopped,
    /// A leader elected a moment ago has not committed an entry of its term yet, and until it
    /// has, raft-rs cannot confirm a fresh read (it drops the ReadIndex without a word). Retry.
    #[error("the leader was just elected and cannot serve a fresh read yet; retry shortly")]
    LeaderNotReady,
}

fn leader_hint(addr: &Option<String>) -> String {
    match addr {
        Some(a) => format!(" (the leader is {a})"),
        None => " (no leader is known yet; retry shortly)".to_owned(),
    }
}

/// What a read sees besides the ledger.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
    /// (id, address, matched index) of every member of the current configuration. The matched
    /// index is only known on the leader (0 elsewhere).
    pub members: Vec<(u64, String, u64)>,
    pub log_entries: u64,
    pub snapshot_index: u64,
    /// Index of the last entry in this node's log (durable or about to be).
    pub last_index: u64,
    /// "leader", "follower", "candidate" or "pre-candidate".
    pub role: &'static str,
    /// How long ago a follower last heard from its leader (tick granularity); 0 on the leader.
    pub leader_heard_ms: u64,
    /// Bytes of Raft storage on disk.
    pub disk_bytes: u64,
}

/// A change of membership, proposed as a ConfChangeV2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voter listening at `address`.
    Add {
        id: u64,
        address: String,
    },
    Remove {
        id: u64,
    },
}

/// The members after a change, or why raft refused it (the same refusal on every replica).
pub type MembershipOutcome = Result<Vec<(u64, String)>, String>;

/// The refusal of a membership change while another is pending — including, right after an
/// election, the new leader's own catch-up: transient, so worth retrying.
pub const CONF_CHANGE_PENDING: &str = "another membership change is still in progress; retry when it is applied";
pub(crate) type MembershipReply = oneshot::Sender<Result<MembershipOutcome, ProposeError>>;

pub(crate) type ReadFn = Box<dyn FnOnce(&Ledger, &NodeStatus) + Send>;
/// A read that must see every write acknowledged before it started (ReadIndex).
pub(crate) type FreshReadFn = Box<dyn FnOnce(Result<(&Ledger, &NodeStatus), ProposeError>) + Send>;
pub(crate) type ProposeReply = oneshot::Sender<Result<Result<Outcome, Rejection>, ProposeError>>;

pub(crate) enum Request {
    Propose {
        cmd: Command,
        reply: ProposeReply,
    },
    /// Several proposals handed over at once (a worker's reports that arrived together): one
    /// wake-up of the node thread instead of one per command; each still gets its own outcome.
    ProposeMany(Vec<(Command, ProposeReply)>),
    Read(ReadFn),
    /// Linearizable read: confirmed leadership with a quorum (ReadIndex), then served once the
    /// applied index has caught up with the commit index at the time of the request.
    FreshRead(FreshReadFn),
    Step(Box<Message>),
    /// Propose a membership change (leader only); answered once applied.
    ChangeMembership {
        change: MemberChange,
        reply: MembershipReply,
    },
    /// The transport could not reach this peer.
    Unreachable(u64),
    /// A snapshot sent to this peer was delivered (or not).
    SnapshotStatus {
        peer: u64,
        ok: bool,
    },
    /// Finish the current round and stop (peer senders hold channel clones, so dropping every
    /// `Handle` is not enough to end the loop).
    Stop,
}

/// Events the leader's shell acts on: effects of applied commands and leadership changes.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Effect(Effect),
    BecameLeader,
    LostLeadership,
}

/// Sends Raft messages to other members. A single-member cluster sends nothing.
pub trait Transport: Send + 'static {
    fn send(&mut self, messages: Vec<Message>);
    /// The members changed: `peers` is every known member (this node included) and its address.
    fn set_peers(&mut self, _peers: &[(u64, String)]) {}
}

pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// (id, advertised address) of every founding voter, this node included. After the first
    /// start, membership comes from the replicated log and snapshots instead.
    pub members: Vec<(u64, String)>,
    /// Start empty and wait to be added to a running cluster (`kiln cluster add`), instead of
    /// founding a cluster of `members`.
    pub join: bool,
    /// Disaster recovery after the majority is lost for good: rebuild the ledger from this node's
    /// snapshot and committed log, and restart as a one-member cluster that holds it.
    pub force_new_cluster: bool,
    pub ledger: LedgerConfig,
    pub tick: Duration,
    pub election_ticks: usize,
    pub max_batch: usize,
    /// Group commit: under load, proposals wait up to this long after the previous entry so that
    /// one entry (one fsync on every replica, one message to each follower) carries more of them.
    /// An idle node proposes at once.
    pub batch_window: Duration,
    pub snapshot_every: u64,
    /// Where the leader reads the time it stamps on entries: the wall clock, or a simulation's.
    pub clock: fn() -> Millis,
    /// raft-rs draws each election timeout from [election_ticks, 2 × election_ticks) with its own
    /// thread RNG; a deterministic simulation turns that off and gives nodes distinct timeouts.
    pub randomized_election: bool,
    pub metrics: std::sync::Arc<crate::raft_metrics::RaftMetrics>,
    /// The log formats and features this node can apply (see `upgrade`): it refuses to start
    /// from, and halts rather than apply, anything beyond them.
    pub support: Support,
}

/// Largest Raft entry the leader proposes (a batch above it is split). Well under the peer
/// transport's message limit, so any one entry always fits in a message.
const MAX_ENTRY_BYTES: usize = 8 << 20;

/// What a snapshot holds: the members' addresses and the ledger, both as of its index, in the
/// ledger's versioned snapshot format (`kiln_ledger::codec`, described in docs/formats.md).
fn encode_image(version: u16, members: &BTreeMap<u64, String>, ledger: &Ledger) -> Result<Vec<u8>, codec::Error> {
    let members: Vec<(u64, String)> = members.iter().map(|(id, a)| (*id, a.clone())).collect();
    codec::encode_snapshot(version, &members, ledger)
}

fn decode_image(bytes: &[u8]) -> Result<(BTreeMap<u64, String>, Ledger), codec::Error> {
    let image = codec::decode_snapshot(bytes)?;
    Ok((image.members.into_iter().collect(), image.ledger))
}

/// A v1 conf change as the single-change v2 it means (raft-rs's own conversion is not exported).
fn v1_to_v2(mut cc: ConfChange) -> ConfChangeV2 {
    let single = ConfChangeSingle { node_id: cc.node_id, change_type: cc.get_change_type(), ..Default::default() };
    ConfChangeV2 { changes: vec![single].into(), context: cc.take_context(), ..Default::default() }
}

/// Rebuilds the ledger as of this node's commit index (its snapshot plus the committed entries
/// after it) and re-founds the store as a one-member cluster holding exactly that. Entries this
/// node had but did not know to be committed are dropped: nobody was told they were done.
fn recover_alone(log: &mut RaftLog, config: &NodeConfig) -> Result<(), StartError> {
    use raft::Storage as _;
    let (index, mut members, mut ledger) = match log.stored_snapshot()? {
        Some((index, bytes)) => {
            let (members, ledger) = decode_image(&bytes)?;
            config.support.check_enabled(ledger.features())?;
            (index, members, ledger)
        }
        None => (0, BTreeMap::new(), Ledger::new(config.ledger.clone())),
    };
    let commit = log.hard_state().commit.min(log.last_index()?);
    let mut replayed = 0;
    if commit > index {
        let entries = log.entries(index + 1, commit + 1, None, raft::GetEntriesContext::empty(false))?;
        for entry in entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty()) {
            // Never skipped: a ledger rebuilt without a committed entry is not the cluster's.
            let batch = codec::decode_batch(&entry.data)
                .map_err(|source| StartError::Undecodable { index: entry.index, source })?;
            for (_, cmd) in &batch.commands {
                config.support.check(cmd)?;
            }
            for (_, cmd) in batch.commands {
                ledger.apply(cmd, batch.now);
            }
            replayed += 1;
        }
    }
    let own = config.members.iter().find(|(id, _)| *id == config.id).map(|(_, a)| a.clone()).unwrap_or_default();
    members.clear();
    members.insert(config.id, own);
    let data = encode_image(codec::FORMAT_VERSION, &members, &ledger).map_err(StartError::Encode)?;
    log.reset(Bootstrap { voters: vec![config.id], data })?;
    tracing::warn!(
        node = config.id,
        snapshot = index,
        commit,
        replayed,
        tasks = ledger.submitted_total(),
        "forced a new one-member cluster from this node's data"
    );
    Ok(())
}

/// Why the node thread stopped serving. Each leaves the node unable to promise what it stores.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] crate::raft_log::Error),
    #[error("a snapshot received from the leader cannot be decoded: {0}")]
    Snapshot(#[source] codec::Error),
    /// A committed entry this build cannot read. Every replica must apply every committed entry,
    /// so the node stops here rather than skip it; a build that reads the format can go on.
    #[error("committed log entry {index} cannot be decoded, so this node stops before it: {source}")]
    Undecodable { index: u64, source: codec::Error },
    #[error("cannot write a snapshot: {0}")]
    Encode(#[source] codec::Error),
    /// A committed command beyond this node's support (a newer log format or a feature it lacks).
    /// Stopping is the only safe answer: applying it differently, or skipping it, would split the
    /// replicas. The newer release can go on from here.
    #[error("the cluster committed what this node cannot apply: {0}")]
    Unsupported(#[from] Unsupported),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] crate::raft_log::Error),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the stored snapshot cannot be decoded: {0}")]
    Snapshot(#[from] codec::Error),
    #[error("committed log entry {index} cannot be decoded, so the ledger cannot be rebuilt: {source}")]
    Undecodable { index: u64, source: codec::Error },
    #[error("cannot write a snapshot: {0}")]
    Encode(#[source] codec::Error),
    #[error("this node cannot hold the cluster's ledger: {0}")]
    Unsupported(#[from] Unsupported),
    #[error("cannot start the node thread: {0}")]
    Thread(#[from] std::io::Error),
}

pub(crate) struct Node {
    raw: RawNode<RaftLog>,
    ledger: Ledger,
    config: NodeConfig,
    transport: Box<dyn Transport>,
    events: mpsc::UnboundedSender<NodeEvent>,
    /// Every known member's address, replicated through conf changes and snapshots.
    members: BTreeMap<u64, String>,
    incarnation: u64,
    /// The format version this node writes log entries and snapshots in: the one every member of
    /// the cluster reads. It reads every version its build knows, whatever it writes.
    format: u16,
    /// Bytes of storage on disk, refreshed every few ticks: asking sled stats its files, too slow
    /// for every read.
    disk_bytes: u64,
    ticks: u64,
    waiters: HashMap<u64, (Instant, ProposeReply)>,
    /// Membership changes in flight, by the log index and term of their entry.
    conf_waiters: HashMap<u64, (u64, MembershipReply)>,
    pending: Vec<(u64, Command)>,
    /// When the last entry was proposed: the start of the current group-commit window.
    last_proposal: Instant,
    next_seq: u64,
    applied: u64,
    snapshot_index: u64,
    last_now: Millis,
    role: StateRole,
    leader_id: u64,
    // Housekeeping proposals already in flight, so one is not proposed on every tick.
    expire_proposed_at: Option<Instant>,
    gc_proposed_at: Option<Instant>,
    stopping: bool,
    /// ReadIndex requests sent to raft, by context; then waiting for `applied` to reach an index.
    reads_requested: HashMap<u64, FreshReadFn>,
    reads_waiting: Vec<(u64, FreshReadFn)>,
}

pub(crate) fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

impl Node {
    pub(crate) fn open(
        config: NodeConfig,
        transport: Box<dyn Transport>,
        events: mpsc::UnboundedSender<NodeEvent>,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let founders: BTreeMap<u64, String> = config.members.iter().cloned().collect();
        let bootstrap = if config.join {
            None
        } else {
            let empty = Ledger::new(config.ledger.clone());
            let data = encode_image(codec::FORMAT_VERSION, &founders, &empty).map_err(StartError::Encode)?;
            Some(Bootstrap { voters: founders.keys().copied().collect(), data })
        };
        let mut log = RaftLog::open(&config.data_dir, bootstrap)?;
        if config.force_new_cluster {
            recover_alone(&mut log, &config)?;
        }
        // Recovery: the snapshot is the state at its index; raft re-delivers every committed entry
        // after it, so nothing is applied twice and nothing is skipped.
        let (applied, ledger, mut members) = match log.stored_snapshot()? {
            Some((index, bytes)) => {
                let (members, ledger) = decode_image(&bytes)?;
                (index, ledger, members)
            }
            // Waiting to join: the configured members are whom to answer until a snapshot arrives.
            None => (0, Ledger::new(config.ledger.clone()), founders.clone()),
        };
        config.support.check_enabled(ledger.features())?;
        // This node's own address may have changed since the snapshot (new --listen).
        if let Some(own) = founders.get(&config.id) {
            members.insert(config.id, own.clone());
        }
        let alone = log.conf_state().voters == [config.id];
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: (config.election_ticks / 5).max(1),
            min_election_tick: if config.randomized_election { 0 } else { config.election_ticks },
            max_election_tick: if config.randomized_election { 0 } else { config.election_ticks + 1 },
            applied,
            max_size_per_msg: 4 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(crate::raft_logging::TracingDrain, slog::o!("raft_id" => config.id));
        let mut raw = RawNode::new(&raft_config, log, &logger)?;
        let mut transport = transport;
        transport.set_peers(&members.iter().map(|(id, a)| (*id, a.clone())).collect::<Vec<_>>());
        // Distinct for every open, even several in one process within a millisecond (simulations).
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let opened = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let incarnation = (config.id << 40) ^ ((now_ms() as u64) << 8) ^ (u64::from(std::process::id()) << 20) ^ opened;
        if alone {
            // A one-member cluster needs no election timeout: take leadership now.
            raw.campaign()?;
        }
        Ok(Self {
            raw,
            ledger,
            config,
            transport,
            events,
            members,
            incarnation,
            format: codec::FORMAT_VERSION,
            disk_bytes: 0,
            ticks: 0,
            waiters: HashMap::new(),
            conf_waiters: HashMap::new(),
            pending: Vec::new(),
            last_proposal: Instant::now(),
            next_seq: 1,
            applied,
            snapshot_index: applied,
            last_now: 0,
            role: StateRole::Follower,
            leader_id: 0,
            expire_proposed_at: None,
            gc_proposed_at: None,
            stopping: false,
            reads_requested: HashMap::new(),
            reads_waiting: Vec::new(),
        })
    }

    /// Runs until every `Handle` is dropped or [`Request::Stop`]; returns the storage failure that
    /// stopped it early, for the process to exit on.
    pub(crate) fn run(mut self, requests: flume::Receiver<Request>) -> Result<(), RunError> {
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            // raft-rs can have more to do right after `advance` (say, after a snapshot): no waiting then.
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                let until = match self.window_end() {
                    Some(end) => end.min(next_tick),
                    None => next_tick,
                };
                until.saturating_duration_since(Instant::now())
            };
            let mut batch = Vec::new();
            match requests.recv_timeout(wait) {
                Ok(Request::Stop) => break,
                Ok(first) => {
                    batch.push(first);
                    // Drain whatever else is queued so it shares this round's entry and fsync.
                    while batch.len() < self.config.max_batch {
                        match requests.try_recv() {
                            Ok(req) => batch.push(req),
                            Err(_) => break,
                        }
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            let ticked = Instant::now() >= next_tick;
            if ticked {
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
            }
            if let Err(e) = self.round(batch, ticked) {
                // A storage failure leaves the node unable to promise durability, and an entry it
                // cannot decode leaves it unable to follow the log: stop serving either way.
                tracing::error!(error = %e, "raft node stopped");
                self.fail_all_waiters(ProposeError::Stopped);
                return Err(e);
            }
            if self.stopping {
                break;
            }
        }
        self.fail_all_waiters(ProposeError::Stopped);
        Ok(())
    }

    /// One turn of the node, driven from outside (by [`run`](Self::run), or by a simulation that
    /// owns the clock and the network): handle requests, maybe tick, propose what was batched,
    /// and process the `Ready` — persist, send, apply.
    pub(crate) fn round(&mut self, requests: Vec<Request>, tick: bool) -> Result<(), RunError> {
        for req in requests {
            self.handle(req);
        }
        if tick {
            self.raw.tick();
            self.housekeeping();
            if self.ticks.is_multiple_of(20) {
                self.disk_bytes = self.raw.store().size_on_disk();
            }
            self.ticks += 1;
        }
        if self.proposals_due() {
            self.flush_proposals();
        }
        self.on_ready()
    }

    /// When the pending proposals must go out, if any are pending.
    fn window_end(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| self.last_proposal + self.config.batch_window)
    }

    fn proposals_due(&self) -> bool {
        match self.window_end() {
            None => false,
            Some(end) => self.pending.len() >= self.config.max_batch || Instant::now() >= end,
        }
    }

    /// Proposes raw entry bytes, as a leader on another build might: for decode-or-halt tests.
    #[cfg(test)]
    pub(crate) fn propose_raw(&mut self, data: Vec<u8>) -> Result<(), raft::Error> {
        self.raw.propose(Vec::new(), data)
    }

    #[cfg(test)]
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    #[cfg(test)]
    pub(crate) fn node_status(&self) -> NodeStatus {
        self.status()
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Propose { cmd, reply } => self.enqueue(cmd, reply),
            Request::ProposeMany(proposals) => {
                for (cmd, reply) in proposals {
                    self.enqueue(cmd, reply);
                }
            }
            Request::Read(f) => f(&self.ledger, &self.status()),
            Request::FreshRead(f) => {
                if self.role != StateRole::Leader {
                    f(Err(self.not_leader()));
                    return;
                }
                // raft-rs would drop this ReadIndex silently, and the read would wait forever.
                if !self.raw.raft.commit_to_current_term() {
                    f(Err(ProposeError::LeaderNotReady));
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.reads_requested.insert(seq, f);
                self.raw.read_index(seq.to_be_bytes().to_vec());
            }
            Request::Step(msg) => {
                let admitted = {
                    let (members, progress) = (&self.members, self.raw.raft.prs());
                    let is_member = |id: u64| members.contains_key(&id) || progress.get(id).is_some();
                    crate::peer_guard::admit(*msg, self.config.id, is_member, self.raw.raft.raft_log.last_index())
                };
                match admitted {
                    Ok(msg) => {
                        if let Err(e) = self.raw.step(msg) {
                            tracing::debug!(error = %e, "raft step rejected a message");
                        }
                    }
                    Err(refused) => tracing::warn!(%refused, "a raft message from the network was refused"),
                }
            }
            Request::ChangeMembership { change, reply } => self.propose_membership(change, reply),
            Request::Unreachable(peer) => self.raw.report_unreachable(peer),
            Request::SnapshotStatus { peer, ok } => {
                let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                self.raw.report_snapshot(peer, status);
            }
            // Only reached from the batching loop; the outer loop handles Stop first.
            Request::Stop => self.stopping = true,
        }
    }

    /// Queues a proposal for this round's entry, or refuses it at once on a follower.
    fn enqueue(&mut self, cmd: Command, reply: ProposeReply) {
        if self.role != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiters.insert(seq, (Instant::now(), reply));
        self.pending.push((seq, cmd));
    }

    fn not_leader(&self) -> ProposeError {
        let leader_address = self.members.get(&self.leader_id).cloned();
        ProposeError::NotLeader { leader_id: self.leader_id, leader_address }
    }

    /// One change per ConfChangeV2: raft-rs applies a single change directly (no joint state), and
    /// refuses a second while one is pending, so membership moves one safe step at a time.
    fn propose_membership(&mut self, change: MemberChange, reply: MembershipReply) {
        if self.role != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if change == (MemberChange::Remove { id: self.config.id }) {
            // A leader cannot safely remove itself (raft-rs 0.7 keeps leading a configuration it is
            // not in). Hand leadership to the most up-to-date voter; the client follows the hint
            // and the new leader removes this node.
            let me = self.config.id;
            let voters: Vec<u64> =
                self.raw.store().conf_state().voters.iter().copied().filter(|id| *id != me).collect();
            let best = voters.into_iter().max_by_key(|id| self.raw.raft.prs().get(*id).map_or(0, |p| p.matched));
            if let Some(to) = best {
                tracing::info!(from = me, to, "transferring leadership before removing this node");
                self.raw.transfer_leader(to);
                let _ = reply.send(Err(ProposeError::NotLeader {
                    leader_id: to,
                    leader_address: self.members.get(&to).cloned(),
                }));
                return;
            }
        }
        let mut single = ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match &change {
            MemberChange::Add { id, address } => {
                single.node_id = *id;
                single.set_change_type(ConfChangeType::AddNode);
                cc.context = address.clone().into_bytes().into();
            }
            MemberChange::Remove { id } => {
                single.node_id = *id;
                single.set_change_type(ConfChangeType::RemoveNode);
            }
        }
        cc.mut_changes().push(single);
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.conf_waiters.insert(index, (self.raw.raft.term, reply));
            }
            Err(e) => {
                let _ = reply.send(Ok(Err(format!("raft refused the change: {e}"))));
            }
        }
    }

    fn propose_internal(&mut self, cmd: Command) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push((seq, cmd));
    }

    /// Leader-only timers: lease expiry and garbage collection are ordinary replicated commands.
    fn housekeeping(&mut self) {
        if self.role != StateRole::Leader {
            return;
        }
        let now = (self.config.clock)();
        let retry_after = Duration::from_secs(1);
        let due = |at: Option<Instant>| at.is_none_or(|t| t.elapsed() >= retry_after);
        if self.ledger.next_deadline().is_some_and(|d| d <= now) && due(self.expire_proposed_at) {
            self.propose_internal(Command::ExpireLeases);
            self.expire_proposed_at = Some(Instant::now());
        }
        let gc_due = self.ledger.next_gc_at().is_some_and(|t| t <= now);
        if gc_due && self.gc_proposed_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            self.propose_internal(Command::CollectGarbage);
            self.gc_proposed_at = Some(Instant::now());
        }
        // A waiter whose entry was overwritten by a new leader would wait forever.
        let stale: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, (at, _))| at.elapsed() > Duration::from_secs(30))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in stale {
            if let Some((_, reply)) = self.waiters.remove(&seq) {
                let _ = reply.send(Err(ProposeError::Unknown));
            }
        }
    }

    fn flush_proposals(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let commands = std::mem::take(&mut self.pending);
        self.last_proposal = Instant::now();
        if self.role != StateRole::Leader {
            let err = self.not_leader();
            for (seq, _) in commands {
                if let Some((_, reply)) = self.waiters.remove(&seq) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            return;
        }
        // The leader's clock never runs backwards inside the ledger, even if the wall clock does.
        let now = (self.config.clock)().max(self.last_now);
        self.propose_batch(now, commands);
    }

    /// Proposes `commands` as one entry, or as several if one would exceed [`MAX_ENTRY_BYTES`]: a
    /// follower must be able to receive every entry in one message, whatever arrived together.
    fn propose_batch(&mut self, now: Millis, commands: Vec<(u64, Command)>) {
        let seqs: Vec<u64> = commands.iter().map(|(s, _)| *s).collect();
        let batch = Batch { origin: self.incarnation, now, commands };
        let data = match codec::encode_batch(self.format, &batch) {
            Ok(data) if data.len() > MAX_ENTRY_BYTES && batch.commands.len() > 1 => {
                let mut first = batch.commands;
                let second = first.split_off(first.len() / 2);
                self.propose_batch(now, first);
                self.propose_batch(now, second);
                return;
            }
            Ok(data) => Ok(data),
            Err(e) => Err(e.to_string()),
        };
        let result = data.and_then(|data| self.raw.propose(Vec::new(), data).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(error = %e, "proposal dropped by raft");
            let err = self.not_leader();
            for seq in seqs {
                if let Some((_, reply)) = self.waiters.remove(&seq) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), RunError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }
        // Messages of a Ready (not the persisted ones) may go out before the fsync: they are the
        // leader's appends, which followers persist on their own.
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        for rs in ready.take_read_states() {
            let seq = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some(f) = self.reads_requested.remove(&seq) {
                self.reads_waiting.push((rs.index, f));
            }
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            // Decode before installing: a snapshot this node cannot read must not replace its log.
            // Stopping is the only safe answer; carrying on would diverge from the other replicas.
            let (members, ledger) = decode_image(&snapshot.data).map_err(RunError::Snapshot)?;
            self.config.support.check_enabled(ledger.features())?;
            self.raw.mut_store().apply_snapshot(&snapshot)?;
            self.ledger = ledger;
            self.members = members;
            if let Some(own) = self.config.members.iter().find(|(id, _)| *id == self.config.id) {
                self.members.insert(own.0, own.1.clone());
            }
            self.transport.set_peers(&self.member_list());
            self.applied = snapshot.get_metadata().index;
            self.snapshot_index = self.applied;
            tracing::info!(index = self.applied, "caught up from a snapshot sent by the leader");
        }
        self.apply_entries(ready.take_committed_entries())?;
        let store = self.raw.mut_store();
        store.append(ready.entries())?;
        // Raft needs the entries, the term and the vote durable; the commit index may be lost in
        // a crash (the leader tells it again). A round that only moved the commit index (most of
        // a leader's rounds: its followers' acknowledgements) writes it but costs no fsync.
        let mut must_sync = !ready.entries().is_empty();
        if let Some(hs) = ready.hs() {
            let before = store.hard_state();
            must_sync |= hs.term != before.term || hs.vote != before.vote;
            store.set_hard_state(hs.clone())?;
        }
        // Durable before anything that acknowledges it leaves this node.
        if must_sync {
            let started = Instant::now();
            store.sync()?;
            self.config.metrics.synced(started.elapsed());
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.serve_fresh_reads();
        self.maybe_snapshot()
    }

    fn on_soft_state(&mut self, leader_id: u64, role: StateRole) {
        let was_leader = self.role == StateRole::Leader;
        self.config.metrics.leader_seen(self.leader_id, leader_id);
        self.leader_id = leader_id;
        self.role = role;
        if role == StateRole::Leader && !was_leader {
            tracing::info!(node = self.config.id, term = self.raw.raft.term, "became leader");
            // Live leases were granted by an old leader whose clock we never saw: give every one
            // a full TTL of grace rather than expiring them all at once.
            self.propose_internal(Command::GraceLeases { grace_ms: self.config.ledger.lease_ttl_ms });
            self.expire_proposed_at = None;
            self.gc_proposed_at = None;
            let _ = self.events.send(NodeEvent::BecameLeader);
        } else if was_leader && role != StateRole::Leader {
            tracing::info!(node = self.config.id, leader = leader_id, "lost leadership");
            self.fail_all_waiters(ProposeError::Unknown);
            let _ = self.events.send(NodeEvent::LostLeadership);
        }
    }

    fn member_list(&self) -> Vec<(u64, String)> {
        self.members.iter().map(|(id, a)| (*id, a.clone())).collect()
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RunError> {
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.applied = entry.index;
                    None
                }
                EntryType::EntryNormal => {
                    // Decode or halt: skipping an entry another replica can read would let the
                    // replicas diverge without anyone noticing (a rolling upgrade does exactly
                    // that: a new leader's new command reaching an old follower).
                    let batch = codec::decode_batch(&entry.data)
                        .map_err(|source| RunError::Undecodable { index: entry.index, source })?;
                    self.apply_batch(entry.index, batch)?;
                    None
                }
                EntryType::EntryConfChange => {
                    self.applied = entry.index;
                    let mut cc = ConfChange::default();
                    let parsed = protobuf::Message::merge_from_bytes(&mut cc, &entry.data);
                    Some(parsed.map_err(|e| e.to_string()).and_then(|()| self.apply_conf_change(v1_to_v2(cc))))
                }
                EntryType::EntryConfChangeV2 => {
                    self.applied = entry.index;
                    let mut cc = ConfChangeV2::default();
                    let parsed = protobuf::Message::merge_from_bytes(&mut cc, &entry.data);
                    Some(parsed.map_err(|e| e.to_string()).and_then(|()| self.apply_conf_change(cc)))
                }
            };
            if let Some((term, reply)) = self.conf_waiters.remove(&entry.index) {
                let answer = match outcome {
                    _ if entry.term != term => Err(ProposeError::Unknown),
                    Some(outcome) => Ok(outcome),
                    // raft-rs turns a conf change proposed while another is pending into an empty
                    // entry rather than an error.
                    None => Ok(Err(CONF_CHANGE_PENDING.into())),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    /// Applies a committed conf change. A refusal (say, removing the last voter) is the same on
    /// every replica, so it is reported rather than stopping the node.
    fn apply_conf_change(&mut self, cc: ConfChangeV2) -> MembershipOutcome {
        let cs: ConfState = self.raw.apply_conf_change(&cc).map_err(|e| {
            tracing::warn!(error = %e, "membership change refused");
            e.to_string()
        })?;
        let address = String::from_utf8_lossy(&cc.context).into_owned();
        for change in cc.get_changes() {
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode if !address.is_empty() => {
                    self.members.insert(change.node_id, address.clone());
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {}
                ConfChangeType::RemoveNode => {
                    self.members.remove(&change.node_id);
                }
            }
        }
        // Addresses of nodes no longer in the configuration are forgotten (this one's is kept so
        // a removed node can still say who it was).
        let in_conf: std::collections::BTreeSet<u64> =
            cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing).copied().collect();
        let own = self.config.id;
        self.members.retain(|id, _| in_conf.contains(id) || *id == own);
        tracing::info!(voters = ?cs.voters, "membership changed");
        if !cs.voters.contains(&own) && !cs.voters_outgoing.contains(&own) {
            tracing::warn!(node = own, "this node is no longer a member of the cluster");
            if self.role == StateRole::Leader {
                // raft-rs 0.7 would go on leading a configuration without itself (and panic on the
                // next commit): step down into the next term so the remaining voters elect a leader.
                let term = self.raw.raft.term + 1;
                self.raw.raft.become_follower(term, raft::INVALID_ID);
            }
        }
        self.raw.mut_store().set_conf_state(cs);
        self.transport.set_peers(&self.member_list());
        Ok(self.member_list())
    }

    /// Applies one committed batch, all or nothing: a command beyond this node's support stops it
    /// before any command of the batch is applied (and before `applied` moves past the entry).
    fn apply_batch(&mut self, index: u64, batch: Batch) -> Result<(), RunError> {
        for (_, cmd) in &batch.commands {
            self.config.support.check(cmd)?;
        }
        self.applied = index;
        self.last_now = self.last_now.max(batch.now);
        let mine = batch.origin == self.incarnation;
        let leader = self.role == StateRole::Leader;
        for (seq, cmd) in batch.commands {
            match &cmd {
                Command::ExpireLeases => self.expire_proposed_at = None,
                Command::CollectGarbage => self.gc_proposed_at = None,
                _ => {}
            }
            let Applied { outcome, effects } = self.ledger.apply(cmd, batch.now);
            if leader {
                for effect in effects {
                    let _ = self.events.send(NodeEvent::Effect(effect));
                }
            }
            if mine {
                if let Some((_, reply)) = self.waiters.remove(&seq) {
                    let _ = reply.send(Ok(outcome));
                }
            }
        }
        Ok(())
    }

    fn serve_fresh_reads(&mut self) {
        if self.reads_waiting.iter().all(|(index, _)| *index > self.applied) {
            return;
        }
        let status = self.status();
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_waiting).into_iter().partition(|(i, _)| *i <= applied);
        self.reads_waiting = waiting;
        for (_, f) in ready {
            f(Ok((&self.ledger, &status)));
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), RunError> {
        let requested = self.raw.store().take_snapshot_request() && self.applied > self.snapshot_index;
        if !requested && self.applied.saturating_sub(self.snapshot_index) < self.config.snapshot_every {
            return Ok(());
        }
        let data = encode_image(self.format, &self.members, &self.ledger).map_err(RunError::Encode)?;
        self.raw.mut_store().compact_with_snapshot(self.applied, data)?;
        self.snapshot_index = self.applied;
        tracing::debug!(index = self.applied, "snapshot taken, log compacted");
        Ok(())
    }

    fn fail_all_waiters(&mut self, err: ProposeError) {
        for (_, (_, reply)) in self.waiters.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, f) in self.reads_requested.drain() {
            f(Err(err.clone()));
        }
        for (_, f) in self.reads_waiting.drain(..) {
            f(Err(err.clone()));
        }
        for (_, (_, reply)) in self.conf_waiters.drain() {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let leader = self.role == StateRole::Leader;
        let mut ids: Vec<u64> = raft.prs().iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        NodeStatus {
            id: self.config.id,
            leader_id: self.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            is_leader: leader,
            members: ids
                .into_iter()
                .map(|id| {
                    let matched = if leader { raft.prs().get(id).map_or(0, |p| p.matched) } else { 0 };
                    (id, self.members.get(&id).cloned().unwrap_or_default(), matched)
                })
                .collect(),
            log_entries: self.raw.store().entry_count(),
            snapshot_index: self.snapshot_index,
            last_index: raft.raft_log.last_index(),
            role: match self.role {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            },
            leader_heard_ms: if leader {
                0
            } else {
                raft.election_elapsed as u64 * self.config.tick.as_millis() as u64
            },
            disk_bytes: self.disk_bytes,
        }
    }
}
