//! Store types to protobuf messages.

use std::sync::Arc;

use bytes::Bytes;
use sitegrid_proto::v1;

use crate::events::{ChangeEvent, EventKind};
use crate::store::entry::Entry;

/// An entry's metadata as sent to clients.
pub(crate) fn metadata(entry: &Entry) -> v1::Metadata {
    v1::Metadata {
        version: entry.version,
        origin_site: entry.origin_site.to_string(),
        created_ms: millis(entry.created_ms),
        last_used_ms: millis(entry.last_used_ms()),
        lifespan_ms: millis(entry.lifespan_ms),
        max_idle_ms: millis(entry.max_idle_ms),
        tags: entry.tags.iter().map(|t| t.to_string()).collect(),
    }
}

/// An entry's value, as `Bytes` that keep the entry alive rather than a clone of the
/// value's own `Bytes`. Such a clone updates the value's reference count, a cache line
/// of its own that a read of a random key misses, where the entry's lines were just read
/// (on a single node at 50 callers x 16 pipelined Gets over 100,000 keys, that miss was
/// about 7% of the node's CPU). This costs a small allocation instead.
pub(crate) fn value_of(entry: Arc<Entry>) -> Bytes {
    struct Value(Arc<Entry>);
    impl AsRef<[u8]> for Value {
        fn as_ref(&self) -> &[u8] {
            &self.0.value
        }
    }
    Bytes::from_owner(Value(entry))
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A value with its metadata.
pub(crate) fn versioned(entry: &Entry) -> v1::VersionedValue {
    v1::VersionedValue {
        value: entry.value.clone(),
        metadata: Some(metadata(entry)),
    }
}

/// A keyed entry, with or without its value.
pub(crate) fn keyed(key: Bytes, entry: &Entry, with_value: bool) -> v1::Entry {
    v1::Entry {
        key,
        value: if with_value {
            entry.value.clone()
        } else {
            Bytes::new()
        },
        metadata: Some(metadata(entry)),
    }
}

/// A change event as streamed to a listener; values and metadata only if asked for.
pub(crate) fn event(event: &ChangeEvent, with_values: bool) -> v1::CacheEvent {
    let kind = match event.kind {
        EventKind::Created => v1::EventKind::Created,
        EventKind::Modified => v1::EventKind::Modified,
        EventKind::Removed => v1::EventKind::Removed,
        EventKind::Expired => v1::EventKind::Expired,
        EventKind::InvalidateAll => v1::EventKind::InvalidateAll,
        EventKind::ResyncRequired => v1::EventKind::ResyncRequired,
        EventKind::Synced => v1::EventKind::Synced,
    };
    let entry = event.entry.as_deref().filter(|_| with_values);
    v1::CacheEvent {
        kind: kind as i32,
        cache: event.cache.to_string(),
        key: event.key.clone(),
        version: event.version,
        origin_site: event.origin_site.to_string(),
        value: entry.map(|e| e.value.clone()).unwrap_or_default(),
        metadata: entry.map(metadata),
    }
}
