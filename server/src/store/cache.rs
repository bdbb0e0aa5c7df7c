//! One cache: its keyspace, its key locks, and its write path.
//!
//! A write to a key, start to end:
//! 1. take the cache's clear barrier (shared) and the key's lock;
//! 2. if the key holds an entry that has expired, expire it first (so its `EXPIRED`
//!    event comes before whatever follows);
//! 3. evaluate the condition (absent / present / version equals) on the current entry;
//!    if it does not hold, answer with the current entry, changing nothing;
//! 4. pick the next version and build the [`Mutation`] (`prev` = the key's state);
//! 5. for a persistent cache, hand it to the storage thread and wait until durable;
//! 6. apply it to the keyspace with the one rule and publish its event;
//! 7. release the lock and answer.
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
use crate::store::entry::{Entry, Slot, Tombstone, TombstoneCause};
use crate::store::keyspace::{Keyspace, Page};
use crate::store::locks::KeyLocks;
use crate::store::mutation::{ApplyOutcome, Change, Mutation};
use crate::store::record;
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
    services: Arc<Services>,
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
        if self.config.persistent && entry.max_idle_ms > 0 {
            self.touched.lock().insert(Bytes::copy_from_slice(key));
        }
        Some(entry)
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

    /// Runs one write to completion (see the module documentation). Not cancel-safe
    /// between persisting and applying: callers run it in its own task.
    pub async fn write(&self, request: WriteRequest) -> Result<WriteResult> {
        let _clear = self.clear_barrier.read().await;
        let _lock = self.locks.lock(&request.key).await;
        let now = self.now_ms();
        let (previous, prev) = self.current_for_write(&request.key, now).await?;
        let holds = match request.condition {
            Condition::Always => true,
            Condition::Absent => previous.is_none(),
            Condition::Present => previous.is_some(),
            Condition::VersionIs(expected) => {
                previous.as_ref().is_some_and(|e| e.version == expected)
            }
        };
        let removing_absent = matches!(request.op, WriteOp::Remove) && previous.is_none();
        if !holds || removing_absent {
            return Ok(WriteResult {
                applied: false,
                version: 0,
                previous,
            });
        }
        let version = self.services.clock.next();
        let change = match request.op {
            WriteOp::Put(new) => Change::Write(Arc::new(Entry::new(
                new.value,
                version,
                self.services.site.clone(),
                now,
                self.default_ms(new.lifespan_ms, self.config.lifespan),
                self.default_ms(new.max_idle_ms, self.config.max_idle),
                new.tags,
            ))),
            WriteOp::Remove => Change::Remove(Arc::new(Tombstone {
                version,
                origin_site: self.services.site.clone(),
                removed_ms: now,
                cause: TombstoneCause::Removed,
            })),
        };
        let mutation = Mutation {
            key: request.key,
            prev,
            change,
        };
        self.commit(&mutation, true).await?;
        Ok(WriteResult {
            applied: true,
            version,
            previous: previous.filter(|_| request.keep_previous),
        })
    }

    fn default_ms(&self, requested_ms: u64, default: Option<std::time::Duration>) -> u64 {
        if requested_ms > 0 {
            requested_ms
        } else {
            default.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
    }

    /// The live entry a write to `key` sees and the state version it replaces; expires
    /// the entry first if its time has come. The caller holds the key's lock.
    async fn current_for_write(
        &self,
        key: &Bytes,
        now: UnixMillis,
    ) -> Result<(Option<Arc<Entry>>, Version)> {
        let (slot, prev) = {
            let keyspace = self.keyspace.read();
            let slot = keyspace.slot(key).cloned();
            let prev = slot.as_ref().map_or(keyspace.floor(), Slot::state_version);
            (slot, prev)
        };
        match slot {
            Some(Slot::Live(entry)) if entry.is_expired(now) => {
                self.expire_locked(key.clone(), &entry, now).await?;
                // An expiry is not a write: the key still stands at the expired version.
                Ok((None, prev))
            }
            Some(Slot::Live(entry)) => Ok((Some(entry), prev)),
            _ => Ok((None, prev)),
        }
    }

    /// Turns an expired entry into an expiry tombstone and publishes `EXPIRED`. The
    /// caller holds the key's lock and has checked that `entry` is the key's entry.
    pub(crate) async fn expire_locked(
        &self,
        key: Bytes,
        entry: &Arc<Entry>,
        now: UnixMillis,
    ) -> Result<()> {
        let mutation = Mutation {
            key,
            prev: entry.version,
            change: Change::Remove(Arc::new(Tombstone {
                version: self.services.clock.next(),
                origin_site: self.services.site.clone(),
                removed_ms: now,
                cause: TombstoneCause::Expired {
                    base: entry.version,
                },
            })),
        };
        // An expiry lost in a crash happens again after the restart: no need to wait.
        self.commit(&mutation, false).await
    }

    /// Persists (if the cache is persistent) and applies a mutation, then publishes its
    /// event. The caller holds the key's lock.
    async fn commit(&self, mutation: &Mutation, wait_durable: bool) -> Result<()> {
        if self.config.persistent {
            let ops = vec![self.storage_op(&mutation.key, &mutation.slot())];
            if wait_durable {
                self.persist(ops).await?;
            } else {
                self.services.durability()?.write_in_background(ops);
            }
        }
        let outcome = self.keyspace.write().apply(mutation);
        match outcome {
            ApplyOutcome::Applied { replaced } => {
                self.publish(mutation, replaced);
                Ok(())
            }
            ApplyOutcome::AlreadyApplied => Ok(()),
            // The key's lock is held, so nothing can have changed it since `prev` was read.
            ApplyOutcome::Conflict { .. } => {
                Err(Error::Internal("a locked key changed under its writer"))
            }
        }
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

    fn publish(&self, mutation: &Mutation, replaced: Option<Slot>) {
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

    /// Removes every entry; returns how many live entries there were. Waits for writes
    /// in flight and holds new ones back until done.
    pub async fn clear(&self) -> Result<u64> {
        let _exclusive = self.clear_barrier.write().await;
        let version = self.services.clock.next();
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
        self.services.hub.publish(|| ChangeEvent {
            cache: self.name.clone(),
            kind: EventKind::InvalidateAll,
            key: Bytes::new(),
            version,
            origin_site: self.services.site.clone(),
            entry: None,
        });
        Ok(removed as u64)
    }
}

/// Metadata name under which a persistent cache's clear floor is stored.
pub(crate) fn floor_meta_name(cache: &str) -> String {
    format!("floor/{cache}")
}
