//! `sitegridctl bench --workload idp` against two real sites: logins go through with no
//! anomaly, and the anomalies it counts are real (sites that skip their sync backups
//! accept one action token in both).

use sitegrid_integration_tests::node::ctl_binary;
use sitegrid_integration_tests::{NodeSpec, TwoSites};

/// Runs the workload for `seconds` against both sites; its JSON report and exit code.
fn idp(sites: &TwoSites, seconds: u32) -> (serde_json::Value, Option<i32>) {
    let duration = format!("{seconds}s");
    let output = sites
        .idp_bench(
            &ctl_binary(),
            &[
                "--concurrency",
                "8",
                "--warmup",
                "0s",
                "--duration",
                &duration,
            ],
        )
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("no JSON report ({error}): {output:?}");
    });
    (report, output.status.code())
}

#[tokio::test]
async fn logins_through_both_sites_show_no_anomaly() {
    let sites = TwoSites::start_direct(2, "").await.unwrap();
    let (report, code) = idp(&sites, 3);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["anomalies"], 0, "{report:#}");
    assert!(report["logins"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        report["logins_per_sec"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6, "{report:#}");
    for step in steps {
        assert!(step["answered"].as_u64().unwrap() > 0, "{step:#}");
    }
}

#[tokio::test]
async fn sites_that_skip_their_sync_backups_are_caught_accepting_a_token_twice() {
    let sites = TwoSites::start(
        1,
        |_, name| NodeSpec::new(name).with_fault("skip-sync-backups"),
        |_, peers| peers.iter().map(|a| a.to_string()).collect(),
    )
    .await
    .unwrap();
    let (report, code) = idp(&sites, 3);
    assert_eq!(code, Some(1), "{report:#}");
    assert!(report["anomalies"].as_u64().unwrap() > 0, "{report:#}");
    let examples = report["anomaly_examples"].to_string();
    assert!(examples.contains("accepted 2 times"), "{report:#}");
}
