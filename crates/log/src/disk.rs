//! [`DiskLog`]: the durable log of a region directory, whichever backend the directory holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use amisim_proto::Event;
use tokio::sync::watch;

use crate::segment_log::{edit_segments, holds_segments};
use crate::sled_log::{edit_sled, SLED_DATA_FILE};
use crate::{EventLog, Head, Layout, LogError, SegmentLog, SegmentOptions, SledLog, SledOptions};

/// The subdirectory of a region directory that holds a [`SegmentLog`] (a sled log keeps its
/// files in the region directory itself).
pub const SEGMENTS_DIR: &str = "log";

/// The durable log of one region directory: a [`SledLog`] for a directory that holds one (logs
/// created before segments, or with a sled [`Layout`]), a [`SegmentLog`] in
/// `<dir>/`[`SEGMENTS_DIR`] otherwise. Implements [`EventLog`] by delegation.
#[derive(Debug)]
pub enum DiskLog {
    /// sled's files (`db`, `conf`, …) in the region directory.
    Sled(SledLog),
    /// Segment files in the region directory's [`SEGMENTS_DIR`].
    Segments(SegmentLog),
}

/// Which backend a region directory holds.
enum Backend {
    Sled,
    Segments(PathBuf),
    Neither,
}

/// The backend `dir` holds: sled's data file, or a [`SEGMENTS_DIR`]. Both is corruption.
fn backend(dir: &Path) -> Result<Backend, LogError> {
    let sled = dir.join(SLED_DATA_FILE).try_exists()?;
    let segments_dir = dir.join(SEGMENTS_DIR);
    let segments = segments_dir.try_exists()?;
    match (sled, segments) {
        (true, true) => Err(LogError::Corrupt {
            seq: 0,
            reason: format!(
                "{} holds both a sled log (`{SLED_DATA_FILE}`) and a segment log \
                 (`{SEGMENTS_DIR}/`); a region has one log, move one away",
                dir.display()
            ),
        }),
        (true, false) => Ok(Backend::Sled),
        (false, true) => Ok(Backend::Segments(segments_dir)),
        (false, false) => Ok(Backend::Neither),
    }
}

impl DiskLog {
    /// Opens the log of the region directory `dir`, or creates it.
    ///
    /// - `dir/db` (sled's data file) exists: [`SledLog::open`]`(dir, opts)`.
    /// - `dir/`[`SEGMENTS_DIR`] exists: [`SegmentLog::open`] on it (with
    ///   [`SledOptions::verify_on_open`] and [`SledOptions::segment_bytes`]).
    /// - Neither: a new log in [`SledOptions::new_layout`]: [`Layout::Segments`] (the default)
    ///   creates a segment log in `dir/`[`SEGMENTS_DIR`], a sled layout a sled log in `dir`.
    /// - Both: [`LogError::Corrupt`] (seq 0), nothing opened.
    pub fn open(dir: &Path, opts: SledOptions) -> Result<DiskLog, LogError> {
        let segments = |seg_dir: &Path, opts: &SledOptions| {
            SegmentLog::open(seg_dir, &SegmentOptions::from(opts)).map(DiskLog::Segments)
        };
        match backend(dir)? {
            Backend::Sled => SledLog::open(dir, opts).map(DiskLog::Sled),
            Backend::Segments(seg_dir) => segments(&seg_dir, &opts),
            Backend::Neither => match opts.new_layout {
                Layout::Segments => segments(&dir.join(SEGMENTS_DIR), &opts),
                Layout::PerEvent | Layout::Batched => SledLog::open(dir, opts).map(DiskLog::Sled),
            },
        }
    }

    /// Opens the log `dir` holds, for tools that read a stopped region's directory
    /// (`amisim audit`, `amisim replay`): a directory without a log is
    /// [`LogError::NoLog`], never given a new one.
    pub fn open_existing(dir: &Path, opts: SledOptions) -> Result<DiskLog, LogError> {
        match backend(dir)? {
            Backend::Neither => Err(LogError::NoLog {
                dir: dir.to_path_buf(),
            }),
            Backend::Sled | Backend::Segments(_) => DiskLog::open(dir, opts),
        }
    }

    /// How the log stores its events.
    pub fn layout(&self) -> Layout {
        match self {
            DiskLog::Sled(log) => log.layout(),
            DiskLog::Segments(_) => Layout::Segments,
        }
    }

    /// The region directory the log was opened in (for a segment log, the directory holding
    /// its [`SEGMENTS_DIR`]).
    pub fn dir(&self) -> &Path {
        match self {
            DiskLog::Sled(log) => log.dir(),
            DiskLog::Segments(log) => log.dir().parent().unwrap_or(log.dir()),
        }
    }
}

impl From<SledLog> for DiskLog {
    fn from(log: SledLog) -> Self {
        DiskLog::Sled(log)
    }
}

impl From<SegmentLog> for DiskLog {
    fn from(log: SegmentLog) -> Self {
        DiskLog::Segments(log)
    }
}

impl EventLog for DiskLog {
    fn head(&self) -> Head {
        match self {
            DiskLog::Sled(log) => log.head(),
            DiskLog::Segments(log) => log.head(),
        }
    }

    fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        match self {
            DiskLog::Sled(log) => log.append(events),
            DiskLog::Segments(log) => log.append(events),
        }
    }

    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        match self {
            DiskLog::Sled(log) => log.read_range(from, to),
            DiskLog::Segments(log) => log.read_range(from, to),
        }
    }

    fn subscribe_head(&self) -> watch::Receiver<u64> {
        match self {
            DiskLog::Sled(log) => log.subscribe_head(),
            DiskLog::Segments(log) => log.subscribe_head(),
        }
    }

    fn verify(&self) -> Result<Head, LogError> {
        match self {
            DiskLog::Sled(log) => log.verify(),
            DiskLog::Segments(log) => log.verify(),
        }
    }
}

/// Edits the stored events of a closed log directory as an attacker with disk access could, for
/// audit drills and tamper tests: `f` gets every stored event as its protobuf bytes by the seq
/// its entry names, and may change, remove, swap or add entries; the log is then rewritten from
/// the map. Nothing is stamped or re-hashed: that is the point. Returns the log's layout.
///
/// `dir` is a region directory ([`DiskLog::open`]'s) or a [`SegmentLog`]'s own directory.
/// - sled: the log's tree is rewritten in the log's own layout (batched: one event per stored
///   batch; bytes that do not decode stay as they are).
/// - segments: an event that does not decode is given under its place in its record
///   (`first_seq + i`), a payload that is not an `EventBatch` under its `first_seq`; the log
///   is rewritten as one segment named after the smallest key, one record per entry
///   (`first_seq` = the key, one event whose bytes are the entry's, checksum recomputed), the
///   old segments removed.
pub fn edit_stored_events(
    dir: &Path,
    f: impl FnOnce(&mut BTreeMap<u64, Vec<u8>>),
) -> Result<Layout, LogError> {
    match backend(dir)? {
        Backend::Segments(seg_dir) => {
            edit_segments(&seg_dir, f)?;
            Ok(Layout::Segments)
        }
        Backend::Neither if holds_segments(dir) => {
            edit_segments(dir, f)?;
            Ok(Layout::Segments)
        }
        Backend::Sled | Backend::Neither => edit_sled(dir, f),
    }
}
