//! `amisim audit lookup` and `amisim audit export`: the region's CloudTrail-shaped records
//! (ADR 0007), online from a node (`Audit.LookupEvents`) or offline from its data directory.
//!
//! Offline, `--data DIR` is the region's data directory (for `amisim dev`: DATA/<region>): the
//! state log in DIR (its timer and saga events give the `SystemTransition` records) and the
//! request log in DIR/requests (the `AwsApiCall` records). The node must be stopped (sled locks
//! both while it runs).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use amisim_log::{EventLog, MemoryLog, SledLog, SledOptions};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::{LookupAttribute, LookupEventsRequest, TrailEvent};
use amisim_region::audit::{self, Attribute, Export, Lookup, Record};
use anyhow::Context;
use serde_json::{json, Value};
use tonic::transport::Endpoint;

/// Search a region's records (CloudTrail's LookupEvents), newest first.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["endpoint", "data"])))]
pub struct LookupArgs {
    /// A running region node (its `Audit` service), e.g. http://127.0.0.1:50052.
    #[arg(long, env = "AMISIM_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// A stopped region's data directory (for `amisim dev`: DATA/<region>).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// With --endpoint on a node started with an accounts file: the operator token (sent as
    /// `authorization: Bearer TOKEN`; the Audit service takes no other credential).
    #[arg(
        long,
        env = "AMISIM_OPERATOR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// One lookup attribute, KEY=VALUE: EventId, EventName, ReadOnly (true|false), Username
    /// (an account id, or `system`), ResourceType (AWS::EC2::Image, ...), ResourceName (a
    /// resource id), EventSource, AccessKeyId.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_attribute)]
    pub attribute: Option<(String, String)>,

    /// Only records at or after this simulated time (ISO 8601 UTC, e.g. 2024-05-01T12:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = audit::parse_iso_ms)]
    pub start: Option<u64>,

    /// Only records at or before this simulated time.
    #[arg(long, value_name = "TIME", value_parser = audit::parse_iso_ms)]
    pub end: Option<u64>,

    /// At most this many records (fetched in pages of up to 50).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max: u64,

    /// Output: a table, or `{"Events": [...]}` as the AWS CLI prints it.
    #[arg(long, value_enum, default_value_t = crate::replay::Format::Table)]
    pub format: crate::replay::Format,
}

/// Export a stopped region's records, oldest first: CloudTrail's `{"Records": [...]}` or one
/// JSON record per line.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The region's data directory (for `amisim dev`: DATA/<region>).
    #[arg(long, env = "AMISIM_DATA", value_name = "DIR")]
    pub data: PathBuf,

    /// `cloudtrail` (one `{"Records": [...]}` document) or `jsonl` (a record per line).
    #[arg(long, value_enum, default_value_t = ExportFormat::Cloudtrail)]
    pub format: ExportFormat,

    /// Only records at or after this simulated time (ISO 8601 UTC).
    #[arg(long, value_name = "TIME", value_parser = audit::parse_iso_ms)]
    pub from: Option<u64>,

    /// Only records at or before this simulated time.
    #[arg(long, value_name = "TIME", value_parser = audit::parse_iso_ms)]
    pub to: Option<u64>,

    /// Leave out the SystemTransition records (timer and saga transitions).
    #[arg(long)]
    pub api_calls_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Cloudtrail,
    Jsonl,
}

fn parse_attribute(s: &str) -> Result<(String, String), String> {
    Attribute::parse_pair(s).map_err(|e| e.to_string())?;
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// The state log and the request log of a stopped region's data directory.
fn open_logs(dir: &Path) -> anyhow::Result<(SledLog, Arc<dyn EventLog>)> {
    let state = crate::audit::open_log(dir)?;
    let requests_dir = dir.join(audit::REQUESTS_DIR);
    let requests: Arc<dyn EventLog> = if requests_dir.is_dir() {
        let opts = SledOptions {
            verify_on_open: false,
            ..SledOptions::default()
        };
        Arc::new(SledLog::open(&requests_dir, opts).with_context(|| {
            format!(
                "cannot open the request log at {} (is a node still running on it?)",
                requests_dir.display()
            )
        })?)
    } else {
        eprintln!(
            "amisim audit: no request log in {} (written by nodes since ADR 0007): \
             SystemTransition records only",
            requests_dir.display()
        );
        Arc::new(MemoryLog::new())
    };
    Ok((state, requests))
}

/// Verifies the hash chain of the request log in `DIR/requests`: its head seq, `None` when
/// there is none, or the error naming the first bad seq.
pub fn verify_requests(dir: &Path) -> anyhow::Result<Option<u64>> {
    let requests_dir = dir.join(audit::REQUESTS_DIR);
    if !requests_dir.is_dir() {
        return Ok(None);
    }
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    let log = SledLog::open(&requests_dir, opts)
        .with_context(|| format!("cannot open the request log at {}", requests_dir.display()))?;
    let head = log.verify().with_context(|| {
        format!(
            "the request log at {} is not intact",
            requests_dir.display()
        )
    })?;
    Ok(Some(head.seq))
}

pub async fn lookup(args: LookupArgs) -> anyhow::Result<()> {
    let attributes: Vec<(String, String)> = args.attribute.clone().into_iter().collect();
    let mut found: Vec<TrailEvent> = Vec::new();
    let mut token = String::new();
    let limit = usize::try_from(args.max).unwrap_or(usize::MAX);
    match (&args.endpoint, &args.data) {
        (Some(url), _) => {
            let url = if url.contains("://") {
                url.clone()
            } else {
                format!("http://{url}")
            };
            let channel = Endpoint::from_shared(url.clone())
                .with_context(|| format!("invalid --endpoint URL {url:?}"))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .connect()
                .await
                .with_context(|| format!("cannot reach the region node at {url}"))?;
            let mut client = AuditClient::new(channel);
            loop {
                let page = (limit - found.len()).min(50) as u32;
                let mut request = tonic::Request::new(LookupEventsRequest {
                    lookup_attributes: attributes
                        .iter()
                        .map(|(k, v)| LookupAttribute {
                            attribute_key: k.clone(),
                            attribute_value: v.clone(),
                        })
                        .collect(),
                    start_time_ms: args.start,
                    end_time_ms: args.end,
                    max_results: page,
                    next_token: token.clone(),
                });
                if let Some(t) = &args.token {
                    let value = format!("Bearer {t}")
                        .parse()
                        .context("--token must be visible ASCII")?;
                    request.metadata_mut().insert("authorization", value);
                }
                let answer = client
                    .lookup_events(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("LookupEvents failed: {}", s.message()))?
                    .into_inner();
                found.extend(answer.events);
                token = answer.next_token;
                if token.is_empty() || found.len() >= limit {
                    break;
                }
            }
        }
        (None, Some(dir)) => {
            let (state, requests) = open_logs(dir)?;
            loop {
                let page = (limit - found.len()).min(50) as u32;
                let lookup = Lookup::new(&attributes, args.start, args.end, page, &token)?;
                let (records, next) = lookup.run(requests.as_ref(), Some(&state))?;
                found.extend(records.iter().map(Record::to_proto));
                match next {
                    Some(t) if found.len() < limit => token = t,
                    _ => break,
                }
            }
        }
        (None, None) => anyhow::bail!("give --endpoint URL or --data DIR"),
    }
    print_events(&found, args.format)
}

fn print_events(events: &[TrailEvent], format: crate::replay::Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        crate::replay::Format::Json => {
            let events: Vec<Value> = events
                .iter()
                .map(|e| {
                    json!({
                        "EventId": e.event_id,
                        "EventName": e.event_name,
                        "ReadOnly": e.read_only.to_string(),
                        "EventTime": e.event_time,
                        "EventSource": e.event_source,
                        "Username": e.username,
                        "Resources": e.resources.iter().map(|r| json!({
                            "ResourceType": r.resource_type,
                            "ResourceName": r.resource_name,
                        })).collect::<Vec<_>>(),
                        "CloudTrailEvent": e.cloud_trail_event,
                    })
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&json!({ "Events": events }))?
            )?;
        }
        crate::replay::Format::Table => {
            writeln!(
                out,
                "{:<20}  {:<32}  {:<12}  {:<5}  {:<24}  {:<36}  RESOURCES",
                "EVENT TIME", "EVENT NAME", "USER", "READ", "ERROR", "EVENT ID"
            )?;
            for e in events {
                let resources: Vec<&str> = e
                    .resources
                    .iter()
                    .map(|r| r.resource_name.as_str())
                    .collect();
                writeln!(
                    out,
                    "{:<20}  {:<32}  {:<12}  {:<5}  {:<24}  {:<36}  {}",
                    e.event_time,
                    e.event_name,
                    e.username,
                    e.read_only,
                    if e.error_code.is_empty() {
                        "-"
                    } else {
                        &e.error_code
                    },
                    e.event_id,
                    resources.join(",")
                )?;
            }
        }
    }
    Ok(())
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (state, requests) = open_logs(&args.data)?;
    let state: Option<&dyn EventLog> = (!args.api_calls_only).then_some(&state as &dyn EventLog);
    let mut export = Export::new(requests.as_ref(), state, args.from, args.to)
        .context("cannot read the logs")?;
    let bar = progress(export.total_events());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.format == ExportFormat::Cloudtrail {
        out.write_all(b"{\"Records\":[")?;
    }
    let mut n: u64 = 0;
    while let Some(record) = export.next_record().context("cannot read the logs")? {
        match args.format {
            ExportFormat::Cloudtrail => {
                if n > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(b"\n")?;
                out.write_all(record.json.as_bytes())?;
            }
            ExportFormat::Jsonl => {
                out.write_all(record.json.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        n += 1;
        if n & 1023 == 0 {
            bar.set_position(export.events_read());
        }
    }
    if args.format == ExportFormat::Cloudtrail {
        out.write_all(b"\n]}\n")?;
    }
    out.flush()?;
    bar.finish_and_clear();
    tracing::info!(records = n, "export done");
    Ok(())
}

/// A progress bar on stderr for long exports (a terminal and at least 20,000 events).
fn progress(total: u64) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if total < 20_000 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(5));
    if let Ok(style) = ProgressStyle::with_template(
        "exporting {bar:40} {pos}/{len} events ({percent}%, {per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}
