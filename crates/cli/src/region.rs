//! `amisim region`: one region node as its own process, and the node setup `dev` shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amisim_lab::cluster::{start_region_node, RegionOptions};
use amisim_region::RegionNode;
use anyhow::Context;

use crate::shutdown::{os_signal, Shutdown};

/// Run one region node: its event log under --data, the Ec2 and Region gRPC services on --listen.
///
/// Prints `amisim region <name>: listening on <addr>` (the real port when --listen ends in :0).
/// Restarting on the same --data replays the log and re-arms every pending timer.
#[derive(Debug, clap::Args)]
pub struct RegionArgs {
    /// The region this node owns, e.g. us-east-1.
    #[arg(long, env = "AMISIM_REGION_NAME", value_name = "REGION")]
    pub name: String,

    /// Directory of this region's event log (created if missing).
    #[arg(long, env = "AMISIM_DATA", value_name = "DIR")]
    pub data: PathBuf,

    /// Address to serve gRPC on; port 0 picks a free port (printed).
    #[arg(
        long,
        env = "AMISIM_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub listen: String,

    /// Every region of the deployment, comma-separated: a CopyImage / CopySnapshot naming
    /// another source region fails with `InvalidRegion`.
    #[arg(
        long,
        env = "AMISIM_KNOWN_REGIONS",
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "us-east-1,eu-west-1,ap-south-1"
    )]
    pub known_regions: Vec<String>,

    #[command(flatten)]
    pub sim: SimArgs,

    #[command(flatten)]
    pub accounts: crate::accounts::AccountsArgs,
}

/// Simulation settings shared by `dev` and `region`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Simulated seconds per wall-clock second (60: an 8 GiB snapshot takes about a second).
    #[arg(long, env = "AMISIM_TIME_SCALE", default_value_t = 60.0, value_name = "FACTOR",
          value_parser = parse_time_scale)]
    pub time_scale: f64,

    /// Seed of the node's RNG (ids, jitter); printed at start so a run can be replayed.
    /// Default: a random seed.
    #[arg(long, env = "AMISIM_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Sign a digest of the log (ed25519, key in DATA/signing.key, digests in
    /// DATA/digests.jsonl) every N events and at clean shutdown; `amisim audit verify` uses them
    /// to detect a truncated log.
    #[arg(long, env = "AMISIM_DIGEST_EVERY", default_value_t = amisim_region::audit::DEFAULT_DIGEST_EVERY,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub digest_every: u64,

    /// Record read-only calls (Describe/Get/List) in the request log too, as CloudTrail does;
    /// every other call (writes, failures, denials, DryRun) is always recorded. The request log
    /// is DATA/requests (ADR 0007).
    #[arg(long, env = "AMISIM_RECORD_READS", default_value_t = true, value_name = "BOOL",
          action = clap::ArgAction::Set)]
    pub record_reads: bool,

    /// How far back `Audit.LookupEvents` shows request records, in simulated time before the
    /// node's clock (CloudTrail's event history keeps 90 days): e.g. `90d`, `36h`, `15m`. Older
    /// records stay in DATA/requests (export and verify see them all).
    #[arg(long, env = "AMISIM_TRAIL_RETENTION", default_value = "90d", value_name = "DURATION",
          value_parser = amisim_region::audit::parse_duration)]
    pub trail_retention: std::time::Duration,

    /// sled's page cache for each region's event log, in MiB: a bound on the memory the log
    /// takes (the projection is separate, about 1 KiB per image).
    #[arg(long, env = "AMISIM_SLED_CACHE_MB", value_name = "MIB",
          default_value_t = amisim_region::StorageConfig::default().sled_cache_mb,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sled_cache_mb: u64,

    /// Write a projection checkpoint (DATA/checkpoints) every N events, and at a clean
    /// shutdown; a restart loads the newest valid one and folds only the log after it.
    /// 0: only at shutdown.
    #[arg(long, env = "AMISIM_CHECKPOINT_EVERY", value_name = "N",
          default_value_t = amisim_region::StorageConfig::default().checkpoint_every)]
    pub checkpoint_every: u64,

    /// `scaled`: simulated time flows --time-scale times faster than wall time. `virtual`: it
    /// moves only when told (the coordinator's `Chaos.AdvanceClock` / `AdvanceToNextTimer`), so
    /// a run replays exactly from its seeds; it starts at the last logged event, or at
    /// 2024-01-01T00:00:00Z on an empty log.
    #[arg(long, env = "AMISIM_CLOCK", value_enum, default_value_t = ClockKind::Scaled)]
    pub clock: ClockKind,

    /// Where a virtual clock starts on an empty log, in ms since the Unix epoch (default
    /// 2024-01-01T00:00:00Z). A log with later events starts at its last event instead.
    /// Ignored by the scaled clock.
    #[arg(long, env = "AMISIM_VIRTUAL_START_MS", value_name = "MS",
          default_value_t = VIRTUAL_EPOCH_MS)]
    pub virtual_start_ms: u64,
}

impl SimArgs {
    /// The nodes' storage settings (checkpoint directory: each node's DATA/checkpoints).
    pub fn storage(&self) -> amisim_region::StorageConfig {
        amisim_region::StorageConfig {
            sled_cache_mb: self.sled_cache_mb,
            checkpoint_every: self.checkpoint_every,
            checkpoint_dir: None,
        }
    }
}

/// Which clock the nodes run on (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockKind {
    Scaled,
    Virtual,
}

/// Where a virtual clock starts on an empty log: 2024-01-01T00:00:00Z (fixed, so runs replay).
pub const VIRTUAL_EPOCH_MS: u64 = 1_704_067_200_000;

fn parse_time_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a positive number, got {s}"))
    }
}

/// Opens (or creates) a region's log under `dir` and starts its node with `storage`.
/// `known_regions`: every region of the deployment (the sources a copy may name). With
/// `virtual_clock`, the node runs on it (moved forward to the node's
/// last logged event) instead of a scaled clock. The opening itself (log, signed digests,
/// request log) is the lab's, which reopens the same directories after a node fault.
#[allow(clippy::too_many_arguments)]
pub fn start_node_on(
    name: &str,
    dir: &Path,
    time_scale: f64,
    seed: Option<u64>,
    known_regions: &[String],
    accounts: Option<Arc<amisim_core::Accounts>>,
    virtual_clock: Option<amisim_chaos::VirtualClock>,
    storage: amisim_region::StorageConfig,
) -> anyhow::Result<Arc<RegionNode>> {
    let opts = RegionOptions {
        storage,
        known_regions: known_regions.to_vec(),
        seed,
        time_scale,
        accounts,
        digest_every: crate::audit::digest_every(),
        record_reads: crate::audit::record_reads(),
        ..RegionOptions::new(name, dir)
    };
    start_region_node(&opts, virtual_clock).with_context(|| format!("cannot start region {name}"))
}

pub async fn run(args: RegionArgs) -> anyhow::Result<()> {
    let listener = crate::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let accounts = args.accounts.load()?;
    let node = start_node_on(
        &args.name,
        &args.data,
        args.sim.time_scale,
        args.sim.seed,
        &args.known_regions,
        accounts.clone(),
        (args.sim.clock == ClockKind::Virtual)
            .then(|| amisim_chaos::VirtualClock::new(args.sim.virtual_start_ms)),
        args.sim.storage(),
    )?;
    println!(
        "amisim region {}: {}",
        node.region(),
        crate::accounts::describe(accounts.as_deref())
    );
    println!(
        "amisim region {}: data {}, seed {}, head seq {}, {}",
        node.region(),
        args.data.display(),
        node.seed(),
        node.head_seq(),
        describe_clock(&args.sim, node.now_ms())
    );
    // Signal handlers first: a caller may signal as soon as it reads the next line.
    let signals = os_signal();
    println!("amisim region {}: listening on {addr}", node.region());

    let shutdown = Shutdown::new();
    let mut server = tokio::spawn(amisim_region::serve(
        node.clone(),
        listener,
        shutdown.signal(),
    ));
    let outcome = tokio::select! {
        sig = signals => {
            tracing::info!(signal = sig, "shutting down");
            shutdown.trigger();
            (&mut server).await
        }
        res = &mut server => res,
    };
    node.shutdown().await;
    outcome
        .context("the region server task panicked")?
        .with_context(|| format!("region {} failed", args.name))?;
    println!("amisim region {}: stopped", args.name);
    Ok(())
}

/// `time scale 60` or `virtual clock at <ms>` for the start banner.
pub fn describe_clock(sim: &SimArgs, now_ms: u64) -> String {
    match sim.clock {
        ClockKind::Scaled => format!("time scale {}", sim.time_scale),
        ClockKind::Virtual => format!("virtual clock at {now_ms} ms (moved by Chaos.AdvanceClock)"),
    }
}
