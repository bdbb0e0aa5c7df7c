//! A site of several real nodes on loopback, each told about the others.

use std::time::Duration;

use crate::node::{NodeAddrs, NodeProcess, NodeSpec};
use crate::wait::eventually;

/// How long a site may take to have every node ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The nodes of one site.
#[derive(Debug)]
pub struct Site {
    /// The nodes, `n1`, `n2`, ...
    pub nodes: Vec<NodeProcess>,
}

impl Site {
    /// Starts `count` nodes of site `site1` with `extra_toml` and waits until all are ready.
    pub async fn start(count: usize, extra_toml: &str) -> anyhow::Result<Site> {
        Site::start_with(count, |name| NodeSpec::new(name).with_toml(extra_toml)).await
    }

    /// Starts `count` nodes whose specs `spec` makes from their names (`n1`, `n2`, ...;
    /// seeds are filled in), and waits until all are ready.
    pub async fn start_with(count: usize, spec: impl Fn(&str) -> NodeSpec) -> anyhow::Result<Site> {
        let addrs: Vec<NodeAddrs> = (0..count).map(|_| NodeAddrs::free()).collect();
        let mut site = Site::launch_at(&addrs, spec)?;
        site.wait_started().await?;
        Ok(site)
    }

    /// A client of the library given only the first node, once it has learned every
    /// node of the site from it (refreshing the topology every 200 ms).
    pub async fn client_knowing_every_node(&self) -> anyhow::Result<sitegrid_client::Client> {
        let client = sitegrid_client::Client::builder([self.nodes[0].endpoint()])
            .topology_refresh_interval(Duration::from_millis(200))
            .connect()
            .await?;
        let nodes = self.nodes.len();
        eventually(
            "the client to learn every node",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move { client.endpoints().len() == nodes }
            },
        )
        .await?;
        Ok(client)
    }

    /// The gRPC addresses of the nodes, comma-separated (`sitegridctl -e`, `--site`).
    pub fn grpc_endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.grpc_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node that is `key`'s primary while every node is ready.
    pub fn primary_of(&self, key: &str) -> usize {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.spec().name.as_str()).collect();
        let hash = sitegrid_proto::routing::key_hash(key.as_bytes());
        let primary = sitegrid_proto::routing::primary(hash, names.iter().copied())
            .expect("a site has nodes");
        names
            .iter()
            .position(|name| *name == primary)
            .expect("one of them")
    }

    /// Launches a node on each of `addrs` (named `n1`, `n2`, ...; specs from `spec`,
    /// seeds filled in) without waiting for them.
    pub fn launch_at(addrs: &[NodeAddrs], spec: impl Fn(&str) -> NodeSpec) -> anyhow::Result<Site> {
        let mut nodes = Vec::new();
        for (index, own) in addrs.iter().enumerate() {
            let spec = NodeSpec {
                seeds: addrs
                    .iter()
                    .filter(|a| *a != own)
                    .map(|a| a.gossip.to_string())
                    .collect(),
                ..spec(&format!("n{}", index + 1))
            };
            nodes.push(NodeProcess::launch_at(spec, *own)?);
        }
        Ok(Site { nodes })
    }

    /// Waits until every node launched is ready (failing early if one exits).
    pub async fn wait_started(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.wait_ready().await?;
        }
        self.wait_all_ready().await
    }

    /// Waits until every node launched serves requests (fenced or not), failing early if
    /// one exits.
    pub async fn wait_serving(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.wait_serving().await?;
        }
        Ok(())
    }

    /// Waits until every running node reports ready.
    pub async fn wait_all_ready(&self) -> anyhow::Result<()> {
        eventually("every node ready", READY_TIMEOUT, || async {
            for node in &self.nodes {
                if !node.is_ready().await {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// Adds a node `name` (brand new, empty data) told about every current node.
    pub async fn add(&mut self, name: &str, extra_toml: &str) -> anyhow::Result<usize> {
        let spec = NodeSpec {
            seeds: self
                .nodes
                .iter()
                .map(|n| n.addrs().gossip.to_string())
                .collect(),
            ..NodeSpec::new(name).with_toml(extra_toml)
        };
        let node = NodeProcess::start(spec).await?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }
}
