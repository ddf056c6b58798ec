//! The `Kms` service and the EBS encryption settings of `Ec2`, over gRPC as a client sees them:
//! KMS's own error codes in status and metadata, health and reflection for `amisim.v1.Kms`,
//! encryption by default under a customer managed key, and a key deleted by the node's timer.

mod common;

use std::sync::Arc;

use amisim_log::MemoryLog;
use amisim_proto::kms_client::KmsClient;
use amisim_proto::*;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

const DAY: u64 = 86_400_000;

async fn kms(s: &Served) -> KmsClient<Channel> {
    KmsClient::new(s.channel().await)
}

#[tokio::test]
async fn health_and_reflection_know_the_kms_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let (node, _clock) = virtual_node(Arc::new(MemoryLog::new()), 1);
    let s = Served::start(node).await;
    let r = HealthClient::new(s.channel().await)
        .check(HealthCheckRequest {
            service: "amisim.v1.Kms".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);

    use futures::StreamExt;
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
    assert!(list.service.iter().any(|s| s.name == "amisim.v1.Kms"));
    s.stop().await;
}

#[tokio::test]
async fn kms_keys_over_grpc_with_kms_error_codes() {
    let (node, clock) = virtual_node(Arc::new(MemoryLog::new()), 1);
    let s = Served::start(node).await;
    let mut kms = kms(&s).await;

    // CreateKey, then CreateAlias: writes with a consistency token.
    let created = kms
        .create_key(as_account(
            OWNER,
            CreateKeyRequest {
                description: "for EBS".into(),
                policy: Some(KeyPolicy {
                    account_ids: vec![OTHER.into()],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(meta(created.metadata(), "x-amisim-consistency-token")
        .is_some_and(|t| t.starts_with("us-east-1:")));
    let key = created.into_inner().key_metadata.unwrap();
    assert_eq!(key.key_state, "Enabled");
    assert_eq!(
        key.arn,
        format!("arn:aws:kms:us-east-1:{OWNER}:key/{}", key.key_id)
    );
    kms.create_alias(as_account(
        OWNER,
        CreateAliasRequest {
            alias_name: "alias/ebs".into(),
            target_key_id: key.key_id.clone(),
        },
    ))
    .await
    .unwrap();
    // DescribeKey by alias (read your writes).
    let d = kms
        .describe_key(as_account(
            OWNER,
            DescribeKeyRequest {
                key_id: "alias/ebs".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.key_metadata.unwrap().key_id, key.key_id);
    // The other account sees it by ARN (the policy admits it), not by alias.
    let d = kms
        .describe_key(as_account(
            OTHER,
            DescribeKeyRequest {
                key_id: key.arn.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.key_metadata.unwrap().aws_account_id, OWNER);
    let st = kms
        .describe_key(as_account(
            OTHER,
            DescribeKeyRequest {
                key_id: "alias/ebs".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("NotFoundException")
    );
    assert!(
        st.message().starts_with("NotFoundException: "),
        "{}",
        st.message()
    );
    // ListKeys: the key and the AWS managed key; ListAliases: both aliases.
    let keys = kms
        .list_keys(as_account(OWNER, ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.keys.len(), 2);
    let aliases = kms
        .list_aliases(as_account(OWNER, ListAliasesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = aliases
        .aliases
        .iter()
        .map(|a| a.alias_name.as_str())
        .collect();
    assert_eq!(names, ["alias/aws/ebs", "alias/ebs"]);
    // A bad limit: ValidationException, INVALID_ARGUMENT.
    let st = kms
        .list_keys(as_account(
            OWNER,
            ListKeysRequest {
                limit: Some(0),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("ValidationException")
    );
    // Policy: the owner reads it; another account is denied (PERMISSION_DENIED).
    let p = kms
        .get_key_policy(as_account(
            OWNER,
            GetKeyPolicyRequest {
                key_id: key.key_id.clone(),
                policy_name: "default".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.policy.unwrap().account_ids, vec![OTHER.to_string()]);
    let st = kms
        .put_key_policy(as_account(
            OTHER,
            PutKeyPolicyRequest {
                key_id: key.arn.clone(),
                policy: Some(KeyPolicy::default()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("AccessDeniedException")
    );
    // Disable, enable.
    kms.disable_key(as_account(
        OWNER,
        DisableKeyRequest {
            key_id: key.key_id.clone(),
        },
    ))
    .await
    .unwrap();
    kms.enable_key(as_account(
        OWNER,
        EnableKeyRequest {
            key_id: key.arn.clone(),
        },
    ))
    .await
    .unwrap();
    // Schedule the deletion: PendingDeletion; a second schedule is FAILED_PRECONDITION
    // KMSInvalidStateException.
    let r = kms
        .schedule_key_deletion(as_account(
            OWNER,
            ScheduleKeyDeletionRequest {
                key_id: key.key_id.clone(),
                pending_window_in_days: Some(7),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.key_state, "PendingDeletion");
    assert_eq!(r.deletion_date, "2024-05-08T00:00:00.000Z");
    let st = kms
        .schedule_key_deletion(as_account(
            OWNER,
            ScheduleKeyDeletionRequest {
                key_id: key.key_id.clone(),
                pending_window_in_days: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("KMSInvalidStateException")
    );
    // A week of simulated time later the node's timer deletes it.
    let id = key.key_id.clone();
    clock.set(T0 + 7 * DAY);
    wait_until("the key deletion timer", 10, || {
        s.node
            .state()
            .kms_keys
            .get(&id)
            .is_some_and(|k| k.state == amisim_core::kms::KeyState::Deleted)
    })
    .await;
    let st = kms
        .describe_key(as_account(OWNER, DescribeKeyRequest { key_id: id }))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn ebs_encryption_by_default_under_a_customer_managed_key() {
    let (node, _clock) = virtual_node(Arc::new(MemoryLog::new()), 1);
    let s = Served::start(node).await;
    let mut kms = kms(&s).await;
    let mut ec2 = s.ec2().await;

    let get = ec2
        .get_ebs_encryption_by_default(as_account(OWNER, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(!get.ebs_encryption_by_default);
    let d = ec2
        .get_ebs_default_kms_key_id(as_account(OWNER, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        d.kms_key_id,
        format!("arn:aws:kms:us-east-1:{OWNER}:alias/aws/ebs")
    );
    // Enable, with a customer managed default key named by alias.
    let on = ec2
        .enable_ebs_encryption_by_default(as_account(OWNER, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(on.ebs_encryption_by_default);
    let key = kms
        .create_key(as_account(OWNER, CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    kms.create_alias(as_account(
        OWNER,
        CreateAliasRequest {
            alias_name: "alias/default".into(),
            target_key_id: key.key_id.clone(),
        },
    ))
    .await
    .unwrap();
    let m = ec2
        .modify_ebs_default_kms_key_id(as_account(
            OWNER,
            ModifyEbsDefaultKmsKeyIdRequest {
                kms_key_id: "alias/default".into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.kms_key_id, key.arn);
    // A new volume, not asking for encryption: encrypted under the key.
    let v = ec2
        .create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap()
        .into_inner();
    assert!(v.encrypted);
    assert_eq!(v.kms_key_id, key.arn);
    // The key disabled: the synchronous path refuses, with EC2's code.
    kms.disable_key(as_account(
        OWNER,
        DisableKeyRequest {
            key_id: key.key_id.clone(),
        },
    ))
    .await
    .unwrap();
    let st = ec2
        .create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("CustomerKeyHasBeenRevoked")
    );
    // Reset and disable: new volumes are unencrypted again; the first one keeps its key.
    let r = ec2
        .reset_ebs_default_kms_key_id(as_account(OWNER, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.kms_key_id,
        format!("arn:aws:kms:us-east-1:{OWNER}:alias/aws/ebs")
    );
    ec2.disable_ebs_encryption_by_default(as_account(OWNER, Default::default()))
        .await
        .unwrap();
    let plain = ec2
        .create_volume(as_account(OWNER, create_volume(8)))
        .await
        .unwrap()
        .into_inner();
    assert!(!plain.encrypted);
    let all = ec2
        .describe_volumes(as_account(OWNER, DescribeVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let first = all
        .volumes
        .iter()
        .find(|x| x.volume_id == v.volume_id)
        .unwrap();
    assert_eq!(first.kms_key_id, key.arn);
    // DryRun on a read: FAILED_PRECONDITION DryRunOperation.
    let st = ec2
        .get_ebs_encryption_by_default(as_account(
            OWNER,
            GetEbsEncryptionByDefaultRequest { dry_run: true },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("DryRunOperation")
    );
    s.stop().await;
}
