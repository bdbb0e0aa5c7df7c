//! [`Batch`]: several single-key requests of one cache sent together, as Redis clients
//! pipeline commands.

use bytes::Bytes;
use sitegrid_proto::v1::{pipeline_request::Operation, pipeline_response::Result as Answer};

use crate::cache::{RemoteCache, found};
use crate::error::Result;
use crate::options::WriteOptions;
use crate::types::{
    PutIfAbsentOutcome, PutOutcome, RemoveOutcome, RemoveWithVersionOutcome, ReplaceOutcome,
    ReplaceWithVersionOutcome, Versioned,
};

/// Single-key requests of one cache, sent together by [`Batch::send`]; get one with
/// [`RemoteCache::batch`].
///
/// Each request means exactly what the [`RemoteCache`] method of the same name means
/// (same conditions, versions, request ids, replication and events), and is answered on
/// its own: one failing fails no other. They are not a transaction: requests to
/// different keys apply in any order, and those to one key in the order added (a request
/// that is retried goes again after the others were sent).
///
/// What it saves: on the pipelined path (the default), the requests to each node travel
/// in the same messages and the caller waits once per node, instead of once per request;
/// a task with many small requests to make at once (a login reading a session and writing
/// a few entries) pays for them about as a server does. A request that fails in a way
/// [`RemoteCache`] retries is sent again on its own with the attempts left, keeping its
/// request id. Without pipelining ([`crate::ClientBuilder::pipeline`]), the requests go
/// as unary calls all at once.
///
/// ```no_run
/// # async fn demo(cache: sitegrid_client::RemoteCache) -> sitegrid_client::Result<()> {
/// use sitegrid_client::{Outcome, WriteOptions};
///
/// let mut batch = cache.batch();
/// batch.get("s1").put("s2", "bob", WriteOptions::new()).remove("s3", WriteOptions::new());
/// for outcome in batch.send().await {
///     match outcome? {
///         Outcome::Get(entry) => println!("s1: {entry:?}"),
///         other => println!("{other:?}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Batch {
    cache: RemoteCache,
    requests: Vec<Operation>,
}

/// What one request of a [`Batch`] got: the result of the [`RemoteCache`] method of the
/// same name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// [`RemoteCache::get`]'s: the entry, or `None`.
    Get(Option<Versioned>),
    Put(PutOutcome),
    PutIfAbsent(PutIfAbsentOutcome),
    Replace(ReplaceOutcome),
    ReplaceWithVersion(ReplaceWithVersionOutcome),
    Remove(RemoveOutcome),
    RemoveWithVersion(RemoveWithVersionOutcome),
}

impl Batch {
    pub(crate) fn new(cache: RemoteCache) -> Batch {
        Batch {
            cache,
            requests: Vec::new(),
        }
    }

    /// Adds [`RemoteCache::get`].
    pub fn get(&mut self, key: impl Into<Bytes>) -> &mut Self {
        let request = self.cache.get_request(key.into());
        self.add(Operation::Get(request))
    }

    /// Adds [`RemoteCache::put`].
    pub fn put(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> &mut Self {
        let request = self.cache.put_request(key.into(), value.into(), options);
        self.add(Operation::Put(request))
    }

    /// Adds [`RemoteCache::put_if_absent`].
    pub fn put_if_absent(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> &mut Self {
        let request = self
            .cache
            .put_if_absent_request(key.into(), value.into(), options);
        self.add(Operation::PutIfAbsent(request))
    }

    /// Adds [`RemoteCache::replace`].
    pub fn replace(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> &mut Self {
        let request = self
            .cache
            .replace_request(key.into(), value.into(), options);
        self.add(Operation::Replace(request))
    }

    /// Adds [`RemoteCache::replace_with_version`].
    pub fn replace_with_version(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        expected_version: u64,
        options: WriteOptions,
    ) -> &mut Self {
        let request = self.cache.replace_with_version_request(
            key.into(),
            value.into(),
            expected_version,
            options,
        );
        self.add(Operation::ReplaceWithVersion(request))
    }

    /// Adds [`RemoteCache::remove`].
    pub fn remove(&mut self, key: impl Into<Bytes>, options: WriteOptions) -> &mut Self {
        let request = self.cache.remove_request(key.into(), options);
        self.add(Operation::Remove(request))
    }

    /// Adds [`RemoteCache::remove_with_version`].
    pub fn remove_with_version(
        &mut self,
        key: impl Into<Bytes>,
        expected_version: u64,
        options: WriteOptions,
    ) -> &mut Self {
        let request = self
            .cache
            .remove_with_version_request(key.into(), expected_version, options);
        self.add(Operation::RemoveWithVersion(request))
    }

    /// Requests added so far.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether no request was added.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Sends the requests and answers each, in the order they were added.
    pub async fn send(self) -> Vec<Result<Outcome>> {
        self.cache
            .client()
            .batch(self.requests)
            .await
            .into_iter()
            .map(|answer| answer.map(outcome))
            .collect()
    }

    fn add(&mut self, operation: Operation) -> &mut Self {
        self.requests.push(operation);
        self
    }
}

/// The outcome an answer stands for. The client checked that each answer is of its
/// request's kind, and that it is not an error.
fn outcome(answer: Answer) -> Outcome {
    match answer {
        Answer::Get(response) => Outcome::Get(found(response)),
        Answer::Put(response) => Outcome::Put(response.into()),
        Answer::PutIfAbsent(response) => Outcome::PutIfAbsent(response.into()),
        Answer::Replace(response) => Outcome::Replace(response.into()),
        Answer::ReplaceWithVersion(response) => Outcome::ReplaceWithVersion(response.into()),
        Answer::Remove(response) => Outcome::Remove(response.into()),
        Answer::RemoveWithVersion(response) => Outcome::RemoveWithVersion(response.into()),
        Answer::Error(_) => unreachable!("the client turns an error answer into an error"),
    }
}
