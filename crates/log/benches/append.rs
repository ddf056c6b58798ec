//! Durable append (group commit) at several batch sizes, read_range and a full verify, for the
//! sled log (`…/batch_N`, `read/read_range_1024`, `read/verify_20000`: the names from before
//! segments, so old baselines still compare) and the segment log (`segments_…`).
//!
//! `cargo bench -p amisim-log --bench append` (add `-- --quick` for a fast run).

use std::hint::black_box;

use amisim_log::{Event, EventLog, SegmentLog, SegmentOptions, SledLog, SledOptions};
use amisim_proto::{event::Payload, ImageRegistered, MappingRecord};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// A realistic, mid-sized event (an image registration with two mappings, ~400 bytes).
fn event(i: u64) -> Event {
    Event {
        region: "us-east-1".into(),
        event_id: format!("00000000-0000-4000-8000-{i:012x}"),
        sim_time_ms: 1_700_000_000_000 + i,
        wall_time_ms: 1_700_000_000_000 + i,
        account_id: "123456789012".into(),
        request_id: format!("req-{i}"),
        payload: Some(Payload::ImageRegistered(ImageRegistered {
            image_id: format!("ami-{i:017x}"),
            owner_id: "123456789012".into(),
            name: format!("bench-image-{i}"),
            architecture: "x86_64".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: (0..2)
                .map(|d| MappingRecord {
                    device_name: format!("/dev/xvd{}", (b'a' + d) as char),
                    ebs: true,
                    snapshot_id: format!("snap-{i:017x}"),
                    volume_size: 8,
                    volume_type: "gp3".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn batch(start: u64, n: u64) -> Vec<Event> {
    (start..start + n).map(event).collect()
}

/// The two durable backends, by bench-name prefix.
#[derive(Clone, Copy)]
enum Backend {
    Sled,
    Segments,
}

impl Backend {
    const ALL: [Backend; 2] = [Backend::Sled, Backend::Segments];

    fn open(self, dir: &std::path::Path) -> Box<dyn EventLog> {
        match self {
            // `SledLog::open` creates the batched layout (the sled default before segments).
            Backend::Sled => Box::new(SledLog::open(dir, SledOptions::default()).expect("open")),
            Backend::Segments => {
                Box::new(SegmentLog::open(dir, &SegmentOptions::default()).expect("open"))
            }
        }
    }

    /// The bench name: sled keeps its old names.
    fn name(self, bench: &str) -> String {
        match self {
            Backend::Sled => bench.to_string(),
            Backend::Segments => format!("segments_{bench}"),
        }
    }
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_durable");
    for backend in Backend::ALL {
        for size in [1u64, 64, 512] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let log = backend.open(tmp.path());
            let mut next = 0u64;
            group.throughput(Throughput::Elements(size));
            group.bench_function(backend.name(&format!("batch_{size}")), |b| {
                b.iter_batched(
                    || {
                        next += size;
                        batch(next, size)
                    },
                    |events| black_box(log.append(events).expect("append")),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// A log with `n` events, appended in batches of 512.
fn filled(backend: Backend, n: u64) -> (tempfile::TempDir, Box<dyn EventLog>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = backend.open(tmp.path());
    let mut i = 0;
    while i < n {
        let k = 512.min(n - i);
        log.append(batch(i, k)).expect("append");
        i += k;
    }
    (tmp, log)
}

fn bench_read(c: &mut Criterion) {
    let n = 20_000;
    let mut group = c.benchmark_group("read");
    for backend in Backend::ALL {
        let (_tmp, log) = filled(backend, n);
        group.throughput(Throughput::Elements(1024));
        group.sample_size(100);
        group.bench_function(backend.name("read_range_1024"), |b| {
            let mut from = 1;
            b.iter(|| {
                let events = log.read_range(from, from + 1023).expect("read");
                from = if from + 2048 > n { 1 } else { from + 1024 };
                black_box(events)
            })
        });
        group.throughput(Throughput::Elements(n));
        group.sample_size(10);
        group.bench_function(backend.name("verify_20000"), |b| {
            b.iter(|| black_box(log.verify().expect("verify")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append, bench_read);
criterion_main!(benches);
