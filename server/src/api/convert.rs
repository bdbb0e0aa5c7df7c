//! Store types to protobuf messages.

use bytes::Bytes;
use sitegrid_proto::v1;

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
