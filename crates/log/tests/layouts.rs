//! The two stored layouts of a sled log: per event (logs written before batches) and batched
//! (one value per run of a group commit, what `SledLog::open` creates). Both pass the same
//! contract; a log keeps the layout it was created with; tampering with a batched log is found
//! at the right seq.

mod common;

use amisim_log::{
    edit_stored_events, EventLog, Layout, LogError, SledLog, SledOptions, BATCHES_TREE, EVENTS_TREE,
};
use amisim_proto::EventBatch;
use common::{
    batched, build_sled_with, corrupt_seq, event, events, per_event, with_raw_tree_named,
};
use prost::Message;

const N: u64 = 10;

/// The stored events of a log by seq, as protobuf bytes.
type StoredEvents = std::collections::BTreeMap<u64, Vec<u8>>;

fn open_err_seq(dir: &std::path::Path) -> u64 {
    corrupt_seq(SledLog::open(dir, SledOptions::default()))
}

fn entries(dir: &std::path::Path, tree: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    with_raw_tree_named(dir, tree, |t| {
        for item in t.iter() {
            let (k, v) = item.unwrap();
            out.push((u64::from_be_bytes((*k).try_into().unwrap()), v.to_vec()));
        }
    });
    out
}

#[test]
fn new_batched_logs_store_an_append_as_a_few_values() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = SledLog::open(tmp.path(), batched()).unwrap();
        assert_eq!(log.layout(), Layout::Batched);
        log.append(events(1, 3)).unwrap();
        // ~200 events of ~150–250 bytes: more than one value, far fewer than 200.
        log.append(events(4, 200)).unwrap();
    }
    let stored = entries(tmp.path(), BATCHES_TREE);
    assert!(entries(tmp.path(), EVENTS_TREE).is_empty());
    assert_eq!(
        stored[0].0, 3,
        "the first append is one value keyed by its last seq"
    );
    assert!((3..=20).contains(&stored.len()), "{} values", stored.len());
    let mut next = 1;
    for (key, value) in &stored {
        let batch = EventBatch::decode(&value[..]).unwrap();
        assert!(!batch.events.is_empty());
        assert!(
            value.len() <= 8 * 1024,
            "a value stays small: {}",
            value.len()
        );
        for e in &batch.events {
            assert_eq!(e.seq, next);
            next += 1;
        }
        assert_eq!(batch.events.last().unwrap().seq, *key);
    }
    assert_eq!(next, 204);
    // Any range reads back, from the middle of one value to the middle of another.
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.verify().unwrap().seq, 203);
    for (from, to) in [(1, 1), (2, 3), (3, 4), (17, 150), (200, 203), (203, 203)] {
        let got: Vec<u64> = log
            .read_range(from, to)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, (from..=to).collect::<Vec<_>>(), "{from}..={to}");
    }
}

#[test]
fn a_log_keeps_its_layout_whatever_the_options_say() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let new = tmp.path().join("new");
    build_sled_with(&old, 4, per_event());
    build_sled_with(&new, 4, SledOptions::default());
    for (dir, layout, opts) in [
        (&old, Layout::PerEvent, SledOptions::default()),
        (&new, Layout::Batched, per_event()),
    ] {
        let log = SledLog::open(dir, opts).unwrap();
        assert_eq!(log.layout(), layout);
        let s = log.append(events(5, 2)).unwrap();
        assert_eq!(s[0].seq, 5);
        assert_eq!(log.verify().unwrap().seq, 6);
        drop(log);
        let other = match layout {
            Layout::PerEvent => BATCHES_TREE,
            _ => EVENTS_TREE,
        };
        assert!(
            entries(dir, other).is_empty(),
            "{layout:?} wrote nothing into {other}"
        );
        assert_eq!(
            entries(dir, layout.tree_name().unwrap()).last().unwrap().0,
            6
        );
    }
}

#[test]
fn a_per_event_log_passes_the_same_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SledLog::open(tmp.path(), per_event()).unwrap();
    assert_eq!(log.layout(), Layout::PerEvent);
    log.append(events(1, 7)).unwrap();
    log.append(events(8, 5)).unwrap();
    assert_eq!(log.verify().unwrap().seq, 12);
    let got: Vec<u64> = log
        .read_range(3, 9)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, (3..=9).collect::<Vec<_>>());
}

#[test]
fn both_trees_holding_events_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled_with(tmp.path(), 3, SledOptions::default());
    let stray = entries(tmp.path(), BATCHES_TREE);
    with_raw_tree_named(tmp.path(), EVENTS_TREE, |t| {
        t.insert(1u64.to_be_bytes(), stray[0].1.clone()).unwrap();
    });
    match SledLog::open(tmp.path(), SledOptions::default()) {
        Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("one layout"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn tampering_with_a_batched_log_is_found_at_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |name: &str, f: &dyn Fn(&mut StoredEvents)| {
        let dir = tmp.path().join(name);
        build_sled_with(&dir, N, SledOptions::default());
        assert_eq!(edit_stored_events(&dir, f).unwrap(), Layout::Batched);
        dir
    };
    let intact = case("intact", &|_| {});
    assert_eq!(
        SledLog::open(&intact, SledOptions::default())
            .unwrap()
            .head()
            .seq,
        N
    );

    let flipped = case("flip", &|t| {
        let v = t.get_mut(&7).unwrap();
        let last = v.len() - 1;
        v[last] ^= 0x01;
    });
    assert_eq!(open_err_seq(&flipped), 7);

    let garbage = case("garbage", &|t| {
        t.insert(5, vec![0xff; 9]);
    });
    assert_eq!(open_err_seq(&garbage), 5);

    let deleted = case("delete", &|t| {
        t.remove(&7).unwrap();
    });
    assert_eq!(open_err_seq(&deleted), 7);

    let swapped = case("swap", &|t| {
        let a = t.remove(&6).unwrap();
        let b = t.remove(&7).unwrap();
        t.insert(6, b);
        t.insert(7, a);
    });
    assert_eq!(open_err_seq(&swapped), 6);

    // A cut-off tail is a shorter valid chain (only signed digests show it, as per event).
    let truncated = case("truncate", &|t| {
        t.remove(&N).unwrap();
    });
    let log = SledLog::open(&truncated, SledOptions::default()).unwrap();
    assert_eq!(log.head().seq, N - 1);
    assert_eq!(log.append(vec![event(100)]).unwrap()[0].seq, N);
}

#[test]
fn a_batch_that_does_not_fit_its_key_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    // Events 1..=3 stored as one batch; rekey it as if it ended at 2.
    build_sled_with(tmp.path(), 3, SledOptions::default());
    with_raw_tree_named(tmp.path(), BATCHES_TREE, |t| {
        let v = t.remove(3u64.to_be_bytes()).unwrap().unwrap();
        t.insert(2u64.to_be_bytes(), v).unwrap();
    });
    assert_eq!(
        open_err_seq(tmp.path()),
        1,
        "the batch's first seq is the first bad one"
    );

    let tmp = tempfile::tempdir().unwrap();
    build_sled_with(tmp.path(), 3, SledOptions::default());
    with_raw_tree_named(tmp.path(), BATCHES_TREE, |t| {
        t.insert(3u64.to_be_bytes(), Vec::<u8>::new()).unwrap();
    });
    match SledLog::open(tmp.path(), SledOptions::default()) {
        Err(LogError::Corrupt { seq, reason }) => {
            assert_eq!(seq, 1);
            assert!(reason.contains("empty"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn sled_open_creates_batched_when_asked_for_segments() {
    // The default layout of new logs is segments, which sled cannot store.
    assert_eq!(SledOptions::default().new_layout, Layout::Segments);
    let tmp = tempfile::tempdir().unwrap();
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.layout(), Layout::Batched);
    log.append(events(1, 2)).unwrap();
    drop(log);
    assert_eq!(entries(tmp.path(), BATCHES_TREE).len(), 1);
    assert!(!tmp.path().join(amisim_log::SEGMENTS_DIR).exists());
    assert_eq!(Layout::Segments.tree_name(), None);
}
