//! Black-box tests of the global projection: real region nodes (in-memory logs, virtual clocks,
//! so nothing changes unless a test writes) served on 127.0.0.1:0, followers feeding a
//! projection, and the `Coordinator` service on its own port, all talked to over gRPC.
//!
//! Each region is reached by the followers through a small TCP proxy the test can cut: it
//! stands for a crash or a network partition (connections drop without a goodbye), and keeps
//! the address the followers know when a node restarts on a new port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amisim_chaos::{Clock, VirtualClock};
use amisim_coordinator::follower::FollowerConfig;
use amisim_coordinator::{serve_coordinator, CoordinatorService, FollowerSet, Projection};
use amisim_core::state::VolumeState;
use amisim_log::{EventLog, MemoryLog};
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::region_client::RegionClient;
use amisim_proto::{
    CreateSnapshotRequest, CreateVolumeRequest, DescribeGlobalImagesRequest,
    DescribeGlobalSnapshotsRequest, DescribeImagesRequest, DescribeSnapshotsRequest, Event,
    EventRef, GetGlobalStateDigestRequest, GetProjectionStatusRequest, GetStateDigestRequest,
    RegisterImageRequest, VolumeCreated,
};
use amisim_region::{serve, RegionConfig, RegionNode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const OWNER: &str = "111122223333";
const OTHER: &str = "444455556666";
/// 2024-05-01T00:00:00Z.
const T0: u64 = 1_714_521_600_000;

// ---- a cuttable TCP proxy --------------------------------------------------------------------

/// Forwards every connection to `target`; `cut` drops every open connection at once.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    cuts: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let (cuts, _) = watch::channel(0u64);
        let t = target.clone();
        let c = cuts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            target,
            cuts,
            task,
        }
    }

    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// ---- region nodes ----------------------------------------------------------------------------

struct Region {
    name: String,
    log: Arc<MemoryLog>,
    node: Arc<RegionNode>,
    clock: VirtualClock,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), amisim_region::RegionError>>>,
    proxy: Proxy,
}

async fn serve_node(
    name: &str,
    log: Arc<MemoryLog>,
    seed: u64,
    at: &str,
) -> (
    Arc<RegionNode>,
    VirtualClock,
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), amisim_region::RegionError>>,
) {
    let cfg = RegionConfig {
        seed: Some(seed),
        ..RegionConfig::new(name)
    };
    let clock = VirtualClock::new(T0);
    let c = clock.clone();
    let node = RegionNode::start_with_clock(cfg, log, move |last| {
        c.set(last);
        Arc::new(c) as Arc<dyn Clock>
    })
    .unwrap();
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(node.clone(), listener, async move {
        let _ = stopped.await;
    }));
    (node, clock, addr, stop, task)
}

impl Region {
    async fn start(name: &str, log: Arc<MemoryLog>, seed: u64) -> Region {
        let (node, clock, addr, stop, task) =
            serve_node(name, log.clone(), seed, "127.0.0.1:0").await;
        let proxy = Proxy::start(addr).await;
        Region {
            name: name.to_string(),
            log,
            node,
            clock,
            addr,
            stop: Some(stop),
            task: Some(task),
            proxy,
        }
    }

    /// Stops the node as a crash would look from outside: the links drop, then the node ends.
    async fn crash(&mut self) {
        self.proxy.cut();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("the region server stops once its links are cut")
                .unwrap()
                .unwrap();
        }
        self.node.shutdown().await;
    }

    /// Stops serving gracefully (in-flight calls finish) and stops the node, within 5 s.
    async fn stop_gracefully(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("the region server stops gracefully")
                .unwrap()
                .unwrap();
        }
        self.node.shutdown().await;
    }

    /// Starts a new node on the same log, on a new port, behind the same proxy address.
    async fn restart(&mut self, seed: u64) {
        self.restart_at("127.0.0.1:0", seed).await;
    }

    /// Starts a new node on the same log, on the port it had.
    async fn restart_on_same_port(&mut self, seed: u64) {
        let at = self.addr.to_string();
        self.restart_at(&at, seed).await;
    }

    async fn restart_at(&mut self, at: &str, seed: u64) {
        let (node, clock, addr, stop, task) =
            serve_node(&self.name, self.log.clone(), seed, at).await;
        self.node = node;
        self.clock = clock;
        self.addr = addr;
        self.stop = Some(stop);
        self.task = Some(task);
        self.proxy.retarget(addr);
    }

    async fn ec2(&self) -> Ec2Client<Channel> {
        Ec2Client::new(connect(self.addr).await)
    }

    async fn region(&self) -> RegionClient<Channel> {
        RegionClient::new(connect(self.addr).await)
    }

    /// The channel followers use: through the proxy, connecting lazily.
    fn follower_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.proxy.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

// ---- the cluster -----------------------------------------------------------------------------

struct Cluster {
    regions: BTreeMap<String, Region>,
    followers: FollowerSet,
    coordinator: CoordinatorClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
}

impl Cluster {
    async fn start(names: &[&str]) -> Cluster {
        Self::start_with_logs(
            names
                .iter()
                .map(|n| (n.to_string(), Arc::new(MemoryLog::new())))
                .collect(),
        )
        .await
    }

    async fn start_with_logs(logs: Vec<(String, Arc<MemoryLog>)>) -> Cluster {
        let mut regions = BTreeMap::new();
        for (i, (name, log)) in logs.into_iter().enumerate() {
            regions.insert(
                name.clone(),
                Region::start(&name, log, 100 + i as u64).await,
            );
        }
        let projection = Arc::new(Projection::new(regions.keys().cloned()));
        let config = FollowerConfig {
            seed: 42,
            ..FollowerConfig::default()
        };
        let followers = FollowerSet::spawn(
            projection.clone(),
            regions
                .values()
                .map(|r| (r.name.clone(), r.follower_channel())),
            config,
        )
        .unwrap();
        let service = CoordinatorService::new(projection).with_followers(followers.monitor());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_coordinator(service, listener, async move {
            let _ = stopped.await;
        }));
        let coordinator = CoordinatorClient::new(connect(addr).await);
        Cluster {
            regions,
            followers,
            coordinator,
            stop: Some(stop),
        }
    }

    fn region(&mut self, name: &str) -> &mut Region {
        self.regions.get_mut(name).unwrap()
    }

    /// Asserts that the coordinator's digest of every region equals the region's own at the
    /// same seq (waiting, through the token, until the coordinator has the region's head).
    async fn assert_digests_match(&mut self) {
        let mut token = Vec::new();
        let mut expected = BTreeMap::new();
        for (name, r) in &self.regions {
            let own = r
                .region()
                .await
                .get_state_digest(GetStateDigestRequest { replay: true })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(own.digest, own.replay_digest, "{name}: live != replay");
            token.push(format!("{name}:{}", own.seq));
            expected.insert(name.clone(), (own.seq, own.digest));
        }
        let global = self
            .coordinator
            .get_state_digest(GetGlobalStateDigestRequest {
                regions: vec![],
                consistency_token: token.join(","),
            })
            .await
            .unwrap()
            .into_inner();
        let got: BTreeMap<String, (u64, String)> = global
            .regions
            .into_iter()
            .map(|d| (d.region, (d.seq, d.digest)))
            .collect();
        assert_eq!(got, expected);
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.followers.shutdown().await;
        for r in self.regions.values_mut() {
            r.crash().await;
        }
    }
}

fn as_account<T>(account: &str, body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("x-amisim-account", account.parse().unwrap());
    r
}

fn token_of<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("x-amisim-consistency-token")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string()
}

fn error_code(s: &tonic::Status) -> &str {
    s.metadata()
        .get("x-amisim-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Creates a volume and a snapshot of it in `r` as `account`; returns the snapshot id and the
/// write's consistency token.
async fn volume_and_snapshot(r: &Region, account: &str) -> (String, String) {
    let mut ec2 = r.ec2().await;
    let volume = ec2
        .create_volume(as_account(
            account,
            CreateVolumeRequest {
                availability_zone: format!("{}a", r.name),
                size: Some(8),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Simulated time passes until the volume is available (the node logs that too).
    r.clock.advance(10 * 60 * 1000);
    let node = r.node.clone();
    let id = volume.volume_id.clone();
    eventually("the volume to become available", || {
        let available = node
            .state()
            .volumes
            .get(&id)
            .is_some_and(|v| v.state == VolumeState::Available);
        async move { available }
    })
    .await;
    let snap = ec2
        .create_snapshot(as_account(
            account,
            CreateSnapshotRequest {
                volume_id: volume.volume_id,
                description: format!("in {}", r.name),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let token = token_of(&snap);
    (snap.into_inner().snapshot_id, token)
}

async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projection_digests_equal_each_regions_own() {
    let mut c = Cluster::start(&["us-east-1", "eu-west-1", "ap-south-1"]).await;
    c.assert_digests_match().await;
    for name in ["us-east-1", "eu-west-1", "ap-south-1"] {
        for _ in 0..3 {
            volume_and_snapshot(c.region(name), OWNER).await;
        }
    }
    volume_and_snapshot(c.region("eu-west-1"), OTHER).await;
    c.assert_digests_match().await;

    let status = c
        .coordinator
        .get_projection_status(GetProjectionStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.regions.len(), 3);
    for r in &status.regions {
        assert!(r.connected, "{r:?}");
        assert_eq!(r.buffered_events, 0);
        assert_eq!(r.applied_seq, r.received_seq);
        assert!(r.applied_seq > 0);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_global_read_with_a_writes_token_sees_that_write() {
    let mut c = Cluster::start(&["us-east-1", "eu-west-1"]).await;
    for round in 0..5 {
        let (snap_id, token) = volume_and_snapshot(c.region("eu-west-1"), OWNER).await;
        assert!(token.starts_with("eu-west-1:"), "{token}");
        // The token as the region returned it, in the request field …
        let found = c
            .coordinator
            .describe_global_snapshots(as_account(
                OWNER,
                DescribeGlobalSnapshotsRequest {
                    describe: Some(DescribeSnapshotsRequest {
                        snapshot_ids: vec![snap_id.clone()],
                        ..Default::default()
                    }),
                    regions: vec![],
                    consistency_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.snapshots.len(), 1, "round {round}");
        assert_eq!(found.snapshots[0].region, "eu-west-1");
        let applied: u64 = found
            .consistency_token
            .split(',')
            .find_map(|p| p.strip_prefix("eu-west-1:"))
            .and_then(|s| s.parse().ok())
            .unwrap();
        let wanted: u64 = token["eu-west-1:".len()..].parse().unwrap();
        assert!(applied >= wanted);

        // … or echoed as metadata.
        let (snap_id, token) = volume_and_snapshot(c.region("us-east-1"), OWNER).await;
        let mut req = as_account(OWNER, DescribeGlobalSnapshotsRequest::default());
        req.metadata_mut()
            .insert("x-amisim-consistency-token", token.parse().unwrap());
        let found = c
            .coordinator
            .describe_global_snapshots(req)
            .await
            .unwrap()
            .into_inner();
        assert!(found.snapshots.iter().any(|s| s.region == "us-east-1"
            && s.snapshot.as_ref().map(|s| s.snapshot_id.as_str()) == Some(snap_id.as_str())));
    }
    // Visibility is each region's: OTHER sees none of OWNER's private snapshots.
    let theirs = c
        .coordinator
        .describe_global_snapshots(as_account(OTHER, DescribeGlobalSnapshotsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.snapshots.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_images_are_tagged_with_their_region_and_filtered_by_visibility() {
    let mut c = Cluster::start(&["us-east-1", "eu-west-1"]).await;
    let mut tokens = Vec::new();
    for (region, account, name) in [
        ("us-east-1", OWNER, "web"),
        ("eu-west-1", OWNER, "web"),
        ("eu-west-1", OTHER, "theirs"),
    ] {
        let r = c
            .region(region)
            .ec2()
            .await
            .register_image(as_account(
                account,
                RegisterImageRequest {
                    name: name.into(),
                    image_location: format!("my-bucket/{name}/image.manifest.xml"),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        tokens.push(token_of(&r));
    }
    let all = c
        .coordinator
        .describe_global_images(as_account(
            OWNER,
            DescribeGlobalImagesRequest {
                describe: None,
                regions: vec![],
                consistency_token: tokens.join(","),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let regions: Vec<&str> = all.images.iter().map(|i| i.region.as_str()).collect();
    assert_eq!(regions, ["eu-west-1", "us-east-1"]);
    assert!(all
        .images
        .iter()
        .all(|i| i.image.as_ref().is_some_and(|i| i.owner_id == OWNER)));

    // The region filter, and EC2 errors with their codes.
    let only_us = c
        .coordinator
        .describe_global_images(as_account(
            OWNER,
            DescribeGlobalImagesRequest {
                regions: vec!["us-east-1".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_us.images.len(), 1);
    let err = c
        .coordinator
        .describe_global_images(as_account(
            OWNER,
            DescribeGlobalImagesRequest {
                describe: Some(DescribeImagesRequest {
                    image_ids: vec!["ami-0123456789abcdef0".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_code(&err), "InvalidAMIID.NotFound");
    let err = c
        .coordinator
        .describe_global_images(as_account(
            OWNER,
            DescribeGlobalImagesRequest {
                regions: vec!["mars-north-1".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_code(&err), "InvalidRegion");
    let err = c
        .coordinator
        .describe_global_images(as_account(
            OWNER,
            DescribeGlobalImagesRequest {
                consistency_token: "us-east-1=4".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_code(&err), "InvalidConsistencyToken");
    let err = c
        .coordinator
        .describe_global_images(as_account("nobody", DescribeGlobalImagesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_far_in_the_future_fails_with_deadline_exceeded() {
    let mut c = Cluster::start(&["us-east-1", "eu-west-1"]).await;
    let mut req = Request::new(DescribeGlobalImagesRequest {
        consistency_token: "us-east-1:1000000".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(800));
    let t0 = std::time::Instant::now();
    let err = c.coordinator.describe_global_images(req).await.unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(error_code(&err), "ConsistencyTimeout");
    assert!(err.message().starts_with("ConsistencyTimeout: "), "{err:?}");
    assert!(err.message().contains("us-east-1:1000000"), "{err:?}");
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A request that is wrong whatever the projection holds fails at once, without waiting.
    let mut req = Request::new(DescribeGlobalSnapshotsRequest {
        describe: Some(DescribeSnapshotsRequest {
            filters: vec![amisim_proto::Filter {
                name: "colour".into(),
                values: vec!["red".into()],
            }],
            ..Default::default()
        }),
        regions: vec![],
        consistency_token: "us-east-1:1000000".into(),
    });
    req.set_timeout(Duration::from_secs(20));
    let t0 = std::time::Instant::now();
    let err = c
        .coordinator
        .describe_global_snapshots(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(error_code(&err), "InvalidParameterValue");
    assert!(t0.elapsed() < Duration::from_secs(2));

    // A token naming a region the coordinator does not follow fails at once.
    let err = c
        .coordinator
        .get_state_digest(GetGlobalStateDigestRequest {
            regions: vec![],
            consistency_token: "ap-south-1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_code(&err), "InvalidRegion");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_region_is_followed_again_without_gap_or_duplicate() {
    let mut c = Cluster::start(&["us-east-1", "eu-west-1"]).await;
    for _ in 0..3 {
        volume_and_snapshot(c.region("us-east-1"), OWNER).await;
    }
    c.assert_digests_match().await;

    // The node goes away: the follower notices and retries with backoff.
    c.region("us-east-1").crash().await;
    let monitor = c.followers.monitor();
    eventually("the follower to notice the loss", || {
        let s = monitor.region("us-east-1").unwrap();
        async move { !s.connected && s.reconnects >= 1 && s.last_error.is_some() }
    })
    .await;
    // Reads keep working from the last snapshot meanwhile.
    assert!(c
        .coordinator
        .get_projection_status(GetProjectionStatusRequest {})
        .await
        .is_ok());

    // Same log, new node, new port (the proxy keeps the address the follower knows).
    c.region("us-east-1").restart(7).await;
    let (snap_id, token) = volume_and_snapshot(c.region("us-east-1"), OWNER).await;
    let found = c
        .coordinator
        .describe_global_snapshots(as_account(
            OWNER,
            DescribeGlobalSnapshotsRequest {
                describe: Some(DescribeSnapshotsRequest {
                    snapshot_ids: vec![snap_id],
                    ..Default::default()
                }),
                regions: vec!["us-east-1".into()],
                consistency_token: token,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.snapshots.len(), 1);
    for _ in 0..2 {
        volume_and_snapshot(c.region("us-east-1"), OWNER).await;
    }
    c.assert_digests_match().await;

    let s = monitor.region("us-east-1").unwrap();
    assert!(s.connected, "{s:?}");
    assert_eq!(s.applied_seq, c.region("us-east-1").node.head_seq());
    assert_eq!(s.buffered, 0);
    let reconnects = s.reconnects;

    // A graceful restart on the same port: the node ends the stream, the follower resumes.
    c.region("us-east-1").stop_gracefully().await;
    eventually("the follower to notice the graceful stop", || {
        let s = monitor.region("us-east-1").unwrap();
        async move { s.reconnects > reconnects }
    })
    .await;
    c.region("us-east-1").restart_on_same_port(8).await;
    for _ in 0..2 {
        volume_and_snapshot(c.region("us-east-1"), OWNER).await;
    }
    c.assert_digests_match().await;
    let s = monitor.region("us-east-1").unwrap();
    assert!(s.connected, "{s:?}");
    assert_eq!(s.applied_seq, c.region("us-east-1").node.head_seq());
    let why = s.last_error.unwrap_or_default();
    assert!(
        !why.contains("merge"),
        "a resumed stream must neither skip nor repeat: {why}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_waits_for_its_cross_region_dependency() {
    // eu-west-1's log starts with an event that causally follows us-east-1's second event (as
    // a copy's completion follows its source), before us-east-1 has any.
    let eu_log = Arc::new(MemoryLog::new());
    eu_log
        .append(vec![Event {
            region: "eu-west-1".into(),
            event_id: "copied".into(),
            sim_time_ms: T0,
            account_id: "system".into(),
            correlation_id: "copy-1".into(),
            depends_on: vec![EventRef {
                region: "us-east-1".into(),
                seq: 2,
            }],
            payload: Some(Payload::VolumeCreated(VolumeCreated {
                volume_id: "vol-0000000000000c0de".into(),
                owner_id: OWNER.into(),
                availability_zone: "eu-west-1a".into(),
                size: 8,
                create_time_ms: T0,
                available_at_ms: T0 + 1_000_000,
                ..Default::default()
            })),
            ..Default::default()
        }])
        .unwrap();
    let mut c = Cluster::start_with_logs(vec![
        ("us-east-1".into(), Arc::new(MemoryLog::new())),
        ("eu-west-1".into(), eu_log),
    ])
    .await;
    let monitor = c.followers.monitor();
    eventually("eu-west-1's event to arrive", || {
        let s = monitor.region("eu-west-1").unwrap();
        async move { s.received_seq == 1 }
    })
    .await;
    let s = monitor.region("eu-west-1").unwrap();
    assert_eq!((s.applied_seq, s.buffered), (0, 1), "{s:?}");
    assert_eq!(
        s.blocked_on,
        Some(EventRef {
            region: "us-east-1".into(),
            seq: 2
        })
    );
    let status = c
        .coordinator
        .get_projection_status(GetProjectionStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let eu = status
        .regions
        .iter()
        .find(|r| r.region == "eu-west-1")
        .unwrap();
    assert_eq!(eu.buffered_events, 1);
    assert_eq!(eu.blocked_on.as_ref().map(|d| d.seq), Some(2));

    // us-east-1's second event releases it.
    volume_and_snapshot(c.region("us-east-1"), OWNER).await;
    let found = c
        .coordinator
        .get_state_digest(GetGlobalStateDigestRequest {
            regions: vec!["eu-west-1".into()],
            consistency_token: "eu-west-1:1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.regions[0].seq, 1);
    assert!(c.followers.projection().applied_seq("us-east-1") >= 2);
    c.assert_digests_match().await;
    c.shutdown().await;
}
