//! How a slot is written to storage.
//!
//! A record is one format byte, then (format 2) an 8-byte checksum of the rest, then a
//! protobuf message. Protobuf because fields can be added without breaking older data
//! (nodes are upgraded one at a time and must read what the previous version wrote), and
//! because its decoder is bounds-checked: damaged bytes give an error, never a panic. The
//! checksum because protobuf alone can't tell a record cut short at a field boundary
//! from a shorter record: a truncated value would read back as an entry with an empty
//! value. Records of format 1 (no checksum) are still read.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::store::entry::{Entry, SiteName, Slot, Tombstone, TombstoneCause};

/// The first record format: the protobuf message, unchecked. Still read, no longer
/// written.
pub const FORMAT_V1: u8 = 1;
/// The format written: the xxh3-64 of the message (little-endian), then the message.
pub const FORMAT_V2: u8 = 2;
/// Bytes of the checksum of a format 2 record.
const CHECKSUM_BYTES: usize = 8;

const KIND_LIVE: u32 = 0;
const KIND_REMOVED: u32 = 1;
const KIND_EXPIRED: u32 = 2;

/// A slot as it is stored, after the format byte: public so that tests and fuzz targets
/// can build records of every shape, well-formed or not.
#[derive(Clone, PartialEq, Message)]
pub struct StoredRecord {
    /// `0` live, `1` removed, `2` expired.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The slot's version.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Site where the write was accepted.
    #[prost(string, tag = "3")]
    pub origin_site: String,
    /// The value (live entries).
    #[prost(bytes = "bytes", tag = "4")]
    pub value: Bytes,
    /// When the entry was written.
    #[prost(uint64, tag = "5")]
    pub created_ms: u64,
    /// Last read or write.
    #[prost(uint64, tag = "6")]
    pub last_used_ms: u64,
    /// Lifespan, 0 = none.
    #[prost(uint64, tag = "7")]
    pub lifespan_ms: u64,
    /// Max idle, 0 = none.
    #[prost(uint64, tag = "8")]
    pub max_idle_ms: u64,
    /// Tags, each `name=value`.
    #[prost(string, repeated, tag = "9")]
    pub tags: Vec<String>,
    /// Tombstones: when removed.
    #[prost(uint64, tag = "10")]
    pub removed_ms: u64,
    /// Expired tombstones: the expired entry's version.
    #[prost(uint64, tag = "11")]
    pub base_version: u64,
    /// The request that made the slot (see `Entry::writer`); 0 = none.
    #[prost(uint64, tag = "12")]
    pub writer: u64,
}

/// Why stored bytes could not be read back as a slot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// No bytes at all.
    #[error("empty record")]
    Empty,
    /// Written by a newer sitegrid, or damaged.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The protobuf part does not decode.
    #[error("damaged record: {0}")]
    Damaged(String),
    /// The bytes are not those that were written (cut short, overwritten).
    #[error("damaged record: the checksum does not match ({0} bytes)")]
    Checksum(usize),
    /// It decodes but is not a valid slot.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// Encodes a slot for storage.
pub fn encode(slot: &Slot) -> Vec<u8> {
    let record = match slot {
        Slot::Live(entry) => StoredRecord {
            kind: KIND_LIVE,
            version: entry.version,
            origin_site: entry.origin_site.to_string(),
            value: entry.value.clone(),
            created_ms: entry.created_ms,
            last_used_ms: entry.last_used_ms(),
            lifespan_ms: entry.lifespan_ms,
            max_idle_ms: entry.max_idle_ms,
            tags: entry.tags.iter().map(|t| t.to_string()).collect(),
            removed_ms: 0,
            base_version: 0,
            writer: entry.writer,
        },
        Slot::Tombstone(tombstone) => {
            let (kind, base_version) = match tombstone.cause {
                TombstoneCause::Removed => (KIND_REMOVED, 0),
                TombstoneCause::Expired { base } => (KIND_EXPIRED, base),
            };
            StoredRecord {
                kind,
                version: tombstone.version,
                origin_site: tombstone.origin_site.to_string(),
                removed_ms: tombstone.removed_ms,
                base_version,
                writer: tombstone.writer,
                ..StoredRecord::default()
            }
        }
    };
    frame(&record)
}

/// The bytes stored for `record`: the format byte, the checksum, the message.
pub fn frame(record: &StoredRecord) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + CHECKSUM_BYTES + record.encoded_len());
    bytes.push(FORMAT_V2);
    bytes.extend_from_slice(&[0; CHECKSUM_BYTES]);
    record
        .encode(&mut bytes)
        .expect("a Vec grows to fit any message");
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[1 + CHECKSUM_BYTES..]);
    bytes[1..=CHECKSUM_BYTES].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// The protobuf message of a record, checked against its checksum where it has one.
fn message(bytes: &[u8]) -> Result<&[u8], RecordError> {
    let (&format, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    match format {
        FORMAT_V1 => Ok(rest),
        FORMAT_V2 => {
            let (checksum, body) = rest
                .split_first_chunk::<CHECKSUM_BYTES>()
                .ok_or(RecordError::Checksum(bytes.len()))?;
            if u64::from_le_bytes(*checksum) != xxhash_rust::xxh3::xxh3_64(body) {
                return Err(RecordError::Checksum(bytes.len()));
            }
            Ok(body)
        }
        other => Err(RecordError::UnknownFormat(other)),
    }
}

/// Decodes stored bytes; `intern` turns a site name into the shared name entries use.
pub fn decode(bytes: &[u8], intern: &dyn Fn(&str) -> SiteName) -> Result<Slot, RecordError> {
    let record = StoredRecord::decode(message(bytes)?)
        .map_err(|error| RecordError::Damaged(error.to_string()))?;
    if record.version == 0 {
        return Err(RecordError::Invalid("version 0"));
    }
    let origin_site = intern(&record.origin_site);
    let tombstone = |cause| {
        Slot::Tombstone(Arc::new(Tombstone {
            version: record.version,
            origin_site: origin_site.clone(),
            removed_ms: record.removed_ms,
            cause,
            writer: record.writer,
        }))
    };
    match record.kind {
        KIND_LIVE => Ok(Slot::Live(Arc::new(
            Entry::restore(
                // Copied so the entry doesn't keep the whole read buffer alive.
                Bytes::copy_from_slice(&record.value),
                record.version,
                origin_site.clone(),
                record.created_ms,
                record.last_used_ms,
                record.lifespan_ms,
                record.max_idle_ms,
                record.tags.iter().map(|t| Arc::from(t.as_str())).collect(),
            )
            .written_by(record.writer),
        ))),
        KIND_REMOVED => Ok(tombstone(TombstoneCause::Removed)),
        KIND_EXPIRED => Ok(tombstone(TombstoneCause::Expired {
            base: record.base_version,
        })),
        _ => Err(RecordError::Invalid("unknown slot kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn intern(name: &str) -> SiteName {
        Arc::from(name)
    }

    #[test]
    fn a_live_entry_round_trips_with_all_its_metadata() {
        let entry = Entry::restore(
            Bytes::from_static(b"\x00\xffvalue"),
            42,
            Arc::from("site2"),
            1_000,
            1_500,
            60_000,
            30_000,
            vec![Arc::from("user=u1"), Arc::from("realm=r1")].into_boxed_slice(),
        )
        .written_by(0xfeed);
        let decoded = decode(&encode(&Slot::Live(Arc::new(entry))), &intern).unwrap();
        let Slot::Live(back) = decoded else {
            panic!("expected a live entry")
        };
        assert_eq!(&back.value[..], b"\x00\xffvalue");
        assert_eq!(back.version, 42);
        assert_eq!(&*back.origin_site, "site2");
        assert_eq!(back.created_ms, 1_000);
        assert_eq!(back.last_used_ms(), 1_500);
        assert_eq!(back.lifespan_ms, 60_000);
        assert_eq!(back.max_idle_ms, 30_000);
        assert_eq!(back.tags.len(), 2);
        assert_eq!(back.writer, 0xfeed);
    }

    #[test]
    fn tombstones_round_trip_with_their_cause() {
        for cause in [TombstoneCause::Removed, TombstoneCause::Expired { base: 7 }] {
            let tombstone = Tombstone {
                version: 9,
                origin_site: Arc::from("site1"),
                removed_ms: 123,
                cause,
                writer: 0x5eed,
            };
            let decoded = decode(
                &encode(&Slot::Tombstone(Arc::new(tombstone.clone()))),
                &intern,
            );
            let Ok(Slot::Tombstone(back)) = decoded else {
                panic!("expected a tombstone")
            };
            assert_eq!(*back, tombstone);
        }
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert_eq!(decode(&[], &intern).unwrap_err(), RecordError::Empty);
        assert_eq!(
            decode(&[9, 1, 2], &intern).unwrap_err(),
            RecordError::UnknownFormat(9)
        );
        assert!(matches!(
            decode(&[FORMAT_V1, 0xff, 0xff, 0xff], &intern),
            Err(RecordError::Damaged(_))
        ));
        assert_eq!(
            decode(&[FORMAT_V1], &intern).unwrap_err(),
            RecordError::Invalid("version 0")
        );
        assert_eq!(
            decode(&[FORMAT_V2, 1, 2], &intern).unwrap_err(),
            RecordError::Checksum(3)
        );
    }

    #[test]
    fn records_of_the_first_format_are_still_read() {
        let stored = StoredRecord {
            kind: KIND_LIVE,
            version: 77,
            origin_site: "site1".into(),
            value: Bytes::from_static(b"old"),
            ..StoredRecord::default()
        };
        let mut bytes = vec![FORMAT_V1];
        stored.encode(&mut bytes).unwrap();
        let Ok(Slot::Live(entry)) = decode(&bytes, &intern) else {
            panic!("a format 1 record decodes")
        };
        assert_eq!((&entry.value[..], entry.version), (&b"old"[..], 77));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_slot_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, &intern);
        }

        #[test]
        fn a_record_cut_short_or_changed_anywhere_is_an_error(cut in 0usize..64, flip in 0usize..64) {
            let entry = Entry::new(Bytes::from_static(b"some value"), 5, Arc::from("s"), 1, 2, 3,
                vec![Arc::from("a=b")].into_boxed_slice());
            let bytes = encode(&Slot::Live(Arc::new(entry)));
            if cut < bytes.len() {
                prop_assert!(decode(&bytes[..cut], &intern).is_err());
            }
            let mut changed = bytes.clone();
            let at = flip % changed.len();
            changed[at] ^= 0x20;
            prop_assert!(decode(&changed, &intern).is_err());
        }
    }
}
