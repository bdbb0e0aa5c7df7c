//! Workloads: clients of real nodes that record every operation in the [`History`].
//!
//! Each worker sends one request at a time to a node picked at random (seeded) among the
//! sites it may use, with a deadline; an answer is recorded as `Ok`, an error that says
//! nothing was applied as `Failed`, anything else (a timeout, a dropped connection,
//! `UNAVAILABLE`) as `Indeterminate`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use parking_lot::Mutex;
use sitegrid_client::{Event, ListenOptions};
use sitegrid_proto::v1;
use sitegrid_proto::v1::cache_client::CacheClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::check::{SESSIONS, TOKENS, session_key, token_key};
use super::history::{
    AddOp, History, ListenerLog, Outcome, Received, ReplaceOp, Snapshot, TokenOp,
};
use super::topology::Topology;

/// How long one request may take before it counts as indeterminate.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Tokens raced for.
pub const TOKEN_COUNT: u32 = 200;
/// Session keys replaced.
pub const SESSION_COUNT: u32 = 16;
/// The prefix of the acknowledged set's keys.
const ADD_PREFIX: &str = "ack-";
/// Keys read per `GetAll`.
const READ_BATCH: usize = 500;

/// Which workloads run, and where their clients go.
#[derive(Debug, Clone)]
pub struct Workloads {
    /// Workers racing for single-use tokens.
    pub token_workers: usize,
    /// Workers making versioned replaces of session keys.
    pub replace_workers: usize,
    /// Workers adding keys to the acknowledged set.
    pub add_workers: usize,
    /// Listen to the acknowledged set's keys, one listener per client site.
    pub listeners: bool,
    /// The sites whose nodes the clients use.
    pub sites: Vec<usize>,
}

impl Workloads {
    /// Every workload, with clients in every one of `sites`.
    pub fn all(sites: &[usize]) -> Workloads {
        Workloads {
            token_workers: 4,
            replace_workers: 4,
            add_workers: 2,
            listeners: true,
            sites: sites.to_vec(),
        }
    }

    /// No workload at all.
    pub fn none() -> Workloads {
        Workloads {
            token_workers: 0,
            replace_workers: 0,
            add_workers: 0,
            listeners: false,
            sites: Vec::new(),
        }
    }
}

/// A client channel to one node, connected lazily (so a dead node costs only the
/// requests sent to it).
#[derive(Clone)]
struct Target {
    site: usize,
    client: CacheClient<Channel>,
}

/// Running workloads; [`Running::stop`] ends them.
pub struct Running {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    workers: JoinSet<()>,
    listeners: JoinSet<()>,
    stop_listeners: Arc<AtomicBool>,
}

/// Writes the initial session keys, then starts the listeners (waiting until each has
/// started) and the workers. `seed` seeds the workers' choices.
pub async fn start(
    topology: &Topology,
    workloads: &Workloads,
    seed: u64,
) -> anyhow::Result<Running> {
    let history = Arc::new(History::default());
    let targets: Vec<Target> = topology
        .nodes()
        .filter(|(site, _, _)| workloads.sites.contains(site))
        .map(|(site, _, node)| {
            let channel = Endpoint::from_shared(node.endpoint())?
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
            Ok(Target {
                site,
                client: CacheClient::new(channel),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if workloads.replace_workers > 0 {
        let mut first = CacheClient::new(topology.node(workloads.sites[0], 0).channel().await?);
        for key in 0..SESSION_COUNT {
            first
                .put(v1::PutRequest {
                    cache: SESSIONS.into(),
                    key: session_key(key),
                    value: Bytes::from("initial"),
                    ..Default::default()
                })
                .await?;
        }
    }
    let stop_listeners = Arc::new(AtomicBool::new(false));
    let mut listeners = JoinSet::new();
    if workloads.listeners {
        for &site in &workloads.sites {
            let endpoints = topology.sites[site].nodes.iter().map(|n| n.endpoint());
            let client = sitegrid_client::Client::builder(endpoints)
                .discover_topology(false)
                .connect()
                .await?;
            let options = ListenOptions::new([SESSIONS]).key_prefix(Bytes::from(ADD_PREFIX));
            let mut events = client.listen(options).await?;
            let log = Arc::new(Mutex::new(ListenerLog {
                site,
                started: Instant::now(),
                received: Vec::new(),
            }));
            history.listeners.lock().push(log.clone());
            let stop = stop_listeners.clone();
            listeners.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let next = tokio::time::timeout(Duration::from_millis(200), events.try_next());
                    let event = match next.await {
                        Err(_) => continue,
                        Ok(Ok(Some(event))) => event,
                        Ok(Ok(None) | Err(_)) => return,
                    };
                    let received = match event {
                        Event::Changed(change) => Received::Change {
                            key: change.key,
                            version: change.version,
                        },
                        Event::InvalidateAll { .. } => Received::InvalidateAll,
                    };
                    log.lock().received.push((Instant::now(), received));
                }
            });
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    let mut worker = 0u64;
    let kinds = [
        (Kind::Token, workloads.token_workers),
        (Kind::Replace, workloads.replace_workers),
        (Kind::Add, workloads.add_workers),
    ];
    for (kind, count) in kinds {
        for _ in 0..count {
            worker += 1;
            workers.spawn(run_worker(
                kind,
                worker,
                fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(worker)),
                targets.clone(),
                history.clone(),
                stop.clone(),
            ));
        }
    }
    Ok(Running {
        history,
        stop,
        workers,
        listeners,
        stop_listeners,
    })
}

impl Running {
    /// The history so far.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// Stops the workers and waits for them; listeners go on until
    /// [`Running::stop_listeners`].
    pub async fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
    }

    /// Stops the listeners and waits for them.
    pub async fn stop_listeners(&mut self) {
        self.stop_listeners.store(true, Ordering::Relaxed);
        while self.listeners.join_next().await.is_some() {}
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Token,
    Replace,
    Add,
}

async fn run_worker(
    kind: Kind,
    worker: u64,
    mut rng: fastrand::Rng,
    targets: Vec<Target>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut attempt = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let target = &targets[rng.usize(..targets.len())];
        let mut client = target.client.clone();
        let value = Bytes::from(format!("w{worker}-a{attempt}"));
        match kind {
            Kind::Token => {
                let token = rng.u32(..TOKEN_COUNT);
                let request = v1::PutIfAbsentRequest {
                    cache: TOKENS.into(),
                    key: token_key(token),
                    value: value.clone(),
                    request_id: format!("w{worker}-a{attempt}"),
                    ..Default::default()
                };
                let answer = timed(client.put_if_absent(request)).await;
                let (outcome, answer) = outcome_of(answer);
                history.tokens.lock().push(TokenOp {
                    token,
                    value,
                    site: target.site,
                    outcome,
                    stored: answer.as_ref().is_some_and(|a| a.stored),
                    existing: answer.and_then(|a| a.existing).map(|e| e.value),
                });
            }
            Kind::Replace => {
                let key = rng.u32(..SESSION_COUNT);
                let read = timed(client.get(v1::GetRequest {
                    cache: SESSIONS.into(),
                    key: session_key(key),
                }))
                .await;
                let Ok(read) = read else {
                    continue;
                };
                let expected = read.metadata.map_or(0, |m| m.version);
                let request = v1::ReplaceWithVersionRequest {
                    cache: SESSIONS.into(),
                    key: session_key(key),
                    value: value.clone(),
                    expected_version: expected,
                    request_id: format!("w{worker}-a{attempt}"),
                    ..Default::default()
                };
                let (outcome, answer) =
                    outcome_of(timed(client.replace_with_version(request)).await);
                history.replaces.lock().push(ReplaceOp {
                    key,
                    expected,
                    value,
                    outcome,
                    replaced: answer.as_ref().is_some_and(|a| a.replaced),
                    version: answer.map_or(0, |a| a.version),
                });
            }
            Kind::Add => {
                let key = Bytes::from(format!("{ADD_PREFIX}w{worker}-{attempt}"));
                let invoked = Instant::now();
                let request = v1::PutRequest {
                    cache: SESSIONS.into(),
                    key: key.clone(),
                    value,
                    request_id: format!("w{worker}-a{attempt}"),
                    ..Default::default()
                };
                let (outcome, answer) = outcome_of(timed(client.put(request)).await);
                history.adds.lock().push(AddOp {
                    key,
                    invoked,
                    outcome,
                    version: answer.map_or(0, |a| a.version),
                });
            }
        }
    }
}

/// Awaits a call with [`OP_TIMEOUT`]; a timeout is `DEADLINE_EXCEEDED`.
async fn timed<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("no answer in time")),
    }
}

/// How a call ended, and its answer if it was answered.
fn outcome_of<T>(answer: Result<T, Status>) -> (Outcome, Option<T>) {
    match answer {
        Ok(answer) => (Outcome::Ok, Some(answer)),
        Err(status) => match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition => (Outcome::Failed, None),
            _ => (Outcome::Indeterminate, None),
        },
    }
}

/// Every node's state of every key the workloads touched, labelled `site1/n1`, ...
/// (a node that cannot be read is an error).
pub async fn snapshots(
    topology: &Topology,
    history: &History,
) -> anyhow::Result<Vec<(String, Snapshot)>> {
    let mut keys: Vec<(&str, Bytes)> = Vec::new();
    keys.extend((0..TOKEN_COUNT).map(|t| (TOKENS, token_key(t))));
    keys.extend((0..SESSION_COUNT).map(|s| (SESSIONS, session_key(s))));
    keys.extend(
        history
            .adds
            .lock()
            .iter()
            .map(|a| (SESSIONS, a.key.clone())),
    );
    let mut all = Vec::new();
    for (site, index, node) in topology.nodes() {
        let mut client = CacheClient::new(node.channel().await?);
        let mut snapshot = Snapshot::new();
        for cache in [TOKENS, SESSIONS] {
            let of_cache: Vec<Bytes> = keys
                .iter()
                .filter(|(c, _)| *c == cache)
                .map(|(_, k)| k.clone())
                .collect();
            for batch in of_cache.chunks(READ_BATCH) {
                let entries = client
                    .get_all(v1::GetAllRequest {
                        cache: cache.into(),
                        keys: batch.to_vec(),
                    })
                    .await?
                    .into_inner()
                    .entries;
                for entry in entries {
                    let version = entry.metadata.map_or(0, |m| m.version);
                    snapshot.insert((cache.to_string(), entry.key), (entry.value, version));
                }
            }
        }
        all.push((format!("site{}/n{}", site + 1, index + 1), snapshot));
    }
    Ok(all)
}
