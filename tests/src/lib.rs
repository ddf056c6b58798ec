//! Shared helpers for amisim's end-to-end tests (the tests themselves are in `tests/tests/`).
//!
//! The tests are black-box: they start the real `amisim` binary as child processes on temporary
//! data directories and port 0, parse the address it prints, and talk to it over the public
//! gRPC API only (`amisim.v1.Ec2`, `amisim.v1.Region`, health, reflection). Nothing here links
//! the server crates.
//!
//! - [`process`]: find (and build) the binary, start `amisim dev` / `amisim region`, wait for
//!   their output lines, stop them with SIGTERM or SIGKILL, show their logs when a test fails.
//! - [`client`]: connecting, request metadata, EC2 error checks, and the multi-step flows the
//!   tests share (volume → snapshot → completed → RegisterImage).
//!
//! See `tests/README.md` for why the binary is located the way it is.

pub mod client;
pub mod process;

pub use client::*;
pub use process::*;
