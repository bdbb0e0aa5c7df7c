//! The layout of versions, shared by the server's clock and clients that reason about
//! version distances (a listener's resume margin).
//!
//! A version is `[ timestamp : 55 bits | site id : 8 bits ]` with the top bit clear; the
//! timestamp is `(milliseconds since 2020-01-01 << 12) | (counter << 4) | slot`: an 8-bit
//! counter within the millisecond and the 4-bit slot of the node that assigned it, unique
//! among the live nodes of its site, so no two nodes anywhere assign the same version. So
//! versions compare like the wall-clock times they were assigned at, and a duration of D
//! milliseconds is a version distance of `D << 20`.

use std::time::Duration;

/// Unix time of 2020-01-01T00:00:00Z in milliseconds, where version timestamps start.
pub const EPOCH_MS: u64 = 1_577_836_800_000;
/// Bits below the milliseconds of a timestamp: the counter and the node's slot.
pub const COUNTER_BITS: u32 = 12;
/// Bits of the node's slot in its site (the lowest bits of the timestamp).
pub const SLOT_BITS: u32 = 4;
/// How many nodes a site may have: one slot each.
pub const SLOTS: u8 = 1 << SLOT_BITS;
/// Bits of the site id.
pub const SITE_BITS: u32 = 8;
/// Bits below the milliseconds of a version.
pub const MILLIS_SHIFT: u32 = COUNTER_BITS + SITE_BITS;
/// Largest timestamp that keeps the top bit of a version clear.
pub const MAX_TIMESTAMP: u64 = (1 << (63 - SITE_BITS)) - 1;

/// The slot of the node that assigned a version.
pub fn slot_of(version: u64) -> u8 {
    ((version >> SITE_BITS) & u64::from(SLOTS - 1)) as u8
}

/// The site id byte of a version.
pub fn site_of(version: u64) -> u8 {
    (version & 0xff) as u8
}

/// The wall-clock millisecond a version was assigned in (a timestamp that ran ahead of
/// the wall clock reads as later).
pub fn millis_of(version: u64) -> u64 {
    (version >> MILLIS_SHIFT) + EPOCH_MS
}

/// The timestamp part of versions assigned at Unix time `unix_ms`.
pub fn timestamp_at(unix_ms: u64) -> u64 {
    (unix_ms.saturating_sub(EPOCH_MS) << COUNTER_BITS).min(MAX_TIMESTAMP)
}

/// The smallest version any site could assign at Unix time `unix_ms`.
pub fn first_version_at(unix_ms: u64) -> u64 {
    timestamp_at(unix_ms) << SITE_BITS
}

/// The version distance covering `duration`.
pub fn distance(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(1 << MILLIS_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_distance_spans_the_versions_of_that_much_time() {
        let start = first_version_at(EPOCH_MS + 1_000);
        let later = first_version_at(EPOCH_MS + 1_250);
        assert_eq!(later - start, distance(Duration::from_millis(250)));
        assert_eq!(millis_of(later), EPOCH_MS + 1_250);
    }
}
