//! The server's errors and their one mapping to gRPC status codes.

use std::sync::Arc;

use sitegrid_proto::{ErrorCode, ServiceError};

use crate::store::storage::StorageError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request or the node failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cache has this name.
    #[error("unknown cache {0:?}")]
    UnknownCache(String),
    /// The request is malformed or over a limit; the message says which.
    #[error("{0}")]
    InvalidArgument(String),
    /// Storage failed for a cache.
    #[error("cache {cache}: storage failed")]
    Storage {
        /// The cache.
        cache: String,
        /// What failed.
        #[source]
        source: Arc<StorageError>,
    },
    /// Storage could not be opened at start.
    #[error("cannot open storage")]
    OpenStorage(#[source] StorageError),
    /// The node is not (yet, or any more) serving; the text says why.
    #[error("node is not ready: {0}")]
    NotReady(&'static str),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The request could not be completed now (a member or the primary could not be
    /// reached); retrying it, with the same request id, is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Concurrent writes kept winning; retrying is safe.
    #[error("{0}")]
    Aborted(String),
    /// A write task ended without an answer (a bug: it panicked).
    #[error("write task failed")]
    TaskFailed(#[source] tokio::task::JoinError),
    /// An invariant did not hold (a bug); the message says which.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The caller's role does not allow the request; the message says what it lacks.
    #[error("{0}")]
    PermissionDenied(String),
    /// TLS files could not be used at start; the message names the file.
    #[error("TLS: {0}")]
    Tls(#[from] sitegrid_proto::tls::TlsError),
    /// A socket or file could not be used.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError for Error {
    fn error_code(&self) -> ErrorCode {
        match self {
            Error::UnknownCache(_) => ErrorCode::NotFound,
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::NotReady(_) | Error::ShuttingDown | Error::Unavailable(_) => {
                ErrorCode::Unavailable
            }
            Error::Aborted(_) => ErrorCode::Aborted,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::Storage { .. }
            | Error::OpenStorage(_)
            | Error::TaskFailed(_)
            | Error::Internal(_)
            | Error::Tls(_)
            | Error::Io { .. } => ErrorCode::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        sitegrid_proto::status_from_error(&error)
    }
}
