//! Endpoint addresses: normalization, and which endpoint the next request goes to.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Turns `host:port` or `http://host:port` into the URI tonic connects to.
///
/// Only plain `http://` is accepted: the workspace builds tonic without TLS, and an
/// `https://` endpoint would otherwise fail on every call with a confusing message.
pub(crate) fn normalize_endpoint(endpoint: &str) -> Result<String> {
    let trimmed = endpoint.trim();
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let uri = match trimmed.split_once("://") {
        Some(("http", _)) => trimmed.to_owned(),
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "scheme {scheme} is not supported, use http"
            )));
        }
        None => format!("http://{trimmed}"),
    };
    let parsed = uri
        .parse::<tonic::transport::Uri>()
        .map_err(|e| invalid(&e.to_string()))?;
    if parsed.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(invalid("a path is not allowed"));
    }
    Ok(uri.trim_end_matches('/').to_owned())
}

/// Which endpoint requests go to: all go to the current one until it fails with
/// UNAVAILABLE or a transport error, then to the next one (simple failover).
#[derive(Debug, Default)]
pub(crate) struct Failover {
    len: usize,
    current: AtomicUsize,
}

impl Failover {
    /// Failover over `len` endpoints (at least one), starting with the first.
    pub(crate) fn new(len: usize) -> Self {
        Failover {
            len: len.max(1),
            current: AtomicUsize::new(0),
        }
    }

    /// The endpoint the next request should go to.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Moves on from `failed`, unless another request already did: many requests in
    /// flight fail together when a node dies, and each must not skip one more endpoint.
    pub(crate) fn fail_over_from(&self, failed: usize) {
        let next = (failed + 1) % self.len;
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_get_an_http_scheme() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:11222").unwrap(),
            "http://127.0.0.1:11222"
        );
        assert_eq!(
            normalize_endpoint(" node1.site1:11222 ").unwrap(),
            "http://node1.site1:11222"
        );
    }

    #[test]
    fn http_endpoints_are_kept_without_trailing_slash() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:11222").unwrap(),
            "http://127.0.0.1:11222"
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:11222/").unwrap(),
            "http://127.0.0.1:11222"
        );
        assert_eq!(
            normalize_endpoint("http://[::1]:11222").unwrap(),
            "http://[::1]:11222"
        );
    }

    #[test]
    fn bad_endpoints_are_rejected_with_a_reason() {
        for bad in [
            "",
            "  ",
            "https://127.0.0.1:11222",
            "http://",
            "a b:1",
            "h:1/path",
        ] {
            let error = normalize_endpoint(bad).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidEndpoint { endpoint, .. } if endpoint == bad),
                "{bad:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn failover_moves_to_the_next_endpoint_and_wraps_around() {
        let failover = Failover::new(3);
        assert_eq!(failover.current(), 0);
        failover.fail_over_from(0);
        assert_eq!(failover.current(), 1);
        failover.fail_over_from(1);
        failover.fail_over_from(2);
        assert_eq!(failover.current(), 0);
    }

    #[test]
    fn concurrent_failures_of_one_endpoint_skip_it_only_once() {
        let failover = Failover::new(3);
        failover.fail_over_from(0);
        failover.fail_over_from(0);
        assert_eq!(failover.current(), 1);
    }
}
