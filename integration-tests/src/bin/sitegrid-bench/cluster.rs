//! Site figures (issue "a site of several nodes"): `Put` at concurrency 64 on a 3-node
//! site against a single node, measured alternately in the same run.

use sitegrid_integration_tests::{NodeProcess, NodeSpec, Site};

use crate::Settings;
use crate::ctl::{Load, measure};

/// What the site benchmark measured (medians over rounds).
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) single_ops: f64,
    pub(crate) single_p50_us: u64,
    pub(crate) site_ops: f64,
    pub(crate) site_p50_us: u64,
    pub(crate) site_p99_us: u64,
    /// Medians of the per-round ratios site / single.
    pub(crate) ops_ratio: f64,
    pub(crate) p50_ratio: f64,
}

fn spec(settings: &Settings, name: &str) -> NodeSpec {
    NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new(name)
    }
}

/// Runs the site benchmark.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let single = NodeProcess::start(spec(settings, "single")).await?;
    let site = Site::start_with(3, |name| spec(settings, name)).await?;
    // The client is given every node: it sends each write to its key's primary.
    let site_endpoints = site
        .nodes
        .iter()
        .map(|n| n.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let load = Load {
        op: "put",
        cache: "work",
        concurrency: 64,
        value_size: 256,
        keys: 100_000,
        pipeline: None,
    };
    let mut rounds = Vec::new();
    for round in 1..=settings.rounds {
        println!("site: round {round} of {}", settings.rounds);
        let one = measure(
            &settings.bin_dir,
            &single.endpoint(),
            &load,
            settings.duration,
        )?;
        let three = measure(&settings.bin_dir, &site_endpoints, &load, settings.duration)?;
        println!(
            "  single node {:>9.0} ops/s p50 {:>5} us | 3-node site {:>9.0} ops/s p50 {:>5} us p99 {:>6} us",
            one.ops_per_sec, one.p50_us, three.ops_per_sec, three.p50_us, three.p99_us
        );
        rounds.push((one, three));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Ok(Results {
        single_ops: median(rounds.iter().map(|(one, _)| one.ops_per_sec).collect()),
        single_p50_us: median(rounds.iter().map(|(one, _)| one.p50_us as f64).collect()) as u64,
        site_ops: median(rounds.iter().map(|(_, three)| three.ops_per_sec).collect()),
        site_p50_us: median(
            rounds
                .iter()
                .map(|(_, three)| three.p50_us as f64)
                .collect(),
        ) as u64,
        site_p99_us: median(
            rounds
                .iter()
                .map(|(_, three)| three.p99_us as f64)
                .collect(),
        ) as u64,
        ops_ratio: median(
            rounds
                .iter()
                .map(|(one, three)| three.ops_per_sec / one.ops_per_sec)
                .collect(),
        ),
        p50_ratio: median(
            rounds
                .iter()
                .map(|(one, three)| three.p50_us as f64 / one.p50_us as f64)
                .collect(),
        ),
    })
}
