//! The `Pipeline` and `PipelineBatch` RPCs: many single-key requests on one stream, each
//! answered with the id the client gave it.
//!
//! One task per stream reads the requests and runs them through the same handlers as the
//! unary RPCs, so a request means exactly what its unary RPC means. A request first runs
//! as far as it goes without waiting: a read, or a write on a node alone, is answered
//! then and there; one that waits (a lock, storage, other members) becomes a future the
//! task polls itself (no task per request). Once [`MAX_IN_FLIGHT`] requests of a stream
//! are admitted (a message is taken whole, so one more message's at most), the task stops
//! reading and HTTP/2 flow control holds the client back. A request whose key already has one running waits in that key's queue
//! and starts when the one before it ends, so one stream's requests to a key run in the
//! order they were sent; requests to different keys run together, which is what lets
//! the write path batch their replication and share one durable flush. Answers ready
//! together leave together: as one message on a `PipelineBatch` stream (whose messages
//! carry several requests each way), in one write on a `Pipeline` stream.
//!
//! When the client half-closes, or the node begins to shut down, the task stops reading,
//! answers what it admitted, and ends the stream. When the client goes away, the requests
//! running still run to their end, unanswered (a write must not stop halfway: the task
//! is its driver, [`crate::store::Driver::Caller`]), and those waiting for their key
//! never start.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use sitegrid_proto::multiplex;
use sitegrid_proto::v1::{self, pipeline_request::Operation, pipeline_response::Result as Answer};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::auth::Caller;
use super::cache::CacheService;

/// Requests of one stream admitted at once: running, or waiting behind a request to the
/// same key.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Most requests in one `PipelineBatch` message; each one beyond is answered with
/// INVALID_ARGUMENT. Senders of this crate keep to it ([`multiplex::by_size`]).
pub(crate) const MAX_BATCH: usize = multiplex::BATCH_CALLS;

/// Answers gathered before they are sent, at most: answers ready together leave in one
/// message (`PipelineBatch`) or one write (`Pipeline`).
const ANSWERS_AT_ONCE: usize = 256;

/// Runs the requests of one `Pipeline` or `PipelineBatch` stream (a message carries one
/// request, or several) and sends their answers to `answers`, those ready together in
/// one batch, until the client stops sending (or goes away) or `stopping` turns true.
pub(crate) async fn run<S, B>(
    service: CacheService,
    caller: Caller,
    requests: S,
    answers: mpsc::Sender<Vec<v1::PipelineResponse>>,
    stopping: watch::Receiver<bool>,
) where
    S: Stream<Item = Result<B, Status>> + Unpin,
    B: IntoIterator<Item = v1::PipelineRequest>,
{
    let open = metrics::gauge!("sitegrid_pipeline_streams");
    open.increment(1.0);
    let mut stream = Requests {
        service: &service,
        caller: &caller,
        running: FuturesUnordered::new(),
        queues: KeyQueues::default(),
        admitted: 0,
        ready: Vec::new(),
        gone: false,
        requested: metrics::counter!("sitegrid_pipeline_requests_total"),
    };
    stream.serve(requests, answers, stopping).await;
    open.decrement(1.0);
}

/// The requests of one stream being served, and their answers not sent yet.
struct Requests<'a> {
    service: &'a CacheService,
    caller: &'a Caller,
    /// Requests waiting for something (a lock, storage, other members).
    running: FuturesUnordered<Call<'a>>,
    queues: KeyQueues,
    /// Requests taken in and not answered yet.
    admitted: usize,
    /// Answers to send.
    ready: Vec<v1::PipelineResponse>,
    /// The client went away: the requests running run to their end, unanswered.
    gone: bool,
    requested: metrics::Counter,
}

impl<'a> Requests<'a> {
    async fn serve<S, B>(
        &mut self,
        mut requests: S,
        answers: mpsc::Sender<Vec<v1::PipelineResponse>>,
        mut stopping: watch::Receiver<bool>,
    ) where
        S: Stream<Item = Result<B, Status>> + Unpin,
        B: IntoIterator<Item = v1::PipelineRequest>,
    {
        let mut reading = !*stopping.borrow();
        loop {
            tokio::select! {
                // Answers first (they free room for more requests), then requests; the
                // answers gathered meanwhile leave once neither has more right now.
                biased;
                Some(done) = self.running.next() => self.ended(done),
                message = requests.next(),
                    if reading && self.admitted < MAX_IN_FLIGHT && self.ready.len() < ANSWERS_AT_ONCE =>
                {
                    match message {
                        Some(Ok(batch)) => {
                            for (index, request) in batch.into_iter().enumerate() {
                                self.take(index, request);
                            }
                        }
                        Some(Err(status)) => {
                            tracing::debug!(%status, "pipeline stream broke");
                            reading = false;
                        }
                        None => reading = false,
                    }
                }
                room = answers.reserve(), if !self.ready.is_empty() => match room {
                    Ok(room) => room.send(std::mem::take(&mut self.ready)),
                    Err(_) => {
                        reading = false;
                        self.abandon();
                    }
                },
                () = multiplex::stopped(&mut stopping), if reading => reading = false,
                else => return,
            }
        }
    }

    /// Takes in the request at `index` of its message: answers it at once if it ends
    /// without waiting, or at once with its error.
    fn take(&mut self, index: usize, request: v1::PipelineRequest) {
        self.requested.increment(1);
        if index >= MAX_BATCH {
            let status = Status::invalid_argument(format!(
                "a pipeline message carries at most {MAX_BATCH} requests"
            ));
            self.ready.push(failed(request.id, &status));
            return;
        }
        let address = self.caller.address.map(|address| address.ip());
        if let Err(status) = self.service.limits().admit(address) {
            self.ready.push(failed(request.id, &status));
            return;
        }
        self.admitted += 1;
        let slot = slot_of(&request);
        if let Some(request) = self.queues.admit(slot, request) {
            match start(self.service, self.caller, slot, request) {
                // Nothing ran or waits for its key: its answer is all there is to it.
                Started::Done((_, answer)) => {
                    self.admitted -= 1;
                    self.ready.push(answer);
                }
                Started::Running(call) => {
                    self.queues.running(slot);
                    self.running.push(call);
                }
            }
        }
    }

    /// The client went away: nobody takes answers any more (none is gathered from now
    /// on), the requests waiting for their key never start, and those running run to
    /// their end (the select loop polls them until none is left).
    fn abandon(&mut self) {
        self.gone = true;
        self.ready = Vec::new();
        self.queues = KeyQueues::default();
        self.admitted = self.running.len();
    }

    /// A request ended: its answer is ready, and the next one waiting for its key starts
    /// (and may end at once).
    fn ended(&mut self, done: (u64, v1::PipelineResponse)) {
        let mut ended = Some(done);
        while let Some((slot, answer)) = ended.take() {
            self.admitted -= 1;
            if self.gone {
                return;
            }
            self.ready.push(answer);
            if let Some(next) = self.queues.finished(slot) {
                match start(self.service, self.caller, slot, next) {
                    Started::Done(done) => ended = Some(done),
                    Started::Running(call) => self.running.push(call),
                }
            }
        }
    }
}

/// A request's future: its slot and answer.
type Call<'a> = Pin<Box<dyn Future<Output = (u64, v1::PipelineResponse)> + Send + 'a>>;

/// A request just started.
enum Started<'a> {
    /// It ended without waiting (a read, a write on a node alone): its slot and answer.
    Done((u64, v1::PipelineResponse)),
    /// It waits for something (a lock, storage, other members): poll it to its end.
    Running(Call<'a>),
}

/// Starts a request: runs it as far as it goes without waiting, so one that never waits
/// costs no place among the running futures.
///
/// The first poll is outside tokio's cooperative budget: a write takes three tokio locks
/// (the site's write barrier, the cache's clear barrier, its key's lock), each spending
/// one unit of the task's 128 per poll, so past the first forty or so requests of a poll
/// every write found its free locks "busy", went among the running futures and ran on a
/// later poll. What a request does on that first poll is bounded (it never waits), and
/// so is what one poll of the task takes in: reading stops while [`ANSWERS_AT_ONCE`]
/// answers wait, and sending them spends the budget.
fn start<'a>(
    service: &'a CacheService,
    caller: &'a Caller,
    slot: u64,
    request: v1::PipelineRequest,
) -> Started<'a> {
    let mut call = serve(service, caller, slot, request);
    match tokio::task::unconstrained(&mut call).now_or_never() {
        Some(done) => Started::Done(done),
        None => Started::Running(call),
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
    xxhash_rust::xxh3::xxh3_64_with_seed(key, xxhash_rust::xxh3::xxh3_64(cache.as_bytes()))
}

/// One request through its unary handler. Each operation's future is boxed on its own,
/// so a read doesn't take the room of the largest write (several KiB).
fn serve<'a>(
    service: &'a CacheService,
    caller: &'a Caller,
    slot: u64,
    request: v1::PipelineRequest,
) -> Call<'a> {
    let id = request.id;
    match request.operation {
        Some(Operation::Get(r)) => answer(slot, id, service.serve_get(caller, r), Answer::Get),
        Some(Operation::Put(r)) => answer(slot, id, service.serve_put(caller, r), Answer::Put),
        Some(Operation::PutIfAbsent(r)) => answer(
            slot,
            id,
            service.serve_put_if_absent(caller, r),
            Answer::PutIfAbsent,
        ),
        Some(Operation::Replace(r)) => {
            answer(slot, id, service.serve_replace(caller, r), Answer::Replace)
        }
        Some(Operation::ReplaceWithVersion(r)) => answer(
            slot,
            id,
            service.serve_replace_with_version(caller, r),
            Answer::ReplaceWithVersion,
        ),
        Some(Operation::Remove(r)) => {
            answer(slot, id, service.serve_remove(caller, r), Answer::Remove)
        }
        Some(Operation::RemoveWithVersion(r)) => answer(
            slot,
            id,
            service.serve_remove_with_version(caller, r),
            Answer::RemoveWithVersion,
        ),
        None => {
            let status = Status::invalid_argument("pipeline request names no operation");
            Box::pin(std::future::ready((slot, failed(id, &status))))
        }
    }
}

/// The future of request `id`: `call`, its response wrapped by `wrap`, or its error.
fn answer<'a, R: 'a>(
    slot: u64,
    id: u64,
    call: impl Future<Output = Result<R, Status>> + Send + 'a,
    wrap: fn(R) -> Answer,
) -> Call<'a> {
    // `map`, not an async block: the block would hold `call` twice (as captured, and as
    // the future it awaits).
    Box::pin(call.map(move |answer| {
        let answer = match answer {
            Ok(response) => v1::PipelineResponse {
                id,
                result: Some(wrap(response)),
            },
            Err(status) => failed(id, &status),
        };
        (slot, answer)
    }))
}

/// The answer to request `id` that failed with `status`.
fn failed(id: u64, status: &Status) -> v1::PipelineResponse {
    v1::PipelineResponse {
        id,
        result: Some(Answer::Error(status.into())),
    }
}

/// The keys with a request running, and the requests waiting behind it, in order.
///
/// A request that ends as soon as it starts (a read, a write on a node alone) never
/// enters it: only one that waits marks its key as running.
#[derive(Default)]
struct KeyQueues {
    /// By slot, which is already a hash.
    waiting: HashMap<u64, VecDeque<v1::PipelineRequest>, foldhash::fast::FixedState>,
}

impl KeyQueues {
    /// Takes in a request; returns it if it may start now (nothing runs for its key).
    /// If it does not end at once, say so with [`KeyQueues::running`].
    fn admit(&mut self, slot: u64, request: v1::PipelineRequest) -> Option<v1::PipelineRequest> {
        match self.waiting.get_mut(&slot) {
            Some(queue) => {
                queue.push_back(request);
                None
            }
            None => Some(request),
        }
    }

    /// The request `admit` let start for `slot` waits for something: requests to its
    /// key wait behind it until it has [`KeyQueues::finished`].
    fn running(&mut self, slot: u64) {
        self.waiting.entry(slot).or_default();
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
        queues.running(7);
        assert!(queues.admit(7, request(2)).is_none());
        assert!(queues.admit(7, request(3)).is_none());
        assert_eq!(
            queues.admit(8, request(4)).map(|r| r.id),
            Some(4),
            "another key runs at once"
        );
        assert_eq!(
            queues.admit(8, request(6)).map(|r| r.id),
            Some(6),
            "a request that ended as it started holds nothing up"
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
