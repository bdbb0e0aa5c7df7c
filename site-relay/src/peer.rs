//! One peer site: channels to its endpoints, tried in turn, and the sender that takes
//! the sync backups of writes in flight together to it in batches, on one long-lived
//! `BackupStream` (a `BackupBatch` call each when the peer has none).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message as _;
use sitegrid_config::SiteConfig;
use sitegrid_proto::batch::{BatchQueue, Weighed};
use sitegrid_proto::multiplex::{self, Multiplexed, Streamless};
use sitegrid_proto::tls::ClientTls;
use sitegrid_proto::v1;
use sitegrid_proto::v1::site_link_client::SiteLinkClient;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
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
    link: Arc<Link>,
    /// Where sync backups queue for [`send_backups`], which starts with the first one.
    backups: OnceLock<mpsc::UnboundedSender<QueuedBackup>>,
}

/// The channels to a peer site's endpoints.
#[derive(Debug)]
struct Link {
    /// The peer site's name.
    site: Arc<str>,
    endpoints: Vec<(String, Channel)>,
    /// The `BackupStream` of each endpoint, opened on first use and again after it
    /// breaks.
    streams: Vec<Multiplexed<v1::BackupStreamRequest, v1::BackupStreamResponse>>,
    /// Whether batches go as `BackupBatch` calls without trying the stream, for a while
    /// after the peer answered that it has no `BackupStream` (an older version).
    streamless: Streamless,
    /// The endpoint that answered last; calls start there.
    preferred: AtomicUsize,
    max_message_bytes: usize,
}

/// The endpoint of a `HOST:PORT` or `http://HOST:PORT` in another site or place (a peer
/// site's node, the witness).
pub(crate) fn endpoint_of(endpoint: &str) -> Result<Endpoint, String> {
    sitegrid_proto::transport::internal_endpoint(endpoint, CONNECT_TIMEOUT)
        .map_err(|error| error.to_string())
}

impl PeerSite {
    /// The peer site of `config`, connecting lazily.
    pub(crate) fn new(
        config: &SiteConfig,
        max_message_bytes: usize,
        tls: Option<&ClientTls>,
    ) -> Result<Self, RelayError> {
        // The peer's nodes must show a certificate that names the peer site.
        let tls = tls
            .map(|tls| tls.expecting(&config.name))
            .transpose()
            .map_err(|error| RelayError::InvalidEndpoint {
                site: config.name.clone(),
                endpoint: String::new(),
                reason: error.to_string(),
            })?;
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
                    sitegrid_proto::transport::lazy_channel(&channel, tls.clone()),
                ))
            })
            .collect::<Result<Vec<_>, RelayError>>()?;
        let name: Arc<str> = config.name.as_str().into();
        Ok(PeerSite {
            name: Arc::clone(&name),
            link: Arc::new(Link {
                site: name,
                streams: endpoints.iter().map(|_| Multiplexed::default()).collect(),
                streamless: Streamless::default(),
                endpoints,
                preferred: AtomicUsize::new(0),
                max_message_bytes,
            }),
            backups: OnceLock::new(),
        })
    }

    /// Sends a primary's write to the peer site within `timeout`. Backups of writes in
    /// flight together share calls: they queue for the peer's backup sender, which sends
    /// everything queued as one `BackupBatch` (at once when a call slot is free, so a lone
    /// write is not delayed).
    pub(crate) async fn backup(
        &self,
        item: v1::BackupItem,
        from_site: &str,
        timeout: Duration,
    ) -> Result<v1::ApplyOutcome, Failure> {
        let queue = self.backups.get_or_init(|| {
            let (queue, queued) = mpsc::unbounded_channel();
            tokio::spawn(send_backups(
                Arc::clone(&self.link),
                Arc::clone(&self.name),
                from_site.to_string(),
                queued,
            ));
            queue
        });
        let (reply, answer) = oneshot::channel();
        let size = item.encoded_len();
        queue
            .send(QueuedBackup {
                item,
                size,
                timeout,
                reply,
            })
            .map_err(|_| Failure::Unreachable("the backup sender stopped".into()))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Failure::Unreachable("the backup sender stopped".into())),
            Err(_) => Err(Failure::TimedOut(timeout)),
        }
    }

    /// Sends a batch of queued changes; see [`Link::call`].
    pub(crate) async fn apply_async(
        &self,
        request: v1::ApplyAsyncRequest,
        timeout: Duration,
    ) -> Result<Vec<v1::AsyncResult>, Failure> {
        let expected = request.changes.len();
        let answer = self
            .link
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
    /// [`Link::call`].
    pub(crate) async fn heartbeat(
        &self,
        from_site: &str,
        timeout: Duration,
    ) -> Result<v1::HeartbeatResponse, Failure> {
        let request = v1::HeartbeatRequest {
            from_site: from_site.to_string(),
        };
        self.link
            .call(timeout, |mut client| {
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
        self.link
            .call(timeout, |mut client| {
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
        self.link
            .call(timeout, |mut client| {
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
        self.link
            .call(timeout, |mut client| {
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
        self.link
            .call(timeout, |mut client| {
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
        self.link
            .call(timeout, |mut client| {
                let request = request.clone();
                async move { client.fetch_keys(request).await }
            })
            .await
            .map(|answer| answer.mutations)
    }
}

impl Link {
    fn client(&self, index: usize) -> SiteLinkClient<Channel> {
        SiteLinkClient::new(self.endpoints[index].1.clone())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
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

    /// Sends a batch of backups within `timeout`: on the `BackupStream` of the endpoint
    /// that answered last, or as a `BackupBatch` call (see [`Link::call`]) if the peer
    /// has no such stream, or the stream failed without the peer's own answer (the
    /// call then tries every endpoint; a batch applied twice is answered "already
    /// applied" the second time, so sending it again is safe).
    async fn backup_batch(
        &self,
        request: &v1::BackupBatchRequest,
        timeout: Duration,
    ) -> Result<v1::BackupBatchResponse, Failure> {
        let deadline = Instant::now() + timeout;
        if self.streamless.stream_usable() {
            let index = self.preferred.load(Ordering::Relaxed);
            let batch = v1::BackupStreamRequest {
                id: 0,
                batch: Some(request.clone()),
            };
            let sent = self.streams[index].call(batch, Some(deadline), |outgoing| {
                let mut client = self.client(index);
                async move { Ok(client.backup_stream(outgoing).await?.into_inner()) }
            });
            match sent.await {
                Err(status) if multiplex::is_expired(&status) => {
                    return Err(Failure::TimedOut(timeout));
                }
                Ok(answer) => match answer.result {
                    Some(v1::backup_stream_response::Result::Answer(answer)) => {
                        self.answered("stream");
                        return Ok(answer);
                    }
                    Some(v1::backup_stream_response::Result::Error(error))
                        if is_answer(tonic::Code::from(error.code)) =>
                    {
                        self.answered("stream");
                        return Err(Failure::Refused(error.message));
                    }
                    error => {
                        tracing::debug!(endpoint = %self.endpoints[index].0, ?error,
                            "a backup stream failed a batch; sending it as a call");
                    }
                },
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(endpoint = %self.endpoints[index].0, retry_in = ?Streamless::FOR,
                        "the peer site has no backup stream (an older version): sending backups as calls");
                    self.streamless.lacking();
                }
                Err(status) => {
                    tracing::debug!(endpoint = %self.endpoints[index].0, %status,
                        "backup stream failed; sending the batch as a call");
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = self
            .call(left, |mut client| {
                let request = request.clone();
                async move { client.backup_batch(request).await }
            })
            .await;
        if matches!(answer, Ok(_) | Err(Failure::Refused(_))) {
            self.answered("call");
        }
        answer
    }

    /// Counts a batch the peer answered, `via` its stream or a call.
    fn answered(&self, via: &'static str) {
        metrics::counter!("sitegrid_backup_batches_answered_total",
            "site" => self.site.to_string(), "via" => via)
        .increment(1);
    }

    /// Sends one backup on its own; see [`Link::call`].
    async fn backup_one(
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
}

/// Whether a call that ended with `code` was answered by the peer site (it refused the
/// request), rather than not reaching a node that serves.
fn is_answer(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::FailedPrecondition
            | Code::Unimplemented
            | Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

/// Most backups one `BackupBatch` carries.
const MAX_BATCH: usize = 256;
/// Most bytes of backups one `BackupBatch` carries (less if the message limit is lower);
/// a single larger backup goes alone.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// `BackupBatch` calls under way at once to one peer site. A write that finds every
/// slot busy waits up to a round trip of the link, so there are as many slots as the
/// writes an identity node's site typically has in flight: at that load every write
/// goes at once, as it would alone; beyond it the queue fills while the slots are busy,
/// and batches grow instead of calls.
const BATCHES_IN_FLIGHT: usize = 16;

impl Weighed for QueuedBackup {
    fn weight(&self) -> usize {
        self.size
    }
}

/// A backup waiting for its batch, and where its answer goes.
struct QueuedBackup {
    item: v1::BackupItem,
    /// Its encoded size.
    size: usize,
    timeout: Duration,
    reply: oneshot::Sender<Result<v1::ApplyOutcome, Failure>>,
}

/// A peer site's backup sender: takes every backup queued when a call slot is free, up
/// to [`MAX_BATCH`] and a byte budget, and sends them as one `BackupBatch`. Ends when
/// its peer site is dropped.
async fn send_backups(
    link: Arc<Link>,
    site: Arc<str>,
    from_site: String,
    queued: mpsc::UnboundedReceiver<QueuedBackup>,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let budget = MAX_BATCH_BYTES.min(link.max_message_bytes / 2);
    let mut queued = BatchQueue::new(queued, MAX_BATCH, budget);
    while let Some(first) = queued.first().await {
        // Waiting for a slot lets the queue fill.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let batch = queued.fill(first);
        metrics::counter!("sitegrid_backup_batches_total", "site" => site.to_string()).increment(1);
        metrics::histogram!("sitegrid_backup_batch_size", "site" => site.to_string())
            .record(batch.len() as f64);
        let link = Arc::clone(&link);
        let from_site = from_site.clone();
        tokio::spawn(async move {
            send_batch(&link, from_site, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch and answers each of its backups. A backup the batch could not place
/// (the peer refused the whole batch, or failed this one with an error another of its
/// nodes might not have) is sent again on its own, so that it ends exactly as a lone
/// `Backup` would.
async fn send_batch(link: &Link, from_site: String, batch: Vec<QueuedBackup>) {
    let timeout = batch
        .iter()
        .map(|queued| queued.timeout)
        .max()
        .unwrap_or_default();
    let request = v1::BackupBatchRequest {
        from_site,
        items: batch.iter().map(|queued| queued.item.clone()).collect(),
    };
    let answer = link.backup_batch(&request, timeout).await;
    let v1::BackupBatchRequest { from_site, items } = request;
    let results = match answer {
        Ok(answer) if answer.results.len() == batch.len() => Ok(answer.results),
        Ok(answer) => Err(Failure::Unreachable(format!(
            "{} answers to a batch of {} backups",
            answer.results.len(),
            batch.len()
        ))),
        // Refused whole (or not understood, by a peer of an older version): each on its
        // own gets the peer's exact answer.
        Err(Failure::Refused(_)) => Ok(vec![v1::BackupResult::default(); batch.len()]),
        Err(failure) => Err(failure),
    };
    let results = match results {
        Ok(results) => results,
        Err(failure) => {
            for queued in batch {
                let _ = queued.reply.send(Err(failure.clone()));
            }
            return;
        }
    };
    let alone = batch
        .into_iter()
        .zip(items)
        .zip(results)
        .map(|((queued, item), result)| {
            let from_site = from_site.clone();
            async move {
                let answer = match result.result {
                    Some(v1::backup_result::Result::Outcome(outcome)) => Ok(outcome),
                    Some(v1::backup_result::Result::Error(error))
                        if is_answer(tonic::Code::from(error.code)) =>
                    {
                        Err(Failure::Refused(error.message))
                    }
                    _ => {
                        let request = v1::BackupRequest {
                            cache: item.cache,
                            mutation: item.mutation,
                            from_site,
                        };
                        link.backup_one(request, queued.timeout).await
                    }
                };
                let _ = queued.reply.send(answer);
            }
        });
    futures::future::join_all(alone).await;
}
