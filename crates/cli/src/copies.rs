//! `amisim copies`: the copies a coordinator knows (`Coordinator.ListCopies`), as a table or
//! JSON.

use std::time::Duration;

use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::{CopyInfo, ListCopiesRequest, ListCopiesResponse};
use anyhow::Context;
use serde_json::json;
use tonic::transport::Endpoint;

/// List the CopyImage / CopySnapshot copies in flight or recently finished, across regions.
///
/// Asks a running coordinator (`amisim coordinator` or `amisim dev`) over gRPC. Progress is
/// computed from each destination region's simulated clock.
#[derive(Debug, clap::Args)]
pub struct CopiesArgs {
    /// The coordinator's address (the one the gateway listens on).
    #[arg(
        long,
        env = "AMISIM_COORDINATOR",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,

    /// Output: a table, or the ListCopies answer as JSON (`{"copies":[...],"saga_driver":...}`).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Only copies from or into this region. Repeat for several.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,

    /// Only copies in this phase: awaiting-source-read, awaiting-start, transferring,
    /// available, completed, failed, cancelled, or the groups in-flight / finished. Repeat for
    /// several.
    #[arg(long = "phase", value_name = "PHASE")]
    pub phases: Vec<String>,

    /// List finished copies up to this many simulated seconds after they finished (default:
    /// 86400, a simulated day).
    #[arg(long, value_name = "SECONDS", conflicts_with = "all")]
    pub finished_within: Option<u64>,

    /// List every finished copy the logs hold.
    #[arg(long)]
    pub all: bool,

    /// Only copies requested by this 12-digit account. Repeat for several.
    #[arg(long = "account-id", value_name = "ACCOUNT")]
    pub account_ids: Vec<String>,

    /// Bearer token to authenticate with, for a coordinator started with --accounts (sent as
    /// `authorization: Bearer <TOKEN>`). Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long,
        env = "AMISIM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub async fn run(args: CopiesArgs) -> anyhow::Result<()> {
    let url = if args.coordinator.contains("://") {
        args.coordinator.clone()
    } else {
        format!("http://{}", args.coordinator)
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid --coordinator URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    let finished_within_ms = if args.all {
        Some(u64::MAX)
    } else {
        args.finished_within.map(|s| s.saturating_mul(1000))
    };
    let mut request = tonic::Request::new(ListCopiesRequest {
        regions: args.regions,
        phases: args.phases,
        finished_within_ms,
        account_ids: args.account_ids,
        consistency_token: String::new(),
    });
    if let Some(token) = &args.token {
        let mut value = tonic::metadata::AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()))
            .context("--token must be non-empty visible ASCII (no spaces)")?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    let answer = CoordinatorClient::new(channel)
        .list_copies(request)
        .await
        .map_err(|s| anyhow::anyhow!("ListCopies failed: {}", s.message()))?
        .into_inner();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&to_json(&answer))?),
        Format::Table => print!("{}", table(&answer)),
    }
    Ok(())
}

fn event_ref(r: &Option<amisim_proto::EventRef>) -> serde_json::Value {
    match r {
        Some(r) => json!({"region": r.region, "seq": r.seq}),
        None => serde_json::Value::Null,
    }
}

fn copy_json(c: &CopyInfo) -> serde_json::Value {
    json!({
        "copy_id": c.copy_id,
        "kind": c.kind,
        "source_region": c.source_region,
        "source_id": c.source_id,
        "destination_region": c.destination_region,
        "destination_id": c.destination_id,
        "account_id": c.account_id,
        "phase": c.phase,
        "failure_code": c.failure_code,
        "failure_message": c.failure_message,
        "progress_percent": c.progress_percent,
        "requested_at_ms": c.requested_at_ms,
        "started_at_ms": c.started_at_ms,
        "due_at_ms": c.due_at_ms,
        "finished_at_ms": c.finished_at_ms,
        "transfer_bytes": c.transfer_bytes,
        "destination_state": c.destination_state,
        "requested_event": event_ref(&c.requested_event),
        "source_read_event": event_ref(&c.source_read_event),
        "saga": c.saga.as_ref().map(|s| json!({
            "step": s.step,
            "attempts": s.attempts,
            "last_error": s.last_error,
            "outcome": s.outcome,
        })),
    })
}

fn to_json(r: &ListCopiesResponse) -> serde_json::Value {
    json!({
        "copies": r.copies.iter().map(copy_json).collect::<Vec<_>>(),
        "consistency_token": r.consistency_token,
        "saga_driver": r.saga_driver.as_ref().map(|d| json!({
            "running": d.running,
            "active": d.active,
            "queued": d.queued,
            "steps_sent": d.steps_sent,
            "step_failures": d.step_failures,
            "copies_driven": d.copies_driven,
        })),
    })
}

/// The table: one line per copy, then the driver's line.
fn table(r: &ListCopiesResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if r.copies.is_empty() {
        out.push_str("no copies\n");
    } else {
        let _ = writeln!(
            out,
            "{:<22} {:<8} {:<36} {:<36} {:<20} {:>4} {:<12} {:<24} NOTE",
            "COPY", "KIND", "SOURCE", "DESTINATION", "PHASE", "%", "ACCOUNT", "REQUESTED"
        );
        for c in &r.copies {
            let note = if !c.failure_message.is_empty() || !c.failure_code.is_empty() {
                [c.failure_code.as_str(), c.failure_message.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(": ")
            } else {
                c.saga
                    .as_ref()
                    .filter(|s| s.step == "backing-off")
                    .map(|s| format!("retrying (attempt {}): {}", s.attempts, s.last_error))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                out,
                "{:<22} {:<8} {:<36} {:<36} {:<20} {:>4} {:<12} {:<24} {}",
                c.copy_id,
                c.kind,
                format!("{}/{}", c.source_region, c.source_id),
                format!("{}/{}", c.destination_region, c.destination_id),
                c.phase,
                c.progress_percent,
                c.account_id,
                amisim_core::time::iso(c.requested_at_ms),
                note
            );
        }
    }
    if let Some(d) = &r.saga_driver {
        let _ = writeln!(
            out,
            "\nsaga driver: {}, {} active, {} queued, {} copies driven, {} steps sent ({} failed)",
            if d.running { "running" } else { "not running" },
            d.active,
            d.queued,
            d.copies_driven,
            d.steps_sent,
            d.step_failures
        );
    }
    let _ = writeln!(out, "as of {}", r.consistency_token);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::{CopySagaStatus, SagaDriverStatus};

    fn sample() -> ListCopiesResponse {
        ListCopiesResponse {
            copies: vec![
                CopyInfo {
                    copy_id: "copy-0123456789abcdef0".into(),
                    kind: "image".into(),
                    source_region: "us-east-1".into(),
                    source_id: "ami-0123456789abcdef0".into(),
                    destination_region: "eu-west-1".into(),
                    destination_id: "ami-0fedcba9876543210".into(),
                    account_id: "123456789012".into(),
                    phase: "transferring".into(),
                    progress_percent: 42,
                    requested_at_ms: 1_714_566_896_123,
                    saga: Some(CopySagaStatus {
                        step: "done".into(),
                        attempts: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                CopyInfo {
                    copy_id: "copy-00000000000000001".into(),
                    kind: "snapshot".into(),
                    phase: "failed".into(),
                    failure_message: "Source snapshot ID is not valid".into(),
                    ..Default::default()
                },
            ],
            consistency_token: "eu-west-1:7,us-east-1:9".into(),
            saga_driver: Some(SagaDriverStatus {
                running: true,
                copies_driven: 2,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_table_shows_each_copy_and_the_driver() {
        let t = table(&sample());
        assert!(t.contains("COPY"), "{t}");
        assert!(t.contains("us-east-1/ami-0123456789abcdef0"), "{t}");
        assert!(t.contains("transferring"), "{t}");
        assert!(t.contains("  42 "), "{t}");
        assert!(t.contains("2024-05-01T12:34:56.123Z"), "{t}");
        assert!(t.contains("Source snapshot ID is not valid"), "{t}");
        assert!(t.contains("saga driver: running"), "{t}");
        assert!(t.contains("as of eu-west-1:7,us-east-1:9"), "{t}");
        let empty = table(&ListCopiesResponse::default());
        assert!(empty.starts_with("no copies"), "{empty}");
    }

    #[test]
    fn the_json_has_every_field() {
        let j = to_json(&sample());
        assert_eq!(j["copies"][0]["phase"], "transferring");
        assert_eq!(j["copies"][0]["progress_percent"], 42);
        assert_eq!(j["copies"][0]["saga"]["step"], "done");
        assert!(j["copies"][1]["requested_event"].is_null());
        assert_eq!(j["saga_driver"]["copies_driven"], 2);
    }
}
