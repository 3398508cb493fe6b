//! One module per subcommand.

pub mod analyze;
pub mod audit;
pub mod batch;
pub mod cluster;
pub mod completion;
pub mod demo;
pub mod dlq;
pub mod drain;
pub mod features;
pub mod run;
pub mod scheduler;
pub mod status;
pub mod submit;
pub mod task;
pub mod tasks;
pub mod tls;
pub mod worker;
pub mod workers;

use anyhow::Context as _;
use kiln_proto::v1;

use crate::output::OutputFormat;

pub struct Context {
    pub schedulers: Vec<String>,
    pub output: OutputFormat,
    pub tls: TlsArgs,
}

impl Context {
    pub fn client(&self) -> anyhow::Result<kiln_proto::Client> {
        kiln_proto::Client::with_credentials(self.schedulers.clone(), self.credentials()?)
            .context("bad --scheduler address")
    }

    /// What the client commands present to the schedulers: `--ca` turns TLS on.
    pub fn credentials(&self) -> anyhow::Result<kiln_proto::Credentials> {
        let t = &self.tls;
        kiln_proto::Credentials::from_parts(
            t.ca.as_deref(),
            t.cert.as_deref(),
            t.key.as_deref(),
            t.token.as_deref(),
            &t.server_name,
        )
        .context("TLS options (--ca, --cert, --key, --token)")
    }
}

/// The global TLS options of every client command (and of `kiln worker`, which falls back on
/// them when its config has no `[tls]`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// CA certificate (PEM) of a cluster that runs TLS; turns TLS on (addresses become https://).
    #[arg(long, global = true, env = "KILN_CA", value_name = "PEM", help_heading = "Connection")]
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) from `kiln tls init`: its role (admin, submit, worker) decides what
    /// you may do.
    #[arg(long, global = true, env = "KILN_CERT", value_name = "PEM", requires = "key", help_heading = "Connection")]
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "KILN_KEY", value_name = "PEM", requires = "cert", help_heading = "Connection")]
    pub key: Option<std::path::PathBuf>,
    /// Bearer token instead of a certificate (over TLS only; `kiln tls token` makes one).
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true, help_heading = "Connection")]
    pub token: Option<String>,
    /// The name a scheduler's certificate must carry.
    #[arg(
        long,
        global = true,
        env = "KILN_SERVER_NAME",
        default_value = kiln_config::SCHEDULER_SERVER_NAME,
        help_heading = "Connection"
    )]
    pub server_name: String,
}

pub fn state_name(state: i32) -> &'static str {
    match v1::TaskState::try_from(state).unwrap_or(v1::TaskState::Unspecified) {
        v1::TaskState::Unspecified => "unknown",
        v1::TaskState::Queued => "queued",
        v1::TaskState::Leased => "leased",
        v1::TaskState::Succeeded => "succeeded",
        v1::TaskState::DeadLettered => "dead_lettered",
        v1::TaskState::Cancelled => "cancelled",
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Queued,
    Leased,
    Succeeded,
    DeadLettered,
    Cancelled,
}

impl From<StateArg> for v1::TaskState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Queued => v1::TaskState::Queued,
            StateArg::Leased => v1::TaskState::Leased,
            StateArg::Succeeded => v1::TaskState::Succeeded,
            StateArg::DeadLettered => v1::TaskState::DeadLettered,
            StateArg::Cancelled => v1::TaskState::Cancelled,
        }
    }
}

/// The JSON shape of a task for `--output json`: the wire task with readable state and metadata.
pub fn task_json(t: &v1::Task) -> serde_json::Value {
    let job = t.job.clone().unwrap_or_default();
    let result = t.result.as_ref().map(|r| {
        serde_json::json!({
            "metadata": serde_json::from_str::<serde_json::Value>(&r.metadata_json).unwrap_or(serde_json::Value::Null),
            "outputs": r.outputs.iter().map(|o| serde_json::json!({
                "renderer": o.renderer, "uri": o.uri, "sha256": o.sha256, "bytes": o.bytes, "content_type": o.content_type,
            })).collect::<Vec<_>>(),
            "timings_micros": r.timings.iter().map(|t| (t.renderer.clone(), t.micros)).collect::<std::collections::BTreeMap<_, _>>(),
            "manifest_uri": r.manifest_uri,
        })
    });
    serde_json::json!({
        "id": t.id,
        "state": state_name(t.state),
        "request_id": job.request_id,
        "release_id": job.release_id,
        "asset_id": job.asset_id,
        "asset_guid": job.asset_guid,
        "derivative_assets": job.derivative_assets,
        "queue": job.queue,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "attempts": t.attempts,
        "worker": t.worker,
        "submitted_at": crate::output::ms_to_rfc3339(t.submitted_at_ms),
        "updated_at": crate::output::ms_to_rfc3339(t.updated_at_ms),
        "last_error": if t.last_error.is_empty() { None } else { Some(&t.last_error) },
        "result": result,
        "history": t.history.iter().map(|h| serde_json::json!({
            "at": crate::output::ms_to_rfc3339(h.at_ms), "kind": h.kind, "worker": h.worker, "attempt": h.attempt, "detail": h.detail,
        })).collect::<Vec<_>>(),
    })
}

/// The configuration file to read: the one given (`--config` or `KILN_CONFIG`), else the first
/// that exists of `$XDG_CONFIG_HOME/kiln/kiln.toml` (`~/.config/kiln/kiln.toml`) and
/// `/etc/kiln/kiln.toml`, else none (defaults and environment only).
pub fn config_path(given: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    if given.is_some() {
        return given;
    }
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")));
    user.map(|d| d.join("kiln").join("kiln.toml"))
        .into_iter()
        .chain(std::iter::once(std::path::PathBuf::from("/etc/kiln/kiln.toml")))
        .find(|p| p.is_file())
}

/// `--watch` for listings: print again every `--interval` until Ctrl-C (with `-o json`, one JSON
/// document per refresh; on a terminal, the screen is cleared first).
#[derive(clap::Args, Clone, Copy)]
pub struct Watch {
    /// Refresh the listing until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval for --watch.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
}

impl Watch {
    pub async fn repeat<F, Fut>(&self, output: OutputFormat, mut show: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        if !self.watch {
            return show().await;
        }
        let clear = output == OutputFormat::Table && std::io::IsTerminal::is_terminal(&std::io::stdout());
        loop {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            show().await?;
            tokio::time::sleep(self.interval).await;
        }
    }
}
