//! EBS volumes (EC2_SEMANTICS.md §2.4, §4, §10.2): CreateVolume, DeleteVolume, AttachVolume,
//! DetachVolume and DescribeVolumes.
//!
//! A volume is `creating` for `config.volume_create_ms`, then `available` (`in-use` once
//! attached). `[sim]` Attachments take effect at once: AttachVolume answers `attaching`,
//! DetachVolume `detaching`, and DescribeVolumes then shows `attached` / no attachment.
//! `[sim]` Volumes count as fully written, so the first snapshot of a volume moves its whole size.

use amisim_proto::event::Payload;
use amisim_proto::{
    AttachVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest, DeleteVolumeResponse,
    DescribeVolumesRequest, DescribeVolumesResponse, DetachVolumeRequest, Volume, VolumeAttached,
    VolumeAttachment, VolumeCreated, VolumeDeleted, VolumeDetached,
};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::filter::{self, bool_str};
use crate::ids;
use crate::mapping;
use crate::snapshot;
use crate::state::{self, InstanceState, SnapshotState, State, VolumeState};
use crate::tags;
use crate::time::iso;
use crate::timing::gib;
use crate::{Ctx, Decision, ReadCtx, Reply};

/// CreateVolume's default volume type.
pub const DEFAULT_VOLUME_TYPE: &str = "gp2";

/// Longest accepted ClientToken (EC2 guide: 64 ASCII characters).
pub const MAX_CLIENT_TOKEN: usize = 64;

/// The filters DescribeVolumes supports (besides `tag:<key>` and `tag-key`).
pub const VOLUME_FILTERS: &[&str] = &[
    "attachment.instance-id",
    "attachment.device",
    "attachment.status",
    "attachment.delete-on-termination",
    "availability-zone",
    "create-time",
    "encrypted",
    "size",
    "snapshot-id",
    "status",
    "volume-id",
    "volume-type",
];

/// Checks that `az` is one of the simulated zones of `region` (`<region>a|b|c`):
/// `InvalidZone.NotFound` `The zone '<az>' does not exist.`
pub fn check_zone(region: &str, az: &str) -> Ec2Result<()> {
    match az.strip_prefix(region) {
        Some("a" | "b" | "c") if !region.is_empty() => Ok(()),
        _ => Err(Ec2Error::new(
            ErrorCode::InvalidZoneNotFound,
            format!("The zone '{az}' does not exist."),
        )),
    }
}

/// Checks a ClientToken: at most 64 ASCII characters (`InvalidParameterValue`).
pub fn check_client_token(token: &str) -> Ec2Result<()> {
    if token.len() > MAX_CLIENT_TOKEN || !token.is_ascii() {
        return Err(Ec2Error::invalid_value(
            "clientToken",
            token,
            "It must be at most 64 ASCII characters.",
        ));
    }
    Ok(())
}

/// A KMS key reference in ARN form (EC2_SEMANTICS.md §1): an ARN stays as given,
/// `alias/<name>` becomes the alias ARN, anything else is taken as a key id. Nothing is looked
/// up: `crate::kms` resolves the reference when the key is used.
pub fn kms_key_arn(region: &str, account: &str, key: &str) -> String {
    if key.starts_with("arn:") {
        key.to_string()
    } else if key.starts_with("alias/") {
        format!("arn:aws:kms:{region}:{account}:{key}")
    } else {
        format!("arn:aws:kms:{region}:{account}:key/{key}")
    }
}

/// The key ARN of the account's AWS managed EBS key in `region` (`alias/aws/ebs`; see
/// `crate::kms`). The account's default key may be another (`crate::encryption::default_key`).
pub fn default_ebs_key(region: &str, account: &str) -> String {
    crate::kms::aws_managed_key_arn(region, account)
}

/// The smallest size of a volume type (for syntax checks before a snapshot's size is known).
fn type_min(volume_type: &str) -> i32 {
    mapping::VOLUME_TYPES
        .iter()
        .find(|(t, _, _)| *t == volume_type)
        .map_or(1, |(_, min, _)| *min)
}

/// A volume the caller owns, else `InvalidVolume.NotFound` (invisible volumes look absent).
fn owned<'s>(state: &'s State, account: &str, id: &str) -> Ec2Result<&'s state::Volume> {
    state
        .volumes
        .get(id)
        .filter(|v| v.owner_id == account)
        .ok_or_else(|| Ec2Error::volume_not_found(id))
}

/// An instance the caller owns, else `InvalidInstanceID.NotFound`.
fn owned_instance<'s>(state: &'s State, account: &str, id: &str) -> Ec2Result<&'s state::Instance> {
    state
        .instances
        .get(id)
        .filter(|i| i.owner_id == account)
        .ok_or_else(|| Ec2Error::instance_not_found(&[id]))
}

fn incorrect_volume_state(v: &state::Volume) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::IncorrectState,
        format!(
            "Volume '{}' is in the '{}' state.",
            v.volume_id,
            v.state.as_str()
        ),
    )
}

/// Device names compare without their `/dev/` prefix (`/dev/sdf` and `sdf` are one device).
fn same_device(a: &str, b: &str) -> bool {
    a.strip_prefix("/dev/").unwrap_or(a) == b.strip_prefix("/dev/").unwrap_or(b)
}

/// Renders a volume as DescribeVolumes shows it.
pub fn render_volume(_state: &State, v: &state::Volume, _ctx: &ReadCtx<'_>) -> Volume {
    Volume {
        volume_id: v.volume_id.clone(),
        size: v.size,
        snapshot_id: v.snapshot_id.clone(),
        availability_zone: v.availability_zone.clone(),
        state: v.state.as_str().to_string(),
        create_time: iso(v.create_time_ms),
        attachments: v
            .attachment
            .iter()
            .map(|a| VolumeAttachment {
                volume_id: v.volume_id.clone(),
                instance_id: a.instance_id.clone(),
                device: a.device.clone(),
                state: "attached".into(),
                attach_time: iso(a.attach_time_ms),
                delete_on_termination: a.delete_on_termination,
            })
            .collect(),
        volume_type: v.volume_type.clone(),
        iops: v.iops,
        throughput: v.throughput,
        encrypted: v.encrypted,
        kms_key_id: v.kms_key_id.clone(),
        // Volumes are visible to their owner only, so the tags are always the owner's.
        tags: tags::render(&v.tags),
    }
}

/// CreateVolume (EC2_SEMANTICS.md §2.4, §4.2, §4.3).
pub fn create_volume(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: CreateVolumeRequest,
) -> Ec2Result<Decision> {
    // 2. Missing parameters.
    if r.availability_zone.is_empty() {
        return Err(Ec2Error::missing("AvailabilityZone"));
    }
    // 3. Syntax.
    check_zone(ctx.region, &r.availability_zone)?;
    if !r.snapshot_id.is_empty() {
        ids::check_snapshot_id("snapshotId", &r.snapshot_id)?;
    }
    let volume_type = if r.volume_type.is_empty() {
        DEFAULT_VOLUME_TYPE
    } else {
        r.volume_type.as_str()
    };
    // Type, size range, IOPS and throughput; with a snapshot and no size, the size is checked
    // once the snapshot's is known.
    let syntax_size = r
        .size
        .or_else(|| (!r.snapshot_id.is_empty()).then(|| type_min(volume_type)));
    mapping::volume_params(
        volume_type,
        DEFAULT_VOLUME_TYPE,
        syntax_size,
        None,
        r.iops,
        r.throughput,
        ErrorCode::InvalidParameterValue,
    )?;
    check_client_token(&r.client_token)?;
    let mut spec_tags = tags::from_specifications(&r.tag_specifications, &["volume"])?;
    // 4. Combinations.
    if !r.kms_key_id.is_empty() && r.encrypted != Some(true) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterDependency,
            "The parameter KmsKeyId requires the parameter Encrypted to be set.",
        ));
    }
    // 5. DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 6. Idempotency.
    let fingerprint = {
        let mut bare = r.clone();
        bare.client_token.clear();
        bare.dry_run = false;
        crate::fingerprint(&bare)
    };
    if !r.client_token.is_empty() {
        let key = (
            ctx.account_id.to_string(),
            "CreateVolume".to_string(),
            r.client_token.clone(),
        );
        if let Some(used) = state.client_tokens.get(&key) {
            if used.fingerprint != fingerprint {
                return Err(Ec2Error::new(
                    ErrorCode::IdempotentParameterMismatch,
                    "Arguments on this idempotent request are inconsistent with arguments used \
                     in previous request(s).",
                ));
            }
            // [sim] A retry after the volume was deleted answers with its id and `deleted`.
            let reply = match state.volumes.get(&used.resource_id) {
                Some(v) => render_volume(state, v, &ctx.read()),
                None => Volume {
                    volume_id: used.resource_id.clone(),
                    state: "deleted".into(),
                    ..Default::default()
                },
            };
            return Ok(Decision::new(vec![], Reply::CreateVolume(reply)));
        }
    }
    // 7–9. The snapshot: visible, then completed.
    let snap = if r.snapshot_id.is_empty() {
        None
    } else {
        let s = state
            .snapshots
            .get(&r.snapshot_id)
            .filter(|s| snapshot::is_visible(s, ctx.account_id))
            .ok_or_else(|| Ec2Error::snapshot_not_found(&r.snapshot_id))?;
        if s.state != SnapshotState::Completed {
            // [unconfirmed] code and wording.
            return Err(Ec2Error::new(
                ErrorCode::IncorrectState,
                format!(
                    "Snapshot '{}' is in the '{}' state; only 'completed' snapshots can be \
                     restored.",
                    s.snapshot_id,
                    s.state.as_str()
                ),
            ));
        }
        Some(s)
    };
    let params = mapping::volume_params(
        volume_type,
        DEFAULT_VOLUME_TYPE,
        r.size,
        snap.map(|s| (s.snapshot_id.as_str(), s.volume_size)),
        r.iops,
        r.throughput,
        ErrorCode::InvalidParameterValue,
    )?;
    // Encryption (§4.2, crate::encryption): from an encrypted snapshot always encrypted, under
    // the key given, else the snapshot's (a shared one's: the caller's default key), else the
    // default EBS key when asked or by default (EBD). The key is checked now: this path is
    // synchronous (EC2_SEMANTICS.md §7, `CustomerKeyHasBeenRevoked`). The data key follows the
    // lineage unless the volume is re-keyed.
    let key = crate::encryption::volume_key(
        state,
        ctx.region,
        ctx.account_id,
        r.encrypted,
        &r.kms_key_id,
        snap.map(Into::into),
    )
    .map_err(crate::encryption::key_revoked)?;
    // 10. Quota.
    let owned_count = state
        .volumes
        .values()
        .filter(|v| v.owner_id == ctx.account_id)
        .count();
    if owned_count >= ctx.config.max_volumes {
        return Err(Ec2Error::new(
            ErrorCode::VolumeLimitExceeded,
            format!(
                "You have reached the maximum number of volumes ({}) for this account.",
                ctx.config.max_volumes
            ),
        ));
    }

    let encrypted = key.is_some();
    let kms_key_id = key.unwrap_or_default();
    let encrypted_snap = snap.filter(|s| s.encrypted);
    let data_encryption_key_id = match encrypted_snap {
        Some(s) if s.kms_key_id == kms_key_id => s.data_encryption_key_id.clone(),
        _ if encrypted => ctx.new_uuid(),
        _ => String::new(),
    };

    let volume_id = ctx.new_id(ids::Kind::Volume, state);
    let event = Payload::VolumeCreated(VolumeCreated {
        volume_id: volume_id.clone(),
        owner_id: ctx.account_id.to_string(),
        availability_zone: r.availability_zone.clone(),
        size: params.size,
        snapshot_id: r.snapshot_id.clone(),
        volume_type: params.volume_type,
        iops: params.iops,
        throughput: params.throughput,
        encrypted,
        kms_key_id,
        data_encryption_key_id,
        tags: state::tag_records(&spec_tags.remove("volume").unwrap_or_default()),
        create_time_ms: ctx.now_ms,
        available_at_ms: ctx.now_ms.saturating_add(ctx.config.volume_create_ms),
        written_bytes: gib(params.size),
        client_token: r.client_token.clone(),
        request_fingerprint: if r.client_token.is_empty() {
            String::new()
        } else {
            fingerprint
        },
        attach_to_instance_id: String::new(),
        attach_device: String::new(),
        delete_on_termination: false,
    });
    let events = vec![event];
    let after = crate::preview(state, &events);
    let reply = after
        .volumes
        .get(&volume_id)
        .map(|v| render_volume(&after, v, &ctx.read()))
        .ok_or_else(|| Ec2Error::internal("the new volume is missing from the preview"))?;
    Ok(Decision::new(events, Reply::CreateVolume(reply)))
}

/// DeleteVolume: only an `available` (detached, created) volume you own.
pub fn delete_volume(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: DeleteVolumeRequest,
) -> Ec2Result<Decision> {
    if r.volume_id.is_empty() {
        return Err(Ec2Error::missing("VolumeId"));
    }
    ids::check_volume_id(&r.volume_id)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let v = owned(state, ctx.account_id, &r.volume_id)?;
    if let Some(a) = &v.attachment {
        return Err(Ec2Error::new(
            ErrorCode::VolumeInUse,
            format!(
                "Volume {} is currently attached to {}",
                v.volume_id, a.instance_id
            ),
        ));
    }
    if v.state != VolumeState::Available {
        return Err(incorrect_volume_state(v));
    }
    Ok(Decision::new(
        vec![Payload::VolumeDeleted(VolumeDeleted {
            volume_id: r.volume_id.clone(),
        })],
        Reply::DeleteVolume(DeleteVolumeResponse { r#return: true }),
    ))
}

/// AttachVolume: an `available` volume to a running or stopped instance in the same zone.
pub fn attach_volume(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: AttachVolumeRequest,
) -> Ec2Result<Decision> {
    if r.volume_id.is_empty() {
        return Err(Ec2Error::missing("VolumeId"));
    }
    if r.instance_id.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    if r.device.is_empty() {
        return Err(Ec2Error::missing("Device"));
    }
    ids::check_volume_id(&r.volume_id)?;
    ids::check_instance_id(&r.instance_id)?;
    mapping::check_device_name(&r.device).map_err(|_| {
        Ec2Error::invalid_value(
            "device",
            &r.device,
            &format!("{} is not a valid EBS device name.", r.device),
        )
    })?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let v = owned(state, ctx.account_id, &r.volume_id)?;
    let inst = owned_instance(state, ctx.account_id, &r.instance_id)?;
    if v.attachment.is_some() || v.state == VolumeState::InUse {
        return Err(Ec2Error::new(
            ErrorCode::VolumeInUse,
            format!("{} is already attached to an instance", v.volume_id),
        ));
    }
    if v.state != VolumeState::Available {
        return Err(incorrect_volume_state(v));
    }
    if !matches!(inst.state, InstanceState::Running | InstanceState::Stopped) {
        return Err(Ec2Error::new(
            ErrorCode::IncorrectInstanceState,
            format!(
                "Instance '{}' is not 'running' or 'stopped' (it is '{}').",
                inst.instance_id,
                inst.state.as_str()
            ),
        ));
    }
    if v.availability_zone != inst.availability_zone {
        return Err(Ec2Error::new(
            ErrorCode::InvalidVolumeZoneMismatch,
            format!(
                "The volume '{}' is not in the same availability zone as instance '{}'",
                v.volume_id, inst.instance_id
            ),
        ));
    }
    let in_use = same_device(&inst.root_device_name, &r.device)
        || inst.volumes.keys().any(|d| same_device(d, &r.device))
        || inst
            .instance_store
            .iter()
            .any(|m| same_device(&m.device_name, &r.device));
    if in_use {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!("Attachment point {} is already in use", r.device),
        ));
    }
    let reply = VolumeAttachment {
        volume_id: r.volume_id.clone(),
        instance_id: r.instance_id.clone(),
        device: r.device.clone(),
        state: "attaching".into(),
        attach_time: iso(ctx.now_ms),
        delete_on_termination: false,
    };
    Ok(Decision::new(
        vec![Payload::VolumeAttached(VolumeAttached {
            volume_id: r.volume_id,
            instance_id: r.instance_id,
            device: r.device,
            delete_on_termination: false,
            attach_time_ms: ctx.now_ms,
        })],
        Reply::AttachVolume(reply),
    ))
}

/// DetachVolume. `[sim]` The root device of an instance that is not `stopped` cannot be detached
/// without `force`: `IncorrectState` `Unable to detach root volume '<vol>' from instance '<i>'`.
pub fn detach_volume(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: DetachVolumeRequest,
) -> Ec2Result<Decision> {
    if r.volume_id.is_empty() {
        return Err(Ec2Error::missing("VolumeId"));
    }
    ids::check_volume_id(&r.volume_id)?;
    if !r.instance_id.is_empty() {
        ids::check_instance_id(&r.instance_id)?;
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let v = owned(state, ctx.account_id, &r.volume_id)?;
    let attachment = match &v.attachment {
        Some(a) if v.state == VolumeState::InUse => a,
        _ => return Err(incorrect_volume_state(v)),
    };
    let instance_mismatch = !r.instance_id.is_empty() && r.instance_id != attachment.instance_id;
    let device_mismatch = !r.device.is_empty() && !same_device(&r.device, &attachment.device);
    if instance_mismatch || device_mismatch {
        let instance = if r.instance_id.is_empty() {
            &attachment.instance_id
        } else {
            &r.instance_id
        };
        let device = if r.device.is_empty() {
            &attachment.device
        } else {
            &r.device
        };
        return Err(Ec2Error::new(
            ErrorCode::InvalidAttachmentNotFound,
            format!(
                "The volume '{}' is not attached to instance '{}' as device '{}'",
                v.volume_id, instance, device
            ),
        ));
    }
    if let Some(inst) = state.instances.get(&attachment.instance_id) {
        let is_root = same_device(&inst.root_device_name, &attachment.device);
        if is_root && inst.state != InstanceState::Stopped && !r.force {
            return Err(Ec2Error::new(
                ErrorCode::IncorrectState,
                format!(
                    "Unable to detach root volume '{}' from instance '{}'",
                    v.volume_id, inst.instance_id
                ),
            ));
        }
    }
    let reply = VolumeAttachment {
        volume_id: v.volume_id.clone(),
        instance_id: attachment.instance_id.clone(),
        device: attachment.device.clone(),
        state: "detaching".into(),
        attach_time: iso(attachment.attach_time_ms),
        delete_on_termination: attachment.delete_on_termination,
    };
    Ok(Decision::new(
        vec![Payload::VolumeDetached(VolumeDetached {
            volume_id: v.volume_id.clone(),
            instance_id: attachment.instance_id.clone(),
        })],
        Reply::DetachVolume(reply),
    ))
}

/// A volume's values for a DescribeVolumes filter name.
fn filter_values(v: &state::Volume, name: &str) -> Vec<String> {
    let a = v.attachment.as_ref();
    match name {
        "attachment.instance-id" => a.map(|a| a.instance_id.clone()).into_iter().collect(),
        "attachment.device" => a.map(|a| a.device.clone()).into_iter().collect(),
        "attachment.status" => a.map(|_| "attached".to_string()).into_iter().collect(),
        "attachment.delete-on-termination" => a
            .map(|a| bool_str(a.delete_on_termination))
            .into_iter()
            .collect(),
        "availability-zone" => vec![v.availability_zone.clone()],
        "create-time" => vec![iso(v.create_time_ms)],
        "encrypted" => vec![bool_str(v.encrypted)],
        "size" => vec![v.size.to_string()],
        "snapshot-id" => vec![v.snapshot_id.clone()],
        "status" => vec![v.state.as_str().to_string()],
        "volume-id" => vec![v.volume_id.clone()],
        "volume-type" => vec![v.volume_type.clone()],
        _ => vec![],
    }
}

/// DescribeVolumes: the caller's own volumes, by id and filters, in id order.
pub fn describe_volumes(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: DescribeVolumesRequest,
) -> Ec2Result<DescribeVolumesResponse> {
    for id in &r.volume_ids {
        ids::check_volume_id(id)?;
    }
    filter::check_filters(&r.filters, VOLUME_FILTERS)?;
    let page = filter::page(r.max_results, &r.next_token, !r.volume_ids.is_empty(), 5)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let mut missing: Vec<&str> = Vec::new();
    for id in &r.volume_ids {
        let visible = state
            .volumes
            .get(id)
            .is_some_and(|v| v.owner_id == ctx.account_id);
        if !visible && !missing.contains(&id.as_str()) {
            missing.push(id);
        }
    }
    if !missing.is_empty() {
        return Err(Ec2Error::volume_not_found(&missing.join(", ")));
    }
    let items = state
        .volumes
        .values()
        .filter(|v| v.owner_id == ctx.account_id)
        .filter(|v| r.volume_ids.is_empty() || r.volume_ids.contains(&v.volume_id))
        .filter(|v| filter::matches(&r.filters, &v.tags, |name| filter_values(v, name)))
        .map(|v| (v.volume_id.clone(), render_volume(state, v, ctx)));
    let (volumes, next_token) = filter::paginate(items, &page);
    Ok(DescribeVolumesResponse {
        volumes,
        next_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{code, Harness, OTHER, OWNER, T0};
    use crate::{Answer, Command, Query};
    use amisim_proto::{
        Filter, InstanceLaunched, InstanceStateChanged, SnapshotCompleted, SnapshotCreated, Tag,
        TagSpecification, VolumeAvailable,
    };

    const AZ: &str = "us-east-1a";
    const I1: &str = "i-0123456789abcdef0";
    const I2: &str = "i-0123456789abcdef1";
    const SNAP: &str = "snap-0123456789abcdef0";
    const ROOT_VOL: &str = "vol-0000000000000000a";

    fn req(size: i32) -> CreateVolumeRequest {
        CreateVolumeRequest {
            availability_zone: AZ.into(),
            size: Some(size),
            ..Default::default()
        }
    }

    fn from_snap(id: &str) -> CreateVolumeRequest {
        CreateVolumeRequest {
            availability_zone: AZ.into(),
            snapshot_id: id.into(),
            ..Default::default()
        }
    }

    fn volume_of(d: Decision) -> Volume {
        match d.reply {
            Reply::CreateVolume(v) => v,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn attachment_of(d: Decision) -> VolumeAttachment {
        match d.reply {
            Reply::AttachVolume(a) | Reply::DetachVolume(a) => a,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn create(h: &mut Harness, r: CreateVolumeRequest) -> String {
        volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap()).volume_id
    }

    /// A volume of `size` GiB, already `available`.
    fn available(h: &mut Harness, size: i32) -> String {
        let id = create(h, req(size));
        h.advance(h.config.volume_create_ms);
        id
    }

    /// An instance in `state`, with an EBS root volume on `/dev/xvda`.
    fn instance(h: &mut Harness, id: &str, owner: &str, az: &str, state: &str) {
        let now = h.now_ms;
        h.given([
            Payload::InstanceLaunched(InstanceLaunched {
                instance_id: id.into(),
                reservation_id: "r-0123456789abcdef0".into(),
                owner_id: owner.into(),
                availability_zone: az.into(),
                instance_type: "t3.micro".into(),
                root_device_type: "ebs".into(),
                root_device_name: "/dev/xvda".into(),
                launch_time_ms: now,
                running_at_ms: now + 10_000,
                ..Default::default()
            }),
            Payload::InstanceStateChanged(InstanceStateChanged {
                instance_id: id.into(),
                state: state.into(),
                ..Default::default()
            }),
        ]);
    }

    fn root_volume(h: &mut Harness, instance_id: &str) {
        let now = h.now_ms;
        h.given([
            Payload::VolumeCreated(VolumeCreated {
                volume_id: ROOT_VOL.into(),
                owner_id: OWNER.into(),
                availability_zone: AZ.into(),
                size: 8,
                volume_type: "gp3".into(),
                create_time_ms: now,
                available_at_ms: now,
                written_bytes: gib(8),
                attach_to_instance_id: instance_id.into(),
                attach_device: "/dev/xvda".into(),
                delete_on_termination: true,
                ..Default::default()
            }),
            Payload::VolumeAvailable(VolumeAvailable {
                volume_id: ROOT_VOL.into(),
            }),
        ]);
    }

    /// A completed snapshot of `size` GiB.
    fn snapshot(h: &mut Harness, id: &str, owner: &str, size: i32, encrypted: bool) {
        let now = h.now_ms;
        h.given([
            Payload::SnapshotCreated(SnapshotCreated {
                snapshot_id: id.into(),
                owner_id: owner.into(),
                volume_id: "vol-0000000000000000b".into(),
                volume_size: size,
                encrypted,
                kms_key_id: if encrypted {
                    "arn:aws:kms:us-east-1:111122223333:key/snapkey".into()
                } else {
                    String::new()
                },
                data_encryption_key_id: if encrypted {
                    "dek-of-the-snapshot".into()
                } else {
                    String::new()
                },
                start_time_ms: now,
                complete_at_ms: now + 1,
                ..Default::default()
            }),
            Payload::SnapshotCompleted(SnapshotCompleted {
                snapshot_id: id.into(),
            }),
        ]);
    }

    fn describe(
        h: &Harness,
        account: &str,
        r: DescribeVolumesRequest,
    ) -> Ec2Result<DescribeVolumesResponse> {
        match h.read(account, Query::DescribeVolumes(r))? {
            Answer::DescribeVolumes(x) => Ok(x),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn by_id(h: &Harness, id: &str) -> Volume {
        let r = DescribeVolumesRequest {
            volume_ids: vec![id.into()],
            ..Default::default()
        };
        describe(h, OWNER, r).unwrap().volumes.remove(0)
    }

    fn filtered(h: &Harness, name: &str, values: &[&str]) -> Vec<String> {
        let r = DescribeVolumesRequest {
            filters: vec![Filter {
                name: name.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
            ..Default::default()
        };
        describe(h, OWNER, r)
            .unwrap()
            .volumes
            .into_iter()
            .map(|v| v.volume_id)
            .collect()
    }

    /// Asserts `cmd` fails with `code` (and `message` if given) and writes nothing.
    fn rejects(h: &mut Harness, account: &str, cmd: Command, want: ErrorCode, message: &str) {
        let before = h.log.len();
        let e = h.when(account, cmd).unwrap_err();
        assert_eq!(e.code, want, "{e}");
        if !message.is_empty() {
            assert_eq!(e.message, message);
        }
        assert_eq!(h.log.len(), before, "an error wrote events");
    }

    // ---- CreateVolume -------------------------------------------------------------------

    #[test]
    fn create_volume_is_creating_then_available() {
        let mut h = Harness::new();
        let d = h.when(OWNER, Command::CreateVolume(req(8))).unwrap();
        let Payload::VolumeCreated(e) = &d.events[0] else {
            panic!("{:?}", d.events)
        };
        assert_eq!(e.written_bytes, gib(8));
        assert_eq!(e.available_at_ms, T0 + 2_000);
        assert_eq!(e.owner_id, OWNER);
        let v = volume_of(d);
        assert_eq!(v.state, "creating");
        assert_eq!((v.size, v.volume_type.as_str(), v.iops), (8, "gp2", 100));
        assert_eq!(v.create_time, "2024-05-01T00:00:00.000Z");
        assert!(!v.encrypted && v.kms_key_id.is_empty());
        assert!(h.advance(1_999).is_empty());
        assert_eq!(by_id(&h, &v.volume_id).state, "creating");
        assert_eq!(h.advance(1).len(), 1);
        assert_eq!(by_id(&h, &v.volume_id).state, "available");
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_volume_requires_a_zone_of_the_region() {
        let mut h = Harness::new();
        let mut r = req(8);
        r.availability_zone.clear();
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::MissingParameter,
            "The request must contain the parameter AvailabilityZone",
        );
        for az in ["us-west-2a", "us-east-1d", "us-east-1", "a"] {
            let mut r = req(8);
            r.availability_zone = az.into();
            rejects(
                &mut h,
                OWNER,
                Command::CreateVolume(r),
                ErrorCode::InvalidZoneNotFound,
                &format!("The zone '{az}' does not exist."),
            );
        }
        for az in ["us-east-1b", "us-east-1c"] {
            let mut r = req(8);
            r.availability_zone = az.into();
            assert!(h.when(OWNER, Command::CreateVolume(r)).is_ok());
        }
    }

    #[test]
    fn create_volume_checks_snapshot_id_syntax() {
        let mut h = Harness::new();
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(from_snap("snap-xyz")),
            ErrorCode::InvalidParameterValue,
            "Value (snap-xyz) for parameter snapshotId is invalid. Expected: 'snap-...'.",
        );
    }

    #[test]
    fn create_volume_needs_a_size_without_a_snapshot() {
        let mut h = Harness::new();
        let mut r = req(8);
        r.size = None;
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::MissingParameter,
            "",
        );
    }

    #[test]
    fn create_volume_checks_sizes_iops_and_throughput_per_type() {
        let mut h = Harness::new();
        // (type, size, iops, throughput, expected code)
        type Case = (&'static str, i32, Option<i32>, Option<i32>, ErrorCode);
        let cases: Vec<Case> = vec![
            ("gp2", 0, None, None, ErrorCode::InvalidParameterValue),
            ("gp2", 16_385, None, None, ErrorCode::InvalidParameterValue),
            ("st1", 124, None, None, ErrorCode::InvalidParameterValue),
            (
                "standard",
                1_025,
                None,
                None,
                ErrorCode::InvalidParameterValue,
            ),
            ("gp9", 8, None, None, ErrorCode::InvalidParameterValue),
            ("io1", 8, None, None, ErrorCode::MissingParameter),
            ("io2", 8, Some(99), None, ErrorCode::InvalidParameterValue),
            (
                "gp3",
                8,
                None,
                Some(2_001),
                ErrorCode::InvalidParameterValue,
            ),
            (
                "gp2",
                8,
                None,
                Some(125),
                ErrorCode::InvalidParameterCombination,
            ),
        ];
        for (vt, size, iops, tp, want) in cases {
            let mut r = req(size);
            r.volume_type = vt.into();
            r.iops = iops;
            r.throughput = tp;
            rejects(&mut h, OWNER, Command::CreateVolume(r), want, "");
        }
        let mut r = req(8);
        r.volume_type = "gp3".into();
        let v = volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap());
        assert_eq!((v.iops, v.throughput), (3_000, 125));
        let mut r = req(10);
        r.volume_type = "io2".into();
        r.iops = Some(5_000);
        let v = volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap());
        assert_eq!((v.volume_type.as_str(), v.iops), ("io2", 5_000));
    }

    #[test]
    fn create_volume_kms_key_needs_encrypted() {
        let mut h = Harness::new();
        for encrypted in [None, Some(false)] {
            let mut r = req(8);
            r.kms_key_id = "alias/mine".into();
            r.encrypted = encrypted;
            rejects(
                &mut h,
                OWNER,
                Command::CreateVolume(r),
                ErrorCode::InvalidParameterDependency,
                "The parameter KmsKeyId requires the parameter Encrypted to be set.",
            );
        }
    }

    #[test]
    fn create_volume_client_token_is_at_most_64_ascii_characters() {
        let mut h = Harness::new();
        for token in ["x".repeat(65), "jeton-é".to_string()] {
            let mut r = req(8);
            r.client_token = token;
            rejects(
                &mut h,
                OWNER,
                Command::CreateVolume(r),
                ErrorCode::InvalidParameterValue,
                "",
            );
        }
        let mut r = req(8);
        r.client_token = "x".repeat(64);
        assert!(h.when(OWNER, Command::CreateVolume(r)).is_ok());
    }

    #[test]
    fn create_volume_takes_volume_tags_only() {
        let mut h = Harness::new();
        let spec = |t: &str| TagSpecification {
            resource_type: t.into(),
            tags: vec![Tag {
                key: "Name".into(),
                value: "data".into(),
            }],
        };
        let mut r = req(8);
        r.tag_specifications = vec![spec("snapshot")];
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::InvalidParameterValue,
            "",
        );
        let mut r = req(8);
        r.tag_specifications = vec![spec("volume")];
        let v = volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap());
        assert_eq!(
            v.tags,
            vec![Tag {
                key: "Name".into(),
                value: "data".into()
            }]
        );
    }

    #[test]
    fn create_volume_dry_run_after_syntax_checks() {
        let mut h = Harness::new();
        let mut r = req(8);
        r.dry_run = true;
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r.clone()),
            ErrorCode::DryRunOperation,
            "Request would have succeeded, but DryRun flag is set.",
        );
        r.availability_zone = "eu-west-1a".into();
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::InvalidZoneNotFound,
            "",
        );
        // A dry run does not check existence (step 5 comes before step 7).
        let mut r = from_snap(SNAP);
        r.dry_run = true;
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::DryRunOperation,
            "",
        );
    }

    #[test]
    fn create_volume_client_token_is_idempotent() {
        let mut h = Harness::new();
        let mut r = req(8);
        r.client_token = "tok-1".into();
        let first = create(&mut h, r.clone());
        let logged = h.log.len();
        let again = h.when(OWNER, Command::CreateVolume(r.clone())).unwrap();
        assert!(again.events.is_empty());
        assert_eq!(volume_of(again).volume_id, first);
        assert_eq!(h.log.len(), logged);
        // Other parameters under the same token.
        let mut other = r.clone();
        other.size = Some(9);
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(other),
            ErrorCode::IdempotentParameterMismatch,
            "",
        );
        // Tokens are per account.
        let theirs = volume_of(h.when(OTHER, Command::CreateVolume(r.clone())).unwrap());
        assert_ne!(theirs.volume_id, first);
        // Still idempotent after the volume became available, and after a replay.
        h.advance(2_000);
        let v = volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap());
        assert_eq!(
            (v.volume_id.as_str(), v.state.as_str()),
            (first.as_str(), "available")
        );
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_volume_from_an_unknown_or_invisible_snapshot_is_not_found() {
        let mut h = Harness::new();
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(from_snap(SNAP)),
            ErrorCode::InvalidSnapshotNotFound,
            "The snapshot 'snap-0123456789abcdef0' does not exist.",
        );
        snapshot(&mut h, SNAP, OTHER, 8, false);
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(from_snap(SNAP)),
            ErrorCode::InvalidSnapshotNotFound,
            "",
        );
        // An explicit create-volume permission makes it usable (sharing sets it; test-only poke).
        if let Some(s) = h.state.snapshots.get_mut(SNAP) {
            s.create_volume_permissions.insert(OWNER.to_string());
        }
        let v = volume_of(
            h.when(OWNER, Command::CreateVolume(from_snap(SNAP)))
                .unwrap(),
        );
        assert_eq!((v.size, v.snapshot_id.as_str()), (8, SNAP));
    }

    #[test]
    fn create_volume_from_pending_snapshot_is_incorrect_state_unconfirmed() {
        let mut h = Harness::new();
        h.given([Payload::SnapshotCreated(SnapshotCreated {
            snapshot_id: SNAP.into(),
            owner_id: OWNER.into(),
            volume_size: 8,
            start_time_ms: T0,
            complete_at_ms: T0 + 60_000,
            ..Default::default()
        })]);
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(from_snap(SNAP)),
            ErrorCode::IncorrectState,
            "",
        );
        h.advance(60_000);
        assert!(h
            .when(OWNER, Command::CreateVolume(from_snap(SNAP)))
            .is_ok());
    }

    #[test]
    fn create_volume_from_snapshot_defaults_to_and_may_not_undercut_its_size() {
        let mut h = Harness::new();
        snapshot(&mut h, SNAP, OWNER, 8, false);
        let mut r = from_snap(SNAP);
        r.size = Some(5);
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::InvalidParameterValue,
            "Volume of size 5GB is smaller than snapshot 'snap-0123456789abcdef0', expect size >= 8GB",
        );
        let mut r = from_snap(SNAP);
        r.size = Some(20);
        let v = volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap());
        assert_eq!(v.size, 20);
        let v = volume_of(
            h.when(OWNER, Command::CreateVolume(from_snap(SNAP)))
                .unwrap(),
        );
        assert_eq!(v.size, 8);
        // st1 starts at 125 GiB: the snapshot's 8 GiB is too small for it.
        let mut r = from_snap(SNAP);
        r.volume_type = "st1".into();
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(r),
            ErrorCode::InvalidParameterValue,
            "",
        );
    }

    #[test]
    fn create_volume_encryption_follows_the_snapshot_and_the_request() {
        let mut h = Harness::new();
        snapshot(&mut h, SNAP, OWNER, 8, true);
        let (created, _) = crate::testkit::kms_key(
            "us-east-1",
            OWNER,
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            &[],
        );
        h.given([
            created,
            Payload::KmsAliasCreated(amisim_proto::KmsAliasCreated {
                owner_id: OWNER.into(),
                alias_name: "alias/mine".into(),
                target_key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
                creation_date_ms: 0,
            }),
        ]);
        // From an encrypted snapshot: encrypted, same key, same data key (one lineage).
        let id = create(&mut h, from_snap(SNAP));
        let v = &h.state.volumes[&id];
        assert!(v.encrypted);
        assert_eq!(
            v.kms_key_id,
            "arn:aws:kms:us-east-1:111122223333:key/snapkey"
        );
        assert_eq!(v.data_encryption_key_id, "dek-of-the-snapshot");
        // Even `encrypted=false` cannot remove encryption.
        let mut r = from_snap(SNAP);
        r.encrypted = Some(false);
        let id = create(&mut h, r);
        assert!(h.state.volumes[&id].encrypted);
        // Re-keyed: the given key, a new data key.
        let mut r = from_snap(SNAP);
        r.encrypted = Some(true);
        r.kms_key_id = "1234abcd-12ab-34cd-56ef-1234567890ab".into();
        let id = create(&mut h, r);
        let v = &h.state.volumes[&id];
        assert_eq!(
            v.kms_key_id,
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        assert_ne!(v.data_encryption_key_id, "dek-of-the-snapshot");
        // Empty and encrypted: the default EBS key, a fresh data key.
        let mut r = req(8);
        r.encrypted = Some(true);
        let id = create(&mut h, r);
        let v = &h.state.volumes[&id];
        assert_eq!(
            v.kms_key_id,
            crate::kms::aws_managed_key_arn("us-east-1", OWNER)
        );
        assert_eq!(v.data_encryption_key_id.len(), 36);
        // An alias is resolved: the volume reports the key's ARN.
        let mut r = req(8);
        r.encrypted = Some(true);
        r.kms_key_id = "alias/mine".into();
        let v = volume_of(h.when(OWNER, Command::CreateVolume(r)).unwrap());
        assert_eq!(
            v.kms_key_id,
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        // A key that does not exist is refused at once.
        let mut r = req(8);
        r.encrypted = Some(true);
        r.kms_key_id = "alias/nothing".into();
        let e = h.try_decide(OWNER, Command::CreateVolume(r)).unwrap_err();
        assert_eq!(e.code, ErrorCode::CustomerKeyHasBeenRevoked);
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_volume_quota() {
        let mut h = Harness::new();
        h.config.max_volumes = 1;
        create(&mut h, req(8));
        rejects(
            &mut h,
            OWNER,
            Command::CreateVolume(req(8)),
            ErrorCode::VolumeLimitExceeded,
            "",
        );
        // Per account.
        assert!(h.when(OTHER, Command::CreateVolume(req(8))).is_ok());
    }

    // ---- DeleteVolume -------------------------------------------------------------------

    fn delete(id: &str) -> Command {
        Command::DeleteVolume(DeleteVolumeRequest {
            volume_id: id.into(),
            dry_run: false,
        })
    }

    #[test]
    fn delete_volume_lifecycle() {
        let mut h = Harness::new();
        let id = available(&mut h, 8);
        let d = h.when(OWNER, delete(&id)).unwrap();
        assert_eq!(
            d.reply,
            Reply::DeleteVolume(DeleteVolumeResponse { r#return: true })
        );
        assert!(!h.state.volumes.contains_key(&id));
        let r = DescribeVolumesRequest {
            volume_ids: vec![id.clone()],
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidVolumeNotFound
        );
        h.assert_replay_equals_live();
    }

    #[test]
    fn delete_volume_syntax_existence_and_dry_run() {
        let mut h = Harness::new();
        rejects(&mut h, OWNER, delete(""), ErrorCode::MissingParameter, "");
        rejects(
            &mut h,
            OWNER,
            delete("vol-xyz"),
            ErrorCode::InvalidVolumeIdMalformed,
            "Invalid id: \"vol-xyz\" (expecting \"vol-...\")",
        );
        rejects(
            &mut h,
            OWNER,
            delete("vol-0123456789abcdef0"),
            ErrorCode::InvalidVolumeNotFound,
            "The volume 'vol-0123456789abcdef0' does not exist.",
        );
        let id = available(&mut h, 8);
        rejects(
            &mut h,
            OTHER,
            delete(&id),
            ErrorCode::InvalidVolumeNotFound,
            "",
        );
        let dry = Command::DeleteVolume(DeleteVolumeRequest {
            volume_id: id.clone(),
            dry_run: true,
        });
        rejects(&mut h, OWNER, dry, ErrorCode::DryRunOperation, "");
        assert!(h.state.volumes.contains_key(&id));
    }

    #[test]
    fn delete_volume_only_when_available() {
        let mut h = Harness::new();
        let id = create(&mut h, req(8));
        rejects(
            &mut h,
            OWNER,
            delete(&id),
            ErrorCode::IncorrectState,
            &format!("Volume '{id}' is in the 'creating' state."),
        );
        instance(&mut h, I1, OWNER, AZ, "running");
        root_volume(&mut h, I1);
        rejects(
            &mut h,
            OWNER,
            delete(ROOT_VOL),
            ErrorCode::VolumeInUse,
            &format!("Volume {ROOT_VOL} is currently attached to {I1}"),
        );
    }

    // ---- AttachVolume / DetachVolume ----------------------------------------------------

    fn attach(vol: &str, inst: &str, device: &str) -> AttachVolumeRequest {
        AttachVolumeRequest {
            volume_id: vol.into(),
            instance_id: inst.into(),
            device: device.into(),
            dry_run: false,
        }
    }

    fn detach(vol: &str) -> DetachVolumeRequest {
        DetachVolumeRequest {
            volume_id: vol.into(),
            ..Default::default()
        }
    }

    #[test]
    fn attach_then_detach_lifecycle() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "running");
        let id = available(&mut h, 8);
        let a = attachment_of(
            h.when(OWNER, Command::AttachVolume(attach(&id, I1, "/dev/sdf")))
                .unwrap(),
        );
        assert_eq!(
            (a.state.as_str(), a.instance_id.as_str(), a.device.as_str()),
            ("attaching", I1, "/dev/sdf")
        );
        assert!(!a.delete_on_termination);
        let v = by_id(&h, &id);
        assert_eq!(v.state, "in-use");
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(v.attachments[0].state, "attached");
        assert_eq!(h.state.instances[I1].volumes.get("/dev/sdf"), Some(&id));
        h.advance(60_000);
        let a = attachment_of(h.when(OWNER, Command::DetachVolume(detach(&id))).unwrap());
        assert_eq!(
            (a.state.as_str(), a.device.as_str()),
            ("detaching", "/dev/sdf")
        );
        assert_eq!(a.attach_time, "2024-05-01T00:00:02.000Z");
        let v = by_id(&h, &id);
        assert_eq!(v.state, "available");
        assert!(v.attachments.is_empty());
        assert!(h.state.instances[I1].volumes.is_empty());
        h.assert_replay_equals_live();
    }

    #[test]
    fn attach_volume_syntax() {
        let mut h = Harness::new();
        let id = available(&mut h, 8);
        let cases = [
            (attach("", I1, "/dev/sdf"), ErrorCode::MissingParameter),
            (attach(&id, "", "/dev/sdf"), ErrorCode::MissingParameter),
            (attach(&id, I1, ""), ErrorCode::MissingParameter),
            (
                attach("vol-1", I1, "/dev/sdf"),
                ErrorCode::InvalidVolumeIdMalformed,
            ),
            (
                attach(&id, "i-zz", "/dev/sdf"),
                ErrorCode::InvalidInstanceIdMalformed,
            ),
        ];
        for (r, want) in cases {
            rejects(&mut h, OWNER, Command::AttachVolume(r), want, "");
        }
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(attach(&id, I1, "/dev/fd0")),
            ErrorCode::InvalidParameterValue,
            "Value (/dev/fd0) for parameter device is invalid. /dev/fd0 is not a valid EBS device name.",
        );
        let mut r = attach(&id, I1, "/dev/sdf");
        r.dry_run = true;
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(r),
            ErrorCode::DryRunOperation,
            "",
        );
    }

    #[test]
    fn attach_volume_needs_own_volume_and_instance() {
        let mut h = Harness::new();
        let id = available(&mut h, 8);
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(attach(&id, I1, "/dev/sdf")),
            ErrorCode::InvalidInstanceIdNotFound,
            &format!("The instance ID '{I1}' does not exist"),
        );
        instance(&mut h, I2, OTHER, AZ, "running");
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(attach(&id, I2, "/dev/sdf")),
            ErrorCode::InvalidInstanceIdNotFound,
            "",
        );
        instance(&mut h, I1, OWNER, AZ, "running");
        rejects(
            &mut h,
            OTHER,
            Command::AttachVolume(attach(&id, I1, "/dev/sdf")),
            ErrorCode::InvalidVolumeNotFound,
            "",
        );
    }

    #[test]
    fn attach_volume_state_rules() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "running");
        root_volume(&mut h, I1);
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(attach(ROOT_VOL, I1, "/dev/sdf")),
            ErrorCode::VolumeInUse,
            &format!("{ROOT_VOL} is already attached to an instance"),
        );
        let creating = create(&mut h, req(8));
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(attach(&creating, I1, "/dev/sdf")),
            ErrorCode::IncorrectState,
            &format!("Volume '{creating}' is in the 'creating' state."),
        );
        h.advance(2_000);
        for state in ["pending", "stopping", "terminated"] {
            instance(&mut h, I2, OWNER, AZ, state);
            rejects(
                &mut h,
                OWNER,
                Command::AttachVolume(attach(&creating, I2, "/dev/sdf")),
                ErrorCode::IncorrectInstanceState,
                "",
            );
        }
        instance(&mut h, I2, OWNER, AZ, "stopped");
        assert!(h
            .when(
                OWNER,
                Command::AttachVolume(attach(&creating, I2, "/dev/sdf"))
            )
            .is_ok());
    }

    #[test]
    fn attach_volume_zone_mismatch() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, "us-east-1b", "running");
        let id = available(&mut h, 8);
        rejects(
            &mut h,
            OWNER,
            Command::AttachVolume(attach(&id, I1, "/dev/sdf")),
            ErrorCode::InvalidVolumeZoneMismatch,
            &format!("The volume '{id}' is not in the same availability zone as instance '{I1}'"),
        );
    }

    #[test]
    fn attach_volume_device_already_in_use() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "running");
        root_volume(&mut h, I1);
        let a = available(&mut h, 8);
        let b = available(&mut h, 8);
        h.when(OWNER, Command::AttachVolume(attach(&a, I1, "/dev/sdf")))
            .unwrap();
        for dev in ["/dev/sdf", "sdf", "/dev/xvda", "xvda"] {
            rejects(
                &mut h,
                OWNER,
                Command::AttachVolume(attach(&b, I1, dev)),
                ErrorCode::InvalidParameterValue,
                &format!("Attachment point {dev} is already in use"),
            );
        }
        assert!(h
            .when(OWNER, Command::AttachVolume(attach(&b, I1, "/dev/sdg")))
            .is_ok());
        h.assert_replay_equals_live();
    }

    #[test]
    fn detach_volume_must_be_attached() {
        let mut h = Harness::new();
        let id = available(&mut h, 8);
        rejects(
            &mut h,
            OWNER,
            Command::DetachVolume(detach(&id)),
            ErrorCode::IncorrectState,
            &format!("Volume '{id}' is in the 'available' state."),
        );
        rejects(
            &mut h,
            OWNER,
            Command::DetachVolume(detach("vol-zz")),
            ErrorCode::InvalidVolumeIdMalformed,
            "",
        );
        rejects(
            &mut h,
            OTHER,
            Command::DetachVolume(detach(&id)),
            ErrorCode::InvalidVolumeNotFound,
            "",
        );
        let mut r = detach(&id);
        r.dry_run = true;
        rejects(
            &mut h,
            OWNER,
            Command::DetachVolume(r),
            ErrorCode::DryRunOperation,
            "",
        );
    }

    #[test]
    fn detach_volume_instance_and_device_must_match() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "running");
        let id = available(&mut h, 8);
        h.when(OWNER, Command::AttachVolume(attach(&id, I1, "/dev/sdf")))
            .unwrap();
        let mut r = detach(&id);
        r.instance_id = I2.into();
        rejects(
            &mut h,
            OWNER,
            Command::DetachVolume(r),
            ErrorCode::InvalidAttachmentNotFound,
            &format!("The volume '{id}' is not attached to instance '{I2}' as device '/dev/sdf'"),
        );
        let mut r = detach(&id);
        r.device = "/dev/sdg".into();
        rejects(
            &mut h,
            OWNER,
            Command::DetachVolume(r),
            ErrorCode::InvalidAttachmentNotFound,
            "",
        );
        let mut r = detach(&id);
        r.instance_id = I1.into();
        r.device = "sdf".into();
        assert!(h.when(OWNER, Command::DetachVolume(r)).is_ok());
    }

    #[test]
    fn detach_root_volume_of_running_instance_needs_force_sim_incorrect_state() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "running");
        root_volume(&mut h, I1);
        rejects(
            &mut h,
            OWNER,
            Command::DetachVolume(detach(ROOT_VOL)),
            ErrorCode::IncorrectState,
            &format!("Unable to detach root volume '{ROOT_VOL}' from instance '{I1}'"),
        );
        let mut r = detach(ROOT_VOL);
        r.force = true;
        assert!(h.when(OWNER, Command::DetachVolume(r)).is_ok());
        h.assert_replay_equals_live();
    }

    #[test]
    fn detach_root_volume_of_stopped_instance_is_allowed() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "stopped");
        root_volume(&mut h, I1);
        assert!(h
            .when(OWNER, Command::DetachVolume(detach(ROOT_VOL)))
            .is_ok());
        assert_eq!(h.state.volumes[ROOT_VOL].state, VolumeState::Available);
    }

    // ---- DescribeVolumes ----------------------------------------------------------------

    #[test]
    fn describe_volumes_shows_own_volumes_only() {
        let mut h = Harness::new();
        let mine = available(&mut h, 8);
        let theirs = volume_of(h.when(OTHER, Command::CreateVolume(req(8))).unwrap()).volume_id;
        let all = describe(&h, OWNER, DescribeVolumesRequest::default()).unwrap();
        assert_eq!(all.volumes.len(), 1);
        assert_eq!(all.volumes[0].volume_id, mine);
        assert!(all.next_token.is_empty());
        let r = DescribeVolumesRequest {
            volume_ids: vec![theirs.clone()],
            ..Default::default()
        };
        let e = describe(&h, OWNER, r).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidVolumeNotFound);
        assert_eq!(e.message, format!("The volume '{theirs}' does not exist."));
    }

    #[test]
    fn describe_volumes_request_checks() {
        let mut h = Harness::new();
        let id = available(&mut h, 8);
        let r = DescribeVolumesRequest {
            volume_ids: vec!["vol-nope".into()],
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidVolumeIdMalformed
        );
        let r = DescribeVolumesRequest {
            volume_ids: vec![id.clone()],
            max_results: Some(5),
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidParameterCombination
        );
        let r = DescribeVolumesRequest {
            max_results: Some(4),
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidParameterValue
        );
        let r = DescribeVolumesRequest {
            next_token: "garbage".into(),
            ..Default::default()
        };
        assert_eq!(code(describe(&h, OWNER, r)), ErrorCode::InvalidNextToken);
        let r = DescribeVolumesRequest {
            filters: vec![Filter {
                name: "colour".into(),
                values: vec!["red".into()],
            }],
            ..Default::default()
        };
        let e = describe(&h, OWNER, r).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::InvalidParameterValue,
                "The filter 'colour' is invalid"
            )
        );
        let r = DescribeVolumesRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(code(describe(&h, OWNER, r)), ErrorCode::DryRunOperation);
    }

    #[test]
    fn describe_volumes_filters() {
        let mut h = Harness::new();
        instance(&mut h, I1, OWNER, AZ, "running");
        let mut r = req(8);
        r.tag_specifications = vec![TagSpecification {
            resource_type: "volume".into(),
            tags: vec![Tag {
                key: "Name".into(),
                value: "web-data".into(),
            }],
        }];
        let a = create(&mut h, r);
        let mut r = req(100);
        r.volume_type = "gp3".into();
        r.encrypted = Some(true);
        r.availability_zone = "us-east-1b".into();
        let b = create(&mut h, r);
        h.advance(2_000);
        let c = create(&mut h, req(8));
        h.when(OWNER, Command::AttachVolume(attach(&a, I1, "/dev/sdf")))
            .unwrap();
        assert_eq!(filtered(&h, "status", &["in-use"]), vec![a.clone()]);
        let mut avail_or_creating = vec![b.clone(), c.clone()];
        avail_or_creating.sort();
        assert_eq!(
            filtered(&h, "status", &["available", "creating"]),
            avail_or_creating
        );
        assert_eq!(filtered(&h, "size", &["100"]), vec![b.clone()]);
        assert_eq!(filtered(&h, "volume-type", &["gp3"]), vec![b.clone()]);
        assert_eq!(filtered(&h, "encrypted", &["true"]), vec![b.clone()]);
        assert_eq!(
            filtered(&h, "availability-zone", &["*-1b"]),
            vec![b.clone()]
        );
        assert_eq!(filtered(&h, "tag:Name", &["web-*"]), vec![a.clone()]);
        assert_eq!(filtered(&h, "tag-key", &["Name"]), vec![a.clone()]);
        assert_eq!(filtered(&h, "tag:Name", &["db-*"]), Vec::<String>::new());
        assert_eq!(
            filtered(&h, "attachment.instance-id", &[I1]),
            vec![a.clone()]
        );
        assert_eq!(
            filtered(&h, "attachment.device", &["/dev/sd?"]),
            vec![a.clone()]
        );
        assert_eq!(
            filtered(&h, "attachment.status", &["attached"]),
            vec![a.clone()]
        );
        assert_eq!(
            filtered(&h, "attachment.delete-on-termination", &["false"]),
            vec![a.clone()]
        );
        assert_eq!(filtered(&h, "volume-id", &[&c]), vec![c.clone()]);
        assert_eq!(
            filtered(&h, "create-time", &["2024-05-01T00:00:02*"]),
            vec![c.clone()]
        );
        assert_eq!(
            filtered(&h, "snapshot-id", &["snap-*"]),
            Vec::<String>::new()
        );
        // Filters AND.
        let r = DescribeVolumesRequest {
            filters: vec![
                Filter {
                    name: "size".into(),
                    values: vec!["8".into()],
                },
                Filter {
                    name: "status".into(),
                    values: vec!["creating".into()],
                },
            ],
            ..Default::default()
        };
        let got: Vec<String> = describe(&h, OWNER, r)
            .unwrap()
            .volumes
            .into_iter()
            .map(|v| v.volume_id)
            .collect();
        assert_eq!(got, vec![c]);
    }

    #[test]
    fn describe_volumes_pages_through_everything_once() {
        let mut h = Harness::new();
        let mut ids: Vec<String> = (0..12).map(|_| create(&mut h, req(1))).collect();
        ids.sort();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = DescribeVolumesRequest {
                max_results: Some(5),
                next_token: token.clone(),
                ..Default::default()
            };
            let page = describe(&h, OWNER, r).unwrap();
            assert!(page.volumes.len() <= 5);
            seen.extend(page.volumes.into_iter().map(|v| v.volume_id));
            pages += 1;
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids);
    }
}
