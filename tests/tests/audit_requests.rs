//! Request records (ADR 0007) of a real `amisim region` process: denied, invalid and DryRun
//! calls are in `Audit.LookupEvents` with their error codes, writes carry responseElements,
//! reads are readOnly; `amisim audit lookup` online and offline; `amisim audit export` prints
//! CloudTrail's `{"Records": [...]}` holding every call in order, and no failed call wrote to
//! the state log.

use std::time::Duration;

use amisim_proto::audit_client::AuditClient;
use amisim_proto::kms_client::KmsClient;
use amisim_proto::*;
use amisim_tests::*;
use serde_json::Value;
use tonic::Request;

const REGION: &str = "us-east-1";

/// A request as `account` with the request id `id` (so the export's order can be checked).
fn call<T>(msg: T, account: &str, id: &str) -> Request<T> {
    let mut r = req_as(msg, REGION, account);
    r.metadata_mut()
        .insert("x-amisim-request-id", id.parse().expect("ascii id"));
    r
}

fn stdout_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_recorded_looked_up_and_exported_in_order() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join(REGION);
    let mut node = start_region(REGION, &dir, &[]);
    let channel = connect(&node.url).await;
    let mut ec2 = amisim_proto::ec2_client::Ec2Client::new(channel.clone());
    let mut kms = KmsClient::new(channel.clone());
    let mut admin = region_admin(&node.url).await;
    let mut ids: Vec<&str> = Vec::new();

    let image_id = ec2
        .register_image(call(
            RegisterImageRequest {
                name: "audited".into(),
                image_location: "bucket/audited.manifest.xml".into(),
                ..Default::default()
            },
            ACCOUNT,
            "call-1",
        ))
        .await
        .unwrap()
        .into_inner()
        .image_id;
    ids.push("call-1");

    let st = ec2
        .describe_images(call(DescribeImagesRequest::default(), "12345", "call-2"))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "AuthFailure");
    ids.push("call-2");
    let st = ec2
        .deregister_image(call(
            DeregisterImageRequest {
                image_id: "ami-!".into(),
                ..Default::default()
            },
            ACCOUNT,
            "call-3",
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "InvalidAMIID.Malformed");
    ids.push("call-3");
    let st = ec2
        .deregister_image(call(
            DeregisterImageRequest {
                image_id: image_id.clone(),
                dry_run: true,
                ..Default::default()
            },
            ACCOUNT,
            "call-4",
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "DryRunOperation");
    ids.push("call-4");
    ec2.describe_images(call(
        DescribeImagesRequest {
            image_ids: vec![image_id.clone()],
            ..Default::default()
        },
        ACCOUNT,
        "call-5",
    ))
    .await
    .unwrap();
    ids.push("call-5");
    kms.create_key(call(CreateKeyRequest::default(), ACCOUNT, "call-6"))
        .await
        .unwrap();
    ids.push("call-6");

    // Only the successful writes are in the state log (besides timer transitions).
    let mut stream = admin
        .stream_events(StreamEventsRequest {
            from_seq: 1,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut writers = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        if !e.request_id.is_empty() {
            writers.push(e.request_id);
        }
    }
    writers.dedup();
    assert_eq!(writers, ["call-1", "call-6"], "failed calls write no state");

    // Online: LookupEvents sees every call at once, newest first.
    let mut audit = AuditClient::new(channel);
    let all = audit
        .lookup_events(LookupEventsRequest {
            lookup_attributes: vec![LookupAttribute {
                attribute_key: "EventSource".into(),
                attribute_value: "ec2.amazonaws.com".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let api: Vec<&TrailEvent> = all
        .events
        .iter()
        .filter(|e| e.event_type == "AwsApiCall")
        .collect();
    let codes: Vec<&str> = api.iter().map(|e| e.error_code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "",
            "DryRunOperation",
            "InvalidAMIID.Malformed",
            "AuthFailure",
            ""
        ],
        "{all:?}"
    );
    assert!(api[0].read_only);
    let registered: Value = serde_json::from_str(&api[4].cloud_trail_event).unwrap();
    assert_eq!(registered["responseElements"]["imageId"], image_id.as_str());
    assert_eq!(registered["requestID"], "call-1");
    let st = audit
        .lookup_events(LookupEventsRequest {
            max_results: 51,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error_code(&st), "InvalidMaxResultsException");

    // The CLI, online, pages through LookupEvents (pages of 1 here).
    let out = run_amisim([
        "audit",
        "lookup",
        "--endpoint",
        &node.url,
        "--attribute",
        "Username=123456789012",
        "--max",
        "3",
        "--format",
        "json",
    ]);
    let online = stdout_json(&out);
    let names: Vec<&str> = online["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["EventName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["CreateKey", "DescribeImages", "DeregisterImage"]);

    // The image turns available by timer: a SystemTransition record (polled through the Audit
    // service, whose calls are not recorded).
    let available = eventually("ImageAvailable", Duration::from_secs(30), || {
        let mut audit = audit.clone();
        async move {
            let found = audit
                .lookup_events(LookupEventsRequest {
                    lookup_attributes: vec![LookupAttribute {
                        attribute_key: "EventName".into(),
                        attribute_value: "ImageAvailable".into(),
                    }],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            found.events.into_iter().next()
        }
    })
    .await;
    assert_eq!(available.event_type, "SystemTransition");
    assert_eq!(available.username, "system");

    let status = node.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", node.process.logs());
    let d = dir.to_str().unwrap();

    // Offline: export every API call, oldest first, in CloudTrail's shape.
    let out = run_amisim([
        "audit",
        "export",
        "--data",
        d,
        "--format",
        "cloudtrail",
        "--api-calls-only",
    ]);
    let exported = stdout_json(&out);
    let records = exported["Records"].as_array().unwrap();
    let got: Vec<&str> = records
        .iter()
        .map(|r| r["requestID"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    for r in records {
        assert_eq!(r["eventVersion"], "1.11");
        assert_eq!(r["awsRegion"], REGION);
        assert_eq!(r["eventType"], "AwsApiCall");
        assert_eq!(r["managementEvent"], true);
        let time = r["eventTime"].as_str().unwrap();
        assert!(time.len() == 20 && time.ends_with('Z'), "{time}");
    }
    assert_eq!(records[1]["errorCode"], "AuthFailure");
    assert_eq!(records[5]["eventSource"], "kms.amazonaws.com");

    // With the SystemTransition records, in time order; jsonl has one record per line.
    let out = run_amisim(["audit", "export", "--data", d, "--format", "jsonl"]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() > records.len(),
        "timer transitions too: {lines:#?}"
    );
    let times: Vec<&str> = lines
        .iter()
        .map(|r| r["eventTime"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert!(lines
        .iter()
        .any(|r| r["eventType"] == "SystemTransition" && r["eventName"] == "ImageAvailable"));

    // Offline lookup, filtered; a second attribute is a usage error of the lookup.
    let out = run_amisim([
        "audit",
        "lookup",
        "--data",
        d,
        "--attribute",
        &format!("ResourceName={image_id}"),
        "--format",
        "json",
    ]);
    let offline = stdout_json(&out);
    let names: Vec<&str> = offline["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["EventName"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ImageAvailable"), "{offline}");
    let calls: Vec<&str> = names
        .into_iter()
        .filter(|n| *n != "ImageAvailable")
        .collect();
    assert_eq!(
        calls,
        ["DescribeImages", "DeregisterImage", "RegisterImage"],
        "{offline}"
    );
    // `audit verify` checks the request log's chain too.
    let out = run_amisim(["audit", "verify", "--data", d, "--format", "json"]);
    let report = stdout_json(&out);
    assert_eq!(report["request_log"]["ok"], true, "{report}");
    assert_eq!(report["request_log"]["head_seq"], ids.len(), "{report}");

    let out = run_amisim(["audit", "lookup", "--data", d, "--attribute", "Colour=red"]);
    assert_eq!(out.status.code(), Some(2));
}
