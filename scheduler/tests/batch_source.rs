//! A batch manifest read from a real S3-compatible server on loopback (`s3s` over `s3s-fs`, SigV4
//! included): the same ranged reads from a byte offset that the leader makes, so a resumed reader
//! continues exactly at the committed cursor, and a missing object is an error that names it.

use hyper_util::rt::{TokioExecutor, TokioIo};
use kiln_ledger::batches::{Cursor, SourceFormat};
use kiln_scheduler::batches::source::{Reader, Source};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

const ACCESS_KEY: &str = "kiln-test-access";
const SECRET_KEY: &str = "kiln-test-secret-key";

/// Serves the folders of `root` as buckets; returns the endpoint.
async fn s3(root: &std::path::Path) -> String {
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    endpoint
}

fn options(endpoint: &str) -> Vec<(String, String)> {
    [
        ("aws_endpoint", endpoint),
        ("aws_access_key_id", ACCESS_KEY),
        ("aws_secret_access_key", SECRET_KEY),
        ("aws_region", "us-east-1"),
        ("aws_allow_http", "true"),
        ("aws_virtual_hosted_style_request", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn line(n: usize) -> String {
    format!(
        r#"{{"request_id":"r{n}","release_id":1,"asset_id":{n},"asset_guid":"m/{n}.wav","derivative_assets":["loudness"]}}"#
    )
}

#[tokio::test]
async fn a_manifest_in_s3_is_read_in_ranges_and_resumed_at_the_cursor() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("catalog/manifests")).expect("bucket");
    let text: String = (0..500).map(|n| line(n) + "\n").collect();
    std::fs::write(root.path().join("catalog/manifests/2026.jsonl"), &text).expect("object");
    let endpoint = s3(root.path()).await;

    let source = Source::open_with("s3://catalog/manifests/2026.jsonl", options(&endpoint)).expect("open");
    assert_eq!(source.size().await.expect("head"), text.len() as u64);
    let mut reader = Reader::open(source, SourceFormat::Jsonl).await.expect("reader");
    let first = reader.next_chunk(Cursor::default(), 200, true).await.expect("chunk");
    assert_eq!((first.jobs.len(), first.to.line, first.end), (200, 200, false));

    // A new leader: a fresh reader from the committed cursor reads the rest, nothing twice.
    let source = Source::open_with("s3://catalog/manifests/2026.jsonl", options(&endpoint)).expect("open");
    let mut resumed = Reader::open(source, SourceFormat::Jsonl).await.expect("reader");
    let rest = resumed.next_chunk(first.to, 1_000, true).await.expect("chunk");
    assert_eq!(rest.jobs.first().map(|(l, j)| (*l, j.asset_id)), Some((201, 200)));
    assert_eq!((rest.jobs.len(), rest.to.offset, rest.end), (300, text.len() as u64, true));

    let missing = Source::open_with("s3://catalog/manifests/none.jsonl", options(&endpoint)).expect("open");
    let err = missing.size().await.expect_err("no such object");
    assert!(err.to_string().contains("s3://catalog/manifests/none.jsonl"), "{err}");
}
