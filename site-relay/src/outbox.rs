//! Async backups: per peer site a durable outbox holding the newest state of each key
//! written (so several writes to one key coalesce into the latest), drained in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use sitegrid_proto::v1;
use tokio::sync::{Notify, watch};

use crate::RelayError;

/// A change waiting in an outbox.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// Its key in the outbox tree, and the value it was read with (to settle it only if
    /// no newer write replaced it meanwhile).
    slot: (sled::IVec, sled::IVec),
    /// The cache.
    pub(crate) cache: String,
    /// The change.
    pub(crate) mutation: v1::ReplicatedMutation,
    /// When it was queued (Unix ms).
    pub(crate) queued_ms: u64,
}

/// One peer site's outbox.
#[derive(Debug)]
pub(crate) struct Outbox {
    tree: sled::Tree,
    capacity: usize,
    len: AtomicUsize,
    queued: Notify,
    disk: Arc<GroupFlush>,
}

/// Flushes to disk on behalf of every writer waiting, one flush at a time: writers that
/// arrive during a flush share the next one.
#[derive(Debug)]
struct GroupFlush {
    db: sled::Db,
    /// Inserts made so far.
    written: AtomicU64,
    /// Inserts known to be on disk.
    flushed: watch::Sender<u64>,
    wanted: Notify,
    /// The outbox was dropped: the flusher ends.
    closed: AtomicBool,
}

impl GroupFlush {
    /// Flushes whenever asked, until the outbox is dropped.
    async fn run(self: Arc<GroupFlush>) {
        let this = self;
        loop {
            this.wanted.notified().await;
            if this.closed.load(Ordering::Acquire) {
                return;
            }
            let target = this.written.load(Ordering::Acquire);
            let db = this.db.clone();
            match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => {
                    this.flushed.send_if_modified(|flushed| {
                        let moved = target > *flushed;
                        *flushed = (*flushed).max(target);
                        moved
                    });
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot flush the outbox; trying again");
                    this.wanted.notify_one();
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => {
                    tracing::error!(%error, "the outbox flush failed; trying again");
                    this.wanted.notify_one();
                }
            }
        }
    }

    /// Returns once insert number `seq` is on disk.
    async fn wait(&self, seq: u64) {
        let mut flushed = self.flushed.subscribe();
        self.wanted.notify_one();
        let _ = flushed.wait_for(|flushed| *flushed >= seq).await;
    }
}

impl Outbox {
    /// The outbox of `site` in `db`, holding at most `capacity` keys.
    pub(crate) fn open(db: &sled::Db, site: &str, capacity: usize) -> Result<Outbox, RelayError> {
        let tree = db
            .open_tree(format!("outbox/{site}"))
            .map_err(|error| RelayError::Outbox(error.to_string()))?;
        let len = tree.len();
        let disk = Arc::new(GroupFlush {
            db: db.clone(),
            written: AtomicU64::new(0),
            flushed: watch::channel(0).0,
            wanted: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(disk.clone().run());
        Ok(Outbox {
            tree,
            capacity,
            len: AtomicUsize::new(len),
            queued: Notify::new(),
            disk,
        })
    }

    /// Keys waiting.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether a new key would not fit.
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Queues the state `mutation` gives its key (replacing what was queued for it) and
    /// returns once that is on disk.
    pub(crate) async fn push(
        &self,
        cache: &str,
        mutation: &v1::ReplicatedMutation,
    ) -> Result<(), RelayError> {
        let mut value = now_ms().to_be_bytes().to_vec();
        mutation
            .encode(&mut value)
            .map_err(|error| RelayError::Outbox(error.to_string()))?;
        let replaced = self
            .tree
            .insert(tree_key(cache, &mutation.key), value)
            .map_err(|error| RelayError::Outbox(error.to_string()))?;
        if replaced.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        let seq = self.disk.written.fetch_add(1, Ordering::AcqRel) + 1;
        // sled's own `flush_async` can wait forever; the group flush cannot.
        self.disk.wait(seq).await;
        self.queued.notify_one();
        Ok(())
    }

    /// Waits until something is queued after the last wait.
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Up to `limit` changes waiting, oldest keys first in key order.
    pub(crate) fn peek(&self, limit: usize) -> Result<Vec<Pending>, RelayError> {
        let mut pending = Vec::new();
        for item in self.tree.iter().take(limit) {
            let (key, value) = item.map_err(|error| RelayError::Outbox(error.to_string()))?;
            let Some((cache, _)) = split_key(&key) else {
                continue;
            };
            if value.len() < 8 {
                continue;
            }
            let queued_ms = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
            let mutation = v1::ReplicatedMutation::decode(&value[8..])
                .map_err(|error| RelayError::Outbox(error.to_string()))?;
            pending.push(Pending {
                slot: (key, value),
                cache,
                mutation,
                queued_ms,
            });
        }
        Ok(pending)
    }

    /// Removes a change the peer answered, unless a newer one for its key replaced it.
    pub(crate) fn settle(&self, pending: &Pending) -> Result<(), RelayError> {
        let (key, value) = &pending.slot;
        let swapped = self
            .tree
            .compare_and_swap(key, Some(value), None as Option<&[u8]>)
            .map_err(|error| RelayError::Outbox(error.to_string()))?;
        if swapped.is_ok() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.disk.closed.store(true, Ordering::Release);
        self.disk.wanted.notify_one();
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The outbox key of `key` of `cache`: the cache's name, length first, then the key.
fn tree_key(cache: &str, key: &[u8]) -> Vec<u8> {
    let mut tree_key = Vec::with_capacity(2 + cache.len() + key.len());
    tree_key.extend_from_slice(&(cache.len() as u16).to_be_bytes());
    tree_key.extend_from_slice(cache.as_bytes());
    tree_key.extend_from_slice(key);
    tree_key
}

fn split_key(tree_key: &[u8]) -> Option<(String, Bytes)> {
    let length = u16::from_be_bytes(tree_key.get(..2)?.try_into().ok()?) as usize;
    let cache = std::str::from_utf8(tree_key.get(2..2 + length)?).ok()?;
    Some((
        cache.to_string(),
        Bytes::copy_from_slice(&tree_key[2 + length..]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutation(key: &str, record: &str) -> v1::ReplicatedMutation {
        v1::ReplicatedMutation {
            key: Bytes::copy_from_slice(key.as_bytes()),
            record: Bytes::copy_from_slice(record.as_bytes()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn writes_to_one_key_coalesce_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let outbox = Outbox::open(&db, "site2", 10).unwrap();
            outbox.push("work", &mutation("a", "1")).await.unwrap();
            outbox.push("work", &mutation("a", "2")).await.unwrap();
            outbox.push("sessions", &mutation("a", "3")).await.unwrap();
            assert_eq!(outbox.len(), 2);
        }
        // The dropped outbox's flusher lets go of the database once it runs.
        let mut attempts = 0;
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(_) if attempts < 1_000 => {
                    attempts += 1;
                    tokio::task::yield_now().await;
                }
                Err(error) => panic!("the outbox still holds the database: {error}"),
            }
        };
        let outbox = Outbox::open(&db, "site2", 10).unwrap();
        let pending = outbox.peek(10).unwrap();
        let mut seen: Vec<(String, Bytes)> = pending
            .iter()
            .map(|p| (p.cache.clone(), p.mutation.record.clone()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("sessions".to_string(), Bytes::from_static(b"3")),
                ("work".to_string(), Bytes::from_static(b"2")),
            ]
        );
    }

    #[tokio::test]
    async fn a_change_replaced_while_in_flight_stays_queued() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let outbox = Outbox::open(&db, "site2", 1).unwrap();
        outbox.push("work", &mutation("a", "1")).await.unwrap();
        assert!(outbox.is_full());
        let sent = outbox.peek(10).unwrap();
        outbox.push("work", &mutation("a", "2")).await.unwrap();
        outbox.settle(&sent[0]).unwrap();
        let left = outbox.peek(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].mutation.record, Bytes::from_static(b"2"));
        outbox.settle(&left[0]).unwrap();
        assert_eq!(outbox.len(), 0);
        assert!(outbox.peek(10).unwrap().is_empty());
    }
}
