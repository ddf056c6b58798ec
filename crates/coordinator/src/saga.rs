//! The copy saga driver (DESIGN.md §6): drives every CopyImage / CopySnapshot from its request
//! in the destination region to the start of its transfer, across regions, with nothing to
//! persist.
//!
//! # What it does
//!
//! A copy is requested in its destination region (`ImageCopyRequested` /
//! `SnapshotCopyRequested`); the timers of that region finish it once it has started. In
//! between, two idempotent steps (`Region.ExecuteSagaStep`) must run, keyed by the copy id:
//!
//! 1. **ReadCopySource** in the source region: the source as the requester may read it, recorded
//!    once as `CopySourceRead`. Its events depend on the request: `(destination, request seq)`.
//! 2. **StartCopy** in the destination, from that record and the [`LinkModel`] of the
//!    `(source → destination)` pair: the transfer starts (or the copy fails with the read's
//!    reason). Its events depend on the read: `(source, read seq)`.
//!
//! Link faults (ADR 0008): a partitioned `(source → destination)` link, or a transfer drawn lost,
//! fails StartCopy's attempt before it is sent — the copy stays pending and is retried (a link
//! change wakes the worker at once); otherwise the latency is drawn once per copy from the
//! [`LinkControl`]'s seed ([`sampled_link_params`]).
//!
//! The driver watches the [`Projection`] ([`Projection::subscribe`]); every copy that a
//! destination's projected state lists in [`State::copies_awaiting_start`] gets one worker task.
//! When the source's projected state already holds the copy's `CopySourceRead`, step 1 is
//! skipped and its recorded seq is used; otherwise step 1 is sent and its answer
//! (`source` + `source_read_at`) feeds step 2. Same-region copies take the same path.
//!
//! # Why it is safe to retry, restart and run twice
//!
//! - Both steps are idempotent on the nodes: a retry writes nothing and answers what was
//!   decided. So a worker retries **any** failure (unreachable region, UNAVAILABLE, timeout,
//!   even a refusal) with exponential backoff (100 ms doubling to 5 s, jittered from a seeded
//!   RNG), and never gives up while the copy is not started or finished in the projection.
//! - An in-memory "in progress" set keeps one worker per copy. After a worker has started a
//!   copy, the copy is not driven again until the projection shows it no longer awaiting start
//!   (or, as a safety net, [`SagaConfig::recheck_after`] has passed).
//! - The driver keeps nothing else: on a coordinator restart the followers replay every log, the
//!   projection lists the unfinished copies again, and they are resumed, each at its next step.
//!
//! # Observability (STYLE.md 13)
//!
//! [`SagaMonitor::status`] reports whether the driver runs, each copy it works on (step,
//! attempts, last error) and the recently finished ones; `Coordinator.ListCopies` shows the same
//! per copy. Every copy runs in a `copy_saga` tracing span with `correlation_id`, `source` and
//! `destination`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amisim_chaos::{LinkControl, LinkModel};
use amisim_core::copy::{CopyKind, CopyPhase, CopyTask};
use amisim_core::State;
use amisim_proto::{
    CopySourceRead, EventRef, GetRegionInfoRequest, LinkParams, SagaStep, SagaStepResponse,
};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tracing::Instrument;

use crate::follower::Backoff;
use crate::gateway::{RegionRoutes, REQUEST_ID_HEADER};
use crate::projection::{Projection, ProjectionSnapshot};

/// The driver looks at the projection at most once per this interval on average (a look walks
/// every copy of every region), with bursts of up to [`LOOK_BURST`] looks: see [`LookBudget`].
const MIN_LOOK_INTERVAL: Duration = Duration::from_millis(2);
/// Looks the driver may take back to back before [`MIN_LOOK_INTERVAL`] paces it.
const LOOK_BURST: f64 = 8.0;

/// Paces the driver's looks at the projection: a token bucket that refills one look per
/// [`MIN_LOOK_INTERVAL`] and holds at most [`LOOK_BURST`].
///
/// A burst of publications (a catch-up, heavy load) still costs at most one look per interval,
/// but a copy requested just after an unrelated look (say, the previous copy turning available)
/// is looked at at once: with a plain "one look per interval" it waited out the rest of the
/// interval plus the timer's rounding, ~2 ms that every copy paid in `bench --copy-completion`.
#[derive(Debug, Clone)]
struct LookBudget {
    tokens: f64,
    at: Instant,
}

impl LookBudget {
    fn new(now: Instant) -> Self {
        LookBudget {
            tokens: LOOK_BURST,
            at: now,
        }
    }

    /// How long to wait before the next look at `now` (zero: look now).
    fn wait(&mut self, now: Instant) -> Duration {
        let refill =
            now.saturating_duration_since(self.at).as_secs_f64() / MIN_LOOK_INTERVAL.as_secs_f64();
        self.tokens = (self.tokens + refill).min(LOOK_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            MIN_LOOK_INTERVAL.mul_f64(1.0 - self.tokens)
        }
    }

    /// Takes one look's token (after [`LookBudget::wait`] said zero, or once its wait is over).
    fn take(&mut self, now: Instant) {
        let _ = self.wait(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// How the saga driver runs. The defaults suit a local cluster and tests.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// First retry delay after a failed step (default 100 ms).
    pub initial_backoff: Duration,
    /// Largest retry delay (default 5 s).
    pub max_backoff: Duration,
    /// Bound on one step call (default 10 s); an expired call is retried like any failure.
    pub rpc_timeout: Duration,
    /// Seed of the retry jitter (each copy draws from its own stream of it), so a run's retry
    /// timing replays (STYLE.md 9).
    pub seed: u64,
    /// At most this many copies driven at once (default 256); the others wait their turn.
    pub max_concurrent: usize,
    /// A copy this driver started but that the projection still shows awaiting start after this
    /// long (wall time, default 30 s) is driven again (idempotent: it writes nothing if it did
    /// start). Normally the projection catches up within milliseconds.
    pub recheck_after: Duration,
    /// How many finished drives [`SagaMonitor::status`] remembers (default 1024).
    pub history: usize,
    /// While held, the driver neither looks nor steps (a paused in-process coordinator;
    /// default none).
    pub hold: crate::hold::Hold,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            seed: 0,
            max_concurrent: 256,
            recheck_after: Duration::from_secs(30),
            history: 1024,
            hold: None,
        }
    }
}

/// The `LinkParams` of a StartCopy step from a link model (its fixed latency).
pub fn link_params(model: LinkModel) -> LinkParams {
    LinkParams {
        latency_ms: model.latency_ms,
        bandwidth_bytes_per_s: model.bandwidth_bytes_per_s,
    }
}

/// The `LinkParams` of one copy's StartCopy: the latency drawn from the pair's model with the
/// copy's own stream (`copy/<copy id>`), so a copy gets the same transfer time on every retry
/// and in every replay of the same seed.
pub fn sampled_link_params(links: &LinkControl, model: LinkModel, copy_id: &str) -> LinkParams {
    let mut rng = links.rng(&format!("copy/{copy_id}"));
    LinkParams {
        latency_ms: model.sample_latency_ms(&mut rng),
        bandwidth_bytes_per_s: model.bandwidth_bytes_per_s,
    }
}

/// Where the driver is with one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveStep {
    /// Sending ReadCopySource to the source region.
    ReadingSource,
    /// Sending StartCopy to the destination region.
    Starting,
    /// A step failed; waiting before the next attempt.
    BackingOff,
    /// The destination answered the StartCopy (or the projection shows the copy under way):
    /// the driver's part is done.
    Done,
    /// The driver stopped before the copy started (shutdown); a later driver resumes it.
    Stopped,
}

impl DriveStep {
    pub fn as_str(self) -> &'static str {
        match self {
            DriveStep::ReadingSource => "reading-source",
            DriveStep::Starting => "starting",
            DriveStep::BackingOff => "backing-off",
            DriveStep::Done => "done",
            DriveStep::Stopped => "stopped",
        }
    }
}

/// One copy as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDrive {
    pub copy_id: String,
    pub kind: CopyKind,
    pub source_region: String,
    pub destination_region: String,
    pub step: DriveStep,
    /// Attempts so far (1 = the first try).
    pub attempts: u32,
    /// The last failure, kept after a later success so a flapping link shows.
    pub last_error: Option<String>,
    /// The StartCopy outcome (`started`, `failed`, `already-started`, `already-failed`,
    /// `cancelled`), or `in-projection` when the projection showed the copy under way first.
    pub outcome: Option<String>,
}

/// What [`SagaMonitor::status`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaStatus {
    /// The driver task is running.
    pub running: bool,
    /// Copies being driven now, by copy id.
    pub active: Vec<CopyDrive>,
    /// Recently finished drives, oldest first (at most [`SagaConfig::history`]).
    pub finished: Vec<CopyDrive>,
    /// Copies waiting for a free worker ([`SagaConfig::max_concurrent`]).
    pub queued: usize,
    /// Saga steps sent (each attempt of each step).
    pub steps_sent: u64,
    /// Steps that failed (and were retried).
    pub step_failures: u64,
    /// Copies whose StartCopy this driver got answered.
    pub copies_driven: u64,
}

#[derive(Debug, Default)]
struct Board {
    running: bool,
    active: BTreeMap<String, CopyDrive>,
    finished: VecDeque<CopyDrive>,
    queued: usize,
    steps_sent: u64,
    step_failures: u64,
    copies_driven: u64,
}

/// Shared between the driver, its workers and the monitors.
#[derive(Debug)]
struct Shared {
    projection: Arc<Projection>,
    routes: RegionRoutes,
    links: LinkControl,
    config: SagaConfig,
    board: Mutex<Board>,
}

impl Shared {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, copy_id: &str, f: impl FnOnce(&mut CopyDrive)) {
        if let Some(d) = self.board().active.get_mut(copy_id) {
            f(d);
        }
    }
}

/// A cloneable, read-only view of the driver (for the `Coordinator` service).
#[derive(Debug, Clone)]
pub struct SagaMonitor {
    shared: Arc<Shared>,
}

impl SagaMonitor {
    /// The driver's status now.
    pub fn status(&self) -> SagaStatus {
        let b = self.shared.board();
        SagaStatus {
            running: b.running,
            active: b.active.values().cloned().collect(),
            finished: b.finished.iter().cloned().collect(),
            queued: b.queued,
            steps_sent: b.steps_sent,
            step_failures: b.step_failures,
            copies_driven: b.copies_driven,
        }
    }

    /// One copy: active, else the latest finished drive of it.
    pub fn copy(&self, copy_id: &str) -> Option<CopyDrive> {
        let b = self.shared.board();
        b.active
            .get(copy_id)
            .or_else(|| b.finished.iter().rev().find(|d| d.copy_id == copy_id))
            .cloned()
    }

    /// The simulated now of `region`'s node (`Region.GetRegionInfo`), or `None` if it does not
    /// answer within `timeout` or is not routed. For progress figures: the projection itself has
    /// no clock.
    pub async fn region_now_ms(&self, region: &str, timeout: Duration) -> Option<u64> {
        let mut client = self.shared.routes.region_client(region)?;
        match tokio::time::timeout(timeout, client.get_region_info(GetRegionInfoRequest {})).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                (r.region == region).then_some(r.sim_time_ms)
            }
            _ => None,
        }
    }

    /// The link model of a pair, as the driver uses it.
    pub fn link(&self, from: &str, to: &str) -> LinkModel {
        self.shared.links.get(from, to)
    }

    /// The live link table the driver uses.
    pub fn links(&self) -> LinkControl {
        self.shared.links.clone()
    }
}

/// The running saga driver. Dropping it stops it (as [`SagaDriver::shutdown`] does, without
/// waiting); copies it was driving are resumed by the next driver.
pub struct SagaDriver {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SagaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.monitor().status();
        f.debug_struct("SagaDriver")
            .field("running", &s.running)
            .field("active", &s.active.len())
            .field("copies_driven", &s.copies_driven)
            .finish()
    }
}

impl SagaDriver {
    /// Starts the driver over `projection` (fed by followers), sending steps to the nodes of
    /// `routes`, timing transfers with `links` (a [`LinkControl`] shared with the `Chaos`
    /// service, or a plain [`amisim_chaos::LinkTable`]). Needs a tokio runtime.
    pub fn spawn(
        projection: Arc<Projection>,
        routes: RegionRoutes,
        links: impl Into<LinkControl>,
        config: SagaConfig,
    ) -> SagaDriver {
        let shared = Arc::new(Shared {
            projection,
            routes,
            links: links.into(),
            config,
            board: Mutex::new(Board {
                running: true,
                ..Board::default()
            }),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let driver = Driver {
            shared: shared.clone(),
            shutdown: shutdown_rx,
            active: HashSet::new(),
            ids: HashMap::new(),
            handed_off: HashMap::new(),
            workers: JoinSet::new(),
        };
        let task = tokio::spawn(driver.run().instrument(tracing::info_span!("saga_driver")));
        SagaDriver {
            shared,
            shutdown,
            task: Some(task),
        }
    }

    /// A view of the driver's status, to hand to services.
    pub fn monitor(&self) -> SagaMonitor {
        SagaMonitor {
            shared: self.shared.clone(),
        }
    }

    /// Stops the driver and its workers and waits for them to end. A step in flight is
    /// abandoned: the node either ran it or not, and the next driver's retry is harmless.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.task.take() {
            // The driver never panics by design; if it did, there is nothing left to stop.
            let _ = t.await;
        }
    }
}

impl Drop for SagaDriver {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// How a worker ended.
struct Ended {
    copy_id: String,
    /// True if the destination answered StartCopy (or the projection shows it under way).
    handed_off: bool,
}

/// The driver task's own state: which copies have a worker, which were handed off.
struct Driver {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    /// Copies with a running worker.
    active: HashSet<String>,
    /// Worker task → its copy (to clean up after a worker that panicked).
    ids: HashMap<tokio::task::Id, String>,
    /// Copy id → when its StartCopy was answered (not driven again until the projection shows
    /// it started, or `recheck_after`).
    handed_off: HashMap<String, Instant>,
    workers: JoinSet<Ended>,
}

impl Driver {
    async fn run(mut self) {
        tracing::info!(
            regions = %self.shared.routes.regions().collect::<Vec<_>>().join(","),
            "saga driver started"
        );
        let mut changes = self.shared.projection.subscribe();
        let recheck = self
            .shared
            .config
            .recheck_after
            .max(Duration::from_millis(100));
        let mut budget = LookBudget::new(Instant::now());
        let mut hold = self.shared.config.hold.clone();
        loop {
            // A paused coordinator starts no copy until it resumes.
            tokio::select! {
                biased;
                _ = stopped(&mut self.shutdown) => break,
                () = crate::hold::while_held(&mut hold) => {}
            }
            // Bursts of publications (a catch-up, heavy load) are coalesced: see LookBudget.
            let wait = budget.wait(Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    biased;
                    _ = stopped(&mut self.shutdown) => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            budget.take(Instant::now());
            changes.borrow_and_update();
            self.schedule();
            tokio::select! {
                biased;
                _ = stopped(&mut self.shutdown) => break,
                Some(joined) = self.workers.join_next_with_id() => self.reap(joined),
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The projection is gone: nothing left to watch.
                        break;
                    }
                }
                // Re-look now and then even without news: a handed-off copy whose start the
                // projection never showed is driven again.
                _ = tokio::time::sleep(recheck) => {}
            }
        }
        // Dropping the JoinSet aborts the workers at their next await.
        self.workers.shutdown().await;
        let mut board = self.shared.board();
        board.running = false;
        let stopped: Vec<CopyDrive> = std::mem::take(&mut board.active)
            .into_values()
            .map(|mut d| {
                d.step = DriveStep::Stopped;
                d
            })
            .collect();
        for d in stopped {
            push_finished(&mut board, d, self.shared.config.history);
        }
        board.queued = 0;
        drop(board);
        tracing::info!("saga driver stopped");
    }

    fn reap(&mut self, joined: Result<(tokio::task::Id, Ended), tokio::task::JoinError>) {
        let ended = match joined {
            Ok((id, e)) => {
                self.ids.remove(&id);
                e
            }
            Err(e) => {
                // A worker panicked (a bug): its copy is scheduled again on the next look.
                let copy_id = self.ids.remove(&e.id()).unwrap_or_default();
                tracing::error!(error = %e, copy_id = %copy_id, "a copy worker ended abnormally");
                Ended {
                    copy_id,
                    handed_off: false,
                }
            }
        };
        self.active.remove(&ended.copy_id);
        let mut board = self.shared.board();
        if let Some(d) = board.active.remove(&ended.copy_id) {
            push_finished(&mut board, d, self.shared.config.history);
        }
        if ended.handed_off {
            board.copies_driven += 1;
            drop(board);
            self.handed_off.insert(ended.copy_id, Instant::now());
        }
    }

    /// Starts a worker for every copy awaiting start that has none, as room allows.
    fn schedule(&mut self) {
        let snap = self.shared.projection.snapshot();
        let recheck = self.shared.config.recheck_after;
        // Forget handed-off copies the projection shows started (or that waited too long).
        self.handed_off
            .retain(|id, at| at.elapsed() < recheck && awaiting_start_anywhere(&snap, id));
        let mut queued = 0;
        for (dest, region) in snap.regions() {
            for task in region.state.copies_awaiting_start() {
                if self.active.contains(&task.copy_id)
                    || self.handed_off.contains_key(&task.copy_id)
                {
                    continue;
                }
                if self.active.len() >= self.shared.config.max_concurrent.max(1) {
                    queued += 1;
                    continue;
                }
                self.start_worker(dest, task);
            }
        }
        self.shared.board().queued = queued;
    }

    fn start_worker(&mut self, dest: &str, task: &CopyTask) {
        self.active.insert(task.copy_id.clone());
        self.shared.board().active.insert(
            task.copy_id.clone(),
            CopyDrive {
                copy_id: task.copy_id.clone(),
                kind: task.kind,
                source_region: task.source_region.clone(),
                destination_region: dest.to_string(),
                step: DriveStep::ReadingSource,
                attempts: 0,
                last_error: None,
                outcome: None,
            },
        );
        let worker = Worker {
            backoff: Backoff::new(
                self.shared.config.initial_backoff,
                self.shared.config.max_backoff,
                copy_seed(self.shared.config.seed, &task.copy_id),
            ),
            shared: self.shared.clone(),
            dest: dest.to_string(),
            task: task.clone(),
            shutdown: self.shutdown.clone(),
        };
        let span = tracing::info_span!(
            "copy_saga",
            correlation_id = %task.copy_id,
            kind = task.kind.as_str(),
            source = %task.source_region,
            destination = %dest,
        );
        let handle = self.workers.spawn(worker.run().instrument(span));
        self.ids.insert(handle.id(), task.copy_id.clone());
    }
}

fn push_finished(board: &mut Board, d: CopyDrive, history: usize) {
    board.finished.push_back(d);
    while board.finished.len() > history {
        board.finished.pop_front();
    }
}

/// True if some region's projection lists `copy_id` as awaiting start.
fn awaiting_start_anywhere(snap: &ProjectionSnapshot, copy_id: &str) -> bool {
    snap.regions().any(|(_, r)| {
        r.state
            .copies
            .get(copy_id)
            .is_some_and(|t| r.state.copy_phase(t) == CopyPhase::AwaitingStart)
    })
}

/// The recorded `CopySourceRead` of a copy in a region's projected state, with its place.
pub fn recorded_read(
    state: &State,
    region: &str,
    copy_id: &str,
) -> Option<(CopySourceRead, EventRef)> {
    let rec = state.copy_reads.get(copy_id).filter(|r| r.seq > 0)?;
    let read = rec.payload()?;
    Some((
        read,
        EventRef {
            region: region.to_string(),
            seq: rec.seq,
        },
    ))
}

/// Each copy's jitter stream: the seed mixed with the copy id (FNV-1a).
fn copy_seed(seed: u64, copy_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in copy_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Drives one copy until its destination answers StartCopy.
struct Worker {
    shared: Arc<Shared>,
    dest: String,
    task: CopyTask,
    backoff: Backoff,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) -> Ended {
        let copy_id = self.task.copy_id.clone();
        let mut attempts: u32 = 0;
        loop {
            if *self.shutdown.borrow() {
                self.shared
                    .update(&copy_id, |d| d.step = DriveStep::Stopped);
                return Ended {
                    copy_id,
                    handed_off: false,
                };
            }
            let snap = self.shared.projection.snapshot();
            let phase = snap
                .region(&self.dest)
                .and_then(|r| r.state.copies.get(&copy_id).map(|t| r.state.copy_phase(t)));
            if phase.is_some_and(|p| p != CopyPhase::AwaitingStart) {
                tracing::debug!(?phase, "the projection shows the copy under way");
                self.shared.update(&copy_id, |d| {
                    d.step = DriveStep::Done;
                    d.outcome.get_or_insert_with(|| "in-projection".into());
                });
                return Ended {
                    copy_id,
                    handed_off: true,
                };
            }
            // A paused coordinator takes no step until it resumes.
            let mut hold = self.shared.config.hold.clone();
            tokio::select! {
                () = crate::hold::while_held(&mut hold) => {}
                _ = stopped(&mut self.shutdown) => continue,
            }
            attempts = attempts.saturating_add(1);
            self.shared.update(&copy_id, |d| d.attempts = attempts);
            match self.attempt(&snap, attempts).await {
                Ok(outcome) => {
                    tracing::info!(outcome = %outcome, attempts, "copy handed to its destination");
                    self.shared.update(&copy_id, |d| {
                        d.step = DriveStep::Done;
                        d.outcome = Some(outcome);
                    });
                    return Ended {
                        copy_id,
                        handed_off: true,
                    };
                }
                Err(why) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        error = %why,
                        attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        "copy step failed; retrying"
                    );
                    self.shared.board().step_failures += 1;
                    self.shared.update(&copy_id, |d| {
                        d.step = DriveStep::BackingOff;
                        d.last_error = Some(why);
                    });
                    // A link change (a partition healed) ends the wait early.
                    let mut links = self.shared.links.changes();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = links.changed() => {}
                        _ = stopped(&mut self.shutdown) => {}
                    }
                }
            }
        }
    }

    /// One pass: the source read (recorded, or read now), then StartCopy. Returns StartCopy's
    /// outcome.
    async fn attempt(&mut self, snap: &ProjectionSnapshot, attempt: u32) -> Result<String, String> {
        let task = self.task.clone();
        let src = task.source_region.as_str();
        let recorded = snap
            .region(src)
            .and_then(|r| recorded_read(&r.state, src, &task.copy_id));
        let (source, read_at) = match recorded {
            Some(found) => {
                tracing::debug!(
                    read_seq = found.1.seq,
                    "source read found in the projection"
                );
                found
            }
            None => {
                self.shared
                    .update(&task.copy_id, |d| d.step = DriveStep::ReadingSource);
                let depends_on = if task.requested_seq > 0 {
                    vec![EventRef {
                        region: self.dest.clone(),
                        seq: task.requested_seq,
                    }]
                } else {
                    Vec::new()
                };
                let step = task.read_step(&self.dest, depends_on);
                let r = self.send(src, step, "read-source", attempt).await?;
                let source = r
                    .source
                    .ok_or_else(|| format!("ReadCopySource in {src} answered without the read"))?;
                let at = r
                    .source_read_at
                    .filter(|a| a.seq > 0 && a.region == src)
                    .ok_or_else(|| {
                        format!("ReadCopySource in {src} answered without the read's position")
                    })?;
                tracing::debug!(outcome = %r.outcome, ok = source.ok, read_seq = at.seq, "source read");
                (source, at)
            }
        };
        self.shared
            .update(&task.copy_id, |d| d.step = DriveStep::Starting);
        let link = if src != self.dest {
            // The transfer crosses the link: a partition stalls the copy (retried until it
            // heals, never failed); a lost transfer is retried like a failed call.
            let model = self.shared.links.get(src, &self.dest);
            if model.partitioned {
                return Err(format!(
                    "link {src} -> {} is partitioned; the transfer waits for it to heal",
                    self.dest
                ));
            }
            let mut rng = self
                .shared
                .links
                .rng(&format!("copy/{}/attempt/{attempt}", task.copy_id));
            if model.sample_lost(&mut rng) {
                return Err(format!(
                    "transfer over {src} -> {} lost (loss {}); retrying",
                    self.dest, model.loss
                ));
            }
            Some(sampled_link_params(
                &self.shared.links,
                model,
                &task.copy_id,
            ))
        } else {
            None
        };
        let step = task.start_step(source, link, vec![read_at]);
        let dest = self.dest.clone();
        let r = self.send(&dest, step, "start", attempt).await?;
        Ok(r.outcome)
    }

    /// Sends one step to `region`'s node, bounded by the RPC timeout.
    async fn send(
        &mut self,
        region: &str,
        step: SagaStep,
        what: &str,
        attempt: u32,
    ) -> Result<SagaStepResponse, String> {
        // Authenticates as the operator when the routes carry its token (ADR 0009).
        let mut client = self
            .shared
            .routes
            .region_client(region)
            .ok_or_else(|| format!("region {region} is not routed by this coordinator"))?;
        let mut request = tonic::Request::new(step);
        // The request id names the copy, the step and the attempt: it lands in the envelopes.
        let request_id = format!("{}:{what}:{attempt}", self.task.copy_id);
        if let Ok(v) = AsciiMetadataValue::try_from(request_id.as_str()) {
            request.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        self.shared.board().steps_sent += 1;
        let timeout = self.shared.config.rpc_timeout;
        let call = tokio::time::timeout(timeout, client.execute_saga_step(request));
        let answer = tokio::select! {
            a = call => a,
            _ = stopped(&mut self.shutdown) => return Err("shutting down".into()),
        };
        match answer {
            Err(_) => Err(format!("{what} in {region}: timed out after {timeout:?}")),
            Ok(Err(status)) => Err(format!(
                "{what} in {region}: {:?}: {}",
                status.code(),
                status.message()
            )),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An Err means the SagaDriver is gone: stop as well.
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_params_carry_the_model() {
        let p = link_params(LinkModel::new(1_000, 10));
        assert_eq!(p.latency_ms, 1_000);
        assert_eq!(p.bandwidth_bytes_per_s, 10 * 1024 * 1024);
    }

    #[test]
    fn copies_get_distinct_jitter_streams() {
        assert_ne!(copy_seed(1, "copy-a"), copy_seed(1, "copy-b"));
        assert_eq!(copy_seed(1, "copy-a"), copy_seed(1, "copy-a"));
    }

    #[test]
    fn looks_come_at_once_in_bursts_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = LookBudget::new(t0);
        for _ in 0..LOOK_BURST as usize {
            assert_eq!(b.wait(t0), Duration::ZERO);
            b.take(t0);
        }
        // The burst is spent: the next look waits one interval, then one per interval.
        assert_eq!(b.wait(t0), MIN_LOOK_INTERVAL);
        let half = t0 + MIN_LOOK_INTERVAL / 2;
        assert_eq!(b.wait(half), MIN_LOOK_INTERVAL / 2);
        let t1 = t0 + MIN_LOOK_INTERVAL;
        assert_eq!(b.wait(t1), Duration::ZERO);
        b.take(t1);
        assert_eq!(b.wait(t1), MIN_LOOK_INTERVAL);
        // A quiet spell refills the burst, never beyond it.
        let later = t1 + MIN_LOOK_INTERVAL * 1000;
        for _ in 0..LOOK_BURST as usize {
            assert_eq!(b.wait(later), Duration::ZERO);
            b.take(later);
        }
        assert!(!b.wait(later).is_zero());
    }

    #[test]
    fn step_names_are_stable() {
        assert_eq!(DriveStep::ReadingSource.as_str(), "reading-source");
        assert_eq!(DriveStep::BackingOff.as_str(), "backing-off");
    }
}
