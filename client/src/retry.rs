//! Sending one request until it succeeds, with failover between endpoints.
//!
//! The backoff itself is [`Backoff::retry`], the project's one retry loop; this module
//! only decides what each attempt sends and where. Every attempt sends a clone of the
//! same request message, so a write keeps its request id on every retry and the
//! server applies it once.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sitegrid_proto::Backoff;

use crate::error::{Error, Result};

/// Which failures a call retries, and which of those move it to the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryPolicy {
    /// A request: [`Error::is_retryable`] and [`Error::calls_for_failover`].
    Request,
    /// Opening a listener's stream: [`Error::listener_may_retry`] and
    /// [`Error::listener_calls_for_failover`].
    Listen,
}

impl RetryPolicy {
    /// Whether the call is attempted again after `error`.
    pub(crate) fn retries(self, error: &Error) -> bool {
        match self {
            RetryPolicy::Request => error.is_retryable(),
            RetryPolicy::Listen => error.listener_may_retry(),
        }
    }

    /// Whether the next attempt goes to the next endpoint.
    pub(crate) fn fails_over(self, error: &Error) -> bool {
        match self {
            RetryPolicy::Request => error.calls_for_failover(),
            RetryPolicy::Listen => error.listener_calls_for_failover(),
        }
    }
}

/// Runs `attempt(endpoint_index, request)` until it succeeds or fails for good.
///
/// The first attempt goes to endpoint `first` (a write's primary, or the current
/// endpoint). Retries the errors `policy` retries, waiting with `backoff` (through
/// `sleep`, so tests need no timer): after an error the policy fails over on, the next
/// attempt goes where `fail_over(failed_endpoint)` says, otherwise to the same endpoint.
pub(crate) async fn send_with_retries<Req, T, F, Fut, O, S, SFut>(
    backoff: &Backoff,
    policy: RetryPolicy,
    request: Req,
    first: usize,
    fail_over: O,
    mut attempt: F,
    sleep: S,
) -> Result<T>
where
    Req: Clone,
    F: FnMut(usize, Req) -> Fut,
    Fut: Future<Output = Result<T>>,
    O: Fn(usize) -> usize,
    S: Fn(Duration) -> SFut,
    SFut: Future<Output = ()>,
{
    // An atomic rather than a `Cell` so that the request's future stays `Send`.
    let next = AtomicUsize::new(first);
    let (next, fail_over) = (&next, &fail_over);
    backoff
        .retry(
            || {
                let endpoint = next.load(Ordering::Relaxed);
                let sent = attempt(endpoint, request.clone());
                async move {
                    let result = sent.await;
                    if let Err(error) = &result {
                        if policy.fails_over(error) {
                            next.store(fail_over(endpoint), Ordering::Relaxed);
                        }
                        if policy.retries(error) {
                            tracing::debug!(endpoint, error = %error, "request failed, may retry");
                        }
                    }
                    result
                }
            },
            |error| policy.retries(error),
            sleep,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Failover;
    use crate::options::WriteOptions;
    use sitegrid_proto::ErrorCode;
    use sitegrid_proto::v1::PutRequest;
    use std::cell::RefCell;

    fn block_on<F: Future>(future: F) -> F::Output {
        // Every future here is ready at once (fake attempts, no-op sleep), so one poll
        // with a no-op waker completes it.
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("future pended"),
        }
    }

    fn backoff(max_attempts: u32) -> Backoff {
        Backoff {
            max_attempts,
            ..Backoff::default()
        }
    }

    fn server_error(code: ErrorCode) -> Error {
        Error::Server {
            code,
            message: "test".into(),
        }
    }

    fn transport_error() -> Error {
        Error::Transport {
            endpoint: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
            source: "connection refused".into(),
        }
    }

    fn put_request(options: &mut WriteOptions) -> PutRequest {
        PutRequest {
            cache: "work".into(),
            key: "k".into(),
            value: "v".into(),
            request_id: options.take_request_id(),
            ..PutRequest::default()
        }
    }

    /// Runs a put whose first `failures` attempts fail with `error()`, and returns the
    /// result plus the (endpoint, request id) of every attempt.
    fn run_put(
        endpoints: usize,
        failures: usize,
        error: fn() -> Error,
    ) -> (Result<u64>, Vec<(usize, String)>) {
        run(RetryPolicy::Request, endpoints, None, failures, error)
    }

    /// Like `run_put`, for a write whose first attempt goes to its primary.
    fn run_put_to(
        primary: usize,
        endpoints: usize,
        failures: usize,
        error: fn() -> Error,
    ) -> (Result<u64>, Vec<(usize, String)>) {
        run(
            RetryPolicy::Request,
            endpoints,
            Some(primary),
            failures,
            error,
        )
    }

    fn run(
        policy: RetryPolicy,
        endpoints: usize,
        primary: Option<usize>,
        failures: usize,
        error: fn() -> Error,
    ) -> (Result<u64>, Vec<(usize, String)>) {
        let failover = Failover::default();
        let order: Vec<usize> = (0..endpoints).collect();
        let attempts = RefCell::new(Vec::new());
        let request = put_request(&mut WriteOptions::new());
        let result = block_on(send_with_retries(
            &backoff(10),
            policy,
            request,
            primary.unwrap_or_else(|| failover.current(&order)),
            |failed| failover.fail_over_from(failed, &order),
            |endpoint, request: PutRequest| {
                attempts.borrow_mut().push((endpoint, request.request_id));
                let n = attempts.borrow().len();
                std::future::ready(if n <= failures { Err(error()) } else { Ok(42) })
            },
            |_| std::future::ready(()),
        ));
        (result, attempts.into_inner())
    }

    #[test]
    fn a_retried_write_keeps_its_request_id_on_every_attempt() {
        let (result, attempts) = run_put(1, 3, || server_error(ErrorCode::Aborted));
        assert_eq!(result.unwrap(), 42);
        assert_eq!(attempts.len(), 4);
        let first_id = &attempts[0].1;
        assert_eq!(first_id.len(), 32);
        assert!(attempts.iter().all(|(_, id)| id == first_id));
    }

    #[test]
    fn unavailable_moves_the_retry_to_the_next_endpoint() {
        let (result, attempts) = run_put(3, 3, || server_error(ErrorCode::Unavailable));
        assert!(result.is_ok());
        let endpoints: Vec<usize> = attempts.iter().map(|(e, _)| *e).collect();
        assert_eq!(endpoints, [0, 1, 2, 0]);
    }

    #[test]
    fn transport_errors_move_to_the_next_endpoint() {
        let (result, attempts) = run_put(2, 1, transport_error);
        assert!(result.is_ok());
        let endpoints: Vec<usize> = attempts.iter().map(|(e, _)| *e).collect();
        assert_eq!(endpoints, [0, 1]);
    }

    #[test]
    fn a_write_that_fails_on_its_primary_fails_over_to_the_current_endpoint() {
        let (result, attempts) = run_put_to(2, 3, 2, || server_error(ErrorCode::Unavailable));
        assert!(result.is_ok());
        let endpoints: Vec<usize> = attempts.iter().map(|(e, _)| *e).collect();
        assert_eq!(endpoints, [2, 0, 1]);
        let first_id = &attempts[0].1;
        assert!(attempts.iter().all(|(_, id)| id == first_id));
    }

    #[test]
    fn a_write_aborted_on_its_primary_is_retried_there() {
        let (result, attempts) = run_put_to(1, 3, 2, || server_error(ErrorCode::Aborted));
        assert!(result.is_ok());
        let endpoints: Vec<usize> = attempts.iter().map(|(e, _)| *e).collect();
        assert_eq!(endpoints, [1, 1, 1]);
    }

    #[test]
    fn aborted_retries_stay_on_the_same_endpoint() {
        let (_, attempts) = run_put(3, 2, || server_error(ErrorCode::Aborted));
        let endpoints: Vec<usize> = attempts.iter().map(|(e, _)| *e).collect();
        assert_eq!(endpoints, [0, 0, 0]);
    }

    #[test]
    fn non_retryable_errors_are_returned_after_one_attempt() {
        let (result, attempts) = run_put(2, 5, || server_error(ErrorCode::InvalidArgument));
        assert_eq!(result.unwrap_err().code(), ErrorCode::InvalidArgument);
        assert_eq!(attempts.len(), 1);
    }

    #[test]
    fn retries_stop_when_the_backoff_runs_out() {
        // backoff(10) allows ten attempts in all.
        let (result, attempts) = run_put(2, 100, transport_error);
        assert_eq!(result.unwrap_err().code(), ErrorCode::Unavailable);
        assert_eq!(attempts.len(), 10);
    }

    #[test]
    fn a_listener_retries_a_timed_out_open_on_the_next_endpoint() {
        fn timeout() -> Error {
            Error::Timeout {
                endpoint: "http://127.0.0.1:1".into(),
                after: Duration::from_secs(1),
            }
        }
        let (result, attempts) = run(RetryPolicy::Listen, 2, None, 2, timeout);
        assert!(result.is_ok());
        let endpoints: Vec<usize> = attempts.iter().map(|(e, _)| *e).collect();
        assert_eq!(endpoints, [0, 1, 0]);
        let (result, attempts) = run_put(2, 2, timeout);
        assert!(result.is_err(), "a request is not retried after a timeout");
        assert_eq!(attempts.len(), 1);
    }

    #[test]
    fn a_listener_gives_up_at_once_on_an_unknown_cache() {
        let (result, attempts) = run(RetryPolicy::Listen, 2, None, 5, || {
            server_error(ErrorCode::NotFound)
        });
        assert_eq!(result.unwrap_err().code(), ErrorCode::NotFound);
        assert_eq!(attempts.len(), 1);
    }
}
