//! Per-client limits on the `Cache` service: requests per second, and `Listen` streams
//! open at once, counted by the client's IP address (clients behind one NAT share them).
//!
//! Requests are admitted by an interceptor for unary calls and stream openings, and one
//! by one inside a `Pipeline` stream. A request over the limit is answered
//! RESOURCE_EXHAUSTED, which clients do not retry at once; the node's work stays bounded
//! whatever one client sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use sitegrid_config::LimitsConfig;
use tonic::Status;

/// Admissions between two sweeps of the rate limiter's idle clients.
const SWEEP_EVERY: u64 = 1 << 16;

/// The limits of one node, shared by its `Cache` service and interceptor.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    /// `None` when requests are not limited.
    rate: Option<(DefaultKeyedRateLimiter<IpAddr>, u32)>,
    admitted: AtomicU64,
    max_listeners: usize,
    listeners: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientLimits {
    pub(crate) fn new(limits: &LimitsConfig) -> Arc<ClientLimits> {
        let rate = NonZeroU32::new(limits.max_requests_per_second_per_client).map(|per_second| {
            (
                RateLimiter::keyed(Quota::per_second(per_second)),
                per_second.get(),
            )
        });
        Arc::new(ClientLimits {
            rate,
            admitted: AtomicU64::new(0),
            max_listeners: limits.max_listeners_per_client,
            listeners: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one request from `client` (unknown: not limited), or says why not.
    pub(crate) fn admit(&self, client: Option<IpAddr>) -> Result<(), Status> {
        let (Some((limiter, per_second)), Some(client)) = (&self.rate, client) else {
            return Ok(());
        };
        if self.admitted.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&client).map_err(|_| {
            metrics::counter!("sitegrid_requests_limited_total").increment(1);
            Status::resource_exhausted(format!(
                "client {client} is over limits.max_requests_per_second_per_client \
                 ({per_second} per second)"
            ))
        })
    }

    /// Counts a `Listen` stream of `client` as open until the slot is dropped, or says
    /// why it may not open.
    pub(crate) fn open_listener(
        self: &Arc<Self>,
        client: Option<IpAddr>,
    ) -> Result<Option<ListenerSlot>, Status> {
        let Some(client) = client else {
            return Ok(None);
        };
        let mut listeners = self.listeners.lock();
        let open = listeners.entry(client).or_insert(0);
        if *open >= self.max_listeners {
            return Err(Status::resource_exhausted(format!(
                "client {client} has {open} listeners open, limits.max_listeners_per_client"
            )));
        }
        *open += 1;
        Ok(Some(ListenerSlot {
            limits: Arc::clone(self),
            client,
        }))
    }
}

/// One open `Listen` stream of a client; closing it (dropping this) frees its place.
#[derive(Debug)]
pub(crate) struct ListenerSlot {
    limits: Arc<ClientLimits>,
    client: IpAddr,
}

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        let mut listeners = self.limits.listeners.lock();
        if let Some(open) = listeners.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                listeners.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, listeners: usize) -> Arc<ClientLimits> {
        ClientLimits::new(&LimitsConfig {
            max_requests_per_second_per_client: per_second,
            max_listeners_per_client: listeners,
            ..LimitsConfig::default()
        })
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

    #[test]
    fn a_client_over_its_rate_is_refused_and_others_are_not() {
        let limits = limits(5, 1);
        let admitted = (0..20).filter(|_| limits.admit(A).is_ok()).count();
        assert!((5..20).contains(&admitted), "{admitted} of 20 admitted");
        let refused = limits.admit(A).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("max_requests_per_second_per_client")
        );
        assert!(limits.admit(B).is_ok(), "another client has its own budget");
        assert!(limits.admit(None).is_ok());
    }

    #[test]
    fn without_a_rate_every_request_is_admitted() {
        let limits = limits(0, 1);
        assert!((0..10_000).all(|_| limits.admit(A).is_ok()));
    }

    #[test]
    fn a_closed_listener_frees_its_place() {
        let limits = limits(0, 2);
        let first = limits.open_listener(A).unwrap();
        let _second = limits.open_listener(A).unwrap();
        let refused = limits.open_listener(A).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(limits.open_listener(B).is_ok());
        drop(first);
        assert!(limits.open_listener(A).is_ok());
    }
}
