//! One cache's contents in memory, with the indexes that keep every operation cheap.
//!
//! The keyspace is the authority for reads: persistent caches are loaded into it at start
//! and written through to storage. It holds, besides the key -> slot map:
//! - a version index (version, key) of every slot, live or tombstone, so listeners can
//!   replay what changed after a version;
//! - an expiry index (deadline, key) of live entries that can expire, so the reaper
//!   finds them without scanning;
//! - a tag index, so `RemoveByTag` and tag-filtered iteration don't scan;
//! - the tombstones in the order they were made, so they are purged without scanning.
//!
//! [`Keyspace::apply`] holds the one replication rule. Callers wrap the keyspace in a
//! lock and never hold that lock across I/O.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::store::entry::{Entry, Slot};
use crate::store::mutation::{ApplyOutcome, Mutation};
use crate::store::slot_key::{RANGES, SlotKey, key_hash, range_of};
use crate::store::slots::{Slots, VersionIndex};
use crate::store::time::UnixMillis;
use crate::store::version::Version;

/// One cache's contents.
#[derive(Debug)]
pub struct Keyspace {
    /// Ordered by key hash (see `slot_key`): the same order on every node and site.
    slots: Slots,
    /// Per key range, the XOR of a hash of (key, version) of every slot: two nodes whose
    /// range digests are equal hold the same slots there, almost surely. Kept up to date
    /// on every change, so comparing two nodes costs nothing until they differ.
    digests: Box<[u64; RANGES]>,
    by_version: VersionIndex,
    by_deadline: BTreeSet<(UnixMillis, Bytes)>,
    /// Where each live entry sits in `by_deadline`; only this keyspace writes it.
    indexed_deadlines: HashMap<Bytes, UnixMillis>,
    by_tag: HashMap<Arc<str>, BTreeSet<Bytes>>,
    tombstones: VecDeque<(UnixMillis, Bytes, Version)>,
    live: usize,
    /// Every key not in `slots` stands at this version: the last clear. A change whose
    /// `prev` is older is refused, so a replayed write from before a clear can't revive
    /// a key.
    floor: Version,
    /// Newest version whose tombstone was purged or cleared: a listener resuming from an
    /// older version may have missed a removal.
    forgotten: Version,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace {
            slots: Slots::default(),
            digests: Box::new([0; RANGES]),
            by_version: VersionIndex::default(),
            by_deadline: BTreeSet::new(),
            indexed_deadlines: HashMap::new(),
            by_tag: HashMap::new(),
            tombstones: VecDeque::new(),
            live: 0,
            floor: 0,
            forgotten: 0,
        }
    }
}

/// The one replication rule (see [`Keyspace::apply`]) on a key holding `current`, in a
/// keyspace whose clear floor is `floor`: why the change is not applied, or `None` if it
/// is.
fn refusal(current: Option<&Slot>, floor: Version, mutation: &Mutation) -> Option<ApplyOutcome> {
    match current {
        Some(slot) if slot.version() == mutation.next() => Some(ApplyOutcome::AlreadyApplied),
        Some(slot) if slot.state_version() > mutation.prev => Some(ApplyOutcome::Conflict {
            current: Some(slot.clone()),
        }),
        None if floor > mutation.prev => Some(ApplyOutcome::Conflict { current: None }),
        _ => None,
    }
}

/// The digest term of one slot.
fn digest_term(key_hash: u64, version: Version) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&key_hash.to_le_bytes());
    bytes[8..].copy_from_slice(&version.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Where a replay of changes continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayCursor {
    /// After every change of this version and older.
    Version(Version),
    /// After this (version, key) position, returned last by the previous call.
    Position(Version, Bytes),
}

/// A batch of live entries returned by iteration, and where to continue.
#[derive(Debug)]
pub struct Page {
    /// The entries, in key order.
    pub entries: Vec<(Bytes, Arc<Entry>)>,
    /// The key to continue after, or `None` at the end.
    pub next_after: Option<Bytes>,
}

impl Keyspace {
    /// The slot of a key, live or not.
    pub fn slot(&self, key: &Bytes) -> Option<&Slot> {
        self.slots.get(&SlotKey::new(key.clone()))
    }

    /// The state version the next change to `key` replaces (see
    /// [`Slot::state_version`]).
    pub fn state_version(&self, key: &Bytes) -> Version {
        self.slot(key).map_or(self.floor, Slot::state_version)
    }

    /// The live entry of a key at `now_ms`, refreshing its last-used time.
    pub fn get(&self, key: &Bytes, now_ms: UnixMillis) -> Option<Arc<Entry>> {
        let entry = self.slot(key)?.live_at(now_ms)?;
        entry.touch(now_ms);
        Some(entry.clone())
    }

    /// What [`Keyspace::apply`] would do with `mutation`, without doing it (`replaced` is
    /// what the key holds now). Callers holding the key's lock can check, persist, then
    /// apply, knowing the answer stays the same.
    pub fn check(&self, mutation: &Mutation) -> ApplyOutcome {
        let current = self.slot(&mutation.key);
        refusal(current, self.floor, mutation).unwrap_or_else(|| ApplyOutcome::Applied {
            replaced: current.cloned(),
        })
    }

    /// Applies a change if the key's state is `prev` or older, the one replication rule:
    ///
    /// - the key already holds this exact change: [`ApplyOutcome::AlreadyApplied`];
    /// - its state version is `prev`, or older (it missed something; this newer change
    ///   supersedes it): applied;
    /// - it is newer than `prev`: [`ApplyOutcome::Conflict`], nothing changes.
    ///
    /// Callers on the write path hold the key's lock, so for them the change always
    /// applies; replicas, resync and backups from other sites go through the same rule.
    pub fn apply(&mut self, mutation: &Mutation) -> ApplyOutcome {
        let slot_key = SlotKey::new(mutation.key.clone());
        let hash = slot_key.hash();
        // One descent of the tree finds the key and, if the change applies, stores it.
        let floor = self.floor;
        let old = match self.slots.put_unless(slot_key, mutation.slot(), |current| {
            refusal(current, floor, mutation)
        }) {
            Ok(old) => old,
            Err(refused) => return refused,
        };
        self.reindex(&mutation.key, hash, old.as_ref(), &mutation.slot());
        ApplyOutcome::Applied { replaced: old }
    }

    /// Puts a slot read back from this node's own storage at start, without the
    /// replication rule (there is nothing to compare it with yet).
    pub fn restore(&mut self, key: Bytes, slot: Slot) {
        self.replace(key, slot);
    }

    /// Sets the clear floor read back from storage at start.
    pub fn restore_floor(&mut self, floor: Version) {
        self.floor = self.floor.max(floor);
        self.forgotten = self.forgotten.max(floor);
    }

    /// Puts `slot` in place of whatever `key` held, keeping every index in step.
    fn replace(&mut self, key: Bytes, slot: Slot) -> Option<Slot> {
        let slot_key = SlotKey::new(key.clone());
        let hash = slot_key.hash();
        let old = self.slots.insert(slot_key, slot.clone());
        self.reindex(&key, hash, old.as_ref(), &slot);
        old
    }

    /// Moves `key` in the indexes from its `old` slot to its `new` one.
    fn reindex(&mut self, key: &Bytes, hash: u64, old: Option<&Slot>, new: &Slot) {
        let digest = &mut self.digests[range_of(hash)];
        if let Some(old) = old {
            *digest ^= digest_term(hash, old.version());
        }
        *digest ^= digest_term(hash, new.version());
        if let Some(old) = old {
            self.by_version.remove(old.version(), hash);
            if let Slot::Live(entry) = old {
                self.live -= 1;
                self.unindex_live(key, entry);
            }
        }
        self.by_version.insert(new.version(), hash);
        match new {
            Slot::Live(entry) => {
                self.live += 1;
                self.index_live(key.clone(), entry);
            }
            Slot::Tombstone(tombstone) => {
                self.tombstones
                    .push_back((tombstone.removed_ms, key.clone(), tombstone.version));
            }
        }
    }

    fn index_live(&mut self, key: Bytes, entry: &Arc<Entry>) {
        for tag in entry.tags.iter() {
            self.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some(deadline) = entry.deadline_ms() {
            self.by_deadline.insert((deadline, key.clone()));
            self.indexed_deadlines.insert(key, deadline);
        }
    }

    fn unindex_live(&mut self, key: &Bytes, entry: &Arc<Entry>) {
        for tag in entry.tags.iter() {
            if let Some(keys) = self.by_tag.get_mut(tag) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
        if let Some(deadline) = self.indexed_deadlines.remove(key) {
            self.by_deadline.remove(&(deadline, key.clone()));
        }
    }

    /// Number of live entries at `now_ms` (expired ones not yet reaped don't count).
    pub fn len(&self, now_ms: UnixMillis) -> usize {
        let expired = self
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now_ms)
            .filter(
                |(_, key)| matches!(self.slot(key), Some(Slot::Live(e)) if e.is_expired(now_ms)),
            )
            .count();
        self.live - expired
    }

    /// Live entries after the key `after` (from the start if `None`), at most `limit`:
    /// all of them in keyspace order, or those carrying `tag` in byte order of their keys.
    /// Entries written during a walk may or may not be seen; none is seen twice.
    pub fn page(
        &self,
        after: Option<&Bytes>,
        limit: usize,
        tag: Option<&str>,
        now_ms: UnixMillis,
    ) -> Page {
        let candidates: Box<dyn Iterator<Item = (&Bytes, Option<&Slot>)>> = match tag {
            None => {
                let start = match after {
                    Some(key) => Bound::Excluded(SlotKey::new(key.clone())),
                    None => Bound::Unbounded,
                };
                Box::new(
                    self.slots
                        .range(start, Bound::Unbounded)
                        .map(|(key, slot)| (key, Some(slot))),
                )
            }
            Some(tag) => match self.by_tag.get(tag) {
                Some(keys) => {
                    let start = after.map_or(Bound::Unbounded, |key| Bound::Excluded(key.clone()));
                    Box::new(
                        keys.range((start, Bound::Unbounded))
                            .map(|key| (key, self.slot(key))),
                    )
                }
                None => Box::new(std::iter::empty()),
            },
        };
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        for (key, slot) in candidates {
            if entries.len() == limit {
                break;
            }
            last = Some(key.clone());
            if let Some(entry) = slot.and_then(|s| s.live_at(now_ms)) {
                entries.push((key.clone(), entry.clone()));
            }
        }
        let next_after = if entries.len() == limit { last } else { None };
        Page {
            entries,
            next_after,
        }
    }

    /// Keys of live entries carrying `tag`.
    pub fn keys_with_tag(&self, tag: &str) -> Vec<Bytes> {
        self.by_tag
            .get(tag)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Live entries whose deadline has passed at `now_ms`, at most `limit`. Entries whose
    /// indexed deadline passed but that were read since (max idle) are re-indexed under
    /// their new deadline instead.
    pub fn due_for_expiry(&mut self, now_ms: UnixMillis, limit: usize) -> Vec<(Bytes, Arc<Entry>)> {
        let mut due = Vec::new();
        let mut moved = Vec::new();
        for (deadline, key) in self.by_deadline.iter() {
            if *deadline > now_ms || due.len() == limit {
                break;
            }
            if let Some(Slot::Live(entry)) = self.slot(key) {
                match entry.deadline_ms() {
                    Some(actual) if actual > now_ms => moved.push((*deadline, actual, key.clone())),
                    _ => due.push((key.clone(), entry.clone())),
                }
            }
        }
        for (old, new, key) in moved {
            self.by_deadline.remove(&(old, key.clone()));
            self.by_deadline.insert((new, key.clone()));
            self.indexed_deadlines.insert(key, new);
        }
        due
    }

    /// Takes the tombstones made at or before `cutoff_ms` off the purge queue; returns
    /// those still in place as (key, version). The caller locks each key and then
    /// [`forget`](Keyspace::forget_tombstone)s or [`requeue`](Keyspace::requeue_tombstone)s it.
    pub fn tombstones_due(&mut self, cutoff_ms: UnixMillis) -> Vec<(Bytes, Version)> {
        let mut due = Vec::new();
        while let Some((removed_ms, _, _)) = self.tombstones.front() {
            if *removed_ms > cutoff_ms {
                break;
            }
            let (_, key, version) = self.tombstones.pop_front().expect("front exists");
            // The key may have been written again since: only this very tombstone counts.
            if matches!(self.slot(&key), Some(Slot::Tombstone(t)) if t.version == version) {
                due.push((key, version));
            }
        }
        due
    }

    /// Drops the tombstone `version` of `key` if the key still holds it.
    pub fn forget_tombstone(&mut self, key: &Bytes, version: Version) -> bool {
        matches!(self.slot(key), Some(Slot::Tombstone(t)) if t.version == version)
            && self.forget(key, version)
    }

    /// Drops whatever `key` holds if it is still at `version`, as if the key had never
    /// been written (no tombstone). Returns whether it did.
    pub fn forget(&mut self, key: &Bytes, version: Version) -> bool {
        let slot_key = SlotKey::new(key.clone());
        let Some(slot) = self
            .slots
            .get(&slot_key)
            .filter(|s| s.version() == version)
            .cloned()
        else {
            return false;
        };
        self.digests[range_of(slot_key.hash())] ^= digest_term(slot_key.hash(), version);
        self.slots.remove(&slot_key);
        self.by_version.remove(version, slot_key.hash());
        if let Slot::Live(entry) = &slot {
            self.live -= 1;
            self.unindex_live(key, entry);
        }
        self.forgotten = self.forgotten.max(version);
        true
    }

    /// Puts a due tombstone back on the purge queue (its key was busy).
    pub fn requeue_tombstone(&mut self, key: Bytes, version: Version, removed_ms: UnixMillis) {
        self.tombstones.push_back((removed_ms, key, version));
    }

    /// Removes everything, live entries and tombstones; from now on every key stands at
    /// `version`. Returns the number of live entries removed.
    pub fn clear(&mut self, version: Version) -> usize {
        let removed = self.live;
        let floor = self.floor.max(version);
        let forgotten = self.forgotten.max(floor);
        *self = Keyspace {
            floor,
            forgotten,
            ..Keyspace::default()
        };
        removed
    }

    /// The version every absent key stands at (the last clear), 0 if never cleared.
    pub fn floor(&self) -> Version {
        self.floor
    }

    /// Newest version whose record was forgotten (purged tombstone or clear).
    pub fn forgotten(&self) -> Version {
        self.forgotten
    }

    /// Slots changed after `after`, in version order (keyspace order within a version),
    /// at most `limit`; tombstones included.
    pub fn changed_after(&self, after: &ReplayCursor, limit: usize) -> Vec<(Bytes, Slot)> {
        let (start, after_key) = match after {
            ReplayCursor::Version(version) => ((version.saturating_add(1), 0), None),
            ReplayCursor::Position(version, key) => ((*version, key_hash(key)), Some(key)),
        };
        self.by_version
            .from(start)
            .flat_map(|(version, hash)| {
                self.slots
                    .bucket(hash)
                    .iter()
                    .filter(move |(_, slot)| slot.version() == version)
                    .map(move |(key, slot)| ((version, hash), key, slot))
            })
            .skip_while(|(pair, key, _)| {
                *pair == start && after_key.is_some_and(|after| *key <= after)
            })
            .take(limit)
            .map(|(_, key, slot)| (key.clone(), slot.clone()))
            .collect()
    }

    /// Every slot, tombstones included, in keyspace order after the key `after`, at most
    /// `limit`; the second value is where to continue (`None` at the end).
    pub fn walk(&self, after: Option<&Bytes>, limit: usize) -> (Vec<(Bytes, Slot)>, Option<Bytes>) {
        let start = match after {
            Some(key) => Bound::Excluded(SlotKey::new(key.clone())),
            None => Bound::Unbounded,
        };
        let slots: Vec<_> = self
            .slots
            .range(start, Bound::Unbounded)
            .take(limit)
            .map(|(key, slot)| (key.clone(), slot.clone()))
            .collect();
        let next = (slots.len() == limit)
            .then(|| slots.last().map(|(key, _)| key.clone()))
            .flatten();
        (slots, next)
    }

    /// The digest of every key range.
    pub fn digests(&self) -> &[u64; RANGES] {
        &self.digests
    }

    /// The slots of key range `range`, in keyspace order after `after` (from the start of
    /// the range if `None`), at most `limit`; and whether the range is done.
    pub fn range_slots(
        &self,
        range: usize,
        after: Option<&Bytes>,
        limit: usize,
    ) -> (Vec<(Bytes, Slot)>, bool) {
        let start = match after {
            Some(key) => Bound::Excluded(SlotKey::new(key.clone())),
            None => Bound::Included(SlotKey::range_start(range)),
        };
        let end = if range + 1 < RANGES {
            Bound::Excluded(SlotKey::range_start(range + 1))
        } else {
            Bound::Unbounded
        };
        let mut slots = Vec::new();
        let mut done = true;
        for (key, slot) in self.slots.range(start, end) {
            if slots.len() == limit {
                done = false;
                break;
            }
            slots.push((key.clone(), slot.clone()));
        }
        (slots, done)
    }

    /// Number of slots (live entries and tombstones) in each key range.
    pub fn range_counts(&self) -> Vec<u64> {
        let mut counts = vec![0; RANGES];
        for hash in self.slots.hashes() {
            counts[range_of(hash)] += 1;
        }
        counts
    }

    /// Number of slots, tombstones included (for memory accounting and tests).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Newest version held, live or tombstone, or the floor.
    pub fn newest_version(&self) -> Version {
        self.by_version
            .last()
            .map_or(self.floor, |version| version.max(self.floor))
    }
}

/// Counts of the keyspace's indexes, for tests that check they stay in step.
#[cfg(test)]
impl Keyspace {
    fn check_invariants(&self) {
        assert_eq!(self.by_version.len(), self.slots.len());
        let live = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Live(_)))
            .count();
        assert_eq!(self.live, live);
        assert_eq!(self.by_deadline.len(), self.indexed_deadlines.len());
        for (key, slot) in self.slots.iter() {
            assert!(self.by_version.contains(slot.version(), key_hash(key)));
            if let Slot::Live(entry) = slot {
                for tag in entry.tags.iter() {
                    assert!(self.by_tag[tag].contains(key));
                }
            }
        }
        let tagged: usize = self.by_tag.values().map(BTreeSet::len).sum();
        let expected: usize = self
            .slots
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Live(e) => Some(e.tags.len()),
                Slot::Tombstone(_) => None,
            })
            .sum();
        assert_eq!(tagged, expected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::{Tombstone, TombstoneCause};
    use crate::store::mutation::Change;

    fn site() -> Arc<str> {
        Arc::from("site1")
    }

    fn write(key: &str, prev: Version, next: Version, tags: &[&str]) -> Mutation {
        write_expiring(key, prev, next, tags, 0, 0)
    }

    fn write_expiring(
        key: &str,
        prev: Version,
        next: Version,
        tags: &[&str],
        lifespan_ms: u64,
        max_idle_ms: u64,
    ) -> Mutation {
        Mutation {
            key: Bytes::copy_from_slice(key.as_bytes()),
            prev,
            change: Change::Write(Arc::new(Entry::new(
                Bytes::from(format!("value@{next}")),
                next,
                site(),
                1_000,
                lifespan_ms,
                max_idle_ms,
                tags.iter().map(|t| Arc::from(*t)).collect(),
            ))),
            undoes: 0,
        }
    }

    fn remove(key: &str, prev: Version, next: Version, removed_ms: UnixMillis) -> Mutation {
        Mutation {
            key: Bytes::copy_from_slice(key.as_bytes()),
            prev,
            change: Change::Remove(Arc::new(Tombstone {
                version: next,
                origin_site: site(),
                removed_ms,
                cause: TombstoneCause::Removed,
                writer: 0,
            })),
            undoes: 0,
        }
    }

    fn applied(outcome: ApplyOutcome) -> Option<Slot> {
        match outcome {
            ApplyOutcome::Applied { replaced } => replaced,
            other => panic!("expected applied, got {other:?}"),
        }
    }

    #[test]
    fn a_change_from_the_current_version_applies() {
        let mut keys = Keyspace::default();
        assert!(applied(keys.apply(&write("a", 0, 10, &[]))).is_none());
        let replaced = applied(keys.apply(&write("a", 10, 20, &[]))).unwrap();
        assert_eq!(replaced.version(), 10);
        assert_eq!(keys.get(&Bytes::from_static(b"a"), 0).unwrap().version, 20);
        keys.check_invariants();
    }

    #[test]
    fn a_replica_that_missed_a_change_takes_the_newer_one() {
        let mut keys = Keyspace::default();
        keys.apply(&write("a", 0, 10, &[]));
        // The change from 20 to 30 arrives, but this replica never saw 20.
        applied(keys.apply(&write("a", 20, 30, &[])));
        assert_eq!(keys.get(&Bytes::from_static(b"a"), 0).unwrap().version, 30);
    }

    #[test]
    fn a_change_from_an_older_version_is_refused() {
        let mut keys = Keyspace::default();
        keys.apply(&write("a", 0, 10, &[]));
        keys.apply(&write("a", 10, 20, &[]));
        match keys.apply(&write("a", 10, 15, &[])) {
            ApplyOutcome::Conflict { current } => assert_eq!(current.unwrap().version(), 20),
            other => panic!("expected conflict, got {other:?}"),
        }
        assert_eq!(keys.get(&Bytes::from_static(b"a"), 0).unwrap().version, 20);
    }

    #[test]
    fn a_replayed_change_is_recognised_and_not_applied_twice() {
        let mut keys = Keyspace::default();
        let change = write("a", 0, 10, &["user=u1"]);
        keys.apply(&change);
        assert!(matches!(keys.apply(&change), ApplyOutcome::AlreadyApplied));
        keys.check_invariants();
    }

    #[test]
    fn a_tombstone_stops_an_older_write_from_reviving_the_key() {
        let mut keys = Keyspace::default();
        keys.apply(&write("a", 0, 10, &[]));
        keys.apply(&remove("a", 10, 20, 0));
        assert!(keys.get(&Bytes::from_static(b"a"), 0).is_none());
        // A late replay of the first write (from "never existed") is refused.
        assert!(matches!(
            keys.apply(&write("a", 0, 10, &[])),
            ApplyOutcome::Conflict { .. }
        ));
        assert!(matches!(
            keys.apply(&write("a", 0, 15, &[])),
            ApplyOutcome::Conflict { .. }
        ));
        assert!(keys.get(&Bytes::from_static(b"a"), 0).is_none());
        assert_eq!(keys.len(0), 0);
        keys.check_invariants();
    }

    #[test]
    fn a_clear_stops_writes_from_before_it() {
        let mut keys = Keyspace::default();
        keys.apply(&write("a", 0, 10, &[]));
        assert_eq!(keys.clear(50), 1);
        assert!(matches!(
            keys.apply(&write("b", 0, 40, &[])),
            ApplyOutcome::Conflict { .. }
        ));
        assert_eq!(keys.state_version(&Bytes::from_static(b"b")), 50);
        applied(keys.apply(&write("b", 50, 60, &[])));
        assert_eq!(keys.forgotten(), 50);
        keys.check_invariants();
    }

    #[test]
    fn the_tag_index_follows_rewrites_and_removals() {
        let mut keys = Keyspace::default();
        keys.apply(&write("s1", 0, 10, &["user=u1", "realm=r1"]));
        keys.apply(&write("s2", 0, 11, &["user=u1"]));
        keys.apply(&write("s3", 0, 12, &["user=u2"]));
        assert_eq!(keys.keys_with_tag("user=u1").len(), 2);
        keys.apply(&write("s2", 11, 13, &["user=u2"]));
        assert_eq!(keys.keys_with_tag("user=u1"), vec![Bytes::from("s1")]);
        keys.apply(&remove("s1", 10, 14, 0));
        assert!(keys.keys_with_tag("user=u1").is_empty());
        assert!(keys.keys_with_tag("realm=r1").is_empty());
        keys.check_invariants();
    }

    #[test]
    fn expired_entries_read_as_absent_and_leave_the_size_at_once() {
        let mut keys = Keyspace::default();
        keys.apply(&write_expiring("a", 0, 10, &[], 500, 0));
        keys.apply(&write("b", 0, 11, &[]));
        assert_eq!(keys.len(1_499), 2);
        assert!(keys.get(&Bytes::from_static(b"a"), 1_499).is_some());
        assert!(keys.get(&Bytes::from_static(b"a"), 1_500).is_none());
        assert_eq!(keys.len(1_500), 1);
        let page = keys.page(None, 10, None, 1_500);
        assert_eq!(page.entries.len(), 1);
    }

    #[test]
    fn due_for_expiry_follows_reads_that_push_max_idle_back() {
        let mut keys = Keyspace::default();
        keys.apply(&write_expiring("idle", 0, 10, &[], 0, 100));
        keys.apply(&write_expiring("old", 0, 11, &[], 50, 0));
        assert!(keys.get(&Bytes::from_static(b"idle"), 1_080).is_some()); // read: deadline moves to 1_180
        let due = keys.due_for_expiry(1_120, 100);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.version, 11);
        assert!(
            keys.due_for_expiry(1_179, 100)
                .iter()
                .all(|(_, e)| e.version != 10)
        );
        assert_eq!(keys.due_for_expiry(1_180, 100).len(), 2);
        keys.check_invariants();
    }

    #[test]
    fn tombstones_are_purged_after_their_time_unless_rewritten() {
        let mut keys = Keyspace::default();
        keys.apply(&write("a", 0, 10, &[]));
        keys.apply(&write("b", 0, 11, &[]));
        keys.apply(&remove("a", 10, 20, 1_000));
        keys.apply(&remove("b", 11, 21, 2_000));
        keys.apply(&write("b", 21, 22, &[]));
        assert!(keys.tombstones_due(999).is_empty());
        let due = keys.tombstones_due(5_000);
        assert_eq!(due, vec![(Bytes::from("a"), 20)]);
        assert!(keys.forget_tombstone(&due[0].0, due[0].1));
        assert!(!keys.forget_tombstone(&due[0].0, due[0].1));
        assert_eq!(keys.slot_count(), 1);
        assert_eq!(keys.forgotten(), 20);
        keys.check_invariants();
    }

    #[test]
    fn pages_walk_every_key_once_in_keyspace_order() {
        let mut keys = Keyspace::default();
        for i in 0..25u64 {
            let tag = if i % 2 == 0 { "even=1" } else { "odd=1" };
            keys.apply(&write(&format!("k{i:02}"), 0, 100 + i, &[tag]));
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = keys.page(after.as_ref(), 10, None, 0);
            seen.extend(page.entries.iter().map(|(k, _)| k.clone()));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), 25);
        let hashes: Vec<_> = seen
            .iter()
            .map(|k| crate::store::slot_key::key_hash(k))
            .collect();
        assert!(hashes.windows(2).all(|w| w[0] <= w[1]), "keyspace order");
        let even = keys.page(None, 100, Some("even=1"), 0);
        assert_eq!(even.entries.len(), 13);
        assert!(even.next_after.is_none());
    }

    #[test]
    fn changed_after_lists_writes_and_removals_in_version_order() {
        let mut keys = Keyspace::default();
        keys.apply(&write("a", 0, 10, &[]));
        keys.apply(&write("b", 0, 11, &[]));
        keys.apply(&write("c", 0, 12, &[]));
        keys.apply(&remove("a", 10, 13, 0));
        let changed: Vec<_> = keys
            .changed_after(&ReplayCursor::Version(11), 100)
            .into_iter()
            .map(|(k, s)| (k, s.version()))
            .collect();
        assert_eq!(
            changed,
            vec![(Bytes::from("c"), 12), (Bytes::from("a"), 13)]
        );
        assert_eq!(keys.newest_version(), 13);
        // Continuing from a (version, key) position.
        let rest = keys.changed_after(&ReplayCursor::Position(12, Bytes::from("c")), 100);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1.version(), 13);
    }

    #[test]
    fn a_replay_pages_through_keys_sharing_a_version_each_once() {
        let mut keys = Keyspace::default();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        for name in names {
            keys.apply(&write(name, 0, 7, &[]));
        }
        keys.apply(&write("a", 7, 8, &[]));
        let mut seen = Vec::new();
        let mut cursor = ReplayCursor::Version(0);
        loop {
            let page = keys.changed_after(&cursor, 2);
            let Some((key, slot)) = page.last() else {
                break;
            };
            cursor = ReplayCursor::Position(slot.version(), key.clone());
            seen.extend(page.into_iter().map(|(key, slot)| (slot.version(), key)));
        }
        let mut sorted = seen.clone();
        sorted.sort_by_key(|(version, key)| (*version, key_hash(key), key.clone()));
        assert_eq!(seen, sorted, "version order, keyspace order within one");
        assert_eq!(seen.len(), names.len(), "{seen:?}");
        assert_eq!(seen.last(), Some(&(8, Bytes::from("a"))));
    }

    #[test]
    fn equal_slots_give_equal_digests_whatever_the_history() {
        let mut a = Keyspace::default();
        let mut b = Keyspace::default();
        a.apply(&write("x", 0, 10, &[]));
        a.apply(&write("x", 10, 20, &[]));
        a.apply(&write("y", 0, 11, &[]));
        a.apply(&remove("y", 11, 21, 0));
        // b got only the final states, in another order.
        b.apply(&remove("y", 0, 21, 0));
        b.apply(&write("x", 0, 20, &[]));
        assert_eq!(a.digests(), b.digests());
        b.apply(&write("x", 20, 30, &[]));
        let differing: Vec<_> = (0..RANGES)
            .filter(|r| a.digests()[*r] != b.digests()[*r])
            .collect();
        assert_eq!(
            differing,
            vec![range_of(crate::store::slot_key::key_hash(b"x"))]
        );
        // Forgetting a tombstone takes it out of the digest.
        let (key, version) = a.tombstones_due(u64::MAX).pop().unwrap();
        a.forget_tombstone(&key, version);
        let empty = Keyspace::default();
        let only_x = {
            let mut k = Keyspace::default();
            k.apply(&write("x", 0, 20, &[]));
            k
        };
        assert_eq!(a.digests(), only_x.digests());
        assert_ne!(a.digests(), empty.digests());
    }

    #[test]
    fn a_range_walk_returns_exactly_the_slots_of_the_range() {
        let mut keys = Keyspace::default();
        for i in 0..5_000u64 {
            keys.apply(&write(&format!("k{i}"), 0, 100 + i, &[]));
        }
        let mut total = 0;
        for range in 0..RANGES {
            let mut after = None;
            loop {
                let (slots, done) = keys.range_slots(range, after.as_ref(), 3);
                for (key, _) in &slots {
                    assert_eq!(range_of(crate::store::slot_key::key_hash(key)), range);
                }
                total += slots.len();
                after = slots.last().map(|(k, _)| k.clone());
                if done {
                    break;
                }
            }
        }
        assert_eq!(total, 5_000);
    }

    #[test]
    fn a_walk_visits_live_entries_and_tombstones_once_each() {
        let mut keys = Keyspace::default();
        for i in 0..25u64 {
            keys.apply(&write(&format!("k{i:02}"), 0, 100 + i, &[]));
        }
        keys.apply(&remove("k03", 103, 200, 0));
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (slots, next) = keys.walk(after.as_ref(), 10);
            seen.extend(slots);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        let tombstones = seen
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Tombstone(_)))
            .count();
        assert_eq!(tombstones, 1);
    }
}
