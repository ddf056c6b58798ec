//! The node's own failures (starting, replaying, serving). Failures of a request are
//! [`amisim_core::Ec2Error`]s with their EC2 code, never this type.

use amisim_log::LogError;

/// Why a region node could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The configuration cannot run (empty region, bad time scale, zero batch size).
    #[error("invalid region configuration: {0}")]
    Config(String),

    /// Reading the log to replay it failed.
    #[error("event log: {0}")]
    Log(#[from] LogError),

    /// The log holds events of another region: the data directory belongs to another node.
    #[error(
        "the log holds events of region {found:?} at seq {seq}; this node serves {expected:?}"
    )]
    WrongRegion {
        /// The region this node was configured for.
        expected: String,
        /// The region named by the event.
        found: String,
        /// The event's seq.
        seq: u64,
    },

    /// Replay found a seq other than the next one (the log broke its gapless contract).
    #[error("event log replay: expected seq {expected}, found {found}")]
    Gap {
        /// The seq that should have come next.
        expected: u64,
        /// The seq that came instead.
        found: u64,
    },

    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Spawn(#[source] std::io::Error),

    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// The reflection service could not read the embedded descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}
