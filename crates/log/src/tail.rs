//! Live tails: every event from a seq on, catch-up then follow.

use std::collections::VecDeque;
use std::sync::Arc;

use amisim_proto::Event;
use futures::Stream;
use tokio::sync::watch;

use crate::{EventLog, LogError};

/// How many events a [`tail`] reads per [`EventLog::read_range`] call while catching up.
pub const TAIL_CHUNK: u64 = 1024;

/// A stream of every event of `log` from seq `from_seq` on (0 and 1 both mean the beginning),
/// in seq order, each exactly once.
///
/// It first catches up with [`EventLog::read_range`] in chunks of [`TAIL_CHUNK`] events. Then,
/// if `follow`, it waits on [`EventLog::subscribe_head`] and emits new events as their batches
/// become durable, forever; otherwise it ends once it has emitted the head it last saw. There is
/// no gap and no duplicate across the switch from catch-up to live: the stream subscribes before
/// it first reads the head and always resumes from the seq after the last one it emitted.
///
/// After an error item the stream ends. Reads run on Tokio's blocking pool, so the stream must
/// be polled inside a Tokio runtime (any flavour). The stream is `Unpin`.
pub fn tail(
    log: Arc<dyn EventLog>,
    from_seq: u64,
    follow: bool,
) -> impl Stream<Item = Result<Event, LogError>> + Send + Unpin + 'static {
    let head_rx = follow.then(|| log.subscribe_head());
    let state = Tail {
        log,
        next: from_seq.max(1),
        buffered: VecDeque::new(),
        head_rx,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut tail| async move {
        let item = tail.next_item().await?;
        if item.is_err() {
            tail.done = true;
        }
        Some((item, tail))
    }))
}

struct Tail {
    log: Arc<dyn EventLog>,
    /// The seq of the next event to read from the log (everything below is emitted or buffered).
    next: u64,
    buffered: VecDeque<Event>,
    /// `Some` when following.
    head_rx: Option<watch::Receiver<u64>>,
    done: bool,
}

impl Tail {
    async fn next_item(&mut self) -> Option<Result<Event, LogError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            // Mark the current head value as seen *before* reading the head: an append published
            // after this point wakes `changed()` below even if we miss it in `head()`.
            if let Some(rx) = self.head_rx.as_mut() {
                rx.mark_unchanged();
            }
            let head = self.log.head().seq;
            if self.next <= head {
                if let Err(e) = self.fill(head).await {
                    return Some(Err(e));
                }
                continue;
            }
            let rx = self.head_rx.as_mut()?;
            if rx.changed().await.is_err() {
                // The log is gone (cannot happen while we hold it); nothing more will come.
                return None;
            }
        }
    }

    /// Reads the next chunk (from `self.next`, at most up to `head`) into the buffer.
    async fn fill(&mut self, head: u64) -> Result<(), LogError> {
        let from = self.next;
        let to = head.min(from.saturating_add(TAIL_CHUNK - 1));
        let log = Arc::clone(&self.log);
        let events = tokio::task::spawn_blocking(move || log.read_range(from, to))
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(format!("tail read task: {e}"))))??;
        if events.is_empty() {
            return Err(LogError::NonContiguous {
                expected: from,
                found: 0,
            });
        }
        if let Some((expected, event)) = (from..)
            .zip(&events)
            .find(|(expected, event)| event.seq != *expected)
        {
            return Err(LogError::NonContiguous {
                expected,
                found: event.seq,
            });
        }
        self.next = from + events.len() as u64;
        self.buffered.extend(events);
        tracing::trace!(from, to = self.next - 1, "tail read a chunk");
        Ok(())
    }
}
