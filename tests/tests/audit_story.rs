//! Issue 5's "Done when", end to end against `amisim dev`: an auditor answers "who shared this
//! image, when, and what did the region look like just before that" — over gRPC from the
//! coordinator's `Audit` service, and from the CLI (`amisim audit lookup --resource`, then
//! `amisim audit as-of`) — and proves the logs were not altered (`amisim audit verify`, the
//! state log and the request log, each with its signed digests).

use std::time::Duration;

use amisim_proto::as_of::Point;
use amisim_proto::audit_client::AuditClient;
use amisim_proto::*;
use amisim_tests::*;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Request;

const REGION: &str = "us-east-1";
const GRANTEE: &str = "444455556666";

fn stdout_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The images `GRANTEE` may launch in REGION at `point`, from the coordinator.
async fn launchable_at(audit: &mut AuditClient<Channel>, point: Point) -> (Vec<String>, u64) {
    let mut r = Request::new(DescribeImagesAsOfRequest {
        as_of: Some(AsOf { point: Some(point) }),
        request: Some(DescribeImagesRequest {
            executable_users: vec!["self".into()],
            ..Default::default()
        }),
        region: REGION.into(),
    });
    r.metadata_mut()
        .insert("x-amisim-account", GRANTEE.parse().unwrap());
    let a = audit.describe_images_as_of(r).await.unwrap().into_inner();
    let ids = a
        .response
        .unwrap_or_default()
        .images
        .into_iter()
        .map(|i| i.image_id)
        .collect();
    (ids, a.seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_shared_this_image_when_and_what_the_region_looked_like_before() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = start_dev(data.path(), &["--digest-every", "5"]);
    let mut ec2 = ec2(&dev.gateway).await;
    let image = register_image(&mut ec2, REGION, "shared later")
        .await
        .expect("register")
        .image_id;

    // The owner shares it with the grantee, through the gateway.
    let mut share = req(
        ModifyImageAttributeRequest {
            image_id: image.clone(),
            launch_permission: Some(LaunchPermissionModifications {
                add: vec![LaunchPermission {
                    user_id: GRANTEE.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
        REGION,
    );
    share
        .metadata_mut()
        .insert("x-amisim-request-id", "share-1".parse().unwrap());
    ec2.modify_image_attribute(share).await.unwrap();

    // Who and when: LookupEvents on the coordinator (every region), by resource id.
    let mut audit = AuditClient::new(connect(&dev.gateway).await);
    let found = audit
        .lookup_events(LookupEventsRequest {
            lookup_attributes: vec![LookupAttribute {
                attribute_key: "ResourceName".into(),
                attribute_value: image.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let record = found
        .events
        .iter()
        .find(|e| e.event_name == "ModifyImageAttribute")
        .unwrap_or_else(|| panic!("no ModifyImageAttribute record: {found:?}"));
    assert_eq!(record.username, ACCOUNT, "who");
    assert_eq!(record.region, REGION);
    let json: Value = serde_json::from_str(&record.cloud_trail_event).unwrap();
    assert_eq!(json["userIdentity"]["accountId"], ACCOUNT);
    assert_eq!(json["requestID"], "share-1");
    assert_eq!(
        json["requestParameters"]["launchPermission"]["add"][0]["userId"],
        GRANTEE
    );
    let when = record.event_time.clone();
    assert!(when.ends_with('Z'), "{when}");

    // The state change the call made: the region's event with that request id.
    let mut stream = audit
        .stream_events(AuditStreamRequest {
            resource_id: image.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut shared_event = None;
    while let Some(e) = stream.message().await.unwrap() {
        if e.request_id == "share-1" {
            shared_event = Some(e);
        }
    }
    let shared_event = shared_event.expect("the share's event in the merged stream");
    assert_eq!(shared_event.region, REGION);
    let seq = shared_event.seq;

    // What the region looked like just before: the grantee could not launch it; just after, it
    // could. By seq, by token (the global form), and by the event's simulated time.
    let (before, at) = launchable_at(&mut audit, Point::Seq(seq - 1)).await;
    assert_eq!(at, seq - 1);
    assert!(!before.contains(&image), "not shared before: {before:?}");
    let (after, _) = launchable_at(&mut audit, Point::Seq(seq)).await;
    assert!(after.contains(&image), "shared after: {after:?}");
    let (by_time, _) = launchable_at(&mut audit, Point::SimTimeMs(shared_event.sim_time_ms)).await;
    assert!(by_time.contains(&image));
    let mut global = Request::new(DescribeImagesAsOfRequest {
        as_of: Some(AsOf {
            point: Some(Point::Token(format!("{REGION}:{}", seq - 1))),
        }),
        ..Default::default()
    });
    global
        .metadata_mut()
        .insert("x-amisim-account", ACCOUNT.parse().unwrap());
    let global = audit
        .describe_images_as_of(global)
        .await
        .unwrap()
        .into_inner();
    let owned = global
        .images
        .iter()
        .find(|i| i.image.as_ref().is_some_and(|i| i.image_id == image))
        .expect("the owner sees the image before the share");
    assert_eq!(owned.region, REGION);
    assert_eq!(global.regions.len(), 3, "{:?}", global.regions);

    // The same from the CLI, against the coordinator's endpoint.
    let out = run_amisim([
        "audit",
        "lookup",
        "--endpoint",
        &dev.gateway,
        "--resource",
        &image,
        "--format",
        "json",
    ]);
    let lookup = stdout_json(&out);
    let modify = lookup["Events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["EventName"] == "ModifyImageAttribute")
        .unwrap_or_else(|| panic!("{lookup}"));
    assert_eq!(modify["Username"], ACCOUNT);
    assert_eq!(modify["EventTime"], when.as_str());
    for (point, shared) in [((seq - 1).to_string(), false), (seq.to_string(), true)] {
        let out = run_amisim([
            "audit",
            "as-of",
            "--endpoint",
            &dev.gateway,
            "--region",
            REGION,
            "--at",
            &point,
            "--account",
            GRANTEE,
            "--format",
            "json",
        ]);
        let answer = stdout_json(&out);
        let ids: Vec<&str> = answer["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["image"]["imageId"].as_str())
            .collect();
        assert_eq!(
            ids.contains(&image.as_str()),
            shared,
            "at {point}: {answer}"
        );
    }

    // And the logs were not altered: online, then offline after a clean stop.
    let verified = audit
        .verify_log(VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    let status = dev.process.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", dev.process.logs());
    let dir = data.path().join(REGION);
    let out = run_amisim([
        "audit",
        "verify",
        "--data",
        dir.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let report = stdout_json(&out);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["request_log"]["ok"], true, "{report}");
    let requests_head = report["request_log"]["head_seq"].as_u64().unwrap();
    assert!(requests_head >= 2, "{report}");
    assert_eq!(
        report["request_log"]["last_digest_seq"].as_u64(),
        Some(requests_head),
        "the clean stop signed the request log's head: {report}"
    );
}
