//! Typed configuration for every Kiln process, loaded in layers and then validated:
//!
//! ```text
//! defaults ─▶ TOML file ─▶ KILN_<SECTION>__<KEY> env vars ─▶ command-line flags ─▶ validate()
//! ```
//!
//! Every default works on one machine, so `kiln scheduler` and `kiln worker` start with no file at
//! all. Durations are written the human way (`"30s"`, `"5m"`). Examples live in `config/examples/`.

mod batches;
mod layers;
mod scheduler;
mod tls;
mod worker;

pub use batches::BatchOptions;
pub use layers::{load, parse, Error};
pub use scheduler::{PeerOptions, SchedulerOptions};
pub use tls::{CertIdentity, Role, TlsOptions, TokenOptions, SCHEDULER_SERVER_NAME};
pub use worker::WorkerOptions;

/// A whole config file: one section per process kind, each optional.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    pub scheduler: SchedulerOptions,
    pub worker: WorkerOptions,
}

impl Options {
    pub fn validate(&self) -> Result<(), Error> {
        self.scheduler.validate()?;
        self.worker.validate()
    }
}
