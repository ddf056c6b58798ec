//! The `amisim.v1.Chaos` service (chaos.proto, ADR 0008): the simulated clocks of the region
//! nodes and the live link table.
//!
//! - Clock: `AdvanceClock` / `AdvanceToNextTimer` fan out `Region.AdvanceClock{to_ms}` to every
//!   node. The target is computed once (the latest node's now + ms; the earliest due timer), and
//!   sent as an absolute time, so nodes sharing one in-process clock (`amisim dev`) move once
//!   and all nodes end at the same instant. These calls use the raw channels: clock control is
//!   not subject to the link faults it helps to study.
//! - Links: `SetLink` / `ClearLink` / `ResetLinks` change the [`LinkControl`] shared with the
//!   saga driver and the chaos layer; the change acts on the next transfer and the next call.
//!   Each change is first recorded as a `LinkConditionChanged` event in the home region's log
//!   ([`ChaosControl::home_region`]: `us-east-1` if routed, else the first routed region by
//!   name) through the internal step `RecordLinkCondition`; a change that cannot be recorded is
//!   not applied (UNAVAILABLE), so the audit trail never misses a condition.
//!
//! - Nodes: `ListNodes`, `KillNode`, `PauseNode`, `ResumeNode`, `RestartNode`, `SetClockSkew`
//!   act through the [`NodeFaults`] of the cluster the coordinator runs in
//!   ([`ChaosControl::with_faults`]: `amisim dev`, `amisim chaos run`); without one they answer
//!   FAILED_PRECONDITION. The implementation records each fault in the audit trail (so faults
//!   the experiment runner injects directly are recorded too). Killing or restarting the
//!   coordinator through itself answers first and acts [`SELF_FAULT_DELAY`] later, so the answer
//!   gets out; a kill of itself needs a `down_for_ms` (nothing else could restart it). With node
//!   faults, the clock calls skip nodes that are paused or down (they would not answer) and
//!   compute their targets on the unskewed clock (a node's reading less its skew), so a skewed
//!   node does not drag every clock forward.
//!
//! With an accounts file, every call needs `authorization: Bearer <operator token>` (the same
//! credential the nodes' internal services take, ADR 0009).

use std::sync::Arc;

use amisim_chaos::{
    Distribution, LinkControl, LinkModel, LinkSpec, NodeFaultError, NodeFaults, NodeKind, NodeState,
};
use amisim_proto::chaos_server::{Chaos, ChaosServer};
use amisim_proto::latency_distribution::Kind;
use amisim_proto::{
    AdvanceClockRequest, AdvanceToNextTimerRequest, ClearLinkRequest, ClearLinkResponse,
    ClockResponse, GetClockRequest, GetRegionInfoRequest, KillNodeRequest, LatencyDistribution,
    Link, LinkConditionChanged, ListLinksRequest, ListLinksResponse, ListNodesRequest,
    ListNodesResponse, NodeResponse, NormalLatency, ParetoLatency, PauseNodeRequest,
    RecordLinkCondition, RegionAdvanceClockRequest, RegionClock, ResetLinksRequest,
    RestartNodeRequest, ResumeNodeRequest, SagaStep, SetClockSkewRequest, SetLinkRequest,
    SetLinkResponse, UniformLatency,
};
use tonic::{Request, Response, Status};

use crate::gateway::RegionRoutes;

/// How long one node may take to answer a clock call.
const CLOCK_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after answering a kill or restart of the coordinator itself the fault is applied.
pub const SELF_FAULT_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// The Chaos service of one coordinator.
#[derive(Debug, Clone)]
pub struct ChaosControl {
    routes: RegionRoutes,
    links: LinkControl,
    /// `Some`: calls must carry this bearer token (`Some("")`: an accounts file without an
    /// operator token — every call is refused).
    token: Option<String>,
    /// The node faults of the cluster this coordinator runs in.
    faults: Option<Arc<dyn NodeFaults>>,
}

impl ChaosControl {
    /// Controls the nodes of `routes` and the table `links`.
    pub fn new(routes: RegionRoutes, links: LinkControl) -> Self {
        ChaosControl {
            routes,
            links,
            token: None,
            faults: None,
        }
    }

    /// Serves the `*Node` RPCs through `faults`.
    pub fn with_faults(mut self, faults: Arc<dyn NodeFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    fn faults(&self) -> Result<&Arc<dyn NodeFaults>, Status> {
        self.faults.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "node faults need a coordinator that runs its nodes: `amisim dev` or \
                 `amisim chaos run` (a stand-alone `amisim coordinator` cannot reach into the \
                 processes of its region nodes)",
            )
        })
    }

    /// The regions the clock calls reach, each with its clock skew: every routed region, less
    /// those the cluster reports paused or down (they would not answer).
    fn clock_regions(&self) -> Vec<(String, i64)> {
        let nodes = self.faults.as_ref().map(|f| f.nodes()).unwrap_or_default();
        self.routes
            .regions()
            .filter_map(|r| match nodes.iter().find(|n| n.name == r) {
                Some(n) if n.state != NodeState::Running => None,
                Some(n) => Some((r.to_string(), n.clock_skew_ms)),
                None => Some((r.to_string(), 0)),
            })
            .collect()
    }

    /// A node as the wire shows it (`NOT_FOUND` if unknown).
    fn node_info(&self, name: &str) -> Result<amisim_proto::NodeInfo, Status> {
        let nodes = self.faults()?.nodes();
        nodes
            .iter()
            .find(|n| n.name == name)
            .map(node_to_pb)
            .ok_or_else(|| {
                fault_status(NodeFaultError::UnknownNode {
                    node: name.to_string(),
                    known: amisim_chaos::nodes::known_names(&nodes),
                })
            })
    }

    /// The answer of a node-fault call: the node as the wire shows it now.
    fn node_response(&self, name: &str) -> Result<Response<NodeResponse>, Status> {
        Ok(Response::new(NodeResponse {
            node: Some(self.node_info(name)?),
        }))
    }

    /// Requires the accounts file's operator token on every call.
    pub fn with_accounts(mut self, accounts: &amisim_core::Accounts) -> Self {
        self.token = Some(accounts.operator_token().unwrap_or_default().to_string());
        self
    }

    pub fn into_server(self) -> ChaosServer<Self> {
        ChaosServer::new(self)
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let sent = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match sent {
            Some(t) if !token.is_empty() && t == token => Ok(()),
            Some(_) => Err(Status::permission_denied(
                "the Chaos service takes only the operator token",
            )),
            None => Err(Status::unauthenticated(
                "the Chaos service needs authorization: Bearer <operator token>",
            )),
        }
    }

    /// Every node's clock (GetRegionInfo over the raw channels).
    async fn clocks(&self) -> Result<Vec<RegionClock>, Status> {
        self.each_clock(|mut c| async move { c.get_region_info(GetRegionInfoRequest {}).await })
            .await
    }

    /// Moves every node's clock to `to_ms` (never backwards).
    async fn set_all(&self, to_ms: u64) -> Result<Vec<RegionClock>, Status> {
        self.each_clock(move |mut c| async move {
            c.advance_clock(RegionAdvanceClockRequest { by_ms: 0, to_ms })
                .await
        })
        .await
    }

    /// Runs one clock call on every region of [`Self::clock_regions`], in order.
    ///
    /// With a node-fault handle (`amisim dev`, the in-process lab) the handle already leaves
    /// out the nodes that are down or paused, so any failure is an error. Without one (a
    /// stand-alone coordinator, the lab's processes mode) the coordinator cannot tell a
    /// crashed region from a broken one: a region that does not answer (`UNAVAILABLE` or the
    /// call timeout) is left out of the answer with a warning, so the clocks of the others
    /// still move; when no region answers, the call fails.
    async fn each_clock<F, Fut>(&self, call: F) -> Result<Vec<RegionClock>, Status>
    where
        F: Fn(crate::operator::OperatorRegionClient) -> Fut,
        Fut: std::future::Future<
            Output = Result<Response<amisim_proto::GetRegionInfoResponse>, Status>,
        >,
    {
        let regions = self.clock_regions();
        let lenient = self.faults.is_none();
        let mut out = Vec::new();
        let mut skipped: Option<Status> = None;
        for (region, _) in &regions {
            let region = region.as_str();
            let answer =
                tokio::time::timeout(CLOCK_CALL_TIMEOUT, call(self.direct_client(region)?))
                    .await
                    .map_err(|_| Status::unavailable(format!("region {region} did not answer")))
                    .and_then(|r| r.map_err(|s| relay(region, s)));
            let info = match answer {
                Ok(r) => r.into_inner(),
                Err(s) if lenient && s.code() == tonic::Code::Unavailable => {
                    tracing::warn!(target: "amisim::chaos", region, error = %s.message(),
                        "region unreachable: its clock is left out");
                    skipped = Some(s);
                    continue;
                }
                Err(s) => return Err(s),
            };
            out.push(RegionClock {
                region: region.to_string(),
                now_ms: info.sim_time_ms,
                next_due_ms: info.next_due_ms,
                virtual_clock: info.virtual_clock,
            });
        }
        match skipped {
            Some(s) if out.is_empty() => Err(s),
            _ => Ok(out),
        }
    }

    fn direct_client(&self, region: &str) -> Result<crate::operator::OperatorRegionClient, Status> {
        let channel = self
            .routes
            .get(region)
            .cloned()
            .ok_or_else(|| Status::internal(format!("region {region} is not routed")))?;
        Ok(crate::operator::region_client(
            channel,
            self.routes.operator().clone(),
        ))
    }

    /// Where link changes are recorded: `us-east-1` (the gateway's default region) if routed,
    /// else the first routed region by name.
    pub fn home_region(&self) -> Option<&str> {
        let mut regions = self.routes.regions();
        let first = regions.next();
        if self.routes.get(crate::gateway::DEFAULT_REGION).is_some() {
            Some(crate::gateway::DEFAULT_REGION)
        } else {
            first
        }
    }

    /// Writes `change` into the home region's log (raw channel, bounded wait).
    async fn record(&self, mut change: LinkConditionChanged) -> Result<(), Status> {
        change.seed = self.links.seed();
        let home = self
            .home_region()
            .ok_or_else(|| Status::internal("no region to record the change in"))?
            .to_string();
        let mut client = self.direct_client(&home)?;
        let step = SagaStep {
            correlation_id: String::new(),
            depends_on: Vec::new(),
            step: Some(amisim_proto::saga_step::Step::RecordLinkCondition(
                RecordLinkCondition {
                    change: Some(change),
                },
            )),
        };
        tokio::time::timeout(CLOCK_CALL_TIMEOUT, client.execute_saga_step(step))
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "link change not applied: {home} did not answer to record it"
                ))
            })?
            .map_err(|s| {
                Status::unavailable(format!(
                    "link change not applied: cannot record it in {home}: {}",
                    s.message()
                ))
            })?;
        Ok(())
    }

    fn list(&self) -> ListLinksResponse {
        let t = self.links.table();
        ListLinksResponse {
            default: Some(to_pb("", "", &t.default)),
            links: t
                .links
                .iter()
                .map(|l| to_pb(&l.from, &l.to, &l.model))
                .collect(),
            seed: self.links.seed(),
        }
    }
}

impl ChaosControl {
    /// The latest reading of the (unskewed) shared clock among `clocks`.
    fn latest_base(&self, clocks: &[RegionClock]) -> u64 {
        let skews = self.clock_regions();
        clocks
            .iter()
            .map(|c| unskew(c.now_ms, skew_of(&skews, &c.region)))
            .max()
            .unwrap_or(0)
    }
}

fn skew_of(skews: &[(String, i64)], region: &str) -> i64 {
    skews
        .iter()
        .find(|(r, _)| r == region)
        .map_or(0, |(_, s)| *s)
}

/// A skewed reading back on the shared clock (saturating).
fn unskew(ms: u64, skew: i64) -> u64 {
    (i128::from(ms) - i128::from(skew)).clamp(0, i128::from(u64::MAX)) as u64
}

/// The wire form of a node.
fn node_to_pb(n: &amisim_chaos::NodeInfo) -> amisim_proto::NodeInfo {
    amisim_proto::NodeInfo {
        name: n.name.clone(),
        kind: n.kind.as_str().to_string(),
        state: n.state.as_str().to_string(),
        url: n.url.clone(),
        clock_skew_ms: n.clock_skew_ms,
        restarts: n.restarts,
        pid: n.pid.unwrap_or(0),
    }
}

/// Applies `fault` to this coordinator [`SELF_FAULT_DELAY`] from now, so that the call that
/// asked for it is answered first; `what` names it in the log ("killing", "restarting").
fn fault_self_later<F>(what: &'static str, fault: F)
where
    F: std::future::Future<Output = Result<(), NodeFaultError>> + Send + 'static,
{
    tokio::spawn(async move {
        tokio::time::sleep(SELF_FAULT_DELAY).await;
        if let Err(e) = fault.await {
            tracing::error!(target: "amisim::chaos", error = %e, "{what} the coordinator failed");
        }
    });
}

/// A refused or failed node fault as a status.
fn fault_status(e: NodeFaultError) -> Status {
    let message = e.to_string();
    match e {
        NodeFaultError::UnknownNode { .. } => Status::not_found(message),
        NodeFaultError::WrongState { .. } => Status::failed_precondition(message),
        NodeFaultError::Invalid(_) => Status::invalid_argument(message),
        NodeFaultError::Unsupported(_) => Status::unimplemented(message),
        NodeFaultError::Failed { .. } => Status::unavailable(message),
    }
}

/// A node name from a request: required.
fn node_name(name: &str) -> Result<&str, Status> {
    let name = name.trim();
    if name.is_empty() {
        Err(Status::invalid_argument(
            "node is required: a region name or `coordinator`",
        ))
    } else {
        Ok(name)
    }
}

/// The audit record of one change (`model`: the link set, for `set`).
fn change(action: &str, from: &str, to: &str, model: Option<&LinkModel>) -> LinkConditionChanged {
    let mut c = LinkConditionChanged {
        action: action.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        ..Default::default()
    };
    if let Some(m) = model {
        c.latency_ms = m.latency_ms;
        c.bandwidth_bytes_per_s = m.bandwidth_bytes_per_s;
        c.distribution = match m.distribution {
            Distribution::Fixed => "fixed".into(),
            Distribution::Uniform { min_ms, max_ms } => format!("uniform({min_ms}..{max_ms})"),
            Distribution::Normal { mean_ms, stddev_ms } => {
                format!("normal({mean_ms}, {stddev_ms})")
            }
            Distribution::Pareto { scale_ms, shape } => format!("pareto({scale_ms}, {shape})"),
        };
        c.jitter_ms = m.jitter_ms;
        c.loss = m.loss;
        c.partitioned = m.partitioned;
        c.timeout_ms = m.timeout_ms;
        c.slow_close_ms = m.slow_close_ms;
        c.description = m.to_string();
    }
    c
}

/// A node's refusal, named.
fn relay(region: &str, s: Status) -> Status {
    Status::new(s.code(), format!("region {region}: {}", s.message()))
}

/// The wire form of a link.
pub fn to_pb(from: &str, to: &str, m: &LinkModel) -> Link {
    let kind = match m.distribution {
        Distribution::Fixed => None,
        Distribution::Uniform { min_ms, max_ms } => {
            Some(Kind::Uniform(UniformLatency { min_ms, max_ms }))
        }
        Distribution::Normal { mean_ms, stddev_ms } => {
            Some(Kind::Normal(NormalLatency { mean_ms, stddev_ms }))
        }
        Distribution::Pareto { scale_ms, shape } => {
            Some(Kind::Pareto(ParetoLatency { scale_ms, shape }))
        }
    };
    Link {
        from: from.to_string(),
        to: to.to_string(),
        latency_ms: m.latency_ms,
        bandwidth_bytes_per_s: m.bandwidth_bytes_per_s,
        distribution: kind.map(|k| LatencyDistribution { kind: Some(k) }),
        jitter_ms: m.jitter_ms,
        loss: m.loss,
        partitioned: m.partitioned,
        timeout_ms: m.timeout_ms,
        slow_close_ms: m.slow_close_ms,
    }
}

/// A link from the wire, checked (region names, model).
pub fn from_pb(l: &Link) -> Result<LinkSpec, Status> {
    let distribution = match l.distribution.as_ref().and_then(|d| d.kind.as_ref()) {
        None => Distribution::Fixed,
        Some(Kind::Uniform(u)) => Distribution::Uniform {
            min_ms: u.min_ms,
            max_ms: u.max_ms,
        },
        Some(Kind::Normal(n)) => Distribution::Normal {
            mean_ms: n.mean_ms,
            stddev_ms: n.stddev_ms,
        },
        Some(Kind::Pareto(p)) => Distribution::Pareto {
            scale_ms: p.scale_ms,
            shape: p.shape,
        },
    };
    let model = LinkModel {
        latency_ms: l.latency_ms,
        bandwidth_bytes_per_s: if l.bandwidth_bytes_per_s == 0 {
            LinkModel::CROSS_REGION.bandwidth_bytes_per_s
        } else {
            l.bandwidth_bytes_per_s
        },
        distribution,
        jitter_ms: l.jitter_ms,
        loss: l.loss,
        partitioned: l.partitioned,
        timeout_ms: l.timeout_ms,
        slow_close_ms: l.slow_close_ms,
    };
    // The config path checks names and the model in one place.
    let spec = LinkSpec {
        from: l.from.clone(),
        to: l.to.clone(),
        model,
    };
    amisim_chaos::LinkTable::from_specs([spec.clone()])
        .and_then(|t| t.validate())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

#[tonic::async_trait]
impl Chaos for ChaosControl {
    async fn advance_clock(
        &self,
        request: Request<AdvanceClockRequest>,
    ) -> Result<Response<ClockResponse>, Status> {
        self.check(&request)?;
        let ms = request.into_inner().ms;
        let clocks = self.clocks().await?;
        if let Some(c) = clocks.iter().find(|c| !c.virtual_clock) {
            return Err(Status::failed_precondition(format!(
                "region {} runs on a scaled clock; start the nodes with --clock virtual",
                c.region
            )));
        }
        let latest = self.latest_base(&clocks);
        let to = latest.saturating_add(ms);
        tracing::info!(target: "amisim::chaos", by_ms = ms, to_ms = to, "advancing every clock");
        Ok(Response::new(ClockResponse {
            regions: self.set_all(to).await?,
        }))
    }

    async fn get_clock(
        &self,
        request: Request<GetClockRequest>,
    ) -> Result<Response<ClockResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(ClockResponse {
            regions: self.clocks().await?,
        }))
    }

    async fn advance_to_next_timer(
        &self,
        request: Request<AdvanceToNextTimerRequest>,
    ) -> Result<Response<ClockResponse>, Status> {
        self.check(&request)?;
        let clocks = self.clocks().await?;
        if let Some(c) = clocks.iter().find(|c| !c.virtual_clock) {
            return Err(Status::failed_precondition(format!(
                "region {} runs on a scaled clock; start the nodes with --clock virtual",
                c.region
            )));
        }
        // On the unskewed clock: a region skewed +S has its timer due S earlier.
        let skews = self.clock_regions();
        let next = clocks
            .iter()
            .filter(|c| c.next_due_ms > 0)
            .map(|c| unskew(c.next_due_ms, skew_of(&skews, &c.region)))
            .min();
        let latest = self.latest_base(&clocks);
        match next {
            // Nothing pending, or already due (its timer is firing): nothing to move.
            None => Ok(Response::new(ClockResponse { regions: clocks })),
            Some(t) => {
                // Never behind the latest node: all nodes end at one instant.
                let to = t.max(latest);
                tracing::info!(target: "amisim::chaos", to_ms = to, "advancing to the next timer");
                Ok(Response::new(ClockResponse {
                    regions: self.set_all(to).await?,
                }))
            }
        }
    }

    async fn set_link(
        &self,
        request: Request<SetLinkRequest>,
    ) -> Result<Response<SetLinkResponse>, Status> {
        self.check(&request)?;
        let link = request
            .into_inner()
            .link
            .ok_or_else(|| Status::invalid_argument("link is required"))?;
        let spec = from_pb(&link)?;
        self.record(change("set", &spec.from, &spec.to, Some(&spec.model)))
            .await?;
        self.links
            .set(spec.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(target: "amisim::chaos", link = %spec, "link condition changed");
        Ok(Response::new(SetLinkResponse {
            link: Some(to_pb(&spec.from, &spec.to, &spec.model)),
        }))
    }

    async fn list_links(
        &self,
        request: Request<ListLinksRequest>,
    ) -> Result<Response<ListLinksResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(self.list()))
    }

    async fn clear_link(
        &self,
        request: Request<ClearLinkRequest>,
    ) -> Result<Response<ClearLinkResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        if self.links.get_listed(&r.from, &r.to).is_some() {
            self.record(change("clear", &r.from, &r.to, None)).await?;
        }
        let cleared = self.links.clear(&r.from, &r.to);
        tracing::info!(target: "amisim::chaos", from = %r.from, to = %r.to, cleared, "link cleared");
        Ok(Response::new(ClearLinkResponse { cleared }))
    }

    async fn reset_links(
        &self,
        request: Request<ResetLinksRequest>,
    ) -> Result<Response<ListLinksResponse>, Status> {
        self.check(&request)?;
        self.record(change("reset", "", "", None)).await?;
        self.links.reset();
        tracing::info!(target: "amisim::chaos", "links reset to the start");
        Ok(Response::new(self.list()))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(ListNodesResponse {
            nodes: self.faults()?.nodes().iter().map(node_to_pb).collect(),
        }))
    }

    async fn kill_node(
        &self,
        request: Request<KillNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let name = node_name(&r.node)?;
        let faults = self.faults()?.clone();
        let info = self.node_info(name)?;
        let down_for = (r.down_for_ms > 0).then(|| std::time::Duration::from_millis(r.down_for_ms));
        if info.kind == NodeKind::Coordinator.as_str() {
            let Some(down_for) = down_for else {
                return Err(Status::invalid_argument(
                    "killing the coordinator through its own Chaos service needs down_for_ms > 0: \
                     nothing else could restart it",
                ));
            };
            tracing::warn!(target: "amisim::chaos", down_for_ms = r.down_for_ms, "killing the coordinator (this one) after answering");
            fault_self_later("killing", async move {
                faults.kill(amisim_chaos::COORDINATOR, Some(down_for)).await
            });
            return Ok(Response::new(NodeResponse { node: Some(info) }));
        }
        faults.kill(name, down_for).await.map_err(fault_status)?;
        tracing::info!(target: "amisim::chaos", node = name, down_for_ms = r.down_for_ms, "node killed");
        self.node_response(name)
    }

    async fn pause_node(
        &self,
        request: Request<PauseNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let name = node_name(&r.node)?;
        let faults = self.faults()?;
        if self.node_info(name)?.kind == NodeKind::Coordinator.as_str() {
            // It would hold this very answer, and every later call, ResumeNode included.
            return Err(Status::failed_precondition(
                "pausing the coordinator through its own Chaos service would hold every later \
                 call, ResumeNode included: pause it from the experiment runner's fault timeline",
            ));
        }
        faults.pause(name).await.map_err(fault_status)?;
        tracing::info!(target: "amisim::chaos", node = name, "node paused");
        self.node_response(name)
    }

    async fn resume_node(
        &self,
        request: Request<ResumeNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let name = node_name(&r.node)?;
        self.faults()?.resume(name).await.map_err(fault_status)?;
        tracing::info!(target: "amisim::chaos", node = name, "node resumed");
        self.node_response(name)
    }

    async fn restart_node(
        &self,
        request: Request<RestartNodeRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let name = node_name(&r.node)?;
        let faults = self.faults()?.clone();
        let info = self.node_info(name)?;
        if info.kind == NodeKind::Coordinator.as_str() {
            tracing::warn!(target: "amisim::chaos", "restarting the coordinator (this one) after answering");
            fault_self_later("restarting", async move {
                faults.restart(amisim_chaos::COORDINATOR).await
            });
            return Ok(Response::new(NodeResponse { node: Some(info) }));
        }
        faults.restart(name).await.map_err(fault_status)?;
        tracing::info!(target: "amisim::chaos", node = name, "node restarted");
        self.node_response(name)
    }

    async fn set_clock_skew(
        &self,
        request: Request<SetClockSkewRequest>,
    ) -> Result<Response<NodeResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let name = node_name(&r.region)?;
        self.faults()?
            .set_clock_skew(name, r.skew_ms)
            .await
            .map_err(fault_status)?;
        tracing::info!(target: "amisim::chaos", region = name, skew_ms = r.skew_ms, "clock skew set");
        self.node_response(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_cluster_node_faults_are_refused_with_the_way_to_get_them() {
        let chaos = ChaosControl::new(
            RegionRoutes::new(),
            LinkControl::new(amisim_chaos::LinkTable::default(), 0),
        );
        let e = chaos
            .list_nodes(Request::new(ListNodesRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("amisim dev"), "{}", e.message());
        let e = chaos
            .kill_node(Request::new(KillNodeRequest {
                node: "us-east-1".into(),
                down_for_ms: 0,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let e = chaos
            .pause_node(Request::new(PauseNodeRequest { node: " ".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn skewed_readings_go_back_to_the_shared_clock() {
        assert_eq!(unskew(10_000, 5_000), 5_000);
        assert_eq!(unskew(10_000, -5_000), 15_000);
        assert_eq!(unskew(1, 5_000), 0);
        assert_eq!(
            fault_status(NodeFaultError::Unsupported("x".into())).code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn links_round_trip_the_wire_and_bad_ones_are_refused() {
        for s in [
            "us-east-1:eu-west-1=30000,150",
            "us-east-1:eu-west-1=0,1,pareto=50/1.5,jitter=5,loss=0.1,partition",
            "coordinator:us-east-1=0,1,uniform=1-9,timeout=100,slow_close=7",
            "a-1:b-1=0,1,normal=10/2",
        ] {
            let spec: LinkSpec = s.parse().unwrap();
            let back = from_pb(&to_pb(&spec.from, &spec.to, &spec.model)).unwrap();
            assert_eq!(back, spec, "{s}");
        }
        let mut bad = to_pb("us-east-1", "EU", &LinkModel::default());
        assert_eq!(
            from_pb(&bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        bad.to = "eu-west-1".into();
        bad.loss = 3.0;
        assert!(from_pb(&bad).unwrap_err().message().contains("loss"));
        // Bandwidth 0 on the wire means the default.
        bad.loss = 0.0;
        bad.bandwidth_bytes_per_s = 0;
        assert_eq!(
            from_pb(&bad).unwrap().model.bandwidth_bytes_per_s,
            LinkModel::CROSS_REGION.bandwidth_bytes_per_s
        );
    }
}
