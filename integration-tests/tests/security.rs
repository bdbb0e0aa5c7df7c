//! Security against real nodes: tokens and roles, TLS on the gRPC port (plain text and
//! foreign CAs refused, reloads), certificates between sites, refusals at start, and the
//! audit log.

use std::time::Duration;

use sitegrid_client::{Backoff, Client, ClientBuilder, ErrorCode, WriteOptions};
use sitegrid_integration_tests::node::{NodeProcess, NodeSpec, run_to_exit};
use sitegrid_integration_tests::pki::{Authority, Issued, principal};
use sitegrid_integration_tests::site::Site;
use sitegrid_integration_tests::sites::TwoSites;
use sitegrid_integration_tests::wait::eventually;
use sitegrid_proto::v1;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::site_link_client::SiteLinkClient;
use sitegrid_server::store::record;

/// One attempt per request: a refusal must show as itself, not after retries.
fn once() -> Backoff {
    Backoff {
        max_attempts: 1,
        ..Backoff::default()
    }
}

/// A client of `node` sending `token` (if any), in plain text.
async fn client(node: &NodeProcess, token: Option<&str>) -> Client {
    let mut builder = Client::builder([node.endpoint()])
        .discover_topology(false)
        .backoff(once())
        .request_timeout(Duration::from_secs(5));
    if let Some(token) = token {
        builder = builder.token(token);
    }
    builder.connect().await.unwrap()
}

/// The error code of a failed request.
fn code<T: std::fmt::Debug>(result: sitegrid_client::Result<T>) -> ErrorCode {
    result.expect_err("the request must be refused").code()
}

#[tokio::test]
async fn tokens_and_roles_decide_what_each_client_may_do_and_admin_operations_are_audited() {
    let security = format!(
        "[security]\n{}{}{}{}",
        principal("ops", "admin", "t-ops", None),
        principal("keycloak", "application", "t-kc", Some(&["sessions"])),
        principal("viewer", "observer", "t-view", None),
        principal("prom", "monitor", "t-prom", None),
    );
    let node = NodeProcess::start(NodeSpec::new("n1").with_security(&security))
        .await
        .unwrap();
    let write = WriteOptions::default;

    // No credentials, a wrong token: UNAUTHENTICATED, on unary and pipelined calls.
    let anonymous = client(&node, None).await;
    assert_eq!(
        code(anonymous.cache("work").get("k").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code(anonymous.cache("work").put("k", "v", write()).await),
        ErrorCode::Unauthenticated
    );
    let stranger = client(&node, Some("not-a-token")).await;
    assert_eq!(
        code(stranger.cache("work").size().await),
        ErrorCode::Unauthenticated
    );

    // The application writes its own cache, and nothing else.
    let keycloak = client(&node, Some("t-kc")).await;
    keycloak
        .cache("sessions")
        .put("s1", "alice", write())
        .await
        .unwrap();
    assert_eq!(
        code(keycloak.cache("work").put("w1", "x", write()).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(keycloak.cache("sessions").clear().await),
        ErrorCode::PermissionDenied
    );

    // The observer reads but does not write; the monitor reads no data at all.
    let viewer = client(&node, Some("t-view")).await;
    let seen = viewer.cache("sessions").get("s1").await.unwrap().unwrap();
    assert_eq!(&seen.value[..], b"alice");
    assert_eq!(
        code(viewer.cache("sessions").put("s1", "mallory", write()).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(viewer.cache("sessions").remove("s1", write()).await),
        ErrorCode::PermissionDenied
    );
    let prom = client(&node, Some("t-prom")).await;
    assert_eq!(
        code(prom.cache("sessions").get("s1").await),
        ErrorCode::PermissionDenied
    );
    prom.admin().cluster_status().await.unwrap();
    let mut raw = CacheClient::new(node.channel().await.unwrap());
    let mut listen = tonic::Request::new(v1::ListenRequest {
        caches: vec!["work".into()],
        ..Default::default()
    });
    listen
        .metadata_mut()
        .insert("authorization", "Bearer t-prom".parse().unwrap());
    let refused = raw
        .listen(listen)
        .await
        .expect_err("a monitor may not listen");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // Nothing a refused request sent was applied.
    let ops = client(&node, Some("t-ops")).await;
    let entry = ops.cache("sessions").get("s1").await.unwrap().unwrap();
    assert_eq!(&entry.value[..], b"alice");
    assert!(ops.cache("work").get("w1").await.unwrap().is_none());

    // The administrator clears; both Clear attempts are in the audit log, with who.
    assert_eq!(ops.cache("sessions").clear().await.unwrap(), 1);
    let audit = std::fs::read_to_string(node.data_dir().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|line| {
            (
                line["principal"].as_str().unwrap(),
                line["operation"].as_str().unwrap(),
                line["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("keycloak", "Clear", "permission_denied"),
            ("ops", "Clear", "ok")
        ],
        "{audit}"
    );
    assert_eq!(lines[1]["target"], "cache sessions in this site");
    assert!(
        lines[1]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(lines[1]["time"].as_str().unwrap().ends_with('Z'));
}

/// A node of `site` serving TLS with a certificate of `authority` naming the site.
fn tls_security(authority: &Authority, site: &str, principals: &str) -> String {
    let issued = authority.issue(site, &[site]).unwrap();
    format!("[security]\n{}{principals}", issued.tls_toml(&authority.ca))
}

/// A TLS client of `node` trusting `ca`, expecting certificates naming `site`.
/// A client of `node` over TLS, trusting `ca` (the node's certificate names `site1`).
fn tls_builder(node: &NodeProcess, ca: &std::path::Path) -> ClientBuilder {
    Client::builder([node.endpoint()])
        .discover_topology(false)
        .backoff(once())
        .request_timeout(Duration::from_secs(5))
        .tls(ca)
        .tls_server_name("site1")
}

async fn tls_client(node: &NodeProcess, ca: &std::path::Path, token: Option<&str>) -> Client {
    let mut builder = tls_builder(node, ca);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    builder.connect().await.unwrap()
}

/// A client that presents `identity` as its client certificate.
async fn cert_client(node: &NodeProcess, ca: &std::path::Path, identity: &Issued) -> Client {
    tls_builder(node, ca)
        .tls_identity(&identity.cert, &identity.key)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_tls_port_refuses_plain_text_and_other_cas_and_takes_a_principals_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "site-ca").unwrap();
    let other = Authority::new(dir.path(), "other-ca").unwrap();
    let mut app_by_certificate = String::from(
        "[[security.principals]]\nname = \"keycloak\"\nrole = \"application\"\ncertificate = \"keycloak.example\"\n",
    );
    app_by_certificate.push_str(&principal("ops", "admin", "t-ops", None));
    let node = NodeProcess::start(NodeSpec::new("n1").with_security(&tls_security(
        &authority,
        "site1",
        &app_by_certificate,
    )))
    .await
    .unwrap();

    // Plain text: the connection is closed in the handshake; nothing is applied.
    let plain = client(&node, Some("t-ops")).await;
    assert_eq!(
        code(
            plain
                .cache("work")
                .put("plain", "x", WriteOptions::default())
                .await
        ),
        ErrorCode::Unavailable
    );
    // A client that trusts another CA does not take the node's certificate.
    let misled = tls_client(&node, &other.ca, Some("t-ops")).await;
    assert_eq!(
        code(misled.cache("work").get("k").await),
        ErrorCode::Unavailable
    );
    // A client certificate of another CA fails the handshake on the node's side.
    let forged = other.issue("forged", &["keycloak.example"]).unwrap();
    let impostor = cert_client(&node, &authority.ca, &forged).await;
    assert_eq!(
        code(
            impostor
                .cache("work")
                .put("forged", "x", WriteOptions::default())
                .await
        ),
        ErrorCode::Unavailable
    );

    // The application's own certificate is its credential: no token needed.
    let issued = authority.issue("keycloak", &["keycloak.example"]).unwrap();
    let keycloak = cert_client(&node, &authority.ca, &issued).await;
    keycloak
        .cache("sessions")
        .put("s1", "alice", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        code(keycloak.cache("sessions").clear().await),
        ErrorCode::PermissionDenied
    );

    let ops = tls_client(&node, &authority.ca, Some("t-ops")).await;
    for key in ["plain", "forged"] {
        assert!(ops.cache("work").get(key).await.unwrap().is_none(), "{key}");
    }
    assert_eq!(ops.cache("sessions").size().await.unwrap(), 1);
}

#[tokio::test]
async fn new_certificate_files_are_taken_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::new(dir.path(), "first-ca").unwrap();
    let second = Authority::new(dir.path(), "second-ca").unwrap();
    let issued = first.issue("site1", &["site1"]).unwrap();
    let security = format!(
        "[security]\n{}{}",
        issued.tls_toml(&first.ca),
        principal("ops", "admin", "t-ops", None)
    );
    let node = NodeProcess::start(NodeSpec::new("n1").with_security(&security))
        .await
        .unwrap();
    tls_client(&node, &first.ca, Some("t-ops"))
        .await
        .cache("work")
        .size()
        .await
        .unwrap();

    // The operator replaces the files with a certificate of another CA; the node takes
    // them on its next check.
    let renewed = second.issue("renewed", &["site1"]).unwrap();
    std::fs::copy(&renewed.key, &issued.key).unwrap();
    std::fs::copy(&renewed.cert, &issued.cert).unwrap();
    eventually(
        "the node serving the new certificate",
        Duration::from_secs(20),
        || async {
            let client = tls_client(&node, &second.ca, Some("t-ops")).await;
            client.cache("work").size().await.is_ok()
        },
    )
    .await
    .unwrap();
    let old = tls_client(&node, &first.ca, Some("t-ops")).await;
    assert_eq!(code(old.cache("work").size().await), ErrorCode::Unavailable);

    // A broken file is not taken: the node goes on with what it has, and says why.
    let failures = || node.log().matches("TLS files not reloaded").count();
    let before = failures();
    std::fs::write(&issued.key, "not a key").unwrap();
    node.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually(
        "the failed reload in the log",
        Duration::from_secs(20),
        || async { failures() > before },
    )
    .await
    .unwrap();
    tls_client(&node, &second.ca, Some("t-ops"))
        .await
        .cache("work")
        .size()
        .await
        .unwrap();
}

#[test]
fn a_node_with_unusable_tls_files_does_not_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "ca").unwrap();
    let node = authority.issue("node", &["site1"]).unwrap();
    let other = authority.issue("other", &["site1"]).unwrap();
    let cases = [
        (
            Issued {
                cert: node.cert.clone(),
                key: other.key.clone(),
            },
            "don't make a usable certificate and key",
        ),
        (
            Issued {
                cert: dir.path().join("missing.pem"),
                key: node.key.clone(),
            },
            "missing.pem: cannot read it",
        ),
        (
            Issued {
                cert: node.key.clone(),
                key: node.key.clone(),
            },
            "holds no PEM certificate",
        ),
    ];
    for (files, expected) in cases {
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nlisten = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ngossip = \"127.0.0.1:0\"\n\
                 data_dir = {:?}\n[security]\nauth = \"none\"\n{}",
                dir.path().join("data").display().to_string(),
                files.tls_toml(&authority.ca)
            ),
        )
        .unwrap();
        let (status, output) =
            run_to_exit(&["--config", config.to_str().unwrap()], &[], dir.path()).unwrap();
        assert!(!status.success(), "{output}");
        assert!(output.contains(expected), "{expected}: {output}");
        assert!(!output.contains("panicked"), "{output}");
    }
}

/// A `SiteLink` client of `node` over TLS presenting `identity`.
async fn site_link(
    node: &NodeProcess,
    ca: &std::path::Path,
    identity: &Issued,
) -> SiteLinkClient<tonic::transport::Channel> {
    let config =
        sitegrid_proto::tls::client_config(ca, Some((&identity.cert, &identity.key))).unwrap();
    let tls = sitegrid_proto::tls::ClientTls::fixed(config)
        .expecting("site2")
        .unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(node.endpoint()).unwrap();
    SiteLinkClient::new(sitegrid_proto::transport::lazy_channel(
        &endpoint,
        Some(tls),
    ))
}

/// A well-formed backup of `key` from `from_site` (site id 1): what site 1 itself would
/// send for a write made now.
fn backup(from_site: &str, key: &str) -> v1::BackupRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stored = record::StoredRecord {
        kind: 0,
        version: sitegrid_proto::version::first_version_at(now) | 1,
        origin_site: from_site.into(),
        value: bytes::Bytes::from_static(b"forged"),
        created_ms: now,
        last_used_ms: now,
        ..Default::default()
    };
    let bytes = record::frame(&stored);
    v1::BackupRequest {
        cache: "work".into(),
        from_site: from_site.into(),
        mutation: Some(v1::ReplicatedMutation {
            key: key.as_bytes().to_vec().into(),
            record: bytes.into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn sites_back_up_to_each_other_over_mutual_tls_and_refuse_anyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "sites-ca").unwrap();
    let other = Authority::new(dir.path(), "other-ca").unwrap();
    let ops = principal("ops", "admin", "t-ops", None);
    let securities = [
        tls_security(&authority, "site1", &ops),
        tls_security(&authority, "site2", &ops),
    ];
    let sites = TwoSites::start(
        1,
        |index, name| {
            // `work` is backed up synchronously by default.
            NodeSpec::new(name).with_security(&securities[index])
        },
        |_, peers| peers.iter().map(|a| a.to_string()).collect(),
    )
    .await
    .unwrap();
    let [site1, site2] = &sites.sites;
    let (one, two) = (&site1.nodes[0], &site2.nodes[0]);
    let ops1 = Client::builder([one.endpoint()])
        .discover_topology(false)
        .tls(&authority.ca)
        .tls_server_name("site1")
        .token("t-ops")
        .connect()
        .await
        .unwrap();
    let ops2 = Client::builder([two.endpoint()])
        .discover_topology(false)
        .tls(&authority.ca)
        .tls_server_name("site2")
        .token("t-ops")
        .connect()
        .await
        .unwrap();

    // The sites know each other by their certificates: a sync backup goes through.
    ops1.cache("work")
        .put("shared", "v1", WriteOptions::default())
        .await
        .unwrap();
    let copy = ops2.cache("work").get("shared").await.unwrap().unwrap();
    assert_eq!(&copy.value[..], b"v1");

    // Anyone else calling site2's site link is refused, and nothing they send applies.
    let stranger = authority.issue("site3", &["site3"]).unwrap();
    let foreign = other.issue("foreign", &["site1"]).unwrap();
    let application = authority.issue("app", &["keycloak.example"]).unwrap();
    let site1_certificate = authority.issue("site1-again", &["site1"]).unwrap();
    for (identity, from_site, expected) in [
        // A certificate of another CA: the handshake fails.
        (&foreign, "site1", None),
        // A site not in site2's config, with a good certificate naming it.
        (&stranger, "site3", Some(tonic::Code::Unauthenticated)),
        // An application's certificate is no site's.
        (&application, "site1", Some(tonic::Code::Unauthenticated)),
        // Site 1's certificate, claiming to be a site that is not in the config.
        (&site1_certificate, "site3", Some(tonic::Code::NotFound)),
    ] {
        let key = format!("forged-{from_site}-{}", identity.cert.display());
        let refused = site_link(two, &authority.ca, identity)
            .await
            .backup(backup(from_site, &key))
            .await
            .expect_err("the backup must be refused");
        match expected {
            Some(code) => assert_eq!(refused.code(), code, "{key}: {refused:?}"),
            // The connection failed: the status is the transport's, not the server's.
            None => assert!(
                std::error::Error::source(&refused).is_some(),
                "{key}: {refused:?}"
            ),
        }
        assert!(
            ops2.cache("work").get(key.clone()).await.unwrap().is_none(),
            "{key}"
        );
    }
    // The same backup, from site 1 with its certificate, is applied: what refused the
    // others was who they were.
    site_link(two, &authority.ca, &site1_certificate)
        .await
        .backup(backup("site1", "genuine"))
        .await
        .unwrap();
    let genuine = ops2.cache("work").get("genuine").await.unwrap().unwrap();
    assert_eq!(&genuine.value[..], b"forged");
}

/// A counter's value in the node's `/metrics` (0 if it was never counted).
async fn counter(node: &NodeProcess, name: &str) -> f64 {
    let (_, metrics) = sitegrid_integration_tests::http::get(node.http_addr(), "/metrics")
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn members_replicate_over_mutual_tls_and_a_node_of_another_ca_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "site1-ca").unwrap();
    let ops = principal("ops", "admin", "t-ops", None);
    let site = Site::start_with(2, |name| {
        let issued = authority.issue(name, &["site1"]).unwrap();
        NodeSpec::new(name).with_security(&format!(
            "[security]\n{}{ops}",
            issued.tls_toml(&authority.ca)
        ))
    })
    .await
    .unwrap();
    let clients: Vec<Client> = futures::future::join_all(
        site.nodes
            .iter()
            .map(|node| tls_client(node, &authority.ca, Some("t-ops"))),
    )
    .await;
    for i in 0..20 {
        let key = format!("k{i}");
        clients[0]
            .cache("work")
            .put(key.clone(), "v", WriteOptions::default())
            .await
            .unwrap();
        // Written through one member, read at once from the other: replicated.
        assert!(clients[1].cache("work").get(key).await.unwrap().is_some());
    }

    // A node that gossips as a member of site 1 but holds a certificate of another CA
    // (naming site 1 all the same) is never believed: the members stay two.
    let other = Authority::new(dir.path(), "other-ca").unwrap();
    let issued = other.issue("n3", &["site1"]).unwrap();
    let unproven = counter(&site.nodes[0], "sitegrid_gossip_unproven_total").await;
    let rogue = NodeProcess::launch_at(
        NodeSpec {
            seeds: site
                .nodes
                .iter()
                .map(|n| n.addrs().gossip.to_string())
                .collect(),
            ..NodeSpec::new("n3")
                .with_security(&format!("[security]\n{}{ops}", issued.tls_toml(&other.ca)))
        },
        sitegrid_integration_tests::node::NodeAddrs::free(),
    )
    .unwrap();
    eventually(
        "the members trying to prove the stranger",
        Duration::from_secs(30),
        || async {
            counter(&site.nodes[0], "sitegrid_gossip_unproven_total").await >= unproven + 2.0
        },
    )
    .await
    .unwrap();
    let status = clients[0].admin().cluster_status().await.unwrap();
    let members: Vec<&str> = status.members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(members, ["n1", "n2"]);
    assert!(
        !rogue.is_ready().await,
        "the stranger can't copy the site's data"
    );
    clients[1]
        .cache("work")
        .put("after", "v", WriteOptions::default())
        .await
        .unwrap();
    assert!(
        clients[0]
            .cache("work")
            .get("after")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn the_witness_serves_tls_and_grants_a_site_only_to_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "ca").unwrap();
    let served = authority.issue("witness", &["witness.example"]).unwrap();
    let witness = sitegrid_integration_tests::witness::WitnessProcess::start_secured(
        Duration::from_millis(300),
        &format!("[security]\n{}", served.tls_toml(&authority.ca)),
    )
    .await
    .unwrap();
    let client = |identity: &Issued| {
        let config = sitegrid_proto::tls::client_config(
            &authority.ca,
            Some((&identity.cert, &identity.key)),
        )
        .unwrap();
        let tls = sitegrid_proto::tls::ClientTls::fixed(config);
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", witness.addr())).unwrap();
        sitegrid_proto::v1::witness_client::WitnessClient::new(
            sitegrid_proto::transport::lazy_channel(&endpoint, Some(tls)),
        )
    };
    let acquire = |site: &str| v1::AcquireRequest {
        site: site.into(),
        peer_site: "site2".into(),
    };
    let site1 = authority.issue("site1", &["site1"]).unwrap();
    let site3 = authority.issue("site3", &["site3"]).unwrap();
    // Site 3's certificate can't ask for site 1.
    let refused = client(&site3)
        .acquire(acquire("site1"))
        .await
        .expect_err("a site asks only for itself");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Plain text does not get through the handshake.
    let plain = sitegrid_proto::v1::witness_client::WitnessClient::connect(format!(
        "http://{}",
        witness.addr()
    ))
    .await;
    if let Ok(mut plain) = plain {
        plain
            .acquire(acquire("site1"))
            .await
            .expect_err("plain text is refused");
    }
    // Site 1 with its own certificate gets the grant (once the witness's first lease,
    // in which it grants nothing, is over).
    let mut site1_client = client(&site1);
    eventually("site 1 granted", Duration::from_secs(10), || {
        let mut client = site1_client.clone();
        async move {
            client
                .acquire(acquire("site1"))
                .await
                .unwrap()
                .into_inner()
                .granted
        }
    })
    .await
    .unwrap();
    assert!(
        site1_client
            .acquire(acquire("site1"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
}

#[tokio::test]
async fn sitegridctl_makes_a_token_and_connects_with_it() {
    let ctl = sitegrid_integration_tests::node::ctl_binary();
    let made = std::process::Command::new(&ctl)
        .args(["token", "new"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let made = String::from_utf8(made.stdout).unwrap();
    let field = |name: &str| {
        made.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| {
                rest.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap_or_else(|| panic!("no {name} in {made}"))
    };
    let (token, hash) = (field("token "), field("token_sha256"));
    assert_eq!(token.len(), 64, "{made}");
    assert_eq!(hash, sitegrid_integration_tests::pki::token_sha256(&token));

    // `token hash` gives the same hash for the token on stdin.
    let mut hashing = std::process::Command::new(&ctl)
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut hashing.stdin.take().unwrap(),
        format!("{token}\n").as_bytes(),
    )
    .unwrap();
    let hashed = String::from_utf8(hashing.wait_with_output().unwrap().stdout).unwrap();
    assert!(hashed.contains(&hash), "{hashed}");

    let node = NodeProcess::start(NodeSpec::new("n1").with_security(&format!(
        "[security]\n[[security.principals]]\nname = \"ops\"\nrole = \"admin\"\ntoken_sha256 = \"{hash}\"\n"
    )))
    .await
    .unwrap();
    let endpoint = node.grpc_addr().to_string();
    let put = |token: Option<&str>| {
        let mut command = std::process::Command::new(&ctl);
        command
            .args(["-e", &endpoint, "cache", "put", "--cache", "work", "k", "v"])
            .env_remove("SITEGRID_TOKEN");
        if let Some(token) = token {
            command.env("SITEGRID_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = put(None);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"),
        "{refused:?}"
    );
    let accepted = put(Some(&token));
    assert!(accepted.status.success(), "{accepted:?}");
}
