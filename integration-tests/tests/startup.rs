//! Starting a node: the no-config default, and refusing bad configs with a clear message
//! and exit code 2.

use sitegrid_integration_tests::http::metric;
use sitegrid_integration_tests::node::run_to_exit;
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::ClusterStatusRequest;
use sitegrid_proto::v1::admin_client::AdminClient;

#[tokio::test]
async fn without_a_config_file_a_node_runs_alone_with_the_default_caches() {
    let spec = NodeSpec {
        without_config_file: true,
        ..NodeSpec::new("defaults")
    };
    let node = NodeProcess::start(spec).await.unwrap();
    let mut admin = AdminClient::new(node.channel().await.unwrap());
    let status = admin
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.site, "local");
    assert_eq!(status.caches.len(), 5);
    assert!(node.log().contains("no config file"), "{}", node.log());
    // Persistent caches live under ./data of the working directory.
    assert!(node.dir().join("data").join("store").exists());
}

#[tokio::test]
async fn a_node_runs_requests_on_the_worker_threads_it_is_given() {
    for threads in [1, 3] {
        let node = NodeProcess::start(NodeSpec {
            worker_threads: Some(threads),
            ..NodeSpec::new(&format!("threads-{threads}"))
        })
        .await
        .unwrap();
        let reported = metric(node.http_addr(), "sitegrid_worker_threads")
            .await
            .unwrap();
        assert_eq!(reported, threads as f64);
    }
}

#[test]
fn a_config_that_breaks_a_rule_is_refused_with_exit_code_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[caches.sessions]\nlifespan = \"0s\"\n").unwrap();
    let (status, output) =
        run_to_exit(&["--config", path.to_str().unwrap()], &[], dir.path()).unwrap();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains("caches.sessions.lifespan: must be > 0"),
        "{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn an_unknown_field_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[node]\nlisten_address = \"127.0.0.1:1\"\n").unwrap();
    let (status, output) =
        run_to_exit(&["--config", path.to_str().unwrap()], &[], dir.path()).unwrap();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("listen_address"), "{output}");
}

#[test]
fn a_missing_config_file_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let (status, output) = run_to_exit(
        &[],
        &[("SITEGRID_CONFIG", "/nonexistent/sitegrid.toml")],
        dir.path(),
    )
    .unwrap();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("/nonexistent/sitegrid.toml"), "{output}");
}

#[test]
fn a_bad_environment_override_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let (status, output) = run_to_exit(&[], &[("SITEGRID_SITE_ID", "300")], dir.path()).unwrap();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("node.site_id"), "{output}");
}
