//! A wide-area link between two processes on one machine, where the kernel has no netem: a TCP
//! proxy that holds every byte for half the round trip in each direction and caps the bandwidth.
//!
//! ```text
//!  client ──▶ WanProxy::addr ──(rtt/2, ≤ bandwidth)──▶ target
//!         ◀──                ◀──(rtt/2, ≤ bandwidth)──
//! ```
//!
//! Each direction of each connection is a reader that stamps what it reads with the time it may
//! arrive and a writer that waits for that time, then for the link to be free (the bytes'
//! transmission time at the capped rate), then writes. A bounded queue between them keeps the
//! reader from running ahead without limit, so TCP's flow control still reaches the sender.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running proxy; it stops (and drops its connections) when dropped.
pub struct WanProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// What the link does to traffic.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub rtt: Duration,
    /// Bytes per second in each direction; `None` is unlimited.
    pub bytes_per_sec: Option<u64>,
}

impl WanProxy {
    /// Listens on a free loopback port and forwards every connection to `target` over `link`.
    pub async fn start(target: SocketAddr, link: Link) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(carry(client_read, server_write, link), carry(server_read, client_write, link));
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One direction of one connection, until either side closes.
async fn carry(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, link: Link) {
    let one_way = link.rtt / 2;
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now() + one_way, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        let mut link_free = Instant::now();
        while let Some((arrives, bytes)) = rx.recv().await {
            let done = match link.bytes_per_sec {
                Some(rate) if rate > 0 => {
                    let start = arrives.max(link_free);
                    start + Duration::from_secs_f64(bytes.len() as f64 / rate as f64)
                }
                _ => arrives,
            };
            link_free = done;
            tokio::time::sleep_until(done).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_round_trip_takes_the_rtt_and_bulk_data_the_bandwidth() {
        let target = echo_server().await;
        let link = Link { rtt: Duration::from_millis(80), bytes_per_sec: Some(1_000_000) };
        let proxy = WanProxy::start(target, link).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let started = Instant::now();
        s.write_all(b"ping").await.expect("write");
        let mut reply = [0u8; 4];
        s.read_exact(&mut reply).await.expect("read");
        let rtt = started.elapsed();
        assert_eq!(&reply, b"ping");
        assert!(rtt >= Duration::from_millis(80), "a round trip through an 80 ms link took {rtt:?}");

        // 200 kB each way at 1 MB/s: at least 0.2 s beyond the round trip.
        let payload = vec![7u8; 200_000];
        let started = Instant::now();
        let (mut r, mut w) = s.into_split();
        let sending = tokio::spawn(async move { w.write_all(&payload).await });
        let mut back = vec![0u8; 200_000];
        r.read_exact(&mut back).await.expect("read back");
        sending.await.expect("join").expect("write");
        assert!(started.elapsed() >= Duration::from_millis(280), "{:?}", started.elapsed());
        assert!(back.iter().all(|b| *b == 7));
    }
}
