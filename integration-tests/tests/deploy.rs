//! The deployment files (`Dockerfile`, `deploy/`) agree with sitegrid: the manifests
//! pass Kubernetes' schemas, every config loads with sitegrid's own loader, and ports and
//! flags match the image, the config and the binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sitegrid_config::Config;
use sitegrid_config::Environment;
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
        for cache in [
            "sessions",
            "offlineSessions",
            "actionTokens",
            "loginFailures",
            "work",
        ] {
            assert!(config.caches.contains_key(cache), "{site}: cache {cache}");
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

#[test]
fn the_manifests_pass_the_kubernetes_schemas_strictly() {
    let mut files = Vec::new();
    for site in ["site1", "site2"] {
        for file in ["namespace", "services", "statefulset", "pdb"] {
            files.push(root().join(format!("deploy/k8s/{site}/{file}.yaml")));
        }
        let kustomization = read(&format!("deploy/k8s/{site}/kustomization.yaml"));
        for file in ["namespace", "services", "statefulset", "pdb"] {
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
fn the_image_the_pods_and_the_config_agree_on_the_ports() {
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
        let statefulset = read(&format!("deploy/k8s/{site}/statefulset.yaml"));
        for port in [grpc, http, gossip] {
            assert!(
                statefulset.contains(&format!("containerPort: {port}")),
                "{site}: containerPort {port}"
            );
        }
        for (variable, port) in [
            ("SITEGRID_LISTEN", grpc),
            ("SITEGRID_HTTP", http),
            ("SITEGRID_GOSSIP", gossip),
        ] {
            let set = format!("- name: {variable}\n              value: \"$(POD_IP):{port}\"");
            assert!(
                statefulset.contains(&set),
                "{site}: {variable} on port {port}"
            );
        }
        assert!(
            statefulset.contains("path: /ready"),
            "{site}: readiness on /ready"
        );
        assert!(
            statefulset.contains("path: /health"),
            "{site}: liveness on /health"
        );
        let config = load_as_pod(&format!("deploy/k8s/{site}/sitegrid.toml"));
        for seed in &config.node.seeds {
            assert!(seed.ends_with(&format!(":{gossip}")), "{site}: seed {seed}");
            assert!(seed.starts_with("sitegrid-gossip."), "{site}: seed {seed}");
        }
        let services = read(&format!("deploy/k8s/{site}/services.yaml"));
        assert!(services.contains("name: sitegrid-gossip") && services.contains("clusterIP: None"));
    }
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
