//! `kiln cluster features` and `kiln cluster enable-feature`: the feature flags of a rolling
//! upgrade.
//!
//! A feature is a set of commands newer than the first log format. It is enabled once, for good,
//! after every member runs a release that supports it; until then the cluster keeps using the
//! older commands, so old and new nodes can run side by side (docs/operations.md).

use anyhow::Context as _;
use kiln_proto::v1;

use crate::cmd::Context;
use crate::output::{self, OutputFormat};

fn feature_json(f: &v1::Feature) -> serde_json::Value {
    serde_json::json!({
        "name": f.name, "description": f.description, "enabled": f.enabled, "min_format": f.min_format,
        "commands": f.commands, "supported_by": f.supported_by, "lacking": f.lacking,
    })
}

/// Lists every known feature: enabled, ready to enable, or waiting for members to be upgraded.
pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let features = client
        .call(|mut s| async move { s.list_features(v1::ListFeaturesRequest {}).await })
        .await
        .context("cannot list the feature flags")?
        .features;
    if ctx.output == OutputFormat::Json {
        return output::json(&features.iter().map(feature_json).collect::<Vec<_>>());
    }
    let rows: Vec<Vec<String>> = features
        .iter()
        .map(|f| {
            let state = match (f.enabled, f.lacking.is_empty()) {
                (true, _) => "enabled",
                (false, true) => "ready (every member supports it)",
                (false, false) => "disabled",
            };
            let ids: Vec<String> = f.supported_by.iter().map(u64::to_string).collect();
            vec![
                f.name.clone(),
                state.to_owned(),
                f.min_format.to_string(),
                if ids.is_empty() { "-".into() } else { ids.join(",") },
                if f.commands.is_empty() { "–".to_owned() } else { f.commands.join(", ") },
            ]
        })
        .collect();
    output::table(&["FEATURE", "STATE", "FORMAT", "SUPPORTED BY", "COMMANDS"], &rows);
    for f in &features {
        println!("\n{}: {}", f.name, f.description);
        for line in &f.lacking {
            println!("  not supported: {line}");
        }
    }
    Ok(())
}

/// Enables `name` (the leader checks that every member supports it first).
pub async fn enable(ctx: &Context, name: String) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let feature = client
        .call(|mut s| {
            let request = v1::EnableFeatureRequest { name: name.clone() };
            async move { s.enable_feature(request).await }
        })
        .await
        .with_context(|| format!("cannot enable feature `{name}`"))?;
    if ctx.output == OutputFormat::Json {
        return output::json(&feature_json(&feature));
    }
    if feature.commands.is_empty() {
        println!("feature {} enabled", feature.name);
    } else {
        println!("feature {} enabled; the cluster now uses {}", feature.name, feature.commands.join(", "));
    }
    Ok(())
}
