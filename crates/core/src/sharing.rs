//! Sharing (EC2_SEMANTICS.md §4.1, §4.2, §5.10–§5.13, §6): who may use an image or a snapshot,
//! and the calls that change it.
//!
//! - **Rules used everywhere**: [`may_launch`] (owner, or a launch permission covering the
//!   account: its id, the group `all`, its organization, or an OU it is in or below — see
//!   [`crate::accounts::Membership`]); [`is_aws_managed_key`] (snapshots under it are never
//!   shared).
//! - **Image launch permissions and attributes**: ModifyImageAttribute (both request forms),
//!   DescribeImageAttribute, ResetImageAttribute, CancelImageLaunchPermission.
//! - **Image block public access**: Enable / Disable / GetImageBlockPublicAccessState, per
//!   account and region, applied after `Config::image_block_public_access_delay_ms`.
//! - **Snapshot create-volume permissions**: Modify / Describe / ResetSnapshotAttribute.
//!
//! Events are facts of what changed: `LaunchPermissionChanged` and
//! `CreateVolumePermissionChanged` carry only the grants that were really added or removed, so
//! a request that changes nothing writes nothing. `apply` folds them (called by
//! [`State::apply_payload`]).
//!
//! Checks run in §4.8's order — missing parameters → syntax and combinations → DryRun →
//! existence → ownership → state — and then §5.10's / §5.12's own steps; a refused call
//! writes nothing.

use std::collections::BTreeSet;

use amisim_proto::event::Payload;
use amisim_proto::{self as pb};
use serde::{Deserialize, Serialize};

use crate::accounts::{self, Membership};
use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::ids;
use crate::state::{Image, ImageState, LaunchPermission, Snapshot, State};
use crate::{image, Ctx, Decision, ReadCtx, Reply};

/// The only group a permission may name: everyone (public).
pub const GROUP_ALL: &str = "all";
/// Image block public access states.
pub const BLOCK_NEW_SHARING: &str = "block-new-sharing";
pub const UNBLOCKED: &str = "unblocked";
/// `ManagedBy` of the block public access state (amisim has no declarative policies).
pub const MANAGED_BY_ACCOUNT: &str = "account";
/// Most ids one ModifyImageAttribute may name (EC2_SEMANTICS.md §5.10).
pub const MAX_IDS_PER_REQUEST: usize = 10_000;
/// Most create-volume permission changes per ModifySnapshotAttribute (§5.12).
pub const MAX_SNAPSHOT_CHANGES: usize = 500;
/// The attribute names DescribeImageAttribute knows (§5.11).
pub const IMAGE_ATTRIBUTES: &[&str] = &[
    "description",
    "kernel",
    "ramdisk",
    "launchPermission",
    "productCodes",
    "blockDeviceMapping",
    "sriovNetSupport",
    "bootMode",
    "tpmSupport",
    "uefiData",
    "lastLaunchedTime",
    "imdsSupport",
    "deregistrationProtection",
];
/// The attribute names of a snapshot (§5.12).
pub const SNAPSHOT_ATTRIBUTES: &[&str] = &["createVolumePermission", "productCodes"];

/// An account's image block public access in one region (absent: `unblocked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPublicAccess {
    /// [`BLOCK_NEW_SHARING`] (an `unblocked` record is removed).
    pub state: String,
    /// From when it applies; `GetImageBlockPublicAccessState` shows `unblocked` until then.
    pub effective_at_ms: u64,
}

// -------------------------------------------------------------------------------------------
// Rules
// -------------------------------------------------------------------------------------------

/// True if the grant `p` covers `account`: its id, everyone, its organization, or an OU it is in
/// or below.
pub fn covers(p: &LaunchPermission, account: &str, membership: &Membership) -> bool {
    match p {
        LaunchPermission::User(u) => u == account,
        LaunchPermission::All => true,
        LaunchPermission::Organization(arn) => membership.in_organization(account, arn),
        LaunchPermission::OrganizationalUnit(arn) => membership.in_ou(account, arn),
    }
}

/// True if `account` may see and launch `img`: its owner, or covered by a launch permission
/// (EC2_SEMANTICS.md §4.1).
pub fn may_launch(img: &Image, account: &str, membership: &Membership) -> bool {
    img.owner() == account
        || img
            .launch_permissions
            .iter()
            .any(|p| covers(p, account, membership))
}

/// True if `img` is shared with `account` explicitly (by id, organization or OU; not public).
pub fn shared_with(img: &Image, account: &str, membership: &Membership) -> bool {
    img.launch_permissions
        .iter()
        .any(|p| *p != LaunchPermission::All && covers(p, account, membership))
}

/// True if a snapshot's key is an AWS managed EBS key: the account's AWS managed key ARN (see
/// [`crate::kms::aws_managed_key_arn`], what [`crate::volume::default_ebs_key`] gives), or
/// `alias/aws/ebs` by alias or alias ARN. Snapshots under it cannot be shared with anyone
/// (EC2_SEMANTICS.md §4.2).
pub fn is_aws_managed_key(kms_key_id: &str) -> bool {
    kms_key_id == crate::kms::AWS_EBS_ALIAS || crate::kms::is_aws_managed_key(kms_key_id)
}

/// True if the snapshot is encrypted under an AWS managed key.
pub fn under_aws_managed_key(s: &Snapshot) -> bool {
    s.encrypted && is_aws_managed_key(&s.kms_key_id)
}

/// The image block public access state of `account` at `now_ms`.
pub fn block_public_access_state(state: &State, account: &str, now_ms: u64) -> &'static str {
    match state.image_block_public_access.get(account) {
        Some(b) if b.state == BLOCK_NEW_SHARING && b.effective_at_ms <= now_ms => BLOCK_NEW_SHARING,
        _ => UNBLOCKED,
    }
}

/// The recorded form of a grant.
pub fn to_record(p: &LaunchPermission) -> pb::LaunchPermissionRecord {
    let mut r = pb::LaunchPermissionRecord::default();
    match p {
        LaunchPermission::User(u) => r.user_id = u.clone(),
        LaunchPermission::All => r.group = GROUP_ALL.into(),
        LaunchPermission::Organization(a) => r.organization_arn = a.clone(),
        LaunchPermission::OrganizationalUnit(a) => r.organizational_unit_arn = a.clone(),
    }
    r
}

/// A recorded grant (`None` if it names nothing; the first set field wins).
pub fn from_record(r: &pb::LaunchPermissionRecord) -> Option<LaunchPermission> {
    if !r.user_id.is_empty() {
        Some(LaunchPermission::User(r.user_id.clone()))
    } else if !r.group.is_empty() {
        Some(LaunchPermission::All)
    } else if !r.organization_arn.is_empty() {
        Some(LaunchPermission::Organization(r.organization_arn.clone()))
    } else if !r.organizational_unit_arn.is_empty() {
        Some(LaunchPermission::OrganizationalUnit(
            r.organizational_unit_arn.clone(),
        ))
    } else {
        None
    }
}

/// The API form of a grant.
pub fn to_api(p: &LaunchPermission) -> pb::LaunchPermission {
    let r = to_record(p);
    pb::LaunchPermission {
        user_id: r.user_id,
        group: r.group,
        organization_arn: r.organization_arn,
        organizational_unit_arn: r.organizational_unit_arn,
    }
}

// -------------------------------------------------------------------------------------------
// Shared checks
// -------------------------------------------------------------------------------------------

fn auth_failure(kind: &str, id: &str) -> Ec2Error {
    // [unconfirmed] code and text for acting on another account's resource (§5.6, §11).
    Ec2Error::new(
        ErrorCode::AuthFailure,
        format!("Not authorized for {kind}:{id}"),
    )
}

fn combination(message: &str) -> Ec2Error {
    Ec2Error::new(ErrorCode::InvalidParameterCombination, message)
}

fn unknown_attribute(value: &str) -> Ec2Error {
    Ec2Error::invalid_value("attribute", value, "Unknown attribute.")
}

fn check_operation_type(op: &str) -> Ec2Result<bool> {
    match op {
        "" => Err(Ec2Error::missing("OperationType")),
        "add" => Ok(true),
        "remove" => Ok(false),
        other => Err(Ec2Error::invalid_value(
            "operationType",
            other,
            "Valid values: add, remove",
        )),
    }
}

/// The image `account` may see (else `InvalidAMIID.NotFound`) and owns (else `AuthFailure`).
fn owned_image<'s>(
    state: &'s State,
    ctx_account: &str,
    m: &Membership,
    id: &str,
) -> Ec2Result<&'s Image> {
    let img = state
        .images
        .get(id)
        .filter(|i| may_launch(i, ctx_account, m))
        .ok_or_else(|| Ec2Error::image_not_found(&[id]))?;
    if img.owner() != ctx_account {
        return Err(auth_failure("image", id));
    }
    Ok(img)
}

/// The snapshot `account` may see (else `InvalidSnapshot.NotFound`) and owns (else
/// `AuthFailure`).
fn owned_snapshot<'s>(state: &'s State, account: &str, id: &str) -> Ec2Result<&'s Snapshot> {
    let s = state
        .snapshots
        .get(id)
        .filter(|s| crate::snapshot::is_visible(s, account))
        .ok_or_else(|| Ec2Error::snapshot_not_found(id))?;
    if s.owner_id != account {
        return Err(auth_failure("snapshot", id));
    }
    Ok(s)
}

// -------------------------------------------------------------------------------------------
// ModifyImageAttribute
// -------------------------------------------------------------------------------------------

/// What one ModifyImageAttribute asks for, once both request forms are read.
enum ImageChange {
    LaunchPermission {
        add: Vec<(LaunchPermission, String)>,
        remove: Vec<(LaunchPermission, String)>,
    },
    Description(String),
    ImdsSupport(String),
}

/// A launch permission item as given: exactly one field must be set. The value is checked later
/// (§5.10 step 4), so it is kept raw beside the kind.
fn parse_item(item: &pb::LaunchPermission) -> Ec2Result<(LaunchPermission, String)> {
    let set: Vec<(LaunchPermission, &String)> = [
        (LaunchPermission::User(item.user_id.clone()), &item.user_id),
        (LaunchPermission::All, &item.group),
        (
            LaunchPermission::Organization(item.organization_arn.clone()),
            &item.organization_arn,
        ),
        (
            LaunchPermission::OrganizationalUnit(item.organizational_unit_arn.clone()),
            &item.organizational_unit_arn,
        ),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    match set.as_slice() {
        [(p, v)] => Ok((p.clone(), (*v).clone())),
        // [sim] code and text.
        _ => Err(combination(
            "Each launch permission must name exactly one of UserId, Group, OrganizationArn \
             or OrganizationalUnitArn.",
        )),
    }
}

/// §5.10 step 4: a 12-digit account, the group `all`, well-formed organization / OU ARNs, else
/// `InvalidAMIAttributeItemValue` (`[unconfirmed]` text).
fn check_item_value(p: &LaunchPermission, raw: &str) -> Ec2Result<()> {
    let (ok, kind) = match p {
        LaunchPermission::User(u) => (ids::is_account_id(u), "userId"),
        LaunchPermission::All => (raw == GROUP_ALL, "group"),
        LaunchPermission::Organization(a) => (accounts::is_organization_arn(a), "organizationArn"),
        LaunchPermission::OrganizationalUnit(a) => {
            (accounts::is_ou_arn(a), "organizationalUnitArn")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidAmiAttributeItemValue,
            format!("Invalid attribute item value \"{raw}\" for {kind} item type."),
        ))
    }
}

/// Reads the request's one attribute change in either form (syntax and combinations only).
fn parse_image_change(r: &pb::ModifyImageAttributeRequest) -> Ec2Result<ImageChange> {
    let flat_items = !r.user_ids.is_empty()
        || !r.user_groups.is_empty()
        || !r.organization_arns.is_empty()
        || !r.organizational_unit_arns.is_empty();
    let flat = !r.attribute.is_empty()
        || flat_items
        || !r.operation_type.is_empty()
        || !r.value.is_empty();
    let forms = [
        r.launch_permission.is_some(),
        r.description.is_some(),
        r.imds_support.is_some(),
        flat,
        !r.product_codes.is_empty(),
    ]
    .into_iter()
    .filter(|f| *f)
    .count();
    if forms == 0 {
        // [unconfirmed] EC2 may answer InvalidParameterCombination "No attributes specified".
        return Err(Ec2Error::missing("Attribute"));
    }
    ids::check_image_id(&r.image_id)?;
    if forms > 1 {
        // [unconfirmed] text: EC2 modifies one attribute per call.
        return Err(combination(
            "Only one attribute can be modified per call; give one of LaunchPermission, \
             Description, ImdsSupport or Attribute.",
        ));
    }
    let product_codes = || {
        // [unconfirmed] code: product codes cannot be modified (§5.10).
        Ec2Error::new(
            ErrorCode::UnsupportedOperation,
            "The productCodes attribute cannot be modified.",
        )
    };
    if !r.product_codes.is_empty() {
        return Err(product_codes());
    }
    if let Some(lp) = &r.launch_permission {
        let add = lp
            .add
            .iter()
            .map(parse_item)
            .collect::<Ec2Result<Vec<_>>>()?;
        let remove = lp
            .remove
            .iter()
            .map(parse_item)
            .collect::<Ec2Result<Vec<_>>>()?;
        return Ok(ImageChange::LaunchPermission { add, remove });
    }
    if let Some(d) = &r.description {
        return description(&d.value);
    }
    if let Some(v) = &r.imds_support {
        return imds(&v.value);
    }
    // Flat form. [sim] Item lists without `Attribute` mean `launchPermission`.
    let attribute = if r.attribute.is_empty() && flat_items {
        "launchPermission"
    } else {
        r.attribute.as_str()
    };
    match attribute {
        "launchPermission" => {
            if !r.value.is_empty() {
                return Err(combination(
                    "The parameter Value cannot be used with the launchPermission attribute.",
                ));
            }
            let add = check_operation_type(&r.operation_type)?;
            let mut items: Vec<(LaunchPermission, String)> = Vec::new();
            items.extend(
                r.user_ids
                    .iter()
                    .map(|u| (LaunchPermission::User(u.clone()), u.clone())),
            );
            items.extend(
                r.user_groups
                    .iter()
                    .map(|g| (LaunchPermission::All, g.clone())),
            );
            items.extend(
                r.organization_arns
                    .iter()
                    .map(|a| (LaunchPermission::Organization(a.clone()), a.clone())),
            );
            items.extend(
                r.organizational_unit_arns
                    .iter()
                    .map(|a| (LaunchPermission::OrganizationalUnit(a.clone()), a.clone())),
            );
            Ok(if add {
                ImageChange::LaunchPermission {
                    add: items,
                    remove: Vec::new(),
                }
            } else {
                ImageChange::LaunchPermission {
                    add: Vec::new(),
                    remove: items,
                }
            })
        }
        "description" | "imdsSupport" => {
            if flat_items || !r.operation_type.is_empty() {
                return Err(combination(
                    "OperationType, UserIds, UserGroups, OrganizationArns and \
                     OrganizationalUnitArns can only be used with the launchPermission attribute.",
                ));
            }
            if attribute == "description" {
                description(&r.value)
            } else {
                imds(&r.value)
            }
        }
        "productCodes" => Err(product_codes()),
        "" => Err(Ec2Error::missing("Attribute")),
        other => Err(Ec2Error::invalid_value(
            "attribute",
            other,
            "Valid values: launchPermission, description, imdsSupport",
        )),
    }
}

fn description(value: &str) -> Ec2Result<ImageChange> {
    if value.chars().count() > 255 {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            "Value for parameter description is invalid. Length must be at most 255 characters.",
        ));
    }
    Ok(ImageChange::Description(value.to_string()))
}

fn imds(value: &str) -> Ec2Result<ImageChange> {
    if value != "v2.0" {
        return Err(Ec2Error::invalid_value(
            "imdsSupport",
            value,
            "Valid values: v2.0",
        ));
    }
    Ok(ImageChange::ImdsSupport(value.to_string()))
}

/// ModifyImageAttribute (EC2_SEMANTICS.md §5.10).
pub fn modify_image_attribute(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ModifyImageAttributeRequest,
) -> Ec2Result<Decision> {
    if r.image_id.is_empty() {
        return Err(Ec2Error::missing("ImageId"));
    }
    let change = parse_image_change(&r)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 1 visible, 2 owner, 3 available.
    let img = owned_image(state, ctx.account_id, ctx.membership, &r.image_id)?;
    if img.state != ImageState::Available {
        return Err(Ec2Error::new(
            ErrorCode::InvalidAmiIdUnavailable,
            format!(
                "The image id '[{}]' is not available (state: {}).",
                r.image_id,
                img.state.as_str()
            ),
        ));
    }
    let reply = Reply::ModifyImageAttribute(pb::ModifyImageAttributeResponse { r#return: true });
    let events = match change {
        ImageChange::Description(d) => {
            if d == img.registered.description {
                vec![]
            } else {
                vec![Payload::ImageAttributeChanged(pb::ImageAttributeChanged {
                    image_id: r.image_id.clone(),
                    description: Some(d),
                    imds_support: None,
                })]
            }
        }
        ImageChange::ImdsSupport(v) => {
            if v == img.registered.imds_support {
                vec![]
            } else {
                vec![Payload::ImageAttributeChanged(pb::ImageAttributeChanged {
                    image_id: r.image_id.clone(),
                    description: None,
                    imds_support: Some(v),
                })]
            }
        }
        ImageChange::LaunchPermission { add, remove } => {
            launch_permission_events(state, ctx, img, &add, &remove)?
        }
    };
    Ok(Decision::new(events, reply))
}

/// §5.10 steps 4–7 for a launch permission change, and its event (none if nothing changes).
fn launch_permission_events(
    state: &State,
    ctx: &Ctx<'_>,
    img: &Image,
    add: &[(LaunchPermission, String)],
    remove: &[(LaunchPermission, String)],
) -> Ec2Result<Vec<Payload>> {
    // 4 Item values.
    for (p, raw) in add.iter().chain(remove) {
        check_item_value(p, raw)?;
    }
    // The resulting set: removals first, then additions; the event is the difference.
    let current: BTreeSet<&LaunchPermission> = img.launch_permissions.iter().collect();
    let mut after = current.clone();
    for (p, _) in remove {
        after.remove(p);
    }
    for (p, _) in add {
        after.insert(p);
    }
    let added: Vec<&LaunchPermission> = after.difference(&current).copied().collect();
    let removed: Vec<&LaunchPermission> = current.difference(&after).copied().collect();
    let snapshots: Vec<&Snapshot> = img
        .snapshot_ids()
        .filter_map(|id| state.snapshots.get(id))
        .collect();
    // 5 Making it public.
    if added.contains(&&LaunchPermission::All) {
        if block_public_access_state(state, img.owner(), ctx.now_ms) == BLOCK_NEW_SHARING {
            return Err(Ec2Error::new(
                ErrorCode::OperationNotPermitted,
                "You can't publicly share this image because block public access for AMIs is \
                 enabled for this account. To publicly share the image, you must call the \
                 DisableImageBlockPublicAccess API.",
            ));
        }
        let encrypted = img
            .registered
            .block_device_mappings
            .iter()
            .any(|m| m.ebs && m.encrypted)
            || snapshots.iter().any(|s| s.encrypted);
        if encrypted {
            return Err(Ec2Error::new(
                ErrorCode::UnsupportedOperation,
                "Encrypted snapshots can't be shared publicly. Specify another snapshot.",
            ));
        }
        // [sim] amisim has no product codes, so "product codes cannot be public" never fires.
        let public = state
            .images
            .values()
            .filter(|i| {
                i.owner() == img.owner()
                    && i.id() != img.id()
                    && i.state != ImageState::Deregistered
                    && i.is_public()
            })
            .count();
        if public >= ctx.config.max_public_images {
            // [unconfirmed] code and text.
            return Err(Ec2Error::new(
                ErrorCode::ResourceLimitExceeded,
                format!(
                    "You have reached the maximum number of public AMIs ({}) for this account \
                     in this region.",
                    ctx.config.max_public_images
                ),
            ));
        }
    }
    // 6 Sharing at all: never a snapshot under the AWS managed key.
    let shares = added.iter().any(|p| **p != LaunchPermission::All);
    if shares && snapshots.iter().any(|s| under_aws_managed_key(s)) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameter,
            "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another \
             snapshot.",
        ));
    }
    // 7 Limits: ids per request, grantees per image (an organization or OU counts once).
    if add.len() + remove.len() > MAX_IDS_PER_REQUEST {
        // [unconfirmed] code.
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!("At most {MAX_IDS_PER_REQUEST} launch permissions may be given per request."),
        ));
    }
    let grantees = after
        .iter()
        .filter(|p| ***p != LaunchPermission::All)
        .count();
    if !added.is_empty() && grantees > ctx.config.max_launch_permissions {
        // [unconfirmed] code and text.
        return Err(Ec2Error::new(
            ErrorCode::ResourceLimitExceeded,
            format!(
                "An AMI can be shared with at most {} accounts, organizations and \
                 organizational units.",
                ctx.config.max_launch_permissions
            ),
        ));
    }
    if added.is_empty() && removed.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![Payload::LaunchPermissionChanged(
        pb::LaunchPermissionChanged {
            image_id: img.id().to_string(),
            added: added.into_iter().map(to_record).collect(),
            removed: removed.into_iter().map(to_record).collect(),
        },
    )])
}

// -------------------------------------------------------------------------------------------
// ResetImageAttribute, CancelImageLaunchPermission
// -------------------------------------------------------------------------------------------

/// ResetImageAttribute (§5.11): `launchPermission` only; the owner's image becomes private.
pub fn reset_image_attribute(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ResetImageAttributeRequest,
) -> Ec2Result<Decision> {
    if r.image_id.is_empty() {
        return Err(Ec2Error::missing("ImageId"));
    }
    if r.attribute.is_empty() {
        return Err(Ec2Error::missing("Attribute"));
    }
    ids::check_image_id(&r.image_id)?;
    if r.attribute != "launchPermission" {
        // [unconfirmed] code and text.
        return Err(Ec2Error::invalid_value(
            "attribute",
            &r.attribute,
            "Only launchPermission can be reset.",
        ));
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let img = owned_image(state, ctx.account_id, ctx.membership, &r.image_id)?;
    let events = if img.launch_permissions.is_empty() {
        vec![]
    } else {
        vec![Payload::LaunchPermissionChanged(
            pb::LaunchPermissionChanged {
                image_id: r.image_id.clone(),
                added: vec![],
                removed: img.launch_permissions.iter().map(to_record).collect(),
            },
        )]
    };
    Ok(Decision::new(
        events,
        Reply::ResetImageAttribute(pb::ResetImageAttributeResponse { r#return: true }),
    ))
}

/// CancelImageLaunchPermission (§5.11): a grantee by account id removes its own grant;
/// organization, OU and public grants stay. Nothing to remove is a success that writes nothing.
pub fn cancel_image_launch_permission(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CancelImageLaunchPermissionRequest,
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
        .filter(|i| may_launch(i, ctx.account_id, ctx.membership))
        .ok_or_else(|| Ec2Error::image_not_found(&[r.image_id.as_str()]))?;
    if img.owner() == ctx.account_id {
        // [unconfirmed] code and text: the owner's implicit permission cannot be cancelled.
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameter,
            format!(
                "You cannot cancel your own launch permission for image {}, which you own.",
                r.image_id
            ),
        ));
    }
    let mine = LaunchPermission::User(ctx.account_id.to_string());
    let events = if img.launch_permissions.contains(&mine) {
        vec![Payload::LaunchPermissionChanged(
            pb::LaunchPermissionChanged {
                image_id: r.image_id.clone(),
                added: vec![],
                removed: vec![to_record(&mine)],
            },
        )]
    } else {
        vec![]
    };
    Ok(Decision::new(
        events,
        Reply::CancelImageLaunchPermission(pb::CancelImageLaunchPermissionResponse {
            r#return: true,
        }),
    ))
}

// -------------------------------------------------------------------------------------------
// DescribeImageAttribute
// -------------------------------------------------------------------------------------------

fn value(v: impl Into<String>) -> Option<pb::AttributeValue> {
    Some(pb::AttributeValue { value: v.into() })
}

/// DescribeImageAttribute (§5.11): one attribute of an image the caller owns (`[sim]` owner only;
/// `blockDeviceMapping` is deprecated and always `AuthFailure`).
pub fn describe_image_attribute(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::DescribeImageAttributeRequest,
) -> Ec2Result<pb::DescribeImageAttributeResponse> {
    if r.image_id.is_empty() {
        return Err(Ec2Error::missing("ImageId"));
    }
    if r.attribute.is_empty() {
        return Err(Ec2Error::missing("Attribute"));
    }
    ids::check_image_id(&r.image_id)?;
    if !IMAGE_ATTRIBUTES.contains(&r.attribute.as_str()) {
        return Err(unknown_attribute(&r.attribute));
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    if r.attribute == "blockDeviceMapping" {
        return Err(Ec2Error::new(
            ErrorCode::AuthFailure,
            "Unauthorized attempt to access restricted resource",
        ));
    }
    let img = owned_image(state, ctx.account_id, ctx.membership, &r.image_id)?;
    let d = &img.registered;
    let mut out = pb::DescribeImageAttributeResponse {
        image_id: r.image_id.clone(),
        ..Default::default()
    };
    match r.attribute.as_str() {
        "description" => out.description = value(&d.description),
        "kernel" => out.kernel_id = value(&d.kernel_id),
        "ramdisk" => out.ramdisk_id = value(&d.ramdisk_id),
        "launchPermission" => {
            out.launch_permissions = img.launch_permissions.iter().map(to_api).collect();
        }
        // amisim has no product codes.
        "productCodes" => {}
        "sriovNetSupport" => out.sriov_net_support = value(&d.sriov_net_support),
        "bootMode" => out.boot_mode = value(&d.boot_mode),
        "tpmSupport" => out.tpm_support = value(&d.tpm_support),
        "uefiData" => out.uefi_data = value(&d.uefi_data),
        "lastLaunchedTime" => {
            out.last_launched_time = value(image::render_image(state, img, ctx).last_launched_time)
        }
        "imdsSupport" => out.imds_support = value(&d.imds_support),
        "deregistrationProtection" => out.deregistration_protection = value("disabled"),
        _ => return Err(unknown_attribute(&r.attribute)),
    }
    Ok(out)
}

// -------------------------------------------------------------------------------------------
// Image block public access
// -------------------------------------------------------------------------------------------

/// EnableImageBlockPublicAccess (§5.13): blocks new public sharing of the caller's images in
/// this region after `Config::image_block_public_access_delay_ms` (`[sim]`, default 0). Already
/// blocked (or being blocked): nothing changes.
pub fn enable_image_block_public_access(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::EnableImageBlockPublicAccessRequest,
) -> Ec2Result<Decision> {
    if r.image_block_public_access_state.is_empty() {
        return Err(Ec2Error::missing("ImageBlockPublicAccessState"));
    }
    if r.image_block_public_access_state != BLOCK_NEW_SHARING {
        return Err(Ec2Error::invalid_value(
            "imageBlockPublicAccessState",
            &r.image_block_public_access_state,
            "Valid values: block-new-sharing",
        ));
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let blocked = state
        .image_block_public_access
        .get(ctx.account_id)
        .is_some_and(|b| b.state == BLOCK_NEW_SHARING);
    let events = if blocked {
        vec![]
    } else {
        vec![Payload::ImageBlockPublicAccessChanged(
            pb::ImageBlockPublicAccessChanged {
                account_id: ctx.account_id.to_string(),
                state: BLOCK_NEW_SHARING.into(),
                effective_at_ms: ctx
                    .now_ms
                    .saturating_add(ctx.config.image_block_public_access_delay_ms),
            },
        )]
    };
    Ok(Decision::new(
        events,
        Reply::EnableImageBlockPublicAccess(pb::EnableImageBlockPublicAccessResponse {
            image_block_public_access_state: BLOCK_NEW_SHARING.into(),
        }),
    ))
}

/// DisableImageBlockPublicAccess (§5.13): `unblocked`, at once.
pub fn disable_image_block_public_access(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::DisableImageBlockPublicAccessRequest,
) -> Ec2Result<Decision> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let events = if state.image_block_public_access.contains_key(ctx.account_id) {
        vec![Payload::ImageBlockPublicAccessChanged(
            pb::ImageBlockPublicAccessChanged {
                account_id: ctx.account_id.to_string(),
                state: UNBLOCKED.into(),
                effective_at_ms: ctx.now_ms,
            },
        )]
    } else {
        vec![]
    };
    Ok(Decision::new(
        events,
        Reply::DisableImageBlockPublicAccess(pb::DisableImageBlockPublicAccessResponse {
            image_block_public_access_state: UNBLOCKED.into(),
        }),
    ))
}

/// GetImageBlockPublicAccessState (§5.13).
pub fn get_image_block_public_access_state(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::GetImageBlockPublicAccessStateRequest,
) -> Ec2Result<pb::GetImageBlockPublicAccessStateResponse> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(pb::GetImageBlockPublicAccessStateResponse {
        image_block_public_access_state: block_public_access_state(
            state,
            ctx.account_id,
            ctx.now_ms,
        )
        .into(),
        managed_by: MANAGED_BY_ACCOUNT.into(),
    })
}

// -------------------------------------------------------------------------------------------
// Snapshot attributes
// -------------------------------------------------------------------------------------------

/// A create-volume permission: an account, or everyone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum VolumePermission {
    User(String),
    All,
}

fn volume_permission_record(p: &VolumePermission) -> pb::CreateVolumePermissionRecord {
    match p {
        VolumePermission::User(u) => pb::CreateVolumePermissionRecord {
            user_id: u.clone(),
            group: String::new(),
        },
        VolumePermission::All => pb::CreateVolumePermissionRecord {
            user_id: String::new(),
            group: GROUP_ALL.into(),
        },
    }
}

/// Syntax of one create-volume permission: exactly one field; a 12-digit account
/// (`InvalidUserID.Malformed` `[unconfirmed]`) or the group `all` (`InvalidParameterValue`
/// `[unconfirmed]`).
fn volume_permission(user_id: &str, group: &str) -> Ec2Result<VolumePermission> {
    match (user_id.is_empty(), group.is_empty()) {
        (false, true) => {
            if ids::is_account_id(user_id) {
                Ok(VolumePermission::User(user_id.to_string()))
            } else {
                Err(Ec2Error::new(
                    ErrorCode::InvalidUserIdMalformed,
                    format!("Invalid user id: \"{user_id}\""),
                ))
            }
        }
        (true, false) => {
            if group == GROUP_ALL {
                Ok(VolumePermission::All)
            } else {
                Err(Ec2Error::invalid_value(
                    "group",
                    group,
                    "The only supported group is 'all'.",
                ))
            }
        }
        // [sim] code and text.
        _ => Err(combination(
            "Each create volume permission must name exactly one of UserId or Group.",
        )),
    }
}

/// ModifySnapshotAttribute (§5.12): the owner adds or removes create-volume permissions.
pub fn modify_snapshot_attribute(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ModifySnapshotAttributeRequest,
) -> Ec2Result<Decision> {
    if r.snapshot_id.is_empty() {
        return Err(Ec2Error::missing("SnapshotId"));
    }
    let flat_items = !r.user_ids.is_empty() || !r.group_names.is_empty();
    let flat = !r.attribute.is_empty() || !r.operation_type.is_empty() || flat_items;
    if r.create_volume_permission.is_none() && !flat {
        return Err(Ec2Error::missing("Attribute"));
    }
    // 3 Syntax and combinations.
    ids::check_snapshot_id("snapshotId", &r.snapshot_id)?;
    if r.create_volume_permission.is_some() && flat {
        return Err(combination(
            "Give either CreateVolumePermission or Attribute with OperationType, not both.",
        ));
    }
    let (add, items): (bool, Vec<VolumePermission>) = match &r.create_volume_permission {
        Some(m) => {
            if !m.add.is_empty() && !m.remove.is_empty() {
                return Err(combination(
                    "A request may add or remove create volume permissions, not both.",
                ));
            }
            let add = !m.add.is_empty();
            let list = if add { &m.add } else { &m.remove };
            let items = list
                .iter()
                .map(|p| volume_permission(&p.user_id, &p.group))
                .collect::<Ec2Result<Vec<_>>>()?;
            (add, items)
        }
        None => {
            match r.attribute.as_str() {
                "createVolumePermission" => {}
                // [sim] item lists without Attribute mean createVolumePermission.
                "" if flat_items => {}
                "" => return Err(Ec2Error::missing("Attribute")),
                "productCodes" => {
                    // [unconfirmed] code: product codes are read-only.
                    return Err(Ec2Error::new(
                        ErrorCode::UnsupportedOperation,
                        "The productCodes attribute cannot be modified.",
                    ));
                }
                other => {
                    return Err(Ec2Error::invalid_value(
                        "attribute",
                        other,
                        "Valid values: createVolumePermission",
                    ))
                }
            }
            let add = check_operation_type(&r.operation_type)?;
            let mut items = Vec::new();
            for u in &r.user_ids {
                items.push(volume_permission(u, "")?);
            }
            for g in &r.group_names {
                items.push(volume_permission("", g)?);
            }
            (add, items)
        }
    };
    if items.len() > MAX_SNAPSHOT_CHANGES {
        // [unconfirmed] code.
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "At most {MAX_SNAPSHOT_CHANGES} create volume permissions may be changed per \
                 request."
            ),
        ));
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 7 existence, 8 owner.
    let s = owned_snapshot(state, ctx.account_id, &r.snapshot_id)?;
    if add && !items.is_empty() {
        if s.encrypted && items.contains(&VolumePermission::All) {
            // [unconfirmed] code and text.
            return Err(Ec2Error::new(
                ErrorCode::OperationNotPermitted,
                "Encrypted snapshots cannot be shared publicly.",
            ));
        }
        if under_aws_managed_key(s) {
            return Err(Ec2Error::new(
                ErrorCode::OperationNotPermitted,
                "Encrypted snapshots with EBS default key cannot be shared",
            ));
        }
    }
    let has = |p: &VolumePermission| match p {
        VolumePermission::User(u) => s.create_volume_permissions.contains(u),
        VolumePermission::All => s.public,
    };
    let mut changed: Vec<VolumePermission> = items.into_iter().filter(|p| has(p) != add).collect();
    changed.sort();
    changed.dedup();
    let events = if changed.is_empty() {
        vec![]
    } else {
        let records: Vec<_> = changed.iter().map(volume_permission_record).collect();
        let (added, removed) = if add {
            (records, vec![])
        } else {
            (vec![], records)
        };
        vec![Payload::CreateVolumePermissionChanged(
            pb::CreateVolumePermissionChanged {
                snapshot_id: r.snapshot_id.clone(),
                added,
                removed,
            },
        )]
    };
    Ok(Decision::new(
        events,
        Reply::ModifySnapshotAttribute(pb::ModifySnapshotAttributeResponse { r#return: true }),
    ))
}

/// The create-volume permissions of a snapshot: accounts in id order, then `all` if public.
fn volume_permissions(s: &Snapshot) -> Vec<VolumePermission> {
    let mut out: Vec<VolumePermission> = s
        .create_volume_permissions
        .iter()
        .map(|u| VolumePermission::User(u.clone()))
        .collect();
    if s.public {
        out.push(VolumePermission::All);
    }
    out
}

fn snapshot_attribute_params(snapshot_id: &str, attribute: &str) -> Ec2Result<()> {
    if snapshot_id.is_empty() {
        return Err(Ec2Error::missing("SnapshotId"));
    }
    if attribute.is_empty() {
        return Err(Ec2Error::missing("Attribute"));
    }
    ids::check_snapshot_id("snapshotId", snapshot_id)
}

/// DescribeSnapshotAttribute (§5.12): `createVolumePermission` or `productCodes` of a snapshot
/// the caller owns (`[sim]` owner only).
pub fn describe_snapshot_attribute(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::DescribeSnapshotAttributeRequest,
) -> Ec2Result<pb::DescribeSnapshotAttributeResponse> {
    snapshot_attribute_params(&r.snapshot_id, &r.attribute)?;
    if !SNAPSHOT_ATTRIBUTES.contains(&r.attribute.as_str()) {
        return Err(unknown_attribute(&r.attribute));
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let s = owned_snapshot(state, ctx.account_id, &r.snapshot_id)?;
    let mut out = pb::DescribeSnapshotAttributeResponse {
        snapshot_id: r.snapshot_id.clone(),
        ..Default::default()
    };
    if r.attribute == "createVolumePermission" {
        out.create_volume_permissions = volume_permissions(s)
            .iter()
            .map(|p| {
                let rec = volume_permission_record(p);
                pb::CreateVolumePermission {
                    user_id: rec.user_id,
                    group: rec.group,
                }
            })
            .collect();
    }
    Ok(out)
}

/// ResetSnapshotAttribute (§5.12): removes every create-volume permission.
pub fn reset_snapshot_attribute(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ResetSnapshotAttributeRequest,
) -> Ec2Result<Decision> {
    snapshot_attribute_params(&r.snapshot_id, &r.attribute)?;
    if r.attribute != "createVolumePermission" {
        // [unconfirmed] code and text.
        return Err(Ec2Error::invalid_value(
            "attribute",
            &r.attribute,
            "Only createVolumePermission can be reset.",
        ));
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let s = owned_snapshot(state, ctx.account_id, &r.snapshot_id)?;
    let all = volume_permissions(s);
    let events = if all.is_empty() {
        vec![]
    } else {
        vec![Payload::CreateVolumePermissionChanged(
            pb::CreateVolumePermissionChanged {
                snapshot_id: r.snapshot_id.clone(),
                added: vec![],
                removed: all.iter().map(volume_permission_record).collect(),
            },
        )]
    };
    Ok(Decision::new(
        events,
        Reply::ResetSnapshotAttribute(pb::ResetSnapshotAttributeResponse { r#return: true }),
    ))
}

// -------------------------------------------------------------------------------------------
// What is shared with an account (the coordinator's DescribeSharedWithAccount, per region)
// -------------------------------------------------------------------------------------------

/// What one region shares with `account`, as `ctx`'s caller may learn it: images whose launch
/// permissions reach `account` (its id, its organization, an OU it is in or below, public unless
/// `exclude_public`) and snapshots whose create-volume permissions do (its id, public), each with
/// the grants that reach it, in id order. `account`'s own resources are not listed. A caller
/// asking about another account sees only its own resources shared with it.
pub fn shared_with_account(
    state: &State,
    ctx: &ReadCtx<'_>,
    account: &str,
    exclude_public: bool,
) -> pb::SharedWithAccountInRegion {
    let caller = ctx.account_id;
    let may_know = |owner: &str| caller == account || owner == caller;
    let images = state
        .images
        .values()
        .filter(|i| i.owner() != account && may_know(i.owner()))
        .filter_map(|i| {
            let granted_by: Vec<pb::LaunchPermission> = i
                .launch_permissions
                .iter()
                .filter(|p| !(exclude_public && **p == LaunchPermission::All))
                .filter(|p| covers(p, account, ctx.membership))
                .map(to_api)
                .collect();
            (!granted_by.is_empty()).then(|| pb::SharedImage {
                image: Some(image::render_image(state, i, ctx)),
                granted_by,
            })
        })
        .collect();
    let snapshots = state
        .snapshots
        .values()
        .filter(|s| s.owner_id != account && may_know(&s.owner_id))
        .filter_map(|s| {
            let mut granted_by = Vec::new();
            if s.create_volume_permissions.contains(account) {
                granted_by.push(pb::CreateVolumePermission {
                    user_id: account.to_string(),
                    group: String::new(),
                });
            }
            if s.public && !exclude_public {
                granted_by.push(pb::CreateVolumePermission {
                    user_id: String::new(),
                    group: GROUP_ALL.into(),
                });
            }
            (!granted_by.is_empty()).then(|| pb::SharedSnapshot {
                snapshot: Some(crate::snapshot::render_snapshot(state, s, ctx)),
                granted_by,
            })
        })
        .collect();
    pb::SharedWithAccountInRegion {
        region: ctx.region.to_string(),
        images,
        snapshots,
    }
}

// -------------------------------------------------------------------------------------------
// Apply
// -------------------------------------------------------------------------------------------

/// A public AMI is deprecated two years after its creation unless an earlier time is set
/// (EC2_SEMANTICS.md §5.10).
pub const PUBLIC_DEPRECATION_MS: u64 = 2 * 365 * 24 * 3_600_000;

/// Folds a sharing event into the state (unknown ids are ignored, as everywhere in `apply`).
pub(crate) fn apply(state: &mut State, p: &Payload) {
    match p {
        Payload::LaunchPermissionChanged(e) => {
            if let Some(img) = state.image_mut(&e.image_id) {
                for r in &e.removed {
                    if let Some(p) = from_record(r) {
                        img.launch_permissions.remove(&p);
                    }
                }
                for r in &e.added {
                    if let Some(p) = from_record(r) {
                        if p == LaunchPermission::All && img.deprecation_time_ms.is_none() {
                            img.deprecation_time_ms =
                                Some(img.registered.creation_date_ms + PUBLIC_DEPRECATION_MS);
                        }
                        img.launch_permissions.insert(p);
                    }
                }
            }
        }
        Payload::ImageAttributeChanged(e) => {
            if let Some(img) = state.image_mut(&e.image_id) {
                // The registration record holds the image's current attributes.
                if let Some(d) = &e.description {
                    std::sync::Arc::make_mut(&mut img.registered).description = d.clone();
                }
                if let Some(v) = &e.imds_support {
                    std::sync::Arc::make_mut(&mut img.registered).imds_support = v.clone();
                }
            }
        }
        Payload::ImageBlockPublicAccessChanged(e) => {
            if e.state == BLOCK_NEW_SHARING {
                state.image_block_public_access.insert(
                    e.account_id.clone(),
                    BlockPublicAccess {
                        state: e.state.clone(),
                        effective_at_ms: e.effective_at_ms,
                    },
                );
            } else {
                state.image_block_public_access.remove(&e.account_id);
            }
        }
        Payload::CreateVolumePermissionChanged(e) => {
            if let Some(s) = state.snapshots.get_mut(&e.snapshot_id) {
                for r in &e.removed {
                    if !r.user_id.is_empty() {
                        s.create_volume_permissions.remove(&r.user_id);
                    } else if r.group == GROUP_ALL {
                        s.public = false;
                    }
                }
                for r in &e.added {
                    if !r.user_id.is_empty() {
                        s.create_volume_permissions.insert(r.user_id.clone());
                    } else if r.group == GROUP_ALL {
                        s.public = true;
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
