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

/// The request and response types of one RPC, handed to [`visit_rpc`].
#[cfg(feature = "serde")]
pub trait RpcVisitor {
    type Output;
    fn visit<Req, Resp>(self) -> Self::Output
    where
        Req: prost::Message + Default + serde::Serialize + 'static,
        Resp: prost::Message + Default + serde::Serialize + 'static;
}

/// Calls `visitor` with the request and response types of the unary RPC `method` of `service`
/// (the proto names: `Ec2`, `RegisterImage`); `None` for an RPC that does not exist. Generated
/// from the proto files, so a stored message can be decoded by the name of its call (the
/// request log keeps calls as protobuf bytes, ADR 0012).
#[cfg(feature = "serde")]
pub fn visit_rpc<V: RpcVisitor>(service: &str, method: &str, visitor: V) -> Option<V::Output> {
    include!(concat!(env!("OUT_DIR"), "/amisim_rpcs.rs"))
}
