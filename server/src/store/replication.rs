//! What the store needs from the rest of its site, as a trait the cluster implements.
//!
//! The store decides *what* a write does (lock, condition, version, apply); the site
//! decides *where* it runs (the key's primary) and *who else* must take it (every other
//! member) before it is acknowledged. A node alone is its own site: [`Alone`].

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::store::cache::{Touch, WriteRequest, WriteResult};
use crate::store::entry::Slot;
use crate::store::mutation::Mutation;
use crate::store::version::Version;

/// What the other members did with a primary's change.
#[derive(Debug)]
pub enum Replicated {
    /// Every member that must have it has it.
    Done,
    /// A member holds something newer than the change's `prev`: the key changed without
    /// this primary (another node acted as primary meanwhile, or this one missed a write).
    Conflict {
        /// What that member holds (`None`: only a clear newer than `prev`).
        current: Option<Slot>,
        /// The answer that member recorded for the change's request id: the same write,
        /// retried after its first primary failed, already happened there.
        recorded: Option<Arc<WriteResult>>,
    },
    /// A member was busy with a write of its own to the key (it believes it is the
    /// primary too, for a moment): try again.
    Busy,
}

/// A change received from another member, with the request it came from.
#[derive(Debug, Clone)]
pub struct ReceivedChange {
    /// The change.
    pub mutation: Mutation,
    /// The request id and answer of the write that made it, if it had an id.
    pub answer: Option<(String, Arc<WriteResult>)>,
}

/// What a member did with a [`ReceivedChange`].
#[derive(Debug)]
pub struct ChangeReply {
    /// What happened to the change.
    pub outcome: crate::store::write::ReplicaOutcome,
    /// On conflict: the answer this member kept for the change's request id.
    pub recorded: Option<Arc<WriteResult>>,
}

/// The site a node belongs to, as the store sees it.
#[tonic::async_trait]
pub trait SiteReplication: Send + Sync + Debug {
    /// Whether this node is alone in its site (no replication, no forwarding).
    fn is_alone(&self) -> bool;

    /// Whether this node is the primary of `key` now.
    fn is_primary(&self, key: &Bytes) -> bool;

    /// Runs a write on the key's primary, which this node is not.
    async fn forward(
        &self,
        cache: &str,
        request: WriteRequest,
        request_id: Option<&str>,
    ) -> Result<Arc<WriteResult>>;

    /// Sends a primary's change to every other member that must take it before the write
    /// is acknowledged. `Err(Unavailable)` when a member could not be reached in time and
    /// is not known to be gone: the change may or may not be there.
    async fn replicate(
        &self,
        cache: &str,
        mutation: &Mutation,
        request_id: Option<&str>,
        answer: Option<&WriteResult>,
    ) -> Result<Replicated>;

    /// Clears a cache on every other member, at `version`.
    async fn replicate_clear(&self, cache: &str, version: Version) -> Result<()>;

    /// Tells every other member of the site which max-idle entries were read on this node
    /// (each expires them by its own reads otherwise). Best effort: a member that misses
    /// it learns of the next reads.
    async fn share_touches(&self, _cache: &str, _touches: &[Touch]) {}

    /// Held by a write from before it replicates until it is applied, so a member can
    /// wait for the writes under way (a joiner's confirmation). `None`: nothing to hold.
    async fn write_guard(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        None
    }
}

/// A node alone: primary of every key, nobody to replicate to.
#[derive(Debug, Default)]
pub struct Alone;

#[tonic::async_trait]
impl SiteReplication for Alone {
    fn is_alone(&self) -> bool {
        true
    }

    fn is_primary(&self, _key: &Bytes) -> bool {
        true
    }

    async fn forward(
        &self,
        _cache: &str,
        _request: WriteRequest,
        _request_id: Option<&str>,
    ) -> Result<Arc<WriteResult>> {
        Err(Error::Internal("a node alone never forwards"))
    }

    async fn replicate(
        &self,
        _cache: &str,
        _mutation: &Mutation,
        _request_id: Option<&str>,
        _answer: Option<&WriteResult>,
    ) -> Result<Replicated> {
        Ok(Replicated::Done)
    }

    async fn replicate_clear(&self, _cache: &str, _version: Version) -> Result<()> {
        Ok(())
    }
}
