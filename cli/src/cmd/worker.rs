//! `kiln worker`: run a long-lived worker until SIGTERM, then drain.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::cmd::Context;

#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration (section [worker]); env KILN_WORKER__<KEY> overrides it. Default: $KILN_CONFIG,
    /// else the first of $XDG_CONFIG_HOME/kiln/kiln.toml (~/.config/…) and /etc/kiln/kiln.toml that exists.
    #[arg(long, short, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Worker id (default: the host name).
    #[arg(long)]
    id: Option<String>,
    /// Render slots (default: physical cores).
    #[arg(long)]
    slots: Option<usize>,
    /// Where masters are read from (path or URL).
    #[arg(long)]
    masters: Option<String>,
    /// Where derivatives are written (path or URL).
    #[arg(long)]
    derivatives: Option<String>,
    /// Do not pin render threads to cores.
    #[arg(long)]
    no_pin: bool,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut opts = kiln_config::load(crate::cmd::config_path(args.config).as_deref(), std::env::vars())?;
    let w = &mut opts.worker;
    // --scheduler (or KILN_SCHEDULER) overrides the file only when given explicitly.
    if std::env::args().any(|a| a.starts_with("--scheduler")) || std::env::var_os("KILN_SCHEDULER").is_some() {
        w.schedulers = ctx.schedulers.clone();
    }
    if let Some(v) = args.id {
        w.id = Some(v);
    }
    if let Some(v) = args.slots {
        w.slots = Some(v);
    }
    if let Some(v) = args.masters {
        w.masters = v;
    }
    if let Some(v) = args.derivatives {
        w.derivatives = v;
    }
    if args.no_pin {
        w.pin_cores = false;
    }
    // --ca/--cert/--key (KILN_CA, …) stand in for a [worker.tls] section the file lacks.
    if let (None, Some(ca), Some(cert), Some(key)) = (&w.tls, &ctx.tls.ca, &ctx.tls.cert, &ctx.tls.key) {
        w.tls = Some(kiln_config::TlsOptions {
            ca_file: ca.clone(),
            cert_file: cert.clone(),
            key_file: key.clone(),
            server_name: ctx.tls.server_name.clone(),
        });
    }
    opts.worker.validate()?;
    let mut worker = kiln_worker::Worker::new(opts.worker).context("cannot start the worker")?;
    if let Some(token) = &ctx.tls.token {
        worker = worker.with_token(token).context("--token")?;
    }
    worker.run(crate::signals::shutdown()).await.context("worker stopped")?;
    Ok(())
}
