//! Typed results of cache operations, converted from the wire messages.
//!
//! Conditional writes answer with an enum rather than an error: a condition that does
//! not hold is a normal answer (the server says OK), and the enum forces the caller to
//! look at which one it got.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sitegrid_proto::v1;

/// Metadata the server keeps with every entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Version of the write that produced the entry; pass it to the `*_with_version`
    /// operations.
    pub version: u64,
    /// Site where that write was accepted.
    pub origin_site: String,
    /// When that write happened; the lifespan counts from it.
    pub created: SystemTime,
    /// Last read or write; the max idle time counts from it.
    pub last_used: SystemTime,
    /// Lifespan, `None` when the entry does not expire by age.
    pub lifespan: Option<Duration>,
    /// Max idle time, `None` when the entry does not expire by idleness.
    pub max_idle: Option<Duration>,
    /// Tags, each `name=value`.
    pub tags: Vec<String>,
}

/// A value with its metadata: a previous, existing or current entry of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Bytes,
    /// The entry's metadata.
    pub metadata: Metadata,
}

/// A key with its value and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// The value; empty when keys only were asked for.
    pub value: Bytes,
    /// The entry's metadata.
    pub metadata: Metadata,
}

/// What a `put` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// Version of this write.
    pub version: u64,
    /// The replaced entry, when asked for and the key was present.
    pub previous: Option<Versioned>,
}

/// What a `put_if_absent` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutIfAbsentOutcome {
    /// The key was absent and now holds the value.
    Stored {
        /// Version of this write.
        version: u64,
    },
    /// The key was present; nothing was written.
    Present(Versioned),
}

/// What a `replace` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceOutcome {
    /// The key was present and now holds the new value.
    Replaced {
        /// Version of this write.
        version: u64,
        /// The replaced entry, when asked for.
        previous: Option<Versioned>,
    },
    /// The key was absent; nothing was written.
    Absent,
}

/// What a `replace_with_version` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceWithVersionOutcome {
    /// The key had the expected version and now holds the new value.
    Replaced {
        /// Version of this write.
        version: u64,
    },
    /// The key has another version (`current` holds it) or is absent (`current` is
    /// `None`); nothing was written.
    NotReplaced {
        /// The key's current entry, if any.
        current: Option<Versioned>,
    },
}

/// What a `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// The key was present and is now removed.
    Removed {
        /// Version of the removal.
        version: u64,
        /// The removed entry (the server always sends it; `None` only from a server
        /// that left it out).
        previous: Option<Versioned>,
    },
    /// The key was absent.
    Absent,
}

/// What a `remove_with_version` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveWithVersionOutcome {
    /// The key had the expected version and is now removed.
    Removed {
        /// Version of the removal.
        version: u64,
    },
    /// The key has another version (`current` holds it) or is absent (`current` is
    /// `None`); nothing was removed.
    NotRemoved {
        /// The key's current entry, if any.
        current: Option<Versioned>,
    },
}

impl From<v1::Metadata> for Metadata {
    fn from(m: v1::Metadata) -> Self {
        Metadata {
            version: m.version,
            origin_site: m.origin_site,
            created: unix_ms(m.created_ms),
            last_used: unix_ms(m.last_used_ms),
            lifespan: positive_ms(m.lifespan_ms),
            max_idle: positive_ms(m.max_idle_ms),
            tags: m.tags,
        }
    }
}

impl From<v1::VersionedValue> for Versioned {
    fn from(v: v1::VersionedValue) -> Self {
        Versioned {
            value: v.value,
            metadata: v.metadata.unwrap_or_default().into(),
        }
    }
}

impl From<v1::Entry> for Entry {
    fn from(e: v1::Entry) -> Self {
        Entry {
            key: e.key,
            value: e.value,
            metadata: e.metadata.unwrap_or_default().into(),
        }
    }
}

impl From<v1::PutResponse> for PutOutcome {
    fn from(r: v1::PutResponse) -> Self {
        PutOutcome {
            version: r.version,
            previous: r.previous.map(Versioned::from),
        }
    }
}

impl From<v1::PutIfAbsentResponse> for PutIfAbsentOutcome {
    fn from(r: v1::PutIfAbsentResponse) -> Self {
        if r.stored {
            PutIfAbsentOutcome::Stored { version: r.version }
        } else {
            PutIfAbsentOutcome::Present(r.existing.unwrap_or_default().into())
        }
    }
}

impl From<v1::ReplaceResponse> for ReplaceOutcome {
    fn from(r: v1::ReplaceResponse) -> Self {
        if r.replaced {
            ReplaceOutcome::Replaced {
                version: r.version,
                previous: r.previous.map(Versioned::from),
            }
        } else {
            ReplaceOutcome::Absent
        }
    }
}

impl From<v1::ReplaceWithVersionResponse> for ReplaceWithVersionOutcome {
    fn from(r: v1::ReplaceWithVersionResponse) -> Self {
        if r.replaced {
            ReplaceWithVersionOutcome::Replaced { version: r.version }
        } else {
            ReplaceWithVersionOutcome::NotReplaced {
                current: r.current.map(Versioned::from),
            }
        }
    }
}

impl From<v1::RemoveResponse> for RemoveOutcome {
    fn from(r: v1::RemoveResponse) -> Self {
        if r.removed {
            RemoveOutcome::Removed {
                version: r.version,
                previous: r.previous.map(Versioned::from),
            }
        } else {
            RemoveOutcome::Absent
        }
    }
}

impl From<v1::RemoveWithVersionResponse> for RemoveWithVersionOutcome {
    fn from(r: v1::RemoveWithVersionResponse) -> Self {
        if r.removed {
            RemoveWithVersionOutcome::Removed { version: r.version }
        } else {
            RemoveWithVersionOutcome::NotRemoved {
                current: r.current.map(Versioned::from),
            }
        }
    }
}

/// A Unix time in milliseconds; times before 1970 (never sent) clamp to the epoch.
fn unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A duration in milliseconds where 0 (and anything negative) means "none".
fn positive_ms(ms: i64) -> Option<Duration> {
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_metadata(version: u64) -> v1::Metadata {
        v1::Metadata {
            version,
            origin_site: "site1".into(),
            created_ms: 1_700_000_000_000,
            last_used_ms: 1_700_000_001_000,
            lifespan_ms: 30_000,
            max_idle_ms: 0,
            tags: vec!["user=u1".into()],
        }
    }

    #[test]
    fn metadata_converts_times_and_zero_durations() {
        let metadata = Metadata::from(wire_metadata(7));
        assert_eq!(metadata.version, 7);
        assert_eq!(metadata.origin_site, "site1");
        assert_eq!(
            metadata.created,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
        );
        assert_eq!(
            metadata.last_used,
            UNIX_EPOCH + Duration::from_millis(1_700_000_001_000)
        );
        assert_eq!(metadata.lifespan, Some(Duration::from_secs(30)));
        assert_eq!(metadata.max_idle, None);
        assert_eq!(metadata.tags, ["user=u1"]);
    }

    #[test]
    fn put_if_absent_refused_carries_the_existing_entry() {
        let outcome = PutIfAbsentOutcome::from(v1::PutIfAbsentResponse {
            stored: false,
            version: 0,
            existing: Some(v1::VersionedValue {
                value: Bytes::from_static(b"first"),
                metadata: Some(wire_metadata(3)),
            }),
        });
        let PutIfAbsentOutcome::Present(existing) = outcome else {
            panic!("expected present, got {outcome:?}");
        };
        assert_eq!(existing.value, "first");
        assert_eq!(existing.metadata.version, 3);
    }

    #[test]
    fn replace_with_version_mismatch_and_absence_are_told_apart() {
        let mismatch = ReplaceWithVersionOutcome::from(v1::ReplaceWithVersionResponse {
            replaced: false,
            version: 0,
            current: Some(v1::VersionedValue {
                value: Bytes::from_static(b"v"),
                metadata: Some(wire_metadata(9)),
            }),
        });
        assert!(matches!(
            mismatch,
            ReplaceWithVersionOutcome::NotReplaced { current: Some(ref c) } if c.metadata.version == 9
        ));
        let absent = ReplaceWithVersionOutcome::from(v1::ReplaceWithVersionResponse::default());
        assert_eq!(
            absent,
            ReplaceWithVersionOutcome::NotReplaced { current: None }
        );
    }

    #[test]
    fn remove_outcomes_follow_the_removed_flag() {
        let removed = RemoveOutcome::from(v1::RemoveResponse {
            removed: true,
            previous: Some(v1::VersionedValue::default()),
            version: 12,
        });
        assert!(matches!(
            removed,
            RemoveOutcome::Removed {
                version: 12,
                previous: Some(_)
            }
        ));
        assert_eq!(
            RemoveOutcome::from(v1::RemoveResponse::default()),
            RemoveOutcome::Absent
        );
        assert_eq!(
            RemoveWithVersionOutcome::from(v1::RemoveWithVersionResponse {
                removed: true,
                current: None,
                version: 13,
            }),
            RemoveWithVersionOutcome::Removed { version: 13 }
        );
    }

    #[test]
    fn an_entry_without_metadata_gets_empty_metadata() {
        let entry = Entry::from(v1::Entry {
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
            metadata: None,
        });
        assert_eq!(entry.metadata.version, 0);
        assert_eq!(entry.metadata.created, UNIX_EPOCH);
        assert_eq!(entry.metadata.lifespan, None);
    }
}
