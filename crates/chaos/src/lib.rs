//! Everything in amisim that makes a run differ from another, put under control (DESIGN.md §5,
//! STYLE.md 9): the simulated [`clock`] and the [`link`] model between regions; faults on the
//! links (jitter, loss, partition) and the experiment runner come later, each in its own module.
//!
//! Why a crate of its own: region nodes and the coordinator must read time only through a
//! [`Clock`], so the same code runs against wall time sped up (`scaled`) or against time that
//! moves only when an experiment says so (`virtual`), and a failing experiment replays exactly.
//! Likewise every transfer between regions is timed by a [`LinkModel`] the experiment controls.

pub mod clock;
pub mod link;

pub use clock::{wall_now_ms, Clock, ScaledClock, VirtualClock};
pub use link::{LinkError, LinkModel, LinkSpec, LinkTable};
