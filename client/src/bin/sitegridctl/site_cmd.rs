//! `sitegridctl site ...`: the site's state of its peer sites, and the commands that
//! change it (for the whole site, all caches at once).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use serde_json::{Value, json};
use sitegrid_client::Client;
use sitegrid_proto::v1;

use crate::args::SiteCommand;
use crate::error::CliError;
use crate::output::{OutputFormat, Show, emit};

/// How often `resync-status` looks again while it follows a resync.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Runs one site command and prints its result to `out`.
pub(crate) async fn run(
    client: &Client,
    command: SiteCommand,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let admin = client.admin();
    let (site, action) = match command {
        SiteCommand::Status => {
            let status = admin.site_status().await?;
            emit(out, format, &SiteStatus(status))?;
            return Ok(());
        }
        SiteCommand::ResyncStatus(arg) => {
            return resync_status(client, &arg.site, format, out).await;
        }
        SiteCommand::TakeOffline(arg) => (arg.site, v1::SiteAction::TakeOffline),
        SiteCommand::BringOnline(arg) => (arg.site, v1::SiteAction::BringOnline),
        SiteCommand::Resync(arg) => (arg.site, v1::SiteAction::Resync),
        SiteCommand::CancelResync(arg) => (arg.site, v1::SiteAction::CancelResync),
        SiteCommand::Diff(arg) => (arg.site, v1::SiteAction::Diff),
    };
    let status = admin.site_command(&site, action).await?;
    emit(out, format, &Peer(&status))?;
    Ok(())
}

/// Prints the resync with `site`; in a terminal (table output) follows it with a progress
/// bar until it ends.
async fn resync_status(
    client: &Client,
    site: &str,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let peer = || async {
        let status = client.admin().site_status().await?;
        status
            .peers
            .into_iter()
            .find(|p| p.site == site)
            .ok_or_else(|| CliError::UnknownSite {
                site: site.to_string(),
                of: status.site,
            })
    };
    let mut current = peer().await?;
    let follow = format == OutputFormat::Table
        && std::io::stderr().is_terminal()
        && current.resync.as_ref().is_some_and(|r| r.running);
    if follow {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {percent:>3}% ranges {pos}/{len}  ETA {eta}  {msg}",
            )
            .expect("a valid template"),
        );
        while let Some(resync) = current.resync.as_ref().filter(|r| r.running) {
            bar.set_length(resync.ranges_total);
            bar.set_position(resync.ranges_done);
            bar.set_message(format!(
                "{} keys, {} moved, {} conflicts",
                resync.keys_differing,
                bytes(resync.bytes_moved),
                resync.conflicts
            ));
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            current = peer().await?;
        }
        bar.finish_and_clear();
    }
    emit(out, format, &Peer(&current))?;
    Ok(())
}

/// `site status`.
struct SiteStatus(v1::SiteStatusResponse);

/// One peer's status.
struct Peer<'a>(&'a v1::PeerSiteStatus);

impl Show for SiteStatus {
    fn table(&self) -> String {
        let status = &self.0;
        let mut text = String::new();
        let _ = writeln!(text, "site      {} (asked {})", status.site, status.node);
        let fenced = if status.fenced.is_empty() {
            "no"
        } else {
            &status.fenced
        };
        let _ = writeln!(text, "fenced    {fenced}");
        if status.peers.is_empty() {
            let _ = writeln!(text, "\nno peer sites");
        }
        for peer in &status.peers {
            text.push('\n');
            text.push_str(&Peer(peer).table());
        }
        text
    }

    fn json(&self) -> Value {
        json!({
            "site": self.0.site,
            "node": self.0.node,
            "fenced": (!self.0.fenced.is_empty()).then_some(&self.0.fenced),
            "peers": self.0.peers.iter().map(|p| Peer(p).json()).collect::<Vec<_>>(),
        })
    }
}

impl Show for Peer<'_> {
    fn table(&self) -> String {
        let peer = &self.0;
        let mut text = String::new();
        let _ = writeln!(text, "peer      {}", peer.site);
        let _ = writeln!(
            text,
            "state     {} (epoch {}, since {}, by {}: {})",
            peer.state,
            peer.epoch,
            when(peer.since_ms),
            if peer.changed_by.is_empty() {
                "config"
            } else {
                &peer.changed_by
            },
            peer.reason
        );
        let _ = writeln!(
            text,
            "answers   {} failures in a row, last answer {}",
            peer.failures,
            when(peer.last_answer_ms)
        );
        let _ = writeln!(
            text,
            "keys      {} in doubt, {} written while offline, {} in the outbox",
            peer.in_doubt_keys, peer.offline_keys, peer.outbox_keys
        );
        if let Some(resync) = &peer.resync {
            let percent = (resync.ranges_done * 100)
                .checked_div(resync.ranges_total)
                .unwrap_or(100);
            let what = if resync.diff_only { "diff" } else { "resync" };
            let state = if resync.running {
                format!(
                    "running on {} since {}",
                    resync.node,
                    when(resync.started_ms)
                )
            } else if resync.error.is_empty() {
                format!("done at {}", when(resync.ended_ms))
            } else {
                format!("stopped: {}", resync.error)
            };
            let _ = writeln!(text, "{what:<9} {percent}% of key ranges, {state}");
            let _ = writeln!(
                text,
                "          {} keys differ, {} moved ({}), {} conflicts",
                resync.keys_differing,
                resync.keys_moved,
                bytes(resync.bytes_moved),
                resync.conflicts
            );
        }
        text
    }

    fn json(&self) -> Value {
        let peer = &self.0;
        json!({
            "site": peer.site,
            "state": peer.state,
            "epoch": peer.epoch,
            "since_ms": peer.since_ms,
            "changed_by": peer.changed_by,
            "reason": peer.reason,
            "failures": peer.failures,
            "last_answer_ms": peer.last_answer_ms,
            "in_doubt_keys": peer.in_doubt_keys,
            "offline_keys": peer.offline_keys,
            "outbox_keys": peer.outbox_keys,
            "resync": peer.resync.as_ref().map(|r| json!({
                "running": r.running,
                "diff_only": r.diff_only,
                "node": r.node,
                "ranges_done": r.ranges_done,
                "ranges_total": r.ranges_total,
                "keys_differing": r.keys_differing,
                "keys_moved": r.keys_moved,
                "bytes_moved": r.bytes_moved,
                "conflicts": r.conflicts,
                "started_ms": r.started_ms,
                "ended_ms": r.ended_ms,
                "error": (!r.error.is_empty()).then_some(&r.error),
            })),
        })
    }
}

/// A Unix time in ms as RFC 3339 (seconds), or "never".
fn when(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A byte count in binary units.
fn bytes(count: u64) -> String {
    indicatif::BinaryBytes(count).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> v1::PeerSiteStatus {
        v1::PeerSiteStatus {
            site: "site2".into(),
            state: "resyncing".into(),
            epoch: 4,
            since_ms: 1_700_000_000_000,
            changed_by: "node11".into(),
            reason: "brought online by an operator: resync first".into(),
            failures: 0,
            last_answer_ms: 1_700_000_001_000,
            in_doubt_keys: 2,
            offline_keys: 30,
            outbox_keys: 0,
            resync: Some(v1::ResyncProgress {
                running: true,
                ranges_done: 256,
                ranges_total: 1024,
                keys_differing: 40,
                keys_moved: 35,
                bytes_moved: 35 * 1024,
                conflicts: 1,
                started_ms: 1_700_000_000_500,
                node: "node11".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_peer_shows_its_state_keys_and_resync_progress() {
        let table = Peer(&peer()).table();
        assert!(
            table.contains("state     resyncing (epoch 4, since 2023-11-14T22:13:20Z, by node11"),
            "{table}"
        );
        assert!(
            table.contains("2 in doubt, 30 written while offline"),
            "{table}"
        );
        assert!(
            table.contains("resync    25% of key ranges, running on node11"),
            "{table}"
        );
        assert!(
            table.contains("40 keys differ, 35 moved (35.00 KiB), 1 conflicts"),
            "{table}"
        );
        let json = Peer(&peer()).json();
        assert_eq!(json["resync"]["ranges_done"], 256);
        assert_eq!(json["resync"]["error"], Value::Null);
    }

    #[test]
    fn a_fenced_site_says_why() {
        let status = SiteStatus(v1::SiteStatusResponse {
            node: "node21".into(),
            site: "site2".into(),
            fenced: "site site1 holds site site2 offline".into(),
            peers: vec![peer()],
        });
        assert!(
            status
                .table()
                .contains("fenced    site site1 holds site site2 offline")
        );
        assert_eq!(
            status.json()["fenced"],
            "site site1 holds site site2 offline"
        );
    }
}
