//! Identifier newtypes and their validation rules.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// The ledger's own identifier for a task: dense, assigned in submission order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for TaskId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map(TaskId)
            .map_err(|_| InvalidValue::new("task_id", s, "expected a non-negative integer"))
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $check:expr) => {
        string_id!($(#[$doc])* $name, $field, $max, $check, &[]);
    };
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $check:expr, $interned:expr) => {
        $(#[$doc])*
        ///
        /// Stored as a `Cow<'static, str>`: common values (the built-in renderers, the default
        /// queue) borrow a static string, others own exactly their bytes. A million queued tasks
        /// each carry several of these, so the allocations add up.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Cow<'static, str>);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
                let value = value.into();
                if value.is_empty() {
                    return Err(InvalidValue::new($field, &value, "must not be empty"));
                }
                if value.len() > $max {
                    return Err(InvalidValue::new(
                        $field,
                        &value,
                        format!("is {} bytes long, the limit is {}", value.len(), $max),
                    ));
                }
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value).map_err(|reason| InvalidValue::new($field, &value, reason))?;
                let interned: &[&'static str] = $interned;
                Ok(Self(intern(value, interned)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.into_owned()
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

/// The static copy of `value` if it is one of `interned`, else `value` without spare capacity.
fn intern(mut value: String, interned: &[&'static str]) -> Cow<'static, str> {
    match interned.iter().find(|s| **s == value) {
        Some(s) => Cow::Borrowed(s),
        None => {
            value.shrink_to_fit();
            Cow::Owned(value)
        }
    }
}

string_id!(
    /// The submitter's idempotency key (usually a UUID). Submitting the same key twice returns the
    /// task created the first time.
    RequestId,
    "request_id",
    128,
    |s| match s.chars().find(|c| !is_token_char(*c)) {
        Some(c) => Err(format!("character {c:?} is not allowed (use letters, digits, - _ . :)")),
        None => Ok(()),
    }
);

string_id!(
    /// A stable worker name, e.g. `r620-07` or a pod name.
    WorkerId,
    "worker_id",
    128,
    |s| match s.chars().find(|c| !is_token_char(*c)) {
        Some(c) => Err(format!("character {c:?} is not allowed (use letters, digits, - _ . :)")),
        None => Ok(()),
    }
);

fn check_lower_token(s: &str) -> Result<(), String> {
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter".into());
    }
    match s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')) {
        Some(c) => Err(format!("character {c:?} is not allowed (use a-z, 0-9, _ and -)")),
        None => Ok(()),
    }
}

string_id!(
    /// A renderer name as it appears in `derivative_assets`: `bpm`, `key`, `loudness`, …
    RendererName,
    "renderer",
    64,
    check_lower_token,
    crate::job::BUILTIN_RENDERERS
);

string_id!(
    /// A named queue; workers subscribe to queues, tasks land in exactly one.
    QueueName,
    "queue",
    64,
    check_lower_token,
    &["default"]
);

impl Default for QueueName {
    fn default() -> Self {
        Self(Cow::Borrowed("default"))
    }
}

string_id!(
    /// Names a master in storage, relative to the masters prefix, and names the folder of its
    /// derivatives. Validation guarantees it can never escape either prefix: no absolute paths, no
    /// `.` or `..` segments, no empty segments, no backslashes or control characters.
    AssetGuid,
    "asset_guid",
    512,
    check_asset_guid
);

fn check_asset_guid(s: &str) -> Result<(), String> {
    if s.starts_with('/') {
        return Err("must be relative to the storage prefix, not start with `/`".into());
    }
    if s.ends_with('/') {
        return Err("must not end with `/`".into());
    }
    for segment in s.split('/') {
        match segment {
            "" => return Err("contains an empty path segment (`//`)".into()),
            "." | ".." => return Err(format!("segment `{segment}` would escape the storage prefix")),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '=' | '@' | ',')))
        {
            return Err(format!("character {c:?} is not allowed in a storage key"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_guid_refuses_every_way_out_of_the_prefix() {
        for bad in ["../../etc", "a/../b", "/etc/passwd", "a//b", ".", "a/.", "a\\..\\b", "a/b/", "", "a\0b", "a b"] {
            assert!(AssetGuid::new(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["3f2a9c1e-0b7d-4d52-9f0e-6f1e2d3c4b5a", "release-12/track_01.wav", "a.b.c", "x..y"] {
            assert!(AssetGuid::new(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn error_names_field_and_rule() {
        let err = AssetGuid::new("../../etc").unwrap_err();
        assert_eq!(err.field, "asset_guid");
        assert!(err.to_string().contains("escape"), "{err}");
    }

    #[test]
    fn renderer_and_queue_names_are_lowercase_tokens() {
        assert!(RendererName::new("aac128").is_ok());
        assert!(RendererName::new("AAC").is_err());
        assert!(RendererName::new("1bpm").is_err());
        assert!(QueueName::new("back-catalog").is_ok());
        assert!(QueueName::new("with space").is_err());
    }

    #[test]
    fn request_ids_are_bounded_tokens() {
        assert!(RequestId::new("6f1e2d3c-4b5a-4d52-9f0e-3f2a9c1e0b7d").is_ok());
        assert!(RequestId::new("x".repeat(129)).is_err());
        assert!(RequestId::new("a/b").is_err());
    }

    #[test]
    fn serde_round_trip_revalidates() {
        let guid: Result<AssetGuid, _> = serde_json::from_str("\"../x\"");
        assert!(guid.is_err());
        let guid: AssetGuid = serde_json::from_str("\"ok/x\"").expect("valid guid");
        assert_eq!(serde_json::to_string(&guid).expect("serialize"), "\"ok/x\"");
    }
}
