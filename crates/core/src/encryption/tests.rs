//! Given / when / then for EBS encryption: the settings, new volumes (CreateVolume,
//! RunInstances), and every row of the copy outcome table of EC2_SEMANTICS.md §4.2, in one
//! region (one harness) and across regions (two harnesses, the saga's reads moved by hand as
//! `crate::copy`'s tests do), with keys that are missing, elsewhere, disabled, pending deletion
//! or not shared, before and during a copy.

use super::*;
use crate::copy::{CopyTask, INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE, KEY_NOT_ACCESSIBLE};
use crate::testkit::{code, kms_key, Harness, OTHER, OWNER, REGION, T0};
use crate::{Answer, Command, Query};

const DST: &str = "eu-west-1";
const SNAP: &str = "snap-0123456789abcdef0";
const SNAP2: &str = "snap-0123456789abcdef1";
const AMI: &str = "ami-0123456789abcdef0";
/// Keys: of OWNER in us-east-1, of OWNER in eu-west-1, of OTHER in either.
const K1: &str = "11111111-1111-4111-8111-111111111111";
const K2: &str = "22222222-2222-4222-8222-222222222222";
const K3: &str = "33333333-3333-4333-8333-333333333333";
const DEK: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";
const SYSTEM: &str = crate::ids::SYSTEM_ACCOUNT;
const GIB: i64 = 1024 * 1024 * 1024;

// -------------------------------------------------------------------------------------------
// Givens
// -------------------------------------------------------------------------------------------

/// Given: an enabled key `id` of `owner` in the harness's region (usable also by `policy`).
fn key(h: &mut Harness, owner: &str, id: &str, policy: &[&str]) -> String {
    let (created, arn) = kms_key(h.region, owner, id, policy);
    h.given([created]);
    arn
}

fn alias(h: &mut Harness, owner: &str, name: &str, key_id: &str) {
    h.given([Payload::KmsAliasCreated(pb::KmsAliasCreated {
        owner_id: owner.into(),
        alias_name: name.into(),
        target_key_id: key_id.into(),
        creation_date_ms: T0,
    })]);
}

/// Given: a completed 8 GiB snapshot `id` of `owner`, encrypted under `key` (an ARN) if any.
fn snapshot(h: &mut Harness, owner: &str, id: &str, key: Option<&str>) {
    let now = h.now_ms;
    h.given([
        Payload::SnapshotCreated(pb::SnapshotCreated {
            snapshot_id: id.into(),
            owner_id: owner.into(),
            volume_id: "vol-0123456789abcdef0".into(),
            volume_size: 8,
            encrypted: key.is_some(),
            kms_key_id: key.unwrap_or_default().into(),
            data_encryption_key_id: if key.is_some() {
                DEK.into()
            } else {
                String::new()
            },
            start_time_ms: now - 100_000,
            complete_at_ms: now - 1,
            full_snapshot_size_in_bytes: 8 * GIB,
            transferred_bytes: 8 * GIB,
            ..Default::default()
        }),
        Payload::SnapshotCompleted(pb::SnapshotCompleted {
            snapshot_id: id.into(),
        }),
    ]);
}

/// Given: `snapshot` shared with `account` (create-volume permission).
fn share(h: &mut Harness, snapshot: &str, account: &str) {
    h.given([Payload::CreateVolumePermissionChanged(
        pb::CreateVolumePermissionChanged {
            snapshot_id: snapshot.into(),
            added: vec![pb::CreateVolumePermissionRecord {
                user_id: account.into(),
                group: String::new(),
            }],
            removed: vec![],
        },
    )]);
}

/// Given: an available EBS AMI of `owner` on SNAP (root) and SNAP2 (data), snapshots already
/// there.
fn image(h: &mut Harness, owner: &str) {
    let now = h.now_ms;
    let ebs = |dev: &str, snap: &str| pb::MappingRecord {
        device_name: dev.into(),
        ebs: true,
        snapshot_id: snap.into(),
        volume_size: 8,
        volume_type: "gp3".into(),
        iops: 3000,
        throughput: 125,
        delete_on_termination: true,
        ..Default::default()
    };
    h.given([
        Payload::ImageRegistered(pb::ImageRegistered {
            image_id: AMI.into(),
            owner_id: owner.into(),
            name: "source".into(),
            architecture: "x86_64".into(),
            image_type: "machine".into(),
            root_device_type: "ebs".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![ebs("/dev/xvda", SNAP), ebs("/dev/sdf", SNAP2)],
            virtualization_type: "hvm".into(),
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

fn ebd(h: &mut Harness, account: &str, on: bool) {
    let cmd = if on {
        Command::EnableEbsEncryptionByDefault(Default::default())
    } else {
        Command::DisableEbsEncryptionByDefault(Default::default())
    };
    h.when(account, cmd).expect("EBD toggled");
}

fn set_default_key(h: &mut Harness, account: &str, reference: &str) -> String {
    let d = h
        .when(
            account,
            Command::ModifyEbsDefaultKmsKeyId(pb::ModifyEbsDefaultKmsKeyIdRequest {
                kms_key_id: reference.into(),
                dry_run: false,
            }),
        )
        .expect("ModifyEbsDefaultKmsKeyId");
    match d.reply {
        Reply::ModifyEbsDefaultKmsKeyId(r) => r.kms_key_id,
        other => panic!("{other:?}"),
    }
}

fn disable(h: &mut Harness, owner: &str, key_id: &str) -> Vec<Payload> {
    h.when(
        owner,
        Command::DisableKey(pb::DisableKeyRequest {
            key_id: key_id.into(),
        }),
    )
    .expect("DisableKey")
    .events
}

fn schedule_deletion(h: &mut Harness, owner: &str, key_id: &str) -> Vec<Payload> {
    h.when(
        owner,
        Command::ScheduleKeyDeletion(pb::ScheduleKeyDeletionRequest {
            key_id: key_id.into(),
            pending_window_in_days: Some(7),
        }),
    )
    .expect("ScheduleKeyDeletion")
    .events
}

// -------------------------------------------------------------------------------------------
// Copies, driven as the coordinator would
// -------------------------------------------------------------------------------------------

/// What a copy led to: the started event's encryption, or the failure.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Started: (encrypted, key ARN, data key, transferred bytes) of each new snapshot.
    Started(Vec<(bool, String, String, i64)>),
    /// The snapshot copy failed with this StateMessage.
    SnapshotFailed(String),
    /// The image copy failed with this StateReason.
    ImageFailed(String, String),
}

fn task(h: &Harness, copy_id: &str) -> CopyTask {
    h.state.copies.get(copy_id).cloned().expect("a copy task")
}

/// Runs ReadCopySource in `src` and StartCopy in `dst` (the same harness for a same-region
/// copy: pass `None`).
fn run_saga(src: Option<&mut Harness>, dst: &mut Harness, copy_id: &str) -> Outcome {
    let t = task(dst, copy_id);
    let dest_region = dst.region;
    let read = |h: &mut Harness| {
        let d = h
            .when(SYSTEM, Command::Saga(t.read_step(dest_region, vec![])))
            .expect("ReadCopySource");
        match d.reply {
            Reply::Saga(r) => r.source.clone().expect("a read"),
            other => panic!("{other:?}"),
        }
    };
    let source = match src {
        Some(s) => read(s),
        None => read(dst),
    };
    let d = dst
        .when(SYSTEM, Command::Saga(t.start_step(source, None, vec![])))
        .expect("StartCopy");
    let mut started = Vec::new();
    for e in &d.events {
        match e {
            Payload::SnapshotCopyStarted(s) => started.push((
                s.encrypted,
                s.kms_key_id.clone(),
                s.data_encryption_key_id.clone(),
                s.transferred_bytes,
            )),
            Payload::SnapshotCreated(s) => started.push((
                s.encrypted,
                s.kms_key_id.clone(),
                s.data_encryption_key_id.clone(),
                s.transferred_bytes,
            )),
            Payload::SnapshotFailed(f) => return Outcome::SnapshotFailed(f.state_message.clone()),
            Payload::ImageFailed(f) => {
                return Outcome::ImageFailed(
                    f.state_reason_code.clone(),
                    f.state_reason_message.clone(),
                )
            }
            _ => {}
        }
    }
    Outcome::Started(started)
}

/// CopySnapshot of SNAP from `source_region` into `h` as `account`: the copy id.
fn copy_snapshot(
    h: &mut Harness,
    account: &str,
    source_region: &str,
    encrypted: Option<bool>,
    kms_key_id: &str,
) -> String {
    let d = h
        .when(
            account,
            Command::CopySnapshot(pb::CopySnapshotRequest {
                source_snapshot_id: SNAP.into(),
                source_region: source_region.into(),
                encrypted,
                kms_key_id: kms_key_id.into(),
                ..Default::default()
            }),
        )
        .expect("CopySnapshot accepted");
    d.correlation_id.expect("a copy id")
}

/// CopyImage of AMI from `source_region` into `h` as `account`: the copy id.
fn copy_image(
    h: &mut Harness,
    account: &str,
    source_region: &str,
    encrypted: Option<bool>,
    kms_key_id: &str,
) -> String {
    let d = h
        .when(
            account,
            Command::CopyImage(pb::CopyImageRequest {
                source_image_id: AMI.into(),
                source_region: source_region.into(),
                name: format!("copy {}", h.log.len()),
                encrypted,
                kms_key_id: kms_key_id.into(),
                ..Default::default()
            }),
        )
        .expect("CopyImage accepted");
    d.correlation_id.expect("a copy id")
}

/// A same-region snapshot copy of SNAP as `account`, run to its start.
fn local_snapshot_copy(
    h: &mut Harness,
    account: &str,
    encrypted: Option<bool>,
    kms_key_id: &str,
) -> Outcome {
    let id = copy_snapshot(h, account, REGION, encrypted, kms_key_id);
    let out = run_saga(None, h, &id);
    h.assert_replay_equals_live();
    out
}

/// A snapshot copy of SNAP from `src` (us-east-1) into `dst` (eu-west-1), run to its start.
fn remote_snapshot_copy(
    src: &mut Harness,
    dst: &mut Harness,
    account: &str,
    encrypted: Option<bool>,
    kms_key_id: &str,
) -> Outcome {
    let id = copy_snapshot(dst, account, REGION, encrypted, kms_key_id);
    let out = run_saga(Some(src), dst, &id);
    src.assert_replay_equals_live();
    dst.assert_replay_equals_live();
    out
}

fn one(out: &Outcome) -> (bool, String, String, i64) {
    match out {
        Outcome::Started(v) if v.len() == 1 => v[0].clone(),
        other => panic!("expected one started snapshot, got {other:?}"),
    }
}

fn managed(region: &str, account: &str) -> String {
    crate::kms::aws_managed_key_arn(region, account)
}

fn inaccessible() -> Outcome {
    Outcome::SnapshotFailed(KEY_NOT_ACCESSIBLE.into())
}

fn internal_error() -> Outcome {
    Outcome::ImageFailed(INTERNAL_ERROR_CODE.into(), INTERNAL_ERROR_MESSAGE.into())
}

// -------------------------------------------------------------------------------------------
// The settings
// -------------------------------------------------------------------------------------------

fn get_ebd(h: &Harness, account: &str) -> bool {
    match h.read(
        account,
        Query::GetEbsEncryptionByDefault(Default::default()),
    ) {
        Ok(Answer::GetEbsEncryptionByDefault(r)) => r.ebs_encryption_by_default,
        other => panic!("{other:?}"),
    }
}

fn get_default_key(h: &Harness, account: &str) -> String {
    match h.read(account, Query::GetEbsDefaultKmsKeyId(Default::default())) {
        Ok(Answer::GetEbsDefaultKmsKeyId(r)) => r.kms_key_id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn encryption_by_default_is_per_account_and_only_logged_when_it_changes() {
    let mut h = Harness::new();
    assert!(!get_ebd(&h, OWNER));
    let d = h
        .when(
            OWNER,
            Command::EnableEbsEncryptionByDefault(Default::default()),
        )
        .unwrap();
    assert_eq!(
        d.events,
        vec![Payload::EbsEncryptionByDefaultChanged(
            pb::EbsEncryptionByDefaultChanged {
                account_id: OWNER.into(),
                enabled: true
            }
        )]
    );
    assert_eq!(
        d.reply,
        Reply::EnableEbsEncryptionByDefault(pb::EnableEbsEncryptionByDefaultResponse {
            ebs_encryption_by_default: true
        })
    );
    assert!(get_ebd(&h, OWNER));
    assert!(!get_ebd(&h, OTHER));
    // Enabling again changes nothing.
    let d = h
        .when(
            OWNER,
            Command::EnableEbsEncryptionByDefault(Default::default()),
        )
        .unwrap();
    assert!(d.events.is_empty());
    // DryRun.
    let dry = pb::DisableEbsEncryptionByDefaultRequest { dry_run: true };
    assert_eq!(
        code(h.try_decide(OWNER, Command::DisableEbsEncryptionByDefault(dry))),
        ErrorCode::DryRunOperation
    );
    assert_eq!(
        code(h.read(
            OWNER,
            Query::GetEbsEncryptionByDefault(pb::GetEbsEncryptionByDefaultRequest {
                dry_run: true
            })
        )),
        ErrorCode::DryRunOperation
    );
    let d = h
        .when(
            OWNER,
            Command::DisableEbsEncryptionByDefault(Default::default()),
        )
        .unwrap();
    assert_eq!(d.events.len(), 1);
    assert!(!get_ebd(&h, OWNER));
    h.assert_replay_equals_live();
}

#[test]
fn the_default_key_is_the_aws_managed_key_until_modified_and_is_checked_when_used() {
    let mut h = Harness::new();
    // [unconfirmed] format: the AWS managed key's alias ARN.
    assert_eq!(
        get_default_key(&h, OWNER),
        "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs"
    );
    let arn = key(&mut h, OWNER, K1, &[]);
    alias(&mut h, OWNER, "alias/ebs-default", K1);
    // An alias of an existing key is stored as the key's ARN.
    assert_eq!(set_default_key(&mut h, OWNER, "alias/ebs-default"), arn);
    assert_eq!(get_default_key(&h, OWNER), arn);
    assert_eq!(
        get_default_key(&h, OTHER),
        "arn:aws:kms:us-east-1:444455556666:alias/aws/ebs"
    );
    // The same key again: nothing logged.
    let d = h
        .when(
            OWNER,
            Command::ModifyEbsDefaultKmsKeyId(pb::ModifyEbsDefaultKmsKeyIdRequest {
                kms_key_id: K1.into(),
                dry_run: false,
            }),
        )
        .unwrap();
    assert!(d.events.is_empty());
    // A key that does not exist is accepted (checked asynchronously), in ARN form ...
    assert_eq!(
        set_default_key(&mut h, OWNER, "alias/not-yet"),
        "arn:aws:kms:us-east-1:111122223333:alias/not-yet"
    );
    // ... and makes encryption fail when it is used.
    let r = pb::CreateVolumeRequest {
        availability_zone: "us-east-1a".into(),
        size: Some(8),
        encrypted: Some(true),
        ..Default::default()
    };
    assert_eq!(
        code(h.try_decide(OWNER, Command::CreateVolume(r.clone()))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    // Once the alias exists, the same setting works.
    alias(&mut h, OWNER, "alias/not-yet", K1);
    let d = h.when(OWNER, Command::CreateVolume(r.clone())).unwrap();
    let Reply::CreateVolume(v) = d.reply else {
        panic!("{:?}", d.reply)
    };
    assert_eq!(v.kms_key_id, arn);
    // Syntax and DryRun.
    let modify = |k: &str, dry_run: bool| {
        Command::ModifyEbsDefaultKmsKeyId(pb::ModifyEbsDefaultKmsKeyIdRequest {
            kms_key_id: k.into(),
            dry_run,
        })
    };
    assert_eq!(
        code(h.try_decide(OWNER, modify("", false))),
        ErrorCode::MissingParameter
    );
    assert_eq!(
        code(h.try_decide(OWNER, modify("arn:aws:s3:::bucket", false))),
        ErrorCode::InvalidParameterValue
    );
    assert_eq!(
        code(h.try_decide(OWNER, modify(K1, true))),
        ErrorCode::DryRunOperation
    );
    // Reset: back to the AWS managed key.
    let d = h
        .when(OWNER, Command::ResetEbsDefaultKmsKeyId(Default::default()))
        .unwrap();
    assert_eq!(d.events.len(), 1);
    assert_eq!(
        d.reply,
        Reply::ResetEbsDefaultKmsKeyId(pb::ResetEbsDefaultKmsKeyIdResponse {
            kms_key_id: "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs".into()
        })
    );
    let d = h.when(OWNER, Command::CreateVolume(r)).unwrap();
    let Reply::CreateVolume(v) = d.reply else {
        panic!("{:?}", d.reply)
    };
    assert_eq!(v.kms_key_id, managed(REGION, OWNER));
    let d = h
        .when(OWNER, Command::ResetEbsDefaultKmsKeyId(Default::default()))
        .unwrap();
    assert!(d.events.is_empty());
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// New volumes
// -------------------------------------------------------------------------------------------

fn create_volume(h: &mut Harness, account: &str, r: pb::CreateVolumeRequest) -> pb::Volume {
    let d = h
        .when(account, Command::CreateVolume(r))
        .expect("CreateVolume");
    match d.reply {
        Reply::CreateVolume(v) => v,
        other => panic!("{other:?}"),
    }
}

fn empty_volume() -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        availability_zone: "us-east-1a".into(),
        size: Some(8),
        ..Default::default()
    }
}

fn from_snapshot(id: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        availability_zone: "us-east-1a".into(),
        snapshot_id: id.into(),
        ..Default::default()
    }
}

#[test]
fn with_encryption_by_default_every_new_volume_is_encrypted_and_toggling_changes_nothing_old() {
    let mut h = Harness::new();
    let before = create_volume(&mut h, OWNER, empty_volume());
    assert!(!before.encrypted);
    ebd(&mut h, OWNER, true);
    // Not asked, or even refused: encrypted under the default key.
    let v = create_volume(&mut h, OWNER, empty_volume());
    assert!(v.encrypted);
    assert_eq!(v.kms_key_id, managed(REGION, OWNER));
    let v = create_volume(
        &mut h,
        OWNER,
        pb::CreateVolumeRequest {
            encrypted: Some(false),
            ..empty_volume()
        },
    );
    assert!(v.encrypted);
    // From an unencrypted snapshot too, with a data key of its own.
    snapshot(&mut h, OWNER, SNAP, None);
    let id = create_volume(&mut h, OWNER, from_snapshot(SNAP)).volume_id;
    let vol = &h.state.volumes[&id];
    assert!(vol.encrypted);
    assert_eq!(vol.data_encryption_key_id.len(), 36);
    // Another account is not affected.
    assert!(!create_volume(&mut h, OTHER, empty_volume()).encrypted);
    // Under a customer managed default key.
    let cmk = key(&mut h, OWNER, K1, &[]);
    set_default_key(&mut h, OWNER, K1);
    assert_eq!(create_volume(&mut h, OWNER, empty_volume()).kms_key_id, cmk);
    // Toggling never changes existing resources.
    ebd(&mut h, OWNER, false);
    assert!(!h.state.volumes[&before.volume_id].encrypted);
    assert!(h.state.volumes[&id].encrypted);
    assert!(!create_volume(&mut h, OWNER, empty_volume()).encrypted);
    h.assert_replay_equals_live();
}

#[test]
fn create_volume_refuses_a_key_it_cannot_use_at_once() {
    let mut h = Harness::new();
    key(&mut h, OWNER, K1, &[]);
    key(&mut h, OTHER, K2, &[]);
    key(&mut h, OTHER, K3, &[OWNER]);
    let with_key = |k: &str| {
        Command::CreateVolume(pb::CreateVolumeRequest {
            encrypted: Some(true),
            kms_key_id: k.into(),
            ..empty_volume()
        })
    };
    let other_region = crate::kms::key_arn(DST, OWNER, K1);
    let others = crate::kms::key_arn(REGION, OTHER, K2);
    let shared = crate::kms::key_arn(REGION, OTHER, K3);
    for bad in [
        "44444444-4444-4444-8444-444444444444",
        "alias/none",
        other_region.as_str(),
        others.as_str(),
        // Another account's key by bare id is looked up among the caller's.
        K3,
    ] {
        let e = h.try_decide(OWNER, with_key(bad)).unwrap_err();
        assert_eq!(e.code, ErrorCode::CustomerKeyHasBeenRevoked, "{bad}");
    }
    // Another account's key whose policy admits the caller works, by ARN.
    let v = create_volume(
        &mut h,
        OWNER,
        pb::CreateVolumeRequest {
            encrypted: Some(true),
            kms_key_id: shared.clone(),
            ..empty_volume()
        },
    );
    assert_eq!(v.kms_key_id, shared);
    // Disabled, then pending deletion.
    disable(&mut h, OWNER, K1);
    assert_eq!(
        code(h.try_decide(OWNER, with_key(K1))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    h.when(
        OWNER,
        Command::EnableKey(pb::EnableKeyRequest { key_id: K1.into() }),
    )
    .unwrap();
    create_volume(
        &mut h,
        OWNER,
        pb::CreateVolumeRequest {
            encrypted: Some(true),
            kms_key_id: K1.into(),
            ..empty_volume()
        },
    );
    schedule_deletion(&mut h, OWNER, K1);
    assert_eq!(
        code(h.try_decide(OWNER, with_key(K1))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    // A disabled default key fails encryption by default too.
    set_default_key(&mut h, OWNER, K1);
    ebd(&mut h, OWNER, true);
    assert_eq!(
        code(h.try_decide(OWNER, Command::CreateVolume(empty_volume()))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    h.assert_replay_equals_live();
}

#[test]
fn volumes_of_encrypted_snapshots_are_encrypted_own_keep_the_key_shared_get_the_default() {
    let mut h = Harness::new();
    let k1 = key(&mut h, OWNER, K1, &[OTHER]);
    snapshot(&mut h, OWNER, SNAP, Some(&k1));
    share(&mut h, SNAP, OTHER);
    // The owner: the snapshot's key and data key (one lineage).
    let id = create_volume(&mut h, OWNER, from_snapshot(SNAP)).volume_id;
    let v = h.state.volumes[&id].clone();
    assert_eq!(
        (
            v.encrypted,
            v.kms_key_id.as_str(),
            v.data_encryption_key_id.as_str()
        ),
        (true, k1.as_str(), DEK)
    );
    // Re-keyed by the owner: a new data key.
    let k2 = key(&mut h, OWNER, K2, &[]);
    let id = create_volume(
        &mut h,
        OWNER,
        pb::CreateVolumeRequest {
            encrypted: Some(true),
            kms_key_id: K2.into(),
            ..from_snapshot(SNAP)
        },
    )
    .volume_id;
    let v = h.state.volumes[&id].clone();
    assert_eq!(v.kms_key_id, k2);
    assert_ne!(v.data_encryption_key_id, DEK);
    // The grantee (admitted by the key policy): its own default key, a new data key.
    let id = create_volume(&mut h, OTHER, from_snapshot(SNAP)).volume_id;
    let v = h.state.volumes[&id].clone();
    assert!(v.encrypted);
    assert_eq!(v.kms_key_id, managed(REGION, OTHER));
    assert_ne!(v.data_encryption_key_id, DEK);
    // Not admitted by the key policy: the snapshot cannot be decrypted.
    h.when(
        OWNER,
        Command::PutKeyPolicy(pb::PutKeyPolicyRequest {
            key_id: K1.into(),
            policy: Some(pb::KeyPolicy::default()),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(
        code(h.try_decide(OTHER, Command::CreateVolume(from_snapshot(SNAP)))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    // Under the owner's AWS managed key: never usable by another account.
    snapshot(&mut h, OWNER, SNAP2, Some(&managed(REGION, OWNER)));
    share(&mut h, SNAP2, OTHER);
    assert_eq!(
        code(h.try_decide(OTHER, Command::CreateVolume(from_snapshot(SNAP2)))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    h.assert_replay_equals_live();
}

fn launch(h: &mut Harness, account: &str, r: pb::RunInstancesRequest) -> pb::Reservation {
    let d = h
        .when(account, Command::RunInstances(r))
        .expect("RunInstances");
    match d.reply {
        Reply::RunInstances(x) => x,
        other => panic!("{other:?}"),
    }
}

fn run(mappings: Vec<pb::BlockDeviceMapping>) -> pb::RunInstancesRequest {
    pb::RunInstancesRequest {
        image_id: AMI.into(),
        instance_type: "t3.micro".into(),
        min_count: 1,
        max_count: 1,
        block_device_mappings: mappings,
        ..Default::default()
    }
}

fn root_with(encrypted: Option<bool>, kms_key_id: &str) -> Vec<pb::BlockDeviceMapping> {
    vec![pb::BlockDeviceMapping {
        device_name: "/dev/xvda".into(),
        ebs: Some(pb::EbsBlockDevice {
            encrypted,
            kms_key_id: kms_key_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

fn instance(h: &Harness, id: &str) -> pb::Instance {
    match h.read(
        OWNER,
        Query::DescribeInstances(pb::DescribeInstancesRequest {
            instance_ids: vec![id.into()],
            ..Default::default()
        }),
    ) {
        Ok(Answer::DescribeInstances(r)) => r.reservations[0].instances[0].clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_instances_encrypts_by_default_and_a_bad_key_terminates_the_instance_later() {
    let mut h = Harness::new();
    snapshot(&mut h, OWNER, SNAP, None);
    snapshot(&mut h, OWNER, SNAP2, None);
    image(&mut h, OWNER);
    // EBD on: every volume of the launch is encrypted under the default key.
    ebd(&mut h, OWNER, true);
    let res = launch(&mut h, OWNER, run(vec![]));
    let iid = res.instances[0].instance_id.clone();
    let vols: Vec<_> = h.state.instances[&iid]
        .volumes
        .values()
        .map(|v| h.state.volumes[v].clone())
        .collect();
    assert_eq!(vols.len(), 2);
    for v in &vols {
        assert!(v.encrypted);
        assert_eq!(v.kms_key_id, managed(REGION, OWNER));
    }
    // Each volume has its own data key.
    assert_ne!(
        vols[0].data_encryption_key_id,
        vols[1].data_encryption_key_id
    );
    ebd(&mut h, OWNER, false);
    // A key that does not exist: the call succeeds, the instance is pending with the KMS
    // reason, and terminates instead of running; no volume is created.
    let volumes_before = h.state.volumes.len();
    let res = launch(&mut h, OWNER, run(root_with(Some(true), "alias/none")));
    let iid = res.instances[0].instance_id.clone();
    assert_eq!(res.instances[0].state.as_ref().unwrap().name, "pending");
    assert_eq!(h.state.volumes.len(), volumes_before);
    h.advance(10_000);
    let i = instance(&h, &iid);
    assert_eq!(i.state.as_ref().unwrap().name, "terminated");
    let reason = i.state_reason.expect("a state reason");
    assert_eq!(reason.code, "Client.InvalidKMSKey.InvalidState");
    assert_eq!(
        reason.message,
        "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"
    );
    // A disabled key: the same.
    key(&mut h, OWNER, K1, &[]);
    disable(&mut h, OWNER, K1);
    let res = launch(&mut h, OWNER, run(root_with(Some(true), K1)));
    h.advance(10_000);
    assert_eq!(
        instance(&h, &res.instances[0].instance_id)
            .state
            .unwrap()
            .name,
        "terminated"
    );
    // A usable key: running, the root volume under it.
    let k2 = key(&mut h, OWNER, K2, &[]);
    let res = launch(&mut h, OWNER, run(root_with(Some(true), K2)));
    h.advance(10_000);
    let iid = res.instances[0].instance_id.clone();
    assert_eq!(instance(&h, &iid).state.unwrap().name, "running");
    let root = &h.state.volumes[&h.state.instances[&iid].volumes["/dev/xvda"]];
    assert_eq!(root.kms_key_id, k2);
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// The copy outcome table, same region
// -------------------------------------------------------------------------------------------

#[test]
fn same_region_copy_table_unencrypted_sources() {
    // Row 1: unencrypted, nothing asked, EBD off → unencrypted, metadata only.
    let mut h = Harness::new();
    snapshot(&mut h, OWNER, SNAP, None);
    let (enc, k, dek, moved) = one(&local_snapshot_copy(&mut h, OWNER, None, ""));
    assert!(!enc && k.is_empty() && dek.is_empty());
    assert_eq!(moved, 0);
    // Row 2: EBD on → the default key, a new data key, a full copy.
    ebd(&mut h, OWNER, true);
    let (enc, k, dek, moved) = one(&local_snapshot_copy(&mut h, OWNER, None, ""));
    assert!(enc);
    assert_eq!(k, managed(REGION, OWNER));
    assert_eq!(dek.len(), 36);
    assert_eq!(moved, 8 * GIB);
    // [sim] `Encrypted=false` cannot opt out of EBD.
    let (enc, ..) = one(&local_snapshot_copy(&mut h, OWNER, Some(false), ""));
    assert!(enc);
    // ... and the default key may be a customer managed key.
    let cmk = key(&mut h, OWNER, K1, &[]);
    set_default_key(&mut h, OWNER, K1);
    assert_eq!(one(&local_snapshot_copy(&mut h, OWNER, None, "")).1, cmk);
    // Row 3: EBD off, Encrypted=true → the default key.
    ebd(&mut h, OWNER, false);
    assert_eq!(
        one(&local_snapshot_copy(&mut h, OWNER, Some(true), "")).1,
        cmk
    );
    h.when(OWNER, Command::ResetEbsDefaultKmsKeyId(Default::default()))
        .unwrap();
    assert_eq!(
        one(&local_snapshot_copy(&mut h, OWNER, Some(true), "")).1,
        managed(REGION, OWNER)
    );
    // Row 4: Encrypted=true with K (here by alias) → K, resolved to its key ARN.
    alias(&mut h, OWNER, "alias/mine", K1);
    let (enc, k, _, moved) = one(&local_snapshot_copy(
        &mut h,
        OWNER,
        Some(true),
        "alias/mine",
    ));
    assert!(enc);
    assert_eq!(k, cmk);
    assert_eq!(moved, 8 * GIB);
}

#[test]
fn same_region_copy_table_encrypted_sources() {
    let mut h = Harness::new();
    let k1 = key(&mut h, OWNER, K1, &[OTHER]);
    let k2 = key(&mut h, OWNER, K2, &[]);
    snapshot(&mut h, OWNER, SNAP, Some(&k1));
    // Row 5: own, same region, no key → the source's key and data key; no data moved, even
    // with Encrypted=true or EBD on.
    for enc in [None, Some(true)] {
        let (e, k, dek, moved) = one(&local_snapshot_copy(&mut h, OWNER, enc, ""));
        assert!(e);
        assert_eq!((k.as_str(), dek.as_str(), moved), (k1.as_str(), DEK, 0));
    }
    ebd(&mut h, OWNER, true);
    assert_eq!(one(&local_snapshot_copy(&mut h, OWNER, None, "")).1, k1);
    // Row 4: any source with K → K, a new data key, a full copy.
    let (_, k, dek, moved) = one(&local_snapshot_copy(&mut h, OWNER, Some(true), K2));
    assert_eq!(k, k2);
    assert_ne!(dek, DEK);
    assert_eq!(moved, 8 * GIB);
    // Row 7: shared with OTHER (whose use the key policy admits) → OTHER's default key.
    share(&mut h, SNAP, OTHER);
    let (e, k, dek, moved) = one(&local_snapshot_copy(&mut h, OTHER, None, ""));
    assert!(e);
    assert_eq!(k, managed(REGION, OTHER));
    assert_ne!(dek, DEK);
    assert_eq!(moved, 8 * GIB);
    // Row 8: Encrypted=false → InvalidRequest, at once in the same region.
    let e = h
        .try_decide(
            OWNER,
            Command::CopySnapshot(pb::CopySnapshotRequest {
                source_snapshot_id: SNAP.into(),
                source_region: REGION.into(),
                encrypted: Some(false),
                ..Default::default()
            }),
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

#[test]
fn copy_image_keeps_each_snapshots_key_or_puts_all_under_k() {
    let mut h = Harness::new();
    let k1 = key(&mut h, OWNER, K1, &[]);
    let k2 = key(&mut h, OWNER, K2, &[]);
    // An AMI mixing keys: the root under K1, the data volume unencrypted.
    snapshot(&mut h, OWNER, SNAP, Some(&k1));
    snapshot(&mut h, OWNER, SNAP2, None);
    image(&mut h, OWNER);
    let id = copy_image(&mut h, OWNER, REGION, None, "");
    let Outcome::Started(snaps) = run_saga(None, &mut h, &id) else {
        panic!("not started")
    };
    let keys: Vec<(bool, String)> = snaps.iter().map(|s| (s.0, s.1.clone())).collect();
    assert_eq!(keys, vec![(true, k1.clone()), (false, String::new())]);
    // With K: every snapshot under K.
    let id = copy_image(&mut h, OWNER, REGION, Some(true), K2);
    let Outcome::Started(snaps) = run_saga(None, &mut h, &id) else {
        panic!("not started")
    };
    assert!(snaps.iter().all(|s| s.0 && s.1 == k2));
    // The mappings of the new image point at snapshots under K.
    let img = h.state.images.values().find(|i| {
        i.registered.origin == "copy"
            && i.registered.block_device_mappings.len() == 2
            && i.registered
                .block_device_mappings
                .iter()
                .all(|m| m.kms_key_id == k2)
    });
    assert!(img.is_some());
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// The copy outcome table, across regions
// -------------------------------------------------------------------------------------------

fn two_regions() -> (Harness, Harness) {
    (Harness::new(), Harness::in_region(DST, 7))
}

#[test]
fn cross_region_copy_table() {
    // Row 1: unencrypted, nothing asked, EBD off → unencrypted (a full transfer).
    let (mut src, mut dst) = two_regions();
    snapshot(&mut src, OWNER, SNAP, None);
    let (enc, k, _, moved) = one(&remote_snapshot_copy(&mut src, &mut dst, OWNER, None, ""));
    assert!(!enc && k.is_empty());
    assert_eq!(moved, 8 * GIB);
    // Row 2: EBD on in the destination → the destination's default key (EBD of the source
    // region does not matter).
    ebd(&mut src, OWNER, true);
    assert!(!one(&remote_snapshot_copy(&mut src, &mut dst, OWNER, None, "")).0);
    ebd(&mut dst, OWNER, true);
    assert_eq!(
        one(&remote_snapshot_copy(&mut src, &mut dst, OWNER, None, "")).1,
        managed(DST, OWNER)
    );
    ebd(&mut dst, OWNER, false);
    // Row 3: Encrypted=true → the destination's default key, a customer managed one if set.
    let k2 = key(&mut dst, OWNER, K2, &[]);
    set_default_key(&mut dst, OWNER, K2);
    assert_eq!(
        one(&remote_snapshot_copy(
            &mut src,
            &mut dst,
            OWNER,
            Some(true),
            ""
        ))
        .1,
        k2
    );
    // Row 4: K of the destination → K.
    let k3 = key(&mut dst, OWNER, K3, &[]);
    assert_eq!(
        one(&remote_snapshot_copy(
            &mut src,
            &mut dst,
            OWNER,
            Some(true),
            K3
        ))
        .1,
        k3
    );

    // Row 6: own encrypted source, no key → the destination's default key [unconfirmed], a
    // new data key.
    let (mut src, mut dst) = two_regions();
    let k1 = key(&mut src, OWNER, K1, &[OTHER]);
    snapshot(&mut src, OWNER, SNAP, Some(&k1));
    let (enc, k, dek, _) = one(&remote_snapshot_copy(&mut src, &mut dst, OWNER, None, ""));
    assert!(enc);
    assert_eq!(k, managed(DST, OWNER));
    assert_ne!(dek, DEK);
    // Row 4 with an encrypted source: K.
    let k2 = key(&mut dst, OWNER, K2, &[]);
    assert_eq!(
        one(&remote_snapshot_copy(
            &mut src,
            &mut dst,
            OWNER,
            Some(true),
            &k2
        ))
        .1,
        k2
    );
    // Row 7: shared with OTHER (key policy admits it) → OTHER's destination default key.
    share(&mut src, SNAP, OTHER);
    assert_eq!(
        one(&remote_snapshot_copy(&mut src, &mut dst, OTHER, None, "")).1,
        managed(DST, OTHER)
    );
    // Row 8: Encrypted=false on an encrypted source: accepted, fails when read.
    assert_eq!(
        remote_snapshot_copy(&mut src, &mut dst, OWNER, Some(false), ""),
        Outcome::SnapshotFailed(format!(
            "Snapshot {SNAP} is encrypted. Creating unencrypted copy from an encrypted snapshot is not supported."
        ))
    );
}

#[test]
fn cross_region_image_copy_goes_under_destination_keys() {
    let (mut src, mut dst) = two_regions();
    let k1 = key(&mut src, OWNER, K1, &[]);
    snapshot(&mut src, OWNER, SNAP, Some(&k1));
    snapshot(&mut src, OWNER, SNAP2, None);
    image(&mut src, OWNER);
    // No parameters: the encrypted snapshot under the destination default key, the other
    // stays unencrypted.
    let id = copy_image(&mut dst, OWNER, REGION, None, "");
    let Outcome::Started(snaps) = run_saga(Some(&mut src), &mut dst, &id) else {
        panic!("not started")
    };
    let keys: Vec<(bool, String)> = snaps.iter().map(|s| (s.0, s.1.clone())).collect();
    assert_eq!(
        keys,
        vec![(true, managed(DST, OWNER)), (false, String::new())]
    );
    // A key of the source region named for the copy: the image fails.
    let id = copy_image(&mut dst, OWNER, REGION, Some(true), &k1);
    assert_eq!(run_saga(Some(&mut src), &mut dst, &id), internal_error());
    src.assert_replay_equals_live();
    dst.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// Keys that cannot be used: before the copy
// -------------------------------------------------------------------------------------------

#[test]
fn a_bad_key_is_accepted_and_fails_the_copy_later() {
    let mut h = Harness::new();
    snapshot(&mut h, OWNER, SNAP, None);
    key(&mut h, OWNER, K1, &[]);
    key(&mut h, OTHER, K2, &[]);
    key(&mut h, OTHER, K3, &[OWNER]);
    let other_region = crate::kms::key_arn(DST, OWNER, K1);
    let not_admitted = crate::kms::key_arn(REGION, OTHER, K2);
    let admitted = crate::kms::key_arn(REGION, OTHER, K3);
    // Missing, in another region, another account's not admitting the requester.
    for bad in [
        "44444444-4444-4444-8444-444444444444",
        "alias/none",
        other_region.as_str(),
        not_admitted.as_str(),
    ] {
        assert_eq!(
            local_snapshot_copy(&mut h, OWNER, Some(true), bad),
            inaccessible(),
            "{bad}"
        );
    }
    // Another account's key whose policy admits the requester.
    assert_eq!(
        one(&local_snapshot_copy(&mut h, OWNER, Some(true), &admitted)).1,
        admitted
    );
    // Disabled before the copy starts (the request is accepted while it is enabled).
    let id = copy_snapshot(&mut h, OWNER, REGION, Some(true), K1);
    disable(&mut h, OWNER, K1);
    assert_eq!(run_saga(None, &mut h, &id), inaccessible());
    // Pending deletion.
    let id = copy_snapshot(&mut h, OWNER, REGION, Some(true), K1);
    schedule_deletion(&mut h, OWNER, K1);
    assert_eq!(run_saga(None, &mut h, &id), inaccessible());
    // The failed snapshot shows the reason.
    let failed = h
        .state
        .snapshots
        .values()
        .filter(|s| s.state == crate::state::SnapshotState::Error)
        .count();
    assert_eq!(failed, 6);
    assert!(h
        .state
        .snapshots
        .values()
        .filter(|s| s.state == crate::state::SnapshotState::Error)
        .all(|s| s.state_message == KEY_NOT_ACCESSIBLE));
    // An image copy under a bad key fails with the internal error.
    snapshot(&mut h, OWNER, SNAP2, None);
    image(&mut h, OWNER);
    let id = copy_image(&mut h, OWNER, REGION, Some(true), "alias/none");
    assert_eq!(run_saga(None, &mut h, &id), internal_error());
    let img = h
        .state
        .images
        .values()
        .find(|i| i.registered.origin == "copy")
        .unwrap();
    assert_eq!(
        img.state_reason,
        Some(Box::new((
            INTERNAL_ERROR_CODE.into(),
            INTERNAL_ERROR_MESSAGE.into()
        )))
    );
    h.assert_replay_equals_live();
}

#[test]
fn a_source_under_a_key_the_requester_may_not_use_fails_when_read() {
    let (mut src, mut dst) = two_regions();
    // OWNER's key does not admit OTHER, though the snapshot is shared with it.
    let k1 = key(&mut src, OWNER, K1, &[]);
    snapshot(&mut src, OWNER, SNAP, Some(&k1));
    share(&mut src, SNAP, OTHER);
    assert_eq!(
        remote_snapshot_copy(&mut src, &mut dst, OTHER, None, ""),
        inaccessible()
    );
    // Under OWNER's AWS managed key: never readable by another account.
    let (mut src, mut dst) = two_regions();
    snapshot(&mut src, OWNER, SNAP, Some(&managed(REGION, OWNER)));
    share(&mut src, SNAP, OTHER);
    assert_eq!(
        remote_snapshot_copy(&mut src, &mut dst, OTHER, None, ""),
        inaccessible()
    );
    // The owner's own copy of a snapshot under a disabled key fails too.
    let (mut src, mut dst) = two_regions();
    let k1 = key(&mut src, OWNER, K1, &[]);
    snapshot(&mut src, OWNER, SNAP, Some(&k1));
    disable(&mut src, OWNER, K1);
    assert_eq!(
        remote_snapshot_copy(&mut src, &mut dst, OWNER, None, ""),
        inaccessible()
    );
    // An image copy: the internal error.
    snapshot(&mut src, OWNER, SNAP2, None);
    image(&mut src, OWNER);
    let id = copy_image(&mut dst, OWNER, REGION, None, "");
    assert_eq!(run_saga(Some(&mut src), &mut dst, &id), internal_error());
}

// -------------------------------------------------------------------------------------------
// Keys that change state during a copy
// -------------------------------------------------------------------------------------------

#[test]
fn disabling_a_key_fails_every_copy_in_flight_under_it_at_once() {
    let (mut src, mut dst) = two_regions();
    snapshot(&mut src, OWNER, SNAP, None);
    snapshot(&mut src, OWNER, SNAP2, None);
    image(&mut src, OWNER);
    let k2 = key(&mut dst, OWNER, K2, &[]);
    key(&mut dst, OWNER, K3, &[]);
    // Three copies start: a snapshot and an image under K2, a snapshot under K3.
    let under_k2 = copy_snapshot(&mut dst, OWNER, REGION, Some(true), K2);
    assert!(matches!(
        run_saga(Some(&mut src), &mut dst, &under_k2),
        Outcome::Started(_)
    ));
    let image_k2 = copy_image(&mut dst, OWNER, REGION, Some(true), K2);
    assert!(matches!(
        run_saga(Some(&mut src), &mut dst, &image_k2),
        Outcome::Started(_)
    ));
    let under_k3 = copy_snapshot(&mut dst, OWNER, REGION, Some(true), K3);
    assert!(matches!(
        run_saga(Some(&mut src), &mut dst, &under_k3),
        Outcome::Started(_)
    ));
    // A fourth under K2 is requested but not started yet.
    let waiting = copy_snapshot(&mut dst, OWNER, REGION, Some(true), K2);
    dst.now_ms += 30_000;
    // When K2 is disabled: in the same decision, the snapshot copy fails, and the image copy's
    // snapshots fail and the image with them (once).
    let events = disable(&mut dst, OWNER, K2);
    assert!(matches!(events[0], Payload::KmsKeyDisabled(_)));
    let failed_snaps = events
        .iter()
        .filter(
            |e| matches!(e, Payload::SnapshotFailed(f) if f.state_message == KEY_NOT_ACCESSIBLE),
        )
        .count();
    let failed_images = events
        .iter()
        .filter(|e| matches!(e, Payload::ImageFailed(f) if f.state_reason_code == INTERNAL_ERROR_CODE && f.state_reason_message == INTERNAL_ERROR_MESSAGE))
        .count();
    assert_eq!((failed_snaps, failed_images), (3, 1), "{events:?}");
    let dest = |h: &Harness, copy_id: &str| task(h, copy_id).dest_id;
    assert_eq!(
        dst.state.snapshots[&dest(&dst, &under_k2)].state,
        crate::state::SnapshotState::Error
    );
    assert_eq!(
        dst.state.images[dest(&dst, &image_k2).as_str()].state,
        crate::state::ImageState::Failed
    );
    // The copy under K3 goes on; the waiting one fails when it starts.
    let fired = dst.advance(600_000);
    assert!(fired.iter().any(
        |e| matches!(e, Payload::SnapshotCompleted(c) if c.snapshot_id == dest(&dst, &under_k3))
    ));
    assert!(!fired
        .iter()
        .any(|e| matches!(e, Payload::ImageAvailable(_))));
    assert_eq!(
        dst.state.snapshots[&dest(&dst, &under_k2)].state,
        crate::state::SnapshotState::Error
    );
    assert_eq!(run_saga(Some(&mut src), &mut dst, &waiting), inaccessible());
    // Disabling it again changes nothing.
    assert!(disable(&mut dst, OWNER, K2).is_empty());
    let _ = k2;
    dst.assert_replay_equals_live();
}

#[test]
fn scheduling_a_key_for_deletion_fails_copies_in_flight_and_completed_ones_stay() {
    let mut h = Harness::new();
    snapshot(&mut h, OWNER, SNAP, None);
    key(&mut h, OWNER, K1, &[]);
    // One copy completes under K1, one is in flight.
    let done = copy_snapshot(&mut h, OWNER, REGION, Some(true), K1);
    run_saga(None, &mut h, &done);
    h.advance(600_000);
    let in_flight = copy_snapshot(&mut h, OWNER, REGION, Some(true), K1);
    run_saga(None, &mut h, &in_flight);
    let events = schedule_deletion(&mut h, OWNER, K1);
    assert!(matches!(events[0], Payload::KmsKeyDeletionScheduled(_)));
    assert!(
        matches!(&events[1..], [Payload::SnapshotFailed(f)] if f.state_message == KEY_NOT_ACCESSIBLE)
    );
    let done_id = task(&h, &done).dest_id;
    assert_eq!(
        h.state.snapshots[&done_id].state,
        crate::state::SnapshotState::Completed
    );
    // A week later the key is gone; the completed snapshot keeps its key ARN, unusable now.
    let fired = h.advance(7 * 86_400_000);
    assert!(fired.iter().any(|e| matches!(e, Payload::KmsKeyDeleted(_))));
    assert_eq!(
        code(h.try_decide(OWNER, Command::CreateVolume(from_snapshot(&done_id)))),
        ErrorCode::CustomerKeyHasBeenRevoked
    );
    h.assert_replay_equals_live();
}
