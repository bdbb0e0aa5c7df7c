//! Per-request metrics: one counter by operation, cache and outcome, one latency
//! histogram by operation and cache.

use std::future::Future;
use std::time::Instant;

use sitegrid_proto::{ErrorCode, ServiceError};
use tonic::{Response, Status};

use crate::store::Store;

/// Runs a request handler, records its outcome and latency, and turns its error into a
/// status.
pub(crate) async fn observed<T>(
    store: &Store,
    op: &'static str,
    cache: &str,
    handler: impl Future<Output = crate::Result<T>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = handler.await;
    // Only configured cache names become label values: clients can't grow the series.
    let cache = if store.cache(cache).is_ok() {
        cache.to_string()
    } else {
        "unknown".to_string()
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => outcome_label(error.error_code()),
    };
    metrics::counter!("sitegrid_requests_total", "op" => op, "cache" => cache.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("sitegrid_request_duration_seconds", "op" => op, "cache" => cache)
        .record(started.elapsed().as_secs_f64());
    result.map(Response::new).map_err(Status::from)
}

fn outcome_label(code: ErrorCode) -> &'static str {
    match code {
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
