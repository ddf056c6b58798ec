//! The experiment file (TOML) and its resolution into a [`Experiment`]: every default filled in,
//! every name checked, every duration in simulated milliseconds, so a run starts only from a
//! spec that makes sense and prints exactly what it will do ([`Experiment::describe`]).
//!
//! ```toml
//! name = "partition-during-copies"
//! description = "us-east-1 and eu-west-1 lose each other for 40 s while copies run"
//! regions = ["us-east-1", "eu-west-1"]     # default: us-east-1, eu-west-1, ap-south-1
//! duration = "120s"                         # simulated time of the workload
//! step = "1s"                               # the virtual clock moves this much per step
//! quiescence_timeout = "30m"                # simulated time allowed to settle after the heal
//! accounts = 2                              # 100000000000, 100000000001, ...
//! volume_size_gib = 1                       # size of the volumes snapshots are taken of
//!
//! [clock]
//! mode = "virtual"                          # or "scaled" (with scale = 600.0)
//!
//! [workload]                                # operations per simulated second
//! register = 0.5
//! copy_cross_region = 0.3
//!
//! [[links]]                                 # the links the cluster starts with
//! from = "us-east-1"
//! to = "eu-west-1"
//! latency_ms = 40000
//!
//! [[faults]]
//! at = "20s"
//! action = "partition"                      # link | heal | kill | restart | pause | resume | skew
//! from = "us-east-1"
//! to = "eu-west-1"
//! ```
//!
//! Durations are `"500ms"`, `"10s"`, `"1.5m"`, `"2h"` or a bare integer of milliseconds. Every
//! error names the field (`faults[2].node`) and, for a fault, its line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use amisim_chaos::link::MIB;
use amisim_chaos::{Distribution, LinkModel, LinkSpec, LinkTable, COORDINATOR};
use serde::{Deserialize, Serialize};

use crate::LabError;

/// The regions of `amisim dev`, used when the file names none.
pub const DEFAULT_REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
/// Accounts are `ACCOUNT_BASE + n`, as in `amisim bench`.
pub const ACCOUNT_BASE: u64 = 100_000_000_000;
/// 2024-05-01T00:00:00Z: where a virtual clock starts unless told otherwise.
pub const DEFAULT_START_MS: u64 = 1_714_521_600_000;

// ---------------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    description: Option<String>,
    regions: Option<Vec<String>>,
    duration: Option<DurationText>,
    step: Option<DurationText>,
    quiescence_timeout: Option<DurationText>,
    wall_timeout: Option<DurationText>,
    seed: Option<u64>,
    accounts: Option<u32>,
    volume_size_gib: Option<u32>,
    #[serde(default)]
    clock: ClockFile,
    #[serde(default)]
    workload: Workload,
    default_link: Option<LinkModel>,
    #[serde(default)]
    links: Vec<LinkSpec>,
    #[serde(default)]
    faults: Vec<toml::Spanned<FaultFile>>,
}

/// A duration as written: `"10s"` or a number of ms.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Ms(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockFile {
    mode: Option<String>,
    scale: Option<f64>,
    start_ms: Option<u64>,
}

/// The workload mix: operations per simulated second, each drawn as a Poisson process from the
/// run's seed. Absent fields are 0; an all-zero mix is refused (nothing to check).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// RegisterImage from one of the account's completed snapshots.
    pub register: f64,
    /// CopyImage within the region.
    pub copy_same_region: f64,
    /// CopyImage from another region (the saga; what the links act on).
    pub copy_cross_region: f64,
    /// ModifyImageAttribute: add a launch permission for another account.
    pub share: f64,
    /// DeregisterImage of one of the account's images.
    pub deregister: f64,
    /// DeleteSnapshot of a snapshot the workload created.
    pub delete_snapshot: f64,
    /// CreateSnapshot of the account's volume.
    pub create_snapshot: f64,
    /// DescribeImages in the region of images this process wrote (read your writes).
    pub describe: f64,
    /// Coordinator.DescribeGlobalImages with the consistency token of the process's last write
    /// (causal reads).
    pub describe_global: f64,
    /// Probability that a CopyImage reuses the ClientToken of an earlier copy of the same
    /// process (the answer must be the same image: idempotency). Default 0.
    pub client_token_reuse: f64,
}

impl Workload {
    /// Every rate with its name, in a fixed order (the generator draws in this order).
    pub fn rates(&self) -> [(&'static str, f64); 9] {
        [
            ("register", self.register),
            ("copy_same_region", self.copy_same_region),
            ("copy_cross_region", self.copy_cross_region),
            ("share", self.share),
            ("deregister", self.deregister),
            ("delete_snapshot", self.delete_snapshot),
            ("create_snapshot", self.create_snapshot),
            ("describe", self.describe),
            ("describe_global", self.describe_global),
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    at: DurationText,
    action: String,
    from: Option<String>,
    to: Option<String>,
    two_way: Option<bool>,
    node: Option<String>,
    down_for: Option<DurationText>,
    skew_ms: Option<i64>,
    latency_ms: Option<u64>,
    bandwidth_bytes_per_s: Option<u64>,
    bandwidth_mib_s: Option<u64>,
    distribution: Option<Distribution>,
    jitter_ms: Option<u64>,
    loss: Option<f64>,
    partitioned: Option<bool>,
    timeout_ms: Option<u64>,
    slow_close_ms: Option<u64>,
    note: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The experiment as run
// ---------------------------------------------------------------------------------------------

/// How simulated time moves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ClockMode {
    /// Moves only when the runner advances it: exactly reproducible.
    Virtual { start_ms: u64 },
    /// Wall time × `scale`.
    Scaled { scale: f64 },
}

/// Changes to one link's model in a `link` fault; `None` keeps what the link has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LinkPatch {
    pub latency_ms: Option<u64>,
    pub bandwidth_bytes_per_s: Option<u64>,
    pub distribution: Option<Distribution>,
    pub jitter_ms: Option<u64>,
    pub loss: Option<f64>,
    pub partitioned: Option<bool>,
    pub timeout_ms: Option<u64>,
    pub slow_close_ms: Option<u64>,
}

impl LinkPatch {
    /// `base` with the patch's fields over it.
    pub fn apply(&self, base: LinkModel) -> LinkModel {
        LinkModel {
            latency_ms: self.latency_ms.unwrap_or(base.latency_ms),
            bandwidth_bytes_per_s: self
                .bandwidth_bytes_per_s
                .unwrap_or(base.bandwidth_bytes_per_s),
            distribution: self.distribution.unwrap_or(base.distribution),
            jitter_ms: self.jitter_ms.unwrap_or(base.jitter_ms),
            loss: self.loss.unwrap_or(base.loss),
            partitioned: self.partitioned.unwrap_or(base.partitioned),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            slow_close_ms: self.slow_close_ms.unwrap_or(base.slow_close_ms),
        }
    }
}

/// One directed pair, or both directions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    /// Also `to → from`.
    pub two_way: bool,
}

impl Pair {
    /// The directed pairs this names.
    pub fn directions(&self) -> Vec<(String, String)> {
        let mut v = vec![(self.from.clone(), self.to.clone())];
        if self.two_way && self.from != self.to {
            v.push((self.to.clone(), self.from.clone()));
        }
        v
    }

    fn label(&self) -> String {
        let arrow = if self.two_way { "<->" } else { "->" };
        format!("{} {arrow} {}", self.from, self.to)
    }
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FaultAction {
    /// Nothing crosses the pair (the links keep their other properties).
    Partition {
        pair: Pair,
    },
    /// The pair's links get these changes.
    Link {
        pair: Pair,
        patch: LinkPatch,
    },
    /// `Some(pair)`: that pair back to its starting link; `None`: every link reset, every node
    /// resumed, restarted and unskewed.
    Heal {
        pair: Option<Pair>,
    },
    /// Crash a node; with `down_for_ms` it restarts by itself that long after (for a region in
    /// process with the virtual clock, simulated ms; wall ms otherwise).
    Kill {
        node: String,
        down_for_ms: Option<u64>,
    },
    Restart {
        node: String,
    },
    Pause {
        node: String,
    },
    Resume {
        node: String,
    },
    /// A region's clock runs `skew_ms` ahead (negative: behind).
    Skew {
        node: String,
        skew_ms: i64,
    },
}

impl FaultAction {
    /// `partition`, `link`, ...
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::Partition { .. } => "partition",
            FaultAction::Link { .. } => "link",
            FaultAction::Heal { .. } => "heal",
            FaultAction::Kill { .. } => "kill",
            FaultAction::Restart { .. } => "restart",
            FaultAction::Pause { .. } => "pause",
            FaultAction::Resume { .. } => "resume",
            FaultAction::Skew { .. } => "skew",
        }
    }

    /// One line for the parameters print-out and the report.
    pub fn describe(&self) -> String {
        match self {
            FaultAction::Partition { pair } => format!("partition {}", pair.label()),
            FaultAction::Link { pair, patch } => {
                let mut s = format!("link {}:", pair.label());
                let mut add = |k: &str, v: String| {
                    let _ = write!(s, " {k}={v}");
                };
                if let Some(v) = patch.latency_ms {
                    add("latency_ms", v.to_string());
                }
                if let Some(v) = patch.bandwidth_bytes_per_s {
                    add("bandwidth_bytes_per_s", v.to_string());
                }
                if let Some(v) = patch.distribution {
                    add("distribution", format!("{v:?}"));
                }
                if let Some(v) = patch.jitter_ms {
                    add("jitter_ms", v.to_string());
                }
                if let Some(v) = patch.loss {
                    add("loss", v.to_string());
                }
                if let Some(v) = patch.partitioned {
                    add("partitioned", v.to_string());
                }
                if let Some(v) = patch.timeout_ms {
                    add("timeout_ms", v.to_string());
                }
                if let Some(v) = patch.slow_close_ms {
                    add("slow_close_ms", v.to_string());
                }
                s
            }
            FaultAction::Heal { pair: Some(p) } => format!("heal {}", p.label()),
            FaultAction::Heal { pair: None } => "heal everything".to_string(),
            FaultAction::Kill { node, down_for_ms } => match down_for_ms {
                Some(ms) => format!("kill {node} (restarts after {ms} wall ms)"),
                None => format!("kill {node}"),
            },
            FaultAction::Restart { node } => format!("restart {node}"),
            FaultAction::Pause { node } => format!("pause {node}"),
            FaultAction::Resume { node } => format!("resume {node}"),
            FaultAction::Skew { node, skew_ms } => format!("skew {node} by {skew_ms} ms"),
        }
    }
}

/// One entry of the fault timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// Simulated ms after the workload starts.
    pub at_ms: u64,
    #[serde(flatten)]
    pub action: FaultAction,
    /// The line of the file it came from (1-based; 0 when built in code).
    pub line: usize,
    /// Free text from the file.
    pub note: Option<String>,
}

/// A resolved experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub regions: Vec<String>,
    /// Simulated ms of workload.
    pub duration_ms: u64,
    /// Simulated ms per step.
    pub step_ms: u64,
    /// Simulated ms allowed for quiescence after the final heal.
    pub quiescence_timeout_ms: u64,
    /// Wall ms allowed for the whole quiescence phase (a guard for the scaled clock and for
    /// stuck nodes).
    pub wall_timeout_ms: u64,
    /// The seed used when the command line gives none.
    pub default_seed: u64,
    /// Account ids, `ACCOUNT_BASE + n`.
    pub accounts: Vec<String>,
    pub volume_size_gib: u32,
    pub clock: ClockMode,
    pub workload: Workload,
    /// The links the cluster starts with.
    pub links: LinkTable,
    /// Ordered by `at_ms` (ties keep file order).
    pub faults: Vec<Fault>,
}

/// Parses a duration: `"250ms"`, `"10s"`, `"1.5m"`, `"2h"`, or digits (ms).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("{s:?} is not a duration (e.g. \"500ms\", \"10s\", \"2m\", \"1h\")")
    })?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e15 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok((v * mult).round() as u64)
}

fn duration(field: &str, d: &DurationText) -> Result<u64, (String, String)> {
    match d {
        DurationText::Ms(ms) => Ok(*ms),
        DurationText::Text(t) => parse_duration_ms(t).map_err(|m| (field.to_string(), m)),
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Experiment {
    /// Reads and resolves the experiment at `path`.
    pub fn load(path: &std::path::Path) -> Result<Experiment, LabError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
            what: format!("cannot read the experiment {}", path.display()),
            source,
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into());
        Self::parse(&text, &path.display().to_string(), &stem)
    }

    /// Resolves the TOML `text`; `file` names it in errors, `default_name` is the name when the
    /// file gives none.
    pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Experiment, LabError> {
        let raw: File = toml::from_str(text).map_err(|e| {
            LabError::Spec(format!(
                "experiment {file}: {}",
                e.to_string().trim_end().replace('\n', "\n  ")
            ))
        })?;
        resolve(raw, text, default_name).map_err(|(field, message)| {
            LabError::Spec(format!("experiment {file}: {field}: {message}"))
        })
    }

    /// Every resolved parameter, one per line (printed at the start of a run, with the seed).
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![
            format!("experiment {}: {}", self.name, self.description),
            format!("regions {}", self.regions.join(",")),
            match self.clock {
                ClockMode::Virtual { start_ms } => {
                    format!(
                        "clock virtual, start {start_ms} ms, step {} ms",
                        self.step_ms
                    )
                }
                ClockMode::Scaled { scale } => {
                    format!("clock scaled x{scale}, step {} ms", self.step_ms)
                }
            },
            format!(
                "duration {} ms simulated, quiescence timeout {} ms simulated, wall timeout {} ms",
                self.duration_ms, self.quiescence_timeout_ms, self.wall_timeout_ms
            ),
            format!(
                "accounts {} ({}), volume size {} GiB",
                self.accounts.len(),
                self.accounts.join(","),
                self.volume_size_gib
            ),
        ];
        let mix: Vec<String> = self
            .workload
            .rates()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(format!(
            "workload per simulated second: {}, client_token_reuse={}",
            mix.join(","),
            self.workload.client_token_reuse
        ));
        out.push(format!("link default {}", self.links.default));
        for l in &self.links.links {
            out.push(format!("link {l}"));
        }
        if self.faults.is_empty() {
            out.push("faults none".into());
        }
        for f in &self.faults {
            out.push(format!("fault at {} ms: {}", f.at_ms, f.action.describe()));
        }
        out
    }

    /// Every node name faults may target: the regions and the coordinator.
    pub fn nodes(&self) -> Vec<String> {
        let mut v = self.regions.clone();
        v.push(COORDINATOR.to_string());
        v
    }
}

type Invalid = (String, String);

fn resolve(raw: File, text: &str, default_name: &str) -> Result<Experiment, Invalid> {
    let bad = |f: &str, m: String| (f.to_string(), m);
    let regions: Vec<String> = raw
        .regions
        .unwrap_or_else(|| DEFAULT_REGIONS.iter().map(|s| s.to_string()).collect());
    if regions.is_empty() {
        return Err(bad("regions", "name at least one region".into()));
    }
    for (i, r) in regions.iter().enumerate() {
        if !valid_region(r) {
            return Err(bad(
                &format!("regions[{i}]"),
                format!("{r:?} is not a region name (e.g. us-east-1)"),
            ));
        }
        if regions[..i].contains(r) {
            return Err(bad(
                &format!("regions[{i}]"),
                format!("{r} is listed twice"),
            ));
        }
        if r == COORDINATOR {
            return Err(bad(
                &format!("regions[{i}]"),
                "coordinator is not a region".into(),
            ));
        }
    }
    let duration_ms = match &raw.duration {
        Some(d) => duration("duration", d)?,
        None => {
            return Err(bad(
                "duration",
                "missing: how long the workload runs, e.g. \"60s\"".into(),
            ))
        }
    };
    if duration_ms == 0 {
        return Err(bad("duration", "must be more than 0".into()));
    }
    let step_ms = match &raw.step {
        Some(d) => duration("step", d)?,
        None => 1_000,
    };
    if step_ms == 0 || step_ms > duration_ms {
        return Err(bad(
            "step",
            format!("must be more than 0 and at most the duration ({duration_ms} ms)"),
        ));
    }
    if duration_ms / step_ms > 100_000 {
        return Err(bad(
            "step",
            "more than 100000 steps: take a longer step".into(),
        ));
    }
    let quiescence_timeout_ms = match &raw.quiescence_timeout {
        Some(d) => duration("quiescence_timeout", d)?,
        None => 3_600_000,
    };
    let wall_timeout_ms = match &raw.wall_timeout {
        Some(d) => duration("wall_timeout", d)?,
        None => 120_000,
    };
    if wall_timeout_ms == 0 {
        return Err(bad("wall_timeout", "must be more than 0".into()));
    }
    let n_accounts = raw.accounts.unwrap_or(2);
    if !(1..=100).contains(&n_accounts) {
        return Err(bad(
            "accounts",
            format!("must be 1 to 100, not {n_accounts}"),
        ));
    }
    let accounts = (0..n_accounts)
        .map(|i| (ACCOUNT_BASE + u64::from(i)).to_string())
        .collect();
    let volume_size_gib = raw.volume_size_gib.unwrap_or(1);
    if !(1..=16_384).contains(&volume_size_gib) {
        return Err(bad(
            "volume_size_gib",
            format!("must be 1 to 16384, not {volume_size_gib}"),
        ));
    }
    let clock = match raw.clock.mode.as_deref().unwrap_or("virtual") {
        "virtual" => {
            if raw.clock.scale.is_some() {
                return Err(bad("clock.scale", "only for mode = \"scaled\"".into()));
            }
            ClockMode::Virtual {
                start_ms: raw.clock.start_ms.unwrap_or(DEFAULT_START_MS),
            }
        }
        "scaled" => {
            let scale = raw.clock.scale.unwrap_or(600.0);
            if !(scale.is_finite() && scale > 0.0) {
                return Err(bad("clock.scale", format!("must be > 0, not {scale}")));
            }
            if raw.clock.start_ms.is_some() {
                return Err(bad("clock.start_ms", "only for mode = \"virtual\"".into()));
            }
            ClockMode::Scaled { scale }
        }
        other => {
            return Err(bad(
                "clock.mode",
                format!("{other:?}: expected \"virtual\" or \"scaled\""),
            ))
        }
    };
    let w = raw.workload.clone();
    for (k, v) in w.rates() {
        if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
            return Err(bad(
                &format!("workload.{k}"),
                format!("must be an operation rate per simulated second in 0..=1000, not {v}"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&w.client_token_reuse) {
        return Err(bad(
            "workload.client_token_reuse",
            format!(
                "must be a probability in 0..=1, not {}",
                w.client_token_reuse
            ),
        ));
    }
    if w.rates().iter().all(|(_, v)| *v == 0.0) {
        return Err(bad(
            "workload",
            "every rate is 0: give at least one, e.g. register = 1.0".into(),
        ));
    }
    if (w.copy_cross_region > 0.0) && regions.len() < 2 {
        return Err(bad(
            "workload.copy_cross_region",
            "needs at least two regions".into(),
        ));
    }
    let node_names: Vec<String> = regions
        .iter()
        .cloned()
        .chain(std::iter::once(COORDINATOR.to_string()))
        .collect();
    let mut links = LinkTable::new();
    if let Some(d) = raw.default_link {
        d.validate()
            .map_err(|e| bad("default_link", e.to_string()))?;
        links.default = d;
    }
    for (i, l) in raw.links.iter().enumerate() {
        for (end, name) in [("from", &l.from), ("to", &l.to)] {
            if !node_names.contains(name) {
                return Err(bad(
                    &format!("links[{i}].{end}"),
                    format!("{name:?} is not one of {}", node_names.join(", ")),
                ));
            }
        }
        if raw.links[..i]
            .iter()
            .any(|o| o.from == l.from && o.to == l.to)
        {
            return Err(bad(
                &format!("links[{i}]"),
                format!("{} -> {} is given twice", l.from, l.to),
            ));
        }
        links.set(l.clone());
    }
    let mut faults = Vec::new();
    for (i, spanned) in raw.faults.iter().enumerate() {
        let line = line_of(text, spanned.span().start);
        let f = spanned.get_ref();
        let field = |name: &str| format!("faults[{i}].{name} (line {line})");
        let at_ms = duration(&field("at"), &f.at)?;
        if at_ms > duration_ms {
            return Err((
                field("at"),
                format!("{at_ms} ms is after the end of the workload ({duration_ms} ms)"),
            ));
        }
        let known_node = |n: &Option<String>, what: &str| -> Result<String, Invalid> {
            match n {
                None => Err((field(what), "missing".into())),
                Some(n) if node_names.contains(n) => Ok(n.clone()),
                Some(n) => Err((
                    field(what),
                    format!("{n:?} is not one of {}", node_names.join(", ")),
                )),
            }
        };
        let pair = || -> Result<Pair, Invalid> {
            let from = known_node(&f.from, "from")?;
            let to = known_node(&f.to, "to")?;
            if from == to {
                return Err((
                    field("to"),
                    format!("a link joins two different nodes, not {from} and itself"),
                ));
            }
            Ok(Pair {
                from,
                to,
                two_way: f.two_way.unwrap_or(true),
            })
        };
        // Fields that only some actions take: refuse them elsewhere, so a typo'd action does
        // not silently ignore its parameters.
        let link_fields = f.latency_ms.is_some()
            || f.bandwidth_bytes_per_s.is_some()
            || f.bandwidth_mib_s.is_some()
            || f.distribution.is_some()
            || f.jitter_ms.is_some()
            || f.loss.is_some()
            || f.partitioned.is_some()
            || f.timeout_ms.is_some()
            || f.slow_close_ms.is_some();
        let action = f.action.as_str();
        if link_fields && action != "link" {
            return Err((
                field("action"),
                format!("link parameters (latency_ms, loss, ...) belong to action = \"link\", not {action:?}"),
            ));
        }
        let pair_action = matches!(action, "partition" | "link" | "heal");
        if !pair_action && (f.from.is_some() || f.to.is_some() || f.two_way.is_some()) {
            return Err((
                field("from"),
                format!("from/to/two_way do not apply to {action:?} (use node)"),
            ));
        }
        if pair_action && f.node.is_some() {
            return Err((field("node"), format!("{action:?} takes from/to, not node")));
        }
        if f.down_for.is_some() && action != "kill" {
            return Err((field("down_for"), "only for action = \"kill\"".into()));
        }
        if f.skew_ms.is_some() && action != "skew" {
            return Err((field("skew_ms"), "only for action = \"skew\"".into()));
        }
        let action = match action {
            "partition" => FaultAction::Partition { pair: pair()? },
            "link" => {
                if !link_fields {
                    return Err((
                        field("action"),
                        "a link fault needs at least one of latency_ms, bandwidth_bytes_per_s, bandwidth_mib_s, distribution, jitter_ms, loss, partitioned, timeout_ms, slow_close_ms".into(),
                    ));
                }
                if f.bandwidth_bytes_per_s.is_some() && f.bandwidth_mib_s.is_some() {
                    return Err((field("bandwidth_mib_s"), "give bandwidth_bytes_per_s or bandwidth_mib_s, not both".into()));
                }
                let patch = LinkPatch {
                    latency_ms: f.latency_ms,
                    bandwidth_bytes_per_s: f
                        .bandwidth_bytes_per_s
                        .or(f.bandwidth_mib_s.map(|m| m.saturating_mul(MIB))),
                    distribution: f.distribution,
                    jitter_ms: f.jitter_ms,
                    loss: f.loss,
                    partitioned: f.partitioned,
                    timeout_ms: f.timeout_ms,
                    slow_close_ms: f.slow_close_ms,
                };
                patch
                    .apply(LinkModel::CROSS_REGION)
                    .validate()
                    .map_err(|e| (field("action"), e.to_string()))?;
                FaultAction::Link { pair: pair()?, patch }
            }
            "heal" => FaultAction::Heal {
                pair: if f.from.is_some() || f.to.is_some() {
                    Some(pair()?)
                } else {
                    None
                },
            },
            "kill" => FaultAction::Kill {
                node: known_node(&f.node, "node")?,
                down_for_ms: match &f.down_for {
                    Some(d) => Some(duration(&field("down_for"), d)?),
                    None => None,
                },
            },
            "restart" => FaultAction::Restart {
                node: known_node(&f.node, "node")?,
            },
            "pause" => FaultAction::Pause {
                node: known_node(&f.node, "node")?,
            },
            "resume" => FaultAction::Resume {
                node: known_node(&f.node, "node")?,
            },
            "skew" => {
                let node = known_node(&f.node, "node")?;
                if node == COORDINATOR {
                    return Err((field("node"), "the coordinator has no clock to skew".into()));
                }
                FaultAction::Skew {
                    node,
                    skew_ms: f.skew_ms.ok_or_else(|| (field("skew_ms"), "missing".to_string()))?,
                }
            }
            other => {
                return Err((
                    field("action"),
                    format!("{other:?}: expected partition, link, heal, kill, restart, pause, resume or skew"),
                ))
            }
        };
        faults.push(Fault {
            at_ms,
            action,
            line,
            note: f.note.clone(),
        });
    }
    faults.sort_by_key(|f| f.at_ms);
    Ok(Experiment {
        name: raw.name.unwrap_or_else(|| default_name.to_string()),
        description: raw.description.unwrap_or_default(),
        regions,
        duration_ms,
        step_ms,
        quiescence_timeout_ms,
        wall_timeout_ms,
        default_seed: raw.seed.unwrap_or(1),
        accounts,
        volume_size_gib,
        clock,
        workload: w,
        links,
        faults,
    })
}

/// `us-east-1`-shaped.
fn valid_region(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('-').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Parses `A..B` (B excluded), `A..=B` or a single `A` into the seeds to run.
pub fn parse_seed_range(s: &str) -> Result<Vec<u64>, LabError> {
    let err = || {
        LabError::Spec(format!(
            "seed range {s:?}: expected A..B (B excluded), A..=B or one seed, e.g. 1..20"
        ))
    };
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| err());
    let (a, b) = if let Some((a, b)) = s.split_once("..=") {
        (num(a)?, num(b)?.checked_add(1).ok_or_else(err)?)
    } else if let Some((a, b)) = s.split_once("..") {
        (num(a)?, num(b)?)
    } else {
        let a = num(s)?;
        (a, a.checked_add(1).ok_or_else(err)?)
    };
    if b <= a || b - a > 100_000 {
        return Err(err());
    }
    Ok((a..b).collect())
}

/// The experiment's regions, each with the label used in reports (`us-east-1`).
pub fn region_index(regions: &[String]) -> BTreeMap<String, usize> {
    regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
regions = ["us-east-1", "eu-west-1"]
duration = "60s"
accounts = 3

[workload]
register = 1.0
copy_cross_region = 0.5

[[links]]
from = "us-east-1"
to = "eu-west-1"
latency_ms = 40000

[[faults]]
at = "20s"
action = "partition"
from = "us-east-1"
to = "eu-west-1"

[[faults]]
at = "10s"
action = "link"
from = "coordinator"
to = "eu-west-1"
two_way = false
loss = 0.1
distribution = { kind = "uniform", min_ms = 1, max_ms = 5 }

[[faults]]
at = "40s"
action = "heal"
"#;

    #[test]
    fn a_good_file_resolves_with_defaults_and_sorted_faults() {
        let e = Experiment::parse(GOOD, "t.toml", "t").unwrap();
        assert_eq!(e.duration_ms, 60_000);
        assert_eq!(e.step_ms, 1_000);
        assert_eq!(e.accounts.len(), 3);
        assert_eq!(e.accounts[0], "100000000000");
        assert!(matches!(e.clock, ClockMode::Virtual { .. }));
        assert_eq!(e.faults.len(), 3);
        assert_eq!(e.faults[0].at_ms, 10_000);
        assert_eq!(e.faults[0].action.name(), "link");
        assert_eq!(e.faults[1].line, 16, "{:?}", e.faults[1]);
        assert_eq!(e.links.get("us-east-1", "eu-west-1").latency_ms, 40_000);
        let text = e.describe().join("\n");
        assert!(
            text.contains("fault at 20000 ms: partition us-east-1 <-> eu-west-1"),
            "{text}"
        );
        assert!(text.contains("register=1"), "{text}");
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("10s").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("1.5m").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration_ms("42").unwrap(), 42);
        assert!(parse_duration_ms("ten").is_err());
        assert!(parse_duration_ms("-1s").is_err());
    }

    fn err(text: &str) -> String {
        Experiment::parse(text, "x.toml", "x")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let e = err("duration = \"1s\"\n[workload]\nregister = 1\n[[faults]]\nat = \"0s\"\naction = \"kill\"\nnode = \"mars-1\"\n");
        assert!(e.contains("faults[0].node (line 4)"), "{e}");
        assert!(e.contains("mars-1"), "{e}");

        let e = err("duration = \"1s\"\n[workload]\nregisterr = 1\n");
        assert!(e.contains("registerr"), "{e}");
        assert!(e.contains("line 3"), "{e}");

        let e = err("duration = \"1s\"\n[workload]\n");
        assert!(e.contains("workload: every rate is 0"), "{e}");

        let e = err("[workload]\nregister = 1\n");
        assert!(e.contains("duration: missing"), "{e}");

        let e = err("duration = \"1s\"\n[workload]\nregister = 1\n[[faults]]\nat = \"5s\"\naction = \"heal\"\n");
        assert!(e.contains("faults[0].at (line 4)"), "{e}");
        assert!(e.contains("after the end"), "{e}");

        let e = err("duration = \"1s\"\n[workload]\nregister = 1\n[[faults]]\nat = \"0s\"\naction = \"explode\"\n");
        assert!(e.contains("\"explode\""), "{e}");

        let e = err("duration = \"1s\"\n[workload]\nregister = 1\n[[faults]]\nat = \"0s\"\naction = \"partition\"\nfrom = \"us-east-1\"\nto = \"eu-west-1\"\nloss = 0.5\n");
        assert!(e.contains("belong to action = \"link\""), "{e}");

        let e = err("duration = \"1s\"\n[clock]\nmode = \"warp\"\n[workload]\nregister = 1\n");
        assert!(e.contains("clock.mode"), "{e}");
    }

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_seed_range("1..4").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seed_range("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seed_range("7").unwrap(), vec![7]);
        assert!(parse_seed_range("4..1").is_err());
        assert!(parse_seed_range("a..b").is_err());
    }
}
