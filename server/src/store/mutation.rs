//! A change to one key, as it travels between nodes and sites, and what applying it did.
//!
//! Every replicated write carries the version it replaces (`prev`, a state version, see
//! [`Slot::state_version`]) and its own (`next`). [`Keyspace::apply`] is the one place
//! that decides whether a replica takes it.
//!
//! [`Keyspace::apply`]: crate::store::keyspace::Keyspace::apply

use std::sync::Arc;

use bytes::Bytes;

use crate::store::entry::{Entry, Slot, Tombstone};
use crate::store::version::Version;

/// A change to one key.
#[derive(Debug, Clone)]
pub struct Mutation {
    /// The key.
    pub key: Bytes,
    /// The state version this change replaces; 0 = the key never existed.
    pub prev: Version,
    /// What the key becomes.
    pub change: Change,
    /// The version of a write in doubt that this change replaces, in a site that may
    /// hold it: that write did not happen (its site's primary failed it), so an answer
    /// kept for it is void. 0 = none.
    pub undoes: Version,
}

/// What a key becomes.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new live entry.
    Write(Arc<Entry>),
    /// A tombstone: removed or expired.
    Remove(Arc<Tombstone>),
}

impl Mutation {
    /// The version of this change.
    pub fn next(&self) -> Version {
        match &self.change {
            Change::Write(entry) => entry.version,
            Change::Remove(tombstone) => tombstone.version,
        }
    }

    /// The slot the key holds once this change is applied.
    pub fn slot(&self) -> Slot {
        match &self.change {
            Change::Write(entry) => Slot::Live(entry.clone()),
            Change::Remove(tombstone) => Slot::Tombstone(tombstone.clone()),
        }
    }
}

/// What [`Keyspace::apply`](crate::store::keyspace::Keyspace::apply) did with a mutation.
#[derive(Debug, Clone)]
pub enum ApplyOutcome {
    /// The key took the change; `replaced` is what it held before.
    Applied {
        /// The slot the change replaced, if any.
        replaced: Option<Slot>,
    },
    /// The key already holds exactly this change (a replay); nothing changed.
    AlreadyApplied,
    /// The key holds something newer than `prev`: the change is refused.
    Conflict {
        /// What the key holds (`None` = nothing but a clear floor newer than `prev`).
        current: Option<Slot>,
    },
}
