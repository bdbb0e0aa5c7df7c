//! The identity-provider workload against the demo topology (issue "operating
//! sitegrid"): two sites of two nodes each, linked directly, and `sitegridctl bench
//! --workload idp` sending each step of each login to either site at random.

use std::time::Duration;

use serde_json::Value;
use sitegrid_integration_tests::{NodeSpec, TwoSites};

use crate::Settings;

/// Virtual users.
pub(crate) const USERS: u32 = 32;
/// How long the workload runs.
pub(crate) const LENGTH: Duration = Duration::from_secs(60);

/// The workload's JSON report (`sitegridctl --output json bench --workload idp`).
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) report: Value,
}

/// Runs the workload once for [`LENGTH`].
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let spec = |_, name: &str| NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new(name)
    };
    let sites = TwoSites::start(2, spec, |_, peers| {
        peers.iter().map(ToString::to_string).collect()
    })
    .await?;
    for site in &sites.sites {
        site.wait_all_ready().await?;
    }
    let length = humantime::format_duration(LENGTH).to_string();
    println!("idp: {USERS} users for {length}");
    let users = USERS.to_string();
    let mut command = sites.idp_bench(
        &settings.bin_dir.join("sitegridctl"),
        &[
            "--warmup",
            "2s",
            "--concurrency",
            &users,
            "--duration",
            &length,
        ],
    );
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let report: Value = serde_json::from_slice(&output.stdout).map_err(|error| {
        anyhow::anyhow!(
            "sitegridctl bench --workload idp gave no report ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    println!(
        "  {} logins/s, {} anomalies",
        report["logins_per_sec"], report["anomalies"]
    );
    Ok(Results { report })
}
