//! The audit trail of a region node: tamper evidence on a copy of a real on-disk log (a flipped
//! byte, a deleted event, two swapped events, a truncated tail — each named by its seq), the
//! Audit service over gRPC, and point-in-time reads against the live state (property test).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amisim_core::{Command, Query};
use amisim_log::{DiskLog, EventLog, SledOptions};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::{
    as_of, AsOf, AuditStreamRequest, CreateTagsRequest, DescribeImagesAsOfRequest,
    DescribeImagesRequest, GetPublicKeyRequest, ListDigestsRequest, RegisterImageRequest, Tag,
    VerifyLogRequest,
};
use amisim_region::audit::{self, verify_log, Point, VerifyReport};
use amisim_region::RegionNode;
use common::*;
use futures::StreamExt;
use proptest::prelude::*;

const DIGEST_EVERY: u64 = 5;

fn disk(dir: &Path) -> Arc<dyn EventLog> {
    Arc::new(DiskLog::open(dir, SledOptions::default()).unwrap())
}

/// A node on a disk log (the default: segments) in `dir` that signs a digest every [`DIGEST_EVERY`] events.
fn signed_node(dir: &Path, seed: u64) -> Arc<RegionNode> {
    let (log, trail) = audit::open_signed(dir, REGION, DIGEST_EVERY, disk(dir)).unwrap();
    let (node, _clock) = virtual_node(log, seed);
    assert!(node.attach_audit(trail));
    node
}

async fn register(node: &RegionNode, i: u64) {
    node.execute(
        OWNER,
        &format!("req-{i}"),
        Command::RegisterImage(RegisterImageRequest {
            name: format!("image-{i}"),
            image_location: format!("bucket/image-{i}.manifest.xml"),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
}

/// Makes a real log of `n` events (one per write) in `dir`, stopped cleanly (final digest).
async fn real_log(dir: &Path, n: u64) -> u64 {
    let node = signed_node(dir, 3);
    for i in 1..=n {
        register(&node, i).await;
    }
    let head = node.head_seq();
    assert_eq!(head, n);
    node.shutdown().await;
    head
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Edits the copy's stored events directly (as an attacker with disk access would).
/// The stored events of a log by seq, as protobuf bytes.
type StoredEvents = BTreeMap<u64, Vec<u8>>;

fn tamper(dir: &Path, f: impl FnOnce(&mut StoredEvents)) {
    amisim_log::edit_stored_events(dir, f).unwrap();
}

/// What an offline auditor runs (`amisim audit verify`), pinning the exported public key.
fn offline_verify(dir: &Path, public_key: &str) -> VerifyReport {
    let log = DiskLog::open(
        dir,
        SledOptions {
            verify_on_open: false,
            ..SledOptions::default()
        },
    )
    .unwrap();
    let digests = audit::read_digests(dir).unwrap();
    let key = audit::parse_public_key(public_key).unwrap();
    verify_log(&log, &digests, Some(&key)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_with_the_right_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("original");
    let head = real_log(&original, 12).await;
    let public_key = {
        let k = audit::read_signing_key(&original).unwrap().unwrap();
        hex::encode(k.verifying_key().as_bytes())
    };
    let digests = audit::read_digests(&original).unwrap();
    assert_eq!(
        digests.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [5, 10, 12],
        "every {DIGEST_EVERY} events and at shutdown"
    );

    let case = |name: &str, f: &dyn Fn(&mut StoredEvents)| {
        let dir = tmp.path().join(name);
        copy_dir(&original, &dir);
        tamper(&dir, f);
        offline_verify(&dir, &public_key)
    };

    let intact = case("intact", &|_| {});
    assert!(intact.ok, "{intact:?}");
    assert_eq!(intact.head.seq, head);
    assert_eq!(intact.digests_checked, 3);

    let flipped = case("flip", &|t| {
        let v = t.get_mut(&7).unwrap();
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
    });
    assert_eq!(flipped.first_bad_seq, Some(7), "{flipped:?}");

    let deleted = case("delete", &|t| {
        t.remove(&7).unwrap();
    });
    assert_eq!(deleted.first_bad_seq, Some(7), "{deleted:?}");
    assert!(deleted.reason.contains("missing"), "{deleted:?}");

    let swapped = case("swap", &|t| {
        let a = t.remove(&6).unwrap();
        let b = t.remove(&7).unwrap();
        t.insert(6, b);
        t.insert(7, a);
    });
    assert_eq!(swapped.first_bad_seq, Some(6), "{swapped:?}");

    // A cut-off tail is a valid chain: only the signed digests show it.
    let truncated = case("truncate", &|t| {
        for seq in 9..=head {
            t.remove(&seq).unwrap();
        }
    });
    assert_eq!(truncated.first_bad_seq, Some(9), "{truncated:?}");
    assert!(truncated.reason.contains("truncated"), "{truncated:?}");
    {
        let dir = tmp.path().join("truncate");
        let log = DiskLog::open(&dir, SledOptions::default()).unwrap();
        assert_eq!(log.verify().unwrap().seq, 8, "the chain alone looks fine");
    }

    // A rewritten tail with a freshly computed chain (an attacker who knows the hash rule)
    // contradicts the digest at seq 10.
    let rewritten = case("rewrite", &|t| {
        use prost::Message;
        let mut prev: Vec<u8> = amisim_proto::Event::decode(&*t[&7]).unwrap().hash;
        for seq in 8..=head {
            let mut e = amisim_proto::Event::decode(&*t[&seq]).unwrap();
            if seq == 8 {
                e.account_id = OTHER.into();
            }
            e.prev_hash = prev.clone();
            e.hash = amisim_log::hash_event(&prev, &e).to_vec();
            prev = e.hash.clone();
            t.insert(seq, e.encode_to_vec());
        }
    });
    assert_eq!(rewritten.first_bad_seq, Some(10), "{rewritten:?}");
    assert!(rewritten.reason.contains("altered"), "{rewritten:?}");

    // A forged digests file fails the pinned key.
    let forged_dir = tmp.path().join("forged");
    copy_dir(&original, &forged_dir);
    let text = std::fs::read_to_string(forged_dir.join(audit::DIGESTS_FILE)).unwrap();
    std::fs::write(
        forged_dir.join(audit::DIGESTS_FILE),
        text.replacen("\"seq\":12", "\"seq\":11", 1),
    )
    .unwrap();
    let forged = offline_verify(&forged_dir, &public_key);
    assert!(
        !forged.ok && forged.reason.contains("not authentic"),
        "{forged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_service_verifies_exports_the_key_and_streams_filtered() {
    let tmp = tempfile::tempdir().unwrap();
    let node = signed_node(tmp.path(), 5);
    let served = Served::start(node.clone()).await;
    for i in 1..=6 {
        register(&node, i).await;
    }
    let image = {
        let s = node.state();
        let first = s.images.keys().next().unwrap().to_string();
        first
    };
    node.execute(
        OTHER,
        "tag",
        Command::CreateTags(CreateTagsRequest {
            resources: vec![image.clone()],
            tags: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
            dry_run: false,
        }),
    )
    .await
    .ok();
    let mut audit = AuditClient::new(served.channel().await);

    let v = audit
        .verify_log(VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.head_seq, node.head_seq());
    assert_eq!(v.digests_checked, 1);
    let pk = audit
        .get_public_key(GetPublicKeyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pk.public_key.len(), 64);
    assert_eq!(pk.digest_every, DIGEST_EVERY);
    let digests = audit
        .list_digests(ListDigestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .digests;
    assert_eq!(digests.len(), 1);
    assert_eq!(digests[0].seq, 5);

    // Filtered catch-up: the events naming the image.
    let events: Vec<_> = audit
        .stream_events(AuditStreamRequest {
            resource_id: image.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(!events.is_empty());
    assert!(events
        .iter()
        .all(|e| format!("{:?}", e.payload).contains(&image)));
    // By type and account, from a seq.
    let events: Vec<_> = audit
        .stream_events(AuditStreamRequest {
            from: Some(AsOf {
                point: Some(as_of::Point::Seq(3)),
            }),
            event_types: vec!["image_registered".into()],
            account_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap().seq)
        .collect()
        .await;
    assert_eq!(events, [3, 4, 5, 6]);

    // Follow: a new matching event arrives live.
    let mut live = audit
        .stream_events(AuditStreamRequest {
            from: Some(AsOf {
                point: Some(as_of::Point::SimTimeMs(u64::MAX)),
            }),
            follow: true,
            event_types: vec!["ImageRegistered".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    register(&node, 99).await;
    let next = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, node.head_seq());

    // As of seq 2 the caller saw two images.
    let r = audit
        .describe_images_as_of(as_account(
            OWNER,
            DescribeImagesAsOfRequest {
                as_of: Some(AsOf {
                    point: Some(as_of::Point::Seq(2)),
                }),
                request: Some(DescribeImagesRequest {
                    owners: vec!["self".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.seq, 2);
    assert_eq!(r.response.unwrap().images.len(), 2);
    drop(live);
    served.stop().await;
}

/// The write a random history is made of.
#[derive(Debug, Clone)]
enum Step {
    Register(u8),
    Deregister(u8),
    Volume(u8),
    Snapshot(u8),
    Tag(u8),
    Advance(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Register),
        any::<u8>().prop_map(Step::Deregister),
        any::<u8>().prop_map(Step::Volume),
        any::<u8>().prop_map(Step::Snapshot),
        any::<u8>().prop_map(Step::Tag),
        any::<u16>().prop_map(Step::Advance),
    ]
}

fn nth(ids: Vec<String>, i: u8) -> String {
    if ids.is_empty() {
        "ami-00000000000000000".into()
    } else {
        ids[i as usize % ids.len()].clone()
    }
}

async fn run_history(steps: Vec<Step>) {
    let (node, clock) = virtual_node(Arc::new(amisim_log::MemoryLog::new()), 9);
    let mut captured = vec![node.state()];
    for (i, s) in steps.into_iter().enumerate() {
        let state = node.state();
        let command = match s {
            Step::Register(n) => Command::RegisterImage(RegisterImageRequest {
                name: format!("img-{n}"),
                image_location: format!("b/{i}.xml"),
                ..Default::default()
            }),
            Step::Deregister(n) => Command::DeregisterImage(amisim_proto::DeregisterImageRequest {
                image_id: nth(state.images.keys().map(|k| k.to_string()).collect(), n),
                ..Default::default()
            }),
            Step::Volume(n) => Command::CreateVolume(create_volume(1 + n as i32 % 16)),
            Step::Snapshot(n) => Command::CreateSnapshot(amisim_proto::CreateSnapshotRequest {
                volume_id: nth(state.volumes.keys().map(|k| k.to_string()).collect(), n),
                ..Default::default()
            }),
            Step::Tag(n) => Command::CreateTags(CreateTagsRequest {
                resources: vec![nth(
                    state
                        .images
                        .keys()
                        .map(|k| k.to_string())
                        .chain(state.snapshots.keys().map(|k| k.to_string()))
                        .collect(),
                    n,
                )],
                tags: vec![Tag {
                    key: format!("k{n}"),
                    value: "v".into(),
                }],
                dry_run: false,
            }),
            Step::Advance(ms) => {
                clock.advance(ms as u64 * 1000);
                tokio::time::sleep(Duration::from_millis(2)).await;
                captured.push(node.state());
                continue;
            }
        };
        let _ = node.execute(OWNER, &format!("r{i}"), command).await;
        captured.push(node.state());
    }
    let log = node.log();
    // Small interval: reads cross many checkpoints. Reads in a shuffled order, so some fold
    // forward from a checkpoint a later read left behind.
    let checkpoints = audit::Checkpoints::new(3);
    captured.reverse();
    let half = captured.len() / 2;
    captured.rotate_left(half);
    for live in &captured {
        let past = checkpoints.state_at(log.as_ref(), live.seq).unwrap();
        assert_eq!(past.seq, live.seq);
        assert_eq!(past.digest(), live.digest(), "as of seq {}", live.seq);
        // The same answer through the query path.
        let ctx = amisim_core::ReadCtx::new(REGION, OWNER, live.last_sim_time_ms);
        let q = || Query::DescribeImages(DescribeImagesRequest::default());
        assert_eq!(
            format!("{:?}", amisim_core::query(&past, &ctx, q())),
            format!("{:?}", amisim_core::query(live, &ctx, q()))
        );
        // And by time: the last event at or before the state's sim time.
        let by_time =
            audit::as_of::resolve(log.as_ref(), Point::SimTime(live.last_sim_time_ms)).unwrap();
        assert!(by_time >= live.seq);
    }
    node.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn as_of_reads_equal_the_live_state_at_that_seq(steps in prop::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_history(steps));
    }
}
