//! The client-observed history of a run, in Jepsen's form: every call is an `invoke` entry
//! followed by its completion, `ok` (it happened), `fail` (it certainly did not: the server
//! answered an EC2 error) or `info` (unknown: a timeout, a dropped connection, a node that
//! vanished mid-call — it may or may not have happened).
//!
//! ```json
//! {"index":0,"type":"invoke","f":"register_image","process":3,"time":1200,
//!  "value":{"name":"lab-3-1","snapshot_id":"snap-…"},"region":"us-east-1","sim_time_ms":…}
//! {"index":1,"type":"ok","f":"register_image","process":3,"time":5400,
//!  "value":{"image_id":"ami-…"},"region":"us-east-1","sim_time_ms":…}
//! ```
//!
//! `time` is wall nanoseconds since the run started (as Jepsen's); `sim_time_ms` the simulated
//! clock when the entry was recorded, which is what the fault timeline is measured in.
//! [`History::to_json`] writes the array that external checkers (Elle, Knossos, Porcupine
//! adapters) read.

use serde::{Deserialize, Serialize};

/// Jepsen's entry types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl EntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::Invoke => "invoke",
            EntryType::Ok => "ok",
            EntryType::Fail => "fail",
            EntryType::Info => "info",
        }
    }
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the history (0, 1, 2, ...).
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// The operation: `register_image`, `copy_image`, `share_image`, `deregister_image`,
    /// `create_snapshot`, `delete_snapshot`, `create_volume`, `describe_images`,
    /// `describe_global_images`.
    pub f: String,
    /// The client: one per (account, region) pair.
    pub process: u32,
    /// Wall ns since the run started.
    pub time: u64,
    /// The request (invoke) or its result (ok); the request again on fail/info.
    pub value: serde_json::Value,
    /// The region the call went to.
    pub region: String,
    /// The calling account.
    pub account: String,
    /// The simulated clock when recorded.
    pub sim_time_ms: u64,
    /// The EC2 error code (fail), or what went wrong (info: `grpc:Unavailable`,
    /// `client-timeout`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On a completion: wall ns since its invoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    /// For a copy: the source region (the pair the call stands for in the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_region: Option<String>,
}

impl Entry {
    /// A string field of `value`.
    pub fn value_str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(|v| v.as_str())
    }

    /// True for ok / fail / info.
    pub fn is_completion(&self) -> bool {
        self.kind != EntryType::Invoke
    }

    /// `source→dest` for a copy, else the region.
    pub fn pair(&self) -> String {
        match &self.source_region {
            Some(src) => format!("{src}->{}", self.region),
            None => self.region.clone(),
        }
    }
}

/// An invoke and its completion (None while in flight, or if the run ended first).
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    pub invoke: &'a Entry,
    pub completion: Option<&'a Entry>,
}

impl<'a> Op<'a> {
    pub fn ok(&self) -> Option<&'a Entry> {
        self.completion.filter(|c| c.kind == EntryType::Ok)
    }

    /// Ok or info: it may have happened.
    pub fn maybe_happened(&self) -> bool {
        matches!(
            self.completion.map(|c| c.kind),
            Some(EntryType::Ok) | Some(EntryType::Info) | None
        )
    }

    /// The invoke and the completion, for an excerpt.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v = vec![self.invoke.clone()];
        if let Some(c) = self.completion {
            v.push(c.clone());
        }
        v
    }
}

/// The whole history, in the order entries were recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History {
    pub entries: Vec<Entry>,
}

/// What [`History::invoke`] returns, to complete the call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub index: u64,
    pub process: u32,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invoke.
    #[allow(clippy::too_many_arguments)]
    pub fn invoke(
        &mut self,
        f: &str,
        process: u32,
        time: u64,
        sim_time_ms: u64,
        region: &str,
        account: &str,
        source_region: Option<&str>,
        value: serde_json::Value,
    ) -> Pending {
        let index = self.entries.len() as u64;
        self.entries.push(Entry {
            index,
            kind: EntryType::Invoke,
            f: f.to_string(),
            process,
            time,
            value,
            region: region.to_string(),
            account: account.to_string(),
            sim_time_ms,
            error: None,
            latency_ns: None,
            source_region: source_region.map(str::to_string),
        });
        Pending { index, process }
    }

    /// Records the completion of `pending`.
    pub fn complete(
        &mut self,
        pending: Pending,
        kind: EntryType,
        time: u64,
        sim_time_ms: u64,
        value: serde_json::Value,
        error: Option<String>,
    ) {
        let Some(inv) = self.entries.get(pending.index as usize).cloned() else {
            return;
        };
        let index = self.entries.len() as u64;
        self.entries.push(Entry {
            index,
            kind,
            f: inv.f,
            process: pending.process,
            time,
            value,
            region: inv.region,
            account: inv.account,
            sim_time_ms,
            error,
            latency_ns: Some(time.saturating_sub(inv.time)),
            source_region: inv.source_region,
        });
    }

    /// Every operation: invokes paired with their completions (a process has one call in flight
    /// at a time, so the next completion of the same process is the one).
    pub fn ops(&self) -> Vec<Op<'_>> {
        let mut open: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        let mut ops: Vec<Op<'_>> = Vec::new();
        for e in &self.entries {
            if e.kind == EntryType::Invoke {
                open.insert(e.process, ops.len());
                ops.push(Op {
                    invoke: e,
                    completion: None,
                });
            } else if let Some(i) = open.remove(&e.process) {
                ops[i].completion = Some(e);
            }
        }
        ops
    }

    /// The Jepsen-form JSON array.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(&self.entries)
    }

    /// Reads a history back.
    pub fn from_json(text: &str) -> serde_json::Result<History> {
        serde_json::from_str(text)
    }

    /// A cheap fingerprint of the schedule (what was called, where, in which order, and at
    /// which simulated time), without wall times or results: two runs of one seed have the
    /// same, two seeds almost never.
    pub fn schedule_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for e in self.entries.iter().filter(|e| e.kind == EntryType::Invoke) {
            h.update(e.f.as_bytes());
            h.update(e.process.to_le_bytes());
            h.update(e.region.as_bytes());
            h.update(e.sim_time_ms.to_le_bytes());
            h.update(e.value.to_string().as_bytes());
            h.update([0u8]);
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invokes_pair_with_their_completions_per_process() {
        let mut h = History::new();
        let a = h.invoke(
            "register_image",
            1,
            10,
            0,
            "us-east-1",
            "1",
            None,
            json!({}),
        );
        let b = h.invoke(
            "copy_image",
            2,
            11,
            0,
            "eu-west-1",
            "1",
            Some("us-east-1"),
            json!({}),
        );
        h.complete(
            b,
            EntryType::Fail,
            20,
            0,
            json!({}),
            Some("InvalidAMIID.NotFound".into()),
        );
        h.complete(a, EntryType::Ok, 30, 0, json!({"image_id": "ami-1"}), None);
        let ops = h.ops();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0].ok().and_then(|e| e.value_str("image_id")),
            Some("ami-1")
        );
        assert_eq!(ops[0].completion.unwrap().latency_ns, Some(20));
        assert_eq!(ops[1].completion.unwrap().kind, EntryType::Fail);
        assert_eq!(ops[1].invoke.pair(), "us-east-1->eu-west-1");
        assert!(!ops[1].maybe_happened());

        let text = h.to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["type"], "invoke");
        assert_eq!(v[2]["type"], "fail");
        assert_eq!(v[2]["error"], "InvalidAMIID.NotFound");
        assert!(v[0].get("error").is_none());
        assert_eq!(History::from_json(&text).unwrap(), h);
    }
}
