//! Becoming ready: a starting node, or one that lost contact, catches up before it serves.
//!
//! 1. Find the donors: every ready member. If none shows up within `discovery` and
//!    nobody else is ready either, the starting members choose the first one among
//!    themselves: the one with the newest data (then the highest name) becomes ready on
//!    its own data.
//! 2. Compare each cache's range digests with each donor's in turn and copy the ranges
//!    that differ, newest version winning per key; keys no donor has any more (and that
//!    did not arrive by replication while this node caught up) are dropped. Every donor, not just one: a
//!    member may look ready here while it was left out of writes and does not know it
//!    yet (gossip of the suspicion lags), and only the union of all ready members is
//!    sure to hold every acknowledged write. A donor whose port is closed is gone (and
//!    so is what only it held); any other donor that fails fails the attempt.
//! 3. Ask every donor and every ready member for every write from now on
//!    (`ConfirmJoin`; the donors even if the view lost them for a moment); each answers
//!    once the writes under way without this node are done, naming the other nodes
//!    catching up, which are asked too and get this node's writes once it is ready.
//! 4. Compare and copy once more, for what was written between 2 and 3, and copy the
//!    write answers every donor keeps for retries (those of later writes come with them):
//!    a client retrying a write whose node died gets its first answer from this node too.
//! 5. Take a slot no other member holds (it is part of every version this node assigns),
//!    then become ready: now a primary for some keys, and serving.
//!
//! While it catches up, the node takes replicated writes like any member (the one rule
//! keeps a copied older state from overwriting them) but serves nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sitegrid_proto::v1;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::{Cluster, Member, MemberState, Target, View, codec};
use crate::error::{Error, Result};
use crate::faults::{self, Fault};
use crate::store::entry::Slot;
use crate::store::mutation::Mutation;
use crate::store::slot_key::{RANGES, key_hash, range_of};
use crate::store::version::Version;
use sitegrid_proto::version::SLOTS;

/// Keeps the node ready, catching up whenever it is not, until `shutdown` turns true.
pub async fn run(cluster: Cluster, mut shutdown: watch::Receiver<bool>) {
    let mut state = cluster.state();
    let mut was_ready = false;
    loop {
        if *state.borrow() != MemberState::Ready {
            cluster.begin_catch_up();
            match catch_up(&cluster, Instant::now(), was_ready).await {
                // Left out of a write meanwhile: what was copied may lack it.
                Ok(()) if cluster.is_suspected() => {
                    warn!("left out of a write while catching up: starting again");
                }
                Ok(()) => {
                    take_unique_slot(&cluster).await;
                    cluster.set_state(MemberState::Ready);
                    was_ready = true;
                }
                Err(error) => {
                    warn!(error = %error, "catching up failed, trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(cluster.timing().gossip_interval * 5) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One attempt at steps 1 to 4. `was_ready`: this node served before (it is catching up
/// after losing contact), so its own data is known to lack writes.
async fn catch_up(cluster: &Cluster, started: Instant, was_ready: bool) -> Result<()> {
    let donors = loop {
        let donors = cluster.other_ready_members();
        if !donors.is_empty() {
            break donors;
        }
        if first_of_site(cluster, started, was_ready) {
            info!("no ready member: this node starts the site on its own data");
            return Ok(());
        }
        tokio::time::sleep(cluster.timing().gossip_interval).await;
    };
    let names: Vec<&str> = donors.iter().map(|d| &*d.name).collect();
    info!(donors = ?names, "catching up");
    let copied = sync_from(cluster, &donors).await?;
    confirm_all(cluster, &donors).await?;
    let again = sync_from(cluster, &donors).await?;
    let answers = copy_answers(cluster, &donors).await?;
    info!(donors = ?names, copied, again, answers, "caught up");
    Ok(())
}

/// Makes this node's slot unique among the members it sees before it becomes ready (two
/// members with one slot could assign the same version): a slot a ready member holds, or
/// a joiner with a lower name, is given up for the lowest free one, and the node waits
/// for gossip to carry it.
async fn take_unique_slot(cluster: &Cluster) {
    loop {
        let me = cluster.me();
        let view = cluster.view();
        let others: Vec<&Member> = view.members.iter().filter(|m| m.name != me.name).collect();
        let Some(holder) = others
            .iter()
            .find(|m| m.slot == me.slot && (m.is_ready() || m.name < me.name))
        else {
            return;
        };
        let used: HashSet<u8> = others.iter().map(|m| m.slot).collect();
        match (0..SLOTS).find(|slot| !used.contains(slot)) {
            Some(free) => {
                info!(taken = me.slot, by = %holder.name, slot = free, "slot taken: this node takes another");
                cluster.store().clock().set_slot(free);
            }
            None => warn!("every slot is taken: a site has at most {SLOTS} nodes"),
        }
        tokio::time::sleep(cluster.timing().gossip_interval * 3).await;
    }
}

/// Whether this node should start its site on its own data, nobody being ready:
/// - alone, on its first start: at once if no other node was named to it, otherwise once
///   the discovery time has passed;
/// - alone after losing contact (`was_ready`): never; the others are only out of its sight
///   (after a freeze its failure detector takes them all for dead), so it waits for them;
/// - with other members in sight, none ready: once the discovery time has passed, if it
///   has the newest data of them all (then the highest name).
fn first_of_site(cluster: &Cluster, started: Instant, was_ready: bool) -> bool {
    let view = cluster.view();
    let discovered = started.elapsed() >= cluster.timing().discovery;
    if view.members.len() <= 1 {
        return !was_ready && (!cluster.has_seeds() || discovered);
    }
    let me = cluster.me();
    discovered
        && view
            .members
            .iter()
            .all(|m| (me.data_version, &*me.name) >= (m.data_version, &*m.name))
}

/// Copies from each donor in turn every range of every cache whose digest differs from
/// this node's; returns how many slots were taken. Keys here that no donor has and that
/// did not arrive by replication meanwhile are dropped.
async fn sync_from(cluster: &Cluster, donors: &[Member]) -> Result<u64> {
    let mut taken = 0;
    for cache in cluster.store().caches() {
        let cache = cache.name();
        // Ranges some donor had exactly as here (it vouches for every key here), ranges
        // copied from some donor, and the keys the donors sent.
        let mut vouched: HashSet<u32> = HashSet::new();
        let mut copied: HashSet<u32> = HashSet::new();
        let mut seen: HashSet<Bytes> = HashSet::new();
        for donor in donors {
            let Some((count, differing)) =
                sync_cache_from(cluster, cache, donor, &mut seen).await?
            else {
                info!(donor = %donor.name, "a donor whose port is closed is gone: left out");
                continue;
            };
            taken += count;
            let differing: HashSet<u32> = differing.into_iter().collect();
            vouched.extend((0..RANGES as u32).filter(|r| !differing.contains(r)));
            copied.extend(differing);
        }
        let droppable: Vec<u32> = copied.difference(&vouched).copied().collect();
        drop_missing(cluster, cache, &droppable, &seen).await?;
    }
    Ok(taken)
}

/// Copies from `donor` the ranges of `cache` whose digest differs from this node's,
/// adding the keys it sent to `seen`; returns how many slots were taken and the ranges,
/// or `None` if the donor's port is closed before it sent anything (it is gone).
pub(super) async fn sync_cache_from(
    cluster: &Cluster,
    cache: &str,
    donor: &Member,
    seen: &mut HashSet<Bytes>,
) -> Result<Option<(u64, Vec<u32>)>> {
    let mut client = cluster
        .peers()
        .client(&donor.address)
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    let failed = |what: &str, status: tonic::Status| {
        Error::Unavailable(format!("{what} from {}: {}", donor.name, status.message()))
    };
    let theirs = match client
        .digests(v1::DigestsRequest {
            cache: cache.to_string(),
        })
        .await
    {
        Ok(theirs) => theirs.into_inner(),
        Err(status) if super::refused(&status) => return Ok(None),
        Err(status) => return Err(failed("digests", status)),
    };
    cluster.store().clock().observe(theirs.clock);
    let store_cache = cluster.store().cache(cache)?.clone();
    if theirs.floor > store_cache.keyspace.read().floor() {
        cluster.store().clear_at(cache, theirs.floor).await?;
    }
    let ours = *store_cache.keyspace.read().digests();
    let differing: Vec<u32> = (0..RANGES)
        .filter(|r| theirs.digests.get(*r) != Some(&ours[*r]))
        .map(|r| r as u32)
        .collect();
    if differing.is_empty() {
        return Ok(Some((0, differing)));
    }
    let mut taken = 0;
    let purge_cutoff = cluster.store().purge_cutoff();
    let mut stream = client
        .fetch(v1::FetchRequest {
            cache: cache.to_string(),
            ranges: differing.clone(),
        })
        .await
        .map_err(|status| failed("fetch", status))?
        .into_inner();
    while let Some(batch) = next_within(&mut stream, donor).await? {
        let batch = batch.map_err(|status| failed("fetch", status))?;
        let mut changes = Vec::with_capacity(batch.slots.len());
        for slot in batch.slots {
            let key = Bytes::copy_from_slice(&slot.key);
            let decoded = codec::decode_slot(&slot.record, cluster.store().services())?;
            seen.insert(key.clone());
            // A removal due to be purged changes nothing where the key is not: taken, it
            // would only be purged again (and its digest would differ meanwhile).
            if let Slot::Tombstone(tombstone) = &decoded
                && tombstone.removed_ms <= purge_cutoff
                && store_cache.keyspace.read().slot(&key).is_none()
            {
                continue;
            }
            changes.push(crate::store::replication::ReceivedChange {
                mutation: Mutation::newer_wins(key, decoded),
                answer: None,
            });
        }
        taken += apply_all(cluster, cache, changes).await?;
    }
    Ok(Some((taken, differing)))
}

/// The next message of a donor's stream, unless it sends none for
/// [`INTERNAL_CALL_DEADLINE`](sitegrid_proto::transport::INTERNAL_CALL_DEADLINE).
async fn next_within<T>(
    stream: &mut tonic::Streaming<T>,
    donor: &Member,
) -> Result<Option<std::result::Result<T, tonic::Status>>> {
    tokio::time::timeout(
        sitegrid_proto::transport::INTERNAL_CALL_DEADLINE,
        stream.next(),
    )
    .await
    .map_err(|_| {
        Error::Unavailable(format!(
            "{} sent nothing for {:?} while this node copied from it",
            donor.name,
            sitegrid_proto::transport::INTERNAL_CALL_DEADLINE
        ))
    })
}

/// Applies changes copied from a donor, waiting out keys busy with a write here.
async fn apply_all(
    cluster: &Cluster,
    cache: &str,
    mut changes: Vec<crate::store::replication::ReceivedChange>,
) -> Result<u64> {
    use crate::store::write::ReplicaOutcome;
    let mut applied = 0;
    for attempt in 0.. {
        let replies = cluster
            .store()
            .apply_replicated(cache, changes.clone())
            .await?;
        let mut busy = Vec::new();
        for (change, reply) in changes.into_iter().zip(replies) {
            match reply.outcome {
                ReplicaOutcome::Applied => applied += 1,
                ReplicaOutcome::Busy => busy.push(change),
                ReplicaOutcome::AlreadyApplied | ReplicaOutcome::Conflict(_) => {}
            }
        }
        if busy.is_empty() {
            break;
        }
        if attempt > 100 {
            return Err(Error::Unavailable(
                "keys stayed busy while catching up".into(),
            ));
        }
        changes = busy;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(applied)
}

/// Drops keys of the `ranges` copied from donors that none of them sent and that did not
/// arrive by replication while this node caught up (such a write may be applied here
/// before its primary, a donor, applies it; no version bound tells them apart, since this
/// node's clock may run ahead of the site's after a restart).
async fn drop_missing(
    cluster: &Cluster,
    cache: &str,
    ranges: &[u32],
    seen: &HashSet<Bytes>,
) -> Result<()> {
    let store_cache = cluster.store().cache(cache)?.clone();
    let ranges: HashSet<usize> = ranges.iter().map(|r| *r as usize).collect();
    let stale: Vec<(Bytes, Version)> = {
        let keyspace = store_cache.keyspace.read();
        let mut stale = Vec::new();
        for range in &ranges {
            let mut after = None;
            loop {
                let (slots, done) = keyspace.range_slots(*range, after.as_ref(), 1_000);
                after = slots.last().map(|(k, _)| k.clone());
                for (key, slot) in slots {
                    if !seen.contains(&key) && !cluster.arrived(cache, &key) {
                        stale.push((key, slot.version()));
                    }
                }
                if done {
                    break;
                }
            }
        }
        stale
    };
    let mut dropped = Vec::new();
    for (key, version) in stale {
        debug_assert!(ranges.contains(&range_of(key_hash(&key))));
        if !cluster.arrived(cache, &key) && store_cache.forget_if_unchanged(&key, version).await? {
            dropped.push(key);
        }
    }
    if !dropped.is_empty() {
        let sample: Vec<String> = dropped
            .iter()
            .take(5)
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .collect();
        info!(
            cache,
            dropped = dropped.len(),
            ?sample,
            "dropped keys no donor holds any more"
        );
    }
    Ok(())
}

/// Copies the write answers each donor keeps for retries; returns how many came. A donor
/// whose port is closed is left out (it is gone, and so is what only it kept).
async fn copy_answers(cluster: &Cluster, donors: &[Member]) -> Result<u64> {
    let mut copied = 0;
    for donor in donors {
        let failed = |status: tonic::Status| {
            Error::Unavailable(format!("answers from {}: {}", donor.name, status.message()))
        };
        let mut client = cluster
            .peers()
            .client(&donor.address)
            .map_err(|error| Error::Unavailable(error.to_string()))?;
        let mut stream = match client.answers(v1::AnswersRequest {}).await {
            Ok(stream) => stream.into_inner(),
            Err(status) if super::refused(&status) => continue,
            Err(status) => return Err(failed(status)),
        };
        let id_of = |bytes: &[u8]| {
            <[u8; 16]>::try_from(bytes)
                .map(u128::from_le_bytes)
                .map_err(|_| Error::Internal("a kept answer's or void's id is not 16 bytes"))
        };
        while let Some(batch) = next_within(&mut stream, donor).await? {
            let batch = batch.map_err(failed)?;
            for void in &batch.voids {
                cluster.store().keep_void(id_of(void)?);
            }
            for kept in batch.answers {
                let id = id_of(&kept.id)?;
                let answer = kept
                    .answer
                    .ok_or(Error::Internal("a kept answer came without the answer"))?;
                let answer = codec::decode_answer(&answer, cluster.store().services())?;
                cluster.store().keep_answer(id, Arc::new(answer));
                copied += 1;
            }
        }
    }
    Ok(copied)
}

/// Asks every ready member for every write from now on: the donors, those this node sees,
/// and those any of them knows (this node's own view may lag behind gossip). The other joiners they
/// name are asked too: two nodes catching up at once learn of each other at every member
/// they both ask, whichever asks first, and each sends the other its writes once ready.
/// Everyone confirmed is kept as a target until the view shows it ready. A joiner that
/// does not answer and is gone from the view is left out: it is not catching up anymore.
async fn confirm_all(cluster: &Cluster, donors: &[Member]) -> Result<()> {
    let me = cluster.me();
    // The donors copied from first: the view may have lost one for a moment (after this
    // node was frozen, gossip takes the others for dead until it hears them again), and a
    // write under way on a donor must be waited for, or the second copy misses it.
    let view = match faults::on(Fault::ConfirmWithoutView) {
        true => View::default(),
        false => cluster.view(),
    };
    let mut pending: Vec<(Target, bool)> = view
        .ready()
        .chain(donors)
        .filter(|m| m.name != me.name)
        .map(|m| (Target::of(m), false))
        .collect();
    let mut confirmed: HashSet<Arc<str>> = HashSet::new();
    while let Some((member, joining)) = pending.pop() {
        if !confirmed.insert(member.name.clone()) {
            continue;
        }
        let answer = match confirm(cluster, &member).await {
            Ok(answer) => answer,
            Err(error) if joining && cluster.view().member(&member.name).is_none() => {
                info!(joiner = %member.name, error = %error, "a joiner gone from the view is left out");
                continue;
            }
            Err(error) => return Err(error),
        };
        cluster.adopt_joiner(member);
        let ready = answer.ready_members.into_iter().map(|m| (m, false));
        let joiners = answer.joiners.into_iter().map(|m| (m, true));
        for (known, joining) in ready.chain(joiners) {
            if known.node != *me.name && !confirmed.contains(known.node.as_str()) {
                pending.push((Target::of_known(known), joining));
            }
        }
    }
    Ok(())
}

/// Asks `member` for every write from now on; returns the ready members and the other
/// joiners it knows.
async fn confirm(cluster: &Cluster, member: &Target) -> Result<v1::ConfirmJoinResponse> {
    let me = cluster.me();
    let mut client = cluster
        .peers()
        .client(&member.address)
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    let answer = client
        .confirm_join(v1::ConfirmJoinRequest {
            node: me.name.to_string(),
            generation: me.generation,
            address: me.address.clone(),
            epoch: me.epoch,
        })
        .await
        .map_err(|status| {
            Error::Unavailable(format!(
                "{} did not confirm the join: {}",
                member.name,
                status.message()
            ))
        })?;
    Ok(answer.into_inner())
}
