//! The transport's ceiling: a `Cache` server with no store, answering each pipelined
//! `Get` with the same 256-byte value and each `Put` with a version, so that
//! `sitegridctl bench --pipeline DEPTH` against it measures what the client library,
//! tonic and HTTP/2 carry on this machine, and, by difference with a node, what the
//! node's own work per request costs. Not a node: nothing is stored.
//!
//! ```text
//! cargo run --release -p sitegrid-server --example transport_ceiling -- 127.0.0.1:11299 &
//! target/release/sitegridctl bench -e 127.0.0.1:11299 --op get --cache work \
//!     --concurrency 50 --value-size 256 --keys 100000 --duration 5s --pipeline 16
//! ```

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sitegrid_proto::v1::cache_server::{Cache, CacheServer};
use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tonic::{Request, Response, Status, Streaming};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers pipelined Gets and Puts; every other call is UNIMPLEMENTED.
struct Canned {
    value: Bytes,
}

impl Canned {
    fn answer(&self, request: v1::PipelineRequest) -> v1::PipelineResponse {
        let result = match request.operation {
            Some(Operation::Get(_)) => Answer::Get(v1::GetResponse {
                found: true,
                value: self.value.clone(),
                metadata: Some(v1::Metadata {
                    version: 1 << 20,
                    origin_site: "site1".into(),
                    created_ms: 1_700_000_000_000,
                    last_used_ms: 1_700_000_000_000,
                    ..Default::default()
                }),
            }),
            Some(Operation::Put(_)) => Answer::Put(v1::PutResponse {
                version: 1 << 20,
                previous: None,
            }),
            _ => Answer::Error(v1::RequestError {
                code: tonic::Code::Unimplemented as i32,
                message: "the transport ceiling answers Get and Put only".into(),
            }),
        };
        v1::PipelineResponse {
            id: request.id,
            result: Some(result),
        }
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the transport ceiling answers PipelineBatch only",
    ))
}

#[tonic::async_trait]
impl Cache for Canned {
    async fn ping(
        &self,
        _: Request<v1::PingRequest>,
    ) -> Result<Response<v1::PingResponse>, Status> {
        unimplemented()
    }

    async fn get(&self, _: Request<v1::GetRequest>) -> Result<Response<v1::GetResponse>, Status> {
        unimplemented()
    }

    async fn put(&self, _: Request<v1::PutRequest>) -> Result<Response<v1::PutResponse>, Status> {
        unimplemented()
    }

    async fn put_if_absent(
        &self,
        _: Request<v1::PutIfAbsentRequest>,
    ) -> Result<Response<v1::PutIfAbsentResponse>, Status> {
        unimplemented()
    }

    async fn replace(
        &self,
        _: Request<v1::ReplaceRequest>,
    ) -> Result<Response<v1::ReplaceResponse>, Status> {
        unimplemented()
    }

    async fn replace_with_version(
        &self,
        _: Request<v1::ReplaceWithVersionRequest>,
    ) -> Result<Response<v1::ReplaceWithVersionResponse>, Status> {
        unimplemented()
    }

    async fn remove(
        &self,
        _: Request<v1::RemoveRequest>,
    ) -> Result<Response<v1::RemoveResponse>, Status> {
        unimplemented()
    }

    async fn remove_with_version(
        &self,
        _: Request<v1::RemoveWithVersionRequest>,
    ) -> Result<Response<v1::RemoveWithVersionResponse>, Status> {
        unimplemented()
    }

    async fn get_all(
        &self,
        _: Request<v1::GetAllRequest>,
    ) -> Result<Response<v1::GetAllResponse>, Status> {
        unimplemented()
    }

    async fn put_all(
        &self,
        _: Request<v1::PutAllRequest>,
    ) -> Result<Response<v1::PutAllResponse>, Status> {
        unimplemented()
    }

    async fn remove_by_tag(
        &self,
        _: Request<v1::RemoveByTagRequest>,
    ) -> Result<Response<v1::RemoveByTagResponse>, Status> {
        unimplemented()
    }

    async fn size(
        &self,
        _: Request<v1::SizeRequest>,
    ) -> Result<Response<v1::SizeResponse>, Status> {
        unimplemented()
    }

    async fn clear(
        &self,
        _: Request<v1::ClearRequest>,
    ) -> Result<Response<v1::ClearResponse>, Status> {
        unimplemented()
    }

    async fn entries(
        &self,
        _: Request<v1::EntriesRequest>,
    ) -> Result<Response<Self::EntriesStream>, Status> {
        unimplemented()
    }

    async fn listen(
        &self,
        _: Request<v1::ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        unimplemented()
    }

    async fn pipeline(
        &self,
        _: Request<Streaming<v1::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        unimplemented()
    }

    type EntriesStream = Answers<v1::EntriesResponse>;
    type ListenStream = Answers<v1::CacheEvent>;
    type PipelineStream = Answers<v1::PipelineResponse>;
    type PipelineBatchStream = Answers<v1::PipelineBatchResponse>;

    async fn pipeline_batch(
        &self,
        request: Request<Streaming<v1::PipelineBatchRequest>>,
    ) -> Result<Response<Self::PipelineBatchStream>, Status> {
        let canned = Canned {
            value: self.value.clone(),
        };
        let answers = request.into_inner().map(move |message| {
            Ok(v1::PipelineBatchResponse {
                responses: message?
                    .requests
                    .into_iter()
                    .map(|request| canned.answer(request))
                    .collect(),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:11299".into())
        .parse()?;
    println!("transport ceiling listening on {listen}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(CacheServer::new(Canned {
            value: Bytes::from(vec![b'x'; 256]),
        }))
        .serve(listen)
        .await?;
    Ok(())
}
