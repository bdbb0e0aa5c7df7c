//! sitegrid's cross-site relay: backups of writes to peer sites.
//!
//! The relay talks to its own node only through [`LocalSite`], which the server
//! implements, so this crate never depends on `sitegrid-server`. It has two sides:
//! - sending ([`Relay`]): a key's primary hands it each write to a cache with `sync`
//!   backups before applying the write in its own site; the relay sends it to every such
//!   peer site in parallel and sums up their answers under each cache's failure policy;
//! - receiving ([`SiteLinkService`]): the backups peer sites send, handed to the node,
//!   whose primary of the key applies them with the one replication rule.
//!
//! Around them: heartbeats and the site's state of each peer (`decide`, `state`), the
//! witness that grants taking a peer offline (`witness`), and resync by digest
//! comparison (`resync`).

mod decide;
mod disk;
mod error;
mod health;
mod link;
mod local;
mod outbox;
mod peer;
mod peer_keys;
mod relay;
mod resync;
mod state;
mod witness;

pub use decide::PeerStatus;
pub use error::RelayError;
pub use link::SiteLinkService;
pub use local::LocalSite;
pub use relay::{Relay, SyncOutcome};
pub use resync::Progress;
pub use state::{GOSSIP_PREFIX, Mode, PeerState, SiteStates};
pub use witness::WitnessService;
