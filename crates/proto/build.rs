//! Generates Rust code from `proto/amisim/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler), so no system `protoc` is needed. The encoded descriptor set is kept too, for gRPC
//! server reflection.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "amisim/v1/ec2.proto",
    "amisim/v1/events.proto",
    "amisim/v1/region.proto",
    "amisim/v1/coordinator.proto",
    "amisim/v1/kms.proto",
    "amisim/v1/audit.proto",
    "amisim/v1/chaos.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for f in FILES {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("amisim_descriptor.bin"), bytes)?;
    tonic_prost_build::configure()
        // Message types must not need tonic: the stubs are behind the `grpc` feature.
        .server_mod_attribute("amisim.v1", "#[cfg(feature = \"grpc\")]")
        .client_mod_attribute("amisim.v1", "#[cfg(feature = \"grpc\")]")
        // JSON views (audit records): lower-camel names as in AWS's JSON, behind `serde`.
        .type_attribute(
            ".amisim.v1",
            "#[cfg_attr(feature = \"serde\", derive(serde::Serialize))]\n\
             #[cfg_attr(feature = \"serde\", serde(rename_all = \"camelCase\"))]",
        )
        .compile_fds(fds)?;
    Ok(())
}
