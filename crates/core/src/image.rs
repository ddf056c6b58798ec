//! AMIs: RegisterImage, CreateImage, DeregisterImage and DescribeImages (EC2_SEMANTICS.md §2.1,
//! §2.3, §2.4, §3.1, §5.1, §5.2, §5.6, §5.8).
//!
//! Every write checks in §4.8's order — missing parameters → syntax → combinations → DryRun →
//! existence/visibility → ownership → state → quotas — and only then returns its events, so a
//! failed call writes nothing. An image's life in events:
//!
//! - `ImageRegistered` (state `pending`). RegisterImage sets `available_at_ms` (2 s for EBS,
//!   30 s for S3 by default) and the tick fires `ImageAvailable` then; CreateImage sets it to 0
//!   and records one `SnapshotCreated{for_image_id}` per volume, and the tick fires
//!   `ImageAvailable` when the last of them completes.
//! - `ImageFailed` (`Client.InstanceTerminated`, written by TerminateInstances for the images
//!   [`images_pending_from_instance`] names).
//! - `ImageDeregistered` (visible to its owner as `deregistered` for the linger), then
//!   `ImageForgotten` (the id is no longer found; its name was free from deregistration on).

use std::collections::{BTreeMap, BTreeSet};

use amisim_proto::event::Payload;
use amisim_proto::{self as pb, EbsBlockDevice};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::filter::{self, bool_str};
use crate::ids::{self, Kind};
use crate::mapping::{self, Parsed, VOLUME_TYPES};
use crate::state::{
    tag_records, tri_encode, Image, ImageState, Instance, InstanceState, LaunchPermission, Mapping,
    Snapshot, SnapshotState, State, Tags, Volume,
};
use crate::{tags, time, Ctx, Decision, ReadCtx, Reply};

/// Architectures an image may have.
pub const ARCHITECTURES: &[&str] = &["i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac"];
/// Virtualization types (`paravirtual` is RegisterImage's default).
pub const VIRTUALIZATION_TYPES: &[&str] = &["hvm", "paravirtual"];
/// Boot modes (absent: the instance type's default).
pub const BOOT_MODES: &[&str] = &["legacy-bios", "uefi", "uefi-preferred"];
/// Largest `uefi_data` (characters of base64).
pub const MAX_UEFI_DATA: usize = 64_000;
/// The only hypervisor EC2 reports for images.
pub const HYPERVISOR: &str = "xen";
/// Owner aliases DescribeImages accepts in `owners`.
pub const OWNER_ALIASES: &[&str] = &["amazon", "aws-marketplace", "aws-backup-vault"];
/// `LastLaunchedTime` shows a launch this long after it happened (EC2_SEMANTICS.md §10.1).
pub const LAST_LAUNCHED_LAG_MS: u64 = 24 * 3_600_000;

/// DescribeImages filter names (besides `tag:<key>` and `tag-key`), EC2_SEMANTICS.md §5.8.
pub const FILTERS: &[&str] = &[
    "architecture",
    "block-device-mapping.delete-on-termination",
    "block-device-mapping.device-name",
    "block-device-mapping.snapshot-id",
    "block-device-mapping.volume-size",
    "block-device-mapping.volume-type",
    "block-device-mapping.encrypted",
    "creation-date",
    "description",
    "ena-support",
    "hypervisor",
    "image-id",
    "image-type",
    "is-public",
    "kernel-id",
    "manifest-location",
    "name",
    "owner-alias",
    "owner-id",
    "platform",
    "product-code",
    "ramdisk-id",
    "root-device-name",
    "root-device-type",
    "source-image-id",
    "source-image-region",
    "source-instance-id",
    "state",
    "state-reason-code",
    "state-reason-message",
    "sriov-net-support",
    "virtualization-type",
];

// -------------------------------------------------------------------------------------------
// Shared rules
// -------------------------------------------------------------------------------------------

/// Checks an AMI name: 3–128 characters of letters, digits, space and `( ) [ ] . / - ' @ _`
/// (`InvalidAMIName.Malformed`). An empty name is the caller's `MissingParameter`.
pub fn check_name(name: &str) -> Ec2Result<()> {
    let len = name.chars().count();
    let ok = (3..=128).contains(&len)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidAmiNameMalformed,
            "AMI names must be between 3 and 128 characters long, and may contain letters, \
             numbers, spaces and ( ) [ ] . / - ' @ _",
        ))
    }
}

fn check_description(description: &str) -> Ec2Result<()> {
    if description.chars().count() > 255 {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            "Value for parameter description is invalid. Length must be at most 255 characters.",
        ));
    }
    Ok(())
}

/// An enumerated parameter: empty is allowed (unset), anything else must be one of `allowed`.
fn check_enum(param: &str, value: &str, allowed: &[&str]) -> Ec2Result<()> {
    if value.is_empty() || allowed.contains(&value) {
        Ok(())
    } else {
        Err(Ec2Error::invalid_value(
            param,
            value,
            &format!("Valid values: {}", allowed.join(", ")),
        ))
    }
}

/// A kernel (`aki-`) or ramdisk (`ari-`) id, if given. `[sim]` Kernel images are not simulated:
/// only the form is checked.
fn check_aux_id(param: &str, id: &str, prefix: &str) -> Ec2Result<()> {
    let ok = id.is_empty()
        || id
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|h| {
                (h.len() == 8 || h.len() == 17)
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
    if ok {
        Ok(())
    } else {
        Err(Ec2Error::invalid_value(
            param,
            id,
            &format!("Expected: '{prefix}-...'."),
        ))
    }
}

/// True if `account` may see the image (describe it, launch it): its owner, anyone for a public
/// image, or an account it is shared with by id, organization or OU (`membership` says who is
/// in which; see [`crate::sharing::may_launch`]).
pub fn is_visible(img: &Image, account: &str, membership: &crate::Membership) -> bool {
    crate::sharing::may_launch(img, account, membership)
}

/// True if `account` may use the snapshot (its owner, a create-volume grant, or public).
fn snapshot_visible(s: &Snapshot, account: &str) -> bool {
    s.owner_id == account || s.public || s.create_volume_permissions.contains(account)
}

/// Images CreateImage is still making from `instance_id` (state `pending`): TerminateInstances
/// fails them with `Client.InstanceTerminated` (EC2_SEMANTICS.md §5.2).
pub fn images_pending_from_instance(state: &State, instance_id: &str) -> Vec<String> {
    state
        .images
        .values()
        .filter(|i| {
            i.state == ImageState::Pending
                && i.registered.origin == "create"
                && i.registered.source_instance_id == instance_id
        })
        .map(|i| i.id().to_string())
        .collect()
}

/// `InvalidAMIName.Duplicate` if the owner already has a (not deregistered) image of that name.
fn check_name_free(state: &State, owner: &str, name: &str) -> Ec2Result<()> {
    match state
        .image_names
        .find(&state.images, owner, name)
        .map(|i| i.id())
    {
        Some(id) => Err(Ec2Error::new(
            ErrorCode::InvalidAmiNameDuplicate,
            format!("AMI name {name} is already in use by AMI {id}"),
        )),
        None => Ok(()),
    }
}

/// The AMI quota (EC2_SEMANTICS.md §6): pending, available, failed and disabled images count,
/// deregistered ones do not. `[unconfirmed]` code `ResourceLimitExceeded`.
pub(crate) fn check_image_quota(state: &State, ctx: &Ctx<'_>) -> Ec2Result<()> {
    let owned = state.images_owned(ctx.account_id);
    if owned >= ctx.config.max_images {
        return Err(Ec2Error::new(
            ErrorCode::ResourceLimitExceeded,
            format!(
                "You have reached the maximum number of AMIs ({}) for this account in this region.",
                ctx.config.max_images
            ),
        ));
    }
    Ok(())
}

/// The syntax of an EBS mapping that does not need its snapshot: volume type, an explicit size
/// in the type's range, IOPS, throughput, and the flags RegisterImage and CreateImage refuse
/// (`Encrypted` beside a snapshot, `KmsKeyId`). The size against the snapshot waits for the
/// lookup, after DryRun.
fn precheck_ebs(device: &str, ebs: &EbsBlockDevice) -> Ec2Result<()> {
    let mut probe = ebs.clone();
    if probe.volume_size.is_none() {
        let vt = if probe.volume_type.is_empty() {
            "gp3"
        } else {
            probe.volume_type.as_str()
        };
        let min = VOLUME_TYPES
            .iter()
            .find(|(t, _, _)| *t == vt)
            .map_or(1, |(_, min, _)| *min);
        probe.volume_size = Some(min);
    }
    let snapshot =
        (!ebs.snapshot_id.is_empty()).then_some((ebs.snapshot_id.as_str(), 0, false, ""));
    mapping::resolve_ebs(device, &probe, snapshot, false).map(|_| ())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// -------------------------------------------------------------------------------------------
// RegisterImage
// -------------------------------------------------------------------------------------------

/// True if an S3 manifest path looks readable: `<bucket>/<path>/….manifest.xml` with a valid
/// bucket name. `[sim]` S3 is not simulated; this stands for "the manifest could be read".
fn manifest_readable(location: &str) -> bool {
    let parts: Vec<&str> = location.split('/').collect();
    let Some((bucket, key)) = parts.split_first() else {
        return false;
    };
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    bucket_ok
        && !key.is_empty()
        && key.iter().all(|p| !p.is_empty())
        && location.ends_with("manifest.xml")
}

/// RegisterImage (EC2_SEMANTICS.md §5.1): an EBS AMI from a root snapshot, or an
/// instance-store AMI from an S3 manifest (`image_location`). The image is the caller's,
/// private, `pending`, and turns `available` after `register_ebs_ms` / `register_s3_ms`.
pub fn register_image(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::RegisterImageRequest,
) -> Ec2Result<Decision> {
    // 2 Missing parameters.
    if r.name.is_empty() {
        return Err(Ec2Error::missing("Name"));
    }
    let s3 = !r.image_location.is_empty();
    if !s3 && r.root_device_name.is_empty() && r.block_device_mappings.is_empty() {
        // [unconfirmed] neither an S3 manifest nor a root device (EC2_SEMANTICS.md §5.1).
        return Err(Ec2Error::missing("ImageLocation or RootDeviceName"));
    }
    // 3 Syntax.
    check_name(&r.name)?;
    check_description(&r.description)?;
    check_enum("architecture", &r.architecture, ARCHITECTURES)?;
    check_enum(
        "virtualizationType",
        &r.virtualization_type,
        VIRTUALIZATION_TYPES,
    )?;
    check_enum("bootMode", &r.boot_mode, BOOT_MODES)?;
    check_enum("tpmSupport", &r.tpm_support, &["v2.0"])?;
    check_enum("imdsSupport", &r.imds_support, &["v2.0"])?;
    check_enum("sriovNetSupport", &r.sriov_net_support, &["simple"])?;
    // [sim] defaults: i386 for EBS AMIs (EC2's), x86_64 for S3 AMIs (EC2 reads the manifest's).
    let architecture = match (r.architecture.as_str(), s3) {
        ("", true) => "x86_64".to_string(),
        ("", false) => "i386".to_string(),
        (a, _) => a.to_string(),
    };
    let virtualization = if r.virtualization_type.is_empty() {
        "paravirtual".to_string()
    } else {
        r.virtualization_type.clone()
    };
    if !r.sriov_net_support.is_empty() && virtualization != "hvm" {
        return Err(Ec2Error::invalid_value(
            "sriovNetSupport",
            &r.sriov_net_support,
            "SR-IOV networking is supported only for HVM images.",
        ));
    }
    if r.uefi_data.chars().count() > MAX_UEFI_DATA {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!("Value for parameter uefiData is invalid. Length must be at most {MAX_UEFI_DATA} characters."),
        ));
    }
    check_aux_id("kernelId", &r.kernel_id, "aki")?;
    check_aux_id("ramdiskId", &r.ramdisk_id, "ari")?;
    if !r.root_device_name.is_empty() {
        mapping::check_device_name(&r.root_device_name)?;
    }
    let parsed = mapping::parse_mappings(&r.block_device_mappings)?;
    for p in &parsed {
        if let Parsed::Ebs { device_name, ebs } = p {
            precheck_ebs(device_name, ebs)?;
        }
    }
    let image_tags = tags::from_specifications(&r.tag_specifications, &["image"])?
        .remove("image")
        .unwrap_or_default();
    // 4 Combinations: which kind of AMI, and its root device.
    let root_device_name = if s3 {
        let root = if r.root_device_name.is_empty() {
            "/dev/sda1".to_string()
        } else {
            r.root_device_name.clone()
        };
        if parsed
            .iter()
            .any(|p| matches!(p, Parsed::Ebs { .. }) && p.device_name() == root)
        {
            // [sim] an instance-store AMI's root device cannot be an EBS volume.
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterCombination,
                format!("The root device {root} of an image registered from ImageLocation cannot be an EBS volume."),
            ));
        }
        root
    } else {
        if r.root_device_name.is_empty() {
            // [unconfirmed] mappings but no root device name.
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterCombination,
                "The parameter RootDeviceName must be specified with BlockDeviceMappings when ImageLocation is not specified.",
            ));
        }
        let root_has_snapshot = parsed.iter().any(|p| {
            matches!(p, Parsed::Ebs { device_name, ebs }
                if *device_name == r.root_device_name && !ebs.snapshot_id.is_empty())
        });
        if !root_has_snapshot {
            // [unconfirmed] code (EC2_SEMANTICS.md §2.4).
            return Err(Ec2Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!(
                    "The root device {} of an EBS-backed image must be mapped to a snapshot.",
                    r.root_device_name
                ),
            ));
        }
        r.root_device_name.clone()
    };
    // 5 DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 7 Existence: the manifest, each snapshot (visible to the caller).
    if s3 && !manifest_readable(&r.image_location) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidManifest,
            format!(
                "Unable to read manifest {}: check your manifest path is correct and in the correct region.",
                r.image_location
            ),
        ));
    }
    let mut snapshots: BTreeMap<&str, &Snapshot> = BTreeMap::new();
    for p in &parsed {
        if let Parsed::Ebs { ebs, .. } = p {
            if !ebs.snapshot_id.is_empty() {
                let s = state
                    .snapshots
                    .get(&ebs.snapshot_id)
                    .filter(|s| snapshot_visible(s, ctx.account_id))
                    .ok_or_else(|| Ec2Error::snapshot_not_found(&ebs.snapshot_id))?;
                snapshots.insert(ebs.snapshot_id.as_str(), s);
            }
        }
    }
    // Mappings against their snapshots: sizes, encryption from the snapshot.
    let mut mappings: Vec<Mapping> = Vec::with_capacity(parsed.len());
    for p in &parsed {
        match p {
            // Nothing to suppress in a new image.
            Parsed::NoDevice { .. } => {}
            Parsed::Ephemeral {
                device_name,
                virtual_name,
            } => mappings.push(mapping::ephemeral(device_name, virtual_name)),
            Parsed::Ebs { device_name, ebs } => {
                let snap = snapshots.get(ebs.snapshot_id.as_str()).map(|s| {
                    (
                        s.snapshot_id.as_str(),
                        s.volume_size,
                        s.encrypted,
                        s.kms_key_id.as_str(),
                    )
                });
                mappings.push(mapping::resolve_ebs(device_name, ebs, snap, false)?);
            }
        }
    }
    // 9 State: [unconfirmed] snapshots must be completed (IncorrectState).
    if let Some(s) = snapshots
        .values()
        .find(|s| s.state != SnapshotState::Completed)
    {
        return Err(Ec2Error::new(
            ErrorCode::IncorrectState,
            format!(
                "Snapshot {} is in state '{}'; it must be 'completed' to register an image.",
                s.snapshot_id,
                s.state.as_str()
            ),
        ));
    }
    check_name_free(state, ctx.account_id, &r.name)?;
    // 10 Quotas.
    check_image_quota(state, ctx)?;

    let image_id = ctx.new_id(Kind::Image, state);
    let (location, root_device_type, delay) = if s3 {
        (
            r.image_location.clone(),
            "instance-store",
            ctx.config.register_s3_ms,
        )
    } else {
        // [unconfirmed] EBS AMIs show `<owner-id>/<name>` (EC2_SEMANTICS.md §2.1).
        (
            format!("{}/{}", ctx.account_id, r.name),
            "ebs",
            ctx.config.register_ebs_ms,
        )
    };
    let event = pb::ImageRegistered {
        image_id: image_id.clone(),
        owner_id: ctx.account_id.to_string(),
        name: r.name,
        description: r.description,
        image_location: location,
        architecture,
        image_type: "machine".into(),
        platform: String::new(),
        root_device_type: root_device_type.into(),
        root_device_name,
        block_device_mappings: mappings.iter().map(Into::into).collect(),
        virtualization_type: virtualization,
        kernel_id: r.kernel_id,
        ramdisk_id: r.ramdisk_id,
        boot_mode: r.boot_mode,
        tpm_support: r.tpm_support,
        imds_support: r.imds_support,
        ena_support: tri_encode(r.ena_support),
        sriov_net_support: r.sriov_net_support,
        uefi_data: r.uefi_data,
        // [sim] recorded as given; there are no Marketplace sellers to authorise.
        billing_products: r.billing_products,
        tags: tag_records(&image_tags),
        origin: "register".into(),
        // Never 0: 0 means "when its snapshots complete" (CreateImage).
        available_at_ms: ctx.now_ms.saturating_add(delay).max(1),
        creation_date_ms: ctx.now_ms,
        ..Default::default()
    };
    Ok(Decision::new(
        vec![Payload::ImageRegistered(event)],
        Reply::RegisterImage(pb::RegisterImageResponse { image_id }),
    ))
}

// -------------------------------------------------------------------------------------------
// CreateImage
// -------------------------------------------------------------------------------------------

/// What CreateImage will capture, after the request's mappings are laid over the instance's.
struct Plan<'a> {
    /// Attached EBS volumes to snapshot: (device, volume, delete_on_termination).
    volumes: Vec<(String, &'a Volume, bool)>,
    /// Mappings without a new snapshot (instance store, new empty volumes), by device.
    other: BTreeMap<String, Mapping>,
}

fn mapping_error(message: String) -> Ec2Error {
    Ec2Error::new(ErrorCode::InvalidBlockDeviceMapping, message)
}

/// CreateImage's mapping syntax (before DryRun): no snapshot (neither for an existing device nor
/// for a new one), then [`precheck_ebs`].
fn precheck_create_image_ebs(device: &str, ebs: &EbsBlockDevice) -> Ec2Result<()> {
    if !ebs.snapshot_id.is_empty() {
        return Err(mapping_error(format!(
            "The snapshot of device {device} cannot be specified: CreateImage may only change DeleteOnTermination, drop a device or add empty or instance store volumes."
        )));
    }
    precheck_ebs(device, ebs)
}

/// An existing volume may only have its `DeleteOnTermination` changed (`Encrypted=false` on an
/// encrypted volume is ignored).
fn check_unchanged(device: &str, ebs: &EbsBlockDevice, vol: &Volume) -> Ec2Result<()> {
    let changed = |what: &str, given: String, has: String| {
        mapping_error(format!(
            "The {what} of device {device} cannot be changed by CreateImage (requested {given}, the volume has {has})."
        ))
    };
    if let Some(s) = ebs.volume_size.filter(|s| *s != vol.size) {
        return Err(changed(
            "size",
            format!("{s}GiB"),
            format!("{}GiB", vol.size),
        ));
    }
    if !ebs.volume_type.is_empty() && ebs.volume_type != vol.volume_type {
        return Err(changed(
            "volume type",
            ebs.volume_type.clone(),
            vol.volume_type.clone(),
        ));
    }
    if let Some(i) = ebs.iops.filter(|i| *i != vol.iops) {
        return Err(changed("iops", i.to_string(), vol.iops.to_string()));
    }
    if let Some(t) = ebs.throughput.filter(|t| *t != vol.throughput) {
        return Err(changed(
            "throughput",
            t.to_string(),
            vol.throughput.to_string(),
        ));
    }
    if ebs.encrypted == Some(true) && !vol.encrypted {
        return Err(mapping_error(format!(
            "The volume of device {device} is not encrypted; CreateImage cannot encrypt it (copy the image instead)."
        )));
    }
    Ok(())
}

/// Lays the request's mappings over the instance's devices.
fn plan<'a>(state: &'a State, inst: &Instance, parsed: &[Parsed]) -> Ec2Result<Plan<'a>> {
    let requested: BTreeMap<&str, &Parsed> = parsed.iter().map(|p| (p.device_name(), p)).collect();
    let mut volumes = Vec::new();
    for (device, vol_id) in &inst.volumes {
        let Some(vol) = state.volumes.get(vol_id) else {
            continue;
        };
        let dot = vol
            .attachment
            .as_ref()
            .is_none_or(|a| a.delete_on_termination);
        match requested.get(device.as_str()) {
            None => volumes.push((device.clone(), vol, dot)),
            Some(Parsed::NoDevice { .. }) if *device == inst.root_device_name => {
                // [sim] an EBS-backed image needs its root volume.
                return Err(mapping_error(format!(
                    "The root device {device} cannot be excluded from the image."
                )));
            }
            Some(Parsed::NoDevice { .. }) => {}
            Some(Parsed::Ephemeral { .. }) => {
                return Err(mapping_error(format!(
                    "Device {device} is an EBS volume of the instance; it cannot become an instance store volume."
                )))
            }
            Some(Parsed::Ebs { ebs, .. }) => {
                check_unchanged(device, ebs, vol)?;
                volumes.push((device.clone(), vol, ebs.delete_on_termination.unwrap_or(dot)));
            }
        }
    }
    let mut other = BTreeMap::new();
    for m in &inst.instance_store {
        match requested.get(m.device_name.as_str()) {
            None => {
                other.insert(m.device_name.clone(), m.clone());
            }
            Some(Parsed::NoDevice { .. }) => {}
            Some(Parsed::Ephemeral {
                device_name,
                virtual_name,
            }) => {
                other.insert(
                    device_name.clone(),
                    mapping::ephemeral(device_name, virtual_name),
                );
            }
            Some(Parsed::Ebs { device_name, .. }) => {
                return Err(mapping_error(format!(
                    "Device {device_name} is an instance store volume of the instance; it cannot become an EBS volume."
                )))
            }
        }
    }
    for p in parsed {
        let device = p.device_name();
        let known = inst.volumes.contains_key(device)
            || inst.instance_store.iter().any(|m| m.device_name == device);
        if known {
            continue;
        }
        match p {
            // Nothing to drop.
            Parsed::NoDevice { .. } => {}
            Parsed::Ephemeral {
                device_name,
                virtual_name,
            } => {
                other.insert(
                    device_name.clone(),
                    mapping::ephemeral(device_name, virtual_name),
                );
            }
            Parsed::Ebs { device_name, ebs } => {
                if ebs.volume_size.is_none() {
                    return Err(mapping_error(format!(
                        "The request must contain either a snapshot id or a volume size for device '{device_name}'"
                    )));
                }
                other.insert(
                    device_name.clone(),
                    mapping::resolve_ebs(device_name, ebs, None, false)?,
                );
            }
        }
    }
    Ok(Plan { volumes, other })
}

/// Pending and failed snapshots a volume may have at once (EC2_SEMANTICS.md §6).
fn snapshot_slots(volume_type: &str) -> usize {
    if matches!(volume_type, "st1" | "sc1") {
        1
    } else {
        5
    }
}

/// CreateImage (EC2_SEMANTICS.md §5.2): a `pending` EBS-backed image of a running or stopped
/// instance, one `pending` snapshot per attached EBS volume (after a 60 s shutdown/restart
/// unless `no_reboot` or the instance is stopped), `available` when the last snapshot completes.
/// `[sim]` The instance's own state is not changed by the reboot.
pub fn create_image(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CreateImageRequest,
) -> Ec2Result<Decision> {
    // 2 Missing parameters.
    if r.instance_id.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    if r.name.is_empty() {
        return Err(Ec2Error::missing("Name"));
    }
    // 3 Syntax.
    ids::check_instance_id(&r.instance_id)?;
    check_name(&r.name)?;
    check_description(&r.description)?;
    let parsed = mapping::parse_mapping_overrides(&r.block_device_mappings)?;
    for p in &parsed {
        if let Parsed::Ebs { device_name, ebs } = p {
            precheck_create_image_ebs(device_name, ebs)?;
        }
    }
    let mut spec_tags = tags::from_specifications(&r.tag_specifications, &["image", "snapshot"])?;
    let image_tags = spec_tags.remove("image").unwrap_or_default();
    let snapshot_tags = spec_tags.remove("snapshot").unwrap_or_default();
    // 5 DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 7/8 Existence and ownership: another account's instance is not found.
    let inst = state
        .instances
        .get(&r.instance_id)
        .filter(|i| i.owner_id == ctx.account_id)
        .ok_or_else(|| Ec2Error::instance_not_found(&[r.instance_id.as_str()]))?;
    if inst.root_device_type != "ebs" {
        // [unconfirmed] code (EC2_SEMANTICS.md §5.2).
        return Err(Ec2Error::invalid_value(
            "instanceId",
            &r.instance_id,
            "The instance is not EBS-backed; CreateImage needs an EBS root volume.",
        ));
    }
    let plan = plan(state, inst, &parsed)?;
    // 9 State. [unconfirmed] code.
    if !matches!(inst.state, InstanceState::Running | InstanceState::Stopped) {
        return Err(Ec2Error::new(
            ErrorCode::IncorrectInstanceState,
            format!(
                "The instance '{}' is not in a state from which it can be imaged (state: {}).",
                r.instance_id,
                inst.state.as_str()
            ),
        ));
    }
    if !plan
        .volumes
        .iter()
        .any(|(d, _, _)| *d == inst.root_device_name)
    {
        // [sim] a stopped instance whose root volume was detached.
        return Err(Ec2Error::new(
            ErrorCode::IncorrectInstanceState,
            format!(
                "The instance '{}' has no root volume attached at {}.",
                r.instance_id, inst.root_device_name
            ),
        ));
    }
    check_name_free(state, ctx.account_id, &r.name)?;
    // 10 Quotas.
    for (_, vol, _) in &plan.volumes {
        let slots = snapshot_slots(&vol.volume_type);
        // Pending and failed snapshots, and deleted ones still working in the background.
        let busy = state
            .snapshots
            .values()
            .filter(|s| {
                s.volume_id == vol.volume_id
                    && matches!(s.state, SnapshotState::Pending | SnapshotState::Error)
            })
            .count()
            + state
                .background_snapshots
                .values()
                .filter(|(v, due)| *v == vol.volume_id && *due > ctx.now_ms)
                .count();
        if busy >= slots {
            return Err(Ec2Error::new(
                ErrorCode::ConcurrentSnapshotLimitExceeded,
                format!(
                    "The maximum allowed number of pending snapshots ({slots}) for volume {} has been reached.",
                    vol.volume_id
                ),
            ));
        }
    }
    if r.no_reboot {
        let in_flight = state
            .images
            .values_unordered()
            .filter(|i| {
                i.owner() == ctx.account_id
                    && i.state == ImageState::Pending
                    && i.registered.origin == "create"
                    && i.registered.no_reboot
            })
            .count();
        if in_flight >= ctx.config.max_concurrent_no_reboot {
            return Err(Ec2Error::new(
                ErrorCode::ConcurrentCreateImageNoRebootLimitExceeded,
                format!(
                    "You have reached the limit of {} concurrent CreateImage requests with NoReboot.",
                    ctx.config.max_concurrent_no_reboot
                ),
            ));
        }
    }
    check_image_quota(state, ctx)?;

    let image_id = ctx.new_id(Kind::Image, state);
    // [sim] the shutdown/restart goes before the snapshots; a stopped instance needs none.
    let reboot = !r.no_reboot && inst.state == InstanceState::Running;
    let start = ctx.now_ms.saturating_add(if reboot {
        ctx.config.create_image_reboot_ms
    } else {
        0
    });
    let mut mappings = plan.other;
    let mut snapshot_events = Vec::with_capacity(plan.volumes.len());
    for (device, vol, dot) in plan.volumes {
        let snapshot_id = ctx.new_id(Kind::Snapshot, state);
        snapshot_events.push(Payload::SnapshotCreated(pb::SnapshotCreated {
            snapshot_id: snapshot_id.clone(),
            owner_id: ctx.account_id.to_string(),
            volume_id: vol.volume_id.clone(),
            volume_size: vol.size,
            description: format!("Created by CreateImage({}) for {}", r.instance_id, image_id),
            encrypted: vol.encrypted,
            kms_key_id: vol.kms_key_id.clone(),
            data_encryption_key_id: vol.data_encryption_key_id.clone(),
            tags: tag_records(&snapshot_tags),
            start_time_ms: start,
            complete_at_ms: start.saturating_add(ctx.config.snapshot_ms(vol.changed_bytes)),
            full_snapshot_size_in_bytes: to_i64(vol.written_bytes),
            transferred_bytes: to_i64(vol.changed_bytes),
            for_image_id: image_id.clone(),
            ..Default::default()
        }));
        mappings.insert(
            device.clone(),
            Mapping {
                device_name: device,
                virtual_name: String::new(),
                ebs: true,
                snapshot_id,
                volume_size: vol.size,
                volume_type: vol.volume_type.clone(),
                iops: vol.iops,
                throughput: vol.throughput,
                delete_on_termination: dot,
                encrypted: vol.encrypted,
                kms_key_id: vol.kms_key_id.clone(),
            },
        );
    }
    let registered = pb::ImageRegistered {
        image_id: image_id.clone(),
        owner_id: ctx.account_id.to_string(),
        name: r.name.clone(),
        description: r.description,
        // [unconfirmed] as RegisterImage's EBS AMIs.
        image_location: format!("{}/{}", ctx.account_id, r.name),
        architecture: inst.architecture.clone(),
        image_type: "machine".into(),
        platform: inst.platform.clone(),
        root_device_type: "ebs".into(),
        root_device_name: inst.root_device_name.clone(),
        block_device_mappings: mappings.values().map(Into::into).collect(),
        virtualization_type: inst.virtualization_type.clone(),
        boot_mode: inst.boot_mode.clone(),
        ena_support: tri_encode(inst.ena_support),
        tags: tag_records(&image_tags),
        origin: "create".into(),
        source_instance_id: r.instance_id,
        // 0: available when its snapshots complete (see crate::tick).
        available_at_ms: 0,
        creation_date_ms: ctx.now_ms,
        no_reboot: r.no_reboot,
        ..Default::default()
    };
    let mut events = vec![Payload::ImageRegistered(registered)];
    events.extend(snapshot_events);
    Ok(Decision::new(
        events,
        Reply::CreateImage(pb::CreateImageResponse { image_id }),
    ))
}

// -------------------------------------------------------------------------------------------
// DeregisterImage
// -------------------------------------------------------------------------------------------

/// True if an image other than `except` that is still registered (pending, available,
/// disabled) uses the snapshot.
fn used_by_other_image(state: &State, snapshot_id: &str, except: &str) -> bool {
    state.images.values_unordered().any(|i| {
        i.id() != except
            && matches!(
                i.state,
                ImageState::Pending | ImageState::Available | ImageState::Disabled
            )
            && i.snapshot_ids().any(|s| s == snapshot_id)
    })
}

/// DeregisterImage (EC2_SEMANTICS.md §5.6): the owner's image becomes `deregistered` (visible
/// to the owner for `deregistered_linger_ms`, then forgotten); its name is free at once.
/// Snapshots stay unless `delete_associated_snapshots`; `[sim]` a pending CreateImage's pending
/// snapshots are deleted (the capture stops).
pub fn deregister_image(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::DeregisterImageRequest,
) -> Ec2Result<Decision> {
    if r.image_id.is_empty() {
        return Err(Ec2Error::missing("ImageId"));
    }
    ids::check_image_id(&r.image_id)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let img = state
        .images
        .get(r.image_id.as_str())
        .filter(|i| is_visible(i, ctx.account_id, ctx.membership))
        .ok_or_else(|| Ec2Error::image_not_found(&[r.image_id.as_str()]))?;
    if img.owner() != ctx.account_id {
        // [unconfirmed] code and text.
        return Err(Ec2Error::new(
            ErrorCode::AuthFailure,
            format!("Not authorized for image:{}", r.image_id),
        ));
    }
    if img.state == ImageState::Deregistered {
        // [unconfirmed] code.
        return Err(Ec2Error::new(
            ErrorCode::InvalidAmiIdUnavailable,
            format!("The image id '[{}]' is no longer available", r.image_id),
        ));
    }
    let mut events = vec![Payload::ImageDeregistered(pb::ImageDeregistered {
        image_id: r.image_id.clone(),
        forget_at_ms: ctx.now_ms.saturating_add(ctx.config.deregistered_linger_ms),
    })];
    let mut deleted: BTreeSet<&str> = BTreeSet::new();
    if img.state == ImageState::Pending {
        for s in state
            .snapshots
            .values()
            .filter(|s| s.for_image_id == r.image_id && s.state == SnapshotState::Pending)
        {
            deleted.insert(&s.snapshot_id);
            events.push(Payload::SnapshotDeleted(pb::SnapshotDeleted {
                snapshot_id: s.snapshot_id.clone(),
            }));
        }
    }
    let mut results = Vec::new();
    if r.delete_associated_snapshots {
        let mut seen = BTreeSet::new();
        for sid in img.snapshot_ids() {
            if !seen.insert(sid) {
                continue;
            }
            let return_code = if deleted.contains(sid) {
                "success"
            } else {
                match state.snapshots.get(sid) {
                    // [sim] already gone (a failed image's snapshot deleted by hand).
                    None => "client-error",
                    Some(_) if used_by_other_image(state, sid, &r.image_id) => "skipped",
                    Some(s) if s.owner_id != ctx.account_id => "missing-permissions",
                    Some(_) => {
                        events.push(Payload::SnapshotDeleted(pb::SnapshotDeleted {
                            snapshot_id: sid.to_string(),
                        }));
                        "success"
                    }
                }
            };
            results.push(pb::DeleteSnapshotReturnCode {
                snapshot_id: sid.to_string(),
                return_code: return_code.into(),
            });
        }
    }
    Ok(Decision::new(
        events,
        Reply::DeregisterImage(pb::DeregisterImageResponse {
            r#return: true,
            delete_snapshot_result_set: results,
        }),
    ))
}

// -------------------------------------------------------------------------------------------
// DescribeImages
// -------------------------------------------------------------------------------------------

fn user_id_malformed(value: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::InvalidUserIdMalformed,
        format!("Invalid user id: \"{value}\""),
    )
}

/// The owner alias EC2 shows (`amazon`, `aws-marketplace`, `aws-backup-vault`); customer
/// images have none, and the simulator has only customers.
fn owner_alias(_img: &Image) -> &'static str {
    ""
}

/// `owners` entry `o` selects the image.
fn owner_matches(img: &Image, o: &str, caller: &str) -> bool {
    match o {
        "self" => img.owner() == caller,
        alias if OWNER_ALIASES.contains(&alias) => owner_alias(img) == alias,
        id => img.owner() == id,
    }
}

/// `executable_users` entry `u` selects the image: `all` public ones, `self` (or the caller's
/// own id) those shared with the caller by id, organization or OU, another id those shared with
/// exactly that account (by id, not through an organization or OU; EC2_SEMANTICS.md §5.8).
fn executable_by(img: &Image, u: &str, caller: &str, membership: &crate::Membership) -> bool {
    match u {
        "all" => img.is_public(),
        id if id == "self" || id == caller => crate::sharing::shared_with(img, caller, membership),
        id => img
            .launch_permissions
            .contains(&LaunchPermission::User(id.to_string())),
    }
}

/// The image's values for a (non-tag) DescribeImages filter.
fn filter_values(img: &Image, name: &str) -> Vec<String> {
    let d = &img.registered;
    let one = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            vec![s.to_string()]
        }
    };
    let ebs = || d.block_device_mappings.iter().filter(|m| m.ebs);
    let reason = img.state_reason.as_deref();
    match name {
        "architecture" => one(&d.architecture),
        "block-device-mapping.delete-on-termination" => {
            ebs().map(|m| bool_str(m.delete_on_termination)).collect()
        }
        "block-device-mapping.device-name" => d
            .block_device_mappings
            .iter()
            .map(|m| m.device_name.clone())
            .collect(),
        "block-device-mapping.snapshot-id" => ebs()
            .filter(|m| !m.snapshot_id.is_empty())
            .map(|m| m.snapshot_id.clone())
            .collect(),
        "block-device-mapping.volume-size" => ebs().map(|m| m.volume_size.to_string()).collect(),
        "block-device-mapping.volume-type" => ebs().map(|m| m.volume_type.clone()).collect(),
        "block-device-mapping.encrypted" => ebs().map(|m| bool_str(m.encrypted)).collect(),
        "creation-date" => vec![time::iso(d.creation_date_ms)],
        "description" => one(&d.description),
        "ena-support" => d.ena_support.map(bool_str).into_iter().collect(),
        "hypervisor" => vec![HYPERVISOR.to_string()],
        "image-id" => vec![d.image_id.clone()],
        "image-type" => one(&d.image_type),
        "is-public" => vec![bool_str(img.is_public())],
        "kernel-id" => one(&d.kernel_id),
        "manifest-location" => one(&d.image_location),
        "name" => one(&d.name),
        "owner-alias" => one(owner_alias(img)),
        "owner-id" => vec![d.owner_id.clone()],
        "platform" => one(&d.platform),
        // [sim] no product codes.
        "product-code" => Vec::new(),
        "ramdisk-id" => one(&d.ramdisk_id),
        "root-device-name" => one(&d.root_device_name),
        "root-device-type" => one(&d.root_device_type),
        "source-image-id" => one(&d.source_image_id),
        "source-image-region" => one(&d.source_region),
        "source-instance-id" => one(&d.source_instance_id),
        "state" => vec![img.state.as_str().to_string()],
        "state-reason-code" => reason.map(|r| one(&r.0)).unwrap_or_default(),
        "state-reason-message" => reason.map(|r| one(&r.1)).unwrap_or_default(),
        "sriov-net-support" => one(&d.sriov_net_support),
        "virtualization-type" => one(&d.virtualization_type),
        _ => Vec::new(),
    }
}

/// Renders an image as DescribeImages shows it to `ctx.account_id`: tags and
/// `LastLaunchedTime` for the owner only (`[sim]`); `LastLaunchedTime` counts launches at least
/// 24 h old (EC2 reports them with that delay).
pub fn render_image(state: &State, img: &Image, ctx: &ReadCtx<'_>) -> pb::Image {
    let d = &img.registered;
    let owner = img.owner() == ctx.account_id;
    let windows = d.platform == "windows";
    let last_launched = if owner {
        state
            .instances
            .values()
            .filter(|i| {
                i.image_id == d.image_id
                    && i.launch_time_ms.saturating_add(LAST_LAUNCHED_LAG_MS) <= ctx.now_ms
            })
            .map(|i| i.launch_time_ms)
            .max()
            .map(time::iso)
            .unwrap_or_default()
    } else {
        String::new()
    };
    pb::Image {
        image_id: d.image_id.clone(),
        image_location: d.image_location.clone(),
        state: img.state.as_str().to_string(),
        state_reason: img
            .state_reason
            .as_deref()
            .map(|(code, message)| pb::StateReason {
                code: code.clone(),
                message: message.clone(),
            }),
        owner_id: d.owner_id.clone(),
        image_owner_alias: owner_alias(img).to_string(),
        creation_date: time::iso(d.creation_date_ms),
        public: img.is_public(),
        name: d.name.clone(),
        description: d.description.clone(),
        architecture: d.architecture.clone(),
        image_type: d.image_type.clone(),
        platform: d.platform.clone(),
        platform_details: if windows { "Windows" } else { "Linux/UNIX" }.to_string(),
        usage_operation: if windows {
            "RunInstances:0002"
        } else {
            "RunInstances"
        }
        .to_string(),
        root_device_type: d.root_device_type.clone(),
        root_device_name: d.root_device_name.clone(),
        block_device_mappings: d
            .block_device_mappings
            .iter()
            .map(mapping::render)
            .collect(),
        virtualization_type: d.virtualization_type.clone(),
        hypervisor: HYPERVISOR.to_string(),
        boot_mode: d.boot_mode.clone(),
        tpm_support: d.tpm_support.clone(),
        imds_support: d.imds_support.clone(),
        ena_support: d.ena_support,
        sriov_net_support: d.sriov_net_support.clone(),
        kernel_id: d.kernel_id.clone(),
        ramdisk_id: d.ramdisk_id.clone(),
        product_codes: Vec::new(),
        tags: if owner {
            tags::render(&img.tags)
        } else {
            Vec::new()
        },
        deprecation_time: img.deprecation_time_ms.map(time::iso).unwrap_or_default(),
        deregistration_protection: "disabled".to_string(),
        last_launched_time: last_launched,
        source_instance_id: d.source_instance_id.clone(),
        source_image_id: d.source_image_id.clone(),
        source_image_region: d.source_region.clone(),
    }
}

/// DescribeImages (EC2_SEMANTICS.md §5.8): by default the caller's images, public ones and
/// ones shared with the caller, in id order, paginated. Explicit ids must all be visible
/// (`InvalidAMIID.NotFound` naming the others). Disabled images only with `include_disabled`;
/// deregistered ones stay visible to their owner until forgotten. `[sim]` Deprecation is not
/// modelled yet, so `include_deprecated` changes nothing.
pub fn describe_images(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::DescribeImagesRequest,
) -> Ec2Result<pb::DescribeImagesResponse> {
    // 3 Syntax.
    for id in &r.image_ids {
        ids::check_image_id(id)?;
    }
    for o in &r.owners {
        if !(o == "self" || OWNER_ALIASES.contains(&o.as_str()) || ids::is_account_id(o)) {
            return Err(user_id_malformed(o));
        }
    }
    for u in &r.executable_users {
        if !(u == "self" || u == "all" || ids::is_account_id(u)) {
            return Err(user_id_malformed(u));
        }
    }
    filter::check_filters(&r.filters, FILTERS)?;
    // 4 Combinations.
    let page = filter::page(r.max_results, &r.next_token, !r.image_ids.is_empty(), 5)?;
    // 5 DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let caller = ctx.account_id;
    let membership = ctx.membership;
    let visible = |id: &str| {
        state
            .images
            .get(id)
            .map(|i| &**i)
            .filter(|i| is_visible(i, caller, membership))
    };
    // 7 Existence of explicit ids.
    let mut missing: Vec<&str> = Vec::new();
    for id in &r.image_ids {
        if visible(id).is_none() && !missing.contains(&id.as_str()) {
            missing.push(id);
        }
    }
    if !missing.is_empty() {
        return Err(Ec2Error::image_not_found(&missing));
    }
    let candidates: Box<dyn Iterator<Item = &Image>> = if r.image_ids.is_empty() {
        Box::new(
            state
                .images
                .values()
                .map(|i| &**i)
                .filter(|i| is_visible(i, caller, membership)),
        )
    } else {
        let wanted: BTreeSet<&str> = r.image_ids.iter().map(String::as_str).collect();
        Box::new(wanted.into_iter().filter_map(visible))
    };
    let no_tags = Tags::new();
    let selected = candidates
        .filter(|i| i.state != ImageState::Disabled || r.include_disabled)
        .filter(|i| r.owners.is_empty() || r.owners.iter().any(|o| owner_matches(i, o, caller)))
        .filter(|i| {
            r.executable_users.is_empty()
                || r.executable_users
                    .iter()
                    .any(|u| executable_by(i, u, caller, membership))
        })
        .filter(|i| {
            let tags = if i.owner() == caller {
                &i.tags
            } else {
                &no_tags
            };
            filter::matches(&r.filters, tags, |name| filter_values(i, name))
        });
    let (images, next_token) = filter::paginate(
        selected.map(|i| (i.id().to_string(), render_image(state, i, ctx))),
        &page,
    );
    Ok(pb::DescribeImagesResponse { images, next_token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{code, Harness, OTHER, OWNER, T0};
    use crate::timing::gib;
    use crate::{Answer, Command, Query};

    const THIRD: &str = "777788889999";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/0e5a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b";

    // ---- fixtures ------------------------------------------------------------------------

    fn snap_id(n: u64) -> String {
        format!("snap-{n:017x}")
    }

    /// A volume `vol_id` of `size` GiB with a snapshot `id` of it (completed or pending).
    fn snapshot_events(
        id: &str,
        owner: &str,
        size: i32,
        encrypted: bool,
        done: bool,
    ) -> Vec<Payload> {
        let vol = format!("vol-{}", id.trim_start_matches("snap-"));
        let mut v = vec![
            Payload::VolumeCreated(pb::VolumeCreated {
                volume_id: vol.clone(),
                owner_id: owner.into(),
                availability_zone: "us-east-1a".into(),
                size,
                volume_type: "gp3".into(),
                iops: 3000,
                throughput: 125,
                encrypted,
                kms_key_id: if encrypted { KEY.into() } else { String::new() },
                create_time_ms: T0,
                available_at_ms: T0,
                written_bytes: gib(size),
                ..Default::default()
            }),
            Payload::VolumeAvailable(pb::VolumeAvailable {
                volume_id: vol.clone(),
            }),
            Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: id.into(),
                owner_id: owner.into(),
                volume_id: vol,
                volume_size: size,
                encrypted,
                kms_key_id: if encrypted { KEY.into() } else { String::new() },
                start_time_ms: T0,
                complete_at_ms: if done { T0 } else { T0 + 3_600_000 },
                full_snapshot_size_in_bytes: gib(size) as i64,
                transferred_bytes: gib(size) as i64,
                ..Default::default()
            }),
        ];
        if done {
            v.push(Payload::SnapshotCompleted(pb::SnapshotCompleted {
                snapshot_id: id.into(),
            }));
        }
        v
    }

    fn completed_snapshot(id: &str, owner: &str, size: i32) -> Vec<Payload> {
        snapshot_events(id, owner, size, false, true)
    }

    /// One EBS volume of an instance.
    #[derive(Clone, Copy)]
    struct V {
        device: &'static str,
        size: i32,
        vtype: &'static str,
        encrypted: bool,
    }

    const ROOT: V = V {
        device: "/dev/xvda",
        size: 8,
        vtype: "gp3",
        encrypted: false,
    };
    const DATA: V = V {
        device: "/dev/sdf",
        size: 100,
        vtype: "gp2",
        encrypted: true,
    };

    fn inst_id(n: u64) -> String {
        format!("i-{n:017x}")
    }

    fn vol_of(n: u64, k: usize) -> String {
        format!("vol-{:017x}", n * 100 + k as u64)
    }

    /// An instance `i-…n` of `owner` in `state`, with `vols` attached (volume k is `vol_of(n, k)`).
    fn instance(n: u64, owner: &str, state: &str, root_type: &str, vols: &[V]) -> Vec<Payload> {
        let id = inst_id(n);
        let mut v = vec![Payload::InstanceLaunched(pb::InstanceLaunched {
            instance_id: id.clone(),
            reservation_id: format!("r-{n:017x}"),
            owner_id: owner.into(),
            image_id: "ami-0000000000000abcd".into(),
            instance_type: "m5.large".into(),
            availability_zone: "us-east-1a".into(),
            architecture: "arm64".into(),
            root_device_type: root_type.into(),
            root_device_name: "/dev/xvda".into(),
            virtualization_type: "hvm".into(),
            platform: "windows".into(),
            ena_support: 2,
            boot_mode: "uefi".into(),
            instance_store: vec![pb::MappingRecord {
                device_name: "/dev/sdb".into(),
                virtual_name: "ephemeral0".into(),
                ..Default::default()
            }],
            launch_time_ms: T0,
            running_at_ms: T0 + 10_000,
            ..Default::default()
        })];
        for (k, vol) in vols.iter().enumerate() {
            let vid = vol_of(n, k);
            v.push(Payload::VolumeCreated(pb::VolumeCreated {
                volume_id: vid.clone(),
                owner_id: owner.into(),
                availability_zone: "us-east-1a".into(),
                size: vol.size,
                volume_type: vol.vtype.into(),
                iops: if vol.vtype == "gp3" { 3000 } else { 300 },
                throughput: if vol.vtype == "gp3" { 125 } else { 0 },
                encrypted: vol.encrypted,
                kms_key_id: if vol.encrypted {
                    KEY.into()
                } else {
                    String::new()
                },
                data_encryption_key_id: if vol.encrypted {
                    "dek-0001".into()
                } else {
                    String::new()
                },
                create_time_ms: T0,
                available_at_ms: T0,
                written_bytes: gib(vol.size),
                attach_to_instance_id: id.clone(),
                attach_device: vol.device.into(),
                delete_on_termination: vol.device == "/dev/xvda",
                ..Default::default()
            }));
            v.push(Payload::VolumeAvailable(pb::VolumeAvailable {
                volume_id: vid,
            }));
        }
        v.push(Payload::InstanceStateChanged(pb::InstanceStateChanged {
            instance_id: id,
            state: state.into(),
            ..Default::default()
        }));
        v
    }

    fn ebs_mapping(device: &str, snapshot: &str) -> pb::BlockDeviceMapping {
        pb::BlockDeviceMapping {
            device_name: device.into(),
            ebs: Some(EbsBlockDevice {
                snapshot_id: snapshot.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ebs_request(name: &str, snapshot: &str) -> pb::RegisterImageRequest {
        pb::RegisterImageRequest {
            name: name.into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![ebs_mapping("/dev/xvda", snapshot)],
            architecture: "x86_64".into(),
            virtualization_type: "hvm".into(),
            ..Default::default()
        }
    }

    fn register(h: &mut Harness, account: &str, r: pb::RegisterImageRequest) -> Ec2Result<String> {
        match h.when(account, Command::RegisterImage(r))?.reply {
            Reply::RegisterImage(x) => Ok(x.image_id),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn create(h: &mut Harness, account: &str, r: pb::CreateImageRequest) -> Ec2Result<String> {
        match h.when(account, Command::CreateImage(r))?.reply {
            Reply::CreateImage(x) => Ok(x.image_id),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn create_request(n: u64, name: &str) -> pb::CreateImageRequest {
        pb::CreateImageRequest {
            instance_id: inst_id(n),
            name: name.into(),
            ..Default::default()
        }
    }

    fn deregister(id: &str, delete_snapshots: bool) -> Command {
        Command::DeregisterImage(pb::DeregisterImageRequest {
            image_id: id.into(),
            delete_associated_snapshots: delete_snapshots,
            dry_run: false,
        })
    }

    /// Given: an available EBS image `name` of `owner` on a fresh 8 GiB snapshot.
    fn given_image(h: &mut Harness, owner: &str, name: &str) -> String {
        let sid = snap_id(h.log.len() as u64 + 1);
        h.given(completed_snapshot(&sid, owner, 8));
        let id = register(h, owner, ebs_request(name, &sid)).unwrap();
        h.advance(h.config.register_ebs_ms);
        id
    }

    fn describe(
        h: &Harness,
        account: &str,
        r: pb::DescribeImagesRequest,
    ) -> Ec2Result<pb::DescribeImagesResponse> {
        match h.read(account, Query::DescribeImages(r))? {
            Answer::DescribeImages(d) => Ok(d),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn ids_of(r: &pb::DescribeImagesResponse) -> Vec<String> {
        r.images.iter().map(|i| i.image_id.clone()).collect()
    }

    fn describe_one(h: &Harness, account: &str, id: &str) -> pb::Image {
        let r = describe(
            h,
            account,
            pb::DescribeImagesRequest {
                image_ids: vec![id.into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.images.len(), 1);
        r.images[0].clone()
    }

    fn filter(name: &str, values: &[&str]) -> pb::Filter {
        pb::Filter {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Then: `cmd` fails with `expected` and writes nothing.
    fn rejected(h: &mut Harness, account: &str, cmd: Command, expected: ErrorCode) -> Ec2Error {
        let (len, digest) = (h.log.len(), h.state.digest());
        let e = h.when(account, cmd).unwrap_err();
        assert_eq!(e.code, expected, "{e}");
        assert_eq!(h.log.len(), len, "an error wrote events");
        assert_eq!(h.state.digest(), digest);
        e
    }

    fn share(h: &mut Harness, id: &str, p: LaunchPermission) {
        // [sim] no sharing events yet (ModifyImageAttribute is a later issue): set the projection.
        if let Some(img) = h.state.image_mut(id) {
            img.launch_permissions.insert(p);
        }
    }

    fn image<'a>(h: &'a Harness, id: &str) -> &'a Image {
        h.state.images.get(id).expect("image in state")
    }

    // ---- RegisterImage -------------------------------------------------------------------

    #[test]
    fn register_ebs_image_is_pending_then_available_after_2_s() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let id = register(&mut h, OWNER, ebs_request("web-1", &snap_id(1))).unwrap();
        assert!(ids::is_valid(Kind::Image, &id) && id.len() == 21, "{id}");
        let img = describe_one(&h, OWNER, &id);
        assert_eq!(img.state, "pending");
        assert_eq!(img.root_device_type, "ebs");
        assert_eq!(img.owner_id, OWNER);
        assert!(!img.public);
        assert!(h.advance(1_999).is_empty());
        let fired = h.advance(1);
        assert_eq!(
            fired,
            vec![Payload::ImageAvailable(pb::ImageAvailable {
                image_id: id.clone()
            })]
        );
        assert_eq!(describe_one(&h, OWNER, &id).state, "available");
        h.assert_replay_equals_live();
    }

    #[test]
    fn register_records_the_request_as_image_registered() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web (v1) [x] ./-'@_", &snap_id(1));
        r.description = "my web server".into();
        r.boot_mode = "uefi".into();
        r.tpm_support = "v2.0".into();
        r.imds_support = "v2.0".into();
        r.ena_support = Some(true);
        r.sriov_net_support = "simple".into();
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "image".into(),
            tags: vec![pb::Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
        }];
        let d = h.when(OWNER, Command::RegisterImage(r)).unwrap();
        let [Payload::ImageRegistered(e)] = d.events.as_slice() else {
            panic!("{:?}", d.events)
        };
        assert_eq!(e.origin, "register");
        assert_eq!(e.owner_id, OWNER);
        assert_eq!(e.image_type, "machine");
        assert_eq!(e.platform, "");
        assert_eq!(e.available_at_ms, T0 + 2_000);
        assert_eq!(e.creation_date_ms, T0);
        assert_eq!(e.ena_support, 2);
        assert_eq!(
            e.tags,
            vec![pb::TagRecord {
                key: "env".into(),
                value: "prod".into()
            }]
        );
        let m = &e.block_device_mappings[0];
        assert_eq!(
            (
                m.snapshot_id.as_str(),
                m.volume_size,
                m.volume_type.as_str()
            ),
            (snap_id(1).as_str(), 8, "gp3")
        );
        assert!(m.delete_on_termination && !m.encrypted);
    }

    #[test]
    fn unconfirmed_register_ebs_image_location_is_owner_slash_name() {
        let mut h = Harness::new();
        let id = given_image(&mut h, OWNER, "web-1");
        assert_eq!(
            describe_one(&h, OWNER, &id).image_location,
            format!("{OWNER}/web-1")
        );
    }

    #[test]
    fn register_defaults_to_i386_and_paravirtual() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("plain", &snap_id(1));
        r.architecture.clear();
        r.virtualization_type.clear();
        let id = register(&mut h, OWNER, r).unwrap();
        let img = describe_one(&h, OWNER, &id);
        assert_eq!(
            (img.architecture.as_str(), img.virtualization_type.as_str()),
            ("i386", "paravirtual")
        );
    }

    #[test]
    fn register_requires_a_name() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let e = rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("", &snap_id(1))),
            ErrorCode::MissingParameter,
        );
        assert_eq!(e.message, "The request must contain the parameter Name");
    }

    #[test]
    fn register_malformed_names_are_invalid_ami_name_malformed() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        for bad in ["ab", &"x".repeat(129), "web*1", "naïve", "a\tb", "web#1"] {
            rejected(
                &mut h,
                OWNER,
                Command::RegisterImage(ebs_request(bad, &snap_id(1))),
                ErrorCode::InvalidAmiNameMalformed,
            );
        }
        assert!(register(&mut h, OWNER, ebs_request(&"x".repeat(128), &snap_id(1))).is_ok());
        assert!(register(&mut h, OWNER, ebs_request("abc", &snap_id(1))).is_ok());
    }

    #[test]
    fn register_description_over_255_is_invalid_parameter_value() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        r.description = "d".repeat(256);
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r.clone()),
            ErrorCode::InvalidParameterValue,
        );
        r.description = "d".repeat(255);
        assert!(register(&mut h, OWNER, r).is_ok());
    }

    #[test]
    fn unconfirmed_register_without_location_or_root_device_is_missing_parameter() {
        let mut h = Harness::new();
        let r = pb::RegisterImageRequest {
            name: "web-1".into(),
            ..Default::default()
        };
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::MissingParameter,
        );
    }

    #[test]
    fn unconfirmed_register_mappings_without_root_device_name_is_invalid_parameter_combination() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        r.root_device_name.clear();
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidParameterCombination,
        );
    }

    #[test]
    fn unconfirmed_register_root_device_without_snapshot_is_invalid_block_device_mapping() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        // Root device not among the mappings.
        let mut r = ebs_request("web-1", &snap_id(1));
        r.root_device_name = "/dev/sda1".into();
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        // Root device mapped to an empty volume.
        let mut r = ebs_request("web-1", &snap_id(1));
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                volume_size: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        }];
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        // Root device an instance store volume.
        let mut r = ebs_request("web-1", &snap_id(1));
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            virtual_name: "ephemeral0".into(),
            ..Default::default()
        }];
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
    }

    #[test]
    fn register_bad_enums_are_invalid_parameter_value() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        type Edit = fn(&mut pb::RegisterImageRequest);
        let cases: &[(&str, Edit)] = &[
            ("architecture", |r| r.architecture = "amd64".into()),
            ("virtualization", |r| r.virtualization_type = "HVM".into()),
            ("boot mode", |r| r.boot_mode = "bios".into()),
            ("tpm", |r| r.tpm_support = "v1.2".into()),
            ("imds", |r| r.imds_support = "v1.0".into()),
            ("sriov", |r| r.sriov_net_support = "complex".into()),
            ("sriov on paravirtual", |r| {
                r.virtualization_type = "paravirtual".into();
                r.sriov_net_support = "simple".into();
            }),
            ("uefi data", |r| r.uefi_data = "A".repeat(MAX_UEFI_DATA + 1)),
            ("kernel id", |r| r.kernel_id = "ami-12345678".into()),
            ("ramdisk id", |r| r.ramdisk_id = "ari-xyz".into()),
        ];
        for (what, edit) in cases {
            let mut r = ebs_request("web-1", &snap_id(1));
            edit(&mut r);
            let e = h.when(OWNER, Command::RegisterImage(r)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParameterValue, "{what}: {e}");
        }
        assert_eq!(h.log.len(), 4, "nothing written");
        let mut r = ebs_request("web-1", &snap_id(1));
        r.architecture = "arm64_mac".into();
        r.uefi_data = "A".repeat(MAX_UEFI_DATA);
        r.kernel_id = "aki-12345678".into();
        r.ramdisk_id = "ari-0123456789abcdef0".into();
        assert!(register(&mut h, OWNER, r).is_ok());
    }

    #[test]
    fn register_s3_image_is_instance_store_and_available_after_30_s() {
        let mut h = Harness::new();
        let r = pb::RegisterImageRequest {
            name: "bundle-1".into(),
            image_location: "my-bucket/images/web/image.manifest.xml".into(),
            block_device_mappings: vec![pb::BlockDeviceMapping {
                device_name: "/dev/sdb".into(),
                virtual_name: "ephemeral0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let id = register(&mut h, OWNER, r).unwrap();
        let img = describe_one(&h, OWNER, &id);
        assert_eq!(img.root_device_type, "instance-store");
        assert_eq!(img.root_device_name, "/dev/sda1");
        assert_eq!(
            img.image_location,
            "my-bucket/images/web/image.manifest.xml"
        );
        // [sim] x86_64 unless given (EC2 takes the manifest's).
        assert_eq!(img.architecture, "x86_64");
        assert_eq!(img.virtualization_type, "paravirtual");
        assert_eq!(img.block_device_mappings[0].virtual_name, "ephemeral0");
        assert!(h.advance(29_999).is_empty());
        assert_eq!(h.advance(1).len(), 1);
        assert_eq!(describe_one(&h, OWNER, &id).state, "available");
        h.assert_replay_equals_live();
    }

    #[test]
    fn register_s3_unreadable_manifest_is_invalid_manifest() {
        let mut h = Harness::new();
        for loc in [
            "manifest.xml",
            "my-bucket/image.tar",
            "B/x/image.manifest.xml",
            "my-bucket//image.manifest.xml",
        ] {
            let r = pb::RegisterImageRequest {
                name: "bundle-1".into(),
                image_location: loc.into(),
                ..Default::default()
            };
            rejected(
                &mut h,
                OWNER,
                Command::RegisterImage(r),
                ErrorCode::InvalidManifest,
            );
        }
    }

    #[test]
    fn sim_register_s3_with_an_ebs_root_mapping_is_invalid_parameter_combination() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let r = pb::RegisterImageRequest {
            name: "bundle-1".into(),
            image_location: "my-bucket/img/image.manifest.xml".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![ebs_mapping("/dev/xvda", &snap_id(1))],
            ..Default::default()
        };
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidParameterCombination,
        );
    }

    #[test]
    fn register_tag_specifications_take_image_only() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "snapshot".into(),
            tags: vec![],
        }];
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r.clone()),
            ErrorCode::InvalidParameterValue,
        );
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "image".into(),
            tags: vec![pb::Tag {
                key: "aws:x".into(),
                value: "y".into(),
            }],
        }];
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn register_dry_run_comes_after_syntax_and_before_existence() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        r.dry_run = true;
        let e = rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r.clone()),
            ErrorCode::DryRunOperation,
        );
        assert_eq!(
            e.message,
            "Request would have succeeded, but DryRun flag is set."
        );
        // Syntax first.
        r.name = "x".into();
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r.clone()),
            ErrorCode::InvalidAmiNameMalformed,
        );
        // Existence after.
        let mut r = ebs_request("web-1", &snap_id(99));
        r.dry_run = true;
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::DryRunOperation,
        );
    }

    #[test]
    fn register_unknown_or_invisible_snapshot_is_not_found() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OTHER, 8));
        let e = rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("web-1", &snap_id(2))),
            ErrorCode::InvalidSnapshotNotFound,
        );
        assert_eq!(
            e.message,
            format!("The snapshot '{}' does not exist.", snap_id(2))
        );
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("web-1", &snap_id(1))),
            ErrorCode::InvalidSnapshotNotFound,
        );
        // A malformed snapshot id is a syntax error ([sim] InvalidParameterValue).
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("web-1", "snap-xyz")),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn register_from_a_snapshot_shared_with_the_caller_or_public() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OTHER, 8));
        h.given(completed_snapshot(&snap_id(2), OTHER, 8));
        // [sim] no snapshot-sharing events yet: set the projection.
        if let Some(s) = h.state.snapshots.get_mut(&snap_id(1)) {
            s.create_volume_permissions.insert(OWNER.to_string());
        }
        if let Some(s) = h.state.snapshots.get_mut(&snap_id(2)) {
            s.public = true;
        }
        let a = register(&mut h, OWNER, ebs_request("shared-1", &snap_id(1))).unwrap();
        let b = register(&mut h, OWNER, ebs_request("public-1", &snap_id(2))).unwrap();
        assert_eq!(image(&h, &a).owner(), OWNER);
        assert_eq!(image(&h, &b).owner(), OWNER);
        assert!(register(&mut h, THIRD, ebs_request("nope-1", &snap_id(1))).is_err());
    }

    #[test]
    fn unconfirmed_register_from_pending_snapshot_is_incorrect_state() {
        let mut h = Harness::new();
        h.given(snapshot_events(&snap_id(1), OWNER, 8, false, false));
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("web-1", &snap_id(1))),
            ErrorCode::IncorrectState,
        );
    }

    #[test]
    fn register_mapping_smaller_than_its_snapshot_is_invalid_block_device_mapping() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        if let Some(ebs) = r.block_device_mappings[0].ebs.as_mut() {
            ebs.volume_size = Some(5);
        }
        let e = rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r.clone()),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        assert_eq!(
            e.message,
            format!(
                "Volume of size 5GB is smaller than snapshot '{}', expect size >= 8GB",
                snap_id(1)
            )
        );
        if let Some(ebs) = r.block_device_mappings[0].ebs.as_mut() {
            ebs.volume_size = Some(20);
        }
        let id = register(&mut h, OWNER, r).unwrap();
        assert_eq!(
            image(&h, &id).registered.block_device_mappings[0].volume_size,
            20
        );
    }

    #[test]
    fn register_mapping_refuses_encrypted_with_snapshot_and_kms_key() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        if let Some(ebs) = r.block_device_mappings[0].ebs.as_mut() {
            ebs.encrypted = Some(false);
        }
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        let mut r = ebs_request("web-1", &snap_id(1));
        r.block_device_mappings.push(pb::BlockDeviceMapping {
            device_name: "/dev/sdf".into(),
            ebs: Some(EbsBlockDevice {
                volume_size: Some(10),
                encrypted: Some(true),
                kms_key_id: KEY.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidBlockDeviceMapping,
        );
        // A bad volume type is caught before DryRun.
        let mut r = ebs_request("web-1", &snap_id(1));
        r.dry_run = true;
        if let Some(ebs) = r.block_device_mappings[0].ebs.as_mut() {
            ebs.volume_type = "gp9".into();
        }
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(r),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn register_takes_encryption_from_the_snapshots() {
        let mut h = Harness::new();
        h.given(snapshot_events(&snap_id(1), OWNER, 8, true, true));
        let mut r = ebs_request("secure-1", &snap_id(1));
        r.block_device_mappings.push(pb::BlockDeviceMapping {
            device_name: "/dev/sdf".into(),
            ebs: Some(EbsBlockDevice {
                volume_size: Some(10),
                encrypted: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = register(&mut h, OWNER, r).unwrap();
        let img = describe_one(&h, OWNER, &id);
        let root = img.block_device_mappings[0].ebs.clone().unwrap();
        assert_eq!(
            (root.encrypted, root.kms_key_id.as_str()),
            (Some(true), KEY)
        );
        let data = img.block_device_mappings[1].ebs.clone().unwrap();
        assert_eq!(
            (data.encrypted, data.snapshot_id.as_str(), data.volume_size),
            (Some(true), "", Some(10))
        );
    }

    #[test]
    fn register_duplicate_name_per_owner() {
        let mut h = Harness::new();
        let first = given_image(&mut h, OWNER, "web-1");
        h.given(completed_snapshot(&snap_id(900), OWNER, 8));
        let e = rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("web-1", &snap_id(900))),
            ErrorCode::InvalidAmiNameDuplicate,
        );
        assert_eq!(
            e.message,
            format!("AMI name web-1 is already in use by AMI {first}")
        );
        // Another account may use the name.
        h.given(completed_snapshot(&snap_id(901), OTHER, 8));
        assert!(register(&mut h, OTHER, ebs_request("web-1", &snap_id(901))).is_ok());
    }

    #[test]
    fn register_over_the_ami_quota_is_resource_limit_exceeded() {
        let mut h = Harness::new();
        h.config.max_images = 2;
        let a = given_image(&mut h, OWNER, "web-1");
        given_image(&mut h, OWNER, "web-2");
        h.given(completed_snapshot(&snap_id(900), OWNER, 8));
        rejected(
            &mut h,
            OWNER,
            Command::RegisterImage(ebs_request("web-3", &snap_id(900))),
            ErrorCode::ResourceLimitExceeded,
        );
        // Deregistered images do not count; others' images do not count.
        h.given(completed_snapshot(&snap_id(901), OTHER, 8));
        assert!(register(&mut h, OTHER, ebs_request("web-3", &snap_id(901))).is_ok());
        h.when(OWNER, deregister(&a, false)).unwrap();
        assert!(register(&mut h, OWNER, ebs_request("web-3", &snap_id(900))).is_ok());
    }

    // ---- CreateImage ---------------------------------------------------------------------

    #[test]
    fn create_image_is_available_only_after_all_its_snapshots_complete() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        let id = create(&mut h, OWNER, create_request(1, "web-from-instance")).unwrap();
        assert_eq!(describe_one(&h, OWNER, &id).state, "pending");
        let snaps: Vec<Snapshot> = h
            .state
            .snapshots
            .values()
            .filter(|s| s.for_image_id == id)
            .cloned()
            .collect();
        assert_eq!(snaps.len(), 2);
        let reboot = h.config.create_image_reboot_ms;
        let root_done = reboot + h.config.snapshot_ms(gib(8));
        let data_done = reboot + h.config.snapshot_ms(gib(100));
        for s in &snaps {
            assert_eq!(s.start_time_ms, T0 + reboot, "[sim] the reboot goes first");
        }
        h.advance(root_done);
        assert_eq!(
            describe_one(&h, OWNER, &id).state,
            "pending",
            "one snapshot still pending"
        );
        let fired = h.advance(data_done - root_done - 1);
        assert!(fired.is_empty());
        let fired = h.advance(1);
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert!(matches!(fired[0], Payload::SnapshotCompleted(_)));
        assert_eq!(
            fired[1],
            Payload::ImageAvailable(pb::ImageAvailable {
                image_id: id.clone()
            })
        );
        assert_eq!(describe_one(&h, OWNER, &id).state, "available");
        h.assert_replay_equals_live();
    }

    /// The writer fires timers in place (`tick_into`, applied once); a replay applies the same
    /// payloads one by one. Both must leave the same state, and fire the same events as the
    /// `Tick` command, also when one timer's event changes what a later one fires (the last
    /// snapshot of a CreateImage makes its image available in the same tick).
    #[test]
    fn ticking_in_place_equals_deciding_the_tick_and_applying_its_events() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        create(&mut h, OWNER, create_request(1, "web-from-instance")).unwrap();
        let sid = snap_id(h.log.len() as u64 + 1);
        h.given(completed_snapshot(&sid, OWNER, 8));
        register(&mut h, OWNER, ebs_request("registered", &sid)).unwrap();
        h.now_ms += 3_600_000;
        let mut ctx = Ctx::new(
            h.region,
            ids::SYSTEM_ACCOUNT,
            h.now_ms,
            &mut h.rng,
            &h.config,
        );
        let decided = crate::tick::tick(&h.state, &mut ctx).unwrap().events;
        let mut in_place = h.state.clone();
        let fired = crate::tick::tick_into(&mut in_place, &mut ctx);
        assert_eq!(fired, decided);
        assert!(
            fired.len() >= 4
                && fired
                    .iter()
                    .filter(|p| matches!(p, Payload::ImageAvailable(_)))
                    .count()
                    == 2,
            "two snapshots and two images: {fired:?}"
        );
        let mut applied = h.state.clone();
        for p in &fired {
            applied.apply_payload(p);
        }
        assert!(in_place.timers.is_empty());
        assert_eq!(in_place, applied);
    }

    #[test]
    fn sim_create_image_does_not_change_the_instance_state() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        let d = h
            .when(OWNER, Command::CreateImage(create_request(1, "web-1")))
            .unwrap();
        assert!(d
            .events
            .iter()
            .all(|e| matches!(e, Payload::ImageRegistered(_) | Payload::SnapshotCreated(_))));
        assert_eq!(h.state.instances[&inst_id(1)].state, InstanceState::Running);
        h.advance(3_600_000);
        assert_eq!(h.state.instances[&inst_id(1)].state, InstanceState::Running);
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_image_with_no_reboot_or_from_a_stopped_instance_snapshots_at_once() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        h.given(instance(2, OWNER, "stopped", "ebs", &[ROOT]));
        let mut r = create_request(1, "no-reboot");
        r.no_reboot = true;
        let a = create(&mut h, OWNER, r).unwrap();
        let b = create(&mut h, OWNER, create_request(2, "stopped")).unwrap();
        for id in [&a, &b] {
            let s = h
                .state
                .snapshots
                .values()
                .find(|s| &s.for_image_id == id)
                .unwrap();
            assert_eq!(s.start_time_ms, T0);
            assert_eq!(s.complete_at_ms, T0 + h.config.snapshot_ms(gib(8)));
        }
        assert!(image(&h, &a).registered.no_reboot);
        assert!(!image(&h, &b).registered.no_reboot);
        h.advance(h.config.snapshot_ms(gib(8)));
        assert_eq!(describe_one(&h, OWNER, &a).state, "available");
        assert_eq!(describe_one(&h, OWNER, &b).state, "available");
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_image_inherits_the_instance_attributes() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        let mut r = create_request(1, "web-1");
        r.description = "from i-1".into();
        let id = create(&mut h, OWNER, r).unwrap();
        let img = describe_one(&h, OWNER, &id);
        assert_eq!(img.architecture, "arm64");
        assert_eq!(img.virtualization_type, "hvm");
        assert_eq!(img.root_device_name, "/dev/xvda");
        assert_eq!(img.root_device_type, "ebs");
        assert_eq!(img.boot_mode, "uefi");
        assert_eq!(img.ena_support, Some(true));
        assert_eq!(img.platform, "windows");
        assert_eq!(img.platform_details, "Windows");
        assert_eq!(img.usage_operation, "RunInstances:0002");
        assert_eq!(img.source_instance_id, inst_id(1));
        assert_eq!(img.description, "from i-1");
        assert_eq!(img.image_type, "machine");
        assert_eq!(image(&h, &id).registered.origin, "create");
        assert_eq!(image(&h, &id).registered.available_at_ms, 0);
        // Mappings: both volumes (on the new snapshots) and the instance store device.
        let devices: Vec<&str> = img
            .block_device_mappings
            .iter()
            .map(|m| m.device_name.as_str())
            .collect();
        assert_eq!(devices, ["/dev/sdb", "/dev/sdf", "/dev/xvda"]);
        let snap_ids: BTreeSet<String> = h
            .state
            .snapshots
            .values()
            .filter(|s| s.for_image_id == id)
            .map(|s| s.snapshot_id.clone())
            .collect();
        let mapped: BTreeSet<String> = image(&h, &id).snapshot_ids().map(str::to_string).collect();
        assert_eq!(snap_ids, mapped);
        let root = img.block_device_mappings[2].ebs.clone().unwrap();
        assert_eq!(
            (
                root.volume_size,
                root.delete_on_termination,
                root.volume_type.as_str()
            ),
            (Some(8), Some(true), "gp3")
        );
        let data = img.block_device_mappings[1].ebs.clone().unwrap();
        assert_eq!(
            (data.volume_size, data.delete_on_termination, data.encrypted),
            (Some(100), Some(false), Some(true))
        );
        assert_eq!(data.kms_key_id, KEY);
    }

    #[test]
    fn create_image_snapshots_carry_the_volumes_data() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        let mut r = create_request(1, "web-1");
        r.tag_specifications = vec![
            pb::TagSpecification {
                resource_type: "image".into(),
                tags: vec![pb::Tag {
                    key: "env".into(),
                    value: "prod".into(),
                }],
            },
            pb::TagSpecification {
                resource_type: "snapshot".into(),
                tags: vec![pb::Tag {
                    key: "team".into(),
                    value: "web".into(),
                }],
            },
        ];
        let id = create(&mut h, OWNER, r).unwrap();
        assert_eq!(
            image(&h, &id).tags.get("env").map(String::as_str),
            Some("prod")
        );
        let data = h
            .state
            .snapshots
            .values()
            .find(|s| s.volume_id == vol_of(1, 1))
            .unwrap();
        assert_eq!(
            data.description,
            format!("Created by CreateImage({}) for {id}", inst_id(1))
        );
        assert_eq!(data.owner_id, OWNER);
        assert_eq!(data.volume_size, 100);
        assert!(data.encrypted);
        assert_eq!(data.kms_key_id, KEY);
        assert_eq!(data.data_encryption_key_id, "dek-0001");
        assert_eq!(data.tags.get("team").map(String::as_str), Some("web"));
        assert_eq!(data.full_snapshot_size_in_bytes, gib(100) as i64);
        assert_eq!(data.transferred_bytes, gib(100) as i64);
        assert_eq!(data.state, SnapshotState::Pending);
        // The volume's changes are now captured: a second image moves nothing new.
        assert_eq!(h.state.volumes[&vol_of(1, 1)].changed_bytes, 0);
        let again = create(&mut h, OWNER, create_request(1, "web-2")).unwrap();
        let s = h
            .state
            .snapshots
            .values()
            .find(|s| s.for_image_id == again && s.volume_id == vol_of(1, 1))
            .unwrap();
        assert_eq!(s.transferred_bytes, 0);
        assert_eq!(s.full_snapshot_size_in_bytes, gib(100) as i64);
        assert_eq!(
            s.complete_at_ms - s.start_time_ms,
            h.config.snapshot_base_ms
        );
    }

    #[test]
    fn create_image_missing_and_malformed_parameters() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        let mut r = create_request(1, "web-1");
        r.instance_id.clear();
        let e = rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r),
            ErrorCode::MissingParameter,
        );
        assert_eq!(
            e.message,
            "The request must contain the parameter InstanceId"
        );
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "")),
            ErrorCode::MissingParameter,
        );
        let mut r = create_request(1, "web-1");
        r.instance_id = "i-xyz".into();
        let e = rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r),
            ErrorCode::InvalidInstanceIdMalformed,
        );
        assert_eq!(e.message, "Invalid id: \"i-xyz\" (expecting \"i-...\")");
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "w*")),
            ErrorCode::InvalidAmiNameMalformed,
        );
        let mut r = create_request(1, "web-1");
        r.description = "d".repeat(256);
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn create_image_of_an_unknown_or_foreign_instance_is_not_found() {
        let mut h = Harness::new();
        h.given(instance(1, OTHER, "running", "ebs", &[ROOT]));
        let e = rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(2, "web-1")),
            ErrorCode::InvalidInstanceIdNotFound,
        );
        assert_eq!(
            e.message,
            format!("The instance ID '{}' does not exist", inst_id(2))
        );
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "web-1")),
            ErrorCode::InvalidInstanceIdNotFound,
        );
    }

    #[test]
    fn unconfirmed_create_image_of_an_instance_store_instance_is_invalid_parameter_value() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "instance-store", &[]));
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "web-1")),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn unconfirmed_create_image_needs_running_or_stopped_else_incorrect_instance_state() {
        let mut h = Harness::new();
        for (n, s) in [
            (1, "pending"),
            (2, "stopping"),
            (3, "shutting-down"),
            (4, "terminated"),
        ] {
            h.given(instance(n, OWNER, s, "ebs", &[ROOT]));
            rejected(
                &mut h,
                OWNER,
                Command::CreateImage(create_request(n, "web-1")),
                ErrorCode::IncorrectInstanceState,
            );
        }
        // [sim] a stopped instance without its root volume.
        h.given(instance(5, OWNER, "stopped", "ebs", &[DATA]));
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(5, "web-1")),
            ErrorCode::IncorrectInstanceState,
        );
    }

    #[test]
    fn create_image_dry_run() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        let mut r = create_request(1, "web-1");
        r.dry_run = true;
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r.clone()),
            ErrorCode::DryRunOperation,
        );
        // Existence comes after DryRun.
        r.instance_id = inst_id(9);
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r.clone()),
            ErrorCode::DryRunOperation,
        );
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "volume".into(),
            tags: vec![],
        }];
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r),
            ErrorCode::InvalidParameterValue,
        );
    }

    #[test]
    fn create_image_duplicate_name() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        let first = given_image(&mut h, OWNER, "web-1");
        let e = rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "web-1")),
            ErrorCode::InvalidAmiNameDuplicate,
        );
        assert!(e.message.contains(&first));
    }

    #[test]
    fn create_image_respects_the_pending_snapshots_per_volume() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        // 4 pending + 1 failed snapshot of the root volume: the 5 slots are taken.
        for k in 0..5u64 {
            let sid = snap_id(100 + k);
            h.given([Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: sid.clone(),
                owner_id: OWNER.into(),
                volume_id: vol_of(1, 0),
                volume_size: 8,
                start_time_ms: T0,
                complete_at_ms: T0 + 3_600_000,
                ..Default::default()
            })]);
            if k == 4 {
                h.given([Payload::SnapshotFailed(pb::SnapshotFailed {
                    snapshot_id: sid,
                    state_message: "x".into(),
                })]);
            }
        }
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "web-1")),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
        );
        // st1/sc1 volumes: one at a time.
        let st1 = V {
            device: "/dev/sdg",
            size: 125,
            vtype: "st1",
            encrypted: false,
        };
        h.given(instance(2, OWNER, "running", "ebs", &[ROOT, st1]));
        create(&mut h, OWNER, create_request(2, "web-2")).unwrap();
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(2, "web-3")),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
        );
        // Dropping the st1 volume frees the request from its limit.
        let mut r = create_request(2, "web-3");
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/sdg".into(),
            no_device: Some(String::new()),
            ..Default::default()
        }];
        assert!(create(&mut h, OWNER, r).is_ok());
    }

    #[test]
    fn create_image_counts_deleted_snapshots_still_running_in_the_background() {
        let mut h = Harness::new();
        let st1 = V {
            device: "/dev/sdg",
            size: 125,
            vtype: "st1",
            encrypted: false,
        };
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, st1]));
        h.given([
            Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: snap_id(100),
                owner_id: OWNER.into(),
                volume_id: vol_of(1, 1),
                volume_size: 125,
                start_time_ms: T0,
                complete_at_ms: T0 + 60_000,
                ..Default::default()
            }),
            Payload::SnapshotDeleted(pb::SnapshotDeleted {
                snapshot_id: snap_id(100),
            }),
        ]);
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "web-1")),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
        );
        h.advance(60_000);
        assert!(create(&mut h, OWNER, create_request(1, "web-1")).is_ok());
    }

    #[test]
    fn create_image_no_reboot_concurrency_limit() {
        let mut h = Harness::new();
        h.config.max_concurrent_no_reboot = 1;
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        let mut r = create_request(1, "nr-1");
        r.no_reboot = true;
        create(&mut h, OWNER, r.clone()).unwrap();
        r.name = "nr-2".into();
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(r.clone()),
            ErrorCode::ConcurrentCreateImageNoRebootLimitExceeded,
        );
        // With reboot there is no such limit.
        assert!(create(&mut h, OWNER, create_request(1, "reboot-1")).is_ok());
        // Once the first completes, another may start.
        h.advance(3_600_000);
        assert!(create(&mut h, OWNER, r).is_ok());
    }

    #[test]
    fn create_image_over_the_ami_quota_is_resource_limit_exceeded() {
        let mut h = Harness::new();
        h.config.max_images = 1;
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        create(&mut h, OWNER, create_request(1, "web-1")).unwrap();
        rejected(
            &mut h,
            OWNER,
            Command::CreateImage(create_request(1, "web-2")),
            ErrorCode::ResourceLimitExceeded,
        );
    }

    fn dev(device: &str, ebs: EbsBlockDevice) -> pb::BlockDeviceMapping {
        pb::BlockDeviceMapping {
            device_name: device.into(),
            ebs: Some(ebs),
            ..Default::default()
        }
    }

    #[test]
    fn create_image_mappings_may_drop_change_delete_on_termination_or_add() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        let mut r = create_request(1, "web-1");
        r.block_device_mappings = vec![
            // Keep the root but let it survive termination; `Encrypted=false` on the encrypted
            // data volume is ignored; drop the instance store; add an empty volume and a new
            // instance store device.
            dev(
                "/dev/xvda",
                EbsBlockDevice {
                    delete_on_termination: Some(false),
                    volume_size: Some(8),
                    ..Default::default()
                },
            ),
            dev(
                "/dev/sdf",
                EbsBlockDevice {
                    encrypted: Some(false),
                    ..Default::default()
                },
            ),
            pb::BlockDeviceMapping {
                device_name: "/dev/sdb".into(),
                no_device: Some(String::new()),
                ..Default::default()
            },
            dev(
                "/dev/sdh",
                EbsBlockDevice {
                    volume_size: Some(50),
                    volume_type: "gp2".into(),
                    ..Default::default()
                },
            ),
            pb::BlockDeviceMapping {
                device_name: "/dev/sdc".into(),
                virtual_name: "ephemeral1".into(),
                ..Default::default()
            },
        ];
        let id = create(&mut h, OWNER, r).unwrap();
        let maps = &image(&h, &id).registered.block_device_mappings;
        let by: BTreeMap<&str, &Mapping> =
            maps.iter().map(|m| (m.device_name.as_str(), m)).collect();
        assert_eq!(
            by.keys().copied().collect::<Vec<_>>(),
            ["/dev/sdc", "/dev/sdf", "/dev/sdh", "/dev/xvda"]
        );
        assert!(!by["/dev/xvda"].delete_on_termination);
        assert!(by["/dev/sdf"].encrypted);
        assert_eq!(
            (
                by["/dev/sdh"].snapshot_id.as_str(),
                by["/dev/sdh"].volume_size
            ),
            ("", 50)
        );
        assert_eq!(by["/dev/sdc"].virtual_name, "ephemeral1");
        assert_eq!(
            h.state
                .snapshots
                .values()
                .filter(|s| s.for_image_id == id)
                .count(),
            2
        );

        // Drop the data volume: one snapshot only.
        let mut r = create_request(1, "web-2");
        r.block_device_mappings = vec![pb::BlockDeviceMapping {
            device_name: "/dev/sdf".into(),
            no_device: Some(String::new()),
            ..Default::default()
        }];
        let id = create(&mut h, OWNER, r).unwrap();
        let snaps: Vec<&Snapshot> = h
            .state
            .snapshots
            .values()
            .filter(|s| s.for_image_id == id)
            .collect();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].volume_id, vol_of(1, 0));
        h.advance(3_600_000);
        assert_eq!(image(&h, &id).state, ImageState::Available);
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_image_mappings_may_not_resize_resnapshot_or_retype() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        let cases: Vec<(&str, pb::BlockDeviceMapping)> = vec![
            (
                "resize",
                dev(
                    "/dev/xvda",
                    EbsBlockDevice {
                        volume_size: Some(20),
                        ..Default::default()
                    },
                ),
            ),
            (
                "other snapshot",
                dev(
                    "/dev/xvda",
                    EbsBlockDevice {
                        snapshot_id: snap_id(1),
                        ..Default::default()
                    },
                ),
            ),
            (
                "new device from a snapshot",
                dev(
                    "/dev/sdh",
                    EbsBlockDevice {
                        snapshot_id: snap_id(1),
                        ..Default::default()
                    },
                ),
            ),
            (
                "retype",
                dev(
                    "/dev/sdf",
                    EbsBlockDevice {
                        volume_type: "io1".into(),
                        iops: Some(500),
                        volume_size: Some(100),
                        ..Default::default()
                    },
                ),
            ),
            (
                "encrypt",
                dev(
                    "/dev/xvda",
                    EbsBlockDevice {
                        encrypted: Some(true),
                        ..Default::default()
                    },
                ),
            ),
            (
                "kms",
                dev(
                    "/dev/sdh",
                    EbsBlockDevice {
                        volume_size: Some(5),
                        encrypted: Some(true),
                        kms_key_id: KEY.into(),
                        ..Default::default()
                    },
                ),
            ),
            (
                "drop the root",
                pb::BlockDeviceMapping {
                    device_name: "/dev/xvda".into(),
                    no_device: Some(String::new()),
                    ..Default::default()
                },
            ),
            (
                "ebs over instance store",
                dev(
                    "/dev/sdb",
                    EbsBlockDevice {
                        volume_size: Some(5),
                        ..Default::default()
                    },
                ),
            ),
            (
                "instance store over ebs",
                pb::BlockDeviceMapping {
                    device_name: "/dev/sdf".into(),
                    virtual_name: "ephemeral1".into(),
                    ..Default::default()
                },
            ),
            (
                "new device without size",
                dev(
                    "/dev/sdh",
                    EbsBlockDevice {
                        delete_on_termination: Some(true),
                        ..Default::default()
                    },
                ),
            ),
        ];
        for (what, m) in cases {
            let mut r = create_request(1, "web-1");
            r.block_device_mappings = vec![m];
            let e = h.when(OWNER, Command::CreateImage(r)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidBlockDeviceMapping, "{what}: {e}");
        }
        assert!(h.state.images.is_empty());
    }

    #[test]
    fn images_pending_from_instance_names_pending_create_images_only() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT]));
        h.given(instance(2, OWNER, "running", "ebs", &[ROOT]));
        let a = create(&mut h, OWNER, create_request(1, "a-1")).unwrap();
        let b = create(&mut h, OWNER, create_request(2, "b-1")).unwrap();
        given_image(&mut h, OWNER, "registered");
        assert_eq!(
            images_pending_from_instance(&h.state, &inst_id(1)),
            vec![a.clone()]
        );
        assert_eq!(images_pending_from_instance(&h.state, &inst_id(2)), vec![b]);
        // What TerminateInstances writes: the image fails with Client.InstanceTerminated.
        h.given([Payload::ImageFailed(pb::ImageFailed {
            image_id: a.clone(),
            state_reason_code: "Client.InstanceTerminated".into(),
            state_reason_message: "Instance terminated during image creation".into(),
        })]);
        assert!(images_pending_from_instance(&h.state, &inst_id(1)).is_empty());
        let img = describe_one(&h, OWNER, &a);
        assert_eq!(img.state, "failed");
        assert_eq!(img.state_reason.unwrap().code, "Client.InstanceTerminated");
        // Its snapshots completing later does not revive it.
        h.advance(3_600_000);
        assert_eq!(describe_one(&h, OWNER, &a).state, "failed");
        h.assert_replay_equals_live();
    }

    // ---- DeregisterImage -----------------------------------------------------------------

    #[test]
    fn deregister_lingers_then_is_forgotten_and_the_name_is_reusable_at_once() {
        let mut h = Harness::new();
        let id = given_image(&mut h, OWNER, "web-1");
        let d = h.when(OWNER, deregister(&id, false)).unwrap();
        assert_eq!(
            d.reply,
            Reply::DeregisterImage(pb::DeregisterImageResponse {
                r#return: true,
                delete_snapshot_result_set: vec![]
            })
        );
        assert_eq!(
            d.events,
            vec![Payload::ImageDeregistered(pb::ImageDeregistered {
                image_id: id.clone(),
                forget_at_ms: h.now_ms + h.config.deregistered_linger_ms
            })]
        );
        assert_eq!(describe_one(&h, OWNER, &id).state, "deregistered");
        // Snapshots are kept by default.
        assert!(image(&h, &id)
            .snapshot_ids()
            .all(|s| h.state.snapshots.contains_key(s)));
        // The name is free again.
        let again = given_image(&mut h, OWNER, "web-1");
        assert_ne!(again, id);
        h.advance(h.config.deregistered_linger_ms);
        let e = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                image_ids: vec![id.clone()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAmiIdNotFound);
        rejected(
            &mut h,
            OWNER,
            deregister(&id, false),
            ErrorCode::InvalidAmiIdNotFound,
        );
        h.assert_replay_equals_live();
    }

    #[test]
    fn deregister_checks_id_visibility_and_ownership() {
        let mut h = Harness::new();
        let e = rejected(
            &mut h,
            OWNER,
            deregister("ami-xyz", false),
            ErrorCode::InvalidAmiIdMalformed,
        );
        assert_eq!(e.message, "Invalid id: \"ami-xyz\" (expecting \"ami-...\")");
        rejected(
            &mut h,
            OWNER,
            deregister("", false),
            ErrorCode::MissingParameter,
        );
        let e = rejected(
            &mut h,
            OWNER,
            deregister("ami-12345678", false),
            ErrorCode::InvalidAmiIdNotFound,
        );
        assert_eq!(e.message, "The image id '[ami-12345678]' does not exist");
        let private = given_image(&mut h, OTHER, "private-1");
        rejected(
            &mut h,
            OWNER,
            deregister(&private, false),
            ErrorCode::InvalidAmiIdNotFound,
        );
        let shared = given_image(&mut h, OTHER, "shared-1");
        share(&mut h, &shared, LaunchPermission::User(OWNER.into()));
        let e = rejected(
            &mut h,
            OWNER,
            deregister(&shared, false),
            ErrorCode::AuthFailure,
        );
        assert_eq!(e.message, format!("Not authorized for image:{shared}"));
    }

    #[test]
    fn unconfirmed_deregister_twice_is_invalid_ami_id_unavailable() {
        let mut h = Harness::new();
        let id = given_image(&mut h, OWNER, "web-1");
        h.when(OWNER, deregister(&id, false)).unwrap();
        rejected(
            &mut h,
            OWNER,
            deregister(&id, false),
            ErrorCode::InvalidAmiIdUnavailable,
        );
    }

    #[test]
    fn deregister_dry_run() {
        let mut h = Harness::new();
        let id = given_image(&mut h, OWNER, "web-1");
        let cmd = Command::DeregisterImage(pb::DeregisterImageRequest {
            image_id: id.clone(),
            dry_run: true,
            ..Default::default()
        });
        rejected(&mut h, OWNER, cmd, ErrorCode::DryRunOperation);
        let cmd = Command::DeregisterImage(pb::DeregisterImageRequest {
            image_id: "ami-1".into(),
            dry_run: true,
            ..Default::default()
        });
        rejected(&mut h, OWNER, cmd, ErrorCode::InvalidAmiIdMalformed);
        assert_eq!(image(&h, &id).state, ImageState::Available);
    }

    #[test]
    fn deregister_with_delete_associated_snapshots_reports_each() {
        let mut h = Harness::new();
        h.given(completed_snapshot(&snap_id(1), OWNER, 8)); // only this image: success
        h.given(completed_snapshot(&snap_id(2), OWNER, 8)); // also used by another image: skipped
        h.given(completed_snapshot(&snap_id(3), OTHER, 8)); // shared with us, not ours
        if let Some(s) = h.state.snapshots.get_mut(&snap_id(3)) {
            s.create_volume_permissions.insert(OWNER.to_string());
        }
        let mut r = ebs_request("web-1", &snap_id(1));
        r.block_device_mappings
            .push(ebs_mapping("/dev/sdf", &snap_id(2)));
        r.block_device_mappings
            .push(ebs_mapping("/dev/sdg", &snap_id(3)));
        let id = register(&mut h, OWNER, r).unwrap();
        let other = register(&mut h, OWNER, ebs_request("web-2", &snap_id(2))).unwrap();
        let d = h.when(OWNER, deregister(&id, true)).unwrap();
        let Reply::DeregisterImage(resp) = &d.reply else {
            panic!()
        };
        let got: Vec<(String, String)> = resp
            .delete_snapshot_result_set
            .iter()
            .map(|x| (x.snapshot_id.clone(), x.return_code.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (snap_id(1), "success".to_string()),
                (snap_id(2), "skipped".to_string()),
                (snap_id(3), "missing-permissions".to_string()),
            ]
        );
        assert!(resp.r#return);
        assert!(!h.state.snapshots.contains_key(&snap_id(1)));
        assert!(h.state.snapshots.contains_key(&snap_id(2)));
        assert!(h.state.snapshots.contains_key(&snap_id(3)));
        // Once the other image is gone too, its snapshot can go.
        let d = h.when(OWNER, deregister(&other, true)).unwrap();
        let Reply::DeregisterImage(resp) = &d.reply else {
            panic!()
        };
        assert_eq!(resp.delete_snapshot_result_set[0].return_code, "success");
        assert!(!h.state.snapshots.contains_key(&snap_id(2)));
        // (No replay check: the snapshot grant was set on the projection, not logged.)
    }

    #[test]
    fn sim_deregister_pending_create_image_deletes_its_pending_snapshots() {
        let mut h = Harness::new();
        h.given(instance(1, OWNER, "running", "ebs", &[ROOT, DATA]));
        let id = create(&mut h, OWNER, create_request(1, "web-1")).unwrap();
        // The root snapshot completes; the data one is still pending.
        h.advance(h.config.create_image_reboot_ms + h.config.snapshot_ms(gib(8)));
        let d = h.when(OWNER, deregister(&id, false)).unwrap();
        let deleted: Vec<&Payload> = d
            .events
            .iter()
            .filter(|e| matches!(e, Payload::SnapshotDeleted(_)))
            .collect();
        assert_eq!(deleted.len(), 1);
        let left: Vec<&Snapshot> = h
            .state
            .snapshots
            .values()
            .filter(|s| s.for_image_id == id)
            .collect();
        assert_eq!(left.len(), 1, "the completed snapshot stays");
        assert_eq!(left[0].state, SnapshotState::Completed);
        // Nothing turns it available later.
        h.advance(3_600_000 - 1);
        assert_eq!(image(&h, &id).state, ImageState::Deregistered);
        h.assert_replay_equals_live();
    }

    // ---- DescribeImages ------------------------------------------------------------------

    #[test]
    fn describe_default_shows_own_public_and_shared_images() {
        let mut h = Harness::new();
        let own = given_image(&mut h, OWNER, "own-1");
        let public = given_image(&mut h, OTHER, "public-1");
        let shared = given_image(&mut h, OTHER, "shared-1");
        let private = given_image(&mut h, OTHER, "private-1");
        let other_share = given_image(&mut h, OTHER, "shared-third");
        share(&mut h, &public, LaunchPermission::All);
        share(&mut h, &shared, LaunchPermission::User(OWNER.into()));
        share(&mut h, &other_share, LaunchPermission::User(THIRD.into()));
        let r = describe(&h, OWNER, pb::DescribeImagesRequest::default()).unwrap();
        let mut want = vec![own, public.clone(), shared];
        want.sort();
        assert_eq!(ids_of(&r), want, "in id order");
        assert!(r.next_token.is_empty());
        assert!(
            r.images
                .iter()
                .find(|i| i.image_id == public)
                .unwrap()
                .public
        );
        let r = describe(&h, THIRD, pb::DescribeImagesRequest::default()).unwrap();
        let mut want = vec![public, other_share];
        want.sort();
        assert_eq!(ids_of(&r), want);
        assert!(!ids_of(&r).contains(&private));
    }

    #[test]
    fn describe_by_id_unknown_or_invisible_is_not_found_naming_them() {
        let mut h = Harness::new();
        let own = given_image(&mut h, OWNER, "own-1");
        let private = given_image(&mut h, OTHER, "private-1");
        let r = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                image_ids: vec![own.clone(), own.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ids_of(&r), vec![own.clone()]);
        let e = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                image_ids: vec![own.clone(), "ami-12345678".into(), private.clone()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAmiIdNotFound);
        assert_eq!(
            e.message,
            format!("The image id '[ami-12345678, {private}]' does not exist")
        );
        let e = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                image_ids: vec!["ami-zz".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAmiIdMalformed);
    }

    #[test]
    fn describe_owners() {
        let mut h = Harness::new();
        let own = given_image(&mut h, OWNER, "own-1");
        let public = given_image(&mut h, OTHER, "public-1");
        share(&mut h, &public, LaunchPermission::All);
        let by = |owners: &[&str]| {
            let r = pb::DescribeImagesRequest {
                owners: owners.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            ids_of(&describe(&h, OWNER, r).unwrap())
        };
        assert_eq!(by(&["self"]), vec![own.clone()]);
        assert_eq!(by(&[OTHER]), vec![public.clone()]);
        assert_eq!(by(&[OWNER]), vec![own.clone()]);
        assert!(
            by(&["amazon"]).is_empty(),
            "no Amazon images in the simulator"
        );
        assert_eq!(by(&["self", OTHER]).len(), 2);
        for bad in ["me", "12345", "all"] {
            let r = pb::DescribeImagesRequest {
                owners: vec![bad.into()],
                ..Default::default()
            };
            let e = describe(&h, OWNER, r).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidUserIdMalformed, "{bad}");
            assert_eq!(e.message, format!("Invalid user id: \"{bad}\""));
        }
    }

    #[test]
    fn describe_executable_users() {
        let mut h = Harness::new();
        let own = given_image(&mut h, OWNER, "own-1");
        let public = given_image(&mut h, OTHER, "public-1");
        let shared = given_image(&mut h, OTHER, "shared-1");
        share(&mut h, &public, LaunchPermission::All);
        share(&mut h, &shared, LaunchPermission::User(OWNER.into()));
        share(&mut h, &own, LaunchPermission::User(THIRD.into()));
        let by = |users: &[&str]| {
            let r = pb::DescribeImagesRequest {
                executable_users: users.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            ids_of(&describe(&h, OWNER, r).unwrap())
        };
        assert_eq!(by(&["self"]), vec![shared.clone()]);
        assert_eq!(by(&[OWNER]), vec![shared]);
        assert_eq!(by(&["all"]), vec![public]);
        assert_eq!(by(&[THIRD]), vec![own]);
        let r = pb::DescribeImagesRequest {
            executable_users: vec!["everyone".into()],
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidUserIdMalformed
        );
    }

    #[test]
    fn describe_filters_with_wildcards_tags_and_state() {
        let mut h = Harness::new();
        let web1 = given_image(&mut h, OWNER, "web-1");
        let web2 = given_image(&mut h, OWNER, "web-2");
        let db = given_image(&mut h, OWNER, "db-1");
        h.given([Payload::TagsCreated(pb::TagsCreated {
            resource_ids: vec![web1.clone(), db.clone()],
            tags: vec![pb::TagRecord {
                key: "env".into(),
                value: "prod".into(),
            }],
        })]);
        h.given(completed_snapshot(&snap_id(900), OWNER, 8));
        let pending = register(&mut h, OWNER, ebs_request("web-pending", &snap_id(900))).unwrap();
        let run = |filters: Vec<pb::Filter>| {
            ids_of(
                &describe(
                    &h,
                    OWNER,
                    pb::DescribeImagesRequest {
                        filters,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            run(vec![filter("name", &["web-*"])]),
            sorted(vec![web1.clone(), web2.clone(), pending.clone()])
        );
        assert_eq!(
            run(vec![filter("name", &["web-?"])]),
            sorted(vec![web1.clone(), web2.clone()])
        );
        assert_eq!(
            run(vec![filter("tag:env", &["prod"])]),
            sorted(vec![web1.clone(), db.clone()])
        );
        assert_eq!(
            run(vec![filter("tag-key", &["env"])]),
            sorted(vec![web1.clone(), db.clone()])
        );
        assert_eq!(
            run(vec![filter("state", &["pending"])]),
            vec![pending.clone()]
        );
        assert_eq!(
            run(vec![
                filter("name", &["web-*"]),
                filter("tag:env", &["prod", "dev"])
            ]),
            vec![web1.clone()],
            "filters AND, values OR"
        );
        assert_eq!(
            run(vec![filter("creation-date", &["2024-05-01T*"])]).len(),
            4
        );
        assert_eq!(
            run(vec![
                filter("root-device-type", &["ebs"]),
                filter("is-public", &["false"])
            ])
            .len(),
            4
        );
        assert_eq!(
            run(vec![filter("block-device-mapping.volume-size", &["8"])]).len(),
            4
        );
        assert_eq!(
            run(vec![filter(
                "block-device-mapping.snapshot-id",
                &[&snap_id(900)]
            )]),
            vec![pending.clone()]
        );
        assert_eq!(
            run(vec![
                filter("hypervisor", &["xen"]),
                filter("image-type", &["machine"])
            ])
            .len(),
            4
        );
        assert_eq!(
            run(vec![
                filter("owner-id", &[OWNER]),
                filter("architecture", &["x86_64"])
            ])
            .len(),
            4
        );
        assert!(
            run(vec![filter("name", &["WEB-*"])]).is_empty(),
            "case-sensitive"
        );
        let e = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                filters: vec![filter("colour", &["red"])],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        assert_eq!(e.message, "The filter 'colour' is invalid");
        // Other accounts cannot filter on the owner's tags.
        share(&mut h, &web1, LaunchPermission::All);
        let r = describe(
            &h,
            OTHER,
            pb::DescribeImagesRequest {
                filters: vec![filter("tag:env", &["prod"])],
                ..Default::default()
            },
        );
        assert!(r.unwrap().images.is_empty());
    }

    #[test]
    fn describe_paginates_in_id_order() {
        let mut h = Harness::new();
        let mut all: Vec<String> = (0..12)
            .map(|i| given_image(&mut h, OWNER, &format!("img-{i:02}")))
            .collect();
        all.sort();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = describe(
                &h,
                OWNER,
                pb::DescribeImagesRequest {
                    max_results: Some(5),
                    next_token: token.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
            pages += 1;
            assert!(r.images.len() <= 5);
            seen.extend(ids_of(&r));
            if r.next_token.is_empty() {
                break;
            }
            token = r.next_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, all);
        let bad = |r: pb::DescribeImagesRequest| code(describe(&h, OWNER, r));
        assert_eq!(
            bad(pb::DescribeImagesRequest {
                max_results: Some(5),
                image_ids: vec![all[0].clone()],
                ..Default::default()
            }),
            ErrorCode::InvalidParameterCombination
        );
        assert_eq!(
            bad(pb::DescribeImagesRequest {
                max_results: Some(4),
                ..Default::default()
            }),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            bad(pb::DescribeImagesRequest {
                next_token: "nope".into(),
                ..Default::default()
            }),
            ErrorCode::InvalidNextToken
        );
    }

    #[test]
    fn describe_hides_disabled_images_unless_asked() {
        let mut h = Harness::new();
        let id = given_image(&mut h, OWNER, "web-1");
        // [sim] DisableImage is a later issue: set the projection.
        if let Some(img) = h.state.image_mut(&id) {
            img.state = ImageState::Disabled;
        }
        let r = describe(&h, OWNER, pb::DescribeImagesRequest::default()).unwrap();
        assert!(r.images.is_empty());
        let r = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                image_ids: vec![id.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            r.images.is_empty(),
            "[sim] by id too, but no error: it exists"
        );
        let r = describe(
            &h,
            OWNER,
            pb::DescribeImagesRequest {
                include_disabled: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.images[0].state, "disabled");
    }

    #[test]
    fn describe_renders_every_field() {
        let mut h = Harness::new();
        h.now_ms = T0 + 45_296_789; // 12:34:56.789
        h.given(completed_snapshot(&snap_id(1), OWNER, 8));
        let mut r = ebs_request("web-1", &snap_id(1));
        r.description = "web".into();
        r.tpm_support = "v2.0".into();
        r.imds_support = "v2.0".into();
        r.boot_mode = "uefi-preferred".into();
        r.sriov_net_support = "simple".into();
        r.tag_specifications = vec![pb::TagSpecification {
            resource_type: "image".into(),
            tags: vec![pb::Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
        }];
        let id = register(&mut h, OWNER, r).unwrap();
        share(&mut h, &id, LaunchPermission::User(OTHER.into()));
        let img = describe_one(&h, OWNER, &id);
        let want = pb::Image {
            image_id: id.clone(),
            image_location: format!("{OWNER}/web-1"),
            state: "pending".into(),
            state_reason: None,
            owner_id: OWNER.into(),
            image_owner_alias: String::new(),
            creation_date: "2024-05-01T12:34:56.789Z".into(),
            public: false,
            name: "web-1".into(),
            description: "web".into(),
            architecture: "x86_64".into(),
            image_type: "machine".into(),
            platform: String::new(),
            platform_details: "Linux/UNIX".into(),
            usage_operation: "RunInstances".into(),
            root_device_type: "ebs".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![pb::BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                virtual_name: String::new(),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: snap_id(1),
                    volume_size: Some(8),
                    volume_type: "gp3".into(),
                    iops: Some(3000),
                    throughput: Some(125),
                    delete_on_termination: Some(true),
                    encrypted: Some(false),
                    kms_key_id: String::new(),
                }),
                no_device: None,
            }],
            virtualization_type: "hvm".into(),
            hypervisor: "xen".into(),
            boot_mode: "uefi-preferred".into(),
            tpm_support: "v2.0".into(),
            imds_support: "v2.0".into(),
            ena_support: None,
            sriov_net_support: "simple".into(),
            kernel_id: String::new(),
            ramdisk_id: String::new(),
            product_codes: vec![],
            tags: vec![pb::Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
            deprecation_time: String::new(),
            deregistration_protection: "disabled".into(),
            last_launched_time: String::new(),
            source_instance_id: String::new(),
            source_image_id: String::new(),
            source_image_region: String::new(),
        };
        assert_eq!(img, want);
        // Another account with launch permission sees no tags.
        assert!(describe_one(&h, OTHER, &id).tags.is_empty());
    }

    #[test]
    fn describe_last_launched_time_is_shown_to_the_owner_a_day_late() {
        let mut h = Harness::new();
        let id = given_image(&mut h, OWNER, "web-1");
        let launched_at = h.now_ms;
        h.given([Payload::InstanceLaunched(pb::InstanceLaunched {
            instance_id: inst_id(7),
            owner_id: OWNER.into(),
            image_id: id.clone(),
            launch_time_ms: launched_at,
            running_at_ms: launched_at + 10_000,
            ..Default::default()
        })]);
        assert_eq!(describe_one(&h, OWNER, &id).last_launched_time, "");
        h.now_ms += LAST_LAUNCHED_LAG_MS;
        assert_eq!(
            describe_one(&h, OWNER, &id).last_launched_time,
            time::iso(launched_at)
        );
    }

    #[test]
    fn describe_dry_run_after_syntax() {
        let h = Harness::new();
        let r = pb::DescribeImagesRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(code(describe(&h, OWNER, r)), ErrorCode::DryRunOperation);
        let r = pb::DescribeImagesRequest {
            dry_run: true,
            owners: vec!["bad".into()],
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidUserIdMalformed
        );
        // Existence comes after DryRun.
        let r = pb::DescribeImagesRequest {
            dry_run: true,
            image_ids: vec!["ami-12345678".into()],
            ..Default::default()
        };
        assert_eq!(code(describe(&h, OWNER, r)), ErrorCode::DryRunOperation);
    }
}
