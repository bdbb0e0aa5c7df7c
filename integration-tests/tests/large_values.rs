//! Values near the size limit: the client library reads back what the server accepts,
//! and an `Entries` stream of large values comes in messages every client accepts.

use bytes::Bytes;
use prost::Message;
use sitegrid_client::{Client, WriteOptions};
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::EntriesRequest;
use sitegrid_proto::v1::cache_client::CacheClient;

/// Over tonic's default 4 MiB message limit, under the server's 8 MiB value limit.
const LARGE: usize = 6 << 20;

#[tokio::test]
async fn a_value_over_four_mib_reads_back_through_the_client_on_both_paths() {
    let node = NodeProcess::start(NodeSpec::new("large")).await.unwrap();
    for pipeline in [true, false] {
        let client = Client::builder([node.endpoint()])
            .pipeline(pipeline)
            .connect()
            .await
            .unwrap();
        let work = client.cache("work");
        let value = Bytes::from(vec![u8::from(pipeline); LARGE]);
        let written = work
            .put("big", value.clone(), WriteOptions::new())
            .await
            .unwrap();
        let read = work.get("big").await.unwrap().expect("present");
        assert_eq!(read.metadata.version, written.version);
        assert!(
            read.value == value,
            "pipeline {pipeline}: the value changed"
        );
    }
}

#[tokio::test]
async fn an_entries_stream_of_large_values_comes_in_messages_of_a_mebibyte() {
    let node = NodeProcess::start(NodeSpec::new("large-entries"))
        .await
        .unwrap();
    let client = Client::connect([node.endpoint()]).await.unwrap();
    let work = client.cache("work");
    for i in 0..12 {
        let value = Bytes::from(vec![i as u8; 700 << 10]);
        work.put(format!("k{i}"), value, WriteOptions::new())
            .await
            .unwrap();
    }
    // A client with tonic's default 4 MiB limit asks for everything in one batch.
    let mut raw = CacheClient::new(node.channel().await.unwrap());
    let mut stream = raw
        .entries(EntriesRequest {
            cache: "work".into(),
            batch_size: 1000,
            with_values: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut entries, mut messages) = (0, 0);
    while let Some(batch) = stream.message().await.unwrap() {
        assert!(
            batch.encoded_len() <= (1 << 20) + (800 << 10),
            "{} bytes",
            batch.encoded_len()
        );
        entries += batch.entries.len();
        messages += 1;
    }
    assert_eq!(entries, 12);
    assert!(messages >= 8, "{messages} messages for 8.4 MiB of values");
}
