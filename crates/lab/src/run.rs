//! The experiment runner: `amisim chaos run FILE.toml --seed N`.
//!
//! One run ([`run_experiment`]):
//!
//! 1. start a [`Cluster`] (its own data directory per seed; region `k` seeded `seed + k`);
//! 2. **setup**: per account and region a volume and a completed snapshot (RegisterImage's
//!    raw material), the clock advanced timer by timer until they are ready;
//! 3. **workload**: `duration / step` steps. Each step applies the faults due, sends the step's
//!    operations ([`crate::workload`]) through the gateway and records them ([`History`]),
//!    then moves the clock by `step` (`Chaos.AdvanceClock`). In virtual-clock mode the
//!    operations of a step go one after the other and the runner waits for the cluster to
//!    *settle* after every copy, fault and clock move (projection caught up with every log, no
//!    timer due, every copy transferring, finished or blocked by a fault): nothing then depends
//!    on thread timing, and the logs replay byte for byte from the seed. With a scaled clock the
//!    operations of a step run concurrently and the clock flows by itself;
//! 4. **heal** every fault (links reset, nodes resumed, restarted, unskewed), then wait for
//!    **quiescence**: no copy in flight, nothing `pending`, projections caught up — moving the
//!    virtual clock to each next timer (`Chaos.AdvanceToNextTimer`) until then;
//! 5. **observe** (final reads, ListCopies, digests, Audit.VerifyLog), **check**
//!    ([`crate::checker`]) and **report** ([`crate::report`]).
//!
//! [`run_seeds`] repeats it for many seeds and lists the failing ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use amisim_chaos::{NodeState, COORDINATOR};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::chaos_client::ChaosClient;
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::region_client::RegionClient;
use amisim_proto::*;
use futures::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::checker::{self, CopyObs, DigestObs, ImageObs, Observed, VerifyObs};
use crate::history::History;
use crate::report::{self, Convergence, Report};
use crate::spec::{ClockMode, Experiment, FaultAction, Pair};
use crate::workload::{Call, Clients, Generator, Model, Outcome, Planned};
use crate::{Cluster, ClusterClock, ClusterMode, ClusterSpec, LabError};

/// Wall time a workload call may take before it is recorded `info` (`client-timeout`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Wall time a control call (clock, links, digests) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wall wait for the cluster to settle once (then the run goes on, and says so).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// Polls in a row that must agree before the cluster counts as settled.
const SETTLE_STABLE_POLLS: u32 = 3;

/// What the run reports while it goes (the CLI draws a progress bar from it).
pub trait Progress: Send + Sync {
    /// A new phase of `len` units (`setup`, `workload`, `quiescence`, `checks`).
    fn phase(&self, name: &str, len: u64);
    /// `n` more units done.
    fn inc(&self, n: u64);
    /// A line worth showing (a fault applied, ...).
    fn note(&self, line: &str);
    /// The run is over.
    fn finish(&self);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn note(&self, _: &str) {}
    fn finish(&self) {}
}

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Root for the nodes' data; each seed runs in `DATA/seed-N`, which must not exist yet.
    /// `None`: a temporary directory, removed afterwards.
    pub data: Option<PathBuf>,
    pub mode: ClusterMode,
    pub progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("data", &self.data)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            data: None,
            mode: ClusterMode::InProcess,
            progress: Arc::new(NoProgress),
        }
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub seed: u64,
    pub report: Report,
    pub history: History,
    pub observed: Observed,
}

impl RunOutcome {
    pub fn pass(&self) -> bool {
        self.report.pass
    }

    /// Writes `report.txt`, `report.json`, `report.html` and `history.json` into `dir`
    /// (created if missing).
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, LabError> {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
            what: format!("cannot create the report directory {}", dir.display()),
            source,
        })?;
        let json = |what: &str, r: serde_json::Result<String>| {
            r.map_err(|e| LabError::Run(format!("cannot encode the {what} as JSON: {e}")))
        };
        let files = [
            ("report.txt", report::text::render(&self.report)),
            ("report.json", json("report", self.report.to_json())?),
            ("report.html", report::html::render(&self.report)),
            ("history.json", json("history", self.history.to_json())?),
        ];
        let mut written = Vec::new();
        for (name, body) in files {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|source| LabError::Io {
                what: format!("cannot write {}", path.display()),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// One line per seed of a multi-seed run.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedResult {
    pub seed: u64,
    pub pass: bool,
    /// The failing verdicts' summaries, or the error that stopped the run.
    pub failures: Vec<String>,
}

/// Runs `exp` once per seed; a run that cannot even start counts as failing (with its error).
pub async fn run_seeds(
    exp: &Experiment,
    seeds: &[u64],
    opts: &RunOptions,
    mut each: impl FnMut(&SeedResult, Option<&RunOutcome>),
) -> Vec<SeedResult> {
    let mut out = Vec::new();
    for &seed in seeds {
        let (r, outcome) = match run_experiment(exp, seed, opts).await {
            Ok(o) => (
                SeedResult {
                    seed,
                    pass: o.pass(),
                    failures: o
                        .report
                        .verdicts
                        .iter()
                        .filter(|v| !v.pass)
                        .map(|v| format!("{}: {}", v.name, v.summary))
                        .collect(),
                },
                Some(o),
            ),
            Err(e) => (
                SeedResult {
                    seed,
                    pass: false,
                    failures: vec![format!("run failed: {e}")],
                },
                None,
            ),
        };
        each(&r, outcome.as_ref());
        out.push(r);
    }
    out
}

/// Runs `exp` with `seed` (see the module docs).
pub async fn run_experiment(
    exp: &Experiment,
    seed: u64,
    opts: &RunOptions,
) -> Result<RunOutcome, LabError> {
    let wall_start = Instant::now();
    let (data, _temp) = match &opts.data {
        Some(root) => {
            let dir = root.join(format!("seed-{seed}"));
            if dir.exists() {
                return Err(LabError::Run(format!(
                    "the data directory {} exists already: a run needs fresh logs (remove it or pick another --data)",
                    dir.display()
                )));
            }
            (dir, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("amisim-chaos-")
                .tempdir()
                .map_err(|source| LabError::Io {
                    what: "cannot create a temporary data directory".into(),
                    source,
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut spec = ClusterSpec::new(exp.regions.clone(), &data);
    spec.clock = match exp.clock {
        ClockMode::Virtual { start_ms } => ClusterClock::Virtual { start_ms },
        ClockMode::Scaled { scale } => ClusterClock::Scaled(scale),
    };
    spec.seed = seed;
    spec.links = exp.links.clone();
    spec.mode = opts.mode.clone();
    let cluster = Cluster::start(spec).await?;
    tracing::info!(target: "amisim::lab", seed, data = %data.display(), "experiment cluster up");
    let result = async {
        let mut runner =
            Runner::new(exp, seed, &cluster, opts.progress.clone(), wall_start).await?;
        runner.run().await
    }
    .await;
    if let Err(e) = cluster.shutdown().await {
        tracing::warn!(target: "amisim::lab", error = %e, "cluster shutdown");
    }
    opts.progress.finish();
    result
}

/// The state of one run.
struct Runner<'a> {
    exp: &'a Experiment,
    seed: u64,
    cluster: &'a Cluster,
    progress: Arc<dyn Progress>,
    wall_start: Instant,
    clients: Clients,
    chaos: ChaosClient<Channel>,
    coordinator: CoordinatorClient<Channel>,
    ec2: Ec2Client<Channel>,
    regions: BTreeMap<String, Channel>,
    history: Arc<Mutex<History>>,
    model: Model,
    generator: Generator,
    /// Calls sent so far (request ids).
    calls: u64,
    /// The simulated now, as last read.
    sim_ms: u64,
    virtual_clock: bool,
    /// Settles that ran into [`SETTLE_LIMIT`].
    unsettled: u64,
    /// When the current step began (scaled mode estimates simulated time from it).
    step_wall: Instant,
}

fn lazy(url: &str) -> Result<Channel, LabError> {
    Endpoint::from_shared(url.to_string())
        .map(|e| e.connect_timeout(Duration::from_secs(2)).connect_lazy())
        .map_err(|e| LabError::Run(format!("bad url {url}: {e}")))
}

fn rpc(what: &str, s: tonic::Status) -> LabError {
    LabError::Node {
        node: COORDINATOR.into(),
        message: format!("{what}: {} {}", s.code(), s.message()),
    }
}

/// An image as the checker observes it, keyed by its id.
fn image_obs(i: Image) -> (String, ImageObs) {
    let obs = ImageObs {
        state: i.state,
        owner: i.owner_id,
        source_image_id: i.source_image_id,
        source_region: i.source_image_region,
    };
    (i.image_id, obs)
}

/// The id (`field` of the answer) a setup call created in `region`, or its failure.
fn created(o: Outcome, field: &str, region: &str, call: &str) -> Result<String, LabError> {
    let id = o.value.get(field).and_then(|v| v.as_str());
    id.map(str::to_string).ok_or_else(|| LabError::Node {
        node: region.to_string(),
        message: format!("setup: {call} failed: {}", o.error.unwrap_or_default()),
    })
}

fn control<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(CONTROL_TIMEOUT);
    r
}

fn as_account<T>(msg: T, region: &str, account: &str) -> Request<T> {
    let mut r = control(msg);
    if let Ok(v) = AsciiMetadataValue::try_from(region) {
        r.metadata_mut().insert("x-amisim-region", v);
    }
    if let Ok(v) = AsciiMetadataValue::try_from(account) {
        r.metadata_mut().insert("x-amisim-account", v);
    }
    r
}

impl<'a> Runner<'a> {
    async fn new(
        exp: &'a Experiment,
        seed: u64,
        cluster: &'a Cluster,
        progress: Arc<dyn Progress>,
        wall_start: Instant,
    ) -> Result<Runner<'a>, LabError> {
        let gateway = lazy(&cluster.gateway_url())?;
        let mut regions = BTreeMap::new();
        for r in &exp.regions {
            let url = cluster.region_url(r).ok_or_else(|| LabError::Node {
                node: r.clone(),
                message: "the cluster has no such region".into(),
            })?;
            regions.insert(r.clone(), lazy(&url)?);
        }
        let mut runner = Runner {
            exp,
            seed,
            cluster,
            progress,
            wall_start,
            clients: Clients::new(gateway.clone(), seed, CALL_TIMEOUT, exp.accounts.clone()),
            chaos: ChaosClient::new(gateway.clone()),
            coordinator: CoordinatorClient::new(gateway.clone())
                .max_decoding_message_size(64 * 1024 * 1024),
            ec2: Ec2Client::new(gateway).max_decoding_message_size(64 * 1024 * 1024),
            regions,
            history: Arc::new(Mutex::new(History::new())),
            model: Model::new(exp),
            generator: Generator::new(exp, seed),
            calls: 0,
            sim_ms: 0,
            virtual_clock: matches!(exp.clock, ClockMode::Virtual { .. }),
            unsettled: 0,
            step_wall: Instant::now(),
        };
        runner.read_clock().await?;
        Ok(runner)
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wall_ns(&self) -> u64 {
        u64::try_from(self.wall_start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads the simulated now (the latest region's).
    async fn read_clock(&mut self) -> Result<u64, LabError> {
        let r = self
            .chaos
            .get_clock(control(GetClockRequest {}))
            .await
            .map_err(|s| rpc("Chaos.GetClock", s))?
            .into_inner();
        self.take_clock(&r);
        Ok(self.sim_ms)
    }

    fn take_clock(&mut self, r: &ClockResponse) {
        if let Some(now) = r.regions.iter().map(|c| c.now_ms).max() {
            self.sim_ms = self.sim_ms.max(now);
        }
    }

    /// The simulated now for a history entry: exact in virtual mode, estimated in scaled mode.
    fn now_for_history(&self) -> u64 {
        match self.exp.clock {
            ClockMode::Virtual { .. } => self.sim_ms,
            ClockMode::Scaled { scale } => {
                // `sim_ms` is refreshed every step; add what flowed since (approximate).
                self.sim_ms.saturating_add(
                    (self.step_wall.elapsed().as_secs_f64() * scale * 1000.0) as u64,
                )
            }
        }
    }

    async fn advance(&mut self, ms: u64) -> Result<(), LabError> {
        let r = self
            .chaos
            .advance_clock(control(AdvanceClockRequest { ms }))
            .await
            .map_err(|s| rpc("Chaos.AdvanceClock", s))?
            .into_inner();
        self.take_clock(&r);
        Ok(())
    }

    async fn advance_to_next_timer(&mut self) -> Result<bool, LabError> {
        let before = self.sim_ms;
        let r = self
            .chaos
            .advance_to_next_timer(control(AdvanceToNextTimerRequest {}))
            .await
            .map_err(|s| rpc("Chaos.AdvanceToNextTimer", s))?
            .into_inner();
        self.take_clock(&r);
        Ok(self.sim_ms > before)
    }

    /// Regions whose node runs (not down, not paused), and whether the coordinator runs.
    fn running(&self) -> (Vec<String>, bool) {
        let nodes = self.cluster.faults().nodes();
        let up = |name: &str| {
            nodes
                .iter()
                .find(|n| n.name == name)
                .is_none_or(|n| n.state == NodeState::Running)
        };
        (
            self.exp.regions.iter().filter(|r| up(r)).cloned().collect(),
            up(COORDINATOR),
        )
    }

    /// One look at the cluster: a fingerprint of everything that may still move, and whether
    /// anything is visibly still moving.
    async fn look(&self) -> Option<(String, bool)> {
        let (regions, coordinator_up) = self.running();
        if !coordinator_up {
            return None;
        }
        let mut fp = String::new();
        let mut busy = false;
        let mut heads = BTreeMap::new();
        for r in &regions {
            let ch = self.regions.get(r)?.clone();
            let info = RegionClient::new(ch)
                .get_region_info(control(GetRegionInfoRequest {}))
                .await
                .ok()?
                .into_inner();
            if info.next_due_ms != 0 && info.next_due_ms <= info.sim_time_ms {
                busy = true;
            }
            heads.insert(r.clone(), info.head_seq);
            fp.push_str(&format!("{r}:{}:{};", info.head_seq, info.sim_time_ms));
        }
        let mut coordinator = self.coordinator.clone();
        let status = coordinator
            .get_projection_status(control(GetProjectionStatusRequest {}))
            .await
            .ok()?
            .into_inner();
        for s in &status.regions {
            if let Some(&head) = heads.get(&s.region) {
                if s.applied_seq != head {
                    busy = true;
                }
            }
            fp.push_str(&format!("{}@{};", s.region, s.applied_seq));
        }
        let copies = coordinator
            .list_copies(control(ListCopiesRequest {
                phases: vec!["in-flight".into()],
                finished_within_ms: Some(0),
                ..Default::default()
            }))
            .await
            .ok()?
            .into_inner();
        for c in &copies.copies {
            let step = c.saga.as_ref().map(|s| s.step.as_str()).unwrap_or("");
            let blocked = step == "backing-off"
                || !regions.contains(&c.source_region)
                || !regions.contains(&c.destination_region);
            if c.phase != "transferring" && !blocked {
                busy = true;
            }
            fp.push_str(&format!("{}={}/{step};", c.copy_id, c.phase));
        }
        if let Some(d) = &copies.saga_driver {
            if d.queued > 0 {
                busy = true;
            }
        }
        Some((fp, busy))
    }

    /// Waits until nothing moves without the clock (see the module docs); scaled mode only
    /// lets a moment pass.
    async fn settle(&mut self) {
        if !self.virtual_clock {
            return;
        }
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut last = String::new();
        let mut same = 0;
        while Instant::now() < deadline {
            match self.look().await {
                Some((fp, false)) if fp == last => {
                    same += 1;
                    if same >= SETTLE_STABLE_POLLS {
                        return;
                    }
                }
                Some((fp, _)) => {
                    last = fp;
                    same = 0;
                }
                None => {
                    // The coordinator or a node does not answer (a fault): give it a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    same = 0;
                    last.clear();
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        self.unsettled += 1;
        tracing::debug!(target: "amisim::lab", "the cluster did not settle in time; going on");
    }

    /// Sends one call, recording it.
    async fn call(&mut self, p: &Planned) -> Outcome {
        self.calls += 1;
        let n = self.calls;
        let account = self
            .exp
            .accounts
            .get(p.account)
            .cloned()
            .unwrap_or_default();
        let t = self.wall_ns();
        let sim = self.now_for_history();
        let pending = self.history().invoke(
            p.request.f(),
            p.process,
            t,
            sim,
            &p.region,
            &account,
            p.request.source_region(),
            p.request.value(),
        );
        let outcome = self.clients.call(p, n).await;
        let t = self.wall_ns();
        let sim = self.now_for_history();
        self.history().complete(
            pending,
            outcome.kind,
            t,
            sim,
            outcome.value.clone(),
            outcome.error.clone(),
        );
        self.model.learn(p, &outcome, sim);
        outcome
    }

    async fn run(&mut self) -> Result<RunOutcome, LabError> {
        self.setup().await?;
        let workload_start = self.sim_ms;
        self.workload(workload_start).await?;
        let convergence = self.heal_and_quiesce().await?;
        self.progress.phase("checks", 1);
        let mut observed = self.observe().await?;
        observed.quiesced = convergence.reached;
        observed.quiescence_note = convergence.note.clone();
        self.progress.inc(1);
        let history = self.history().clone();
        let verdicts = checker::check(&history, &observed);
        let report = Report::build(report::Inputs {
            experiment: self.exp,
            seed: self.seed,
            history: &history,
            workload_start_ms: workload_start,
            copies: &observed.copies,
            verdicts,
            convergence,
            digests: observed.digests.clone(),
            wall_ms: u64::try_from(self.wall_start.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        Ok(RunOutcome {
            seed: self.seed,
            report,
            history,
            observed,
        })
    }

    /// A volume and a completed snapshot per account and region.
    async fn setup(&mut self) -> Result<(), LabError> {
        let n = (self.exp.accounts.len() * self.exp.regions.len()) as u64;
        self.progress.phase("setup", 2 * n);
        let mut snapshots = Vec::new();
        for a in 0..self.exp.accounts.len() {
            for (ri, r) in self.exp.regions.clone().iter().enumerate() {
                let process = self.model.process(a, ri);
                let p = Planned {
                    process,
                    account: a,
                    region: r.clone(),
                    request: Call::CreateVolume {
                        size_gib: self.exp.volume_size_gib,
                    },
                };
                let volume = created(self.call(&p).await, "volume_id", r, "CreateVolume")?;
                self.progress.inc(1);
                self.wait_until_ready(r, a, Some(&volume), None).await?;
                let p = Planned {
                    request: Call::CreateSnapshot { volume_id: volume },
                    ..p
                };
                let snap = created(self.call(&p).await, "snapshot_id", r, "CreateSnapshot")?;
                // The setup snapshot is RegisterImage's, not DeleteSnapshot's.
                if let Some(slot) = self.model.slots.get_mut(process as usize) {
                    slot.extra_snapshots.retain(|s| s != &snap);
                }
                snapshots.push((process, r.clone(), a, snap));
                self.progress.inc(1);
            }
        }
        for (process, r, a, snap) in snapshots {
            self.wait_until_ready(&r, a, None, Some(&snap)).await?;
            self.model.add_base_snapshot(process, snap);
        }
        self.settle().await;
        Ok(())
    }

    /// Moves time (virtual: timer by timer) until the volume is available / the snapshot
    /// completed.
    async fn wait_until_ready(
        &mut self,
        region: &str,
        account: usize,
        volume: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<(), LabError> {
        let acct = self.exp.accounts.get(account).cloned().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = if let Some(v) = volume {
                self.ec2
                    .clone()
                    .describe_volumes(as_account(
                        DescribeVolumesRequest {
                            volume_ids: vec![v.to_string()],
                            ..Default::default()
                        },
                        region,
                        &acct,
                    ))
                    .await
                    .map(|r| {
                        r.into_inner()
                            .volumes
                            .iter()
                            .all(|x| x.state == "available")
                    })
                    .map_err(|s| rpc("setup: DescribeVolumes", s))?
            } else if let Some(s) = snapshot {
                let r = self
                    .ec2
                    .clone()
                    .describe_snapshots(as_account(
                        DescribeSnapshotsRequest {
                            snapshot_ids: vec![s.to_string()],
                            ..Default::default()
                        },
                        region,
                        &acct,
                    ))
                    .await
                    .map_err(|s| rpc("setup: DescribeSnapshots", s))?
                    .into_inner();
                if r.snapshots.iter().any(|x| x.state == "error") {
                    return Err(LabError::Node {
                        node: region.to_string(),
                        message: format!("setup: snapshot {s} failed"),
                    });
                }
                r.snapshots.iter().all(|x| x.state == "completed")
            } else {
                true
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Node {
                    node: region.to_string(),
                    message: "setup: a volume or snapshot did not become ready in 60 wall s".into(),
                });
            }
            if self.virtual_clock {
                self.settle().await;
                if !self.advance_to_next_timer().await? {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                self.settle().await;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.read_clock().await?;
            }
        }
    }

    async fn workload(&mut self, start: u64) -> Result<(), LabError> {
        let steps = self.exp.duration_ms.div_ceil(self.exp.step_ms);
        self.progress.phase("workload", steps);
        let mut next_fault = 0;
        for k in 0..steps {
            self.step_wall = Instant::now();
            let rel = k * self.exp.step_ms;
            while let Some(f) = self.exp.faults.get(next_fault) {
                if f.at_ms > rel {
                    break;
                }
                next_fault += 1;
                let f = f.clone();
                self.progress
                    .note(&format!("{} ms: {}", f.at_ms, f.action.describe()));
                self.apply_fault(&f.action, f.at_ms).await?;
                self.settle().await;
            }
            let planned = self
                .generator
                .plan_step(&self.model, self.exp.step_ms, self.sim_ms);
            if self.virtual_clock {
                for p in &planned {
                    self.call(p).await;
                    if matches!(p.request, Call::Copy { .. }) {
                        self.settle().await;
                    }
                }
                self.settle().await;
                self.advance(self.exp.step_ms).await?;
                self.settle().await;
            } else {
                self.concurrent(planned).await;
                let target = start + (k + 1) * self.exp.step_ms;
                while self.read_clock().await? < target {
                    let left = target.saturating_sub(self.sim_ms);
                    let scale = match self.exp.clock {
                        ClockMode::Scaled { scale } => scale,
                        ClockMode::Virtual { .. } => 1.0,
                    };
                    let wait = Duration::from_secs_f64((left as f64 / scale / 1000.0).max(0.001));
                    tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                }
            }
            self.progress.inc(1);
        }
        // Faults at the very end of the workload.
        while let Some(f) = self.exp.faults.get(next_fault) {
            next_fault += 1;
            let f = f.clone();
            self.apply_fault(&f.action, f.at_ms).await?;
            self.settle().await;
        }
        Ok(())
    }

    /// Scaled mode: the step's calls at once, each process's own calls in order.
    async fn concurrent(&mut self, planned: Vec<Planned>) {
        let mut by_process: BTreeMap<u32, Vec<Planned>> = BTreeMap::new();
        for p in planned {
            by_process.entry(p.process).or_default().push(p);
        }
        let mut tasks = Vec::new();
        for (_, ps) in by_process {
            let mut ids = Vec::new();
            for _ in &ps {
                self.calls += 1;
                ids.push(self.calls);
            }
            let clients = self.clients.clone();
            let history = self.history.clone();
            let accounts = self.exp.accounts.clone();
            let wall_start = self.wall_start;
            let sim = self.sim_ms;
            let scale = match self.exp.clock {
                ClockMode::Scaled { scale } => scale,
                ClockMode::Virtual { .. } => 0.0,
            };
            let step_wall = self.step_wall;
            tasks.push(async move {
                let now = || {
                    (
                        u64::try_from(wall_start.elapsed().as_nanos()).unwrap_or(u64::MAX),
                        sim.saturating_add(
                            (step_wall.elapsed().as_secs_f64() * scale * 1000.0) as u64,
                        ),
                    )
                };
                let mut done = Vec::new();
                for (p, n) in ps.into_iter().zip(ids) {
                    let account = accounts.get(p.account).cloned().unwrap_or_default();
                    let (t, s) = now();
                    let pending = history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .invoke(
                            p.request.f(),
                            p.process,
                            t,
                            s,
                            &p.region,
                            &account,
                            p.request.source_region(),
                            p.request.value(),
                        );
                    let o = clients.call(&p, n).await;
                    let (t, s) = now();
                    history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .complete(pending, o.kind, t, s, o.value.clone(), o.error.clone());
                    done.push((p, o, s));
                }
                done
            });
        }
        for results in futures::future::join_all(tasks).await {
            for (p, o, s) in results {
                self.model.learn(&p, &o, s);
            }
        }
    }

    /// The link of one directed pair now (its own, or the default; coordinator links default
    /// to no fault).
    async fn current_link(
        &self,
        from: &str,
        to: &str,
    ) -> Result<amisim_chaos::LinkModel, LabError> {
        let r = self
            .chaos
            .clone()
            .list_links(control(ListLinksRequest {}))
            .await
            .map_err(|s| rpc("Chaos.ListLinks", s))?
            .into_inner();
        if let Some(l) = r.links.iter().find(|l| l.from == from && l.to == to) {
            return amisim_coordinator::chaos::from_pb(l)
                .map(|s| s.model)
                .map_err(|s| rpc("Chaos.ListLinks", s));
        }
        if from == COORDINATOR || to == COORDINATOR {
            return Ok(amisim_chaos::LinkModel::CLEAN);
        }
        match &r.default {
            Some(d) => {
                // The default has no ends; name any so the model parses.
                let mut d = d.clone();
                d.from = from.to_string();
                d.to = to.to_string();
                amisim_coordinator::chaos::from_pb(&d)
            }
            .map(|s| s.model)
            .map_err(|s| rpc("Chaos.ListLinks", s)),
            None => Ok(amisim_chaos::LinkModel::CROSS_REGION),
        }
    }

    async fn set_link(
        &self,
        from: &str,
        to: &str,
        model: amisim_chaos::LinkModel,
    ) -> Result<(), LabError> {
        self.chaos
            .clone()
            .set_link(control(SetLinkRequest {
                link: Some(amisim_coordinator::chaos::to_pb(from, to, &model)),
            }))
            .await
            .map_err(|s| rpc("Chaos.SetLink", s))?;
        Ok(())
    }

    async fn apply_fault(&mut self, action: &FaultAction, at_ms: u64) -> Result<(), LabError> {
        let fault_err = |message: String| LabError::Node {
            node: COORDINATOR.into(),
            message: format!("fault at {at_ms} ms ({}): {message}", action.describe()),
        };
        tracing::info!(target: "amisim::lab", at_ms, fault = %action.describe(), "fault");
        let faults = self.cluster.faults();
        let node_result = |r: Result<(), amisim_chaos::NodeFaultError>| match r {
            Ok(()) => Ok(()),
            // A fault that does not apply in the node's state (resume a running node) is
            // harmless: note it and go on.
            Err(amisim_chaos::NodeFaultError::WrongState {
                node,
                state,
                action,
            }) => {
                tracing::warn!(target: "amisim::lab", node, %state, action, "fault skipped");
                Ok(())
            }
            Err(e) => Err(fault_err(e.to_string())),
        };
        match action {
            FaultAction::Partition { pair } => {
                for (from, to) in pair.directions() {
                    let mut m = self.current_link(&from, &to).await?;
                    m.partitioned = true;
                    self.set_link(&from, &to, m).await?;
                }
            }
            FaultAction::Link { pair, patch } => {
                for (from, to) in pair.directions() {
                    let m = patch.apply(self.current_link(&from, &to).await?);
                    self.set_link(&from, &to, m).await?;
                }
            }
            FaultAction::Heal { pair: Some(pair) } => self.heal_pair(pair).await?,
            FaultAction::Heal { pair: None } => self.heal_all().await?,
            FaultAction::Kill { node, down_for_ms } => node_result(
                faults
                    .kill(node, down_for_ms.map(Duration::from_millis))
                    .await,
            )?,
            FaultAction::Restart { node } => node_result(faults.restart(node).await)?,
            FaultAction::Pause { node } => node_result(faults.pause(node).await)?,
            FaultAction::Resume { node } => node_result(faults.resume(node).await)?,
            FaultAction::Skew { node, skew_ms } => {
                node_result(faults.set_clock_skew(node, *skew_ms).await)?
            }
        }
        Ok(())
    }

    /// A pair back to the link the experiment started with.
    async fn heal_pair(&self, pair: &Pair) -> Result<(), LabError> {
        for (from, to) in pair.directions() {
            match self.exp.links.get_listed(&from, &to) {
                Some(m) => self.set_link(&from, &to, m).await?,
                None => {
                    self.chaos
                        .clone()
                        .clear_link(control(ClearLinkRequest {
                            from: from.clone(),
                            to: to.clone(),
                        }))
                        .await
                        .map_err(|s| rpc("Chaos.ClearLink", s))?;
                }
            }
        }
        Ok(())
    }

    /// Every link back to the start, every node running and unskewed.
    async fn heal_all(&self) -> Result<(), LabError> {
        let faults = self.cluster.faults();
        for n in faults.nodes() {
            let r = match n.state {
                NodeState::Paused => faults.resume(&n.name).await,
                NodeState::Down => faults.restart(&n.name).await,
                NodeState::Running => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(target: "amisim::lab", node = %n.name, error = %e, "heal: node not back");
            }
            if n.clock_skew_ms != 0 {
                if let Err(e) = faults.set_clock_skew(&n.name, 0).await {
                    tracing::warn!(target: "amisim::lab", node = %n.name, error = %e, "heal: skew not cleared");
                }
            }
        }
        // The coordinator may just have come back: retry the reset for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .chaos
                .clone()
                .reset_links(control(ResetLinksRequest {}))
                .await
            {
                Ok(_) => return Ok(()),
                Err(s) if Instant::now() < deadline => {
                    tracing::debug!(target: "amisim::lab", error = %s, "ResetLinks, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => return Err(rpc("Chaos.ResetLinks", s)),
            }
        }
    }

    /// Heals everything, then waits for quiescence.
    async fn heal_and_quiesce(&mut self) -> Result<Convergence, LabError> {
        self.heal_all().await?;
        self.settle().await;
        let heal_sim = self.read_clock().await?;
        let heal_wall = Instant::now();
        let limit_sim = heal_sim.saturating_add(self.exp.quiescence_timeout_ms);
        let limit_wall = heal_wall + Duration::from_millis(self.exp.wall_timeout_ms);
        self.progress.phase("quiescence", 0);
        loop {
            self.settle().await;
            let pending = self.pending_work().await;
            let now = self.read_clock().await.unwrap_or(self.sim_ms);
            match pending {
                Ok(None) => {
                    return Ok(Convergence {
                        reached: true,
                        sim_ms: now.saturating_sub(heal_sim),
                        wall_ms: u64::try_from(heal_wall.elapsed().as_millis()).unwrap_or(0),
                        note: if self.unsettled > 0 {
                            format!(
                                "no copy in flight, nothing pending, projections caught up ({} settles ran long)",
                                self.unsettled
                            )
                        } else {
                            "no copy in flight, nothing pending, projections caught up".into()
                        },
                    })
                }
                Ok(Some(what)) | Err(what) => {
                    if now >= limit_sim || Instant::now() >= limit_wall {
                        return Ok(Convergence {
                            reached: false,
                            sim_ms: now.saturating_sub(heal_sim),
                            wall_ms: u64::try_from(heal_wall.elapsed().as_millis()).unwrap_or(0),
                            note: format!("still {what} when the timeout ran out"),
                        });
                    }
                    self.progress.inc(1);
                    if self.virtual_clock {
                        if !self.advance_to_next_timer().await.unwrap_or(false) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    /// What is still under way (`None`: nothing).
    async fn pending_work(&self) -> Result<Option<String>, String> {
        let (regions, coordinator_up) = self.running();
        if !coordinator_up || regions.len() < self.exp.regions.len() {
            return Err("a node is not running".into());
        }
        let copies = self
            .coordinator
            .clone()
            .list_copies(control(ListCopiesRequest {
                phases: vec!["in-flight".into()],
                finished_within_ms: Some(0),
                ..Default::default()
            }))
            .await
            .map_err(|s| format!("ListCopies: {}", s.message()))?
            .into_inner();
        if let Some(c) = copies.copies.first() {
            return Ok(Some(format!(
                "{} copies in flight (first: {} {} in {})",
                copies.copies.len(),
                c.copy_id,
                c.phase,
                c.destination_region
            )));
        }
        let (images, snapshots) = self.read_regions().await?;
        for (r, m) in &images {
            if let Some((id, _)) = m.iter().find(|(_, i)| i.state == "pending") {
                return Ok(Some(format!("image {id} pending in {r}")));
            }
        }
        for (r, m) in &snapshots {
            if let Some((id, _)) = m.iter().find(|(_, s)| s.as_str() == "pending") {
                return Ok(Some(format!("snapshot {id} pending in {r}")));
            }
        }
        if let Some((fp, true)) = self.look().await {
            return Ok(Some(format!("projections catching up ({fp})")));
        }
        Ok(None)
    }

    /// Every account's own images and snapshots in every region.
    #[allow(clippy::type_complexity)]
    async fn read_regions(
        &self,
    ) -> Result<
        (
            BTreeMap<String, BTreeMap<String, ImageObs>>,
            BTreeMap<String, BTreeMap<String, String>>,
        ),
        String,
    > {
        let mut images: BTreeMap<String, BTreeMap<String, ImageObs>> = BTreeMap::new();
        let mut snapshots: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in &self.exp.regions {
            let im = images.entry(r.clone()).or_default();
            let sn = snapshots.entry(r.clone()).or_default();
            for a in &self.exp.accounts {
                let mut next = String::new();
                loop {
                    let resp = self
                        .ec2
                        .clone()
                        .describe_images(as_account(
                            DescribeImagesRequest {
                                owners: vec!["self".into()],
                                include_deprecated: true,
                                include_disabled: true,
                                max_results: Some(1000),
                                next_token: next.clone(),
                                ..Default::default()
                            },
                            r,
                            a,
                        ))
                        .await
                        .map_err(|s| format!("DescribeImages in {r}: {}", s.message()))?
                        .into_inner();
                    im.extend(resp.images.into_iter().map(image_obs));
                    if resp.next_token.is_empty() {
                        break;
                    }
                    next = resp.next_token;
                }
                let mut next = String::new();
                loop {
                    let resp = self
                        .ec2
                        .clone()
                        .describe_snapshots(as_account(
                            DescribeSnapshotsRequest {
                                owner_ids: vec!["self".into()],
                                max_results: Some(1000),
                                next_token: next.clone(),
                                ..Default::default()
                            },
                            r,
                            a,
                        ))
                        .await
                        .map_err(|s| format!("DescribeSnapshots in {r}: {}", s.message()))?
                        .into_inner();
                    for s in resp.snapshots {
                        sn.insert(s.snapshot_id, s.state);
                    }
                    if resp.next_token.is_empty() {
                        break;
                    }
                    next = resp.next_token;
                }
            }
        }
        Ok((images, snapshots))
    }

    /// The final observations for the checker.
    async fn observe(&mut self) -> Result<Observed, LabError> {
        let (images, snapshots) = self.read_regions().await.map_err(|m| LabError::Node {
            node: COORDINATOR.into(),
            message: format!("final read: {m}"),
        })?;
        let mut o = Observed {
            images,
            snapshots,
            ..Default::default()
        };
        // Digests: each region's own (with a replay), then the coordinator's at those heads.
        let mut heads = Vec::new();
        let mut region_digests = BTreeMap::new();
        for (r, ch) in &self.regions {
            match RegionClient::new(ch.clone())
                .get_state_digest(control(GetStateDigestRequest { replay: true }))
                .await
            {
                Ok(d) => {
                    let d = d.into_inner();
                    heads.push(format!("{r}:{}", d.seq));
                    region_digests.insert(r.clone(), d);
                }
                Err(s) => {
                    tracing::warn!(target: "amisim::lab", region = %r, error = %s, "no digest")
                }
            }
        }
        let token = heads.join(",");
        let coord = self
            .coordinator
            .clone()
            .get_state_digest(control(GetGlobalStateDigestRequest {
                regions: vec![],
                consistency_token: token.clone(),
            }))
            .await
            .map_err(|s| rpc("Coordinator.GetStateDigest", s))?
            .into_inner();
        for (r, d) in &region_digests {
            let c = coord.regions.iter().find(|c| &c.region == r);
            let log_digest = match self.regions.get(r) {
                Some(ch) => log_digest(ch.clone()).await.unwrap_or_default(),
                None => String::new(),
            };
            o.digests.push(DigestObs {
                region: r.clone(),
                coordinator_seq: c.map_or(0, |c| c.seq),
                coordinator_digest: c.map(|c| c.digest.clone()).unwrap_or_default(),
                region_seq: d.seq,
                region_digest: d.digest.clone(),
                replay_digest: d.replay_digest.clone(),
                log_digest,
            });
        }
        // Hash chains.
        for (r, ch) in &self.regions {
            match AuditClient::new(ch.clone())
                .verify_log(control(VerifyLogRequest { region: r.clone() }))
                .await
            {
                Ok(v) => {
                    let v = v.into_inner();
                    o.verify.push(VerifyObs {
                        region: r.clone(),
                        ok: v.ok,
                        head_seq: v.head_seq,
                        first_bad_seq: v.first_bad_seq,
                        reason: v.reason,
                    });
                }
                Err(s) => o.verify.push(VerifyObs {
                    region: r.clone(),
                    ok: false,
                    reason: format!("VerifyLog failed: {} {}", s.code(), s.message()),
                    ..Default::default()
                }),
            }
        }
        // The global projection, per account, at the same heads.
        for a in &self.exp.accounts {
            let mut next = String::new();
            loop {
                let mut req = as_account(
                    DescribeGlobalImagesRequest {
                        describe: Some(DescribeImagesRequest {
                            owners: vec!["self".into()],
                            include_deprecated: true,
                            include_disabled: true,
                            max_results: Some(1000),
                            next_token: next.clone(),
                            ..Default::default()
                        }),
                        regions: vec![],
                        consistency_token: token.clone(),
                    },
                    "",
                    a,
                );
                req.metadata_mut().remove("x-amisim-region");
                let resp = self
                    .coordinator
                    .clone()
                    .describe_global_images(req)
                    .await
                    .map_err(|s| rpc("Coordinator.DescribeGlobalImages", s))?
                    .into_inner();
                for g in resp.images {
                    if let Some(i) = g.image {
                        let (id, obs) = image_obs(i);
                        o.global_images.entry(g.region).or_default().insert(id, obs);
                    }
                }
                if resp.next_token.is_empty() {
                    break;
                }
                next = resp.next_token;
            }
        }
        // Every copy the logs hold.
        let copies = self
            .coordinator
            .clone()
            .list_copies(control(ListCopiesRequest {
                finished_within_ms: Some(u64::MAX),
                consistency_token: token,
                ..Default::default()
            }))
            .await
            .map_err(|s| rpc("Coordinator.ListCopies", s))?
            .into_inner();
        o.copies = copies
            .copies
            .into_iter()
            .filter(|c| c.kind == "image")
            .map(|c| CopyObs {
                copy_id: c.copy_id,
                source_region: c.source_region,
                source_id: c.source_id,
                destination_region: c.destination_region,
                destination_id: c.destination_id,
                account_id: c.account_id,
                phase: c.phase,
                requested_at_ms: c.requested_at_ms,
                finished_at_ms: c.finished_at_ms,
                destination_state: c.destination_state,
            })
            .collect();
        Ok(o)
    }
}

/// SHA-256 over a region's whole log, each event with its wall time and (therefore) its hash
/// fields cleared: the part of the log a replay of the same seed reproduces exactly.
pub async fn log_digest(ch: Channel) -> Result<String, tonic::Status> {
    use prost::Message;
    use sha2::{Digest, Sha256};
    let mut stream = RegionClient::new(ch)
        .max_decoding_message_size(64 * 1024 * 1024)
        .stream_events(control(StreamEventsRequest {
            from_seq: 1,
            follow: false,
        }))
        .await?
        .into_inner();
    let mut h = Sha256::new();
    // Debugging a replay that differs: AMISIM_LAB_EVENTS=FILE-PREFIX writes the events hashed.
    let mut dump = std::env::var_os("AMISIM_LAB_EVENTS").map(|_| String::new());
    let mut region = String::new();
    while let Some(e) = stream.next().await {
        let mut e = e?;
        e.wall_time_ms = 0;
        e.prev_hash.clear();
        e.hash.clear();
        h.update(e.encode_to_vec());
        if let Some(d) = dump.as_mut() {
            region.clone_from(&e.region);
            d.push_str(&format!("{e:?}\n"));
        }
    }
    if let (Some(d), Some(prefix)) = (dump, std::env::var_os("AMISIM_LAB_EVENTS")) {
        let mut path = std::path::PathBuf::from(prefix);
        path.as_mut_os_string().push(format!("{region}.txt"));
        if let Err(e) = std::fs::write(&path, d) {
            tracing::warn!(target: "amisim::lab", path = %path.display(), error = %e, "cannot dump events");
        }
    }
    Ok(hex::encode(h.finalize()))
}
