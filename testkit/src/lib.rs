//! Dev-only fixtures for Kiln's tests: masters with known content, free ports, real `kiln`
//! processes that a test can start, kill -9, pause, SIGTERM and restart, and a [`TestCluster`]
//! of scheduler nodes and workers built from them, and a [`wan::WanProxy`] that puts a wide-area
//! link (latency, bandwidth) between two of them.
//!
//! Nothing here is used by the scheduler, the worker or the CLI (the loadtest borrows its port
//! picker and its WAN); it exists so end-to-end tests read like the scenario they check ("kill the scheduler,
//! restart it, every task still ends once").

mod cluster;
mod hex;
mod process;
pub mod wan;
mod wav;

pub use cluster::{scheduler_tls_toml, tls_init, Node, TestCluster, FAST_FAILOVER};
pub use hex::{hex_bytes, hex_fixtures};
pub use process::{free_port, run, wait_for, wait_for_or_explain, KilnProcess};
pub use wav::{write_sine_wav, write_wav};
