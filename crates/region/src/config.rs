//! The node's configuration: one serde struct with documented defaults (STYLE.md 11).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amisim_core::Accounts;
use serde::{Deserialize, Serialize};

/// How a region node runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegionConfig {
    /// The region this node owns, e.g. `us-east-1`. Written into every event; a log holding
    /// another region's events is refused at start.
    pub region: String,
    /// Simulated time runs this many times faster than wall time (default 60: a simulated
    /// minute per wall second, so an 8 GiB snapshot completes in about a second).
    pub time_scale: f64,
    /// Seed of the node's RNG (ids, event ids). `None`: drawn at random and logged at start, so
    /// a run can be replayed with the same seed.
    pub seed: Option<u64>,
    /// The simulation's timing model and quotas.
    pub core: amisim_core::Config,
    /// At most this many queued commands go into one group commit (default 512). Larger batches
    /// amortize the flush better but make the first command of a batch wait for the last.
    pub max_batch: usize,
    /// The accounts file (`--accounts FILE`), if any (default none). With it, every `Ec2` call
    /// must authenticate with `authorization: Bearer <token>` (`x-amisim-account` is ignored),
    /// and organization / OU launch permissions cover the accounts it places in them. Loaded
    /// from its own file, never serialized with the rest (it holds secrets).
    #[serde(skip)]
    pub accounts: Option<Arc<Accounts>>,
    /// The event log's cache and the projection checkpoints.
    pub storage: StorageConfig,
}

/// Where and how a node keeps its data, besides the log itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// sled's page cache for the event log, in MiB (default 64; `--sled-cache-mb`,
    /// `AMISIM_SLED_CACHE_MB`). sled keeps at most about this much of the log in memory; the
    /// projection itself is separate (about 1 KiB per image). Only logs created before ADR 0013
    /// are sled logs; a segment log's cache is the OS page cache.
    pub sled_cache_mb: u64,
    /// Write a projection checkpoint every this many events (default 100,000; 0: only at a
    /// clean shutdown). A restart loads the newest valid checkpoint and folds only the events
    /// after it ([`crate::checkpoint`]).
    pub checkpoint_every: u64,
    /// The directory of the projection checkpoints (`None`, the default: no checkpoints, every
    /// start folds the whole log). [`StorageConfig::for_data_dir`] puts them in
    /// `<data>/checkpoints`.
    pub checkpoint_dir: Option<PathBuf>,
}

/// The subdirectory of a node's data directory that holds its checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sled_cache_mb: 64,
            checkpoint_every: 100_000,
            checkpoint_dir: None,
        }
    }
}

impl StorageConfig {
    /// The same settings with checkpoints in `<data_dir>/checkpoints` (unless a directory is
    /// set already).
    pub fn for_data_dir(mut self, data_dir: &Path) -> Self {
        if self.checkpoint_dir.is_none() {
            self.checkpoint_dir = Some(data_dir.join(CHECKPOINT_DIR));
        }
        self
    }

    /// How to open the node's event log: the configured cache, and no chain verification at
    /// open, because the node verifies the chain itself when it starts (from its checkpoint on,
    /// in the same pass that folds the events; see [`crate::RegionNode::start`]).
    pub fn sled_options(&self) -> amisim_log::SledOptions {
        amisim_log::SledOptions {
            cache_capacity_bytes: self.sled_cache_mb.saturating_mul(1024 * 1024),
            verify_on_open: false,
            ..amisim_log::SledOptions::default()
        }
    }
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            region: "us-east-1".into(),
            time_scale: amisim_chaos::ScaledClock::DEFAULT_SCALE,
            seed: None,
            core: amisim_core::Config::default(),
            max_batch: 512,
            accounts: None,
            storage: StorageConfig::default(),
        }
    }
}

impl RegionConfig {
    /// A default configuration for `region`.
    pub fn new(region: impl Into<String>) -> Self {
        RegionConfig {
            region: region.into(),
            ..Self::default()
        }
    }

    /// Checks what would make the node misbehave.
    pub(crate) fn validate(&self) -> Result<(), crate::RegionError> {
        use crate::RegionError::Config;
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Config(format!(
                "region {:?} must be lowercase letters, digits and '-' (like us-east-1)",
                self.region
            )));
        }
        if !amisim_chaos::ScaledClock::valid_scale(self.time_scale) {
            return Err(Config(format!(
                "time_scale {} must be a finite number greater than 0",
                self.time_scale
            )));
        }
        if self.max_batch == 0 {
            return Err(Config("max_batch must be at least 1".into()));
        }
        if self.storage.sled_cache_mb == 0 {
            return Err(Config("sled_cache_mb must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = RegionConfig::default();
        assert_eq!(c.time_scale, 60.0);
        assert_eq!(c.max_batch, 512);
        assert_eq!(c.seed, None);
        assert_eq!(c.storage.sled_cache_mb, 64);
        assert_eq!(c.storage.checkpoint_every, 100_000);
        assert_eq!(c.storage.checkpoint_dir, None);
        let opts = c.storage.sled_options();
        assert_eq!(opts.cache_capacity_bytes, 64 * 1024 * 1024);
        assert!(
            !opts.verify_on_open,
            "the node verifies the chain itself at start"
        );
        let dir = Path::new("/data/us-east-1");
        assert_eq!(
            c.storage.clone().for_data_dir(dir).checkpoint_dir,
            Some(dir.join(CHECKPOINT_DIR))
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_configs_are_refused() {
        for c in [
            RegionConfig::new(""),
            RegionConfig::new("US East"),
            RegionConfig {
                time_scale: 0.0,
                ..RegionConfig::default()
            },
            RegionConfig {
                time_scale: f64::NAN,
                ..RegionConfig::default()
            },
            RegionConfig {
                max_batch: 0,
                ..RegionConfig::default()
            },
            RegionConfig {
                storage: StorageConfig {
                    sled_cache_mb: 0,
                    ..StorageConfig::default()
                },
                ..RegionConfig::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
