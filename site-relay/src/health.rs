//! How a peer site has been answering this node: heartbeats and backups alike.

use std::time::Instant;

use parking_lot::Mutex;
use sitegrid_config::TakeOfflineConfig;

use crate::outbox::now_ms;
use crate::state::Mode;

/// A peer site's answers, as one node saw them.
#[derive(Debug, Default)]
pub(crate) struct Health {
    inner: Mutex<Seen>,
}

/// What a node saw of a peer site.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// Heartbeats and backups that failed in a row.
    pub(crate) failures: u32,
    /// When the first of them was seen to fail (not when it was sent: a call sent while
    /// the peer still answered says nothing of the time before it failed).
    pub(crate) first_failure: Option<Instant>,
    /// When the peer last answered (Unix ms; 0: never since this node started).
    pub(crate) last_answer_ms: u64,
    /// What the peer said it thinks of this site in its last heartbeat answer, and the
    /// epoch of that state.
    pub(crate) their_view: Option<(Mode, u64)>,
}

impl Health {
    /// A heartbeat was answered; the peer holds this site in `their_view` (if it said).
    pub(crate) fn answered(&self, their_view: Option<(Mode, u64)>) {
        let mut seen = self.inner.lock();
        seen.heard();
        seen.their_view = their_view;
    }

    /// A backup was answered.
    pub(crate) fn backed_up(&self) {
        self.inner.lock().heard();
    }

    /// A heartbeat or backup got no answer.
    pub(crate) fn failed(&self) {
        let mut seen = self.inner.lock();
        seen.failures = seen.failures.saturating_add(1);
        seen.first_failure.get_or_insert_with(Instant::now);
    }

    /// What was seen.
    pub(crate) fn seen(&self) -> Seen {
        self.inner.lock().clone()
    }

    /// Whether the peer failed enough times in a row to be known down: calls to it fail
    /// at once instead of waiting for a timeout each.
    pub(crate) fn is_down(&self, rule: &TakeOfflineConfig) -> Option<u32> {
        let failures = self.inner.lock().failures;
        (failures >= rule.after_failures).then_some(failures)
    }
}

impl Seen {
    /// The peer answered: the failures in a row are over.
    fn heard(&mut self) {
        self.failures = 0;
        self.first_failure = None;
        self.last_answer_ms = now_ms();
    }

    /// Whether the peer may be taken offline by `rule`: enough failures in a row, and
    /// the first of them at least `min_wait` ago.
    pub(crate) fn down_for(&self, rule: &TakeOfflineConfig) -> bool {
        self.failures >= rule.after_failures
            && self
                .first_failure
                .is_some_and(|first| first.elapsed() >= rule.min_wait)
    }
}
