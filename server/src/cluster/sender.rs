//! A primary's writes to one member, batched.
//!
//! Every member a primary replicates to has one sender task. Writes queue for it; while
//! one `Apply` call is under way the queue fills, and the next call carries everything
//! queued (up to [`MAX_BATCH`] mutations and a byte budget), grouped by cache. Under load
//! a member receives a few large calls instead of one call per write, and makes each
//! call's changes durable with one wait; a lone write is sent at once.
//!
//! The calls ride one long-lived `ApplyStream` per member ([`ApplyLink`]): a call costs
//! one message each way instead of an HTTP/2 stream of its own (headers, data and
//! trailers). A member that lacks `ApplyStream` (an older version, during a rolling
//! upgrade) is sent unary `Apply` calls, and the stream is tried again a while later.
//!
//! Each write is still answered on its own: its outcome, or "left out" if the member was
//! excluded while the call was retried ([`Cluster::apply_on`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use prost::Message;
use sitegrid_proto::batch::{BatchQueue, Weighed};
use sitegrid_proto::multiplex::{self, Multiplexed, Streamless};
use sitegrid_proto::v1;
use sitegrid_proto::v1::replication_service_client::ReplicationServiceClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Cluster, Inner, Target};
use crate::error::{Error, Result};

/// Most mutations one `Apply` call carries.
const MAX_BATCH: usize = 256;

/// Most bytes of mutations one `Apply` call carries (less if the message limit is lower);
/// a single larger mutation goes alone.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// What became of one write on the member: its outcome, or `None` if the member was left
/// out of replication.
pub(super) type Reply = Result<Option<v1::ApplyOutcome>>;

struct Job {
    cache: Arc<str>,
    mutation: v1::ReplicatedMutation,
    size: usize,
    reply: oneshot::Sender<Reply>,
}

/// The writes of one cache in a batch, and where their outcomes go.
struct Group {
    cache: Arc<str>,
    mutations: Vec<v1::ReplicatedMutation>,
    replies: Vec<oneshot::Sender<Reply>>,
}

/// The queue of one member's sender task; the task ends when every clone is dropped and
/// the queue is empty.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Sender {
    /// Starts the sender task for `target`; it holds the cluster weakly, so it never
    /// keeps a stopped node alive.
    pub(super) fn start(cluster: Weak<Inner>, target: Target, max_message_bytes: usize) -> Sender {
        let (jobs, queue) = mpsc::unbounded_channel();
        let budget = MAX_BATCH_BYTES.min(max_message_bytes / 2).max(1);
        tokio::spawn(run(cluster, target, queue, budget));
        Sender { jobs }
    }

    /// Sends `mutation` of `cache` with the next call and waits for its outcome.
    pub(super) async fn send(&self, cache: &str, mutation: v1::ReplicatedMutation) -> Reply {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            cache: Arc::from(cache),
            size: mutation.encoded_len(),
            mutation,
            reply,
        };
        self.jobs.send(job).map_err(|_| Error::ShuttingDown)?;
        answer.await.unwrap_or(Err(Error::ShuttingDown))
    }
}

/// How a primary's calls reach one member: see the module doc.
#[derive(Debug, Default)]
pub(super) struct ApplyLink {
    stream: Multiplexed<v1::ApplyStreamRequest, v1::ApplyStreamResponse>,
    streamless: Streamless,
}

impl ApplyLink {
    /// One `Apply` call (`call.apply`) through `client`, answered within `timeout`. A
    /// call that timed out drops the stream, so the next one starts on a fresh stream
    /// rather than behind a stuck one.
    pub(super) async fn call(
        &self,
        mut client: ReplicationServiceClient<Channel>,
        call: &v1::ApplyStreamRequest,
        timeout: Duration,
    ) -> Result<v1::ApplyResponse, Status> {
        use v1::apply_stream_response::Result as Answer;
        if self.streamless.stream_usable() {
            let deadline = tokio::time::Instant::now() + timeout;
            let answer = self
                .stream
                .call(call.clone(), Some(deadline), |outgoing| {
                    // Only when a stream is opened, not for every call on it.
                    let mut opener = client.clone();
                    async move { Ok(opener.apply_stream(outgoing).await?.into_inner()) }
                })
                .await;
            if answer.as_ref().is_err_and(multiplex::is_expired) {
                self.stream.reset().await;
                return Err(Status::deadline_exceeded("no answer in time"));
            }
            match answer.map(|answer| answer.result) {
                Ok(Some(Answer::Response(response))) => return Ok(response),
                Ok(Some(Answer::Error(error))) => return Err(error.into()),
                Ok(None) => return Err(Status::internal("an apply stream answer without result")),
                Err(status) if status.code() == Code::Unimplemented => {
                    tracing::info!(retry_in = ?Streamless::FOR,
                        "a member has no ApplyStream (an older version): sending it Apply calls");
                    self.streamless.lacking();
                }
                Err(status) => return Err(status),
            }
        }
        let mut request = tonic::Request::new(call.apply.clone().unwrap_or_default());
        request.set_timeout(timeout);
        tokio::time::timeout(timeout, client.apply(request))
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")))
            .map(tonic::Response::into_inner)
    }
}

impl Weighed for Job {
    fn weight(&self) -> usize {
        self.size
    }
}

async fn run(
    cluster: Weak<Inner>,
    target: Target,
    queue: mpsc::UnboundedReceiver<Job>,
    budget: usize,
) {
    let mut queue = BatchQueue::new(queue, MAX_BATCH, budget);
    let link = ApplyLink::default();
    while let Some(first) = queue.first().await {
        // Writers about to queue get one turn first, so the batch carries them too.
        tokio::task::yield_now().await;
        let batch = queue.fill(first);
        let Some(inner) = cluster.upgrade() else {
            // The node stopped: whatever is queued is answered by the queue closing.
            return;
        };
        Cluster { inner }.send_batch(&target, &link, batch).await;
    }
}

impl Cluster {
    /// Sends a batch in one `Apply` call per cache (concurrently) and answers each write.
    async fn send_batch(&self, target: &Target, link: &ApplyLink, batch: Vec<Job>) {
        let mut groups: Vec<Group> = Vec::new();
        for job in batch {
            let group = match groups.iter().position(|group| group.cache == job.cache) {
                Some(index) => &mut groups[index],
                None => {
                    groups.push(Group {
                        cache: job.cache,
                        mutations: Vec::new(),
                        replies: Vec::new(),
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            group.mutations.push(job.mutation);
            group.replies.push(job.reply);
        }
        let calls = groups.into_iter().map(|group| async move {
            let Group {
                cache,
                mutations,
                replies,
            } = group;
            let request = v1::ApplyRequest {
                cache: cache.to_string(),
                mutations,
                from_node: self.inner.me.name.to_string(),
            };
            match self.apply_on(target, link, request).await {
                None => {
                    for reply in replies {
                        let _ = reply.send(Ok(None));
                    }
                }
                Some(response) if response.outcomes.len() == replies.len() => {
                    for (reply, outcome) in replies.into_iter().zip(response.outcomes) {
                        let _ = reply.send(Ok(Some(outcome)));
                    }
                }
                Some(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(Error::Internal(
                            "a member answered a different number of outcomes",
                        )));
                    }
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}
