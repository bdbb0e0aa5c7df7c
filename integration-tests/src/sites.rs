//! Two sites on loopback, each naming the other as its peer site.

use std::net::SocketAddr;

use parking_lot::Mutex;

use crate::node::{NodeAddrs, NodeSpec};
use crate::proxy::FaultProxy;
use crate::site::Site;

/// Two sites, `site1` (id 1) and `site2` (id 2).
#[derive(Debug)]
pub struct TwoSites {
    /// `site1`, then `site2`.
    pub sites: [Site; 2],
}

impl TwoSites {
    /// `ctl` (a `sitegridctl`) running the identity-provider workload against both sites
    /// with a JSON report; `args` adds the bench options (users, duration, warmup).
    pub fn idp_bench(&self, ctl: &std::path::Path, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(ctl);
        command.args(["--output", "json", "bench", "--workload", "idp"]);
        command.args(args);
        for site in &self.sites {
            command.arg("--site").arg(site.grpc_endpoints());
        }
        command
    }

    /// Starts two sites of `per_site` nodes each and waits until all are ready. `spec`
    /// makes each node's spec from its site's index (0, 1) and its name (site, site id,
    /// seeds and `[[sites]]` are filled in). Each site names the other in `[[sites]]` with
    /// the endpoints `endpoints` gives for the other site's gRPC addresses (the addresses
    /// themselves, or proxies in front of them). The `[[sites]]` entry comes first in the
    /// config, so a spec's TOML may extend it (`[sites.take_offline]` first).
    pub async fn start(
        per_site: usize,
        spec: impl Fn(usize, &str) -> NodeSpec,
        endpoints: impl Fn(usize, &[SocketAddr]) -> Vec<String>,
    ) -> anyhow::Result<TwoSites> {
        let addrs: [Vec<NodeAddrs>; 2] =
            std::array::from_fn(|_| (0..per_site).map(|_| NodeAddrs::free()).collect());
        let mut sites = Vec::new();
        for (index, own) in addrs.iter().enumerate() {
            let other = 1 - index;
            let peer_grpc: Vec<SocketAddr> = addrs[other].iter().map(|a| a.grpc).collect();
            let peer_endpoints: Vec<String> = endpoints(index, &peer_grpc)
                .iter()
                .map(|e| format!("{e:?}"))
                .collect();
            let peer = format!(
                "[[sites]]\nname = \"site{}\"\nendpoints = [{}]\n",
                other + 1,
                peer_endpoints.join(", ")
            );
            sites.push(Site::launch_at(own, |name| {
                let spec = spec(index, name);
                NodeSpec {
                    site: format!("site{}", index + 1),
                    site_id: index as u8 + 1,
                    extra_toml: format!("{peer}{}", spec.extra_toml),
                    ..spec
                }
            })?);
        }
        let [mut first, mut second]: [Site; 2] = sites.try_into().expect("two sites");
        first.wait_started().await?;
        second.wait_started().await?;
        Ok(TwoSites {
            sites: [first, second],
        })
    }

    /// Two sites where site 1 reaches site 2 through a [`FaultProxy`] in front of site 2's
    /// first node, which the test drives; site 2 reaches site 1 directly.
    pub async fn start_behind_proxy(
        per_site: usize,
        spec: impl Fn(usize, &str) -> NodeSpec,
    ) -> anyhow::Result<(TwoSites, FaultProxy)> {
        let proxy: Mutex<Option<anyhow::Result<FaultProxy>>> = Mutex::new(None);
        let sites = TwoSites::start(per_site, spec, |index, peers| {
            if index == 1 {
                return peers.iter().map(|a| a.to_string()).collect();
            }
            let started = FaultProxy::start(peers[0]);
            let endpoint = started.as_ref().ok().map(|p| p.addr().to_string());
            *proxy.lock() = Some(started);
            endpoint.into_iter().collect()
        })
        .await?;
        let proxy = proxy
            .into_inner()
            .ok_or_else(|| anyhow::anyhow!("no proxy was started"))??;
        Ok((sites, proxy))
    }

    /// Two sites of one node each that reach each other only through a [`FaultProxy`]
    /// each: `proxies[i]` carries what site `i + 1` sends to the other site, so
    /// blackholing both partitions the sites.
    pub async fn start_partitionable(
        spec: impl Fn(usize, &str) -> NodeSpec,
    ) -> anyhow::Result<(TwoSites, [FaultProxy; 2])> {
        let proxies: Mutex<Vec<anyhow::Result<FaultProxy>>> = Mutex::new(Vec::new());
        let sites = TwoSites::start(1, spec, |_, peers| {
            let started = FaultProxy::start(peers[0]);
            let endpoint = started.as_ref().ok().map(|p| p.addr().to_string());
            proxies.lock().push(started);
            endpoint.into_iter().collect()
        })
        .await?;
        let proxies = proxies
            .into_inner()
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        let proxies: [FaultProxy; 2] = proxies
            .try_into()
            .map_err(|_| anyhow::anyhow!("two proxies were not started"))?;
        Ok((sites, proxies))
    }

    /// Two sites whose nodes reach each other directly.
    pub async fn start_direct(per_site: usize, extra_toml: &str) -> anyhow::Result<TwoSites> {
        TwoSites::start(
            per_site,
            |_, name| NodeSpec::new(name).with_toml(extra_toml),
            |_, peers| peers.iter().map(|a| a.to_string()).collect(),
        )
        .await
    }
}
