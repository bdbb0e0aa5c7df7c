//! A primary's writes to one member, batched.
//!
//! Every member a primary replicates to has one sender task. Writes queue for it; while
//! one `Apply` call is under way the queue fills, and the next call carries everything
//! queued (up to [`MAX_BATCH`] mutations and a byte budget), grouped by cache. Under load
//! a member receives a few large calls instead of one call per write, and makes each
//! call's changes durable with one wait; a lone write is sent at once.
//!
//! Each write is still answered on its own: its outcome, or "left out" if the member was
//! excluded while the call was retried ([`Cluster::apply_on`]).

use std::sync::{Arc, Weak};

use prost::Message;
use sitegrid_proto::batch::{BatchQueue, Weighed};
use sitegrid_proto::v1;
use tokio::sync::{mpsc, oneshot};

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
    while let Some(first) = queue.first().await {
        // Writers about to queue get one turn first, so the batch carries them too.
        tokio::task::yield_now().await;
        let batch = queue.fill(first);
        let Some(inner) = cluster.upgrade() else {
            // The node stopped: whatever is queued is answered by the queue closing.
            return;
        };
        Cluster { inner }.send_batch(&target, batch).await;
    }
}

impl Cluster {
    /// Sends a batch in one `Apply` call per cache (concurrently) and answers each write.
    async fn send_batch(&self, target: &Target, batch: Vec<Job>) {
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
            match self.apply_on(target, request).await {
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
