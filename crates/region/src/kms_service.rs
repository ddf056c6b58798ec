//! The public `Kms` gRPC service of one region (kms.proto): KMS keys are regional, so each
//! node serves the keys of its own region. Each RPC becomes a [`Command`] or a [`Query`] of
//! `amisim_core::kms` and goes through the same path as the `Ec2` service (authentication,
//! writer, metadata conventions, error mapping: [`Ec2Service`]'s helpers); only the error codes
//! are KMS's own (`NotFoundException`, `KMSInvalidStateException`, …).

use std::sync::Arc;

use amisim_core::{Answer, Command, Query, Reply};
use amisim_proto::kms_server::Kms;
use amisim_proto::*;
use tonic::{Request, Response, Status};

use crate::{Ec2Service, RegionNode};

/// The `Kms` service of one region node.
#[derive(Debug, Clone)]
pub struct KmsService {
    calls: Ec2Service,
}

impl KmsService {
    pub fn new(node: Arc<RegionNode>) -> Self {
        KmsService {
            calls: Ec2Service::new(node).with_event_source(crate::audit::requests::KMS_SOURCE),
        }
    }
}

#[tonic::async_trait]
impl Kms for KmsService {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        self.calls
            .write(request, Command::CreateKey, |r| match r {
                Reply::CreateKey(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn describe_key(
        &self,
        request: Request<DescribeKeyRequest>,
    ) -> Result<Response<DescribeKeyResponse>, Status> {
        self.calls.read(
            request,
            Query::DescribeKey,
            |a| match a {
                Answer::DescribeKey(x) => Some(x),
                _ => None,
            },
            "DescribeKey",
        )
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.calls.read(
            request,
            Query::ListKeys,
            |a| match a {
                Answer::ListKeys(x) => Some(x),
                _ => None,
            },
            "ListKeys",
        )
    }

    async fn create_alias(
        &self,
        request: Request<CreateAliasRequest>,
    ) -> Result<Response<CreateAliasResponse>, Status> {
        self.calls
            .write(request, Command::CreateAlias, |r| match r {
                Reply::CreateAlias(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn list_aliases(
        &self,
        request: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        self.calls.read(
            request,
            Query::ListAliases,
            |a| match a {
                Answer::ListAliases(x) => Some(x),
                _ => None,
            },
            "ListAliases",
        )
    }

    async fn enable_key(
        &self,
        request: Request<EnableKeyRequest>,
    ) -> Result<Response<EnableKeyResponse>, Status> {
        self.calls
            .write(request, Command::EnableKey, |r| match r {
                Reply::EnableKey(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn disable_key(
        &self,
        request: Request<DisableKeyRequest>,
    ) -> Result<Response<DisableKeyResponse>, Status> {
        self.calls
            .write(request, Command::DisableKey, |r| match r {
                Reply::DisableKey(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<ScheduleKeyDeletionRequest>,
    ) -> Result<Response<ScheduleKeyDeletionResponse>, Status> {
        self.calls
            .write(request, Command::ScheduleKeyDeletion, |r| match r {
                Reply::ScheduleKeyDeletion(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<CancelKeyDeletionRequest>,
    ) -> Result<Response<CancelKeyDeletionResponse>, Status> {
        self.calls
            .write(request, Command::CancelKeyDeletion, |r| match r {
                Reply::CancelKeyDeletion(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn put_key_policy(
        &self,
        request: Request<PutKeyPolicyRequest>,
    ) -> Result<Response<PutKeyPolicyResponse>, Status> {
        self.calls
            .write(request, Command::PutKeyPolicy, |r| match r {
                Reply::PutKeyPolicy(x) => Some(x),
                _ => None,
            })
            .await
    }

    async fn get_key_policy(
        &self,
        request: Request<GetKeyPolicyRequest>,
    ) -> Result<Response<GetKeyPolicyResponse>, Status> {
        self.calls.read(
            request,
            Query::GetKeyPolicy,
            |a| match a {
                Answer::GetKeyPolicy(x) => Some(x),
                _ => None,
            },
            "GetKeyPolicy",
        )
    }
}
