//! One cache: its keyspace, its key locks, reads, and clears. Writes are in
//! [`crate::store::write`].
//!
//! Readers never lock anything but the keyspace, briefly; they see a write once it is
//! durable.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sitegrid_config::CacheConfig;
use tokio::sync::RwLock as AsyncRwLock;

use crate::error::{Error, Result};
use crate::events::{ChangeEvent, EventKind};
use crate::store::Services;
use crate::store::entry::{Entry, Slot, TombstoneCause};
use crate::store::keyspace::{Keyspace, Page};
use crate::store::locks::KeyLocks;
use crate::store::mutation::{Change, Mutation};
use crate::store::record;
use crate::store::replication::SiteReplication;
use crate::store::storage::StorageOp;
use crate::store::time::UnixMillis;
use crate::store::version::Version;

/// The condition a write depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    Always,
    /// Only if the key is absent (or expired).
    Absent,
    /// Only if the key is present.
    Present,
    /// Only if the key is present at exactly this version.
    VersionIs(Version),
}

/// A new value and its per-entry settings.
#[derive(Debug, Clone)]
pub struct NewValue {
    /// The value.
    pub value: Bytes,
    /// Lifespan in ms; 0 = the cache's default (or never).
    pub lifespan_ms: u64,
    /// Max idle in ms; 0 = the cache's default (or never).
    pub max_idle_ms: u64,
    /// Tags.
    pub tags: Box<[Arc<str>]>,
}

/// What a write does to its key.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a value.
    Put(NewValue),
    /// Remove the key.
    Remove,
    /// Give the key's current state (its entry, or its absence as a tombstone) a new
    /// version, sent to the peer sites as replacing `in_doubt`: a write they may or may
    /// not have taken, which the client was told failed. Reconciles the key: the peer
    /// takes this site's state unless it holds something newer, which this site takes.
    Restamp {
        /// The version of the write in doubt.
        in_doubt: Version,
    },
}

/// A write to one key.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The key.
    pub key: Bytes,
    /// What to do.
    pub op: WriteOp,
    /// When to do it.
    pub condition: Condition,
    /// Whether the answer carries the previous entry when the write applies (it always
    /// does when the write does not apply: that entry is why). Answers are kept for
    /// retries, so one that need not hold an old value should not.
    pub keep_previous: bool,
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct WriteResult {
    /// Whether the condition held and the write was applied.
    pub applied: bool,
    /// Version of the write, when applied.
    pub version: Version,
    /// The live entry before the write (whether or not it was applied).
    pub previous: Option<Arc<Entry>>,
}

/// One cache.
#[derive(Debug)]
pub struct CacheStore {
    name: Arc<str>,
    config: CacheConfig,
    pub(crate) keyspace: RwLock<Keyspace>,
    pub(crate) locks: Arc<KeyLocks>,
    /// Writes hold it shared; a clear holds it exclusively, so no write straddles a clear.
    pub(crate) clear_barrier: AsyncRwLock<()>,
    /// Keys of persistent max-idle entries read since their last-used time was last
    /// stored; the reaper stores them, so a restart doesn't expire active sessions early.
    pub(crate) touched: Mutex<HashSet<Bytes>>,
    /// Keys of max-idle entries read on this node since the reaper last told the other
    /// nodes and sites, which expire them on their own clocks.
    reads: Mutex<HashSet<Bytes>>,
    services: Arc<Services>,
}

/// A max-idle entry read at some time, on some node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// The key.
    pub key: Bytes,
    /// The version of the entry read.
    pub version: Version,
    /// When it was last read there.
    pub last_used_ms: UnixMillis,
}

impl CacheStore {
    pub(crate) fn new(name: &str, config: CacheConfig, services: Arc<Services>) -> CacheStore {
        CacheStore {
            name: Arc::from(name),
            config,
            keyspace: RwLock::new(Keyspace::default()),
            locks: Arc::new(KeyLocks::default()),
            clear_barrier: AsyncRwLock::new(()),
            touched: Mutex::new(HashSet::new()),
            reads: Mutex::new(HashSet::new()),
            services,
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The cache's configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Whether the cache is kept on disk.
    pub fn is_persistent(&self) -> bool {
        self.config.persistent
    }

    /// The current time as this cache's entries see it.
    pub fn now_ms(&self) -> UnixMillis {
        self.services.time.now_ms()
    }

    /// The live entry of `key`, refreshing its last-used time.
    pub fn get(&self, key: &Bytes) -> Option<Arc<Entry>> {
        let entry = self.keyspace.read().get(key, self.now_ms())?;
        if entry.max_idle_ms > 0 {
            // Copied so the sets don't keep the whole request buffer alive.
            let key = Bytes::copy_from_slice(key);
            if self.config.persistent {
                self.touched.lock().insert(key.clone());
            }
            self.reads.lock().insert(key);
        }
        Some(entry)
    }

    /// The max-idle entries read on this node since the last call, as they stand now.
    pub(crate) fn take_reads(&self) -> Vec<Touch> {
        let keys: Vec<Bytes> = self.reads.lock().drain().collect();
        let keyspace = self.keyspace.read();
        keys.into_iter()
            .filter_map(|key| match keyspace.slot(&key) {
                Some(Slot::Live(entry)) => Some(Touch {
                    version: entry.version,
                    last_used_ms: entry.last_used_ms(),
                    key,
                }),
                _ => None,
            })
            .collect()
    }

    /// Takes reads made on another node or site: each entry still at the version read
    /// counts as used then too (a newer write has its own last-used time).
    pub fn take_touches(&self, touches: &[Touch]) {
        let keyspace = self.keyspace.read();
        for touch in touches {
            if let Some(Slot::Live(entry)) = keyspace.slot(&touch.key)
                && entry.version == touch.version
                && entry.last_used_ms() < touch.last_used_ms
            {
                entry.touch(touch.last_used_ms);
                if self.config.persistent {
                    self.touched.lock().insert(touch.key.clone());
                }
            }
        }
    }

    /// Number of live entries.
    pub fn live_count(&self) -> usize {
        self.keyspace.read().len(self.now_ms())
    }

    /// Live entries in key order after `after`, at most `limit`, optionally with `tag`.
    pub fn page(&self, after: Option<&Bytes>, limit: usize, tag: Option<&str>) -> Page {
        self.keyspace.read().page(after, limit, tag, self.now_ms())
    }

    /// Keys of live entries carrying `tag`.
    pub fn keys_with_tag(&self, tag: &str) -> Vec<Bytes> {
        self.keyspace.read().keys_with_tag(tag)
    }

    /// What every cache of the node shares.
    pub(crate) fn services(&self) -> &Services {
        &self.services
    }

    /// Stores several slots if the cache is persistent, and waits until they are durable.
    pub(crate) async fn persist_slots(&self, slots: &[(Bytes, Slot)]) -> Result<()> {
        if !self.config.persistent || slots.is_empty() {
            return Ok(());
        }
        let ops = slots
            .iter()
            .map(|(key, slot)| self.storage_op(key, slot))
            .collect();
        self.persist(ops).await
    }

    /// Stores `slot` under `key` if the cache is persistent; with `wait_durable`, only
    /// returns once it is on disk.
    pub(crate) async fn persist_slot(
        &self,
        key: &Bytes,
        slot: &Slot,
        wait_durable: bool,
    ) -> Result<()> {
        if !self.config.persistent {
            return Ok(());
        }
        let ops = vec![self.storage_op(key, slot)];
        if wait_durable {
            self.persist(ops).await
        } else {
            self.services.durability()?.write_in_background(ops);
            Ok(())
        }
    }

    /// Deletes `key` from storage, if the cache is persistent, and waits until durable.
    pub(crate) async fn persist_delete(&self, key: &Bytes) -> Result<()> {
        if !self.config.persistent {
            return Ok(());
        }
        self.persist(vec![StorageOp::Delete {
            cache: self.name.clone(),
            key: key.clone(),
        }])
        .await
    }

    /// Writes `ops` and waits until they are durable.
    async fn persist(&self, ops: Vec<StorageOp>) -> Result<()> {
        self.services
            .durability()?
            .write(ops)
            .await
            .map_err(|source| Error::Storage {
                cache: self.name.to_string(),
                source,
            })
    }

    pub(crate) fn storage_op(&self, key: &Bytes, slot: &Slot) -> StorageOp {
        StorageOp::Put {
            cache: self.name.clone(),
            key: key.clone(),
            record: Bytes::from(record::encode(slot)),
        }
    }

    pub(crate) fn publish(&self, mutation: &Mutation, replaced: Option<Slot>) {
        let replaced_live = match replaced {
            Some(Slot::Live(entry)) => Some(entry),
            _ => None,
        };
        let (kind, entry) = match &mutation.change {
            Change::Write(entry) if replaced_live.is_some() => {
                (EventKind::Modified, Some(entry.clone()))
            }
            Change::Write(entry) => (EventKind::Created, Some(entry.clone())),
            Change::Remove(tombstone) => match tombstone.cause {
                TombstoneCause::Removed => (EventKind::Removed, replaced_live),
                TombstoneCause::Expired { .. } => (EventKind::Expired, replaced_live),
            },
        };
        let origin_site = match &mutation.change {
            Change::Write(entry) => entry.origin_site.clone(),
            Change::Remove(tombstone) => tombstone.origin_site.clone(),
        };
        self.services.hub.publish(|| ChangeEvent {
            cache: self.name.clone(),
            kind,
            key: mutation.key.clone(),
            version: mutation.next(),
            origin_site,
            entry,
        });
    }

    /// Removes every entry, on this node and (through `site`) every other member; returns
    /// how many live entries there were here. Waits for writes in flight and holds new
    /// ones back until done.
    pub async fn clear(&self, site: &dyn SiteReplication) -> Result<u64> {
        let version = self.services.clock.next();
        let removed = self.clear_at(version).await?;
        site.replicate_clear(&self.name, version).await?;
        Ok(removed)
    }

    /// Tells this node's subscribers that any entry may have changed unseen (after a
    /// resync with a peer site).
    pub fn announce_invalidate_all(&self) {
        self.invalidate_all_at(self.services.clock.current());
    }

    fn invalidate_all_at(&self, version: Version) {
        self.services.hub.publish(|| ChangeEvent {
            cache: self.name.clone(),
            kind: EventKind::InvalidateAll,
            key: Bytes::new(),
            version,
            origin_site: self.services.site.clone(),
            entry: None,
        });
    }

    /// Removes every entry of this node's copy, as of `version` (a clear run here, or
    /// one sent by the member that ran it).
    pub async fn clear_at(&self, version: Version) -> Result<u64> {
        let _exclusive = self.clear_barrier.write().await;
        self.services.clock.observe(version);
        if self.config.persistent {
            let ops = vec![
                StorageOp::Meta {
                    name: floor_meta_name(&self.name),
                    value: version.to_be_bytes().to_vec(),
                },
                StorageOp::Clear {
                    cache: self.name.clone(),
                },
            ];
            self.persist(ops).await?;
        }
        let removed = self.keyspace.write().clear(version);
        self.invalidate_all_at(version);
        Ok(removed as u64)
    }
}

/// Metadata name under which a persistent cache's clear floor is stored.
pub(crate) fn floor_meta_name(cache: &str) -> String {
    format!("floor/{cache}")
}
