//! The `amisim.v1.Audit` service on the coordinator (issue 5, ADR 0010): the auditor's view of
//! every region from the one endpoint a client needs.
//!
//! # Layout
//!
//! - [`merge`] — [`merge::StreamMerge`], the pure causal merge of several regions' event streams
//!   (deterministic ties, closed under `depends_on` without `follow`).
//! - [`filter`] — the stream's server-side filters, applied after the merge.
//! - [`lookup`] — LookupEvents across regions: pages merged newest first, one `next_token`
//!   holding every region's position.
//! - this module — [`CoordinatorAudit`], the gRPC edge.
//!
//! # Where the answers come from, and why
//!
//! Every answer is built from the region nodes' own `Audit` service, called over the
//! coordinator's existing channels ([`RegionRoutes::channel`]: the chaos layer applies, as to
//! every other call the coordinator makes) with the operator credential of the routes
//! ([`OperatorAuth`], ADR 0009). The coordinator's projection is not used: it holds only the
//! present, while history (as-of states, checkpoints, the request log, the digests) lives on the
//! nodes next to their logs. So:
//!
//! - **StreamEvents** without `region`: one node stream per region (catch-up, then live), merged
//!   in causal order by [`merge::StreamMerge`]; a start time becomes each region's start seq
//!   with the node's `ResolvePoint`, which also gives each region's head (the end of the
//!   catch-up). With `region`: that node's stream, passed through.
//! - **DescribeImagesAsOf / DescribeSnapshotsAsOf**: each region's node answers its own as-of
//!   read (same rules, the caller's `x-amisim-account`, the node's checkpoints); a simulated time
//!   goes to every region as is (each at its last event at or before it), a `token` point gives
//!   each region its seq (0 when not named). Explicit ids become an `image-id` / `snapshot-id`
//!   filter per region, and an id no region shows is `InvalidAMIID.NotFound` /
//!   `InvalidSnapshot.NotFound` for the whole call, as in the global reads. Several regions are
//!   answered in one page (ordered by region, then id), or, with `max_results`, in pages: the
//!   regions one after another, each at the seq its point resolved to on the first page
//!   (`ResolvePoint`), so every page reads the same history; the `next_token` carries those
//!   seqs (`RegionPages`). Explicit ids do not combine with paging over several regions.
//! - **LookupEvents**: every region's page, merged newest first ([`lookup`]).
//! - **VerifyLog / GetPublicKey / ListDigests**: every region's answer, by region (each node
//!   signs with its own key; the coordinator adds nothing it could not vouch for).
//!
//! A region that cannot be reached fails the call (UNAVAILABLE, `RegionUnavailable`, naming the
//! region): an audit answer that silently left a region out would be worse than none. A merged
//! stream whose node stream breaks once it is open (the node restarted, was killed or cut off)
//! reopens that region's stream by itself from the seq after the last event it received, for up
//! to a minute of failures in a row (`run_lane`); only then it ends with UNAVAILABLE and the
//! `from_seqs` to resume from.
//!
//! # Authentication
//!
//! As on a node (ADR 0009): with an accounts file, every call needs `authorization: Bearer
//! <operator token>`, else UNAUTHENTICATED `AuthFailure`. The as-of reads answer as the account
//! in `x-amisim-account`, which is passed to the nodes with the request id.

pub mod filter;
pub mod lookup;
pub mod merge;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use amisim_core::{Accounts, Ec2Error};
use amisim_proto::as_of::Point;
use amisim_proto::audit_client::AuditClient;
use amisim_proto::audit_server::{Audit, AuditServer};
use amisim_proto::{
    AsOf, AuditStreamRequest, DescribeImagesAsOfRequest, DescribeImagesAsOfResponse,
    DescribeImagesRequest, DescribeImagesResponse, DescribeSnapshotsAsOfRequest,
    DescribeSnapshotsAsOfResponse, DescribeSnapshotsRequest, DescribeSnapshotsResponse, Event,
    Filter, GetPublicKeyRequest, GetPublicKeyResponse, ListDigestsRequest, ListDigestsResponse,
    LookupEventsRequest, LookupEventsResponse, RegionImage, RegionPoint, RegionSnapshot,
    ResolvePointRequest, ResolvePointResponse, VerifyLogRequest, VerifyLogResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};

use crate::gateway::{RegionChannel, RegionRoutes, ERROR_CODE_HEADER, REQUEST_ID_HEADER};
use crate::operator::OperatorAuth;
use crate::projection::ConsistencyToken;
use crate::service::{status_from_ec2, ACCOUNT_HEADER};

use self::filter::EventFilter;
use self::lookup::{fingerprint, merge_pages, Positions, RegionPage, MAX_RESULTS};
use self::merge::{Next, StreamMerge};

/// A node's `Audit` client, authenticating as the operator.
type NodeAudit = AuditClient<InterceptedService<RegionChannel, OperatorAuth>>;

/// Bound on each unary call to a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message decoded from or sent to a node or client (as-of answers can be large).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Events read ahead per region before the merge takes them.
const LANE_CAPACITY: usize = 256;
/// Events queued towards the client.
const OUT_CAPACITY: usize = 64;

/// The stream type of `StreamEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

/// The `Audit` service of the coordinator over the routed regions.
#[derive(Debug, Clone)]
pub struct CoordinatorAudit {
    routes: RegionRoutes,
    accounts: Option<Arc<Accounts>>,
    closing: Option<watch::Receiver<bool>>,
}

impl CoordinatorAudit {
    /// Answers from the nodes of `routes` (with the routes' operator credential).
    pub fn new(routes: RegionRoutes) -> Self {
        CoordinatorAudit {
            routes,
            accounts: None,
            closing: None,
        }
    }

    /// Only the operator token of `accounts` opens the service (ADR 0009).
    pub fn with_accounts(mut self, accounts: Arc<Accounts>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// Ends every event stream with UNAVAILABLE once `closing` turns true (so a graceful
    /// shutdown does not wait for followed streams).
    pub fn with_closing(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }

    /// The tonic server wrapper, to `add_service` next to the others.
    pub fn into_server(self) -> AuditServer<Self> {
        AuditServer::new(self)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn followed(&self) -> Vec<String> {
        self.routes.regions().map(str::to_string).collect()
    }

    /// The regions a call reads: `region`, or every followed one when empty.
    fn select(&self, region: &str, call: &Call) -> Result<Vec<String>, Status> {
        let followed = self.followed();
        let region = region.trim();
        if region.is_empty() {
            return Ok(followed);
        }
        if followed.iter().any(|f| f == region) {
            return Ok(vec![region.to_string()]);
        }
        Err(call.fail(
            Code::InvalidArgument,
            "InvalidRegion",
            format!(
                "region {region:?} is not followed by this coordinator; it follows: {}",
                followed.join(", ")
            ),
        ))
    }

    fn client(&self, region: &str, call: &Call) -> Result<NodeAudit, Status> {
        let channel = self.routes.channel(region).ok_or_else(|| {
            call.fail(
                Code::InvalidArgument,
                "InvalidRegion",
                format!("region {region:?} is not routed"),
            )
        })?;
        Ok(
            AuditClient::with_interceptor(channel, self.routes.operator().clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    /// The caller must be the operator when there is an accounts file.
    fn authorize(&self, md: &MetadataMap, rpc: &'static str) -> Result<Call, Status> {
        let call = Call::new(md, rpc);
        if let Some(accounts) = &self.accounts {
            let header = md.get("authorization").and_then(|v| v.to_str().ok());
            if let Err(e) = accounts.authenticate_operator_header(header) {
                tracing::warn!(rpc, request_id = %call.request_id,
                    "coordinator Audit call refused: no operator token");
                return Err(status_from_ec2(&e, &call.request_id));
            }
        }
        Ok(call)
    }

    /// One unary call to `region`'s node, bounded by [`CALL_TIMEOUT`].
    async fn unary<T, F, Fut>(&self, region: &str, call: &Call, f: F) -> Result<(String, T), Status>
    where
        F: FnOnce(NodeAudit) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.client(region, call)?;
        match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
            Ok(Ok(r)) => Ok((region.to_string(), r.into_inner())),
            Ok(Err(s)) => Err(call.region_failed(region, s)),
            Err(_) => Err(call.fail(
                Code::Unavailable,
                "RegionUnavailable",
                format!("region {region}: no answer within {CALL_TIMEOUT:?}"),
            )),
        }
    }

    /// The same call to every region of `regions`, concurrently; the first failure fails all.
    async fn fan_out<T, F, Fut>(
        &self,
        regions: &[String],
        call: &Call,
        f: F,
    ) -> Result<Vec<(String, T)>, Status>
    where
        F: Fn(String, NodeAudit) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let calls = regions.iter().map(|r| {
            let region = r.clone();
            self.unary(r, call, |c| f(region, c))
        });
        futures::future::join_all(calls).await.into_iter().collect()
    }

    /// The point each region reads an as-of request at.
    fn as_of_points(
        &self,
        as_of: Option<&AsOf>,
        regions: &[String],
        named: bool,
        call: &Call,
    ) -> Result<Vec<(String, Option<AsOf>)>, Status> {
        let seq = |s: u64| {
            Some(AsOf {
                point: Some(Point::Seq(s)),
            })
        };
        match as_of.and_then(|a| a.point.as_ref()) {
            Some(Point::Seq(_)) if !named && regions.len() > 1 => Err(call.fail(
                Code::InvalidArgument,
                "InvalidParameterValue",
                "a seq is a point in one region's log: name the region, or give a simulated \
                 time or a token (region:seq,...)"
                    .into(),
            )),
            Some(Point::Token(text)) => {
                let token = self.token(text, call)?;
                Ok(regions
                    .iter()
                    .map(|r| (r.clone(), seq(token.get(r))))
                    .collect())
            }
            _ => Ok(regions
                .iter()
                .map(|r| (r.clone(), as_of.cloned()))
                .collect()),
        }
    }

    /// An as-of read over the regions it names (images or snapshots): plan, ask each region's
    /// node, merge, answer.
    async fn as_of<R: AsOfRead>(&self, request: Request<R>) -> Result<Response<R::Answer>, Status> {
        let call = self.authorize(request.metadata(), R::RPC)?;
        let (region, as_of, mut describe) = request.into_inner().into_parts();
        let plan = self
            .plan_as_of(&region, as_of.as_ref(), &mut describe, &call)
            .await?;
        let answers = self
            .fan_out(&plan.regions, &call, |region, c| {
                let point = plan.points.get(&region).cloned().flatten();
                R::call(
                    c,
                    call.forward(R::for_region(point, describe.clone(), region)),
                )
            })
            .await?;
        let answers = answers
            .into_iter()
            .map(|(region, a)| (region, R::answer(a)));
        let merged = plan
            .merge(answers, R::id)
            .map_err(|absent| call.ec2(&R::not_found(&absent)))?;
        Ok(call.respond(R::respond(merged)))
    }

    /// The regions, points and wanted ids of an as-of read of `describe` (explicit ids of a read
    /// over several regions become a filter of `describe`). A paged read over several regions
    /// (`max_results` or a `next_token` of such a read) asks one region per call: see
    /// [`RegionPages`].
    async fn plan_as_of<D: AsOfDescribe>(
        &self,
        region: &str,
        as_of: Option<&AsOf>,
        describe: &mut D,
        call: &Call,
    ) -> Result<AsOfPlan, Status> {
        let named = !region.trim().is_empty();
        let regions = self.select(region, call)?;
        let (max_results, next_token) = describe.paging();
        let paged = max_results.is_some() || !next_token.is_empty();
        if regions.len() > 1 && paged {
            return self.plan_pages(as_of, regions, named, describe, call).await;
        }
        let points = self.as_of_points(as_of, &regions, named, call)?;
        let wanted = if regions.len() > 1 {
            let (ids, filters) = describe.ids_and_filters();
            ids_as_filter(ids, filters, D::ID_FILTER)
        } else {
            Vec::new()
        };
        Ok(AsOfPlan {
            regions,
            points: points.into_iter().collect(),
            wanted,
            pages: None,
        })
    }

    /// One page of an as-of read over several regions: the regions one after another (in
    /// order), each at the seq its point resolved to on the first page, so every page reads the
    /// same history however the regions move on meanwhile.
    async fn plan_pages<D: AsOfDescribe>(
        &self,
        as_of: Option<&AsOf>,
        regions: Vec<String>,
        named: bool,
        describe: &mut D,
        call: &Call,
    ) -> Result<AsOfPlan, Status> {
        if !describe.ids_and_filters().0.is_empty() {
            return Err(call.fail(
                Code::InvalidArgument,
                "InvalidParameterCombination",
                "max_results and next_token cannot be combined with explicit ids in an as-of read \
                 over several regions"
                    .into(),
            ));
        }
        let token = describe.paging().1.to_string();
        let pages = if token.is_empty() {
            // First page: every region's point, resolved to the seq of its last event at or
            // before it (unset: its head).
            let points = self.as_of_points(as_of, &regions, named, call)?;
            let points: BTreeMap<String, Option<AsOf>> = points.into_iter().collect();
            let resolved = self
                .fan_out(&regions, call, |region, mut c| {
                    let req = call.forward(ResolvePointRequest {
                        point: points.get(&region).cloned().flatten(),
                        region,
                    });
                    async move { c.resolve_point(req).await }
                })
                .await?;
            RegionPages {
                seqs: resolved
                    .into_iter()
                    .map(|(region, p)| (region, p.last_seq))
                    .collect(),
                index: 0,
            }
        } else {
            let (pages, inner) = RegionPages::parse(&token).ok_or_else(|| {
                call.fail(
                    Code::InvalidArgument,
                    "InvalidParameterValue",
                    format!("next_token {token:?} is not one this coordinator gave"),
                )
            })?;
            let followed = self.followed();
            if let Some((r, _)) = pages.seqs.iter().find(|(r, _)| !followed.contains(r)) {
                return Err(call.fail(
                    Code::InvalidArgument,
                    "InvalidParameterValue",
                    format!(
                        "next_token names region {r:?}, which this coordinator does not follow"
                    ),
                ));
            }
            describe.set_next_token(inner);
            pages
        };
        let (region, seq) = pages.current().ok_or_else(|| {
            call.fail(
                Code::InvalidArgument,
                "InvalidParameterValue",
                format!("next_token {token:?} is past the last region"),
            )
        })?;
        let point = Some(AsOf {
            point: Some(Point::Seq(seq)),
        });
        Ok(AsOfPlan {
            regions: vec![region.clone()],
            points: [(region, point)].into_iter().collect(),
            wanted: Vec::new(),
            pages: Some(pages),
        })
    }

    /// Parses a token point; every region it names must be followed.
    fn token(&self, text: &str, call: &Call) -> Result<ConsistencyToken, Status> {
        let token = ConsistencyToken::parse(text).map_err(|e| {
            call.fail(
                Code::InvalidArgument,
                "InvalidConsistencyToken",
                e.to_string(),
            )
        })?;
        let followed = self.followed();
        if let Some((r, _)) = token.iter().find(|(r, _)| !followed.iter().any(|f| f == r)) {
            return Err(call.fail(
                Code::InvalidArgument,
                "InvalidRegion",
                format!(
                    "the point names region {r:?}, which this coordinator does not follow; it \
                     follows: {}",
                    followed.join(", ")
                ),
            ));
        }
        Ok(token)
    }

    /// Each region's start seq and head for a merged stream.
    async fn lanes(
        &self,
        r: &AuditStreamRequest,
        regions: &[String],
        call: &Call,
    ) -> Result<Vec<(String, u64, u64)>, Status> {
        let from = r.from.as_ref().and_then(|a| a.point.as_ref());
        let token =
            match from {
                Some(Point::Token(t)) => Some(self.token(t, call)?),
                Some(Point::Seq(_)) => return Err(call.fail(
                    Code::InvalidArgument,
                    "InvalidParameterValue",
                    "a seq is a point in one region's log: name the region, or use from_seqs, a \
                     simulated time or a token (region:seq,...)"
                        .into(),
                )),
                _ => None,
            };
        let followed = self.followed();
        if let Some(r) = r.from_seqs.keys().find(|r| !followed.contains(r)) {
            return Err(call.fail(
                Code::InvalidArgument,
                "InvalidRegion",
                format!("from_seqs names region {r:?}, which this coordinator does not follow"),
            ));
        }
        let resolved = self
            .fan_out(regions, call, |region, mut c| {
                let point = match (r.from_seqs.get(&region), &token, from) {
                    (Some(s), _, _) => Point::Seq(*s),
                    (None, Some(t), _) => Point::Seq(t.get(&region).saturating_add(1)),
                    (None, None, Some(Point::SimTimeMs(t))) => Point::SimTimeMs(*t),
                    _ => Point::Seq(1),
                };
                let req = call.forward(ResolvePointRequest {
                    point: Some(AsOf { point: Some(point) }),
                    region,
                });
                async move { c.resolve_point(req).await }
            })
            .await?;
        Ok(resolved
            .into_iter()
            .map(|(region, p)| (region, p.first_seq, p.head_seq))
            .collect())
    }

    /// Opens the merged stream of `regions` and runs the merge in a task.
    async fn merged(
        &self,
        r: AuditStreamRequest,
        regions: Vec<String>,
        call: Call,
    ) -> Result<EventStream, Status> {
        let lanes = self.lanes(&r, &regions, &call).await?;
        let filter = EventFilter::new(&r.event_types, &r.resource_id, &r.account_id);
        let mut receivers: Vec<(String, mpsc::Receiver<Result<Event, Status>>)> = Vec::new();
        for (region, start, _) in &lanes {
            let mut client = self.client(region, &call)?;
            let opened = tokio::time::timeout(
                CALL_TIMEOUT,
                client.stream_events(lane_request(&call, region, *start)),
            )
            .await;
            let stream = match opened {
                Ok(Ok(s)) => s.into_inner(),
                Ok(Err(s)) => return Err(call.region_failed(region, s)),
                Err(_) => {
                    return Err(call.fail(
                        Code::Unavailable,
                        "RegionUnavailable",
                        format!("region {region}: the event stream did not open"),
                    ))
                }
            };
            let (tx, rx) = mpsc::channel(LANE_CAPACITY);
            tokio::spawn(run_lane(
                region.clone(),
                client,
                call.clone(),
                stream,
                *start,
                tx,
            ));
            receivers.push((region.clone(), rx));
        }
        tracing::info!(rpc = "StreamEvents", request_id = %call.request_id,
            regions = %regions.join(","), follow = r.follow, filtered = !filter.is_empty(),
            "merged audit event stream opened");
        let merge = StreamMerge::new(lanes, r.follow);
        let (out, rx) = mpsc::channel(OUT_CAPACITY);
        let closing = self.closing.clone();
        tokio::spawn(run_merge(merge, receivers, filter, out, closing));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// One region's stream, passed through (ended with UNAVAILABLE when the coordinator closes).
    async fn single(
        &self,
        mut r: AuditStreamRequest,
        region: String,
        call: Call,
    ) -> Result<EventStream, Status> {
        r.region = region.clone();
        let mut client = self.client(&region, &call)?;
        let mut stream = match client.stream_events(call.forward(r)).await {
            Ok(s) => s.into_inner(),
            Err(s) => return Err(call.region_failed(&region, s)),
        };
        let (out, rx) = mpsc::channel(OUT_CAPACITY);
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    m = stream.message() => m,
                    () = closed(&mut closing) => {
                        let resume = format!("resume {region} from the seq after the last event received");
                        let _ = out.send(Err(shutting_down(&resume))).await;
                        return;
                    }
                    () = out.closed() => return,
                };
                let item = match item {
                    Ok(Some(e)) => Ok(e),
                    Ok(None) => return,
                    Err(s) => Err(s),
                };
                let last = item.is_err();
                if out.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// How long a region's lane of a merged stream keeps reopening a broken node stream (a node
/// restarting, a partition) before it gives up and ends the merged stream with UNAVAILABLE and
/// the `from_seqs` to resume from.
const LANE_RECONNECT_FOR: Duration = Duration::from_secs(60);
/// First and largest wait between two reopenings of a lane.
const LANE_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// The request of a merge lane: `region`'s events from `seq` on, followed (the merge decides
/// where a stream without `follow` ends).
fn lane_request(call: &Call, region: &str, seq: u64) -> Request<AuditStreamRequest> {
    call.forward(AuditStreamRequest {
        from: Some(AsOf {
            point: Some(Point::Seq(seq)),
        }),
        follow: true,
        region: region.to_string(),
        ..Default::default()
    })
}

/// One region's lane of a merged stream: forwards the node's events to the merge and, when the
/// node's stream breaks or ends (the node restarted, was killed, a link failed), reopens it from
/// the seq after the last event forwarded, with backoff, for up to [`LANE_RECONNECT_FOR`] of
/// failures in a row; only then the lane ends with the last error (the merge turns it into
/// UNAVAILABLE with the seqs to resume from). The merge ignores duplicates, so a reopened
/// stream needs no exact position.
async fn run_lane(
    region: String,
    mut client: NodeAudit,
    call: Call,
    stream: tonic::Streaming<Event>,
    start: u64,
    tx: mpsc::Sender<Result<Event, Status>>,
) {
    let mut stream = Some(stream);
    let mut next_seq = start;
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut backoff = LANE_BACKOFF.0;
    loop {
        let broke = match stream.as_mut() {
            Some(s) => match s.message().await {
                Ok(Some(e)) => {
                    next_seq = next_seq.max(e.seq.saturating_add(1));
                    failing_since = None;
                    backoff = LANE_BACKOFF.0;
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => Status::unavailable(format!("region {region} ended its event stream")),
                Err(s) => s,
            },
            None => {
                Status::unavailable(format!("region {region}: the event stream did not reopen"))
            }
        };
        stream = None;
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= LANE_RECONNECT_FOR {
            tracing::warn!(region = %region, next_seq, error = %broke.message(),
                "merged audit stream: the region's event stream stayed broken; ending the stream");
            let _ = tx.send(Err(broke)).await;
            return;
        }
        tracing::info!(region = %region, next_seq, error = %broke.message(),
            retry_in_ms = backoff.as_millis() as u64,
            "merged audit stream: the region's event stream broke; reopening it");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(LANE_BACKOFF.1);
        let reopened = tokio::select! {
            r = tokio::time::timeout(CALL_TIMEOUT, client.stream_events(lane_request(&call, &region, next_seq))) => r,
            () = tx.closed() => return,
        };
        if let Ok(Ok(s)) = reopened {
            // Open again: the next break starts a new spell of failures (the backoff stays
            // grown until an event comes through).
            stream = Some(s.into_inner());
            failing_since = None;
        }
    }
}

/// Resolves when `closing` turns true (never without one).
async fn closed(closing: &mut Option<watch::Receiver<bool>>) {
    match closing {
        Some(c) => {
            if c.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

fn shutting_down(resume: &str) -> Status {
    Status::unavailable(format!(
        "the coordinator is shutting down; {resume} (AuditStreamRequest.from_seqs)"
    ))
}

/// The merge loop: take events from the regions the merge wants, emit what is ready.
async fn run_merge(
    mut merge: StreamMerge,
    mut lanes: Vec<(String, mpsc::Receiver<Result<Event, Status>>)>,
    filter: EventFilter,
    out: mpsc::Sender<Result<Event, Status>>,
    mut closing: Option<watch::Receiver<bool>>,
) {
    let resume = |m: &StreamMerge| {
        let seqs: Vec<String> = m
            .regions()
            .map(|r| format!("{r}:{}", m.resume_seq(r)))
            .collect();
        format!("resume with from_seqs {}", seqs.join(","))
    };
    let mut turn = 0usize;
    loop {
        match merge.step() {
            Next::Emit(e) => {
                if filter.matches(&e) && out.send(Ok(*e)).await.is_err() {
                    return;
                }
                continue;
            }
            Next::Done => return,
            Next::NeedInput => {}
        }
        let wanted: Vec<bool> = lanes.iter().map(|(r, _)| merge.wants(r)).collect();
        if !wanted.iter().any(|w| *w) {
            tracing::error!("merged audit stream stalled: no region can deliver what is needed");
            let _ = out
                .send(Err(Status::internal(
                    "the merged event stream stalled (a dependency cannot be delivered)",
                )))
                .await;
            return;
        }
        turn = turn.wrapping_add(1);
        let n = lanes.len();
        let next = std::future::poll_fn(|cx| {
            for k in 0..n {
                let i = (turn + k) % n;
                if !wanted[i] {
                    continue;
                }
                if let Poll::Ready(v) = lanes[i].1.poll_recv(cx) {
                    return Poll::Ready((i, v));
                }
            }
            Poll::Pending
        });
        let (i, item) = tokio::select! {
            got = next => got,
            () = closed(&mut closing) => {
                let _ = out.send(Err(shutting_down(&resume(&merge)))).await;
                return;
            }
            () = out.closed() => return,
        };
        let region = lanes[i].0.clone();
        match item {
            Some(Ok(event)) => {
                if let Err(e) = merge.offer(&region, event) {
                    tracing::error!(region = %region, error = %e, "merged audit stream refused an event");
                    let _ = out
                        .send(Err(Status::internal(format!("region {region}: {e}"))))
                        .await;
                    return;
                }
            }
            Some(Err(s)) => {
                tracing::info!(region = %region, error = %s.message(), "a region's audit stream failed");
                let _ = out
                    .send(Err(Status::unavailable(format!(
                        "region {region}: {}; {}",
                        s.message(),
                        resume(&merge)
                    ))))
                    .await;
                return;
            }
            None => {
                let _ = out
                    .send(Err(Status::unavailable(format!(
                        "region {region}: the event stream ended; {}",
                        resume(&merge)
                    ))))
                    .await;
                return;
            }
        }
    }
}

/// What one call carries: its request id, the metadata passed on to the nodes, its name.
#[derive(Clone)]
struct Call {
    request_id: String,
    account: Option<AsciiMetadataValue>,
    rpc: &'static str,
}

impl Call {
    fn new(md: &MetadataMap, rpc: &'static str) -> Self {
        let request_id = md
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| amisim_core::ids::generate_uuid(&mut rand::rng()));
        Call {
            request_id,
            account: md.get(ACCOUNT_HEADER).cloned(),
            rpc,
        }
    }

    /// A request to a node carrying the caller's account and the request id.
    fn forward<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(a) = &self.account {
            r.metadata_mut().insert(ACCOUNT_HEADER, a.clone());
        }
        if let Ok(v) = AsciiMetadataValue::try_from(self.request_id.as_str()) {
            r.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        r
    }

    fn fail(&self, code: Code, error_code: &'static str, message: String) -> Status {
        tracing::debug!(rpc = self.rpc, code = error_code, error = %message, "audit call failed");
        let mut status = Status::new(code, format!("{error_code}: {message}"));
        let md = status.metadata_mut();
        md.insert(
            ERROR_CODE_HEADER,
            AsciiMetadataValue::from_static(error_code),
        );
        if let Ok(v) = AsciiMetadataValue::try_from(self.request_id.as_str()) {
            md.insert(REQUEST_ID_HEADER, v);
        }
        status
    }

    fn ec2(&self, e: &Ec2Error) -> Status {
        status_from_ec2(e, &self.request_id)
    }

    /// A node's refusal (it carries its own error code) is passed on; a transport failure
    /// becomes UNAVAILABLE `RegionUnavailable` naming the region.
    fn region_failed(&self, region: &str, s: Status) -> Status {
        if s.metadata().get(ERROR_CODE_HEADER).is_some() || s.code() == Code::InvalidArgument {
            return s;
        }
        tracing::warn!(rpc = self.rpc, region, error = %s.message(), "region audit call failed");
        self.fail(
            Code::Unavailable,
            "RegionUnavailable",
            format!("region {region}: {} ({:?})", s.message(), s.code()),
        )
    }

    fn respond<T>(&self, body: T) -> Response<T> {
        let mut r = Response::new(body);
        if let Ok(v) = AsciiMetadataValue::try_from(self.request_id.as_str()) {
            r.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        r
    }
}

/// The explicit ids of a read over several regions, as a filter each region can answer.
fn ids_as_filter(ids: &mut Vec<String>, filters: &mut Vec<Filter>, name: &str) -> Vec<String> {
    let ids = std::mem::take(ids);
    if !ids.is_empty() {
        filters.push(Filter {
            name: name.to_string(),
            values: ids.clone(),
        });
    }
    ids
}

/// The ids of `wanted` (each once, in order) not in `found`.
fn missing<'a>(wanted: &'a [String], found: &[&str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for id in wanted {
        if !found.contains(&id.as_str()) && !out.contains(&id.as_str()) {
            out.push(id);
        }
    }
    out
}

/// The Describe request inside an as-of read (images or snapshots).
trait AsOfDescribe {
    /// The filter that stands for explicit ids in a read over several regions.
    const ID_FILTER: &'static str;
    fn paging(&self) -> (Option<i32>, &str);
    fn ids_and_filters(&mut self) -> (&mut Vec<String>, &mut Vec<Filter>);
    fn set_next_token(&mut self, token: String);
}

impl AsOfDescribe for DescribeImagesRequest {
    const ID_FILTER: &'static str = "image-id";
    fn paging(&self) -> (Option<i32>, &str) {
        (self.max_results, &self.next_token)
    }
    fn ids_and_filters(&mut self) -> (&mut Vec<String>, &mut Vec<Filter>) {
        (&mut self.image_ids, &mut self.filters)
    }
    fn set_next_token(&mut self, token: String) {
        self.next_token = token;
    }
}

impl AsOfDescribe for DescribeSnapshotsRequest {
    const ID_FILTER: &'static str = "snapshot-id";
    fn paging(&self) -> (Option<i32>, &str) {
        (self.max_results, &self.next_token)
    }
    fn ids_and_filters(&mut self) -> (&mut Vec<String>, &mut Vec<Filter>) {
        (&mut self.snapshot_ids, &mut self.filters)
    }
    fn set_next_token(&mut self, token: String) {
        self.next_token = token;
    }
}

/// One as-of RPC (images or snapshots): what [`CoordinatorAudit::as_of`] needs of its types.
trait AsOfRead: Sized + Send + 'static {
    type Describe: AsOfDescribe + Clone + Send + Sync;
    type Item: Clone + Send;
    type Answer: Send;
    const RPC: &'static str;
    /// The region named (empty: all), the point, the Describe request.
    fn into_parts(self) -> (String, Option<AsOf>, Self::Describe);
    /// The request to one region's node.
    fn for_region(as_of: Option<AsOf>, describe: Self::Describe, region: String) -> Self;
    fn call(
        c: NodeAudit,
        req: Request<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Response<Self::Answer>, Status>>;
    /// A node's answer.
    fn answer(a: Self::Answer) -> AsOfAnswer<Self::Item>;
    fn id(item: &Self::Item) -> &str;
    /// The error of explicit ids no region shows.
    fn not_found(absent: &[&str]) -> Ec2Error;
    /// The coordinator's answer.
    fn respond(merged: AsOfMerged<Self::Item>) -> Self::Answer;
}

/// An [`AsOfRead`] impl: the images and snapshots RPCs have the same shape, with their own
/// proto types and field names.
macro_rules! as_of_read {
    (
        $req:ident { describe: $describe:ty, item: $item:ty, answer: $answer:ident,
        response: $response:ident, listed: $listed:ident, per_region: $per_region:ident,
        one: $one:ident, id: $id:ident, rpc: $rpc:literal, call: $call:ident,
        not_found: $not_found:expr $(,)? }
    ) => {
        impl AsOfRead for $req {
            type Describe = $describe;
            type Item = $item;
            type Answer = $answer;
            const RPC: &'static str = $rpc;
            fn into_parts(self) -> (String, Option<AsOf>, Self::Describe) {
                (self.region, self.as_of, self.request.unwrap_or_default())
            }
            fn for_region(as_of: Option<AsOf>, describe: Self::Describe, region: String) -> Self {
                $req {
                    as_of,
                    request: Some(describe),
                    region,
                }
            }
            fn call(
                mut c: NodeAudit,
                req: Request<Self>,
            ) -> futures::future::BoxFuture<'static, Result<Response<Self::Answer>, Status>> {
                Box::pin(async move { c.$call(req).await })
            }
            fn answer(a: Self::Answer) -> AsOfAnswer<Self::Item> {
                let response = a.response.unwrap_or_default();
                AsOfAnswer {
                    seq: a.seq,
                    sim_time_ms: a.sim_time_ms,
                    next_token: response.next_token,
                    items: response.$listed,
                }
            }
            fn id(item: &Self::Item) -> &str {
                &item.$id
            }
            fn not_found(absent: &[&str]) -> Ec2Error {
                let not_found: fn(&[&str]) -> Ec2Error = $not_found;
                not_found(absent)
            }
            fn respond(merged: AsOfMerged<Self::Item>) -> Self::Answer {
                $answer {
                    seq: merged.seq,
                    sim_time_ms: merged.sim_time_ms,
                    response: Some($response {
                        $listed: merged.items.iter().map(|(_, x)| x.clone()).collect(),
                        next_token: merged.next_token,
                    }),
                    regions: merged.regions,
                    $listed: merged
                        .items
                        .into_iter()
                        .map(|(region, x)| $per_region {
                            region,
                            $one: Some(x),
                        })
                        .collect(),
                }
            }
        }
    };
}

as_of_read!(DescribeImagesAsOfRequest {
    describe: DescribeImagesRequest,
    item: amisim_proto::Image,
    answer: DescribeImagesAsOfResponse,
    response: DescribeImagesResponse,
    listed: images,
    per_region: RegionImage,
    one: image,
    id: image_id,
    rpc: "DescribeImagesAsOf",
    call: describe_images_as_of,
    not_found: |absent| Ec2Error::image_not_found(absent),
});

as_of_read!(DescribeSnapshotsAsOfRequest {
    describe: DescribeSnapshotsRequest,
    item: amisim_proto::Snapshot,
    answer: DescribeSnapshotsAsOfResponse,
    response: DescribeSnapshotsResponse,
    listed: snapshots,
    per_region: RegionSnapshot,
    one: snapshot,
    id: snapshot_id,
    rpc: "DescribeSnapshotsAsOf",
    call: describe_snapshots_as_of,
    not_found: |absent| Ec2Error::snapshot_not_found(&absent.join(", ")),
});

/// What an as-of read asks of the regions: which ones, the point each reads at, and the
/// explicit ids of a read over several regions (each must be shown by some region).
struct AsOfPlan {
    regions: Vec<String>,
    points: BTreeMap<String, Option<AsOf>>,
    wanted: Vec<String>,
    /// A paged read over several regions: where this page stands.
    pages: Option<RegionPages>,
}

/// Where a paged as-of read over several regions stands: each region's pinned seq (in the
/// order read) and the region this page reads. Its `next_token` is
/// `asof1|<index>|<region>=<seq>,…|<the region's own next_token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RegionPages {
    seqs: Vec<(String, u64)>,
    index: usize,
}

impl RegionPages {
    const PREFIX: &'static str = "asof1";

    fn current(&self) -> Option<(String, u64)> {
        self.seqs.get(self.index).cloned()
    }

    /// The token of the page after this one, given the region's own `next_token`: more of this
    /// region, else the next region, else none (empty).
    fn next_token(&self, inner: &str) -> String {
        let index = if !inner.is_empty() {
            self.index
        } else if self.index + 1 < self.seqs.len() {
            self.index + 1
        } else {
            return String::new();
        };
        let seqs: Vec<String> = self.seqs.iter().map(|(r, s)| format!("{r}={s}")).collect();
        format!("{}|{index}|{}|{inner}", Self::PREFIX, seqs.join(","))
    }

    /// A token [`RegionPages::next_token`] made, and the region's own token in it.
    fn parse(token: &str) -> Option<(RegionPages, String)> {
        let mut parts = token.splitn(4, '|');
        if parts.next()? != Self::PREFIX {
            return None;
        }
        let index: usize = parts.next()?.parse().ok()?;
        let seqs = parts
            .next()?
            .split(',')
            .map(|pair| {
                let (r, s) = pair.split_once('=')?;
                Some((r.to_string(), s.parse().ok()?))
            })
            .collect::<Option<Vec<(String, u64)>>>()?;
        let inner = parts.next()?.to_string();
        (index < seqs.len()).then_some((RegionPages { seqs, index }, inner))
    }
}

/// One region's as-of answer, whatever the resource.
struct AsOfAnswer<T> {
    seq: u64,
    sim_time_ms: u64,
    next_token: String,
    items: Vec<T>,
}

/// The regions' as-of answers as one: the point each region read at; the region's own point
/// and `next_token` when one region is read (else zero and empty); the items by region, then id.
struct AsOfMerged<T> {
    regions: Vec<RegionPoint>,
    seq: u64,
    sim_time_ms: u64,
    next_token: String,
    items: Vec<(String, T)>,
}

impl AsOfPlan {
    /// Merges the answers; `Err` holds the wanted ids no region shows.
    fn merge<T>(
        &self,
        answers: impl IntoIterator<Item = (String, AsOfAnswer<T>)>,
        id: impl Fn(&T) -> &str,
    ) -> Result<AsOfMerged<T>, Vec<&str>> {
        let single = self.regions.len() == 1 && self.pages.is_none();
        let mut inner_next = String::new();
        let mut out = AsOfMerged {
            regions: Vec::new(),
            seq: 0,
            sim_time_ms: 0,
            next_token: String::new(),
            items: Vec::new(),
        };
        for (region, a) in answers {
            out.regions.push(RegionPoint {
                region: region.clone(),
                seq: a.seq,
                sim_time_ms: a.sim_time_ms,
            });
            if single {
                out.seq = a.seq;
                out.sim_time_ms = a.sim_time_ms;
                out.next_token = a.next_token;
            } else {
                inner_next = a.next_token;
            }
            out.items
                .extend(a.items.into_iter().map(|item| (region.clone(), item)));
        }
        let found: Vec<&str> = out.items.iter().map(|(_, item)| id(item)).collect();
        let absent = missing(&self.wanted, &found);
        if !absent.is_empty() {
            return Err(absent);
        }
        if let Some(pages) = &self.pages {
            out.next_token = pages.next_token(&inner_next);
        }
        out.items
            .sort_by(|(ra, a), (rb, b)| (ra, id(a)).cmp(&(rb, id(b))));
        Ok(out)
    }
}

#[tonic::async_trait]
impl Audit for CoordinatorAudit {
    async fn verify_log(
        &self,
        request: Request<VerifyLogRequest>,
    ) -> Result<Response<VerifyLogResponse>, Status> {
        let call = self.authorize(request.metadata(), "VerifyLog")?;
        let named = request.get_ref().region.clone();
        let regions = self.select(&named, &call)?;
        let answers = self
            .fan_out(&regions, &call, |region, mut c| {
                let req = call.forward(VerifyLogRequest { region });
                async move { c.verify_log(req).await }
            })
            .await?;
        if !named.trim().is_empty() {
            let a = answers.into_iter().next().map(|(_, a)| a);
            return Ok(call.respond(a.unwrap_or_default()));
        }
        let ok = answers
            .iter()
            .all(|(_, a)| a.ok && a.request_log.as_ref().is_none_or(|r| r.ok));
        tracing::info!(ok, regions = answers.len(), "logs verified (all regions)");
        Ok(call.respond(VerifyLogResponse {
            ok,
            regions: answers.into_iter().map(|(_, a)| a).collect(),
            ..Default::default()
        }))
    }

    async fn get_public_key(
        &self,
        request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        let call = self.authorize(request.metadata(), "GetPublicKey")?;
        let named = request.get_ref().region.clone();
        let regions = self.select(&named, &call)?;
        let answers = self
            .fan_out(&regions, &call, |region, mut c| {
                let req = call.forward(GetPublicKeyRequest { region });
                async move { c.get_public_key(req).await }
            })
            .await?;
        if !named.trim().is_empty() {
            let a = answers.into_iter().next().map(|(_, a)| a);
            return Ok(call.respond(a.unwrap_or_default()));
        }
        Ok(call.respond(GetPublicKeyResponse {
            regions: answers.into_iter().map(|(_, a)| a).collect(),
            ..Default::default()
        }))
    }

    async fn list_digests(
        &self,
        request: Request<ListDigestsRequest>,
    ) -> Result<Response<ListDigestsResponse>, Status> {
        let call = self.authorize(request.metadata(), "ListDigests")?;
        let r = request.into_inner();
        let regions = self.select(&r.region, &call)?;
        let answers = self
            .fan_out(&regions, &call, |region, mut c| {
                let req = call.forward(ListDigestsRequest {
                    region,
                    log: r.log.clone(),
                });
                async move { c.list_digests(req).await }
            })
            .await?;
        Ok(call.respond(ListDigestsResponse {
            digests: answers.into_iter().flat_map(|(_, a)| a.digests).collect(),
        }))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<AuditStreamRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let call = self.authorize(request.metadata(), "StreamEvents")?;
        let r = request.into_inner();
        let named = !r.region.trim().is_empty();
        let mut regions = self.select(&r.region, &call)?;
        let stream = if named {
            let region = regions.pop().unwrap_or_default();
            self.single(r, region, call).await?
        } else {
            self.merged(r, regions, call).await?
        };
        Ok(Response::new(stream))
    }

    async fn describe_images_as_of(
        &self,
        request: Request<DescribeImagesAsOfRequest>,
    ) -> Result<Response<DescribeImagesAsOfResponse>, Status> {
        self.as_of(request).await
    }

    async fn describe_snapshots_as_of(
        &self,
        request: Request<DescribeSnapshotsAsOfRequest>,
    ) -> Result<Response<DescribeSnapshotsAsOfResponse>, Status> {
        self.as_of(request).await
    }

    async fn lookup_events(
        &self,
        request: Request<LookupEventsRequest>,
    ) -> Result<Response<LookupEventsResponse>, Status> {
        let call = self.authorize(request.metadata(), "LookupEvents")?;
        let r = request.into_inner();
        if !r.region.trim().is_empty() {
            let regions = self.select(&r.region, &call)?;
            let region = regions.into_iter().next().unwrap_or_default();
            let (_, answer) = self
                .unary(&region, &call, |mut c| {
                    let req = call.forward(r.clone());
                    async move { c.lookup_events(req).await }
                })
                .await?;
            return Ok(call.respond(answer));
        }
        let max = match r.max_results {
            0 => MAX_RESULTS,
            n if n <= MAX_RESULTS => n,
            n => {
                return Err(call.fail(
                    Code::InvalidArgument,
                    "InvalidMaxResultsException",
                    format!("max results must be 1 to {MAX_RESULTS}, got {n}"),
                ))
            }
        };
        let attributes: Vec<(String, String)> = r
            .lookup_attributes
            .iter()
            .map(|a| (a.attribute_key.clone(), a.attribute_value.clone()))
            .collect();
        let fp = fingerprint(&attributes, r.start_time_ms, r.end_time_ms);
        let followed = self.followed();
        let mut positions = if r.next_token.is_empty() {
            Positions::fresh(fp, &followed)
        } else {
            Positions::parse(&r.next_token, fp, &followed).map_err(|e| {
                call.fail(
                    Code::InvalidArgument,
                    "InvalidNextTokenException",
                    e.to_string(),
                )
            })?
        };
        let regions: Vec<String> = positions.regions.keys().cloned().collect();
        let answers = self
            .fan_out(&regions, &call, |region, mut c| {
                let req = call.forward(LookupEventsRequest {
                    max_results: max,
                    next_token: positions
                        .regions
                        .get(&region)
                        .cloned()
                        .flatten()
                        .unwrap_or_default(),
                    region,
                    ..r.clone()
                });
                async move { c.lookup_events(req).await }
            })
            .await?;
        let pages: BTreeMap<String, RegionPage> = answers
            .into_iter()
            .map(|(region, a)| {
                (
                    region,
                    RegionPage {
                        events: a.events,
                        next_token: a.next_token,
                    },
                )
            })
            .collect();
        let events = merge_pages(pages, max as usize, &mut positions);
        Ok(call.respond(LookupEventsResponse {
            events,
            next_token: positions.token(),
        }))
    }

    async fn resolve_point(
        &self,
        request: Request<ResolvePointRequest>,
    ) -> Result<Response<ResolvePointResponse>, Status> {
        let call = self.authorize(request.metadata(), "ResolvePoint")?;
        let r = request.into_inner();
        if r.region.trim().is_empty() {
            return Err(call.fail(
                Code::InvalidArgument,
                "MissingParameter",
                "ResolvePoint on the coordinator needs a region".into(),
            ));
        }
        let regions = self.select(&r.region, &call)?;
        let region = regions.into_iter().next().unwrap_or_default();
        let (_, answer) = self
            .unary(&region, &call, |mut c| {
                let req = call.forward(r.clone());
                async move { c.resolve_point(req).await }
            })
            .await?;
        Ok(call.respond(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_pages_tokens_round_trip_and_walk_the_regions() {
        let pages = RegionPages {
            seqs: vec![("us-east-1".into(), 7), ("eu-west-1".into(), 0)],
            index: 0,
        };
        // More of the same region, then the next region, then the end.
        let more = pages.next_token("inner|with|bars");
        assert_eq!(more, "asof1|0|us-east-1=7,eu-west-1=0|inner|with|bars");
        assert_eq!(
            RegionPages::parse(&more),
            Some((pages.clone(), "inner|with|bars".to_string()))
        );
        let next = pages.next_token("");
        let (second, inner) = RegionPages::parse(&next).unwrap();
        assert_eq!((second.index, inner.as_str()), (1, ""));
        assert_eq!(second.current(), Some(("eu-west-1".to_string(), 0)));
        assert_eq!(second.next_token(""), "");
        for bad in [
            "",
            "asof1",
            "asof2|0|us-east-1=1|",
            "asof1|2|us-east-1=1|",
            "asof1|0|us-east-1|",
        ] {
            assert_eq!(RegionPages::parse(bad), None, "{bad:?}");
        }
    }
}
