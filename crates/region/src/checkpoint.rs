//! Projection checkpoints: the node's [`State`] at some seq, saved to disk so a restart folds
//! only the log's tail instead of every event since seq 1 (issue 7: serving again within 3 s
//! with 1,000,000 events).
//!
//! A checkpoint is a cache, never the truth (DESIGN.md §3): the log is. So a checkpoint that
//! cannot be trusted — unreadable, torn, of another format version, of another region, beyond
//! the log's head, or whose hash at its seq is not the log's — is ignored with a warning and the
//! node folds more of the log (an older checkpoint, or the whole log). `amisim audit verify` and
//! `amisim replay` never use checkpoints.
//!
//! # File format
//!
//! `checkpoint-<seq, 20 digits>.bin` in the checkpoint directory:
//!
//! ```text
//! MAGIC (8 bytes "AMISIMCP") | version (u32 LE) | body (bincode) | SHA-256 of all before (32)
//! body = region (string) | seq (u64) | head hash at seq (32 bytes) | State (bincode)
//! ```
//!
//! The body's `State` is bincode of the projection's Rust types, so its layout is that of the
//! code that wrote it: [`CHECKPOINT_VERSION`] must change whenever `State` (or anything in it)
//! changes shape. A test pins the encoding of a reference state so such a change cannot go
//! unnoticed; a checkpoint of another version is ignored (full replay), never reinterpreted.
//!
//! # Writing
//!
//! The checkpointer (`Checkpointer`) runs on its own thread: every `every` events it takes the
//! published state (an O(1) snapshot of the persistent maps) and writes it to a temporary file,
//! fsyncs it, renames it into place and fsyncs the directory, then removes all but the newest
//! [`KEEP`] checkpoints. The writer's path (decide, append, publish, answer) never waits for it.
//! A clean shutdown writes one more, at the final head.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_core::State;
use amisim_log::{EventLog, Head};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of every checkpoint file.
const MAGIC: &[u8; 8] = b"AMISIMCP";

/// The encoding version of checkpoints this code writes and reads. Bump it whenever `State`
/// changes shape (see the module docs); the test `the_reference_state_encoding_is_pinned`
/// fails until you do.
pub const CHECKPOINT_VERSION: u32 = 3;

/// Checkpoints kept on disk (the newest ones); an older one is the fallback if the newest is
/// damaged.
pub const KEEP: usize = 2;

/// How often the checkpointer looks at the published head.
const POLL: Duration = Duration::from_millis(200);

/// The part of a checkpoint that is encoded, borrowed for writing.
#[derive(Serialize)]
struct BodyRef<'a> {
    region: &'a str,
    seq: u64,
    hash: [u8; 32],
    state: &'a State,
}

/// The same, owned, for reading.
#[derive(Deserialize)]
struct Body {
    region: String,
    seq: u64,
    hash: [u8; 32],
    state: State,
}

/// A checkpoint read back and checked.
#[derive(Debug)]
pub struct Loaded {
    /// The file it came from.
    pub path: PathBuf,
    /// The seq and hash of the last event the state includes.
    pub head: Head,
    pub state: State,
}

/// The checkpoints of one region in one directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    region: String,
}

impl CheckpointStore {
    pub fn new(dir: impl Into<PathBuf>, region: impl Into<String>) -> Self {
        CheckpointStore {
            dir: dir.into(),
            region: region.into(),
        }
    }

    /// The directory the checkpoints live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("checkpoint-{seq:020}.bin"))
    }

    /// The checkpoint files present, newest (highest seq) first. A missing directory has none.
    pub fn list(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let seq = name
                .strip_prefix("checkpoint-")
                .and_then(|s| s.strip_suffix(".bin"))
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(seq) = seq {
                found.push((seq, entry.path()));
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(found)
    }

    /// Writes `state` (whose last event is `head`) atomically: temporary file, fsync, rename,
    /// fsync of the directory. Then removes all but the newest [`KEEP`] checkpoints.
    pub fn write(&self, head: Head, state: &State) -> io::Result<PathBuf> {
        if head.seq != state.seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("head seq {} is not the state's seq {}", head.seq, state.seq),
            ));
        }
        fs::create_dir_all(&self.dir)?;
        let path = self.path_of(head.seq);
        let tmp = self.dir.join(format!("checkpoint-{:020}.tmp", head.seq));
        {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            // The buffer sits above the hashing: bincode's many small writes are copies into
            // the buffer, and the hash and the file see it a megabyte at a time.
            let mut out = BufWriter::with_capacity(
                1 << 20,
                HashingWriter {
                    inner: file,
                    hasher: Sha256::new(),
                },
            );
            out.write_all(MAGIC)?;
            out.write_all(&CHECKPOINT_VERSION.to_le_bytes())?;
            let body = BodyRef {
                region: &self.region,
                seq: head.seq,
                hash: head.hash,
                state,
            };
            bincode::serialize_into(&mut out, &body).map_err(io::Error::other)?;
            let HashingWriter {
                inner: mut file,
                hasher,
            } = out.into_inner().map_err(|e| e.into_error())?;
            file.write_all(&hasher.finalize())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        for (_, old) in self.list()?.into_iter().skip(KEEP) {
            if let Err(e) = fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), error = %e, "cannot remove an old checkpoint");
            }
        }
        Ok(path)
    }

    /// Reads and checks one checkpoint file: magic, version, checksum, region.
    pub fn read(&self, path: &Path) -> Result<Loaded, String> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read it: {e}"))?;
        let header = MAGIC.len() + 4;
        if bytes.len() < header + 32 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a checkpoint file (bad magic or too short)".into());
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&bytes[MAGIC.len()..header]);
        let version = u32::from_le_bytes(version);
        if version != CHECKPOINT_VERSION {
            return Err(format!(
                "format version {version}, this build reads version {CHECKPOINT_VERSION}"
            ));
        }
        let (content, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(content).as_slice() != sum {
            return Err("checksum mismatch (torn or damaged file)".into());
        }
        let body: Body = bincode::deserialize(&content[header..])
            .map_err(|e| format!("cannot decode the state: {e}"))?;
        if body.region != self.region {
            return Err(format!(
                "a checkpoint of region {:?}, this node serves {:?}",
                body.region, self.region
            ));
        }
        if body.state.seq != body.seq {
            return Err(format!(
                "the state is at seq {} but the checkpoint says {}",
                body.state.seq, body.seq
            ));
        }
        Ok(Loaded {
            path: path.to_path_buf(),
            head: Head {
                seq: body.seq,
                hash: body.hash,
            },
            state: body.state,
        })
    }
}

/// Writes through to `inner` and hashes what it writes.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// fsyncs a directory (its entries).
fn sync_dir(dir: &Path) -> io::Result<()> {
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

/// The node's background checkpoint writer (a named thread, `amisim-checkpoint-<region>`).
pub(crate) struct Checkpointer {
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Lowers the calling thread's scheduling priority (nice 10, Linux; elsewhere nothing): a
/// checkpoint serializes the whole projection (hundreds of ms of CPU for 100k images), and at
/// normal priority it took its share of a 2-core machine from the request path, ~9 % of a
/// durable RegisterImage load's throughput and ~2 ms of its p99 (docs/performance.md). Niced,
/// it uses the idle time the request path leaves.
fn lower_this_threads_priority() {
    crate::lower_thread_priority(10, "checkpointer");
}

impl Checkpointer {
    /// Starts the thread: a checkpoint whenever the published state is `every` events past the
    /// last one (`every` 0: only at the end), and one at the end if anything changed.
    pub(crate) fn start(
        store: CheckpointStore,
        every: u64,
        log: Arc<dyn EventLog>,
        published: Arc<ArcSwap<State>>,
        last_seq: u64,
    ) -> io::Result<Checkpointer> {
        let (stop, stopped) = mpsc::channel();
        let thread =
            crate::spawn_node_thread(format!("amisim-checkpoint-{}", store.region), move || {
                lower_this_threads_priority();
                let mut last = last_seq;
                loop {
                    let ending = match stopped.recv_timeout(POLL) {
                        Err(mpsc::RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
                    };
                    let state = published.load_full();
                    let due = if ending {
                        state.seq > last
                    } else {
                        every > 0 && state.seq >= last.saturating_add(every)
                    };
                    if due {
                        match checkpoint(&store, log.as_ref(), &state) {
                            Ok(()) => last = state.seq,
                            Err(e) => tracing::warn!(
                                region = %store.region,
                                seq = state.seq,
                                error = %e,
                                "cannot write a checkpoint (restarts replay more of the log)"
                            ),
                        }
                    }
                    if ending {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks for the final checkpoint and waits for the thread to end.
    pub(crate) fn finish(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Not joined: the thread writes its last checkpoint and ends on its own.
        let _ = self.stop.send(());
    }
}

/// Writes one checkpoint of `state`, with the log's hash at its seq.
fn checkpoint(store: &CheckpointStore, log: &dyn EventLog, state: &State) -> Result<(), String> {
    let started = Instant::now();
    let hash = if state.seq == 0 {
        amisim_log::ZERO_HASH
    } else {
        let events = log
            .read_range(state.seq, state.seq)
            .map_err(|e| e.to_string())?;
        let event = events
            .first()
            .ok_or_else(|| format!("the log has no event {}", state.seq))?;
        event.hash.as_slice().try_into().map_err(|_| {
            format!(
                "event {} has a hash of {} bytes",
                state.seq,
                event.hash.len()
            )
        })?
    };
    let head = Head {
        seq: state.seq,
        hash,
    };
    let path = store.write(head, state).map_err(|e| e.to_string())?;
    tracing::info!(
        region = %store.region,
        seq = state.seq,
        path = %path.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "projection checkpoint written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::event::Payload;
    use amisim_proto::{self as pb, Event};

    /// A small state touching most of the projection's types.
    fn reference_state() -> State {
        let payloads = [
            Payload::ImageRegistered(pb::ImageRegistered {
                image_id: "ami-00000000000000001".into(),
                owner_id: "111122223333".into(),
                name: "one".into(),
                kernel_id: "aki-12345678".into(),
                block_device_mappings: vec![pb::MappingRecord {
                    device_name: "/dev/xvda".into(),
                    ebs: true,
                    snapshot_id: "snap-00000000000000001".into(),
                    volume_size: 8,
                    ..Default::default()
                }],
                tags: vec![pb::TagRecord {
                    key: "k".into(),
                    value: "v".into(),
                }],
                client_token: "tok".into(),
                available_at_ms: 5,
                ..Default::default()
            }),
            Payload::ImageFailed(pb::ImageFailed {
                image_id: "ami-00000000000000001".into(),
                state_reason_code: "c".into(),
                state_reason_message: "m".into(),
            }),
            Payload::VolumeCreated(pb::VolumeCreated {
                volume_id: "vol-00000000000000001".into(),
                owner_id: "111122223333".into(),
                size: 8,
                available_at_ms: 9,
                ..Default::default()
            }),
            Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: "snap-00000000000000001".into(),
                owner_id: "111122223333".into(),
                volume_id: "vol-00000000000000001".into(),
                complete_at_ms: 11,
                ..Default::default()
            }),
        ];
        let mut state = State::new();
        for (i, p) in payloads.into_iter().enumerate() {
            state.apply(&Event {
                seq: i as u64 + 1,
                sim_time_ms: 3,
                payload: Some(p),
                ..Default::default()
            });
        }
        state
    }

    /// Pins the encoding of the projection. If this fails, `State` (or a type in it) changed
    /// shape: bump [`CHECKPOINT_VERSION`] (old checkpoints are then ignored, never misread) and
    /// update the expected hash here.
    #[test]
    fn the_reference_state_encoding_is_pinned() {
        let bytes = bincode::serialize(&reference_state()).expect("the state encodes");
        let hash = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            (CHECKPOINT_VERSION, hash.as_str()),
            (
                3,
                "bc76c185497903c60865505803817389003db8d2f6032fdc185ebe28bf783d79"
            ),
            "State changed shape: bump CHECKPOINT_VERSION and re-pin"
        );
    }

    #[test]
    fn write_then_read_round_trips_and_damage_is_refused() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let store = CheckpointStore::new(tmp.path().join("cp"), "us-east-1");
        let state = reference_state();
        let head = Head {
            seq: state.seq,
            hash: [7; 32],
        };
        let path = store.write(head, &state).expect("written");
        let loaded = store.read(&path).expect("read back");
        assert_eq!(loaded.head, head);
        assert_eq!(loaded.state, state);
        // Only complete files are listed (no temporary one left behind).
        assert_eq!(
            store.list().expect("listed"),
            vec![(state.seq, path.clone())]
        );
        // A head that is not the state's is refused.
        assert!(store.write(Head { seq: 99, ..head }, &state).is_err());
        // Truncated (a torn write): refused.
        let bytes = fs::read(&path).expect("bytes");
        fs::write(&path, &bytes[..bytes.len() - 1]).expect("truncate");
        assert!(store.read(&path).is_err());
        // Another region's store refuses it.
        fs::write(&path, &bytes).expect("restore");
        assert!(CheckpointStore::new(store.dir(), "eu-west-1")
            .read(&path)
            .is_err());
        assert!(store.read(&path).is_ok());
    }

    #[test]
    fn only_the_newest_are_kept() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let store = CheckpointStore::new(tmp.path(), "us-east-1");
        let mut state = State::new();
        for seq in 1..=4 {
            state.seq = seq;
            store
                .write(Head { seq, hash: [0; 32] }, &state)
                .expect("written");
        }
        let seqs: Vec<u64> = store.list().expect("listed").iter().map(|f| f.0).collect();
        assert_eq!(seqs, vec![4, 3]);
    }
}
