//! The single-key `Cache` RPCs sent either unary or on one `Pipeline` stream, behind the
//! generated client's own method signatures, so that one conformance test checks both
//! paths answer alike.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tokio::sync::{Mutex, mpsc};
use tonic::transport::Channel;
use tonic::{Code, Response, Status, Streaming};

/// How single-key requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// One unary call each.
    Unary,
    /// All on one `Pipeline` stream.
    Pipelined,
}

/// The generated `Cache` client, whose single-key RPCs go the chosen [`Path`]; every
/// other RPC is the generated client's (through `Deref`).
#[derive(Debug, Clone)]
pub struct CacheRpc {
    unary: CacheClient<Channel>,
    pipeline: Option<Arc<Mutex<PipelineStream>>>,
}

/// One open `Pipeline` stream, used one request at a time.
#[derive(Debug)]
struct PipelineStream {
    requests: mpsc::Sender<v1::PipelineRequest>,
    answers: Streaming<v1::PipelineResponse>,
    next_id: u64,
}

impl CacheRpc {
    /// A client on `channel` that sends single-key requests by `path`.
    pub async fn new(channel: Channel, path: Path) -> Result<CacheRpc, Status> {
        let mut unary = CacheClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let pipeline = match path {
            Path::Unary => None,
            Path::Pipelined => {
                let (requests, answers) = open_pipeline(&mut unary).await?;
                Some(Arc::new(Mutex::new(PipelineStream {
                    requests,
                    answers,
                    next_id: 1,
                })))
            }
        };
        Ok(CacheRpc { unary, pipeline })
    }

    /// Sends one request on the pipeline and waits for its answer; a request's error
    /// becomes the status its unary call would have ended with.
    async fn call(
        pipeline: &Mutex<PipelineStream>,
        operation: Operation,
    ) -> Result<Answer, Status> {
        let mut stream = pipeline.lock().await;
        let id = stream.next_id;
        stream.next_id += 1;
        stream
            .requests
            .send(v1::PipelineRequest {
                id,
                operation: Some(operation),
            })
            .await
            .map_err(|_| Status::unavailable("pipeline request stream closed"))?;
        let answer = stream
            .answers
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("pipeline ended before answering"))?;
        if answer.id != id {
            return Err(Status::internal(format!(
                "pipeline answered request {} while request {id} was the only one in flight",
                answer.id
            )));
        }
        match answer.result {
            Some(Answer::Error(error)) => Err(Status::new(Code::from(error.code), error.message)),
            Some(answer) => Ok(answer),
            None => Err(Status::internal("pipeline answer without result")),
        }
    }
}

/// Opens a `Pipeline` stream on `client`: where to send requests, and the answers.
pub async fn open_pipeline(
    client: &mut CacheClient<Channel>,
) -> Result<
    (
        mpsc::Sender<v1::PipelineRequest>,
        Streaming<v1::PipelineResponse>,
    ),
    Status,
> {
    let (requests, receiver) = mpsc::channel(1024);
    let answers = client
        .pipeline(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((requests, answers))
}

macro_rules! single_key {
    ($($method:ident($request:ident) -> $response:ident as $variant:ident;)*) => {
        impl CacheRpc {$(
            #[doc = concat!("`", stringify!($variant), "`, by the chosen path.")]
            pub async fn $method(
                &mut self,
                request: v1::$request,
            ) -> Result<Response<v1::$response>, Status> {
                let Some(pipeline) = &self.pipeline else {
                    return self.unary.$method(request).await;
                };
                match Self::call(pipeline, Operation::$variant(request)).await? {
                    Answer::$variant(response) => Ok(Response::new(response)),
                    other => Err(Status::internal(format!(
                        "pipeline answered {} with {other:?}",
                        stringify!($variant)
                    ))),
                }
            }
        )*}
    };
}

single_key! {
    get(GetRequest) -> GetResponse as Get;
    put(PutRequest) -> PutResponse as Put;
    put_if_absent(PutIfAbsentRequest) -> PutIfAbsentResponse as PutIfAbsent;
    replace(ReplaceRequest) -> ReplaceResponse as Replace;
    replace_with_version(ReplaceWithVersionRequest) -> ReplaceWithVersionResponse
        as ReplaceWithVersion;
    remove(RemoveRequest) -> RemoveResponse as Remove;
    remove_with_version(RemoveWithVersionRequest) -> RemoveWithVersionResponse
        as RemoveWithVersion;
}

impl Deref for CacheRpc {
    type Target = CacheClient<Channel>;

    fn deref(&self) -> &Self::Target {
        &self.unary
    }
}

impl DerefMut for CacheRpc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.unary
    }
}
