//! What the store needs from the peer sites, as a trait the relay's adapter implements.
//!
//! A key's primary hands each write to a cache with `sync` backups to the peer sites
//! before it applies the write in its own site; their answer decides whether it does.

use std::fmt::Debug;

use crate::error::Result;
use crate::store::Services;
use crate::store::cache::{Touch, WriteResult};
use crate::store::entry::Slot;
use crate::store::mutation::Mutation;

/// What the sync peer sites did with a primary's change.
#[derive(Debug)]
pub(crate) enum Backed {
    /// Every peer site that must have it has it (or may go without, by its policy).
    Done,
    /// A peer site holds something newer than the change's `prev`: the write must not
    /// happen as it is.
    Conflict {
        /// That state (`None`: only a clear).
        current: Option<Slot>,
        /// The answer the peer keeps for the write's request id: this very write already
        /// happened there.
        recorded: Option<WriteResult>,
        /// The change's version is void there: a write in doubt that the peer's site
        /// undid.
        voided: bool,
    },
    /// A peer site was busy with a write of its own to the key: try again.
    Busy,
}

/// The peer sites of a node, as the store sees them.
#[tonic::async_trait]
pub(crate) trait PeerSites: Send + Sync + Debug {
    /// Whether writes to `cache` go to some peer site before they are acknowledged.
    fn has_sync_backups(&self, cache: &str) -> bool;

    /// A peer site whose async outbox for `cache` is full under the `fail` policy.
    fn full_outbox(&self, cache: &str) -> Option<String>;

    /// Queues a change applied in this site for the async peer sites of `cache`, and
    /// returns once it is on disk.
    async fn enqueue(&self, cache: &str, mutation: &Mutation) -> Result<()>;

    /// Tells the peer sites that back `cache` up which max-idle entries were read in this
    /// site, so a session used here does not expire there. Best effort.
    async fn share_touches(&self, cache: &str, touches: &[Touch]);

    /// Sends a primary's change to the sync peer sites of `cache`. `Err(Unavailable)`
    /// when one with the `fail` policy did not answer: the write must fail, and nothing
    /// is applied in this site (the peer may have it; the relay reconciles it later).
    /// The write's request id and answer go along, so a retry that fails over to the
    /// peer site gets the same answer.
    async fn backup(
        &self,
        cache: &str,
        mutation: &Mutation,
        request_id: Option<&str>,
        answer: &WriteResult,
        services: &Services,
    ) -> Result<Backed>;
}
