//! `make demo` as a user meets it: four nodes and two identity nodes come up, a write in
//! one site reaches the identity nodes of both, the printed commands work, and Ctrl-C
//! stops every process.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sitegrid_integration_tests::eventually;
use sitegrid_integration_tests::node::ctl_binary;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The lines the demo prints, as they come.
async fn lines_until(
    lines: &mut mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !done(seen) {
            match lines.recv().await {
                Some(line) => seen.push(line),
                None => return false,
            }
        }
        true
    })
    .await;
    assert!(
        matches!(waited, Ok(true)),
        "the demo never printed {what}; it printed:\n{}",
        seen.join("\n")
    );
}

/// The value of `-e` in the printed command line that contains `marker`.
fn endpoint_in(seen: &[String], marker: &str) -> String {
    let line = seen
        .iter()
        .find(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("no printed command with {marker:?}"));
    let mut words = line.split_whitespace();
    words.find(|word| *word == "-e");
    words.next().expect("an endpoint after -e").to_string()
}

#[tokio::test]
async fn the_demo_brings_up_two_sites_whose_identity_nodes_see_each_write_and_stops_on_ctrl_c() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sitegrid-demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (sender, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = sender.send(line);
        }
    });
    let mut seen = Vec::new();
    lines_until(&mut lines, &mut seen, "that it is ready", |seen| {
        seen.iter()
            .any(|line| line.contains("Ctrl-C stops everything"))
    })
    .await;
    let nodes: Vec<String> = seen
        .iter()
        .filter(|line| line.contains(": gRPC "))
        .map(|line| line.split_whitespace().nth(3).unwrap().to_string())
        .collect();
    assert_eq!(nodes.len(), 4, "four nodes: {seen:?}");

    // The printed commands, run as printed (with the sitegridctl of this build).
    let site1 = endpoint_in(&seen, "cache put --cache sessions s1");
    let site2 = endpoint_in(&seen, "cache get --cache sessions s1");
    let ctl = |endpoint: &str, args: &[&str]| {
        let mut command = std::process::Command::new(ctl_binary());
        command.arg("-e").arg(endpoint).args(args);
        command
    };
    let put = ctl(
        &site1,
        &["cache", "put", "--cache", "sessions", "s1", "alice"],
    )
    .output()
    .unwrap();
    assert!(put.status.success(), "{put:?}");
    let got = ctl(&site2, &["cache", "get", "--cache", "sessions", "s1"])
        .output()
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("alice"),
        "{got:?}"
    );
    let status = ctl(&site1, &["site", "status"]).output().unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("site2"),
        "{status:?}"
    );

    // Both identity nodes print the write, with the site it came from.
    lines_until(
        &mut lines,
        &mut seen,
        "the write at both identity nodes",
        |seen| {
            ["idp-site1", "idp-site2"].iter().all(|idp| {
                seen.iter().any(|line| {
                    line.starts_with(idp)
                        && line.contains("created sessions/s1")
                        && line.contains("from site1")
                })
            })
        },
    )
    .await;

    // Ctrl-C: the demo and every node it started stop.
    kill(Pid::from_raw(demo.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo stops on Ctrl-C")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    for node in &nodes {
        let node = node.clone();
        eventually("the node to stop", Duration::from_secs(10), || {
            let node = node.clone();
            async move { tokio::net::TcpStream::connect(&node).await.is_err() }
        })
        .await
        .unwrap();
    }
}
