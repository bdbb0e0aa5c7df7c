//! Single-node figures (issue "a single sitegrid node"): `Ping`, `Put`, `Get` at
//! concurrency 1 and 64 with 256-byte values, `Put` to a persistent cache, each as a ratio
//! to `Ping` (or to in-memory `Put`) measured in the same round; and the memory of
//! 1,000,000 entries of 1 KiB.

use sitegrid_integration_tests::{NodeProcess, NodeSpec};

use crate::Settings;
use crate::cpu::PerRequest;
use crate::ctl::{Load, Measurement, fill, measure};

/// Keys read and written by the throughput measurements.
const KEY_SPACE: u64 = 100_000;
/// Value size of the throughput measurements.
const VALUE_SIZE: usize = 256;

/// One reported figure.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) label: String,
    pub(crate) concurrency: u32,
    /// Medians over rounds.
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// Median of per-round ratios, with what it is a ratio to.
    pub(crate) ratio: Option<(f64, &'static str)>,
    /// The target the issue sets for the ratio, if any.
    pub(crate) target: Option<f64>,
    /// Medians over rounds of the CPU per request, where every round measured it.
    pub(crate) cpu: Option<PerRequest>,
}

/// The measurements of every round, each in the order of its plan.
pub(crate) struct Rounds(pub(crate) Vec<Vec<Measurement>>);

impl Rounds {
    /// The median over rounds of figure `index`'s throughput divided by figure
    /// `baseline`'s, measured in the same round.
    pub(crate) fn ratio(&self, index: usize, baseline: usize) -> f64 {
        median(
            self.0
                .iter()
                .map(|round| round[index].ops_per_sec / round[baseline].ops_per_sec)
                .collect(),
        )
    }

    /// Figure `index` as a row of the report: medians over rounds.
    pub(crate) fn row(
        &self,
        index: usize,
        label: &str,
        concurrency: u32,
        ratio: Option<(f64, &'static str)>,
        target: Option<f64>,
    ) -> Row {
        let figure = |of: fn(&Measurement) -> f64| {
            median(self.0.iter().map(|round| of(&round[index])).collect())
        };
        Row {
            label: label.to_owned(),
            concurrency,
            ops_per_sec: figure(|m| m.ops_per_sec),
            p50_us: figure(|m| m.p50_us as f64).round() as u64,
            p99_us: figure(|m| m.p99_us as f64).round() as u64,
            ratio,
            target,
            cpu: self.cpu(index),
        }
    }

    /// Figure `index`'s CPU per request, the medians over rounds, if every round
    /// measured it.
    fn cpu(&self, index: usize) -> Option<PerRequest> {
        let measured: Vec<PerRequest> = self
            .0
            .iter()
            .map(|round| round[index].cpu)
            .collect::<Option<_>>()
            .filter(|measured: &Vec<PerRequest>| !measured.is_empty())?;
        Some(PerRequest {
            server_us: median(measured.iter().map(|cpu| cpu.server_us).collect()),
            client_us: median(measured.iter().map(|cpu| cpu.client_us).collect()),
        })
    }
}

/// The memory figure.
#[derive(Debug, Clone)]
pub(crate) struct Memory {
    pub(crate) entries: u64,
    pub(crate) value_size: usize,
    pub(crate) rss_bytes: u64,
    pub(crate) limit_bytes: u64,
}

/// Everything measured on a single node.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) rows: Vec<Row>,
    pub(crate) memory: Memory,
}

fn spec(settings: &Settings, name: &str) -> NodeSpec {
    NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new(name)
    }
}

fn load<'a>(op: &'a str, cache: &'a str, concurrency: u32) -> Load<'a> {
    Load {
        op,
        cache,
        concurrency,
        value_size: VALUE_SIZE,
        keys: KEY_SPACE,
        pipeline: None,
    }
}

/// Runs the single-node benchmarks.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let node = NodeProcess::start(spec(settings, "bench")).await?;
    let endpoint = node.endpoint();
    println!("single node: filling {KEY_SPACE} keys");
    fill(
        &settings.bin_dir,
        &endpoint,
        &load("put", "work", 64),
        KEY_SPACE,
    )?;

    // (label, op, cache, concurrency)
    let plan: [(&str, &str, &str, u32); 7] = [
        ("Ping", "ping", "work", 1),
        ("Put", "put", "work", 1),
        ("Get", "get", "work", 1),
        ("Ping", "ping", "work", 64),
        ("Put", "put", "work", 64),
        ("Get", "get", "work", 64),
        ("Put, persistent cache", "put", "sessions", 64),
    ];
    let mut rounds: Vec<Vec<Measurement>> = Vec::new();
    for round in 1..=settings.rounds {
        println!("single node: round {round} of {}", settings.rounds);
        let mut measured = Vec::new();
        for (label, op, cache, concurrency) in plan {
            let m = measure(
                &settings.bin_dir,
                &endpoint,
                &load(op, cache, concurrency),
                settings.duration,
            )?;
            println!(
                "  {label:<24} c={concurrency:<3} {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us",
                m.ops_per_sec, m.p50_us, m.p99_us
            );
            measured.push(m);
        }
        rounds.push(measured);
    }
    drop(node);

    let rounds = Rounds(rounds);
    let ratio = |index: usize, baseline: usize| rounds.ratio(index, baseline);
    let row = |index: usize, ratio: Option<(f64, &'static str)>, target: Option<f64>| {
        rounds.row(index, plan[index].0, plan[index].3, ratio, target)
    };
    let rows = vec![
        row(0, None, None),
        row(1, Some((ratio(1, 0), "Ping c=1")), None),
        row(2, Some((ratio(2, 0), "Ping c=1")), None),
        row(3, None, None),
        row(4, Some((ratio(4, 3), "Ping c=64")), Some(0.7)),
        row(5, Some((ratio(5, 3), "Ping c=64")), Some(0.85)),
        row(6, Some((ratio(6, 4), "in-memory Put c=64")), Some(0.3)),
    ];
    let memory = measure_memory(settings).await?;
    Ok(Results { rows, memory })
}

/// Loads `memory_entries` entries of 1 KiB into an in-memory cache of a fresh node and
/// reads the node's resident memory.
async fn measure_memory(settings: &Settings) -> anyhow::Result<Memory> {
    const VALUE: usize = 1024;
    let node = NodeProcess::start(spec(settings, "memory")).await?;
    println!(
        "memory: loading {} entries of {VALUE} bytes",
        settings.memory_entries
    );
    let load = Load {
        value_size: VALUE,
        keys: settings.memory_entries,
        ..load("put", "work", 64)
    };
    fill(
        &settings.bin_dir,
        &node.endpoint(),
        &load,
        settings.memory_entries,
    )?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid()?))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc status"))?;
    println!("memory: {} MiB resident", rss_kb / 1024);
    Ok(Memory {
        entries: settings.memory_entries,
        value_size: VALUE,
        rss_bytes: rss_kb * 1024,
        limit_bytes: 1536 * 1024 * 1024,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
