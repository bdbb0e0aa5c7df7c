//! Heartbeats to peer sites, and the decisions on their state.
//!
//! Every node asks every peer site each heartbeat interval whether it answers (so each
//! node knows when a peer is down and fails backups to it at once), but only the site's
//! decider ([`LocalSite::decides_site_state`]) changes a peer's state, for the whole site:
//! - a peer that failed `after_failures` heartbeats or backups in a row, the first at
//!   least `min_wait` ago, is taken offline if this site gets the grant: from the witness
//!   when there is one (renewed while the peer is offline or resyncing, released once it
//!   is online; a grant that lapses fences this site), else if it is the preferred site
//!   (`relay.prefer`); otherwise this site fences itself, so the two sites of a partition
//!   never both take writes that need each other's agreement;
//! - a peer that answers and holds this site offline or resyncing fences this site until
//!   it brings this site online; one that holds it online lifts the fence;
//! - a peer that answers again while offline is brought online (after a resync) when
//!   `auto_bring_online` is set; a peer left `resyncing` (an operator's command, or a
//!   decider that stopped) gets its resync run here.

use std::sync::Arc;
use std::time::Duration;

use sitegrid_proto::v1;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::LocalSite;
use crate::relay::Relay;
use crate::state::{Mode, PeerState};

impl Relay {
    /// Sends heartbeats and decides peer states every heartbeat interval until `stopped`
    /// turns true; also tells subscribers of the caches a resync touched to invalidate.
    pub async fn watch_peers<L: LocalSite>(
        self,
        local: Arc<L>,
        mut stopped: watch::Receiver<bool>,
    ) {
        if self.inner.peers.is_empty() {
            return;
        }
        let follow = tokio::spawn(self.clone().follow_states(local.clone(), stopped.clone()));
        let interval = self.inner.heartbeat_interval;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.wait_for(|stop| *stop) => break,
            }
            let beats = (0..self.inner.peers.len()).map(|index| self.heartbeat(index, interval));
            futures::future::join_all(beats).await;
            self.publish_time_in_state();
            if !local.decides_site_state() {
                self.inner.resyncs.stop_all();
                if let Some(witness) = &self.inner.witness {
                    witness.forget();
                }
                continue;
            }
            for index in 0..self.inner.peers.len() {
                self.decide(index, &local).await;
            }
        }
        self.inner.resyncs.stop_all();
        let _ = follow.await;
    }

    /// How long each peer has been in its state, as a metric.
    fn publish_time_in_state(&self) {
        let now = crate::outbox::now_ms();
        for (peer, state) in self.inner.states.all() {
            let seconds = now.saturating_sub(state.since_ms) as f64 / 1_000.0;
            metrics::gauge!("sitegrid_site_state_seconds", "site" => peer).set(seconds);
        }
    }

    /// Asks peer `index` whether it answers, waiting at most `timeout`.
    async fn heartbeat(&self, index: usize, timeout: Duration) {
        let peer = &self.inner.peers[index];
        let health = &self.inner.health[index];
        match peer.heartbeat(&self.inner.site, timeout).await {
            Ok(answer) => {
                let their_view = v1::PeerSiteState::try_from(answer.your_state)
                    .ok()
                    .and_then(Mode::from_proto)
                    .map(|mode| (mode, answer.your_epoch));
                health.answered(their_view);
            }
            Err(failure) => {
                debug!(site = %peer.name, %failure, "heartbeat failed");
                health.failed();
            }
        }
        let seen = health.seen();
        metrics::gauge!("sitegrid_site_failures", "site" => peer.name.to_string())
            .set(f64::from(seen.failures));
    }

    /// The decider's step for peer `index`: the fence and mode the site should have now.
    async fn decide<L: LocalSite>(&self, index: usize, local: &Arc<L>) {
        let name = &self.inner.peers[index].name;
        let config = &self.inner.configs[index];
        let states = &self.inner.states;
        let state = states.get(name);
        let seen = self.inner.health[index].seen();
        let (mut mode, mut fence) = (state.mode, state.fenced.clone());
        let mut why = String::new();
        if seen.failures == 0 && seen.last_answer_ms > 0 {
            // The peer answers: it says whether this site may take writes.
            fence = match seen.their_view {
                Some((held @ (Mode::Offline | Mode::Resyncing), epoch)) => Some(format!(
                    "site {name} holds site {} {} (its epoch {epoch}): writes to caches with \
                     sync backups are refused until {name} brings this site online",
                    self.inner.site,
                    held.as_str()
                )),
                _ => None,
            };
            why = if fence.is_some() {
                "the peer site holds this site offline".into()
            } else {
                "the peer site answers and holds this site online".into()
            };
            if mode == Mode::Offline && config.auto_bring_online {
                mode = Mode::Resyncing;
                why = "the peer site answers again (auto_bring_online)".into();
            }
        } else if seen.down_for(&config.take_offline) && mode != Mode::Offline {
            why = format!(
                "{} heartbeats or backups in a row got no answer, the first {:?} ago",
                seen.failures,
                seen.first_failure.map(|f| f.elapsed()).unwrap_or_default()
            );
            match self.may_take_offline(index).await {
                Ok(()) => {
                    warn!(site = %name, %why, "taking the peer site offline");
                    (mode, fence) = (Mode::Offline, None);
                }
                Err(refused) => {
                    fence = Some(format!(
                        "site {name} does not answer and this site may not take it offline \
                         ({refused}): writes to caches with sync backups are refused so that \
                         only one site takes them"
                    ));
                    why = format!("the peer site does not answer ({why}); no grant");
                }
            }
        } else if mode == Mode::Offline {
            // Held offline by this site: nothing fences it but a lapsed grant (below).
            fence = None;
            why = "this site holds the peer site offline".into();
        }
        if let Some(witness) = &self.inner.witness {
            if matches!(mode, Mode::Offline | Mode::Resyncing) {
                // Holding the peer offline needs a live grant: without one, the witness
                // may give the other site the right to hold this one offline.
                let timeout = self.inner.heartbeat_interval;
                let renew_before = timeout * 2;
                if let Err(lapsed) = witness.keep(index, name, renew_before, timeout).await {
                    fence.get_or_insert_with(|| {
                        why = "the witness's grant lapsed".into();
                        format!(
                            "this site holds site {name} {} but may no longer ({lapsed}): \
                             writes to caches with sync backups are refused until the witness \
                             grants it again",
                            mode.as_str()
                        )
                    });
                }
            } else {
                witness
                    .release(index, name, self.inner.heartbeat_interval)
                    .await;
            }
        }
        if (mode, &fence) != (state.mode, &state.fenced) {
            if let Some(fence) = fence.as_ref().filter(|_| state.fenced.is_none()) {
                warn!(site = %name, "fencing this site: {fence}");
            }
            states.change(name, &why, |s| {
                s.mode = mode;
                s.fenced = fence;
            });
        }
        if mode == Mode::Resyncing {
            let epoch = states.get(name).epoch;
            self.inner.resyncs.ensure_running(self, index, local, epoch);
        }
        let answers = seen.failures == 0 && seen.last_answer_ms > 0;
        if let Some(interval) = self.inner.consistency_check_interval
            && mode == Mode::Online
            && states.get(name).fenced.is_none()
            && answers
            && self.inner.resyncs.check_due(name, interval)
        {
            self.inner.resyncs.ensure_running(self, index, local, 0);
        }
    }

    /// Whether this site may take peer `index` offline: with a witness, if it grants it;
    /// without, if this site is the preferred one. `Err` says why not.
    async fn may_take_offline(&self, index: usize) -> Result<(), String> {
        match &self.inner.witness {
            Some(witness) => {
                let peer = &self.inner.peers[index].name;
                witness
                    .acquire(index, peer, self.inner.heartbeat_interval)
                    .await
            }
            None if self.inner.prefer => Ok(()),
            None => Err("no witness, and relay.prefer is not set here".into()),
        }
    }

    /// Follows state changes; tells this node's subscribers to invalidate the caches
    /// backed up to a peer once a resync with it is done (on both sites: here when the
    /// peer goes from resyncing to online, and when a fence set by the peer is lifted).
    async fn follow_states<L: LocalSite>(self, local: Arc<L>, mut stopped: watch::Receiver<bool>) {
        let mut changes = self.inner.states.follow();
        let mut last: Vec<(String, Arc<PeerState>)> = self.inner.states.all();
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let now = self.inner.states.all();
            for ((peer, before), (_, after)) in last.iter().zip(&now) {
                let resynced = before.mode == Mode::Resyncing && after.mode == Mode::Online;
                let unfenced = before.fenced.is_some() && after.fenced.is_none();
                if resynced || unfenced {
                    local.invalidate_all(&self.caches_backed_up_to(peer));
                }
            }
            last = now;
        }
    }

    /// The caches with backups (sync or async) to `peer`.
    pub(crate) fn caches_backed_up_to(&self, peer: &str) -> Vec<String> {
        let Some(index) = self.inner.peers.iter().position(|p| &*p.name == peer) else {
            return Vec::new();
        };
        let mut caches: Vec<String> = self
            .inner
            .sync
            .iter()
            .chain(&self.inner.asynchronous)
            .filter(|(_, targets)| targets.iter().any(|(i, _)| *i == index))
            .map(|(cache, _)| cache.clone())
            .collect();
        caches.sort();
        caches.dedup();
        caches
    }
}

/// What a node knows of one peer site, for `site status`.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The peer site.
    pub site: String,
    /// This site's state of it.
    pub state: Arc<PeerState>,
    /// Heartbeats and backups in a row that failed at this node.
    pub failures: u32,
    /// When the peer last answered this node (Unix ms; 0: not since it started).
    pub last_answer_ms: u64,
    /// Keys in doubt at the peer.
    pub in_doubt_keys: u64,
    /// Keys written while it was not online, for its resync.
    pub offline_keys: u64,
    /// Changes waiting in its async outbox.
    pub outbox_keys: u64,
    /// The last or running resync with it on this node.
    pub resync: Option<crate::resync::Progress>,
}

/// Operator commands; each names a peer site (NOT_FOUND if it is not one).
impl Relay {
    fn index_of(&self, peer: &str) -> Result<usize, tonic::Status> {
        self.inner
            .peers
            .iter()
            .position(|p| &*p.name == peer)
            .ok_or_else(|| {
                tonic::Status::not_found(format!(
                    "site {peer:?} is not a peer site of site {} (name it in [[sites]])",
                    self.inner.site
                ))
            })
    }

    /// What this node knows of every peer site.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.inner
            .peers
            .iter()
            .enumerate()
            .map(|(index, peer)| self.peer_status(index, &peer.name))
            .collect()
    }

    fn peer_status(&self, index: usize, name: &str) -> PeerStatus {
        let seen = self.inner.health[index].seen();
        let count = |keys: &Option<crate::peer_keys::PeerKeys>| {
            keys.as_ref().map_or(0, |keys| keys.count(name) as u64)
        };
        PeerStatus {
            site: name.to_string(),
            state: self.inner.states.get(name),
            failures: seen.failures,
            last_answer_ms: seen.last_answer_ms,
            in_doubt_keys: count(&self.inner.in_doubt),
            offline_keys: count(&self.inner.offline_keys),
            outbox_keys: self.inner.outboxes[index]
                .as_ref()
                .map_or(0, |outbox| outbox.len() as u64),
            resync: self.inner.resyncs.progress(name),
        }
    }

    /// Takes `peer` offline for the whole site: backups stop waiting for it.
    pub fn take_offline(&self, peer: &str) -> Result<PeerStatus, tonic::Status> {
        let index = self.index_of(peer)?;
        self.inner.resyncs.stop(peer);
        self.inner
            .states
            .change(peer, "taken offline by an operator", |s| {
                s.mode = Mode::Offline;
                s.fenced = None;
            });
        Ok(self.peer_status(index, peer))
    }

    /// Brings `peer` online: a resync first (run here), then online. With `resync` and
    /// the peer online already, runs a consistency check that leaves it online.
    pub fn bring_online<L: LocalSite>(
        &self,
        peer: &str,
        local: &Arc<L>,
        resync: bool,
    ) -> Result<PeerStatus, tonic::Status> {
        let index = self.index_of(peer)?;
        let state = self.inner.states.get(peer);
        if let Some(failures) =
            self.inner.health[index].is_down(&self.inner.configs[index].take_offline)
        {
            return Err(tonic::Status::failed_precondition(format!(
                "site {peer} does not answer ({failures} heartbeats or backups in a row \
                 failed): bring it online once it answers"
            )));
        }
        if state.mode == Mode::Online {
            if resync {
                self.inner.resyncs.ensure_running(self, index, local, 0);
            }
        } else {
            let state = self.inner.states.change(
                peer,
                "brought online by an operator: resync first",
                |s| s.mode = Mode::Resyncing,
            );
            self.inner
                .resyncs
                .ensure_running(self, index, local, state.epoch);
        }
        Ok(self.peer_status(index, peer))
    }

    /// Stops a running resync with `peer`; a peer being brought online stays offline.
    pub fn cancel_resync(&self, peer: &str) -> Result<PeerStatus, tonic::Status> {
        let index = self.index_of(peer)?;
        self.inner.resyncs.stop(peer);
        if self.inner.states.get(peer).mode == Mode::Resyncing {
            self.inner
                .states
                .change(peer, "resync cancelled by an operator", |s| {
                    s.mode = Mode::Offline
                });
        }
        Ok(self.peer_status(index, peer))
    }

    /// Compares this site with `peer` by digests, moving nothing.
    pub async fn diff<L: LocalSite>(
        &self,
        peer: &str,
        local: &Arc<L>,
    ) -> Result<PeerStatus, tonic::Status> {
        let index = self.index_of(peer)?;
        let progress = crate::resync::Resyncs::diff(self, index, local).await;
        let mut status = self.peer_status(index, peer);
        status.resync = Some(progress);
        Ok(status)
    }
}

/// How long a peer site may take to clear a cache.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(30);

impl Relay {
    /// Clears `cache` in every peer site it is backed up to, in parallel; answers the
    /// entries removed there, or which sites were not cleared and why.
    pub async fn clear_in_peer_sites(&self, cache: &str) -> Result<u64, String> {
        let clears = self.inner.peers.iter().filter(|peer| {
            self.caches_backed_up_to(&peer.name)
                .iter()
                .any(|c| c == cache)
        });
        let answers = futures::future::join_all(clears.map(|peer| async move {
            if self.inner.states.get(&peer.name).mode != Mode::Online {
                return (peer, Err("it is not online".to_string()));
            }
            let request = v1::ClearCacheRequest {
                from_site: self.inner.site.clone(),
                cache: cache.to_string(),
            };
            let answer = peer.clear_cache(request, CLEAR_TIMEOUT).await;
            (peer, answer.map_err(|failure| failure.to_string()))
        }))
        .await;
        let mut removed = 0;
        let mut failed = Vec::new();
        for (peer, answer) in answers {
            match answer {
                Ok(count) => removed += count,
                Err(why) => failed.push(format!("site {} ({why})", peer.name)),
            }
        }
        if failed.is_empty() {
            Ok(removed)
        } else {
            Err(format!("not cleared in {}", failed.join(", ")))
        }
    }
}
