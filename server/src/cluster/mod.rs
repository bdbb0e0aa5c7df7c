//! The nodes of one site: membership, a key's primary, replication, forwarding, joins.
//!
//! Membership comes from chitchat gossip ([`membership`]): every node publishes its gRPC
//! address, its state (joining, ready, isolated) and generation; the live ones form the
//! [`View`]. A key's primary is the ready member the rendezvous hash picks
//! ([`View::primary`]). Writes run there (forwarded by any other node) and are sent to
//! every other ready member, and to joiners that asked for them, before they are
//! acknowledged ([`Cluster::replicate`]): an acknowledged write is on every ready node.
//!
//! A member that can't be reached is excluded from replication once it has been
//! unreachable for `exclusion_timeout` (at once if its port is closed: it is gone), and a
//! suspicion naming it is gossiped. A member serves nothing once it has heard nothing from
//! the site for `lease` (shorter than `exclusion_timeout`), and a suspicion of itself makes
//! it catch up again ([`join`]) before it serves. A member left out while it may still
//! hear the site (it answers gossip but not, or too slowly, writes) may serve until the
//! suspicion reaches it: writes are acknowledged only once gossip shows it stopped, or
//! its lease has surely run out ([`Cluster::await_fences`]). So a member that missed
//! writes never answers a read with what it missed. (A site whose members can't reach
//! each other while clients reach them all, an in-site network partition, is not
//! handled.)

pub mod codec;
pub mod join;
pub mod membership;
pub mod peers;
pub mod repair;
mod sender;
mod verify;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use parking_lot::Mutex;
use sitegrid_proto::tls::ClientTls;
use sitegrid_proto::{Backoff, ErrorCode, v1};
use tokio::sync::{RwLock as AsyncRwLock, watch};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::faults::{self, Fault};
use crate::store::cache::{Touch, WriteRequest, WriteResult};
use crate::store::entry::Slot;
use crate::store::mutation::Mutation;
use crate::store::replication::{Replicated, SiteReplication};
use crate::store::version::Version;
use crate::store::{Driver, Store};
use peers::Peers;
use sender::{ApplyLink, Sender};
pub use view::{Member, MemberState, View};

/// Timing of a site's nodes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often gossip rounds run.
    pub gossip_interval: Duration,
    /// A member that heard nothing from the site for this long stops serving.
    pub lease: Duration,
    /// A member unreachable this long is left out of replication (longer than `lease`, so
    /// it has stopped serving by then).
    pub exclusion_timeout: Duration,
    /// How long one replication or forwarding call may take.
    pub call_timeout: Duration,
    /// How long a starting node waits for a ready member before the site's first node
    /// is chosen among those starting.
    pub discovery: Duration,
    /// How often a ready member compares its copy with the others' ([`repair`]).
    pub repair_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            gossip_interval: Duration::from_millis(100),
            lease: Duration::from_millis(1_500),
            exclusion_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(2),
            discovery: Duration::from_secs(2),
            repair_interval: Duration::from_secs(30),
        }
    }
}

/// A member a write must reach, as it was when the write began.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Node name.
    pub name: Arc<str>,
    /// Its generation.
    pub generation: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its gRPC address.
    pub address: String,
}

impl Target {
    /// The target a member is.
    pub fn of(member: &Member) -> Target {
        Target {
            name: member.name.clone(),
            generation: member.generation,
            epoch: member.epoch,
            address: member.address.clone(),
        }
    }

    /// The target a member named in a `ConfirmJoin` is.
    pub fn of_known(known: v1::KnownMember) -> Target {
        Target {
            name: known.node.as_str().into(),
            generation: known.generation,
            epoch: known.epoch,
            address: known.address,
        }
    }

    /// This target as named in a `ConfirmJoin`.
    pub fn to_known(&self) -> v1::KnownMember {
        v1::KnownMember {
            node: self.name.to_string(),
            generation: self.generation,
            address: self.address.clone(),
            epoch: self.epoch,
        }
    }

    fn suspicion(&self) -> Suspicion {
        Suspicion {
            name: self.name.clone(),
            generation: self.generation,
            epoch: self.epoch,
        }
    }
}

/// A member left out of replication in one of its epochs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Suspicion {
    /// Node name.
    pub name: Arc<str>,
    /// Its generation.
    pub generation: u64,
    /// The epoch it was left out in.
    pub epoch: u64,
}

/// How forwarding retries while the site agrees on a key's primary.
const FORWARD_RETRY: Backoff = Backoff {
    initial_delay: Duration::from_millis(20),
    max_delay: Duration::from_millis(200),
    max_attempts: 8,
};

/// How a primary retries a member that did not take a call, until it answers or is left
/// out (the exclusion timeout ends the retries, not a count).
const APPLY_RETRY: Backoff = Backoff {
    initial_delay: Duration::from_millis(20),
    max_delay: Duration::from_millis(320),
    max_attempts: u32::MAX,
};

/// This node's part in its site.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// This node: name, generation, address (its state is in `state`).
    me: Member,
    store: Store,
    timing: Timing,
    view: watch::Receiver<View>,
    state: watch::Sender<MemberState>,
    epoch: AtomicU64,
    peers: Peers,
    /// The sender task of each member written to.
    senders: Mutex<HashMap<Target, Sender>>,
    max_message_bytes: usize,
    /// Joining nodes that asked for every write.
    joiners: Mutex<HashMap<Arc<str>, Target>>,
    /// Members left out of replication, with when.
    suspects: Mutex<HashMap<Suspicion, Instant>>,
    /// Members left out that may still serve, each until when at the latest; writes are
    /// acknowledged only once there are none ([`Cluster::await_fences`]).
    fences: Mutex<Vec<(Target, Instant)>>,
    /// How many `fences` there are, read without the lock on every write.
    fence_count: AtomicUsize,
    /// The epoch this node was last seen suspected in (by the membership task), or
    /// `u64::MAX`.
    suspected_in: AtomicU64,
    /// Writes hold it shared while they replicate and apply; a joiner's confirmation takes
    /// it exclusively, so it returns only once writes that did not include it are done.
    write_barrier: Arc<AsyncRwLock<()>>,
    /// Keys of each cache that came by replication while this node was not ready:
    /// writes its catch-up copy may not have seen at any donor, never dropped as missing.
    arrived: Mutex<HashMap<String, HashSet<Bytes>>>,
    /// Milliseconds (monotonic, since `started`) when this node last heard from the site.
    heard_ms: AtomicU64,
    started: Instant,
    /// Whether other nodes were named to it (seeds): if so, a node that finds nobody waits
    /// a while before starting the site on its own.
    has_seeds: bool,
}

impl Cluster {
    /// This node's part in a site whose view `view` follows; it starts as joining.
    pub fn new(
        me: Member,
        store: Store,
        timing: Timing,
        view: watch::Receiver<View>,
        max_message_bytes: usize,
        has_seeds: bool,
        tls: Option<ClientTls>,
    ) -> Cluster {
        let (state, _) = watch::channel(MemberState::Joining);
        Cluster {
            inner: Arc::new(Inner {
                me,
                store,
                timing,
                view,
                state,
                epoch: AtomicU64::new(0),
                peers: Peers::new(max_message_bytes, tls),
                senders: Mutex::new(HashMap::new()),
                max_message_bytes,
                joiners: Mutex::new(HashMap::new()),
                suspects: Mutex::new(HashMap::new()),
                fences: Mutex::new(Vec::new()),
                fence_count: AtomicUsize::new(0),
                suspected_in: AtomicU64::new(u64::MAX),
                write_barrier: Arc::new(AsyncRwLock::new(())),
                arrived: Mutex::new(HashMap::new()),
                heard_ms: AtomicU64::new(0),
                started: Instant::now(),
                has_seeds,
            }),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.me.name
    }

    /// This node as a member, with its current state and epoch.
    pub fn me(&self) -> Member {
        let state = *self.inner.state.borrow();
        Member {
            state,
            says_ready: state == MemberState::Ready,
            epoch: self.inner.epoch.load(Ordering::Acquire),
            slot: self.inner.store.clock().slot(),
            ..self.inner.me.clone()
        }
    }

    /// The site as this node sees it.
    pub fn view(&self) -> View {
        self.inner.view.borrow().clone()
    }

    /// The site as this node sees it, to watch.
    pub fn watch_view(&self) -> watch::Receiver<View> {
        self.inner.view.clone()
    }

    /// The other ready members, as this node sees them.
    pub fn other_ready_members(&self) -> Vec<Member> {
        self.inner
            .view
            .borrow()
            .ready()
            .filter(|m| m.name != self.inner.me.name)
            .cloned()
            .collect()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Timing settings.
    pub fn timing(&self) -> &Timing {
        &self.inner.timing
    }

    /// This node's state, to watch.
    pub fn state(&self) -> watch::Receiver<MemberState> {
        self.inner.state.subscribe()
    }

    pub(crate) fn set_state(&self, state: MemberState) {
        let previous = self.inner.state.send_replace(state);
        if previous != state {
            info!(from = previous.as_str(), to = state.as_str(), "node state");
        }
        if state == MemberState::Ready {
            // Caught up: what arrived meanwhile no longer needs telling apart.
            self.inner.arrived.lock().clear();
        }
    }

    /// Notes keys of `cache` about to be applied by replication, if this node is catching
    /// up: a write in flight while a donor was copied may be here and not yet there, and
    /// must not be dropped as a key the donors no longer have.
    pub(crate) fn note_arrivals<'a>(&self, cache: &str, keys: impl Iterator<Item = &'a Bytes>) {
        if *self.inner.state.borrow() == MemberState::Ready {
            return;
        }
        let mut arrived = self.inner.arrived.lock();
        let noted = match arrived.get_mut(cache) {
            Some(noted) => noted,
            None => arrived.entry(cache.to_string()).or_default(),
        };
        noted.extend(keys.cloned());
    }

    /// Whether `key` of `cache` came by replication since this node was last ready.
    pub(crate) fn arrived(&self, cache: &str, key: &Bytes) -> bool {
        self.inner
            .arrived
            .lock()
            .get(cache)
            .is_some_and(|noted| noted.contains(key))
    }

    /// Starts a catch-up: a new epoch, so suspicions from before it no longer count and
    /// suspicions during it do.
    pub(crate) fn begin_catch_up(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Records that a member suspects this node in `epoch` (from gossip).
    pub(crate) fn suspected_in(&self, epoch: u64) {
        self.inner.suspected_in.store(epoch, Ordering::Release);
    }

    /// Whether a member suspects this node in its current epoch: it was left out of a
    /// write since its catch-up began.
    pub fn is_suspected(&self) -> bool {
        self.inner.suspected_in.load(Ordering::Acquire) == self.inner.epoch.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Records that the site was heard from now.
    pub(crate) fn heard(&self) {
        self.inner.heard_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Whether other nodes were named to this one.
    pub fn has_seeds(&self) -> bool {
        self.inner.has_seeds
    }

    /// Whether anything but this node is in the view.
    pub fn has_peers(&self) -> bool {
        self.inner
            .view
            .borrow()
            .members
            .iter()
            .any(|m| m.name != self.inner.me.name)
    }

    /// Whether this node decides its site's state of peer sites: the ready member with the
    /// lowest name in its view, while it serves (one at a time once views agree; two for
    /// a moment at worst, whose changes the site then orders by epoch and name).
    pub fn decides_site_state(&self) -> bool {
        self.serving()
            && self
                .decider()
                .is_some_and(|decider| decider.name == self.me().name)
    }

    /// The member that decides the site's state of peer sites, in this node's view.
    pub fn decider(&self) -> Option<Member> {
        self.view()
            .ready()
            .min_by(|a, b| a.name.cmp(&b.name))
            .cloned()
    }

    /// Whether this node serves requests: ready, and (unless alone) it heard from the site
    /// within the lease. A node that was frozen notices here before anything else runs.
    pub fn serving(&self) -> bool {
        if *self.inner.state.borrow() != MemberState::Ready {
            return false;
        }
        if !self.has_peers() {
            return true;
        }
        let silent = self
            .now_ms()
            .saturating_sub(self.inner.heard_ms.load(Ordering::Acquire));
        silent <= self.inner.timing.lease.as_millis() as u64
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// Members a primary's writes must reach: the other ready members and the joiners
    /// that asked (even if gossip does not show them at the moment, or shows an older
    /// start of them), minus suspects.
    fn targets(&self) -> Vec<Target> {
        let view = self.inner.view.borrow();
        let suspects = self.inner.suspects.lock();
        let joiners = self.inner.joiners.lock();
        let mut targets: Vec<Target> = Vec::new();
        let candidates = view
            .ready()
            .map(Target::of)
            .chain(joiners.values().cloned());
        for target in candidates {
            if target.name == self.inner.me.name || suspects.contains_key(&target.suspicion()) {
                continue;
            }
            // A node both in the view and among the joiners is the newer of the two (a
            // restarted node the view still shows as it was).
            match targets.iter_mut().find(|t| t.name == target.name) {
                Some(known)
                    if (target.generation, target.epoch) > (known.generation, known.epoch) =>
                {
                    *known = target;
                }
                Some(_) => {}
                None => targets.push(target),
            }
        }
        targets
    }

    /// A joining node asks for every write from now on; returns, once the writes under
    /// way without it are done, the other joiners in the view that asked before it.
    pub async fn confirm_joiner(&self, joiner: Target) -> Vec<Target> {
        let name = joiner.name.clone();
        let (generation, epoch) = (joiner.generation, joiner.epoch);
        let others = {
            let mut joiners = self.inner.joiners.lock();
            joiners.insert(name.clone(), joiner);
            let view = self.inner.view.borrow();
            joiners
                .values()
                .filter(|other| other.name != name && view.member(&other.name).is_some())
                .cloned()
                .collect()
        };
        drop(self.inner.write_barrier.write().await);
        info!(joiner = %name, generation, epoch, "joiner confirmed");
        others
    }

    /// While catching up, this node confirmed `member` (ready, or catching up too): once
    /// ready, it sends it every write, whether or not its view shows it ready yet.
    pub fn adopt_joiner(&self, member: Target) {
        if member.name != self.inner.me.name {
            self.inner
                .joiners
                .lock()
                .insert(member.name.clone(), member);
        }
    }

    /// Forgets joiners that are ready (the ready set includes them now) or replaced by a
    /// newer generation; a joiner missing from the view for a moment stays (if it is
    /// really gone, replicating to it fails and it is suspected), and so does one newer
    /// than the view's member of its name (a restarted node whose new start gossip has
    /// not brought yet: forgetting it would leave it out of writes it is owed). Forgets
    /// suspicions the
    /// suspected node has moved past (a newer generation or epoch), or that are an hour
    /// old.
    pub(crate) fn tidy(&self, view: &View) {
        let mut joiners = self.inner.joiners.lock();
        joiners.retain(|name, joiner| match view.member(name) {
            Some(member) => {
                joiner.generation > member.generation
                    || (joiner.generation == member.generation && !member.is_ready())
            }
            None => true,
        });
        // A sender whose member moved on ends once the writes it holds are answered.
        self.inner.senders.lock().retain(|target, _| {
            view.member(&target.name)
                .is_some_and(|member| Target::of(member) == *target)
                || joiners.get(&target.name) == Some(target)
        });
        drop(joiners);
        self.inner.suspects.lock().retain(|suspicion, since| {
            let moved_on = view
                .member(&suspicion.name)
                .is_some_and(|m| (m.generation, m.epoch) > (suspicion.generation, suspicion.epoch));
            !moved_on && since.elapsed() < Duration::from_secs(3_600)
        });
    }

    /// Suspicions this node holds, to gossip.
    pub(crate) fn suspects(&self) -> Vec<Suspicion> {
        self.inner.suspects.lock().keys().cloned().collect()
    }

    /// Leaves `target` out of replication and says so in gossip: it must catch up before
    /// it serves again. Unless it is gone (`may_serve` false: its port is closed), it may
    /// serve until it hears so: it is fenced ([`Cluster::await_fences`]).
    fn suspect(&self, target: &Target, reason: &str, may_serve: bool) {
        let now = Instant::now();
        if self
            .inner
            .suspects
            .lock()
            .insert(target.suspicion(), now)
            .is_none()
        {
            warn!(member = %target.name, generation = target.generation, epoch = target.epoch, reason, "member left out of replication");
            self.inner.peers.forget(&target.address);
            if may_serve {
                // It hears the suspicion within a few gossip rounds if it hears the site
                // at all; if it does not, its lease runs out.
                let timing = self.inner.timing;
                let until = now + timing.lease + timing.gossip_interval * 5;
                let mut fences = self.inner.fences.lock();
                fences.push((target.clone(), until));
                self.inner
                    .fence_count
                    .store(fences.len(), Ordering::Release);
            }
        }
    }

    /// Waits until no member left out may still serve: each fenced member says in gossip
    /// that it is no longer ready (or it restarted, or caught up again), or its time is
    /// up. Every write waits here before it is acknowledged, so no member answers a read
    /// with a version older than an acknowledged write.
    async fn await_fences(&self) {
        if self.inner.fence_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut view = self.inner.view.clone();
        loop {
            let next = {
                let current = view.borrow_and_update();
                let mut fences = self.inner.fences.lock();
                let now = Instant::now();
                fences.retain(|(target, until)| {
                    now < *until
                        && current.members.iter().all(|m| {
                            m.name != target.name
                                || (m.says_ready
                                    && (m.generation, m.epoch) <= (target.generation, target.epoch))
                        })
                });
                self.inner
                    .fence_count
                    .store(fences.len(), Ordering::Release);
                fences.iter().map(|(_, until)| *until).min()
            };
            let Some(until) = next else { return };
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// The sender task writing to `target`, started on first use.
    fn sender(&self, target: &Target) -> Sender {
        self.inner
            .senders
            .lock()
            .entry(target.clone())
            .or_insert_with(|| {
                let cluster = Arc::downgrade(&self.inner);
                Sender::start(cluster, target.clone(), self.inner.max_message_bytes)
            })
            .clone()
    }

    /// Sends changes of one cache to one member until it answers, is gone, or has been
    /// unreachable for the exclusion timeout. `None` means "left out".
    async fn apply_on(
        &self,
        target: &Target,
        link: &ApplyLink,
        request: v1::ApplyRequest,
    ) -> Option<v1::ApplyResponse> {
        let address = target.address.as_str();
        let timing = self.inner.timing;
        let first_failure = Instant::now();
        let call = v1::ApplyStreamRequest {
            id: 0,
            apply: Some(request),
        };
        // Ok: answered, or left out (`None`); Err: try again.
        let attempt = || async {
            let result = match self.inner.peers.client(address) {
                Ok(client) => link.call(client, &call, timing.call_timeout).await,
                Err(error) => Err(tonic::Status::unavailable(error.to_string())),
            };
            match result {
                Ok(response) => Ok(Some(response)),
                Err(status) if refused(&status) => {
                    self.suspect(target, "its port is closed", false);
                    Ok(None)
                }
                // Gone from the view, or unreachable too long: left out, and told so (if
                // it comes back it must catch up first).
                Err(_) if self.inner.view.borrow().member(&target.name).is_none() => {
                    self.suspect(target, "gone from the site's view", true);
                    Ok(None)
                }
                Err(status) if first_failure.elapsed() >= timing.exclusion_timeout => {
                    self.suspect(target, status.message(), true);
                    Ok(None)
                }
                Err(status) => Err(status),
            }
        };
        APPLY_RETRY
            .retry(attempt, |_| true, tokio::time::sleep)
            .await
            .unwrap_or_else(|status| {
                self.suspect(target, status.message(), true);
                None
            })
    }

    /// Runs a write on `key`'s primary, retrying while the site settles who that is.
    async fn forward_write(
        &self,
        cache: &str,
        request: &WriteRequest,
        request_id: Option<&str>,
    ) -> Result<Arc<WriteResult>> {
        let message = codec::encode_write(cache, request, request_id);
        // Ok: the write's end (run here, whatever it gave, or the primary's answer);
        // Err: not run, and UNAVAILABLE is tried again.
        let attempt = || async {
            match self.view().primary(&request.key).cloned() {
                // The site now says this node: run it here.
                Some(primary) if primary.name == self.inner.me.name => Ok(self
                    .inner
                    .store
                    .write_as_primary(cache, request.clone(), request_id, Driver::OwnTask)
                    .await),
                Some(primary) => self.call_forward(&primary, message.clone()).await.map(Ok),
                None => Err(Error::Unavailable("no ready member in the site".into())),
            }
        };
        FORWARD_RETRY
            .retry(
                attempt,
                |error| matches!(error, Error::Unavailable(_)),
                tokio::time::sleep,
            )
            .await
            .and_then(|ran| ran)
    }

    async fn call_forward(
        &self,
        primary: &Member,
        message: v1::ForwardWriteRequest,
    ) -> Result<Arc<WriteResult>> {
        let address = primary.address.as_str();
        metrics::counter!("sitegrid_writes_forwarded_total").increment(1);
        let timeout = self.inner.timing.call_timeout + self.inner.timing.exclusion_timeout;
        let mut client = self
            .inner
            .peers
            .client(address)
            .map_err(|error| Error::Unavailable(error.to_string()))?;
        let mut call = tonic::Request::new(message);
        call.set_timeout(timeout);
        let response = tokio::time::timeout(timeout, client.forward_write(call))
            .await
            .map_err(|_| {
                Error::Unavailable(format!("the primary {address} did not answer in time"))
            })?;
        match response {
            Ok(response) => {
                let answer = response.into_inner().answer.ok_or(Error::Internal(
                    "a forwarded write came back without an answer",
                ))?;
                Ok(Arc::new(codec::decode_answer(
                    &answer,
                    self.inner.store.services(),
                )?))
            }
            Err(status) if refused(&status) => {
                // Its port is closed: it is gone, whatever gossip says yet.
                self.suspect(&Target::of(primary), "its port is closed", false);
                Err(Error::Unavailable(format!(
                    "the primary {address} is gone: connection refused"
                )))
            }
            Err(status) => Err(status_to_error(status)),
        }
    }
}

/// Whether a failed call shows the member's port is closed (the process is gone): a
/// connection error here, never a status the member sent (its own calls to others may
/// have been refused; that says nothing of its port).
pub(crate) fn refused(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    if source.is_none() {
        return false;
    }
    let mut text = status.message().to_ascii_lowercase();
    while let Some(cause) = source {
        text.push_str(&cause.to_string().to_ascii_lowercase());
        source = cause.source();
    }
    text.contains("connection refused")
}

/// A peer's error status as this node's error: what the caller should do is the same.
fn status_to_error(status: tonic::Status) -> Error {
    match ErrorCode::from_grpc(status.code()) {
        ErrorCode::Aborted => Error::Aborted(status.message().to_string()),
        ErrorCode::InvalidArgument => Error::InvalidArgument(status.message().to_string()),
        ErrorCode::NotFound => Error::UnknownCache(status.message().to_string()),
        _ => Error::Unavailable(format!(
            "a member could not run the write: {}",
            status.message()
        )),
    }
}

#[tonic::async_trait]
impl SiteReplication for Cluster {
    fn is_alone(&self) -> bool {
        !self.has_peers()
    }

    fn is_primary(&self, key: &Bytes) -> bool {
        let view = self.inner.view.borrow();
        match view.primary(key) {
            Some(primary) => primary.name == self.inner.me.name,
            // Nobody is ready: a node alone and ready is; otherwise nobody is.
            None => view.members.len() <= 1 && *self.inner.state.borrow() == MemberState::Ready,
        }
    }

    async fn forward(
        &self,
        cache: &str,
        request: WriteRequest,
        request_id: Option<&str>,
    ) -> Result<Arc<WriteResult>> {
        self.forward_write(cache, &request, request_id).await
    }

    async fn replicate(
        &self,
        cache: &str,
        mutation: &Mutation,
        request_id: Option<&str>,
        answer: Option<&WriteResult>,
    ) -> Result<Replicated> {
        let mut targets = self.targets();
        if targets.is_empty() {
            self.await_fences().await;
            return Ok(Replicated::Done);
        }
        let crash = faults::on(Fault::CrashMidWrite)
            && mutation.key.starts_with(faults::CRASH_MID_WRITE_PREFIX);
        if crash {
            targets.truncate(1);
        }
        let encoded = codec::encode_mutation(mutation, request_id, answer);
        let calls = targets
            .iter()
            .map(|target| (self.sender(target), encoded.clone()))
            .map(|(sender, encoded)| async move { sender.send(cache, encoded).await });
        let mut newest: Option<(Option<Slot>, Option<Arc<WriteResult>>)> = None;
        let mut busy = false;
        let replies = join_all(calls).await;
        if crash {
            warn!("fault crash-mid-write: dying after one member took the write");
            std::process::exit(70);
        }
        for reply in replies {
            let Some(outcome) = reply? else { continue };
            match v1::ApplyResult::try_from(outcome.result) {
                Ok(v1::ApplyResult::Applied | v1::ApplyResult::AlreadyApplied) => {}
                Ok(v1::ApplyResult::Busy) => busy = true,
                Ok(v1::ApplyResult::Conflict) => {
                    let services = self.inner.store.services();
                    let current = if outcome.current.is_empty() {
                        None
                    } else {
                        Some(codec::decode_slot(&outcome.current, services)?)
                    };
                    let recorded = outcome
                        .recorded_answer
                        .map(|answer| codec::decode_answer(&answer, services).map(Arc::new))
                        .transpose()?;
                    let newer = current.as_ref().map_or(0, Slot::version);
                    let known = newest
                        .as_ref()
                        .and_then(|(slot, _)| slot.as_ref())
                        .map_or(0, Slot::version);
                    if newest.is_none() || newer > known || recorded.is_some() {
                        newest = Some((current, recorded));
                    }
                }
                _ => return Err(Error::Internal("a member answered an unknown outcome")),
            }
        }
        Ok(match (newest, busy) {
            (Some((current, recorded)), _) => Replicated::Conflict { current, recorded },
            (None, true) => Replicated::Busy,
            (None, false) => {
                self.await_fences().await;
                Replicated::Done
            }
        })
    }

    async fn replicate_clear(&self, cache: &str, version: Version) -> Result<()> {
        let targets = self.targets();
        let calls = targets.iter().map(|target| async move {
            let (name, address) = (&target.name, &target.address);
            let request = v1::ApplyClearRequest {
                cache: cache.to_string(),
                version,
            };
            let mut client = self
                .inner
                .peers
                .client(address)
                .map_err(|error| Error::Unavailable(error.to_string()))?;
            client
                .apply_clear(request)
                .await
                .map(|_| ())
                .map_err(|status| {
                    Error::Unavailable(format!("{name} did not clear: {}", status.message()))
                })
        });
        join_all(calls)
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    async fn write_guard(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        Some(self.inner.write_barrier.clone().read_owned().await)
    }

    async fn share_touches(&self, cache: &str, touches: &[Touch]) {
        let request = v1::TouchRequest {
            cache: cache.to_string(),
            touched: codec::encode_touches(touches),
        };
        let members = self.other_ready_members();
        let calls = members.iter().map(|member| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(self.inner.timing.call_timeout);
            async move {
                let sent = match self.inner.peers.client(&member.address) {
                    Ok(mut client) => client.touch(call).await.map(|_| ()),
                    Err(error) => Err(tonic::Status::unavailable(error.to_string())),
                };
                if let Err(status) = sent {
                    debug!(member = %member.name, error = status.message(), "reads not shared");
                }
            }
        });
        join_all(calls).await;
    }
}

#[cfg(test)]
mod tests {
    use super::refused;

    #[test]
    fn only_a_refused_connection_of_its_own_says_a_member_is_gone() {
        let closed = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(refused(&tonic::Status::from_error(Box::new(closed))));
        // The member answered: a call of its own (a sync backup to a peer site) was
        // refused. Its port is open.
        let answered = tonic::Status::unavailable(
            "the sync backup to site site2 failed (tcp connect error: Connection refused)",
        );
        assert!(!refused(&answered));
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(!refused(&tonic::Status::from_error(Box::new(timed_out))));
    }
}
