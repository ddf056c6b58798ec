//! The links between regions: what a copy's data crosses (DESIGN.md §6, EC2_SEMANTICS.md §10.2).
//!
//! A [`LinkModel`] is one directed link (`us-east-1` → `eu-west-1` may differ from the way
//! back): a fixed latency and a bandwidth, so a transfer of `bytes` takes
//! `latency_ms + bytes ÷ bandwidth` simulated milliseconds. [`LinkTable`] holds a default for
//! every pair and the pairs configured otherwise.
//!
//! Both come from the command line (`--link us-east-1:eu-west-1=30000,150`, see [`LinkSpec`])
//! or from a serde config ([`LinkTable`] is `Deserialize`; TOML example in its doc). The
//! coordinator turns the model of a copy's pair into the `LinkParams` of its StartCopy step.
//!
//! Faults (jitter, loss, partitions) will join the model here; for now it is plain data.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bytes per MiB.
pub const MIB: u64 = 1024 * 1024;

/// One directed link between two regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkModel {
    /// Fixed cost of a transfer, simulated ms (default 60 000: the cross-region base time of
    /// EC2_SEMANTICS.md §10.2).
    pub latency_ms: u64,
    /// Throughput, bytes per simulated second (default 75 MiB/s). Never 0 in a valid model: a
    /// zero bandwidth means "the default model" on the wire (`LinkParams`).
    pub bandwidth_bytes_per_s: u64,
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
    };

    /// A link of `latency_ms` and `bandwidth_mib_s` MiB per simulated second.
    pub fn new(latency_ms: u64, bandwidth_mib_s: u64) -> Self {
        LinkModel {
            latency_ms,
            bandwidth_bytes_per_s: bandwidth_mib_s.saturating_mul(MIB),
        }
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
        Ok(())
    }
}

impl fmt::Display for LinkModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mib, rest) = (
            self.bandwidth_bytes_per_s / MIB,
            self.bandwidth_bytes_per_s % MIB,
        );
        if rest == 0 {
            write!(f, "{} ms + bytes / {mib} MiB/s", self.latency_ms)
        } else {
            write!(
                f,
                "{} ms + bytes / {} B/s",
                self.latency_ms, self.bandwidth_bytes_per_s
            )
        }
    }
}

/// Why a link could not be parsed or configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("invalid link {0:?}: expected FROM:TO=LATENCY_MS,BANDWIDTH_MIB_S, e.g. us-east-1:eu-west-1=30000,150")]
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
}

/// One `--link` argument: `FROM:TO=LATENCY_MS,BANDWIDTH_MIB_S`, a directed pair and its model.
/// `FROM` and `TO` may be equal (a same-region copy ignores links, though).
///
/// In a config it is one flat entry: `from`, `to`, `latency_ms`, `bandwidth_bytes_per_s` (a
/// model field left out keeps the [`LinkModel`] default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        let (latency, bandwidth) = params.split_once(',').ok_or_else(syntax)?;
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
        let model = LinkModel::new(
            number("latency_ms", latency)?,
            number("bandwidth_mib_s", bandwidth)?,
        );
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        let odd = LinkModel {
            latency_ms: 5,
            bandwidth_bytes_per_s: 1000,
        };
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
            LinkModel {
                latency_ms: 5,
                bandwidth_bytes_per_s: 75 * MIB
            }
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
}
