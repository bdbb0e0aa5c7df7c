//! The receiving side: the `SiteLink` service peer sites call.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, stream};

use sitegrid_proto::v1;
use sitegrid_proto::v1::site_link_server::SiteLink;
use tonic::{Request, Response, Status};

use crate::LocalSite;

/// Changes of one async batch merged at once.
const ASYNC_CONCURRENCY: usize = 32;

/// Serves `SiteLink` for the node `local`, to the peer sites of its config.
#[derive(Debug)]
pub struct SiteLinkService<L> {
    local: Arc<L>,
    site: String,
    peers: HashSet<String>,
}

impl<L: LocalSite> SiteLinkService<L> {
    /// The service of a node of `site`, taking backups from the sites named in `peers`.
    pub fn new(local: Arc<L>, site: &str, peers: impl IntoIterator<Item = String>) -> Self {
        SiteLinkService {
            local,
            site: site.to_string(),
            peers: peers.into_iter().collect(),
        }
    }

    fn check_peer(&self, from_site: &str) -> Result<(), Status> {
        if self.peers.contains(from_site) {
            return Ok(());
        }
        Err(Status::not_found(format!(
            "site {from_site:?} is not a peer of site {:?}: name it in [[sites]] there",
            self.site
        )))
    }
}

#[tonic::async_trait]
impl<L: LocalSite> SiteLink for SiteLinkService<L> {
    async fn backup(
        &self,
        request: Request<v1::BackupRequest>,
    ) -> Result<Response<v1::BackupResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let mutation = request
            .mutation
            .ok_or_else(|| Status::invalid_argument("a backup needs a mutation"))?;
        let outcome = self
            .local
            .apply_backup(&request.cache, &request.from_site, mutation)
            .await?;
        Ok(Response::new(v1::BackupResponse {
            outcome: Some(outcome),
        }))
    }

    async fn apply_async(
        &self,
        request: Request<v1::ApplyAsyncRequest>,
    ) -> Result<Response<v1::ApplyAsyncResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let (from_site, forwarded) = (request.from_site.as_str(), request.forwarded);
        let results: Vec<Result<v1::AsyncResult, Status>> = stream::iter(request.changes)
            .map(|change| async move {
                let mutation = change
                    .mutation
                    .ok_or_else(|| Status::invalid_argument("an async change needs a mutation"))?;
                self.local
                    .apply_async(&change.cache, from_site, mutation, forwarded)
                    .await
            })
            .buffered(ASYNC_CONCURRENCY)
            .collect()
            .await;
        let results = results
            .into_iter()
            .map(|result| result.map(|r| r as i32))
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(v1::ApplyAsyncResponse { results }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.check_peer(&request.into_inner().from_site)?;
        Ok(Response::new(v1::HeartbeatResponse {
            site: self.site.clone(),
        }))
    }
}
