//! The internal `ReplicationService`: what the other members of the site ask this node.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use sitegrid_proto::multiplex;
use sitegrid_proto::v1::{self, replication_service_server::ReplicationService};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{Cluster, Target, codec};
use crate::faults::{self, Fault};
use crate::store::Driver;
use crate::store::slot_key::RANGES;
use crate::store::write::ReplicaOutcome;

/// Slots per Fetch batch.
const FETCH_BATCH: usize = 500;

/// Calls of one `ApplyStream` running at once; beyond that the stream is not read and
/// HTTP/2 flow control holds the sender back. A primary has one call per cache under way.
const STREAM_CALLS_IN_FLIGHT: usize = 64;

/// Answers of one `ApplyStream` waiting to be sent.
const STREAM_ANSWERS: usize = 64;

/// The replication service of one node.
#[derive(Debug, Clone)]
pub struct ReplicationApi {
    cluster: Cluster,
    /// Turns true when the node begins to shut down: open `ApplyStream`s stop reading,
    /// answer what they took, and end.
    stopping: watch::Receiver<bool>,
}

impl ReplicationApi {
    pub(crate) fn new(cluster: Cluster, stopping: watch::Receiver<bool>) -> ReplicationApi {
        ReplicationApi { cluster, stopping }
    }

    /// Applies the changes of one `Apply` call, which came `via` a unary call or a stream.
    async fn apply_changes(
        &self,
        request: v1::ApplyRequest,
        via: &'static str,
    ) -> Result<v1::ApplyResponse, Status> {
        if faults::on(Fault::SlowApply)
            && request
                .mutations
                .iter()
                .any(|m| m.key.starts_with(faults::SLOW_APPLY_PREFIX))
        {
            tokio::time::sleep(faults::SLOW_APPLY_DELAY).await;
        }
        metrics::counter!("sitegrid_replication_batches_received_total", "via" => via).increment(1);
        metrics::counter!("sitegrid_replication_changes_received_total")
            .increment(request.mutations.len() as u64);
        let store = self.cluster.store();
        let changes = request
            .mutations
            .into_iter()
            .map(|mutation| codec::decode_mutation(mutation, store.services()))
            .collect::<crate::Result<Vec<_>>>()?;
        self.cluster
            .note_arrivals(&request.cache, changes.iter().map(|c| &c.mutation.key));
        let replies = store.apply_replicated(&request.cache, changes).await?;
        let outcomes = replies
            .into_iter()
            .map(|reply| {
                let (result, current) = match reply.outcome {
                    ReplicaOutcome::Applied => (v1::ApplyResult::Applied, None),
                    ReplicaOutcome::AlreadyApplied => (v1::ApplyResult::AlreadyApplied, None),
                    ReplicaOutcome::Busy => (v1::ApplyResult::Busy, None),
                    ReplicaOutcome::Conflict(current) => (v1::ApplyResult::Conflict, current),
                };
                v1::ApplyOutcome {
                    result: result as i32,
                    current: current.as_ref().map(codec::encode_slot).unwrap_or_default(),
                    recorded_answer: reply.recorded.as_deref().map(codec::encode_answer),
                    // Members of one site share their voids through the changes.
                    voided: false,
                }
            })
            .collect();
        Ok(v1::ApplyResponse { outcomes })
    }

    /// One call of an `ApplyStream`, answered as `Apply` would answer it.
    async fn answer_call(&self, call: v1::ApplyStreamRequest) -> v1::ApplyStreamResponse {
        use v1::apply_stream_response::Result as Answer;
        let answered = match call.apply {
            Some(request) => self.apply_changes(request, "stream").await,
            None => Err(Status::invalid_argument(
                "an apply stream call needs changes",
            )),
        };
        v1::ApplyStreamResponse {
            id: call.id,
            result: Some(match answered {
                Ok(response) => Answer::Response(response),
                Err(status) => Answer::Error((&status).into()),
            }),
        }
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<v1::FetchResponse, Status>> + Send>>;
type AnswersStream = Pin<Box<dyn Stream<Item = Result<v1::AnswersResponse, Status>> + Send>>;

/// Answers per Answers batch.
const ANSWERS_BATCH: usize = 1_000;

#[tonic::async_trait]
impl ReplicationService for ReplicationApi {
    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        self.apply_changes(request.into_inner(), "call")
            .await
            .map(Response::new)
    }

    type ApplyStreamStream = ReceiverStream<Result<v1::ApplyStreamResponse, Status>>;

    async fn apply_stream(
        &self,
        request: Request<Streaming<v1::ApplyStreamRequest>>,
    ) -> Result<Response<Self::ApplyStreamStream>, Status> {
        if faults::on(Fault::NoApplyStream) {
            return Err(Status::unimplemented("fault no-apply-stream"));
        }
        let (answers, receiver) = mpsc::channel(STREAM_ANSWERS);
        // Several calls at once (one per cache), each answered as soon as it is done,
        // until the primary stops sending or this node begins to shut down.
        let service = self.clone();
        tokio::spawn(async move {
            let stopping = service.stopping.clone();
            multiplex::serve(
                request.into_inner(),
                answers,
                stopping,
                STREAM_CALLS_IN_FLIGHT,
                |call| service.answer_call(call),
            )
            .await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn forward_write(
        &self,
        request: Request<v1::ForwardWriteRequest>,
    ) -> Result<Response<v1::ForwardWriteResponse>, Status> {
        let request = request.into_inner();
        let write = codec::decode_write(&request)?;
        if !crate::store::replication::SiteReplication::is_primary(&self.cluster, &write.key) {
            // The sender's view is ahead or behind: it retries once the site agrees.
            return Err(Status::unavailable("this node is not the key's primary"));
        }
        let request_id = (!request.request_id.is_empty()).then_some(request.request_id.as_str());
        let answer = self
            .cluster
            .store()
            .write_as_primary(&request.cache, write, request_id, Driver::OwnTask)
            .await?;
        Ok(Response::new(v1::ForwardWriteResponse {
            answer: Some(codec::encode_answer(&answer)),
        }))
    }

    async fn apply_clear(
        &self,
        request: Request<v1::ApplyClearRequest>,
    ) -> Result<Response<v1::ApplyClearResponse>, Status> {
        let request = request.into_inner();
        let removed = self
            .cluster
            .store()
            .clear_at(&request.cache, request.version)
            .await?;
        Ok(Response::new(v1::ApplyClearResponse { removed }))
    }

    async fn digests(
        &self,
        request: Request<v1::DigestsRequest>,
    ) -> Result<Response<v1::DigestsResponse>, Status> {
        let request = request.into_inner();
        // A member that knows it missed writes must not be copied from.
        if !self.cluster.serving() {
            return Err(Status::unavailable(
                "this node is not serving (catching up): copy from another member",
            ));
        }
        let store = self.cluster.store();
        let cache = store.cache(&request.cache)?;
        let keyspace = cache.keyspace.read();
        Ok(Response::new(v1::DigestsResponse {
            digests: keyspace.digests().to_vec(),
            floor: keyspace.floor(),
            clock: store.clock().current(),
        }))
    }

    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let request = request.into_inner();
        let cache = self.cluster.store().cache(&request.cache)?.clone();
        if let Some(range) = request.ranges.iter().find(|r| **r as usize >= RANGES) {
            return Err(Status::invalid_argument(format!("no key range {range}")));
        }
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(async move {
            for range in request.ranges {
                let mut after = None;
                loop {
                    let (slots, done) = cache.keyspace.read().range_slots(
                        range as usize,
                        after.as_ref(),
                        FETCH_BATCH,
                    );
                    after = slots.last().map(|(key, _)| key.clone());
                    let batch = v1::FetchResponse {
                        slots: slots
                            .iter()
                            .map(|(key, slot)| v1::FetchedSlot {
                                key: key.clone(),
                                record: codec::encode_slot(slot),
                            })
                            .collect(),
                        completed_ranges: if done { vec![range] } else { Vec::new() },
                    };
                    if sender.send(Ok(batch)).await.is_err() {
                        return; // the joiner went away
                    }
                    if done {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn touch(
        &self,
        request: Request<v1::TouchRequest>,
    ) -> Result<Response<v1::TouchResponse>, Status> {
        let request = request.into_inner();
        let cache = self.cluster.store().cache(&request.cache)?;
        cache.take_touches(&codec::decode_touches(request.touched));
        Ok(Response::new(v1::TouchResponse {}))
    }

    type AnswersStream = AnswersStream;

    async fn answers(
        &self,
        _request: Request<v1::AnswersRequest>,
    ) -> Result<Response<Self::AnswersStream>, Status> {
        // Encoded batch by batch as the joiner reads them; the void versions last.
        let store = self.cluster.store();
        let (kept, voids) = (store.kept_answers(), store.kept_voids());
        let answers = futures::stream::iter(kept)
            .chunks(ANSWERS_BATCH)
            .map(|chunk| v1::AnswersResponse {
                answers: chunk
                    .iter()
                    .map(|(id, answer)| v1::KeptAnswer {
                        id: id.to_le_bytes().to_vec().into(),
                        answer: Some(codec::encode_answer(answer)),
                    })
                    .collect(),
                voids: Vec::new(),
            });
        let voids = futures::stream::iter(voids)
            .chunks(ANSWERS_BATCH)
            .map(|chunk| v1::AnswersResponse {
                answers: Vec::new(),
                voids: chunk
                    .iter()
                    .map(|id| id.to_le_bytes().to_vec().into())
                    .collect(),
            });
        Ok(Response::new(Box::pin(answers.chain(voids).map(Ok))))
    }

    async fn confirm_join(
        &self,
        request: Request<v1::ConfirmJoinRequest>,
    ) -> Result<Response<v1::ConfirmJoinResponse>, Status> {
        let request = request.into_inner();
        let joiner = Target {
            name: request.node.as_str().into(),
            generation: request.generation,
            epoch: request.epoch,
            address: request.address,
        };
        let joiners = self
            .cluster
            .confirm_joiner(joiner)
            .await
            .iter()
            .map(Target::to_known)
            .collect();
        let ready_members = self
            .cluster
            .view()
            .ready()
            .map(|member| Target::of(member).to_known())
            .collect();
        Ok(Response::new(v1::ConfirmJoinResponse {
            ready_members,
            joiners,
        }))
    }
}
