//! The `Admin` gRPC service: what operators ask a node about.

use sitegrid_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::node::NodeState;
use crate::store::Store;

/// The `Admin` service of one node.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    state: NodeState,
}

impl AdminService {
    pub(crate) fn new(store: Store, state: NodeState) -> AdminService {
        AdminService { store, state }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
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
            })
            .collect(),
        }))
    }
}
