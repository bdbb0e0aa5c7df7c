//! Calls multiplexed on one long-lived bidirectional stream.
//!
//! A unary call costs an HTTP/2 stream: headers both ways, trailers, a task on the
//! server. A request on an open stream costs one message each way, and messages queued
//! together leave in one write. [`Multiplexed`] keeps one such stream, opened on first
//! use and again after it breaks: every request gets an id, the answer echoing that id
//! goes back to its caller, whatever order the answers come in. The client library's
//! `Pipeline` streams, a primary's changes to the members of its site (`ApplyStream`)
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

/// What the callers' requests become on the wire: the stream the opener sends.
pub type Outgoing<Req> = tokio_stream::wrappers::UnboundedReceiverStream<Req>;

/// A request to send, when to give up on it, and where its answer goes.
type Call<Req, Resp> = (Req, Option<Deadline>, oneshot::Sender<Result<Resp, Status>>);

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
struct Link<Req, Resp> {
    calls: mpsc::UnboundedSender<Call<Req, Resp>>,
    task: AbortHandle,
}

/// One stream carrying many calls; see the module doc.
#[derive(Debug)]
pub struct Multiplexed<Req, Resp> {
    link: Mutex<Option<Link<Req, Resp>>>,
}

impl<Req, Resp> Default for Multiplexed<Req, Resp> {
    fn default() -> Self {
        Multiplexed {
            link: Mutex::new(None),
        }
    }
}

impl<Req, Resp> Multiplexed<Req, Resp>
where
    Req: Tagged + Send + 'static,
    Resp: Tagged + Send + 'static,
{
    /// Sends `request` and waits for its answer, until `deadline` if there is one.
    /// Without an open stream, `open` opens one: it is given the stream of requests to
    /// send and returns the server's answers.
    pub async fn call<F, Fut>(
        &self,
        request: Req,
        deadline: Option<Deadline>,
        open: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(Outgoing<Req>) -> Fut,
        Fut: Future<Output = Result<Streaming<Resp>, Status>>,
    {
        let calls = match (self.open_link(), deadline) {
            (Some(calls), _) => calls,
            (None, None) => self.calls(open).await?,
            (None, Some(deadline)) => tokio::time::timeout_at(deadline, self.calls(open))
                .await
                .map_err(|_| expired())??,
        };
        let (reply, answer) = oneshot::channel();
        calls
            .send((request, deadline, reply))
            .map_err(|_| Status::unavailable("stream closed"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("stream ended")))
    }

    /// Drops the open stream, if any: its calls in flight fail with UNAVAILABLE and the
    /// next call opens a new one.
    pub async fn reset(&self) {
        if let Some(link) = self.link.lock().await.take() {
            link.task.abort();
        }
    }

    /// The open stream's task, if there is one and nobody holds the link (opening one).
    fn open_link(&self) -> Option<mpsc::UnboundedSender<Call<Req, Resp>>> {
        let link = self.link.try_lock().ok()?;
        link.as_ref()
            .filter(|open| !open.calls.is_closed())
            .map(|open| open.calls.clone())
    }

    /// The open stream's task, opening a stream if there is none.
    async fn calls<F, Fut>(&self, open: F) -> Result<mpsc::UnboundedSender<Call<Req, Resp>>, Status>
    where
        F: FnOnce(Outgoing<Req>) -> Fut,
        Fut: Future<Output = Result<Streaming<Resp>, Status>>,
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

impl<Req, Resp> Drop for Multiplexed<Req, Resp> {
    fn drop(&mut self) {
        if let Some(link) = self.link.get_mut().take() {
            link.task.abort();
        }
    }
}

/// A stream's task: numbers and sends each request, and hands each answer to its
/// caller; fails the calls past their deadline; when the stream breaks, fails every call
/// in flight. Ends when the stream breaks or, once no call can come any more, when the
/// last answer is in (or the last call expired).
async fn run<Req: Tagged, Resp: Tagged>(
    mut calls: mpsc::UnboundedReceiver<Call<Req, Resp>>,
    requests: mpsc::UnboundedSender<Req>,
    mut answers: Streaming<Resp>,
) {
    type Reply<Resp> = oneshot::Sender<Result<Resp, Status>>;
    let mut in_flight: HashMap<u64, (Reply<Resp>, Option<Deadline>)> = HashMap::new();
    // Calls in flight with a deadline: while there are any, the sweep runs.
    let mut timed = 0usize;
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_id = 0u64;
    let mut open = true;
    let broken = loop {
        tokio::select! {
            call = calls.recv(), if open => match call {
                Some((mut request, deadline, reply)) => {
                    next_id += 1;
                    request.set_id(next_id);
                    if requests.send(request).is_err() {
                        let _ = reply.send(Err(Status::unavailable("stream closed")));
                        break Status::unavailable("stream closed");
                    }
                    timed += usize::from(deadline.is_some());
                    in_flight.insert(next_id, (reply, deadline));
                }
                None if in_flight.is_empty() => return,
                None => open = false,
            },
            answer = answers.message() => match answer {
                Ok(Some(answer)) => {
                    if let Some((reply, deadline)) = in_flight.remove(&answer.id()) {
                        timed -= usize::from(deadline.is_some());
                        let _ = reply.send(Ok(answer));
                    }
                    if !open && in_flight.is_empty() {
                        return;
                    }
                }
                Ok(None) => break Status::unavailable("the server ended the stream"),
                Err(status) => break broken_stream(status),
            },
            _ = sweep.tick(), if timed > 0 => {
                let now = Deadline::now();
                let past = in_flight.extract_if(|_, (_, deadline)| deadline.is_some_and(|d| d <= now));
                for (_, (reply, _)) in past {
                    timed -= 1;
                    let _ = reply.send(Err(expired()));
                }
                if !open && in_flight.is_empty() {
                    return;
                }
            }
        }
    };
    // Calls queued for this task after it stopped reading them are dropped with it, and
    // their callers see the stream ended.
    for (_, (reply, _)) in in_flight {
        let _ = reply.send(Err(Status::new(broken.code(), broken.message())));
    }
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

macro_rules! tagged {
    ($($message:ident),* $(,)?) => {$(
        impl Tagged for crate::v1::$message {
            fn id(&self) -> u64 {
                self.id
            }

            fn set_id(&mut self, id: u64) {
                self.id = id;
            }
        }
    )*};
}

tagged!(
    PipelineRequest,
    PipelineResponse,
    BackupStreamRequest,
    BackupStreamResponse,
    ApplyStreamRequest,
    ApplyStreamResponse
);
