//! N sites of M real nodes each on loopback, every link between sites through a
//! [`FaultProxy`], and an optional witness that each site reaches through a proxy of its
//! own; the nemeses act on it. Dropping it kills every process and proxy it started.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use sitegrid_proto::v1;
use sitegrid_proto::v1::admin_client::AdminClient;

use crate::node::{NodeAddrs, NodeProcess, NodeSpec};
use crate::proxy::{Direction, FaultProxy};
use crate::site::Site;
use crate::wait::eventually;
use crate::witness::WitnessProcess;

/// How long recovery may take: nodes restarted, links healed, peers back online.
const RECOVERY: Duration = Duration::from_secs(90);

/// What to start.
pub struct TopologySpec {
    /// Number of sites (`site1`, `site2`, ...).
    pub sites: usize,
    /// Nodes per site (`n1`, `n2`, ...).
    pub nodes: usize,
    /// Start a witness with this lease; the sites use it for take-offline grants.
    pub witness_lease: Option<Duration>,
    /// TOML added to every `[[sites]]` entry (e.g. `take_offline = { ... }`).
    pub peer_toml: String,
    /// The rest of a node's config, from its site's index.
    pub toml: Box<dyn Fn(usize) -> String + Send + Sync>,
    /// Test-only faults switched on in every node (`sitegrid_server::faults`).
    pub faults: Vec<String>,
}

/// A running topology.
pub struct Topology {
    /// The sites, by index (`site1` is 0).
    pub sites: Vec<Site>,
    /// `links[from][to][n]`: the proxy in front of node `n` of site `to` that site
    /// `from` calls it through (empty where `from == to`).
    links: Vec<Vec<Vec<FaultProxy>>>,
    /// The witness and, by site, the proxy each site reaches it through.
    witness: Option<(WitnessProcess, Vec<FaultProxy>)>,
    /// Nodes frozen by [`Topology::pause`], as (site, node).
    paused: HashSet<(usize, usize)>,
}

impl Topology {
    /// Starts every site (and the witness) and waits until every node is ready.
    pub async fn start(spec: TopologySpec) -> anyhow::Result<Topology> {
        let addrs: Vec<Vec<NodeAddrs>> = (0..spec.sites)
            .map(|_| (0..spec.nodes).map(|_| NodeAddrs::free()).collect())
            .collect();
        let mut links = Vec::new();
        for from in 0..spec.sites {
            let mut row = Vec::new();
            for (to, nodes) in addrs.iter().enumerate() {
                let proxies = if from == to {
                    Vec::new()
                } else {
                    nodes
                        .iter()
                        .map(|a| FaultProxy::start(a.grpc))
                        .collect::<anyhow::Result<_>>()?
                };
                row.push(proxies);
            }
            links.push(row);
        }
        let witness = match spec.witness_lease {
            Some(lease) => {
                let process = WitnessProcess::start(lease).await?;
                let proxies: Vec<FaultProxy> = (0..spec.sites)
                    .map(|_| FaultProxy::start(process.addr()))
                    .collect::<anyhow::Result<_>>()?;
                Some((process, proxies))
            }
            None => None,
        };
        let mut sites = Vec::new();
        for (index, own) in addrs.iter().enumerate() {
            let mut peers = String::new();
            for (to, proxies) in links[index].iter().enumerate() {
                if to == index {
                    continue;
                }
                let endpoints: Vec<String> = proxies
                    .iter()
                    .map(|p| format!("\"{}\"", p.addr()))
                    .collect();
                peers.push_str(&format!(
                    "[[sites]]\nname = \"site{}\"\nendpoints = [{}]\n{}\n",
                    to + 1,
                    endpoints.join(", "),
                    spec.peer_toml
                ));
            }
            if let Some((_, proxies)) = &witness {
                peers.push_str(&format!(
                    "[witness]\nendpoint = \"{}\"\n",
                    proxies[index].addr()
                ));
            }
            let toml = (spec.toml)(index);
            sites.push(Site::launch_at(own, |name| NodeSpec {
                site: format!("site{}", index + 1),
                site_id: index as u8 + 1,
                faults: spec.faults.clone(),
                ..NodeSpec::new(name).with_toml(&format!("{peers}{toml}"))
            })?);
        }
        for site in &mut sites {
            site.wait_started().await?;
        }
        Ok(Topology {
            sites,
            links,
            witness,
            paused: HashSet::new(),
        })
    }

    /// Node `node` of site `site`.
    pub fn node(&self, site: usize, node: usize) -> &NodeProcess {
        &self.sites[site].nodes[node]
    }

    /// Every node, as (site, node, process).
    pub fn nodes(&self) -> impl Iterator<Item = (usize, usize, &NodeProcess)> {
        self.sites.iter().enumerate().flat_map(|(s, site)| {
            site.nodes
                .iter()
                .enumerate()
                .map(move |(n, node)| (s, n, node))
        })
    }

    /// Kills a node (SIGKILL).
    pub fn kill(&mut self, site: usize, node: usize) -> anyhow::Result<()> {
        self.paused.remove(&(site, node));
        self.sites[site].nodes[node].kill()
    }

    /// Starts a killed node again on its data and waits until it serves (its site may
    /// be fenced).
    pub async fn restart(&mut self, site: usize, node: usize) -> anyhow::Result<()> {
        self.paused.remove(&(site, node));
        let process = &mut self.sites[site].nodes[node];
        process.restart_without_waiting()?;
        process.wait_serving().await
    }

    /// Kills a node and starts it again on its data dir with its clock `offset_ms` off the
    /// machine's; waits until it serves.
    pub async fn restart_skewed(
        &mut self,
        site: usize,
        node: usize,
        offset_ms: i64,
    ) -> anyhow::Result<()> {
        self.kill(site, node)?;
        self.sites[site].nodes[node].set_clock_offset(offset_ms);
        self.restart(site, node).await
    }

    /// Kills a node, empties its data dir and starts it again: a brand-new node in its
    /// place; waits until it serves.
    pub async fn replace_with_empty(&mut self, site: usize, node: usize) -> anyhow::Result<()> {
        self.kill(site, node)?;
        self.sites[site].nodes[node].wipe_data()?;
        self.restart(site, node).await
    }

    /// Freezes a node (SIGSTOP).
    pub fn pause(&mut self, site: usize, node: usize) -> anyhow::Result<()> {
        self.sites[site].nodes[node].pause()?;
        self.paused.insert((site, node));
        Ok(())
    }

    /// Thaws a frozen node (SIGCONT).
    pub fn resume(&mut self, site: usize, node: usize) -> anyhow::Result<()> {
        if self.paused.remove(&(site, node)) {
            self.sites[site].nodes[node].resume()?;
        }
        Ok(())
    }

    /// Kills every node of a site.
    pub fn kill_site(&mut self, site: usize) -> anyhow::Result<()> {
        for node in 0..self.sites[site].nodes.len() {
            self.kill(site, node)?;
        }
        Ok(())
    }

    /// Starts every node of a site again on its data dir and waits until all serve.
    pub async fn restart_site(&mut self, site: usize) -> anyhow::Result<()> {
        for node in 0..self.sites[site].nodes.len() {
            self.paused.remove(&(site, node));
            self.sites[site].nodes[node].restart_without_waiting()?;
        }
        self.sites[site].wait_serving().await
    }

    /// The proxies carrying calls from site `from` to site `to`.
    fn link(&self, from: usize, to: usize) -> &[FaultProxy] {
        &self.links[from][to]
    }

    /// Cuts sites `a` and `b` apart, both ways.
    pub fn partition(&self, a: usize, b: usize) {
        for proxy in self.link(a, b).iter().chain(self.link(b, a)) {
            proxy.blackhole(Direction::Both);
        }
    }

    /// Loses every byte site `from` sends to site `to` (its calls, and its answers to
    /// `to`'s calls); `to` still reaches `from`'s ears.
    pub fn cut_one_way(&self, from: usize, to: usize) {
        for proxy in self.link(from, to) {
            proxy.blackhole(Direction::ToTarget);
        }
        for proxy in self.link(to, from) {
            proxy.blackhole(Direction::FromTarget);
        }
    }

    /// Adds `delay` each way and `loss` (chance per chunk) to every link between sites.
    pub fn degrade_links(&self, delay: Duration, loss: f64) {
        for proxy in self.inter_site_proxies() {
            proxy.set_delay(Direction::Both, delay);
            proxy.set_loss(Direction::Both, loss);
        }
    }

    /// Clears every fault on every link (between sites and to the witness).
    pub fn heal_links(&self) {
        for proxy in self.inter_site_proxies() {
            proxy.heal();
        }
        if let Some((_, proxies)) = &self.witness {
            for proxy in proxies {
                proxy.heal();
            }
        }
    }

    fn inter_site_proxies(&self) -> impl Iterator<Item = &FaultProxy> {
        self.links.iter().flatten().flatten()
    }

    /// Undoes every fault: thaws frozen nodes, starts dead ones, heals the links; then
    /// brings every peer that a site holds offline back online (a resync) and waits
    /// until every node of every site sees every peer online and no site is fenced.
    pub async fn recover(&mut self) -> anyhow::Result<()> {
        for (site, node) in self.paused.clone() {
            self.resume(site, node)?;
        }
        self.heal_links();
        for site in 0..self.sites.len() {
            for node in 0..self.sites[site].nodes.len() {
                if !self.sites[site].nodes[node].is_running() {
                    self.sites[site].nodes[node].restart_without_waiting()?;
                }
            }
        }
        for site in &mut self.sites {
            site.wait_serving().await?;
        }
        eventually("every peer online and no site fenced", RECOVERY, || async {
            self.request_bring_online().await.unwrap_or(false)
        })
        .await?;
        for site in &self.sites {
            site.wait_all_ready().await?;
        }
        Ok(())
    }

    /// Asks each site to bring every peer it holds offline back online; answers whether
    /// every node sees every peer online already, unfenced.
    pub async fn request_bring_online(&self) -> anyhow::Result<bool> {
        let mut settled = true;
        for (site, _, node) in self.nodes() {
            let mut admin = AdminClient::new(node.channel().await?);
            let status = admin
                .site_status(v1::SiteStatusRequest { here_only: true })
                .await?
                .into_inner();
            settled &= status.fenced.is_empty();
            for peer in status.peers {
                if peer.state == "online" {
                    continue;
                }
                settled = false;
                if peer.state == "offline" {
                    admin
                        .site_command(v1::SiteCommandRequest {
                            site: peer.site.clone(),
                            action: v1::SiteAction::BringOnline as i32,
                            forwarded: false,
                        })
                        .await
                        .with_context(|| format!("site{} bring-online {}", site + 1, peer.site))
                        .ok();
                }
            }
        }
        Ok(settled)
    }
}
