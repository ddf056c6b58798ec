//! The copy saga driver against real region nodes, in one process: three nodes (in-memory logs,
//! virtual clocks, so a transfer ends exactly when the test moves time) served on 127.0.0.1:0,
//! followers feeding the projection, the driver, and the `Coordinator` service for ListCopies,
//! all talking gRPC.
//!
//! What is checked, per copy: the outcome (`available` / `completed` / `failed` with a reason),
//! the new snapshots (`vol-ffffffff`, the EC2 description, encryption), the source fields of the
//! new image, the causal links in the logs (the source read depends on the request, every
//! started/failed event in the destination on the source read), exactly one start per copy
//! after a driver restart, and that the coordinator's projection digests equal each node's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_chaos::{LinkSpec, LinkTable};
use amisim_coordinator::follower::FollowerConfig;
use amisim_coordinator::saga::DriveStep;
use amisim_coordinator::{
    serve_coordinator, CoordinatorService, FollowerSet, Projection, RegionRoutes, SagaConfig,
    SagaDriver,
};
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::region_client::RegionClient;
use amisim_proto::{
    BlockDeviceMapping, CopyImageRequest, CopyInfo, CopySnapshotRequest, CreateSnapshotRequest,
    CreateVolumeRequest, DescribeImagesRequest, DescribeSnapshotsRequest, DescribeVolumesRequest,
    EbsBlockDevice, Event, EventRef, GetStateDigestRequest, Image, ListCopiesRequest,
    RegisterImageRequest, Snapshot, StreamEventsRequest,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

mod common;
use common::{lazy, Node, REGIONS};

const MIB: u64 = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(20);

// ---- the cluster -----------------------------------------------------------------------------

struct Cluster {
    nodes: BTreeMap<String, Node>,
    routes: RegionRoutes,
    followers: FollowerSet,
    coordinator: CoordinatorClient<Channel>,
    _coordinator_stop: oneshot::Sender<()>,
}

fn fast_followers() -> FollowerConfig {
    FollowerConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..FollowerConfig::default()
    }
}

fn fast_sagas() -> SagaConfig {
    SagaConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        rpc_timeout: Duration::from_secs(5),
        ..SagaConfig::default()
    }
}

impl Cluster {
    /// Three nodes, followers, and (if `links` is given) a saga driver whose monitor the
    /// Coordinator service reports; else no driver (the test starts its own).
    async fn start(links: Option<LinkTable>) -> (Cluster, Option<SagaDriver>) {
        let (nodes, routes) = common::start_nodes().await;
        let followers = FollowerSet::follow_routes(&routes, fast_followers()).unwrap();
        let driver = links
            .map(|l| SagaDriver::spawn(followers.projection(), routes.clone(), l, fast_sagas()));
        let mut service =
            CoordinatorService::new(followers.projection()).with_followers(followers.monitor());
        if let Some(d) = &driver {
            service = service.with_sagas(d.monitor());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_coordinator(service, listener, async move {
            let _ = stopped.await;
        }));
        let coordinator = CoordinatorClient::new(
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        (
            Cluster {
                nodes,
                routes,
                followers,
                coordinator,
                _coordinator_stop: stop,
            },
            driver,
        )
    }

    fn projection(&self) -> Arc<Projection> {
        self.followers.projection()
    }

    fn node(&self, region: &str) -> &Node {
        &self.nodes[region]
    }

    async fn ec2(&self, region: &str) -> Ec2Client<Channel> {
        Ec2Client::new(lazy(&self.node(region).addr.to_string()))
    }

    async fn admin(&self, region: &str) -> RegionClient<Channel> {
        RegionClient::new(lazy(&self.node(region).addr.to_string()))
    }

    /// Moves every region's simulated time by `ms`.
    fn advance(&self, ms: u64) {
        for n in self.nodes.values() {
            n.clock.advance(ms);
        }
    }

    /// The whole log of a region.
    async fn log(&self, region: &str) -> Vec<Event> {
        use futures::StreamExt;
        let mut admin = self.admin(region).await;
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

    /// Waits until the projection has applied every node's head, then checks each region's
    /// projected digest against the node's own.
    async fn assert_digests_converge(&self) {
        let projection = self.projection();
        eventually("the projection reaches every node's head", || async {
            self.nodes
                .iter()
                .all(|(r, n)| projection.applied_seq(r) == n.node.head_seq())
                .then_some(())
        })
        .await;
        for (r, n) in &self.nodes {
            let own = self
                .admin(r)
                .await
                .get_state_digest(GetStateDigestRequest { replay: true })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(own.digest, own.replay_digest, "{r}: live != replay");
            let snap = projection.snapshot();
            let mine = snap.region(r).unwrap();
            assert_eq!(mine.applied_seq, own.seq, "{r}");
            assert_eq!(mine.state.digest(), own.digest, "{r}: projection != node");
            assert_eq!(n.node.head_seq(), own.seq);
        }
    }

    async fn list_copies(&self, req: ListCopiesRequest) -> Vec<CopyInfo> {
        self.coordinator
            .clone()
            .list_copies(req)
            .await
            .unwrap()
            .into_inner()
            .copies
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

// ---- resources -------------------------------------------------------------------------------

async fn describe_image(ec2: &mut Ec2Client<Channel>, id: &str) -> Image {
    ec2.describe_images(DescribeImagesRequest {
        image_ids: vec![id.to_string()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .images
    .into_iter()
    .next()
    .unwrap()
}

async fn describe_snapshot(ec2: &mut Ec2Client<Channel>, id: &str) -> Snapshot {
    ec2.describe_snapshots(DescribeSnapshotsRequest {
        snapshot_ids: vec![id.to_string()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .snapshots
    .into_iter()
    .next()
    .unwrap()
}

/// A completed snapshot of a new `size` GiB volume in `region` (moving that region's clock).
async fn make_snapshot(c: &Cluster, region: &str, size: i32, encrypted: bool) -> String {
    let mut ec2 = c.ec2(region).await;
    let vol = ec2
        .create_volume(CreateVolumeRequest {
            availability_zone: format!("{region}a"),
            size: Some(size),
            volume_type: "gp3".into(),
            encrypted: encrypted.then_some(true),
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
            description: format!("source in {region}"),
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
        async move { (describe_snapshot(&mut ec2, &snap).await.state == "completed").then_some(()) }
    })
    .await;
    snap
}

/// An available EBS image in `region` backed by a new snapshot; returns (image, snapshot).
async fn make_image(c: &Cluster, region: &str, name: &str, encrypted: bool) -> (String, String) {
    let snap = make_snapshot(c, region, 8, encrypted).await;
    let mut ec2 = c.ec2(region).await;
    let image = ec2
        .register_image(RegisterImageRequest {
            name: name.to_string(),
            root_device_name: "/dev/xvda".into(),
            architecture: "arm64".into(),
            virtualization_type: "hvm".into(),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: snap.clone(),
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
        async move { (describe_image(&mut ec2, &image).await.state == "available").then_some(()) }
    })
    .await;
    (image, snap)
}

async fn copy_image(
    c: &Cluster,
    dest: &str,
    source_region: &str,
    source: &str,
    name: &str,
) -> String {
    c.ec2(dest)
        .await
        .copy_image(CopyImageRequest {
            source_image_id: source.to_string(),
            source_region: source_region.to_string(),
            name: name.to_string(),
            description: format!("copy of {source}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_id
}

async fn copy_snapshot(c: &Cluster, dest: &str, source_region: &str, source: &str) -> String {
    c.ec2(dest)
        .await
        .copy_snapshot(CopySnapshotRequest {
            source_region: source_region.to_string(),
            source_snapshot_id: source.to_string(),
            description: format!("copy of {source} from {source_region}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot_id
}

/// The copy id of the copy into `dest_id`, from the projection.
fn copy_id_of(c: &Cluster, dest: &str, dest_id: &str) -> String {
    let snap = c.projection().snapshot();
    snap.region(dest)
        .and_then(|r| {
            r.state
                .copies
                .values()
                .find(|t| t.dest_id == dest_id)
                .map(|t| t.copy_id.clone())
        })
        .unwrap_or_else(|| panic!("no copy into {dest_id} in the projection of {dest}"))
}

/// Asserts the causal links of a finished copy in the logs and returns the destination's events
/// of the copy (those with its correlation id).
fn check_links(logs: &BTreeMap<String, Vec<Event>>, copy: &CopyInfo) -> Vec<Event> {
    let dest_log = &logs[&copy.destination_region];
    let source_log = &logs[&copy.source_region];
    let request = dest_log
        .iter()
        .find(|e| {
            e.correlation_id == copy.copy_id
                && matches!(
                    e.payload,
                    Some(Payload::ImageCopyRequested(_)) | Some(Payload::SnapshotCopyRequested(_))
                )
        })
        .unwrap_or_else(|| panic!("no request of {}", copy.copy_id));
    let reads: Vec<&Event> = source_log
        .iter()
        .filter(
            |e| matches!(&e.payload, Some(Payload::CopySourceRead(r)) if r.copy_id == copy.copy_id),
        )
        .collect();
    assert_eq!(
        reads.len(),
        1,
        "exactly one source read of {}",
        copy.copy_id
    );
    let read = reads[0];
    assert_eq!(read.correlation_id, copy.copy_id);
    assert_eq!(read.account_id, "system");
    // The read depends on the request ...
    assert_eq!(
        read.depends_on,
        vec![EventRef {
            region: copy.destination_region.clone(),
            seq: request.seq
        }],
        "{}",
        copy.copy_id
    );
    assert_eq!(
        copy.source_read_event,
        Some(EventRef {
            region: copy.source_region.clone(),
            seq: read.seq
        })
    );
    assert_eq!(
        copy.requested_event,
        Some(EventRef {
            region: copy.destination_region.clone(),
            seq: request.seq
        })
    );
    // ... and everything the start wrote in the destination depends on the read.
    let steps: Vec<Event> = dest_log
        .iter()
        .filter(|e| {
            e.correlation_id == copy.copy_id
                && e.seq != request.seq
                // A same-region copy's read is in the destination's log too.
                && !matches!(e.payload, Some(Payload::CopySourceRead(_)))
        })
        .cloned()
        .collect();
    assert!(!steps.is_empty(), "nothing started {}", copy.copy_id);
    for e in &steps {
        assert_eq!(
            e.depends_on,
            vec![EventRef {
                region: copy.source_region.clone(),
                seq: read.seq
            }],
            "{} seq {}",
            copy.copy_id,
            e.seq
        );
    }
    let starts = steps
        .iter()
        .filter(|e| {
            matches!(
                e.payload,
                Some(Payload::ImageCopyStarted(_))
                    | Some(Payload::SnapshotCopyStarted(_))
                    | Some(Payload::ImageFailed(_))
                    | Some(Payload::SnapshotFailed(_))
            )
        })
        .count();
    assert_eq!(
        starts, 1,
        "exactly one start (or failure) of {}",
        copy.copy_id
    );
    steps
}

async fn logs(c: &Cluster) -> BTreeMap<String, Vec<Event>> {
    let mut out = BTreeMap::new();
    for r in REGIONS {
        out.insert(r.to_string(), c.log(r).await);
    }
    out
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_and_snapshot_copies_between_every_pair_of_regions_complete() {
    // One pair gets its own link: 1 s + bytes ÷ 1 GiB/s.
    let fast: LinkSpec = "us-east-1:eu-west-1=1000,1024".parse().unwrap();
    let links = LinkTable::from_specs([fast]).unwrap();
    let (c, driver) = Cluster::start(Some(links)).await;
    let _driver = driver.unwrap();

    let mut sources = BTreeMap::new();
    for r in REGIONS {
        sources.insert(r, make_image(&c, r, &format!("golden {r}"), false).await);
    }

    // Every ordered pair, same region included: an image copy and a snapshot copy.
    let mut images = Vec::new();
    let mut snapshots = Vec::new();
    for src in REGIONS {
        for dest in REGIONS {
            let (ami, snap) = &sources[src];
            let new_ami = copy_image(&c, dest, src, ami, &format!("from {src}")).await;
            images.push((src, dest, ami.clone(), snap.clone(), new_ami));
            let new_snap = copy_snapshot(&c, dest, src, snap).await;
            snapshots.push((src, dest, snap.clone(), new_snap));
        }
    }

    // The driver starts every copy: ListCopies shows them transferring.
    let listed = eventually("every copy transferring", || async {
        let all = c
            .list_copies(ListCopiesRequest {
                phases: vec!["transferring".into()],
                ..Default::default()
            })
            .await;
        (all.len() == 18).then_some(all)
    })
    .await;
    for copy in &listed {
        assert_eq!(copy.progress_percent, 0, "{copy:?}");
        assert!(
            copy.started_at_ms > 0 && copy.due_at_ms > copy.started_at_ms,
            "{copy:?}"
        );
        let saga = copy.saga.as_ref().expect("the driver's status");
        assert_eq!(saga.step, "done", "{copy:?}");
        assert_eq!(saga.outcome, "started", "{copy:?}");
    }
    // The link model of the pair sets the transfer time: 1 s + 8 GiB ÷ 1 GiB/s, vs the
    // default 60 s + 8 GiB ÷ 75 MiB/s.
    let duration = |src: &str, dest: &str, kind: &str| {
        let c = listed
            .iter()
            .find(|x| x.source_region == src && x.destination_region == dest && x.kind == kind)
            .unwrap();
        c.due_at_ms - c.started_at_ms
    };
    assert_eq!(
        duration("us-east-1", "eu-west-1", "snapshot"),
        1_000 + 8_000
    );
    assert_eq!(
        duration("eu-west-1", "us-east-1", "snapshot"),
        60_000 + 8 * 1024 * MIB * 1000 / (75 * MIB)
    );
    // Same account, region and encryption: metadata only, 5 s.
    assert_eq!(duration("ap-south-1", "ap-south-1", "snapshot"), 5_000);
    // An image is available 10 s after its last snapshot.
    assert_eq!(
        duration("us-east-1", "eu-west-1", "image"),
        1_000 + 8_000 + 10_000
    );

    // Half way through the default link: progress from each destination's clock.
    c.advance(90_000);
    let mid = c
        .list_copies(ListCopiesRequest {
            regions: vec!["ap-south-1".into()],
            ..Default::default()
        })
        .await;
    let slow = mid
        .iter()
        .find(|x| {
            x.source_region == "us-east-1"
                && x.destination_region == "ap-south-1"
                && x.kind == "snapshot"
        })
        .unwrap();
    assert_eq!(slow.phase, "transferring");
    assert!(
        (40..=60).contains(&slow.progress_percent),
        "progress {}",
        slow.progress_percent
    );
    assert!(mid
        .iter()
        .all(|x| x.source_region == "ap-south-1" || x.destination_region == "ap-south-1"));

    // Then everything completes.
    c.advance(3_600_000);
    for (src, dest, source_ami, source_snap, new_ami) in &images {
        let mut ec2 = c.ec2(dest).await;
        let img = eventually("image copy available", || {
            let mut ec2 = ec2.clone();
            async move {
                let img = describe_image(&mut ec2, new_ami).await;
                (img.state == "available").then_some(img)
            }
        })
        .await;
        assert_eq!(img.source_image_id, *source_ami);
        assert_eq!(img.source_image_region, *src);
        assert_eq!(img.architecture, "arm64");
        assert_eq!(img.name, format!("from {src}"));
        let mapped = img.block_device_mappings[0]
            .ebs
            .as_ref()
            .unwrap()
            .snapshot_id
            .clone();
        assert_ne!(mapped, *source_snap, "a new snapshot in {dest}");
        let s = describe_snapshot(&mut ec2, &mapped).await;
        assert_eq!(s.state, "completed");
        assert_eq!(s.volume_id, "vol-ffffffff");
        assert!(!s.encrypted);
        let copy_id = copy_id_of(&c, dest, new_ami);
        let requested_at =
            c.projection().snapshot().region(dest).unwrap().state.copies[&copy_id].requested_at_ms;
        assert_eq!(
            s.description,
            format!(
                "Copied for DestinationAmi {new_ami} from SourceAmi {source_ami} for SourceSnapshot {source_snap}. Task created on {requested_at}."
            )
        );
    }
    for (src, dest, source_snap, new_snap) in &snapshots {
        let ec2 = c.ec2(dest).await;
        let s = eventually("snapshot copy completed", || {
            let mut ec2 = ec2.clone();
            async move {
                let s = describe_snapshot(&mut ec2, new_snap).await;
                (s.state == "completed").then_some(s)
            }
        })
        .await;
        assert_eq!(s.volume_id, "vol-ffffffff");
        assert_eq!(s.volume_size, 8);
        assert_eq!(s.description, format!("copy of {source_snap} from {src}"));
    }

    // ListCopies: all finished, each with its causal links in the logs.
    c.assert_digests_converge().await;
    let done = c.list_copies(ListCopiesRequest::default()).await;
    assert_eq!(done.len(), 18);
    let logs = logs(&c).await;
    for copy in &done {
        let want = if copy.kind == "image" {
            "available"
        } else {
            "completed"
        };
        assert_eq!(copy.phase, want, "{copy:?}");
        assert_eq!(copy.progress_percent, 100);
        assert!(copy.finished_at_ms >= copy.due_at_ms, "{copy:?}");
        check_links(&logs, copy);
    }
    // Filters: by phase group, by region, by age.
    let none = c
        .list_copies(ListCopiesRequest {
            phases: vec!["in-flight".into()],
            ..Default::default()
        })
        .await;
    assert!(none.is_empty());
    let recent_only = c
        .list_copies(ListCopiesRequest {
            finished_within_ms: Some(0),
            ..Default::default()
        })
        .await;
    assert!(recent_only.is_empty());
    let bad = c
        .coordinator
        .clone()
        .list_copies(ListCopiesRequest {
            phases: vec!["done".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("InvalidParameterValue: "),
        "{bad:?}"
    );
    let bad = c
        .coordinator
        .clone()
        .list_copies(ListCopiesRequest {
            regions: vec!["mars-north-1".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("InvalidRegion: "), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_source_copies_encrypted_and_a_missing_source_fails_visibly() {
    let (c, driver) = Cluster::start(Some(LinkTable::default())).await;
    let _driver = driver.unwrap();
    let (ami, _) = make_image(&c, "us-east-1", "encrypted golden", true).await;
    let new_ami = copy_image(&c, "eu-west-1", "us-east-1", &ami, "encrypted copy").await;
    let missing_ami = copy_image(
        &c,
        "ap-south-1",
        "us-east-1",
        "ami-0123456789abcdef0",
        "no such source",
    )
    .await;
    let missing_snap = copy_snapshot(&c, "eu-west-1", "ap-south-1", "snap-0123456789abcdef0").await;

    // The missing sources fail as soon as the driver has read them.
    let mut ap = c.ec2("ap-south-1").await;
    let failed = eventually("image copy failed", || {
        let mut ap = ap.clone();
        let id = missing_ami.clone();
        async move {
            let img = describe_image(&mut ap, &id).await;
            (img.state == "failed").then_some(img)
        }
    })
    .await;
    let reason = failed.state_reason.unwrap();
    assert_eq!(reason.code, "Client.InvalidAMIID.NotFound", "{reason:?}");
    let mut eu = c.ec2("eu-west-1").await;
    let s = eventually("snapshot copy failed", || {
        let mut eu = eu.clone();
        let id = missing_snap.clone();
        async move {
            let s = describe_snapshot(&mut eu, &id).await;
            (s.state == "error").then_some(s)
        }
    })
    .await;
    assert_eq!(s.state_message, "Source snapshot ID is not valid");

    c.advance(3_600_000);
    let img = eventually("encrypted copy available", || {
        let mut eu = eu.clone();
        let id = new_ami.clone();
        async move {
            let img = describe_image(&mut eu, &id).await;
            (img.state == "available").then_some(img)
        }
    })
    .await;
    let snap_id = img.block_device_mappings[0]
        .ebs
        .as_ref()
        .unwrap()
        .snapshot_id
        .clone();
    let snap = describe_snapshot(&mut eu, &snap_id).await;
    assert!(snap.encrypted, "{snap:?}");
    assert!(
        snap.kms_key_id.starts_with("arn:aws:kms:eu-west-1:"),
        "a key of the destination region: {}",
        snap.kms_key_id
    );
    assert!(img.block_device_mappings[0].ebs.as_ref().unwrap().encrypted == Some(true));
    let _ = &mut ap;

    // ListCopies shows both failures with their reasons.
    c.assert_digests_converge().await;
    let failed = c
        .list_copies(ListCopiesRequest {
            phases: vec!["failed".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let image = failed.iter().find(|x| x.kind == "image").unwrap();
    assert_eq!(image.failure_code, "Client.InvalidAMIID.NotFound");
    assert!(!image.failure_message.is_empty());
    assert_eq!(image.destination_state, "failed");
    let snapshot = failed.iter().find(|x| x.kind == "snapshot").unwrap();
    assert_eq!(snapshot.failure_message, "Source snapshot ID is not valid");
    assert_eq!(snapshot.destination_state, "error");
    let logs = logs(&c).await;
    for copy in c.list_copies(ListCopiesRequest::default()).await {
        check_links(&logs, &copy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_driver_resumes_a_copy_without_starting_it_twice() {
    let (c, none) = Cluster::start(None).await;
    assert!(none.is_none());
    let (ami, snap) = make_image(&c, "us-east-1", "golden", false).await;
    let images: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(copy_image(&c, "eu-west-1", "us-east-1", &ami, &format!("copy {i}")).await);
        }
        v
    };
    let snapshot = copy_snapshot(&c, "eu-west-1", "us-east-1", &snap).await;

    // A first driver whose route to the destination leads nowhere: it reads the sources, then
    // retries StartCopy.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut broken = RegionRoutes::new();
    for r in REGIONS {
        let ch = if r == "eu-west-1" {
            lazy(&dead_addr.to_string())
        } else {
            c.routes.get(r).unwrap().clone()
        };
        broken.insert(r, ch).unwrap();
    }
    let first = SagaDriver::spawn(c.projection(), broken, LinkTable::default(), fast_sagas());
    let monitor = first.monitor();
    eventually("the first driver is retrying every StartCopy", || async {
        let s = monitor.status();
        (s.active.len() == 4
            && s.active.iter().all(|d| {
                d.attempts >= 2
                    && d.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("start in eu-west-1"))
            }))
        .then_some(())
    })
    .await;
    let s = monitor.status();
    assert!(
        s.running && s.step_failures >= 4 && s.copies_driven == 0,
        "{s:?}"
    );
    // The sources were read once each, and the projection knows it.
    let read = |c: &Cluster| {
        c.projection()
            .snapshot()
            .region("us-east-1")
            .unwrap()
            .state
            .copy_reads
            .len()
    };
    eventually("the reads are projected", || async {
        (read(&c) == 4).then_some(())
    })
    .await;
    drop(first);
    eventually("the first driver stops", || async {
        (!monitor.status().running).then_some(())
    })
    .await;
    assert!(monitor
        .status()
        .finished
        .iter()
        .all(|d| d.step == DriveStep::Stopped));

    // Two new drivers at once (a restarted coordinator racing a stale one): each copy still
    // starts exactly once, from the recorded reads.
    let second = SagaDriver::spawn(
        c.projection(),
        c.routes.clone(),
        LinkTable::default(),
        fast_sagas(),
    );
    let third = SagaDriver::spawn(
        c.projection(),
        c.routes.clone(),
        LinkTable::default(),
        fast_sagas(),
    );
    let m2 = second.monitor();
    eventually("every copy transferring", || async {
        let snap = c.projection().snapshot();
        let eu = &snap.region("eu-west-1").unwrap().state;
        (eu.copies.len() == 4 && eu.copies_awaiting_start().is_empty()).then_some(())
    })
    .await;
    c.advance(3_600_000);
    let mut eu = c.ec2("eu-west-1").await;
    for id in &images {
        eventually("image copy available", || {
            let mut eu = eu.clone();
            let id = id.clone();
            async move { (describe_image(&mut eu, &id).await.state == "available").then_some(()) }
        })
        .await;
    }
    eventually("snapshot copy completed", || {
        let mut eu = eu.clone();
        let id = snapshot.clone();
        async move { (describe_snapshot(&mut eu, &id).await.state == "completed").then_some(()) }
    })
    .await;
    let _ = &mut eu;
    c.assert_digests_converge().await;
    let logs = logs(&c).await;
    let starts = logs["eu-west-1"]
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::ImageCopyStarted(_))))
        .count();
    assert_eq!(starts, 3, "exactly one ImageCopyStarted per image copy");
    let snapshot_starts = logs["eu-west-1"]
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::SnapshotCopyStarted(_))))
        .count();
    assert_eq!(snapshot_starts, 1);
    let reads = logs["us-east-1"]
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::CopySourceRead(_))))
        .count();
    assert_eq!(reads, 4, "every source read once");
    // The resumed copies went straight to StartCopy (the reads were in the projection).
    let s2 = m2.status();
    let driven = s2.copies_driven + third.monitor().status().copies_driven;
    assert!(driven >= 4, "{s2:?}");
    for id in &images {
        let copy_id = copy_id_of(&c, "eu-west-1", id);
        let info = c
            .list_copies(ListCopiesRequest::default())
            .await
            .into_iter()
            .find(|x| x.copy_id == copy_id)
            .unwrap();
        assert_eq!(info.phase, "available");
        check_links(&logs, &info);
    }
    second.shutdown().await;
    third.shutdown().await;
    assert!(!m2.status().running);
}
