//! The domain's hot paths: decide + apply per command, DescribeImages over a large state, the
//! writer's per-batch state clone + publish, the state digest, and replay (apply N events).
//!
//! `cargo bench -p amisim-core --bench core -- --quick` (about a minute). The large state is
//! [`IMAGES`] images of [`ACCOUNTS`] accounts built from one real RegisterImage decision, so each
//! image carries what a registered image carries.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use amisim_core::{decide, query, Command, Config, Ctx, Query, ReadCtx, State};
use amisim_proto::event::Payload;
use amisim_proto::{self as pb, Event};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;

use common::*;

/// decide + apply of one command against a (cheap, persistent) copy of `state`.
fn decide_apply(state: &State, config: &Config, rng: &mut ChaCha8Rng, cmd: Command) -> State {
    let mut s = state.clone();
    let mut ctx = Ctx::new(REGION, &ACCOUNT0, T0 + 7_200_000, rng, config);
    let d = decide(&s, &mut ctx, cmd).expect("the bench's commands are valid");
    for p in &d.events {
        s.apply_payload(p);
    }
    s
}

static ACCOUNT0: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| account(0));

fn bench_decide(c: &mut Criterion, fx: &Fixture) {
    let state = &fx.region.state;
    let config = Config::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut group = c.benchmark_group(format!("decide_apply_{}k_images", IMAGES / 1000));
    group.throughput(Throughput::Elements(1));
    let cmd = Command::RegisterImage(register("bench-new-image", &fx.snapshots[0]));
    group.bench_function("register_image", |b| {
        b.iter_with_large_drop(|| decide_apply(state, &config, &mut rng, cmd.clone()))
    });
    let cmd = Command::CreateVolume(create_volume());
    group.bench_function("create_volume", |b| {
        b.iter_with_large_drop(|| decide_apply(state, &config, &mut rng, cmd.clone()))
    });
    let cmd = Command::CreateSnapshot(pb::CreateSnapshotRequest {
        volume_id: fx.volumes[0].clone(),
        ..Default::default()
    });
    group.bench_function("create_snapshot", |b| {
        b.iter_with_large_drop(|| decide_apply(state, &config, &mut rng, cmd.clone()))
    });
    let cmd = Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
        image_id: fx.image_id.clone(),
        description: Some(pb::AttributeValue {
            value: "new description".into(),
        }),
        ..Default::default()
    });
    group.bench_function("modify_image_attribute", |b| {
        b.iter_with_large_drop(|| decide_apply(state, &config, &mut rng, cmd.clone()))
    });
    group.finish();

    // The same RegisterImage on a state with no other image: what the large state costs.
    let small = fixture(0);
    let mut group = c.benchmark_group("decide_apply_empty_state");
    group.throughput(Throughput::Elements(1));
    let cmd = Command::RegisterImage(register("bench-new-image", &small.snapshots[0]));
    group.bench_function("register_image", |b| {
        b.iter_with_large_drop(|| decide_apply(&small.region.state, &config, &mut rng, cmd.clone()))
    });
    group.finish();
}

fn bench_describe(c: &mut Criterion, fx: &Fixture) {
    let state = &fx.region.state;
    let ctx = ReadCtx::new(REGION, &ACCOUNT0, T0 + 7_200_000);
    let describe = |r: pb::DescribeImagesRequest| {
        let q = Query::DescribeImages(r);
        move || match query(state, &ctx, q.clone()) {
            Ok(amisim_core::Answer::DescribeImages(a)) => a.images.len(),
            _ => panic!("DescribeImages answers images"),
        }
    };
    let name_filter = |v: &str| pb::DescribeImagesRequest {
        filters: vec![pb::Filter {
            name: "name".into(),
            values: vec![v.into()],
        }],
        ..Default::default()
    };
    let cases: Vec<(&str, pb::DescribeImagesRequest, usize)> = vec![
        (
            "by_id",
            pb::DescribeImagesRequest {
                image_ids: vec![fx.image_id.clone()],
                ..Default::default()
            },
            1,
        ),
        ("filter_name_exact_1", name_filter("img-0-0000042"), 1),
        (
            "filter_name_wildcard_1000",
            name_filter("img-0-0001*"),
            1000,
        ),
        (
            "owner_self_page_1000",
            pb::DescribeImagesRequest {
                owners: vec!["self".into()],
                max_results: Some(1000),
                ..Default::default()
            },
            1000,
        ),
    ];
    let mut group = c.benchmark_group(format!("describe_images_{}k_images", IMAGES / 1000));
    for (name, req, expect) in cases {
        let f = describe(req);
        assert_eq!(f(), expect, "{name} returns {expect} images");
        group.throughput(Throughput::Elements(expect as u64));
        group.bench_function(name, |b| b.iter(|| black_box(f())));
    }
    group.finish();
}

fn bench_state(c: &mut Criterion, fx: &Fixture) {
    let state = &fx.region.state;
    let mut group = c.benchmark_group(format!("state_{}k_images", IMAGES / 1000));
    // What the writer does per batch around the decisions: a working copy, the events applied,
    // and `Arc::new(state.clone())` published.
    group.bench_function("clone_publish", |b| {
        b.iter_with_large_drop(|| Arc::new(state.clone()))
    });
    let event = Event {
        seq: state.seq + 1,
        region: REGION.into(),
        sim_time_ms: T0 + 7_200_000,
        payload: fx.region.log.last().and_then(|e| e.payload.clone()),
        ..Default::default()
    };
    let mut registered = fx
        .region
        .log
        .iter()
        .rev()
        .find_map(|e| match &e.payload {
            Some(Payload::ImageRegistered(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("the fixture registered images");
    registered.image_id = "ami-0fffffffffffffff0".into();
    registered.name = "one-more".into();
    let new_image = Event {
        payload: Some(Payload::ImageRegistered(registered)),
        ..event
    };
    group.bench_function("clone_apply_1_image_publish", |b| {
        b.iter_with_large_drop(|| {
            let mut s = state.clone();
            s.apply(&new_image);
            let published = Arc::new(s.clone());
            (s, published)
        })
    });
    group.finish();

    let small = fixture(DIGEST_IMAGES);
    let mut group = c.benchmark_group(format!("state_{}k_images", DIGEST_IMAGES / 1000));
    group.throughput(Throughput::Elements(DIGEST_IMAGES as u64));
    group.bench_function("digest", |b| {
        b.iter(|| black_box(small.region.state.digest()))
    });
    group.finish();
}

fn bench_replay(c: &mut Criterion, fx: &Fixture) {
    let events = &fx.region.log;
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function(format!("apply_{}k_events", events.len() / 1000), |b| {
        b.iter_batched(
            State::new,
            |mut s| {
                for e in events {
                    s.apply(e);
                }
                s
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// What the region writer does to the state per round under a RegisterImage load: a working
/// copy of the decided state, the timers now due (the previous round's images turn
/// `available`), [`WRITER_ROUND`] RegisterImage decisions applied, the result published, and the
/// state published two rounds before dropped (the commit thread frees it). Unlike
/// `decide_apply` above, nothing is warm: each round writes into other nodes of a growing
/// state, copies them on write and later frees the copies, as the node does. Per element: one
/// RegisterImage and its ImageAvailable.
fn bench_writer_round(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group(format!("writer_{}k_images", IMAGES / 1000));
    group.throughput(Throughput::Elements(WRITER_ROUND as u64));
    // No AMI quota: the state grows by WRITER_ROUND images per iteration.
    let config = Config {
        max_images: usize::MAX,
        ..Config::default()
    };
    let accounts: Vec<String> = (0..ACCOUNTS).map(account).collect();
    group.bench_function(format!("round_of_{WRITER_ROUND}_register"), |b| {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut state = fx.region.state.clone();
        let mut published: std::collections::VecDeque<Arc<State>> = Default::default();
        let mut now = T0 + 7_200_000;
        let mut n = 0usize;
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                // Past the availability delay of the previous round's images.
                now += 60_000;
                let mut working = state.clone();
                let mut ctx = Ctx::new(REGION, "system", now, &mut rng, &config);
                black_box(amisim_core::tick::tick_into(&mut working, &mut ctx));
                for _ in 0..WRITER_ROUND {
                    n += 1;
                    let a = n % ACCOUNTS;
                    let cmd =
                        Command::RegisterImage(register(&format!("writer-{n}"), &fx.snapshots[a]));
                    let mut ctx = Ctx::new(REGION, &accounts[a], now, &mut rng, &config);
                    let d = decide(&working, &mut ctx, cmd).expect("a valid RegisterImage");
                    for p in &d.events {
                        working.apply_payload(p);
                    }
                }
                state = working;
                published.push_back(Arc::new(state.clone()));
                if published.len() > 2 {
                    drop(published.pop_front());
                }
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// RegisterImage decisions per writer round in [`bench_writer_round`] (the node's rounds held
/// 14-16 commands at 64 requests in flight).
const WRITER_ROUND: usize = 16;

fn benches(c: &mut Criterion) {
    let fx = fixture(IMAGES);
    bench_writer_round(c, &fx);
    bench_decide(c, &fx);
    bench_describe(c, &fx);
    bench_state(c, &fx);
    bench_replay(c, &fx);
}

criterion_group! {
    name = core;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(core);
