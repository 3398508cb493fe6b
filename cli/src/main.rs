//! `kiln`: the one binary users run — scheduler, worker, the client commands, and the all-in-one
//! `kiln run` / `kiln demo`.
//!
//! Thin by design: each subcommand lives in `cmd/` and calls into the library crates. Errors reach
//! the user as one clear line (with context) and a non-zero exit code.

mod cmd;
mod folder;
mod manifest;
mod output;
mod signals;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::output::OutputFormat;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Render derivative assets (BPM, key, loudness, waveform, AAC, artwork) for audio catalogs on a fleet of long-lived workers.",
    long_about = "Render derivative assets (BPM, key, loudness, waveform, 128 kb/s AAC, artwork) for catalogs of \
audio masters, on long-lived workers coordinated by a Raft-replicated scheduler.\n\n\
Start here:\n  kiln demo                         synthesize masters and run the whole pipeline locally\n  \
kiln run ./masters --out ./derivs  render a folder on this machine\n\n\
A cluster:\n  kiln scheduler --config kiln.toml  run a scheduler node\n  \
kiln worker --config kiln.toml     run a worker\n  kiln submit --manifest jobs.jsonl  submit a catalog\n  \
kiln status --watch                watch it go"
)]
struct Cli {
    /// Scheduler address(es); any member works, the client follows the leader.
    #[arg(
        long,
        global = true,
        env = "KILN_SCHEDULER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7450",
        help_heading = "Connection"
    )]
    scheduler: Vec<String>,

    /// Output format of every command's result, and of its error (a JSON object on stderr).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    tls: cmd::TlsArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on synthesized masters with known answers (embedded one-node cluster).
    Demo(cmd::demo::Args),
    /// BPM, key and loudness of local audio files (CSV or JSON), no scheduler needed.
    Analyze(cmd::analyze::Args),
    /// Render a folder of masters (or a manifest) on this machine: embedded scheduler + worker.
    Run(cmd::run::Args),
    /// Run a scheduler node.
    Scheduler(cmd::scheduler::Args),
    /// Run a worker.
    Worker(cmd::worker::Args),
    /// Submit one task from flags, or a manifest of many (JSONL or CSV).
    Submit(cmd::submit::Args),
    /// A whole catalog manifest as one batch: admitted a window at a time, paused, resumed,
    /// cancelled and followed as one thing, with a webhook when it ends.
    Batch(cmd::batch::Args),
    /// Counts, rates and progress of the cluster.
    Status(cmd::status::Args),
    /// One task with its history.
    Task(cmd::task::Args),
    /// List tasks, filtered by state, queue or release.
    Tasks(cmd::tasks::Args),
    /// Cancel a task that has not finished.
    Cancel(cmd::task::CancelArgs),
    /// Inspect, requeue or purge dead-lettered tasks.
    Dlq(cmd::dlq::Args),
    /// Connected workers, their slots and leases.
    Workers(cmd::workers::Args),
    /// Stop leasing to a worker so it empties before its machine goes down.
    ///
    /// The scheduler leases it nothing more; the tasks it holds finish (or are stolen by idle
    /// workers) as usual. Watch `kiln workers --watch` until its LEASED column is 0, then stop
    /// the worker. The drain is recorded in the ledger (every scheduler honours it) and lasts
    /// until the worker registers again: a restart, or a reconnect after a network failure.
    Drain(cmd::drain::Args),
    /// Raft members, leader, term, commit and applied index, releases and feature flags.
    Cluster(cmd::cluster::Args),
    /// Prove nothing was lost: every task in one terminal state, replicas identical.
    Audit(cmd::audit::Args),
    /// Certificates and tokens for a cluster that runs mutual TLS.
    Tls(cmd::tls::Args),
    /// Print shell completions: `kiln completion bash|zsh|fish|elvish|powershell`.
    Completion(cmd::completion::CompletionArgs),
    /// Write man pages for kiln and every command into a directory.
    Man(cmd::completion::ManArgs),
}

/// `kiln --version`: the version, the commit it was built from and the renderers compiled in.
fn version_text() -> String {
    format!(
        "{} (commit {})\nrenderers: {}\nbuild: {}, {}",
        env!("CARGO_PKG_VERSION"),
        kiln_proto::metrics::COMMIT,
        kiln_render::available_renderers().join(", "),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::env::consts::ARCH
    )
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org): container
    // and journald logs must stay plain text.
    let ansi = output::colour() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    // The version text is computed (commit, renderers), so clap gets it as a leaked &'static str
    // once per process.
    let version: &'static str = Box::leak(version_text().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Server processes log at info; client commands stay quiet unless something is wrong.
    let level = match cli.command {
        Command::Scheduler(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let output = cli.output;
    match cli.command {
        Command::Completion(a) => {
            cmd::completion::completion(Cli::command(), a);
            return std::process::ExitCode::SUCCESS;
        }
        Command::Man(a) => {
            return match cmd::completion::man(Cli::command().version(version), &a) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail(output, &e),
            };
        }
        _ => {}
    }
    let ctx = cmd::Context { schedulers: cli.scheduler, output: cli.output, tls: cli.tls };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(a) => cmd::demo::run(&ctx, a).await,
            Command::Run(a) => cmd::run::run(&ctx, a).await,
            Command::Analyze(a) => cmd::analyze::run(&ctx, a).await,
            Command::Scheduler(a) => cmd::scheduler::run(a).await,
            Command::Worker(a) => cmd::worker::run(&ctx, a).await,
            Command::Submit(a) => cmd::submit::run(&ctx, a).await,
            Command::Status(a) => cmd::status::run(&ctx, a).await,
            Command::Task(a) => cmd::task::run(&ctx, a).await,
            Command::Tasks(a) => cmd::tasks::run(&ctx, a).await,
            Command::Cancel(a) => cmd::task::cancel(&ctx, a).await,
            Command::Dlq(a) => cmd::dlq::run(&ctx, a).await,
            Command::Batch(a) => cmd::batch::run(&ctx, a).await,
            Command::Workers(a) => cmd::workers::run(&ctx, a).await,
            Command::Drain(a) => cmd::drain::run(&ctx, a).await,
            Command::Cluster(a) => cmd::cluster::run(&ctx, a).await,
            Command::Audit(a) => cmd::audit::run(&ctx, a).await,
            Command::Tls(a) => cmd::tls::run(&ctx, a),
            Command::Completion(_) | Command::Man(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(output, &e),
    }
}

/// Reports `e` on stderr: one line with its causes, or with `-o json` a JSON object
/// `{"error": "...", "causes": [...]}` a script can parse. Exits 1 for most errors; a scheduler
/// node that stopped on its storage says why in its code (74 disk full or I/O error, 65 damaged
/// data directory, 70 a bug), as docs/operations.md lists.
fn fail(output: OutputFormat, e: &anyhow::Error) -> std::process::ExitCode {
    if output == OutputFormat::Json {
        let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
        eprintln!("{}", serde_json::json!({ "error": e.to_string(), "causes": causes }));
    } else {
        eprintln!("error: {e:#}");
    }
    std::process::ExitCode::from(exit_code(e))
}

fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|cause| {
            cause
                .downcast_ref::<kiln_scheduler::NodeFailure>()
                .map(kiln_scheduler::NodeFailure::exit_code)
                .or_else(|| cause.downcast_ref::<kiln_scheduler::Error>().map(kiln_scheduler::Error::exit_code))
        })
        .unwrap_or(1)
}
