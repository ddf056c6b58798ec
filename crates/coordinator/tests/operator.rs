//! The coordinator in front of region nodes that have an accounts file (ADR 0009): the nodes'
//! `Region` service takes only the operator token, so the coordinator must send it on its own
//! calls — the followers (GetRegionInfo, StreamEvents), the saga driver (ExecuteSagaStep) and
//! ListCopies' clock probe (GetRegionInfo) — while the gateway keeps forwarding each client's own
//! token. One process: two nodes (in-memory logs, virtual clocks) and `run_coordinator`, all over
//! gRPC on 127.0.0.1:0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_chaos::{Clock, VirtualClock};
use amisim_coordinator::{
    run_coordinator, CoordinatorConfig, FollowerConfig, RegionRoutes, SagaConfig,
};
use amisim_core::accounts::{AccountEntry, AccountsFile, OperatorEntry};
use amisim_core::Accounts;
use amisim_log::{EventLog, MemoryLog};
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::*;
use amisim_region::{serve, RegionConfig, RegionNode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

const OWNER: &str = "111122223333";
const SRC: &str = "us-east-1";
const DEST: &str = "eu-west-1";
/// 2024-05-01T00:00:00Z.
const T0: u64 = 1_714_521_600_000;
const WAIT: Duration = Duration::from_secs(20);

fn accounts() -> Arc<Accounts> {
    Arc::new(
        Accounts::from_file(AccountsFile {
            accounts: vec![
                AccountEntry {
                    id: OWNER.into(),
                    token: "tok-owner".into(),
                    organization: None,
                    ou: None,
                },
                AccountEntry {
                    id: "444455556666".into(),
                    token: "tok-other".into(),
                    organization: None,
                    ou: None,
                },
            ],
            operator: Some(OperatorEntry {
                token: "tok-operator".into(),
            }),
            ..AccountsFile::default()
        })
        .unwrap(),
    )
}

struct World {
    clocks: Vec<(String, VirtualClock)>,
    channel: Channel,
    _stops: Vec<oneshot::Sender<()>>,
}

impl World {
    /// Two nodes with the accounts file and a coordinator in front of them, which has the
    /// accounts file too (`with_accounts`) or not.
    async fn start(with_accounts: bool) -> World {
        let accounts = accounts();
        let mut routes = RegionRoutes::new();
        let mut clocks = Vec::new();
        let mut stops = Vec::new();
        for (i, region) in [SRC, DEST].into_iter().enumerate() {
            let clock = VirtualClock::new(T0);
            let c = clock.clone();
            let cfg = RegionConfig {
                seed: Some(40 + i as u64),
                accounts: Some(accounts.clone()),
                ..RegionConfig::new(region)
            };
            let log = Arc::new(MemoryLog::new()) as Arc<dyn EventLog>;
            let node = RegionNode::start_with_clock(cfg, log, move |last| {
                c.set(last);
                Arc::new(c) as Arc<dyn Clock>
            })
            .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(serve(node, listener, async move {
                let _ = stopped.await;
            }));
            routes
                .insert_url(region, &format!("http://{addr}"))
                .unwrap();
            clocks.push((region.to_string(), clock));
            stops.push(stop);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        let config = CoordinatorConfig {
            followers: FollowerConfig {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                ..FollowerConfig::default()
            },
            sagas: SagaConfig {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                ..SagaConfig::default()
            },
            accounts: with_accounts.then_some(accounts),
            ..CoordinatorConfig::default()
        };
        tokio::spawn(run_coordinator(routes, config, listener, async move {
            let _ = stopped.await;
        }));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        World {
            clocks,
            channel,
            _stops: stops,
        }
    }

    fn advance(&self, region: &str, ms: u64) {
        for (r, c) in &self.clocks {
            if r == region {
                c.advance(ms);
            }
        }
    }
}

/// A call carrying `token` as its bearer token.
fn with_token<T>(token: &str, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A call through the coordinator as OWNER (bearer token), to `region`.
fn owner<T>(region: &str, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-amisim-region", region.parse().unwrap());
    r.metadata_mut()
        .insert("authorization", "Bearer tok-owner".parse().unwrap());
    r
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

async fn snapshot_state(ec2: &mut Ec2Client<Channel>, region: &str, id: &str) -> Option<String> {
    let r = ec2
        .describe_snapshots(owner(
            region,
            DescribeSnapshotsRequest {
                snapshot_ids: vec![id.to_string()],
                ..Default::default()
            },
        ))
        .await
        .ok()?;
    r.into_inner().snapshots.pop().map(|s| s.state)
}

async fn projection_status(w: &World) -> Vec<RegionProjectionStatus> {
    CoordinatorClient::new(w.channel.clone())
        .get_projection_status(owner(SRC, GetProjectionStatusRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .regions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_and_sagas_authenticate_as_the_operator() {
    let w = World::start(true).await;
    let mut ec2 = Ec2Client::new(w.channel.clone());

    // A completed snapshot in the source region, through the gateway with OWNER's token.
    let vol = ec2
        .create_volume(owner(
            SRC,
            CreateVolumeRequest {
                availability_zone: format!("{SRC}a"),
                size: Some(8),
                volume_type: "gp3".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .volume_id;
    w.advance(SRC, 10_000);
    let snap = eventually("volume available, snapshot created", || {
        let mut ec2 = ec2.clone();
        let vol = vol.clone();
        async move {
            ec2.create_snapshot(owner(
                SRC,
                CreateSnapshotRequest {
                    volume_id: vol,
                    ..Default::default()
                },
            ))
            .await
            .ok()
            .map(|r| r.into_inner().snapshot_id)
        }
    })
    .await;
    w.advance(SRC, 600_000);
    eventually("source snapshot completed", || {
        let mut ec2 = ec2.clone();
        let snap = snap.clone();
        async move { (snapshot_state(&mut ec2, SRC, &snap).await? == "completed").then_some(()) }
    })
    .await;

    // The copy: requested in the destination, driven by the saga (ExecuteSagaStep in both
    // regions, with the operator token), seen by the followers.
    let copy = ec2
        .copy_snapshot(owner(
            DEST,
            CopySnapshotRequest {
                source_region: SRC.into(),
                source_snapshot_id: snap.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .snapshot_id;
    let mut coord = CoordinatorClient::new(w.channel.clone());
    let info = eventually("the saga started the transfer", || {
        let mut coord = coord.clone();
        let copy = copy.clone();
        async move {
            coord
                .list_copies(owner(DEST, ListCopiesRequest::default()))
                .await
                .ok()?
                .into_inner()
                .copies
                .into_iter()
                .find(|c| c.destination_id == copy && c.phase == "transferring")
        }
    })
    .await;
    assert!(info.source_read_event.is_some(), "{info:?}");

    // ListCopies' progress comes from the destination's clock (GetRegionInfo with the
    // operator token): halfway through the transfer, it is neither 0 nor done.
    let half = (info.due_at_ms - info.started_at_ms) / 2;
    w.advance(DEST, half);
    let progress = coord
        .list_copies(owner(DEST, ListCopiesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .copies
        .into_iter()
        .find(|c| c.destination_id == copy)
        .unwrap()
        .progress_percent;
    assert!(
        (40..=60).contains(&progress),
        "progress {progress}% from the destination's clock"
    );

    w.advance(DEST, half + 60_000);
    eventually("the copy completed", || {
        let mut ec2 = ec2.clone();
        let copy = copy.clone();
        async move { (snapshot_state(&mut ec2, DEST, &copy).await? == "completed").then_some(()) }
    })
    .await;
    // ListCopies shows an account its own copies only; the operator token sees everyone's.
    let as_other = coord
        .list_copies(with_token("tok-other", ListCopiesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .copies;
    assert!(
        as_other.iter().all(|c| c.destination_id != copy),
        "another account must not see OWNER's copy: {as_other:?}"
    );
    let as_operator = coord
        .list_copies(with_token("tok-operator", ListCopiesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .copies;
    assert!(as_operator.iter().any(|c| c.destination_id == copy));

    let status = projection_status(&w).await;
    assert_eq!(status.len(), 2);
    for s in &status {
        assert!(s.connected, "{s:?}");
        assert!(s.last_error.is_empty(), "{s:?}");
        assert!(s.applied_seq > 0, "{s:?}");
    }
    // The copy is in the global projection too.
    let seen = coord
        .describe_global_snapshots(owner(
            DEST,
            DescribeGlobalSnapshotsRequest {
                describe: Some(DescribeSnapshotsRequest {
                    snapshot_ids: vec![copy.clone()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await;
    assert!(seen.is_ok(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_without_the_operator_token_is_refused_by_the_nodes() {
    // The nodes have the accounts file; the coordinator does not, so it sends no operator token.
    let w = World::start(false).await;
    let status = eventually("the followers report the refusal", || {
        let w = &w;
        async move {
            let status = projection_status(w).await;
            status
                .iter()
                .all(|s| s.last_error.contains("AuthFailure"))
                .then_some(status)
        }
    })
    .await;
    for s in &status {
        assert!(!s.connected, "{s:?}");
        assert!(s.last_error.contains("GetRegionInfo"), "{s:?}");
    }
}
