//! What a node's persistent caches held when it last stopped cleanly, to tell at the
//! next start whether the store lost records while the node was down.
//!
//! A damaged record is found when it is read (see `load`), but a damaged or truncated
//! store file is another matter: sled recovers it to the last state it can read, which
//! may be far older, or empty, and says nothing. So at a clean stop the node writes, next
//! to the store, how many records each persistent cache holds in each key range; at the
//! next start it compares what it read back, reports every cache and key range that came
//! back with fewer records (error log, `sitegrid_store_records_lost{cache}`), and goes on
//! serving what is left. In a site, the members give the node what it lost as it joins.
//! The file is removed once read: after a crash there is no clean count to compare with.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::store::Store;

/// Records per key range of each persistent cache.
type Census = BTreeMap<String, Vec<u64>>;

/// Where the census of a node is kept, if it has persistent caches.
pub fn path_of(config: &sitegrid_config::Config) -> Option<PathBuf> {
    config
        .caches
        .values()
        .any(|cache| cache.persistent)
        .then(|| config.node.data_dir.join("census.json"))
}

/// At a clean stop, once nothing writes any more: waits until what is queued is durable
/// (the storage thread takes its work in order), then writes the census to `path`.
pub async fn record(path: &Path, store: &Store) {
    if let Err(error) = store.persist_high_water().await {
        warn!(%error, "the store did not sync at shutdown: no census for the next start");
        return;
    }
    if let Err(error) = write(path, &take(store)) {
        warn!(path = %path.display(), %error,
            "cannot write the store's census: the next start can't check the store");
    }
}

/// Counts the records of every persistent cache, per key range.
fn take(store: &Store) -> Census {
    store
        .caches()
        .filter(|cache| cache.is_persistent())
        .map(|cache| {
            (
                cache.name().to_string(),
                cache.keyspace.read().range_counts(),
            )
        })
        .collect()
}

/// Writes `census` to `path` durably (a new file renamed over the old one).
fn write(path: &Path, census: &Census) -> std::io::Result<()> {
    let temporary = path.with_extension("json.new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(census).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// What one cache lost: records, and the key ranges they were in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The cache.
    pub cache: String,
    /// Records held at the last clean stop.
    pub held: u64,
    /// Records read back.
    pub read: u64,
    /// The key ranges that came back with fewer records.
    pub ranges: Vec<usize>,
}

/// Compares what `store` read back with the census at `path`, if the node stopped
/// cleanly last time; reports and returns each cache that lost records, and removes the
/// file.
pub fn check(path: &Path, store: &Store) -> Vec<Loss> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            info!(
                "no clean-stop census of the store: the node's last stop was not clean, or this is its first start"
            );
            return Vec::new();
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot read the store's census");
            return Vec::new();
        }
    };
    if let Err(error) = std::fs::remove_file(path) {
        warn!(path = %path.display(), %error, "cannot remove the store's census");
    }
    let before: Census = match serde_json::from_slice(&text) {
        Ok(census) => census,
        Err(error) => {
            warn!(path = %path.display(), %error, "the store's census is damaged: not compared");
            return Vec::new();
        }
    };
    let now = take(store);
    let mut losses = Vec::new();
    for (cache, held) in before {
        let read = now.get(&cache).cloned().unwrap_or_default();
        let ranges: Vec<usize> = held
            .iter()
            .enumerate()
            .filter(|(range, count)| read.get(*range).copied().unwrap_or(0) < **count)
            .map(|(range, _)| range)
            .collect();
        let gauge = metrics::gauge!("sitegrid_store_records_lost", "cache" => cache.clone());
        let (held, read): (u64, u64) = (held.iter().sum(), read.iter().sum());
        if ranges.is_empty() {
            gauge.set(0.0);
            continue;
        }
        gauge.set(held.saturating_sub(read) as f64);
        error!(cache = %cache, held, read, ranges = %spans(&ranges),
            "the store lost records while the node was down (damaged or truncated files): \
             these key ranges came back with fewer records than at the last clean stop; \
             the node serves what is left, and its site's members give it theirs as it joins");
        losses.push(Loss {
            cache,
            held,
            read,
            ranges,
        });
    }
    losses
}

/// Ranges as text: `0-12, 15, 40-1023`.
fn spans(ranges: &[usize]) -> String {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for &range in ranges {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == range => *end = range,
            _ => spans.push((range, range)),
        }
    }
    spans
        .iter()
        .map(|(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_written_as_spans() {
        assert_eq!(spans(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(spans(&[3]), "3");
    }
}
