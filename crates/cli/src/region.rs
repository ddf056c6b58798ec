//! `amisim region`: one region node as its own process, and the node setup `dev` shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amisim_log::{EventLog, SledLog, SledOptions};
use amisim_region::{RegionConfig, RegionNode};
use anyhow::Context;

use crate::shutdown::{os_signal, Shutdown};

/// Run one region node: its sled log under --data, the Ec2 and Region gRPC services on --listen.
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

    /// `scaled`: simulated time flows --time-scale times faster than wall time. `virtual`: it
    /// moves only when told (the coordinator's `Chaos.AdvanceClock` / `AdvanceToNextTimer`), so
    /// a run replays exactly from its seeds; it starts at the last logged event, or at
    /// 2024-01-01T00:00:00Z on an empty log.
    #[arg(long, env = "AMISIM_CLOCK", value_enum, default_value_t = ClockKind::Scaled)]
    pub clock: ClockKind,
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

/// Opens (or creates) a region's log under `dir` and starts its node. `known_regions`: every
/// region of the deployment (the sources a copy may name).
pub fn start_node(
    name: &str,
    dir: &Path,
    time_scale: f64,
    seed: Option<u64>,
    known_regions: &[String],
    accounts: Option<Arc<amisim_core::Accounts>>,
) -> anyhow::Result<Arc<RegionNode>> {
    start_node_on(name, dir, time_scale, seed, known_regions, accounts, None)
}

/// As [`start_node`]; with `virtual_clock`, the node runs on it (moved forward to the node's
/// last logged event) instead of a scaled clock. Nodes of one process may share one.
pub fn start_node_on(
    name: &str,
    dir: &Path,
    time_scale: f64,
    seed: Option<u64>,
    known_regions: &[String],
    accounts: Option<Arc<amisim_core::Accounts>>,
    virtual_clock: Option<amisim_chaos::VirtualClock>,
) -> anyhow::Result<Arc<RegionNode>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let log = SledLog::open(dir, SledOptions::default()).with_context(|| {
        format!(
            "cannot open the event log of {name} at {} (is another amisim using it?)",
            dir.display()
        )
    })?;
    let log: Arc<dyn EventLog> = Arc::new(log);
    // Signed digests every --digest-every events (audit: a truncated tail is detectable).
    let (log, audit_trail) =
        amisim_region::audit::open_signed(dir, name, crate::audit::digest_every(), log)
            .with_context(|| format!("cannot open the audit signing key of {name}"))?;
    let mut cfg = RegionConfig {
        region: name.to_string(),
        time_scale,
        seed,
        accounts,
        ..RegionConfig::default()
    };
    let mut known: Vec<String> = known_regions
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
    let requests = SledLog::open(&requests_dir, SledOptions::default()).with_context(|| {
        format!(
            "cannot open the request log of {name} at {}",
            requests_dir.display()
        )
    })?;
    let node = match virtual_clock {
        None => RegionNode::start(cfg, log),
        Some(clock) => RegionNode::start_with_clock(cfg, log, move |last_sim_ms| {
            clock.set(last_sim_ms);
            Arc::new(clock) as Arc<dyn amisim_chaos::Clock>
        }),
    }
    .with_context(|| format!("cannot start region {name}"))?;
    node.attach_audit(audit_trail);
    let recorder = amisim_region::audit::RequestRecorder::start(
        name,
        Arc::new(requests),
        crate::audit::record_reads(),
    )
    .with_context(|| format!("cannot start the request recorder of {name}"))?;
    node.attach_requests(recorder);
    Ok(node)
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
            .then(|| amisim_chaos::VirtualClock::new(VIRTUAL_EPOCH_MS)),
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
    println!("amisim region {}: listening on {addr}", node.region());

    let shutdown = Shutdown::new();
    let mut server = tokio::spawn(amisim_region::serve(
        node.clone(),
        listener,
        shutdown.signal(),
    ));
    let outcome = tokio::select! {
        sig = os_signal() => {
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
