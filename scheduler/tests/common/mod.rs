//! What the dashboard tests share: a one-node scheduler, submitting over gRPC, a scripted worker
//! that fails what it is given with a chosen error, and a bare HTTP/1.1 client.

#![allow(dead_code)]

use std::time::Duration;

use kiln_config::SchedulerOptions;
use kiln_proto::v1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub async fn start(dir: &std::path::Path) -> kiln_scheduler::Running {
    let opts = SchedulerOptions {
        node_id: 1,
        data_dir: dir.join("node-1"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        raft_tick: Duration::from_millis(50),
        ..Default::default()
    };
    kiln_scheduler::start(&opts).await.expect("start")
}

pub fn jobs(prefix: &str, n: usize) -> Vec<v1::EncodeJob> {
    jobs_in("", prefix, n)
}

/// Jobs in `queue` ("" is the default queue).
pub fn jobs_in(queue: &str, prefix: &str, n: usize) -> Vec<v1::EncodeJob> {
    (0..n)
        .map(|i| v1::EncodeJob {
            request_id: format!("{prefix}-{i}"),
            release_id: 7,
            asset_id: i as i64,
            asset_guid: format!("m/{prefix}-{i}.wav"),
            derivative_assets: vec!["loudness".into()],
            max_attempts: 1,
            queue: queue.to_owned(),
            ..Default::default()
        })
        .collect()
}

pub async fn submit(node: &kiln_scheduler::Running, jobs: Vec<v1::EncodeJob>) {
    let mut client = kiln_proto::Client::new([format!("http://{}", node.grpc_addr())]).expect("client");
    let req = v1::SubmitRequest { jobs };
    client
        .call(|mut s| {
            let req = req.clone();
            async move { s.submit(req).await }
        })
        .await
        .expect("submit");
}

/// A worker session serving only `queue` that reports every task it gets as permanently failed
/// with `error`; it lives until the returned task is aborted.
pub async fn failing_worker(node: &kiln_scheduler::Running, queue: &str, error: &str) -> tokio::task::JoinHandle<()> {
    let error = error.to_owned();
    replying_session(node, "w-scripted", queue, move |lease| {
        let failed = v1::Failed { lease: Some(lease), error: error.clone(), permanent: true, timings: vec![] };
        v1::worker_message::Msg::Failed(failed)
    })
    .await
}

/// A worker session `id` serving `queue` ("" is the default queue) that answers every task it is
/// given with `reply(lease)`; it lives until the returned task is aborted.
pub async fn replying_session(
    node: &kiln_scheduler::Running,
    id: &str,
    queue: &str,
    reply: impl Fn(v1::LeaseRef) -> v1::worker_message::Msg + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let hello = v1::Hello {
        worker_id: id.into(),
        hostname: "test".into(),
        slots: 1,
        cores: 1,
        speed: 1.0,
        version: "test".into(),
        renderers: vec!["loudness".into()],
        queues: if queue.is_empty() { vec![] } else { vec![queue.to_owned()] },
        ..Default::default()
    };
    session(node, hello, 100, move |lease| Some(reply(lease))).await
}

/// A worker session that says `hello`, asks for `want` tasks and answers each task it is given
/// with `reply(lease)`, or keeps it without a word (`None`); it lives until the returned task is
/// aborted.
pub async fn session(
    node: &kiln_scheduler::Running,
    hello: v1::Hello,
    want: u32,
    reply: impl Fn(v1::LeaseRef) -> Option<v1::worker_message::Msg> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let address = format!("http://{}", node.grpc_addr());
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::WorkerMessage>(64);
    let msg = |m| v1::WorkerMessage { msg: Some(m) };
    tx.send(msg(v1::worker_message::Msg::Hello(hello))).await.expect("hello");
    tx.send(msg(v1::worker_message::Msg::Want(v1::Want { count: want }))).await.expect("want");
    let mut client = v1::worker_session_client::WorkerSessionClient::connect(address).await.expect("connect");
    let mut incoming =
        client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("session").into_inner();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(m)) = incoming.message().await {
            if let Some(v1::scheduler_message::Msg::Assign(assign)) = m.msg {
                for lease in assign.tasks.into_iter().filter_map(|a| a.lease) {
                    if let Some(answer) = reply(lease) {
                        if tx.send(msg(answer)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
}

/// Waits until `f` holds for the node's ledger, for at most 20 s.
pub async fn wait_for_ledger(
    node: &kiln_scheduler::Running,
    what: &str,
    f: impl Fn(&kiln_ledger::Ledger) -> bool + Send + Sync + Clone + 'static,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let f = f.clone();
        if node.handle().read(move |l, _| f(l)).await.expect("read") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A response: status code, headers (lower-cased names) and body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection (the tests need no HTTP client crate).
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned() }
}

pub async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], "").await
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).map(|i| i + marker.len()).expect("a form with a CSRF token");
    page[start..].split('"').next().unwrap_or_default().to_owned()
}
