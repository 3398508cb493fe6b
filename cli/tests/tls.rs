//! A cluster that runs mutual TLS, tried the way an attacker on its network and a careless
//! operator would: plaintext, a certificate from another CA, a worker's certificate used as
//! another worker or as a Raft peer, the submit role reaching for admin calls, a bearer token, and
//! a scheduler started on a public address without TLS. Then the cluster does its job under TLS:
//! it replicates, loses its leader and finishes every task, nothing lost.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kiln_proto::v1;
use kiln_proto::Credentials;
use kiln_testkit::{run, wait_for, write_sine_wav, TestCluster, FAST_FAILOVER};
use tokio_stream::StreamExt as _;

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

fn settings() -> Vec<(&'static str, &'static str)> {
    [FAST_FAILOVER, &[("snapshot_every", "50")]].concat()
}

/// `kiln` against the cluster, presenting the certificate `who` (`admin`, `worker-1`, …).
fn kiln_as(cluster: &TestCluster, who: &str, args: &[&str]) -> Output {
    let mut argv = vec!["--scheduler".to_owned(), cluster.scheduler_arg()];
    argv.extend(cluster.tls_args(who));
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run(&kiln(), &argv)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_until_serving(cluster: &TestCluster) {
    wait_for("the TLS cluster to answer an admin", Duration::from_secs(30), || {
        kiln_as(cluster, "admin", &["status", "-o", "json"]).status.success()
    });
}

fn credentials(tls: &Path, ca: &Path, who: &str) -> Credentials {
    let (cert, key) = (tls.join(format!("{who}.pem")), tls.join(format!("{who}-key.pem")));
    Credentials::tls(ca, Some((&cert, &key)), kiln_config::SCHEDULER_SERVER_NAME).expect("credentials")
}

/// One `Status` call with `credentials`, given a few seconds.
async fn status_with(address: &str, credentials: Credentials) -> Result<v1::StatusResponse, kiln_proto::ClientError> {
    let mut client = kiln_proto::Client::with_credentials([address], credentials)?;
    client.deadline = Duration::from_secs(3);
    client.attempt_timeout = Duration::from_secs(2);
    client.call(|mut s| async move { s.status(v1::StatusRequest {}).await }).await
}

/// A raft message from node `from` to node `to`, protobuf-encoded by hand (eraftpb `Message`:
/// `to` is field 2, `from` field 3), enough for the peer service to read who claims to send it.
fn raft_message(from: u8, to: u8) -> Vec<u8> {
    vec![0x10, to, 0x18, from]
}

async fn step_as(address: &str, credentials: &Credentials, from: u64, message: Vec<u8>) -> tonic::Status {
    let channel = credentials.endpoint(address).expect("endpoint").connect().await.expect("connect");
    let mut peer = v1::raft_peer_client::RaftPeerClient::new(channel);
    match peer.step(v1::RaftBatch { from, messages: vec![message] }).await {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(status) => status,
    }
}

#[test]
fn a_tls_cluster_refuses_strangers_wrong_roles_and_impersonation() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let token = run(&kiln(), &["tls", "token", "--role", "submit", "--name", "ci-bot", "-o", "json"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let token: serde_json::Value = serde_json::from_slice(&token.stdout).expect("token json");
    let tokens = format!(
        "[{{ name = \"ci-bot\", role = \"submit\", sha256 = \"{}\" }}]",
        token["sha256"].as_str().expect("sha256")
    );
    let mut settings = settings();
    settings.push(("tokens", &tokens));
    let cluster = TestCluster::start_tls(&kiln(), 3, &settings);
    let tls = cluster.tls.clone().expect("tls dir");
    let ca = tls.join("ca.pem");
    wait_until_serving(&cluster);
    let address = cluster.address(1);

    // Plaintext to a TLS port gets nowhere.
    let plain = rt.block_on(status_with(&address.replace("https://", "http://"), Credentials::plaintext()));
    assert!(plain.is_err(), "a plaintext client was answered: {plain:?}");

    // No certificate and no token: refused, and told what is missing.
    let anonymous = Credentials::tls(&ca, None, kiln_config::SCHEDULER_SERVER_NAME).expect("anonymous");
    let err = rt.block_on(status_with(&address, anonymous)).expect_err("anonymous");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    // A certificate from another CA fails the handshake, even an admin's.
    let other = cluster.dir.path().join("other-ca");
    let out = run(&kiln(), &["tls", "init", &other.display().to_string(), "--nodes", "1", "--workers", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let foreign = credentials(&other, &ca, "admin");
    // (TLS 1.3 lets the client finish first; the scheduler's refusal ends the connection under
    // the first call, which fails as a transport error rather than with a gRPC status.)
    let err = rt.block_on(status_with(&address, foreign)).expect_err("a foreign CA's certificate was accepted");
    assert!(
        err.code().is_none() || err.to_string().contains("transport error"),
        "expected a refused handshake, got a gRPC answer: {err}"
    );

    // The submit role submits and reads, but cannot purge dead letters or change membership.
    let out = run(&kiln(), &["tls", "cert", "--dir", &tls.display().to_string(), "--submit", "ci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted =
        kiln_as(&cluster, "ci", &["submit", "--asset-guid", "a.wav", "--release-id", "1", "--asset-id", "1"]);
    assert!(submitted.status.success(), "submit role could not submit: {}", stderr(&submitted));
    assert!(kiln_as(&cluster, "ci", &["tasks"]).status.success());
    for denied in [vec!["dlq", "purge", "--all"], vec!["cluster", "remove", "3"], vec!["cancel", "1"]] {
        let out = kiln_as(&cluster, "ci", &denied);
        assert!(!out.status.success(), "submit role ran {denied:?}: {}", stdout(&out));
        assert!(stderr(&out).contains("needs the admin role"), "{denied:?}: {}", stderr(&out));
    }
    let members = kiln_as(&cluster, "admin", &["cluster", "-o", "json"]);
    let members: serde_json::Value = serde_json::from_slice(&members.stdout).expect("cluster json");
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3), "membership changed: {members}");

    // The bearer token acts with its role: reads yes, purge no.
    let token_args = |args: &[&str]| {
        let mut argv = vec!["--scheduler", &address, "--ca", ca.to_str().expect("utf-8"), "--token"];
        argv.push(token["token"].as_str().expect("token"));
        argv.extend(args);
        run(&kiln(), &argv)
    };
    let out = token_args(&["status"]);
    assert!(out.status.success(), "the token could not read: {}", stderr(&out));
    let out = token_args(&["dlq", "purge", "--all"]);
    assert!(stderr(&out).contains("needs the admin role"), "{}", stderr(&out));

    // worker-1's certificate cannot open a session as worker-2.
    let worker_1 = credentials(&tls, &ca, "worker-1");
    let refused = rt.block_on(async {
        let channel = worker_1.endpoint(&address).expect("endpoint").connect().await.expect("connect");
        let mut sessions = v1::worker_session_client::WorkerSessionClient::new(channel);
        let hello = v1::WorkerMessage {
            msg: Some(v1::worker_message::Msg::Hello(v1::Hello {
                worker_id: "worker-2".into(),
                slots: 1,
                queues: vec!["default".into()],
                ..Default::default()
            })),
        };
        sessions.session(tokio_stream::iter([hello]).chain(tokio_stream::pending())).await.err()
    });
    let refused = refused.expect("worker-1's certificate opened a session as worker-2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("worker-1"), "{}", refused.message());

    // A worker's certificate cannot speak Raft; a node's cannot speak for another node.
    let status = rt.block_on(step_as(&address, &worker_1, 2, raft_message(2, 1)));
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("needs the peer role"), "{}", status.message());
    let node_3 = credentials(&tls, &ca, "node-3");
    let status = rt.block_on(step_as(&address, &node_3, 2, raft_message(2, 1)));
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("from node 2"), "{}", status.message());

    // After all of that the cluster is healthy and still answers its admin.
    assert!(kiln_as(&cluster, "admin", &["status"]).status.success());
}

#[test]
fn a_tls_cluster_replicates_fails_over_and_loses_nothing() {
    let cluster_dir = tempfile::tempdir().expect("tempdir");
    let masters = cluster_dir.path().join("masters");
    std::fs::create_dir_all(&masters).expect("mkdir");
    for i in 0..12 {
        write_sine_wav(&masters.join(format!("m-{i}.wav")), 8_000, 1.0, 220.0 + i as f32 * 9.0, 0.5).expect("wav");
    }
    let mut cluster = TestCluster::start_tls(&kiln(), 3, &settings());
    wait_until_serving(&cluster);
    let derivatives = cluster_dir.path().join("derivatives");
    cluster.start_worker("worker-1", 2, &masters, &derivatives);
    cluster.start_worker("worker-2", 2, &masters, &derivatives);

    let submit = |cluster: &TestCluster, range: std::ops::Range<usize>| {
        for i in range {
            let guid = format!("m-{}.wav", i % 12);
            let (release, asset) = ("3".to_owned(), i.to_string());
            let out = kiln_as(
                cluster,
                "admin",
                &[
                    "submit",
                    "--asset-guid",
                    &guid,
                    "--release-id",
                    &release,
                    "--asset-id",
                    &asset,
                    "--renderers",
                    "loudness",
                    "--request-id",
                    &format!("tls-{i}"),
                ],
            );
            assert!(out.status.success(), "submit {i}: {}\n{}", stderr(&out), cluster.logs());
        }
    };
    submit(&cluster, 0..12);

    let leader = {
        let out = kiln_as(&cluster, "admin", &["cluster", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cluster json");
        v["leader_id"].as_u64().expect("leader_id in `kiln cluster -o json`")
    };
    cluster.node(leader).kill9();
    submit(&cluster, 12..24);

    let finished = |cluster: &TestCluster| {
        let out = kiln_as(cluster, "admin", &["status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["total"]["succeeded"].as_u64().unwrap_or(0)
    };
    kiln_testkit::wait_for_or_explain(
        "24 tasks rendered over TLS after losing the leader",
        Duration::from_secs(90),
        || finished(&cluster) == 24,
        || cluster.logs(),
    );
    cluster.node(leader).start();
    let audit = kiln_as(&cluster, "admin", &["audit", "--settle", "30s", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("audit json");
    assert_eq!(report["clean"], true, "audit: {report}\n{}", cluster.logs());
    assert_eq!(report["replicas_agree"], true, "audit: {report}\n{}", cluster.logs());
}

#[test]
fn a_scheduler_on_a_public_address_without_tls_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kiln.toml");
    let port = kiln_testkit::free_port();
    std::fs::write(
        &config,
        format!(
            "[scheduler]\nlisten = \"0.0.0.0:{port}\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("config");
    let out = run(&kiln(), &["scheduler", "--config", &config.display().to_string()]);
    assert!(!out.status.success(), "a plaintext scheduler started on 0.0.0.0");
    let err = stderr(&out);
    assert!(err.contains("plaintext") && err.contains("insecure = true") && err.contains("kiln tls init"), "{err}");
}
