//! Tests of the projection: waiting for tokens, and the property that the causal merge gives the
//! same projection for every delivery interleaving without ever showing an event before its
//! dependencies.

use std::collections::BTreeMap;
use std::time::Duration;

use amisim_proto::event::Payload;
use amisim_proto::{
    SnapshotCompleted, SnapshotCreated, TagRecord, TagsCreated, VolumeCreated, VolumeDeleted,
};
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
const OWNER: &str = "111122223333";

fn envelope(region: &str, seq: u64, deps: Vec<EventRef>, payload: Payload) -> Event {
    Event {
        seq,
        region: region.into(),
        event_id: format!("{region}/{seq}"),
        sim_time_ms: 1_000 * seq,
        account_id: OWNER.into(),
        depends_on: deps,
        payload: Some(payload),
        ..Default::default()
    }
}

fn volume(region: &str, seq: u64, deps: Vec<EventRef>) -> Event {
    envelope(
        region,
        seq,
        deps,
        Payload::VolumeCreated(VolumeCreated {
            volume_id: format!("vol-{:017x}", seq),
            owner_id: OWNER.into(),
            availability_zone: format!("{region}a"),
            size: 8,
            ..Default::default()
        }),
    )
}

// ---- wait_for --------------------------------------------------------------------------------

#[tokio::test]
async fn wait_for_resolves_when_the_token_is_applied() {
    let p = Arc::new(Projection::new(["us-east-1", "eu-west-1"]));
    let token = ConsistencyToken::parse("us-east-1:2").unwrap();
    let waiter = {
        let p = p.clone();
        let token = token.clone();
        tokio::spawn(async move {
            p.wait_for(&token, Instant::now() + Duration::from_secs(5))
                .await
        })
    };
    tokio::task::yield_now().await;
    p.ingest("us-east-1", [volume("us-east-1", 1, vec![])])
        .unwrap();
    p.ingest("us-east-1", [volume("us-east-1", 2, vec![])])
        .unwrap();
    let snap = waiter.await.unwrap().unwrap();
    assert!(snap.satisfies(&token));
    assert_eq!(snap.region("us-east-1").map(|r| r.applied_seq), Some(2));
    assert_eq!(snap.applied().to_string(), "eu-west-1:0,us-east-1:2");
}

#[tokio::test]
async fn wait_for_an_empty_or_reached_token_does_not_wait() {
    let p = Projection::new(["us-east-1"]);
    let past = Instant::now();
    assert!(p.wait_for(&ConsistencyToken::new(), past).await.is_ok());
    assert!(p
        .wait_for(&ConsistencyToken::parse("us-east-1:0").unwrap(), past)
        .await
        .is_ok());
}

#[tokio::test]
async fn wait_for_fails_at_the_deadline_and_for_unknown_regions() {
    let p = Projection::new(["us-east-1"]);
    p.ingest("us-east-1", [volume("us-east-1", 1, vec![])])
        .unwrap();
    let t0 = Instant::now();
    let err = p
        .wait_for(
            &ConsistencyToken::parse("us-east-1:99").unwrap(),
            t0 + Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(50));
    match &err {
        WaitError::Deadline {
            wanted, applied, ..
        } => {
            assert_eq!(wanted.to_string(), "us-east-1:99");
            assert_eq!(applied.to_string(), "us-east-1:1");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("us-east-1:99"), "{err}");

    let err = p
        .wait_for(
            &ConsistencyToken::parse("eu-west-1:1").unwrap(),
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WaitError::UnknownRegion { .. }), "{err:?}");
}

#[test]
fn a_blocked_event_is_visible_in_the_snapshot_status() {
    let p = Projection::new(["us-east-1", "eu-west-1"]);
    let copy = volume(
        "eu-west-1",
        1,
        vec![EventRef {
            region: "us-east-1".into(),
            seq: 1,
        }],
    );
    let done = p.ingest("eu-west-1", [copy]).unwrap();
    assert_eq!((done.accepted, done.applied), (1, 0));
    let snap = p.snapshot();
    let eu = snap.region("eu-west-1").unwrap();
    assert_eq!((eu.applied_seq, eu.received_seq, eu.buffered), (0, 1, 1));
    assert_eq!(eu.blocked_on.as_ref().map(|d| d.seq), Some(1));
    // the source arrives: the copy is released by the other region's ingest
    let done = p
        .ingest("us-east-1", [volume("us-east-1", 1, vec![])])
        .unwrap();
    assert_eq!(done.applied, 2);
    assert_eq!(p.applied_seq("eu-west-1"), 1);
}

#[test]
fn a_gap_keeps_the_events_before_it() {
    let p = Projection::new(["us-east-1"]);
    let err = p
        .ingest(
            "us-east-1",
            [
                volume("us-east-1", 1, vec![]),
                volume("us-east-1", 3, vec![]),
            ],
        )
        .unwrap_err();
    assert!(matches!(
        err,
        MergeError::Gap {
            expected: 2,
            found: 3,
            ..
        }
    ));
    assert_eq!(p.applied_seq("us-east-1"), 1);
    assert_eq!(p.received_seq("us-east-1"), 1);
}

// ---- property: interleavings -----------------------------------------------------------------

/// One region's event in a generated history, before it gets its seq.
#[derive(Debug, Clone)]
struct Step {
    region: usize,
    kind: u8,
    /// Which earlier event of another region it depends on (if any exists).
    dep: Option<(Index, Index)>,
    pick: Index,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..3,
        0u8..5,
        proptest::option::weighted(0.4, (any::<Index>(), any::<Index>())),
        any::<Index>(),
    )
        .prop_map(|(region, kind, dep, pick)| Step {
            region,
            kind,
            dep,
            pick,
        })
}

/// Per region, its log: a realistic history where each cross-region dependency names an event
/// that already existed when the dependent one was written (so the history is causal).
fn build(regions: usize, steps: &[Step]) -> BTreeMap<String, Vec<Event>> {
    let names = &REGIONS[..regions];
    let mut logs: BTreeMap<String, Vec<Event>> =
        names.iter().map(|r| (r.to_string(), Vec::new())).collect();
    // Per region: snapshots created (id, seq) and volumes alive.
    let mut snaps: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
    let mut vols: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (n, s) in steps.iter().enumerate() {
        let region = names[s.region % regions];
        let seq = logs[region].len() as u64 + 1;
        let mut deps = Vec::new();
        if let Some((ri, si)) = &s.dep {
            let others: Vec<&str> = names
                .iter()
                .copied()
                .filter(|r| *r != region && !logs[*r].is_empty())
                .collect();
            if !others.is_empty() {
                let other = others[ri.index(others.len())];
                let len = logs[other].len();
                deps.push(EventRef {
                    region: other.into(),
                    seq: si.index(len) as u64 + 1,
                });
            }
        }
        let payload = match s.kind {
            // The copy pattern: a snapshot in this region that follows a source snapshot's
            // creation in another region (region A's e_a, then B's event depending on e_a).
            0 => {
                let sources: Vec<(&str, &(String, u64))> = names
                    .iter()
                    .filter(|r| **r != region)
                    .flat_map(|r| snaps.get(r).into_iter().flatten().map(move |x| (*r, x)))
                    .collect();
                let id = format!("snap-{:017x}", n);
                let mut description = String::from("created");
                if !sources.is_empty() {
                    let (src_region, (src_id, src_seq)) = sources[s.pick.index(sources.len())];
                    description = format!("Copied for DestinationAmi from {src_id} ({src_region})");
                    deps = vec![EventRef {
                        region: src_region.into(),
                        seq: *src_seq,
                    }];
                }
                snaps.entry(region).or_default().push((id.clone(), seq));
                Payload::SnapshotCreated(SnapshotCreated {
                    snapshot_id: id,
                    owner_id: OWNER.into(),
                    volume_size: 8,
                    description,
                    complete_at_ms: 1_000_000,
                    ..Default::default()
                })
            }
            1 => match snaps.get(region).filter(|v| !v.is_empty()) {
                Some(v) => Payload::SnapshotCompleted(SnapshotCompleted {
                    snapshot_id: v[s.pick.index(v.len())].0.clone(),
                }),
                None => Payload::SnapshotCompleted(SnapshotCompleted {
                    snapshot_id: "snap-00000000000000000".into(),
                }),
            },
            2 => match vols.get(region).filter(|v| !v.is_empty()) {
                Some(v) => Payload::TagsCreated(TagsCreated {
                    resource_ids: vec![v[s.pick.index(v.len())].clone()],
                    tags: vec![TagRecord {
                        key: "step".into(),
                        value: n.to_string(),
                    }],
                }),
                None => Payload::TagsCreated(TagsCreated::default()),
            },
            3 => match vols.get_mut(region).filter(|v| !v.is_empty()) {
                Some(v) => {
                    let id = v.remove(s.pick.index(v.len()));
                    Payload::VolumeDeleted(VolumeDeleted { volume_id: id })
                }
                None => Payload::VolumeDeleted(VolumeDeleted {
                    volume_id: "vol-00000000000000000".into(),
                }),
            },
            _ => {
                let id = format!("vol-{:017x}", n);
                vols.entry(region).or_default().push(id.clone());
                Payload::VolumeCreated(VolumeCreated {
                    volume_id: id,
                    owner_id: OWNER.into(),
                    availability_zone: format!("{region}a"),
                    size: 8,
                    ..Default::default()
                })
            }
        };
        let event = envelope(region, seq, deps, payload);
        if let Some(log) = logs.get_mut(region) {
            log.push(event);
        }
    }
    logs
}

/// What a delivery step does.
#[derive(Debug, Clone)]
struct Delivery {
    region: Index,
    /// 0..=7: the next 1–3 events; 8: a reconnect, re-sending from applied + 1 (duplicates of
    /// buffered events); 9: an event past a gap (must be refused without effect).
    action: u8,
    batch: usize,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (any::<Index>(), 0u8..10, 1usize..=3).prop_map(|(region, action, batch)| Delivery {
        region,
        action,
        batch,
    })
}

/// A delivery target: the pure merge (checked at each applied event) or the shared projection
/// (checked through its published snapshots).
trait Target {
    fn offer(&mut self, region: &str, events: Vec<Event>) -> Result<(), MergeError>;
    fn applied(&self, region: &str) -> u64;
    fn received(&self, region: &str) -> u64;
    fn digest(&self, region: &str) -> String;
}

/// The merge, recording the order events are applied in.
struct Checked {
    merge: Merge,
    order: Vec<(String, u64)>,
    deps: BTreeMap<(String, u64), Vec<EventRef>>,
}

impl Target for Checked {
    fn offer(&mut self, region: &str, events: Vec<Event>) -> Result<(), MergeError> {
        let mut result = Ok(());
        for e in events {
            if let Err(err) = self.merge.offer(region, e) {
                result = Err(err);
                break;
            }
        }
        let order = &mut self.order;
        let deps = &mut self.deps;
        self.merge.apply_ready_with(|r, e| {
            order.push((r.to_string(), e.seq));
            deps.insert((r.to_string(), e.seq), e.depends_on.clone());
        });
        result
    }
    fn applied(&self, region: &str) -> u64 {
        self.merge.applied_seq(region)
    }
    fn received(&self, region: &str) -> u64 {
        self.merge.received_seq(region)
    }
    fn digest(&self, region: &str) -> String {
        self.merge
            .state(region)
            .map(State::digest)
            .unwrap_or_default()
    }
}

impl Target for Projection {
    fn offer(&mut self, region: &str, events: Vec<Event>) -> Result<(), MergeError> {
        self.ingest(region, events).map(|_| ())
    }
    fn applied(&self, region: &str) -> u64 {
        self.applied_seq(region)
    }
    fn received(&self, region: &str) -> u64 {
        self.received_seq(region)
    }
    fn digest(&self, region: &str) -> String {
        self.snapshot()
            .region(region)
            .map(|r| r.state.digest())
            .unwrap_or_default()
    }
}

/// No applied event of any region has a dependency that is not applied.
fn assert_causal(
    target: &dyn Target,
    logs: &BTreeMap<String, Vec<Event>>,
) -> Result<(), TestCaseError> {
    for (region, log) in logs {
        let applied = target.applied(region) as usize;
        prop_assert!(applied <= log.len());
        for e in &log[..applied] {
            for d in &e.depends_on {
                prop_assert!(
                    target.applied(&d.region) >= d.seq,
                    "{region}:{} is applied but its dependency {}:{} is not (applied {})",
                    e.seq,
                    d.region,
                    d.seq,
                    target.applied(&d.region)
                );
            }
        }
    }
    Ok(())
}

/// Delivers every region's log through `schedule`, then the rest in region order, checking the
/// causal invariant after every step; returns the final digests.
fn run(
    target: &mut dyn Target,
    logs: &BTreeMap<String, Vec<Event>>,
    schedule: &[Delivery],
) -> Result<BTreeMap<String, String>, TestCaseError> {
    let names: Vec<&String> = logs.keys().collect();
    // What the simulated stream of each region sends next (index into its log).
    let mut cursor: BTreeMap<&str, usize> = names.iter().map(|r| (r.as_str(), 0)).collect();
    for d in schedule {
        let region = names[d.region.index(names.len())].as_str();
        let log = &logs[region];
        let at = cursor[region];
        match d.action {
            8 => {
                // Reconnect from applied + 1: re-sends what is buffered.
                let from = target.applied(region) as usize;
                let end = (from + d.batch).min(log.len());
                target
                    .offer(region, log[from..end].to_vec())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                cursor.insert(region, at.max(end));
            }
            9 if at + 1 < log.len() => {
                let received = target.received(region);
                let before = target.digest(region);
                let refused = target.offer(region, vec![log[at + 1].clone()]);
                prop_assert!(
                    matches!(refused, Err(MergeError::Gap { .. })),
                    "{refused:?}"
                );
                prop_assert_eq!(target.received(region), received);
                prop_assert_eq!(target.digest(region), before);
            }
            _ => {
                let end = (at + d.batch).min(log.len());
                target
                    .offer(region, log[at..end].to_vec())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                cursor.insert(region, end);
            }
        }
        assert_causal(target, logs)?;
    }
    for region in &names {
        let at = cursor[region.as_str()];
        target
            .offer(region, logs[*region][at..].to_vec())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_causal(target, logs)?;
    }
    let mut digests = BTreeMap::new();
    for (region, log) in logs {
        prop_assert_eq!(
            target.applied(region),
            log.len() as u64,
            "{} did not apply everything",
            region
        );
        digests.insert(region.clone(), target.digest(region));
    }
    Ok(digests)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_interleaving_gives_the_same_causal_projection(
        regions in 2usize..=3,
        steps in proptest::collection::vec(step(), 1..60),
        first in proptest::collection::vec(delivery(), 0..120),
        second in proptest::collection::vec(delivery(), 0..120),
    ) {
        let logs = build(regions, &steps);
        // The reference: each region's log folded on its own, in order.
        let reference: BTreeMap<String, String> = logs
            .iter()
            .map(|(r, log)| {
                let mut s = State::new();
                for e in log {
                    s.apply(e);
                }
                (r.clone(), s.digest())
            })
            .collect();

        let mut checked = Checked {
            merge: Merge::new(logs.keys().cloned()),
            order: Vec::new(),
            deps: BTreeMap::new(),
        };
        let a = run(&mut checked, &logs, &first)?;
        // The application order itself is causal: each event after all it depends on.
        let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
        for (region, seq) in &checked.order {
            prop_assert_eq!(seen.get(region.as_str()).copied().unwrap_or(0) + 1, *seq);
            for d in &checked.deps[&(region.clone(), *seq)] {
                prop_assert!(
                    seen.get(d.region.as_str()).copied().unwrap_or(0) >= d.seq,
                    "{}:{} applied before {}:{}", region, seq, d.region, d.seq
                );
            }
            seen.insert(region.as_str(), *seq);
        }

        let mut shared = Projection::new(logs.keys().cloned());
        let b = run(&mut shared, &logs, &second)?;

        prop_assert_eq!(&a, &reference);
        prop_assert_eq!(&b, &reference);
    }
}
