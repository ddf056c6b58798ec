//! `amisim bench`: a load generator for the `Ec2` API of any endpoint (a region node, the
//! gateway of `amisim dev` / `amisim coordinator`), or of a region node it starts in-process
//! (`--embedded`), so a measurement needs no server set up.
//!
//! A run has up to three phases, each with its own progress bar on stderr:
//!
//! 1. **Preload**: per account, volumes (waited `available`), one snapshot of each (waited
//!    `completed`: RegisterImage needs completed snapshots), then `--preload-images` images
//!    spread round-robin over the accounts. Their names put every `--filter-match` images of an
//!    account in one group, so `describe-filter` (a `name` wildcard) returns that many.
//! 2. **Echo**: the gRPC health check at the same concurrency for `--echo-duration`: the bare
//!    gRPC ceiling of this machine, client and server included, measured in the same run.
//! 3. **Run**: `--concurrency` workers, each with one call in flight, draw operations from
//!    `--mix` (seeded RNG) until `--duration` passes or `--count` calls are done.
//!
//! Several `--mix` flags run one after the other on the same preload; a list of concurrency
//! levels (`--concurrency 1,64`) repeats the echo and every mix at each level, so one preload of
//! a large state gives latency at low load and throughput at high load.
//!
//! The report: per operation, calls, errors, ops/s, its ratio to the echo ceiling, and
//! p50/p99/p99.9/max latency (HDR histograms, microsecond resolution, every call counted: a
//! fast error is a call too) and the errors by EC2 code (`x-amisim-error-code`; a status
//! without one counts as `grpc:<status>`, a call past `--timeout` as `client-timeout`). An EC2
//! error is an outcome, never a reason to stop. `--json FILE` writes the same as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::*;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::shutdown::Shutdown;

mod copy_completion;

/// The default operation mix.
pub const DEFAULT_MIX: &str =
    "register=50,describe-id=30,describe-filter=10,describe-owner=5,create-snapshot=5";
/// Accounts are `ACCOUNT_BASE + n`: `100000000000`, `100000000001`, ...
const ACCOUNT_BASE: u64 = 100_000_000_000;
/// Longest response a bench client accepts (a `describe-owner` without a page size).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Highest latency the histograms track exactly (longer calls are recorded as this).
const MAX_LATENCY_US: u64 = 300_000_000;

/// Load an Ec2 endpoint with a mix of operations and report throughput and latency.
///
/// Throughput is also given as a ratio to the gRPC health check at the same concurrency,
/// measured first in the same run (`--echo-duration`). Prints the seed and every resolved
/// parameter first, then a table; `--json FILE` writes the report as JSON. EC2 errors are
/// counted by code, never fatal.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The gRPC endpoint to load: a region node, or the gateway of `amisim dev` or
    /// `amisim coordinator` [default: http://127.0.0.1:50051].
    #[arg(long, env = "AMISIM_BENCH_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// Start a region node in this process (a sled log in a temporary directory, or --data)
    /// and load it: nothing else to set up. Wins over --endpoint.
    #[arg(long)]
    pub embedded: bool,

    /// With --embedded: keep the node's log in DIR (created if missing) instead of a temporary
    /// directory, e.g. to time a restart of `amisim region --data DIR` on it afterwards.
    #[arg(long, value_name = "DIR", requires = "embedded")]
    pub data: Option<PathBuf>,

    /// With --embedded: the node writes a projection checkpoint every N events (and at its
    /// clean shutdown), as `amisim region --checkpoint-every`; 0: only at shutdown. Each one
    /// encodes the whole state on a background thread, so a long RegisterImage run pays for
    /// checkpoints of a growing state.
    #[arg(long, value_name = "N", requires = "embedded",
          default_value_t = amisim_region::StorageConfig::default().checkpoint_every)]
    pub checkpoint_every: u64,

    /// With --embedded: the node's simulated seconds per wall second. Large, so snapshots of the
    /// preload complete at once (a 1 GiB snapshot takes ~22 simulated seconds).
    #[arg(long, value_name = "FACTOR", default_value_t = 1000.0, value_parser = parse_scale)]
    pub time_scale: f64,

    /// The region the calls are for (metadata `x-amisim-region`; the region of an embedded node).
    #[arg(
        long,
        env = "AMISIM_BENCH_REGION",
        value_name = "REGION",
        default_value = "us-east-1"
    )]
    pub region: String,

    /// Calls in flight at any time (one per worker). A list (`1,64`) repeats the echo
    /// measurement and every mix at each level; the preload uses the highest.
    #[arg(long, value_name = "N[,N...]", default_value = "64", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Vec<u32>,

    /// HTTP/2 connections the workers share (round-robin).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// How long the run lasts (`10s`, `500ms`, `2m`). Ignored with --count.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop after exactly N calls instead of after --duration.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Operations and their weights: register, describe-id, describe-filter, describe-owner,
    /// create-snapshot, copy-image (same region), modify-attribute (ModifyImageAttribute
    /// description), echo (gRPC health check). Repeat to run several mixes one after the other
    /// on the same preload and echo measurement (one table each).
    #[arg(long, value_name = "OP=WEIGHT,...", default_value = DEFAULT_MIX, value_parser = Mix::parse)]
    pub mix: Vec<Mix>,

    /// Accounts the calls are spread over: 100000000000, 100000000001, ... (each call picks one
    /// at random and acts on that account's resources).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub accounts: u32,

    /// Images registered before the run, spread over the accounts (describe-*, copy-image and
    /// modify-attribute act on them).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub preload_images: u64,

    /// Calls in flight during the preload (its RegisterImage calls are group-committed by the
    /// node, so a high value loads 1,000,000 real images in minutes). Default: the largest
    /// --concurrency, at least 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub preload_concurrency: Option<u32>,

    /// Instead of the mixes: time N cross-region copies end to end (CopyImage accepted →
    /// image available in the destination) in an in-process cluster (us-east-1 → eu-west-1 and
    /// a coordinator, on a scaled clock at --time-scale), and report what each adds beyond its
    /// simulated duration (issue 7: at most 5 ms).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub copy_completion: Option<u32>,

    /// With --copy-completion: the link between the two regions, `LATENCY_MS:MIB_PER_S` in
    /// simulated time.
    #[arg(
        long,
        value_name = "MS:MIB",
        default_value = "1000:1024",
        requires = "copy_completion"
    )]
    pub copy_link: String,

    /// Volumes per account made before the run; each gets one snapshot (the snapshots images
    /// are registered from; create-snapshot cycles over the volumes).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub volumes_per_account: u32,

    /// Images one describe-filter call matches (the preload names them in groups this size).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub filter_match: u64,

    /// `max_results` of describe-owner (`owners: [self]`), 5 to 1000; 0 asks for every image.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = parse_page_size)]
    pub page_size: u32,

    /// Measure the gRPC health check this long before the run (`0` to skip).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub echo_duration: Duration,

    /// A call taking longer counts as the error `client-timeout`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Seed of the operation choice (and of an embedded node's ids). Default: random, printed.
    #[arg(long, env = "AMISIM_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

// -------------------------------------------------------------------------------------------
// Operations and the mix
// -------------------------------------------------------------------------------------------

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Register,
    DescribeId,
    DescribeFilter,
    DescribeOwner,
    CreateSnapshot,
    CopyImage,
    ModifyAttribute,
    Echo,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Register,
        Op::DescribeId,
        Op::DescribeFilter,
        Op::DescribeOwner,
        Op::CreateSnapshot,
        Op::CopyImage,
        Op::ModifyAttribute,
        Op::Echo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::DescribeId => "describe-id",
            Op::DescribeFilter => "describe-filter",
            Op::DescribeOwner => "describe-owner",
            Op::CreateSnapshot => "create-snapshot",
            Op::CopyImage => "copy-image",
            Op::ModifyAttribute => "modify-attribute",
            Op::Echo => "echo",
        }
    }

    /// The RPC it calls.
    pub fn rpc(self) -> &'static str {
        match self {
            Op::Register => "RegisterImage",
            Op::DescribeId | Op::DescribeFilter | Op::DescribeOwner => "DescribeImages",
            Op::CreateSnapshot => "CreateSnapshot",
            Op::CopyImage => "CopyImage",
            Op::ModifyAttribute => "ModifyImageAttribute",
            Op::Echo => "grpc.health.v1.Health/Check",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "modify-image-attribute" => Op::ModifyAttribute,
            "register-image" => Op::Register,
            _ => return Op::ALL.into_iter().find(|op| op.name() == s),
        })
    }

    /// True if it acts on preloaded images.
    fn needs_images(self) -> bool {
        matches!(
            self,
            Op::DescribeId | Op::DescribeFilter | Op::CopyImage | Op::ModifyAttribute
        )
    }
}

/// Operations with integer weights; an operation is drawn with probability weight / total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    entries: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    /// Parses `op=weight,op=weight` (weights are non-negative integers, not all zero; each
    /// operation at most once; an operation of weight 0 is left out).
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut entries: Vec<(Op, u32)> = Vec::new();
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not op=weight"))?;
            let name = name.trim();
            let op = Op::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
                format!("unknown operation '{name}' (known: {})", known.join(", "))
            })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("the weight of {name} must be a whole number, got '{weight}'")
            })?;
            if seen.contains(&op) {
                return Err(format!("{} is given twice", op.name()));
            }
            seen.push(op);
            if weight > 0 {
                entries.push((op, weight));
            }
        }
        let total = entries
            .iter()
            .try_fold(0u32, |acc, (_, w)| acc.checked_add(*w))
            .ok_or("the weights add up to more than 2^32")?;
        if total == 0 {
            return Err("the mix needs at least one operation with a weight above 0".into());
        }
        Ok(Mix { entries, total })
    }

    /// The operation drawn for `r` in `0..total`.
    pub fn pick(&self, r: u32) -> Op {
        let mut left = r % self.total;
        for (op, w) in &self.entries {
            if left < *w {
                return *op;
            }
            left -= w;
        }
        // Unreachable for r < total; the last entry is a safe answer anyway.
        self.entries.last().map_or(Op::Echo, |(op, _)| *op)
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.entries.iter().map(|(op, _)| *op)
    }

    fn only_echo(&self) -> bool {
        self.ops().all(|op| op == Op::Echo)
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(op, w)| format!("{}={w}", op.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `10s`, `500ms`, `2m`, `1h`, `1.5s`, or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{s}' needs a unit: ms, s, m or h (e.g. 10s)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit '{unit}' in '{s}': use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is out of range"))
}

fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a positive number, got {s}"))
    }
}

fn parse_page_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v == 0 || (5..=1000).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be 0 (everything) or 5 to 1000, got {v}"))
    }
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

// -------------------------------------------------------------------------------------------
// Statistics and the report
// -------------------------------------------------------------------------------------------

/// What one worker saw of one operation.
#[derive(Debug, Clone)]
struct OpStats {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            // Bounds and precision are constants known to be valid; the fallback is unreachable.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
        match outcome {
            Ok(()) => self.ok += 1,
            Err(code) => *self.errors.entry(code).or_default() += 1,
        }
    }

    fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }
}

type Stats = BTreeMap<Op, OpStats>;

fn merge_stats(into: &mut Stats, from: &Stats) {
    for (op, s) in from {
        into.entry(*op).or_insert_with(OpStats::new).merge(s);
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// One operation of a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpSummary {
    pub op: String,
    pub rpc: String,
    pub calls: u64,
    pub ok: u64,
    /// Errors by EC2 code (`grpc:<status>` without one, `client-timeout`).
    pub errors: BTreeMap<String, u64>,
    /// Calls (ok or not) per second of the phase.
    pub ops_per_s: f64,
    /// `ops_per_s` ÷ the echo phase's ops/s (absent without an echo phase).
    pub ratio_to_echo: Option<f64>,
    pub latency_us: Latency,
}

/// One phase (echo or run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseSummary {
    pub elapsed_s: f64,
    pub calls: u64,
    pub ok: u64,
    pub ops_per_s: f64,
    pub ratio_to_echo: Option<f64>,
    /// Every call of the phase.
    pub latency_us: Latency,
    pub ops: Vec<OpSummary>,
}

impl PhaseSummary {
    fn of(stats: &Stats, elapsed: Duration, echo_ops_per_s: Option<f64>) -> PhaseSummary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ratio = |v: f64| echo_ops_per_s.filter(|e| *e > 0.0).map(|e| v / e);
        let mut all = OpStats::new();
        let mut ops = Vec::new();
        for (op, s) in stats {
            all.merge(s);
            let calls = s.ok + s.errors.values().sum::<u64>();
            let ops_per_s = calls as f64 / secs;
            ops.push(OpSummary {
                op: op.name().to_string(),
                rpc: op.rpc().to_string(),
                calls,
                ok: s.ok,
                errors: s.errors.clone(),
                ops_per_s,
                ratio_to_echo: ratio(ops_per_s),
                latency_us: Latency::of(&s.latency_us),
            });
        }
        let calls = all.ok + all.errors.values().sum::<u64>();
        let ops_per_s = calls as f64 / secs;
        PhaseSummary {
            elapsed_s: elapsed.as_secs_f64(),
            calls,
            ok: all.ok,
            ops_per_s,
            ratio_to_echo: ratio(ops_per_s),
            latency_us: Latency::of(&all.latency_us),
            ops,
        }
    }
}

/// Microseconds as milliseconds with a precision that fits the size.
fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.3}ms")
    } else if v < 1000.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.0}ms")
    }
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// The result table of a run, with the echo ceiling it is compared to, and the errors by code.
pub fn render_table(run: &PhaseSummary, echo: Option<&PhaseSummary>) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<16} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "operation", "calls", "errors", "ops/s", "vs echo", "p50", "p99", "p99.9", "max"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    let row = |out: &mut String, name: &str, calls: u64, ok: u64, ops: f64, r, l: &Latency| {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>10.1} {:>8} {:>9} {:>9} {:>9} {:>9}",
            name,
            calls,
            calls - ok,
            ops,
            pct(r),
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
    };
    for o in &run.ops {
        row(
            &mut out,
            &o.op,
            o.calls,
            o.ok,
            o.ops_per_s,
            o.ratio_to_echo,
            &o.latency_us,
        );
    }
    if run.ops.len() > 1 {
        row(
            &mut out,
            "total",
            run.calls,
            run.ok,
            run.ops_per_s,
            run.ratio_to_echo,
            &run.latency_us,
        );
    }
    let _ = writeln!(
        out,
        "{} calls in {:.2}s; latency over every call, ok or not",
        run.calls, run.elapsed_s
    );
    match echo {
        Some(e) => {
            let _ = writeln!(
                out,
                "echo (gRPC health check, same concurrency): {:.1} ops/s, p50 {}, p99 {} over {:.2}s; \
                 run throughput = {} of echo",
                e.ops_per_s,
                ms(e.latency_us.p50),
                ms(e.latency_us.p99),
                e.elapsed_s,
                pct(run.ratio_to_echo)
            );
        }
        None if run.ratio_to_echo.is_some() => {
            let _ = writeln!(
                out,
                "echo: this run is the echo (the gRPC health check alone)"
            );
        }
        None => {
            let _ = writeln!(out, "echo: not measured (--echo-duration 0)");
        }
    }
    let errors: Vec<(&str, &str, u64)> = run
        .ops
        .iter()
        .flat_map(|o| {
            o.errors
                .iter()
                .map(|(c, n)| (o.op.as_str(), c.as_str(), *n))
        })
        .collect();
    if errors.is_empty() {
        let _ = writeln!(out, "errors: none");
    } else {
        let _ = writeln!(out, "errors by code:");
        for (op, code, n) in errors {
            let _ = writeln!(out, "  {op:<16} {code:<44} {n:>9}");
        }
    }
    out
}

// -------------------------------------------------------------------------------------------
// The target: connections, metadata, error codes
// -------------------------------------------------------------------------------------------

/// Where the calls go.
#[derive(Clone)]
struct Target {
    channels: Vec<Channel>,
    region: AsciiMetadataValue,
    accounts: Vec<AsciiMetadataValue>,
    timeout: Duration,
}

impl Target {
    fn ec2(&self, i: usize) -> Ec2Client<Channel> {
        Ec2Client::new(self.channel(i)).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn health(&self, i: usize) -> HealthClient<Channel> {
        HealthClient::new(self.channel(i))
    }

    fn channel(&self, i: usize) -> Channel {
        // `channels` is never empty (at least one connection); index modulo its length.
        self.channels[i % self.channels.len()].clone()
    }

    /// A request as account `a` in the target region.
    fn req<T>(&self, a: usize, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        md.insert("x-amisim-region", self.region.clone());
        if let Some(acct) = self.accounts.get(a) {
            md.insert("x-amisim-account", acct.clone());
        }
        r
    }
}

/// The error of a failed call: its EC2 code, else `grpc:<status code>`.
fn error_code(s: &Status) -> String {
    s.metadata()
        .get(amisim_region::ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("grpc:{:?}", s.code()))
}

/// Runs `call` within the target's timeout; the response or the error code.
async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(error_code(&s)),
        Err(_) => Err("client-timeout".to_string()),
    }
}

async fn connect(url: &str, n: u32) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| {
            format!("'{url}' is not a valid endpoint URL (e.g. http://127.0.0.1:50051)")
        })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    let mut channels = Vec::new();
    for _ in 0..n {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url} (is a server running there?)"))?,
        );
    }
    Ok(channels)
}

// -------------------------------------------------------------------------------------------
// Preload
// -------------------------------------------------------------------------------------------

/// What the preload made, per account (indexes match `Target::accounts`).
#[derive(Debug, Default)]
struct Fixture {
    prefix: String,
    volumes: Vec<Vec<String>>,
    snapshots: Vec<Vec<String>>,
    images: Vec<Vec<String>>,
    /// Full name groups of `--filter-match` images per account.
    groups: Vec<u64>,
}

impl Fixture {
    fn image_name(prefix: &str, account: usize, group: u64, k: u64) -> String {
        format!("{prefix}-a{account:03}-g{group:06}-{k:07}")
    }

    fn group_pattern(&self, account: usize, group: u64) -> String {
        format!("{}-a{account:03}-g{group:06}-*", self.prefix)
    }
}

fn progress_bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {pos}/{len} {per_sec:>12} {elapsed_precise} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

/// Runs `f(i)` for `i` in `0..n` with at most `concurrency` in flight; the results in order.
async fn run_parallel<T, F, Fut>(
    n: usize,
    concurrency: usize,
    bar: &ProgressBar,
    f: F,
) -> Vec<Result<T, String>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let f = f.clone();
        let next = next.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return done;
                }
                done.push((i, f(i).await));
                bar.inc(1);
            }
        });
    }
    let mut results: Vec<Option<Result<T, String>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(done) => {
                for (i, r) in done {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "a preload task failed"),
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("task-failed".to_string())))
        .collect()
}

/// `Ok` values, or an error naming the failures by code.
fn all_ok<T>(what: &str, results: Vec<Result<T, String>>) -> anyhow::Result<Vec<T>> {
    let mut ok = Vec::with_capacity(results.len());
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(code) => *failed.entry(code).or_default() += 1,
        }
    }
    if failed.is_empty() {
        return Ok(ok);
    }
    let codes: Vec<String> = failed.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
    bail!(
        "preload: {} of {} {what} failed: {}",
        failed.values().sum::<u64>(),
        ok.len() as u64 + failed.values().sum::<u64>(),
        codes.join(", ")
    )
}

/// Polls until `check` says every item of every account is ready.
async fn wait_until<F, Fut>(
    what: &str,
    limit: Duration,
    bar: &ProgressBar,
    check: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<u64, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(0) => return Ok(()),
            Ok(pending) => bar.set_message(format!("waiting for {pending} {what}")),
            Err(code) => bar.set_message(format!("waiting for {what}: {code}")),
        }
        if start.elapsed() > limit {
            bail!(
                "preload: {what} not ready after {}s (a slow simulated clock? with --embedded raise --time-scale)",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn preload(target: &Target, args: &BenchArgs, prefix: String) -> anyhow::Result<Fixture> {
    let accounts = target.accounts.len();
    let conc = args
        .preload_concurrency
        .unwrap_or_else(|| args.concurrency.iter().copied().max().unwrap_or(1).max(64))
        as usize;
    let vpa = args.volumes_per_account as usize;
    let az = format!("{}a", args.region);
    let mut fx = Fixture {
        prefix,
        ..Fixture::default()
    };

    // Volumes.
    let bar = progress_bar((accounts * vpa) as u64, "volumes");
    let t = target.clone();
    let results = run_parallel(accounts * vpa, conc, &bar, move |i| {
        let t = t.clone();
        let az = az.clone();
        async move {
            let req = CreateVolumeRequest {
                availability_zone: az,
                size: Some(1),
                volume_type: "gp3".into(),
                ..Default::default()
            };
            let mut c = t.ec2(i);
            timed(t.timeout, c.create_volume(t.req(i % accounts, req)))
                .await
                .map(|v| (i % accounts, v.volume_id))
        }
    })
    .await;
    fx.volumes.resize(accounts, Vec::new());
    for (a, id) in all_ok("CreateVolume calls", results)? {
        fx.volumes[a].push(id);
    }
    let vols = Arc::new(fx.volumes.clone());
    let t = target.clone();
    wait_until(
        "volumes to be available",
        Duration::from_secs(120),
        &bar,
        || {
            let t = t.clone();
            let vols = vols.clone();
            async move {
                let mut pending = 0;
                for (a, ids) in vols.iter().enumerate() {
                    let req = DescribeVolumesRequest {
                        volume_ids: ids.clone(),
                        ..Default::default()
                    };
                    let r = timed(t.timeout, t.ec2(a).describe_volumes(t.req(a, req))).await?;
                    pending += r.volumes.iter().filter(|v| v.state != "available").count() as u64;
                }
                Ok(pending)
            }
        },
    )
    .await?;
    bar.finish_with_message("available");

    // One snapshot per volume.
    let bar = progress_bar((accounts * vpa) as u64, "snapshots");
    let t = target.clone();
    let results = run_parallel(accounts * vpa, conc, &bar, move |i| {
        let t = t.clone();
        let vols = vols.clone();
        async move {
            let (a, k) = (i % accounts, i / accounts);
            let volume_id = vols
                .get(a)
                .and_then(|v| v.get(k))
                .cloned()
                .ok_or_else(|| "no-volume".to_string())?;
            let req = CreateSnapshotRequest {
                volume_id,
                description: "amisim bench".into(),
                ..Default::default()
            };
            timed(t.timeout, t.ec2(i).create_snapshot(t.req(a, req)))
                .await
                .map(|s| (a, s.snapshot_id))
        }
    })
    .await;
    fx.snapshots.resize(accounts, Vec::new());
    for (a, id) in all_ok("CreateSnapshot calls", results)? {
        fx.snapshots[a].push(id);
    }
    let snaps = Arc::new(fx.snapshots.clone());
    let t = target.clone();
    wait_until(
        "snapshots to complete",
        Duration::from_secs(300),
        &bar,
        || {
            let t = t.clone();
            let snaps = snaps.clone();
            async move {
                let mut pending = 0;
                for (a, ids) in snaps.iter().enumerate() {
                    let req = DescribeSnapshotsRequest {
                        snapshot_ids: ids.clone(),
                        ..Default::default()
                    };
                    let r = timed(t.timeout, t.ec2(a).describe_snapshots(t.req(a, req))).await?;
                    if r.snapshots.iter().any(|s| s.state == "error") {
                        return Err("a snapshot failed (state error)".into());
                    }
                    pending += r
                        .snapshots
                        .iter()
                        .filter(|s| s.state != "completed")
                        .count() as u64;
                }
                Ok(pending)
            }
        },
    )
    .await?;
    bar.finish_with_message("completed");

    // Images, round-robin over the accounts, named in groups of --filter-match.
    let n = usize::try_from(args.preload_images).context("--preload-images is too large")?;
    let filter_match = args.filter_match;
    fx.images.resize(accounts, Vec::new());
    if n > 0 {
        let bar = progress_bar(n as u64, "images");
        let t = target.clone();
        let prefix = fx.prefix.clone();
        let results = run_parallel(n, conc, &bar, move |i| {
            let t = t.clone();
            let snaps = snaps.clone();
            let prefix = prefix.clone();
            async move {
                let (a, k) = (i % accounts, (i / accounts) as u64);
                let snap = snaps
                    .get(a)
                    .and_then(|s| s.get(k as usize % s.len().max(1)))
                    .cloned()
                    .ok_or_else(|| "no-snapshot".to_string())?;
                let req =
                    register_request(Fixture::image_name(&prefix, a, k / filter_match, k), snap);
                timed(t.timeout, t.ec2(i).register_image(t.req(a, req)))
                    .await
                    .map(|r| (a, r.image_id))
            }
        })
        .await;
        bar.finish();
        for (a, id) in all_ok("RegisterImage calls", results)? {
            fx.images[a].push(id);
        }
    }
    fx.groups = fx
        .images
        .iter()
        .map(|ids| (ids.len() as u64 / filter_match).max(1))
        .collect();
    Ok(fx)
}

fn register_request(name: String, snapshot_id: String) -> RegisterImageRequest {
    RegisterImageRequest {
        name,
        architecture: "x86_64".into(),
        virtualization_type: "hvm".into(),
        root_device_name: "/dev/xvda".into(),
        block_device_mappings: vec![BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                snapshot_id,
                volume_type: "gp3".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

// -------------------------------------------------------------------------------------------
// The load
// -------------------------------------------------------------------------------------------

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    At(Instant),
    After(u64),
}

/// Shared by the workers of one phase.
struct Phase {
    target: Target,
    fixture: Arc<Fixture>,
    mix: Mix,
    stop: Stop,
    /// Calls started (count mode) ...
    started: AtomicU64,
    /// ... and finished.
    finished: AtomicU64,
    page_size: u32,
    /// This phase's number in the bench (names of new images are unique across phases).
    number: u32,
}

impl Phase {
    fn take(&self) -> bool {
        match self.stop {
            Stop::At(t) => Instant::now() < t,
            Stop::After(n) => self.started.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

/// Per-worker counters, for unique names and volume rotation.
struct WorkerState {
    id: usize,
    rng: ChaCha8Rng,
    n: u64,
}

async fn call(p: &Phase, w: &mut WorkerState, op: Op, a: usize) -> Result<(), String> {
    let t = &p.target;
    let fx = &p.fixture;
    let timeout = t.timeout;
    w.n += 1;
    let pick = |rng: &mut ChaCha8Rng, v: &[String]| -> Result<String, String> {
        if v.is_empty() {
            return Err("bench:no-preloaded-resource".into());
        }
        Ok(v[rng.random_range(0..v.len())].clone())
    };
    let empty = Vec::new();
    let images = fx.images.get(a).unwrap_or(&empty);
    match op {
        Op::Echo => {
            let req = HealthCheckRequest {
                service: String::new(),
            };
            timed(timeout, t.health(w.id).check(Request::new(req)))
                .await
                .map(drop)
        }
        Op::Register => {
            let snap = pick(&mut w.rng, fx.snapshots.get(a).unwrap_or(&empty))?;
            let name = format!("{}-p{}-w{:03}-{:08}", fx.prefix, p.number, w.id, w.n);
            let req = register_request(name, snap);
            timed(timeout, t.ec2(w.id).register_image(t.req(a, req)))
                .await
                .map(drop)
        }
        Op::DescribeId => {
            let req = DescribeImagesRequest {
                image_ids: vec![pick(&mut w.rng, images)?],
                ..Default::default()
            };
            let r = timed(timeout, t.ec2(w.id).describe_images(t.req(a, req))).await?;
            if r.images.len() == 1 {
                Ok(())
            } else {
                Err(format!("bench:expected-1-image-got-{}", r.images.len()))
            }
        }
        Op::DescribeFilter => {
            let groups = fx.groups.get(a).copied().unwrap_or(1).max(1);
            let g = w.rng.random_range(0..groups);
            let req = DescribeImagesRequest {
                filters: vec![Filter {
                    name: "name".into(),
                    values: vec![fx.group_pattern(a, g)],
                }],
                ..Default::default()
            };
            timed(timeout, t.ec2(w.id).describe_images(t.req(a, req)))
                .await
                .map(drop)
        }
        Op::DescribeOwner => {
            let req = DescribeImagesRequest {
                owners: vec!["self".into()],
                max_results: (p.page_size > 0).then_some(p.page_size as i32),
                ..Default::default()
            };
            timed(timeout, t.ec2(w.id).describe_images(t.req(a, req)))
                .await
                .map(drop)
        }
        Op::CreateSnapshot => {
            let vols = fx.volumes.get(a).unwrap_or(&empty);
            if vols.is_empty() {
                return Err("bench:no-preloaded-resource".into());
            }
            let volume_id = vols[(w.n as usize + w.id) % vols.len()].clone();
            let req = CreateSnapshotRequest {
                volume_id,
                description: "amisim bench".into(),
                ..Default::default()
            };
            timed(timeout, t.ec2(w.id).create_snapshot(t.req(a, req)))
                .await
                .map(drop)
        }
        Op::CopyImage => {
            let req = CopyImageRequest {
                source_image_id: pick(&mut w.rng, images)?,
                source_region: t.region.to_str().unwrap_or_default().to_string(),
                name: format!("{}-p{}-c{:03}-{:08}", fx.prefix, p.number, w.id, w.n),
                ..Default::default()
            };
            timed(timeout, t.ec2(w.id).copy_image(t.req(a, req)))
                .await
                .map(drop)
        }
        Op::ModifyAttribute => {
            let req = ModifyImageAttributeRequest {
                image_id: pick(&mut w.rng, images)?,
                description: Some(AttributeValue {
                    value: format!("amisim bench {}", w.n),
                }),
                ..Default::default()
            };
            timed(timeout, t.ec2(w.id).modify_image_attribute(t.req(a, req)))
                .await
                .map(drop)
        }
    }
}

async fn worker(p: Arc<Phase>, id: usize, seed: u64) -> Stats {
    let mut w = WorkerState {
        id,
        rng: ChaCha8Rng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        n: 0,
    };
    let accounts = p.target.accounts.len().max(1);
    let mut stats = Stats::new();
    while p.take() {
        let op = p.mix.pick(w.rng.random_range(0..p.mix.total()));
        let a = w.rng.random_range(0..accounts);
        let start = Instant::now();
        let outcome = call(&p, &mut w, op, a).await;
        stats
            .entry(op)
            .or_insert_with(OpStats::new)
            .record(start.elapsed(), outcome);
        p.finished.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

/// What every phase of a bench shares.
struct Load<'a> {
    /// Phases started so far.
    phases: AtomicU32,
    target: Target,
    fixture: Arc<Fixture>,
    args: &'a BenchArgs,
    seed: u64,
}

/// Runs one phase at `concurrency` and merges what the workers saw.
async fn run_phase(
    load: &Load<'_>,
    label: &str,
    mix: Mix,
    stop: Stop,
    concurrency: u32,
) -> (Stats, Duration) {
    let (target, fixture, seed) = (&load.target, &load.fixture, load.seed);
    let bar = match stop {
        Stop::After(n) => progress_bar(n, label),
        Stop::At(t) => {
            let bar = progress_bar(
                t.saturating_duration_since(Instant::now()).as_millis() as u64,
                label,
            );
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed_precise} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
    };
    let phase = Arc::new(Phase {
        target: target.clone(),
        fixture: fixture.clone(),
        mix,
        stop,
        started: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        page_size: load.args.page_size,
        number: load.phases.fetch_add(1, Ordering::Relaxed),
    });
    let start = Instant::now();
    let ticker = {
        let phase = phase.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = phase.finished.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                match phase.stop {
                    Stop::After(_) => bar.set_position(done),
                    Stop::At(_) => bar.set_position(start.elapsed().as_millis() as u64),
                }
                bar.set_message(format!("{done} calls, {:.0}/s", done as f64 / secs));
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..concurrency as usize {
        tasks.spawn(worker(phase.clone(), id, seed));
    }
    let mut stats = Stats::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(s) => merge_stats(&mut stats, &s),
            Err(e) => tracing::error!(error = %e, "a bench worker failed"),
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    (stats, elapsed)
}

// -------------------------------------------------------------------------------------------
// The embedded node
// -------------------------------------------------------------------------------------------

struct Embedded {
    node: Arc<amisim_region::RegionNode>,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<Result<(), amisim_region::RegionError>>,
    url: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

async fn start_embedded(args: &BenchArgs, seed: u64) -> anyhow::Result<Embedded> {
    let (tmp, dir) = match &args.data {
        Some(d) => (None, d.clone()),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("amisim-bench-")
                .tempdir()
                .context("cannot create a temporary directory for the embedded node")?;
            let dir = tmp.path().join(&args.region);
            (Some(tmp), dir)
        }
    };
    let listener = crate::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let node = crate::region::start_node_on(
        &args.region,
        &dir,
        args.time_scale,
        Some(seed),
        std::slice::from_ref(&args.region),
        None,
        None,
        amisim_region::StorageConfig {
            checkpoint_every: args.checkpoint_every,
            ..amisim_region::StorageConfig::default()
        },
    )?;
    let shutdown = Shutdown::new();
    let server = tokio::spawn(amisim_region::serve(
        node.clone(),
        listener,
        shutdown.signal(),
    ));
    Ok(Embedded {
        node,
        shutdown,
        server,
        url: format!("http://{addr}"),
        dir,
        _tmp: tmp,
    })
}

impl Embedded {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let served = self.server.await;
        self.node.shutdown().await;
        served
            .context("the embedded server task panicked")?
            .context("the embedded region node failed")?;
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// The command
// -------------------------------------------------------------------------------------------

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    if let Some(copies) = args.copy_completion {
        return copy_completion::run(&args, copies, seed).await;
    }
    let prefix = format!("bench-{:08x}", rand::random::<u32>());
    let accounts: Vec<String> = (0..u64::from(args.accounts))
        .map(|n| format!("{:012}", ACCOUNT_BASE + n))
        .collect();
    let quota = amisim_core::Config::default().max_images as u64;
    let per_account = args.preload_images.div_ceil(u64::from(args.accounts));
    if per_account > quota {
        bail!(
            "--preload-images {} over {} account(s) is {per_account} images per account, above EC2's \
             {quota} AMIs per account: use --accounts {} or more",
            args.preload_images,
            args.accounts,
            args.preload_images.div_ceil(quota)
        );
    }
    let all_ops = || args.mix.iter().flat_map(Mix::ops);
    if args.preload_images == 0 {
        if let Some(op) = all_ops().find(|op| op.needs_images()) {
            bail!(
                "{} acts on preloaded images: set --preload-images to 1 or more",
                op.name()
            );
        }
    }
    if all_ops().any(|op| op == Op::CopyImage) {
        let note = if args.embedded {
            " (--embedded has no coordinator to drive copies: they stay pending, and once 20 per \
             account are in flight CopyImage answers ResourceLimitExceeded; load `amisim dev` to \
             measure whole copies)"
        } else {
            ""
        };
        println!("amisim bench: copy-image measures CopyImage acceptance{note}");
    }
    let region = AsciiMetadataValue::try_from(args.region.as_str())
        .map_err(|_| anyhow::anyhow!("--region {:?} is not a valid metadata value", args.region))?;
    let account_md = accounts
        .iter()
        .map(|a| AsciiMetadataValue::try_from(a.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .context("account ids are ASCII digits")?;

    let embedded = if args.embedded {
        Some(start_embedded(&args, seed).await?)
    } else {
        None
    };
    let url = match &embedded {
        Some(e) => e.url.clone(),
        None => args
            .endpoint
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:50051".to_string()),
    };

    // Every resolved parameter, before anything is measured.
    let stop = match args.count {
        Some(n) => format!("count {n}"),
        None => format!("duration {}", fmt_duration(args.duration)),
    };
    println!("amisim bench: seed {seed}");
    match &embedded {
        Some(e) => println!(
            "amisim bench: target embedded region node {} on {} (data {}{}, time scale {}, node seed {seed})",
            args.region,
            e.url,
            e.dir.display(),
            if args.data.is_some() { ", kept" } else { ", temporary" },
            args.time_scale,
        ),
        None => println!("amisim bench: target {url}, region {}", args.region),
    }
    println!(
        "amisim bench: concurrency {}, connections {}, {stop}, echo {}, timeout {}",
        args.concurrency
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.connections,
        if all_ops().all(|op| op == Op::Echo) {
            "is the run".to_string()
        } else {
            fmt_duration(args.echo_duration)
        },
        fmt_duration(args.timeout)
    );
    println!(
        "amisim bench: async runtime: {} worker thread(s) {}",
        tokio::runtime::Handle::current().metrics().num_workers(),
        amisim_region::affinity::describe()
    );
    for (i, mix) in args.mix.iter().enumerate() {
        match args.mix.len() {
            1 => println!("amisim bench: mix {mix}"),
            n => println!("amisim bench: mix {}/{n} {mix}", i + 1),
        }
    }
    println!(
        "amisim bench: accounts {} ({}..{}), preload {} images, {} volumes/account, filter match {}, page size {}, name prefix {prefix}",
        args.accounts,
        accounts.first().map_or("", String::as_str),
        accounts.last().map_or("", String::as_str),
        args.preload_images,
        args.volumes_per_account,
        args.filter_match,
        if args.page_size == 0 { "all".to_string() } else { args.page_size.to_string() },
    );

    let outcome = bench(&args, seed, &url, region, account_md, prefix.clone()).await;
    let writer = embedded.as_ref().map(|e| e.node.writer_stats());
    if let Some(w) = &writer {
        // Group commit, observed: commands per round and the cost of each flush + fsync.
        println!("amisim bench: embedded node writer (preload and every phase): {w}");
    }
    if let Some(e) = embedded {
        let stopped = e.stop().await;
        if outcome.is_ok() {
            stopped?;
        }
    }
    let report = outcome?;
    if let Some(path) = &args.json {
        let mut report = report;
        report["params"]["endpoint"] = json!(url);
        report["params"]["name_prefix"] = json!(prefix);
        if let Some(w) = writer {
            report["writer"] = json!({
                "rounds": w.rounds,
                "commands": w.commands,
                "events": w.events,
                "group_commits": w.appends,
                "append_micros": w.append_micros,
                "max_batch": w.max_batch,
            });
        }
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))?;
        println!("amisim bench: JSON report in {}", path.display());
    }
    Ok(())
}

/// Preload, echo, then each mix (its table printed as it ends): the report as JSON.
async fn bench(
    args: &BenchArgs,
    seed: u64,
    url: &str,
    region: AsciiMetadataValue,
    accounts: Vec<AsciiMetadataValue>,
    prefix: String,
) -> anyhow::Result<serde_json::Value> {
    let target = Target {
        channels: connect(url, args.connections).await?,
        region,
        accounts,
        timeout: args.timeout,
    };
    let needs_preload = args.mix.iter().flat_map(Mix::ops).any(|op| op != Op::Echo);
    let preload_start = Instant::now();
    let fixture = Arc::new(if needs_preload {
        preload(&target, args, prefix).await?
    } else {
        Fixture {
            prefix,
            ..Fixture::default()
        }
    });
    let preload_s = preload_start.elapsed().as_secs_f64();
    let preloaded: usize = fixture.images.iter().map(Vec::len).sum();
    if needs_preload {
        println!(
            "amisim bench: preloaded {} volumes, {} snapshots, {preloaded} images in {preload_s:.1}s",
            fixture.volumes.iter().map(Vec::len).sum::<usize>(),
            fixture.snapshots.iter().map(Vec::len).sum::<usize>(),
        );
    }

    let load = Load {
        phases: AtomicU32::new(0),
        target,
        fixture,
        args,
        seed,
    };
    let mut echoes = Vec::new();
    let mut runs = Vec::new();
    let levels = args.concurrency.len();
    for &concurrency in &args.concurrency {
        let echo = if args.echo_duration.is_zero() || !needs_preload {
            None
        } else {
            let echo_mix = Mix {
                entries: vec![(Op::Echo, 1)],
                total: 1,
            };
            let (stats, elapsed) = run_phase(
                &load,
                "echo",
                echo_mix,
                Stop::At(Instant::now() + args.echo_duration),
                concurrency,
            )
            .await;
            let echo = PhaseSummary::of(&stats, elapsed, None);
            echoes.push(json!({ "concurrency": concurrency, "summary": echo }));
            Some(echo)
        };
        for (i, mix) in args.mix.iter().enumerate() {
            let stop = match args.count {
                Some(n) => Stop::After(n),
                None => Stop::At(Instant::now() + args.duration),
            };
            let label = if args.mix.len() == 1 && levels == 1 {
                "run".to_string()
            } else {
                format!("run {}/{}", runs.len() + 1, args.mix.len() * levels)
            };
            let (stats, elapsed) = run_phase(&load, &label, mix.clone(), stop, concurrency).await;
            let echo_rate = if mix.only_echo() {
                let calls: u64 = stats
                    .values()
                    .map(|s| s.ok + s.errors.values().sum::<u64>())
                    .sum();
                Some(calls as f64 / elapsed.as_secs_f64().max(1e-9))
            } else {
                echo.as_ref().map(|e| e.ops_per_s)
            };
            let run = PhaseSummary::of(&stats, elapsed, echo_rate);
            if args.mix.len() > 1 || levels > 1 {
                println!(
                    "amisim bench: {label}, mix {} ({}/{}), concurrency {concurrency}",
                    mix,
                    i + 1,
                    args.mix.len()
                );
            }
            print!("{}", render_table(&run, echo.as_ref()));
            runs.push(
                json!({ "mix": mix.to_string(), "concurrency": concurrency, "summary": run }),
            );
        }
    }
    let report = json!({
        "params": {
            "seed": seed,
            "embedded": args.embedded,
            "time_scale": args.embedded.then_some(args.time_scale),
            "region": args.region,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "duration_s": args.count.is_none().then_some(args.duration.as_secs_f64()),
            "count": args.count,
            "mix": args.mix.iter().map(Mix::to_string).collect::<Vec<_>>(),
            "accounts": args.accounts,
            "preload_images": args.preload_images,
            "volumes_per_account": args.volumes_per_account,
            "filter_match": args.filter_match,
            "page_size": args.page_size,
            "echo_duration_s": args.echo_duration.as_secs_f64(),
            "timeout_s": args.timeout.as_secs_f64(),
        },
        "preload": { "images": preloaded, "seconds": preload_s },
        "echo": echoes,
        "runs": runs,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_parses_weights_and_refuses_nonsense() {
        let m = Mix::parse(DEFAULT_MIX).unwrap();
        assert_eq!(m.total(), 100);
        assert_eq!(m.to_string(), DEFAULT_MIX);
        assert_eq!(m.pick(0), Op::Register);
        assert_eq!(m.pick(49), Op::Register);
        assert_eq!(m.pick(50), Op::DescribeId);
        assert_eq!(m.pick(99), Op::CreateSnapshot);

        let m = Mix::parse(" echo = 3 , copy-image=0, modify-image-attribute=1").unwrap();
        assert_eq!(m.ops().collect::<Vec<_>>(), [Op::Echo, Op::ModifyAttribute]);
        assert_eq!(m.total(), 4);
        assert!(!m.only_echo());
        assert!(Mix::parse("echo=100").unwrap().only_echo());

        for bad in [
            "",
            "register",
            "register=x",
            "register=-1",
            "nope=1",
            "echo=0",
            "echo=1,echo=2",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Mix::parse("nope=1")
            .unwrap_err()
            .contains("describe-filter"));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn the_report_counts_calls_errors_and_the_echo_ratio() {
        let mut stats = Stats::new();
        let reg = stats.entry(Op::Register).or_insert_with(OpStats::new);
        for i in 1..=100u64 {
            reg.record(Duration::from_micros(i * 100), Ok(()));
        }
        let snap = stats.entry(Op::CreateSnapshot).or_insert_with(OpStats::new);
        snap.record(Duration::from_micros(500), Ok(()));
        snap.record(
            Duration::from_micros(200),
            Err("SnapshotCreationPerVolumeRateExceeded".into()),
        );
        let run = PhaseSummary::of(&stats, Duration::from_secs(2), Some(204.0));
        assert_eq!(run.calls, 102);
        assert_eq!(run.ok, 101);
        assert!((run.ops_per_s - 51.0).abs() < 1e-9);
        assert!((run.ratio_to_echo.unwrap() - 0.25).abs() < 1e-9);
        let reg = &run.ops[0];
        assert_eq!((reg.op.as_str(), reg.calls), ("register", 100));
        // HDR histograms keep 3 significant digits.
        assert!(
            (5_000..=5_010).contains(&reg.latency_us.p50),
            "{:?}",
            reg.latency_us
        );
        assert!((10_000..=10_010).contains(&reg.latency_us.max));

        let echo = PhaseSummary::of(&Stats::new(), Duration::from_secs(1), None);
        let table = render_table(&run, Some(&echo));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("operation"), "{table}");
        assert!(lines[0].contains("p99.9"));
        assert!(
            lines[2].starts_with("register") && lines[2].contains(" 5.00"),
            "{table}"
        );
        assert!(lines[3].starts_with("create-snapshot"), "{table}");
        assert!(
            lines[4].starts_with("total") && lines[4].contains("25.0%"),
            "{table}"
        );
        assert!(table.contains("SnapshotCreationPerVolumeRateExceeded"));
        assert!(table.contains("run throughput = 25.0% of echo"));
        let alone = PhaseSummary::of(&stats, Duration::from_secs(2), None);
        assert!(render_table(&alone, None).contains("echo: not measured"));
        assert!(render_table(&run, None).contains("this run is the echo"));

        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(
            json["ops"][1]["errors"]["SnapshotCreationPerVolumeRateExceeded"],
            1
        );
    }

    #[test]
    fn image_names_group_for_the_filter() {
        let fx = Fixture {
            prefix: "bench-0000abcd".into(),
            ..Fixture::default()
        };
        let name = Fixture::image_name(&fx.prefix, 2, 7, 7042);
        assert_eq!(name, "bench-0000abcd-a002-g000007-0007042");
        assert!(amisim_core::image::check_name(&name).is_ok());
        assert!(amisim_core::filter::wildcard_match(
            &fx.group_pattern(2, 7),
            &name
        ));
        assert!(!amisim_core::filter::wildcard_match(
            &fx.group_pattern(2, 70),
            &name
        ));
    }
}
