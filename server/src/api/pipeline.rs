//! The `Pipeline` RPC: many single-key requests on one stream, each answered with the id
//! the client gave it.
//!
//! One task per stream reads the requests and runs them as futures it polls itself (no
//! task per request), through the same handlers as the unary RPCs, so a request means
//! exactly what its unary RPC means. At most [`MAX_IN_FLIGHT`] requests of a stream are
//! admitted at once; beyond that the task stops reading and HTTP/2 flow control holds the
//! client back. A request whose key already has one running waits in that key's queue
//! and starts when the one before it ends, so one stream's requests to a key run in the
//! order they were sent; requests to different keys run together, which is what lets
//! the write path batch their replication and share one durable flush. Every answer is
//! sent as soon as its request ends.
//!
//! When the client half-closes, or the node begins to shut down, the task stops reading,
//! answers what it admitted, and ends the stream.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sitegrid_proto::multiplex;
use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::auth::Caller;
use super::cache::CacheService;

/// Requests of one stream admitted at once: running, or waiting behind a request to the
/// same key.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Runs the requests of one `Pipeline` stream and sends their answers to `answers`,
/// until the client stops sending (or goes away) or `stopping` turns true.
pub(crate) async fn run(
    service: CacheService,
    caller: Caller,
    requests: Streaming<v1::PipelineRequest>,
    answers: mpsc::Sender<Result<v1::PipelineResponse, Status>>,
    stopping: watch::Receiver<bool>,
) {
    let open = metrics::gauge!("sitegrid_pipeline_streams");
    open.increment(1.0);
    serve_stream(service, caller, requests, answers, stopping).await;
    open.decrement(1.0);
}

async fn serve_stream(
    service: CacheService,
    caller: Caller,
    mut requests: Streaming<v1::PipelineRequest>,
    answers: mpsc::Sender<Result<v1::PipelineResponse, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut running = FuturesUnordered::new();
    let mut queues = KeyQueues::default();
    let mut admitted = 0usize;
    let mut reading = !*stopping.borrow();
    let requested = metrics::counter!("sitegrid_pipeline_requests_total");
    loop {
        tokio::select! {
            // Answers first: they free room for more requests.
            biased;
            Some((slot, answer)) = running.next() => {
                admitted -= 1;
                if let Some(next) = queues.finished(slot) {
                    running.push(serve(&service, &caller, slot, next));
                }
                if answers.send(Ok(answer)).await.is_err() {
                    return; // the client went away; what runs is dropped, as for unary calls
                }
            }
            request = requests.next(), if reading && admitted < MAX_IN_FLIGHT => match request {
                Some(Ok(request)) => {
                    requested.increment(1);
                    if let Err(status) = service.limits().admit(caller.address.map(|a| a.ip())) {
                        if answers.send(Ok(failed(request.id, &status))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    admitted += 1;
                    let slot = slot_of(&request);
                    if let Some(request) = queues.admit(slot, request) {
                        running.push(serve(&service, &caller, slot, request));
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(%status, "pipeline stream broke");
                    reading = false;
                }
                None => reading = false,
            },
            () = multiplex::stopped(&mut stopping), if reading => reading = false,
            else => return,
        }
    }
}

/// Which queue a request waits in: a hash of its cache and key (a collision only makes
/// two keys wait for each other). Requests naming no operation all take slot 0.
fn slot_of(request: &v1::PipelineRequest) -> u64 {
    let (cache, key) = match &request.operation {
        Some(Operation::Get(r)) => (&r.cache, &r.key),
        Some(Operation::Put(r)) => (&r.cache, &r.key),
        Some(Operation::PutIfAbsent(r)) => (&r.cache, &r.key),
        Some(Operation::Replace(r)) => (&r.cache, &r.key),
        Some(Operation::ReplaceWithVersion(r)) => (&r.cache, &r.key),
        Some(Operation::Remove(r)) => (&r.cache, &r.key),
        Some(Operation::RemoveWithVersion(r)) => (&r.cache, &r.key),
        None => return 0,
    };
    let mut hasher = DefaultHasher::new();
    cache.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

/// Runs one request through its unary handler.
async fn serve(
    service: &CacheService,
    caller: &Caller,
    slot: u64,
    request: v1::PipelineRequest,
) -> (u64, v1::PipelineResponse) {
    let answer = match request.operation {
        Some(Operation::Get(r)) => service.serve_get(caller, r).await.map(Answer::Get),
        Some(Operation::Put(r)) => service.serve_put(caller, r).await.map(Answer::Put),
        Some(Operation::PutIfAbsent(r)) => service
            .serve_put_if_absent(caller, r)
            .await
            .map(Answer::PutIfAbsent),
        Some(Operation::Replace(r)) => service.serve_replace(caller, r).await.map(Answer::Replace),
        Some(Operation::ReplaceWithVersion(r)) => service
            .serve_replace_with_version(caller, r)
            .await
            .map(Answer::ReplaceWithVersion),
        Some(Operation::Remove(r)) => service.serve_remove(caller, r).await.map(Answer::Remove),
        Some(Operation::RemoveWithVersion(r)) => service
            .serve_remove_with_version(caller, r)
            .await
            .map(Answer::RemoveWithVersion),
        None => Err(Status::invalid_argument(
            "pipeline request names no operation",
        )),
    };
    let answer = match answer {
        Ok(answer) => v1::PipelineResponse {
            id: request.id,
            result: Some(answer),
        },
        Err(status) => failed(request.id, &status),
    };
    (slot, answer)
}

/// The answer to request `id` that failed with `status`.
fn failed(id: u64, status: &Status) -> v1::PipelineResponse {
    v1::PipelineResponse {
        id,
        result: Some(Answer::Error(status.into())),
    }
}

/// The keys with a request running, and the requests waiting behind it, in order.
#[derive(Default)]
struct KeyQueues {
    waiting: HashMap<u64, VecDeque<v1::PipelineRequest>>,
}

impl KeyQueues {
    /// Takes in a request; returns it if it may run now (nothing runs for its key).
    fn admit(&mut self, slot: u64, request: v1::PipelineRequest) -> Option<v1::PipelineRequest> {
        match self.waiting.entry(slot) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push_back(request);
                None
            }
            Entry::Vacant(free) => {
                free.insert(VecDeque::new());
                Some(request)
            }
        }
    }

    /// The request of `slot` running ended; returns the next one to run for that key.
    fn finished(&mut self, slot: u64) -> Option<v1::PipelineRequest> {
        let Entry::Occupied(mut queue) = self.waiting.entry(slot) else {
            return None;
        };
        let next = queue.get_mut().pop_front();
        if next.is_none() {
            queue.remove();
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> v1::PipelineRequest {
        v1::PipelineRequest {
            id,
            operation: None,
        }
    }

    #[test]
    fn requests_to_one_key_run_one_after_the_other_in_order() {
        let mut queues = KeyQueues::default();
        assert_eq!(queues.admit(7, request(1)).map(|r| r.id), Some(1));
        assert!(queues.admit(7, request(2)).is_none());
        assert!(queues.admit(7, request(3)).is_none());
        assert_eq!(
            queues.admit(8, request(4)).map(|r| r.id),
            Some(4),
            "another key runs at once"
        );
        assert_eq!(queues.finished(7).map(|r| r.id), Some(2));
        assert_eq!(queues.finished(7).map(|r| r.id), Some(3));
        assert!(queues.finished(7).is_none());
        assert_eq!(
            queues.admit(7, request(5)).map(|r| r.id),
            Some(5),
            "the key is free again"
        );
    }
}
