//! The durable log in plain segment files: one record per append, written with one positioned
//! `write` and made durable with one `fdatasync`. The last segment is extended a megabyte of
//! zeros at a time (preallocation), so most appends write inside the file and their `fdatasync`
//! flushes the data alone, not the inode.
//!
//! The log only ever appends whole group commits and reads ranges by seq, so it needs no tree,
//! no page cache and no background threads: an append is a record at the end of the current
//! file, and an in-memory index (first seq, count, file, offset, length of every record; built at
//! open from the record headers alone) finds the record holding a seq by binary search.
//!
//! The format, byte by byte, and what a crash can leave are documented on [`SegmentLog`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use amisim_proto::{Event, EventBatch};
use prost::Message;
use tokio::sync::watch;

use crate::chain::stamp_encoded;
use crate::sled_log::one_event_batch;
use crate::stored::{
    append_durably, check_run, head_of, read_stored, sync_dir, verify_stored, Stored, LOCK_WAIT,
};
use crate::{EventLog, Head, LogError, SledOptions};

/// The default [`SegmentOptions::segment_bytes`]: 64 MiB.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The default [`SegmentOptions::preallocate_bytes`]: 1 MiB.
pub(crate) const DEFAULT_PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// The first 8 bytes of every segment file.
const SEGMENT_MAGIC: [u8; 8] = *b"AMISIMSG";
/// The segment format this build writes and reads.
const FORMAT_VERSION: u32 = 1;
const SEGMENT_HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: usize = 20;
/// The part of a record header its checksum covers (everything but the checksum).
const RECORD_CRC_COVERS: usize = 16;
const SEGMENT_SUFFIX: &str = ".seg";
const LOCK_FILE: &str = "LOCK";
/// The append buffer is kept between appends; one grown beyond this by a huge batch is dropped
/// rather than held forever.
const MAX_KEPT_BUFFER: usize = 16 * 1024 * 1024;

/// Options of [`SegmentLog::open`]. [`DiskLog::open`](crate::DiskLog::open) takes them from a
/// [`SledOptions`] (`From<&SledOptions>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentOptions {
    /// An append starts a new segment file when the current one holds at least this many bytes
    /// (so a segment ends up a little larger: one record is never split). Default 64 MiB.
    pub segment_bytes: u64,
    /// Verify the whole hash chain when opening and refuse to open a broken log. Default true.
    /// When false only record headers and the last record are read.
    pub verify_on_open: bool,
    /// When an append would end past the end of the file, the file is first extended by this
    /// many bytes of zeros beyond the record (made durable by the same `fdatasync`). The
    /// appends that follow then overwrite zeros inside the file: their `fdatasync` writes the
    /// data alone, without the inode (whose size did not change), which on ext4 saves a
    /// synchronous write and a wait per append. 0: no preallocation (the file ends with the
    /// last record). Default 1 MiB.
    pub preallocate_bytes: u64,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            verify_on_open: true,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
        }
    }
}

impl From<&SledOptions> for SegmentOptions {
    fn from(opts: &SledOptions) -> Self {
        SegmentOptions {
            segment_bytes: opts.segment_bytes,
            verify_on_open: opts.verify_on_open,
            ..SegmentOptions::default()
        }
    }
}

/// The durable [`EventLog`] in segment files: one directory per region log, one record per
/// append.
///
/// Opening takes an exclusive lock on the directory's `LOCK` file: one `SegmentLog` per
/// directory per machine, across processes and within one. The struct is `Send + Sync`; share
/// it as `Arc<SegmentLog>` or `Arc<dyn EventLog>`.
///
/// # On-disk format, version 1
///
/// Everything is little-endian. A log is one directory holding:
///
/// - `LOCK`: an empty file, exclusively `flock`ed by the process that has the log open.
/// - Segment files named `{first_seq:020}.seg`: the seq of the first event the segment holds,
///   in 20 decimal digits (so name order is seq order); the first segment of a log is
///   `00000000000000000001.seg`. A new segment is written as `….seg.tmp` and renamed once its
///   header is durable; readers ignore `*.tmp` files.
///
/// A segment file is a 16-byte header followed by records, back to back, up to the end of the
/// file or, in the last segment only, up to a run of zero bytes that goes on to the end of the
/// file (space preallocated for the next records, see [`SegmentOptions::preallocate_bytes`]; a
/// reader stops at a record header of 20 zero bytes, which no record has):
///
/// | offset | size | field                                            |
/// |-------:|-----:|--------------------------------------------------|
/// | 0      | 8    | magic, the ASCII bytes `AMISIMSG`                |
/// | 8      | 4    | `u32` format version, `1`                        |
/// | 12     | 4    | `u32` reserved, written as 0, ignored by readers |
///
/// A record is a 20-byte header followed by its payload:
///
/// | offset | size          | field                                                      |
/// |-------:|--------------:|------------------------------------------------------------|
/// | 0      | 4             | `u32` `payload_len`: the payload's length in bytes         |
/// | 4      | 4             | `u32` `count`: how many events the payload holds (>= 1)    |
/// | 8      | 8             | `u64` `first_seq`: the seq of the payload's first event    |
/// | 16     | 4             | `u32` `crc`: CRC-32 (IEEE 802.3, the one of zlib and       |
/// |        |               | gzip) of header bytes 0..16 followed by the payload        |
/// | 20     | `payload_len` | payload: the protobuf encoding of an `amisim.v1.EventBatch`|
///
/// The payload's events are the stamped events (`seq`, `prev_hash` and `hash` included) of one
/// append, with seqs `first_seq .. first_seq + count`, in order. The chain rules are those of
/// the crate documentation: any language with `proto/amisim/v1/*.proto`, a CRC-32 and SHA-256
/// can read and verify a log. Records' `first_seq`s never decrease, and the first record of a
/// segment starts at the seq in the segment's name.
///
/// # Crashes
///
/// A record is acknowledged only after its `fdatasync`, so a crash can leave at most the last
/// record of the last segment incomplete (the file ends inside it, or zeros follow where the
/// rest of it should be) or with a wrong checksum. [`SegmentLog::open`] leaves such a tail out
/// of the log (with a warning naming the file, offset and bytes) without touching the file;
/// the first append after the open truncates the file to its valid length before writing.
/// Written inside preallocated space, the torn record can also be a header of zeros followed by
/// the part of it that reached the disk. Zero bytes after the last whole record are
/// preallocated space, not damage: no warning, and appends write into them. Anywhere else the
/// same damage is corruption ([`LogError::Corrupt`]).
///
/// A record's length is protected by the record's checksum only, so open makes sure a damaged
/// length is not taken for a torn tail (which would drop the acknowledged records after it at
/// the next append): a length that runs past the end of the file is refused when the payload's
/// own protobuf framing ends inside the file with a matching checksum; a length that is too
/// short sends the header scan into a payload, and the record it then ends on (read whole for
/// the head) fails its checksum.
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    preallocate_bytes: u64,
    /// Holds the directory's exclusive lock for as long as the log lives.
    _lock: File,
    /// Held for the whole of an append: serializes writers and owns the write position.
    writer: Mutex<Writer>,
    /// The published head and the index of every durable record: only what is here is visible.
    state: RwLock<State>,
    head_tx: watch::Sender<u64>,
    /// An append failed: refuse further appends (fail-stop).
    failed: AtomicBool,
}

impl fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

/// What readers see. Head and index change together, under one write lock, after the record is
/// durable.
struct State {
    head: Head,
    /// Every durable record, in file order (so in `first_seq` order).
    records: Vec<RecordRef>,
    /// Every segment, in name order; `RecordRef::segment` indexes it.
    segments: Vec<Arc<Segment>>,
}

/// Where one record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordRef {
    first_seq: u64,
    count: u32,
    /// Index into [`State::segments`].
    segment: u32,
    /// Offset of the record header in its segment file.
    offset: u64,
    /// Header plus payload.
    len: u64,
}

impl RecordRef {
    /// The seq of the record's last event (`count >= 1` and no overflow are checked when a
    /// record enters the index).
    fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// One open segment file. Readers use positioned reads, so they share the handle with the
/// writer without a cursor to fight over.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// The seq in the file's name.
    first_seq: u64,
    file: File,
}

struct Writer {
    /// The last segment: appends go to its end.
    segment: Arc<Segment>,
    /// Its index in [`State::segments`].
    segment_index: u32,
    /// The end of its valid content: where the next record goes.
    end: u64,
    /// The length of its file: zeros from `end` to here (preallocated space), unless `torn`.
    allocated: u64,
    /// The file goes on beyond `end` with a torn record found at open: cut it before writing.
    torn: bool,
    /// The record being written, kept to reuse its allocation.
    buf: Vec<u8>,
}

impl Writer {
    /// Cuts the segment's file at `end` (what follows is a torn record or preallocated zeros)
    /// and makes that durable.
    fn cut_at_end(&mut self, what: &str) -> Result<(), LogError> {
        let path = &self.segment.path;
        self.segment
            .file
            .set_len(self.end)
            .map_err(|e| io_error(e, what, path))?;
        self.segment
            .file
            .sync_all()
            .map_err(|e| io_error(e, "cannot fsync", path))?;
        self.allocated = self.end;
        Ok(())
    }
}

/// The 20 bytes in front of every record's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordHeader {
    payload_len: u32,
    count: u32,
    first_seq: u64,
    crc: u32,
}

impl RecordHeader {
    fn parse(b: &[u8; RECORD_HEADER_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[8..16]);
        RecordHeader {
            payload_len: u32_at(0),
            count: u32_at(4),
            first_seq: u64::from_le_bytes(seq),
            crc: u32_at(16),
        }
    }

    /// Writes the header (with `crc` as given) into the first 20 bytes of `out`.
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.payload_len.to_le_bytes());
        out[4..8].copy_from_slice(&self.count.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.crc.to_le_bytes());
    }

    fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

/// The checksum of a record: CRC-32 of its header's first 16 bytes, then its payload.
fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..RECORD_CRC_COVERS]);
    hasher.update(payload);
    hasher.finalize()
}

/// Fills in the header of a record in `buf` (20 header bytes, then the payload): length and
/// checksum computed, `count` and `first_seq` as given.
fn seal_record(buf: &mut [u8], count: u32, first_seq: u64) -> Result<(), LogError> {
    let payload_len = u32::try_from(buf.len() - RECORD_HEADER_LEN).map_err(|_| {
        LogError::Io(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "an append of {} bytes does not fit one record (at most 4 GiB)",
                buf.len()
            ),
        ))
    })?;
    let mut header = RecordHeader {
        payload_len,
        count,
        first_seq,
        crc: 0,
    };
    header.write(&mut buf[..RECORD_HEADER_LEN]);
    header.crc = record_crc(&buf[..RECORD_HEADER_LEN], &buf[RECORD_HEADER_LEN..]);
    header.write(&mut buf[..RECORD_HEADER_LEN]);
    Ok(())
}

fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// An I/O error with the file it happened on.
fn io_error(e: std::io::Error, what: &str, path: &Path) -> LogError {
    LogError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

impl SegmentLog {
    /// Opens (or creates) the segment log in `dir`.
    ///
    /// A directory holding no segment file is a new log: the directory (and missing parents)
    /// is created with the first, empty segment, all made durable. Otherwise the index is built
    /// from the record headers only (plus the last record, read whole: its checksum decides
    /// whether a crash tore it, see [Crashes](SegmentLog#crashes), and its last event is the head).
    /// Open checks the structure (headers, names, record order) and never modifies a file.
    ///
    /// With [`SegmentOptions::verify_on_open`] (the default) the whole chain is verified too,
    /// and a broken log is refused with [`LogError::Corrupt`] naming the first bad seq.
    ///
    /// If the directory is locked (another `SegmentLog`, in this or another process) it waits up
    /// to 2 seconds, then fails with [`LogError::Locked`].
    pub fn open(dir: &Path, opts: &SegmentOptions) -> Result<SegmentLog, LogError> {
        let started = Instant::now();
        let missing_dirs: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        fs::create_dir_all(dir).map_err(|e| io_error(e, "cannot create", dir))?;
        let lock = lock_dir(dir)?;
        let names = list_segments(dir)?;
        let created = names.is_empty();
        let mut segments = Vec::with_capacity(names.len().max(1));
        if created {
            segments.push(Arc::new(create_segment(dir, 1)?));
            // The new directories' own entries, deepest first.
            for created_dir in &missing_dirs {
                if let Some(parent) = created_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
        } else {
            let last = names.len() - 1;
            for (i, (first_seq, path)) in names.into_iter().enumerate() {
                // Only the last segment is ever written again.
                let file = OpenOptions::new()
                    .read(true)
                    .write(i == last)
                    .open(&path)
                    .map_err(|e| io_error(e, "cannot open segment", &path))?;
                segments.push(Arc::new(Segment {
                    path,
                    first_seq,
                    file,
                }));
            }
        }

        let mut records = Vec::new();
        let mut end = SEGMENT_HEADER_LEN;
        let mut allocated = SEGMENT_HEADER_LEN;
        let mut torn = false;
        for (i, segment) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            let before = records.len();
            let index = u32::try_from(i).map_err(|_| LogError::Corrupt {
                seq: 0,
                reason: format!("{} holds more than 2^32 segments", dir.display()),
            })?;
            let scan = scan_segment(segment, index, is_last, &mut records)?;
            if records.len() == before && !is_last {
                return Err(LogError::Corrupt {
                    seq: segment.first_seq,
                    reason: format!(
                        "segment {} holds no record but is not the last one",
                        segment.path.display()
                    ),
                });
            }
            end = scan.valid_len;
            allocated = scan.file_len;
            torn = scan.torn;
        }

        let head = if opts.verify_on_open {
            verify_stored(RecordEvents::new(segments.clone(), records.clone()), None)?
        } else {
            match records.last() {
                None => Head::EMPTY,
                Some(record) => {
                    let events = read_record(&segments, record, &mut Vec::new())
                        .map_err(Stored::into_error)?;
                    match events.last() {
                        Some(event) => head_of(event)?,
                        None => Head::EMPTY,
                    }
                }
            }
        };
        let (last_segment, segment_index) = match segments.last() {
            Some(s) => (Arc::clone(s), (segments.len() - 1) as u32),
            None => {
                return Err(LogError::Corrupt {
                    seq: 0,
                    reason: format!("{} holds no segment", dir.display()),
                })
            }
        };
        // The next append goes to the last segment: an empty one must be named after it.
        if end == SEGMENT_HEADER_LEN && last_segment.first_seq != head.seq + 1 {
            return Err(LogError::Corrupt {
                seq: head.seq + 1,
                reason: format!(
                    "the last segment {} holds no record and is named after seq {}, but the \
                     log's next seq is {}",
                    last_segment.path.display(),
                    last_segment.first_seq,
                    head.seq + 1
                ),
            });
        }
        tracing::info!(
            dir = %dir.display(),
            layout = "segments",
            segments = segments.len(),
            records = records.len(),
            head_seq = head.seq,
            head_hash = %hex::encode(head.hash),
            created,
            verified = opts.verify_on_open,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event log opened"
        );
        let (head_tx, _) = watch::channel(head.seq);
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes,
            preallocate_bytes: opts.preallocate_bytes,
            _lock: lock,
            writer: Mutex::new(Writer {
                segment: last_segment,
                segment_index,
                end,
                allocated,
                torn,
                buf: Vec::new(),
            }),
            state: RwLock::new(State {
                head,
                records,
                segments,
            }),
            head_tx,
            failed: AtomicBool::new(false),
        })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stamps the batch to follow `head` ([`stamp_encoded`]: each event encoded once, for its
    /// hash and for the record), writes it as one record at the end of the current segment and
    /// makes it durable. Returns the record's place for the index and the new head.
    fn write_durably(
        &self,
        w: &mut Writer,
        head: Head,
        events: &mut [Event],
    ) -> Result<(RecordRef, Head), LogError> {
        if events.is_empty() {
            return Err(LogError::Io(std::io::Error::other("empty record")));
        }
        let (first_seq, count) = (head.seq + 1, events.len());
        let count = u32::try_from(count).map_err(|_| {
            LogError::Io(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("an append of {count} events does not fit one record (at most 2^32 - 1)"),
            ))
        })?;
        if w.torn {
            // The unacknowledged tail found at open goes before anything follows it (a roll
            // included: only the last segment may end in a torn record).
            w.cut_at_end("cannot truncate the torn tail of")?;
            tracing::info!(
                file = %w.segment.path.display(),
                len = w.end,
                "event log: torn tail truncated"
            );
            w.torn = false;
        }
        if w.end > SEGMENT_HEADER_LEN && w.end >= self.segment_bytes {
            if w.allocated > w.end {
                // Only the last segment may end in zeros: the full one ends with its records.
                w.cut_at_end("cannot cut the preallocated space of")?;
            }
            self.roll(w, first_seq)?;
        }

        w.buf.clear();
        w.buf.resize(RECORD_HEADER_LEN, 0);
        let new_head = stamp_encoded(head, events, &mut w.buf);
        seal_record(&mut w.buf, count, first_seq)?;
        let path = &w.segment.path;
        w.segment
            .file
            .write_all_at(&w.buf, w.end)
            .map_err(|e| io_error(e, "cannot write to", path))?;
        let record_end = w.end + w.buf.len() as u64;
        if self.preallocate_bytes > 0 && record_end > w.allocated {
            // Zeros beyond the record, durable with it: the appends that follow write inside
            // the file (see `SegmentOptions::preallocate_bytes`).
            let zeros = vec![0u8; self.preallocate_bytes as usize];
            w.segment
                .file
                .write_all_at(&zeros, record_end)
                .map_err(|e| io_error(e, "cannot preallocate", path))?;
            w.allocated = record_end + self.preallocate_bytes;
        }
        w.segment
            .file
            .sync_data()
            .map_err(|e| io_error(e, "cannot fsync", path))?;
        let record = RecordRef {
            first_seq,
            count,
            segment: w.segment_index,
            offset: w.end,
            len: w.buf.len() as u64,
        };
        w.end += record.len;
        w.allocated = w.allocated.max(w.end);
        if w.buf.capacity() > MAX_KEPT_BUFFER {
            w.buf = Vec::new();
        }
        Ok((record, new_head))
    }

    /// Starts segment `first_seq` (durable, named, its directory entry synced) and makes it the
    /// one appends go to.
    fn roll(&self, w: &mut Writer, first_seq: u64) -> Result<(), LogError> {
        let segment = Arc::new(create_segment(&self.dir, first_seq)?);
        let mut state = self.state.write()?;
        let index = u32::try_from(state.segments.len()).map_err(|_| {
            LogError::Io(std::io::Error::other("more than 2^32 segments in one log"))
        })?;
        state.segments.push(Arc::clone(&segment));
        drop(state);
        tracing::debug!(file = %segment.path.display(), "event log: new segment");
        w.segment = segment;
        w.segment_index = index;
        w.end = SEGMENT_HEADER_LEN;
        w.allocated = SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// The records holding `from..=to` (the one holding `from` on) and the segment files.
    fn records_for(&self, from: u64, to: u64) -> Result<RecordEvents, LogError> {
        let state = self.state.read()?;
        let records = &state.records;
        let start = records
            .partition_point(|r| r.first_seq <= from)
            .saturating_sub(1);
        // One record beyond the one holding `to`: read only if the range is not complete by
        // then (the reader is lazy), so a hole at the end of the range names the seq after it.
        let end = (records.partition_point(|r| r.first_seq <= to) + 1).min(records.len());
        Ok(RecordEvents::new(
            state.segments.clone(),
            records[start..end].to_vec(),
        ))
    }
}

impl EventLog for SegmentLog {
    fn head(&self) -> Head {
        // The head is written in the same assignment as the index push: poisoning cannot leave
        // it torn.
        match self.state.read() {
            Ok(state) => state.head,
            Err(poisoned) => poisoned.into_inner().head,
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
            |events| self.write_durably(&mut writer, head, events),
            |record, new_head| {
                // Index and head in one assignment: readers see both or neither.
                let mut state = self.state.write()?;
                state.records.push(record);
                state.head = new_head;
                Ok(())
            },
        )
    }

    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        read_stored(self.head().seq, from, to, |from, to| {
            self.records_for(from, to)
        })
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    fn verify(&self) -> Result<Head, LogError> {
        // Head and index from one lock: the records are exactly those up to the head.
        let (head, stored) = {
            let state = self.state.read()?;
            (
                state.head,
                RecordEvents::new(state.segments.clone(), state.records.clone()),
            )
        };
        let verified = verify_stored(stored, Some(head.seq))?;
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

/// The events of a run of records, in order, each record read whole, checksummed, decoded and
/// checked against its header.
struct RecordEvents {
    segments: Vec<Arc<Segment>>,
    records: std::vec::IntoIter<RecordRef>,
    pending: std::vec::IntoIter<Event>,
    buf: Vec<u8>,
    /// After an error: nothing more.
    done: bool,
}

impl RecordEvents {
    fn new(segments: Vec<Arc<Segment>>, records: Vec<RecordRef>) -> Self {
        RecordEvents {
            segments,
            records: records.into_iter(),
            pending: Vec::new().into_iter(),
            buf: Vec::new(),
            done: false,
        }
    }
}

impl Iterator for RecordEvents {
    type Item = Result<Event, Stored>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.next() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            let record = self.records.next()?;
            match read_record(&self.segments, &record, &mut self.buf) {
                Ok(events) => self.pending = events.into_iter(),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Reads one indexed record whole (into `buf`) and returns its events, checked.
fn read_record(
    segments: &[Arc<Segment>],
    record: &RecordRef,
    buf: &mut Vec<u8>,
) -> Result<Vec<Event>, Stored> {
    let bad = |reason: String| Stored::Bad {
        seq: record.first_seq,
        reason,
    };
    let Some(segment) = segments.get(record.segment as usize) else {
        return Err(bad(format!("record in unknown segment {}", record.segment)));
    };
    let len =
        usize::try_from(record.len).map_err(|_| bad(format!("record of {} bytes", record.len)))?;
    buf.clear();
    buf.resize(len, 0);
    segment
        .file
        .read_exact_at(buf, record.offset)
        .map_err(|e| Stored::Storage(io_error(e, "cannot read", &segment.path)))?;
    decode_record(buf, record, &segment.path)
}

/// The events of a record's bytes (header and payload), checked against the index entry, the
/// checksum and the header.
fn decode_record(bytes: &[u8], record: &RecordRef, path: &Path) -> Result<Vec<Event>, Stored> {
    let at = || {
        format!(
            "the record at offset {} of {}",
            record.offset,
            path.display()
        )
    };
    let bad = |reason: String| Stored::Bad {
        seq: record.first_seq,
        reason,
    };
    let Some((header, payload)) = bytes.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(bad(format!("{} is shorter than its header", at())));
    };
    let header = RecordHeader::parse(header);
    if header.first_seq != record.first_seq
        || header.count != record.count
        || header.record_len() != record.len
    {
        return Err(bad(format!("{} changed since the log was opened", at())));
    }
    let computed = record_crc(bytes, payload);
    if computed != header.crc {
        return Err(bad(format!(
            "checksum mismatch in {}: stored {:08x}, computed {computed:08x}",
            at(),
            header.crc
        )));
    }
    let batch = EventBatch::decode(payload)
        .map_err(|e| bad(format!("{} is not a valid EventBatch: {e}", at())))?;
    check_run(
        &batch.events,
        &at(),
        Some(record.first_seq),
        record.last_seq(),
    )?;
    Ok(batch.events)
}

/// What [`scan_segment`] found.
struct Scan {
    /// The end of the last whole record (or of the header).
    valid_len: u64,
    /// The file's length: beyond `valid_len` it holds zeros (preallocated space) or, if
    /// `torn`, a torn record.
    file_len: u64,
    /// The file goes on beyond `valid_len` with a torn record (last segment only).
    torn: bool,
}

/// Indexes the records of one segment from their headers, checking the structure: a record
/// must fit the file, hold at least one event, start at or after the record before it, and the
/// segment's first record must start at the seq in its name. In the last segment, the last
/// record is read whole and a torn one (incomplete, bad checksum, zero bytes) is left out.
fn scan_segment(
    segment: &Segment,
    index: u32,
    is_last: bool,
    records: &mut Vec<RecordRef>,
) -> Result<Scan, LogError> {
    let path = &segment.path;
    let name_seq = segment.first_seq;
    let file_len = segment
        .file
        .metadata()
        .map_err(|e| io_error(e, "cannot stat", path))?
        .len();
    let corrupt = |seq: u64, reason: String| LogError::Corrupt { seq, reason };
    if file_len < SEGMENT_HEADER_LEN {
        return Err(corrupt(
            name_seq,
            format!(
                "segment {} is {file_len} bytes, shorter than its {SEGMENT_HEADER_LEN}-byte header",
                path.display()
            ),
        ));
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    read_at(segment, &mut header, 0)?;
    if header[0..8] != SEGMENT_MAGIC {
        return Err(corrupt(
            name_seq,
            format!(
                "{} is not an amisim segment: it starts with {} instead of \"AMISIMSG\"",
                path.display(),
                hex::encode(&header[0..8])
            ),
        ));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            name_seq,
            format!(
                "segment {} is in format version {version}; this build reads version \
                 {FORMAT_VERSION}",
                path.display()
            ),
        ));
    }

    let first_in_segment = records.len();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < file_len {
        let remaining = file_len - pos;
        // The seq to blame for a record that cannot be read: the first one not in the index.
        let next_seq = records
            .last()
            .map_or(name_seq, |r: &RecordRef| r.last_seq() + 1);
        // The records end here, damaged (see `tail`).
        let ends_with = move |what: &str| tail(segment, is_last, pos, file_len, next_seq, what);
        if remaining < RECORD_HEADER_LEN as u64 {
            return ends_with("an incomplete record header");
        }
        let mut raw = [0u8; RECORD_HEADER_LEN];
        read_at(segment, &mut raw, pos)?;
        if is_last && raw == [0u8; RECORD_HEADER_LEN] {
            if !zeros_to_end(segment, pos, file_len)? {
                // Written inside preallocated space, a record can reach the disk in part: its
                // later pages without the one holding its header. No acknowledged record has a
                // header of zeros, so this is the unacknowledged last write.
                return ends_with("a record header of zero bytes, then other bytes");
            }
            // Preallocated space (or space a crash left allocated but unwritten): the records
            // end here. No real record is all zeros (count is at least 1). The record before
            // the zeros is the last one written, the only one a crash can have torn: check it
            // whole, as a record that ends the file is.
            if let Some(last) = records[first_in_segment..].last().copied() {
                if !record_is_whole(segment, &last)? {
                    records.pop();
                    return tail(
                        segment,
                        is_last,
                        last.offset,
                        file_len,
                        last.first_seq,
                        "a record whose checksum does not match, then zero bytes",
                    );
                }
            }
            return Ok(Scan {
                valid_len: pos,
                file_len,
                torn: false,
            });
        }
        let h = RecordHeader::parse(&raw);
        let len = h.record_len();
        if len > remaining {
            if is_last {
                check_length_field(segment, pos, &raw, file_len)?;
            }
            return ends_with(&format!(
                "a record of {len} bytes of which the file holds {remaining}"
            ));
        }
        if is_last && len == remaining {
            // The log's last record, the only one a crash can have torn: check it whole.
            let mut payload = vec![0u8; h.payload_len as usize];
            read_at(segment, &mut payload, pos + RECORD_HEADER_LEN as u64)?;
            if record_crc(&raw, &payload) != h.crc {
                return ends_with("a record whose checksum does not match");
            }
        }
        let at = || format!("the record at offset {pos} of {}", path.display());
        if h.count == 0 || h.first_seq == 0 {
            return Err(corrupt(
                if h.first_seq == 0 {
                    next_seq
                } else {
                    h.first_seq
                },
                format!("{} holds {} events from seq {}", at(), h.count, h.first_seq),
            ));
        }
        if h.first_seq.checked_add(u64::from(h.count)).is_none() {
            return Err(corrupt(
                h.first_seq,
                format!("{} holds seqs beyond 2^64", at()),
            ));
        }
        if let Some(prev) = records.last() {
            if h.first_seq < prev.first_seq {
                return Err(corrupt(
                    h.first_seq,
                    format!(
                        "{} starts at seq {}, after a record starting at seq {}: records out \
                         of order",
                        at(),
                        h.first_seq,
                        prev.first_seq
                    ),
                ));
            }
        }
        if records.len() == first_in_segment && h.first_seq != name_seq {
            return Err(corrupt(
                h.first_seq.min(name_seq),
                format!(
                    "segment {} is named after seq {name_seq} but its first record starts at \
                     seq {}",
                    path.display(),
                    h.first_seq
                ),
            ));
        }
        records.push(RecordRef {
            first_seq: h.first_seq,
            count: h.count,
            segment: index,
            offset: pos,
            len,
        });
        pos += len;
    }
    Ok(Scan {
        valid_len: pos,
        file_len,
        torn: false,
    })
}

/// Whether the record `r` of `segment` matches its checksum.
fn record_is_whole(segment: &Segment, r: &RecordRef) -> Result<bool, LogError> {
    let mut bytes = vec![0u8; r.len as usize];
    read_at(segment, &mut bytes, r.offset)?;
    let (header, payload) = bytes.split_at(RECORD_HEADER_LEN);
    let mut raw = [0u8; RECORD_HEADER_LEN];
    raw.copy_from_slice(header);
    Ok(record_crc(&raw, payload) == RecordHeader::parse(&raw).crc)
}

/// The end of a segment's records at `pos`, damaged: a torn tail to leave out if this is the
/// last segment, corruption at `seq` otherwise.
fn tail(
    segment: &Segment,
    is_last: bool,
    pos: u64,
    file_len: u64,
    seq: u64,
    what: &str,
) -> Result<Scan, LogError> {
    if !is_last {
        return Err(LogError::Corrupt {
            seq,
            reason: format!(
                "{} ends with {what} at offset {pos}, and it is not the last segment",
                segment.path.display()
            ),
        });
    }
    tracing::warn!(
        file = %segment.path.display(),
        offset = pos,
        ignored_bytes = file_len - pos,
        "event log: the last segment ends with {what} (a write a crash interrupted, never \
         acknowledged); ignoring it, the next append truncates it"
    );
    Ok(Scan {
        valid_len: pos,
        file_len,
        torn: true,
    })
}

/// Refuses a record at `pos` (header `raw`) that runs past the end of the file only because its
/// length field is damaged: its payload's own protobuf framing (`count` fields of tag 1, each
/// length-delimited) ends inside the file, and with that length the checksum matches. A torn
/// write cannot look like that; a bit flip in the length of an acknowledged record can.
fn check_length_field(
    segment: &Segment,
    pos: u64,
    raw: &[u8; RECORD_HEADER_LEN],
    file_len: u64,
) -> Result<(), LogError> {
    let h = RecordHeader::parse(raw);
    let start = pos + RECORD_HEADER_LEN as u64;
    let mut q = start;
    let mut field = [0u8; 11];
    for _ in 0..h.count {
        if q >= file_len {
            return Ok(());
        }
        let n = (file_len - q).min(field.len() as u64) as usize;
        read_at(segment, &mut field[..n], q)?;
        // Field 1, wire type 2 (length-delimited): the key byte of every event in a batch.
        if field[0] != 0x0a {
            return Ok(());
        }
        let mut rest = &field[1..n];
        let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
            return Ok(());
        };
        let varint_len = (n - 1 - rest.len()) as u64;
        match q
            .checked_add(1 + varint_len)
            .and_then(|q| q.checked_add(len))
        {
            Some(next) if next <= file_len => q = next,
            _ => return Ok(()),
        }
    }
    let Ok(payload_len) = u32::try_from(q - start) else {
        return Ok(());
    };
    let mut payload = vec![0u8; payload_len as usize];
    read_at(segment, &mut payload, start)?;
    let mut fixed = *raw;
    fixed[0..4].copy_from_slice(&payload_len.to_le_bytes());
    if record_crc(&fixed, &payload) == h.crc {
        return Err(LogError::Corrupt {
            seq: h.first_seq,
            reason: format!(
                "the record at offset {pos} of {} says its payload is {} bytes, but it is {} \
                 bytes with a matching checksum: its length field is damaged",
                segment.path.display(),
                h.payload_len,
                payload_len
            ),
        });
    }
    Ok(())
}

/// Whether the segment holds only zero bytes from `pos` to `file_len`.
fn zeros_to_end(segment: &Segment, mut pos: u64, file_len: u64) -> Result<bool, LogError> {
    let mut chunk = vec![0u8; 64 * 1024];
    while pos < file_len {
        let n = (file_len - pos).min(chunk.len() as u64) as usize;
        read_at(segment, &mut chunk[..n], pos)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

fn read_at(segment: &Segment, buf: &mut [u8], offset: u64) -> Result<(), LogError> {
    segment
        .file
        .read_exact_at(buf, offset)
        .map_err(|e| io_error(e, "cannot read", &segment.path))
}

/// Takes the exclusive lock of a log directory, waiting up to [`LOCK_WAIT`] for a log that is
/// being dropped (in this process or another) to release it.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(e, "cannot open", &path))?;
    let started = Instant::now();
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                if !waited {
                    tracing::debug!(dir = %dir.display(), "event log directory is locked; waiting");
                    waited = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_error(e, "cannot lock", &path)),
        }
    }
}

/// The segment files of `dir` by first seq, in seq order. A `*.seg` name that does not parse
/// is corruption (a stray file where the log's must be exact).
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_error(e, "cannot list", dir))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(e, "cannot list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        let seq = (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .then(|| stem.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| LogError::Corrupt {
                seq: 0,
                reason: format!(
                    "{} is not a segment name (20 digits of the first seq, then .seg)",
                    entry.path().display()
                ),
            })?;
        segments.push((seq, entry.path()));
    }
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(segments)
}

/// Creates segment `first_seq` in `dir` with `contents` after its header: written to a `.tmp`
/// file, fsynced, renamed into place, directory fsynced. A crash leaves either no segment or a
/// whole one (never a segment with half a header).
fn create_segment_with(dir: &Path, first_seq: u64, contents: &[u8]) -> Result<Segment, LogError> {
    let name = segment_name(first_seq);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    if path.exists() {
        return Err(io_error(
            std::io::Error::from(ErrorKind::AlreadyExists),
            "refusing to overwrite segment",
            &path,
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_error(e, "cannot create", &tmp))?;
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_LEN as usize + contents.len());
    bytes.extend_from_slice(&segment_header());
    bytes.extend_from_slice(contents);
    file.write_all_at(&bytes, 0)
        .map_err(|e| io_error(e, "cannot write", &tmp))?;
    file.sync_all()
        .map_err(|e| io_error(e, "cannot fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(|e| io_error(e, "cannot rename into place", &tmp))?;
    sync_dir(dir)?;
    Ok(Segment {
        path,
        first_seq,
        file,
    })
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, LogError> {
    create_segment_with(dir, first_seq, &[])
}

/// An `EventBatch` seen as the raw bytes of its events (same wire format), so stored events can
/// be handed out byte for byte.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(bytes = "vec", repeated, tag = "1")]
    events: Vec<Vec<u8>>,
}

/// [`edit_stored_events`](crate::edit_stored_events) on the segment log in `dir`: every stored
/// event's bytes by its seq (an event that does not decode: under its place in its record; a
/// payload that is not an `EventBatch` at all: the payload under the record's `first_seq`),
/// then the log rewritten as one segment named after the smallest key, one record per entry
/// (`first_seq` = the key, `count` 1, the bytes as the one event of an `EventBatch`, checksum
/// recomputed as an attacker would), the old segments removed.
pub(crate) fn edit_segments(
    dir: &Path,
    f: impl FnOnce(&mut BTreeMap<u64, Vec<u8>>),
) -> Result<(), LogError> {
    let _lock = lock_dir(dir)?;
    let names = list_segments(dir)?;
    let mut events = BTreeMap::new();
    for (_, path) in &names {
        let data = fs::read(path).map_err(|e| io_error(e, "cannot read", path))?;
        let mut pos = SEGMENT_HEADER_LEN as usize;
        // Whatever the records are, as long as their headers lead through the file; a torn
        // tail is left out as the log would.
        while let Some(raw) = data
            .get(pos..)
            .and_then(|rest| rest.first_chunk::<RECORD_HEADER_LEN>())
        {
            if raw == &[0u8; RECORD_HEADER_LEN] {
                // Preallocated space: the records end here.
                break;
            }
            let h = RecordHeader::parse(raw);
            let start = pos + RECORD_HEADER_LEN;
            let Some(payload) = data.get(start..start + h.payload_len as usize) else {
                break;
            };
            match RawBatch::decode(payload) {
                Ok(raw) if !raw.events.is_empty() => {
                    // An event that does not decode stays under its place in the record, so
                    // editing an edited log again keeps its garbage where it was.
                    for (i, bytes) in raw.events.into_iter().enumerate() {
                        let seq = Event::decode(&bytes[..])
                            .map_or(h.first_seq.saturating_add(i as u64), |e| e.seq);
                        events.insert(seq, bytes);
                    }
                }
                _ => {
                    events.insert(h.first_seq, payload.to_vec());
                }
            }
            pos = start + payload.len();
        }
    }
    f(&mut events);

    let mut contents = Vec::new();
    for (&seq, bytes) in &events {
        let start = contents.len();
        contents.resize(start + RECORD_HEADER_LEN, 0);
        contents.extend_from_slice(&one_event_batch(bytes));
        seal_record(&mut contents[start..], 1, seq)?;
    }
    let first = events.keys().next().copied().unwrap_or(1);
    // Old segments out first: the new one may take one of their names.
    for (_, path) in &names {
        fs::remove_file(path).map_err(|e| io_error(e, "cannot remove", path))?;
    }
    create_segment_with(dir, first, &contents)?;
    Ok(())
}

/// Whether `dir` itself holds segment files (a [`SegmentLog`] directory).
pub(crate) fn holds_segments(dir: &Path) -> bool {
    list_segments(dir).is_ok_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<SegmentLog>();
    }

    #[test]
    fn record_header_round_trips() {
        let h = RecordHeader {
            payload_len: 0x0102_0304,
            count: 7,
            first_seq: 0x1122_3344_5566_7788,
            crc: 0xdead_beef,
        };
        let mut b = [0u8; RECORD_HEADER_LEN];
        h.write(&mut b);
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(&b[4..8], &[7, 0, 0, 0]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(RecordHeader::parse(&b), h);
    }

    #[test]
    fn names_sort_by_seq() {
        assert_eq!(segment_name(1), "00000000000000000001.seg");
        assert!(segment_name(99) < segment_name(100));
        assert_eq!(segment_name(u64::MAX).len(), 24);
    }

    #[test]
    fn a_failed_write_is_fail_stop_and_invisible() {
        let tmp = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(tmp.path(), &SegmentOptions::default()).unwrap();
        log.append(vec![Event::default(), Event::default()])
            .unwrap();
        let head = log.head();
        // Swap the writer's file for a read-only handle: the next write fails like a full disk.
        {
            let mut w = log.writer.lock().unwrap();
            let path = w.segment.path.clone();
            w.segment = Arc::new(Segment {
                file: File::open(&path).unwrap(),
                path,
                first_seq: 1,
            });
        }
        assert!(matches!(
            log.append(vec![Event::default()]),
            Err(LogError::Io(_))
        ));
        assert_eq!(log.head(), head);
        assert_eq!(*log.subscribe_head().borrow(), 2);
        assert_eq!(log.read_range(1, 10).unwrap().len(), 2);
        assert!(matches!(
            log.append(vec![Event::default()]),
            Err(LogError::Failed)
        ));
        assert_eq!(log.verify().unwrap(), head);
    }
}
