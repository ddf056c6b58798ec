//! The workload: a seeded generator of EC2 operations ([`Generator`]) over a client-side model
//! of what exists ([`Model`]), and the clients that send them through the gateway with real gRPC
//! ([`Clients`]).
//!
//! Clients are *processes* in Jepsen's sense: one per (account, region) pair, number
//! `account × regions + region`. Each step of the run, every operation kind of the mix fires a
//! Poisson-distributed number of times (its rate × the step), each for a random process; the
//! request is filled in from the model (an image the account owns or was shared, a completed
//! snapshot, ...). Every draw comes from one ChaCha stream keyed by the run's seed, so a seed
//! fixes the schedule; the model only changes from answers, which are themselves reproducible
//! in virtual-clock mode. Calls carry `x-amisim-request-id: lab-<seed>-<n>`, so the request ids
//! in the event logs replay too.

use std::time::Duration;

use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::*;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::history::EntryType;
use crate::spec::Experiment;

/// Longest answer a client accepts (a global describe of a big run).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// One request, filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    CreateVolume {
        size_gib: u32,
    },
    CreateSnapshot {
        volume_id: String,
    },
    Register {
        name: String,
        snapshot_id: String,
    },
    Copy {
        source_region: String,
        source_image_id: String,
        name: String,
        client_token: String,
    },
    Share {
        image_id: String,
        user_id: String,
    },
    Deregister {
        image_id: String,
    },
    DeleteSnapshot {
        snapshot_id: String,
    },
    Describe {
        image_ids: Vec<String>,
    },
    DescribeGlobal {
        consistency_token: String,
        expect: Option<(String, String)>,
    },
}

/// The history's name of a request and its JSON form.
impl Call {
    pub fn f(&self) -> &'static str {
        match self {
            Call::CreateVolume { .. } => "create_volume",
            Call::CreateSnapshot { .. } => "create_snapshot",
            Call::Register { .. } => "register_image",
            Call::Copy { .. } => "copy_image",
            Call::Share { .. } => "share_image",
            Call::Deregister { .. } => "deregister_image",
            Call::DeleteSnapshot { .. } => "delete_snapshot",
            Call::Describe { .. } => "describe_images",
            Call::DescribeGlobal { .. } => "describe_global_images",
        }
    }

    pub fn value(&self) -> Value {
        match self {
            Call::CreateVolume { size_gib } => json!({ "size_gib": size_gib }),
            Call::CreateSnapshot { volume_id } => json!({ "volume_id": volume_id }),
            Call::Register { name, snapshot_id } => {
                json!({ "name": name, "snapshot_id": snapshot_id })
            }
            Call::Copy {
                source_region,
                source_image_id,
                name,
                client_token,
            } => json!({
                "source_region": source_region,
                "source_image_id": source_image_id,
                "name": name,
                "client_token": client_token,
            }),
            Call::Share { image_id, user_id } => {
                json!({ "image_id": image_id, "user_id": user_id })
            }
            Call::Deregister { image_id } => json!({ "image_id": image_id }),
            Call::DeleteSnapshot { snapshot_id } => json!({ "snapshot_id": snapshot_id }),
            Call::Describe { image_ids } => json!({ "image_ids": image_ids }),
            Call::DescribeGlobal {
                consistency_token,
                expect,
            } => {
                let mut v = json!({ "consistency_token": consistency_token });
                if let Some((r, id)) = expect {
                    v["expect_region"] = json!(r);
                    v["expect_image_id"] = json!(id);
                }
                v
            }
        }
    }

    /// The source region of a cross-region copy (the pair it stands for).
    pub fn source_region(&self) -> Option<&str> {
        match self {
            Call::Copy { source_region, .. } => Some(source_region),
            _ => None,
        }
    }
}

/// An operation for one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub process: u32,
    pub account: usize,
    pub region: String,
    pub request: Call,
}

/// An image the model knows.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownImage {
    pub id: String,
    pub region: String,
    pub owner: usize,
    pub created_ms: u64,
    /// A copy (not usable as a source until it is known available; we never learn that, so
    /// copies are not copied again).
    pub is_copy: bool,
    /// A DeregisterImage was sent (whatever its outcome): no longer a target.
    pub retired: bool,
}

/// What one process knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    pub volumes: Vec<String>,
    /// Completed snapshots RegisterImage may use (never deleted by the workload).
    pub base_snapshots: Vec<String>,
    /// Snapshots CreateSnapshot made: DeleteSnapshot's targets.
    pub extra_snapshots: Vec<String>,
    /// Acknowledged copies of this process with a ClientToken: a retry resends one as it was.
    pub tokens: Vec<Call>,
    /// Token, region and image of the last acknowledged write that created an image.
    pub last_write: Option<(String, String, Option<String>)>,
}

/// The clients' knowledge of the cluster, updated from answers only.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub regions: Vec<String>,
    pub accounts: Vec<String>,
    /// Indexed by process.
    pub slots: Vec<Slot>,
    pub images: Vec<KnownImage>,
    /// (image id, grantee account index).
    pub shares: Vec<(String, usize)>,
}

impl Model {
    pub fn new(exp: &Experiment) -> Model {
        Model {
            regions: exp.regions.clone(),
            accounts: exp.accounts.clone(),
            slots: vec![Slot::default(); exp.regions.len() * exp.accounts.len()],
            images: Vec::new(),
            shares: Vec::new(),
        }
    }

    pub fn process(&self, account: usize, region: usize) -> u32 {
        (account * self.regions.len() + region) as u32
    }

    fn region_index(&self, region: &str) -> usize {
        self.regions.iter().position(|r| r == region).unwrap_or(0)
    }

    /// Takes an answer into the model.
    pub fn learn(&mut self, p: &Planned, outcome: &Outcome, sim_ms: u64) {
        let slot_i = p.process as usize;
        // A deregister retires its image whatever the answer (it may have happened).
        if let Call::Deregister { image_id } = &p.request {
            for i in self.images.iter_mut().filter(|i| &i.id == image_id) {
                i.retired = true;
            }
        }
        if let Call::DeleteSnapshot { snapshot_id } = &p.request {
            if let Some(slot) = self.slots.get_mut(slot_i) {
                slot.extra_snapshots.retain(|s| s != snapshot_id);
            }
        }
        if outcome.kind != EntryType::Ok {
            return;
        }
        let id = |k: &str| {
            outcome
                .value
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let Some(slot) = self.slots.get_mut(slot_i) else {
            return;
        };
        match &p.request {
            Call::CreateVolume { .. } => {
                if let Some(v) = id("volume_id") {
                    slot.volumes.push(v);
                }
            }
            Call::CreateSnapshot { .. } => {
                if let Some(s) = id("snapshot_id") {
                    slot.extra_snapshots.push(s);
                }
            }
            Call::Register { .. } | Call::Copy { .. } => {
                if let Some(image) = id("image_id") {
                    if let Some(token) = &outcome.token {
                        slot.last_write =
                            Some((token.clone(), p.region.clone(), Some(image.clone())));
                    }
                    if let Call::Copy { client_token, .. } = &p.request {
                        if !client_token.is_empty() && !slot.tokens.contains(&p.request) {
                            slot.tokens.push(p.request.clone());
                        }
                    }
                    if !self.images.iter().any(|i| i.id == image) {
                        self.images.push(KnownImage {
                            id: image,
                            region: p.region.clone(),
                            owner: p.account,
                            created_ms: sim_ms,
                            is_copy: matches!(p.request, Call::Copy { .. }),
                            retired: false,
                        });
                    }
                }
            }
            Call::Share { image_id, user_id } => {
                if let Some(grantee) = self.accounts.iter().position(|a| a == user_id) {
                    self.shares.push((image_id.clone(), grantee));
                }
            }
            _ => {}
        }
    }

    /// Marks the setup's snapshot as usable by RegisterImage.
    pub fn add_base_snapshot(&mut self, process: u32, snapshot_id: String) {
        if let Some(slot) = self.slots.get_mut(process as usize) {
            slot.base_snapshots.push(snapshot_id);
        }
    }
}

/// The seeded generator.
#[derive(Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
    seed: u64,
    rates: Vec<(&'static str, f64)>,
    token_reuse: f64,
    counter: u64,
}

/// A Poisson draw (Knuth; the rates here are small), capped so a silly rate cannot explode a
/// step.
fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        // Normal approximation for large means.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        return (lambda + z * lambda.sqrt()).round().clamp(0.0, 10_000.0) as u32;
    }
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= l || k >= 10_000 {
            return k;
        }
        k += 1;
    }
}

impl Generator {
    pub fn new(exp: &Experiment, seed: u64) -> Generator {
        Generator {
            rng: amisim_chaos::seeded_rng(seed, "lab/workload"),
            seed,
            rates: exp.workload.rates().to_vec(),
            token_reuse: exp.workload.client_token_reuse,
            counter: 0,
        }
    }

    fn name(&mut self, process: u32) -> String {
        self.counter += 1;
        format!("lab-s{}-p{}-n{}", self.seed, process, self.counter)
    }

    /// The operations of one step of `step_ms`, in the order they are to be sent.
    pub fn plan_step(&mut self, model: &Model, step_ms: u64, now_ms: u64) -> Vec<Planned> {
        let mut kinds = Vec::new();
        for (k, rate) in self.rates.clone() {
            let n = poisson(&mut self.rng, rate * step_ms as f64 / 1000.0);
            kinds.extend(std::iter::repeat_n(k, n as usize));
        }
        kinds.shuffle(&mut self.rng);
        let mut out = Vec::new();
        for kind in kinds {
            let account = self.rng.random_range(0..model.accounts.len());
            let region = self.rng.random_range(0..model.regions.len());
            if let Some(p) = self.fill(model, kind, account, region, now_ms) {
                out.push(p);
            }
        }
        out
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.rng.random_range(0..v.len()))
        }
    }

    /// One request of `kind` for (account, region), or None if the model has nothing it could
    /// act on yet.
    fn fill(
        &mut self,
        model: &Model,
        kind: &str,
        account: usize,
        region_i: usize,
        now_ms: u64,
    ) -> Option<Planned> {
        let process = model.process(account, region_i);
        let slot = model.slots.get(process as usize)?;
        let region = model.regions.get(region_i)?.clone();
        let live = |i: &&KnownImage| !i.retired;
        let request = match kind {
            "register" => {
                let snapshot_id = self.pick(&slot.base_snapshots)?.clone();
                Call::Register {
                    name: self.name(process),
                    snapshot_id,
                }
            }
            "copy_same_region" | "copy_cross_region" => {
                let cross = kind == "copy_cross_region";
                // Sources: registered images of this account, or shared with it, old enough to
                // be available (RegisterImage takes 2 s simulated).
                let sources: Vec<&KnownImage> = model
                    .images
                    .iter()
                    .filter(live)
                    .filter(|i| !i.is_copy && i.created_ms + 5_000 <= now_ms)
                    .filter(|i| (i.region != region) == cross)
                    .filter(|i| {
                        i.owner == account
                            || model
                                .shares
                                .iter()
                                .any(|(id, g)| id == &i.id && *g == account)
                    })
                    .collect();
                let reuse = !slot.tokens.is_empty() && self.rng.random::<f64>() < self.token_reuse;
                if reuse {
                    // A retry with its ClientToken: the same request again, which must answer
                    // the same image (EC2_SEMANTICS.md 4.3).
                    let earlier = self.pick(&slot.tokens)?.clone();
                    let same_kind = matches!(&earlier, Call::Copy { source_region, .. } if (source_region != &region) == cross);
                    if same_kind {
                        return Some(Planned {
                            process,
                            account,
                            region,
                            request: earlier,
                        });
                    }
                }
                let src = (*self.pick(&sources)?).clone();
                let client_token = format!("tok-{}", self.name(process));
                Call::Copy {
                    source_region: src.region.clone(),
                    source_image_id: src.id.clone(),
                    name: format!("{client_token}-copy"),
                    client_token,
                }
            }
            "share" => {
                if model.accounts.len() < 2 {
                    return None;
                }
                let own: Vec<&KnownImage> = model
                    .images
                    .iter()
                    .filter(live)
                    .filter(|i| i.owner == account && i.region == region && !i.is_copy)
                    .collect();
                let img = (*self.pick(&own)?).clone();
                let mut other = self.rng.random_range(0..model.accounts.len() - 1);
                if other >= account {
                    other += 1;
                }
                Call::Share {
                    image_id: img.id,
                    user_id: model.accounts.get(other)?.clone(),
                }
            }
            "deregister" => {
                let own: Vec<&KnownImage> = model
                    .images
                    .iter()
                    .filter(live)
                    .filter(|i| i.owner == account && i.region == region)
                    .collect();
                let img = (*self.pick(&own)?).clone();
                Call::Deregister { image_id: img.id }
            }
            "delete_snapshot" => Call::DeleteSnapshot {
                snapshot_id: self.pick(&slot.extra_snapshots)?.clone(),
            },
            "create_snapshot" => Call::CreateSnapshot {
                volume_id: self.pick(&slot.volumes)?.clone(),
            },
            "describe" => {
                let mut own: Vec<String> = model
                    .images
                    .iter()
                    .filter(live)
                    .filter(|i| i.owner == account && i.region == region)
                    .map(|i| i.id.clone())
                    .collect();
                if own.is_empty() {
                    return None;
                }
                own.shuffle(&mut self.rng);
                own.truncate(5);
                own.sort();
                Call::Describe { image_ids: own }
            }
            "describe_global" => {
                let (token, expect) = match &slot.last_write {
                    Some((t, r, Some(id))) => {
                        let retired = model.images.iter().any(|i| &i.id == id && i.retired);
                        (t.clone(), (!retired).then(|| (r.clone(), id.clone())))
                    }
                    Some((t, _, None)) => (t.clone(), None),
                    None => (String::new(), None),
                };
                Call::DescribeGlobal {
                    consistency_token: token,
                    expect,
                }
            }
            _ => return None,
        };
        Some(Planned {
            process,
            account,
            region,
            request,
        })
    }
}

/// How a call ended, for the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub kind: EntryType,
    pub value: Value,
    pub error: Option<String>,
    /// `x-amisim-consistency-token` of a write.
    pub token: Option<String>,
}

/// The clients: one channel to the gateway, shared (HTTP/2 multiplexes), with per-call
/// metadata naming region, account and request id.
#[derive(Debug, Clone)]
pub struct Clients {
    ec2: Ec2Client<Channel>,
    coordinator: CoordinatorClient<Channel>,
    seed: u64,
    timeout: Duration,
    accounts: Vec<String>,
}

/// The EC2 code of a failed call, or `grpc:<code>`.
pub fn error_code(s: &Status) -> String {
    s.metadata()
        .get("x-amisim-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("grpc:{:?}", s.code()))
}

/// Fail (it certainly did not happen) or info (it may have).
fn classify(s: &Status) -> EntryType {
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Aborted => EntryType::Info,
        _ if s.metadata().get("x-amisim-error-code").is_none() => EntryType::Info,
        _ => EntryType::Fail,
    }
}

fn image_json(region: &str, i: &Image) -> Value {
    json!({
        "region": region,
        "image_id": i.image_id,
        "state": i.state,
        "owner": i.owner_id,
        "source_image_id": i.source_image_id,
        "source_region": i.source_image_region,
    })
}

impl Clients {
    pub fn new(channel: Channel, seed: u64, timeout: Duration, accounts: Vec<String>) -> Clients {
        Clients {
            ec2: Ec2Client::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            coordinator: CoordinatorClient::new(channel)
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            seed,
            timeout,
            accounts,
        }
    }

    fn req<T>(&self, p: &Planned, n: u64, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        let md = r.metadata_mut();
        if let Ok(v) = AsciiMetadataValue::try_from(p.region.as_str()) {
            md.insert("x-amisim-region", v);
        }
        if let Some(Ok(v)) = self
            .accounts
            .get(p.account)
            .map(|a| AsciiMetadataValue::try_from(a.as_str()))
        {
            md.insert("x-amisim-account", v);
        }
        if let Ok(v) = AsciiMetadataValue::try_from(format!("lab-{}-{n}", self.seed)) {
            md.insert("x-amisim-request-id", v);
        }
        r
    }

    /// Sends `p` (its `n`th call of the run) and reports how it ended.
    pub async fn call(&self, p: &Planned, n: u64) -> Outcome {
        let res = tokio::time::timeout(self.timeout + Duration::from_millis(500), self.send(p, n))
            .await
            .unwrap_or_else(|_| {
                Err(Outcome {
                    kind: EntryType::Info,
                    value: p.request.value(),
                    error: Some("client-timeout".into()),
                    token: None,
                })
            });
        match res {
            Ok(o) => o,
            Err(o) => o,
        }
    }

    async fn send(&self, p: &Planned, n: u64) -> Result<Outcome, Outcome> {
        let failed = |s: Status| Outcome {
            kind: classify(&s),
            value: p.request.value(),
            error: Some(error_code(&s)),
            token: None,
        };
        let token_of = |md: &tonic::metadata::MetadataMap| {
            md.get("x-amisim-consistency-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let ok = |value: Value, token: Option<String>| {
            let mut value = value;
            if let Some(t) = &token {
                value["token"] = json!(t);
            }
            Outcome {
                kind: EntryType::Ok,
                value,
                error: None,
                token,
            }
        };
        let mut ec2 = self.ec2.clone();
        match &p.request {
            Call::CreateVolume { size_gib } => {
                let r = ec2
                    .create_volume(self.req(
                        p,
                        n,
                        CreateVolumeRequest {
                            availability_zone: format!("{}a", p.region),
                            size: Some(i32::try_from(*size_gib).unwrap_or(i32::MAX)),
                            volume_type: "gp3".into(),
                            client_token: format!("lab-{}-{n}", self.seed),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({ "volume_id": r.into_inner().volume_id }), t))
            }
            Call::CreateSnapshot { volume_id } => {
                let r = ec2
                    .create_snapshot(self.req(
                        p,
                        n,
                        CreateSnapshotRequest {
                            volume_id: volume_id.clone(),
                            description: "amisim lab".into(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({ "snapshot_id": r.into_inner().snapshot_id }), t))
            }
            Call::Register { name, snapshot_id } => {
                let req = RegisterImageRequest {
                    name: name.clone(),
                    architecture: "x86_64".into(),
                    virtualization_type: "hvm".into(),
                    root_device_name: "/dev/xvda".into(),
                    block_device_mappings: vec![BlockDeviceMapping {
                        device_name: "/dev/xvda".into(),
                        ebs: Some(EbsBlockDevice {
                            snapshot_id: snapshot_id.clone(),
                            volume_type: "gp3".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let r = ec2
                    .register_image(self.req(p, n, req))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({ "image_id": r.into_inner().image_id }), t))
            }
            Call::Copy {
                source_region,
                source_image_id,
                name,
                client_token,
            } => {
                let r = ec2
                    .copy_image(self.req(
                        p,
                        n,
                        CopyImageRequest {
                            source_image_id: source_image_id.clone(),
                            source_region: source_region.clone(),
                            name: name.clone(),
                            client_token: client_token.clone(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({ "image_id": r.into_inner().image_id }), t))
            }
            Call::Share { image_id, user_id } => {
                let r = ec2
                    .modify_image_attribute(self.req(
                        p,
                        n,
                        ModifyImageAttributeRequest {
                            image_id: image_id.clone(),
                            launch_permission: Some(LaunchPermissionModifications {
                                add: vec![LaunchPermission {
                                    user_id: user_id.clone(),
                                    ..Default::default()
                                }],
                                remove: vec![],
                            }),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({}), t))
            }
            Call::Deregister { image_id } => {
                let r = ec2
                    .deregister_image(self.req(
                        p,
                        n,
                        DeregisterImageRequest {
                            image_id: image_id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({}), t))
            }
            Call::DeleteSnapshot { snapshot_id } => {
                let r = ec2
                    .delete_snapshot(self.req(
                        p,
                        n,
                        DeleteSnapshotRequest {
                            snapshot_id: snapshot_id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let t = token_of(r.metadata());
                Ok(ok(json!({}), t))
            }
            Call::Describe { image_ids } => {
                let r = ec2
                    .describe_images(self.req(
                        p,
                        n,
                        DescribeImagesRequest {
                            image_ids: image_ids.clone(),
                            include_deprecated: true,
                            include_disabled: true,
                            ..Default::default()
                        },
                    ))
                    .await
                    .map_err(failed)?;
                let images: Vec<Value> = r
                    .into_inner()
                    .images
                    .iter()
                    .map(|i| image_json(&p.region, i))
                    .collect();
                Ok(ok(json!({ "images": images }), None))
            }
            Call::DescribeGlobal {
                consistency_token, ..
            } => {
                let mut coordinator = self.coordinator.clone();
                let mut images = Vec::new();
                let mut next_token = String::new();
                let mut answer_token = String::new();
                // Page through (the first page waits for the token; later ones see at least it).
                for _ in 0..100 {
                    let r = coordinator
                        .describe_global_images(self.req(
                            p,
                            n,
                            DescribeGlobalImagesRequest {
                                describe: Some(DescribeImagesRequest {
                                    include_deprecated: true,
                                    include_disabled: true,
                                    max_results: Some(1000),
                                    next_token: next_token.clone(),
                                    ..Default::default()
                                }),
                                regions: vec![],
                                consistency_token: consistency_token.clone(),
                            },
                        ))
                        .await
                        .map_err(failed)?
                        .into_inner();
                    images.extend(
                        r.images
                            .iter()
                            .filter_map(|g| g.image.as_ref().map(|i| image_json(&g.region, i))),
                    );
                    if answer_token.is_empty() {
                        answer_token = r.consistency_token.clone();
                    }
                    if r.next_token.is_empty() {
                        break;
                    }
                    next_token = r.next_token;
                }
                Ok(ok(
                    json!({ "images": images, "projection_token": answer_token }),
                    None,
                ))
            }
        }
    }
}

/// The region index of a region name in the model (0 if unknown).
pub fn region_index(model: &Model, region: &str) -> usize {
    model.region_index(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Experiment {
        Experiment::parse(
            "duration = \"60s\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n[workload]\nregister = 2\ncopy_cross_region = 1\ndescribe = 1\nshare = 0.5\n",
            "t.toml",
            "t",
        )
        .unwrap()
    }

    fn seeded_model(e: &Experiment) -> Model {
        let mut m = Model::new(e);
        for p in 0..m.slots.len() as u32 {
            m.add_base_snapshot(p, format!("snap-{p}"));
        }
        for (i, r) in e.regions.iter().enumerate() {
            m.images.push(KnownImage {
                id: format!("ami-{i}"),
                region: r.clone(),
                owner: 0,
                created_ms: 0,
                is_copy: false,
                retired: false,
            });
        }
        m
    }

    fn schedule(seed: u64) -> Vec<Planned> {
        let e = exp();
        let m = seeded_model(&e);
        let mut g = Generator::new(&e, seed);
        (0..20)
            .flat_map(|s| g.plan_step(&m, 1000, 10_000 + s * 1000))
            .collect()
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let a = schedule(1);
        assert!(a.len() > 20, "{}", a.len());
        assert_eq!(a, schedule(1));
        assert_ne!(a, schedule(2));
        assert!(a.iter().any(|p| matches!(p.request, Call::Copy { .. })));
        // Cross-region copies come from the other region.
        for p in &a {
            if let Call::Copy { source_region, .. } = &p.request {
                assert_ne!(source_region, &p.region);
            }
        }
    }

    #[test]
    fn answers_update_the_model() {
        let e = exp();
        let mut m = seeded_model(&e);
        let p = Planned {
            process: 0,
            account: 0,
            region: "us-east-1".into(),
            request: Call::Register {
                name: "x".into(),
                snapshot_id: "snap-0".into(),
            },
        };
        let o = Outcome {
            kind: EntryType::Ok,
            value: json!({"image_id": "ami-new"}),
            error: None,
            token: Some("us-east-1:9".into()),
        };
        m.learn(&p, &o, 5);
        assert!(m.images.iter().any(|i| i.id == "ami-new"));
        assert_eq!(
            m.slots[0].last_write,
            Some((
                "us-east-1:9".into(),
                "us-east-1".into(),
                Some("ami-new".into())
            ))
        );
        let d = Planned {
            request: Call::Deregister {
                image_id: "ami-new".into(),
            },
            ..p
        };
        let lost = Outcome {
            kind: EntryType::Info,
            value: json!({}),
            error: Some("client-timeout".into()),
            token: None,
        };
        m.learn(&d, &lost, 6);
        assert!(m.images.iter().any(|i| i.id == "ami-new" && i.retired));
    }

    #[test]
    fn poisson_means_are_about_right() {
        let mut rng = amisim_chaos::seeded_rng(3, "t");
        let n = 4000;
        let sum: u32 = (0..n).map(|_| poisson(&mut rng, 0.5)).sum();
        let mean = f64::from(sum) / f64::from(n);
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
