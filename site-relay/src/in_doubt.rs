//! Keys in doubt at a peer site, kept on disk: a sync backup that got no answer may or
//! may not have been applied there, and the key is reconciled once the peer answers
//! again, even after this node restarted.

use std::sync::Arc;

use bytes::Bytes;

use crate::disk::Disk;
use crate::outbox::{index_key, outbox_error};
use crate::{InDoubt, RelayError};

/// The keys in doubt at every peer site.
#[derive(Debug)]
pub(crate) struct InDoubtKeys {
    /// site length (2 bytes), site, cache length (2), cache, key -> version (big-endian).
    tree: sled::Tree,
    disk: Arc<Disk>,
}

impl InDoubtKeys {
    /// The keys in doubt kept on `disk`.
    pub(crate) fn open(disk: &Arc<Disk>) -> Result<InDoubtKeys, RelayError> {
        Ok(InDoubtKeys {
            tree: disk.tree("in-doubt")?,
            disk: disk.clone(),
        })
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
        self.tree
            .insert(tree_key(site, cache, key), &version.to_be_bytes())
            .map_err(outbox_error)?;
        self.disk.flush().await;
        Ok(())
    }

    /// Every key in doubt.
    pub(crate) fn list(&self) -> Result<Vec<InDoubt>, RelayError> {
        let mut all = Vec::new();
        for item in self.tree.iter() {
            let (key, version) = item.map_err(outbox_error)?;
            let (Some((site, rest)), Ok(version)) =
                (split(&key), <[u8; 8]>::try_from(version.as_ref()))
            else {
                continue;
            };
            let Some((cache, key)) = split(rest) else {
                continue;
            };
            all.push(InDoubt {
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
        let mut prefix = (site.len() as u16).to_be_bytes().to_vec();
        prefix.extend_from_slice(site.as_bytes());
        self.tree.scan_prefix(prefix).count()
    }

    /// Forgets `entry`, unless a newer write to its key went in doubt since.
    pub(crate) fn settle(&self, entry: &InDoubt) -> Result<(), RelayError> {
        let key = tree_key(&entry.site, &entry.cache, &entry.key);
        let _ = self
            .tree
            .compare_and_swap(
                key,
                Some(&entry.version.to_be_bytes()),
                None as Option<&[u8]>,
            )
            .map_err(outbox_error)?;
        Ok(())
    }
}

fn tree_key(site: &str, cache: &str, key: &[u8]) -> Vec<u8> {
    let mut tree_key = (site.len() as u16).to_be_bytes().to_vec();
    tree_key.extend_from_slice(site.as_bytes());
    tree_key.extend_from_slice(&index_key(cache, key));
    tree_key
}

/// A length-prefixed name and what follows it.
fn split(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let length = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(bytes.get(2..2 + length)?).ok()?;
    Some((name, bytes.get(2 + length..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_in_doubt_survive_reopening_and_settle_only_at_their_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open(dir.path()).unwrap();
            let keys = InDoubtKeys::open(&disk).unwrap();
            keys.record("site2", "work", b"a", 5).await.unwrap();
            keys.record("site2", "work", b"a", 7).await.unwrap();
            keys.record("site3", "sessions", b"b", 9).await.unwrap();
        }
        let disk = crate::disk::reopen(dir.path()).await;
        let keys = InDoubtKeys::open(&disk).unwrap();
        let all = keys.list().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(keys.count("site2"), 1);
        let a = all.iter().find(|k| k.site == "site2").unwrap().clone();
        assert_eq!(
            (a.cache.as_str(), a.key.as_ref(), a.version),
            ("work", &b"a"[..], 7)
        );
        keys.settle(&InDoubt {
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
