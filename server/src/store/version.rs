//! Versions: the hybrid logical clock that numbers every write.
//!
//! A version is a `u64` laid out as `[ tick : 51 bits | slot : 4 bits | site id : 8 bits ]`,
//! top bit always 0 so it is also a positive `i64` for clients in languages without
//! unsigned integers (the layout is in `sitegrid_proto::version`, shared with clients).
//! The tick is `(milliseconds since 2020-01-01 << 8) | counter`: each node takes
//! `max(now, last + 1)`, so versions are close to wall-clock order and strictly
//! increasing on a node even if its clock steps back. The slot is the node's own among
//! the live nodes of its site ([`crate::cluster`] keeps them unique) and the site id is
//! the site's, so no two nodes ever assign the same version: two nodes that both took
//! themselves for a key's primary for a moment can't make two different writes look
//! like one (the replication rule takes an equal version for the same write). A node
//! that applies a version assigned elsewhere [`observe`](VersionClock::observe)s it, so
//! whatever it assigns next is newer than everything it has seen (the "hybrid" part).
//!
//! Comparing versions is comparing the integers: `a > b` means "a is newer". There is no
//! other version comparison in sitegrid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::store::time::TimeSource;

/// A version: see the module documentation for its layout.
pub type Version = u64;

use sitegrid_proto::version::{SITE_BITS, SLOT_BITS, SLOTS, timestamp_at};
pub use sitegrid_proto::version::{first_version_at, millis_of, site_of, slot_of};

/// Bits of a version below its tick.
const TICK_SHIFT: u32 = SLOT_BITS + SITE_BITS;

/// Assigns versions for one node.
#[derive(Debug)]
pub struct VersionClock {
    site_id: u8,
    /// This node's slot in its site.
    slot: AtomicU8,
    /// The last tick handed out or observed (versions without slot and site).
    last: AtomicU64,
    time: Arc<dyn TimeSource>,
}

impl VersionClock {
    /// A clock for site `site_id` that never goes below `floor` (a version restored from
    /// disk: the high-water mark or the newest stored entry); its slot is 0 until
    /// [`set_slot`](VersionClock::set_slot).
    pub fn new(site_id: u8, time: Arc<dyn TimeSource>, floor: Version) -> VersionClock {
        VersionClock {
            site_id,
            slot: AtomicU8::new(0),
            last: AtomicU64::new(floor >> TICK_SHIFT),
            time,
        }
    }

    /// Gives this node slot `slot` (below [`SLOTS`]) in its site.
    pub fn set_slot(&self, slot: u8) {
        debug_assert!(slot < SLOTS);
        self.slot.store(slot % SLOTS, Ordering::Release);
    }

    /// The id of this node's site, in the low bits of every version it assigns.
    pub fn site_id(&self) -> u8 {
        self.site_id
    }

    /// This node's slot in its site.
    pub fn slot(&self) -> u8 {
        self.slot.load(Ordering::Acquire)
    }

    fn stamp(&self, tick: u64) -> Version {
        (tick << TICK_SHIFT) | (u64::from(self.slot()) << SITE_BITS) | u64::from(self.site_id)
    }

    /// A new version, newer than every version this clock assigned or observed.
    pub fn next(&self) -> Version {
        let now = timestamp_at(self.time.now_ms()) >> SLOT_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return self.stamp(next),
                Err(current) => last = current,
            }
        }
    }

    /// Records a version assigned elsewhere, so later versions from this clock are newer.
    pub fn observe(&self, version: Version) {
        self.last.fetch_max(version >> TICK_SHIFT, Ordering::AcqRel);
    }

    /// The newest tick this clock has assigned or observed, as this node's version.
    pub fn current(&self) -> Version {
        self.stamp(self.last.load(Ordering::Acquire))
    }

    /// The time source versions are read from.
    pub fn time(&self) -> &Arc<dyn TimeSource> {
        &self.time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::time::{ManualTimeSource, UnixMillis};

    const NOW: UnixMillis = 1_800_000_000_000;

    #[test]
    fn versions_strictly_increase_even_within_one_millisecond() {
        let time = ManualTimeSource::starting_at(NOW);
        let clock = VersionClock::new(3, time, 0);
        let mut previous = 0;
        for _ in 0..10_000 {
            let version = clock.next();
            assert!(version > previous);
            assert_eq!(site_of(version), 3);
            previous = version;
        }
    }

    #[test]
    fn versions_follow_the_wall_clock() {
        let time = ManualTimeSource::starting_at(NOW);
        let clock = VersionClock::new(1, time.clone(), 0);
        let first = clock.next();
        assert_eq!(millis_of(first), NOW);
        time.advance_ms(1500);
        assert_eq!(millis_of(clock.next()), NOW + 1500);
    }

    #[test]
    fn a_clock_stepping_back_does_not_make_versions_go_back() {
        let time = ManualTimeSource::starting_at(NOW);
        let ahead = VersionClock::new(1, time.clone(), 0);
        time.advance_ms(60_000);
        let before_restart = ahead.next();
        // A restart with the clock one minute behind, floored at the persisted version.
        let behind = VersionClock::new(1, ManualTimeSource::starting_at(NOW), before_restart);
        assert!(behind.next() > before_restart);
    }

    #[test]
    fn observed_versions_from_other_sites_are_overtaken() {
        let time = ManualTimeSource::starting_at(NOW);
        let site1 = VersionClock::new(1, time.clone(), 0);
        let site2 = VersionClock::new(2, ManualTimeSource::starting_at(NOW + 5_000), 0);
        let remote = site2.next();
        assert!(site1.next() < remote, "site 2's clock is ahead");
        site1.observe(remote);
        assert!(site1.next() > remote);
    }

    #[test]
    fn two_sites_never_assign_the_same_version() {
        let time = ManualTimeSource::starting_at(NOW);
        let site1 = VersionClock::new(1, time.clone(), 0);
        let site2 = VersionClock::new(2, time, 0);
        for _ in 0..1000 {
            assert_ne!(site1.next(), site2.next());
        }
    }

    #[test]
    fn two_nodes_of_a_site_never_assign_the_same_version() {
        let time = ManualTimeSource::starting_at(NOW);
        let a = VersionClock::new(1, time.clone(), 0);
        let b = VersionClock::new(1, time, 0);
        a.set_slot(3);
        b.set_slot(4);
        // Both observed the same version: their next ticks are equal, their versions not.
        let seen = a.next();
        b.observe(seen);
        let (from_a, from_b) = (a.next(), b.next());
        assert_ne!(from_a, from_b);
        assert!(from_a > seen && from_b > seen);
        assert_eq!((slot_of(from_a), slot_of(from_b)), (3, 4));
        assert_eq!((site_of(from_a), site_of(from_b)), (1, 1));
        // A version of the same tick from a higher slot is still overtaken.
        a.observe(from_b);
        assert!(a.next() > from_b);
    }

    #[test]
    fn versions_fit_in_a_positive_i64_for_centuries() {
        let far = NOW + 200 * 365 * 24 * 3600 * 1000;
        let clock = VersionClock::new(255, ManualTimeSource::starting_at(far), 0);
        let version = clock.next();
        assert!(i64::try_from(version).is_ok());
        assert_eq!(millis_of(version), far);
    }

    #[test]
    fn concurrent_callers_get_distinct_versions() {
        let clock = Arc::new(VersionClock::new(1, ManualTimeSource::starting_at(NOW), 0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..5000).map(|_| clock.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
