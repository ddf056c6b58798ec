//! The durable log on sled 0.34, and the options and layouts of every durable log. See the
//! crate documentation for the layouts and durability.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use amisim_proto::{Event, EventBatch};
use prost::Message;
use tokio::sync::watch;

use crate::chain::stamp;
use crate::stored::{
    append_durably, check_run, head_of, read_stored, sync_dir, verify_stored, Stored, LOCK_WAIT,
};
use crate::{EventLog, Head, LogError};

/// Name of the sled tree that holds the events of a [`Layout::PerEvent`] log (key: big-endian
/// `u64` seq; value: the protobuf encoding of the stamped [`Event`]). Audit tools that open the
/// directory with sled directly read this tree, or [`BATCHES_TREE`] for a batched log.
pub const EVENTS_TREE: &str = "events";

/// Name of the sled tree of a log in the [`Layout::Batched`] layout (key: big-endian `u64` seq
/// of the batch's last event; value: the protobuf encoding of an [`EventBatch`] of stamped
/// events, one group commit).
pub const BATCHES_TREE: &str = "batches";

/// How a durable log stores its events. A log keeps the layout it was created with: an existing
/// log is opened in the layout its directory holds, whatever [`SledOptions::new_layout`] says.
///
/// [`DiskLog::open`](crate::DiskLog::open) creates a new log in any layout;
/// [`SledLog::open`] can only create the two sled layouts and creates [`Layout::Batched`] when
/// asked for [`Layout::Segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// sled, one value per event in [`EVENTS_TREE`]: the layout of every log written before
    /// batches existed. sled spends ~14 µs per value on an insert, so a group commit of 44
    /// events cost ~0.6 ms of CPU before its flush.
    PerEvent,
    /// sled, one value per run of an append (group commit) in [`BATCHES_TREE`]: an
    /// [`EventBatch`] of at most ~7 KiB.
    Batched,
    /// One record per append in segment files ([`SegmentLog`](crate::SegmentLog), in the
    /// [`SEGMENTS_DIR`](crate::SEGMENTS_DIR) of a region directory). The default for new logs.
    #[default]
    Segments,
}

impl Layout {
    /// The name of the sled tree holding the events in this layout; `None` for
    /// [`Layout::Segments`], which is not stored in sled.
    pub fn tree_name(self) -> Option<&'static str> {
        match self {
            Layout::PerEvent => Some(EVENTS_TREE),
            Layout::Batched => Some(BATCHES_TREE),
            Layout::Segments => None,
        }
    }

    /// The sled tree of a sled layout ([`Layout::Segments`] never reaches sled: see
    /// [`stored_layout`]).
    fn sled_tree(self) -> &'static str {
        self.tree_name().unwrap_or(BATCHES_TREE)
    }
}

/// sled 0.34 keeps all its data (the log-structured segments) in this file inside the database
/// directory; the log fsyncs it after every flush. Its presence marks a sled log directory.
pub(crate) const SLED_DATA_FILE: &str = "db";
/// sled 0.34's configuration file, synced once at creation.
const SLED_CONF_FILE: &str = "conf";
/// sled 0.34 writes oversized values (log messages above segment_size / 4) to files here.
const SLED_BLOBS_DIR: &str = "blobs";

/// The options of a durable log: of [`DiskLog::open`](crate::DiskLog::open) (whichever backend
/// the directory holds) and of [`SledLog::open`]. Each field says which backend it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// sled's page cache size in bytes. Default 64 MiB. sled logs only.
    pub cache_capacity_bytes: u64,
    /// Verify the whole hash chain when opening and refuse to open a broken log. Default true.
    /// When false only the last event is read (to learn the head). Every backend.
    pub verify_on_open: bool,
    /// The layout of a log created by this open (an existing log keeps its own). Default
    /// [`Layout::Segments`]; [`SledLog::open`] creates [`Layout::Batched`] instead of it.
    pub new_layout: Layout,
    /// A segment log starts a new segment file once the current one holds at least this many
    /// bytes (see [`SegmentOptions::segment_bytes`](crate::SegmentOptions::segment_bytes)).
    /// Default 64 MiB. Segment logs only.
    pub segment_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
            new_layout: Layout::Segments,
            segment_bytes: crate::segment_log::DEFAULT_SEGMENT_BYTES,
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
    /// The tree of the log's [`Layout`].
    tree: sled::Tree,
    layout: Layout,
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
    /// Opens (or creates) the sled log in `dir`. A new log gets [`SledOptions::new_layout`],
    /// except that [`Layout::Segments`] (which sled cannot store) gives [`Layout::Batched`]; use
    /// [`DiskLog::open`](crate::DiskLog::open) to create a segment log.
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
        let layout = stored_layout(&db, opts.new_layout)?;
        let tree = db.open_tree(layout.sled_tree())?;
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
            verify_stored(StoredEvents::new(&tree, layout, 1), None)?
        } else {
            last_head(&tree, layout)?
        };
        tracing::info!(
            dir = %dir.display(),
            ?layout,
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
            layout,
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

    /// How the log stores its events.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Writes the stamped batch atomically and makes it durable (one flush, one fsync).
    fn write_durably(&self, writer: &mut Writer, events: &[Event]) -> Result<(), LogError> {
        match self.layout {
            Layout::PerEvent => {
                let mut batch = sled::Batch::default();
                for event in events {
                    batch.insert(&seq_key(event.seq), event.encode_to_vec());
                }
                self.tree.apply_batch(batch)?;
            }
            // Never `Segments`: `stored_layout` turns it into `Batched`.
            Layout::Batched | Layout::Segments => {
                // A value per run of events up to BATCH_VALUE_BYTES, in one atomic `Batch`.
                let mut batch = sled::Batch::default();
                for chunk in batch_chunks(events) {
                    if let Some(last) = chunk.last() {
                        batch.insert(&seq_key(last.seq), encode_batch(chunk));
                    }
                }
                self.tree.apply_batch(batch)?;
            }
        }
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

    fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        let mut writer = self.writer.lock()?;
        let head = self.head();
        append_durably(
            &self.dir,
            &self.failed,
            &self.head_tx,
            head,
            events,
            |events| {
                let new_head = stamp(head, events);
                self.write_durably(&mut writer, events)?;
                Ok(((), new_head))
            },
            |(), new_head| {
                *self.head.write()? = new_head;
                Ok(())
            },
        )
    }

    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        read_stored(self.head().seq, from, to, |from, _| {
            Ok(StoredEvents::new(&self.tree, self.layout, from))
        })
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    fn verify(&self) -> Result<Head, LogError> {
        let head = self.head();
        let verified = verify_stored(
            StoredEvents::new(&self.tree, self.layout, 1),
            Some(head.seq),
        )?;
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

/// [`edit_stored_events`](crate::edit_stored_events) on a sled log: the log's tree is rewritten
/// from the map in the log's own layout (batched: one event per stored batch; bytes that do not
/// decode stay as they are).
pub(crate) fn edit_sled(
    dir: &Path,
    f: impl FnOnce(&mut std::collections::BTreeMap<u64, Vec<u8>>),
) -> Result<Layout, LogError> {
    let db = open_sled(&sled::Config::new().path(dir), dir)?;
    let layout = stored_layout(&db, Layout::Batched)?;
    let tree = db.open_tree(layout.sled_tree())?;
    let mut events = std::collections::BTreeMap::new();
    for item in tree.iter() {
        let (key, value) = item?;
        let Some(seq) = key_seq(&key) else { continue };
        match layout {
            Layout::PerEvent => {
                events.insert(seq, value.to_vec());
            }
            Layout::Batched | Layout::Segments => {
                let batch = EventBatch::decode(&*value).map_err(|e| LogError::Corrupt {
                    seq,
                    reason: format!("stored value is not a valid EventBatch: {e}"),
                })?;
                for e in batch.events {
                    events.insert(e.seq, e.encode_to_vec());
                }
            }
        }
    }
    f(&mut events);
    tree.clear()?;
    for (seq, bytes) in events {
        let value = match layout {
            Layout::PerEvent => bytes,
            Layout::Batched | Layout::Segments => one_event_batch(&bytes),
        };
        tree.insert(seq_key(seq), value)?;
    }
    tree.flush()?;
    Ok(layout)
}

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

/// The layout of the log in `db`: the tree that holds events, or `new_layout` for an empty
/// log ([`Layout::Batched`] for [`Layout::Segments`]: a sled log is never in segments). Both
/// trees holding events is a corrupt directory.
fn stored_layout(db: &sled::Db, new_layout: Layout) -> Result<Layout, LogError> {
    let new_layout = match new_layout {
        Layout::Segments => Layout::Batched,
        sled => sled,
    };
    let has = |name: &str| -> Result<bool, LogError> {
        // `tree_names` does not create a tree, `open_tree` would.
        if !db.tree_names().iter().any(|n| &n[..] == name.as_bytes()) {
            return Ok(false);
        }
        Ok(!db.open_tree(name)?.is_empty())
    };
    match (has(EVENTS_TREE)?, has(BATCHES_TREE)?) {
        (false, false) => Ok(new_layout),
        (true, false) => Ok(Layout::PerEvent),
        (false, true) => Ok(Layout::Batched),
        (true, true) => Err(LogError::Corrupt {
            seq: 0,
            reason: format!(
                "both the `{EVENTS_TREE}` and the `{BATCHES_TREE}` trees hold events; a log has \
                 one layout"
            ),
        }),
    }
}

/// A stored batch value holds events up to about this many bytes (at least one event).
///
/// sled 0.34 splits a leaf after 16 entries and writes a leaf above 128 KiB (segment size / 4)
/// to a separate blob file, which the log must then fsync with its directory: 16 values of
/// 8 KiB keep a leaf inline. An append of 44 register events (~22 KiB) is three values instead
/// of 44.
const BATCH_VALUE_BYTES: usize = 7 * 1024;

/// `events` cut into consecutive runs of at most [`BATCH_VALUE_BYTES`] encoded (a larger event
/// is a run of its own).
fn batch_chunks(events: &[Event]) -> Vec<&[Event]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, e) in events.iter().enumerate() {
        let len = prost::encoding::message::encoded_len(1, e);
        if i > start && bytes + len > BATCH_VALUE_BYTES {
            chunks.push(&events[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < events.len() {
        chunks.push(&events[start..]);
    }
    chunks
}

/// The stored bytes of a batch: an [`EventBatch`] of `events`, encoded without cloning them.
fn encode_batch(events: &[Event]) -> Vec<u8> {
    let len: usize = events
        .iter()
        .map(|e| prost::encoding::message::encoded_len(1, e))
        .sum();
    let mut buf = Vec::with_capacity(len);
    for e in events {
        prost::encoding::message::encode(1, e, &mut buf);
    }
    buf
}

/// An [`EventBatch`] of one event whose bytes are `bytes`, whatever they are (tamper drills).
pub(crate) fn one_event_batch(bytes: &[u8]) -> Vec<u8> {
    // Field 1, length-delimited: what `prost::encoding::bytes::encode(1, ..)` writes.
    let mut v = Vec::with_capacity(bytes.len() + 11);
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut v);
    prost::encoding::encode_varint(bytes.len() as u64, &mut v);
    v.extend_from_slice(bytes);
    v
}

/// The stored events of a tree in seq order, from the entry holding `from` on, each checked
/// against its key (per event: the key is its seq; batched: the key is the seq of the batch's
/// last event, the batch is not empty and its seqs are consecutive). Seqs across entries are
/// not checked here: readers and the chain verifier do.
struct StoredEvents {
    entries: sled::Iter,
    layout: Layout,
    pending: std::vec::IntoIter<Event>,
    /// After an error: nothing more.
    done: bool,
}

impl StoredEvents {
    fn new(tree: &sled::Tree, layout: Layout, from: u64) -> Self {
        // Batched: the first entry whose last seq is >= from holds `from`.
        StoredEvents {
            entries: tree.range(seq_key(from)..),
            layout,
            pending: Vec::new().into_iter(),
            done: false,
        }
    }

    fn entry(&self, key: &[u8], value: &[u8]) -> Result<Vec<Event>, Stored> {
        let Some(seq) = key_seq(key) else {
            return Err(Stored::Bad {
                seq: 0,
                reason: format!("stored key of {} bytes, expected 8", key.len()),
            });
        };
        match self.layout {
            Layout::PerEvent => {
                let event = Event::decode(value).map_err(|e| Stored::Bad {
                    seq,
                    reason: format!("stored value is not a valid Event: {e}"),
                })?;
                let events = vec![event];
                check_run(&events, &format!("key {seq}"), Some(seq), seq)?;
                Ok(events)
            }
            Layout::Batched | Layout::Segments => {
                let batch = EventBatch::decode(value).map_err(|e| Stored::Bad {
                    seq,
                    reason: format!("stored value is not a valid EventBatch: {e}"),
                })?;
                check_run(&batch.events, &format!("stored batch {seq}"), None, seq)?;
                Ok(batch.events)
            }
        }
    }
}

impl Iterator for StoredEvents {
    type Item = Result<Event, Stored>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.next() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            let (key, value) = match self.entries.next()? {
                Ok(kv) => kv,
                Err(e) => {
                    self.done = true;
                    return Some(Err(Stored::Storage(e.into())));
                }
            };
            match self.entry(&key, &value) {
                Ok(events) => self.pending = events.into_iter(),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The head from the last stored event, without verifying the chain.
fn last_head(tree: &sled::Tree, layout: Layout) -> Result<Head, LogError> {
    let Some((key, value)) = tree.last()? else {
        return Ok(Head::EMPTY);
    };
    let reader = StoredEvents {
        entries: tree.range(key.clone()..),
        layout,
        pending: Vec::new().into_iter(),
        done: true,
    };
    let events = reader.entry(&key, &value).map_err(Stored::into_error)?;
    match events.last() {
        Some(event) => head_of(event),
        None => Ok(Head::EMPTY),
    }
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
