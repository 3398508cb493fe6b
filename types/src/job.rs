//! The `EncodeJob`: the unit of work users already submit today, validated.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{AssetGuid, InvalidValue, QueueName, RendererName, RequestId};

/// The renderers every worker ships. Plugin renderers extend this set at run time.
pub const BUILTIN_RENDERERS: &[&str] = &["bpm", "key", "loudness", "waveform", "aac128", "artwork"];

/// One task as submitted: the `EncodeJob` contract plus Kiln's scheduling fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeJob {
    pub request_id: RequestId,
    pub release_id: i64,
    pub asset_id: i64,
    pub asset_guid: AssetGuid,
    pub derivative_assets: RendererSet,
    #[serde(default)]
    pub queue: QueueName,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

pub const fn default_max_attempts() -> u32 {
    3
}

/// Why a job was refused before it reached the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobError {
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("derivative_assets is empty: name at least one renderer ({})", BUILTIN_RENDERERS.join(", "))]
    NoRenderers,
    #[error("max_attempts must be between 1 and 100, got {0}")]
    MaxAttempts(u32),
}

impl EncodeJob {
    /// Checks the rules that the individual field types cannot express alone.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.derivative_assets.is_empty() {
            return Err(JobError::NoRenderers);
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(JobError::MaxAttempts(self.max_attempts));
        }
        Ok(())
    }
}

/// The renderers a job asks for: sorted, without duplicates, in one allocation (`BTreeSet` spent
/// a node of eleven slots on a handful of names, for each of a million queued tasks). Serialized
/// as a sequence, exactly as the set it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RendererSet(Box<[RendererName]>);

impl RendererSet {
    pub fn iter(&self) -> std::slice::Iter<'_, RendererName> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.as_str() == name)
    }
}

impl FromIterator<RendererName> for RendererSet {
    fn from_iter<I: IntoIterator<Item = RendererName>>(iter: I) -> Self {
        let mut names: Vec<RendererName> = iter.into_iter().collect();
        names.sort();
        names.dedup();
        Self(names.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a RendererSet {
    type Item = &'a RendererName;
    type IntoIter = std::slice::Iter<'a, RendererName>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for RendererSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for RendererSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<RendererName>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
mod renderer_set_tests {
    use super::*;

    fn set(names: &[&str]) -> RendererSet {
        names.iter().filter_map(|n| RendererName::new(*n).ok()).collect()
    }

    #[test]
    fn is_sorted_and_deduplicated_like_the_set_it_replaces() {
        let s = set(&["waveform", "bpm", "waveform", "key"]);
        let names: Vec<&str> = s.iter().map(RendererName::as_str).collect();
        assert_eq!(names, ["bpm", "key", "waveform"]);
        assert!(s.contains("key") && !s.contains("aac128"));
    }

    #[test]
    fn serializes_exactly_as_a_btreeset() {
        let s = set(&["loudness", "aac128", "custom-plugin"]);
        let b: std::collections::BTreeSet<RendererName> = s.iter().cloned().collect();
        let ours = postcard::to_stdvec(&s).expect("serialize");
        assert_eq!(ours, postcard::to_stdvec(&b).expect("serialize"));
        assert_eq!(postcard::from_bytes::<RendererSet>(&ours).expect("deserialize"), s);
        assert_eq!(serde_json::to_string(&s).expect("json"), r#"["aac128","custom-plugin","loudness"]"#);
    }
}
