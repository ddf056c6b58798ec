//! The cluster in processes mode: `amisim region` / `amisim coordinator` children driven by
//! signals. SIGKILL + restart of a region keeps its acknowledged writes on the same port;
//! SIGSTOP holds a call until SIGCONT; skew is refused clearly.

mod common;

use std::time::Duration;

use amisim_chaos::NodeState;
use amisim_lab::{Cluster, ClusterClock, ClusterMode, ClusterSpec};
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::{CreateVolumeRequest, DescribeVolumesRequest};
use tonic::transport::Channel;

use common::{req, Poll};

/// How the tests wait for the cluster.
const POLL: Poll = Poll(Duration::from_millis(100));

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_regions_survive_sigkill_and_hold_calls_under_sigstop() {
    let binary = tokio::task::spawn_blocking(|| amisim_tests::process::amisim_bin().to_path_buf())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::new(["us-east-1", "eu-west-1"], dir.path());
    spec.mode = ClusterMode::Processes { binary };
    spec.clock = ClusterClock::Scaled(600.0);
    spec.seed = 11;
    let cluster = Cluster::start(spec).await.expect("children start");
    let info = |name: &str| {
        cluster
            .nodes()
            .into_iter()
            .find(|n| n.name == name)
            .unwrap()
    };
    let first_pid = info("us-east-1").pid.expect("a child has a pid");

    let ec2 = Ec2Client::new(
        Channel::from_shared(cluster.gateway_url())
            .unwrap()
            .connect_lazy(),
    );
    let write = |ec2: &Ec2Client<Channel>| {
        let mut ec2 = ec2.clone();
        async move {
            ec2.create_volume(req(
                CreateVolumeRequest {
                    availability_zone: "us-east-1a".into(),
                    size: Some(1),
                    volume_type: "gp3".into(),
                    ..Default::default()
                },
                "us-east-1",
            ))
            .await
            .ok()
            .map(|v| v.into_inner().volume_id)
        }
    };
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(
            POLL.eventually("a write", Duration::from_secs(30), || write(&ec2))
                .await,
        );
    }

    // SIGKILL, then a new child on the same port and data.
    let faults = cluster.faults();
    faults.kill("us-east-1", None).await.expect("kill");
    assert_eq!(info("us-east-1").state, NodeState::Down);
    assert_eq!(info("us-east-1").pid, None);
    assert!(write(&ec2).await.is_none(), "a dead region answered");
    faults.restart("us-east-1").await.expect("restart");
    let second = info("us-east-1");
    assert_eq!(second.state, NodeState::Running);
    assert_ne!(second.pid, Some(first_pid));
    acked.push(
        POLL.eventually("a write after restart", Duration::from_secs(30), || {
            write(&ec2)
        })
        .await,
    );
    let mut client = ec2.clone();
    let found = POLL
        .eventually("the acknowledged volumes", Duration::from_secs(30), || {
            let mut c = client.clone();
            let ids = acked.clone();
            async move {
                c.describe_volumes(req(
                    DescribeVolumesRequest {
                        volume_ids: ids,
                        ..Default::default()
                    },
                    "us-east-1",
                ))
                .await
                .ok()
            }
        })
        .await
        .into_inner();
    assert_eq!(found.volumes.len(), acked.len());

    // SIGSTOP holds a call; SIGCONT lets it finish.
    faults.pause("eu-west-1").await.expect("pause");
    assert_eq!(info("eu-west-1").state, NodeState::Paused);
    let call = tokio::spawn({
        let mut c = client.clone();
        async move {
            c.describe_volumes(req(DescribeVolumesRequest::default(), "eu-west-1"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "a stopped process answered");
    faults.resume("eu-west-1").await.expect("resume");
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered after SIGCONT")
        .unwrap()
        .expect("ok");
    let _ = &mut client;

    // Skew cannot reach a child's clock: a clear refusal.
    let e = faults.set_clock_skew("eu-west-1", 1_000).await.unwrap_err();
    assert!(e.to_string().contains("in-process"), "{e}");

    cluster.shutdown().await.expect("shutdown");
    assert!(dir.path().join("us-east-1.log").is_file());
}
