//! Generates the gRPC code from `sitegrid/v1/*.proto` with protox, so no system
//! `protoc` is needed, and keeps the encoded descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "sitegrid/v1/sitegrid.proto",
    "sitegrid/v1/replication.proto",
    "sitegrid/v1/sites.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sitegrid_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Zero-copy decoding of keys and values; the store copies what it keeps.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
