//! Fuzz targets: hostile or broken input to the config parser, the stored-record decoder,
//! the cache API's request validation and the site link's batches must never panic, nor
//! make a node crash or answer anything but a clear error.
//!
//! Property tests (proptest): each target runs a few hundred cases under `cargo test`;
//! `make fuzz` runs each for `SITEGRID_FUZZ_SECONDS` (600 there) and prints how many
//! cases it ran. The two API targets send their cases to a real node process.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use sitegrid_integration_tests::{NodeAddrs, NodeProcess, NodeSpec};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::site_link_client::SiteLinkClient;
use sitegrid_proto::v1::*;
use sitegrid_server::store::entry::SiteName;
use sitegrid_server::store::record;
use tonic::Code;
use tonic::transport::Channel;

/// Cases per target under `cargo test`.
const QUICK_CASES: u32 = 300;

/// Runs `check` on values of `strategy`: [`QUICK_CASES`] of them, or for
/// `SITEGRID_FUZZ_SECONDS` when it is set (then with a fresh seed per round, and a line
/// saying how many cases ran). A failing case is shrunk and reported by proptest.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let seconds: u64 = std::env::var("SITEGRID_FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let round = |cases: u32, seed: [u8; 32]| {
        let config = RunnerConfig {
            cases,
            failure_persistence: None,
            ..RunnerConfig::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(failure) = runner.run(&strategy, |value| {
            check(value);
            Ok(())
        }) {
            panic!("fuzz target {name}: {failure}");
        }
    };
    if seconds == 0 {
        round(QUICK_CASES, [7; 32]);
        return;
    }
    let started = Instant::now();
    let mut cases = 0u64;
    let mut seed = [0u8; 32];
    while started.elapsed() < Duration::from_secs(seconds) {
        seed[..8].copy_from_slice(&cases.to_le_bytes());
        seed[8..16].copy_from_slice(&(started.elapsed().as_nanos() as u64).to_le_bytes());
        round(1000, seed);
        cases += 1000;
    }
    println!(
        "fuzz {name}: {cases} cases in {:.0} s, none failed",
        started.elapsed().as_secs_f64()
    );
}

/// Text that looks like a sitegrid config: known sections and keys with values of every
/// kind, some well-formed, many not.
fn config_text() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "",
        "[node]",
        "[limits]",
        "[events]",
        "[store]",
        "[relay]",
        "[caches.sessions]",
        "[caches.new]",
        "[[sites]]",
        "[sites.backup]",
        "[witness]",
        "[security]",
        "[security.tls]",
        "[[security.principals]]",
        "[node",
    ]);
    let key = prop::sample::select(vec![
        "name",
        "site",
        "site_id",
        "listen",
        "http",
        "gossip",
        "seeds",
        "data_dir",
        "max_key_bytes",
        "max_value_bytes",
        "max_concurrent_streams",
        "max_requests_per_second_per_client",
        "listener_buffer",
        "persistent",
        "lifespan",
        "max_idle",
        "tombstone_ttl",
        "endpoints",
        "strategy",
        "failure_policy",
        "timeout",
        "take_offline",
        "auth",
        "role",
        "token_sha256",
        "certificate",
        "caches",
        "cert",
        "key",
        "ca",
        "reload_interval",
        "audit_log",
        "unknown",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "255",
            "256",
            "1e400",
            "true",
            "\"\"",
            "\"5s\"",
            "\"0s\"",
            "\"-3s\"",
            "\"1y 2w\"",
            "\"sync\"",
            "\"async\"",
            "\"fail\"",
            "\"warn\"",
            "\"bogus\"",
            "\"none\"",
            "\"required\"",
            "\"admin\"",
            "\"observer\"",
            "\"9c6709dedf8105374733621fd2ff9fbfbde08a2e6709a0b3c3eff6a289cd597f\"",
            "[\"sessions\", \"nope\"]",
            "\"127.0.0.1:0\"",
            "\"[::1]:99999\"",
            "\"localhost\"",
            "[]",
            "[\"127.0.0.1:1\", 3]",
            "{}",
            "\"\\u0000\"",
        ])
        .prop_map(str::to_string),
        "\"[ -~]{0,40}\"",
    ];
    let line = prop_oneof![
        (key, value).prop_map(|(key, value)| format!("{key} = {value}")),
        section.prop_map(str::to_string),
        "[ -~]{0,30}",
    ];
    prop_oneof![
        prop::collection::vec(line, 0..25).prop_map(|lines| lines.join("\n")),
        any::<String>(),
    ]
}

#[test]
fn config_parsing_never_panics() {
    fuzz("config", config_text(), |text| {
        if let Ok(config) = sitegrid_config::Config::from_toml(&text, "fuzz") {
            // A config that loads is usable: its derived limits are computable, and it
            // validates to a verdict.
            let _ = config.limits.max_message_bytes();
            let _ = config.security.mutual_tls();
            let _ = config.validate();
        }
    });
}

/// Record bytes in `store::record`'s format: well-formed records of every kind (some
/// with fields out of range), then damaged (truncated, bytes flipped), or plain noise.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    let stored = (
        0u32..5,
        any::<u64>(),
        "[a-z0-9]{0,12}",
        prop::collection::vec(any::<u8>(), 0..64),
        any::<[u64; 4]>(),
        prop::collection::vec("[ -~]{0,12}", 0..4),
        any::<[u64; 3]>(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, version, origin, value, times, tags, more, checked)| {
                let stored = record::StoredRecord {
                    kind,
                    version,
                    origin_site: origin,
                    value: value.into(),
                    created_ms: times[0],
                    last_used_ms: times[1],
                    lifespan_ms: times[2],
                    max_idle_ms: times[3],
                    tags,
                    removed_ms: more[0],
                    base_version: more[1],
                    writer: more[2],
                };
                if checked {
                    return record::frame(&stored);
                }
                // The first format, unchecked, is still read.
                let mut bytes = vec![record::FORMAT_V1];
                prost::Message::encode(&stored, &mut bytes).expect("a Vec grows");
                bytes
            },
        );
    let damaged = (stored.clone(), any::<usize>(), any::<u8>(), any::<bool>()).prop_map(
        |(mut bytes, at, byte, truncate)| {
            let at = at % bytes.len();
            if truncate {
                bytes.truncate(at);
            } else {
                bytes[at] ^= byte | 1;
            }
            bytes
        },
    );
    prop_oneof![stored, damaged, prop::collection::vec(any::<u8>(), 0..128)]
}

#[test]
fn the_stored_record_decoder_never_panics() {
    let intern = |name: &str| -> SiteName { name.into() };
    fuzz("stored records", record_bytes(), |bytes| {
        if let Ok(slot) = record::decode(&bytes, &intern) {
            // What decodes encodes again, and reads back the same.
            let again = record::encode(&slot);
            let back = record::decode(&again, &intern).expect("a re-encoded slot decodes");
            assert_eq!(record::encode(&back), again);
        }
    });
}

/// One hostile `Cache` request.
#[derive(Debug, Clone)]
enum CacheCall {
    Put(PutRequest),
    PutIfAbsent(PutIfAbsentRequest),
    ReplaceWithVersion(ReplaceWithVersionRequest),
    Remove(RemoveRequest),
    Get(GetRequest),
    GetAll(GetAllRequest),
    PutAll(PutAllRequest),
    RemoveByTag(RemoveByTagRequest),
    Entries(EntriesRequest),
}

fn cache_calls() -> impl Strategy<Value = CacheCall> {
    let cache = prop::sample::select(vec!["work", "sessions", "actionTokens", "", "nope", "WORK"])
        .prop_map(str::to_string);
    // The node's limits are small (see the test), so over-limit cases are cheap.
    let key = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        prop::collection::vec(any::<u8>(), 60..70),
    ]
    .prop_map(Bytes::from);
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 1020..1030),
    ]
    .prop_map(Bytes::from);
    let tags = prop::collection::vec(
        prop_oneof!["[a-z]{1,5}=[a-z0-9]{0,5}", "[ -~]{0,40}", "=", "a="],
        0..6,
    );
    let times = (
        prop_oneof![Just(0i64), any::<i64>(), -1i64..2],
        prop_oneof![Just(0i64), any::<i64>()],
    );
    let put = (
        cache.clone(),
        key.clone(),
        value.clone(),
        times,
        tags.clone(),
        ".{0,8}",
    )
        .prop_map(
            |(cache, key, value, (lifespan_ms, max_idle_ms), tags, request_id)| PutRequest {
                cache,
                key,
                value,
                lifespan_ms,
                max_idle_ms,
                tags,
                request_id,
                return_previous: true,
            },
        );
    prop_oneof![
        put.clone().prop_map(CacheCall::Put),
        put.clone()
            .prop_map(|p| CacheCall::PutIfAbsent(PutIfAbsentRequest {
                cache: p.cache,
                key: p.key,
                value: p.value,
                lifespan_ms: p.lifespan_ms,
                max_idle_ms: p.max_idle_ms,
                tags: p.tags,
                request_id: p.request_id,
                return_previous: p.return_previous,
            })),
        (put.clone(), any::<u64>()).prop_map(|(p, expected_version)| {
            CacheCall::ReplaceWithVersion(ReplaceWithVersionRequest {
                cache: p.cache,
                key: p.key,
                value: p.value,
                expected_version,
                lifespan_ms: p.lifespan_ms,
                max_idle_ms: p.max_idle_ms,
                tags: p.tags,
                request_id: p.request_id,
            })
        }),
        (cache.clone(), key.clone()).prop_map(|(cache, key)| CacheCall::Remove(RemoveRequest {
            cache,
            key,
            request_id: String::new(),
        })),
        (cache.clone(), key.clone())
            .prop_map(|(cache, key)| CacheCall::Get(GetRequest { cache, key })),
        (cache.clone(), prop::collection::vec(key.clone(), 0..12))
            .prop_map(|(cache, keys)| CacheCall::GetAll(GetAllRequest { cache, keys })),
        (cache.clone(), prop::collection::vec((key, value), 0..12)).prop_map(|(cache, entries)| {
            CacheCall::PutAll(PutAllRequest {
                cache,
                entries: entries
                    .into_iter()
                    .map(|(key, value)| PutAllEntry {
                        key,
                        value,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }),
        (cache.clone(), "[ -~]{0,12}")
            .prop_map(|(cache, tag)| CacheCall::RemoveByTag(RemoveByTagRequest { cache, tag })),
        (cache, any::<u32>(), "[ -~]{0,12}", any::<bool>()).prop_map(
            |(cache, batch_size, tag, with_values)| CacheCall::Entries(EntriesRequest {
                cache,
                batch_size: batch_size % 20_000,
                tag,
                with_values,
            })
        ),
    ]
}

/// Sends one call; the status it ended with.
async fn send(client: &mut CacheClient<Channel>, call: CacheCall) -> Code {
    let status = match call {
        CacheCall::Put(r) => client.put(r).await.err(),
        CacheCall::PutIfAbsent(r) => client.put_if_absent(r).await.err(),
        CacheCall::ReplaceWithVersion(r) => client.replace_with_version(r).await.err(),
        CacheCall::Remove(r) => client.remove(r).await.err(),
        CacheCall::Get(r) => client.get(r).await.err(),
        CacheCall::GetAll(r) => client.get_all(r).await.err(),
        CacheCall::PutAll(r) => client.put_all(r).await.err(),
        CacheCall::RemoveByTag(r) => client.remove_by_tag(r).await.err(),
        CacheCall::Entries(r) => match client.entries(r).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        },
    };
    status.map_or(Code::Ok, |status| status.code())
}

#[test]
fn hostile_cache_requests_get_clear_answers_and_the_node_survives() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = runtime
        .block_on(NodeProcess::start(NodeSpec::new("fuzz-cache").with_toml(
            "[limits]\nmax_key_bytes = 64\nmax_value_bytes = 1024\nmax_tags = 4\nmax_tag_bytes = 32\nmax_batch_entries = 8",
        )))
        .unwrap();
    let client = CacheClient::new(runtime.block_on(node.channel()).unwrap());
    fuzz("cache requests", cache_calls(), |call| {
        let code = runtime.block_on(send(&mut client.clone(), call.clone()));
        assert!(
            matches!(code, Code::Ok | Code::InvalidArgument | Code::NotFound),
            "{call:?} ended with {code:?}"
        );
    });
    assert!(node_serves(&runtime, &node), "the node serves on");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

/// A change a peer site might send: a key, versions, and record bytes well-formed,
/// damaged or noise.
fn peer_changes() -> impl Strategy<Value = (Vec<(String, ReplicatedMutation)>, bool)> {
    let cache = prop::sample::select(vec!["sessions", "loginFailures", "work", "nope", ""])
        .prop_map(str::to_string);
    let mutation = (
        prop::collection::vec(any::<u8>(), 0..24),
        any::<u64>(),
        record_bytes(),
        prop::option::of((any::<bool>(), any::<u64>(), record_bytes())),
        any::<u64>(),
    )
        .prop_map(|(key, prev, record, answer, undoes)| ReplicatedMutation {
            key: key.into(),
            prev,
            record: record.into(),
            request_id: if answer.is_some() {
                "r".into()
            } else {
                String::new()
            },
            answer: answer.map(|(applied, version, previous)| WriteAnswer {
                applied,
                version,
                previous: previous.into(),
            }),
            undoes,
        });
    (
        prop::collection::vec((cache, mutation), 0..8),
        any::<bool>(),
    )
}

#[test]
fn hostile_batches_from_a_peer_site_get_answers_and_the_node_survives() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // site1's node names site2 as its peer; the cases come as if from site2.
    // Its peer is never reachable, so the node may not be ready for users; it serves.
    let spec = NodeSpec::new("fuzz-link")
        .with_toml("[[sites]]\nname = \"site2\"\nendpoints = [\"127.0.0.1:9\"]");
    let mut node = NodeProcess::launch_at(spec, NodeAddrs::free()).unwrap();
    runtime.block_on(node.wait_serving()).unwrap();
    let client = SiteLinkClient::new(runtime.block_on(node.channel()).unwrap());
    fuzz("site link batches", peer_changes(), |(changes, sync)| {
        let mut client = client.clone();
        let answer = runtime.block_on(async move {
            if sync {
                let items = changes
                    .into_iter()
                    .map(|(cache, mutation)| BackupItem {
                        cache,
                        mutation: Some(mutation),
                    })
                    .collect();
                let request = BackupBatchRequest {
                    from_site: "site2".into(),
                    items,
                };
                client.backup_batch(request).await.err()
            } else {
                let changes = changes
                    .into_iter()
                    .map(|(cache, mutation)| AsyncChange {
                        cache,
                        mutation: Some(mutation),
                    })
                    .collect();
                let request = ApplyAsyncRequest {
                    from_site: "site2".into(),
                    changes,
                    forwarded: false,
                };
                client.apply_async(request).await.err()
            }
        });
        // Whatever the verdict (a damaged record is INTERNAL: a peer's bug), it is the
        // node's own answer with a message, not a broken stream.
        if let Some(status) = answer {
            assert!(
                std::error::Error::source(&status).is_none()
                    && !status.message().is_empty()
                    && status.code() != Code::Unknown,
                "a batch ended with {status:?}"
            );
        }
    });
    assert!(node_serves(&runtime, &node), "the node serves on");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

fn node_serves(runtime: &tokio::runtime::Runtime, node: &NodeProcess) -> bool {
    runtime.block_on(async {
        let mut client = CacheClient::new(node.channel().await.unwrap());
        client.ping(PingRequest {}).await.is_ok()
    })
}
