//! The in-memory log, for tests and experiments.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use amisim_proto::Event;
use tokio::sync::watch;

use crate::chain::{stamp, ChainVerifier};
use crate::{EventLog, Head, LogError};

/// An [`EventLog`] held in memory: same stamping, same chain, same head publication as
/// [`SledLog`](crate::SledLog), nothing on disk. For tests; lost when dropped.
///
/// [`MemoryLog::fail_appends`] injects a write failure, to test a caller's fail-stop path.
#[derive(Debug)]
pub struct MemoryLog {
    /// Serializes appends (stamping needs the head).
    writer: Mutex<()>,
    /// Every event, `events[i].seq == i + 1`, plus the head.
    state: RwLock<State>,
    head_tx: watch::Sender<u64>,
    /// Fail the next appends (test hook).
    fail_next: AtomicBool,
    /// An append failed: refuse further appends, like the durable log.
    failed: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    events: Vec<Event>,
    head: Head,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        let (head_tx, _) = watch::channel(0);
        MemoryLog {
            writer: Mutex::new(()),
            state: RwLock::new(State::default()),
            head_tx,
            fail_next: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }

    /// Test hook: when `fail` is true the next append fails with an I/O error (and, as with a
    /// real write failure, the log then refuses every later append with [`LogError::Failed`]).
    pub fn fail_appends(&self, fail: bool) {
        self.fail_next.store(fail, Ordering::SeqCst);
    }
}

impl EventLog for MemoryLog {
    fn head(&self) -> Head {
        // A poisoned lock cannot hold a half-applied append (the head is set last), so the
        // value inside is still the published head.
        match self.state.read() {
            Ok(state) => state.head,
            Err(poisoned) => poisoned.into_inner().head,
        }
    }

    fn append(&self, mut events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        let _writer = self.writer.lock()?;
        if self.failed.load(Ordering::SeqCst) {
            return Err(LogError::Failed);
        }
        if events.is_empty() {
            return Ok(events);
        }
        if self.fail_next.load(Ordering::SeqCst) {
            self.failed.store(true, Ordering::SeqCst);
            tracing::error!("memory log: injected append failure");
            return Err(LogError::Io(std::io::Error::other(
                "injected append failure (MemoryLog::fail_appends)",
            )));
        }
        let head = self.head();
        let new_head = stamp(head, &mut events);
        {
            let mut state = self.state.write()?;
            state.events.extend(events.iter().cloned());
            state.head = new_head;
        }
        self.head_tx.send_replace(new_head.seq);
        tracing::trace!(
            from = head.seq + 1,
            to = new_head.seq,
            "memory log: appended"
        );
        Ok(events)
    }

    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        let state = self.state.read()?;
        let from = from.max(1);
        let to = to.min(state.head.seq);
        if from > to {
            return Ok(Vec::new());
        }
        // Seqs are 1-based and dense: seq s lives at index s - 1. Both bounds are <= head, which
        // equals events.len(), so the conversion cannot overflow a usize on any real machine.
        let lo = usize::try_from(from - 1).map_err(|_| LogError::NonContiguous {
            expected: from,
            found: 0,
        })?;
        let hi = usize::try_from(to).map_err(|_| LogError::NonContiguous {
            expected: to,
            found: 0,
        })?;
        let slice = state.events.get(lo..hi).ok_or(LogError::NonContiguous {
            expected: from,
            found: 0,
        })?;
        Ok(slice.to_vec())
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    fn verify(&self) -> Result<Head, LogError> {
        let state = self.state.read()?;
        let mut verifier = ChainVerifier::new();
        for event in &state.events {
            verifier.push(event)?;
        }
        if verifier.head().seq != state.head.seq {
            return Err(verifier.missing(&format!("the head is {}", state.head.seq)));
        }
        Ok(verifier.head())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_failure_is_fail_stop_and_invisible() {
        let log = MemoryLog::new();
        log.append(vec![Event::default()]).unwrap();
        log.fail_appends(true);
        let err = log.append(vec![Event::default()]).unwrap_err();
        assert!(matches!(err, LogError::Io(_)));
        assert_eq!(log.head().seq, 1);
        assert_eq!(log.read_range(1, 10).unwrap().len(), 1);
        log.fail_appends(false);
        assert!(matches!(
            log.append(vec![Event::default()]),
            Err(LogError::Failed)
        ));
        assert_eq!(log.verify().unwrap().seq, 1);
    }
}
