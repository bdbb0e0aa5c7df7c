//! The gRPC services a node serves: `Cache` for identity nodes, `Admin` for operators,
//! plus the standard health and reflection services.

mod admin;
mod cache;
mod convert;
mod observe;
mod validate;

pub use admin::AdminService;
pub use cache::CacheService;
pub(crate) use validate::Validator;
