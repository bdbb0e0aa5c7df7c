//! `sitegridctl`, the operator CLI, run as a real process against a real node: what it
//! prints (in both formats), its exit codes, its inputs (`@file`, `base64:`), where it
//! finds its endpoint, and `cache listen` as a long-running child.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sitegrid_integration_tests::node::ctl_binary;
use sitegrid_integration_tests::ports::free_loopback_addr;
use sitegrid_integration_tests::requests::put;
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::GetRequest;
use sitegrid_proto::v1::cache_client::CacheClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long one CLI run, or the wait for one line of `cache listen`, may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Variables of the test's environment the CLI reads; removed so that they cannot leak
/// into a run (the tests that use one set it themselves).
const CLI_VARIABLES: [&str; 6] = [
    "SITEGRID_ENDPOINT",
    "SITEGRID_TOKEN",
    "SITEGRID_TLS_CA",
    "SITEGRID_TLS_CERT",
    "SITEGRID_TLS_KEY",
    "SITEGRID_TLS_SERVER_NAME",
];

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts that the run succeeded; returns its stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "the command failed: {self:#?}");
        &self.stdout
    }

    /// The one JSON object a successful `--output json` run printed.
    fn json(&self) -> Value {
        let lines = self.json_lines();
        assert_eq!(lines.len(), 1, "one JSON line expected: {self:#?}");
        lines.into_iter().next().unwrap()
    }

    /// Every JSON line a successful `--output json` run printed.
    fn json_lines(&self) -> Vec<Value> {
        self.ok()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("not JSON ({error}): {line:?} in {self:#?}"))
            })
            .collect()
    }
}

/// A `sitegridctl` command with a clean environment (none of [`CLI_VARIABLES`]).
fn ctl_command() -> Command {
    let mut command = Command::new(ctl_binary());
    for name in CLI_VARIABLES {
        command.env_remove(name);
    }
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end (within [`DEADLINE`]).
async fn run(mut command: Command) -> Run {
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not end within {DEADLINE:?}"))
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("the CLI prints UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `sitegridctl -e ENDPOINT ARGS...` against `node`.
async fn ctl(node: &NodeProcess, args: &[&str]) -> Run {
    let mut command = ctl_command();
    command
        .arg("--endpoint")
        .arg(node.grpc_addr().to_string())
        .args(args);
    run(command).await
}

/// A node of its own for one test.
async fn node(name: &str) -> NodeProcess {
    NodeProcess::start(NodeSpec::new(name)).await.unwrap()
}

/// What the node holds at `key` of `cache`, read over gRPC (not through the CLI).
async fn stored(node: &NodeProcess, cache: &str, key: &[u8]) -> Option<Bytes> {
    let mut client = CacheClient::new(node.channel().await.unwrap());
    let got = client
        .get(GetRequest {
            cache: cache.into(),
            key: Bytes::copy_from_slice(key),
        })
        .await
        .unwrap()
        .into_inner();
    got.found.then_some(got.value)
}

#[tokio::test]
async fn put_then_get_in_json_returns_the_value_and_its_version() {
    let node = node("cli-get").await;

    let stored_put = ctl(
        &node,
        &[
            "-o",
            "json",
            "cache",
            "put",
            "-c",
            "work",
            "k1",
            "hello world",
        ],
    )
    .await
    .json();
    assert_eq!(stored_put["stored"], true, "{stored_put}");
    assert_eq!(stored_put["previous"], Value::Null, "{stored_put}");
    let version = stored_put["version"].as_u64().expect("a numeric version");
    assert!(version > 0, "{stored_put}");

    let got = ctl(
        &node,
        &["--output", "json", "cache", "get", "--cache", "work", "k1"],
    )
    .await
    .json();
    assert_eq!(got["found"], true, "{got}");
    let entry = &got["entry"];
    assert_eq!(entry["key"], "k1", "{got}");
    assert_eq!(entry["value"], "hello world", "{got}");
    assert_eq!(entry["version"], version, "{got}");
    assert_eq!(entry["origin_site"], "site1", "{got}");
    assert_eq!(entry["lifespan_ms"], Value::Null, "{got}");

    // The table format shows the same entry, one field per line.
    let table = ctl(&node, &["cache", "get", "-c", "work", "k1"]).await;
    let table = table.ok();
    assert!(table.starts_with("key         k1\n"), "{table}");
    assert!(table.contains("value       hello world\n"), "{table}");
    assert!(
        table.contains(&format!("version     {version}\n")),
        "{table}"
    );

    // A second put replaces the value under a newer version, and can show what it
    // replaced.
    let replaced = ctl(
        &node,
        &[
            "-o",
            "json",
            "cache",
            "put",
            "-c",
            "work",
            "k1",
            "second",
            "--return-previous",
        ],
    )
    .await
    .json();
    assert!(
        replaced["version"].as_u64().unwrap() > version,
        "{replaced}"
    );
    assert_eq!(replaced["previous"]["value"], "hello world", "{replaced}");
    assert_eq!(
        stored(&node, "work", b"k1").await.as_deref(),
        Some(&b"second"[..])
    );
}

#[tokio::test]
async fn put_if_absent_stores_once_then_reports_the_existing_entry() {
    let node = node("cli-pia").await;

    let first = ctl(
        &node,
        &["cache", "put-if-absent", "-c", "work", "k", "first"],
    )
    .await;
    let first = first.ok();
    let version: u64 = first
        .strip_prefix("stored version ")
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("`stored version N` expected: {first:?}"));

    // Refused: still a success (exit 0), saying so, with the entry that is there.
    let second = ctl(
        &node,
        &["cache", "put-if-absent", "-c", "work", "k", "second"],
    )
    .await;
    let second = second.ok();
    assert!(
        second.starts_with("not stored: present\nexisting:\n  value       first\n"),
        "{second}"
    );
    assert!(
        second.contains(&format!("  version     {version}\n")),
        "{second}"
    );

    let refused = ctl(
        &node,
        &[
            "-o",
            "json",
            "cache",
            "put-if-absent",
            "-c",
            "work",
            "k",
            "third",
        ],
    )
    .await
    .json();
    assert_eq!(refused["stored"], false, "{refused}");
    assert_eq!(refused["existing"]["value"], "first", "{refused}");
    assert_eq!(refused["existing"]["version"], version, "{refused}");

    assert_eq!(
        stored(&node, "work", b"k").await.as_deref(),
        Some(&b"first"[..])
    );
    // On an absent key it stores, in JSON too.
    let other = ctl(
        &node,
        &[
            "-o",
            "json",
            "cache",
            "put-if-absent",
            "-c",
            "work",
            "k2",
            "v",
        ],
    )
    .await
    .json();
    assert_eq!(other["stored"], true, "{other}");
    assert!(other["version"].as_u64().unwrap() > version, "{other}");
}

#[tokio::test]
async fn values_from_a_file_or_base64_are_stored_byte_for_byte() {
    let node = node("cli-input").await;
    let dir = tempfile::tempdir().unwrap();

    // A binary file (every byte value, not UTF-8, with newlines and NULs), 64 KiB.
    let binary: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(std::str::from_utf8(&binary).is_err());
    let binary_path = dir.path().join("value.bin");
    std::fs::write(&binary_path, &binary).unwrap();
    let at_binary = format!("@{}", binary_path.display());
    ctl(&node, &["cache", "put", "-c", "work", "bin", &at_binary])
        .await
        .ok();
    assert_eq!(
        stored(&node, "work", b"bin").await.as_deref(),
        Some(&binary[..]),
        "the file's bytes, exactly"
    );

    // A text file keeps its trailing newline; get shows it in JSON.
    let text_path = dir.path().join("value.txt");
    std::fs::write(&text_path, "line 1\nline 2\n").unwrap();
    let at_text = format!("@{}", text_path.display());
    ctl(&node, &["cache", "put", "-c", "work", "text", &at_text])
        .await
        .ok();
    let got = ctl(&node, &["-o", "json", "cache", "get", "-c", "work", "text"])
        .await
        .json();
    assert_eq!(got["entry"]["value"], "line 1\nline 2\n", "{got}");

    // base64: the decoded bytes are stored, and read back as the same base64.
    ctl(
        &node,
        &["cache", "put", "-c", "work", "b64", "base64:AAEC//79"],
    )
    .await
    .ok();
    assert_eq!(
        stored(&node, "work", b"b64").await.as_deref(),
        Some(&[0x00, 0x01, 0x02, 0xff, 0xfe, 0xfd][..])
    );
    let got = ctl(&node, &["-o", "json", "cache", "get", "-c", "work", "b64"])
        .await
        .json();
    assert_eq!(
        got["entry"]["value"],
        json!({ "base64": "AAEC//79" }),
        "{got}"
    );
    let table = ctl(&node, &["cache", "get", "-c", "work", "b64"]).await;
    assert!(
        table.ok().contains("value       base64:AAEC//79\n"),
        "what prints can be pasted back: {table:?}"
    );

    // A binary key, in base64 too.
    ctl(
        &node,
        &["cache", "put", "-c", "work", "base64:/w==", "at 0xff"],
    )
    .await
    .ok();
    assert_eq!(
        stored(&node, "work", &[0xff]).await.as_deref(),
        Some(&b"at 0xff"[..])
    );
    let got = ctl(
        &node,
        &["-o", "json", "cache", "get", "-c", "work", "base64:/w=="],
    )
    .await
    .json();
    assert_eq!(got["entry"]["key"], json!({ "base64": "/w==" }), "{got}");
    assert_eq!(got["entry"]["value"], "at 0xff", "{got}");

    // `@` means a file only for values: a key `@name` is text.
    ctl(&node, &["cache", "put", "-c", "work", "@home", "x"])
        .await
        .ok();
    assert_eq!(
        stored(&node, "work", b"@home").await.as_deref(),
        Some(&b"x"[..])
    );
}

#[tokio::test]
async fn size_entries_remove_and_clear_act_on_the_cache() {
    let node = node("cli-entries").await;
    for (key, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
        ctl(&node, &["cache", "put", "-c", "work", key, value])
            .await
            .ok();
    }
    // Another cache's entry counts for neither size nor entries of `work`.
    ctl(&node, &["cache", "put", "-c", "sessions", "s", "x"])
        .await
        .ok();

    let size = ctl(&node, &["cache", "size", "-c", "work"]).await;
    assert_eq!(size.ok(), "size 3\n");
    let size = ctl(&node, &["-o", "json", "cache", "size", "-c", "work"]).await;
    assert_eq!(size.json(), json!({ "size": 3 }));

    let entries = ctl(&node, &["-o", "json", "cache", "entries", "-c", "work"])
        .await
        .json_lines();
    let listed: BTreeSet<(String, String)> = entries
        .iter()
        .map(|entry| {
            (
                entry["key"].as_str().unwrap().to_owned(),
                entry["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [("a", "1"), ("b", "2"), ("c", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(listed, expected, "{entries:?}");
    assert!(entries.iter().all(|e| e["version"].as_u64().unwrap() > 0));

    let table = ctl(&node, &["cache", "entries", "-c", "work"]).await;
    let table = table.ok();
    for row in ["a = 1  [version ", "b = 2  [version ", "c = 3  [version "] {
        assert!(table.contains(row), "{table}");
    }
    assert!(table.ends_with("(3 entries)\n"), "{table}");
    let keys_only = ctl(
        &node,
        &[
            "-o",
            "json",
            "cache",
            "entries",
            "-c",
            "work",
            "--keys-only",
        ],
    )
    .await
    .json_lines();
    assert_eq!(keys_only.len(), 3, "{keys_only:?}");
    assert!(
        keys_only.iter().all(|e| e.get("value").is_none()),
        "{keys_only:?}"
    );

    // remove: prints what it removed; the key is then not found (exit 0, `not found`).
    let removed = ctl(&node, &["-o", "json", "cache", "remove", "-c", "work", "b"])
        .await
        .json();
    assert_eq!(removed["removed"], true, "{removed}");
    assert_eq!(removed["previous"]["value"], "2", "{removed}");
    let missing = ctl(&node, &["cache", "get", "-c", "work", "b"]).await;
    assert_eq!(missing.ok(), "not found\n");
    let missing = ctl(&node, &["-o", "json", "cache", "get", "-c", "work", "b"]).await;
    assert_eq!(missing.json(), json!({ "found": false }));
    assert_eq!(stored(&node, "work", b"b").await, None);
    let again = ctl(&node, &["cache", "remove", "-c", "work", "b"]).await;
    assert_eq!(again.ok(), "not removed: absent\n");
    let size = ctl(&node, &["-o", "json", "cache", "size", "-c", "work"]).await;
    assert_eq!(size.json(), json!({ "size": 2 }));

    // clear: removes the two left, in this cache only.
    let cleared = ctl(&node, &["-o", "json", "cache", "clear", "-c", "work"]).await;
    assert_eq!(cleared.json(), json!({ "removed": 2 }));
    let size = ctl(&node, &["cache", "size", "-c", "work"]).await;
    assert_eq!(size.ok(), "size 0\n");
    let table = ctl(&node, &["cache", "entries", "-c", "work"]).await;
    assert_eq!(table.ok(), "(0 entries)\n");
    assert_eq!(stored(&node, "work", b"a").await, None);
    assert_eq!(
        stored(&node, "sessions", b"s").await.as_deref(),
        Some(&b"x"[..])
    );
}

#[tokio::test]
async fn cluster_status_shows_the_node_and_its_site() {
    let mut spec = NodeSpec::new("cli-status-node");
    spec.site = "lisbon".into();
    spec.site_id = 7;
    let node = NodeProcess::start(spec).await.unwrap();

    let table = ctl(&node, &["cluster", "status"]).await;
    let table = table.ok();
    assert!(table.starts_with("node      cli-status-node\n"), "{table}");
    assert!(table.contains("site      lisbon (id 7)\n"), "{table}");
    assert!(table.contains("\nCACHE "), "{table}");

    ctl(&node, &["cache", "put", "-c", "work", "k", "v"])
        .await
        .ok();
    let status = ctl(&node, &["-o", "json", "cluster", "status"])
        .await
        .json();
    assert_eq!(status["node"], "cli-status-node", "{status}");
    assert_eq!(status["site"], "lisbon", "{status}");
    assert_eq!(status["site_id"], 7, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    let work = status["caches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cache| cache["name"] == "work")
        .unwrap_or_else(|| panic!("no cache work: {status}"));
    assert_eq!(work["size"], 1, "{status}");
}

#[tokio::test]
async fn the_endpoint_may_come_from_sitegrid_endpoint() {
    let node = node("cli-env").await;
    let endpoint = node.grpc_addr().to_string();
    let with_env = |args: &[&str]| {
        let mut command = ctl_command();
        command.env("SITEGRID_ENDPOINT", &endpoint).args(args);
        command
    };

    let status = run(with_env(&["-o", "json", "cluster", "status"]))
        .await
        .json();
    assert_eq!(status["node"], "cli-env", "{status}");

    run(with_env(&["cache", "put", "-c", "work", "k", "from env"]))
        .await
        .ok();
    assert_eq!(
        stored(&node, "work", b"k").await.as_deref(),
        Some(&b"from env"[..])
    );
    let got = run(with_env(&["-o", "json", "cache", "get", "-c", "work", "k"]))
        .await
        .json();
    assert_eq!(got["entry"]["value"], "from env", "{got}");

    // --endpoint wins over the variable: a variable naming no server is not used.
    let dead = free_loopback_addr().to_string();
    let mut command = ctl_command();
    command
        .env("SITEGRID_ENDPOINT", &dead)
        .args(["-e", &endpoint, "-o", "json", "cluster", "status"]);
    assert_eq!(run(command).await.json()["node"], "cli-env");
    // ...and the variable really is read: naming no server, it fails.
    let mut command = ctl_command();
    command
        .env("SITEGRID_ENDPOINT", &dead)
        .args(["--timeout", "2s", "cluster", "status"]);
    let failed = run(command).await;
    assert_eq!(failed.code, Some(1), "{failed:#?}");
    assert!(failed.stderr.starts_with("error: "), "{failed:#?}");
}

/// A running `cache listen` and the lines it printed.
struct Listener {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Listener {
    /// Starts `sitegridctl -e NODE -o json cache listen ARGS...`.
    fn start(node: &NodeProcess, args: &[&str]) -> Listener {
        let mut command = ctl_command();
        command
            .arg("--endpoint")
            .arg(node.grpc_addr().to_string())
            .args(["-o", "json", "cache", "listen"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Listener {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next event printed, within [`DEADLINE`].
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(DEADLINE, self.lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no event within {DEADLINE:?}; printed so far:\n{}",
                    self.seen.join("\n")
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "cache listen ended its output; printed:\n{}",
                    self.seen.join("\n")
                )
            });
        self.seen.push(line.clone());
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
    }

    /// Events until the first about `key` (within [`DEADLINE`] each); returns it and the
    /// ones before it.
    async fn until_key(&mut self, key: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let event = self.next().await;
            if event["key"] == key {
                return (event, before);
            }
            before.push(event);
        }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn listen_prints_each_change_of_the_cache_as_it_happens() {
    let node = node("cli-listen").await;
    let mut client = CacheClient::new(node.channel().await.unwrap());
    // An entry from before: `--current-state` prints it first, which also tells that the
    // subscription is open (the CLI prints it only once the stream is synced).
    client.put(put("work", "before", "old")).await.unwrap();

    let mut listener = Listener::start(&node, &["--cache", "work", "--current-state"]);
    let mut keys_only = Listener::start(
        &node,
        &[
            "-c",
            "work",
            "--current-state",
            "--keys-only",
            "--count",
            "3",
        ],
    );
    let (first, _) = listener.until_key("before").await;
    assert_eq!(first["kind"], "created", "{first}");
    assert_eq!(first["value"], "old", "{first}");
    let (first, _) = keys_only.until_key("before").await;
    assert_eq!(first["kind"], "created", "{first}");

    // A write of another cache, then one of `work` through the CLI.
    client.put(put("sessions", "elsewhere", "x")).await.unwrap();
    let written = ctl(
        &node,
        &[
            "-o",
            "json",
            "cache",
            "put",
            "-c",
            "work",
            "live",
            "new value",
        ],
    )
    .await
    .json();
    let version = written["version"].as_u64().unwrap();
    let (created, before) = listener.until_key("live").await;
    assert!(
        before.is_empty(),
        "nothing but the write of work in between: {before:?}"
    );
    assert_eq!(created["kind"], "created", "{created}");
    assert_eq!(created["cache"], "work", "{created}");
    assert_eq!(created["value"], "new value", "{created}");
    assert_eq!(created["version"], version, "{created}");
    assert_eq!(created["origin_site"], "site1", "{created}");

    ctl(&node, &["cache", "put", "-c", "work", "live", "newer"])
        .await
        .ok();
    let (modified, _) = listener.until_key("live").await;
    assert_eq!(modified["kind"], "modified", "{modified}");
    assert_eq!(modified["value"], "newer", "{modified}");
    ctl(&node, &["cache", "remove", "-c", "work", "live"])
        .await
        .ok();
    let (removed, _) = listener.until_key("live").await;
    assert_eq!(removed["kind"], "removed", "{removed}");
    assert!(removed["version"].as_u64().unwrap() > version, "{removed}");

    // --keys-only: the same changes without values; --count 3 ends it by itself.
    let (created, before) = keys_only.until_key("live").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(created["kind"], "created", "{created}");
    assert_eq!(created["version"], version, "{created}");
    assert_eq!(created["value"], Value::Null, "{created}");
    assert!(created.get("tags").is_none(), "no metadata: {created}");
    let (modified, _) = keys_only.until_key("live").await;
    assert_eq!(modified["kind"], "modified", "{modified}");
    assert_eq!(modified["value"], Value::Null, "{modified}");
    let exit = tokio::time::timeout(DEADLINE, keys_only.child.wait())
        .await
        .expect("--count 3 ends listen after its third event")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    listener.stop().await;
}

#[tokio::test]
async fn bad_input_fails_with_a_clear_error_and_a_non_zero_exit() {
    let node = node("cli-errors").await;

    // An unknown cache: the request fails (exit 1), naming the cache.
    let unknown = ctl(&node, &["cache", "get", "-c", "nope", "k"]).await;
    assert_eq!(unknown.code, Some(1), "{unknown:#?}");
    assert!(unknown.stdout.is_empty(), "{unknown:#?}");
    assert!(
        unknown.stderr.starts_with("error: ") && unknown.stderr.contains("unknown cache \"nope\""),
        "{unknown:#?}"
    );
    let unknown = ctl(&node, &["cache", "put", "-c", "nope", "k", "v"]).await;
    assert_eq!(unknown.code, Some(1), "{unknown:#?}");
    assert!(unknown.stderr.contains("nope"), "{unknown:#?}");

    // Invalid base64: bad usage (exit 2), saying which argument; nothing is written.
    let value = ctl(&node, &["cache", "put", "-c", "work", "k", "base64:!!"]).await;
    assert_eq!(value.code, Some(2), "{value:#?}");
    assert!(
        value
            .stderr
            .starts_with("error: value is not valid base64: "),
        "{value:#?}"
    );
    assert_eq!(stored(&node, "work", b"k").await, None);
    let key = ctl(&node, &["cache", "get", "-c", "work", "base64:%%"]).await;
    assert_eq!(key.code, Some(2), "{key:#?}");
    assert!(
        key.stderr.starts_with("error: key is not valid base64: "),
        "{key:#?}"
    );

    // A value file that does not exist: exit 2, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.bin");
    let at_missing = format!("@{}", missing.display());
    let file = ctl(&node, &["cache", "put", "-c", "work", "k", &at_missing]).await;
    assert_eq!(file.code, Some(2), "{file:#?}");
    assert!(
        file.stderr
            .contains(&format!("cannot read value file {}", missing.display())),
        "{file:#?}"
    );
    assert_eq!(stored(&node, "work", b"k").await, None);

    // A missing --cache is a usage error from the parser (exit 2), naming the option.
    let usage = ctl(&node, &["cache", "get", "k"]).await;
    assert_eq!(usage.code, Some(2), "{usage:#?}");
    assert!(usage.stderr.contains("--cache"), "{usage:#?}");
}
