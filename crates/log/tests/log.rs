//! The EventLog contract, run over every implementation (memory, sled, segments, DiskLog), plus
//! SledLog persistence and corruption detection (segments: tests/segments.rs).

mod common;

use std::sync::Arc;

use amisim_log::{
    hash_event, verify_events, DiskLog, Event, EventLog, Head, Layout, LogError, MemoryLog,
    SegmentLog, SegmentOptions, SledLog, SledOptions, ZERO_HASH,
};
use common::{build_sled, corrupt_seq, event, events, with_raw_tree};
use proptest::prelude::*;

/// The shared suite: every `EventLog` must pass it, starting empty.
fn contract_suite<L: EventLog>(log: &L) {
    // Empty log.
    assert_eq!(log.head(), Head::EMPTY);
    assert!(log.read_range(0, u64::MAX).unwrap().is_empty());
    assert_eq!(log.verify().unwrap(), Head::EMPTY);
    assert!(log.append(Vec::new()).unwrap().is_empty());
    assert_eq!(log.head(), Head::EMPTY);
    let mut rx = log.subscribe_head();
    assert_eq!(*rx.borrow_and_update(), 0);

    // First batch: seqs from 1, chain from the zero hash, envelope fields kept.
    let input = events(1, 3);
    let stamped = log.append(input.clone()).unwrap();
    assert_eq!(stamped.len(), 3);
    assert_eq!(stamped[0].prev_hash, ZERO_HASH.to_vec());
    for (i, (s, orig)) in stamped.iter().zip(&input).enumerate() {
        assert_eq!(s.seq, i as u64 + 1);
        assert_eq!(s.hash.len(), 32);
        assert_eq!(s.hash, hash_event(&s.prev_hash, s).to_vec());
        let mut unstamped = s.clone();
        unstamped.seq = 0;
        unstamped.prev_hash.clear();
        unstamped.hash.clear();
        assert_eq!(&unstamped, orig, "the log changed a caller field");
    }
    assert_eq!(stamped[1].prev_hash, stamped[0].hash);
    assert_eq!(log.head().seq, 3);
    assert_eq!(log.head().hash.to_vec(), stamped[2].hash);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 3);

    // Whatever the caller put in seq / prev_hash / hash is overwritten.
    let mut junk = event(4);
    junk.seq = 77;
    junk.prev_hash = vec![1; 5];
    junk.hash = vec![2; 32];
    let s4 = log.append(vec![junk]).unwrap();
    assert_eq!(s4[0].seq, 4);
    assert_eq!(s4[0].prev_hash, stamped[2].hash);
    assert_eq!(s4[0].hash, hash_event(&stamped[2].hash, &s4[0]).to_vec());

    // More batches continue gaplessly.
    let s5 = log.append(events(5, 5)).unwrap();
    assert_eq!(
        s5.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
    assert_eq!(s5[0].prev_hash, s4[0].hash);
    assert_eq!(*rx.borrow_and_update(), 9);

    // read_range bounds.
    let all = log.read_range(1, 9).unwrap();
    let mut expected = stamped.clone();
    expected.extend(s4.clone());
    expected.extend(s5.clone());
    assert_eq!(all, expected);
    let seqs = |from, to| -> Vec<u64> {
        log.read_range(from, to)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(0, 3), vec![1, 2, 3]);
    assert_eq!(seqs(4, 4), vec![4]);
    assert_eq!(seqs(8, 100), vec![8, 9]);
    assert_eq!(seqs(9, u64::MAX), vec![9]);
    assert!(seqs(10, 20).is_empty());
    assert!(seqs(5, 3).is_empty());
    assert!(seqs(0, 0).is_empty());
    assert!(seqs(u64::MAX, u64::MAX).is_empty());

    // The chain verifies, through the log and through the shared function.
    let head = log.verify().unwrap();
    assert_eq!(head, log.head());
    assert_eq!(head.seq, 9);
    assert_eq!(verify_events(all.clone(), 1).unwrap(), head);
    assert_eq!(verify_events(all[4..].to_vec(), 5).unwrap(), head);
}

/// Concurrent appenders: the mutex keeps seqs gapless and the chain linear.
fn concurrent_suite<L: EventLog>(log: Arc<L>) {
    let start = log.head().seq;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for b in 0..10u64 {
                    let batch = events(1000 * t + 10 * b, 1 + (b % 3));
                    let n = batch.len() as u64;
                    let stamped = log.append(batch).unwrap();
                    // A batch gets consecutive seqs.
                    assert_eq!(stamped.last().unwrap().seq - stamped[0].seq + 1, n);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let added = 4 * (0..10u64).map(|b| 1 + (b % 3)).sum::<u64>();
    let head = log.verify().unwrap();
    assert_eq!(head.seq, start + added);
    let all = log.read_range(1, u64::MAX).unwrap();
    assert_eq!(all.len() as u64, head.seq);
    assert_eq!(verify_events(all, 1).unwrap(), head);
}

#[test]
fn memory_log_passes_the_contract() {
    let log = MemoryLog::new();
    contract_suite(&log);
    concurrent_suite(Arc::new(log));
}

#[test]
fn sled_log_passes_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    contract_suite(&log);
    concurrent_suite(Arc::new(log));
}

#[test]
fn segment_log_passes_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(tmp.path(), &SegmentOptions::default()).unwrap();
    contract_suite(&log);
    concurrent_suite(Arc::new(log));
}

#[test]
fn segment_log_with_tiny_segments_passes_the_contract() {
    // Every append after the first record of a segment starts a new one.
    let tmp = tempfile::tempdir().unwrap();
    let opts = SegmentOptions {
        segment_bytes: 1,
        ..SegmentOptions::default()
    };
    let log = SegmentLog::open(tmp.path(), &opts).unwrap();
    contract_suite(&log);
    concurrent_suite(Arc::new(log));
}

#[test]
fn segment_log_in_a_new_nested_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data").join("us-east-1");
    let log = SegmentLog::open(&dir, &SegmentOptions::default()).unwrap();
    assert_eq!(log.dir(), dir.as_path());
    contract_suite(&log);
}

#[test]
fn disk_log_passes_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("region");
    let log = DiskLog::open(&dir, SledOptions::default()).unwrap();
    assert_eq!(log.layout(), Layout::Segments);
    contract_suite(&log);
    concurrent_suite(Arc::new(log));
    // Over sled too.
    let sled_dir = tmp.path().join("sled");
    let log = DiskLog::open(&sled_dir, common::batched()).unwrap();
    assert_eq!(log.layout(), Layout::Batched);
    contract_suite(&log);
    concurrent_suite(Arc::new(log));
}

#[test]
fn sled_log_in_a_new_nested_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data").join("us-east-1");
    let log = SledLog::open(&dir, SledOptions::default()).unwrap();
    contract_suite(&log);
}

#[test]
fn sled_reopen_keeps_seqs_gapless_and_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let head1 = {
        let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
        log.append(events(1, 4)).unwrap();
        log.append(events(5, 1)).unwrap();
        log.head()
    };
    assert_eq!(head1.seq, 5);
    let head2 = {
        let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
        assert_eq!(log.head(), head1);
        assert_eq!(*log.subscribe_head().borrow(), 5);
        let s = log.append(events(6, 3)).unwrap();
        assert_eq!(s[0].seq, 6);
        assert_eq!(s[0].prev_hash, head1.hash.to_vec());
        log.head()
    };
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.head(), head2);
    assert_eq!(log.verify().unwrap(), head2);
    let all = log.read_range(1, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // Stored bytes decode to exactly what append returned (checked via the chain).
    assert_eq!(verify_events(all, 1).unwrap(), head2);
}

#[test]
fn sled_large_events_go_to_blobs_and_survive_reopen() {
    // Values above sled's inline threshold (segment_size / 4 = 128 KiB) become blob files.
    let tmp = tempfile::tempdir().unwrap();
    let mut big = event(2);
    if let Some(amisim_proto::event::Payload::ImageRegistered(img)) = big.payload.as_mut() {
        img.uefi_data = "A".repeat(300 * 1024);
    }
    let head = {
        let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
        log.append(events(1, 2)).unwrap();
        log.append(vec![big.clone(), event(4)]).unwrap();
        log.head()
    };
    let blobs = std::fs::read_dir(tmp.path().join("blobs")).unwrap().count();
    assert!(blobs > 0, "expected sled to write a blob file");
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.head(), head);
    let third = log.read_range(3, 3).unwrap().remove(0);
    assert_eq!(third.payload, big.payload);
}

#[test]
fn sled_open_is_exclusive() {
    let tmp = tempfile::tempdir().unwrap();
    let _log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert!(SledLog::open(tmp.path(), SledOptions::default()).is_err());
}

// ---- corruption detection on open ----

const N: u64 = 10;

fn open_err_seq(dir: &std::path::Path) -> u64 {
    corrupt_seq(SledLog::open(dir, SledOptions::default()))
}

#[test]
fn flipped_byte_in_a_value_is_reported_at_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    let mut original = Vec::new();
    with_raw_tree(tmp.path(), |tree| {
        original = tree.get(5u64.to_be_bytes()).unwrap().unwrap().to_vec();
    });
    // Every single byte of the stored value, flipped in turn, is caught at seq 5.
    for pos in 0..original.len() {
        let mut bad = original.clone();
        bad[pos] ^= 0xFF;
        with_raw_tree(tmp.path(), |tree| {
            tree.insert(5u64.to_be_bytes(), bad).unwrap();
        });
        assert_eq!(open_err_seq(tmp.path()), 5, "flip at byte {pos}");
    }
    // Without verify_on_open the log opens, and verify() names the same seq.
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    with_raw_tree(tmp.path(), |tree| {
        tree.insert(5u64.to_be_bytes(), bad).unwrap();
    });
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    {
        let log = SledLog::open(tmp.path(), opts).unwrap();
        assert_eq!(log.head().seq, N);
        assert_eq!(corrupt_seq(log.verify()), 5);
    }
    // Restored, it opens again.
    with_raw_tree(tmp.path(), |tree| {
        tree.insert(5u64.to_be_bytes(), original).unwrap();
    });
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.verify().unwrap().seq, N);
}

#[test]
fn deleted_event_is_reported_at_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        tree.remove(5u64.to_be_bytes()).unwrap();
    });
    assert_eq!(open_err_seq(tmp.path()), 5);
    // The first event missing.
    with_raw_tree(tmp.path(), |tree| {
        tree.remove(1u64.to_be_bytes()).unwrap();
    });
    assert_eq!(open_err_seq(tmp.path()), 1);
}

#[test]
fn read_range_reports_a_hole_below_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        tree.remove(5u64.to_be_bytes()).unwrap();
    });
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    let log = SledLog::open(tmp.path(), opts).unwrap();
    assert!(matches!(
        log.read_range(3, 8),
        Err(LogError::NonContiguous {
            expected: 5,
            found: 6
        })
    ));
    assert_eq!(log.read_range(1, 4).unwrap().len(), 4);
    assert_eq!(corrupt_seq(log.verify()), 5);
}

#[test]
fn swapped_events_are_reported_at_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        let a = tree.get(4u64.to_be_bytes()).unwrap().unwrap();
        let b = tree.get(7u64.to_be_bytes()).unwrap().unwrap();
        tree.insert(4u64.to_be_bytes(), b).unwrap();
        tree.insert(7u64.to_be_bytes(), a).unwrap();
    });
    assert_eq!(open_err_seq(tmp.path()), 4);
}

#[test]
fn swapped_and_renumbered_events_are_reported_at_the_first() {
    // A forger swaps events 6 and 7 and fixes their seqs: the chain still breaks at 6.
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        use prost::Message;
        let get = |s: u64| Event::decode(&*tree.get(s.to_be_bytes()).unwrap().unwrap()).unwrap();
        let (mut a, mut b) = (get(6), get(7));
        std::mem::swap(&mut a.seq, &mut b.seq);
        tree.insert(6u64.to_be_bytes(), b.encode_to_vec()).unwrap();
        tree.insert(7u64.to_be_bytes(), a.encode_to_vec()).unwrap();
    });
    assert_eq!(open_err_seq(tmp.path()), 6);
}

#[test]
fn garbage_value_and_bad_key_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        tree.insert(3u64.to_be_bytes(), &[0xFF, 0xFF, 0xFF][..])
            .unwrap();
    });
    assert_eq!(open_err_seq(tmp.path()), 3);

    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        tree.insert(b"zz", &b"not an event"[..]).unwrap();
    });
    assert_eq!(open_err_seq(tmp.path()), N + 1);
}

#[test]
fn a_truncated_tail_is_a_shorter_valid_log() {
    // Documented limit: without an external anchor, losing the newest events cannot be told
    // from never having written them. The log opens at the shorter head and continues from it.
    let tmp = tempfile::tempdir().unwrap();
    build_sled(tmp.path(), N);
    with_raw_tree(tmp.path(), |tree| {
        tree.remove(N.to_be_bytes()).unwrap();
    });
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.head().seq, N - 1);
    assert_eq!(log.append(events(100, 1)).unwrap()[0].seq, N);
    assert_eq!(log.verify().unwrap().seq, N);
}

// ---- property tests ----

fn check_batches<L: EventLog>(log: &L, batches: &[usize]) -> Result<Head, TestCaseError> {
    let mut next = log.head().seq + 1;
    for (b, &size) in batches.iter().enumerate() {
        let stamped = log
            .append(events(1000 * b as u64, size as u64))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(stamped.len(), size);
        for e in &stamped {
            prop_assert_eq!(e.seq, next);
            next += 1;
        }
        prop_assert_eq!(log.head().seq, next - 1);
    }
    let head = log
        .verify()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(head, log.head());
    let all = log
        .read_range(1, u64::MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..next).collect::<Vec<_>>()
    );
    Ok(head)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn memory_random_batches_are_gapless(batches in prop::collection::vec(0usize..40, 1..12)) {
        let log = MemoryLog::new();
        check_batches(&log, &batches)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn segment_random_batches_are_gapless_across_reopen(
        batches in prop::collection::vec(0usize..40, 1..8),
        more in prop::collection::vec(0usize..10, 0..4),
        segment_bytes in prop_oneof![Just(1u64), 1u64..20_000, Just(64 * 1024 * 1024)],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = SegmentOptions { segment_bytes, ..SegmentOptions::default() };
        let head = {
            let log = SegmentLog::open(tmp.path(), &opts).unwrap();
            check_batches(&log, &batches)?
        };
        let log = SegmentLog::open(tmp.path(), &opts).unwrap();
        prop_assert_eq!(log.head(), head);
        check_batches(&log, &more)?;
    }

    #[test]
    fn disk_log_random_batches_are_gapless_across_reopen(
        batches in prop::collection::vec(0usize..40, 1..6),
        more in prop::collection::vec(0usize..10, 0..3),
        segment_bytes in prop_oneof![Just(1u64), 1u64..20_000],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = SledOptions { segment_bytes, ..SledOptions::default() };
        let head = {
            let log = DiskLog::open(tmp.path(), opts.clone()).unwrap();
            prop_assert_eq!(log.layout(), Layout::Segments);
            check_batches(&log, &batches)?
        };
        let log = DiskLog::open(tmp.path(), opts).unwrap();
        prop_assert_eq!(log.head(), head);
        check_batches(&log, &more)?;
    }

    #[test]
    fn sled_random_batches_are_gapless_across_reopen(
        batches in prop::collection::vec(0usize..40, 1..8),
        more in prop::collection::vec(0usize..10, 0..4),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let head = {
            let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
            check_batches(&log, &batches)?
        };
        let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
        prop_assert_eq!(log.head(), head);
        check_batches(&log, &more)?;
    }
}
