//! TLS for every gRPC connection Kiln opens or accepts: what a client presents (a certificate, a
//! bearer token, or nothing on loopback) and what a scheduler demands.
//!
//! With TLS every address is dialled as `https://`, whatever scheme a config or a leader hint
//! wrote, so one stray `http://` cannot silently downgrade a connection to plaintext.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// How long a TLS handshake may take before the connection is dropped, on both sides.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no PEM {expected}")]
    NotPem { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("a client certificate needs its key too (and the key its certificate)")]
    HalfIdentity,
    #[error("a bearer token must be printable ASCII")]
    BadToken,
    #[error("a bearer token is sent over TLS only: give --ca (KILN_CA) too")]
    TokenWithoutTls,
}

/// Reads a PEM file that must hold a block whose label ends with `expected` (`CERTIFICATE`;
/// `PRIVATE KEY` also matches `EC PRIVATE KEY` and `RSA PRIVATE KEY`).
fn read_pem(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })?;
    if !String::from_utf8_lossy(&bytes).contains(&format!("{expected}-----")) {
        return Err(TlsError::NotPem { what, path: path.to_owned(), expected });
    }
    Ok(bytes)
}

fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_pem("key", path, "PRIVATE KEY")
}

/// The files of one TLS identity: the CA that signs the cluster, and this process's certificate
/// and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name a scheduler's certificate must carry.
    pub server_name: String,
}

impl TlsFiles {
    /// The scheduler side: present this certificate, demand one signed by the CA. Clients that
    /// bring a bearer token instead may connect without a certificate; the scheduler then
    /// refuses every call that neither a certificate nor a token allows.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let ca = read_pem("CA certificate", &self.ca, "CERTIFICATE")?;
        let cert = read_pem("certificate", &self.cert, "CERTIFICATE")?;
        let key = read_key(&self.key)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

/// What a client presents when it connects: nothing (plaintext, loopback), or TLS with an
/// optional certificate and an optional bearer token.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    tls: Option<ClientTlsConfig>,
    token: Option<AsciiMetadataValue>,
}

impl Credentials {
    /// Plaintext, no identity: a scheduler on loopback, or one started with `insecure = true`.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// TLS trusting `ca`, presenting `cert` and `key` when given.
    pub fn tls(ca: &Path, identity: Option<(&Path, &Path)>, server_name: &str) -> Result<Self, TlsError> {
        let ca = read_pem("CA certificate", ca, "CERTIFICATE")?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((cert, key)) = identity {
            let cert = read_pem("certificate", cert, "CERTIFICATE")?;
            config = config.identity(Identity::from_pem(cert, read_key(key)?));
        }
        Ok(Self { tls: Some(config), token: None })
    }

    /// From the files of a process's own identity (a scheduler dialling its peers, a worker).
    pub fn from_files(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::tls(&files.ca, Some((&files.cert, &files.key)), &files.server_name)
    }

    /// From command-line style options: `ca` turns TLS on; `cert` and `key` come together.
    pub fn from_parts(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        token: Option<&str>,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(TlsError::HalfIdentity),
        };
        let creds = match ca {
            Some(ca) => Self::tls(ca, identity, server_name)?,
            None if identity.is_some() => return Err(TlsError::HalfIdentity),
            None => Self::plaintext(),
        };
        match token {
            Some(t) => creds.with_token(t),
            None => Ok(creds),
        }
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, TlsError> {
        if self.tls.is_none() {
            return Err(TlsError::TokenWithoutTls);
        }
        let value = format!("Bearer {token}").parse().map_err(|_| TlsError::BadToken)?;
        self.token = Some(value);
        Ok(self)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `address` with the scheme these credentials dial: `https://` under TLS whatever was
    /// written, else `http://` when none was.
    pub fn address(&self, address: &str) -> String {
        let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
        match (&self.tls, address.contains("://")) {
            (Some(_), _) => format!("https://{rest}"),
            (None, true) => address.to_owned(),
            (None, false) => format!("http://{address}"),
        }
    }

    /// An endpoint for `address` that speaks these credentials' TLS.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(self.address(address))?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()),
            None => Ok(endpoint),
        }
    }

    /// The interceptor that adds the bearer token (a no-op without one).
    pub fn bearer(&self) -> Bearer {
        Bearer(self.token.clone())
    }
}

/// Adds `authorization: Bearer …` to every call when the credentials carry a token.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_tls_every_address_is_dialled_as_https() {
        let tls = Credentials { tls: Some(ClientTlsConfig::new()), token: None };
        assert_eq!(tls.address("http://10.0.0.1:7450"), "https://10.0.0.1:7450");
        assert_eq!(tls.address("10.0.0.1:7450"), "https://10.0.0.1:7450");
        let plain = Credentials::plaintext();
        assert_eq!(plain.address("10.0.0.1:7450"), "http://10.0.0.1:7450");
        assert_eq!(plain.address("https://kiln:7450"), "https://kiln:7450");
    }

    #[test]
    fn a_token_without_tls_is_refused() {
        assert!(matches!(Credentials::plaintext().with_token("t"), Err(TlsError::TokenWithoutTls)));
    }
}
