//! What the durable logs share: the steps of an append after the storage write (fail-stop,
//! publication), checking the events of one stored entry against what its key (sled) or record
//! header (segments) says, reading a range, verifying the whole chain, learning the head, and
//! fsyncing directories.
//!
//! Both backends turn their storage into one iterator of [`Stored`] results in seq order; the
//! rules for what a hole, a bad entry or a short log means live here once, so both report the
//! same first bad seq for the same damage.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amisim_proto::Event;
use tokio::sync::watch;

use crate::chain::ChainVerifier;
use crate::{Head, LogError};

/// How long an open waits for a directory lock held by a log that is being dropped (in this
/// process or another) before giving up.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Why a stored entry could not be read.
#[derive(Debug)]
pub(crate) enum Stored {
    /// The storage failed (I/O, sled): not a statement about the log's content.
    Storage(LogError),
    /// The entry is not what its key or header says (a corrupt or tampered log). `seq` is the
    /// first seq the entry gets wrong (0 when it cannot be told).
    Bad { seq: u64, reason: String },
}

impl Stored {
    /// The error a reader returns for it.
    pub(crate) fn into_error(self) -> LogError {
        match self {
            Stored::Storage(e) => e,
            Stored::Bad { seq, reason } => LogError::Corrupt { seq, reason },
        }
    }
}

impl From<LogError> for Stored {
    fn from(e: LogError) -> Self {
        Stored::Storage(e)
    }
}

/// Checks the decoded events of one stored entry (named `what` in messages, e.g. "batch 7")
/// against the seqs its key or header promises: a non-empty run `first..=last`, consecutive and
/// in order. `first` is `None` when the entry names only its last seq (a sled batch key); the
/// run then starts at the first event's seq.
///
/// The error names the first seq the entry gets wrong: the first event out of place, the first
/// seq missing at the end of a run that should start at `first`, or `last` for a run that does
/// not end where a key says.
pub(crate) fn check_run(
    events: &[Event],
    what: &str,
    first: Option<u64>,
    last: u64,
) -> Result<(), Stored> {
    let Some(start) = first.or_else(|| events.first().map(|e| e.seq)) else {
        return Err(Stored::Bad {
            seq: last,
            reason: format!("{what} is empty"),
        });
    };
    if events.is_empty() {
        return Err(Stored::Bad {
            seq: start,
            reason: format!("{what} is empty"),
        });
    }
    for (i, e) in events.iter().enumerate() {
        let expected = start.saturating_add(i as u64);
        if first.is_some() && expected > last {
            return Err(Stored::Bad {
                seq: expected,
                reason: format!(
                    "{what} holds more events than seqs {start}..={last} (seq {} at position {i})",
                    e.seq
                ),
            });
        }
        if e.seq != expected {
            return Err(Stored::Bad {
                seq: expected,
                reason: format!("{what} holds seq {} where {expected} belongs", e.seq),
            });
        }
    }
    let end = start.saturating_add(events.len() as u64 - 1);
    if end != last {
        // A header that names its first seq: the first seq missing from the run is the bad one.
        // A key that names only the last: the key is what does not fit.
        let seq = if first.is_some() { end + 1 } else { last };
        return Err(Stored::Bad {
            seq,
            reason: format!("{what} ends at seq {end}, expected {last}"),
        });
    }
    Ok(())
}

/// An append of `events` after `head`, once the caller holds its writer lock: refused with
/// [`LogError::Failed`] if the log has failed, given back as is if empty; otherwise `write`
/// stamps the events and makes them durable, `publish` makes the new head (with what `write`
/// returned) visible to readers, then the head watch learns it, and the stamped events come
/// back. Any error marks the log failed (fail-stop) and publishes nothing.
pub(crate) fn append_durably<R>(
    dir: &Path,
    failed: &AtomicBool,
    head_tx: &watch::Sender<u64>,
    head: Head,
    mut events: Vec<Event>,
    write: impl FnOnce(&mut [Event]) -> Result<(R, Head), LogError>,
    publish: impl FnOnce(R, Head) -> Result<(), LogError>,
) -> Result<Vec<Event>, LogError> {
    if failed.load(Ordering::SeqCst) {
        return Err(LogError::Failed);
    }
    if events.is_empty() {
        return Ok(events);
    }
    let started = Instant::now();
    let (written, new_head) = match write(&mut events) {
        Ok(written) => written,
        Err(e) => {
            failed.store(true, Ordering::SeqCst);
            tracing::error!(
                dir = %dir.display(),
                from = head.seq + 1,
                to = head.seq + events.len() as u64,
                error = %e,
                "event log append failed; the log accepts no more writes"
            );
            return Err(e);
        }
    };
    if let Err(e) = publish(written, new_head) {
        failed.store(true, Ordering::SeqCst);
        return Err(e);
    }
    head_tx.send_replace(new_head.seq);
    tracing::trace!(
        from = head.seq + 1,
        to = new_head.seq,
        micros = started.elapsed().as_micros() as u64,
        "event log append durable"
    );
    Ok(events)
}

/// The events `from..=to`, clamped to the published head `head_seq` (`from` 0 reads as 1; an
/// empty range is an empty vector), out of what `stored(from, to)` yields: the stored events
/// from the entry holding `from` on. A hole is [`LogError::NonContiguous`].
pub(crate) fn read_stored<I: Iterator<Item = Result<Event, Stored>>>(
    head_seq: u64,
    from: u64,
    to: u64,
    stored: impl FnOnce(u64, u64) -> Result<I, LogError>,
) -> Result<Vec<Event>, LogError> {
    let from = from.max(1);
    let to = to.min(head_seq);
    if from > to {
        return Ok(Vec::new());
    }
    let stored = stored(from, to)?;
    let capacity = usize::try_from(to - from + 1).unwrap_or(0).min(4096);
    let mut events = Vec::with_capacity(capacity);
    let mut expected = from;
    for item in stored {
        if expected > to {
            break;
        }
        let event = item.map_err(Stored::into_error)?;
        if event.seq < from {
            // The part of the first entry before `from`.
            continue;
        }
        if event.seq != expected {
            return Err(LogError::NonContiguous {
                expected,
                found: event.seq,
            });
        }
        events.push(event);
        expected += 1;
    }
    if expected != to + 1 {
        return Err(LogError::NonContiguous { expected, found: 0 });
    }
    Ok(events)
}

/// Verifies the stored chain from seq 1 (to `upto` if given, else to the last stored event) and
/// returns its head, or [`LogError::Corrupt`] naming the first bad seq.
pub(crate) fn verify_stored(
    stored: impl Iterator<Item = Result<Event, Stored>>,
    upto: Option<u64>,
) -> Result<Head, LogError> {
    let started = Instant::now();
    let mut verifier = ChainVerifier::new();
    for item in stored {
        let event = match item {
            Ok(event) => event,
            Err(Stored::Storage(e)) => return Err(e),
            Err(Stored::Bad { seq, reason }) => {
                // A bad entry where the chain expected more is the chain's first bad seq.
                let seq = if seq == 0 {
                    verifier.next_seq()
                } else {
                    seq.min(verifier.next_seq())
                };
                return Err(LogError::Corrupt { seq, reason });
            }
        };
        if upto.is_some_and(|u| event.seq > u) {
            // Beyond the published head (a batch being written): not part of this check.
            break;
        }
        if event.seq != verifier.next_seq() {
            return Err(verifier.missing(&format!("the next stored event is seq {}", event.seq)));
        }
        verifier.push_owned(event)?;
    }
    if let Some(upto) = upto {
        if verifier.head().seq < upto {
            return Err(verifier.missing(&format!("the log ends before the head {upto}")));
        }
    }
    tracing::debug!(
        head_seq = verifier.head().seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "event log chain verified"
    );
    Ok(verifier.head())
}

/// The head a stored event makes (its seq and hash), without verifying anything else.
pub(crate) fn head_of(event: &Event) -> Result<Head, LogError> {
    let seq = event.seq;
    let hash: [u8; 32] = event
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| LogError::Corrupt {
            seq,
            reason: format!("hash has {} bytes, expected 32", event.hash.len()),
        })?;
    Ok(Head { seq, hash })
}

/// fsyncs a directory (its entries). A no-op where directories cannot be opened as files.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seqs: &[u64]) -> Vec<Event> {
        seqs.iter()
            .map(|&seq| Event {
                seq,
                ..Event::default()
            })
            .collect()
    }

    fn bad_seq(r: Result<(), Stored>) -> u64 {
        match r {
            Err(Stored::Bad { seq, .. }) => seq,
            other => panic!("expected Bad, got {other:?}"),
        }
    }

    #[test]
    fn a_run_must_match_its_header() {
        assert!(check_run(&at(&[5, 6, 7]), "r", Some(5), 7).is_ok());
        assert_eq!(bad_seq(check_run(&at(&[]), "r", Some(5), 7)), 5);
        assert_eq!(bad_seq(check_run(&at(&[5, 7, 8]), "r", Some(5), 7)), 6);
        assert_eq!(bad_seq(check_run(&at(&[6, 7, 8]), "r", Some(5), 7)), 5);
        // Too few: the first missing seq; too many: the first one beyond the header.
        assert_eq!(bad_seq(check_run(&at(&[5, 6]), "r", Some(5), 7)), 7);
        assert_eq!(bad_seq(check_run(&at(&[5, 6, 7, 8]), "r", Some(5), 7)), 8);
    }

    #[test]
    fn a_run_must_end_at_its_key() {
        assert!(check_run(&at(&[5, 6, 7]), "b", None, 7).is_ok());
        assert_eq!(bad_seq(check_run(&at(&[]), "b", None, 7)), 7);
        assert_eq!(bad_seq(check_run(&at(&[5, 6]), "b", None, 7)), 7);
        assert_eq!(bad_seq(check_run(&at(&[5, 6, 7, 8]), "b", None, 7)), 7);
        assert_eq!(bad_seq(check_run(&at(&[5, 5]), "b", None, 6)), 6);
    }
}
