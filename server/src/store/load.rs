//! Start-up: reading persistent caches and the clock's high-water mark back from storage.
//!
//! A damaged record is logged with its cache and key and skipped; the rest of the cache
//! is served. Records older than the cache's last clear are stale and skipped.

use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::cache::{CacheStore, floor_meta_name};
use crate::store::entry::Slot;
use crate::store::record;
use crate::store::storage::Storage;
use crate::store::version::Version;

/// Metadata name of the clock's high-water mark.
pub(crate) const HIGH_WATER_META: &str = "clock/high_water";

/// Loads every persistent cache; returns the newest version found anywhere (records,
/// clear floors, the stored high-water mark), which the clock must stay above.
pub(crate) fn load_all(store: &Store, storage: &dyn Storage) -> Result<Version> {
    let mut newest = read_version(storage, HIGH_WATER_META)?;
    *store.stored_high_water().lock() = newest;
    for cache in store.caches().filter(|cache| cache.is_persistent()) {
        let floor = read_version(storage, &floor_meta_name(cache.name()))?;
        newest = newest
            .max(floor)
            .max(load_cache(store, cache, storage, floor));
    }
    Ok(newest)
}

fn read_version(storage: &dyn Storage, name: &str) -> Result<Version> {
    let bytes = storage.meta(name).map_err(Error::OpenStorage)?;
    Ok(bytes
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map_or(0, Version::from_be_bytes))
}

/// Loads one cache; returns the newest version it holds.
fn load_cache(store: &Store, cache: &CacheStore, storage: &dyn Storage, floor: Version) -> Version {
    let services = store.services();
    let intern = |name: &str| services.intern_site(name);
    let mut keyspace = cache.keyspace.write();
    keyspace.restore_floor(floor);
    let (mut live, mut tombstones, mut damaged, mut stale) = (0u64, 0u64, 0u64, 0u64);
    let mut newest = floor;
    let mut last_key: Option<Vec<u8>> = None;
    let scanned = storage.scan(cache.name(), &mut |key, bytes| {
        last_key = Some(key.to_vec());
        match record::decode(bytes, &intern) {
            Ok(slot) if slot.version() <= floor => stale += 1,
            Ok(slot) => {
                newest = newest.max(slot.version());
                match &slot {
                    Slot::Live(_) => live += 1,
                    Slot::Tombstone(_) => tombstones += 1,
                }
                keyspace.restore(bytes::Bytes::copy_from_slice(key), slot);
            }
            Err(problem) => {
                damaged += 1;
                error!(cache = %cache.name(), key = %key_for_log(key), error = %problem,
                    "damaged record skipped");
            }
        }
    });
    if let Err(problem) = scanned {
        let after = last_key
            .as_deref()
            .map_or_else(|| "the first key".to_string(), key_for_log);
        error!(cache = %cache.name(), after = %after, error = %problem,
            "storage scan failed: keys after this one are not loaded");
    }
    if stale > 0 {
        warn!(cache = %cache.name(), stale, "records older than the last clear skipped");
    }
    info!(cache = %cache.name(), live, tombstones, damaged, "cache loaded");
    newest
}

/// A key as text for logs: as is when printable UTF-8, otherwise hex.
pub(crate) fn key_for_log(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect::<String>() + " (hex)",
    }
}
