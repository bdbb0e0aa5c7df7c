//! The sending side: sync backups of a primary's writes to peer sites.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, stream};
use parking_lot::Mutex;
use sitegrid_config::{BackupConfig, Config, FailurePolicy, SiteConfig, Strategy};
use sitegrid_proto::tls::ClientTls;
use sitegrid_proto::{Backoff, v1};
use tokio::sync::watch;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::disk::Disk;
use crate::health::Health;
use crate::outbox::{self, Outbox, Pending};
use crate::peer::{Failure, PeerSite};
use crate::peer_keys::{PeerKey, PeerKeys};
use crate::resync::Resyncs;
use crate::state::{Mode, SiteStates};
use crate::witness::WitnessLink;
use crate::{LocalSite, RelayError};

/// A `warn` policy logs a peer's failures at most once per this long.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// How often keys in doubt at a peer site are tried again.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a peer site may take to answer a heartbeat before reconciling is put off.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Keys reconciled at once.
const RECONCILE_CONCURRENCY: usize = 16;

/// Async batches in flight to one peer site at once: enough to cover a long round trip
/// with a batch every [`ASYNC_LINGER`].
const ASYNC_WINDOW: usize = 128;

/// While batches are in flight, new changes wait this long to go out together.
const ASYNC_LINGER: Duration = Duration::from_millis(1);

/// How long a peer site may take to answer one async batch.
const ASYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits between async batches that failed, or whose keys were all busy.
const ASYNC_RETRY: Backoff = Backoff {
    initial_delay: Duration::from_millis(10),
    max_delay: Duration::from_secs(2),
    max_attempts: u32::MAX,
};

/// What the sync peer sites of a cache did with a write, all answers summed up.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// Every sync peer site took it, or the ones that failed have a `warn` or `ignore`
    /// policy (the key is recorded for them).
    Done,
    /// A peer site holds something newer than the write's `prev`: the write must not
    /// happen; `current` is the peer's slot as a stored record (empty: only a clear).
    Conflict {
        /// The peer site.
        site: String,
        /// Its state of the key.
        current: Bytes,
        /// The answer it keeps for the write's request id: this very write already
        /// happened there, sent by a primary of this site that failed before it answered.
        recorded: Option<v1::WriteAnswer>,
        /// The write's version is void there: a write in doubt its site undid.
        voided: bool,
    },
    /// A peer site was busy with a write of its own to the key: try again.
    Busy,
    /// A peer site with the `fail` policy did not answer: the write must fail. The peer
    /// may have applied it (the key is recorded as in doubt).
    Unavailable {
        /// The peer site.
        site: String,
        /// What happened, for the client's message.
        reason: String,
    },
}

/// Backups to the peer sites of a node's config. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) site: String,
    pub(crate) peers: Vec<PeerSite>,
    /// Per peer (same order): its config.
    pub(crate) configs: Vec<SiteConfig>,
    /// Per peer: how it has been answering this node.
    pub(crate) health: Vec<Health>,
    /// This site's state of each peer, agreed by the site.
    pub(crate) states: SiteStates,
    /// Keys written while a peer was offline or resyncing, per (site, cache).
    pub(crate) offline_keys: Option<PeerKeys>,
    /// Resyncs this node runs.
    pub(crate) resyncs: Resyncs,
    /// How often peers are asked whether they answer.
    pub(crate) heartbeat_interval: Duration,
    /// How often the decider checks an online peer's consistency (`None`: never).
    pub(crate) consistency_check_interval: Option<Duration>,
    /// This site may take a peer offline without a witness.
    pub(crate) prefer: bool,
    /// The witness that grants taking a peer offline, if configured.
    pub(crate) witness: Option<WitnessLink>,
    /// Per cache: the peers it has sync backups to (index in `peers`) and how.
    pub(crate) sync: HashMap<String, Vec<(usize, BackupConfig)>>,
    /// Per cache: the peers it has async backups to and how.
    pub(crate) asynchronous: HashMap<String, Vec<(usize, BackupConfig)>>,
    /// Per peer, its outbox if some cache has async backups to it.
    pub(crate) outboxes: Vec<Option<Outbox>>,
    /// Changes sent to a peer in one async batch.
    async_batch: usize,
    /// Keys whose backup got no answer, per (site, cache): the version sent.
    pub(crate) in_doubt: Option<PeerKeys>,
    /// When each peer's failures were last logged under `warn`.
    warned: Mutex<HashMap<Arc<str>, Instant>>,
}

impl Relay {
    /// The relay of a node configured by `config`; with `tls`, peer sites are called
    /// over TLS and must present a certificate naming their site.
    pub fn new(config: &Config, tls: Option<&ClientTls>) -> Result<Relay, RelayError> {
        let max_message_bytes = config.limits.max_message_bytes();
        let peers = config
            .sites
            .iter()
            .map(|site| PeerSite::new(site, max_message_bytes, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sync: HashMap<String, Vec<(usize, BackupConfig)>> = HashMap::new();
        let mut asynchronous: HashMap<String, Vec<(usize, BackupConfig)>> = HashMap::new();
        for (cache, cache_config) in &config.caches {
            for (index, peer) in peers.iter().enumerate() {
                let Some(backup) = cache_config.backup_for(cache, &peer.name) else {
                    continue;
                };
                let targets = match backup.strategy {
                    Strategy::Sync => sync.entry(cache.clone()).or_default(),
                    Strategy::Async => asynchronous.entry(cache.clone()).or_default(),
                };
                targets.push((index, backup));
            }
        }
        // The relay's database, when there are peer sites at all.
        let disk = if peers.is_empty() {
            None
        } else {
            Some(Disk::open(&config.node.data_dir.join("relay"))?)
        };
        let outboxes = open_outboxes(config, disk.as_ref(), &peers, &asynchronous)?;
        let in_doubt = disk
            .as_ref()
            .map(|disk| PeerKeys::open(disk, "in-doubt"))
            .transpose()?;
        let offline_keys = disk
            .as_ref()
            .map(|disk| PeerKeys::open(disk, "written-while-offline"))
            .transpose()?;
        let names: Vec<String> = config.sites.iter().map(|s| s.name.clone()).collect();
        let witness = config
            .witness
            .as_ref()
            .and_then(|w| w.endpoint.as_deref())
            .map(|endpoint| WitnessLink::new(endpoint, &config.node.site, peers.len(), tls))
            .transpose()?;
        let states = SiteStates::open(
            &config.node.name,
            &names,
            disk.as_ref()
                .map(|disk| disk.tree("site-state"))
                .transpose()?,
        )?;
        Ok(Relay {
            inner: Arc::new(Inner {
                site: config.node.site.clone(),
                health: peers.iter().map(|_| Health::default()).collect(),
                configs: config.sites.clone(),
                states,
                offline_keys,
                resyncs: Resyncs::default(),
                heartbeat_interval: config.relay.heartbeat_interval,
                consistency_check_interval: Some(config.relay.consistency_check_interval)
                    .filter(|interval| !interval.is_zero()),
                prefer: config.relay.prefer,
                witness,
                peers,
                sync,
                asynchronous,
                outboxes,
                async_batch: config.relay.async_batch,
                in_doubt,
                warned: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether writes to `cache` are backed up synchronously to some peer site.
    pub fn has_sync_backups(&self, cache: &str) -> bool {
        self.inner.sync.contains_key(cache)
    }

    /// Sends a primary's write to every sync peer site of `cache` in parallel and sums up
    /// their answers. `next` is the write's version (inside `mutation`'s record).
    pub async fn backup(
        &self,
        cache: &str,
        mutation: v1::ReplicatedMutation,
        next: u64,
    ) -> SyncOutcome {
        let Some(targets) = self.inner.sync.get(cache) else {
            return SyncOutcome::Done;
        };
        let key = mutation.key.clone();
        let item = v1::BackupItem {
            cache: cache.to_string(),
            mutation: Some(mutation),
        };
        let calls = targets.iter().map(|(index, backup)| {
            let index = *index;
            let peer = &self.inner.peers[index];
            let state = self.inner.states.get(&peer.name);
            let item = item.clone();
            async move {
                if let Some(why) = &state.fenced {
                    return (index, backup, state.mode, Err(Failure::Fenced(why.clone())));
                }
                if state.mode == Mode::Offline {
                    return (index, backup, state.mode, Err(Failure::Offline));
                }
                let health = &self.inner.health[index];
                if let Some(failures) = health.is_down(&self.inner.configs[index].take_offline) {
                    return (index, backup, state.mode, Err(Failure::Down(failures)));
                }
                let started = Instant::now();
                let answer = peer.backup(item, &self.inner.site, backup.timeout).await;
                metrics::histogram!(
                    "sitegrid_backup_duration_seconds",
                    "site" => peer.name.to_string(),
                    "cache" => cache.to_string()
                )
                .record(started.elapsed().as_secs_f64());
                match &answer {
                    Ok(_) | Err(Failure::Refused(_)) => health.backed_up(),
                    Err(_) => health.failed(),
                }
                (index, backup, state.mode, answer)
            }
        });
        let answers = futures::future::join_all(calls).await;
        let mut outcome = SyncOutcome::Done;
        for (index, backup, mode, answer) in answers {
            let peer = &self.inner.peers[index];
            let this = match (answer, mode) {
                (Ok(applied), _) => self.judge(peer, cache, applied),
                (Err(Failure::Fenced(why)), _) => SyncOutcome::Unavailable {
                    site: peer.name.to_string(),
                    reason: why,
                },
                // Not online: the write does not wait for the peer; its resync brings the
                // key over.
                (Err(failure), Mode::Offline | Mode::Resyncing) => {
                    debug!(site = %peer.name, cache, %failure, "recorded for the peer's resync");
                    self.record_offline(&peer.name, cache, &key, next).await;
                    SyncOutcome::Done
                }
                // The peer answered and did not take the write (it holds this site
                // offline, or cannot take it): the policy is for a peer that cannot be
                // reached, so the write fails under every policy, and is not in doubt.
                (Err(Failure::Refused(why)), Mode::Online) => {
                    count(peer, cache, "refused");
                    SyncOutcome::Unavailable {
                        site: peer.name.to_string(),
                        reason: format!("refused: {why}"),
                    }
                }
                (Err(failure), Mode::Online) => {
                    self.failed(peer, cache, backup, &key, next, failure).await
                }
            };
            outcome = worse(outcome, this);
        }
        outcome
    }

    /// Records that `key` of `cache` was written at `next` while `site` was not online.
    pub(crate) async fn record_offline(&self, site: &str, cache: &str, key: &[u8], next: u64) {
        let Some(keys) = &self.inner.offline_keys else {
            return;
        };
        if let Err(error) = keys.record(site, cache, key, next).await {
            tracing::error!(site, cache, %error, "cannot record a key written while the peer site was offline");
        }
    }

    /// This site's state of each peer site.
    pub fn states(&self) -> &SiteStates {
        &self.inner.states
    }

    /// What one peer's answer means.
    fn judge(&self, peer: &PeerSite, cache: &str, applied: v1::ApplyOutcome) -> SyncOutcome {
        let (label, outcome) = match applied.result() {
            v1::ApplyResult::Applied | v1::ApplyResult::AlreadyApplied => {
                ("applied", SyncOutcome::Done)
            }
            v1::ApplyResult::Conflict => (
                "conflict",
                SyncOutcome::Conflict {
                    site: peer.name.to_string(),
                    current: applied.current,
                    recorded: applied.recorded_answer,
                    voided: applied.voided,
                },
            ),
            v1::ApplyResult::Busy | v1::ApplyResult::Unspecified => ("busy", SyncOutcome::Busy),
        };
        count(peer, cache, label);
        outcome
    }

    /// A peer that did not answer: the key is in doubt there; the cache's policy says
    /// whether the write fails.
    async fn failed(
        &self,
        peer: &PeerSite,
        cache: &str,
        backup: &BackupConfig,
        key: &Bytes,
        next: u64,
        failure: Failure,
    ) -> SyncOutcome {
        count(peer, cache, "failed");
        if let Some(in_doubt) = &self.inner.in_doubt {
            if let Err(error) = in_doubt.record(&peer.name, cache, key, next).await {
                tracing::error!(site = %peer.name, cache, %error, "cannot record a key in doubt");
            }
            metrics::gauge!("sitegrid_backup_in_doubt_keys", "site" => peer.name.to_string())
                .set(in_doubt.count(&peer.name) as f64);
        }
        match backup.failure_policy {
            FailurePolicy::Fail => SyncOutcome::Unavailable {
                site: peer.name.to_string(),
                reason: failure.to_string(),
            },
            FailurePolicy::Warn => {
                self.warn_at_most_every_interval(peer, &format!("{cache}: {failure}"));
                SyncOutcome::Done
            }
            FailurePolicy::Ignore => SyncOutcome::Done,
        }
    }

    /// Tells every online peer site that backs `cache` up (sync or async) which max-idle
    /// entries were read in this site, so a session used here does not expire there.
    /// Best effort: a peer that misses it learns of the next reads.
    pub async fn share_touches(&self, cache: &str, touched: Vec<v1::Touched>) {
        let mut peers: Vec<(usize, Duration)> = self
            .inner
            .sync
            .get(cache)
            .into_iter()
            .chain(self.inner.asynchronous.get(cache))
            .flatten()
            .map(|(index, backup)| (*index, backup.timeout))
            .collect();
        peers.sort_by_key(|(index, _)| *index);
        peers.dedup_by_key(|(index, _)| *index);
        let request = v1::SiteLinkTouchRequest {
            cache: cache.to_string(),
            touched,
            from_site: self.inner.site.clone(),
        };
        let calls = peers.into_iter().map(|(index, timeout)| {
            let peer = &self.inner.peers[index];
            let request = request.clone();
            async move {
                if self.inner.states.get(&peer.name).mode != Mode::Online {
                    return;
                }
                if let Err(failure) = peer.touch(request, timeout).await {
                    debug!(site = %peer.name, ?failure, "reads not shared");
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    /// Whether writes to `cache` are backed up asynchronously to some peer site.
    pub fn has_async_backups(&self, cache: &str) -> bool {
        self.inner.asynchronous.contains_key(cache)
    }

    /// A peer site whose outbox for `cache` is full and whose policy is `fail`: a write
    /// must fail rather than be applied without it.
    pub fn full_outbox(&self, cache: &str) -> Option<String> {
        self.inner
            .asynchronous
            .get(cache)?
            .iter()
            .find_map(|(index, backup)| {
                let full = self.inner.outboxes[*index]
                    .as_ref()
                    .is_some_and(Outbox::is_full);
                (full && backup.failure_policy == FailurePolicy::Fail)
                    .then(|| self.inner.peers[*index].name.to_string())
            })
    }

    /// Queues a write applied in this site for the async peer sites of `cache`, durably.
    /// A full outbox takes no more keys; they are recorded for the next resync.
    pub async fn enqueue(
        &self,
        cache: &str,
        mutation: &v1::ReplicatedMutation,
        next: u64,
    ) -> Result<(), RelayError> {
        let Some(targets) = self.inner.asynchronous.get(cache) else {
            return Ok(());
        };
        for (index, _) in targets {
            let Some(outbox) = &self.inner.outboxes[*index] else {
                continue;
            };
            let site = self.inner.peers[*index].name.to_string();
            if outbox.is_full() {
                metrics::counter!("sitegrid_outbox_overflow_total", "site" => site.clone())
                    .increment(1);
                self.record_offline(&site, cache, &mutation.key, next).await;
                continue;
            }
            outbox.push(cache, mutation).await?;
            metrics::gauge!("sitegrid_outbox_keys", "site" => site).set(outbox.len() as f64);
        }
        Ok(())
    }

    /// Sends each peer site's outbox in batches, as long as it has changes, until
    /// `stopped` turns true; what is not sent stays on disk for the next start.
    pub async fn send_async(self, stopped: watch::Receiver<bool>) {
        let senders = self
            .inner
            .outboxes
            .iter()
            .enumerate()
            .filter_map(|(index, outbox)| Some((index, outbox.as_ref()?)))
            .map(|(index, outbox)| self.drain(index, outbox, stopped.clone()));
        futures::future::join_all(senders).await;
    }

    /// Sends `outbox` to peer `index`: up to [`ASYNC_WINDOW`] batches in flight, oldest
    /// changes first. A failed batch, or a busy key, sends everything not yet settled
    /// again once the batches in flight are answered (a change sent twice merges once).
    async fn drain(&self, index: usize, outbox: &Outbox, mut stopped: watch::Receiver<bool>) {
        let peer = &self.inner.peers[index];
        let site = peer.name.to_string();
        let mut cursor = 0;
        let mut retry = 0;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < ASYNC_WINDOW {
                let pending = match outbox.peek_after(cursor, self.inner.async_batch) {
                    Ok(pending) => pending,
                    Err(error) => {
                        warn!(site = %peer.name, %error, "cannot read the outbox");
                        Vec::new()
                    }
                };
                let Some(last) = pending.last() else { break };
                cursor = last.seq;
                in_flight.push(self.send_batch(peer, pending));
            }
            if in_flight.is_empty() {
                tokio::select! {
                    _ = outbox.queued() => continue,
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
            let answered = tokio::select! {
                answered = in_flight.next() => Some(answered),
                // New changes go out soon while the window has room, together.
                _ = outbox.queued(), if in_flight.len() < ASYNC_WINDOW => None,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let Some(answered) = answered else {
                tokio::time::sleep(ASYNC_LINGER).await;
                continue;
            };
            let Some((pending, sent)) = answered else {
                continue;
            };
            let mut again = false;
            match sent {
                Ok(results) => {
                    let now = outbox::now_ms();
                    for (change, result) in pending.iter().zip(results) {
                        if result == v1::AsyncResult::Busy {
                            again = true;
                            continue;
                        }
                        if let Err(error) = outbox.settle(change) {
                            warn!(site = %peer.name, %error, "cannot settle an outbox entry");
                        }
                        metrics::histogram!("sitegrid_async_lag_seconds", "site" => site.clone())
                            .record(now.saturating_sub(change.queued_ms) as f64 / 1000.0);
                    }
                    metrics::gauge!("sitegrid_outbox_keys", "site" => site.clone())
                        .set(outbox.len() as f64);
                }
                Err(failure) => {
                    again = true;
                    metrics::counter!("sitegrid_async_batch_failures_total", "site" => site.clone())
                        .increment(1);
                    self.warn_at_most_every_interval(peer, &failure.to_string());
                }
            }
            if !again {
                retry = 0;
                continue;
            }
            // Let the batches in flight finish, then start over from the oldest change.
            while let Some((pending, sent)) = in_flight.next().await {
                if let Ok(results) = sent {
                    for (change, result) in pending.iter().zip(results) {
                        if result != v1::AsyncResult::Busy {
                            let _ = outbox.settle(change);
                        }
                    }
                }
            }
            cursor = 0;
            let wait = ASYNC_RETRY.delay(retry).unwrap_or(ASYNC_RETRY.max_delay);
            retry = retry.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Sends one batch; answers with the batch, for settling.
    async fn send_batch(
        &self,
        peer: &PeerSite,
        pending: Vec<Pending>,
    ) -> (Vec<Pending>, Result<Vec<v1::AsyncResult>, Failure>) {
        let request = v1::ApplyAsyncRequest {
            from_site: self.inner.site.clone(),
            changes: pending
                .iter()
                .map(|p| v1::AsyncChange {
                    cache: p.cache.clone(),
                    mutation: Some(p.mutation.clone()),
                })
                .collect(),
            forwarded: false,
        };
        let sent = peer.apply_async(request, ASYNC_TIMEOUT).await;
        (pending, sent)
    }

    fn warn_at_most_every_interval(&self, peer: &PeerSite, failure: &str) {
        let mut warned = self.inner.warned.lock();
        let due = warned
            .get(&peer.name)
            .is_none_or(|last| last.elapsed() >= WARN_INTERVAL);
        if due {
            warned.insert(peer.name.clone(), Instant::now());
            warn!(site = %peer.name, %failure, "a peer site did not take backups");
        }
    }

    /// Reconciles the keys in doubt at each peer site whenever it answers again, until
    /// `stopped` turns true.
    pub async fn reconcile<L: LocalSite>(self, local: Arc<L>, mut stopped: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let Some(in_doubt) = &self.inner.in_doubt else {
                continue;
            };
            for peer in &self.inner.peers {
                if in_doubt.count(&peer.name) == 0 {
                    continue;
                }
                let keys = match in_doubt.list_at(&peer.name) {
                    Ok(keys) => keys,
                    Err(error) => {
                        warn!(site = %peer.name, %error, "cannot read the keys in doubt");
                        continue;
                    }
                };
                if let Err(failure) = peer.heartbeat(&self.inner.site, HEARTBEAT_TIMEOUT).await {
                    debug!(site = %peer.name, %failure, keys = keys.len(), "keys in doubt wait for the peer site");
                    continue;
                }
                let results: Vec<(PeerKey, Result<(), Status>)> = stream::iter(keys)
                    .map(|key| {
                        let local = local.clone();
                        async move {
                            let result = local
                                .reconcile(&key.cache, key.key.clone(), key.version)
                                .await;
                            (key, result)
                        }
                    })
                    .buffer_unordered(RECONCILE_CONCURRENCY)
                    .collect()
                    .await;
                let mut settled = 0;
                for (key, result) in results {
                    match result {
                        Ok(()) => {
                            self.settle(&key);
                            settled += 1;
                        }
                        Err(status) => {
                            debug!(site = %peer.name, cache = %key.cache, error = %status.message(), "a key in doubt is not reconciled yet");
                        }
                    }
                }
                if settled > 0 {
                    info!(site = %peer.name, settled, "keys in doubt reconciled");
                }
            }
        }
    }

    /// Forgets `key` in doubt, unless a newer write to it went in doubt since.
    fn settle(&self, key: &PeerKey) {
        let Some(in_doubt) = &self.inner.in_doubt else {
            return;
        };
        if let Err(error) = in_doubt.settle(key) {
            warn!(site = %key.site, %error, "cannot settle a key in doubt");
        }
        metrics::gauge!("sitegrid_backup_in_doubt_keys", "site" => key.site.clone())
            .set(in_doubt.count(&key.site) as f64);
    }
}

/// The outboxes of the peers that some cache backs up to asynchronously, on `disk`.
fn open_outboxes(
    config: &Config,
    disk: Option<&Arc<Disk>>,
    peers: &[PeerSite],
    asynchronous: &HashMap<String, Vec<(usize, BackupConfig)>>,
) -> Result<Vec<Option<Outbox>>, RelayError> {
    let used: std::collections::HashSet<usize> = asynchronous
        .values()
        .flat_map(|targets| targets.iter().map(|(index, _)| *index))
        .collect();
    let Some(disk) = disk.filter(|_| !used.is_empty()) else {
        return Ok(peers.iter().map(|_| None).collect());
    };
    peers
        .iter()
        .enumerate()
        .map(|(index, peer)| {
            used.contains(&index)
                .then(|| Outbox::open(disk, &peer.name, config.relay.outbox_capacity))
                .transpose()
        })
        .collect()
}

fn count(peer: &PeerSite, cache: &str, outcome: &'static str) {
    metrics::counter!(
        "sitegrid_backups_total",
        "site" => peer.name.to_string(),
        "cache" => cache.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The outcome that decides, of two: a failure under `fail`, then a conflict, then busy.
fn worse(a: SyncOutcome, b: SyncOutcome) -> SyncOutcome {
    fn rank(outcome: &SyncOutcome) -> u8 {
        match outcome {
            SyncOutcome::Done => 0,
            SyncOutcome::Busy => 1,
            SyncOutcome::Conflict { .. } => 2,
            SyncOutcome::Unavailable { .. } => 3,
        }
    }
    if rank(&b) > rank(&a) { b } else { a }
}
