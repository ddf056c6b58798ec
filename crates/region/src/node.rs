//! [`RegionNode`]: one region's state, its writer and its clock, independent of gRPC.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use amisim_chaos::{Clock, ScaledClock};
use amisim_core::{Accounts, Answer, Command, Ec2Error, Membership, Query, ReadCtx, Reply, State};
use amisim_log::{ChainVerifier, EventLog, Head, LogError};
use arc_swap::ArcSwap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{CheckpointStore, Checkpointer};
use crate::writer::{unavailable, NodeStatus, Request, Writer, WriterStats, WriterStatsSnapshot};
use crate::{RegionConfig, RegionError, StorageConfig};

/// Events read per `read_range` call while replaying.
const REPLAY_CHUNK: u64 = 4096;

/// A running region: serves reads from the published state and funnels every write through
/// its single writer thread. Cheap to share as `Arc<RegionNode>`.
pub struct RegionNode {
    region: String,
    seed: u64,
    clock: Arc<dyn Clock>,
    log: Arc<dyn EventLog>,
    published: Arc<ArcSwap<State>>,
    commands: mpsc::Sender<Request>,
    shutdown: watch::Sender<bool>,
    status: watch::Receiver<NodeStatus>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The accounts file: `Some` means bearer-token authentication (see [`RegionConfig`]).
    accounts: Option<Arc<Accounts>>,
    /// Organization membership for reads and decisions (empty without an accounts file).
    membership: Arc<Membership>,
    /// The audit trail (signed digests, as-of checkpoints); see [`RegionNode::attach_audit`].
    audit: OnceLock<Arc<crate::audit::AuditTrail>>,
    /// The request recorder (ADR 0007); see [`RegionNode::attach_requests`].
    requests: OnceLock<Arc<crate::audit::RequestRecorder>>,
    /// Draws the request id of a call that brings none ([`RegionNode::fresh_request_id`]): from
    /// the seed, so a replayed run writes the same `request_id`s into its events (STYLE.md 9).
    request_ids: Mutex<ChaCha8Rng>,
    /// The background checkpoint writer, when the node has a checkpoint directory.
    checkpointer: Mutex<Option<Checkpointer>>,
    /// The writer's batch and append counters.
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for RegionNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionNode")
            .field("region", &self.region)
            .field("seed", &self.seed)
            .field("head_seq", &self.head_seq())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl RegionNode {
    /// Restores the state from `log` (see [`restore`]: the newest valid checkpoint of
    /// `cfg.storage` plus the log's tail, the chain verified over what is folded) and starts the
    /// node with a [`ScaledClock`] at `cfg.time_scale`, starting no earlier than the last logged
    /// event (so a restarted node never goes back in time).
    pub fn start(
        cfg: RegionConfig,
        log: Arc<dyn EventLog>,
    ) -> Result<Arc<RegionNode>, RegionError> {
        let scale = cfg.time_scale;
        Self::start_with_clock(cfg, log, move |last_sim_ms| {
            Arc::new(ScaledClock::new(scale, last_sim_ms))
        })
    }

    /// As [`RegionNode::start`], with the clock made by `make_clock` from the sim time of the
    /// last logged event (0 for an empty log); e.g. a [`amisim_chaos::VirtualClock`] for
    /// reproducible experiments. `cfg.time_scale` is then unused.
    pub fn start_with_clock(
        cfg: RegionConfig,
        log: Arc<dyn EventLog>,
        make_clock: impl FnOnce(u64) -> Arc<dyn Clock>,
    ) -> Result<Arc<RegionNode>, RegionError> {
        cfg.validate()?;
        let (state, checkpoint_seq) = restore(&cfg.region, &cfg.storage, log.as_ref())?;
        let clock = make_clock(state.last_sim_time_ms);
        let seed = cfg.seed.unwrap_or_else(rand::random);
        tracing::info!(
            region = %cfg.region,
            seed,
            head_seq = state.seq,
            sim_time_ms = clock.now_ms(),
            timers = state.timers.len(),
            "region node starting (replay with this seed to reproduce ids)"
        );
        let rng = node_rng(seed, state.seq);
        let request_ids = Mutex::new(request_id_rng(seed, state.seq));
        let membership = Arc::new(
            cfg.accounts
                .as_ref()
                .map(|a| a.membership().clone())
                .unwrap_or_default(),
        );
        let published = Arc::new(ArcSwap::from_pointee(state.clone()));
        let stats = Arc::new(WriterStats::default());
        let checkpointer = match &cfg.storage.checkpoint_dir {
            Some(dir) => Some(
                Checkpointer::start(
                    CheckpointStore::new(dir, &cfg.region),
                    cfg.storage.checkpoint_every,
                    log.clone(),
                    published.clone(),
                    checkpoint_seq,
                )
                .map_err(RegionError::Spawn)?,
            ),
            None => None,
        };
        let (commands, rx) = mpsc::channel(cfg.max_batch.saturating_mul(4).max(1024));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(NodeStatus::Running);
        let writer = Writer {
            region: cfg.region.clone(),
            config: cfg.core,
            membership: membership.clone(),
            max_batch: cfg.max_batch,
            clock: clock.clone(),
            log: log.clone(),
            published: published.clone(),
            state,
            rng,
            rx,
            shutdown: shutdown_rx,
            status: status_tx,
            stale: HashSet::new(),
            stats: stats.clone(),
        };
        let handle = crate::spawn_node_thread(format!("amisim-writer-{}", cfg.region), move || {
            writer.run_blocking()
        })
        .map_err(RegionError::Spawn)?;
        Ok(Arc::new(RegionNode {
            region: cfg.region,
            seed,
            clock,
            log,
            published,
            commands,
            shutdown,
            status,
            writer: Mutex::new(Some(handle)),
            accounts: cfg.accounts,
            membership,
            audit: OnceLock::new(),
            requests: OnceLock::new(),
            request_ids,
            checkpointer: Mutex::new(checkpointer),
            stats,
        }))
    }

    /// The region this node owns.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The seed of the node's RNG.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A request id for a call that brings none (`x-amisim-request-id`), drawn from the node's
    /// seeded stream of request ids rather than the OS, so the same calls in the same order get
    /// the same ids in every replay of the seed.
    pub fn fresh_request_id(&self) -> String {
        let mut rng = self
            .request_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        amisim_core::ids::generate_uuid(&mut *rng)
    }

    /// The seq of the last event in the published state (durable, visible to reads).
    pub fn head_seq(&self) -> u64 {
        self.published.load().seq
    }

    /// The published state: every acknowledged write, never a half batch. O(1).
    pub fn state(&self) -> Arc<State> {
        self.published.load_full()
    }

    /// Simulated now, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The node's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The node's event log.
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    /// The accounts file the node authenticates with (`None`: `x-amisim-account` mode).
    pub fn accounts(&self) -> Option<&Arc<Accounts>> {
        self.accounts.as_ref()
    }

    /// Organization membership (org/OU launch permissions).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Attaches the node's audit trail (at most once, before serving; e.g. the one
    /// [`crate::audit::open_signed`] made with the log the node runs on). Returns false if the
    /// node already has one.
    pub fn attach_audit(&self, trail: Arc<crate::audit::AuditTrail>) -> bool {
        self.audit.set(trail).is_ok()
    }

    /// The node's audit trail (an unsigned one if none was attached).
    pub fn audit(&self) -> Arc<crate::audit::AuditTrail> {
        self.audit
            .get_or_init(|| Arc::new(crate::audit::AuditTrail::new()))
            .clone()
    }

    /// Attaches the node's request recorder (at most once, before serving; e.g. one on a
    /// `SledLog` in `<data>/requests`). Returns false if the node already has one.
    pub fn attach_requests(&self, recorder: Arc<crate::audit::RequestRecorder>) -> bool {
        self.requests.set(recorder).is_ok()
    }

    /// The node's request recorder; without an attached one, an in-memory request log that
    /// records reads too (a node on a `MemoryLog`). `None` only if its thread cannot start.
    pub fn requests(&self) -> Option<Arc<crate::audit::RequestRecorder>> {
        if let Some(r) = self.requests.get() {
            return Some(r.clone());
        }
        let log: Arc<dyn EventLog> = Arc::new(amisim_log::MemoryLog::new());
        let options = crate::audit::RecorderOptions {
            seed: Some(self.seed),
            ..crate::audit::RecorderOptions::default()
        };
        match crate::audit::RequestRecorder::start_with(&self.region, log, options) {
            Ok(r) => Some(self.requests.get_or_init(|| r).clone()),
            Err(e) => {
                tracing::error!(region = %self.region, error = %e,
                    "cannot start the request recorder; API calls are not recorded");
                None
            }
        }
    }

    /// The writer's counters: commands per round (how well group commit batches), events per
    /// append and the time appends take (flush + fsync).
    pub fn writer_stats(&self) -> WriterStatsSnapshot {
        self.stats.snapshot()
    }

    /// What the writer is doing now.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change (health checks follow it).
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Decides `command` as `account_id`, makes its events durable, and answers with the reply
    /// and the seq of its last event (the head if it wrote nothing): `<region>:<seq>` is the
    /// consistency token. The published state already includes the write when this returns.
    ///
    /// The account is not checked here (the gRPC edge does); `system` acts as timers do.
    pub async fn execute(
        &self,
        account_id: &str,
        request_id: &str,
        command: Command,
    ) -> Result<(Reply, u64), Ec2Error> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            account_id: account_id.to_string(),
            request_id: request_id.to_string(),
            command,
            reply,
        };
        if self.commands.send(request).await.is_err() {
            return Err(self.refusal());
        }
        match rx.await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.refusal()),
        }
    }

    /// Answers a read from the published state, at the clock's now. Never waits for the writer.
    pub fn query(&self, account_id: &str, query: Query) -> Result<Answer, Ec2Error> {
        let state = self.published.load();
        let ctx = ReadCtx::new(
            &self.region,
            account_id,
            self.clock.now_ms().max(state.last_sim_time_ms),
        )
        .with_membership(&self.membership);
        catch_unwind(AssertUnwindSafe(|| amisim_core::query(&state, &ctx, query))).unwrap_or_else(
            |_| {
                tracing::error!(region = %self.region, "the domain panicked answering a read");
                Err(Ec2Error::internal("An internal error has occurred"))
            },
        )
    }

    /// Stops the writer cleanly: commands already queued are decided and answered, later ones
    /// get `Unavailable`. Returns when the writer thread has ended and released the log. Reads
    /// keep working from the last published state.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let mut status = self.status.clone();
        // An Err means the writer is gone already.
        let _ = status.wait_for(|s| *s != NodeStatus::Running).await;
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            // The thread has reported its end; joining only reaps it.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // A checkpoint at the final head: the next start folds nothing.
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = checkpointer {
            let _ = tokio::task::spawn_blocking(move || c.finish()).await;
        }
        // Records of the calls answered so far reach the request log before the process ends.
        if let Some(recorder) = self.requests.get() {
            recorder.flush().await;
        }
        // A clean stop signs the final head, so a tail cut off later is detected.
        if let Some(signer) = self.audit.get().and_then(|a| a.signer().cloned()) {
            let log = self.log.clone();
            let sealed = tokio::task::spawn_blocking(move || signer.seal(log.as_ref())).await;
            if let Ok(Err(e)) = sealed {
                tracing::error!(region = %self.region, error = %e, "cannot sign the final audit digest");
            }
        }
    }

    /// Why a write cannot be taken.
    fn refusal(&self) -> Ec2Error {
        let why = match &*self.status.borrow() {
            NodeStatus::Running | NodeStatus::Stopped => "the node is shutting down".to_string(),
            NodeStatus::Failed(e) => format!("the node stopped after a storage error ({e})"),
        };
        unavailable(&self.region, &why)
    }
}

impl Drop for RegionNode {
    fn drop(&mut self) {
        // Let the writer finish what is queued and end, even if nobody called `shutdown`.
        self.shutdown.send_replace(true);
    }
}

/// The state at the log's head, as a node starts: from the newest checkpoint in
/// `storage.checkpoint_dir` that fits the log, folding only the events after it, else from an
/// empty state. Either way the hash chain is verified over every event folded, starting from
/// the checkpoint's hash at its seq (so the checkpoint must belong to this very log), in the
/// same pass that folds them. A checkpoint that cannot be used (damaged, another version or
/// region, beyond the head, not on this chain) is skipped with a warning.
///
/// Returns the state and the seq of the checkpoint it started from (0: none).
pub fn restore(
    region: &str,
    storage: &StorageConfig,
    log: &dyn EventLog,
) -> Result<(State, u64), RegionError> {
    let head = log.head();
    if let Some(dir) = &storage.checkpoint_dir {
        let store = CheckpointStore::new(dir, region);
        let found = store.list().unwrap_or_else(|e| {
            tracing::warn!(region, dir = %dir.display(), error = %e,
                "cannot list the checkpoints; folding the whole log");
            Vec::new()
        });
        for (seq, path) in found {
            let skip = |why: &str| {
                tracing::warn!(region, path = %path.display(), reason = why,
                    "ignoring a projection checkpoint");
            };
            if seq > head.seq {
                skip(&format!(
                    "it is at seq {seq}, beyond the log's head {}",
                    head.seq
                ));
                continue;
            }
            let started = std::time::Instant::now();
            let loaded = match store.read(&path) {
                Ok(l) => l,
                Err(why) => {
                    skip(&why);
                    continue;
                }
            };
            let loaded_ms = started.elapsed().as_millis() as u64;
            match fold_verified(region, log, loaded.state, loaded.head, head) {
                Ok(state) => {
                    tracing::info!(
                        region,
                        checkpoint_seq = loaded.head.seq,
                        head_seq = head.seq,
                        load_ms = loaded_ms,
                        total_ms = started.elapsed().as_millis() as u64,
                        "state restored from a checkpoint and the log's tail"
                    );
                    return Ok((state, loaded.head.seq));
                }
                Err(e) => skip(&format!("the log after it does not fit: {e}")),
            }
        }
    }
    let state = fold_verified(region, log, State::new(), Head::EMPTY, head)?;
    Ok((state, 0))
}

/// The events from `next` on, at most [`REPLAY_CHUNK`] and none past `to`; none at all is a gap.
fn read_chunk(
    log: &dyn EventLog,
    next: u64,
    to: u64,
) -> Result<Vec<amisim_proto::Event>, RegionError> {
    let end = to.min(next.saturating_add(REPLAY_CHUNK - 1));
    let events = log.read_range(next, end)?;
    if events.is_empty() {
        return Err(RegionError::Gap {
            expected: next,
            found: 0,
        });
    }
    Ok(events)
}

/// `e` must be event `next` of this region's log.
fn check_next(region: &str, e: &amisim_proto::Event, next: u64) -> Result<(), RegionError> {
    if e.seq != next {
        return Err(RegionError::Gap {
            expected: next,
            found: e.seq,
        });
    }
    if e.region != region {
        return Err(RegionError::WrongRegion {
            expected: region.to_string(),
            found: e.region.clone(),
            seq: e.seq,
        });
    }
    Ok(())
}

/// Folds the events after `from` up to `to` into `state`, verifying the chain as it goes: the
/// first event must link to `from.hash`, and the chain must end exactly at `to`.
fn fold_verified(
    region: &str,
    log: &dyn EventLog,
    mut state: State,
    from: Head,
    to: Head,
) -> Result<State, RegionError> {
    let mut verifier = ChainVerifier::resume(from);
    let mut next = from.seq + 1;
    while next <= to.seq {
        for e in read_chunk(log, next, to.seq)? {
            check_next(region, &e, next)?;
            state.apply(&e);
            verifier.push_owned(e)?;
            next += 1;
        }
    }
    if verifier.head() != to {
        return Err(RegionError::Log(LogError::Corrupt {
            seq: to.seq,
            reason: format!(
                "the verified chain ends at {}, the log's head is {to}",
                verifier.head()
            ),
        }));
    }
    Ok(state)
}

/// Folds the whole log into a fresh state, checking that it is gapless and this region's.
pub fn replay(region: &str, log: &dyn EventLog) -> Result<State, RegionError> {
    replay_to(region, log, log.head().seq)
}

/// Folds events `1..=to` of the log into a fresh state (same checks as [`replay`]).
pub fn replay_to(region: &str, log: &dyn EventLog, to: u64) -> Result<State, RegionError> {
    let mut state = State::new();
    let mut next = 1;
    while next <= to {
        for e in &read_chunk(log, next, to)? {
            check_next(region, e, next)?;
            state.apply(e);
            next += 1;
        }
    }
    Ok(state)
}

/// The writer's RNG: keyed by the seed and the head seq at start, so a restarted node (same
/// seed, longer log) never replays the id sequence of its previous life. The 32-byte ChaCha key
/// is the two numbers side by side, so distinct pairs give independent streams.
fn node_rng(seed: u64, head_seq: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&head_seq.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The stream of request ids: as [`node_rng`], with a third key word so it never shares draws
/// with the writer's ids.
fn request_id_rng(seed: u64, head_seq: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&head_seq.to_le_bytes());
    key[16..24].copy_from_slice(b"requests");
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn request_ids_replay_from_the_seed() {
        let a = request_id_rng(7, 0).next_u64();
        assert_eq!(a, request_id_rng(7, 0).next_u64());
        assert_ne!(a, request_id_rng(8, 0).next_u64());
        assert_ne!(a, node_rng(7, 0).next_u64());
    }

    #[test]
    fn the_rng_depends_on_seed_and_head() {
        let a = node_rng(7, 0).next_u64();
        assert_eq!(a, node_rng(7, 0).next_u64());
        assert_ne!(a, node_rng(7, 1).next_u64());
        assert_ne!(a, node_rng(8, 0).next_u64());
    }
}
