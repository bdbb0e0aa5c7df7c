//! `sitegridctl`'s exit codes, as scripts rely on them: 2 on bad usage, 1 when a request
//! fails, each with a message that says what went wrong.

use std::process::Command;

fn sitegridctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sitegridctl"))
        .args(args)
        .env_remove("SITEGRID_ENDPOINT")
        .output()
        .unwrap()
}

#[test]
fn bad_usage_exits_with_2_and_names_the_problem() {
    let output = sitegridctl(&["cache", "put", "--cache", "sessions"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("<KEY>") || stderr.contains("required"),
        "{stderr}"
    );
}

#[test]
fn a_request_no_node_answers_exits_with_1_and_says_so() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let output = sitegridctl(&[
        "-e",
        &endpoint,
        "--timeout",
        "2s",
        "cache",
        "get",
        "--cache",
        "sessions",
        "k",
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        !String::from_utf8_lossy(&output.stderr).trim().is_empty(),
        "{output:?}"
    );
}
