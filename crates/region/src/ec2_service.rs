//! The public `Ec2` gRPC service of one region: each RPC becomes a [`Command`] (writes, through
//! the writer) or a [`Query`] (reads, from the published state), with the metadata conventions
//! of `ec2.proto` and the error mapping of DESIGN.md §7.

use std::sync::Arc;

use amisim_core::{ids, Accounts, Answer, Command, Ec2Error, ErrorClass, ErrorCode, Query, Reply};
use amisim_proto::ec2_server::Ec2;
use amisim_proto::*;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::audit::requests::{ApiCall, Params, RequestRecorder};
use crate::RegionNode;

/// Request metadata: the caller's 12-digit account (without an accounts file).
pub const ACCOUNT_KEY: &str = "x-amisim-account";
/// Request metadata: `Bearer <token>` (with an accounts file; then the only credential).
pub const AUTHORIZATION_KEY: &str = "authorization";
/// Request and response metadata: the EC2 RequestId.
pub const REQUEST_ID_KEY: &str = "x-amisim-request-id";
/// Response metadata of writes: `<region>:<seq>` of the last event the call wrote.
pub const CONSISTENCY_TOKEN_KEY: &str = "x-amisim-consistency-token";
/// Error metadata: the exact EC2 error code.
pub const ERROR_CODE_KEY: &str = "x-amisim-error-code";
/// Request metadata set by the coordinator's gateway on a call it forwards: the address of the
/// client that made it (the node sees the gateway's), for the record's `sourceIPAddress`.
pub const SOURCE_IP_KEY: &str = "x-amisim-source-ip";
/// Request metadata set by the gateway next to [`SOURCE_IP_KEY`]: the client's `user-agent`
/// (the gateway's own channel appends its name to the header it forwards).
pub const FORWARDED_USER_AGENT_KEY: &str = "x-amisim-user-agent";
/// Request metadata set by the gateway next to [`SOURCE_IP_KEY`]: `Bearer <operator token>`
/// (with an accounts file), so a client cannot pass an address of its choosing.
pub const FORWARDED_BY_KEY: &str = "x-amisim-forwarded-by";
/// The account of a request without `x-amisim-account`.
pub const DEFAULT_ACCOUNT: &str = "123456789012";
/// A client-chosen request id longer than this is replaced by a fresh one.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The gRPC status of an EC2 error: the code's class as status code, `Code: message` as the
/// message, and the metadata `x-amisim-error-code` (the bare code) and `x-amisim-request-id`.
pub fn status_from_ec2(err: &Ec2Error, request_id: &str) -> Status {
    let code = match err.code.class() {
        ErrorClass::Unauthenticated => Code::Unauthenticated,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
        ErrorClass::InvalidArgument => Code::InvalidArgument,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::AlreadyExists => Code::AlreadyExists,
        ErrorClass::FailedPrecondition => Code::FailedPrecondition,
        ErrorClass::ResourceExhausted => Code::ResourceExhausted,
        ErrorClass::Internal => Code::Internal,
        ErrorClass::Unavailable => Code::Unavailable,
    };
    let mut status = Status::new(code, err.to_string());
    let md = status.metadata_mut();
    md.insert(
        ERROR_CODE_KEY,
        AsciiMetadataValue::from_static(err.code.as_str()),
    );
    if let Ok(v) = AsciiMetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID_KEY, v);
    }
    status
}

/// The caller's account from `x-amisim-account` (default [`DEFAULT_ACCOUNT`]); anything but 12
/// digits is `AuthFailure`.
pub fn account_from_metadata(md: &MetadataMap) -> Result<String, Ec2Error> {
    let Some(v) = md.get(ACCOUNT_KEY) else {
        return Ok(DEFAULT_ACCOUNT.to_string());
    };
    match v.to_str() {
        Ok(a) if ids::is_account_id(a) => Ok(a.to_string()),
        _ => Err(Ec2Error::new(
            ErrorCode::AuthFailure,
            format!(
                "AWS was not able to validate the provided access credentials: \
                 {ACCOUNT_KEY} must be a 12-digit account id"
            ),
        )),
    }
}

/// The caller's account (DESIGN.md §7): with an accounts file only from `authorization: Bearer
/// <token>` (missing, malformed or unknown → `AuthFailure`; `x-amisim-account` is ignored),
/// else from [`account_from_metadata`].
pub fn authenticate(md: &MetadataMap, accounts: Option<&Accounts>) -> Result<String, Ec2Error> {
    match accounts {
        None => account_from_metadata(md),
        Some(accounts) => {
            let header = md.get(AUTHORIZATION_KEY).and_then(|v| v.to_str().ok());
            accounts.authenticate_header(header).map(str::to_string)
        }
    }
}

/// The request id from `x-amisim-request-id` if it is 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII
/// characters, else a fresh UUID.
pub fn request_id_from_metadata(md: &MetadataMap) -> String {
    request_id_or(md, || ids::generate_uuid(&mut rand::rng()))
}

/// Who made a call the gateway forwarded: the client's address and `user-agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub source_ip: String,
    pub user_agent: Option<String>,
}

/// The client a gateway forwarded the call for ([`SOURCE_IP_KEY`],
/// [`FORWARDED_USER_AGENT_KEY`]), if the address is an IP address and comes from the gateway:
/// with an accounts file the call must carry the operator token in [`FORWARDED_BY_KEY`];
/// without one every caller is trusted with what it claims anyway (its account too), so the
/// client is taken as given.
pub fn forwarded(md: &MetadataMap, accounts: Option<&Accounts>) -> Option<Forwarded> {
    let ip: std::net::IpAddr = md.get(SOURCE_IP_KEY)?.to_str().ok()?.trim().parse().ok()?;
    if let Some(accounts) = accounts {
        let by = md.get(FORWARDED_BY_KEY).and_then(|v| v.to_str().ok());
        accounts.authenticate_operator_header(by).ok()?;
    }
    Some(Forwarded {
        source_ip: ip.to_string(),
        user_agent: md
            .get(FORWARDED_USER_AGENT_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    })
}

/// The request id from `x-amisim-request-id` as in [`request_id_from_metadata`], else
/// `fresh()` (a node's writes draw it from the node's seeded stream).
pub fn request_id_or(md: &MetadataMap, fresh: impl FnOnce() -> String) -> String {
    md.get(REQUEST_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(fresh)
}

/// The consistency token of a write: `<region>:<seq>`.
pub fn consistency_token(region: &str, seq: u64) -> String {
    format!("{region}:{seq}")
}

/// Parses `<region>:<seq>`.
pub fn parse_consistency_token(token: &str) -> Option<(&str, u64)> {
    let (region, seq) = token.rsplit_once(':')?;
    Some((region, seq.parse().ok()?)).filter(|(r, _)| !r.is_empty())
}

/// The `Ec2` service of one region node.
#[derive(Debug, Clone)]
pub struct Ec2Service {
    node: Arc<RegionNode>,
    /// The `eventSource` of its request records (the Kms service reuses these helpers).
    event_source: &'static str,
}

impl Ec2Service {
    pub fn new(node: Arc<RegionNode>) -> Self {
        Ec2Service {
            node,
            event_source: crate::audit::requests::EC2_SOURCE,
        }
    }

    /// The same calls, recorded with another `eventSource` (e.g. `kms.amazonaws.com`).
    pub fn with_event_source(mut self, event_source: &'static str) -> Self {
        self.event_source = event_source;
        self
    }

    /// The request record of a call, up to its outcome (ADR 0007); `None` when the call is not
    /// recorded (a read with `--record-reads false`, or no recorder).
    fn begin_record<Req: serde::Serialize + prost::Message + Clone + Send + Sync + 'static>(
        &self,
        request: &Request<Req>,
        account: &Result<String, Ec2Error>,
        request_id: &str,
        read_only: bool,
    ) -> Option<(Arc<RequestRecorder>, ApiCall)> {
        let recorder = self.node.requests()?;
        if read_only && !recorder.record_reads() {
            return None;
        }
        let md = request.metadata();
        let claimed_account = match (account, self.node.accounts()) {
            (Err(_), None) => md
                .get(ACCOUNT_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(ApiCall::claim),
            _ => None,
        };
        let via_gateway = forwarded(md, self.node.accounts().map(|a| &**a));
        let call = ApiCall {
            event_source: self.event_source,
            read_only,
            account_id: account.as_ref().ok().cloned(),
            claimed_account,
            request_id: request_id.to_string(),
            // The client: as the gateway forwarded it, else the peer.
            source_ip: match &via_gateway {
                Some(f) => Some(f.source_ip.clone()),
                None => request.remote_addr().map(|a| a.ip().to_string()),
            },
            user_agent: match via_gateway {
                Some(f) => f.user_agent,
                None => md
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
            // A copy, rendered as JSON on the recorder's thread.
            request_parameters: Params::message(request.get_ref().clone()),
            ..ApiCall::default()
        };
        Some((recorder, call))
    }

    /// Completes a record with the call's outcome and queues it (never waits).
    fn end_record(
        &self,
        record: Option<(Arc<RequestRecorder>, ApiCall)>,
        action: &'static str,
        outcome: Result<Option<Params>, &Ec2Error>,
    ) {
        let Some((recorder, mut call)) = record else {
            return;
        };
        call.event_name = action;
        call.time_ms = self.node.now_ms();
        match outcome {
            Ok(response) => call.response_elements = response,
            Err(e) => call.error = Some((e.code.as_str().to_string(), e.message.clone())),
        }
        recorder.record(call);
    }

    /// A write: authentication, the writer, the reply with its request id and consistency token.
    pub(crate) async fn write<
        Req: serde::Serialize + prost::Message + Clone + Send + Sync + 'static,
        Resp: serde::Serialize + prost::Message + Clone + Send + Sync + 'static,
    >(
        &self,
        request: Request<Req>,
        command: fn(Req) -> Command,
        pick: fn(Reply) -> Option<Resp>,
    ) -> Result<Response<Resp>, Status> {
        // Writes put the id into their events: drawn from the node's seed when absent.
        let request_id = request_id_or(request.metadata(), || self.node.fresh_request_id());
        let account = authenticate(request.metadata(), self.node.accounts().map(|a| &**a));
        let record = self.begin_record(&request, &account, &request_id, false);
        let body = request.into_inner();
        let command = command(body);
        let action = command.action();
        let span = request_span(&self.node, account.as_deref().ok(), &request_id, action);
        // Recorded even if the client goes away mid-call (then as `RequestCanceled`).
        let mut record = PendingRecord {
            service: self,
            record,
            action,
        };
        async move {
            let outcome = async {
                let account = account?;
                let (reply, seq) = self.node.execute(&account, &request_id, command).await?;
                let body = pick(reply).ok_or_else(|| mismatch(action))?;
                Ok::<_, Ec2Error>((body, seq))
            }
            .await;
            self.end_record(
                record.record.take(),
                action,
                outcome
                    .as_ref()
                    .map(|(body, _)| Some(Params::message(body.clone()))),
            );
            match outcome {
                Ok((body, seq)) => {
                    tracing::debug!(seq, "request succeeded");
                    let mut response = Response::new(body);
                    let md = response.metadata_mut();
                    insert(md, REQUEST_ID_KEY, &request_id);
                    insert(
                        md,
                        CONSISTENCY_TOKEN_KEY,
                        &consistency_token(self.node.region(), seq),
                    );
                    Ok(response)
                }
                Err(e) => Err(failed(&e, &request_id)),
            }
        }
        .instrument(span)
        .await
    }

    /// A read: authentication, the published state, the answer with its request id.
    pub(crate) fn read<
        Req: serde::Serialize + prost::Message + Clone + Send + Sync + 'static,
        Resp,
    >(
        &self,
        request: Request<Req>,
        query: fn(Req) -> Query,
        pick: fn(Answer) -> Option<Resp>,
        action: &'static str,
    ) -> Result<Response<Resp>, Status> {
        let request_id = request_id_from_metadata(request.metadata());
        let account = authenticate(request.metadata(), self.node.accounts().map(|a| &**a));
        let span = request_span(&self.node, account.as_deref().ok(), &request_id, action);
        let _entered = span.enter();
        let record = self.begin_record(&request, &account, &request_id, true);
        let outcome = account.and_then(|account| {
            let answer = self.node.query(&account, query(request.into_inner()))?;
            pick(answer).ok_or_else(|| mismatch(action))
        });
        // Reads: `responseElements` is null (CloudTrail's rule).
        self.end_record(record, action, outcome.as_ref().map(|_| None));
        match outcome {
            Ok(body) => {
                tracing::debug!("request succeeded");
                let mut response = Response::new(body);
                insert(response.metadata_mut(), REQUEST_ID_KEY, &request_id);
                Ok(response)
            }
            Err(e) => Err(failed(&e, &request_id)),
        }
    }
}

/// The record of a write until its outcome is known. Dropped before that (the client canceled
/// the call, so tonic dropped the handler), it records the call as `RequestCanceled`: the
/// command may still have been decided, which the state log shows.
struct PendingRecord<'a> {
    service: &'a Ec2Service,
    record: Option<(Arc<RequestRecorder>, ApiCall)>,
    action: &'static str,
}

impl Drop for PendingRecord<'_> {
    fn drop(&mut self) {
        if let Some((recorder, mut call)) = self.record.take() {
            call.event_name = self.action;
            call.time_ms = self.service.node.now_ms();
            call.error = Some((
                "RequestCanceled".to_string(),
                "The client canceled the call before its outcome was known; the command may \
                 still have been applied (see the state log)"
                    .to_string(),
            ));
            recorder.record(call);
        }
    }
}

fn request_span(
    node: &RegionNode,
    account: Option<&str>,
    request_id: &str,
    action: &'static str,
) -> tracing::Span {
    tracing::info_span!(
        "ec2",
        region = %node.region(),
        account = account.unwrap_or("-"),
        request_id = %request_id,
        action,
    )
}

fn failed(e: &Ec2Error, request_id: &str) -> Status {
    if matches!(
        e.code.class(),
        ErrorClass::Internal | ErrorClass::Unavailable
    ) {
        tracing::warn!(code = %e.code, error = %e.message, "request failed");
    } else {
        tracing::debug!(code = %e.code, error = %e.message, "request failed");
    }
    status_from_ec2(e, request_id)
}

fn mismatch(action: &str) -> Ec2Error {
    Ec2Error::internal(format!(
        "An internal error has occurred ({action} got a foreign reply)"
    ))
}

/// Sets a response header whose value is new in every response (request id, consistency
/// token). Marked sensitive so HTTP/2 sends it as a literal never indexed: indexing a value that
/// never repeats only churns both ends' HPACK tables (every insert evicts older entries).
fn insert(md: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(mut v) = AsciiMetadataValue::try_from(value) {
        v.set_sensitive(true);
        md.insert(key, v);
    }
}

#[tonic::async_trait]
impl Ec2 for Ec2Service {
    async fn register_image(
        &self,
        request: Request<RegisterImageRequest>,
    ) -> Result<Response<RegisterImageResponse>, Status> {
        self.write(request, Command::RegisterImage, |r| match r {
            Reply::RegisterImage(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn create_image(
        &self,
        request: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        self.write(request, Command::CreateImage, |r| match r {
            Reply::CreateImage(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn deregister_image(
        &self,
        request: Request<DeregisterImageRequest>,
    ) -> Result<Response<DeregisterImageResponse>, Status> {
        self.write(request, Command::DeregisterImage, |r| match r {
            Reply::DeregisterImage(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn describe_images(
        &self,
        request: Request<DescribeImagesRequest>,
    ) -> Result<Response<DescribeImagesResponse>, Status> {
        self.read(
            request,
            Query::DescribeImages,
            |a| match a {
                Answer::DescribeImages(x) => Some(x),
                _ => None,
            },
            "DescribeImages",
        )
    }

    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<Volume>, Status> {
        self.write(request, Command::CreateVolume, |r| match r {
            Reply::CreateVolume(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn describe_volumes(
        &self,
        request: Request<DescribeVolumesRequest>,
    ) -> Result<Response<DescribeVolumesResponse>, Status> {
        self.read(
            request,
            Query::DescribeVolumes,
            |a| match a {
                Answer::DescribeVolumes(x) => Some(x),
                _ => None,
            },
            "DescribeVolumes",
        )
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.write(request, Command::DeleteVolume, |r| match r {
            Reply::DeleteVolume(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn attach_volume(
        &self,
        request: Request<AttachVolumeRequest>,
    ) -> Result<Response<VolumeAttachment>, Status> {
        self.write(request, Command::AttachVolume, |r| match r {
            Reply::AttachVolume(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn detach_volume(
        &self,
        request: Request<DetachVolumeRequest>,
    ) -> Result<Response<VolumeAttachment>, Status> {
        self.write(request, Command::DetachVolume, |r| match r {
            Reply::DetachVolume(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        self.write(request, Command::CreateSnapshot, |r| match r {
            Reply::CreateSnapshot(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn describe_snapshots(
        &self,
        request: Request<DescribeSnapshotsRequest>,
    ) -> Result<Response<DescribeSnapshotsResponse>, Status> {
        self.read(
            request,
            Query::DescribeSnapshots,
            |a| match a {
                Answer::DescribeSnapshots(x) => Some(x),
                _ => None,
            },
            "DescribeSnapshots",
        )
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        self.write(request, Command::DeleteSnapshot, |r| match r {
            Reply::DeleteSnapshot(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn run_instances(
        &self,
        request: Request<RunInstancesRequest>,
    ) -> Result<Response<Reservation>, Status> {
        self.write(request, Command::RunInstances, |r| match r {
            Reply::RunInstances(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn describe_instances(
        &self,
        request: Request<DescribeInstancesRequest>,
    ) -> Result<Response<DescribeInstancesResponse>, Status> {
        self.read(
            request,
            Query::DescribeInstances,
            |a| match a {
                Answer::DescribeInstances(x) => Some(x),
                _ => None,
            },
            "DescribeInstances",
        )
    }

    async fn stop_instances(
        &self,
        request: Request<StopInstancesRequest>,
    ) -> Result<Response<StopInstancesResponse>, Status> {
        self.write(request, Command::StopInstances, |r| match r {
            Reply::StopInstances(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn start_instances(
        &self,
        request: Request<StartInstancesRequest>,
    ) -> Result<Response<StartInstancesResponse>, Status> {
        self.write(request, Command::StartInstances, |r| match r {
            Reply::StartInstances(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn terminate_instances(
        &self,
        request: Request<TerminateInstancesRequest>,
    ) -> Result<Response<TerminateInstancesResponse>, Status> {
        self.write(request, Command::TerminateInstances, |r| match r {
            Reply::TerminateInstances(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn copy_image(
        &self,
        request: Request<CopyImageRequest>,
    ) -> Result<Response<CopyImageResponse>, Status> {
        self.write(request, Command::CopyImage, |r| match r {
            Reply::CopyImage(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn copy_snapshot(
        &self,
        request: Request<CopySnapshotRequest>,
    ) -> Result<Response<CopySnapshotResponse>, Status> {
        self.write(request, Command::CopySnapshot, |r| match r {
            Reply::CopySnapshot(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn create_tags(
        &self,
        request: Request<CreateTagsRequest>,
    ) -> Result<Response<CreateTagsResponse>, Status> {
        self.write(request, Command::CreateTags, |r| match r {
            Reply::CreateTags(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn delete_tags(
        &self,
        request: Request<DeleteTagsRequest>,
    ) -> Result<Response<DeleteTagsResponse>, Status> {
        self.write(request, Command::DeleteTags, |r| match r {
            Reply::DeleteTags(x) => Some(x),
            _ => None,
        })
        .await
    }

    // EBS encryption settings (amisim_core::encryption).

    async fn enable_ebs_encryption_by_default(
        &self,
        request: Request<EnableEbsEncryptionByDefaultRequest>,
    ) -> Result<Response<EnableEbsEncryptionByDefaultResponse>, Status> {
        self.write(
            request,
            Command::EnableEbsEncryptionByDefault,
            |r| match r {
                Reply::EnableEbsEncryptionByDefault(x) => Some(x),
                _ => None,
            },
        )
        .await
    }

    async fn disable_ebs_encryption_by_default(
        &self,
        request: Request<DisableEbsEncryptionByDefaultRequest>,
    ) -> Result<Response<DisableEbsEncryptionByDefaultResponse>, Status> {
        self.write(
            request,
            Command::DisableEbsEncryptionByDefault,
            |r| match r {
                Reply::DisableEbsEncryptionByDefault(x) => Some(x),
                _ => None,
            },
        )
        .await
    }

    async fn get_ebs_encryption_by_default(
        &self,
        request: Request<GetEbsEncryptionByDefaultRequest>,
    ) -> Result<Response<GetEbsEncryptionByDefaultResponse>, Status> {
        self.read(
            request,
            Query::GetEbsEncryptionByDefault,
            |a| match a {
                Answer::GetEbsEncryptionByDefault(x) => Some(x),
                _ => None,
            },
            "GetEbsEncryptionByDefault",
        )
    }

    async fn get_ebs_default_kms_key_id(
        &self,
        request: Request<GetEbsDefaultKmsKeyIdRequest>,
    ) -> Result<Response<GetEbsDefaultKmsKeyIdResponse>, Status> {
        self.read(
            request,
            Query::GetEbsDefaultKmsKeyId,
            |a| match a {
                Answer::GetEbsDefaultKmsKeyId(x) => Some(x),
                _ => None,
            },
            "GetEbsDefaultKmsKeyId",
        )
    }

    async fn modify_ebs_default_kms_key_id(
        &self,
        request: Request<ModifyEbsDefaultKmsKeyIdRequest>,
    ) -> Result<Response<ModifyEbsDefaultKmsKeyIdResponse>, Status> {
        self.write(request, Command::ModifyEbsDefaultKmsKeyId, |r| match r {
            Reply::ModifyEbsDefaultKmsKeyId(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn reset_ebs_default_kms_key_id(
        &self,
        request: Request<ResetEbsDefaultKmsKeyIdRequest>,
    ) -> Result<Response<ResetEbsDefaultKmsKeyIdResponse>, Status> {
        self.write(request, Command::ResetEbsDefaultKmsKeyId, |r| match r {
            Reply::ResetEbsDefaultKmsKeyId(x) => Some(x),
            _ => None,
        })
        .await
    }

    // Sharing (amisim_core::sharing).

    async fn modify_image_attribute(
        &self,
        request: Request<ModifyImageAttributeRequest>,
    ) -> Result<Response<ModifyImageAttributeResponse>, Status> {
        self.write(request, Command::ModifyImageAttribute, |r| match r {
            Reply::ModifyImageAttribute(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn describe_image_attribute(
        &self,
        request: Request<DescribeImageAttributeRequest>,
    ) -> Result<Response<DescribeImageAttributeResponse>, Status> {
        self.read(
            request,
            Query::DescribeImageAttribute,
            |a| match a {
                Answer::DescribeImageAttribute(x) => Some(x),
                _ => None,
            },
            "DescribeImageAttribute",
        )
    }

    async fn reset_image_attribute(
        &self,
        request: Request<ResetImageAttributeRequest>,
    ) -> Result<Response<ResetImageAttributeResponse>, Status> {
        self.write(request, Command::ResetImageAttribute, |r| match r {
            Reply::ResetImageAttribute(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn cancel_image_launch_permission(
        &self,
        request: Request<CancelImageLaunchPermissionRequest>,
    ) -> Result<Response<CancelImageLaunchPermissionResponse>, Status> {
        self.write(request, Command::CancelImageLaunchPermission, |r| match r {
            Reply::CancelImageLaunchPermission(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn enable_image_block_public_access(
        &self,
        request: Request<EnableImageBlockPublicAccessRequest>,
    ) -> Result<Response<EnableImageBlockPublicAccessResponse>, Status> {
        self.write(
            request,
            Command::EnableImageBlockPublicAccess,
            |r| match r {
                Reply::EnableImageBlockPublicAccess(x) => Some(x),
                _ => None,
            },
        )
        .await
    }

    async fn disable_image_block_public_access(
        &self,
        request: Request<DisableImageBlockPublicAccessRequest>,
    ) -> Result<Response<DisableImageBlockPublicAccessResponse>, Status> {
        self.write(
            request,
            Command::DisableImageBlockPublicAccess,
            |r| match r {
                Reply::DisableImageBlockPublicAccess(x) => Some(x),
                _ => None,
            },
        )
        .await
    }

    async fn get_image_block_public_access_state(
        &self,
        request: Request<GetImageBlockPublicAccessStateRequest>,
    ) -> Result<Response<GetImageBlockPublicAccessStateResponse>, Status> {
        self.read(
            request,
            Query::GetImageBlockPublicAccessState,
            |a| match a {
                Answer::GetImageBlockPublicAccessState(x) => Some(x),
                _ => None,
            },
            "GetImageBlockPublicAccessState",
        )
    }

    async fn modify_snapshot_attribute(
        &self,
        request: Request<ModifySnapshotAttributeRequest>,
    ) -> Result<Response<ModifySnapshotAttributeResponse>, Status> {
        self.write(request, Command::ModifySnapshotAttribute, |r| match r {
            Reply::ModifySnapshotAttribute(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn describe_snapshot_attribute(
        &self,
        request: Request<DescribeSnapshotAttributeRequest>,
    ) -> Result<Response<DescribeSnapshotAttributeResponse>, Status> {
        self.read(
            request,
            Query::DescribeSnapshotAttribute,
            |a| match a {
                Answer::DescribeSnapshotAttribute(x) => Some(x),
                _ => None,
            },
            "DescribeSnapshotAttribute",
        )
    }

    async fn reset_snapshot_attribute(
        &self,
        request: Request<ResetSnapshotAttributeRequest>,
    ) -> Result<Response<ResetSnapshotAttributeResponse>, Status> {
        self.write(request, Command::ResetSnapshotAttribute, |r| match r {
            Reply::ResetSnapshotAttribute(x) => Some(x),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client a gateway forwards (address and user agent) is believed without an
    /// accounts file (every claim is), and with one only next to the operator token; never if
    /// the address is not an address.
    #[test]
    fn a_forwarded_client_needs_the_operator_token_when_there_are_tokens() {
        use amisim_core::accounts::{AccountEntry, AccountsFile, OperatorEntry};
        let md = |pairs: &[(&'static str, &str)]| {
            let mut md = MetadataMap::new();
            for (k, v) in pairs {
                md.insert(*k, v.parse().expect("ascii"));
            }
            md
        };
        let accounts = Accounts::from_file(AccountsFile {
            accounts: vec![AccountEntry {
                id: "111122223333".into(),
                token: "tok-owner".into(),
                organization: None,
                ou: None,
            }],
            operator: Some(OperatorEntry {
                token: "op-secret".into(),
            }),
            ..AccountsFile::default()
        })
        .expect("accounts");
        let ip = |m: &MetadataMap, a: Option<&Accounts>| forwarded(m, a).map(|f| f.source_ip);
        let plain = md(&[
            (SOURCE_IP_KEY, "10.1.2.3"),
            (FORWARDED_USER_AGENT_KEY, "grpc-python/1.76"),
        ]);
        assert_eq!(
            forwarded(&plain, None),
            Some(Forwarded {
                source_ip: "10.1.2.3".into(),
                user_agent: Some("grpc-python/1.76".into()),
            })
        );
        assert_eq!(forwarded(&plain, Some(&accounts)), None);
        let by = |token: &str| {
            md(&[
                (SOURCE_IP_KEY, "10.1.2.3"),
                (FORWARDED_BY_KEY, &format!("Bearer {token}")),
            ])
        };
        assert_eq!(
            forwarded(&by("op-secret"), Some(&accounts)),
            Some(Forwarded {
                source_ip: "10.1.2.3".into(),
                user_agent: None,
            }),
            "a client without a user agent stays without one"
        );
        assert_eq!(ip(&by("tok-owner"), Some(&accounts)), None);
        assert_eq!(
            ip(&md(&[(SOURCE_IP_KEY, "::1")]), None).as_deref(),
            Some("::1")
        );
        assert_eq!(ip(&md(&[(SOURCE_IP_KEY, "evil.example")]), None), None);
        assert_eq!(ip(&MetadataMap::new(), None), None);
    }

    #[test]
    fn every_error_class_has_its_status_code_and_metadata() {
        let cases = [
            (ErrorCode::AuthFailure, Code::Unauthenticated),
            (ErrorCode::UnauthorizedOperation, Code::PermissionDenied),
            (ErrorCode::InvalidAmiIdMalformed, Code::InvalidArgument),
            (ErrorCode::InvalidAmiIdNotFound, Code::NotFound),
            (ErrorCode::InvalidAmiNameDuplicate, Code::AlreadyExists),
            (ErrorCode::DryRunOperation, Code::FailedPrecondition),
            (ErrorCode::VolumeLimitExceeded, Code::ResourceExhausted),
            (ErrorCode::InternalError, Code::Internal),
            (ErrorCode::Unavailable, Code::Unavailable),
        ];
        for (code, grpc) in cases {
            let e = Ec2Error::new(code, "because");
            let s = status_from_ec2(&e, "req-1");
            assert_eq!(s.code(), grpc, "{code}");
            assert_eq!(s.message(), format!("{}: because", code.as_str()));
            assert_eq!(
                s.metadata()
                    .get(ERROR_CODE_KEY)
                    .and_then(|v| v.to_str().ok()),
                Some(code.as_str())
            );
            assert_eq!(
                s.metadata()
                    .get(REQUEST_ID_KEY)
                    .and_then(|v| v.to_str().ok()),
                Some("req-1")
            );
        }
    }

    #[test]
    fn per_response_headers_are_never_indexed() {
        let mut md = MetadataMap::new();
        insert(&mut md, CONSISTENCY_TOKEN_KEY, "us-east-1:42");
        let v = md.get(CONSISTENCY_TOKEN_KEY).unwrap();
        assert_eq!(v.to_str().ok(), Some("us-east-1:42"));
        assert!(
            v.is_sensitive(),
            "a value that never repeats is not indexed by HPACK"
        );
        // A value that is not ASCII metadata is left out rather than sent broken.
        insert(&mut md, REQUEST_ID_KEY, "bad\nvalue");
        assert!(md.get(REQUEST_ID_KEY).is_none());
    }

    #[test]
    fn account_defaults_and_must_be_12_digits() {
        let mut md = MetadataMap::new();
        assert_eq!(account_from_metadata(&md).as_deref(), Ok(DEFAULT_ACCOUNT));
        md.insert(ACCOUNT_KEY, AsciiMetadataValue::from_static("111122223333"));
        assert_eq!(account_from_metadata(&md).as_deref(), Ok("111122223333"));
        for bad in ["1234", "11112222333a", "1111222233334", ""] {
            md.insert(ACCOUNT_KEY, AsciiMetadataValue::try_from(bad).unwrap());
            let e = account_from_metadata(&md).unwrap_err();
            assert_eq!(e.code, ErrorCode::AuthFailure, "{bad}");
        }
    }

    #[test]
    fn request_id_is_kept_when_sane_else_fresh() {
        let mut md = MetadataMap::new();
        let fresh = request_id_from_metadata(&md);
        assert_eq!(fresh.len(), 36);
        assert_ne!(fresh, request_id_from_metadata(&md));
        md.insert(REQUEST_ID_KEY, AsciiMetadataValue::from_static("my-req.1"));
        assert_eq!(request_id_from_metadata(&md), "my-req.1");
        md.insert(
            REQUEST_ID_KEY,
            AsciiMetadataValue::try_from("x".repeat(MAX_REQUEST_ID_LEN + 1)).unwrap(),
        );
        assert_eq!(request_id_from_metadata(&md).len(), 36);
        md.insert(REQUEST_ID_KEY, AsciiMetadataValue::from_static("a b"));
        assert_eq!(request_id_from_metadata(&md).len(), 36);
    }

    #[test]
    fn consistency_tokens_round_trip() {
        let t = consistency_token("us-east-1", 42);
        assert_eq!(t, "us-east-1:42");
        assert_eq!(parse_consistency_token(&t), Some(("us-east-1", 42)));
        assert_eq!(parse_consistency_token("us-east-1"), None);
        assert_eq!(parse_consistency_token(":4"), None);
        assert_eq!(parse_consistency_token("us-east-1:x"), None);
    }
}
