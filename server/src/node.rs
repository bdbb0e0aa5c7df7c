//! Runs a node: opens the store, serves gRPC and HTTP on listeners the caller bound,
//! keeps the background tasks going, and shuts everything down in order when the
//! caller's shutdown future completes.
//!
//! Shutdown goes through one `watch` channel; every task is awaited and its end logged,
//! and the storage thread syncs what is queued before the process exits.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sitegrid_config::Config;
use sitegrid_proto::transport::CoalescingStream;
use sitegrid_proto::v1::admin_server::AdminServer;
use sitegrid_proto::v1::cache_server::CacheServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic_health::pb::health_server::{Health, HealthServer};
use tracing::{info, warn};

use crate::api::{AdminService, CacheService, Validator};
use crate::error::{Error, Result};
use crate::events::Hub;
use crate::store::storage::{SledStorage, Storage};
use crate::store::time::SystemTimeSource;
use crate::store::{Store, reaper};

/// The sockets a node serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC for clients (and, later, peers).
    pub grpc: TcpListener,
    /// HTTP for `/metrics`, `/health`, `/ready`.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses of a node's config.
    pub async fn bind(config: &Config) -> Result<Listeners> {
        Ok(Listeners {
            grpc: bind(config.node.listen, "node.listen").await?,
            http: bind(config.node.http, "node.http").await?,
        })
    }
}

async fn bind(address: SocketAddr, field: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot listen on {address} ({field})"),
            source,
        })
}

/// Who a node is, as it reports itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Node name.
    pub name: String,
    /// Site name.
    pub site: String,
    /// Site id.
    pub site_id: u8,
    /// gRPC address it serves on.
    pub address: String,
}

/// What the services need to know about their node: who it is and whether it serves.
#[derive(Debug, Clone)]
pub struct NodeState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    identity: Identity,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    store: Store,
    /// Turns true when the node begins to shut down; long streams end on it.
    stopping: watch::Receiver<bool>,
}

impl NodeState {
    fn new(identity: Identity, store: Store, stopping: watch::Receiver<bool>) -> NodeState {
        NodeState {
            inner: Arc::new(StateInner {
                identity,
                ready: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                store,
                stopping,
            }),
        }
    }

    /// A receiver that turns true when the node begins to shut down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.clone()
    }

    /// Who the node is.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Whether the node serves requests.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
            && !self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// `Ok` if the node serves requests, otherwise the UNAVAILABLE reason.
    pub fn check_ready(&self) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else if !self.inner.ready.load(Ordering::Acquire) {
            Err(Error::NotReady)
        } else {
            Ok(())
        }
    }

    /// Refreshes gauges read at scrape time (entries per cache, subscribers).
    pub fn update_gauges(&self) {
        let store = &self.inner.store;
        for cache in store.caches() {
            metrics::gauge!("sitegrid_cache_entries", "cache" => cache.name().to_string())
                .set(cache.live_count() as f64);
        }
        metrics::gauge!("sitegrid_listener_subscribers").set(store.hub().subscribers() as f64);
        metrics::gauge!("sitegrid_node_ready").set(if self.is_ready() { 1.0 } else { 0.0 });
    }
}

/// Opens the storage engine if any cache is persistent.
async fn open_storage(config: &Config) -> Result<Option<Arc<dyn Storage>>> {
    if !config.caches.values().any(|cache| cache.persistent) {
        return Ok(None);
    }
    let path = config.node.data_dir.join("store");
    let cache_bytes = config.store.sled_cache_bytes;
    let storage = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            context: format!("cannot create data directory {}", path.display()),
            source,
        })?;
        SledStorage::open(Path::new(&path), cache_bytes).map_err(Error::OpenStorage)
    })
    .await
    .map_err(Error::TaskFailed)??;
    Ok(Some(Arc::new(storage)))
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let grpc_address = listeners.grpc.local_addr().map_err(|source| Error::Io {
        context: "cannot read the gRPC listener's address".into(),
        source,
    })?;
    let http_address = listeners.http.local_addr().map_err(|source| Error::Io {
        context: "cannot read the HTTP listener's address".into(),
        source,
    })?;
    info!(node = %config.node.name, site = %config.node.site, grpc = %grpc_address,
        http = %http_address, data_dir = %config.node.data_dir.display(), "starting");
    crate::metrics::prometheus();

    let storage = open_storage(&config).await?;
    let time = Arc::new(SystemTimeSource::with_offset(config.node.clock_offset_ms));
    let hub = Hub::new(config.events.listener_buffer);
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Store::open(&config, time, storage, hub))
            .await
            .map_err(Error::TaskFailed)??
    };
    store.persist_high_water().await?;

    let (stop, stopped) = watch::channel(false);
    let state = NodeState::new(
        Identity {
            name: config.node.name.clone(),
            site: config.node.site.clone(),
            site_id: config.node.site_byte(),
            address: grpc_address.to_string(),
        },
        store.clone(),
        stopped.clone(),
    );
    let reaper = tokio::spawn(reaper::run(store.clone(), stopped.clone()));
    let http = tokio::spawn(crate::metrics::serve(
        listeners.http,
        state.clone(),
        stopped.clone(),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    let grpc = tokio::spawn(serve_grpc(
        &config,
        listeners.grpc,
        store.clone(),
        state.clone(),
        health_service,
        stopped.clone(),
    )?);

    state.inner.ready.store(true, Ordering::Release);
    health.set_serving::<CacheServer<CacheService>>().await;
    info!(grpc = %grpc_address, "ready");

    let mut grpc = grpc;
    let grpc_result = tokio::select! {
        _ = shutdown => None,
        result = &mut grpc => Some(result),
    };
    info!("shutting down");
    state.inner.shutting_down.store(true, Ordering::Release);
    health.set_not_serving::<CacheServer<CacheService>>().await;
    let _ = stop.send(true);
    let grpc_result = match grpc_result {
        Some(result) => result,
        None => grpc.await,
    };
    let _ = http.await;
    let _ = reaper.await;
    drop(state);
    store.shutdown();
    info!("stopped");
    match grpc_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Error::Io {
            context: "grpc server failed".into(),
            source: std::io::Error::other(error),
        }),
        Err(join) => Err(Error::TaskFailed(join)),
    }
}

/// Builds the gRPC server; the returned future serves until `stopped` turns true.
fn serve_grpc<H: Health>(
    config: &Config,
    listener: TcpListener,
    store: Store,
    state: NodeState,
    health: HealthServer<H>,
    mut stopped: watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send + use<H>> {
    let max_message = config.limits.max_message_bytes();
    let validator = Validator::new(config.limits.clone());
    let cache = CacheServer::new(CacheService::new(store.clone(), validator, state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let admin = AdminServer::new(AdminService::new(store, state));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sitegrid_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::Io {
            context: "cannot build the reflection service".into(),
            source: std::io::Error::other(error),
        })?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .map(|accepted| accepted.and_then(CoalescingStream::new));
    Ok(async move {
        let result = tonic::transport::Server::builder()
            .add_service(cache)
            .add_service(admin)
            .add_service(health)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(error) = &result {
            warn!(error = %error, "grpc server failed");
        }
        info!("grpc server stopped");
        result
    })
}
