//! The write path of one cache: on the key's primary, and on the members that replicate
//! its writes.
//!
//! On the primary, a write, start to end:
//! 1. take the cache's clear barrier (shared) and the key's lock;
//! 2. if the key holds an entry that has expired, expire it first (so its `EXPIRED`
//!    event comes before whatever follows);
//! 3. evaluate the condition (absent / present / version equals) on the current entry;
//!    if it does not hold, answer with the current entry, changing nothing;
//! 4. pick the next version and build the [`Mutation`] (`prev` = the key's state);
//! 5. send it to the other members of the site ([`SiteReplication::replicate`]);
//! 6. persist it (a persistent cache waits until durable), apply it with the one rule,
//!    publish its event, release the lock and answer.
//!
//! If a member holds something newer (another node acted as primary, or this node missed
//! a write), the primary takes that newer state and runs the write again, a few times
//! with jittered backoff, then answers ABORTED; if that newer state is this very write's
//! (same request id, retried after its first primary failed), it answers what that
//! write answered. A member that could not be reached leaves the write in doubt: it is
//! applied here and its answer kept for a retry, but this call answers UNAVAILABLE.
//!
//! On a replica, a change is taken without waiting for anything: a key busy with the
//! replica's own write, or a clear under way, refuses it (the primary tries again), so
//! two members that both believe they are the primary can't deadlock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sitegrid_config::MergePolicy;
use sitegrid_proto::Backoff;

use crate::error::{Error, Result};
use crate::faults::{self, Fault};
use crate::store::cache::{CacheStore, Condition, WriteOp, WriteRequest, WriteResult};
use crate::store::entry::{Entry, Slot, Tombstone, TombstoneCause, writer_of};
use crate::store::mutation::{ApplyOutcome, Change, Mutation};
use crate::store::peers::Backed;
use crate::store::replication::{Replicated, SiteReplication};
use crate::store::time::UnixMillis;
use crate::store::version::Version;

/// How a primary retries a write that met a newer state or a busy member.
const WRITE_RETRY: Backoff = Backoff {
    initial_delay: Duration::from_millis(2),
    max_delay: Duration::from_millis(100),
    max_attempts: 8,
};

/// A write's answer, and the error to give the caller instead if the write is in doubt
/// (applied here, maybe not on every member).
pub type WriteOutcome = (WriteResult, Option<Error>);

/// How one attempt of a write ended.
enum Attempt {
    Done(WriteOutcome),
    /// The key changed without us: run the write again on the new state.
    Again,
}

/// What a replica did with a change.
#[derive(Debug)]
pub enum ReplicaOutcome {
    /// Taken.
    Applied,
    /// Already there.
    AlreadyApplied,
    /// Refused: the key holds something newer.
    Conflict(Option<Slot>),
    /// Refused: the key is busy here; try again.
    Busy,
}

impl CacheStore {
    /// Runs a write as the key's primary (see the module documentation). Not cancel-safe
    /// between persisting and applying: a caller that may stop polling it before its end
    /// runs it in its own task (see [`crate::store::Driver`]).
    pub async fn write(
        &self,
        request: &WriteRequest,
        site: &dyn SiteReplication,
        request_id: Option<&str>,
    ) -> Result<WriteOutcome> {
        // Err(None): the key changed without us, run the write again on the new state.
        let attempt = || async {
            match self.write_once(request, site, request_id).await {
                Ok(Attempt::Done(outcome)) => Ok(outcome),
                Ok(Attempt::Again) => Err(None),
                Err(error) => Err(Some(error)),
            }
        };
        self.retry_busy(attempt, "the key kept changing under concurrent writes")
            .await
    }

    /// Runs `attempt` with [`WRITE_RETRY`] while it fails with `None` (the key moved or
    /// was busy: try again); once the attempts run out, fails with ABORTED saying
    /// `gave_up`. An error it fails with ends it.
    async fn retry_busy<T, F, Fut>(&self, attempt: F, gave_up: &str) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Option<Error>>>,
    {
        match WRITE_RETRY
            .retry(attempt, Option::is_none, tokio::time::sleep)
            .await
        {
            Ok(value) => Ok(value),
            Err(Some(error)) => Err(error),
            Err(None) => Err(Error::Aborted(format!("cache {}: {gave_up}", self.name()))),
        }
    }

    async fn write_once(
        &self,
        request: &WriteRequest,
        site: &dyn SiteReplication,
        request_id: Option<&str>,
    ) -> Result<Attempt> {
        let _site = site.write_guard().await;
        let _clear = self.clear_barrier.read().await;
        let _lock = self.locks.lock(&request.key).await;
        let writer = writer_of(request_id);
        let (slot, prev) = {
            let keyspace = self.keyspace.read();
            let slot = keyspace.slot(&request.key).cloned();
            let prev = slot.as_ref().map_or(keyspace.floor(), Slot::state_version);
            (slot, prev)
        };
        if let Some(answer) = self.applied_before(request, writer, slot.as_ref())? {
            return Ok(Attempt::Done((answer, None)));
        }
        let now = self.now_ms();
        let Some(previous) = self
            .current_for_write(&request.key, slot, now, site)
            .await?
        else {
            return Ok(Attempt::Again);
        };
        let holds = match request.condition {
            Condition::Always => true,
            Condition::Absent => previous.is_none(),
            Condition::Present => previous.is_some(),
            Condition::VersionIs(expected) => {
                previous.as_ref().is_some_and(|e| e.version == expected)
            }
        };
        let removing_absent = matches!(request.op, WriteOp::Remove) && previous.is_none();
        if !holds || removing_absent {
            return Ok(Attempt::Done((
                WriteResult {
                    applied: false,
                    version: 0,
                    previous,
                },
                None,
            )));
        }
        if let Some(site) = self
            .services()
            .peers()
            .and_then(|p| p.full_outbox(self.name()))
        {
            return Err(Error::Unavailable(format!(
                "cache {}: the async backup to site {site} is full (relay.outbox_capacity); \
                 the write was not applied",
                self.name()
            )));
        }
        let version = self.services().clock.next();
        let mutation = Mutation {
            key: request.key.clone(),
            prev,
            change: self.change(&request.op, version, now, previous.as_ref(), writer),
            // A restamp of a state older than the write in doubt: that write never was
            // applied here, and where it was, it is undone.
            undoes: match request.op {
                WriteOp::Restamp { in_doubt } if prev < in_doubt => in_doubt,
                _ => 0,
            },
        };
        let answer = WriteResult {
            applied: true,
            version,
            previous: previous.filter(|_| request.keep_previous),
        };
        if let Some(peers) = self
            .services()
            .sync_peers(self.name())
            .filter(|_| !faults::on(Fault::SkipSyncBackups))
        {
            // The peer sites first: if one refuses, nothing is applied in this site. A
            // restamp replaces, there, the write in doubt (or anything older).
            let for_peers = match request.op {
                WriteOp::Restamp { in_doubt } => Mutation {
                    prev: prev.max(in_doubt),
                    ..mutation.clone()
                },
                _ => mutation.clone(),
            };
            let backed = peers
                .backup(
                    self.name(),
                    &for_peers,
                    request_id,
                    &answer,
                    self.services(),
                )
                .await?;
            match backed {
                Backed::Done => {}
                Backed::Busy => return Ok(Attempt::Again),
                Backed::Conflict {
                    current, recorded, ..
                } => {
                    // The peer has a newer state: take it. This very write, if the peer
                    // kept its answer (a primary here failed before answering), is done;
                    // so is a restamp (the sites agree); another write is evaluated again
                    // (a `PutIfAbsent` then finds the peer's entry, a versioned write a
                    // version that moved on).
                    self.adopt(&request.key, current, site).await?;
                    if let Some(recorded) = recorded {
                        return Ok(Attempt::Done((recorded, None)));
                    }
                    if matches!(request.op, WriteOp::Restamp { .. }) {
                        return Ok(Attempt::Done((
                            WriteResult {
                                applied: false,
                                version: 0,
                                previous: None,
                            },
                            None,
                        )));
                    }
                    return Ok(Attempt::Again);
                }
            }
        }
        match site
            .replicate(self.name(), &mutation, request_id, Some(&answer))
            .await
        {
            Ok(Replicated::Done) => {
                if faults::on(Fault::SlowCommit)
                    && mutation.key.starts_with(faults::SLOW_COMMIT_PREFIX)
                {
                    tokio::time::sleep(faults::SLOW_COMMIT_DELAY).await;
                }
                self.commit(&mutation, true).await?;
                self.enqueue(&mutation).await?;
                Ok(Attempt::Done((answer, None)))
            }
            Ok(Replicated::Busy) => Ok(Attempt::Again),
            Ok(Replicated::Conflict { current, recorded }) => {
                self.adopt(&request.key, current, site).await?;
                match recorded {
                    // This very write already happened, through a primary that failed
                    // before it answered: its answer is the answer.
                    Some(recorded) => Ok(Attempt::Done(((*recorded).clone(), None))),
                    None => Ok(Attempt::Again),
                }
            }
            Err(error @ Error::Unavailable(_)) => {
                // Some members may have it: apply it here too, so this primary agrees
                // with them, and let a retry of the request get this answer.
                self.commit(&mutation, true).await?;
                self.enqueue(&mutation).await?;
                Ok(Attempt::Done((answer, Some(error))))
            }
            Err(error) => Err(error),
        }
    }

    /// The answer of a retried write whose kept answer is lost, from the key's state: it
    /// was made by this very request (the node that ran it died, and the state came here
    /// by a way that carries no answers: a resync, a peer site's refusal, a restart). A
    /// write that answers with the previous entry can't be answered again that way: it
    /// fails, saying it was applied. Only within the idempotency window: after it, a
    /// request id used again is a new request.
    /// `writer` names the request ([`writer_of`]), `slot` is the key's.
    fn applied_before(
        &self,
        request: &WriteRequest,
        writer: u64,
        slot: Option<&Slot>,
    ) -> Result<Option<WriteResult>> {
        if writer == 0 {
            return Ok(None);
        }
        let version = match (&request.op, slot) {
            (WriteOp::Put(_), Some(Slot::Live(entry))) if entry.writer == writer => entry.version,
            (WriteOp::Remove, Some(Slot::Tombstone(tombstone))) if tombstone.writer == writer => {
                tombstone.version
            }
            _ => return Ok(None),
        };
        let window = self.services().idempotency_window_ms;
        if sitegrid_proto::version::millis_of(version) < self.now_ms().saturating_sub(window) {
            return Ok(None);
        }
        if request.keep_previous {
            return Err(Error::Aborted(format!(
                "cache {}: this request was already applied (version {version}), but the node \
                 that ran it is gone and with it the previous entry it answers with",
                self.name()
            )));
        }
        Ok(Some(WriteResult {
            applied: true,
            version,
            previous: None,
        }))
    }

    /// The change `op` makes, at `version`, to a key whose live entry is `current`, as
    /// written by the request `writer` names.
    fn change(
        &self,
        op: &WriteOp,
        version: Version,
        now: UnixMillis,
        current: Option<&Arc<Entry>>,
        writer: u64,
    ) -> Change {
        let site = self.services().site.clone();
        match op {
            WriteOp::Restamp { .. } => match current {
                Some(entry) => {
                    Change::from_slot(restamped(&Slot::Live(entry.clone()), version, now))
                }
                None => Change::Remove(Arc::new(Tombstone {
                    version,
                    origin_site: site,
                    removed_ms: now,
                    cause: TombstoneCause::Removed,
                    writer: 0,
                })),
            },
            // The entry's value is a copy, not a clone of the request's bytes: it then
            // owns its bytes alone, keeping no request buffer alive, and a later
            // overwrite frees them without updating a count shared with the request (a
            // cache miss of its own, and an allocation for the count when cloned).
            WriteOp::Put(new) => Change::Write(Arc::new(
                Entry::new(
                    Bytes::copy_from_slice(&new.value),
                    version,
                    site,
                    now,
                    self.default_ms(new.lifespan_ms, self.config().lifespan),
                    self.default_ms(new.max_idle_ms, self.config().max_idle),
                    new.tags.clone(),
                )
                .written_by(writer),
            )),
            WriteOp::Remove => Change::Remove(Arc::new(Tombstone {
                version,
                origin_site: site,
                removed_ms: now,
                cause: TombstoneCause::Removed,
                writer,
            })),
        }
    }

    fn default_ms(&self, requested_ms: u64, default: Option<Duration>) -> u64 {
        if requested_ms > 0 {
            requested_ms
        } else {
            default.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
    }

    /// The live entry a write to `key`, whose slot is `slot`, sees; expires the entry
    /// first if its time has come (an expiry is not a write: the key still stands at the
    /// expired version). `None` if the expiry met a newer state (the write must start
    /// again). The caller holds the key's lock.
    async fn current_for_write(
        &self,
        key: &Bytes,
        slot: Option<Slot>,
        now: UnixMillis,
        site: &dyn SiteReplication,
    ) -> Result<Option<Option<Arc<Entry>>>> {
        match slot {
            Some(Slot::Live(entry)) if entry.is_expired(now) => {
                if !self.expire_locked(key.clone(), &entry, now, site).await? {
                    return Ok(None);
                }
                Ok(Some(None))
            }
            Some(Slot::Live(entry)) => Ok(Some(Some(entry))),
            _ => Ok(Some(None)),
        }
    }

    /// Turns an expired entry into an expiry tombstone on every member and publishes
    /// `EXPIRED`; `false` if a member holds something newer (now adopted here). The
    /// caller holds the key's lock, is the key's primary, and has checked that `entry` is
    /// the key's entry.
    pub(crate) async fn expire_locked(
        &self,
        key: Bytes,
        entry: &Arc<Entry>,
        now: UnixMillis,
        site: &dyn SiteReplication,
    ) -> Result<bool> {
        let mutation = Mutation {
            key: key.clone(),
            prev: entry.version,
            change: Change::Remove(Arc::new(Tombstone {
                version: self.services().clock.next(),
                origin_site: self.services().site.clone(),
                removed_ms: now,
                cause: TombstoneCause::Expired {
                    base: entry.version,
                },
                writer: 0,
            })),
            undoes: 0,
        };
        match site.replicate(self.name(), &mutation, None, None).await? {
            Replicated::Done => {
                // An expiry lost in a crash happens again after the restart: no need to
                // wait for the disk.
                self.commit(&mutation, false).await?;
                Ok(true)
            }
            Replicated::Busy => Ok(false),
            Replicated::Conflict { current, .. } => {
                self.adopt(&key, current, site).await?;
                Ok(false)
            }
        }
    }

    /// Takes a newer state a member or a peer site reported for `key` (`None`: only a
    /// newer clear, which this node has not seen; the key is left for that clear to reach
    /// it), here and on the other members (they may lack it too). The caller holds the
    /// key's lock.
    async fn adopt(
        &self,
        key: &Bytes,
        newer: Option<Slot>,
        site: &dyn SiteReplication,
    ) -> Result<()> {
        let Some(newer) = newer else { return Ok(()) };
        let (prev, version) = {
            let keyspace = self.keyspace.read();
            let current = keyspace.slot(key);
            (
                keyspace.state_version(key),
                current.map_or(0, Slot::version),
            )
        };
        if newer.version() <= version {
            return Ok(());
        }
        self.services().clock.observe(newer.version());
        let mutation = Mutation {
            key: key.clone(),
            prev,
            change: Change::from_slot(newer),
            undoes: 0,
        };
        self.commit(&mutation, true).await?;
        self.share_key(key, None, site).await
    }

    /// Persists (if the cache is persistent) and applies a mutation, then publishes its
    /// event. The caller holds the key's lock, so the one rule takes it.
    pub(crate) async fn commit(&self, mutation: &Mutation, wait_durable: bool) -> Result<()> {
        self.persist_slot(&mutation.key, &mutation.slot(), wait_durable)
            .await?;
        let outcome = self.keyspace.write().apply(mutation);
        match outcome {
            ApplyOutcome::Applied { replaced } => self.publish(mutation, replaced),
            ApplyOutcome::AlreadyApplied => {}
            ApplyOutcome::Conflict { .. } => {
                return Err(Error::Internal("a locked key changed under its writer"));
            }
        }
        self.note_undone(mutation);
        Ok(())
    }

    /// Whether `answer`, kept here for a write to `key`, still is the answer to give a
    /// retry of it; `false`: the write did not happen after all, and the retry runs as a
    /// new request.
    ///
    /// A write that was in doubt in its site (a peer site took it but the answer was
    /// lost) is undone by that site once it hears from the peer again: the peer then
    /// remembers the write's version as void. And a write a peer site's primary made and
    /// backed up here may be such a write, not undone yet: while this site still holds
    /// it, it goes to the sync peers again, the newer state winning, before the retry is
    /// answered. A peer that takes it, or holds it, makes it stick (reconciling then
    /// keeps it); a peer that undid it says so. A peer that can't be reached fails the
    /// retry, as it fails any write.
    pub(crate) async fn answer_holds(
        &self,
        key: &Bytes,
        request_id: &str,
        answer: &WriteResult,
        site: &dyn SiteReplication,
    ) -> Result<bool> {
        if !answer.applied {
            return Ok(true);
        }
        let services = self.services();
        let from_here =
            sitegrid_proto::version::site_of(answer.version) == services.clock.site_id();
        let peers = services.sync_peers(self.name()).filter(|_| !from_here);
        // `Err(None)`: a peer was busy with the key; try again.
        let attempt = || async {
            let _site = site.write_guard().await;
            // A change to the key under way may be its undoing.
            let _lock = self.locks.lock(key).await;
            if services
                .idempotency
                .is_void(self.name(), key, answer.version)
            {
                return Ok(false);
            }
            let Some(peers) = peers else { return Ok(true) };
            // A newer state here was made on top of it (or on its undoing, which the
            // void says).
            let Some(slot) = self
                .keyspace
                .read()
                .slot(key)
                .filter(|slot| slot.version() == answer.version)
                .cloned()
            else {
                return Ok(true);
            };
            let mutation = Mutation::newer_wins(key.clone(), slot);
            match peers
                .backup(self.name(), &mutation, Some(request_id), answer, services)
                .await
                .map_err(Some)?
            {
                Backed::Done => Ok(true),
                Backed::Conflict {
                    current, voided, ..
                } => {
                    self.adopt(key, current, site).await.map_err(Some)?;
                    Ok(!voided)
                }
                Backed::Busy => Err(None),
            }
        };
        self.retry_busy(attempt, "the peer sites stayed busy with the key")
            .await
    }

    /// Remembers the write in doubt a change taken here undoes (see
    /// [`Mutation::undoes`]): an answer kept for that write is void. Called with the
    /// key's lock held, so a retry looking at the key sees the change and the void
    /// together.
    fn note_undone(&self, mutation: &Mutation) {
        if mutation.undoes != 0 {
            self.services()
                .idempotency
                .void(self.name(), &mutation.key, mutation.undoes);
        }
    }

    /// A replica's refusal of a change: the key's newer state, for the sender to take.
    /// A key refused only because of a clear newer than the change's `prev` (it has no
    /// slot) stands removed at the clear's version `floor`: the sender takes that and its
    /// next try replaces it (otherwise a cache cleared where the sender's copy was not
    /// refused every later write to its old keys).
    fn conflict(&self, current: Option<Slot>, floor: Version) -> ReplicaOutcome {
        ReplicaOutcome::Conflict(Some(current.unwrap_or_else(|| {
            Slot::Tombstone(Arc::new(Tombstone {
                version: floor,
                origin_site: self.services().site.clone(),
                removed_ms: self.now_ms(),
                cause: TombstoneCause::Removed,
                writer: 0,
            }))
        })))
    }

    /// Takes changes sent by another member, with the one rule, never waiting for a lock:
    /// a key busy here (a write of this node's own, a clear, upkeep) refuses its change.
    /// The changes taken are made durable together, with one wait.
    pub async fn apply_replicated(&self, mutations: &[Mutation]) -> Result<Vec<ReplicaOutcome>> {
        let Ok(_clear) = self.clear_barrier.try_read() else {
            return Ok(mutations.iter().map(|_| ReplicaOutcome::Busy).collect());
        };
        let mut outcomes = Vec::with_capacity(mutations.len());
        let mut taken = Vec::new();
        let mut locks = Vec::new();
        for (index, mutation) in mutations.iter().enumerate() {
            let Some(lock) = self.locks.try_lock(&mutation.key) else {
                outcomes.push(ReplicaOutcome::Busy);
                continue;
            };
            self.services().clock.observe(mutation.next());
            let (checked, floor) = {
                let keyspace = self.keyspace.read();
                (keyspace.check(mutation), keyspace.floor())
            };
            outcomes.push(match checked {
                ApplyOutcome::Applied { .. } => {
                    taken.push(index);
                    locks.push(lock);
                    ReplicaOutcome::Applied
                }
                ApplyOutcome::AlreadyApplied => {
                    self.note_undone(mutation);
                    ReplicaOutcome::AlreadyApplied
                }
                ApplyOutcome::Conflict { current } => self.conflict(current, floor),
            });
        }
        // The keys taken stay locked until applied, so the rule's answer holds.
        let slots: Vec<_> = taken
            .iter()
            .map(|index| (mutations[*index].key.clone(), mutations[*index].slot()))
            .collect();
        self.persist_slots(&slots).await?;
        for index in taken {
            let mutation = &mutations[index];
            match self.keyspace.write().apply(mutation) {
                ApplyOutcome::Applied { replaced } => self.publish(mutation, replaced),
                ApplyOutcome::AlreadyApplied => {}
                ApplyOutcome::Conflict { .. } => {
                    return Err(Error::Internal("a locked key changed under its writer"));
                }
            }
            self.note_undone(mutation);
        }
        drop(locks);
        Ok(outcomes)
    }
}

impl CacheStore {
    /// Takes a change a peer site's primary is making (a sync backup), as this site's
    /// primary of the key: the one rule against this node's copy, never waiting for a
    /// lock (a key busy here refuses it, so two sites writing one key can't deadlock),
    /// then on every member of the site before it answers. Not cancel-safe: callers run
    /// it in its own task.
    pub async fn apply_backup(
        &self,
        mutation: &Mutation,
        answer: Option<(&str, &WriteResult)>,
        site: &dyn SiteReplication,
    ) -> Result<ReplicaOutcome> {
        let _site = site.write_guard().await;
        let Ok(_clear) = self.clear_barrier.try_read() else {
            return Ok(ReplicaOutcome::Busy);
        };
        let Some(_lock) = self.locks.try_lock(&mutation.key) else {
            return Ok(ReplicaOutcome::Busy);
        };
        self.services().clock.observe(mutation.next());
        let here = {
            let keyspace = self.keyspace.read();
            match keyspace.check(mutation) {
                ApplyOutcome::Applied { .. } => Some(keyspace.state_version(&mutation.key)),
                ApplyOutcome::AlreadyApplied => None,
                ApplyOutcome::Conflict { current } => {
                    return Ok(self.conflict(current, keyspace.floor()));
                }
            }
        };
        let Some(here) = here else {
            // Sent again (the first try got no answer): this site's primary then may have
            // failed after applying it on only some members; it must be on all of them
            // before the peer is told so.
            self.note_undone(mutation);
            self.share_key(&mutation.key, answer, site).await?;
            return Ok(ReplicaOutcome::AlreadyApplied);
        };
        // In this site the change replaces exactly what this primary holds.
        let local = Mutation {
            key: mutation.key.clone(),
            prev: here,
            change: mutation.change.clone(),
            undoes: mutation.undoes,
        };
        self.apply_in_site(&local, answer, site).await
    }

    /// Merges a state a peer site sent asynchronously with this site's state of the key,
    /// by the cache's merge policy, as the key's primary: never waiting for a lock, then
    /// on every member of the site. An expiry never wins over a live entry. When the
    /// policy keeps the older of the two states, that state gets a new version (versions
    /// of a key only grow), and the caller sends it back to the peer sites. Not
    /// cancel-safe.
    pub async fn merge_backup(
        &self,
        key: &Bytes,
        incoming: Slot,
        site: &dyn SiteReplication,
    ) -> Result<Merged> {
        let _site = site.write_guard().await;
        let Ok(_clear) = self.clear_barrier.try_read() else {
            return Ok(Merged::Busy);
        };
        let Some(_lock) = self.locks.try_lock(key) else {
            return Ok(Merged::Busy);
        };
        self.services().clock.observe(incoming.version());
        let now = self.now_ms();
        let (current, here) = {
            let keyspace = self.keyspace.read();
            (keyspace.slot(key).cloned(), keyspace.state_version(key))
        };
        let (winner, restamped) =
            match merge(self.config().merge, current.as_ref(), &incoming, here, now) {
                Winner::Current => return Ok(Merged::Kept),
                Winner::Incoming => (incoming, false),
                Winner::Older(state) => {
                    (restamped(&state, self.services().clock.next(), now), true)
                }
            };
        let local = Mutation {
            key: key.clone(),
            prev: here,
            change: Change::from_slot(winner),
            undoes: 0,
        };
        match self.apply_in_site(&local, None, site).await? {
            ReplicaOutcome::Applied if restamped => Ok(Merged::Restamped(local)),
            ReplicaOutcome::Applied => Ok(Merged::Taken),
            _ => Ok(Merged::Busy),
        }
    }

    /// Queues a change applied in this site for the async peer sites, if any.
    pub(crate) async fn enqueue(&self, mutation: &Mutation) -> Result<()> {
        match self.services().peers() {
            Some(peers) => peers.enqueue(self.name(), mutation).await,
            None => Ok(()),
        }
    }
}

/// `state` at `version`, a new one: the same entry (or removal), newer.
fn restamped(state: &Slot, version: Version, now: UnixMillis) -> Slot {
    match state {
        Slot::Live(entry) => Slot::Live(Arc::new(
            Entry::restore(
                entry.value.clone(),
                version,
                entry.origin_site.clone(),
                entry.created_ms,
                entry.last_used_ms(),
                entry.lifespan_ms,
                entry.max_idle_ms,
                entry.tags.clone(),
            )
            .written_by(entry.writer),
        )),
        Slot::Tombstone(tombstone) => Slot::Tombstone(Arc::new(Tombstone {
            version,
            removed_ms: now,
            ..(**tombstone).clone()
        })),
    }
}

impl CacheStore {
    /// Applies `local`, whose `prev` is what this primary holds, on every member of the
    /// site and then here; the caller holds the key's lock.
    async fn apply_in_site(
        &self,
        local: &Mutation,
        answer: Option<(&str, &WriteResult)>,
        site: &dyn SiteReplication,
    ) -> Result<ReplicaOutcome> {
        let (request_id, answer) = answer.unzip();
        match site.replicate(self.name(), local, request_id, answer).await {
            Ok(Replicated::Done) => {
                self.commit(local, true).await?;
                Ok(ReplicaOutcome::Applied)
            }
            Ok(Replicated::Busy) => Ok(ReplicaOutcome::Busy),
            Ok(Replicated::Conflict { current, .. }) => {
                // A member has something newer than this primary: take it; the sender
                // tries again against it.
                self.adopt(&local.key, current, site).await?;
                Ok(ReplicaOutcome::Busy)
            }
            Err(error @ Error::Unavailable(_)) => {
                // Some members may have it: so does this primary; the sender has it in
                // doubt and reconciles it.
                self.commit(local, true).await?;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Sends `key`'s state here to every other member of the site, newer state winning,
    /// with the answer of the write that made it: a write found here again (a retry, a
    /// backup sent again) may have reached only some members before its primary failed.
    pub(crate) async fn share_key(
        &self,
        key: &Bytes,
        answer: Option<(&str, &WriteResult)>,
        site: &dyn SiteReplication,
    ) -> Result<()> {
        if site.is_alone() {
            return Ok(());
        }
        let Some(slot) = self.keyspace.read().slot(key).cloned() else {
            return Ok(());
        };
        let (request_id, answer) = answer.unzip();
        let mutation = Mutation::newer_wins(key.clone(), slot);
        // A member holding something newer, or busy writing it, is as good as done.
        site.replicate(self.name(), &mutation, request_id, answer)
            .await
            .map(|_| ())
    }

    /// Drops `key` here, without a tombstone, if it still holds `version` (a key a donor
    /// no longer has: its removal is older than the tombstone time).
    pub async fn forget_if_unchanged(&self, key: &Bytes, version: Version) -> Result<bool> {
        let _clear = self.clear_barrier.read().await;
        let _lock = self.locks.lock(key).await;
        let holds = self
            .keyspace
            .read()
            .slot(key)
            .is_some_and(|slot| slot.version() == version);
        if !holds {
            return Ok(false);
        }
        self.persist_delete(key).await?;
        Ok(self.keyspace.write().forget(key, version))
    }
}

impl Change {
    /// The change that makes a key hold `slot`.
    pub fn from_slot(slot: Slot) -> Change {
        match slot {
            Slot::Live(entry) => Change::Write(entry),
            Slot::Tombstone(tombstone) => Change::Remove(tombstone),
        }
    }
}

impl Mutation {
    /// A change that makes `key` hold `slot` unless it holds something at least as new:
    /// how a node hands over a state it knows (joins, reconciling after a failure).
    pub fn newer_wins(key: Bytes, slot: Slot) -> Mutation {
        Mutation {
            key,
            prev: slot.version().saturating_sub(1),
            change: Change::from_slot(slot),
            undoes: 0,
        }
    }
}

/// What became of a state a peer site sent asynchronously.
#[derive(Debug)]
pub enum Merged {
    /// This site took it.
    Taken,
    /// This site's state won (or it was already here).
    Kept,
    /// The policy kept the older state, which now has a new version: this change, to be
    /// sent to the peer sites.
    Restamped(Mutation),
    /// The key was busy here: send it again.
    Busy,
}

/// Which state of a key a merge keeps.
#[derive(Debug)]
enum Winner {
    /// This site's.
    Current,
    /// The peer's, newer.
    Incoming,
    /// The older of the two (this site's or the peer's), by policy.
    Older(Slot),
}

/// Merges `incoming` with `current` (`here` is the key's state version, or the clear
/// floor when it has no slot) by `policy`.
fn merge(
    policy: MergePolicy,
    current: Option<&Slot>,
    incoming: &Slot,
    here: Version,
    now: UnixMillis,
) -> Winner {
    let newer = if incoming.version() > here {
        Winner::Incoming
    } else {
        Winner::Current
    };
    let Some(current) = current else {
        return newer;
    };
    let live = |slot: &Slot| matches!(slot, Slot::Live(entry) if !entry.is_expired(now));
    let expiry = |slot: &Slot| matches!(slot, Slot::Tombstone(t) if matches!(t.cause, TombstoneCause::Expired { .. }));
    // An expiry never wins over a live entry.
    if live(current) && expiry(incoming) {
        return Winner::Current;
    }
    if live(incoming) && expiry(current) {
        return if incoming.version() > here {
            Winner::Incoming
        } else {
            Winner::Older(incoming.clone())
        };
    }
    let preferred = |slot: &Slot| match policy {
        MergePolicy::NewerVersion => false,
        MergePolicy::PreferNonNull => live(slot),
        MergePolicy::PreferNull => matches!(slot, Slot::Tombstone(_)),
    };
    match (preferred(current), preferred(incoming)) {
        (true, false) if incoming.version() > here => Winner::Older(current.clone()),
        (true, false) => Winner::Current,
        (false, true) if incoming.version() <= here => Winner::Older(incoming.clone()),
        (false, true) => Winner::Incoming,
        _ => newer,
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn live(version: Version) -> Slot {
        Slot::Live(Arc::new(Entry::new(
            Bytes::from_static(b"v"),
            version,
            Arc::from("site1"),
            1_000,
            0,
            0,
            Box::new([]),
        )))
    }

    fn removed(version: Version, cause: TombstoneCause) -> Slot {
        Slot::Tombstone(Arc::new(Tombstone {
            version,
            origin_site: Arc::from("site2"),
            removed_ms: 1_000,
            cause,
            writer: 0,
        }))
    }

    fn winner(policy: MergePolicy, current: Option<Slot>, incoming: Slot) -> String {
        let here = current.as_ref().map_or(0, Slot::version);
        match merge(policy, current.as_ref(), &incoming, here, 2_000) {
            Winner::Current => "current".into(),
            Winner::Incoming => "incoming".into(),
            Winner::Older(slot) => format!("older {}", slot.version()),
        }
    }

    #[test]
    fn the_newer_version_wins_by_default() {
        let policy = MergePolicy::NewerVersion;
        assert_eq!(winner(policy, Some(live(5)), live(7)), "incoming");
        assert_eq!(winner(policy, Some(live(7)), live(5)), "current");
        assert_eq!(winner(policy, Some(live(7)), live(7)), "current");
        assert_eq!(
            winner(policy, None, removed(3, TombstoneCause::Removed)),
            "incoming"
        );
        assert_eq!(
            winner(policy, Some(live(5)), removed(7, TombstoneCause::Removed)),
            "incoming"
        );
    }

    #[test]
    fn an_expiry_never_wins_over_a_live_entry() {
        let expired = TombstoneCause::Expired { base: 0 };
        for policy in [
            MergePolicy::NewerVersion,
            MergePolicy::PreferNonNull,
            MergePolicy::PreferNull,
        ] {
            assert_eq!(
                winner(policy, Some(live(5)), removed(9, expired)),
                "current"
            );
        }
    }

    #[test]
    fn preferences_keep_the_preferred_state_even_when_older_at_a_new_version() {
        let removal = TombstoneCause::Removed;
        assert_eq!(
            winner(
                MergePolicy::PreferNonNull,
                Some(live(5)),
                removed(9, removal)
            ),
            "older 5"
        );
        assert_eq!(
            winner(
                MergePolicy::PreferNonNull,
                Some(removed(5, removal)),
                live(9)
            ),
            "incoming"
        );
        assert_eq!(
            winner(MergePolicy::PreferNull, Some(live(9)), removed(5, removal)),
            "older 5"
        );
        assert_eq!(
            winner(MergePolicy::PreferNull, Some(removed(9, removal)), live(5)),
            "current"
        );
    }
}
