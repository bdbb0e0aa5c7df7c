//! Per-key write locks.
//!
//! A key's writer holds its lock from evaluating the condition until the write is applied
//! and durable, so writes to one key are serialized and conditions are exact. Writers to
//! different keys never wait for each other. Replicas and peer sites never wait on a lock:
//! they [`try_lock`](KeyLocks::try_lock) and refuse the change if the key is busy, which
//! is what keeps two sites writing one key from deadlocking.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Shards of the lock table, so unrelated keys rarely touch the same mutex.
const SHARDS: usize = 64;

type LockTable = Mutex<HashMap<Bytes, Arc<AsyncMutex<()>>, foldhash::fast::RandomState>>;

/// The write locks of one cache.
#[derive(Debug)]
pub struct KeyLocks {
    shards: Box<[LockTable]>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// Holds a key's lock; dropping it releases the lock.
#[derive(Debug)]
pub struct KeyGuard {
    // Field order matters: the mutex guard is released before the table entry is checked.
    guard: Option<OwnedMutexGuard<()>>,
    key: Bytes,
    table: Arc<KeyLocks>,
}

impl KeyLocks {
    fn shard(&self, key: &[u8]) -> &LockTable {
        // FNV-1a over the first bytes: the shard only spreads contention, so a poor
        // spread costs a little speed, never correctness.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.iter().take(64) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(hash as usize) % self.shards.len()]
    }

    fn mutex_for(&self, key: &Bytes) -> Arc<AsyncMutex<()>> {
        self.shard(key)
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(AsyncMutex::new(())))
            .clone()
    }

    /// Waits for the key's lock. Cancel-safe: dropping the future gives up the wait.
    pub async fn lock(self: &Arc<Self>, key: &Bytes) -> KeyGuard {
        let mutex = self.mutex_for(key);
        let guard = mutex.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            key: key.clone(),
            table: self.clone(),
        }
    }

    /// Takes the key's lock if nobody holds it.
    pub fn try_lock(self: &Arc<Self>, key: &Bytes) -> Option<KeyGuard> {
        let mutex = self.mutex_for(key);
        match mutex.try_lock_owned() {
            Ok(guard) => Some(KeyGuard {
                guard: Some(guard),
                key: key.clone(),
                table: self.clone(),
            }),
            Err(_) => {
                self.release_if_unused(key);
                None
            }
        }
    }

    /// Drops the table entry of `key` if no guard or waiter refers to its mutex.
    fn release_if_unused(&self, key: &Bytes) {
        let mut table = self.shard(key).lock();
        // One reference is the table's own; any other is a holder or a waiter.
        if table
            .get(key)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            table.remove(key);
        }
    }

    /// Number of keys with a holder or a waiter (for tests and metrics).
    pub fn held(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        // Release the mutex first, then drop our reference so the count check is exact.
        let guard = self.guard.take();
        drop(guard);
        self.table.release_if_unused(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    #[tokio::test]
    async fn a_held_key_refuses_try_lock_and_other_keys_do_not() {
        let locks = Arc::new(KeyLocks::default());
        let guard = locks.lock(&key("a")).await;
        assert!(locks.try_lock(&key("a")).is_none());
        assert!(locks.try_lock(&key("b")).is_some());
        drop(guard);
        assert!(locks.try_lock(&key("a")).is_some());
        assert_eq!(locks.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn writers_to_one_key_take_turns() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock(&key("a")).await;
        let locks2 = locks.clone();
        let second = tokio::spawn(async move {
            let _guard = locks2.lock(&key("a")).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await; // paused time: no real wait
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap();
        assert_eq!(locks.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_nothing_behind() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock(&key("a")).await;
        let locks2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _guard = locks2.lock(&key("a")).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(first);
        assert_eq!(locks.held(), 0);
        assert!(locks.try_lock(&key("a")).is_some());
    }
}
