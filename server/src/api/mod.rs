//! The gRPC services a node serves: `Cache` for identity nodes, `Admin` for operators,
//! `ReplicationService` for the other members of its site, plus the standard health and
//! reflection services.

mod admin;
mod cache;
mod convert;
mod limits;
mod observe;
mod pipeline;
mod replication;
mod validate;

pub use admin::AdminService;
pub use cache::CacheService;
pub(crate) use limits::ClientLimits;
pub use replication::ReplicationApi;
pub(crate) use validate::Validator;
