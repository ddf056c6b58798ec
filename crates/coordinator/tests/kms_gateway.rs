//! The gateway routes `amisim.v1.Kms` like `amisim.v1.Ec2`: by `x-amisim-region`, to a real
//! region node, metadata and KMS error codes passed through unchanged.

use std::sync::Arc;

use amisim_coordinator::{serve_gateway, RegionRoutes};
use amisim_log::MemoryLog;
use amisim_proto::kms_client::KmsClient;
use amisim_proto::{CreateAliasRequest, CreateKeyRequest, DescribeKeyRequest};
use amisim_region::{serve, RegionConfig, RegionNode};
use tonic::transport::Channel;
use tonic::Code;

const OWNER: &str = "111122223333";

async fn start_region(region: &str) -> String {
    let node = RegionNode::start(
        RegionConfig {
            seed: Some(3),
            ..RegionConfig::new(region)
        },
        Arc::new(MemoryLog::new()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(node, listener, std::future::pending()));
    format!("http://{addr}")
}

fn call<T>(region: Option<&str>, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-amisim-account", OWNER.parse().unwrap());
    if let Some(region) = region {
        r.metadata_mut()
            .insert("x-amisim-region", region.parse().unwrap());
    }
    r
}

#[tokio::test]
async fn kms_calls_are_routed_by_region() {
    let us = start_region("us-east-1").await;
    let eu = start_region("eu-west-1").await;
    let routes =
        RegionRoutes::from_args([format!("us-east-1={us}"), format!("eu-west-1={eu}")]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_gateway(routes, listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kms = KmsClient::new(channel);

    // A key in eu-west-1 ...
    let key = kms
        .create_key(call(Some("eu-west-1"), CreateKeyRequest::default()))
        .await
        .unwrap();
    assert!(key
        .metadata()
        .get("x-amisim-consistency-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("eu-west-1:")));
    let key = key.into_inner().key_metadata.unwrap();
    assert!(key.arn.starts_with("arn:aws:kms:eu-west-1:"), "{}", key.arn);
    kms.create_alias(call(
        Some("eu-west-1"),
        CreateAliasRequest {
            alias_name: "alias/eu".into(),
            target_key_id: key.key_id.clone(),
        },
    ))
    .await
    .unwrap();
    let d = kms
        .describe_key(call(
            Some("eu-west-1"),
            DescribeKeyRequest {
                key_id: "alias/eu".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.key_metadata.unwrap().key_id, key.key_id);
    // ... is not in us-east-1 (the default region): KMS's NotFoundException passes through.
    let st = kms
        .describe_key(call(
            None,
            DescribeKeyRequest {
                key_id: "alias/eu".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(
        st.metadata()
            .get("x-amisim-error-code")
            .and_then(|v| v.to_str().ok()),
        Some("NotFoundException")
    );
    // An unrouted region is the gateway's own InvalidRegion.
    let st = kms
        .describe_key(call(
            Some("mars-1"),
            DescribeKeyRequest {
                key_id: "alias/aws/ebs".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        st.metadata()
            .get("x-amisim-error-code")
            .and_then(|v| v.to_str().ok()),
        Some("InvalidRegion")
    );
    let _ = stop.send(());
}
