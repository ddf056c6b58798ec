//! The `Audit` gRPC service of a region node (`audit.proto`).

use std::sync::Arc;

use amisim_core::{Answer, Query, ReadCtx};
use amisim_proto::audit_server::Audit;
use amisim_proto::{
    AuditStreamRequest, DescribeImagesAsOfRequest, DescribeImagesAsOfResponse,
    DescribeSnapshotsAsOfRequest, DescribeSnapshotsAsOfResponse, GetPublicKeyRequest,
    GetPublicKeyResponse, ListDigestsRequest, ListDigestsResponse, LookupEventsRequest,
    LookupEventsResponse, VerifyLogRequest, VerifyLogResponse,
};
use futures::StreamExt;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::as_of::{first_seq_from, resolve};
use super::lookup::{Lookup, LookupError};
use super::stream::EventFilter;
use super::time::Point;
use super::{verify_log, AuditError};
use crate::ec2_service::{account_from_metadata, request_id_from_metadata, status_from_ec2};
use crate::internal_auth::check_operator;
use crate::region_service::{until_closing, EventStream};
use crate::RegionNode;

/// The `Audit` service of one node.
#[derive(Debug, Clone)]
pub struct AuditService {
    node: Arc<RegionNode>,
    closing: Option<watch::Receiver<bool>>,
}

impl AuditService {
    /// The service of `node`. Inside a Tokio runtime it also folds the log once in the
    /// background, leaving the as-of checkpoints, so the first historical read is fast too.
    pub fn new(node: Arc<RegionNode>) -> Self {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (log, trail, region) = (node.log(), node.audit(), node.region().to_string());
            rt.spawn_blocking(move || {
                let started = std::time::Instant::now();
                match trail.checkpoints().warm(log.as_ref()) {
                    Ok(()) => tracing::debug!(region = %region,
                        checkpoints = trail.checkpoints().len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "as-of checkpoints built"),
                    Err(e) => tracing::warn!(region = %region, error = %e,
                        "cannot build the as-of checkpoints; reads will fold from seq 1"),
                }
            });
        }
        AuditService {
            node,
            closing: None,
        }
    }

    /// Ends every event stream with UNAVAILABLE once `closing` turns true.
    pub fn with_closing(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }

    /// Runs blocking audit work off the async workers.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, Status> {
        match tokio::task::spawn_blocking(f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Status::internal(format!("audit: {e}"))),
            Err(e) => Err(Status::internal(format!("audit task failed: {e}"))),
        }
    }

    /// A point-in-time read: the caller's account, the state just after `as_of`, the query.
    async fn read_as_of<Req>(
        &self,
        request: Request<Req>,
        split: fn(Req) -> (Option<amisim_proto::AsOf>, Query),
    ) -> Result<(u64, u64, Answer), Status> {
        let request_id = request_id_from_metadata(request.metadata());
        // The caller is the operator (ADR 0009: with an accounts file `serve` lets only its
        // token in; checked here again for a service mounted without that gate); the account
        // whose view is read is `x-amisim-account`.
        let account = check_operator(request.metadata(), self.node.accounts().map(|a| &**a))
            .and_then(|()| account_from_metadata(request.metadata()))
            .map_err(|e| status_from_ec2(&e, &request_id))?;
        let (as_of, query) = split(request.into_inner());
        let point = Point::from_proto(as_of.as_ref(), Point::Seq(u64::MAX));
        let log = self.node.log();
        let trail = self.node.audit();
        let state = Self::blocking(move || {
            let seq = resolve(log.as_ref(), point)?;
            Ok(trail.checkpoints().state_at(log.as_ref(), seq)?)
        })
        .await?;
        let ctx = ReadCtx::new(self.node.region(), &account, state.last_sim_time_ms)
            .with_membership(self.node.membership());
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            amisim_core::query(&state, &ctx, query)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(region = %self.node.region(), "the domain panicked answering an as-of read");
            Err(amisim_core::Ec2Error::internal("An internal error has occurred"))
        })
        .map_err(|e| status_from_ec2(&e, &request_id))?;
        Ok((state.seq, state.last_sim_time_ms, answer))
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn verify_log(
        &self,
        _request: Request<VerifyLogRequest>,
    ) -> Result<Response<VerifyLogResponse>, Status> {
        let log = self.node.log();
        let trail = self.node.audit();
        let region = self.node.region().to_string();
        let report = Self::blocking(move || {
            // Digests first: each was signed after its seq was durable (see verify_log).
            let (digests, key) = match trail.signer() {
                Some(s) => (s.digests()?, Some(s.verifying_key())),
                None => (Vec::new(), None),
            };
            let mut report = verify_log(log.as_ref(), &digests, key.as_ref())?;
            if let Some(why) = trail.signer().and_then(|s| s.failure()) {
                if report.ok {
                    report.reason = format!("the log verifies, but signing digests failed: {why}");
                }
            }
            Ok(report)
        })
        .await?;
        tracing::info!(region = %region, ok = report.ok, head_seq = report.head.seq,
            first_bad_seq = report.first_bad_seq.unwrap_or(0), "log verified");
        Ok(Response::new(VerifyLogResponse {
            region,
            ok: report.ok,
            head_seq: report.head.seq,
            head_hash: hex::encode(report.head.hash),
            first_bad_seq: report.first_bad_seq.unwrap_or(0),
            reason: report.reason,
            digests_checked: report.digests_checked,
            last_digest_seq: report.last_digest_seq,
        }))
    }

    async fn get_public_key(
        &self,
        _request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        let trail = self.node.audit();
        Ok(Response::new(GetPublicKeyResponse {
            region: self.node.region().to_string(),
            public_key: trail
                .signer()
                .map(|s| s.public_key_hex().to_string())
                .unwrap_or_default(),
            digest_every: trail.signer().map(|s| s.every()).unwrap_or(0),
        }))
    }

    async fn list_digests(
        &self,
        _request: Request<ListDigestsRequest>,
    ) -> Result<Response<ListDigestsResponse>, Status> {
        let trail = self.node.audit();
        let digests = Self::blocking(move || match trail.signer() {
            Some(s) => s.digests(),
            None => Ok(Vec::new()),
        })
        .await?;
        Ok(Response::new(ListDigestsResponse {
            digests: digests.iter().map(|d| d.to_proto()).collect(),
        }))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<AuditStreamRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let r = request.into_inner();
        let filter = EventFilter::new(&r.event_types, &r.resource_id, &r.account_id);
        let point = Point::from_proto(r.from.as_ref(), Point::Seq(1));
        let log = self.node.log();
        let from = {
            let log = log.clone();
            Self::blocking(move || Ok(first_seq_from(log.as_ref(), point)?)).await?
        };
        tracing::info!(region = %self.node.region(), from_seq = from, follow = r.follow,
            filtered = !filter.is_empty(), "audit event stream opened");
        let stream = amisim_log::tail(log, from, r.follow).filter_map(move |item| {
            let keep = match &item {
                Ok(e) => filter.matches(e),
                Err(_) => true,
            };
            let item = item.map_err(|e| Status::internal(format!("event log: {e}")));
            std::future::ready(keep.then_some(item))
        });
        match self.closing.clone() {
            None => Ok(Response::new(Box::pin(stream))),
            Some(closing) => Ok(Response::new(until_closing(stream, closing))),
        }
    }

    async fn describe_images_as_of(
        &self,
        request: Request<DescribeImagesAsOfRequest>,
    ) -> Result<Response<DescribeImagesAsOfResponse>, Status> {
        let (seq, sim_time_ms, answer) = self
            .read_as_of(request, |r| {
                (
                    r.as_of,
                    Query::DescribeImages(r.request.unwrap_or_default()),
                )
            })
            .await?;
        match answer {
            Answer::DescribeImages(response) => Ok(Response::new(DescribeImagesAsOfResponse {
                seq,
                sim_time_ms,
                response: Some(response),
            })),
            _ => Err(Status::internal("as-of read got a foreign answer")),
        }
    }

    async fn describe_snapshots_as_of(
        &self,
        request: Request<DescribeSnapshotsAsOfRequest>,
    ) -> Result<Response<DescribeSnapshotsAsOfResponse>, Status> {
        let (seq, sim_time_ms, answer) = self
            .read_as_of(request, |r| {
                (
                    r.as_of,
                    Query::DescribeSnapshots(r.request.unwrap_or_default()),
                )
            })
            .await?;
        match answer {
            Answer::DescribeSnapshots(response) => {
                Ok(Response::new(DescribeSnapshotsAsOfResponse {
                    seq,
                    sim_time_ms,
                    response: Some(response),
                }))
            }
            _ => Err(Status::internal("as-of read got a foreign answer")),
        }
    }

    async fn lookup_events(
        &self,
        request: Request<LookupEventsRequest>,
    ) -> Result<Response<LookupEventsResponse>, Status> {
        let r = request.into_inner();
        let attributes: Vec<(String, String)> = r
            .lookup_attributes
            .into_iter()
            .map(|a| (a.attribute_key, a.attribute_value))
            .collect();
        let lookup = Lookup::new(
            &attributes,
            r.start_time_ms,
            r.end_time_ms,
            r.max_results,
            &r.next_token,
        )
        .map_err(lookup_status)?;
        let Some(recorder) = self.node.requests() else {
            return Err(Status::unavailable("the node records no API calls"));
        };
        // [sim] Delivery is immediate: every call answered before this lookup is visible.
        recorder.flush().await;
        let (requests, state) = (recorder.log(), self.node.log());
        let outcome = tokio::task::spawn_blocking(move || {
            lookup.run(requests.as_ref(), Some(state.as_ref()))
        })
        .await
        .map_err(|e| Status::internal(format!("audit task failed: {e}")))?;
        let (records, next_token) = outcome.map_err(lookup_status)?;
        Ok(Response::new(LookupEventsResponse {
            events: records.iter().map(|r| r.to_proto()).collect(),
            next_token: next_token.unwrap_or_default(),
        }))
    }
}

/// A refused lookup: INVALID_ARGUMENT with CloudTrail's code in `x-amisim-error-code`.
fn lookup_status(e: LookupError) -> Status {
    match e.code() {
        Some(code) => {
            let mut status = Status::invalid_argument(e.to_string());
            status.metadata_mut().insert(
                crate::ERROR_CODE_KEY,
                tonic::metadata::AsciiMetadataValue::from_static(code),
            );
            status
        }
        None => Status::internal(format!("audit: {e}")),
    }
}
