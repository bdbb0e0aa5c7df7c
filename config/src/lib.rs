//! sitegrid's node configuration.
//!
//! One TOML file per node (see `../shared/design.md`, "Configuration"). Every field has a
//! default, so a node started with no file runs alone as site `local` with the five
//! default caches. Loading goes in three steps, each testable on its own:
//!
//! 1. [`Config::from_toml`] parses the file (`deny_unknown_fields`, humantime durations);
//! 2. [`Config::apply_env`] applies `SITEGRID_*` overrides to the `[node]` section, taken
//!    from a map so tests stay hermetic;
//! 3. [`Config::validate`] checks everything and names each bad field:
//!    `caches.sessions.lifespan: must be > 0`.
//!
//! [`Config::load`] runs all three. This crate does no networking.

mod cache;
mod env;
mod error;
mod node;
mod security;
mod site;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cache::{BackupConfig, CacheConfig, FailurePolicy, MergePolicy, Strategy, default_caches};
pub use env::Environment;
pub use error::{ConfigError, Result};
pub use node::NodeConfig;
pub use security::{Auth, PrincipalConfig, Role, SecurityConfig, TlsConfig};
pub use site::{SiteConfig, TakeOfflineConfig, WitnessConfig};

/// A node's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this node is and where it listens.
    #[serde(default)]
    pub node: NodeConfig,
    /// Storage engine tuning: tombstones, expiry, idempotency.
    #[serde(default)]
    pub store: StoreConfig,
    /// Size limits on requests.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Listener streams.
    #[serde(default)]
    pub events: EventsConfig,
    /// Caches by name. The five default caches are always present; a `[caches.NAME]`
    /// section changes one of them or adds a new one.
    #[serde(
        default = "default_caches",
        deserialize_with = "cache::deserialize_caches"
    )]
    pub caches: BTreeMap<String, CacheConfig>,
    /// Peer sites and how to reach them.
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    /// Backups to peer sites.
    #[serde(default)]
    pub relay: RelayConfig,
    /// The witness that grants take-offline in a partition, if there is one.
    #[serde(default)]
    pub witness: Option<WitnessConfig>,
    /// TLS, authentication and roles. A file without this section requires credentials;
    /// the no-file default is anonymous.
    #[serde(default = "SecurityConfig::required")]
    pub security: SecurityConfig,
}

/// Backups to peer sites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Keys an `async` backup may hold for one peer site before it is full: then writes
    /// with the `fail` policy fail, others go on and their keys wait for a resync.
    #[serde(default = "default_outbox_capacity")]
    pub outbox_capacity: usize,
    /// Changes sent to a peer site in one `async` batch.
    #[serde(default = "default_async_batch")]
    pub async_batch: usize,
    /// How often each node asks each peer site whether it answers.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// With no witness, only the site whose nodes say `prefer = true` may take a peer
    /// site offline; a site that may not stops taking writes to caches with sync backups
    /// instead (it is fenced), so a partition never has two sites granting one token.
    #[serde(default)]
    pub prefer: bool,
    /// How often the site compares itself with each online peer site and moves what
    /// differs (a resync with nothing offline): catches divergence that no single
    /// failure records, such as a primary that died after the peer applied its write.
    /// `0s` turns it off.
    #[serde(
        default = "default_consistency_check_interval",
        with = "humantime_serde"
    )]
    pub consistency_check_interval: Duration,
}

fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_consistency_check_interval() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_outbox_capacity() -> usize {
    1_000_000
}

fn default_async_batch() -> usize {
    512
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            outbox_capacity: default_outbox_capacity(),
            async_batch: default_async_batch(),
            heartbeat_interval: default_heartbeat_interval(),
            prefer: false,
            consistency_check_interval: default_consistency_check_interval(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            events: EventsConfig::default(),
            caches: default_caches(),
            sites: Vec::new(),
            relay: RelayConfig::default(),
            witness: None,
            security: SecurityConfig::anonymous(),
        }
    }
}

/// Storage engine tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// How long a removed key keeps its version, so a late or replayed older write can't
    /// bring it back, and listeners can resume across the removal.
    #[serde(default = "default_tombstone_ttl", with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// How often the reaper removes expired entries and old tombstones; an expired entry
    /// produces its `EXPIRED` event within one interval of its deadline.
    #[serde(default = "default_reaper_interval", with = "humantime_serde")]
    pub reaper_interval: Duration,
    /// How long a write's answer is at least kept for a retry with the same request id
    /// (at most twice as long), unless `idempotency_max_entries` are kept sooner.
    #[serde(default = "default_idempotency_window", with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// At most about this many answers are kept for retries; the oldest go first.
    #[serde(default = "default_idempotency_max_entries")]
    pub idempotency_max_entries: usize,
    /// Memory sled may use for its page cache, in bytes.
    #[serde(default = "default_sled_cache_bytes")]
    pub sled_cache_bytes: u64,
}

fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_reaper_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_idempotency_window() -> Duration {
    Duration::from_secs(300)
}
fn default_idempotency_max_entries() -> usize {
    200_000
}
fn default_sled_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            tombstone_ttl: default_tombstone_ttl(),
            reaper_interval: default_reaper_interval(),
            idempotency_window: default_idempotency_window(),
            idempotency_max_entries: default_idempotency_max_entries(),
            sled_cache_bytes: default_sled_cache_bytes(),
        }
    }
}

/// Size limits on requests; a request over one answers INVALID_ARGUMENT naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest key, in bytes.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// Most tags on one entry.
    #[serde(default = "default_max_tags")]
    pub max_tags: usize,
    /// Longest tag (`name=value`), in bytes.
    #[serde(default = "default_max_tag_bytes")]
    pub max_tag_bytes: usize,
    /// Most keys in one `GetAll` or `PutAll`.
    #[serde(default = "default_max_batch_entries")]
    pub max_batch_entries: usize,
    /// HTTP/2 streams one connection may have open at once (advertised to every client
    /// and peer as `SETTINGS_MAX_CONCURRENT_STREAMS`).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// `Listen` streams one client address (IP) may have open at once; one more is
    /// refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_listeners_per_client")]
    pub max_listeners_per_client: usize,
    /// Requests per second one client address (IP) may make to the `Cache` service
    /// (each request of a `Pipeline` stream counts); beyond, RESOURCE_EXHAUSTED. 0 means
    /// no limit.
    #[serde(default)]
    pub max_requests_per_second_per_client: u32,
}

fn default_max_key_bytes() -> usize {
    64 * 1024
}
fn default_max_value_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_tags() -> usize {
    16
}
fn default_max_tag_bytes() -> usize {
    256
}
fn default_max_batch_entries() -> usize {
    10_000
}
fn default_max_concurrent_streams() -> u32 {
    1024
}
fn default_max_listeners_per_client() -> usize {
    256
}

/// The fewest streams per connection a node may allow: the Rust client keeps 4
/// `Pipeline` streams per node open beside its other calls.
pub const MIN_CONCURRENT_STREAMS: u32 = 16;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: default_max_key_bytes(),
            max_value_bytes: default_max_value_bytes(),
            max_tags: default_max_tags(),
            max_tag_bytes: default_max_tag_bytes(),
            max_batch_entries: default_max_batch_entries(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_listeners_per_client: default_max_listeners_per_client(),
            max_requests_per_second_per_client: 0,
        }
    }
}

impl LimitsConfig {
    /// The largest gRPC message a node must accept so that a request within every limit
    /// fits, with room for a request slightly over a limit to reach validation and get a
    /// message naming that limit.
    pub fn max_message_bytes(&self) -> usize {
        (self.max_value_bytes + self.max_key_bytes)
            .saturating_mul(2)
            .saturating_add(1024 * 1024)
    }
}

/// Listener streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Events a subscriber may fall behind by before it gets `RESYNC_REQUIRED`.
    #[serde(default = "default_listener_buffer")]
    pub listener_buffer: usize,
}

fn default_listener_buffer() -> usize {
    10_000
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            listener_buffer: default_listener_buffer(),
        }
    }
}

impl Config {
    /// Parses a TOML document; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            message: source.to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Loads a node's configuration: the file if one is given (otherwise the defaults),
    /// then the environment overrides, then validation.
    pub fn load(path: Option<&Path>, env: &Environment) -> Result<Config> {
        Config::load_then(path, env, |_| {})
    }

    /// Loads the configuration of a witness (`sitegrid --witness`): as [`Config::load`],
    /// but it serves no cache, so it has no principals: only `security.tls` applies
    /// (sites prove who they are with certificates when it has a CA).
    pub fn load_witness(path: Option<&Path>, env: &Environment) -> Result<Config> {
        Config::load_then(path, env, |config| {
            config.security.auth = Auth::None;
            config.security.principals.clear();
        })
    }

    fn load_then(
        path: Option<&Path>,
        env: &Environment,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<Config> {
        let mut config = match path {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        adjust(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole configuration; the error lists every problem found, each as
    /// `field.path: what is wrong`.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Problems::default();
        self.node.validate(&mut problems);
        self.validate_store(&mut problems);
        self.validate_limits(&mut problems);
        if self.events.listener_buffer == 0 {
            problems.push("events.listener_buffer", "must be > 0");
        }
        site::validate_sites(&self.sites, &self.node.site, &mut problems);
        if self.relay.outbox_capacity == 0 {
            problems.push("relay.outbox_capacity", "must be > 0");
        }
        if self.relay.heartbeat_interval.is_zero() {
            problems.push("relay.heartbeat_interval", "must be > 0");
        }
        if self.relay.async_batch == 0 {
            problems.push("relay.async_batch", "must be > 0");
        }
        if let Some(witness) = &self.witness {
            witness.validate(self.relay.prefer, &mut problems);
        }
        for (name, cache) in &self.caches {
            cache.validate(name, &self.sites, &mut problems);
        }
        let has_peers = !self.node.seeds.is_empty() || !self.sites.is_empty();
        self.security.validate(has_peers, &mut problems);
        for (i, principal) in self.security.principals.iter().enumerate() {
            // A certificate naming a site is a node of that site (or of a peer site) and is
            // never taken for a principal: the principal would be unreachable, and an
            // operator who wrote it meant something else.
            if let Some(name) = &principal.certificate {
                let names_site =
                    *name == self.node.site || self.sites.iter().any(|site| site.name == *name);
                if names_site {
                    problems.push(
                        format!("security.principals[{i}].certificate"),
                        format!(
                            "{name:?} is a site's name: certificates naming a site belong to \
                             that site's nodes, not to clients"
                        ),
                    );
                }
            }
            for cache in principal.caches.iter().flatten() {
                if !self.caches.contains_key(cache) {
                    problems.push(
                        format!("security.principals[{i}].caches"),
                        format!("names {cache:?}, which is not a cache of this node"),
                    );
                }
            }
        }
        problems.into_result()
    }

    fn validate_store(&self, problems: &mut Problems) {
        let store = &self.store;
        for (field, value) in [
            ("store.tombstone_ttl", store.tombstone_ttl),
            ("store.reaper_interval", store.reaper_interval),
            ("store.idempotency_window", store.idempotency_window),
        ] {
            if value.is_zero() {
                problems.push(field, "must be > 0");
            }
        }
        if store.idempotency_max_entries == 0 {
            problems.push("store.idempotency_max_entries", "must be > 0");
        }
    }

    fn validate_limits(&self, problems: &mut Problems) {
        let limits = &self.limits;
        for (field, value) in [
            ("limits.max_key_bytes", limits.max_key_bytes),
            ("limits.max_value_bytes", limits.max_value_bytes),
            ("limits.max_tag_bytes", limits.max_tag_bytes),
            ("limits.max_batch_entries", limits.max_batch_entries),
            (
                "limits.max_listeners_per_client",
                limits.max_listeners_per_client,
            ),
        ] {
            if value == 0 {
                problems.push(field, "must be > 0");
            }
        }
        // gRPC messages are bounded by u32 lengths; keep well inside.
        const MAX_PAYLOAD: usize = 1 << 30;
        if limits.max_value_bytes > MAX_PAYLOAD {
            problems.push("limits.max_value_bytes", "must be <= 1 GiB");
        }
        if limits.max_key_bytes > MAX_PAYLOAD {
            problems.push("limits.max_key_bytes", "must be <= 1 GiB");
        }
        if limits.max_concurrent_streams < MIN_CONCURRENT_STREAMS {
            problems.push(
                "limits.max_concurrent_streams",
                format!(
                    "must be >= {MIN_CONCURRENT_STREAMS}: the Rust client keeps 4 pipeline \
                     streams per node open beside its other calls"
                ),
            );
        }
    }

    /// The configuration of a cache, if it exists.
    pub fn cache(&self, name: &str) -> Option<&CacheConfig> {
        self.caches.get(name)
    }
}

/// Problems found by validation, each with the path of its field.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn push(&mut self, field: impl std::fmt::Display, problem: impl std::fmt::Display) {
        self.0.push(format!("{field}: {problem}"));
    }

    fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems: self.0 })
        }
    }
}

/// Checks a name used in metrics, gossip and file names: non-empty ASCII letters,
/// digits, `-`, `_` and `.`.
pub(crate) fn check_name(field: &str, name: &str, problems: &mut Problems) {
    if name.is_empty() {
        problems.push(field, "must not be empty");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        problems.push(
            field,
            format!("{name:?} may only hold ASCII letters, digits, '-', '_' and '.'"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test file adds so that only its own problems are reported.
    const ANONYMOUS: &str = "\n[security]\nauth = \"none\"\n";

    fn invalid(text: &str) -> Vec<String> {
        let mut config =
            Config::from_toml(&format!("{text}{ANONYMOUS}"), "test.toml").expect("parses");
        config
            .apply_env(&Environment::default().with_hostname("test-host"))
            .unwrap();
        match config.validate() {
            Err(ConfigError::Invalid { problems }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_the_default_single_node() {
        // A file, even an empty one, requires credentials unless it says otherwise.
        let required = Config::from_toml("", "empty.toml").unwrap();
        assert_eq!(required.security, SecurityConfig::required());
        let problems = required.validate().unwrap_err().to_string();
        assert!(
            problems.contains("security.principals: auth is required"),
            "{problems}"
        );
        assert_eq!(Config::default().security, SecurityConfig::anonymous());
        let mut config = Config::from_toml(ANONYMOUS, "empty.toml").unwrap();
        assert_eq!(config, Config::default());
        config
            .apply_env(&Environment::default().with_hostname("host1"))
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.node.name, "host1");
        assert_eq!(config.node.site, "local");
        assert_eq!(config.node.listen.to_string(), "127.0.0.1:11222");
        assert_eq!(config.node.http.to_string(), "127.0.0.1:9464");
        let names: Vec<_> = config.caches.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "actionTokens",
                "loginFailures",
                "offlineSessions",
                "sessions",
                "work"
            ]
        );
        assert!(config.caches["sessions"].persistent);
        assert!(config.caches["offlineSessions"].persistent);
        assert!(!config.caches["work"].persistent);
    }

    #[test]
    fn the_design_example_parses_and_validates() {
        let text = r#"
            [node]
            name = "node11"
            site = "site1"
            site_id = 1
            listen = "127.0.0.1:11222"
            gossip = "127.0.0.1:7946"
            http = "127.0.0.1:9464"
            data_dir = "./data/node11"
            seeds = ["127.0.0.1:7947"]

            [[sites]]
            name = "site2"
            endpoints = ["127.0.0.1:12222", "127.0.0.1:12223"]
            take_offline = { after_failures = 3, min_wait = "10s" }
            auto_bring_online = false

            [caches.actionTokens]
            persistent = false
            backup = { site2 = { strategy = "sync", failure_policy = "fail", timeout = "4500ms" } }
        "#;
        let config = Config::from_toml(&format!("{text}{ANONYMOUS}"), "design.toml").unwrap();
        config.validate().unwrap();
        let backup = &config.caches["actionTokens"].backup["site2"];
        assert_eq!(backup.strategy, Strategy::Sync);
        assert_eq!(backup.failure_policy, FailurePolicy::Fail);
        assert_eq!(backup.timeout, Duration::from_millis(4500));
        assert_eq!(
            config.sites[0].take_offline.min_wait,
            Duration::from_secs(10)
        );
        // The other default caches are still there.
        assert!(config.caches["sessions"].persistent);
    }

    #[test]
    fn a_named_default_cache_keeps_its_defaults_for_fields_not_given() {
        let text = r#"
            [caches.sessions]
            max_idle = "30m"
        "#;
        let config = Config::from_toml(text, "t.toml").unwrap();
        assert!(config.caches["sessions"].persistent);
        assert_eq!(
            config.caches["sessions"].max_idle,
            Some(Duration::from_secs(1800))
        );
    }

    #[test]
    fn new_caches_can_be_added() {
        let config = Config::from_toml("[caches.clients]\npersistent = true\n", "t").unwrap();
        assert_eq!(config.caches.len(), 6);
        assert!(config.caches["clients"].persistent);
    }

    #[test]
    fn too_few_streams_per_connection_are_refused_with_the_reason() {
        let problems = invalid("[limits]\nmax_concurrent_streams = 8\n");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("limits.max_concurrent_streams: must be >= 16"),
            "{problems:?}"
        );
        let config =
            Config::from_toml("[limits]\nmax_requests_per_second_per_client = 500\n", "t").unwrap();
        assert_eq!(config.limits.max_requests_per_second_per_client, 500);
        assert_eq!(
            Config::default().limits.max_requests_per_second_per_client,
            0
        );
    }

    #[test]
    fn zero_lifespan_is_named_in_the_error() {
        let problems = invalid("[caches.sessions]\nlifespan = \"0s\"\n");
        assert_eq!(problems, ["caches.sessions.lifespan: must be > 0"]);
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let problems = invalid(
            r#"
            [node]
            site = ""
            site_id = 0
            [limits]
            max_key_bytes = 0
            [events]
            listener_buffer = 0
            "#,
        );
        assert_eq!(
            problems,
            [
                "node.site: must not be empty",
                "node.site_id: must be in 1..=255",
                "limits.max_key_bytes: must be > 0",
                "events.listener_buffer: must be > 0",
            ]
        );
    }

    #[test]
    fn worker_threads_must_be_at_least_one() {
        assert_eq!(
            invalid("[node]\nworker_threads = 0\n"),
            ["node.worker_threads: must be in 1..=1024"]
        );
        let config = Config::from_toml("[node]\nworker_threads = 2\n", "t").unwrap();
        assert_eq!(config.node.worker_threads, Some(2));
        assert_eq!(Config::default().node.worker_threads, None);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let error = Config::from_toml("[node]\nlisten_addr = \"x\"\n", "t.toml").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("t.toml"), "{message}");
        assert!(message.contains("listen_addr"), "{message}");
    }

    #[test]
    fn bad_durations_and_addresses_are_parse_errors_naming_the_value() {
        let error = Config::from_toml("[store]\ntombstone_ttl = \"soon\"\n", "t").unwrap_err();
        assert!(error.to_string().contains("tombstone_ttl"), "{error}");
        let error = Config::from_toml("[node]\nlisten = \"nowhere\"\n", "t").unwrap_err();
        assert!(error.to_string().contains("listen"), "{error}");
    }

    #[test]
    fn backups_must_name_a_configured_peer_site() {
        let problems = invalid(
            r#"
            [caches.work]
            backup = { site9 = { strategy = "async" } }
            "#,
        );
        assert_eq!(
            problems,
            ["caches.work.backup.site9: no [[sites]] entry has this name"]
        );
    }

    #[test]
    fn a_peer_site_may_not_be_the_local_site_or_appear_twice() {
        let problems = invalid(
            r#"
            [node]
            site = "site1"
            [[sites]]
            name = "site1"
            endpoints = ["127.0.0.1:1"]
            [[sites]]
            name = "site2"
            endpoints = []
            [[sites]]
            name = "site2"
            endpoints = ["127.0.0.1:2"]
            "#,
        );
        assert_eq!(
            problems,
            [
                "sites[0].name: \"site1\" is this node's own site",
                "sites[1].endpoints: must not be empty",
                "sites[2].name: \"site2\" appears twice",
            ]
        );
    }

    #[test]
    fn load_reads_the_file_then_applies_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            format!("[node]\nname = \"from-file\"\nsite = \"site1\"\n{ANONYMOUS}"),
        )
        .unwrap();
        let env = Environment::from_pairs([("SITEGRID_NODE_NAME", "from-env")]);
        let config = Config::load(Some(&path), &env).unwrap();
        assert_eq!(config.node.name, "from-env");
        assert_eq!(config.node.site, "site1");
    }

    #[test]
    fn principals_are_checked_field_by_field() {
        let text = r#"
            [node]
            name = "n1"
            seeds = ["127.0.0.1:7947"]
            [security]
            [[security.principals]]
            name = "app"
            role = "application"
            token_sha256 = "not-hex"
            [[security.principals]]
            name = "app"
            role = "observer"
            certificate = "observer.example"
            caches = ["nope"]
            [[security.principals]]
            name = "silent"
            role = "monitor"
            [[security.principals]]
            name = "impostor"
            role = "admin"
            certificate = "local"
        "#;
        let config = Config::from_toml(text, "t").unwrap();
        let problems = match config.validate() {
            Err(ConfigError::Invalid { problems }) => problems,
            other => panic!("expected problems, got {other:?}"),
        };
        assert_eq!(
            problems,
            [
                "security.tls.ca: auth is required and this node has peers (seeds or sites), \
                 which prove who they are with certificates: set security.tls with cert, key and ca",
                "security.principals[0].token_sha256: must be 64 hex digits (the SHA-256 of the token)",
                "security.principals[1].name: \"app\" is named twice",
                "security.principals[1].certificate: client certificates need security.tls.ca to verify them",
                "security.principals[2]: needs token_sha256 or certificate (or both): how else would it connect?",
                "security.principals[3].certificate: client certificates need security.tls.ca to verify them",
                "security.principals[1].caches: names \"nope\", which is not a cache of this node",
                "security.principals[3].certificate: \"local\" is a site's name: certificates naming \
                 a site belong to that site's nodes, not to clients",
            ]
        );
    }

    #[test]
    fn a_role_and_a_token_hash_make_a_usable_principal() {
        let text = format!(
            "[node]\nname = \"n1\"\n[security]\n[[security.principals]]\nname = \"kc\"\nrole = \"application\"\n\
             token_sha256 = \"{}\"\ncaches = [\"sessions\"]\n",
            "ab".repeat(32)
        );
        let config = Config::from_toml(&text, "t").unwrap();
        config.validate().unwrap();
        let principal = &config.security.principals[0];
        assert_eq!(principal.role, Role::Application);
        assert_eq!(
            principal.caches.as_deref(),
            Some(&["sessions".to_string()][..])
        );
        let error = Config::from_toml("[security]\nauth = \"maybe\"\n", "t").unwrap_err();
        assert!(error.to_string().contains("maybe"), "{error}");
    }

    #[test]
    fn a_witness_file_needs_no_security_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.toml");
        std::fs::write(&path, "[witness]\nlisten = \"127.0.0.1:11300\"\n").unwrap();
        let env = Environment::default().with_hostname("w");
        assert!(Config::load(Some(&path), &env).is_err());
        let config = Config::load_witness(Some(&path), &env).unwrap();
        assert_eq!(config.witness.unwrap().listen.port(), 11300);
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_the_path() {
        let error = Config::load(
            Some(Path::new("/nonexistent/sitegrid.toml")),
            &Environment::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/sitegrid.toml"),
            "{error}"
        );
    }

    #[test]
    fn max_message_bytes_leaves_room_above_the_limits() {
        let limits = LimitsConfig::default();
        assert!(limits.max_message_bytes() > limits.max_value_bytes + limits.max_key_bytes);
    }
}
