//! Given / when / then for sharing: a cross-account matrix of every action (owner, grantee by id,
//! by organization, by OU, public, stranger), with and without encrypted snapshots, checking the
//! exact outcome and error code, that a refused call writes nothing, and that a replay of the log
//! equals the live state.

use amisim_proto::event::Payload;
use amisim_proto::{self as pb};

use crate::accounts::{organization_arn, ou_arn, Membership, OrgMembership};
use crate::sharing::*;
use crate::state::LaunchPermission;
use crate::testkit::{code, Harness, OTHER, OWNER, T0};
use crate::timing::gib;
use crate::{Answer, Command, Decision, Ec2Result, ErrorCode, Query, Reply};

/// Shared with by account id.
const GRANTEE: &str = OTHER;
/// In the organization.
const ORG_MEMBER: &str = "222233334444";
/// In the OU `TEAM`, below `DEPT` (and so in the organization too).
const OU_MEMBER: &str = "555566667777";
/// In nothing, shared with nothing.
const STRANGER: &str = "777788889999";
const MGMT: &str = "999988887777";
const ORG_ID: &str = "o-abcde12345";
const CMK: &str = "arn:aws:kms:us-east-1:111122223333:key/0e5a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b";
/// The alias ARN form of the AWS managed key (as recorded before KMS was simulated); the key ARN
/// form is checked in `aws_managed_keys_are_recognised_in_every_form`.
const MANAGED: &str = "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs";

fn org() -> String {
    organization_arn(MGMT, ORG_ID)
}
fn team() -> String {
    ou_arn(MGMT, ORG_ID, "ou-ab12-team0001")
}
fn dept() -> String {
    ou_arn(MGMT, ORG_ID, "ou-ab12-dept0001")
}

/// How an image's snapshot is encrypted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Enc {
    Plain,
    Cmk,
    Managed,
}

impl Enc {
    fn key(self) -> &'static str {
        match self {
            Enc::Plain => "",
            Enc::Cmk => CMK,
            Enc::Managed => MANAGED,
        }
    }
}

fn world() -> Harness {
    let mut h = Harness::new();
    let mut m = Membership::new();
    m.insert(
        ORG_MEMBER,
        OrgMembership {
            organization_arn: org(),
            ou_arns: vec![],
        },
    );
    m.insert(
        OU_MEMBER,
        OrgMembership {
            organization_arn: org(),
            ou_arns: vec![team(), dept()],
        },
    );
    h.membership = m;
    h
}

/// A completed snapshot `n` of `owner` (with its volume), encrypted as `enc`.
fn snapshot(h: &mut Harness, n: u64, owner: &str, enc: Enc) -> String {
    let id = format!("snap-{n:017x}");
    let vol = format!("vol-{n:017x}");
    let encrypted = enc != Enc::Plain;
    h.given([
        Payload::VolumeCreated(pb::VolumeCreated {
            volume_id: vol.clone(),
            owner_id: owner.into(),
            availability_zone: "us-east-1a".into(),
            size: 8,
            volume_type: "gp3".into(),
            iops: 3000,
            throughput: 125,
            encrypted,
            kms_key_id: enc.key().into(),
            create_time_ms: T0,
            available_at_ms: T0,
            written_bytes: gib(8),
            ..Default::default()
        }),
        Payload::VolumeAvailable(pb::VolumeAvailable {
            volume_id: vol.clone(),
        }),
        Payload::SnapshotCreated(pb::SnapshotCreated {
            snapshot_id: id.clone(),
            owner_id: owner.into(),
            volume_id: vol,
            volume_size: 8,
            encrypted,
            kms_key_id: enc.key().into(),
            data_encryption_key_id: if encrypted {
                "dek-1".into()
            } else {
                String::new()
            },
            start_time_ms: T0,
            complete_at_ms: T0,
            full_snapshot_size_in_bytes: gib(8) as i64,
            transferred_bytes: gib(8) as i64,
            ..Default::default()
        }),
        Payload::SnapshotCompleted(pb::SnapshotCompleted {
            snapshot_id: id.clone(),
        }),
    ]);
    id
}

/// An `available` EBS image of `owner` on a fresh snapshot; returns (image id, snapshot id).
fn image(h: &mut Harness, owner: &str, enc: Enc) -> (String, String) {
    let n = h.log.len() as u64 + 1;
    let sid = snapshot(h, n, owner, enc);
    let d = h
        .when(
            owner,
            Command::RegisterImage(pb::RegisterImageRequest {
                name: format!("image {n}"),
                root_device_name: "/dev/xvda".into(),
                block_device_mappings: vec![pb::BlockDeviceMapping {
                    device_name: "/dev/xvda".into(),
                    ebs: Some(pb::EbsBlockDevice {
                        snapshot_id: sid.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                architecture: "x86_64".into(),
                virtualization_type: "hvm".into(),
                ..Default::default()
            }),
        )
        .expect("RegisterImage");
    let Reply::RegisterImage(r) = d.reply else {
        panic!("unexpected reply {:?}", d.reply)
    };
    h.advance(h.config.register_ebs_ms);
    (r.image_id, sid)
}

fn user(u: &str) -> pb::LaunchPermission {
    pb::LaunchPermission {
        user_id: u.into(),
        ..Default::default()
    }
}
fn group(g: &str) -> pb::LaunchPermission {
    pb::LaunchPermission {
        group: g.into(),
        ..Default::default()
    }
}
fn org_grant(arn: &str) -> pb::LaunchPermission {
    pb::LaunchPermission {
        organization_arn: arn.into(),
        ..Default::default()
    }
}
fn ou_grant(arn: &str) -> pb::LaunchPermission {
    pb::LaunchPermission {
        organizational_unit_arn: arn.into(),
        ..Default::default()
    }
}

fn add(image_id: &str, items: Vec<pb::LaunchPermission>) -> Command {
    Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
        image_id: image_id.into(),
        launch_permission: Some(pb::LaunchPermissionModifications {
            add: items,
            remove: vec![],
        }),
        ..Default::default()
    })
}
fn remove(image_id: &str, items: Vec<pb::LaunchPermission>) -> Command {
    Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
        image_id: image_id.into(),
        launch_permission: Some(pb::LaunchPermissionModifications {
            add: vec![],
            remove: items,
        }),
        ..Default::default()
    })
}

fn share_volume(snapshot_id: &str, add: bool, users: &[&str], groups: &[&str]) -> Command {
    let items: Vec<pb::CreateVolumePermission> = users
        .iter()
        .map(|u| pb::CreateVolumePermission {
            user_id: u.to_string(),
            group: String::new(),
        })
        .chain(groups.iter().map(|g| pb::CreateVolumePermission {
            user_id: String::new(),
            group: g.to_string(),
        }))
        .collect();
    Command::ModifySnapshotAttribute(pb::ModifySnapshotAttributeRequest {
        snapshot_id: snapshot_id.into(),
        create_volume_permission: Some(if add {
            pb::CreateVolumePermissionModifications {
                add: items,
                remove: vec![],
            }
        } else {
            pb::CreateVolumePermissionModifications {
                add: vec![],
                remove: items,
            }
        }),
        ..Default::default()
    })
}

fn run(image_id: &str) -> Command {
    Command::RunInstances(pb::RunInstancesRequest {
        image_id: image_id.into(),
        min_count: 1,
        max_count: 1,
        ..Default::default()
    })
}

fn describe_image(h: &Harness, account: &str, id: &str) -> Ec2Result<pb::Image> {
    match h.read(
        account,
        Query::DescribeImages(pb::DescribeImagesRequest {
            image_ids: vec![id.into()],
            ..Default::default()
        }),
    )? {
        Answer::DescribeImages(r) => Ok(r.images.into_iter().next().expect("one image")),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn image_ids(h: &Harness, account: &str, r: pb::DescribeImagesRequest) -> Vec<String> {
    match h.read(account, Query::DescribeImages(r)).unwrap() {
        Answer::DescribeImages(r) => r.images.into_iter().map(|i| i.image_id).collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn snapshot_ids(h: &Harness, account: &str, r: pb::DescribeSnapshotsRequest) -> Vec<String> {
    match h.read(account, Query::DescribeSnapshots(r)).unwrap() {
        Answer::DescribeSnapshots(r) => r.snapshots.into_iter().map(|s| s.snapshot_id).collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn image_attribute(
    h: &Harness,
    account: &str,
    id: &str,
    attribute: &str,
) -> Ec2Result<pb::DescribeImageAttributeResponse> {
    match h.read(
        account,
        Query::DescribeImageAttribute(pb::DescribeImageAttributeRequest {
            image_id: id.into(),
            attribute: attribute.into(),
            dry_run: false,
        }),
    )? {
        Answer::DescribeImageAttribute(r) => Ok(r),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn launch_permissions(h: &Harness, id: &str) -> Vec<LaunchPermission> {
    h.state.images[id]
        .launch_permissions
        .iter()
        .cloned()
        .collect()
}

/// Then: `cmd` as `account` fails with `expected` and writes nothing.
fn denied(h: &mut Harness, account: &str, cmd: Command, expected: ErrorCode) -> String {
    let before = (h.log.len(), h.state.digest());
    let e = h.when(account, cmd.clone()).expect_err(&format!(
        "{} as {account} should fail with {expected}",
        cmd.action()
    ));
    assert_eq!(e.code, expected, "{} as {account}: {e}", cmd.action());
    assert_eq!(
        (h.log.len(), h.state.digest()),
        before,
        "a refused call writes nothing"
    );
    e.message
}

/// Then: `cmd` as `account` succeeds; returns its events.
fn ok(h: &mut Harness, account: &str, cmd: Command) -> Vec<Payload> {
    let action = cmd.action();
    let d: Decision = h
        .when(account, cmd)
        .unwrap_or_else(|e| panic!("{action} as {account} failed: {e}"));
    d.events
}

/// A world with one image shared by id (GRANTEE), organization and OU, plus a public one.
struct Shared {
    h: Harness,
    private: String,
    private_snap: String,
    public: String,
}

fn shared_world(enc: Enc) -> Shared {
    let mut h = world();
    let (private, private_snap) = image(&mut h, OWNER, enc);
    let grants = if enc == Enc::Managed {
        // Nothing under the AWS managed key can be shared; the matrix then only sees the owner.
        vec![]
    } else {
        vec![user(GRANTEE), org_grant(&org()), ou_grant(&team())]
    };
    if !grants.is_empty() {
        ok(&mut h, OWNER, add(&private, grants));
    }
    let (public, _) = image(&mut h, OWNER, Enc::Plain);
    ok(&mut h, OWNER, add(&public, vec![group("all")]));
    Shared {
        h,
        private,
        private_snap,
        public,
    }
}

// -------------------------------------------------------------------------------------------
// The matrix
// -------------------------------------------------------------------------------------------

/// What a cell of the matrix expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    Err(ErrorCode),
}
use Want::{Err as E, Ok as Y};

#[test]
fn cross_account_matrix_for_every_image_action() {
    use ErrorCode::*;
    type Make = fn(&Shared) -> Command;
    // (action, command, [owner, grantee, org member, OU member, stranger]) for the privately
    // shared image; every row runs on a fresh world.
    let rows: Vec<(&str, Make, [Want; 5])> = vec![
        (
            "RunInstances",
            |s| run(&s.private),
            [Y, Y, Y, Y, E(InvalidAmiIdNotFound)],
        ),
        (
            "ModifyImageAttribute (share on)",
            |s| add(&s.private, vec![user(STRANGER)]),
            [
                Y,
                E(AuthFailure),
                E(AuthFailure),
                E(AuthFailure),
                E(InvalidAmiIdNotFound),
            ],
        ),
        (
            "ModifyImageAttribute (description)",
            |s| {
                Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
                    image_id: s.private.clone(),
                    description: Some(pb::AttributeValue {
                        value: "mine".into(),
                    }),
                    ..Default::default()
                })
            },
            [
                Y,
                E(AuthFailure),
                E(AuthFailure),
                E(AuthFailure),
                E(InvalidAmiIdNotFound),
            ],
        ),
        (
            "ResetImageAttribute",
            |s| {
                Command::ResetImageAttribute(pb::ResetImageAttributeRequest {
                    image_id: s.private.clone(),
                    attribute: "launchPermission".into(),
                    dry_run: false,
                })
            },
            [
                Y,
                E(AuthFailure),
                E(AuthFailure),
                E(AuthFailure),
                E(InvalidAmiIdNotFound),
            ],
        ),
        (
            "DeregisterImage",
            |s| {
                Command::DeregisterImage(pb::DeregisterImageRequest {
                    image_id: s.private.clone(),
                    ..Default::default()
                })
            },
            [
                Y,
                E(AuthFailure),
                E(AuthFailure),
                E(AuthFailure),
                E(InvalidAmiIdNotFound),
            ],
        ),
        (
            "CancelImageLaunchPermission",
            |s| {
                Command::CancelImageLaunchPermission(pb::CancelImageLaunchPermissionRequest {
                    image_id: s.private.clone(),
                    dry_run: false,
                })
            },
            // [unconfirmed] the owner cannot cancel its implicit permission.
            [E(InvalidParameter), Y, Y, Y, E(InvalidAmiIdNotFound)],
        ),
        (
            "CreateTags on the image",
            |s| {
                Command::CreateTags(pb::CreateTagsRequest {
                    resources: vec![s.private.clone()],
                    tags: vec![pb::Tag {
                        key: "k".into(),
                        value: "v".into(),
                    }],
                    dry_run: false,
                })
            },
            // [sim] another account's image looks absent to CreateTags.
            [
                Y,
                E(InvalidAmiIdNotFound),
                E(InvalidAmiIdNotFound),
                E(InvalidAmiIdNotFound),
                E(InvalidAmiIdNotFound),
            ],
        ),
        (
            "CopyImage without access to the snapshots",
            |s| {
                Command::CopyImage(pb::CopyImageRequest {
                    source_image_id: s.private.clone(),
                    source_region: "us-east-1".into(),
                    name: "my copy".into(),
                    ..Default::default()
                })
            },
            [
                Y,
                E(InvalidRequest),
                E(InvalidRequest),
                E(InvalidRequest),
                E(InvalidAmiIdNotFound),
            ],
        ),
        (
            "ModifySnapshotAttribute of the image's snapshot",
            |s| share_volume(&s.private_snap, true, &[STRANGER], &[]),
            // Sharing the AMI does not share its snapshot: to the others it does not exist.
            [
                Y,
                E(InvalidSnapshotNotFound),
                E(InvalidSnapshotNotFound),
                E(InvalidSnapshotNotFound),
                E(InvalidSnapshotNotFound),
            ],
        ),
    ];
    let callers = [OWNER, GRANTEE, ORG_MEMBER, OU_MEMBER, STRANGER];
    for enc in [Enc::Plain, Enc::Cmk] {
        for (name, make, wants) in &rows {
            for (caller, want) in callers.iter().zip(wants) {
                let mut s = shared_world(enc);
                let cmd = make(&s);
                match want {
                    Want::Ok => {
                        s.h.when(caller, cmd).unwrap_or_else(|e| {
                            panic!("{name} as {caller} ({enc:?}) should succeed: {e}")
                        });
                    }
                    Want::Err(c) => {
                        let before = (s.h.log.len(), s.h.state.digest());
                        let e = s.h.when(caller, cmd).expect_err(name);
                        assert_eq!(e.code, *c, "{name} as {caller} ({enc:?}): {e}");
                        assert_eq!(
                            (s.h.log.len(), s.h.state.digest()),
                            before,
                            "{name} as {caller}: a refused call writes nothing"
                        );
                    }
                }
                s.h.assert_replay_equals_live();
            }
        }
    }
}

#[test]
fn cross_account_matrix_for_reads() {
    let s = shared_world(Enc::Plain);
    let h = &s.h;
    // DescribeImages by id: everyone the grants reach, and anyone for the public image.
    for caller in [OWNER, GRANTEE, ORG_MEMBER, OU_MEMBER] {
        assert_eq!(
            describe_image(h, caller, &s.private).unwrap().image_id,
            s.private
        );
    }
    assert_eq!(
        code(describe_image(h, STRANGER, &s.private)),
        ErrorCode::InvalidAmiIdNotFound
    );
    for caller in [OWNER, GRANTEE, ORG_MEMBER, OU_MEMBER, STRANGER] {
        let img = describe_image(h, caller, &s.public).unwrap();
        assert!(img.public);
    }
    // DescribeImageAttribute: [sim] owner only; others AuthFailure, strangers NotFound.
    assert!(image_attribute(h, OWNER, &s.private, "launchPermission").is_ok());
    for caller in [GRANTEE, ORG_MEMBER, OU_MEMBER] {
        assert_eq!(
            code(image_attribute(h, caller, &s.private, "launchPermission")),
            ErrorCode::AuthFailure
        );
    }
    assert_eq!(
        code(image_attribute(h, STRANGER, &s.public, "description")),
        ErrorCode::AuthFailure,
        "a public image is visible, but not its attributes"
    );
    assert_eq!(
        code(image_attribute(h, STRANGER, &s.private, "description")),
        ErrorCode::InvalidAmiIdNotFound
    );
    // The image's snapshot is not shared: only the owner sees it.
    for caller in [GRANTEE, ORG_MEMBER, OU_MEMBER, STRANGER] {
        assert!(
            snapshot_ids(h, caller, Default::default()).is_empty(),
            "{caller}"
        );
    }
    assert_eq!(
        snapshot_ids(h, OWNER, Default::default()).len(),
        2,
        "both images' snapshots"
    );
}

#[test]
fn encryption_matrix_for_sharing_an_image() {
    use ErrorCode::*;
    type Grant = fn() -> pb::LaunchPermission;
    let grants: [(&str, Grant); 4] = [
        ("user", || user(GRANTEE)),
        ("organization", || org_grant(&org())),
        ("ou", || ou_grant(&team())),
        ("all", || group("all")),
    ];
    let table: [(Enc, [Want; 4]); 3] = [
        (Enc::Plain, [Y, Y, Y, Y]),
        (Enc::Cmk, [Y, Y, Y, E(UnsupportedOperation)]),
        (
            Enc::Managed,
            [
                E(InvalidParameter),
                E(InvalidParameter),
                E(InvalidParameter),
                E(UnsupportedOperation),
            ],
        ),
    ];
    for (enc, wants) in table {
        for ((name, grant), want) in grants.iter().zip(wants) {
            let mut h = world();
            let (id, _) = image(&mut h, OWNER, enc);
            match want {
                Want::Ok => {
                    let events = ok(&mut h, OWNER, add(&id, vec![grant()]));
                    assert_eq!(events.len(), 1, "{enc:?} {name}");
                }
                Want::Err(c) => {
                    let m = denied(&mut h, OWNER, add(&id, vec![grant()]), c);
                    let quoted = match c {
                        UnsupportedOperation => {
                            "Encrypted snapshots can't be shared publicly. Specify another snapshot."
                        }
                        _ => {
                            "Snapshots encrypted with the AWS Managed CMK can't be shared. \
                             Specify another snapshot."
                        }
                    };
                    assert_eq!(m, quoted, "{enc:?} {name}");
                }
            }
            h.assert_replay_equals_live();
        }
    }
}

#[test]
fn encryption_matrix_for_sharing_a_snapshot() {
    use ErrorCode::*;
    // (encryption, [add user, add all]).
    let table: [(Enc, [Want; 2]); 3] = [
        (Enc::Plain, [Y, Y]),
        (Enc::Cmk, [Y, E(OperationNotPermitted)]),
        (
            Enc::Managed,
            [E(OperationNotPermitted), E(OperationNotPermitted)],
        ),
    ];
    for (enc, wants) in table {
        for (i, want) in wants.into_iter().enumerate() {
            let mut h = world();
            let sid = snapshot(&mut h, 1, OWNER, enc);
            let cmd = if i == 0 {
                share_volume(&sid, true, &[GRANTEE], &[])
            } else {
                share_volume(&sid, true, &[], &["all"])
            };
            match want {
                Want::Ok => assert_eq!(ok(&mut h, OWNER, cmd).len(), 1),
                Want::Err(c) => {
                    let m = denied(&mut h, OWNER, cmd, c);
                    if i == 0 {
                        assert_eq!(
                            m,
                            "Encrypted snapshots with EBS default key cannot be shared"
                        );
                    } else {
                        // [unconfirmed] the public check comes first, whatever the key.
                        assert_eq!(m, "Encrypted snapshots cannot be shared publicly.");
                    }
                }
            }
            h.assert_replay_equals_live();
        }
    }
    // Removing from a managed-key snapshot is allowed (and here changes nothing).
    let mut h = world();
    let sid = snapshot(&mut h, 1, OWNER, Enc::Managed);
    assert!(ok(&mut h, OWNER, share_volume(&sid, false, &[GRANTEE], &[])).is_empty());
}

#[test]
fn cross_account_matrix_for_snapshot_actions() {
    use ErrorCode::*;
    let mut h = world();
    let sid = snapshot(&mut h, 1, OWNER, Enc::Plain);
    ok(&mut h, OWNER, share_volume(&sid, true, &[GRANTEE], &[]));
    // The grantee may see and use it, but not change, describe the attribute of, reset or
    // delete it; a stranger (even in the owner's organization: snapshots have no org grants)
    // does not see it at all.
    for (caller, want) in [
        (GRANTEE, AuthFailure),
        (ORG_MEMBER, InvalidSnapshotNotFound),
        (STRANGER, InvalidSnapshotNotFound),
    ] {
        denied(
            &mut h,
            caller,
            share_volume(&sid, true, &[STRANGER], &[]),
            want,
        );
        denied(
            &mut h,
            caller,
            Command::ResetSnapshotAttribute(pb::ResetSnapshotAttributeRequest {
                snapshot_id: sid.clone(),
                attribute: "createVolumePermission".into(),
                dry_run: false,
            }),
            want,
        );
        let r = h.read(
            caller,
            Query::DescribeSnapshotAttribute(pb::DescribeSnapshotAttributeRequest {
                snapshot_id: sid.clone(),
                attribute: "createVolumePermission".into(),
                dry_run: false,
            }),
        );
        assert_eq!(code(r), want, "{caller}");
    }
    // DeleteSnapshot by a grantee keeps its existing [unconfirmed] answer.
    denied(
        &mut h,
        GRANTEE,
        Command::DeleteSnapshot(pb::DeleteSnapshotRequest {
            snapshot_id: sid.clone(),
            dry_run: false,
        }),
        UnauthorizedOperation,
    );
    denied(
        &mut h,
        STRANGER,
        Command::DeleteSnapshot(pb::DeleteSnapshotRequest {
            snapshot_id: sid.clone(),
            dry_run: false,
        }),
        InvalidSnapshotNotFound,
    );
    // The grantee restores it; the stranger cannot.
    ok(
        &mut h,
        GRANTEE,
        Command::CreateVolume(pb::CreateVolumeRequest {
            availability_zone: "us-east-1a".into(),
            snapshot_id: sid.clone(),
            ..Default::default()
        }),
    );
    denied(
        &mut h,
        STRANGER,
        Command::CreateVolume(pb::CreateVolumeRequest {
            availability_zone: "us-east-1a".into(),
            snapshot_id: sid.clone(),
            ..Default::default()
        }),
        InvalidSnapshotNotFound,
    );
    // ... copy it (the copy is the grantee's and private) ...
    let copy = |id: &str| {
        Command::CopySnapshot(pb::CopySnapshotRequest {
            source_snapshot_id: id.into(),
            source_region: "us-east-1".into(),
            ..Default::default()
        })
    };
    let d = h
        .when(GRANTEE, copy(&sid))
        .expect("copy of a shared snapshot");
    let Reply::CopySnapshot(c) = d.reply else {
        panic!("{:?}", d.reply)
    };
    assert_eq!(h.state.snapshots[&c.snapshot_id].owner_id, GRANTEE);
    assert!(h.state.snapshots[&c.snapshot_id]
        .create_volume_permissions
        .is_empty());
    denied(&mut h, STRANGER, copy(&sid), InvalidSnapshotNotFound);
    // ... and may register an AMI from it (the AMI is the grantee's).
    let d = ok(
        &mut h,
        GRANTEE,
        Command::RegisterImage(pb::RegisterImageRequest {
            name: "from a shared snapshot".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![pb::BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(pb::EbsBlockDevice {
                    snapshot_id: sid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    let Payload::ImageRegistered(reg) = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!(reg.owner_id, GRANTEE);
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// ModifyImageAttribute: forms, order of checks, effects
// -------------------------------------------------------------------------------------------

#[test]
fn share_by_id_org_and_ou_reaches_exactly_the_accounts_below() {
    let mut h = world();
    let (by_user, _) = image(&mut h, OWNER, Enc::Plain);
    let (by_org, _) = image(&mut h, OWNER, Enc::Plain);
    let (by_ou, _) = image(&mut h, OWNER, Enc::Plain);
    let (by_dept, _) = image(&mut h, OWNER, Enc::Plain);
    let events = ok(&mut h, OWNER, add(&by_user, vec![user(GRANTEE)]));
    assert_eq!(
        events,
        vec![Payload::LaunchPermissionChanged(
            pb::LaunchPermissionChanged {
                image_id: by_user.clone(),
                added: vec![pb::LaunchPermissionRecord {
                    user_id: GRANTEE.into(),
                    ..Default::default()
                }],
                removed: vec![],
            }
        )]
    );
    ok(&mut h, OWNER, add(&by_org, vec![org_grant(&org())]));
    ok(&mut h, OWNER, add(&by_ou, vec![ou_grant(&team())]));
    ok(&mut h, OWNER, add(&by_dept, vec![ou_grant(&dept())]));
    let sees = |h: &Harness, a: &str| -> Vec<String> {
        let mut v = image_ids(h, a, Default::default());
        v.sort();
        v
    };
    let mut expect_ou = vec![by_org.clone(), by_ou.clone(), by_dept.clone()];
    expect_ou.sort();
    assert_eq!(sees(&h, GRANTEE), vec![by_user.clone()]);
    assert_eq!(sees(&h, ORG_MEMBER), vec![by_org.clone()]);
    assert_eq!(
        sees(&h, OU_MEMBER),
        expect_ou,
        "an OU grant covers the OUs below"
    );
    assert!(sees(&h, STRANGER).is_empty());
    // Launch rights follow visibility.
    ok(&mut h, OU_MEMBER, run(&by_dept));
    denied(
        &mut h,
        ORG_MEMBER,
        run(&by_ou),
        ErrorCode::InvalidAmiIdNotFound,
    );
    h.assert_replay_equals_live();
}

#[test]
fn the_flat_form_is_the_structured_form() {
    let mut a = world();
    let (id, _) = image(&mut a, OWNER, Enc::Plain);
    let mut b = world();
    let (id_b, _) = image(&mut b, OWNER, Enc::Plain);
    assert_eq!(id, id_b);
    let structured = ok(
        &mut a,
        OWNER,
        add(
            &id,
            vec![
                user(GRANTEE),
                group("all"),
                org_grant(&org()),
                ou_grant(&team()),
            ],
        ),
    );
    let flat = ok(
        &mut b,
        OWNER,
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            attribute: "launchPermission".into(),
            operation_type: "add".into(),
            user_ids: vec![GRANTEE.into()],
            user_groups: vec!["all".into()],
            organization_arns: vec![org()],
            organizational_unit_arns: vec![ou_grant(&team()).organizational_unit_arn],
            ..Default::default()
        }),
    );
    assert_eq!(structured, flat);
    assert_eq!(a.state.digest(), b.state.digest());
    // Flat remove.
    let events = ok(
        &mut b,
        OWNER,
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            attribute: "launchPermission".into(),
            operation_type: "remove".into(),
            user_groups: vec!["all".into()],
            ..Default::default()
        }),
    );
    assert_eq!(events.len(), 1);
    assert!(!b.state.images[id.as_str()].is_public());
    // Flat description and imdsSupport.
    ok(
        &mut b,
        OWNER,
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            attribute: "description".into(),
            value: "flat".into(),
            ..Default::default()
        }),
    );
    ok(
        &mut b,
        OWNER,
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            attribute: "imdsSupport".into(),
            value: "v2.0".into(),
            ..Default::default()
        }),
    );
    let img = describe_image(&b, OWNER, &id).unwrap();
    assert_eq!(
        (img.description.as_str(), img.imds_support.as_str()),
        ("flat", "v2.0")
    );
    a.assert_replay_equals_live();
    b.assert_replay_equals_live();
}

#[test]
fn modify_image_attribute_checks_in_order() {
    use ErrorCode::*;
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)]));
    let req = |f: fn(&mut pb::ModifyImageAttributeRequest)| {
        let mut r = pb::ModifyImageAttributeRequest {
            image_id: "ami-0123456789abcdef0".into(),
            ..Default::default()
        };
        f(&mut r);
        Command::ModifyImageAttribute(r)
    };
    // 2 Missing parameters.
    denied(
        &mut h,
        OWNER,
        Command::ModifyImageAttribute(Default::default()),
        MissingParameter,
    );
    denied(&mut h, OWNER, req(|_| {}), MissingParameter);
    // 3 Syntax and combinations.
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.image_id = "ami-bad".into();
            r.user_ids = vec![GRANTEE.into()];
        }),
        InvalidAmiIdMalformed,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.description = Some(pb::AttributeValue { value: "d".into() });
            r.imds_support = Some(pb::AttributeValue {
                value: "v2.0".into(),
            });
        }),
        InvalidParameterCombination,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| r.product_codes = vec!["abc".into()]),
        UnsupportedOperation,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.attribute = "launchPermission".into();
            r.user_ids = vec![GRANTEE.into()];
        }),
        MissingParameter,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.attribute = "launchPermission".into();
            r.operation_type = "delete".into();
            r.user_ids = vec![GRANTEE.into()];
        }),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.attribute = "description".into();
            r.operation_type = "add".into();
        }),
        InvalidParameterCombination,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| r.attribute = "kernel".into()),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.imds_support = Some(pb::AttributeValue {
                value: "v1.0".into(),
            })
        }),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.description = Some(pb::AttributeValue {
                value: "x".repeat(256),
            })
        }),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.launch_permission = Some(pb::LaunchPermissionModifications {
                add: vec![pb::LaunchPermission {
                    user_id: GRANTEE.into(),
                    group: "all".into(),
                    ..Default::default()
                }],
                remove: vec![],
            })
        }),
        InvalidParameterCombination,
    );
    // 5 DryRun: after syntax, before existence (an unknown image, a stranger).
    let mut dry = pb::ModifyImageAttributeRequest {
        image_id: "ami-0123456789abcdef0".into(),
        user_ids: vec![GRANTEE.into()],
        operation_type: "add".into(),
        dry_run: true,
        ..Default::default()
    };
    denied(
        &mut h,
        STRANGER,
        Command::ModifyImageAttribute(dry.clone()),
        DryRunOperation,
    );
    dry.image_id = "ami-bad".into();
    denied(
        &mut h,
        OWNER,
        Command::ModifyImageAttribute(dry),
        InvalidAmiIdMalformed,
    );
    // 1 visible → 2 owner → 3 available → 4 item values: each wins over the later ones.
    let bad_item = || vec![user("12345")];
    denied(&mut h, STRANGER, add(&id, bad_item()), InvalidAmiIdNotFound);
    denied(&mut h, GRANTEE, add(&id, bad_item()), AuthFailure);
    let (pending, _) = {
        let n = h.log.len() as u64 + 1;
        let sid = snapshot(&mut h, n, OWNER, Enc::Plain);
        let d = ok(
            &mut h,
            OWNER,
            Command::RegisterImage(pb::RegisterImageRequest {
                name: "still pending".into(),
                root_device_name: "/dev/xvda".into(),
                block_device_mappings: vec![pb::BlockDeviceMapping {
                    device_name: "/dev/xvda".into(),
                    ebs: Some(pb::EbsBlockDevice {
                        snapshot_id: sid.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
        let Payload::ImageRegistered(r) = &d[0] else {
            panic!()
        };
        (r.image_id.clone(), sid)
    };
    denied(
        &mut h,
        OWNER,
        add(&pending, bad_item()),
        InvalidAmiIdUnavailable,
    );
    let m = denied(
        &mut h,
        OWNER,
        add(&id, bad_item()),
        InvalidAmiAttributeItemValue,
    );
    assert_eq!(
        m,
        "Invalid attribute item value \"12345\" for userId item type."
    );
    for (item, kind) in [
        (group("everyone"), "group"),
        (org_grant(ORG_ID), "organizationArn"),
        (ou_grant("ou-ab12-team0001"), "organizationalUnitArn"),
        (org_grant(&team()), "organizationArn"),
    ] {
        let m = denied(
            &mut h,
            OWNER,
            add(&id, vec![item]),
            InvalidAmiAttributeItemValue,
        );
        assert!(m.ends_with(&format!("for {kind} item type.")), "{m}");
    }
    // Removals are checked too.
    denied(
        &mut h,
        OWNER,
        remove(&id, bad_item()),
        InvalidAmiAttributeItemValue,
    );
    h.assert_replay_equals_live();
}

#[test]
fn disabled_and_deregistered_images_cannot_be_shared() {
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    // [sim] DisableImage is not simulated yet: a `disabled` state is reached only by events.
    if let Some(img) = h.state.image_mut(&id) {
        img.state = crate::state::ImageState::Disabled;
    }
    denied(
        &mut h,
        OWNER,
        add(&id, vec![user(GRANTEE)]),
        ErrorCode::InvalidAmiIdUnavailable,
    );
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)]));
    ok(
        &mut h,
        OWNER,
        Command::DeregisterImage(pb::DeregisterImageRequest {
            image_id: id.clone(),
            ..Default::default()
        }),
    );
    assert!(
        launch_permissions(&h, &id).is_empty(),
        "deregistration removes every grant"
    );
    denied(
        &mut h,
        OWNER,
        add(&id, vec![user(GRANTEE)]),
        ErrorCode::InvalidAmiIdUnavailable,
    );
    denied(&mut h, GRANTEE, run(&id), ErrorCode::InvalidAmiIdNotFound);
    h.assert_replay_equals_live();
}

#[test]
fn changes_are_facts_removing_an_absent_grant_writes_nothing_unconfirmed() {
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    assert!(ok(&mut h, OWNER, remove(&id, vec![user(GRANTEE)])).is_empty());
    ok(&mut h, OWNER, add(&id, vec![user(GRANTEE), user(STRANGER)]));
    // Adding what is there, removing what is not: nothing.
    assert!(ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)])).is_empty());
    // Add and remove in one call: the event says what really changed.
    let events = ok(
        &mut h,
        OWNER,
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            launch_permission: Some(pb::LaunchPermissionModifications {
                add: vec![user(ORG_MEMBER), user(GRANTEE)],
                remove: vec![user(STRANGER), user(OU_MEMBER)],
            }),
            ..Default::default()
        }),
    );
    assert_eq!(
        events,
        vec![Payload::LaunchPermissionChanged(
            pb::LaunchPermissionChanged {
                image_id: id.clone(),
                added: vec![pb::LaunchPermissionRecord {
                    user_id: ORG_MEMBER.into(),
                    ..Default::default()
                }],
                removed: vec![pb::LaunchPermissionRecord {
                    user_id: STRANGER.into(),
                    ..Default::default()
                }],
            }
        )]
    );
    assert_eq!(
        launch_permissions(&h, &id),
        vec![
            LaunchPermission::User(ORG_MEMBER.into()),
            LaunchPermission::User(GRANTEE.into())
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    // Same description, IMDS already v2.0: nothing.
    let describe = |v: &str| {
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            description: Some(pb::AttributeValue { value: v.into() }),
            ..Default::default()
        })
    };
    assert_eq!(ok(&mut h, OWNER, describe("new")).len(), 1);
    assert!(ok(&mut h, OWNER, describe("new")).is_empty());
    h.assert_replay_equals_live();
}

#[test]
fn imds_support_v2_is_irreversible() {
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    let imds = |v: &str| {
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: id.clone(),
            imds_support: Some(pb::AttributeValue { value: v.into() }),
            ..Default::default()
        })
    };
    assert_eq!(ok(&mut h, OWNER, imds("v2.0")).len(), 1);
    assert!(ok(&mut h, OWNER, imds("v2.0")).is_empty());
    // There is no value that undoes it.
    for v in ["", "v1.0", "optional"] {
        denied(&mut h, OWNER, imds(v), ErrorCode::InvalidParameterValue);
    }
    let a = image_attribute(&h, OWNER, &id, "imdsSupport").unwrap();
    assert_eq!(a.imds_support.unwrap().value, "v2.0");
    h.assert_replay_equals_live();
}

#[test]
fn image_block_public_access_blocks_new_public_shares_only() {
    use ErrorCode::*;
    let mut h = world();
    let get = |h: &Harness, a: &str| match h
        .read(a, Query::GetImageBlockPublicAccessState(Default::default()))
        .unwrap()
    {
        Answer::GetImageBlockPublicAccessState(r) => {
            (r.image_block_public_access_state, r.managed_by)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        get(&h, OWNER),
        ("unblocked".to_string(), "account".to_string())
    );
    let enable = |s: &str| {
        Command::EnableImageBlockPublicAccess(pb::EnableImageBlockPublicAccessRequest {
            image_block_public_access_state: s.into(),
            dry_run: false,
        })
    };
    let disable = Command::DisableImageBlockPublicAccess(Default::default());
    denied(&mut h, OWNER, enable(""), MissingParameter);
    denied(
        &mut h,
        OWNER,
        enable("block-all-sharing"),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        Command::EnableImageBlockPublicAccess(pb::EnableImageBlockPublicAccessRequest {
            image_block_public_access_state: "block-new-sharing".into(),
            dry_run: true,
        }),
        DryRunOperation,
    );
    let (already, _) = image(&mut h, OWNER, Enc::Plain);
    ok(&mut h, OWNER, add(&already, vec![group("all")]));
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    assert_eq!(ok(&mut h, OWNER, enable("block-new-sharing")).len(), 1);
    assert!(
        ok(&mut h, OWNER, enable("block-new-sharing")).is_empty(),
        "already on"
    );
    assert_eq!(get(&h, OWNER).0, "block-new-sharing");
    assert_eq!(get(&h, GRANTEE).0, "unblocked", "per account");
    let m = denied(
        &mut h,
        OWNER,
        add(&id, vec![group("all")]),
        OperationNotPermitted,
    );
    assert_eq!(
        m,
        "You can't publicly share this image because block public access for AMIs is enabled \
         for this account. To publicly share the image, you must call the \
         DisableImageBlockPublicAccess API."
    );
    // Block public access is checked before encryption.
    let (enc, _) = image(&mut h, OWNER, Enc::Cmk);
    denied(
        &mut h,
        OWNER,
        add(&enc, vec![group("all")]),
        OperationNotPermitted,
    );
    // Private sharing goes on; public images stay public (re-adding `all` changes nothing).
    ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)]));
    assert!(h.state.images[already.as_str()].is_public());
    assert!(ok(&mut h, OWNER, add(&already, vec![group("all")])).is_empty());
    // Disabled: public sharing works again.
    assert_eq!(ok(&mut h, OWNER, disable.clone()).len(), 1);
    assert!(ok(&mut h, OWNER, disable).is_empty(), "already off");
    assert_eq!(get(&h, OWNER).0, "unblocked");
    ok(&mut h, OWNER, add(&id, vec![group("all")]));
    h.assert_replay_equals_live();
}

#[test]
fn sim_image_block_public_access_applies_after_the_configured_delay() {
    let mut h = world();
    h.config.image_block_public_access_delay_ms = 600_000;
    let (a, _) = image(&mut h, OWNER, Enc::Plain);
    let (b, _) = image(&mut h, OWNER, Enc::Plain);
    ok(
        &mut h,
        OWNER,
        Command::EnableImageBlockPublicAccess(pb::EnableImageBlockPublicAccessRequest {
            image_block_public_access_state: "block-new-sharing".into(),
            dry_run: false,
        }),
    );
    let state = |h: &Harness| match h
        .read(
            OWNER,
            Query::GetImageBlockPublicAccessState(Default::default()),
        )
        .unwrap()
    {
        Answer::GetImageBlockPublicAccessState(r) => r.image_block_public_access_state,
        other => panic!("{other:?}"),
    };
    assert_eq!(state(&h), "unblocked", "not applied yet");
    ok(&mut h, OWNER, add(&a, vec![group("all")]));
    h.now_ms += 600_000;
    assert_eq!(state(&h), "block-new-sharing");
    denied(
        &mut h,
        OWNER,
        add(&b, vec![group("all")]),
        ErrorCode::OperationNotPermitted,
    );
    h.assert_replay_equals_live();
}

#[test]
fn unconfirmed_public_image_and_grantee_quotas_are_resource_limit_exceeded() {
    let mut h = world();
    h.config.max_public_images = 2;
    h.config.max_launch_permissions = 3;
    let ids: Vec<String> = (0..3).map(|_| image(&mut h, OWNER, Enc::Plain).0).collect();
    ok(&mut h, OWNER, add(&ids[0], vec![group("all")]));
    ok(&mut h, OWNER, add(&ids[1], vec![group("all")]));
    denied(
        &mut h,
        OWNER,
        add(&ids[2], vec![group("all")]),
        ErrorCode::ResourceLimitExceeded,
    );
    // Another account's public images do not count.
    let (theirs, _) = image(&mut h, GRANTEE, Enc::Plain);
    ok(&mut h, GRANTEE, add(&theirs, vec![group("all")]));
    // Grantees: an organization or OU counts once, `all` not at all.
    ok(
        &mut h,
        OWNER,
        add(
            &ids[2],
            vec![user(GRANTEE), org_grant(&org()), ou_grant(&team())],
        ),
    );
    denied(
        &mut h,
        OWNER,
        add(&ids[2], vec![user(STRANGER)]),
        ErrorCode::ResourceLimitExceeded,
    );
    // Freeing one makes room.
    ok(&mut h, OWNER, remove(&ids[2], vec![user(GRANTEE)]));
    ok(&mut h, OWNER, add(&ids[2], vec![user(STRANGER)]));
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// DescribeImageAttribute, ResetImageAttribute, CancelImageLaunchPermission
// -------------------------------------------------------------------------------------------

#[test]
fn describe_image_attribute_answers_each_attribute() {
    use ErrorCode::*;
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(
        &mut h,
        OWNER,
        add(
            &id,
            vec![
                ou_grant(&team()),
                user(GRANTEE),
                group("all"),
                org_grant(&org()),
            ],
        ),
    );
    let lp = image_attribute(&h, OWNER, &id, "launchPermission").unwrap();
    assert_eq!(lp.image_id, id);
    assert_eq!(
        lp.launch_permissions,
        vec![
            user(GRANTEE),
            group("all"),
            org_grant(&org()),
            ou_grant(&team())
        ]
    );
    assert!(lp.description.is_none(), "only the attribute asked for");
    let d = image_attribute(&h, OWNER, &id, "description").unwrap();
    assert_eq!(d.description, Some(pb::AttributeValue::default()));
    assert!(d.launch_permissions.is_empty());
    for (attr, pick) in [
        (
            "kernel",
            (|r| r.kernel_id)
                as fn(pb::DescribeImageAttributeResponse) -> Option<pb::AttributeValue>,
        ),
        ("ramdisk", |r| r.ramdisk_id),
        ("sriovNetSupport", |r| r.sriov_net_support),
        ("bootMode", |r| r.boot_mode),
        ("tpmSupport", |r| r.tpm_support),
        ("uefiData", |r| r.uefi_data),
        ("lastLaunchedTime", |r| r.last_launched_time),
        ("imdsSupport", |r| r.imds_support),
        ("deregistrationProtection", |r| r.deregistration_protection),
    ] {
        let r = image_attribute(&h, OWNER, &id, attr).unwrap();
        assert!(pick(r).is_some(), "{attr}");
    }
    assert_eq!(
        image_attribute(&h, OWNER, &id, "deregistrationProtection")
            .unwrap()
            .deregistration_protection
            .unwrap()
            .value,
        "disabled"
    );
    assert!(image_attribute(&h, OWNER, &id, "productCodes")
        .unwrap()
        .product_codes
        .is_empty());
    let m = image_attribute(&h, OWNER, &id, "blockDeviceMapping").unwrap_err();
    assert_eq!(m.code, AuthFailure);
    assert_eq!(
        m.message,
        "Unauthorized attempt to access restricted resource"
    );
    assert_eq!(
        code(image_attribute(&h, OWNER, &id, "color")),
        InvalidParameterValue
    );
    assert_eq!(code(image_attribute(&h, OWNER, &id, "")), MissingParameter);
    assert_eq!(
        code(image_attribute(&h, OWNER, "", "description")),
        MissingParameter
    );
    assert_eq!(
        code(image_attribute(&h, OWNER, "ami-x", "description")),
        InvalidAmiIdMalformed
    );
    assert_eq!(
        code(h.read(
            OWNER,
            Query::DescribeImageAttribute(pb::DescribeImageAttributeRequest {
                image_id: id.clone(),
                attribute: "description".into(),
                dry_run: true,
            })
        )),
        DryRunOperation
    );
}

#[test]
fn reset_image_attribute_makes_the_image_private() {
    use ErrorCode::*;
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(
        &mut h,
        OWNER,
        add(&id, vec![user(GRANTEE), group("all"), org_grant(&org())]),
    );
    let reset = |attr: &str| {
        Command::ResetImageAttribute(pb::ResetImageAttributeRequest {
            image_id: id.clone(),
            attribute: attr.into(),
            dry_run: false,
        })
    };
    denied(&mut h, OWNER, reset(""), MissingParameter);
    denied(&mut h, OWNER, reset("description"), InvalidParameterValue);
    let events = ok(&mut h, OWNER, reset("launchPermission"));
    let Payload::LaunchPermissionChanged(e) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(e.removed.len(), 3);
    assert!(launch_permissions(&h, &id).is_empty());
    assert!(
        ok(&mut h, OWNER, reset("launchPermission")).is_empty(),
        "nothing left"
    );
    for a in [GRANTEE, ORG_MEMBER, STRANGER] {
        denied(&mut h, a, run(&id), InvalidAmiIdNotFound);
    }
    h.assert_replay_equals_live();
}

#[test]
fn cancel_removes_only_the_callers_own_grant() {
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(
        &mut h,
        OWNER,
        add(
            &id,
            vec![user(GRANTEE), user(ORG_MEMBER), org_grant(&org())],
        ),
    );
    let cancel = Command::CancelImageLaunchPermission(pb::CancelImageLaunchPermissionRequest {
        image_id: id.clone(),
        dry_run: false,
    });
    // The org member cancels its id grant, and still launches through the organization.
    let events = ok(&mut h, ORG_MEMBER, cancel.clone());
    assert_eq!(
        events,
        vec![Payload::LaunchPermissionChanged(
            pb::LaunchPermissionChanged {
                image_id: id.clone(),
                added: vec![],
                removed: vec![pb::LaunchPermissionRecord {
                    user_id: ORG_MEMBER.into(),
                    ..Default::default()
                }],
            }
        )]
    );
    ok(&mut h, ORG_MEMBER, run(&id));
    assert!(
        ok(&mut h, ORG_MEMBER, cancel.clone()).is_empty(),
        "no own grant left"
    );
    // The grantee loses the image; the owner may share it again.
    ok(&mut h, GRANTEE, cancel.clone());
    denied(
        &mut h,
        GRANTEE,
        cancel.clone(),
        ErrorCode::InvalidAmiIdNotFound,
    );
    denied(&mut h, GRANTEE, run(&id), ErrorCode::InvalidAmiIdNotFound);
    ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)]));
    ok(&mut h, GRANTEE, run(&id));
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// DescribeImages owners / executable users (§5.8)
// -------------------------------------------------------------------------------------------

#[test]
fn describe_images_executable_users_and_owners_with_organizations() {
    let mut h = world();
    let (by_id, _) = image(&mut h, OWNER, Enc::Plain);
    let (by_org, _) = image(&mut h, OWNER, Enc::Plain);
    let (public, _) = image(&mut h, OWNER, Enc::Plain);
    let (own, _) = image(&mut h, ORG_MEMBER, Enc::Plain);
    ok(&mut h, OWNER, add(&by_id, vec![user(ORG_MEMBER)]));
    ok(&mut h, OWNER, add(&by_org, vec![org_grant(&org())]));
    ok(&mut h, OWNER, add(&public, vec![group("all")]));
    let q = |owners: &[&str], users: &[&str]| pb::DescribeImagesRequest {
        owners: owners.iter().map(|s| s.to_string()).collect(),
        executable_users: users.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // Default: own + public + shared (id, org).
    assert_eq!(
        sorted(image_ids(&h, ORG_MEMBER, q(&[], &[]))),
        sorted(vec![
            by_id.clone(),
            by_org.clone(),
            public.clone(),
            own.clone()
        ])
    );
    // self: shared with the caller, including through its organization; not public, not own.
    assert_eq!(
        sorted(image_ids(&h, ORG_MEMBER, q(&[], &["self"]))),
        sorted(vec![by_id.clone(), by_org.clone()])
    );
    assert_eq!(
        sorted(image_ids(&h, ORG_MEMBER, q(&[], &[ORG_MEMBER]))),
        sorted(vec![by_id.clone(), by_org.clone()]),
        "the caller's own id is `self`"
    );
    // all: public.
    assert_eq!(
        image_ids(&h, ORG_MEMBER, q(&[], &["all"])),
        vec![public.clone()]
    );
    // Another id: shared with exactly that account by id, not through an organization.
    assert_eq!(
        image_ids(&h, OWNER, q(&[], &[ORG_MEMBER])),
        vec![by_id.clone()]
    );
    assert!(image_ids(&h, OWNER, q(&[], &[OU_MEMBER])).is_empty());
    // Owners.
    assert_eq!(
        image_ids(&h, ORG_MEMBER, q(&["self"], &[])),
        vec![own.clone()]
    );
    assert_eq!(
        sorted(image_ids(&h, ORG_MEMBER, q(&[OWNER], &[]))),
        sorted(vec![by_id.clone(), by_org.clone(), public.clone()])
    );
    assert_eq!(
        sorted(image_ids(&h, ORG_MEMBER, q(&[OWNER], &["self"]))),
        sorted(vec![by_id, by_org])
    );
    // The stranger sees the public one only, and no tags of others.
    assert_eq!(image_ids(&h, STRANGER, q(&[], &[])), vec![public.clone()]);
}

// -------------------------------------------------------------------------------------------
// Using what is shared: launch, CreateImage, copy
// -------------------------------------------------------------------------------------------

#[test]
fn a_grantee_launches_a_shared_image_and_makes_its_own_image_from_the_instance() {
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(&mut h, OWNER, add(&id, vec![org_grant(&org())]));
    let events = ok(&mut h, OU_MEMBER, run(&id));
    let Some(Payload::InstanceLaunched(launched)) = events
        .iter()
        .find(|p| matches!(p, Payload::InstanceLaunched(_)))
    else {
        panic!("{events:?}")
    };
    assert_eq!(launched.owner_id, OU_MEMBER);
    let iid = launched.instance_id.clone();
    h.advance(h.config.instance_start_ms);
    assert_eq!(
        h.state.instances[&iid].state,
        crate::state::InstanceState::Running
    );
    // Its volumes are the grantee's, so it may image its instance.
    assert!(h
        .state
        .volumes
        .values()
        .filter(|v| v.attachment.as_ref().is_some_and(|a| a.instance_id == iid))
        .all(|v| v.owner_id == OU_MEMBER));
    let d = ok(
        &mut h,
        OU_MEMBER,
        Command::CreateImage(pb::CreateImageRequest {
            instance_id: iid.clone(),
            name: "mine now".into(),
            ..Default::default()
        }),
    );
    let Some(Payload::ImageRegistered(reg)) = d.first() else {
        panic!("{d:?}")
    };
    assert_eq!(reg.owner_id, OU_MEMBER);
    // The owner cannot image the grantee's instance.
    denied(
        &mut h,
        OWNER,
        Command::CreateImage(pb::CreateImageRequest {
            instance_id: iid,
            name: "not mine".into(),
            ..Default::default()
        }),
        ErrorCode::InvalidInstanceIdNotFound,
    );
    // Revoking the grant stops new launches; the running instance is untouched.
    ok(&mut h, OWNER, remove(&id, vec![org_grant(&org())]));
    denied(&mut h, OU_MEMBER, run(&id), ErrorCode::InvalidAmiIdNotFound);
    h.assert_replay_equals_live();
}

#[test]
fn copying_a_shared_image_needs_its_snapshots() {
    let copy = |id: &str| {
        Command::CopyImage(pb::CopyImageRequest {
            source_image_id: id.into(),
            source_region: "us-east-1".into(),
            name: "my copy".into(),
            ..Default::default()
        })
    };
    for enc in [Enc::Plain, Enc::Cmk] {
        let mut h = world();
        let (id, sid) = image(&mut h, OWNER, enc);
        ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)]));
        let m = denied(&mut h, GRANTEE, copy(&id), ErrorCode::InvalidRequest);
        assert_eq!(
            m,
            "You do not have permission to access the storage of this ami"
        );
        ok(&mut h, OWNER, share_volume(&sid, true, &[GRANTEE], &[]));
        let d = h.when(GRANTEE, copy(&id)).expect("copy accepted");
        let Reply::CopyImage(r) = d.reply else {
            panic!()
        };
        assert_eq!(h.state.images[r.image_id.as_str()].owner(), GRANTEE);
        assert!(
            h.state.images[r.image_id.as_str()]
                .launch_permissions
                .is_empty(),
            "a copy is private"
        );
        // The saga's read of the source, as the grantee, passes the same checks.
        let copy_id = d.correlation_id.expect("copy id");
        let task = h.state.copies[&copy_id].clone();
        let read = h
            .when(
                crate::ids::SYSTEM_ACCOUNT,
                Command::Saga(task.read_step("us-east-1", vec![])),
            )
            .expect("read step");
        let Reply::Saga(resp) = read.reply else {
            panic!()
        };
        assert!(resp.source.is_some_and(|s| s.ok), "{enc:?}");
        h.assert_replay_equals_live();
    }
}

#[test]
fn a_shared_snapshot_is_restorable_by_and_described_to_its_grantees() {
    let mut h = world();
    let a = snapshot(&mut h, 1, OWNER, Enc::Plain);
    let b = snapshot(&mut h, 2, OWNER, Enc::Plain);
    let c = snapshot(&mut h, 3, OWNER, Enc::Plain);
    ok(
        &mut h,
        OWNER,
        share_volume(&a, true, &[GRANTEE, ORG_MEMBER], &[]),
    );
    ok(&mut h, OWNER, share_volume(&b, true, &[], &["all"]));
    let q = |users: &[&str]| pb::DescribeSnapshotsRequest {
        restorable_by_user_ids: users.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(
        snapshot_ids(&h, GRANTEE, q(&[])),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(snapshot_ids(&h, GRANTEE, q(&["self"])), vec![a.clone()]);
    assert_eq!(snapshot_ids(&h, STRANGER, q(&[])), vec![b.clone()]);
    assert_eq!(snapshot_ids(&h, STRANGER, q(&["all"])), vec![b.clone()]);
    assert_eq!(
        snapshot_ids(&h, OWNER, q(&[GRANTEE])),
        vec![a.clone(), b.clone()],
        "what the owner's snapshots grant to an account (explicitly or publicly)"
    );
    assert_eq!(snapshot_ids(&h, OWNER, q(&[STRANGER])), vec![b.clone()]);
    assert_eq!(
        snapshot_ids(&h, OWNER, q(&[])),
        vec![a.clone(), b.clone(), c.clone()]
    );
    // The attribute, the reset.
    let attr = |h: &Harness| match h
        .read(
            OWNER,
            Query::DescribeSnapshotAttribute(pb::DescribeSnapshotAttributeRequest {
                snapshot_id: a.clone(),
                attribute: "createVolumePermission".into(),
                dry_run: false,
            }),
        )
        .unwrap()
    {
        Answer::DescribeSnapshotAttribute(r) => r.create_volume_permissions,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        attr(&h)
            .iter()
            .map(|p| p.user_id.as_str())
            .collect::<Vec<_>>(),
        vec![ORG_MEMBER, GRANTEE]
    );
    ok(&mut h, OWNER, share_volume(&a, true, &[], &["all"]));
    assert_eq!(attr(&h).last().map(|p| p.group.as_str()), Some("all"));
    let reset = Command::ResetSnapshotAttribute(pb::ResetSnapshotAttributeRequest {
        snapshot_id: a.clone(),
        attribute: "createVolumePermission".into(),
        dry_run: false,
    });
    let events = ok(&mut h, OWNER, reset.clone());
    let Payload::CreateVolumePermissionChanged(e) = &events[0] else {
        panic!()
    };
    assert_eq!(e.removed.len(), 3);
    assert!(attr(&h).is_empty());
    assert!(ok(&mut h, OWNER, reset).is_empty());
    assert_eq!(snapshot_ids(&h, GRANTEE, q(&[])), vec![b.clone()]);
    h.assert_replay_equals_live();
}

#[test]
fn modify_snapshot_attribute_checks_in_order() {
    use ErrorCode::*;
    let mut h = world();
    let sid = snapshot(&mut h, 1, OWNER, Enc::Plain);
    let req = |f: fn(&mut pb::ModifySnapshotAttributeRequest)| {
        let mut r = pb::ModifySnapshotAttributeRequest {
            snapshot_id: "snap-0000000000000000f".into(),
            ..Default::default()
        };
        f(&mut r);
        Command::ModifySnapshotAttribute(r)
    };
    denied(
        &mut h,
        OWNER,
        Command::ModifySnapshotAttribute(Default::default()),
        MissingParameter,
    );
    denied(&mut h, OWNER, req(|_| {}), MissingParameter);
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.snapshot_id = "snap-x".into();
            r.user_ids = vec![GRANTEE.into()];
        }),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.attribute = "createVolumePermission".into();
            r.create_volume_permission = Some(Default::default());
        }),
        InvalidParameterCombination,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.create_volume_permission = Some(pb::CreateVolumePermissionModifications {
                add: vec![pb::CreateVolumePermission {
                    user_id: GRANTEE.into(),
                    group: String::new(),
                }],
                remove: vec![pb::CreateVolumePermission {
                    user_id: STRANGER.into(),
                    group: String::new(),
                }],
            })
        }),
        InvalidParameterCombination,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| r.attribute = "productCodes".into()),
        UnsupportedOperation,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| r.attribute = "description".into()),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.attribute = "createVolumePermission".into();
            r.user_ids = vec![GRANTEE.into()];
        }),
        MissingParameter,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.operation_type = "add".into();
            r.user_ids = vec!["12".into()];
        }),
        InvalidUserIdMalformed,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.operation_type = "add".into();
            r.group_names = vec!["everyone".into()];
        }),
        InvalidParameterValue,
    );
    denied(
        &mut h,
        OWNER,
        req(|r| {
            r.operation_type = "add".into();
            r.user_ids = (0..501)
                .map(|i| format!("{:012}", 100_000_000_000u64 + i))
                .collect();
        }),
        InvalidParameterValue,
    );
    // DryRun before existence.
    denied(
        &mut h,
        STRANGER,
        req(|r| {
            r.operation_type = "add".into();
            r.user_ids = vec![GRANTEE.into()];
            r.dry_run = true;
        }),
        DryRunOperation,
    );
    // 500 changes are fine; the event lists the accounts in order.
    let many: Vec<String> = (0..500)
        .map(|i| format!("{:012}", 100_000_000_000u64 + i))
        .collect();
    let events = ok(
        &mut h,
        OWNER,
        Command::ModifySnapshotAttribute(pb::ModifySnapshotAttributeRequest {
            snapshot_id: sid.clone(),
            attribute: "createVolumePermission".into(),
            operation_type: "add".into(),
            user_ids: many.clone(),
            ..Default::default()
        }),
    );
    let Payload::CreateVolumePermissionChanged(e) = &events[0] else {
        panic!()
    };
    assert_eq!(e.added.len(), 500);
    assert_eq!(h.state.snapshots[&sid].create_volume_permissions.len(), 500);
    // Flat remove without `attribute` ([sim] lists imply createVolumePermission).
    let events = ok(
        &mut h,
        OWNER,
        Command::ModifySnapshotAttribute(pb::ModifySnapshotAttributeRequest {
            snapshot_id: sid.clone(),
            operation_type: "remove".into(),
            user_ids: many[..10].to_vec(),
            ..Default::default()
        }),
    );
    assert_eq!(events.len(), 1);
    assert_eq!(h.state.snapshots[&sid].create_volume_permissions.len(), 490);
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// What is shared with an account (the coordinator's per-region answer)
// -------------------------------------------------------------------------------------------

#[test]
fn shared_with_account_lists_images_and_snapshots_with_the_grants_that_reach_it() {
    let mut h = world();
    let (by_org, _) = image(&mut h, OWNER, Enc::Plain);
    let (public, _) = image(&mut h, OWNER, Enc::Plain);
    let (mine, _) = image(&mut h, OU_MEMBER, Enc::Plain);
    let (by_third, _) = image(&mut h, STRANGER, Enc::Plain);
    let snap = snapshot(&mut h, 100, OWNER, Enc::Plain);
    ok(
        &mut h,
        OWNER,
        add(&by_org, vec![org_grant(&org()), ou_grant(&team())]),
    );
    ok(&mut h, OWNER, add(&public, vec![group("all")]));
    ok(&mut h, OU_MEMBER, add(&mine, vec![user(GRANTEE)]));
    ok(&mut h, STRANGER, add(&by_third, vec![user(GRANTEE)]));
    ok(&mut h, OWNER, share_volume(&snap, true, &[OU_MEMBER], &[]));
    let ctx = |a| crate::ReadCtx::new("us-east-1", a, h.now_ms).with_membership(&h.membership);
    let r = shared_with_account(&h.state, &ctx(OU_MEMBER), OU_MEMBER, false);
    assert_eq!(r.region, "us-east-1");
    let imgs: Vec<(String, Vec<pb::LaunchPermission>)> = r
        .images
        .iter()
        .map(|s| {
            (
                s.image.as_ref().unwrap().image_id.clone(),
                s.granted_by.clone(),
            )
        })
        .collect();
    assert_eq!(
        imgs,
        vec![
            (by_org.clone(), vec![org_grant(&org()), ou_grant(&team())]),
            (public.clone(), vec![group("all")]),
        ],
        "own images are not listed"
    );
    assert_eq!(r.snapshots.len(), 1);
    assert_eq!(r.snapshots[0].granted_by[0].user_id, OU_MEMBER);
    let r = shared_with_account(&h.state, &ctx(OU_MEMBER), OU_MEMBER, true);
    assert_eq!(r.images.len(), 1, "without public");
    // Asking about another account: only what the caller itself shares with it.
    let r = shared_with_account(&h.state, &ctx(OU_MEMBER), GRANTEE, false);
    assert_eq!(
        r.images
            .iter()
            .map(|s| s.image.as_ref().unwrap().image_id.clone())
            .collect::<Vec<_>>(),
        vec![mine.clone()]
    );
    let r = shared_with_account(&h.state, &ctx(GRANTEE), GRANTEE, true);
    let mut ids: Vec<String> = r
        .images
        .iter()
        .map(|s| s.image.as_ref().unwrap().image_id.clone())
        .collect();
    ids.sort();
    let mut want = vec![mine, by_third];
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn sharing_events_replay_to_the_live_state() {
    // A long mixed history (every sharing event kind, interleaved with launches and
    // deregistrations) folds to the same digest from the log.
    let mut h = world();
    let (a, sa) = image(&mut h, OWNER, Enc::Plain);
    let (b, _) = image(&mut h, OWNER, Enc::Cmk);
    ok(&mut h, OWNER, add(&a, vec![user(GRANTEE), group("all")]));
    ok(&mut h, OWNER, add(&b, vec![ou_grant(&dept())]));
    ok(&mut h, OU_MEMBER, run(&b));
    ok(&mut h, OWNER, share_volume(&sa, true, &[GRANTEE], &["all"]));
    ok(
        &mut h,
        OWNER,
        Command::EnableImageBlockPublicAccess(pb::EnableImageBlockPublicAccessRequest {
            image_block_public_access_state: "block-new-sharing".into(),
            dry_run: false,
        }),
    );
    ok(
        &mut h,
        GRANTEE,
        Command::CancelImageLaunchPermission(pb::CancelImageLaunchPermissionRequest {
            image_id: a.clone(),
            dry_run: false,
        }),
    );
    ok(&mut h, OWNER, share_volume(&sa, false, &[], &["all"]));
    ok(
        &mut h,
        OWNER,
        Command::ModifyImageAttribute(pb::ModifyImageAttributeRequest {
            image_id: b.clone(),
            description: Some(pb::AttributeValue { value: "b".into() }),
            ..Default::default()
        }),
    );
    ok(
        &mut h,
        OWNER,
        Command::DeregisterImage(pb::DeregisterImageRequest {
            image_id: a.clone(),
            ..Default::default()
        }),
    );
    ok(
        &mut h,
        OWNER,
        Command::DisableImageBlockPublicAccess(Default::default()),
    );
    h.advance(2 * 3_600_000);
    h.assert_replay_equals_live();
    assert!(h.state.image_block_public_access.is_empty());
    assert!(h.state.snapshots[&sa]
        .create_volume_permissions
        .contains(GRANTEE));
    assert!(!h.state.snapshots[&sa].public);
}

#[test]
fn aws_managed_keys_are_recognised_in_every_form() {
    let key_arn = crate::kms::aws_managed_key_arn("us-east-1", OWNER);
    for k in [key_arn.as_str(), MANAGED, "alias/aws/ebs"] {
        assert!(is_aws_managed_key(k), "{k}");
    }
    assert!(!is_aws_managed_key(CMK));
    assert!(!is_aws_managed_key(""));
    // A snapshot encrypted under the key ARN form (what encryption by default records now) can
    // be shared with nobody.
    let mut h = world();
    h.given([Payload::SnapshotCreated(pb::SnapshotCreated {
        snapshot_id: "snap-000000000000000aa".into(),
        owner_id: OWNER.into(),
        volume_id: "vol-ffffffff".into(),
        volume_size: 8,
        encrypted: true,
        kms_key_id: key_arn.clone(),
        start_time_ms: T0,
        complete_at_ms: T0,
        ..Default::default()
    })]);
    let m = denied(
        &mut h,
        OWNER,
        share_volume("snap-000000000000000aa", true, &[GRANTEE], &[]),
        ErrorCode::OperationNotPermitted,
    );
    assert_eq!(
        m,
        "Encrypted snapshots with EBS default key cannot be shared"
    );
}

/// `[unconfirmed]` mechanism (EC2_SEMANTICS.md §5.10): making an AMI public sets its
/// DeprecationTime to creation + 2 years (730 days here) if none is set; making it private again
/// keeps the date, and sharing with an account does not set one.
#[test]
fn unconfirmed_public_ami_gets_a_deprecation_time_two_years_after_creation() {
    let mut h = world();
    let (id, _) = image(&mut h, OWNER, Enc::Plain);
    ok(&mut h, OWNER, add(&id, vec![user(GRANTEE)]));
    let shared = describe_image(&h, OWNER, &id).unwrap();
    assert_eq!(shared.deprecation_time, "", "a private share sets no date");

    ok(&mut h, OWNER, add(&id, vec![group("all")]));
    let public = describe_image(&h, OWNER, &id).unwrap();
    let created = h.state.images[id.as_str()].registered.creation_date_ms;
    assert_eq!(
        public.deprecation_time,
        crate::time::iso(created + 730 * 24 * 3_600_000)
    );
    // Later changes keep the first date: private, then public again.
    h.now_ms += 3_600_000;
    ok(&mut h, OWNER, remove(&id, vec![group("all")]));
    ok(&mut h, OWNER, add(&id, vec![group("all")]));
    assert_eq!(
        describe_image(&h, OWNER, &id).unwrap().deprecation_time,
        public.deprecation_time
    );
    h.assert_replay_equals_live();
}
