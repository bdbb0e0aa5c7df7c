//! A site of three real nodes under failures: pauses, kills, whole-site restarts and the
//! replacement of every node, with histories checked afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sitegrid_integration_tests::requests::get;
use sitegrid_integration_tests::{NodeProcess, Site, eventually};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;
use tokio::sync::Mutex;
use tonic::Code;
use tonic::transport::Channel;

fn client_for(endpoint: String) -> CacheClient<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10));
    CacheClient::new(endpoint.connect_lazy())
}

fn put(cache: &str, key: &str, value: &str, request_id: &str) -> PutRequest {
    PutRequest {
        cache: cache.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// Writes `request` through the nodes in turn until one acknowledges it (same request id
/// each time, so it applies once); `None` if none does within a minute.
async fn put_until_acknowledged(
    clients: &[CacheClient<Channel>],
    request: PutRequest,
) -> Option<u64> {
    for attempt in 0..600 {
        let mut client = clients[attempt % clients.len()].clone();
        match client.put(request.clone()).await {
            Ok(answer) => return Some(answer.into_inner().version),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::Aborted
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("unexpected error: {status:?}"),
        }
    }
    None
}

/// The version of `key` on a node that serves reads; `Err` if the node does not serve.
async fn version_on(
    client: &mut CacheClient<Channel>,
    cache: &str,
    key: &str,
) -> Result<Option<u64>, tonic::Status> {
    let got = client.get(get(cache, key)).await?.into_inner();
    Ok(got.found.then(|| got.metadata.unwrap().version))
}

#[tokio::test]
async fn a_paused_node_never_answers_with_what_it_missed_and_catches_up() {
    let site = Site::start(3, "").await.unwrap();
    let clients: Vec<_> = site
        .nodes
        .iter()
        .map(|n| client_for(n.endpoint()))
        .collect();
    let mut versions = HashMap::new();
    for i in 0..20 {
        let key = format!("k{i}");
        let version =
            put_until_acknowledged(&clients, put("sessions", &key, "old", &format!("old-{i}")))
                .await
                .unwrap();
        versions.insert(key, version);
    }
    site.nodes[2].pause().unwrap();
    // The two others go on (after leaving the paused one out).
    for i in 0..20 {
        let key = format!("k{i}");
        let version = put_until_acknowledged(
            &clients[..2],
            put("sessions", &key, "new", &format!("new-{i}")),
        )
        .await
        .unwrap();
        versions.insert(key, version);
    }
    site.nodes[2].resume().unwrap();
    // From the moment it runs again, it answers a read with the newest acknowledged
    // version (or a newer one) or not at all, until it serves again with everything.
    let mut paused = clients[2].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut all_current = true;
        for (key, version) in &versions {
            match version_on(&mut paused, "sessions", key).await {
                Ok(seen) => {
                    assert!(
                        seen >= Some(*version),
                        "{key}: a stale read from the resumed node: {seen:?} < {version}; its log:\n{}",
                        site.nodes[2].log()
                    );
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    all_current = false;
                }
            }
        }
        if all_current {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed node never served again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One ReplaceWithVersion attempt and what came of it.
#[derive(Debug, Clone)]
struct Attempt {
    key: usize,
    expected: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    Replaced(u64),
    NotReplaced,
    /// Failed or timed out: may or may not have happened.
    Unknown,
}

#[tokio::test]
async fn versioned_replaces_never_fork_while_nodes_are_killed_and_restarted() {
    let mut site = Site::start(3, "").await.unwrap();
    let endpoints: Vec<String> = site.nodes.iter().map(|n| n.endpoint()).collect();
    const KEYS: usize = 100;
    const WORKERS: usize = 16;
    const KILLS: usize = 6;
    let clients: Vec<_> = endpoints.iter().map(|e| client_for(e.clone())).collect();
    for key in 0..KEYS {
        put_until_acknowledged(
            &clients,
            put(
                "sessions",
                &format!("hot-{key}"),
                "0",
                &format!("hot-{key}"),
            ),
        )
        .await
        .unwrap();
    }
    let history = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let clients = clients.clone();
            let history = history.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = (worker * 7 + n) % KEYS;
                    let name = format!("hot-{key}");
                    let mut client = clients[(worker + n) % clients.len()].clone();
                    // Read the current version, then try to move it on by one.
                    let Ok(Some(expected)) = version_on(&mut client, "sessions", &name).await
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let request = ReplaceWithVersionRequest {
                        cache: "sessions".into(),
                        key: Bytes::from(name),
                        value: Bytes::from(format!("w{worker}-{n}")),
                        expected_version: expected,
                        request_id: format!("w{worker}-{n}"),
                        ..Default::default()
                    };
                    let outcome = match client.replace_with_version(request).await {
                        Ok(answer) if answer.get_ref().replaced => {
                            Outcome::Replaced(answer.into_inner().version)
                        }
                        Ok(_) => Outcome::NotReplaced,
                        Err(_) => Outcome::Unknown,
                    };
                    history.lock().await.push(Attempt {
                        key,
                        expected,
                        outcome,
                    });
                }
            })
        })
        .collect();
    // Kill and restart a random node, again and again, while the workers run.
    let seed = fastrand::u64(..);
    eprintln!("victims chosen with seed {seed}");
    let mut random = fastrand::Rng::with_seed(seed);
    for _ in 0..KILLS {
        let victim = random.usize(..site.nodes.len());
        let mut count = history.lock().await.len();
        eventually("progress", Duration::from_secs(60), || {
            let history = history.clone();
            async move { history.lock().await.len() > count + 300 }
        })
        .await
        .unwrap();
        site.nodes[victim].kill().unwrap();
        count = history.lock().await.len();
        eventually(
            "progress without the killed node",
            Duration::from_secs(60),
            || {
                let history = history.clone();
                async move { history.lock().await.len() > count + 300 }
            },
        )
        .await
        .unwrap();
        site.nodes[victim].restart().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    site.wait_all_ready().await.unwrap();

    // No fork: at most one success per (key, expected version).
    let history = history.lock().await.clone();
    let mut successes: HashMap<(usize, u64), u64> = HashMap::new();
    let mut newest: HashMap<usize, u64> = HashMap::new();
    for attempt in &history {
        if let Outcome::Replaced(version) = attempt.outcome {
            assert!(version > attempt.expected);
            if let Some(other) = successes.insert((attempt.key, attempt.expected), version) {
                panic!(
                    "fork on key {}: {other} and {version} both replaced {}",
                    attempt.key, attempt.expected
                );
            }
            let entry = newest.entry(attempt.key).or_insert(0);
            *entry = (*entry).max(version);
        }
    }
    let replaced = history
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Replaced(_)))
        .count();
    assert!(replaced > 100, "only {replaced} successes");
    // No acknowledged write missing: every key is at its newest acknowledged version or
    // later (a later write whose answer was lost), on every node.
    for node in &site.nodes {
        let mut client = client_for(node.endpoint());
        for key in 0..KEYS {
            let seen = version_on(&mut client, "sessions", &format!("hot-{key}"))
                .await
                .unwrap()
                .unwrap();
            let acknowledged = newest.get(&key).copied().unwrap_or(0);
            assert!(
                seen >= acknowledged,
                "hot-{key} on {}: {seen} < {acknowledged}",
                node.endpoint()
            );
        }
    }
}

#[tokio::test]
async fn a_whole_site_killed_and_restarted_keeps_its_persistent_data() {
    let mut site = Site::start(3, "").await.unwrap();
    let clients: Vec<_> = site
        .nodes
        .iter()
        .map(|n| client_for(n.endpoint()))
        .collect();
    let mut versions = HashMap::new();
    for i in 0..200usize {
        let cache = if i.is_multiple_of(2) {
            "sessions"
        } else {
            "offlineSessions"
        };
        let key = format!("k{i}");
        let version = put_until_acknowledged(&clients, put(cache, &key, "v", &format!("r{i}")))
            .await
            .unwrap();
        versions.insert((cache, key), version);
    }
    for node in &mut site.nodes {
        node.kill().unwrap();
    }
    for node in &mut site.nodes {
        node.restart_without_waiting().unwrap();
    }
    site.wait_all_ready().await.unwrap();
    for node in &site.nodes {
        let mut client = client_for(node.endpoint());
        for ((cache, key), version) in &versions {
            let seen = version_on(&mut client, cache, key).await.unwrap();
            assert_eq!(seen, Some(*version), "{cache}/{key} on {}", node.endpoint());
        }
    }
}

/// Sessions a rolling replacement starts with, written in `PutAll` batches of `LOAD_BATCH`.
const LOADED: usize = 100_000;
const LOAD_BATCH: usize = 1_000;
/// Keys the writer keeps rewriting while nodes are replaced.
const REWRITTEN: usize = 2_000;

/// The cache of loaded key `i`: persistent `sessions` for even batches, in-memory `work`
/// for odd ones.
fn loaded_cache(i: usize) -> &'static str {
    if (i / LOAD_BATCH).is_multiple_of(2) {
        "sessions"
    } else {
        "work"
    }
}

/// Writes keys `s0`..`s{LOADED}` in batches through the nodes; returns each key's version.
async fn load_sessions(clients: &[CacheClient<Channel>]) -> HashMap<String, u64> {
    let batches = (0..LOADED / LOAD_BATCH).map(|batch| {
        let mut client = clients[batch % clients.len()].clone();
        async move {
            let keys: Vec<String> = (batch * LOAD_BATCH..(batch + 1) * LOAD_BATCH)
                .map(|i| format!("s{i}"))
                .collect();
            let request = PutAllRequest {
                cache: loaded_cache(batch * LOAD_BATCH).into(),
                entries: keys
                    .iter()
                    .map(|key| PutAllEntry {
                        key: Bytes::from(key.clone()),
                        value: Bytes::from_static(b"v0"),
                        ..Default::default()
                    })
                    .collect(),
                request_id: format!("load-{batch}"),
            };
            let versions = client.put_all(request).await.unwrap().into_inner().versions;
            assert_eq!(versions.len(), keys.len());
            keys.into_iter().zip(versions).collect::<Vec<_>>()
        }
    });
    stream::iter(batches)
        .buffer_unordered(4)
        .flat_map(stream::iter)
        .collect()
        .await
}

/// Every key of `acknowledged` read back from `node` in `GetAll` batches: the keys
/// missing there or older than their acknowledged version, with what the node has.
async fn lost_on(
    node: &NodeProcess,
    acknowledged: &HashMap<String, u64>,
) -> Vec<(String, Option<u64>, u64)> {
    let mut lost = Vec::new();
    let mut client = client_for(node.endpoint());
    for batch in 0..LOADED / LOAD_BATCH {
        let keys: Vec<String> = (batch * LOAD_BATCH..(batch + 1) * LOAD_BATCH)
            .map(|i| format!("s{i}"))
            .collect();
        let request = GetAllRequest {
            cache: loaded_cache(batch * LOAD_BATCH).into(),
            keys: keys.iter().map(|k| Bytes::from(k.clone())).collect(),
        };
        let found: HashMap<Bytes, u64> = client
            .get_all(request)
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .map(|entry| (entry.key, entry.metadata.unwrap().version))
            .collect();
        for key in &keys {
            let seen = found.get(key.as_bytes()).copied();
            let version = acknowledged[key];
            if seen < Some(version) {
                lost.push((key.clone(), seen, version));
            }
        }
    }
    lost
}

/// Fails unless every node has every key of `acknowledged` at its version or newer.
async fn assert_none_lost(nodes: &[NodeProcess], acknowledged: &HashMap<String, u64>) {
    let mut report = Vec::new();
    for node in nodes {
        let lost = lost_on(node, acknowledged).await;
        if !lost.is_empty() {
            report.push(format!(
                "{} keys lost or stale on {}, first: {:?}",
                lost.len(),
                node.spec().name,
                &lost[..lost.len().min(5)]
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

#[tokio::test]
async fn replacing_every_node_with_an_empty_one_under_writes_loses_nothing() {
    let mut site = Site::start(3, "").await.unwrap();
    let endpoints: Vec<String> = site.nodes.iter().map(|n| n.endpoint()).collect();
    let clients: Vec<_> = endpoints.iter().map(|e| client_for(e.clone())).collect();
    let loaded = load_sessions(&clients).await;
    assert_none_lost(&site.nodes, &loaded).await;
    let acknowledged = Arc::new(Mutex::new(loaded));
    let stop = Arc::new(AtomicBool::new(false));
    let stale_reads = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let clients = clients.clone();
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        let stale_reads = stale_reads.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Spread over the loaded keys of both caches.
                let i = (n * 997) % REWRITTEN * (LOADED / REWRITTEN);
                let cache = loaded_cache(i);
                let key = format!("s{i}");
                let Some(version) = put_until_acknowledged(
                    &clients,
                    put(cache, &key, &format!("v{n}"), &format!("w{n}")),
                )
                .await
                else {
                    continue;
                };
                acknowledged.lock().await.insert(key.clone(), version);
                // Read it back from another node: never older than what was acknowledged.
                let mut reader = clients[n % clients.len()].clone();
                if let Ok(Some(seen)) = version_on(&mut reader, cache, &key).await
                    && seen < version
                {
                    stale_reads.lock().await.push((key, seen, version));
                }
            }
        })
    };
    // Each node in turn replaced by a brand-new one (same address, empty data dir),
    // waiting only for its readiness; twice over.
    for _round in 0..2 {
        for node in &mut site.nodes {
            node.kill().unwrap();
            node.wipe_data().unwrap();
            node.restart().await.unwrap();
            // Ready means it has everything acknowledged so far.
            let so_far = acknowledged.lock().await.clone();
            assert_none_lost(std::slice::from_ref(node), &so_far).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(
        stale_reads.lock().await.is_empty(),
        "stale reads: {:?}",
        stale_reads.lock().await
    );
    let acknowledged = acknowledged.lock().await.clone();
    assert_none_lost(&site.nodes, &acknowledged).await;
}
