//! Point-in-time reads: the projection as it was just after a given event.
//!
//! Folding a long log from seq 1 for every historical read would be slow, so [`Checkpoints`]
//! keeps the projection every N events (in memory: an `Arc<State>` each; `State` is made of
//! persistent maps, so checkpoints share structure and a clone is O(1)). A read folds from the
//! nearest checkpoint at or below its seq, and leaves new checkpoints behind on the way, so the
//! first read far back pays for the fold once. [`Checkpoints::warm`] folds the whole log up
//! front (the node does it in the background when its Audit service starts).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use amisim_core::State;
use amisim_log::{EventLog, LogError};

use super::time::Point;

/// Checkpoint interval by default.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 10_000;
/// Events read per `read_range` while folding.
const CHUNK: u64 = 4096;

/// Projection checkpoints of one region's log, by seq (always including the empty state at 0).
#[derive(Debug)]
pub struct Checkpoints {
    every: u64,
    states: Mutex<BTreeMap<u64, Arc<State>>>,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self::new(DEFAULT_CHECKPOINT_EVERY)
    }
}

impl Checkpoints {
    /// Checkpoints every `every` events (0 reads as the default).
    pub fn new(every: u64) -> Self {
        Checkpoints {
            every: if every == 0 {
                DEFAULT_CHECKPOINT_EVERY
            } else {
                every
            },
            states: Mutex::new(BTreeMap::from([(0, Arc::new(State::new()))])),
        }
    }

    /// How many checkpoints are kept (the empty state included).
    pub fn len(&self) -> usize {
        self.states.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Always false: the empty state is a checkpoint.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The projection just after event `seq` (clamped to the head). Blocking: call it off the
    /// async workers.
    pub fn state_at(&self, log: &dyn EventLog, seq: u64) -> Result<Arc<State>, LogError> {
        let seq = seq.min(log.head().seq);
        let (base_seq, base) = {
            let states = self.states.lock()?;
            let (s, st) = states
                .range(..=seq)
                .next_back()
                .map(|(s, st)| (*s, st.clone()))
                .unwrap_or((0, Arc::new(State::new())));
            (s, st)
        };
        if base_seq == seq {
            return Ok(base);
        }
        let mut state = (*base).clone();
        let mut next = base_seq + 1;
        while next <= seq {
            let to = seq.min(next.saturating_add(CHUNK - 1));
            let events = log.read_range(next, to)?;
            if events.len() as u64 != to - next + 1 {
                return Err(LogError::NonContiguous {
                    expected: next + events.len() as u64,
                    found: 0,
                });
            }
            for e in &events {
                state.apply(e);
                if e.seq % self.every == 0 {
                    self.states.lock()?.insert(e.seq, Arc::new(state.clone()));
                }
            }
            next = to + 1;
        }
        Ok(Arc::new(state))
    }

    /// Folds the whole log once, leaving a checkpoint every N events.
    pub fn warm(&self, log: &dyn EventLog) -> Result<(), LogError> {
        self.state_at(log, log.head().seq).map(|_| ())
    }
}

/// The seq a [`Point`] stands for in `log`: a seq as is (clamped to the head); a time, the
/// last event whose simulated time is at or before it (0 if none). Binary search: the
/// simulated times of a log never decrease.
pub fn resolve(log: &dyn EventLog, point: Point) -> Result<u64, LogError> {
    let head = log.head().seq;
    let t = match point {
        Point::Seq(s) => return Ok(s.min(head)),
        Point::SimTime(t) => t,
    };
    // Invariant: events <= lo are at or before t; events > hi are after t.
    let (mut lo, mut hi) = (0u64, head);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let at = log
            .read_range(mid, mid)?
            .first()
            .map(|e| e.sim_time_ms)
            .ok_or(LogError::NonContiguous {
                expected: mid,
                found: 0,
            })?;
        if at <= t {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// The first seq of a stream that starts at `point`: a seq as is (0 reads as 1); a time, the
/// first event at or after it (head + 1 if none yet).
pub fn first_seq_from(log: &dyn EventLog, point: Point) -> Result<u64, LogError> {
    match point {
        Point::Seq(s) => Ok(s.max(1)),
        Point::SimTime(0) => Ok(1),
        Point::SimTime(t) => Ok(resolve(log, Point::SimTime(t - 1))? + 1),
    }
}
