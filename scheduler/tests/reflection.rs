//! Server reflection as a new user's tool meets it: a client that speaks only `v1alpha` (Python's
//! `grpcio-reflection`) and one that speaks `v1` (grpcurl) both list Kiln's services.

use std::time::Duration;

use kiln_config::SchedulerOptions;
use tokio_stream::StreamExt;
use tonic_reflection::pb::{v1, v1alpha};

fn options(dir: &std::path::Path) -> SchedulerOptions {
    SchedulerOptions {
        node_id: 1,
        data_dir: dir.join("node-1"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        raft_tick: Duration::from_millis(50),
        ..Default::default()
    }
}

const KILN_SERVICES: [&str; 3] = ["kiln.v1.Scheduler", "kiln.v1.WorkerSession", "kiln.v1.RaftPeer"];

async fn channel(address: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(address).expect("address").connect().await.expect("connect")
}

async fn list_v1alpha(address: String) -> Vec<String> {
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel(address).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1alpha reflection").into_inner();
    let response = responses.next().await.expect("one response").expect("v1alpha answer");
    match response.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

async fn list_v1(address: String) -> Vec<String> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel(address).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1 reflection").into_inner();
    let response = responses.next().await.expect("one response").expect("v1 answer");
    match response.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_kiln_services_to_v1_and_v1alpha_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = kiln_scheduler::start(&options(dir.path())).await.expect("start");
    let address = format!("http://{}", node.grpc_addr());

    let alpha = list_v1alpha(address.clone()).await;
    let current = list_v1(address).await;
    for service in KILN_SERVICES {
        assert!(alpha.iter().any(|s| s == service), "v1alpha lists {alpha:?}, not {service}");
        assert!(current.iter().any(|s| s == service), "v1 lists {current:?}, not {service}");
    }
    assert!(alpha.iter().any(|s| s == "grpc.reflection.v1alpha.ServerReflection"), "{alpha:?}");
    assert!(current.iter().any(|s| s == "grpc.reflection.v1.ServerReflection"), "{current:?}");
    node.shutdown().await;
}
