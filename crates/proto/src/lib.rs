//! amisim's public contract as Rust types, generated from `proto/amisim/v1/*.proto`.
//!
//! The `.proto` files are the source of truth and are documented field by field; this crate only
//! compiles them. Message types are always available; the tonic client and server stubs need the
//! `grpc` feature, so the pure domain crate (`amisim-core`) can use the messages without tonic.

#![allow(clippy::all, missing_docs)]

/// Everything in protobuf package `amisim.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/amisim.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every amisim proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/amisim_descriptor.bin"));

pub use v1::*;
