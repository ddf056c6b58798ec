//! What the core benches share: a tiny region (decide, log, apply) and the large state they
//! act on, built from one real RegisterImage decision per account so each image carries what a
//! registered image carries.

#![allow(dead_code)] // each bench uses its part

use amisim_core::{decide, Command, Config, Ctx, Decision, State};
use amisim_proto::event::Payload;
use amisim_proto::{self as pb, Event};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub const REGION: &str = "us-east-1";
/// Images in the large state.
pub const IMAGES: usize = 100_000;
/// Owners of the large state's images (EC2 allows 50,000 AMIs per account).
pub const ACCOUNTS: usize = 4;
/// Images in the state whose digest is measured.
pub const DIGEST_IMAGES: usize = 10_000;
/// 2024-05-01T00:00:00Z.
pub const T0: u64 = 1_714_521_600_000;

pub fn account(a: usize) -> String {
    format!("{:012}", 100_000_000_000u64 + a as u64)
}

/// A tiny region: decides as an account, logs and applies the events.
pub struct Region {
    pub state: State,
    pub log: Vec<Event>,
    pub rng: ChaCha8Rng,
    pub config: Config,
    pub now_ms: u64,
}

impl Region {
    pub fn new() -> Self {
        Region {
            state: State::new(),
            log: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(7),
            config: Config::default(),
            now_ms: T0,
        }
    }

    pub fn when(&mut self, account: &str, cmd: Command) -> Decision {
        let mut ctx = Ctx::new(REGION, account, self.now_ms, &mut self.rng, &self.config);
        let d = decide(&self.state, &mut ctx, cmd).expect("the fixture's commands are valid");
        for p in &d.events {
            self.append(p.clone());
        }
        d
    }

    pub fn append(&mut self, p: Payload) {
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
    pub fn later(&mut self, ms: u64) {
        self.now_ms += ms;
        self.when("system", Command::Tick);
    }
}

pub fn create_volume() -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        availability_zone: "us-east-1a".into(),
        size: Some(8),
        volume_type: "gp3".into(),
        ..Default::default()
    }
}

pub fn register(name: &str, snapshot_id: &str) -> pb::RegisterImageRequest {
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
pub struct Fixture {
    pub region: Region,
    /// Per account: an available volume and a completed snapshot.
    pub volumes: Vec<String>,
    pub snapshots: Vec<String>,
    /// An image of account 0, in the middle of the map.
    pub image_id: String,
}

/// A region where each account has a volume and a completed snapshot, and `images` images
/// (`img-<account>-<k:07>`, available) spread round-robin over the accounts.
pub fn fixture(images: usize) -> Fixture {
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
