//! The single writer of a region: the only code that decides commands, appends to the log and
//! changes the state.
//!
//! It runs on a dedicated OS thread (with a private current-thread Tokio runtime for its timers
//! and channels), with a second thread, the committer, for the blocking
//! [`EventLog::append`] (an fsync). One round:
//!
//! 1. Wait for a command, for the next timer's due time, or for the clock to be moved by hand.
//! 2. Take up to `max_batch` queued commands.
//! 3. Decide them in order against a working copy of the decided state (a `Tick` first if a
//!    timer is due), applying each decision's events (with the seqs the log will give them) to
//!    the copy so later commands see earlier ones. An error is remembered as that command's
//!    answer and writes nothing. The copy becomes the decided state.
//! 4. Hand the batch (events, answers, the state it leaves) to the committer, and go on with
//!    the next round while the committer makes this one durable.
//! 5. The committer appends every batch queued so far with one [`EventLog::append`] (group
//!    commit: one flush), publishes the state of the last one (readers see it at once), and
//!    only then answers each command, with the seq of its last event (or the head). Batches
//!    are committed in the order they were decided, so nobody — caller or reader — sees a
//!    decision before it is durable, and a decision never depends on one that is not logged
//!    before it.
//!
//! A failed append is fatal (DESIGN.md §7, fail-stop): every command of the batches in hand
//! gets `InternalError` (its outcome is unknown until a restart replays the log), later ones
//! `Unavailable`, the queue is closed and drained, and the thread ends with
//! [`NodeStatus::Failed`].

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_chaos::{wall_now_ms, Clock};
use amisim_core::state::Timer;
use amisim_core::{ids, Command, Ctx, Ec2Error, ErrorCode, Reply, State};
use amisim_log::EventLog;
use amisim_proto::Event;
use arc_swap::ArcSwap;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot, watch};

/// The answer to a write: the reply and the seq of the last event it wrote (the head when it
/// wrote nothing), or the EC2 error.
pub(crate) type Outcome = Result<(Reply, u64), Ec2Error>;

/// A command waiting for the writer.
pub(crate) struct Request {
    pub account_id: String,
    pub request_id: String,
    pub command: Command,
    pub reply: oneshot::Sender<Outcome>,
}

/// What the writer is doing, for health checks and for callers that find the queue closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    /// Accepting and deciding commands.
    Running,
    /// Stopped on request ([`crate::RegionNode::shutdown`]) or because the node was dropped.
    Stopped,
    /// Stopped by a storage error (fail-stop). The log on disk is the truth: restart the node
    /// to replay it.
    Failed(String),
}

pub(crate) struct Writer {
    pub region: String,
    pub config: amisim_core::Config,
    /// Organization membership from the accounts file (empty without one).
    pub membership: Arc<amisim_core::Membership>,
    pub max_batch: usize,
    pub clock: Arc<dyn Clock>,
    pub log: Arc<dyn EventLog>,
    pub published: Arc<ArcSwap<State>>,
    /// The decided state: what is published plus the batches the committer has not made
    /// durable yet (at most [`COMMIT_QUEUE`] + 1 batches ahead).
    pub state: State,
    pub rng: ChaCha8Rng,
    pub rx: mpsc::Receiver<Request>,
    pub shutdown: watch::Receiver<bool>,
    pub status: watch::Sender<NodeStatus>,
    /// Timers that a tick already saw due but that stayed pending (a domain bug: their firing
    /// produced no event). Skipped when deciding whether to tick and when to wake, so one of
    /// them can never make the writer spin.
    pub stale: HashSet<(u64, Timer)>,
    /// Batch and append counters, shared with the node.
    pub stats: Arc<WriterStats>,
}

/// What the writer has done so far: how well group commit batches, and what the appends cost.
/// Counters only grow; read a consistent-enough view with [`WriterStats::snapshot`].
#[derive(Debug, Default)]
pub struct WriterStats {
    rounds: AtomicU64,
    commands: AtomicU64,
    events: AtomicU64,
    appends: AtomicU64,
    append_micros: AtomicU64,
    max_batch_seen: AtomicU64,
}

/// A copy of the [`WriterStats`] counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStatsSnapshot {
    /// Rounds that decided at least one command or tick.
    pub rounds: u64,
    /// Client commands decided (ticks not counted).
    pub commands: u64,
    /// Events appended.
    pub events: u64,
    /// Appends (each one flush + fsync: the group commits).
    pub appends: u64,
    /// Wall time spent in appends, µs.
    pub append_micros: u64,
    /// The largest number of commands one round took.
    pub max_batch: u64,
}

impl WriterStats {
    pub fn snapshot(&self) -> WriterStatsSnapshot {
        WriterStatsSnapshot {
            rounds: self.rounds.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            append_micros: self.append_micros.load(Ordering::Relaxed),
            max_batch: self.max_batch_seen.load(Ordering::Relaxed),
        }
    }
}

impl WriterStatsSnapshot {
    /// Counters accumulated since `earlier` (`max_batch` stays this snapshot's).
    pub fn since(&self, earlier: &WriterStatsSnapshot) -> WriterStatsSnapshot {
        WriterStatsSnapshot {
            rounds: self.rounds.saturating_sub(earlier.rounds),
            commands: self.commands.saturating_sub(earlier.commands),
            events: self.events.saturating_sub(earlier.events),
            appends: self.appends.saturating_sub(earlier.appends),
            append_micros: self.append_micros.saturating_sub(earlier.append_micros),
            max_batch: self.max_batch,
        }
    }
}

impl std::fmt::Display for WriterStatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        write!(
            f,
            "{} commands in {} rounds ({:.1}/round, max {}), {} events in {} group commits \
             ({:.1} events/commit, {:.2} ms/commit)",
            self.commands,
            self.rounds,
            per(self.commands, self.rounds),
            self.max_batch,
            self.events,
            self.appends,
            per(self.events, self.appends),
            per(self.append_micros, self.appends) / 1000.0,
        )
    }
}

/// A decided command waiting for the group commit.
struct Pending {
    reply: Option<oneshot::Sender<Outcome>>,
    /// The reply and the seq of the command's last event (`None`: it wrote nothing).
    result: Result<(Reply, Option<u64>), Ec2Error>,
}

/// A decided batch on its way to the log: its events, its answers, and the state it leaves.
struct Commit {
    /// The seq the log must give the first event (the decided state's seq + 1).
    first_seq: u64,
    events: Vec<Event>,
    pending: Vec<Pending>,
    /// The state with the batch applied: published once the batch is durable.
    state: State,
}

/// Decided batches waiting for the committer. While it flushes one, the writer decides the
/// next against the state that includes it; a full queue makes the writer wait (and its next
/// batch bigger).
const COMMIT_QUEUE: usize = 2;

/// The second half of the writer: appends decided batches in order (several queued batches in
/// one append: group commit across rounds), then publishes and answers. It runs on its own
/// thread (`amisim-commit-<region>`) so that deciding the next batch overlaps the fsync of the
/// previous one. Readers and callers still see a batch only once it is durable.
struct Committer {
    region: String,
    log: Arc<dyn EventLog>,
    published: Arc<ArcSwap<State>>,
    status: watch::Sender<NodeStatus>,
    stats: Arc<WriterStats>,
}

impl Committer {
    /// Commits until the writer hangs up; `Err` after a storage failure (fail-stop: the
    /// commits still queued are dropped, their callers get `Unavailable`).
    fn run(self, rx: std::sync::mpsc::Receiver<Commit>) -> Result<(), String> {
        while let Ok(first) = rx.recv() {
            let mut commits = vec![first];
            while let Ok(more) = rx.try_recv() {
                commits.push(more);
            }
            self.commit(commits)?;
        }
        Ok(())
    }

    fn commit(&self, mut commits: Vec<Commit>) -> Result<(), String> {
        let first_seq = commits.first().map_or(0, |c| c.first_seq);
        let events: Vec<Event> = commits
            .iter_mut()
            .flat_map(|c| std::mem::take(&mut c.events))
            .collect();
        if !events.is_empty() {
            let n = events.len();
            let started = Instant::now();
            let appended = self.log.append(events).map_err(|e| e.to_string());
            self.stats.appends.fetch_add(1, Ordering::Relaxed);
            self.stats.events.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.append_micros.fetch_add(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let appended = appended.and_then(|s| {
                if s.len() == n && s.first().map(|e| e.seq) == Some(first_seq) {
                    Ok(s)
                } else {
                    Err(format!(
                        "the log stamped {} events from seq {:?}; expected {n} from seq {first_seq}",
                        s.len(),
                        s.first().map(|e| e.seq)
                    ))
                }
            });
            if let Err(why) = appended {
                tracing::error!(
                    region = %self.region,
                    error = %why,
                    "event log append failed: region node stops (fail-stop); restart it to replay the log"
                );
                self.status.send_replace(NodeStatus::Failed(why.clone()));
                for p in commits.into_iter().flat_map(|c| c.pending) {
                    if let Some(tx) = p.reply {
                        let _ = tx.send(Err(Ec2Error::internal(format!(
                            "The region {} could not store the request's outcome and stopped; \
                             the request may or may not have taken effect: {why}",
                            self.region
                        ))));
                    }
                }
                return Err(why);
            }
        }
        let Some(last) = commits.last() else {
            return Ok(());
        };
        let head = last.state.seq;
        // The state this replaces is dropped only after the answers are out: freeing the nodes
        // it no longer shares with the new one takes a while, and callers need not wait for it.
        let replaced = (head != self.published.load().seq)
            .then(|| self.published.swap(Arc::new(last.state.clone())));
        let mut states = Vec::with_capacity(commits.len());
        for c in commits {
            states.push(c.state);
            for p in c.pending {
                let Some(tx) = p.reply else { continue };
                let outcome = p.result.map(|(reply, last)| (reply, last.unwrap_or(head)));
                // The caller may have gone away (cancelled request); its write stands.
                let _ = tx.send(outcome);
            }
        }
        drop(replaced);
        drop(states);
        Ok(())
    }
}

impl Writer {
    /// Runs the writer to its end on the current thread.
    pub fn run_blocking(self) {
        let status = self.status.clone();
        let region = self.region.clone();
        let (commits, queued) = std::sync::mpsc::sync_channel(COMMIT_QUEUE);
        let committer = Committer {
            region: region.clone(),
            log: self.log.clone(),
            published: self.published.clone(),
            status: self.status.clone(),
            stats: self.stats.clone(),
        };
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot build the writer's runtime: {e}"))
            .and_then(|rt| {
                crate::spawn_node_thread(format!("amisim-commit-{region}"), move || {
                    committer.run(queued)
                })
                .map(|committing| (rt, committing))
                .map_err(|e| format!("cannot start the writer's commit thread: {e}"))
            });
        let (rt, committing) = match started {
            Ok(started) => started,
            Err(why) => {
                tracing::error!(region = %region, error = %why, "region writer cannot start");
                drop(self);
                status.send_replace(NodeStatus::Failed(why));
                return;
            }
        };
        let end = rt.block_on(self.run(commits));
        // `run` consumed the writer and hung up: the committer finishes what is queued, and
        // releases its log handle before anyone hears of the end.
        let end = match committing.join() {
            Ok(Ok(())) => end,
            Ok(Err(why)) => NodeStatus::Failed(why),
            Err(_) => NodeStatus::Failed("the commit thread panicked".into()),
        };
        tracing::info!(region = %region, status = ?end, "region writer stopped");
        status.send_replace(end);
    }

    async fn run(mut self, commits: std::sync::mpsc::SyncSender<Commit>) -> NodeStatus {
        let mut clock_changes = self.clock.changes();
        let mut stopping = false;
        loop {
            let mut batch = Vec::new();
            if stopping {
                // The queue is closed: decide what was accepted before the shutdown, then end.
                match self.rx.recv().await {
                    Some(r) => batch.push(r),
                    None => return NodeStatus::Stopped,
                }
            } else {
                let wait = self.next_wake().map(|due| self.clock.wall_ms_until(due));
                tokio::select! {
                    biased;
                    changed = self.shutdown.changed() => {
                        // A dropped sender (the node is gone) also means stop.
                        if changed.is_err() || *self.shutdown.borrow() {
                            stopping = true;
                            self.rx.close();
                        }
                    }
                    msg = self.rx.recv() => match msg {
                        Some(r) => batch.push(r),
                        // Every sender is gone: the node was dropped.
                        None => return NodeStatus::Stopped,
                    },
                    _ = sleep_for(wait) => {}
                    _ = clock_moved(&mut clock_changes) => {}
                }
            }
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if let Err(why) = self.round(batch, &commits) {
                self.rx.close();
                while let Some(r) = self.rx.recv().await {
                    let _ = r.reply.send(Err(unavailable(&self.region, &why)));
                }
                return NodeStatus::Failed(why);
            }
        }
    }

    /// The simulated time at which the writer must next tick: the earliest timer not known stale.
    fn next_wake(&self) -> Option<u64> {
        if self.stale.is_empty() {
            return self.state.next_due_ms();
        }
        self.state
            .timers
            .iter()
            .find(|t| !self.stale.contains(*t))
            .map(|(due, _)| *due)
    }

    /// Decides one batch and hands it to the committer (which appends, publishes and answers
    /// it). `Err` is a storage failure: the node must stop.
    fn round(
        &mut self,
        batch: Vec<Request>,
        commits: &std::sync::mpsc::SyncSender<Commit>,
    ) -> Result<(), String> {
        let now = self.clock.now_ms().max(self.state.last_sim_time_ms);
        let tick_due = self.next_wake().is_some_and(|due| due <= now);
        if batch.is_empty() && !tick_due {
            return Ok(());
        }
        let wall = wall_now_ms();
        let commands = batch.len() as u64;
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(commands, Ordering::Relaxed);
        self.stats
            .max_batch_seen
            .fetch_max(commands, Ordering::Relaxed);
        let first_seq = self.state.seq + 1;
        let mut working = self.state.clone();
        let mut events = Vec::new();
        let mut pending = Vec::with_capacity(batch.len() + 1);

        // Timers first: what became due before this batch happened before its commands.
        let due_before: Vec<(u64, Timer)> = if tick_due {
            let due: Vec<_> = self
                .state
                .timers
                .iter()
                .take_while(|(t, _)| *t <= now)
                .cloned()
                .collect();
            let result = self.tick_one(&mut working, &mut events, now, wall);
            if let Err(e) = &result {
                tracing::error!(region = %self.region, error = %e, "timer tick failed");
            }
            pending.push(Pending {
                reply: None,
                result,
            });
            due
        } else {
            Vec::new()
        };

        for r in batch {
            let result = self.decide_one(
                &mut working,
                &mut events,
                &r.account_id,
                &r.request_id,
                r.command,
                now,
                wall,
            );
            pending.push(Pending {
                reply: Some(r.reply),
                result,
            });
        }

        // `working` holds every event of the batch, applied with the seqs the log will give
        // them (the committer checks it did): it becomes the decided state as is.
        self.state = working;
        if tick_due {
            // Timers that were due and are still pending were not fired by the tick: never tick
            // for them again (their due time is past, so waiting for them would spin).
            self.stale = due_before
                .into_iter()
                .filter(|t| self.state.timers.contains(t))
                .collect();
            if !self.stale.is_empty() {
                tracing::warn!(
                    region = %self.region,
                    timers = ?self.stale,
                    "due timers did not fire; ignoring them"
                );
            }
        }
        let commit = Commit {
            first_seq,
            events,
            pending,
            state: self.state.clone(),
        };
        // Blocks while the committer is behind: the queue of commands then grows, and so does
        // the next batch. A closed channel means the committer stopped on a storage failure.
        if let Err(std::sync::mpsc::SendError(commit)) = commits.send(commit) {
            let why = match &*self.status.borrow() {
                NodeStatus::Failed(why) => why.clone(),
                _ => "the commit thread stopped".to_string(),
            };
            for p in commit.pending {
                if let Some(tx) = p.reply {
                    let _ = tx.send(Err(unavailable(&self.region, &why)));
                }
            }
            return Err(why);
        }
        Ok(())
    }

    /// Decides one command against `working`; on success applies its events to `working` and
    /// stages their envelopes in `events`. A panic in the domain is caught and answered as
    /// `InternalError` (the decision only read the state, so nothing is half done).
    #[allow(clippy::too_many_arguments)]
    fn decide_one(
        &mut self,
        working: &mut State,
        events: &mut Vec<Event>,
        account_id: &str,
        request_id: &str,
        command: Command,
        now: u64,
        wall: u64,
    ) -> Result<(Reply, Option<u64>), Ec2Error> {
        let action = command.action();
        let decision = {
            let mut ctx = Ctx::new(&self.region, account_id, now, &mut self.rng, &self.config)
                .with_membership(&self.membership);
            let working_ref: &State = working;
            catch_unwind(AssertUnwindSafe(|| {
                amisim_core::decide(working_ref, &mut ctx, command)
            }))
            .unwrap_or_else(|_| {
                tracing::error!(region = %self.region, action, "the domain panicked deciding a command");
                Err(Ec2Error::internal(
                    "An internal error has occurred (the command could not be decided)",
                ))
            })?
        };
        Ok(self.stage(
            working, events, account_id, request_id, decision, false, now, wall,
        ))
    }

    /// Fires the due timers in place on `working` ([`amisim_core::tick::tick_into`]: applied
    /// once, not decided on a copy and applied again) and stages their envelopes. A panic in
    /// the domain restores `working` (nothing half done) and is answered as `InternalError`.
    fn tick_one(
        &mut self,
        working: &mut State,
        events: &mut Vec<Event>,
        now: u64,
        wall: u64,
    ) -> Result<(Reply, Option<u64>), Ec2Error> {
        // O(1): the maps are persistent. `working` already shares its nodes with the decided
        // state, so keeping this copy makes the tick copy nothing more.
        let before = working.clone();
        let fired = {
            let mut ctx = Ctx::new(
                &self.region,
                ids::SYSTEM_ACCOUNT,
                now,
                &mut self.rng,
                &self.config,
            )
            .with_membership(&self.membership);
            catch_unwind(AssertUnwindSafe(|| {
                amisim_core::tick::tick_into(working, &mut ctx)
            }))
        };
        match fired {
            Ok(payloads) => {
                let decision = amisim_core::Decision::new(payloads, Reply::Tick);
                Ok(self.stage(
                    working,
                    events,
                    ids::SYSTEM_ACCOUNT,
                    "",
                    decision,
                    true,
                    now,
                    wall,
                ))
            }
            Err(_) => {
                *working = before;
                tracing::error!(region = %self.region, "the domain panicked firing timers");
                Err(Ec2Error::internal(
                    "An internal error has occurred (the timers could not be fired)",
                ))
            }
        }
    }

    /// Wraps a decision's events in their envelopes (the seqs the log will give them), applies
    /// them to `working` (only their envelope part when `applied`: the payloads are in it
    /// already) and stages them in `events`. The reply, and the seq of the last event.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        working: &mut State,
        events: &mut Vec<Event>,
        account_id: &str,
        request_id: &str,
        decision: amisim_core::Decision,
        applied: bool,
        now: u64,
        wall: u64,
    ) -> (Reply, Option<u64>) {
        let mut last = None;
        let correlation_id = decision.correlation_id.unwrap_or_default();
        for payload in decision.events {
            // The seq the log will stamp (the committer checks it did): state and log agree.
            let seq = self.state.seq + 1 + events.len() as u64;
            last = Some(seq);
            let event = Event {
                seq,
                region: self.region.clone(),
                event_id: ids::generate_uuid(&mut self.rng),
                sim_time_ms: now,
                wall_time_ms: wall,
                account_id: account_id.to_string(),
                request_id: request_id.to_string(),
                correlation_id: correlation_id.clone(),
                depends_on: decision.depends_on.clone(),
                payload: Some(payload),
                ..Default::default()
            };
            if applied {
                working.note_applied(&event);
            } else {
                working.apply(&event);
            }
            events.push(event);
        }
        let mut reply = decision.reply;
        // A source read recorded by this very call learns its place in the log now.
        if let (Reply::Saga(r), Some(seq)) = (&mut reply, last) {
            if let Some(at) = r.source_read_at.as_mut() {
                if at.seq == 0 {
                    at.seq = seq;
                    at.region = self.region.clone();
                }
            }
        }
        (reply, last)
    }
}

/// The error of a write the node can no longer take.
pub(crate) fn unavailable(region: &str, why: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::Unavailable,
        format!("The region {region} is not accepting requests: {why}"),
    )
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) if d < Duration::MAX => tokio::time::sleep(d).await,
        _ => std::future::pending().await,
    }
}

async fn clock_moved(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The clock is gone; it can no longer move.
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
