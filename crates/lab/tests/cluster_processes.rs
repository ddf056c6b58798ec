//! The cluster in processes mode: `amisim region` / `amisim coordinator` children driven by
//! signals. SIGKILL + restart of a region keeps its acknowledged writes on the same port;
//! SIGSTOP holds a call until SIGCONT; clock skew reaches a child through its Region service and
//! outlives a restart.

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
    // The coordinator child draws on the links from the run's seed.
    let links = amisim_proto::chaos_client::ChaosClient::new(
        Channel::from_shared(cluster.gateway_url())
            .unwrap()
            .connect_lazy(),
    )
    .list_links(amisim_proto::ListLinksRequest {})
    .await
    .expect("ListLinks")
    .into_inner();
    assert_eq!(links.seed, 11);

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

    // Clock skew reaches the child's clock (ten days ahead; the scaled clock itself moves
    // 600 ms per wall ms, so the margin is 20 s of wall time), and outlives a restart.
    const SKEW: u64 = 10 * 24 * 3_600_000;
    let mut region = amisim_proto::region_client::RegionClient::new(
        Channel::from_shared(cluster.region_url("eu-west-1").unwrap())
            .unwrap()
            .connect_lazy(),
    );
    let now = |region: &amisim_proto::region_client::RegionClient<Channel>| {
        let mut r = region.clone();
        async move {
            r.get_region_info(amisim_proto::GetRegionInfoRequest {})
                .await
                .expect("GetRegionInfo")
                .into_inner()
                .sim_time_ms
        }
    };
    let before = now(&region).await;
    faults
        .set_clock_skew("eu-west-1", SKEW as i64)
        .await
        .expect("skew a child");
    let after = now(&region).await;
    assert_eq!(
        info("eu-west-1").clock_skew_ms,
        SKEW as i64,
        "ListNodes shows it"
    );
    assert!(
        (SKEW..SKEW + 600 * 20_000).contains(&(after - before)),
        "{before} -> {after}"
    );
    faults.kill("eu-west-1", None).await.expect("kill");
    // A new child's scaled clock starts at wall time at least (or at its last event): with the
    // skew set again it reads ten days more.
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    faults.restart("eu-west-1").await.expect("restart");
    let restarted = POLL
        .eventually("eu-west-1 after restart", Duration::from_secs(30), || {
            let mut r = region.clone();
            async move {
                r.get_region_info(amisim_proto::GetRegionInfoRequest {})
                    .await
                    .ok()
                    .map(|i| i.into_inner().sim_time_ms)
            }
        })
        .await;
    assert!(restarted >= wall_ms + SKEW, "wall {wall_ms} -> {restarted}");
    // A stopped process cannot take a skew: a clear refusal.
    faults.pause("eu-west-1").await.expect("pause");
    let e = faults.set_clock_skew("eu-west-1", 0).await.unwrap_err();
    assert!(e.to_string().contains("resume it first"), "{e}");
    faults.resume("eu-west-1").await.expect("resume");
    let _ = &mut region;

    cluster.shutdown().await.expect("shutdown");
    assert!(dir.path().join("us-east-1.log").is_file());
}

/// The CPUs a thread or process may run on (`/proc/<which>/status`).
#[cfg(target_os = "linux")]
fn cpus_of(which: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{which}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    amisim_region::affinity::parse_cpu_list(list)
        .unwrap()
        .into_iter()
        .collect()
}

/// With the runtime pinned (`--runtime-cpus`), a child started from a runtime thread still
/// gets every CPU of the process, not the pinned thread's.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_child_started_from_a_pinned_runtime_gets_every_cpu_back() {
    use amisim_region::affinity::{self, Placement, RuntimeCpus};
    let binary = amisim_tests::process::amisim_bin().to_path_buf();
    // The children would pin their own runtime (and main thread) with `auto`: `all` leaves
    // their CPUs to what they inherit, which is what this test looks at. (Set before any
    // other thread of this test process exists; nextest runs each test in its own process.)
    std::env::set_var("AMISIM_RUNTIME_CPUS", "all");
    let all = cpus_of("thread-self");
    // This test's thread is its whole runtime: pin it to the first CPU.
    let placement = affinity::plan(&RuntimeCpus::List(vec![all[0]]), 1);
    assert!(
        matches!(placement, Placement::Pinned { .. }),
        "{placement:?}"
    );
    affinity::pin_runtime_thread();
    assert_eq!(cpus_of("thread-self"), [all[0]]);

    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::new(["us-east-1"], dir.path());
    spec.mode = ClusterMode::Processes { binary };
    spec.seed = 3;
    let cluster = Cluster::start(spec).await.expect("children start");
    let pids: Vec<u32> = cluster.nodes().into_iter().filter_map(|n| n.pid).collect();
    assert!(!pids.is_empty(), "the children have pids");
    for pid in pids {
        assert_eq!(cpus_of(&pid.to_string()), all, "child {pid}");
    }
    cluster.shutdown().await.expect("shutdown");
}
