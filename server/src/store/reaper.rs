//! Background upkeep, once per `store.reaper_interval`:
//! - expire entries whose deadline passed (an `EXPIRED` event each, within one interval);
//! - purge tombstones older than `store.tombstone_ttl`;
//! - store the last-used time of persistent max-idle entries read since the last pass;
//! - move the clock's stored high-water mark ahead of the versions being handed out.
//!
//! Every change to a key is made under the key's lock, taken without waiting: a key busy
//! with a write is left for the next pass (the writer expires it itself if needed).

use tokio::sync::watch;
use tracing::{debug, info};

use crate::error::Result;
use crate::store::Store;
use crate::store::cache::CacheStore;
use crate::store::entry::Slot;
use crate::store::load::HIGH_WATER_META;
use crate::store::storage::StorageOp;
use crate::store::version::{first_version_at, millis_of};

/// Most entries expired per cache per pass, so one pass stays short.
const MAX_EXPIRED_PER_PASS: usize = 10_000;

/// How far ahead of the versions handed out the stored high-water mark is kept, in ms.
/// A node that crashes restarts above it, even if its clock went back meanwhile.
const HIGH_WATER_LEAD_MS: u64 = 10_000;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReapReport {
    /// Entries expired.
    pub expired: u64,
    /// Tombstones purged.
    pub purged: u64,
}

/// Runs passes until `shutdown` changes.
pub async fn run(store: Store, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(store.settings().reaper_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => break,
        }
        let report = reap_once(&store).await;
        if report != ReapReport::default() {
            debug!(
                expired = report.expired,
                purged = report.purged,
                "reaper pass"
            );
        }
        if let Err(error) = store_high_water(&store, false).await {
            tracing::error!(error = %error, "cannot store the clock high-water mark");
        }
    }
    info!("reaper stopped");
}

/// One pass over every cache.
pub async fn reap_once(store: &Store) -> ReapReport {
    let mut report = ReapReport::default();
    for cache in store.caches() {
        // The same order as writes: the site's guard, then the clear barrier.
        let _site = store.site().write_guard().await;
        // A clear in progress empties the cache anyway: skip it this time.
        let Ok(_shared) = cache.clear_barrier.try_read() else {
            continue;
        };
        report.expired += expire_due(store, cache).await;
        report.purged += purge_tombstones(store, cache);
        if cache.is_persistent() {
            store_touches(store, cache);
        }
    }
    share_reads(store);
    report
}

/// Tells the other nodes of the site and the peer sites which max-idle entries were read
/// on this node, so none of them expires an entry in use here; in the background, so a
/// member or site slow to answer does not hold expiry up.
fn share_reads(store: &Store) {
    let reads: Vec<_> = store
        .caches()
        .map(|cache| (cache.name().to_string(), cache.take_reads()))
        .filter(|(_, touches)| !touches.is_empty())
        .collect();
    if reads.is_empty() {
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        for (cache, touches) in reads {
            store.site().share_touches(&cache, &touches).await;
            if let Some(peers) = store.services().peers() {
                peers.share_touches(&cache, &touches).await;
            }
        }
    });
}

async fn expire_due(store: &Store, cache: &CacheStore) -> u64 {
    let now = store.services().time.now_ms();
    let due = cache
        .keyspace
        .write()
        .due_for_expiry(now, MAX_EXPIRED_PER_PASS);
    let mut expired = 0;
    let site = store.site();
    for (key, entry) in due {
        // In a site, only a key's primary expires it, on every member at once.
        if !site.is_primary(&key) {
            continue;
        }
        let Some(_lock) = cache.locks.try_lock(&key) else {
            continue;
        };
        let still_due = matches!(cache.keyspace.read().slot(&key),
            Some(Slot::Live(current)) if std::sync::Arc::ptr_eq(current, &entry) && current.is_expired(now));
        if still_due && matches!(cache.expire_locked(key, &entry, now, site).await, Ok(true)) {
            expired += 1;
        }
    }
    if expired > 0 {
        metrics::counter!("sitegrid_expired_total", "cache" => cache.name().to_string())
            .increment(expired);
    }
    expired
}

fn purge_tombstones(store: &Store, cache: &CacheStore) -> u64 {
    let cutoff = store.purge_cutoff();
    let due = cache.keyspace.write().tombstones_due(cutoff);
    let mut deletes = Vec::new();
    let mut purged = 0;
    for (key, version) in due {
        let Some(_lock) = cache.locks.try_lock(&key) else {
            // Busy with a write: look again next pass.
            cache
                .keyspace
                .write()
                .requeue_tombstone(key, version, cutoff);
            continue;
        };
        if cache.keyspace.write().forget_tombstone(&key, version) {
            purged += 1;
            if cache.is_persistent() {
                deletes.push(StorageOp::Delete {
                    cache: cache.name().clone(),
                    key,
                });
            }
        }
    }
    if !deletes.is_empty()
        && let Ok(durability) = store.services().durability()
    {
        durability.write_in_background(deletes);
    }
    purged
}

fn store_touches(store: &Store, cache: &CacheStore) {
    let touched: Vec<_> = cache.touched.lock().drain().collect();
    let mut ops = Vec::new();
    for key in touched {
        let Some(_lock) = cache.locks.try_lock(&key) else {
            // A write is under way: it stores the entry with its own last-used time.
            continue;
        };
        if let Some(slot @ Slot::Live(_)) = cache.keyspace.read().slot(&key) {
            ops.push(cache.storage_op(&key, slot));
        }
    }
    if !ops.is_empty()
        && let Ok(durability) = store.services().durability()
    {
        durability.write_in_background(ops);
    }
}

/// Moves the stored high-water mark ahead when the clock comes near it. With `wait`, the
/// new mark is durable before this returns.
pub(crate) async fn store_high_water(store: &Store, wait: bool) -> Result<()> {
    let Ok(durability) = store.services().durability() else {
        return Ok(()); // nothing persistent: nothing to stay above after a restart
    };
    let clock = store.clock();
    let now = clock.time().now_ms();
    let ahead_of = millis_of(clock.current()).max(now);
    let target = first_version_at(ahead_of + HIGH_WATER_LEAD_MS);
    {
        let mut stored = store.stored_high_water().lock();
        let half_lead = first_version_at(ahead_of + HIGH_WATER_LEAD_MS / 2);
        if !wait && *stored >= half_lead {
            return Ok(());
        }
        *stored = target;
    }
    let ops = vec![StorageOp::Meta {
        name: HIGH_WATER_META.to_string(),
        value: target.to_be_bytes().to_vec(),
    }];
    if wait {
        durability
            .write(ops)
            .await
            .map_err(|source| crate::error::Error::Storage {
                cache: "(clock)".into(),
                source,
            })?;
    } else {
        durability.write_in_background(ops);
    }
    Ok(())
}
