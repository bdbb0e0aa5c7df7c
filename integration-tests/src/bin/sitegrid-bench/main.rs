//! `sitegrid-bench`: runs sitegrid's benchmarks against release builds and writes
//! `BENCHMARKS.md` (`make bench`).
//!
//! Every figure is measured in the same run as the baseline it is compared with (for a
//! single node: `Ping`, the stack's own floor), several rounds interleaved, and reported
//! as the median of the per-round ratios: this machine is shared, and its speed drifts
//! by more than the effects measured.

mod cluster;
mod cpu;
mod ctl;
mod idp;
mod listeners;
mod machine;
mod pipeline;
mod report;
mod resync;
mod single_node;
mod sites;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs the benchmarks and writes the report.
#[derive(Debug, Parser)]
struct Args {
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
    /// Rounds of every measurement; ratios are the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Entries loaded for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    memory_entries: u64,
    /// Entries of 1 KiB moved by the full resync.
    #[arg(long, default_value_t = 1_000_000)]
    resync_entries: u64,
    /// Directory holding the release `sitegrid` and `sitegridctl` (default: this
    /// program's own directory, target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run one suite only and print it, without writing the report (for development).
    #[arg(long, value_enum)]
    only: Option<Suite>,
}

/// The benchmark suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    SingleNode,
    Listeners,
    Site,
    Sites,
    Resync,
    Idp,
    Pipeline,
}

/// The settings every benchmark shares.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) rounds: usize,
    pub(crate) duration: Duration,
    pub(crate) memory_entries: u64,
    pub(crate) resync_entries: u64,
    pub(crate) bin_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no directory for this program"))?
            .to_path_buf(),
    };
    let settings = Settings {
        rounds: args.rounds.max(1),
        duration: args.duration,
        memory_entries: args.memory_entries,
        resync_entries: args.resync_entries,
        bin_dir,
    };
    match args.only {
        Some(Suite::SingleNode) => {
            single_node::run(&settings).await?;
            return Ok(());
        }
        Some(Suite::Listeners) => {
            println!("{:#?}", listeners::run(&settings).await?);
            return Ok(());
        }
        Some(Suite::Site) => {
            println!("{:#?}", cluster::run(&settings).await?);
            return Ok(());
        }
        Some(Suite::Sites) => {
            println!("{:#?}", sites::run(&settings).await?);
            return Ok(());
        }
        Some(Suite::Resync) => {
            println!("{:#?}", resync::run(&settings).await?);
            return Ok(());
        }
        Some(Suite::Pipeline) => {
            println!("{:#?}", pipeline::run(&settings).await?);
            return Ok(());
        }
        Some(Suite::Idp) => {
            println!("{:#}", idp::run(&settings).await?.report);
            return Ok(());
        }
        None => {}
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    // The comparison with Redis needs Redis; without it, every other figure is still
    // measured, and the report says what to install.
    let redis = pipeline::redis_version().map(|_| ());
    if let Err(missing) = &redis {
        eprintln!("the pipelined path's comparison with Redis is skipped: {missing:#}");
    }
    let figures = report::Figures {
        single: single_node::run(&settings).await?,
        listeners: listeners::run(&settings).await?,
        site: cluster::run(&settings).await?,
        two_sites: sites::run(&settings).await?,
        resync: resync::run(&settings).await?,
        idp: idp::run(&settings).await?,
        pipeline: match redis {
            Ok(()) => Ok(pipeline::run(&settings).await?),
            Err(missing) => Err(format!("{missing:#}")),
        },
    };
    let markdown = report::render(&machine::describe(), &command, &settings, &figures);
    std::fs::write(&args.output, markdown)?;
    println!("wrote {}", args.output.display());
    Ok(())
}
