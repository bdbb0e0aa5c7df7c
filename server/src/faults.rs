//! Faults a test switches on, to show that the fault-injection suite catches the bugs
//! they stand for, and to make a rare failure happen on cue.
//!
//! Only with the `faults` feature (the integration tests build their node program with
//! it; the `sitegrid` program built alone has no such code): the names in the
//! `SITEGRID_FAULTS` environment variable (comma-separated) are read once at start.

/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The primary of a key starting with [`CRASH_MID_WRITE_PREFIX`] sends the write to
    /// one other member and then dies before it answers: a write left on some members.
    CrashMidWrite,
    /// Primaries acknowledge writes to caches with sync backups without sending them to
    /// the peer sites (as if they did not wait for the peer's answer): both sites grant
    /// one token (the one-winner checker must see it).
    SkipSyncBackups,
    /// The primary of a key starting with [`SLOW_COMMIT_PREFIX`] waits
    /// [`SLOW_COMMIT_DELAY`] between the other members taking the write and applying it
    /// itself: a member that catches up meanwhile finds the write nowhere else.
    SlowCommit,
    /// A member holds back its answer to changes of keys starting with
    /// [`SLOW_APPLY_PREFIX`] for [`SLOW_APPLY_DELAY`], while it goes on gossiping: the
    /// primary leaves it out while it still hears the site (and serves).
    SlowApply,
    /// A node catching up finds nobody in its view when it confirms its join, as after a
    /// freeze, when gossip takes the others for dead for a moment.
    ConfirmWithoutView,
    /// Membership waits [`TIDY_LATE_DELAY`] between publishing a changed view and tidying
    /// its joiners and suspicions: the two steps' order decides whether writes in between
    /// reach a joiner the new view shows ready.
    TidyLate,
    /// The node answers `BackupStream` with UNIMPLEMENTED, as a node of an older version
    /// does: peer sites must send it their sync backups as `BackupBatch` calls.
    NoBackupStream,
    /// The node answers `ApplyStream` with UNIMPLEMENTED, as a node of an older version
    /// does: the primaries of its site must send it their changes as `Apply` calls.
    NoApplyStream,
    /// The node answers `PipelineBatch` with UNIMPLEMENTED, as a node of an older version
    /// does: clients must send it their pipelined requests on `Pipeline`.
    NoPipelineBatch,
}

/// Keys whose writes [`Fault::CrashMidWrite`] interrupts.
pub const CRASH_MID_WRITE_PREFIX: &[u8] = b"crash-mid-write";

/// Keys whose writes [`Fault::SlowCommit`] slows.
pub const SLOW_COMMIT_PREFIX: &[u8] = b"slow-commit";

/// How long [`Fault::SlowCommit`] holds a write.
pub const SLOW_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_secs(20);

/// Keys whose changes [`Fault::SlowApply`] holds back.
pub const SLOW_APPLY_PREFIX: &[u8] = b"slow-apply";

/// How long [`Fault::SlowApply`] holds a change back.
pub const SLOW_APPLY_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long [`Fault::TidyLate`] waits.
pub const TIDY_LATE_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

impl Fault {
    #[cfg(feature = "faults")]
    fn name(self) -> &'static str {
        match self {
            Fault::CrashMidWrite => "crash-mid-write",
            Fault::SkipSyncBackups => "skip-sync-backups",
            Fault::SlowCommit => "slow-commit",
            Fault::SlowApply => "slow-apply",
            Fault::ConfirmWithoutView => "confirm-without-view",
            Fault::TidyLate => "tidy-late",
            Fault::NoBackupStream => "no-backup-stream",
            Fault::NoApplyStream => "no-apply-stream",
            Fault::NoPipelineBatch => "no-pipeline-batch",
        }
    }
}

/// Whether `fault` is switched on.
#[cfg(feature = "faults")]
pub fn on(fault: Fault) -> bool {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            std::env::var("SITEGRID_FAULTS")
                .unwrap_or_default()
                .split(',')
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .collect()
        })
        .iter()
        .any(|name| name == fault.name())
}

/// Whether `fault` is switched on: never, without the `faults` feature.
#[cfg(not(feature = "faults"))]
pub fn on(_fault: Fault) -> bool {
    false
}
