//! Persistence across crashes: a node SIGKILLed right after acknowledging writes to
//! persistent caches comes back with every one of them, and its versions keep going up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sitegrid_integration_tests::requests::{get, put, remove};
use sitegrid_integration_tests::{NodeProcess, NodeSpec, eventually};
use sitegrid_proto::v1::cache_client::CacheClient;

/// Writers keep writing while the node is killed.
const WRITERS: usize = 64;
/// The node is killed once this many writes have been acknowledged.
const KILL_AFTER: usize = 3_000;

#[tokio::test]
async fn a_node_sigkilled_mid_load_keeps_every_acknowledged_write() {
    let mut node = NodeProcess::start(NodeSpec::new("crashy")).await.unwrap();
    let client = CacheClient::new(node.channel().await.unwrap());
    // A removal acknowledged before the load must stay removed.
    let mut first = client.clone();
    first.put(put("sessions", "removed", "v")).await.unwrap();
    first.remove(remove("sessions", "removed")).await.unwrap();

    // Writers write until the node dies; every OK answer is recorded. Whatever got an OK
    // must survive, however close to the kill it came.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let next_key = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let mut client = client.clone();
            let acknowledged = acknowledged.clone();
            let next_key = next_key.clone();
            tokio::spawn(async move {
                loop {
                    let i = next_key.fetch_add(1, Ordering::Relaxed);
                    let cache = if i.is_multiple_of(2) {
                        "sessions"
                    } else {
                        "offlineSessions"
                    };
                    let key = format!("key-{i}");
                    match client.put(put(cache, &key, &format!("value-{i}"))).await {
                        Ok(answer) => acknowledged.lock().unwrap().push((
                            cache,
                            key,
                            answer.into_inner().version,
                        )),
                        Err(_) => return, // the node is gone: this write is indeterminate
                    }
                }
            })
        })
        .collect();
    let acked = acknowledged.clone();
    eventually(
        "enough acknowledged writes",
        Duration::from_secs(60),
        || {
            let count = acked.lock().unwrap().len();
            async move { count >= KILL_AFTER }
        },
    )
    .await
    .unwrap();
    node.kill().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());

    node.restart().await.unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    let mut lost = Vec::new();
    let mut newest = 0;
    for (cache, key, version) in &acknowledged {
        newest = newest.max(*version);
        let got = client.get(get(cache, key)).await.unwrap().into_inner();
        let expected = format!("value-{}", key.trim_start_matches("key-"));
        let intact = got.found
            && got.value == expected.as_bytes()
            && got.metadata.is_some_and(|m| m.version == *version);
        if !intact {
            lost.push(key.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        !client
            .get(get("sessions", "removed"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    let after = client
        .put(put("sessions", "after-restart", "v"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(after > newest, "version went back: {after} <= {newest}");
}

#[tokio::test]
async fn a_node_stopped_with_sigterm_exits_cleanly_and_keeps_its_data() {
    let mut node = NodeProcess::start(NodeSpec::new("graceful")).await.unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    client.put(put("offlineSessions", "k", "v")).await.unwrap();
    let status = node.stop().await.unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    // The storage thread wrote what was queued and stopped before the process ended.
    assert!(
        node.log().contains("storage thread stopped"),
        "{}",
        node.log()
    );
    node.restart().await.unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    assert!(
        client
            .get(get("offlineSessions", "k"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // The clean stop counted the store, and the start found it whole.
    let log = node.log();
    let (_, log) = log.rsplit_once("starting node=").unwrap();
    assert!(!log.contains("no clean-stop census"), "{log}");
    assert!(!log.contains("lost records"), "{log}");
}
