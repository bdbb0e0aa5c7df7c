//! `SITEGRID_*` environment overrides of the `[node]` section.
//!
//! The environment is passed in as an [`Environment`] value rather than read from the
//! process, so tests don't depend on (or race on) the real environment.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::{Config, ConfigError, Result};

/// Environment variables and the host name, as seen by config loading.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    hostname: String,
}

impl Environment {
    /// The process's environment and host name.
    pub fn from_process(hostname: String) -> Environment {
        Environment {
            vars: std::env::vars().collect(),
            hostname,
        }
    }

    /// A synthetic environment, for tests.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Environment {
        Environment {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hostname: String::new(),
        }
    }

    /// The same environment with a host name.
    pub fn with_hostname(mut self, hostname: &str) -> Environment {
        self.hostname = hostname.to_string();
        self
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

fn parse<T: FromStr>(variable: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|error: T::Err| ConfigError::Env {
        variable: variable.to_string(),
        message: format!("{value:?}: {error}"),
    })
}

impl Config {
    /// Applies `SITEGRID_NODE_NAME`, `SITEGRID_SITE`, `SITEGRID_SITE_ID`,
    /// `SITEGRID_LISTEN`, `SITEGRID_GOSSIP`, `SITEGRID_HTTP`, `SITEGRID_DATA_DIR`,
    /// `SITEGRID_SEEDS` (comma-separated) and `SITEGRID_WORKER_THREADS`, then names the
    /// node after the host if it has no name yet.
    pub fn apply_env(&mut self, env: &Environment) -> Result<()> {
        let node = &mut self.node;
        if let Some(value) = env.get("SITEGRID_NODE_NAME") {
            node.name = value.to_string();
        }
        if let Some(value) = env.get("SITEGRID_SITE") {
            node.site = value.to_string();
        }
        if let Some(value) = env.get("SITEGRID_SITE_ID") {
            node.site_id = parse("SITEGRID_SITE_ID", value)?;
        }
        if let Some(value) = env.get("SITEGRID_LISTEN") {
            node.listen = parse("SITEGRID_LISTEN", value)?;
        }
        if let Some(value) = env.get("SITEGRID_GOSSIP") {
            node.gossip = parse("SITEGRID_GOSSIP", value)?;
        }
        if let Some(value) = env.get("SITEGRID_HTTP") {
            node.http = parse("SITEGRID_HTTP", value)?;
        }
        if let Some(value) = env.get("SITEGRID_DATA_DIR") {
            node.data_dir = value.into();
        }
        if let Some(value) = env.get("SITEGRID_SEEDS") {
            node.seeds = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(value) = env.get("SITEGRID_WORKER_THREADS") {
            node.worker_threads = Some(parse("SITEGRID_WORKER_THREADS", value)?);
        }
        if node.name.is_empty() {
            node.name = sanitize_hostname(&env.hostname);
        }
        Ok(())
    }
}

/// A host name made into a valid node name: anything but letters, digits, `-`, `_` and
/// `.` becomes `-`; an empty host name becomes `node`.
fn sanitize_hostname(hostname: &str) -> String {
    let name: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "node".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_variable_overrides_the_file() {
        let mut config = Config::default();
        let env = Environment::from_pairs([
            ("SITEGRID_NODE_NAME", "n1"),
            ("SITEGRID_SITE", "site2"),
            ("SITEGRID_SITE_ID", "2"),
            ("SITEGRID_LISTEN", "127.0.0.2:1"),
            ("SITEGRID_GOSSIP", "127.0.0.2:2"),
            ("SITEGRID_HTTP", "127.0.0.2:3"),
            ("SITEGRID_DATA_DIR", "/tmp/x"),
            ("SITEGRID_SEEDS", "a:1, b:2,"),
            ("SITEGRID_WORKER_THREADS", "3"),
        ]);
        config.apply_env(&env).unwrap();
        let node = &config.node;
        assert_eq!(node.name, "n1");
        assert_eq!(node.site, "site2");
        assert_eq!(node.site_id, 2);
        assert_eq!(node.listen.to_string(), "127.0.0.2:1");
        assert_eq!(node.gossip.to_string(), "127.0.0.2:2");
        assert_eq!(node.http.to_string(), "127.0.0.2:3");
        assert_eq!(node.data_dir.to_str(), Some("/tmp/x"));
        assert_eq!(node.seeds, ["a:1", "b:2"]);
        assert_eq!(node.worker_threads, Some(3));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let mut config = Config::default();
        let env = Environment::from_pairs([("SITEGRID_SITE_ID", "two")]);
        let error = config.apply_env(&env).unwrap_err().to_string();
        assert!(
            error.starts_with("environment variable SITEGRID_SITE_ID"),
            "{error}"
        );
    }

    #[test]
    fn an_unnamed_node_takes_the_host_name() {
        let mut config = Config::default();
        config
            .apply_env(&Environment::default().with_hostname("web 01.example"))
            .unwrap();
        assert_eq!(config.node.name, "web-01.example");
        let mut config = Config::default();
        config.apply_env(&Environment::default()).unwrap();
        assert_eq!(config.node.name, "node");
    }
}
