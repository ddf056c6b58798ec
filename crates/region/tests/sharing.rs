//! Accounts and sharing over gRPC: bearer-token authentication with an accounts file (no token,
//! a wrong token, another account's token), and the sharing RPCs end to end with organization
//! membership from the file.

mod common;

use std::sync::Arc;

use amisim_chaos::{Clock, VirtualClock};
use amisim_core::accounts::{AccountEntry, AccountsFile, OperatorEntry, OrganizationEntry};
use amisim_core::Accounts;
use amisim_log::{EventLog, MemoryLog};
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::*;
use amisim_region::{RegionConfig, RegionNode};
use common::*;
use tonic::transport::Channel;
use tonic::Code;

const MEMBER: &str = "222233334444";
const MGMT: &str = "999988887777";
const ORG_ID: &str = "o-abcde12345";
const ORG_ARN: &str = "arn:aws:organizations::999988887777:organization/o-abcde12345";
const SNAP: &str = "snap-0000000000000000a";

fn accounts() -> Arc<Accounts> {
    let entry = |id: &str, token: &str, org: Option<&str>| AccountEntry {
        id: id.into(),
        token: token.into(),
        organization: org.map(Into::into),
        ou: None,
    };
    Arc::new(
        Accounts::from_file(AccountsFile {
            accounts: vec![
                entry(OWNER, "tok-owner", None),
                entry(OTHER, "tok-other", None),
                entry(MEMBER, "tok-member", Some(ORG_ID)),
            ],
            organizations: vec![OrganizationEntry {
                id: ORG_ID.into(),
                management_account: MGMT.into(),
            }],
            organizational_units: vec![],
            operator: Some(OperatorEntry {
                token: "tok-operator".into(),
            }),
        })
        .unwrap(),
    )
}

/// A node with the accounts file, a virtual clock, and a completed snapshot of OWNER in its log.
async fn served() -> (Served, VirtualClock) {
    let log = Arc::new(MemoryLog::new());
    let vol = "vol-0000000000000000a";
    log.append(vec![
        envelope(T0, volume_created(vol, T0, T0)),
        envelope(
            T0,
            Payload::VolumeAvailable(VolumeAvailable {
                volume_id: vol.into(),
            }),
        ),
        envelope(
            T0,
            Payload::SnapshotCreated(SnapshotCreated {
                snapshot_id: SNAP.into(),
                owner_id: OWNER.into(),
                volume_id: vol.into(),
                volume_size: 8,
                start_time_ms: T0,
                complete_at_ms: T0,
                ..Default::default()
            }),
        ),
        envelope(
            T0,
            Payload::SnapshotCompleted(SnapshotCompleted {
                snapshot_id: SNAP.into(),
            }),
        ),
    ])
    .unwrap();
    let clock = VirtualClock::new(T0);
    let c = clock.clone();
    let cfg = RegionConfig {
        accounts: Some(accounts()),
        ..config(3)
    };
    let node = RegionNode::start_with_clock(cfg, log as Arc<dyn EventLog>, move |last| {
        c.set(last);
        Arc::new(c) as Arc<dyn Clock>
    })
    .unwrap();
    (Served::start(node).await, clock)
}

/// A request with `authorization: Bearer <token>`.
fn bearer<T>(token: &str, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn assert_auth_failure(st: &tonic::Status) {
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("AuthFailure")
    );
    assert_eq!(
        st.message(),
        "AuthFailure: AWS was not able to validate the provided access credentials"
    );
}

fn error_code(st: &tonic::Status) -> &str {
    meta(st.metadata(), "x-amisim-error-code").unwrap_or("")
}

#[tokio::test]
async fn with_an_accounts_file_only_a_known_bearer_token_authenticates() {
    let (s, _clock) = served().await;
    let mut ec2 = s.ec2().await;
    let head = s.node.head_seq();

    // No token at all (reads and writes), even with x-amisim-account.
    let st = ec2
        .describe_volumes(DescribeVolumesRequest::default())
        .await
        .unwrap_err();
    assert_auth_failure(&st);
    let st = ec2
        .create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap_err();
    assert_auth_failure(&st);
    // A wrong token, a token without the scheme, another scheme.
    for value in ["Bearer nope", "tok-owner", "Basic tok-owner", "Bearer "] {
        let mut r = tonic::Request::new(create_volume(8));
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let st = ec2.create_volume(r).await.unwrap_err();
        assert_auth_failure(&st);
    }
    assert_eq!(s.node.head_seq(), head, "refused callers write nothing");

    // A good token wins over x-amisim-account, which is ignored.
    let mut r = bearer("tok-owner", create_volume(8));
    r.metadata_mut()
        .insert("x-amisim-account", OTHER.parse().unwrap());
    let v = ec2.create_volume(r).await.unwrap().into_inner();
    assert_eq!(s.node.state().volumes[&v.volume_id].owner_id, OWNER);

    // Another account's token acts as that account: it neither sees nor changes OWNER's
    // resources.
    let theirs = ec2
        .describe_volumes(bearer("tok-other", DescribeVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.volumes.is_empty());
    let head = s.node.head_seq();
    let st = ec2
        .delete_snapshot(bearer(
            "tok-other",
            DeleteSnapshotRequest {
                snapshot_id: SNAP.into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "InvalidSnapshot.NotFound");
    let st = ec2
        .modify_snapshot_attribute(bearer(
            "tok-other",
            ModifySnapshotAttributeRequest {
                snapshot_id: SNAP.into(),
                attribute: "createVolumePermission".into(),
                operation_type: "add".into(),
                user_ids: vec![OTHER.into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "InvalidSnapshot.NotFound");
    assert_eq!(s.node.head_seq(), head);
    s.stop().await;
}

async fn register(ec2: &mut Ec2Client<Channel>, clock: &VirtualClock, s: &Served) -> String {
    let id = ec2
        .register_image(bearer(
            "tok-owner",
            RegisterImageRequest {
                name: "shared over grpc".into(),
                root_device_name: "/dev/xvda".into(),
                block_device_mappings: vec![BlockDeviceMapping {
                    device_name: "/dev/xvda".into(),
                    ebs: Some(EbsBlockDevice {
                        snapshot_id: SNAP.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                architecture: "x86_64".into(),
                virtualization_type: "hvm".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image_id;
    clock.advance(amisim_core::Config::default().register_ebs_ms);
    let node = s.node.clone();
    let i = id.clone();
    wait_until("the image available", 10, move || {
        node.state().images[i.as_str()].state == amisim_core::state::ImageState::Available
    })
    .await;
    id
}

fn run(image_id: &str) -> RunInstancesRequest {
    RunInstancesRequest {
        image_id: image_id.into(),
        min_count: 1,
        max_count: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_image_shared_with_an_organization_is_launched_by_its_members_only() {
    let (s, clock) = served().await;
    let mut ec2 = s.ec2().await;
    let id = register(&mut ec2, &clock, &s).await;

    let st = ec2
        .run_instances(bearer("tok-member", run(&id)))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(error_code(&st), "InvalidAMIID.NotFound");

    let resp = ec2
        .modify_image_attribute(bearer(
            "tok-owner",
            ModifyImageAttributeRequest {
                image_id: id.clone(),
                launch_permission: Some(LaunchPermissionModifications {
                    add: vec![LaunchPermission {
                        organization_arn: ORG_ARN.into(),
                        ..Default::default()
                    }],
                    remove: vec![],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(meta(resp.metadata(), "x-amisim-consistency-token").is_some());
    assert!(resp.into_inner().r#return);

    // The member launches it; an account outside the organization still cannot.
    let r = ec2
        .run_instances(bearer("tok-member", run(&id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.owner_id, MEMBER);
    let st = ec2
        .run_instances(bearer("tok-other", run(&id)))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "InvalidAMIID.NotFound");

    // Only the owner changes or describes its attributes.
    let head = s.node.head_seq();
    let st = ec2
        .modify_image_attribute(bearer(
            "tok-member",
            ModifyImageAttributeRequest {
                image_id: id.clone(),
                attribute: "launchPermission".into(),
                operation_type: "add".into(),
                user_ids: vec![OTHER.into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "AuthFailure");
    let st = ec2
        .deregister_image(bearer(
            "tok-member",
            DeregisterImageRequest {
                image_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "AuthFailure");
    assert_eq!(s.node.head_seq(), head, "denied calls write nothing");
    let attr = ec2
        .describe_image_attribute(bearer(
            "tok-owner",
            DescribeImageAttributeRequest {
                image_id: id.clone(),
                attribute: "launchPermission".into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attr.launch_permissions.len(), 1);
    assert_eq!(attr.launch_permissions[0].organization_arn, ORG_ARN);

    // Image block public access.
    ec2.enable_image_block_public_access(bearer(
        "tok-owner",
        EnableImageBlockPublicAccessRequest {
            image_block_public_access_state: "block-new-sharing".into(),
            dry_run: false,
        },
    ))
    .await
    .unwrap();
    let state = ec2
        .get_image_block_public_access_state(bearer(
            "tok-owner",
            GetImageBlockPublicAccessStateRequest { dry_run: false },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.image_block_public_access_state, "block-new-sharing");
    assert_eq!(state.managed_by, "account");
    let public = ModifyImageAttributeRequest {
        image_id: id.clone(),
        attribute: "launchPermission".into(),
        operation_type: "add".into(),
        user_groups: vec!["all".into()],
        ..Default::default()
    };
    let st = ec2
        .modify_image_attribute(bearer("tok-owner", public.clone()))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(error_code(&st), "OperationNotPermitted");
    ec2.disable_image_block_public_access(bearer(
        "tok-owner",
        DisableImageBlockPublicAccessRequest { dry_run: false },
    ))
    .await
    .unwrap();
    ec2.modify_image_attribute(bearer("tok-owner", public))
        .await
        .unwrap();
    let seen = ec2
        .describe_images(bearer(
            "tok-other",
            DescribeImagesRequest {
                executable_users: vec!["all".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.images.len(), 1);
    assert!(seen.images[0].public);

    // Reset: private again.
    ec2.reset_image_attribute(bearer(
        "tok-owner",
        ResetImageAttributeRequest {
            image_id: id.clone(),
            attribute: "launchPermission".into(),
            dry_run: false,
        },
    ))
    .await
    .unwrap();
    let st = ec2
        .run_instances(bearer("tok-member", run(&id)))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "InvalidAMIID.NotFound");
    s.stop().await;
}

#[tokio::test]
async fn snapshot_permissions_over_grpc() {
    let (s, _clock) = served().await;
    let mut ec2 = s.ec2().await;
    ec2.modify_snapshot_attribute(bearer(
        "tok-owner",
        ModifySnapshotAttributeRequest {
            snapshot_id: SNAP.into(),
            create_volume_permission: Some(CreateVolumePermissionModifications {
                add: vec![CreateVolumePermission {
                    user_id: OTHER.into(),
                    group: String::new(),
                }],
                remove: vec![],
            }),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let mine = ec2
        .describe_snapshots(bearer(
            "tok-other",
            DescribeSnapshotsRequest {
                restorable_by_user_ids: vec!["self".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.snapshots.len(), 1);
    assert_eq!(mine.snapshots[0].snapshot_id, SNAP);
    let none = ec2
        .describe_snapshots(bearer("tok-member", DescribeSnapshotsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.snapshots.is_empty());
    let attr = ec2
        .describe_snapshot_attribute(bearer(
            "tok-owner",
            DescribeSnapshotAttributeRequest {
                snapshot_id: SNAP.into(),
                attribute: "createVolumePermission".into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attr.create_volume_permissions[0].user_id, OTHER);
    let st = ec2
        .describe_snapshot_attribute(bearer(
            "tok-other",
            DescribeSnapshotAttributeRequest {
                snapshot_id: SNAP.into(),
                attribute: "createVolumePermission".into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "AuthFailure");
    ec2.reset_snapshot_attribute(bearer(
        "tok-owner",
        ResetSnapshotAttributeRequest {
            snapshot_id: SNAP.into(),
            attribute: "createVolumePermission".into(),
            dry_run: false,
        },
    ))
    .await
    .unwrap();
    let none = ec2
        .describe_snapshots(bearer("tok-other", DescribeSnapshotsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.snapshots.is_empty());
    // The node's state equals a replay of its log.
    let node = s.stop().await;
    let replayed = amisim_region::replay("us-east-1", node.log().as_ref()).unwrap();
    assert_eq!(replayed.digest(), node.state().digest());
}
