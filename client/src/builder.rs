//! [`ClientBuilder`]: a client's options, and making its channels.

use std::path::PathBuf;
use std::time::Duration;

use sitegrid_proto::Backoff;
use sitegrid_proto::tls::ClientTls;
use tonic::transport::{Channel, Endpoint};

use crate::client::{Client, Connection, Settings};
use crate::credentials::Credentials;
use crate::endpoint::normalize_endpoint;
use crate::error::{Error, Result};
use crate::topology::Topology;

/// Default for [`ClientBuilder::request_timeout`].
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ClientBuilder::connect_timeout`].
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle-looking connection with a call in flight is pinged. A listener's
/// stream may carry nothing for hours; without pings, a node that vanished without
/// closing its connections (power loss, partition) would leave it waiting forever.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as broken.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ClientBuilder::topology_refresh_interval`].
const DEFAULT_TOPOLOGY_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Options of a [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    request_timeout: Duration,
    connect_timeout: Duration,
    backoff: Backoff,
    discover_topology: bool,
    topology_refresh_interval: Duration,
    pipeline: bool,
    token: Option<String>,
    tls: Option<TlsOptions>,
}

/// The TLS files a client uses.
#[derive(Debug, Clone)]
struct TlsOptions {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

impl ClientBuilder {
    /// A builder for a client of `endpoints` (`host:port` or `http://host:port`), with a
    /// 10 s request timeout, a 5 s connect timeout, the default [`Backoff`], and the
    /// site's topology discovered and refreshed every 5 s.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff: Backoff::default(),
            discover_topology: true,
            topology_refresh_interval: DEFAULT_TOPOLOGY_REFRESH_INTERVAL,
            pipeline: true,
            token: None,
            tls: None,
        }
    }

    /// Every call carries `authorization: Bearer <token>`: a token of a principal in the
    /// nodes' `[[security.principals]]` (they keep its SHA-256).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Connections use TLS and trust the certificate authorities in the PEM file `ca`.
    /// A node's certificate must name the host of the endpoint, unless
    /// [`tls_server_name`](Self::tls_server_name) names what it must carry instead.
    #[must_use]
    pub fn tls(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls = Some(TlsOptions {
            ca: ca.into(),
            identity: None,
            server_name: None,
        });
        self
    }

    /// With [`tls`](Self::tls): present the client certificate chain `cert` (PEM) with
    /// its key `key`, for a principal that authenticates by certificate.
    #[must_use]
    pub fn tls_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.identity = Some((cert.into(), key.into()));
        }
        self
    }

    /// With [`tls`](Self::tls): the name the nodes' certificates must carry (their site
    /// name, say), instead of the endpoint's host.
    #[must_use]
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.server_name = Some(name.into());
        }
        self
    }

    /// The credentials and TLS configuration the options describe.
    fn credentials(&self) -> Result<(Credentials, Option<ClientTls>)> {
        let invalid = |reason: String| Error::InvalidCredentials { reason };
        let credentials = match &self.token {
            Some(token) => Credentials::bearer(token)
                .ok_or_else(|| invalid("the token must be visible ASCII".into()))?,
            None => Credentials::default(),
        };
        let tls = match &self.tls {
            None => None,
            Some(options) => {
                let identity = options
                    .identity
                    .as_ref()
                    .map(|(cert, key)| (cert.as_path(), key.as_path()));
                let config = sitegrid_proto::tls::client_config(&options.ca, identity)
                    .map_err(|error| invalid(error.to_string()))?;
                let tls = ClientTls::fixed(config);
                Some(match &options.server_name {
                    Some(name) => tls
                        .expecting(name)
                        .map_err(|error| invalid(error.to_string()))?,
                    None => tls,
                })
            }
        };
        Ok((credentials, tls))
    }

    /// How long one attempt of a request may take; it is also sent to the server as the
    /// call's deadline. For `entries`, it bounds the wait for each batch instead.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long opening a connection to an endpoint may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How failed requests are retried; `max_attempts: 1` turns retries off.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether the client learns the site's members from the nodes (on by default).
    ///
    /// When on, a background task asks a ready node for the members (`ClusterStatus`)
    /// right away, every [`topology_refresh_interval`](Self::topology_refresh_interval),
    /// and as soon as a request meets an unreachable, not ready or silent node. Members
    /// the client was not given become endpoints too; writes of a key go first to its
    /// primary (saving the node a forwarding hop), and other requests to any ready
    /// member. Turn it off when the addresses the nodes advertise cannot be reached from
    /// here, or to pin every request to the given endpoints.
    #[must_use]
    pub fn discover_topology(mut self, discover: bool) -> Self {
        self.discover_topology = discover;
        self
    }

    /// How often the site's members are asked for again when nothing suggests they
    /// changed; 5 s by default.
    #[must_use]
    pub fn topology_refresh_interval(mut self, interval: Duration) -> Self {
        self.topology_refresh_interval = interval;
        self
    }

    /// Whether single-key requests (`get`, `put`, `put_if_absent`, `replace`,
    /// `replace_with_version`, `remove`, `remove_with_version`) share a few long-lived
    /// `Pipeline` streams per endpoint (on by default) rather than making one unary call
    /// each. Same answers either way; pipelined, many concurrent requests cost the
    /// server and the network much less. Turn it off for a server that predates
    /// `Pipeline`, or to compare the two.
    #[must_use]
    pub fn pipeline(mut self, pipeline: bool) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// Makes the client. Connections open lazily, on the first request to each endpoint,
    /// so this fails only on malformed endpoints; an unreachable node shows up as a
    /// (retried) error on the requests themselves. The topology is learned in the
    /// background: until it is, requests go to the given endpoints.
    ///
    /// Async only because the channels and the refresh task need a running tokio
    /// runtime.
    pub async fn connect(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoint);
        }
        let (credentials, tls) = self.credentials()?;
        let mut configured = Vec::with_capacity(self.endpoints.len());
        let mut connections = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let uri = normalize_endpoint(endpoint)?;
            let channel = lazy_channel(&uri, self.connect_timeout, tls.clone()).map_err(|e| {
                Error::InvalidEndpoint {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                }
            })?;
            configured.push(uri);
            connections.push(Connection::new(channel, &credentials));
        }
        let client = Client::new(
            Topology::new(configured),
            connections,
            Settings {
                request_timeout: self.request_timeout,
                connect_timeout: self.connect_timeout,
                backoff: self.backoff,
                pipeline: self.pipeline,
                credentials,
                tls,
            },
        );
        if self.discover_topology {
            client.start_refresher(self.topology_refresh_interval);
        }
        Ok(client)
    }
}

/// A channel to the normalized endpoint `uri`; it connects on first use.
pub(crate) fn lazy_channel(
    uri: &str,
    connect_timeout: Duration,
    tls: Option<ClientTls>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    // Connections are `CoalescingStream`s: small requests share system calls.
    Ok(sitegrid_proto::transport::lazy_channel(&endpoint, tls))
}
