//! `sitegrid-chaos`: runs the fault-injection scenarios with seeds for a duration each,
//! prints a summary table, and appends it (with the command that reproduces it) to a
//! report file (`make chaos`). Exits with failure if any run found an anomaly.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sitegrid_integration_tests::chaos::{self, Report, Scenario};

/// Runs fault-injection scenarios against real sitegrid processes on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run (repeatable); every scenario if none.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// The first seed; each scenario runs with `seed`, `seed + 1`, ... (random if not
    /// given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs (seeds) per scenario.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// How long faults are injected in each run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Write the summary table to this Markdown file.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let scenarios = if args.scenarios.is_empty() {
        Scenario::all()
    } else {
        args.scenarios.clone()
    };
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..1_000_000));
    println!(
        "sitegrid-chaos: seed {seed}, {} seeds per scenario, {} of faults per run",
        args.seeds,
        humantime::format_duration(args.duration)
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mut reports = Vec::new();
    for scenario in &scenarios {
        for offset in 0..args.seeds {
            let seed = seed + offset;
            print!("{} seed {seed}: ", scenario.name());
            std::io::stdout().flush()?;
            let report = runtime.block_on(chaos::run(*scenario, seed, args.duration))?;
            println!(
                "{} ops ({} ok, {} indeterminate), {} events, {} faults, {} anomalies in {:.0?}",
                report.counts.ops,
                report.counts.ok,
                report.counts.indeterminate,
                report.counts.events,
                report.faults,
                report.anomalies.len(),
                report.elapsed
            );
            for anomaly in &report.anomalies {
                println!("  ANOMALY {anomaly}");
            }
            reports.push(report);
        }
    }
    let table = summary(&scenarios, &reports);
    println!("\n{table}");
    if let Some(output) = &args.output {
        let command = format!(
            "cargo run --release -p sitegrid-integration-tests --bin sitegrid-chaos -- --seed {seed} --seeds {} --duration {}{}",
            args.seeds,
            humantime::format_duration(args.duration),
            args.scenarios
                .iter()
                .map(|s| format!(" --scenario {}", s.name()))
                .collect::<String>()
        );
        std::fs::write(output, report_file(&command, &table))?;
        println!("written to {}", output.display());
    }
    let clean = reports.iter().all(|r| r.anomalies.is_empty());
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One row per scenario: runs, operations, events, faults, anomalies.
fn summary(scenarios: &[Scenario], reports: &[Report]) -> String {
    let mut table = String::from(
        "| scenario | runs | seeds | operations | ok | indeterminate | listener events | faults | anomalies |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for scenario in scenarios {
        let runs: Vec<&Report> = reports.iter().filter(|r| r.scenario == *scenario).collect();
        let seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
        let sum = |f: fn(&Report) -> u64| runs.iter().map(|r| f(r)).sum::<u64>();
        let _ = writeln!(
            table,
            "| {} | {} | {}..={} | {} | {} | {} | {} | {} | {} |",
            scenario.name(),
            runs.len(),
            seeds.first().unwrap_or(&0),
            seeds.last().unwrap_or(&0),
            sum(|r| r.counts.ops),
            sum(|r| r.counts.ok),
            sum(|r| r.counts.indeterminate),
            sum(|r| r.counts.events),
            sum(|r| r.faults),
            sum(|r| r.anomalies.len() as u64),
        );
    }
    table
}

fn report_file(command: &str, table: &str) -> String {
    format!(
        "# sitegrid reliability\n\n\
         Written by `make chaos`: every scenario of the fault-injection suite \
         (`integration-tests/src/chaos`) run against real `sitegrid` processes on loopback, \
         two sites with links through the suite's fault proxy, each run with its own seed. \
         The checkers read the recorded history (every operation with its outcome; a \
         timed-out or failed write counts as indeterminate) and the final state of every \
         node: at most one winner per token, no fork and no lost update in versioned \
         replaces, every acknowledged write present, listeners missing nothing they were \
         not told to drop, every node of every site identical.\n\n\
         Run on {cores} cores ({os}/{arch}), finished {finished}. Reproduce with:\n\n\
         ```\n{command}\n```\n\n{table}",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        os = std::env::consts::OS,
        arch = std::env::consts::ARCH,
        finished = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
    )
}
