//! One in-process node's incarnation: start (open, serve on an inner loopback listener, open the
//! gate on it) and stop (a crash, or cleanly).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_chaos::{Clock, SkewedClock};
use amisim_coordinator::RegionRoutes;
use amisim_region::RegionNode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::region_node::{open_region, HeldFiles, RegionOptions};
use super::{io_err, node_err, ClusterClock, ClusterFaults, Inner, LabError, Node};

/// How long a stopping server may take before its task is aborted.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long a killed node's files may stay held, and a reopen may be retried.
const REOPEN_LIMIT: Duration = Duration::from_secs(15);

/// A running region node.
pub(crate) struct RegionRun {
    pub(crate) node: Arc<RegionNode>,
    pub(crate) inner_addr: SocketAddr,
    files: HeldFiles,
    server: Server,
}

/// A running coordinator.
pub(crate) struct CoordinatorRun {
    pub(crate) inner_addr: SocketAddr,
    server: Server,
}

/// A server task, its stop switch, and whether its end is expected.
struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    expected: Arc<AtomicBool>,
}

impl Server {
    /// Runs `serve(listener, shutdown)`; an end nobody asked for is reported to the cluster.
    fn spawn<F, E>(inner: &Inner, what: String, serve: impl FnOnce(ShutdownSignal) -> F) -> Server
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (stop, mut rx) = watch::channel(false);
        let signal: ShutdownSignal = Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        let expected = Arc::new(AtomicBool::new(false));
        let served = serve(signal);
        let me = inner.me.clone();
        let flag = expected.clone();
        let task = tokio::spawn(async move {
            let result = served.await;
            if flag.load(Ordering::SeqCst) {
                return;
            }
            let why = match result {
                Ok(()) => format!("{what} stopped unexpectedly"),
                Err(e) => format!("{what} failed: {e}"),
            };
            if let Some(inner) = me.upgrade() {
                inner.report_failure(why);
            }
        });
        Server {
            stop,
            task,
            expected,
        }
    }

    /// Stops it (gracefully: the caller dropped the connections first for a crash), aborting
    /// it if it takes too long.
    async fn stop(mut self) {
        self.expected.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
        if tokio::time::timeout(STOP_LIMIT, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(target: "amisim::lab", "a server did not stop in time; aborting it");
            self.task.abort();
        }
    }
}

type ShutdownSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn bind_inner(name: &str) -> Result<(tokio::net::TcpListener, SocketAddr), LabError> {
    let listener = super::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr().map_err(|e| {
        io_err(
            format!("cannot read the address of {name}'s inner listener"),
            e,
        )
    })?;
    Ok((listener, addr))
}

/// Opens the region's directory (retrying while a killed incarnation still holds it), serves
/// it and opens its gate.
pub(crate) async fn start_region(inner: &Inner, node: &Node) -> Result<RegionRun, LabError> {
    let spec = &inner.spec;
    let opts = RegionOptions {
        name: node.name.clone(),
        dir: spec.data.join(&node.name),
        known_regions: inner.regions.clone(),
        seed: Some(node.seed),
        time_scale: match spec.clock {
            ClusterClock::Scaled(s) => s,
            ClusterClock::Virtual { .. } => amisim_chaos::ScaledClock::DEFAULT_SCALE,
        },
        accounts: spec.accounts.clone(),
        digest_every: spec.digest_every,
        record_reads: spec.record_reads,
        storage: spec.storage.clone(),
    };
    let kind = spec.clock;
    let shared = inner.virtual_clock.clone();
    let existing = node.clock.get().cloned();
    let started = Instant::now();
    let opened = loop {
        let opts = opts.clone();
        let shared = shared.clone();
        let existing = existing.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            let mut made = None;
            let opened = open_region(&opts, |last_sim_ms| {
                let clock = node_clock(kind, shared, existing, last_sim_ms);
                made = Some(clock.clone());
                Arc::new(clock) as Arc<dyn Clock>
            });
            opened.map(|o| (o, made))
        })
        .await
        .map_err(|e| node_err(node.name.clone(), format!("the start task failed: {e}")))?;
        match attempt {
            Ok(o) => break o,
            // A killed incarnation's sled files may be released a moment late.
            Err(e) if started.elapsed() < REOPEN_LIMIT => {
                tracing::debug!(target: "amisim::lab", node = %node.name, error = %e, "reopen failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (opened, made) = opened;
    if let Some(clock) = made {
        // The first incarnation makes the clock; later ones reuse it.
        let _ = node.clock.set(clock);
    }
    let (listener, inner_addr) = bind_inner(&node.name).await?;
    let served = opened.node.clone();
    let server = Server::spawn(inner, format!("region {}", node.name), move |signal| {
        amisim_region::serve(served, listener, signal)
    });
    if let Some(g) = &node.gate {
        g.open(inner_addr);
    }
    Ok(RegionRun {
        node: opened.node,
        inner_addr,
        files: opened.files,
        server,
    })
}

/// The clock of a region's node: the one it had (a restart), else a new one over the shared
/// virtual clock (moved to the last logged event) or a scaled clock starting no earlier than
/// it.
fn node_clock(
    kind: ClusterClock,
    shared: Option<amisim_chaos::VirtualClock>,
    existing: Option<SkewedClock>,
    last_sim_ms: u64,
) -> SkewedClock {
    if let Some(v) = &shared {
        v.set(last_sim_ms);
    }
    if let Some(c) = existing {
        return c;
    }
    let base: Arc<dyn Clock> = match (shared, kind) {
        (Some(v), _) => Arc::new(v),
        (None, ClusterClock::Scaled(scale)) => {
            Arc::new(amisim_chaos::ScaledClock::new(scale, last_sim_ms))
        }
        // In process a virtual run always shares one clock; keep the match total.
        (None, ClusterClock::Virtual { start_ms }) => {
            Arc::new(amisim_chaos::VirtualClock::new(start_ms.max(last_sim_ms)))
        }
    };
    SkewedClock::new(base)
}

/// Ends a region's incarnation. A crash: connections dropped at once, the server stopped, the
/// node dropped without its clean shutdown (no final digest). Clean: the server drains, the
/// writer stops after what it has queued, the final digest is signed.
pub(crate) async fn stop_region(node: &Node, run: RegionRun, clean: bool) -> Result<(), LabError> {
    let RegionRun {
        node: region,
        inner_addr,
        files,
        server,
    } = run;
    if let (Some(c), true) = (node.clock.get(), clean) {
        c.thaw();
    }
    if let Some(g) = &node.gate {
        if clean {
            // Let held calls through, so they finish.
            g.open(inner_addr);
        } else {
            g.down();
        }
    }
    server.stop().await;
    if let Some(g) = &node.gate {
        g.down();
    }
    if clean
        && tokio::time::timeout(STOP_LIMIT * 2, region.shutdown())
            .await
            .is_err()
    {
        tracing::warn!(target: "amisim::lab", node = %node.name, "the writer did not stop in time");
    }
    drop(region);
    if !files.released(REOPEN_LIMIT).await {
        tracing::warn!(target: "amisim::lab", node = %node.name,
            "the stopped node still holds its log; a restart waits for it");
    }
    Ok(())
}

/// Starts the coordinator on the region gates, with the cluster's faults and live links.
pub(crate) async fn start_coordinator(
    inner: &Inner,
    node: &Node,
) -> Result<CoordinatorRun, LabError> {
    let spec = &inner.spec;
    let mut routes = RegionRoutes::new();
    for r in inner
        .nodes
        .iter()
        .filter(|n| n.kind == amisim_chaos::NodeKind::Region)
    {
        routes.insert_url(&r.name, &r.url()).map_err(|e| {
            node_err(
                node.name.clone(),
                format!("cannot route region {}: {e}", r.name),
            )
        })?;
    }
    let mut config = spec.coordinator.clone();
    config.links = spec.links.clone();
    config.accounts = spec.accounts.clone();
    config.sagas.seed = spec.seed;
    config.link_control = Some(inner.links.clone());
    config.faults = Some(Arc::new(ClusterFaults {
        inner: inner.me.clone(),
    }));
    config.hold = Some(node.hold_switch());
    let (listener, inner_addr) = bind_inner(&node.name).await?;
    let server = Server::spawn(inner, "the coordinator".to_string(), move |signal| {
        amisim_coordinator::run_coordinator(routes, config, listener, signal)
    });
    if let Some(g) = &node.gate {
        g.open(inner_addr);
    }
    Ok(CoordinatorRun { inner_addr, server })
}

/// Ends the coordinator's incarnation (nothing to save: a restart replays the logs).
pub(crate) async fn stop_coordinator(
    node: &Node,
    run: CoordinatorRun,
    clean: bool,
) -> Result<(), LabError> {
    if let Some(g) = &node.gate {
        if clean {
            g.open(run.inner_addr);
        } else {
            g.down();
        }
    }
    run.server.stop().await;
    if let Some(g) = &node.gate {
        g.down();
    }
    Ok(())
}
