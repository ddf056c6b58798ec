//! amisim's domain: the EC2 image, snapshot, volume and instance rules, as pure functions.
//!
//! - [`decide`]`(state, ctx, command)` checks a write against the current [`State`] in EC2's
//!   order of checks (EC2_SEMANTICS.md §4.8) and returns the events it causes plus the reply, or
//!   the exact EC2 error. It writes nothing.
//! - [`State::apply`] folds one logged event into the state; every projection is such a fold.
//! - [`query`] answers the Describe calls from a state snapshot.
//!
//! Pure: no I/O, no clock reads, no tokio. Time (`now_ms`) and randomness (a seeded RNG, for
//! ids) arrive in [`Ctx`], so a decision is reproducible from its inputs.
//!
//! Layout: one module per resource family, each owning its parse → check → events → render
//! (`image`, `snapshot`, `volume`, `instance`, `tags`, `copy` with the domain half of the copy
//! saga, `sharing` with launch and create-volume permissions and image block public access,
//! `accounts` with organization membership and the accounts file, `kms` with the region's KMS
//! keys and `encryption` with the EBS encryption settings and rules); `tick` fires timed
//! transitions;
//! `filter` holds Describe filters and pagination shared by all; `mapping` validates block
//! device mappings; `state` is the projection; `timing` the simulated durations and quotas.

pub mod accounts;
pub mod copy;
pub mod encryption;
pub mod error;
pub mod event_filter;
pub mod filter;
pub mod ids;
pub mod image;
pub mod image_table;
pub mod instance;
pub mod kms;
pub mod mapping;
pub mod sharing;
pub mod snapshot;
pub mod state;
pub mod tags;
pub mod tick;
pub mod time;
pub mod timing;
pub mod volume;

#[cfg(test)]
mod testkit;

use std::collections::HashSet;

pub use amisim_proto as proto;
use amisim_proto::event::Payload;
use amisim_proto::*;
use rand::RngCore;

pub use accounts::{Accounts, Membership};
pub use error::{Ec2Error, Ec2Result, ErrorClass, ErrorCode};
pub use state::State;
pub use timing::Config;

/// What a decision needs besides the state: who asks, where, when, and a seeded RNG for ids.
pub struct Ctx<'a> {
    /// The region this state belongs to (`us-east-1`).
    pub region: &'a str,
    /// The caller's 12-digit account id, or [`ids::SYSTEM_ACCOUNT`] for timers.
    pub account_id: &'a str,
    /// Simulated now, ms since the Unix epoch.
    pub now_ms: u64,
    pub rng: &'a mut dyn RngCore,
    pub config: &'a Config,
    /// Organization membership (org/OU launch permissions); empty unless set with
    /// [`Ctx::with_membership`].
    pub membership: &'a Membership,
    /// Ids handed out during this decision (so two new resources never share one).
    issued: HashSet<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        region: &'a str,
        account_id: &'a str,
        now_ms: u64,
        rng: &'a mut dyn RngCore,
        config: &'a Config,
    ) -> Self {
        Ctx {
            region,
            account_id,
            now_ms,
            rng,
            config,
            membership: Membership::none(),
            issued: HashSet::new(),
        }
    }

    /// The same context with the deployment's organization membership.
    pub fn with_membership(mut self, membership: &'a Membership) -> Self {
        self.membership = membership;
        self
    }

    /// A fresh id of `kind`, unused in `state` and in this decision.
    pub fn new_id(&mut self, kind: ids::Kind, state: &State) -> String {
        loop {
            let id = ids::generate(kind, self.rng);
            if !state.id_taken(&id) && self.issued.insert(id.clone()) {
                return id;
            }
        }
    }

    /// A fresh UUID-shaped string.
    pub fn new_uuid(&mut self) -> String {
        ids::generate_uuid(self.rng)
    }

    /// The read context of the same caller.
    pub fn read(&self) -> ReadCtx<'a> {
        ReadCtx {
            region: self.region,
            account_id: self.account_id,
            now_ms: self.now_ms,
            membership: self.membership,
        }
    }
}

/// What a read needs: who asks, where, and when (progress is computed from `now_ms`).
#[derive(Debug, Clone, Copy)]
pub struct ReadCtx<'a> {
    pub region: &'a str,
    pub account_id: &'a str,
    pub now_ms: u64,
    /// Organization membership (org/OU launch permissions); [`Membership::none`] if the
    /// deployment has no accounts file.
    pub membership: &'a Membership,
}

impl<'a> ReadCtx<'a> {
    /// A read of `account_id` in `region` at `now_ms`, without organization membership.
    pub fn new(region: &'a str, account_id: &'a str, now_ms: u64) -> Self {
        ReadCtx {
            region,
            account_id,
            now_ms,
            membership: Membership::none(),
        }
    }

    /// The same read with the deployment's organization membership.
    pub fn with_membership(mut self, membership: &'a Membership) -> Self {
        self.membership = membership;
        self
    }
}

/// A write: the EC2 request messages themselves, plus the internal timer tick.
// Each command is built once and moved into `decide`; boxing the large requests buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    RegisterImage(RegisterImageRequest),
    CreateImage(CreateImageRequest),
    DeregisterImage(DeregisterImageRequest),
    CreateVolume(CreateVolumeRequest),
    DeleteVolume(DeleteVolumeRequest),
    AttachVolume(AttachVolumeRequest),
    DetachVolume(DetachVolumeRequest),
    CreateSnapshot(CreateSnapshotRequest),
    DeleteSnapshot(DeleteSnapshotRequest),
    RunInstances(RunInstancesRequest),
    StopInstances(StopInstancesRequest),
    StartInstances(StartInstancesRequest),
    TerminateInstances(TerminateInstancesRequest),
    CreateTags(CreateTagsRequest),
    DeleteTags(DeleteTagsRequest),
    /// Sharing ([`sharing`]).
    ModifyImageAttribute(ModifyImageAttributeRequest),
    ResetImageAttribute(ResetImageAttributeRequest),
    CancelImageLaunchPermission(CancelImageLaunchPermissionRequest),
    EnableImageBlockPublicAccess(EnableImageBlockPublicAccessRequest),
    DisableImageBlockPublicAccess(DisableImageBlockPublicAccessRequest),
    ModifySnapshotAttribute(ModifySnapshotAttributeRequest),
    ResetSnapshotAttribute(ResetSnapshotAttributeRequest),
    /// EBS encryption settings ([`encryption`]).
    EnableEbsEncryptionByDefault(EnableEbsEncryptionByDefaultRequest),
    DisableEbsEncryptionByDefault(DisableEbsEncryptionByDefaultRequest),
    ModifyEbsDefaultKmsKeyId(ModifyEbsDefaultKmsKeyIdRequest),
    ResetEbsDefaultKmsKeyId(ResetEbsDefaultKmsKeyIdRequest),
    /// KMS ([`kms`], the `Kms` service).
    CreateKey(CreateKeyRequest),
    CreateAlias(CreateAliasRequest),
    EnableKey(EnableKeyRequest),
    DisableKey(DisableKeyRequest),
    ScheduleKeyDeletion(ScheduleKeyDeletionRequest),
    CancelKeyDeletion(CancelKeyDeletionRequest),
    PutKeyPolicy(PutKeyPolicyRequest),
    /// CopyImage, in the destination region (starts a copy saga, DESIGN.md §6).
    CopyImage(CopyImageRequest),
    /// CopySnapshot, in the destination region.
    CopySnapshot(CopySnapshotRequest),
    /// An idempotent step of a copy saga, sent by the coordinator (see [`copy`]).
    Saga(SagaStep),
    /// Fire every timer due at or before `ctx.now_ms` (system account).
    Tick,
}

impl Command {
    /// The EC2 action name.
    pub fn action(&self) -> &'static str {
        match self {
            Command::RegisterImage(_) => "RegisterImage",
            Command::CreateImage(_) => "CreateImage",
            Command::DeregisterImage(_) => "DeregisterImage",
            Command::CreateVolume(_) => "CreateVolume",
            Command::DeleteVolume(_) => "DeleteVolume",
            Command::AttachVolume(_) => "AttachVolume",
            Command::DetachVolume(_) => "DetachVolume",
            Command::CreateSnapshot(_) => "CreateSnapshot",
            Command::DeleteSnapshot(_) => "DeleteSnapshot",
            Command::RunInstances(_) => "RunInstances",
            Command::StopInstances(_) => "StopInstances",
            Command::StartInstances(_) => "StartInstances",
            Command::TerminateInstances(_) => "TerminateInstances",
            Command::CreateTags(_) => "CreateTags",
            Command::DeleteTags(_) => "DeleteTags",
            Command::ModifyImageAttribute(_) => "ModifyImageAttribute",
            Command::ResetImageAttribute(_) => "ResetImageAttribute",
            Command::CancelImageLaunchPermission(_) => "CancelImageLaunchPermission",
            Command::EnableImageBlockPublicAccess(_) => "EnableImageBlockPublicAccess",
            Command::DisableImageBlockPublicAccess(_) => "DisableImageBlockPublicAccess",
            Command::ModifySnapshotAttribute(_) => "ModifySnapshotAttribute",
            Command::ResetSnapshotAttribute(_) => "ResetSnapshotAttribute",
            Command::EnableEbsEncryptionByDefault(_) => "EnableEbsEncryptionByDefault",
            Command::DisableEbsEncryptionByDefault(_) => "DisableEbsEncryptionByDefault",
            Command::ModifyEbsDefaultKmsKeyId(_) => "ModifyEbsDefaultKmsKeyId",
            Command::ResetEbsDefaultKmsKeyId(_) => "ResetEbsDefaultKmsKeyId",
            Command::CreateKey(_) => "CreateKey",
            Command::CreateAlias(_) => "CreateAlias",
            Command::EnableKey(_) => "EnableKey",
            Command::DisableKey(_) => "DisableKey",
            Command::ScheduleKeyDeletion(_) => "ScheduleKeyDeletion",
            Command::CancelKeyDeletion(_) => "CancelKeyDeletion",
            Command::PutKeyPolicy(_) => "PutKeyPolicy",
            Command::CopyImage(_) => "CopyImage",
            Command::CopySnapshot(_) => "CopySnapshot",
            Command::Saga(s) => match s.step {
                Some(saga_step::Step::ReadCopySource(_)) => "ReadCopySource",
                Some(saga_step::Step::StartCopy(_)) => "StartCopy",
                Some(saga_step::Step::RecordLinkCondition(_)) => "RecordLinkCondition",
                None => "Saga",
            },
            Command::Tick => "Tick",
        }
    }
}

/// The answer to a write, as the EC2 response message.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    RegisterImage(RegisterImageResponse),
    CreateImage(CreateImageResponse),
    DeregisterImage(DeregisterImageResponse),
    CreateVolume(Volume),
    DeleteVolume(DeleteVolumeResponse),
    AttachVolume(VolumeAttachment),
    DetachVolume(VolumeAttachment),
    CreateSnapshot(amisim_proto::Snapshot),
    DeleteSnapshot(DeleteSnapshotResponse),
    RunInstances(Reservation),
    StopInstances(StopInstancesResponse),
    StartInstances(StartInstancesResponse),
    TerminateInstances(TerminateInstancesResponse),
    CreateTags(CreateTagsResponse),
    DeleteTags(DeleteTagsResponse),
    ModifyImageAttribute(ModifyImageAttributeResponse),
    ResetImageAttribute(ResetImageAttributeResponse),
    CancelImageLaunchPermission(CancelImageLaunchPermissionResponse),
    EnableImageBlockPublicAccess(EnableImageBlockPublicAccessResponse),
    DisableImageBlockPublicAccess(DisableImageBlockPublicAccessResponse),
    ModifySnapshotAttribute(ModifySnapshotAttributeResponse),
    ResetSnapshotAttribute(ResetSnapshotAttributeResponse),
    EnableEbsEncryptionByDefault(EnableEbsEncryptionByDefaultResponse),
    DisableEbsEncryptionByDefault(DisableEbsEncryptionByDefaultResponse),
    ModifyEbsDefaultKmsKeyId(ModifyEbsDefaultKmsKeyIdResponse),
    ResetEbsDefaultKmsKeyId(ResetEbsDefaultKmsKeyIdResponse),
    CreateKey(CreateKeyResponse),
    CreateAlias(CreateAliasResponse),
    EnableKey(EnableKeyResponse),
    DisableKey(DisableKeyResponse),
    ScheduleKeyDeletion(ScheduleKeyDeletionResponse),
    CancelKeyDeletion(CancelKeyDeletionResponse),
    PutKeyPolicy(PutKeyPolicyResponse),
    CopyImage(CopyImageResponse),
    CopySnapshot(CopySnapshotResponse),
    /// Boxed: the read of a copy source is large.
    Saga(Box<SagaStepResponse>),
    Tick,
}

/// The outcome of a write: the events to log (in order) and the reply to send once they are
/// durable. No events (an idempotent retry, a tick with nothing due) is a valid outcome.
///
/// `correlation_id` and `depends_on` go into the envelope of every event of the decision
/// (DESIGN.md §3): a copy's request and saga steps carry the copy id and the events in other
/// regions they causally follow. Build with [`Decision::new`] and the builder methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub events: Vec<Payload>,
    pub reply: Reply,
    /// The envelope's `correlation_id` for these events (`None`: empty).
    pub correlation_id: Option<String>,
    /// The envelope's `depends_on` for these events.
    pub depends_on: Vec<EventRef>,
}

impl Decision {
    /// Events and reply, with no correlation id and no dependencies.
    pub fn new(events: Vec<Payload>, reply: Reply) -> Self {
        Decision {
            events,
            reply,
            correlation_id: None,
            depends_on: Vec::new(),
        }
    }

    /// Sets the envelope's correlation id (ignored when empty).
    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        let id = correlation_id.into();
        self.correlation_id = (!id.is_empty()).then_some(id);
        self
    }

    /// Sets the events in other logs these events causally follow.
    pub fn depending_on(mut self, refs: Vec<EventRef>) -> Self {
        self.depends_on = refs;
        self
    }
}

/// Decides a write. Never panics; on error nothing is to be written.
pub fn decide(state: &State, ctx: &mut Ctx<'_>, command: Command) -> Ec2Result<Decision> {
    match command {
        Command::RegisterImage(r) => image::register_image(state, ctx, r),
        Command::CreateImage(r) => image::create_image(state, ctx, r),
        Command::DeregisterImage(r) => image::deregister_image(state, ctx, r),
        Command::CreateVolume(r) => volume::create_volume(state, ctx, r),
        Command::DeleteVolume(r) => volume::delete_volume(state, ctx, r),
        Command::AttachVolume(r) => volume::attach_volume(state, ctx, r),
        Command::DetachVolume(r) => volume::detach_volume(state, ctx, r),
        Command::CreateSnapshot(r) => snapshot::create_snapshot(state, ctx, r),
        Command::DeleteSnapshot(r) => snapshot::delete_snapshot(state, ctx, r),
        Command::RunInstances(r) => instance::run_instances(state, ctx, r),
        Command::StopInstances(r) => instance::stop_instances(state, ctx, r),
        Command::StartInstances(r) => instance::start_instances(state, ctx, r),
        Command::TerminateInstances(r) => instance::terminate_instances(state, ctx, r),
        Command::CreateTags(r) => tags::create_tags(state, ctx, r),
        Command::DeleteTags(r) => tags::delete_tags(state, ctx, r),
        Command::ModifyImageAttribute(r) => sharing::modify_image_attribute(state, ctx, r),
        Command::ResetImageAttribute(r) => sharing::reset_image_attribute(state, ctx, r),
        Command::CancelImageLaunchPermission(r) => {
            sharing::cancel_image_launch_permission(state, ctx, r)
        }
        Command::EnableImageBlockPublicAccess(r) => {
            sharing::enable_image_block_public_access(state, ctx, r)
        }
        Command::DisableImageBlockPublicAccess(r) => {
            sharing::disable_image_block_public_access(state, ctx, r)
        }
        Command::ModifySnapshotAttribute(r) => sharing::modify_snapshot_attribute(state, ctx, r),
        Command::ResetSnapshotAttribute(r) => sharing::reset_snapshot_attribute(state, ctx, r),
        Command::EnableEbsEncryptionByDefault(r) => encryption::enable_by_default(state, ctx, r),
        Command::DisableEbsEncryptionByDefault(r) => encryption::disable_by_default(state, ctx, r),
        Command::ModifyEbsDefaultKmsKeyId(r) => encryption::modify_default_key(state, ctx, r),
        Command::ResetEbsDefaultKmsKeyId(r) => encryption::reset_default_key(state, ctx, r),
        Command::CreateKey(r) => kms::create_key(state, ctx, r),
        Command::CreateAlias(r) => kms::create_alias(state, ctx, r),
        Command::EnableKey(r) => kms::enable_key(state, ctx, r),
        Command::DisableKey(r) => kms::disable_key(state, ctx, r),
        Command::ScheduleKeyDeletion(r) => kms::schedule_key_deletion(state, ctx, r),
        Command::CancelKeyDeletion(r) => kms::cancel_key_deletion(state, ctx, r),
        Command::PutKeyPolicy(r) => kms::put_key_policy(state, ctx, r),
        Command::CopyImage(r) => copy::copy_image(state, ctx, r),
        Command::CopySnapshot(r) => copy::copy_snapshot(state, ctx, r),
        Command::Saga(s) => copy::saga_step(state, ctx, s),
        Command::Tick => tick::tick(state, ctx),
    }
}

/// A read.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    DescribeImages(DescribeImagesRequest),
    DescribeSnapshots(DescribeSnapshotsRequest),
    DescribeVolumes(DescribeVolumesRequest),
    DescribeInstances(DescribeInstancesRequest),
    GetEbsEncryptionByDefault(GetEbsEncryptionByDefaultRequest),
    GetEbsDefaultKmsKeyId(GetEbsDefaultKmsKeyIdRequest),
    DescribeKey(DescribeKeyRequest),
    ListKeys(ListKeysRequest),
    ListAliases(ListAliasesRequest),
    GetKeyPolicy(GetKeyPolicyRequest),
    DescribeImageAttribute(DescribeImageAttributeRequest),
    GetImageBlockPublicAccessState(GetImageBlockPublicAccessStateRequest),
    DescribeSnapshotAttribute(DescribeSnapshotAttributeRequest),
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    DescribeImages(DescribeImagesResponse),
    DescribeSnapshots(DescribeSnapshotsResponse),
    DescribeVolumes(DescribeVolumesResponse),
    DescribeInstances(DescribeInstancesResponse),
    GetEbsEncryptionByDefault(GetEbsEncryptionByDefaultResponse),
    GetEbsDefaultKmsKeyId(GetEbsDefaultKmsKeyIdResponse),
    DescribeKey(DescribeKeyResponse),
    ListKeys(ListKeysResponse),
    ListAliases(ListAliasesResponse),
    GetKeyPolicy(GetKeyPolicyResponse),
    DescribeImageAttribute(DescribeImageAttributeResponse),
    GetImageBlockPublicAccessState(GetImageBlockPublicAccessStateResponse),
    DescribeSnapshotAttribute(DescribeSnapshotAttributeResponse),
}

/// Answers a read from a state snapshot.
pub fn query(state: &State, ctx: &ReadCtx<'_>, q: Query) -> Ec2Result<Answer> {
    Ok(match q {
        Query::DescribeImages(r) => Answer::DescribeImages(image::describe_images(state, ctx, r)?),
        Query::DescribeSnapshots(r) => {
            Answer::DescribeSnapshots(snapshot::describe_snapshots(state, ctx, r)?)
        }
        Query::DescribeVolumes(r) => {
            Answer::DescribeVolumes(volume::describe_volumes(state, ctx, r)?)
        }
        Query::DescribeInstances(r) => {
            Answer::DescribeInstances(instance::describe_instances(state, ctx, r)?)
        }
        Query::GetEbsEncryptionByDefault(r) => {
            Answer::GetEbsEncryptionByDefault(encryption::get_by_default(state, ctx, r)?)
        }
        Query::GetEbsDefaultKmsKeyId(r) => {
            Answer::GetEbsDefaultKmsKeyId(encryption::get_default_key(state, ctx, r)?)
        }
        Query::DescribeKey(r) => Answer::DescribeKey(kms::describe_key(state, ctx, r)?),
        Query::ListKeys(r) => Answer::ListKeys(kms::list_keys(state, ctx, r)?),
        Query::ListAliases(r) => Answer::ListAliases(kms::list_aliases(state, ctx, r)?),
        Query::GetKeyPolicy(r) => Answer::GetKeyPolicy(kms::get_key_policy(state, ctx, r)?),
        Query::DescribeImageAttribute(r) => {
            Answer::DescribeImageAttribute(sharing::describe_image_attribute(state, ctx, r)?)
        }
        Query::GetImageBlockPublicAccessState(r) => Answer::GetImageBlockPublicAccessState(
            sharing::get_image_block_public_access_state(state, ctx, r)?,
        ),
        Query::DescribeSnapshotAttribute(r) => {
            Answer::DescribeSnapshotAttribute(sharing::describe_snapshot_attribute(state, ctx, r)?)
        }
    })
}

/// The state after `events` (to render a reply from what the decision will produce).
pub fn preview(state: &State, events: &[Payload]) -> State {
    let mut s = state.clone();
    for e in events {
        s.apply_payload(e);
    }
    s
}

/// A stable fingerprint of a request's parameters (for ClientToken idempotency): SHA-256 of its
/// protobuf encoding with the token and `dry_run` cleared by the caller.
pub fn fingerprint<M: prost::Message>(m: &M) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(m.encode_to_vec()))
}
