//! Change events: every change a node applies, whatever its origin, is published here.
//!
//! The store publishes one [`ChangeEvent`] per applied change while it still holds the
//! key's lock, so the events of one key are published in version order. Publishing never
//! waits: the hub is a bounded broadcast ring, and a subscriber that falls further behind
//! than the ring holds learns it (and is told to resync) instead of slowing writers down.
//! [`subscription`] feeds one listener's stream from it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::store::entry::{Entry, SiteName};
use crate::store::version::Version;

pub mod subscription;
#[cfg(test)]
mod tests;

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
    /// Every key of the cache was dropped (clear), or may have changed unseen (a resume
    /// from before what the node still remembers).
    InvalidateAll,
    /// Sent to a subscriber that fell behind, right before its stream ends; the version
    /// is where it can resume from (0: it must start over).
    ResyncRequired,
    /// To subscribers that asked for markers: every change up to the version was sent,
    /// except writes in flight.
    Synced,
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
    capacity: usize,
}

impl Hub {
    /// A hub whose subscribers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Hub {
        let capacity = capacity.max(1);
        let (sender, _) = broadcast::channel(capacity);
        Hub { sender, capacity }
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

    /// How many events a subscriber may fall behind by.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}
