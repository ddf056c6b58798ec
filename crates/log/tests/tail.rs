//! `tail`: catch-up in chunks, then live, with no gap and no duplicate across the switch.

mod common;

use std::sync::Arc;
use std::time::Duration;

use amisim_log::{
    tail, DiskLog, EventLog, LogError, MemoryLog, SegmentLog, SegmentOptions, SledLog, SledOptions,
    TAIL_CHUNK,
};
use common::events;
use futures::StreamExt;

async fn collect_seqs(log: Arc<dyn EventLog>, from: u64) -> Vec<u64> {
    tail(log, from, false)
        .map(|r| r.unwrap().seq)
        .collect()
        .await
}

async fn catch_up_only(log: Arc<dyn EventLog>) {
    assert!(collect_seqs(Arc::clone(&log), 1).await.is_empty());
    let n = 2 * TAIL_CHUNK + 17;
    let mut i = 1;
    while i <= n {
        let k = 100.min(n - i + 1);
        log.append(events(i, k)).unwrap();
        i += k;
    }
    let all: Vec<u64> = (1..=n).collect();
    assert_eq!(collect_seqs(Arc::clone(&log), 1).await, all);
    assert_eq!(collect_seqs(Arc::clone(&log), 0).await, all);
    assert_eq!(
        collect_seqs(Arc::clone(&log), 1000).await,
        (1000..=n).collect::<Vec<_>>()
    );
    assert_eq!(collect_seqs(Arc::clone(&log), n).await, vec![n]);
    assert!(collect_seqs(Arc::clone(&log), n + 1).await.is_empty());
    // The full events, not just seqs, match read_range.
    let from_tail: Vec<_> = tail(Arc::clone(&log), 1, false)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(from_tail, log.read_range(1, n).unwrap());
}

/// Starts a following tail on a log that already holds `initial` events, keeps appending from
/// another thread while it catches up and afterwards, and checks it sees 1..=total exactly once.
async fn follow_live(log: Arc<dyn EventLog>, initial: u64) {
    if initial > 0 {
        log.append(events(1, initial)).unwrap();
    }
    let batches = 120u64;
    let total = initial + (0..batches).map(|b| b % 7 + 1).sum::<u64>();
    let mut stream = tail(Arc::clone(&log), 1, true);

    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut i = initial + 1;
            for b in 0..batches {
                let k = b % 7 + 1;
                log.append(events(i, k)).unwrap();
                i += k;
                if b % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            i - 1
        })
    };

    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        while (seen.len() as u64) < total {
            match stream.next().await {
                Some(Ok(e)) => seen.push(e.seq),
                Some(Err(e)) => panic!("tail error: {e}"),
                None => panic!("a following tail ended"),
            }
        }
    })
    .await;
    assert!(got.is_ok(), "tail stalled after {} events", seen.len());
    let last = writer.join().unwrap();
    assert_eq!(last, total);
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());

    // Still live: nothing more until the next append, then exactly it.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), stream.next())
            .await
            .is_err(),
        "tail emitted beyond the head"
    );
    log.append(events(total + 1, 2)).unwrap();
    for expect in [total + 1, total + 2] {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("tail did not follow")
            .expect("stream ended")
            .expect("tail error");
        assert_eq!(e.seq, expect);
    }
    assert!(log.verify().is_ok());
}

#[tokio::test]
async fn memory_tail_catches_up_in_chunks() {
    catch_up_only(Arc::new(MemoryLog::new())).await;
}

#[tokio::test]
async fn sled_tail_catches_up_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    catch_up_only(Arc::new(log)).await;
}

#[tokio::test]
async fn segment_tail_catches_up_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    // Small segments: the chunks cross segment boundaries.
    let opts = SegmentOptions {
        segment_bytes: 16 * 1024,
        ..SegmentOptions::default()
    };
    let log = SegmentLog::open(tmp.path(), &opts).unwrap();
    catch_up_only(Arc::new(log)).await;
}

#[tokio::test]
async fn disk_log_tail_catches_up_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let log = DiskLog::open(tmp.path(), SledOptions::default()).unwrap();
    catch_up_only(Arc::new(log)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_tail_follows_live_without_gap_or_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(tmp.path(), &SegmentOptions::default()).unwrap();
    follow_live(Arc::new(log), 3000).await;
    let tmp = tempfile::tempdir().unwrap();
    let opts = SegmentOptions {
        segment_bytes: 4096,
        ..SegmentOptions::default()
    };
    let log = SegmentLog::open(tmp.path(), &opts).unwrap();
    follow_live(Arc::new(log), 0).await;
    let tmp = tempfile::tempdir().unwrap();
    let log = DiskLog::open(tmp.path(), SledOptions::default()).unwrap();
    follow_live(Arc::new(log), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tail_follows_live_without_gap_or_duplicate() {
    follow_live(Arc::new(MemoryLog::new()), 3000).await;
    follow_live(Arc::new(MemoryLog::new()), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_tail_follows_live_without_gap_or_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    follow_live(Arc::new(log), 3000).await;
    let tmp = tempfile::tempdir().unwrap();
    let log = SledLog::open(tmp.path(), SledOptions::default()).unwrap();
    follow_live(Arc::new(log), 0).await;
}

#[tokio::test]
async fn current_thread_runtime_follow() {
    // The tail works on a single-threaded runtime too (appends from the same task).
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    log.append(events(1, 5)).unwrap();
    let mut stream = tail(Arc::clone(&log), 4, true);
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 4);
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 5);
    let appender = {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            log.append(events(6, 2)).unwrap();
        })
    };
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 6);
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 7);
    appender.await.unwrap();
}

/// A log whose reads fail: the tail yields the error once, then ends.
struct BrokenLog(MemoryLog);

impl EventLog for BrokenLog {
    fn head(&self) -> amisim_log::Head {
        self.0.head()
    }
    fn append(&self, events: Vec<amisim_log::Event>) -> Result<Vec<amisim_log::Event>, LogError> {
        self.0.append(events)
    }
    fn read_range(&self, from: u64, _to: u64) -> Result<Vec<amisim_log::Event>, LogError> {
        Err(LogError::Corrupt {
            seq: from,
            reason: "test".into(),
        })
    }
    fn subscribe_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe_head()
    }
    fn verify(&self) -> Result<amisim_log::Head, LogError> {
        self.0.verify()
    }
}

#[tokio::test]
async fn tail_ends_after_an_error() {
    let log = BrokenLog(MemoryLog::new());
    log.append(events(1, 3)).unwrap();
    let items: Vec<_> = tail(Arc::new(log), 2, true).collect().await;
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(LogError::Corrupt { seq: 2, .. })));
}
