//! Site state across real processes: a dead peer taken offline by heartbeats alone,
//! fencing in a partition, and bring-online with a delta resync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sitegrid_integration_tests::checks::{
    contents, one_winner_per_token, take_offline_deadline, token_attempt,
};
use sitegrid_integration_tests::requests::{put, remove};
use sitegrid_integration_tests::{Direction, NodeProcess, NodeSpec, TwoSites, eventually, http};
use sitegrid_proto::v1::admin_client::AdminClient;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;

const HEARTBEAT: Duration = Duration::from_millis(200);
const MIN_WAIT: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(30);

/// Site 1 (`index` 0) holds the grant (`prefer`); both send heartbeats every
/// [`HEARTBEAT`] and take a peer offline after 3 failures over [`MIN_WAIT`]; token backups
/// time out after 1 s.
fn spec(index: usize, name: &str) -> NodeSpec {
    NodeSpec::new(name).with_toml(&format!(
        "[sites.take_offline]\nafter_failures = 3\nmin_wait = \"{}ms\"\n\
         [relay]\nheartbeat_interval = \"{}ms\"\nprefer = {}\n\
         [caches.actionTokens]\nbackup = {{ site{} = {{ timeout = \"1s\" }} }}\n",
        MIN_WAIT.as_millis(),
        HEARTBEAT.as_millis(),
        index == 0,
        2 - index
    ))
}

async fn cache(node: &NodeProcess) -> CacheClient<Channel> {
    CacheClient::new(node.channel().await.unwrap())
}

async fn site_status(node: &NodeProcess) -> SiteStatusResponse {
    AdminClient::new(node.channel().await.unwrap())
        .site_status(SiteStatusRequest { here_only: false })
        .await
        .unwrap()
        .into_inner()
}

async fn command(node: &NodeProcess, site: &str, action: SiteAction) -> PeerSiteStatus {
    AdminClient::new(node.channel().await.unwrap())
        .site_command(SiteCommandRequest {
            site: site.into(),
            action: action as i32,
            forwarded: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

/// Has `holder`'s site take its peer `peer_site` (whose node is `peer`) offline, and
/// waits until the peer has fenced itself.
async fn take_offline(holder: &NodeProcess, peer: &NodeProcess, peer_site: &str) {
    let status = command(holder, peer_site, SiteAction::TakeOffline).await;
    assert_eq!(status.state, "offline");
    eventually(&format!("{peer_site} to be fenced"), SETTLE, || async {
        !site_status(peer).await.fenced.is_empty()
    })
    .await
    .unwrap();
}

/// The one peer's state at `node`: (state, epoch).
async fn peer_state(node: &NodeProcess) -> (String, u64) {
    let status = site_status(node).await;
    let peer = &status.peers[0];
    (peer.state.clone(), peer.epoch)
}

async fn ready(node: &NodeProcess) -> bool {
    matches!(http::get(node.http_addr(), "/ready").await, Ok((200, _)))
}

#[tokio::test]
async fn a_dead_site_is_taken_offline_by_heartbeats_alone_and_the_survivor_takes_writes() {
    let mut sites = TwoSites::start(2, spec, |_, peers| {
        peers.iter().map(|a| a.to_string()).collect()
    })
    .await
    .unwrap();
    let [first, second] = &mut sites.sites;
    let mut tokens = cache(&first.nodes[0]).await;
    let stored = tokens
        .put_if_absent(token_attempt(0, 0, 1_000).1)
        .await
        .unwrap()
        .into_inner()
        .stored;
    assert!(stored);

    for node in &mut second.nodes {
        node.kill().unwrap();
    }
    let killed = Instant::now();
    // No writes from here on: heartbeats alone take the dead site offline.
    let nodes = &first.nodes;
    eventually("site 1 to take site 2 offline", SETTLE, || async {
        let states = stream::iter(nodes)
            .then(peer_state)
            .collect::<Vec<_>>()
            .await;
        states.iter().all(|s| s.0 == "offline" && *s == states[0])
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    println!("site 2 taken offline {took:?} after it died");
    assert!(
        took <= take_offline_deadline(MIN_WAIT, HEARTBEAT),
        "took {took:?}"
    );
    let status = site_status(&nodes[1]).await;
    assert!(status.fenced.is_empty(), "{status:?}");
    assert!(status.peers[0].reason.contains("no answer"), "{status:?}");
    // The survivor takes writes to caches with sync backups again, on every node.
    for node in nodes {
        let answer = cache(node)
            .await
            .put_if_absent(token_attempt(1, 1, 1_000).1)
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert!(ready(node).await);
    }
}

#[tokio::test]
async fn in_a_partition_one_site_takes_tokens_and_bring_online_makes_both_sites_equal() {
    const TOKENS: usize = 300;
    const KEYS: usize = 100;
    let (sites, proxies) = TwoSites::start_partitionable(spec).await.unwrap();
    let [first, second] = [&sites.sites[0].nodes[0], &sites.sites[1].nodes[0]];
    let mut in_first = cache(first).await;
    let mut in_second = cache(second).await;
    for i in 0..KEYS {
        in_first
            .put(put("sessions", &format!("k{i}"), "before"))
            .await
            .unwrap();
    }

    for proxy in &proxies {
        proxy.blackhole(Direction::Both);
    }
    // Clients on both sides race for the same tokens until the partition settles.
    let racing = Arc::new(AtomicBool::new(true));
    let mut racers = Vec::new();
    for (c, node) in [first, second, first, second].into_iter().enumerate() {
        let client = cache(node).await;
        let racing = racing.clone();
        racers.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut attempt = 0;
            while racing.load(Ordering::Relaxed) {
                let (token, request) = token_attempt(c, attempt, TOKENS);
                if let Ok(answer) = client.clone().put_if_absent(request).await {
                    won.push((token, c, answer.into_inner()));
                }
                attempt += 1;
            }
            won
        }));
    }
    eventually("site 1 to take site 2 offline", SETTLE, || async {
        peer_state(first).await.0 == "offline"
    })
    .await
    .unwrap();
    eventually("site 2 to fence itself", SETTLE, || async {
        !site_status(second).await.fenced.is_empty()
    })
    .await
    .unwrap();
    assert!(!ready(second).await, "a fenced site reports not ready");
    assert!(ready(first).await);
    let refused = in_second
        .put(put("sessions", "k0", "from the fenced site"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("site1"), "{refused:?}");
    // While site 2 is offline, site 1 deletes and changes keys.
    for i in 0..10 {
        in_first
            .remove(remove("sessions", &format!("k{i}")))
            .await
            .unwrap();
        in_first
            .put(put("sessions", &format!("k{}", 10 + i), "during"))
            .await
            .unwrap();
    }
    racing.store(false, Ordering::Relaxed);
    let mut answers = Vec::new();
    for racer in racers {
        answers.extend(racer.await.unwrap());
    }
    assert!(
        answers.iter().any(|(_, c, a)| c % 2 == 0 && a.stored),
        "site 1 took tokens during the partition"
    );
    // Site 1 sweeps the tokens nobody won yet, so every token has a winner to check.
    for attempt in 0..TOKENS {
        let (token, request) = token_attempt(4, attempt, TOKENS);
        let answer = in_first.put_if_absent(request).await.unwrap().into_inner();
        answers.push((token, 4, answer));
    }
    one_winner_per_token(&answers, TOKENS);

    for proxy in &proxies {
        proxy.heal();
    }
    // Site 2 hears from site 1 again, which still holds it offline: it stays fenced.
    let healed = Instant::now();
    eventually("site 2 to hear from site 1 again", SETTLE, || async {
        let peer = site_status(second).await.peers[0].clone();
        peer.failures == 0 && peer.last_answer_ms > 0 && healed.elapsed() > 2 * HEARTBEAT
    })
    .await
    .unwrap();
    assert!(!site_status(second).await.fenced.is_empty());

    let status = command(first, "site2", SiteAction::BringOnline).await;
    assert_ne!(status.state, "offline", "{status:?}");
    eventually("site 2 to be back online and unfenced", SETTLE, || async {
        peer_state(first).await.0 == "online" && site_status(second).await.fenced.is_empty()
    })
    .await
    .unwrap();
    assert!(ready(second).await);
    // Both sites hold the same: the deletes and changes made while site 2 was offline
    // included, and every token. (Keys in doubt during the partition are reconciled
    // meanwhile, with new versions on both sites.)
    for (cache, prefix, count) in [("sessions", "k", KEYS), ("actionTokens", "token-", TOKENS)] {
        eventually(
            &format!("both sites to hold the same {cache}"),
            SETTLE,
            || async {
                contents(first, cache, prefix, count).await
                    == contents(second, cache, prefix, count).await
            },
        )
        .await
        .unwrap();
    }
    let deleted = contents(second, "sessions", "k", 10).await;
    assert_eq!(deleted, []);
    let changed = contents(second, "sessions", "k1", 1).await;
    assert_eq!(changed[0].1, "during");
}

#[tokio::test]
async fn bring_online_moves_only_what_differs_and_never_overwrites_a_newer_write() {
    const KEYS: usize = 20_000;
    const CHANGED: usize = KEYS / 100;
    const LIVE: usize = 50;
    let sites = TwoSites::start(1, spec, |_, peers| {
        peers.iter().map(|a| a.to_string()).collect()
    })
    .await
    .unwrap();
    let [first, second] = [&sites.sites[0].nodes[0], &sites.sites[1].nodes[0]];
    let writer = cache(first).await;
    let batches = (0..KEYS).collect::<Vec<_>>();
    stream::iter(batches.chunks(500))
        .for_each_concurrent(8, |chunk| {
            let mut writer = writer.clone();
            async move {
                let entries = chunk
                    .iter()
                    .map(|i| PutAllEntry {
                        key: Bytes::from(format!("s{i}")),
                        value: Bytes::from("v0"),
                        ..Default::default()
                    })
                    .collect();
                writer
                    .put_all(PutAllRequest {
                        cache: "sessions".into(),
                        entries,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        })
        .await;

    take_offline(second, first, "site1").await;
    // 1% of the keys change in site 2 while site 1 is offline: changed, deleted, new.
    let mut in_second = cache(second).await;
    for i in 0..CHANGED {
        let key = format!("s{}", i * 97 % KEYS);
        match i % 4 {
            0 => {
                in_second.remove(remove("sessions", &key)).await.unwrap();
            }
            1 => {
                in_second
                    .put(put("sessions", &format!("new{i}"), "v1"))
                    .await
                    .unwrap();
            }
            _ => {
                in_second.put(put("sessions", &key, "v1")).await.unwrap();
            }
        }
    }
    let status = site_status(second).await;
    assert_eq!(status.peers[0].offline_keys, CHANGED as u64, "{status:?}");

    // A writer keeps writing in site 2 while the resync runs: its last write must win.
    let writing = Arc::new(AtomicBool::new(true));
    let live = {
        let writing = writing.clone();
        let mut client = cache(second).await;
        tokio::spawn(async move {
            let mut round = 0;
            while writing.load(Ordering::Relaxed) || round < 2 {
                for k in 0..LIVE {
                    let key = format!("s{}", k * 97 % KEYS);
                    client
                        .put(put("sessions", &key, &format!("live{round}")))
                        .await
                        .unwrap();
                }
                round += 1;
            }
            round - 1
        })
    };
    command(second, "site1", SiteAction::BringOnline).await;
    eventually("site 1 to be online again", SETTLE, || async {
        peer_state(second).await.0 == "online"
    })
    .await
    .unwrap();
    writing.store(false, Ordering::Relaxed);
    let last_round = live.await.unwrap();

    let resync = site_status(second).await.peers[0].resync.clone().unwrap();
    println!("{resync:?}");
    assert!(resync.error.is_empty(), "{resync:?}");
    assert!(
        resync.keys_moved >= CHANGED as u64 - LIVE as u64,
        "{resync:?}"
    );
    assert!(
        resync.keys_moved <= 2 * (CHANGED + LIVE) as u64,
        "moved {} entries for {} changed keys",
        resync.keys_moved,
        CHANGED
    );
    let expected = contents(second, "sessions", "s", KEYS).await;
    assert_eq!(contents(first, "sessions", "s", KEYS).await, expected);
    assert_eq!(
        contents(first, "sessions", "new", CHANGED).await,
        contents(second, "sessions", "new", CHANGED).await
    );
    for k in 0..LIVE {
        let key = Bytes::from(format!("s{}", k * 97 % KEYS));
        let held = expected.iter().find(|(k, _, _)| *k == key).unwrap();
        assert_eq!(held.1, format!("live{last_round}").as_bytes(), "{key:?}");
    }

    // The resync's figures are in site 2's metrics (it ran there: its only node decides).
    let metric = |series: &'static str| async move {
        http::metric(second.http_addr(), &format!("{series}{{site=\"site1\"}}"))
            .await
            .unwrap()
    };
    assert_eq!(metric("sitegrid_resync_running").await, 0.0);
    assert_eq!(metric("sitegrid_resync_progress_ratio").await, 1.0);
    assert_eq!(
        metric("sitegrid_resync_keys_moved_total").await as u64,
        resync.keys_moved
    );
    assert_eq!(
        metric("sitegrid_resync_bytes_moved_total").await as u64,
        resync.bytes_moved
    );
    assert_eq!(
        metric("sitegrid_site_divergent_keys").await as u64,
        resync.keys_differing
    );
}

#[tokio::test]
async fn a_resync_leaves_both_sites_alike_when_the_merge_policy_keeps_the_older_state() {
    const KEYS: usize = 20;
    // `prefer-non-null`: a live entry wins over a removal, even a newer one.
    let sites = TwoSites::start(
        1,
        |index, name| spec(index, name).with_toml("[caches.sessions]\nmerge = \"prefer-non-null\""),
        |_, peers| peers.iter().map(|a| a.to_string()).collect(),
    )
    .await
    .unwrap();
    let [first, second] = [&sites.sites[0].nodes[0], &sites.sites[1].nodes[0]];
    let mut in_second = cache(second).await;
    for i in 0..KEYS {
        in_second
            .put(put("sessions", &format!("k{i}"), "v0"))
            .await
            .unwrap();
    }
    take_offline(first, second, "site2").await;
    // Site 1 removes half the keys and changes the others while site 2 is offline.
    let mut in_first = cache(first).await;
    for i in 0..KEYS {
        let key = format!("k{i}");
        if i % 2 == 0 {
            in_first.remove(remove("sessions", &key)).await.unwrap();
        } else {
            in_first.put(put("sessions", &key, "v1")).await.unwrap();
        }
    }

    command(first, "site2", SiteAction::BringOnline).await;
    eventually("site 2 to be online again", SETTLE, || async {
        peer_state(first).await.0 == "online"
    })
    .await
    .unwrap();
    let resync = site_status(first).await.peers[0].resync.clone().unwrap();
    assert!(resync.error.is_empty(), "{resync:?}");
    assert_eq!(resync.conflicts, KEYS as u64 / 2, "{resync:?}");
    // Site 2 kept its live entries over site 1's removals, and site 1 took them back.
    let held = contents(first, "sessions", "k", KEYS).await;
    assert_eq!(held, contents(second, "sessions", "k", KEYS).await);
    let values: Vec<(String, String)> = held
        .iter()
        .map(|(key, value, _)| {
            (
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = (0..KEYS)
        .map(|i| {
            (
                format!("k{i}"),
                if i % 2 == 0 { "v0" } else { "v1" }.to_string(),
            )
        })
        .collect();
    assert_eq!(values, expected);
}

#[tokio::test]
async fn the_scheduled_consistency_check_repairs_a_divergence_no_failure_recorded() {
    const KEYS: usize = 50;
    // Neither site ever takes the other offline: only the check can move anything.
    let spec = |_: usize, name: &str| {
        NodeSpec::new(name).with_toml(
            "[sites.take_offline]\nafter_failures = 3\nmin_wait = \"1h\"\n\
             [relay]\nheartbeat_interval = \"200ms\"\nconsistency_check_interval = \"500ms\"\n",
        )
    };
    let mut sites = TwoSites::start(1, spec, |_, peers| {
        peers.iter().map(|a| a.to_string()).collect()
    })
    .await
    .unwrap();
    // Site 2 runs alone for a while (no peer in its config) and takes writes that
    // nothing records for site 1.
    let second = &mut sites.sites[1].nodes[0];
    let with_peer = second.spec().extra_toml.clone();
    second.stop().await.unwrap();
    second.set_extra_toml(String::new());
    second.restart().await.unwrap();
    let mut alone = cache(second).await;
    for i in 0..KEYS {
        alone
            .put(put("sessions", &format!("alone{i}"), "v"))
            .await
            .unwrap();
    }
    second.stop().await.unwrap();
    second.set_extra_toml(with_peer);
    second.restart().await.unwrap();

    let [first, second] = [&sites.sites[0].nodes[0], &sites.sites[1].nodes[0]];
    eventually(
        "the check to bring site 2's writes to site 1",
        SETTLE,
        || async { contents(first, "sessions", "alone", KEYS).await.len() == KEYS },
    )
    .await
    .unwrap();
    assert_eq!(
        contents(first, "sessions", "alone", KEYS).await,
        contents(second, "sessions", "alone", KEYS).await
    );
    assert_eq!(peer_state(first).await.0, "online");
}

#[tokio::test]
async fn clear_with_all_sites_empties_the_cache_in_the_peer_site_too() {
    let sites = TwoSites::start(1, spec, |_, peers| {
        peers.iter().map(|a| a.to_string()).collect()
    })
    .await
    .unwrap();
    let [first, second] = [&sites.sites[0].nodes[0], &sites.sites[1].nodes[0]];
    let mut in_first = cache(first).await;
    let fill = || {
        let mut in_first = in_first.clone();
        async move {
            for i in 0..20 {
                in_first
                    .put(put("sessions", &format!("c{i}"), "v"))
                    .await
                    .unwrap();
            }
        }
    };
    fill().await;
    // A plain clear stays in its site.
    let here_only = cache(second)
        .await
        .clear(ClearRequest {
            cache: "sessions".into(),
            all_sites: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (here_only.removed, here_only.removed_in_peer_sites),
        (20, 0)
    );
    assert_eq!(contents(first, "sessions", "c", 20).await.len(), 20);
    fill().await;
    let cleared = in_first
        .clear(ClearRequest {
            cache: "sessions".into(),
            all_sites: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cleared.removed, cleared.removed_in_peer_sites), (20, 20));
    assert_eq!(contents(first, "sessions", "c", 20).await, []);
    assert_eq!(contents(second, "sessions", "c", 20).await, []);
}
