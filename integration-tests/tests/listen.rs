//! `Cache.Listen` against a real node, through the client generated from `proto/`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sitegrid_integration_tests::requests::{put, remove};
use sitegrid_integration_tests::{NodeProcess, NodeSpec, http};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;
use tonic::Code;
use tonic::Streaming;
use tonic::transport::Channel;

async fn node(toml: &str) -> (NodeProcess, CacheClient<Channel>) {
    let process = NodeProcess::start(NodeSpec::new("listen").with_toml(toml))
        .await
        .unwrap();
    let client = CacheClient::new(process.channel().await.unwrap());
    (process, client)
}

fn listen(caches: &[&str]) -> ListenRequest {
    ListenRequest {
        caches: caches.iter().map(|c| c.to_string()).collect(),
        with_values: true,
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<CacheEvent>) -> CacheEvent {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an event in time")
        .expect("no stream error")
        .expect("stream still open")
}

fn kind(event: &CacheEvent) -> EventKind {
    EventKind::try_from(event.kind).unwrap()
}

#[tokio::test]
async fn events_carry_the_value_even_when_the_entry_is_gone_right_after() {
    let (_node, mut client) = node("").await;
    let mut stream = client.listen(listen(&["work"])).await.unwrap().into_inner();
    client.put(put("work", "k", "the value")).await.unwrap();
    client.remove(remove("work", "k")).await.unwrap();
    let created = next(&mut stream).await;
    assert_eq!(kind(&created), EventKind::Created);
    assert_eq!(&created.value[..], b"the value");
    assert_eq!(created.metadata.as_ref().unwrap().version, created.version);
    assert_eq!(created.origin_site, "site1");
    let removed = next(&mut stream).await;
    assert_eq!(kind(&removed), EventKind::Removed);
    assert_eq!(
        &removed.value[..],
        b"the value",
        "a removal carries the last value"
    );
    assert!(removed.version > created.version);
}

#[tokio::test]
async fn keys_only_events_carry_no_value() {
    let (_node, mut client) = node("").await;
    let request = ListenRequest {
        with_values: false,
        ..listen(&["work"])
    };
    let mut stream = client.listen(request).await.unwrap().into_inner();
    client.put(put("work", "k", "secret")).await.unwrap();
    let event = next(&mut stream).await;
    assert_eq!(&event.key[..], b"k");
    assert!(event.value.is_empty() && event.metadata.is_none());
}

#[tokio::test]
async fn an_expired_entry_is_announced_within_one_reaper_interval() {
    let (_node, mut client) = node("[store]\nreaper_interval = \"200ms\"\n").await;
    let mut stream = client.listen(listen(&["work"])).await.unwrap().into_inner();
    let lifespan = Duration::from_millis(300);
    client
        .put(PutRequest {
            lifespan_ms: lifespan.as_millis() as i64,
            ..put("work", "short", "bye")
        })
        .await
        .unwrap();
    let written = Instant::now();
    assert_eq!(kind(&next(&mut stream).await), EventKind::Created);
    let expired = next(&mut stream).await;
    let after_deadline = written.elapsed().saturating_sub(lifespan);
    assert_eq!(kind(&expired), EventKind::Expired);
    assert_eq!(&expired.value[..], b"bye");
    // One reaper interval, plus slack for a loaded test machine.
    assert!(
        after_deadline < Duration::from_millis(200 + 800),
        "{after_deadline:?}"
    );
}

#[tokio::test]
async fn a_resumed_listener_gets_every_changed_key_at_its_latest_version_and_the_removals() {
    let (_node, mut client) = node("").await;
    for i in 0..300 {
        client
            .put(put("sessions", &format!("untouched-{i}"), "v"))
            .await
            .unwrap();
    }
    let mut stream = client
        .listen(listen(&["sessions"]))
        .await
        .unwrap()
        .into_inner();
    client.put(put("sessions", "seen", "v")).await.unwrap();
    let last_seen = next(&mut stream).await.version;
    drop(stream); // the listener goes away

    let mut latest: HashMap<String, (EventKind, u64)> = HashMap::new();
    for i in 0..1_000 {
        let key = format!("s{}", i % 400);
        let version = if i % 10 == 9 {
            let removed = client
                .remove(remove("sessions", &key))
                .await
                .unwrap()
                .into_inner();
            if !removed.removed {
                continue;
            }
            (EventKind::Removed, removed.version)
        } else {
            let written = client
                .put(put("sessions", &key, &format!("v{i}")))
                .await
                .unwrap();
            (EventKind::Modified, written.into_inner().version)
        };
        latest.insert(key, version);
    }

    let request = ListenRequest {
        resume_from_version: last_seen,
        ..listen(&["sessions"])
    };
    let mut resumed = client.listen(request).await.unwrap().into_inner();
    let mut got = HashMap::new();
    while got.len() < latest.len() {
        let event = next(&mut resumed).await;
        let key = String::from_utf8(event.key.to_vec()).unwrap();
        assert!(!key.starts_with("untouched"), "no full-state replay");
        got.insert(key, (kind(&event), event.version));
    }
    assert_eq!(got, latest);
}

#[tokio::test]
async fn a_listener_that_falls_behind_gets_resync_required_then_resumes_without_loss() {
    let (node, mut client) = node("[events]\nlistener_buffer = 64\n").await;
    let dropped = || async {
        http::metric(node.http_addr(), "sitegrid_listener_dropped_total")
            .await
            .unwrap()
    };
    assert_eq!(dropped().await, 0.0);
    let mut stream = client.listen(listen(&["work"])).await.unwrap().into_inner();
    // The listener reads nothing meanwhile: large values fill its stream's flow-control
    // window and socket buffers, then the 64-event ring overflows.
    let value = "x".repeat(16 * 1024);
    let mut written = HashSet::new();
    for i in 0..2_000 {
        let version = client
            .put(put("work", &format!("k{i}"), &value))
            .await
            .unwrap();
        written.insert(version.into_inner().version);
    }
    let mut received = HashSet::new();
    let resync = loop {
        let event = next(&mut stream).await;
        if kind(&event) == EventKind::ResyncRequired {
            break event.version;
        }
        received.insert(event.version);
    };
    assert!(resync > 0);
    assert!(
        stream.message().await.unwrap().is_none(),
        "the stream ends after RESYNC_REQUIRED"
    );
    assert!(received.len() < written.len(), "it really fell behind");
    assert_eq!(dropped().await, 1.0, "the dropped subscriber is counted");

    let request = ListenRequest {
        resume_from_version: resync,
        ..listen(&["work"])
    };
    let mut resumed = client.listen(request).await.unwrap().into_inner();
    while !written.is_subset(&received) {
        received.insert(next(&mut resumed).await.version);
    }
}

#[tokio::test]
async fn the_current_state_comes_first_as_created() {
    let (_node, mut client) = node("").await;
    for i in 0..50 {
        client
            .put(put("work", &format!("k{i}"), "v"))
            .await
            .unwrap();
    }
    let request = ListenRequest {
        include_current_state: true,
        key_prefix: Bytes::from_static(b"k1"),
        ..listen(&["work"])
    };
    let mut stream = client.listen(request).await.unwrap().into_inner();
    let mut keys = HashSet::new();
    for _ in 0..11 {
        let event = next(&mut stream).await;
        assert_eq!(kind(&event), EventKind::Created);
        keys.insert(event.key.clone());
    }
    let expected: HashSet<_> = std::iter::once("k1".to_string())
        .chain((10..20).map(|i| format!("k{i}")))
        .map(Bytes::from)
        .collect();
    assert_eq!(keys, expected);
    client.put(put("work", "k1", "new")).await.unwrap();
    assert_eq!(kind(&next(&mut stream).await), EventKind::Modified);
}

#[tokio::test]
async fn bad_listen_requests_are_refused() {
    let (_node, mut client) = node("").await;
    let none = client.listen(ListenRequest::default()).await.unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    let unknown = client.listen(listen(&["work", "nope"])).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
