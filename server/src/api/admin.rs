//! The `Admin` gRPC service: what operators ask a node about.

use sitegrid_proto::v1::{self, admin_server::Admin};
use sitegrid_relay::{PeerStatus, Progress};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::api::audit::{Audit, outcome};
use crate::api::auth::Caller;
use crate::node::NodeState;
use crate::store::Store;

/// The `Admin` service of one node.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    state: NodeState,
    audit: Arc<Audit>,
}

impl AdminService {
    pub(crate) fn new(store: Store, state: NodeState, audit: Arc<Audit>) -> AdminService {
        AdminService {
            store,
            state,
            audit,
        }
    }

    /// Runs a site command, here or on the site's decider.
    async fn run_site_command(
        &self,
        request: v1::SiteCommandRequest,
    ) -> Result<Response<v1::SiteCommandResponse>, Status> {
        let action = v1::SiteAction::try_from(request.action).map_err(|_| {
            Status::invalid_argument(format!("unknown site action {}", request.action))
        })?;
        // Resyncs run on the site's decider: commands go there.
        if !request.forwarded
            && let Some(mut decider) = self.decider()
        {
            return decider
                .site_command(v1::SiteCommandRequest {
                    forwarded: true,
                    ..request
                })
                .await;
        }
        let relay = self.state.relay();
        let local = self.state.local_site();
        let site = request.site.as_str();
        let status = match action {
            v1::SiteAction::TakeOffline => relay.take_offline(site)?,
            v1::SiteAction::BringOnline => relay.bring_online(site, local, false)?,
            v1::SiteAction::Resync => relay.bring_online(site, local, true)?,
            v1::SiteAction::CancelResync => relay.cancel_resync(site)?,
            v1::SiteAction::Diff => relay.diff(site, local).await?,
            v1::SiteAction::Unspecified => {
                return Err(Status::invalid_argument("a site command needs an action"));
            }
        };
        Ok(Response::new(v1::SiteCommandResponse {
            status: Some(peer_status(status, &self.state.identity().name)),
        }))
    }

    /// An admin client of the site's decider, unless this node is it (or knows none).
    fn decider(
        &self,
    ) -> Option<sitegrid_proto::v1::admin_client::AdminClient<tonic::transport::Channel>> {
        let cluster = self.state.cluster();
        let decider = cluster.decider()?;
        if decider.name == cluster.me().name {
            return None;
        }
        cluster.peers().admin(&decider.address).ok()
    }
}

/// A peer's status as the API shows it; a resync in it ran on `node` (this one).
fn peer_status(status: PeerStatus, node: &str) -> v1::PeerSiteStatus {
    v1::PeerSiteStatus {
        site: status.site,
        state: status.state.mode.as_str().to_string(),
        epoch: status.state.epoch,
        since_ms: status.state.since_ms,
        changed_by: status.state.changed_by.clone(),
        reason: status.state.reason.clone(),
        failures: status.failures,
        last_answer_ms: status.last_answer_ms,
        in_doubt_keys: status.in_doubt_keys,
        offline_keys: status.offline_keys,
        outbox_keys: status.outbox_keys,
        resync: status
            .resync
            .map(|progress| resync_progress(progress, node)),
    }
}

fn resync_progress(progress: Progress, node: &str) -> v1::ResyncProgress {
    v1::ResyncProgress {
        running: progress.running,
        ranges_done: progress.ranges_done,
        ranges_total: progress.ranges_total,
        keys_differing: progress.keys_differing,
        keys_moved: progress.keys_moved,
        bytes_moved: progress.bytes_moved,
        conflicts: progress.conflicts,
        started_ms: progress.started_ms,
        ended_ms: progress.ended_ms,
        error: progress.error.unwrap_or_default(),
        diff_only: progress.diff_only,
        node: node.to_string(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn site_status(
        &self,
        request: Request<v1::SiteStatusRequest>,
    ) -> Result<Response<v1::SiteStatusResponse>, Status> {
        let identity = self.state.identity();
        let relay = self.state.relay();
        let mut peers: Vec<v1::PeerSiteStatus> = relay
            .status()
            .into_iter()
            .map(|status| peer_status(status, &identity.name))
            .collect();
        // Resyncs run on the site's decider: show its progress from any node.
        if !request.into_inner().here_only
            && let Some(mut decider) = self.decider()
            && let Ok(answer) = decider
                .site_status(v1::SiteStatusRequest { here_only: true })
                .await
        {
            for theirs in answer.into_inner().peers {
                if let Some(ours) = peers.iter_mut().find(|p| p.site == theirs.site)
                    && theirs.resync.is_some()
                {
                    ours.resync = theirs.resync;
                }
            }
        }
        Ok(Response::new(v1::SiteStatusResponse {
            node: identity.name.clone(),
            site: identity.site.clone(),
            fenced: relay.states().fenced().unwrap_or_default(),
            peers,
        }))
    }

    async fn site_command(
        &self,
        request: Request<v1::SiteCommandRequest>,
    ) -> Result<Response<v1::SiteCommandResponse>, Status> {
        let caller = Caller::of(request.extensions());
        let request = request.into_inner();
        let forwarded = request.forwarded;
        let operation = format!(
            "SiteCommand {}",
            v1::SiteAction::try_from(request.action)
                .map_or("unknown", |action| action.as_str_name())
        );
        let site = request.site.clone();
        let result = self.run_site_command(request).await;
        // The node the operator called writes the line, not the decider it forwarded to.
        if !forwarded {
            self.audit.record(
                &caller,
                &operation,
                &format!("site {site}"),
                outcome(&result),
            );
        }
        result
    }

    async fn cluster_status(
        &self,
        _: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let identity = self.state.identity();
        Ok(Response::new(v1::ClusterStatusResponse {
            node: identity.name.clone(),
            site: identity.site.clone(),
            site_id: u32::from(identity.site_id),
            ready: self.state.is_ready(),
            caches: self
                .store
                .caches()
                .map(|cache| v1::CacheStatus {
                    name: cache.name().to_string(),
                    size: cache.live_count() as u64,
                    persistent: cache.is_persistent(),
                })
                .collect(),
            address: identity.address.clone(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            members: {
                let cluster = self.state.cluster();
                let me = cluster.me();
                cluster
                    .view()
                    .members
                    .into_iter()
                    // This node as it is now, not as of the last gossip round.
                    .map(|member| {
                        if member.name == me.name {
                            me.clone()
                        } else {
                            member
                        }
                    })
                    .collect::<Vec<_>>()
            }
            .iter()
            .map(|member| v1::MemberStatus {
                node: member.name.to_string(),
                address: member.address.clone(),
                ready: member.is_ready(),
                state: member.state.as_str().to_string(),
                generation: member.generation,
                slot: u32::from(member.slot),
            })
            .collect(),
        }))
    }
}
