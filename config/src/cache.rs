//! `[caches.NAME]` sections and their per-peer-site backup settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Problems, SiteConfig, check_name};

/// The caches every node has, whatever its config says.
const DEFAULT_CACHES: [&str; 5] = [
    "work",
    "sessions",
    "offlineSessions",
    "actionTokens",
    "loginFailures",
];

/// Caches kept on disk by default: losing them on restart logs users out.
const DEFAULT_PERSISTENT: [&str; 2] = ["sessions", "offlineSessions"];

/// One cache's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep the cache in sled under the data dir, so it survives restarts.
    #[serde(default)]
    pub persistent: bool,
    /// Lifespan of entries written with `lifespan_ms = 0`; unset = never.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lifespan: Option<Duration>,
    /// Max idle time of entries written with `max_idle_ms = 0`; unset = never.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_idle: Option<Duration>,
    /// The cache is never backed up to peer sites.
    #[serde(default)]
    pub local_only: bool,
    /// Backup settings per peer site; a peer site not named here gets the cache's
    /// default (see [`CacheConfig::backup_for`]).
    #[serde(default)]
    pub backup: BTreeMap<String, BackupConfig>,
    /// How an `async` backup from a peer site meets this site's state of the key.
    #[serde(default)]
    pub merge: MergePolicy,
}

/// How a change a peer site sent asynchronously meets this site's state of the key. In
/// every policy an expiry never wins over a live entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergePolicy {
    /// The newer version wins.
    #[default]
    NewerVersion,
    /// A live entry wins over a removal, whatever their versions; otherwise the newer.
    PreferNonNull,
    /// A removal wins over a live entry, whatever their versions; otherwise the newer.
    PreferNull,
}

/// How writes to one cache reach one peer site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `sync`: the peer applies the write before it is acknowledged; `async`: through
    /// a durable outbox, soon after.
    #[serde(default)]
    pub strategy: Strategy,
    /// What a write does when the peer can't be reached.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// How long a sync backup may take before it counts as failed (in doubt).
    #[serde(default = "default_backup_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_backup_timeout() -> Duration {
    Duration::from_millis(4500)
}

/// How writes reach a peer site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Applied in the peer site before the write is acknowledged.
    #[default]
    Sync,
    /// Queued in a durable outbox and applied soon after.
    Async,
}

/// What a write does when a peer site can't be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// The write fails with UNAVAILABLE naming the site; nothing is applied anywhere.
    #[default]
    Fail,
    /// The write goes on, the key is remembered for the peer, a warning is logged.
    Warn,
    /// The write goes on, the key is remembered for the peer, silently.
    Ignore,
}

impl CacheConfig {
    /// The defaults of a cache by name: the two session caches persistent, nothing
    /// expiring unless asked.
    pub fn default_for(name: &str) -> CacheConfig {
        CacheConfig {
            persistent: DEFAULT_PERSISTENT.contains(&name),
            lifespan: None,
            max_idle: None,
            local_only: false,
            backup: BTreeMap::new(),
            merge: MergePolicy::default(),
        }
    }

    /// How this cache (named `name`) is backed up to `site`, or `None` if it isn't.
    ///
    /// Defaults are what an identity provider needs: `loginFailures` asynchronously with
    /// `warn`, every other cache synchronously with `fail`.
    pub fn backup_for(&self, name: &str, site: &str) -> Option<BackupConfig> {
        if self.local_only {
            return None;
        }
        if let Some(backup) = self.backup.get(site) {
            return Some(*backup);
        }
        Some(if name == "loginFailures" {
            BackupConfig {
                strategy: Strategy::Async,
                failure_policy: FailurePolicy::Warn,
                timeout: default_backup_timeout(),
            }
        } else {
            BackupConfig {
                strategy: Strategy::Sync,
                failure_policy: FailurePolicy::Fail,
                timeout: default_backup_timeout(),
            }
        })
    }

    pub(crate) fn validate(&self, name: &str, sites: &[SiteConfig], problems: &mut Problems) {
        check_name(&format!("caches.{name:?}"), name, problems);
        if self.lifespan.is_some_and(|d| d.is_zero()) {
            problems.push(format!("caches.{name}.lifespan"), "must be > 0");
        }
        if self.max_idle.is_some_and(|d| d.is_zero()) {
            problems.push(format!("caches.{name}.max_idle"), "must be > 0");
        }
        for (site, backup) in &self.backup {
            let field = format!("caches.{name}.backup.{site}");
            if !sites.iter().any(|s| &s.name == site) {
                problems.push(&field, "no [[sites]] entry has this name");
            }
            if backup.timeout.is_zero() {
                problems.push(format!("{field}.timeout"), "must be > 0");
            }
        }
        if self.local_only && !self.backup.is_empty() {
            problems.push(
                format!("caches.{name}.backup"),
                "must be empty when local_only = true",
            );
        }
    }
}

/// The five default caches with their defaults.
pub fn default_caches() -> BTreeMap<String, CacheConfig> {
    DEFAULT_CACHES
        .iter()
        .map(|name| (name.to_string(), CacheConfig::default_for(name)))
        .collect()
}

/// A `[caches.NAME]` section as written: fields left out take the named cache's
/// defaults, not the type's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    persistent: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    lifespan: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_idle: Option<Duration>,
    local_only: Option<bool>,
    backup: Option<BTreeMap<String, BackupConfig>>,
    merge: Option<MergePolicy>,
}

/// Reads `[caches.*]` on top of the default caches.
pub(crate) fn deserialize_caches<'de, D>(
    deserializer: D,
) -> Result<BTreeMap<String, CacheConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    let sections = BTreeMap::<String, CacheSection>::deserialize(deserializer)?;
    let mut caches = default_caches();
    for (name, section) in sections {
        let defaults = CacheConfig::default_for(&name);
        caches.insert(
            name,
            CacheConfig {
                persistent: section.persistent.unwrap_or(defaults.persistent),
                lifespan: section.lifespan.or(defaults.lifespan),
                max_idle: section.max_idle.or(defaults.max_idle),
                local_only: section.local_only.unwrap_or(defaults.local_only),
                backup: section.backup.unwrap_or(defaults.backup),
                merge: section.merge.unwrap_or(defaults.merge),
            },
        );
    }
    Ok(caches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_failures_default_to_async_and_the_rest_to_sync_fail() {
        let config = crate::Config::default();
        let login = config.caches["loginFailures"]
            .backup_for("loginFailures", "site2")
            .unwrap();
        assert_eq!(login.strategy, Strategy::Async);
        for name in ["work", "sessions", "offlineSessions", "actionTokens"] {
            let backup = config.caches[name].backup_for(name, "site2").unwrap();
            assert_eq!(backup.strategy, Strategy::Sync, "{name}");
            assert_eq!(backup.failure_policy, FailurePolicy::Fail, "{name}");
        }
    }

    #[test]
    fn merge_policies_are_read_by_name() {
        let config = crate::Config::from_toml(
            "[caches.loginFailures]\nmerge = \"prefer-non-null\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(
            config.caches["loginFailures"].merge,
            MergePolicy::PreferNonNull
        );
        assert_eq!(config.caches["work"].merge, MergePolicy::NewerVersion);
        let error = crate::Config::from_toml("[caches.work]\nmerge = \"newest\"\n", "test")
            .unwrap_err()
            .to_string();
        assert!(error.contains("newest"), "{error}");
    }

    #[test]
    fn local_only_caches_have_no_backup() {
        let mut cache = CacheConfig::default_for("work");
        cache.local_only = true;
        assert_eq!(cache.backup_for("work", "site2"), None);
    }
}
