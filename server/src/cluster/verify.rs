//! Members that proved who they are before their gossip is believed.
//!
//! chitchat's UDP gossip is not authenticated: anyone who can send to the gossip port can
//! claim to be a member, a leaving member, or a suspicion. With mutual TLS configured, a
//! node seen in gossip counts only once it has proved it: this node calls the gRPC
//! address it gossips (`Admin.ClusterStatus`, over TLS that requires a certificate
//! naming the site, signed by the site's CA) and the answer must come from a node of
//! the same name, site and generation. Until then its state, suspicions, peer site
//! states and heartbeats are ignored, so a stranger on the gossip network can't join the
//! view, isolate members or change a site state. Without TLS there is nothing to prove
//! an identity with and every gossiping node is believed (bind gossip to a private
//! interface).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sitegrid_proto::v1;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;

/// How long one proof may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A node as gossip presents it: name, generation, gRPC address.
pub(crate) type Claim = (Arc<str>, u64, String);

/// One start of a node: its name and generation.
type Incarnation = (Arc<str>, u64);

/// The members that proved themselves, and the proofs under way.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    site: Arc<str>,
    /// (name, generation) to the address it proved itself at.
    proven: Arc<Mutex<HashMap<Incarnation, String>>>,
    checking: Arc<Mutex<HashSet<Incarnation>>>,
    enabled: bool,
}

impl Verifier {
    /// A verifier for the nodes of `site`; `enabled` when peers are called over mutual TLS.
    pub(crate) fn new(site: &str, enabled: bool) -> Verifier {
        Verifier {
            site: Arc::from(site),
            proven: Arc::default(),
            checking: Arc::default(),
            enabled,
        }
    }

    /// Whether gossip from `name` (generation `generation`) at `address` is believed.
    pub(crate) fn trusts(&self, name: &str, generation: u64, address: &str) -> bool {
        !self.enabled
            || self
                .proven
                .lock()
                .get(&(Arc::from(name), generation))
                .is_some_and(|proven| proven == address)
    }

    /// Starts proofs of the `claims` not proven and not being proven; forgets proofs of
    /// nodes no longer gossiping.
    pub(crate) fn check(&self, cluster: &Cluster, claims: Vec<Claim>) {
        if !self.enabled {
            return;
        }
        {
            let mut proven = self.proven.lock();
            proven.retain(|(name, generation), _| {
                claims.iter().any(|(n, g, _)| n == name && g == generation)
            });
        }
        for (name, generation, address) in claims {
            if self.trusts(&name, generation, &address)
                || !self.checking.lock().insert((name.clone(), generation))
            {
                continue;
            }
            let verifier = self.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let outcome = verifier.prove(&cluster, &name, generation, &address).await;
                match outcome {
                    Ok(()) => {
                        info!(node = %name, %address, "member proved its identity");
                        verifier
                            .proven
                            .lock()
                            .insert((name.clone(), generation), address);
                    }
                    Err(why) => {
                        metrics::counter!("sitegrid_gossip_unproven_total").increment(1);
                        // A member that is still starting can't answer yet: it is asked
                        // again on the next round.
                        debug!(node = %name, %address, %why, "gossiping node not proven");
                    }
                }
                verifier.checking.lock().remove(&(name, generation));
            });
        }
    }

    /// Asks the node at `address` who it is.
    async fn prove(
        &self,
        cluster: &Cluster,
        name: &str,
        generation: u64,
        address: &str,
    ) -> Result<(), String> {
        let mut admin = cluster
            .peers()
            .admin(address)
            .map_err(|error| error.to_string())?;
        let answer = tokio::time::timeout(
            CHECK_TIMEOUT,
            admin.cluster_status(v1::ClusterStatusRequest {}),
        )
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|status| status.to_string())?
        .into_inner();
        let answered_generation = answer
            .members
            .iter()
            .find(|member| member.node == answer.node)
            .map(|member| member.generation);
        if answer.node != name
            || *answer.site != *self.site
            || answered_generation != Some(generation)
        {
            warn!(claimed = %name, %address, answered = %answer.node, site = %answer.site,
                "a gossiping node's address answers as another node: not believed");
            return Err(format!(
                "{address} answers as {} of site {} (generation {answered_generation:?})",
                answer.node, answer.site
            ));
        }
        Ok(())
    }
}
