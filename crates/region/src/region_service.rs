//! The internal `Region` gRPC service (`region.proto`): what the coordinator and operators need
//! besides the public API — the node's identity and head, its log as a stream, and the digest
//! check that live state equals a replay.

use std::pin::Pin;
use std::sync::Arc;

use amisim_core::{ids, Command, Reply};
use amisim_log::LogError;
use amisim_proto::region_server::Region;
use amisim_proto::{
    Event, GetRegionInfoRequest, GetRegionInfoResponse, GetStateDigestRequest,
    GetStateDigestResponse, SagaStep, SagaStepResponse, StreamEventsRequest,
};
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::node::replay_to;
use crate::{RegionError, RegionNode};

/// The `Region` service of one node.
#[derive(Debug, Clone)]
pub struct RegionService {
    node: Arc<RegionNode>,
    /// Turns true when the server shuts down: live event streams then end (with UNAVAILABLE),
    /// otherwise a follower would hold the graceful shutdown open forever.
    closing: Option<watch::Receiver<bool>>,
}

impl RegionService {
    /// The node's `GetRegionInfo` answer, with `now` as its simulated time.
    fn info(&self, now: u64) -> GetRegionInfoResponse {
        GetRegionInfoResponse {
            region: self.node.region().to_string(),
            head_seq: self.node.head_seq(),
            sim_time_ms: now,
            seed: self.node.seed(),
            next_due_ms: self.node.state().next_due_ms().unwrap_or(0),
            virtual_clock: self.node.clock().as_virtual().is_some(),
        }
    }

    pub fn new(node: Arc<RegionNode>) -> Self {
        RegionService {
            node,
            closing: None,
        }
    }

    /// Ends every event stream with UNAVAILABLE once `closing` turns true.
    pub fn with_closing(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }
}

/// The stream of `StreamEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

/// `stream` until `closing` turns true, then one UNAVAILABLE item and the end.
pub(crate) fn until_closing(
    stream: impl Stream<Item = Result<Event, Status>> + Send + 'static,
    mut closing: watch::Receiver<bool>,
) -> EventStream {
    let stop = Box::pin(async move {
        // A dropped sender means nobody will ever close: wait forever.
        if closing.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let state = (Box::pin(stream), stop, false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut stream, mut stop, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                biased;
                _ = &mut stop => Some((
                    Err(Status::unavailable(
                        "the region node is shutting down; resume from the next seq",
                    )),
                    (stream, stop, true),
                )),
                item = stream.next() => item.map(|i| (i, (stream, stop, false))),
            }
        },
    ))
}

fn status_from_log(e: &LogError) -> Status {
    Status::internal(format!("event log: {e}"))
}

fn status_from_region(e: &RegionError) -> Status {
    match e {
        RegionError::Log(l) => status_from_log(l),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Region for RegionService {
    async fn get_region_info(
        &self,
        _request: Request<GetRegionInfoRequest>,
    ) -> Result<Response<GetRegionInfoResponse>, Status> {
        Ok(Response::new(self.info(self.node.now_ms())))
    }

    #[tracing::instrument(skip_all, fields(region = %self.node.region()))]
    async fn set_clock_skew(
        &self,
        request: Request<amisim_proto::RegionSetClockSkewRequest>,
    ) -> Result<Response<GetRegionInfoResponse>, Status> {
        let skew_ms = request.into_inner().skew_ms;
        let clock = self.node.clock();
        let Some(clock) = clock.as_skewed() else {
            return Err(Status::failed_precondition(
                "this node's clock takes no skew (a node embedded without a skewed clock)",
            ));
        };
        clock.set_skew_ms(skew_ms);
        let now = self.node.now_ms();
        tracing::warn!(skew_ms, now_ms = now, "clock skew set");
        Ok(Response::new(self.info(now)))
    }

    #[tracing::instrument(skip_all, fields(region = %self.node.region()))]
    async fn advance_clock(
        &self,
        request: Request<amisim_proto::RegionAdvanceClockRequest>,
    ) -> Result<Response<GetRegionInfoResponse>, Status> {
        let r = request.into_inner();
        let clock = self.node.clock();
        let Some(clock) = clock.as_virtual() else {
            return Err(Status::failed_precondition(
                "this node runs on a scaled clock; start it with --clock virtual to move time by hand",
            ));
        };
        // `as_virtual` is the shared base clock; a skewed node reads base + skew, and that
        // reading (the node's own) is what the answer reports.
        if r.to_ms > 0 {
            clock.set(r.to_ms);
        } else {
            clock.advance(r.by_ms);
        }
        let now = self.node.now_ms();
        tracing::info!(
            now_ms = now,
            by_ms = r.by_ms,
            to_ms = r.to_ms,
            "clock moved"
        );
        Ok(Response::new(self.info(now)))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let r = request.into_inner();
        tracing::info!(
            region = %self.node.region(),
            from_seq = r.from_seq,
            follow = r.follow,
            "event stream opened"
        );
        let stream = amisim_log::tail(self.node.log(), r.from_seq, r.follow)
            .map(|item| item.map_err(|e| status_from_log(&e)));
        match self.closing.clone() {
            None => Ok(Response::new(Box::pin(stream))),
            Some(closing) => Ok(Response::new(until_closing(stream, closing))),
        }
    }

    async fn execute_saga_step(
        &self,
        request: Request<SagaStep>,
    ) -> Result<Response<SagaStepResponse>, Status> {
        // The step's events carry the id: drawn from the node's seed when the caller sends none.
        let request_id =
            crate::ec2_service::request_id_or(request.metadata(), || self.node.fresh_request_id());
        let step = request.into_inner();
        let span = tracing::info_span!(
            "saga_step",
            region = %self.node.region(),
            correlation_id = %step.correlation_id,
            request_id = %request_id,
        );
        match self
            .node
            .execute(ids::SYSTEM_ACCOUNT, &request_id, Command::Saga(step))
            .instrument(span)
            .await
        {
            Ok((Reply::Saga(r), _seq)) => Ok(Response::new(*r)),
            Ok(_) => Err(Status::internal("saga step got a foreign reply")),
            Err(e) => Err(crate::ec2_service::status_from_ec2(&e, &request_id)),
        }
    }

    async fn get_state_digest(
        &self,
        request: Request<GetStateDigestRequest>,
    ) -> Result<Response<GetStateDigestResponse>, Status> {
        let replay = request.into_inner().replay;
        // The published state names the seq it reflects, so digest and seq always match.
        let state = self.node.state();
        let region = self.node.region().to_string();
        let log = self.node.log();
        // Hashing a big state and replaying a big log are long CPU and disk work: off the
        // async workers.
        let work = tokio::task::spawn_blocking(move || {
            let digest = state.digest();
            let replay_digest = if replay {
                replay_to(&region, log.as_ref(), state.seq)?.digest()
            } else {
                String::new()
            };
            Ok::<_, RegionError>(GetStateDigestResponse {
                region,
                seq: state.seq,
                digest,
                replay_digest,
            })
        });
        match work.await {
            Ok(Ok(r)) => Ok(Response::new(r)),
            Ok(Err(e)) => Err(status_from_region(&e)),
            Err(e) => Err(Status::internal(format!("digest task failed: {e}"))),
        }
    }
}
