//! The client handle: endpoints, their channels, the site's topology, timeouts, and
//! sending one request with retries and failover.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Either;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::{pipeline_request::Operation, pipeline_response::Result as Answer};
use sitegrid_proto::{Backoff, v1};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::admin::RemoteAdmin;
use crate::builder::{ClientBuilder, lazy_channel};
use crate::cache::RemoteCache;
use crate::credentials::Credentials;
use crate::endpoint::Failover;
use crate::error::{Error, Result};
use crate::event_stream::EventStream;
use crate::options::ListenOptions;
use crate::pipeline::{Pipelines, SingleKey};
use crate::refresh::Refresher;
use crate::retry::{RetryPolicy, send_with_retries};
use crate::topology::Topology;

/// A connection to a sitegrid site (one or more nodes); cheap to clone, and clones share
/// the connections.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// A client that does not keep the connections alive; what the refresh task holds.
#[derive(Debug, Clone)]
pub(crate) struct WeakClient {
    shared: Weak<Shared>,
}

impl WeakClient {
    /// The client, unless its last clone was dropped.
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.shared.upgrade().map(|shared| Client { shared })
    }
}

#[derive(Debug)]
struct Shared {
    /// The topology and the endpoints' channels, replaced whole when a refresh learns
    /// something, so that an attempt reads one consistent snapshot.
    nodes: RwLock<Arc<Nodes>>,
    failover: Failover,
    settings: Settings,
    /// The topology's refresh task, unless discovery is off; set once, just after the
    /// client is made, and stopped when the last clone of the client drops it.
    refresher: OnceLock<Refresher>,
}

/// What the builder sets once for good.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) request_timeout: Duration,
    /// Also for the channels of endpoints learned later.
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: Backoff,
    /// Single-key requests go on `Pipeline` streams rather than one unary call each.
    pub(crate) pipeline: bool,
    /// The token every call carries.
    pub(crate) credentials: Credentials,
    /// TLS on every connection, for endpoints learned later too.
    pub(crate) tls: Option<sitegrid_proto::tls::ClientTls>,
}

/// Every endpoint known and how to reach it.
#[derive(Debug)]
pub(crate) struct Nodes {
    pub(crate) topology: Topology,
    /// How to reach every endpoint of `topology`, by index.
    pub(crate) connections: Vec<Connection>,
}

/// How to reach one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    /// For unary and streaming calls.
    pub(crate) channel: Channel,
    /// For pipelined single-key requests, on the same channel.
    pub(crate) pipelines: Arc<Pipelines>,
}

impl Connection {
    pub(crate) fn new(channel: Channel, credentials: &Credentials) -> Connection {
        Connection {
            pipelines: Arc::new(Pipelines::new(&channel, credentials)),
            channel,
        }
    }
}

/// A `Cache` client on `channel` that takes answers of any size: the server bounds what
/// it sends by its own limits (a value may be up to `limits.max_value_bytes`, 8 MiB by
/// default, over tonic's default of 4 MiB).
pub(crate) fn cache_client(channel: Channel) -> CacheClient<Channel> {
    CacheClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// The error of a batched request left without an answer (which would be a bug).
fn unanswered() -> Error {
    Error::Server {
        code: sitegrid_proto::ErrorCode::Internal,
        message: "a batched request was left unanswered".into(),
    }
}

/// Where a request goes first.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// The current endpoint: any ready node can answer.
    AnyNode,
    /// The primary of this key if it is known, else the current endpoint: a write, which
    /// any node would forward there.
    PrimaryOf(&'a [u8]),
}

/// Who keeps an attempt to its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// A timer around the attempt (unary calls).
    Wrapped,
    /// The attempt itself: a pipelined request's stream fails it at its deadline, with
    /// no timer of its own (a timer per request was about a tenth of a pipelining
    /// client's CPU).
    KeptByAttempt,
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
    /// A client of the endpoints of `topology`, reached through `connections` (by
    /// index), without refresh task.
    pub(crate) fn new(
        topology: Topology,
        connections: Vec<Connection>,
        settings: Settings,
    ) -> Client {
        Client {
            shared: Arc::new(Shared {
                nodes: RwLock::new(Arc::new(Nodes {
                    topology,
                    connections,
                })),
                failover: Failover::default(),
                settings,
                refresher: OnceLock::new(),
            }),
        }
    }

    /// Starts refreshing the topology every `interval`, beginning now.
    pub(crate) fn start_refresher(&self, interval: Duration) {
        let _ = self
            .shared
            .refresher
            .set(Refresher::spawn(self.downgrade(), interval));
    }

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

    /// The endpoints requests may go to, normalized, in failover order: those given,
    /// until the site's ready members are known; then the ready members (their
    /// advertised addresses), followed by any given endpoint that is no member's.
    pub fn endpoints(&self) -> Vec<String> {
        let nodes = self.nodes();
        let topology = &nodes.topology;
        topology
            .endpoints_for_read()
            .iter()
            .map(|&index| topology.uri(index).to_owned())
            .collect()
    }

    /// The current snapshot of the topology and channels.
    pub(crate) fn nodes(&self) -> Arc<Nodes> {
        Arc::clone(
            &self
                .shared
                .nodes
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Takes in the site's members as one node lists them: they replace the topology's
    /// members, and their addresses become endpoints. Ignored unless that node is ready:
    /// a node cut off from its site (isolated, or joining) may see it wrongly.
    pub(crate) fn learn(&self, status: &v1::ClusterStatusResponse) {
        if !status.ready {
            return;
        }
        let mut nodes = self
            .shared
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let topology = nodes.topology.refreshed(&status.members);
        if topology == nodes.topology {
            return;
        }
        let mut connections = nodes.connections.clone();
        for uri in &topology.endpoints()[connections.len()..] {
            let settings = &self.shared.settings;
            match lazy_channel(uri, settings.connect_timeout, settings.tls.clone()) {
                Ok(channel) => connections.push(Connection::new(channel, &settings.credentials)),
                Err(error) => {
                    tracing::warn!(endpoint = %uri, error = %error, "member address unusable, topology not updated");
                    return;
                }
            }
        }
        tracing::debug!(
            from = %status.node,
            ready = ?topology.ready_members().collect::<Vec<_>>(),
            "site topology changed"
        );
        *nodes = Arc::new(Nodes {
            topology,
            connections,
        });
    }

    /// The endpoint that requests any node can answer go to now.
    pub(crate) fn current_endpoint(&self) -> usize {
        let nodes = self.nodes();
        self.shared
            .failover
            .current(nodes.topology.endpoints_for_read())
    }

    /// Asks the refresh task for the topology at once, if there is one.
    fn refresh_soon(&self) {
        if let Some(refresher) = self.shared.refresher.get() {
            refresher.wake();
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared.settings.request_timeout
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.shared.settings.credentials
    }

    pub(crate) fn backoff(&self) -> &Backoff {
        &self.shared.settings.backoff
    }

    /// The normalized URI of endpoint number `index`.
    pub(crate) fn endpoint_uri(&self, index: usize) -> String {
        self.nodes().topology.uri(index).to_owned()
    }

    /// Sends later requests to the endpoint after `index`, which failed, and asks for
    /// the topology again; returns where the next request goes.
    pub(crate) fn fail_over_from(&self, index: usize) -> usize {
        self.refresh_soon();
        let nodes = self.nodes();
        self.shared
            .failover
            .fail_over_from(index, nodes.topology.endpoints_for_read())
    }

    /// Sends a unary request with retries and failover; `call` makes one attempt on the
    /// given channel.
    pub(crate) async fn unary<Req, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.unary_to(Target::AnyNode, request, self.backoff(), call)
            .await
    }

    /// Sends a single-key read with retries and failover: on a pipeline, or as a unary
    /// call made by `unary` on the given channel.
    pub(crate) async fn read<Req, F, Fut>(&self, request: Req, unary: F) -> Result<Req::Response>
    where
        Req: SingleKey,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Req::Response>, tonic::Status>>,
    {
        self.single_key(Target::AnyNode, request, self.backoff(), unary)
            .await
    }

    /// Sends a write of `key`, to its primary first, with retries and failover: on a
    /// pipeline, or as a unary call made by `unary` on the given channel.
    pub(crate) async fn write<Req, F, Fut>(
        &self,
        key: &[u8],
        request: Req,
        unary: F,
    ) -> Result<Req::Response>
    where
        Req: SingleKey,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Req::Response>, tonic::Status>>,
    {
        self.single_key(Target::PrimaryOf(key), request, self.backoff(), unary)
            .await
    }

    /// Sends single-key requests together and answers each, in order (see
    /// [`crate::Batch`]). Pipelined, they are sent together ([`Client::send_together`]),
    /// and a request failing in a way requests are retried for is sent again, on its own,
    /// with the attempts left, after the others' first attempts. Unary, each is sent on
    /// its own, those to different keys at once.
    pub(crate) async fn batch(&self, operations: Vec<Operation>) -> Vec<Result<Answer>> {
        let backoff = self.backoff();
        let mut answers: Vec<Option<Result<Answer>>> = operations.iter().map(|_| None).collect();
        let (alone, backoff) = if self.shared.settings.pipeline {
            let rest = backoff.after_first();
            let again = self
                .send_together(operations, rest.is_some(), &mut answers)
                .await;
            if !again.is_empty()
                && let Some(wait) = backoff.delay(0)
            {
                tokio::time::sleep(wait).await;
            }
            (again, rest.unwrap_or(*backoff))
        } else {
            (operations.into_iter().enumerate().collect(), *backoff)
        };
        for (position, answer) in self.in_key_order(alone, &backoff).await {
            answers[position] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(unanswered())))
            .collect()
    }

    /// Sends `operations` on the pipelines, each to its key's primary if known (else the
    /// current endpoint), so that those of one key share a stream and run in the order
    /// given; those to each node travel together and are waited for once. Fills in
    /// `answers`, except for the requests that failed in a way requests are retried for
    /// when `retries`: those it returns with their positions, to send again.
    async fn send_together(
        &self,
        operations: Vec<Operation>,
        retries: bool,
        answers: &mut [Option<Result<Answer>>],
    ) -> Vec<(usize, Operation)> {
        let timeout = self.shared.settings.request_timeout;
        let deadline = Instant::now() + timeout;
        let nodes = self.nodes();
        let mut to: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (position, operation) in operations.iter().enumerate() {
            let target = Target::PrimaryOf(crate::pipeline::key_of(operation));
            to.entry(self.first_endpoint(&nodes, target))
                .or_default()
                .push(position);
        }
        // Kept for a retry only where there may be one.
        let mut operations: Vec<_> = operations.into_iter().map(Some).collect();
        let sent: Vec<_> = to
            .into_iter()
            .map(|(index, positions)| {
                let batch = positions
                    .iter()
                    .filter_map(|&position| match retries {
                        true => operations[position].clone(),
                        false => operations[position].take(),
                    })
                    .collect();
                let pipelines = Arc::clone(&nodes.connections[index].pipelines);
                async move {
                    let answers = pipelines.call_many(batch, deadline).await;
                    (index, positions, answers)
                }
            })
            .collect();
        let mut again = Vec::new();
        for (index, positions, answered) in futures::future::join_all(sent).await {
            let uri = nodes.topology.uri(index);
            let answered = answered.unwrap_or_else(|status| {
                let fail = || Err(tonic::Status::new(status.code(), status.message()));
                positions.iter().map(|_| fail()).collect()
            });
            let mut failed_over = false;
            for (position, answer) in positions.into_iter().zip(answered) {
                let answer = answer.map_err(|status| Error::from_status(status, uri, timeout));
                if let Err(error) = &answer {
                    if error.calls_for_refresh() {
                        self.refresh_soon();
                    }
                    if error.calls_for_failover() && !failed_over {
                        failed_over = true;
                        self.fail_over_from(index);
                    }
                    if retries
                        && RetryPolicy::Request.retries(error)
                        && let Some(operation) = operations[position].take()
                    {
                        again.push((position, operation));
                        continue;
                    }
                }
                answers[position] = Some(answer);
            }
        }
        again
    }

    /// Sends each request on its own, with retries and failover within `backoff`: those
    /// to different keys at once, those to one key one after the other, in the order
    /// given. Answers each with its position.
    async fn in_key_order(
        &self,
        requests: Vec<(usize, Operation)>,
        backoff: &Backoff,
    ) -> Vec<(usize, Result<Answer>)> {
        let mut by_key: HashMap<Bytes, Vec<(usize, Operation)>> = HashMap::new();
        for (position, operation) in requests {
            let key = crate::pipeline::key_of(&operation).clone();
            by_key.entry(key).or_default().push((position, operation));
        }
        let chains = by_key.into_values().map(|chain| async move {
            let mut answers = Vec::with_capacity(chain.len());
            for (position, operation) in chain {
                answers.push((position, self.one(operation, backoff).await));
            }
            answers
        });
        futures::future::join_all(chains)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One request of a batch on its own, with retries and failover within `backoff`.
    async fn one(&self, operation: Operation, backoff: &Backoff) -> Result<Answer> {
        let key = crate::pipeline::key_of(&operation).clone();
        macro_rules! send {
            ($target:expr, $request:expr, $rpc:ident, $variant:ident) => {
                self.single_key($target, $request, backoff, |channel, request| async move {
                    cache_client(channel).$rpc(request).await
                })
                .await
                .map(Answer::$variant)
            };
        }
        let write = Target::PrimaryOf(&key);
        match operation {
            Operation::Get(r) => send!(Target::AnyNode, r, get, Get),
            Operation::Put(r) => send!(write, r, put, Put),
            Operation::PutIfAbsent(r) => send!(write, r, put_if_absent, PutIfAbsent),
            Operation::Replace(r) => send!(write, r, replace, Replace),
            Operation::ReplaceWithVersion(r) => {
                send!(write, r, replace_with_version, ReplaceWithVersion)
            }
            Operation::Remove(r) => send!(write, r, remove, Remove),
            Operation::RemoveWithVersion(r) => {
                send!(write, r, remove_with_version, RemoveWithVersion)
            }
        }
    }

    /// A single-key request to `target` first, on the path the settings choose.
    async fn single_key<Req, F, Fut>(
        &self,
        target: Target<'_>,
        request: Req,
        backoff: &Backoff,
        unary: F,
    ) -> Result<Req::Response>
    where
        Req: SingleKey,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Req::Response>, tonic::Status>>,
    {
        if !self.shared.settings.pipeline {
            // Boxed: a unary call's future is larger than a pipelined one's, and inline
            // it would make every pipelined request's future as large (a `put`'s: 2.1
            // instead of 1.6 KiB, moved at every layer); unary is the rarer path.
            return Box::pin(self.unary_to(target, request, backoff, unary)).await;
        }
        let attempt = |connection: &Connection, request: Req, deadline| {
            let pipelines = Arc::clone(&connection.pipelines);
            async move {
                let answer = pipelines.call(request.into_operation(), deadline).await?;
                Req::response(answer).ok_or_else(crate::pipeline::other_kind)
            }
        };
        self.send_on(
            target,
            request,
            RetryPolicy::Request,
            backoff,
            Timer::KeptByAttempt,
            attempt,
        )
        .await
        .map(|(response, _)| response)
    }

    /// Where a request to `target` goes first: the key's primary if known, else the
    /// current endpoint.
    fn first_endpoint(&self, nodes: &Nodes, target: Target<'_>) -> usize {
        let topology = &nodes.topology;
        let primary = match target {
            Target::AnyNode => None,
            Target::PrimaryOf(key) => topology.endpoint_for_write(key),
        };
        primary.unwrap_or_else(|| self.shared.failover.current(topology.endpoints_for_read()))
    }

    /// A unary request to `target` first, within the request deadline and policy.
    async fn unary_to<Req, Resp, F, Fut>(
        &self,
        target: Target<'_>,
        request: Req,
        backoff: &Backoff,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.send_with(
            target,
            request,
            Deadline::WholeCall,
            RetryPolicy::Request,
            backoff,
            call,
        )
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
    ) -> Result<(Resp, String)>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let (response, index) = self
            .send_with(
                Target::AnyNode,
                request,
                deadline,
                RetryPolicy::Request,
                &self.shared.settings.backoff,
                call,
            )
            .await?;
        Ok((response, self.endpoint_uri(index)))
    }

    /// Sends a request retried by `policy` with `backoff`, first to `target`, and
    /// returns the answer with the index of the endpoint that gave it.
    pub(crate) async fn send_with<Req, Resp, F, Fut>(
        &self,
        target: Target<'_>,
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
        let timeout = self.shared.settings.request_timeout;
        let attempt = |connection: &Connection, message: Req, _deadline| {
            let mut request = tonic::Request::new(message);
            self.shared.settings.credentials.sign(&mut request);
            if deadline == Deadline::WholeCall {
                request.set_timeout(timeout);
            }
            let answer = call(connection.channel.clone(), request);
            async move { answer.await.map(tonic::Response::into_inner) }
        };
        self.send_on(target, request, policy, backoff, Timer::Wrapped, attempt)
            .await
    }

    /// Sends a request retried by `policy` with `backoff`, first to `target`, each
    /// attempt made by `attempt` on an endpoint's connection within the request timeout
    /// (its deadline given to `attempt`, kept as `timer` says), and returns the answer
    /// with the index of the endpoint that gave it.
    async fn send_on<Req, Resp, F, Fut>(
        &self,
        target: Target<'_>,
        request: Req,
        policy: RetryPolicy,
        backoff: &Backoff,
        timer: Timer,
        attempt: F,
    ) -> Result<(Resp, usize)>
    where
        Req: Clone,
        F: Fn(&Connection, Req, Instant) -> Fut,
        Fut: Future<Output = std::result::Result<Resp, tonic::Status>>,
    {
        let timeout = self.shared.settings.request_timeout;
        let first = self.first_endpoint(&self.nodes(), target);
        send_with_retries(
            backoff,
            policy,
            request,
            first,
            |failed| self.fail_over_from(failed),
            |index, message| {
                // Indexes stay valid across refreshes: endpoints are only ever added.
                let nodes = self.nodes();
                // Boxed: the layers of retrying each keep their own copy of what they
                // await, so inline, an attempt of a few hundred bytes would make the
                // request's future several KiB, moved whole at every layer.
                let deadline = Instant::now() + timeout;
                let call = attempt(&nodes.connections[index], message, deadline);
                let answer = Box::pin(match timer {
                    Timer::KeptByAttempt => Either::Left(call.map(Ok)),
                    Timer::Wrapped => Either::Right(tokio::time::timeout_at(deadline, call)),
                });
                async move {
                    let error = match answer.await {
                        Ok(Ok(response)) => return Ok((response, index)),
                        Ok(Err(status)) => {
                            Error::from_status(status, nodes.topology.uri(index), timeout)
                        }
                        Err(_elapsed) => Error::Timeout {
                            endpoint: nodes.topology.uri(index).to_owned(),
                            after: timeout,
                        },
                    };
                    if error.calls_for_refresh() {
                        self.refresh_soon();
                    }
                    Err(error)
                }
            },
            tokio::time::sleep,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitegrid_proto::routing;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A client without refresh task, whose retries do not wait.
    async fn client(endpoints: &[&str]) -> Client {
        Client::builder(endpoints.iter().copied())
            .discover_topology(false)
            .backoff(Backoff {
                initial_delay: Duration::ZERO,
                max_delay: Duration::ZERO,
                max_attempts: 5,
            })
            .connect()
            .await
            .unwrap()
    }

    /// A ready node's `ClusterStatus` listing `members` as (name, address, ready).
    fn status(members: &[(&str, &str, bool)]) -> v1::ClusterStatusResponse {
        v1::ClusterStatusResponse {
            node: "n1".into(),
            ready: true,
            members: members
                .iter()
                .map(|&(node, address, ready)| v1::MemberStatus {
                    node: node.into(),
                    address: address.into(),
                    ready,
                    state: if ready { "ready" } else { "joining" }.into(),
                    generation: 1,
                    slot: 0,
                })
                .collect(),
            ..v1::ClusterStatusResponse::default()
        }
    }

    /// Sends a request to `target` whose first `failures` attempts fail with UNAVAILABLE,
    /// without touching the network, and answers the endpoint of the attempt that
    /// succeeded.
    async fn answering_endpoint(client: &Client, target: Target<'_>, failures: u32) -> String {
        let attempts = AtomicU32::new(0);
        let (_, index) = client
            .send_with(
                target,
                (),
                Deadline::WholeCall,
                RetryPolicy::Request,
                client.backoff(),
                |_channel, _request| {
                    let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if attempt < failures {
                            Err(tonic::Status::unavailable("node not ready"))
                        } else {
                            Ok(tonic::Response::new(()))
                        }
                    }
                },
            )
            .await
            .unwrap();
        client.endpoint_uri(index)
    }

    /// A key whose primary among `nodes` is `primary`.
    fn key_with_primary(primary: &str, nodes: [&str; 3]) -> Vec<u8> {
        (0..)
            .map(|i| format!("key{i}").into_bytes())
            .find(|key| routing::primary(routing::key_hash(key), nodes) == Some(primary))
            .unwrap()
    }

    const THREE_READY: [(&str, &str, bool); 3] = [
        ("n1", "127.0.0.1:1", true),
        ("n2", "127.0.0.1:2", true),
        ("n3", "127.0.0.1:3", true),
    ];

    #[tokio::test]
    async fn learned_members_become_endpoints() {
        let client = client(&["127.0.0.1:1"]).await;
        assert_eq!(client.endpoints(), ["http://127.0.0.1:1"]);
        client.learn(&status(&THREE_READY));
        assert_eq!(
            client.endpoints(),
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3"
            ]
        );
        let nodes = client.nodes();
        assert_eq!(nodes.connections.len(), nodes.topology.endpoints().len());
    }

    #[tokio::test]
    async fn a_refresh_replaces_the_members() {
        let client = client(&["127.0.0.1:1"]).await;
        client.learn(&status(&THREE_READY));
        client.learn(&status(&[
            ("n1", "127.0.0.1:1", true),
            ("n2", "127.0.0.1:2", false),
            ("n3", "127.0.0.1:3", true),
        ]));
        assert_eq!(
            client.endpoints(),
            ["http://127.0.0.1:1", "http://127.0.0.1:3"]
        );
        // A server that reports no members: back to the endpoints given.
        client.learn(&status(&[]));
        assert_eq!(client.endpoints(), ["http://127.0.0.1:1"]);
    }

    #[tokio::test]
    async fn a_node_that_is_not_ready_is_not_learned_from() {
        let client = client(&["127.0.0.1:1"]).await;
        let isolated = v1::ClusterStatusResponse {
            ready: false,
            ..status(&THREE_READY)
        };
        client.learn(&isolated);
        assert_eq!(client.endpoints(), ["http://127.0.0.1:1"]);
    }

    #[tokio::test]
    async fn a_write_goes_to_its_primary_and_fails_over_to_the_current_endpoint() {
        let client = client(&["127.0.0.1:1"]).await;
        client.learn(&status(&THREE_READY));
        let key = key_with_primary("n2", ["n1", "n2", "n3"]);
        let primary = Target::PrimaryOf(&key);
        assert_eq!(
            answering_endpoint(&client, primary, 0).await,
            "http://127.0.0.1:2"
        );
        assert_eq!(
            answering_endpoint(&client, primary, 1).await,
            "http://127.0.0.1:1",
            "the retry goes to the endpoint in use"
        );
        // Reads stay where they were.
        assert_eq!(
            answering_endpoint(&client, Target::AnyNode, 0).await,
            "http://127.0.0.1:1"
        );
    }

    #[tokio::test]
    async fn a_write_whose_primary_is_the_current_endpoint_fails_over_to_the_next_member() {
        let client = client(&["127.0.0.1:1"]).await;
        client.learn(&status(&THREE_READY));
        let key = key_with_primary("n1", ["n1", "n2", "n3"]);
        assert_eq!(
            answering_endpoint(&client, Target::PrimaryOf(&key), 1).await,
            "http://127.0.0.1:2"
        );
        assert_eq!(
            answering_endpoint(&client, Target::AnyNode, 0).await,
            "http://127.0.0.1:2"
        );
    }

    #[tokio::test]
    async fn without_a_topology_every_request_goes_to_the_configured_endpoints() {
        let client = client(&["127.0.0.1:1", "127.0.0.1:2"]).await;
        let key = b"k".to_vec();
        assert_eq!(
            answering_endpoint(&client, Target::PrimaryOf(&key), 0).await,
            "http://127.0.0.1:1"
        );
        assert_eq!(
            answering_endpoint(&client, Target::AnyNode, 2).await,
            "http://127.0.0.1:1",
            "two failures went round both endpoints"
        );
    }

    #[tokio::test]
    async fn the_refresh_task_ends_with_the_last_clone_of_the_client() {
        let client = Client::connect(["127.0.0.1:1"]).await.unwrap();
        let task = client.shared.refresher.get().unwrap().task_handle();
        let clone = client.clone();
        drop(client);
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drop(clone);
        // The abort takes effect when the task is next polled.
        for _ in 0..1000 {
            if task.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(task.is_finished());
    }

    /// Whoever awaits a request moves its future at least once (into a task, a box, a
    /// join of many), and so does every layer that awaits it, so its size is a cost per
    /// request. Inline, the unary path, the stream opening and the retry layers (each
    /// holding its own copy of what it awaits) made a `put` over 20 KiB, and moving it
    /// was a third of a pipelined load generator's CPU.
    #[tokio::test]
    async fn a_request_future_stays_small() {
        let client = client(&["http://127.0.0.1:1"]).await;
        let cache = client.cache("work");
        let put = cache.put("key", "value", crate::WriteOptions::new());
        let get = cache.get("key");
        let ping = cache.ping();
        for (what, size) in [
            ("put", std::mem::size_of_val(&put)),
            ("get", std::mem::size_of_val(&get)),
            ("ping", std::mem::size_of_val(&ping)),
        ] {
            assert!(size <= 4096, "the future of a {what} is {size} bytes");
        }
    }
}
