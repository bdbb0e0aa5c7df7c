//! A listener's bookkeeping: what it delivered, where its next stream resumes, when it
//! must start over, and the events waiting for the application. Plain code without I/O,
//! so that every decision is unit-tested; [`EventStream`](crate::EventStream) does the
//! I/O around it.
//!
//! Every stream asks for `SYNCED` markers. A marker at version V says that every change
//! up to V has been sent, writes still in flight aside; the server sends one at the start
//! of a live-only stream, after the current state, and after a replay. Before it the
//! events come in no order (current state) or in version order (replay, across caches);
//! after it come live changes: those of one key in version order, those of different keys
//! out of order by at most the time a write is in flight. So once a subscription has a
//! position, every change up to `last_seen - margin` has arrived (`last_seen` being the
//! highest version seen, markers included), during a replay as well as after it, and a
//! stream resuming from there misses nothing. It repeats some changes, which are dropped
//! because the highest version delivered of every key is remembered until it falls below
//! that resume point (the server never replays a key at or below it again).
//!
//! A subscription has a position from its first marker on, or from the start if it
//! replays from a `from_version`. Until then a break costs nothing for a live-only
//! stream (it is opened again as it was), but the current state, which comes in no
//! order, must start over; starting over is never silent: it hands out an
//! [`Event::InvalidateAll`] for every cache first.
//!
//! The subscription's guarantee (no change after its start is missed) starts at the first
//! marker: events that come before it (the current state, or the replay asked for) are
//! held back until it arrives, and [`Client::listen`](crate::Client::listen) returns only
//! then. The marker itself is bookkeeping and never reaches the application.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use sitegrid_proto::{v1, version};

use crate::event::{Change, ChangeKind, Event};
use crate::options::ListenOptions;

/// Remembered keys below which pruning is not worth a pass over them.
const PRUNE_FLOOR: usize = 4096;

/// Where the subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No stream yet, or starting over: the next stream is the subscription's own request.
    Fresh,
    /// The current state is coming, in no version order: no position until the stream's
    /// marker, and a break starts over.
    CurrentState,
    /// A live-only stream waits for its marker, which gives the first position; a break
    /// before it opens the same request again.
    Unpositioned,
    /// There is a resume point.
    Positioned,
}

/// How the next stream picks up after one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// From the resume point, or with the subscription's own request while there is none:
    /// nothing is lost.
    Resume,
    /// From the beginning, after an invalidation of every cache.
    StartOver,
}

/// What to do after one event received from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read on.
    Continue,
    /// The server ends the stream (the listener fell behind): open a new one.
    Reopen(Restart),
}

/// A subscription's resume point, the versions it delivered, and its events not yet
/// handed out.
#[derive(Debug)]
pub(crate) struct ResumeState {
    options: ListenOptions,
    /// The resume margin as a version distance.
    margin: u64,
    phase: Phase,
    /// Highest version that counts for the resume point; `None` before any.
    last_seen: Option<u64>,
    /// Whether a marker arrived: the subscription has started, and its events may be
    /// handed out.
    started: bool,
    /// Whether the current stream's marker arrived: before it, the version of an
    /// `INVALIDATE_ALL` may be ahead of the replay that follows, so it is not seen.
    stream_synced: bool,
    /// Highest version delivered, by cache and key.
    delivered: HashMap<String, HashMap<Bytes, u64>>,
    /// Keys in `delivered`, all caches together.
    tracked: usize,
    /// Prune when `tracked` reaches this; doubling it keeps pruning amortized O(1).
    prune_at: usize,
    /// Events for the application, oldest first; held back until the start.
    outbox: VecDeque<Event>,
}

impl ResumeState {
    /// The state of a subscription no stream was opened for yet.
    pub(crate) fn new(options: &ListenOptions) -> Self {
        ResumeState {
            margin: version::distance(options.resume_margin),
            options: options.clone(),
            phase: Phase::Fresh,
            last_seen: None,
            started: false,
            stream_synced: false,
            delivered: HashMap::new(),
            tracked: 0,
            prune_at: PRUNE_FLOOR,
            outbox: VecDeque::new(),
        }
    }

    /// The request of the next stream.
    pub(crate) fn next_request(&mut self) -> v1::ListenRequest {
        let options = &self.options;
        let (include_current_state, resume_from) = match self.resume_point() {
            Some(point) => (false, point),
            // Also after a live-only stream that broke before its marker: the subscription
            // has not started, so asking again loses nothing it promised. (A broken
            // current state starts over through `on_break`, which makes the phase `Fresh`.)
            None => {
                self.phase = if options.include_current_state {
                    Phase::CurrentState
                } else if options.from_version > 0 {
                    // A replay is in version order: its start is already a position.
                    Phase::Positioned
                } else {
                    Phase::Unpositioned
                };
                (options.include_current_state, options.from_version)
            }
        };
        self.stream_synced = false;
        v1::ListenRequest {
            caches: options.caches.clone(),
            include_current_state,
            key_prefix: options.key_prefix.clone(),
            tag: options.tag.clone().unwrap_or_default(),
            with_values: options.with_values,
            resume_from_version: resume_from,
            sync_markers: true,
        }
    }

    /// Where a stream opened now would resume: `last_seen - margin`, never below the
    /// subscription's `from_version` nor 1; `None` while there is no position.
    pub(crate) fn resume_point(&self) -> Option<u64> {
        if self.phase != Phase::Positioned {
            return None;
        }
        let seen = self
            .last_seen
            .map_or(0, |version| version.saturating_sub(self.margin));
        Some(seen.max(self.options.from_version).max(1))
    }

    /// Whether the subscription's first marker arrived.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// The next event for the application; `None` if there is none, or before the start.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        if !self.started {
            return None;
        }
        self.outbox.pop_front()
    }

    /// Takes one event of the current stream.
    pub(crate) fn accept(&mut self, event: v1::CacheEvent) -> Step {
        let kind = match v1::EventKind::try_from(event.kind) {
            Ok(v1::EventKind::Created) => ChangeKind::Created,
            Ok(v1::EventKind::Modified) => ChangeKind::Modified,
            Ok(v1::EventKind::Removed) => ChangeKind::Removed,
            Ok(v1::EventKind::Expired) => ChangeKind::Expired,
            Ok(v1::EventKind::Synced) => {
                self.synced(event.version);
                return Step::Continue;
            }
            Ok(v1::EventKind::InvalidateAll) => {
                self.invalidate_all(event);
                return Step::Continue;
            }
            Ok(v1::EventKind::ResyncRequired) => return Step::Reopen(self.resync(event.version)),
            // A newer server may send kinds this client does not know; they cannot be
            // acted on, and skipping them leaves the versions of known kinds intact.
            Ok(v1::EventKind::Unspecified) | Err(_) => {
                tracing::debug!(kind = event.kind, "listen event of unknown kind skipped");
                return Step::Continue;
            }
        };
        // Before a position, versions come in no order (current state) or not at all.
        if self.phase == Phase::Positioned {
            self.see(event.version);
        }
        if self.remember(&event.cache, &event.key, event.version) {
            self.maybe_prune();
            let change = Change::from_wire(kind, event, self.options.with_values);
            self.outbox.push_back(Event::Changed(change));
        }
        Step::Continue
    }

    /// The stream ended or failed without `RESYNC_REQUIRED`: how the next one picks up.
    pub(crate) fn on_break(&mut self) -> Restart {
        match self.phase {
            Phase::CurrentState => self.start_over(),
            Phase::Fresh | Phase::Unpositioned | Phase::Positioned => Restart::Resume,
        }
    }

    /// A `SYNCED` marker: every change up to `version` was sent, in-flight writes aside.
    fn synced(&mut self, version: u64) {
        self.phase = Phase::Positioned;
        self.started = true;
        self.stream_synced = true;
        self.see(version);
    }

    /// `RESYNC_REQUIRED` with `version`: 0 while the current state was being sent (there
    /// is no position), anything else a safe position.
    fn resync(&mut self, version: u64) -> Restart {
        if version == 0 {
            return self.start_over();
        }
        self.phase = Phase::Positioned;
        self.see(version);
        Restart::Resume
    }

    fn invalidate_all(&mut self, event: v1::CacheEvent) {
        // Before the marker this is a replay's, at the newest removal forgotten: possibly
        // ahead of changes the replay has yet to send. After it, a clear, in order.
        if self.stream_synced {
            self.see(event.version);
        }
        // The application drops its copies, so whatever comes next for this cache is
        // news to it, even at a version already delivered.
        if let Some(forgotten) = self.delivered.remove(&event.cache) {
            self.tracked -= forgotten.len();
        }
        self.outbox.push_back(Event::InvalidateAll {
            cache: event.cache,
            version: event.version,
        });
    }

    fn see(&mut self, version: u64) {
        self.last_seen = Some(self.last_seen.map_or(version, |seen| seen.max(version)));
    }

    /// Drops everything known, so that the next stream is the subscription's own request,
    /// and queues an invalidation of every cache.
    fn start_over(&mut self) -> Restart {
        self.phase = Phase::Fresh;
        self.last_seen = None;
        self.delivered.clear();
        self.tracked = 0;
        self.prune_at = PRUNE_FLOOR;
        // Events not handed out yet would be dropped by the invalidations anyway.
        self.outbox.clear();
        self.outbox.extend(
            self.options
                .caches
                .iter()
                .map(|cache| Event::InvalidateAll {
                    cache: cache.clone(),
                    version: 0,
                }),
        );
        Restart::StartOver
    }

    /// Records `version` as delivered for the key, unless a version as high already was;
    /// answers whether it is new.
    fn remember(&mut self, cache: &str, key: &Bytes, version: u64) -> bool {
        let versions = match self.delivered.get_mut(cache) {
            Some(versions) => versions,
            None => self.delivered.entry(cache.to_owned()).or_default(),
        };
        match versions.get_mut(key) {
            Some(delivered) if *delivered >= version => false,
            Some(delivered) => {
                *delivered = version;
                true
            }
            None => {
                versions.insert(key.clone(), version);
                self.tracked += 1;
                true
            }
        }
    }

    /// Forgets the keys delivered at or below the resume point: a new stream replays only
    /// keys changed above it, so they can no longer come twice.
    fn maybe_prune(&mut self) {
        if self.tracked < self.prune_at {
            return;
        }
        if let Some(point) = self.resume_point() {
            for versions in self.delivered.values_mut() {
                versions.retain(|_, version| *version > point);
                // After a burst the map would otherwise keep its peak size for good.
                if versions.capacity() > 4 * versions.len().max(16) {
                    versions.shrink_to_fit();
                }
            }
            self.delivered.retain(|_, versions| !versions.is_empty());
            self.tracked = self.delivered.values().map(HashMap::len).sum();
        }
        self.prune_at = (2 * self.tracked).max(PRUNE_FLOOR);
    }

    #[cfg(test)]
    fn tracked_keys(&self) -> usize {
        self.tracked
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The first version of millisecond `ms` after the version epoch.
    fn at(ms: u64) -> u64 {
        version::first_version_at(version::EPOCH_MS + ms)
    }

    /// Ten milliseconds, the margin of `options()`.
    const MARGIN_MS: u64 = 10;

    fn options() -> ListenOptions {
        ListenOptions::new(["work", "sessions"])
            .with_values(true)
            .resume_margin(Duration::from_millis(MARGIN_MS))
    }

    fn event(kind: v1::EventKind, cache: &str, key: &str, version: u64) -> v1::CacheEvent {
        v1::CacheEvent {
            kind: kind as i32,
            cache: cache.into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            version,
            origin_site: "site1".into(),
            value: Bytes::from_static(b"v"),
            metadata: Some(v1::Metadata {
                version,
                origin_site: "site1".into(),
                ..v1::Metadata::default()
            }),
        }
    }

    fn created(key: &str, version: u64) -> v1::CacheEvent {
        event(v1::EventKind::Created, "work", key, version)
    }

    fn modified(key: &str, version: u64) -> v1::CacheEvent {
        event(v1::EventKind::Modified, "work", key, version)
    }

    fn marker(kind: v1::EventKind, cache: &str, version: u64) -> v1::CacheEvent {
        v1::CacheEvent {
            kind: kind as i32,
            cache: cache.into(),
            version,
            ..v1::CacheEvent::default()
        }
    }

    fn synced(version: u64) -> v1::CacheEvent {
        marker(v1::EventKind::Synced, "", version)
    }

    fn resync(version: u64) -> v1::CacheEvent {
        marker(v1::EventKind::ResyncRequired, "", version)
    }

    /// A live-only subscription whose first stream's marker came at `at(1_000_000)`.
    fn started(options: &ListenOptions) -> ResumeState {
        let mut state = ResumeState::new(options);
        state.next_request();
        assert_eq!(state.accept(synced(at(1_000_000))), Step::Continue);
        state
    }

    /// Every event ready for the application, in order.
    fn drain(state: &mut ResumeState) -> Vec<Event> {
        std::iter::from_fn(|| state.next_event()).collect()
    }

    /// Feeds `events` (none ending the stream), and answers the versions of the changes
    /// then ready for the application; panics on anything else.
    fn feed(state: &mut ResumeState, events: Vec<v1::CacheEvent>) -> Vec<u64> {
        for event in events {
            assert_eq!(state.accept(event), Step::Continue);
        }
        drain(state)
            .into_iter()
            .map(|event| match event {
                Event::Changed(change) => change.version,
                other => panic!("expected a change, got {other:?}"),
            })
            .collect()
    }

    /// The (key, version) of a change; panics on anything else.
    fn key_version(event: &Event) -> (String, u64) {
        match event {
            Event::Changed(change) => (
                String::from_utf8(change.key.to_vec()).unwrap(),
                change.version,
            ),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn invalidations(caches: &[&str]) -> Vec<Event> {
        caches
            .iter()
            .map(|cache| Event::InvalidateAll {
                cache: (*cache).to_owned(),
                version: 0,
            })
            .collect()
    }

    #[test]
    fn the_first_request_is_the_subscription_itself_with_markers() {
        let options = options()
            .key_prefix("user:")
            .tag("realm=r1")
            .include_current_state(true)
            .from_version(77);
        let mut state = ResumeState::new(&options);
        assert_eq!(state.resume_point(), None);
        assert_eq!(
            state.next_request(),
            v1::ListenRequest {
                caches: vec!["work".into(), "sessions".into()],
                include_current_state: true,
                key_prefix: Bytes::from_static(b"user:"),
                tag: "realm=r1".into(),
                with_values: true,
                sync_markers: true,
                resume_from_version: 77,
            }
        );
    }

    #[test]
    fn every_request_asks_for_markers() {
        let mut state = started(&options());
        state.on_break();
        let request = state.next_request();
        assert!(request.sync_markers);
        assert!(request.resume_from_version > 0);
    }

    #[test]
    fn a_live_only_subscription_is_positioned_by_its_marker() {
        let mut state = ResumeState::new(&options());
        let first = state.next_request();
        assert_eq!(first.resume_from_version, 0, "live changes only");
        assert!(!first.include_current_state);
        assert_eq!(state.resume_point(), None, "no position before the marker");
        assert!(!state.started());
        assert_eq!(state.accept(synced(at(1_000_000))), Step::Continue);
        assert!(state.started());
        assert_eq!(state.resume_point(), Some(at(1_000_000 - MARGIN_MS)));
        assert_eq!(state.on_break(), Restart::Resume);
        let next = state.next_request();
        assert!(!next.include_current_state);
        assert_eq!(next.resume_from_version, at(1_000_000 - MARGIN_MS));
    }

    #[test]
    fn a_live_only_stream_broken_before_its_marker_is_opened_again_as_it_was() {
        let mut state = ResumeState::new(&options());
        let first = state.next_request();
        assert_eq!(state.on_break(), Restart::Resume);
        assert!(drain(&mut state).is_empty(), "nothing to invalidate");
        assert_eq!(state.next_request(), first);
        // The second stream's marker gives the position.
        state.accept(synced(at(2_000_000)));
        assert_eq!(state.resume_point(), Some(at(2_000_000 - MARGIN_MS)));
    }

    #[test]
    fn the_marker_is_not_delivered() {
        let mut state = started(&options());
        assert!(drain(&mut state).is_empty());
        assert_eq!(
            feed(&mut state, vec![modified("a", at(1_000_001))]),
            [at(1_000_001)]
        );
        assert!(drain(&mut state).is_empty());
    }

    #[test]
    fn events_before_the_first_marker_are_held_back_and_handed_out_first() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request();
        for event in [created("a", at(900)), created("b", at(50))] {
            assert_eq!(state.accept(event), Step::Continue);
        }
        assert!(!state.started());
        assert_eq!(state.next_event(), None, "held back until the start");
        state.accept(synced(at(1_000_000)));
        state.accept(modified("c", at(1_000_001)));
        let events = drain(&mut state);
        let got: Vec<_> = events.iter().map(key_version).collect();
        assert_eq!(
            got,
            [
                ("a".into(), at(900)),
                ("b".into(), at(50)),
                ("c".into(), at(1_000_001)),
            ]
        );
    }

    #[test]
    fn changes_before_the_marker_do_not_end_the_current_state() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request();
        // A replay after the current state (from_version) sends changes that are not
        // CREATED before the marker; only the marker says the state is complete.
        state.accept(created("a", at(900)));
        state.accept(modified("b", at(1_000_600)));
        state.accept(marker(v1::EventKind::InvalidateAll, "work", at(1_000_700)));
        assert_eq!(state.resume_point(), None);
        assert_eq!(state.on_break(), Restart::StartOver);
    }

    #[test]
    fn the_marker_ends_the_current_state_with_a_resume_point() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request();
        // The current state's versions do not count: they come in no order.
        state.accept(created("a", at(1_000_900)));
        state.accept(created("b", at(1_000_050)));
        state.accept(synced(at(1_000_500)));
        assert_eq!(state.resume_point(), Some(at(1_000_490)));
        state.accept(modified("b", at(1_000_600)));
        assert_eq!(state.on_break(), Restart::Resume);
        let request = state.next_request();
        assert!(!request.include_current_state);
        assert_eq!(request.resume_from_version, at(1_000_590));
        drain(&mut state);
        // The replay repeats a and b, already delivered.
        let replay = vec![modified("b", at(1_000_600)), modified("a", at(1_000_900))];
        assert!(feed(&mut state, replay).is_empty());
    }

    #[test]
    fn a_break_during_the_current_state_starts_over_with_invalidate_all_for_every_cache() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request();
        state.accept(created("a", at(900)));
        state.accept(created("b", at(50)));
        assert_eq!(state.on_break(), Restart::StartOver);
        let request = state.next_request();
        assert!(request.include_current_state);
        assert_eq!(request.resume_from_version, 0);
        // The held-back entries are superseded; the application gets the invalidations,
        // then the new current state, in which the same entries are news again.
        state.accept(created("a", at(900)));
        state.accept(synced(at(1_000_000)));
        let events = drain(&mut state);
        assert_eq!(events[..2], invalidations(&["work", "sessions"]));
        assert_eq!(key_version(&events[2]), ("a".into(), at(900)));
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn a_break_after_the_marker_does_not_start_over() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request();
        state.accept(created("a", at(900)));
        state.accept(synced(at(1_000_000)));
        assert_eq!(state.on_break(), Restart::Resume);
        assert!(!state.next_request().include_current_state);
        assert_eq!(feed(&mut state, vec![]), [at(900)], "no invalidation");
    }

    #[test]
    fn the_resume_point_is_last_seen_minus_the_margin() {
        let mut state = started(&options());
        feed(
            &mut state,
            vec![modified("a", at(1_000_100)), modified("b", at(1_000_200))],
        );
        assert_eq!(state.on_break(), Restart::Resume);
        let request = state.next_request();
        assert!(!request.include_current_state);
        assert_eq!(request.resume_from_version, at(1_000_190));
    }

    #[test]
    fn duplicates_across_a_reconnect_are_dropped() {
        let mut state = started(&options());
        let first = feed(
            &mut state,
            vec![
                modified("a", at(1_000_100)),
                modified("b", at(1_000_105)),
                modified("a", at(1_000_108)),
            ],
        );
        assert_eq!(first.len(), 3);
        state.on_break();
        assert_eq!(state.next_request().resume_from_version, at(1_000_098));
        // The new stream replays the current state of every key changed since: a and b
        // at the versions already delivered, then a change the old stream never sent,
        // then its marker.
        let second = feed(
            &mut state,
            vec![
                modified("b", at(1_000_105)),
                modified("a", at(1_000_108)),
                modified("c", at(1_000_109)),
                synced(at(1_000_109)),
            ],
        );
        assert_eq!(second, [at(1_000_109)]);
    }

    #[test]
    fn out_of_order_changes_of_different_keys_are_all_delivered() {
        let mut state = started(&options());
        let versions = feed(
            &mut state,
            vec![
                modified("a", at(1_000_200)),
                modified("b", at(1_000_150)),
                modified("c", at(1_000_199)),
                modified("b", at(1_000_140)),
            ],
        );
        assert_eq!(
            versions,
            [at(1_000_200), at(1_000_150), at(1_000_199)],
            "only the stale change of b is dropped"
        );
        assert_eq!(state.resume_point(), Some(at(1_000_190)));
    }

    #[test]
    fn a_replay_is_a_position_from_its_start() {
        let mut state = ResumeState::new(&options().from_version(at(5)));
        let request = state.next_request();
        assert_eq!(request.resume_from_version, at(5));
        assert!(!request.include_current_state);
        assert_eq!(state.resume_point(), Some(at(5)));
        state.on_break();
        assert_eq!(state.next_request().resume_from_version, at(5));
        // A broken replay resumes from what it replayed, in version order.
        state.accept(modified("a", at(500)));
        state.accept(modified("b", at(800)));
        assert!(!state.started());
        state.on_break();
        assert_eq!(state.next_request().resume_from_version, at(790));
        // A change just above the from version does not move the resume point below it.
        let mut state = ResumeState::new(&options().from_version(at(5)));
        state.next_request();
        state.accept(modified("a", at(6)));
        assert_eq!(state.resume_point(), Some(at(5)));
    }

    #[test]
    fn a_replay_marker_starts_the_subscription_and_counts_as_seen() {
        let mut state = ResumeState::new(&options().from_version(at(5)));
        state.next_request();
        state.accept(modified("a", at(500)));
        assert_eq!(state.next_event(), None);
        state.accept(synced(at(900)));
        assert!(state.started());
        assert_eq!(state.resume_point(), Some(at(890)));
        assert_eq!(feed(&mut state, vec![]), [at(500)]);
    }

    #[test]
    fn the_resume_point_is_never_below_one() {
        let mut state = ResumeState::new(&options().from_version(1));
        state.next_request();
        state.accept(modified("a", 3));
        assert_eq!(state.resume_point(), Some(1));
    }

    #[test]
    fn pruning_keeps_memory_bounded() {
        let mut state = started(&options());
        for i in 0..100_000u64 {
            assert_eq!(
                feed(
                    &mut state,
                    vec![modified(&format!("k{i}"), at(1_000_000 + i))]
                )
                .len(),
                1
            );
            assert!(state.tracked_keys() <= PRUNE_FLOOR);
        }
        let remembered: usize = state.delivered.values().map(HashMap::len).sum();
        assert_eq!(remembered, state.tracked_keys());
    }

    #[test]
    fn pruning_keeps_every_key_a_resumed_stream_could_repeat() {
        let mut state = started(&options());
        let count = 3 * PRUNE_FLOOR as u64;
        for i in 0..count {
            state.accept(modified(&format!("k{i}"), at(1_000_000 + i)));
        }
        drain(&mut state);
        state.on_break();
        let resume_from = state.next_request().resume_from_version;
        // The replay: every key changed above the resume point, at the version delivered.
        let replay: Vec<_> = (0..count)
            .map(|i| (at(1_000_000 + i), format!("k{i}")))
            .filter(|(version, _)| *version > resume_from)
            .map(|(version, key)| modified(&key, version))
            .collect();
        assert_eq!(replay.len(), 10);
        assert!(feed(&mut state, replay).is_empty());
    }

    #[test]
    fn resync_zero_starts_over_with_the_current_state_and_invalidates_every_cache() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        assert!(state.next_request().include_current_state);
        state.accept(created("a", at(50)));
        state.accept(created("b", at(900)));
        assert_eq!(state.accept(resync(0)), Step::Reopen(Restart::StartOver));
        let request = state.next_request();
        assert!(request.include_current_state);
        assert_eq!(request.resume_from_version, 0);
        // The application drops its copies: the same entries are news again.
        state.accept(created("a", at(50)));
        state.accept(created("b", at(900)));
        state.accept(synced(at(1_000_000)));
        let events = drain(&mut state);
        assert_eq!(events[..2], invalidations(&["work", "sessions"]));
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn a_resync_with_a_version_resumes_without_invalidating() {
        let mut state = started(&options());
        feed(&mut state, vec![modified("a", at(1_000_300))]);
        assert_eq!(
            state.accept(resync(at(1_000_300))),
            Step::Reopen(Restart::Resume)
        );
        assert!(drain(&mut state).is_empty());
        assert_eq!(state.next_request().resume_from_version, at(1_000_290));
    }

    #[test]
    fn a_replays_invalidate_all_does_not_count_as_seen_but_a_later_clear_does() {
        let mut state = started(&options());
        feed(&mut state, vec![modified("a", at(1_000_100))]);
        state.on_break();
        assert_eq!(state.next_request().resume_from_version, at(1_000_090));
        // The server forgot removals up to 1_000_800: it invalidates, then replays from
        // 1_000_090 on; that version is ahead of the replay.
        let forgotten = marker(v1::EventKind::InvalidateAll, "work", at(1_000_800));
        state.accept(forgotten);
        state.accept(modified("b", at(1_000_150)));
        assert_eq!(state.resume_point(), Some(at(1_000_140)));
        // After the marker, a clear is a change like any other.
        state.accept(synced(at(1_000_150)));
        let clear = marker(v1::EventKind::InvalidateAll, "work", at(1_000_700));
        state.accept(clear);
        assert_eq!(state.resume_point(), Some(at(1_000_690)));
        let events = drain(&mut state);
        assert_eq!(
            events.last(),
            Some(&Event::InvalidateAll {
                cache: "work".into(),
                version: at(1_000_700),
            })
        );
    }

    #[test]
    fn a_server_invalidate_all_resets_the_dedup_of_its_cache_only() {
        let mut state = started(&options());
        let work = event(v1::EventKind::Modified, "work", "a", at(1_000_100));
        let sessions = event(v1::EventKind::Modified, "sessions", "a", at(1_000_100));
        assert_eq!(
            feed(&mut state, vec![work.clone(), sessions.clone()]).len(),
            2
        );
        let clear = marker(v1::EventKind::InvalidateAll, "work", at(1_000_150));
        state.accept(clear);
        state.accept(work);
        state.accept(sessions);
        let events = drain(&mut state);
        assert!(matches!(
            &events[..],
            [Event::InvalidateAll { cache, .. }, Event::Changed(change)]
                if cache == "work" && change.cache == "work"
        ));
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut state = started(&options());
        let mut unknown = modified("a", at(1_000_100));
        unknown.kind = 99;
        let unspecified = event(v1::EventKind::Unspecified, "work", "a", at(1_000_100));
        assert!(feed(&mut state, vec![unknown, unspecified]).is_empty());
        // Skipped events are not delivered versions.
        assert_eq!(
            feed(&mut state, vec![modified("a", at(1_000_100))]).len(),
            1
        );
    }

    #[test]
    fn delivered_changes_carry_values_only_when_asked_for() {
        let mut state = started(&options().with_values(false));
        state.accept(modified("a", at(1_000_001)));
        let Some(Event::Changed(change)) = state.next_event() else {
            panic!("expected a change");
        };
        assert_eq!(change.kind, ChangeKind::Modified);
        assert_eq!(change.value, None);
        assert_eq!(change.metadata, None);
    }
}
