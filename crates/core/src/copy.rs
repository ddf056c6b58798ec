//! Copies: CopyImage and CopySnapshot (EC2_SEMANTICS.md §4.2, §4.3, §5.3, §5.4, §6, §10.2) and
//! the domain half of the cross-region copy saga (DESIGN.md §6).
//!
//! A copy is tied together by its `copy_id` (`copy-` + 17 hex digits), the `correlation_id` of
//! every event of the copy in every region:
//!
//! 1. **Request**, in the destination: [`copy_image`] / [`copy_snapshot`] check what EC2 checks
//!    at once (syntax, `KmsKeyId` dependency, DryRun, ClientToken, name, quotas; and the source
//!    itself only when it is in this same region) and record `ImageCopyRequested` /
//!    `SnapshotCopyRequested`: the new image is `pending` without mappings, the new snapshot
//!    `pending` at `0%` on `vol-ffffffff` with size 0. [`State::copies_awaiting_start`] lists it.
//! 2. **ReadCopySource**, in the source ([`saga_step`]): the source as the requesting account
//!    may read it (visibility, state, storage and key access, `Encrypted=false`), recorded once
//!    per copy as `CopySourceRead` (ok or with the reason the copy must fail).
//! 3. **StartCopy**, in the destination: from that read, one `SnapshotCreated` per source
//!    snapshot and `ImageCopyStarted` (or `SnapshotCopyStarted`), due times from
//!    [`copy_duration_ms`]; or `ImageFailed` / `SnapshotFailed` with the recorded reason. The
//!    timers then complete the snapshots and make the image `available` 10 s after the last one
//!    ([`image_due`] fails it instead if a snapshot failed).
//!
//! Each step is idempotent: a retry writes nothing and answers what was decided. A target
//! deregistered (image) or deleted (snapshot) before the start cancels the copy: StartCopy then
//! writes nothing.
//!
//! `[sim]` Assumptions named here and in the tests: a copy takes one of the 20 in-flight slots
//! whether it copies a snapshot or an image; every copy moves the full snapshot (no incremental
//! lineage).
//!
//! Encryption follows EC2_SEMANTICS.md §4.2's copy outcome table ([`crate::encryption::copy_key`]),
//! evaluated in the destination when the copy starts: a key that is missing, of another region,
//! disabled, pending deletion or not admitting the requester fails the copy then (snapshot
//! `error` `Given key ID is not accessible`, image `failed` `Client.InternalError`). A source
//! under a key the requester may not use fails in ReadCopySource the same way. A key disabled or
//! scheduled for deletion while a copy transfers fails it in that same decision
//! ([`crate::kms::fail_copies_under`], through [`fail_copy_snapshot`]).

use std::collections::{BTreeMap, BTreeSet};

use amisim_proto::event::Payload;
use amisim_proto::{self as pb, saga_step::Step, EventRef, LinkParams};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::ids::{self, Kind};
use crate::state::{
    tag_records, tags_from, tri_bool, tri_encode, Image, ImageState, Mapping, Snapshot,
    SnapshotState, State, Tags, Timer,
};
use crate::timing::{gib, Config};
use crate::{image, snapshot, tags, volume, Ctx, Decision, Reply};

/// The placeholder volume id of every copied snapshot (EC2_SEMANTICS.md §1).
pub const COPY_VOLUME_ID: &str = "vol-ffffffff";
/// Longest description (characters).
pub const MAX_DESCRIPTION: usize = 255;
/// Time-based copy durations: multiples of this many minutes ...
pub const DURATION_STEP_MINUTES: i32 = 15;
/// ... up to this many (48 h).
pub const MAX_DURATION_MINUTES: i32 = 2_880;
/// StateReason of an image copy that failed in transfer (EC2_SEMANTICS.md §10.2).
pub const INTERNAL_ERROR_CODE: &str = "Client.InternalError";
pub const INTERNAL_ERROR_MESSAGE: &str = "Copy image failed with an internal error";
/// StateMessage of a snapshot copy whose source is not there (documented copy event).
pub const SOURCE_SNAPSHOT_INVALID: &str = "Source snapshot ID is not valid";
/// StateMessage of a snapshot copy whose key cannot be used (observed).
pub const KEY_NOT_ACCESSIBLE: &str = "Given key ID is not accessible";
/// Due time of a snapshot copy that has not started: its progress stays `0%`.
const NOT_STARTED: u64 = u64::MAX;

// -------------------------------------------------------------------------------------------
// Bookkeeping (kept in State)
// -------------------------------------------------------------------------------------------

/// What is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CopyKind {
    Image,
    Snapshot,
}

impl CopyKind {
    /// `image` or `snapshot` (the `kind` of the saga messages).
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKind::Image => "image",
            CopyKind::Snapshot => "snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(CopyKind::Image),
            "snapshot" => Some(CopyKind::Snapshot),
            _ => None,
        }
    }
}

/// A copy into this region, as requested (`ImageCopyRequested` / `SnapshotCopyRequested`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyTask {
    pub copy_id: String,
    pub kind: CopyKind,
    /// The new image or snapshot in this region.
    pub dest_id: String,
    /// The requester: owner of the new resources.
    pub owner_id: String,
    pub source_region: String,
    pub source_id: String,
    /// The request's `Encrypted`.
    pub encrypted: Option<bool>,
    /// The request's key as a key ARN of this region (empty: none).
    pub kms_key_id: String,
    pub copy_image_tags: bool,
    /// Tags every new snapshot gets.
    pub snapshot_tags: Tags,
    /// Time-based copy duration (0: standard).
    pub completion_duration_minutes: i32,
    pub requested_at_ms: u64,
    /// Seq of the request (`ImageCopyRequested` / `SnapshotCopyRequested`) in this region's log
    /// (0 in a preview, before it is logged): what the coordinator's ReadCopySource depends on.
    pub requested_seq: u64,
    /// Set by `ImageCopyStarted` / `SnapshotCopyStarted`.
    pub started_at_ms: Option<u64>,
}

impl CopyTask {
    /// The ReadCopySource step for the source region (`dest_region`: this region).
    /// `depends_on`: where the request is in this region's log.
    pub fn read_step(&self, dest_region: &str, depends_on: Vec<EventRef>) -> pb::SagaStep {
        pb::SagaStep {
            correlation_id: self.copy_id.clone(),
            depends_on,
            step: Some(Step::ReadCopySource(pb::ReadCopySource {
                copy_id: self.copy_id.clone(),
                kind: self.kind.as_str().to_string(),
                source_id: self.source_id.clone(),
                account_id: self.owner_id.clone(),
                dest_region: dest_region.to_string(),
                dest_id: self.dest_id.clone(),
                copy_image_tags: self.copy_image_tags,
                encrypted: tri_encode(self.encrypted),
            })),
        }
    }

    /// The StartCopy step for this region, from the source's read. `depends_on`: where the read
    /// is in the source region's log.
    pub fn start_step(
        &self,
        source: pb::CopySourceRead,
        link: Option<LinkParams>,
        depends_on: Vec<EventRef>,
    ) -> pb::SagaStep {
        pb::SagaStep {
            correlation_id: self.copy_id.clone(),
            depends_on,
            step: Some(Step::StartCopy(pb::StartCopy {
                copy_id: self.copy_id.clone(),
                dest_id: self.dest_id.clone(),
                source: Some(source),
                link,
            })),
        }
    }
}

/// A copy source read in this region (saga step ReadCopySource), kept so a retry answers the
/// same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReadRecord {
    pub dest_region: String,
    pub dest_id: String,
    pub ok: bool,
    /// Seq of the `CopySourceRead` in this region's log (0 in a preview, before it is logged).
    pub seq: u64,
    /// The recorded `CopySourceRead`, protobuf-encoded, hex.
    pub encoded: String,
}

impl CopyReadRecord {
    /// The recorded read.
    pub fn payload(&self) -> Option<pb::CopySourceRead> {
        let bytes = hex::decode(&self.encoded).ok()?;
        pb::CopySourceRead::decode(bytes.as_slice()).ok()
    }
}

/// Where a copy into this region stands (derived from its target's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyPhase {
    /// Requested: the coordinator must read the source and start it.
    AwaitingStart,
    /// Started: timers finish it.
    Transferring,
    /// The image is `available` (or later `disabled`), the snapshot `completed`.
    Done,
    /// The image `failed`, the snapshot `error`.
    Failed,
    /// The target was deregistered or deleted (a pending copy is cancelled so).
    Gone,
}

impl State {
    /// The phase of a copy into this region.
    pub fn copy_phase(&self, task: &CopyTask) -> CopyPhase {
        let settled = match task.kind {
            CopyKind::Image => self
                .images
                .get(task.dest_id.as_str())
                .map(|i| match i.state {
                    ImageState::Pending => None,
                    ImageState::Available | ImageState::Disabled => Some(CopyPhase::Done),
                    ImageState::Failed => Some(CopyPhase::Failed),
                    ImageState::Deregistered => Some(CopyPhase::Gone),
                }),
            CopyKind::Snapshot => self.snapshots.get(&task.dest_id).map(|s| match s.state {
                SnapshotState::Pending => None,
                SnapshotState::Completed => Some(CopyPhase::Done),
                SnapshotState::Error => Some(CopyPhase::Failed),
            }),
        };
        match settled {
            None => CopyPhase::Gone,
            Some(Some(p)) => p,
            Some(None) if task.started_at_ms.is_some() => CopyPhase::Transferring,
            Some(None) => CopyPhase::AwaitingStart,
        }
    }

    /// Copies requested here whose source has not been read and started yet, by copy id: the
    /// coordinator's to-do list (on restart too, since it is a fold of the log).
    pub fn copies_awaiting_start(&self) -> Vec<&CopyTask> {
        self.copies
            .values()
            .filter(|t| self.copy_phase(t) == CopyPhase::AwaitingStart)
            .collect()
    }

    /// Copies into this region not finished yet (awaiting start or transferring), by copy id.
    pub fn copies_in_flight(&self) -> Vec<&CopyTask> {
        self.copies
            .values()
            .filter(|t| {
                matches!(
                    self.copy_phase(t),
                    CopyPhase::AwaitingStart | CopyPhase::Transferring
                )
            })
            .collect()
    }
}

/// Copy slots in use in this region (EC2_SEMANTICS.md §6): copies in flight of `account`, or of
/// everyone with `None`. [sim, unconfirmed] one slot per copy, image or snapshot.
pub fn pending_copy_slots_used(state: &State, account: Option<&str>) -> usize {
    state
        .copies_in_flight()
        .into_iter()
        .filter(|t| account.is_none_or(|a| t.owner_id == a))
        .count()
}

// -------------------------------------------------------------------------------------------
// Timing
// -------------------------------------------------------------------------------------------

/// Transfer time of one snapshot copy (EC2_SEMANTICS.md §10.2): same region without data to
/// move (same account and encryption) 5 s; same region otherwise 30 s + bytes ÷ 150 MiB/s;
/// cross-region the link's latency + bytes ÷ its bandwidth, or without link parameters (or a
/// zero bandwidth) 60 s + bytes ÷ 75 MiB/s.
pub fn copy_duration_ms(
    config: &Config,
    same_region: bool,
    metadata_only: bool,
    bytes: u64,
    link: Option<&LinkParams>,
) -> u64 {
    let over = |base: u64, rate: u64| base.saturating_add(bytes.saturating_mul(1000) / rate.max(1));
    if same_region {
        if metadata_only {
            config.copy_metadata_ms
        } else {
            over(config.copy_local_base_ms, config.copy_local_bytes_per_s)
        }
    } else {
        match link.filter(|l| l.bandwidth_bytes_per_s > 0) {
            Some(l) => over(l.latency_ms, l.bandwidth_bytes_per_s),
            None => over(config.copy_remote_base_ms, config.copy_remote_bytes_per_s),
        }
    }
}

/// A time-based copy's duration: the requested minutes, or longer if the bytes do not fit at
/// the per-snapshot ceiling (500 MiB/s). `[sim]` The 2,000 MiB/s per region pair is not modelled.
pub fn time_based_ms(config: &Config, minutes: i32, bytes: u64) -> u64 {
    let wanted = u64::try_from(minutes).unwrap_or(0).saturating_mul(60_000);
    let fastest = bytes.saturating_mul(1000) / config.copy_time_based_bytes_per_s.max(1);
    wanted.max(fastest)
}

// -------------------------------------------------------------------------------------------
// Shared checks
// -------------------------------------------------------------------------------------------

fn check_description(description: &str) -> Ec2Result<()> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            "Value for parameter description is invalid. Length must be at most 255 characters.",
        ));
    }
    Ok(())
}

/// A time-based copy duration: a multiple of 15 in 15–2,880 minutes.
fn check_duration(param: &str, minutes: Option<i32>) -> Ec2Result<()> {
    match minutes {
        Some(m)
            if m % DURATION_STEP_MINUTES != 0
                || !(DURATION_STEP_MINUTES..=MAX_DURATION_MINUTES).contains(&m) =>
        {
            Err(Ec2Error::invalid_value(
                param,
                m,
                "It must be a multiple of 15 between 15 and 2880 minutes.",
            ))
        }
        _ => Ok(()),
    }
}

/// `KmsKeyId` requires `Encrypted=true` (EC2_SEMANTICS.md §4.2).
fn check_kms_dependency(kms_key_id: &str, encrypted: Option<bool>) -> Ec2Result<()> {
    if !kms_key_id.is_empty() && encrypted != Some(true) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterDependency,
            "The parameter KmsKeyId requires the parameter Encrypted to be set.",
        ));
    }
    Ok(())
}

/// `[sim]` Outposts and Local Zones are not simulated.
fn check_destination(params: &[(&str, &str)]) -> Ec2Result<()> {
    match params.iter().find(|(_, v)| !v.is_empty()) {
        Some((name, value)) => Err(Ec2Error::new(
            ErrorCode::UnsupportedOperation,
            format!("The parameter {name} ({value}) is not supported: Outposts and Local Zones are not simulated."),
        )),
        None => Ok(()),
    }
}

/// The copy slots of the caller (EC2_SEMANTICS.md §6).
fn check_copy_slots(state: &State, ctx: &Ctx<'_>) -> Ec2Result<()> {
    let max = ctx.config.max_copies_in_flight;
    if pending_copy_slots_used(state, Some(ctx.account_id)) >= max {
        return Err(Ec2Error::new(
            ErrorCode::ResourceLimitExceeded,
            format!("Too many snapshot copies in progress. The limit is {max} for this destination region."),
        ));
    }
    Ok(())
}

/// The key ARN of a requested key in this region (empty: none).
fn key_arn(ctx: &Ctx<'_>, kms_key_id: &str) -> String {
    if kms_key_id.is_empty() {
        String::new()
    } else {
        volume::kms_key_arn(ctx.region, ctx.account_id, kms_key_id)
    }
}

/// Why a source cannot be copied: the EC2 error of a same-region request; asynchronously
/// `Client.<code>` with the message is an image copy's StateReason, and `snapshot_message` a
/// snapshot copy's StateMessage.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
    snapshot_message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: String) -> Self {
        Refusal {
            snapshot_message: message.clone(),
            code,
            message,
        }
    }

    fn from_error(e: Ec2Error) -> Self {
        Self::new(e.code, e.message)
    }

    fn with_snapshot_message(mut self, m: &str) -> Self {
        self.snapshot_message = m.to_string();
        self
    }

    fn error(self) -> Ec2Error {
        Ec2Error::new(self.code, self.message)
    }

    fn reason_code(&self) -> String {
        format!("Client.{}", self.code.as_str())
    }
}

fn unencrypted_copy(snapshot_id: &str) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidRequest,
        format!("Snapshot {snapshot_id} is encrypted. Creating unencrypted copy from an encrypted snapshot is not supported."),
    )
}

/// Checks an image as a copy source for `account` (EC2_SEMANTICS.md §5.3 checks 6–10): visible,
/// `available`, every backing snapshot readable by the account [unconfirmed code], no foreign
/// Marketplace AMI, no `Encrypted=false` on an encrypted snapshot. Returns the image and its
/// backing snapshots (each once, in mapping order).
fn check_source_image<'s>(
    state: &'s State,
    account: &str,
    membership: &crate::Membership,
    image_id: &str,
    encrypted: Option<bool>,
) -> Result<(&'s Image, Vec<&'s Snapshot>), Refusal> {
    let img = state
        .images
        .get(image_id)
        .filter(|i| image::is_visible(i, account, membership))
        .ok_or_else(|| Refusal::from_error(Ec2Error::image_not_found(&[image_id])))?;
    if img.state != ImageState::Available {
        // [unconfirmed] code and wording.
        return Err(Refusal::new(
            ErrorCode::InvalidAmiIdUnavailable,
            format!(
                "The image id '[{image_id}]' is not available (state: {}).",
                img.state.as_str()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut snaps = Vec::new();
    for sid in img.snapshot_ids() {
        if !seen.insert(sid) {
            continue;
        }
        match state.snapshots.get(sid) {
            Some(s) if snapshot::is_visible(s, account) => snaps.push(s),
            // [unconfirmed] code (EC2_SEMANTICS.md §4.1).
            _ => {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    "You do not have permission to access the storage of this ami".to_string(),
                ))
            }
        }
    }
    if img.owner() != account && !img.registered.billing_products.is_empty() {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            "Images with EC2 BillingProduct codes cannot be copied to another AWS account."
                .to_string(),
        ));
    }
    if encrypted == Some(false) {
        if let Some(s) = snaps.iter().find(|s| s.encrypted) {
            return Err(unencrypted_copy(&s.snapshot_id));
        }
    }
    Ok((img, snaps))
}

/// Checks a snapshot as a copy source for `account` (EC2_SEMANTICS.md §5.4): visible,
/// `completed` (`[unconfirmed]` `IncorrectState`), no `Encrypted=false` on an encrypted source.
fn check_source_snapshot<'s>(
    state: &'s State,
    account: &str,
    snapshot_id: &str,
    encrypted: Option<bool>,
) -> Result<&'s Snapshot, Refusal> {
    let s = state
        .snapshots
        .get(snapshot_id)
        .filter(|s| snapshot::is_visible(s, account))
        .ok_or_else(|| {
            Refusal::from_error(Ec2Error::snapshot_not_found(snapshot_id))
                .with_snapshot_message(SOURCE_SNAPSHOT_INVALID)
        })?;
    if s.state != SnapshotState::Completed {
        return Err(Refusal::new(
            ErrorCode::IncorrectState,
            format!(
                "Snapshot '{snapshot_id}' is in the '{}' state; only 'completed' snapshots can be copied.",
                s.state.as_str()
            ),
        ));
    }
    if encrypted == Some(false) && s.encrypted {
        return Err(unencrypted_copy(snapshot_id));
    }
    Ok(s)
}

/// A source snapshot `account` may not decrypt in `region`: encrypted under a key that is not
/// usable by it (another account's AWS managed key, a key whose policy does not admit it, a
/// disabled or deleted key; EC2_SEMANTICS.md §4.1, §4.2).
fn key_inaccessible(state: &State, region: &str, s: &Snapshot, account: &str) -> bool {
    s.encrypted
        && crate::encryption::resource_key_usable(state, region, account, &s.kms_key_id).is_err()
}

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

/// A fresh `copy-` + 17 hex digits, unused in this region.
fn new_copy_id(state: &State, ctx: &mut Ctx<'_>) -> String {
    loop {
        let n = ctx.rng.next_u64() as u128 | ((ctx.rng.next_u32() as u128 & 0xf) << 64);
        let id = format!("copy-{n:017x}");
        if !state.copies.contains_key(&id) && !state.copy_reads.contains_key(&id) {
            return id;
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// -------------------------------------------------------------------------------------------
// CopyImage
// -------------------------------------------------------------------------------------------

/// CopyImage (EC2_SEMANTICS.md §5.3), in the destination region: the new image, `pending`, at
/// once; the saga does the rest. The source is checked now only if it is in this region.
pub fn copy_image(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CopyImageRequest,
) -> Ec2Result<Decision> {
    // 2 Missing parameters.
    if r.source_image_id.is_empty() {
        return Err(Ec2Error::missing("SourceImageId"));
    }
    if r.source_region.is_empty() {
        return Err(Ec2Error::missing("SourceRegion"));
    }
    if r.name.is_empty() {
        return Err(Ec2Error::missing("Name"));
    }
    // 3 Syntax, in §5.3's order.
    ctx.config.check_region(&r.source_region)?;
    ids::check_image_id(&r.source_image_id)?;
    image::check_name(&r.name)?;
    check_description(&r.description)?;
    check_duration(
        "SnapshotCopyCompletionDurationMinutes",
        r.snapshot_copy_completion_duration_minutes,
    )?;
    volume::check_client_token(&r.client_token)?;
    let mut spec = tags::from_specifications(&r.tag_specifications, &["image", "snapshot"])?;
    let image_tags = spec.remove("image").unwrap_or_default();
    let snapshot_tags = spec.remove("snapshot").unwrap_or_default();
    // 4 Combinations.
    check_kms_dependency(&r.kms_key_id, r.encrypted)?;
    check_destination(&[
        ("DestinationOutpostArn", &r.destination_outpost_arn),
        (
            "DestinationAvailabilityZone",
            &r.destination_availability_zone,
        ),
        (
            "DestinationAvailabilityZoneId",
            &r.destination_availability_zone_id,
        ),
    ])?;
    // 5 DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 6 Idempotency (EC2_SEMANTICS.md §4.3).
    let fingerprint = {
        let mut bare = r.clone();
        bare.client_token.clear();
        bare.dry_run = false;
        crate::fingerprint(&bare)
    };
    if !r.client_token.is_empty() {
        let key = (
            ctx.account_id.to_string(),
            "CopyImage".to_string(),
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
            return Ok(Decision::new(
                vec![],
                Reply::CopyImage(pb::CopyImageResponse {
                    image_id: used.resource_id.clone(),
                }),
            ));
        }
    }
    // 7–10 The source, when it is in this region (else the saga finds out, DESIGN.md §6).
    if r.source_region == ctx.region {
        check_source_image(
            state,
            ctx.account_id,
            ctx.membership,
            &r.source_image_id,
            r.encrypted,
        )
        .map_err(Refusal::error)?;
    }
    check_name_free(state, ctx.account_id, &r.name)?;
    // 11 Quotas.
    check_copy_slots(state, ctx)?;
    crate::image::check_image_quota(state, ctx)?;

    let image_id = ctx.new_id(Kind::Image, state);
    let copy_id = new_copy_id(state, ctx);
    let event = pb::ImageCopyRequested {
        image_id: image_id.clone(),
        owner_id: ctx.account_id.to_string(),
        name: r.name,
        description: r.description,
        source_region: r.source_region,
        source_image_id: r.source_image_id,
        encrypted: tri_encode(r.encrypted),
        kms_key_id: key_arn(ctx, &r.kms_key_id),
        copy_image_tags: r.copy_image_tags,
        image_tags: tag_records(&image_tags),
        snapshot_tags: tag_records(&snapshot_tags),
        request_fingerprint: if r.client_token.is_empty() {
            String::new()
        } else {
            fingerprint
        },
        client_token: r.client_token,
        completion_duration_minutes: r.snapshot_copy_completion_duration_minutes.unwrap_or(0),
        requested_at_ms: ctx.now_ms,
        copy_id: copy_id.clone(),
    };
    Ok(Decision::new(
        vec![Payload::ImageCopyRequested(event)],
        Reply::CopyImage(pb::CopyImageResponse { image_id }),
    )
    .correlated(copy_id))
}

// -------------------------------------------------------------------------------------------
// CopySnapshot
// -------------------------------------------------------------------------------------------

/// CopySnapshot (EC2_SEMANTICS.md §5.4), in the destination region: the new snapshot, `pending`
/// at `0%`, at once. Source tags are never copied.
pub fn copy_snapshot(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CopySnapshotRequest,
) -> Ec2Result<Decision> {
    // 2 Missing parameters.
    if r.source_snapshot_id.is_empty() {
        return Err(Ec2Error::missing("SourceSnapshotId"));
    }
    if r.source_region.is_empty() {
        return Err(Ec2Error::missing("SourceRegion"));
    }
    // 3 Syntax.
    ctx.config.check_region(&r.source_region)?;
    ids::check_snapshot_id("sourceSnapshotId", &r.source_snapshot_id)?;
    check_description(&r.description)?;
    check_duration("CompletionDurationMinutes", r.completion_duration_minutes)?;
    if !r.destination_region.is_empty() && r.destination_region != ctx.region {
        // [sim] The destination is the region called.
        return Err(Ec2Error::invalid_value(
            "destinationRegion",
            &r.destination_region,
            "It must be the region the request is sent to.",
        ));
    }
    let snapshot_tags = tags::from_specifications(&r.tag_specifications, &["snapshot"])?
        .remove("snapshot")
        .unwrap_or_default();
    // 4 Combinations.
    check_kms_dependency(&r.kms_key_id, r.encrypted)?;
    check_destination(&[
        ("DestinationOutpostArn", &r.destination_outpost_arn),
        (
            "DestinationAvailabilityZone",
            &r.destination_availability_zone,
        ),
    ])?;
    // 5 DryRun.
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // 7–9 The source, when it is in this region.
    if r.source_region == ctx.region {
        check_source_snapshot(state, ctx.account_id, &r.source_snapshot_id, r.encrypted)
            .map_err(Refusal::error)?;
    }
    // 10 Quotas.
    check_copy_slots(state, ctx)?;
    let owned = state
        .snapshots
        .values()
        .filter(|s| s.owner_id == ctx.account_id)
        .count();
    if owned >= ctx.config.max_snapshots {
        return Err(Ec2Error::new(
            ErrorCode::SnapshotLimitExceeded,
            format!(
                "The maximum number of snapshots ({}) has been reached.",
                ctx.config.max_snapshots
            ),
        ));
    }

    let snapshot_id = ctx.new_id(Kind::Snapshot, state);
    let copy_id = new_copy_id(state, ctx);
    let description = if r.description.is_empty() {
        // [unconfirmed] EC2's default description of a copy.
        format!("[Copied {} from {}]", r.source_snapshot_id, r.source_region)
    } else {
        r.description
    };
    let event = pb::SnapshotCopyRequested {
        snapshot_id: snapshot_id.clone(),
        owner_id: ctx.account_id.to_string(),
        description,
        source_region: r.source_region,
        source_snapshot_id: r.source_snapshot_id,
        encrypted: tri_encode(r.encrypted),
        kms_key_id: key_arn(ctx, &r.kms_key_id),
        tags: tag_records(&snapshot_tags),
        completion_duration_minutes: r.completion_duration_minutes.unwrap_or(0),
        requested_at_ms: ctx.now_ms,
        copy_id: copy_id.clone(),
    };
    Ok(Decision::new(
        vec![Payload::SnapshotCopyRequested(event)],
        Reply::CopySnapshot(pb::CopySnapshotResponse {
            snapshot_id,
            tags: tags::render(&snapshot_tags),
        }),
    )
    .correlated(copy_id))
}

// -------------------------------------------------------------------------------------------
// Saga steps
// -------------------------------------------------------------------------------------------

/// A saga step sent by the coordinator. The decision carries the step's correlation id (the
/// copy id if empty) and `depends_on` for the envelopes of its events.
pub fn saga_step(state: &State, ctx: &mut Ctx<'_>, step: pb::SagaStep) -> Ec2Result<Decision> {
    let pb::SagaStep {
        correlation_id,
        depends_on,
        step,
    } = step;
    let (copy_id, (events, response)) = match step {
        Some(Step::ReadCopySource(s)) => (s.copy_id.clone(), read_copy_source(state, ctx, s)?),
        Some(Step::StartCopy(s)) => (s.copy_id.clone(), start_copy(state, ctx, s)?),
        Some(Step::RecordLinkCondition(r)) => {
            // Not a copy: the Chaos service's audit record of a link change (ADR 0008).
            let change = r.change.ok_or_else(|| Ec2Error::missing("Change"))?;
            let response = pb::SagaStepResponse {
                outcome: "recorded".into(),
                ..Default::default()
            };
            return Ok(Decision::new(
                vec![Payload::LinkConditionChanged(change)],
                Reply::Saga(Box::new(response)),
            )
            .correlated(correlation_id)
            .depending_on(depends_on));
        }
        None => return Err(Ec2Error::missing("Step")),
    };
    if !correlation_id.is_empty() && correlation_id != copy_id {
        return Err(Ec2Error::invalid_value(
            "correlationId",
            &correlation_id,
            "It must be the copy id of the step.",
        ));
    }
    Ok(Decision::new(events, Reply::Saga(Box::new(response)))
        .correlated(copy_id)
        .depending_on(depends_on))
}

type StepOutcome = (Vec<Payload>, pb::SagaStepResponse);

/// ReadCopySource, in the source region: reads the source as the requesting account, once per
/// copy id.
fn read_copy_source(
    state: &State,
    ctx: &mut Ctx<'_>,
    s: pb::ReadCopySource,
) -> Ec2Result<StepOutcome> {
    if s.copy_id.is_empty() {
        return Err(Ec2Error::missing("CopyId"));
    }
    let kind = CopyKind::parse(&s.kind)
        .ok_or_else(|| Ec2Error::invalid_value("kind", &s.kind, "Valid values: image, snapshot"))?;
    if !ids::is_account_id(&s.account_id) {
        return Err(Ec2Error::invalid_value(
            "accountId",
            &s.account_id,
            "Expected a 12-digit account id.",
        ));
    }
    if let Some(rec) = state.copy_reads.get(&s.copy_id) {
        let source = rec
            .payload()
            .ok_or_else(|| Ec2Error::internal("The recorded copy source read is unreadable."))?;
        if source.kind != s.kind
            || source.source_id != s.source_id
            || source.account_id != s.account_id
            || source.dest_id != s.dest_id
        {
            return Err(Ec2Error::invalid_value(
                "copyId",
                &s.copy_id,
                "It was read before for another copy.",
            ));
        }
        return Ok((
            vec![],
            pb::SagaStepResponse {
                outcome: "already-read".into(),
                source: Some(source),
                source_read_at: Some(EventRef {
                    region: ctx.region.to_string(),
                    seq: rec.seq,
                }),
                dest_state: String::new(),
            },
        ));
    }
    let encrypted = tri_bool(s.encrypted);
    let mut read = pb::CopySourceRead {
        copy_id: s.copy_id.clone(),
        kind: s.kind.clone(),
        source_id: s.source_id.clone(),
        account_id: s.account_id.clone(),
        dest_region: s.dest_region.clone(),
        dest_id: s.dest_id.clone(),
        encrypted: s.encrypted,
        copy_image_tags: s.copy_image_tags,
        source_region: ctx.region.to_string(),
        read_at_ms: ctx.now_ms,
        ..Default::default()
    };
    let fail = |read: &mut pb::CopySourceRead, code: String, message: String| {
        read.ok = false;
        read.failure_code = code;
        read.failure_message = message;
    };
    match kind {
        CopyKind::Image => {
            match check_source_image(
                state,
                &s.account_id,
                ctx.membership,
                &s.source_id,
                encrypted,
            ) {
                Err(r) => fail(&mut read, r.reason_code(), r.message),
                Ok((_, snaps))
                    if snaps
                        .iter()
                        .any(|x| key_inaccessible(state, ctx.region, x, &s.account_id)) =>
                {
                    fail(
                        &mut read,
                        INTERNAL_ERROR_CODE.into(),
                        INTERNAL_ERROR_MESSAGE.into(),
                    )
                }
                Ok((img, snaps)) => {
                    let d = &img.registered;
                    read.ok = true;
                    read.architecture = d.architecture.clone();
                    read.virtualization_type = d.virtualization_type.clone();
                    read.root_device_type = d.root_device_type.clone();
                    read.root_device_name = d.root_device_name.clone();
                    read.boot_mode = d.boot_mode.clone();
                    read.ena_support = tri_encode(d.ena_support);
                    read.sriov_net_support = d.sriov_net_support.clone();
                    read.tpm_support = d.tpm_support.clone();
                    read.imds_support = d.imds_support.clone();
                    read.billing_products = d.billing_products.clone();
                    read.platform = d.platform.clone();
                    read.image_type = d.image_type.clone();
                    read.description = d.description.clone();
                    read.kernel_id = d.kernel_id.clone();
                    read.ramdisk_id = d.ramdisk_id.clone();
                    read.source_owner_id = d.owner_id.clone();
                    read.block_device_mappings =
                        d.block_device_mappings.iter().map(Into::into).collect();
                    read.snapshots = snaps.iter().map(|x| source_snapshot(x)).collect();
                    // Only the requester's own user tags (EC2_SEMANTICS.md §5.3).
                    if s.copy_image_tags && img.owner() == s.account_id {
                        let user: Tags = img
                            .tags
                            .iter()
                            .filter(|(k, _)| !k.starts_with("aws:"))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        read.tags = tag_records(&user);
                    }
                }
            }
        }
        CopyKind::Snapshot => {
            match check_source_snapshot(state, &s.account_id, &s.source_id, encrypted) {
                Err(r) => {
                    let code = r.reason_code();
                    fail(&mut read, code, r.snapshot_message)
                }
                Ok(x) if key_inaccessible(state, ctx.region, x, &s.account_id) => fail(
                    &mut read,
                    INTERNAL_ERROR_CODE.into(),
                    KEY_NOT_ACCESSIBLE.into(),
                ),
                Ok(x) => {
                    read.ok = true;
                    read.source_owner_id = x.owner_id.clone();
                    read.description = x.description.clone();
                    read.snapshots = vec![source_snapshot(x)];
                }
            }
        }
    }
    Ok((
        vec![Payload::CopySourceRead(read.clone())],
        pb::SagaStepResponse {
            outcome: "read".into(),
            source: Some(read),
            source_read_at: Some(EventRef {
                region: ctx.region.to_string(),
                seq: 0,
            }),
            dest_state: String::new(),
        },
    ))
}

fn source_snapshot(s: &Snapshot) -> pb::CopySourceSnapshot {
    pb::CopySourceSnapshot {
        snapshot_id: s.snapshot_id.clone(),
        owner_id: s.owner_id.clone(),
        volume_size: s.volume_size,
        full_snapshot_size_in_bytes: s.full_snapshot_size_in_bytes,
        encrypted: s.encrypted,
        kms_key_id: s.kms_key_id.clone(),
        data_encryption_key_id: s.data_encryption_key_id.clone(),
    }
}

/// One snapshot's transfer.
struct Transfer {
    encrypted: bool,
    kms_key_id: String,
    data_encryption_key_id: String,
    full_bytes: i64,
    transferred_bytes: i64,
    complete_at_ms: u64,
    transfer_type: &'static str,
}

/// Plans the copy of one source snapshot: encryption per EC2_SEMANTICS.md §4.2's table
/// ([`crate::encryption::copy_key`], checked against this region's KMS now), data key (kept when
/// the key is, else new), and the due time (§10.2). `Err`: the key cannot be used.
fn plan_transfer(
    state: &State,
    ctx: &mut Ctx<'_>,
    task: &CopyTask,
    src: &pb::CopySourceSnapshot,
    same_region: bool,
    link: Option<&LinkParams>,
) -> Result<Transfer, crate::kms::KeyProblem> {
    let own = src.owner_id == task.owner_id;
    let key = crate::encryption::copy_key(
        state,
        ctx.region,
        &task.owner_id,
        task.encrypted,
        &task.kms_key_id,
        crate::encryption::SourceSnapshot {
            owner_id: &src.owner_id,
            encrypted: src.encrypted,
            kms_key_id: &src.kms_key_id,
        },
        same_region,
    )?;
    let encrypted = key.is_some();
    let kms_key_id = key.unwrap_or_default();
    let data_encryption_key_id = if !encrypted {
        String::new()
    } else if src.encrypted && kms_key_id == src.kms_key_id {
        src.data_encryption_key_id.clone()
    } else {
        ctx.new_uuid()
    };
    let metadata_only =
        same_region && own && encrypted == src.encrypted && kms_key_id == src.kms_key_id;
    let full = if src.full_snapshot_size_in_bytes > 0 {
        u64::try_from(src.full_snapshot_size_in_bytes).unwrap_or(0)
    } else {
        gib(src.volume_size)
    };
    let (duration, transfer_type) = if task.completion_duration_minutes > 0 {
        (
            time_based_ms(ctx.config, task.completion_duration_minutes, full),
            "time-based",
        )
    } else {
        (
            copy_duration_ms(ctx.config, same_region, metadata_only, full, link),
            "standard",
        )
    };
    Ok(Transfer {
        encrypted,
        kms_key_id,
        data_encryption_key_id,
        full_bytes: to_i64(full),
        transferred_bytes: if metadata_only { 0 } else { to_i64(full) },
        complete_at_ms: ctx.now_ms.saturating_add(duration),
        transfer_type,
    })
}

/// StartCopy, in the destination region: starts the transfer (or fails the copy) once.
fn start_copy(state: &State, ctx: &mut Ctx<'_>, s: pb::StartCopy) -> Ec2Result<StepOutcome> {
    if s.copy_id.is_empty() {
        return Err(Ec2Error::missing("CopyId"));
    }
    let task = state.copies.get(&s.copy_id).ok_or_else(|| {
        Ec2Error::invalid_value(
            "copyId",
            &s.copy_id,
            "No copy with this id was requested here.",
        )
    })?;
    if !s.dest_id.is_empty() && s.dest_id != task.dest_id {
        return Err(Ec2Error::invalid_value(
            "destId",
            &s.dest_id,
            &format!("The copy {} copies into {}.", task.copy_id, task.dest_id),
        ));
    }
    let source = s
        .source
        .as_ref()
        .ok_or_else(|| Ec2Error::missing("Source"))?;
    if source.copy_id != task.copy_id
        || source.kind != task.kind.as_str()
        || source.dest_id != task.dest_id
        || source.source_id != task.source_id
    {
        return Err(Ec2Error::invalid_value(
            "source",
            &source.copy_id,
            "The source read is not this copy's.",
        ));
    }
    let idle = |outcome: &str| -> StepOutcome {
        (
            vec![],
            pb::SagaStepResponse {
                outcome: outcome.into(),
                dest_state: dest_state(state, task),
                ..Default::default()
            },
        )
    };
    match state.copy_phase(task) {
        CopyPhase::AwaitingStart => {}
        CopyPhase::Transferring | CopyPhase::Done => return Ok(idle("already-started")),
        CopyPhase::Failed => return Ok(idle("already-failed")),
        CopyPhase::Gone => return Ok(idle("cancelled")),
    }
    let link = s.link.as_ref();
    let (events, outcome) = match task.kind {
        CopyKind::Image => match state.images.get(task.dest_id.as_str()) {
            Some(img) => start_image_copy(state, ctx, task, img, source, link),
            None => return Ok(idle("cancelled")),
        },
        CopyKind::Snapshot => start_snapshot_copy(state, ctx, task, source, link),
    };
    let after = crate::preview(state, &events);
    let dest_state = after
        .copies
        .get(&task.copy_id)
        .map(|t| dest_state(&after, t))
        .unwrap_or_default();
    Ok((
        events,
        pb::SagaStepResponse {
            outcome: outcome.into(),
            dest_state,
            ..Default::default()
        },
    ))
}

/// The state of a copy's target (empty when gone).
fn dest_state(state: &State, task: &CopyTask) -> String {
    match task.kind {
        CopyKind::Image => state
            .images
            .get(task.dest_id.as_str())
            .map(|i| i.state.as_str().to_string()),
        CopyKind::Snapshot => state
            .snapshots
            .get(&task.dest_id)
            .map(|s| s.state.as_str().to_string()),
    }
    .unwrap_or_default()
}

fn image_failed(image_id: &str, code: &str, message: &str) -> Payload {
    Payload::ImageFailed(pb::ImageFailed {
        image_id: image_id.to_string(),
        state_reason_code: code.to_string(),
        state_reason_message: message.to_string(),
    })
}

fn start_image_copy(
    state: &State,
    ctx: &mut Ctx<'_>,
    task: &CopyTask,
    img: &Image,
    source: &pb::CopySourceRead,
    link: Option<&LinkParams>,
) -> (Vec<Payload>, &'static str) {
    let failed =
        |code: &str, message: &str| (vec![image_failed(&task.dest_id, code, message)], "failed");
    if !source.ok {
        return failed(&source.failure_code, &source.failure_message);
    }
    let same_region = source.source_region == ctx.region;
    let mut events = Vec::new();
    // Source snapshot id → (new snapshot id, its encryption).
    let mut copied: BTreeMap<&str, (String, bool, String)> = BTreeMap::new();
    let mut last_complete: Option<u64> = None;
    for src in &source.snapshots {
        if copied.contains_key(src.snapshot_id.as_str()) {
            continue;
        }
        // A key that cannot be used fails the whole image (EC2_SEMANTICS.md §10.2).
        let Ok(t) = plan_transfer(state, ctx, task, src, same_region, link) else {
            return failed(INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE);
        };
        let snapshot_id = ctx.new_id(Kind::Snapshot, state);
        last_complete = Some(last_complete.map_or(t.complete_at_ms, |l| l.max(t.complete_at_ms)));
        events.push(Payload::SnapshotCreated(pb::SnapshotCreated {
            snapshot_id: snapshot_id.clone(),
            owner_id: task.owner_id.clone(),
            volume_id: COPY_VOLUME_ID.into(),
            volume_size: src.volume_size,
            description: format!(
                "Copied for DestinationAmi {} from SourceAmi {} for SourceSnapshot {}. Task created on {}.",
                task.dest_id, task.source_id, src.snapshot_id, task.requested_at_ms
            ),
            encrypted: t.encrypted,
            kms_key_id: t.kms_key_id.clone(),
            data_encryption_key_id: t.data_encryption_key_id,
            tags: tag_records(&task.snapshot_tags),
            start_time_ms: ctx.now_ms,
            complete_at_ms: t.complete_at_ms,
            full_snapshot_size_in_bytes: t.full_bytes,
            transferred_bytes: t.transferred_bytes,
            for_image_id: task.dest_id.clone(),
            transfer_type: t.transfer_type.into(),
            completion_duration_minutes: task.completion_duration_minutes,
        }));
        copied.insert(&src.snapshot_id, (snapshot_id, t.encrypted, t.kms_key_id));
    }
    let mut mappings = Vec::with_capacity(source.block_device_mappings.len());
    for m in &source.block_device_mappings {
        let mut m = m.clone();
        if m.ebs && !m.snapshot_id.is_empty() {
            let Some((id, encrypted, key)) = copied.get(m.snapshot_id.as_str()) else {
                // The read names a snapshot it did not describe: nothing sensible to copy.
                return failed(INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE);
            };
            m.snapshot_id = id.clone();
            m.encrypted = *encrypted;
            m.kms_key_id = key.clone();
        }
        mappings.push(m);
    }
    // An image without snapshots (instance store) copies its bundle in the base time.
    let done = last_complete.unwrap_or_else(|| {
        ctx.now_ms
            .saturating_add(copy_duration_ms(ctx.config, same_region, false, 0, link))
    });
    let available_at_ms = done.saturating_add(ctx.config.copy_image_available_delay_ms);
    // Source user tags (read only for the source's owner); tags already on the image win, and
    // the image keeps at most 50 user tags.
    let copied_tags: Tags = if task.copy_image_tags {
        let room = tags::MAX_TAGS
            .saturating_sub(img.tags.keys().filter(|k| !k.starts_with("aws:")).count());
        tags_from(&source.tags)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("aws:") && !img.tags.contains_key(k))
            .take(room)
            .collect()
    } else {
        Tags::new()
    };
    let image_location = if source.root_device_type == "instance-store" {
        // [sim] EC2 copies the bundle to `amis-for-<account>-in-<region>-<hash>`.
        let hash = task.copy_id.trim_start_matches("copy-");
        format!(
            "amis-for-{}-in-{}-{hash}/{}/image.manifest.xml",
            task.owner_id, ctx.region, img.registered.name
        )
    } else {
        format!("{}/{}", task.owner_id, img.registered.name)
    };
    events.push(Payload::ImageCopyStarted(pb::ImageCopyStarted {
        image_id: task.dest_id.clone(),
        copy_id: task.copy_id.clone(),
        architecture: source.architecture.clone(),
        virtualization_type: source.virtualization_type.clone(),
        root_device_type: source.root_device_type.clone(),
        root_device_name: source.root_device_name.clone(),
        boot_mode: source.boot_mode.clone(),
        ena_support: source.ena_support,
        sriov_net_support: source.sriov_net_support.clone(),
        tpm_support: source.tpm_support.clone(),
        imds_support: source.imds_support.clone(),
        billing_products: source.billing_products.clone(),
        platform: source.platform.clone(),
        image_type: source.image_type.clone(),
        kernel_id: source.kernel_id.clone(),
        ramdisk_id: source.ramdisk_id.clone(),
        block_device_mappings: mappings,
        tags: tag_records(&copied_tags),
        available_at_ms,
        started_at_ms: ctx.now_ms,
        image_location,
    }));
    (events, "started")
}

fn start_snapshot_copy(
    state: &State,
    ctx: &mut Ctx<'_>,
    task: &CopyTask,
    source: &pb::CopySourceRead,
    link: Option<&LinkParams>,
) -> (Vec<Payload>, &'static str) {
    let failed = |message: &str| {
        (
            vec![Payload::SnapshotFailed(pb::SnapshotFailed {
                snapshot_id: task.dest_id.clone(),
                state_message: message.to_string(),
            })],
            "failed",
        )
    };
    if !source.ok {
        return failed(&source.failure_message);
    }
    let Some(src) = source.snapshots.first() else {
        return failed(SOURCE_SNAPSHOT_INVALID);
    };
    let same_region = source.source_region == ctx.region;
    let Ok(t) = plan_transfer(state, ctx, task, src, same_region, link) else {
        return failed(KEY_NOT_ACCESSIBLE);
    };
    (
        vec![Payload::SnapshotCopyStarted(pb::SnapshotCopyStarted {
            snapshot_id: task.dest_id.clone(),
            copy_id: task.copy_id.clone(),
            volume_size: src.volume_size,
            full_snapshot_size_in_bytes: t.full_bytes,
            encrypted: t.encrypted,
            kms_key_id: t.kms_key_id,
            data_encryption_key_id: t.data_encryption_key_id,
            complete_at_ms: t.complete_at_ms,
            transferred_bytes: t.transferred_bytes,
            transfer_type: t.transfer_type.into(),
            started_at_ms: ctx.now_ms,
        })],
        "started",
    )
}

// -------------------------------------------------------------------------------------------
// Timers and faults
// -------------------------------------------------------------------------------------------

/// What a pending image's due `ImageAvailable` timer fires: `ImageAvailable`, except for a copy
/// one of whose snapshots failed (or is gone): `ImageFailed` `Client.InternalError`
/// (EC2_SEMANTICS.md §10.2). `[sim]` Its completed snapshots stay.
pub fn image_due(state: &State, img: &Image) -> Payload {
    let broken = img.registered.origin == "copy"
        && img.snapshot_ids().any(|id| {
            state
                .snapshots
                .get(id)
                .is_none_or(|s| s.state == SnapshotState::Error)
        });
    if broken {
        image_failed(img.id(), INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE)
    } else {
        Payload::ImageAvailable(pb::ImageAvailable {
            image_id: img.id().to_string(),
        })
    }
}

/// The events of a copied snapshot failing in transfer (a KMS fault, a chaos experiment): the
/// snapshot `error` with `message`, and its pending image copy `failed` at once.
pub fn fail_copy_snapshot(state: &State, snapshot_id: &str, message: &str) -> Vec<Payload> {
    let Some(s) = state
        .snapshots
        .get(snapshot_id)
        .filter(|s| s.state == SnapshotState::Pending)
    else {
        return vec![];
    };
    let mut out = vec![Payload::SnapshotFailed(pb::SnapshotFailed {
        snapshot_id: snapshot_id.to_string(),
        state_message: message.to_string(),
    })];
    if let Some(img) = state
        .images
        .get(s.for_image_id.as_str())
        .filter(|i| i.state == ImageState::Pending && i.registered.origin == "copy")
    {
        out.push(image_failed(
            img.id(),
            INTERNAL_ERROR_CODE,
            INTERNAL_ERROR_MESSAGE,
        ));
    }
    out
}

// -------------------------------------------------------------------------------------------
// Projection (called by State::apply_payload)
// -------------------------------------------------------------------------------------------

/// Folds a copy event into the state. Total: an event naming something unknown changes nothing
/// it cannot find.
pub(crate) fn apply(state: &mut State, p: &Payload) {
    match p {
        Payload::ImageCopyRequested(e) => {
            // The new image is an image like any other: recorded as a registration of origin
            // `copy` (name index, ClientToken, visibility), without mappings until the start.
            state.apply_payload(&Payload::ImageRegistered(pb::ImageRegistered {
                image_id: e.image_id.clone(),
                owner_id: e.owner_id.clone(),
                name: e.name.clone(),
                description: e.description.clone(),
                image_location: format!("{}/{}", e.owner_id, e.name),
                image_type: "machine".into(),
                tags: e.image_tags.clone(),
                origin: "copy".into(),
                source_image_id: e.source_image_id.clone(),
                source_region: e.source_region.clone(),
                available_at_ms: 0,
                creation_date_ms: e.requested_at_ms,
                client_token: e.client_token.clone(),
                request_fingerprint: e.request_fingerprint.clone(),
                ..Default::default()
            }));
            state.copies.insert(
                e.copy_id.clone(),
                CopyTask {
                    copy_id: e.copy_id.clone(),
                    kind: CopyKind::Image,
                    dest_id: e.image_id.clone(),
                    owner_id: e.owner_id.clone(),
                    source_region: e.source_region.clone(),
                    source_id: e.source_image_id.clone(),
                    encrypted: tri_bool(e.encrypted),
                    kms_key_id: e.kms_key_id.clone(),
                    copy_image_tags: e.copy_image_tags,
                    snapshot_tags: tags_from(&e.snapshot_tags),
                    completion_duration_minutes: e.completion_duration_minutes,
                    requested_at_ms: e.requested_at_ms,
                    requested_seq: 0,
                    started_at_ms: None,
                },
            );
        }
        Payload::SnapshotCopyRequested(e) => {
            state.apply_payload(&Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: e.snapshot_id.clone(),
                owner_id: e.owner_id.clone(),
                volume_id: COPY_VOLUME_ID.into(),
                volume_size: 0,
                description: e.description.clone(),
                encrypted: tri_bool(e.encrypted) == Some(true),
                kms_key_id: e.kms_key_id.clone(),
                tags: e.tags.clone(),
                start_time_ms: e.requested_at_ms,
                complete_at_ms: NOT_STARTED,
                transfer_type: if e.completion_duration_minutes > 0 {
                    "time-based"
                } else {
                    "standard"
                }
                .into(),
                completion_duration_minutes: e.completion_duration_minutes,
                ..Default::default()
            }));
            // No timer until the copy starts.
            state.timers.remove(&(
                NOT_STARTED,
                Timer::SnapshotComplete(e.snapshot_id.as_str().into()),
            ));
            state.copies.insert(
                e.copy_id.clone(),
                CopyTask {
                    copy_id: e.copy_id.clone(),
                    kind: CopyKind::Snapshot,
                    dest_id: e.snapshot_id.clone(),
                    owner_id: e.owner_id.clone(),
                    source_region: e.source_region.clone(),
                    source_id: e.source_snapshot_id.clone(),
                    encrypted: tri_bool(e.encrypted),
                    kms_key_id: e.kms_key_id.clone(),
                    copy_image_tags: false,
                    snapshot_tags: tags_from(&e.tags),
                    completion_duration_minutes: e.completion_duration_minutes,
                    requested_at_ms: e.requested_at_ms,
                    requested_seq: 0,
                    started_at_ms: None,
                },
            );
        }
        Payload::CopySourceRead(e) if !state.copy_reads.contains_key(&e.copy_id) => {
            state.copy_reads.insert(
                e.copy_id.clone(),
                CopyReadRecord {
                    dest_region: e.dest_region.clone(),
                    dest_id: e.dest_id.clone(),
                    ok: e.ok,
                    seq: 0,
                    encoded: hex::encode(e.encode_to_vec()),
                },
            );
        }
        Payload::ImageCopyStarted(e) => {
            if let Some(t) = state.copies.get_mut(&e.copy_id) {
                t.started_at_ms = Some(e.started_at_ms);
            }
            let Some(img) = state
                .image_mut(&e.image_id)
                .filter(|i| i.state == ImageState::Pending)
            else {
                return;
            };
            let d = std::sync::Arc::make_mut(&mut img.registered);
            d.architecture = e.architecture.clone();
            d.virtualization_type = e.virtualization_type.clone();
            d.root_device_type = e.root_device_type.clone();
            d.root_device_name = e.root_device_name.clone();
            d.boot_mode = e.boot_mode.clone();
            d.ena_support = tri_bool(e.ena_support);
            d.sriov_net_support = e.sriov_net_support.clone();
            d.tpm_support = e.tpm_support.clone();
            d.imds_support = e.imds_support.clone();
            d.billing_products = e.billing_products.clone();
            d.platform = e.platform.clone();
            d.image_type = e.image_type.clone();
            d.kernel_id = e.kernel_id.clone();
            d.ramdisk_id = e.ramdisk_id.clone();
            d.block_device_mappings = e.block_device_mappings.iter().map(Mapping::from).collect();
            d.available_at_ms = e.available_at_ms;
            if !e.image_location.is_empty() {
                d.image_location = e.image_location.clone();
            }
            for t in &e.tags {
                img.tags.insert(t.key.clone(), t.value.clone());
            }
            state.timers.insert((
                e.available_at_ms,
                Timer::ImageAvailable(e.image_id.as_str().into()),
            ));
        }
        Payload::SnapshotCopyStarted(e) => {
            if let Some(t) = state.copies.get_mut(&e.copy_id) {
                t.started_at_ms = Some(e.started_at_ms);
            }
            let Some(s) = state
                .snapshots
                .get_mut(&e.snapshot_id)
                .filter(|s| s.state == SnapshotState::Pending)
            else {
                return;
            };
            s.volume_size = e.volume_size;
            s.full_snapshot_size_in_bytes = e.full_snapshot_size_in_bytes;
            s.encrypted = e.encrypted;
            s.kms_key_id = e.kms_key_id.clone();
            s.data_encryption_key_id = e.data_encryption_key_id.clone();
            s.complete_at_ms = e.complete_at_ms;
            s.transferred_bytes = e.transferred_bytes;
            if !e.transfer_type.is_empty() {
                s.transfer_type = e.transfer_type.clone();
            }
            state.timers.insert((
                e.complete_at_ms,
                Timer::SnapshotComplete(e.snapshot_id.as_str().into()),
            ));
        }
        _ => {}
    }
}

/// Records where a copy request or a `CopySourceRead` is in the log (called by `State::apply`
/// with the envelope).
pub(crate) fn note_position(state: &mut State, p: &Payload, seq: u64) {
    let copy_id = match p {
        Payload::CopySourceRead(e) => {
            if let Some(r) = state.copy_reads.get_mut(&e.copy_id) {
                if r.seq == 0 {
                    r.seq = seq;
                }
            }
            return;
        }
        Payload::ImageCopyRequested(e) => &e.copy_id,
        Payload::SnapshotCopyRequested(e) => &e.copy_id,
        _ => return,
    };
    if let Some(t) = state.copies.get_mut(copy_id) {
        if t.requested_seq == 0 {
            t.requested_seq = seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LaunchPermission;
    use crate::testkit::{code, Harness, OTHER, OWNER, REGION, T0};
    use crate::{Answer, Command, Query};
    use amisim_proto::{MappingRecord, Tag, TagRecord, TagSpecification};

    const DST: &str = "eu-west-1";
    const AMI: &str = "ami-0123456789abcdef0";
    const SNAP: &str = "snap-0123456789abcdef0";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/0b6c3a52-0000-4000-8000-000000000001";
    const DEK: &str = "6f5c1e2a-0000-4000-8000-000000000002";
    const SYSTEM: &str = ids::SYSTEM_ACCOUNT;
    const MIB: u64 = 1024 * 1024;

    fn tag_list(tags: &[(&str, &str)]) -> Vec<TagRecord> {
        tags.iter()
            .map(|(k, v)| TagRecord {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    fn spec(resource_type: &str, tags: &[(&str, &str)]) -> TagSpecification {
        TagSpecification {
            resource_type: resource_type.into(),
            tags: tags
                .iter()
                .map(|(k, v)| Tag {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    /// Given: a completed snapshot `id` of `size_gib` GiB owned by `owner` (under KEY if
    /// `encrypted`).
    fn given_snapshot(h: &mut Harness, owner: &str, id: &str, size_gib: i32, encrypted: bool) {
        let now = h.now_ms;
        h.given([
            Payload::SnapshotCreated(pb::SnapshotCreated {
                snapshot_id: id.into(),
                owner_id: owner.into(),
                volume_id: "vol-0123456789abcdef0".into(),
                volume_size: size_gib,
                description: "root".into(),
                encrypted,
                kms_key_id: if encrypted { KEY.into() } else { String::new() },
                data_encryption_key_id: if encrypted { DEK.into() } else { String::new() },
                start_time_ms: now - 100_000,
                complete_at_ms: now - 1,
                full_snapshot_size_in_bytes: to_i64(gib(size_gib)),
                transferred_bytes: to_i64(gib(size_gib)),
                ..Default::default()
            }),
            Payload::SnapshotCompleted(pb::SnapshotCompleted {
                snapshot_id: id.into(),
            }),
        ]);
    }

    /// Given: an `available` EBS image AMI of `owner` in the harness's region: root `/dev/xvda`
    /// on the 8 GiB snapshot SNAP, plus an instance-store device, with `tags`.
    fn given_image(h: &mut Harness, owner: &str, encrypted: bool, tags: &[(&str, &str)]) {
        given_snapshot(h, owner, SNAP, 8, encrypted);
        let now = h.now_ms;
        h.given([
            Payload::ImageRegistered(pb::ImageRegistered {
                image_id: AMI.into(),
                owner_id: owner.into(),
                name: "source image".into(),
                description: "the source".into(),
                image_location: format!("{owner}/source image"),
                architecture: "x86_64".into(),
                image_type: "machine".into(),
                root_device_type: "ebs".into(),
                root_device_name: "/dev/xvda".into(),
                block_device_mappings: vec![
                    MappingRecord {
                        device_name: "/dev/xvda".into(),
                        ebs: true,
                        snapshot_id: SNAP.into(),
                        volume_size: 8,
                        volume_type: "gp3".into(),
                        iops: 3000,
                        throughput: 125,
                        delete_on_termination: true,
                        encrypted,
                        kms_key_id: if encrypted { KEY.into() } else { String::new() },
                        ..Default::default()
                    },
                    MappingRecord {
                        device_name: "/dev/sdb".into(),
                        virtual_name: "ephemeral0".into(),
                        ..Default::default()
                    },
                ],
                virtualization_type: "hvm".into(),
                boot_mode: "uefi".into(),
                tpm_support: "v2.0".into(),
                imds_support: "v2.0".into(),
                ena_support: 2,
                sriov_net_support: "simple".into(),
                tags: tag_list(tags),
                origin: "register".into(),
                available_at_ms: now,
                creation_date_ms: now,
                ..Default::default()
            }),
            Payload::ImageAvailable(pb::ImageAvailable {
                image_id: AMI.into(),
            }),
        ]);
    }

    fn image_req(source_region: &str, name: &str) -> pb::CopyImageRequest {
        pb::CopyImageRequest {
            source_image_id: AMI.into(),
            source_region: source_region.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn snap_req(source_region: &str) -> pb::CopySnapshotRequest {
        pb::CopySnapshotRequest {
            source_snapshot_id: SNAP.into(),
            source_region: source_region.into(),
            ..Default::default()
        }
    }

    /// When: CopyImage succeeds; returns (new image id, copy id).
    fn copy_image_ok(h: &mut Harness, account: &str, r: pb::CopyImageRequest) -> (String, String) {
        let d = h
            .when(account, Command::CopyImage(r))
            .expect("CopyImage accepted");
        let Reply::CopyImage(resp) = d.reply else {
            panic!("unexpected reply {:?}", d.reply)
        };
        (resp.image_id, d.correlation_id.expect("a correlation id"))
    }

    /// When: CopySnapshot succeeds; returns (reply, copy id).
    fn copy_snapshot_ok(
        h: &mut Harness,
        account: &str,
        r: pb::CopySnapshotRequest,
    ) -> (pb::CopySnapshotResponse, String) {
        let d = h
            .when(account, Command::CopySnapshot(r))
            .expect("CopySnapshot accepted");
        let Reply::CopySnapshot(resp) = d.reply else {
            panic!("unexpected reply {:?}", d.reply)
        };
        (resp, d.correlation_id.expect("a correlation id"))
    }

    fn task(h: &Harness, copy_id: &str) -> CopyTask {
        h.state.copies.get(copy_id).cloned().expect("a copy task")
    }

    fn saga(d: &Decision) -> &pb::SagaStepResponse {
        match &d.reply {
            Reply::Saga(r) => r,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// The coordinator's ReadCopySource, in the source harness.
    fn read(src: &mut Harness, t: &CopyTask, dest_region: &str) -> Decision {
        src.when(SYSTEM, Command::Saga(t.read_step(dest_region, vec![])))
            .expect("ReadCopySource")
    }

    /// The coordinator's StartCopy in the destination, with the read from `src` moved by hand.
    fn start(
        dst: &mut Harness,
        t: &CopyTask,
        read: &Decision,
        link: Option<LinkParams>,
    ) -> Decision {
        let source = saga(read).source.clone().expect("a recorded read");
        dst.when(SYSTEM, Command::Saga(t.start_step(source, link, vec![])))
            .expect("StartCopy")
    }

    fn image(h: &Harness, account: &str, id: &str) -> pb::Image {
        match h.read(
            account,
            Query::DescribeImages(pb::DescribeImagesRequest {
                image_ids: vec![id.into()],
                ..Default::default()
            }),
        ) {
            Ok(Answer::DescribeImages(r)) => r.images.into_iter().next().expect("one image"),
            other => panic!("DescribeImages: {other:?}"),
        }
    }

    fn snapshot(h: &Harness, account: &str, id: &str) -> pb::Snapshot {
        match h.read(
            account,
            Query::DescribeSnapshots(pb::DescribeSnapshotsRequest {
                snapshot_ids: vec![id.into()],
                ..Default::default()
            }),
        ) {
            Ok(Answer::DescribeSnapshots(r)) => {
                r.snapshots.into_iter().next().expect("one snapshot")
            }
            other => panic!("DescribeSnapshots: {other:?}"),
        }
    }

    fn tags_of(tags: &[Tag]) -> Vec<(String, String)> {
        tags.iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect()
    }

    fn pairs(tags: &[(&str, &str)]) -> Vec<(String, String)> {
        tags.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // ---------------------------------------------------------------------------------------
    // End to end
    // ---------------------------------------------------------------------------------------

    #[test]
    fn same_region_copy_goes_request_read_start_then_available() {
        // Given an available image with one 8 GiB snapshot.
        let mut h = Harness::new();
        given_image(&mut h, OWNER, false, &[]);
        // When the owner copies it within the region.
        let d = h
            .when(
                OWNER,
                Command::CopyImage(pb::CopyImageRequest {
                    description: "my copy".into(),
                    ..image_req(REGION, "copy one")
                }),
            )
            .unwrap();
        let Reply::CopyImage(resp) = &d.reply else {
            panic!("{:?}", d.reply)
        };
        let new_id = resp.image_id.clone();
        let copy_id = d.correlation_id.clone().expect("correlated");
        assert!(
            copy_id.starts_with("copy-") && copy_id.len() == 22,
            "{copy_id}"
        );
        assert!(
            matches!(d.events.as_slice(), [Payload::ImageCopyRequested(e)] if e.copy_id == copy_id && e.image_id == new_id)
        );
        // Then the new image is pending and visible at once, without mappings yet.
        let img = image(&h, OWNER, &new_id);
        assert_eq!(img.state, "pending");
        assert_eq!(img.name, "copy one");
        assert_eq!(img.description, "my copy");
        assert_eq!(img.owner_id, OWNER);
        assert_eq!(img.source_image_id, AMI);
        assert_eq!(img.source_image_region, REGION);
        assert!(img.block_device_mappings.is_empty());
        assert_eq!(h.state.copies_awaiting_start().len(), 1);
        assert_eq!(pending_copy_slots_used(&h.state, Some(OWNER)), 1);
        assert_eq!(pending_copy_slots_used(&h.state, Some(OTHER)), 0);

        // When the coordinator reads the source ...
        let t = task(&h, &copy_id);
        let r = read(&mut h, &t, REGION);
        assert_eq!(r.correlation_id.as_deref(), Some(copy_id.as_str()));
        assert_eq!(r.events.len(), 1);
        let read_seq = h.log.len() as u64;
        let rr = saga(&r);
        assert_eq!(rr.outcome, "read");
        let source = rr.source.clone().unwrap();
        assert!(source.ok, "{source:?}");
        assert_eq!(source.snapshots.len(), 1);
        assert_eq!(source.source_owner_id, OWNER);
        // ... and starts the copy, after the read.
        let dep = EventRef {
            region: REGION.into(),
            seq: read_seq,
        };
        let s = h
            .when(
                SYSTEM,
                Command::Saga(t.start_step(source, None, vec![dep.clone()])),
            )
            .unwrap();
        assert_eq!(s.correlation_id.as_deref(), Some(copy_id.as_str()));
        assert_eq!(s.depends_on, vec![dep]);
        assert_eq!(saga(&s).outcome, "started");
        assert_eq!(saga(&s).dest_state, "pending");
        let [Payload::SnapshotCreated(sc), Payload::ImageCopyStarted(st)] = s.events.as_slice()
        else {
            panic!("{:?}", s.events)
        };
        // Then one new snapshot per source snapshot, described as EC2 does.
        assert_eq!(sc.volume_id, COPY_VOLUME_ID);
        assert_eq!(sc.owner_id, OWNER);
        assert_eq!(sc.volume_size, 8);
        assert_eq!(
            sc.description,
            format!("Copied for DestinationAmi {new_id} from SourceAmi {AMI} for SourceSnapshot {SNAP}. Task created on {T0}.")
        );
        assert!(!sc.encrypted);
        // Same account, region and encryption: metadata only, 5 s.
        assert_eq!(sc.complete_at_ms, T0 + 5_000);
        assert_eq!(sc.transferred_bytes, 0);
        assert_eq!(sc.full_snapshot_size_in_bytes, to_i64(gib(8)));
        assert_eq!(sc.transfer_type, "standard");
        assert_eq!(st.available_at_ms, T0 + 15_000);
        // The image now has the source's attributes and points at the new snapshot.
        let img = image(&h, OWNER, &new_id);
        assert_eq!(img.state, "pending");
        assert_eq!(img.architecture, "x86_64");
        assert_eq!(img.root_device_type, "ebs");
        assert_eq!(img.root_device_name, "/dev/xvda");
        assert_eq!(img.boot_mode, "uefi");
        assert_eq!(img.ena_support, Some(true));
        assert_eq!(img.sriov_net_support, "simple");
        assert_eq!(img.tpm_support, "v2.0");
        assert_eq!(img.image_location, format!("{OWNER}/copy one"));
        assert_eq!(img.block_device_mappings.len(), 2);
        let root = img
            .block_device_mappings
            .iter()
            .find(|m| m.device_name == "/dev/xvda")
            .and_then(|m| m.ebs.clone())
            .unwrap();
        assert_eq!(root.snapshot_id, sc.snapshot_id);
        assert_eq!(root.volume_size, Some(8));
        assert_eq!(root.volume_type, "gp3");
        assert!(img
            .block_device_mappings
            .iter()
            .any(|m| m.device_name == "/dev/sdb" && m.virtual_name == "ephemeral0"));
        assert!(h.state.copies_awaiting_start().is_empty());
        assert_eq!(h.state.copies_in_flight().len(), 1);

        // When time passes: the snapshot completes, then the image is available 10 s later.
        let fired = h.advance(5_000);
        assert!(
            matches!(fired.as_slice(), [Payload::SnapshotCompleted(_)]),
            "{fired:?}"
        );
        assert_eq!(image(&h, OWNER, &new_id).state, "pending");
        let fired = h.advance(10_000);
        assert!(
            matches!(fired.as_slice(), [Payload::ImageAvailable(_)]),
            "{fired:?}"
        );
        assert_eq!(image(&h, OWNER, &new_id).state, "available");
        let snap = snapshot(&h, OWNER, &sc.snapshot_id);
        assert_eq!(snap.state, "completed");
        assert_eq!(snap.progress, "100%");
        assert_eq!(snap.volume_id, "vol-ffffffff");
        assert!(h.state.copies_in_flight().is_empty());
        assert_eq!(pending_copy_slots_used(&h.state, None), 0);
        h.assert_replay_equals_live();
    }

    #[test]
    fn cross_region_copy_of_8_gib_takes_about_three_minutes() {
        // Given an encrypted image in us-east-1.
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_image(&mut src, OWNER, true, &[]);
        // When the owner copies it into eu-west-1: accepted without seeing the source.
        let (new_id, copy_id) = copy_image_ok(&mut dst, OWNER, image_req(REGION, "cross"));
        let t = task(&dst, &copy_id);
        assert_eq!(t.source_region, REGION);
        // The coordinator learns where the request is (the read depends on it).
        assert_eq!(t.requested_seq, dst.log.len() as u64);
        assert_eq!(dst.state.copies_awaiting_start(), vec![&t]);
        // The coordinator reads in us-east-1 and, 2 s later, starts in eu-west-1.
        src.now_ms += 1_000;
        let r = read(&mut src, &t, DST);
        assert!(saga(&r).source.as_ref().unwrap().ok);
        assert!(src.state.copy_reads.contains_key(&copy_id));
        dst.now_ms += 2_000;
        let started = dst.now_ms;
        let s = start(&mut dst, &t, &r, None);
        let [Payload::SnapshotCreated(sc), Payload::ImageCopyStarted(st)] = s.events.as_slice()
        else {
            panic!("{:?}", s.events)
        };
        // Then: own encrypted source from another region, no key → the destination's default
        // key [unconfirmed], a new data key, a full transfer.
        assert!(sc.encrypted);
        assert_eq!(sc.kms_key_id, crate::kms::aws_managed_key_arn(DST, OWNER));
        assert_ne!(sc.data_encryption_key_id, DEK);
        assert_eq!(sc.data_encryption_key_id.len(), 36);
        assert_eq!(sc.transferred_bytes, to_i64(gib(8)));
        // 60 s + 8 GiB ÷ 75 MiB/s, then 10 s: about 3 minutes.
        let transfer = 60_000 + gib(8) * 1000 / (75 * MIB);
        assert_eq!(transfer, 169_226);
        assert_eq!(sc.complete_at_ms, started + transfer);
        assert_eq!(st.available_at_ms, started + transfer + 10_000);
        assert!((170_000..190_000).contains(&(st.available_at_ms - t.requested_at_ms)));
        let root = st.block_device_mappings.iter().find(|m| m.ebs).unwrap();
        assert!(root.encrypted);
        assert_eq!(root.kms_key_id, sc.kms_key_id);
        // When time passes.
        assert!(matches!(
            dst.advance(transfer).as_slice(),
            [Payload::SnapshotCompleted(_)]
        ));
        assert!(dst.advance(9_999).is_empty());
        assert_eq!(image(&dst, OWNER, &new_id).state, "pending");
        assert!(matches!(
            dst.advance(1).as_slice(),
            [Payload::ImageAvailable(_)]
        ));
        assert_eq!(image(&dst, OWNER, &new_id).state, "available");
        // The source is untouched but for the recorded read.
        assert_eq!(image(&src, OWNER, AMI).state, "available");
        src.assert_replay_equals_live();
        dst.assert_replay_equals_live();
    }

    #[test]
    fn cross_region_transfer_follows_the_link() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_image(&mut src, OWNER, false, &[]);
        let (_, copy_id) = copy_image_ok(&mut dst, OWNER, image_req(REGION, "linked"));
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        let link = LinkParams {
            latency_ms: 500,
            bandwidth_bytes_per_s: 1024 * MIB,
        };
        let s = start(&mut dst, &t, &r, Some(link));
        let Payload::SnapshotCreated(sc) = &s.events[0] else {
            panic!("{:?}", s.events)
        };
        // 500 ms + 8 GiB ÷ 1 GiB/s; unencrypted stays unencrypted.
        assert_eq!(sc.complete_at_ms, dst.now_ms + 8_500);
        assert!(!sc.encrypted);
        assert!(sc.kms_key_id.is_empty());
        dst.assert_replay_equals_live();
    }

    #[test]
    fn copy_durations() {
        let c = Config::default();
        let link = LinkParams {
            latency_ms: 100,
            bandwidth_bytes_per_s: 100 * MIB,
        };
        assert_eq!(copy_duration_ms(&c, true, true, gib(8), Some(&link)), 5_000);
        assert_eq!(copy_duration_ms(&c, true, false, gib(8), None), 84_613);
        assert_eq!(copy_duration_ms(&c, false, false, gib(8), None), 169_226);
        assert_eq!(copy_duration_ms(&c, false, false, 0, None), 60_000);
        assert_eq!(
            copy_duration_ms(&c, false, false, 100 * MIB, Some(&link)),
            1_100
        );
        // A link without bandwidth is the default model.
        let dead = LinkParams {
            latency_ms: 1,
            bandwidth_bytes_per_s: 0,
        };
        assert_eq!(copy_duration_ms(&c, false, false, 0, Some(&dead)), 60_000);
        // Time-based: the requested minutes, or longer when 500 MiB/s cannot make it.
        assert_eq!(time_based_ms(&c, 15, gib(8)), 900_000);
        assert_eq!(time_based_ms(&c, 15, gib(1_000)), 2_048_000);
    }

    // ---------------------------------------------------------------------------------------
    // Idempotency
    // ---------------------------------------------------------------------------------------

    #[test]
    fn a_recorded_link_condition_is_one_event_and_changes_no_resource() {
        // Given a region with an image,
        let mut h = Harness::new();
        given_image(&mut h, OWNER, false, &[]);
        let before = h.log.len();
        let image_before = h.state.images.get(AMI).cloned();
        // when the Chaos service records a link change,
        let change = pb::LinkConditionChanged {
            action: "set".into(),
            from: "us-east-1".into(),
            to: "eu-west-1".into(),
            partitioned: true,
            ..Default::default()
        };
        let step = pb::SagaStep {
            correlation_id: String::new(),
            depends_on: vec![],
            step: Some(Step::RecordLinkCondition(pb::RecordLinkCondition {
                change: Some(change.clone()),
            })),
        };
        let d = h.when(SYSTEM, Command::Saga(step)).expect("recorded");
        // then it is one LinkConditionChanged event, and the state is as before.
        assert_eq!(saga(&d).outcome, "recorded");
        assert_eq!(d.events, vec![Payload::LinkConditionChanged(change)]);
        assert_eq!(h.log.len(), before + 1);
        assert!(image_before.is_some());
        assert_eq!(h.state.images.get(AMI).cloned(), image_before);
        // Without the change it is refused.
        let empty = pb::SagaStep {
            step: Some(Step::RecordLinkCondition(pb::RecordLinkCondition {
                change: None,
            })),
            ..Default::default()
        };
        assert_eq!(
            h.try_decide(SYSTEM, Command::Saga(empty)).unwrap_err().code,
            ErrorCode::MissingParameter
        );
    }

    #[test]
    fn every_saga_step_is_idempotent() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_image(&mut src, OWNER, false, &[]);
        let (_, copy_id) = copy_image_ok(&mut dst, OWNER, image_req(REGION, "twice"));
        let t = task(&dst, &copy_id);
        // ReadCopySource twice: the second writes nothing and answers the recorded read.
        let first = read(&mut src, &t, DST);
        let seq = src.log.len() as u64;
        src.now_ms += 60_000;
        let again = read(&mut src, &t, DST);
        assert!(again.events.is_empty());
        assert_eq!(saga(&again).outcome, "already-read");
        assert_eq!(saga(&again).source, saga(&first).source);
        assert_eq!(
            saga(&again).source_read_at,
            Some(EventRef {
                region: REGION.into(),
                seq
            })
        );
        assert_eq!(saga(&first).source_read_at.as_ref().map(|r| r.seq), Some(0));
        // The same copy id for another copy is refused.
        let mut other = t.clone();
        other.dest_id = "ami-00000000000000001".into();
        let e = src
            .try_decide(SYSTEM, Command::Saga(other.read_step(DST, vec![])))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        // StartCopy twice: the second writes nothing.
        let s1 = start(&mut dst, &t, &first, None);
        assert_eq!(s1.events.len(), 2);
        let s2 = start(&mut dst, &t, &again, None);
        assert!(s2.events.is_empty());
        assert_eq!(saga(&s2).outcome, "already-started");
        assert_eq!(saga(&s2).dest_state, "pending");
        // And once it is done.
        dst.advance(600_000);
        let s3 = start(&mut dst, &t, &first, None);
        assert!(s3.events.is_empty());
        assert_eq!(saga(&s3).dest_state, "available");
        src.assert_replay_equals_live();
        dst.assert_replay_equals_live();
    }

    #[test]
    fn a_start_for_an_unknown_copy_or_another_read_writes_nothing() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_image(&mut src, OWNER, false, &[]);
        let (_, copy_id) = copy_image_ok(&mut dst, OWNER, image_req(REGION, "strict"));
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        let mut unknown = t.clone();
        unknown.copy_id = "copy-00000000000000000".into();
        let mut source = saga(&r).source.clone().unwrap();
        let e = dst
            .try_decide(
                SYSTEM,
                Command::Saga(unknown.start_step(source.clone(), None, vec![])),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        source.dest_id = "ami-00000000000000001".into();
        let e = dst
            .try_decide(SYSTEM, Command::Saga(t.start_step(source, None, vec![])))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        let e = dst
            .try_decide(SYSTEM, Command::Saga(pb::SagaStep::default()))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingParameter);
        assert_eq!(
            Command::Saga(t.read_step(DST, vec![])).action(),
            "ReadCopySource"
        );
        assert_eq!(dst.state.copies_awaiting_start().len(), 1);
    }

    #[test]
    fn client_token_replays_the_first_image_and_refuses_other_parameters() {
        let mut dst = Harness::in_region(DST, 7);
        let r = pb::CopyImageRequest {
            client_token: "token-1".into(),
            ..image_req(REGION, "tokened")
        };
        let (first, _) = copy_image_ok(&mut dst, OWNER, r.clone());
        let logged = dst.log.len();
        // Same token, same parameters: the same image, nothing new.
        let d = dst.when(OWNER, Command::CopyImage(r.clone())).unwrap();
        assert!(d.events.is_empty());
        assert_eq!(d.correlation_id, None);
        assert_eq!(
            d.reply,
            Reply::CopyImage(pb::CopyImageResponse {
                image_id: first.clone()
            })
        );
        assert_eq!(dst.log.len(), logged);
        // Same token, other parameters.
        let e = dst
            .try_decide(
                OWNER,
                Command::CopyImage(pb::CopyImageRequest {
                    name: "other name".into(),
                    ..r.clone()
                }),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::IdempotentParameterMismatch);
        // The token is scoped to the account.
        let (theirs, _) = copy_image_ok(&mut dst, OTHER, r);
        assert_ne!(theirs, first);
        dst.assert_replay_equals_live();
    }

    // ---------------------------------------------------------------------------------------
    // Synchronous checks
    // ---------------------------------------------------------------------------------------

    #[test]
    fn parameters_are_checked_before_anything_is_written() {
        let mut h = Harness::new();
        given_image(&mut h, OWNER, false, &[]);
        let img = |f: fn(&mut pb::CopyImageRequest)| {
            let mut r = image_req(REGION, "checked");
            f(&mut r);
            Command::CopyImage(r)
        };
        let cases: Vec<(Command, ErrorCode)> = vec![
            (
                img(|r| r.source_region.clear()),
                ErrorCode::MissingParameter,
            ),
            (img(|r| r.name.clear()), ErrorCode::MissingParameter),
            (
                img(|r| r.source_region = "mars-1".into()),
                ErrorCode::InvalidRegion,
            ),
            (
                img(|r| r.source_image_id = "ami-xyz".into()),
                ErrorCode::InvalidAmiIdMalformed,
            ),
            (
                img(|r| r.name = "x".into()),
                ErrorCode::InvalidAmiNameMalformed,
            ),
            (
                img(|r| r.description = "d".repeat(256)),
                ErrorCode::InvalidParameterValue,
            ),
            (
                img(|r| r.snapshot_copy_completion_duration_minutes = Some(20)),
                ErrorCode::InvalidParameterValue,
            ),
            (
                img(|r| r.snapshot_copy_completion_duration_minutes = Some(0)),
                ErrorCode::InvalidParameterValue,
            ),
            (
                img(|r| r.snapshot_copy_completion_duration_minutes = Some(2_895)),
                ErrorCode::InvalidParameterValue,
            ),
            (
                img(|r| r.client_token = "t".repeat(65)),
                ErrorCode::InvalidParameterValue,
            ),
            (
                img(|r| r.tag_specifications = vec![spec("volume", &[("a", "b")])]),
                ErrorCode::InvalidParameterValue,
            ),
            (
                img(|r| r.kms_key_id = "alias/mine".into()),
                ErrorCode::InvalidParameterDependency,
            ),
            (
                img(|r| {
                    r.kms_key_id = "alias/mine".into();
                    r.encrypted = Some(false);
                }),
                ErrorCode::InvalidParameterDependency,
            ),
            (
                img(|r| r.destination_availability_zone = "us-east-1a".into()),
                ErrorCode::UnsupportedOperation,
            ),
            (
                img(|r| r.destination_outpost_arn = "arn:aws:outposts:x".into()),
                ErrorCode::UnsupportedOperation,
            ),
            (img(|r| r.dry_run = true), ErrorCode::DryRunOperation),
            (
                img(|r| r.name = "source image".into()),
                ErrorCode::InvalidAmiNameDuplicate,
            ),
        ];
        for (cmd, want) in cases {
            assert_eq!(code(h.try_decide(OWNER, cmd.clone())), want, "{cmd:?}");
        }
        let e = h
            .try_decide(OWNER, img(|r| r.kms_key_id = "k".into()))
            .unwrap_err();
        assert_eq!(
            e.message,
            "The parameter KmsKeyId requires the parameter Encrypted to be set."
        );
        // The limits of a time-based copy are accepted.
        for m in [15, 2_880] {
            let r = pb::CopyImageRequest {
                snapshot_copy_completion_duration_minutes: Some(m),
                dry_run: true,
                ..image_req(REGION, "timed")
            };
            assert_eq!(
                code(h.try_decide(OWNER, Command::CopyImage(r))),
                ErrorCode::DryRunOperation
            );
        }
        // CopySnapshot: the same rules.
        let snap = |f: fn(&mut pb::CopySnapshotRequest)| {
            let mut r = snap_req(REGION);
            f(&mut r);
            Command::CopySnapshot(r)
        };
        let cases: Vec<(Command, ErrorCode)> = vec![
            (
                snap(|r| r.source_snapshot_id.clear()),
                ErrorCode::MissingParameter,
            ),
            (
                snap(|r| r.source_region = "us-east-9".into()),
                ErrorCode::InvalidRegion,
            ),
            (
                snap(|r| r.source_snapshot_id = "snap-1".into()),
                ErrorCode::InvalidParameterValue,
            ),
            (
                snap(|r| r.completion_duration_minutes = Some(3_000)),
                ErrorCode::InvalidParameterValue,
            ),
            (
                snap(|r| r.kms_key_id = "k".into()),
                ErrorCode::InvalidParameterDependency,
            ),
            (
                snap(|r| r.tag_specifications = vec![spec("image", &[("a", "b")])]),
                ErrorCode::InvalidParameterValue,
            ),
            (
                snap(|r| r.destination_region = DST.into()),
                ErrorCode::InvalidParameterValue,
            ),
            (
                snap(|r| r.destination_availability_zone = "us-east-1a".into()),
                ErrorCode::UnsupportedOperation,
            ),
            (snap(|r| r.dry_run = true), ErrorCode::DryRunOperation),
        ];
        for (cmd, want) in cases {
            assert_eq!(code(h.try_decide(OWNER, cmd.clone())), want, "{cmd:?}");
        }
        assert!(h.state.copies.is_empty());
    }

    #[test]
    fn a_same_region_source_is_checked_at_once() {
        let mut h = Harness::new();
        given_image(&mut h, OWNER, true, &[]);
        // Missing.
        let e = h
            .try_decide(
                OWNER,
                Command::CopyImage(pb::CopyImageRequest {
                    source_image_id: "ami-00000000000000009".into(),
                    ..image_req(REGION, "missing")
                }),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAmiIdNotFound);
        assert_eq!(
            e.message,
            "The image id '[ami-00000000000000009]' does not exist"
        );
        // Invisible to another account.
        assert_eq!(
            code(h.try_decide(OTHER, Command::CopyImage(image_req(REGION, "theirs")))),
            ErrorCode::InvalidAmiIdNotFound
        );
        // Unencrypted copy of an encrypted source (observed wording).
        let e = h
            .try_decide(
                OWNER,
                Command::CopyImage(pb::CopyImageRequest {
                    encrypted: Some(false),
                    ..image_req(REGION, "plain")
                }),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(
            e.message,
            format!("Snapshot {SNAP} is encrypted. Creating unencrypted copy from an encrypted snapshot is not supported.")
        );
        let e = h
            .try_decide(
                OWNER,
                Command::CopySnapshot(pb::CopySnapshotRequest {
                    encrypted: Some(false),
                    ..snap_req(REGION)
                }),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(
            code(h.try_decide(
                OWNER,
                Command::CopySnapshot(pb::CopySnapshotRequest {
                    source_snapshot_id: "snap-00000000000000009".into(),
                    ..snap_req(REGION)
                })
            )),
            ErrorCode::InvalidSnapshotNotFound
        );
        // [unconfirmed] a pending source.
        h.given([Payload::SnapshotCreated(pb::SnapshotCreated {
            snapshot_id: "snap-00000000000000007".into(),
            owner_id: OWNER.into(),
            volume_id: "vol-0123456789abcdef0".into(),
            volume_size: 1,
            start_time_ms: T0,
            complete_at_ms: T0 + 60_000,
            ..Default::default()
        })]);
        assert_eq!(
            code(h.try_decide(
                OWNER,
                Command::CopySnapshot(pb::CopySnapshotRequest {
                    source_snapshot_id: "snap-00000000000000007".into(),
                    ..snap_req(REGION)
                })
            )),
            ErrorCode::IncorrectState
        );
        h.given([Payload::ImageDeregistered(pb::ImageDeregistered {
            image_id: AMI.into(),
            forget_at_ms: T0 + 3_600_000,
        })]);
        assert_eq!(
            code(h.try_decide(OWNER, Command::CopyImage(image_req(REGION, "gone")))),
            ErrorCode::InvalidAmiIdUnavailable
        );
        assert!(h.state.copies.is_empty());
    }

    #[test]
    fn storage_access_and_launch_permissions_of_a_shared_source() {
        // Given an image shared with OTHER (launch permission) and made public, but not its
        // snapshot. (Sharing is set by hand: its actions come with the sharing issue.)
        let mut h = Harness::new();
        given_image(&mut h, OWNER, false, &[("Name", "src")]);
        if let Some(img) = h.state.image_mut(AMI) {
            img.launch_permissions
                .insert(LaunchPermission::User(OTHER.into()));
            img.launch_permissions.insert(LaunchPermission::All);
        }
        // When OTHER copies it in the same region: no storage access [unconfirmed code].
        let e = h
            .try_decide(OTHER, Command::CopyImage(image_req(REGION, "grantee copy")))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(
            e.message,
            "You do not have permission to access the storage of this ami"
        );
        // Cross-region the copy is accepted and fails later with that reason.
        let mut dst = Harness::in_region(DST, 7);
        let (far, copy_id) = copy_image_ok(&mut dst, OTHER, image_req(REGION, "far copy"));
        let t = task(&dst, &copy_id);
        let r = read(&mut h, &t, DST);
        let s = start(&mut dst, &t, &r, None);
        assert_eq!(saga(&s).outcome, "failed");
        let img = image(&dst, OTHER, &far);
        assert_eq!(img.state, "failed");
        let reason = img.state_reason.unwrap();
        assert_eq!(reason.code, "Client.InvalidRequest");
        assert_eq!(
            reason.message,
            "You do not have permission to access the storage of this ami"
        );
        // When the snapshot is shared too, the grantee's copy works: its own, private, a full
        // same-region transfer (30 s + 8 GiB ÷ 150 MiB/s), no tags of the owner.
        if let Some(s) = h.state.snapshots.get_mut(SNAP) {
            s.create_volume_permissions.insert(OTHER.into());
        }
        let (mine, copy_id) = copy_image_ok(
            &mut h,
            OTHER,
            pb::CopyImageRequest {
                copy_image_tags: true,
                ..image_req(REGION, "grantee copy")
            },
        );
        let t = task(&h, &copy_id);
        let r = read(&mut h, &t, REGION);
        assert!(saga(&r).source.as_ref().unwrap().tags.is_empty());
        let s = start(&mut h, &t, &r, None);
        let Payload::SnapshotCreated(sc) = &s.events[0] else {
            panic!("{:?}", s.events)
        };
        assert_eq!(sc.owner_id, OTHER);
        assert_eq!(sc.complete_at_ms, h.now_ms + 84_613);
        let copy = h.state.images.get(mine.as_str()).unwrap();
        assert!(copy.launch_permissions.is_empty());
        assert!(!copy.is_public());
        assert!(copy.tags.is_empty());
        let fired = h.advance(100_000);
        assert!(fired
            .iter()
            .any(|p| matches!(p, Payload::ImageAvailable(_))));
        assert_eq!(image(&h, OTHER, &mine).state, "available");
        assert!(!image(&h, OTHER, &mine).public);
    }

    // ---------------------------------------------------------------------------------------
    // Asynchronous failures
    // ---------------------------------------------------------------------------------------

    #[test]
    fn a_missing_cross_region_source_fails_the_copy_later() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        // When: a copy of an image us-east-1 does not have.
        let (new_id, copy_id) = copy_image_ok(&mut dst, OWNER, image_req(REGION, "ghost"));
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        let source = saga(&r).source.clone().unwrap();
        assert!(!source.ok);
        assert_eq!(source.failure_code, "Client.InvalidAMIID.NotFound");
        assert_eq!(
            source.failure_message,
            format!("The image id '[{AMI}]' does not exist")
        );
        let s = start(&mut dst, &t, &r, None);
        assert!(matches!(s.events.as_slice(), [Payload::ImageFailed(_)]));
        assert_eq!(saga(&s).outcome, "failed");
        assert_eq!(saga(&s).dest_state, "failed");
        // Then: failed, with the reason, and no longer in flight.
        let img = image(&dst, OWNER, &new_id);
        assert_eq!(img.state, "failed");
        assert_eq!(
            img.state_reason,
            Some(pb::StateReason {
                code: "Client.InvalidAMIID.NotFound".into(),
                message: format!("The image id '[{AMI}]' does not exist"),
            })
        );
        assert!(dst.state.copies_in_flight().is_empty());
        assert_eq!(dst.state.copy_phase(&t), CopyPhase::Failed);
        let again = start(&mut dst, &t, &r, None);
        assert!(again.events.is_empty());
        assert_eq!(saga(&again).outcome, "already-failed");
        src.assert_replay_equals_live();
        dst.assert_replay_equals_live();
    }

    #[test]
    fn an_unencrypted_copy_of_an_encrypted_cross_region_source_fails_later() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_image(&mut src, OWNER, true, &[]);
        let (new_id, copy_id) = copy_image_ok(
            &mut dst,
            OWNER,
            pb::CopyImageRequest {
                encrypted: Some(false),
                ..image_req(REGION, "plain")
            },
        );
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        start(&mut dst, &t, &r, None);
        let reason = image(&dst, OWNER, &new_id).state_reason.unwrap();
        assert_eq!(reason.code, "Client.InvalidRequest");
        assert_eq!(
            reason.message,
            format!("Snapshot {SNAP} is encrypted. Creating unencrypted copy from an encrypted snapshot is not supported.")
        );
        dst.assert_replay_equals_live();
    }

    #[test]
    fn a_failed_copy_snapshot_fails_the_image() {
        let mut h = Harness::new();
        given_image(&mut h, OWNER, false, &[]);
        let (new_id, copy_id) = copy_image_ok(&mut h, OWNER, image_req(REGION, "doomed"));
        let t = task(&h, &copy_id);
        let r = read(&mut h, &t, REGION);
        let s = start(&mut h, &t, &r, None);
        let Payload::SnapshotCreated(sc) = &s.events[0] else {
            panic!("{:?}", s.events)
        };
        // A fault fails the snapshot and the image at once ...
        let fault = fail_copy_snapshot(&h.state, &sc.snapshot_id, KEY_NOT_ACCESSIBLE);
        assert_eq!(fault.len(), 2);
        assert!(matches!(&fault[1], Payload::ImageFailed(f)
            if f.state_reason_code == INTERNAL_ERROR_CODE && f.state_reason_message == INTERNAL_ERROR_MESSAGE));
        // ... and if only the snapshot failed, the image fails when it would have turned
        // available.
        h.given([Payload::SnapshotFailed(pb::SnapshotFailed {
            snapshot_id: sc.snapshot_id.clone(),
            state_message: KEY_NOT_ACCESSIBLE.into(),
        })]);
        let fired = h.advance(60_000);
        assert!(
            matches!(fired.as_slice(), [Payload::ImageFailed(_)]),
            "{fired:?}"
        );
        let img = image(&h, OWNER, &new_id);
        assert_eq!(img.state, "failed");
        assert_eq!(img.state_reason.unwrap().message, INTERNAL_ERROR_MESSAGE);
        h.assert_replay_equals_live();
    }

    #[test]
    fn a_key_of_another_region_fails_a_snapshot_copy_later() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_snapshot(&mut src, OWNER, SNAP, 8, false);
        // The key is of us-east-1, not of the destination.
        let (resp, copy_id) = copy_snapshot_ok(
            &mut dst,
            OWNER,
            pb::CopySnapshotRequest {
                encrypted: Some(true),
                kms_key_id: KEY.into(),
                ..snap_req(REGION)
            },
        );
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        let s = start(&mut dst, &t, &r, None);
        assert!(matches!(s.events.as_slice(), [Payload::SnapshotFailed(_)]));
        let snap = snapshot(&dst, OWNER, &resp.snapshot_id);
        assert_eq!(snap.state, "error");
        assert_eq!(snap.state_message, KEY_NOT_ACCESSIBLE);
        dst.assert_replay_equals_live();
    }

    #[test]
    fn a_missing_cross_region_snapshot_fails_with_the_documented_message() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        let (resp, copy_id) = copy_snapshot_ok(&mut dst, OWNER, snap_req(REGION));
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        start(&mut dst, &t, &r, None);
        let snap = snapshot(&dst, OWNER, &resp.snapshot_id);
        assert_eq!(snap.state, "error");
        assert_eq!(snap.state_message, SOURCE_SNAPSHOT_INVALID);
        assert!(dst.state.copies_in_flight().is_empty());
        dst.assert_replay_equals_live();
    }

    // ---------------------------------------------------------------------------------------
    // CopySnapshot
    // ---------------------------------------------------------------------------------------

    #[test]
    fn copy_snapshot_is_pending_at_zero_until_started_then_completes() {
        let mut h = Harness::new();
        given_snapshot(&mut h, OWNER, SNAP, 8, false);
        h.given([Payload::TagsCreated(pb::TagsCreated {
            resource_ids: vec![SNAP.into()],
            tags: tag_list(&[("Name", "source")]),
        })]);
        // When: an encrypted copy in the same region, with a tag.
        let (resp, copy_id) = copy_snapshot_ok(
            &mut h,
            OWNER,
            pb::CopySnapshotRequest {
                encrypted: Some(true),
                description: "encrypted copy".into(),
                tag_specifications: vec![spec("snapshot", &[("team", "blue")])],
                ..snap_req(REGION)
            },
        );
        assert_eq!(tags_of(&resp.tags), pairs(&[("team", "blue")]));
        // Then: pending, 0 %, placeholder volume, no size yet, only the requested tags.
        h.now_ms += 30_000;
        let s = snapshot(&h, OWNER, &resp.snapshot_id);
        assert_eq!(s.state, "pending");
        assert_eq!(s.progress, "0%");
        assert_eq!(s.volume_id, "vol-ffffffff");
        assert_eq!(s.volume_size, 0);
        assert_eq!(s.description, "encrypted copy");
        assert_eq!(tags_of(&s.tags), pairs(&[("team", "blue")]));
        assert!(h.state.next_due_ms().is_none());
        // When the saga runs: a re-encryption moves every byte (30 s + 8 GiB ÷ 150 MiB/s).
        let t = task(&h, &copy_id);
        let r = read(&mut h, &t, REGION);
        let st = start(&mut h, &t, &r, None);
        let [Payload::SnapshotCopyStarted(e)] = st.events.as_slice() else {
            panic!("{:?}", st.events)
        };
        assert!(e.encrypted);
        assert_eq!(e.kms_key_id, crate::kms::aws_managed_key_arn(REGION, OWNER));
        assert_eq!(e.complete_at_ms, h.now_ms + 84_613);
        assert_eq!(e.transfer_type, "standard");
        let s = snapshot(&h, OWNER, &resp.snapshot_id);
        assert_eq!(s.volume_size, 8);
        assert!(s.encrypted);
        assert_eq!(s.full_snapshot_size_in_bytes, to_i64(gib(8)));
        h.now_ms += 84_613 / 2;
        let pct: u32 = snapshot(&h, OWNER, &resp.snapshot_id)
            .progress
            .trim_end_matches('%')
            .parse()
            .unwrap();
        assert!((60..99).contains(&pct), "{pct}");
        h.advance(84_613);
        let s = snapshot(&h, OWNER, &resp.snapshot_id);
        assert_eq!(s.state, "completed");
        assert_eq!(s.progress, "100%");
        assert!(h.state.copies_in_flight().is_empty());
        h.assert_replay_equals_live();
    }

    #[test]
    fn copy_snapshot_has_a_default_description_and_time_based_copies_take_their_duration() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_snapshot(&mut src, OWNER, SNAP, 8, false);
        let (resp, copy_id) = copy_snapshot_ok(
            &mut dst,
            OWNER,
            pb::CopySnapshotRequest {
                completion_duration_minutes: Some(15),
                ..snap_req(REGION)
            },
        );
        let s = snapshot(&dst, OWNER, &resp.snapshot_id);
        // [unconfirmed] EC2's default description.
        assert_eq!(s.description, format!("[Copied {SNAP} from {REGION}]"));
        assert_eq!(s.transfer_type, "time-based");
        assert_eq!(s.completion_duration_minutes, 15);
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        let st = start(&mut dst, &t, &r, None);
        let [Payload::SnapshotCopyStarted(e)] = st.events.as_slice() else {
            panic!("{:?}", st.events)
        };
        assert_eq!(e.complete_at_ms, dst.now_ms + 900_000);
        assert_eq!(e.transfer_type, "time-based");
        dst.advance(900_000);
        assert_eq!(snapshot(&dst, OWNER, &resp.snapshot_id).state, "completed");
        dst.assert_replay_equals_live();
    }

    /// The encryption table (EC2_SEMANTICS.md §4.2) for a snapshot copy in the same region
    /// (every row: `crate::encryption`'s tests).
    #[test]
    fn encryption_of_a_copy_follows_the_table() {
        const MINE: &str = "0b6c3a52-0000-4000-8000-0000000000aa";
        let started = |source_encrypted: bool, r: pb::CopySnapshotRequest| {
            let mut h = Harness::new();
            given_snapshot(&mut h, OWNER, SNAP, 8, source_encrypted);
            let (created, _) = crate::testkit::kms_key(REGION, OWNER, MINE, &[]);
            h.given([
                created,
                Payload::KmsAliasCreated(pb::KmsAliasCreated {
                    owner_id: OWNER.into(),
                    alias_name: "alias/mine".into(),
                    target_key_id: MINE.into(),
                    creation_date_ms: T0,
                }),
            ]);
            let (_, copy_id) = copy_snapshot_ok(&mut h, OWNER, r);
            let t = task(&h, &copy_id);
            let rd = read(&mut h, &t, REGION);
            let st = start(&mut h, &t, &rd, None);
            h.assert_replay_equals_live();
            match st.events.as_slice() {
                [Payload::SnapshotCopyStarted(e)] => (e.clone(), h.now_ms),
                other => panic!("{other:?}"),
            }
        };
        let default_key = crate::kms::aws_managed_key_arn(REGION, OWNER);
        // Unencrypted, nothing asked: unencrypted, metadata only.
        let (e, now) = started(false, snap_req(REGION));
        assert!(!e.encrypted && e.kms_key_id.is_empty() && e.data_encryption_key_id.is_empty());
        assert_eq!(e.complete_at_ms, now + 5_000);
        // Unencrypted, Encrypted=true: the default key, a new data key, a full copy.
        let (e, _) = started(
            false,
            pb::CopySnapshotRequest {
                encrypted: Some(true),
                ..snap_req(REGION)
            },
        );
        assert!(e.encrypted);
        assert_eq!(e.kms_key_id, default_key);
        assert_eq!(e.data_encryption_key_id.len(), 36);
        // Own encrypted source, same region, no key: the source's key and data key, no data moved.
        let (e, now) = started(true, snap_req(REGION));
        assert_eq!(e.kms_key_id, KEY);
        assert_eq!(e.data_encryption_key_id, DEK);
        assert_eq!(e.complete_at_ms, now + 5_000);
        assert_eq!(e.transferred_bytes, 0);
        // Any source with a key K: K, a new data key, a full copy.
        let (e, now) = started(
            true,
            pb::CopySnapshotRequest {
                encrypted: Some(true),
                kms_key_id: "alias/mine".into(),
                ..snap_req(REGION)
            },
        );
        // The alias resolves to its key: snapshots record the key ARN.
        assert_eq!(
            e.kms_key_id,
            format!("arn:aws:kms:{REGION}:{OWNER}:key/{MINE}")
        );
        assert_ne!(e.data_encryption_key_id, DEK);
        assert_eq!(e.complete_at_ms, now + 84_613);
    }

    // ---------------------------------------------------------------------------------------
    // Tags
    // ---------------------------------------------------------------------------------------

    #[test]
    fn source_tags_are_copied_only_when_asked_and_never_aws_tags() {
        let source_tags = [
            ("Name", "src"),
            ("team", "a"),
            ("aws:cloudformation:stack-name", "stack"),
        ];
        let run = |copy_image_tags: bool| {
            let mut src = Harness::new();
            let mut dst = Harness::in_region(DST, 7);
            given_image(&mut src, OWNER, false, &source_tags);
            let (new_id, copy_id) = copy_image_ok(
                &mut dst,
                OWNER,
                pb::CopyImageRequest {
                    copy_image_tags,
                    tag_specifications: vec![
                        spec("image", &[("team", "b")]),
                        spec("snapshot", &[("kind", "copy")]),
                    ],
                    ..image_req(REGION, "tagged")
                },
            );
            let t = task(&dst, &copy_id);
            let r = read(&mut src, &t, DST);
            let s = start(&mut dst, &t, &r, None);
            dst.assert_replay_equals_live();
            let Payload::SnapshotCreated(sc) = &s.events[0] else {
                panic!("{:?}", s.events)
            };
            (
                image(&dst, OWNER, &new_id),
                snapshot(&dst, OWNER, &sc.snapshot_id),
            )
        };
        // Without CopyImageTags: only the tag specifications.
        let (img, snap) = run(false);
        assert_eq!(tags_of(&img.tags), pairs(&[("team", "b")]));
        assert_eq!(tags_of(&snap.tags), pairs(&[("kind", "copy")]));
        // With it: the owner's user tags too; the specification wins; no `aws:` tag.
        let (img, snap) = run(true);
        assert_eq!(tags_of(&img.tags), pairs(&[("Name", "src"), ("team", "b")]));
        assert_eq!(tags_of(&snap.tags), pairs(&[("kind", "copy")]));
    }

    // ---------------------------------------------------------------------------------------
    // Quotas and cancellation
    // ---------------------------------------------------------------------------------------

    #[test]
    fn twenty_copies_in_flight_per_account_and_region() {
        let mut dst = Harness::in_region(DST, 7);
        // [sim, unconfirmed] image and snapshot copies share the 20 slots.
        let mut images = Vec::new();
        for i in 0..10 {
            images.push(copy_image_ok(&mut dst, OWNER, image_req(REGION, &format!("copy {i}"))).0);
            copy_snapshot_ok(&mut dst, OWNER, snap_req(REGION));
        }
        assert_eq!(pending_copy_slots_used(&dst.state, Some(OWNER)), 20);
        let e = dst
            .try_decide(OWNER, Command::CopyImage(image_req(REGION, "copy 21")))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceLimitExceeded);
        assert_eq!(
            e.message,
            "Too many snapshot copies in progress. The limit is 20 for this destination region."
        );
        assert_eq!(
            code(dst.try_decide(OWNER, Command::CopySnapshot(snap_req(REGION)))),
            ErrorCode::ResourceLimitExceeded
        );
        // Another account has its own slots.
        copy_snapshot_ok(&mut dst, OTHER, snap_req(REGION));
        // A deregistered copy target frees its slot.
        dst.when(
            OWNER,
            Command::DeregisterImage(pb::DeregisterImageRequest {
                image_id: images[0].clone(),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(pending_copy_slots_used(&dst.state, Some(OWNER)), 19);
        assert_eq!(pending_copy_slots_used(&dst.state, None), 20);
        copy_image_ok(&mut dst, OWNER, image_req(REGION, "copy 21"));
        dst.assert_replay_equals_live();
    }

    #[test]
    fn a_deregistered_target_cancels_the_copy() {
        let mut h = Harness::new();
        given_image(&mut h, OWNER, false, &[]);
        let deregister = |h: &mut Harness, id: &str| {
            h.when(
                OWNER,
                Command::DeregisterImage(pb::DeregisterImageRequest {
                    image_id: id.into(),
                    ..Default::default()
                }),
            )
            .unwrap()
        };
        // Before the start: StartCopy writes nothing.
        let (first, copy_id) = copy_image_ok(&mut h, OWNER, image_req(REGION, "cancelled"));
        let t = task(&h, &copy_id);
        let r = read(&mut h, &t, REGION);
        deregister(&mut h, &first);
        assert!(h.state.copies_awaiting_start().is_empty());
        let s = start(&mut h, &t, &r, None);
        assert!(s.events.is_empty());
        assert_eq!(saga(&s).outcome, "cancelled");
        assert_eq!(saga(&s).dest_state, "deregistered");
        assert_eq!(h.state.copy_phase(&t), CopyPhase::Gone);
        // After the start: deregistering deletes the pending snapshots, nothing turns available.
        let (second, copy_id) = copy_image_ok(&mut h, OWNER, image_req(REGION, "cancelled"));
        let t = task(&h, &copy_id);
        let r = read(&mut h, &t, REGION);
        start(&mut h, &t, &r, None);
        let d = deregister(&mut h, &second);
        assert!(d
            .events
            .iter()
            .any(|p| matches!(p, Payload::SnapshotDeleted(_))));
        let fired = h.advance(600_000);
        assert!(
            !fired.iter().any(|p| matches!(
                p,
                Payload::ImageAvailable(_) | Payload::SnapshotCompleted(_)
            )),
            "{fired:?}"
        );
        assert!(h.state.copies_in_flight().is_empty());
        h.assert_replay_equals_live();
    }

    #[test]
    fn a_deleted_snapshot_copy_target_cancels_the_copy() {
        let mut src = Harness::new();
        let mut dst = Harness::in_region(DST, 7);
        given_snapshot(&mut src, OWNER, SNAP, 8, false);
        let (resp, copy_id) = copy_snapshot_ok(&mut dst, OWNER, snap_req(REGION));
        dst.when(
            OWNER,
            Command::DeleteSnapshot(pb::DeleteSnapshotRequest {
                snapshot_id: resp.snapshot_id.clone(),
                ..Default::default()
            }),
        )
        .unwrap();
        let t = task(&dst, &copy_id);
        let r = read(&mut src, &t, DST);
        let s = start(&mut dst, &t, &r, None);
        assert!(s.events.is_empty());
        assert_eq!(saga(&s).outcome, "cancelled");
        assert_eq!(saga(&s).dest_state, "");
        assert!(dst.state.copies_in_flight().is_empty());
        dst.assert_replay_equals_live();
    }
}
