//! Resync figures (issue "site state"): a full resync of `resync_entries` entries of 1 KiB
//! from one site to an empty peer, and a delta resync after 1% of 200,000 keys changed
//! while the peer was offline.
//!
//! Two sites of one node each, linked directly. Site 1 takes site 2 offline (site 2 is
//! then fenced), writes meanwhile go nowhere but site 1, and bring-online resyncs; the
//! time is from the bring-online command until site 1 shows site 2 online, and the keys
//! and bytes moved are the resync's own counts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sitegrid_integration_tests::{NodeProcess, NodeSpec, TwoSites};
use sitegrid_proto::v1::admin_client::AdminClient;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::*;

use crate::Settings;

/// Keys of the delta case.
pub(crate) const DELTA_KEYS: u64 = 200_000;
/// Keys changed in the delta case (1%).
pub(crate) const DELTA_CHANGED: u64 = DELTA_KEYS / 100;
/// Value size of the full case.
pub(crate) const FULL_VALUE: usize = 1_024;

/// One resync.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    /// Entries in the cache resynced.
    pub(crate) entries: u64,
    /// Keys the resync found differing.
    pub(crate) differing: u64,
    /// Keys it moved.
    pub(crate) moved: u64,
    /// Bytes it moved.
    pub(crate) bytes: u64,
    /// From the command until the peer is online.
    pub(crate) seconds: f64,
}

/// What the resync benchmark measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Results {
    pub(crate) full: Run,
    pub(crate) delta: Run,
}

async fn admin(node: &NodeProcess) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    Ok(AdminClient::new(node.channel().await?))
}

async fn command(node: &NodeProcess, action: SiteAction) -> anyhow::Result<()> {
    admin(node)
        .await?
        .site_command(SiteCommandRequest {
            site: "site2".into(),
            action: action as i32,
            forwarded: false,
        })
        .await?;
    Ok(())
}

/// Site 1's view of site 2.
async fn peer(node: &NodeProcess) -> anyhow::Result<PeerSiteStatus> {
    let status = admin(node)
        .await?
        .site_status(SiteStatusRequest { here_only: true })
        .await?
        .into_inner();
    status
        .peers
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("site 1 has no peer site"))
}

/// Writes `keys` keys `{prefix}{i}` of `value_size` bytes to `cache` in site 1.
async fn load(
    node: &NodeProcess,
    cache: &str,
    prefix: &str,
    keys: u64,
    value_size: usize,
) -> anyhow::Result<()> {
    let client = CacheClient::new(node.channel().await?)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let value = Bytes::from(vec![b'x'; value_size]);
    let batches: Vec<u64> = (0..keys.div_ceil(1_000)).collect();
    stream::iter(batches)
        .map(|batch| {
            let mut client = client.clone();
            let value = value.clone();
            async move {
                let entries = (batch * 1_000..((batch + 1) * 1_000).min(keys))
                    .map(|i| PutAllEntry {
                        key: Bytes::from(format!("{prefix}{i}")),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .collect();
                client
                    .put_all(PutAllRequest {
                        cache: cache.into(),
                        entries,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// Brings site 2 online from site 1 and times the resync until it is online.
async fn bring_online(node: &NodeProcess, entries: u64) -> anyhow::Result<Run> {
    let started = Instant::now();
    command(node, SiteAction::BringOnline).await?;
    let deadline = started + Duration::from_secs(1_800);
    loop {
        let peer = peer(node).await?;
        if peer.state == "online" {
            let seconds = started.elapsed().as_secs_f64();
            let resync = peer.resync.unwrap_or_default();
            return Ok(Run {
                entries,
                differing: resync.keys_differing,
                moved: resync.keys_moved,
                bytes: resync.bytes_moved,
                seconds,
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the resync did not end: {peer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the resync benchmark.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let spec = |_, name: &str| NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new(name)
    };
    let sites = TwoSites::start(1, spec, |_, peers| {
        peers.iter().map(|a| a.to_string()).collect()
    })
    .await?;
    let first = &sites.sites[0].nodes[0];

    // Full: site 2 holds nothing of what site 1 writes while it is offline.
    command(first, SiteAction::TakeOffline).await?;
    let entries = settings.resync_entries;
    println!("resync: loading {entries} entries of {FULL_VALUE} bytes into site 1");
    load(first, "sessions", "full-", entries, FULL_VALUE).await?;
    let full = bring_online(first, entries).await?;
    println!(
        "resync: full, {} keys moved in {:.1} s ({:.0} entries/s, {:.1} MB/s)",
        full.moved,
        full.seconds,
        full.moved as f64 / full.seconds,
        full.bytes as f64 / full.seconds / 1e6
    );

    // Delta: both sites hold the same 200,000 keys; 1% change while site 2 is offline.
    command(first, SiteAction::TakeOffline).await?;
    load(first, "work", "delta-", DELTA_KEYS, 256).await?;
    bring_online(first, DELTA_KEYS).await?;
    command(first, SiteAction::TakeOffline).await?;
    let mut client = CacheClient::new(first.channel().await?);
    for i in 0..DELTA_CHANGED {
        let key = Bytes::from(format!("delta-{}", i * 97 % DELTA_KEYS));
        if i % 4 == 0 {
            client
                .remove(RemoveRequest {
                    cache: "work".into(),
                    key,
                    ..Default::default()
                })
                .await?;
        } else {
            client
                .put(PutRequest {
                    cache: "work".into(),
                    key,
                    value: Bytes::from_static(b"changed"),
                    ..Default::default()
                })
                .await?;
        }
    }
    let delta = bring_online(first, DELTA_KEYS).await?;
    println!(
        "resync: delta, {} of {} keys differed, {} moved in {:.2} s",
        delta.differing, DELTA_KEYS, delta.moved, delta.seconds
    );
    Ok(Results { full, delta })
}
