//! The store's behaviour end to end: conditions, versions, expiry, tombstones,
//! idempotency, tags, clear, and restarts on the same storage (the in-memory twin, which
//! can lose what was never made durable).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sitegrid_config::Config;
use tokio::sync::broadcast::error::TryRecvError;

use super::cache::{Condition, NewValue, WriteOp, WriteRequest, WriteResult};
use super::reaper::reap_once;
use super::storage::{MemoryStorage, Storage};
use super::time::ManualTimeSource;
use super::{Driver, Store, version};
use crate::Error;
use crate::events::{ChangeEvent, EventKind, Hub};

const T0: u64 = 1_800_000_000_000;

struct Harness {
    time: Arc<ManualTimeSource>,
    storage: Arc<MemoryStorage>,
    config: Config,
    store: Store,
}

fn config() -> Config {
    let mut config = Config::default();
    config.node.name = "n1".into();
    config.node.site = "site1".into();
    config.store.tombstone_ttl = Duration::from_secs(60);
    config
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(config())
    }

    fn with_config(config: Config) -> Harness {
        let time = ManualTimeSource::starting_at(T0);
        let storage = Arc::new(MemoryStorage::default());
        let store = open(&config, &time, &storage);
        Harness {
            time,
            storage,
            config,
            store,
        }
    }

    /// Simulates a crash (unsynced writes lost) and a restart on the same storage.
    fn crash_and_restart(&mut self) {
        self.storage.crash();
        self.store = open(&self.config, &self.time, &self.storage);
    }

    async fn put(&self, cache: &str, key: &str, value: &str) -> Arc<WriteResult> {
        self.write(
            cache,
            key,
            WriteOp::Put(new_value(value, 0, 0, &[])),
            Condition::Always,
        )
        .await
    }

    async fn write(
        &self,
        cache: &str,
        key: &str,
        op: WriteOp,
        condition: Condition,
    ) -> Arc<WriteResult> {
        self.store
            .write(cache, request(key, op, condition), None, Driver::OwnTask)
            .await
            .unwrap()
    }

    fn value(&self, cache: &str, key: &str) -> Option<String> {
        self.store
            .get(cache, &Bytes::copy_from_slice(key.as_bytes()))
            .unwrap()
            .map(|entry| String::from_utf8(entry.value.to_vec()).unwrap())
    }
}

fn open(config: &Config, time: &Arc<ManualTimeSource>, storage: &Arc<MemoryStorage>) -> Store {
    let storage: Arc<dyn Storage> = storage.clone();
    Store::open(config, time.clone(), Some(storage), Hub::new(1024)).unwrap()
}

fn new_value(value: &str, lifespan_ms: u64, max_idle_ms: u64, tags: &[&str]) -> NewValue {
    NewValue {
        value: Bytes::copy_from_slice(value.as_bytes()),
        lifespan_ms,
        max_idle_ms,
        tags: tags.iter().map(|t| Arc::from(*t)).collect(),
    }
}

fn request(key: &str, op: WriteOp, condition: Condition) -> WriteRequest {
    WriteRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        op,
        condition,
        keep_previous: true,
    }
}

fn put(value: &str) -> WriteOp {
    WriteOp::Put(new_value(value, 0, 0, &[]))
}

fn events(
    receiver: &mut tokio::sync::broadcast::Receiver<Arc<ChangeEvent>>,
) -> Vec<(EventKind, String)> {
    let mut seen = Vec::new();
    loop {
        match receiver.try_recv() {
            Ok(event) => seen.push((event.kind, String::from_utf8_lossy(&event.key).into_owned())),
            Err(TryRecvError::Empty) => return seen,
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_put_is_read_back_with_its_metadata() {
    let h = Harness::new();
    let mut value = new_value("v1", 60_000, 30_000, &["user=u1"]);
    value.value = Bytes::from_static(b"v1");
    let result = h
        .write("work", "k", WriteOp::Put(value), Condition::Always)
        .await;
    assert!(result.applied);
    assert!(result.previous.is_none());
    let entry = h
        .store
        .get("work", &Bytes::from_static(b"k"))
        .unwrap()
        .unwrap();
    assert_eq!(&entry.value[..], b"v1");
    assert_eq!(entry.version, result.version);
    assert_eq!(&*entry.origin_site, "site1");
    assert_eq!(entry.created_ms, T0);
    assert_eq!(entry.lifespan_ms, 60_000);
    assert_eq!(entry.max_idle_ms, 30_000);
    assert_eq!(&*entry.tags[0], "user=u1");
    assert_eq!(version::site_of(entry.version), 1);
}

#[tokio::test]
async fn put_if_absent_stores_once_and_then_returns_the_existing_entry() {
    let h = Harness::new();
    let first = h
        .write("actionTokens", "t", put("a"), Condition::Absent)
        .await;
    assert!(first.applied);
    let second = h
        .write("actionTokens", "t", put("b"), Condition::Absent)
        .await;
    assert!(!second.applied);
    let existing = second.previous.as_ref().unwrap();
    assert_eq!(&existing.value[..], b"a");
    assert_eq!(existing.version, first.version);
    assert_eq!(h.value("actionTokens", "t").as_deref(), Some("a"));
}

#[tokio::test]
async fn replace_needs_a_present_key() {
    let h = Harness::new();
    let absent = h.write("work", "k", put("a"), Condition::Present).await;
    assert!(!absent.applied && absent.previous.is_none());
    assert_eq!(h.value("work", "k"), None);
    h.put("work", "k", "a").await;
    let replaced = h.write("work", "k", put("b"), Condition::Present).await;
    assert!(replaced.applied);
    assert_eq!(&replaced.previous.as_ref().unwrap().value[..], b"a");
    assert_eq!(h.value("work", "k").as_deref(), Some("b"));
}

#[tokio::test]
async fn replace_with_version_compares_exactly() {
    let h = Harness::new();
    let v1 = h.put("sessions", "s", "a").await.version;
    let stale = h
        .write("sessions", "s", put("x"), Condition::VersionIs(v1 - 1))
        .await;
    assert!(!stale.applied);
    assert_eq!(stale.previous.as_ref().unwrap().version, v1);
    let ok = h
        .write("sessions", "s", put("b"), Condition::VersionIs(v1))
        .await;
    assert!(ok.applied && ok.version > v1);
    // The same expected version can't win twice.
    let again = h
        .write("sessions", "s", put("c"), Condition::VersionIs(v1))
        .await;
    assert!(!again.applied);
    assert_eq!(again.previous.as_ref().unwrap().version, ok.version);
    let absent = h
        .write("sessions", "nope", put("c"), Condition::VersionIs(v1))
        .await;
    assert!(!absent.applied && absent.previous.is_none());
}

#[tokio::test]
async fn remove_returns_the_removed_entry_and_leaves_a_tombstone() {
    let h = Harness::new();
    let written = h.put("work", "k", "a").await;
    let removed = h
        .write("work", "k", WriteOp::Remove, Condition::Present)
        .await;
    assert!(removed.applied && removed.version > written.version);
    assert_eq!(&removed.previous.as_ref().unwrap().value[..], b"a");
    assert_eq!(h.value("work", "k"), None);
    assert_eq!(h.store.size("work").unwrap(), 0);
    let again = h
        .write("work", "k", WriteOp::Remove, Condition::Present)
        .await;
    assert!(!again.applied && again.previous.is_none());
    // The tombstone holds the removal's version.
    let cache = h.store.cache("work").unwrap();
    assert_eq!(
        cache
            .keyspace
            .read()
            .state_version(&Bytes::from_static(b"k")),
        removed.version
    );
}

#[tokio::test]
async fn remove_with_version_compares_exactly() {
    let h = Harness::new();
    let v1 = h.put("work", "k", "a").await.version;
    let wrong = h
        .write("work", "k", WriteOp::Remove, Condition::VersionIs(v1 + 1))
        .await;
    assert!(!wrong.applied);
    assert_eq!(wrong.previous.as_ref().unwrap().version, v1);
    let right = h
        .write("work", "k", WriteOp::Remove, Condition::VersionIs(v1))
        .await;
    assert!(right.applied);
    assert_eq!(h.value("work", "k"), None);
}

#[tokio::test]
async fn versions_strictly_increase_per_key_and_overall() {
    let h = Harness::new();
    let mut last = 0;
    for i in 0..100 {
        let key = format!("k{}", i % 7);
        let version = h.put("work", &key, "v").await.version;
        assert!(version > last);
        last = version;
    }
}

#[tokio::test]
async fn an_entry_reads_as_absent_the_moment_its_lifespan_ends() {
    let h = Harness::new();
    h.write(
        "work",
        "k",
        WriteOp::Put(new_value("v", 1_000, 0, &[])),
        Condition::Always,
    )
    .await;
    h.time.advance_ms(999);
    assert_eq!(h.value("work", "k").as_deref(), Some("v"));
    assert_eq!(h.store.size("work").unwrap(), 1);
    h.time.advance_ms(1);
    assert_eq!(h.value("work", "k"), None);
    assert_eq!(h.store.size("work").unwrap(), 0);
    assert!(
        h.store
            .page("work", None, 10, None)
            .unwrap()
            .entries
            .is_empty()
    );
}

#[tokio::test]
async fn the_reaper_expires_due_entries_with_an_expired_event() {
    let h = Harness::new();
    let mut events_seen = h.store.hub().subscribe();
    h.write(
        "work",
        "k",
        WriteOp::Put(new_value("v", 1_000, 0, &[])),
        Condition::Always,
    )
    .await;
    h.put("work", "forever", "v").await;
    assert_eq!(reap_once(&h.store).await.expired, 0);
    h.time.advance_ms(1_000);
    assert_eq!(reap_once(&h.store).await.expired, 1);
    assert_eq!(
        events(&mut events_seen),
        [
            (EventKind::Created, "k".into()),
            (EventKind::Created, "forever".into()),
            (EventKind::Expired, "k".into())
        ]
    );
}

#[tokio::test]
async fn an_expired_event_carries_the_last_value() {
    let h = Harness::new();
    let mut receiver = h.store.hub().subscribe();
    h.write(
        "work",
        "k",
        WriteOp::Put(new_value("last", 10, 0, &[])),
        Condition::Always,
    )
    .await;
    h.time.advance_ms(10);
    reap_once(&h.store).await;
    let _created = receiver.try_recv().unwrap();
    let expired = receiver.try_recv().unwrap();
    assert_eq!(expired.kind, EventKind::Expired);
    assert_eq!(&expired.entry.as_ref().unwrap().value[..], b"last");
}

#[tokio::test]
async fn reads_keep_a_max_idle_entry_alive() {
    let h = Harness::new();
    h.write(
        "work",
        "k",
        WriteOp::Put(new_value("v", 0, 1_000, &[])),
        Condition::Always,
    )
    .await;
    for _ in 0..5 {
        h.time.advance_ms(900);
        assert_eq!(h.value("work", "k").as_deref(), Some("v"));
        reap_once(&h.store).await;
    }
    h.time.advance_ms(1_000);
    assert_eq!(h.value("work", "k"), None);
}

#[tokio::test]
async fn a_write_to_an_expired_key_sees_it_absent_after_an_expired_event() {
    let h = Harness::new();
    let mut receiver = h.store.hub().subscribe();
    let first = h
        .write(
            "actionTokens",
            "t",
            WriteOp::Put(new_value("a", 10, 0, &[])),
            Condition::Always,
        )
        .await;
    h.time.advance_ms(10);
    let second = h
        .write("actionTokens", "t", put("b"), Condition::Absent)
        .await;
    assert!(second.applied, "an expired token is absent");
    assert!(second.previous.is_none());
    assert!(second.version > first.version);
    assert_eq!(
        events(&mut receiver),
        [
            (EventKind::Created, "t".into()),
            (EventKind::Expired, "t".into()),
            (EventKind::Created, "t".into())
        ]
    );
}

#[tokio::test]
async fn tombstones_are_purged_after_their_ttl() {
    let h = Harness::new();
    h.put("work", "k", "v").await;
    h.write("work", "k", WriteOp::Remove, Condition::Present)
        .await;
    assert_eq!(reap_once(&h.store).await.purged, 0);
    h.time.advance_ms(60_000);
    assert_eq!(reap_once(&h.store).await.purged, 1);
    assert_eq!(
        h.store.cache("work").unwrap().keyspace.read().slot_count(),
        0
    );
}

#[tokio::test]
async fn a_kept_answer_holds_the_previous_entry_only_when_asked() {
    let h = Harness::new();
    h.put("work", "k", "old").await;
    let mut quiet = request("k", put("new"), Condition::Always);
    quiet.keep_previous = false;
    let result = h
        .store
        .write("work", quiet, Some("r1"), Driver::OwnTask)
        .await
        .unwrap();
    assert!(result.applied && result.previous.is_none());
    // A refused write always carries the entry that refused it.
    let mut refused = request("k", put("x"), Condition::Absent);
    refused.keep_previous = false;
    let result = h
        .store
        .write("work", refused, Some("r2"), Driver::OwnTask)
        .await
        .unwrap();
    assert_eq!(&result.previous.as_ref().unwrap().value[..], b"new");
}

#[tokio::test]
async fn a_retried_request_id_gets_the_first_answer() {
    let h = Harness::new();
    let run = |value: &'static str| {
        h.store.write(
            "actionTokens",
            request("t", put(value), Condition::Absent),
            Some("req-1"),
            Driver::OwnTask,
        )
    };
    let first = run("a").await.unwrap();
    let retry = run("b").await.unwrap();
    assert!(first.applied && retry.applied);
    assert_eq!(first.version, retry.version);
    assert_eq!(h.value("actionTokens", "t").as_deref(), Some("a"));
    // Without the id, the same request is a new one and finds the token taken.
    let fresh = h
        .store
        .write(
            "actionTokens",
            request("t", put("c"), Condition::Absent),
            None,
            Driver::OwnTask,
        )
        .await
        .unwrap();
    assert!(!fresh.applied);
}

#[tokio::test]
async fn a_retry_whose_kept_answer_was_lost_is_answered_from_the_state_it_made() {
    let mut h = Harness::new();
    let token = |value: &'static str| {
        let mut write = request("t", put(value), Condition::Absent);
        write.keep_previous = false;
        write
    };
    let first = h
        .store
        .write("sessions", token("a"), Some("req-1"), Driver::OwnTask)
        .await
        .unwrap();
    h.store
        .write(
            "sessions",
            request("gone", put("x"), Condition::Always),
            None,
            Driver::OwnTask,
        )
        .await
        .unwrap();
    let removal = request("gone", WriteOp::Remove, Condition::Present);
    h.store
        .write("sessions", removal.clone(), Some("req-2"), Driver::OwnTask)
        .await
        .unwrap();
    // The answers kept for retries are in memory only: a restart loses them.
    h.crash_and_restart();
    let retry = h
        .store
        .write("sessions", token("a"), Some("req-1"), Driver::OwnTask)
        .await
        .unwrap();
    assert!(retry.applied, "the retry must say its token was stored");
    assert_eq!(retry.version, first.version);
    // Another request for the token still finds it taken.
    let other = h
        .store
        .write("sessions", token("b"), Some("req-3"), Driver::OwnTask)
        .await
        .unwrap();
    assert!(!other.applied);
    // A removal answers with the removed entry, which is gone: it fails, saying so.
    let lost = h
        .store
        .write("sessions", removal, Some("req-2"), Driver::OwnTask)
        .await;
    assert!(
        matches!(&lost, Err(Error::Aborted(message)) if message.contains("already applied")),
        "{lost:?}"
    );
    // Once the idempotency window is over (the retry's answer is kept up to two), the
    // id is a new request's.
    let window = u64::try_from(h.config.store.idempotency_window.as_millis()).unwrap();
    h.time.advance_ms(2 * window + 1);
    let later = h
        .store
        .write("sessions", token("c"), Some("req-1"), Driver::OwnTask)
        .await
        .unwrap();
    assert!(!later.applied);
}

#[tokio::test]
async fn remove_by_tag_removes_exactly_the_tagged_entries() {
    let h = Harness::new();
    for (key, tags) in [
        ("s1", &["user=u1", "realm=r1"][..]),
        ("s2", &["user=u1", "realm=r2"]),
        ("s3", &["user=u2", "realm=r1"]),
    ] {
        h.write(
            "sessions",
            key,
            WriteOp::Put(new_value("v", 0, 0, tags)),
            Condition::Always,
        )
        .await;
    }
    assert_eq!(
        h.store.remove_by_tag("sessions", "user=u1").await.unwrap(),
        2
    );
    assert_eq!(h.value("sessions", "s1"), None);
    assert_eq!(h.value("sessions", "s2"), None);
    assert_eq!(h.value("sessions", "s3").as_deref(), Some("v"));
    let realm = h
        .store
        .page("sessions", None, 10, Some("realm=r1"))
        .unwrap();
    assert_eq!(realm.entries.len(), 1);
    assert_eq!(
        h.store
            .remove_by_tag("sessions", "user=nobody")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn clear_removes_everything_and_announces_it() {
    let h = Harness::new();
    let mut receiver = h.store.hub().subscribe();
    for i in 0..10 {
        h.put("work", &format!("k{i}"), "v").await;
    }
    assert_eq!(h.store.clear("work").await.unwrap(), 10);
    assert_eq!(h.store.size("work").unwrap(), 0);
    let kinds: Vec<_> = events(&mut receiver).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds.last(), Some(&EventKind::InvalidateAll));
    // The cache works normally afterwards.
    h.put("work", "k0", "again").await;
    assert_eq!(h.value("work", "k0").as_deref(), Some("again"));
}

#[tokio::test]
async fn put_all_writes_each_entry_and_is_idempotent_per_request_id() {
    let h = Harness::new();
    let entries = |v: &str| {
        (0..5)
            .map(|i| (Bytes::from(format!("k{i}")), new_value(v, 0, 0, &[])))
            .collect::<Vec<_>>()
    };
    let first = h
        .store
        .put_all("work", entries("a"), Some("batch"))
        .await
        .unwrap();
    let retry = h
        .store
        .put_all("work", entries("b"), Some("batch"))
        .await
        .unwrap();
    assert_eq!(first, retry);
    assert_eq!(h.value("work", "k3").as_deref(), Some("a"));
}

#[tokio::test]
async fn an_unknown_cache_is_named_in_the_error() {
    let h = Harness::new();
    let error = h.store.get("nope", &Bytes::from_static(b"k")).unwrap_err();
    assert_eq!(error.to_string(), "unknown cache \"nope\"");
}

#[tokio::test]
async fn acknowledged_writes_to_persistent_caches_survive_a_crash() {
    let mut h = Harness::new();
    let mut versions = Vec::new();
    for i in 0..50 {
        versions.push(
            h.put("sessions", &format!("s{i}"), &format!("v{i}"))
                .await
                .version,
        );
    }
    h.write("sessions", "s7", WriteOp::Remove, Condition::Present)
        .await;
    h.put("work", "w", "not persistent").await;
    h.crash_and_restart();
    for i in 0..50 {
        let expected = (i != 7).then(|| format!("v{i}"));
        assert_eq!(h.value("sessions", &format!("s{i}")), expected, "s{i}");
    }
    assert_eq!(h.value("work", "w"), None);
    let newest = *versions.iter().max().unwrap();
    assert!(h.put("sessions", "after", "x").await.version > newest);
    // The removed key's tombstone came back too: an old write can't revive it.
    let cache = h.store.cache("sessions").unwrap();
    assert!(
        cache
            .keyspace
            .read()
            .state_version(&Bytes::from_static(b"s7"))
            > versions[7]
    );
}

#[tokio::test]
async fn versions_continue_upwards_after_a_restart_with_the_clock_set_back() {
    let mut h = Harness::new();
    h.store.persist_high_water().await.unwrap();
    h.time.advance_ms(5_000);
    let before = h.put("work", "k", "v").await.version;
    // The restarted node's clock is five seconds behind; only in-memory caches were used.
    let time = ManualTimeSource::starting_at(T0);
    h.storage.crash();
    h.store = open(&h.config, &time, &h.storage);
    let after = h.put("work", "k", "v").await.version;
    assert!(after > before, "{after} <= {before}");
}

#[tokio::test]
async fn a_clear_of_a_persistent_cache_survives_a_restart() {
    let mut h = Harness::new();
    h.put("sessions", "s1", "v").await;
    h.store.clear("sessions").await.unwrap();
    h.crash_and_restart();
    assert_eq!(h.value("sessions", "s1"), None);
    assert_eq!(h.store.size("sessions").unwrap(), 0);
}

#[tokio::test]
async fn reads_of_persistent_max_idle_entries_are_stored_by_the_reaper() {
    let mut h = Harness::new();
    h.write(
        "sessions",
        "s",
        WriteOp::Put(new_value("v", 0, 10_000, &[])),
        Condition::Always,
    )
    .await;
    h.time.advance_ms(8_000);
    assert!(h.value("sessions", "s").is_some()); // last used: T0 + 8s
    reap_once(&h.store).await;
    h.store.persist_high_water().await.unwrap(); // a durable write after the touch
    h.crash_and_restart();
    h.time.advance_ms(5_000); // 13 s after the write, 5 s after the read
    assert_eq!(h.value("sessions", "s").as_deref(), Some("v"));
}

#[tokio::test]
async fn damaged_records_are_skipped_and_the_rest_is_served() {
    let mut h = Harness::new();
    h.put("sessions", "good", "v").await;
    h.storage
        .write(&[super::storage::StorageOp::Put {
            cache: Arc::from("sessions"),
            key: Bytes::from_static(b"bad"),
            record: Bytes::from_static(&[1, 0xff, 0xff]),
        }])
        .unwrap();
    h.storage.sync().unwrap();
    h.crash_and_restart();
    assert_eq!(h.value("sessions", "good").as_deref(), Some("v"));
    assert_eq!(h.value("sessions", "bad"), None);
}

/// Storage whose syncs wait until the test opens the gate.
#[derive(Debug, Default)]
struct GatedStorage {
    inner: MemoryStorage,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl GatedStorage {
    fn open_gate(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Storage for GatedStorage {
    fn scan(
        &self,
        cache: &str,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> super::storage::StorageResult<()> {
        self.inner.scan(cache, visit)
    }
    fn write(&self, ops: &[super::storage::StorageOp]) -> super::storage::StorageResult<()> {
        self.inner.write(ops)
    }
    fn sync(&self) -> super::storage::StorageResult<()> {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        self.inner.sync()
    }
    fn meta(&self, name: &str) -> super::storage::StorageResult<Option<Vec<u8>>> {
        self.inner.meta(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_write_is_acknowledged_only_once_durable_and_only_then_visible() {
    let storage = Arc::new(GatedStorage::default());
    let time = ManualTimeSource::starting_at(T0);
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let store = Store::open(&config(), time, Some(dyn_storage), Hub::new(16)).unwrap();
    // Opens the gate however the test ends, so a failure can't leave the storage thread
    // (joined when the store drops) blocked forever. Declared after the store: dropped first.
    struct OpenOnDrop(Arc<GatedStorage>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open_gate();
        }
    }
    let _open_on_drop = OpenOnDrop(storage.clone());
    let write = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(
                    "sessions",
                    request("s", put("v"), Condition::Always),
                    None,
                    Driver::OwnTask,
                )
                .await
        })
    };
    // The write has reached storage but the sync is held: no answer, nothing visible.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut count = 0;
        storage
            .inner
            .scan("sessions", &mut |_, _| count += 1)
            .unwrap();
        if count == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never reached storage"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!write.is_finished(), "acknowledged before durable");
    assert!(
        store
            .get("sessions", &Bytes::from_static(b"s"))
            .unwrap()
            .is_none(),
        "visible before durable"
    );
    storage.open_gate();
    let result = write.await.unwrap().unwrap();
    assert!(result.applied);
    assert!(
        store
            .get("sessions", &Bytes::from_static(b"s"))
            .unwrap()
            .is_some()
    );
}

/// A change as a primary would send it: `key` becomes `value` at `next`, replacing `prev`.
fn replicated(key: &str, value: &str, prev: u64, next: u64) -> super::mutation::Mutation {
    super::mutation::Mutation {
        key: Bytes::copy_from_slice(key.as_bytes()),
        prev,
        change: super::mutation::Change::Write(Arc::new(super::entry::Entry::new(
            Bytes::copy_from_slice(value.as_bytes()),
            next,
            Arc::from("site1"),
            T0,
            0,
            0,
            Box::new([]),
        ))),
        undoes: 0,
    }
}

#[tokio::test]
async fn a_batch_of_replicated_changes_answers_each_change_and_survives_a_crash() {
    use super::write::ReplicaOutcome;
    let mut replica = Harness::new();
    let v = |n: u64| ((T0 + n) << 12) + 1;
    // "stale" already holds something newer than the change sent for it.
    let cache = replica.store.cache("sessions").unwrap().clone();
    let newer = replicated("stale", "newer", 0, v(5));
    assert!(matches!(
        cache
            .apply_replicated(std::slice::from_ref(&newer))
            .await
            .unwrap()[..],
        [ReplicaOutcome::Applied]
    ));
    let again = replicated("again", "once", 0, v(1));
    cache
        .apply_replicated(std::slice::from_ref(&again))
        .await
        .unwrap();
    // "busy" is locked by a write of the replica's own.
    let held = cache.locks.try_lock(&Bytes::from_static(b"busy")).unwrap();

    let batch = [
        replicated("a", "1", 0, v(2)),
        replicated("stale", "older", 0, v(3)),
        again.clone(),
        replicated("busy", "x", 0, v(4)),
        replicated("b", "2", 0, v(6)),
    ];
    let outcomes = cache.apply_replicated(&batch).await.unwrap();
    drop(held);
    assert!(
        matches!(
            &outcomes[..],
            [
                ReplicaOutcome::Applied,
                ReplicaOutcome::Conflict(Some(current)),
                ReplicaOutcome::AlreadyApplied,
                ReplicaOutcome::Busy,
                ReplicaOutcome::Applied,
            ] if current.version() == v(5)
        ),
        "{outcomes:?}"
    );

    // What was taken was made durable before the answer.
    drop(cache);
    replica.crash_and_restart();
    assert_eq!(replica.value("sessions", "a").as_deref(), Some("1"));
    assert_eq!(replica.value("sessions", "b").as_deref(), Some("2"));
    assert_eq!(replica.value("sessions", "stale").as_deref(), Some("newer"));
    assert_eq!(replica.value("sessions", "busy"), None);
}

#[tokio::test]
async fn a_kept_answer_is_given_back_only_while_the_key_holds_what_its_write_made() {
    use super::replication::ReceivedChange;
    use super::write::ReplicaOutcome;
    let h = Harness::new();
    let answer = Arc::new(WriteResult {
        applied: true,
        version: 10,
        previous: None,
    });
    let change = |value: &str, prev, next| ReceivedChange {
        mutation: replicated("t", value, prev, next),
        answer: Some(("req-1".to_string(), answer.clone())),
    };
    let taken = h
        .store
        .apply_replicated("work", vec![change("a", 0, 10)])
        .await
        .unwrap();
    assert!(matches!(taken[0].outcome, ReplicaOutcome::Applied));
    // The same write sent again from an older state (its first primary failed): refused,
    // with the answer it got, since the key still holds it.
    let again = h
        .store
        .apply_replicated("work", vec![change("a", 0, 11)])
        .await
        .unwrap();
    assert!(
        again[0]
            .recorded
            .as_ref()
            .is_some_and(|kept| kept.version == 10)
    );
    // Once something else replaced it (a reconciliation undoing it), the answer is void.
    h.store
        .apply_replicated(
            "work",
            vec![ReceivedChange {
                mutation: replicated("t", "b", 10, 20),
                answer: None,
            }],
        )
        .await
        .unwrap();
    let stale = h
        .store
        .apply_replicated("work", vec![change("a", 0, 12)])
        .await
        .unwrap();
    assert!(matches!(stale[0].outcome, ReplicaOutcome::Conflict(_)));
    assert!(stale[0].recorded.is_none());
}
