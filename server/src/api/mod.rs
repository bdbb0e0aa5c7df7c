//! The gRPC services a node serves: `Cache` for identity nodes, `Admin` for operators,
//! `ReplicationService` for the other members of its site, plus the standard health and
//! reflection services.

mod admin;
mod audit;
mod auth;
mod cache;
mod convert;
mod limits;
mod observe;
mod pipeline;
mod replication;
mod validate;

pub use admin::AdminService;
pub(crate) use audit::Audit;
pub(crate) use auth::{AuthLayer, Authenticator};
pub use cache::CacheService;
pub(crate) use limits::ClientLimits;
pub use replication::ReplicationApi;
pub(crate) use validate::Validator;
