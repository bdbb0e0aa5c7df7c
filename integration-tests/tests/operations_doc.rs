//! `docs/operations.md` documents every config field: the reference table is checked
//! against the config types, so a field added without its line fails here.

use std::collections::BTreeSet;
use std::path::Path;

use sitegrid_config::Config;

/// A config with every optional field set, so serializing it shows them all.
const FULL: &str = r#"
[node]
name = "n1"
worker_threads = 2

[caches.sessions]
lifespan = "1h"
max_idle = "30m"
backup = { site2 = { strategy = "sync", failure_policy = "fail", timeout = "2s" } }

[[sites]]
name = "site2"
endpoints = ["10.0.2.11:11222"]

[witness]
endpoint = "10.0.3.1:11300"

[security]
audit_log = "/var/log/sitegrid/audit.log"
tls = { cert = "node.crt", key = "node.key", ca = "ca.crt" }

[[security.principals]]
name = "keycloak"
role = "application"
token_sha256 = "9c6709dedf8105374733621fd2ff9fbfbde08a2e6709a0b3c3eff6a289cd597f"
certificate = "keycloak.example"
caches = ["sessions"]
"#;

/// Every field's dotted path, with cache and site names as `<cache>` and `<site>`.
fn paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = match prefix {
                    "caches" => "<cache>",
                    p if p.ends_with(".backup") => "<site>",
                    _ => key.as_str(),
                };
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                if value.is_table()
                    || value
                        .as_array()
                        .is_some_and(|a| a.iter().all(toml::Value::is_table) && !a.is_empty())
                {
                    out.insert(path.clone());
                }
                paths(value, &path, out);
            }
        }
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            for item in items {
                paths(item, prefix, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn the_operations_guide_names_every_config_field() {
    let config = Config::from_toml(FULL, "FULL").unwrap();
    config.validate().unwrap();
    let value = toml::Value::try_from(&config).unwrap();
    let mut fields = BTreeSet::new();
    paths(&value, "", &mut fields);
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let reference = guide
        .split("## Config reference")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Config reference section");
    let documented: BTreeSet<&str> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split('`').next())
        .collect();
    let sections = [
        "node",
        "store",
        "limits",
        "events",
        "caches",
        "caches.<cache>",
        "caches.<cache>.backup",
        "caches.<cache>.backup.<site>",
        "relay",
        "witness",
        "sites.take_offline",
        "security",
        "security.tls",
    ];
    let missing: Vec<&String> = fields
        .iter()
        .filter(|field| !documented.contains(field.as_str()) && !sections.contains(&field.as_str()))
        .collect();
    assert!(missing.is_empty(), "docs/operations.md lacks {missing:?}");
    let stale: Vec<&&str> = documented
        .iter()
        .filter(|field| !fields.contains(**field))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/operations.md documents fields that do not exist: {stale:?}"
    );
}
