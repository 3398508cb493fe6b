//! `kiln audit`: after an incident or a maintenance window, prove that nothing was lost.
//!
//! Reads every task back with its history and asks every member for its ledger digest (see
//! `kiln_proto::audit`). Exits non-zero when the audit is not clean, so it can gate a script.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

#[derive(clap::Args)]
#[command(long_about = "Checks that every task is in exactly one terminal state, that no request id \
is held twice, that no task succeeded twice, and that every scheduler holds an identical ledger.\n\n\
Run it on a quiet cluster (workers idle or stopped): replicas that are still applying entries get \
--settle to catch up. Exits 1 unless the audit is clean.")]
pub struct Args {
    /// A file of request ids (one per line) that must all be in the ledger.
    #[arg(long)]
    expect: Option<std::path::PathBuf>,
    /// How long the replicas get to reach the same applied index.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let expected: Option<BTreeSet<String>> = match &args.expect {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
        }
        None => None,
    };
    let report = kiln_proto::audit::audit(ctx.client()?, expected.as_ref(), args.settle).await?;
    if ctx.output == OutputFormat::Json {
        output::json(&serde_json::json!({
            "clean": report.clean(),
            "tasks_in_ledger": report.tasks_in_ledger,
            "succeeded": report.succeeded,
            "dead_lettered": report.dead_lettered,
            "cancelled": report.cancelled,
            "stuck": report.stuck,
            "duplicated": report.duplicated,
            "completed_twice": report.completed_twice,
            "lost": expected.as_ref().map(|_| report.lost),
            "replicas_agree": report.replicas_agree,
            "batches": report.batches,
            "batches_inconsistent": report.batches_inconsistent,
            "members": report.members.iter().map(|m| serde_json::json!({
                "id": m.id,
                "address": m.address,
                "reachable": m.own.is_some(),
                "role": m.own.as_ref().map(|o| o.role.clone()),
                "applied_index": m.own.as_ref().map(|o| o.applied_index),
                "ledger_digest": m.own.as_ref().map(|o| format!("{:016x}", o.ledger_digest)),
            })).collect::<Vec<_>>(),
            "examples": report.examples,
        }))?;
    } else {
        println!(
            "{} tasks: {} succeeded, {} dead-lettered, {} cancelled",
            report.tasks_in_ledger, report.succeeded, report.dead_lettered, report.cancelled
        );
        let lost = expected.as_ref().map_or("not checked (no --expect)".to_owned(), |_| report.lost.to_string());
        println!(
            "stuck {}; duplicated {}; completed twice {}; lost {lost}",
            report.stuck, report.duplicated, report.completed_twice
        );
        if report.batches > 0 {
            println!("{} batches, {} with counters that do not add up", report.batches, report.batches_inconsistent);
        }
        let rows: Vec<Vec<String>> = report
            .members
            .iter()
            .map(|m| match &m.own {
                Some(o) => vec![
                    m.id.to_string(),
                    o.role.clone(),
                    m.address.clone(),
                    o.applied_index.to_string(),
                    format!("{:016x}", o.ledger_digest),
                ],
                None => vec![m.id.to_string(), "unreachable".into(), m.address.clone(), "-".into(), "-".into()],
            })
            .collect();
        output::table(&["ID", "ROLE", "ADDRESS", "APPLIED", "LEDGER"], &rows);
        for e in &report.examples {
            println!("  {e}");
        }
        println!("{}", if report.clean() { "audit clean" } else { "AUDIT NOT CLEAN" });
    }
    anyhow::ensure!(report.clean(), "the audit is not clean");
    Ok(())
}
