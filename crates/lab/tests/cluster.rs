//! The in-process cluster under node faults: a killed region keeps every acknowledged write
//! and the coordinator catches up; a paused node holds calls until resumed; the coordinator
//! killed through its own Chaos service comes back; clock skew; every fault is in the audit
//! trail.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amisim_chaos::{Clock, NodeState};
use amisim_lab::{Cluster, ClusterClock, ClusterSpec};
use amisim_log::{DiskLog, EventLog, SledOptions};
use amisim_proto::chaos_client::ChaosClient;
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::region_client::RegionClient;
use amisim_proto::{
    AdvanceClockRequest, CreateVolumeRequest, DescribeVolumesRequest, GetClockRequest,
    GetGlobalStateDigestRequest, GetStateDigestRequest, KillNodeRequest, ListNodesRequest,
    PauseNodeRequest, SetClockSkewRequest,
};
use tonic::transport::Channel;

use common::{req, Poll};

/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200_000;

fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

fn volume(region: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        availability_zone: format!("{region}a"),
        size: Some(1),
        volume_type: "gp3".into(),
        ..Default::default()
    }
}

async fn start(regions: &[&str], clock: ClusterClock) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(regions.iter().copied(), dir.path());
    spec.clock = clock;
    spec.seed = 7;
    let cluster = Cluster::start(spec).await.expect("cluster starts");
    (dir, cluster)
}

/// How the tests wait for the cluster.
const POLL: Poll = Poll(Duration::from_millis(50));

fn state_of(cluster: &Cluster, node: &str) -> NodeState {
    cluster
        .nodes()
        .into_iter()
        .find(|n| n.name == node)
        .expect("node listed")
        .state
}

/// The node-fault records (`action`, `node`) in a region's log, read offline.
fn fault_records(dir: &std::path::Path) -> Vec<(String, String)> {
    let log = DiskLog::open(dir, SledOptions::default()).expect("open log");
    let head = log.head().seq;
    log.read_range(1, head)
        .expect("read")
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::LinkConditionChanged(c)) if !c.node.is_empty() => {
                Some((c.action, c.node))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_region_keeps_every_acknowledged_write_and_the_coordinator_catches_up() {
    let (dir, cluster) = start(&["us-east-1", "eu-west-1"], ClusterClock::Scaled(600.0)).await;
    let gateway = cluster.gateway_url();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failures = Arc::new(Mutex::new(0u32));
    let stop = Arc::new(AtomicBool::new(false));
    // Given a client writing to us-east-1 without pause,
    let writer = tokio::spawn({
        let (acked, failures, stop) = (acked.clone(), failures.clone(), stop.clone());
        let mut ec2 = Ec2Client::new(channel(&gateway));
        async move {
            while !stop.load(Ordering::SeqCst) {
                let call = ec2.create_volume(req(volume("us-east-1"), "us-east-1"));
                match tokio::time::timeout(Duration::from_secs(3), call).await {
                    Ok(Ok(v)) => acked.lock().unwrap().push(v.into_inner().volume_id),
                    _ => *failures.lock().unwrap() += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let count = || acked.lock().unwrap().len();
    POLL.eventually("20 writes", Duration::from_secs(30), || async {
        (count() >= 20).then_some(())
    })
    .await;

    // when the region is killed in the middle of them and restarted,
    let faults = cluster.faults();
    faults.kill("us-east-1", None).await.expect("kill");
    assert_eq!(state_of(&cluster, "us-east-1"), NodeState::Down);
    assert!(cluster.region_node("us-east-1").is_none());
    let before_restart = count();
    POLL.eventually("a refused write", Duration::from_secs(30), || async {
        (*failures.lock().unwrap() > 0).then_some(())
    })
    .await;
    faults.restart("us-east-1").await.expect("restart");
    assert_eq!(state_of(&cluster, "us-east-1"), NodeState::Running);
    POLL.eventually("20 more writes", Duration::from_secs(30), || async {
        (count() >= before_restart + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");

    // then every acknowledged write is there,
    let ids = acked.lock().unwrap().clone();
    let mut ec2 = Ec2Client::new(channel(&gateway));
    for chunk in ids.chunks(50) {
        let found = ec2
            .describe_volumes(req(
                DescribeVolumesRequest {
                    volume_ids: chunk.to_vec(),
                    ..Default::default()
                },
                "us-east-1",
            ))
            .await
            .expect("every acknowledged volume exists")
            .into_inner();
        assert_eq!(found.volumes.len(), chunk.len());
    }
    // the node's state equals a replay of its log, and the coordinator catches up to it.
    let mut region = RegionClient::new(channel(&cluster.region_url("us-east-1").unwrap()));
    let own = region
        .get_state_digest(GetStateDigestRequest { replay: true })
        .await
        .expect("digest")
        .into_inner();
    assert_eq!(own.digest, own.replay_digest);
    // Timers may still fire after that read (volumes turning available): compare the node's
    // state and the coordinator's projection of it at the same seq, re-reading both.
    let mut coordinator = CoordinatorClient::new(channel(&gateway));
    POLL.eventually("the coordinator's digest", Duration::from_secs(60), || {
        let mut c = coordinator.clone();
        let mut region = region.clone();
        async move {
            let own = region
                .get_state_digest(GetStateDigestRequest { replay: false })
                .await
                .ok()?
                .into_inner();
            let r = c
                .get_state_digest(GetGlobalStateDigestRequest {
                    regions: vec!["us-east-1".into()],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            let d = r.regions.first()?;
            (d.seq == own.seq && d.digest == own.digest).then_some(())
        }
    })
    .await;
    let _ = &mut coordinator;
    let info = cluster
        .nodes()
        .into_iter()
        .find(|n| n.name == "us-east-1")
        .unwrap();
    assert_eq!(info.restarts, 1);
    assert_eq!(
        Some(info.url.clone()),
        cluster.region_url("us-east-1"),
        "same port after the restart"
    );

    // And the audit trail of the home region shows the kill and the restart.
    let home = cluster.region_data_dir("us-east-1");
    cluster.shutdown().await.expect("shutdown");
    let records = fault_records(&home);
    assert_eq!(
        records,
        vec![
            ("kill_node".to_string(), "us-east-1".to_string()),
            ("restart_node".to_string(), "us-east-1".to_string()),
        ]
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_region_holds_calls_and_its_clock_until_resumed() {
    let (_dir, cluster) = start(&["us-east-1"], ClusterClock::Scaled(600.0)).await;
    let gateway = cluster.gateway_url();
    let mut ec2 = Ec2Client::new(channel(&gateway));
    ec2.create_volume(req(volume("us-east-1"), "us-east-1"))
        .await
        .expect("a write before the pause");

    // Paused through the Chaos service.
    let mut chaos = ChaosClient::new(channel(&gateway));
    let paused = chaos
        .pause_node(PauseNodeRequest {
            node: "us-east-1".into(),
        })
        .await
        .expect("pause")
        .into_inner()
        .node
        .expect("node");
    assert_eq!(paused.state, "paused");
    let clock = cluster.region_clock("us-east-1").expect("clock");
    let frozen = clock.now_ms();

    let call = tokio::spawn({
        let mut ec2 = ec2.clone();
        async move {
            ec2.describe_volumes(req(DescribeVolumesRequest::default(), "us-east-1"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "a paused node answered");
    // 500 ms at 600× would be 300 simulated seconds: the clock stood still.
    assert_eq!(clock.now_ms(), frozen);

    cluster.faults().resume("us-east-1").await.expect("resume");
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the held call completes after the resume")
        .expect("task");
    assert_eq!(answer.expect("answered").into_inner().volumes.len(), 1);
    assert!(clock.now_ms() > frozen, "the clock runs again");
    assert_eq!(state_of(&cluster, "us-east-1"), NodeState::Running);

    // A down node cannot be paused or resumed; an unknown node is named.
    let faults = cluster.faults();
    faults.kill("us-east-1", None).await.expect("kill");
    let e = faults.pause("us-east-1").await.unwrap_err();
    assert!(e.to_string().contains("down"), "{e}");
    let e = faults.resume("us-east-1").await.unwrap_err();
    assert!(e.to_string().contains("restart"), "{e}");
    let e = faults.pause("mars-1").await.unwrap_err();
    assert!(e.to_string().contains("mars-1"), "{e}");
    faults.restart("us-east-1").await.expect("restart");
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordinator_killed_through_its_own_chaos_service_comes_back() {
    let (_dir, cluster) = start(&["us-east-1", "eu-west-1"], ClusterClock::Scaled(600.0)).await;
    let gateway = cluster.gateway_url();
    let mut chaos = ChaosClient::new(channel(&gateway));
    let nodes = chaos
        .list_nodes(ListNodesRequest {})
        .await
        .expect("list")
        .into_inner()
        .nodes;
    let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["us-east-1", "eu-west-1", "coordinator"]);
    assert!(nodes.iter().all(|n| n.state == "running"));

    // Without down_for nothing could restart it: refused.
    let e = chaos
        .kill_node(KillNodeRequest {
            node: "coordinator".into(),
            down_for_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("down_for"), "{}", e.message());
    let e = chaos
        .kill_node(KillNodeRequest {
            node: "mars-1".into(),
            down_for_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Pausing it through itself would hold the ResumeNode too: refused.
    let e = chaos
        .pause_node(PauseNodeRequest {
            node: "coordinator".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // With it: it answers, goes down, and comes back by itself.
    chaos
        .kill_node(KillNodeRequest {
            node: "coordinator".into(),
            down_for_ms: 1_000,
        })
        .await
        .expect("kill answered");
    POLL.eventually("the coordinator down", Duration::from_secs(10), || async {
        (state_of(&cluster, "coordinator") == NodeState::Down).then_some(())
    })
    .await;
    POLL.eventually("the coordinator back", Duration::from_secs(30), || async {
        (state_of(&cluster, "coordinator") == NodeState::Running).then_some(())
    })
    .await;
    let mut ec2 = Ec2Client::new(channel(&gateway));
    POLL.eventually(
        "a call through the restarted gateway",
        Duration::from_secs(30),
        || {
            let mut ec2 = ec2.clone();
            async move {
                ec2.create_volume(req(volume("eu-west-1"), "eu-west-1"))
                    .await
                    .ok()
            }
        },
    )
    .await;
    let _ = &mut ec2;
    let info = cluster
        .nodes()
        .into_iter()
        .find(|n| n.name == "coordinator")
        .unwrap();
    assert_eq!(info.restarts, 1);
    let home = cluster.region_data_dir("us-east-1");
    cluster.shutdown().await.expect("shutdown");
    assert_eq!(
        fault_records(&home),
        vec![
            ("kill_node".to_string(), "coordinator".to_string()),
            ("restart_node".to_string(), "coordinator".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skewed_region_reads_the_shared_clock_plus_its_skew() {
    let (_dir, cluster) = start(
        &["us-east-1", "eu-west-1"],
        ClusterClock::Virtual { start_ms: T0 },
    )
    .await;
    let base = cluster.virtual_clock().expect("virtual in process");
    let start = base.now_ms();
    let gateway = cluster.gateway_url();
    let mut chaos = ChaosClient::new(channel(&gateway));
    let node = chaos
        .set_clock_skew(SetClockSkewRequest {
            region: "eu-west-1".into(),
            skew_ms: 5_000,
        })
        .await
        .expect("skew")
        .into_inner()
        .node
        .expect("node");
    assert_eq!(node.clock_skew_ms, 5_000);
    let eu = cluster.region_clock("eu-west-1").expect("clock");
    assert_eq!(eu.now_ms(), start + 5_000);
    let clocks = chaos
        .get_clock(GetClockRequest {})
        .await
        .expect("clock")
        .into_inner()
        .regions;
    let now = |r: &str| clocks.iter().find(|c| c.region == r).unwrap().now_ms;
    assert_eq!(now("us-east-1"), start);
    assert_eq!(now("eu-west-1"), start + 5_000);

    // AdvanceClock moves the shared clock by exactly its amount (the skew does not drag it).
    let answer = chaos
        .advance_clock(AdvanceClockRequest { ms: 1_000 })
        .await
        .expect("advance")
        .into_inner()
        .regions;
    assert_eq!(base.now_ms(), start + 1_000);
    assert_eq!(eu.now_ms(), start + 6_000);
    // The answer reports each node's own (skewed) reading.
    let moved = |r: &str| answer.iter().find(|c| c.region == r).unwrap().now_ms;
    assert_eq!(moved("us-east-1"), start + 1_000);
    assert_eq!(moved("eu-west-1"), start + 6_000);

    // A negative skew never takes the node back: it holds until the base catches up.
    cluster
        .faults()
        .set_clock_skew("eu-west-1", -2_000)
        .await
        .expect("skew");
    assert_eq!(eu.now_ms(), start + 6_000);
    base.advance(9_000); // base start + 10 s: skewed start + 8 s
    assert_eq!(eu.now_ms(), start + 8_000);

    // Only regions have a clock.
    let e = chaos
        .set_clock_skew(SetClockSkewRequest {
            region: "coordinator".into(),
            skew_ms: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    cluster.shutdown().await.expect("shutdown");
}

/// Auto-advance (`amisim dev --clock virtual --auto-advance MS`): a volume's creating →
/// available timer fires with nobody moving the clock, and the clock lands exactly on it.
/// Without auto-advance the same volume stays `creating` (the clock never moves by itself).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_cluster_moves_its_virtual_clock_to_the_next_timer() {
    let state = |ec2: Ec2Client<Channel>, id: String| async move {
        let mut ec2 = ec2;
        ec2.describe_volumes(req(
            DescribeVolumesRequest {
                volume_ids: vec![id],
                ..Default::default()
            },
            "us-east-1",
        ))
        .await
        .expect("describe")
        .into_inner()
        .volumes
        .first()
        .map(|v| v.state.clone())
        .expect("the volume")
    };

    // Without auto-advance: still creating after a while.
    let (_dir, cluster) = start(&["us-east-1"], ClusterClock::Virtual { start_ms: T0 }).await;
    let ec2 = Ec2Client::new(channel(&cluster.gateway_url()));
    let id = ec2
        .clone()
        .create_volume(req(volume("us-east-1"), "us-east-1"))
        .await
        .expect("create")
        .into_inner()
        .volume_id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(ec2.clone(), id).await, "creating");
    assert_eq!(cluster.virtual_clock().expect("virtual").now_ms(), T0);
    cluster.shutdown().await.expect("shutdown");

    // With it: available, and the clock stopped at the timer, not past it.
    let (_dir, cluster) = start(&["us-east-1"], ClusterClock::Virtual { start_ms: T0 }).await;
    let task = cluster
        .auto_advance(Duration::from_millis(20))
        .expect("in-process virtual mode");
    let ec2 = Ec2Client::new(channel(&cluster.gateway_url()));
    let id = ec2
        .clone()
        .create_volume(req(volume("us-east-1"), "us-east-1"))
        .await
        .expect("create")
        .into_inner()
        .volume_id;
    let due = cluster
        .region_node("us-east-1")
        .expect("running")
        .state()
        .next_due_ms()
        .expect("the volume's timer");
    assert!(due > T0);
    POLL.eventually("the volume available", Duration::from_secs(10), || {
        let (ec2, id) = (ec2.clone(), id.clone());
        async move { (state(ec2, id).await == "available").then_some(()) }
    })
    .await;
    assert_eq!(cluster.virtual_clock().expect("virtual").now_ms(), due);
    task.abort();
    cluster.shutdown().await.expect("shutdown");
}

/// With the virtual clock a kill's `down_for` is simulated time: the node stays down however
/// long the wall clock runs, comes back once the clock passes it, and auto-advance moves the
/// clock to that moment like to any timer.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_with_down_for_restarts_on_the_virtual_clock() {
    let (_dir, cluster) = start(&["us-east-1"], ClusterClock::Virtual { start_ms: T0 }).await;
    let clock = cluster.virtual_clock().expect("virtual in process");
    let faults = cluster.faults();
    faults
        .kill("us-east-1", Some(Duration::from_secs(60)))
        .await
        .expect("kill");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&cluster, "us-east-1"), NodeState::Down);
    clock.advance(59_999);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state_of(&cluster, "us-east-1"),
        NodeState::Down,
        "1 ms of simulated time short"
    );
    clock.advance(1);
    POLL.eventually("the region back", Duration::from_secs(20), || async {
        (state_of(&cluster, "us-east-1") == NodeState::Running).then_some(())
    })
    .await;

    // Auto-advance: the restart is the only timer, so the clock lands on it.
    let task = cluster
        .auto_advance(Duration::from_millis(20))
        .expect("in-process virtual mode");
    let killed_at = clock.now_ms();
    faults
        .kill("us-east-1", Some(Duration::from_secs(3_600)))
        .await
        .expect("kill");
    POLL.eventually(
        "the region back by itself",
        Duration::from_secs(20),
        || async { (state_of(&cluster, "us-east-1") == NodeState::Running).then_some(()) },
    )
    .await;
    assert_eq!(clock.now_ms(), killed_at + 3_600_000);
    task.abort();

    // The coordinator, through which clients move the clock, comes back after wall time.
    let before = clock.now_ms();
    faults
        .kill("coordinator", Some(Duration::from_millis(300)))
        .await
        .expect("kill");
    POLL.eventually("the coordinator back", Duration::from_secs(20), || async {
        (state_of(&cluster, "coordinator") == NodeState::Running).then_some(())
    })
    .await;
    assert_eq!(clock.now_ms(), before, "nobody moved the clock");
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followed_merged_audit_stream_reopens_a_region_that_restarted() {
    use amisim_proto::audit_client::AuditClient;
    use amisim_proto::AuditStreamRequest;

    let (_dir, cluster) = start(&["us-east-1", "eu-west-1"], ClusterClock::Scaled(1000.0)).await;
    let gateway = channel(&cluster.gateway_url());
    let mut ec2 = Ec2Client::new(gateway.clone());
    let mut audit = AuditClient::new(gateway);
    // given: a followed merged stream of both regions, from their starts
    let mut stream = audit
        .stream_events(AuditStreamRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("the merged stream opens")
        .into_inner();
    let create = |ec2: &mut Ec2Client<Channel>| {
        let mut ec2 = ec2.clone();
        async move {
            ec2.create_volume(req(volume("us-east-1"), "us-east-1"))
                .await
                .expect("CreateVolume")
                .into_inner()
                .volume_id
        }
    };
    // Reads the stream until a us-east-1 event names `volume`; returns its seq.
    async fn until_volume(stream: &mut tonic::Streaming<amisim_proto::Event>, volume: &str) -> u64 {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("an event within 30 s")
                .expect("the merged stream stays open")
                .expect("the merged stream does not end");
            if e.region == "us-east-1"
                && matches!(&e.payload, Some(Payload::VolumeCreated(v)) if v.volume_id == volume)
            {
                return e.seq;
            }
        }
    }
    let first = create(&mut ec2).await;
    let first_seq = until_volume(&mut stream, &first).await;

    // when: us-east-1 is killed and restarted under the open stream, then written to again
    let faults = cluster.faults();
    faults.kill("us-east-1", None).await.expect("kill");
    faults.restart("us-east-1").await.expect("restart");
    let second = POLL
        .eventually("us-east-1 serves again", Duration::from_secs(30), || {
            let mut ec2 = ec2.clone();
            async move {
                ec2.create_volume(req(volume("us-east-1"), "us-east-1"))
                    .await
                    .ok()
                    .map(|r| r.into_inner().volume_id)
            }
        })
        .await;

    // then: the same stream delivers the new volume's event, after the first, once
    let second_seq = until_volume(&mut stream, &second).await;
    assert!(second_seq > first_seq, "{second_seq} after {first_seq}");
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_coordinator_starts_no_copy_until_resumed() {
    use amisim_core::copy::CopyPhase;
    use amisim_core::state::{SnapshotState, VolumeState};
    use amisim_proto::{CopySnapshotRequest, CreateSnapshotRequest};

    let (_dir, cluster) = start(&["us-east-1", "eu-west-1"], ClusterClock::Scaled(1000.0)).await;
    let us = cluster.region_node("us-east-1").expect("us-east-1");
    let eu = cluster.region_node("eu-west-1").expect("eu-west-1");
    let mut us_ec2 = Ec2Client::new(channel(&cluster.region_url("us-east-1").expect("url")));
    let mut eu_ec2 = Ec2Client::new(channel(&cluster.region_url("eu-west-1").expect("url")));
    // given: a completed snapshot in us-east-1
    let vol = us_ec2
        .create_volume(req(volume("us-east-1"), "us-east-1"))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume_id;
    POLL.eventually("the volume available", Duration::from_secs(30), || {
        let ok = us
            .state()
            .volumes
            .get(&vol)
            .is_some_and(|v| v.state == VolumeState::Available);
        async move { ok.then_some(()) }
    })
    .await;
    let snap = us_ec2
        .create_snapshot(req(
            CreateSnapshotRequest {
                volume_id: vol.clone(),
                ..Default::default()
            },
            "us-east-1",
        ))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot_id;
    POLL.eventually("the snapshot completed", Duration::from_secs(30), || {
        let ok = us
            .state()
            .snapshots
            .get(&snap)
            .is_some_and(|s| s.state == SnapshotState::Completed);
        async move { ok.then_some(()) }
    })
    .await;

    // when: the coordinator is paused and a copy is requested straight at the destination
    let faults = cluster.faults();
    faults
        .pause("coordinator")
        .await
        .expect("pause the coordinator");
    let copy = eu_ec2
        .copy_snapshot(req(
            CopySnapshotRequest {
                source_region: "us-east-1".into(),
                source_snapshot_id: snap.clone(),
                ..Default::default()
            },
            "eu-west-1",
        ))
        .await
        .expect("CopySnapshot at the destination node")
        .into_inner()
        .snapshot_id;
    let phase = || {
        let st = eu.state();
        st.copies
            .values()
            .find(|t| t.dest_id == copy)
            .map(|t| st.copy_phase(t))
    };
    // then: nothing of the coordinator moves (a saga step takes ~1 ms; 400 ms is 400 s of
    // simulated time here)
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        phase(),
        Some(CopyPhase::AwaitingStart),
        "no saga step while paused"
    );

    // and once resumed, the copy runs to its end
    faults
        .resume("coordinator")
        .await
        .expect("resume the coordinator");
    POLL.eventually("the copy completed", Duration::from_secs(60), || {
        let done = phase() == Some(CopyPhase::Done);
        async move { done.then_some(()) }
    })
    .await;
    // The nodes' handles go first: a stopping node waits for its log to be released.
    drop((us, eu));
    cluster.shutdown().await.expect("shutdown");
}
