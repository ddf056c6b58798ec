//! `amisim audit lookup` and `amisim audit export`: the region's CloudTrail-shaped records
//! (ADR 0007), online from a node (`Audit.LookupEvents`) or offline from its data directory.
//!
//! Online, `--endpoint` is a region node or the coordinator (ADR 0010): on the coordinator,
//! `lookup` merges every region's records newest first (or reads one with `--region`), and
//! `as-of` reads every region as of a simulated time or a token (`us-east-1:12,eu-west-1:7`).
//!
//! Offline, `--data DIR` is the region's data directory (for `amisim dev`: DATA/<region>): the
//! state log in DIR (its timer and saga events give the `SystemTransition` records) and the
//! request log in DIR/requests (the `AwsApiCall` records). The node must be stopped (sled locks
//! both while it runs).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use amisim_log::{DiskLog, EventLog, MemoryLog, SledOptions};
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
    /// A running region node or the coordinator (its `Audit` service), e.g.
    /// http://127.0.0.1:50052.
    #[arg(long, env = "AMISIM_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// A stopped region's data directory (for `amisim dev`: DATA/<region>).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// With --endpoint on the coordinator: only this region's records (default: every region,
    /// merged newest first).
    #[arg(long, value_name = "REGION", requires = "endpoint")]
    pub region: Option<String>,

    /// Shorthand for `--attribute ResourceName=ID`: the records naming this resource.
    #[arg(long, value_name = "ID", conflicts_with = "attribute")]
    pub resource: Option<String>,

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
fn open_logs(dir: &Path) -> anyhow::Result<(DiskLog, Arc<dyn EventLog>)> {
    let state = crate::audit::open_log(dir)?;
    let requests_dir = dir.join(audit::REQUESTS_DIR);
    let requests: Arc<dyn EventLog> = if requests_dir.is_dir() {
        let opts = SledOptions {
            verify_on_open: false,
            ..SledOptions::default()
        };
        Arc::new(
            DiskLog::open_existing(&requests_dir, opts).with_context(|| {
                format!(
                    "cannot open the request log at {} (is a node still running on it?)",
                    requests_dir.display()
                )
            })?,
        )
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

/// Verifies the request log in `DIR/requests`: its hash chain, then its signed digests
/// (`DIR/request-digests.jsonl`, checked with `key`), so a truncated request log is caught.
/// The report and how many digests there are; `None` when there is no request log.
pub fn verify_requests(
    dir: &Path,
    key: Option<&audit::VerifyingKey>,
) -> anyhow::Result<Option<(audit::VerifyReport, usize)>> {
    let requests_dir = dir.join(audit::REQUESTS_DIR);
    if !requests_dir.is_dir() {
        return Ok(None);
    }
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    let log = DiskLog::open_existing(&requests_dir, opts)
        .with_context(|| format!("cannot open the request log at {}", requests_dir.display()))?;
    let digests = audit::read_request_digests(dir)?;
    let report = audit::verify_log_of(&log, &digests, key, audit::REQUESTS_LOG)?;
    Ok(Some((report, digests.len())))
}

/// A channel to `url` (a bare `host:port` means `http://`).
async fn channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid --endpoint URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))
}

/// Adds `authorization: Bearer TOKEN` (the operator token) when given.
fn authorize<T>(request: &mut tonic::Request<T>, token: Option<&str>) -> anyhow::Result<()> {
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .context("--token must be visible ASCII")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

/// What DescribeImages / DescribeSnapshots answered at a point in history, from a region node
/// or from the coordinator (every region, or `--region`).
#[derive(Debug, clap::Args)]
pub struct AsOfArgs {
    /// A running region node or the coordinator.
    #[arg(long, env = "AMISIM_ENDPOINT", value_name = "URL")]
    pub endpoint: String,

    /// The point: a seq (`123`, with --region or on a node), an ISO 8601 simulated time
    /// (`2024-05-01T12:00:00Z`: each region at its last event at or before it), or a token
    /// (`us-east-1:12,eu-west-1:7`: each region at its seq, others empty). Default: now.
    #[arg(long, value_name = "SEQ|TIME|TOKEN", value_parser = parse_point)]
    pub at: Option<amisim_proto::as_of::Point>,

    /// On the coordinator: read only this region.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Snapshots instead of images.
    #[arg(long)]
    pub snapshots: bool,

    /// Read as this account (`x-amisim-account`; the auditor chooses whose view to reproduce).
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,

    /// Only these ids (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,

    /// The operator token, when the servers run with an accounts file.
    #[arg(
        long,
        env = "AMISIM_OPERATOR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Output: a table, or the answer as JSON (`{"regions": [...], "images": [...]}`).
    #[arg(long, value_enum, default_value_t = crate::replay::Format::Table)]
    pub format: crate::replay::Format,
}

/// `123` a seq, an ISO time, or a `region:seq,…` token.
fn parse_point(s: &str) -> Result<amisim_proto::as_of::Point, String> {
    use amisim_proto::as_of::Point;
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Point::Seq)
            .map_err(|_| format!("seq {t} is out of range"));
    }
    if let Ok(ms) = audit::parse_iso_ms(t) {
        return Ok(Point::SimTimeMs(ms));
    }
    match audit::parse_token(t) {
        Ok(pairs) if !pairs.is_empty() => Ok(Point::Token(t.to_string())),
        _ => Err(format!(
            "{t:?} is neither a seq, an ISO 8601 UTC time (2024-05-01T12:00:00Z) nor a token \
             (us-east-1:12,eu-west-1:7)"
        )),
    }
}

pub async fn as_of(args: AsOfArgs) -> anyhow::Result<()> {
    use amisim_proto::{
        AsOf, DescribeImagesAsOfRequest, DescribeImagesRequest, DescribeSnapshotsAsOfRequest,
        DescribeSnapshotsRequest,
    };
    let mut client = AuditClient::new(channel(&args.endpoint).await?)
        .max_decoding_message_size(64 * 1024 * 1024);
    let as_of = args.at.clone().map(|p| AsOf { point: Some(p) });
    let region = args.region.clone().unwrap_or_default();
    fn prepare<T>(
        mut r: tonic::Request<T>,
        token: Option<&str>,
        account: Option<&str>,
    ) -> anyhow::Result<tonic::Request<T>> {
        authorize(&mut r, token)?;
        if let Some(a) = account {
            let v = a.parse().context("--account must be visible ASCII")?;
            r.metadata_mut().insert("x-amisim-account", v);
        }
        Ok(r)
    }
    let (token, account) = (args.token.as_deref(), args.account.as_deref());
    // (region, seq, time) of each region read, and the rows.
    let (points, rows, json) = if args.snapshots {
        let request = prepare(
            tonic::Request::new(DescribeSnapshotsAsOfRequest {
                as_of,
                request: Some(DescribeSnapshotsRequest {
                    snapshot_ids: args.ids.clone(),
                    ..Default::default()
                }),
                region,
            }),
            token,
            account,
        )?;
        let a = client
            .describe_snapshots_as_of(request)
            .await
            .map_err(|s| anyhow::anyhow!("DescribeSnapshotsAsOf failed: {}", s.message()))?
            .into_inner();
        let (rows, json) = as_of_output(
            tagged(&a.snapshots, &a.response, |s| &s.snapshots),
            ("snapshots", "snapshot"),
            |s| [s.snapshot_id.clone(), s.state.clone(), s.owner_id.clone()],
            points_json(&a.regions, a.seq, a.sim_time_ms),
        );
        (a.regions, rows, json)
    } else {
        let request = prepare(
            tonic::Request::new(DescribeImagesAsOfRequest {
                as_of,
                request: Some(DescribeImagesRequest {
                    image_ids: args.ids.clone(),
                    ..Default::default()
                }),
                region,
            }),
            token,
            account,
        )?;
        let a = client
            .describe_images_as_of(request)
            .await
            .map_err(|s| anyhow::anyhow!("DescribeImagesAsOf failed: {}", s.message()))?
            .into_inner();
        let (rows, json) = as_of_output(
            tagged(&a.images, &a.response, |r| &r.images),
            ("images", "image"),
            |i| [i.image_id.clone(), i.state.clone(), i.name.clone()],
            points_json(&a.regions, a.seq, a.sim_time_ms),
        );
        (a.regions, rows, json)
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        crate::replay::Format::Json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
        crate::replay::Format::Table => {
            for p in &points {
                writeln!(
                    out,
                    "# {} as of seq {} ({})",
                    p.region,
                    p.seq,
                    if p.seq == 0 {
                        "-".to_string()
                    } else {
                        amisim_core::time::iso(p.sim_time_ms)
                    }
                )?;
            }
            writeln!(
                out,
                "{:<12}  {:<24}  {:<10}  NAME/OWNER",
                "REGION", "ID", "STATE"
            )?;
            for [r, id, state, name] in rows {
                writeln!(out, "{r:<12}  {id:<24}  {state:<10}  {name}")?;
            }
        }
    }
    Ok(())
}

/// The items of an as-of answer with their regions: the coordinator's tagged list, or a node's
/// answer (its items, region unknown: empty).
fn tagged<'a, T, R, I>(
    tagged: &'a [T],
    response: &'a Option<R>,
    items: impl Fn(&'a R) -> &'a Vec<I>,
) -> Vec<(String, &'a I)>
where
    T: RegionTagged<I>,
{
    if !tagged.is_empty() {
        return tagged
            .iter()
            .filter_map(|t| t.item().map(|i| (t.region().to_string(), i)))
            .collect();
    }
    response
        .as_ref()
        .map(|r| items(r).iter().map(|i| (String::new(), i)).collect())
        .unwrap_or_default()
}

/// A region-tagged item of an as-of answer.
trait RegionTagged<I> {
    fn region(&self) -> &str;
    fn item(&self) -> Option<&I>;
}

impl RegionTagged<amisim_proto::Image> for amisim_proto::RegionImage {
    fn region(&self) -> &str {
        &self.region
    }
    fn item(&self) -> Option<&amisim_proto::Image> {
        self.image.as_ref()
    }
}

impl RegionTagged<amisim_proto::Snapshot> for amisim_proto::RegionSnapshot {
    fn region(&self) -> &str {
        &self.region
    }
    fn item(&self) -> Option<&amisim_proto::Snapshot> {
        self.snapshot.as_ref()
    }
}

/// The table rows (region, id, state, name or owner) and the JSON of an as-of answer's
/// `items`: `{"regions": points, <key>: [{"region": .., <item_key>: ..}, ..]}`.
fn as_of_output<I: serde::Serialize>(
    items: Vec<(String, &I)>,
    (key, item_key): (&str, &str),
    row: impl Fn(&I) -> [String; 3],
    points: Value,
) -> (Vec<[String; 4]>, Value) {
    let rows = items
        .iter()
        .map(|(r, i)| {
            let [id, state, name] = row(i);
            [r.clone(), id, state, name]
        })
        .collect();
    let items: Vec<Value> = items
        .into_iter()
        .map(|(r, i)| json!({"region": r, item_key: audit::requests::to_json(i)}))
        .collect();
    (rows, json!({"regions": points, key: items}))
}

fn points_json(points: &[amisim_proto::RegionPoint], seq: u64, time: u64) -> Value {
    if points.is_empty() {
        return json!([{"seq": seq, "sim_time_ms": time}]);
    }
    Value::Array(
        points
            .iter()
            .map(|p| json!({"region": p.region, "seq": p.seq, "sim_time_ms": p.sim_time_ms}))
            .collect(),
    )
}

pub async fn lookup(args: LookupArgs) -> anyhow::Result<()> {
    let mut attributes: Vec<(String, String)> = args.attribute.clone().into_iter().collect();
    if let Some(id) = &args.resource {
        attributes.push(("ResourceName".to_string(), id.clone()));
    }
    let mut found: Vec<TrailEvent> = Vec::new();
    let mut token = String::new();
    let limit = usize::try_from(args.max).unwrap_or(usize::MAX);
    match (&args.endpoint, &args.data) {
        (Some(url), _) => {
            let mut client = AuditClient::new(channel(url).await?);
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
                    region: args.region.clone().unwrap_or_default(),
                });
                authorize(&mut request, args.token.as_deref())?;
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
