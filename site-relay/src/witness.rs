//! The witness: a small process in a third place that grants one site of a pair, and
//! only one, the right to hold the other offline.
//!
//! Two sites cut off from each other both see the other "down". If both took the other
//! offline, both would accept the same single-use token. So a site takes a peer offline
//! only with a grant from the witness ([`WitnessService`], run by `sitegrid --witness`):
//! the first site of the pair to ask gets it, for a lease, and renews it while it holds
//! the peer offline or resyncing; the other is refused until the lease runs out
//! unrenewed, and fences itself meanwhile.
//!
//! The holder counts its lease from when it sent the request, and only to nine tenths of
//! it ([`WitnessLink`]); the witness counts from when the request arrived, so the holder
//! always stops relying on a grant before the witness may give the pair to the other
//! site. A witness that starts grants nothing for one lease: it may have granted before
//! it restarted, and such grants must run out first. It keeps no state on disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sitegrid_proto::tls::ClientTls;
use sitegrid_proto::transport::ConnInfo;
use sitegrid_proto::v1;
use sitegrid_proto::v1::witness_client::WitnessClient;
use sitegrid_proto::v1::witness_server::{Witness, WitnessServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::RelayError;
use crate::peer::endpoint_of;

/// The witness's grants, as a gRPC service.
#[derive(Debug, Clone)]
pub struct WitnessService {
    inner: Arc<Grants>,
    /// Sites must ask with a verified certificate naming the site they ask for.
    certificates: bool,
}

#[derive(Debug)]
struct Grants {
    lease: Duration,
    started: Instant,
    /// Per pair of sites (in name order): who holds the right, until when.
    held: Mutex<HashMap<(String, String), Held>>,
}

#[derive(Debug, Clone)]
struct Held {
    holder: String,
    until: Instant,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl WitnessService {
    /// A witness whose grants hold for `lease` unless renewed; with `certificates`, a
    /// site asks only with a verified client certificate naming it (mutual TLS).
    pub fn new(lease: Duration, certificates: bool) -> WitnessService {
        WitnessService {
            inner: Arc::new(Grants {
                lease,
                started: Instant::now(),
                held: Mutex::new(HashMap::new()),
            }),
            certificates,
        }
    }

    /// `Ok` if a request naming `site` may be taken: without mutual TLS always, with it
    /// only from a certificate naming that site (`None`: any verified certificate).
    fn check_caller<T>(&self, request: &Request<T>, site: Option<&str>) -> Result<(), Status> {
        if !self.certificates {
            return Ok(());
        }
        let names = ConnInfo::of(request.extensions()).and_then(|c| c.peer.as_ref());
        match (names, site) {
            (Some(names), Some(site)) if names.contains(site) => Ok(()),
            (Some(_), None) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "the witness takes requests of site {} only with a client certificate naming it",
                site.unwrap_or("any")
            ))),
        }
    }

    /// The service to add to a tonic server.
    pub fn into_server(self) -> WitnessServer<WitnessService> {
        WitnessServer::new(self)
    }

    /// `site` asks, at `now`, for the right to hold `peer` offline.
    fn acquire(&self, site: &str, peer: &str, now: Instant) -> v1::AcquireResponse {
        let lease = self.inner.lease;
        let waited = now.saturating_duration_since(self.inner.started);
        if waited < lease {
            return v1::AcquireResponse {
                granted: false,
                lease_ms: (lease - waited).as_millis() as u64,
                holder: String::new(),
            };
        }
        let mut held = self.inner.held.lock();
        let key = pair(site, peer);
        if let Some(current) = held.get(&key)
            && current.holder != site
            && current.until > now
        {
            return v1::AcquireResponse {
                granted: false,
                lease_ms: (current.until - now).as_millis() as u64,
                holder: current.holder.clone(),
            };
        }
        let renewed = held.get(&key).is_some_and(|c| c.holder == site);
        held.insert(
            key,
            Held {
                holder: site.to_string(),
                until: now + lease,
            },
        );
        if !renewed {
            info!(holder = site, peer_site = peer, lease = ?lease, "granted the right to hold the peer site offline");
        }
        v1::AcquireResponse {
            granted: true,
            lease_ms: lease.as_millis() as u64,
            holder: site.to_string(),
        }
    }

    /// `site` gives up the right to hold `peer` offline; whether it held it.
    fn release(&self, site: &str, peer: &str) -> bool {
        let mut held = self.inner.held.lock();
        let key = pair(site, peer);
        if held.get(&key).is_some_and(|c| c.holder == site) {
            held.remove(&key);
            info!(
                holder = site,
                peer_site = peer,
                "released the right to hold the peer site offline"
            );
            return true;
        }
        false
    }

    fn grants(&self, now: Instant) -> Vec<v1::Grant> {
        let held = self.inner.held.lock();
        let mut grants: Vec<v1::Grant> = held
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|((a, b), h)| v1::Grant {
                holder: h.holder.clone(),
                peer_site: if h.holder == *a { b.clone() } else { a.clone() },
                remaining_ms: (h.until - now).as_millis() as u64,
            })
            .collect();
        grants.sort_by(|x, y| (&x.holder, &x.peer_site).cmp(&(&y.holder, &y.peer_site)));
        grants
    }
}

fn check_names(site: &str, peer: &str) -> Result<(), Status> {
    if site.is_empty() || peer.is_empty() {
        return Err(Status::invalid_argument("site and peer_site must be named"));
    }
    if site == peer {
        return Err(Status::invalid_argument(format!(
            "site {site} can't hold itself offline"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Witness for WitnessService {
    async fn acquire(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        self.check_caller(&request, Some(&request.get_ref().site))?;
        let request = request.into_inner();
        check_names(&request.site, &request.peer_site)?;
        Ok(Response::new(WitnessService::acquire(
            self,
            &request.site,
            &request.peer_site,
            Instant::now(),
        )))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.check_caller(&request, Some(&request.get_ref().site))?;
        let request = request.into_inner();
        check_names(&request.site, &request.peer_site)?;
        Ok(Response::new(v1::ReleaseResponse {
            released: WitnessService::release(self, &request.site, &request.peer_site),
        }))
    }

    async fn grants(
        &self,
        request: Request<v1::GrantsRequest>,
    ) -> Result<Response<v1::GrantsResponse>, Status> {
        self.check_caller(&request, None)?;
        Ok(Response::new(v1::GrantsResponse {
            grants: WitnessService::grants(self, Instant::now()),
        }))
    }
}

/// What a site knows of its grant to hold one peer offline.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grant {
    /// Not known at this node (it was not the decider when it was given or released).
    Unknown,
    /// Held; this site may rely on it until then.
    Held { until: Instant },
    /// Given up (or never held).
    Released,
}

/// A site's link to its witness: asks for, renews and releases grants, and remembers
/// what it holds per peer site.
#[derive(Debug)]
pub(crate) struct WitnessLink {
    endpoint: String,
    channel: Channel,
    site: String,
    /// Per peer site (in the relay's order): the grant to hold it offline.
    grants: Mutex<Vec<Grant>>,
}

impl WitnessLink {
    /// The link of site `site`, with `peers` peer sites, to the witness at `endpoint`;
    /// over `tls` if given (the witness's certificate must name the endpoint's host).
    pub(crate) fn new(
        endpoint: &str,
        site: &str,
        peers: usize,
        tls: Option<&ClientTls>,
    ) -> Result<Self, RelayError> {
        let channel = endpoint_of(endpoint).map_err(|reason| RelayError::InvalidWitness {
            endpoint: endpoint.to_string(),
            reason,
        })?;
        Ok(WitnessLink {
            endpoint: endpoint.to_string(),
            channel: sitegrid_proto::transport::lazy_channel(&channel, tls.cloned()),
            site: site.to_string(),
            grants: Mutex::new(vec![Grant::Unknown; peers]),
        })
    }

    /// Asks for (or renews) the right to hold peer `index`, named `peer`, offline.
    /// `Err` says why this site may not.
    pub(crate) async fn acquire(
        &self,
        index: usize,
        peer: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let sent = Instant::now();
        let request = v1::AcquireRequest {
            site: self.site.clone(),
            peer_site: peer.to_string(),
        };
        let mut client = WitnessClient::new(self.channel.clone());
        let answer = tokio::time::timeout(timeout, client.acquire(request))
            .await
            .map_err(|_| format!("the witness at {} did not answer in time", self.endpoint))?
            .map_err(|status| {
                format!(
                    "the witness at {} did not answer: {}",
                    self.endpoint,
                    status.message()
                )
            })?
            .into_inner();
        if answer.granted {
            let until = sent + Duration::from_millis(answer.lease_ms) * 9 / 10;
            self.grants.lock()[index] = Grant::Held { until };
            return Ok(());
        }
        if answer.holder.is_empty() {
            Err(format!(
                "the witness at {} started less than a lease ago and grants nothing yet",
                self.endpoint
            ))
        } else {
            Err(format!(
                "the witness at {} granted site {} the right to hold this site offline",
                self.endpoint, answer.holder
            ))
        }
    }

    /// Keeps the grant on peer `index` alive: renews it once half of it is used up.
    /// `Err` once this site may no longer rely on it.
    pub(crate) async fn keep(
        &self,
        index: usize,
        peer: &str,
        lease_floor: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        let held_until = match self.grants.lock()[index] {
            Grant::Held { until } => Some(until),
            Grant::Unknown | Grant::Released => None,
        };
        let now = Instant::now();
        if let Some(until) = held_until
            && until.saturating_duration_since(now) > lease_floor
        {
            return Ok(());
        }
        match self.acquire(index, peer, timeout).await {
            Ok(()) => Ok(()),
            Err(_) if held_until.is_some_and(|until| until > Instant::now()) => Ok(()),
            Err(why) => Err(why),
        }
    }

    /// Gives up the right to hold peer `index` offline, if this node may hold it.
    pub(crate) async fn release(&self, index: usize, peer: &str, timeout: Duration) {
        if self.grants.lock()[index] == Grant::Released {
            return;
        }
        let request = v1::ReleaseRequest {
            site: self.site.clone(),
            peer_site: peer.to_string(),
        };
        let mut client = WitnessClient::new(self.channel.clone());
        if let Ok(Ok(answer)) = tokio::time::timeout(timeout, client.release(request)).await {
            self.grants.lock()[index] = Grant::Released;
            if answer.into_inner().released {
                info!(peer_site = peer, "gave the witness's grant back");
            }
        }
    }

    /// Forgets what this node knew of its grants: another node decides now.
    pub(crate) fn forget(&self) {
        self.grants.lock().fill(Grant::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_site_of_a_pair_holds_the_grant_until_it_lapses_or_is_released() {
        let lease = Duration::from_secs(10);
        let witness = WitnessService::new(lease, false);
        let start = witness.inner.started;
        let early = witness.acquire("site1", "site2", start + Duration::from_secs(1));
        assert!(!early.granted, "nothing granted during the first lease");
        assert_eq!(early.holder, "");

        let t = start + lease;
        assert!(witness.acquire("site1", "site2", t).granted);
        let refused = witness.acquire("site2", "site1", t + Duration::from_secs(1));
        assert!(!refused.granted);
        assert_eq!(refused.holder, "site1");
        assert_eq!(refused.lease_ms, 9_000);
        // Renewed by the holder: still refused to the other after the first lease.
        assert!(
            witness
                .acquire("site1", "site2", t + Duration::from_secs(5))
                .granted
        );
        assert!(
            !witness
                .acquire("site2", "site1", t + Duration::from_secs(12))
                .granted
        );
        // A third site's pair is independent.
        assert!(
            witness
                .acquire("site3", "site1", t + Duration::from_secs(12))
                .granted
        );
        // Lapsed unrenewed: the other site may take it.
        assert!(
            witness
                .acquire("site2", "site1", t + Duration::from_secs(16))
                .granted
        );
        assert_eq!(witness.grants(t + Duration::from_secs(16)).len(), 2);
        // Released by its holder only.
        assert!(!witness.release("site1", "site2"));
        assert!(witness.release("site2", "site1"));
        assert!(
            witness
                .acquire("site1", "site2", t + Duration::from_secs(17))
                .granted
        );
    }
}
