//! Async backups: per peer site a durable outbox holding the newest state of each key
//! written (so several writes to one key coalesce into the latest), drained in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prost::Message;
use sitegrid_proto::v1;
use tokio::sync::Notify;

use crate::disk::Disk;

use crate::RelayError;

/// A change waiting in an outbox.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// Its place in the queue.
    pub(crate) seq: u64,
    /// The queue entry as read, to settle it only if it is still the same.
    value: sled::IVec,
    /// The cache.
    pub(crate) cache: String,
    /// The change.
    pub(crate) mutation: v1::ReplicatedMutation,
    /// When it was queued (Unix ms).
    pub(crate) queued_ms: u64,
}

/// One peer site's outbox: a queue in write order, and an index from each key to its
/// place in the queue, so a newer write to a key replaces the older one.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// seq (u64, big-endian) -> queued ms (8 bytes), cache length (2), cache, change.
    queue: sled::Tree,
    /// outbox key (cache length, cache, key) -> seq.
    index: sled::Tree,
    /// Serializes queue and index updates.
    updating: Mutex<()>,
    next_seq: AtomicU64,
    capacity: usize,
    len: AtomicUsize,
    queued: Notify,
    disk: Arc<Disk>,
}
impl Outbox {
    /// The outbox of `site` on `disk`, holding at most `capacity` keys.
    pub(crate) fn open(
        disk: &Arc<Disk>,
        site: &str,
        capacity: usize,
    ) -> Result<Outbox, RelayError> {
        let queue = disk.tree(&format!("outbox/{site}/queue"))?;
        let index = disk.tree(&format!("outbox/{site}/index"))?;
        let next_seq = match queue.last().map_err(outbox_error)? {
            Some((seq, _)) => decode_seq(&seq) + 1,
            None => 1,
        };
        let len = index.len();
        Ok(Outbox {
            queue,
            index,
            updating: Mutex::new(()),
            next_seq: AtomicU64::new(next_seq),
            capacity,
            len: AtomicUsize::new(len),
            queued: Notify::new(),
            disk: disk.clone(),
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
        value.extend_from_slice(&(cache.len() as u16).to_be_bytes());
        value.extend_from_slice(cache.as_bytes());
        mutation.encode(&mut value).map_err(outbox_error)?;
        {
            let _updating = self.updating.lock();
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let replaced = self
                .index
                .insert(index_key(cache, &mutation.key), &seq.to_be_bytes())
                .map_err(outbox_error)?;
            match replaced {
                Some(old) => {
                    self.queue.remove(old).map_err(outbox_error)?;
                }
                None => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.queue
                .insert(seq.to_be_bytes(), value)
                .map_err(outbox_error)?;
        }
        self.disk.flush().await;
        self.queued.notify_one();
        Ok(())
    }

    /// Waits until something is queued after the last wait.
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Up to `limit` changes queued after `after`, oldest first.
    pub(crate) fn peek_after(&self, after: u64, limit: usize) -> Result<Vec<Pending>, RelayError> {
        let mut pending = Vec::new();
        let start = (after + 1).to_be_bytes();
        for item in self.queue.range(start..).take(limit) {
            let (seq, value) = item.map_err(outbox_error)?;
            let Some((queued_ms, cache, encoded)) = split_value(&value) else {
                continue;
            };
            let mutation = v1::ReplicatedMutation::decode(encoded).map_err(outbox_error)?;
            pending.push(Pending {
                seq: decode_seq(&seq),
                cache: cache.to_string(),
                mutation,
                queued_ms,
                value: value.clone(),
            });
        }
        Ok(pending)
    }

    /// Removes a change the peer answered, unless a newer one for its key replaced it.
    pub(crate) fn settle(&self, pending: &Pending) -> Result<(), RelayError> {
        let _updating = self.updating.lock();
        let seq = pending.seq.to_be_bytes();
        let removed = self
            .queue
            .compare_and_swap(seq, Some(&pending.value), None as Option<&[u8]>)
            .map_err(outbox_error)?;
        if removed.is_ok() {
            let key = index_key(&pending.cache, &pending.mutation.key);
            let forgot = self
                .index
                .compare_and_swap(key, Some(&seq), None as Option<&[u8]>)
                .map_err(outbox_error)?;
            if forgot.is_ok() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

pub(crate) fn outbox_error(error: impl std::fmt::Display) -> RelayError {
    RelayError::Outbox(error.to_string())
}

fn decode_seq(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

/// The index key of `key` of `cache`: the cache's name, length first, then the key.
/// (Any name and what follows it are put together the same way.)
pub(crate) fn index_key(cache: &str, key: &[u8]) -> Vec<u8> {
    let mut index_key = Vec::with_capacity(2 + cache.len() + key.len());
    index_key.extend_from_slice(&(cache.len() as u16).to_be_bytes());
    index_key.extend_from_slice(cache.as_bytes());
    index_key.extend_from_slice(key);
    index_key
}

/// The inverse of [`index_key`]: the length-prefixed name, and what follows it.
pub(crate) fn split_name(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let length = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(bytes.get(2..2 + length)?).ok()?;
    Some((name, bytes.get(2 + length..)?))
}

/// A queue entry's parts: when it was queued, its cache, the encoded change.
fn split_value(value: &[u8]) -> Option<(u64, &str, &[u8])> {
    let queued_ms = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let (cache, change) = split_name(value.get(8..)?)?;
    Some((queued_ms, cache, change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
            let disk = Disk::open(dir.path()).unwrap();
            let outbox = Outbox::open(&disk, "site2", 10).unwrap();
            outbox.push("work", &mutation("a", "1")).await.unwrap();
            outbox.push("work", &mutation("a", "2")).await.unwrap();
            outbox.push("sessions", &mutation("a", "3")).await.unwrap();
            assert_eq!(outbox.len(), 2);
        }
        let disk = crate::disk::reopen(dir.path()).await;
        let outbox = Outbox::open(&disk, "site2", 10).unwrap();
        let pending = outbox.peek_after(0, 10).unwrap();
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
    async fn changes_come_out_oldest_first_and_a_rewritten_key_moves_to_the_back() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        let outbox = Outbox::open(&disk, "site2", 10).unwrap();
        for (key, record) in [("z", "1"), ("a", "2"), ("m", "3"), ("z", "4")] {
            outbox.push("work", &mutation(key, record)).await.unwrap();
        }
        let order = |pending: &[Pending]| -> Vec<Bytes> {
            pending.iter().map(|p| p.mutation.record.clone()).collect()
        };
        let all = outbox.peek_after(0, 10).unwrap();
        assert_eq!(
            order(&all),
            ["2", "3", "4"].map(|r| Bytes::from(r.to_string()))
        );
        // Reading on from a place in the queue skips what came before it.
        let rest = outbox.peek_after(all[0].seq, 10).unwrap();
        assert_eq!(order(&rest), ["3", "4"].map(|r| Bytes::from(r.to_string())));
    }

    #[tokio::test]
    async fn a_change_replaced_while_in_flight_stays_queued() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        let outbox = Outbox::open(&disk, "site2", 1).unwrap();
        outbox.push("work", &mutation("a", "1")).await.unwrap();
        assert!(outbox.is_full());
        let sent = outbox.peek_after(0, 10).unwrap();
        outbox.push("work", &mutation("a", "2")).await.unwrap();
        outbox.settle(&sent[0]).unwrap();
        let left = outbox.peek_after(0, 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].mutation.record, Bytes::from_static(b"2"));
        outbox.settle(&left[0]).unwrap();
        assert_eq!(outbox.len(), 0);
        assert!(outbox.peek_after(0, 10).unwrap().is_empty());
    }
}
