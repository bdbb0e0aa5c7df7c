//! [`RemoteAdmin`]: the operator API, typed.

use sitegrid_proto::v1;
use sitegrid_proto::v1::admin_client::AdminClient;

use crate::client::Client;
use crate::error::Result;

/// The operator API of the node a request lands on; get it with [`Client::admin`].
#[derive(Debug, Clone)]
pub struct RemoteAdmin {
    client: Client,
}

/// One node's view of itself, its site and its caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Name of the node that answered.
    pub node: String,
    /// Its site.
    pub site: String,
    /// Its site id.
    pub site_id: u32,
    /// Whether it serves requests.
    pub ready: bool,
    /// Its gRPC address.
    pub address: String,
    /// Its sitegrid version.
    pub server_version: String,
    /// Its caches.
    pub caches: Vec<CacheStatus>,
    /// The members of its site as it sees them, itself included; empty from a server
    /// that does not report them.
    pub members: Vec<MemberStatus>,
}

/// One member of a site, as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node name.
    pub node: String,
    /// Its gRPC address (`host:port`).
    pub address: String,
    /// Whether it serves requests and may be a key's primary.
    pub ready: bool,
    /// What it is doing: `ready`, `joining` (copying data before it serves) or
    /// `isolated` (lost contact with the site; it will copy what it missed).
    pub state: String,
    /// When it started, so that a restarted node is told from its old self.
    pub generation: u64,
    /// Its slot in the site: part of every version it assigns, unique among ready members.
    pub slot: u32,
}

/// One cache as seen by a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// Cache name.
    pub name: String,
    /// Number of live entries.
    pub size: u64,
    /// Whether the cache is kept on disk.
    pub persistent: bool,
}

impl RemoteAdmin {
    pub(crate) fn new(client: Client) -> Self {
        RemoteAdmin { client }
    }

    /// The status of the node that answers (the current endpoint). The client also
    /// takes its members in, as a refresh of the topology would.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let response = self
            .client
            .unary(v1::ClusterStatusRequest {}, |channel, request| async move {
                AdminClient::new(channel).cluster_status(request).await
            })
            .await?;
        self.client.learn(&response);
        Ok(response.into())
    }

    /// The answering node's site's state of each peer site (with the progress of a
    /// resync the site's decider runs).
    pub async fn site_status(&self) -> Result<v1::SiteStatusResponse> {
        self.client
            .unary(
                v1::SiteStatusRequest { here_only: false },
                |channel, request| async move { AdminClient::new(channel).site_status(request).await },
            )
            .await
    }

    /// Acts on peer site `site` for the answering node's whole site (the node sends the
    /// command to its site's decider); answers with the peer's state after it.
    pub async fn site_command(
        &self,
        site: &str,
        action: v1::SiteAction,
    ) -> Result<v1::PeerSiteStatus> {
        let request = v1::SiteCommandRequest {
            site: site.to_string(),
            action: action as i32,
            forwarded: false,
        };
        let response = self
            .client
            .unary(request, |channel, request| async move {
                AdminClient::new(channel).site_command(request).await
            })
            .await?;
        response.status.ok_or_else(|| crate::error::Error::Server {
            code: crate::ErrorCode::Internal,
            message: "a site command was answered without a status".into(),
        })
    }
}

impl From<v1::ClusterStatusResponse> for ClusterStatus {
    fn from(r: v1::ClusterStatusResponse) -> Self {
        ClusterStatus {
            node: r.node,
            site: r.site,
            site_id: r.site_id,
            ready: r.ready,
            address: r.address,
            server_version: r.server_version,
            caches: r
                .caches
                .into_iter()
                .map(|c| CacheStatus {
                    name: c.name,
                    size: c.size,
                    persistent: c.persistent,
                })
                .collect(),
            members: r
                .members
                .into_iter()
                .map(|m| MemberStatus {
                    node: m.node,
                    address: m.address,
                    ready: m.ready,
                    state: m.state,
                    generation: m.generation,
                    slot: m.slot,
                })
                .collect(),
        }
    }
}
