//! What the store keeps per key: a live [`Entry`] or a [`Tombstone`].
//!
//! An entry is immutable once written except for its last-used time, which reads refresh
//! without taking any lock. A tombstone remembers a removal (or an expiry) so that a late
//! or replayed older write can't bring the key back, and so listeners can resume across
//! the removal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::store::time::UnixMillis;
use crate::store::version::Version;

/// Name of a site, shared by every entry that came from it.
pub type SiteName = Arc<str>;

/// A live entry: a value and its metadata.
#[derive(Debug)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// Version of the write that produced this entry.
    pub version: Version,
    /// Site where that write was accepted.
    pub origin_site: SiteName,
    /// Time of that write; the lifespan counts from it.
    pub created_ms: UnixMillis,
    /// Last read or write; the max-idle time counts from it. Reads refresh it lock-free.
    last_used_ms: AtomicU64,
    /// 0 = never expires by age.
    pub lifespan_ms: u64,
    /// 0 = never expires by idleness.
    pub max_idle_ms: u64,
    /// Tags (`name=value`).
    pub tags: Box<[Arc<str>]>,
    /// The request that wrote it ([`writer_of`] its request id; 0 = none): a retry of
    /// that request whose kept answer is lost finds its answer here.
    pub writer: u64,
}

/// How an entry or tombstone names the request that made it: a 64-bit digest of the
/// request id, never 0 (0 = no request id).
pub fn writer_of(request_id: Option<&str>) -> u64 {
    match request_id.filter(|id| !id.is_empty()) {
        Some(id) => xxhash_rust::xxh3::xxh3_64(id.as_bytes()).max(1),
        None => 0,
    }
}

impl Entry {
    /// A new entry as of `now_ms`.
    pub fn new(
        value: Bytes,
        version: Version,
        origin_site: SiteName,
        now_ms: UnixMillis,
        lifespan_ms: u64,
        max_idle_ms: u64,
        tags: Box<[Arc<str>]>,
    ) -> Entry {
        Entry::restore(
            value,
            version,
            origin_site,
            now_ms,
            now_ms,
            lifespan_ms,
            max_idle_ms,
            tags,
        )
    }

    /// An entry restored from storage or received from another node, with its times.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        value: Bytes,
        version: Version,
        origin_site: SiteName,
        created_ms: UnixMillis,
        last_used_ms: UnixMillis,
        lifespan_ms: u64,
        max_idle_ms: u64,
        tags: Box<[Arc<str>]>,
    ) -> Entry {
        Entry {
            value,
            version,
            origin_site,
            created_ms,
            last_used_ms: AtomicU64::new(last_used_ms),
            lifespan_ms,
            max_idle_ms,
            tags,
            writer: 0,
        }
    }

    /// This entry, as written by the request `writer` names.
    pub fn written_by(mut self, writer: u64) -> Entry {
        self.writer = writer;
        self
    }

    /// Last read or write.
    pub fn last_used_ms(&self) -> UnixMillis {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// Records a read at `now_ms` (never moves last-used backwards).
    pub fn touch(&self, now_ms: UnixMillis) {
        self.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// When the entry expires, as known now; `None` = never.
    pub fn deadline_ms(&self) -> Option<UnixMillis> {
        let by_age =
            (self.lifespan_ms > 0).then(|| self.created_ms.saturating_add(self.lifespan_ms));
        let by_idle =
            (self.max_idle_ms > 0).then(|| self.last_used_ms().saturating_add(self.max_idle_ms));
        match (by_age, by_idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the entry has expired at `now_ms`; an expired entry reads as absent even
    /// before the reaper removes it.
    pub fn is_expired(&self, now_ms: UnixMillis) -> bool {
        self.deadline_ms()
            .is_some_and(|deadline| now_ms >= deadline)
    }

    /// Whether the entry carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }
}

/// Why a key became a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TombstoneCause {
    /// A client removed it (or a clear, or a remove-by-tag).
    Removed,
    /// It expired; `base` is the version of the entry that expired. An expiry is not a
    /// write: for the replication rule, the key still stands at `base` (see
    /// [`Slot::state_version`]), so nodes or sites that expire the same entry at slightly
    /// different times agree on what the next write replaces.
    Expired {
        /// Version of the entry that expired.
        base: Version,
    },
}

/// A removed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// Version of the removal (or expiry).
    pub version: Version,
    /// Site where the removal was accepted.
    pub origin_site: SiteName,
    /// When the tombstone was made; it is purged `tombstone_ttl` later.
    pub removed_ms: UnixMillis,
    /// Removal or expiry.
    pub cause: TombstoneCause,
    /// The request that removed the key, as [`Entry::writer`].
    pub writer: u64,
}

/// What the store holds for a key.
#[derive(Debug, Clone)]
pub enum Slot {
    /// A live entry (possibly expired but not yet reaped).
    Live(Arc<Entry>),
    /// A removed or expired key.
    Tombstone(Arc<Tombstone>),
}

impl Slot {
    /// Version of the last change to the key (write, removal or expiry); the position of
    /// that change in listener streams.
    pub fn version(&self) -> Version {
        match self {
            Slot::Live(entry) => entry.version,
            Slot::Tombstone(tombstone) => tombstone.version,
        }
    }

    /// The version the replication rule compares: the last *write* to the key. Equal to
    /// [`Slot::version`] except for expiry tombstones, which stand at the version of the
    /// entry that expired.
    pub fn state_version(&self) -> Version {
        match self {
            Slot::Live(entry) => entry.version,
            Slot::Tombstone(tombstone) => match tombstone.cause {
                TombstoneCause::Removed => tombstone.version,
                TombstoneCause::Expired { base } => base,
            },
        }
    }

    /// The live entry, if the key is present and not expired at `now_ms`.
    pub fn live_at(&self, now_ms: UnixMillis) -> Option<&Arc<Entry>> {
        match self {
            Slot::Live(entry) if !entry.is_expired(now_ms) => Some(entry),
            _ => None,
        }
    }

    /// Site of the last change.
    pub fn origin_site(&self) -> &SiteName {
        match self {
            Slot::Live(entry) => &entry.origin_site,
            Slot::Tombstone(tombstone) => &tombstone.origin_site,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lifespan_ms: u64, max_idle_ms: u64) -> Entry {
        Entry::new(
            Bytes::from_static(b"v"),
            1,
            Arc::from("site1"),
            1_000,
            lifespan_ms,
            max_idle_ms,
            Box::new([]),
        )
    }

    #[test]
    fn an_entry_without_lifespan_or_max_idle_never_expires() {
        let entry = entry(0, 0);
        assert_eq!(entry.deadline_ms(), None);
        assert!(!entry.is_expired(u64::MAX));
    }

    #[test]
    fn lifespan_counts_from_the_write() {
        let entry = entry(500, 0);
        assert!(!entry.is_expired(1_499));
        assert!(entry.is_expired(1_500));
    }

    #[test]
    fn reads_push_the_max_idle_deadline_back() {
        let entry = entry(0, 100);
        assert!(entry.is_expired(1_100));
        entry.touch(1_090);
        assert!(!entry.is_expired(1_100));
        assert!(entry.is_expired(1_190));
        entry.touch(1_000); // an older touch does not move it back
        assert_eq!(entry.last_used_ms(), 1_090);
    }

    #[test]
    fn the_earlier_of_lifespan_and_max_idle_wins() {
        let entry = entry(300, 100);
        assert_eq!(entry.deadline_ms(), Some(1_100));
        entry.touch(1_250);
        assert_eq!(entry.deadline_ms(), Some(1_300));
    }

    #[test]
    fn an_expiry_tombstone_stands_at_the_expired_entry_version() {
        let slot = Slot::Tombstone(Arc::new(Tombstone {
            version: 20,
            origin_site: Arc::from("site1"),
            removed_ms: 5,
            cause: TombstoneCause::Expired { base: 10 },
            writer: 0,
        }));
        assert_eq!(slot.version(), 20);
        assert_eq!(slot.state_version(), 10);
    }
}
