//! The session: one long-lived bidirectional stream to the scheduler's leader, kept open across
//! failovers and outages.
//!
//! The worker loop talks to it through three channels and never sees a connection:
//! reports go in (`Completed`, `Failed`, `Released`) and are delivered *at least once*; the loop's
//! [`Status`] (held leases, how many more tasks it wants, whether it drains) is watched and turned
//! into `Want`, `Drain` and heartbeats; what the scheduler says comes out as [`Event`]s.
//!
//! ```text
//!          reports ─▶ ┌────────── outbox ──────────┐ ─Completed/Failed/Released─▶
//!  worker  status  ─▶ │ Hello(held) Want Drain  HB │ ────────────────────────────▶ scheduler
//!   loop   events  ◀─ └────────────────────────────┘ ◀──Welcome/Assign/Revoke/Ack──  (leader)
//! ```
//!
//! Every report stays in the outbox until the scheduler acks it (it acks once the report is a
//! durable ledger entry). After a reconnect the worker says `Hello` with the leases it still holds,
//! `Drain` if it drains, re-sends every unacked report, then its `Want`. On a live stream a report
//! unacked for a quarter of the lease TTL is sent again (the ledger ignores duplicates as stale),
//! and one unacked for half the TTL means the stream is dead even if TCP and HTTP/2 pings still
//! answer (a scheduler whose node stopped, a wedged proxy): the session reconnects, so the report
//! still reaches a ledger before the lease lapses. While no scheduler is reachable, reports
//! accumulate; the outbox is bounded by the leases the worker holds, since nothing new is leased
//! meanwhile.
//!
//! Leader following: a follower refuses the stream (or ends it on losing leadership) with
//! `UNAVAILABLE` and the leader's address in `kiln-leader` metadata; the session goes there at once.
//! Other failures rotate through the configured addresses with exponential backoff and jitter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use kiln_proto::v1::{self, scheduler_message::Msg as Down, worker_message::Msg as Up, LeaseRef};
use kiln_proto::Credentials;

use crate::leases::{key_of, lease_ref, LeaseKey};
use crate::metrics::Metrics;
use crate::slots::Stage;
use crate::task::Report;

/// Lease TTL assumed until a Welcome says otherwise (the scheduler's default).
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Messages queued towards the scheduler before the stream counts as stuck.
const OUTBOUND_CAPACITY: usize = 4096;
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Used until a Welcome says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3);

/// What the worker loop publishes for the session to act on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub held: Vec<LeaseRef>,
    pub want: u32,
    pub draining: bool,
    /// The leases being worked on, with their render stage.
    pub working: Vec<Working>,
}

/// One lease being worked on. Equal by lease: the stage changes on its own, and a status change
/// is only about which leases are held.
#[derive(Debug, Clone)]
pub struct Working {
    pub key: LeaseKey,
    pub stage: Arc<Stage>,
}

impl PartialEq for Working {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Status {
    /// Leases no slot has started: what work stealing may take from this worker.
    pub fn unstarted(&self) -> Vec<LeaseRef> {
        self.working.iter().filter(|w| w.stage.is_waiting()).map(|w| lease_ref(w.key)).collect()
    }
}

/// What the scheduler said, for the worker loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected { address: String, welcome: v1::Welcome },
    Disconnected { reason: String },
    Assign(Vec<v1::Assignment>),
    Revoke { leases: Vec<LeaseRef>, reason: String },
    Acked { lease: LeaseKey, accepted: bool },
}

/// One report waiting for its ack.
#[derive(Debug, Clone)]
enum Pending {
    Completed(v1::Completed),
    Failed(v1::Failed),
    Released { reason: String },
}

/// When a report went out on the current stream.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    first: Option<Instant>,
    last: Option<Instant>,
}

#[derive(Debug, Default)]
struct Outbox {
    items: BTreeMap<LeaseKey, (Pending, Sent)>,
}

/// How long to wait for acks on a stream whose scheduler hands out leases of `lease_ttl`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AckTimers {
    /// Send an unacked report again after this long.
    resend_after: Duration,
    /// Give up on the stream when a report stays unacked this long.
    stall_after: Duration,
}

impl AckTimers {
    fn for_lease_ttl(lease_ttl: Duration) -> Self {
        let ttl = if lease_ttl.is_zero() { DEFAULT_LEASE_TTL } else { lease_ttl };
        Self {
            resend_after: (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            stall_after: (ttl / 2).clamp(Duration::from_secs(2), Duration::from_secs(60)),
        }
    }
}

impl Outbox {
    fn add(&mut self, report: Report) {
        match report {
            Report::Completed(c) => {
                if let Some(l) = c.lease {
                    self.items.insert(key_of(&l), (Pending::Completed(c), Sent::default()));
                }
            }
            Report::Failed(f) => {
                if let Some(l) = f.lease {
                    self.items.insert(key_of(&l), (Pending::Failed(f), Sent::default()));
                }
            }
            Report::Released { leases, reason } => {
                for l in leases {
                    self.items.insert(key_of(&l), (Pending::Released { reason: reason.clone() }, Sent::default()));
                }
            }
        }
    }

    fn ack(&mut self, key: LeaseKey) {
        self.items.remove(&key);
    }

    /// Messages for every entry never sent, or sent before `stale_before`; marks them sent `now`.
    /// Releases with the same reason travel together.
    fn due(&mut self, now: Instant, stale_before: Option<Instant>) -> Vec<Up> {
        let mut out = Vec::new();
        let mut releases: BTreeMap<String, Vec<LeaseRef>> = BTreeMap::new();
        for (key, (pending, sent)) in self.items.iter_mut() {
            let due = match (sent.last, stale_before) {
                (None, _) => true,
                (Some(at), Some(limit)) => at <= limit,
                (Some(_), None) => false,
            };
            if !due {
                continue;
            }
            sent.first.get_or_insert(now);
            sent.last = Some(now);
            match pending {
                Pending::Completed(c) => out.push(Up::Completed(c.clone())),
                Pending::Failed(f) => out.push(Up::Failed(f.clone())),
                Pending::Released { reason } => releases.entry(reason.clone()).or_default().push(lease_ref(*key)),
            }
        }
        for (reason, leases) in releases {
            out.push(Up::Released(v1::Released { leases, reason }));
        }
        out
    }

    /// Forgets when anything was sent: after a reconnect everything is due again.
    fn unsend(&mut self) {
        for (_, sent) in self.items.values_mut() {
            *sent = Sent::default();
        }
    }

    /// When the longest-waiting report was first sent on this stream.
    fn oldest_unacked(&self) -> Option<Instant> {
        self.items.values().filter_map(|(_, sent)| sent.first).min()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    /// A follower named the leader.
    Redirect(String),
    /// Anything else; `welcomed` says whether the session got as far as a Welcome.
    Lost { reason: String, welcomed: bool },
}

fn ended_by(status: &tonic::Status, welcomed: bool, credentials: &Credentials) -> Ended {
    match status.metadata().get(kiln_proto::client::LEADER_METADATA).and_then(|v| v.to_str().ok()) {
        Some(leader) if !leader.is_empty() => Ended::Redirect(credentials.address(leader)),
        _ => Ended::Lost { reason: format!("{:?}: {}", status.code(), status.message()), welcomed },
    }
}

/// A small deterministic jitter (0–25 %) so a fleet that lost its leader does not reconnect in step.
fn jitter(base: Duration, seed: &str, attempt: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, attempt).hash(&mut h);
    base + base.mul_f64((h.finish() % 1000) as f64 / 4000.0)
}

/// Checks the configured scheduler addresses and gives each the scheme `credentials` dial.
pub fn addresses(configured: &[String], credentials: &Credentials) -> Result<Vec<String>, crate::Error> {
    configured
        .iter()
        .map(|a| {
            let a = credentials.address(a);
            Endpoint::from_shared(a.clone())
                .map(|_| a.clone())
                .map_err(|e| crate::Error::Scheduler { address: a.clone(), reason: e.to_string() })
        })
        .collect()
}

pub struct Session {
    addresses: Vec<String>,
    /// TLS and the bearer token, when the schedulers demand them.
    credentials: Credentials,
    current: usize,
    /// Sent first on every connection, with `held` filled in from the status.
    hello: v1::Hello,
    reports: mpsc::Receiver<Report>,
    reports_open: bool,
    status: watch::Receiver<Status>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    outbox: Outbox,
}

impl Session {
    pub fn new(
        addresses: Vec<String>,
        credentials: Credentials,
        hello: v1::Hello,
        reports: mpsc::Receiver<Report>,
        status: watch::Receiver<Status>,
        events: mpsc::Sender<Event>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            addresses,
            credentials,
            current: 0,
            hello,
            reports,
            reports_open: true,
            status,
            events,
            metrics,
            outbox: Outbox::default(),
        }
    }

    /// Keeps a session open until `stop` turns true (or its sender goes away).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut attempt = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let address = self.addresses[self.current % self.addresses.len()].clone();
            let ended = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                ended = self.connection(&address) => ended,
            };
            self.metrics.set_connected(false);
            self.outbox.unsend();
            let pause = match ended {
                Ended::Redirect(leader) => {
                    tracing::info!(from = %address, to = %leader, "following the scheduler leader");
                    self.current = match self.addresses.iter().position(|a| *a == leader) {
                        Some(i) => i,
                        None => {
                            self.addresses.push(leader);
                            self.addresses.len() - 1
                        }
                    };
                    attempt = 0;
                    BACKOFF_MIN
                }
                Ended::Lost { reason, welcomed } => {
                    if welcomed {
                        attempt = 0;
                        tracing::warn!(scheduler = %address, %reason, unacked = self.outbox.len(), "scheduler session lost; reconnecting");
                    } else if attempt == 0 || attempt % 20 == 19 {
                        // Said once, then now and then: a worker waiting for its scheduler is normal
                        // during start-up, but an operator must see why it never connects.
                        tracing::warn!(scheduler = %address, %reason, attempt, "cannot open a scheduler session; retrying");
                    } else {
                        tracing::debug!(scheduler = %address, %reason, attempt, "cannot open a scheduler session");
                    }
                    let _ = self.events.send(Event::Disconnected { reason }).await;
                    self.current += 1;
                    attempt = attempt.saturating_add(1);
                    let base = BACKOFF_MIN.saturating_mul(1 << attempt.min(10)).min(BACKOFF_MAX);
                    jitter(base, &self.hello.worker_id, attempt)
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.absorb_reports_for(pause) => {}
            }
        }
    }

    /// Waits `pause`, keeping the report channel drained into the outbox meanwhile.
    async fn absorb_reports_for(&mut self, pause: Duration) {
        let deadline = Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                r = self.reports.recv(), if self.reports_open => match r {
                    Some(r) => self.outbox.add(r),
                    None => self.reports_open = false,
                },
            }
        }
    }

    async fn connection(&mut self, address: &str) -> Ended {
        let lost = |reason: String| Ended::Lost { reason, welcomed: false };
        let endpoint = match self.credentials.endpoint(address) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true),
            Err(e) => return lost(format!("invalid address: {e}")),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                return lost(format!("cannot connect: {e}{cause}"));
            }
        };
        let mut client =
            v1::worker_session_client::WorkerSessionClient::with_interceptor(channel, self.credentials.bearer())
                .max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel::<v1::WorkerMessage>(OUTBOUND_CAPACITY);
        let out = Outbound { tx };
        let mut hello = self.hello.clone();
        hello.held = self.status.borrow().held.clone();
        if out.send(Up::Hello(hello)).is_err() {
            return lost("cannot queue Hello".into());
        }
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => return ended_by(&status, false, &self.credentials),
        };
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::SchedulerMessage { msg: Some(Down::Welcome(w)) }))) => w,
            Ok(Ok(Some(other))) => return lost(format!("expected Welcome, got {other:?}")),
            Ok(Ok(None)) => return lost("the scheduler closed the stream before Welcome".into()),
            Ok(Err(status)) => return ended_by(&status, false, &self.credentials),
            Err(_) => return lost(format!("no Welcome within {WELCOME_TIMEOUT:?}")),
        };
        let timers = AckTimers::for_lease_ttl(Duration::from_millis(welcome.lease_ttl_ms));
        let heartbeat = match welcome.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms).max(Duration::from_millis(50)),
        };
        self.metrics.set_connected(true);
        tracing::info!(scheduler = %address, node = welcome.node_id, unacked = self.outbox.len(), "scheduler session open");
        let _ = self.events.send(Event::Connected { address: address.to_owned(), welcome }).await;

        let lost = |reason: &str| Ended::Lost { reason: reason.to_owned(), welcomed: true };
        // Drain first, so the scheduler leases nothing more; then every unacked report; then Want.
        let mut status = self.status.borrow_and_update().clone();
        let mut sent_drain = status.draining;
        if status.draining && out.send(Up::Drain(v1::Drain {})).is_err() {
            return lost("stream closed");
        }
        for msg in self.outbox.due(Instant::now(), None) {
            if out.send(msg).is_err() {
                return lost("stream closed");
            }
        }
        let mut last_want = None;
        if !status.draining {
            if out.send(Up::Want(v1::Want { count: status.want })).is_err() {
                return lost("stream closed");
            }
            last_want = Some(status.want);
        }
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_open = true;
        loop {
            let sent: Result<(), ()> = tokio::select! {
                // Status before reports: a drain's Drain must reach the scheduler before the
                // Released that follows it, or the scheduler could lease the tasks straight back.
                biased;
                changed = self.status.changed(), if status_open => {
                    if changed.is_err() {
                        status_open = false;
                        Ok(())
                    } else {
                        let next = self.status.borrow_and_update().clone();
                        // The scheduler takes what it assigns off the last Want until the next one
                        // arrives. So the count is said again whenever the held leases change:
                        // an assignment that arrives together with as many completions leaves
                        // the count as it was, and unsaid, the scheduler would wait for a Want
                        // that never comes.
                        let held_changed = next.held != status.held;
                        status = next;
                        let mut r = Ok(());
                        if status.draining && !sent_drain {
                            sent_drain = true;
                            r = out.send(Up::Drain(v1::Drain {}));
                        }
                        let again = held_changed && status.want > 0;
                        if !status.draining && (last_want != Some(status.want) || again) {
                            last_want = Some(status.want);
                            r = r.and(out.send(Up::Want(v1::Want { count: status.want })));
                        }
                        r
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        self.on_message(m).await;
                        Ok(())
                    }
                    Ok(None) => return lost("the scheduler closed the stream"),
                    Err(status) => return ended_by(&status, true, &self.credentials),
                },
                r = self.reports.recv(), if self.reports_open => match r {
                    Some(r) => {
                        self.outbox.add(r);
                        self.outbox.due(Instant::now(), None).into_iter().try_for_each(|m| out.send(m))
                    }
                    None => {
                        self.reports_open = false;
                        Ok(())
                    }
                },
                _ = ticker.tick() => {
                    let unstarted = status.unstarted();
                    self.metrics.set_buffered(unstarted.len());
                    let hb = v1::Heartbeat { held: status.held.clone(), busy_slots: self.metrics.busy_slots(), unstarted };
                    let now = Instant::now();
                    if self.outbox.oldest_unacked().is_some_and(|at| now.duration_since(at) >= timers.stall_after) {
                        return Ended::Lost {
                            reason: format!("a report went unacknowledged for {:?}; the stream is dead", timers.stall_after),
                            welcomed: true,
                        };
                    }
                    let resend = match now.checked_sub(timers.resend_after) {
                        Some(limit) => self.outbox.due(now, Some(limit)),
                        None => Vec::new(),
                    };
                    out.send(Up::Heartbeat(hb)).and_then(|()| resend.into_iter().try_for_each(|m| out.send(m)))
                }
            };
            if sent.is_err() {
                return lost("the stream to the scheduler is closed or stuck");
            }
        }
    }

    async fn on_message(&mut self, msg: v1::SchedulerMessage) {
        let event = match msg.msg {
            Some(Down::Assign(a)) => Event::Assign(a.tasks),
            Some(Down::Revoke(r)) => Event::Revoke { leases: r.leases, reason: r.reason },
            Some(Down::Ack(a)) => {
                let Some(lease) = a.lease else { return };
                let key = key_of(&lease);
                self.outbox.ack(key);
                if !a.accepted {
                    tracing::debug!(
                        task = lease.task_id,
                        lease_seq = lease.lease_seq,
                        "report was stale; the ledger ignored it"
                    );
                }
                Event::Acked { lease: key, accepted: a.accepted }
            }
            Some(Down::Welcome(_)) | None => return,
        };
        let _ = self.events.send(event).await;
    }
}

/// The sending half of one stream. Never waits: a scheduler that stops reading thousands of
/// messages is treated as gone, and the session reconnects.
struct Outbound {
    tx: mpsc::Sender<v1::WorkerMessage>,
}

impl Outbound {
    fn send(&self, msg: Up) -> Result<(), ()> {
        self.tx.try_send(v1::WorkerMessage { msg: Some(msg) }).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(t: u64) -> LeaseRef {
        LeaseRef { task_id: t, lease_seq: 1 }
    }

    #[test]
    fn outbox_resends_until_acked_and_groups_releases() {
        let mut o = Outbox::default();
        let t0 = Instant::now();
        o.add(Report::Completed(v1::Completed { lease: Some(lease(1)), result: None }));
        o.add(Report::Released { leases: vec![lease(2), lease(3)], reason: "drain".into() });
        let first = o.due(t0, None);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(matches!(&first[1], Up::Released(r) if r.leases.len() == 2 && r.reason == "drain"));
        assert!(o.due(t0, None).is_empty(), "nothing new to send");
        o.ack((2, 1));
        let later = t0 + Duration::from_secs(10);
        let again = o.due(later, Some(t0));
        assert_eq!(again.len(), 2, "stale reports go again: {again:?}");
        assert!(matches!(&again[1], Up::Released(r) if r.leases == vec![lease(3)]));
        assert_eq!(o.oldest_unacked(), Some(t0), "a resend does not reset the stall clock");
        o.unsend();
        assert_eq!(o.oldest_unacked(), None);
        assert_eq!(o.due(later, None).len(), 2, "after a reconnect everything is due");
        o.ack((1, 1));
        o.ack((3, 1));
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn ack_timers_follow_the_lease_ttl() {
        let t = AckTimers::for_lease_ttl(Duration::from_secs(30));
        assert_eq!((t.resend_after, t.stall_after), (Duration::from_millis(7500), Duration::from_secs(15)));
        let short = AckTimers::for_lease_ttl(Duration::from_secs(2));
        assert_eq!((short.resend_after, short.stall_after), (Duration::from_secs(1), Duration::from_secs(2)));
        assert_eq!(AckTimers::for_lease_ttl(Duration::ZERO), t);
    }

    #[test]
    fn leader_hint_redirects() {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut().insert(kiln_proto::client::LEADER_METADATA, "10.0.0.2:7450".parse().expect("ascii"));
        let plain = Credentials::plaintext();
        assert!(matches!(ended_by(&s, true, &plain), Ended::Redirect(a) if a == "http://10.0.0.2:7450"));
        assert!(matches!(ended_by(&tonic::Status::unavailable("x"), true, &plain), Ended::Lost { welcomed: true, .. }));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for attempt in 0..50 {
            let d = jitter(Duration::from_millis(400), "w1", attempt);
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(500), "{d:?}");
        }
    }
}
