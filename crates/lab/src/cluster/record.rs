//! The audit record of a node fault: one `LinkConditionChanged` event with `node` set (see
//! events.proto), written through the internal `Region.ExecuteSagaStep` step
//! `RecordLinkCondition` — the same path the `Chaos` service records link changes by.

use std::time::Duration;

use amisim_chaos::{NodeFaultError, NodeKind, NodeState};
use amisim_coordinator::OperatorAuth;
use amisim_proto::{LinkConditionChanged, RecordLinkCondition, SagaStep};
use tonic::transport::Endpoint;

use super::Inner;

/// How long the home region may take to record a fault.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// A fault, as recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    Kill { down_for: Option<Duration> },
    Pause,
    Resume,
    Restart,
    Skew { skew_ms: i64 },
}

impl Fault {
    fn event(self, node: &str, seed: u64) -> LinkConditionChanged {
        let mut e = LinkConditionChanged {
            node: node.to_string(),
            seed,
            ..Default::default()
        };
        let (action, description) = match self {
            Fault::Kill { down_for } => {
                e.down_for_ms =
                    down_for.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                (
                    "kill_node",
                    match down_for {
                        Some(d) => format!("{node} killed, down for {} ms", d.as_millis()),
                        None => format!("{node} killed, down until restarted"),
                    },
                )
            }
            Fault::Pause => ("pause_node", format!("{node} paused")),
            Fault::Resume => ("resume_node", format!("{node} resumed")),
            Fault::Restart => ("restart_node", format!("{node} restarted")),
            Fault::Skew { skew_ms } => {
                e.clock_skew_ms = skew_ms;
                ("set_clock_skew", format!("{node} clock skew {skew_ms} ms"))
            }
        };
        e.action = action.to_string();
        e.description = description;
        e
    }
}

/// Records `fault` on `node` before it is applied: an error means it must not be applied.
pub(crate) async fn record(inner: &Inner, fault: Fault, node: &str) -> Result<(), NodeFaultError> {
    let Some(home) = home_region(inner) else {
        return Err(NodeFaultError::Failed {
            node: node.to_string(),
            message: "not applied: no running region to record the fault in".into(),
        });
    };
    write(inner, &home, fault.event(node, inner.links.seed()))
        .await
        .map_err(|m| NodeFaultError::Failed {
            node: node.to_string(),
            message: format!("not applied: cannot record it in {home}: {m}"),
        })
}

/// Records `fault` after it was applied (a resume or restart: the node may be the only one
/// that can record it); a failure is logged.
pub(crate) async fn record_after(inner: &Inner, fault: Fault, node: &str) {
    if let Err(e) = record(inner, fault, node).await {
        tracing::error!(target: "amisim::lab", node, error = %e, ?fault,
            "the fault was applied but could not be recorded in the audit trail");
    }
}

/// `us-east-1` if it is a running region, else the first running region in order.
fn home_region(inner: &Inner) -> Option<String> {
    let running: Vec<&str> = inner
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Region && n.status().state == NodeState::Running)
        .map(|n| n.name.as_str())
        .collect();
    running
        .iter()
        .find(|r| **r == amisim_coordinator::gateway::DEFAULT_REGION)
        .or(running.first())
        .map(|r| r.to_string())
}

async fn write(inner: &Inner, region: &str, change: LinkConditionChanged) -> Result<(), String> {
    let url = inner
        .region(region)
        .map(|n| n.url())
        .ok_or_else(|| format!("no region {region}"))?;
    let channel = Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(RECORD_TIMEOUT)
        .connect_lazy();
    let auth = match &inner.spec.accounts {
        Some(a) => OperatorAuth::from_accounts(a),
        None => OperatorAuth::none(),
    };
    let mut client = amisim_coordinator::operator::region_client(channel, auth);
    let step = SagaStep {
        correlation_id: String::new(),
        depends_on: Vec::new(),
        step: Some(amisim_proto::saga_step::Step::RecordLinkCondition(
            RecordLinkCondition {
                change: Some(change),
            },
        )),
    };
    tokio::time::timeout(RECORD_TIMEOUT, client.execute_saga_step(step))
        .await
        .map_err(|_| "it did not answer".to_string())?
        .map_err(|s| s.message().to_string())?;
    Ok(())
}
