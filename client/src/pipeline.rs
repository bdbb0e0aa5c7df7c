//! The pipelined path: single-key requests multiplexed on a few long-lived `Pipeline`
//! streams per endpoint.
//!
//! A unary call costs an HTTP/2 stream (headers, trailers, a task on the server); a
//! request on an open `Pipeline` stream costs one small message each way. Every endpoint
//! has [`Pipelines`]: a few streams, opened on first use on the endpoint's channel and
//! again after they break, each with a bounded window of requests in flight. Requests
//! from every task of the application take turns over the streams. A request whose
//! stream breaks fails with UNAVAILABLE and is retried like any failed request (writes
//! keep their request id, so the server applies a retried write once).
//!
//! Each stream has a task that gives requests their ids, sends them, and hands every
//! answer to the request with the same id.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::credentials::Credentials;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use crate::client::cache_client;
use tonic::{Code, Status, Streaming};

/// Streams per endpoint.
pub(crate) const STREAMS: usize = 4;
/// Requests in flight on one stream; more wait for room.
pub(crate) const WINDOW: usize = 256;

/// A request to send, and where its answer goes.
type Call = (Operation, oneshot::Sender<Result<Answer, Status>>);

/// The `Pipeline` streams of one endpoint.
#[derive(Debug)]
pub(crate) struct Pipelines {
    streams: Vec<PipelineStream>,
    /// Which stream the next request takes.
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
                    link: Mutex::new(None),
                    window: Semaphore::new(WINDOW),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `operation` on one of the streams and waits for its answer. A request that
    /// failed on the server is answered with the status its unary call would have had.
    pub(crate) async fn call(&self, operation: Operation) -> Result<Answer, Status> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.streams.len();
        self.streams[index].call(operation).await
    }
}

/// One stream, opened when needed.
#[derive(Debug)]
struct PipelineStream {
    channel: Channel,
    /// What the stream is opened with.
    credentials: Credentials,
    /// Where the stream's task takes requests; `None` or closed when no stream is open.
    link: Mutex<Option<mpsc::UnboundedSender<Call>>>,
    /// Room for requests in flight.
    window: Semaphore,
}

impl PipelineStream {
    async fn call(&self, operation: Operation) -> Result<Answer, Status> {
        let _room = self
            .window
            .acquire()
            .await
            .map_err(|_| Status::unavailable("pipeline closed"))?;
        let link = self.link().await?;
        let (reply, answer) = oneshot::channel();
        link.send((operation, reply))
            .map_err(|_| Status::unavailable("pipeline stream closed"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("pipeline stream ended")))
    }

    /// The open stream's task, opening a stream if there is none.
    async fn link(&self) -> Result<mpsc::UnboundedSender<Call>, Status> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref().filter(|open| !open.is_closed()) {
            return Ok(open.clone());
        }
        let (requests, outgoing) = mpsc::unbounded_channel();
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(outgoing));
        self.credentials.sign(&mut request);
        let answers = cache_client(self.channel.clone())
            .pipeline(request)
            .await?
            .into_inner();
        let (calls, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run(incoming, requests, answers));
        *link = Some(calls.clone());
        Ok(calls)
    }
}

/// A stream's task: numbers and sends each request, and hands each answer to its
/// request; when the stream breaks, fails every request in flight. Ends when the stream
/// breaks or, once no request can come any more, when the last answer is in.
async fn run(
    mut calls: mpsc::UnboundedReceiver<Call>,
    requests: mpsc::UnboundedSender<v1::PipelineRequest>,
    mut answers: Streaming<v1::PipelineResponse>,
) {
    let mut in_flight: HashMap<u64, oneshot::Sender<Result<Answer, Status>>> = HashMap::new();
    let mut next_id = 0u64;
    let mut open = true;
    let broken = loop {
        tokio::select! {
            call = calls.recv(), if open => match call {
                Some((operation, reply)) => {
                    next_id += 1;
                    let request = v1::PipelineRequest { id: next_id, operation: Some(operation) };
                    if requests.send(request).is_err() {
                        let _ = reply.send(Err(Status::unavailable("pipeline stream closed")));
                        break Status::unavailable("pipeline stream closed");
                    }
                    in_flight.insert(next_id, reply);
                }
                None if in_flight.is_empty() => return,
                None => open = false,
            },
            answer = answers.message() => match answer {
                Ok(Some(answer)) => {
                    if let Some(reply) = in_flight.remove(&answer.id) {
                        let _ = reply.send(result_of(answer.result));
                    }
                    if !open && in_flight.is_empty() {
                        return;
                    }
                }
                Ok(None) => break Status::unavailable("the server ended the pipeline stream"),
                Err(status) => break broken_stream(status),
            },
        }
    };
    // Requests queued for this task after it stopped reading them are dropped with it,
    // and their callers see the stream ended.
    for (_, reply) in in_flight {
        let _ = reply.send(Err(Status::new(broken.code(), broken.message())));
    }
}

/// The answer to one request: the response, or the error as a status.
fn result_of(result: Option<Answer>) -> Result<Answer, Status> {
    match result {
        Some(Answer::Error(error)) => Err(Status::new(Code::from(error.code), error.message)),
        Some(answer) => Ok(answer),
        None => Err(Status::internal("pipeline answer without result")),
    }
}

/// What the requests in flight on a broken stream fail with: the server's status if it
/// ended the stream with one, UNAVAILABLE if the connection failed here (so that they
/// are retried on another endpoint).
fn broken_stream(status: Status) -> Status {
    match status.source() {
        None => status,
        Some(cause) => Status::unavailable(format!(
            "pipeline stream broke: {}: {cause}",
            status.message()
        )),
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
    ($($request:ident => $response:ident as $variant:ident),* $(,)?) => {$(
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
    )*};
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
