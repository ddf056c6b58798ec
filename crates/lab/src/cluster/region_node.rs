//! Opening one region node on its data directory: the sled event log with signed digests, the
//! request log, the node itself. Shared by the cluster (which reopens the same directory after a
//! kill) and `amisim region`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amisim_chaos::Clock;
use amisim_log::{DiskLog, EventLog};
use amisim_region::{RegionConfig, RegionNode};

use super::{io_err, node_err, LabError};

/// How to open a region node.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// The region, e.g. `us-east-1`.
    pub name: String,
    /// Its data directory: the event log, `requests/`, the signing key and digests.
    pub dir: PathBuf,
    /// Every region of the deployment (the sources a copy may name); the node's own is added.
    pub known_regions: Vec<String>,
    /// The node's RNG seed (`None`: random, printed by the node).
    pub seed: Option<u64>,
    /// For a node on its own scaled clock.
    pub time_scale: f64,
    pub accounts: Option<Arc<amisim_core::Accounts>>,
    /// Sign a digest of the log every this many events.
    pub digest_every: u64,
    /// Record read-only calls in the request log too.
    pub record_reads: bool,
    /// sled cache and projection checkpoints (`<dir>/checkpoints`).
    pub storage: amisim_region::StorageConfig,
}

impl RegionOptions {
    /// Defaults for `name` in `dir`: scale 60, random seed, digests every
    /// [`amisim_region::audit::DEFAULT_DIGEST_EVERY`] events, reads recorded.
    pub fn new(name: &str, dir: &Path) -> Self {
        RegionOptions {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            known_regions: Vec::new(),
            seed: None,
            time_scale: amisim_chaos::ScaledClock::DEFAULT_SCALE,
            accounts: None,
            digest_every: amisim_region::audit::DEFAULT_DIGEST_EVERY,
            record_reads: true,
            storage: amisim_region::StorageConfig::default(),
        }
    }
}

/// A node just opened, and weak handles on the files it holds, so that a killed node's
/// directory is reopened only once the last of them is released.
pub(crate) struct OpenedRegion {
    pub(crate) node: Arc<RegionNode>,
    pub(crate) files: HeldFiles,
}

/// Weak handles on a node's sled databases.
#[derive(Default, Clone)]
pub(crate) struct HeldFiles {
    logs: Vec<Weak<DiskLog>>,
}

impl HeldFiles {
    /// Waits (up to `limit`) until nothing holds the databases any more; false if something
    /// still does.
    pub(crate) async fn released(&self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.logs.iter().all(|w| w.strong_count() == 0) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Opens (or creates) the region's directory and starts its node on the clock `make_clock`
/// makes from the sim time of the last logged event.
pub(crate) fn open_region(
    opts: &RegionOptions,
    make_clock: impl FnOnce(u64) -> Arc<dyn Clock>,
) -> Result<OpenedRegion, LabError> {
    let name = &opts.name;
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        io_err(
            format!("cannot create the data directory {}", dir.display()),
            e,
        )
    })?;
    let storage = opts.storage.clone().for_data_dir(dir);
    let log = Arc::new(DiskLog::open(dir, storage.sled_options()).map_err(|e| {
        node_err(
            name.clone(),
            format!(
                "cannot open the event log of {name} at {} (is another amisim using it?): {e}",
                dir.display()
            ),
        )
    })?);
    let mut files = HeldFiles::default();
    files.logs.push(Arc::downgrade(&log));
    let log: Arc<dyn EventLog> = log;
    // Signed digests every `digest_every` events (audit: a truncated tail is detectable).
    let (log, audit_trail) = amisim_region::audit::open_signed(dir, name, opts.digest_every, log)
        .map_err(|e| {
        node_err(
            name.clone(),
            format!("cannot open the audit signing key: {e}"),
        )
    })?;
    let mut cfg = RegionConfig {
        region: name.to_string(),
        time_scale: opts.time_scale,
        seed: opts.seed,
        accounts: opts.accounts.clone(),
        storage,
        ..RegionConfig::default()
    };
    let mut known: Vec<String> = opts
        .known_regions
        .iter()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    if !known.iter().any(|r| r == name) {
        known.push(name.to_string());
    }
    cfg.core.known_regions = known;
    // The request log (ADR 0007): CloudTrail-shaped records of every API call, beside the
    // state log, never in it.
    let requests_dir = dir.join(amisim_region::audit::REQUESTS_DIR);
    // Not verified at open (the node only appends to it; `amisim audit verify` checks the
    // whole chain): verifying a request log of a million calls held a restart for 5 s.
    let requests = Arc::new(
        DiskLog::open(&requests_dir, cfg.storage.sled_options()).map_err(|e| {
            node_err(
                name.clone(),
                format!(
                    "cannot open the request log at {}: {e}",
                    requests_dir.display()
                ),
            )
        })?,
    );
    files.logs.push(Arc::downgrade(&requests));
    let node = RegionNode::start_with_clock(cfg, log, make_clock)
        .map_err(|e| node_err(name.clone(), format!("cannot start: {e}")))?;
    node.attach_audit(audit_trail);
    // Record ids from the node's seed: a run replays them too.
    let recorder = amisim_region::audit::RequestRecorder::start_with(
        name,
        requests,
        amisim_region::audit::RecorderOptions {
            record_reads: opts.record_reads,
            seed: Some(node.seed()),
            ..amisim_region::audit::RecorderOptions::default()
        },
    )
    .map_err(|e| {
        node_err(
            name.clone(),
            format!("cannot start the request recorder: {e}"),
        )
    })?;
    node.attach_requests(recorder);
    Ok(OpenedRegion { node, files })
}

/// Opens a region node as `amisim region` runs it: on `virtual_clock` (moved forward to its
/// last logged event) if given, else on its own scaled clock at `opts.time_scale` starting no
/// earlier than its last logged event.
pub fn start_region_node(
    opts: &RegionOptions,
    virtual_clock: Option<amisim_chaos::VirtualClock>,
) -> Result<Arc<RegionNode>, LabError> {
    let scale = opts.time_scale;
    // Skewed (no skew to begin with): `Region.SetClockSkew` sets it, as the lab does for a
    // region in its own process.
    let opened = open_region(opts, move |last_sim_ms| {
        let base: Arc<dyn Clock> = match virtual_clock {
            Some(clock) => {
                clock.set(last_sim_ms);
                Arc::new(clock)
            }
            None => Arc::new(amisim_chaos::ScaledClock::new(scale, last_sim_ms)),
        };
        Arc::new(amisim_chaos::SkewedClock::new(base)) as Arc<dyn Clock>
    })?;
    Ok(opened.node)
}
