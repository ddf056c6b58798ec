//! The single writer of a region: the only code that decides commands, appends to the log and
//! changes the state.
//!
//! It runs on a dedicated OS thread (with a private current-thread Tokio runtime for its timers
//! and channels) because [`EventLog::append`] blocks on an fsync; nothing else runs on that
//! thread, so blocking it delays only the next batch. One round:
//!
//! 1. Wait for a command, for the next timer's due time, or for the clock to be moved by hand.
//! 2. Take up to `max_batch` queued commands.
//! 3. Decide them in order against a working copy of the state (a `Tick` first if a timer is
//!    due), applying each decision's events to the copy so later commands see earlier ones.
//!    An error is remembered as that command's answer and writes nothing.
//! 4. Append every event of the batch with one [`EventLog::append`] (group commit: one flush).
//! 5. Apply the stamped events to the state and publish it (readers see it at once).
//! 6. Only then answer each command, with the seq of its last event (or the head).
//!
//! A failed append is fatal (DESIGN.md §7, fail-stop): every command of the batch gets
//! `InternalError` (its outcome is unknown until a restart replays the log), the queue is closed
//! and drained with `Unavailable`, and the thread ends with [`NodeStatus::Failed`].

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

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
    /// The writer's own copy of the state: always equal to what is published.
    pub state: State,
    pub rng: ChaCha8Rng,
    pub rx: mpsc::Receiver<Request>,
    pub shutdown: watch::Receiver<bool>,
    pub status: watch::Sender<NodeStatus>,
    /// Timers that a tick already saw due but that stayed pending (a domain bug: their firing
    /// produced no event). Skipped when deciding whether to tick and when to wake, so one of
    /// them can never make the writer spin.
    pub stale: HashSet<(u64, Timer)>,
}

/// A decided command waiting for the group commit.
struct Pending {
    reply: Option<oneshot::Sender<Outcome>>,
    /// The reply and the index (in the batch's events) of the command's last event.
    result: Result<(Reply, Option<usize>), Ec2Error>,
}

impl Writer {
    /// Runs the writer to its end on the current thread.
    pub fn run_blocking(self) {
        let status = self.status.clone();
        let region = self.region.clone();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let why = format!("cannot build the writer's runtime: {e}");
                tracing::error!(region = %region, error = %e, "region writer cannot start");
                drop(self);
                status.send_replace(NodeStatus::Failed(why));
                return;
            }
        };
        let end = rt.block_on(self.run());
        // `run` consumed the writer: the log handle is released before anyone hears of the end.
        tracing::info!(region = %region, status = ?end, "region writer stopped");
        status.send_replace(end);
    }

    async fn run(mut self) -> NodeStatus {
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
            if let Err(why) = self.round(batch) {
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

    /// Decides, commits, publishes and answers one batch. `Err` is a storage failure: the batch
    /// has been answered and the node must stop.
    fn round(&mut self, batch: Vec<Request>) -> Result<(), String> {
        let now = self.clock.now_ms().max(self.state.last_sim_time_ms);
        let tick_due = self.next_wake().is_some_and(|due| due <= now);
        if batch.is_empty() && !tick_due {
            return Ok(());
        }
        let wall = wall_now_ms();
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
            let result = self.decide_one(
                &mut working,
                &mut events,
                ids::SYSTEM_ACCOUNT,
                "",
                Command::Tick,
                now,
                wall,
            );
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

        let first_seq = self.state.seq + 1;
        let stamped = if events.is_empty() {
            Vec::new()
        } else {
            let n = events.len();
            let appended = self.log.append(events).map_err(|e| e.to_string());
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
            match appended {
                Ok(s) => s,
                Err(why) => {
                    tracing::error!(
                        region = %self.region,
                        error = %why,
                        "event log append failed: region node stops (fail-stop); restart it to replay the log"
                    );
                    self.status.send_replace(NodeStatus::Failed(why.clone()));
                    for p in pending {
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
        };

        for e in &stamped {
            self.state.apply(e);
        }
        if !stamped.is_empty() {
            self.published.store(Arc::new(self.state.clone()));
        }
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

        let head = self.state.seq;
        for p in pending {
            let Some(tx) = p.reply else { continue };
            let outcome = p.result.map(|(mut reply, last)| {
                let seq = last
                    .and_then(|i| stamped.get(i))
                    .map_or(head, |e: &Event| e.seq);
                // A source read recorded by this very call learns its place in the log now.
                if let Reply::Saga(r) = &mut reply {
                    if let Some(at) = r.source_read_at.as_mut() {
                        if at.seq == 0 && last.is_some() {
                            at.seq = seq;
                            at.region = self.region.clone();
                        }
                    }
                }
                (reply, seq)
            });
            // The caller may have gone away (cancelled request); its write stands.
            let _ = tx.send(outcome);
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
    ) -> Result<(Reply, Option<usize>), Ec2Error> {
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
        let mut last = None;
        let correlation_id = decision.correlation_id.unwrap_or_default();
        for payload in decision.events {
            working.apply_payload(&payload);
            last = Some(events.len());
            events.push(Event {
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
            });
        }
        Ok((decision.reply, last))
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
