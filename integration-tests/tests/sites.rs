//! Two sites of real nodes backing each other up synchronously.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sitegrid_integration_tests::checks::{contents, one_winner_per_token, token_attempt};
use sitegrid_integration_tests::requests::{get, put, remove};
use sitegrid_integration_tests::{
    Direction, FaultProxy, NodeProcess, NodeSpec, TwoSites, eventually, http,
};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;

async fn client(node: &NodeProcess) -> CacheClient<Channel> {
    CacheClient::new(node.channel().await.unwrap())
}

#[tokio::test]
async fn a_write_in_one_site_is_in_the_other_before_it_is_acknowledged() {
    let sites = TwoSites::start_direct(1, "").await.unwrap();
    let [first, second] = &sites.sites;
    let mut in_first = client(&first.nodes[0]).await;
    let mut in_second = client(&second.nodes[0]).await;
    let mut events = in_second
        .listen(ListenRequest {
            caches: vec!["sessions".into()],
            with_values: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let version = in_first
        .put(put("sessions", "s1", "from site1"))
        .await
        .unwrap()
        .into_inner()
        .version;
    let seen = in_second
        .get(get("sessions", "s1"))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.found, "site2 lacks an acknowledged write of site1");
    assert_eq!(seen.value, "from site1".as_bytes());
    let metadata = seen.metadata.unwrap();
    assert_eq!(metadata.version, version);
    assert_eq!(metadata.origin_site, "site1");
    let event = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in site2")
            .unwrap()
            .unwrap();
        if event.key == "s1".as_bytes() {
            break event;
        }
    };
    assert_eq!(event.version, version);
    assert_eq!(event.origin_site, "site1");

    // A removal in site2 is in site1 once acknowledged.
    let removed = in_second
        .remove(remove("sessions", "s1"))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    assert!(
        !in_first
            .get(get("sessions", "s1"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // A write in site2 after site1's write gets a newer version.
    let newer = in_second
        .put(put("sessions", "s1", "from site2"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(newer > version);
}

#[tokio::test]
async fn racing_tokens_from_both_sites_have_one_winner_each_and_both_sites_agree() {
    let sites = TwoSites::start_direct(2, "").await.unwrap();
    const TOKENS: usize = 20_000;
    // The default timeout of a sync backup.
    const BACKUP_TIMEOUT: Duration = Duration::from_millis(4_500);
    const CLIENTS_PER_SITE: usize = 4;
    let nodes: Vec<&NodeProcess> = sites.sites.iter().flat_map(|s| &s.nodes).collect();
    let mut attempts = Vec::new();
    for c in 0..2 * CLIENTS_PER_SITE {
        // Clients 0..4 in site1, 4..8 in site2, spread over each site's nodes.
        let site = c / CLIENTS_PER_SITE;
        let node = nodes[site * 2 + c % 2];
        let client = client(node).await;
        for t in 0..TOKENS {
            let mut client = client.clone();
            attempts.push(async move {
                let (token, request) = token_attempt(c, t, TOKENS);
                loop {
                    let started = Instant::now();
                    let outcome = client.put_if_absent(request.clone()).await;
                    // Nobody waits on a remote lock: no call outlasts the backup timeout.
                    assert!(
                        started.elapsed() < BACKUP_TIMEOUT,
                        "token {token} of client {c} waited {:?}",
                        started.elapsed()
                    );
                    match outcome {
                        Ok(answer) => return (token, c, answer.into_inner()),
                        Err(status) if status.code() == Code::Aborted => continue,
                        Err(status) => panic!("token {token} of client {c}: {status:?}"),
                    }
                }
            });
        }
    }
    let answers: Vec<_> = stream::iter(attempts).buffer_unordered(64).collect().await;
    let winners = one_winner_per_token(&answers, TOKENS);
    // Every node of both sites holds every winner.
    for node in &nodes {
        let held = contents(node, "actionTokens", "token-", TOKENS).await;
        assert_eq!(held.len(), TOKENS);
        for (token, (_, value, version)) in held.iter().enumerate() {
            let (winner, won_at) = winners[&token];
            assert_eq!(value, format!("client-{winner}").as_bytes());
            assert_eq!(*version, won_at);
        }
    }
}

#[tokio::test]
async fn with_the_fail_policy_a_write_fails_while_the_peer_site_is_down_and_is_applied_nowhere() {
    let mut sites = TwoSites::start_direct(1, "").await.unwrap();
    sites.sites[1].nodes[0].kill().unwrap();
    let mut in_first = client(&sites.sites[0].nodes[0]).await;
    let token = PutIfAbsentRequest {
        cache: "actionTokens".into(),
        key: Bytes::from_static(b"t1"),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    };
    let status = in_first.put_if_absent(token.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("site2"), "{}", status.message());
    assert!(
        !in_first
            .get(get("actionTokens", "t1"))
            .await
            .unwrap()
            .into_inner()
            .found,
        "a failed write was applied in its own site"
    );
    sites.sites[1].nodes[0].restart().await.unwrap();
    let stored = in_first.put_if_absent(token).await.unwrap().into_inner();
    assert!(stored.stored);
    let mut in_second = client(&sites.sites[1].nodes[0]).await;
    assert!(
        in_second
            .get(get("actionTokens", "t1"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
}

/// Site `index`'s backup settings for `actionTokens`: sync, `fail`, a short timeout.
fn short_timeout(index: usize) -> String {
    format!(
        "[caches.actionTokens]\nbackup = {{ site{} = {{ timeout = \"1s\" }} }}\n",
        2 - index
    )
}

async fn found(node: &NodeProcess, cache: &str, key: &str) -> bool {
    client(node)
        .await
        .get(get(cache, key))
        .await
        .unwrap()
        .into_inner()
        .found
}

#[tokio::test]
async fn writes_in_doubt_behind_a_blackholed_link_fail_in_time_and_converge_once_it_heals() {
    // Site 1 reaches site 2 through a proxy; site 2 reaches site 1 directly.
    let spec = |index, name: &str| NodeSpec::new(name).with_toml(&short_timeout(index));
    let (mut sites, proxy) = TwoSites::start_behind_proxy(1, spec).await.unwrap();
    let [first, second] = &sites.sites;
    let (first, second) = (&first.nodes[0], &second.nodes[0]);
    let mut in_first = client(first).await;
    let token = |key: &str| PutIfAbsentRequest {
        cache: "actionTokens".into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"used"),
        ..Default::default()
    };
    assert!(
        in_first
            .put_if_absent(token("before"))
            .await
            .unwrap()
            .into_inner()
            .stored
    );

    // Nothing gets through: each write fails within the timeout, applied nowhere.
    proxy.blackhole(Direction::Both);
    for key in ["lost-1", "lost-2"] {
        let started = Instant::now();
        let status = in_first.put_if_absent(token(key)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!found(first, "actionTokens", key).await);
        assert!(!found(second, "actionTokens", key).await);
    }
    // Only the answers are lost: site 2 takes the write, site 1 tells the client it
    // failed and applies nothing.
    proxy.heal();
    proxy.reset_all();
    eventually("the link back", Duration::from_secs(30), || {
        let mut in_first = in_first.clone();
        async move { in_first.put_if_absent(token("warm")).await.is_ok() }
    })
    .await
    .unwrap();
    proxy.blackhole(Direction::FromTarget);
    let status = in_first.put_if_absent(token("in-doubt")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!found(first, "actionTokens", "in-doubt").await);
    assert!(
        found(second, "actionTokens", "in-doubt").await,
        "the peer should have taken the write whose answer was lost"
    );

    // Site 1 restarts before the link heals: the keys in doubt are kept on disk.
    sites.sites[0].nodes[0].kill().unwrap();
    sites.sites[0].nodes[0].restart().await.unwrap();
    let [first, second] = &sites.sites;
    let (first, second) = (&first.nodes[0], &second.nodes[0]);
    let mut in_first = client(first).await;

    // Once the link heals, the keys in doubt converge on what the client was told: no
    // site keeps the write that failed.
    proxy.heal();
    proxy.reset_all();
    eventually(
        "the write in doubt undone in site 2",
        Duration::from_secs(30),
        || async { !found(second, "actionTokens", "in-doubt").await },
    )
    .await
    .unwrap();
    // (Site 1's in-memory `actionTokens` lost "before" and "warm" with the restart; a
    // restarted site taking its peer's state is the resync's job, not this test's.)
    for key in ["lost-1", "lost-2", "in-doubt"] {
        assert_eq!(
            found(first, "actionTokens", key).await,
            found(second, "actionTokens", key).await,
            "{key}"
        );
    }
    // And the link works again.
    assert!(
        in_first
            .put_if_absent(token("after"))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    assert!(found(second, "actionTokens", "after").await);
}

/// `PutIfAbsent` of token `key` to `actionTokens`, its value the request id.
fn token(key: &str, request_id: &str) -> PutIfAbsentRequest {
    PutIfAbsentRequest {
        cache: "actionTokens".into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(request_id.as_bytes()),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// Two sites, site 1 reaching site 2 through a proxy, after a client of site 1 used token
/// `t` (request id `first-client`) while the proxy lost site 2's answers: the client was
/// told UNAVAILABLE, site 2 took the write, and the proxy still loses the answers.
async fn token_write_in_doubt() -> (TwoSites, FaultProxy) {
    let spec = |index, name: &str| NodeSpec::new(name).with_toml(&short_timeout(index));
    let (sites, proxy) = TwoSites::start_behind_proxy(1, spec).await.unwrap();
    let [first, second] = &sites.sites;
    let (first, second) = (&first.nodes[0], &second.nodes[0]);
    let mut in_first = client(first).await;
    assert!(
        in_first
            .put_if_absent(token("warm", "warm"))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    proxy.blackhole(Direction::FromTarget);
    let status = in_first
        .put_if_absent(token("t", "first-client"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        found(second, "actionTokens", "t").await,
        "the peer should have taken the write whose answer was lost"
    );
    (sites, proxy)
}

#[tokio::test]
async fn a_retry_failing_over_after_its_write_in_doubt_was_undone_is_not_told_it_won() {
    // A token is used in site 1; site 2 takes the write but its answer is lost, so the
    // client is told the write failed and site 1 undoes it in site 2 once the link is
    // back. Another client then uses the token in site 1. The first client's retry (same
    // request id) fails over to site 2: the answer site 2 kept for that request is void.
    let (sites, proxy) = token_write_in_doubt().await;
    let [first, second] = &sites.sites;
    let (first, second) = (&first.nodes[0], &second.nodes[0]);
    let mut in_first = client(first).await;
    proxy.heal();
    proxy.reset_all();
    eventually(
        "the write in doubt undone in site 2",
        Duration::from_secs(30),
        || async { !found(second, "actionTokens", "t").await },
    )
    .await
    .unwrap();
    let other = in_first
        .put_if_absent(token("t", "other-client"))
        .await
        .unwrap()
        .into_inner();
    assert!(other.stored, "{other:?}");

    let retry = client(second)
        .await
        .put_if_absent(token("t", "first-client"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !retry.stored,
        "two clients were told they used the token: {other:?} and {retry:?}"
    );
    let existing = retry.existing.expect("the winner's entry");
    assert_eq!(existing.value, "other-client".as_bytes());
    assert_eq!(existing.metadata.unwrap().version, other.version);
}

#[tokio::test]
async fn a_retry_failing_over_before_its_write_in_doubt_is_reconciled_makes_it_stick() {
    // As above, but the retry reaches site 2 before site 1 can reconcile the write in
    // doubt (its link to site 2 still loses the answers). Site 2 holds the write and its
    // answer; before it answers the retry with it, site 1 must hold the write too, or
    // site 1 would undo it once the link is back and the token would be free again.
    let (sites, proxy) = token_write_in_doubt().await;
    let [first, second] = &sites.sites;
    let (first, second) = (&first.nodes[0], &second.nodes[0]);
    let mut in_first = client(first).await;

    // Site 2 reaches site 1 directly: the retry's answer can be made to hold there.
    let retry = client(second)
        .await
        .put_if_absent(token("t", "first-client"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.stored, "{retry:?}");
    assert!(
        found(first, "actionTokens", "t").await,
        "site 2 answered the retry with a write site 1 does not hold"
    );

    proxy.heal();
    proxy.reset_all();
    eventually(
        "the key in doubt reconciled",
        Duration::from_secs(30),
        || async {
            http::metric(
                first.http_addr(),
                r#"sitegrid_backup_in_doubt_keys{site="site2"}"#,
            )
            .await
            .is_ok_and(|keys| keys == 0.0)
        },
    )
    .await
    .unwrap();
    let other = in_first
        .put_if_absent(token("t", "other-client"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !other.stored,
        "two clients were told they used the token: {retry:?} and {other:?}"
    );
    assert_eq!(other.existing.unwrap().value, "first-client".as_bytes());
    assert!(found(second, "actionTokens", "t").await);
}

#[tokio::test]
async fn async_backups_cross_a_slow_link_converge_and_survive_a_kill_of_the_sender() {
    // `loginFailures` is backed up asynchronously by default. Site 1 reaches site 2
    // through a proxy that delays each direction by 50 ms.
    let (mut sites, proxy) = TwoSites::start_behind_proxy(1, |_, name| NodeSpec::new(name))
        .await
        .unwrap();
    proxy.set_delay(Direction::Both, Duration::from_millis(50));
    // Writes offered at 5,000 a second for 3 seconds, 50 every 10 ms, over 2,000 keys:
    // each key is written 7 or 8 times, and the outbox keeps only the newest.
    const KEYS: usize = 2_000;
    const PER_TICK: usize = 50;
    const TICKS: usize = 300;
    let writer = client(&sites.sites[0].nodes[0]).await;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut batches = Vec::with_capacity(TICKS);
    for tick in 0..TICKS {
        ticks.tick().await;
        let writer = writer.clone();
        batches.push(tokio::spawn(async move {
            let writes = (0..PER_TICK).map(|j| {
                let i = tick * PER_TICK + j;
                let mut writer = writer.clone();
                async move {
                    writer
                        .put(put(
                            "loginFailures",
                            &format!("f{}", i % KEYS),
                            &i.to_string(),
                        ))
                        .await
                }
            });
            futures::future::join_all(writes).await
        }));
    }
    let offered = started.elapsed();
    for batch in batches {
        for answer in batch.await.unwrap() {
            answer.unwrap();
        }
    }
    eprintln!(
        "{} writes offered in {offered:?}, all answered after {:?}",
        TICKS * PER_TICK,
        started.elapsed()
    );
    let expected = contents(&sites.sites[0].nodes[0], "loginFailures", "f", KEYS).await;
    assert_eq!(expected.len(), KEYS);
    eventually("site 2 to converge", Duration::from_secs(60), || {
        let expected = expected.clone();
        let second = &sites.sites[1].nodes[0];
        async move { contents(second, "loginFailures", "f", KEYS).await == expected }
    })
    .await
    .unwrap();

    // Nothing gets through, the sender is killed with writes queued, then restarted: the
    // queued writes arrive.
    proxy.blackhole(Direction::Both);
    for i in 0..200 {
        writer
            .clone()
            .put(put("loginFailures", &format!("g{i}"), "queued"))
            .await
            .unwrap();
    }
    let queued = contents(&sites.sites[0].nodes[0], "loginFailures", "g", 200).await;
    assert_eq!(queued.len(), 200);
    assert!(
        contents(&sites.sites[1].nodes[0], "loginFailures", "g", 200)
            .await
            .is_empty()
    );
    sites.sites[0].nodes[0].kill().unwrap();
    proxy.heal();
    proxy.reset_all();
    sites.sites[0].nodes[0].restart().await.unwrap();
    eventually(
        "the queued writes in site 2",
        Duration::from_secs(60),
        || {
            let queued = queued.clone();
            let second = &sites.sites[1].nodes[0];
            async move { contents(second, "loginFailures", "g", 200).await == queued }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn versioned_replaces_from_both_sites_never_fork_and_the_sites_end_equal() {
    let sites = TwoSites::start_direct(2, "").await.unwrap();
    const KEYS: usize = 100;
    const ATTEMPTS_PER_WORKER: usize = 300;
    let nodes: Vec<&NodeProcess> = sites.sites.iter().flat_map(|s| &s.nodes).collect();
    let mut first = client(nodes[0]).await;
    for key in 0..KEYS {
        first
            .put(put("sessions", &format!("hot-{key}"), "0"))
            .await
            .unwrap();
    }
    // Eight workers, four per site, spread over each site's two nodes.
    let mut workers = Vec::new();
    for worker in 0..8usize {
        let mut client = client(nodes[worker % 4]).await;
        workers.push(tokio::spawn(async move {
            let mut history = Vec::new();
            for n in 0..ATTEMPTS_PER_WORKER {
                let key = (worker * 13 + n * 7) % KEYS;
                let name = format!("hot-{key}");
                let got = client
                    .get(get("sessions", &name))
                    .await
                    .unwrap()
                    .into_inner();
                let expected = got.metadata.unwrap().version;
                let request = ReplaceWithVersionRequest {
                    cache: "sessions".into(),
                    key: Bytes::from(name),
                    value: Bytes::from(format!("w{worker}-{n}")),
                    expected_version: expected,
                    request_id: format!("w{worker}-{n}"),
                    ..Default::default()
                };
                let outcome = match client.replace_with_version(request).await {
                    Ok(answer) if answer.get_ref().replaced => Some(answer.into_inner().version),
                    Ok(_) => None,
                    Err(status) if status.code() == Code::Aborted => None,
                    Err(status) => panic!("worker {worker}: {status:?}"),
                };
                history.push((key, expected, outcome));
            }
            history
        }));
    }
    let mut successes: HashMap<(usize, u64), u64> = HashMap::new();
    let mut newest: HashMap<usize, u64> = HashMap::new();
    for worker in workers {
        for (key, expected, outcome) in worker.await.unwrap() {
            if let Some(version) = outcome {
                assert!(version > expected);
                if let Some(other) = successes.insert((key, expected), version) {
                    panic!("fork on hot-{key}: {other} and {version} both replaced {expected}");
                }
                let entry = newest.entry(key).or_insert(0);
                *entry = (*entry).max(version);
            }
        }
    }
    assert!(successes.len() > KEYS, "only {} successes", successes.len());
    // Both sites hold the same version of every key, the newest acknowledged one.
    let reference = contents(nodes[0], "sessions", "hot-", KEYS).await;
    for node in &nodes[1..] {
        assert_eq!(contents(node, "sessions", "hot-", KEYS).await, reference);
    }
    assert_eq!(reference.len(), KEYS);
    for (key, (_, _, version)) in reference.iter().enumerate() {
        if let Some(acknowledged) = newest.get(&key) {
            assert_eq!(version, acknowledged, "hot-{key}");
        }
    }
}

#[tokio::test]
async fn a_session_read_through_one_node_stays_alive_on_every_node_of_both_sites() {
    let sites = TwoSites::start_direct(2, "").await.unwrap();
    let [first, second] = &sites.sites;
    let key = "idle-session";
    let session = PutRequest {
        max_idle_ms: 3_000,
        ..put("sessions", key, "in use")
    };
    client(&first.nodes[0]).await.put(session).await.unwrap();
    // Read through one node of site2, not the key's primary there, for three max-idle
    // times: the primaries (which expire it) and site1 only hear of the reads.
    let reader = &second.nodes[1 - second.primary_of(key)];
    let mut reader = client(reader).await;
    let mut pace = tokio::time::interval(Duration::from_millis(300));
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        pace.tick().await;
        let read = reader.get(get("sessions", key)).await.unwrap().into_inner();
        assert!(read.found, "the session expired while it was being read");
    }
    for (site, node) in [(1, first), (2, second)]
        .into_iter()
        .flat_map(|(site, s)| s.nodes.iter().map(move |n| (site, n)))
    {
        assert!(
            found(node, "sessions", key).await,
            "site{site}/{} expired a session read elsewhere",
            node.spec().name
        );
    }
}

#[tokio::test]
async fn sync_backups_of_writes_in_flight_together_share_round_trips() {
    let (sites, proxy) = TwoSites::start_behind_proxy(1, |_, name| NodeSpec::new(name))
        .await
        .unwrap();
    proxy.set_delay(Direction::Both, Duration::from_millis(20));
    const WRITES: usize = 600;
    let [first, second] = &sites.sites;
    let writer = client(&first.nodes[0]).await;
    let acknowledged: Vec<(usize, u64)> = stream::iter(0..WRITES)
        .map(|i| {
            let mut writer = writer.clone();
            async move {
                let written = writer
                    .put(put("sessions", &format!("b{i}"), "v"))
                    .await
                    .unwrap()
                    .into_inner();
                (i, written.version)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    // Each backup was answered on its own: every acknowledged write is in site 2.
    let mut reader = client(&second.nodes[0]).await;
    for (i, version) in acknowledged {
        let seen = reader
            .get(get("sessions", &format!("b{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.metadata.map(|m| m.version), Some(version), "key b{i}");
    }
    let batches = http::metric(
        first.nodes[0].http_addr(),
        r#"sitegrid_backup_batches_total{site="site2"}"#,
    )
    .await
    .unwrap();
    assert!(
        batches > 0.0 && batches < WRITES as f64 / 4.0,
        "{batches} batches carried {WRITES} backups"
    );
    // Every batch went on the backup stream, none fell back to a call of its own.
    let streamed = http::metric(
        first.nodes[0].http_addr(),
        r#"sitegrid_backup_batches_answered_total{site="site2",via="stream"}"#,
    )
    .await
    .unwrap();
    assert_eq!(streamed, batches, "batches answered on the backup stream");
}

#[tokio::test]
async fn sync_backups_to_a_peer_without_backup_streams_go_as_calls_until_it_has_them() {
    // Site 2 answers BackupStream with UNIMPLEMENTED, as a node of the previous version
    // would: site 1 must send its backups as BackupBatch calls, not fail its writes.
    let mut sites = TwoSites::start(
        1,
        |index, name| {
            let spec = NodeSpec::new(name);
            if index == 1 {
                spec.with_fault("no-backup-stream")
            } else {
                spec
            }
        },
        |_, peers| peers.iter().map(|a| a.to_string()).collect(),
    )
    .await
    .unwrap();
    let [first, second] = &mut sites.sites;
    let mut writer = client(&first.nodes[0]).await;
    let mut reader = client(&second.nodes[0]).await;
    for i in 0..20 {
        let key = format!("old-peer-{i}");
        let written = writer
            .put(put("sessions", &key, "v"))
            .await
            .expect("a write backed up to a peer without backup streams")
            .into_inner();
        let seen = reader
            .get(get("sessions", &key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            seen.metadata.map(|m| m.version),
            Some(written.version),
            "{key}"
        );
    }
    let metric = |series: &'static str| http::metric(first.nodes[0].http_addr(), series);
    // Every batch went as a BackupBatch call (not refused whole and sent again one
    // backup at a time), and none on a stream.
    let batches = metric(r#"sitegrid_backup_batches_total{site="site2"}"#)
        .await
        .unwrap();
    let called = metric(r#"sitegrid_backup_batches_answered_total{site="site2",via="call"}"#)
        .await
        .unwrap();
    let streamed = metric(r#"sitegrid_backup_batches_answered_total{site="site2",via="stream"}"#)
        .await
        .unwrap();
    assert!(batches >= 20.0, "{batches} batches for 20 writes");
    assert_eq!(
        (called, streamed),
        (batches, 0.0),
        "batches answered by call, on a stream"
    );

    // Site 2 is upgraded (restarted with streams): site 1 tries the stream again after
    // a while and sends its batches there, without a restart of its own.
    second.nodes[0].set_faults(Vec::new());
    second.nodes[0].restart().await.unwrap();
    let metrics = first.nodes[0].http_addr();
    let writer = client(&first.nodes[0]).await;
    let mut i = 0;
    eventually(
        "a batch on the stream of the upgraded peer",
        Duration::from_secs(60),
        || {
            // Writes may fail while site 2 restarts; only the stream's use is awaited.
            i += 1;
            let mut writer = writer.clone();
            let key = format!("upgraded-{i}");
            async move {
                let _ = writer.put(put("sessions", &key, "v")).await;
                let series = r#"sitegrid_backup_batches_answered_total{site="site2",via="stream"}"#;
                http::metric(metrics, series).await.unwrap() > 0.0
            }
        },
    )
    .await
    .unwrap();
}
