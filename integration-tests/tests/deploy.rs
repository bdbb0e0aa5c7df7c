//! The deployment files (`Dockerfile`, `deploy/`) agree with sitegrid: the manifests
//! pass Kubernetes' schemas, every config loads with sitegrid's own loader, and ports and
//! flags match the image, the config and the binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sitegrid_config::{Config, Environment, Strategy};
use sitegrid_integration_tests::node::node_binary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The config as a node in a pod loads it: the file, then the environment the
/// StatefulSet sets (pod name, pod IP), then validation.
fn load_as_pod(path: &str) -> Config {
    let env = Environment::from_pairs([
        ("SITEGRID_NODE_NAME", "sitegrid-0"),
        ("SITEGRID_LISTEN", "10.1.0.5:11222"),
        ("SITEGRID_GOSSIP", "10.1.0.5:7946"),
        ("SITEGRID_HTTP", "10.1.0.5:9464"),
    ]);
    Config::load(Some(&root().join(path)), &env).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn each_site_config_loads_and_names_the_other_site_as_its_peer() {
    for (site, peer) in [("site1", "site2"), ("site2", "site1")] {
        let config = load_as_pod(&format!("deploy/k8s/{site}/sitegrid.toml"));
        assert_eq!(config.node.site, site);
        assert_eq!(config.node.name, "sitegrid-0");
        let peers: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(peers, [peer], "{site}");
        assert!(!config.node.seeds.is_empty(), "{site}: gossip seeds");
        // The design's caches, each backed up to the peer: login failures asynchronously,
        // the rest synchronously; the session caches on disk.
        for (cache, strategy, persistent) in [
            ("sessions", Strategy::Sync, true),
            ("offlineSessions", Strategy::Sync, true),
            ("actionTokens", Strategy::Sync, false),
            ("loginFailures", Strategy::Async, false),
            ("work", Strategy::Sync, false),
        ] {
            let settings = config
                .cache(cache)
                .unwrap_or_else(|| panic!("{site}: no cache {cache}"));
            let backup = settings
                .backup_for(cache, peer)
                .unwrap_or_else(|| panic!("{site}: {cache} is not backed up to {peer}"));
            assert_eq!(backup.strategy, strategy, "{site}: {cache} to {peer}");
            assert_eq!(
                settings.persistent, persistent,
                "{site}: {cache} persistent"
            );
        }
    }
    let ids: BTreeSet<u16> = ["site1", "site2"]
        .iter()
        .map(|site| {
            load_as_pod(&format!("deploy/k8s/{site}/sitegrid.toml"))
                .node
                .site_id
        })
        .collect();
    assert_eq!(ids.len(), 2, "the two sites need different site ids");
    let systemd = load_as_pod("deploy/systemd/sitegrid.toml");
    assert_eq!(systemd.sites.len(), 1);
}

/// The manifests of each site's kustomization (besides the generated ConfigMap).
const MANIFESTS: [&str; 4] = ["namespace", "services", "statefulset", "pdb"];

/// The oldest Kubernetes the manifests are checked against: nothing newer may be used.
const OLDEST_KUBERNETES: &str = "1.34.0";

#[test]
fn the_manifests_pass_the_kubernetes_schemas_strictly() {
    let mut files = Vec::new();
    for site in ["site1", "site2"] {
        for file in MANIFESTS {
            files.push(root().join(format!("deploy/k8s/{site}/{file}.yaml")));
        }
        let kustomization = read(&format!("deploy/k8s/{site}/kustomization.yaml"));
        for file in MANIFESTS {
            assert!(
                kustomization.contains(&format!("- {file}.yaml")),
                "{site}: {file}"
            );
        }
        assert!(
            kustomization.contains("- sitegrid.toml"),
            "{site}: the config map"
        );
    }
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--no-warn"])
        .args(["--kubernetes-version", OLDEST_KUBERNETES])
        .args(&files)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "kubernetes-validate (install it with `python3 -m pip install -r \
         .ci/requirements.txt`):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `host:port` ports of the default config: gRPC, HTTP, gossip.
fn default_ports() -> [u16; 3] {
    let node = Config::default().node;
    [node.listen.port(), node.http.port(), node.gossip.port()]
}

#[test]
fn the_image_and_the_pods_use_the_config_ports_and_seed_gossip_from_the_headless_service() {
    let [grpc, http, gossip] = default_ports();
    let dockerfile = read("Dockerfile");
    let expose = dockerfile
        .lines()
        .find(|line| line.starts_with("EXPOSE"))
        .expect("the Dockerfile exposes ports");
    for port in [
        format!(" {grpc}"),
        format!(" {http}"),
        format!(" {gossip}/udp"),
    ] {
        assert!(expose.contains(&port), "{expose} lacks{port}");
    }
    for site in ["site1", "site2"] {
        let manifests = manifests(site);
        let statefulset = kind(&manifests, "StatefulSet");
        let spec = &statefulset["spec"];
        assert_eq!(spec["replicas"], 2, "{site}: replicas");
        assert_eq!(spec["podManagementPolicy"], "Parallel", "{site}");
        let container = &spec["template"]["spec"]["containers"][0];
        let ports = container["ports"].as_array().expect("container ports");
        let named = |name: &str| {
            ports
                .iter()
                .find(|port| port["name"] == name)
                .unwrap_or_else(|| panic!("{site}: no container port named {name}"))
        };
        for (name, port, protocol) in [
            ("grpc", grpc, "TCP"),
            ("http", http, "TCP"),
            ("gossip", gossip, "UDP"),
        ] {
            assert_eq!(named(name)["containerPort"], port, "{site}: {name} port");
            assert_eq!(named(name)["protocol"], protocol, "{site}: {name} protocol");
        }
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{site}: {probe}");
            let port = match &get["port"] {
                Value::String(name) => named(name)["containerPort"].clone(),
                number => number.clone(),
            };
            assert_eq!(port, http, "{site}: {probe} on the HTTP port");
        }
        // The node binds the pod IP on the config's ports (the file leaves them out).
        let env = container["env"].as_array().expect("container env");
        for (variable, port) in [
            ("SITEGRID_LISTEN", grpc),
            ("SITEGRID_HTTP", http),
            ("SITEGRID_GOSSIP", gossip),
        ] {
            let value = env
                .iter()
                .find(|var| var["name"] == variable)
                .unwrap_or_else(|| panic!("{site}: {variable} not set"));
            assert_eq!(
                value["value"],
                format!("$(POD_IP):{port}"),
                "{site}: {variable}"
            );
        }
        // Gossip is seeded by the headless Service that governs the StatefulSet.
        let headless = manifests
            .iter()
            .find(|m| m["kind"] == "Service" && m["spec"]["clusterIP"] == "None")
            .unwrap_or_else(|| panic!("{site}: no headless Service"));
        let headless_name = headless["metadata"]["name"].as_str().unwrap();
        assert_eq!(spec["serviceName"], headless_name, "{site}: serviceName");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "{site}");
        let gossip_port = headless["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|port| port["protocol"] == "UDP")
            .unwrap_or_else(|| panic!("{site}: headless Service without gossip"));
        assert_eq!(gossip_port["port"], gossip, "{site}: headless gossip port");
        let config = load_as_pod(&format!("deploy/k8s/{site}/sitegrid.toml"));
        assert!(!config.node.seeds.is_empty(), "{site}: no seeds");
        for seed in &config.node.seeds {
            let expected = format!("{headless_name}.");
            assert!(seed.starts_with(&expected), "{site}: seed {seed}");
            assert!(seed.ends_with(&format!(":{gossip}")), "{site}: seed {seed}");
        }
        let budget = kind(&manifests, "PodDisruptionBudget");
        assert_eq!(budget["spec"]["maxUnavailable"], 1, "{site}");
    }
}

/// Every manifest of a site's kustomization, as JSON (PyYAML is there with
/// kubernetes-validate, so no YAML crate is needed).
fn manifests(site: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for file in MANIFESTS {
        let path = root().join(format!("deploy/k8s/{site}/{file}.yaml"));
        let output = Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; \
                 print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(&path)
            .output()
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let documents: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        all.extend(documents.into_iter().filter(|d| !d.is_null()));
    }
    all
}

fn kind<'a>(manifests: &'a [Value], kind: &str) -> &'a Value {
    manifests
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_entry_points_use_flags_sitegrid_accepts() {
    let help = Command::new(node_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let line = |path: &str, starts: &str| {
        read(path)
            .lines()
            .map(str::trim_start)
            .find(|line| line.starts_with(starts))
            .unwrap_or_else(|| panic!("{path}: no line starting with {starts}"))
            .to_string()
    };
    let entry_points = [
        line("deploy/systemd/sitegrid.service", "ExecStart="),
        line("Dockerfile", "CMD"),
        line("deploy/k8s/site1/statefulset.yaml", "args:"),
        line("deploy/k8s/site2/statefulset.yaml", "args:"),
    ];
    for entry_point in &entry_points {
        let flags: Vec<&str> = entry_point
            .split(['"', ' ', ',', '[', ']'])
            .filter(|word| word.starts_with("--"))
            .collect();
        assert!(flags.contains(&"--config"), "{entry_point}");
        for flag in flags {
            assert!(
                help.contains(flag),
                "sitegrid does not take {flag}:\n{help}"
            );
        }
    }
}
