//! `[[sites]]`: the peer sites this node's site backs up to.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Problems, check_name};

/// A peer site and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The peer site's name, as its nodes have it in `node.site`.
    pub name: String,
    /// gRPC addresses (or DNS names with port) of the peer site's nodes.
    pub endpoints: Vec<String>,
    /// When the peer is taken offline.
    #[serde(default)]
    pub take_offline: TakeOfflineConfig,
    /// Bring the peer back online (with a resync) as soon as it answers again.
    #[serde(default)]
    pub auto_bring_online: bool,
}

/// `[witness]`: the third-place process that grants one site of a pair the right to take
/// the other offline (`sitegrid --witness`).
///
/// A site node names where it is (`endpoint`); the witness process reads `listen` and
/// `lease` from its own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Where a site's nodes reach the witness: `HOST:PORT` or `http://HOST:PORT`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where the witness process listens.
    #[serde(default = "default_witness_listen")]
    pub listen: std::net::SocketAddr,
    /// How long a grant holds unless its holder renews it. A holder that can't renew in
    /// time stops taking writes to caches with sync backups.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

fn default_witness_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 11300))
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

impl Default for WitnessConfig {
    fn default() -> Self {
        WitnessConfig {
            endpoint: None,
            listen: default_witness_listen(),
            lease: default_lease(),
        }
    }
}

impl WitnessConfig {
    pub(crate) fn validate(&self, prefer: bool, problems: &mut Problems) {
        if self.lease < Duration::from_millis(100) {
            problems.push("witness.lease", "must be at least 100ms");
        }
        if let Some(endpoint) = &self.endpoint {
            if let Err(why) = check_endpoint(endpoint) {
                problems.push("witness.endpoint", format!("{endpoint:?} {why}"));
            }
            if prefer {
                problems.push(
                    "relay.prefer",
                    "has no effect with a witness (witness.endpoint): remove one of them",
                );
            }
        }
    }
}

/// When a peer site is taken offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeOfflineConfig {
    /// Consecutive failed heartbeats or backups before the peer is taken offline.
    #[serde(default = "default_after_failures")]
    pub after_failures: u32,
    /// And at least this long since the first of those failures.
    #[serde(default = "default_min_wait", with = "humantime_serde")]
    pub min_wait: Duration,
}

fn default_after_failures() -> u32 {
    3
}
fn default_min_wait() -> Duration {
    Duration::from_secs(10)
}

impl Default for TakeOfflineConfig {
    fn default() -> Self {
        TakeOfflineConfig {
            after_failures: default_after_failures(),
            min_wait: default_min_wait(),
        }
    }
}

/// Whether `endpoint` is `HOST:PORT` or `http(s)://HOST:PORT`.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let address = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let (host, port) = address
        .rsplit_once(':')
        .ok_or("must be HOST:PORT or http://HOST:PORT")?;
    if host.is_empty() || host.contains('/') || address.contains("://") {
        return Err("must be HOST:PORT or http://HOST:PORT");
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err("has no valid port (1..=65535)"),
    }
}

pub(crate) fn validate_sites(sites: &[SiteConfig], local_site: &str, problems: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (index, site) in sites.iter().enumerate() {
        let field = format!("sites[{index}]");
        check_name(&format!("{field}.name"), &site.name, problems);
        if site.name == local_site {
            problems.push(
                format!("{field}.name"),
                format!("{:?} is this node's own site", site.name),
            );
        } else if !seen.insert(site.name.as_str()) {
            problems.push(
                format!("{field}.name"),
                format!("{:?} appears twice", site.name),
            );
        }
        if site.endpoints.is_empty() {
            problems.push(format!("{field}.endpoints"), "must not be empty");
        }
        for (number, endpoint) in site.endpoints.iter().enumerate() {
            if let Err(why) = check_endpoint(endpoint) {
                problems.push(
                    format!("{field}.endpoints[{number}]"),
                    format!("{endpoint:?} {why}"),
                );
            }
        }
        if site.take_offline.after_failures == 0 {
            problems.push(
                format!("{field}.take_offline.after_failures"),
                "must be > 0",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_a_host_and_a_port() {
        for good in ["10.0.2.11:11222", "dc2.example:11222", "http://[::1]:11222"] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "10.0.2.11",
            "http://dc2",
            ":11222",
            "dc2:0",
            "dc2:port",
            "ftp://dc2:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        let error = crate::Config::from_toml(
            "[[sites]]\nname = \"site2\"\nendpoints = [\"dc2\"]\n",
            "test",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(error.contains("sites[0].endpoints[0]"), "{error}");
    }
}
