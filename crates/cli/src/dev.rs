//! `amisim dev`: the embedded default (DESIGN.md §1). One process, one region node per region,
//! each served on its own loopback listener, and the coordinator on `--listen` (gateway,
//! `Coordinator` service, followers, copy sagas) talking to them over ordinary gRPC channels:
//! exactly the multi-process path, only wired in one process. It is an in-process
//! [`amisim_lab::Cluster`], so its nodes can be killed, paused, restarted and clock-skewed
//! through the coordinator's `Chaos` service (`amisim chaos node ...`).

use std::path::PathBuf;
use std::time::Duration;

use amisim_lab::{Cluster, ClusterClock, ClusterSpec, LabError};

use crate::coordinator::{print_links, LinkArgs};
use crate::region::{ClockKind, SimArgs};
use crate::shutdown::os_signal;

/// Run every region node and the coordinator in one process (the default way to use amisim).
///
/// Prints one line each: the gateway address, each region (its loopback address, data
/// directory and seed). Point a gRPC client at the gateway and pick the region with the
/// metadata key `x-amisim-region`. Ctrl-C or SIGTERM stops everything cleanly; running it again
/// on the same --data resumes from the logs. Nodes can be killed, paused, restarted and
/// clock-skewed while it runs: `amisim chaos node --help`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Root data directory; each region's log lives in DIR/<region>.
    #[arg(
        long,
        env = "AMISIM_DATA",
        value_name = "DIR",
        default_value = "./amisim-data"
    )]
    pub data: PathBuf,

    /// Address of the gateway; port 0 picks a free port (printed).
    #[arg(
        long,
        env = "AMISIM_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: String,

    /// Regions to run, comma-separated.
    #[arg(
        long,
        env = "AMISIM_REGIONS",
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "us-east-1,eu-west-1,ap-south-1"
    )]
    pub regions: Vec<String>,

    #[command(flatten)]
    pub sim: SimArgs,

    /// With `--clock virtual`: when no region has written anything for MS milliseconds of wall
    /// time, move the clock to the next timer (a snapshot completing, an image turning
    /// available, a copy's transfer ending), so a client can just wait. 0 (the default): only
    /// `Chaos.AdvanceClock` / `AdvanceToNextTimer` move it. Wall-time idleness is not
    /// reproducible; experiments (`amisim chaos run`) move the clock themselves.
    #[arg(
        long,
        env = "AMISIM_AUTO_ADVANCE_MS",
        value_name = "MS",
        default_value_t = 0
    )]
    pub auto_advance: u64,

    #[command(flatten)]
    pub links: LinkArgs,

    #[command(flatten)]
    pub accounts: crate::accounts::AccountsArgs,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut regions: Vec<String> = Vec::new();
    for r in &args.regions {
        let r = r.trim().to_string();
        if r.is_empty() {
            continue;
        }
        anyhow::ensure!(
            !regions.contains(&r),
            "region {r} is listed twice in --regions"
        );
        regions.push(r);
    }
    anyhow::ensure!(
        !regions.is_empty(),
        "--regions is empty: name at least one region"
    );

    anyhow::ensure!(
        args.auto_advance == 0 || args.sim.clock == ClockKind::Virtual,
        "--auto-advance needs --clock virtual (a scaled clock moves by itself)"
    );
    let links = args.links.table()?;
    let accounts = args.accounts.load()?;
    // With --seed N, region k (in --regions order) gets N + k, so each can be replayed alone
    // with `amisim region --seed`; the link draws and the saga's retry jitter replay from N.
    // Without it, a random N (printed).
    let seed = args.sim.seed.unwrap_or_else(rand::random);
    let mut spec = ClusterSpec::new(regions.clone(), args.data.clone());
    spec.clock = match args.sim.clock {
        ClockKind::Scaled => ClusterClock::Scaled(args.sim.time_scale),
        // One clock for every in-process node, moved by Chaos.AdvanceClock.
        ClockKind::Virtual => ClusterClock::Virtual {
            start_ms: args.sim.virtual_start_ms,
        },
    };
    spec.seed = seed;
    spec.links = links.clone();
    spec.accounts = accounts.clone();
    spec.listen = args.listen.clone();
    spec.digest_every = args.sim.digest_every;
    spec.record_reads = args.sim.record_reads;
    spec.storage = args.sim.storage();
    // The cluster binds the gateway first: a busy port is the likeliest failure.
    let cluster = Cluster::start(spec).await.map_err(|e| match e {
        LabError::Io { what, source } if what.starts_with("cannot listen on") => {
            anyhow::anyhow!(
                "cannot listen on {} (is another amisim or program already using it?): {source}",
                args.listen
            )
        }
        other => anyhow::Error::new(other),
    })?;
    let gateway_addr = cluster
        .gateway_url()
        .trim_start_matches("http://")
        .to_string();
    for name in &regions {
        let addr = cluster
            .region_url(name)
            .unwrap_or_default()
            .trim_start_matches("http://")
            .to_string();
        let (node_seed, head) = cluster
            .region_node(name)
            .map(|n| (n.seed(), n.head_seq()))
            .unwrap_or_default();
        println!(
            "amisim dev: region {name} on {addr}, data {}, seed {node_seed}, head seq {head}",
            cluster.region_data_dir(name).display(),
        );
    }
    println!(
        "amisim dev: {}",
        crate::accounts::describe(accounts.as_deref())
    );
    println!(
        "amisim dev: regions {}, {}, link seed {}",
        regions.join(","),
        crate::region::describe_clock(
            &args.sim,
            cluster
                .virtual_clock()
                .as_ref()
                .map_or(0, amisim_chaos::Clock::now_ms)
        ),
        seed
    );
    print_links("amisim dev", &links);
    let auto_advance = (args.auto_advance > 0)
        .then(|| cluster.auto_advance(Duration::from_millis(args.auto_advance)))
        .flatten();
    if auto_advance.is_some() {
        println!(
            "amisim dev: auto-advance: the virtual clock jumps to the next timer after {} ms without writes",
            args.auto_advance
        );
    }
    // Signal handlers first: a caller may signal as soon as it reads the next line.
    let signals = os_signal();
    println!("amisim dev: gateway listening on {gateway_addr}");

    // Run until a signal, or until a node stops on its own (not through a fault).
    let failure: Option<anyhow::Error> = tokio::select! {
        sig = signals => {
            tracing::info!(signal = sig, "shutting down");
            None
        }
        why = cluster.failed() => Some(anyhow::anyhow!(why)),
    };
    if let Some(task) = auto_advance {
        task.abort();
    }

    // Coordinator first (no new calls, no saga steps), then the region servers, then the
    // nodes' writers.
    match tokio::time::timeout(Duration::from_secs(30), cluster.shutdown()).await {
        Err(_) => tracing::warn!("shutdown took longer than 30 s; exiting anyway"),
        Ok(Err(e)) => tracing::warn!(error = %e, "shutdown was not clean"),
        Ok(Ok(())) => {}
    }
    match failure {
        Some(e) => Err(e),
        None => {
            println!("amisim dev: stopped");
            Ok(())
        }
    }
}
