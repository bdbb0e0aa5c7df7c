//! A listener's bookkeeping: what it delivered, where its next stream resumes, and when
//! it must start over. Plain code without I/O, so that every decision is unit-tested;
//! [`EventStream`](crate::EventStream) does the I/O around it.
//!
//! The server sends the changes of one key in version order, and the changes of different
//! keys out of order by at most the time a write is in flight. So once a stream is past
//! any current state, every change up to `last_seen - margin` has arrived, and a new
//! stream resuming from there misses nothing; it repeats some changes, which are dropped
//! because the highest version delivered of every key is remembered until it falls
//! below that resume point (the server never replays a key at or below it again).
//!
//! The current state comes in no version order and without an end marker: until a
//! change that is not `CREATED` (or a `RESYNC_REQUIRED` with a version) proves it
//! complete, there is no resume point, and a stream that breaks must start over. Starting
//! over is never silent: it hands out an [`Event::InvalidateAll`] for every cache first.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sitegrid_proto::v1;

use crate::event::{Change, ChangeKind, Event};
use crate::options::ListenOptions;

/// Unix milliseconds of 2020-01-01, where the timestamps of versions start.
const VERSION_EPOCH_MS: u64 = 1_577_836_800_000;
/// Bits of a version below its milliseconds: a 12-bit counter, then an 8-bit site id.
const VERSION_MS_SHIFT: u32 = 20;
/// Remembered keys below which pruning is not worth a pass over them.
const PRUNE_FLOOR: usize = 4096;

/// The version distance of `duration`: versions carry milliseconds above 20 bits.
pub(crate) fn version_distance(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(1 << VERSION_MS_SHIFT)
}

/// The lowest version a server could give a write at `time` by its own clock.
fn version_at(time: SystemTime) -> u64 {
    let unix_ms = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    unix_ms
        .saturating_sub(VERSION_EPOCH_MS)
        .saturating_mul(1 << VERSION_MS_SHIFT)
}

/// Where the subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No stream yet, or starting over: the next stream is the subscription's own request.
    Fresh,
    /// The current state is coming and nothing proves it complete yet: no resume point.
    CurrentState,
    /// Changes come in version order, give or take the in-flight time.
    Ordered,
}

/// What to do with one event received from the server.
// Short-lived, and nearly always a delivery: see `Event`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Hand it to the application.
    Deliver(Event),
    /// Nothing for the application: a duplicate, or a kind this client does not know.
    Skip,
    /// The server ends the stream (the listener fell behind): hand these events out,
    /// then open a new stream.
    Reopen(Vec<Event>),
}

/// A subscription's resume point and the versions it delivered.
#[derive(Debug)]
pub(crate) struct ResumeState {
    options: ListenOptions,
    /// The resume margin as a version distance.
    margin: u64,
    phase: Phase,
    /// Highest version received since changes came in order; `None` before any.
    last_seen: Option<u64>,
    /// Never resume from before this: `from_version`, or for a live-only subscription
    /// the moment it started (so a stream that breaks before its first event resumes
    /// from there rather than losing what changed meanwhile).
    floor: u64,
    /// Whether the current stream replays (it was opened with a resume version): the
    /// versions of its `INVALIDATE_ALL` and `RESYNC_REQUIRED` may then be ahead of the
    /// replay, so they do not count as seen.
    replaying: bool,
    /// Highest version delivered, by cache and key.
    delivered: HashMap<String, HashMap<Bytes, u64>>,
    /// Keys in `delivered`, all caches together.
    tracked: usize,
    /// Prune when `tracked` reaches this; doubling it keeps pruning amortized O(1).
    prune_at: usize,
}

impl ResumeState {
    /// The state of a subscription no stream was opened for yet.
    pub(crate) fn new(options: &ListenOptions) -> Self {
        ResumeState {
            margin: version_distance(options.resume_margin),
            options: options.clone(),
            phase: Phase::Fresh,
            last_seen: None,
            floor: options.from_version,
            replaying: false,
            delivered: HashMap::new(),
            tracked: 0,
            prune_at: PRUNE_FLOOR,
        }
    }

    /// The request of the next stream; `now` is when it is sent, by this machine's clock.
    pub(crate) fn next_request(&mut self, now: SystemTime) -> v1::ListenRequest {
        let options = &self.options;
        let (include_current_state, resume_from) = match self.phase {
            // A broken current state starts over through `on_break`; `CurrentState` here
            // only means the previous stream was never reported broken.
            Phase::Fresh | Phase::CurrentState => {
                let live_only = !options.include_current_state && options.from_version == 0;
                self.floor = if live_only {
                    version_at(now).saturating_sub(self.margin).max(1)
                } else {
                    options.from_version
                };
                self.phase = if options.include_current_state {
                    Phase::CurrentState
                } else {
                    Phase::Ordered
                };
                (options.include_current_state, options.from_version)
            }
            Phase::Ordered => (false, self.resume_point().unwrap_or(self.floor.max(1))),
        };
        self.replaying = resume_from > 0;
        v1::ListenRequest {
            caches: self.options.caches.clone(),
            include_current_state,
            key_prefix: self.options.key_prefix.clone(),
            tag: self.options.tag.clone().unwrap_or_default(),
            with_values: self.options.with_values,
            resume_from_version: resume_from,
            sync_markers: false,
        }
    }

    /// Where a stream opened now would resume: `last_seen - margin`, never below the
    /// floor nor 1; `None` while there is no position (before the first stream, or while
    /// the current state may be incomplete).
    pub(crate) fn resume_point(&self) -> Option<u64> {
        if self.phase != Phase::Ordered {
            return None;
        }
        let seen = self
            .last_seen
            .map_or(0, |version| version.saturating_sub(self.margin));
        Some(seen.max(self.floor).max(1))
    }

    /// Takes one event of the current stream.
    pub(crate) fn accept(&mut self, event: v1::CacheEvent) -> Step {
        let kind = match v1::EventKind::try_from(event.kind) {
            Ok(v1::EventKind::Created) => ChangeKind::Created,
            Ok(v1::EventKind::Modified) => ChangeKind::Modified,
            Ok(v1::EventKind::Removed) => ChangeKind::Removed,
            Ok(v1::EventKind::Expired) => ChangeKind::Expired,
            Ok(v1::EventKind::InvalidateAll) => return Step::Deliver(self.invalidate_all(event)),
            Ok(v1::EventKind::ResyncRequired) => return Step::Reopen(self.resync(event.version)),
            // A newer server may send kinds this client does not know; they cannot be
            // acted on, and skipping them leaves the versions of known kinds intact.
            Ok(v1::EventKind::Unspecified | v1::EventKind::Synced) | Err(_) => {
                tracing::debug!(kind = event.kind, "listen event of unknown kind skipped");
                return Step::Skip;
            }
        };
        // The current state is sent as CREATED only, so anything else comes after it.
        if kind != ChangeKind::Created {
            self.leave_current_state();
        }
        if self.phase == Phase::Ordered {
            self.see(event.version);
        }
        if !self.remember(&event.cache, &event.key, event.version) {
            return Step::Skip;
        }
        self.maybe_prune();
        Step::Deliver(Event::Changed(Change::from_wire(
            kind,
            event,
            self.options.with_values,
        )))
    }

    /// The stream ended or failed without `RESYNC_REQUIRED`: the events to hand out
    /// before the next stream (an invalidation of every cache if it must start over).
    pub(crate) fn on_break(&mut self) -> Vec<Event> {
        match self.phase {
            Phase::CurrentState => self.start_over(),
            Phase::Fresh | Phase::Ordered => Vec::new(),
        }
    }

    /// `RESYNC_REQUIRED` with `version`: 0 means the server has no position to offer
    /// (the listener fell behind during the current state), anything else that the
    /// current state, if any, was complete.
    fn resync(&mut self, version: u64) -> Vec<Event> {
        if version == 0 {
            return self.start_over();
        }
        self.leave_current_state();
        if !self.replaying {
            self.see(version);
        }
        Vec::new()
    }

    fn invalidate_all(&mut self, event: v1::CacheEvent) -> Event {
        self.leave_current_state();
        if !self.replaying {
            self.see(event.version);
        }
        // The application drops its copies, so whatever comes next for this cache is
        // news to it, even at a version already delivered.
        if let Some(forgotten) = self.delivered.remove(&event.cache) {
            self.tracked -= forgotten.len();
        }
        Event::InvalidateAll {
            cache: event.cache,
            version: event.version,
        }
    }

    fn leave_current_state(&mut self) {
        if self.phase == Phase::CurrentState {
            self.phase = Phase::Ordered;
        }
    }

    fn see(&mut self, version: u64) {
        self.last_seen = Some(self.last_seen.map_or(version, |seen| seen.max(version)));
    }

    /// Drops everything known, so that the next stream is the subscription's own request,
    /// and answers an invalidation of every cache.
    fn start_over(&mut self) -> Vec<Event> {
        self.phase = Phase::Fresh;
        self.last_seen = None;
        self.delivered.clear();
        self.tracked = 0;
        self.prune_at = PRUNE_FLOOR;
        self.options
            .caches
            .iter()
            .map(|cache| Event::InvalidateAll {
                cache: cache.clone(),
                version: 0,
            })
            .collect()
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
    use super::*;

    /// One millisecond as a version distance.
    const MS: u64 = 1 << VERSION_MS_SHIFT;

    fn options() -> ListenOptions {
        ListenOptions::new(["work", "sessions"])
            .with_values(true)
            .resume_margin(Duration::from_millis(10))
    }

    /// 1,000 s after the version epoch: its version is `1_000_000 * MS`.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(VERSION_EPOCH_MS + 1_000_000)
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

    fn resync(version: u64) -> v1::CacheEvent {
        marker(v1::EventKind::ResyncRequired, "", version)
    }

    /// The (key, version) of a delivered change; panics on anything else.
    fn delivered(step: Step) -> (String, u64) {
        match step {
            Step::Deliver(Event::Changed(change)) => (
                String::from_utf8(change.key.to_vec()).unwrap(),
                change.version,
            ),
            other => panic!("expected a delivered change, got {other:?}"),
        }
    }

    /// Feeds `events` and answers the versions delivered, in order.
    fn feed(state: &mut ResumeState, events: Vec<v1::CacheEvent>) -> Vec<u64> {
        events
            .into_iter()
            .filter_map(|event| match state.accept(event) {
                Step::Deliver(Event::Changed(change)) => Some(change.version),
                Step::Skip => None,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
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
    fn a_duration_is_its_milliseconds_above_twenty_bits() {
        assert_eq!(version_distance(Duration::from_millis(1)), 1 << 20);
        assert_eq!(version_distance(Duration::from_secs(10)), 10_000 << 20);
        assert_eq!(version_distance(Duration::MAX), u64::MAX);
        assert_eq!(version_at(now()), 1_000_000 * MS);
        assert_eq!(version_at(UNIX_EPOCH), 0);
    }

    #[test]
    fn the_first_request_is_the_subscription_itself() {
        let options = options()
            .key_prefix("user:")
            .tag("realm=r1")
            .include_current_state(true)
            .from_version(77);
        let mut state = ResumeState::new(&options);
        assert_eq!(state.resume_point(), None);
        assert_eq!(
            state.next_request(now()),
            v1::ListenRequest {
                caches: vec!["work".into(), "sessions".into()],
                include_current_state: true,
                key_prefix: Bytes::from_static(b"user:"),
                tag: "realm=r1".into(),
                with_values: true,
                sync_markers: false,
                resume_from_version: 77,
            }
        );
    }

    #[test]
    fn the_resume_point_is_last_seen_minus_the_margin() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        feed(
            &mut state,
            vec![modified("a", 1_000_100 * MS), modified("b", 1_000_200 * MS)],
        );
        assert!(state.on_break().is_empty());
        let request = state.next_request(now());
        assert!(!request.include_current_state);
        assert_eq!(request.resume_from_version, 1_000_190 * MS);
    }

    #[test]
    fn duplicates_across_a_reconnect_are_dropped() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        let first = feed(
            &mut state,
            vec![
                modified("a", 1_000_100 * MS),
                modified("b", 1_000_105 * MS),
                modified("a", 1_000_108 * MS),
            ],
        );
        assert_eq!(first.len(), 3);
        state.on_break();
        assert_eq!(
            state.next_request(now()).resume_from_version,
            1_000_098 * MS
        );
        // The new stream replays the current state of every key changed since: a and b
        // at the versions already delivered, then a change the old stream never sent.
        let second = feed(
            &mut state,
            vec![
                modified("b", 1_000_105 * MS),
                modified("a", 1_000_108 * MS),
                modified("c", 1_000_109 * MS),
            ],
        );
        assert_eq!(second, [1_000_109 * MS]);
    }

    #[test]
    fn out_of_order_changes_of_different_keys_are_all_delivered() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        let versions = feed(
            &mut state,
            vec![
                modified("a", 1_000_200 * MS),
                modified("b", 1_000_150 * MS),
                modified("c", 1_000_199 * MS),
                modified("b", 1_000_140 * MS),
            ],
        );
        assert_eq!(
            versions,
            [1_000_200 * MS, 1_000_150 * MS, 1_000_199 * MS],
            "only the stale change of b is dropped"
        );
        assert_eq!(state.resume_point(), Some(1_000_190 * MS));
    }

    #[test]
    fn a_live_stream_broken_before_its_first_event_resumes_from_its_start() {
        let mut state = ResumeState::new(&options());
        let first = state.next_request(now());
        assert_eq!(first.resume_from_version, 0, "live changes only");
        assert!(state.on_break().is_empty());
        let later = now() + Duration::from_secs(60);
        assert_eq!(
            state.next_request(later).resume_from_version,
            999_990 * MS,
            "from when the subscription started, minus the margin"
        );
    }

    #[test]
    fn nothing_seen_resumes_from_the_subscription_from_version() {
        let mut state = ResumeState::new(&options().from_version(5 * MS));
        assert_eq!(state.next_request(now()).resume_from_version, 5 * MS);
        state.on_break();
        assert_eq!(state.next_request(now()).resume_from_version, 5 * MS);
        // A change just above it does not move the resume point below it.
        feed(&mut state, vec![modified("a", 6 * MS)]);
        assert_eq!(state.resume_point(), Some(5 * MS));
    }

    #[test]
    fn the_resume_point_is_never_below_one() {
        let mut state = ResumeState::new(&options().from_version(1));
        state.next_request(now());
        feed(&mut state, vec![modified("a", 3)]);
        assert_eq!(state.resume_point(), Some(1));
    }

    #[test]
    fn pruning_keeps_memory_bounded() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        for i in 0..100_000u64 {
            let step = state.accept(modified(&format!("k{i}"), (1_000_000 + i) * MS));
            assert!(matches!(step, Step::Deliver(_)));
            assert!(state.tracked_keys() <= PRUNE_FLOOR);
        }
        let remembered: usize = state.delivered.values().map(HashMap::len).sum();
        assert_eq!(remembered, state.tracked_keys());
    }

    #[test]
    fn pruning_keeps_every_key_a_resumed_stream_could_repeat() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        let count = 3 * PRUNE_FLOOR as u64;
        for i in 0..count {
            state.accept(modified(&format!("k{i}"), (1_000_000 + i) * MS));
        }
        state.on_break();
        let resume_from = state.next_request(now()).resume_from_version;
        // The replay: every key changed above the resume point, at the version delivered.
        let replay: Vec<_> = (0..count)
            .map(|i| ((1_000_000 + i) * MS, format!("k{i}")))
            .filter(|(version, _)| *version > resume_from)
            .map(|(version, key)| modified(&key, version))
            .collect();
        assert_eq!(replay.len(), 10);
        assert!(feed(&mut state, replay).is_empty());
    }

    #[test]
    fn resync_zero_starts_over_with_the_current_state_and_invalidates_every_cache() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        assert!(state.next_request(now()).include_current_state);
        assert_eq!(
            feed(&mut state, vec![created("a", 50), created("b", 900)]).len(),
            2
        );
        assert_eq!(
            state.accept(resync(0)),
            Step::Reopen(invalidations(&["work", "sessions"]))
        );
        let request = state.next_request(now());
        assert!(request.include_current_state);
        assert_eq!(request.resume_from_version, 0);
        // The application dropped its copies: the same entries are news again.
        assert_eq!(
            feed(&mut state, vec![created("a", 50), created("b", 900)]).len(),
            2
        );
    }

    #[test]
    fn a_break_during_the_current_state_starts_over() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request(now());
        assert_eq!(state.on_break(), invalidations(&["work", "sessions"]));
        assert!(state.next_request(now()).include_current_state);
        // Also after some entries: they came in no version order, so no position exists.
        feed(
            &mut state,
            vec![created("a", 900 * MS), created("b", 50 * MS)],
        );
        assert_eq!(state.resume_point(), None);
        assert_eq!(state.on_break().len(), 2);
        assert!(state.next_request(now()).include_current_state);
    }

    #[test]
    fn a_change_after_the_current_state_gives_a_resume_point() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request(now());
        // The current state's versions do not count: they come in no order.
        feed(
            &mut state,
            vec![created("a", 1_000_900 * MS), created("b", 1_000_050 * MS)],
        );
        feed(&mut state, vec![modified("b", 1_000_600 * MS)]);
        assert!(state.on_break().is_empty());
        let request = state.next_request(now());
        assert!(!request.include_current_state);
        assert_eq!(request.resume_from_version, 1_000_590 * MS);
        // The replay repeats a and b, already delivered.
        let replay = vec![modified("b", 1_000_600 * MS), modified("a", 1_000_900 * MS)];
        assert!(feed(&mut state, replay).is_empty());
    }

    #[test]
    fn a_resync_with_a_version_resumes_without_invalidating() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        feed(&mut state, vec![modified("a", 1_000_300 * MS)]);
        assert_eq!(
            state.accept(resync(1_000_300 * MS)),
            Step::Reopen(Vec::new())
        );
        assert_eq!(
            state.next_request(now()).resume_from_version,
            1_000_290 * MS
        );
    }

    #[test]
    fn a_resync_with_a_version_ends_the_current_state() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request(now());
        feed(&mut state, vec![created("a", 1_000_500 * MS)]);
        assert_eq!(
            state.accept(resync(1_000_500 * MS)),
            Step::Reopen(Vec::new())
        );
        let request = state.next_request(now());
        assert!(!request.include_current_state);
        assert_eq!(request.resume_from_version, 1_000_490 * MS);
    }

    #[test]
    fn versions_of_markers_on_a_replaying_stream_do_not_count_as_seen() {
        let mut state = ResumeState::new(&options().from_version(1_000_000 * MS));
        assert!(state.next_request(now()).resume_from_version > 0);
        // The server forgot removals up to 1_000_800: it invalidates, then replays from
        // 1_000_000 on; neither that version nor the resync's passes the replay.
        let invalidate = marker(v1::EventKind::InvalidateAll, "work", 1_000_800 * MS);
        assert!(matches!(state.accept(invalidate), Step::Deliver(_)));
        feed(&mut state, vec![modified("a", 1_000_150 * MS)]);
        assert_eq!(
            state.accept(resync(1_000_900 * MS)),
            Step::Reopen(Vec::new())
        );
        assert_eq!(
            state.next_request(now()).resume_from_version,
            1_000_140 * MS
        );
    }

    #[test]
    fn a_clear_after_the_current_state_gives_a_resume_point() {
        let mut state = ResumeState::new(&options().include_current_state(true));
        state.next_request(now());
        feed(&mut state, vec![created("a", 1_000_100 * MS)]);
        let clear = marker(v1::EventKind::InvalidateAll, "work", 1_000_700 * MS);
        assert_eq!(
            state.accept(clear),
            Step::Deliver(Event::InvalidateAll {
                cache: "work".into(),
                version: 1_000_700 * MS,
            })
        );
        assert!(state.on_break().is_empty());
        assert_eq!(
            state.next_request(now()).resume_from_version,
            1_000_690 * MS
        );
    }

    #[test]
    fn a_server_invalidate_all_resets_the_dedup_of_its_cache_only() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        let work = event(v1::EventKind::Modified, "work", "a", 1_000_100 * MS);
        let sessions = event(v1::EventKind::Modified, "sessions", "a", 1_000_100 * MS);
        assert_eq!(
            feed(&mut state, vec![work.clone(), sessions.clone()]).len(),
            2
        );
        let clear = marker(v1::EventKind::InvalidateAll, "work", 1_000_150 * MS);
        assert!(matches!(
            state.accept(clear),
            Step::Deliver(Event::InvalidateAll { ref cache, .. }) if cache == "work"
        ));
        assert_eq!(delivered(state.accept(work)), ("a".into(), 1_000_100 * MS));
        assert_eq!(state.accept(sessions), Step::Skip);
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut state = ResumeState::new(&options());
        state.next_request(now());
        let mut unknown = modified("a", 1_000_100 * MS);
        unknown.kind = 99;
        assert_eq!(state.accept(unknown), Step::Skip);
        let unspecified = event(v1::EventKind::Unspecified, "work", "a", 1_000_100 * MS);
        assert_eq!(state.accept(unspecified), Step::Skip);
        // Skipped events are not delivered versions.
        assert_eq!(
            feed(&mut state, vec![modified("a", 1_000_100 * MS)]).len(),
            1
        );
    }

    #[test]
    fn delivered_changes_carry_values_only_when_asked_for() {
        let mut state = ResumeState::new(&options().with_values(false));
        state.next_request(now());
        let Step::Deliver(Event::Changed(change)) = state.accept(modified("a", 1)) else {
            panic!("expected a change");
        };
        assert_eq!(change.kind, ChangeKind::Modified);
        assert_eq!(change.value, None);
        assert_eq!(change.metadata, None);
    }
}
