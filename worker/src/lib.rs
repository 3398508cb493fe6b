//! The Kiln worker: a long-lived process that leases render tasks from the scheduler, renders them
//! on core-pinned threads, writes the derivatives to an object store and reports back.
//!
//! ```text
//!                 ┌──────────────────────────── kiln worker ─────────────────────────────┐
//!  scheduler ◀──▶ │ session ◀─status/reports── worker loop ──spawn──▶ task (async)       │
//!   (leader)      │  (stream,   ──events──▶   (owns leases,            fetch ─▶ store   │
//!                 │  reconnect,                drain)                  render ─▶ slots ─┐ │
//!                 │  outbox)                                           upload ─▶ store  │ │
//!                 │                                          slot threads (1 per core) ◀┘ │
//!                 └───────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Layout:
//! - [`Worker`] (`worker`): options in, parts built, and the loop that owns the held leases, reacts
//!   to assignments, revocations, acks and finished tasks, and drains on shutdown.
//! - `session`: the bidirectional stream; leader following, reconnects with backoff, the outbox of
//!   unacknowledged reports, heartbeats.
//! - `leases`: the table of held leases and their phases.
//! - `task`: one task from lease to report: fetch, render, upload, manifest.
//! - `budget`: the bytes of masters held in memory at once.
//! - `slots`: the render threads, one per slot, pinned to cores; the [`Render`] edge.
//! - `storage`: the [`Storage`] edge (fetch the master, put the derivatives), by asset.
//! - `store`: masters and derivatives through `object_store`, and the keys under each.
//! - `observe`: the optional [`Observer`] of what the session is told (the loadtest measures with it).
//! - `manifest`: `manifest.json` and the ack's `TaskResult`.
//! - `capacity`: cores, memory, slots and measured speed.
//! - `metrics`, `http`: Prometheus counters, `/metrics` and `/healthz`.
//! - `error`: [`Error`] (the worker stops) and [`TaskError`] (one task fails, permanent or not).
//!
//! Shutdown is an argument: `run(shutdown)` serves until the future resolves, then drains.

mod budget;
mod capacity;
mod error;
mod http;
mod leases;
mod manifest;
mod metrics;
mod observe;
mod prefetch;
mod session;
mod slots;
mod storage;
mod store;
mod task;
mod worker;

pub use capacity::{measure_speed, Capacity};
pub use error::{Error, TaskError};
pub use manifest::Manifest;
pub use observe::Observer;
pub use slots::Render;
pub use storage::Storage;
pub use store::{download, Remote};
pub use worker::{Edges, Worker, DELIVERY_GRACE};
