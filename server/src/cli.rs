//! The `sitegrid` command line: runs one node.
//!
//! Thin on purpose: parse arguments, set up logs, load the config, bind the listeners and
//! hand over to [`crate::node::run`] until Ctrl-C or SIGTERM. It lives in the library so
//! the integration tests can build the very same program as a binary of their own.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use sitegrid_config::{Config, Environment};
use tracing::{error, info};

use crate::node::{Listeners, run, run_witness};

/// mimalloc instead of the system allocator: a node allocates a few small objects per
/// request and keeps millions of values, where glibc's malloc costs a fifth of the CPU
/// and fragments memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A node of sitegrid, the cross-site data grid for identity providers.
#[derive(Debug, Parser)]
#[command(name = "sitegrid", version)]
struct Args {
    /// The node's TOML config; without one the node runs alone as site `local` with the
    /// five default caches, data under ./data.
    #[arg(long, env = "SITEGRID_CONFIG")]
    config: Option<PathBuf>,
    /// Run the witness instead of a node: the third-place process that grants one site
    /// of a pair the right to take the other offline (`[witness]` listen and lease).
    #[arg(long)]
    witness: bool,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Runs `sitegrid` with the process's arguments; the exit code is 2 for a bad config,
/// 1 for a node that failed.
pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let env = Environment::from_process(hostname);
    let loaded = if args.witness {
        Config::load_witness(args.config.as_deref(), &env)
    } else {
        Config::load(args.config.as_deref(), &env)
    };
    let config = match loaded {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("sitegrid: {problem}");
            return ExitCode::from(2);
        }
    };
    if args.config.is_none() && !args.witness {
        info!(
            "no config file: running alone as site {:?} with the default caches",
            config.node.site
        );
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.node.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(problem) => {
            eprintln!("sitegrid: cannot start the runtime: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if args.witness {
            return run_witness(&config, shutdown_signal()).await;
        }
        let listeners = Listeners::bind(&config).await?;
        run(config, listeners, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            let mut message = problem.to_string();
            let mut source = std::error::Error::source(&problem);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            error!(error = %message, "node failed");
            eprintln!("sitegrid: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(problem) => {
                error!(error = %problem, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
