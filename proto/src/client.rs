//! A client for the `Scheduler` service that follows the leader and retries what is safe to retry.
//!
//! Any member's address will do: a follower answers `UNAVAILABLE` with the leader's address in the
//! `kiln-leader` metadata, and the client goes there. Every Kiln client call is idempotent (submit
//! is keyed by request_id, requeue/purge by filter, reads are reads), so transient failures are
//! retried with backoff until `deadline`.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::tls::{Bearer, Credentials};
use crate::v1::scheduler_client::SchedulerClient;

/// The `Scheduler` client a [`Client::call`] hands out: a channel that adds the bearer token.
pub type Api = SchedulerClient<InterceptedService<Channel, Bearer>>;

pub const LEADER_METADATA: &str = "kiln-leader";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid scheduler address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("no scheduler reachable at {addresses} within {waited:?}: {last}")]
    Unreachable { addresses: String, waited: Duration, last: String },
    #[error("{}", .0.message())]
    Status(Status),
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    addresses: Vec<String>,
    current: usize,
    channel: Option<(String, Channel)>,
    credentials: Credentials,
    /// How long one call keeps retrying transient failures.
    pub deadline: Duration,
    /// How long one attempt may take before the client tries another address. A node that is
    /// paused (or cut off) still accepts TCP connections, so without this a call would hang on it.
    pub attempt_timeout: Duration,
}

impl Client {
    /// A plaintext client (a scheduler on loopback, or one running with `insecure = true`).
    pub fn new(addresses: impl IntoIterator<Item = impl Into<String>>) -> Result<Self, ClientError> {
        Self::with_credentials(addresses, Credentials::plaintext())
    }

    /// A client that presents `credentials` (TLS, a certificate, a token) to every scheduler.
    pub fn with_credentials(
        addresses: impl IntoIterator<Item = impl Into<String>>,
        credentials: Credentials,
    ) -> Result<Self, ClientError> {
        let addresses: Vec<String> = addresses.into_iter().map(|a| credentials.address(&a.into())).collect();
        if addresses.is_empty() {
            return Err(ClientError::Address { address: String::new(), reason: "no address given".into() });
        }
        for a in &addresses {
            Endpoint::from_shared(a.clone())
                .map_err(|e| ClientError::Address { address: a.clone(), reason: e.to_string() })?;
        }
        Ok(Self {
            addresses,
            current: 0,
            channel: None,
            credentials,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
        })
    }

    /// What this client presents to the schedulers.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    async fn channel(&mut self) -> Result<Channel, tonic::transport::Error> {
        let target = self.addresses[self.current % self.addresses.len()].clone();
        if let Some((addr, ch)) = &self.channel {
            if *addr == target {
                return Ok(ch.clone());
            }
        }
        let endpoint = self
            .credentials
            .endpoint(&target)?
            .connect_timeout(Duration::from_secs(3))
            .timeout(self.attempt_timeout)
            .tcp_nodelay(true);
        let ch = endpoint.connect().await?;
        self.channel = Some((target, ch.clone()));
        Ok(ch)
    }

    fn follow(&mut self, status: &Status) -> bool {
        let hint =
            status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(|a| self.credentials.address(a));
        match hint {
            Some(leader) => {
                match self.addresses.iter().position(|a| *a == leader) {
                    Some(i) => self.current = i,
                    None => {
                        self.addresses.push(leader);
                        self.current = self.addresses.len() - 1;
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Runs `call` against the leader, following redirects and retrying transient failures.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last: String;
        loop {
            match self.channel().await {
                Ok(ch) => match call(
                    SchedulerClient::with_interceptor(ch, self.credentials.bearer())
                        .max_decoding_message_size(64 << 20),
                )
                .await
                {
                    Ok(resp) => return Ok(resp.into_inner()),
                    // A timed-out attempt has an unknown outcome; retrying is safe because every
                    // call is idempotent, and another node may answer.
                    Err(status) if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) => {
                        last = status.message().to_owned();
                        self.current += 1;
                        self.channel = None;
                    }
                    Err(status) if status.code() == Code::Unavailable => {
                        last = status.message().to_owned();
                        if !self.follow(&status) {
                            self.current += 1;
                            self.channel = None;
                        } else {
                            backoff = Duration::from_millis(10);
                        }
                    }
                    Err(status) => return Err(ClientError::Status(status)),
                },
                Err(e) => {
                    last = format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
                    self.current += 1;
                    self.channel = None;
                }
            }
            if started.elapsed() >= self.deadline {
                return Err(ClientError::Unreachable {
                    addresses: self.addresses.join(", "),
                    waited: started.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
