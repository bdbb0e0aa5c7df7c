//! One peer site: channels to its endpoints, tried in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sitegrid_config::SiteConfig;
use sitegrid_proto::v1;
use sitegrid_proto::v1::site_link_client::SiteLinkClient;
use tonic::transport::{Channel, Endpoint};

use crate::RelayError;

/// How long opening a connection to a peer site's node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call to a peer site got no answer.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Every endpoint failed; the last error.
    Unreachable(String),
    /// No answer within the timeout.
    TimedOut(Duration),
    /// Not tried: the peer failed this many heartbeats or backups in a row.
    Down(u32),
    /// The peer answered with an error of its own.
    Refused(String),
    /// Not tried: this site is fenced (the reason).
    Fenced(String),
    /// Not tried: the peer is offline.
    Offline,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(error) => write!(f, "unreachable ({error})"),
            Failure::TimedOut(timeout) => write!(f, "no answer within {timeout:?}"),
            Failure::Down(failures) => {
                write!(
                    f,
                    "not tried: {failures} heartbeats or backups in a row failed"
                )
            }
            Failure::Refused(why) => write!(f, "refused: {why}"),
            Failure::Fenced(why) => write!(f, "not tried: {why}"),
            Failure::Offline => write!(f, "not tried: the peer site is offline"),
        }
    }
}

/// A peer site.
#[derive(Debug)]
pub(crate) struct PeerSite {
    pub(crate) name: Arc<str>,
    endpoints: Vec<(String, Channel)>,
    /// The endpoint that answered last; calls start there.
    preferred: AtomicUsize,
    max_message_bytes: usize,
}

/// The endpoint of a `HOST:PORT` or `http://HOST:PORT` in another site or place (a peer
/// site's node, the witness): a bounded connect time, and keep-alives that notice a
/// dead link.
pub(crate) fn endpoint_of(endpoint: &str) -> Result<Endpoint, String> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|error| error.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

impl PeerSite {
    /// The peer site of `config`, connecting lazily.
    pub(crate) fn new(config: &SiteConfig, max_message_bytes: usize) -> Result<Self, RelayError> {
        let endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| {
                let channel = endpoint_of(endpoint)
                    .map_err(|reason| RelayError::InvalidEndpoint {
                        site: config.name.clone(),
                        endpoint: endpoint.clone(),
                        reason,
                    })?
                    // Wide windows: a long round trip must not throttle batches.
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(16 << 20);
                Ok((
                    endpoint.clone(),
                    sitegrid_proto::transport::lazy_channel(&channel),
                ))
            })
            .collect::<Result<Vec<_>, RelayError>>()?;
        Ok(PeerSite {
            name: config.name.as_str().into(),
            endpoints,
            preferred: AtomicUsize::new(0),
            max_message_bytes,
        })
    }

    fn client(&self, index: usize) -> SiteLinkClient<Channel> {
        SiteLinkClient::new(self.endpoints[index].1.clone())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    /// Sends a backup; see [`PeerSite::call`].
    pub(crate) async fn backup(
        &self,
        request: v1::BackupRequest,
        timeout: Duration,
    ) -> Result<v1::ApplyOutcome, Failure> {
        let answer = self
            .call(timeout, |mut client| {
                let request = request.clone();
                async move { client.backup(request).await }
            })
            .await?;
        answer
            .outcome
            .ok_or_else(|| Failure::Unreachable("a backup was answered without an outcome".into()))
    }

    /// Sends a batch of queued changes; see [`PeerSite::call`].
    pub(crate) async fn apply_async(
        &self,
        request: v1::ApplyAsyncRequest,
        timeout: Duration,
    ) -> Result<Vec<v1::AsyncResult>, Failure> {
        let expected = request.changes.len();
        let answer = self
            .call(timeout, |mut client| {
                let request = request.clone();
                async move { client.apply_async(request).await }
            })
            .await?;
        if answer.results.len() != expected {
            return Err(Failure::Unreachable(format!(
                "{} results for {expected} changes",
                answer.results.len()
            )));
        }
        Ok(answer
            .results
            .into_iter()
            .map(|result| v1::AsyncResult::try_from(result).unwrap_or(v1::AsyncResult::Busy))
            .collect())
    }

    /// Asks whether the peer site answers, and what it thinks of this site; see
    /// [`PeerSite::call`].
    pub(crate) async fn heartbeat(
        &self,
        from_site: &str,
        timeout: Duration,
    ) -> Result<v1::HeartbeatResponse, Failure> {
        let request = v1::HeartbeatRequest {
            from_site: from_site.to_string(),
        };
        self.call(timeout, |mut client| {
            let request = request.clone();
            async move { client.heartbeat(request).await }
        })
        .await
    }

    /// The peer's digest of every key range of a cache.
    pub(crate) async fn range_digests(
        &self,
        request: v1::RangeDigestsRequest,
        timeout: Duration,
    ) -> Result<Vec<u64>, Failure> {
        self.call(timeout, |mut client| {
            let request = request.clone();
            async move { client.range_digests(request).await }
        })
        .await
        .map(|answer| answer.digests)
    }

    /// The peer's keys of some key ranges, with their versions.
    pub(crate) async fn range_versions(
        &self,
        request: v1::RangeVersionsRequest,
        timeout: Duration,
    ) -> Result<Vec<v1::KeyVersion>, Failure> {
        self.call(timeout, |mut client| {
            let request = request.clone();
            async move { client.range_versions(request).await }
        })
        .await
        .map(|answer| answer.keys)
    }

    /// Clears a cache in the peer site; answers the entries removed.
    pub(crate) async fn clear_cache(
        &self,
        request: v1::ClearCacheRequest,
        timeout: Duration,
    ) -> Result<u64, Failure> {
        self.call(timeout, |mut client| {
            let request = request.clone();
            async move { client.clear_cache(request).await }
        })
        .await
        .map(|answer| answer.removed)
    }

    /// Tells the peer which max-idle entries were read in this site.
    pub(crate) async fn touch(
        &self,
        request: v1::SiteLinkTouchRequest,
        timeout: Duration,
    ) -> Result<(), Failure> {
        self.call(timeout, |mut client| {
            let request = request.clone();
            async move { client.touch(request).await }
        })
        .await
        .map(|_| ())
    }

    /// The peer's state of some keys.
    pub(crate) async fn fetch_keys(
        &self,
        request: v1::FetchKeysRequest,
        timeout: Duration,
    ) -> Result<Vec<v1::ReplicatedMutation>, Failure> {
        self.call(timeout, |mut client| {
            let request = request.clone();
            async move { client.fetch_keys(request).await }
        })
        .await
        .map(|answer| answer.mutations)
    }

    /// Makes a call, trying the endpoints in turn from the one that answered last, until
    /// one answers or `timeout` passes.
    async fn call<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, Failure>
    where
        F: Fn(SiteLinkClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let attempts = async {
            let first = self.preferred.load(Ordering::Relaxed);
            let mut last_error = String::new();
            for step in 0..self.endpoints.len() {
                let index = (first + step) % self.endpoints.len();
                match call(self.client(index)).await {
                    Ok(answer) => {
                        self.preferred.store(index, Ordering::Relaxed);
                        return Ok(answer.into_inner());
                    }
                    // The peer's own answer: another of its nodes would say the same.
                    Err(status) if is_answer(status.code()) => {
                        return Err(Failure::Refused(status.message().to_string()));
                    }
                    Err(status) => {
                        last_error = format!("{}: {}", self.endpoints[index].0, status.message());
                    }
                }
            }
            Err(Failure::Unreachable(last_error))
        };
        tokio::time::timeout(timeout, attempts)
            .await
            .unwrap_or(Err(Failure::TimedOut(timeout)))
    }
}

/// Whether a call that ended with `code` was answered by the peer site (it refused the
/// request), rather than not reaching a node that serves.
fn is_answer(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::FailedPrecondition
            | Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}
