//! The `Cache` gRPC service: validates each request, runs it on the store, and shapes
//! the answer. Conditions that don't hold are answers, not errors.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use sitegrid_proto::multiplex::Wire;
use sitegrid_proto::v1::{self, cache_server::Cache};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::audit::{self, Audit};
use crate::api::auth::{Caller, Permission};
use crate::api::convert::{self, keyed, metadata, value_of, versioned};
use crate::api::limits::ClientLimits;
use crate::api::observe::{Op, RequestMetrics};
use crate::api::pipeline;
use crate::api::validate::Validator;
use crate::events::subscription::{ListenSpec, Subscription};
use crate::faults::{self, Fault};
use crate::node::NodeState;
use crate::store::cache::{Condition, WriteOp, WriteRequest, WriteResult};
use crate::store::{Driver, Store};

/// Entries per batch of an `Entries` stream when the request leaves it to the server.
const DEFAULT_BATCH_SIZE: usize = 1000;
/// Largest batch an `Entries` stream sends.
const MAX_BATCH_SIZE: usize = 10_000;
/// Most bytes of entries in one `Entries` message (a larger entry goes alone), so that
/// a batch of large values stays within what clients accept.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Events between a subscription's task and its gRPC stream; the real buffer is the
/// hub's ring (`events.listener_buffer`), this only smooths the hand-over.
const LISTEN_CHANNEL: usize = 64;
/// Batches of answers between a pipeline's task and its gRPC stream.
const PIPELINE_CHANNEL: usize = 256;

/// The `Cache` service of one node.
#[derive(Debug, Clone)]
pub struct CacheService {
    store: Store,
    validator: Validator,
    state: NodeState,
    metrics: std::sync::Arc<RequestMetrics>,
    limits: std::sync::Arc<ClientLimits>,
    audit: std::sync::Arc<Audit>,
    /// Who sees a write to its end: its own task for unary calls, whose client may go
    /// away mid-write; the stream's task for pipelined ones ([`pipeline`] runs what it
    /// admitted to the end).
    writes: Driver,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::CacheEvent, Status>> + Send>>;
type PipelineStream = Pin<Box<dyn Stream<Item = Result<v1::PipelineResponse, Status>> + Send>>;
type PipelineBatchStream =
    Pin<Box<dyn Stream<Item = Result<v1::PipelineBatchResponse, Status>> + Send>>;
type EntriesStream = Pin<Box<dyn Stream<Item = Result<v1::EntriesResponse, Status>> + Send>>;

impl CacheService {
    pub(crate) fn new(
        store: Store,
        validator: Validator,
        state: NodeState,
        limits: std::sync::Arc<ClientLimits>,
        audit: std::sync::Arc<Audit>,
    ) -> CacheService {
        let metrics = RequestMetrics::new(store.caches().map(|cache| &**cache.name()));
        CacheService {
            store,
            validator,
            state,
            metrics: std::sync::Arc::new(metrics),
            limits,
            audit,
            writes: Driver::OwnTask,
        }
    }

    /// The per-client limits this service enforces.
    /// Serves a `Pipeline` or `PipelineBatch` stream (its messages carry one request or
    /// several, as their [`Wire`] says) on a task of its own; returns its answers, those
    /// ready together packed as the answers' [`Wire`] packs them (in messages of a size
    /// the client takes).
    fn pipeline_stream<Up, Down>(
        &self,
        request: Request<Streaming<Up>>,
    ) -> Pin<Box<dyn Stream<Item = Result<Down, Status>> + Send>>
    where
        Up: Wire<Call = v1::PipelineRequest>,
        Down: Wire<Call = v1::PipelineResponse>,
    {
        let (sender, receiver) = mpsc::channel(PIPELINE_CHANNEL);
        let caller = Caller::of(request.extensions());
        let requests = request
            .into_inner()
            .map(|message| message.map(Wire::unpack));
        tokio::spawn(pipeline::run(
            CacheService {
                writes: Driver::Caller,
                ..self.clone()
            },
            caller,
            requests,
            sender,
            self.state.stopping(),
        ));
        Box::pin(futures::StreamExt::flat_map(
            ReceiverStream::new(receiver),
            |answers| futures::stream::iter(Down::pack(answers).map(Ok)),
        ))
    }

    pub(crate) fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Checks a Listen request and resolves its caches.
    fn listen_spec(&self, caller: &Caller, r: &v1::ListenRequest) -> crate::Result<ListenSpec> {
        if r.caches.is_empty() {
            return Err(crate::Error::InvalidArgument(
                "caches must name at least one cache".into(),
            ));
        }
        let mut caches: Vec<std::sync::Arc<crate::store::cache::CacheStore>> = Vec::new();
        for name in &r.caches {
            caller.may(Permission::Listen, name)?;
            let cache = self.store.cache(name)?;
            if !caches.iter().any(|c| c.name() == cache.name()) {
                caches.push(cache.clone());
            }
        }
        if !r.key_prefix.is_empty() {
            self.validator.check_key(&r.key_prefix)?;
        }
        Ok(ListenSpec {
            caches,
            key_prefix: Bytes::copy_from_slice(&r.key_prefix),
            tag: self.validator.tag_filter(&r.tag)?,
            include_current_state: r.include_current_state,
            resume_from: r.resume_from_version,
            sync_markers: r.sync_markers,
        })
    }

    fn request_id(id: &str) -> Option<&str> {
        (!id.is_empty()).then_some(id)
    }

    async fn write(
        &self,
        cache: &str,
        request: WriteRequest,
        request_id: &str,
    ) -> crate::Result<std::sync::Arc<WriteResult>> {
        self.state.check_accepting()?;
        self.store
            .write(cache, request, Self::request_id(request_id), self.writes)
            .await
    }

    /// A put-like request as a store write.
    fn put_request(
        &self,
        r: &impl PutFields,
        condition: Condition,
        keep_previous: bool,
    ) -> crate::Result<WriteRequest> {
        Ok(WriteRequest {
            key: self.validator.key(r.key())?,
            op: WriteOp::Put(self.validator.new_value(
                r.value(),
                r.lifespan_ms(),
                r.max_idle_ms(),
                r.tags(),
            )?),
            condition,
            keep_previous,
        })
    }

    /// `Get`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_get(
        &self,
        caller: &Caller,
        r: v1::GetRequest,
    ) -> Result<v1::GetResponse, Status> {
        self.metrics
            .observe(Op::Get, &r.cache, caller, async {
                self.state.check_serving()?;
                self.validator.check_key(&r.key)?;
                Ok(match self.store.get(&r.cache, &r.key)? {
                    Some(entry) => v1::GetResponse {
                        found: true,
                        metadata: Some(metadata(&entry)),
                        value: value_of(entry),
                    },
                    None => v1::GetResponse::default(),
                })
            })
            .await
    }

    /// `Put`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_put(
        &self,
        caller: &Caller,
        r: v1::PutRequest,
    ) -> Result<v1::PutResponse, Status> {
        self.metrics
            .observe(Op::Put, &r.cache, caller, async {
                let write = self.put_request(&r, Condition::Always, r.return_previous)?;
                let result = self.write(&r.cache, write, &r.request_id).await?;
                Ok(v1::PutResponse {
                    version: result.version,
                    previous: result
                        .previous
                        .as_deref()
                        .filter(|_| r.return_previous)
                        .map(versioned),
                })
            })
            .await
    }

    /// `PutIfAbsent`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_put_if_absent(
        &self,
        caller: &Caller,
        r: v1::PutIfAbsentRequest,
    ) -> Result<v1::PutIfAbsentResponse, Status> {
        self.metrics
            .observe(Op::PutIfAbsent, &r.cache, caller, async {
                let write = self.put_request(&r, Condition::Absent, false)?;
                let result = self.write(&r.cache, write, &r.request_id).await?;
                Ok(v1::PutIfAbsentResponse {
                    stored: result.applied,
                    version: result.version,
                    existing: if result.applied {
                        None
                    } else {
                        result.previous.as_deref().map(versioned)
                    },
                })
            })
            .await
    }

    /// `Replace`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_replace(
        &self,
        caller: &Caller,
        r: v1::ReplaceRequest,
    ) -> Result<v1::ReplaceResponse, Status> {
        self.metrics
            .observe(Op::Replace, &r.cache, caller, async {
                let write = self.put_request(&r, Condition::Present, true)?;
                let result = self.write(&r.cache, write, &r.request_id).await?;
                Ok(v1::ReplaceResponse {
                    replaced: result.applied,
                    version: result.version,
                    previous: result
                        .previous
                        .as_deref()
                        .filter(|_| result.applied)
                        .map(versioned),
                })
            })
            .await
    }

    /// `ReplaceWithVersion`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_replace_with_version(
        &self,
        caller: &Caller,
        r: v1::ReplaceWithVersionRequest,
    ) -> Result<v1::ReplaceWithVersionResponse, Status> {
        self.metrics
            .observe(Op::ReplaceWithVersion, &r.cache, caller, async {
                let write =
                    self.put_request(&r, Condition::VersionIs(r.expected_version), false)?;
                let result = self.write(&r.cache, write, &r.request_id).await?;
                Ok(v1::ReplaceWithVersionResponse {
                    replaced: result.applied,
                    version: result.version,
                    current: if result.applied {
                        None
                    } else {
                        result.previous.as_deref().map(versioned)
                    },
                })
            })
            .await
    }

    /// `Remove`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_remove(
        &self,
        caller: &Caller,
        r: v1::RemoveRequest,
    ) -> Result<v1::RemoveResponse, Status> {
        self.metrics
            .observe(Op::Remove, &r.cache, caller, async {
                let write = WriteRequest {
                    key: self.validator.key(&r.key)?,
                    op: WriteOp::Remove,
                    condition: Condition::Present,
                    keep_previous: true,
                };
                let result = self.write(&r.cache, write, &r.request_id).await?;
                Ok(v1::RemoveResponse {
                    removed: result.applied,
                    previous: result.previous.as_deref().map(versioned),
                    version: result.version,
                })
            })
            .await
    }

    /// `RemoveWithVersion`, for the unary RPC and for pipelines.
    pub(crate) async fn serve_remove_with_version(
        &self,
        caller: &Caller,
        r: v1::RemoveWithVersionRequest,
    ) -> Result<v1::RemoveWithVersionResponse, Status> {
        self.metrics
            .observe(Op::RemoveWithVersion, &r.cache, caller, async {
                let write = WriteRequest {
                    key: self.validator.key(&r.key)?,
                    op: WriteOp::Remove,
                    condition: Condition::VersionIs(r.expected_version),
                    keep_previous: false,
                };
                let result = self.write(&r.cache, write, &r.request_id).await?;
                Ok(v1::RemoveWithVersionResponse {
                    removed: result.applied,
                    current: if result.applied {
                        None
                    } else {
                        result.previous.as_deref().map(versioned)
                    },
                    version: result.version,
                })
            })
            .await
    }
}

/// `entries` in order, cut into runs that encode as an `EntriesResponse` of at most
/// `max_bytes` (a node's message limit is at least 1 MiB more than its largest entry);
/// an entry larger than that is a run of its own.
fn by_size(entries: impl Iterator<Item = v1::Entry>, max_bytes: usize) -> Vec<Vec<v1::Entry>> {
    let mut runs: Vec<Vec<v1::Entry>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        // With its field tag and length, as it sits in the response.
        let size = prost::encoding::message::encoded_len(1, &entry);
        match runs.last_mut() {
            Some(run) if bytes + size <= max_bytes => {
                bytes += size;
                run.push(entry);
            }
            _ => {
                bytes = size;
                runs.push(vec![entry]);
            }
        }
    }
    runs
}

/// The fields every put-like request has.
trait PutFields {
    fn key(&self) -> &Bytes;
    fn value(&self) -> &Bytes;
    fn lifespan_ms(&self) -> i64;
    fn max_idle_ms(&self) -> i64;
    fn tags(&self) -> &[String];
}

macro_rules! put_fields {
    ($($request:ty),*) => {$(
        impl PutFields for $request {
            fn key(&self) -> &Bytes { &self.key }
            fn value(&self) -> &Bytes { &self.value }
            fn lifespan_ms(&self) -> i64 { self.lifespan_ms }
            fn max_idle_ms(&self) -> i64 { self.max_idle_ms }
            fn tags(&self) -> &[String] { &self.tags }
        }
    )*};
}

put_fields!(
    v1::PutRequest,
    v1::PutIfAbsentRequest,
    v1::ReplaceRequest,
    v1::ReplaceWithVersionRequest
);

#[tonic::async_trait]
impl Cache for CacheService {
    async fn ping(
        &self,
        _: Request<v1::PingRequest>,
    ) -> Result<Response<v1::PingResponse>, Status> {
        Ok(Response::new(v1::PingResponse {}))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        self.serve_get(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put(
        &self,
        request: Request<v1::PutRequest>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        self.serve_put(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put_if_absent(
        &self,
        request: Request<v1::PutIfAbsentRequest>,
    ) -> Result<Response<v1::PutIfAbsentResponse>, Status> {
        self.serve_put_if_absent(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn replace(
        &self,
        request: Request<v1::ReplaceRequest>,
    ) -> Result<Response<v1::ReplaceResponse>, Status> {
        self.serve_replace(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn replace_with_version(
        &self,
        request: Request<v1::ReplaceWithVersionRequest>,
    ) -> Result<Response<v1::ReplaceWithVersionResponse>, Status> {
        self.serve_replace_with_version(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove(
        &self,
        request: Request<v1::RemoveRequest>,
    ) -> Result<Response<v1::RemoveResponse>, Status> {
        self.serve_remove(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_with_version(
        &self,
        request: Request<v1::RemoveWithVersionRequest>,
    ) -> Result<Response<v1::RemoveWithVersionResponse>, Status> {
        self.serve_remove_with_version(&Caller::of(request.extensions()), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_all(
        &self,
        request: Request<v1::GetAllRequest>,
    ) -> Result<Response<v1::GetAllResponse>, Status> {
        let caller = &Caller::of(request.extensions());
        let r = request.into_inner();
        self.metrics
            .observe(Op::GetAll, &r.cache, caller, async {
                self.state.check_serving()?;
                self.validator.batch(r.keys.len())?;
                for key in &r.keys {
                    self.validator.check_key(key)?;
                }
                let found = self.store.get_all(&r.cache, &r.keys)?;
                Ok(v1::GetAllResponse {
                    entries: found
                        .into_iter()
                        .map(|(key, entry)| keyed(key, &entry, true))
                        .collect(),
                })
            })
            .await
            .map(Response::new)
    }

    async fn put_all(
        &self,
        request: Request<v1::PutAllRequest>,
    ) -> Result<Response<v1::PutAllResponse>, Status> {
        let caller = &Caller::of(request.extensions());
        let r = request.into_inner();
        self.metrics
            .observe(Op::PutAll, &r.cache, caller, async {
                self.state.check_accepting()?;
                self.validator.batch(r.entries.len())?;
                let entries = r
                    .entries
                    .iter()
                    .map(|e| {
                        Ok((
                            self.validator.key(&e.key)?,
                            self.validator.new_value(
                                &e.value,
                                e.lifespan_ms,
                                e.max_idle_ms,
                                &e.tags,
                            )?,
                        ))
                    })
                    .collect::<crate::Result<Vec<_>>>()?;
                let versions = self
                    .store
                    .put_all(&r.cache, entries, Self::request_id(&r.request_id))
                    .await?;
                Ok(v1::PutAllResponse { versions })
            })
            .await
            .map(Response::new)
    }

    type EntriesStream = EntriesStream;

    async fn entries(
        &self,
        request: Request<v1::EntriesRequest>,
    ) -> Result<Response<Self::EntriesStream>, Status> {
        let caller = Caller::of(request.extensions());
        let r = request.into_inner();
        caller.may(Permission::BulkRead, &r.cache)?;
        self.state.check_serving()?;
        self.store.cache(&r.cache)?;
        let tag = self.validator.tag_filter(&r.tag)?;
        let batch_size = match r.batch_size as usize {
            0 => DEFAULT_BATCH_SIZE,
            n => n.min(MAX_BATCH_SIZE),
        };
        let (sender, receiver) = mpsc::channel(2);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut after = None;
            loop {
                let page = match store.page(&r.cache, after.as_ref(), batch_size, tag.as_deref()) {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let entries = page
                    .entries
                    .iter()
                    .map(|(key, entry)| keyed(key.clone(), entry, r.with_values));
                let mut batches = by_size(entries, MAX_BATCH_BYTES);
                if batches.is_empty() && page.next_after.is_none() {
                    batches.push(Vec::new()); // the stream ends with a batch
                }
                for entries in batches {
                    let batch = v1::EntriesResponse { entries };
                    if sender.send(Ok(batch)).await.is_err() {
                        return; // the client went away
                    }
                }
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn remove_by_tag(
        &self,
        request: Request<v1::RemoveByTagRequest>,
    ) -> Result<Response<v1::RemoveByTagResponse>, Status> {
        let caller = &Caller::of(request.extensions());
        let r = request.into_inner();
        self.metrics
            .observe(Op::RemoveByTag, &r.cache, caller, async {
                self.state.check_serving()?;
                let tag = self
                    .validator
                    .tag_filter(&r.tag)?
                    .ok_or_else(|| crate::Error::InvalidArgument("tag must not be empty".into()))?;
                let removed = self.store.remove_by_tag(&r.cache, &tag).await?;
                Ok(v1::RemoveByTagResponse { removed })
            })
            .await
            .map(Response::new)
    }

    async fn size(
        &self,
        request: Request<v1::SizeRequest>,
    ) -> Result<Response<v1::SizeResponse>, Status> {
        let caller = &Caller::of(request.extensions());
        let r = request.into_inner();
        self.metrics
            .observe(Op::Size, &r.cache, caller, async {
                self.state.check_serving()?;
                Ok(v1::SizeResponse {
                    size: self.store.size(&r.cache)?,
                })
            })
            .await
            .map(Response::new)
    }

    async fn clear(
        &self,
        request: Request<v1::ClearRequest>,
    ) -> Result<Response<v1::ClearResponse>, Status> {
        let caller = &Caller::of(request.extensions());
        let r = request.into_inner();
        let scope = if r.all_sites {
            "every site"
        } else {
            "this site"
        };
        let target = format!("cache {} in {scope}", r.cache);
        let result = self
            .metrics
            .observe(Op::Clear, &r.cache, caller, async {
                self.state.check_accepting()?;
                let removed = self.store.clear(&r.cache).await?;
                tracing::info!(cache = %r.cache, removed, "cache cleared");
                let removed_in_peer_sites = if r.all_sites {
                    self.state
                        .relay()
                        .clear_in_peer_sites(&r.cache)
                        .await
                        .map_err(|why| {
                            crate::error::Error::Unavailable(format!(
                                "cache {} was cleared in this site but {why}",
                                r.cache
                            ))
                        })?
                } else {
                    0
                };
                Ok(v1::ClearResponse {
                    removed,
                    removed_in_peer_sites,
                })
            })
            .await;
        self.audit
            .record(caller, "Clear", &target, audit::outcome(&result));
        result.map(Response::new)
    }

    type PipelineStream = PipelineStream;

    async fn pipeline(
        &self,
        request: Request<Streaming<v1::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        Ok(Response::new(self.pipeline_stream(request)))
    }

    type PipelineBatchStream = PipelineBatchStream;

    async fn pipeline_batch(
        &self,
        request: Request<Streaming<v1::PipelineBatchRequest>>,
    ) -> Result<Response<Self::PipelineBatchStream>, Status> {
        if faults::on(Fault::NoPipelineBatch) {
            return Err(Status::unimplemented("fault no-pipeline-batch"));
        }
        Ok(Response::new(self.pipeline_stream(request)))
    }

    type ListenStream = EventStream;

    async fn listen(
        &self,
        request: Request<v1::ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let caller = Caller::of(request.extensions());
        let r = request.into_inner();
        let spec = self.listen_spec(&caller, &r)?;
        self.state.check_serving()?;
        let slot = self
            .limits
            .open_listener(caller.address.map(|addr| addr.ip()))?;
        let (sender, receiver) = mpsc::channel(LISTEN_CHANNEL);
        // Subscribed before the stream is returned: nothing written after can be missed.
        let subscription = Subscription::new(spec, self.store.hub(), self.store.clock().current());
        let stopping = self.state.stopping();
        tokio::spawn(async move {
            // The client's place stays taken as long as the subscription runs.
            let _slot = slot;
            subscription.run(sender, stopping).await;
        });
        let with_values = r.with_values;
        let events = ReceiverStream::new(receiver)
            .map(move |change| Ok(convert::event(&change, with_values)));
        Ok(Response::new(Box::pin(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value_bytes: usize) -> v1::Entry {
        v1::Entry {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0; value_bytes]),
            metadata: None,
        }
    }

    #[test]
    fn entries_are_cut_into_runs_within_the_byte_budget() {
        let entries = [10, 10, 10, 500, 10].map(entry);
        // Each small entry encodes in 17 bytes inside a response (tag, length, key,
        // value).
        let runs = by_size(entries.into_iter(), 40);
        let sizes: Vec<Vec<usize>> = runs
            .iter()
            .map(|run| run.iter().map(|e| e.value.len()).collect())
            .collect();
        assert_eq!(sizes, [vec![10, 10], vec![10], vec![500], vec![10]]);
        for run in &runs[..2] {
            let response = v1::EntriesResponse {
                entries: run.clone(),
            };
            assert!(prost::Message::encoded_len(&response) <= 40);
        }
        assert!(by_size(std::iter::empty(), 40).is_empty());
    }
}
