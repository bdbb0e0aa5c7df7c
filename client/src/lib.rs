//! Rust client for sitegrid's gRPC API.
//!
//! ```no_run
//! # async fn demo() -> sitegrid_client::Result<()> {
//! use sitegrid_client::{Client, WriteOptions};
//! use std::time::Duration;
//!
//! let client = Client::connect(["127.0.0.1:11222", "127.0.0.1:11223"]).await?;
//! let sessions = client.cache("sessions");
//! let written = sessions
//!     .put("s1", "alice", WriteOptions::new().lifespan(Duration::from_secs(1800)).tag("user=alice"))
//!     .await?;
//! let entry = sessions.get("s1").await?;
//! assert_eq!(entry.map(|e| e.metadata.version), Some(written.version));
//! # Ok(())
//! # }
//! ```
//!
//! - [`Client`] holds one lazily connected channel per endpoint and is cheap to clone;
//!   [`ClientBuilder`] sets timeouts and the retry [`Backoff`].
//! - The client learns the site's members from the nodes, in the background and again
//!   whenever a node fails it: the ready members become endpoints, even those it was not
//!   given, and a write of a key goes first to the key's primary (the ready member that
//!   orders its writes), which saves the node a forwarding hop. Until the members are
//!   known, or when a server does not report them, requests go to the given endpoints.
//!   See [`ClientBuilder::discover_topology`].
//! - [`RemoteCache`] mirrors every `Cache` RPC with typed results; a condition that does
//!   not hold (`put_if_absent` on a present key...) is an outcome, not an error.
//!   Single-key requests share a few long-lived `Pipeline` streams per endpoint, each
//!   with a bounded window of requests in flight, so that many tasks' small requests
//!   cost one message each way rather than an HTTP/2 stream each; see
//!   [`ClientBuilder::pipeline`]. A task with several requests to make at once sends
//!   them as one [`Batch`] ([`RemoteCache::batch`]), as Redis clients pipeline: they
//!   travel together and the task waits once per node, not once per request.
//! - [`RemoteAdmin`] reads the cluster status.
//! - [`Client::listen`] follows the changes of caches as an [`EventStream`] of
//!   [`Event`]s, which resumes by itself after failures without losing or repeating a
//!   change, and says [`Event::InvalidateAll`] when it cannot rule out having missed some.
//! - Every failure is an [`Error`] that knows its [`ErrorCode`]. UNAVAILABLE, ABORTED and
//!   transport failures are retried with the [`Backoff`], moving to the next ready
//!   endpoint after UNAVAILABLE or a transport failure; every write carries a request id, kept
//!   across retries, so the server applies it once.

mod admin;
mod batch;
mod builder;
mod cache;
mod client;
mod credentials;
mod endpoint;
mod entry_stream;
mod error;
mod event;
mod event_stream;
mod options;
mod pipeline;
mod refresh;
mod resume;
mod retry;
mod topology;
mod types;

pub use admin::{CacheStatus, ClusterStatus, MemberStatus, RemoteAdmin};
pub use batch::{Batch, Outcome};
pub use builder::ClientBuilder;
pub use cache::RemoteCache;
pub use client::Client;
pub use entry_stream::EntryStream;
pub use error::{Error, Result};
pub use event::{Change, ChangeKind, Event};
pub use event_stream::EventStream;
pub use options::{EntriesOptions, ListenOptions, WriteOptions};
pub use sitegrid_proto::{Backoff, ErrorCode};
pub use types::{
    Entry, Metadata, PutIfAbsentOutcome, PutOutcome, RemoveOutcome, RemoveWithVersionOutcome,
    ReplaceOutcome, ReplaceWithVersionOutcome, Versioned,
};
