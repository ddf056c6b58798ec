//! Durable append (group commit) at several batch sizes, read_range and a full verify.
//!
//! `cargo bench -p amisim-log --bench append` (add `-- --quick` for a fast run).

use std::hint::black_box;

use amisim_log::{Event, EventLog, SledLog, SledOptions};
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

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_durable");
    for size in [1u64, 64, 512] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = SledLog::open(tmp.path(), SledOptions::default()).expect("open");
        let mut next = 0u64;
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("batch_{size}"), |b| {
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
    group.finish();
}

/// A log with `n` events, appended in batches of 512.
fn filled(n: u64) -> (tempfile::TempDir, SledLog) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = SledLog::open(tmp.path(), SledOptions::default()).expect("open");
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
    let (_tmp, log) = filled(n);
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(1024));
    group.bench_function("read_range_1024", |b| {
        let mut from = 1;
        b.iter(|| {
            let events = log.read_range(from, from + 1023).expect("read");
            from = if from + 2048 > n { 1 } else { from + 1024 };
            black_box(events)
        })
    });
    group.throughput(Throughput::Elements(n));
    group.sample_size(10);
    group.bench_function("verify_20000", |b| {
        b.iter(|| black_box(log.verify().expect("verify")))
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_read);
criterion_main!(benches);
