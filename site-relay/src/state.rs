//! This site's state of each peer site (`online`, `offline`, `resyncing`), one for all
//! caches, with an epoch.
//!
//! Any node may change a peer's state (its site's decider after heartbeats, or an
//! operator's command on any node); the change gets the next epoch and spreads by gossip:
//! every node publishes the states it holds and adopts any it sees with a higher
//! `(epoch, changed_by)`, so all nodes of a site end up holding the same state and epoch,
//! and a node that joins adopts it. States are kept on disk, so a restarted site still
//! knows which peers it took offline.
//!
//! A state also says whether this site is *fenced* with respect to the peer: it must not
//! take writes to caches with sync backups, because the peer holds it offline, or because
//! the peer stopped answering and this site has no grant to take it offline.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sitegrid_proto::v1;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::RelayError;
use crate::outbox::{now_ms, outbox_error};

/// Gossip keys of peer states start with this, followed by the peer's name.
pub const GOSSIP_PREFIX: &str = "site/";

/// Separates the fields of a state in gossip and on disk.
const SEPARATOR: char = '\u{1f}';

/// What this site does with a peer site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Backups go to it.
    Online,
    /// Taken offline: backups don't go to it; keys written are recorded for it.
    Offline,
    /// Being resynchronised; backups go to it but don't wait for it.
    Resyncing,
}

impl Mode {
    /// Its name in status output and gossip.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Online => "online",
            Mode::Offline => "offline",
            Mode::Resyncing => "resyncing",
        }
    }

    fn parse(text: &str) -> Option<Mode> {
        match text {
            "online" => Some(Mode::Online),
            "offline" => Some(Mode::Offline),
            "resyncing" => Some(Mode::Resyncing),
            _ => None,
        }
    }

    /// As sent to the peer in a heartbeat answer.
    pub fn to_proto(self) -> v1::PeerSiteState {
        match self {
            Mode::Online => v1::PeerSiteState::Online,
            Mode::Offline => v1::PeerSiteState::Offline,
            Mode::Resyncing => v1::PeerSiteState::Resyncing,
        }
    }

    /// From a heartbeat answer (`None`: not said, an older site).
    pub fn from_proto(state: v1::PeerSiteState) -> Option<Mode> {
        match state {
            v1::PeerSiteState::Online => Some(Mode::Online),
            v1::PeerSiteState::Offline => Some(Mode::Offline),
            v1::PeerSiteState::Resyncing => Some(Mode::Resyncing),
            v1::PeerSiteState::Unspecified => None,
        }
    }
}

/// This site's state of one peer site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// What is done with the peer.
    pub mode: Mode,
    /// Grows with every change.
    pub epoch: u64,
    /// When it changed last (Unix ms).
    pub since_ms: u64,
    /// The node that made the last change.
    pub changed_by: String,
    /// Why this site takes no writes to caches with sync backups because of this peer;
    /// `None`: it takes them.
    pub fenced: Option<String>,
    /// Why the last change was made.
    pub reason: String,
}

impl PeerState {
    fn initial() -> PeerState {
        PeerState {
            mode: Mode::Online,
            epoch: 0,
            since_ms: 0,
            changed_by: String::new(),
            fenced: None,
            reason: "configured".into(),
        }
    }

    fn encode(&self) -> String {
        [
            self.mode.as_str(),
            &self.epoch.to_string(),
            &self.since_ms.to_string(),
            &self.changed_by,
            self.fenced.as_deref().unwrap_or(""),
            &self.reason,
        ]
        .join(&SEPARATOR.to_string())
    }

    fn decode(text: &str) -> Option<PeerState> {
        let mut fields = text.splitn(6, SEPARATOR);
        let mode = Mode::parse(fields.next()?)?;
        let epoch = fields.next()?.parse().ok()?;
        let since_ms = fields.next()?.parse().ok()?;
        let changed_by = fields.next()?.to_string();
        let fenced = Some(fields.next()?.to_string()).filter(|f| !f.is_empty());
        let reason = fields.next()?.to_string();
        Some(PeerState {
            mode,
            epoch,
            since_ms,
            changed_by,
            fenced,
            reason,
        })
    }

    /// Whether `self` replaces `other`: a higher epoch, or the same epoch decided by a
    /// node with a higher name (two nodes deciding at once end up agreeing).
    fn supersedes(&self, other: &PeerState) -> bool {
        (self.epoch, &self.changed_by) > (other.epoch, &other.changed_by)
    }
}

/// The states of every peer site, shared by a node's relay and its gossip. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct SiteStates {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// This node's name.
    node: String,
    /// Shared, so a write's look at a peer's state copies nothing.
    states: Mutex<HashMap<String, Arc<PeerState>>>,
    tree: Option<sled::Tree>,
    /// Counts changes; wakes whoever follows them.
    changes: watch::Sender<u64>,
}

impl SiteStates {
    /// The states of `peers` kept in `tree` (none: in memory only), as node `node`.
    pub(crate) fn open(
        node: &str,
        peers: &[String],
        tree: Option<sled::Tree>,
    ) -> Result<SiteStates, RelayError> {
        let mut states: HashMap<String, Arc<PeerState>> = peers
            .iter()
            .map(|peer| (peer.clone(), Arc::new(PeerState::initial())))
            .collect();
        if let Some(tree) = &tree {
            for item in tree.iter() {
                let (peer, value) = item.map_err(outbox_error)?;
                let peer = String::from_utf8_lossy(&peer).into_owned();
                let decoded = std::str::from_utf8(&value).ok().and_then(PeerState::decode);
                match (states.get_mut(&peer), decoded) {
                    (Some(state), Some(stored)) => *state = Arc::new(stored),
                    (Some(_), None) => warn!(site = %peer, "a stored site state is unreadable"),
                    // A peer no longer configured.
                    (None, _) => {}
                }
            }
        }
        Ok(SiteStates {
            inner: Arc::new(Inner {
                node: node.to_string(),
                states: Mutex::new(states),
                tree,
                changes: watch::channel(0).0,
            }),
        })
    }

    /// The state of `peer` (online if it is not a peer).
    pub fn get(&self, peer: &str) -> Arc<PeerState> {
        self.inner
            .states
            .lock()
            .get(peer)
            .cloned()
            .unwrap_or_else(|| Arc::new(PeerState::initial()))
    }

    /// Every peer and its state, by name.
    pub fn all(&self) -> Vec<(String, Arc<PeerState>)> {
        let mut all: Vec<_> = self
            .inner
            .states
            .lock()
            .iter()
            .map(|(peer, state)| (peer.clone(), state.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Why this site takes no writes to caches with sync backups, if it does not (the
    /// first fencing peer by name, if several).
    pub fn fenced(&self) -> Option<String> {
        self.all()
            .into_iter()
            .find_map(|(_, state)| state.fenced.clone())
    }

    /// Changes the state of `peer` with `change`; if that changed anything, the state
    /// gets the next epoch and this node as its author. Returns the state after.
    pub fn change(
        &self,
        peer: &str,
        reason: &str,
        change: impl FnOnce(&mut PeerState),
    ) -> Arc<PeerState> {
        let mut states = self.inner.states.lock();
        let Some(state) = states.get_mut(peer) else {
            return Arc::new(PeerState::initial());
        };
        let mut next = PeerState::clone(state);
        change(&mut next);
        if next.mode == state.mode && next.fenced == state.fenced {
            return state.clone();
        }
        next.epoch = state.epoch + 1;
        next.since_ms = now_ms();
        next.changed_by = self.inner.node.clone();
        next.reason = reason.to_string();
        info!(site = %peer, state = next.mode.as_str(), epoch = next.epoch,
            fenced = ?next.fenced, reason, "peer site state changed");
        *state = Arc::new(next);
        self.stored(peer, state);
        state.clone()
    }

    /// Takes `state` of `peer` if it supersedes the one held; whether it did.
    pub fn adopt(&self, peer: &str, state: PeerState) -> bool {
        let mut states = self.inner.states.lock();
        let Some(held) = states.get_mut(peer) else {
            return false;
        };
        if !state.supersedes(held) {
            return false;
        }
        info!(site = %peer, state = state.mode.as_str(), epoch = state.epoch,
            by = %state.changed_by, "adopted a peer site state from the site");
        *held = Arc::new(state);
        self.stored(peer, held);
        true
    }

    /// Keeps `state` of `peer` on disk and in metrics, and wakes followers. Called with
    /// the states locked, so the disk takes changes in the order memory did.
    fn stored(&self, peer: &str, state: &PeerState) {
        if let Some(tree) = &self.inner.tree
            && let Err(error) = tree.insert(peer.as_bytes(), state.encode().as_bytes())
        {
            warn!(site = %peer, %error, "cannot store a peer site state");
        }
        metrics::gauge!("sitegrid_site_state_epoch", "site" => peer.to_string())
            .set(state.epoch as f64);
        for mode in [Mode::Online, Mode::Offline, Mode::Resyncing] {
            metrics::gauge!("sitegrid_site_state", "site" => peer.to_string(), "state" => mode.as_str())
                .set(if state.mode == mode { 1.0 } else { 0.0 });
        }
        metrics::gauge!("sitegrid_site_fenced", "site" => peer.to_string())
            .set(if state.fenced.is_some() { 1.0 } else { 0.0 });
        self.inner.changes.send_modify(|count| *count += 1);
    }

    /// The gossip keys and values of every state this node holds.
    pub fn gossip(&self) -> Vec<(String, String)> {
        self.all()
            .into_iter()
            .map(|(peer, state)| (format!("{GOSSIP_PREFIX}{peer}"), state.encode()))
            .collect()
    }

    /// Adopts a state another node gossiped under `key`, if it is one and newer.
    pub fn adopt_gossiped(&self, key: &str, value: &str) {
        if let (Some(peer), Some(state)) =
            (key.strip_prefix(GOSSIP_PREFIX), PeerState::decode(value))
        {
            self.adopt(peer, state);
        }
    }

    /// A receiver woken on every change.
    pub fn follow(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_take_the_next_epoch_and_the_newest_state_is_adopted_everywhere() {
        let peers = vec!["site2".to_string()];
        let a = SiteStates::open("a", &peers, None).unwrap();
        let b = SiteStates::open("b", &peers, None).unwrap();
        let changed = a.change("site2", "no heartbeat", |s| s.mode = Mode::Offline);
        assert_eq!((changed.mode, changed.epoch), (Mode::Offline, 1));
        assert_eq!(
            a.change("site2", "again", |s| s.mode = Mode::Offline).epoch,
            1,
            "no change, no new epoch"
        );
        for (key, value) in a.gossip() {
            b.adopt_gossiped(&key, &value);
        }
        assert_eq!(b.get("site2"), changed);
        // Two nodes changing at once: the higher name wins on both.
        let from_a = a.change("site2", "x", |s| s.fenced = Some("a".into()));
        let from_b = b.change("site2", "y", |s| s.mode = Mode::Resyncing);
        assert_eq!(from_a.epoch, from_b.epoch);
        assert!(!a.adopt("site2", PeerState::clone(&from_a)));
        assert!(a.adopt("site2", PeerState::clone(&from_b)));
        assert!(!b.adopt("site2", PeerState::clone(&from_a)));
        assert_eq!(a.get("site2"), b.get("site2"));
        assert_eq!(a.get("site2").mode, Mode::Resyncing);
    }

    #[test]
    fn states_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let peers = vec!["site2".to_string()];
        let db = sled::open(dir.path()).unwrap();
        let states = SiteStates::open("a", &peers, Some(db.open_tree("s").unwrap())).unwrap();
        let offline = states.change("site2", "operator", |s| s.mode = Mode::Offline);
        drop(states);
        let again = SiteStates::open("a", &peers, Some(db.open_tree("s").unwrap())).unwrap();
        assert_eq!(again.get("site2"), offline);
    }
}
