//! The site as the client knows it: the endpoints it can send to, the site's members and
//! which of them are ready, and from those where each request goes.
//!
//! Plain code without I/O, so that every routing decision is unit-tested; the client
//! learns the members from `ClusterStatus` (see `refresh`) and replaces its topology
//! whole with [`Topology::refreshed`]. Routing is an optimisation: any ready node accepts
//! any request (writes are forwarded to their primary by the server), so a stale
//! topology costs a hop or a failover, never a wrong answer.

use std::net::IpAddr;

use sitegrid_proto::{routing, v1};

use crate::endpoint::normalize_endpoint;

/// Every endpoint known, the site's members as last learned, and the routing derived
/// from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topology {
    /// Normalized URIs: the configured endpoints first, then those learned from members,
    /// in the order learned. Never shrinks across refreshes, so an index names the same
    /// endpoint for good: requests in flight, listeners and the failover hold indexes.
    endpoints: Vec<String>,
    /// How many of `endpoints` the client was configured with.
    configured: usize,
    /// The members as last learned; empty while none is known (no answer yet, or a
    /// server that does not report members).
    members: Vec<Member>,
    /// Where requests go when any node will do, in failover order; never empty.
    read_order: Vec<usize>,
}

/// One member of the site.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// Node name: what the primary is chosen by.
    name: String,
    /// Index of its endpoint; `None` when its address is no use to a client (empty,
    /// malformed, or a wildcard such as `0.0.0.0`).
    endpoint: Option<usize>,
    /// Whether it serves requests and may be a key's primary.
    ready: bool,
}

impl Topology {
    /// The topology of a client of `configured` endpoints (normalized, at least one),
    /// before it knows any member: every request goes to those, as with one node.
    pub(crate) fn new(configured: Vec<String>) -> Topology {
        let configured_len = configured.len();
        Topology::with_members(configured, configured_len, Vec::new())
    }

    fn with_members(endpoints: Vec<String>, configured: usize, members: Vec<Member>) -> Topology {
        let read_order = read_order(configured, &members);
        Topology {
            endpoints,
            configured,
            members,
            read_order,
        }
    }

    /// The topology once `members` (as one node's `ClusterStatus` lists them) replace
    /// the members known; addresses not known yet become endpoints.
    pub(crate) fn refreshed(&self, members: &[v1::MemberStatus]) -> Topology {
        let mut endpoints = self.endpoints.clone();
        let members = members
            .iter()
            .map(|member| {
                let endpoint = member_endpoint(&member.address).map(|uri| {
                    endpoints
                        .iter()
                        .position(|known| *known == uri)
                        .unwrap_or_else(|| {
                            endpoints.push(uri);
                            endpoints.len() - 1
                        })
                });
                Member {
                    name: member.node.clone(),
                    endpoint,
                    ready: member.ready,
                }
            })
            .collect();
        Topology::with_members(endpoints, self.configured, members)
    }

    /// Every endpoint known, by index.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The normalized URI of endpoint `index`.
    pub(crate) fn uri(&self, index: usize) -> &str {
        &self.endpoints[index]
    }

    /// The names of the ready members, for logs.
    pub(crate) fn ready_members(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|member| member.ready)
            .map(|member| member.name.as_str())
    }

    /// Where a write of `key` goes first: its primary, chosen among the ready members as
    /// the server chooses it. `None` when that is not known or its address is of no use;
    /// the write then goes where reads go, and the node forwards it.
    pub(crate) fn endpoint_for_write(&self, key: &[u8]) -> Option<usize> {
        let ready = self.members.iter().filter(|member| member.ready);
        let primary = routing::primary(
            routing::key_hash(key),
            ready.clone().map(|member| member.name.as_str()),
        )?;
        ready
            .clone()
            .find(|member| member.name == primary)?
            .endpoint
    }

    /// Where requests that any node can answer go, in failover order: the ready members,
    /// then the configured endpoints that are no member's (a load balancer, a name the
    /// nodes do not advertise) as a last resort; or, while no ready member is known,
    /// the configured endpoints. Never empty.
    pub(crate) fn endpoints_for_read(&self) -> &[usize] {
        &self.read_order
    }
}

/// See [`Topology::endpoints_for_read`].
fn read_order(configured: usize, members: &[Member]) -> Vec<usize> {
    let mut order: Vec<usize> = members
        .iter()
        .filter(|member| member.ready)
        .filter_map(|member| member.endpoint)
        .collect();
    // By index: configured endpoints first, so a client keeps the order it was given.
    order.sort_unstable();
    order.dedup();
    if order.is_empty() {
        return (0..configured).collect();
    }
    let unknown = (0..configured)
        .filter(|&index| !members.iter().any(|member| member.endpoint == Some(index)));
    order.extend(unknown);
    order
}

/// The endpoint a member's advertised gRPC address names, if a client can use it.
fn member_endpoint(address: &str) -> Option<String> {
    let uri = normalize_endpoint(address).ok()?;
    let host = uri
        .parse::<tonic::transport::Uri>()
        .ok()?
        .host()?
        .to_owned();
    // A node listening on every interface advertises the wildcard address, which only
    // means "this machine" to whoever connects to it.
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    if ip.is_ok_and(|ip| ip.is_unspecified()) {
        return None;
    }
    Some(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(endpoints: &[&str]) -> Topology {
        Topology::new(endpoints.iter().map(|e| format!("http://{e}")).collect())
    }

    fn member(node: &str, address: &str, ready: bool) -> v1::MemberStatus {
        v1::MemberStatus {
            node: node.into(),
            address: address.into(),
            ready,
            state: if ready { "ready" } else { "joining" }.into(),
            generation: 1,
            slot: 0,
        }
    }

    /// Three ready members n1..n3 on ports 1..3, of which the client was given n1.
    fn three_ready() -> Topology {
        configured(&["127.0.0.1:1"]).refreshed(&[
            member("n1", "127.0.0.1:1", true),
            member("n2", "127.0.0.1:2", true),
            member("n3", "127.0.0.1:3", true),
        ])
    }

    fn index_of(topology: &Topology, uri: &str) -> usize {
        topology
            .endpoints()
            .iter()
            .position(|known| known == uri)
            .unwrap()
    }

    fn keys() -> impl Iterator<Item = Vec<u8>> {
        (0..500).map(|i| format!("key{i}").into_bytes())
    }

    #[test]
    fn unknown_topology_falls_back_to_the_configured_endpoints() {
        let topology = configured(&["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(topology.endpoints_for_read(), [0, 1]);
        assert!(keys().all(|key| topology.endpoint_for_write(&key).is_none()));

        // A server that reports no members (older, or alone) leaves it that way.
        let refreshed = topology.refreshed(&[]);
        assert_eq!(refreshed, topology);
    }

    #[test]
    fn learned_members_extend_the_endpoints() {
        let topology = three_ready();
        assert_eq!(
            topology.endpoints(),
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3"
            ]
        );
        assert_eq!(topology.endpoints_for_read(), [0, 1, 2]);
    }

    #[test]
    fn the_write_endpoint_is_the_primary_of_the_ready_members() {
        let topology = three_ready();
        let mut primaries = std::collections::HashSet::new();
        for key in keys() {
            let expected = routing::primary(routing::key_hash(&key), ["n1", "n2", "n3"]).unwrap();
            let port = &expected[1..];
            let endpoint = topology.endpoint_for_write(&key).unwrap();
            assert_eq!(topology.uri(endpoint), format!("http://127.0.0.1:{port}"));
            primaries.insert(endpoint);
        }
        assert_eq!(primaries.len(), 3, "keys spread over every member");
    }

    #[test]
    fn members_that_are_not_ready_are_never_chosen() {
        let topology = configured(&["127.0.0.1:1"]).refreshed(&[
            member("n1", "127.0.0.1:1", true),
            member("n2", "127.0.0.1:2", false),
            member("n3", "127.0.0.1:3", true),
        ]);
        let n2 = index_of(&topology, "http://127.0.0.1:2");
        assert!(!topology.endpoints_for_read().contains(&n2));
        for key in keys() {
            let expected = routing::primary(routing::key_hash(&key), ["n1", "n3"]).unwrap();
            let endpoint = topology.endpoint_for_write(&key).unwrap();
            assert_ne!(endpoint, n2);
            assert_eq!(
                topology.uri(endpoint),
                format!("http://127.0.0.1:{}", &expected[1..])
            );
        }
    }

    #[test]
    fn a_configured_endpoint_of_a_member_that_is_not_ready_is_left_out() {
        let topology = configured(&["127.0.0.1:1", "127.0.0.1:2"]).refreshed(&[
            member("n1", "127.0.0.1:1", false),
            member("n2", "127.0.0.1:2", true),
        ]);
        assert_eq!(topology.endpoints_for_read(), [1]);
    }

    #[test]
    fn with_no_ready_member_requests_go_to_the_configured_endpoints() {
        let topology = configured(&["127.0.0.1:1"]).refreshed(&[
            member("n1", "127.0.0.1:1", false),
            member("n2", "127.0.0.1:2", false),
        ]);
        assert_eq!(topology.endpoints_for_read(), [0]);
        assert!(keys().all(|key| topology.endpoint_for_write(&key).is_none()));
    }

    #[test]
    fn configured_endpoints_that_are_no_member_s_come_last() {
        // A client given a load balancer's address.
        let topology = configured(&["lb.site1:11222"]).refreshed(&[
            member("n1", "127.0.0.1:1", true),
            member("n2", "127.0.0.1:2", true),
        ]);
        assert_eq!(topology.endpoints_for_read(), [1, 2, 0]);
    }

    #[test]
    fn a_primary_with_an_unusable_address_is_still_the_primary_but_not_sent_to() {
        let topology = configured(&["127.0.0.1:1"]).refreshed(&[
            member("n1", "127.0.0.1:1", true),
            member("n2", "0.0.0.0:2", true),
            member("n3", "", true),
        ]);
        assert_eq!(topology.endpoints(), ["http://127.0.0.1:1"]);
        assert_eq!(topology.endpoints_for_read(), [0]);
        for key in keys() {
            let expected = routing::primary(routing::key_hash(&key), ["n1", "n2", "n3"]).unwrap();
            let endpoint = topology.endpoint_for_write(&key);
            assert_eq!(endpoint.is_some(), expected == "n1", "{expected}");
        }
    }

    #[test]
    fn a_refreshed_topology_replaces_the_members_and_keeps_every_endpoint_index() {
        let before = three_ready();
        let after = before.refreshed(&[
            member("n1", "127.0.0.1:1", true),
            member("n3", "127.0.0.1:3", true),
            member("n4", "127.0.0.1:4", true),
        ]);
        for (index, uri) in before.endpoints().iter().enumerate() {
            assert_eq!(after.uri(index), uri);
        }
        let n2 = index_of(&after, "http://127.0.0.1:2");
        let n4 = index_of(&after, "http://127.0.0.1:4");
        assert_eq!(after.endpoints_for_read(), [0, 2, n4]);
        assert_eq!(
            after.ready_members().collect::<Vec<_>>(),
            ["n1", "n3", "n4"]
        );
        for key in keys() {
            let expected = routing::primary(routing::key_hash(&key), ["n1", "n3", "n4"]).unwrap();
            let endpoint = after.endpoint_for_write(&key).unwrap();
            assert_ne!(endpoint, n2);
            assert_eq!(
                after.uri(endpoint),
                format!("http://127.0.0.1:{}", &expected[1..])
            );
        }
        // A member that comes back gets its old index.
        let back = after.refreshed(&[member("n2", "127.0.0.1:2", true)]);
        assert_eq!(back.endpoints().len(), after.endpoints().len());
        assert_eq!(back.endpoints_for_read(), [n2, 0]);
    }

    #[test]
    fn wildcard_and_malformed_addresses_are_no_endpoint() {
        assert_eq!(
            member_endpoint("10.0.0.7:11222").as_deref(),
            Some("http://10.0.0.7:11222")
        );
        assert_eq!(
            member_endpoint("node2.site1:11222").as_deref(),
            Some("http://node2.site1:11222")
        );
        for unusable in ["", "0.0.0.0:11222", "[::]:11222", "https://h:1", "a b:1"] {
            assert_eq!(member_endpoint(unusable), None, "{unusable:?}");
        }
    }
}
