//! Point-in-time reads 100,000 events back (issue 5: "a read at 100,000 events back answers in
//! well under a second").
//!
//! Setup (once): a region node on an in-memory log makes a 100,000-event history through its
//! writer (1,000 RegisterImage, then CreateTags on those images), and its `Audit` service folds
//! the log once, leaving a checkpoint every 10,000 events (as a served node does in the
//! background). Then `Audit.DescribeImagesAsOf` (the service itself, no network) at seqs far
//! back: each read folds from the nearest checkpoint below its seq, at most 9,999 events, and
//! answers DescribeImages as the owner over up to 1,000 images.
//!
//! Run: `cargo bench -p amisim-region --bench as_of`. Nothing is asserted about speed.

use std::sync::Arc;

use amisim_chaos::{Clock, VirtualClock};
use amisim_core::Command;
use amisim_log::{EventLog, MemoryLog};
use amisim_proto::audit_server::Audit;
use amisim_proto::{
    as_of, AsOf, CreateTagsRequest, DescribeImagesAsOfRequest, DescribeImagesRequest,
    RegisterImageRequest, Tag,
};
use amisim_region::audit::AuditService;
use amisim_region::{RegionConfig, RegionNode};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const EVENTS: u64 = 100_000;
const IMAGES: u64 = 1_000;
const OWNER: &str = "111122223333";

/// The node with a 100,000-event log and its Audit service (checkpoints warm).
fn history(rt: &tokio::runtime::Runtime) -> (Arc<RegionNode>, AuditService) {
    rt.block_on(async {
        let clock = VirtualClock::new(1_714_521_600_000);
        let c = clock.clone();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let node = RegionNode::start_with_clock(
            RegionConfig {
                seed: Some(1),
                ..RegionConfig::new("us-east-1")
            },
            log.clone(),
            move |last| {
                c.set(last);
                Arc::new(c) as Arc<dyn Clock>
            },
        )
        .expect("node");
        for i in 0..IMAGES {
            node.execute(
                OWNER,
                &format!("r-{i}"),
                Command::RegisterImage(RegisterImageRequest {
                    name: format!("image-{i}"),
                    image_location: format!("bucket/image-{i}.manifest.xml"),
                    ..Default::default()
                }),
            )
            .await
            .expect("register");
        }
        let ids: Vec<String> = node.state().images.keys().map(|k| k.to_string()).collect();
        let mut i = 0u64;
        while node.head_seq() < EVENTS {
            let id = ids[(i % ids.len() as u64) as usize].clone();
            node.execute(
                OWNER,
                &format!("t-{i}"),
                Command::CreateTags(CreateTagsRequest {
                    resources: vec![id],
                    tags: vec![Tag {
                        key: format!("k{}", i % 7),
                        value: format!("v{i}"),
                    }],
                    ..Default::default()
                }),
            )
            .await
            .expect("tag");
            clock.advance(1_000);
            i += 1;
        }
        let service = AuditService::new(node.clone());
        // The background fold AuditService::new started; fold here too so timing starts warm.
        node.audit()
            .checkpoints()
            .warm(log.as_ref())
            .expect("fold the log");
        eprintln!(
            "as_of bench: {} events, {} checkpoints",
            node.head_seq(),
            node.audit().checkpoints().len()
        );
        (node, service)
    })
}

fn as_of(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (node, service) = history(&rt);
    let head = node.head_seq();
    let mut group = c.benchmark_group("describe_images_as_of");
    group.sample_size(20);
    // seq 1: the first event (100,000 back); 9,999: the most folding a read needs (from the
    // checkpoint at 0); 50,001 and head - 1 for comparison.
    for seq in [1, 9_999, 50_001, head - 1] {
        group.bench_with_input(BenchmarkId::from_parameter(seq), &seq, |b, &seq| {
            b.iter(|| {
                let mut request = tonic::Request::new(DescribeImagesAsOfRequest {
                    as_of: Some(AsOf {
                        point: Some(as_of::Point::Seq(seq)),
                    }),
                    request: Some(DescribeImagesRequest::default()),
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("x-amisim-account", OWNER.parse().expect("ascii"));
                let answer = rt
                    .block_on(service.describe_images_as_of(request))
                    .expect("as-of read")
                    .into_inner();
                assert_eq!(answer.seq, seq);
                answer
            })
        });
    }
    group.finish();
}

criterion_group!(benches, as_of);
criterion_main!(benches);
