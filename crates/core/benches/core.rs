//! The domain's hot paths: decide + apply per command, DescribeImages over a large state, the
//! writer's per-batch state clone + publish, the state digest, and replay (apply N events).
//!
//! `cargo bench -p amisim-core --bench core -- --quick` (about a minute). The large state is
//! [`IMAGES`] images of [`ACCOUNTS`] accounts built from one real RegisterImage decision, so each
//! image carries what a registered image carries.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use amisim_core::{decide, query, Command, Config, Ctx, Decision, Query, ReadCtx, State};
use amisim_proto::event::Payload;
use amisim_proto::{self as pb, Event};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const REGION: &str = "us-east-1";
/// Images in the large state.
const IMAGES: usize = 100_000;
/// Owners of the large state's images (EC2 allows 50,000 AMIs per account).
const ACCOUNTS: usize = 4;
/// Images in the state whose digest is measured.
const DIGEST_IMAGES: usize = 10_000;
/// 2024-05-01T00:00:00Z.
const T0: u64 = 1_714_521_600_000;

fn account(a: usize) -> String {
    format!("{:012}", 100_000_000_000u64 + a as u64)
}

/// A tiny region: decides as an account, logs and applies the events.
struct Region {
    state: State,
    log: Vec<Event>,
    rng: ChaCha8Rng,
    config: Config,
    now_ms: u64,
}

impl Region {
    fn new() -> Self {
        Region {
            state: State::new(),
            log: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(7),
            config: Config::default(),
            now_ms: T0,
        }
    }

    fn when(&mut self, account: &str, cmd: Command) -> Decision {
        let mut ctx = Ctx::new(REGION, account, self.now_ms, &mut self.rng, &self.config);
        let d = decide(&self.state, &mut ctx, cmd).expect("the fixture's commands are valid");
        for p in &d.events {
            self.append(p.clone());
        }
        d
    }

    fn append(&mut self, p: Payload) {
        let ev = Event {
            seq: self.log.len() as u64 + 1,
            region: REGION.into(),
            sim_time_ms: self.now_ms,
            payload: Some(p),
            ..Default::default()
        };
        self.state.apply(&ev);
        self.log.push(ev);
    }

    /// Moves time on by `ms` and fires what is due.
    fn later(&mut self, ms: u64) {
        self.now_ms += ms;
        self.when("system", Command::Tick);
    }
}

fn create_volume() -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        availability_zone: "us-east-1a".into(),
        size: Some(8),
        volume_type: "gp3".into(),
        ..Default::default()
    }
}

fn register(name: &str, snapshot_id: &str) -> pb::RegisterImageRequest {
    pb::RegisterImageRequest {
        name: name.into(),
        architecture: "x86_64".into(),
        virtualization_type: "hvm".into(),
        root_device_name: "/dev/xvda".into(),
        block_device_mappings: vec![pb::BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(pb::EbsBlockDevice {
                snapshot_id: snapshot_id.into(),
                volume_type: "gp3".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The large state and what the benches act on.
struct Fixture {
    region: Region,
    /// Per account: an available volume and a completed snapshot.
    volumes: Vec<String>,
    snapshots: Vec<String>,
    /// An image of account 0, in the middle of the map.
    image_id: String,
}

/// A region where each account has a volume and a completed snapshot, and `images` images
/// (`img-<account>-<k:07>`, available) spread round-robin over the accounts.
fn fixture(images: usize) -> Fixture {
    let mut r = Region::new();
    let mut volumes = Vec::new();
    let mut snapshots = Vec::new();
    for a in 0..ACCOUNTS {
        let d = r.when(&account(a), Command::CreateVolume(create_volume()));
        let amisim_core::Reply::CreateVolume(v) = d.reply else {
            panic!("CreateVolume replies a volume")
        };
        volumes.push(v.volume_id);
    }
    r.later(60_000);
    for (a, vol) in volumes.iter().enumerate() {
        let req = pb::CreateSnapshotRequest {
            volume_id: vol.clone(),
            ..Default::default()
        };
        let d = r.when(&account(a), Command::CreateSnapshot(req));
        let amisim_core::Reply::CreateSnapshot(s) = d.reply else {
            panic!("CreateSnapshot replies a snapshot")
        };
        snapshots.push(s.snapshot_id);
    }
    r.later(3_600_000);
    // One real decision per account gives the template of every image.
    let mut templates = Vec::new();
    for (a, snap) in snapshots.iter().enumerate() {
        let d = r.when(
            &account(a),
            Command::RegisterImage(register("template", snap)),
        );
        let Some(Payload::ImageRegistered(t)) = d.events.into_iter().next() else {
            panic!("RegisterImage registers an image")
        };
        templates.push(t);
    }
    let mut image_id = String::new();
    for i in 0..images {
        let a = i % ACCOUNTS;
        let k = i / ACCOUNTS;
        let mut e = templates[a].clone();
        e.image_id = format!("ami-{:017x}", 0x1000_0000 + i as u64);
        e.name = format!("img-{a}-{k:07}");
        if a == 0 && k == images / ACCOUNTS / 2 {
            image_id = e.image_id.clone();
        }
        let id = e.image_id.clone();
        r.append(Payload::ImageRegistered(e));
        r.append(Payload::ImageAvailable(pb::ImageAvailable { image_id: id }));
    }
    Fixture {
        region: r,
        volumes,
        snapshots,
        image_id,
    }
}

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

fn benches(c: &mut Criterion) {
    let fx = fixture(IMAGES);
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
