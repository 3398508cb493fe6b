//! The HTTP port of every Kiln process (`/metrics`, `/healthz`, the dashboard), served with the
//! limits a port on a shared network needs and `axum::serve` does not set:
//!
//! - a deadline for the request head, so a client that sends half a header and waits (slowloris)
//!   is dropped instead of holding a connection forever;
//! - a cap on open connections; past it, new ones wait in the kernel's backlog;
//! - a bounded graceful shutdown: open streams (the dashboard's Server-Sent Events never end by
//!   themselves) get a few seconds, then are closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one HTTP port allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection that has not sent a whole request head within this is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long open connections get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin, and go on serving.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::debug!(open = connections.len(), "HTTP connections still open at shutdown are closed");
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn server(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    #[tokio::test]
    async fn half_a_header_is_dropped_after_the_deadline() {
        let limits = Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() };
        let (addr, _stop) = server(limits).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
        let mut buf = Vec::new();
        // The server closes it (perhaps after a 408); without the deadline this read never ends.
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a connection with half a header was still open after 10 s");

        let mut ok = tokio::net::TcpStream::connect(addr).await.expect("connect");
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut reply = String::new();
        ok.read_to_string(&mut reply).await.expect("read");
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"), "{reply}");
    }

    #[tokio::test]
    async fn a_stream_that_never_ends_is_closed_after_the_shutdown_grace() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let endless = || async { axum::body::Body::from_stream(never_ending()) };
        let app = axum::Router::new().route("/", axum::routing::get(endless));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits { shutdown_grace: Duration::from_millis(200), ..Limits::default() };
        let server = tokio::spawn(serve(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.expect("the response starts");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after the grace")
            .expect("join");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the endless stream was still open after shutdown");
    }

    /// A body stream that never yields and never ends (like a quiet Server-Sent Events stream).
    fn never_ending() -> impl tokio_stream::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static {
        tokio_stream::pending()
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let limits = Limits { max_connections: 1, ..Limits::default() };
        let (addr, _stop) = server(limits).await;
        let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Let the server take the first connection (and its one permit) before the second.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
        assert!(early.is_err(), "the second connection was served while the first held the only permit");
        drop(first);
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), second.read_to_string(&mut reply))
            .await
            .expect("served once the first closed")
            .expect("read");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}
