//! The report of one run: what an experimenter pastes into a design review.
//!
//! [`Report::build`] folds the history, the fault timeline, the copies and the verdicts into
//! plain numbers: per operation and region pair the p50/p95/p99/max latency and errors by EC2
//! code; the CopyImage completion-time distribution (simulated time, request to finish, from
//! `Coordinator.ListCopies`); the time to converge after the final heal; the verdicts with their
//! excerpts. Three renderings of the same [`Report`]:
//!
//! - [`text`]: the terminal (and `report.txt`);
//! - JSON (`serde`): `report.json`, for scripts;
//! - [`html`]: one self-contained page with inline SVG charts (latency over simulated time with
//!   the fault timeline as shaded bands and markers; the completion-time histogram), no external
//!   script, style sheet or font, so it can be mailed or attached as it is.

pub mod html;
pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checker::{CopyObs, DigestObs, Verdict};
use crate::history::{EntryType, History};
use crate::spec::{Experiment, FaultAction};

/// Latency and outcome counts of one operation on one region pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    /// The history's `f`.
    pub f: String,
    /// `us-east-1`, or `us-east-1->eu-west-1` for a copy.
    pub pair: String,
    pub calls: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Wall milliseconds, every completed call counted (an error is a call too).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// EC2 code (or `grpc:<code>`, `client-timeout`) → count.
    pub errors: BTreeMap<String, u64>,
}

/// One bar of the completion-time histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub from_ms: u64,
    pub to_ms: u64,
    pub count: u64,
}

/// CopyImage completion times, simulated ms from the request to `available` / `failed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyStats {
    pub copies: u64,
    pub available: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub unfinished: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub histogram: Vec<Bucket>,
    /// Per source→destination pair: count and p50 (simulated ms).
    pub by_pair: BTreeMap<String, (u64, f64)>,
}

/// How long the system took to settle after the final heal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    /// Reached within the timeout.
    pub reached: bool,
    /// Simulated ms from the heal to quiescence.
    pub sim_ms: u64,
    /// Wall ms from the heal to quiescence.
    pub wall_ms: u64,
    pub note: String,
}

/// A fault on the timeline: a band (`until_ms` set) or a marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultMark {
    /// Simulated ms since the workload started.
    pub at_ms: u64,
    pub until_ms: Option<u64>,
    pub action: String,
    pub description: String,
}

/// One call on the latency chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Simulated ms since the workload started (at the invoke).
    pub at_ms: u64,
    /// Wall ms.
    pub latency_ms: f64,
    pub f: String,
    /// `ok`, `fail` or `info`.
    pub outcome: String,
}

/// Facts that identify the run, for comparing two of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 of the schedule (calls, processes, regions, simulated times, requests).
    pub schedule: String,
    /// Region → digests.
    pub digests: Vec<DigestObs>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub experiment: String,
    pub description: String,
    pub seed: u64,
    /// Every resolved parameter (as printed at the start).
    pub parameters: Vec<String>,
    /// True when every verdict passes.
    pub pass: bool,
    pub verdicts: Vec<Verdict>,
    pub operations: Vec<OpStats>,
    pub copies: CopyStats,
    pub convergence: Convergence,
    pub faults: Vec<FaultMark>,
    /// Simulated ms of workload (the chart's x range).
    pub duration_ms: u64,
    /// Wall ms the whole run took.
    pub wall_ms: u64,
    pub calls: u64,
    pub points: Vec<Point>,
    pub fingerprint: Fingerprint,
}

/// Everything [`Report::build`] reads.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub experiment: &'a Experiment,
    pub seed: u64,
    pub history: &'a History,
    /// Simulated ms at which the workload started (history times are made relative to it).
    pub workload_start_ms: u64,
    pub copies: &'a [CopyObs],
    pub verdicts: Vec<Verdict>,
    pub convergence: Convergence,
    pub digests: Vec<DigestObs>,
    pub wall_ms: u64,
}

/// The nearest-rank percentile of sorted `v` (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// At most this many points on the latency chart (evenly thinned beyond).
const MAX_POINTS: usize = 4000;

impl Report {
    pub fn build(i: Inputs<'_>) -> Report {
        let ops = i.history.ops();
        let mut groups: BTreeMap<(String, String), (Vec<f64>, OpStats)> = BTreeMap::new();
        let mut points = Vec::new();
        for op in &ops {
            let key = (op.invoke.f.clone(), op.invoke.pair());
            let (lat, s) = groups.entry(key.clone()).or_insert_with(|| {
                (
                    Vec::new(),
                    OpStats {
                        f: key.0.clone(),
                        pair: key.1.clone(),
                        calls: 0,
                        ok: 0,
                        fail: 0,
                        info: 0,
                        p50_ms: 0.0,
                        p95_ms: 0.0,
                        p99_ms: 0.0,
                        max_ms: 0.0,
                        errors: BTreeMap::new(),
                    },
                )
            });
            s.calls += 1;
            let Some(c) = op.completion else {
                s.info += 1;
                continue;
            };
            match c.kind {
                EntryType::Ok => s.ok += 1,
                EntryType::Fail => s.fail += 1,
                _ => s.info += 1,
            }
            if let Some(e) = &c.error {
                *s.errors.entry(e.clone()).or_default() += 1;
            }
            let ms = c.latency_ns.unwrap_or(0) as f64 / 1e6;
            lat.push(ms);
            points.push(Point {
                at_ms: op.invoke.sim_time_ms.saturating_sub(i.workload_start_ms),
                latency_ms: ms,
                f: op.invoke.f.clone(),
                outcome: c.kind.as_str().to_string(),
            });
        }
        let operations = groups
            .into_values()
            .map(|(mut lat, mut s)| {
                lat.sort_by(f64::total_cmp);
                s.p50_ms = percentile(&lat, 50.0);
                s.p95_ms = percentile(&lat, 95.0);
                s.p99_ms = percentile(&lat, 99.0);
                s.max_ms = lat.last().copied().unwrap_or(0.0);
                s
            })
            .collect();
        if points.len() > MAX_POINTS {
            let step = points.len().div_ceil(MAX_POINTS);
            points = points.into_iter().step_by(step).collect();
        }
        let pass = i.verdicts.iter().all(|v| v.pass);
        Report {
            experiment: i.experiment.name.clone(),
            description: i.experiment.description.clone(),
            seed: i.seed,
            parameters: i.experiment.describe(),
            pass,
            verdicts: i.verdicts,
            operations,
            copies: copy_stats(i.copies),
            convergence: i.convergence,
            faults: fault_marks(i.experiment),
            duration_ms: i.experiment.duration_ms,
            wall_ms: i.wall_ms,
            calls: ops.len() as u64,
            points,
            fingerprint: Fingerprint {
                schedule: i.history.schedule_fingerprint(),
                digests: i.digests,
            },
        }
    }

    /// `report.json`.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// Completion times of the image copies.
pub fn copy_stats(copies: &[CopyObs]) -> CopyStats {
    let mut s = CopyStats::default();
    let mut times = Vec::new();
    let mut pairs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for c in copies {
        s.copies += 1;
        match c.phase.as_str() {
            "available" | "completed" => s.available += 1,
            "failed" => s.failed += 1,
            "cancelled" => s.cancelled += 1,
            _ => s.unfinished += 1,
        }
        if c.finished_at_ms > 0 && matches!(c.phase.as_str(), "available" | "completed" | "failed")
        {
            let t = c.finished_at_ms.saturating_sub(c.requested_at_ms) as f64;
            times.push(t);
            pairs
                .entry(format!("{}->{}", c.source_region, c.destination_region))
                .or_default()
                .push(t);
        }
    }
    times.sort_by(f64::total_cmp);
    s.p50_ms = percentile(&times, 50.0);
    s.p95_ms = percentile(&times, 95.0);
    s.p99_ms = percentile(&times, 99.0);
    s.max_ms = times.last().copied().unwrap_or(0.0);
    s.by_pair = pairs
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, (v.len() as u64, percentile(&v, 50.0)))
        })
        .collect();
    s.histogram = histogram(&times, 20);
    s
}

/// Up to `bars` equal buckets from 0 to the maximum, rounded to a whole second.
fn histogram(sorted: &[f64], bars: u64) -> Vec<Bucket> {
    let Some(&max) = sorted.last() else {
        return Vec::new();
    };
    let width = ((max / bars as f64 / 1000.0).ceil().max(1.0) as u64) * 1000;
    let n = ((max as u64) / width + 1).min(bars + 1);
    let mut out: Vec<Bucket> = (0..n)
        .map(|k| Bucket {
            from_ms: k * width,
            to_ms: (k + 1) * width,
            count: 0,
        })
        .collect();
    for &t in sorted {
        let k = ((t as u64) / width).min(n - 1) as usize;
        out[k].count += 1;
    }
    out
}

/// The fault timeline as bands (a condition that lasts) and markers (a moment).
pub fn fault_marks(exp: &Experiment) -> Vec<FaultMark> {
    let mut out: Vec<FaultMark> = Vec::new();
    // Open bands: key → index in `out`.
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let pair_key = |from: &str, to: &str| {
        let (a, b) = if from <= to { (from, to) } else { (to, from) };
        format!("link {a} {b}")
    };
    let close =
        |out: &mut Vec<FaultMark>, open: &mut BTreeMap<String, usize>, key: &str, at: u64| {
            if let Some(i) = open.remove(key) {
                out[i].until_ms = Some(at);
            }
        };
    for f in &exp.faults {
        let mark = |until: bool| FaultMark {
            at_ms: f.at_ms,
            until_ms: until.then_some(exp.duration_ms),
            action: f.action.name().to_string(),
            description: f.action.describe(),
        };
        match &f.action {
            FaultAction::Partition { pair } | FaultAction::Link { pair, .. } => {
                let key = pair_key(&pair.from, &pair.to);
                close(&mut out, &mut open, &key, f.at_ms);
                open.insert(key, out.len());
                out.push(mark(true));
            }
            FaultAction::Heal { pair: Some(pair) } => {
                close(
                    &mut out,
                    &mut open,
                    &pair_key(&pair.from, &pair.to),
                    f.at_ms,
                );
                out.push(mark(false));
            }
            FaultAction::Heal { pair: None } => {
                let keys: Vec<String> = open.keys().cloned().collect();
                for k in keys {
                    close(&mut out, &mut open, &k, f.at_ms);
                }
                out.push(mark(false));
            }
            FaultAction::Kill { node, .. } | FaultAction::Pause { node } => {
                let key = format!("node {node}");
                close(&mut out, &mut open, &key, f.at_ms);
                open.insert(key, out.len());
                out.push(mark(true));
            }
            FaultAction::Restart { node } | FaultAction::Resume { node } => {
                close(&mut out, &mut open, &format!("node {node}"), f.at_ms);
                out.push(mark(false));
            }
            FaultAction::Skew { .. } => out.push(mark(false)),
        }
    }
    out
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checker::{self, ImageObs, Observed};
    use serde_json::json;

    pub(crate) fn sample() -> Report {
        let exp = Experiment::parse(
            r#"
name = "sample"
description = "a <test> & more"
regions = ["us-east-1", "eu-west-1"]
duration = "60s"
[workload]
register = 1
copy_cross_region = 1
[[faults]]
at = "10s"
action = "partition"
from = "us-east-1"
to = "eu-west-1"
[[faults]]
at = "30s"
action = "heal"
[[faults]]
at = "40s"
action = "kill"
node = "eu-west-1"
[[faults]]
at = "45s"
action = "restart"
node = "eu-west-1"
"#,
            "sample.toml",
            "sample",
        )
        .unwrap();
        let mut h = History::new();
        let start = 1_000_000;
        for k in 0..50u64 {
            let p = h.invoke(
                "copy_image",
                (k % 3) as u32,
                k * 1_000_000,
                start + k * 1000,
                "eu-west-1",
                "100000000000",
                Some("us-east-1"),
                json!({"source_image_id": "ami-1"}),
            );
            let (kind, err) = match k % 10 {
                0 => (EntryType::Fail, Some("InvalidAMIID.NotFound".to_string())),
                5 => (EntryType::Info, Some("grpc:Unavailable".to_string())),
                _ => (EntryType::Ok, None),
            };
            h.complete(
                p,
                kind,
                k * 1_000_000 + (k + 1) * 100_000,
                start + k * 1000,
                json!({"image_id": format!("ami-c{k}")}),
                err,
            );
        }
        let copies: Vec<CopyObs> = (0..30u64)
            .map(|k| CopyObs {
                copy_id: format!("copy-{k}"),
                source_region: "us-east-1".into(),
                destination_region: "eu-west-1".into(),
                phase: if k == 3 { "failed" } else { "available" }.into(),
                requested_at_ms: 1000,
                finished_at_ms: 1000 + 60_000 + k * 2_000,
                ..Default::default()
            })
            .collect();
        let mut o = Observed::default();
        o.images.insert(
            "us-east-1".into(),
            [("ami-x".to_string(), ImageObs::default())].into(),
        );
        let verdicts = checker::check(&h, &o);
        Report::build(Inputs {
            experiment: &exp,
            seed: 7,
            history: &h,
            workload_start_ms: start,
            copies: &copies,
            verdicts,
            convergence: Convergence {
                reached: true,
                sim_ms: 90_000,
                wall_ms: 120,
                note: "ok".into(),
            },
            digests: vec![],
            wall_ms: 1234,
        })
    }

    #[test]
    fn stats_group_by_operation_and_pair() {
        let r = sample();
        assert_eq!(r.operations.len(), 1);
        let s = &r.operations[0];
        assert_eq!(s.pair, "us-east-1->eu-west-1");
        assert_eq!((s.calls, s.ok, s.fail, s.info), (50, 40, 5, 5));
        assert_eq!(s.errors["InvalidAMIID.NotFound"], 5);
        assert!(s.p50_ms <= s.p95_ms && s.p95_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
        assert!((s.max_ms - 5.0).abs() < 1e-9, "{}", s.max_ms);
        assert_eq!(r.copies.copies, 30);
        assert_eq!(r.copies.failed, 1);
        assert_eq!(r.copies.histogram.iter().map(|b| b.count).sum::<u64>(), 30);
        assert_eq!(r.copies.p50_ms, 60_000.0 + 14.0 * 2_000.0);
        assert!(!r.pass);
    }

    #[test]
    fn the_fault_timeline_has_bands_and_markers() {
        let r = sample();
        let bands: Vec<&FaultMark> = r.faults.iter().filter(|f| f.until_ms.is_some()).collect();
        assert_eq!(bands.len(), 2, "{:?}", r.faults);
        assert_eq!((bands[0].at_ms, bands[0].until_ms), (10_000, Some(30_000)));
        assert_eq!((bands[1].at_ms, bands[1].until_ms), (40_000, Some(45_000)));
    }

    #[test]
    fn the_json_report_parses_back() {
        let r = sample();
        let text = r.to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["seed"], 7);
        assert_eq!(v["operations"][0]["f"], "copy_image");
        assert!(v["verdicts"].as_array().unwrap().len() >= 5);
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
