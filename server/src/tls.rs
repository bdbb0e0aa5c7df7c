//! TLS on the node's gRPC port and on its calls to peers.
//!
//! The files are read at start (a node with unreadable or mismatched files does not
//! start), and again when they change (checked every `reload_interval`) or on SIGHUP.
//! A reload that fails keeps the configuration in use and says why in the log and in
//! `sitegrid_tls_reloads_total{outcome="failed"}`; new connections take the new
//! configuration, open ones keep theirs.
//!
//! Handshakes run in tasks of their own, bounded in time, so a client that connects
//! and says nothing holds up no one.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::{ClientConfig, ServerConfig};
use sitegrid_config::TlsConfig;
use sitegrid_proto::tls::{ClientTls, NodeFiles, TlsError};
use sitegrid_proto::transport::{CoalescingStream, MaybeTls, ServerStream};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted and waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 256;

/// A node's TLS configurations, swapped when their files change.
#[derive(Debug)]
pub struct NodeTls {
    files: NodeFiles,
    reload_interval: Duration,
    server: ArcSwap<ServerConfig>,
    /// `None` without a CA: peers are then called without TLS.
    client: Option<Arc<ArcSwap<ClientConfig>>>,
    /// When each file last changed, as far as the last check saw.
    seen: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl NodeTls {
    /// The TLS of a node's (or the witness's) config, if it has `security.tls`.
    pub fn of(config: &sitegrid_config::Config) -> Result<Option<Arc<NodeTls>>, TlsError> {
        config.security.tls.as_ref().map(NodeTls::load).transpose()
    }

    /// Reads the files of `config`; the error names the file and what is wrong with it.
    pub fn load(config: &TlsConfig) -> Result<Arc<NodeTls>, TlsError> {
        let files = NodeFiles {
            cert: config.cert.clone(),
            key: config.key.clone(),
            ca: config.ca.clone(),
        };
        let seen = stamps(&files);
        let loaded = files.load()?;
        Ok(Arc::new(NodeTls {
            files,
            reload_interval: config.reload_interval,
            server: ArcSwap::new(loaded.server),
            client: loaded.client.map(|client| Arc::new(ArcSwap::new(client))),
            seen: Mutex::new(seen),
        }))
    }

    /// How calls to peers are wrapped in TLS (`None` without a CA). Each channel says
    /// which name the peer's certificate must carry with [`ClientTls::expecting`].
    pub fn client(&self) -> Option<ClientTls> {
        self.client.clone().map(ClientTls::new)
    }

    /// Reads the files again if `force` or if one of them changed since the last read.
    /// Returns whether a new configuration was taken.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        {
            let mut seen = self.seen.lock();
            if !force && *seen == now {
                return Ok(false);
            }
            // Whatever the outcome, these files are not read again until they change.
            *seen = now;
        }
        let loaded = self.files.load()?;
        self.server.store(loaded.server);
        if let (Some(client), Some(loaded)) = (&self.client, loaded.client) {
            client.store(loaded);
        }
        Ok(true)
    }

    /// Reads the files again (if `force` or if they changed) and says how it went.
    fn reload_and_report(&self, force: bool) {
        match self.reload(force) {
            Ok(false) => {}
            Ok(true) => {
                info!(cert = %self.files.cert.display(), "TLS files reloaded");
                metrics::counter!("sitegrid_tls_reloads_total", "outcome" => "ok").increment(1);
            }
            Err(error) => {
                warn!(%error, "TLS files not reloaded: connections keep the configuration in use");
                metrics::counter!("sitegrid_tls_reloads_total", "outcome" => "failed").increment(1);
            }
        }
    }

    /// The connections of `listener`, each after its TLS handshake; handshakes that
    /// fail or take too long are dropped (and logged at debug).
    pub fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        mut stopped: watch::Receiver<bool>,
    ) -> mpsc::Receiver<io::Result<ServerStream>> {
        let (sender, receiver) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                let (stream, from) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: the server goes on.
                        warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(self.server.load_full());
                let sender = sender.clone();
                tokio::spawn(async move {
                    let stream = match CoalescingStream::new(stream) {
                        Ok(stream) => stream,
                        Err(error) => return debug!(%from, %error, "connection lost"),
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send(Ok(MaybeTls::Tls(Box::new(tls)))).await;
                        }
                        Ok(Err(error)) => {
                            debug!(%from, %error, "TLS handshake failed");
                            metrics::counter!("sitegrid_tls_handshake_failures_total").increment(1);
                        }
                        Err(_) => {
                            debug!(%from, "TLS handshake timed out");
                            metrics::counter!("sitegrid_tls_handshake_failures_total").increment(1);
                        }
                    }
                });
            }
        });
        receiver
    }
}

/// Reloads `tls` on SIGHUP and when its files change, until `stopped` turns true. SIGHUP
/// is taken even without TLS, so `systemctl reload` never stops a node.
pub async fn watch(tls: Option<Arc<NodeTls>>, mut stopped: watch::Receiver<bool>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP: TLS files reload on change only");
            None
        }
    };
    let interval = tls
        .as_ref()
        .map_or(Duration::from_secs(3600), |tls| tls.reload_interval);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = ticks.tick() => false,
            Some(()) = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        match &tls {
            Some(tls) => tls.reload_and_report(force),
            None if force => info!("SIGHUP: no TLS files to reload"),
            None => {}
        }
    }
}

/// The modification time and length of each file (`None` for one that can't be read).
fn stamps(files: &NodeFiles) -> Vec<Option<(SystemTime, u64)>> {
    let paths: Vec<&PathBuf> = [&files.cert, &files.key]
        .into_iter()
        .chain(files.ca.as_ref())
        .collect();
    paths
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}
