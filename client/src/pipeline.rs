//! The pipelined path: single-key requests multiplexed on a few long-lived
//! `PipelineBatch` streams per endpoint.
//!
//! A unary call costs an HTTP/2 stream (headers, trailers, a task on the server); a
//! request on an open `PipelineBatch` stream costs a share of a message each way: the
//! requests queued together (from any tasks) leave in one message, and the answers the
//! server has ready together come back in one. A server without `PipelineBatch` (an
//! older version) is sent one request to a message on `Pipeline` instead. Every endpoint
//! has [`Pipelines`]: a few streams ([`Multiplexed`]), opened on first use on the
//! endpoint's channel and again after they break, each with a bounded window of
//! requests in flight. Requests from every task of the application fill the first
//! stream and spill to the next only when it is busy (see [`SPREAD_AT`]). A request
//! whose stream breaks fails with UNAVAILABLE and is retried like any failed request
//! (writes keep their request id, so the server applies a retried write once).

use std::sync::atomic::{AtomicUsize, Ordering};

use sitegrid_proto::multiplex::{self, Calls, Deadline, Multiplexed, Streamless};
use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::cache_client;
use crate::credentials::Credentials;

/// Streams per endpoint.
pub(crate) const STREAMS: usize = 4;
/// Requests in flight on one stream; more wait for room.
pub(crate) const WINDOW: usize = 256;
/// Requests in flight on a stream from which the next request goes to another one.
///
/// Answers that are ready together leave the server in one write, and requests sent
/// together arrive in one read, only if they share a stream: a light load (a few dozen
/// requests in flight) is cheapest on one stream. A heavy one is spread, because the
/// server runs one stream's requests on one task. On a 3-node site at 64 callers,
/// filling one stream first instead of taking the four in turn took the nodes' socket
/// writes from 1.19 to 0.85 per write and their CPU from 70-78 to 61-65 us per write;
/// a single node at depth 16 (1024 in flight) did 98k ops/s on one stream, 134k on four.
pub(crate) const SPREAD_AT: usize = 32;

/// The `Pipeline` streams of one endpoint.
#[derive(Debug)]
pub(crate) struct Pipelines {
    streams: Vec<PipelineStream>,
    /// Which stream the next request takes when every stream is busy.
    next: AtomicUsize,
}

impl Pipelines {
    /// Streams on `channel`, none open yet.
    pub(crate) fn new(channel: &Channel, credentials: &Credentials) -> Pipelines {
        Pipelines {
            streams: (0..STREAMS)
                .map(|_| PipelineStream {
                    channel: channel.clone(),
                    credentials: credentials.clone(),
                    batches: Multiplexed::default(),
                    single: Multiplexed::default(),
                    batchless: Streamless::default(),
                    window: Semaphore::new(WINDOW),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `operation` on one of the streams and waits for its answer until
    /// `deadline`. A request that failed on the server is answered with the status its
    /// unary call would have had; one unanswered by the deadline fails with
    /// DEADLINE_EXCEEDED, whose source is [`multiplex::Expired`].
    pub(crate) async fn call(
        &self,
        operation: Operation,
        deadline: Deadline,
    ) -> Result<Answer, Status> {
        self.pick().call(operation, deadline).await
    }

    /// Sends `operations` together on one stream and waits for all their answers until
    /// `deadline`: each one's answer or error (as for [`Pipelines::call`]), in order. They
    /// travel in the same messages and the caller waits for one reply, not one per
    /// request; more than a window holds go a window at a time, each after the one
    /// before is answered, so that those to one key run in the order given. Fails as a
    /// whole only if the stream could not take them.
    pub(crate) async fn call_many(
        &self,
        mut operations: Vec<Operation>,
        deadline: Deadline,
    ) -> Result<Vec<Result<Answer, Status>>, Status> {
        let stream = self.pick();
        if operations.len() <= WINDOW {
            return stream.call_many(operations, deadline).await;
        }
        let mut answers = Vec::with_capacity(operations.len());
        while !operations.is_empty() {
            let rest = operations.split_off(WINDOW.min(operations.len()));
            answers.extend(stream.call_many(operations, deadline).await?);
            operations = rest;
        }
        Ok(answers)
    }

    /// The first stream with fewer than [`SPREAD_AT`] requests in flight, or else the
    /// streams in turn.
    fn pick(&self) -> &PipelineStream {
        match self
            .streams
            .iter()
            .find(|stream| stream.in_flight() < SPREAD_AT)
        {
            Some(stream) => stream,
            None => {
                let index = self.next.fetch_add(1, Ordering::Relaxed) % self.streams.len();
                &self.streams[index]
            }
        }
    }
}

/// One stream, opened when needed.
#[derive(Debug)]
struct PipelineStream {
    channel: Channel,
    /// What the stream is opened with.
    credentials: Credentials,
    /// The `PipelineBatch` stream.
    batches: Multiplexed<v1::PipelineBatchRequest, v1::PipelineBatchResponse>,
    /// The `Pipeline` stream, for a server without `PipelineBatch`.
    single: Multiplexed<v1::PipelineRequest, v1::PipelineResponse>,
    /// Whether the server is taken for one without `PipelineBatch`.
    batchless: Streamless,
    /// Room for requests in flight.
    window: Semaphore,
}

impl PipelineStream {
    /// Requests on this stream that hold room in its window.
    fn in_flight(&self) -> usize {
        WINDOW.saturating_sub(self.window.available_permits())
    }

    async fn call(&self, operation: Operation, deadline: Deadline) -> Result<Answer, Status> {
        let _room = self.room(1, deadline).await?;
        let request = request(operation);
        let deadline = Some(deadline);
        if let Some(stream) = self.batch_stream(deadline).await? {
            return result_of(stream.call(request, deadline).await?.result);
        }
        result_of(self.on_single(request, deadline).await?.result)
    }

    /// [`Pipelines::call_many`] on this stream, for at most [`WINDOW`] operations.
    async fn call_many(
        &self,
        operations: Vec<Operation>,
        deadline: Deadline,
    ) -> Result<Vec<Result<Answer, Status>>, Status> {
        let _room = self.room(operations.len(), deadline).await?;
        let kinds: Vec<_> = operations.iter().map(Kind::of).collect();
        let requests = operations.into_iter().map(request).collect();
        let deadline = Some(deadline);
        let answers = match self.batch_stream(deadline).await? {
            Some(stream) => stream.call_many(requests, deadline).await?,
            // One request to a message: nothing to share but the wait.
            None => {
                let answers = requests
                    .into_iter()
                    .map(|request| self.on_single(request, deadline));
                futures::future::join_all(answers).await
            }
        };
        Ok(answers
            .into_iter()
            .zip(kinds)
            .map(|(answer, kind)| {
                let answer = result_of(answer?.result)?;
                match kind.answered_by(&answer) {
                    true => Ok(answer),
                    false => Err(other_kind()),
                }
            })
            .collect())
    }

    /// Room in the window for `requests` requests (at most [`WINDOW`]), waited for until
    /// `deadline`. A timer only while the window is full: the stream keeps the deadline.
    async fn room(
        &self,
        requests: usize,
        deadline: Deadline,
    ) -> Result<SemaphorePermit<'_>, Status> {
        let requests = requests.min(WINDOW) as u32;
        let room = match self.window.try_acquire_many(requests) {
            Ok(room) => Some(room),
            Err(TryAcquireError::NoPermits) => {
                tokio::time::timeout_at(deadline, self.window.acquire_many(requests))
                    .await
                    .map_err(|_| multiplex::expired())?
                    .ok()
            }
            Err(TryAcquireError::Closed) => None,
        };
        room.ok_or_else(|| Status::unavailable("pipeline closed"))
    }

    /// The open `PipelineBatch` stream, opening it if needed; `None` if the server is
    /// taken for one without it (and from now on if it answers so).
    async fn batch_stream(
        &self,
        deadline: Option<Deadline>,
    ) -> Result<Option<Calls<v1::PipelineBatchRequest, v1::PipelineBatchResponse>>, Status> {
        if !self.batchless.stream_usable() {
            return Ok(None);
        }
        let opened = self
            .batches
            .link(deadline, |outgoing| async move {
                Ok(cache_client(self.channel.clone())
                    .pipeline_batch(self.signed(outgoing))
                    .await?
                    .into_inner())
            })
            .await;
        match opened {
            Ok(stream) => Ok(Some(stream)),
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!(retry_in = ?Streamless::FOR,
                    "the server has no PipelineBatch (an older version): pipelining on Pipeline");
                self.batchless.lacking();
                Ok(None)
            }
            Err(status) => Err(status),
        }
    }

    /// Sends `request` on the `Pipeline` stream (one request to a message).
    async fn on_single(
        &self,
        request: v1::PipelineRequest,
        deadline: Option<Deadline>,
    ) -> Result<v1::PipelineResponse, Status> {
        self.single
            .call(request, deadline, |outgoing| async move {
                Ok(cache_client(self.channel.clone())
                    .pipeline(self.signed(outgoing))
                    .await?
                    .into_inner())
            })
            .await
    }

    /// The request opening a stream that sends `outgoing`, with the credentials.
    fn signed<T>(&self, outgoing: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(outgoing);
        self.credentials.sign(&mut request);
        request
    }
}

/// The request carrying `operation` (the stream gives it its id).
fn request(operation: Operation) -> v1::PipelineRequest {
    v1::PipelineRequest {
        id: 0,
        operation: Some(operation),
    }
}

/// The key `operation` reads or writes.
pub(crate) fn key_of(operation: &Operation) -> &bytes::Bytes {
    match operation {
        Operation::Get(r) => &r.key,
        Operation::Put(r) => &r.key,
        Operation::PutIfAbsent(r) => &r.key,
        Operation::Replace(r) => &r.key,
        Operation::ReplaceWithVersion(r) => &r.key,
        Operation::Remove(r) => &r.key,
        Operation::RemoveWithVersion(r) => &r.key,
    }
}

/// The status of a request answered with a response to another kind of request.
pub(crate) fn other_kind() -> Status {
    Status::internal("the pipeline answered with another request's response")
}

/// The answer to one request: the response, or the error as a status.
fn result_of(result: Option<Answer>) -> Result<Answer, Status> {
    match result {
        Some(Answer::Error(error)) => Err(error.into()),
        Some(answer) => Ok(answer),
        None => Err(Status::internal("pipeline answer without result")),
    }
}

/// A single-key request that can travel on a pipeline: how it goes in, and how its
/// response comes out.
pub(crate) trait SingleKey: Clone {
    type Response;
    fn into_operation(self) -> Operation;
    /// The response, if `answer` is of this request's kind.
    fn response(answer: Answer) -> Option<Self::Response>;
}

macro_rules! single_key {
    ($($request:ident => $response:ident as $variant:ident),* $(,)?) => {
        $(
            impl SingleKey for v1::$request {
                type Response = v1::$response;

                fn into_operation(self) -> Operation {
                    Operation::$variant(self)
                }

                fn response(answer: Answer) -> Option<v1::$response> {
                    match answer {
                        Answer::$variant(response) => Some(response),
                        _ => None,
                    }
                }
            }
        )*

        /// Which single-key request an operation is: its answer must be of the same kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Kind {
            $($variant),*
        }

        impl Kind {
            fn of(operation: &Operation) -> Kind {
                match operation {
                    $(Operation::$variant(_) => Kind::$variant),*
                }
            }

            /// Whether `answer` is of this kind (an error answers any).
            fn answered_by(self, answer: &Answer) -> bool {
                match answer {
                    $(Answer::$variant(_) => self == Kind::$variant,)*
                    Answer::Error(_) => true,
                }
            }
        }
    };
}

single_key!(
    GetRequest => GetResponse as Get,
    PutRequest => PutResponse as Put,
    PutIfAbsentRequest => PutIfAbsentResponse as PutIfAbsent,
    ReplaceRequest => ReplaceResponse as Replace,
    ReplaceWithVersionRequest => ReplaceWithVersionResponse as ReplaceWithVersion,
    RemoveRequest => RemoveResponse as Remove,
    RemoveWithVersionRequest => RemoveWithVersionResponse as RemoveWithVersion,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn pipelines() -> Pipelines {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Pipelines::new(&channel, &Credentials::default())
    }

    fn index_of(pipelines: &Pipelines, stream: &PipelineStream) -> usize {
        pipelines
            .streams
            .iter()
            .position(|candidate| std::ptr::eq(candidate, stream))
            .expect("one of its streams")
    }

    #[tokio::test]
    async fn a_light_load_shares_one_stream_and_a_heavy_one_spreads() {
        let pipelines = pipelines();
        for _ in 0..10 {
            assert_eq!(
                index_of(&pipelines, pipelines.pick()),
                0,
                "idle: the first stream"
            );
        }
        let busy = pipelines.streams[0]
            .window
            .acquire_many(SPREAD_AT as u32 - 1)
            .await
            .unwrap();
        assert_eq!(index_of(&pipelines, pipelines.pick()), 0, "below the mark");
        let more = pipelines.streams[0].window.acquire().await.unwrap();
        assert_eq!(
            index_of(&pipelines, pipelines.pick()),
            1,
            "the first is busy"
        );
        let second = pipelines.streams[1]
            .window
            .acquire_many(SPREAD_AT as u32)
            .await
            .unwrap();
        assert_eq!(
            index_of(&pipelines, pipelines.pick()),
            2,
            "so is the second"
        );
        drop(more);
        assert_eq!(
            index_of(&pipelines, pipelines.pick()),
            0,
            "room again on the first"
        );
        let all: Vec<_> = pipelines.streams[2..]
            .iter()
            .map(|stream| stream.window.try_acquire_many(SPREAD_AT as u32).unwrap())
            .collect();
        let _first = pipelines.streams[0].window.try_acquire().unwrap();
        let picked: std::collections::BTreeSet<_> = (0..STREAMS)
            .map(|_| index_of(&pipelines, pipelines.pick()))
            .collect();
        assert_eq!(picked.len(), STREAMS, "all busy: each in turn");
        drop((busy, second, all));
    }
}
