//! Bad input over gRPC gets EC2's error (status, `x-amisim-error-code`, message starting with
//! the code), never a crash and never a partial write: the log's head seq is unchanged.
//!
//! Each test starts its own `amisim region` on an empty log, so the head is 0 and nothing else
//! writes (no timers are pending).

use std::time::Duration;

use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::region_client::RegionClient;
use amisim_proto::*;
use amisim_tests::*;
use tonic::transport::Channel;
use tonic::Code;

const R: &str = "us-east-1";

struct Node {
    _process: RegionProcess,
    _data: tempfile::TempDir,
    ec2: Ec2Client<Channel>,
    admin: RegionClient<Channel>,
}

async fn node() -> Node {
    let data = tempfile::tempdir().unwrap();
    let process = start_region(R, &data.path().join(R), &[]);
    let ec2 = ec2(&process.url).await;
    let admin = region_admin(&process.url).await;
    Node {
        _process: process,
        _data: data,
        ec2,
        admin,
    }
}

/// Runs one bad call, checks its error, and checks the head did not move.
macro_rules! rejects {
    ($node:expr, $what:expr, $call:ident($msg:expr), $grpc:expr, $code:expr) => {{
        let before = head_seq(&mut $node.admin).await;
        let res = $node.ec2.$call(req($msg, R)).await;
        let status = expect_ec2_error($what, res, $grpc, $code);
        assert_eq!(
            head_seq(&mut $node.admin).await,
            before,
            "{}: a rejected call wrote to the log",
            $what
        );
        status
    }};
}

fn vol(size: Option<i32>, volume_type: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        availability_zone: format!("{R}a"),
        size,
        volume_type: volume_type.into(),
        ..Default::default()
    }
}

/// A RegisterImage that is valid as written (the snapshot id is well formed but does not exist).
fn image(name: &str) -> RegisterImageRequest {
    RegisterImageRequest {
        name: name.into(),
        root_device_name: "/dev/xvda".into(),
        architecture: "x86_64".into(),
        virtualization_type: "hvm".into(),
        block_device_mappings: vec![BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                snapshot_id: "snap-0123456789abcdef0".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ids() {
    let mut n = node().await;
    let bad = Code::InvalidArgument;
    let s = rejects!(
        n,
        "DescribeImages ami-bad",
        describe_images(DescribeImagesRequest {
            image_ids: vec!["ami-bad".into()],
            ..Default::default()
        }),
        bad,
        "InvalidAMIID.Malformed"
    );
    assert_eq!(
        s.message(),
        "InvalidAMIID.Malformed: Invalid id: \"ami-bad\" (expecting \"ami-...\")"
    );
    rejects!(
        n,
        "DeregisterImage ami-XYZ",
        deregister_image(DeregisterImageRequest {
            image_id: "ami-XYZ".into(),
            ..Default::default()
        }),
        bad,
        "InvalidAMIID.Malformed"
    );
    rejects!(
        n,
        "DescribeVolumes vol-nothex",
        describe_volumes(DescribeVolumesRequest {
            volume_ids: vec!["vol-nothex".into()],
            ..Default::default()
        }),
        bad,
        "InvalidVolumeID.Malformed"
    );
    rejects!(
        n,
        "CreateSnapshot vol-123",
        create_snapshot(CreateSnapshotRequest {
            volume_id: "vol-123".into(),
            ..Default::default()
        }),
        bad,
        "InvalidVolumeID.Malformed"
    );
    // [sim] snapshot ids: InvalidParameterValue everywhere (EC2_SEMANTICS.md §1).
    rejects!(
        n,
        "DeleteSnapshot snap-1",
        delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: "snap-1".into(),
            dry_run: false,
        }),
        bad,
        "InvalidParameterValue"
    );
    rejects!(
        n,
        "DescribeInstances i-zzz",
        describe_instances(DescribeInstancesRequest {
            instance_ids: vec!["i-zzzzzzzz".into()],
            ..Default::default()
        }),
        bad,
        "InvalidInstanceID.Malformed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_parameters() {
    let mut n = node().await;
    let bad = Code::InvalidArgument;
    let s = rejects!(
        n,
        "CreateVolume without zone",
        create_volume(CreateVolumeRequest {
            size: Some(8),
            ..Default::default()
        }),
        bad,
        "MissingParameter"
    );
    assert!(
        s.message().contains("AvailabilityZone") || s.message().contains("availability"),
        "{s:?}"
    );
    rejects!(
        n,
        "CreateVolume without size or snapshot",
        create_volume(vol(None, "gp3")),
        bad,
        "MissingParameter"
    );
    rejects!(
        n,
        "RegisterImage without name",
        register_image(image("")),
        bad,
        "MissingParameter"
    );
    rejects!(
        n,
        "DeregisterImage without id",
        deregister_image(DeregisterImageRequest::default()),
        bad,
        "MissingParameter"
    );
    rejects!(
        n,
        "CreateSnapshot without volume",
        create_snapshot(CreateSnapshotRequest::default()),
        bad,
        "MissingParameter"
    );
    rejects!(
        n,
        "DeleteVolume without id",
        delete_volume(DeleteVolumeRequest::default()),
        bad,
        "MissingParameter"
    );
    rejects!(
        n,
        "CreateTags without resources",
        create_tags(CreateTagsRequest {
            resources: vec![],
            tags: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
            dry_run: false,
        }),
        bad,
        "MissingParameter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_values() {
    let mut n = node().await;
    let bad = Code::InvalidArgument;
    for size in [0, -1, 16_385, 20_000] {
        rejects!(
            n,
            &format!("CreateVolume gp2 size {size}"),
            create_volume(vol(Some(size), "gp2")),
            bad,
            "InvalidParameterValue"
        );
    }
    rejects!(
        n,
        "CreateVolume st1 below 125 GiB",
        create_volume(vol(Some(100), "st1")),
        bad,
        "InvalidParameterValue"
    );
    rejects!(
        n,
        "CreateVolume gp3 iops 100",
        create_volume(CreateVolumeRequest {
            iops: Some(100),
            ..vol(Some(8), "gp3")
        }),
        bad,
        "InvalidParameterValue"
    );
    rejects!(
        n,
        "RegisterImage name too short",
        register_image(image("ab")),
        bad,
        "InvalidAMIName.Malformed"
    );
    rejects!(
        n,
        "RegisterImage name with a bad character",
        register_image(image("my image!")),
        bad,
        "InvalidAMIName.Malformed"
    );
    rejects!(
        n,
        "DescribeImages MaxResults with ImageIds",
        describe_images(DescribeImagesRequest {
            image_ids: vec!["ami-12345678".into()],
            max_results: Some(10),
            ..Default::default()
        }),
        bad,
        "InvalidParameterCombination"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_enum_values() {
    let mut n = node().await;
    let bad = Code::InvalidArgument;
    rejects!(
        n,
        "CreateVolume gp9",
        create_volume(vol(Some(8), "gp9")),
        bad,
        "InvalidParameterValue"
    );
    rejects!(
        n,
        "RegisterImage architecture sparc",
        register_image(RegisterImageRequest {
            architecture: "sparc".into(),
            ..image("sparc image")
        }),
        bad,
        "InvalidParameterValue"
    );
    rejects!(
        n,
        "DescribeImages unknown filter",
        describe_images(DescribeImagesRequest {
            filters: vec![Filter {
                name: "colour".into(),
                values: vec!["blue".into()],
            }],
            ..Default::default()
        }),
        bad,
        "InvalidParameterValue"
    );
    rejects!(
        n,
        "CreateVolume tagging an image",
        create_volume(CreateVolumeRequest {
            tag_specifications: vec![TagSpecification {
                resource_type: "image".into(),
                tags: vec![Tag {
                    key: "k".into(),
                    value: "v".into(),
                }],
            }],
            ..vol(Some(8), "gp3")
        }),
        bad,
        "InvalidParameterValue"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing() {
    let mut n = node().await;
    let s = rejects!(
        n,
        "CreateVolume dry run",
        create_volume(CreateVolumeRequest {
            dry_run: true,
            ..vol(Some(8), "gp3")
        }),
        Code::FailedPrecondition,
        "DryRunOperation"
    );
    assert_eq!(
        s.message(),
        "DryRunOperation: Request would have succeeded, but DryRun flag is set."
    );
}

/// A message over the 4 MiB limit: a clear gRPC error, no crash, and the node answers after.
async fn check_oversized(ec2: &mut Ec2Client<Channel>) {
    let huge = RegisterImageRequest {
        description: "x".repeat(5 * 1024 * 1024),
        ..image("huge image")
    };
    let s = ec2
        .register_image(req(huge, R))
        .await
        .expect_err("a 5 MiB message must be refused");
    assert!(
        matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
        "unexpected status for an oversized message: {s:?}"
    );
    assert!(
        s.message().contains("too large") || s.message().contains("limit"),
        "unclear message for an oversized message: {s:?}"
    );
    // Still serving.
    let ok = ec2
        .describe_images(req(DescribeImagesRequest::default(), R))
        .await;
    assert!(
        ok.is_ok(),
        "node not answering after an oversized message: {ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_is_refused_and_the_node_keeps_serving() {
    let mut n = node().await;
    let before = head_seq(&mut n.admin).await;
    check_oversized(&mut n.ec2).await;
    assert_eq!(head_seq(&mut n.admin).await, before);
    // The node still writes.
    let v = n
        .ec2
        .create_volume(req(vol(Some(8), "gp3"), R))
        .await
        .expect("CreateVolume after an oversized message");
    let volume_id = v.into_inner().volume_id;
    assert!(volume_id.starts_with("vol-"));
    // The write was logged. The clock may already have fired the volume's
    // creating→available timer too, so the head moved by one or two events.
    let after = head_seq(&mut n.admin).await;
    assert!(
        (before + 1..=before + 2).contains(&after),
        "head went from {before} to {after} for one CreateVolume"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_through_the_gateway() {
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path(), &["--regions", R]);
    let mut ec2 = ec2(&dev.gateway).await;
    check_oversized(&mut ec2).await;
    let mut admin = region_admin(&dev.regions[R]).await;
    assert_eq!(head_seq(&mut admin).await, 0);
    // The gateway and the node both survive a burst of them.
    for _ in 0..3 {
        check_oversized(&mut ec2).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(head_seq(&mut admin).await, 0);
}
