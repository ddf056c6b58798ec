//! Request records (ADR 0007): a CloudTrail-shaped record of every API call made to the node,
//! kept in a separate hash-chained request log, written off the request path.
//!
//! The `Ec2` and `Kms` services hand an [`ApiCall`] to the node's [`RequestRecorder`] once the
//! call's outcome is known (success, EC2/KMS error, `AuthFailure`, `DryRunOperation`). The
//! recorder only queues it (a bounded channel, [`DEFAULT_QUEUE_CAPACITY`]: a request never
//! waits for the disk; see "A full queue" below); its
//! background thread gathers queued calls for [`RECORD_LINGER`] (up to
//! [`MAX_RECORDS_PER_FLUSH`]; at once when a flush waits), builds their
//! CloudTrail JSON and appends them as [`ApiCallRecorded`] events to the request log with one
//! flush. [`RequestRecorder::flush`] waits until everything queued before it is durable
//! (`Audit.LookupEvents` calls it first, so an auditor sees every earlier call; tests use it
//! as the "recorder is idle" hook).
//!
//! The event times of the request log never decrease (the recorder clamps a call that
//! completed a little before the previous one was queued), so time ranges are binary searches.
//!
//! # A full queue: a counted, visible drop
//!
//! `record` is called on the request path of every call and must not wait (a read would then
//! wait for a disk flush, and `record` is synchronous). So when the queue is full — the disk
//! cannot keep up with the call rate for [`DEFAULT_QUEUE_CAPACITY`] records — the record is
//! dropped, never the call: the drop is counted ([`RequestRecorder::dropped`]), logged
//! (`warn`, at most once per batch), and the recorder appends a record of its own with the next
//! batch: `eventName: RecordsDropped`, `eventSource: cloudtrail.amazonaws.com`, `eventType:
//! AwsServiceEvent`, `serviceEventDetails: {droppedRecords, queueCapacity}`, so the gap is in
//! the trail itself (LookupEvents `EventName=RecordsDropped`), not only in a log file. Memory
//! stays bounded whatever the call rate. (Backpressure was the alternative: it would make the
//! slowest disk the limit of every read.)
//!
//! # Signed digests
//!
//! With a request-log signer (the node's key: [`super::AuditTrail::request_signer`], bound by
//! [`RequestRecorder::attach_signer`] — the node's Audit service does it when it starts — or
//! given in [`RecorderOptions::signer`]), the recorder's thread signs a digest every N records
//! after their append, and [`RequestRecorder::flush`] signs the head (a clean shutdown flushes;
//! so do LookupEvents and VerifyLog), so a truncated request log is detected like a truncated
//! state log.
//!
//! # Retention
//!
//! LookupEvents shows the records of the last [`RequestRecorder::retention`] of simulated time
//! (CloudTrail's event history: 90 days; `--trail-retention` sets the process default,
//! [`set_default_retention`]). Older records stay in the log: export and verify see them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use amisim_log::{Event, EventLog, LogError};
use amisim_proto::event::Payload;
use amisim_proto::{ApiCallRecorded, ApiCallResource};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

/// `eventVersion` of every record.
pub const EVENT_VERSION: &str = "1.11";
/// `eventSource` of the `Ec2` service.
pub const EC2_SOURCE: &str = "ec2.amazonaws.com";
/// `eventSource` of the `Kms` service.
pub const KMS_SOURCE: &str = "kms.amazonaws.com";
/// The sub-directory of a node's data directory that holds its request log.
pub const REQUESTS_DIR: &str = "requests";
/// At most this many records go into one append (one flush) of the request log.
pub const MAX_RECORDS_PER_FLUSH: usize = 2048;
/// How long the recorder's thread keeps gathering calls after the first of a batch before it
/// appends them (unless [`RequestRecorder::flush`] is waiting, or the batch is full). Records
/// are written off the request path and promise no durability to the caller, so a few ms of
/// gathering are free for clients, while every flush of the request log saved is an fsync that
/// no longer competes with the state log's on the same disk: without it, the request log's
/// small flushes cost a durable RegisterImage load ~25 % of its throughput (docs/performance.md).
pub const RECORD_LINGER: Duration = Duration::from_millis(5);
/// Records queued at most between the request handlers and the recorder's thread (beyond it a
/// record is dropped, counted and reported; see the module docs). At ~1 KiB a record: ~64 MiB.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;
/// How long LookupEvents shows a record by default: CloudTrail's event history keeps 90 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// `eventSource` of the recorder's own `RecordsDropped` records.
pub const CLOUDTRAIL_SOURCE: &str = "cloudtrail.amazonaws.com";
/// `eventName` of the recorder's own record of dropped records.
pub const RECORDS_DROPPED: &str = "RecordsDropped";

/// The process-wide retention of recorders without their own, in ms (0: [`DEFAULT_RETENTION`]).
static DEFAULT_RETENTION_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the retention of every recorder of this process that has none of its own
/// (`--trail-retention`).
pub fn set_default_retention(retention: Duration) {
    let ms = u64::try_from(retention.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    DEFAULT_RETENTION_MS.store(ms, Ordering::Relaxed);
}

/// The process-wide retention ([`DEFAULT_RETENTION`] unless set).
pub fn default_retention() -> Duration {
    match DEFAULT_RETENTION_MS.load(Ordering::Relaxed) {
        0 => DEFAULT_RETENTION,
        ms => Duration::from_millis(ms),
    }
}
use super::resources::MAX_RESOURCES;
/// A claimed (unauthenticated) account id longer than this is cut.
const MAX_CLAIMED_ACCOUNT: usize = 64;

/// One API call and its outcome, as the gRPC edge saw it.
#[derive(Debug, Clone, Default)]
pub struct ApiCall {
    /// `ec2.amazonaws.com` or `kms.amazonaws.com`.
    pub event_source: &'static str,
    /// The action, e.g. `RegisterImage`.
    pub event_name: &'static str,
    pub read_only: bool,
    /// The authenticated account, or `None` if authentication failed.
    pub account_id: Option<String>,
    /// When authentication failed: the account the caller claimed (`x-amisim-account`), if any.
    pub claimed_account: Option<String>,
    pub request_id: String,
    /// The peer address.
    pub source_ip: Option<String>,
    /// The gRPC `user-agent` header.
    pub user_agent: Option<String>,
    /// The request message as lower-camel JSON.
    pub request_parameters: Params,
    /// The response message (successful writes only).
    pub response_elements: Option<Params>,
    /// The error code and message of a failed call.
    pub error: Option<(String, String)>,
    /// Simulated completion time, ms since the Unix epoch.
    pub time_ms: u64,
}

impl ApiCall {
    /// The claimed account of an unauthenticated call, cut to a sane length.
    pub fn claim(value: &str) -> Option<String> {
        let v: String = value.chars().take(MAX_CLAIMED_ACCOUNT).collect();
        (!v.is_empty()).then_some(v)
    }

    fn username(&self) -> String {
        self.account_id
            .clone()
            .or_else(|| self.claimed_account.clone())
            .unwrap_or_default()
    }
}

/// A record's `requestParameters` or `responseElements`: JSON already, or a copy of the message
/// ([`Params::message`]), kept as protobuf bytes in the record and rendered as JSON only when
/// the record is read (ADR 0012): building JSON on the request path, or even on the recorder's
/// thread, cost a durable RegisterImage more than the copy does.
#[derive(Clone)]
pub enum Params {
    /// Rendered.
    Json(Value),
    /// A copy of the call's message.
    Message(Arc<dyn RecordedMessage>),
}

/// A message a record keeps: as bytes, as JSON, and the resources it names.
pub trait RecordedMessage: Send + Sync {
    /// The message as JSON ([`to_json`]).
    fn json(&self) -> Value;
    /// The message as protobuf bytes.
    fn encode(&self) -> Vec<u8>;
    /// Appends the resources the message names ([`resources_of`] of its JSON, without
    /// building it).
    fn collect_resources(&self, out: &mut Vec<(String, String)>);
    /// The message's Rust type: the bytes are only kept when it is the type the RPC's name
    /// decodes to.
    fn message_type(&self) -> std::any::TypeId;
}

struct Typed<T>(T);

impl<T> RecordedMessage for Typed<T>
where
    T: serde::Serialize + prost::Message + Send + Sync + 'static,
{
    fn json(&self) -> Value {
        to_json(&self.0)
    }
    fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }
    fn collect_resources(&self, out: &mut Vec<(String, String)>) {
        super::resources::collect_resources(&self.0, out);
    }
    fn message_type(&self) -> std::any::TypeId {
        std::any::TypeId::of::<T>()
    }
}

impl Params {
    /// A copy of `message`, kept as bytes (rendered when the record is read).
    pub fn message<T>(message: T) -> Params
    where
        T: serde::Serialize + prost::Message + Send + Sync + 'static,
    {
        Params::Message(Arc::new(Typed(message)))
    }

    /// The JSON.
    pub fn render(&self) -> Value {
        match self {
            Params::Json(v) => v.clone(),
            Params::Message(m) => m.json(),
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Params::Json(Value::Null)
    }
}

impl From<Value> for Params {
    fn from(v: Value) -> Self {
        Params::Json(v)
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Params::Json(v) => write!(f, "{v}"),
            Params::Message(_) => f.write_str("<message, rendered when the record is read>"),
        }
    }
}

/// A message as JSON for a record: lower-camel names (the `serde` feature of `amisim-proto`),
/// without unset values (proto3 defaults: `""`, `0`, `false`, `[]`, and `{}`, `null`), as
/// CloudTrail leaves out parameters a caller did not give.
pub fn to_json<T: serde::Serialize>(message: &T) -> Value {
    match serde_json::to_value(message) {
        Ok(v) => prune(v),
        Err(e) => json!({ "amisimError": format!("cannot render the message as JSON: {e}") }),
    }
}

fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        v => v,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, CloudTrail's `eventTime` form.
pub fn event_time(ms: u64) -> String {
    let iso = amisim_core::time::iso(ms);
    match iso.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => iso,
    }
}

/// The resources a record names: every id-shaped string under a key ending in `Id`/`Ids`
/// (`imageId`, `sourceSnapshotId`, `instanceIds`, …) of the request and the response, typed by
/// prefix, and KMS keys under `keyId` / `kmsKeyId` / `targetKeyId` (aliases are not keys).
/// In order of appearance, without duplicates.
pub fn resources_of(values: &[&Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for v in values {
        walk(v, None, &mut out);
    }
    out
}

/// Appends the resources of `v` under `key` to `out` (in the order [`resources_of`] finds
/// them); [`super::resources::collect_resources`] finds the same in a message without its JSON.
pub fn walk(v: &Value, key: Option<&str>, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                walk(v, Some(k), out);
            }
        }
        Value::Array(a) => {
            for v in a {
                walk(v, key, out);
            }
        }
        Value::String(s) => {
            if let Some(typed) = key.and_then(|k| super::resources::classify(k, s)) {
                if out.len() < MAX_RESOURCES && !out.contains(&typed) {
                    out.push(typed);
                }
            }
        }
        _ => {}
    }
}

/// The ARN of a resource in a record's `resources`.
fn arn(region: &str, account: &str, kind: &str, id: &str) -> String {
    match kind {
        "AWS::EC2::Image" => format!("arn:aws:ec2:{region}::image/{id}"),
        "AWS::EC2::Snapshot" => format!("arn:aws:ec2:{region}::snapshot/{id}"),
        "AWS::EC2::Volume" => format!("arn:aws:ec2:{region}:{account}:volume/{id}"),
        "AWS::EC2::Instance" => format!("arn:aws:ec2:{region}:{account}:instance/{id}"),
        "AWS::KMS::Key" => format!("arn:aws:kms:{region}:{account}:key/{id}"),
        _ => id.to_string(),
    }
}

/// The record's `resources` array.
pub fn resources_json(region: &str, account: &str, resources: &[(String, String)]) -> Value {
    Value::Array(
        resources
            .iter()
            .map(|(kind, id)| {
                let mut m = Map::new();
                if !account.is_empty() {
                    m.insert("accountId".into(), json!(account));
                }
                m.insert("type".into(), json!(kind));
                m.insert("ARN".into(), json!(arn(region, account, kind, id)));
                Value::Object(m)
            })
            .collect(),
    )
}

/// The proto service of an `eventSource` (the name [`amisim_proto::visit_rpc`] takes).
fn service_of(event_source: &str) -> Option<&'static str> {
    match event_source {
        EC2_SOURCE => Some("Ec2"),
        KMS_SOURCE => Some("Kms"),
        _ => None,
    }
}

/// The request and response types of an RPC, as [`std::any::TypeId`]s.
struct TypesOf;

impl amisim_proto::RpcVisitor for TypesOf {
    type Output = (std::any::TypeId, std::any::TypeId);
    fn visit<Req, Resp>(self) -> Self::Output
    where
        Req: prost::Message + Default + serde::Serialize + 'static,
        Resp: prost::Message + Default + serde::Serialize + 'static,
    {
        (
            std::any::TypeId::of::<Req>(),
            std::any::TypeId::of::<Resp>(),
        )
    }
}

/// Decodes a stored request (or response) of an RPC and renders it as JSON ([`to_json`]).
struct RenderStored<'a> {
    bytes: &'a [u8],
    response: bool,
}

impl amisim_proto::RpcVisitor for RenderStored<'_> {
    type Output = Value;
    fn visit<Req, Resp>(self) -> Value
    where
        Req: prost::Message + Default + serde::Serialize + 'static,
        Resp: prost::Message + Default + serde::Serialize + 'static,
    {
        let undecodable = |e: prost::DecodeError| json!({ "amisimError": format!("cannot decode the stored message: {e}") });
        if self.response {
            Resp::decode(self.bytes).map_or_else(undecodable, |m| to_json(&m))
        } else {
            Req::decode(self.bytes).map_or_else(undecodable, |m| to_json(&m))
        }
    }
}

/// Stores `params` into a compact record: protobuf bytes when it is a message of the RPC's own
/// type (`expected`), JSON otherwise; appends its resources.
fn store_params(
    params: &Params,
    expected: Option<std::any::TypeId>,
    bytes: &mut Vec<u8>,
    json_text: &mut String,
    resources: &mut Vec<(String, String)>,
) {
    match params {
        Params::Message(m) if expected == Some(m.message_type()) => {
            *bytes = m.encode();
            m.collect_resources(resources);
        }
        other => {
            let v = other.render();
            walk(&v, None, resources);
            *json_text = v.to_string();
        }
    }
}

/// The event of `call` (with its `eventID`) for the request log: a compact record (ADR 0012)
/// that keeps the call's messages as protobuf bytes; [`cloudtrail_json`] renders its
/// CloudTrail record when it is read.
pub fn record_event(region: &str, call: &ApiCall, event_id: &str, wall_time_ms: u64) -> Event {
    let types = service_of(call.event_source)
        .and_then(|service| amisim_proto::visit_rpc(service, call.event_name, TypesOf));
    let username = call.username();
    let mut resources = Vec::new();
    let mut r = ApiCallRecorded {
        compact: true,
        event_name: call.event_name.to_string(),
        event_source: call.event_source.to_string(),
        account_id: username.clone(),
        authenticated: call.account_id.is_some(),
        read_only: call.read_only,
        event_time_ms: call.time_ms,
        source_ip_address: call.source_ip.clone().unwrap_or_default(),
        user_agent: call.user_agent.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some((code, message)) = &call.error {
        r.error_code = code.clone();
        r.error_message = message.clone();
    }
    store_params(
        &call.request_parameters,
        types.map(|t| t.0),
        &mut r.request_message,
        &mut r.request_parameters_json,
        &mut resources,
    );
    if let Some(response) = &call.response_elements {
        r.has_response = true;
        store_params(
            response,
            types.map(|t| t.1),
            &mut r.response_message,
            &mut r.response_elements_json,
            &mut resources,
        );
    }
    r.resources = resources
        .into_iter()
        .map(|(resource_type, resource_name)| ApiCallResource {
            resource_type,
            resource_name,
        })
        .collect();
    Event {
        region: region.to_string(),
        event_id: event_id.to_string(),
        sim_time_ms: call.time_ms,
        wall_time_ms,
        account_id: username,
        request_id: call.request_id.clone(),
        payload: Some(Payload::ApiCallRecorded(r)),
        ..Event::default()
    }
}

/// The CloudTrail record (JSON) of a request-log record: as stored (records written before
/// ADR 0012, and the recorder's own `RecordsDropped`), or rendered from a compact record and
/// its event's envelope.
pub fn cloudtrail_json(e: &Event, r: &ApiCallRecorded) -> String {
    if !r.compact {
        return r.cloudtrail_json.clone();
    }
    let stored = |bytes: &[u8], json_text: &str, response: bool| -> Value {
        if !json_text.is_empty() {
            return serde_json::from_str(json_text).unwrap_or_else(
                |e| json!({ "amisimError": format!("cannot parse the stored JSON: {e}") }),
            );
        }
        service_of(&r.event_source)
            .and_then(|service| {
                amisim_proto::visit_rpc(service, &r.event_name, RenderStored { bytes, response })
            })
            .unwrap_or_else(|| {
                json!({ "amisimError": format!("no RPC {} of {}", r.event_name, r.event_source) })
            })
    };
    let request = stored(&r.request_message, &r.request_parameters_json, false);
    let response = r
        .has_response
        .then(|| stored(&r.response_message, &r.response_elements_json, true));
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let resources: Vec<(String, String)> = r
        .resources
        .iter()
        .map(|x| (x.resource_type.clone(), x.resource_name.clone()))
        .collect();
    let view = RecordView {
        region: &e.region,
        event_source: &r.event_source,
        event_name: &r.event_name,
        account_id: r.authenticated.then(|| r.account_id.clone()),
        claimed_account: (!r.authenticated).then(|| some(&r.account_id)).flatten(),
        time_ms: r.event_time_ms,
        source_ip: some(&r.source_ip_address),
        user_agent: some(&r.user_agent),
        error: (!r.error_code.is_empty()).then(|| (r.error_code.clone(), r.error_message.clone())),
        request_id: &e.request_id,
        event_id: &e.event_id,
        read_only: r.read_only,
    };
    Value::Object(cloudtrail_map(&view, request, response, &resources)).to_string()
}

/// What a CloudTrail record says about its call, besides its messages.
struct RecordView<'a> {
    region: &'a str,
    event_source: &'a str,
    event_name: &'a str,
    /// The authenticated account.
    account_id: Option<String>,
    /// When authentication failed: the account the caller claimed.
    claimed_account: Option<String>,
    time_ms: u64,
    source_ip: Option<String>,
    user_agent: Option<String>,
    error: Option<(String, String)>,
    request_id: &'a str,
    event_id: &'a str,
    read_only: bool,
}

/// The CloudTrail record's fields, in CloudTrail's order.
fn cloudtrail_map(
    call: &RecordView<'_>,
    request_parameters: Value,
    response_elements: Option<Value>,
    resources: &[(String, String)],
) -> Map<String, Value> {
    let account = call.account_id.clone().unwrap_or_default();
    let user_identity = match &call.account_id {
        Some(a) => json!({
            "type": "Root",
            "principalId": a,
            "arn": format!("arn:aws:iam::{a}:root"),
            "accountId": a,
        }),
        None => match &call.claimed_account {
            Some(claimed) => json!({ "type": "Unknown", "accountId": claimed }),
            None => json!({ "type": "Unknown" }),
        },
    };
    let mut m = Map::new();
    m.insert("eventVersion".into(), json!(EVENT_VERSION));
    m.insert("userIdentity".into(), user_identity);
    m.insert("eventTime".into(), json!(event_time(call.time_ms)));
    m.insert("eventSource".into(), json!(call.event_source));
    m.insert("eventName".into(), json!(call.event_name));
    m.insert("awsRegion".into(), json!(call.region));
    m.insert("sourceIPAddress".into(), json!(call.source_ip));
    m.insert("userAgent".into(), json!(call.user_agent));
    if let Some((code, message)) = &call.error {
        m.insert("errorCode".into(), json!(code));
        m.insert("errorMessage".into(), json!(message));
    }
    m.insert("requestParameters".into(), request_parameters);
    m.insert(
        "responseElements".into(),
        response_elements.unwrap_or(Value::Null),
    );
    m.insert("requestID".into(), json!(call.request_id));
    m.insert("eventID".into(), json!(call.event_id));
    m.insert("readOnly".into(), json!(call.read_only));
    if !resources.is_empty() {
        m.insert(
            "resources".into(),
            resources_json(call.region, &account, resources),
        );
    }
    m.insert("eventType".into(), json!("AwsApiCall"));
    m.insert("managementEvent".into(), json!(true));
    if !account.is_empty() {
        m.insert("recipientAccountId".into(), json!(account));
    }
    m.insert("eventCategory".into(), json!("Management"));
    m
}

/// The record of `dropped` records lost to a full queue (see the module docs).
pub fn dropped_event(region: &str, dropped: u64, capacity: usize, time_ms: u64, id: &str) -> Event {
    let details = json!({
        "droppedRecords": dropped,
        "queueCapacity": capacity,
        "reason": "the request-record queue was full: the request log could not keep up",
    });
    let mut m = Map::new();
    m.insert("eventVersion".into(), json!(EVENT_VERSION));
    m.insert(
        "userIdentity".into(),
        json!({"type": "AWSService", "invokedBy": CLOUDTRAIL_SOURCE}),
    );
    m.insert("eventTime".into(), json!(event_time(time_ms)));
    m.insert("eventSource".into(), json!(CLOUDTRAIL_SOURCE));
    m.insert("eventName".into(), json!(RECORDS_DROPPED));
    m.insert("awsRegion".into(), json!(region));
    m.insert("sourceIPAddress".into(), json!(CLOUDTRAIL_SOURCE));
    m.insert("requestParameters".into(), Value::Null);
    m.insert("responseElements".into(), Value::Null);
    m.insert("serviceEventDetails".into(), details);
    m.insert("eventID".into(), json!(id));
    m.insert("readOnly".into(), json!(false));
    m.insert("eventType".into(), json!("AwsServiceEvent"));
    m.insert("managementEvent".into(), json!(true));
    m.insert("eventCategory".into(), json!("Management"));
    Event {
        region: region.to_string(),
        event_id: id.to_string(),
        sim_time_ms: time_ms,
        account_id: amisim_core::ids::SYSTEM_ACCOUNT.to_string(),
        payload: Some(Payload::ApiCallRecorded(ApiCallRecorded {
            cloudtrail_json: Value::Object(m).to_string(),
            event_name: RECORDS_DROPPED.to_string(),
            event_source: CLOUDTRAIL_SOURCE.to_string(),
            account_id: amisim_core::ids::SYSTEM_ACCOUNT.to_string(),
            event_time_ms: time_ms,
            ..Default::default()
        })),
        ..Event::default()
    }
}

/// How a [`RequestRecorder`] runs.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    /// Also record Describe/Get/List calls (CloudTrail does). Default true.
    pub record_reads: bool,
    /// The queue's capacity (default [`DEFAULT_QUEUE_CAPACITY`]; 0 reads as 1).
    pub capacity: usize,
    /// LookupEvents shows records of the last this long of simulated time (default: none of
    /// its own, the process-wide [`default_retention`], 90 days unless set).
    pub retention: Option<Duration>,
    /// Signs digests of the request log (the node's key; [`super::AuditTrail::request_signer`]).
    pub signer: Option<Arc<super::DigestSigner>>,
    /// The seed of the records' `eventID`s (the node's seed; default none: drawn from the OS).
    /// With a seed, the same calls in the same order get the same ids in every replay of the
    /// seed; a restarted node (longer request log) draws a stream of its own.
    pub seed: Option<u64>,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            record_reads: true,
            capacity: DEFAULT_QUEUE_CAPACITY,
            retention: None,
            signer: None,
            seed: None,
        }
    }
}

/// The node's request recorder: a queue in front of the request log and the thread that
/// drains it.
pub struct RequestRecorder {
    region: String,
    log: Arc<dyn EventLog>,
    record_reads: bool,
    retention: Option<Duration>,
    /// Signs the request log's digests once bound (shared with the thread).
    signer: Arc<OnceLock<Arc<super::DigestSigner>>>,
    queue: mpsc::Sender<ApiCall>,
    capacity: usize,
    /// Records dropped because the queue was full, in all.
    dropped: AtomicU64,
    /// Dropped and not yet reported in the log (the thread takes them).
    unreported: Arc<AtomicU64>,
    /// Calls queued so far.
    submitted: AtomicU64,
    /// Calls handled so far (written, or dropped after a failure), from the thread.
    handled: watch::Receiver<u64>,
    /// Why the request log stopped taking records, if it did.
    failure: Arc<Mutex<Option<String>>>,
    /// Set by [`RequestRecorder::flush`]: the thread appends what it has without lingering.
    urgent: Arc<AtomicBool>,
}

impl std::fmt::Debug for RequestRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRecorder")
            .field("region", &self.region)
            .field("record_reads", &self.record_reads)
            .field("capacity", &self.capacity)
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .field("submitted", &self.submitted.load(Ordering::Relaxed))
            .field("handled", &*self.handled.borrow())
            .finish()
    }
}

impl RequestRecorder {
    /// Starts recording into `log` (the request log: a [`amisim_log::SledLog`] in
    /// `<data>/requests`, or a [`amisim_log::MemoryLog`]). `record_reads`: also record
    /// Describe/Get/List calls (CloudTrail does).
    pub fn start(
        region: &str,
        log: Arc<dyn EventLog>,
        record_reads: bool,
    ) -> std::io::Result<Arc<RequestRecorder>> {
        Self::start_with(
            region,
            log,
            RecorderOptions {
                record_reads,
                ..RecorderOptions::default()
            },
        )
    }

    /// As [`RequestRecorder::start`] with every option.
    pub fn start_with(
        region: &str,
        log: Arc<dyn EventLog>,
        options: RecorderOptions,
    ) -> std::io::Result<Arc<RequestRecorder>> {
        let signer = Arc::new(OnceLock::new());
        if let Some(s) = options.signer {
            let _ = signer.set(s);
        }
        let capacity = options.capacity.max(1);
        let (queue, rx) = mpsc::channel(capacity);
        let unreported = Arc::new(AtomicU64::new(0));
        let (handled_tx, handled) = watch::channel(0u64);
        let failure = Arc::new(Mutex::new(None));
        let urgent = Arc::new(AtomicBool::new(false));
        let last_ms = log
            .read_range(log.head().seq, log.head().seq)
            .ok()
            .and_then(|v| v.first().map(|e| e.sim_time_ms))
            .unwrap_or(0);
        let drain = Drain {
            region: region.to_string(),
            log: log.clone(),
            rx,
            handled: handled_tx,
            failure: failure.clone(),
            last_ms,
            unreported: unreported.clone(),
            capacity,
            signer: signer.clone(),
            urgent: urgent.clone(),
            rng: match options.seed {
                Some(seed) => record_id_rng(seed, log.head().seq),
                None => {
                    use rand::SeedableRng;
                    rand_chacha::ChaCha8Rng::from_rng(&mut rand::rng())
                }
            },
        };
        crate::spawn_node_thread(format!("amisim-requests-{region}"), move || drain.run())?;
        Ok(Arc::new(RequestRecorder {
            region: region.to_string(),
            log,
            record_reads: options.record_reads,
            retention: options.retention,
            signer,
            queue,
            capacity,
            dropped: AtomicU64::new(0),
            unreported,
            submitted: AtomicU64::new(0),
            handled,
            failure,
            urgent,
        }))
    }

    /// The request log.
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    /// Whether read-only calls are recorded.
    pub fn record_reads(&self) -> bool {
        self.record_reads
    }

    /// How far back LookupEvents shows records (simulated time).
    pub fn retention(&self) -> Duration {
        self.retention.unwrap_or_else(default_retention)
    }

    /// The signer of the request log's digests, if any.
    pub fn signer(&self) -> Option<&Arc<super::DigestSigner>> {
        self.signer.get()
    }

    /// Signs the request log's digests with `signer` from now on (the node's Audit service
    /// binds the trail's request signer when it starts). False if one was bound already.
    pub fn attach_signer(&self, signer: Arc<super::DigestSigner>) -> bool {
        self.signer.set(signer).is_ok()
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Why recording stopped (a request log append failed), if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Queues a call (never blocks). A read is dropped when reads are not recorded; any call
    /// is dropped, counted and reported when the queue is full (see the module docs).
    pub fn record(&self, call: ApiCall) {
        if call.read_only && !self.record_reads {
            return;
        }
        self.submitted.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(call)) => {
                self.submitted.fetch_sub(1, Ordering::SeqCst);
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let before = self.unreported.fetch_add(1, Ordering::SeqCst);
                if before == 0 {
                    tracing::warn!(region = %self.region, capacity = self.capacity,
                        dropped_total = total, event_name = call.event_name,
                        "request-record queue full: dropping API call records (counted, and \
                         reported in the trail as RecordsDropped)");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The thread is gone (it only ends when the recorder is dropped).
                self.submitted.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Waits until every call queued before this returns is in the request log (or dropped
    /// after a failure); then, with a signer, signs a digest of the request log's head.
    pub async fn flush(&self) {
        let target = self.submitted.load(Ordering::SeqCst);
        self.urgent.store(true, Ordering::SeqCst);
        let mut handled = self.handled.clone();
        // An Err means the thread is gone: nothing more will be written.
        let _ = handled.wait_for(|h| *h >= target).await;
        if let Some(signer) = self.signer.get().cloned() {
            let log = self.log.clone();
            let region = self.region.clone();
            let sealed = tokio::task::spawn_blocking(move || signer.seal(log.as_ref())).await;
            if let Ok(Err(e)) = sealed {
                tracing::error!(region = %region, error = %e,
                    "cannot sign a digest of the request log");
            }
        }
    }
}

/// The recorder's thread: batches of queued calls into the request log.
struct Drain {
    region: String,
    log: Arc<dyn EventLog>,
    rx: mpsc::Receiver<ApiCall>,
    handled: watch::Sender<u64>,
    failure: Arc<Mutex<Option<String>>>,
    last_ms: u64,
    /// Dropped records not yet reported (shared with the recorder).
    unreported: Arc<AtomicU64>,
    capacity: usize,
    signer: Arc<OnceLock<Arc<super::DigestSigner>>>,
    urgent: Arc<AtomicBool>,
    /// Draws the records' `eventID`s.
    rng: rand_chacha::ChaCha8Rng,
}

/// The stream of record ids of a recorder seeded with `seed` whose request log ends at
/// `head_seq`: keyed by both (a restart with a longer log draws other ids) and by a word of its
/// own, apart from the node's other streams.
pub fn record_id_rng(seed: u64, head_seq: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&head_seq.to_le_bytes());
    key[16..24].copy_from_slice(b"records\0");
    rand_chacha::ChaCha8Rng::from_seed(key)
}

impl Drain {
    /// Moves queued calls into `batch` up to [`MAX_RECORDS_PER_FLUSH`]; false once the queue
    /// is closed and empty.
    fn gather(&mut self, batch: &mut Vec<ApiCall>) -> bool {
        while batch.len() < MAX_RECORDS_PER_FLUSH {
            match self.rx.try_recv() {
                Ok(call) => batch.push(call),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn run(mut self) {
        // Nobody waits for a record (a flush waits at most for the records before it).
        crate::lower_thread_priority(5, "request recorder");
        let mut rng = self.rng.clone();
        while let Some(first) = self.rx.blocking_recv() {
            let lingering_since = std::time::Instant::now();
            let mut batch = vec![first];
            // Gather for RECORD_LINGER, in 1 ms naps, unless a flush waits or the batch fills.
            while self.gather(&mut batch)
                && batch.len() < MAX_RECORDS_PER_FLUSH
                && !self.urgent.load(Ordering::SeqCst)
                && lingering_since.elapsed() < RECORD_LINGER
            {
                std::thread::sleep(Duration::from_millis(1).min(RECORD_LINGER));
            }
            self.urgent.store(false, Ordering::SeqCst);
            self.gather(&mut batch);
            let n = batch.len() as u64;
            let failed = self.failure.lock().map(|f| f.is_some()).unwrap_or(true);
            if !failed {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                // Drops since the last batch: reported first (they happened before these
                // records were taken), at the first record's time.
                let dropped = self.unreported.swap(0, Ordering::SeqCst);
                let mut events: Vec<Event> = Vec::with_capacity(batch.len() + 1);
                if dropped > 0 {
                    let first = batch.first().map_or(0, |c| c.time_ms);
                    let time = self.last_ms.max(first);
                    let id = amisim_core::ids::generate_uuid(&mut rng);
                    let mut e = dropped_event(&self.region, dropped, self.capacity, time, &id);
                    e.wall_time_ms = wall;
                    events.push(e);
                    tracing::warn!(region = %self.region, dropped,
                        "request log: RecordsDropped record written");
                }
                events.extend(batch.iter_mut().map(|call| {
                    // Times never decrease along the log (see the module docs).
                    self.last_ms = self.last_ms.max(call.time_ms);
                    call.time_ms = self.last_ms;
                    let id = amisim_core::ids::generate_uuid(&mut rng);
                    record_event(&self.region, call, &id, wall)
                }));
                match self.log.append(events) {
                    Ok(stamped) => {
                        if let Some(signer) = self.signer.get() {
                            signer.after_append(&stamped);
                        }
                    }
                    Err(e) => self.fail(&e),
                }
            } else {
                tracing::warn!(region = %self.region, dropped = n,
                    "request log failed earlier: API call records dropped");
            }
            self.handled.send_modify(|h| *h += n);
        }
        tracing::debug!(region = %self.region, "request recorder stopped");
    }

    fn fail(&self, e: &LogError) {
        tracing::error!(region = %self.region, error = %e,
            "cannot append to the request log; API calls are no longer recorded \
             (the state log is unaffected)");
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_log::MemoryLog;

    fn call(name: &'static str, time_ms: u64) -> ApiCall {
        ApiCall {
            event_source: EC2_SOURCE,
            event_name: name,
            account_id: Some("123456789012".into()),
            request_id: "req-1".into(),
            request_parameters: json!({"imageId": "ami-0123456789abcdef0", "name": "i-am-a-name"})
                .into(),
            response_elements: Some(json!({"snapshotIds": ["snap-0123456789abcdef0"]}).into()),
            time_ms,
            ..ApiCall::default()
        }
    }

    #[test]
    fn a_record_has_the_cloudtrail_shape() {
        let e = record_event(
            "us-east-1",
            &call("RegisterImage", 1_714_521_600_123),
            "ev-1",
            0,
        );
        let Some(Payload::ApiCallRecorded(r)) = &e.payload else {
            panic!("{e:?}")
        };
        let v: Value = serde_json::from_str(&cloudtrail_json(&e, r)).unwrap();
        assert_eq!(v["eventVersion"], "1.11");
        assert_eq!(v["eventTime"], "2024-05-01T00:00:00Z");
        assert_eq!(v["eventSource"], "ec2.amazonaws.com");
        assert_eq!(v["userIdentity"]["arn"], "arn:aws:iam::123456789012:root");
        assert_eq!(v["eventID"], "ev-1");
        assert_eq!(v["eventType"], "AwsApiCall");
        assert!(v.get("errorCode").is_none());
        assert_eq!(v["resources"][0]["type"], "AWS::EC2::Image");
        assert_eq!(
            v["resources"][1]["ARN"],
            "arn:aws:ec2:us-east-1::snapshot/snap-0123456789abcdef0"
        );
        assert_eq!(r.resources.len(), 2, "a name is not a resource");
        assert_eq!(e.account_id, "123456789012");
    }

    fn typed_call() -> ApiCall {
        let request = amisim_proto::RegisterImageRequest {
            name: "web-1".into(),
            root_device_name: "/dev/xvda".into(),
            block_device_mappings: vec![amisim_proto::BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(amisim_proto::EbsBlockDevice {
                    snapshot_id: "snap-0123456789abcdef0".into(),
                    volume_size: Some(8),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            architecture: "x86_64".into(),
            ..Default::default()
        };
        let response = amisim_proto::RegisterImageResponse {
            image_id: "ami-0123456789abcdef0".into(),
        };
        ApiCall {
            event_source: EC2_SOURCE,
            event_name: "RegisterImage",
            account_id: Some("123456789012".into()),
            request_id: "req-7".into(),
            source_ip: Some("127.0.0.1".into()),
            user_agent: Some("grpc-python/1.62".into()),
            request_parameters: Params::message(request),
            response_elements: Some(Params::message(response)),
            time_ms: 1_714_521_600_123,
            ..ApiCall::default()
        }
    }

    fn recorded(e: &Event) -> &ApiCallRecorded {
        match &e.payload {
            Some(Payload::ApiCallRecorded(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    /// ADR 0012: a call's messages are kept as protobuf bytes, and the record read back is the
    /// one the same call with its JSON given up front renders.
    #[test]
    fn a_typed_call_is_stored_as_bytes_and_read_as_its_cloudtrail_record() {
        let typed = typed_call();
        let e = record_event("us-east-1", &typed, "ev-1", 0);
        let r = recorded(&e);
        assert!(r.compact && r.cloudtrail_json.is_empty());
        assert!(!r.request_message.is_empty() && r.request_parameters_json.is_empty());
        assert!(r.has_response && !r.response_message.is_empty());

        let mut as_json = typed_call();
        as_json.request_parameters = typed.request_parameters.render().into();
        as_json.response_elements = typed.response_elements.as_ref().map(|p| p.render().into());
        let j = record_event("us-east-1", &as_json, "ev-1", 0);
        let rj = recorded(&j);
        assert!(rj.request_message.is_empty() && !rj.request_parameters_json.is_empty());
        assert_eq!(r.resources, rj.resources);

        let v: Value = serde_json::from_str(&cloudtrail_json(&e, r)).unwrap();
        let vj: Value = serde_json::from_str(&cloudtrail_json(&j, rj)).unwrap();
        assert_eq!(v, vj);
        assert_eq!(v["requestParameters"]["name"], "web-1");
        assert_eq!(
            v["requestParameters"]["blockDeviceMappings"][0]["ebs"]["volumeSize"],
            8
        );
        assert_eq!(v["responseElements"]["imageId"], "ami-0123456789abcdef0");
        assert_eq!(v["sourceIPAddress"], "127.0.0.1");
        assert_eq!(v["userAgent"], "grpc-python/1.62");
        assert_eq!(v["requestID"], "req-7");
        assert_eq!(v["eventID"], "ev-1");
        assert_eq!(v["recipientAccountId"], "123456789012");
        let kinds: Vec<&str> = r
            .resources
            .iter()
            .map(|x| x.resource_type.as_str())
            .collect();
        assert_eq!(kinds, ["AWS::EC2::Snapshot", "AWS::EC2::Image"]);

        // The point of it: a fraction of the JSON on disk.
        let stored = prost::Message::encoded_len(&e);
        let rendered = cloudtrail_json(&e, r).len();
        assert!(
            stored * 2 < rendered,
            "{stored} bytes stored for {rendered} of JSON"
        );
    }

    #[test]
    fn a_failed_unauthenticated_call_reads_back_with_its_claim_and_error() {
        let mut c = typed_call();
        c.account_id = None;
        c.claimed_account = Some("999988887777".into());
        c.response_elements = None;
        c.source_ip = None;
        c.error = Some(("AuthFailure".into(), "no such account".into()));
        let e = record_event("us-east-1", &c, "ev-2", 0);
        let r = recorded(&e);
        assert!(!r.authenticated && !r.has_response);
        let v: Value = serde_json::from_str(&cloudtrail_json(&e, r)).unwrap();
        assert_eq!(
            v["userIdentity"],
            json!({"type": "Unknown", "accountId": "999988887777"})
        );
        assert_eq!(v["errorCode"], "AuthFailure");
        assert_eq!(v["errorMessage"], "no such account");
        assert_eq!(v["responseElements"], Value::Null);
        assert_eq!(v["sourceIPAddress"], Value::Null);
        assert!(v.get("recipientAccountId").is_none());
        assert_eq!(v["requestParameters"]["name"], "web-1");
    }

    /// A message that is not the input type of the call's RPC (or a call with no RPC) is kept
    /// as JSON: bytes are only kept when the name of the call decodes them.
    #[test]
    fn a_message_of_another_type_is_kept_as_json() {
        let mut c = typed_call();
        c.request_parameters = Params::message(amisim_proto::DescribeImagesRequest {
            image_ids: vec!["ami-0123456789abcdef1".into()],
            ..Default::default()
        });
        let e = record_event("us-east-1", &c, "ev-3", 0);
        let r = recorded(&e);
        assert!(r.request_message.is_empty());
        assert_eq!(
            r.request_parameters_json,
            r#"{"imageIds":["ami-0123456789abcdef1"]}"#
        );
        assert!(
            !r.response_message.is_empty(),
            "the response is the RPC's own type"
        );
        let v: Value = serde_json::from_str(&cloudtrail_json(&e, r)).unwrap();
        assert_eq!(
            v["requestParameters"]["imageIds"][0],
            "ami-0123456789abcdef1"
        );

        c.event_name = "NoSuchAction";
        let e = record_event("us-east-1", &c, "ev-4", 0);
        let r = recorded(&e);
        assert!(r.request_message.is_empty() && r.response_message.is_empty());
        let v: Value = serde_json::from_str(&cloudtrail_json(&e, r)).unwrap();
        assert_eq!(v["responseElements"]["imageId"], "ami-0123456789abcdef0");
    }

    /// Records written before ADR 0012 kept their JSON: it is read as stored.
    #[test]
    fn a_record_from_before_compact_records_reads_as_stored() {
        let e = Event {
            region: "us-east-1".into(),
            event_id: "ev-old".into(),
            payload: Some(Payload::ApiCallRecorded(ApiCallRecorded {
                cloudtrail_json: r#"{"eventName":"RegisterImage","eventID":"ev-old"}"#.into(),
                event_name: "RegisterImage".into(),
                event_source: EC2_SOURCE.into(),
                ..Default::default()
            })),
            ..Event::default()
        };
        assert_eq!(
            cloudtrail_json(&e, recorded(&e)),
            r#"{"eventName":"RegisterImage","eventID":"ev-old"}"#
        );
    }

    #[test]
    fn json_leaves_out_empty_values() {
        let v = to_json(&amisim_proto::DescribeImagesRequest {
            image_ids: vec!["ami-1".into()],
            ..Default::default()
        });
        assert_eq!(v, json!({"imageIds": ["ami-1"]}));
    }

    #[test]
    fn kms_keys_and_aliases() {
        let r = resources_of(&[&json!({
            "keyId": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "targetKeyId": "alias/mine",
        })]);
        assert_eq!(
            r,
            vec![(
                "AWS::KMS::Key".to_string(),
                "1234abcd-12ab-34cd-56ef-1234567890ab".to_string()
            )]
        );
    }

    /// A log whose appends wait until the test opens the gate (a disk that cannot keep up).
    struct GatedLog {
        inner: MemoryLog,
        gate: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl EventLog for GatedLog {
        fn head(&self) -> amisim_log::Head {
            self.inner.head()
        }
        fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, LogError> {
            let mut open = self.gate.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            drop(open);
            self.inner.append(events)
        }
        fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
            self.inner.read_range(from, to)
        }
        fn subscribe_head(&self) -> tokio::sync::watch::Receiver<u64> {
            self.inner.subscribe_head()
        }
        fn verify(&self) -> Result<amisim_log::Head, LogError> {
            self.inner.verify()
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_counts_and_reports_in_the_trail() {
        let log = Arc::new(GatedLog {
            inner: MemoryLog::new(),
            gate: std::sync::Mutex::new(false),
            opened: std::sync::Condvar::new(),
        });
        let rec = RequestRecorder::start_with(
            "us-east-1",
            log.clone(),
            RecorderOptions {
                capacity: 4,
                ..RecorderOptions::default()
            },
        )
        .unwrap();
        // given: the thread holds one record at the closed gate, 4 wait in the queue
        rec.record(call("RegisterImage", 1000));
        for _ in 0..200 {
            if rec.queue.capacity() == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for i in 0..10 {
            rec.record(call("CreateImage", 2000 + i));
        }
        // then: the calls beyond the queue are dropped and counted, never waited for
        assert_eq!(rec.dropped(), 6);
        *log.gate.lock().unwrap() = true;
        log.opened.notify_all();
        rec.flush().await;
        let events = log.read_range(1, 100).unwrap();
        let names: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Some(Payload::ApiCallRecorded(r)) => Some(r.event_name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(names.len(), 1 + 4 + 1, "{names:?}");
        let dropped = events
            .iter()
            .find_map(|e| match &e.payload {
                Some(Payload::ApiCallRecorded(r)) if r.event_name == RECORDS_DROPPED => Some(r),
                _ => None,
            })
            .expect("a RecordsDropped record");
        let v: Value = serde_json::from_str(&dropped.cloudtrail_json).unwrap();
        assert_eq!(v["serviceEventDetails"]["droppedRecords"], 6);
        assert_eq!(v["eventType"], "AwsServiceEvent");
        assert_eq!(
            super::super::lookup::Record::from_request(
                events.iter().find(|e| e.event_id == v["eventID"]).unwrap()
            )
            .unwrap()
            .event_type,
            "AwsServiceEvent"
        );
    }

    /// The record ids a recorder with `seed` gives two calls on `log`.
    async fn record_ids(log: Arc<MemoryLog>, seed: Option<u64>) -> Vec<String> {
        let from = log.head().seq + 1;
        let options = RecorderOptions {
            seed,
            ..RecorderOptions::default()
        };
        let rec = RequestRecorder::start_with("us-east-1", log.clone(), options).unwrap();
        rec.record(call("RegisterImage", 1000));
        rec.record(call("CreateImage", 2000));
        rec.flush().await;
        log.read_range(from, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect()
    }

    #[tokio::test]
    async fn record_ids_replay_from_the_seed_and_differ_after_a_restart() {
        let first = record_ids(Arc::new(MemoryLog::new()), Some(7)).await;
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert_eq!(first, record_ids(Arc::new(MemoryLog::new()), Some(7)).await);
        assert_ne!(first, record_ids(Arc::new(MemoryLog::new()), Some(8)).await);
        // The same seed on a longer log (a restarted node): a stream of its own.
        let log = Arc::new(MemoryLog::new());
        let before = record_ids(log.clone(), Some(7)).await;
        let after = record_ids(log, Some(7)).await;
        assert_eq!(before, first);
        assert!(
            after.iter().all(|id| !before.contains(id)),
            "{before:?} {after:?}"
        );
        // Without a seed: from the OS.
        assert_ne!(first, record_ids(Arc::new(MemoryLog::new()), None).await);
    }

    #[tokio::test]
    async fn the_recorder_batches_and_keeps_times_monotonic() {
        let log = Arc::new(MemoryLog::new());
        let rec = RequestRecorder::start("us-east-1", log.clone(), false).unwrap();
        rec.record(call("RegisterImage", 2000));
        rec.record(call("CreateImage", 1000));
        rec.record(ApiCall {
            read_only: true,
            ..call("DescribeImages", 3000)
        });
        rec.flush().await;
        let events = log.read_range(1, 10).unwrap();
        assert_eq!(events.len(), 2, "reads are off");
        assert_eq!(events[0].sim_time_ms, 2000);
        assert_eq!(events[1].sim_time_ms, 2000, "clamped");
        assert_eq!(log.verify().unwrap().seq, 2);
    }
}
