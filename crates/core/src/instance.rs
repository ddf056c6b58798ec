//! Instances (EC2_SEMANTICS.md §2.3, §2.4, §4, §6, §10.2): RunInstances, StopInstances,
//! StartInstances, TerminateInstances and DescribeInstances.
//!
//! Instances exist in amisim to feed the AMI control plane: CreateImage needs one, and an
//! instance's EBS volumes come from its image's block device mappings. The lifecycle is
//! `pending → running → stopping → stopped → pending → …`, and from any state but `terminated`
//! `shutting-down → terminated`; every timed step is a timer fired by [`crate::tick`].
//!
//! `[sim]` Capacity is unlimited: RunInstances launches `max_count` instances unless the account's
//! instance or volume quota leaves fewer (then as many as fit, at least `min_count`).
//! `[sim]` Terminated instances stay visible to DescribeInstances forever (EC2: about an hour).

use std::collections::BTreeSet;

use amisim_proto as pb;
use amisim_proto::event::Payload;

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::ids::{self, Kind};
use crate::mapping::{self, Parsed};
use crate::state::{
    tag_records, tri_encode, ImageState, Instance, InstanceState, Mapping, State, Tags, VolumeState,
};
use crate::time::{gmt, iso};
use crate::timing::gib;
use crate::{filter, tags, Ctx, Decision, ReadCtx, Reply};

/// The instance type RunInstances uses when none is given (as EC2).
pub const DEFAULT_INSTANCE_TYPE: &str = "m1.small";

/// Instance families amisim knows (`<family>.<size>`).
pub const INSTANCE_FAMILIES: &[&str] = &[
    "a1", "c1", "c3", "c4", "c5", "c5a", "c5ad", "c5d", "c5n", "c6a", "c6g", "c6gd", "c6gn", "c6i",
    "c6id", "c6in", "c7a", "c7g", "c7gd", "c7gn", "c7i", "c8g", "d2", "d3", "d3en", "f1", "g2",
    "g3", "g4ad", "g4dn", "g5", "g5g", "g6", "h1", "hpc6a", "hpc7g", "i2", "i3", "i3en", "i4g",
    "i4i", "im4gn", "inf1", "inf2", "is4gen", "m1", "m2", "m3", "m4", "m5", "m5a", "m5ad", "m5d",
    "m5dn", "m5n", "m5zn", "m6a", "m6g", "m6gd", "m6i", "m6id", "m6idn", "m6in", "m7a", "m7g",
    "m7gd", "m7i", "m7i-flex", "m8g", "mac1", "mac2", "p2", "p3", "p3dn", "p4d", "p5", "r3", "r4",
    "r5", "r5a", "r5ad", "r5b", "r5d", "r5dn", "r5n", "r6a", "r6g", "r6gd", "r6i", "r6id", "r7a",
    "r7g", "r7gd", "r7i", "r8g", "t1", "t2", "t3", "t3a", "t4g", "trn1", "u-6tb1", "vt1", "x1",
    "x1e", "x2gd", "x2idn", "x2iedn", "z1d",
];

/// The only families that boot instance-store-backed AMIs (EC2_SEMANTICS.md §2.3).
pub const INSTANCE_STORE_FAMILIES: &[&str] = &["c3", "d2", "g2", "i2", "m3", "r3"];

/// `<family>.<size>` with a known family and a size `nano`, `micro`, `small`, `medium`,
/// `large`, `xlarge`, `<N>xlarge`, `metal` or `metal-<N>xl`.
pub fn is_valid_instance_type(t: &str) -> bool {
    let Some((family, size)) = t.split_once('.') else {
        return false;
    };
    let number = |n: &str| {
        !n.is_empty()
            && n.len() <= 3
            && !n.starts_with('0')
            && n.bytes().all(|b| b.is_ascii_digit())
    };
    INSTANCE_FAMILIES.contains(&family)
        && (matches!(
            size,
            "nano" | "micro" | "small" | "medium" | "large" | "xlarge" | "metal"
        ) || size.strip_suffix("xlarge").is_some_and(number)
            || size
                .strip_prefix("metal-")
                .and_then(|s| s.strip_suffix("xl"))
                .is_some_and(number))
}

fn family(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

/// The state reason of an instance whose volume key cannot be used (EC2_SEMANTICS.md §4.2): it
/// launches `pending` and goes to `terminated` instead of `running`.
pub const INVALID_KMS_KEY_CODE: &str = "Client.InvalidKMSKey.InvalidState";
pub const INVALID_KMS_KEY_MESSAGE: &str =
    "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state";

fn api_state(s: InstanceState) -> pb::InstanceState {
    pb::InstanceState {
        code: s.code(),
        name: s.as_str().to_string(),
    }
}

fn change(id: &str, previous: InstanceState, current: InstanceState) -> pb::InstanceStateChange {
    pb::InstanceStateChange {
        instance_id: id.to_string(),
        current_state: Some(api_state(current)),
        previous_state: Some(api_state(previous)),
    }
}

fn incorrect_state(id: &str, verb: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::IncorrectInstanceState,
        format!("The instance '{id}' is not in a state from which it can be {verb}."),
    )
}

// -------------------------------------------------------------------------------------------
// RunInstances
// -------------------------------------------------------------------------------------------

/// One EBS volume each launched instance gets.
struct PlannedVolume {
    mapping: Mapping,
    /// Reuse this data encryption key (snapshot lineage); `None`: a fresh one if encrypted.
    dek: Option<String>,
    written_bytes: u64,
    /// The volume's key cannot be used: the launch fails later (no volume is created).
    key_problem: Option<crate::kms::KeyProblem>,
}

/// What every instance of one RunInstances gets: its EBS volumes and instance store devices.
struct Plan {
    volumes: Vec<PlannedVolume>,
    instance_store: Vec<Mapping>,
}

/// The snapshot behind an EBS mapping, looked up as RunInstances needs it.
fn mapping_snapshot<'s>(
    state: &'s State,
    ctx: &Ctx<'_>,
    snapshot_id: &str,
    from_image: bool,
) -> Ec2Result<&'s crate::state::Snapshot> {
    let snap = state
        .snapshots
        .get(snapshot_id)
        .ok_or_else(|| Ec2Error::snapshot_not_found(snapshot_id))?;
    if !from_image {
        // A snapshot named in the request needs the caller's create-volume permission; an
        // image's own snapshots do not (sharing an AMI does not share them, §4.1).
        let may_use = snap.owner_id == ctx.account_id
            || snap.public
            || snap.create_volume_permissions.contains(ctx.account_id);
        if !may_use {
            return Err(Ec2Error::snapshot_not_found(snapshot_id));
        }
        if snap.state != crate::state::SnapshotState::Completed {
            // [unconfirmed] code and text.
            return Err(Ec2Error::new(
                ErrorCode::IncorrectState,
                format!(
                    "Snapshot '{snapshot_id}' is in invalid state - {}",
                    snap.state.as_str()
                ),
            ));
        }
    }
    Ok(snap)
}

/// Resolves one EBS device of the launch: defaults and overrides, the snapshot's size and
/// encryption, and the key lineage.
fn plan_volume(
    state: &State,
    ctx: &Ctx<'_>,
    device_name: &str,
    ebs: &pb::EbsBlockDevice,
    from_image: bool,
) -> Ec2Result<PlannedVolume> {
    let snap = if ebs.snapshot_id.is_empty() {
        None
    } else {
        Some(mapping_snapshot(state, ctx, &ebs.snapshot_id, from_image)?)
    };
    let mut m = mapping::resolve_ebs(
        device_name,
        ebs,
        snap.map(|s| {
            (
                s.snapshot_id.as_str(),
                s.volume_size,
                s.encrypted,
                s.kms_key_id.as_str(),
            )
        }),
        true,
    )?;
    // Encryption (§4.1, §4.2, crate::encryption): the key given, else an own encrypted
    // snapshot's, else (a shared encrypted snapshot, `Encrypted=true`, or EBD on) the caller's
    // default key. A key that cannot be used fails the launch later, not the call.
    let (key, key_problem) = match crate::encryption::volume_key(
        state,
        ctx.region,
        ctx.account_id,
        ebs.encrypted,
        &ebs.kms_key_id,
        snap.map(Into::into),
    ) {
        Ok(k) => (k, None),
        Err(p) => (None, Some(p)),
    };
    if key_problem.is_none() {
        m.encrypted = key.is_some();
        m.kms_key_id = key.unwrap_or_default();
    }
    // Same key as an encrypted snapshot: same lineage, same data key; otherwise a new one.
    let dek = snap
        .filter(|s| s.encrypted && m.encrypted && s.kms_key_id == m.kms_key_id)
        .filter(|s| !s.data_encryption_key_id.is_empty())
        .map(|s| s.data_encryption_key_id.clone());
    let written_bytes = match snap {
        Some(s) => s.full_snapshot_size_in_bytes.max(0) as u64,
        None => gib(m.volume_size),
    };
    Ok(PlannedVolume {
        mapping: m,
        dek,
        written_bytes,
        key_problem,
    })
}

/// The request's override of an image EBS device: unset fields keep the image's values (IOPS
/// and throughput only while the volume type stays the same); encryption only from the request.
fn merge_ebs(image: &Mapping, req: &pb::EbsBlockDevice) -> pb::EbsBlockDevice {
    let same_snapshot = req.snapshot_id.is_empty() || req.snapshot_id == image.snapshot_id;
    let same_type = req.volume_type.is_empty() || req.volume_type == image.volume_type;
    let typed = |v: i32, types: &[&str]| {
        (same_type && v > 0 && types.contains(&image.volume_type.as_str())).then_some(v)
    };
    pb::EbsBlockDevice {
        snapshot_id: if same_snapshot {
            image.snapshot_id.clone()
        } else {
            req.snapshot_id.clone()
        },
        volume_size: req
            .volume_size
            .or((same_snapshot && image.volume_size > 0).then_some(image.volume_size)),
        volume_type: if req.volume_type.is_empty() {
            image.volume_type.clone()
        } else {
            req.volume_type.clone()
        },
        iops: req.iops.or(typed(image.iops, &["gp3", "io1", "io2"])),
        throughput: req.throughput.or(typed(image.throughput, &["gp3"])),
        delete_on_termination: req
            .delete_on_termination
            .or(Some(image.delete_on_termination)),
        encrypted: req.encrypted,
        kms_key_id: req.kms_key_id.clone(),
    }
}

/// The image's EBS mapping as a request-shaped device (encryption left to the snapshot).
fn image_ebs(image: &Mapping) -> pb::EbsBlockDevice {
    merge_ebs(image, &pb::EbsBlockDevice::default())
}

/// Merges the image's mappings with the request's and resolves every device.
fn plan(
    state: &State,
    ctx: &Ctx<'_>,
    image: &crate::state::Image,
    requested: &[Parsed],
) -> Ec2Result<Plan> {
    let mut volumes = Vec::new();
    let mut instance_store = Vec::new();
    let find = |dev: &str| requested.iter().find(|p| p.device_name() == dev);
    for im in &image.registered.block_device_mappings {
        match find(&im.device_name) {
            Some(Parsed::NoDevice { device_name }) => {
                if im.ebs
                    && image.registered.root_device_type == "ebs"
                    && *device_name == image.registered.root_device_name
                {
                    // [unconfirmed] code and text.
                    return Err(Ec2Error::new(
                        ErrorCode::InvalidBlockDeviceMapping,
                        format!(
                            "The device '{device_name}' is the root device of the image and cannot be suppressed."
                        ),
                    ));
                }
            }
            Some(Parsed::Ephemeral {
                device_name,
                virtual_name,
            }) => instance_store.push(mapping::ephemeral(device_name, virtual_name)),
            Some(Parsed::Ebs { device_name, ebs }) => {
                let merged = if im.ebs {
                    merge_ebs(im, ebs)
                } else {
                    ebs.clone()
                };
                let from_image = im.ebs && merged.snapshot_id == im.snapshot_id;
                volumes.push(plan_volume(state, ctx, device_name, &merged, from_image)?);
            }
            None if im.ebs => {
                volumes.push(plan_volume(
                    state,
                    ctx,
                    &im.device_name,
                    &image_ebs(im),
                    true,
                )?);
            }
            None => instance_store.push(im.clone()),
        }
    }
    let in_image: BTreeSet<&str> = image
        .registered
        .block_device_mappings
        .iter()
        .map(|m| m.device_name.as_str())
        .collect();
    for p in requested
        .iter()
        .filter(|p| !in_image.contains(p.device_name()))
    {
        match p {
            // Suppressing a device the image does not have changes nothing.
            Parsed::NoDevice { .. } => {}
            Parsed::Ephemeral {
                device_name,
                virtual_name,
            } => instance_store.push(mapping::ephemeral(device_name, virtual_name)),
            Parsed::Ebs { device_name, ebs } => {
                // A new device needs a source; only the image's devices may be overridden bare.
                if ebs.snapshot_id.is_empty() && ebs.volume_size.is_none() {
                    return Err(Ec2Error::new(
                        ErrorCode::InvalidBlockDeviceMapping,
                        format!(
                            "The request must contain either a snapshot id or a volume size for device '{device_name}'"
                        ),
                    ));
                }
                volumes.push(plan_volume(state, ctx, device_name, ebs, false)?);
            }
        }
    }
    Ok(Plan {
        volumes,
        instance_store,
    })
}

/// Renders one reservation from `state`: its instances in launch-index order.
fn render_reservation(state: &State, ctx: &ReadCtx<'_>, reservation_id: &str) -> pb::Reservation {
    let mut insts: Vec<&Instance> = state
        .instances
        .values()
        .filter(|i| i.reservation_id == reservation_id)
        .collect();
    insts.sort_by_key(|i| (i.ami_launch_index, i.instance_id.clone()));
    pb::Reservation {
        reservation_id: reservation_id.to_string(),
        owner_id: insts
            .first()
            .map(|i| i.owner_id.clone())
            .unwrap_or_else(|| ctx.account_id.to_string()),
        instances: insts
            .into_iter()
            .map(|i| render_instance(state, i, ctx))
            .collect(),
    }
}

/// RunInstances: launches `max_count` instances of an image (EC2_SEMANTICS.md §2.3, §2.4).
pub fn run_instances(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::RunInstancesRequest,
) -> Ec2Result<Decision> {
    // 2 Missing parameters.
    if r.image_id.is_empty() {
        return Err(Ec2Error::missing("ImageId"));
    }
    if r.min_count == 0 {
        return Err(Ec2Error::missing("MinCount"));
    }
    if r.max_count == 0 {
        return Err(Ec2Error::missing("MaxCount"));
    }
    // 3 Syntax.
    ids::check_image_id(&r.image_id)?;
    if r.min_count < 1 {
        return Err(Ec2Error::invalid_value(
            "minCount",
            r.min_count,
            "It must be at least 1.",
        ));
    }
    if r.max_count < r.min_count {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "Invalid value '{}' for maxCount. Must be greater than or equal to minCount ({}).",
                r.max_count, r.min_count
            ),
        ));
    }
    let instance_type = if r.instance_type.is_empty() {
        DEFAULT_INSTANCE_TYPE.to_string()
    } else {
        r.instance_type.clone()
    };
    if !is_valid_instance_type(&instance_type) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!("Invalid value '{instance_type}' for InstanceType."),
        ));
    }
    let zone = match r.placement.as_ref().map(|p| p.availability_zone.as_str()) {
        None | Some("") => format!("{}a", ctx.region),
        Some(z) => {
            let ok = z
                .strip_prefix(ctx.region)
                .is_some_and(|s| matches!(s, "a" | "b" | "c"));
            if !ok {
                // [unconfirmed] EC2 may answer `InvalidParameterValue` here.
                return Err(Ec2Error::new(
                    ErrorCode::InvalidZoneNotFound,
                    format!("The zone '{z}' does not exist."),
                ));
            }
            z.to_string()
        }
    };
    if r.client_token.len() > 64 || !r.client_token.is_ascii() {
        return Err(Ec2Error::invalid_value(
            "clientToken",
            &r.client_token,
            "It must be at most 64 ASCII characters.",
        ));
    }
    let requested = mapping::parse_mapping_overrides(&r.block_device_mappings)?;
    let spec_tags = tags::from_specifications(&r.tag_specifications, &["instance", "volume"])?;
    let instance_tags = spec_tags.get("instance").cloned().unwrap_or_default();
    let volume_tags = spec_tags.get("volume").cloned().unwrap_or_default();
    // 5 DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 6 Idempotency token.
    let fingerprint = {
        let mut f = r.clone();
        f.client_token.clear();
        f.dry_run = false;
        crate::fingerprint(&f)
    };
    if !r.client_token.is_empty() {
        let key = (
            ctx.account_id.to_string(),
            "RunInstances".to_string(),
            r.client_token.clone(),
        );
        if let Some(used) = state.client_tokens.get(&key) {
            if used.fingerprint != fingerprint {
                return Err(Ec2Error::new(
                    ErrorCode::IdempotentParameterMismatch,
                    "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
                ));
            }
            return Ok(Decision::new(
                vec![],
                Reply::RunInstances(render_reservation(state, &ctx.read(), &used.resource_id)),
            ));
        }
    }
    // 7/8 Existence and permission.
    let image = state
        .images
        .get(r.image_id.as_str())
        .filter(|i| crate::sharing::may_launch(i, ctx.account_id, ctx.membership))
        .ok_or_else(|| Ec2Error::image_not_found(&[r.image_id.as_str()]))?;
    // 9 State. [unconfirmed] code for a disabled, pending or failed image.
    if image.state != ImageState::Available {
        return Err(Ec2Error::new(
            ErrorCode::InvalidAmiIdUnavailable,
            format!(
                "The image id '[{}]' is not available for launch (state: {}).",
                r.image_id,
                image.state.as_str()
            ),
        ));
    }
    if image.registered.root_device_type == "instance-store"
        && !INSTANCE_STORE_FAMILIES.contains(&family(&instance_type))
    {
        // [unconfirmed] code and text.
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterCombination,
            format!(
                "The instance type '{instance_type}' does not support instance-store-backed AMIs; use c3, d2, g2, i2, m3 or r3."
            ),
        ));
    }
    let plan = plan(state, ctx, image, &requested)?;
    // 10 Quotas: as many as fit, at least min_count ([sim]).
    let running = state
        .instances
        .values()
        .filter(|i| i.owner_id == ctx.account_id && i.state != InstanceState::Terminated)
        .count();
    let instances_left = ctx.config.max_instances.saturating_sub(running);
    let wanted = r.max_count.max(0) as usize;
    let min = r.min_count.max(0) as usize;
    if instances_left < min {
        return Err(Ec2Error::new(
            ErrorCode::InstanceLimitExceeded,
            format!(
                "You have requested more instances ({min}) than your current instance limit of {} allows for the specified instance type.",
                ctx.config.max_instances
            ),
        ));
    }
    let volumes_left = if plan.volumes.is_empty() {
        usize::MAX
    } else {
        let owned = state
            .volumes
            .values()
            .filter(|v| v.owner_id == ctx.account_id)
            .count();
        ctx.config.max_volumes.saturating_sub(owned) / plan.volumes.len()
    };
    if volumes_left < min {
        return Err(Ec2Error::new(
            ErrorCode::VolumeLimitExceeded,
            format!(
                "You have exceeded your maximum volume limit of {} volumes.",
                ctx.config.max_volumes
            ),
        ));
    }
    let count = wanted.min(instances_left).min(volumes_left);

    // Effect.
    let reservation_id = ctx.new_id(Kind::Reservation, state);
    let reg = &image.registered;
    let now = ctx.now_ms;
    let mut events = Vec::new();
    let key_problem = plan.volumes.iter().any(|v| v.key_problem.is_some());
    for index in 0..count {
        let instance_id = ctx.new_id(Kind::Instance, state);
        let first = index == 0;
        events.push(Payload::InstanceLaunched(pb::InstanceLaunched {
            instance_id: instance_id.clone(),
            reservation_id: reservation_id.clone(),
            owner_id: ctx.account_id.to_string(),
            image_id: r.image_id.clone(),
            instance_type: instance_type.clone(),
            availability_zone: zone.clone(),
            ami_launch_index: i32::try_from(index).unwrap_or(i32::MAX),
            architecture: reg.architecture.clone(),
            root_device_type: reg.root_device_type.clone(),
            root_device_name: reg.root_device_name.clone(),
            virtualization_type: reg.virtualization_type.clone(),
            platform: reg.platform.clone(),
            ena_support: tri_encode(reg.ena_support),
            boot_mode: reg.boot_mode.clone(),
            instance_store: plan.instance_store.iter().map(Into::into).collect(),
            tags: tag_records(&instance_tags),
            launch_time_ms: now,
            running_at_ms: now.saturating_add(ctx.config.instance_start_ms),
            client_token: r.client_token.clone(),
            request_fingerprint: if first && !r.client_token.is_empty() {
                fingerprint.clone()
            } else {
                String::new()
            },
        }));
        if key_problem {
            // The launch fails: `pending`, then `terminated` when it would have been running,
            // with the KMS state reason; its volumes are never created.
            events.push(Payload::InstanceStateChanged(pb::InstanceStateChanged {
                instance_id: instance_id.clone(),
                state: InstanceState::Pending.as_str().into(),
                next_state: InstanceState::Terminated.as_str().into(),
                next_at_ms: now.saturating_add(ctx.config.instance_start_ms),
                state_transition_reason: String::new(),
                state_reason_code: INVALID_KMS_KEY_CODE.into(),
                state_reason_message: INVALID_KMS_KEY_MESSAGE.into(),
                launch_time_ms: 0,
            }));
            continue;
        }
        for v in &plan.volumes {
            let m = &v.mapping;
            let dek = match (&v.dek, m.encrypted) {
                (Some(d), _) => d.clone(),
                (None, true) => ctx.new_uuid(),
                (None, false) => String::new(),
            };
            events.push(Payload::VolumeCreated(pb::VolumeCreated {
                volume_id: ctx.new_id(Kind::Volume, state),
                owner_id: ctx.account_id.to_string(),
                availability_zone: zone.clone(),
                size: m.volume_size,
                snapshot_id: m.snapshot_id.clone(),
                volume_type: m.volume_type.clone(),
                iops: m.iops,
                throughput: m.throughput,
                encrypted: m.encrypted,
                kms_key_id: m.kms_key_id.clone(),
                data_encryption_key_id: dek,
                tags: tag_records(&volume_tags),
                create_time_ms: now,
                available_at_ms: now.saturating_add(ctx.config.volume_create_ms),
                written_bytes: v.written_bytes,
                client_token: String::new(),
                request_fingerprint: String::new(),
                attach_to_instance_id: instance_id.clone(),
                attach_device: m.device_name.clone(),
                delete_on_termination: m.delete_on_termination,
            }));
        }
    }
    let after = crate::preview(state, &events);
    let reply = Reply::RunInstances(render_reservation(&after, &ctx.read(), &reservation_id));
    Ok(Decision::new(events, reply))
}

// -------------------------------------------------------------------------------------------
// Stop, Start, Terminate
// -------------------------------------------------------------------------------------------

/// Common checks of the state-changing calls: ids given and well formed, DryRun, every id an
/// instance of the caller. Returns the instances, duplicates removed, in request order.
fn targets<'s>(
    state: &'s State,
    ctx: &Ctx<'_>,
    instance_ids: &[String],
    dry_run: bool,
) -> Ec2Result<Vec<&'s Instance>> {
    if instance_ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    for id in instance_ids {
        ids::check_instance_id(id)?;
    }
    if dry_run {
        return Err(Ec2Error::dry_run());
    }
    let mut seen = BTreeSet::new();
    let unique: Vec<&String> = instance_ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .collect();
    let missing: Vec<&str> = unique
        .iter()
        .filter(|id| {
            state
                .instances
                .get(id.as_str())
                .is_none_or(|i| i.owner_id != ctx.account_id)
        })
        .map(|id| id.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Ec2Error::instance_not_found(&missing));
    }
    Ok(unique
        .into_iter()
        .filter_map(|id| state.instances.get(id.as_str()))
        .collect())
}

fn transition(
    inst: &Instance,
    ctx: &Ctx<'_>,
    to: InstanceState,
    next: InstanceState,
    after_ms: u64,
    user_shutdown: bool,
) -> Payload {
    let (reason, code, message) = if user_shutdown {
        (
            format!("User initiated ({})", gmt(ctx.now_ms)),
            "Client.UserInitiatedShutdown".to_string(),
            "Client.UserInitiatedShutdown: User initiated shutdown".to_string(),
        )
    } else {
        (String::new(), String::new(), String::new())
    };
    Payload::InstanceStateChanged(pb::InstanceStateChanged {
        instance_id: inst.instance_id.clone(),
        state: to.as_str().to_string(),
        next_state: next.as_str().to_string(),
        next_at_ms: ctx.now_ms.saturating_add(after_ms),
        state_transition_reason: reason,
        state_reason_code: code,
        state_reason_message: message,
        // EC2 sets LaunchTime anew when a stopped instance starts.
        launch_time_ms: if to == InstanceState::Pending {
            ctx.now_ms
        } else {
            0
        },
    })
}

/// StopInstances: `running → stopping → stopped`; EBS-backed instances only.
pub fn stop_instances(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::StopInstancesRequest,
) -> Ec2Result<Decision> {
    let insts = targets(state, ctx, &r.instance_ids, r.dry_run)?;
    for i in &insts {
        if i.root_device_type != "ebs" {
            return Err(Ec2Error::new(
                ErrorCode::UnsupportedOperation,
                format!(
                    "The instance '{}' does not have an 'ebs' root device type and cannot be stopped.",
                    i.instance_id
                ),
            ));
        }
    }
    let (events, changes) = move_all(
        insts,
        ctx,
        &Move {
            refuse: &[
                InstanceState::Pending,
                InstanceState::ShuttingDown,
                InstanceState::Terminated,
            ],
            verb: "stopped",
            from: InstanceState::Running,
            via: InstanceState::Stopping,
            to: InstanceState::Stopped,
            ms: ctx.config.instance_stop_ms,
            user_initiated: true,
        },
    )?;
    Ok(Decision::new(
        events,
        Reply::StopInstances(pb::StopInstancesResponse {
            stopping_instances: changes,
        }),
    ))
}

/// A StopInstances or StartInstances move: instances in a `refuse` state fail the whole call
/// (`IncorrectInstanceState`, nothing written); those in `from` go to `via`, then to `to` after
/// `ms`; the others are reported unchanged.
struct Move {
    refuse: &'static [InstanceState],
    verb: &'static str,
    from: InstanceState,
    via: InstanceState,
    to: InstanceState,
    ms: u64,
    user_initiated: bool,
}

fn move_all(
    insts: Vec<&Instance>,
    ctx: &Ctx<'_>,
    m: &Move,
) -> Ec2Result<(Vec<Payload>, Vec<pb::InstanceStateChange>)> {
    if let Some(i) = insts.iter().find(|i| m.refuse.contains(&i.state)) {
        return Err(incorrect_state(&i.instance_id, m.verb));
    }
    let mut events = Vec::new();
    let mut changes = Vec::new();
    for i in insts {
        if i.state == m.from {
            events.push(transition(i, ctx, m.via, m.to, m.ms, m.user_initiated));
            changes.push(change(&i.instance_id, i.state, m.via));
        } else {
            changes.push(change(&i.instance_id, i.state, i.state));
        }
    }
    Ok((events, changes))
}

/// StartInstances: `stopped → pending → running`.
pub fn start_instances(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::StartInstancesRequest,
) -> Ec2Result<Decision> {
    let insts = targets(state, ctx, &r.instance_ids, r.dry_run)?;
    let (events, changes) = move_all(
        insts,
        ctx,
        &Move {
            refuse: &[
                InstanceState::Stopping,
                InstanceState::ShuttingDown,
                InstanceState::Terminated,
            ],
            verb: "started",
            from: InstanceState::Stopped,
            via: InstanceState::Pending,
            to: InstanceState::Running,
            ms: ctx.config.instance_start_ms,
            user_initiated: false,
        },
    )?;
    Ok(Decision::new(
        events,
        Reply::StartInstances(pb::StartInstancesResponse {
            starting_instances: changes,
        }),
    ))
}

/// TerminateInstances: any state but `terminated` → `shutting-down → terminated`. An image
/// CreateImage is still making from the instance fails (`Client.InstanceTerminated`, §5.2).
/// DeleteOnTermination volumes go when the instance reaches `terminated` ([`crate::tick`]).
pub fn terminate_instances(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::TerminateInstancesRequest,
) -> Ec2Result<Decision> {
    let insts = targets(state, ctx, &r.instance_ids, r.dry_run)?;
    let mut events = Vec::new();
    let mut changes = Vec::new();
    for i in insts {
        if matches!(
            i.state,
            InstanceState::Terminated | InstanceState::ShuttingDown
        ) {
            changes.push(change(&i.instance_id, i.state, i.state));
            continue;
        }
        events.push(transition(
            i,
            ctx,
            InstanceState::ShuttingDown,
            InstanceState::Terminated,
            ctx.config.instance_terminate_ms,
            true,
        ));
        changes.push(change(&i.instance_id, i.state, InstanceState::ShuttingDown));
        for img in state.images.values().filter(|img| {
            img.state == ImageState::Pending
                && img.registered.origin == "create"
                && img.registered.source_instance_id == i.instance_id
        }) {
            events.push(Payload::ImageFailed(pb::ImageFailed {
                image_id: img.id().to_string(),
                state_reason_code: "Client.InstanceTerminated".into(),
                state_reason_message: "Instance terminated during image creation".into(),
            }));
        }
    }
    Ok(Decision::new(
        events,
        Reply::TerminateInstances(pb::TerminateInstancesResponse {
            terminating_instances: changes,
        }),
    ))
}

// -------------------------------------------------------------------------------------------
// DescribeInstances
// -------------------------------------------------------------------------------------------

/// DescribeInstances filter names (besides `tag:<key>` and `tag-key`).
pub const FILTERS: &[&str] = &[
    "availability-zone",
    "image-id",
    "instance-id",
    "instance-state-code",
    "instance-state-name",
    "instance-type",
    "root-device-type",
    "architecture",
    "block-device-mapping.volume-id",
    "reservation-id",
];

fn filter_values(i: &Instance, name: &str) -> Vec<String> {
    match name {
        "availability-zone" => vec![i.availability_zone.clone()],
        "image-id" => vec![i.image_id.clone()],
        "instance-id" => vec![i.instance_id.clone()],
        "instance-state-code" => vec![i.state.code().to_string()],
        "instance-state-name" => vec![i.state.as_str().to_string()],
        "instance-type" => vec![i.instance_type.clone()],
        "root-device-type" => vec![i.root_device_type.clone()],
        "architecture" => vec![i.architecture.clone()],
        "block-device-mapping.volume-id" => i.volumes.values().cloned().collect(),
        "reservation-id" => vec![i.reservation_id.clone()],
        _ => vec![],
    }
}

/// Renders an instance in the API's shape. Tags are the owner's (`[sim]`: only owners see
/// instances at all).
pub fn render_instance(state: &State, inst: &Instance, ctx: &ReadCtx<'_>) -> pb::Instance {
    let block_device_mappings = inst
        .volumes
        .iter()
        .map(|(device, volume_id)| {
            let v = state.volumes.get(volume_id);
            let a = v.and_then(|v| v.attachment.as_ref());
            pb::InstanceBlockDeviceMapping {
                device_name: device.clone(),
                volume_id: volume_id.clone(),
                status: match v.map(|v| v.state) {
                    Some(VolumeState::Creating) => "attaching",
                    _ => "attached",
                }
                .to_string(),
                attach_time: a.map(|a| iso(a.attach_time_ms)).unwrap_or_default(),
                delete_on_termination: a.is_some_and(|a| a.delete_on_termination),
            }
        })
        .collect();
    let tags: Tags = if inst.owner_id == ctx.account_id {
        inst.tags.clone()
    } else {
        Tags::new()
    };
    pb::Instance {
        instance_id: inst.instance_id.clone(),
        image_id: inst.image_id.clone(),
        state: Some(api_state(inst.state)),
        instance_type: inst.instance_type.clone(),
        launch_time: iso(inst.launch_time_ms),
        placement: Some(pb::Placement {
            availability_zone: inst.availability_zone.clone(),
        }),
        architecture: inst.architecture.clone(),
        root_device_type: inst.root_device_type.clone(),
        root_device_name: inst.root_device_name.clone(),
        block_device_mappings,
        virtualization_type: inst.virtualization_type.clone(),
        hypervisor: "xen".into(),
        state_reason: inst
            .state_reason
            .as_ref()
            .map(|(code, message)| pb::StateReason {
                code: code.clone(),
                message: message.clone(),
            }),
        state_transition_reason: inst.state_transition_reason.clone(),
        client_token: inst.client_token.clone(),
        tags: tags::render(&tags),
        ami_launch_index: inst.ami_launch_index,
        platform: inst.platform.clone(),
        ena_support: inst.ena_support,
        boot_mode: inst.boot_mode.clone(),
    }
}

/// DescribeInstances: the caller's instances (terminated ones included, `[sim]` forever), paged by
/// instance id and grouped into reservations in order of their first instance on the page.
pub fn describe_instances(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::DescribeInstancesRequest,
) -> Ec2Result<pb::DescribeInstancesResponse> {
    for id in &r.instance_ids {
        ids::check_instance_id(id)?;
    }
    filter::check_filters(&r.filters, FILTERS)?;
    let page = filter::page(r.max_results, &r.next_token, !r.instance_ids.is_empty(), 5)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let wanted: BTreeSet<&str> = r.instance_ids.iter().map(String::as_str).collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|id| {
            state
                .instances
                .get(*id)
                .is_none_or(|i| i.owner_id != ctx.account_id)
        })
        .collect();
    if !missing.is_empty() {
        return Err(Ec2Error::instance_not_found(&missing));
    }
    let visible = state
        .instances
        .iter()
        .filter(|(id, i)| {
            i.owner_id == ctx.account_id && (wanted.is_empty() || wanted.contains(id.as_str()))
        })
        .filter(|(_, i)| filter::matches(&r.filters, &i.tags, |n| filter_values(i, n)))
        .map(|(id, i)| (id.clone(), i));
    let (items, next_token) = filter::paginate(visible, &page);
    let mut reservations: Vec<pb::Reservation> = Vec::new();
    for i in items {
        let rendered = render_instance(state, i, ctx);
        match reservations
            .iter_mut()
            .find(|res| res.reservation_id == i.reservation_id)
        {
            Some(res) => res.instances.push(rendered),
            None => reservations.push(pb::Reservation {
                reservation_id: i.reservation_id.clone(),
                owner_id: i.owner_id.clone(),
                instances: vec![rendered],
            }),
        }
    }
    Ok(pb::DescribeInstancesResponse {
        reservations,
        next_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ImageState as IS, InstanceState as St, LaunchPermission as LP};
    use crate::testkit::{code, Harness, OTHER, OWNER, T0};
    use crate::{Answer, Command, Query};
    use amisim_proto::MappingRecord;

    const SNAP_ROOT: &str = "snap-0000000000000000a";
    const SNAP_DATA: &str = "snap-0000000000000000b";
    const SNAP_ENC: &str = "snap-0000000000000000c";
    const SNAP_OTHER: &str = "snap-0000000000000000d";
    const AMI: &str = "ami-0000000000000000a";
    const AMI_S3: &str = "ami-0000000000000000b";
    const AMI_ENC: &str = "ami-0000000000000000c";
    const AMI_OTHER: &str = "ami-0000000000000000d";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/11111111-1111-4111-8111-111111111111";
    const DEK: &str = "22222222-2222-4222-8222-222222222222";
    const GIB: u64 = 1 << 30;

    fn snapshot(id: &str, owner: &str, size: i32, enc: Option<(&str, &str)>) -> Vec<Payload> {
        vec![
            Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: id.into(),
                owner_id: owner.into(),
                volume_id: "vol-ffffffff".into(),
                volume_size: size,
                encrypted: enc.is_some(),
                kms_key_id: enc.map(|e| e.0.to_string()).unwrap_or_default(),
                data_encryption_key_id: enc.map(|e| e.1.to_string()).unwrap_or_default(),
                start_time_ms: T0,
                complete_at_ms: T0,
                full_snapshot_size_in_bytes: 2 * GIB as i64,
                ..Default::default()
            }),
            Payload::SnapshotCompleted(pb::SnapshotCompleted {
                snapshot_id: id.into(),
            }),
        ]
    }

    fn ebs(dev: &str, snap: &str, size: i32, vt: &str, dot: bool) -> MappingRecord {
        MappingRecord {
            device_name: dev.into(),
            ebs: true,
            snapshot_id: snap.into(),
            volume_size: size,
            volume_type: vt.into(),
            iops: if vt == "gp3" { 3000 } else { 0 },
            throughput: if vt == "gp3" { 125 } else { 0 },
            delete_on_termination: dot,
            ..Default::default()
        }
    }

    fn eph(dev: &str, n: u32) -> MappingRecord {
        MappingRecord {
            device_name: dev.into(),
            virtual_name: format!("ephemeral{n}"),
            ..Default::default()
        }
    }

    fn registered(
        id: &str,
        owner: &str,
        root_type: &str,
        maps: Vec<MappingRecord>,
    ) -> pb::ImageRegistered {
        pb::ImageRegistered {
            image_id: id.into(),
            owner_id: owner.into(),
            name: format!("image {id}"),
            architecture: "x86_64".into(),
            image_type: "machine".into(),
            root_device_type: root_type.into(),
            root_device_name: if root_type == "ebs" {
                "/dev/xvda"
            } else {
                "/dev/sda1"
            }
            .into(),
            block_device_mappings: maps,
            virtualization_type: "hvm".into(),
            boot_mode: "uefi".into(),
            ena_support: 2,
            origin: "register".into(),
            creation_date_ms: T0,
            ..Default::default()
        }
    }

    fn image(reg: pb::ImageRegistered) -> Vec<Payload> {
        let id = reg.image_id.clone();
        vec![
            Payload::ImageRegistered(reg),
            Payload::ImageAvailable(pb::ImageAvailable { image_id: id }),
        ]
    }

    /// Snapshots and images of OWNER (and one of OTHER), all usable.
    fn world() -> Harness {
        let mut h = Harness::new();
        h.given(snapshot(SNAP_ROOT, OWNER, 8, None))
            .given(snapshot(SNAP_DATA, OWNER, 20, None))
            .given(snapshot(SNAP_ENC, OWNER, 10, Some((KEY, DEK))))
            .given(snapshot(SNAP_OTHER, OTHER, 8, None))
            .given(image(registered(
                AMI,
                OWNER,
                "ebs",
                vec![
                    ebs("/dev/xvda", SNAP_ROOT, 8, "gp3", true),
                    ebs("/dev/sdb", SNAP_DATA, 20, "gp2", false),
                    eph("/dev/sdc", 0),
                ],
            )))
            .given(image(registered(
                AMI_S3,
                OWNER,
                "instance-store",
                vec![eph("/dev/sdb", 0)],
            )))
            .given(image(registered(
                AMI_ENC,
                OWNER,
                "ebs",
                vec![ebs("/dev/xvda", SNAP_ENC, 10, "gp3", true)],
            )))
            .given(image(registered(
                AMI_OTHER,
                OTHER,
                "ebs",
                vec![ebs("/dev/xvda", SNAP_OTHER, 8, "gp3", true)],
            )));
        h
    }

    fn run(image_id: &str) -> pb::RunInstancesRequest {
        pb::RunInstancesRequest {
            image_id: image_id.into(),
            min_count: 1,
            max_count: 1,
            ..Default::default()
        }
    }

    fn launch(h: &mut Harness, account: &str, r: pb::RunInstancesRequest) -> pb::Reservation {
        match h.when(account, Command::RunInstances(r)) {
            Ok(Decision {
                reply: Reply::RunInstances(res),
                ..
            }) => res,
            other => panic!("RunInstances failed: {other:?}"),
        }
    }

    fn launch_one(h: &mut Harness, image_id: &str) -> String {
        launch(h, OWNER, run(image_id)).instances[0]
            .instance_id
            .clone()
    }

    fn bdm(dev: &str, e: pb::EbsBlockDevice) -> pb::BlockDeviceMapping {
        pb::BlockDeviceMapping {
            device_name: dev.into(),
            ebs: Some(e),
            ..Default::default()
        }
    }

    fn volumes_of<'a>(h: &'a Harness, iid: &str) -> Vec<&'a crate::state::Volume> {
        h.state.instances[iid]
            .volumes
            .values()
            .map(|v| &h.state.volumes[v])
            .collect()
    }

    fn volume_at<'a>(h: &'a Harness, iid: &str, dev: &str) -> &'a crate::state::Volume {
        &h.state.volumes[&h.state.instances[iid].volumes[dev]]
    }

    fn stop(ids: &[&str]) -> Command {
        Command::StopInstances(pb::StopInstancesRequest {
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }
    fn start(ids: &[&str]) -> Command {
        Command::StartInstances(pb::StartInstancesRequest {
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }
    fn terminate(ids: &[&str]) -> Command {
        Command::TerminateInstances(pb::TerminateInstancesRequest {
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    fn changes(d: Decision) -> Vec<(String, i32, i32)> {
        let list = match d.reply {
            Reply::StopInstances(r) => r.stopping_instances,
            Reply::StartInstances(r) => r.starting_instances,
            Reply::TerminateInstances(r) => r.terminating_instances,
            other => panic!("unexpected reply {other:?}"),
        };
        list.into_iter()
            .map(|c| {
                (
                    c.instance_id,
                    c.previous_state.map(|s| s.code).unwrap_or(-1),
                    c.current_state.map(|s| s.code).unwrap_or(-1),
                )
            })
            .collect()
    }

    fn describe(
        h: &Harness,
        account: &str,
        r: pb::DescribeInstancesRequest,
    ) -> Ec2Result<pb::DescribeInstancesResponse> {
        match h.read(account, Query::DescribeInstances(r))? {
            Answer::DescribeInstances(d) => Ok(d),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn filtered(h: &Harness, name: &str, value: &str) -> Vec<String> {
        let r = pb::DescribeInstancesRequest {
            filters: vec![pb::Filter {
                name: name.into(),
                values: vec![value.into()],
            }],
            ..Default::default()
        };
        let mut ids: Vec<String> = describe(h, OWNER, r)
            .unwrap()
            .reservations
            .into_iter()
            .flat_map(|r| r.instances)
            .map(|i| i.instance_id)
            .collect();
        ids.sort();
        ids
    }

    /// Runs `cmd` expecting an error with `expected`; checks that nothing was written.
    fn fails(h: &mut Harness, account: &str, cmd: Command, expected: ErrorCode) -> Ec2Error {
        let before = h.log.len();
        let digest = h.state.digest();
        let err = match h.when(account, cmd) {
            Ok(d) => panic!("expected {expected}, got {d:?}"),
            Err(e) => e,
        };
        assert_eq!(err.code, expected, "{err}");
        assert_eq!(h.log.len(), before, "an error wrote events");
        assert_eq!(h.state.digest(), digest);
        err
    }

    // ---------------------------------------------------------------- RunInstances: effect

    #[test]
    fn run_launches_a_pending_instance_with_the_images_volumes_and_instance_store() {
        let mut h = world();
        let before = h.log.len();
        // Deciding alone writes nothing.
        let preview = h
            .try_decide(OWNER, Command::RunInstances(run(AMI)))
            .unwrap();
        assert_eq!(preview.events.len(), 3);
        assert_eq!(h.log.len(), before);
        let d = h.when(OWNER, Command::RunInstances(run(AMI))).unwrap();
        // One InstanceLaunched followed by one VolumeCreated per EBS mapping.
        assert_eq!(d.events.len(), 3);
        assert_eq!(h.log.len(), before + 3);
        let Payload::InstanceLaunched(l) = &d.events[0] else {
            panic!("{:?}", d.events[0])
        };
        assert!(ids::is_valid(Kind::Reservation, &l.reservation_id));
        assert!(ids::is_valid(Kind::Instance, &l.instance_id));
        assert_eq!(l.running_at_ms, T0 + 10_000);
        assert_eq!(l.instance_type, "m1.small");
        assert_eq!(l.availability_zone, "us-east-1a");
        assert_eq!(l.architecture, "x86_64");
        assert_eq!(l.boot_mode, "uefi");
        assert_eq!(l.ena_support, 2);
        assert_eq!(l.instance_store.len(), 1);
        assert_eq!(l.instance_store[0].virtual_name, "ephemeral0");
        for e in &d.events[1..] {
            let Payload::VolumeCreated(v) = e else {
                panic!("{e:?}")
            };
            assert_eq!(v.attach_to_instance_id, l.instance_id);
            assert_eq!(v.owner_id, OWNER);
            assert_eq!(v.availability_zone, "us-east-1a");
            assert_eq!(v.available_at_ms, T0 + 2_000);
            // Restored volumes hold the snapshot's data.
            assert_eq!(v.written_bytes, 2 * GIB);
        }
        let Reply::RunInstances(res) = d.reply else {
            panic!()
        };
        assert_eq!(res.reservation_id, l.reservation_id);
        assert_eq!(res.owner_id, OWNER);
        let i = &res.instances[0];
        assert_eq!(
            i.state,
            Some(pb::InstanceState {
                code: 0,
                name: "pending".into()
            })
        );
        assert_eq!(i.launch_time, "2024-05-01T00:00:00.000Z");
        assert_eq!(i.root_device_type, "ebs");
        assert_eq!(i.root_device_name, "/dev/xvda");
        assert_eq!(i.hypervisor, "xen");
        assert_eq!(i.ena_support, Some(true));
        let devs: Vec<(&str, &str, bool)> = i
            .block_device_mappings
            .iter()
            .map(|m| {
                (
                    m.device_name.as_str(),
                    m.status.as_str(),
                    m.delete_on_termination,
                )
            })
            .collect();
        assert_eq!(
            devs,
            vec![
                ("/dev/sdb", "attaching", false),
                ("/dev/xvda", "attaching", true)
            ]
        );

        let iid = i.instance_id.clone();
        let root = volume_at(&h, &iid, "/dev/xvda");
        assert_eq!(
            (
                root.size,
                root.volume_type.as_str(),
                root.iops,
                root.throughput
            ),
            (8, "gp3", 3000, 125)
        );
        assert_eq!(root.snapshot_id, SNAP_ROOT);
        assert!(
            !root.encrypted && root.kms_key_id.is_empty() && root.data_encryption_key_id.is_empty()
        );
        let data = volume_at(&h, &iid, "/dev/sdb");
        assert_eq!(
            (data.size, data.volume_type.as_str(), data.iops),
            (20, "gp2", 100)
        );
        h.advance(2_000);
        assert!(volumes_of(&h, &iid)
            .iter()
            .all(|v| v.state == VolumeState::InUse));
        h.assert_replay_equals_live();
    }

    #[test]
    fn run_launches_max_count_instances_in_one_reservation() {
        let mut h = world();
        let mut r = run(AMI);
        r.min_count = 2;
        r.max_count = 3;
        let res = launch(&mut h, OWNER, r);
        assert_eq!(res.instances.len(), 3);
        let idx: Vec<i32> = res.instances.iter().map(|i| i.ami_launch_index).collect();
        assert_eq!(idx, vec![0, 1, 2]);
        assert!(h
            .state
            .instances
            .values()
            .all(|i| i.reservation_id == res.reservation_id));
        assert_eq!(h.state.volumes.len(), 6);
        h.assert_replay_equals_live();
    }

    #[test]
    fn run_tags_instances_and_volumes_from_their_specifications() {
        let mut h = world();
        let mut r = run(AMI);
        let spec = |t: &str, k: &str| pb::TagSpecification {
            resource_type: t.into(),
            tags: vec![pb::Tag {
                key: k.into(),
                value: "v".into(),
            }],
        };
        r.tag_specifications = vec![spec("instance", "Name"), spec("volume", "Disk")];
        let res = launch(&mut h, OWNER, r);
        let i = &res.instances[0];
        assert_eq!(
            i.tags,
            vec![pb::Tag {
                key: "Name".into(),
                value: "v".into()
            }]
        );
        for v in volumes_of(&h, &i.instance_id) {
            assert_eq!(v.tags.get("Disk").map(String::as_str), Some("v"));
            assert!(!v.tags.contains_key("Name"));
        }
    }

    #[test]
    fn run_accepts_known_instance_types_and_zones() {
        let mut h = world();
        for t in [
            "m5.2xlarge",
            "t3.nano",
            "c7g.metal",
            "m7i-flex.large",
            "x2idn.metal-32xl",
        ] {
            let mut r = run(AMI);
            r.instance_type = t.into();
            r.placement = Some(pb::Placement {
                availability_zone: "us-east-1c".into(),
            });
            let res = launch(&mut h, OWNER, r);
            assert_eq!(res.instances[0].instance_type, t);
            assert_eq!(
                res.instances[0]
                    .placement
                    .as_ref()
                    .unwrap()
                    .availability_zone,
                "us-east-1c"
            );
        }
        let iid = h.state.instances.keys().next().unwrap().clone();
        assert!(volumes_of(&h, &iid)
            .iter()
            .all(|v| v.availability_zone == "us-east-1c"));
    }

    // ---------------------------------------------------------------- RunInstances: checks

    #[test]
    fn run_requires_image_min_and_max_count() {
        let mut h = world();
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(run("")),
            ErrorCode::MissingParameter,
        );
        assert_eq!(e.message, "The request must contain the parameter ImageId");
        let mut r = run(AMI);
        r.min_count = 0;
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::MissingParameter,
        );
        let mut r = run(AMI);
        r.max_count = 0;
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::MissingParameter,
        );
        assert!(e.message.ends_with("MaxCount"));
    }

    #[test]
    fn run_rejects_a_malformed_image_id() {
        let mut h = world();
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(run("ami-xyz")),
            ErrorCode::InvalidAmiIdMalformed,
        );
        assert_eq!(e.message, "Invalid id: \"ami-xyz\" (expecting \"ami-...\")");
    }

    #[test]
    fn run_rejects_bad_counts() {
        let mut h = world();
        let mut r = run(AMI);
        r.min_count = -1;
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidParameterValue,
        );
        let mut r = run(AMI);
        r.min_count = 3;
        r.max_count = 2;
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn run_rejects_unknown_instance_types() {
        let mut h = world();
        for t in [
            "m5",
            "foo.large",
            "m5.huge",
            "m5.0xlarge",
            "M5.large",
            "m5.large.x",
            "t2.-1xlarge",
        ] {
            let mut r = run(AMI);
            r.instance_type = t.into();
            let e = fails(
                &mut h,
                OWNER,
                Command::RunInstances(r),
                ErrorCode::InvalidParameterValue,
            );
            assert_eq!(e.message, format!("Invalid value '{t}' for InstanceType."));
        }
    }

    #[test]
    fn run_rejects_a_zone_outside_the_region_with_invalid_zone_not_found_unconfirmed() {
        let mut h = world();
        for z in ["us-east-1z", "eu-west-1a", "us-east-1", "us-east-1ab"] {
            let mut r = run(AMI);
            r.placement = Some(pb::Placement {
                availability_zone: z.into(),
            });
            fails(
                &mut h,
                OWNER,
                Command::RunInstances(r),
                ErrorCode::InvalidZoneNotFound,
            );
        }
    }

    #[test]
    fn run_rejects_a_client_token_over_64_ascii_characters() {
        let mut h = world();
        let mut r = run(AMI);
        r.client_token = "x".repeat(65);
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidParameterValue,
        );
        let mut r = run(AMI);
        r.client_token = "tökén".into();
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidParameterValue,
        );
        let mut r = run(AMI);
        r.client_token = "x".repeat(64);
        launch(&mut h, OWNER, r);
    }

    #[test]
    fn run_checks_mapping_syntax_and_tag_specification_types() {
        let mut h = world();
        let mut r = run(AMI);
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/sdd".into(),
            virtual_name: "ephemeral99".into(),
            ..Default::default()
        }];
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        let mut r = run(AMI);
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "image".into(),
            tags: vec![],
        }];
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn run_dry_run_answers_dry_run_operation_after_syntax_and_writes_nothing() {
        let mut h = world();
        let mut r = run(AMI);
        r.dry_run = true;
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(r.clone()),
            ErrorCode::DryRunOperation,
        );
        assert_eq!(
            e.message,
            "Request would have succeeded, but DryRun flag is set."
        );
        r.image_id = "ami-bad".into();
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidAmiIdMalformed,
        );
        // [sim] DryRun comes before existence (§4.8), so an unknown image still answers DryRun.
        let mut r = run("ami-12345678");
        r.dry_run = true;
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::DryRunOperation,
        );
    }

    #[test]
    fn run_needs_an_image_the_caller_may_launch() {
        let mut h = world();
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(run("ami-12345678")),
            ErrorCode::InvalidAmiIdNotFound,
        );
        assert_eq!(e.message, "The image id '[ami-12345678]' does not exist");
        // Another account's private image is not found.
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI_OTHER)),
            ErrorCode::InvalidAmiIdNotFound,
        );
    }

    #[test]
    fn run_launches_images_shared_with_the_caller_or_public_without_their_snapshots() {
        // No event grants launch permissions yet: set them on the state directly.
        let mut h = world();
        let mut img = (*h.state.images[AMI_OTHER]).clone();
        img.launch_permissions.insert(LP::User(OWNER.into()));
        h.state
            .images
            .insert(AMI_OTHER.into(), std::sync::Arc::new(img.clone()));
        let res = launch(&mut h, OWNER, run(AMI_OTHER));
        let v = volume_at(&h, &res.instances[0].instance_id, "/dev/xvda");
        assert_eq!(
            (v.owner_id.as_str(), v.snapshot_id.as_str()),
            (OWNER, SNAP_OTHER)
        );
        img.launch_permissions = [LP::All].into_iter().collect();
        h.state
            .images
            .insert(AMI_OTHER.into(), std::sync::Arc::new(img));
        launch(&mut h, OWNER, run(AMI_OTHER));
    }

    #[test]
    fn run_refuses_images_not_available_with_invalid_ami_id_unavailable_unconfirmed() {
        let mut h = world();
        let pending = "ami-000000000000000e1";
        let failed = "ami-000000000000000e2";
        let dereg = "ami-000000000000000e3";
        h.given([Payload::ImageRegistered(registered(
            pending,
            OWNER,
            "ebs",
            vec![ebs("/dev/xvda", SNAP_ROOT, 8, "gp3", true)],
        ))]);
        h.given(image(registered(
            failed,
            OWNER,
            "ebs",
            vec![ebs("/dev/xvda", SNAP_ROOT, 8, "gp3", true)],
        )));
        h.given([Payload::ImageFailed(pb::ImageFailed {
            image_id: failed.into(),
            ..Default::default()
        })]);
        h.given(image(registered(
            dereg,
            OWNER,
            "ebs",
            vec![ebs("/dev/xvda", SNAP_ROOT, 8, "gp3", true)],
        )));
        h.given([Payload::ImageDeregistered(pb::ImageDeregistered {
            image_id: dereg.into(),
            forget_at_ms: T0 + 3_600_000,
        })]);
        for id in [pending, failed, dereg] {
            fails(
                &mut h,
                OWNER,
                Command::RunInstances(run(id)),
                ErrorCode::InvalidAmiIdUnavailable,
            );
        }
    }

    #[test]
    fn run_refuses_disabled_images_unconfirmed_code() {
        let mut h = world();
        let mut img = (*h.state.images[AMI]).clone();
        img.state = IS::Disabled;
        h.state.images.insert(AMI.into(), std::sync::Arc::new(img));
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI)),
            ErrorCode::InvalidAmiIdUnavailable,
        );
    }

    #[test]
    fn run_instance_store_ami_only_on_c3_d2_g2_i2_m3_r3_else_invalid_parameter_combination_unconfirmed(
    ) {
        let mut h = world();
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI_S3)),
            ErrorCode::InvalidParameterCombination,
        );
        for t in [
            "c3.large",
            "d2.xlarge",
            "g2.2xlarge",
            "i2.xlarge",
            "m3.medium",
            "r3.large",
        ] {
            let mut r = run(AMI_S3);
            r.instance_type = t.into();
            let res = launch(&mut h, OWNER, r);
            let i = &res.instances[0];
            assert_eq!(i.root_device_type, "instance-store");
            assert!(i.block_device_mappings.is_empty());
            assert_eq!(h.state.instances[&i.instance_id].instance_store.len(), 1);
        }
    }

    #[test]
    fn run_mappings_may_grow_retype_keep_drop_and_add_volumes() {
        let mut h = world();
        let mut r = run(AMI);
        r.block_device_mappings = vec![
            bdm(
                "/dev/xvda",
                pb::EbsBlockDevice {
                    volume_size: Some(30),
                    volume_type: "gp2".into(),
                    ..Default::default()
                },
            ),
            bdm(
                "/dev/sdb",
                pb::EbsBlockDevice {
                    delete_on_termination: Some(true),
                    ..Default::default()
                },
            ),
            bdm(
                "/dev/sdd",
                pb::EbsBlockDevice {
                    volume_size: Some(5),
                    ..Default::default()
                },
            ),
            pb::BlockDeviceMapping {
                device_name: "/dev/sdc".into(),
                no_device: Some(String::new()),
                ..Default::default()
            },
            pb::BlockDeviceMapping {
                device_name: "/dev/sde".into(),
                virtual_name: "ephemeral1".into(),
                ..Default::default()
            },
        ];
        let res = launch(&mut h, OWNER, r);
        let iid = &res.instances[0].instance_id;
        let root = volume_at(&h, iid, "/dev/xvda");
        // gp3's IOPS/throughput do not follow a change to gp2.
        assert_eq!(
            (
                root.size,
                root.volume_type.as_str(),
                root.iops,
                root.throughput
            ),
            (30, "gp2", 100, 0)
        );
        assert!(
            volume_at(&h, iid, "/dev/sdb")
                .attachment
                .as_ref()
                .unwrap()
                .delete_on_termination
        );
        let added = volume_at(&h, iid, "/dev/sdd");
        assert_eq!(
            (
                added.size,
                added.volume_type.as_str(),
                added.snapshot_id.as_str()
            ),
            (5, "gp3", "")
        );
        assert_eq!(added.written_bytes, 5 * GIB);
        let store: Vec<&str> = h.state.instances[iid]
            .instance_store
            .iter()
            .map(|m| m.virtual_name.as_str())
            .collect();
        assert_eq!(store, vec!["ephemeral1"], "ephemeral0 dropped by NoDevice");
        // Without a mapping for it a device drops out.
        let mut r = run(AMI);
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/sdb".into(),
            no_device: Some(String::new()),
            ..Default::default()
        }];
        let res = launch(&mut h, OWNER, r);
        assert_eq!(
            h.state.instances[&res.instances[0].instance_id]
                .volumes
                .len(),
            1
        );
        h.assert_replay_equals_live();
    }

    #[test]
    fn run_new_ebs_device_needs_a_snapshot_or_a_size_but_an_image_device_may_be_overridden_bare() {
        let mut h = world();
        let mut r = run(AMI);
        r.block_device_mappings = vec![bdm(
            "/dev/sdf",
            pb::EbsBlockDevice {
                delete_on_termination: Some(false),
                ..Default::default()
            },
        )];
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        let mut r = run(AMI);
        r.block_device_mappings = vec![bdm(
            "/dev/xvda",
            pb::EbsBlockDevice {
                delete_on_termination: Some(false),
                ..Default::default()
            },
        )];
        let res = launch(&mut h, OWNER, r);
        let root = volume_at(&h, &res.instances[0].instance_id, "/dev/xvda");
        assert_eq!(root.size, 8);
        assert!(!root.attachment.as_ref().unwrap().delete_on_termination);
    }

    #[test]
    fn run_mapping_smaller_than_the_snapshot_is_invalid_block_device_mapping() {
        let mut h = world();
        let mut r = run(AMI);
        r.block_device_mappings = vec![bdm(
            "/dev/xvda",
            pb::EbsBlockDevice {
                volume_size: Some(4),
                ..Default::default()
            },
        )];
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        assert_eq!(
            e.message,
            format!(
                "Volume of size 4GB is smaller than snapshot '{SNAP_ROOT}', expect size >= 8GB"
            )
        );
    }

    #[test]
    fn run_cannot_suppress_the_root_device_invalid_block_device_mapping_unconfirmed() {
        let mut h = world();
        let mut r = run(AMI);
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            no_device: Some(String::new()),
            ..Default::default()
        }];
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
    }

    #[test]
    fn run_added_volume_needs_a_snapshot_the_caller_may_use() {
        let mut h = world();
        let mut r = run(AMI);
        r.block_device_mappings = vec![bdm(
            "/dev/sdf",
            pb::EbsBlockDevice {
                snapshot_id: SNAP_OTHER.into(),
                ..Default::default()
            },
        )];
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(r.clone()),
            ErrorCode::InvalidSnapshotNotFound,
        );
        assert_eq!(
            e.message,
            format!("The snapshot '{SNAP_OTHER}' does not exist.")
        );
        r.block_device_mappings[0].ebs.as_mut().unwrap().snapshot_id = "snap-12345678".into();
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r.clone()),
            ErrorCode::InvalidSnapshotNotFound,
        );
        r.block_device_mappings[0].ebs.as_mut().unwrap().snapshot_id = SNAP_DATA.into();
        let res = launch(&mut h, OWNER, r);
        assert_eq!(
            volume_at(&h, &res.instances[0].instance_id, "/dev/sdf").size,
            20
        );
    }

    #[test]
    fn run_with_a_deleted_image_snapshot_fails_synchronously_invalid_snapshot_not_found_unconfirmed(
    ) {
        let mut h = world();
        h.given([Payload::SnapshotDeleted(pb::SnapshotDeleted {
            snapshot_id: SNAP_DATA.into(),
        })]);
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI)),
            ErrorCode::InvalidSnapshotNotFound,
        );
    }

    #[test]
    fn run_volumes_of_an_encrypted_snapshot_keep_its_key_and_data_key() {
        let mut h = world();
        let res = launch(&mut h, OWNER, run(AMI_ENC));
        let v = volume_at(&h, &res.instances[0].instance_id, "/dev/xvda");
        assert!(v.encrypted);
        assert_eq!(
            (v.kms_key_id.as_str(), v.data_encryption_key_id.as_str()),
            (KEY, DEK)
        );
        // Encrypted=false cannot decrypt: ignored.
        let mut r = run(AMI_ENC);
        r.block_device_mappings = vec![bdm(
            "/dev/xvda",
            pb::EbsBlockDevice {
                encrypted: Some(false),
                ..Default::default()
            },
        )];
        let res = launch(&mut h, OWNER, r);
        assert!(volume_at(&h, &res.instances[0].instance_id, "/dev/xvda").encrypted);
    }

    #[test]
    fn run_may_re_key_or_encrypt_volumes_with_a_new_data_key() {
        let mut h = world();
        let uuid = "33333333-3333-4333-8333-333333333333";
        h.given([crate::testkit::kms_key("us-east-1", OWNER, uuid, &[]).0]);
        let mut r = run(AMI_ENC);
        r.block_device_mappings = vec![bdm(
            "/dev/xvda",
            pb::EbsBlockDevice {
                encrypted: Some(true),
                kms_key_id: uuid.into(),
                ..Default::default()
            },
        )];
        let res = launch(&mut h, OWNER, r);
        let v = volume_at(&h, &res.instances[0].instance_id, "/dev/xvda");
        assert_eq!(
            v.kms_key_id,
            format!("arn:aws:kms:us-east-1:{OWNER}:key/{uuid}")
        );
        assert!(!v.data_encryption_key_id.is_empty() && v.data_encryption_key_id != DEK);
        // An unencrypted snapshot encrypted at launch, no key named: the AWS managed key.
        let mut r = run(AMI);
        r.block_device_mappings = vec![bdm(
            "/dev/xvda",
            pb::EbsBlockDevice {
                encrypted: Some(true),
                ..Default::default()
            },
        )];
        let res = launch(&mut h, OWNER, r);
        let iid = &res.instances[0].instance_id;
        let v = volume_at(&h, iid, "/dev/xvda");
        assert!(v.encrypted);
        assert_eq!(
            v.kms_key_id,
            crate::kms::aws_managed_key_arn("us-east-1", OWNER)
        );
        assert_eq!(v.data_encryption_key_id.len(), 36);
        assert!(!volume_at(&h, iid, "/dev/sdb").encrypted);
        // KmsKeyId needs Encrypted.
        let mut r = run(AMI);
        r.block_device_mappings = vec![bdm(
            "/dev/xvda",
            pb::EbsBlockDevice {
                kms_key_id: uuid.into(),
                ..Default::default()
            },
        )];
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(r),
            ErrorCode::InvalidParameterDependency,
        );
    }

    #[test]
    fn run_stops_at_the_instance_quota_launching_as_many_as_fit_above_min_count_sim() {
        let mut h = world();
        h.config.max_instances = 2;
        let mut r = run(AMI);
        r.max_count = 5;
        assert_eq!(launch(&mut h, OWNER, r).instances.len(), 2);
        let e = fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI)),
            ErrorCode::InstanceLimitExceeded,
        );
        assert!(e.message.contains("instance limit of 2"), "{e}");
        // Another account has its own quota.
        launch(&mut h, OTHER, run(AMI_OTHER));
        // Terminated instances do not count; shutting-down ones do.
        let id = h
            .state
            .instances
            .values()
            .find(|i| i.owner_id == OWNER)
            .unwrap()
            .instance_id
            .clone();
        h.when(OWNER, terminate(&[&id])).unwrap();
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI)),
            ErrorCode::InstanceLimitExceeded,
        );
        h.advance(10_000);
        launch(&mut h, OWNER, run(AMI));
    }

    #[test]
    fn run_stops_at_the_volume_quota() {
        let mut h = world();
        h.config.max_volumes = 5;
        let mut r = run(AMI);
        r.max_count = 5;
        // Two volumes each: two instances fit.
        assert_eq!(launch(&mut h, OWNER, r).instances.len(), 2);
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(run(AMI)),
            ErrorCode::VolumeLimitExceeded,
        );
        // An instance-store AMI needs no volumes.
        let mut r = run(AMI_S3);
        r.instance_type = "m3.medium".into();
        launch(&mut h, OWNER, r);
    }

    // ---------------------------------------------------------------- RunInstances: ClientToken

    #[test]
    fn run_client_token_same_parameters_returns_the_first_reservation_without_events() {
        let mut h = world();
        let mut r = run(AMI);
        r.client_token = "tok-1".into();
        let first = launch(&mut h, OWNER, r.clone());
        let before = h.log.len();
        let d = h.when(OWNER, Command::RunInstances(r.clone())).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(h.log.len(), before);
        assert_eq!(d.reply, Reply::RunInstances(first.clone()));
        // DryRun is not a parameter of the fingerprint.
        let mut dry = r.clone();
        dry.dry_run = true;
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(dry),
            ErrorCode::DryRunOperation,
        );
        // Different parameters: mismatch.
        let mut other = r.clone();
        other.instance_type = "t3.micro".into();
        fails(
            &mut h,
            OWNER,
            Command::RunInstances(other),
            ErrorCode::IdempotentParameterMismatch,
        );
        // Tokens are per account.
        let mut theirs = run(AMI_OTHER);
        theirs.client_token = "tok-1".into();
        assert_ne!(
            launch(&mut h, OTHER, theirs).reservation_id,
            first.reservation_id
        );
        // Still the same reservation once the instance has moved on.
        h.advance(10_000);
        let Reply::RunInstances(again) = h.when(OWNER, Command::RunInstances(r)).unwrap().reply
        else {
            panic!()
        };
        assert_eq!(again.reservation_id, first.reservation_id);
        assert_eq!(again.instances[0].state.as_ref().unwrap().name, "running");
        assert_eq!(again.instances[0].client_token, "tok-1");
        h.assert_replay_equals_live();
    }

    // ---------------------------------------------------------------- Lifecycle

    #[test]
    fn lifecycle_pending_running_stopping_stopped_pending_running_shutting_down_terminated() {
        let mut h = world();
        let iid = launch_one(&mut h, AMI);
        let state = |h: &Harness| h.state.instances[&iid].state;
        assert_eq!(state(&h), St::Pending);
        h.advance(9_999);
        assert_eq!(state(&h), St::Pending);
        h.advance(1);
        assert_eq!(state(&h), St::Running);

        let d = h.when(OWNER, stop(&[&iid])).unwrap();
        assert_eq!(
            d.events,
            vec![Payload::InstanceStateChanged(pb::InstanceStateChanged {
                instance_id: iid.clone(),
                state: "stopping".into(),
                next_state: "stopped".into(),
                next_at_ms: T0 + 20_000,
                state_transition_reason: "User initiated (2024-05-01 00:00:10 GMT)".into(),
                state_reason_code: "Client.UserInitiatedShutdown".into(),
                state_reason_message: "Client.UserInitiatedShutdown: User initiated shutdown"
                    .into(),
                launch_time_ms: 0,
            })]
        );
        assert_eq!(changes(d), vec![(iid.clone(), 16, 64)]);
        h.advance(10_000);
        assert_eq!(state(&h), St::Stopped);
        let shown = render_instance(
            &h.state,
            &h.state.instances[&iid],
            &ReadCtx::new("us-east-1", OWNER, h.now_ms),
        );
        assert_eq!(
            shown.state_transition_reason,
            "User initiated (2024-05-01 00:00:10 GMT)"
        );
        assert_eq!(
            shown.state_reason.map(|r| r.code).as_deref(),
            Some("Client.UserInitiatedShutdown")
        );
        // EBS volumes stay attached while stopped.
        assert_eq!(volumes_of(&h, &iid).len(), 2);

        let d = h.when(OWNER, start(&[&iid])).unwrap();
        assert_eq!(changes(d), vec![(iid.clone(), 80, 0)]);
        assert_eq!(state(&h), St::Pending);
        assert_eq!(h.state.instances[&iid].state_reason, None);
        h.advance(10_000);
        assert_eq!(state(&h), St::Running);

        let d = h.when(OWNER, terminate(&[&iid])).unwrap();
        assert_eq!(changes(d), vec![(iid.clone(), 16, 32)]);
        assert_eq!(state(&h), St::ShuttingDown);
        h.advance(10_000);
        assert_eq!(state(&h), St::Terminated);
        assert!(h.state.timers.is_empty(), "{:?}", h.state.timers);
        h.assert_replay_equals_live();
    }

    #[test]
    fn termination_deletes_delete_on_termination_volumes_and_detaches_the_others() {
        let mut h = world();
        let iid = launch_one(&mut h, AMI);
        h.advance(10_000);
        let root = h.state.instances[&iid].volumes["/dev/xvda"].clone();
        let data = h.state.instances[&iid].volumes["/dev/sdb"].clone();
        h.when(OWNER, terminate(&[&iid])).unwrap();
        // Still attached while shutting down.
        assert_eq!(h.state.volumes[&root].state, VolumeState::InUse);
        h.advance(10_000);
        assert!(!h.state.volumes.contains_key(&root));
        let d = &h.state.volumes[&data];
        assert_eq!(d.state, VolumeState::Available);
        assert!(d.attachment.is_none());
        assert!(h.state.instances[&iid].volumes.is_empty());
        h.assert_replay_equals_live();
    }

    #[test]
    fn terminating_a_pending_instance_before_its_volumes_exist_still_cleans_up() {
        let mut h = world();
        let iid = launch_one(&mut h, AMI);
        h.when(OWNER, terminate(&[&iid])).unwrap();
        h.advance(60_000);
        assert_eq!(h.state.instances[&iid].state, St::Terminated);
        assert_eq!(h.state.volumes.len(), 1);
        assert!(h
            .state
            .volumes
            .values()
            .all(|v| v.state == VolumeState::Available));
        assert!(h.state.timers.is_empty());
        h.assert_replay_equals_live();
    }

    // ---------------------------------------------------------------- Stop / Start / Terminate checks

    #[test]
    fn state_changes_check_ids_dry_run_and_ownership() {
        let mut h = world();
        let mine = launch_one(&mut h, AMI);
        let theirs = launch(&mut h, OTHER, run(AMI_OTHER)).instances[0]
            .instance_id
            .clone();
        for cmd in [stop as fn(&[&str]) -> Command, start, terminate] {
            let e = fails(&mut h, OWNER, cmd(&[]), ErrorCode::MissingParameter);
            assert_eq!(
                e.message,
                "The request must contain the parameter InstanceId"
            );
            fails(
                &mut h,
                OWNER,
                cmd(&[&mine, "i-xyz"]),
                ErrorCode::InvalidInstanceIdMalformed,
            );
            let e = fails(
                &mut h,
                OWNER,
                cmd(&[&mine, "i-12345678", &theirs]),
                ErrorCode::InvalidInstanceIdNotFound,
            );
            assert_eq!(
                e.message,
                format!("The instance ID 'i-12345678, {theirs}' does not exist")
            );
        }
        let mut dry = pb::TerminateInstancesRequest {
            instance_ids: vec![mine.clone()],
            dry_run: true,
        };
        fails(
            &mut h,
            OWNER,
            Command::TerminateInstances(dry.clone()),
            ErrorCode::DryRunOperation,
        );
        dry.instance_ids = vec!["i-bad".into()];
        fails(
            &mut h,
            OWNER,
            Command::TerminateInstances(dry),
            ErrorCode::InvalidInstanceIdMalformed,
        );
        fails(
            &mut h,
            OWNER,
            Command::StopInstances(pb::StopInstancesRequest {
                instance_ids: vec![mine.clone()],
                force: false,
                dry_run: true,
            }),
            ErrorCode::DryRunOperation,
        );
        fails(
            &mut h,
            OWNER,
            Command::StartInstances(pb::StartInstancesRequest {
                instance_ids: vec![mine.clone()],
                dry_run: true,
            }),
            ErrorCode::DryRunOperation,
        );
    }

    #[test]
    fn stop_rejects_instance_store_roots_with_unsupported_operation() {
        let mut h = world();
        let mut r = run(AMI_S3);
        r.instance_type = "m3.medium".into();
        let iid = launch(&mut h, OWNER, r).instances[0].instance_id.clone();
        h.advance(10_000);
        let e = fails(
            &mut h,
            OWNER,
            stop(&[&iid]),
            ErrorCode::UnsupportedOperation,
        );
        assert_eq!(e.message, format!("The instance '{iid}' does not have an 'ebs' root device type and cannot be stopped."));
        // Running or terminated only: terminate works.
        h.when(OWNER, terminate(&[&iid])).unwrap();
    }

    #[test]
    fn stop_checks_the_state_of_every_instance_before_changing_any() {
        let mut h = world();
        let pending = launch_one(&mut h, AMI);
        let e = fails(
            &mut h,
            OWNER,
            stop(&[&pending]),
            ErrorCode::IncorrectInstanceState,
        );
        assert_eq!(
            e.message,
            format!("The instance '{pending}' is not in a state from which it can be stopped.")
        );
        h.advance(10_000);
        let running = launch_one(&mut h, AMI);
        h.advance(10_000);
        let gone = launch_one(&mut h, AMI);
        h.when(OWNER, terminate(&[&gone])).unwrap();
        // shutting-down, then terminated: both refused; the running one is not stopped either.
        fails(
            &mut h,
            OWNER,
            stop(&[&running, &gone]),
            ErrorCode::IncorrectInstanceState,
        );
        h.advance(10_000);
        fails(
            &mut h,
            OWNER,
            stop(&[&running, &gone]),
            ErrorCode::IncorrectInstanceState,
        );
        assert_eq!(h.state.instances[&running].state, St::Running);
    }

    #[test]
    fn stop_of_stopping_or_stopped_instances_changes_nothing_and_reports_them() {
        let mut h = world();
        let a = launch_one(&mut h, AMI);
        let b = launch_one(&mut h, AMI);
        h.advance(10_000);
        h.when(OWNER, stop(&[&a, &b])).unwrap();
        let d = h.when(OWNER, stop(&[&a, &a])).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(
            changes(d),
            vec![(a.clone(), 64, 64)],
            "duplicates reported once"
        );
        h.advance(10_000);
        let d = h.when(OWNER, stop(&[&a, &b])).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(changes(d), vec![(a.clone(), 80, 80), (b.clone(), 80, 80)]);
        h.assert_replay_equals_live();
    }

    #[test]
    fn a_start_sets_a_new_launch_time_and_clears_the_stop_reason() {
        let mut h = world();
        let iid = launch_one(&mut h, AMI);
        h.advance(10_000);
        let first = describe(&h, OWNER, pb::DescribeInstancesRequest::default()).unwrap();
        let launched = first.reservations[0].instances[0].launch_time.clone();
        h.when(OWNER, stop(&[&iid])).unwrap();
        h.advance(10_000);
        let stopped = describe(&h, OWNER, pb::DescribeInstancesRequest::default()).unwrap();
        assert!(stopped.reservations[0].instances[0]
            .state_transition_reason
            .starts_with("User initiated"));
        h.advance(60_000);
        let started_at = h.now_ms;
        h.when(OWNER, start(&[&iid])).unwrap();
        h.advance(10_000);
        let again = describe(&h, OWNER, pb::DescribeInstancesRequest::default()).unwrap();
        let i = &again.reservations[0].instances[0];
        assert_eq!(i.state.as_ref().map(|s| s.name.as_str()), Some("running"));
        assert_ne!(i.launch_time, launched);
        assert_eq!(i.launch_time, crate::time::iso(started_at));
        assert_eq!(i.state_transition_reason, "");
        h.assert_replay_equals_live();
    }

    #[test]
    fn start_refuses_stopping_and_terminated_and_ignores_running_and_pending() {
        let mut h = world();
        let a = launch_one(&mut h, AMI);
        let d = h.when(OWNER, start(&[&a])).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(changes(d), vec![(a.clone(), 0, 0)]);
        h.advance(10_000);
        let d = h.when(OWNER, start(&[&a])).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(changes(d), vec![(a.clone(), 16, 16)]);
        h.when(OWNER, stop(&[&a])).unwrap();
        let e = fails(
            &mut h,
            OWNER,
            start(&[&a]),
            ErrorCode::IncorrectInstanceState,
        );
        assert_eq!(
            e.message,
            format!("The instance '{a}' is not in a state from which it can be started.")
        );
        h.when(OWNER, terminate(&[&a])).unwrap();
        fails(
            &mut h,
            OWNER,
            start(&[&a]),
            ErrorCode::IncorrectInstanceState,
        );
        h.advance(10_000);
        fails(
            &mut h,
            OWNER,
            start(&[&a]),
            ErrorCode::IncorrectInstanceState,
        );
    }

    #[test]
    fn terminate_of_a_terminated_instance_changes_nothing_but_reports_it() {
        let mut h = world();
        let a = launch_one(&mut h, AMI);
        let d = h.when(OWNER, terminate(&[&a])).unwrap();
        assert_eq!(changes(d), vec![(a.clone(), 0, 32)]);
        let d = h.when(OWNER, terminate(&[&a])).unwrap();
        assert!(d.events.is_empty(), "shutting-down keeps its timer");
        assert_eq!(changes(d), vec![(a.clone(), 32, 32)]);
        h.advance(10_000);
        let d = h.when(OWNER, terminate(&[&a])).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(changes(d), vec![(a.clone(), 48, 48)]);
        // Stopping and stopped instances can be terminated.
        let b = launch_one(&mut h, AMI);
        let c = launch_one(&mut h, AMI);
        h.advance(10_000);
        h.when(OWNER, stop(&[&b, &c])).unwrap();
        h.advance(10_000);
        let c2 = launch_one(&mut h, AMI);
        h.advance(10_000);
        h.when(OWNER, stop(&[&c2])).unwrap();
        let d = h.when(OWNER, terminate(&[&b, &c2])).unwrap();
        assert_eq!(changes(d), vec![(b.clone(), 80, 32), (c2.clone(), 64, 32)]);
        h.advance(10_000);
        assert_eq!(h.state.instances[&c2].state, St::Terminated);
        assert_eq!(h.state.instances[&c].state, St::Stopped);
        h.assert_replay_equals_live();
    }

    #[test]
    fn terminate_fails_images_create_image_is_still_making_from_the_instance() {
        let mut h = world();
        let iid = launch_one(&mut h, AMI);
        let other_iid = launch_one(&mut h, AMI);
        h.advance(10_000);
        let creating = "ami-000000000000000f1";
        let done = "ami-000000000000000f2";
        let elsewhere = "ami-000000000000000f3";
        let from = |id: &str, src: &str| {
            let mut r = registered(
                id,
                OWNER,
                "ebs",
                vec![ebs("/dev/xvda", SNAP_ROOT, 8, "gp3", true)],
            );
            r.origin = "create".into();
            r.source_instance_id = src.into();
            r
        };
        h.given([Payload::ImageRegistered(from(creating, &iid))]);
        h.given(image(from(done, &iid)));
        h.given([Payload::ImageRegistered(from(elsewhere, &other_iid))]);
        let d = h.when(OWNER, terminate(&[&iid])).unwrap();
        assert_eq!(d.events.len(), 2);
        assert_eq!(
            d.events[1],
            Payload::ImageFailed(pb::ImageFailed {
                image_id: creating.into(),
                state_reason_code: "Client.InstanceTerminated".into(),
                state_reason_message: "Instance terminated during image creation".into(),
            })
        );
        assert_eq!(h.state.images[creating].state, IS::Failed);
        assert_eq!(h.state.images[done].state, IS::Available);
        assert_eq!(h.state.images[elsewhere].state, IS::Pending);
        h.assert_replay_equals_live();
    }

    // ---------------------------------------------------------------- DescribeInstances

    #[test]
    fn describe_shows_only_the_callers_instances_grouped_by_reservation() {
        let mut h = world();
        let mut r = run(AMI);
        r.max_count = 2;
        let res = launch(&mut h, OWNER, r);
        let single = launch(&mut h, OWNER, run(AMI));
        launch(&mut h, OTHER, run(AMI_OTHER));
        let d = describe(&h, OWNER, Default::default()).unwrap();
        assert_eq!(d.next_token, "");
        let mut got: Vec<(String, usize)> = d
            .reservations
            .iter()
            .map(|r| (r.reservation_id.clone(), r.instances.len()))
            .collect();
        got.sort();
        let mut want = vec![
            (res.reservation_id.clone(), 2),
            (single.reservation_id.clone(), 1),
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(d.reservations.iter().all(|r| r.owner_id == OWNER));
        let theirs = describe(&h, OTHER, Default::default()).unwrap();
        assert_eq!(theirs.reservations.len(), 1);
    }

    #[test]
    fn describe_by_id_rejects_malformed_unknown_and_foreign_ids() {
        let mut h = world();
        let mine = launch_one(&mut h, AMI);
        let theirs = launch(&mut h, OTHER, run(AMI_OTHER)).instances[0]
            .instance_id
            .clone();
        let by = |ids: &[&str]| pb::DescribeInstancesRequest {
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let d = describe(&h, OWNER, by(&[&mine])).unwrap();
        assert_eq!(d.reservations[0].instances[0].instance_id, mine);
        assert_eq!(
            code(describe(&h, OWNER, by(&["i-nope"]))),
            ErrorCode::InvalidInstanceIdMalformed
        );
        let e = describe(&h, OWNER, by(&[&mine, &theirs])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInstanceIdNotFound);
        assert!(e.message.contains(&theirs));
        let mut dry = by(&[&mine]);
        dry.dry_run = true;
        assert_eq!(code(describe(&h, OWNER, dry)), ErrorCode::DryRunOperation);
        let mut both = by(&[&mine]);
        both.max_results = Some(5);
        assert_eq!(
            code(describe(&h, OWNER, both)),
            ErrorCode::InvalidParameterCombination
        );
    }

    #[test]
    fn describe_filters() {
        let mut h = world();
        let a = launch_one(&mut h, AMI);
        let mut r = run(AMI_ENC);
        r.instance_type = "t3.micro".into();
        r.placement = Some(pb::Placement {
            availability_zone: "us-east-1b".into(),
        });
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "instance".into(),
            tags: vec![pb::Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
        }];
        let res = launch(&mut h, OWNER, r);
        let b = res.instances[0].instance_id.clone();
        let mut r = run(AMI_S3);
        r.instance_type = "m3.medium".into();
        let c = launch(&mut h, OWNER, r).instances[0].instance_id.clone();
        h.advance(10_000);
        h.when(OWNER, stop(&[&a])).unwrap();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            filtered(&h, "availability-zone", "us-east-1b"),
            vec![b.clone()]
        );
        assert_eq!(filtered(&h, "image-id", AMI), vec![a.clone()]);
        assert_eq!(filtered(&h, "instance-id", &b), vec![b.clone()]);
        assert_eq!(filtered(&h, "instance-state-code", "64"), vec![a.clone()]);
        assert_eq!(
            filtered(&h, "instance-state-name", "running"),
            sorted(vec![b.clone(), c.clone()])
        );
        assert_eq!(filtered(&h, "instance-type", "t3.*"), vec![b.clone()]);
        assert_eq!(
            filtered(&h, "root-device-type", "instance-store"),
            vec![c.clone()]
        );
        assert_eq!(filtered(&h, "architecture", "x86_64").len(), 3);
        assert_eq!(filtered(&h, "tag:env", "prod"), vec![b.clone()]);
        assert_eq!(filtered(&h, "tag-key", "env"), vec![b.clone()]);
        let vol = h.state.instances[&a].volumes["/dev/sdb"].clone();
        assert_eq!(
            filtered(&h, "block-device-mapping.volume-id", &vol),
            vec![a.clone()]
        );
        assert_eq!(
            filtered(&h, "reservation-id", &res.reservation_id),
            vec![b.clone()]
        );
        let bad = pb::DescribeInstancesRequest {
            filters: vec![pb::Filter {
                name: "colour".into(),
                values: vec!["x".into()],
            }],
            ..Default::default()
        };
        let e = describe(&h, OWNER, bad).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::InvalidParameterValue,
                "The filter 'colour' is invalid"
            )
        );
    }

    #[test]
    fn describe_pages_by_instance_id_and_groups_each_page_into_reservations() {
        let mut h = world();
        for n in [3, 4, 5] {
            let mut r = run(AMI_S3);
            r.instance_type = "m3.medium".into();
            r.max_count = n;
            launch(&mut h, OWNER, r);
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let d = describe(
                &h,
                OWNER,
                pb::DescribeInstancesRequest {
                    max_results: Some(5),
                    next_token: token.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
            pages += 1;
            let ids: Vec<String> = d
                .reservations
                .iter()
                .flat_map(|r| r.instances.iter().map(|i| i.instance_id.clone()))
                .collect();
            assert!(ids.len() <= 5);
            // Reservations appear in the order of their first instance on the page.
            let firsts: Vec<&String> = d
                .reservations
                .iter()
                .map(|r| &r.instances[0].instance_id)
                .collect();
            assert!(firsts.windows(2).all(|w| w[0] < w[1]));
            let rids: BTreeSet<&String> =
                d.reservations.iter().map(|r| &r.reservation_id).collect();
            assert_eq!(
                rids.len(),
                d.reservations.len(),
                "one entry per reservation"
            );
            seen.extend(ids);
            if d.next_token.is_empty() {
                break;
            }
            token = d.next_token;
        }
        assert_eq!(pages, 3);
        let all: Vec<String> = h.state.instances.keys().cloned().collect();
        assert_eq!(sorted_clone(&seen), all);
        assert_eq!(
            code(describe(
                &h,
                OWNER,
                pb::DescribeInstancesRequest {
                    max_results: Some(4),
                    ..Default::default()
                }
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(describe(
                &h,
                OWNER,
                pb::DescribeInstancesRequest {
                    next_token: "zz".into(),
                    ..Default::default()
                }
            )),
            ErrorCode::InvalidNextToken
        );
    }

    fn sorted_clone(v: &[String]) -> Vec<String> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    #[test]
    fn terminated_instances_stay_visible_forever_sim() {
        let mut h = world();
        let a = launch_one(&mut h, AMI);
        h.when(OWNER, terminate(&[&a])).unwrap();
        h.advance(10_000);
        h.advance(365 * 24 * 3_600_000);
        assert_eq!(
            filtered(&h, "instance-state-name", "terminated"),
            vec![a.clone()]
        );
        let d = describe(
            &h,
            OWNER,
            pb::DescribeInstancesRequest {
                instance_ids: vec![a.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        let i = &d.reservations[0].instances[0];
        assert_eq!(
            i.state,
            Some(pb::InstanceState {
                code: 48,
                name: "terminated".into()
            })
        );
        assert!(i.block_device_mappings.is_empty());
        assert_eq!(
            i.state_reason.as_ref().map(|r| r.code.as_str()),
            Some("Client.UserInitiatedShutdown")
        );
    }

    #[test]
    fn render_shows_attached_volumes_with_their_attach_time() {
        let mut h = world();
        let a = launch_one(&mut h, AMI);
        h.advance(2_000);
        let d = describe(&h, OWNER, Default::default()).unwrap();
        let i = &d.reservations[0].instances[0];
        assert_eq!(i.instance_id, a);
        assert!(i
            .block_device_mappings
            .iter()
            .all(|m| m.status == "attached" && m.attach_time == "2024-05-01T00:00:00.000Z"));
        assert_eq!(i.tags, Vec::<pb::Tag>::new());
    }

    // ---------------------------------------------------------------- Property: replay = live

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Run {
                other: bool,
                image: usize,
                count: i32,
                itype: usize,
                token: Option<u8>,
                grow: bool,
            },
            Stop(bool, usize),
            Start(bool, usize),
            Terminate(bool, usize),
            Advance(u64),
            CreateVolume {
                size: i32,
                snap: Option<usize>,
            },
            DeleteVolume(usize),
            AttachVolume {
                vol: usize,
                inst: usize,
                dev: u8,
            },
            DetachVolume(usize),
            CreateSnapshot(usize),
            DeleteSnapshot(usize),
            RegisterImage {
                snap: usize,
                name: u8,
            },
            CreateImage {
                inst: usize,
                name: u8,
                no_reboot: bool,
            },
            DeregisterImage(usize),
            CreateTags(usize),
            DeleteTags(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let i = 0usize..16;
            prop_oneof![
                4 => (any::<bool>(), 0usize..6, 1i32..4, 0usize..4, proptest::option::of(0u8..3), any::<bool>())
                    .prop_map(|(other, image, count, itype, token, grow)| Op::Run { other, image, count, itype, token, grow }),
                2 => (any::<bool>(), i.clone()).prop_map(|(o, n)| Op::Stop(o, n)),
                2 => (any::<bool>(), i.clone()).prop_map(|(o, n)| Op::Start(o, n)),
                2 => (any::<bool>(), i.clone()).prop_map(|(o, n)| Op::Terminate(o, n)),
                4 => prop_oneof![0u64..3_000, 3_000u64..40_000, Just(200_000u64)].prop_map(Op::Advance),
                1 => (1i32..50, proptest::option::of(i.clone())).prop_map(|(size, snap)| Op::CreateVolume { size, snap }),
                1 => i.clone().prop_map(Op::DeleteVolume),
                1 => (i.clone(), i.clone(), 0u8..4).prop_map(|(vol, inst, dev)| Op::AttachVolume { vol, inst, dev }),
                1 => i.clone().prop_map(Op::DetachVolume),
                1 => i.clone().prop_map(Op::CreateSnapshot),
                1 => i.clone().prop_map(Op::DeleteSnapshot),
                1 => (i.clone(), 0u8..3).prop_map(|(snap, name)| Op::RegisterImage { snap, name }),
                2 => (i.clone(), 0u8..3, any::<bool>()).prop_map(|(inst, name, no_reboot)| Op::CreateImage { inst, name, no_reboot }),
                1 => i.clone().prop_map(Op::DeregisterImage),
                1 => i.clone().prop_map(Op::CreateTags),
                1 => i.prop_map(Op::DeleteTags),
            ]
        }

        /// The n-th key (wrapping), or a well-formed id nobody has.
        fn pick<'a, K: AsRef<str> + 'a>(
            mut keys: impl ExactSizeIterator<Item = &'a K>,
            n: usize,
            none: &str,
        ) -> String {
            let len = keys.len();
            if len == 0 {
                return none.to_string();
            }
            keys.nth(n % len)
                .map(|k| k.as_ref().to_string())
                .unwrap_or_else(|| none.to_string())
        }

        fn command(h: &Harness, op: &Op) -> Option<(&'static str, Command)> {
            let s = &h.state;
            let who = |o: bool| if o { OTHER } else { OWNER };
            let inst = |n| pick(s.instances.keys(), n, "i-12345678");
            // Mostly the caller's own instances; every 8th pick any instance (maybe foreign).
            let own = |o: bool, n: usize| {
                let mine: Vec<&String> = s
                    .instances
                    .iter()
                    .filter(|(_, i)| i.owner_id == who(o))
                    .map(|(k, _)| k)
                    .collect();
                if n % 8 == 7 || mine.is_empty() {
                    inst(n)
                } else {
                    mine[n % mine.len()].clone()
                }
            };
            let vol = |n| pick(s.volumes.keys(), n, "vol-12345678");
            let snap = |n| pick(s.snapshots.keys(), n, "snap-12345678");
            let img = |n| pick(s.images.keys(), n, "ami-12345678");
            Some(match op {
                Op::Run {
                    other,
                    image,
                    count,
                    itype,
                    token,
                    grow,
                } => {
                    let images = if *other {
                        [AMI_OTHER, AMI_OTHER, AMI_OTHER, AMI]
                    } else {
                        [AMI, AMI_S3, AMI_ENC, AMI_OTHER]
                    };
                    let image_id = images
                        .get(*image)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| img(*image));
                    let mut r = run(&image_id);
                    r.max_count = *count;
                    r.instance_type = ["", "m3.medium", "t3.micro", "bogus"][*itype].into();
                    r.client_token = token.map(|t| format!("tok-{t}")).unwrap_or_default();
                    if *grow {
                        r.block_device_mappings = vec![bdm(
                            "/dev/xvda",
                            pb::EbsBlockDevice {
                                volume_size: Some(12),
                                ..Default::default()
                            },
                        )];
                    }
                    (who(*other), Command::RunInstances(r))
                }
                Op::Stop(o, n) => (who(*o), stop(&[&own(*o, *n)])),
                Op::Start(o, n) => (who(*o), start(&[&own(*o, *n)])),
                Op::Terminate(o, n) => (who(*o), terminate(&[&own(*o, *n)])),
                Op::Advance(_) => return None,
                Op::CreateVolume { size, snap: sn } => (
                    OWNER,
                    Command::CreateVolume(pb::CreateVolumeRequest {
                        availability_zone: "us-east-1a".into(),
                        size: sn.is_none().then_some(*size),
                        snapshot_id: sn.map(snap).unwrap_or_default(),
                        ..Default::default()
                    }),
                ),
                Op::DeleteVolume(n) => (
                    OWNER,
                    Command::DeleteVolume(pb::DeleteVolumeRequest {
                        volume_id: vol(*n),
                        dry_run: false,
                    }),
                ),
                Op::AttachVolume {
                    vol: v,
                    inst: i,
                    dev,
                } => (
                    OWNER,
                    Command::AttachVolume(pb::AttachVolumeRequest {
                        volume_id: vol(*v),
                        instance_id: own(false, *i),
                        device: format!("/dev/sd{}", ["f", "g", "h", "xvda"][*dev as usize]),
                        dry_run: false,
                    }),
                ),
                Op::DetachVolume(n) => (
                    OWNER,
                    Command::DetachVolume(pb::DetachVolumeRequest {
                        volume_id: vol(*n),
                        ..Default::default()
                    }),
                ),
                Op::CreateSnapshot(n) => (
                    OWNER,
                    Command::CreateSnapshot(pb::CreateSnapshotRequest {
                        volume_id: vol(*n),
                        ..Default::default()
                    }),
                ),
                Op::DeleteSnapshot(n) => (
                    OWNER,
                    Command::DeleteSnapshot(pb::DeleteSnapshotRequest {
                        snapshot_id: snap(*n),
                        dry_run: false,
                    }),
                ),
                Op::RegisterImage { snap: sn, name } => (
                    OWNER,
                    Command::RegisterImage(pb::RegisterImageRequest {
                        name: format!("registered-{name}"),
                        root_device_name: "/dev/xvda".into(),
                        block_device_mappings: vec![bdm(
                            "/dev/xvda",
                            pb::EbsBlockDevice {
                                snapshot_id: snap(*sn),
                                ..Default::default()
                            },
                        )],
                        architecture: "x86_64".into(),
                        virtualization_type: "hvm".into(),
                        ..Default::default()
                    }),
                ),
                Op::CreateImage {
                    inst: i,
                    name,
                    no_reboot,
                } => (
                    OWNER,
                    Command::CreateImage(pb::CreateImageRequest {
                        instance_id: own(false, *i),
                        name: format!("created-{name}"),
                        no_reboot: *no_reboot,
                        ..Default::default()
                    }),
                ),
                Op::DeregisterImage(n) => (
                    OWNER,
                    Command::DeregisterImage(pb::DeregisterImageRequest {
                        image_id: img(*n),
                        ..Default::default()
                    }),
                ),
                Op::CreateTags(n) => (
                    OWNER,
                    Command::CreateTags(pb::CreateTagsRequest {
                        resources: vec![own(false, *n), vol(*n)],
                        tags: vec![pb::Tag {
                            key: "k".into(),
                            value: format!("{n}"),
                        }],
                        dry_run: false,
                    }),
                ),
                Op::DeleteTags(n) => (
                    OWNER,
                    Command::DeleteTags(pb::DeleteTagsRequest {
                        resources: vec![own(false, *n)],
                        tags: vec![],
                        dry_run: false,
                    }),
                ),
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Random commands of every family (those not finished yet just fail), interleaved
            /// with time: an error writes nothing, reads never fail, and a replay of the log
            /// equals the live state.
            #[test]
            fn replay_of_random_command_sequences_equals_live_state(ops in proptest::collection::vec(op(), 1..60)) {
                let mut h = world();
                for op in &ops {
                    match command(&h, op) {
                        None => {
                            if let Op::Advance(ms) = op {
                                h.advance(*ms);
                            }
                        }
                        Some((who, cmd)) => {
                            let before = h.log.len();
                            let digest = h.state.digest();
                            if h.when(who, cmd).is_err() {
                                prop_assert_eq!(h.log.len(), before);
                                prop_assert_eq!(h.state.digest(), digest);
                            }
                        }
                    }
                    for who in [OWNER, OTHER] {
                        prop_assert!(describe(&h, who, Default::default()).is_ok());
                    }
                    let live = h.state.instances.values()
                        .filter(|i| i.owner_id == OWNER && i.state != St::Terminated)
                        .count();
                    prop_assert!(live <= h.config.max_instances);
                }
                h.advance(24 * 3_600_000);
                // Every timer has fired; every instance ended in a resting state.
                prop_assert!(h.state.instances.values().all(|i| i.next.is_none()));
                prop_assert!(h.state.instances.values()
                    .filter(|i| i.state == St::Terminated)
                    .all(|i| i.volumes.is_empty()));
                h.assert_replay_equals_live();
            }
        }
    }
}
