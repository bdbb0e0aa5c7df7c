//! Change events: every change a node applies, whatever its origin, is published here.
//!
//! The store publishes one [`ChangeEvent`] per applied change while it still holds the
//! key's lock, so the events of one key are published in version order. Publishing never
//! waits: the hub is a bounded broadcast ring, and a subscriber that falls further behind
//! than the ring holds learns it (and is told to resync) instead of slowing writers down.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::store::entry::{Entry, SiteName};
use crate::store::version::Version;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An absent key got a value.
    Created,
    /// A present key got a new value.
    Modified,
    /// A key was removed.
    Removed,
    /// A key expired.
    Expired,
    /// Every key of the cache was dropped (clear).
    InvalidateAll,
}

/// One applied change.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// The cache.
    pub cache: Arc<str>,
    /// What happened.
    pub kind: EventKind,
    /// The key (empty for `InvalidateAll`).
    pub key: Bytes,
    /// Version of the change.
    pub version: Version,
    /// Site where the change was accepted.
    pub origin_site: SiteName,
    /// The new entry (created, modified) or the last one (removed, expired), if known.
    pub entry: Option<Arc<Entry>>,
}

/// Fans change events out to subscribers.
#[derive(Debug, Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<ChangeEvent>>,
}

impl Hub {
    /// A hub whose subscribers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Hub {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Hub { sender }
    }

    /// Publishes the event `make` builds, if anyone subscribes; never waits.
    pub fn publish(&self, make: impl FnOnce() -> ChangeEvent) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        // A subscriber that left meanwhile is not an error: the event has no audience.
        let _ = self.sender.send(Arc::new(make()));
    }

    /// A new subscription to every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.sender.subscribe()
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}
