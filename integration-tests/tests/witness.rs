//! The witness across real processes: it grants one site of a partition, and only one,
//! the right to take the other offline; a holder that can no longer renew its grant
//! fences itself.

use std::time::{Duration, Instant};

use sitegrid_integration_tests::checks::{take_offline_deadline, token_attempt};
use sitegrid_integration_tests::{
    Direction, NodeProcess, NodeSpec, TwoSites, WitnessProcess, eventually, http,
};
use sitegrid_proto::v1::admin_client::AdminClient;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;

const HEARTBEAT: Duration = Duration::from_millis(200);
const MIN_WAIT: Duration = Duration::from_secs(2);
const LEASE: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(30);

/// Neither site is preferred: only the witness grants take-offline. Heartbeats every
/// [`HEARTBEAT`]; a peer goes offline after 3 failures over [`MIN_WAIT`]; token backups
/// time out after 1 s.
fn spec(witness: &WitnessProcess) -> impl Fn(usize, &str) -> NodeSpec + '_ {
    move |index, name| {
        NodeSpec::new(name).with_toml(&format!(
            "[sites.take_offline]\nafter_failures = 3\nmin_wait = \"{}ms\"\n\
             [relay]\nheartbeat_interval = \"{}ms\"\n\
             [caches.actionTokens]\nbackup = {{ site{} = {{ timeout = \"1s\" }} }}\n{}",
            MIN_WAIT.as_millis(),
            HEARTBEAT.as_millis(),
            2 - index,
            witness.site_toml()
        ))
    }
}

async fn site_status(node: &NodeProcess) -> SiteStatusResponse {
    AdminClient::new(node.channel().await.unwrap())
        .site_status(SiteStatusRequest { here_only: true })
        .await
        .unwrap()
        .into_inner()
}

async fn ready(node: &NodeProcess) -> bool {
    matches!(http::get(node.http_addr(), "/ready").await, Ok((200, _)))
}

async fn token(node: &NodeProcess, n: usize) -> Result<PutIfAbsentResponse, tonic::Status> {
    CacheClient::<Channel>::new(node.channel().await.unwrap())
        .put_if_absent(token_attempt(n, n, 1_000_000).1)
        .await
        .map(|answer| answer.into_inner())
}

#[tokio::test]
async fn a_dead_site_is_taken_offline_with_the_witness_grant_and_a_holder_that_loses_the_witness_fences_itself()
 {
    let mut witness = WitnessProcess::start(LEASE).await.unwrap();
    let mut sites = TwoSites::start(1, spec(&witness), |_, peers| {
        peers.iter().map(|a| a.to_string()).collect()
    })
    .await
    .unwrap();
    let [first, second] = &mut sites.sites;
    let survivor = &first.nodes[0];
    assert!(token(survivor, 0).await.unwrap().stored);

    second.nodes[0].kill().unwrap();
    let killed = Instant::now();
    eventually("site 1 to take site 2 offline", SETTLE, || async {
        site_status(survivor).await.peers[0].state == "offline"
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    println!("site 2 taken offline {took:?} after it died");
    assert!(
        took <= take_offline_deadline(MIN_WAIT, HEARTBEAT),
        "took {took:?}"
    );
    assert_eq!(
        witness.grants().await.unwrap(),
        [("site1".to_string(), "site2".to_string())]
    );
    assert!(site_status(survivor).await.fenced.is_empty());
    assert!(token(survivor, 1).await.unwrap().stored);

    // The witness dies: site 1 can't renew, and once its grant lapses it stops taking
    // sync writes (site 2 might get the grant from a witness it still reaches).
    witness.kill();
    eventually("site 1 to fence itself", SETTLE, || async {
        !site_status(survivor).await.fenced.is_empty()
    })
    .await
    .unwrap();
    assert!(!ready(survivor).await, "a fenced site reports not ready");
    let refused = token(survivor, 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("witness"), "{refused:?}");

    // Back (with no memory of grants): after one lease it grants site 1 again.
    witness.restart().await.unwrap();
    eventually("site 1 to hold the grant again", SETTLE, || async {
        site_status(survivor).await.fenced.is_empty()
    })
    .await
    .unwrap();
    assert!(ready(survivor).await);
    assert!(token(survivor, 3).await.unwrap().stored);
    assert_eq!(
        witness.grants().await.unwrap(),
        [("site1".to_string(), "site2".to_string())]
    );
}

#[tokio::test]
async fn in_a_partition_the_witness_lets_exactly_one_site_take_writes_and_bring_online_releases_it()
{
    let witness = WitnessProcess::start(LEASE).await.unwrap();
    let (sites, proxies) = TwoSites::start_partitionable(spec(&witness)).await.unwrap();
    let nodes = [&sites.sites[0].nodes[0], &sites.sites[1].nodes[0]];
    for proxy in &proxies {
        proxy.blackhole(Direction::Both);
    }
    // One site takes the other offline, the other fences itself.
    eventually("one site to hold the other offline", SETTLE, || async {
        let mut offline = 0;
        let mut fenced = 0;
        for node in nodes {
            let status = site_status(node).await;
            offline += usize::from(status.peers[0].state == "offline");
            fenced += usize::from(!status.fenced.is_empty());
        }
        offline == 1 && fenced == 1
    })
    .await
    .unwrap();
    let holder = if site_status(nodes[0]).await.fenced.is_empty() {
        0
    } else {
        1
    };
    let (winner, loser) = (nodes[holder], nodes[1 - holder]);
    let holder_site = format!("site{}", holder + 1);
    let loser_site = format!("site{}", 2 - holder);
    assert_eq!(
        witness.grants().await.unwrap(),
        [(holder_site.clone(), loser_site.clone())]
    );
    let fence = site_status(loser).await.fenced;
    assert!(fence.contains(&holder_site), "{fence}");
    // Some heartbeats later, still exactly one: the loser never gets the grant while the
    // winner renews it.
    let later = Instant::now() + 3 * LEASE;
    eventually("three leases to pass", SETTLE, || async {
        Instant::now() >= later
    })
    .await
    .unwrap();
    assert!(site_status(winner).await.fenced.is_empty());
    assert!(!site_status(loser).await.fenced.is_empty());
    assert!(ready(winner).await);
    assert!(!ready(loser).await);
    assert!(token(winner, 10).await.unwrap().stored);
    let refused = token(loser, 11).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // Bring-online is refused while the peer does not answer, then accepted.
    let bring_online = || async {
        AdminClient::new(winner.channel().await.unwrap())
            .site_command(SiteCommandRequest {
                site: loser_site.clone(),
                action: SiteAction::BringOnline as i32,
                forwarded: false,
            })
            .await
    };
    let refused = bring_online().await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("does not answer"), "{refused:?}");
    for proxy in &proxies {
        proxy.heal();
    }
    eventually("bring-online to be accepted", SETTLE, || async {
        bring_online().await.is_ok()
    })
    .await
    .unwrap();
    eventually(
        "both sites online, unfenced, the grant given back",
        SETTLE,
        || async {
            site_status(winner).await.peers[0].state == "online"
                && site_status(loser).await.fenced.is_empty()
                && witness.grants().await.unwrap().is_empty()
        },
    )
    .await
    .unwrap();
    assert!(ready(loser).await);
    assert!(token(loser, 12).await.unwrap().stored);
}
