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

use sitegrid_config::{Auth, Config};
use sitegrid_proto::transport::{CoalescingStream, ConnInfo, MaybeTls, ServerStream};
use sitegrid_proto::v1::admin_server::AdminServer;
use sitegrid_proto::v1::cache_server::CacheServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_server::{Health, HealthServer};
use tracing::{info, warn};

use crate::api::{
    AdminService, Audit, AuthLayer, Authenticator, CacheService, ClientLimits, ReplicationApi,
    Validator,
};
use crate::cluster::membership::{GossipSettings, Membership};
use crate::cluster::{Cluster, Member, MemberState, Timing, join, repair};
use crate::error::{Error, Result};
use crate::events::Hub;
use crate::faults::{self, Fault};
use crate::store::storage::{SledStorage, Storage};
use crate::store::time::SystemTimeSource;
use crate::store::{Store, reaper};
use crate::tls::NodeTls;
use sitegrid_proto::v1::replication_service_server::ReplicationServiceServer;
use sitegrid_proto::v1::site_link_server::SiteLinkServer;
use sitegrid_relay::{Relay, SiteLinkService};

use crate::sites::{NodeSite, RelayPeers};

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
    /// The node finished starting (storage loaded, services up).
    ready: AtomicBool,
    shutting_down: AtomicBool,
    store: Store,
    cluster: Cluster,
    /// Turns true when the node begins to shut down; long streams end on it.
    stopping: watch::Receiver<bool>,
    /// Backups to peer sites, and the site's state of them.
    relay: Relay,
    /// This node as the relay sees it.
    local: Arc<NodeSite>,
}

impl NodeState {
    fn new(
        identity: Identity,
        store: Store,
        cluster: Cluster,
        stopping: watch::Receiver<bool>,
        relay: Relay,
    ) -> NodeState {
        let local = Arc::new(NodeSite::new(cluster.clone(), &identity.site));
        NodeState {
            inner: Arc::new(StateInner {
                identity,
                ready: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                store,
                cluster,
                stopping,
                relay,
                local,
            }),
        }
    }

    /// Backups to peer sites, and the site's state of them.
    pub fn relay(&self) -> &Relay {
        &self.inner.relay
    }

    /// This node as the relay sees it.
    pub fn local_site(&self) -> &Arc<NodeSite> {
        &self.inner.local
    }

    /// Whether a load balancer should send users here: the node serves, and its site is
    /// not fenced (a peer site holds it offline, or a peer is down and this site may not
    /// take it offline); otherwise why not.
    pub fn check_ready(&self) -> Result<()> {
        self.check_serving()?;
        match self.inner.relay.states().fenced() {
            Some(why) => Err(Error::Unavailable(why)),
            None => Ok(()),
        }
    }

    /// The node's part in its site.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// A receiver that turns true when the node begins to shut down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.clone()
    }

    /// Who the node is.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Whether the node serves requests: started, not stopping, and caught up with its
    /// site.
    pub fn is_ready(&self) -> bool {
        self.check_serving().is_ok()
    }

    /// `Ok` if the node takes writes (it forwards them to their primaries even while it
    /// catches up), otherwise the UNAVAILABLE reason.
    pub fn check_accepting(&self) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else if !self.inner.ready.load(Ordering::Acquire) {
            Err(Error::NotReady("still starting"))
        } else {
            Ok(())
        }
    }

    /// `Ok` if the node serves reads, otherwise the UNAVAILABLE reason.
    pub fn check_serving(&self) -> Result<()> {
        self.check_accepting()?;
        if self.inner.cluster.serving() {
            return Ok(());
        }
        Err(Error::NotReady(
            match *self.inner.cluster.state().borrow() {
                MemberState::Joining => "copying data from its site",
                MemberState::Isolated => "catching up after losing contact with its site",
                MemberState::Ready => "no word from its site for too long",
            },
        ))
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
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            metrics::gauge!("sitegrid_worker_threads").set(runtime.metrics().num_workers() as f64);
        }
        // The standard process metrics: resident and virtual memory, CPU time, open files.
        metrics_process::Collector::default().collect();
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
    // Bad TLS files stop the node here, before anything else starts.
    let tls = NodeTls::of(&config)?;
    let peer_tls = tls.as_ref().and_then(|tls| tls.client());
    let site_tls = peer_tls
        .as_ref()
        .map(|tls| tls.expecting(&config.node.site))
        .transpose()?;
    log_security(&config, grpc_address, tls.is_some());
    let audit = Arc::new(Audit::open(&audit_path(&config))?);

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
    let census = crate::store::census::path_of(&config);
    if let Some(path) = &census {
        crate::store::census::check(path, &store);
    }

    let timing = Timing::default();
    let me = Member {
        name: Arc::from(config.node.name.as_str()),
        generation: generation(),
        epoch: 0,
        address: grpc_address.to_string(),
        state: MemberState::Joining,
        says_ready: false,
        data_version: store.newest_persistent_version(),
        // A first guess; the slot is made unique before the node becomes ready.
        slot: config
            .node
            .first_slot
            .unwrap_or_else(|| fastrand::u8(..sitegrid_proto::version::SLOTS)),
    };
    store.clock().set_slot(me.slot);
    let gossip = GossipSettings {
        site: config.node.site.clone(),
        listen: config.node.gossip,
        seeds: config.node.seeds.clone(),
        verify_identities: site_tls.is_some(),
    };
    let (membership, view) = Membership::start(&me, &gossip, &timing).await?;
    let cluster = Cluster::new(
        me,
        store.clone(),
        timing,
        view,
        config.limits.max_message_bytes(),
        !config.node.seeds.is_empty(),
        site_tls,
    );
    store.set_site(Arc::new(cluster.clone()));
    let relay = Relay::new(&config, peer_tls.as_ref())
        .map_err(|error| Error::InvalidArgument(error.to_string()))?;
    store.set_peers(Arc::new(RelayPeers::new(relay.clone())));

    let (stop, stopped) = watch::channel(false);
    let state = NodeState::new(
        Identity {
            name: config.node.name.clone(),
            site: config.node.site.clone(),
            site_id: config.node.site_byte(),
            address: grpc_address.to_string(),
        },
        store.clone(),
        cluster.clone(),
        stopped.clone(),
        relay.clone(),
    );
    let reaper = tokio::spawn(reaper::run(store.clone(), stopped.clone()));
    let membership =
        tokio::spawn(membership.run(cluster.clone(), relay.states().clone(), stopped.clone()));
    let joining = tokio::spawn(join::run(cluster.clone(), stopped.clone()));
    let repairing = tokio::spawn(repair::run(cluster.clone(), stopped.clone()));
    let sending = tokio::spawn(relay.clone().send_async(stopped.clone()));
    let reconciling = tokio::spawn(
        relay
            .clone()
            .reconcile(state.local_site().clone(), stopped.clone()),
    );
    let watching = tokio::spawn(
        relay
            .clone()
            .watch_peers(state.local_site().clone(), stopped.clone()),
    );
    let http = tokio::spawn(crate::metrics::serve(
        listeners.http,
        state.clone(),
        stopped.clone(),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    let incoming = incoming(listeners.grpc, tls.clone(), stopped.clone());
    let reloading = tokio::spawn(crate::tls::watch(tls.clone(), stopped.clone()));
    let grpc = tokio::spawn(serve_grpc(
        &config,
        incoming,
        store.clone(),
        state.clone(),
        health_service,
        audit,
        stopped.clone(),
    )?);
    state.inner.ready.store(true, Ordering::Release);
    let health_task = tokio::spawn(follow_health(
        cluster.clone(),
        health.clone(),
        stopped.clone(),
    ));
    info!(grpc = %grpc_address, "started");

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
    let _ = joining.await;
    let _ = repairing.await;
    let _ = reconciling.await;
    let _ = watching.await;
    let _ = sending.await;
    let _ = membership.await;
    let _ = health_task.await;
    let _ = reloading.await;
    drop(state);
    // Nothing writes any more: what the persistent caches hold is what the store must
    // give back at the next start.
    if let Some(path) = &census {
        crate::store::census::record(path, &store).await;
    }
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

/// A generation for this start of the node: the Unix time in microseconds, so a restarted
/// node is always newer than its former self.
fn generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Reports the node serving (gRPC health, logs) whenever its site state is ready.
async fn follow_health(
    cluster: Cluster,
    health: tonic_health::server::HealthReporter,
    mut stopped: watch::Receiver<bool>,
) {
    let mut state = cluster.state();
    loop {
        let ready = *state.borrow_and_update() == MemberState::Ready;
        if ready {
            health.set_serving::<CacheServer<CacheService>>().await;
            info!("ready");
        } else {
            health.set_not_serving::<CacheServer<CacheService>>().await;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// HTTP/2 flow-control window of one stream, in bytes.
const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of one connection, in bytes.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest header block a request may carry; gRPC requests carry a few hundred bytes.
const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// Streams opened and reset by a client before the server took them, per connection.
const MAX_PENDING_RESETS: usize = 20;
/// Streams the server had to reset for protocol errors, per connection.
const MAX_LOCAL_RESETS: usize = 1024;
/// How often an idle connection is pinged, and how long the ping may go unanswered.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the audit log goes.
fn audit_path(config: &Config) -> std::path::PathBuf {
    config
        .security
        .audit_log
        .clone()
        .unwrap_or_else(|| config.node.data_dir.join("audit.log"))
}

/// Says at start who may connect, and warns when anyone may.
fn log_security(config: &Config, grpc: SocketAddr, tls: bool) {
    let security = &config.security;
    match security.auth {
        Auth::None if grpc.ip().is_loopback() => info!(
            %grpc, tls,
            "auth = none: any process on this machine may read and write every cache"
        ),
        Auth::None => warn!(
            %grpc, tls,
            "auth = none: anyone who reaches this address may read and write every cache; \
             configure [security] principals before exposing it"
        ),
        Auth::Required => info!(
            %grpc, tls, principals = security.principals.len(),
            mutual_tls = security.mutual_tls(), "clients must authenticate"
        ),
    }
}

/// The connections a gRPC server takes.
type Incoming =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<ServerStream>> + Send>>;

/// Connections accepted on `listener`: after their TLS handshake when `tls` is given.
fn incoming(
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    stopped: watch::Receiver<bool>,
) -> Incoming {
    match tls {
        Some(tls) => Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            tls.accept(listener, stopped),
        )),
        None => Box::pin(
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
                accepted
                    .and_then(CoalescingStream::new)
                    .map(MaybeTls::Plain)
            }),
        ),
    }
}

/// Builds the gRPC server; the returned future serves until `stopped` turns true.
fn serve_grpc<H: Health>(
    config: &Config,
    incoming: Incoming,
    store: Store,
    state: NodeState,
    health: HealthServer<H>,
    audit: Arc<Audit>,
    mut stopped: watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send + use<H>> {
    let max_message = config.limits.max_message_bytes();
    let validator = Validator::new(config.limits.clone());
    let limits = ClientLimits::new(&config.limits);
    let authenticator = Arc::new(Authenticator::new(config, audit.clone()));
    let cache = CacheServer::new(CacheService::new(
        store.clone(),
        validator,
        state.clone(),
        Arc::clone(&limits),
        audit.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    // Unary calls and stream openings; a pipeline admits its requests one by one.
    let cache = InterceptedService::new(cache, move |request: tonic::Request<()>| {
        limits.admit(
            ConnInfo::of(request.extensions())
                .and_then(|c| c.remote)
                .map(|a| a.ip()),
        )?;
        Ok(request)
    });
    let max_streams = config.limits.max_concurrent_streams;
    let replication = ReplicationServiceServer::new(ReplicationApi::new(
        state.cluster().clone(),
        state.stopping(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let mut site_link = SiteLinkService::new(
        state.local_site().clone(),
        &config.node.site,
        config.sites.iter().map(|site| site.name.clone()),
        state.relay().states().clone(),
        config.security.mutual_tls(),
        state.stopping(),
    );
    if faults::on(Fault::NoBackupStream) {
        site_link = site_link.without_streams();
    }
    let site_link = SiteLinkServer::new(site_link)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let admin = AdminServer::new(AdminService::new(store, state, audit));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sitegrid_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::Io {
            context: "cannot build the reflection service".into(),
            source: std::io::Error::other(error),
        })?;
    Ok(async move {
        // Windows wide enough that a peer site's batches are not held back by HTTP/2
        // flow control over a link with a long round trip (64 KiB per round trip is not).
        let result = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(max_streams)
            // HTTP/2 abuse: header blocks (CONTINUATION floods), streams a client opens
            // and resets at once (rapid reset), streams the server has to reset (made-you
            // reset); over these, the connection is closed.
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
            // A client that vanished without closing its connection (its streams, its
            // listener places) is noticed.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            // Every request is authenticated before any service sees it.
            .layer(AuthLayer::new(authenticator))
            .add_service(cache)
            .add_service(admin)
            .add_service(replication)
            .add_service(site_link)
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

/// Runs the witness (`sitegrid --witness`) on `config.witness` until `shutdown`
/// completes: it grants one site of each pair the right to hold the other offline.
///
/// With `[security] tls`, it serves TLS (its certificate must name the host the nodes'
/// `witness.endpoint` gives), reloaded like a node's; with `tls.ca`, a site's requests
/// are taken only with a client certificate naming that site.
pub async fn run_witness(config: &Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let witness = config.witness.clone().unwrap_or_default();
    let tls = NodeTls::of(config)?;
    let listener = bind(witness.listen, "witness.listen").await?;
    info!(listen = %witness.listen, lease = ?witness.lease, tls = tls.is_some(),
        mutual_tls = config.security.mutual_tls(),
        "witness serving: grants nothing for one lease, which any grant given before it started outlives");
    let (stop, stopped) = watch::channel(false);
    let reloading = tokio::spawn(crate::tls::watch(tls.clone(), stopped.clone()));
    let service = sitegrid_relay::WitnessService::new(witness.lease, config.security.mutual_tls());
    let served = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming(listener, tls, stopped), shutdown)
        .await;
    let _ = stop.send(true);
    let _ = reloading.await;
    served.map_err(|error| Error::Io {
        context: "the witness's server failed".into(),
        source: std::io::Error::other(error),
    })?;
    info!("witness stopped");
    Ok(())
}
