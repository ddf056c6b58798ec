//! The node's lifecycle: group commit, durability across restarts (the disk log), timers (also after a
//! restart), fail-stop, shutdown, replay checks.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use amisim_chaos::Clock;
use amisim_core::state::VolumeState;
use amisim_core::{Command, ErrorCode, Query, Reply};
use amisim_log::{DiskLog, EventLog, MemoryLog, SledOptions};
use amisim_proto::{
    DescribeVolumesRequest, GetStateDigestRequest, RegisterImageRequest, StreamEventsRequest,
};
use amisim_region::{NodeStatus, RegionConfig, RegionError, RegionNode};
use common::*;
use futures::StreamExt;
use tonic::Code;

fn disk(dir: &std::path::Path) -> Arc<dyn EventLog> {
    Arc::new(DiskLog::open(dir, SledOptions::default()).unwrap())
}

async fn create_volume_as(node: &RegionNode, account: &str, size: i32) -> (String, u64) {
    match node
        .execute(account, "req", Command::CreateVolume(create_volume(size)))
        .await
        .unwrap()
    {
        (Reply::CreateVolume(v), seq) => (v.volume_id, seq),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// 200 concurrent writers over gRPC on a disk log: all acknowledged, all there after a
/// restart on the same directory, live digest == replay digest, no id reused after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_survive_a_restart_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(11);
    cfg.time_scale = 100_000.0; // volumes turn available within a wall millisecond or so
    let node = RegionNode::start(cfg.clone(), disk(dir.path())).unwrap();
    let served = Served::start(node).await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut ec2 = served.ec2().await;
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let r = ec2
                    .create_volume(as_account(OWNER, create_volume(1 + i % 50)))
                    .await
                    .unwrap();
                let token = meta(r.metadata(), "x-amisim-consistency-token")
                    .unwrap()
                    .to_string();
                (r.into_inner().volume_id, token)
            } else {
                let r = ec2
                    .register_image(as_account(
                        OWNER,
                        RegisterImageRequest {
                            name: format!("image-{i}"),
                            image_location: format!("bucket/image-{i}.manifest.xml"),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap();
                let token = meta(r.metadata(), "x-amisim-consistency-token")
                    .unwrap()
                    .to_string();
                (r.into_inner().image_id, token)
            }
        }));
    }
    let mut ids = HashSet::new();
    let mut seqs = HashSet::new();
    for t in tasks {
        let (id, token) = t.await.unwrap();
        let (region, seq) = amisim_region::parse_consistency_token(&token).unwrap();
        assert_eq!(region, REGION);
        assert!(ids.insert(id));
        assert!(seqs.insert(seq), "two writes share seq {seq}");
    }
    assert_eq!(ids.len(), 200);

    // Let the volumes' timers fire so nothing is pending, then take the live digest.
    wait_until("all volumes available", 20, || {
        let s = served.node.state();
        s.volumes.len() == 100
            && s.volumes
                .values()
                .all(|v| v.state == VolumeState::Available)
    })
    .await;
    wait_until("all images available", 60, || {
        let s = served.node.state();
        s.images.len() == 100 && s.timers.is_empty()
    })
    .await;
    let mut region = served.region().await;
    let before = region
        .get_state_digest(GetStateDigestRequest { replay: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.digest, before.replay_digest);
    let node = served.stop().await;
    assert_eq!(node.status(), NodeStatus::Stopped);
    let seed_before = node.seed();
    drop(node);

    // Reopen the same directory: replay gives the same state.
    let node = RegionNode::start(cfg, disk(dir.path())).unwrap();
    let state = node.state();
    assert_eq!(state.seq, before.seq);
    assert_eq!(state.digest(), before.digest);
    for id in &ids {
        assert!(
            state.volumes.contains_key(id) || state.images.contains_key(id.as_str()),
            "{id} lost"
        );
    }
    let served = Served::start(node).await;
    let mut region = served.region().await;
    let after = region
        .get_state_digest(GetStateDigestRequest { replay: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.digest, before.digest);
    assert_eq!(after.replay_digest, before.digest);

    // Same seed, longer log: a different id stream, and ids are checked against the state.
    assert_eq!(served.node.seed(), seed_before);
    let (new_id, seq) = create_volume_as(&served.node, OWNER, 8).await;
    assert!(!ids.contains(&new_id));
    assert_eq!(seq, before.seq + 1);
    let node = served.stop().await;
    drop(node);
}

/// Commands queued while the log is busy go into one append (one flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_commands_share_one_append() {
    let log = Arc::new(FlakyLog::default());
    log.delay_ms.store(50, Ordering::SeqCst);
    let node = RegionNode::start(config(3), log.clone()).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            create_volume_as(&node, OWNER, 8).await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().1);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 100);
    let appends = log.appends.load(Ordering::SeqCst);
    assert!(appends < 50, "{appends} appends for 100 commands");
    node.shutdown().await;
}

/// With a big time scale a new volume turns available with no further call.
#[tokio::test]
async fn timers_fire_without_further_calls() {
    let cfg = RegionConfig {
        time_scale: 10_000.0,
        ..config(5)
    };
    let node = RegionNode::start(cfg, Arc::new(MemoryLog::new())).unwrap();
    let served = Served::start(node).await;
    let mut ec2 = served.ec2().await;
    let vol = ec2
        .create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vol.state, "creating");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = ec2
            .describe_volumes(as_account(
                OWNER,
                DescribeVolumesRequest {
                    volume_ids: vec![vol.volume_id.clone()],
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        if v.volumes[0].state == "available" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "volume never became available"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The transition is an event by the system account.
    let log = served.node.log();
    let head = log.head().seq;
    let last = log.read_range(head, head).unwrap().remove(0);
    assert_eq!(last.account_id, "system");
    assert!(last.request_id.is_empty());
    assert!(matches!(
        last.payload,
        Some(amisim_proto::event::Payload::VolumeAvailable(_))
    ));
    served.stop().await;
}

/// A virtual clock: the timer fires exactly when simulated time reaches its due time.
#[tokio::test]
async fn timers_follow_a_virtual_clock() {
    let (node, clock) = virtual_node(Arc::new(MemoryLog::new()), 9);
    let (id, _) = create_volume_as(&node, OWNER, 8).await;
    let due = node.state().volumes[&id].available_at_ms;
    assert_eq!(due, T0 + amisim_core::Config::default().volume_create_ms);

    clock.set(due - 1);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(node.state().volumes[&id].state, VolumeState::Creating);

    clock.set(due);
    wait_until("the volume's timer", 10, || {
        node.state().volumes[&id].state == VolumeState::Available
    })
    .await;
    let head = node.head_seq();
    let last = node.log().read_range(head, head).unwrap().remove(0);
    assert_eq!(last.sim_time_ms, due);
    node.shutdown().await;
}

/// A node restarted on a log with pending transitions re-arms them from the replayed state.
#[tokio::test]
async fn pending_timers_fire_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First life: a virtual clock that never moves, so the volume stays `creating`.
    let (node, _clock) = virtual_node(disk(dir.path()), 21);
    let (id, _) = create_volume_as(&node, OWNER, 8).await;
    let due = node.state().volumes[&id].available_at_ms;
    node.shutdown().await;
    drop(node);

    // Second life on a scaled clock, which starts at wall time (past `due`, which is in 2024).
    let cfg = RegionConfig {
        time_scale: 1.0,
        ..config(21)
    };
    let node = RegionNode::start(cfg, disk(dir.path())).unwrap();
    assert!(node.now_ms() >= due);
    wait_until("the re-armed timer", 10, || {
        node.state().volumes[&id].state == VolumeState::Available
    })
    .await;
    node.shutdown().await;
}

/// A restarted scaled clock never goes back before the last logged event.
#[tokio::test]
async fn a_restarted_clock_never_goes_back_in_time() {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let future = amisim_chaos::wall_now_ms() + 10 * 86_400_000;
    log.append(vec![envelope(
        future,
        volume_created("vol-0123456789abcdef0", future, future + 2_000),
    )])
    .unwrap();
    let node = RegionNode::start(config(2), log).unwrap();
    assert!(node.now_ms() >= future);
    let (_, seq) = create_volume_as(&node, OWNER, 8).await;
    let e = node.log().read_range(seq, seq).unwrap().remove(0);
    assert!(e.sim_time_ms >= future);
    node.shutdown().await;
}

/// Timers written by an older node (straight into the log) fire at start.
#[tokio::test]
async fn timers_in_a_replayed_log_fire_at_start() {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    log.append(vec![
        envelope(T0, volume_created("vol-00000000000000001", T0, T0 + 2_000)),
        envelope(T0, volume_created("vol-00000000000000002", T0, T0 + 4_000)),
    ])
    .unwrap();
    let (node, clock) = virtual_node(log, 4);
    assert_eq!(node.state().seq, 2);
    clock.set(T0 + 3_000);
    wait_until("the first timer", 10, || {
        node.state().volumes["vol-00000000000000001"].state == VolumeState::Available
    })
    .await;
    assert_eq!(
        node.state().volumes["vol-00000000000000002"].state,
        VolumeState::Creating
    );
    clock.advance(1_000);
    wait_until("the second timer", 10, || {
        node.state().volumes["vol-00000000000000002"].state == VolumeState::Available
    })
    .await;
    node.shutdown().await;
}

/// A timer whose firing produces no event must not make the writer spin.
#[tokio::test]
async fn a_stale_timer_does_not_spin_the_writer() {
    use amisim_proto::event::Payload;
    use amisim_proto::ImageRegistered;

    #[derive(Debug)]
    struct Counting(amisim_chaos::VirtualClock, std::sync::atomic::AtomicUsize);
    impl Clock for Counting {
        fn now_ms(&self) -> u64 {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.now_ms()
        }
        fn wall_ms_until(&self, sim_ms: u64) -> std::time::Duration {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.wall_ms_until(sim_ms)
        }
        fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
            self.0.changes()
        }
    }

    // The same image registered twice with different due times: the first timer outlives the
    // image's transition (a domain bug, but a log is a log).
    let image = |at| {
        Payload::ImageRegistered(ImageRegistered {
            image_id: "ami-00000000000000001".into(),
            owner_id: OWNER.into(),
            name: "twice".into(),
            available_at_ms: at,
            ..Default::default()
        })
    };
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    log.append(vec![
        envelope(T0, image(T0 + 1_000)),
        envelope(T0, image(T0 + 2_000)),
    ])
    .unwrap();
    let virt = amisim_chaos::VirtualClock::new(T0 + 5_000);
    let clock = Arc::new(Counting(virt.clone(), Default::default()));
    let c = clock.clone();
    let node = RegionNode::start_with_clock(config(8), log, move |_| c as Arc<dyn Clock>).unwrap();
    wait_until("the image's timer", 10, || {
        node.state().images["ami-00000000000000001"].state
            == amisim_core::state::ImageState::Available
    })
    .await;
    assert!(
        node.state().next_due_ms().is_some(),
        "the stale timer is still there"
    );
    let before = clock.1.load(Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let spins = clock.1.load(Ordering::SeqCst) - before;
    assert!(
        spins < 20,
        "the writer read the clock {spins} times while idle"
    );

    // Later timers still fire.
    let (id, _) = create_volume_as(&node, OWNER, 8).await;
    virt.advance(10_000);
    wait_until("a later timer", 10, || {
        node.state().volumes[&id].state == VolumeState::Available
    })
    .await;
    node.shutdown().await;
}

/// A failed append stops the node: that request gets INTERNAL, later writes UNAVAILABLE, the
/// health check turns NOT_SERVING, reads of the durable state still work.
#[tokio::test]
async fn a_storage_error_is_fail_stop() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let log = Arc::new(FlakyLog::default());
    let node = RegionNode::start(config(6), log.clone()).unwrap();
    let served = Served::start(node).await;
    let mut ec2 = served.ec2().await;
    let ok = ec2
        .create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap()
        .into_inner();

    log.fail.store(true, Ordering::SeqCst);
    let st = ec2
        .create_volume(as_account(OWNER, create_volume(9)))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Internal, "{st:?}");
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InternalError")
    );
    assert!(matches!(served.node.status(), NodeStatus::Failed(_)));

    // Even with a healthy disk again, the node takes no more writes until restarted.
    log.fail.store(false, Ordering::SeqCst);
    let appends = log.appends.load(Ordering::SeqCst);
    let st = ec2
        .create_volume(as_account(OWNER, create_volume(10)))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("Unavailable")
    );
    assert_eq!(log.appends.load(Ordering::SeqCst), appends);
    let e = served
        .node
        .execute(OWNER, "r", Command::CreateVolume(create_volume(8)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);

    let mut health = HealthClient::new(served.channel().await);
    let mut status = ServingStatus::Serving;
    for _ in 0..200 {
        status = health
            .check(HealthCheckRequest {
                service: "amisim.v1.Ec2".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);

    // Reads still answer from the last durable state.
    let v = ec2
        .describe_volumes(as_account(OWNER, DescribeVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.volumes.len(), 1);
    assert_eq!(v.volumes[0].volume_id, ok.volume_id);
    served.stop().await;
}

/// Shutdown answers what was queued, then refuses writes; reads keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_clean() {
    let log = Arc::new(FlakyLog::default());
    log.delay_ms.store(20, Ordering::SeqCst);
    let node = RegionNode::start(config(7), log.clone()).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.execute(OWNER, "r", Command::CreateVolume(create_volume(8)))
                .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    node.shutdown().await;
    assert_eq!(node.status(), NodeStatus::Stopped);
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code, ErrorCode::Unavailable),
        }
    }
    // Everything acknowledged is in the log, and nothing else.
    let creates = log
        .read_range(1, u64::MAX)
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.payload,
                Some(amisim_proto::event::Payload::VolumeCreated(_))
            )
        })
        .count();
    assert_eq!(creates, ok);
    let e = node
        .execute(OWNER, "r", Command::CreateVolume(create_volume(8)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    let answer = node.query(OWNER, Query::DescribeVolumes(Default::default()));
    assert!(answer.is_ok());
}

/// A log of another region, or with a gap, is refused at start.
#[tokio::test]
async fn replay_refuses_foreign_or_broken_logs() {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let mut e = envelope(T0, volume_created("vol-00000000000000001", T0, T0 + 1));
    e.region = "eu-west-1".into();
    log.append(vec![e]).unwrap();
    let err = RegionNode::start(config(1), log).unwrap_err();
    assert!(
        matches!(err, RegionError::WrongRegion { seq: 1, .. }),
        "{err}"
    );

    let bad = RegionConfig {
        time_scale: -1.0,
        ..config(1)
    };
    assert!(matches!(
        RegionNode::start(bad, Arc::new(MemoryLog::new())),
        Err(RegionError::Config(_))
    ));
}

/// Events streamed over gRPC are exactly the stored ones, and a follower gets UNAVAILABLE (not
/// a hang) when the server shuts down.
#[tokio::test]
async fn a_follower_is_released_at_server_shutdown() {
    let node = RegionNode::start(config(12), Arc::new(MemoryLog::new())).unwrap();
    let served = Served::start(node).await;
    create_volume_as(&served.node, OWNER, 8).await;
    let mut region = served.region().await;
    let mut live = region
        .stream_events(StreamEventsRequest {
            from_seq: 1,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = live.next().await.unwrap().unwrap();
    assert_eq!(first, served.node.log().read_range(1, 1).unwrap()[0]);
    let stopping = tokio::spawn(served.stop());
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match live.next().await {
                Some(Ok(_)) => continue,
                Some(Err(st)) => return Some(st.code()),
                None => return None,
            }
        }
    })
    .await
    .expect("the follower was not released");
    assert_eq!(end, Some(Code::Unavailable));
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .expect("server did not stop")
        .unwrap();
}

/// The CPUs of each thread of this process named `prefix*` (`/proc/self/task/*`).
#[cfg(target_os = "linux")]
fn cpus_of_threads(prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        let cpus = amisim_region::affinity::parse_cpu_list(list).unwrap();
        out.push((comm.trim().to_string(), cpus.into_iter().collect()));
    }
    out
}

/// With the runtime pinned (`--runtime-cpus`), a node started from a runtime thread runs its
/// writer, commit thread and request recorder on every CPU of the process.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_node_started_from_a_pinned_runtime_runs_its_threads_on_every_cpu() {
    use amisim_region::affinity::{self, Placement, RuntimeCpus};
    let all = cpus_of_threads("")
        .into_iter()
        .map(|(_, cpus)| cpus)
        .max_by_key(Vec::len)
        .unwrap();
    let placement = affinity::plan(&RuntimeCpus::List(vec![all[0]]), 1);
    assert!(
        matches!(placement, Placement::Pinned { .. }),
        "{placement:?}"
    );
    // This test's thread is its whole runtime.
    affinity::pin_runtime_thread();
    let (node, _clock) = virtual_node(Arc::new(MemoryLog::new()), 8);
    let recorder = amisim_region::audit::requests::RequestRecorder::start(
        "us-east-1",
        Arc::new(MemoryLog::new()),
        true,
    )
    .unwrap();
    assert!(node.attach_requests(recorder));
    // A thread names itself, and sets its CPUs, once it runs: each must show up with every
    // CPU (a thread left on the pinned CPU fails the wait).
    let names = ["amisim-writer", "amisim-commit", "amisim-requests"];
    let on_every_cpu = || {
        let threads = cpus_of_threads("amisim-");
        names.iter().all(|name| {
            threads
                .iter()
                .any(|(n, cpus)| n.starts_with(name) && *cpus == all)
        })
    };
    wait_until("the node's threads on every CPU", 5, on_every_cpu).await;
}
