//! The receiving side: the `SiteLink` service peer sites call.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, stream};

use sitegrid_proto::v1;
use sitegrid_proto::v1::site_link_server::SiteLink;
use tonic::{Request, Response, Status};

use crate::LocalSite;
use crate::state::{Mode, SiteStates};

/// Changes of one async batch merged at once.
const ASYNC_CONCURRENCY: usize = 32;

/// Merges `changes` (cache, mutation) from `from_site` into the site of `local`
/// ([`LocalSite::apply_async`]), several at a time; the results are in the changes' order.
pub(crate) async fn merge_all<L: LocalSite>(
    local: &L,
    from_site: &str,
    changes: Vec<(String, v1::ReplicatedMutation)>,
    forwarded: bool,
) -> Result<Vec<v1::AsyncResult>, Status> {
    stream::iter(changes)
        .map(|(cache, mutation)| async move {
            local
                .apply_async(&cache, from_site, mutation, forwarded)
                .await
        })
        .buffered(ASYNC_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Serves `SiteLink` for the node `local`, to the peer sites of its config.
#[derive(Debug)]
pub struct SiteLinkService<L> {
    local: Arc<L>,
    site: String,
    peers: HashSet<String>,
    states: SiteStates,
}

impl<L: LocalSite> SiteLinkService<L> {
    /// The service of a node of `site`, taking backups from the sites named in `peers`;
    /// `states` is this site's state of each of them.
    pub fn new(
        local: Arc<L>,
        site: &str,
        peers: impl IntoIterator<Item = String>,
        states: SiteStates,
    ) -> Self {
        SiteLinkService {
            local,
            site: site.to_string(),
            peers: peers.into_iter().collect(),
            states,
        }
    }

    /// Whether `from_site` may back writes up to this site: it is a peer, and online
    /// here (a site this one holds offline or resyncing is fenced: it missed writes, so
    /// it must not take writes that need this site's agreement).
    fn check_backup(&self, from_site: &str) -> Result<(), Status> {
        self.check_peer(from_site)?;
        let state = self.states.get(from_site);
        if state.mode != Mode::Online {
            return Err(Status::failed_precondition(format!(
                "site {} holds site {from_site} {} (epoch {}): it takes no writes to caches \
                 with sync backups until it is brought online",
                self.site,
                state.mode.as_str(),
                state.epoch
            )));
        }
        Ok(())
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
        self.check_backup(&request.from_site)?;
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

    async fn backup_batch(
        &self,
        request: Request<v1::BackupBatchRequest>,
    ) -> Result<Response<v1::BackupBatchResponse>, Status> {
        let request = request.into_inner();
        self.check_backup(&request.from_site)?;
        let from_site = &request.from_site;
        // All at once: the items are writes to different keys, each waiting for its
        // answer, and each forwarded to its own key's primary.
        let results = futures::future::join_all(request.items.into_iter().map(|item| async move {
            let applied = match item.mutation {
                Some(mutation) => {
                    self.local
                        .apply_backup(&item.cache, from_site, mutation)
                        .await
                }
                None => Err(Status::invalid_argument("a backup needs a mutation")),
            };
            let result = match applied {
                Ok(outcome) => v1::backup_result::Result::Outcome(outcome),
                Err(status) => v1::backup_result::Result::Error(v1::RequestError {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                }),
            };
            v1::BackupResult {
                result: Some(result),
            }
        }))
        .await;
        Ok(Response::new(v1::BackupBatchResponse { results }))
    }

    async fn apply_async(
        &self,
        request: Request<v1::ApplyAsyncRequest>,
    ) -> Result<Response<v1::ApplyAsyncResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let changes = request
            .changes
            .into_iter()
            .map(|change| {
                let mutation = change
                    .mutation
                    .ok_or_else(|| Status::invalid_argument("an async change needs a mutation"))?;
                Ok((change.cache, mutation))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let results = merge_all(&*self.local, &request.from_site, changes, request.forwarded)
            .await?
            .into_iter()
            .map(|r| r as i32)
            .collect();
        Ok(Response::new(v1::ApplyAsyncResponse { results }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let from_site = request.into_inner().from_site;
        self.check_peer(&from_site)?;
        let state = self.states.get(&from_site);
        Ok(Response::new(v1::HeartbeatResponse {
            site: self.site.clone(),
            your_state: state.mode.to_proto() as i32,
            your_epoch: state.epoch,
        }))
    }

    async fn range_digests(
        &self,
        request: Request<v1::RangeDigestsRequest>,
    ) -> Result<Response<v1::RangeDigestsResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let digests = self.local.range_digests(&request.cache)?;
        Ok(Response::new(v1::RangeDigestsResponse { digests }))
    }

    async fn range_versions(
        &self,
        request: Request<v1::RangeVersionsRequest>,
    ) -> Result<Response<v1::RangeVersionsResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let keys = self.local.range_versions(&request.cache, &request.ranges)?;
        Ok(Response::new(v1::RangeVersionsResponse { keys }))
    }

    async fn clear_cache(
        &self,
        request: Request<v1::ClearCacheRequest>,
    ) -> Result<Response<v1::ClearCacheResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let removed = self.local.clear(&request.cache).await?;
        Ok(Response::new(v1::ClearCacheResponse { removed }))
    }

    async fn touch(
        &self,
        request: Request<v1::SiteLinkTouchRequest>,
    ) -> Result<Response<v1::SiteLinkTouchResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        self.local.touch(&request.cache, request.touched).await?;
        Ok(Response::new(v1::SiteLinkTouchResponse {}))
    }

    async fn fetch_keys(
        &self,
        request: Request<v1::FetchKeysRequest>,
    ) -> Result<Response<v1::FetchKeysResponse>, Status> {
        let request = request.into_inner();
        self.check_peer(&request.from_site)?;
        let mutations = self.local.fetch_keys(&request.cache, &request.keys)?;
        Ok(Response::new(v1::FetchKeysResponse { mutations }))
    }
}
