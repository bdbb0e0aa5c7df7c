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

/// Which endpoint requests go to when any node will do: all go to the current one until
/// it fails with UNAVAILABLE or a transport error, then to the next one of the
/// topology's read order (simple failover).
///
/// The read order comes with each call because a refresh may change it at any time; an
/// endpoint that left it (its node is no longer ready) is never current.
#[derive(Debug, Default)]
pub(crate) struct Failover {
    /// Index of the current endpoint; starts with the first configured one.
    current: AtomicUsize,
}

impl Failover {
    /// The endpoint the next request should go to, among `order` (not empty): the
    /// current one if it is there, else the first.
    pub(crate) fn current(&self, order: &[usize]) -> usize {
        effective(self.current.load(Ordering::Relaxed), order)
    }

    /// Moves on from `failed` to the endpoint after it in `order`, unless another request
    /// already did: many requests in flight fail together when a node dies, and each
    /// must not skip one more endpoint. Returns where the next request should go.
    pub(crate) fn fail_over_from(&self, failed: usize, order: &[usize]) -> usize {
        let stored = self.current.load(Ordering::Relaxed);
        if effective(stored, order) == failed
            && let Some(position) = order.iter().position(|&index| index == failed)
        {
            let next = order[(position + 1) % order.len()];
            let _ =
                self.current
                    .compare_exchange(stored, next, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.current(order)
    }
}

/// `current` if `order` has it, else the first of `order`.
fn effective(current: usize, order: &[usize]) -> usize {
    if order.contains(&current) {
        current
    } else {
        order.first().copied().unwrap_or(current)
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
        let failover = Failover::default();
        let order = [0, 1, 2];
        assert_eq!(failover.current(&order), 0);
        assert_eq!(failover.fail_over_from(0, &order), 1);
        assert_eq!(failover.current(&order), 1);
        failover.fail_over_from(1, &order);
        failover.fail_over_from(2, &order);
        assert_eq!(failover.current(&order), 0);
    }

    #[test]
    fn concurrent_failures_of_one_endpoint_skip_it_only_once() {
        let failover = Failover::default();
        let order = [0, 1, 2];
        failover.fail_over_from(0, &order);
        failover.fail_over_from(0, &order);
        assert_eq!(failover.current(&order), 1);
    }

    #[test]
    fn a_failure_elsewhere_leaves_the_current_endpoint() {
        // A write sent to its primary (2) fails: reads stay where they are.
        let failover = Failover::default();
        assert_eq!(failover.fail_over_from(2, &[0, 1, 2]), 0);
    }

    #[test]
    fn failover_follows_the_order_of_the_latest_topology() {
        let failover = Failover::default();
        failover.fail_over_from(0, &[0, 1, 2]);
        assert_eq!(failover.current(&[0, 1, 2]), 1);
        // Endpoint 1 is no longer ready: the first of the new order takes over, and a
        // failure there moves on within the new order.
        assert_eq!(failover.current(&[0, 3]), 0);
        assert_eq!(failover.fail_over_from(0, &[0, 3]), 3);
        assert_eq!(failover.fail_over_from(3, &[0, 3]), 0);
        // Learned endpoints come after the configured ones.
        assert_eq!(failover.current(&[3, 4]), 3);
    }
}
