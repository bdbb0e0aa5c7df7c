//! The receiving side: the `SiteLink` service peer sites call.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, stream};

use sitegrid_proto::multiplex;
use sitegrid_proto::tls::PeerNames;
use sitegrid_proto::transport::ConnInfo;
use sitegrid_proto::v1;
use sitegrid_proto::v1::site_link_server::SiteLink;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::LocalSite;
use crate::state::{Mode, SiteStates};

/// Changes of one async batch merged at once.
const ASYNC_CONCURRENCY: usize = 32;
/// Batches of one `BackupStream` applied at once; beyond that the stream's task stops
/// reading and HTTP/2 flow control holds the sender back.
const STREAM_BATCHES_IN_FLIGHT: usize = 64;
/// Answers of one `BackupStream` waiting to be sent.
const STREAM_ANSWERS: usize = 64;

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
    peers: Arc<HashSet<String>>,
    states: SiteStates,
    /// Requests must come with a verified certificate naming the site they say they are
    /// from (mutual TLS is configured).
    certificates: bool,
    /// Turns true when the node begins to shut down: open `BackupStream`s stop reading,
    /// answer what they took, and end.
    stopping: watch::Receiver<bool>,
    /// `BackupStream` is served (not: answered UNIMPLEMENTED, as by an older version).
    streams: bool,
}

impl<L> Clone for SiteLinkService<L> {
    fn clone(&self) -> Self {
        SiteLinkService {
            local: Arc::clone(&self.local),
            site: self.site.clone(),
            peers: Arc::clone(&self.peers),
            states: self.states.clone(),
            certificates: self.certificates,
            stopping: self.stopping.clone(),
            streams: self.streams,
        }
    }
}

/// A request of the site link: it names the site it comes from.
trait FromSite {
    fn sender(&self) -> &str;
}

macro_rules! from_site {
    ($($request:ty),* $(,)?) => {
        $(impl FromSite for $request {
            fn sender(&self) -> &str {
                &self.from_site
            }
        })*
    };
}

from_site!(
    v1::BackupRequest,
    v1::BackupBatchRequest,
    v1::ApplyAsyncRequest,
    v1::HeartbeatRequest,
    v1::RangeDigestsRequest,
    v1::RangeVersionsRequest,
    v1::ClearCacheRequest,
    v1::SiteLinkTouchRequest,
    v1::FetchKeysRequest,
);

impl<L: LocalSite> SiteLinkService<L> {
    /// The service of a node of `site`, taking backups from the sites named in `peers`;
    /// `states` is this site's state of each of them. With `certificates`, a request
    /// is taken only with a verified client certificate naming the site it is from
    /// (the connection's [`ConnInfo`] carries the certificate's names). `stopping` turns
    /// true when the node begins to shut down.
    pub fn new(
        local: Arc<L>,
        site: &str,
        peers: impl IntoIterator<Item = String>,
        states: SiteStates,
        certificates: bool,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        SiteLinkService {
            local,
            site: site.to_string(),
            peers: Arc::new(peers.into_iter().collect()),
            states,
            certificates,
            stopping,
            streams: true,
        }
    }

    /// Answers `BackupStream` with UNIMPLEMENTED, as a node of a version before it does
    /// (for tests of how peer sites fall back to `BackupBatch` calls).
    pub fn without_streams(self) -> Self {
        SiteLinkService {
            streams: false,
            ..self
        }
    }

    /// The request, if it comes from a peer site that proved it is that site, or from a
    /// node of this site (which forwards a peer site's request to a key's primary).
    fn open<T: FromSite>(&self, request: Request<T>) -> Result<T, Status> {
        let (_, extensions, request) = request.into_parts();
        let names = ConnInfo::of(&extensions).and_then(|connection| connection.peer.as_ref());
        self.admit(request.sender(), names)?;
        Ok(request)
    }

    /// Whether a request saying it is from `from_site`, on a connection whose client
    /// certificate has `names`, is taken (see [`SiteLinkService::open`]).
    fn admit(&self, from_site: &str, names: Option<&PeerNames>) -> Result<(), Status> {
        self.check_peer(from_site)?;
        let proven =
            names.is_some_and(|names| names.contains(from_site) || names.contains(&self.site));
        if self.certificates && !proven {
            return Err(Status::permission_denied(format!(
                "a request from site {from_site:?} must come with a client certificate \
                 naming that site"
            )));
        }
        Ok(())
    }

    /// Applies a batch of sync backups (see `BackupBatch`).
    async fn serve_batch(
        &self,
        request: v1::BackupBatchRequest,
    ) -> Result<v1::BackupBatchResponse, Status> {
        self.check_online(&request.from_site)?;
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
                Err(status) => v1::backup_result::Result::Error((&status).into()),
            };
            v1::BackupResult {
                result: Some(result),
            }
        }))
        .await;
        Ok(v1::BackupBatchResponse { results })
    }

    /// One batch of a `BackupStream`, answered as `BackupBatch` would answer it.
    async fn answer_batch(
        &self,
        names: Option<&PeerNames>,
        request: v1::BackupStreamRequest,
    ) -> v1::BackupStreamResponse {
        let answered = async {
            let batch = request
                .batch
                .ok_or_else(|| Status::invalid_argument("a backup stream request needs a batch"))?;
            self.admit(&batch.from_site, names)?;
            self.serve_batch(batch).await
        }
        .await;
        v1::BackupStreamResponse {
            id: request.id,
            result: Some(match answered {
                Ok(answer) => v1::backup_stream_response::Result::Answer(answer),
                Err(status) => v1::backup_stream_response::Result::Error((&status).into()),
            }),
        }
    }

    /// Whether `from_site` may back writes up to this site: online here (a site this one
    /// holds offline or resyncing is fenced: it missed writes, so it must not take
    /// writes that need this site's agreement).
    fn check_online(&self, from_site: &str) -> Result<(), Status> {
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
        let request = self.open(request)?;
        self.check_online(&request.from_site)?;
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
        let request = self.open(request)?;
        self.serve_batch(request).await.map(Response::new)
    }

    type BackupStreamStream = ReceiverStream<Result<v1::BackupStreamResponse, Status>>;

    async fn backup_stream(
        &self,
        request: Request<Streaming<v1::BackupStreamRequest>>,
    ) -> Result<Response<Self::BackupStreamStream>, Status> {
        if !self.streams {
            return Err(Status::unimplemented("BackupStream is not served here"));
        }
        let (_, extensions, requests) = request.into_parts();
        let names = ConnInfo::of(&extensions).and_then(|connection| connection.peer.clone());
        let (answers, receiver) = mpsc::channel(STREAM_ANSWERS);
        // Several batches at once, each answered as soon as it is done, until the sender
        // stops sending or this node begins to shut down.
        let service = self.clone();
        tokio::spawn(async move {
            let stopping = service.stopping.clone();
            multiplex::serve(
                requests,
                answers,
                stopping,
                STREAM_BATCHES_IN_FLIGHT,
                |request| service.answer_batch(names.as_ref(), request),
            )
            .await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn apply_async(
        &self,
        request: Request<v1::ApplyAsyncRequest>,
    ) -> Result<Response<v1::ApplyAsyncResponse>, Status> {
        let request = self.open(request)?;
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
        let from_site = self.open(request)?.from_site;
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
        let request = self.open(request)?;
        let digests = self.local.range_digests(&request.cache)?;
        Ok(Response::new(v1::RangeDigestsResponse { digests }))
    }

    async fn range_versions(
        &self,
        request: Request<v1::RangeVersionsRequest>,
    ) -> Result<Response<v1::RangeVersionsResponse>, Status> {
        let request = self.open(request)?;
        let keys = self.local.range_versions(&request.cache, &request.ranges)?;
        Ok(Response::new(v1::RangeVersionsResponse { keys }))
    }

    async fn clear_cache(
        &self,
        request: Request<v1::ClearCacheRequest>,
    ) -> Result<Response<v1::ClearCacheResponse>, Status> {
        let request = self.open(request)?;
        let removed = self.local.clear(&request.cache).await?;
        Ok(Response::new(v1::ClearCacheResponse { removed }))
    }

    async fn touch(
        &self,
        request: Request<v1::SiteLinkTouchRequest>,
    ) -> Result<Response<v1::SiteLinkTouchResponse>, Status> {
        let request = self.open(request)?;
        self.local.touch(&request.cache, request.touched).await?;
        Ok(Response::new(v1::SiteLinkTouchResponse {}))
    }

    async fn fetch_keys(
        &self,
        request: Request<v1::FetchKeysRequest>,
    ) -> Result<Response<v1::FetchKeysResponse>, Status> {
        let request = self.open(request)?;
        let mutations = self.local.fetch_keys(&request.cache, &request.keys)?;
        Ok(Response::new(v1::FetchKeysResponse { mutations }))
    }
}
