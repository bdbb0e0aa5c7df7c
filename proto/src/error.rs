//! The closed set of error kinds sitegrid services answer with.
//!
//! Every crate has its own `thiserror` enum; each variant says which [`ErrorCode`] it is,
//! and [`status_from_error`] is the one place that turns such an error into a
//! `tonic::Status`. Clients go the other way with [`ErrorCode::from_grpc`].

use tonic::Code;

/// What went wrong, as far as a caller needs to know to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Unknown cache or site.
    NotFound,
    /// The request itself is wrong: empty key, over a limit, bad lifespan, bad tag.
    InvalidArgument,
    /// A concurrent write won elsewhere, after the server's own retries.
    Aborted,
    /// The node or a peer site can't take the request now: retry elsewhere or later.
    Unavailable,
    /// The deadline passed before the request completed; it may or may not have applied.
    DeadlineExceeded,
    /// Missing or bad credentials.
    Unauthenticated,
    /// The caller's role does not allow the operation.
    PermissionDenied,
    /// A bound was hit (request rate, listeners per client, message size).
    ResourceExhausted,
    /// The operation is not implemented by this node.
    Unimplemented,
    /// A bug or an I/O failure on the server.
    Internal,
}

impl ErrorCode {
    /// The gRPC status code this kind is sent as.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::Aborted => Code::Aborted,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::Unimplemented => Code::Unimplemented,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// The kind a received gRPC status code stands for.
    ///
    /// Codes sitegrid never sends (e.g. `Unknown`, `DataLoss`) count as `Internal`, and
    /// `Cancelled` as `Unavailable`: the transport dropped the call.
    pub fn from_grpc(code: Code) -> Self {
        match code {
            Code::NotFound => ErrorCode::NotFound,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                ErrorCode::InvalidArgument
            }
            Code::Aborted => ErrorCode::Aborted,
            Code::Unavailable | Code::Cancelled => ErrorCode::Unavailable,
            Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::PermissionDenied => ErrorCode::PermissionDenied,
            Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            Code::Unimplemented => ErrorCode::Unimplemented,
            Code::Ok | Code::Unknown | Code::AlreadyExists | Code::DataLoss | Code::Internal => {
                ErrorCode::Internal
            }
        }
    }

    /// The lowercase name of the code, as in messages and metric labels: `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Aborted => "aborted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unimplemented => "unimplemented",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether retrying the same request (with the same request id) may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Aborted | ErrorCode::Unavailable)
    }
}

/// An error that knows which [`ErrorCode`] it is.
pub trait ServiceError: std::error::Error {
    /// The kind of this error.
    fn error_code(&self) -> ErrorCode;
}

/// Turns a service error into the status sent to the caller; its message is the error's
/// display text, causes included.
pub fn status_from_error<E: ServiceError + ?Sized>(error: &E) -> tonic::Status {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    tonic::Status::new(error.error_code().grpc_code(), message)
}

/// A failed request's status as an answer inside a response: one request of a
/// `Pipeline` stream, one backup of a batch, one call of a `BackupStream` or an
/// `ApplyStream`.
impl From<&tonic::Status> for crate::v1::RequestError {
    fn from(status: &tonic::Status) -> Self {
        crate::v1::RequestError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        }
    }
}

/// An answer inside a response that is an error, as the status its unary RPC would have
/// ended with.
impl From<crate::v1::RequestError> for tonic::Status {
    fn from(error: crate::v1::RequestError) -> Self {
        tonic::Status::new(tonic::Code::from(error.code), error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 10] = [
        ErrorCode::NotFound,
        ErrorCode::InvalidArgument,
        ErrorCode::Aborted,
        ErrorCode::Unavailable,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unimplemented,
        ErrorCode::Internal,
    ];

    #[test]
    fn every_code_survives_a_round_trip_through_grpc() {
        for code in ALL {
            assert_eq!(ErrorCode::from_grpc(code.grpc_code()), code);
        }
    }

    #[test]
    fn only_aborted_and_unavailable_are_retryable() {
        let retryable: Vec<_> = ALL.into_iter().filter(|c| c.is_retryable()).collect();
        assert_eq!(retryable, vec![ErrorCode::Aborted, ErrorCode::Unavailable]);
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cache sessions: storage failed")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    impl ServiceError for Outer {
        fn error_code(&self) -> ErrorCode {
            ErrorCode::Internal
        }
    }

    #[test]
    fn status_message_keeps_the_causes() {
        let status = status_from_error(&Outer(std::io::Error::other("disk full")));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.message(),
            "cache sessions: storage failed: disk full"
        );
    }
}
