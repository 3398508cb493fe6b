//! The `[tls]` section shared by schedulers and workers, and the bearer tokens a scheduler accepts.
//!
//! Only paths and names live here; reading the PEM files and building rustls configs is the
//! business of `kiln-proto` (the one crate that opens connections).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The name every scheduler certificate carries and every client checks, whatever address it
/// dialled (as Nomad's `server.<region>.nomad`): a worker's or client's certificate, which lacks
/// it, can never pass for a scheduler.
pub const SCHEDULER_SERVER_NAME: &str = "scheduler.kiln";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// The cluster's CA certificate (PEM): peers, workers and clients must present a certificate
    /// it signed, and schedulers must too.
    pub ca_file: PathBuf,
    /// This process's certificate (PEM), as written by `kiln tls init`.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The name checked on a scheduler's certificate. Default: `scheduler.kiln`.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    SCHEDULER_SERVER_NAME.to_owned()
}

/// The roles a caller can hold (docs/security.md has the table of calls each allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Another scheduler of the cluster: Raft messages and the upgrade survey.
    Peer,
    /// A worker session, bound to one worker id.
    Worker,
    /// Submit tasks and read everything.
    Submit,
    /// Everything `submit` may, plus cancel, dead letters, draining, membership and features.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Peer, Role::Worker, Role::Submit, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Worker => "worker",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bearer token a scheduler accepts (over TLS only). Only its SHA-256 is stored: `kiln tls
/// token` prints a new token and this entry for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenOptions {
    /// Who holds it; for the `worker` role, the worker id it may open a session as.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

impl TokenOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("a token needs a name".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("token {:?}: sha256 must be 64 hex digits (from `kiln tls token`)", self.name));
        }
        Ok(())
    }
}

/// Who a certificate says its holder is, carried as one SAN URI `spiffe://kiln/<kind>/<name>`
/// (the SPIFFE form, so cert-manager and SPIRE can issue Kiln certificates too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertIdentity {
    /// A scheduler: the `peer` role, as Raft node `id`.
    Node(u64),
    /// A worker: the `worker` role, for this worker id only.
    Worker(String),
    /// A person or script: `submit` or `admin`.
    Client { role: Role, name: String },
}

const URI_PREFIX: &str = "spiffe://kiln/";

impl CertIdentity {
    pub fn uri(&self) -> String {
        match self {
            CertIdentity::Node(id) => format!("{URI_PREFIX}node/{id}"),
            CertIdentity::Worker(id) => format!("{URI_PREFIX}worker/{id}"),
            CertIdentity::Client { role, name } => format!("{URI_PREFIX}{role}/{name}"),
        }
    }

    /// The identity in a SAN URI, or `None` for a URI that is not a Kiln identity.
    pub fn from_uri(uri: &str) -> Option<CertIdentity> {
        let (kind, name) = uri.strip_prefix(URI_PREFIX)?.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        match kind {
            "node" => name.parse().ok().filter(|id| *id != 0).map(CertIdentity::Node),
            "worker" => Some(CertIdentity::Worker(name.to_owned())),
            "submit" | "admin" => Role::parse(kind).map(|role| CertIdentity::Client { role, name: name.to_owned() }),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        match self {
            CertIdentity::Node(_) => Role::Peer,
            CertIdentity::Worker(_) => Role::Worker,
            CertIdentity::Client { role, .. } => *role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for id in [
            CertIdentity::Node(3),
            CertIdentity::Worker("rack2-w7".into()),
            CertIdentity::Client { role: Role::Admin, name: "alice".into() },
            CertIdentity::Client { role: Role::Submit, name: "ci".into() },
        ] {
            assert_eq!(CertIdentity::from_uri(&id.uri()), Some(id));
        }
    }

    #[test]
    fn foreign_or_malformed_uris_are_no_identity() {
        for uri in [
            "spiffe://other/node/1",
            "spiffe://kiln/node/0",
            "spiffe://kiln/node/x",
            "spiffe://kiln/peer/1",
            "spiffe://kiln/worker/",
            "spiffe://kiln/worker/a/b",
            "https://kiln/admin/alice",
        ] {
            assert_eq!(CertIdentity::from_uri(uri), None, "{uri}");
        }
    }
}
