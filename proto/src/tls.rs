//! TLS for every sitegrid connection (rustls, with the ring provider): loading PEM files
//! into server and client configurations, with errors that name the file and what is
//! wrong, and the names a verified certificate vouches for.
//!
//! A certificate's names are its DNS subject alternative names and its subject's common
//! name. A node's certificate names its site (`site1`): nodes of one site call each other
//! with the site name as the expected server name, and peer sites do the same with the
//! peer's name, so a node proves which site it belongs to with the same certificate it
//! serves with.
//!
//! Configurations sit behind an [`ArcSwap`], so a reload (new files on disk) reaches the
//! next connection without a restart; connections already open keep their session.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A TLS file that could not be used, or files that don't fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn problem(path: &Path, what: impl fmt::Display) -> TlsError {
    TlsError(format!("{}: {what}", path.display()))
}

/// The crypto every sitegrid connection uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// HTTP/2 is the only protocol sitegrid speaks.
const ALPN_H2: &[u8] = b"h2";

/// The certificate chain in a PEM file (leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| problem(path, pem_reason(&error)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| problem(path, pem_reason(&error)))?;
    if certificates.is_empty() {
        return Err(problem(path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => problem(path, "holds no PEM private key"),
        error => problem(path, pem_reason(&error)),
    })
}

fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(error) => format!("cannot read it: {error}"),
        error => format!("not a valid PEM file: {error}"),
    }
}

/// The trusted certificate authorities of a PEM file.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| problem(path, format!("not a usable CA certificate: {error}")))?;
    }
    Ok(Arc::new(roots))
}

/// The files a node serves and calls with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf (PEM).
    pub key: PathBuf,
    /// Certificate authorities trusted for peers and client certificates (PEM). Without
    /// it, the node asks no client for a certificate and calls no peer over TLS.
    pub ca: Option<PathBuf>,
}

/// A node's server and client configurations, both made from one set of files.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// For the gRPC port: the node's certificate; client certificates verified against
    /// the CA when there is one, but not required (clients may use tokens instead).
    pub server: Arc<ServerConfig>,
    /// For calls to peers: the CA's roots, and the node's certificate as its client
    /// certificate. `None` without a CA.
    pub client: Option<Arc<ClientConfig>>,
}

impl NodeFiles {
    /// Reads the files; fails naming the file when one is unreadable, not PEM, or the
    /// key does not belong to the certificate.
    pub fn load(&self) -> Result<NodeTls, TlsError> {
        let chain = load_certificates(&self.cert)?;
        let key = load_private_key(&self.key)?;
        let roots = self.ca.as_deref().map(load_roots).transpose()?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(error.to_string()))?;
        let builder = match &roots {
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|error| {
                        problem(self.ca.as_deref().unwrap_or(Path::new("ca")), error)
                    })?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| {
                TlsError(format!(
                    "{} and {} don't make a usable certificate and key (the key must be the \
                     certificate's): {error}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let client = match roots {
            Some(roots) => {
                let mut client = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|error| TlsError(error.to_string()))?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| TlsError(error.to_string()))?;
                client.alpn_protocols = vec![ALPN_H2.to_vec()];
                Some(Arc::new(client))
            }
            None => None,
        };
        Ok(NodeTls {
            server: Arc::new(server),
            client,
        })
    }
}

/// A client configuration for an application: trust `ca`, and present `identity`
/// (certificate chain, key) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError(error.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certificates(cert)?, load_private_key(key)?)
            .map_err(|error| {
                TlsError(format!(
                    "{} and {} don't make a usable certificate and key: {error}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// How a channel's connections are wrapped in TLS: the client configuration (swapped on
/// reload) and the name the server's certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ArcSwap<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Connections verify the server's certificate against the host of the address they
    /// connect to.
    pub fn new(config: Arc<ArcSwap<ClientConfig>>) -> ClientTls {
        ClientTls {
            config,
            server_name: None,
        }
    }

    /// A configuration that is never reloaded (an application's).
    pub fn fixed(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls::new(Arc::new(ArcSwap::new(config)))
    }

    /// Connections verify that the server's certificate names `name` (a site name, or a
    /// DNS name other than the host connected to).
    pub fn expecting(&self, name: &str) -> Result<ClientTls, TlsError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|error| TlsError(format!("{name:?} is not a valid server name: {error}")))?;
        Ok(ClientTls {
            config: self.config.clone(),
            server_name: Some(name),
        })
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.load_full()
    }

    /// The name to verify when connecting to `host`.
    pub fn server_name(&self, host: &str) -> std::io::Result<ServerName<'static>> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_string()).map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a valid server name: {error}"),
                )
            }),
        }
    }
}

/// The names a verified client certificate vouches for (DNS subject alternative names and
/// the subject's common name); servers put it in each request's extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames(pub Arc<[String]>);

impl PeerNames {
    /// The names of `certificate`, a leaf that TLS has already verified.
    pub fn of(certificate: &CertificateDer<'_>) -> PeerNames {
        let mut names = Vec::new();
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) {
            for common_name in parsed.subject().iter_common_name() {
                if let Ok(name) = common_name.as_str() {
                    names.push(name.to_string());
                }
            }
            if let Ok(Some(alternatives)) = parsed.subject_alternative_name() {
                for name in &alternatives.value.general_names {
                    if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                        names.push((*dns).to_string());
                    }
                }
            }
        }
        names.dedup();
        PeerNames(names.into())
    }

    /// Whether the certificate names `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|own| own == name)
    }
}
