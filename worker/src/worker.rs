//! [`Worker`]: builds the parts, then runs the one loop that owns the held leases until drained.
//!
//! The loop is the only owner of [`Leases`]. It reacts to four things — the session's events
//! (assignments, revocations, acks), tasks finishing, the shutdown future, and the drain timers —
//! and after each it publishes a [`Status`] that the session turns into `Want`, `Drain` and
//! heartbeats.
//!
//! Drain is a named state: when `shutdown` resolves the worker stops asking for work (`Drain`),
//! gives back every lease no slot has started (`Released`, at once), lets the running renders
//! finish for up to `drain_grace`, delivers their reports, and returns once the scheduler has
//! acknowledged everything. Renders still running when the grace ends are released too (their
//! threads finish in the background, the result is dropped). If the scheduler stays unreachable,
//! the worker gives up on delivery [`DELIVERY_GRACE`] after the grace: the leases it could not
//! report lapse in the ledger and the tasks run again elsewhere — nothing is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use kiln_config::WorkerOptions;
use kiln_proto::v1;

use crate::budget::MemoryBudget;
use crate::capacity::{self, Capacity};
use crate::error::{Error, TaskError};
use crate::leases::{key_of, lease_ref, LeaseKey, Leases, Revoked};
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::prefetch::AutoPrefetch;
use crate::session::{self, Event, Session, Status, Working};
use crate::slots::{Render, Slots, Stage};
use crate::storage::Storage;
use crate::store::{Remote, Store};
use crate::task::{self, Assigned, Report, Shared};

/// After the drain grace, how long the worker keeps trying to deliver its last reports.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// A long-lived worker: `new` checks the options and opens the stores, `run` serves until drained.
pub struct Worker {
    opts: WorkerOptions,
    id: String,
    addresses: Vec<String>,
    /// What the worker presents to the schedulers: its certificate under `[tls]`, and a bearer
    /// token if [`Worker::with_token`] gave one.
    credentials: kiln_proto::Credentials,
    capacity: Capacity,
    edges: Edges,
}

/// Where a worker's tasks meet the outside world: the render, the stores, and (optionally) an
/// observer of its session. [`Worker::new`] uses the render pipeline and the configured stores.
#[derive(Clone)]
pub struct Edges {
    pub render: Arc<dyn Render>,
    pub storage: Arc<dyn Storage>,
    pub observer: Option<Arc<dyn Observer>>,
}

/// A worker id from the host name: the characters a `WorkerId` allows, or `worker`.
fn id_from_hostname(hostname: &str) -> String {
    let id: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') { c } else { '-' })
        .take(128)
        .collect();
    if id.is_empty() {
        "worker".to_owned()
    } else {
        id
    }
}

impl Worker {
    /// A worker rendering with [`kiln_render::Pipeline`].
    pub fn new(opts: WorkerOptions) -> Result<Self, Error> {
        let limits = kiln_render::DecodeLimits {
            max_bytes: opts.max_master_bytes,
            max_duration_secs: opts.max_duration.as_secs_f64(),
            max_decoded_bytes: opts.max_decoded_bytes,
        };
        let pipeline = kiln_render::Pipeline::new(kiln_render::PipelineConfig {
            limits,
            artwork_sizes: opts.artwork_sizes.clone(),
        });
        Self::with_renderer(opts, Arc::new(pipeline))
    }

    /// A worker rendering with `renderer` (tests use this to control timing and failures).
    pub fn with_renderer(opts: WorkerOptions, renderer: Arc<dyn Render>) -> Result<Self, Error> {
        opts.validate().map_err(|e| Error::Options(e.to_string()))?;
        let store = Store::open(&opts.masters, &opts.derivatives, &Remote::from_options(&opts))?;
        Self::with_edges(opts, Edges { render: renderer, storage: Arc::new(store), observer: None })
    }

    /// A worker whose tasks render and store through `edges`; `masters` and `derivatives` in the
    /// options are not opened. The loadtest runs the real worker this way, with a render that
    /// sleeps and a storage that moves no bytes.
    pub fn with_edges(opts: WorkerOptions, edges: Edges) -> Result<Self, Error> {
        opts.validate().map_err(|e| Error::Options(e.to_string()))?;
        let capacity = Capacity::detect(opts.slots);
        let id = match &opts.id {
            Some(id) => id.clone(),
            None => id_from_hostname(&capacity.hostname),
        };
        kiln_types::WorkerId::new(id.clone()).map_err(|e| Error::Options(e.to_string()))?;
        let credentials = match &opts.tls {
            Some(tls) => {
                kiln_proto::Credentials::tls(&tls.ca_file, Some((&tls.cert_file, &tls.key_file)), &tls.server_name)
                    .map_err(|e| Error::Options(format!("worker [tls]: {e}")))?
            }
            None => kiln_proto::Credentials::plaintext(),
        };
        let addresses = session::addresses(&opts.schedulers, &credentials)?;
        Ok(Self { opts, id, addresses, credentials, capacity, edges })
    }

    /// Sends `token` as a bearer token (the `worker` role bound to this worker's id) with every
    /// session; needs `[tls]`.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        self.credentials = self.credentials.with_token(token).map_err(|e| Error::Options(e.to_string()))?;
        Ok(self)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn slots(&self) -> usize {
        self.capacity.slots
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let started = Instant::now();
        let Worker { opts, id, addresses, credentials, capacity, edges } = self;
        let Edges { render: renderer, storage, observer } = edges;
        let slots_n = capacity.slots;
        let target = slots_n.saturating_mul(1 + opts.prefetch);
        let metrics = Arc::new(Metrics::new(slots_n));
        let speed = match opts.speed {
            Some(s) => s,
            None => tokio::task::spawn_blocking(capacity::measure_speed).await.unwrap_or(1.0),
        };
        let master_memory =
            opts.master_memory_bytes.unwrap_or_else(|| MemoryBudget::default_bytes(capacity.memory_bytes));
        tracing::info!(
            worker = %id, slots = slots_n, prefetch = opts.prefetch, cores = capacity.cores,
            memory_mib = capacity.memory_bytes >> 20, master_memory_mib = master_memory >> 20,
            speed = format!("{speed:.2}"), "worker starting"
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut services = JoinSet::new();
        if let Some(addr) = opts.http_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Http { addr, source })?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "worker HTTP listening");
            services.spawn(crate::http::serve(listener, metrics.clone(), stop_rx.clone()));
        }

        let slots = Slots::start(slots_n, opts.pin_cores, renderer.clone(), metrics.clone())?;
        let shared = Arc::new(Shared {
            store: storage,
            slots: slots.sender(),
            memory: MemoryBudget::new(master_memory),
            metrics: metrics.clone(),
            worker_id: id.clone(),
            max_master_bytes: opts.max_master_bytes,
            render_timeout: opts.render_timeout,
        });

        let hello = v1::Hello {
            worker_id: id.clone(),
            hostname: capacity.hostname.clone(),
            slots: u32::try_from(slots_n).unwrap_or(u32::MAX),
            cores: capacity.cores,
            memory_bytes: capacity.memory_bytes,
            speed,
            queues: opts.queues.clone(),
            renderers: renderer.names(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            held: Vec::new(),
        };
        let (reports_tx, reports_rx) = mpsc::channel(1024);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let initial = Status { want: u32::try_from(target).unwrap_or(u32::MAX), ..Status::default() };
        let (status_tx, status_rx) = watch::channel(initial);
        let session = Session::new(addresses, credentials, hello, reports_rx, status_rx, events_tx, metrics.clone());
        services.spawn(session.run(stop_rx));

        let mut core = Core {
            shared,
            leases: Leases::default(),
            tasks: JoinSet::new(),
            reports: reports_tx,
            status: status_tx,
            events: events_rx,
            events_open: true,
            metrics: metrics.clone(),
            slots: slots_n,
            prefetch: opts.prefetch,
            auto_prefetch: opts.auto_prefetch.then(|| AutoPrefetch::new(opts.prefetch, slots_n)),
            drain: None,
            drain_grace: opts.drain_grace,
            cold_start: Some(started),
            observer,
            node_id: 0,
        };
        core.run(shutdown).await;
        let quiet = metrics.busy_slots() == 0;
        drop(core);

        let _ = stop_tx.send(true);
        while let Some(joined) = services.join_next().await {
            if let Err(e) = joined {
                tracing::warn!(error = %e, "a worker service ended abnormally");
            }
        }
        if quiet {
            let _ = tokio::task::spawn_blocking(move || slots.join()).await;
        } else {
            // Threads still rendering abandoned tasks: they stop on their own once done, and the
            // process is about to exit anyway. Waiting would only delay the exit.
            tracing::warn!("render threads still busy after the drain grace; not waiting for them");
            drop(slots);
        }
        tracing::info!(worker = %id, "worker drained");
        Ok(())
    }
}

/// The drain timers.
struct Drain {
    /// Running renders may finish until then.
    grace_until: Instant,
    grace_over: bool,
    /// Undelivered reports are abandoned at this point.
    give_up_at: Instant,
}

/// The loop's state: the only owner of the held leases.
struct Core {
    shared: Arc<Shared>,
    leases: Leases,
    /// Every task of every held lease; each yields its lease and its report.
    tasks: JoinSet<(LeaseKey, Option<Report>)>,
    /// Into the session's outbox.
    reports: mpsc::Sender<Report>,
    /// What the session turns into Want, Drain and heartbeats.
    status: watch::Sender<Status>,
    events: mpsc::Receiver<Event>,
    events_open: bool,
    metrics: Arc<Metrics>,
    slots: usize,
    /// Leases held ahead of each slot: the configured one, or measured ([`AutoPrefetch`]).
    prefetch: usize,
    auto_prefetch: Option<AutoPrefetch>,
    drain: Option<Drain>,
    drain_grace: Duration,
    /// When the worker started, until its first lease: the cold-start figure operators watch
    /// when they scale out (logged once, `first lease`).
    cold_start: Option<Instant>,
    observer: Option<Arc<dyn Observer>>,
    /// The scheduler node of the current session (from its Welcome), for the observer.
    node_id: u64,
}

impl Core {
    async fn run(&mut self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            if self.drain.is_some() && self.tasks.is_empty() && self.leases.is_empty() {
                return;
            }
            let far = Instant::now() + Duration::from_secs(86_400);
            let (grace_until, grace_pending, give_up_at) = match &self.drain {
                Some(d) => (d.grace_until, !d.grace_over, d.give_up_at),
                None => (far, false, far),
            };
            tokio::select! {
                _ = &mut shutdown, if self.drain.is_none() => self.begin_drain().await,
                event = self.events.recv(), if self.events_open => match event {
                    Some(e) => self.on_event(e).await,
                    None => {
                        tracing::error!("the session stopped unexpectedly");
                        self.events_open = false;
                    }
                },
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => match joined {
                    Ok((key, report)) => self.on_task_done(key, report).await,
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(error = %e, "a task ended abnormally"),
                },
                _ = tokio::time::sleep_until(grace_until), if grace_pending => self.end_grace().await,
                _ = tokio::time::sleep_until(give_up_at), if self.drain.is_some() => {
                    tracing::warn!(
                        unacked = self.leases.awaiting_ack(), running = self.tasks.len(),
                        "cannot deliver the last reports; their leases will lapse and the tasks run again"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    return;
                }
            }
            self.publish();
        }
    }

    /// Tasks to hold ahead of each slot.
    fn prefetch(&self) -> usize {
        self.auto_prefetch.as_ref().map_or(self.prefetch, AutoPrefetch::prefetch)
    }

    /// Leases to hold: slots × (1 + prefetch).
    fn target(&self) -> usize {
        self.slots.saturating_mul(1 + self.prefetch())
    }

    fn publish(&self) {
        let held = self.leases.held();
        self.metrics.set_held(self.leases.held_count());
        self.metrics.set_prefetch(self.prefetch());
        let draining = self.drain.is_some();
        let want = if draining { 0 } else { self.leases.want(self.target()) };
        let working = self.leases.working().into_iter().map(|(key, stage)| Working { key, stage }).collect();
        let next = Status { held, want, draining, working };
        self.status.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }

    async fn report(&self, report: Report) {
        if self.reports.send(report).await.is_err() {
            tracing::error!("the session is gone; a report was not delivered");
        }
    }

    async fn release(&mut self, keys: Vec<LeaseKey>, reason: &str) {
        if keys.is_empty() {
            return;
        }
        self.metrics.released(keys.len());
        let leases = keys.into_iter().map(lease_ref).collect();
        self.report(Report::Released { leases, reason: reason.to_owned() }).await;
    }

    async fn begin_drain(&mut self) {
        let now = Instant::now();
        self.drain = Some(Drain {
            grace_until: now + self.drain_grace,
            grace_over: false,
            give_up_at: now + self.drain_grace + DELIVERY_GRACE,
        });
        self.metrics.set_draining();
        // Publish first: the session sends Drain before the Released below.
        self.publish();
        let unstarted = self.leases.release_working(false);
        tracing::info!(released = unstarted.len(), running = self.leases.held_count(), grace = ?self.drain_grace, "draining");
        self.release(unstarted, "worker draining").await;
    }

    async fn end_grace(&mut self) {
        if let Some(d) = &mut self.drain {
            d.grace_over = true;
        }
        let running = self.leases.release_working(true);
        if !running.is_empty() {
            tracing::warn!(released = running.len(), "drain grace over; giving back the tasks still rendering");
        }
        self.release(running, "worker drain grace expired").await;
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { welcome, .. } => {
                self.node_id = welcome.node_id;
                if let Some(o) = &self.observer {
                    o.connected(welcome.node_id);
                }
            }
            Event::Disconnected { .. } => {}
            Event::Assign(tasks) => {
                if let Some(o) = &self.observer {
                    o.assigned(self.node_id, &tasks);
                }
                self.on_assign(tasks).await
            }
            Event::Revoke { leases, reason } => {
                for lease in leases {
                    if let Some(auto) = &mut self.auto_prefetch {
                        auto.forget(key_of(&lease));
                    }
                    let revoked = self.leases.revoke(key_of(&lease));
                    if let Some(o) = &self.observer {
                        o.revoked(lease, revoked == Revoked::Dropped);
                    }
                    match revoked {
                        Revoked::Dropped => {
                            self.metrics.revoked();
                            tracing::info!(task = lease.task_id, %reason, "lease revoked before its render started; dropped");
                        }
                        Revoked::Started => {
                            tracing::info!(task = lease.task_id, %reason, "lease revoked while rendering; finishing anyway")
                        }
                        Revoked::NotHeld => {}
                    }
                }
            }
            Event::Acked { lease, accepted } => {
                if let Some(o) = &self.observer {
                    o.acked(lease_ref(lease), accepted);
                }
                if let Some(auto) = &mut self.auto_prefetch {
                    auto.acked(lease, std::time::Instant::now());
                }
                self.leases.acked(lease)
            }
        }
    }

    async fn on_assign(&mut self, tasks: Vec<v1::Assignment>) {
        if let Some(started) = self.cold_start.take() {
            tracing::info!(after_ms = started.elapsed().as_millis() as u64, "first lease");
        }
        let mut refused = Vec::new();
        for a in tasks {
            let Some(lease) = a.lease else { continue };
            let key = key_of(&lease);
            if self.leases.contains(key) {
                continue;
            }
            if self.drain.is_some() {
                self.leases.insert_released(key);
                refused.push(key);
                continue;
            }
            let job = match a.job.map(kiln_proto::job_from_pb) {
                Some(Ok(job)) => job,
                invalid => {
                    let reason = match invalid {
                        Some(Err(e)) => e.to_string(),
                        _ => "missing job".to_owned(),
                    };
                    let e = TaskError::InvalidJob(reason);
                    self.leases.insert_reported(key);
                    self.metrics.failed(true);
                    self.report(Report::failed(lease, &e)).await;
                    continue;
                }
            };
            let stage = Arc::new(Stage::default());
            let assigned = Assigned { lease, attempt: a.attempt, job };
            let run = task::run(self.shared.clone(), assigned, stage.clone());
            let abort = self.tasks.spawn(async move {
                match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                    Ok(report) => (key, report),
                    Err(_) => (
                        key,
                        Some(Report::failed(lease, &TaskError::Panicked("task panicked outside a render".into()))),
                    ),
                }
            });
            self.leases.insert(key, stage, Some(abort));
        }
        self.release(refused, "worker draining").await;
    }

    async fn on_task_done(&mut self, key: LeaseKey, report: Option<Report>) {
        match report {
            None => {
                self.leases.forget_working(key);
                if let Some(auto) = &mut self.auto_prefetch {
                    auto.forget(key);
                }
            }
            Some(report) => {
                if self.leases.reported(key) {
                    if let Some(auto) = &mut self.auto_prefetch {
                        auto.reported(key, std::time::Instant::now());
                    }
                    self.report(report).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_become_valid_worker_ids() {
        assert_eq!(id_from_hostname("r620-07.rack.local"), "r620-07.rack.local");
        assert_eq!(id_from_hostname("my host"), "my-host");
        assert_eq!(id_from_hostname(""), "worker");
        for h in ["a b/c", "ü", "pod_1"] {
            assert!(kiln_types::WorkerId::new(id_from_hostname(h)).is_ok(), "{h}");
        }
    }
}
