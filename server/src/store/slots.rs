//! The two maps of a keyspace that every write touches: key -> slot, and version -> key
//! hash.
//!
//! Both are shaped for the write path, where a key is looked up, its slot replaced and
//! its old version moved in the version index, at random places of a large cache. Each
//! is a B-tree of integers: the slots are keyed by the key's hash (the rare keys sharing
//! one sit together under it, in byte order), the version index holds (version, key
//! hash) pairs. A search compares integers packed in the tree's nodes instead of
//! following keys to compare their bytes. Keyspace order (hash, then bytes; see
//! `slot_key`) is kept without a second structure.
//!
//! On a single node at 50 callers x 16 pipelined 256-byte Puts over 100,000 keys, the
//! former `BTreeMap<SlotKey, Slot>` lookups and the removals from a
//! `BTreeSet<(Version, Bytes)>` took about 17% of the node's CPU. A hash table for the
//! slots was faster still, but with the ordered set it needs beside it, it cost 100 MB
//! more for a million entries, putting the node over its memory target.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;
use std::ops::Bound;

use bytes::Bytes;

use crate::store::entry::Slot;
use crate::store::slot_key::SlotKey;
use crate::store::version::Version;

/// Something filed under a key's bytes.
trait ByKey {
    fn key(&self) -> &Bytes;
}

impl ByKey for (Bytes, Slot) {
    fn key(&self) -> &Bytes {
        &self.0
    }
}

/// What one integer of a map (a key hash, a version) files, in byte order of the keys:
/// almost always one.
#[derive(Debug)]
enum Few<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: ByKey> Few<T> {
    fn items(&self) -> &[T] {
        match self {
            Few::One(item) => std::slice::from_ref(item),
            Few::Many(items) => items,
        }
    }

    fn items_mut(&mut self) -> &mut [T] {
        match self {
            Few::One(item) => std::slice::from_mut(item),
            Few::Many(items) => items,
        }
    }

    /// Where `key` is, or where it would go.
    fn position(&self, key: &Bytes) -> Result<usize, usize> {
        self.items()
            .binary_search_by(|candidate| candidate.key().cmp(key))
    }

    /// Puts `item` at `index`, where [`Few::position`] said it goes.
    fn insert(&mut self, index: usize, item: T) {
        let mut items = match std::mem::replace(self, Few::Many(Vec::new())) {
            Few::One(present) => vec![present],
            Few::Many(items) => items,
        };
        items.insert(index, item);
        *self = Few::Many(items);
    }

    /// Takes out the item at `index`; also returns whether none is left.
    fn remove(&mut self, index: usize) -> (T, bool) {
        match std::mem::replace(self, Few::Many(Vec::new())) {
            Few::One(item) => (item, true),
            Few::Many(mut items) => {
                let item = items.remove(index);
                let emptied = items.is_empty();
                *self = match items.len() {
                    1 => Few::One(items.pop().expect("one left")),
                    _ => Few::Many(items),
                };
                (item, emptied)
            }
        }
    }
}

/// Key -> slot, in keyspace order.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    buckets: BTreeMap<u64, Few<(Bytes, Slot)>>,
    len: usize,
}

/// Whether (hash, key) comes after `bound` as a range start.
fn past_start(hash: u64, key: &Bytes, bound: &Bound<SlotKey>) -> bool {
    match bound {
        Bound::Included(start) => (hash, key) >= (start.hash(), start.key()),
        Bound::Excluded(start) => (hash, key) > (start.hash(), start.key()),
        Bound::Unbounded => true,
    }
}

/// Whether (hash, key) comes before `bound` as a range end.
fn before_end(hash: u64, key: &Bytes, bound: &Bound<SlotKey>) -> bool {
    match bound {
        Bound::Included(end) => (hash, key) <= (end.hash(), end.key()),
        Bound::Excluded(end) => (hash, key) < (end.hash(), end.key()),
        Bound::Unbounded => true,
    }
}

/// The hash bound of a key bound: every key of that hash is a candidate.
fn hash_bound(bound: &Bound<SlotKey>) -> Bound<u64> {
    match bound {
        Bound::Included(key) | Bound::Excluded(key) => Bound::Included(key.hash()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Slots {
    /// The slot of `key`.
    pub(crate) fn get(&self, key: &SlotKey) -> Option<&Slot> {
        let bucket = self.buckets.get(&key.hash())?;
        let index = bucket.position(key.key()).ok()?;
        Some(&bucket.items()[index].1)
    }

    /// Puts `slot` under `key` unless `refuse`, shown what the key holds now, returns a
    /// reason not to; returns the replaced slot, or the refusal. One descent of the tree.
    pub(crate) fn put_unless<R>(
        &mut self,
        key: SlotKey,
        slot: Slot,
        refuse: impl FnOnce(Option<&Slot>) -> Option<R>,
    ) -> Result<Option<Slot>, R> {
        let hash = key.hash();
        match self.buckets.entry(hash) {
            MapEntry::Vacant(vacant) => {
                if let Some(refused) = refuse(None) {
                    return Err(refused);
                }
                vacant.insert(Few::One((key.into_key(), slot)));
            }
            MapEntry::Occupied(mut occupied) => {
                let bucket = occupied.get_mut();
                match bucket.position(key.key()) {
                    Ok(index) => {
                        let current = &mut bucket.items_mut()[index].1;
                        if let Some(refused) = refuse(Some(current)) {
                            return Err(refused);
                        }
                        return Ok(Some(std::mem::replace(current, slot)));
                    }
                    Err(index) => {
                        if let Some(refused) = refuse(None) {
                            return Err(refused);
                        }
                        bucket.insert(index, (key.into_key(), slot));
                    }
                }
            }
        }
        self.len += 1;
        Ok(None)
    }

    /// Puts `slot` under `key`; returns what it replaced.
    pub(crate) fn insert(&mut self, key: SlotKey, slot: Slot) -> Option<Slot> {
        self.put_unless(key, slot, |_| None::<()>)
            .unwrap_or_else(|()| unreachable!("nothing refuses"))
    }

    /// The keys of hash `hash` and their slots, in byte order of the keys.
    pub(crate) fn bucket(&self, hash: u64) -> &[(Bytes, Slot)] {
        self.buckets.get(&hash).map_or(&[], Few::items)
    }

    /// Removes `key`; returns its slot.
    pub(crate) fn remove(&mut self, key: &SlotKey) -> Option<Slot> {
        let MapEntry::Occupied(mut occupied) = self.buckets.entry(key.hash()) else {
            return None;
        };
        let index = occupied.get().position(key.key()).ok()?;
        let ((_, slot), emptied) = occupied.get_mut().remove(index);
        if emptied {
            occupied.remove();
        }
        self.len -= 1;
        Some(slot)
    }

    /// The slots whose keys fall between `start` and `end`, in keyspace order.
    pub(crate) fn range(
        &self,
        start: Bound<SlotKey>,
        end: Bound<SlotKey>,
    ) -> impl Iterator<Item = (&Bytes, &Slot)> {
        self.buckets
            .range((hash_bound(&start), hash_bound(&end)))
            .flat_map(|(hash, bucket)| {
                bucket
                    .items()
                    .iter()
                    .map(move |(key, slot)| (*hash, key, slot))
            })
            .skip_while(move |(hash, key, _)| !past_start(*hash, key, &start))
            .take_while(move |(hash, key, _)| before_end(*hash, key, &end))
            .map(|(_, key, slot)| (key, slot))
    }

    /// Every slot, in keyspace order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Bytes, &Slot)> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    /// The hash of every key, in keyspace order.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = u64> {
        self.buckets
            .iter()
            .flat_map(|(hash, bucket)| std::iter::repeat_n(*hash, bucket.items().len()))
    }

    /// Number of slots.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// (version, key hash) of every slot, in that order: what changed after a version.
///
/// It holds a key's hash, not its bytes: moving a key from its old version to its new one
/// on every write is then a search comparing integer pairs packed in the tree's nodes,
/// with no key bytes to follow and compare and no reference to the old writer's key
/// buffer to drop (each a cache miss at a random place of a large cache). The slots give
/// the keys back ([`Slots::bucket`]). The rare keys sharing a hash and a version count
/// under one pair.
#[derive(Debug, Default)]
pub(crate) struct VersionIndex {
    pairs: BTreeMap<(Version, u64), u32>,
    len: usize,
}

impl VersionIndex {
    pub(crate) fn insert(&mut self, version: Version, hash: u64) {
        *self.pairs.entry((version, hash)).or_insert(0) += 1;
        self.len += 1;
    }

    pub(crate) fn remove(&mut self, version: Version, hash: u64) {
        let MapEntry::Occupied(mut occupied) = self.pairs.entry((version, hash)) else {
            return;
        };
        *occupied.get_mut() -= 1;
        if *occupied.get() == 0 {
            occupied.remove();
        }
        self.len -= 1;
    }

    /// The (version, key hash) pairs from `start` on, in order, each once.
    pub(crate) fn from(&self, start: (Version, u64)) -> impl Iterator<Item = (Version, u64)> {
        self.pairs.range(start..).map(|(pair, _)| *pair)
    }

    /// The newest version held.
    pub(crate) fn last(&self) -> Option<Version> {
        self.pairs
            .last_key_value()
            .map(|((version, _), _)| *version)
    }

    /// Whether a key of hash `hash` is indexed at `version`.
    #[cfg(test)]
    pub(crate) fn contains(&self, version: Version, hash: u64) -> bool {
        self.pairs.contains_key(&(version, hash))
    }

    /// Number of (version, key) pairs.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::{Tombstone, TombstoneCause};
    use std::sync::Arc;

    fn key(text: &str) -> SlotKey {
        SlotKey::new(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn tombstone(version: Version) -> Slot {
        Slot::Tombstone(Arc::new(Tombstone {
            version,
            origin_site: Arc::from("s"),
            removed_ms: 0,
            cause: TombstoneCause::Removed,
            writer: 0,
        }))
    }

    #[test]
    fn slots_find_replace_and_remove_keys_and_walk_them_in_keyspace_order() {
        let mut slots = Slots::default();
        for i in 0..500 {
            assert!(slots.insert(key(&format!("k{i}")), tombstone(i)).is_none());
        }
        let replaced = slots
            .insert(key("k7"), tombstone(1000))
            .expect("k7 was there");
        assert_eq!(replaced.version(), 7);
        assert_eq!(slots.get(&key("k7")).map(Slot::version), Some(1000));
        assert_eq!(slots.remove(&key("k8")).map(|s| s.version()), Some(8));
        assert!(slots.get(&key("k8")).is_none());
        assert!(slots.remove(&key("k8")).is_none());
        assert_eq!(slots.len(), 499);

        let walked: Vec<SlotKey> = slots.iter().map(|(k, _)| SlotKey::new(k.clone())).collect();
        let mut sorted = walked.clone();
        sorted.sort();
        assert_eq!(walked, sorted, "keyspace order");
        assert_eq!(walked.len(), 499);
        assert_eq!(
            slots.hashes().collect::<Vec<_>>(),
            walked.iter().map(SlotKey::hash).collect::<Vec<_>>()
        );
        let from = walked[100].clone();
        let to = walked[200].clone();
        let part: Vec<_> = slots
            .range(Bound::Excluded(from), Bound::Included(to))
            .map(|(k, _)| SlotKey::new(k.clone()))
            .collect();
        assert_eq!(part, walked[101..=200]);
    }

    #[test]
    fn keys_sharing_a_hash_are_kept_apart_in_byte_order() {
        let mut slots = Slots::default();
        let same = |text: &str| SlotKey::with_hash(7, Bytes::copy_from_slice(text.as_bytes()));
        slots.insert(same("b"), tombstone(1));
        slots.insert(same("a"), tombstone(2));
        slots.insert(same("c"), tombstone(3));
        slots.insert(
            SlotKey::with_hash(8, Bytes::from_static(b"0")),
            tombstone(4),
        );
        slots.insert(
            SlotKey::with_hash(6, Bytes::from_static(b"z")),
            tombstone(5),
        );
        assert_eq!(
            slots.insert(same("a"), tombstone(6)).map(|s| s.version()),
            Some(2)
        );
        let order: Vec<_> = slots.iter().map(|(_, slot)| slot.version()).collect();
        assert_eq!(order, vec![5, 6, 1, 3, 4]);
        let after_a: Vec<_> = slots
            .range(Bound::Excluded(same("a")), Bound::Excluded(same("c")))
            .map(|(_, slot)| slot.version())
            .collect();
        assert_eq!(after_a, vec![1]);
        assert_eq!(slots.remove(&same("b")).map(|s| s.version()), Some(1));
        assert_eq!(slots.remove(&same("a")).map(|s| s.version()), Some(6));
        assert_eq!(slots.get(&same("c")).map(Slot::version), Some(3));
        assert!(slots.get(&same("a")).is_none());
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn a_refused_put_changes_nothing() {
        let mut slots = Slots::default();
        slots.insert(key("a"), tombstone(5));
        let refused = slots.put_unless(key("a"), tombstone(6), |current| {
            (current.map(Slot::version) == Some(5)).then_some("busy")
        });
        assert_eq!(refused.unwrap_err(), "busy");
        assert_eq!(slots.get(&key("a")).map(Slot::version), Some(5));
        let refused = slots.put_unless(key("b"), tombstone(6), |current| {
            current.is_none().then_some("absent")
        });
        assert_eq!(refused.unwrap_err(), "absent");
        assert!(slots.get(&key("b")).is_none());
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn pairs_come_in_version_then_hash_order_and_keys_sharing_one_count_apart() {
        let mut index = VersionIndex::default();
        index.insert(3, 70);
        index.insert(5, 20);
        index.insert(5, 10);
        index.insert(5, 30);
        // Two keys of hash 10 at version 5.
        index.insert(5, 10);
        index.insert(9, 1);
        assert_eq!(index.len(), 6);
        let all: Vec<_> = index.from((0, 0)).collect();
        assert_eq!(all, vec![(3, 70), (5, 10), (5, 20), (5, 30), (9, 1)]);
        let from_5_20: Vec<_> = index.from((5, 20)).collect();
        assert_eq!(from_5_20, vec![(5, 20), (5, 30), (9, 1)]);
        assert_eq!(index.last(), Some(9));

        index.remove(5, 10);
        assert!(
            index.contains(5, 10),
            "the other key of hash 10 is still there"
        );
        index.remove(5, 10);
        assert!(!index.contains(5, 10));
        index.remove(5, 99);
        index.remove(4, 70);
        index.remove(5, 20);
        index.remove(5, 30);
        index.remove(9, 1);
        assert_eq!(index.len(), 1);
        assert_eq!(index.last(), Some(3));
    }
}
