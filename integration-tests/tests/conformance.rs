//! Black-box conformance of one node: every `Cache` RPC through the client generated from
//! `proto/` (no sitegrid client library), against a real node process. Tests of the
//! single-key RPCs run twice: unary, and on one `Pipeline` stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use sitegrid_integration_tests::requests::{get, put, remove};
use sitegrid_integration_tests::rpc::{CacheRpc, Path};
use sitegrid_integration_tests::{NodeProcess, NodeSpec, eventually, http};
use sitegrid_proto::v1::admin_client::AdminClient;
use sitegrid_proto::v1::*;
use tonic::Code;

struct Node {
    process: NodeProcess,
    cache: CacheRpc,
}

/// A node, and a client whose single-key requests travel by `path`.
async fn start(path: Path) -> Node {
    let process = NodeProcess::start(NodeSpec::new("conformance"))
        .await
        .unwrap();
    let cache = CacheRpc::new(process.channel().await.unwrap(), path)
        .await
        .unwrap();
    Node { process, cache }
}

/// Runs each of the tests named, which take a [`Path`], once per path: the unary and
/// the pipelined requests must answer alike.
macro_rules! on_both_paths {
    ($($test:ident),* $(,)?) => {
        mod unary {$(
            #[tokio::test]
            async fn $test() {
                super::$test(super::Path::Unary).await;
            }
        )*}
        mod pipelined {$(
            #[tokio::test]
            async fn $test() {
                super::$test(super::Path::Pipelined).await;
            }
        )*}
    };
}

on_both_paths!(
    a_put_reads_back_with_its_value_and_metadata,
    put_returns_the_previous_entry_only_when_asked,
    put_if_absent_stores_once_and_shows_losers_the_winner,
    replace_only_touches_present_keys,
    replace_with_version_succeeds_once_per_version,
    remove_and_remove_with_version_report_exactly,
    remove_by_tag_removes_all_sessions_of_a_user,
    size_counts_live_entries_and_clear_empties_the_cache,
    an_entry_reads_as_absent_once_its_lifespan_is_over,
    a_retry_with_the_same_request_id_returns_the_first_answer,
    bad_requests_get_clear_error_codes,
    http_endpoints_report_health_readiness_and_metrics,
);

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn put_if_absent(cache: &str, key: &str, value: &str) -> PutIfAbsentRequest {
    PutIfAbsentRequest {
        cache: cache.into(),
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn ping_answers() {
    let mut node = start(Path::Unary).await;
    node.cache.ping(PingRequest {}).await.unwrap();
}

async fn a_put_reads_back_with_its_value_and_metadata(path: Path) {
    let mut node = start(path).await;
    let before = now_ms();
    let version = node
        .cache
        .put(PutRequest {
            lifespan_ms: 60_000,
            max_idle_ms: 30_000,
            tags: vec!["user=u1".into(), "realm=r1".into()],
            ..put("sessions", "s1", "session-data")
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(version > 0);
    let got = node
        .cache
        .get(get("sessions", "s1"))
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(&got.value[..], b"session-data");
    let metadata = got.metadata.unwrap();
    assert_eq!(metadata.version, version);
    assert_eq!(metadata.origin_site, "site1");
    assert!(metadata.created_ms >= before && metadata.created_ms <= now_ms());
    assert!(metadata.last_used_ms >= metadata.created_ms);
    assert_eq!(metadata.lifespan_ms, 60_000);
    assert_eq!(metadata.max_idle_ms, 30_000);
    let mut tags = metadata.tags;
    tags.sort();
    assert_eq!(tags, ["realm=r1", "user=u1"]);
    let missing = node
        .cache
        .get(get("sessions", "nope"))
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found && missing.metadata.is_none());
}

async fn put_returns_the_previous_entry_only_when_asked(path: Path) {
    let mut node = start(path).await;
    let first = node
        .cache
        .put(put("work", "k", "a"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.previous.is_none());
    let quiet = node
        .cache
        .put(put("work", "k", "b"))
        .await
        .unwrap()
        .into_inner();
    assert!(quiet.previous.is_none());
    assert!(quiet.version > first.version);
    let asked = node
        .cache
        .put(PutRequest {
            return_previous: true,
            ..put("work", "k", "c")
        })
        .await
        .unwrap()
        .into_inner();
    let previous = asked.previous.unwrap();
    assert_eq!(&previous.value[..], b"b");
    assert_eq!(previous.metadata.unwrap().version, quiet.version);
}

async fn put_if_absent_stores_once_and_shows_losers_the_winner(path: Path) {
    let mut node = start(path).await;
    let won = node
        .cache
        .put_if_absent(put_if_absent("actionTokens", "t1", "first"))
        .await
        .unwrap()
        .into_inner();
    assert!(won.stored && won.version > 0 && won.existing.is_none());
    let lost = node
        .cache
        .put_if_absent(put_if_absent("actionTokens", "t1", "second"))
        .await
        .unwrap()
        .into_inner();
    assert!(!lost.stored);
    assert_eq!(lost.version, 0);
    let existing = lost.existing.unwrap();
    assert_eq!(&existing.value[..], b"first");
    assert_eq!(existing.metadata.unwrap().version, won.version);
}

async fn replace_only_touches_present_keys(path: Path) {
    let mut node = start(path).await;
    let request = |value: &str| ReplaceRequest {
        cache: "work".into(),
        key: b("k"),
        value: b(value),
        ..Default::default()
    };
    let absent = node.cache.replace(request("x")).await.unwrap().into_inner();
    assert!(!absent.replaced && absent.previous.is_none());
    assert!(
        !node
            .cache
            .get(get("work", "k"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    node.cache.put(put("work", "k", "a")).await.unwrap();
    let replaced = node.cache.replace(request("b")).await.unwrap().into_inner();
    assert!(replaced.replaced && replaced.version > 0);
    assert_eq!(&replaced.previous.unwrap().value[..], b"a");
}

async fn replace_with_version_succeeds_once_per_version(path: Path) {
    let mut node = start(path).await;
    let v1 = node
        .cache
        .put(put("sessions", "s", "a"))
        .await
        .unwrap()
        .into_inner()
        .version;
    let request = |expected, value: &str| ReplaceWithVersionRequest {
        cache: "sessions".into(),
        key: b("s"),
        value: b(value),
        expected_version: expected,
        ..Default::default()
    };
    let ok = node
        .cache
        .replace_with_version(request(v1, "b"))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.replaced && ok.version > v1 && ok.current.is_none());
    let stale = node
        .cache
        .replace_with_version(request(v1, "c"))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.replaced);
    let current = stale.current.unwrap();
    assert_eq!(&current.value[..], b"b");
    assert_eq!(current.metadata.unwrap().version, ok.version);
    let absent = ReplaceWithVersionRequest {
        key: b("missing"),
        ..request(v1, "x")
    };
    let absent = node
        .cache
        .replace_with_version(absent)
        .await
        .unwrap()
        .into_inner();
    assert!(!absent.replaced && absent.current.is_none());
}

async fn remove_and_remove_with_version_report_exactly(path: Path) {
    let mut node = start(path).await;
    let v1 = node
        .cache
        .put(put("work", "a", "1"))
        .await
        .unwrap()
        .into_inner()
        .version;
    let removed = node
        .cache
        .remove(remove("work", "a"))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed && removed.version > v1);
    assert_eq!(&removed.previous.unwrap().value[..], b"1");
    let again = node
        .cache
        .remove(remove("work", "a"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.removed && again.previous.is_none());

    let v2 = node
        .cache
        .put(put("work", "b", "2"))
        .await
        .unwrap()
        .into_inner()
        .version;
    let request = |expected| RemoveWithVersionRequest {
        cache: "work".into(),
        key: b("b"),
        expected_version: expected,
        request_id: String::new(),
    };
    let wrong = node
        .cache
        .remove_with_version(request(v2 + 1))
        .await
        .unwrap()
        .into_inner();
    assert!(!wrong.removed);
    assert_eq!(wrong.current.unwrap().metadata.unwrap().version, v2);
    let right = node
        .cache
        .remove_with_version(request(v2))
        .await
        .unwrap()
        .into_inner();
    assert!(right.removed && right.current.is_none());
    assert!(
        !node
            .cache
            .get(get("work", "b"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
}

#[tokio::test]
async fn get_all_and_put_all_work_on_many_keys() {
    let mut node = start(Path::Unary).await;
    let entries = (0..20)
        .map(|i| PutAllEntry {
            key: b(&format!("k{i}")),
            value: b(&format!("v{i}")),
            ..Default::default()
        })
        .collect();
    let versions = node
        .cache
        .put_all(PutAllRequest {
            cache: "work".into(),
            entries,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 20);
    assert!(versions.iter().all(|v| *v > 0));
    let found = node
        .cache
        .get_all(GetAllRequest {
            cache: "work".into(),
            keys: vec![b("k3"), b("missing"), b("k19")],
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let found: Vec<_> = found
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(found, [(b("k3"), b("v3")), (b("k19"), b("v19"))]);
}

#[tokio::test]
async fn entries_stream_every_entry_in_batches_with_filters() {
    let mut node = start(Path::Unary).await;
    let entries = (0..2500)
        .map(|i| PutAllEntry {
            key: b(&format!("k{i:05}")),
            value: b("value"),
            tags: vec![format!("parity={}", i % 2)],
            ..Default::default()
        })
        .collect();
    node.cache
        .put_all(PutAllRequest {
            cache: "work".into(),
            entries,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut writer = node.cache.clone();
    let collect = |request: EntriesRequest| {
        let mut cache = node.cache.clone();
        async move {
            let mut stream = cache.entries(request).await.unwrap().into_inner();
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch.unwrap().entries);
            }
            batches
        }
    };
    let all = collect(EntriesRequest {
        cache: "work".into(),
        batch_size: 1000,
        with_values: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        all.iter().map(Vec::len).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    let keys: std::collections::HashSet<_> = all.iter().flatten().map(|e| e.key.clone()).collect();
    assert_eq!(keys.len(), 2500, "every key exactly once");
    assert!(all.iter().flatten().all(|e| &e.value[..] == b"value"));
    let odd = collect(EntriesRequest {
        cache: "work".into(),
        tag: "parity=1".into(),
        with_values: false,
        ..Default::default()
    })
    .await;
    let odd: Vec<_> = odd.into_iter().flatten().collect();
    assert_eq!(odd.len(), 1250);
    assert!(
        odd.iter()
            .all(|e| e.value.is_empty() && e.metadata.is_some())
    );
    let empty = collect(EntriesRequest {
        cache: "actionTokens".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(empty.iter().map(Vec::len).sum::<usize>(), 0);

    // Removed keys keep a tombstone, which neither `Entries` (with or without a tag) nor
    // `Size` shows.
    for i in 0..10 {
        assert!(
            writer
                .remove(remove("work", &format!("k{i:05}")))
                .await
                .unwrap()
                .into_inner()
                .removed
        );
    }
    let left = collect(EntriesRequest {
        cache: "work".into(),
        batch_size: 1000,
        ..Default::default()
    })
    .await;
    let left: std::collections::HashSet<_> = left.iter().flatten().map(|e| e.key.clone()).collect();
    assert_eq!(left.len(), 2490);
    assert!((0..10).all(|i| !left.contains(&b(&format!("k{i:05}")))));
    let odd = collect(EntriesRequest {
        cache: "work".into(),
        tag: "parity=1".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(odd.iter().map(Vec::len).sum::<usize>(), 1245);
    let size = writer
        .size(SizeRequest {
            cache: "work".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(size.size, 2490);
}

async fn remove_by_tag_removes_all_sessions_of_a_user(path: Path) {
    let mut node = start(path).await;
    for (key, user) in [("s1", "u1"), ("s2", "u1"), ("s3", "u2")] {
        node.cache
            .put(PutRequest {
                tags: vec![format!("user={user}"), "realm=r1".into()],
                ..put("sessions", key, "data")
            })
            .await
            .unwrap();
    }
    let removed = node
        .cache
        .remove_by_tag(RemoveByTagRequest {
            cache: "sessions".into(),
            tag: "user=u1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 2);
    assert!(
        node.cache
            .get(get("sessions", "s3"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    assert!(
        !node
            .cache
            .get(get("sessions", "s1"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
}

async fn size_counts_live_entries_and_clear_empties_the_cache(path: Path) {
    let mut node = start(path).await;
    for i in 0..10 {
        node.cache
            .put(put("loginFailures", &format!("k{i}"), "1"))
            .await
            .unwrap();
    }
    node.cache
        .remove(remove("loginFailures", "k0"))
        .await
        .unwrap();
    let size = |cache: &mut CacheRpc| {
        let mut cache = cache.clone();
        async move {
            cache
                .size(SizeRequest {
                    cache: "loginFailures".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .size
        }
    };
    assert_eq!(
        size(&mut node.cache).await,
        9,
        "the tombstone is not counted"
    );
    let cleared = node
        .cache
        .clear(ClearRequest {
            cache: "loginFailures".into(),
            all_sites: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.removed, 9);
    assert_eq!(size(&mut node.cache).await, 0);
}

async fn an_entry_reads_as_absent_once_its_lifespan_is_over(path: Path) {
    let mut node = start(path).await;
    node.cache
        .put(PutRequest {
            lifespan_ms: 300,
            ..put("work", "short", "v")
        })
        .await
        .unwrap();
    node.cache.put(put("work", "long", "v")).await.unwrap();
    assert!(
        node.cache
            .get(get("work", "short"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    let cache = node.cache.clone();
    eventually(
        "the short-lived entry to expire",
        Duration::from_secs(10),
        || {
            let mut cache = cache.clone();
            async move {
                !cache
                    .get(get("work", "short"))
                    .await
                    .unwrap()
                    .into_inner()
                    .found
            }
        },
    )
    .await
    .unwrap();
    let size = node
        .cache
        .size(SizeRequest {
            cache: "work".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .size;
    assert_eq!(size, 1);
    // Absent means PutIfAbsent wins again.
    let again = node
        .cache
        .put_if_absent(put_if_absent("work", "short", "new"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.stored);
}

async fn a_retry_with_the_same_request_id_returns_the_first_answer(path: Path) {
    let mut node = start(path).await;
    let request = PutIfAbsentRequest {
        request_id: "retry-me".into(),
        ..put_if_absent("actionTokens", "t", "first")
    };
    let first = node
        .cache
        .put_if_absent(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = node
        .cache
        .put_if_absent(request)
        .await
        .unwrap()
        .into_inner();
    assert!(first.stored && retry.stored);
    assert_eq!(first.version, retry.version);
    let other = node
        .cache
        .put_if_absent(PutIfAbsentRequest {
            request_id: "another".into(),
            ..put_if_absent("actionTokens", "t", "second")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!other.stored);
}

async fn bad_requests_get_clear_error_codes(path: Path) {
    let mut node = start(path).await;
    let unknown = node.cache.get(get("nope", "k")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("nope"), "{}", unknown.message());

    let empty_key = node.cache.put(put("work", "", "v")).await.unwrap_err();
    assert_eq!(empty_key.code(), Code::InvalidArgument);
    assert!(empty_key.message().contains("key must not be empty"));

    let long_key = node
        .cache
        .get(GetRequest {
            cache: "work".into(),
            key: Bytes::from(vec![b'k'; 64 * 1024 + 1]),
        })
        .await
        .unwrap_err();
    assert_eq!(long_key.code(), Code::InvalidArgument);
    assert!(
        long_key.message().contains("limits.max_key_bytes"),
        "{}",
        long_key.message()
    );

    let big_value = node
        .cache
        .put(PutRequest {
            value: Bytes::from(vec![0u8; 8 * 1024 * 1024 + 1]),
            ..put("work", "k", "")
        })
        .await
        .unwrap_err();
    assert_eq!(big_value.code(), Code::InvalidArgument);
    assert!(
        big_value.message().contains("limits.max_value_bytes"),
        "{}",
        big_value.message()
    );

    let negative = node
        .cache
        .put(PutRequest {
            lifespan_ms: -1,
            ..put("work", "k", "v")
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(negative.message().contains("lifespan_ms"));

    let bad_tag = node
        .cache
        .put(PutRequest {
            tags: vec!["no-equals-sign".into()],
            ..put("work", "k", "v")
        })
        .await
        .unwrap_err();
    assert_eq!(bad_tag.code(), Code::InvalidArgument);

    // Nothing above was stored.
    assert!(
        !node
            .cache
            .get(get("work", "k"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // A value exactly at the limit is fine.
    node.cache
        .put(PutRequest {
            value: Bytes::from(vec![0u8; 8 * 1024 * 1024]),
            ..put("work", "big", "")
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn cluster_status_describes_the_node() {
    let node = start(Path::Unary).await;
    let mut admin = AdminClient::new(node.process.channel().await.unwrap());
    let status = admin
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.node, "conformance");
    assert_eq!(status.site, "site1");
    assert_eq!(status.site_id, 1);
    assert!(status.ready);
    assert_eq!(status.address, node.process.grpc_addr().to_string());
    let mut caches: Vec<_> = status
        .caches
        .iter()
        .map(|c| (c.name.as_str(), c.persistent))
        .collect();
    caches.sort();
    assert_eq!(
        caches,
        [
            ("actionTokens", false),
            ("loginFailures", false),
            ("offlineSessions", true),
            ("sessions", true),
            ("work", false)
        ]
    );
}

async fn http_endpoints_report_health_readiness_and_metrics(path: Path) {
    let mut node = start(path).await;
    node.cache.put(put("work", "k", "v")).await.unwrap();
    node.cache.get(get("work", "k")).await.unwrap();
    let addr = node.process.http_addr();
    assert_eq!(http::get(addr, "/health").await.unwrap().0, 200);
    assert_eq!(http::get(addr, "/ready").await.unwrap().0, 200);
    let (status, metrics) = http::get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"sitegrid_requests_total{op="put",cache="work",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("sitegrid_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sitegrid_cache_entries{cache="work"} 1"#),
        "{metrics}"
    );
    // A Prometheus text-format parser reads it all, and finds the families operators
    // chart: per-cache operations and latencies, entries, memory, listeners.
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("the Prometheus text format");
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "sitegrid_requests_total",
        "sitegrid_request_duration_seconds",
        "sitegrid_cache_entries",
        "sitegrid_listener_subscribers",
        "sitegrid_listener_dropped_total",
        "sitegrid_node_ready",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
}
