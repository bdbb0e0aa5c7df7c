//! Per-client limits and HTTP/2 settings of a real node: a client over its request rate
//! or its listener count is refused with RESOURCE_EXHAUSTED while other clients are
//! served; oversized header blocks are refused; the stream limit is advertised; a client
//! resetting streams as fast as it opens them is disconnected.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use sitegrid_integration_tests::requests::get;
use sitegrid_integration_tests::rpc::open_pipeline;
use sitegrid_integration_tests::{NodeProcess, NodeSpec, eventually};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::pipeline_request::Operation;
use sitegrid_proto::v1::pipeline_response::Result as Answer;
use sitegrid_proto::v1::{ListenRequest, PingRequest, PipelineRequest};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A client of `node` whose connections come from the loopback address `from`.
fn client_from(node: &NodeProcess, from: [u8; 4]) -> CacheClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", node.grpc_addr()))
        .unwrap()
        .local_address(Some(IpAddr::V4(Ipv4Addr::from(from))))
        .connect_lazy();
    CacheClient::new(channel)
}

#[tokio::test]
async fn a_client_over_its_request_rate_is_refused_while_others_are_served() {
    let node = NodeProcess::start(
        NodeSpec::new("rate").with_toml("[limits]\nmax_requests_per_second_per_client = 20"),
    )
    .await
    .unwrap();
    let mut greedy = client_from(&node, [127, 0, 0, 1]);
    let mut codes = Vec::new();
    for _ in 0..100 {
        let answer = greedy.get(get("work", "k")).await;
        codes.push(answer.err().map_or(Code::Ok, |status| status.code()));
    }
    let served = codes.iter().filter(|&&code| code == Code::Ok).count();
    let refused = codes
        .iter()
        .filter(|&&code| code == Code::ResourceExhausted)
        .count();
    assert_eq!(served + refused, 100, "{codes:?}");
    assert!(
        served >= 20 && refused > 0,
        "{served} served, {refused} refused"
    );

    // Another address has its own budget.
    let mut other = client_from(&node, [127, 0, 0, 2]);
    other.get(get("work", "k")).await.unwrap();

    // Pipelined requests count one by one; the refused ones are answered and the stream
    // goes on.
    let mut piped = client_from(&node, [127, 0, 0, 3]);
    let (requests, mut answers) = open_pipeline(&mut piped).await.unwrap();
    for id in 1..=100 {
        requests
            .send(PipelineRequest {
                id,
                operation: Some(Operation::Get(get("work", "k"))),
            })
            .await
            .unwrap();
    }
    let (mut found, mut limited) = (0, 0);
    for _ in 0..100 {
        match answers.message().await.unwrap().unwrap().result.unwrap() {
            Answer::Get(_) => found += 1,
            Answer::Error(error) if Code::from(error.code) == Code::ResourceExhausted => {
                limited += 1
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        found >= 19 && limited > 0,
        "{found} answered, {limited} refused"
    );
}

#[tokio::test]
async fn a_client_with_its_listeners_open_is_refused_another_until_one_closes() {
    let node = NodeProcess::start(
        NodeSpec::new("listeners").with_toml("[limits]\nmax_listeners_per_client = 2"),
    )
    .await
    .unwrap();
    let mut client = client_from(&node, [127, 0, 0, 1]);
    let listen = || ListenRequest {
        caches: vec!["work".into()],
        ..Default::default()
    };
    let first = client.listen(listen()).await.unwrap();
    let _second = client.listen(listen()).await.unwrap();
    let refused = client.listen(listen()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("max_listeners_per_client"));
    client_from(&node, [127, 0, 0, 2])
        .listen(listen())
        .await
        .expect("another address has its own places");

    drop(first);
    eventually("a place to free up", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.listen(listen()).await.is_ok() }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn oversized_header_blocks_are_refused_and_the_node_serves_on() {
    let node = NodeProcess::start(NodeSpec::new("headers")).await.unwrap();
    let mut client = client_from(&node, [127, 0, 0, 1]);
    let mut request = tonic::Request::new(PingRequest {});
    request
        .metadata_mut()
        .insert("x-padding", "x".repeat(32 << 10).parse().unwrap());
    assert!(client.ping(request).await.is_err());
    client_from(&node, [127, 0, 0, 1])
        .ping(PingRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn the_node_advertises_its_stream_limit() {
    let node = NodeProcess::start(
        NodeSpec::new("streams").with_toml("[limits]\nmax_concurrent_streams = 40"),
    )
    .await
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(node.grpc_addr())
        .await
        .unwrap();
    // Until the server's SETTINGS arrive, the client assumes this many streams.
    const ASSUMED: usize = 7;
    let (_client, mut connection) = h2::client::Builder::new()
        .initial_max_send_streams(ASSUMED)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let advertised = std::future::poll_fn(|cx| {
        let _ = std::pin::Pin::new(&mut connection).poll(cx);
        let limit = connection.max_concurrent_send_streams();
        if limit != ASSUMED {
            return std::task::Poll::Ready(limit);
        }
        std::task::Poll::Pending
    });
    let advertised = tokio::time::timeout_at(deadline, advertised).await.unwrap();
    assert_eq!(advertised, 40);
}

#[tokio::test]
async fn a_client_resetting_every_stream_it_opens_is_disconnected_and_the_node_serves_on() {
    let node = NodeProcess::start(NodeSpec::new("resets")).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(node.grpc_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    // Rapid reset (CVE-2023-44487): open a stream, cancel it at once, again and again.
    let mut client = client;
    let mut opened = 0;
    while opened < 10_000 {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = tonic::codegen::http::Request::post(format!(
            "http://{}/sitegrid.v1.Cache/Ping",
            node.grpc_addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
        // Let the connection task write (and read what the node sends back).
        tokio::task::yield_now().await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the node closes the connection")
        .unwrap();
    // The node says GOAWAY (ENHANCE_YOUR_CALM) and closes; a client still writing may
    // see the closed socket before it reads the GOAWAY.
    let error = ended.expect_err("closed by the node while the client held it open");
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "{error} after {opened} streams"
    );
    assert!(opened < 10_000, "{opened} streams opened and reset");
    client_from(&node, [127, 0, 0, 1])
        .ping(PingRequest {})
        .await
        .unwrap();
}
