//! The segment log: persistence, segment rolling, the directory lock, torn tails, corruption and
//! tampering (found at the same seq as in sled), the on-disk format, and `DiskLog`'s choice of
//! backend.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use amisim_log::{
    edit_stored_events, verify_events, DiskLog, Event, EventLog, Head, Layout, LogError,
    SegmentLog, SegmentOptions, SledLog, SledOptions, SEGMENTS_DIR,
};
use amisim_proto::EventBatch;
use common::{batched, build_sled_with, corrupt_seq, event, events};
use prost::Message;

const N: u64 = 10;

/// Without preallocation, so that a file ends with its last record and the tests below can
/// find records and damage them by file length. Preallocation has its own tests at the end.
fn opts() -> SegmentOptions {
    SegmentOptions {
        preallocate_bytes: 0,
        ..SegmentOptions::default()
    }
}

fn no_verify() -> SegmentOptions {
    SegmentOptions {
        verify_on_open: false,
        ..opts()
    }
}

/// The segment files of a log directory, in name order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn only_segment(dir: &Path) -> PathBuf {
    let files = segment_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Runs `f` with a tracing subscriber on this thread and returns what it logged.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

// ---- persistence and rolling ----

#[test]
fn reopen_keeps_seqs_gapless_and_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let head1 = {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        for b in 0..50 {
            log.append(events(1 + 7 * b, 7)).unwrap();
        }
        log.head()
    };
    assert_eq!(head1.seq, 350);
    let head2 = {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        assert_eq!(log.head(), head1);
        assert_eq!(*log.subscribe_head().borrow(), 350);
        let s = log.append(events(351, 3)).unwrap();
        assert_eq!(s[0].seq, 351);
        assert_eq!(s[0].prev_hash, head1.hash.to_vec());
        log.append(events(354, 1)).unwrap();
        log.head()
    };
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    assert_eq!(log.head(), head2);
    assert_eq!(log.verify().unwrap(), head2);
    let all = log.read_range(1, u64::MAX).unwrap();
    assert_eq!(seqs(&all), (1..=354).collect::<Vec<_>>());
    assert_eq!(verify_events(all, 1).unwrap(), head2);
}

#[test]
fn an_empty_log_reopens_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new").join("log");
    drop(SegmentLog::open(&dir, &opts()).unwrap());
    let seg = only_segment(&dir);
    assert_eq!(
        seg.file_name().unwrap().to_str().unwrap(),
        "00000000000000000001.seg"
    );
    assert_eq!(file_len(&seg), 16, "just the segment header");
    let log = SegmentLog::open(&dir, &opts()).unwrap();
    assert_eq!(log.head(), Head::EMPTY);
    assert!(log.read_range(0, u64::MAX).unwrap().is_empty());
    assert_eq!(log.verify().unwrap(), Head::EMPTY);
    assert_eq!(log.append(events(1, 2)).unwrap()[0].seq, 1);
}

#[test]
fn segments_roll_and_reads_cross_them() {
    let tmp = tempfile::tempdir().unwrap();
    // Preallocation on: a full segment's zeros are cut when the next one starts.
    let small = SegmentOptions {
        segment_bytes: 2000,
        ..SegmentOptions::default()
    };
    let head = {
        let log = SegmentLog::open(tmp.path(), &small).unwrap();
        let mut i = 1;
        for b in 0..40u64 {
            let k = 1 + b % 5;
            log.append(events(i, k)).unwrap();
            i += k;
        }
        log.head()
    };
    let files = segment_files(tmp.path());
    assert!(files.len() >= 4, "{} segments", files.len());
    // Each file is named after the first seq of its first record; sizes stay near the limit,
    // and every segment but the last ends with its last record (its preallocated space was cut
    // when the next one started); the last one's preallocated space is zeros.
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let first_seq = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        let name = f.file_stem().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{first_seq:020}"));
        let end = records_end(&bytes);
        assert!(end < 2000 + 2000, "{end} bytes of records");
        if i + 1 < files.len() {
            assert_eq!(
                end,
                bytes.len(),
                "{} goes on after its records",
                f.display()
            );
        } else {
            // Extended by 1 MiB past its first record, filled since.
            let pre = SegmentOptions::default().preallocate_bytes;
            assert!(bytes.len() > end && bytes.len() as u64 <= end as u64 + pre);
            assert!(bytes[end..].iter().all(|&b| b == 0));
        }
    }
    for opts in [small.clone(), opts()] {
        let log = SegmentLog::open(tmp.path(), &opts).unwrap();
        assert_eq!(log.head(), head);
        assert_eq!(log.verify().unwrap(), head);
        for from in 1..=head.seq {
            let to = (from + 13).min(head.seq);
            assert_eq!(
                seqs(&log.read_range(from, to).unwrap()),
                (from..=to).collect::<Vec<_>>()
            );
        }
    }
    // Appends after reopen go on rolling.
    let log = SegmentLog::open(tmp.path(), &small).unwrap();
    for b in 0..10 {
        log.append(events(1000 + b * 10, 10)).unwrap();
    }
    assert!(segment_files(tmp.path()).len() > files.len());
    assert_eq!(log.verify().unwrap().seq, head.seq + 100);
}

#[test]
fn a_batch_of_any_size_is_one_record() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    let mut big = event(2);
    if let Some(amisim_proto::event::Payload::ImageRegistered(img)) = big.payload.as_mut() {
        img.uefi_data = "A".repeat(300 * 1024);
    }
    let mut batch = events(1, 500);
    batch.push(big.clone());
    let stamped = log.append(batch).unwrap();
    let bytes = std::fs::read(only_segment(tmp.path())).unwrap();
    let payload_len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    assert_eq!(16 + 20 + payload_len, bytes.len(), "one record");
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 501);
    drop(log);
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    assert_eq!(log.read_range(1, 501).unwrap(), stamped);
    assert_eq!(log.read_range(501, 501).unwrap()[0].payload, big.payload);
}

#[test]
fn the_bytes_on_disk_follow_the_documented_format() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    let first = log.append(events(1, 3)).unwrap();
    let second = log.append(events(4, 1)).unwrap();
    let bytes = std::fs::read(only_segment(tmp.path())).unwrap();
    assert_eq!(&bytes[0..8], b"AMISIMSG");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 0);
    let mut pos = 16;
    for (want_first, want) in [(1u64, &first), (4, &second)] {
        let h = &bytes[pos..pos + 20];
        let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let first_seq = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
        let payload = &bytes[pos + 20..pos + 20 + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h[0..16]);
        hasher.update(payload);
        assert_eq!(crc, hasher.finalize());
        assert_eq!(first_seq, want_first);
        assert_eq!(count as usize, want.len());
        // The payload is exactly the protobuf EventBatch of the stamped events.
        let batch = EventBatch::decode(payload).unwrap();
        assert_eq!(&batch.events, want);
        assert_eq!(
            payload,
            EventBatch {
                events: want.clone()
            }
            .encode_to_vec()
        );
        pos += 20 + len;
    }
    assert_eq!(pos, bytes.len());
}

#[test]
fn a_log_of_200k_events_opens_from_its_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 200_000u64;
    let head = {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        let mut i = 1;
        while i <= n {
            log.append(events(i, 2000)).unwrap();
            i += 2000;
        }
        log.head()
    };
    assert_eq!(head.seq, n);
    let log = SegmentLog::open(tmp.path(), &no_verify()).unwrap();
    assert_eq!(log.head(), head);
    assert_eq!(
        seqs(&log.read_range(n - 2500, n).unwrap()),
        (n - 2500..=n).collect::<Vec<_>>()
    );
    let s = log.append(events(n + 1, 1)).unwrap();
    assert_eq!(s[0].prev_hash, head.hash.to_vec());
}

// ---- the lock ----

#[test]
fn open_is_exclusive() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    log.append(events(1, 2)).unwrap();
    match SegmentLog::open(tmp.path(), &opts()) {
        Err(e @ LogError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("another amisim"), "{msg}");
            assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(log);
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    assert_eq!(log.head().seq, 2);
    // Through DiskLog too.
    let region = tmp.path().join("region");
    let _disk = DiskLog::open(&region, SledOptions::default()).unwrap();
    assert!(matches!(
        DiskLog::open(&region, SledOptions::default()),
        Err(LogError::Locked { .. })
    ));
}

// ---- torn tails ----

/// A log with a record of events 1..=3 and one of 4..=5; returns the valid length after the
/// first record, the file length after both, and the head after the first record.
fn two_records(dir: &Path) -> (u64, u64, Head) {
    let log = SegmentLog::open(dir, &opts()).unwrap();
    log.append(events(1, 3)).unwrap();
    let head = log.head();
    let seg = only_segment(dir);
    let after_first = file_len(&seg);
    log.append(events(4, 2)).unwrap();
    (after_first, file_len(&seg), head)
}

/// Reopens a log whose last record is torn, checks it opens at `head` with a warning, leaves
/// the file alone, and that the next append cuts the tail and continues.
fn check_torn_tail(dir: &Path, valid: u64, head: Head) {
    let seg = only_segment(dir);
    let before = std::fs::read(&seg).unwrap();
    let (log, warning) = logged(|| SegmentLog::open(dir, &opts()).unwrap());
    assert_eq!(log.head(), head);
    assert_eq!(log.verify().unwrap(), head);
    assert!(warning.contains("WARN"), "no warning: {warning:?}");
    assert!(warning.contains(&seg.display().to_string()), "{warning}");
    assert!(warning.contains(&format!("offset={valid}")), "{warning}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "open changed the file"
    );
    assert_eq!(seqs(&log.read_range(1, 100).unwrap()), vec![1, 2, 3]);
    // Reads and a second open leave it alone too.
    drop(log);
    let log = SegmentLog::open(dir, &no_verify()).unwrap();
    assert_eq!(std::fs::read(&seg).unwrap(), before);
    // One event: a shorter record than the torn one, so torn bytes left behind would show.
    let s = log.append(events(100, 1)).unwrap();
    assert_eq!(seqs(&s), vec![4]);
    assert_eq!(s[0].prev_hash, head.hash.to_vec());
    let head2 = log.head();
    // The torn bytes are gone: the file ends with the new record.
    let bytes = std::fs::read(&seg).unwrap();
    let at = valid as usize;
    let new_len = 20 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), at + new_len, "the torn tail was not cut off");
    assert_eq!(&bytes[..at], &before[..at]);
    drop(log);
    let (log, warning) = logged(|| SegmentLog::open(dir, &opts()).unwrap());
    assert!(!warning.contains("WARN"), "{warning}");
    assert_eq!(log.head(), head2);
    assert_eq!(log.verify().unwrap(), head2);
    assert_eq!(seqs(&log.read_range(1, 100).unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn a_record_cut_short_is_a_torn_tail() {
    for cut in [1, 10, 19, 20, 21] {
        let tmp = tempfile::tempdir().unwrap();
        let (valid, _, head) = two_records(tmp.path());
        let seg = only_segment(tmp.path());
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(valid + cut).unwrap();
        check_torn_tail(tmp.path(), valid, head);
    }
    // Cut in the middle of the payload.
    let tmp = tempfile::tempdir().unwrap();
    let (valid, full, head) = two_records(tmp.path());
    let seg = only_segment(tmp.path());
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len((valid + full) / 2).unwrap();
    check_torn_tail(tmp.path(), valid, head);
}

#[test]
fn a_last_record_with_a_bad_checksum_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (valid, full, head) = two_records(tmp.path());
    let seg = only_segment(tmp.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = ((valid + full) / 2) as usize;
    bytes[mid] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    check_torn_tail(tmp.path(), valid, head);
}

/// Where the records of a segment file end: at the end of the file or at a header of zeros.
fn records_end(bytes: &[u8]) -> usize {
    let mut pos = 16;
    while pos + 20 <= bytes.len() && bytes[pos..pos + 20] != [0u8; 20] {
        pos += 20 + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    pos
}

#[test]
fn zero_bytes_after_the_last_record_are_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, full, _) = two_records(tmp.path());
    let seg = only_segment(tmp.path());
    // Drop the second record and leave a zeroed block where it was being written.
    let mut bytes = std::fs::read(&seg).unwrap();
    let valid = {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        assert_eq!(log.head().seq, 5);
        drop(log);
        let first_len = 20 + u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as u64;
        16 + first_len
    };
    assert!(valid < full);
    bytes.truncate(valid as usize);
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&seg, &bytes).unwrap();
    let head = {
        // The head of events 1..=3 is that of a log with only them.
        let other = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(other.path(), &opts()).unwrap();
        log.append(events(1, 3)).unwrap();
        log.head()
    };
    // What a crash leaves in preallocated space, or preallocated space itself: not a torn
    // record, so no warning; the file is left alone and the next append writes into the zeros.
    let (log, warning) = logged(|| SegmentLog::open(tmp.path(), &opts()).unwrap());
    assert!(!warning.contains("WARN"), "{warning}");
    assert_eq!(log.head(), head);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "open changed the file");
    let s = log.append(events(100, 1)).unwrap();
    assert_eq!(seqs(&s), vec![4]);
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(
        after.len(),
        bytes.len(),
        "the append did not go into the zeros"
    );
    assert_eq!(&after[..valid as usize], &bytes[..valid as usize]);
    assert_eq!(
        records_end(&after),
        valid as usize
            + 20
            + u32::from_le_bytes(
                after[valid as usize..valid as usize + 4]
                    .try_into()
                    .unwrap()
            ) as usize
    );
    drop(log);
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    assert_eq!(log.verify().unwrap().seq, 4);
    assert_eq!(seqs(&log.read_range(1, 100).unwrap()), vec![1, 2, 3, 4]);
}

// ---- preallocation ----

#[test]
fn appends_go_into_preallocated_zeros_and_a_reopen_continues_there() {
    let tmp = tempfile::tempdir().unwrap();
    let pre = SegmentOptions {
        preallocate_bytes: 64 * 1024,
        ..SegmentOptions::default()
    };
    let log = SegmentLog::open(tmp.path(), &pre).unwrap();
    log.append(events(1, 3)).unwrap();
    let seg = only_segment(tmp.path());
    let bytes = std::fs::read(&seg).unwrap();
    let first_end = records_end(&bytes);
    // The first append extended the file by the record and 64 KiB of zeros.
    assert_eq!(bytes.len(), first_end + 64 * 1024);
    assert!(bytes[first_end..].iter().all(|&b| b == 0));
    log.append(events(4, 2)).unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(
        bytes.len(),
        first_end + 64 * 1024,
        "the second append grew the file"
    );
    let end = records_end(&bytes);
    assert!(end > first_end);
    let head = log.head();
    drop(log);

    let (log, warning) = logged(|| SegmentLog::open(tmp.path(), &pre).unwrap());
    assert!(!warning.contains("WARN"), "{warning}");
    assert_eq!(log.head(), head);
    assert_eq!(log.verify().unwrap(), head);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "open changed the file");
    // Appends go on where the records end, inside the file, until it is full; then one
    // extends it again by a record and the zeros after it.
    let mut seq = 6;
    while std::fs::metadata(&seg).unwrap().len() == bytes.len() as u64 {
        log.append(events(seq, 50)).unwrap();
        seq += 50;
        let now = std::fs::read(&seg).unwrap();
        assert_eq!(&now[..end], &bytes[..end]);
    }
    let now = std::fs::read(&seg).unwrap();
    let records = records_end(&now);
    assert_eq!(now.len(), records + 64 * 1024);
    drop(log);
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    assert_eq!(log.verify().unwrap().seq, seq - 1);
    assert_eq!(
        seqs(&log.read_range(1, seq - 1).unwrap()),
        (1..seq).collect::<Vec<_>>()
    );
}

/// A preallocated log of a record of events 1..=3 and one of 4..=5, the second damaged by
/// `damage(bytes, start, end)` (its offsets in the file) as a crash during its append could
/// leave it. Checks that open reports a torn tail at its offset without touching the file, and
/// that the next append cuts it off and writes in its place.
fn check_torn_before_zeros(damage: impl FnOnce(&mut [u8], usize, usize)) {
    let tmp = tempfile::tempdir().unwrap();
    let pre = SegmentOptions::default();
    let log = SegmentLog::open(tmp.path(), &pre).unwrap();
    log.append(events(1, 3)).unwrap();
    let head = log.head();
    let seg = only_segment(tmp.path());
    let valid = records_end(&std::fs::read(&seg).unwrap());
    log.append(events(4, 2)).unwrap();
    drop(log);
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = records_end(&bytes);
    damage(&mut bytes, valid, end);
    std::fs::write(&seg, &bytes).unwrap();

    let (log, warning) = logged(|| SegmentLog::open(tmp.path(), &pre).unwrap());
    assert!(warning.contains("WARN"), "no warning: {warning:?}");
    assert!(warning.contains(&format!("offset={valid}")), "{warning}");
    assert_eq!(log.head(), head);
    assert_eq!(log.verify().unwrap(), head);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "open changed the file");
    let s = log.append(events(100, 1)).unwrap();
    assert_eq!(seqs(&s), vec![4]);
    assert_eq!(s[0].prev_hash, head.hash.to_vec());
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(&after[..valid], &bytes[..valid]);
    let new_end = records_end(&after);
    assert!(
        after[new_end..].iter().all(|&b| b == 0),
        "torn bytes left behind"
    );
    drop(log);
    let (log, warning) = logged(|| SegmentLog::open(tmp.path(), &pre).unwrap());
    assert!(!warning.contains("WARN"), "{warning}");
    assert_eq!(log.verify().unwrap().seq, 4);
    assert_eq!(seqs(&log.read_range(1, 100).unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn a_torn_record_before_preallocated_zeros_is_a_torn_tail() {
    // The second record half written when the machine stopped: its second half still zeros.
    check_torn_before_zeros(|bytes, start, end| bytes[(start + end) / 2..end].fill(0));
}

#[test]
fn a_record_whose_header_page_was_not_written_is_a_torn_tail() {
    // Inside preallocated space a crash can keep a record's later bytes but not the page with
    // its header: zeros, then the rest of the record, then zeros.
    check_torn_before_zeros(|bytes, start, _| bytes[start..start + 20].fill(0));
}

#[test]
fn a_damaged_length_field_is_not_a_torn_tail() {
    // A length that points past the end of the file, in the last record or one before it:
    // the record is whole, so its events were acknowledged.
    for (record, flip) in [(1usize, 2usize), (1, 3), (0, 2), (0, 1)] {
        let tmp = tempfile::tempdir().unwrap();
        let (valid, _, _) = two_records(tmp.path());
        let seg = only_segment(tmp.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = [16, valid as usize][record] + flip;
        bytes[at] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        let expected = [1, 4][record];
        assert_eq!(
            corrupt_seq(SegmentLog::open(tmp.path(), &no_verify())),
            expected,
            "record {record}, byte {flip}"
        );
    }
    // A shorter length sends the scan into the record's payload: the record's checksum says so.
    let tmp = tempfile::tempdir().unwrap();
    two_records(tmp.path());
    let seg = only_segment(tmp.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[16] ^= 0x08;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        SegmentLog::open(tmp.path(), &no_verify()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn damage_before_the_last_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let small = SegmentOptions {
        segment_bytes: 1,
        ..SegmentOptions::default()
    };
    {
        let log = SegmentLog::open(tmp.path(), &small).unwrap();
        log.append(events(1, 3)).unwrap();
        log.append(events(4, 3)).unwrap();
        log.append(events(7, 3)).unwrap();
    }
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 3);
    // The middle segment loses the end of its only record (4..=6): not a torn tail.
    let len = file_len(&files[1]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap();
    file.set_len(len - 5).unwrap();
    assert_eq!(corrupt_seq(SegmentLog::open(tmp.path(), &no_verify())), 4);
    // A bad checksum there (whole length) opens without verify, and reads name its first seq.
    file.set_len(len).unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    {
        let log = SegmentLog::open(tmp2.path(), &small).unwrap();
        log.append(events(1, 3)).unwrap();
        log.append(events(4, 3)).unwrap();
        log.append(events(7, 3)).unwrap();
    }
    let files = segment_files(tmp2.path());
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&files[1], &bytes).unwrap();
    assert_eq!(corrupt_seq(SegmentLog::open(tmp2.path(), &opts())), 4);
    let log = SegmentLog::open(tmp2.path(), &no_verify()).unwrap();
    assert_eq!(log.head().seq, 9);
    assert_eq!(corrupt_seq(log.verify()), 4);
    assert_eq!(corrupt_seq(log.read_range(2, 8)), 4);
    assert_eq!(seqs(&log.read_range(1, 3).unwrap()), vec![1, 2, 3]);
    assert_eq!(seqs(&log.read_range(7, 9).unwrap()), vec![7, 8, 9]);
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_found_at_its_first_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut boundaries = Vec::new();
    {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        for b in 0..4 {
            boundaries.push(file_len(&only_segment(tmp.path())));
            log.append(events(1 + 3 * b, 3)).unwrap();
        }
    }
    // The third record holds 7..=9; flip every byte of it in turn (header and payload). The
    // damage is always found, never read as a torn tail that would drop 7..=12.
    let seg = only_segment(tmp.path());
    let original = std::fs::read(&seg).unwrap();
    let (start, end) = (boundaries[2] as usize, boundaries[3] as usize);
    for pos in start..end {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        std::fs::write(&seg, &bad).unwrap();
        if pos < start + 20 {
            // A flipped length, count or seq can break the structure: open says so; or the
            // record's checksum no longer matches and reads say so.
            match SegmentLog::open(tmp.path(), &no_verify()) {
                Err(LogError::Corrupt { .. }) => {}
                Ok(log) => {
                    assert_eq!(log.head().seq, 12, "header flip at {pos}");
                    assert!(log.read_range(1, 12).is_err(), "header flip at {pos}");
                    assert!(log.verify().is_err(), "header flip at {pos}");
                }
                Err(e) => panic!("header flip at {pos}: {e}"),
            }
        } else {
            let log = SegmentLog::open(tmp.path(), &no_verify()).unwrap();
            assert_eq!(log.head().seq, 12, "payload flip at {pos}");
            assert_eq!(
                corrupt_seq(log.read_range(5, 12)),
                7,
                "payload flip at {pos}"
            );
            assert_eq!(
                corrupt_seq(log.read_range(8, 8)),
                7,
                "payload flip at {pos}"
            );
            assert_eq!(corrupt_seq(log.verify()), 7, "payload flip at {pos}");
            assert_eq!(
                seqs(&log.read_range(1, 6).unwrap()),
                (1..=6).collect::<Vec<_>>()
            );
            assert_eq!(seqs(&log.read_range(10, 12).unwrap()), vec![10, 11, 12]);
            drop(log);
            assert_eq!(corrupt_seq(SegmentLog::open(tmp.path(), &opts())), 7);
        }
    }
    std::fs::write(&seg, &original).unwrap();
    assert_eq!(
        SegmentLog::open(tmp.path(), &opts())
            .unwrap()
            .verify()
            .unwrap()
            .seq,
        12
    );
}

// ---- structure ----

#[test]
fn bad_names_and_headers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        log.append(events(1, 3)).unwrap();
    }
    let seg = only_segment(tmp.path());
    // A stray temporary file is ignored.
    std::fs::write(tmp.path().join("00000000000000000004.seg.tmp"), b"AMI").unwrap();
    assert_eq!(SegmentLog::open(tmp.path(), &opts()).unwrap().head().seq, 3);
    // A name that does not parse.
    let stray = tmp.path().join("4.seg");
    std::fs::write(&stray, b"").unwrap();
    match SegmentLog::open(tmp.path(), &opts()) {
        Err(LogError::Corrupt { seq: 0, reason }) => assert!(reason.contains("4.seg"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    std::fs::remove_file(&stray).unwrap();
    // A bad magic, a future version.
    let good = std::fs::read(&seg).unwrap();
    for (pos, what) in [(0, "AMISIMSG"), (8, "version")] {
        let mut bad = good.clone();
        bad[pos] ^= 0x02;
        std::fs::write(&seg, &bad).unwrap();
        match SegmentLog::open(tmp.path(), &no_verify()) {
            Err(LogError::Corrupt { seq: 1, reason }) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // A segment whose name does not match its first record.
    std::fs::write(&seg, &good).unwrap();
    std::fs::rename(&seg, tmp.path().join("00000000000000000002.seg")).unwrap();
    assert_eq!(corrupt_seq(SegmentLog::open(tmp.path(), &no_verify())), 1);
}

#[test]
fn an_empty_last_segment_is_where_appends_go() {
    // A crash right after a roll leaves a last segment with a header and no record.
    let tmp = tempfile::tempdir().unwrap();
    let head = {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        log.append(events(1, 3)).unwrap();
        log.head()
    };
    let header = std::fs::read(only_segment(tmp.path())).unwrap()[..16].to_vec();
    let next = tmp.path().join("00000000000000000004.seg");
    std::fs::write(&next, &header).unwrap();
    {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        assert_eq!(log.head(), head);
        log.append(events(4, 2)).unwrap();
    }
    assert!(file_len(&next) > 16, "the append went to the last segment");
    let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
    assert_eq!(log.verify().unwrap().seq, 5);
    drop(log);
    // Named after the wrong seq, it is refused.
    std::fs::write(tmp.path().join("00000000000000000009.seg"), &header).unwrap();
    assert_eq!(corrupt_seq(SegmentLog::open(tmp.path(), &no_verify())), 6);
}

// ---- tampering: the same first bad seq as sled ----

/// Builds a segment log (through `DiskLog`, in `dir/log`) with events 1..=n appended in
/// batches of 3, like `build_sled`.
fn build_segments(dir: &Path, n: u64) {
    let log = DiskLog::open(dir, SledOptions::default()).unwrap();
    assert_eq!(log.layout(), Layout::Segments);
    let mut i = 1;
    while i <= n {
        let k = 3.min(n - i + 1);
        log.append(events(i, k)).unwrap();
        i += k;
    }
}

type Stored = std::collections::BTreeMap<u64, Vec<u8>>;
/// A tamper case: its name, the edit, and what opening gives (head seq, or first bad seq).
type Case = (&'static str, Box<dyn Fn(&mut Stored)>, Result<u64, u64>);

/// Applies `edit` to a sled batched log and to a segment log of the same events, and returns
/// what opening each gives (verify on): the first bad seq, or the head seq (as `Ok`).
fn both(edit: &dyn Fn(&mut Stored)) -> (Result<u64, u64>, Result<u64, u64>) {
    let tmp = tempfile::tempdir().unwrap();
    let sled = tmp.path().join("sled");
    let segs = tmp.path().join("segs");
    build_sled_with(&sled, N, batched());
    build_segments(&segs, N);
    assert_eq!(edit_stored_events(&sled, edit).unwrap(), Layout::Batched);
    assert_eq!(edit_stored_events(&segs, edit).unwrap(), Layout::Segments);
    assert!(!segs.join("db").exists());
    let open = |dir: &Path| match DiskLog::open(dir, SledOptions::default()) {
        Ok(log) => Ok(log.head().seq),
        Err(LogError::Corrupt { seq, .. }) => Err(seq),
        Err(e) => panic!("open: {e}"),
    };
    (open(&sled), open(&segs))
}

#[test]
fn tampering_is_found_at_the_same_seq_as_in_sled() {
    let cases: Vec<Case> = vec![
        ("intact", Box::new(|_| {}), Ok(N)),
        (
            "flip",
            Box::new(|t| {
                let v = t.get_mut(&7).unwrap();
                let last = v.len() - 1;
                v[last] ^= 0x01;
            }),
            Err(7),
        ),
        (
            "garbage",
            Box::new(|t| {
                t.insert(3, vec![0xff; 3]);
            }),
            Err(3),
        ),
        (
            "delete",
            Box::new(|t| {
                t.remove(&5).unwrap();
            }),
            Err(5),
        ),
        (
            "delete the first",
            Box::new(|t| {
                t.remove(&1).unwrap();
            }),
            Err(1),
        ),
        (
            "swap",
            Box::new(|t| {
                let a = t.remove(&4).unwrap();
                let b = t.remove(&7).unwrap();
                t.insert(4, b);
                t.insert(7, a);
            }),
            Err(4),
        ),
        (
            "swap and renumber",
            Box::new(|t| {
                let get = |s: u64| Event::decode(&t[&s][..]).unwrap();
                let (mut a, mut b) = (get(6), get(7));
                std::mem::swap(&mut a.seq, &mut b.seq);
                t.insert(6, b.encode_to_vec());
                t.insert(7, a.encode_to_vec());
            }),
            Err(6),
        ),
        // A cut-off tail is a shorter valid chain (only signed digests show it).
        (
            "truncate",
            Box::new(|t| {
                t.remove(&N).unwrap();
            }),
            Ok(N - 1),
        ),
    ];
    for (name, edit, expected) in cases {
        let (sled, segs) = both(&*edit);
        assert_eq!(sled, expected, "{name}: sled");
        assert_eq!(segs, expected, "{name}: segments");
    }
}

#[test]
fn every_flipped_byte_of_an_event_is_found_at_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    build_segments(tmp.path(), N);
    let mut original = Vec::new();
    edit_stored_events(tmp.path(), |t| original = t[&5].clone()).unwrap();
    for pos in 0..original.len() {
        let mut bad = original.clone();
        bad[pos] ^= 0xFF;
        edit_stored_events(tmp.path(), |t| {
            t.insert(5, bad);
        })
        .unwrap();
        assert_eq!(
            corrupt_seq(DiskLog::open(tmp.path(), SledOptions::default())),
            5,
            "flip at byte {pos}"
        );
    }
    edit_stored_events(tmp.path(), |t| {
        t.insert(5, original);
    })
    .unwrap();
    let log = DiskLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.verify().unwrap().seq, N);
}

#[test]
fn a_tampered_log_opens_without_verify_and_reads_report_it() {
    let tmp = tempfile::tempdir().unwrap();
    build_segments(tmp.path(), N);
    edit_stored_events(tmp.path(), |t| {
        t.remove(&5).unwrap();
    })
    .unwrap();
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    let log = DiskLog::open(tmp.path(), opts.clone()).unwrap();
    assert_eq!(log.head().seq, N);
    assert!(matches!(
        log.read_range(3, 8),
        Err(LogError::NonContiguous {
            expected: 5,
            found: 6
        })
    ));
    assert!(matches!(
        log.read_range(5, 5),
        Err(LogError::NonContiguous {
            expected: 5,
            found: 6
        })
    ));
    assert_eq!(seqs(&log.read_range(1, 4).unwrap()), vec![1, 2, 3, 4]);
    assert_eq!(
        seqs(&log.read_range(6, N).unwrap()),
        (6..=N).collect::<Vec<_>>()
    );
    assert_eq!(corrupt_seq(log.verify()), 5);
    drop(log);

    // Swapped: a record holding an event that is not its header's.
    edit_stored_events(tmp.path(), |t| {
        let a = t.remove(&6).unwrap();
        let b = t.remove(&7).unwrap();
        t.insert(6, b);
        t.insert(7, a);
    })
    .unwrap();
    let log = DiskLog::open(tmp.path(), opts).unwrap();
    assert_eq!(corrupt_seq(log.read_range(6, 7)), 6);
}

#[test]
fn edit_works_on_a_segment_log_dir_itself() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = SegmentLog::open(tmp.path(), &opts()).unwrap();
        log.append(events(1, 4)).unwrap();
    }
    let mut keys = Vec::new();
    let layout = edit_stored_events(tmp.path(), |t| {
        keys = t.keys().copied().collect();
        t.remove(&1);
    })
    .unwrap();
    assert_eq!(layout, Layout::Segments);
    assert_eq!(keys, vec![1, 2, 3, 4]);
    // One segment named after the smallest key, one record per event.
    let seg = only_segment(tmp.path());
    assert_eq!(
        seg.file_name().unwrap().to_str().unwrap(),
        "00000000000000000002.seg"
    );
    assert_eq!(corrupt_seq(SegmentLog::open(tmp.path(), &opts())), 1);
    // Garbage stays where it was put, byte for byte, through another edit.
    edit_stored_events(tmp.path(), |t| {
        t.insert(3, vec![0xff; 5]);
    })
    .unwrap();
    edit_stored_events(tmp.path(), |t| {
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(t[&3], vec![0xff; 5]);
    })
    .unwrap();
}

// ---- DiskLog ----

#[test]
fn disk_log_opens_sled_for_a_sled_dir() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled_with(tmp.path(), 4, batched());
    let log = DiskLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert!(matches!(log, DiskLog::Sled(_)));
    assert_eq!(log.layout(), Layout::Batched);
    assert_eq!(log.dir(), tmp.path());
    assert_eq!(log.head().seq, 4);
    assert_eq!(log.append(events(5, 1)).unwrap()[0].seq, 5);
    assert!(!tmp.path().join(SEGMENTS_DIR).exists());
    drop(log);
    // A per-event log too.
    let old = tmp.path().join("old");
    build_sled_with(&old, 2, common::per_event());
    let log = DiskLog::open(&old, SledOptions::default()).unwrap();
    assert_eq!(log.layout(), Layout::PerEvent);
}

#[test]
fn a_new_disk_log_is_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("us-east-1");
    let head = {
        let log = DiskLog::open(&dir, SledOptions::default()).unwrap();
        assert!(matches!(log, DiskLog::Segments(_)));
        assert_eq!(log.layout(), Layout::Segments);
        assert_eq!(log.dir(), dir.as_path());
        log.append(events(1, 3)).unwrap();
        log.head()
    };
    assert!(!dir.join("db").exists());
    assert_eq!(
        segment_files(&dir.join(SEGMENTS_DIR)),
        vec![dir.join(SEGMENTS_DIR).join("00000000000000000001.seg")]
    );
    // Reopened whatever the options ask for new logs.
    let log = DiskLog::open(&dir, batched()).unwrap();
    assert_eq!(log.layout(), Layout::Segments);
    assert_eq!(log.head(), head);
    // A new log in a sled layout is a sled log.
    let sled_dir = tmp.path().join("eu-west-1");
    let log = DiskLog::open(&sled_dir, batched()).unwrap();
    assert_eq!(log.layout(), Layout::Batched);
    assert!(sled_dir.join("db").exists());
}

#[test]
fn disk_log_segment_options_come_from_sled_options() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SledOptions {
        segment_bytes: 1,
        ..SledOptions::default()
    };
    let log = DiskLog::open(tmp.path(), opts).unwrap();
    for b in 0..3 {
        log.append(events(1 + b, 1)).unwrap();
    }
    assert_eq!(segment_files(&tmp.path().join(SEGMENTS_DIR)).len(), 3);
}

#[test]
fn a_dir_holding_both_backends_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    build_sled_with(tmp.path(), 2, batched());
    std::fs::create_dir(tmp.path().join(SEGMENTS_DIR)).unwrap();
    for result in [
        DiskLog::open(tmp.path(), SledOptions::default()).map(|_| ()),
        edit_stored_events(tmp.path(), |_| {}).map(|_| ()),
    ] {
        match result {
            Err(LogError::Corrupt { seq: 0, reason }) => {
                assert!(reason.contains("both"), "{reason}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // The sled log itself is untouched.
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.verify().unwrap().seq, 2);
}

#[test]
fn open_existing_refuses_a_directory_without_a_log_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    match DiskLog::open_existing(tmp.path(), SledOptions::default()) {
        Err(LogError::NoLog { dir }) => assert_eq!(dir, tmp.path()),
        other => panic!("expected NoLog, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // Once a log exists, it opens it (either backend).
    let head = {
        let log = DiskLog::open(tmp.path(), SledOptions::default()).unwrap();
        log.append(events(1, 3)).unwrap();
        log.head()
    };
    let log = DiskLog::open_existing(tmp.path(), SledOptions::default()).unwrap();
    assert_eq!(log.head(), head);
    let sled = tmp.path().join("sled");
    build_sled_with(&sled, 2, batched());
    let log = DiskLog::open_existing(&sled, SledOptions::default()).unwrap();
    assert_eq!(log.layout(), Layout::Batched);
}
