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
    std::fs::write(out.join("amisim_rpcs.rs"), rpc_table(&fds))?;
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

/// The body of `visit_rpc` (see `src/lib.rs`): one arm per unary RPC of every service, mapping
/// (service, method) to its request and response types.
fn rpc_table(fds: &prost_types::FileDescriptorSet) -> String {
    let mut arms = String::new();
    for file in &fds.file {
        if file.package() != "amisim.v1" {
            continue;
        }
        for service in &file.service {
            for m in &service.method {
                if m.client_streaming() || m.server_streaming() {
                    continue;
                }
                let (Some(input), Some(output)) = (
                    m.input_type().strip_prefix(".amisim.v1."),
                    m.output_type().strip_prefix(".amisim.v1."),
                ) else {
                    continue;
                };
                if input.contains('.') || output.contains('.') {
                    continue;
                }
                arms.push_str(&format!(
                    "        ({:?}, {:?}) => Some(visitor.visit::<v1::{input}, v1::{output}>()),\n",
                    service.name(),
                    m.name(),
                ));
            }
        }
    }
    format!("match (service, method) {{\n{arms}        _ => None,\n    }}\n")
}
