//! The layered loader: TOML and environment variables merged into one tree, then deserialized.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::Options;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads defaults, then `file` (if any), then `KILN_SECTION__KEY=value` variables from `env`.
/// Flags are applied by the caller on the returned value, followed by [`Options::validate`].
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Options, Error> {
    let mut tree = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
            text.parse::<toml::Table>().map_err(|e| Error::Parse { path: path.to_owned(), message: e.to_string() })?
        }
        None => toml::Table::new(),
    };
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("KILN_") else { continue };
        let Some((section, key)) = rest.split_once("__") else { continue };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !matches!(section.as_str(), "scheduler" | "worker") {
            continue;
        }
        let table =
            tree.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new())).as_table_mut().ok_or_else(
                || Error::Env { var: var.clone(), message: "the file defines this section as a value".into() },
            )?;
        table.insert(key, env_value(&value));
    }
    let path = file.map(Path::to_owned).unwrap_or_else(|| PathBuf::from("<defaults and environment>"));
    toml::Value::Table(tree).try_into::<Options>().map_err(|e| Error::Parse { path, message: e.to_string() })
}

/// A config file's text alone, without defaults from a file or the environment: for checking a
/// file's text (and for the fuzz target that feeds it hostile bytes).
pub fn parse(text: &str) -> Result<Options, Error> {
    let path = PathBuf::from("<text>");
    let tree = text.parse::<toml::Table>().map_err(|e| Error::Parse { path: path.clone(), message: e.to_string() })?;
    toml::Value::Table(tree).try_into::<Options>().map_err(|e| Error::Parse { path, message: e.to_string() })
}

/// Environment values are TOML literals when they parse as one (numbers, booleans, arrays), and
/// plain strings otherwise, so `KILN_WORKER__SLOTS=4` and `KILN_WORKER__MASTERS=/srv/m` both work.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("kiln-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kiln.toml");
        std::fs::write(&path, "[worker]\nslots = 3\nmasters = \"/srv/masters\"\n[scheduler]\nlease_ttl = \"45s\"\n")
            .expect("write");
        let opts = load(
            Some(&path),
            [("KILN_WORKER__SLOTS".to_owned(), "6".to_owned()), ("UNRELATED".to_owned(), "x".to_owned())],
        )
        .expect("load");
        assert_eq!(opts.worker.slots, Some(6));
        assert_eq!(opts.worker.masters, "/srv/masters");
        assert_eq!(opts.scheduler.lease_ttl, std::time::Duration::from_secs(45));
        assert_eq!(opts.scheduler.node_id, 1, "untouched values keep their defaults");
        opts.validate().expect("valid");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_file() {
        let dir = std::env::temp_dir().join(format!("kiln-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kiln.toml");
        std::fs::write(&path, "[worker]\nslotz = 3\n").expect("write");
        let err = load(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("kiln.toml") && err.contains("slotz"), "{err}");
    }

    #[test]
    fn validation_catches_impossible_values() {
        let mut opts = load(None, []).expect("defaults");
        opts.scheduler.heartbeat_interval = opts.scheduler.lease_ttl;
        assert!(opts.validate().is_err());
    }

    #[test]
    fn example_files_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for entry in std::fs::read_dir(dir).expect("examples dir") {
            let path = entry.expect("entry").path();
            let opts = load(Some(&path), []).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            opts.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
