//! The durable log on sled 0.34. See the crate documentation for the layout and durability.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use amisim_proto::Event;
use prost::Message;
use tokio::sync::watch;

use crate::chain::{stamp, ChainVerifier};
use crate::{EventLog, Head, LogError};

/// Name of the sled tree that holds the events (key: big-endian `u64` seq; value: the protobuf
/// encoding of the stamped [`Event`]). Audit tools that open the directory with sled directly
/// read this tree.
pub const EVENTS_TREE: &str = "events";

/// sled 0.34 keeps all its data (the log-structured segments) in this file inside the database
/// directory; the log fsyncs it after every flush.
const SLED_DATA_FILE: &str = "db";
/// sled 0.34's configuration file, synced once at creation.
const SLED_CONF_FILE: &str = "conf";
/// sled 0.34 writes oversized values (log messages above segment_size / 4) to files here.
const SLED_BLOBS_DIR: &str = "blobs";

/// Options of [`SledLog::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// sled's page cache size in bytes. Default 64 MiB.
    pub cache_capacity_bytes: u64,
    /// Verify the whole hash chain when opening and refuse to open a broken log. Default true.
    /// When false only the last event is read (to learn the head).
    pub verify_on_open: bool,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
        }
    }
}

/// The durable [`EventLog`]: one sled database in one directory per region.
///
/// Opening takes sled's exclusive lock on the directory: one `SledLog` per directory per
/// machine. The struct is `Send + Sync`; share it as `Arc<SledLog>` or `Arc<dyn EventLog>`.
#[derive(Debug)]
pub struct SledLog {
    dir: PathBuf,
    /// Kept so the database outlives the tree handle explicitly.
    _db: sled::Db,
    tree: sled::Tree,
    /// Held for the whole of an append: serializes writers and owns the fsync handles.
    writer: Mutex<Writer>,
    /// The published head: only events up to it are visible to readers.
    head: RwLock<Head>,
    head_tx: watch::Sender<u64>,
    /// An append failed: refuse further appends (fail-stop).
    failed: AtomicBool,
}

#[derive(Debug)]
struct Writer {
    /// sled's data file, opened separately to `sync_data` it after every flush.
    data_file: File,
    /// Blob files already synced (sled does not sync them).
    synced_blobs: HashSet<OsString>,
}

impl SledLog {
    /// Opens (or creates) the log in `dir`.
    ///
    /// With [`SledOptions::verify_on_open`] (the default) the whole chain is verified first and
    /// a broken log is refused with [`LogError::Corrupt`] naming the first bad seq.
    ///
    /// If the directory is locked (another `SledLog`, or one just dropped whose lock sled has
    /// not released yet) it waits up to 2 seconds, then fails with [`LogError::Sled`].
    pub fn open(dir: &Path, opts: SledOptions) -> Result<SledLog, LogError> {
        let started = Instant::now();
        let dir_existed = dir.exists();
        let fresh = !dir.join(SLED_DATA_FILE).exists();
        fs::create_dir_all(dir)?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes);
        let db = open_sled(&config, dir)?;
        let tree = db.open_tree(EVENTS_TREE)?;
        let data_path = dir.join(SLED_DATA_FILE);
        let data_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(|e| {
                LogError::Io(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open sled's data file {} for fsync: {e}",
                        data_path.display()
                    ),
                ))
            })?;
        if fresh {
            // Make the new database itself durable: its files, their directory entries, and
            // the directory's own entry when we created it.
            tree.flush()?;
            data_file.sync_all()?;
            match File::open(dir.join(SLED_CONF_FILE)) {
                Ok(conf) => conf.sync_all()?,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            sync_dir(dir)?;
            if !dir_existed {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
        }
        let head = if opts.verify_on_open {
            verify_tree(&tree, None)?
        } else {
            last_head(&tree)?
        };
        tracing::info!(
            dir = %dir.display(),
            head_seq = head.seq,
            head_hash = %hex::encode(head.hash),
            created = fresh,
            verified = opts.verify_on_open,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event log opened"
        );
        let (head_tx, _) = watch::channel(head.seq);
        Ok(SledLog {
            dir: dir.to_path_buf(),
            _db: db,
            tree,
            writer: Mutex::new(Writer {
                data_file,
                synced_blobs: HashSet::new(),
            }),
            head: RwLock::new(head),
            head_tx,
            failed: AtomicBool::new(false),
        })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the stamped batch atomically and makes it durable (one flush, one fsync).
    fn write_durably(&self, writer: &mut Writer, events: &[Event]) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        for event in events {
            batch.insert(&seq_key(event.seq), event.encode_to_vec());
        }
        self.tree.apply_batch(batch)?;
        // sled writes oversized pages to blob files while applying the batch; sync them before
        // the log entries that point to them reach the disk, and again after the flush in case
        // the flush itself wrote one.
        writer.sync_new_blobs(&self.dir)?;
        self.tree.flush()?;
        writer.data_file.sync_data()?;
        writer.sync_new_blobs(&self.dir)?;
        Ok(())
    }
}

impl Writer {
    /// fsyncs every blob file not synced yet (and then the blobs directory).
    fn sync_new_blobs(&mut self, dir: &Path) -> Result<(), LogError> {
        let blobs = dir.join(SLED_BLOBS_DIR);
        let entries = match fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut present = HashSet::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    // Removed by sled's blob GC since the listing.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                synced_any = true;
            }
            present.insert(name);
        }
        if synced_any {
            sync_dir(&blobs)?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

impl EventLog for SledLog {
    fn head(&self) -> Head {
        // The head is a plain value written in one assignment: poisoning cannot leave it torn.
        match self.head.read() {
            Ok(head) => *head,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn append(&self, mut events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        let mut writer = self.writer.lock()?;
        if self.failed.load(Ordering::SeqCst) {
            return Err(LogError::Failed);
        }
        if events.is_empty() {
            return Ok(events);
        }
        let started = Instant::now();
        let head = self.head();
        let new_head = stamp(head, &mut events);
        if let Err(e) = self.write_durably(&mut writer, &events) {
            self.failed.store(true, Ordering::SeqCst);
            tracing::error!(
                dir = %self.dir.display(),
                from = head.seq + 1,
                to = new_head.seq,
                error = %e,
                "event log append failed; the log accepts no more writes"
            );
            return Err(e);
        }
        match self.head.write() {
            Ok(mut published) => *published = new_head,
            Err(_) => {
                self.failed.store(true, Ordering::SeqCst);
                return Err(LogError::Poisoned);
            }
        }
        self.head_tx.send_replace(new_head.seq);
        tracing::trace!(
            from = head.seq + 1,
            to = new_head.seq,
            micros = started.elapsed().as_micros() as u64,
            "event log append durable"
        );
        Ok(events)
    }

    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        let from = from.max(1);
        let to = to.min(self.head().seq);
        if from > to {
            return Ok(Vec::new());
        }
        let capacity = usize::try_from(to - from + 1).unwrap_or(0).min(4096);
        let mut events = Vec::with_capacity(capacity);
        let mut expected = from;
        for item in self.tree.range(seq_key(from)..=seq_key(to)) {
            let (key, value) = item?;
            let seq = key_seq(&key).ok_or(LogError::NonContiguous { expected, found: 0 })?;
            if seq != expected {
                return Err(LogError::NonContiguous {
                    expected,
                    found: seq,
                });
            }
            let event =
                Event::decode(&*value).map_err(|source| LogError::Decode { seq, source })?;
            if event.seq != seq {
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

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    fn verify(&self) -> Result<Head, LogError> {
        let head = self.head();
        let verified = verify_tree(&self.tree, Some(head.seq))?;
        if verified != head {
            return Err(LogError::Corrupt {
                seq: head.seq,
                reason: format!(
                    "the stored chain ends at {verified}, the published head is {head}"
                ),
            });
        }
        Ok(verified)
    }
}

/// How long [`SledLog::open`] waits for sled's directory lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled database, waiting up to [`LOCK_WAIT`] for its directory lock.
///
/// sled 0.34 releases the lock of a dropped database only when its epoch-based garbage
/// collector frees the file handle, which can lag behind the drop while other threads use sled.
/// A log closed and reopened in the same process (a restarted region node, tests) would then
/// fail spuriously; a second live `SledLog` on the same directory still fails, after the wait.
fn open_sled(config: &sled::Config, dir: &Path) -> Result<sled::Db, LogError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                if !warned {
                    tracing::debug!(dir = %dir.display(), "event log directory is locked; waiting");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The key of `seq`: big-endian, so sled's byte order is seq order.
fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq of a key, `None` if the key is not 8 bytes.
fn key_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Verifies the stored chain from seq 1 (to `upto` if given, else to the last key).
fn verify_tree(tree: &sled::Tree, upto: Option<u64>) -> Result<Head, LogError> {
    let started = Instant::now();
    let mut verifier = ChainVerifier::new();
    let iter = match upto {
        Some(upto) => tree.range(..=seq_key(upto)),
        None => tree.range::<[u8; 8], _>(..),
    };
    for item in iter {
        let (key, value) = item?;
        let seq = key_seq(&key).ok_or_else(|| LogError::Corrupt {
            seq: verifier.next_seq(),
            reason: format!("stored key of {} bytes, expected 8", key.len()),
        })?;
        if seq != verifier.next_seq() {
            return Err(verifier.missing(&format!("the next stored key is seq {seq}")));
        }
        let event = Event::decode(&*value).map_err(|e| LogError::Corrupt {
            seq,
            reason: format!("stored value is not a valid Event: {e}"),
        })?;
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

/// The head from the last stored event, without verifying the chain.
fn last_head(tree: &sled::Tree) -> Result<Head, LogError> {
    let Some((key, value)) = tree.last()? else {
        return Ok(Head::EMPTY);
    };
    let Some(seq) = key_seq(&key) else {
        return Err(LogError::Corrupt {
            seq: 0,
            reason: format!("last stored key has {} bytes, expected 8", key.len()),
        });
    };
    let event = Event::decode(&*value).map_err(|e| LogError::Corrupt {
        seq,
        reason: format!("stored value is not a valid Event: {e}"),
    })?;
    if event.seq != seq {
        return Err(LogError::Corrupt {
            seq,
            reason: format!("key {seq} holds an event with seq {}", event.seq),
        });
    }
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
fn sync_dir(dir: &Path) -> Result<(), LogError> {
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

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn send_sync() {
        assert_send_sync::<SledLog>();
        assert_send_sync::<crate::MemoryLog>();
    }

    #[test]
    fn keys_sort_by_seq() {
        assert!(seq_key(255) < seq_key(256));
        assert!(seq_key(1) < seq_key(u64::MAX));
        assert_eq!(key_seq(&seq_key(42)), Some(42));
        assert_eq!(key_seq(&[1, 2, 3]), None);
    }

    #[test]
    fn fresh_dir_layout_is_what_we_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("region");
        let log = SledLog::open(&dir, SledOptions::default()).unwrap();
        assert!(dir.join(SLED_DATA_FILE).is_file());
        assert!(dir.join(SLED_CONF_FILE).is_file());
        assert_eq!(log.head(), Head::EMPTY);
        assert_eq!(log.dir(), dir.as_path());
    }

    #[test]
    fn open_without_verify_reads_head_from_last_event() {
        let tmp = tempfile::tempdir().unwrap();
        let head = {
            let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
            log.append(vec![Event::default(), Event::default()])
                .unwrap();
            log.head()
        };
        let opts = SledOptions {
            verify_on_open: false,
            ..SledOptions::default()
        };
        let log = SledLog::open(tmp.path(), opts).unwrap();
        assert_eq!(log.head(), head);
        assert_eq!(log.verify().unwrap(), head);
    }
}
