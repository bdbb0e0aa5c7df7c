//! Pipelined-path figures (issue "a pipelined client path that outruns Redis"):
//! sitegrid's pipelined `Put` and `Get` against `redis-benchmark` SET and GET on a
//! `redis-server` started on a free loopback port with persistence off, with the same
//! value size (256 bytes), key space (100,000 keys picked at random) and concurrency,
//! measured alternately in every round; and a 3-node site's pipelined `Put` against the
//! single node's, with the default worker threads (one per core in every node) and with
//! one per node (`node.worker_threads = 1`: three nodes share the machine's cores).
//! Every measurement is metered: the CPU time the serving processes and the load
//! generator spent per request ([`cpu`]), against what Redis's pace leaves them on this
//! machine's cores.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use sitegrid_integration_tests::ports::free_loopback_addr;
use sitegrid_integration_tests::{NodeProcess, NodeSpec, Site, eventually};

use crate::ctl::{Load, Measurement, WARMUP, fill, measure};
use crate::single_node::{Rounds, Row};
use crate::{Settings, cpu, machine};

const KEY_SPACE: u64 = 100_000;
const VALUE_SIZE: usize = 256;
/// `redis-benchmark -c`, as the issue compares with.
const REDIS_CLIENTS: u32 = 50;
/// sitegrid's callers at depth 1, as the issue asks.
const CALLERS: u32 = 64;
/// The deep pipeline.
const DEPTH: u32 = 16;

/// What the pipeline benchmark measured.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) rows: Vec<Row>,
    /// `redis-server --version`.
    pub(crate) redis_version: String,
    /// This machine's cores, and for Redis's SET and GET at depth 16 the CPU per
    /// request that server and load generator together may spend to keep its pace on
    /// them: cores over Redis's rate.
    pub(crate) cores: usize,
    pub(crate) budgets_us: [f64; 2],
}

/// A program serving on a loopback address; killed when dropped.
struct Listening(Child);

impl Listening {
    /// Runs `command` (its output discarded) and waits until `address` takes connections;
    /// `cannot` says what failed if it does not start.
    async fn start(
        mut command: Command,
        address: SocketAddr,
        cannot: String,
    ) -> anyhow::Result<Listening> {
        let child = command.stdout(Stdio::null()).spawn().context(cannot)?;
        let listening = Listening(child);
        let program = command.get_program().to_string_lossy().into_owned();
        eventually(
            &format!("{program} to listen on {address}"),
            Duration::from_secs(10),
            || async { std::net::TcpStream::connect(address).is_ok() },
        )
        .await?;
        Ok(listening)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` on a free loopback port, without persistence; killed when dropped.
struct RedisServer {
    process: Listening,
    port: u16,
}

impl RedisServer {
    async fn start() -> anyhow::Result<RedisServer> {
        let address = free_loopback_addr();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &address.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        let cannot = "cannot run redis-server: install Debian's redis-server and redis-tools";
        Ok(RedisServer {
            process: Listening::start(command, address, cannot.into()).await?,
            port: address.port(),
        })
    }

    /// `redis-benchmark` of `test` (`SET` or `GET`), `requests` of them, metered (this
    /// server's CPU and the benchmark's).
    fn benchmark(&self, test: &str, depth: u32, requests: u64) -> anyhow::Result<Measurement> {
        metered(
            &[self.process.pid()],
            || {
                let output = Command::new("redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["-t", test, "--csv"])
                    .args(["-n", &requests.to_string()])
                    .args(["-c", &REDIS_CLIENTS.to_string()])
                    .args(["-P", &depth.to_string()])
                    .args(["-d", &VALUE_SIZE.to_string()])
                    .args(["-r", &KEY_SPACE.to_string()])
                    .output()
                    .context("cannot run redis-benchmark: install Debian's redis-tools")?;
                anyhow::ensure!(
                    output.status.success(),
                    "redis-benchmark failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let csv = String::from_utf8_lossy(&output.stdout);
                let line = csv
                    .lines()
                    .find(|line| line.starts_with(&format!("\"{test}\"")))
                    .with_context(|| format!("no {test} line in redis-benchmark output: {csv}"))?;
                let fields: Vec<f64> = line
                    .split(',')
                    .skip(1)
                    .map(|field| field.trim_matches('"').parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("unexpected redis-benchmark line {line}"))?;
                // rps, avg, min, p50, p95, p99, max (milliseconds)
                anyhow::ensure!(fields.len() >= 6, "unexpected redis-benchmark line {line}");
                Ok(Measurement {
                    errors: 0,
                    ops_per_sec: fields[0],
                    p50_us: (fields[3] * 1000.0).round() as u64,
                    p99_us: (fields[5] * 1000.0).round() as u64,
                    cpu: None,
                })
            },
            |_| requests as f64,
        )
    }
}

/// Runs `run`, a measurement served by the processes `servers`, and adds what it cost
/// them and the load generator per request; `requests` says how many requests the run
/// made, from its figures.
fn metered(
    servers: &[u32],
    run: impl FnOnce() -> anyhow::Result<Measurement>,
    requests: impl FnOnce(&Measurement) -> f64,
) -> anyhow::Result<Measurement> {
    let before = cpu::Snapshot::take(servers)?;
    let mut measured = run()?;
    let after = cpu::Snapshot::take(servers)?;
    measured.cpu = Some(before.per_request(&after, requests(&measured)));
    Ok(measured)
}

/// The transport's ceiling (`server/examples/transport_ceiling.rs`: pipelined Gets and
/// Puts answered with canned answers, no store) on a free loopback port; killed when
/// dropped. What the client library, tonic and HTTP/2 carry on this machine.
struct TransportCeiling {
    process: Listening,
    endpoint: String,
}

impl TransportCeiling {
    async fn start(bin_dir: &Path) -> anyhow::Result<TransportCeiling> {
        let address = free_loopback_addr();
        let program = bin_dir.join("examples").join("transport_ceiling");
        let mut command = Command::new(&program);
        command.arg(address.to_string());
        let cannot = format!(
            "cannot run {}: build it with cargo build --release --examples",
            program.display()
        );
        Ok(TransportCeiling {
            process: Listening::start(command, address, cannot).await?,
            endpoint: address.to_string(),
        })
    }
}

fn spec(settings: &Settings, name: &str) -> NodeSpec {
    NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new(name)
    }
}

fn load(op: &str, concurrency: u32, pipeline: Option<u32>) -> Load<'_> {
    Load {
        op,
        cache: "work",
        concurrency,
        value_size: VALUE_SIZE,
        keys: KEY_SPACE,
        pipeline,
    }
}

/// The figures of one round, in the order of [`LABELS`].
const LABELS: [(&str, u32); 13] = [
    ("Redis SET, -P 1", REDIS_CLIENTS),
    ("Redis GET, -P 1", REDIS_CLIENTS),
    ("Put, pipelined, depth 1", CALLERS),
    ("Get, pipelined, depth 1", CALLERS),
    ("Put, unary", CALLERS),
    ("Redis SET, -P 16", REDIS_CLIENTS),
    ("Redis GET, -P 16", REDIS_CLIENTS),
    ("Put, pipelined, depth 16", REDIS_CLIENTS),
    ("Get, pipelined, depth 16", REDIS_CLIENTS),
    ("3-node site: Put, pipelined, depth 1", CALLERS),
    ("3-node site, 1 thread/node: Put, pipelined", CALLERS),
    ("transport ceiling: Put, depth 16", REDIS_CLIENTS),
    ("transport ceiling: Get, depth 16", REDIS_CLIENTS),
];

/// The version line of the `redis-server` this machine has; an error naming what to
/// install when it has none.
pub(crate) fn redis_version() -> anyhow::Result<String> {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .context("cannot run redis-server: install Debian's redis-server and redis-tools")
}

/// Runs the pipeline benchmark.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let redis_version = redis_version()?;
    let redis = RedisServer::start().await?;
    let ceiling = TransportCeiling::start(&settings.bin_dir).await?;
    let node = NodeProcess::start(spec(settings, "pipelined")).await?;
    let site = Site::start_with(3, |name| spec(settings, name)).await?;
    let lean_site = Site::start_with(3, |name| NodeSpec {
        worker_threads: Some(1),
        ..spec(settings, name)
    })
    .await?;
    let single = node.endpoint();
    let three = site.grpc_endpoints();
    let lean_three = lean_site.grpc_endpoints();
    let pids = |nodes: &[NodeProcess]| -> anyhow::Result<Vec<u32>> {
        nodes
            .iter()
            .map(|node| Ok(node.pid()?.as_raw().try_into()?))
            .collect()
    };
    let single_pids = pids(std::slice::from_ref(&node))?;
    let (three_pids, lean_pids) = (pids(&site.nodes)?, pids(&lean_site.nodes)?);
    let ceiling_pids = [ceiling.process.pid()];
    println!("pipeline: filling {KEY_SPACE} keys");
    fill(
        &settings.bin_dir,
        &single,
        &load("put", 64, None),
        KEY_SPACE,
    )?;

    // redis-benchmark runs a number of requests, not a duration: size each run from a
    // short first one so that it lasts about as long as the others.
    let secs = settings.duration.as_secs_f64();
    let sized = |depth: u32| -> anyhow::Result<u64> {
        let set = redis.benchmark("SET", depth, 20_000 * u64::from(depth))?;
        Ok(((set.ops_per_sec * secs) as u64).max(10_000))
    };
    let (shallow, deep) = (sized(1)?, sized(DEPTH)?);

    let bin = &settings.bin_dir;
    let duration = settings.duration;
    // A run of sitegridctl makes requests through its warmup too, at about the measured
    // rate: the CPU it and the server spend covers those as well.
    let run_secs = (duration + WARMUP).as_secs_f64();
    let sitegrid = |servers: &[u32], endpoint: &str, load: &Load<'_>| {
        metered(
            servers,
            || measure(bin, endpoint, load, duration),
            |measured| measured.ops_per_sec * run_secs,
        )
    };
    let mut rounds: Vec<Vec<Measurement>> = Vec::new();
    for round in 1..=settings.rounds {
        println!("pipeline: round {round} of {}", settings.rounds);
        let deep_load = |op| load(op, REDIS_CLIENTS, Some(DEPTH));
        let measured = vec![
            redis.benchmark("SET", 1, shallow)?,
            redis.benchmark("GET", 1, shallow)?,
            sitegrid(&single_pids, &single, &load("put", CALLERS, Some(1)))?,
            sitegrid(&single_pids, &single, &load("get", CALLERS, Some(1)))?,
            sitegrid(&single_pids, &single, &load("put", CALLERS, None))?,
            redis.benchmark("SET", DEPTH, deep)?,
            redis.benchmark("GET", DEPTH, deep)?,
            sitegrid(&single_pids, &single, &deep_load("put"))?,
            sitegrid(&single_pids, &single, &deep_load("get"))?,
            sitegrid(&three_pids, &three, &load("put", CALLERS, Some(1)))?,
            sitegrid(&lean_pids, &lean_three, &load("put", CALLERS, Some(1)))?,
            sitegrid(&ceiling_pids, &ceiling.endpoint, &deep_load("put"))?,
            sitegrid(&ceiling_pids, &ceiling.endpoint, &deep_load("get"))?,
        ];
        for ((label, concurrency), m) in LABELS.iter().zip(&measured) {
            let cpu = m.cpu.map_or(String::new(), |cpu| {
                format!(
                    "  CPU/request server {:.1} us, client {:.1} us",
                    cpu.server_us, cpu.client_us
                )
            });
            println!(
                "  {label:<44} c={concurrency:<3} {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us{cpu}",
                m.ops_per_sec, m.p50_us, m.p99_us
            );
        }
        rounds.push(measured);
    }
    drop((redis, ceiling, node, site, lean_site));

    let rounds = Rounds(rounds);
    let ratio = |index: usize, baseline: usize| rounds.ratio(index, baseline);
    let row = |index: usize, ratio: Option<(f64, &'static str)>, target: Option<f64>| {
        let (label, concurrency) = LABELS[index];
        rounds.row(index, label, concurrency, ratio, target)
    };
    let rows = vec![
        row(0, None, None),
        row(1, None, None),
        row(2, Some((ratio(2, 0), "Redis SET -P 1")), Some(1.0)),
        row(3, Some((ratio(3, 1), "Redis GET -P 1")), Some(1.0)),
        row(4, Some((ratio(4, 0), "Redis SET -P 1")), None),
        row(5, None, None),
        row(6, None, None),
        row(7, Some((ratio(7, 5), "Redis SET -P 16")), Some(1.0)),
        row(8, Some((ratio(8, 6), "Redis GET -P 16")), Some(1.0)),
        row(11, Some((ratio(11, 5), "Redis SET -P 16")), None),
        row(12, Some((ratio(12, 6), "Redis GET -P 16")), None),
        row(
            9,
            Some((ratio(9, 2), "single node, pipelined Put")),
            Some(0.5),
        ),
        row(10, Some((ratio(10, 2), "single node, pipelined Put")), None),
    ];
    let cores = machine::num_cpus();
    let budget = |redis: &Row| cores as f64 * 1e6 / redis.ops_per_sec;
    // Rows 5 and 6: Redis SET and GET at depth 16.
    let budgets_us = [budget(&rows[5]), budget(&rows[6])];
    Ok(Results {
        rows,
        redis_version,
        cores,
        budgets_us,
    })
}
