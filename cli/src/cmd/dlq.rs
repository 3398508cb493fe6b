//! `kiln dlq list|show|requeue|purge`: the dead letters, where failed tasks wait for a human.
//! `list --watch` refreshes until Ctrl-C, as `kiln tasks --watch` does.

use kiln_proto::v1;

use crate::cmd::{task_json, tasks, Context, StateArg};
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List dead-lettered tasks with their last error.
    List {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        release: Option<i64>,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        watch: crate::cmd::Watch,
    },
    /// Show one dead-lettered task with its full history.
    Show { id: u64 },
    /// Put dead-lettered tasks back in their queue with fresh attempts.
    Requeue(FilterArgs),
    /// Delete dead-lettered tasks for good (they stay counted in the totals).
    Purge(FilterArgs),
}

#[derive(clap::Args)]
struct FilterArgs {
    /// Task ids (repeatable).
    #[arg(long = "id")]
    ids: Vec<u64>,
    #[arg(long)]
    queue: Option<String>,
    #[arg(long)]
    release: Option<i64>,
    /// Only tasks whose last error contains this text.
    #[arg(long)]
    error_contains: Option<String>,
    /// Every dead letter (required when no other filter is given).
    #[arg(long)]
    all: bool,
}

impl FilterArgs {
    fn to_pb(&self) -> anyhow::Result<v1::DeadLetterFilter> {
        if self.ids.is_empty()
            && self.queue.is_none()
            && self.release.is_none()
            && self.error_contains.is_none()
            && !self.all
        {
            anyhow::bail!("give a filter (--id, --queue, --release, --error-contains) or --all");
        }
        Ok(v1::DeadLetterFilter {
            task_ids: self.ids.clone(),
            queue: self.queue.clone().unwrap_or_default(),
            release_id: self.release,
            error_contains: self.error_contains.clone().unwrap_or_default(),
            all: self.all,
        })
    }
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List { queue, release, after, limit, watch } => {
            watch.repeat(ctx.output, || list(ctx, queue.clone(), release, after, limit)).await
        }
        Command::Show { id } => crate::cmd::task::show(ctx, v1::get_task_request::Key::TaskId(id)).await,
        Command::Requeue(f) => {
            let filter = f.to_pb()?;
            let mut client = ctx.client()?;
            let n = client
                .call(|mut s| {
                    let filter = filter.clone();
                    async move { s.requeue_dead_letters(filter).await }
                })
                .await?;
            report(ctx, "requeued", n.count)
        }
        Command::Purge(f) => {
            let filter = f.to_pb()?;
            let mut client = ctx.client()?;
            let n = client
                .call(|mut s| {
                    let filter = filter.clone();
                    async move { s.purge_dead_letters(filter).await }
                })
                .await?;
            report(ctx, "purged", n.count)
        }
    }
}

async fn list(
    ctx: &Context,
    queue: Option<String>,
    release: Option<i64>,
    after: u64,
    limit: u32,
) -> anyhow::Result<()> {
    let resp = tasks::list(ctx, Some(StateArg::DeadLettered), queue, release, after, limit).await?;
    if ctx.output == OutputFormat::Json {
        return output::json(&resp.tasks.iter().map(task_json).collect::<Vec<_>>());
    }
    if resp.tasks.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    tasks::print_list(&resp);
    Ok(())
}

fn report(ctx: &Context, verb: &str, count: u64) -> anyhow::Result<()> {
    if ctx.output == OutputFormat::Json {
        return output::json(&serde_json::json!({ verb: count }));
    }
    println!("{verb} {count} dead-lettered task(s)");
    Ok(())
}
