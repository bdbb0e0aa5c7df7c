//! `sitegrid-demo` (`make demo`): the classic cross-datacenter topology on loopback.
//!
//! Two sites (`site1`, `site2`) of two `sitegrid` nodes each, every node naming the other
//! site as its peer with the default caches (sync + fail backups, `loginFailures` async),
//! and one simulated identity node per site that follows `work` and `sessions` and
//! prints every change it receives. Prints the nodes and the commands to try, then runs
//! until Ctrl-C (or `--run-for`), and stops every process it started.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use sitegrid_client::{Client, Event, ListenOptions};
use sitegrid_integration_tests::node::node_binary;
use sitegrid_integration_tests::{NodeSpec, TwoSites};

/// Starts two sites of two sitegrid nodes each, and a simulated identity node per site.
#[derive(Debug, Parser)]
struct Args {
    /// Stop after this long instead of waiting for Ctrl-C, e.g. `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    run_for: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let started = Instant::now();
    let programs = programs_dir();
    let sitegrid = program(&programs, "sitegrid").unwrap_or_else(node_binary);
    println!(
        "starting two sites of two nodes each ({})",
        sitegrid.display()
    );
    let sites = TwoSites::start(
        2,
        |_, name| NodeSpec {
            binary: Some(sitegrid.clone()),
            ..NodeSpec::new(name)
        },
        |_, peers| peers.iter().map(ToString::to_string).collect(),
    )
    .await?;
    for site in &sites.sites {
        site.wait_all_ready().await?;
    }
    let mut identity_nodes = Vec::new();
    for (index, site) in sites.sites.iter().enumerate() {
        let name = format!("idp-site{}", index + 1);
        let endpoints: Vec<String> = site
            .nodes
            .iter()
            .map(|n| n.grpc_addr().to_string())
            .collect();
        let client = Client::connect(endpoints).await?;
        let mut options = ListenOptions::new(["work", "sessions"]);
        options.with_values = true;
        let mut events = client.listen(options).await?;
        println!("{name}: following work and sessions");
        identity_nodes.push(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => println!("{name}: {}", describe(&event)),
                    Err(error) => println!("{name}: listener failed: {error}"),
                }
            }
        }));
    }
    let ctl = program(&programs, "sitegridctl")
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| "sitegridctl".into());
    let site1 = sites.sites[0].grpc_endpoints();
    let site2 = sites.sites[1].grpc_endpoints();
    println!();
    for (index, site) in sites.sites.iter().enumerate() {
        for node in &site.nodes {
            println!(
                "site{} {}: gRPC {}  HTTP http://{}/metrics",
                index + 1,
                node.spec().name,
                node.grpc_addr(),
                node.http_addr()
            );
        }
    }
    println!(
        "\nready in {:.1}s; try, in another terminal:\n\n\
         {ctl} -e {site1} site status\n\
         {ctl} -e {site1} cache put --cache sessions s1 alice --tag user=alice --max-idle 30m\n\
         {ctl} -e {site2} cache get --cache sessions s1\n\
         {ctl} -e {site2} cache put --cache work realm-1 invalidate --lifespan 2m\n\
         {ctl} -e {site1} site take-offline site2     # writes stop waiting for site2\n\
         {ctl} -e {site1} cache put --cache sessions s2 bob\n\
         {ctl} -e {site1} site status                 # site2 offline, keys written meanwhile\n\
         {ctl} -e {site1} site bring-online site2     # resync, then online\n\
         {ctl} -e {site2} cache get --cache sessions s2\n\n\
         The identity nodes print what they receive. Ctrl-C stops everything.",
        started.elapsed().as_secs_f64()
    );
    match args.run_for {
        Some(limit) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = tokio::time::sleep(limit) => {}
            }
        }
        None => tokio::signal::ctrl_c().await?,
    }
    println!("stopping");
    for identity_node in identity_nodes {
        identity_node.abort();
    }
    drop(sites);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The directory of this program: the other binaries of the build are next to it.
fn programs_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// `name` next to this program, if it was built.
fn program(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    path.exists().then_some(path)
}

/// One line for an event.
fn describe(event: &Event) -> String {
    match event {
        Event::Changed(change) => format!(
            "{} {}/{} version {} from {}{}",
            change.kind.as_str(),
            change.cache,
            String::from_utf8_lossy(&change.key),
            change.version,
            change.origin_site,
            change
                .value
                .as_ref()
                .map(|value| format!(" = {:?}", String::from_utf8_lossy(value)))
                .unwrap_or_default()
        ),
        Event::InvalidateAll { cache, .. } => format!("invalidate_all {cache}"),
    }
}
