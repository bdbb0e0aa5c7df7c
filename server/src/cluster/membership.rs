//! Gossip membership with chitchat.
//!
//! Every node publishes, in its chitchat state: `grpc` (its gRPC address), `state`
//! (joining / ready / isolated), `epoch`, `data_version`, `slot` (its part of the versions it
//! assigns), one `suspect/<name>/<gen>/<epoch>`
//! key per member it left out of replication, and one `site/<peer>` key per peer site
//! with the site's state of it as this node holds it (nodes adopt the newest they see). The chitchat cluster id is the site's name,
//! so two sites never mix (it is not a secret: bind gossip to the site's private
//! interface). Every gossip interval the [`Membership`] task:
//! - rebuilds the [`View`] from the live nodes and their keys;
//! - notes whether any peer's heartbeat moved (the site was heard from: the lease);
//! - isolates this node if it was frozen longer than the lease, or if a member suspects
//!   it (it must catch up before it serves again); a member any live member suspects is
//!   isolated in the view of all;
//! - publishes this node's own keys.
//!
//! With mutual TLS, only nodes that proved who they are over gRPC are believed
//! ([`verify`](super::verify)); the others' gossip is ignored until they have.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::watch;
use tracing::{info, warn};

use sitegrid_relay::{GOSSIP_PREFIX, SiteStates};

use crate::cluster::verify::{Claim, Verifier};
use crate::cluster::view::NO_SLOT;
use crate::cluster::{Cluster, Member, MemberState, Suspicion, Timing, View};
use crate::error::{Error, Result};
use crate::faults::{self, Fault};

const KEY_GRPC: &str = "grpc";
const KEY_STATE: &str = "state";
const KEY_EPOCH: &str = "epoch";
const KEY_DATA_VERSION: &str = "data_version";
const KEY_SLOT: &str = "slot";
const SUSPECT_PREFIX: &str = "suspect/";

/// Gossip membership of one node.
pub struct Membership {
    handle: ChitchatHandle,
    view: watch::Sender<View>,
    verifier: Verifier,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}

/// Where and how a node gossips.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// The site's name: nodes of other sites are never members.
    pub site: String,
    /// Address to bind and advertise.
    pub listen: SocketAddr,
    /// Other nodes to contact first (addresses or DNS names, with ports).
    pub seeds: Vec<String>,
    /// Believe a gossiping node only once it proved its identity over gRPC (mutual TLS
    /// is configured, so it can).
    pub verify_identities: bool,
}

impl Membership {
    /// Starts gossiping as `me`; the view follows on the returned receiver.
    pub async fn start(
        me: &Member,
        gossip: &GossipSettings,
        timing: &Timing,
    ) -> Result<(Membership, watch::Receiver<View>)> {
        let chitchat_id = ChitchatId::new(me.name.to_string(), me.generation, gossip.listen);
        let interval = timing.gossip_interval;
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: format!("sitegrid/{}", gossip.site),
            gossip_interval: interval,
            listen_addr: gossip.listen,
            seed_nodes: gossip.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1_000,
                max_interval: interval * 20,
                initial_interval: interval * 2,
                dead_node_grace_period: std::time::Duration::from_secs(3_600),
            },
            marked_for_deletion_grace_period: std::time::Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let keys = vec![
            (KEY_GRPC.to_string(), me.address.clone()),
            (KEY_STATE.to_string(), me.state.as_str().to_string()),
            (KEY_EPOCH.to_string(), me.epoch.to_string()),
            (KEY_DATA_VERSION.to_string(), me.data_version.to_string()),
            (KEY_SLOT.to_string(), me.slot.to_string()),
        ];
        let handle = spawn_chitchat(config, keys, &UdpTransport)
            .await
            .map_err(|error| Error::Io {
                context: format!("cannot gossip on {} (node.gossip)", gossip.listen),
                source: std::io::Error::other(error.to_string()),
            })?;
        let (view, receiver) = watch::channel(View {
            members: vec![me.clone()],
        });
        let verifier = Verifier::new(&gossip.site, gossip.verify_identities);
        Ok((
            Membership {
                handle,
                view,
                verifier,
            },
            receiver,
        ))
    }

    /// Follows the site every gossip interval until `shutdown` turns true.
    pub async fn run(
        self,
        cluster: Cluster,
        sites: SiteStates,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let timing = *cluster.timing();
        let mut ticks = tokio::time::interval(timing.gossip_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeats: HashMap<(Arc<str>, u64), u64> = HashMap::new();
        let mut last_tick = Instant::now();
        let mut published: Vec<(String, String)> = Vec::new();
        cluster.heard();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let frozen = last_tick.elapsed() > timing.lease;
            last_tick = Instant::now();
            // Before anything refreshes the lease: a node that was frozen may have missed
            // writes, so it stops serving first.
            if frozen && cluster.has_peers() && cluster.me().state == MemberState::Ready {
                warn!("this node was frozen longer than its lease: catching up before serving");
                cluster.set_state(MemberState::Isolated);
            }
            let me = cluster.me();
            let verifier = &self.verifier;
            let (view, suspected, heard, claims) = self
                .handle
                .with_chitchat(|chitchat| {
                    publish(
                        chitchat.self_node_state(),
                        &me,
                        &cluster.suspects(),
                        &sites,
                        &mut published,
                    );
                    let (trusted, claims) = trusted_nodes(chitchat, &me, verifier);
                    adopt_site_states(chitchat, &trusted, &sites);
                    let (view, suspected, heard) =
                        observe(chitchat, &me, &trusted, &mut heartbeats);
                    (view, suspected, heard, claims)
                })
                .await;
            verifier.check(&cluster, claims);
            if me.state == MemberState::Ready
                && let Some(other) = view.members.iter().find(|m| {
                    m.name != me.name && m.is_ready() && m.slot == me.slot && m.name < me.name
                })
            {
                // Two ready members with one slot could assign the same version: the one
                // with the higher name takes another slot before it serves again.
                warn!(slot = me.slot, other = %other.name, "another ready member has this node's slot: taking another");
                cluster.set_state(MemberState::Isolated);
            }
            if suspected {
                cluster.suspected_in(me.epoch);
                if me.state == MemberState::Ready {
                    warn!("a member left this node out of replication: catching up before serving");
                    cluster.set_state(MemberState::Isolated);
                }
            }
            if heard {
                cluster.heard();
            }
            let published = view.clone();
            let changed = self.view.send_if_modified(|current| {
                let changed = *current != view;
                if changed {
                    let names: Vec<String> = view
                        .members
                        .iter()
                        .map(|m| format!("{}:{}", m.name, m.state.as_str()))
                        .collect();
                    info!(members = ?names, "site view");
                    *current = view;
                }
                changed
            });
            if changed && faults::on(Fault::TidyLate) {
                tokio::time::sleep(faults::TIDY_LATE_DELAY).await;
            }
            // Only once the view is out: a joiner the new view shows ready is then a
            // target as a ready member before it stops being one as a joiner. Tidied
            // first, a write in between would read the old view (still joining) and no
            // joiner, and be acknowledged without it.
            cluster.tidy(&published);
        }
        if let Err(error) = self.handle.shutdown().await {
            warn!(error = %error, "gossip did not stop cleanly");
        }
        info!("membership stopped");
    }
}

/// The gossip key of a suspicion of member `name`, generation `generation`, epoch `epoch`.
fn suspicion_key(name: &str, generation: u64, epoch: u64) -> String {
    format!("{SUSPECT_PREFIX}{name}/{generation}/{epoch}")
}

/// Writes this node's keys into its chitchat state where they changed.
fn publish(
    state: &mut chitchat::NodeState,
    me: &Member,
    suspects: &[Suspicion],
    sites: &SiteStates,
    published: &mut Vec<(String, String)>,
) {
    let mut wanted = vec![
        (KEY_STATE.to_string(), me.state.as_str().to_string()),
        (KEY_EPOCH.to_string(), me.epoch.to_string()),
        (KEY_SLOT.to_string(), me.slot.to_string()),
    ];
    wanted.extend(sites.gossip());
    for suspicion in suspects {
        wanted.push((
            suspicion_key(&suspicion.name, suspicion.generation, suspicion.epoch),
            "1".to_string(),
        ));
    }
    for (key, value) in &wanted {
        if state.get(key) != Some(value.as_str()) {
            state.set(key, value);
        }
    }
    for (key, _) in published.iter() {
        if key.starts_with(SUSPECT_PREFIX) && !wanted.iter().any(|(k, _)| k == key) {
            state.delete(key);
        }
    }
    *published = wanted;
}

/// The live nodes other than `me` whose gossip is believed, and every live node's claim
/// (name, generation, gRPC address) for the verifier.
fn trusted_nodes(
    chitchat: &chitchat::Chitchat,
    me: &Member,
    verifier: &Verifier,
) -> (Vec<ChitchatId>, Vec<Claim>) {
    let mut trusted = Vec::new();
    let mut claims = Vec::new();
    for id in chitchat.live_nodes() {
        if *id.node_id == *me.name {
            continue;
        }
        let Some(address) = chitchat
            .node_state(id)
            .and_then(|state| state.get(KEY_GRPC))
        else {
            continue;
        };
        if verifier.trusts(&id.node_id, id.generation_id, address) {
            trusted.push(id.clone());
        }
        claims.push((
            Arc::from(&*id.node_id),
            id.generation_id,
            address.to_string(),
        ));
    }
    (trusted, claims)
}

/// Adopts the peer site states the `trusted` nodes publish, where newer.
fn adopt_site_states(chitchat: &chitchat::Chitchat, trusted: &[ChitchatId], sites: &SiteStates) {
    for id in trusted {
        let Some(state) = chitchat.node_state(id) else {
            continue;
        };
        for (key, value) in state.key_values() {
            if key.starts_with(GOSSIP_PREFIX) {
                sites.adopt_gossiped(key, value);
            }
        }
    }
}

/// The view from the `trusted` live nodes, whether any member suspects `me` (its current
/// generation and epoch), and whether any peer's heartbeat moved since the last call.
fn observe(
    chitchat: &chitchat::Chitchat,
    me: &Member,
    trusted: &[ChitchatId],
    heartbeats: &mut HashMap<(Arc<str>, u64), u64>,
) -> (View, bool, bool) {
    // This node's own suspicions count too.
    let live: Vec<ChitchatId> = trusted
        .iter()
        .cloned()
        .chain(std::iter::once(chitchat.self_chitchat_id().clone()))
        .collect();
    // Suspicions gossiped by any live member, this node's own included: the site leaves a
    // suspected member out as one.
    let suspicions: HashSet<String> = live
        .iter()
        .filter_map(|id| chitchat.node_state(id))
        .flat_map(|state| {
            state
                .key_values()
                .filter(|(key, _)| key.starts_with(SUSPECT_PREFIX))
                .map(|(key, _)| key.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let suspected = suspicions.contains(&suspicion_key(&me.name, me.generation, me.epoch));
    let mut members = vec![me.clone()];
    let mut heard = false;
    for id in &live {
        if *id.node_id == *me.name {
            continue;
        }
        let Some(state) = chitchat.node_state(id) else {
            continue;
        };
        let key = (Arc::<str>::from(&*id.node_id), id.generation_id);
        let beat = u64::from(state.heartbeat());
        if heartbeats
            .insert(key, beat)
            .is_none_or(|previous| beat > previous)
        {
            heard = true;
        }
        let (Some(address), Some(gossiped)) = (
            state.get(KEY_GRPC),
            state.get(KEY_STATE).and_then(MemberState::parse),
        ) else {
            continue;
        };
        let epoch = state
            .get(KEY_EPOCH)
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        let member_state =
            if suspicions.contains(&suspicion_key(&id.node_id, id.generation_id, epoch)) {
                MemberState::Isolated
            } else {
                gossiped
            };
        members.push(Member {
            name: Arc::from(&*id.node_id),
            generation: id.generation_id,
            epoch,
            address: address.to_string(),
            state: member_state,
            says_ready: gossiped == MemberState::Ready,
            data_version: state
                .get(KEY_DATA_VERSION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            slot: state
                .get(KEY_SLOT)
                .and_then(|v| v.parse().ok())
                .unwrap_or(NO_SLOT),
        });
    }
    // A node seen twice (restarted, the old generation not yet dead) counts once: the
    // newest generation.
    members.sort_by(|a, b| a.name.cmp(&b.name).then(b.generation.cmp(&a.generation)));
    members.dedup_by(|later, first| later.name == first.name);
    heartbeats.retain(|(name, generation), _| {
        live.iter()
            .any(|id| *id.node_id == **name && id.generation_id == *generation)
    });
    (View { members }, suspected, heard)
}
