//! EBS snapshots (EC2_SEMANTICS.md §2.2, §3.2, §5.5, §5.7, §5.9, §6, §10.2): CreateSnapshot,
//! DeleteSnapshot and DescribeSnapshots.
//!
//! A snapshot is `pending` from its start until `complete_at` (15 s + the bytes it moves at
//! 150 MiB/s: the first snapshot of a volume moves every written byte, later ones only the bytes
//! changed since), then `completed`. Progress is computed on read and never stored.

use amisim_proto::event::Payload;
use amisim_proto::{
    CreateSnapshotRequest, DeleteSnapshotRequest, DeleteSnapshotResponse, DescribeSnapshotsRequest,
    DescribeSnapshotsResponse, Snapshot, SnapshotCreated, SnapshotDeleted,
};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::filter::{self, bool_str};
use crate::ids;
use crate::state::{self, ImageState, SnapshotState, State, VolumeState};
use crate::tags;
use crate::time::iso;
use crate::timing::progress_percent;
use crate::{Ctx, Decision, ReadCtx, Reply};

/// Longest description (characters).
pub const MAX_DESCRIPTION: usize = 255;

/// The filters DescribeSnapshots supports (besides `tag:<key>` and `tag-key`).
pub const SNAPSHOT_FILTERS: &[&str] = &[
    "description",
    "encrypted",
    "owner-alias",
    "owner-id",
    "progress",
    "snapshot-id",
    "start-time",
    "status",
    "storage-tier",
    "transfer-type",
    "volume-id",
    "volume-size",
];

/// True if `account` may see (and restore) the snapshot: it owns it, has an explicit
/// create-volume permission, or the snapshot is public (EC2_SEMANTICS.md §4.1).
pub fn is_visible(s: &state::Snapshot, account: &str) -> bool {
    s.owner_id == account || s.public || s.create_volume_permissions.contains(account)
}

/// Pending snapshots allowed per volume (EC2_SEMANTICS.md §6): 1 for st1/sc1, else 5.
pub fn max_pending_per_volume(volume_type: &str) -> usize {
    match volume_type {
        "st1" | "sc1" => 1,
        _ => 5,
    }
}

/// The progress string: `100%` once completed, else the elapsed share of the expected duration
/// (floored, at most `99%`). `[sim]` An `error` snapshot shows `0%`: the failure time is not kept.
pub fn progress(s: &state::Snapshot, now_ms: u64) -> String {
    let pct = match s.state {
        SnapshotState::Completed => 100,
        SnapshotState::Pending => progress_percent(s.start_time_ms, s.complete_at_ms, now_ms),
        SnapshotState::Error => 0,
    };
    format!("{pct}%")
}

/// Renders a snapshot as `ctx`'s caller sees it (owner tags for the owner only).
pub fn render_snapshot(_state: &State, s: &state::Snapshot, ctx: &ReadCtx<'_>) -> Snapshot {
    let is_owner = s.owner_id == ctx.account_id;
    Snapshot {
        snapshot_id: s.snapshot_id.clone(),
        volume_id: s.volume_id.clone(),
        volume_size: s.volume_size,
        state: s.state.as_str().to_string(),
        state_message: s.state_message.clone(),
        progress: progress(s, ctx.now_ms),
        start_time: iso(s.start_time_ms),
        completion_time: s.completion_time_ms.map(iso).unwrap_or_default(),
        owner_id: s.owner_id.clone(),
        // Only `amazon`, which amisim's accounts never are.
        owner_alias: String::new(),
        description: s.description.clone(),
        encrypted: s.encrypted,
        kms_key_id: s.kms_key_id.clone(),
        data_encryption_key_id: s.data_encryption_key_id.clone(),
        tags: if is_owner {
            tags::render(&s.tags)
        } else {
            Vec::new()
        },
        storage_tier: "standard".into(),
        transfer_type: s.transfer_type.clone(),
        completion_duration_minutes: s.completion_duration_minutes,
        full_snapshot_size_in_bytes: s.full_snapshot_size_in_bytes,
    }
}

/// CreateSnapshot (EC2_SEMANTICS.md §5.5).
pub fn create_snapshot(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: CreateSnapshotRequest,
) -> Ec2Result<Decision> {
    if r.volume_id.is_empty() {
        return Err(Ec2Error::missing("VolumeId"));
    }
    ids::check_volume_id(&r.volume_id)?;
    if r.description.chars().count() > MAX_DESCRIPTION {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            "Value for parameter description is invalid. It must be at most 255 characters.",
        ));
    }
    let mut spec_tags = tags::from_specifications(&r.tag_specifications, &["snapshot"])?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let v = state
        .volumes
        .get(&r.volume_id)
        .filter(|v| v.owner_id == ctx.account_id)
        .ok_or_else(|| Ec2Error::volume_not_found(&r.volume_id))?;
    if v.state == VolumeState::Creating {
        return Err(Ec2Error::new(
            ErrorCode::IncorrectState,
            format!("Volume '{}' is in the 'creating' state.", v.volume_id),
        ));
    }
    // Per volume: pending and error snapshots, and deleted ones still working in the background.
    let in_flight = state
        .snapshots
        .values()
        .filter(|s| s.volume_id == v.volume_id)
        .filter(|s| matches!(s.state, SnapshotState::Pending | SnapshotState::Error))
        .count()
        + state
            .background_snapshots
            .values()
            .filter(|(vol, due)| *vol == v.volume_id && *due > ctx.now_ms)
            .count();
    if in_flight >= max_pending_per_volume(&v.volume_type) {
        return Err(Ec2Error::new(
            ErrorCode::ConcurrentSnapshotLimitExceeded,
            format!(
                "Maximum allowed in-progress snapshots for a single volume exceeded ({} for \
                 volume type {}).",
                max_pending_per_volume(&v.volume_type),
                v.volume_type
            ),
        ));
    }
    if let Some(last) = v.last_snapshot_ms {
        if ctx.now_ms.saturating_sub(last) < ctx.config.snapshot_spacing_ms {
            return Err(Ec2Error::new(
                ErrorCode::SnapshotCreationPerVolumeRateExceeded,
                "The maximum per volume CreateSnapshot request rate has been exceeded. Use an \
                 increasing or variable sleep interval between requests.",
            ));
        }
    }
    let mine = || {
        state
            .snapshots
            .values()
            .filter(|s| s.owner_id == ctx.account_id)
    };
    if mine().filter(|s| s.state == SnapshotState::Pending).count()
        >= ctx.config.max_pending_snapshots
    {
        return Err(Ec2Error::new(
            ErrorCode::PendingSnapshotLimitExceeded,
            format!(
                "The maximum number of pending snapshots ({}) has been reached.",
                ctx.config.max_pending_snapshots
            ),
        ));
    }
    if mine().count() >= ctx.config.max_snapshots {
        return Err(Ec2Error::new(
            ErrorCode::SnapshotLimitExceeded,
            format!(
                "The maximum number of snapshots ({}) has been reached.",
                ctx.config.max_snapshots
            ),
        ));
    }

    let snapshot_id = ctx.new_id(ids::Kind::Snapshot, state);
    let start = ctx.now_ms;
    let event = Payload::SnapshotCreated(SnapshotCreated {
        snapshot_id: snapshot_id.clone(),
        owner_id: ctx.account_id.to_string(),
        volume_id: v.volume_id.clone(),
        volume_size: v.size,
        description: r.description.clone(),
        encrypted: v.encrypted,
        kms_key_id: v.kms_key_id.clone(),
        data_encryption_key_id: v.data_encryption_key_id.clone(),
        tags: state::tag_records(&spec_tags.remove("snapshot").unwrap_or_default()),
        start_time_ms: start,
        complete_at_ms: start.saturating_add(ctx.config.snapshot_ms(v.changed_bytes)),
        full_snapshot_size_in_bytes: i64::try_from(v.written_bytes).unwrap_or(i64::MAX),
        transferred_bytes: i64::try_from(v.changed_bytes).unwrap_or(i64::MAX),
        for_image_id: String::new(),
        transfer_type: String::new(),
        completion_duration_minutes: 0,
    });
    let events = vec![event];
    let after = crate::preview(state, &events);
    let reply = after
        .snapshots
        .get(&snapshot_id)
        .map(|s| render_snapshot(&after, s, &ctx.read()))
        .ok_or_else(|| Ec2Error::internal("the new snapshot is missing from the preview"))?;
    Ok(Decision::new(events, Reply::CreateSnapshot(reply)))
}

/// DeleteSnapshot (EC2_SEMANTICS.md §5.7). Allowed while `pending`.
pub fn delete_snapshot(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: DeleteSnapshotRequest,
) -> Ec2Result<Decision> {
    if r.snapshot_id.is_empty() {
        return Err(Ec2Error::missing("SnapshotId"));
    }
    ids::check_snapshot_id("snapshotId", &r.snapshot_id)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let s = state
        .snapshots
        .get(&r.snapshot_id)
        .filter(|s| is_visible(s, ctx.account_id))
        .ok_or_else(|| Ec2Error::snapshot_not_found(&r.snapshot_id))?;
    if s.owner_id != ctx.account_id {
        // [unconfirmed] code for a grantee deleting a shared snapshot.
        return Err(Ec2Error::new(
            ErrorCode::UnauthorizedOperation,
            "You are not authorized to perform this operation.",
        ));
    }
    // Registered AMIs (pending, available, disabled) hold their snapshots; failed and
    // deregistered ones do not [unconfirmed for failed].
    let user = state.images.values().find(|img| {
        matches!(
            img.state,
            ImageState::Pending | ImageState::Available | ImageState::Disabled
        ) && img.snapshot_ids().any(|id| id == s.snapshot_id)
    });
    if let Some(img) = user {
        return Err(Ec2Error::new(
            ErrorCode::InvalidSnapshotInUse,
            format!(
                "The snapshot {} is currently in use by {}",
                s.snapshot_id,
                img.id()
            ),
        ));
    }
    Ok(Decision::new(
        vec![Payload::SnapshotDeleted(SnapshotDeleted {
            snapshot_id: r.snapshot_id.clone(),
        })],
        Reply::DeleteSnapshot(DeleteSnapshotResponse { r#return: true }),
    ))
}

/// `self`, `amazon` or a 12-digit account (`OwnerIds`); `self`, `all` or an account
/// (`RestorableByUserIds`). Else `InvalidUserID.Malformed`.
fn check_user_ids(values: &[String], keywords: &[&str]) -> Ec2Result<()> {
    match values
        .iter()
        .find(|v| !keywords.contains(&v.as_str()) && !ids::is_account_id(v))
    {
        Some(bad) => Err(Ec2Error::new(
            ErrorCode::InvalidUserIdMalformed,
            format!("Invalid user id: \"{bad}\""),
        )),
        None => Ok(()),
    }
}

/// A snapshot passes `OwnerIds` (any of them).
fn owner_matches(s: &state::Snapshot, owner_ids: &[String], caller: &str) -> bool {
    owner_ids.is_empty()
        || owner_ids.iter().any(|o| match o.as_str() {
            "self" => s.owner_id == caller,
            // No snapshot in amisim is owned by Amazon.
            "amazon" => false,
            id => s.owner_id == id,
        })
}

/// A snapshot passes `RestorableByUserIds` (any of them): `self` = the caller owns it or has an
/// explicit permission; `all` = public; an account = the caller owns it and that account may
/// restore it (owner, explicit grant or public).
fn restorable_matches(s: &state::Snapshot, restorable_by: &[String], caller: &str) -> bool {
    restorable_by.is_empty()
        || restorable_by.iter().any(|u| match u.as_str() {
            "self" => s.owner_id == caller || s.create_volume_permissions.contains(caller),
            "all" => s.public,
            id => {
                s.owner_id == caller
                    && (s.owner_id == id || s.public || s.create_volume_permissions.contains(id))
            }
        })
}

/// A snapshot's values for a DescribeSnapshots filter name, as `caller` sees it.
fn filter_values(s: &state::Snapshot, name: &str, now_ms: u64) -> Vec<String> {
    let one = |v: String| if v.is_empty() { vec![] } else { vec![v] };
    match name {
        "description" => vec![s.description.clone()],
        "encrypted" => vec![bool_str(s.encrypted)],
        "owner-alias" => vec![],
        "owner-id" => vec![s.owner_id.clone()],
        "progress" => vec![progress(s, now_ms)],
        "snapshot-id" => vec![s.snapshot_id.clone()],
        "start-time" => vec![iso(s.start_time_ms)],
        "status" => vec![s.state.as_str().to_string()],
        "storage-tier" => vec!["standard".to_string()],
        "transfer-type" => one(s.transfer_type.clone()),
        "volume-id" => vec![s.volume_id.clone()],
        "volume-size" => vec![s.volume_size.to_string()],
        _ => vec![],
    }
}

/// DescribeSnapshots (EC2_SEMANTICS.md §5.9): by default the caller's own, public and
/// explicitly shared snapshots, in id order.
pub fn describe_snapshots(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: DescribeSnapshotsRequest,
) -> Ec2Result<DescribeSnapshotsResponse> {
    for id in &r.snapshot_ids {
        ids::check_snapshot_id("snapshotId", id)?;
    }
    check_user_ids(&r.owner_ids, &["self", "amazon"])?;
    check_user_ids(&r.restorable_by_user_ids, &["self", "all"])?;
    filter::check_filters(&r.filters, SNAPSHOT_FILTERS)?;
    let page = filter::page(r.max_results, &r.next_token, !r.snapshot_ids.is_empty(), 5)?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    // An unknown id fails; an existing but invisible one is silently left out.
    let mut missing: Vec<&str> = Vec::new();
    for id in &r.snapshot_ids {
        if !state.snapshots.contains_key(id) && !missing.contains(&id.as_str()) {
            missing.push(id);
        }
    }
    if !missing.is_empty() {
        return Err(Ec2Error::snapshot_not_found(&missing.join(", ")));
    }
    let caller = ctx.account_id;
    let no_tags = state::Tags::new();
    let items = state
        .snapshots
        .values()
        .filter(|s| is_visible(s, caller))
        .filter(|s| r.snapshot_ids.is_empty() || r.snapshot_ids.contains(&s.snapshot_id))
        .filter(|s| owner_matches(s, &r.owner_ids, caller))
        .filter(|s| restorable_matches(s, &r.restorable_by_user_ids, caller))
        .filter(|s| {
            // Tag filters see what the caller sees: the owner's tags for the owner only.
            let tags = if s.owner_id == caller {
                &s.tags
            } else {
                &no_tags
            };
            filter::matches(&r.filters, tags, |name| filter_values(s, name, ctx.now_ms))
        })
        .map(|s| (s.snapshot_id.clone(), render_snapshot(state, s, ctx)));
    let (snapshots, next_token) = filter::paginate(items, &page);
    Ok(DescribeSnapshotsResponse {
        snapshots,
        next_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{code, Harness, OTHER, OWNER, T0};
    use crate::timing::gib;
    use crate::{Answer, Command, Query};
    use amisim_proto::{
        CreateVolumeRequest, Filter, ImageAvailable, ImageDeregistered, ImageFailed,
        ImageRegistered, MappingRecord, SnapshotCompleted, SnapshotFailed, Tag, TagSpecification,
        VolumeCreated,
    };

    const VOL: &str = "vol-0123456789abcdef0";
    const AMI: &str = "ami-0123456789abcdef0";

    /// An `available` volume of `size` GiB and `volume_type`, owned by `owner`.
    fn volume(h: &mut Harness, id: &str, owner: &str, size: i32, volume_type: &str) {
        let now = h.now_ms;
        h.given([
            Payload::VolumeCreated(VolumeCreated {
                volume_id: id.into(),
                owner_id: owner.into(),
                availability_zone: "us-east-1a".into(),
                size,
                volume_type: volume_type.into(),
                create_time_ms: now,
                available_at_ms: now,
                written_bytes: gib(size),
                ..Default::default()
            }),
            Payload::VolumeAvailable(amisim_proto::VolumeAvailable {
                volume_id: id.into(),
            }),
        ]);
    }

    fn req(volume_id: &str) -> CreateSnapshotRequest {
        CreateSnapshotRequest {
            volume_id: volume_id.into(),
            ..Default::default()
        }
    }

    fn snapshot_of(d: Decision) -> Snapshot {
        match d.reply {
            Reply::CreateSnapshot(s) => s,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn create(h: &mut Harness, account: &str, volume_id: &str) -> String {
        snapshot_of(
            h.when(account, Command::CreateSnapshot(req(volume_id)))
                .unwrap(),
        )
        .snapshot_id
    }

    fn describe(
        h: &Harness,
        account: &str,
        r: DescribeSnapshotsRequest,
    ) -> Ec2Result<DescribeSnapshotsResponse> {
        match h.read(account, Query::DescribeSnapshots(r))? {
            Answer::DescribeSnapshots(x) => Ok(x),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn ids_of(r: Ec2Result<DescribeSnapshotsResponse>) -> Vec<String> {
        r.unwrap()
            .snapshots
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect()
    }

    fn by_id(h: &Harness, account: &str, id: &str) -> Snapshot {
        let r = DescribeSnapshotsRequest {
            snapshot_ids: vec![id.into()],
            ..Default::default()
        };
        describe(h, account, r).unwrap().snapshots.remove(0)
    }

    fn rejects(h: &mut Harness, account: &str, cmd: Command, want: ErrorCode, message: &str) {
        let before = h.log.len();
        let e = h.when(account, cmd).unwrap_err();
        assert_eq!(e.code, want, "{e}");
        if !message.is_empty() {
            assert_eq!(e.message, message);
        }
        assert_eq!(h.log.len(), before, "an error wrote events");
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// Test-only: sharing is another module's action; poke the projection directly.
    fn share(h: &mut Harness, id: &str, with: &str) {
        if let Some(s) = h.state.snapshots.get_mut(id) {
            s.create_volume_permissions.insert(with.to_string());
        }
    }

    fn make_public(h: &mut Harness, id: &str) {
        if let Some(s) = h.state.snapshots.get_mut(id) {
            s.public = true;
        }
    }

    // ---- CreateSnapshot -----------------------------------------------------------------

    #[test]
    fn snapshot_lifecycle_progress_and_incremental_second_snapshot() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let d = h.when(OWNER, Command::CreateSnapshot(req(VOL))).unwrap();
        let Payload::SnapshotCreated(e) = &d.events[0] else {
            panic!("{:?}", d.events)
        };
        // 15 s + 8 GiB at 150 MiB/s.
        assert_eq!(e.complete_at_ms, T0 + 69_613);
        assert_eq!(e.full_snapshot_size_in_bytes, gib(8) as i64);
        assert_eq!(e.transferred_bytes, gib(8) as i64);
        let s = snapshot_of(d);
        assert_eq!(
            (s.state.as_str(), s.progress.as_str(), s.volume_size),
            ("pending", "0%", 8)
        );
        assert_eq!(s.start_time, "2024-05-01T00:00:00.000Z");
        assert!(s.completion_time.is_empty());
        assert_eq!(
            (s.owner_id.as_str(), s.storage_tier.as_str()),
            (OWNER, "standard")
        );
        assert_eq!(s.volume_id, VOL);
        let first = s.snapshot_id;

        assert!(h.advance(29_300).is_empty());
        assert_eq!(by_id(&h, OWNER, &first).progress, "42%");
        assert!(h.advance(40_312).is_empty());
        assert_eq!(by_id(&h, OWNER, &first).progress, "99%");
        let fired = h.advance(1);
        assert_eq!(
            fired,
            vec![Payload::SnapshotCompleted(SnapshotCompleted {
                snapshot_id: first.clone()
            })]
        );
        let s = by_id(&h, OWNER, &first);
        assert_eq!(
            (s.state.as_str(), s.progress.as_str()),
            ("completed", "100%")
        );
        assert_eq!(s.completion_time, "2024-05-01T00:01:09.613Z");

        // Second snapshot: nothing changed since the first, so only the fixed part.
        let d = h.when(OWNER, Command::CreateSnapshot(req(VOL))).unwrap();
        let Payload::SnapshotCreated(e) = &d.events[0] else {
            panic!("{:?}", d.events)
        };
        assert_eq!(e.transferred_bytes, 0);
        assert_eq!(e.full_snapshot_size_in_bytes, gib(8) as i64);
        assert_eq!(e.complete_at_ms - e.start_time_ms, 15_000);
        let second = snapshot_of(d).snapshot_id;
        h.advance(15_000);
        assert_eq!(by_id(&h, OWNER, &second).state, "completed");
        h.assert_replay_equals_live();
    }

    #[test]
    fn snapshot_of_a_volume_made_by_create_volume() {
        let mut h = Harness::new();
        let d = h
            .when(
                OWNER,
                Command::CreateVolume(CreateVolumeRequest {
                    availability_zone: "us-east-1a".into(),
                    size: Some(1),
                    encrypted: Some(true),
                    ..Default::default()
                }),
            )
            .unwrap();
        let Reply::CreateVolume(v) = d.reply else {
            panic!()
        };
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(&v.volume_id)),
            ErrorCode::IncorrectState,
            &format!("Volume '{}' is in the 'creating' state.", v.volume_id),
        );
        h.advance(2_000);
        let s = snapshot_of(
            h.when(OWNER, Command::CreateSnapshot(req(&v.volume_id)))
                .unwrap(),
        );
        // The volume's encryption, key and data key (same lineage).
        let vol = &h.state.volumes[&v.volume_id];
        assert!(s.encrypted);
        assert_eq!(s.kms_key_id, vol.kms_key_id);
        assert_eq!(s.data_encryption_key_id, vol.data_encryption_key_id);
        assert_eq!(s.full_snapshot_size_in_bytes, gib(1) as i64);
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_snapshot_syntax_and_dry_run() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req("")),
            ErrorCode::MissingParameter,
            "",
        );
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req("vol-12")),
            ErrorCode::InvalidVolumeIdMalformed,
            "Invalid id: \"vol-12\" (expecting \"vol-...\")",
        );
        let mut r = req(VOL);
        r.description = "d".repeat(256);
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(r),
            ErrorCode::InvalidParameterValue,
            "",
        );
        let mut r = req(VOL);
        r.tag_specifications = vec![TagSpecification {
            resource_type: "volume".into(),
            tags: vec![],
        }];
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(r),
            ErrorCode::InvalidParameterValue,
            "",
        );
        let mut r = req(VOL);
        r.dry_run = true;
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(r),
            ErrorCode::DryRunOperation,
            "Request would have succeeded, but DryRun flag is set.",
        );
        // Description of 255 characters and snapshot tags are fine.
        let mut r = req(VOL);
        r.description = "é".repeat(255);
        r.tag_specifications = vec![TagSpecification {
            resource_type: "snapshot".into(),
            tags: vec![Tag {
                key: "Name".into(),
                value: "nightly".into(),
            }],
        }];
        let s = snapshot_of(h.when(OWNER, Command::CreateSnapshot(r)).unwrap());
        assert_eq!(s.description.chars().count(), 255);
        assert_eq!(s.tags.len(), 1);
    }

    #[test]
    fn create_snapshot_of_unknown_or_foreign_volume_is_not_found() {
        let mut h = Harness::new();
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::InvalidVolumeNotFound,
            &format!("The volume '{VOL}' does not exist."),
        );
        volume(&mut h, VOL, OTHER, 8, "gp2");
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::InvalidVolumeNotFound,
            "",
        );
    }

    #[test]
    fn create_snapshot_at_most_five_in_flight_per_gp2_volume() {
        let mut h = Harness::new();
        h.config.snapshot_spacing_ms = 0;
        h.config.snapshot_base_ms = 3_600_000;
        volume(&mut h, VOL, OWNER, 8, "gp2");
        for _ in 0..5 {
            create(&mut h, OWNER, VOL);
        }
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
            "",
        );
        // Another volume is not affected.
        volume(&mut h, "vol-0123456789abcdef1", OWNER, 8, "gp3");
        create(&mut h, OWNER, "vol-0123456789abcdef1");
    }

    #[test]
    fn create_snapshot_one_in_flight_per_st1_volume_and_error_snapshots_count() {
        let mut h = Harness::new();
        h.config.snapshot_spacing_ms = 0;
        volume(&mut h, VOL, OWNER, 125, "st1");
        let first = create(&mut h, OWNER, VOL);
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
            "",
        );
        // A failed snapshot still counts until it is deleted.
        h.given([Payload::SnapshotFailed(SnapshotFailed {
            snapshot_id: first.clone(),
            state_message: "Given key ID is not accessible".into(),
        })]);
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
            "",
        );
        let s = by_id(&h, OWNER, &first);
        assert_eq!(
            (
                s.state.as_str(),
                s.state_message.as_str(),
                s.progress.as_str()
            ),
            ("error", "Given key ID is not accessible", "0%")
        );
        h.when(
            OWNER,
            Command::DeleteSnapshot(DeleteSnapshotRequest {
                snapshot_id: first,
                dry_run: false,
            }),
        )
        .unwrap();
        create(&mut h, OWNER, VOL);
        h.assert_replay_equals_live();
    }

    #[test]
    fn deleted_pending_snapshot_still_counts_until_its_work_is_done() {
        let mut h = Harness::new();
        h.config.snapshot_spacing_ms = 0;
        volume(&mut h, VOL, OWNER, 125, "sc1");
        let first = create(&mut h, OWNER, VOL);
        let due = h.state.snapshots[&first].complete_at_ms;
        h.when(
            OWNER,
            Command::DeleteSnapshot(DeleteSnapshotRequest {
                snapshot_id: first,
                dry_run: false,
            }),
        )
        .unwrap();
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::ConcurrentSnapshotLimitExceeded,
            "",
        );
        h.advance(due - h.now_ms);
        create(&mut h, OWNER, VOL);
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_snapshot_at_most_one_per_volume_every_15_s() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        create(&mut h, OWNER, VOL);
        h.advance(14_999);
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::SnapshotCreationPerVolumeRateExceeded,
            "The maximum per volume CreateSnapshot request rate has been exceeded. Use an \
             increasing or variable sleep interval between requests.",
        );
        h.advance(1);
        create(&mut h, OWNER, VOL);
    }

    #[test]
    fn create_snapshot_pending_per_account_quota() {
        let mut h = Harness::new();
        h.config.max_pending_snapshots = 1;
        volume(&mut h, VOL, OWNER, 8, "gp2");
        volume(&mut h, "vol-0123456789abcdef1", OWNER, 8, "gp2");
        create(&mut h, OWNER, VOL);
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req("vol-0123456789abcdef1")),
            ErrorCode::PendingSnapshotLimitExceeded,
            "",
        );
        h.advance(70_000);
        create(&mut h, OWNER, "vol-0123456789abcdef1");
    }

    #[test]
    fn create_snapshot_per_account_quota() {
        let mut h = Harness::new();
        h.config.max_snapshots = 1;
        volume(&mut h, VOL, OWNER, 8, "gp2");
        volume(&mut h, "vol-0123456789abcdef2", OTHER, 8, "gp2");
        create(&mut h, OWNER, VOL);
        h.advance(70_000);
        rejects(
            &mut h,
            OWNER,
            Command::CreateSnapshot(req(VOL)),
            ErrorCode::SnapshotLimitExceeded,
            "",
        );
        create(&mut h, OTHER, "vol-0123456789abcdef2");
    }

    // ---- DeleteSnapshot -----------------------------------------------------------------

    fn delete(id: &str) -> Command {
        Command::DeleteSnapshot(DeleteSnapshotRequest {
            snapshot_id: id.into(),
            dry_run: false,
        })
    }

    fn image_using(h: &mut Harness, snapshot_id: &str) {
        h.given([Payload::ImageRegistered(ImageRegistered {
            image_id: AMI.into(),
            owner_id: OWNER.into(),
            name: "web".into(),
            root_device_type: "ebs".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![MappingRecord {
                device_name: "/dev/xvda".into(),
                ebs: true,
                snapshot_id: snapshot_id.into(),
                volume_size: 8,
                volume_type: "gp3".into(),
                ..Default::default()
            }],
            origin: "register".into(),
            ..Default::default()
        })]);
    }

    #[test]
    fn delete_snapshot_lifecycle_allowed_while_pending() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let id = create(&mut h, OWNER, VOL);
        let d = h.when(OWNER, delete(&id)).unwrap();
        assert_eq!(
            d.reply,
            Reply::DeleteSnapshot(DeleteSnapshotResponse { r#return: true })
        );
        assert!(!h.state.snapshots.contains_key(&id));
        // Its timer is gone: nothing completes later.
        assert!(h.advance(100_000).is_empty());
        let r = DescribeSnapshotsRequest {
            snapshot_ids: vec![id.clone()],
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidSnapshotNotFound
        );
        h.assert_replay_equals_live();
    }

    #[test]
    fn delete_snapshot_syntax_existence_and_dry_run() {
        let mut h = Harness::new();
        rejects(&mut h, OWNER, delete(""), ErrorCode::MissingParameter, "");
        rejects(
            &mut h,
            OWNER,
            delete("snap-1"),
            ErrorCode::InvalidParameterValue,
            "Value (snap-1) for parameter snapshotId is invalid. Expected: 'snap-...'.",
        );
        rejects(
            &mut h,
            OWNER,
            delete("snap-0123456789abcdef0"),
            ErrorCode::InvalidSnapshotNotFound,
            "The snapshot 'snap-0123456789abcdef0' does not exist.",
        );
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let id = create(&mut h, OWNER, VOL);
        rejects(
            &mut h,
            OTHER,
            delete(&id),
            ErrorCode::InvalidSnapshotNotFound,
            "",
        );
        let dry = Command::DeleteSnapshot(DeleteSnapshotRequest {
            snapshot_id: id.clone(),
            dry_run: true,
        });
        rejects(&mut h, OWNER, dry, ErrorCode::DryRunOperation, "");
        assert!(h.state.snapshots.contains_key(&id));
    }

    #[test]
    fn delete_shared_snapshot_by_grantee_is_unauthorized_unconfirmed() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let id = create(&mut h, OWNER, VOL);
        share(&mut h, &id, OTHER);
        rejects(
            &mut h,
            OTHER,
            delete(&id),
            ErrorCode::UnauthorizedOperation,
            "You are not authorized to perform this operation.",
        );
    }

    #[test]
    fn delete_snapshot_in_use_by_a_registered_image() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let id = create(&mut h, OWNER, VOL);
        h.advance(70_000);
        image_using(&mut h, &id);
        let in_use = format!("The snapshot {id} is currently in use by {AMI}");
        // Pending.
        rejects(
            &mut h,
            OWNER,
            delete(&id),
            ErrorCode::InvalidSnapshotInUse,
            &in_use,
        );
        // Available.
        h.given([Payload::ImageAvailable(ImageAvailable {
            image_id: AMI.into(),
        })]);
        rejects(
            &mut h,
            OWNER,
            delete(&id),
            ErrorCode::InvalidSnapshotInUse,
            &in_use,
        );
        // Disabled (no event sets it yet; test-only poke).
        if let Some(img) = h.state.image_mut(AMI) {
            img.state = ImageState::Disabled;
        }
        rejects(
            &mut h,
            OWNER,
            delete(&id),
            ErrorCode::InvalidSnapshotInUse,
            &in_use,
        );
    }

    #[test]
    fn delete_snapshot_of_failed_image_is_allowed_unconfirmed() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let id = create(&mut h, OWNER, VOL);
        h.advance(70_000);
        image_using(&mut h, &id);
        h.given([Payload::ImageFailed(ImageFailed {
            image_id: AMI.into(),
            state_reason_code: "Client.InternalError".into(),
            state_reason_message: "failed".into(),
        })]);
        assert!(h.when(OWNER, delete(&id)).is_ok());
        h.assert_replay_equals_live();
    }

    #[test]
    fn delete_snapshot_of_deregistered_image_is_allowed() {
        let mut h = Harness::new();
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let id = create(&mut h, OWNER, VOL);
        h.advance(70_000);
        image_using(&mut h, &id);
        h.given([Payload::ImageDeregistered(ImageDeregistered {
            image_id: AMI.into(),
            forget_at_ms: h.now_ms + 3_600_000,
        })]);
        assert!(h.when(OWNER, delete(&id)).is_ok());
        h.assert_replay_equals_live();
    }

    // ---- DescribeSnapshots --------------------------------------------------------------

    /// Three snapshots: OWNER's private `a`, OTHER's private `b`, OTHER's `c` (to be shared).
    fn three(h: &mut Harness) -> (String, String, String) {
        volume(h, VOL, OWNER, 8, "gp2");
        volume(h, "vol-0123456789abcdef1", OTHER, 8, "gp2");
        volume(h, "vol-0123456789abcdef2", OTHER, 16, "gp3");
        let mut r = req(VOL);
        r.description = "nightly web".into();
        r.tag_specifications = vec![TagSpecification {
            resource_type: "snapshot".into(),
            tags: vec![Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
        }];
        let a = snapshot_of(h.when(OWNER, Command::CreateSnapshot(r)).unwrap()).snapshot_id;
        let b = create(h, OTHER, "vol-0123456789abcdef1");
        let mut r = req("vol-0123456789abcdef2");
        r.tag_specifications = vec![TagSpecification {
            resource_type: "snapshot".into(),
            tags: vec![Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
        }];
        let c = snapshot_of(h.when(OTHER, Command::CreateSnapshot(r)).unwrap()).snapshot_id;
        (a, b, c)
    }

    #[test]
    fn describe_snapshots_default_is_own_public_and_shared() {
        let mut h = Harness::new();
        let (a, b, c) = three(&mut h);
        let all = DescribeSnapshotsRequest::default;
        assert_eq!(ids_of(describe(&h, OWNER, all())), vec![a.clone()]);
        share(&mut h, &c, OWNER);
        assert_eq!(
            ids_of(describe(&h, OWNER, all())),
            sorted(vec![a.clone(), c.clone()])
        );
        make_public(&mut h, &b);
        assert_eq!(
            ids_of(describe(&h, OWNER, all())),
            sorted(vec![a.clone(), b.clone(), c.clone()])
        );
        // The owner's tags are shown to the owner only.
        assert_eq!(by_id(&h, OWNER, &c).tags, vec![]);
        assert_eq!(by_id(&h, OTHER, &c).tags.len(), 1);
        assert_eq!(by_id(&h, OWNER, &a).tags.len(), 1);
    }

    #[test]
    fn describe_snapshots_by_id_unknown_fails_invisible_is_omitted() {
        let mut h = Harness::new();
        let (a, b, _) = three(&mut h);
        let r = DescribeSnapshotsRequest {
            snapshot_ids: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        assert_eq!(ids_of(describe(&h, OWNER, r)), vec![a.clone()]);
        let r = DescribeSnapshotsRequest {
            snapshot_ids: vec![a.clone(), "snap-0000000000000000f".into()],
            ..Default::default()
        };
        let e = describe(&h, OWNER, r).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidSnapshotNotFound);
        assert_eq!(
            e.message,
            "The snapshot 'snap-0000000000000000f' does not exist."
        );
        let r = DescribeSnapshotsRequest {
            snapshot_ids: vec!["snap-x".into()],
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidParameterValue
        );
    }

    #[test]
    fn describe_snapshots_owner_ids() {
        let mut h = Harness::new();
        let (a, b, c) = three(&mut h);
        share(&mut h, &c, OWNER);
        make_public(&mut h, &b);
        let owners = |o: &[&str]| DescribeSnapshotsRequest {
            owner_ids: o.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            ids_of(describe(&h, OWNER, owners(&["self"]))),
            vec![a.clone()]
        );
        assert_eq!(
            ids_of(describe(&h, OWNER, owners(&[OTHER]))),
            sorted(vec![b.clone(), c.clone()])
        );
        assert_eq!(
            ids_of(describe(&h, OWNER, owners(&["self", OTHER]))),
            sorted(vec![a.clone(), b.clone(), c.clone()])
        );
        assert!(ids_of(describe(&h, OWNER, owners(&["amazon"]))).is_empty());
        for bad in ["me", "12345", "all"] {
            let e = describe(&h, OWNER, owners(&[bad])).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidUserIdMalformed);
            assert_eq!(e.message, format!("Invalid user id: \"{bad}\""));
        }
    }

    #[test]
    fn describe_snapshots_restorable_by() {
        let mut h = Harness::new();
        let (a, b, c) = three(&mut h);
        share(&mut h, &c, OWNER);
        make_public(&mut h, &b);
        let by = |u: &[&str]| DescribeSnapshotsRequest {
            restorable_by_user_ids: u.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            ids_of(describe(&h, OWNER, by(&["self"]))),
            sorted(vec![a.clone(), c.clone()])
        );
        assert_eq!(ids_of(describe(&h, OWNER, by(&["all"]))), vec![b.clone()]);
        // An account id: the caller's own snapshots that account may restore.
        assert!(ids_of(describe(&h, OWNER, by(&[OTHER]))).is_empty());
        share(&mut h, &a, OTHER);
        assert_eq!(ids_of(describe(&h, OWNER, by(&[OTHER]))), vec![a.clone()]);
        assert_eq!(
            code(describe(&h, OWNER, by(&["amazon"]))),
            ErrorCode::InvalidUserIdMalformed
        );
    }

    #[test]
    fn describe_snapshots_filters() {
        let mut h = Harness::new();
        let (a, _, c) = three(&mut h);
        share(&mut h, &c, OWNER);
        let f = |name: &str, values: &[&str]| DescribeSnapshotsRequest {
            filters: vec![Filter {
                name: name.into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
            ..Default::default()
        };
        let q = |name: &str, values: &[&str]| ids_of(describe(&h, OWNER, f(name, values)));
        assert_eq!(q("description", &["nightly*"]), vec![a.clone()]);
        assert_eq!(q("volume-size", &["16"]), vec![c.clone()]);
        assert_eq!(q("volume-id", &[VOL]), vec![a.clone()]);
        assert_eq!(q("owner-id", &[OTHER]), vec![c.clone()]);
        assert_eq!(q("status", &["pending"]).len(), 2);
        assert_eq!(q("progress", &["0%"]).len(), 2);
        assert_eq!(q("encrypted", &["false"]).len(), 2);
        assert_eq!(q("storage-tier", &["standard"]).len(), 2);
        assert_eq!(q("start-time", &["2024-05-01T*"]).len(), 2);
        assert_eq!(q("snapshot-id", &[&a]), vec![a.clone()]);
        assert!(q("owner-alias", &["amazon"]).is_empty());
        assert!(q("transfer-type", &["*"]).is_empty());
        // The caller sees only its own tags, so tag filters match only its own snapshots.
        assert_eq!(q("tag:env", &["pr?d"]), vec![a.clone()]);
        assert_eq!(q("tag-key", &["env"]), vec![a.clone()]);
        h.advance(200_000);
        let q = |name: &str, values: &[&str]| ids_of(describe(&h, OWNER, f(name, values)));
        assert_eq!(q("status", &["completed"]).len(), 2);
        assert_eq!(q("progress", &["100%"]).len(), 2);
        let e = describe(&h, OWNER, f("state", &["pending"])).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::InvalidParameterValue,
                "The filter 'state' is invalid"
            )
        );
    }

    #[test]
    fn describe_snapshots_pagination_and_request_checks() {
        let mut h = Harness::new();
        h.config.snapshot_spacing_ms = 0;
        h.config.snapshot_base_ms = 1;
        volume(&mut h, VOL, OWNER, 8, "gp2");
        let mut ids = Vec::new();
        for _ in 0..11 {
            ids.push(create(&mut h, OWNER, VOL));
            h.advance(100_000);
        }
        ids.sort();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = DescribeSnapshotsRequest {
                max_results: Some(5),
                next_token: token.clone(),
                ..Default::default()
            };
            let page = describe(&h, OWNER, r).unwrap();
            seen.extend(page.snapshots.into_iter().map(|s| s.snapshot_id));
            pages += 1;
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!((pages, seen), (3, ids.clone()));
        let r = DescribeSnapshotsRequest {
            snapshot_ids: vec![ids[0].clone()],
            max_results: Some(5),
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidParameterCombination
        );
        let r = DescribeSnapshotsRequest {
            max_results: Some(2),
            ..Default::default()
        };
        assert_eq!(
            code(describe(&h, OWNER, r)),
            ErrorCode::InvalidParameterValue
        );
        let r = DescribeSnapshotsRequest {
            next_token: "zz".into(),
            ..Default::default()
        };
        assert_eq!(code(describe(&h, OWNER, r)), ErrorCode::InvalidNextToken);
        let r = DescribeSnapshotsRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(code(describe(&h, OWNER, r)), ErrorCode::DryRunOperation);
        h.assert_replay_equals_live();
    }
}
