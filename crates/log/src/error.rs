//! The log's error type.

/// Everything that can go wrong in the event log.
///
/// Write errors ([`LogError::Io`], [`LogError::Sled`] from an append) are fatal for the node:
/// the caller fail-stops and replays on restart (DESIGN.md §7).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file system operation failed (a segment write or fsync, the fsync of sled's data file,
    /// the directory, …).
    #[error("event log I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// sled reported an error.
    #[error("event log storage (sled) error: {0}")]
    Sled(#[from] sled::Error),

    /// A stored value is not a valid protobuf `Event`.
    #[error("event log: cannot decode the stored event at seq {seq}: {source}")]
    Decode {
        /// The key (seq) under which the bad value is stored.
        seq: u64,
        /// What prost said.
        #[source]
        source: prost::DecodeError,
    },

    /// The chain is broken: `seq` is the first seq that does not verify (missing, out of place,
    /// undecodable, wrong `prev_hash` or wrong `hash`).
    #[error("event log corrupt at seq {seq}: {reason}")]
    Corrupt {
        /// The first bad seq.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// A read found a different seq where the next one was expected (a hole below the head).
    #[error("event log not contiguous: expected seq {expected}, found {found}")]
    NonContiguous {
        /// The seq that should have come next.
        expected: u64,
        /// The seq that came instead (0 when the range ended early).
        found: u64,
    },

    /// The log directory is locked by another open log: another amisim process, or another
    /// log object in this one, uses it. Only one may write a log.
    #[error(
        "event log directory {} is locked: another amisim process (or another open log in this \
         one) uses it",
        dir.display()
    )]
    Locked {
        /// The locked directory.
        dir: std::path::PathBuf,
    },

    /// A lock was poisoned by a thread that panicked while holding it.
    #[error("event log lock poisoned: a thread panicked while holding it")]
    Poisoned,

    /// The directory holds no event log (neither sled's files nor a segment directory): an
    /// offline tool was pointed at the wrong place.
    #[error(
        "no event log in {}: neither a segment log (`log/`) nor a sled log (`db`)",
        dir.display()
    )]
    NoLog {
        /// The directory given.
        dir: std::path::PathBuf,
    },

    /// An earlier append failed; the log refuses further appends (fail-stop). Restart and replay.
    #[error("event log failed an earlier append and accepts no more writes; restart the node")]
    Failed,
}

impl<T> From<std::sync::PoisonError<T>> for LogError {
    fn from(_: std::sync::PoisonError<T>) -> Self {
        LogError::Poisoned
    }
}
