//! How keys are ordered in a keyspace: by a 64-bit hash of the key, then by the key.
//!
//! Ordering by an inline hash first means a lookup compares integers stored in the tree's
//! nodes instead of following every candidate key's pointer to compare bytes, which is
//! where a byte-ordered tree spends its time (cache misses). Lookups take the key as
//! `Bytes`, whose clone is a reference count, so searching needs no copy. The hash is xxh3 with a fixed
//! seed, a published algorithm, so every node and every site orders a cache's keys the
//! same way: ranges of this order can be compared between sites by digest.

use std::cmp::Ordering;

use bytes::Bytes;

pub use sitegrid_proto::routing::key_hash;

/// Number of key ranges digests are kept for: the top `RANGE_BITS` bits of a key's hash.
pub const RANGE_BITS: u32 = 10;
/// Number of key ranges.
pub const RANGES: usize = 1 << RANGE_BITS;

/// The key range of a key hash.
pub fn range_of(hash: u64) -> usize {
    (hash >> (64 - RANGE_BITS)) as usize
}

/// A stored key with its hash.
#[derive(Debug, Clone)]
pub struct SlotKey {
    hash: u64,
    key: Bytes,
}

impl SlotKey {
    /// A key, hashed.
    pub fn new(key: Bytes) -> SlotKey {
        SlotKey {
            hash: key_hash(&key),
            key,
        }
    }

    /// A key with a hash chosen by the caller (tests of keys sharing a hash).
    #[cfg(test)]
    pub(crate) fn with_hash(hash: u64, key: Bytes) -> SlotKey {
        SlotKey { hash, key }
    }

    /// The key's bytes.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// The key's bytes, taken out.
    pub fn into_key(self) -> Bytes {
        self.key
    }

    /// The key's hash.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The first position of key range `range` (before any key of it).
    pub fn range_start(range: usize) -> SlotKey {
        SlotKey {
            hash: (range as u64) << (64 - RANGE_BITS),
            key: Bytes::new(),
        }
    }
}

impl Ord for SlotKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hash
            .cmp(&other.hash)
            .then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for SlotKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SlotKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl Eq for SlotKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_map_finds_keys_by_hash_and_bytes() {
        let mut map = BTreeMap::new();
        for i in 0..100 {
            map.insert(SlotKey::new(Bytes::from(format!("k{i}"))), i);
        }
        assert_eq!(
            map.get(&SlotKey::new(Bytes::from_static(b"k42"))),
            Some(&42)
        );
        assert_eq!(map.get(&SlotKey::new(Bytes::from_static(b"nope"))), None);
    }

    #[test]
    fn the_order_is_by_hash_then_bytes_and_the_same_everywhere() {
        // The published xxh3 value of the empty input with seed 0.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        let a = SlotKey::new(Bytes::from_static(b"a"));
        let b = SlotKey::new(Bytes::from_static(b"b"));
        assert_eq!(a.cmp(&b), key_hash(b"a").cmp(&key_hash(b"b")));
    }
}
