//! Everything in amisim that makes a run differ from another, put under control (DESIGN.md §5,
//! STYLE.md 9): for now the simulated [`clock`]; the link model (latency, jitter, bandwidth,
//! loss, partition) and the experiment runner come later, each in its own module.
//!
//! Why a crate of its own: region nodes and the coordinator must read time only through a
//! [`Clock`], so the same code runs against wall time sped up (`scaled`) or against time that
//! moves only when an experiment says so (`virtual`), and a failing experiment replays exactly.

pub mod clock;

pub use clock::{wall_now_ms, Clock, ScaledClock, VirtualClock};
