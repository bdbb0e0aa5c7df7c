//! sitegrid's gRPC contract.
//!
//! - [`v1`]: the code generated from `proto/sitegrid/v1/*.proto` (package `sitegrid.v1`).
//! - [`ErrorCode`]: the closed set of failure kinds every sitegrid service answers with,
//!   and its one mapping to and from gRPC status codes.
//! - [`Backoff`]: the one retry policy, shared by the client library and the server's own
//!   internal retries.
//! - [`transport`]: the TCP stream both sides use, tuned for small messages.
//! - [`tls`]: TLS configurations from PEM files, and the names a certificate vouches for.
//! - [`version`]: the layout of versions.
//! - [`routing`]: which node of a site is a key's primary, the same for nodes and clients.
//! - [`batch`]: taking batches off a queue, for the senders of batched calls.
//! - [`multiplex`]: calls multiplexed on one long-lived stream, for pipelined clients
//!   and sync backups to peer sites.

pub mod batch;
mod error;
pub mod multiplex;
mod retry;
pub mod routing;
pub mod tls;
pub mod transport;
pub mod version;

pub use error::{ErrorCode, ServiceError, status_from_error};
pub use retry::Backoff;

/// Code generated from `sitegrid/v1/sitegrid.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("sitegrid.v1");
}

/// Encoded `FileDescriptorSet` of every sitegrid proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sitegrid_descriptor.bin"));
