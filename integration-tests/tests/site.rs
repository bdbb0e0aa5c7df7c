//! A site of three real nodes: membership, forwarding, replication, failures, joins.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sitegrid_client::WriteOptions;
use sitegrid_integration_tests::checks::{one_winner_per_token, token_attempt};
use sitegrid_integration_tests::requests::{get, put, remove};
use sitegrid_integration_tests::{NodeAddrs, NodeProcess, NodeSpec, Site, eventually, http};
use sitegrid_proto::v1::admin_client::AdminClient;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;
use tonic::transport::Channel;

async fn client(node: &NodeProcess) -> CacheClient<Channel> {
    CacheClient::new(node.channel().await.unwrap())
}

/// (value, version) of `key` on `node`, if present.
async fn read(node: &NodeProcess, cache: &str, key: &str) -> Option<(Bytes, u64)> {
    let got = client(node)
        .await
        .get(get(cache, key))
        .await
        .unwrap()
        .into_inner();
    got.found
        .then(|| (got.value, got.metadata.unwrap().version))
}

/// Puts `value` at `key` in `work` through `node`; the version written.
async fn put_work(node: &NodeProcess, key: &str, value: &str) -> u64 {
    client(node)
        .await
        .put(put("work", key, value))
        .await
        .unwrap()
        .into_inner()
        .version
}

/// Waits until every node sees `count` ready members.
async fn wait_for_ready_members(site: &Site, count: usize) {
    for node in &site.nodes {
        let admin = AdminClient::new(node.channel().await.unwrap());
        eventually(
            "every node to see the ready members",
            Duration::from_secs(30),
            || {
                let mut admin = admin.clone();
                async move {
                    let status = admin
                        .cluster_status(ClusterStatusRequest {})
                        .await
                        .unwrap()
                        .into_inner();
                    status.members.iter().filter(|m| m.ready).count() == count
                }
            },
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn three_nodes_form_a_site_and_every_acknowledged_write_is_on_every_node() {
    let site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    // Writes through every node, to keys whose primaries are spread over all three.
    let mut written = HashMap::new();
    for i in 0..60 {
        let node = &site.nodes[i % 3];
        let key = format!("k{i}");
        let version = put_work(node, &key, &format!("v{i}")).await;
        // Read-your-write on every node, right after the acknowledgement.
        for other in &site.nodes {
            let (value, seen) = read(other, "work", &key).await.expect("present everywhere");
            assert_eq!(value, format!("v{i}").as_bytes());
            assert_eq!(seen, version);
        }
        written.insert(key, version);
    }
    assert_eq!(written.len(), 60);
}

/// Batches of changes `node` received from the site's primaries `via` "stream" or "call".
async fn batches_received(node: &NodeProcess, via: &str) -> f64 {
    let series = format!("sitegrid_replication_batches_received_total{{via=\"{via}\"}}");
    http::metric(node.http_addr(), &series).await.unwrap()
}

#[tokio::test]
async fn a_member_without_apply_streams_is_sent_apply_calls_until_it_has_them() {
    // Node 3 answers ApplyStream with UNIMPLEMENTED, as a node of the previous version
    // does during a rolling upgrade: primaries must send it Apply calls instead, not
    // retry the stream until they leave it out.
    let mut site = Site::start_with(3, |name| {
        let spec = NodeSpec::new(name);
        if name == "n3" {
            spec.with_fault("no-apply-stream")
        } else {
            spec
        }
    })
    .await
    .unwrap();
    wait_for_ready_members(&site, 3).await;
    // Writes to keys whose primaries are nodes 1 and 2 (through either: a write reaches
    // its primary), each on node 3 once acknowledged.
    let mut sent = 0;
    for i in 0.. {
        let key = format!("k{i}");
        if site.primary_of(&key) == 2 {
            continue;
        }
        let version = put_work(&site.nodes[i % 2], &key, &format!("v{i}")).await;
        let (value, seen) = read(&site.nodes[2], "work", &key)
            .await
            .expect("node 3 has the write once it is acknowledged");
        assert_eq!((value, seen), (Bytes::from(format!("v{i}")), version));
        sent += 1;
        if sent == 30 {
            break;
        }
    }
    assert!(batches_received(&site.nodes[2], "call").await >= 1.0);
    assert_eq!(batches_received(&site.nodes[2], "stream").await, 0.0);
    // Nodes 1 and 2 send each other their changes on streams.
    assert!(batches_received(&site.nodes[0], "stream").await >= 1.0);
    assert_eq!(batches_received(&site.nodes[0], "call").await, 0.0);
    for node in &site.nodes[..2] {
        assert!(!node.log().contains("left out"), "nobody was left out");
    }

    // Node 3 is upgraded (restarted with streams): the primaries send it their changes
    // on streams from then on, without a restart of their own.
    site.nodes[2].set_faults(Vec::new());
    site.nodes[2].restart().await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let writer = client(&site.nodes[0]).await;
    let mut i = 0;
    let upgraded = &site.nodes[2];
    eventually(
        "a batch on the stream of the upgraded member",
        Duration::from_secs(60),
        || {
            i += 1;
            let mut writer = writer.clone();
            let key = format!("upgraded-{i}");
            async move {
                writer.put(put("work", &key, "v")).await.unwrap();
                batches_received(upgraded, "stream").await > 0.0
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn nodes_that_start_with_one_slot_serve_with_different_ones_and_never_assign_one_version() {
    // Every node tries slot 5 first: the versions of two of them would collide. (Keys
    // before any section header go to the generated `[node]` section.)
    let site = Site::start(3, "first_slot = 5").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let mut views = Vec::new();
    for node in &site.nodes {
        let status = AdminClient::new(node.channel().await.unwrap())
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let seen: std::collections::BTreeMap<String, u32> = status
            .members
            .iter()
            .map(|m| (m.node.clone(), m.slot))
            .collect();
        views.push(seen.clone());
        let mut distinct: Vec<u32> = seen.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            3,
            "slots as {} sees them: {seen:?}",
            node.spec().name
        );
    }
    assert!(
        views.iter().all(|v| *v == views[0]),
        "every node sees the same slots: {views:?}"
    );
    // Each node's versions carry its own slot.
    let slot_of = views.swap_remove(0);
    for i in 0..30 {
        let version = put_work(&site.nodes[0], &format!("slot-{i}"), "v").await;
        let slot = sitegrid_proto::version::slot_of(version);
        assert!(
            slot_of.values().any(|s| *s == u32::from(slot)),
            "version {version} has slot {slot}, not one of {slot_of:?}"
        );
    }
}

#[tokio::test]
async fn racing_put_if_absent_through_different_nodes_has_exactly_one_winner_per_token() {
    let site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(client(&site.nodes[i % 3]).await);
    }
    const TOKENS: usize = 500;
    // Every client tries every token, in a different order.
    let attempts = clients.iter().enumerate().flat_map(|(c, client)| {
        (0..TOKENS).map(move |t| {
            let (token, request) = token_attempt(c, t, TOKENS);
            let mut client = client.clone();
            async move {
                (
                    token,
                    c,
                    client.put_if_absent(request).await.unwrap().into_inner(),
                )
            }
        })
    });
    let answers: Vec<_> = stream::iter(attempts).buffer_unordered(64).collect().await;
    let winners = one_winner_per_token(&answers, TOKENS);
    // And every node holds the winner.
    for token in [0, TOKENS / 2, TOKENS - 1] {
        let (winner, version) = winners[&token];
        for node in &site.nodes {
            let (value, seen) = read(node, "actionTokens", &format!("token-{token}"))
                .await
                .unwrap();
            assert_eq!(value, format!("client-{winner}").as_bytes());
            assert_eq!(seen, version);
        }
    }
}

#[tokio::test]
async fn a_killed_node_is_left_out_and_catches_up_when_it_comes_back() {
    let mut site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    for i in 0..50 {
        client(&site.nodes[0])
            .await
            .put(put("sessions", &format!("before-{i}"), "v"))
            .await
            .unwrap();
    }
    site.nodes[2].kill().unwrap();
    // Writes go on without it (once it is left out), through both remaining nodes.
    for i in 0..50 {
        let node = &site.nodes[i % 2];
        client(node)
            .await
            .put(put("sessions", &format!("during-{i}"), "v"))
            .await
            .unwrap();
    }
    client(&site.nodes[0])
        .await
        .remove(remove("sessions", "before-0"))
        .await
        .unwrap();
    site.nodes[2].restart().await.unwrap();
    site.wait_all_ready().await.unwrap();
    let back = &site.nodes[2];
    for i in 1..50 {
        assert!(
            read(back, "sessions", &format!("before-{i}"))
                .await
                .is_some(),
            "before-{i}"
        );
    }
    for i in 0..50 {
        let expected = read(&site.nodes[0], "sessions", &format!("during-{i}")).await;
        assert_eq!(
            read(back, "sessions", &format!("during-{i}")).await,
            expected,
            "during-{i}"
        );
    }
    assert!(
        read(back, "sessions", "before-0").await.is_none(),
        "the removal reached it"
    );
}

#[tokio::test]
async fn a_write_whose_primary_died_midway_ends_alike_on_every_member() {
    // The primary of such a key sends its write to one other member, then dies.
    let site = Site::start_with(3, |name| NodeSpec::new(name).with_fault("crash-mid-write"))
        .await
        .unwrap();
    wait_for_ready_members(&site, 3).await;
    let key = "crash-mid-write-1";
    let dying = site.primary_of(key);
    let answer = client(&site.nodes[dying])
        .await
        .put(put("work", key, "half-written"))
        .await;
    assert!(answer.is_err(), "its primary died before answering");
    // No client retries it: the survivors, one holding the write and one not, must come
    // to hold the same (the write, since one member took it).
    let survivors: Vec<&NodeProcess> = (0..3)
        .filter(|i| *i != dying)
        .map(|i| &site.nodes[i])
        .collect();
    eventually(
        "both survivors to hold the half-written write",
        Duration::from_secs(30),
        || async {
            let mut held = Vec::new();
            for node in &survivors {
                let mut client = client(node).await;
                let Ok(got) = client.get(get("work", key)).await else {
                    return false; // not serving yet
                };
                held.push(got.into_inner().value);
            }
            held.iter().all(|value| &value[..] == b"half-written")
        },
    )
    .await
    .unwrap();
}

/// Puts keys `{prefix}-{w}-{i}` of `cache` through node 0 from `writers` tasks while node
/// 1 (stopped) restarts and catches up, and `after_ready` more each once every node
/// shows both ready; returns the keys acknowledged.
async fn write_while_node_1_rejoins(
    site: &mut Site,
    cache: &'static str,
    prefix: &str,
    writers: usize,
    after_ready: usize,
) -> Vec<String> {
    let writer = client(&site.nodes[0]).await;
    let ready = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (mut writer, ready) = (writer.clone(), ready.clone());
            let prefix = format!("{prefix}-{w}");
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut since_ready = 0;
                for i in 0.. {
                    if ready.load(Ordering::Relaxed) {
                        if since_ready == after_ready {
                            break;
                        }
                        since_ready += 1;
                    }
                    let key = format!("{prefix}-{i}");
                    if writer.put(put(cache, &key, "v")).await.is_ok() {
                        acknowledged.push(key);
                    }
                }
                acknowledged
            })
        })
        .collect();
    site.nodes[1].restart().await.unwrap();
    wait_for_ready_members(site, 2).await;
    ready.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged
}

/// Asserts that node 1 holds every key of `acknowledged` in `cache`: at once, or within
/// 10 s for one acknowledged without it because it was too slow to answer and left out
/// (it catches up again as soon as it hears so, long before the periodic repair, 30 s).
/// `when` names the moment in the failure, which shows both nodes' logs.
async fn assert_on_node_1(site: &Site, cache: &str, acknowledged: &[String], when: &str) {
    let back = &site.nodes[1];
    let mut missing = Vec::new();
    for key in acknowledged {
        if read(back, cache, key).await.is_none() {
            missing.push(key.clone());
        }
    }
    let arrived = eventually("the left-out writes", Duration::from_secs(10), || async {
        for key in &missing {
            match client(back).await.get(get(cache, key)).await {
                Ok(got) if got.get_ref().found => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let mut on_the_other = Vec::new();
    if arrived.is_err() {
        for node in &site.nodes {
            eprintln!("--- {} ---\n{}", node.spec().name, node.log());
        }
        // Lost by the site, or only not copied to this node?
        for key in &missing {
            if read(&site.nodes[0], cache, key).await.is_some() {
                on_the_other.push(key.clone());
            }
        }
    }
    assert!(
        arrived.is_ok(),
        "{when}: {} of {} acknowledged writes missing on the node that caught up: {:?}; \
         of those, held by the other node: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(10)],
        &on_the_other[..on_the_other.len().min(10)]
    );
}

#[tokio::test]
async fn a_node_catching_up_with_its_clock_ahead_keeps_the_writes_that_reached_it_meanwhile() {
    let mut site = Site::start(2, "").await.unwrap();
    wait_for_ready_members(&site, 2).await;
    let writer = client(&site.nodes[0]).await;
    // Enough data that the copy takes a while, in every range.
    stream::iter(0..2_000)
        .for_each_concurrent(32, |i| {
            let mut writer = writer.clone();
            async move {
                writer
                    .put(put("sessions", &format!("old-{i}"), "v"))
                    .await
                    .unwrap();
            }
        })
        .await;
    // A few rounds: how many writes land while it catches up varies.
    for round in 1..=3 {
        site.nodes[1].kill().unwrap();
        // Its clock runs ahead of the site's when it comes back (as a restored clock
        // does): the writes it gets while catching up are older than its own time.
        site.nodes[1].set_clock_offset(20_000 * round);
        let acknowledged =
            write_while_node_1_rejoins(&mut site, "sessions", &format!("live-{round}"), 16, 0)
                .await;
        // Each was on both nodes when acknowledged, or copied.
        assert_on_node_1(&site, "sessions", &acknowledged, &format!("round {round}")).await;
    }
}

#[tokio::test]
async fn writes_while_the_primary_sees_a_joiner_turn_ready_reach_it() {
    // Node 1 runs every write while node 2 catches up, sending it each one as a joiner.
    // When its view shows node 2 ready, node 2 turns from a joiner into a ready member of
    // its writes' targets; node 1 waits a moment between publishing the view and tidying
    // its joiners (a fault), so writes land in between. None may miss node 2.
    let mut site = Site::start_with(2, |name| match name {
        "n1" => NodeSpec::new(name).with_fault("tidy-late"),
        _ => NodeSpec::new(name),
    })
    .await
    .unwrap();
    wait_for_ready_members(&site, 2).await;
    site.nodes[1].kill().unwrap();
    // Until well after node 1 saw node 2 ready: 100 writes each after the test did.
    let acknowledged = write_while_node_1_rejoins(&mut site, "work", "turn", 8, 100).await;
    assert_on_node_1(
        &site,
        "work",
        &acknowledged,
        "node 1 seeing node 2 turn ready",
    )
    .await;
}

#[tokio::test]
async fn a_write_a_node_took_just_before_it_catches_up_again_stays_there() {
    // Node 0, the key's primary, holds a write back (a fault) after node 1 took it and
    // before applying it itself. Node 1 meanwhile is paused, left out, and catches up
    // from node 0, which lacks the write: node 1 must keep it, not take it for a key that
    // node 0 removed long ago (its catch-up waits for the writes under way, then copies
    // again). And when it confirms its join its view has lost node 0 (a fault; after a
    // freeze gossip takes the others for dead for a moment): it confirms with its donor.
    let site = Site::start_with(2, |name| {
        NodeSpec::new(name)
            .with_fault("slow-commit")
            .with_fault("confirm-without-view")
    })
    .await
    .unwrap();
    wait_for_ready_members(&site, 2).await;
    let primary_is_0 = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|key| site.primary_of(key) == 0)
            .unwrap()
    };
    let key = primary_is_0("slow-commit");
    let writer = {
        let mut writer = client(&site.nodes[0]).await;
        let key = key.clone();
        tokio::spawn(async move { writer.put(put("sessions", &key, "v")).await })
    };
    eventually(
        "node 1 to take the write",
        Duration::from_secs(10),
        || async { read(&site.nodes[1], "sessions", &key).await.is_some() },
    )
    .await
    .unwrap();
    assert!(read(&site.nodes[0], "sessions", &key).await.is_none());

    let count = |node: &NodeProcess, line: &str| node.log().matches(line).count();
    let (catching_up, caught_up) = (
        count(&site.nodes[1], "catching up donors"),
        count(&site.nodes[1], "caught up donors"),
    );
    site.nodes[1].pause().unwrap();
    let other = primary_is_0("other");
    eventually(
        "node 0 to write without node 1",
        Duration::from_secs(30),
        || async {
            client(&site.nodes[0])
                .await
                .put(put("sessions", &other, "v"))
                .await
                .is_ok()
        },
    )
    .await
    .unwrap();
    site.nodes[1].resume().unwrap();
    eventually(
        "node 1 to begin catching up",
        Duration::from_secs(30),
        || async { count(&site.nodes[1], "catching up donors") > catching_up },
    )
    .await
    .unwrap();
    assert!(
        !writer.is_finished(),
        "the fault held the write back for less time than node 1 took to begin catching up"
    );
    writer.await.unwrap().unwrap();
    eventually("node 1 to catch up", Duration::from_secs(30), || async {
        count(&site.nodes[1], "caught up donors") > caught_up
    })
    .await
    .unwrap();
    assert!(
        read(&site.nodes[1], "sessions", &key).await.is_some(),
        "an acknowledged write node 1 took is gone from it:\n{}",
        site.nodes[1].log()
    );
}

#[tokio::test]
async fn a_member_left_out_while_it_still_hears_the_site_serves_nothing_it_missed() {
    // Node 1 gossips as usual but holds back its answers to writes of some keys (a
    // fault), so node 0, their primary, leaves it out while it still hears the site and
    // serves. Once node 0 acknowledges such a write, node 1 must not answer a read of the
    // key with the state before it: it has stopped serving, or it has the write.
    let site = Site::start_with(2, |name| NodeSpec::new(name).with_fault("slow-apply"))
        .await
        .unwrap();
    wait_for_ready_members(&site, 2).await;
    let key = (0..)
        .map(|i| format!("slow-apply-{i}"))
        .find(|key| site.primary_of(key) == 0)
        .unwrap();
    let mut reader = client(&site.nodes[1]).await;
    assert!(
        !reader
            .get(get("work", &key))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    let written = put_work(&site.nodes[0], &key, "v").await;
    match reader.get(get("work", &key)).await {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(got) => {
            let got = got.into_inner();
            assert!(
                got.found,
                "node 1 answered a read with what it missed after the write was \
                 acknowledged"
            );
            assert_eq!(got.metadata.unwrap().version, written);
        }
    }
}

#[tokio::test]
async fn a_retried_removal_gets_its_first_answer_from_a_node_that_restarted_since() {
    let mut site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let key = "retried-removal";
    let primary = site.primary_of(key);
    put_work(&site.nodes[primary], key, "the-code").await;
    let removal = RemoveRequest {
        request_id: "remove-once".into(),
        ..remove("work", key)
    };
    let first = client(&site.nodes[primary])
        .await
        .remove(removal.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.removed);
    // The primary restarts (forgetting the answers it kept) and, being the key's primary
    // again, gets the retry: it copied the answer from the others while catching up.
    site.nodes[primary].kill().unwrap();
    site.nodes[primary].restart().await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let retry = client(&site.nodes[primary])
        .await
        .remove(removal)
        .await
        .unwrap()
        .into_inner();
    assert!(retry.removed, "the retry must say it removed the key");
    assert_eq!(retry.version, first.version);
    assert_eq!(&retry.previous.unwrap().value[..], b"the-code");
}

#[tokio::test]
async fn a_brand_new_node_copies_everything_before_it_serves() {
    let mut site = Site::start(2, "").await.unwrap();
    wait_for_ready_members(&site, 2).await;
    let mut versions = HashMap::new();
    for i in 0..300usize {
        let cache = if i.is_multiple_of(2) {
            "work"
        } else {
            "offlineSessions"
        };
        let answer = client(&site.nodes[i % 2])
            .await
            .put(put(cache, &format!("k{i}"), "v"))
            .await
            .unwrap();
        versions.insert((cache, format!("k{i}")), answer.into_inner().version);
    }
    let index = site.add("n3", "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let new = &site.nodes[index];
    for ((cache, key), version) in &versions {
        assert_eq!(
            read(new, cache, key).await.map(|(_, v)| v),
            Some(*version),
            "{cache}/{key}"
        );
    }
    // And it takes part in writes from now on.
    let version = client(new)
        .await
        .put(put("work", "after", "v"))
        .await
        .unwrap()
        .into_inner()
        .version;
    for node in &site.nodes {
        assert_eq!(
            read(node, "work", "after").await.map(|(_, v)| v),
            Some(version)
        );
    }
}

#[tokio::test]
async fn a_listener_on_one_node_sees_writes_made_through_another() {
    let site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let mut stream = client(&site.nodes[2])
        .await
        .listen(ListenRequest {
            caches: vec!["work".into()],
            with_values: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut written = HashMap::new();
    for i in 0..30 {
        let key = format!("k{i}");
        let version = put_work(&site.nodes[i % 2], &key, "v").await;
        written.insert(Bytes::from(key), version);
    }
    let mut seen = HashMap::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        seen.insert(event.key, event.version);
    }
    assert_eq!(seen, written);
}

#[tokio::test]
async fn racing_tokens_through_different_nodes_during_a_node_kill_have_one_winner_each() {
    let mut site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let endpoints: Vec<String> = site.nodes.iter().map(|n| n.endpoint()).collect();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let endpoint = tonic::transport::Endpoint::from_shared(endpoints[i % 3].clone())
                .unwrap()
                .timeout(Duration::from_secs(10));
            CacheClient::new(endpoint.connect_lazy())
        })
        .collect();
    const TOKENS: usize = 10_000;
    let total = TOKENS * clients.len();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut attempts = Vec::new();
    for c in 0..clients.len() {
        for t in 0..TOKENS {
            let all = clients.clone();
            let answered = answered.clone();
            attempts.push(async move {
                // The same request on every retry: the attempt applies once.
                let (token, request) = token_attempt(c, t, TOKENS);
                // Retry through the nodes until the answer is known.
                for attempt in 0..200 {
                    let mut client = all[(c + attempt) % all.len()].clone();
                    if let Ok(answer) = client.put_if_absent(request.clone()).await {
                        answered.fetch_add(1, Ordering::Relaxed);
                        return (token, c, answer.into_inner());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("token {token} of client {c} never got an answer");
            });
        }
    }
    let racing = tokio::spawn(
        stream::iter(attempts)
            .buffer_unordered(64)
            .collect::<Vec<_>>(),
    );
    // Kill a node while the race is on.
    eventually(
        "a tenth of the race answered",
        Duration::from_secs(120),
        || {
            let answered = answered.clone();
            async move { answered.load(Ordering::Relaxed) > total / 10 }
        },
    )
    .await
    .unwrap();
    site.nodes[1].kill().unwrap();
    assert!(
        answered.load(Ordering::Relaxed) < total / 2,
        "the race was mostly over before the kill"
    );
    let answers = racing.await.unwrap();
    one_winner_per_token(&answers, TOKENS);
}

/// The sum over the site's nodes of the counter `name` on `/metrics` (0 where absent).
async fn counter_total(site: &Site, name: &str) -> u64 {
    let mut total = 0;
    for node in &site.nodes {
        total += http::metric(node.http_addr(), name).await.unwrap() as u64;
    }
    total
}

#[tokio::test]
async fn a_client_given_one_node_learns_the_site_writes_to_primaries_and_outlives_that_node() {
    let mut site = Site::start(3, "").await.unwrap();
    wait_for_ready_members(&site, 3).await;
    let client = site.client_knowing_every_node().await.unwrap();
    let mut learned = client.endpoints();
    learned.sort();
    let mut expected: Vec<String> = site.nodes.iter().map(NodeProcess::endpoint).collect();
    expected.sort();
    assert_eq!(learned, expected);

    // Writes go straight to their primaries: no node forwards any of them.
    let sessions = client.cache("sessions");
    let forwarded_before = counter_total(&site, "sitegrid_writes_forwarded_total").await;
    for i in 0..90 {
        let key = format!("s{i}");
        sessions
            .put(key.clone(), key, WriteOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(
        counter_total(&site, "sitegrid_writes_forwarded_total").await,
        forwarded_before,
        "a topology-aware client sent writes to nodes that had to forward them"
    );

    // The node the client was given dies; the client goes on through the others.
    site.nodes[0].kill().unwrap();
    for i in 90..150 {
        let key = format!("s{i}");
        sessions
            .put(key.clone(), key, WriteOptions::default())
            .await
            .unwrap();
    }
    for node in &site.nodes[1..] {
        for i in 0..150 {
            let key = format!("s{i}");
            let (value, _) = read(node, "sessions", &key).await.expect("written");
            assert_eq!(value, key.as_bytes());
        }
    }
}

#[tokio::test]
async fn seeds_given_by_dns_name_form_a_site() {
    // Node 1 is the only seed, named `localhost` rather than by address.
    let first = NodeAddrs::free();
    let seed = format!("localhost:{}", first.gossip.port());
    let mut nodes = vec![NodeProcess::launch_at(NodeSpec::new("n1"), first).unwrap()];
    for name in ["n2", "n3"] {
        let spec = NodeSpec {
            seeds: vec![seed.clone()],
            ..NodeSpec::new(name)
        };
        nodes.push(NodeProcess::launch_at(spec, NodeAddrs::free()).unwrap());
    }
    let site = Site { nodes };
    site.wait_all_ready().await.unwrap();
    wait_for_ready_members(&site, 3).await;
    // n2 and n3 met each other through the seed, and replicate to each other.
    let version = client(&site.nodes[1])
        .await
        .put(put("sessions", "by-name", "v"))
        .await
        .unwrap()
        .into_inner()
        .version;
    let (_, seen) = read(&site.nodes[2], "sessions", "by-name").await.unwrap();
    assert_eq!(seen, version);
}
