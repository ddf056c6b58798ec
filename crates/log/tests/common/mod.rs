//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use amisim_log::{Event, EventLog, Layout, LogError, SledLog, SledOptions, EVENTS_TREE};
use amisim_proto::{event::Payload, EventRef, ImageAvailable, ImageRegistered, SnapshotCompleted};

/// An unstamped event, varied by `i` (different payloads and sizes).
pub fn event(i: u64) -> Event {
    let payload = match i % 3 {
        0 => Payload::ImageAvailable(ImageAvailable {
            image_id: format!("ami-{i:017x}"),
        }),
        1 => Payload::SnapshotCompleted(SnapshotCompleted {
            snapshot_id: format!("snap-{i:017x}"),
        }),
        _ => Payload::ImageRegistered(ImageRegistered {
            image_id: format!("ami-{i:017x}"),
            owner_id: "123456789012".into(),
            name: format!("image number {i}"),
            description: "x".repeat((i % 50) as usize),
            ..Default::default()
        }),
    };
    Event {
        region: "us-east-1".into(),
        event_id: format!("00000000-0000-4000-8000-{i:012x}"),
        sim_time_ms: 1_700_000_000_000 + i,
        wall_time_ms: 1_700_000_000_000 + 2 * i,
        account_id: "123456789012".into(),
        request_id: format!("req-{i}"),
        correlation_id: String::new(),
        depends_on: if matches!(i % 4, 0) {
            vec![EventRef {
                region: "eu-west-1".into(),
                seq: i,
            }]
        } else {
            Vec::new()
        },
        payload: Some(payload),
        ..Default::default()
    }
}

/// `n` unstamped events numbered from `start`.
pub fn events(start: u64, n: u64) -> Vec<Event> {
    (start..start + n).map(event).collect()
}

/// The seq named by a `Corrupt` error.
pub fn corrupt_seq<T: std::fmt::Debug>(r: Result<T, LogError>) -> u64 {
    match r {
        Err(LogError::Corrupt { seq, .. }) => seq,
        other => panic!("expected LogError::Corrupt, got {other:?}"),
    }
}

/// Options that create a log in the per-event layout (one value per event, the layout of logs
/// written before batches; still opened and appended to).
pub fn per_event() -> SledOptions {
    SledOptions {
        new_layout: Layout::PerEvent,
        ..SledOptions::default()
    }
}

/// Options that create a sled log in the batched layout (what `SledLog::open` creates by
/// default, since sled cannot store the default `Layout::Segments`).
pub fn batched() -> SledOptions {
    SledOptions {
        new_layout: Layout::Batched,
        ..SledOptions::default()
    }
}

/// Creates a sled log in `dir` in the per-event layout (the raw-tree tests below edit its
/// [`EVENTS_TREE`] value by value) with events 1..=n (appended in batches of 3), then closes it.
pub fn build_sled(dir: &Path, n: u64) {
    build_sled_with(dir, n, per_event());
}

/// As [`build_sled`], with `opts` (e.g. the default, batched layout).
pub fn build_sled_with(dir: &Path, n: u64, opts: SledOptions) {
    let log = SledLog::open(dir, opts).unwrap();
    let mut i = 1;
    while i <= n {
        let k = 3.min(n - i + 1);
        log.append(events(i, k)).unwrap();
        i += k;
    }
    assert_eq!(log.head().seq, n);
}

/// Opens the log directory with sled directly, runs `f` on the per-event tree, flushes, closes.
pub fn with_raw_tree(dir: &Path, f: impl FnOnce(&sled::Tree)) {
    with_raw_tree_named(dir, EVENTS_TREE, f)
}

/// As [`with_raw_tree`] on the tree called `name`.
pub fn with_raw_tree_named(dir: &Path, name: &str, f: impl FnOnce(&sled::Tree)) {
    // sled 0.34 may release the lock of a just-closed database a little late (see SledLog::open).
    let started = std::time::Instant::now();
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(e) if started.elapsed() < std::time::Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("raw sled open: {e}"),
        }
    };
    let tree = db.open_tree(name).unwrap();
    f(&tree);
    tree.flush().unwrap();
}
