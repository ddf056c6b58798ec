//! The event log of one amisim region (DESIGN.md §3): an append-only sequence of
//! [`Event`]s numbered `1, 2, 3, …` with no gaps, linked by a SHA-256 hash chain.
//!
//! # Job
//!
//! Every change a region makes is an event. The region's writer task appends the events a command
//! produced as one batch ([`EventLog::append`]), and only answers the client once that batch is
//! durable. Everything else is a reader: projections replay the log with
//! [`EventLog::read_range`], the coordinator follows it live with [`tail`], and the audit tooling
//! checks it with [`EventLog::verify`] (or with [`verify_events`] / [`hash_event`] over events it
//! got elsewhere).
//!
//! # Stamping and the hash chain
//!
//! The caller fills every envelope field except `seq`, `prev_hash` and `hash`; the log assigns
//! `seq = head + 1, head + 2, …`, sets `prev_hash` to the hash of the event before (32 zero bytes
//! for seq 1) and `hash = SHA-256(prev_hash || protobuf encoding of the event with hash empty)`
//! (see [`hash_event`]). Event messages use no protobuf maps, so the encoding is deterministic.
//!
//! # Layout
//!
//! The durable log of a region directory is a [`DiskLog`]: [`DiskLog::open`] opens whichever
//! backend the directory holds and creates new logs in [`SledOptions::new_layout`] (default
//! [`Layout::Segments`]). A log keeps the [`Layout`] it was created with.
//!
//! - [`SegmentLog`] ([`Layout::Segments`], the default for new logs): plain segment files in
//!   `<dir>/`[`SEGMENTS_DIR`], one record per append. A record is a 20-byte header (payload
//!   length, event count, first seq, CRC-32) and an [`amisim_proto::EventBatch`] of the append's
//!   full, stamped [`Event`]s (hash included); the format is documented byte by byte in
//!   [`SegmentLog`]. An in-memory index of the record headers finds a seq.
//! - [`SledLog`]: logs created before segments, one sled database per region directory, kept
//!   readable and appendable. [`Layout::Batched`] (ADR 0011): one tree ([`BATCHES_TREE`]) whose
//!   keys are the big-endian `u64` seq of a value's last event (so key order is seq order) and
//!   whose values are [`amisim_proto::EventBatch`]es of a run of one append, at most ~7 KiB
//!   each. A log created before batches is [`Layout::PerEvent`]: tree [`EVENTS_TREE`], key =
//!   seq, value = one event.
//!
//! Either way the stored events are protobuf: any language with the `.proto` files can read
//! them; stored bytes are never reinterpreted.
//!
//! - [`MemoryLog`]: the same contract in memory, for tests and experiments.
//! - [`tail`]: a stream of every event from a seq on, catch-up then live, for any [`EventLog`].
//! - [`hash_event`], [`verify_events`], [`ChainVerifier`]: the chain rules, shared by the logs
//!   and by the audit tooling.
//!
//! # Durability
//!
//! Every durable log makes a whole append durable with **one** sync (group commit), and only
//! then publishes the new head to readers and to [`EventLog::subscribe_head`] watchers. Readers
//! never see beyond the published head, so they never see an event that is not yet durable, nor
//! half a batch.
//!
//! [`SegmentLog::append`](EventLog::append) encodes the append as one record, writes it with one
//! positioned `write` at the end of the current segment file and calls `fdatasync`
//! (`sync_data`) on that file; only then does the record enter the index readers use. A new
//! segment (when the current one holds [`SledOptions::segment_bytes`], 64 MiB by default) is
//! written under a temporary name, fsynced, renamed and its directory fsynced before the first
//! record goes into it; a new log's directory (and the parent of any directory it created) is
//! fsynced at creation. A crash can only tear the last record of the last segment, which was
//! never acknowledged: the next open leaves it out (with a warning) and the next append cuts it
//! off. The directory is locked (`flock` on its `LOCK` file) while a log has it open.
//!
//! [`SledLog::append`](EventLog::append) writes the whole append with one sled `Batch`
//! (`apply_batch`, atomic: after a crash either all of it or none of it is recovered), then
//! flushes once. sled 0.34's `flush` is not enough on its own: on Linux it ends with
//! `sync_file_range`, which neither persists file metadata nor flushes the drive's write cache,
//! so an acknowledged write can be lost on power failure (upstream issue spacejam/sled#1452).
//! The log therefore keeps its own `std::fs::File` on sled's data file (`<dir>/db` in sled
//! 0.34) and calls `sync_data` on it after every flush (an `fsync` covers every dirty page of
//! the file, whoever wrote it). sled writes values too large for its log segments to separate
//! files under `<dir>/blobs` and does not sync those either, so each append also syncs any blob
//! file it has not synced yet (rare: only a tree node above about 128 KiB, i.e. very large
//! events such as big `uefi_data`, goes there). The directory itself (and sled's `conf` file)
//! is synced once, when the log is created.
//!
//! Appends are serialized by a mutex: stamping needs the current head, and one writer at a time
//! keeps seqs gapless and the chain linear. The region has a single writer task anyway, so the
//! mutex is uncontended; batching is what amortizes the sync. If any step of an append fails
//! the error is returned, nothing of the batch becomes visible, and the log refuses every later
//! append ([`LogError::Failed`]): the node must fail-stop and replay on restart (DESIGN.md §7).
//!
//! Opening verifies the whole chain by default ([`SledOptions::verify_on_open`],
//! [`SegmentOptions::verify_on_open`]) and refuses to start on a broken one, naming the first
//! bad seq ([`LogError::Corrupt`]).

#![warn(missing_docs)]

mod chain;
mod disk;
mod error;
mod memory;
mod segment_log;
mod sled_log;
mod stored;
mod tail;

use std::fmt;

pub use amisim_proto::Event;
pub use chain::{hash_event, verify_events, ChainVerifier};
pub use disk::{edit_stored_events, DiskLog, SEGMENTS_DIR};
pub use error::LogError;
pub use memory::MemoryLog;
pub use segment_log::{SegmentLog, SegmentOptions};
pub use sled_log::{Layout, SledLog, SledOptions, BATCHES_TREE, EVENTS_TREE};
pub use tail::{tail, TAIL_CHUNK};

/// The hash of "no event": the `prev_hash` of seq 1 and the head hash of an empty log.
pub const ZERO_HASH: [u8; 32] = [0; 32];

/// The last durable event of a log: its seq (0 if the log is empty) and its hash
/// ([`ZERO_HASH`] if empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Head {
    /// Seq of the last durable event; 0 for an empty log.
    pub seq: u64,
    /// Hash of the last durable event; 32 zero bytes for an empty log.
    pub hash: [u8; 32],
}

impl Head {
    /// The head of an empty log: seq 0, zero hash.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: ZERO_HASH,
    };
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.seq, hex::encode(self.hash))
    }
}

/// A region's append-only event log. Implemented by [`SegmentLog`] and [`SledLog`] (durable),
/// [`DiskLog`] (whichever of the two a directory holds) and [`MemoryLog`].
///
/// Object safe: other crates hold it as `Arc<dyn EventLog>`.
pub trait EventLog: Send + Sync + 'static {
    /// Seq of the last durable event (0 if empty) and its hash (`[0; 32]` if empty).
    fn head(&self) -> Head;

    /// Appends a batch durably with ONE flush (group commit).
    ///
    /// The caller passes events with every envelope field filled except `seq`, `prev_hash` and
    /// `hash` (whatever they hold is overwritten). The log assigns `seq = head+1..`, sets
    /// `prev_hash` and `hash` (see [`hash_event`]; the first event's `prev_hash` is 32 zero
    /// bytes), makes the batch durable, then publishes the new head. Returns the stamped events.
    ///
    /// An empty batch is a no-op. On error nothing of the batch is visible to readers and the
    /// error is returned; the caller fail-stops (later appends return [`LogError::Failed`]).
    fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, LogError>;

    /// Events with `from <= seq <= to` (clamped to the head), in order. `from` 0 reads as 1;
    /// an empty range gives an empty vector.
    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError>;

    /// A watch channel of the durable head seq, for live tails. The value only ever grows, and
    /// the events up to it are readable with [`EventLog::read_range`] when a change is seen.
    fn subscribe_head(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Verifies the whole chain from seq 1 up to the head: gapless seqs, every `prev_hash` and
    /// `hash`. `Ok(head)`, or `Err(LogError::Corrupt { seq, reason })` naming the FIRST bad seq.
    fn verify(&self) -> Result<Head, LogError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_display_and_empty() {
        assert_eq!(Head::default(), Head::EMPTY);
        let s = Head::EMPTY.to_string();
        assert!(s.starts_with("0@0000"));
        assert_eq!(s.len(), 2 + 64);
    }

    #[test]
    fn trait_is_object_safe() {
        let log: std::sync::Arc<dyn EventLog> = std::sync::Arc::new(MemoryLog::new());
        assert_eq!(log.head(), Head::EMPTY);
    }
}
