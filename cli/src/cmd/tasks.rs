//! `kiln tasks`: list tasks by state, queue or release, page by page.

use kiln_proto::v1;

use crate::cmd::{state_name, task_json, Context, StateArg};
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    #[arg(long)]
    queue: Option<String>,
    #[arg(long)]
    release: Option<i64>,
    /// Show tasks with an id greater than this (pagination).
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    watch: crate::cmd::Watch,
}

pub async fn list(
    ctx: &Context,
    state: Option<StateArg>,
    queue: Option<String>,
    release: Option<i64>,
    after: u64,
    limit: u32,
) -> anyhow::Result<v1::ListTasksResponse> {
    let mut client = ctx.client()?;
    let req = v1::ListTasksRequest {
        state: state.map_or(v1::TaskState::Unspecified, Into::into) as i32,
        queue: queue.unwrap_or_default(),
        release_id: release,
        after_id: after,
        limit,
        with_history: false,
    };
    Ok(client
        .call(|mut s| {
            let req = req.clone();
            async move { s.list_tasks(req).await }
        })
        .await?)
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    args.watch
        .repeat(ctx.output, || async {
            let resp = list(ctx, args.state, args.queue.clone(), args.release, args.after, args.limit).await?;
            if ctx.output == OutputFormat::Json {
                return output::json(&serde_json::json!({
                    "tasks": resp.tasks.iter().map(task_json).collect::<Vec<_>>(),
                    "next_after": (resp.next_after_id > 0).then_some(resp.next_after_id),
                }));
            }
            print_list(&resp);
            Ok(())
        })
        .await
}

pub fn print_list(resp: &v1::ListTasksResponse) {
    let rows: Vec<Vec<String>> = resp
        .tasks
        .iter()
        .map(|t| {
            let job = t.job.clone().unwrap_or_default();
            vec![
                t.id.to_string(),
                state_name(t.state).into(),
                job.queue,
                job.release_id.to_string(),
                job.asset_guid,
                t.attempts.to_string(),
                t.last_error.chars().take(80).collect(),
            ]
        })
        .collect();
    output::table(&["ID", "STATE", "QUEUE", "RELEASE", "ASSET_GUID", "ATTEMPTS", "LAST_ERROR"], &rows);
    if resp.next_after_id > 0 {
        println!("… more: --after {}", resp.next_after_id);
    }
}
