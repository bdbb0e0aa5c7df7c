//! One listener: what it asked for, and the task that feeds its stream.
//!
//! A subscription runs in three phases, each optional but the last:
//! 1. **current state**: every live entry of the subscribed caches, as `CREATED`;
//! 2. **replay**: the current state of every key changed after `resume_from_version`,
//!    tombstones included, in version order across the subscribed caches (after an
//!    `INVALIDATE_ALL` if removals after that version were already forgotten);
//! 3. **live**: every change published by the hub.
//!
//! It subscribes to the hub *before* phase 1, so nothing published meanwhile is lost; the
//! versions sent in phases 1 and 2 are remembered per key (by key hash) until the live
//! events queued during those phases are through, and a live event whose key was already
//! sent at the same or a newer version is dropped: no gap, no duplicate.
//!
//! A subscriber that falls `listener_buffer` events behind gets `RESYNC_REQUIRED` and its
//! stream ends. Its version is a safe place to resume from: the highest version sent once
//! live, the requested resume version during a replay, 0 ("start over") during phase 1.
//! Subscribers that ask for them get a `SYNCED` marker after phases 1 and 2 (at once for a
//! live-only subscription) with the first safe position.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

use crate::events::{ChangeEvent, EventKind, Hub};
use crate::store::cache::CacheStore;
use crate::store::entry::{Slot, TombstoneCause};
use crate::store::keyspace::ReplayCursor;
use crate::store::slot_key::key_hash;
use crate::store::version::Version;

/// Slots read from a cache at a time, so its lock is held briefly.
const PAGE: usize = 500;

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub struct ListenSpec {
    /// The caches to follow.
    pub caches: Vec<Arc<CacheStore>>,
    /// Only keys starting with these bytes.
    pub key_prefix: Bytes,
    /// Only live entries carrying this tag (removals are sent whatever their tags were,
    /// when the removed entry is no longer known).
    pub tag: Option<String>,
    /// Send the current entries first.
    pub include_current_state: bool,
    /// Replay changes after this version first; 0 = none.
    pub resume_from: Version,
    /// Send `SYNCED` markers.
    pub sync_markers: bool,
}

/// A subscription, attached to the hub from the moment it is made: changes published
/// after [`Subscription::new`] returns are never missed, however late [`run`] starts.
///
/// [`run`]: Subscription::run
#[derive(Debug)]
pub struct Subscription {
    spec: ListenSpec,
    live: tokio::sync::broadcast::Receiver<Arc<ChangeEvent>>,
    capacity: usize,
    /// Where the subscription begins: every change after it is for the subscriber.
    start: Version,
}

impl Subscription {
    /// Subscribes to `hub` now; `now` is the node's current version, where a
    /// subscription without current state or replay starts.
    pub fn new(spec: ListenSpec, hub: &Hub, now: Version) -> Subscription {
        Subscription {
            live: hub.subscribe(),
            capacity: hub.capacity(),
            start: if spec.resume_from > 0 {
                spec.resume_from
            } else {
                now
            },
            spec,
        }
    }

    /// Feeds `sender` until its receiver goes away, the subscriber falls behind (after
    /// sending `RESYNC_REQUIRED`), or `shutdown` turns true.
    pub async fn run(
        self,
        sender: mpsc::Sender<Arc<ChangeEvent>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let spec = self.spec;
        let mut subscriber = Subscriber {
            live: self.live,
            capacity: self.capacity,
            sent_early: HashMap::new(),
            // During the current state there is nothing to resume from.
            safe_position: if spec.include_current_state {
                0
            } else {
                self.start
            },
            highest_sent: self.start,
            start: self.start,
            sender,
            spec,
        };
        tokio::select! {
            _ = subscriber.serve() => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

/// One cache's changes being replayed: a page read ahead, and where the next page starts.
struct ReplaySource {
    index: usize,
    pending: VecDeque<(Bytes, Slot)>,
    /// `None` once the cache has nothing more.
    cursor: Option<ReplayCursor>,
}

impl ReplaySource {
    fn refill(&mut self, cache: &CacheStore) {
        if !self.pending.is_empty() {
            return;
        }
        let Some(cursor) = &self.cursor else { return };
        let changed = cache.keyspace.read().changed_after(cursor, PAGE);
        self.cursor = changed
            .last()
            .map(|(key, slot)| ReplayCursor::Position(slot.version(), key.clone()));
        self.pending.extend(changed);
    }
}

/// Why a subscription stops.
enum Stop {
    /// The client went away.
    Gone,
    /// It fell behind: send `RESYNC_REQUIRED` and stop.
    Behind,
}

struct Subscriber {
    spec: ListenSpec,
    live: tokio::sync::broadcast::Receiver<Arc<ChangeEvent>>,
    capacity: usize,
    /// Versions sent during the current-state and replay phases, by (cache, key hash).
    sent_early: HashMap<(usize, u64), Version>,
    /// Where the subscriber could resume from without missing anything.
    safe_position: Version,
    /// Where the subscription began.
    start: Version,
    highest_sent: Version,
    sender: mpsc::Sender<Arc<ChangeEvent>>,
}

impl Subscriber {
    async fn serve(&mut self) {
        let stop = match self.early_phases().await {
            Ok(()) => self.live_phase().await,
            Err(stop) => stop,
        };
        if let Stop::Behind = stop {
            metrics::counter!("sitegrid_listener_dropped_total").increment(1);
            let resync = ChangeEvent {
                cache: Arc::from(""),
                kind: EventKind::ResyncRequired,
                key: Bytes::new(),
                version: self.safe_position,
                origin_site: Arc::from(""),
                entry: None,
            };
            let _ = self.sender.send(Arc::new(resync)).await;
        }
    }

    /// Phases 1 and 2; each page checks that live events are not about to be lost. Ends
    /// with a `SYNCED` marker if asked for: from here on, positions are safe.
    async fn early_phases(&mut self) -> Result<(), Stop> {
        if self.spec.include_current_state {
            for index in 0..self.spec.caches.len() {
                self.send_current_state(index).await?;
            }
        }
        let synced = if self.spec.resume_from > 0 {
            self.replay().await?;
            self.highest_sent
        } else {
            self.start
        };
        self.safe_position = synced;
        if self.spec.sync_markers {
            self.send(ChangeEvent {
                cache: Arc::from(""),
                kind: EventKind::Synced,
                key: Bytes::new(),
                version: synced,
                origin_site: Arc::from(""),
                entry: None,
            })
            .await?;
        }
        Ok(())
    }

    fn check_not_behind(&self) -> Result<(), Stop> {
        if self.live.len() >= self.capacity {
            Err(Stop::Behind)
        } else {
            Ok(())
        }
    }

    async fn send_current_state(&mut self, index: usize) -> Result<(), Stop> {
        let cache = self.spec.caches[index].clone();
        let mut after = None;
        loop {
            self.check_not_behind()?;
            let (slots, next) = cache.keyspace.read().walk(after.as_ref(), PAGE);
            for (key, slot) in slots {
                if !key.starts_with(&self.spec.key_prefix) {
                    continue;
                }
                self.sent_early
                    .insert((index, key_hash(&key)), slot.version());
                if let Slot::Live(entry) = &slot
                    && self.tag_matches(Some(entry))
                    && !entry.is_expired(cache.now_ms())
                {
                    let event = ChangeEvent {
                        cache: cache.name().clone(),
                        kind: EventKind::Created,
                        key,
                        version: entry.version,
                        origin_site: entry.origin_site.clone(),
                        entry: Some(entry.clone()),
                    };
                    self.send(event).await?;
                }
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Replays every subscribed cache's changes after `resume_from`, merged in version
    /// order (a client resuming from the last version it saw must not skip another
    /// cache's changes), after an `INVALIDATE_ALL` for each cache whose removals after
    /// that version are forgotten.
    async fn replay(&mut self) -> Result<(), Stop> {
        let caches = self.spec.caches.clone();
        for cache in &caches {
            let forgotten = cache.keyspace.read().forgotten();
            if forgotten > self.spec.resume_from {
                // Removals after the resume point may be gone: the subscriber must drop
                // what it holds of this cache rather than keep keys that no longer exist.
                self.send(ChangeEvent {
                    cache: cache.name().clone(),
                    kind: EventKind::InvalidateAll,
                    key: Bytes::new(),
                    version: forgotten,
                    origin_site: Arc::from(""),
                    entry: None,
                })
                .await?;
            }
        }
        let mut sources: Vec<ReplaySource> = (0..caches.len())
            .map(|index| ReplaySource {
                index,
                pending: VecDeque::new(),
                cursor: Some(ReplayCursor::Version(self.spec.resume_from)),
            })
            .collect();
        loop {
            for source in &mut sources {
                source.refill(&caches[source.index]);
            }
            self.check_not_behind()?;
            let next = sources
                .iter_mut()
                .filter(|source| !source.pending.is_empty())
                .min_by_key(|source| source.pending[0].1.version());
            let Some(source) = next else {
                return Ok(());
            };
            let index = source.index;
            let (key, slot) = source.pending.pop_front().expect("not empty");
            if let Some(event) = self.replayed_event(index, key, slot) {
                self.send(event).await?;
            }
        }
    }

    /// The event replaying one slot, if it passes the filters.
    fn replayed_event(&mut self, index: usize, key: Bytes, slot: Slot) -> Option<ChangeEvent> {
        if !key.starts_with(&self.spec.key_prefix) {
            return None;
        }
        self.sent_early
            .insert((index, key_hash(&key)), slot.version());
        let cache = self.spec.caches[index].name().clone();
        match slot {
            Slot::Live(entry) => self.tag_matches(Some(&entry)).then(|| ChangeEvent {
                cache,
                kind: EventKind::Modified,
                key,
                version: entry.version,
                origin_site: entry.origin_site.clone(),
                entry: Some(entry),
            }),
            Slot::Tombstone(tombstone) => Some(ChangeEvent {
                cache,
                kind: match tombstone.cause {
                    TombstoneCause::Removed => EventKind::Removed,
                    TombstoneCause::Expired { .. } => EventKind::Expired,
                },
                key,
                version: tombstone.version,
                origin_site: tombstone.origin_site.clone(),
                entry: None,
            }),
        }
    }

    async fn live_phase(&mut self) -> Stop {
        // Events queued while the early phases ran may repeat what they sent; once those
        // are through, nothing can, and the versions sent become a safe resume point.
        let mut overlapping = self.live.len();
        if overlapping == 0 {
            self.sent_early = HashMap::new();
            self.safe_position = self.highest_sent;
        }
        loop {
            let event = tokio::select! {
                received = self.live.recv() => received,
                _ = self.sender.closed() => return Stop::Gone,
            };
            let event = match event {
                Ok(event) => event,
                Err(RecvError::Lagged(_)) => return Stop::Behind,
                Err(RecvError::Closed) => return Stop::Gone,
            };
            if let Some(index) = self.cache_index(&event)
                && self.wanted(index, &event)
                && let Err(stop) = self.send_shared(event).await
            {
                return stop;
            }
            if overlapping > 0 {
                overlapping -= 1;
                if overlapping == 0 {
                    self.sent_early = HashMap::new();
                    self.safe_position = self.highest_sent;
                }
            } else {
                self.safe_position = self.highest_sent;
            }
        }
    }

    fn cache_index(&self, event: &ChangeEvent) -> Option<usize> {
        self.spec
            .caches
            .iter()
            .position(|cache| **cache.name() == *event.cache)
    }

    /// Whether a live event passes the filters and was not already sent.
    fn wanted(&self, index: usize, event: &ChangeEvent) -> bool {
        if event.kind == EventKind::InvalidateAll {
            return true;
        }
        if !event.key.starts_with(&self.spec.key_prefix) {
            return false;
        }
        if !self.tag_matches(event.entry.as_ref()) {
            return false;
        }
        match self.sent_early.get(&(index, key_hash(&event.key))) {
            Some(sent) => *sent < event.version,
            None => true,
        }
    }

    fn tag_matches(&self, entry: Option<&Arc<crate::store::entry::Entry>>) -> bool {
        match (&self.spec.tag, entry) {
            (None, _) => true,
            (Some(tag), Some(entry)) => entry.has_tag(tag),
            // A removal whose entry is unknown: the subscriber may hold the key.
            (Some(_), None) => true,
        }
    }

    async fn send(&mut self, event: ChangeEvent) -> Result<(), Stop> {
        self.send_shared(Arc::new(event)).await
    }

    async fn send_shared(&mut self, event: Arc<ChangeEvent>) -> Result<(), Stop> {
        let version = event.version;
        self.sender.send(event).await.map_err(|_| Stop::Gone)?;
        self.highest_sent = self.highest_sent.max(version);
        metrics::counter!("sitegrid_listener_events_total").increment(1);
        Ok(())
    }
}
