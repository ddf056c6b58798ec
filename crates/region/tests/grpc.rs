//! The region node over gRPC, as a client sees it: health, reflection, metadata conventions,
//! error mapping, read-your-writes, the Region service.

mod common;

use std::sync::Arc;

use amisim_log::MemoryLog;
use amisim_proto::{
    DescribeVolumesRequest, GetRegionInfoRequest, GetStateDigestRequest, RegisterImageRequest,
    StreamEventsRequest,
};
use amisim_region::RegionNode;
use common::*;
use futures::StreamExt;
use tonic::Code;

async fn served_memory() -> Served {
    let node = RegionNode::start(config(1), Arc::new(MemoryLog::new())).unwrap();
    Served::start(node).await
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let s = served_memory().await;
    let mut health = HealthClient::new(s.channel().await);
    for service in ["", "amisim.v1.Ec2", "amisim.v1.Region"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_amisim_services() {
    let s = served_memory().await;

    // v1
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(s.channel().await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected reflection answer {resp:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"amisim.v1.Ec2"), "{names:?}");
        assert!(names.contains(&"amisim.v1.Region"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }
    // v1alpha (what older grpcurl versions ask)
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(s.channel().await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("amisim.v1.Ec2".into())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        assert!(
            matches!(
                resp.message_response,
                Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
            ),
            "{resp:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn domain_errors_map_to_status_code_message_and_metadata() {
    let s = served_memory().await;
    let mut ec2 = s.ec2().await;

    // A malformed id: INVALID_ARGUMENT with the EC2 code in metadata and first in the message.
    let mut req = as_account(
        OWNER,
        DescribeVolumesRequest {
            volume_ids: vec!["bad".into()],
            ..Default::default()
        },
    );
    req.metadata_mut()
        .insert("x-amisim-request-id", "req-42".parse().unwrap());
    let st = ec2.describe_volumes(req).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidVolumeID.Malformed")
    );
    assert!(
        st.message().starts_with("InvalidVolumeID.Malformed: "),
        "{}",
        st.message()
    );
    assert_eq!(meta(st.metadata(), "x-amisim-request-id"), Some("req-42"));

    // A write error: nothing is written.
    let head = s.node.head_seq();
    let st = ec2
        .create_volume(as_account(
            OWNER,
            amisim_proto::CreateVolumeRequest {
                availability_zone: "eu-west-1a".into(),
                size: Some(8),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidZone.NotFound")
    );
    // A fresh request id when the client sent none.
    assert_eq!(
        meta(st.metadata(), "x-amisim-request-id").map(str::len),
        Some(36)
    );

    // DryRun: FAILED_PRECONDITION DryRunOperation, nothing written.
    let st = ec2
        .create_volume(as_account(
            OWNER,
            amisim_proto::CreateVolumeRequest {
                dry_run: true,
                ..create_volume(8)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("DryRunOperation")
    );
    assert_eq!(s.node.head_seq(), head);
    s.stop().await;
}

#[tokio::test]
async fn describe_images_with_a_malformed_id_is_invalid_argument() {
    let s = served_memory().await;
    let mut ec2 = s.ec2().await;
    let st = ec2
        .describe_images(as_account(
            OWNER,
            amisim_proto::DescribeImagesRequest {
                image_ids: vec!["bad".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidAMIID.Malformed")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bad_account_is_unauthenticated() {
    let s = served_memory().await;
    let mut ec2 = s.ec2().await;
    for bad in ["12345", "abcdefghijkl", "1234567890123"] {
        let st = ec2
            .create_volume(as_account(bad, create_volume(8)))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated, "{bad}");
        assert_eq!(
            meta(st.metadata(), "x-amisim-error-code"),
            Some("AuthFailure")
        );
        assert!(st.message().starts_with("AuthFailure: "));
        let st = ec2
            .describe_volumes(as_account(bad, DescribeVolumesRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated, "{bad}");
    }
    assert_eq!(s.node.head_seq(), 0, "a refused caller writes nothing");
    s.stop().await;
}

#[tokio::test]
async fn writes_return_a_consistency_token_and_are_read_at_once() {
    let s = served_memory().await;
    let mut ec2 = s.ec2().await;
    let mut req = as_account(OWNER, create_volume(8));
    req.metadata_mut()
        .insert("x-amisim-request-id", "my-request".parse().unwrap());
    let resp = ec2.create_volume(req).await.unwrap();
    let token = meta(resp.metadata(), "x-amisim-consistency-token")
        .unwrap()
        .to_string();
    assert_eq!(
        meta(resp.metadata(), "x-amisim-request-id"),
        Some("my-request")
    );
    let vol = resp.into_inner();
    assert!(vol.volume_id.starts_with("vol-"));
    let (region, seq) = amisim_region::parse_consistency_token(&token).unwrap();
    assert_eq!(region, REGION);
    assert!(seq >= 1 && seq <= s.node.head_seq(), "{token}");

    // Read your writes: the answer came after the state was published.
    let found = ec2
        .describe_volumes(as_account(
            OWNER,
            DescribeVolumesRequest {
                volume_ids: vec![vol.volume_id.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.volumes.len(), 1);
    // The event carries the envelope the node filled in.
    let events = s.node.log().read_range(seq, seq).unwrap();
    assert_eq!(events[0].region, REGION);
    assert_eq!(events[0].account_id, OWNER);
    assert_eq!(events[0].request_id, "my-request");
    assert_eq!(events[0].event_id.len(), 36);
    assert!(events[0].sim_time_ms > 0 && events[0].wall_time_ms > 0);

    // The default account is 123456789012 and does not see another account's volume.
    let none = ec2
        .describe_volumes(DescribeVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.volumes.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn an_oversized_message_gets_a_status_not_a_crash() {
    let s = served_memory().await;
    let mut ec2 = s.ec2().await;
    let st = ec2
        .register_image(as_account(
            OWNER,
            RegisterImageRequest {
                name: "big".into(),
                description: "x".repeat(5 * 1024 * 1024),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(st.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{st:?}"
    );
    // The server is still fine.
    ec2.create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn region_service_info_stream_and_digest() {
    let s = served_memory().await;
    let mut ec2 = s.ec2().await;
    let mut region = s.region().await;
    for _ in 0..3 {
        ec2.create_volume(as_account(OWNER, create_volume(8)))
            .await
            .unwrap();
    }
    let info = region
        .get_region_info(GetRegionInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.region, REGION);
    assert_eq!(info.seed, 1);
    assert!(info.head_seq >= 3);
    assert!(info.sim_time_ms > 0);

    // Catch-up only.
    let all: Vec<_> = region
        .stream_events(StreamEventsRequest {
            from_seq: 1,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let seqs: Vec<u64> = all.iter().map(|e| e.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() as u64 >= info.head_seq);

    // Follow: sees a later write.
    let head = s.node.head_seq();
    let mut live = region
        .stream_events(StreamEventsRequest {
            from_seq: head + 1,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let vol = ec2
        .create_volume(as_account(OWNER, create_volume(9)))
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let e = live.next().await.unwrap().unwrap();
            if let Some(amisim_proto::event::Payload::VolumeCreated(v)) = &e.payload {
                return (e.seq, v.volume_id.clone());
            }
        }
    })
    .await
    .unwrap();
    assert!(next.0 > head);
    assert_eq!(next.1, vol.volume_id);

    let d = region
        .get_state_digest(GetStateDigestRequest { replay: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.region, REGION);
    assert!(d.seq >= next.0);
    assert_eq!(d.digest.len(), 64);
    assert_eq!(d.digest, d.replay_digest);
    let d = region
        .get_state_digest(GetStateDigestRequest { replay: false })
        .await
        .unwrap()
        .into_inner();
    assert!(d.replay_digest.is_empty());
    s.stop().await;
}
