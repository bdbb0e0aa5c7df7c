//! The Python example client (`examples/python/`), generated from `proto/` with
//! grpcio-tools, against a real node: its writes land, its listener sees them.

use std::path::Path;

use sitegrid_integration_tests::requests::get;
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::cache_client::CacheClient;

#[tokio::test]
async fn the_python_example_writes_reads_uses_a_token_once_and_hears_its_changes() {
    let node = NodeProcess::start(NodeSpec::new("python")).await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stubs = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(root.join("examples/python/example.py"))
        .arg("--target")
        .arg(node.grpc_addr().to_string())
        .arg("--stubs-dir")
        .arg(stubs.path())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!(
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the example failed (install its packages with `python3 -m pip install -r \
         .ci/requirements.txt`): {report}"
    );
    for expected in [
        "(first use): stored",
        "(replay): not stored",
        "event EVENT_KIND_CREATED sessions/session-",
        "event EVENT_KIND_REMOVED sessions/session-",
    ] {
        assert!(stdout.contains(expected), "no {expected:?}: {report}");
    }
    // The token it used is on the node.
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix("token-key "))
        .unwrap_or_else(|| panic!("no token key printed: {report}"));
    let mut cache = CacheClient::new(node.channel().await.unwrap());
    let got = cache
        .get(get("actionTokens", token))
        .await
        .unwrap()
        .into_inner();
    assert!(got.found, "{token} is not on the node");
    assert_eq!(&got.value[..], b"used");
}

#[tokio::test]
async fn the_python_example_says_clearly_when_the_proto_folder_is_wrong() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stubs = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(root.join("examples/python/example.py"))
        .arg("--stubs-dir")
        .arg(stubs.path())
        .arg("--proto-dir")
        .arg(stubs.path())
        .output()
        .await
        .expect("python3 runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--proto-dir must be sitegrid's proto/ folder"),
        "{stderr}"
    );
}
