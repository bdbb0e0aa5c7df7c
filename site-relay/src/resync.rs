//! Resync with a peer site: compare, then move only what differs.
//!
//! For each cache backed up to the peer:
//! 1. both sites' digests of every key range (kept up to date by the store, tombstones
//!    included) are compared; equal ranges are done;
//! 2. for the ranges that differ, both sites list their keys with versions; a key whose
//!    versions are equal is done;
//! 3. each differing key's newer state (entry or tombstone, so deletes propagate) goes to
//!    the site holding the older one, where it is merged by the cache's merge policy on
//!    the key's primary, never waiting for a lock; a write made meanwhile has a newer
//!    version and is never overwritten by the older state;
//! 4. a key whose receiving site kept its own state (a merge policy that prefers the
//!    older state gives it a newer version) goes back the other way once, so both sites
//!    end with the state the policy chose.
//!
//! Then the peer is marked online (a bring-online) and the keys recorded for it while it
//! was offline are forgotten. A resync runs on the site's decider; it stops when the
//! peer's state changes under it (cancelled, taken offline) or the decider changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sitegrid_proto::{Backoff, v1};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::LocalSite;
use crate::link::merge_all;
use crate::outbox::now_ms;
use crate::peer::{Failure, PeerSite};
use crate::relay::Relay;
use crate::state::Mode;

/// Key ranges whose keys are listed in one call.
const RANGES_PER_CALL: usize = 16;
/// Keys fetched or sent in one call.
const KEYS_PER_CALL: usize = 256;
/// How long one resync call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits before a failed call or busy keys are tried again; a resync gives up (and
/// leaves the peer as it was) once they run out.
const RETRY: Backoff = Backoff {
    initial_delay: Duration::from_millis(20),
    max_delay: Duration::from_secs(2),
    max_attempts: 20,
};

/// How a resync goes (or went).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Whether it is running now.
    pub running: bool,
    /// Only compared: nothing moved.
    pub diff_only: bool,
    /// Key ranges compared so far, and in all.
    pub ranges_done: u64,
    /// In all (every cache).
    pub ranges_total: u64,
    /// Keys whose state differed between the sites.
    pub keys_differing: u64,
    /// Entries and tombstones moved either way.
    pub keys_moved: u64,
    /// Bytes of those.
    pub bytes_moved: u64,
    /// Entries the receiving site's merge kept its own state for.
    pub conflicts: u64,
    /// When it started and ended (Unix ms).
    pub started_ms: u64,
    /// 0 while running.
    pub ended_ms: u64,
    /// Why it stopped early.
    pub error: Option<String>,
}

/// The resyncs of one node, by peer.
#[derive(Debug, Default)]
pub(crate) struct Resyncs {
    running: Mutex<HashMap<String, Running>>,
    /// When a resync with each peer last started here, or when this node first asked
    /// whether a consistency check is due.
    started: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug)]
struct Running {
    progress: Arc<Mutex<Progress>>,
    stop: watch::Sender<bool>,
    /// The state epoch it runs for (0: a consistency check of an online peer).
    epoch: u64,
}

impl Resyncs {
    /// Starts a resync with peer `index` unless one runs already for `epoch`.
    pub(crate) fn ensure_running<L: LocalSite>(
        &self,
        relay: &Relay,
        index: usize,
        local: &Arc<L>,
        epoch: u64,
    ) {
        let peer = relay.inner.peers[index].name.to_string();
        let mut running = self.running.lock();
        if let Some(current) = running.get(&peer)
            && current.progress.lock().running
            && current.epoch == epoch
        {
            return;
        }
        if let Some(previous) = running.remove(&peer) {
            let _ = previous.stop.send(true);
        }
        self.started.lock().insert(peer.clone(), Instant::now());
        let (stop, stopped) = watch::channel(false);
        let job = Job::new(relay, index, local, epoch, false, stopped);
        running.insert(
            peer,
            Running {
                progress: job.progress.clone(),
                stop,
                epoch,
            },
        );
        tokio::spawn(job.run());
    }

    /// Compares this site with peer `index` without moving anything, and waits for the
    /// result.
    pub(crate) async fn diff<L: LocalSite>(
        relay: &Relay,
        index: usize,
        local: &Arc<L>,
    ) -> Progress {
        let job = Job::new(relay, index, local, 0, true, watch::channel(false).1);
        let progress = job.progress.clone();
        job.run().await;
        progress.lock().clone()
    }

    /// Whether a scheduled consistency check of `peer` is due: none runs, and none
    /// started here within `interval` (the first is due one interval after this node
    /// first asks).
    pub(crate) fn check_due(&self, peer: &str, interval: Duration) -> bool {
        if self
            .running
            .lock()
            .get(peer)
            .is_some_and(|r| r.progress.lock().running)
        {
            return false;
        }
        let mut started = self.started.lock();
        let last = started.entry(peer.to_string()).or_insert_with(Instant::now);
        last.elapsed() >= interval
    }

    /// Stops the resync with `peer`, if one runs.
    pub(crate) fn stop(&self, peer: &str) {
        if let Some(running) = self.running.lock().get(peer) {
            let _ = running.stop.send(true);
        }
    }

    /// Stops every resync (this node stopped deciding, or is stopping).
    pub(crate) fn stop_all(&self) {
        for running in self.running.lock().values() {
            let _ = running.stop.send(true);
        }
    }

    /// The last or running resync with `peer` on this node.
    pub(crate) fn progress(&self, peer: &str) -> Option<Progress> {
        let running = self.running.lock();
        Some(running.get(peer)?.progress.lock().clone())
    }
}

/// One resync.
struct Job<L> {
    relay: Relay,
    index: usize,
    local: Arc<L>,
    epoch: u64,
    diff_only: bool,
    progress: Arc<Mutex<Progress>>,
    stopped: watch::Receiver<bool>,
}

impl<L: LocalSite> Job<L> {
    /// A resync with peer `index` for state `epoch` (0: a check of an online peer), that
    /// stops when `stopped` turns true.
    fn new(
        relay: &Relay,
        index: usize,
        local: &Arc<L>,
        epoch: u64,
        diff_only: bool,
        stopped: watch::Receiver<bool>,
    ) -> Job<L> {
        Job {
            relay: relay.clone(),
            index,
            local: local.clone(),
            epoch,
            diff_only,
            progress: Arc::new(Mutex::new(Progress {
                running: true,
                diff_only,
                started_ms: now_ms(),
                ..Progress::default()
            })),
            stopped,
        }
    }

    fn peer(&self) -> &PeerSite {
        &self.relay.inner.peers[self.index]
    }

    async fn run(self) {
        let name = self.peer().name.to_string();
        info!(site = %name, diff_only = self.diff_only, "resync started");
        // Keys recorded while the peer was offline, up to now: the resync covers them.
        let recorded = self
            .relay
            .inner
            .offline_keys
            .as_ref()
            .and_then(|keys| keys.list_at(&name).ok())
            .unwrap_or_default();
        let caches = self.relay.caches_backed_up_to(&name);
        let ranges_total = caches
            .iter()
            .map(|cache| {
                self.local
                    .range_digests(cache)
                    .map_or(0, |d| d.len() as u64)
            })
            .sum();
        self.update(|p| p.ranges_total = ranges_total);
        let mut result = Ok(());
        for cache in &caches {
            result = self.cache(cache).await;
            if result.is_err() {
                break;
            }
        }
        let states = &self.relay.inner.states;
        if result.is_ok() && !self.diff_only {
            if let Some(keys) = &self.relay.inner.offline_keys {
                for key in &recorded {
                    let _ = keys.settle(key);
                }
            }
            let state = states.get(&name);
            if self.epoch != 0 && state.mode == Mode::Resyncing && state.epoch == self.epoch {
                let moved = self.progress.lock().keys_moved;
                states.change(&name, &format!("resync done, {moved} keys moved"), |s| {
                    s.mode = Mode::Online
                });
            }
        }
        self.update(|p| {
            p.running = false;
            p.ended_ms = now_ms();
        });
        let mut progress = self.progress.lock();
        match result {
            Ok(()) => info!(site = %name, moved = progress.keys_moved,
                differing = progress.keys_differing, conflicts = progress.conflicts, "resync done"),
            Err(error) => {
                warn!(site = %name, %error, "resync stopped");
                progress.error = Some(error);
            }
        }
    }

    /// Whether the resync must stop: told to, or the peer's state moved on.
    fn check(&self) -> Result<(), String> {
        if *self.stopped.borrow() {
            return Err("stopped".into());
        }
        if self.epoch != 0 {
            let state = self.relay.inner.states.get(&self.peer().name);
            if state.epoch != self.epoch || state.mode != Mode::Resyncing {
                return Err(format!(
                    "the peer's state changed to {} (epoch {})",
                    state.mode.as_str(),
                    state.epoch
                ));
            }
        }
        Ok(())
    }

    async fn cache(&self, cache: &str) -> Result<(), String> {
        self.check()?;
        let site = self.relay.inner.site.clone();
        let theirs = self
            .call("digests", |peer| {
                peer.range_digests(
                    v1::RangeDigestsRequest {
                        from_site: site.clone(),
                        cache: cache.to_string(),
                    },
                    CALL_TIMEOUT,
                )
            })
            .await?;
        let ours = self
            .local
            .range_digests(cache)
            .map_err(|s| s.message().to_string())?;
        let differing: Vec<u32> = (0..ours.len())
            .filter(|r| theirs.get(*r) != Some(&ours[*r]))
            .map(|r| r as u32)
            .collect();
        let metric_site = self.peer().name.to_string();
        metrics::gauge!("sitegrid_resync_differing_ranges", "site" => metric_site, "cache" => cache.to_string())
            .set(differing.len() as f64);
        self.update(|p| p.ranges_done += (ours.len() - differing.len()) as u64);
        for ranges in differing.chunks(RANGES_PER_CALL) {
            self.check()?;
            let their_keys = self
                .call("key versions", |peer| {
                    peer.range_versions(
                        v1::RangeVersionsRequest {
                            from_site: site.clone(),
                            cache: cache.to_string(),
                            ranges: ranges.to_vec(),
                        },
                        CALL_TIMEOUT,
                    )
                })
                .await?;
            let our_keys = self
                .local
                .range_versions(cache, ranges)
                .map_err(|s| s.message().to_string())?;
            let (pull, push) = compare(our_keys, their_keys);
            self.update(|p| p.keys_differing += (pull.len() + push.len()) as u64);
            if !self.diff_only {
                let (mut kept_here, mut kept_there) = (Vec::new(), Vec::new());
                for keys in pull.chunks(KEYS_PER_CALL) {
                    kept_here.extend(self.pull(cache, keys).await?);
                }
                for keys in push.chunks(KEYS_PER_CALL) {
                    kept_there.extend(self.push(cache, keys).await?);
                }
                // A side whose merge policy kept its own, older state over the other's
                // gave it a newer version: it goes back, so both sites end alike.
                for keys in kept_here.chunks(KEYS_PER_CALL) {
                    self.push(cache, keys).await?;
                }
                for keys in kept_there.chunks(KEYS_PER_CALL) {
                    self.pull(cache, keys).await?;
                }
            }
            self.update(|p| p.ranges_done += ranges.len() as u64);
        }
        Ok(())
    }

    /// Takes the peer's state of `keys` (newer than this site's) and merges it here;
    /// answers the keys whose state here the merge kept.
    async fn pull(&self, cache: &str, keys: &[Bytes]) -> Result<Vec<Bytes>, String> {
        let site = self.relay.inner.site.clone();
        let name = self.peer().name.to_string();
        let theirs = self
            .call("fetch", |peer| {
                peer.fetch_keys(
                    v1::FetchKeysRequest {
                        from_site: site.clone(),
                        cache: cache.to_string(),
                        keys: keys.to_vec(),
                    },
                    CALL_TIMEOUT,
                )
            })
            .await?;
        self.merge(theirs, "keys stayed busy here", |pending| async {
            let changes = pending
                .into_iter()
                .map(|mutation| (cache.to_string(), mutation))
                .collect();
            merge_all(&*self.local, &name, changes, false)
                .await
                .map_err(|s| s.message().to_string())
        })
        .await
    }

    /// Sends this site's state of `keys` (newer than the peer's) to the peer; answers
    /// the keys whose state there the peer's merge kept.
    async fn push(&self, cache: &str, keys: &[Bytes]) -> Result<Vec<Bytes>, String> {
        let ours = self
            .local
            .fetch_keys(cache, keys)
            .map_err(|s| s.message().to_string())?;
        self.merge(ours, "keys stayed busy at the peer site", |pending| {
            let request = v1::ApplyAsyncRequest {
                from_site: self.relay.inner.site.clone(),
                changes: pending
                    .into_iter()
                    .map(|mutation| v1::AsyncChange {
                        cache: cache.to_string(),
                        mutation: Some(mutation),
                    })
                    .collect(),
                forwarded: false,
            };
            self.call("send", move |peer| {
                peer.apply_async(request.clone(), CALL_TIMEOUT)
            })
        })
        .await
    }

    /// Merges `pending` on one side with `merge` (results in the same order) until no key
    /// is busy, counting what moved; answers the keys whose receiving side kept its own
    /// state. `busy_why` is the error once the tries run out.
    async fn merge<Fut>(
        &self,
        mut pending: Vec<v1::ReplicatedMutation>,
        busy_why: &str,
        merge: impl Fn(Vec<v1::ReplicatedMutation>) -> Fut,
    ) -> Result<Vec<Bytes>, String>
    where
        Fut: Future<Output = Result<Vec<v1::AsyncResult>, String>>,
    {
        let mut kept = Vec::new();
        for attempt in 0.. {
            let results = merge(pending.clone()).await?;
            let mut busy = Vec::new();
            let mut moved = Moved::default();
            for (mutation, result) in pending.into_iter().zip(results) {
                let conflict = match result {
                    v1::AsyncResult::Taken => false,
                    v1::AsyncResult::Kept => true,
                    v1::AsyncResult::Busy | v1::AsyncResult::Unspecified => {
                        busy.push(mutation);
                        continue;
                    }
                };
                moved.keys += 1;
                moved.bytes += (mutation.key.len() + mutation.record.len()) as u64;
                if conflict {
                    moved.conflicts += 1;
                    kept.push(mutation.key);
                }
            }
            self.count(moved);
            if busy.is_empty() {
                break;
            }
            self.wait(attempt, busy_why).await?;
            pending = busy;
        }
        Ok(kept)
    }

    /// Counts keys moved by one merge.
    fn count(&self, moved: Moved) {
        let site = self.peer().name.to_string();
        metrics::counter!("sitegrid_resync_keys_moved_total", "site" => site.clone())
            .increment(moved.keys);
        metrics::counter!("sitegrid_resync_bytes_moved_total", "site" => site.clone())
            .increment(moved.bytes);
        metrics::counter!("sitegrid_resync_conflicts_total", "site" => site)
            .increment(moved.conflicts);
        self.update(|p| {
            p.keys_moved += moved.keys;
            p.bytes_moved += moved.bytes;
            p.conflicts += moved.conflicts;
        });
    }

    /// Changes the progress with `change` and shows it in the metrics: whether a resync
    /// runs, its share of key ranges compared, and the keys found differing so far (by
    /// the last comparison, once it ended).
    fn update(&self, change: impl FnOnce(&mut Progress)) {
        let (running, done, differing) = {
            let mut progress = self.progress.lock();
            change(&mut progress);
            let done = if progress.ranges_total == 0 {
                1.0
            } else {
                progress.ranges_done as f64 / progress.ranges_total as f64
            };
            (progress.running, done, progress.keys_differing)
        };
        let site = self.peer().name.to_string();
        if !self.diff_only {
            metrics::gauge!("sitegrid_resync_running", "site" => site.clone())
                .set(f64::from(u8::from(running)));
            metrics::gauge!("sitegrid_resync_progress_ratio", "site" => site.clone()).set(done);
        }
        if !running {
            metrics::gauge!("sitegrid_site_divergent_keys", "site" => site).set(differing as f64);
        }
    }

    /// Makes a call to the peer, trying again after failures.
    async fn call<'a, T, Fut>(
        &'a self,
        what: &str,
        call: impl Fn(&'a PeerSite) -> Fut,
    ) -> Result<T, String>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            self.check()?;
            match call(self.peer()).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Refused(why)) => return Err(format!("{what}: {why}")),
                Err(failure) => {
                    self.wait(attempt, &format!("{what}: {failure}")).await?;
                    attempt += 1;
                }
            }
        }
    }

    /// Waits before try `attempt`; fails with `why` once the tries run out.
    async fn wait(&self, attempt: u32, why: &str) -> Result<(), String> {
        let Some(delay) = RETRY.delay(attempt) else {
            return Err(why.to_string());
        };
        tokio::time::sleep(delay).await;
        self.check()
    }
}

/// What one merge moved.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    /// Keys (entries and tombstones).
    keys: u64,
    /// Their bytes.
    bytes: u64,
    /// Of those, keys whose receiving side kept its own state.
    conflicts: u64,
}

/// The keys to take from the peer (its version is newer, or only it has the key) and to
/// send to it (the other way round).
fn compare(ours: Vec<v1::KeyVersion>, theirs: Vec<v1::KeyVersion>) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut mine: HashMap<Bytes, u64> = ours.into_iter().map(|k| (k.key, k.version)).collect();
    let mut pull = Vec::new();
    for their in theirs {
        match mine.remove(&their.key) {
            Some(version) if version == their.version => {}
            Some(version) if version > their.version => {
                mine.insert(their.key, version);
            }
            _ => pull.push(their.key),
        }
    }
    let push = mine.into_keys().collect();
    (pull, push)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, version: u64) -> v1::KeyVersion {
        v1::KeyVersion {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version,
        }
    }

    #[test]
    fn only_differing_keys_move_and_each_one_way() {
        let ours = vec![
            kv("same", 5),
            kv("ours-newer", 9),
            kv("only-ours", 3),
            kv("theirs-newer", 2),
        ];
        let theirs = vec![
            kv("same", 5),
            kv("ours-newer", 7),
            kv("theirs-newer", 4),
            kv("only-theirs", 1),
        ];
        let (mut pull, mut push) = compare(ours, theirs);
        pull.sort();
        push.sort();
        assert_eq!(
            pull,
            [Bytes::from("only-theirs"), Bytes::from("theirs-newer")]
        );
        assert_eq!(push, [Bytes::from("only-ours"), Bytes::from("ours-newer")]);
    }
}
