//! Accounts across the coordinator: the gateway forwards `authorization` untouched to the region
//! nodes (which authenticate it), the Coordinator service authenticates every call the same
//! way, and DescribeSharedWithAccount answers "what is shared with account X, in every region"
//! from the global projection, with organization membership from the accounts file.

use std::sync::Arc;
use std::time::Duration;

use amisim_chaos::{Clock, VirtualClock};
use amisim_coordinator::{run_coordinator, CoordinatorConfig, FollowerConfig, RegionRoutes};
use amisim_core::accounts::{AccountEntry, AccountsFile, OperatorEntry, OrganizationEntry};
use amisim_core::Accounts;
use amisim_log::{EventLog, MemoryLog};
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::*;
use amisim_region::{serve, RegionConfig, RegionNode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const OWNER: &str = "111122223333";
const OTHER: &str = "444455556666";
const MEMBER: &str = "222233334444";
const ORG_ID: &str = "o-abcde12345";
const ORG_ARN: &str = "arn:aws:organizations::999988887777:organization/o-abcde12345";
/// 2024-05-01T00:00:00Z.
const T0: u64 = 1_714_521_600_000;

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
                management_account: "999988887777".into(),
            }],
            organizational_units: vec![],
            operator: Some(OperatorEntry {
                token: "tok-operator".into(),
            }),
        })
        .unwrap(),
    )
}

struct World {
    nodes: Vec<(Arc<RegionNode>, VirtualClock, oneshot::Sender<()>)>,
    channel: Channel,
    _stop: oneshot::Sender<()>,
}

/// A completed snapshot `snap` of OWNER, written into a region's log before its node starts.
fn snapshot_events(region: &str, snap: &str) -> Vec<Event> {
    let vol = format!("vol-{}", snap.trim_start_matches("snap-"));
    let env = |payload| Event {
        region: region.into(),
        event_id: format!("seed-{snap}"),
        sim_time_ms: T0,
        account_id: OWNER.into(),
        payload: Some(payload),
        ..Default::default()
    };
    vec![
        env(Payload::SnapshotCreated(SnapshotCreated {
            snapshot_id: snap.into(),
            owner_id: OWNER.into(),
            volume_id: vol,
            volume_size: 8,
            start_time_ms: T0,
            complete_at_ms: T0,
            ..Default::default()
        })),
        env(Payload::SnapshotCompleted(SnapshotCompleted {
            snapshot_id: snap.into(),
        })),
    ]
}

async fn world() -> World {
    let accounts = accounts();
    let mut routes = RegionRoutes::new();
    let mut nodes = Vec::new();
    for (i, region) in ["eu-west-1", "us-east-1"].into_iter().enumerate() {
        let log = Arc::new(MemoryLog::new());
        log.append(snapshot_events(region, &format!("snap-{:017x}", i + 1)))
            .unwrap();
        let clock = VirtualClock::new(T0);
        let c = clock.clone();
        let cfg = RegionConfig {
            seed: Some(i as u64),
            accounts: Some(accounts.clone()),
            ..RegionConfig::new(region)
        };
        let node = RegionNode::start_with_clock(cfg, log as Arc<dyn EventLog>, move |last| {
            c.set(last);
            Arc::new(c) as Arc<dyn Clock>
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(node.clone(), listener, async move {
            let _ = stopped.await;
        }));
        routes
            .insert_url(region, &format!("http://{addr}"))
            .unwrap();
        nodes.push((node, clock, stop));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = CoordinatorConfig {
        followers: FollowerConfig {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..FollowerConfig::default()
        },
        drive_sagas: false,
        accounts: Some(accounts),
        ..CoordinatorConfig::default()
    };
    tokio::spawn(run_coordinator(routes, config, listener, async move {
        let _ = stopped.await;
    }));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    World {
        nodes,
        channel,
        _stop: stop,
    }
}

/// A request through the gateway: region and (optionally) a bearer token.
fn req<T>(region: &str, token: Option<&str>, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-amisim-region", region.parse().unwrap());
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn code(st: &tonic::Status) -> &str {
    st.metadata()
        .get("x-amisim-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_gateway_forwards_the_token_and_the_coordinator_checks_it() {
    let w = world().await;
    let mut ec2 = Ec2Client::new(w.channel.clone());
    let mut coord = CoordinatorClient::new(w.channel.clone());

    // Through the gateway, the region node decides: no token, a wrong one → AuthFailure.
    for token in [None, Some("nope")] {
        let st = ec2
            .describe_images(req("eu-west-1", token, DescribeImagesRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(code(&st), "AuthFailure");
    }
    // x-amisim-account alone is no credential.
    let mut r = req("eu-west-1", None, DescribeImagesRequest::default());
    r.metadata_mut()
        .insert("x-amisim-account", OWNER.parse().unwrap());
    assert_eq!(
        ec2.describe_images(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A good token reaches the node untouched.
    ec2.describe_images(req(
        "eu-west-1",
        Some("tok-owner"),
        DescribeImagesRequest::default(),
    ))
    .await
    .unwrap();

    // The Coordinator service itself: every RPC needs the token.
    let st = coord
        .describe_global_images(DescribeGlobalImagesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    assert_eq!(code(&st), "AuthFailure");
    let st = coord
        .get_projection_status(GetProjectionStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let st = coord
        .get_state_digest(GetGlobalStateDigestRequest::default())
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let st = coord
        .describe_shared_with_account(req(
            "us-east-1",
            Some("nope"),
            DescribeSharedWithAccountRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    coord
        .get_projection_status(req(
            "us-east-1",
            Some("tok-other"),
            GetProjectionStatusRequest::default(),
        ))
        .await
        .unwrap();
    for (n, _, s) in w.nodes {
        let _ = s.send(());
        n.shutdown().await;
    }
}

#[tokio::test]
async fn what_is_shared_with_an_account_in_every_region() {
    let w = world().await;
    let mut ec2 = Ec2Client::new(w.channel.clone());
    let mut coord = CoordinatorClient::new(w.channel.clone());

    // OWNER registers an image in each region, shares the eu-west-1 one with the organization
    // and makes the us-east-1 one public; shares the us-east-1 snapshot with OTHER.
    let mut images = Vec::new();
    let mut token = String::new();
    for (i, region) in ["eu-west-1", "us-east-1"].into_iter().enumerate() {
        let snap = format!("snap-{:017x}", i + 1);
        let id = ec2
            .register_image(req(
                region,
                Some("tok-owner"),
                RegisterImageRequest {
                    name: format!("image in {region}"),
                    root_device_name: "/dev/xvda".into(),
                    block_device_mappings: vec![BlockDeviceMapping {
                        device_name: "/dev/xvda".into(),
                        ebs: Some(EbsBlockDevice {
                            snapshot_id: snap.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .image_id;
        w.nodes[i]
            .1
            .advance(amisim_core::Config::default().register_ebs_ms);
        let node = w.nodes[i].0.clone();
        let image = id.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while node.state().images[image.as_str()].state != amisim_core::state::ImageState::Available
        {
            assert!(tokio::time::Instant::now() < deadline, "image available");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let grant = if region == "eu-west-1" {
            LaunchPermission {
                organization_arn: ORG_ARN.into(),
                ..Default::default()
            }
        } else {
            LaunchPermission {
                group: "all".into(),
                ..Default::default()
            }
        };
        let resp = ec2
            .modify_image_attribute(req(
                region,
                Some("tok-owner"),
                ModifyImageAttributeRequest {
                    image_id: id.clone(),
                    launch_permission: Some(LaunchPermissionModifications {
                        add: vec![grant],
                        remove: vec![],
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        if region == "us-east-1" {
            let r = ec2
                .modify_snapshot_attribute(req(
                    region,
                    Some("tok-owner"),
                    ModifySnapshotAttributeRequest {
                        snapshot_id: snap,
                        attribute: "createVolumePermission".into(),
                        operation_type: "add".into(),
                        user_ids: vec![OTHER.into()],
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
            token.push_str(
                r.metadata()
                    .get("x-amisim-consistency-token")
                    .unwrap()
                    .to_str()
                    .unwrap(),
            );
        } else {
            token.push_str(
                resp.metadata()
                    .get("x-amisim-consistency-token")
                    .unwrap()
                    .to_str()
                    .unwrap(),
            );
            token.push(',');
        }
        images.push(id);
    }

    let shared = |t: &str, account: &str, exclude_public: bool| {
        let mut r = req(
            "us-east-1",
            Some(t),
            DescribeSharedWithAccountRequest {
                account_id: account.into(),
                regions: vec![],
                consistency_token: token.clone(),
                exclude_public,
            },
        );
        r.set_timeout(Duration::from_secs(10));
        r
    };
    // The member: the org-shared image in eu-west-1, the public one in us-east-1.
    let r = coord
        .describe_shared_with_account(shared("tok-member", "", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.account_id, MEMBER);
    let regions: Vec<&str> = r.regions.iter().map(|x| x.region.as_str()).collect();
    assert_eq!(regions, ["eu-west-1", "us-east-1"]);
    let eu = &r.regions[0];
    assert_eq!(eu.images.len(), 1);
    assert_eq!(eu.images[0].image.as_ref().unwrap().image_id, images[0]);
    assert_eq!(eu.images[0].granted_by[0].organization_arn, ORG_ARN);
    let us = &r.regions[1];
    assert_eq!(us.images.len(), 1);
    assert_eq!(us.images[0].granted_by[0].group, "all");
    assert!(us.snapshots.is_empty());
    // Without public grants, only eu-west-1 has something.
    let r = coord
        .describe_shared_with_account(shared("tok-member", "", true))
        .await
        .unwrap()
        .into_inner();
    assert!(r.regions[1].images.is_empty());
    // OTHER (outside the organization): the public image and the snapshot shared with it.
    let r = coord
        .describe_shared_with_account(shared("tok-other", "", true))
        .await
        .unwrap()
        .into_inner();
    assert!(r.regions[0].images.is_empty());
    assert_eq!(r.regions[1].snapshots.len(), 1);
    assert_eq!(r.regions[1].snapshots[0].granted_by[0].user_id, OTHER);
    // The owner asks what it shares with the member; the member asking about OTHER learns
    // nothing of OWNER's sharing.
    let r = coord
        .describe_shared_with_account(shared("tok-owner", MEMBER, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.regions[0].images.len(), 1);
    let r = coord
        .describe_shared_with_account(shared("tok-member", OTHER, false))
        .await
        .unwrap()
        .into_inner();
    assert!(r
        .regions
        .iter()
        .all(|x| x.images.is_empty() && x.snapshots.is_empty()));
    let st = coord
        .describe_shared_with_account(shared("tok-member", "12", false))
        .await
        .unwrap_err();
    assert_eq!(code(&st), "InvalidUserID.Malformed");
    // The global reads resolve organization grants too.
    let g = coord
        .describe_global_images(req(
            "us-east-1",
            Some("tok-member"),
            DescribeGlobalImagesRequest {
                describe: Some(DescribeImagesRequest {
                    executable_users: vec!["self".into()],
                    ..Default::default()
                }),
                regions: vec![],
                consistency_token: token.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.images.len(), 1);
    assert_eq!(g.images[0].region, "eu-west-1");
    for (n, _, s) in w.nodes {
        let _ = s.send(());
        n.shutdown().await;
    }
}
