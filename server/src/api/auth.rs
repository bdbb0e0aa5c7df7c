//! Who calls, and whether they may.
//!
//! One tower layer in front of every service ([`AuthLayer`]) works out the caller of each
//! request from its bearer token or its client certificate, checks that the caller may
//! use the service and method at all, and puts the [`Caller`] in the request's
//! extensions. The cache handlers then check the caller against the cache they touch
//! ([`Caller::may`]); that check needs the request's body, which the layer doesn't read.
//!
//! Callers:
//! - a principal of `[[security.principals]]`, by token (`authorization: Bearer ...`,
//!   matched by its SHA-256) or by a name of its verified client certificate;
//! - a node of this site: a verified certificate that names the site;
//! - a node of a peer site: a verified certificate that names a configured peer site;
//! - anyone, when `security.auth = "none"`.
//!
//! Nodes and peer sites authenticate with certificates only: a token can't prove
//! membership. Without mutual TLS, in-site and cross-site calls are taken from anyone only
//! when `auth = "none"`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use sitegrid_config::{Auth, Config, Role};
use sitegrid_proto::tls::PeerNames;
use sitegrid_proto::transport::ConnInfo;
use tonic::Status;
use tonic::codegen::http;

use crate::api::audit::Audit;
use crate::error::{Error, Result};

/// What a request does to a cache (or to the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    /// Get, GetAll, Size.
    Read,
    /// Put, Replace, Remove and their variants, PutAll, RemoveByTag.
    Write,
    /// Listen.
    Listen,
    /// Entries.
    BulkRead,
    /// Clear, site operations.
    Admin,
    /// Ping, cluster and site status.
    Status,
}

impl Permission {
    fn label(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Listen => "listen",
            Permission::BulkRead => "bulk read",
            Permission::Admin => "admin",
            Permission::Status => "status",
        }
    }
}

/// Whether `role` grants `permission`.
fn grants(role: Role, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Admin => true,
        Role::Application => matches!(permission, Read | Write | Listen | BulkRead | Status),
        Role::Observer => matches!(permission, Read | Listen | BulkRead | Status),
        Role::Monitor => permission == Status,
    }
}

/// A configured principal.
#[derive(Debug)]
pub(crate) struct Principal {
    name: String,
    role: Role,
    /// `None`: every cache.
    caches: Option<HashSet<String>>,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    who: Who,
    /// The connection's remote address.
    pub(crate) address: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
enum Who {
    /// `auth = "none"` and no credentials.
    Anonymous,
    Principal(Arc<Principal>),
    /// A node of this site.
    Node,
    /// A node of a peer site.
    PeerSite(Arc<str>),
    /// A request that did not go through the auth layer (none should): it may do nothing.
    Unchecked,
}

impl Caller {
    /// The caller the auth layer put in a request's extensions; a request that did not
    /// go through it is nobody's and may do nothing.
    pub(crate) fn of(extensions: &tonic::Extensions) -> Caller {
        extensions.get::<Caller>().cloned().unwrap_or(Caller {
            who: Who::Unchecked,
            address: None,
        })
    }

    /// How the audit log and the logs name the caller.
    pub(crate) fn name(&self) -> String {
        match &self.who {
            Who::Anonymous => "anonymous".into(),
            Who::Principal(principal) => principal.name.clone(),
            Who::Node => "node of this site".into(),
            Who::PeerSite(site) => format!("site {site}"),
            Who::Unchecked => "unchecked".into(),
        }
    }

    /// `Ok` if the caller may do `permission` to `cache`, otherwise PERMISSION_DENIED
    /// naming what is missing.
    pub(crate) fn may(&self, permission: Permission, cache: &str) -> Result<()> {
        match &self.who {
            Who::Anonymous | Who::Node => Ok(()),
            Who::PeerSite(site) => Err(Error::PermissionDenied(format!(
                "site {site} may only call the site link"
            ))),
            Who::Unchecked => Err(Error::PermissionDenied(
                "the request was not authenticated".into(),
            )),
            Who::Principal(principal) => {
                if !grants(principal.role, permission) {
                    return Err(Error::PermissionDenied(format!(
                        "{} has role {}, which does not grant {}",
                        principal.name,
                        role_name(principal.role),
                        permission.label()
                    )));
                }
                match &principal.caches {
                    Some(caches) if permission != Permission::Status && !caches.contains(cache) => {
                        Err(Error::PermissionDenied(format!(
                            "{} may not use cache {cache:?}",
                            principal.name
                        )))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Application => "application",
        Role::Observer => "observer",
        Role::Monitor => "monitor",
    }
}

/// Works out callers from credentials, and which services they may call.
#[derive(Debug)]
pub(crate) struct Authenticator {
    required: bool,
    /// Peers are authenticated by certificates.
    mutual_tls: bool,
    site: String,
    peer_sites: HashSet<String>,
    by_token: HashMap<[u8; 32], Arc<Principal>>,
    by_certificate: HashMap<String, Arc<Principal>>,
    audit: Arc<Audit>,
}

impl Authenticator {
    /// The authenticator of a node's config.
    pub(crate) fn new(config: &Config, audit: Arc<Audit>) -> Authenticator {
        let security = &config.security;
        let mut by_token = HashMap::new();
        let mut by_certificate = HashMap::new();
        for principal in &security.principals {
            let entry = Arc::new(Principal {
                name: principal.name.clone(),
                role: principal.role,
                caches: principal
                    .caches
                    .as_ref()
                    .map(|caches| caches.iter().cloned().collect()),
            });
            if let Some(hash) = &principal.token_sha256 {
                let mut digest = [0u8; 32];
                // Validated as 64 hex digits when the config was loaded.
                if hex::decode_to_slice(hash, &mut digest).is_ok() {
                    by_token.insert(digest, entry.clone());
                }
            }
            if let Some(name) = &principal.certificate {
                by_certificate.insert(name.clone(), entry);
            }
        }
        Authenticator {
            required: security.auth == Auth::Required,
            mutual_tls: security.mutual_tls(),
            site: config.node.site.clone(),
            peer_sites: config.sites.iter().map(|site| site.name.clone()).collect(),
            by_token,
            by_certificate,
            audit,
        }
    }

    /// The caller of a request with these headers, on this connection.
    fn identify(
        &self,
        headers: &http::HeaderMap,
        connection: Option<&ConnInfo>,
    ) -> Result<Who, Status> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header must be `Bearer <token>`")
                })?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            return match self.by_token.get(&digest) {
                Some(principal) => Ok(Who::Principal(principal.clone())),
                None => Err(Status::unauthenticated(
                    "the token is not one of this node's principals",
                )),
            };
        }
        if let Some(who) = connection
            .and_then(|connection| connection.peer.as_ref())
            .and_then(|names| self.by_names(names))
        {
            return Ok(who);
        }
        if self.required {
            Err(Status::unauthenticated(
                "no credentials: send `authorization: Bearer <token>` or a client certificate \
                 of a configured principal",
            ))
        } else {
            Ok(Who::Anonymous)
        }
    }

    /// The caller a verified certificate names: this site, a peer site, or a principal.
    fn by_names(&self, names: &PeerNames) -> Option<Who> {
        if names.contains(&self.site) {
            return Some(Who::Node);
        }
        if let Some(site) = names.0.iter().find(|name| self.peer_sites.contains(*name)) {
            return Some(Who::PeerSite(Arc::from(site.as_str())));
        }
        names
            .0
            .iter()
            .find_map(|name| self.by_certificate.get(name))
            .map(|principal| Who::Principal(principal.clone()))
    }

    /// The caller of a request to `path`, if it may call that method at all.
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        connection: Option<&ConnInfo>,
    ) -> Result<Caller, Status> {
        let address = connection.and_then(|connection| connection.remote);
        // Load balancers' health checks need no credentials and learn nothing.
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok(Caller {
                who: Who::Anonymous,
                address,
            });
        }
        let who = self.identify(headers, connection)?;
        let caller = Caller { who, address };
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let internal = |allowed: bool, what: &str| {
            // Without certificates, internal calls are anonymous: taken only with auth off.
            let anonymous = matches!(caller.who, Who::Anonymous) && !self.mutual_tls;
            if allowed || anonymous {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "{what} is for {}; {} may not call it",
                    if what == "the site link" {
                        "peer sites, with a certificate naming the site"
                    } else {
                        "nodes of this site, with a certificate naming the site"
                    },
                    caller.name()
                )))
            }
        };
        match service {
            "sitegrid.v1.ReplicationService" => {
                internal(matches!(caller.who, Who::Node), "replication")?
            }
            // Nodes of this site forward a peer site's requests to a key's primary.
            "sitegrid.v1.SiteLink" => internal(
                matches!(caller.who, Who::PeerSite(_) | Who::Node),
                "the site link",
            )?,
            "sitegrid.v1.Admin" if method == "SiteCommand" => {
                if let Err(error) = caller.may(Permission::Admin, "") {
                    self.audit
                        .record(&caller, "SiteCommand", "", "permission_denied");
                    return Err(error.into());
                }
            }
            _ => caller.may(Permission::Status, "").map_err(Status::from)?,
        }
        Ok(caller)
    }
}

/// The tower layer that authenticates every request (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub(crate) fn new(authenticator: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<std::result::Result<S::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let admitted = self.authenticator.admit(
            request.uri().path(),
            request.headers(),
            request.extensions().get::<ConnInfo>(),
        );
        match admitted {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                let code = sitegrid_proto::ErrorCode::from_grpc(status.code()).as_str();
                metrics::counter!("sitegrid_requests_refused_total", "code" => code).increment(1);
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(toml: &str) -> Authenticator {
        let config = Config::from_toml(toml, "t").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(&dir.path().join("audit.log")).unwrap());
        Authenticator::new(&config, audit)
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn principal(name: &str, role: &str, token: &str, caches: &str) -> String {
        format!(
            "[[security.principals]]\nname = {name:?}\nrole = {role:?}\ntoken_sha256 = {:?}\n{caches}\n",
            hex::encode(Sha256::digest(token.as_bytes()))
        )
    }

    #[test]
    fn each_role_grants_what_its_name_says() {
        let toml = format!(
            "[security]\n{}{}{}{}",
            principal("ops", "admin", "t-admin", ""),
            principal("kc", "application", "t-app", "caches = [\"sessions\"]"),
            principal("viewer", "observer", "t-obs", ""),
            principal("prom", "monitor", "t-mon", ""),
        );
        let auth = authenticator(&toml);
        let caller = |token: &str| {
            auth.admit("/sitegrid.v1.Cache/Get", &bearer(token), None)
                .unwrap()
        };
        use Permission::*;
        for (token, permission, cache, allowed) in [
            ("t-admin", Admin, "work", true),
            ("t-app", Write, "sessions", true),
            ("t-app", Write, "work", false),
            ("t-app", Admin, "sessions", false),
            ("t-obs", Read, "work", true),
            ("t-obs", Listen, "work", true),
            ("t-obs", Write, "work", false),
            ("t-mon", Status, "", true),
            ("t-mon", Read, "work", false),
        ] {
            let outcome = caller(token).may(permission, cache);
            assert_eq!(
                outcome.is_ok(),
                allowed,
                "{token} {permission:?} {cache}: {outcome:?}"
            );
            if let Err(error) = outcome {
                assert!(matches!(error, Error::PermissionDenied(_)), "{error:?}");
            }
        }
    }

    #[test]
    fn missing_and_wrong_credentials_are_unauthenticated() {
        let auth = authenticator(&format!(
            "[security]\n{}",
            principal("kc", "application", "right", "")
        ));
        for headers in [http::HeaderMap::new(), bearer("wrong")] {
            let status = auth
                .admit("/sitegrid.v1.Cache/Get", &headers, None)
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        }
        let mut basic = http::HeaderMap::new();
        basic.insert(
            http::header::AUTHORIZATION,
            "Basic a2M6cGFzcw==".parse().unwrap(),
        );
        let status = auth
            .admit("/sitegrid.v1.Cache/Get", &basic, None)
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // Health checks need no credentials.
        auth.admit(
            "/grpc.health.v1.Health/Check",
            &http::HeaderMap::new(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn internal_services_need_a_certificate_naming_the_right_site() {
        let auth = authenticator(&format!(
            "[node]\nsite = \"site1\"\n[[sites]]\nname = \"site2\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [security]\ntls = {{ cert = \"c\", key = \"k\", ca = \"ca\" }}\n{}",
            principal("ops", "admin", "t-admin", "")
        ));
        let from = |names: &[&str]| ConnInfo {
            remote: None,
            peer: Some(PeerNames(names.iter().map(|n| n.to_string()).collect())),
        };
        let none = http::HeaderMap::new();
        let node = from(&["site1"]);
        let peer = from(&["site2"]);
        let stranger = from(&["site9"]);
        auth.admit("/sitegrid.v1.ReplicationService/Apply", &none, Some(&node))
            .unwrap();
        auth.admit("/sitegrid.v1.SiteLink/Backup", &none, Some(&peer))
            .unwrap();
        // A node of this site forwarding a peer site's backup to the key's primary.
        auth.admit("/sitegrid.v1.SiteLink/Backup", &none, Some(&node))
            .unwrap();
        for (path, connection) in [
            ("/sitegrid.v1.ReplicationService/Apply", &peer),
            ("/sitegrid.v1.Cache/Get", &peer),
        ] {
            let status = auth.admit(path, &none, Some(connection)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{path}");
        }
        let status = auth
            .admit("/sitegrid.v1.SiteLink/Backup", &none, Some(&stranger))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // An administrator's token is no site's certificate.
        let status = auth
            .admit(
                "/sitegrid.v1.ReplicationService/Apply",
                &bearer("t-admin"),
                None,
            )
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn without_auth_anyone_may_do_anything_but_a_wrong_token_is_still_refused() {
        let auth = authenticator(&format!(
            "[security]\nauth = \"none\"\n{}",
            principal("kc", "observer", "t-obs", "")
        ));
        let anonymous = auth
            .admit("/sitegrid.v1.Cache/Clear", &http::HeaderMap::new(), None)
            .unwrap();
        anonymous.may(Permission::Admin, "work").unwrap();
        auth.admit(
            "/sitegrid.v1.ReplicationService/Apply",
            &http::HeaderMap::new(),
            None,
        )
        .unwrap();
        let observer = auth
            .admit("/sitegrid.v1.Cache/Put", &bearer("t-obs"), None)
            .unwrap();
        assert!(observer.may(Permission::Write, "work").is_err());
        assert!(
            auth.admit("/sitegrid.v1.Cache/Put", &bearer("nope"), None)
                .is_err()
        );
    }
}
