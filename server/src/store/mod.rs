//! The storage engine: every cache of a node, in memory, written through to disk for
//! persistent caches.
//!
//! [`Store`] is a cheap-to-clone handle. It owns the caches ([`cache::CacheStore`]), the
//! version clock, the storage thread (group commit), the idempotency table and the event
//! hub. Submodules, bottom up:
//! - [`time`], [`version`]: the clock and the versions it assigns;
//! - [`entry`], [`mutation`], [`slot_key`], [`keyspace`]: what a key holds, how it
//!   changes, how keys are ordered, and the one replication rule;
//! - [`storage`], [`record`], [`durability`]: persistence and group commit;
//! - [`locks`], [`idempotency`], [`cache`], [`write`], [`replication`]: the write path,
//!   on a key's primary and on the members replicating it;
//! - [`load`], [`reaper`]: start-up and background upkeep.

pub mod cache;
pub mod census;
pub mod durability;
pub mod entry;
pub mod idempotency;
pub mod keyspace;
mod load;
pub mod locks;
pub mod mutation;
pub(crate) mod peers;
pub mod reaper;
pub mod record;
pub mod replication;
pub mod slot_key;
mod slots;
pub mod storage;
pub mod time;
pub mod version;
pub mod write;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{StreamExt, stream};
use parking_lot::Mutex;
use sitegrid_config::Config;
use tracing::info;

use crate::error::{Error, Result};
use crate::events::Hub;
use cache::{CacheStore, Condition, NewValue, WriteOp, WriteRequest, WriteResult};
use durability::Durability;
use entry::{Entry, SiteName, Slot};
use idempotency::{Idempotency, Ran};
use keyspace::Page;
use peers::PeerSites;
use replication::{Alone, ChangeReply, ReceivedChange, SiteReplication};
use storage::Storage;
use time::{TimeSource, UnixMillis};
use version::{Version, VersionClock};
use write::{Merged, ReplicaOutcome};

/// How many keys `PutAll` and `RemoveByTag` write at once.
const BATCH_CONCURRENCY: usize = 32;

/// What every cache of a node shares.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) clock: VersionClock,
    pub(crate) time: Arc<dyn TimeSource>,
    /// This node's site: the origin of every write it accepts.
    pub(crate) site: SiteName,
    durability: Option<Durability>,
    pub(crate) hub: Hub,
    /// Site names seen in entries, shared so each is stored once.
    site_names: Mutex<HashSet<SiteName>>,
    /// The peer sites, set once the relay is up; until then there are none.
    peers: OnceLock<Arc<dyn PeerSites>>,
    /// How long a write's answer is kept for retries (`store.idempotency_window`).
    pub(crate) idempotency_window_ms: u64,
    /// The answers kept for retries, and the void versions of keys.
    pub(crate) idempotency: Idempotency<Arc<WriteResult>>,
}

impl Services {
    pub(crate) fn durability(&self) -> Result<&Durability> {
        self.durability
            .as_ref()
            .ok_or(Error::Internal("persistent cache without storage"))
    }

    /// The peer sites, once set.
    pub(crate) fn peers(&self) -> Option<&dyn PeerSites> {
        self.peers.get().map(|peers| &**peers)
    }

    /// The peer sites writes to `cache` must reach before they are acknowledged, if any.
    pub(crate) fn sync_peers(&self, cache: &str) -> Option<&dyn PeerSites> {
        self.peers
            .get()
            .map(|peers| &**peers)
            .filter(|peers| peers.has_sync_backups(cache))
    }

    /// The shared copy of a site name.
    pub(crate) fn intern_site(&self, name: &str) -> SiteName {
        let mut names = self.site_names.lock();
        if let Some(existing) = names.get(name) {
            return existing.clone();
        }
        let shared: SiteName = Arc::from(name);
        names.insert(shared.clone());
        shared
    }
}

/// Settings of the store taken from the node's config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) tombstone_ttl_ms: u64,
    pub(crate) reaper_interval: std::time::Duration,
}

/// Who sees a write to its end once it started: a write is not cancel-safe (it may stop
/// between persisting and applying, or between members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// A task of its own: the caller may stop waiting for it (a unary call whose client
    /// goes away).
    OwnTask,
    /// The caller, which polls every write it started to its end, whether or not anyone
    /// still waits for the answer (a pipeline stream runs what it admitted to the end).
    Caller,
}

/// Handle to a node's caches.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    caches: BTreeMap<String, Arc<CacheStore>>,
    services: Arc<Services>,
    settings: Settings,
    /// The clock's high-water mark as last stored (see `reaper`).
    stored_high_water: Mutex<Version>,
    /// The node's site, set once the cluster is up; until then the node is alone.
    site: OnceLock<Arc<dyn SiteReplication>>,
}

impl Store {
    /// Opens the store: loads persistent caches from `storage` (required if any cache is
    /// persistent), restores the clock above every version handed out before, and starts
    /// the storage thread.
    pub fn open(
        config: &Config,
        time: Arc<dyn TimeSource>,
        storage: Option<Arc<dyn Storage>>,
        hub: Hub,
    ) -> Result<Store> {
        let any_persistent = config.caches.values().any(|c| c.persistent);
        if any_persistent && storage.is_none() {
            return Err(Error::Internal("persistent caches need a storage engine"));
        }
        let durability = storage
            .clone()
            .map(Durability::start)
            .transpose()
            .map_err(|source| Error::Io {
                context: "cannot start the storage thread".into(),
                source,
            })?;
        let idempotency_window_ms =
            u64::try_from(config.store.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let services = Arc::new(Services {
            clock: VersionClock::new(config.node.site_byte(), time.clone(), 0),
            time: time.clone(),
            site: Arc::from(config.node.site.as_str()),
            durability,
            hub,
            site_names: Mutex::new(HashSet::new()),
            peers: OnceLock::new(),
            idempotency_window_ms,
            idempotency: Idempotency::new(
                idempotency_window_ms,
                config.store.idempotency_max_entries,
                time.clone(),
            ),
        });
        let caches = config
            .caches
            .iter()
            .map(|(name, cache)| {
                (
                    name.clone(),
                    Arc::new(CacheStore::new(name, cache.clone(), services.clone())),
                )
            })
            .collect::<BTreeMap<_, _>>();
        let store = Store {
            inner: Arc::new(Inner {
                caches,
                services,
                settings: Settings {
                    tombstone_ttl_ms: u64::try_from(config.store.tombstone_ttl.as_millis())
                        .unwrap_or(u64::MAX),
                    reaper_interval: config.store.reaper_interval,
                },
                stored_high_water: Mutex::new(0),
                site: OnceLock::new(),
            }),
        };
        if let Some(storage) = storage {
            let floor = load::load_all(&store, &*storage)?;
            store.inner.services.clock.observe(floor);
            info!(
                version = store.inner.services.clock.current(),
                "clock restored"
            );
        }
        Ok(store)
    }

    /// Stores the clock's high-water mark and waits until it is durable; called once at
    /// start, before any version is handed out.
    pub async fn persist_high_water(&self) -> Result<()> {
        reaper::store_high_water(self, true).await
    }

    /// The cache named `name`.
    pub fn cache(&self, name: &str) -> Result<&Arc<CacheStore>> {
        self.inner
            .caches
            .get(name)
            .ok_or_else(|| Error::UnknownCache(name.to_string()))
    }

    /// Every cache, by name.
    pub fn caches(&self) -> impl Iterator<Item = &Arc<CacheStore>> {
        self.inner.caches.values()
    }

    /// Tombstones made at or before this time are due to be purged.
    pub(crate) fn purge_cutoff(&self) -> UnixMillis {
        self.services()
            .time
            .now_ms()
            .saturating_sub(self.settings().tombstone_ttl_ms)
    }

    /// The event hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.services.hub
    }

    /// The version clock.
    pub fn clock(&self) -> &VersionClock {
        &self.inner.services.clock
    }

    pub(crate) fn services(&self) -> &Arc<Services> {
        &self.inner.services
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn stored_high_water(&self) -> &Mutex<Version> {
        &self.inner.stored_high_water
    }

    /// Reads one key.
    pub fn get(&self, cache: &str, key: &Bytes) -> Result<Option<Arc<Entry>>> {
        Ok(self.cache(cache)?.get(key))
    }

    /// Reads several keys; absent ones are left out.
    pub fn get_all(&self, cache: &str, keys: &[Bytes]) -> Result<Vec<(Bytes, Arc<Entry>)>> {
        let cache = self.cache(cache)?;
        Ok(keys
            .iter()
            .filter_map(|key| cache.get(key).map(|entry| (key.clone(), entry)))
            .collect())
    }

    /// Sets the node's site; writes replicate and forward through it from now on.
    pub fn set_site(&self, site: Arc<dyn SiteReplication>) {
        if self.inner.site.set(site).is_err() {
            tracing::error!("the site of a store can only be set once");
        }
    }

    /// Sets the node's peer sites; writes with sync backups go to them from now on.
    pub(crate) fn set_peers(&self, peers: Arc<dyn PeerSites>) {
        if self.inner.services.peers.set(peers).is_err() {
            tracing::error!("the peer sites of a store can only be set once");
        }
    }

    /// The node's site.
    pub fn site(&self) -> &dyn SiteReplication {
        static ALONE: Alone = Alone;
        self.inner.site.get().map_or(&ALONE, |site| &**site)
    }

    /// Writes one key, on its primary: here, or forwarded there. With a request id, a
    /// retry returns the first answer. `driver` says who sees the write to its end.
    pub async fn write(
        &self,
        cache: &str,
        request: WriteRequest,
        request_id: Option<&str>,
        driver: Driver,
    ) -> Result<Arc<WriteResult>> {
        let cache = self.cache(cache)?;
        let site = self.site();
        if !site.is_primary(&request.key) {
            return site.forward(cache.name(), request, request_id).await;
        }
        self.write_as_primary(cache.name(), request, request_id, driver)
            .await
    }

    /// Writes one key on this node as its primary (the caller checked it is).
    ///
    /// A write that may await (storage, other members) must not stop halfway (durable but
    /// not applied, or applied on some members only): unless its `driver` is the caller,
    /// it runs in its own task, so a client that goes away mid-write can't stop it. A
    /// write to an in-memory cache of a node alone never awaits between taking the key's
    /// lock and applying, so it always runs in the caller's task.
    pub async fn write_as_primary(
        &self,
        cache: &str,
        request: WriteRequest,
        request_id: Option<&str>,
        driver: Driver,
    ) -> Result<Arc<WriteResult>> {
        let cache = self.cache(cache)?;
        if driver == Driver::Caller || (!cache.is_persistent() && self.site().is_alone()) {
            return self.write_to(cache, request, request_id).await;
        }
        let cache = cache.clone();
        let store = self.clone();
        let request_id = request_id.map(str::to_string);
        tokio::spawn(async move { store.write_to(&cache, request, request_id.as_deref()).await })
            .await
            .map_err(Error::TaskFailed)?
    }

    async fn write_to(
        &self,
        cache: &Arc<CacheStore>,
        request: WriteRequest,
        request_id: Option<&str>,
    ) -> Result<Arc<WriteResult>> {
        let site = self.site();
        let idempotency = &self.inner.services.idempotency;
        loop {
            let ran = idempotency
                .run(cache.name(), request_id, || async {
                    let (answer, in_doubt) = cache.write(&request, site, request_id).await?;
                    Ok((Arc::new(answer), in_doubt))
                })
                .await?;
            let (Ran::Fresh(answer) | Ran::Replayed(answer)) = &ran;
            let (Ran::Replayed(_), Some(id)) = (&ran, request_id) else {
                return Ok(answer.clone());
            };
            // A retry of a write in doubt that its site then undid: the answer kept for
            // it is void, and the request runs as new.
            if !cache.answer_holds(&request.key, id, answer, site).await? {
                idempotency.forget(cache.name(), id);
                continue;
            }
            // A retry: the first run may have failed before every member had the
            // change, so hand the key's state to them all before answering again.
            cache
                .share_key(&request.key, Some((id, answer)), site)
                .await?;
            return Ok(answer.clone());
        }
    }

    /// Merges a state a peer site sent asynchronously, as this site's primary of the key,
    /// in its own task (see [`CacheStore::merge_backup`]); a state kept by policy but
    /// restamped goes back to the peer sites.
    pub async fn merge_backup(&self, cache: &str, key: Bytes, incoming: Slot) -> Result<Merged> {
        let cache = self.cache(cache)?.clone();
        let store = self.clone();
        tokio::spawn(async move {
            let merged = cache.merge_backup(&key, incoming, store.site()).await?;
            if let Merged::Restamped(mutation) = &merged {
                cache.enqueue(mutation).await?;
            }
            Ok(merged)
        })
        .await
        .map_err(Error::TaskFailed)?
    }

    /// Reconciles `key` with the peer sites after a write to it, at `in_doubt`, got no
    /// answer from one: the key's state here gets a new version that replaces the write
    /// in doubt there ([`WriteOp::Restamp`]), on the key's primary.
    pub async fn restamp(&self, cache: &str, key: Bytes, in_doubt: Version) -> Result<()> {
        let request = WriteRequest {
            key,
            op: WriteOp::Restamp { in_doubt },
            condition: Condition::Always,
            keep_previous: false,
        };
        self.write(cache, request, None, Driver::OwnTask)
            .await
            .map(|_| ())
    }

    /// Takes a change a peer site's primary is making (a sync backup) as this site's
    /// primary of the key, in its own task (see [`CacheStore::apply_backup`]); keeps the
    /// answer of the write it came from, for a retry that fails over to this site.
    pub async fn apply_backup(
        &self,
        cache: &str,
        change: ReceivedChange,
    ) -> Result<ReplicaOutcome> {
        let cache = self.cache(cache)?.clone();
        let store = self.clone();
        tokio::spawn(async move {
            let answer = change
                .answer
                .as_ref()
                .map(|(id, answer)| (id.as_str(), &**answer));
            let outcome = cache
                .apply_backup(&change.mutation, answer, store.site())
                .await?;
            if let (ReplicaOutcome::Applied | ReplicaOutcome::AlreadyApplied, Some((id, answer))) =
                (&outcome, change.answer)
            {
                store
                    .inner
                    .services
                    .idempotency
                    .record(cache.name(), &id, answer);
            }
            Ok(outcome)
        })
        .await
        .map_err(Error::TaskFailed)?
    }

    /// The answer kept for a write's request id, if the key still holds what that write
    /// made (`current`): a write in doubt that its site then replaced (reconciling it)
    /// did not happen after all, whatever was answered here when it was taken.
    pub fn recorded_answer(
        &self,
        cache: &str,
        request_id: &str,
        current: Option<&Slot>,
    ) -> Option<Arc<WriteResult>> {
        let answer = self
            .inner
            .services
            .idempotency
            .recorded(cache, request_id)?;
        let holds = current.is_some_and(|slot| slot.version() == answer.version);
        (answer.applied && holds).then_some(answer)
    }

    /// Whether `version` of `key` is a write in doubt that its site undid (see
    /// [`idempotency::Idempotency::void`]).
    pub fn is_void(&self, cache: &str, key: &[u8], version: Version) -> bool {
        self.inner.services.idempotency.is_void(cache, key, version)
    }

    /// Every write answer kept for retries, by id, older ones first.
    pub fn kept_answers(&self) -> Vec<(idempotency::Id, Arc<WriteResult>)> {
        self.inner.services.idempotency.kept()
    }

    /// The void versions remembered here (see [`Store::is_void`]), as digests.
    pub fn kept_voids(&self) -> Vec<idempotency::Id> {
        self.inner.services.idempotency.voids()
    }

    /// Remembers a void version another member remembered.
    pub fn keep_void(&self, id: idempotency::Id) {
        self.inner.services.idempotency.keep_void(id);
    }

    /// Keeps a write answer another member kept, unless one is kept here for that id.
    pub fn keep_answer(&self, id: idempotency::Id, answer: Arc<WriteResult>) {
        self.inner.services.idempotency.keep(id, answer);
    }

    /// Takes changes another member sent (the key's primary, or a joining node's donor)
    /// and keeps the answers of the writes they came from, for retries.
    pub async fn apply_replicated(
        &self,
        cache: &str,
        changes: Vec<ReceivedChange>,
    ) -> Result<Vec<ChangeReply>> {
        let cache = self.cache(cache)?;
        let (mutations, answers): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .map(|change| (change.mutation, change.answer))
            .unzip();
        let outcomes = cache.apply_replicated(&mutations).await?;
        let mut replies = Vec::with_capacity(outcomes.len());
        for (outcome, answer) in outcomes.into_iter().zip(answers) {
            let recorded = match (&outcome, answer) {
                (ReplicaOutcome::Applied | ReplicaOutcome::AlreadyApplied, Some((id, answer))) => {
                    self.inner
                        .services
                        .idempotency
                        .record(cache.name(), &id, answer);
                    None
                }
                (ReplicaOutcome::Conflict(current), Some((id, _))) => {
                    self.recorded_answer(cache.name(), &id, current.as_ref())
                }
                _ => None,
            };
            replies.push(ChangeReply { outcome, recorded });
        }
        Ok(replies)
    }

    /// Writes several keys unconditionally, each on its own; with a request id, each
    /// key's write is idempotent under `{id}/{index}`.
    pub async fn put_all(
        &self,
        cache: &str,
        entries: Vec<(Bytes, NewValue)>,
        request_id: Option<&str>,
    ) -> Result<Vec<Version>> {
        self.cache(cache)?;
        let writes = entries
            .into_iter()
            .enumerate()
            .map(|(index, (key, value))| {
                let id = request_id
                    .filter(|id| !id.is_empty())
                    .map(|id| format!("{id}/{index}"));
                async move {
                    let request = WriteRequest {
                        key,
                        op: WriteOp::Put(value),
                        condition: Condition::Always,
                        keep_previous: false,
                    };
                    self.write(cache, request, id.as_deref(), Driver::OwnTask)
                        .await
                        .map(|result| result.version)
                }
            });
        stream::iter(writes)
            .buffered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Removes every live entry carrying `tag`; returns how many were removed.
    pub async fn remove_by_tag(&self, cache: &str, tag: &str) -> Result<u64> {
        let keys = self.cache(cache)?.keys_with_tag(tag);
        let removals = keys.into_iter().map(|key| async move {
            let request = WriteRequest {
                key,
                op: WriteOp::Remove,
                condition: Condition::Present,
                keep_previous: false,
            };
            self.write(cache, request, None, Driver::OwnTask).await
        });
        let mut removed = 0;
        let mut results = stream::iter(removals).buffer_unordered(BATCH_CONCURRENCY);
        while let Some(result) = results.next().await {
            if result?.applied {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every entry of a cache, on every member of the site.
    pub async fn clear(&self, cache: &str) -> Result<u64> {
        let cache = self.cache(cache)?.clone();
        let store = self.clone();
        tokio::spawn(async move { cache.clear(store.site()).await })
            .await
            .map_err(Error::TaskFailed)?
    }

    /// Removes every entry of this node's copy of a cache, at `version` (a clear another
    /// member ran).
    pub async fn clear_at(&self, cache: &str, version: Version) -> Result<u64> {
        let cache = self.cache(cache)?.clone();
        tokio::spawn(async move { cache.clear_at(version).await })
            .await
            .map_err(Error::TaskFailed)?
    }

    /// Live entries after `after` in key order.
    pub fn page(
        &self,
        cache: &str,
        after: Option<&Bytes>,
        limit: usize,
        tag: Option<&str>,
    ) -> Result<Page> {
        Ok(self.cache(cache)?.page(after, limit, tag))
    }

    /// Number of live entries.
    pub fn size(&self, cache: &str) -> Result<u64> {
        Ok(self.cache(cache)?.live_count() as u64)
    }

    /// The newest version held by any persistent cache (0 if none): which node of a
    /// restarting site has the freshest data.
    pub fn newest_persistent_version(&self) -> Version {
        self.caches()
            .filter(|cache| cache.is_persistent())
            .map(|cache| cache.keyspace.read().newest_version())
            .max()
            .unwrap_or(0)
    }

    /// Finishes pending storage writes and stops the storage thread; a write after this
    /// fails. The cluster and the relay still hold the store (and it them) when the node
    /// stops, so this does not wait for the last handle.
    pub fn shutdown(self) {
        if let Some(durability) = &self.inner.services.durability {
            durability.close();
        }
    }
}

#[cfg(test)]
mod tests;
