//! A node whose data dir was damaged while it was down (a record overwritten with
//! garbage, one cut short, the store's file truncated) starts, says what it lost by
//! cache and key, and serves the rest.

use std::sync::Arc;

use bytes::Bytes;
use sitegrid_integration_tests::requests::{get, put};
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_server::store::storage::{SledStorage, Storage, StorageOp};

const KEYS: usize = 50;

/// A node holding `sessions` keys `s0`..`s49`, stopped.
async fn stopped_node_with_sessions() -> NodeProcess {
    let mut node = NodeProcess::start(NodeSpec::new("damaged")).await.unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    for i in 0..KEYS {
        client
            .put(put("sessions", &format!("s{i}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    node.stop().await.unwrap();
    node
}

/// Which of the keys the node serves.
async fn served(node: &NodeProcess) -> Vec<String> {
    let mut client = CacheClient::new(node.channel().await.unwrap());
    let mut found = Vec::new();
    for i in 0..KEYS {
        let key = format!("s{i}");
        let answer = client
            .get(get("sessions", &key))
            .await
            .unwrap()
            .into_inner();
        if answer.found {
            assert_eq!(answer.value, format!("v{i}").into_bytes(), "{key}");
            found.push(key);
        }
    }
    found
}

#[tokio::test]
async fn damaged_records_are_named_by_cache_and_key_and_the_rest_is_served() {
    let mut node = stopped_node_with_sessions().await;
    {
        let storage = SledStorage::open(&node.data_dir().join("store"), 1 << 20).unwrap();
        let mut whole = None;
        storage
            .scan("sessions", &mut |key, record| {
                if key == b"s8" {
                    whole = Some(record.to_vec());
                }
            })
            .unwrap();
        let whole = whole.expect("s8 is stored");
        let cache: Arc<str> = Arc::from("sessions");
        storage
            .write(&[
                StorageOp::Put {
                    cache: cache.clone(),
                    key: Bytes::from_static(b"s7"),
                    record: Bytes::from_static(b"\x01\xff\xff\xff garbage"),
                },
                StorageOp::Put {
                    cache,
                    key: Bytes::from_static(b"s8"),
                    record: Bytes::copy_from_slice(&whole[..whole.len() / 2]),
                },
            ])
            .unwrap();
        storage.sync().unwrap();
    }
    node.restart().await.unwrap();
    let found = served(&node).await;
    assert_eq!(found.len(), KEYS - 2, "{found:?}");
    assert!(!found.contains(&"s7".to_string()) && !found.contains(&"s8".to_string()));
    let log = node.log();
    for key in ["\"s7\"", "\"s8\""] {
        assert!(
            log.lines()
                .any(|line| line.contains("damaged record skipped")
                    && line.contains("cache=sessions")
                    && line.contains(key)),
            "{key}:\n{log}"
        );
    }
    // The clean-stop census counts them as lost too, in the ranges of s7 and s8.
    assert!(
        log.lines()
            .any(|line| line.contains("the store lost records")
                && line.contains("cache=sessions")
                && line.contains(&format!("held={KEYS} read={}", KEYS - 2))),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn a_truncated_store_file_is_reported_by_cache_and_key_range_and_the_node_serves() {
    let mut node = stopped_node_with_sessions().await;
    let db = node.data_dir().join("store").join("db");
    let length = std::fs::metadata(&db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(length / 4).unwrap();
    drop(file);
    node.restart().await.unwrap();
    // sled reads back what it still can (here, nothing) without a word; the node says
    // which cache and ranges came back short, and serves.
    let found = served(&node).await;
    assert!(found.len() < KEYS, "{found:?}");
    let log = node.log();
    let reported = log
        .lines()
        .find(|line| line.contains("the store lost records while the node was down"))
        .unwrap_or_else(|| panic!("no loss reported:\n{log}"));
    assert!(reported.contains("cache=sessions"), "{reported}");
    assert!(reported.contains(&format!("held={KEYS}")), "{reported}");
    assert!(reported.contains("ranges="), "{reported}");
    assert!(!log.contains("panicked"), "{log}");
    let mut client = CacheClient::new(node.channel().await.unwrap());
    client.put(put("sessions", "after", "v")).await.unwrap();
}
