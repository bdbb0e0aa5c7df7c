//! The client's errors, and the one place a `tonic::Status` becomes an [`Error`].
//!
//! A status can come from the server (it then carries the server's code and message) or
//! be made up by tonic on this side when the connection failed or the deadline passed.
//! Those must not be confused: a server saying UNAVAILABLE and a refused TCP connection
//! are both retried, but only the latter is a transport error, and a local deadline is
//! not something the server said.

use std::error::Error as StdError;
use std::time::Duration;

use sitegrid_proto::ErrorCode;

/// `Result` with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request or the client's setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered the request with an error status.
    #[error("{}: {message}", code.as_str())]
    Server {
        /// What kind of failure the server reported.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The request did not get through: connecting failed or the connection broke.
    #[error("unavailable: cannot reach {endpoint}: {detail}")]
    Transport {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// What went wrong, causes included.
        detail: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// No answer came before the request timeout; the request may or may not have applied.
    #[error("deadline_exceeded: no answer from {endpoint} within {after:?}")]
    Timeout {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// The request timeout that ran out.
        after: Duration,
    },
    /// An endpoint is not a usable `http://host:port` address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client was given no endpoint at all.
    #[error("no endpoint given")]
    NoEndpoint,
    /// The TLS files or the token given to the builder can't be used; the reason names
    /// the file.
    #[error("invalid credentials: {reason}")]
    InvalidCredentials {
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The kind of failure, as the server's error codes name them: transport failures are
    /// [`ErrorCode::Unavailable`], timeouts [`ErrorCode::DeadlineExceeded`], bad endpoints
    /// [`ErrorCode::InvalidArgument`].
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Server { code, .. } => *code,
            Error::Transport { .. } => ErrorCode::Unavailable,
            Error::Timeout { .. } => ErrorCode::DeadlineExceeded,
            Error::InvalidEndpoint { .. }
            | Error::NoEndpoint
            | Error::InvalidCredentials { .. } => ErrorCode::InvalidArgument,
        }
    }

    /// Whether sending the same request again (same request id) may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.is_retryable(),
            Error::Transport { .. } => true,
            // A timed-out request may still be running on the server; retrying it at
            // once would pile more work on a node that is already slow.
            Error::Timeout { .. }
            | Error::InvalidEndpoint { .. }
            | Error::NoEndpoint
            | Error::InvalidCredentials { .. } => false,
        }
    }

    /// Whether the next attempt should go to another endpoint: this one is down or not
    /// ready, whereas ABORTED only means a concurrent write won and any node will do.
    pub(crate) fn calls_for_failover(&self) -> bool {
        match self {
            Error::Server { code, .. } => *code == ErrorCode::Unavailable,
            Error::Transport { .. } => true,
            Error::Timeout { .. }
            | Error::InvalidEndpoint { .. }
            | Error::NoEndpoint
            | Error::InvalidCredentials { .. } => false,
        }
    }

    /// Whether the site's membership may have changed: the node is down, not ready, or
    /// not answering, so the client asks for the topology again at once.
    pub(crate) fn calls_for_refresh(&self) -> bool {
        self.calls_for_failover() || matches!(self, Error::Timeout { .. })
    }

    /// Whether a listener should open its stream again after this error: every failure
    /// but the server refusing the subscription itself. A listener is long-lived and
    /// reads nothing twice (it resumes), so a timeout or a server fault is worth another
    /// attempt, where a unary call would rather report it.
    pub(crate) fn listener_may_retry(&self) -> bool {
        match self {
            Error::Server { code, .. } => match code {
                ErrorCode::NotFound
                | ErrorCode::InvalidArgument
                | ErrorCode::PermissionDenied
                | ErrorCode::Unauthenticated
                | ErrorCode::Unimplemented => false,
                ErrorCode::Aborted
                | ErrorCode::Unavailable
                | ErrorCode::DeadlineExceeded
                | ErrorCode::ResourceExhausted
                | ErrorCode::Internal => true,
            },
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::InvalidEndpoint { .. }
            | Error::NoEndpoint
            | Error::InvalidCredentials { .. } => false,
        }
    }

    /// Whether a listener's next attempt should go to another endpoint: as for requests,
    /// and also when the node did not answer in time (it may hang for good).
    pub(crate) fn listener_calls_for_failover(&self) -> bool {
        self.calls_for_failover() || matches!(self, Error::Timeout { .. })
    }

    /// Maps a status returned by a call to `endpoint` whose deadline was `timeout`.
    pub(crate) fn from_status(status: tonic::Status, endpoint: &str, timeout: Duration) -> Error {
        // Statuses decoded from the server's trailers have no source; tonic attaches one
        // only to statuses it makes up from a local failure.
        let Some(source) = status.source() else {
            return Error::Server {
                code: ErrorCode::from_grpc(status.code()),
                message: status.message().to_owned(),
            };
        };
        // A timeout of tonic's (the server's deadline header), or a pipelined request
        // its stream gave up on.
        if chain_contains::<tonic::TimeoutExpired>(source)
            || chain_contains::<sitegrid_proto::multiplex::Expired>(source)
        {
            return Error::Timeout {
                endpoint: endpoint.to_owned(),
                after: timeout,
            };
        }
        Error::Transport {
            endpoint: endpoint.to_owned(),
            detail: describe_chain(status.message(), source),
            source: Box::new(status),
        }
    }
}

fn chain_contains<T: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(current) = next {
        if current.is::<T>() {
            return true;
        }
        next = current.source();
    }
    false
}

/// `message: root cause`: tonic, hyper and the connector wrap one failure in several
/// layers that mostly repeat each other, and only the innermost says what happened (e.g.
/// `Connection refused`).
fn describe_chain(message: &str, source: &(dyn StdError + 'static)) -> String {
    let mut root = source;
    while let Some(next) = root.source() {
        root = next;
    }
    let root = root.to_string();
    if root.is_empty() || message.contains(&root) {
        message.to_owned()
    } else if message.is_empty() {
        root
    } else {
        format!("{message}: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn map(status: tonic::Status) -> Error {
        Error::from_status(status, "http://127.0.0.1:11222", TIMEOUT)
    }

    #[test]
    fn a_server_status_keeps_its_code_and_message() {
        let error = map(tonic::Status::new(Code::NotFound, "unknown cache nope"));
        assert!(
            matches!(&error, Error::Server { code: ErrorCode::NotFound, message } if message == "unknown cache nope")
        );
        assert_eq!(error.code(), ErrorCode::NotFound);
        assert_eq!(error.to_string(), "not_found: unknown cache nope");
        assert!(!error.is_retryable());
    }

    #[test]
    fn server_unavailable_is_retried_on_another_endpoint() {
        let error = map(tonic::Status::unavailable("node not ready"));
        assert_eq!(error.code(), ErrorCode::Unavailable);
        assert!(error.is_retryable());
        assert!(error.calls_for_failover());
        assert!(error.calls_for_refresh());
    }

    #[test]
    fn server_aborted_is_retried_on_the_same_endpoint() {
        let error = map(tonic::Status::aborted("concurrent write won"));
        assert_eq!(error.code(), ErrorCode::Aborted);
        assert!(error.is_retryable());
        assert!(!error.calls_for_failover());
        assert!(!error.calls_for_refresh());
    }

    #[test]
    fn a_local_deadline_is_a_timeout_not_a_server_error() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        // tonic reports its own deadline as CANCELLED, which would read as retryable.
        assert_eq!(status.code(), Code::Cancelled);
        let error = map(status);
        assert!(matches!(error, Error::Timeout { after: TIMEOUT, .. }));
        assert_eq!(error.code(), ErrorCode::DeadlineExceeded);
        assert!(!error.is_retryable());
        assert!(error.calls_for_refresh(), "the node may hang for good");
    }

    #[test]
    fn a_failed_connection_is_a_retryable_transport_error_with_its_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        let error = map(status);
        let Error::Transport {
            endpoint, detail, ..
        } = &error
        else {
            panic!("expected a transport error, got {error:?}");
        };
        assert_eq!(endpoint, "http://127.0.0.1:11222");
        assert_eq!(detail, "refused");
        assert_eq!(error.code(), ErrorCode::Unavailable);
        assert!(error.is_retryable());
        assert!(error.calls_for_failover());
        assert!(error.source().is_some());
    }

    #[test]
    fn a_transport_error_names_the_innermost_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Layer(#[source] std::io::Error);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let wrapped =
            tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(Layer(refused)))));
        let Error::Transport { detail, .. } = map(wrapped) else {
            panic!("expected a transport error");
        };
        assert_eq!(detail, "transport error: refused");
    }

    #[test]
    fn a_listener_retries_everything_but_a_refused_subscription() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::InvalidArgument,
            ErrorCode::PermissionDenied,
            ErrorCode::Unauthenticated,
            ErrorCode::Unimplemented,
        ] {
            let error = map(tonic::Status::new(code.grpc_code(), "no"));
            assert!(!error.listener_may_retry(), "{code:?}");
        }
        for code in [
            ErrorCode::Unavailable,
            ErrorCode::Aborted,
            ErrorCode::Internal,
            ErrorCode::ResourceExhausted,
        ] {
            let error = map(tonic::Status::new(code.grpc_code(), "later"));
            assert!(error.listener_may_retry(), "{code:?}");
        }
        let timeout = Error::Timeout {
            endpoint: "http://127.0.0.1:11222".into(),
            after: TIMEOUT,
        };
        assert!(timeout.listener_may_retry());
        assert!(timeout.listener_calls_for_failover());
        assert!(!timeout.calls_for_failover());
        assert!(!Error::NoEndpoint.listener_may_retry());
    }

    #[test]
    fn a_server_deadline_exceeded_is_not_retried() {
        let error = map(tonic::Status::deadline_exceeded("too slow"));
        assert!(matches!(
            error,
            Error::Server {
                code: ErrorCode::DeadlineExceeded,
                ..
            }
        ));
        assert!(!error.is_retryable());
    }
}
