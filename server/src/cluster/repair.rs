//! Repair: the ready members of a site compare their copies and take what another holds
//! newer.
//!
//! A write reaches every ready member before it is acknowledged, but a primary that dies
//! (or freezes, and is left out) in the middle of one leaves it on some members only: a
//! write nobody acknowledged, that nobody may ever write again, read differently on each
//! member. A node catching up copies from every member; the members that stayed do not,
//! unless they repair. So each ready member, once a ready member has left its view (after
//! the exclusion timeout, when the writes under way then are done or have left it out too)
//! and every `repair_interval`, compares each cache's range digests with every other ready
//! member's and copies the ranges that differ, the newer version winning per key, as a
//! joiner does. Nothing is dropped: a key one member lacks is one it has not taken yet.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::{Cluster, View, join};
use crate::error::Result;

/// Repairs this node whenever a ready member left, and every `repair_interval`, until
/// `shutdown` turns true.
pub async fn run(cluster: Cluster, mut shutdown: watch::Receiver<bool>) {
    let timing = *cluster.timing();
    let mut view = cluster.watch_view();
    let mut ready = {
        let view = view.borrow();
        ready_of(&view)
    };
    let mut due = Instant::now() + timing.repair_interval;
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = {
                    let view = view.borrow_and_update();
                    ready_of(&view)
                };
                if ready.difference(&now).next().is_some() {
                    due = due.min(Instant::now() + timing.exclusion_timeout);
                }
                ready = now;
            }
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if Instant::now() < due {
            continue;
        }
        if cluster.serving() {
            // A member frozen mid-copy must not hold the repair (or the shutdown) up.
            let repaired = tokio::select! {
                repaired = tokio::time::timeout(timing.repair_interval, repair(&cluster)) => repaired,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match repaired {
                Ok(Ok(0)) => {}
                Ok(Ok(taken)) => info!(taken, "repaired: took what other members held newer"),
                Ok(Err(error)) => warn!(error = %error, "repair failed; trying again later"),
                Err(_) => warn!("repair took too long; trying again later"),
            }
        }
        due = Instant::now() + timing.repair_interval;
    }
}

/// The ready members, each as it is in one start and one catch-up of it.
fn ready_of(view: &View) -> HashSet<(Arc<str>, u64, u64)> {
    view.ready()
        .map(|m| (m.name.clone(), m.generation, m.epoch))
        .collect()
}

/// Copies from every other ready member the ranges of every cache that differ from this
/// node's, newer versions winning; returns how many slots were taken.
pub async fn repair(cluster: &Cluster) -> Result<u64> {
    let others = cluster.other_ready_members();
    let mut taken = 0;
    for cache in cluster.store().caches() {
        for member in &others {
            let mut seen = HashSet::new();
            if let Some((count, _)) =
                join::sync_cache_from(cluster, cache.name(), member, &mut seen).await?
            {
                taken += count;
            }
        }
    }
    metrics::counter!("sitegrid_repair_keys_total").increment(taken);
    Ok(taken)
}
