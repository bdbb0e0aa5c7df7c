//! Subscriptions against a real store: phases, filters, resume, falling behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sitegrid_config::Config;
use tokio::sync::{mpsc, watch};

use crate::events::subscription::{ListenSpec, Subscription};
use crate::events::{ChangeEvent, EventKind, Hub};
use crate::store::cache::{Condition, NewValue, WriteOp, WriteRequest};
use crate::store::reaper::reap_once;
use crate::store::storage::{MemoryStorage, Storage};
use crate::store::time::ManualTimeSource;
use crate::store::version::Version;
use crate::store::{Driver, Store};

const T0: u64 = 1_800_000_000_000;

struct Fixture {
    store: Store,
    time: Arc<ManualTimeSource>,
    _stop: watch::Sender<bool>,
    stopping: watch::Receiver<bool>,
}

fn fixture(listener_buffer: usize) -> Fixture {
    let mut config = Config::default();
    config.node.name = "n1".into();
    config.node.site = "site1".into();
    config.store.tombstone_ttl = Duration::from_secs(60);
    let time = ManualTimeSource::starting_at(T0);
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
    let store = Store::open(
        &config,
        time.clone(),
        Some(storage),
        Hub::new(listener_buffer),
    )
    .unwrap();
    let (stop, stopping) = watch::channel(false);
    Fixture {
        store,
        time,
        _stop: stop,
        stopping,
    }
}

impl Fixture {
    fn spec(&self, caches: &[&str]) -> ListenSpec {
        ListenSpec {
            caches: caches
                .iter()
                .map(|c| self.store.cache(c).unwrap().clone())
                .collect(),
            key_prefix: Bytes::new(),
            tag: None,
            include_current_state: false,
            resume_from: 0,
            sync_markers: false,
        }
    }

    /// Starts a subscription; its events arrive on the returned receiver.
    fn listen(&self, spec: ListenSpec, channel: usize) -> mpsc::Receiver<Arc<ChangeEvent>> {
        let (sender, receiver) = mpsc::channel(channel);
        let subscription = Subscription::new(spec, self.store.hub(), self.store.clock().current());
        tokio::spawn(subscription.run(sender, self.stopping.clone()));
        receiver
    }

    async fn put(&self, cache: &str, key: &str, value: &str) -> Version {
        self.put_with(cache, key, value, 0, &[]).await
    }

    async fn put_with(
        &self,
        cache: &str,
        key: &str,
        value: &str,
        lifespan_ms: u64,
        tags: &[&str],
    ) -> Version {
        let request = WriteRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            op: WriteOp::Put(NewValue {
                value: Bytes::copy_from_slice(value.as_bytes()),
                lifespan_ms,
                max_idle_ms: 0,
                tags: tags.iter().map(|t| Arc::from(*t)).collect(),
            }),
            condition: Condition::Always,
            keep_previous: false,
        };
        self.store
            .write(cache, request, None, Driver::OwnTask)
            .await
            .unwrap()
            .version
    }

    async fn remove(&self, cache: &str, key: &str) -> Version {
        let request = WriteRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            op: WriteOp::Remove,
            condition: Condition::Present,
            keep_previous: false,
        };
        self.store
            .write(cache, request, None, Driver::OwnTask)
            .await
            .unwrap()
            .version
    }
}

/// Everything received until nothing more comes without new writes.
async fn drain(receiver: &mut mpsc::Receiver<Arc<ChangeEvent>>) -> Vec<Arc<ChangeEvent>> {
    let mut events = Vec::new();
    loop {
        // Let the subscription task run until it has nothing more to hand over.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        match receiver.try_recv() {
            Ok(event) => events.push(event),
            Err(_) => return events,
        }
    }
}

fn described(events: &[Arc<ChangeEvent>]) -> Vec<(EventKind, String)> {
    events
        .iter()
        .map(|e| (e.kind, String::from_utf8_lossy(&e.key).into_owned()))
        .collect()
}

#[tokio::test]
async fn live_changes_arrive_with_their_kind_version_and_value() {
    let f = fixture(1024);
    let mut events = f.listen(f.spec(&["work"]), 64);
    let created = f.put("work", "k", "v1").await;
    let modified = f.put("work", "k", "v2").await;
    let removed = f.remove("work", "k").await;
    f.put("sessions", "other-cache", "x").await;
    let got = drain(&mut events).await;
    assert_eq!(
        described(&got),
        [
            (EventKind::Created, "k".into()),
            (EventKind::Modified, "k".into()),
            (EventKind::Removed, "k".into())
        ]
    );
    assert_eq!(
        got.iter().map(|e| e.version).collect::<Vec<_>>(),
        [created, modified, removed]
    );
    assert_eq!(&got[1].entry.as_ref().unwrap().value[..], b"v2");
    // A removal carries the last value.
    assert_eq!(&got[2].entry.as_ref().unwrap().value[..], b"v2");
    assert_eq!(&*got[0].origin_site, "site1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_state_comes_first_then_live_changes_without_gap_or_duplicate() {
    let f = Arc::new(fixture(100_000));
    for i in 0..2_000 {
        f.put("work", &format!("k{i}"), "old").await;
    }
    f.remove("work", "k1").await;
    let mut spec = f.spec(&["work"]);
    spec.include_current_state = true;
    // A one-event channel makes the snapshot crawl while the writer below runs.
    let mut events = f.listen(spec, 1);
    let writer = {
        let f = f.clone();
        tokio::spawn(async move {
            for i in (0..2_000).step_by(7) {
                f.put("work", &format!("k{i}"), "new").await;
            }
            f.remove("work", "k3").await;
        })
    };
    writer.await.unwrap();
    let page = f.store.page("work", None, 10_000, None).unwrap();
    let expected: HashMap<Bytes, Version> = page
        .entries
        .iter()
        .map(|(key, entry)| (key.clone(), entry.version))
        .collect();
    assert_eq!(expected.len(), 1_998);

    // Apply events in order until the view is the cache's state (or the deadline passes);
    // no key may ever go back or repeat a version.
    let mut last_version: HashMap<Bytes, Version> = HashMap::new();
    let mut view: HashMap<Bytes, Version> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while view != expected {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "view never matched: {} of {} keys",
                    view.len(),
                    expected.len()
                )
            })
            .expect("stream open");
        let previous = last_version.insert(event.key.clone(), event.version);
        assert!(
            previous.is_none_or(|p| p < event.version),
            "duplicate or out of order for {:?}",
            event.key
        );
        match event.kind {
            EventKind::Created | EventKind::Modified => {
                view.insert(event.key.clone(), event.version)
            }
            _ => view.remove(&event.key),
        };
    }
    assert!(
        !view.contains_key(&Bytes::from("k1")),
        "removed before the subscription"
    );
}

#[tokio::test]
async fn a_resume_replays_each_changed_key_at_its_latest_version_and_the_removals() {
    let f = fixture(1024);
    for i in 0..100 {
        f.put("work", &format!("k{i}"), "before").await;
    }
    let resume_from = f.store.clock().current();
    let mut latest = HashMap::new();
    for i in 0..50 {
        let key = format!("k{i}");
        f.put("work", &key, "first").await;
        latest.insert(
            key.clone(),
            (EventKind::Modified, f.put("work", &key, "second").await),
        );
    }
    for i in 50..60 {
        let key = format!("k{i}");
        latest.insert(
            key.clone(),
            (EventKind::Removed, f.remove("work", &key).await),
        );
    }
    let short = f.put_with("work", "short", "v", 10, &[]).await;
    let _ = short;
    f.time.advance_ms(10);
    reap_once(&f.store).await;
    let mut spec = f.spec(&["work"]);
    spec.resume_from = resume_from;
    let mut events = f.listen(spec, 1024);
    let got = drain(&mut events).await;
    let mut by_key = HashMap::new();
    for event in &got {
        let key = String::from_utf8_lossy(&event.key).into_owned();
        assert!(
            by_key.insert(key, (event.kind, event.version)).is_none(),
            "one event per key"
        );
    }
    assert_eq!(
        by_key.remove("short").map(|(kind, _)| kind),
        Some(EventKind::Expired)
    );
    assert_eq!(by_key, latest);
    let versions: Vec<_> = got.iter().map(|e| e.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "replayed in version order"
    );
}

#[tokio::test]
async fn a_resume_from_before_forgotten_removals_starts_with_invalidate_all() {
    let f = fixture(1024);
    f.put("work", "a", "v").await;
    let resume_from = f.store.clock().current();
    f.remove("work", "a").await;
    f.time.advance_ms(60_000);
    assert_eq!(reap_once(&f.store).await.purged, 1);
    f.put("work", "b", "v").await;
    let mut spec = f.spec(&["work"]);
    spec.resume_from = resume_from;
    let mut events = f.listen(spec, 64);
    let got = drain(&mut events).await;
    assert_eq!(
        described(&got),
        [
            (EventKind::InvalidateAll, "".into()),
            (EventKind::Modified, "b".into())
        ]
    );
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_resync_required_and_can_resume() {
    let f = fixture(16);
    let mut events = f.listen(f.spec(&["work"]), 4);
    let mut versions = Vec::new();
    for i in 0..200 {
        versions.push(f.put("work", &format!("k{i}"), "v").await);
    }
    let got = drain(&mut events).await;
    let last = got.last().expect("events");
    assert_eq!(last.kind, EventKind::ResyncRequired);
    assert!(
        events.recv().await.is_none(),
        "the stream ends after RESYNC_REQUIRED"
    );
    let delivered: Vec<_> = got[..got.len() - 1].iter().map(|e| e.version).collect();
    assert!(delivered.iter().all(|v| *v <= last.version));
    assert!(last.version > 0, "a live subscription can always resume");
    // Resuming from that version delivers every later change.
    let mut spec = f.spec(&["work"]);
    spec.resume_from = last.version;
    let mut resumed = f.listen(spec, 1024);
    let replayed: Vec<_> = drain(&mut resumed)
        .await
        .iter()
        .map(|e| e.version)
        .collect();
    let mut all: Vec<_> = delivered.into_iter().chain(replayed).collect();
    all.sort_unstable();
    assert_eq!(all, versions);
    assert_eq!(
        f.store.hub().subscribers(),
        1,
        "the fallen-behind subscription is gone"
    );
}

#[tokio::test]
async fn prefix_and_tag_filters_select_events() {
    let f = fixture(1024);
    let mut spec = f.spec(&["sessions"]);
    spec.key_prefix = Bytes::from_static(b"realm1/");
    spec.tag = Some("user=u1".into());
    let mut events = f.listen(spec, 64);
    f.put_with("sessions", "realm1/s1", "v", 0, &["user=u1"])
        .await;
    f.put_with("sessions", "realm1/s2", "v", 0, &["user=u2"])
        .await;
    f.put_with("sessions", "realm2/s3", "v", 0, &["user=u1"])
        .await;
    f.remove("sessions", "realm1/s1").await;
    f.remove("sessions", "realm1/s2").await;
    assert_eq!(
        described(&drain(&mut events).await),
        [
            (EventKind::Created, "realm1/s1".into()),
            (EventKind::Removed, "realm1/s1".into())
        ]
    );
}

#[tokio::test]
async fn a_clear_is_announced_as_invalidate_all() {
    let f = fixture(1024);
    f.put("work", "a", "v").await;
    let mut events = f.listen(f.spec(&["work", "sessions"]), 64);
    f.store.clear("work").await.unwrap();
    let got = drain(&mut events).await;
    assert_eq!(described(&got), [(EventKind::InvalidateAll, "".into())]);
    assert_eq!(&*got[0].cache, "work");
}

#[tokio::test]
async fn a_subscription_ends_when_the_node_stops() {
    let f = fixture(1024);
    let mut events = f.listen(f.spec(&["work"]), 64);
    f._stop.send(true).unwrap();
    assert!(events.recv().await.is_none());
}

#[tokio::test]
async fn a_replay_of_several_caches_comes_in_version_order_then_a_synced_marker() {
    let f = fixture(1024);
    let resume_from = f.store.clock().current();
    let mut versions = Vec::new();
    for i in 0..300 {
        let cache = if i % 3 == 0 { "sessions" } else { "work" };
        versions.push(f.put(cache, &format!("k{i}"), "v").await);
    }
    let mut spec = f.spec(&["work", "sessions"]);
    spec.resume_from = resume_from;
    spec.sync_markers = true;
    let mut events = f.listen(spec, 1024);
    let got = drain(&mut events).await;
    let (marker, replayed) = got.split_last().unwrap();
    let replayed: Vec<_> = replayed.iter().map(|e| e.version).collect();
    assert_eq!(replayed, versions, "one replay, merged by version");
    assert_eq!(marker.kind, EventKind::Synced);
    assert_eq!(marker.version, *versions.last().unwrap());
}

#[tokio::test]
async fn synced_markers_come_only_when_asked_and_mark_the_end_of_the_current_state() {
    let f = fixture(1024);
    f.put("work", "a", "v").await;
    let subscribed_at = f.store.clock().current();
    let mut spec = f.spec(&["work"]);
    spec.include_current_state = true;
    spec.sync_markers = true;
    let mut events = f.listen(spec, 64);
    let mut got = drain(&mut events).await;
    f.put("work", "b", "v").await;
    got.extend(drain(&mut events).await);
    assert_eq!(
        described(&got),
        [
            (EventKind::Created, "a".into()),
            (EventKind::Synced, "".into()),
            (EventKind::Created, "b".into())
        ]
    );
    assert!(got[1].version >= subscribed_at);
    // Without asking: no marker.
    let mut plain = f.listen(f.spec(&["work"]), 64);
    f.put("work", "c", "v").await;
    assert_eq!(
        described(&drain(&mut plain).await),
        [(EventKind::Created, "c".into())]
    );
}
