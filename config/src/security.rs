//! `[security]`: TLS files, who may connect, and what each principal may do.
//!
//! A node started with no file allows anonymous access (it listens on loopback); a file
//! that has no `[security]` section requires credentials, so a node put on a network
//! from a config file is never open by accident: `auth = "none"` has to be written.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Problems;

/// Who may connect and what they may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `required` (a file's default): every client call carries a principal's token or
    /// certificate. `none`: anyone who reaches the port may do anything.
    #[serde(default = "Auth::required")]
    pub auth: Auth,
    /// TLS on the gRPC port and on calls to peers (in-site and cross-site).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The principals that may connect, each with its role.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    /// Where admin operations (`Clear`, site operations) are written, one JSON line each;
    /// default `<data_dir>/audit.log`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
}

/// Whether clients must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Every client call needs a token or a certificate of a configured principal.
    Required,
    /// Anonymous access: for a node on loopback or a trusted network only.
    None,
}

impl Auth {
    fn required() -> Auth {
        Auth::Required
    }
}

/// PEM files for TLS; they are read again when they change or on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain, leaf first. It must name the node's site as a DNS
    /// subject alternative name: peers check it when they call the node.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
    /// The certificate authorities trusted for peers (nodes of this site and of peer
    /// sites) and for client certificates. Without it, peers are called without TLS
    /// and clients can only use tokens.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How often the files are checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// One principal: an application, an operator or a monitoring system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The name the audit log and the logs use.
    pub name: String,
    /// What the principal may do.
    pub role: Role,
    /// The SHA-256 of the principal's bearer token, in hex (`sitegridctl token new`
    /// makes a token and prints both). The token itself is never stored.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// A name (DNS subject alternative name or common name) of the principal's client
    /// certificate, signed by `tls.ca`.
    #[serde(default)]
    pub certificate: Option<String>,
    /// The caches the role applies to; default every cache.
    #[serde(default)]
    pub caches: Option<Vec<String>>,
}

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: reads, writes, listeners, bulk reads, `Clear`, site operations.
    Admin,
    /// An identity node: reads, writes, listeners and bulk reads.
    Application,
    /// Reads, listeners and bulk reads.
    Observer,
    /// Node, cluster and site status only; no cache data.
    Monitor,
}

impl SecurityConfig {
    /// The no-file default: anonymous access, no TLS.
    pub fn anonymous() -> SecurityConfig {
        SecurityConfig {
            auth: Auth::None,
            tls: None,
            principals: Vec::new(),
            audit_log: None,
        }
    }

    /// The default of a file without `[security]`: credentials required (and, with no
    /// principal, a configuration error that says how to add one or to opt out).
    pub fn required() -> SecurityConfig {
        SecurityConfig {
            auth: Auth::Required,
            ..SecurityConfig::anonymous()
        }
    }

    /// Whether peers are called, and authenticated, with certificates.
    pub fn mutual_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.ca.is_some())
    }

    pub(crate) fn validate(&self, has_peers: bool, problems: &mut Problems) {
        if self.auth == Auth::Required && self.principals.is_empty() {
            problems.push(
                "security.principals",
                "auth is required but no principal is configured: add [[security.principals]] \
                 (a token from `sitegridctl token new`, or a client certificate), or set \
                 security.auth = \"none\" to allow anonymous access",
            );
        }
        if self.auth == Auth::Required && has_peers && !self.mutual_tls() {
            problems.push(
                "security.tls.ca",
                "auth is required and this node has peers (seeds or sites), which prove who \
                 they are with certificates: set security.tls with cert, key and ca",
            );
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.reload_interval.is_zero())
        {
            problems.push("security.tls.reload_interval", "must be > 0");
        }
        let mut names = std::collections::BTreeSet::new();
        let mut tokens = std::collections::BTreeSet::new();
        for (i, principal) in self.principals.iter().enumerate() {
            let field = format!("security.principals[{i}]");
            if principal.name.is_empty() {
                problems.push(format!("{field}.name"), "must not be empty");
            } else if !names.insert(&principal.name) {
                problems.push(
                    format!("{field}.name"),
                    format!("{:?} is named twice", principal.name),
                );
            }
            if principal.token_sha256.is_none() && principal.certificate.is_none() {
                problems.push(
                    &field,
                    "needs token_sha256 or certificate (or both): how else would it connect?",
                );
            }
            match &principal.token_sha256 {
                Some(hash) if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    problems.push(
                        format!("{field}.token_sha256"),
                        "must be 64 hex digits (the SHA-256 of the token)",
                    );
                }
                Some(hash) if !tokens.insert(hash.to_ascii_lowercase()) => {
                    problems.push(
                        format!("{field}.token_sha256"),
                        "is another principal's token too: each token names one principal",
                    );
                }
                _ => {}
            }
            if principal.certificate.is_some() && !self.mutual_tls() {
                problems.push(
                    format!("{field}.certificate"),
                    "client certificates need security.tls.ca to verify them",
                );
            }
            if principal.caches.as_ref().is_some_and(Vec::is_empty) {
                problems.push(
                    format!("{field}.caches"),
                    "must name at least one cache (leave it out for every cache)",
                );
            }
        }
    }
}
