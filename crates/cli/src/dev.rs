//! `amisim dev`: the embedded default (DESIGN.md §1). One process, one region node per region,
//! each served on its own loopback listener, and the coordinator on `--listen` (gateway,
//! `Coordinator` service, followers, copy sagas) talking to them over ordinary gRPC channels:
//! exactly the multi-process path, only wired in one process.

use std::path::PathBuf;
use std::time::Duration;

use amisim_coordinator::{CoordinatorConfig, RegionRoutes};
use anyhow::Context;
use tokio::task::JoinSet;

use crate::coordinator::{print_links, LinkArgs};
use crate::region::{start_node_on, ClockKind, SimArgs, VIRTUAL_EPOCH_MS};
use crate::shutdown::{os_signal, Shutdown};

/// Run every region node and the coordinator in one process (the default way to use amisim).
///
/// Prints one line each: the gateway address, each region (its loopback address, data
/// directory and seed). Point a gRPC client at the gateway and pick the region with the
/// metadata key `x-amisim-region`. Ctrl-C or SIGTERM stops everything cleanly; running it again
/// on the same --data resumes from the logs.
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

    let links = args.links.table()?;
    let accounts = args.accounts.load()?;
    // Bind the gateway first: a busy port is the likeliest failure and should cost nothing.
    let gateway_listener = crate::bind(&args.listen).await?;
    let gateway_addr = gateway_listener.local_addr()?;

    let shutdown = Shutdown::new();
    let mut nodes = Vec::new();
    let mut region_servers = JoinSet::new();
    let mut routes = RegionRoutes::new();
    // `--clock virtual`: one clock for every in-process node, moved by Chaos.AdvanceClock.
    let shared_clock = (args.sim.clock == ClockKind::Virtual)
        .then(|| amisim_chaos::VirtualClock::new(VIRTUAL_EPOCH_MS));
    for (i, name) in regions.iter().enumerate() {
        // With --seed N, region k (in --regions order) gets N + k, so each can be replayed alone
        // with `amisim region --seed`.
        let seed = args.sim.seed.map(|n| n.wrapping_add(i as u64));
        let dir = args.data.join(name);
        let node = start_node_on(
            name,
            &dir,
            args.sim.time_scale,
            seed,
            &regions,
            accounts.clone(),
            shared_clock.clone(),
        )?;
        let listener = crate::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        routes
            .insert_url(name, &format!("http://{addr}"))
            .with_context(|| format!("cannot route region {name}"))?;
        println!(
            "amisim dev: region {name} on {addr}, data {}, seed {}, head seq {}",
            dir.display(),
            node.seed(),
            node.head_seq()
        );
        let serving = amisim_region::serve(node.clone(), listener, shutdown.signal());
        let region = name.clone();
        region_servers.spawn(async move { (region, serving.await) });
        nodes.push(node);
    }
    let gateway_shutdown = Shutdown::new();
    let mut config = CoordinatorConfig {
        links: links.clone(),
        accounts: accounts.clone(),
        ..CoordinatorConfig::default()
    };
    // The link draws (sampled latencies, loss) and the saga's retry jitter replay from --seed.
    config.sagas.seed = args.sim.seed.unwrap_or(0);
    let config_seed = config.sagas.seed;
    println!(
        "amisim dev: {}",
        crate::accounts::describe(accounts.as_deref())
    );
    let mut gateway = tokio::spawn(amisim_coordinator::run_coordinator(
        routes,
        config,
        gateway_listener,
        gateway_shutdown.signal(),
    ));
    println!(
        "amisim dev: regions {}, {}, link seed {}",
        regions.join(","),
        crate::region::describe_clock(
            &args.sim,
            shared_clock.as_ref().map_or(0, amisim_chaos::Clock::now_ms)
        ),
        config_seed
    );
    print_links("amisim dev", &links);
    println!("amisim dev: gateway listening on {gateway_addr}");

    // Run until a signal, or until a server stops on its own (a storage failure stops a node).
    let failure: Option<anyhow::Error> = tokio::select! {
        sig = os_signal() => {
            tracing::info!(signal = sig, "shutting down");
            None
        }
        res = &mut gateway => Some(match res {
            Ok(Ok(())) => anyhow::anyhow!("the coordinator stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the coordinator failed"),
            Err(e) => anyhow::Error::new(e).context("the coordinator task panicked"),
        }),
        Some(res) = region_servers.join_next() => Some(match res {
            Ok((region, Ok(()))) => anyhow::anyhow!("region {region} stopped unexpectedly"),
            Ok((region, Err(e))) => anyhow::Error::new(e).context(format!("region {region} failed")),
            Err(e) => anyhow::Error::new(e).context("a region server task panicked"),
        }),
    };

    // Coordinator first (no new calls, no saga steps), then the region servers, then the
    // nodes' writers.
    let stop = async {
        gateway_shutdown.trigger();
        if !gateway.is_finished() {
            let _ = (&mut gateway).await;
        }
        shutdown.trigger();
        while let Some(res) = region_servers.join_next().await {
            if let Ok((region, Err(e))) = res {
                tracing::warn!(region, error = %e, "region server ended with an error");
            }
        }
        for node in &nodes {
            node.shutdown().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .is_err()
    {
        tracing::warn!("shutdown took longer than 15 s; exiting anyway");
    }
    match failure {
        Some(e) => Err(e),
        None => {
            println!("amisim dev: stopped");
            Ok(())
        }
    }
}
