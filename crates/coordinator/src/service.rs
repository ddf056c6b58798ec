//! The `amisim.v1.Coordinator` gRPC service (`coordinator.proto`): global reads, digests and
//! projection status, answered from the [`Projection`]'s snapshots.
//!
//! Every call follows the same steps: the caller's account (`x-amisim-account`, as on a region
//! node), the consistency token (field, else the `x-amisim-consistency-token` metadata a region
//! node returned), the deadline (`grpc-timeout`, default 5 s), then
//! [`Projection::wait_for`] — which returns at once when there is no token — and the answer
//! from that one immutable snapshot. Waiting never blocks the followers.
//!
//! The deadline reply is ours, not the transport's: tonic cancels a call when its
//! `grpc-timeout` expires (`CANCELLED: Timeout expired`), so the wait ends a little earlier
//! ([`wait_budget`]) and answers DEADLINE_EXCEEDED naming the token and what was applied.
//!
//! Global Describe semantics live in [`global_read`]; this module is the gRPC edge. Like every
//! amisim server, [`serve_coordinator`] never binds: it takes a listener and a shutdown future.
//! To mount the service next to others (the gateway), use [`CoordinatorService::into_server`].

pub mod copies;
pub mod global_read;
pub mod shared;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amisim_core::{ids, Ec2Error, ErrorClass, ErrorCode};
use amisim_proto::coordinator_server::{Coordinator, CoordinatorServer};
use amisim_proto::{
    DescribeGlobalImagesRequest, DescribeGlobalImagesResponse, DescribeGlobalSnapshotsRequest,
    DescribeGlobalSnapshotsResponse, GetGlobalStateDigestRequest, GetGlobalStateDigestResponse,
    GetProjectionStatusRequest, GetProjectionStatusResponse, ListCopiesRequest, ListCopiesResponse,
    RegionDigest, RegionProjectionStatus, SagaDriverStatus,
};
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::follower::FollowerMonitor;
use crate::gateway::{ERROR_CODE_HEADER, REQUEST_ID_HEADER};
use crate::projection::{ConsistencyToken, Projection, ProjectionSnapshot, WaitError};
use crate::saga::SagaMonitor;

/// Request metadata: the caller's 12-digit account.
pub const ACCOUNT_HEADER: &str = "x-amisim-account";
/// The account of a request without `x-amisim-account`.
pub const DEFAULT_ACCOUNT: &str = "123456789012";
/// Request metadata a client may echo from a region's write answer: `region:seq`.
pub const CONSISTENCY_TOKEN_HEADER: &str = "x-amisim-consistency-token";
/// How long a read may wait for its token when the client sets no deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// The most the coordinator keeps of a deadline for sending its own DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);
/// How long ListCopies waits for a destination node's clock before using its log's latest time.
const CLOCK_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Why the coordinator service could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read the descriptor set (a build problem).
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed (the listener broke, ...).
    #[error("coordinator server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The `Coordinator` service over a projection (and, if given, its followers' status).
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    projection: Arc<Projection>,
    followers: Option<FollowerMonitor>,
    sagas: Option<SagaMonitor>,
    default_deadline: Duration,
    /// The accounts file: bearer-token authentication and organization membership
    /// ([`shared`]).
    accounts: Option<Arc<amisim_core::Accounts>>,
}

impl CoordinatorService {
    /// Reads from `projection`. Without [`CoordinatorService::with_followers`],
    /// `GetProjectionStatus` reports every region as not connected.
    pub fn new(projection: Arc<Projection>) -> Self {
        CoordinatorService {
            projection,
            followers: None,
            sagas: None,
            default_deadline: DEFAULT_DEADLINE,
            accounts: None,
        }
    }

    /// Authenticates every call with `authorization: Bearer <token>` of these accounts
    /// (`x-amisim-account` is then ignored) and resolves org/OU launch permissions with their
    /// organization membership.
    pub fn with_accounts(mut self, accounts: Arc<amisim_core::Accounts>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// Reports the followers' link status in `GetProjectionStatus`.
    pub fn with_followers(mut self, followers: FollowerMonitor) -> Self {
        self.followers = Some(followers);
        self
    }

    /// Reports the saga driver's work in `ListCopies` (and asks the destination nodes for their
    /// clocks, through the driver's routes, for progress figures).
    pub fn with_sagas(mut self, sagas: SagaMonitor) -> Self {
        self.sagas = Some(sagas);
        self
    }

    /// The wait bound of calls without a `grpc-timeout` (default [`DEFAULT_DEADLINE`]).
    pub fn with_default_deadline(mut self, deadline: Duration) -> Self {
        self.default_deadline = deadline;
        self
    }

    /// The tonic server wrapper, to `add_service` next to other services.
    pub fn into_server(self) -> CoordinatorServer<Self> {
        CoordinatorServer::new(self)
    }

    /// Account, request id, token, deadline; then the wait. Returns the snapshot to answer from.
    async fn prepare(
        &self,
        md: &MetadataMap,
        token_field: &str,
        call: &Call,
    ) -> Result<Arc<ProjectionSnapshot>, Status> {
        let token = token_from(token_field, md).map_err(|e| call.fail(e))?;
        let budget = wait_budget(md, self.default_deadline);
        match self
            .projection
            .wait_for(&token, Instant::now() + budget)
            .await
        {
            Ok(snap) => Ok(snap),
            Err(WaitError::UnknownRegion { .. }) => Err(call.fail(Failure::new(
                Code::InvalidArgument,
                "InvalidRegion",
                wait_message(&token, &self.projection),
            ))),
            Err(e @ WaitError::Deadline { .. }) => {
                tracing::info!(token = %token, "consistency token not reached before the deadline");
                Err(call.fail(Failure::new(
                    Code::DeadlineExceeded,
                    "ConsistencyTimeout",
                    e.to_string(),
                )))
            }
        }
    }
}

/// The message for a token naming an unfollowed region.
fn wait_message(token: &ConsistencyToken, projection: &Projection) -> String {
    let followed = projection.regions();
    let unknown: Vec<&str> = token
        .iter()
        .map(|(r, _)| r)
        .filter(|r| !followed.iter().any(|f| f == r))
        .collect();
    format!(
        "the consistency token names region(s) {} which this coordinator does not follow; \
         it follows: {}",
        unknown.join(", "),
        followed.join(", ")
    )
}

/// A failure of the coordinator itself, in amisim's error model.
struct Failure {
    code: Code,
    error_code: &'static str,
    message: String,
}

impl Failure {
    fn new(code: Code, error_code: &'static str, message: String) -> Self {
        Failure {
            code,
            error_code,
            message,
        }
    }
}

/// What every call carries into its answers: the request id (echoed, or fresh).
struct Call {
    request_id: String,
}

impl Call {
    fn fail(&self, f: Failure) -> Status {
        tracing::debug!(code = f.error_code, error = %f.message, "request failed");
        error_status(f.code, f.error_code, &f.message, &self.request_id)
    }

    fn ec2(&self, e: &Ec2Error) -> Status {
        if matches!(
            e.code.class(),
            ErrorClass::Internal | ErrorClass::Unavailable
        ) {
            tracing::warn!(code = %e.code, error = %e.message, "request failed");
        } else {
            tracing::debug!(code = %e.code, error = %e.message, "request failed");
        }
        status_from_ec2(e, &self.request_id)
    }

    fn respond<T>(&self, body: T) -> Response<T> {
        let mut r = Response::new(body);
        if let Ok(v) = AsciiMetadataValue::try_from(self.request_id.as_str()) {
            r.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        r
    }
}

/// `Code: message` with the code in `x-amisim-error-code` and the request id.
fn error_status(code: Code, error_code: &'static str, message: &str, request_id: &str) -> Status {
    let mut status = Status::new(code, format!("{error_code}: {message}"));
    let md = status.metadata_mut();
    md.insert(
        ERROR_CODE_HEADER,
        AsciiMetadataValue::from_static(error_code),
    );
    if let Ok(v) = AsciiMetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID_HEADER, v);
    }
    status
}

/// The status of an EC2 error, with the same status codes a region node uses.
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
        ERROR_CODE_HEADER,
        AsciiMetadataValue::from_static(err.code.as_str()),
    );
    if let Ok(v) = AsciiMetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID_HEADER, v);
    }
    status
}

/// The caller's account (default [`DEFAULT_ACCOUNT`]); anything but 12 digits is `AuthFailure`.
pub fn account_from(md: &MetadataMap) -> Result<String, Ec2Error> {
    let Some(v) = md.get(ACCOUNT_HEADER) else {
        return Ok(DEFAULT_ACCOUNT.to_string());
    };
    match v.to_str() {
        Ok(a) if ids::is_account_id(a) => Ok(a.to_string()),
        _ => Err(Ec2Error::new(
            ErrorCode::AuthFailure,
            format!(
                "AWS was not able to validate the provided access credentials: \
                 {ACCOUNT_HEADER} must be a 12-digit account id"
            ),
        )),
    }
}

/// The client's request id if it is 1–128 visible ASCII characters, else a fresh UUID.
fn request_id_from(md: &MetadataMap) -> String {
    md.get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| ids::generate_uuid(&mut rand::rng()))
}

/// The token of a call: the field, else the metadata, else none.
fn token_from(field: &str, md: &MetadataMap) -> Result<ConsistencyToken, Failure> {
    let text = if field.trim().is_empty() {
        match md.get(CONSISTENCY_TOKEN_HEADER) {
            None => return Ok(ConsistencyToken::new()),
            Some(v) => v.to_str().map_err(|_| {
                Failure::new(
                    Code::InvalidArgument,
                    "InvalidConsistencyToken",
                    format!("{CONSISTENCY_TOKEN_HEADER} is not ASCII text"),
                )
            })?,
        }
    } else {
        field
    };
    ConsistencyToken::parse(text).map_err(|e| {
        Failure::new(
            Code::InvalidArgument,
            "InvalidConsistencyToken",
            e.to_string(),
        )
    })
}

/// The `grpc-timeout` of a call (gRPC over HTTP/2: up to 8 digits and a unit `HMSmun`).
fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long a call may wait for its token: its deadline (or `default`) less a margin of at most
/// 250 ms and at most 10 %, left to deliver the DEADLINE_EXCEEDED answer before the transport
/// cancels the call.
pub fn wait_budget(md: &MetadataMap, default: Duration) -> Duration {
    let total = grpc_timeout(md).unwrap_or(default);
    total.saturating_sub((total / 10).min(DEADLINE_MARGIN))
}

/// The regions a call reads: all followed when `wanted` is empty; sorted, without repeats.
fn select_regions(
    wanted: &[String],
    snap: &ProjectionSnapshot,
    call: &Call,
) -> Result<Vec<String>, Status> {
    let followed: Vec<String> = snap.regions().map(|(r, _)| r.to_string()).collect();
    if wanted.is_empty() {
        return Ok(followed);
    }
    let mut out: Vec<String> = Vec::new();
    for r in wanted {
        let r = r.trim();
        if !followed.iter().any(|f| f == r) {
            return Err(call.fail(Failure::new(
                Code::InvalidArgument,
                "InvalidRegion",
                format!(
                    "region '{r}' is not followed by this coordinator; it follows: {}",
                    followed.join(", ")
                ),
            )));
        }
        if !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn span(rpc: &'static str, md: &MetadataMap, request_id: &str) -> tracing::Span {
    let account = md
        .get(ACCOUNT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_ACCOUNT);
    tracing::info_span!("coordinator", rpc, account = %account, request_id = %request_id)
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn describe_global_images(
        &self,
        request: Request<DescribeGlobalImagesRequest>,
    ) -> Result<Response<DescribeGlobalImagesResponse>, Status> {
        let call = Call {
            request_id: request_id_from(request.metadata()),
        };
        let span = span("DescribeGlobalImages", request.metadata(), &call.request_id);
        async move {
            let account = self.caller(request.metadata()).map_err(|e| call.ec2(&e))?;
            let (md, _, body) = request.into_parts();
            let describe = body.describe.unwrap_or_default();
            // Everything that can fail without the projection fails before any wait.
            let regions = select_regions(&body.regions, &self.projection.snapshot(), &call)?;
            global_read::check_images(&account, &describe).map_err(|e| call.ec2(&e))?;
            let snap = self.prepare(&md, &body.consistency_token, &call).await?;
            tracing::debug!(regions = %regions.join(","), "describing images");
            let (images, next_token) = global_read::describe_images_with(
                &snap,
                &regions,
                &account,
                self.membership(),
                describe,
            )
            .map_err(|e| call.ec2(&e))?;
            Ok(call.respond(DescribeGlobalImagesResponse {
                images,
                next_token,
                consistency_token: snap.applied().to_string(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn describe_global_snapshots(
        &self,
        request: Request<DescribeGlobalSnapshotsRequest>,
    ) -> Result<Response<DescribeGlobalSnapshotsResponse>, Status> {
        let call = Call {
            request_id: request_id_from(request.metadata()),
        };
        let span = span(
            "DescribeGlobalSnapshots",
            request.metadata(),
            &call.request_id,
        );
        async move {
            let account = self.caller(request.metadata()).map_err(|e| call.ec2(&e))?;
            let (md, _, body) = request.into_parts();
            let describe = body.describe.unwrap_or_default();
            // Everything that can fail without the projection fails before any wait.
            let regions = select_regions(&body.regions, &self.projection.snapshot(), &call)?;
            global_read::check_snapshots(&account, &describe).map_err(|e| call.ec2(&e))?;
            let snap = self.prepare(&md, &body.consistency_token, &call).await?;
            tracing::debug!(regions = %regions.join(","), "describing snapshots");
            let (snapshots, next_token) = global_read::describe_snapshots_with(
                &snap,
                &regions,
                &account,
                self.membership(),
                describe,
            )
            .map_err(|e| call.ec2(&e))?;
            Ok(call.respond(DescribeGlobalSnapshotsResponse {
                snapshots,
                next_token,
                consistency_token: snap.applied().to_string(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn get_state_digest(
        &self,
        request: Request<GetGlobalStateDigestRequest>,
    ) -> Result<Response<GetGlobalStateDigestResponse>, Status> {
        let call = Call {
            request_id: request_id_from(request.metadata()),
        };
        let span = span("GetStateDigest", request.metadata(), &call.request_id);
        async move {
            self.check_token(request.metadata())
                .map_err(|e| call.ec2(&e))?;
            let (md, _, body) = request.into_parts();
            let regions = select_regions(&body.regions, &self.projection.snapshot(), &call)?;
            let snap = self.prepare(&md, &body.consistency_token, &call).await?;
            // Hashing big states is CPU work: off the async workers.
            let work = tokio::task::spawn_blocking(move || {
                regions
                    .iter()
                    .filter_map(|r| {
                        snap.region(r).map(|s| RegionDigest {
                            region: r.clone(),
                            seq: s.applied_seq,
                            digest: s.state.digest(),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            match work.await {
                Ok(regions) => Ok(call.respond(GetGlobalStateDigestResponse { regions })),
                Err(e) => Err(call.fail(Failure::new(
                    Code::Internal,
                    "InternalError",
                    format!("digest task failed: {e}"),
                ))),
            }
        }
        .instrument(span)
        .await
    }

    async fn get_projection_status(
        &self,
        request: Request<GetProjectionStatusRequest>,
    ) -> Result<Response<GetProjectionStatusResponse>, Status> {
        let call = Call {
            request_id: request_id_from(request.metadata()),
        };
        self.check_token(request.metadata())
            .map_err(|e| call.ec2(&e))?;
        let snap = self.projection.snapshot();
        let links = self
            .followers
            .as_ref()
            .map(FollowerMonitor::status)
            .unwrap_or_default();
        let regions = snap
            .regions()
            .map(|(region, r)| {
                let link = links.iter().find(|l| l.region == region);
                RegionProjectionStatus {
                    region: region.to_string(),
                    connected: link.is_some_and(|l| l.connected),
                    applied_seq: r.applied_seq,
                    received_seq: r.received_seq,
                    buffered_events: r.buffered as u64,
                    blocked_on: r.blocked_on.clone(),
                    reconnects: link.map_or(0, |l| l.reconnects),
                    last_error: link.and_then(|l| l.last_error.clone()).unwrap_or_default(),
                    head_seq_at_connect: link.map_or(0, |l| l.head_seq_at_connect),
                    foreign_dependencies: r.foreign_dependencies,
                }
            })
            .collect();
        Ok(call.respond(GetProjectionStatusResponse {
            regions,
            consistency_token: snap.applied().to_string(),
        }))
    }

    async fn list_copies(
        &self,
        request: Request<ListCopiesRequest>,
    ) -> Result<Response<ListCopiesResponse>, Status> {
        let call = Call {
            request_id: request_id_from(request.metadata()),
        };
        let span = span("ListCopies", request.metadata(), &call.request_id);
        let only = self
            .copies_scope(request.metadata())
            .map_err(|e| call.ec2(&e))?;
        self.list_copies_impl(request, only, &call)
            .instrument(span)
            .await
    }

    async fn describe_shared_with_account(
        &self,
        request: Request<amisim_proto::DescribeSharedWithAccountRequest>,
    ) -> Result<Response<amisim_proto::DescribeSharedWithAccountResponse>, Status> {
        let call = Call {
            request_id: request_id_from(request.metadata()),
        };
        let span = span(
            "DescribeSharedWithAccount",
            request.metadata(),
            &call.request_id,
        );
        self.describe_shared_impl(request, &call)
            .instrument(span)
            .await
    }
}

impl CoordinatorService {
    /// ListCopies (see `coordinator.proto`).
    async fn list_copies_impl(
        &self,
        request: Request<ListCopiesRequest>,
        only: Option<String>,
        call: &Call,
    ) -> Result<Response<ListCopiesResponse>, Status> {
        let (md, _, mut body) = request.into_parts();
        if let Some(account) = only {
            body.account_ids = vec![account];
        }
        // Everything that can fail without the projection fails before any wait.
        select_regions(&body.regions, &self.projection.snapshot(), call)?;
        let filter = copies::CopyFilter::new(
            &body.regions,
            &body.phases,
            body.finished_within_ms,
            &body.account_ids,
        )
        .map_err(|e| call.ec2(&e))?;
        let snap = self.prepare(&md, &body.consistency_token, call).await?;
        // The destinations' clocks, asked all at once; a node that does not answer in time
        // counts with the latest sim time of its log.
        let mut now = std::collections::BTreeMap::new();
        if let Some(sagas) = &self.sagas {
            let probes = copies::destinations(&snap, &filter).into_iter().map(|r| {
                let sagas = sagas.clone();
                async move {
                    let t = sagas.region_now_ms(&r, CLOCK_PROBE_TIMEOUT).await;
                    (r, t)
                }
            });
            for (r, t) in futures::future::join_all(probes).await {
                if let Some(t) = t {
                    now.insert(r, t);
                }
            }
        }
        let list = copies::list(&snap, &now, &filter, self.sagas.as_ref());
        tracing::debug!(copies = list.len(), "listing copies");
        let saga_driver = self.sagas.as_ref().map(|m| {
            let s = m.status();
            SagaDriverStatus {
                running: s.running,
                active: u32::try_from(s.active.len()).unwrap_or(u32::MAX),
                queued: u32::try_from(s.queued).unwrap_or(u32::MAX),
                steps_sent: s.steps_sent,
                step_failures: s.step_failures,
                copies_driven: s.copies_driven,
            }
        });
        Ok(call.respond(ListCopiesResponse {
            copies: list,
            consistency_token: snap.applied().to_string(),
            saga_driver: Some(saga_driver.unwrap_or_default()),
        }))
    }
}

/// Serves the `Coordinator` service alone, with gRPC health (`""` and `amisim.v1.Coordinator`)
/// and server reflection, on `listener` until `shutdown` completes. To serve it next to the
/// gateway on one port, add [`CoordinatorService::into_server`] to that server instead.
pub async fn serve_coordinator(
    service: CoordinatorService,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, regions = %service.projection.regions().join(","), "coordinator service serving");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: without it small responses wait ~40 ms for delayed ACKs.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn the_wait_budget_leaves_room_for_the_answer() {
        assert_eq!(
            wait_budget(&md(&[]), Duration::from_secs(5)),
            Duration::from_millis(4750)
        );
        assert_eq!(
            wait_budget(&md(&[("grpc-timeout", "1000m")]), DEFAULT_DEADLINE),
            Duration::from_millis(900)
        );
        assert_eq!(
            wait_budget(&md(&[("grpc-timeout", "2S")]), DEFAULT_DEADLINE),
            Duration::from_millis(1800)
        );
        assert_eq!(
            wait_budget(&md(&[("grpc-timeout", "bogus")]), Duration::from_secs(1)),
            Duration::from_millis(900)
        );
    }

    #[test]
    fn the_token_comes_from_the_field_or_the_metadata() {
        let m = md(&[(CONSISTENCY_TOKEN_HEADER, "us-east-1:4")]);
        assert_eq!(token_from("", &m).ok().map(|t| t.get("us-east-1")), Some(4));
        assert_eq!(
            token_from("us-east-1:9", &m)
                .ok()
                .map(|t| t.get("us-east-1")),
            Some(9)
        );
        assert!(token_from("", &md(&[])).ok().is_some_and(|t| t.is_empty()));
        assert!(token_from("nope", &m).is_err());
    }

    #[test]
    fn accounts_are_checked_like_a_region_node() {
        assert_eq!(
            account_from(&md(&[])).ok().as_deref(),
            Some(DEFAULT_ACCOUNT)
        );
        assert_eq!(
            account_from(&md(&[(ACCOUNT_HEADER, "111122223333")]))
                .ok()
                .as_deref(),
            Some("111122223333")
        );
        let e = account_from(&md(&[(ACCOUNT_HEADER, "root")])).unwrap_err();
        assert_eq!(e.code, ErrorCode::AuthFailure);
        let s = status_from_ec2(&e, "req-1");
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().starts_with("AuthFailure: "));
    }
}
