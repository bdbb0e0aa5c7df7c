//! The `sitegrid` program, built by this crate so its tests always run a fresh build of
//! it with the same features (see [`sitegrid_server::cli`]).

fn main() -> std::process::ExitCode {
    sitegrid_server::cli::main()
}
