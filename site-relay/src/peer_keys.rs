//! Keys recorded for a peer site, each with the version written, kept on disk so they
//! outlive a restart. Two sets are kept this way: keys *in doubt* (a sync backup got no
//! answer: the peer may or may not have applied it; the key is reconciled once the peer
//! answers again), and keys *written while the peer was not online* (for its resync).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::RelayError;
use crate::disk::Disk;
use crate::outbox::{index_key, outbox_error, split_name};

/// A key recorded for a peer site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerKey {
    /// The peer site.
    pub(crate) site: String,
    /// The cache.
    pub(crate) cache: String,
    /// The key.
    pub(crate) key: Bytes,
    /// The version written.
    pub(crate) version: u64,
}

/// Keys recorded for every peer site, in one tree.
#[derive(Debug)]
pub(crate) struct PeerKeys {
    /// site length (2 bytes), site, cache length (2), cache, key -> version (big-endian).
    tree: sled::Tree,
    /// How many keys are in doubt at each site, kept with the tree so a failing write
    /// does not count them.
    counts: Mutex<HashMap<String, usize>>,
    disk: Arc<Disk>,
}

impl PeerKeys {
    /// The keys kept in tree `name` of `disk`.
    pub(crate) fn open(disk: &Arc<Disk>, name: &str) -> Result<PeerKeys, RelayError> {
        let keys = PeerKeys {
            tree: disk.tree(name)?,
            counts: Mutex::new(HashMap::new()),
            disk: disk.clone(),
        };
        for entry in keys.entries(&[])? {
            *keys.counts.lock().entry(entry.site).or_default() += 1;
        }
        Ok(keys)
    }

    /// Records that `site` may or may not have taken the write of `key` at `version`
    /// (replacing an older record of the key) and returns once that is on disk.
    pub(crate) async fn record(
        &self,
        site: &str,
        cache: &str,
        key: &[u8],
        version: u64,
    ) -> Result<(), RelayError> {
        {
            let mut counts = self.counts.lock();
            let replaced = self
                .tree
                .insert(tree_key(site, cache, key), &version.to_be_bytes())
                .map_err(outbox_error)?;
            if replaced.is_none() {
                *counts.entry(site.to_string()).or_default() += 1;
            }
        }
        self.disk.flush().await;
        Ok(())
    }

    /// The keys in doubt at `site`.
    pub(crate) fn list_at(&self, site: &str) -> Result<Vec<PeerKey>, RelayError> {
        self.entries(&index_key(site, &[]))
    }

    fn entries(&self, prefix: &[u8]) -> Result<Vec<PeerKey>, RelayError> {
        let mut all = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (key, version) = item.map_err(outbox_error)?;
            let (Some((site, rest)), Ok(version)) =
                (split_name(&key), <[u8; 8]>::try_from(version.as_ref()))
            else {
                continue;
            };
            let Some((cache, key)) = split_name(rest) else {
                continue;
            };
            all.push(PeerKey {
                site: site.to_string(),
                cache: cache.to_string(),
                key: Bytes::copy_from_slice(key),
                version: u64::from_be_bytes(version),
            });
        }
        Ok(all)
    }

    /// How many keys are in doubt at `site`.
    pub(crate) fn count(&self, site: &str) -> usize {
        self.counts.lock().get(site).copied().unwrap_or(0)
    }

    /// Forgets `entry`, unless a newer write to its key went in doubt since.
    pub(crate) fn settle(&self, entry: &PeerKey) -> Result<(), RelayError> {
        let mut counts = self.counts.lock();
        let forgot = self
            .tree
            .compare_and_swap(
                tree_key(&entry.site, &entry.cache, &entry.key),
                Some(&entry.version.to_be_bytes()),
                None as Option<&[u8]>,
            )
            .map_err(outbox_error)?;
        if forgot.is_ok()
            && let Some(count) = counts.get_mut(&entry.site)
        {
            *count = count.saturating_sub(1);
        }
        Ok(())
    }
}

/// The tree key of `key` of `cache` in doubt at `site`.
fn tree_key(site: &str, cache: &str, key: &[u8]) -> Vec<u8> {
    index_key(site, &index_key(cache, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_in_doubt_survive_reopening_and_settle_only_at_their_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open(dir.path()).unwrap();
            let keys = PeerKeys::open(&disk, "in-doubt").unwrap();
            keys.record("site2", "work", b"a", 5).await.unwrap();
            keys.record("site2", "work", b"a", 7).await.unwrap();
            keys.record("site3", "sessions", b"b", 9).await.unwrap();
        }
        let disk = crate::disk::reopen(dir.path()).await;
        let keys = PeerKeys::open(&disk, "in-doubt").unwrap();
        let at_site2 = keys.list_at("site2").unwrap();
        assert_eq!(at_site2.len(), 1);
        assert_eq!(keys.list_at("site3").unwrap().len(), 1);
        assert_eq!(keys.count("site2"), 1);
        let a = at_site2[0].clone();
        assert_eq!(
            (a.cache.as_str(), a.key.as_ref(), a.version),
            ("work", &b"a"[..], 7)
        );
        keys.settle(&PeerKey {
            version: 5,
            ..a.clone()
        })
        .unwrap();
        assert_eq!(
            keys.count("site2"),
            1,
            "an older version does not settle a newer doubt"
        );
        keys.settle(&a).unwrap();
        assert_eq!(keys.count("site2"), 0);
        assert_eq!(keys.count("site3"), 1);
    }
}
