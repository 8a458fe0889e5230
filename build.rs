//! Generates the gRPC code for `proto/healthscore/v1` with a vendored protoc,
//! so a machine with only a Rust toolchain can build the crate.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("healthscore_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                PathBuf::from("proto/healthscore/v1/health_score.proto"),
                PathBuf::from("proto/healthscore/v1/admin.proto"),
            ],
            &[PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migrations but cannot tell cargo about them
    // on stable Rust.
    println!("cargo:rerun-if-changed=src/store/migrations");
    Ok(())
}
