//! Who may call what on the gRPC port.
//!
//! Under TLS every call names its caller: a certificate signed by the cluster CA (its SAN URI
//! says node, worker, submit or admin) or a bearer token whose SHA-256 is in the config. A tower
//! layer in front of every service resolves that [`Caller`], checks the method's roles from one
//! table ([`allowed`]), refuses with UNAUTHENTICATED or PERMISSION_DENIED (naming the role that
//! was missing), and leaves the caller in the request's extensions, where the session service
//! binds a worker to its id and the peer service binds Raft messages to their sender.
//!
//! Without TLS (loopback, or `insecure = true`) every caller is [`Caller::Open`] and may do
//! everything, as before roles existed.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use kiln_config::{CertIdentity, Role, TokenOptions};
use sha2::{Digest, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Who is calling, as the auth layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext server: no identities, every call allowed.
    Open,
    /// A client certificate signed by the cluster CA.
    Cert(CertIdentity),
    /// A bearer token from the config.
    Token { name: String, role: Role },
}

impl Caller {
    fn role(&self) -> Option<Role> {
        match self {
            Caller::Open => None,
            Caller::Cert(id) => Some(id.role()),
            Caller::Token { role, .. } => Some(*role),
        }
    }

    /// The worker id this caller may open a session as; `None` for an open server (any id).
    pub fn bound_worker(&self) -> Option<&str> {
        match self {
            Caller::Cert(CertIdentity::Worker(id)) => Some(id),
            Caller::Token { name, role: Role::Worker } => Some(name),
            _ => None,
        }
    }

    /// The Raft node this caller is; `None` for an open server (any sender).
    pub fn bound_node(&self) -> Option<u64> {
        match self {
            Caller::Cert(CertIdentity::Node(id)) => Some(*id),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Caller::Open => "anyone".to_owned(),
            Caller::Cert(CertIdentity::Node(id)) => format!("node {id}'s certificate (role peer)"),
            Caller::Cert(CertIdentity::Worker(id)) => format!("worker {id}'s certificate (role worker)"),
            Caller::Cert(CertIdentity::Client { role, name }) => format!("{name}'s certificate (role {role})"),
            Caller::Token { name, role } => format!("token {name:?} (role {role})"),
        }
    }
}

/// The caller a service saw, from the request's extensions. Requests that did not pass the auth
/// layer (in-process tests) are [`Caller::Open`].
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Open)
}

const READ: &[Role] = &[Role::Submit, Role::Admin];
const ADMIN: &[Role] = &[Role::Admin];
const ANY: &[Role] = &[Role::Peer, Role::Worker, Role::Submit, Role::Admin];

/// The roles that may call `path` (`/package.Service/Method`). A method missing here is refused
/// to everyone: a new RPC must be given its roles on purpose.
pub fn allowed(path: &str) -> &'static [Role] {
    match path.strip_prefix("/kiln.v1.") {
        Some("Scheduler/Submit" | "Scheduler/GetTask" | "Scheduler/ListTasks" | "Scheduler/Status") => READ,
        Some("Scheduler/ListWorkers" | "Scheduler/Cluster" | "Scheduler/ListFeatures") => READ,
        Some("Scheduler/SubmitBatch" | "Scheduler/GetBatch" | "Scheduler/ListBatches") => READ,
        Some("Scheduler/ControlBatch" | "Scheduler/RequeueBatch") => ADMIN,
        // The upgrade survey: every member asks every other what it supports.
        Some("Scheduler/Support") => &[Role::Peer, Role::Submit, Role::Admin],
        Some("Scheduler/Cancel" | "Scheduler/RequeueDeadLetters" | "Scheduler/PurgeDeadLetters") => ADMIN,
        Some("Scheduler/DrainWorker" | "Scheduler/ChangeMembership" | "Scheduler/EnableFeature") => ADMIN,
        Some("WorkerSession/Session") => &[Role::Worker],
        Some("RaftPeer/Step" | "RaftPeer/StepChunked") => &[Role::Peer],
        _ if path.starts_with("/grpc.reflection.") => ANY,
        _ => &[],
    }
}

/// Resolves callers and checks them against [`allowed`].
#[derive(Debug, Default)]
pub struct Authorizer {
    /// Off for a plaintext server: everyone is [`Caller::Open`].
    tls: bool,
    /// Hex SHA-256 of a token → who holds it.
    tokens: HashMap<String, (String, Role)>,
    /// Identities already read, by certificate: every call of a connection shows the same one,
    /// and parsing X.509 per call would cost more than the call. Emptied when it reaches
    /// [`MAX_KNOWN_CERTS`] (a fleet has a few hundred certificates).
    known: std::sync::Mutex<HashMap<Vec<u8>, Option<CertIdentity>>>,
}

const MAX_KNOWN_CERTS: usize = 4096;

impl Authorizer {
    pub fn open() -> Self {
        Self::default()
    }

    pub fn tls(tokens: &[TokenOptions]) -> Self {
        let tokens = tokens.iter().map(|t| (t.sha256.to_ascii_lowercase(), (t.name.clone(), t.role))).collect();
        Self { tls: true, tokens, known: Default::default() }
    }

    fn identity_of(&self, leaf: &[u8]) -> Option<CertIdentity> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(identity) = known.get(leaf) {
            return identity.clone();
        }
        let identity = identity_of(leaf);
        if known.len() >= MAX_KNOWN_CERTS {
            known.clear();
        }
        known.insert(leaf.to_vec(), identity.clone());
        identity
    }

    /// The caller of one request, or why it is refused.
    /// `leaf`: the DER of the client certificate the TLS handshake verified, if one was shown.
    pub fn admit(&self, path: &str, headers: &http::HeaderMap, leaf: Option<&[u8]>) -> Result<Caller, Status> {
        if !self.tls {
            return Ok(Caller::Open);
        }
        let caller = match leaf {
            Some(leaf) => Caller::Cert(self.identity_of(leaf).ok_or_else(|| {
                Status::permission_denied(
                    "the client certificate carries no Kiln identity (a SAN URI spiffe://kiln/<role>/<name>, \
                     as `kiln tls init` writes)",
                )
            })?),
            None => self.token_caller(headers)?,
        };
        let roles = allowed(path);
        match caller.role() {
            Some(role) if roles.contains(&role) => Ok(caller),
            _ => Err(Status::permission_denied(format!(
                "{path} needs the {} role; the caller is {}",
                roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or "),
                caller.describe()
            ))),
        }
    }

    fn token_caller(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this scheduler requires a client certificate (--cert/--key, KILN_CERT/KILN_KEY) or a bearer \
                 token (--token, KILN_TOKEN)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))?;
        match self.tokens.get(&token_hash(token)) {
            Some((name, role)) => Ok(Caller::Token { name: name.clone(), role: *role }),
            None => Err(Status::unauthenticated("unknown bearer token")),
        }
    }
}

/// Hex SHA-256 of a bearer token: what the config stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The Kiln identity in a DER certificate's SAN URIs. The TLS handshake already verified the
/// chain to the cluster CA; this only reads what the certificate says.
fn identity_of(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => CertIdentity::from_uri(uri),
        _ => None,
    })
}

/// The tower layer that puts an [`Authorizer`] in front of every gRPC service.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Authorizer>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authed<S>;

    fn layer(&self, inner: S) -> Authed<S> {
        Authed { inner, auth: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Authed<S> {
    inner: S,
    auth: Arc<Authorizer>,
}

impl<S, B> tower::Service<http::Request<B>> for Authed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<futures::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs());
        let leaf = certs.as_ref().and_then(|chain| chain.first()).map(|c| c.as_ref());
        match self.auth.admit(request.uri().path(), request.headers(), leaf) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Right(self.inner.call(request))
            }
            Err(status) => futures::future::Either::Left(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        h
    }

    fn authorizer() -> Authorizer {
        Authorizer::tls(&[
            TokenOptions { name: "ci".into(), role: Role::Submit, sha256: token_hash("s3cret") },
            TokenOptions { name: "w9".into(), role: Role::Worker, sha256: token_hash("w9-token") },
        ])
    }

    #[test]
    fn every_rpc_of_the_protocol_has_its_roles() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(kiln_proto::FILE_DESCRIPTOR_SET).expect("descriptor");
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(!allowed(&path).is_empty(), "{path} has no roles in auth::allowed");
                    methods += 1;
                }
            }
        }
        assert!(methods >= 17, "only {methods} methods found");
        assert!(allowed("/kiln.v1.Scheduler/NoSuchMethod").is_empty());
    }

    #[test]
    fn a_submit_token_reads_and_submits_but_cannot_purge_or_change_membership() {
        let auth = authorizer();
        let h = with_token("s3cret");
        assert!(auth.admit("/kiln.v1.Scheduler/Submit", &h, None).is_ok());
        assert!(auth.admit("/kiln.v1.Scheduler/ListTasks", &h, None).is_ok());
        for admin_only in ["PurgeDeadLetters", "ChangeMembership", "Cancel", "DrainWorker"] {
            let err = auth.admit(&format!("/kiln.v1.Scheduler/{admin_only}"), &h, None).expect_err(admin_only);
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert!(err.message().contains("needs the admin role"), "{}", err.message());
        }
    }

    #[test]
    fn no_identity_or_an_unknown_token_is_unauthenticated_under_tls() {
        let auth = authorizer();
        let none = auth.admit("/kiln.v1.Scheduler/Status", &http::HeaderMap::new(), None).expect_err("none");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let wrong = auth.admit("/kiln.v1.Scheduler/Status", &with_token("guess"), None).expect_err("guess");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_worker_token_is_bound_to_its_worker_and_cannot_step_raft() {
        let auth = authorizer();
        let caller = auth.admit("/kiln.v1.WorkerSession/Session", &with_token("w9-token"), None).expect("session");
        assert_eq!(caller.bound_worker(), Some("w9"));
        let err = auth.admit("/kiln.v1.RaftPeer/Step", &with_token("w9-token"), None).expect_err("step");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_plaintext_server_lets_everyone_do_everything() {
        let auth = Authorizer::open();
        assert!(matches!(auth.admit("/kiln.v1.RaftPeer/Step", &http::HeaderMap::new(), None), Ok(Caller::Open)));
    }
}
