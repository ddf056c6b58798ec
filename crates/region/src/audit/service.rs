//! The `Audit` gRPC service of a region node (`audit.proto`).
//!
//! The `region` fields the coordinator uses (ADR 0010) are checked here: empty or this node's
//! region, else INVALID_ARGUMENT `InvalidRegion`. A `token` point takes this region's seq.

use std::sync::Arc;

use amisim_core::{Answer, Query, ReadCtx};
use amisim_proto::audit_server::Audit;
use amisim_proto::{
    AuditStreamRequest, DescribeImagesAsOfRequest, DescribeImagesAsOfResponse,
    DescribeSnapshotsAsOfRequest, DescribeSnapshotsAsOfResponse, GetPublicKeyRequest,
    GetPublicKeyResponse, ListDigestsRequest, ListDigestsResponse, LookupEventsRequest,
    LookupEventsResponse, ResolvePointRequest, ResolvePointResponse, VerifyLogRequest,
    VerifyLogResponse,
};
use futures::StreamExt;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::as_of::{first_seq_from, resolve};
use super::digest::REQUESTS_LOG;
use super::lookup::{Lookup, LookupError};
use super::stream::EventFilter;
use super::time::Point;
use super::{verify_log, verify_log_of, AuditError, VerifyReport};
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
        // The request log's digests (ADR 0006/0007): the trail's request signer, bound to the
        // recorder here because both are attached to the node before it is served.
        if let (Some(signer), Some(recorder)) =
            (node.audit().request_signer().cloned(), node.requests())
        {
            recorder.attach_signer(signer);
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

    /// Refuses a request that names another region than this node's.
    fn check_region(&self, region: &str) -> Result<(), Status> {
        let region = region.trim();
        if region.is_empty() || region == self.node.region() {
            return Ok(());
        }
        Err(coded(
            tonic::Code::InvalidArgument,
            "InvalidRegion",
            format!(
                "this node serves region {}, not {region:?} (ask the coordinator for other \
                 regions)",
                self.node.region()
            ),
        ))
    }

    /// The point of a request as this node reads it (a token point: this region's seq).
    fn point(&self, as_of: Option<&amisim_proto::AsOf>, default: Point) -> Result<Point, Status> {
        Point::from_proto_for(as_of, default, self.node.region())
            .map_err(|e| coded(tonic::Code::InvalidArgument, "InvalidParameterValue", e))
    }

    /// A point-in-time read: the caller's account, the state just after `as_of`, the query.
    async fn read_as_of<Req>(
        &self,
        request: Request<Req>,
        split: fn(Req) -> (Option<amisim_proto::AsOf>, String, Query),
    ) -> Result<(u64, u64, Answer), Status> {
        let request_id = request_id_from_metadata(request.metadata());
        // The caller is the operator (ADR 0009: with an accounts file `serve` lets only its
        // token in; checked here again for a service mounted without that gate); the account
        // whose view is read is `x-amisim-account`.
        let account = check_operator(request.metadata(), self.node.accounts().map(|a| &**a))
            .and_then(|()| account_from_metadata(request.metadata()))
            .map_err(|e| status_from_ec2(&e, &request_id))?;
        let (as_of, region, query) = split(request.into_inner());
        self.check_region(&region)?;
        let point = self.point(as_of.as_ref(), Point::Seq(u64::MAX))?;
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
        request: Request<VerifyLogRequest>,
    ) -> Result<Response<VerifyLogResponse>, Status> {
        self.check_region(&request.get_ref().region)?;
        // The request log: every call answered so far written, and its head signed (flush),
        // then its digests read before its chain (as for the state log below).
        let request_log = match self.node.requests() {
            Some(recorder) => {
                recorder.flush().await;
                let log = recorder.log();
                let signer = recorder.signer().cloned();
                let report = Self::blocking(move || {
                    let (digests, key) = match &signer {
                        Some(s) => (s.digests()?, Some(s.verifying_key())),
                        None => (Vec::new(), None),
                    };
                    let mut report =
                        verify_log_of(log.as_ref(), &digests, key.as_ref(), REQUESTS_LOG)?;
                    if let Some(why) = signer.as_ref().and_then(|s| s.failure()) {
                        if report.ok {
                            report.reason =
                                format!("the log verifies, but signing digests failed: {why}");
                        }
                    }
                    Ok(report)
                })
                .await?;
                Some(report_proto(self.node.region(), &report))
            }
            None => None,
        };
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
            first_bad_seq = report.first_bad_seq.unwrap_or(0),
            request_log_ok = request_log.as_ref().map(|r| r.ok),
            request_log_first_bad_seq = request_log.as_ref().map_or(0, |r| r.first_bad_seq),
            "log verified");
        let mut answer = report_proto(&region, &report);
        answer.request_log = request_log.map(Box::new);
        Ok(Response::new(answer))
    }

    async fn get_public_key(
        &self,
        request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        self.check_region(&request.get_ref().region)?;
        let trail = self.node.audit();
        Ok(Response::new(GetPublicKeyResponse {
            region: self.node.region().to_string(),
            public_key: trail
                .signer()
                .map(|s| s.public_key_hex().to_string())
                .unwrap_or_default(),
            digest_every: trail.signer().map(|s| s.every()).unwrap_or(0),
            regions: Vec::new(),
        }))
    }

    async fn list_digests(
        &self,
        request: Request<ListDigestsRequest>,
    ) -> Result<Response<ListDigestsResponse>, Status> {
        let r = request.into_inner();
        self.check_region(&r.region)?;
        let signer = match r.log.trim() {
            "" => self.node.audit().signer().cloned(),
            REQUESTS_LOG => self.node.requests().and_then(|rec| rec.signer().cloned()),
            other => {
                return Err(coded(
                    tonic::Code::InvalidArgument,
                    "InvalidParameterValue",
                    format!("log must be empty (the state log) or \"requests\", not {other:?}"),
                ))
            }
        };
        let digests = Self::blocking(move || match signer {
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
        self.check_region(&r.region)?;
        let filter = EventFilter::new(&r.event_types, &r.resource_id, &r.account_id);
        let token_start = matches!(
            r.from.as_ref().and_then(|a| a.point.as_ref()),
            Some(amisim_proto::as_of::Point::Token(_))
        );
        let point = match r.from_seqs.get(self.node.region()) {
            Some(seq) => Point::Seq(*seq),
            // A token is a point already seen: the stream starts after it.
            None => match self.point(r.from.as_ref(), Point::Seq(1))? {
                Point::Seq(s) if token_start => Point::Seq(s.saturating_add(1)),
                p => p,
            },
        };
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
                    r.region,
                    Query::DescribeImages(r.request.unwrap_or_default()),
                )
            })
            .await?;
        match answer {
            Answer::DescribeImages(response) => Ok(Response::new(DescribeImagesAsOfResponse {
                seq,
                sim_time_ms,
                response: Some(response),
                ..Default::default()
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
                    r.region,
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
                    ..Default::default()
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
        self.check_region(&r.region)?;
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
        // Retention (EC2_SEMANTICS §9: 90 days of event history): nothing older than the
        // window before the node's simulated now; an older start is clamped to it.
        let retention = u64::try_from(recorder.retention().as_millis()).unwrap_or(u64::MAX);
        let lookup = lookup.with_floor(Some(self.node.now_ms().saturating_sub(retention)));
        // [sim] Delivery is immediate: every call answered before this lookup is visible.
        recorder.flush().await;
        let (requests, state) = (recorder.log(), self.node.log());
        let outcome = tokio::task::spawn_blocking(move || {
            let found = lookup.run(requests.as_ref(), Some(state.as_ref()));
            found.map(|(records, next)| {
                let events = records
                    .iter()
                    .map(|r| {
                        let mut e = r.to_proto();
                        e.position = lookup.token(r);
                        e
                    })
                    .collect::<Vec<_>>();
                (events, next)
            })
        })
        .await
        .map_err(|e| Status::internal(format!("audit task failed: {e}")))?;
        let (events, next_token) = outcome.map_err(lookup_status)?;
        Ok(Response::new(LookupEventsResponse {
            events,
            next_token: next_token.unwrap_or_default(),
        }))
    }

    async fn resolve_point(
        &self,
        request: Request<ResolvePointRequest>,
    ) -> Result<Response<ResolvePointResponse>, Status> {
        let r = request.into_inner();
        self.check_region(&r.region)?;
        let unset = r.point.as_ref().and_then(|p| p.point.as_ref()).is_none();
        let point = self.point(r.point.as_ref(), Point::Seq(u64::MAX))?;
        let log = self.node.log();
        let (last_seq, first_seq, head_seq, sim_time_ms) = Self::blocking(move || {
            let head = log.head().seq;
            let last = resolve(log.as_ref(), point)?;
            // Unset: the head, and a stream from it starts after it.
            let first = if unset {
                head + 1
            } else {
                first_seq_from(log.as_ref(), point)?
            };
            let time = match last {
                0 => 0,
                s => log.read_range(s, s)?.first().map_or(0, |e| e.sim_time_ms),
            };
            Ok((last, first, head, time))
        })
        .await?;
        Ok(Response::new(ResolvePointResponse {
            region: self.node.region().to_string(),
            last_seq,
            first_seq,
            head_seq,
            sim_time_ms,
        }))
    }
}

/// A verification report as the protobuf answer.
fn report_proto(region: &str, report: &VerifyReport) -> VerifyLogResponse {
    VerifyLogResponse {
        region: region.to_string(),
        ok: report.ok,
        head_seq: report.head.seq,
        head_hash: hex::encode(report.head.hash),
        first_bad_seq: report.first_bad_seq.unwrap_or(0),
        reason: report.reason.clone(),
        digests_checked: report.digests_checked,
        last_digest_seq: report.last_digest_seq,
        ..Default::default()
    }
}

/// A status with amisim's error code in `x-amisim-error-code` and the message prefixed by it.
fn coded(code: tonic::Code, error_code: &'static str, message: String) -> Status {
    let mut status = Status::new(code, format!("{error_code}: {message}"));
    status.metadata_mut().insert(
        crate::ERROR_CODE_KEY,
        tonic::metadata::AsciiMetadataValue::from_static(error_code),
    );
    status
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
