//! CloudTrail's LookupEvents and export over a region's records (ADR 0007).
//!
//! A region's trail has two sources, merged by time:
//! - `AwsApiCall` records: the [`ApiCallRecorded`](amisim_proto::ApiCallRecorded) events of
//!   the request log ([`super::requests`]);
//! - `SystemTransition` records (`[sim]`, EC2_SEMANTICS.md §9): the state log's events written by
//!   timers and sagas (envelope account `system`: completions, state changes, copy steps),
//!   turned into records on read, so they are never stored twice.
//!
//! Both logs' simulated times never decrease along their seqs, so a time range is a binary
//! search in each, and a page is read backwards from its end. Records are ordered by
//! (time, source, seq); pages go newest first and a `next_token` is the position of the last
//! record returned (records added meanwhile do not shift later pages).
//!
//! Retention ([`Lookup::with_floor`]): the service passes "now − retention" of the node's
//! simulated clock; records older are not returned and an older `StartTime` is clamped to it.
//! The floor is not part of the `next_token`'s parameters, so paging goes on while the clock
//! moves (a page may then end a little earlier, never repeat a record).

use amisim_log::{Event, EventLog, LogError};
use amisim_proto::event::Payload;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::as_of::{first_seq_from, resolve};
use super::requests::{self, CLOUDTRAIL_SOURCE, EC2_SOURCE, EVENT_VERSION, KMS_SOURCE};
use super::stream::payload_name;
use super::time::Point;

/// Default and largest page size.
pub const MAX_RESULTS: u32 = 50;
/// Largest attribute value.
const MAX_ATTRIBUTE_VALUE: usize = 2000;
/// Events read per `read_range` while scanning.
const CHUNK: u64 = 512;

/// Which log a record comes from; also the tie-break between equal times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The state log (a `SystemTransition` record).
    State = 0,
    /// The request log (an `AwsApiCall` record).
    Requests = 1,
}

/// One record of the trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The region whose trail holds it.
    pub region: String,
    pub source: Source,
    /// Seq in its log.
    pub seq: u64,
    pub time_ms: u64,
    pub event_id: String,
    pub event_name: String,
    pub event_source: String,
    /// `AwsApiCall`, `SystemTransition`, or `AwsServiceEvent` (the recorder's own
    /// `RecordsDropped`).
    pub event_type: &'static str,
    pub read_only: bool,
    /// The caller's account (`system` for a transition).
    pub username: String,
    pub error_code: String,
    /// (type, id).
    pub resources: Vec<(String, String)>,
    /// The full CloudTrail-shaped record.
    pub json: String,
}

impl Record {
    fn key(&self) -> (u64, Source, u64) {
        (self.time_ms, self.source, self.seq)
    }

    /// The record from a request-log event (`None` for anything but `ApiCallRecorded`).
    pub fn from_request(e: &Event) -> Option<Record> {
        let Some(Payload::ApiCallRecorded(r)) = &e.payload else {
            return None;
        };
        Some(Record {
            region: e.region.clone(),
            source: Source::Requests,
            seq: e.seq,
            time_ms: e.sim_time_ms,
            event_id: e.event_id.clone(),
            event_name: r.event_name.clone(),
            event_source: r.event_source.clone(),
            event_type: if r.event_source == CLOUDTRAIL_SOURCE {
                "AwsServiceEvent"
            } else {
                "AwsApiCall"
            },
            read_only: r.read_only,
            username: r.account_id.clone(),
            error_code: r.error_code.clone(),
            resources: r
                .resources
                .iter()
                .map(|x| (x.resource_type.clone(), x.resource_name.clone()))
                .collect(),
            json: requests::cloudtrail_json(e, r),
        })
    }

    /// The `SystemTransition` record of a state-log event written by a timer or a saga
    /// (`None` for a caller's event).
    pub fn from_transition(e: &Event) -> Option<Record> {
        if e.account_id != amisim_core::ids::SYSTEM_ACCOUNT {
            return None;
        }
        let payload = e.payload.as_ref()?;
        if matches!(payload, Payload::ApiCallRecorded(_)) {
            return None;
        }
        let name = payload_name(e);
        // The payload's own fields (serde renders the oneof as {"variantName": {...}}).
        let details = match requests::to_json(payload) {
            Value::Object(m) => m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let resources = requests::resources_of(&[&details]);
        let source = if name.starts_with("Kms") {
            KMS_SOURCE
        } else {
            EC2_SOURCE
        };
        let mut m = Map::new();
        m.insert("eventVersion".into(), json!(EVENT_VERSION));
        m.insert(
            "userIdentity".into(),
            json!({"type": "AWSService", "invokedBy": source}),
        );
        m.insert(
            "eventTime".into(),
            json!(requests::event_time(e.sim_time_ms)),
        );
        m.insert("eventSource".into(), json!(source));
        m.insert("eventName".into(), json!(name));
        m.insert("awsRegion".into(), json!(e.region));
        m.insert("sourceIPAddress".into(), json!(source));
        m.insert("userAgent".into(), json!(source));
        m.insert("requestParameters".into(), Value::Null);
        m.insert("responseElements".into(), Value::Null);
        m.insert("serviceEventDetails".into(), details);
        if !e.request_id.is_empty() {
            m.insert("requestID".into(), json!(e.request_id));
        }
        m.insert("eventID".into(), json!(e.event_id));
        m.insert("readOnly".into(), json!(false));
        if !resources.is_empty() {
            m.insert(
                "resources".into(),
                requests::resources_json(&e.region, "", &resources),
            );
        }
        m.insert("eventType".into(), json!("SystemTransition"));
        m.insert("managementEvent".into(), json!(true));
        m.insert("eventCategory".into(), json!("Management"));
        // [sim] Where the fact is: the state log's seq, and the copy it belongs to.
        m.insert("amisimSeq".into(), json!(e.seq));
        if !e.correlation_id.is_empty() {
            m.insert("amisimCorrelationId".into(), json!(e.correlation_id));
        }
        Some(Record {
            region: e.region.clone(),
            source: Source::State,
            seq: e.seq,
            time_ms: e.sim_time_ms,
            event_id: e.event_id.clone(),
            event_name: name,
            event_source: source.to_string(),
            event_type: "SystemTransition",
            read_only: false,
            username: e.account_id.clone(),
            error_code: String::new(),
            resources,
            json: Value::Object(m).to_string(),
        })
    }

    /// As CloudTrail's `Event` of a LookupEvents answer.
    pub fn to_proto(&self) -> amisim_proto::TrailEvent {
        amisim_proto::TrailEvent {
            event_id: self.event_id.clone(),
            event_name: self.event_name.clone(),
            read_only: self.read_only,
            access_key_id: String::new(),
            event_time_ms: self.time_ms,
            event_time: requests::event_time(self.time_ms),
            event_source: self.event_source.clone(),
            username: self.username.clone(),
            resources: self
                .resources
                .iter()
                .map(|(t, n)| amisim_proto::LookupResource {
                    resource_type: t.clone(),
                    resource_name: n.clone(),
                })
                .collect(),
            cloud_trail_event: self.json.clone(),
            event_type: self.event_type.to_string(),
            error_code: self.error_code.clone(),
            region: self.region.clone(),
            position: String::new(),
        }
    }
}

/// A lookup attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    EventId(String),
    EventName(String),
    ReadOnly(bool),
    Username(String),
    ResourceType(String),
    ResourceName(String),
    EventSource(String),
    /// amisim has no access keys: matches nothing.
    AccessKeyId(String),
}

impl Attribute {
    /// From CloudTrail's key and value.
    pub fn parse(key: &str, value: &str) -> Result<Attribute, LookupError> {
        if value.is_empty() || value.chars().count() > MAX_ATTRIBUTE_VALUE {
            return Err(LookupError::Attributes(format!(
                "the value of {key} must be 1 to {MAX_ATTRIBUTE_VALUE} characters"
            )));
        }
        let v = value.to_string();
        Ok(match key {
            "EventId" => Attribute::EventId(v),
            "EventName" => Attribute::EventName(v),
            "ReadOnly" => match value {
                "true" => Attribute::ReadOnly(true),
                "false" => Attribute::ReadOnly(false),
                _ => {
                    return Err(LookupError::Attributes(format!(
                        "ReadOnly must be true or false, not {value:?}"
                    )))
                }
            },
            "Username" => Attribute::Username(v),
            "ResourceType" => Attribute::ResourceType(v),
            "ResourceName" => Attribute::ResourceName(v),
            "EventSource" => Attribute::EventSource(v),
            "AccessKeyId" => Attribute::AccessKeyId(v),
            _ => {
                return Err(LookupError::Attributes(format!(
                    "unknown attribute key {key:?} (EventId, EventName, ReadOnly, Username, \
                     ResourceType, ResourceName, EventSource, AccessKeyId)"
                )))
            }
        })
    }

    /// `Key=Value`, the CLI's form.
    pub fn parse_pair(pair: &str) -> Result<Attribute, LookupError> {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            LookupError::Attributes(format!(
                "{pair:?} is not KEY=VALUE (e.g. EventName=RegisterImage)"
            ))
        })?;
        Attribute::parse(k.trim(), v.trim())
    }

    fn matches(&self, r: &Record) -> bool {
        match self {
            Attribute::EventId(v) => &r.event_id == v,
            Attribute::EventName(v) => &r.event_name == v,
            Attribute::ReadOnly(v) => r.read_only == *v,
            Attribute::Username(v) => &r.username == v,
            Attribute::ResourceType(v) => r.resources.iter().any(|(t, _)| t == v),
            Attribute::ResourceName(v) => r.resources.iter().any(|(_, n)| n == v),
            Attribute::EventSource(v) => &r.event_source == v,
            Attribute::AccessKeyId(_) => false,
        }
    }

    fn fingerprint(&self) -> String {
        format!("{self:?}")
    }
}

/// Why a lookup was refused (CloudTrail's error codes), or a log error.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("InvalidLookupAttributesException: {0}")]
    Attributes(String),
    #[error("InvalidTimeRangeException: {0}")]
    TimeRange(String),
    #[error("InvalidMaxResultsException: {0}")]
    MaxResults(String),
    #[error("InvalidNextTokenException: {0}")]
    NextToken(String),
    #[error("event log: {0}")]
    Log(#[from] LogError),
}

impl LookupError {
    /// The CloudTrail error code (`None`: not the caller's fault).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            LookupError::Attributes(_) => Some("InvalidLookupAttributesException"),
            LookupError::TimeRange(_) => Some("InvalidTimeRangeException"),
            LookupError::MaxResults(_) => Some("InvalidMaxResultsException"),
            LookupError::NextToken(_) => Some("InvalidNextTokenException"),
            LookupError::Log(_) => None,
        }
    }
}

/// A checked LookupEvents request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub attribute: Option<Attribute>,
    /// Inclusive range, simulated ms.
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub max_results: usize,
    /// Records strictly older than this position.
    after: Option<(u64, Source, u64)>,
    /// Retention: no record older than this (simulated ms); not part of the token.
    floor_ms: Option<u64>,
}

impl Lookup {
    /// Checks a request: at most one attribute, start <= end, max 1-50 (0: 50), and a
    /// `next_token` made by the same parameters.
    pub fn new(
        attributes: &[(String, String)],
        start_ms: Option<u64>,
        end_ms: Option<u64>,
        max_results: u32,
        next_token: &str,
    ) -> Result<Lookup, LookupError> {
        let attribute = match attributes {
            [] => None,
            [(k, v)] => Some(Attribute::parse(k, v)?),
            _ => {
                return Err(LookupError::Attributes(format!(
                    "at most one lookup attribute is allowed, got {}",
                    attributes.len()
                )))
            }
        };
        if let (Some(s), Some(e)) = (start_ms, end_ms) {
            if s > e {
                return Err(LookupError::TimeRange(
                    "the start time is after the end time".into(),
                ));
            }
        }
        let max_results = match max_results {
            0 => MAX_RESULTS,
            n if n <= MAX_RESULTS => n,
            n => {
                return Err(LookupError::MaxResults(format!(
                    "max results must be 1 to {MAX_RESULTS}, got {n}"
                )))
            }
        } as usize;
        let mut lookup = Lookup {
            attribute,
            start_ms,
            end_ms,
            max_results,
            after: None,
            floor_ms: None,
        };
        if !next_token.is_empty() {
            lookup.after = Some(lookup.parse_token(next_token)?);
        }
        Ok(lookup)
    }

    fn fingerprint(&self) -> String {
        let text = format!(
            "{}|{:?}|{:?}",
            self.attribute
                .as_ref()
                .map(Attribute::fingerprint)
                .unwrap_or_default(),
            self.start_ms,
            self.end_ms
        );
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }

    /// Returns no record older than `floor_ms` (retention; see the module docs).
    pub fn with_floor(mut self, floor_ms: Option<u64>) -> Self {
        self.floor_ms = floor_ms;
        self
    }

    /// The start of the range searched: `start_ms` clamped to the retention floor.
    pub fn effective_start(&self) -> Option<u64> {
        match (self.start_ms, self.floor_ms) {
            (Some(s), Some(f)) => Some(s.max(f)),
            (s, f) => s.or(f),
        }
    }

    /// The `next_token` that continues right after `r` (its `position`).
    pub fn token(&self, r: &Record) -> String {
        format!(
            "v1.{}.{}.{}.{}",
            self.fingerprint(),
            r.time_ms,
            r.source as u8,
            r.seq
        )
    }

    fn parse_token(&self, token: &str) -> Result<(u64, Source, u64), LookupError> {
        let bad = || LookupError::NextToken("the token is not one this lookup returned".into());
        let parts: Vec<&str> = token.split('.').collect();
        let [v, fp, time, source, seq] = parts.as_slice() else {
            return Err(bad());
        };
        if *v != "v1" {
            return Err(bad());
        }
        if *fp != self.fingerprint() {
            return Err(LookupError::NextToken(
                "the token belongs to a lookup with other parameters".into(),
            ));
        }
        let time = time.parse().map_err(|_| bad())?;
        let source = match *source {
            "0" => Source::State,
            "1" => Source::Requests,
            _ => return Err(bad()),
        };
        let seq = seq.parse().map_err(|_| bad())?;
        Ok((time, source, seq))
    }

    fn keeps(&self, r: &Record) -> bool {
        self.after.is_none_or(|a| r.key() < a)
            && self.attribute.as_ref().is_none_or(|a| a.matches(r))
    }

    /// One page, newest first, and the token of the next page (`None`: the last page).
    /// `state` adds the SystemTransition records of the state log. Blocking.
    pub fn run(
        &self,
        requests: &dyn EventLog,
        state: Option<&dyn EventLog>,
    ) -> Result<(Vec<Record>, Option<String>), LookupError> {
        let want = self.max_results + 1;
        let mut found = self.newest(requests, Record::from_request, want)?;
        if let Some(state) = state {
            found.extend(self.newest(state, Record::from_transition, want)?);
        }
        found.sort_by_key(|r| std::cmp::Reverse(r.key()));
        let more = found.len() > self.max_results;
        found.truncate(self.max_results);
        let token = if more {
            found.last().map(|r| self.token(r))
        } else {
            None
        };
        Ok((found, token))
    }

    /// Up to `want` kept records of one log, newest first.
    fn newest(
        &self,
        log: &dyn EventLog,
        convert: fn(&Event) -> Option<Record>,
        want: usize,
    ) -> Result<Vec<Record>, LookupError> {
        let start = self.effective_start();
        if let (Some(s), Some(e)) = (start, self.end_ms) {
            if s > e {
                return Ok(Vec::new());
            }
        }
        let (lo, mut hi) = seq_range(log, start, self.end_ms)?;
        if let Some((t, _, _)) = self.after {
            hi = hi.min(resolve(log, Point::SimTime(t))?);
        }
        let mut out = Vec::new();
        while hi >= lo && hi > 0 && out.len() < want {
            let from = hi.saturating_sub(CHUNK - 1).max(lo);
            let events = log.read_range(from, hi)?;
            for e in events.iter().rev() {
                if let Some(r) = convert(e).filter(|r| self.keeps(r)) {
                    out.push(r);
                    if out.len() >= want {
                        break;
                    }
                }
            }
            if from <= 1 {
                break;
            }
            hi = from - 1;
        }
        Ok(out)
    }
}

/// The seqs of `log` whose times are in `[start, end]` (inclusive; `lo > hi` when none).
pub fn seq_range(
    log: &dyn EventLog,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
) -> Result<(u64, u64), LogError> {
    let lo = match start_ms {
        Some(t) => first_seq_from(log, Point::SimTime(t))?,
        None => 1,
    };
    let hi = match end_ms {
        Some(t) => resolve(log, Point::SimTime(t))?,
        None => log.head().seq,
    };
    Ok((lo, hi))
}

/// Every record of the trail with a time in `[from, to]`, oldest first, chunk by chunk: the
/// export. `progress` gets the number of log events read so far after each chunk.
pub struct Export<'a> {
    requests: Scan<'a>,
    state: Option<Scan<'a>>,
}

impl<'a> Export<'a> {
    pub fn new(
        requests: &'a dyn EventLog,
        state: Option<&'a dyn EventLog>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Result<Export<'a>, LogError> {
        Ok(Export {
            requests: Scan::new(requests, from_ms, to_ms, Record::from_request)?,
            state: state
                .map(|s| Scan::new(s, from_ms, to_ms, Record::from_transition))
                .transpose()?,
        })
    }

    /// How many log events the export reads in all.
    pub fn total_events(&self) -> u64 {
        self.requests.len() + self.state.as_ref().map(Scan::len).unwrap_or(0)
    }

    /// How many log events were read so far.
    pub fn events_read(&self) -> u64 {
        self.requests.read + self.state.as_ref().map(|s| s.read).unwrap_or(0)
    }

    /// The next record in time order.
    pub fn next_record(&mut self) -> Result<Option<Record>, LogError> {
        let a = self.requests.peek()?.map(Record::key);
        let b = match &mut self.state {
            Some(s) => s.peek()?.map(Record::key),
            None => None,
        };
        match (a, b) {
            (None, None) => Ok(None),
            (Some(_), None) => self.requests.pop(),
            (None, Some(_)) => self.state.as_mut().map_or(Ok(None), Scan::pop),
            (Some(a), Some(b)) if a <= b => self.requests.pop(),
            _ => self.state.as_mut().map_or(Ok(None), Scan::pop),
        }
    }
}

/// The records of one log in seq order.
struct Scan<'a> {
    log: &'a dyn EventLog,
    next: u64,
    hi: u64,
    lo: u64,
    read: u64,
    buf: std::collections::VecDeque<Record>,
    convert: fn(&Event) -> Option<Record>,
}

impl<'a> Scan<'a> {
    fn new(
        log: &'a dyn EventLog,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        convert: fn(&Event) -> Option<Record>,
    ) -> Result<Scan<'a>, LogError> {
        let (lo, hi) = seq_range(log, from_ms, to_ms)?;
        Ok(Scan {
            log,
            next: lo.max(1),
            hi,
            lo: lo.max(1),
            read: 0,
            buf: Default::default(),
            convert,
        })
    }

    fn len(&self) -> u64 {
        (self.hi + 1).saturating_sub(self.lo)
    }

    fn fill(&mut self) -> Result<(), LogError> {
        while self.buf.is_empty() && self.next <= self.hi {
            let to = self.hi.min(self.next.saturating_add(CHUNK * 8 - 1));
            let events = self.log.read_range(self.next, to)?;
            if events.is_empty() {
                self.next = self.hi + 1;
                break;
            }
            self.read += events.len() as u64;
            self.next = to + 1;
            self.buf.extend(events.iter().filter_map(self.convert));
        }
        Ok(())
    }

    fn peek(&mut self) -> Result<Option<&Record>, LogError> {
        self.fill()?;
        Ok(self.buf.front())
    }

    fn pop(&mut self) -> Result<Option<Record>, LogError> {
        self.fill()?;
        Ok(self.buf.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::requests::{record_event, ApiCall};
    use amisim_log::MemoryLog;

    fn calls(log: &MemoryLog, n: u64) {
        let events = (1..=n)
            .map(|i| {
                let call = ApiCall {
                    event_source: EC2_SOURCE,
                    event_name: if i % 2 == 0 {
                        "DescribeImages"
                    } else {
                        "RegisterImage"
                    },
                    read_only: i % 2 == 0,
                    account_id: Some("123456789012".into()),
                    request_id: format!("req-{i}"),
                    request_parameters: json!({}).into(),
                    time_ms: i * 1000,
                    ..ApiCall::default()
                };
                record_event("us-east-1", &call, &format!("ev-{i}"), 0)
            })
            .collect();
        log.append(events).unwrap();
    }

    fn lookup(attrs: &[(&str, &str)], max: u32, token: &str) -> Result<Lookup, LookupError> {
        let attrs: Vec<(String, String)> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Lookup::new(&attrs, None, None, max, token)
    }

    #[test]
    fn pages_go_newest_first_and_tokens_continue() {
        let log = MemoryLog::new();
        calls(&log, 7);
        let l = lookup(&[], 3, "").unwrap();
        let (page, token) = l.run(&log, None).unwrap();
        let ids: Vec<_> = page.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids, ["ev-7", "ev-6", "ev-5"]);
        let token = token.unwrap();
        // New records do not shift the next page.
        calls(&log, 1);
        let (page, token) = lookup(&[], 3, &token).unwrap().run(&log, None).unwrap();
        let ids: Vec<_> = page.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids, ["ev-4", "ev-3", "ev-2"]);
        let (page, token) = lookup(&[], 3, &token.unwrap())
            .unwrap()
            .run(&log, None)
            .unwrap();
        assert_eq!(page.len(), 1);
        assert!(token.is_none());
    }

    #[test]
    fn filters_and_bad_parameters() {
        let log = MemoryLog::new();
        calls(&log, 6);
        let (page, _) = lookup(&[("ReadOnly", "true")], 0, "")
            .unwrap()
            .run(&log, None)
            .unwrap();
        assert_eq!(page.len(), 3);
        assert!(page.iter().all(|r| r.read_only));
        let (page, _) = lookup(&[("EventName", "RegisterImage")], 0, "")
            .unwrap()
            .run(&log, None)
            .unwrap();
        assert_eq!(page.len(), 3);
        let (page, _) = Lookup::new(&[], Some(2000), Some(4000), 0, "")
            .unwrap()
            .run(&log, None)
            .unwrap();
        assert_eq!(
            page.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            [4000, 3000, 2000]
        );
        let (_, token) = lookup(&[("ReadOnly", "true")], 1, "")
            .unwrap()
            .run(&log, None)
            .unwrap();
        let token = token.unwrap();
        assert!(matches!(
            lookup(&[("ReadOnly", "false")], 1, &token),
            Err(LookupError::NextToken(_))
        ));
        assert!(matches!(
            lookup(&[], 1, "garbage"),
            Err(LookupError::NextToken(_))
        ));
        assert!(matches!(
            lookup(&[("EventName", "A"), ("ReadOnly", "true")], 0, ""),
            Err(LookupError::Attributes(_))
        ));
        assert!(matches!(
            lookup(&[("Colour", "red")], 0, ""),
            Err(LookupError::Attributes(_))
        ));
        assert!(matches!(
            lookup(&[("EventName", "")], 0, ""),
            Err(LookupError::Attributes(_))
        ));
        assert!(matches!(
            lookup(&[], 51, ""),
            Err(LookupError::MaxResults(_))
        ));
        assert!(matches!(
            Lookup::new(&[], Some(2), Some(1), 0, ""),
            Err(LookupError::TimeRange(_))
        ));
    }

    #[test]
    fn export_is_in_time_order() {
        let log = MemoryLog::new();
        calls(&log, 5);
        let mut export = Export::new(&log, None, Some(2000), None).unwrap();
        assert_eq!(export.total_events(), 4);
        let mut times = Vec::new();
        while let Some(r) = export.next_record().unwrap() {
            times.push(r.time_ms);
        }
        assert_eq!(times, [2000, 3000, 4000, 5000]);
        assert_eq!(export.events_read(), 4);
    }
}
