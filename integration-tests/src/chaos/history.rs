//! What the workloads did and saw, recorded as it happened, for the checkers.
//!
//! Every operation is recorded once it completes, with how it ended. Only `Ok` answers
//! are facts the checkers hold the servers to; a failed or timed-out write may or may
//! not have been applied (indeterminate), so it constrains nothing but the values it may
//! have left behind.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; the answer is a fact.
    Ok,
    /// Refused with an error that says it was not applied (a bad request, not found).
    Failed,
    /// An error or timeout after which it may or may not have been applied.
    Indeterminate,
}

/// One `PutIfAbsent` of a single-use token.
#[derive(Debug, Clone)]
pub struct TokenOp {
    /// Which token.
    pub token: u32,
    /// The value this attempt wrote: unique to the attempt.
    pub value: Bytes,
    /// The site of the node it was sent to.
    pub site: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// When `Ok`: whether this attempt stored the token.
    pub stored: bool,
    /// When `Ok` and not stored: the value that holds the token.
    pub existing: Option<Bytes>,
}

/// One `ReplaceWithVersion` of a session key, after reading its version.
#[derive(Debug, Clone)]
pub struct ReplaceOp {
    /// Which session key.
    pub key: u32,
    /// The version it expected (the one it read).
    pub expected: u64,
    /// The value it wrote: unique to the attempt.
    pub value: Bytes,
    /// How it ended.
    pub outcome: Outcome,
    /// When `Ok`: whether it replaced.
    pub replaced: bool,
    /// When `Ok` and replaced: the new version.
    pub version: u64,
}

/// One `Put` of a key that is never written again (the acknowledged set, add only).
#[derive(Debug, Clone)]
pub struct AddOp {
    /// The key, unique to the attempt.
    pub key: Bytes,
    /// When it was sent.
    pub invoked: Instant,
    /// How it ended.
    pub outcome: Outcome,
    /// When `Ok`: its version.
    pub version: u64,
}

/// What a listener received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A change of `key` at `version`.
    Change {
        /// The key.
        key: Bytes,
        /// The change's version.
        version: u64,
    },
    /// Every copy of the cache must be dropped: changes before it may be missing.
    InvalidateAll,
}

/// Everything one listener received.
#[derive(Debug, Clone)]
pub struct ListenerLog {
    /// The site whose nodes it listened to.
    pub site: usize,
    /// When its subscription had started (`listen` returned).
    pub started: Instant,
    /// What it received, with when.
    pub received: Vec<(Instant, Received)>,
}

/// A key's state on one node at the end: value and version, by (cache, key).
pub type Snapshot = BTreeMap<(String, Bytes), (Bytes, u64)>;

/// The history of one run, filled by the workloads concurrently.
#[derive(Debug, Default)]
pub struct History {
    /// Token attempts.
    pub tokens: Mutex<Vec<TokenOp>>,
    /// Versioned replaces.
    pub replaces: Mutex<Vec<ReplaceOp>>,
    /// Adds to the acknowledged set.
    pub adds: Mutex<Vec<AddOp>>,
    /// Listeners, each filled by its own task while it runs.
    pub listeners: Mutex<Vec<std::sync::Arc<Mutex<ListenerLog>>>>,
}

/// Operation counts of a history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations recorded (listener events not included).
    pub ops: u64,
    /// Of those, answered.
    pub ok: u64,
    /// Of those, indeterminate.
    pub indeterminate: u64,
    /// Events received by listeners.
    pub events: u64,
}

impl History {
    /// How many operations ended how.
    pub fn counts(&self) -> Counts {
        let outcomes: Vec<Outcome> = self
            .tokens
            .lock()
            .iter()
            .map(|o| o.outcome)
            .chain(self.replaces.lock().iter().map(|o| o.outcome))
            .chain(self.adds.lock().iter().map(|o| o.outcome))
            .collect();
        Counts {
            ops: outcomes.len() as u64,
            ok: outcomes.iter().filter(|o| **o == Outcome::Ok).count() as u64,
            indeterminate: outcomes
                .iter()
                .filter(|o| **o == Outcome::Indeterminate)
                .count() as u64,
            events: self
                .listeners
                .lock()
                .iter()
                .map(|l| l.lock().received.len() as u64)
                .sum(),
        }
    }
}
