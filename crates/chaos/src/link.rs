//! The links between regions: what a copy's data crosses (DESIGN.md §6, EC2_SEMANTICS.md §10.2).
//!
//! A [`LinkModel`] is one directed link (`us-east-1` → `eu-west-1` may differ from the way
//! back): a latency and a bandwidth, so a transfer of `bytes` takes
//! `latency + bytes ÷ bandwidth` simulated milliseconds, and its faults: a latency
//! [`Distribution`] (fixed, uniform, normal, pareto tail) plus jitter, a loss rate, a partition
//! (one direction: a partitioned `A → B` says nothing of `B → A`), a timeout for lost calls and
//! a slow close. Random parts are drawn with [`LinkModel::sample_latency_ms`] and
//! [`LinkModel::sample_lost`] from an RNG the caller seeds ([`seeded_rng`]), so a run replays.
//! [`LinkTable`] holds a default for every pair and the pairs configured otherwise.
//!
//! Both come from the command line (`--link us-east-1:eu-west-1=30000,150`, see [`LinkSpec`])
//! or from a serde config ([`LinkTable`] is `Deserialize`; TOML example in its doc). The
//! coordinator turns the model of a copy's pair into the `LinkParams` of its StartCopy step.
//!
//! The coordinator↔region control links use the same model, keyed with the pseudo-region
//! [`COORDINATOR`] (`coordinator:us-east-1` is the request direction, `us-east-1:coordinator`
//! the answers); the tower layer in [`crate::layer`] applies them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Bytes per MiB.
pub const MIB: u64 = 1024 * 1024;

/// The pseudo-region naming the coordinator end of a coordinator↔region link.
pub const COORDINATOR: &str = "coordinator";

/// Latencies above this (about 31 years) are clamped: a pareto tail must not overflow a due time.
const MAX_LATENCY_MS: f64 = 1e12;

/// How a link's latency is drawn. `Fixed` takes the model's `latency_ms`; the others ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// Always `latency_ms`.
    #[default]
    Fixed,
    /// Uniform in `[min_ms, max_ms]`.
    Uniform { min_ms: u64, max_ms: u64 },
    /// Normal with `mean_ms` and `stddev_ms`, cut at 0.
    Normal { mean_ms: f64, stddev_ms: f64 },
    /// Pareto (a heavy tail): `scale_ms` is the minimum, `shape` (α > 0) the tail index; the
    /// smaller α, the heavier the tail.
    Pareto { scale_ms: f64, shape: f64 },
}

/// One directed link between two regions.
///
/// `PartialEq` only: the loss rate and some distributions are floats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkModel {
    /// Fixed cost of a transfer, simulated ms (default 60 000: the cross-region base time of
    /// EC2_SEMANTICS.md §10.2). Used as is by the `Fixed` distribution.
    pub latency_ms: u64,
    /// Throughput, bytes per simulated second (default 75 MiB/s). Never 0 in a valid model: a
    /// zero bandwidth means "the default model" on the wire (`LinkParams`).
    pub bandwidth_bytes_per_s: u64,
    /// How the latency is drawn (default `Fixed`: `latency_ms`).
    pub distribution: Distribution,
    /// Added to every drawn latency: uniform in `[-jitter_ms, +jitter_ms]`, the sum cut at 0
    /// (default 0).
    pub jitter_ms: u64,
    /// Probability in `[0, 1]` that one message (a transfer attempt, an RPC or its answer) is
    /// lost (default 0). A lost transfer or call is retried by its sender.
    pub loss: f64,
    /// Nothing crosses the link in this direction (default false). Copies over it stall (their
    /// saga retries) until it heals; calls over it fail UNAVAILABLE; an answer stream stalls.
    pub partitioned: bool,
    /// A lost or partitioned call fails only after this many wall ms, as a silent network does
    /// (default 0: at once, as a refused connection does).
    pub timeout_ms: u64,
    /// The end of every answer over the link is held back this many wall ms (toxiproxy's
    /// `slow_close`; default 0).
    pub slow_close_ms: u64,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self::CROSS_REGION
    }
}

impl LinkModel {
    /// The default between two regions: 60 s + bytes ÷ 75 MiB/s (an 8 GiB snapshot: ~170 s).
    pub const CROSS_REGION: LinkModel = LinkModel {
        latency_ms: 60_000,
        bandwidth_bytes_per_s: 75 * MIB,
        distribution: Distribution::Fixed,
        jitter_ms: 0,
        loss: 0.0,
        partitioned: false,
        timeout_ms: 0,
        slow_close_ms: 0,
    };

    /// No delay and no fault: a coordinator↔region link that is not configured.
    pub const CLEAN: LinkModel = LinkModel {
        latency_ms: 0,
        ..Self::CROSS_REGION
    };

    /// A fault-free link of `latency_ms` and `bandwidth_mib_s` MiB per simulated second.
    pub fn new(latency_ms: u64, bandwidth_mib_s: u64) -> Self {
        LinkModel {
            latency_ms,
            bandwidth_bytes_per_s: bandwidth_mib_s.saturating_mul(MIB),
            ..Self::CROSS_REGION
        }
    }

    /// A fault-free link of `latency_ms` and `bandwidth_bytes_per_s` bytes per second.
    pub fn with_bytes_per_s(latency_ms: u64, bandwidth_bytes_per_s: u64) -> Self {
        LinkModel {
            latency_ms,
            bandwidth_bytes_per_s,
            ..Self::CROSS_REGION
        }
    }

    /// True if the model has any fault (a random latency, jitter, loss, partition, timeout or
    /// slow close).
    pub fn has_faults(&self) -> bool {
        self.distribution != Distribution::Fixed
            || self.jitter_ms > 0
            || self.loss > 0.0
            || self.partitioned
            || self.timeout_ms > 0
            || self.slow_close_ms > 0
    }

    /// One latency draw, ms: the distribution, plus jitter, cut at 0.
    pub fn sample_latency_ms(&self, rng: &mut impl Rng) -> u64 {
        let base = match self.distribution {
            Distribution::Fixed => self.latency_ms as f64,
            Distribution::Uniform { min_ms, max_ms } => {
                rng.random_range(min_ms.min(max_ms)..=max_ms.max(min_ms)) as f64
            }
            Distribution::Normal { mean_ms, stddev_ms } => {
                mean_ms + stddev_ms.max(0.0) * standard_normal(rng)
            }
            Distribution::Pareto { scale_ms, shape } => {
                // Inverse transform: x_m ÷ U^(1/α), U in (0, 1].
                let u = 1.0 - rng.random::<f64>();
                scale_ms / u.powf(1.0 / shape.max(f64::MIN_POSITIVE))
            }
        };
        let jitter = if self.jitter_ms > 0 {
            let j = self.jitter_ms.min(1 << 52) as i64;
            rng.random_range(-j..=j) as f64
        } else {
            0.0
        };
        let v = base + jitter;
        if v.is_nan() || v <= 0.0 {
            0
        } else {
            v.min(MAX_LATENCY_MS) as u64
        }
    }

    /// One loss draw: true if this message is lost. Draws nothing when the loss rate is 0, so
    /// adding loss to one link does not change the draws of another.
    pub fn sample_lost(&self, rng: &mut impl Rng) -> bool {
        self.loss > 0.0 && rng.random::<f64>() < self.loss
    }

    /// Simulated ms to move `bytes` over the link.
    pub fn transfer_ms(&self, bytes: u64) -> u64 {
        self.latency_ms
            .saturating_add(bytes.saturating_mul(1000) / self.bandwidth_bytes_per_s.max(1))
    }

    /// Refuses a model that cannot move data.
    pub fn validate(&self) -> Result<(), LinkError> {
        if self.bandwidth_bytes_per_s == 0 {
            return Err(LinkError::ZeroBandwidth);
        }
        if !(self.loss.is_finite() && (0.0..=1.0).contains(&self.loss)) {
            return Err(LinkError::Fault(format!(
                "loss must be in [0, 1], not {}",
                self.loss
            )));
        }
        match self.distribution {
            Distribution::Fixed => {}
            Distribution::Uniform { min_ms, max_ms } if min_ms > max_ms => {
                return Err(LinkError::Fault(format!(
                    "uniform latency needs min <= max, not {min_ms} > {max_ms}"
                )));
            }
            Distribution::Uniform { .. } => {}
            Distribution::Normal { mean_ms, stddev_ms } => {
                if !(mean_ms.is_finite() && stddev_ms.is_finite() && stddev_ms >= 0.0) {
                    return Err(LinkError::Fault(format!(
                        "normal latency needs a finite mean and a stddev >= 0, not {mean_ms}/{stddev_ms}"
                    )));
                }
            }
            Distribution::Pareto { scale_ms, shape } => {
                if !(scale_ms.is_finite() && scale_ms > 0.0 && shape.is_finite() && shape > 0.0) {
                    return Err(LinkError::Fault(format!(
                        "pareto latency needs scale > 0 and shape > 0, not {scale_ms}/{shape}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A standard normal draw (Box–Muller; rand's own needs `rand_distr`).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An RNG for one named stream of a run: the run's `seed` mixed with `key` (FNV-1a), so each
/// copy, link or call sequence draws from its own stream and adding one does not shift the
/// others (STYLE.md 9).
pub fn seeded_rng(seed: u64, key: &str) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(h)
}

impl fmt::Display for LinkModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mib, rest) = (
            self.bandwidth_bytes_per_s / MIB,
            self.bandwidth_bytes_per_s % MIB,
        );
        match self.distribution {
            Distribution::Fixed => write!(f, "{} ms", self.latency_ms)?,
            Distribution::Uniform { min_ms, max_ms } => {
                write!(f, "uniform({min_ms}..{max_ms}) ms")?
            }
            Distribution::Normal { mean_ms, stddev_ms } => {
                write!(f, "normal({mean_ms}, {stddev_ms}) ms")?
            }
            Distribution::Pareto { scale_ms, shape } => {
                write!(f, "pareto({scale_ms}, {shape}) ms")?
            }
        }
        if rest == 0 {
            write!(f, " + bytes / {mib} MiB/s")?;
        } else {
            write!(f, " + bytes / {} B/s", self.bandwidth_bytes_per_s)?;
        }
        if self.jitter_ms > 0 {
            write!(f, ", jitter ±{} ms", self.jitter_ms)?;
        }
        if self.loss > 0.0 {
            write!(f, ", loss {}", self.loss)?;
        }
        if self.partitioned {
            write!(f, ", partitioned")?;
        }
        if self.timeout_ms > 0 {
            write!(f, ", timeout {} ms", self.timeout_ms)?;
        }
        if self.slow_close_ms > 0 {
            write!(f, ", slow close {} ms", self.slow_close_ms)?;
        }
        Ok(())
    }
}

/// Why a link could not be parsed or configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("invalid link {0:?}: expected FROM:TO=LATENCY_MS,BANDWIDTH_MIB_S[,FAULT...], e.g. us-east-1:eu-west-1=30000,150 or us-east-1:eu-west-1=30000,150,jitter=500,loss=0.1,partition")]
    Syntax(String),
    #[error("invalid region name {0:?} in a link: expected lowercase letters, digits and '-', e.g. us-east-1")]
    RegionName(String),
    #[error("invalid number {value:?} for {what} in link {link:?}")]
    Number {
        link: String,
        what: &'static str,
        value: String,
    },
    #[error("a link's bandwidth must be greater than 0")]
    ZeroBandwidth,
    #[error("link {from}:{to} is configured twice")]
    Duplicate { from: String, to: String },
    #[error("invalid link fault: {0}")]
    Fault(String),
}

/// One `--link` argument: `FROM:TO=LATENCY_MS,BANDWIDTH_MIB_S[,FAULT...]`, a directed pair and
/// its model. `FROM` and `TO` may be equal (a same-region copy ignores links, though); either
/// may be `coordinator` (the control link, [`COORDINATOR`]). Faults, comma-separated:
/// `jitter=MS`, `loss=P` (0..1), `partition`, `timeout=MS`, `slow_close=MS`,
/// `uniform=MIN-MAX`, `normal=MEAN/STDDEV`, `pareto=SCALE/SHAPE`.
///
/// In a config it is one flat entry: `from`, `to` and the [`LinkModel`] fields (a field left
/// out keeps the default; `distribution = { kind = "uniform", min_ms = 1, max_ms = 9 }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "LinkEntry", try_from = "LinkEntry")]
pub struct LinkSpec {
    pub from: String,
    pub to: String,
    pub model: LinkModel,
}

/// The config form of a [`LinkSpec`] (flat, so TOML and JSON entries read naturally; serde's
/// `flatten` cannot refuse unknown fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    from: String,
    to: String,
    #[serde(default = "default_latency")]
    latency_ms: u64,
    #[serde(default = "default_bandwidth")]
    bandwidth_bytes_per_s: u64,
    #[serde(default)]
    distribution: Distribution,
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    partitioned: bool,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    slow_close_ms: u64,
}

fn default_latency() -> u64 {
    LinkModel::CROSS_REGION.latency_ms
}

fn default_bandwidth() -> u64 {
    LinkModel::CROSS_REGION.bandwidth_bytes_per_s
}

impl From<LinkSpec> for LinkEntry {
    fn from(s: LinkSpec) -> Self {
        LinkEntry {
            from: s.from,
            to: s.to,
            latency_ms: s.model.latency_ms,
            bandwidth_bytes_per_s: s.model.bandwidth_bytes_per_s,
            distribution: s.model.distribution,
            jitter_ms: s.model.jitter_ms,
            loss: s.model.loss,
            partitioned: s.model.partitioned,
            timeout_ms: s.model.timeout_ms,
            slow_close_ms: s.model.slow_close_ms,
        }
    }
}

impl TryFrom<LinkEntry> for LinkSpec {
    type Error = LinkError;

    fn try_from(e: LinkEntry) -> Result<Self, LinkError> {
        for r in [&e.from, &e.to] {
            if !valid_region(r) {
                return Err(LinkError::RegionName(r.clone()));
            }
        }
        let model = LinkModel {
            latency_ms: e.latency_ms,
            bandwidth_bytes_per_s: e.bandwidth_bytes_per_s,
            distribution: e.distribution,
            jitter_ms: e.jitter_ms,
            loss: e.loss,
            partitioned: e.partitioned,
            timeout_ms: e.timeout_ms,
            slow_close_ms: e.slow_close_ms,
        };
        model.validate()?;
        Ok(LinkSpec {
            from: e.from,
            to: e.to,
            model,
        })
    }
}

impl FromStr for LinkSpec {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Self, LinkError> {
        let syntax = || LinkError::Syntax(s.to_string());
        let (pair, params) = s.split_once('=').ok_or_else(syntax)?;
        let (from, to) = pair.split_once(':').ok_or_else(syntax)?;
        let mut parts = params.split(',');
        let latency = parts.next().ok_or_else(syntax)?;
        let bandwidth = parts.next().ok_or_else(syntax)?;
        let (from, to) = (from.trim(), to.trim());
        for r in [from, to] {
            if !valid_region(r) {
                return Err(LinkError::RegionName(r.to_string()));
            }
        }
        let number = |what: &'static str, v: &str| {
            v.trim().parse::<u64>().map_err(|_| LinkError::Number {
                link: s.to_string(),
                what,
                value: v.trim().to_string(),
            })
        };
        let mut model = LinkModel::new(
            number("latency_ms", latency)?,
            number("bandwidth_mib_s", bandwidth)?,
        );
        let float = |what: &'static str, v: &str| {
            v.trim().parse::<f64>().map_err(|_| LinkError::Number {
                link: s.to_string(),
                what,
                value: v.trim().to_string(),
            })
        };
        for fault in parts {
            let (key, value) = match fault.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (fault.trim(), ""),
            };
            let pair = |sep: char| value.split_once(sep).ok_or_else(syntax);
            match key {
                "partition" | "partitioned" if value.is_empty() => model.partitioned = true,
                "jitter" => model.jitter_ms = number("jitter", value)?,
                "loss" => model.loss = float("loss", value)?,
                "timeout" => model.timeout_ms = number("timeout", value)?,
                "slow_close" => model.slow_close_ms = number("slow_close", value)?,
                "uniform" => {
                    let (a, b) = pair('-')?;
                    model.distribution = Distribution::Uniform {
                        min_ms: number("uniform min", a)?,
                        max_ms: number("uniform max", b)?,
                    };
                }
                "normal" => {
                    let (a, b) = pair('/')?;
                    model.distribution = Distribution::Normal {
                        mean_ms: float("normal mean", a)?,
                        stddev_ms: float("normal stddev", b)?,
                    };
                }
                "pareto" => {
                    let (a, b) = pair('/')?;
                    model.distribution = Distribution::Pareto {
                        scale_ms: float("pareto scale", a)?,
                        shape: float("pareto shape", b)?,
                    };
                }
                _ => return Err(syntax()),
            }
        }
        model.validate()?;
        Ok(LinkSpec {
            from: from.to_string(),
            to: to.to_string(),
            model,
        })
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.from, self.to, self.model)
    }
}

/// `us-east-1`-shaped: lowercase ASCII letters and digits in `-`-separated non-empty parts.
fn valid_region(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Every directed pair's link: `default`, except the pairs in `links`.
///
/// As a config (TOML shown; any serde format works):
///
/// ```toml
/// [default]
/// latency_ms = 60000
/// bandwidth_bytes_per_s = 78643200
///
/// [[links]]
/// from = "us-east-1"
/// to = "ap-south-1"
/// latency_ms = 120000
/// bandwidth_bytes_per_s = 31457280
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkTable {
    /// The link of every pair not listed (default [`LinkModel::CROSS_REGION`]).
    pub default: LinkModel,
    /// Directed pairs with their own model (at most one entry per pair).
    pub links: Vec<LinkSpec>,
}

impl LinkTable {
    /// Every pair on the default link.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one pair's link.
    pub fn set(&mut self, spec: LinkSpec) {
        self.links
            .retain(|l| !(l.from == spec.from && l.to == spec.to));
        self.links.push(spec);
    }

    /// Removes one pair's own link (it falls back to the default); true if it had one.
    pub fn clear(&mut self, from: &str, to: &str) -> bool {
        let before = self.links.len();
        self.links.retain(|l| !(l.from == from && l.to == to));
        self.links.len() != before
    }

    /// A table from `--link` specs: a pair given twice is an error (a typo is likelier than an
    /// intent).
    pub fn from_specs(specs: impl IntoIterator<Item = LinkSpec>) -> Result<Self, LinkError> {
        let mut t = LinkTable::new();
        for s in specs {
            if t.links.iter().any(|l| l.from == s.from && l.to == s.to) {
                return Err(LinkError::Duplicate {
                    from: s.from,
                    to: s.to,
                });
            }
            t.links.push(s);
        }
        Ok(t)
    }

    /// Adds `specs` over this table (a command line over a config file): a pair given in
    /// `specs` replaces the table's.
    pub fn overridden_by(mut self, specs: impl IntoIterator<Item = LinkSpec>) -> Self {
        for s in specs {
            self.set(s);
        }
        self
    }

    /// Checks every model and that no pair is listed twice.
    pub fn validate(&self) -> Result<(), LinkError> {
        self.default.validate()?;
        let mut seen = BTreeMap::new();
        for l in &self.links {
            for r in [&l.from, &l.to] {
                if !valid_region(r) {
                    return Err(LinkError::RegionName(r.clone()));
                }
            }
            l.model.validate()?;
            if seen.insert((&l.from, &l.to), ()).is_some() {
                return Err(LinkError::Duplicate {
                    from: l.from.clone(),
                    to: l.to.clone(),
                });
            }
        }
        Ok(())
    }

    /// The pair's own link, if it is listed (the default does not count).
    pub fn get_listed(&self, from: &str, to: &str) -> Option<LinkModel> {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .map(|l| l.model)
    }

    /// The link from `from` to `to`.
    pub fn get(&self, from: &str, to: &str) -> LinkModel {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .map_or(self.default, |l| l.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_cross_region_model() {
        let l = LinkModel::default();
        assert_eq!(l.latency_ms, 60_000);
        assert_eq!(l.bandwidth_bytes_per_s, 75 * MIB);
        // 8 GiB: 60 s + 8192 MiB ÷ 75 MiB/s ≈ 169 s (EC2_SEMANTICS.md §10.2: ~3 min).
        assert_eq!(l.transfer_ms(8 * 1024 * MIB), 60_000 + 109_226);
        assert_eq!(l.to_string(), "60000 ms + bytes / 75 MiB/s");
        let odd = LinkModel::with_bytes_per_s(5, 1000);
        assert_eq!(odd.to_string(), "5 ms + bytes / 1000 B/s");
        assert_eq!(odd.transfer_ms(2000), 5 + 2000);
    }

    #[test]
    fn a_spec_parses_pair_latency_and_mib_per_second() {
        let s: LinkSpec = "us-east-1:eu-west-1=30000,150".parse().unwrap();
        assert_eq!(s.from, "us-east-1");
        assert_eq!(s.to, "eu-west-1");
        assert_eq!(s.model, LinkModel::new(30_000, 150));
        assert_eq!(s.model.bandwidth_bytes_per_s, 150 * MIB);
        // Spaces around the parts are tolerated.
        let t: LinkSpec = " ap-south-1 : us-east-1 = 5 , 1 ".parse().unwrap();
        assert_eq!(
            (t.from.as_str(), t.to.as_str()),
            ("ap-south-1", "us-east-1")
        );
        assert_eq!(t.model, LinkModel::new(5, 1));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (bad, want) in [
            ("us-east-1=1,2", "expected FROM:TO"),
            ("us-east-1:eu-west-1", "expected FROM:TO"),
            ("us-east-1:eu-west-1=100", "expected FROM:TO"),
            ("US:eu-west-1=1,2", "invalid region name \"US\""),
            (":eu-west-1=1,2", "invalid region name \"\""),
            ("us-east-1:eu-west-1=fast,2", "for latency_ms"),
            ("us-east-1:eu-west-1=1,-2", "for bandwidth_mib_s"),
            ("us-east-1:eu-west-1=1,0", "greater than 0"),
            ("us-east-1:eu-west-1=1,2,loss=2", "loss must be in [0, 1]"),
            ("us-east-1:eu-west-1=1,2,uniform=9-1", "min <= max"),
            ("us-east-1:eu-west-1=1,2,pareto=0/1", "scale > 0"),
            ("us-east-1:eu-west-1=1,2,flood", "expected FROM:TO"),
            ("us-east-1:eu-west-1=1,2,jitter=x", "for jitter"),
        ] {
            let e = bad.parse::<LinkSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn links_are_directed_and_default_otherwise() {
        let t = LinkTable::from_specs([
            "us-east-1:eu-west-1=1000,100".parse().unwrap(),
            "eu-west-1:us-east-1=2000,200".parse().unwrap(),
        ])
        .unwrap();
        assert_eq!(t.get("us-east-1", "eu-west-1"), LinkModel::new(1000, 100));
        assert_eq!(t.get("eu-west-1", "us-east-1"), LinkModel::new(2000, 200));
        assert_eq!(t.get("us-east-1", "ap-south-1"), LinkModel::CROSS_REGION);
        assert!(t.validate().is_ok());
    }

    #[test]
    fn a_pair_given_twice_is_refused_on_the_command_line_and_replaced_over_a_config() {
        let a: LinkSpec = "us-east-1:eu-west-1=1,1".parse().unwrap();
        let b: LinkSpec = "us-east-1:eu-west-1=2,2".parse().unwrap();
        assert_eq!(
            LinkTable::from_specs([a.clone(), b.clone()]),
            Err(LinkError::Duplicate {
                from: "us-east-1".into(),
                to: "eu-west-1".into()
            })
        );
        let t = LinkTable::from_specs([a]).unwrap().overridden_by([b]);
        assert_eq!(t.links.len(), 1);
        assert_eq!(t.get("us-east-1", "eu-west-1"), LinkModel::new(2, 2));
    }

    #[test]
    fn the_table_is_a_serde_config() {
        let json = r#"{
            "default": {"latency_ms": 1000, "bandwidth_bytes_per_s": 1048576},
            "links": [{"from": "us-east-1", "to": "ap-south-1", "latency_ms": 5}]
        }"#;
        let t: LinkTable = serde_json::from_str(json).unwrap();
        assert_eq!(t.default, LinkModel::new(1000, 1));
        // A field left out keeps its default.
        assert_eq!(
            t.get("us-east-1", "ap-south-1"),
            LinkModel::with_bytes_per_s(5, 75 * MIB)
        );
        // An empty config is the default table; unknown fields are refused.
        assert_eq!(
            serde_json::from_str::<LinkTable>("{}").unwrap(),
            LinkTable::new()
        );
        assert!(serde_json::from_str::<LinkTable>(r#"{"defualt": {}}"#).is_err());
        // Round trip.
        let back: LinkTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn the_documented_toml_config_parses() {
        let text = r#"
            [default]
            latency_ms = 60000
            bandwidth_bytes_per_s = 78643200

            [[links]]
            from = "us-east-1"
            to = "ap-south-1"
            latency_ms = 120000
            bandwidth_bytes_per_s = 31457280
        "#;
        let t: LinkTable = toml::from_str(text).unwrap();
        assert_eq!(t.default, LinkModel::CROSS_REGION);
        assert_eq!(
            t.get("us-east-1", "ap-south-1"),
            LinkModel::new(120_000, 30)
        );
        assert!(t.validate().is_ok());
        // A bad entry is refused while parsing, with the reason.
        let bad = "[[links]]\nfrom = \"us-east-1\"\nto = \"EU\"\n";
        let e = toml::from_str::<LinkTable>(bad).unwrap_err().to_string();
        assert!(e.contains("invalid region name"), "{e}");
    }

    #[test]
    fn a_config_with_a_zero_bandwidth_or_a_duplicate_does_not_validate() {
        let mut t = LinkTable::new();
        t.default.bandwidth_bytes_per_s = 0;
        assert_eq!(t.validate(), Err(LinkError::ZeroBandwidth));
        let spec: LinkSpec = "us-east-1:eu-west-1=1,1".parse().unwrap();
        let t = LinkTable {
            default: LinkModel::default(),
            links: vec![spec.clone(), spec],
        };
        assert!(matches!(t.validate(), Err(LinkError::Duplicate { .. })));
    }

    fn draws(m: &LinkModel, seed: u64, n: usize) -> Vec<u64> {
        let mut rng = seeded_rng(seed, "test");
        (0..n).map(|_| m.sample_latency_ms(&mut rng)).collect()
    }

    #[test]
    fn fault_specs_parse_into_the_model() {
        let s: LinkSpec =
            "us-east-1:eu-west-1=100,10,jitter=5,loss=0.25,partition,timeout=300,slow_close=40"
                .parse()
                .unwrap();
        let m = s.model;
        assert_eq!((m.latency_ms, m.bandwidth_bytes_per_s), (100, 10 * MIB));
        assert_eq!((m.jitter_ms, m.loss, m.partitioned), (5, 0.25, true));
        assert_eq!((m.timeout_ms, m.slow_close_ms), (300, 40));
        assert!(m.has_faults());
        assert!(!LinkModel::default().has_faults());
        let u: LinkSpec = "coordinator:us-east-1=0,1,uniform=10-20".parse().unwrap();
        assert_eq!(u.from, COORDINATOR);
        assert_eq!(
            u.model.distribution,
            Distribution::Uniform {
                min_ms: 10,
                max_ms: 20
            }
        );
        let n: LinkSpec = "a-1:b-1=0,1,normal=100/15".parse().unwrap();
        assert_eq!(
            n.model.distribution,
            Distribution::Normal {
                mean_ms: 100.0,
                stddev_ms: 15.0
            }
        );
        let p: LinkSpec = "a-1:b-1=0,1,pareto=50/1.5".parse().unwrap();
        assert!(p.to_string().contains("pareto(50, 1.5)"), "{p}");
        // A faulty spec survives the config round trip.
        let back: LinkSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn distributions_stay_in_their_bounds_and_replay_from_the_seed() {
        let fixed = LinkModel::new(250, 1);
        assert!(draws(&fixed, 1, 100).iter().all(|&v| v == 250));

        let uniform = LinkModel {
            distribution: Distribution::Uniform {
                min_ms: 10,
                max_ms: 20,
            },
            ..LinkModel::default()
        };
        let u = draws(&uniform, 1, 1000);
        assert!(u.iter().all(|v| (10..=20).contains(v)));
        assert!(u.contains(&10) && u.contains(&20), "both ends are reached");

        let normal = LinkModel {
            distribution: Distribution::Normal {
                mean_ms: 1000.0,
                stddev_ms: 100.0,
            },
            ..LinkModel::default()
        };
        let n = draws(&normal, 2, 4000);
        let mean = n.iter().sum::<u64>() as f64 / n.len() as f64;
        assert!((mean - 1000.0).abs() < 15.0, "mean {mean}");
        let within = n.iter().filter(|&&v| (800..=1200).contains(&v)).count();
        assert!(within as f64 / n.len() as f64 > 0.93, "2 sigma: {within}");
        // Cut at zero, never negative or wrapped.
        let wide = LinkModel {
            distribution: Distribution::Normal {
                mean_ms: 0.0,
                stddev_ms: 100.0,
            },
            ..LinkModel::default()
        };
        assert!(draws(&wide, 3, 1000).iter().all(|&v| v < 1000));

        let pareto = LinkModel {
            distribution: Distribution::Pareto {
                scale_ms: 100.0,
                shape: 1.5,
            },
            ..LinkModel::default()
        };
        let p = draws(&pareto, 4, 4000);
        assert!(p.iter().all(|&v| v >= 100));
        // A heavy tail: some draws far above the scale.
        assert!(p.iter().any(|&v| v > 1000));
        let median = {
            let mut q = p.clone();
            q.sort_unstable();
            q[q.len() / 2]
        };
        // Median of Pareto(100, 1.5) = 100 · 2^(1/1.5) ≈ 159.
        assert!((140..=180).contains(&median), "median {median}");

        // Jitter: ± around the fixed latency.
        let jittery = LinkModel {
            jitter_ms: 50,
            ..LinkModel::new(100, 1)
        };
        let j = draws(&jittery, 5, 1000);
        assert!(j.iter().all(|v| (50..=150).contains(v)));
        assert!(j.iter().any(|&v| v < 100) && j.iter().any(|&v| v > 100));

        // Same seed, same draws; another seed, others.
        assert_eq!(draws(&pareto, 9, 50), draws(&pareto, 9, 50));
        assert_ne!(draws(&pareto, 9, 50), draws(&pareto, 10, 50));
    }

    #[test]
    fn loss_is_drawn_at_its_rate_and_not_at_all_without_it() {
        let lossy = LinkModel {
            loss: 0.3,
            ..LinkModel::default()
        };
        let mut rng = seeded_rng(7, "loss");
        let lost = (0..10_000).filter(|_| lossy.sample_lost(&mut rng)).count();
        assert!((2700..=3300).contains(&lost), "{lost}");
        let mut a = seeded_rng(7, "x");
        let mut b = seeded_rng(7, "x");
        assert!(!LinkModel::default().sample_lost(&mut a));
        // No loss → no draw: the stream is untouched.
        assert_eq!(a.random::<u64>(), b.random::<u64>());
        let certain = LinkModel {
            loss: 1.0,
            ..LinkModel::default()
        };
        assert!(certain.sample_lost(&mut a));
    }

    #[test]
    fn a_table_clears_one_pair() {
        let mut t = LinkTable::from_specs(["a-1:b-1=1,1,partition".parse().unwrap()]).unwrap();
        assert!(t.get("a-1", "b-1").partitioned);
        // One way only.
        assert!(!t.get("b-1", "a-1").partitioned);
        assert!(t.clear("a-1", "b-1"));
        assert!(!t.clear("a-1", "b-1"));
        assert_eq!(t.get("a-1", "b-1"), LinkModel::default());
    }
}
