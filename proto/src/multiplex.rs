//! Calls multiplexed on one long-lived bidirectional stream.
//!
//! A unary call costs an HTTP/2 stream: headers both ways, trailers, a task on the
//! server. A request on an open stream costs one message each way, or a share of one
//! where the messages carry several (a [`Wire`] says which), and messages queued
//! together leave in one write. [`Multiplexed`] keeps one such stream, opened on first
//! use and again after it breaks: every request gets an id, the answer echoing that id
//! goes back to its caller, whatever order the answers come in. The client library's
//! `PipelineBatch` streams, a primary's changes to the members of its site (`ApplyStream`)
//! and its sync backups to a peer site (`BackupStream`) ride on it.
//!
//! A request whose stream breaks fails with UNAVAILABLE when the connection failed (so
//! callers retry it, elsewhere if they can), or with the status the server ended the
//! stream with. A request sent with a deadline fails with DEADLINE_EXCEEDED (its source
//! [`Expired`]) once the deadline passes without an answer: the stream's task looks for
//! such calls every [`SWEEP`], so a busy stream keeps no timer per request (on the
//! client's pipelined path those timers were about a tenth of the load generator's CPU).
//!
//! [`serve`] is the server's half for streams whose requests are independent calls;
//! [`Streamless`] is how a sender remembers, for a while, that a server answered that it
//! has no such stream (an older version), and sends unary calls meanwhile.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tonic::{Status, Streaming};

/// A message of a multiplexed stream: it carries the id of the call it belongs to.
pub trait Tagged {
    /// The call's id.
    fn id(&self) -> u64;
    /// Gives the message the call's id.
    fn set_id(&mut self, id: u64);
}

/// How a stream's messages carry its calls' requests (or answers): one to a message (the
/// site's and the relay's streams, whose requests are batches already), or all those
/// queued together (`PipelineBatch`: requests from many callers, answers ready
/// together).
pub trait Wire: Send + 'static {
    /// One call's request, or its answer.
    type Call: Tagged + Send + 'static;
    /// The messages carrying `calls` (never empty), in their order; each within what
    /// the other side accepts if every call is.
    fn pack(calls: Vec<Self::Call>) -> impl Iterator<Item = Self> + Send;
    /// The calls this message carries, in their order.
    fn unpack(self) -> impl Iterator<Item = Self::Call> + Send;
}

/// What the callers' requests become on the wire: the stream the opener sends.
pub type Outgoing<Up> = tokio_stream::wrappers::UnboundedReceiverStream<Up>;

/// Most requests a stream's task takes from its callers at once (and so most in one
/// message, for a wire that carries several).
const TAKE: usize = 256;

/// What a caller hands a stream's task: one request or several, when to give up on
/// them, and where their answers go.
enum Call<Req, Resp> {
    One(Req, Option<Deadline>, oneshot::Sender<Result<Resp, Status>>),
    Many(
        Vec<Req>,
        Option<Deadline>,
        oneshot::Sender<Vec<Result<Resp, Status>>>,
    ),
}
/// A call of a stream whose requests travel as `Up` and answers as `Down`.
type CallOf<Up, Down> = Call<<Up as Wire>::Call, <Down as Wire>::Call>;

impl<Req, Resp> fmt::Debug for Call<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::One(..) => f.write_str("Call::One"),
            Call::Many(requests, ..) => write!(f, "Call::Many({})", requests.len()),
        }
    }
}

/// When a call gives up: tokio's clock, so tests that pause time see calls expire.
pub type Deadline = tokio::time::Instant;

/// How often a stream's task fails the calls past their deadline: a call fails at most
/// this long after its deadline.
pub const SWEEP: Duration = Duration::from_millis(20);

/// The source of the DEADLINE_EXCEEDED status of a call that got no answer by its
/// deadline.
#[derive(Debug)]
pub struct Expired;

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no answer by the call's deadline")
    }
}

impl std::error::Error for Expired {}

/// Whether `status` is that of a call that got no answer by its deadline.
pub fn is_expired(status: &Status) -> bool {
    status.source().is_some_and(|source| source.is::<Expired>())
}

/// The status of a call that got no answer by its deadline.
pub fn expired() -> Status {
    let mut status = Status::deadline_exceeded(Expired.to_string());
    status.set_source(Arc::new(Expired));
    status
}

/// The open stream: where its task takes requests, and the task.
#[derive(Debug)]
struct Link<Up: Wire, Down: Wire> {
    calls: mpsc::UnboundedSender<CallOf<Up, Down>>,
    task: AbortHandle,
}

/// One stream carrying many calls, their requests sent as `Up` messages and their answers
/// received as `Down` ones; see the module doc.
#[derive(Debug)]
pub struct Multiplexed<Up: Wire, Down: Wire> {
    link: Mutex<Option<Link<Up, Down>>>,
}

impl<Up: Wire, Down: Wire> Default for Multiplexed<Up, Down> {
    fn default() -> Self {
        Multiplexed {
            link: Mutex::new(None),
        }
    }
}

impl<Up: Wire, Down: Wire> Multiplexed<Up, Down> {
    /// Sends `request` and waits for its answer, until `deadline` if there is one.
    /// Without an open stream, `open` opens one: it is given the stream of requests to
    /// send and returns the server's answers.
    pub async fn call<F, Fut>(
        &self,
        request: Up::Call,
        deadline: Option<Deadline>,
        open: F,
    ) -> Result<Down::Call, Status>
    where
        F: FnOnce(Outgoing<Up>) -> Fut,
        Fut: Future<Output = Result<Streaming<Down>, Status>>,
    {
        self.link(deadline, open)
            .await?
            .call(request, deadline)
            .await
    }

    /// The open stream, opened with `open` (as for [`Multiplexed::call`]) if there is
    /// none: for a caller that does something else with its request when the stream
    /// can't be opened.
    pub async fn link<F, Fut>(
        &self,
        deadline: Option<Deadline>,
        open: F,
    ) -> Result<Calls<Up, Down>, Status>
    where
        F: FnOnce(Outgoing<Up>) -> Fut,
        Fut: Future<Output = Result<Streaming<Down>, Status>>,
    {
        let calls = match (self.open_link(), deadline) {
            (Some(calls), _) => calls,
            (None, None) => self.calls(open).await?,
            (None, Some(deadline)) => tokio::time::timeout_at(deadline, self.calls(open))
                .await
                .map_err(|_| expired())??,
        };
        Ok(Calls { calls })
    }

    /// Drops the open stream, if any: its calls in flight fail with UNAVAILABLE and the
    /// next call opens a new one.
    pub async fn reset(&self) {
        if let Some(link) = self.link.lock().await.take() {
            link.task.abort();
        }
    }

    /// The open stream's task, if there is one and nobody holds the link (opening one).
    fn open_link(&self) -> Option<mpsc::UnboundedSender<CallOf<Up, Down>>> {
        let link = self.link.try_lock().ok()?;
        link.as_ref()
            .filter(|open| !open.calls.is_closed())
            .map(|open| open.calls.clone())
    }

    /// The open stream's task, opening a stream if there is none.
    async fn calls<F, Fut>(
        &self,
        open: F,
    ) -> Result<mpsc::UnboundedSender<CallOf<Up, Down>>, Status>
    where
        F: FnOnce(Outgoing<Up>) -> Fut,
        Fut: Future<Output = Result<Streaming<Down>, Status>>,
    {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref().filter(|open| !open.calls.is_closed()) {
            return Ok(open.calls.clone());
        }
        let (requests, outgoing) = mpsc::unbounded_channel();
        // Boxed: opening is rare, and its future (a streaming call's) is large; inline, it
        // would make every call's future as large.
        let answers = Box::pin(open(Outgoing::new(outgoing))).await?;
        let (calls, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(incoming, requests, answers)).abort_handle();
        *link = Some(Link {
            calls: calls.clone(),
            task,
        });
        Ok(calls)
    }
}

/// An open stream of a [`Multiplexed`], to send calls on.
#[derive(Debug)]
pub struct Calls<Up: Wire, Down: Wire> {
    calls: mpsc::UnboundedSender<CallOf<Up, Down>>,
}

impl<Up: Wire, Down: Wire> Calls<Up, Down> {
    /// Sends `request` and waits for its answer, until `deadline` if there is one.
    pub async fn call(
        self,
        request: Up::Call,
        deadline: Option<Deadline>,
    ) -> Result<Down::Call, Status> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call::One(request, deadline, reply))
            .map_err(|_| Status::unavailable("stream closed"))?;
        answer.await.unwrap_or_else(|_| Err(stream_ended()))
    }

    /// Sends `requests` together (in the same message where the wire carries several)
    /// and waits for all their answers, until `deadline` if there is one: each request's
    /// answer or error, in the order of `requests`. A caller waits for one reply, not one
    /// per request. Fails as a whole only if the stream ended before taking them.
    pub async fn call_many(
        self,
        requests: Vec<Up::Call>,
        deadline: Option<Deadline>,
    ) -> Result<Vec<Result<Down::Call, Status>>, Status> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answers) = oneshot::channel();
        self.calls
            .send(Call::Many(requests, deadline, reply))
            .map_err(|_| Status::unavailable("stream closed"))?;
        answers.await.map_err(|_| stream_ended())
    }
}

/// The status of a call whose stream's task went away without answering it.
fn stream_ended() -> Status {
    Status::unavailable("stream ended")
}

impl<Up: Wire, Down: Wire> Drop for Multiplexed<Up, Down> {
    fn drop(&mut self) {
        if let Some(link) = self.link.get_mut().take() {
            link.task.abort();
        }
    }
}

/// Where the answer to one request on the wire goes.
enum Waiting<Resp> {
    /// To the caller that sent it alone.
    One(oneshot::Sender<Result<Resp, Status>>),
    /// To its place among the answers of the requests sent with it (the group is named by
    /// the id of its first request).
    Part { group: u64, position: usize },
}

/// The answers to requests sent together, gathered until the last is in.
struct Group<Resp> {
    answers: Vec<Option<Result<Resp, Status>>>,
    left: usize,
    reply: oneshot::Sender<Vec<Result<Resp, Status>>>,
}

/// By request or group id; the ids count up, so a fast hash will do.
type ById<T> = HashMap<u64, T, foldhash::fast::FixedState>;

/// The requests a stream's task sent and has no answer to yet.
struct InFlight<Resp> {
    waiting: ById<(Waiting<Resp>, Option<Deadline>)>,
    groups: ById<Group<Resp>>,
    /// Requests with a deadline: while there are any, the sweep runs.
    timed: usize,
    next_id: u64,
}

impl<Resp> InFlight<Resp> {
    /// Nothing in flight yet.
    fn new() -> Self {
        InFlight {
            waiting: ById::default(),
            groups: ById::default(),
            timed: 0,
            next_id: 0,
        }
    }

    /// Numbers `call`'s requests and keeps where their answers go; returns the requests.
    fn send<Req: Tagged>(&mut self, call: Call<Req, Resp>, onto: &mut Vec<Req>) {
        match call {
            Call::One(request, deadline, reply) => {
                self.number(request, Waiting::One(reply), deadline, onto);
            }
            Call::Many(requests, deadline, reply) => {
                let group = self.next_id + 1;
                self.groups.insert(
                    group,
                    Group {
                        answers: requests.iter().map(|_| None).collect(),
                        left: requests.len(),
                        reply,
                    },
                );
                for (position, request) in requests.into_iter().enumerate() {
                    self.number(request, Waiting::Part { group, position }, deadline, onto);
                }
            }
        }
    }

    fn number<Req: Tagged>(
        &mut self,
        mut request: Req,
        waiting: Waiting<Resp>,
        deadline: Option<Deadline>,
        onto: &mut Vec<Req>,
    ) {
        self.next_id += 1;
        request.set_id(self.next_id);
        self.timed += usize::from(deadline.is_some());
        self.waiting.insert(self.next_id, (waiting, deadline));
        onto.push(request);
    }

    /// Hands the answer to request `id` (if still waited for) to whoever waits for it.
    fn answer(&mut self, id: u64, answer: Result<Resp, Status>) {
        if let Some((waiting, deadline)) = self.waiting.remove(&id) {
            self.timed -= usize::from(deadline.is_some());
            self.settle(waiting, answer);
        }
    }

    fn settle(&mut self, waiting: Waiting<Resp>, answer: Result<Resp, Status>) {
        match waiting {
            Waiting::One(reply) => {
                let _ = reply.send(answer);
            }
            Waiting::Part { group, position } => {
                let Some(gathering) = self.groups.get_mut(&group) else {
                    return;
                };
                gathering.answers[position] = Some(answer);
                gathering.left -= 1;
                if gathering.left == 0
                    && let Some(done) = self.groups.remove(&group)
                {
                    // Every place is filled now; mapped rather than flattened, so the
                    // vector is allocated once at its size.
                    let answers = done
                        .answers
                        .into_iter()
                        .map(|answer| answer.unwrap_or_else(|| Err(Status::internal("no answer"))))
                        .collect();
                    let _ = done.reply.send(answers);
                }
            }
        }
    }

    /// Fails the requests past their deadline.
    fn expire(&mut self, now: Deadline) {
        let past: Vec<_> = self
            .waiting
            .extract_if(|_, (_, deadline)| deadline.is_some_and(|d| d <= now))
            .collect();
        for (_, (waiting, _)) in past {
            self.timed -= 1;
            self.settle(waiting, Err(expired()));
        }
    }

    /// Fails every request still waited for with `status`.
    fn fail_all(&mut self, status: &Status) {
        for (_, (waiting, _)) in std::mem::take(&mut self.waiting) {
            self.settle(waiting, Err(Status::new(status.code(), status.message())));
        }
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// A stream's task: numbers and sends the requests (those queued together in one go),
/// and hands each answer to its caller; fails the calls past their deadline; when the
/// stream breaks, fails every call in flight. Ends when the stream breaks or, once no
/// call can come any more, when the last answer is in (or the last call expired).
async fn run<Up: Wire, Down: Wire>(
    mut calls: mpsc::UnboundedReceiver<CallOf<Up, Down>>,
    requests: mpsc::UnboundedSender<Up>,
    mut answers: Streaming<Down>,
) {
    let mut in_flight = InFlight::new();
    let mut taken = Vec::with_capacity(TAKE);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    let broken = loop {
        tokio::select! {
            taking = calls.recv_many(&mut taken, TAKE), if open => match taking {
                0 if in_flight.is_empty() => return,
                0 => open = false,
                _ => {
                    let mut batch = Vec::with_capacity(taken.len());
                    for call in taken.drain(..) {
                        in_flight.send(call, &mut batch);
                    }
                    // A failed send means the stream is gone: its calls fail below.
                    if Up::pack(batch).any(|message| requests.send(message).is_err()) {
                        break Status::unavailable("stream closed");
                    }
                }
            },
            answer = answers.message() => match answer {
                Ok(Some(message)) => {
                    for answer in message.unpack() {
                        in_flight.answer(answer.id(), Ok(answer));
                    }
                    if !open && in_flight.is_empty() {
                        return;
                    }
                }
                Ok(None) => break Status::unavailable("the server ended the stream"),
                Err(status) => break broken_stream(status),
            },
            _ = sweep.tick(), if in_flight.timed > 0 => {
                in_flight.expire(Deadline::now());
                if !open && in_flight.is_empty() {
                    return;
                }
            }
        }
    };
    // Calls queued for this task after it stopped reading them are dropped with it, and
    // their callers see the stream ended.
    in_flight.fail_all(&broken);
}

/// What the calls in flight on a broken stream fail with: the server's status if it
/// ended the stream with one, UNAVAILABLE if the connection failed here (so that they
/// are retried, elsewhere if they can be), keeping the cause.
fn broken_stream(status: Status) -> Status {
    match status.source() {
        None => status,
        Some(cause) => Status::unavailable(format!("stream broke: {}: {cause}", status.message())),
    }
}

/// Answers the requests of one multiplexed stream with `answer`, several at once (at most
/// `limit`; beyond that the stream is not read and HTTP/2 flow control holds the sender
/// back), each sent to `answers` as soon as it is done. The requests run as futures this
/// task polls, not as a task each. Ends when the sender stops sending (or goes away) or
/// `stopping` turns true, once what it took is answered.
pub async fn serve<Req, Resp, F, Fut>(
    mut requests: Streaming<Req>,
    answers: mpsc::Sender<Result<Resp, Status>>,
    mut stopping: watch::Receiver<bool>,
    limit: usize,
    mut answer: F,
) where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let mut running = FuturesUnordered::new();
    let mut reading = !*stopping.borrow_and_update();
    loop {
        tokio::select! {
            // Answers first: they make room for more requests.
            biased;
            Some(done) = running.next() => {
                if answers.send(Ok(done)).await.is_err() {
                    return; // the sender went away; what runs is dropped, as for unary calls
                }
            }
            request = requests.message(), if reading && running.len() < limit => match request {
                Ok(Some(request)) => running.push(answer(request)),
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!(%status, "a multiplexed stream broke");
                    reading = false;
                }
            },
            () = stopped(&mut stopping), if reading => reading = false,
            else => return,
        }
    }
}

/// Completes once `stopping` turns true (or its sender is gone).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Whether to try a server's stream, or send unary calls: after the server answered
/// that it has no such stream (UNIMPLEMENTED, an older version), calls go unary for
/// [`Streamless::FOR`], then the stream is tried again (the server may have been upgraded
/// since).
#[derive(Debug, Default)]
pub struct Streamless {
    until: std::sync::Mutex<Option<Instant>>,
}

impl Streamless {
    /// How long calls go unary after the server answered that it has no stream.
    pub const FOR: Duration = Duration::from_secs(10);

    /// Whether to try the stream: not while the server is taken for one without it.
    pub fn stream_usable(&self) -> bool {
        let mut until = self
            .until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match *until {
            Some(until) if Instant::now() < until => false,
            _ => {
                *until = None;
                true
            }
        }
    }

    /// The server answered that it has no stream: unary calls for [`Streamless::FOR`].
    pub fn lacking(&self) {
        *self
            .until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(Instant::now() + Self::FOR);
    }
}

/// Messages of a call each, tagged with its id: they travel one to a message (the
/// site's and the relay's streams, `Pipeline`), or several to one (`PipelineBatch`).
macro_rules! one_to_a_message {
    ($($message:ident),* $(,)?) => {$(
        impl Tagged for crate::v1::$message {
            fn id(&self) -> u64 {
                self.id
            }

            fn set_id(&mut self, id: u64) {
                self.id = id;
            }
        }

        impl Wire for crate::v1::$message {
            type Call = Self;

            fn pack(calls: Vec<Self>) -> impl Iterator<Item = Self> + Send {
                calls.into_iter()
            }

            fn unpack(self) -> impl Iterator<Item = Self> + Send {
                std::iter::once(self)
            }
        }
    )*};
}

one_to_a_message!(
    PipelineRequest,
    PipelineResponse,
    BackupStreamRequest,
    BackupStreamResponse,
    ApplyStreamRequest,
    ApplyStreamResponse
);

/// Most encoded bytes of calls a message that carries several takes: beyond, they go in
/// the next message (a larger call goes alone), so a message stays within what the other
/// side accepts as long as each call does.
pub const BATCH_BYTES: usize = 1 << 20;

/// Most calls in a message that carries several: a node answers each one beyond with
/// INVALID_ARGUMENT.
pub const BATCH_CALLS: usize = 1024;

/// `calls` in runs of at most [`BATCH_CALLS`] calls and [`BATCH_BYTES`] encoded (a
/// larger call alone), in order.
pub fn by_size<T: prost::Message + Send>(calls: Vec<T>) -> impl Iterator<Item = Vec<T>> + Send {
    let mut runs = Vec::with_capacity(1);
    let mut run = Vec::new();
    let mut bytes = 0;
    for call in calls {
        // As a field of the message: its tag, its length, itself.
        let len = call.encoded_len();
        let size = 1 + prost::length_delimiter_len(len) + len;
        if !run.is_empty() && (bytes + size > BATCH_BYTES || run.len() == BATCH_CALLS) {
            runs.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += size;
        run.push(call);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs.into_iter()
}

/// Messages that carry several calls, in the field named.
macro_rules! several_to_a_message {
    ($($message:ident { $field:ident: $call:ident }),* $(,)?) => {$(
        impl Wire for crate::v1::$message {
            type Call = crate::v1::$call;

            fn pack(calls: Vec<Self::Call>) -> impl Iterator<Item = Self> + Send {
                by_size(calls).map(|$field| crate::v1::$message { $field })
            }

            fn unpack(self) -> impl Iterator<Item = Self::Call> + Send {
                self.$field.into_iter()
            }
        }
    )*};
}

several_to_a_message!(
    PipelineBatchRequest {
        requests: PipelineRequest
    },
    PipelineBatchResponse {
        responses: PipelineResponse
    },
);

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1::{PipelineBatchRequest, PipelineRequest, PutRequest, pipeline_request};

    fn put(id: u64, bytes: usize) -> PipelineRequest {
        PipelineRequest {
            id,
            operation: Some(pipeline_request::Operation::Put(PutRequest {
                cache: "work".into(),
                key: bytes::Bytes::from(format!("k{id}")),
                value: bytes::Bytes::from(vec![b'v'; bytes]),
                ..Default::default()
            })),
        }
    }

    fn in_flight() -> InFlight<PipelineRequest> {
        InFlight::new()
    }

    #[test]
    fn requests_sent_together_are_answered_together_in_their_order() {
        let mut in_flight = in_flight();
        let mut wire = Vec::new();
        let (one, mut one_answer) = oneshot::channel();
        in_flight.send(Call::One(put(0, 1), None, one), &mut wire);
        let (many, mut many_answers) = oneshot::channel();
        let soon = Deadline::now() + Duration::from_secs(1);
        let requests = vec![put(0, 2), put(0, 3), put(0, 4)];
        in_flight.send(Call::Many(requests, Some(soon), many), &mut wire);
        let ids: Vec<u64> = wire.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3, 4], "numbered in order");
        assert_eq!(in_flight.timed, 3);

        // Answers in another order; the group's caller hears once, when all are in.
        let answer = |id: u64| put(id, id as usize);
        in_flight.answer(4, Ok(answer(4)));
        in_flight.answer(2, Ok(answer(2)));
        assert!(many_answers.try_recv().is_err(), "one still missing");
        in_flight.expire(soon);
        let answers = many_answers.try_recv().expect("all answered");
        let ids: Vec<_> = answers
            .iter()
            .map(|a| a.as_ref().ok().map(|r| r.id))
            .collect();
        assert_eq!(ids, [Some(2), None, Some(4)]);
        assert!(
            answers[1].as_ref().is_err_and(is_expired),
            "past its deadline"
        );
        assert_eq!(in_flight.timed, 0);

        assert!(
            one_answer.try_recv().is_err(),
            "no deadline, still waited for"
        );
        in_flight.answer(3, Ok(answer(3)));
        in_flight.fail_all(&Status::unavailable("stream broke"));
        let failed = one_answer.try_recv().expect("failed with the stream");
        assert_eq!(failed.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(in_flight.is_empty() && in_flight.groups.is_empty());
    }

    #[test]
    fn batches_stay_within_their_calls_and_bytes_a_larger_call_alone_in_order() {
        let sizes = [400 << 10, 400 << 10, 400 << 10, 2 << 20, 10, 10];
        let calls = sizes
            .iter()
            .enumerate()
            .map(|(id, bytes)| put(id as u64, *bytes))
            .collect();
        let messages: Vec<_> = PipelineBatchRequest::pack(calls).collect();
        let ids: Vec<Vec<u64>> = messages
            .iter()
            .map(|message| message.requests.iter().map(|r| r.id).collect())
            .collect();
        assert_eq!(ids, [vec![0, 1], vec![2], vec![3], vec![4, 5]]);
        for message in &messages {
            assert!(
                message.requests.len() == 1 || message.encoded_len() <= BATCH_BYTES,
                "{} bytes in {} calls",
                message.encoded_len(),
                message.requests.len()
            );
        }

        let small: Vec<_> = (0..200).map(|id| put(id, 100)).collect();
        let messages: Vec<_> = PipelineBatchRequest::pack(small.clone()).collect();
        assert_eq!(messages.len(), 1, "small calls travel together");
        assert_eq!(messages[0].requests, small);

        let many: Vec<_> = (0..BATCH_CALLS as u64 * 2 + 1)
            .map(|id| put(id, 1))
            .collect();
        let counts: Vec<_> = PipelineBatchRequest::pack(many)
            .map(|message| message.requests.len())
            .collect();
        assert_eq!(
            counts,
            [BATCH_CALLS, BATCH_CALLS, 1],
            "at most BATCH_CALLS each"
        );
    }
}
