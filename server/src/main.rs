//! `sitegrid`: runs one node (see [`sitegrid_server::cli`]).

fn main() -> std::process::ExitCode {
    sitegrid_server::cli::main()
}
