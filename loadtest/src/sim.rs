//! The pieces every scenario's submitters share: the loadtest's job, and one submit call.

use kiln_proto::v1;

/// The no-op job number `i` of a loadtest run: `loudness` on a master nobody fetches.
pub fn job(run_id: &str, i: u64) -> v1::EncodeJob {
    v1::EncodeJob {
        request_id: format!("{run_id}-{i}"),
        release_id: (i / 100) as i64,
        asset_id: i as i64,
        asset_guid: format!("loadtest/{i}.wav"),
        derivative_assets: vec!["loudness".into()],
        ..Default::default()
    }
}

/// Submits one batch through the leader-following client (retried there: submit is idempotent).
pub async fn submit(client: &mut kiln_proto::Client, jobs: Vec<v1::EncodeJob>) -> anyhow::Result<()> {
    let req = v1::SubmitRequest { jobs };
    client
        .call(|mut s| {
            let req = req.clone();
            async move { s.submit(req).await }
        })
        .await?;
    Ok(())
}
