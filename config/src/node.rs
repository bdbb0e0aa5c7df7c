//! The `[node]` section: who this node is and where it listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Problems, check_name};

/// Who this node is and where it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name, unique in its site; empty = the host name (filled in by
    /// [`crate::Config::apply_env`]).
    #[serde(default)]
    pub name: String,
    /// Name of this node's site.
    #[serde(default = "default_site")]
    pub site: String,
    /// The site's small stable id, 1..=255; it is the low byte of every version the site
    /// assigns, so two sites never assign the same version.
    #[serde(default = "default_site_id")]
    pub site_id: u16,
    /// gRPC address for clients and peers.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Gossip (membership) address; bind it to the site's private interface.
    #[serde(default = "default_gossip")]
    pub gossip: SocketAddr,
    /// HTTP address for `/metrics`, `/health` and `/ready`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// Where persistent caches and the clock's high-water mark live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Gossip addresses (or DNS names with port) of other nodes of this site.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Threads that run the node's requests; absent = one per core this process may
    /// use. Give each node fewer when several share a host's cores (nodes of a site
    /// side by side on one machine, or next to a busy identity node): threads that
    /// outnumber the cores spend their time waking each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Test-only: milliseconds added to this node's wall clock, to test clock skew.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock_offset_ms: i64,
    /// Test-only: the slot this node tries first (normally a random one), to test that
    /// members that start with one slot end up with different ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_slot: Option<u8>,
}

/// Most worker threads a node may be given.
pub const MAX_WORKER_THREADS: usize = 1024;

fn is_zero(value: &i64) -> bool {
    *value == 0
}

fn default_site() -> String {
    "local".to_string()
}
fn default_site_id() -> u16 {
    1
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 11222))
}
fn default_gossip() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7946))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: String::new(),
            site: default_site(),
            site_id: default_site_id(),
            listen: default_listen(),
            gossip: default_gossip(),
            http: default_http(),
            data_dir: default_data_dir(),
            seeds: Vec::new(),
            worker_threads: None,
            clock_offset_ms: 0,
            first_slot: None,
        }
    }
}

impl NodeConfig {
    pub(crate) fn validate(&self, problems: &mut Problems) {
        if let Some(slot) = self.first_slot
            && slot >= 16
        {
            problems.push("node.first_slot", "must be below 16");
        }
        check_name("node.name", &self.name, problems);
        check_name("node.site", &self.site, problems);
        if !(1..=255).contains(&self.site_id) {
            problems.push("node.site_id", "must be in 1..=255");
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push("node.data_dir", "must not be empty");
        }
        if let Some(threads) = self.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&threads)
        {
            problems.push(
                "node.worker_threads",
                format!("must be in 1..={MAX_WORKER_THREADS}"),
            );
        }
        for (index, seed) in self.seeds.iter().enumerate() {
            if !seed.contains(':') {
                problems.push(
                    format!("node.seeds[{index}]"),
                    format!("{seed:?} must be HOST:PORT"),
                );
            }
        }
    }

    /// The site id as the byte it is in versions; only meaningful after validation.
    pub fn site_byte(&self) -> u8 {
        u8::try_from(self.site_id).unwrap_or(u8::MAX)
    }
}
