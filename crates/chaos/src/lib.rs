//! Everything in amisim that makes a run differ from another, put under control (DESIGN.md §5,
//! STYLE.md 9): the simulated [`clock`]; the [`link`] model between regions (latency
//! distributions, jitter, bandwidth, loss, partitions, timeouts, slow close), changed live
//! through a [`control::LinkControl`] and applied to the coordinator's channels by the tower
//! [`layer`]; the [`nodes`] faults (kill, pause, restart, clock skew through a [`SkewedClock`])
//! that a cluster implements and the `Chaos` service and the experiment runner use.
//!
//! Why a crate of its own: region nodes and the coordinator must read time only through a
//! [`Clock`], so the same code runs against wall time sped up (`scaled`) or against time that
//! moves only when an experiment says so (`virtual`), and a failing experiment replays exactly.
//! Likewise every transfer between regions is timed by a [`LinkModel`] the experiment controls.

pub mod clock;
pub mod control;
pub mod layer;
pub mod link;
pub mod nodes;

pub use clock::{wall_now_ms, Clock, ScaledClock, SkewedClock, VirtualClock};
pub use control::LinkControl;
pub use layer::{ChaosLayer, ChaosService};
pub use link::{seeded_rng, Distribution, LinkError, LinkModel, LinkSpec, LinkTable, COORDINATOR};
pub use nodes::{NodeFaultError, NodeFaults, NodeInfo, NodeKind, NodeState};
