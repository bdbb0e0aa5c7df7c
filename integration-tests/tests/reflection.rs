//! A generic gRPC client with no proto file (`buf curl`, through server reflection) lists
//! a node's services and reads an entry.

use sitegrid_integration_tests::requests::put;
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::cache_client::CacheClient;

fn buf_curl(args: &[&str]) -> String {
    let output = std::process::Command::new("buf")
        .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"])
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run buf ({error}): install it with `python3 -m pip install -r \
                 .ci/requirements.txt`"
            )
        });
    assert!(output.status.success(), "buf curl {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn buf_curl_lists_the_services_and_reads_an_entry_through_reflection() {
    let node = NodeProcess::start(NodeSpec::new("reflection"))
        .await
        .unwrap();
    CacheClient::new(node.channel().await.unwrap())
        .put(put("work", "greeting", "hello"))
        .await
        .unwrap();
    let base = format!("http://{}", node.grpc_addr());
    let services = buf_curl(&["--list-services", &base]);
    for service in [
        "sitegrid.v1.Cache",
        "sitegrid.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} not in {services}"
        );
    }
    // {"cache": "work", "key": "greeting"}, bytes as base64.
    let got = buf_curl(&[
        "-d",
        r#"{"cache":"work","key":"Z3JlZXRpbmc="}"#,
        &format!("{base}/sitegrid.v1.Cache/Get"),
    ]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["found"], true, "{got}");
    assert_eq!(got["value"], "aGVsbG8=", "{got}");
}
