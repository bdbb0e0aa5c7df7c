//! `sitegridctl cluster ...`: the answering node's view of its cluster.

use std::fmt::Write as _;
use std::io::Write;

use serde_json::{Value, json};
use sitegrid_client::{Client, ClusterStatus};

use crate::args::ClusterCommand;
use crate::error::CliError;
use crate::output::{OutputFormat, Show, emit};

/// Runs one cluster command and prints its result to `out`.
pub(crate) async fn run(
    client: &Client,
    command: ClusterCommand,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status => {
            let status = client.admin().cluster_status().await?;
            emit(out, format, &status)?;
        }
    }
    Ok(())
}

impl Show for ClusterStatus {
    fn table(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "node      {}", self.node);
        let _ = writeln!(text, "site      {} (id {})", self.site, self.site_id);
        let _ = writeln!(text, "ready     {}", if self.ready { "yes" } else { "no" });
        let _ = writeln!(text, "address   {}", self.address);
        let _ = writeln!(text, "version   {}", self.server_version);
        let width = self
            .caches
            .iter()
            .map(|c| c.name.len())
            .chain(["CACHE".len()])
            .max()
            .unwrap_or_default();
        let _ = writeln!(text, "\n{:<width$}  {:>10}  PERSISTENT", "CACHE", "SIZE");
        for cache in &self.caches {
            let persistent = if cache.persistent { "yes" } else { "no" };
            let _ = writeln!(
                text,
                "{:<width$}  {:>10}  {persistent}",
                cache.name, cache.size
            );
        }
        text
    }

    fn json(&self) -> Value {
        json!({
            "node": self.node,
            "site": self.site,
            "site_id": self.site_id,
            "ready": self.ready,
            "address": self.address,
            "server_version": self.server_version,
            "caches": self.caches.iter().map(|c| json!({
                "name": c.name,
                "size": c.size,
                "persistent": c.persistent,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitegrid_client::CacheStatus;

    fn status() -> ClusterStatus {
        ClusterStatus {
            node: "node11".into(),
            site: "site1".into(),
            site_id: 1,
            ready: true,
            address: "127.0.0.1:11222".into(),
            server_version: "0.1.0".into(),
            caches: vec![
                CacheStatus {
                    name: "offlineSessions".into(),
                    size: 12,
                    persistent: true,
                },
                CacheStatus {
                    name: "work".into(),
                    size: 0,
                    persistent: false,
                },
            ],
        }
    }

    #[test]
    fn cluster_status_table_lists_the_node_and_its_caches() {
        assert_eq!(
            status().table(),
            "node      node11\n\
             site      site1 (id 1)\n\
             ready     yes\n\
             address   127.0.0.1:11222\n\
             version   0.1.0\n\
             \n\
             CACHE                  SIZE  PERSISTENT\n\
             offlineSessions          12  yes\n\
             work                      0  no\n"
        );
    }

    #[test]
    fn cluster_status_json_has_every_field() {
        let json = status().json();
        assert_eq!(json["site_id"], 1);
        assert_eq!(json["ready"], true);
        assert_eq!(json["server_version"], "0.1.0");
        assert_eq!(
            json["caches"][0],
            json!({ "name": "offlineSessions", "size": 12, "persistent": true })
        );
    }
}
