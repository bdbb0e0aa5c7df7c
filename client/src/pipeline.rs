//! The pipelined path: single-key requests multiplexed on a few long-lived `Pipeline`
//! streams per endpoint.
//!
//! A unary call costs an HTTP/2 stream (headers, trailers, a task on the server); a
//! request on an open `Pipeline` stream costs one small message each way. Every endpoint
//! has [`Pipelines`]: a few streams ([`Multiplexed`]), opened on first use on the
//! endpoint's channel and again after they break, each with a bounded window of
//! requests in flight. Requests from every task of the application take turns over the
//! streams. A request whose stream breaks fails with UNAVAILABLE and is retried like any
//! failed request (writes keep their request id, so the server applies a retried write
//! once).

use std::sync::atomic::{AtomicUsize, Ordering};

use sitegrid_proto::multiplex::Multiplexed;
use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::transport::Channel;

use crate::client::cache_client;
use crate::credentials::Credentials;

/// Streams per endpoint.
pub(crate) const STREAMS: usize = 4;
/// Requests in flight on one stream; more wait for room.
pub(crate) const WINDOW: usize = 256;

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
                    stream: Multiplexed::default(),
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
    stream: Multiplexed<v1::PipelineRequest, v1::PipelineResponse>,
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
        let request = v1::PipelineRequest {
            id: 0,
            operation: Some(operation),
        };
        let answer = self
            .stream
            .call(request, |outgoing| async move {
                let mut request = tonic::Request::new(outgoing);
                self.credentials.sign(&mut request);
                Ok(cache_client(self.channel.clone())
                    .pipeline(request)
                    .await?
                    .into_inner())
            })
            .await?;
        result_of(answer.result)
    }
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
