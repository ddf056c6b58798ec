//! Node faults (issue 6, part 3): what an experiment can do to a whole node — a region node or
//! the coordinator — rather than to a link: kill it (a crash, no clean shutdown), pause it (it
//! stops answering and its timers stop, like a process under SIGSTOP), resume it, restart it on
//! the same data and port, and skew a region's clock.
//!
//! [`NodeFaults`] is the seam between who asks and who acts. The coordinator's `Chaos` service
//! (its `*Node` RPCs) and the experiment runner ask; the lab's cluster (in process, or child
//! processes driven by signals) acts. A stand-alone coordinator has no implementation: it cannot
//! reach inside the processes of the nodes it talks to.
//!
//! Every method names a node by its name: a region name (`us-east-1`) or [`COORDINATOR`].

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;

pub use crate::link::COORDINATOR;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A region node (its own event log).
    Region,
    /// The coordinator (no state of its own: it replays the region logs).
    Coordinator,
}

impl NodeKind {
    /// `region` or `coordinator`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Region => "region",
            NodeKind::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving.
    Running,
    /// Holding every call and stream without answering; its timers stand still.
    Paused,
    /// Killed: calls fail at once (connection refused or reset) until it is restarted.
    Down,
}

impl NodeState {
    /// `running`, `paused` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Running => "running",
            NodeState::Paused => "paused",
            NodeState::Down => "down",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node as [`NodeFaults::nodes`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `us-east-1`, …, or `coordinator`.
    pub name: String,
    pub kind: NodeKind,
    pub state: NodeState,
    /// `http://127.0.0.1:PORT`: the same across restarts.
    pub url: String,
    /// The region's clock skew, simulated ms (0 for the coordinator, which reads no clock).
    pub clock_skew_ms: i64,
    /// How many times the node was restarted.
    pub restarts: u64,
    /// The operating-system process id, when the node is a child process that is alive.
    pub pid: Option<u32>,
}

/// Why a node fault was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeFaultError {
    /// No node of that name.
    #[error("no node named {node:?}; known nodes: {known}")]
    UnknownNode { node: String, known: String },
    /// The fault does not apply to the node in its state (e.g. pausing a node that is down).
    #[error("node {node} is {state}: cannot {action} it")]
    WrongState {
        node: String,
        state: NodeState,
        action: &'static str,
    },
    /// Meaningless or unsafe parameters (e.g. killing the coordinator through itself with no
    /// `down_for`: nothing could restart it).
    #[error("{0}")]
    Invalid(String),
    /// This cluster cannot do that (e.g. clock skew of a child process).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The fault was attempted and failed (a node that did not come back, a signal refused).
    #[error("node {node}: {message}")]
    Failed { node: String, message: String },
}

/// Kills, pauses, resumes, restarts and skews the nodes of a running cluster.
///
/// `Debug` so that configurations holding one stay printable.
pub trait NodeFaults: Send + Sync + fmt::Debug + 'static {
    /// Every node, regions first (in the cluster's order), then the coordinator.
    fn nodes(&self) -> Vec<NodeInfo>;

    /// Crashes `node` without a clean shutdown: its connections drop at once, calls in flight
    /// get no answer (a write may or may not have been made durable, as in a real crash; every
    /// acknowledged one was). `down_for`: restart it by itself after that much wall time;
    /// `None`: down until [`NodeFaults::restart`]. Killing a node that is down only re-arms
    /// `down_for`. A paused node can be killed.
    fn kill(
        &self,
        node: &str,
        down_for: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), NodeFaultError>>;

    /// Freezes a running `node`: calls and open streams are held (not refused) and its timers
    /// stop until [`NodeFaults::resume`]. Pausing a paused node does nothing.
    fn pause(&self, node: &str) -> BoxFuture<'_, Result<(), NodeFaultError>>;

    /// Lets a paused `node` go on: held calls proceed, its clock jumps to where it would be.
    /// Resuming a running node does nothing; a down node is refused (restart it).
    fn resume(&self, node: &str) -> BoxFuture<'_, Result<(), NodeFaultError>>;

    /// Brings `node` (down, paused or running) back running on the same data and the same
    /// port: a node that is not down is killed first. Returns once it serves.
    fn restart(&self, node: &str) -> BoxFuture<'_, Result<(), NodeFaultError>>;

    /// Sets the clock skew of `region`, in simulated ms (replacing the earlier one). See
    /// [`crate::SkewedClock`]: the node's clock never goes backwards, so a negative skew holds
    /// it still until the base clock catches up. (A future, unlike a plain setter, because the
    /// change is recorded in the audit trail first.)
    fn set_clock_skew(
        &self,
        region: &str,
        skew_ms: i64,
    ) -> BoxFuture<'_, Result<(), NodeFaultError>>;
}

/// `a, b, c`: the known names, for [`NodeFaultError::UnknownNode`].
pub fn known_names(nodes: &[NodeInfo]) -> String {
    nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
