//! What a listener receives: [`Event`], typed from the wire's `CacheEvent`.
//!
//! The wire's `RESYNC_REQUIRED` and `SYNCED` never reach the application: the
//! [`EventStream`](crate::EventStream) handles the first by resuming and keeps the second
//! as its resume position, so they have no variant here.

use bytes::Bytes;
use sitegrid_proto::v1;

use crate::types::Metadata;

/// One event of an [`EventStream`](crate::EventStream).
// Nearly every event is a change, so boxing it would cost an allocation per event to
// save space only in the rare invalidations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key of a subscribed cache changed.
    Changed(Change),
    /// Every local copy of `cache` may be stale and must be dropped: the cache was
    /// cleared, the server no longer remembers every removal since the resume point, or
    /// the stream had to start over and may have missed changes.
    InvalidateAll {
        /// The cache whose copies must be dropped.
        cache: String,
        /// The server's version of the invalidation (the clear, or the newest removal it
        /// forgot); 0 when the client itself invalidates because it started over.
        version: u64,
    },
}

/// A change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened to the key.
    pub kind: ChangeKind,
    /// The cache of the key.
    pub cache: String,
    /// The key.
    pub key: Bytes,
    /// Version of the change; the versions of one key only grow.
    pub version: u64,
    /// Site where the change was accepted.
    pub origin_site: String,
    /// The new value (created, modified) or the last one (removed, expired); `None` when
    /// values were not asked for, or when the server no longer knows the removed entry.
    pub value: Option<Bytes>,
    /// The entry's metadata, under the same conditions as `value`.
    pub metadata: Option<Metadata>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// An absent key got a value (also every entry of the current state, when asked for).
    Created,
    /// A present key got a new value (also every live key of a replay after a resume).
    Modified,
    /// A client removed the key.
    Removed,
    /// The key's lifespan or max idle time ran out.
    Expired,
}

impl ChangeKind {
    /// The lowercase name: `created`, `modified`, `removed`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Modified => "modified",
            ChangeKind::Removed => "removed",
            ChangeKind::Expired => "expired",
        }
    }
}

impl Change {
    /// Converts a wire event of a change `kind`; `with_values` is whether the
    /// subscription asked for values, since an empty value is otherwise ambiguous.
    pub(crate) fn from_wire(kind: ChangeKind, event: v1::CacheEvent, with_values: bool) -> Self {
        // The server leaves metadata out for a removal whose entry it no longer knows
        // (a replayed tombstone): its empty value is then no value at all.
        let known = with_values && (event.metadata.is_some() || !event.value.is_empty());
        Change {
            kind,
            cache: event.cache,
            key: event.key,
            version: event.version,
            origin_site: event.origin_site,
            value: known.then_some(event.value),
            metadata: event.metadata.filter(|_| with_values).map(Metadata::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(value: &'static [u8], metadata: Option<v1::Metadata>) -> v1::CacheEvent {
        v1::CacheEvent {
            kind: v1::EventKind::Removed as i32,
            cache: "work".into(),
            key: Bytes::from_static(b"k"),
            version: 42,
            origin_site: "site1".into(),
            value: Bytes::from_static(value),
            metadata,
        }
    }

    fn wire_metadata() -> v1::Metadata {
        v1::Metadata {
            version: 42,
            origin_site: "site1".into(),
            ..v1::Metadata::default()
        }
    }

    #[test]
    fn a_change_with_values_keeps_an_empty_value_when_the_entry_is_known() {
        let change = Change::from_wire(ChangeKind::Removed, wire(b"", Some(wire_metadata())), true);
        assert_eq!(change.value, Some(Bytes::new()));
        assert_eq!(change.metadata.unwrap().version, 42);
        assert_eq!(change.cache, "work");
        assert_eq!(change.origin_site, "site1");
    }

    #[test]
    fn a_removal_of_an_unknown_entry_has_no_value() {
        let change = Change::from_wire(ChangeKind::Removed, wire(b"", None), true);
        assert_eq!(change.value, None);
        assert_eq!(change.metadata, None);
    }

    #[test]
    fn keys_only_changes_have_neither_value_nor_metadata() {
        let change = Change::from_wire(
            ChangeKind::Modified,
            wire(b"v", Some(wire_metadata())),
            false,
        );
        assert_eq!(change.value, None);
        assert_eq!(change.metadata, None);
        assert_eq!(change.version, 42);
    }

    #[test]
    fn kinds_have_lowercase_names() {
        let names: Vec<&str> = [
            ChangeKind::Created,
            ChangeKind::Modified,
            ChangeKind::Removed,
            ChangeKind::Expired,
        ]
        .into_iter()
        .map(ChangeKind::as_str)
        .collect();
        assert_eq!(names, ["created", "modified", "removed", "expired"]);
    }
}
