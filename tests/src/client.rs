//! gRPC client helpers: connections, request metadata, EC2 error checks, shared flows.

use std::future::Future;
use std::time::{Duration, Instant};

use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::region_client::RegionClient;
use amisim_proto::*;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The default account (as the servers assume without `x-amisim-account`).
pub const ACCOUNT: &str = "123456789012";

/// Connects to `url`, retrying for a few seconds (a process may print its address a moment
/// before its first accept).
pub async fn connect(url: &str) -> Channel {
    let endpoint = Channel::from_shared(url.to_string()).expect("valid url");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(ch) => return ch,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {url}: {e:?}"),
        }
    }
}

pub async fn ec2(url: &str) -> Ec2Client<Channel> {
    Ec2Client::new(connect(url).await)
}

pub async fn region_admin(url: &str) -> RegionClient<Channel> {
    RegionClient::new(connect(url).await)
}

/// A request for `region` as the default account.
pub fn req<T>(msg: T, region: &str) -> Request<T> {
    req_as(msg, region, ACCOUNT)
}

/// A request for `region` as `account`.
pub fn req_as<T>(msg: T, region: &str, account: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-amisim-region", region.parse().expect("ascii region"));
    r.metadata_mut()
        .insert("x-amisim-account", account.parse().expect("ascii account"));
    r
}

/// The `x-amisim-error-code` of a failed call ("" if absent).
pub fn error_code(s: &Status) -> &str {
    s.metadata()
        .get("x-amisim-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts a call failed with `grpc` status and EC2 code `ec2`, and that the message starts with
/// the code (DESIGN.md §7). Returns the status.
#[track_caller]
pub fn expect_ec2_error<T: std::fmt::Debug>(
    what: &str,
    res: Result<tonic::Response<T>, Status>,
    grpc: Code,
    ec2: &str,
) -> Status {
    let s = match res {
        Ok(r) => panic!("{what}: expected {ec2}, got success {:?}", r.into_inner()),
        Err(s) => s,
    };
    assert_eq!(
        error_code(&s),
        ec2,
        "{what}: wrong x-amisim-error-code in {s:?}"
    );
    assert_eq!(s.code(), grpc, "{what}: wrong gRPC status in {s:?}");
    assert!(
        s.message().starts_with(&format!("{ec2}: ")),
        "{what}: message does not start with the code: {s:?}"
    );
    s
}

/// Response metadata as a string ("" if absent).
pub fn meta<T>(r: &tonic::Response<T>, key: &str) -> String {
    r.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` until it returns `Ok(Some)`; an `Err` (the server failed or went away) ends the
/// wait at once, and so does `timeout` (as `DEADLINE_EXCEEDED`).
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Status>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "timed out after {timeout:?}: {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The durable head seq of a region node.
pub async fn head_seq(admin: &mut RegionClient<Channel>) -> u64 {
    admin
        .get_region_info(GetRegionInfoRequest {})
        .await
        .expect("GetRegionInfo")
        .into_inner()
        .head_seq
}

/// CreateVolume of `size` GiB gp3 in `<region>a`.
pub fn volume_request(region: &str, size: i32) -> CreateVolumeRequest {
    CreateVolumeRequest {
        availability_zone: format!("{region}a"),
        size: Some(size),
        volume_type: "gp3".into(),
        ..Default::default()
    }
}

/// Describes one volume by id.
pub async fn describe_volume(
    ec2: &mut Ec2Client<Channel>,
    region: &str,
    account: &str,
    volume_id: &str,
) -> Result<Volume, Status> {
    let r = ec2
        .describe_volumes(req_as(
            DescribeVolumesRequest {
                volume_ids: vec![volume_id.to_string()],
                ..Default::default()
            },
            region,
            account,
        ))
        .await?
        .into_inner();
    r.volumes
        .into_iter()
        .next()
        .ok_or_else(|| Status::not_found(format!("{volume_id} not in the answer")))
}

/// Describes one snapshot by id.
pub async fn describe_snapshot(
    ec2: &mut Ec2Client<Channel>,
    region: &str,
    snapshot_id: &str,
) -> Result<amisim_proto::Snapshot, Status> {
    let r = ec2
        .describe_snapshots(req(
            DescribeSnapshotsRequest {
                snapshot_ids: vec![snapshot_id.to_string()],
                ..Default::default()
            },
            region,
        ))
        .await?
        .into_inner();
    r.snapshots
        .into_iter()
        .next()
        .ok_or_else(|| Status::not_found(format!("{snapshot_id} not in the answer")))
}

/// Describes one image by id.
pub async fn describe_image(
    ec2: &mut Ec2Client<Channel>,
    region: &str,
    image_id: &str,
) -> Result<Image, Status> {
    let r = ec2
        .describe_images(req(
            DescribeImagesRequest {
                image_ids: vec![image_id.to_string()],
                ..Default::default()
            },
            region,
        ))
        .await?
        .into_inner();
    r.images
        .into_iter()
        .next()
        .ok_or_else(|| Status::not_found(format!("{image_id} not in the answer")))
}

/// What [`register_image`] made.
#[derive(Debug, Clone)]
pub struct Registered {
    pub volume_id: String,
    pub snapshot_id: String,
    pub image_id: String,
    /// `x-amisim-consistency-token` of the RegisterImage answer.
    pub consistency_token: String,
}

/// The EBS AMI flow: CreateVolume → available → CreateSnapshot → completed → RegisterImage
/// (root `/dev/xvda` from the snapshot). Assumes a large `--time-scale`.
pub async fn register_image(
    ec2: &mut Ec2Client<Channel>,
    region: &str,
    name: &str,
) -> Result<Registered, Status> {
    let timeout = Duration::from_secs(30);
    let volume = ec2
        .create_volume(req(volume_request(region, 1), region))
        .await?
        .into_inner();
    let volume_id = volume.volume_id.clone();
    poll_until("volume available", timeout, || {
        let mut ec2 = ec2.clone();
        let id = volume_id.clone();
        async move {
            let v = describe_volume(&mut ec2, region, ACCOUNT, &id).await?;
            Ok((v.state == "available").then_some(()))
        }
    })
    .await?;
    let snapshot = ec2
        .create_snapshot(req(
            CreateSnapshotRequest {
                volume_id: volume_id.clone(),
                description: format!("root of {name}"),
                ..Default::default()
            },
            region,
        ))
        .await?
        .into_inner();
    let snapshot_id = snapshot.snapshot_id.clone();
    poll_until("snapshot completed", timeout, || {
        let mut ec2 = ec2.clone();
        let id = snapshot_id.clone();
        async move {
            let s = describe_snapshot(&mut ec2, region, &id).await?;
            Ok((s.state == "completed").then_some(()))
        }
    })
    .await?;
    let resp = ec2
        .register_image(req(
            RegisterImageRequest {
                name: name.to_string(),
                root_device_name: "/dev/xvda".into(),
                architecture: "x86_64".into(),
                virtualization_type: "hvm".into(),
                block_device_mappings: vec![BlockDeviceMapping {
                    device_name: "/dev/xvda".into(),
                    ebs: Some(EbsBlockDevice {
                        snapshot_id: snapshot_id.clone(),
                        volume_type: "gp3".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            region,
        ))
        .await?;
    let consistency_token = meta(&resp, "x-amisim-consistency-token");
    Ok(Registered {
        volume_id,
        snapshot_id,
        image_id: resp.into_inner().image_id,
        consistency_token,
    })
}
