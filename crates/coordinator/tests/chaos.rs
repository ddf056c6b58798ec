//! Link faults against real region nodes, in one process (issue 6): three nodes on in-memory
//! logs and virtual clocks served on 127.0.0.1:0, followers and the copy saga driver over routes
//! wrapped in the chaos layer, one shared [`LinkControl`].
//!
//! Checked: a partition stalls a copy (the saga retries, never fails it) until it heals, then the
//! copy finishes; bandwidth bounds the transfer time (the start's due time is exactly latency +
//! bytes ÷ bandwidth); loss on the transfer and on the coordinator's channels causes retries,
//! never a second start; the same seed in virtual-clock mode gives the same logs (every field
//! but wall time and the hash chain over it), and another seed another sampled schedule.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_chaos::{LinkControl, LinkModel, LinkSpec, LinkTable};
use amisim_coordinator::follower::FollowerConfig;
use amisim_coordinator::{FollowerSet, RegionRoutes, SagaConfig, SagaDriver};
use amisim_log::MemoryLog;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::region_client::RegionClient;
use amisim_proto::{
    BlockDeviceMapping, CopyImageRequest, CopySnapshotRequest, CreateSnapshotRequest,
    CreateVolumeRequest, DescribeImagesRequest, DescribeSnapshotsRequest, DescribeVolumesRequest,
    EbsBlockDevice, Event, RegisterImageRequest, StreamEventsRequest,
};
use amisim_region::{serve, RegionConfig, RegionNode};
use tokio::net::TcpListener;
use tonic::transport::Channel;

mod common;
use common::{lazy, Node, REGIONS, T0};

const MIB: u64 = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    nodes: BTreeMap<String, Node>,
    routes: RegionRoutes,
    links: LinkControl,
    followers: FollowerSet,
    driver: SagaDriver,
}

impl Cluster {
    async fn start(table: LinkTable, seed: u64) -> Cluster {
        let (nodes, routes) = common::start_nodes().await;
        let links = LinkControl::new(table, seed);
        let routes = routes.with_chaos(links.clone());
        let followers = FollowerSet::follow_routes(
            &routes,
            FollowerConfig {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                ..FollowerConfig::default()
            },
        )
        .unwrap();
        let driver = SagaDriver::spawn(
            followers.projection(),
            routes.clone(),
            links.clone(),
            SagaConfig {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                rpc_timeout: Duration::from_secs(5),
                seed,
                ..SagaConfig::default()
            },
        );
        Cluster {
            nodes,
            routes,
            links,
            followers,
            driver,
        }
    }

    fn node(&self, region: &str) -> &Node {
        &self.nodes[region]
    }

    fn ec2(&self, region: &str) -> Ec2Client<Channel> {
        Ec2Client::new(lazy(&self.node(region).addr.to_string()))
    }

    /// Every clock to the earliest due timer of any node (what `Chaos.AdvanceToNextTimer` does).
    fn advance_to_next_timer(&self) {
        let next = self
            .nodes
            .values()
            .filter_map(|n| n.node.state().next_due_ms())
            .min();
        if let Some(t) = next {
            for n in self.nodes.values() {
                n.clock.set(t);
            }
        }
    }

    fn advance(&self, ms: u64) {
        for n in self.nodes.values() {
            n.clock.advance(ms);
        }
    }

    async fn log(&self, region: &str) -> Vec<Event> {
        use futures::StreamExt;
        let mut admin = RegionClient::new(lazy(&self.node(region).addr.to_string()));
        let mut stream = admin
            .stream_events(StreamEventsRequest {
                from_seq: 1,
                follow: false,
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(e) = stream.next().await {
            out.push(e.unwrap());
        }
        out
    }

    /// Every node's own digest, once the projection has caught up with every head.
    async fn digests(&self) -> BTreeMap<String, String> {
        let projection = self.followers.projection();
        eventually("the projection reaches every head", || async {
            self.nodes
                .iter()
                .all(|(r, n)| projection.applied_seq(r) == n.node.head_seq())
                .then_some(())
        })
        .await;
        let snap = projection.snapshot();
        self.nodes
            .keys()
            .map(|r| {
                let own = self.node(r).node.state().digest();
                assert_eq!(snap.region(r).unwrap().state.digest(), own, "{r}");
                (r.clone(), own)
            })
            .collect()
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn image_state(ec2: &mut Ec2Client<Channel>, id: &str) -> Option<String> {
    let r = ec2
        .describe_images(DescribeImagesRequest {
            image_ids: vec![id.to_string()],
            ..Default::default()
        })
        .await
        .ok()?;
    r.into_inner().images.pop().map(|i| i.state)
}

async fn snapshot_state(ec2: &mut Ec2Client<Channel>, id: &str) -> Option<String> {
    let r = ec2
        .describe_snapshots(DescribeSnapshotsRequest {
            snapshot_ids: vec![id.to_string()],
            ..Default::default()
        })
        .await
        .ok()?;
    r.into_inner().snapshots.pop().map(|s| s.state)
}

/// A completed 8 GiB snapshot in `region`.
async fn make_snapshot(c: &Cluster, region: &str) -> String {
    let mut ec2 = c.ec2(region);
    let vol = ec2
        .create_volume(CreateVolumeRequest {
            availability_zone: format!("{region}a"),
            size: Some(8),
            volume_type: "gp3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume_id;
    c.node(region).clock.advance(10_000);
    eventually("volume available", || {
        let mut ec2 = ec2.clone();
        let vol = vol.clone();
        async move {
            let v = ec2
                .describe_volumes(DescribeVolumesRequest {
                    volume_ids: vec![vol],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .volumes
                .pop()?;
            (v.state == "available").then_some(())
        }
    })
    .await;
    let snap = ec2
        .create_snapshot(CreateSnapshotRequest {
            volume_id: vol,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot_id;
    c.node(region).clock.advance(600_000);
    eventually("snapshot completed", || {
        let mut ec2 = ec2.clone();
        let snap = snap.clone();
        async move { (snapshot_state(&mut ec2, &snap).await? == "completed").then_some(()) }
    })
    .await;
    snap
}

/// An available image in `region` on a new 8 GiB snapshot.
async fn make_image(c: &Cluster, region: &str, name: &str) -> String {
    let snap = make_snapshot(c, region).await;
    let mut ec2 = c.ec2(region);
    let image = ec2
        .register_image(RegisterImageRequest {
            name: name.to_string(),
            root_device_name: "/dev/xvda".into(),
            architecture: "arm64".into(),
            virtualization_type: "hvm".into(),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: snap,
                    volume_type: "gp3".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_id;
    c.node(region).clock.advance(10_000);
    eventually("image available", || {
        let mut ec2 = ec2.clone();
        let image = image.clone();
        async move { (image_state(&mut ec2, &image).await? == "available").then_some(()) }
    })
    .await;
    image
}

async fn copy_image(c: &Cluster, dest: &str, src: &str, source: &str, name: &str) -> String {
    c.ec2(dest)
        .copy_image(CopyImageRequest {
            source_image_id: source.to_string(),
            source_region: src.to_string(),
            name: name.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_id
}

/// Waits until `image` in `region` is `state`, moving every clock by `step` ms between looks.
async fn until_image(c: &Cluster, region: &str, image: &str, state: &str, step: u64) {
    let mut ec2 = c.ec2(region);
    eventually(&format!("{image} {state}"), || {
        let mut ec2 = ec2.clone();
        async move {
            c.advance(step);
            (image_state(&mut ec2, image).await? == state).then_some(())
        }
    })
    .await;
    let _ = &mut ec2;
}

/// `ImageCopyStarted` events of a log, by copy id.
fn starts(log: &[Event]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in log {
        if let Some(Payload::ImageCopyStarted(s)) = &e.payload {
            *out.entry(s.copy_id.clone()).or_default() += 1;
        }
    }
    out
}

/// `ImageCopyStarted` events of a log: (started_at_ms, available_at_ms).
fn image_windows(log: &[Event]) -> Vec<(u64, u64)> {
    log.iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::ImageCopyStarted(s)) => Some((s.started_at_ms, s.available_at_ms)),
            _ => None,
        })
        .collect()
}

/// `SnapshotCopyStarted` events of a log: (started_at_ms, complete_at_ms, bytes).
fn snapshot_starts(log: &[Event]) -> Vec<(u64, u64, i64)> {
    log.iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::SnapshotCopyStarted(s)) => Some((
                s.started_at_ms,
                s.complete_at_ms,
                s.full_snapshot_size_in_bytes,
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_stalls_copies_until_healed_then_they_finish() {
    let c = Cluster::start(
        LinkTable::from_specs(["us-east-1:eu-west-1=1000,1024".parse().unwrap()]).unwrap(),
        1,
    )
    .await;
    let ami = make_image(&c, "us-east-1", "golden").await;
    // One way only: us-east-1 → eu-west-1 is cut; the way back and other pairs are not.
    c.links
        .set("us-east-1:eu-west-1=1000,1024,partition".parse().unwrap())
        .unwrap();
    let stalled = copy_image(&c, "eu-west-1", "us-east-1", &ami, "over the cut").await;
    let other = copy_image(&c, "ap-south-1", "us-east-1", &ami, "around it").await;

    // The saga retries (never fails the copy) while the link is cut; time passes, nothing moves.
    let monitor = c.driver.monitor();
    eventually("the driver reports the partition", || async {
        let s = monitor.status();
        s.active
            .iter()
            .any(|d| {
                d.destination_region == "eu-west-1"
                    && d.attempts >= 3
                    && d.last_error
                        .as_deref()
                        .unwrap_or("")
                        .contains("partitioned")
            })
            .then_some(())
    })
    .await;
    until_image(&c, "ap-south-1", &other, "available", 60_000).await;
    c.advance(3_600_000);
    let mut ec2 = c.ec2("eu-west-1");
    assert_eq!(
        image_state(&mut ec2, &stalled).await.as_deref(),
        Some("pending")
    );
    assert!(starts(&c.log("eu-west-1").await).is_empty());

    // Healed: the copy starts at once and finishes on the link's schedule.
    c.links.clear("us-east-1", "eu-west-1");
    c.links
        .set("us-east-1:eu-west-1=1000,1024".parse().unwrap())
        .unwrap();
    until_image(&c, "eu-west-1", &stalled, "available", 5_000).await;
    let eu = c.log("eu-west-1").await;
    assert_eq!(starts(&eu).values().copied().collect::<Vec<_>>(), [1]);
    c.digests().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bandwidth_bounds_the_transfer_time() {
    // 500 ms + 8 GiB ÷ 64 MiB/s = 500 + 128 000 ms; the other direction keeps the default.
    let c = Cluster::start(
        LinkTable::from_specs(["us-east-1:eu-west-1=500,64".parse().unwrap()]).unwrap(),
        2,
    )
    .await;
    let snap = make_snapshot(&c, "us-east-1").await;
    let back = make_snapshot(&c, "eu-west-1").await;
    for (dest, src, id) in [
        ("eu-west-1", "us-east-1", &snap),
        ("us-east-1", "eu-west-1", &back),
    ] {
        c.ec2(dest)
            .copy_snapshot(CopySnapshotRequest {
                source_region: src.into(),
                source_snapshot_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let started = |region: &'static str| {
        let c = &c;
        async move {
            eventually("the copy started", || async {
                snapshot_starts(&c.log(region).await).pop()
            })
            .await
        }
    };
    let (at, due, bytes) = started("eu-west-1").await;
    assert_eq!(bytes as u64, 8 * 1024 * MIB);
    assert_eq!(due - at, 500 + 8 * 1024 * MIB * 1000 / (64 * MIB));
    let (at, due, _) = started("us-east-1").await;
    assert_eq!(
        due - at,
        LinkModel::CROSS_REGION.transfer_ms(8 * 1024 * MIB),
        "the default link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loss_causes_retries_not_duplicates() {
    // Lossy transfers, and lossy coordinator channels to the destination both ways: a StartCopy
    // that ran but whose answer was lost is sent again and writes nothing the second time.
    let lossy: Vec<LinkSpec> = [
        "us-east-1:eu-west-1=1000,1024,loss=0.5",
        "coordinator:eu-west-1=0,1,loss=0.3",
        "eu-west-1:coordinator=0,1,loss=0.5",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let c = Cluster::start(LinkTable::from_specs(lossy).unwrap(), 3).await;
    let ami = make_image(&c, "us-east-1", "golden").await;
    let mut copies = Vec::new();
    for i in 0..4 {
        copies.push(copy_image(&c, "eu-west-1", "us-east-1", &ami, &format!("copy {i}")).await);
    }
    for id in &copies {
        until_image(&c, "eu-west-1", id, "available", 5_000).await;
    }
    let s = c.driver.monitor().status();
    assert!(s.step_failures > 0, "the loss was felt: {s:?}");
    let started = starts(&c.log("eu-west-1").await);
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(
        started.values().all(|&n| n == 1),
        "one start each: {started:?}"
    );
    // Heal, and the projections converge on the nodes' digests.
    c.links.reset();
    c.links.clear("us-east-1", "eu-west-1");
    c.links.clear("coordinator", "eu-west-1");
    c.links.clear("eu-west-1", "coordinator");
    c.digests().await;
}

/// One scripted run: two images copied one after the other over a link with a random latency;
/// returns the region digests and each copy's sampled transfer window.
async fn scripted_run(seed: u64) -> (BTreeMap<String, Vec<Event>>, Vec<(u64, u64)>) {
    let table = LinkTable::from_specs([
        "us-east-1:eu-west-1=0,128,pareto=2000/1.5,jitter=300"
            .parse()
            .unwrap(),
        "us-east-1:ap-south-1=0,64,uniform=1000-90000"
            .parse()
            .unwrap(),
    ])
    .unwrap();
    let c = Cluster::start(table, seed).await;
    let ami = make_image(&c, "us-east-1", "golden").await;
    for (i, (dest, name)) in [
        ("eu-west-1", "one"),
        ("ap-south-1", "two"),
        ("eu-west-1", "three"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = copy_image(&c, dest, "us-east-1", &ami, name).await;
        // Time stands still until the copy has started (the system is idle), then jumps from
        // timer to timer: the virtual-clock discipline that makes a run replay.
        let started = i + 1;
        eventually("the copy started", || async {
            let mut n = image_windows(&c.log("eu-west-1").await).len();
            n += image_windows(&c.log("ap-south-1").await).len();
            (n == started).then_some(())
        })
        .await;
        let mut ec2 = c.ec2(dest);
        eventually("the copy available", || {
            let mut ec2 = ec2.clone();
            let id = id.clone();
            let c = &c;
            async move {
                if image_state(&mut ec2, &id).await? == "available" {
                    return Some(());
                }
                c.advance_to_next_timer();
                None
            }
        })
        .await;
        let _ = &mut ec2;
    }
    let mut windows = image_windows(&c.log("eu-west-1").await);
    windows.extend(image_windows(&c.log("ap-south-1").await));
    assert_eq!(windows.len(), 3);
    c.digests().await;
    // The logs, field for field but for what the wall decides: the wall clock itself and the
    // hash chain over it, and request ids (a node draws a missing one from the OS, and a saga
    // step's names its attempt).
    let mut logs = BTreeMap::new();
    for r in REGIONS {
        let log = c.log(r).await;
        let log = log
            .into_iter()
            .map(|mut e| {
                e.wall_time_ms = 0;
                e.request_id.clear();
                e.prev_hash.clear();
                e.hash.clear();
                e
            })
            .collect();
        logs.insert(r.to_string(), log);
    }
    c.driver.shutdown().await;
    (logs, windows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_seed_replays_the_same_logs_and_another_seed_another_schedule() {
    let (a, wa) = scripted_run(41).await;
    let (b, wb) = scripted_run(41).await;
    assert_eq!(wa, wb);
    for r in REGIONS {
        assert_eq!(a[r].len(), b[r].len(), "{r}");
        for (x, y) in a[r].iter().zip(&b[r]) {
            assert_eq!(x, y, "{r}: same seed, same log");
        }
    }
    let (c, wc) = scripted_run(42).await;
    assert_ne!(wa, wc, "another seed draws other latencies");
    assert_ne!(a["eu-west-1"], c["eu-west-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chaos_service_moves_clocks_and_changes_links() {
    use amisim_coordinator::ChaosControl;
    use amisim_proto::chaos_client::ChaosClient;
    use amisim_proto::{
        AdvanceClockRequest, AdvanceToNextTimerRequest, ClearLinkRequest, GetClockRequest, Link,
        ListLinksRequest, ResetLinksRequest, SetLinkRequest,
    };

    let start = LinkTable::from_specs(["us-east-1:eu-west-1=1000,1024".parse().unwrap()]).unwrap();
    let c = Cluster::start(start, 5).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ChaosControl::new(c.routes.clone(), c.links.clone()).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut chaos = ChaosClient::new(lazy(&addr.to_string()));

    // Clocks: every node virtual, at T0; moved together.
    let clocks = chaos
        .get_clock(GetClockRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clocks.regions.len(), 3);
    assert!(clocks
        .regions
        .iter()
        .all(|r| r.virtual_clock && r.now_ms == T0));
    c.node("us-east-1").clock.advance(1_000);
    let moved = chaos
        .advance_clock(AdvanceClockRequest { ms: 5_000 })
        .await
        .unwrap()
        .into_inner();
    assert!(
        moved.regions.iter().all(|r| r.now_ms == T0 + 6_000),
        "to the latest node + 5 s: {moved:?}"
    );

    // Advance to the next timer: a new volume becomes available in 2 s (sim).
    let vol = c
        .ec2("eu-west-1")
        .create_volume(CreateVolumeRequest {
            availability_zone: "eu-west-1a".into(),
            size: Some(8),
            volume_type: "gp3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume_id;
    let due = c.node("eu-west-1").node.state().next_due_ms().unwrap();
    assert!(due > T0 + 6_000);
    let moved = chaos
        .advance_to_next_timer(AdvanceToNextTimerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(moved.regions.iter().all(|r| r.now_ms == due), "{moved:?}");
    let mut ec2 = c.ec2("eu-west-1");
    eventually("the volume's timer fired", || {
        let mut ec2 = ec2.clone();
        let vol = vol.clone();
        async move {
            let v = ec2
                .describe_volumes(DescribeVolumesRequest {
                    volume_ids: vec![vol],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .volumes
                .pop()?;
            (v.state == "available").then_some(())
        }
    })
    .await;
    let _ = &mut ec2;

    // Links: set (a one-way partition), list, clear, reset.
    let set = chaos
        .set_link(SetLinkRequest {
            link: Some(Link {
                from: "eu-west-1".into(),
                to: "us-east-1".into(),
                latency_ms: 250,
                partitioned: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap();
    assert_eq!(set.bandwidth_bytes_per_s, 75 * MIB, "0 means the default");
    assert!(c.links.get("eu-west-1", "us-east-1").partitioned);
    assert!(!c.links.get("us-east-1", "eu-west-1").partitioned);
    let listed = chaos
        .list_links(ListLinksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((listed.links.len(), listed.seed), (2, 5));
    let bad = chaos
        .set_link(SetLinkRequest {
            link: Some(Link {
                from: "eu-west-1".into(),
                to: "US".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let cleared = chaos
        .clear_link(ClearLinkRequest {
            from: "eu-west-1".into(),
            to: "us-east-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.cleared);
    c.links.set("a-1:b-1=1,1".parse().unwrap()).unwrap();
    let reset = chaos
        .reset_links(ResetLinksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.links.len(), 1);
    assert_eq!(reset.links[0].latency_ms, 1000);

    // Every change through the service is in the home region's log (us-east-1), in order.
    let recorded: Vec<_> = c
        .log("us-east-1")
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::LinkConditionChanged(l)) => Some(l),
            _ => None,
        })
        .collect();
    let actions: Vec<_> = recorded.iter().map(|l| l.action.as_str()).collect();
    assert_eq!(actions, ["set", "clear", "reset"]);
    assert_eq!(
        (recorded[0].from.as_str(), recorded[0].to.as_str()),
        ("eu-west-1", "us-east-1")
    );
    assert!(recorded[0].partitioned && recorded[0].description.contains("partitioned"));
    assert_eq!(recorded[0].seed, 5);
    // The state ignores them: the projection still equals each node.
    c.digests().await;
}

#[tokio::test]
async fn a_scaled_node_refuses_to_be_moved_by_hand() {
    use amisim_proto::RegionAdvanceClockRequest;
    let node =
        RegionNode::start(RegionConfig::new("us-east-1"), Arc::new(MemoryLog::new())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(node, listener, std::future::pending()));
    let mut region = RegionClient::new(lazy(&addr.to_string()));
    let e = region
        .advance_clock(RegionAdvanceClockRequest {
            by_ms: 1_000,
            to_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let info = region
        .get_region_info(amisim_proto::GetRegionInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!info.virtual_clock);
}
