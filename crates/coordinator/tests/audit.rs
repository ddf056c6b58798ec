//! The coordinator's `Audit` service (ADR 0010) against three real region nodes in one process
//! (in-memory logs, virtual clocks), the whole coordinator running as `amisim coordinator` runs
//! it ([`run_coordinator`]): a cross-region CopySnapshot gives events in eu-west-1 that depend on
//! events in us-east-1, and
//!
//! - the merged StreamEvents (with and without `follow`) delivers every event once, each after
//!   everything in its `depends_on`, the source's events before the destination's dependent one;
//! - a global as-of read at a token equals the live global view captured at that token, and the
//!   union of the regions' own as-of reads, even after the regions moved on;
//! - LookupEvents pages across regions newest first, every record once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amisim_coordinator::follower::FollowerConfig;
use amisim_coordinator::{run_coordinator, CoordinatorConfig, SagaConfig};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::{
    as_of, AsOf, AuditStreamRequest, CopySnapshotRequest, CreateSnapshotRequest,
    CreateVolumeRequest, DescribeGlobalSnapshotsRequest, DescribeSnapshotsAsOfRequest,
    DescribeSnapshotsRequest, DescribeVolumesRequest, Event, LookupEventsRequest, VerifyLogRequest,
};
use common::{lazy, Node};
use tokio::sync::oneshot;
use tonic::transport::Channel;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-south-1";

struct Cluster {
    nodes: BTreeMap<String, Node>,
    url: String,
    _stop: oneshot::Sender<()>,
}

impl Cluster {
    async fn start() -> Cluster {
        let (nodes, routes) = common::start_nodes().await;
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
            ..CoordinatorConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(run_coordinator(routes, config, listener, async move {
            let _ = stopped.await;
        }));
        Cluster {
            nodes,
            url,
            _stop: stop,
        }
    }

    fn ec2(&self, region: &str) -> Ec2Client<Channel> {
        Ec2Client::new(lazy(&self.nodes[region].addr.to_string()))
    }

    fn node_audit(&self, region: &str) -> AuditClient<Channel> {
        AuditClient::new(lazy(&self.nodes[region].addr.to_string()))
    }

    fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(lazy(self.url.trim_start_matches("http://")))
    }

    fn coordinator(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(lazy(self.url.trim_start_matches("http://")))
    }

    fn advance(&self, ms: u64) {
        for n in self.nodes.values() {
            n.clock.advance(ms);
        }
    }

    /// Every node's head, as a token.
    fn heads(&self) -> String {
        self.nodes
            .iter()
            .map(|(r, n)| format!("{r}:{}", n.node.head_seq()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn snapshot_state(ec2: &mut Ec2Client<Channel>, id: &str) -> String {
    ec2.describe_snapshots(DescribeSnapshotsRequest {
        snapshot_ids: vec![id.to_string()],
        ..Default::default()
    })
    .await
    .ok()
    .and_then(|r| r.into_inner().snapshots.pop())
    .map(|s| s.state)
    .unwrap_or_default()
}

/// A completed snapshot of a new volume in `region`.
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
    c.nodes[region].clock.advance(10_000);
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
    c.nodes[region].clock.advance(600_000);
    eventually("snapshot completed", || {
        let mut ec2 = ec2.clone();
        let snap = snap.clone();
        async move { (snapshot_state(&mut ec2, &snap).await == "completed").then_some(()) }
    })
    .await;
    snap
}

/// Reads a stream to its end (or until `n` events when `n` is given).
async fn collect(
    audit: &mut AuditClient<Channel>,
    req: AuditStreamRequest,
    n: Option<usize>,
) -> Vec<Event> {
    let mut stream = audit.stream_events(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while n.is_none_or(|n| out.len() < n) {
        match stream.message().await.unwrap() {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

/// Every event after all its dependencies in `events` (the followed regions), each region in
/// seq order without gaps from its first event; returns the cross-region dependencies seen.
/// `starts`: a region's stream began at this seq (its earlier events are not in the stream).
fn assert_causal_from(events: &[Event], starts: &BTreeMap<String, u64>) -> usize {
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cross = 0;
    for (i, e) in events.iter().enumerate() {
        if let Some(last) = seen.get(e.region.as_str()) {
            assert_eq!(e.seq, last + 1, "{} out of order at {i}", e.region);
        }
        for d in &e.depends_on {
            if d.region == e.region || ![US, EU, AP].contains(&d.region.as_str()) {
                continue;
            }
            cross += 1;
            let start = starts.get(&d.region).copied().unwrap_or(1);
            let done = seen
                .get(d.region.as_str())
                .copied()
                .unwrap_or(start.saturating_sub(1));
            assert!(
                done >= d.seq,
                "{}:{} came before its dependency {}:{} (position {i})",
                e.region,
                e.seq,
                d.region,
                d.seq
            );
        }
        seen.insert(&e.region, e.seq);
    }
    cross
}

fn assert_causal(events: &[Event]) -> usize {
    assert_causal_from(events, &BTreeMap::new())
}

/// Every page of a coordinator as-of read of the snapshots at `as_of`, 5 a page (each page reads
/// one region), with a snapshot made in each of `between` after the first page; and how many
/// pages there were.
async fn paged_snapshots(
    c: &Cluster,
    as_of: Option<AsOf>,
    between: &[&str],
) -> (Vec<(String, amisim_proto::Snapshot)>, usize) {
    let mut audit = c.audit();
    let mut out = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = audit
            .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest {
                as_of: as_of.clone(),
                request: Some(DescribeSnapshotsRequest {
                    max_results: Some(5),
                    next_token: token.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.snapshots.len() <= 5);
        assert_eq!(page.regions.len(), 1, "a page reads one region");
        out.extend(
            page.snapshots
                .into_iter()
                .map(|s| (s.region, s.snapshot.unwrap())),
        );
        pages += 1;
        if pages == 1 {
            for r in between {
                make_snapshot(c, r).await;
            }
        }
        token = page.response.unwrap().next_token;
        if token.is_empty() {
            return (out, pages);
        }
        assert!(pages < 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_streams_merge_causally_as_of_is_global_and_lookup_pages_across_regions() {
    let c = Cluster::start().await;
    let mut audit = c.audit();

    // A follower of everything, opened before anything happens.
    let followed: Arc<Mutex<Vec<Event>>> = Arc::default();
    {
        let mut audit = c.audit();
        let followed = followed.clone();
        let mut stream = eventually("the coordinator's Audit service", || {
            let mut audit = audit.clone();
            async move {
                audit
                    .stream_events(AuditStreamRequest {
                        follow: true,
                        ..Default::default()
                    })
                    .await
                    .ok()
            }
        })
        .await
        .into_inner();
        let _ = &mut audit;
        tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                followed.lock().unwrap().push(e);
            }
        });
    }

    // given: a snapshot in us-east-1 copied into eu-west-1 (the saga reads the source in us
    // and writes the result in eu, depending on it), and a volume in ap-south-1
    let source = make_snapshot(&c, US).await;
    let mut eu = c.ec2(EU);
    let copy = eu
        .copy_snapshot(CopySnapshotRequest {
            source_region: US.into(),
            source_snapshot_id: source.clone(),
            description: "audited copy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot_id;
    eventually("the copy completes", || {
        c.advance(60_000);
        let mut eu = eu.clone();
        let copy = copy.clone();
        async move { (snapshot_state(&mut eu, &copy).await == "completed").then_some(()) }
    })
    .await;
    make_snapshot(&c, AP).await;

    // The live global view at a point P (the coordinator waits until it applied every head).
    let point = c.heads();
    let live = c
        .coordinator()
        .describe_global_snapshots(DescribeGlobalSnapshotsRequest {
            consistency_token: point.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.consistency_token, point);
    assert!(live.snapshots.len() >= 3, "{live:?}");
    let heads: BTreeMap<String, u64> = c
        .nodes
        .iter()
        .map(|(r, n)| (r.clone(), n.node.head_seq()))
        .collect();
    let total: u64 = heads.values().sum();

    // then: the merged stream without follow holds every event once, causally ordered
    let all = collect(&mut audit, AuditStreamRequest::default(), None).await;
    assert!(all.len() as u64 >= total, "{} < {total}", all.len());
    let cross = assert_causal(&all);
    assert!(cross > 0, "the copy made cross-region dependencies");
    // the copy's first event in eu that depends on us comes after that us event
    let dependent = all
        .iter()
        .position(|e| e.region == EU && e.depends_on.iter().any(|d| d.region == US))
        .expect("an eu event depending on us");
    let dep = all[dependent]
        .depends_on
        .iter()
        .find(|d| d.region == US)
        .unwrap()
        .clone();
    let source_pos = all
        .iter()
        .position(|e| e.region == US && e.seq == dep.seq)
        .expect("the source event is in the stream");
    assert!(source_pos < dependent);
    // the same again: the catch-up order is deterministic
    let again = collect(&mut audit, AuditStreamRequest::default(), Some(all.len())).await;
    let ids = |v: &[Event]| v.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&all));

    // with follow: the live stream, opened before the first write, saw the same causal order
    let seen = eventually("the followed stream catches up", || {
        let followed = followed.clone();
        async move {
            let v = followed.lock().unwrap().clone();
            (v.len() as u64 >= total).then_some(v)
        }
    })
    .await;
    assert!(assert_causal(&seen) > 0);
    let per_region = |v: &[Event]| {
        let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in v.iter().filter(|e| e.seq <= heads[&e.region]) {
            m.entry(e.region.clone()).or_default().push(e.seq);
        }
        m
    };
    assert_eq!(per_region(&seen), per_region(&all));

    // filters apply after the merge; one region alone; a start time
    let about_source = collect(
        &mut audit,
        AuditStreamRequest {
            resource_id: source.clone(),
            ..Default::default()
        },
        None,
    )
    .await;
    let regions: BTreeSet<&str> = about_source.iter().map(|e| e.region.as_str()).collect();
    assert_eq!(regions, BTreeSet::from([EU, US]), "{about_source:?}");
    assert!(about_source
        .iter()
        .all(|e| format!("{:?}", e.payload).contains(&source)));
    let only_eu = collect(
        &mut audit,
        AuditStreamRequest {
            region: EU.into(),
            ..Default::default()
        },
        None,
    )
    .await;
    assert!(only_eu.iter().all(|e| e.region == EU));
    assert_eq!(only_eu.len() as u64, heads[EU]);
    let from_time = all[dependent].sim_time_ms;
    let later = collect(
        &mut audit,
        AuditStreamRequest {
            from: Some(AsOf {
                point: Some(as_of::Point::SimTimeMs(from_time)),
            }),
            ..Default::default()
        },
        None,
    )
    .await;
    assert!(!later.is_empty());
    assert!(later.iter().all(|e| e.sim_time_ms >= from_time));
    // each region from its first event at or after the time
    let starts: BTreeMap<String, u64> = [US, EU, AP]
        .iter()
        .map(|r| {
            let first = all
                .iter()
                .filter(|e| e.region == *r && e.sim_time_ms >= from_time)
                .map(|e| e.seq)
                .min()
                .unwrap_or(u64::MAX);
            (r.to_string(), first)
        })
        .collect();
    assert_causal_from(&later, &starts);
    for (r, first) in &starts {
        if *first != u64::MAX {
            assert_eq!(
                later.iter().find(|e| e.region == *r).map(|e| e.seq),
                Some(*first),
                "{r} starts at its first event at or after the time"
            );
        }
    }
    let st = audit
        .stream_events(AuditStreamRequest {
            from: Some(AsOf {
                point: Some(as_of::Point::Seq(3)),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);

    // The regions move on after P.
    make_snapshot(&c, US).await;
    make_snapshot(&c, EU).await;

    // then: the global as-of at P equals the live view captured at P ...
    let as_of_p = audit
        .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest {
            as_of: Some(AsOf {
                point: Some(as_of::Point::Token(point.clone())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let tagged: Vec<(String, amisim_proto::Snapshot)> = as_of_p
        .snapshots
        .iter()
        .map(|s| (s.region.clone(), s.snapshot.clone().unwrap()))
        .collect();
    let captured: Vec<(String, amisim_proto::Snapshot)> = live
        .snapshots
        .iter()
        .map(|s| (s.region.clone(), s.snapshot.clone().unwrap()))
        .collect();
    assert_eq!(tagged, captured);
    assert_eq!(
        as_of_p
            .regions
            .iter()
            .map(|p| (p.region.clone(), p.seq))
            .collect::<BTreeMap<_, _>>(),
        heads
    );
    // ... and the union of each region's own as-of read at its seq
    let mut union = Vec::new();
    for (r, seq) in &heads {
        let own = c
            .node_audit(r)
            .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest {
                as_of: Some(AsOf {
                    point: Some(as_of::Point::Seq(*seq)),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        union.extend(
            own.response
                .unwrap()
                .snapshots
                .into_iter()
                .map(|s| (r.clone(), s)),
        );
    }
    union.sort_by(|a, b| (&a.0, &a.1.snapshot_id).cmp(&(&b.0, &b.1.snapshot_id)));
    assert_eq!(tagged, union);
    // the present has more than P had
    let now = audit
        .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(now.snapshots.len() > as_of_p.snapshots.len());
    // the same read in pages of 5: the regions one after another, each pinned at its seq of
    // the first page, so a snapshot made between two pages is not in them
    let token_point = Some(AsOf {
        point: Some(as_of::Point::Token(point.clone())),
    });
    let (mut paged, pages) = paged_snapshots(&c, token_point, &[AP]).await;
    assert!(pages >= 3, "at least one page per region: {pages}");
    paged.sort_by(|a, b| (&a.0, &a.1.snapshot_id).cmp(&(&b.0, &b.1.snapshot_id)));
    assert_eq!(paged, tagged, "the pages hold exactly the one-page read");
    // a paged read of the present is pinned too: snapshots made after its first page, in every
    // region, are in none of its pages
    let present: BTreeSet<String> = audit
        .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots
        .into_iter()
        .map(|s| s.snapshot.unwrap().snapshot_id)
        .collect();
    let (paged, _) = paged_snapshots(&c, None, &[US, EU, AP]).await;
    let seen: BTreeSet<String> = paged.into_iter().map(|(_, s)| s.snapshot_id).collect();
    assert_eq!(
        seen, present,
        "pages of the present read the history of their first page"
    );
    // paging does not combine with explicit ids over several regions; a foreign token is refused
    for bad in [
        DescribeSnapshotsRequest {
            max_results: Some(5),
            snapshot_ids: vec![source.clone()],
            ..Default::default()
        },
        DescribeSnapshotsRequest {
            next_token: "asof1|9|us-east-1=1|".into(),
            ..Default::default()
        },
    ] {
        let st = audit
            .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest {
                request: Some(bad),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    }
    // explicit ids across regions; an id no region holds is NotFound
    let by_id = audit
        .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest {
            as_of: Some(AsOf {
                point: Some(as_of::Point::Token(point.clone())),
            }),
            request: Some(DescribeSnapshotsRequest {
                snapshot_ids: vec![copy.clone(), source.clone()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_id
            .snapshots
            .iter()
            .map(|s| s.region.as_str())
            .collect::<Vec<_>>(),
        [EU, US]
    );
    let st = audit
        .describe_snapshots_as_of(DescribeSnapshotsAsOfRequest {
            request: Some(DescribeSnapshotsRequest {
                snapshot_ids: vec!["snap-0123456789abcdef0".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");

    // LookupEvents: pages of 3 across the regions, newest first, every record once
    let mut expected = 0usize;
    for r in [US, EU, AP] {
        let mut node = c.node_audit(r);
        let mut token = String::new();
        loop {
            let page = node
                .lookup_events(LookupEventsRequest {
                    next_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            expected += page.events.len();
            token = page.next_token;
            if token.is_empty() {
                break;
            }
        }
    }
    let mut token = String::new();
    let mut pages = 0;
    let mut records = Vec::new();
    loop {
        let page = audit
            .lookup_events(LookupEventsRequest {
                max_results: 3,
                next_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 3);
        records.extend(page.events);
        pages += 1;
        token = page.next_token;
        if token.is_empty() {
            break;
        }
        assert!(pages < 1000);
    }
    assert_eq!(records.len(), expected);
    assert!(pages > 2);
    let times: Vec<u64> = records.iter().map(|e| e.event_time_ms).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let unique: BTreeSet<&str> = records.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(unique.len(), records.len(), "every record once");
    let from: BTreeSet<&str> = records.iter().map(|e| e.region.as_str()).collect();
    assert!(from.len() >= 2, "{from:?}");
    // a token from other parameters is refused
    let st = audit
        .lookup_events(LookupEventsRequest {
            max_results: 3,
            next_token: "g1.0000000000000001.us-east-1=-".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);

    // VerifyLog: one answer per region
    let v = audit
        .verify_log(VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(
        v.regions
            .iter()
            .map(|r| r.region.as_str())
            .collect::<Vec<_>>(),
        [AP, EU, US]
    );
}
