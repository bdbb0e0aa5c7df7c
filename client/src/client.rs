//! The client handle: endpoints, their channels, timeouts, and sending one request with
//! retries and failover.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sitegrid_proto::Backoff;
use tonic::transport::{Channel, Endpoint};

use crate::admin::RemoteAdmin;
use crate::cache::RemoteCache;
use crate::endpoint::{Failover, normalize_endpoint};
use crate::error::{Error, Result};
use crate::event_stream::EventStream;
use crate::options::ListenOptions;
use crate::retry::{RetryPolicy, send_with_retries};

/// Default for [`ClientBuilder::request_timeout`].
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ClientBuilder::connect_timeout`].
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle-looking connection with a call in flight is pinged. A listener's
/// stream may carry nothing for hours; without pings, a node that vanished without
/// closing its connections (power loss, partition) would leave it waiting forever.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as broken.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of a [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    request_timeout: Duration,
    connect_timeout: Duration,
    backoff: Backoff,
}

impl ClientBuilder {
    /// A builder for a client of `endpoints` (`host:port` or `http://host:port`), with a
    /// 10 s request timeout, a 5 s connect timeout and the default [`Backoff`].
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff: Backoff::default(),
        }
    }

    /// How long one attempt of a request may take; it is also sent to the server as the
    /// call's deadline. For `entries`, it bounds the wait for each batch instead.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long opening a connection to an endpoint may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How failed requests are retried; `max_attempts: 1` turns retries off.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Makes the client. Connections open lazily, on the first request to each endpoint,
    /// so this fails only on malformed endpoints; an unreachable node shows up as a
    /// (retried) error on the requests themselves.
    ///
    /// Async only because the channels need a running tokio runtime.
    pub async fn connect(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoint);
        }
        let nodes = self
            .endpoints
            .iter()
            .map(|endpoint| {
                let uri = normalize_endpoint(endpoint)?;
                let endpoint = Endpoint::from_shared(uri.clone())
                    .map_err(|e| Error::InvalidEndpoint {
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(self.connect_timeout)
                    .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
                // Connections are `CoalescingStream`s: small requests share system calls.
                let channel = sitegrid_proto::transport::lazy_channel(&endpoint);
                Ok(Node { uri, channel })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Client {
            shared: Arc::new(Shared {
                failover: Failover::new(nodes.len()),
                nodes,
                request_timeout: self.request_timeout,
                backoff: self.backoff,
            }),
        })
    }
}

/// A connection to a sitegrid site (one or more nodes); cheap to clone, and clones share
/// the connections.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    nodes: Vec<Node>,
    failover: Failover,
    request_timeout: Duration,
    backoff: Backoff,
}

#[derive(Debug)]
struct Node {
    /// Normalized URI, also used to name the endpoint in errors.
    uri: String,
    channel: Channel,
}

/// How long a call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The whole call, sent to the server as its deadline (unary calls).
    WholeCall,
    /// Only the wait for the response headers; the caller bounds each streamed message
    /// itself, so a long iteration is not cut off while it makes progress.
    FirstAnswer,
}

impl Client {
    /// A client of `endpoints` with default options; see [`ClientBuilder::connect`].
    pub async fn connect(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Client> {
        ClientBuilder::new(endpoints).connect().await
    }

    /// A builder for a client of `endpoints`.
    pub fn builder(endpoints: impl IntoIterator<Item = impl Into<String>>) -> ClientBuilder {
        ClientBuilder::new(endpoints)
    }

    /// A handle on the cache `name`; no request is made until it is used.
    pub fn cache(&self, name: impl Into<String>) -> RemoteCache {
        RemoteCache::new(self.clone(), name.into())
    }

    /// A handle on the operator API.
    pub fn admin(&self) -> RemoteAdmin {
        RemoteAdmin::new(self.clone())
    }

    /// Follows the changes of one or more caches, as a stream of [`Event`](crate::Event)s
    /// that lasts until it is dropped.
    ///
    /// Returns once the subscription has started: a node accepted it and confirmed that
    /// it sent every change up to then (a `SYNCED` marker), so that no change made after
    /// `listen` returns is missed. The current state or the replay asked for comes before
    /// that point: it is held back in memory and handed out first. Opening the stream,
    /// and opening it again if it breaks before the start, is retried like a request, and
    /// an error that outlasts the retries is returned.
    ///
    /// From then on the stream survives failures by itself: when its connection breaks,
    /// its node shuts down, or the server drops it for falling behind, it opens a new
    /// stream (on the next endpoint if the node is unreachable), with backoff and without
    /// a limit on attempts, resuming a [`resume_margin`](ListenOptions::resume_margin)
    /// before the last version it saw and dropping the changes it already delivered. So
    /// every change comes once per version, and none is missed; where missing some
    /// cannot be ruled out (the current state was cut short, or the server had to start
    /// the stream over), an [`Event::InvalidateAll`](crate::Event::InvalidateAll) for
    /// every cache comes first.
    ///
    /// The stream ends with an error only when the server refuses the subscription
    /// (unknown cache, bad argument, access denied).
    ///
    /// ```no_run
    /// # async fn demo(client: sitegrid_client::Client) -> sitegrid_client::Result<()> {
    /// use futures::TryStreamExt as _;
    /// use sitegrid_client::{Event, ListenOptions};
    ///
    /// let options = ListenOptions::new(["work", "sessions"]).with_values(true);
    /// let mut events = client.listen(options).await?;
    /// while let Some(event) = events.try_next().await? {
    ///     match event {
    ///         Event::Changed(change) => println!("{} {:?}", change.kind.as_str(), change.key),
    ///         Event::InvalidateAll { cache, .. } => println!("drop every copy of {cache}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn listen(&self, options: ListenOptions) -> Result<EventStream> {
        EventStream::open(self.clone(), &options).await
    }

    /// The endpoints, normalized, in failover order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.shared.nodes.iter().map(|node| node.uri.as_str())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared.request_timeout
    }

    pub(crate) fn backoff(&self) -> &Backoff {
        &self.shared.backoff
    }

    /// The normalized URI of endpoint number `index`.
    pub(crate) fn endpoint_uri(&self, index: usize) -> &str {
        &self.shared.nodes[index].uri
    }

    /// Sends later requests to the endpoint after `index`, which failed.
    pub(crate) fn fail_over_from(&self, index: usize) {
        self.shared.failover.fail_over_from(index);
    }

    /// Sends a unary request with retries and failover; `call` makes one attempt on the
    /// given channel.
    pub(crate) async fn unary<Req, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.send(request, Deadline::WholeCall, call)
            .await
            .map(|(response, _)| response)
    }

    /// Sends a request with retries and failover, and returns the answer with the
    /// endpoint that gave it.
    pub(crate) async fn send<Req, Resp, F, Fut>(
        &self,
        request: Req,
        deadline: Deadline,
        call: F,
    ) -> Result<(Resp, &str)>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let (response, index) = self
            .send_with(
                request,
                deadline,
                RetryPolicy::Request,
                &self.shared.backoff,
                call,
            )
            .await?;
        Ok((response, self.endpoint_uri(index)))
    }

    /// Sends a request retried by `policy` with `backoff`, and returns the answer with
    /// the index of the endpoint that gave it.
    pub(crate) async fn send_with<Req, Resp, F, Fut>(
        &self,
        request: Req,
        deadline: Deadline,
        policy: RetryPolicy,
        backoff: &Backoff,
        call: F,
    ) -> Result<(Resp, usize)>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let shared = &*self.shared;
        let timeout = shared.request_timeout;
        send_with_retries(
            backoff,
            &shared.failover,
            policy,
            request,
            |index, message| {
                let node = &shared.nodes[index];
                let mut request = tonic::Request::new(message);
                if deadline == Deadline::WholeCall {
                    request.set_timeout(timeout);
                }
                let answer = tokio::time::timeout(timeout, call(node.channel.clone(), request));
                async move {
                    match answer.await {
                        Ok(Ok(response)) => Ok((response.into_inner(), index)),
                        Ok(Err(status)) => Err(Error::from_status(status, &node.uri, timeout)),
                        Err(_elapsed) => Err(Error::Timeout {
                            endpoint: node.uri.clone(),
                            after: timeout,
                        }),
                    }
                }
            },
            tokio::time::sleep,
        )
        .await
    }
}
