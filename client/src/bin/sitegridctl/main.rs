//! `sitegridctl`: sitegrid's operator CLI and load generator.
//!
//! Parses the arguments, sets up logging (`RUST_LOG`, default `warn`, to stderr) and
//! hands over to the command's module; results go to stdout, errors to stderr as
//! `error: ...`.

mod args;
mod bench;
mod cache_cmd;
mod cache_output;
mod cluster_cmd;
mod error;
mod input;
mod listen_cmd;
mod output;
mod site_cmd;
mod token_cmd;

use std::io::{BufWriter, IsTerminal as _, Write};
use std::process::ExitCode;

use clap::Parser as _;
use sitegrid_client::Client;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command, GlobalArgs};
use crate::error::CliError;

/// mimalloc instead of the system allocator: the load generator allocates per request,
/// and its CPU is shared with the node under test on one machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let result = run(cli, &mut out).await;
    let result = result.and_then(|()| out.flush().map_err(CliError::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            // Whatever was printed before the failure still goes out, before the error.
            let _ = out.flush();
            eprintln!("error: {}", error.report());
            error.exit_code()
        }
    }
}

async fn run(cli: Cli, out: &mut impl Write) -> Result<(), CliError> {
    let global = &cli.global;
    match cli.command {
        Command::Bench(args) => bench::run(global, &args, out).await,
        Command::Cache(command) => {
            cache_cmd::run(&connect(global, true).await?, command, global.output, out).await
        }
        // A node's status is asked of the node named, never of a member learned from it.
        Command::Cluster(command) => {
            cluster_cmd::run(&connect(global, false).await?, command, global.output, out).await
        }
        Command::Site(command) => {
            site_cmd::run(&connect(global, false).await?, command, global.output, out).await
        }
        Command::Token(command) => token_cmd::run(command, out),
    }
}

/// A client of the endpoints given; `discover_topology` lets it learn the site's other
/// members and send writes to their keys' primaries.
async fn connect(global: &GlobalArgs, discover_topology: bool) -> Result<Client, CliError> {
    let client = secured(global, Client::builder(global.endpoint.iter().cloned()))
        .request_timeout(global.timeout)
        .connect_timeout(global.timeout)
        .discover_topology(discover_topology)
        .connect()
        .await?;
    Ok(client)
}

/// The builder with the token and TLS files of the global arguments.
pub(crate) fn secured(
    global: &GlobalArgs,
    mut builder: sitegrid_client::ClientBuilder,
) -> sitegrid_client::ClientBuilder {
    if let Some(token) = &global.token {
        builder = builder.token(token);
    }
    if let Some(ca) = &global.tls_ca {
        builder = builder.tls(ca);
        if let (Some(cert), Some(key)) = (&global.tls_cert, &global.tls_key) {
            builder = builder.tls_identity(cert, key);
        }
        if let Some(name) = &global.tls_server_name {
            builder = builder.tls_server_name(name);
        }
    }
    builder
}
