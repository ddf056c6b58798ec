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
//! With an accounts file, every call needs `authorization: Bearer <operator token>` (the same
//! credential the nodes' internal services take, ADR 0009).

use amisim_chaos::{Distribution, LinkControl, LinkModel, LinkSpec};
use amisim_proto::chaos_server::{Chaos, ChaosServer};
use amisim_proto::latency_distribution::Kind;
use amisim_proto::{
    AdvanceClockRequest, AdvanceToNextTimerRequest, ClearLinkRequest, ClearLinkResponse,
    ClockResponse, GetClockRequest, GetRegionInfoRequest, LatencyDistribution, Link,
    LinkConditionChanged, ListLinksRequest, ListLinksResponse, NormalLatency, ParetoLatency,
    RecordLinkCondition, RegionAdvanceClockRequest, RegionClock, ResetLinksRequest, SagaStep,
    SetLinkRequest, SetLinkResponse, UniformLatency,
};
use tonic::{Request, Response, Status};

use crate::gateway::RegionRoutes;

/// How long one node may take to answer a clock call.
const CLOCK_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The Chaos service of one coordinator.
#[derive(Debug, Clone)]
pub struct ChaosControl {
    routes: RegionRoutes,
    links: LinkControl,
    /// `Some`: calls must carry this bearer token (`Some("")`: an accounts file without an
    /// operator token — every call is refused).
    token: Option<String>,
}

impl ChaosControl {
    /// Controls the nodes of `routes` and the table `links`.
    pub fn new(routes: RegionRoutes, links: LinkControl) -> Self {
        ChaosControl {
            routes,
            links,
            token: None,
        }
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
        let mut out = Vec::new();
        for region in self.routes.regions() {
            let mut client = self.direct_client(region)?;
            let info = tokio::time::timeout(
                CLOCK_CALL_TIMEOUT,
                client.get_region_info(GetRegionInfoRequest {}),
            )
            .await
            .map_err(|_| Status::unavailable(format!("region {region} did not answer")))?
            .map_err(|s| relay(region, s))?
            .into_inner();
            out.push(RegionClock {
                region: region.to_string(),
                now_ms: info.sim_time_ms,
                next_due_ms: info.next_due_ms,
                virtual_clock: info.virtual_clock,
            });
        }
        Ok(out)
    }

    /// Moves every node's clock to `to_ms` (never backwards).
    async fn set_all(&self, to_ms: u64) -> Result<Vec<RegionClock>, Status> {
        let mut out = Vec::new();
        for region in self.routes.regions() {
            let mut client = self.direct_client(region)?;
            let info = tokio::time::timeout(
                CLOCK_CALL_TIMEOUT,
                client.advance_clock(RegionAdvanceClockRequest { by_ms: 0, to_ms }),
            )
            .await
            .map_err(|_| Status::unavailable(format!("region {region} did not answer")))?
            .map_err(|s| relay(region, s))?
            .into_inner();
            out.push(RegionClock {
                region: region.to_string(),
                now_ms: info.sim_time_ms,
                next_due_ms: info.next_due_ms,
                virtual_clock: info.virtual_clock,
            });
        }
        Ok(out)
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
        let latest = clocks.iter().map(|c| c.now_ms).max().unwrap_or(0);
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
        let next = clocks
            .iter()
            .filter(|c| c.next_due_ms > 0)
            .map(|c| c.next_due_ms)
            .min();
        let latest = clocks.iter().map(|c| c.now_ms).max().unwrap_or(0);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
