//! `sitegridctl cluster ...`: the answering node's view of its cluster: itself, the
//! members of its site, and its caches.

use std::fmt::Write as _;
use std::io::Write;

use serde_json::{Value, json};
use sitegrid_client::{Client, ClusterStatus, MemberStatus};

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
        if !self.members.is_empty() {
            text.push('\n');
            text.push_str(&members_table(&self.members));
        }
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
            "members": self.members.iter().map(|m| json!({
                "node": m.node,
                "address": m.address,
                "state": m.state,
                "ready": m.ready,
                "generation": m.generation,
                "slot": m.slot,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The members as aligned columns under a header line.
fn members_table(members: &[MemberStatus]) -> String {
    let width = |header: &str, field: fn(&MemberStatus) -> &str| {
        members
            .iter()
            .map(|m| field(m).len())
            .chain([header.len()])
            .max()
            .unwrap_or_default()
    };
    let node = width("NODE", |m| &m.node);
    let address = width("ADDRESS", |m| &m.address);
    let state = width("STATE", |m| &m.state);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<node$}  {:<address$}  {:<state$}  READY  SLOT  GENERATION",
        "NODE", "ADDRESS", "STATE"
    );
    for member in members {
        let ready = if member.ready { "yes" } else { "no" };
        let _ = writeln!(
            text,
            "{:<node$}  {:<address$}  {:<state$}  {ready:<5}  {:>4}  {}",
            member.node, member.address, member.state, member.slot, member.generation
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitegrid_client::CacheStatus;

    fn member(node: &str, address: &str, state: &str, generation: u64) -> MemberStatus {
        MemberStatus {
            node: node.into(),
            address: address.into(),
            ready: state == "ready",
            state: state.into(),
            generation,
            slot: (generation % 16) as u32,
        }
    }

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
            members: vec![
                member("node11", "127.0.0.1:11222", "ready", 1_700_000_000_001),
                member("node12", "127.0.0.1:11223", "joining", 1_700_000_000_002),
            ],
        }
    }

    #[test]
    fn cluster_status_table_lists_the_node_its_members_and_its_caches() {
        assert_eq!(
            status().table(),
            "node      node11\n\
             site      site1 (id 1)\n\
             ready     yes\n\
             address   127.0.0.1:11222\n\
             version   0.1.0\n\
             \n\
             NODE    ADDRESS          STATE    READY  SLOT  GENERATION\n\
             node11  127.0.0.1:11222  ready    yes       1  1700000000001\n\
             node12  127.0.0.1:11223  joining  no        2  1700000000002\n\
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
        assert_eq!(
            json["members"],
            json!([
                {
                    "node": "node11",
                    "address": "127.0.0.1:11222",
                    "state": "ready",
                    "ready": true,
                    "generation": 1_700_000_000_001_u64,
                    "slot": 1,
                },
                {
                    "node": "node12",
                    "address": "127.0.0.1:11223",
                    "state": "joining",
                    "ready": false,
                    "generation": 1_700_000_000_002_u64,
                    "slot": 2,
                },
            ])
        );
    }

    #[test]
    fn a_server_without_members_prints_no_member_table() {
        let status = ClusterStatus {
            members: Vec::new(),
            ..status()
        };
        assert!(!status.table().contains("NODE"));
        assert_eq!(status.json()["members"], json!([]));
    }
}
