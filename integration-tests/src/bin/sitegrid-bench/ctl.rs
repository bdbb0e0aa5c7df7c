//! Running `sitegridctl bench` and reading its JSON report.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// One `sitegridctl bench` result (its `--output json` fields).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Measurement {
    pub(crate) errors: u64,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// CPU per request of the server and of the load generator, where measured.
    #[serde(skip)]
    pub(crate) cpu: Option<crate::cpu::PerRequest>,
}

/// How long a measurement's load runs before it is measured.
pub(crate) const WARMUP: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Load<'a> {
    pub(crate) op: &'a str,
    pub(crate) cache: &'a str,
    pub(crate) concurrency: u32,
    pub(crate) value_size: usize,
    pub(crate) keys: u64,
    /// Requests in flight per worker on the client's pipelined path; `None` for unary
    /// calls.
    pub(crate) pipeline: Option<u32>,
}

/// Runs one closed-loop measurement for `duration` after a [`WARMUP`].
pub(crate) fn measure(
    bin_dir: &Path,
    endpoint: &str,
    load: &Load<'_>,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let duration = humantime::format_duration(duration).to_string();
    let warmup = humantime::format_duration(WARMUP).to_string();
    run(
        bin_dir,
        endpoint,
        load,
        &[
            "--duration",
            &duration,
            "--warmup",
            &warmup,
            "--key-order",
            "random",
        ],
    )
}

/// Writes `count` distinct keys (`bench-0` ..) once each.
pub(crate) fn fill(
    bin_dir: &Path,
    endpoint: &str,
    load: &Load<'_>,
    count: u64,
) -> anyhow::Result<Measurement> {
    let count = count.to_string();
    run(
        bin_dir,
        endpoint,
        load,
        &[
            "--requests",
            &count,
            "--warmup",
            "0s",
            "--key-order",
            "sequential",
        ],
    )
}

fn run(
    bin_dir: &Path,
    endpoint: &str,
    load: &Load<'_>,
    extra: &[&str],
) -> anyhow::Result<Measurement> {
    let ctl = bin_dir.join("sitegridctl");
    let output = std::process::Command::new(&ctl)
        .args(["--endpoint", endpoint, "--output", "json", "bench"])
        .args(["--op", load.op, "--cache", load.cache])
        .args(["--concurrency", &load.concurrency.to_string()])
        .args(["--value-size", &load.value_size.to_string()])
        .args(["--keys", &load.keys.to_string()])
        .args(load.pipeline.map(|depth| format!("--pipeline={depth}")))
        .args(extra)
        .output()
        .with_context(|| format!("cannot run {}", ctl.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "sitegridctl bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let measurement: Measurement = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "unexpected output: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    anyhow::ensure!(
        measurement.errors == 0,
        "{} errors in {measurement:?}",
        measurement.errors
    );
    Ok(measurement)
}
