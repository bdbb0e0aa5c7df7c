//! sitegrid's node: the storage engine ([`store`]), change events ([`events`]), the gRPC
//! services ([`api`]), the HTTP endpoints ([`metrics`]) and the wiring that runs them
//! all ([`node`]). The `sitegrid` binary is a thin `main` over [`node::run`].

pub mod api;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod events;
pub mod faults;
pub mod metrics;
pub mod node;
pub mod sites;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
