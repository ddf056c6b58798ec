//! Request records (ADR 0007) over gRPC on a node with in-memory logs: every Ec2 and Kms call,
//! successful, failed, denied or DryRun, is a CloudTrail-shaped record in `Audit.LookupEvents`,
//! and none of them moves the state log; timer transitions show as SystemTransition records.

mod common;

use std::sync::Arc;

use amisim_log::{EventLog, MemoryLog};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::kms_client::KmsClient;
use amisim_proto::{
    CreateKeyRequest, DeregisterImageRequest, DescribeImagesRequest, LookupAttribute,
    LookupEventsRequest, LookupEventsResponse, RegisterImageRequest, TrailEvent,
};
use amisim_region::audit::RequestRecorder;
use common::*;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

fn lookup(attr: Option<(&str, &str)>, max: u32, token: &str) -> LookupEventsRequest {
    LookupEventsRequest {
        lookup_attributes: attr
            .map(|(k, v)| LookupAttribute {
                attribute_key: k.into(),
                attribute_value: v.into(),
            })
            .into_iter()
            .collect(),
        max_results: max,
        next_token: token.into(),
        ..Default::default()
    }
}

async fn events(
    audit: &mut AuditClient<Channel>,
    req: LookupEventsRequest,
) -> LookupEventsResponse {
    audit.lookup_events(req).await.unwrap().into_inner()
}

fn json(e: &TrailEvent) -> Value {
    serde_json::from_str(&e.cloud_trail_event).unwrap()
}

#[tokio::test]
async fn every_call_is_recorded_and_none_moves_the_state_log() {
    let (node, clock) = virtual_node(Arc::new(MemoryLog::new()), 5);
    let s = Served::start(node.clone()).await;
    let mut ec2 = s.ec2().await;
    let mut audit = AuditClient::new(s.channel().await);
    let mut kms = KmsClient::new(s.channel().await);

    let image_id = ec2
        .register_image(as_account(
            OWNER,
            RegisterImageRequest {
                name: "recorded".into(),
                image_location: "bucket/recorded.manifest.xml".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image_id;
    let head = node.head_seq();

    // Denied, invalid and DryRun calls: recorded, state log untouched.
    let st = ec2
        .describe_images(as_account("12345", DescribeImagesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let st = ec2
        .deregister_image(as_account(
            OWNER,
            DeregisterImageRequest {
                image_id: "ami-nothex!".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidAMIID.Malformed")
    );
    let st = ec2
        .deregister_image(as_account(
            OWNER,
            DeregisterImageRequest {
                image_id: image_id.clone(),
                dry_run: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("DryRunOperation")
    );
    ec2.describe_images(as_account(OWNER, DescribeImagesRequest::default()))
        .await
        .unwrap();
    kms.create_key(as_account(OWNER, CreateKeyRequest::default()))
        .await
        .unwrap();
    assert_eq!(node.head_seq(), head + 1, "only CreateKey wrote state");

    let all = events(&mut audit, lookup(None, 0, "")).await;
    let names: Vec<_> = all.events.iter().map(|e| e.event_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CreateKey",
            "DescribeImages",
            "DeregisterImage",
            "DeregisterImage",
            "DescribeImages",
            "RegisterImage"
        ],
        "newest first"
    );
    assert!(all.next_token.is_empty());
    let [key, read, dry, malformed, denied, registered] = &all.events[..] else {
        panic!("{all:?}")
    };
    assert_eq!(key.event_source, "kms.amazonaws.com");
    assert!(read.read_only);
    assert!(json(read)["responseElements"].is_null());
    assert_eq!(dry.error_code, "DryRunOperation");
    assert_eq!(malformed.error_code, "InvalidAMIID.Malformed");
    assert_eq!(json(malformed)["errorCode"], "InvalidAMIID.Malformed");
    assert_eq!(denied.error_code, "AuthFailure");
    assert_eq!(denied.username, "12345", "the claimed account");
    assert_eq!(json(denied)["userIdentity"]["type"], "Unknown");
    let r = json(registered);
    assert_eq!(r["eventVersion"], "1.11");
    assert_eq!(r["eventSource"], "ec2.amazonaws.com");
    assert_eq!(r["awsRegion"], REGION);
    assert_eq!(r["userIdentity"]["accountId"], OWNER);
    assert_eq!(r["requestParameters"]["name"], "recorded");
    assert_eq!(r["responseElements"]["imageId"], image_id.as_str());
    assert_eq!(r["readOnly"], false);
    assert_eq!(r["sourceIPAddress"], "127.0.0.1");
    assert!(
        r["userAgent"]
            .as_str()
            .unwrap_or_default()
            .contains("tonic"),
        "{r}"
    );
    assert_eq!(registered.resources[0].resource_name, image_id);
    assert_eq!(registered.resources[0].resource_type, "AWS::EC2::Image");

    // Filters.
    let failed = events(&mut audit, lookup(Some(("ResourceName", &image_id)), 0, "")).await;
    assert_eq!(
        failed.events.len(),
        2,
        "RegisterImage and the DryRun DeregisterImage"
    );
    let reads = events(&mut audit, lookup(Some(("ReadOnly", "true")), 0, "")).await;
    assert_eq!(reads.events.len(), 2);
    let by = events(&mut audit, lookup(Some(("Username", OWNER)), 0, "")).await;
    assert_eq!(by.events.len(), 5);
    let kms_only = events(
        &mut audit,
        lookup(Some(("EventSource", "kms.amazonaws.com")), 0, ""),
    )
    .await;
    assert_eq!(kms_only.events.len(), 1);
    let one = events(
        &mut audit,
        lookup(Some(("EventId", &registered.event_id)), 0, ""),
    )
    .await;
    // The same record (its `position` belongs to each lookup's own parameters).
    let strip = |mut e: TrailEvent| {
        e.position.clear();
        e
    };
    assert_eq!(
        one.events.into_iter().map(strip).collect::<Vec<_>>(),
        vec![strip(registered.clone())]
    );

    // Pages of 4 then 2, with the same parameters only.
    let p1 = events(&mut audit, lookup(None, 4, "")).await;
    assert_eq!(p1.events, all.events[..4]);
    let p2 = events(&mut audit, lookup(None, 4, &p1.next_token)).await;
    assert_eq!(p2.events, all.events[4..]);
    let st = audit
        .lookup_events(lookup(Some(("ReadOnly", "true")), 4, &p1.next_token))
        .await
        .unwrap_err();
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidNextTokenException")
    );
    let mut two = lookup(Some(("ReadOnly", "true")), 0, "");
    two.lookup_attributes.push(LookupAttribute {
        attribute_key: "EventName".into(),
        attribute_value: "RegisterImage".into(),
    });
    let st = audit.lookup_events(two).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidLookupAttributesException")
    );
    let st = audit.lookup_events(lookup(None, 51, "")).await.unwrap_err();
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidMaxResultsException")
    );
    let st = audit
        .lookup_events(LookupEventsRequest {
            start_time_ms: Some(T0 + 1),
            end_time_ms: Some(T0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidTimeRangeException")
    );

    // The image turns available by timer: a SystemTransition record.
    clock.advance(10 * 60 * 1000);
    wait_until("the image's timer", 10, || node.head_seq() > head + 1).await;
    let t = events(&mut audit, lookup(Some(("Username", "system")), 0, "")).await;
    let avail = t
        .events
        .iter()
        .find(|e| e.event_name == "ImageAvailable")
        .unwrap_or_else(|| panic!("{t:?}"));
    assert_eq!(avail.event_type, "SystemTransition");
    assert_eq!(
        json(avail)["serviceEventDetails"]["imageId"],
        image_id.as_str()
    );
    let newest = events(&mut audit, lookup(None, 1, "")).await;
    assert_eq!(newest.events[0].event_name, "ImageAvailable");
    s.stop().await;
}

#[tokio::test]
async fn reads_can_be_left_out() {
    let (node, _clock) = virtual_node(Arc::new(MemoryLog::new()), 6);
    let log = Arc::new(MemoryLog::new());
    let recorder = RequestRecorder::start(REGION, log.clone(), false).unwrap();
    assert!(node.attach_requests(recorder.clone()));
    let s = Served::start(node.clone()).await;
    let mut ec2 = s.ec2().await;
    ec2.describe_images(as_account(OWNER, DescribeImagesRequest::default()))
        .await
        .unwrap();
    let _ = ec2
        .deregister_image(as_account(OWNER, DeregisterImageRequest::default()))
        .await
        .unwrap_err();
    recorder.flush().await;
    assert_eq!(log.head().seq, 1, "only the write is recorded");
    s.stop().await;
}

#[tokio::test]
async fn a_write_the_client_cancels_is_still_recorded() {
    let log = Arc::new(FlakyLog::default());
    let (node, _clock) = virtual_node(log.clone(), 7);
    let s = Served::start(node.clone()).await;
    let mut ec2 = s.ec2().await;
    let mut audit = AuditClient::new(s.channel().await);
    log.delay_ms.store(400, std::sync::atomic::Ordering::SeqCst);
    let call = ec2.create_volume(as_account(OWNER, create_volume(8)));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), call)
            .await
            .is_err(),
        "the append is slower than the client's patience"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let record = loop {
        let found = events(
            &mut audit,
            lookup(Some(("EventName", "CreateVolume")), 0, ""),
        )
        .await;
        if let Some(e) = found.events.into_iter().next() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no record of the canceled call"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(record.error_code, "RequestCanceled");
    s.stop().await;
}
