//! A fault-injection suite in the manner of Jepsen: real sites of real nodes, nemeses
//! that break them, workloads that record every operation, and checkers that read the
//! recorded history.
//!
//! - [`topology`]: N sites x M nodes (and a witness), links between sites through fault
//!   proxies.
//! - [`workload`]: token races, versioned replaces, an acknowledged set and listeners,
//!   each recording into a [`history::History`].
//! - [`check`]: the checkers.
//! - [`Scenario`]: what runs together, with its nemesis; [`run`] runs one with a seed.
//!
//! A run: start the topology and the workloads; inject the scenario's faults for the
//! given duration (choices drawn from the seed); undo every fault and bring every peer
//! online while the workloads go on; stop them; wait for the sites to converge; check.

pub mod check;
pub mod history;
pub mod topology;
pub mod workload;

use std::time::{Duration, Instant};

use sitegrid_proto::v1;
use sitegrid_proto::v1::admin_client::AdminClient;

use self::check::Anomaly;
use self::history::Counts;
use self::topology::{Topology, TopologySpec};
use self::workload::Workloads;
use crate::wait::eventually;

/// Heartbeats between sites.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// A peer is taken offline after this many failures in a row...
const AFTER_FAILURES: u32 = 3;
/// ...and this long after the first.
const MIN_WAIT: Duration = Duration::from_secs(2);
/// Sync backups time out after this.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Each site compares itself with the other this often.
const CONSISTENCY_CHECK: Duration = Duration::from_secs(2);
/// Grants of the witness last this long.
const WITNESS_LEASE: Duration = Duration::from_secs(2);
/// How long the sites may take to converge once every fault is undone.
const CONVERGENCE: Duration = Duration::from_secs(60);
/// How long listeners may take to receive what was written.
const DELIVERY: Duration = Duration::from_secs(30);
/// The longest a node stays paused in [`Scenario::PausedNode`].
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// How far a skewed node's clock is off the others', at most (milliseconds): within a
/// listener's default resume margin (10 s), which must cover the skew between sites.
const MAX_SKEW_MS: i64 = 5_000;

/// A scenario: a topology, workloads and a nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// Clients in both sites race for single-use tokens (sync backups) while nodes are
    /// killed and restarted.
    TokenRace,
    /// Versioned replaces of sessions from both sites while nodes are killed and
    /// restarted.
    VersionedKills,
    /// `fail` policy: the peer site is frozen (SIGSTOP) and thawed, again and again.
    FailFrozenPeer,
    /// `warn` policy: the peer site is killed, restarted and brought online.
    WarnKilledPeer,
    /// No traffic: a site dies; the survivor must take it offline within `min_wait` + 2
    /// heartbeats, and not before `min_wait`.
    IdleTakeOffline,
    /// The sites are cut apart both ways (fencing by `prefer`), then healed.
    Partition,
    /// Only one direction between the sites is cut (fencing by a witness), then healed.
    OneWayPartition,
    /// A partition, then bring-online and its resync while clients keep writing.
    ResyncRace,
    /// The link breaks again in the middle of the resync that follows a partition.
    ResyncLinkBreak,
    /// Every node of a site is replaced, one by one, by a node with an empty data dir.
    RollingReplace,
    /// Two nodes of a site crash within a second of each other.
    DoubleCrash,
    /// A whole site is killed and restarted on the same data dirs.
    SiteRestart,
    /// A node is paused for up to 30 s, then resumed.
    PausedNode,
    /// Listeners keep receiving while the nodes they are connected to are killed.
    ListenerFailover,
    /// Latency and packet loss between the sites; timed-out operations are
    /// indeterminate.
    LatencyLoss,
    /// A node is killed in the middle of a resync.
    KillDuringResync,
    /// Nodes are restarted with their clocks up to 5 s ahead of or behind the others'.
    ClockSkew,
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Its seed.
    pub seed: u64,
    /// Operations recorded.
    pub counts: Counts,
    /// Faults injected.
    pub faults: u64,
    /// What the checkers (and the nemesis) found.
    pub anomalies: Vec<Anomaly>,
    /// How long the whole run took.
    pub elapsed: Duration,
    /// Where the nodes' logs were kept, when something was found (or always, with
    /// `SITEGRID_CHAOS_KEEP_LOGS` set).
    pub logs: Option<std::path::PathBuf>,
}

impl Scenario {
    /// Every scenario.
    pub fn all() -> Vec<Scenario> {
        use clap::ValueEnum;
        Scenario::value_variants().to_vec()
    }

    /// Its name on the command line and in reports.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// The topology it runs on: sites of `nodes` nodes, and whether a witness grants
    /// take-offline (otherwise site 1 is preferred).
    fn shape(self) -> (usize, bool) {
        match self {
            Scenario::RollingReplace | Scenario::DoubleCrash => (3, false),
            Scenario::TokenRace
            | Scenario::VersionedKills
            | Scenario::SiteRestart
            | Scenario::PausedNode
            | Scenario::ListenerFailover
            | Scenario::KillDuringResync
            | Scenario::ClockSkew => (2, false),
            Scenario::OneWayPartition => (1, true),
            _ => (1, false),
        }
    }

    fn topology(self) -> TopologySpec {
        let (nodes, witness) = self.shape();
        let policy = if self == Scenario::WarnKilledPeer {
            "warn"
        } else {
            "fail"
        };
        TopologySpec {
            sites: 2,
            nodes,
            witness_lease: witness.then_some(WITNESS_LEASE),
            peer_toml: format!(
                "take_offline = {{ after_failures = {AFTER_FAILURES}, min_wait = \"{}ms\" }}",
                MIN_WAIT.as_millis()
            ),
            toml: Box::new(move |index| {
                let peer = format!("site{}", 2 - index);
                let backup = format!(
                    "backup = {{ {peer} = {{ timeout = \"{}ms\", failure_policy = \"{policy}\" }} }}",
                    BACKUP_TIMEOUT.as_millis()
                );
                format!(
                    "[relay]\nheartbeat_interval = \"{}ms\"\nprefer = {}\n\
                     consistency_check_interval = \"{}ms\"\n\
                     [caches.actionTokens]\n{backup}\n[caches.sessions]\n{backup}\n",
                    HEARTBEAT.as_millis(),
                    index == 0 && !witness,
                    CONSISTENCY_CHECK.as_millis()
                )
            }),
            faults: Vec::new(),
        }
    }

    fn workloads(self) -> Workloads {
        match self {
            Scenario::IdleTakeOffline => Workloads::none(),
            Scenario::TokenRace => Workloads {
                replace_workers: 0,
                listeners: false,
                ..Workloads::all(&[0, 1])
            },
            Scenario::VersionedKills => Workloads {
                token_workers: 0,
                listeners: false,
                ..Workloads::all(&[0, 1])
            },
            Scenario::ListenerFailover => Workloads {
                token_workers: 0,
                replace_workers: 0,
                add_workers: 4,
                ..Workloads::all(&[0, 1])
            },
            _ => Workloads::all(&[0, 1]),
        }
    }
}

/// The nemesis of a run: its random choices and what it did.
pub struct Nemesis {
    rng: fastrand::Rng,
    until: Instant,
    /// Faults injected.
    pub faults: u64,
    /// What the nemesis itself saw go wrong.
    pub anomalies: Vec<Anomaly>,
}

impl Nemesis {
    /// Whether faults are still to be injected.
    fn active(&self) -> bool {
        Instant::now() < self.until
    }

    /// Holds the current state (a fault, or the calm between two) for a random time
    /// between `shortest` and `longest`, but not past the end of the run.
    async fn hold(&mut self, shortest: Duration, longest: Duration) {
        let span = longest.saturating_sub(shortest).as_millis() as u64;
        let hold = shortest + Duration::from_millis(self.rng.u64(..=span));
        let left = self.until.saturating_duration_since(Instant::now());
        tokio::time::sleep(hold.min(left.max(shortest))).await;
    }

    /// A random index below `count`.
    fn pick(&mut self, count: usize) -> usize {
        self.rng.usize(..count)
    }
}

/// Runs `scenario` with `seed`, injecting faults for `duration`.
pub async fn run(scenario: Scenario, seed: u64, duration: Duration) -> anyhow::Result<Report> {
    run_with_faults(scenario, seed, duration, &[]).await
}

/// [`run`], with test-only faults switched on in every node (`sitegrid_server::faults`):
/// to show the checkers catch the bugs they stand for.
pub async fn run_with_faults(
    scenario: Scenario,
    seed: u64,
    duration: Duration,
    faults: &[&str],
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let spec = TopologySpec {
        faults: faults.iter().map(|f| f.to_string()).collect(),
        ..scenario.topology()
    };
    let mut topology = Topology::start(spec).await?;
    let mut running = workload::start(&topology, &scenario.workloads(), seed).await?;
    let mut nemesis = Nemesis {
        rng: fastrand::Rng::with_seed(seed),
        until: Instant::now() + duration,
        faults: 0,
        anomalies: Vec::new(),
    };
    inject(scenario, &mut topology, &mut nemesis).await?;
    // Recovery runs with the clients still writing: resyncs race live writes.
    topology.recover().await?;
    running.stop_workers().await;
    let history = running.history().clone();

    let mut anomalies = nemesis.anomalies;
    let converged = eventually("every node to hold the same", CONVERGENCE, || async {
        workload::snapshots(&topology, &history)
            .await
            .is_ok_and(|finals| check::converged(&finals).is_empty())
    })
    .await;
    let finals = workload::snapshots(&topology, &history).await?;
    if converged.is_err() {
        anomalies.extend(check::converged(&finals));
    }
    anomalies.extend(check::one_winner_per_token(&history.tokens.lock(), &finals));
    anomalies.extend(check::no_fork_no_lost_update(
        &history.replaces.lock(),
        &finals,
    ));
    anomalies.extend(check::acknowledged_present(&history.adds.lock(), &finals));
    let listeners = || {
        let logs: Vec<_> = history
            .listeners
            .lock()
            .iter()
            .map(|l| l.lock().clone())
            .collect();
        check::listeners_complete(&logs, &history.adds.lock())
    };
    let delivered = eventually("listeners to receive every write", DELIVERY, || async {
        listeners().is_empty()
    })
    .await;
    running.stop_listeners().await;
    if delivered.is_err() {
        anomalies.extend(listeners());
    }
    let logs = if anomalies.is_empty() && std::env::var_os("SITEGRID_CHAOS_KEEP_LOGS").is_none() {
        None
    } else {
        Some(keep_logs(&topology, scenario, seed)?)
    };
    Ok(Report {
        logs,
        scenario,
        seed,
        counts: history.counts(),
        faults: nemesis.faults,
        anomalies,
        elapsed: started.elapsed(),
    })
}

/// Copies every node's log to `<temp>/sitegrid-chaos/<scenario>-<seed>/`, which it
/// returns, before the topology (and its directories) goes away.
fn keep_logs(
    topology: &Topology,
    scenario: Scenario,
    seed: u64,
) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir()
        .join("sitegrid-chaos")
        .join(format!("{}-{seed}", scenario.name()));
    std::fs::create_dir_all(&dir)?;
    for (site, index, node) in topology.nodes() {
        std::fs::write(
            dir.join(format!("site{}-n{}.log", site + 1, index + 1)),
            node.log(),
        )?;
    }
    Ok(dir)
}

/// Injects `scenario`'s faults until the nemesis' time is up, leaving any fault in place
/// for [`Topology::recover`] to undo.
async fn inject(
    scenario: Scenario,
    topology: &mut Topology,
    nemesis: &mut Nemesis,
) -> anyhow::Result<()> {
    let short = Duration::from_millis(300);
    let long = Duration::from_millis(1_500);
    let nodes = topology.sites[0].nodes.len();
    match scenario {
        Scenario::TokenRace | Scenario::VersionedKills | Scenario::ListenerFailover => {
            while nemesis.active() {
                let (site, node) = (nemesis.pick(2), nemesis.pick(nodes));
                topology.kill(site, node)?;
                nemesis.faults += 1;
                nemesis.hold(short, long).await;
                topology.restart(site, node).await?;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::FailFrozenPeer => {
            while nemesis.active() {
                topology.pause(1, 0)?;
                nemesis.faults += 1;
                nemesis
                    .hold(Duration::from_secs(1), Duration::from_secs(4))
                    .await;
                topology.resume(1, 0)?;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::WarnKilledPeer => {
            topology.kill_site(1)?;
            nemesis.faults += 1;
            nemesis.hold(MIN_WAIT, 2 * MIN_WAIT).await;
            topology.restart_site(1).await?;
            nemesis.hold(short, long).await;
        }
        Scenario::IdleTakeOffline => idle_take_offline(topology, nemesis).await?,
        Scenario::Partition | Scenario::ResyncRace => {
            while nemesis.active() {
                topology.partition(0, 1);
                nemesis.faults += 1;
                nemesis.hold(MIN_WAIT, 2 * MIN_WAIT).await;
                topology.heal_links();
                if scenario == Scenario::ResyncRace {
                    topology.recover().await?;
                }
                nemesis.hold(short, long).await;
            }
        }
        Scenario::OneWayPartition => {
            while nemesis.active() {
                let from = nemesis.pick(2);
                topology.cut_one_way(from, 1 - from);
                nemesis.faults += 1;
                nemesis.hold(MIN_WAIT, 2 * MIN_WAIT).await;
                topology.heal_links();
                topology.recover().await?;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::ClockSkew => {
            while nemesis.active() {
                let (site, node) = (nemesis.pick(2), nemesis.pick(nodes));
                let offset_ms = nemesis.rng.i64(-MAX_SKEW_MS..=MAX_SKEW_MS);
                topology.restart_skewed(site, node, offset_ms).await?;
                nemesis.faults += 1;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::ResyncLinkBreak | Scenario::KillDuringResync => {
            while nemesis.active() {
                topology.partition(0, 1);
                nemesis.faults += 1;
                nemesis.hold(MIN_WAIT, 2 * MIN_WAIT).await;
                topology.heal_links();
                topology.request_bring_online().await?;
                wait_for_resync(topology).await;
                if scenario == Scenario::ResyncLinkBreak {
                    topology.partition(0, 1);
                    nemesis.hold(short, long).await;
                    topology.heal_links();
                } else {
                    let node = nemesis.pick(nodes);
                    topology.kill(0, node)?;
                    nemesis.hold(short, long).await;
                    topology.restart(0, node).await?;
                }
                nemesis.faults += 1;
                topology.recover().await?;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::RollingReplace => {
            while nemesis.active() {
                let site = nemesis.pick(2);
                for node in 0..nodes {
                    topology.replace_with_empty(site, node).await?;
                    nemesis.faults += 1;
                    nemesis.hold(short, short).await;
                }
            }
        }
        Scenario::DoubleCrash => {
            while nemesis.active() {
                let site = nemesis.pick(2);
                let first = nemesis.pick(nodes);
                let second = (first + 1 + nemesis.pick(nodes - 1)) % nodes;
                topology.kill(site, first)?;
                nemesis.hold(Duration::ZERO, Duration::from_secs(1)).await;
                topology.kill(site, second)?;
                nemesis.faults += 2;
                nemesis.hold(short, long).await;
                topology.restart(site, first).await?;
                topology.restart(site, second).await?;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::SiteRestart => {
            while nemesis.active() {
                let site = nemesis.pick(2);
                topology.kill_site(site)?;
                nemesis.faults += 1;
                nemesis.hold(short, long).await;
                topology.restart_site(site).await?;
                topology.recover().await?;
                nemesis.hold(short, long).await;
            }
        }
        Scenario::PausedNode => {
            let (site, node) = (nemesis.pick(2), nemesis.pick(nodes));
            topology.pause(site, node)?;
            nemesis.faults += 1;
            let pause = LONGEST_PAUSE.min(nemesis.until.saturating_duration_since(Instant::now()));
            nemesis.hold(pause, pause).await;
            topology.resume(site, node)?;
        }
        Scenario::LatencyLoss => {
            while nemesis.active() {
                let delay = Duration::from_millis(20 + nemesis.rng.u64(..80));
                let loss = 0.01 + nemesis.rng.f64() * 0.04;
                topology.degrade_links(delay, loss);
                nemesis.faults += 1;
                nemesis
                    .hold(Duration::from_secs(1), Duration::from_secs(3))
                    .await;
                topology.heal_links();
                nemesis.hold(short, long).await;
            }
        }
    }
    Ok(())
}

/// Kills site 2 with no traffic and times how long site 1 takes to take it offline.
async fn idle_take_offline(topology: &mut Topology, nemesis: &mut Nemesis) -> anyhow::Result<()> {
    const NAME: &str = "take-offline time";
    while nemesis.active() {
        let killed = Instant::now();
        topology.kill_site(1)?;
        nemesis.faults += 1;
        let bound = crate::checks::take_offline_deadline(MIN_WAIT, HEARTBEAT);
        let offline = eventually("site 2 taken offline", 4 * bound, || async {
            peer_state(topology, 0, 0).await.as_deref() == Some("offline")
        })
        .await;
        let took = killed.elapsed();
        if offline.is_err() {
            nemesis.anomalies.push(Anomaly {
                checker: NAME,
                detail: format!("site 2 was not taken offline within {:?}", 4 * bound),
            });
        } else if took > bound || took < MIN_WAIT {
            nemesis.anomalies.push(Anomaly {
                checker: NAME,
                detail: format!(
                    "site 2 was taken offline {took:?} after it died (min_wait {MIN_WAIT:?}, \
                     bound {bound:?})"
                ),
            });
        }
        topology.restart_site(1).await?;
        topology.recover().await?;
    }
    Ok(())
}

/// The state site `site` (as its node `node` sees it) holds its first peer in.
async fn peer_state(topology: &Topology, site: usize, node: usize) -> Option<String> {
    let mut admin = AdminClient::new(topology.node(site, node).channel().await.ok()?);
    let status = admin
        .site_status(v1::SiteStatusRequest { here_only: true })
        .await
        .ok()?
        .into_inner();
    Some(status.peers.first()?.state.clone())
}

/// Waits (briefly) until some node of site 1 sees its peer resyncing; a resync that is
/// over before that is fine.
async fn wait_for_resync(topology: &Topology) {
    let _ = eventually("a resync to run", Duration::from_secs(2), || async {
        peer_state(topology, 0, 0).await.as_deref() == Some("resyncing")
    })
    .await;
}
