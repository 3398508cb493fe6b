//! `kiln scheduler`: run one scheduler node until SIGTERM, or until its Raft node fails (then exit
//! non-zero, with the cause, so a supervisor restarts it).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration (section [scheduler]); env KILN_SCHEDULER__<KEY> overrides it. Default: $KILN_CONFIG,
    /// else the first of $XDG_CONFIG_HOME/kiln/kiln.toml (~/.config/…) and /etc/kiln/kiln.toml that exists.
    #[arg(long, short, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Where the Raft log and snapshots live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP listen address for /metrics and /healthz.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    #[arg(long)]
    node_id: Option<u64>,
    /// Start empty and wait to be added to a running cluster (`kiln cluster add`); `peers` in the
    /// config lists the current members and this node.
    #[arg(long)]
    join: bool,
    /// Disaster recovery after a majority of nodes is lost for good: restart this node as a
    /// one-member cluster with everything it knew to be committed, then add new nodes to it.
    #[arg(long, conflicts_with = "join")]
    force_new_cluster: bool,
    /// For tests and for rehearsing a rollback: behave as the older release whose newest log
    /// format is N, hiding newer formats and feature flags (`kiln cluster` shows each node's).
    #[arg(long, value_name = "N")]
    emulate_format: Option<u32>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = kiln_config::load(crate::cmd::config_path(args.config).as_deref(), std::env::vars())?;
    let s = &mut opts.scheduler;
    if let Some(v) = args.data_dir {
        s.data_dir = v;
    }
    if let Some(v) = args.listen {
        s.listen = v;
    }
    if let Some(v) = args.http_listen {
        s.http_listen = v;
    }
    if let Some(v) = args.node_id {
        s.node_id = v;
    }
    if args.join {
        s.join = true;
    }
    if args.force_new_cluster {
        s.force_new_cluster = true;
    }
    if args.emulate_format.is_some() {
        s.emulate_format = args.emulate_format;
    }
    // Listening on every interface says nothing about how others reach this node; its host name
    // does (a container's service name, a StatefulSet pod's stable name).
    if s.advertise.is_none() && s.listen.ip().is_unspecified() {
        if let Some(host) = sysinfo::System::host_name().filter(|h| !h.is_empty()) {
            s.advertise = Some(format!("{}://{host}:{}", s.scheme(), s.listen.port()));
        }
    }
    opts.scheduler.resolve_node_id()?;
    opts.scheduler.validate()?;
    let running = kiln_scheduler::start(&opts.scheduler).await.context("cannot start the scheduler")?;
    println!(
        "kiln scheduler: node {} serving gRPC on {} ({}) and HTTP on {}",
        opts.scheduler.node_id,
        running.grpc_addr(),
        if opts.scheduler.tls.is_some() { "mutual TLS" } else { "plaintext, no authentication" },
        running.http_addr()
    );
    // A node whose Raft thread died serves nothing: exit (non-zero) so systemd or compose restart
    // it, rather than linger answering UNAVAILABLE.
    let failure = tokio::select! {
        () = crate::signals::shutdown() => None,
        failure = running.failed() => Some(failure),
    };
    running.shutdown().await;
    match failure {
        None => Ok(()),
        Some(f) => Err(anyhow::Error::new(f).context(format!("scheduler node {} stopped", opts.scheduler.node_id))),
    }
}
