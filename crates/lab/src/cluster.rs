//! [`Cluster`]: every region node and the coordinator of one run, whose nodes can be killed,
//! paused, resumed, restarted and (regions) clock-skewed while the run goes on (issue 6,
//! part 3). `amisim dev` and the experiment runner start one; its [`NodeFaults`] are what the
//! coordinator's `Chaos` service (`KillNode`, …) and the runner's fault timeline use.
//!
//! # Two modes
//!
//! - [`ClusterMode::InProcess`] (`amisim dev`, deterministic runs): the nodes are tasks of this
//!   process, each behind a gate (`gate`) — a loopback forwarder that owns the node's public port
//!   for the cluster's whole life. **Kill** drops every connection at once, stops the node's
//!   server and drops the node *without* its clean shutdown (no final signed digest; its
//!   writer ends after what it had queued, as a crash leaves whatever reached the disk; every
//!   acknowledged write was flushed before it was acknowledged). **Restart** reopens the same
//!   data directory (once the old incarnation has released it) and reopens the gate on the new
//!   server: the port is the same, so the coordinator's followers and saga channels reconnect
//!   by themselves. **Pause** holds every byte at the gate (calls and open streams wait, nothing
//!   is refused) and freezes the region's [`SkewedClock`], so no timer fires; **resume** lets
//!   them go and the clock jumps to where it would be. Every region runs on a
//!   [`SkewedClock`] over the run's clock (one shared [`VirtualClock`] in virtual mode), so
//!   **clock skew** can be set live. The coordinator keeps no state: killing it stops its
//!   server, followers and saga driver; restarting it replays the logs. Its link table
//!   ([`Cluster::links`]) survives: the network's conditions are not the coordinator's.
//!   A paused in-process coordinator holds its callers at its gate and switches on its hold
//!   ([`amisim_coordinator::hold`]): its followers ingest nothing and its saga driver takes no
//!   step until it resumes, as in a stopped process.
//! - [`ClusterMode::Processes`]: `amisim region` children and one `amisim coordinator` child,
//!   driven by signals: kill = SIGKILL, pause = SIGSTOP, resume = SIGCONT, restart = spawn again
//!   with the same flags (same port, same data). Exact (a paused process stops everything).
//!   Clock skew goes through the child's `Region.SetClockSkew` (not while it is paused: a
//!   stopped process cannot answer) and is set again after a restart. The coordinator
//!   child gets the run's seed (`--seed`) and has no node faults of its
//!   own (its `*Node` RPCs answer FAILED_PRECONDITION); each child's virtual clock starts at
//!   the spec's `start_ms` (`--virtual-start-ms`) but is its own, moved by the coordinator's
//!   clock calls. A child's stdout and stderr go to `DATA/<node>.log`.
//!
//! # Recording
//!
//! Every fault is written to the audit trail before it is applied (kill, pause, skew) or right
//! after (resume, restart: the node may be the only one that could record it), as a
//! `LinkConditionChanged` event with `node` set, in the home region: `us-east-1` if it runs,
//! else the first running region. A kill or pause that cannot be recorded is not applied.
//!
//! # Layout
//!
//! - this file: the public API ([`ClusterSpec`], [`Cluster`], [`LabError`]) and the fault
//!   bookkeeping common to both modes;
//! - `gate`: the forwarder in front of an in-process node;
//! - [`region_node`]: opening a region's data directory (also `amisim region`);
//! - `in_process` / `processes`: starting and stopping one node in each mode;
//! - `record`: the audit record of a fault.

mod gate;
mod in_process;
mod processes;
mod record;
pub mod region_node;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use amisim_chaos::{
    LinkControl, LinkTable, NodeFaultError, NodeFaults, NodeInfo, NodeKind, NodeState, SkewedClock,
    VirtualClock, COORDINATOR,
};
use amisim_coordinator::CoordinatorConfig;
use amisim_region::RegionNode;
use futures::future::BoxFuture;
use tokio::sync::watch;

pub use region_node::{start_region_node, RegionOptions};

/// Where the nodes run.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterMode {
    /// Tasks of this process (see the module docs).
    InProcess,
    /// Child processes of `binary` (the `amisim` executable).
    Processes { binary: PathBuf },
}

/// The run's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClusterClock {
    /// Simulated time flows this many times faster than wall time (each node its own clock,
    /// starting no earlier than its last logged event).
    Scaled(f64),
    /// Simulated time moves only when told; it starts at `start_ms` (or at the latest logged
    /// event, if later). In process, one clock shared by every node
    /// ([`Cluster::virtual_clock`]).
    Virtual { start_ms: u64 },
}

/// What to start. [`ClusterSpec::new`] gives the defaults; set the fields you need.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The regions, in order (seeds and the home region follow it).
    pub regions: Vec<String>,
    /// Root data directory: region `r` lives in `DATA/r`.
    pub data: PathBuf,
    /// Default: scaled, 60×.
    pub clock: ClusterClock,
    /// The run's seed: region `k` (in `regions` order) gets `seed + k`, the coordinator's link
    /// draws and saga jitter get `seed` (default 0).
    pub seed: u64,
    /// The links the run starts with (default: every pair 60 s + 75 MiB/s).
    pub links: LinkTable,
    /// Bearer-token authentication (default none). In processes mode give `accounts_file`
    /// too: the children read the file.
    pub accounts: Option<Arc<amisim_core::Accounts>>,
    /// The accounts file behind `accounts`, for processes mode.
    pub accounts_file: Option<PathBuf>,
    /// Default: in process.
    pub mode: ClusterMode,
    /// The coordinator's address; port 0 picks one (default `127.0.0.1:0`).
    pub listen: String,
    /// Sign a digest of each region's log every this many events.
    pub digest_every: u64,
    /// Record read-only calls in the request logs too (default true).
    pub record_reads: bool,
    /// Each in-process node's sled cache and projection checkpoints (default
    /// [`amisim_region::StorageConfig::default`]; checkpoints in `DATA/<region>/checkpoints`).
    pub storage: amisim_region::StorageConfig,
    /// The coordinator's other settings (followers, sagas, `drive_sagas`); its `links`,
    /// `accounts`, `sagas.seed`, `faults` and `link_control` are set from this spec.
    pub coordinator: CoordinatorConfig,
}

impl ClusterSpec {
    /// `regions` under `data`, with the defaults above.
    pub fn new<S: Into<String>>(
        regions: impl IntoIterator<Item = S>,
        data: impl Into<PathBuf>,
    ) -> Self {
        ClusterSpec {
            regions: regions.into_iter().map(Into::into).collect(),
            data: data.into(),
            clock: ClusterClock::Scaled(amisim_chaos::ScaledClock::DEFAULT_SCALE),
            seed: 0,
            links: LinkTable::default(),
            accounts: None,
            accounts_file: None,
            mode: ClusterMode::InProcess,
            listen: "127.0.0.1:0".to_string(),
            digest_every: amisim_region::audit::DEFAULT_DIGEST_EVERY,
            record_reads: true,
            storage: amisim_region::StorageConfig::default(),
            coordinator: CoordinatorConfig::default(),
        }
    }

    fn validate(&self) -> Result<(), LabError> {
        if self.regions.is_empty() {
            return Err(invalid("no regions: name at least one".into()));
        }
        for (i, r) in self.regions.iter().enumerate() {
            if r.trim().is_empty() || r != r.trim() {
                return Err(invalid(format!("bad region name {r:?}")));
            }
            if r == COORDINATOR {
                return Err(invalid(format!(
                    "{COORDINATOR} is the coordinator's name, not a region"
                )));
            }
            if self.regions[..i].contains(r) {
                return Err(invalid(format!("region {r} is listed twice")));
            }
        }
        if let ClusterClock::Scaled(s) = self.clock {
            if !amisim_chaos::ScaledClock::valid_scale(s) {
                return Err(invalid(format!(
                    "time scale must be a positive number, got {s}"
                )));
            }
        }
        self.links
            .validate()
            .map_err(|e| invalid(format!("links: {e}")))?;
        if matches!(self.mode, ClusterMode::Processes { .. })
            && self.accounts.is_some()
            && self.accounts_file.is_none()
        {
            return Err(invalid(
                "processes mode with accounts needs accounts_file (the children read it)".into(),
            ));
        }
        Ok(())
    }

    /// The seed of region `k`.
    fn region_seed(&self, k: usize) -> u64 {
        self.seed.wrapping_add(k as u64)
    }
}

/// Why a laboratory operation failed: a cluster that could not start, stop or be changed; an
/// experiment file that cannot be read or is invalid. One enum for the crate.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A bad cluster spec.
    #[error("invalid cluster: {0}")]
    Invalid(String),
    /// A bad experiment file or seed range (the message names the file, field and line).
    #[error("{0}")]
    Spec(String),
    /// An experiment run could not go on (its data directory, its output, a client).
    #[error("{0}")]
    Run(String),
    /// A node could not start, stop or be reached.
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    /// A node fault was refused or failed.
    #[error(transparent)]
    Fault(#[from] NodeFaultError),
}

pub(crate) fn io_err(what: String, source: std::io::Error) -> LabError {
    LabError::Io { what, source }
}

pub(crate) fn node_err(node: String, message: String) -> LabError {
    LabError::Node { node, message }
}

pub(crate) fn invalid(message: String) -> LabError {
    LabError::Invalid(message)
}

/// A running cluster (see the module docs). Stop it with [`Cluster::shutdown`]; dropping it
/// kills child processes but leaves in-process tasks to the runtime.
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.inner.snapshot())
            .finish()
    }
}

/// Everything the cluster shares with its fault handle and its restart timers.
pub(crate) struct Inner {
    spec: ClusterSpec,
    regions: Vec<String>,
    links: LinkControl,
    virtual_clock: Option<VirtualClock>,
    /// Regions in order, then the coordinator.
    nodes: Vec<Node>,
    /// The first unexpected end of a node (a server that stopped by itself).
    failure: watch::Sender<Option<String>>,
    /// Set once [`Cluster::shutdown`] began: no more faults, no more restarts.
    closing: AtomicBool,
    me: Weak<Inner>,
}

/// One node's bookkeeping.
pub(crate) struct Node {
    name: String,
    kind: NodeKind,
    addr: SocketAddr,
    seed: u64,
    /// In process: the forwarder owning `addr`.
    gate: Option<gate::Gate>,
    /// In-process regions: the node's clock, made when it first opens its log (to start no
    /// earlier than its last event) and kept across restarts, so skew and monotonic time
    /// survive them. Never set in processes mode.
    clock: std::sync::OnceLock<SkewedClock>,
    status: Mutex<Status>,
    /// What runs now.
    slot: Mutex<Slot>,
    /// Serializes the faults on this node.
    ops: tokio::sync::Mutex<()>,
    /// Bumped at every kill and restart: a `down_for` timer restarts only its own kill.
    generation: AtomicU64,
    /// In-process virtual mode: the simulated time at which a kill's `down_for` restarts the
    /// node (0: none pending). Auto-advance counts it as a timer.
    restart_due_ms: AtomicU64,
    /// Processes mode: the clock skew last set on this region's child, set again on the next
    /// child after a restart (in process, the node's [`SkewedClock`] outlives its restarts).
    child_skew_ms: std::sync::atomic::AtomicI64,
    /// In-process coordinator: on while paused, so its followers and saga driver stand still
    /// too, as in a stopped process (`amisim_coordinator::hold`).
    hold: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Status {
    state: NodeState,
    restarts: u64,
}

/// The running incarnation of a node.
enum Slot {
    Empty,
    Region(in_process::RegionRun),
    Coordinator(in_process::CoordinatorRun),
    Child(processes::ChildRun),
}

impl Node {
    /// The coordinator's hold switch (see [`Node::hold`]).
    pub(crate) fn hold_switch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.hold.subscribe()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, state: NodeState) {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state = state;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> NodeInfo {
        let s = self.status();
        let pid = match &*self.slot() {
            Slot::Child(c) if s.state != NodeState::Down => Some(c.pid()),
            _ => None,
        };
        NodeInfo {
            name: self.name.clone(),
            kind: self.kind,
            state: s.state,
            url: self.url(),
            // In process the node's clock; a child's is the skew the lab last set on it.
            clock_skew_ms: self.clock.get().map_or_else(
                || self.child_skew_ms.load(Ordering::SeqCst),
                SkewedClock::skew_ms,
            ),
            restarts: s.restarts,
            pid,
        }
    }
}

impl Cluster {
    /// Starts every region node, then the coordinator; returns once all serve.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, LabError> {
        spec.validate()?;
        let regions = spec.regions.clone();
        // The coordinator's port first: a busy `listen` is the likeliest failure.
        let coordinator_listener = bind(&spec.listen).await?;
        let in_process = spec.mode == ClusterMode::InProcess;
        let virtual_clock = match (spec.clock, in_process) {
            (ClusterClock::Virtual { start_ms }, true) => Some(VirtualClock::new(start_ms)),
            _ => None,
        };
        let mut nodes = Vec::new();
        for (k, name) in regions.iter().enumerate() {
            let listener = bind("127.0.0.1:0").await?;
            nodes.push(new_node(
                name,
                NodeKind::Region,
                listener,
                spec.region_seed(k),
                in_process,
            )?);
        }
        nodes.push(new_node(
            COORDINATOR,
            NodeKind::Coordinator,
            coordinator_listener,
            spec.seed,
            in_process,
        )?);
        let links = LinkControl::new(spec.links.clone(), spec.seed);
        let inner = Arc::new_cyclic(|me| Inner {
            spec,
            regions,
            links,
            virtual_clock,
            nodes,
            failure: watch::channel(None).0,
            closing: AtomicBool::new(false),
            me: me.clone(),
        });
        let cluster = Cluster { inner };
        for node in &cluster.inner.nodes {
            if let Err(e) = cluster.inner.launch(node).await {
                let _ = Cluster {
                    inner: cluster.inner.clone(),
                }
                .shutdown()
                .await;
                return Err(e);
            }
            node.set_state(NodeState::Running);
        }
        tracing::info!(
            target: "amisim::lab",
            nodes = ?cluster.inner.snapshot().iter().map(|n| format!("{}={}", n.name, n.url)).collect::<Vec<_>>(),
            seed = cluster.inner.spec.seed,
            "cluster running"
        );
        Ok(cluster)
    }

    /// `http://127.0.0.1:PORT` of the coordinator: the gateway (`Ec2`, `Kms`) and the
    /// `Coordinator`, `Chaos` services.
    pub fn gateway_url(&self) -> String {
        self.inner.coordinator().url()
    }

    /// `http://127.0.0.1:PORT` of a region node (the same across restarts).
    pub fn region_url(&self, region: &str) -> Option<String> {
        self.inner.region(region).map(Node::url)
    }

    /// The regions, in order.
    pub fn regions(&self) -> &[String] {
        &self.inner.regions
    }

    /// The node faults of this cluster (also given to its coordinator's `Chaos` service). The
    /// handle does not keep the cluster alive: once it is shut down, every fault is refused.
    pub fn faults(&self) -> Arc<dyn NodeFaults> {
        Arc::new(ClusterFaults {
            inner: Arc::downgrade(&self.inner),
        })
    }

    /// The run's shared virtual clock (in-process virtual mode only).
    pub fn virtual_clock(&self) -> Option<VirtualClock> {
        self.inner.virtual_clock.clone()
    }

    /// A region's data directory (`DATA/<region>`).
    pub fn region_data_dir(&self, region: &str) -> PathBuf {
        self.inner.spec.data.join(region)
    }

    /// Every node's seed, to print: `seed + k` for region `k`, `seed` for the coordinator
    /// (its link draws and saga jitter).
    pub fn seeds(&self) -> Vec<(String, u64)> {
        self.inner
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.seed))
            .collect()
    }

    /// Every node as [`NodeFaults::nodes`] shows it.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.inner.snapshot()
    }

    /// The live link table the coordinator uses (kept across coordinator restarts).
    pub fn links(&self) -> LinkControl {
        self.inner.links.clone()
    }

    /// The running node of an in-process region (`None` while it is down, or in processes
    /// mode). A restart makes a new one.
    pub fn region_node(&self, region: &str) -> Option<Arc<RegionNode>> {
        match &*self.inner.region(region)?.slot() {
            Slot::Region(r) => Some(r.node.clone()),
            _ => None,
        }
    }

    /// Moves the shared virtual clock to the next timer whenever the cluster is idle (issue 6:
    /// "or automatically to the next timer when the system is idle"): when no running region's
    /// head has moved for `quiet_for` of wall time and some running, unpaused region has a
    /// timer due after the clock's now, the clock jumps to the earliest such timer (on the
    /// shared base, so a skewed region's timer is taken at base = due − skew). Nothing else
    /// moves it, and a call in flight resets the quiet time once it writes. In-process virtual
    /// mode only (`None` otherwise); the task ends with the cluster. Wall-time idleness is not
    /// reproducible: the experiment runner moves the clock itself instead.
    pub fn auto_advance(&self, quiet_for: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let clock = self.inner.virtual_clock.clone()?;
        let weak = Arc::downgrade(&self.inner);
        let tick = (quiet_for / 4).max(Duration::from_millis(1));
        Some(tokio::spawn(async move {
            let mut last: Option<Vec<u64>> = None;
            let mut quiet_since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(tick).await;
                let Some(inner) = weak.upgrade() else { break };
                if inner.closing.load(Ordering::SeqCst) {
                    break;
                }
                let (heads, next_due) = inner.idle_view();
                drop(inner);
                if last.as_ref() != Some(&heads) {
                    last = Some(heads);
                    quiet_since = tokio::time::Instant::now();
                    continue;
                }
                if quiet_since.elapsed() < quiet_for {
                    continue;
                }
                if let Some(due) = next_due.filter(|due| *due > amisim_chaos::Clock::now_ms(&clock))
                {
                    tracing::debug!(
                        to_ms = due,
                        "idle: moving the virtual clock to the next timer"
                    );
                    clock.set(due);
                    quiet_since = tokio::time::Instant::now();
                }
            }
        }))
    }

    /// An in-process region's clock (skew and pause act on it).
    pub fn region_clock(&self, region: &str) -> Option<SkewedClock> {
        self.inner.region(region)?.clock.get().cloned()
    }

    /// Completes when a node stops by itself (not through a fault or [`Cluster::shutdown`]),
    /// with what happened, e.g. a region server whose listener failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.failure.subscribe();
        loop {
            if let Some(f) = rx.borrow_and_update().clone() {
                return f;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops everything cleanly: the coordinator first (no new calls, no saga steps), then the
    /// region servers, then their writers (which sign their final digests); children get
    /// SIGTERM (SIGKILL after 10 s). Paused nodes are resumed first.
    pub async fn shutdown(self) -> Result<(), LabError> {
        self.inner.closing.store(true, Ordering::SeqCst);
        let mut first_error = None;
        for node in self.inner.nodes.iter().rev() {
            let _guard = node.ops.lock().await;
            if let Err(e) = self.inner.stop(node, true).await {
                tracing::warn!(target: "amisim::lab", node = %node.name, error = %e, "clean stop failed");
                first_error.get_or_insert(e);
            }
            node.set_state(NodeState::Down);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn new_node(
    name: &str,
    kind: NodeKind,
    listener: tokio::net::TcpListener,
    seed: u64,
    in_process: bool,
) -> Result<Node, LabError> {
    let addr = listener
        .local_addr()
        .map_err(|e| io_err(format!("cannot read the address of {name}'s listener"), e))?;
    let gate = if in_process {
        Some(
            gate::Gate::new(listener)
                .map_err(|e| io_err(format!("cannot serve {name}'s port"), e))?,
        )
    } else {
        // A child binds the port itself.
        drop(listener);
        None
    };
    Ok(Node {
        name: name.to_string(),
        kind,
        addr,
        seed,
        gate,
        clock: std::sync::OnceLock::new(),
        status: Mutex::new(Status {
            state: NodeState::Down,
            restarts: 0,
        }),
        slot: Mutex::new(Slot::Empty),
        ops: tokio::sync::Mutex::new(()),
        generation: AtomicU64::new(0),
        restart_due_ms: AtomicU64::new(0),
        hold: tokio::sync::watch::channel(false).0,
        child_skew_ms: std::sync::atomic::AtomicI64::new(0),
    })
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, LabError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        io_err(
            format!("cannot listen on {addr} (is another program using it?)"),
            e,
        )
    })
}

impl Inner {
    fn snapshot(&self) -> Vec<NodeInfo> {
        self.nodes.iter().map(Node::info).collect()
    }

    fn coordinator(&self) -> &Node {
        // `start` always pushes the coordinator last.
        &self.nodes[self.nodes.len() - 1]
    }

    /// For [`Cluster::auto_advance`]: each region's head seq (`u64::MAX` while it is not
    /// running), and the earliest timer of a running, unpaused region on the shared clock.
    fn idle_view(&self) -> (Vec<u64>, Option<u64>) {
        let mut heads = Vec::with_capacity(self.regions.len());
        let mut next: Option<u64> = None;
        for name in &self.regions {
            let Some(node) = self.region(name) else {
                continue;
            };
            let running = match &*node.slot() {
                Slot::Region(run) => Some(run.node.clone()),
                _ => None,
            };
            let Some(region) = running else {
                heads.push(u64::MAX);
                continue;
            };
            heads.push(region.head_seq());
            let Some(clock) = node.clock.get() else {
                continue;
            };
            if clock.is_frozen() {
                continue;
            }
            if let Some(due) = region.state().next_due_ms() {
                let base_due = (i128::from(due) - i128::from(clock.skew_ms()))
                    .clamp(0, i128::from(u64::MAX)) as u64;
                next = Some(next.map_or(base_due, |n| n.min(base_due)));
            }
        }
        // A killed node's `down_for` restart (on the shared clock) is a timer too.
        for node in &self.nodes {
            let due = node.restart_due_ms.load(Ordering::SeqCst);
            if due != 0 {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        (heads, next)
    }

    fn region(&self, name: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.kind == NodeKind::Region && n.name == name)
    }

    fn node(&self, name: &str) -> Result<&Node, NodeFaultError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| NodeFaultError::UnknownNode {
                node: name.to_string(),
                known: amisim_chaos::nodes::known_names(&self.snapshot()),
            })
    }

    fn check_open(&self) -> Result<(), NodeFaultError> {
        if self.closing.load(Ordering::SeqCst) {
            Err(NodeFaultError::Invalid(
                "the cluster is shutting down".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Starts `node`'s next incarnation (it is not running).
    async fn launch(&self, node: &Node) -> Result<(), LabError> {
        let slot = match &self.spec.mode {
            ClusterMode::InProcess => match node.kind {
                NodeKind::Region => Slot::Region(in_process::start_region(self, node).await?),
                NodeKind::Coordinator => {
                    Slot::Coordinator(in_process::start_coordinator(self, node).await?)
                }
            },
            ClusterMode::Processes { binary } => {
                Slot::Child(processes::spawn(self, node, binary).await?)
            }
        };
        *node.slot() = slot;
        Ok(())
    }

    /// Ends `node`'s incarnation: cleanly (`clean`: graceful server stop, writer shutdown,
    /// SIGTERM) or as a crash. The node's `ops` lock is held by the caller.
    async fn stop(&self, node: &Node, clean: bool) -> Result<(), LabError> {
        let slot = std::mem::replace(&mut *node.slot(), Slot::Empty);
        match slot {
            Slot::Empty => Ok(()),
            Slot::Region(run) => in_process::stop_region(node, run, clean).await,
            Slot::Coordinator(run) => in_process::stop_coordinator(node, run, clean).await,
            Slot::Child(child) => processes::stop(node, child, clean).await,
        }
    }

    /// A node's server ended by itself.
    fn report_failure(&self, what: String) {
        tracing::error!(target: "amisim::lab", failure = %what, "a node stopped unexpectedly");
        self.failure.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(what);
                true
            } else {
                false
            }
        });
    }

    async fn kill(&self, name: &str, down_for: Option<Duration>) -> Result<(), NodeFaultError> {
        self.check_open()?;
        let node = self.node(name)?;
        let _guard = node.ops.lock().await;
        let state = node.status().state;
        if state != NodeState::Down {
            record::record(self, record::Fault::Kill { down_for }, name).await?;
            self.stop(node, false).await.map_err(|e| failed(name, e))?;
            node.set_state(NodeState::Down);
            tracing::warn!(target: "amisim::lab", node = name, ?down_for, "node killed");
        }
        let generation = node.generation.fetch_add(1, Ordering::SeqCst) + 1;
        node.restart_due_ms.store(0, Ordering::SeqCst);
        if let Some(d) = down_for {
            let me = self.me.clone();
            let name = name.to_string();
            // With the virtual clock, a region's `down_for` is simulated time: it comes back
            // when the clock passes it (the same simulated moment in every run of a seed), and
            // auto-advance treats it as a timer. Otherwise wall time; always for the
            // coordinator, through which clients move the clock (while it is down nobody
            // could move the clock to its restart).
            let virtual_clock = self
                .virtual_clock
                .clone()
                .filter(|_| node.kind == NodeKind::Region);
            let due = virtual_clock.map(|clock| {
                let due = amisim_chaos::Clock::now_ms(&clock)
                    .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .max(1);
                node.restart_due_ms.store(due, Ordering::SeqCst);
                (clock, due)
            });
            tokio::spawn(async move {
                match due {
                    Some((clock, due)) => until_sim(&clock, due).await,
                    None => tokio::time::sleep(d).await,
                }
                let Some(inner) = me.upgrade() else { return };
                let Ok(node) = inner.node(&name) else { return };
                if node.generation.load(Ordering::SeqCst) != generation {
                    return; // restarted (or killed again) meanwhile
                }
                if let Err(e) = inner.restart(&name, Some(generation)).await {
                    tracing::error!(target: "amisim::lab", node = %name, error = %e, "restart after down_for failed");
                }
            });
        }
        Ok(())
    }

    async fn pause(&self, name: &str) -> Result<(), NodeFaultError> {
        self.check_open()?;
        let node = self.node(name)?;
        let _guard = node.ops.lock().await;
        match node.status().state {
            NodeState::Paused => return Ok(()),
            NodeState::Down => {
                return Err(NodeFaultError::WrongState {
                    node: name.to_string(),
                    state: NodeState::Down,
                    action: "pause",
                })
            }
            NodeState::Running => {}
        }
        record::record(self, record::Fault::Pause, name).await?;
        match &*node.slot() {
            Slot::Child(c) => c.signal_stop().map_err(|m| failed_msg(name, m))?,
            _ => {
                if let Some(g) = &node.gate {
                    g.pause();
                }
                if let Some(c) = node.clock.get() {
                    c.freeze();
                }
                node.hold.send_replace(true);
            }
        }
        node.set_state(NodeState::Paused);
        tracing::warn!(target: "amisim::lab", node = name, "node paused");
        Ok(())
    }

    async fn resume(&self, name: &str) -> Result<(), NodeFaultError> {
        self.check_open()?;
        let node = self.node(name)?;
        let _guard = node.ops.lock().await;
        match node.status().state {
            NodeState::Running => return Ok(()),
            NodeState::Down => {
                return Err(NodeFaultError::WrongState {
                    node: name.to_string(),
                    state: NodeState::Down,
                    action: "resume (restart it)",
                })
            }
            NodeState::Paused => {}
        }
        thaw(node).map_err(|m| failed_msg(name, m))?;
        node.set_state(NodeState::Running);
        tracing::warn!(target: "amisim::lab", node = name, "node resumed");
        record::record_after(self, record::Fault::Resume, name).await;
        Ok(())
    }

    /// `only_generation`: a `down_for` timer's restart, which must not undo a later fault.
    async fn restart(
        &self,
        name: &str,
        only_generation: Option<u64>,
    ) -> Result<(), NodeFaultError> {
        self.check_open()?;
        let node = self.node(name)?;
        let _guard = node.ops.lock().await;
        if let Some(g) = only_generation {
            if node.generation.load(Ordering::SeqCst) != g {
                return Ok(());
            }
        }
        if node.status().state != NodeState::Down {
            // Running or paused: a crash first (SIGKILL ends a stopped process too).
            self.stop(node, false).await.map_err(|e| failed(name, e))?;
            node.set_state(NodeState::Down);
        }
        if let Some(c) = node.clock.get() {
            c.thaw();
        }
        node.hold.send_replace(false);
        node.generation.fetch_add(1, Ordering::SeqCst);
        node.restart_due_ms.store(0, Ordering::SeqCst);
        self.launch(node).await.map_err(|e| failed(name, e))?;
        let skew_ms = node.child_skew_ms.load(Ordering::SeqCst);
        if skew_ms != 0 && matches!(&*node.slot(), Slot::Child(_)) {
            // A new process starts without skew: the region's skew is the lab's setting.
            processes::set_clock_skew(self, node, skew_ms)
                .await
                .map_err(|m| failed_msg(name, m))?;
        }
        {
            let mut s = node.status.lock().unwrap_or_else(PoisonError::into_inner);
            s.state = NodeState::Running;
            s.restarts += 1;
        }
        tracing::warn!(target: "amisim::lab", node = name, "node restarted");
        record::record_after(self, record::Fault::Restart, name).await;
        Ok(())
    }

    async fn set_clock_skew(&self, region: &str, skew_ms: i64) -> Result<(), NodeFaultError> {
        self.check_open()?;
        let node = self.node(region)?;
        if node.kind != NodeKind::Region {
            return Err(NodeFaultError::Invalid(format!(
                "{region} is not a region: only regions have a clock"
            )));
        }
        let _guard = node.ops.lock().await;
        let child = matches!(&*node.slot(), Slot::Child(_));
        if child {
            // In its own process: through the child's `Region.SetClockSkew`.
            if node.status().state == NodeState::Paused {
                return Err(NodeFaultError::WrongState {
                    node: region.to_string(),
                    state: NodeState::Paused,
                    action: "skew the clock of a stopped process (resume it first)",
                });
            }
            record::record(self, record::Fault::Skew { skew_ms }, region).await?;
            processes::set_clock_skew(self, node, skew_ms)
                .await
                .map_err(|m| failed_msg(region, m))?;
            node.child_skew_ms.store(skew_ms, Ordering::SeqCst);
        } else {
            let Some(clock) = node.clock.get() else {
                return Err(NodeFaultError::WrongState {
                    node: region.to_string(),
                    state: NodeState::Down,
                    action: "skew its clock (restart it first)",
                });
            };
            record::record(self, record::Fault::Skew { skew_ms }, region).await?;
            clock.set_skew_ms(skew_ms);
        }
        tracing::warn!(target: "amisim::lab", region, skew_ms, "clock skew set");
        Ok(())
    }
}

/// Lets a paused node go on.
fn thaw(node: &Node) -> Result<(), String> {
    match &*node.slot() {
        Slot::Child(c) => c.signal_continue(),
        Slot::Region(r) => {
            if let Some(c) = node.clock.get() {
                c.thaw();
            }
            if let Some(g) = &node.gate {
                g.open(r.inner_addr);
            }
            Ok(())
        }
        Slot::Coordinator(c) => {
            node.hold.send_replace(false);
            if let Some(g) = &node.gate {
                g.open(c.inner_addr);
            }
            Ok(())
        }
        Slot::Empty => Err("nothing runs".into()),
    }
}

fn failed(node: &str, e: LabError) -> NodeFaultError {
    match e {
        LabError::Fault(f) => f,
        other => failed_msg(node, other.to_string()),
    }
}

fn failed_msg(node: &str, message: String) -> NodeFaultError {
    NodeFaultError::Failed {
        node: node.to_string(),
        message,
    }
}

/// The [`NodeFaults`] of a cluster: a weak handle, so the coordinator that holds it does not
/// keep the cluster alive.
#[derive(Debug, Clone)]
struct ClusterFaults {
    inner: Weak<Inner>,
}

impl ClusterFaults {
    fn get(&self) -> Result<Arc<Inner>, NodeFaultError> {
        self.inner
            .upgrade()
            .ok_or_else(|| NodeFaultError::Invalid("the cluster has stopped".into()))
    }
}

impl NodeFaults for ClusterFaults {
    fn nodes(&self) -> Vec<NodeInfo> {
        self.inner
            .upgrade()
            .map(|i| i.snapshot())
            .unwrap_or_default()
    }

    fn kill(
        &self,
        node: &str,
        down_for: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), NodeFaultError>> {
        let node = node.to_string();
        Box::pin(async move { self.get()?.kill(&node, down_for).await })
    }

    fn pause(&self, node: &str) -> BoxFuture<'_, Result<(), NodeFaultError>> {
        let node = node.to_string();
        Box::pin(async move { self.get()?.pause(&node).await })
    }

    fn resume(&self, node: &str) -> BoxFuture<'_, Result<(), NodeFaultError>> {
        let node = node.to_string();
        Box::pin(async move { self.get()?.resume(&node).await })
    }

    fn restart(&self, node: &str) -> BoxFuture<'_, Result<(), NodeFaultError>> {
        let node = node.to_string();
        Box::pin(async move { self.get()?.restart(&node, None).await })
    }

    fn set_clock_skew(
        &self,
        region: &str,
        skew_ms: i64,
    ) -> BoxFuture<'_, Result<(), NodeFaultError>> {
        let region = region.to_string();
        Box::pin(async move { self.get()?.set_clock_skew(&region, skew_ms).await })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Children must not outlive the run (their `ChildRun` kills them when dropped).
        for node in &self.nodes {
            drop(std::mem::replace(&mut *node.slot(), Slot::Empty));
        }
    }
}

/// Completes once `clock` reads `due` or later (it only moves when told to).
async fn until_sim(clock: &VirtualClock, due: u64) {
    let mut changes = amisim_chaos::Clock::changes(clock);
    while amisim_chaos::Clock::now_ms(clock) < due {
        match changes.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The clock is gone: it will never get there.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}
