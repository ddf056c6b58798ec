//! The chaos laboratory (issue 6): a [`cluster`] of region nodes and a coordinator whose nodes
//! can be killed, paused, restarted and skewed, and the experiment runner built on it.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod report;
pub mod run;
pub mod spec;
pub mod workload;

pub use cluster::{Cluster, ClusterClock, ClusterMode, ClusterSpec, LabError};
