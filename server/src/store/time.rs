//! Wall-clock time as the store sees it.
//!
//! Everything time-dependent in the store (expiry deadlines, tombstone age, versions)
//! reads the time through [`TimeSource`], so unit tests drive time by hand instead of
//! sleeping, and fault tests can skew one node's clock (`node.clock_offset_ms`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// Where the store reads the current time.
pub trait TimeSource: Send + Sync + std::fmt::Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;
}

/// The system clock, shifted by a fixed offset (0 outside clock-skew tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemTimeSource {
    offset_ms: i64,
}

impl SystemTimeSource {
    /// The system clock shifted by `offset_ms` milliseconds.
    pub fn with_offset(offset_ms: i64) -> SystemTimeSource {
        SystemTimeSource { offset_ms }
    }
}

impl TimeSource for SystemTimeSource {
    fn now_ms(&self) -> UnixMillis {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        now.saturating_add(self.offset_ms).max(0) as UnixMillis
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualTimeSource {
    now_ms: AtomicU64,
}

impl ManualTimeSource {
    /// A manual clock reading `now_ms`.
    pub fn starting_at(now_ms: UnixMillis) -> Arc<ManualTimeSource> {
        Arc::new(ManualTimeSource {
            now_ms: AtomicU64::new(now_ms),
        })
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl TimeSource for ManualTimeSource {
    fn now_ms(&self) -> UnixMillis {
        self.now_ms.load(Ordering::SeqCst)
    }
}
