//! `amisim coordinator`: the coordinator (gateway, global projection, copy sagas) in front of
//! region nodes running elsewhere; and the link flags `dev` shares.

use std::path::PathBuf;

use amisim_chaos::{LinkSpec, LinkTable};
use amisim_coordinator::{CoordinatorConfig, RegionRoutes};
use anyhow::Context;

use crate::shutdown::{os_signal, Shutdown};

/// Run the coordinator in front of region nodes given by URL.
///
/// One listener serves the gateway (`amisim.v1.Ec2`: each --region NAME=URL routes the calls
/// whose `x-amisim-region` metadata is NAME to the region node at URL) and the
/// `amisim.v1.Coordinator` service (global reads, digests, ListCopies). In the background it
/// follows every region's log and drives the cross-region CopyImage / CopySnapshot sagas. Region
/// nodes may start before or after the coordinator; calls to an unreachable one fail with
/// UNAVAILABLE, and copies wait for it. Restart it at any time: it replays the logs and resumes
/// every unfinished copy.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Address of the gateway; port 0 picks a free port (printed).
    #[arg(
        long,
        env = "AMISIM_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: String,

    /// A region node: NAME=URL, e.g. us-east-1=http://127.0.0.1:50052. Repeat per region
    /// (environment: comma-separated).
    #[arg(
        long = "region",
        env = "AMISIM_ROUTES",
        value_name = "NAME=URL",
        value_delimiter = ',',
        required = true
    )]
    pub regions: Vec<String>,

    #[command(flatten)]
    pub links: LinkArgs,

    /// Seed of the link draws (loss, latency jitter) and of the copy saga's retry jitter, so a
    /// run's chaos replays (printed at start).
    #[arg(long, env = "AMISIM_SEED", value_name = "N", default_value_t = 0)]
    pub seed: u64,

    #[command(flatten)]
    pub accounts: crate::accounts::AccountsArgs,
}

/// The links between regions (how long a copy's transfer takes), shared by `coordinator` and
/// `dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    /// The link from one region to another: FROM:TO=LATENCY_MS,BANDWIDTH_MIB_S (e.g.
    /// us-east-1:eu-west-1=30000,150: 30 s + bytes ÷ 150 MiB/s). Directed; repeat per pair
    /// (environment: ';'-separated). Pairs not given: 60000 ms and 75 MiB/s.
    #[arg(
        long = "link",
        env = "AMISIM_LINKS",
        value_name = "FROM:TO=MS,MIB_S",
        value_delimiter = ';'
    )]
    pub links: Vec<LinkSpec>,

    /// A TOML file with the link table: `[default]` and `[[links]]` entries, each with
    /// `latency_ms` and `bandwidth_bytes_per_s` (and `from`, `to`). --link flags win over it.
    #[arg(long, env = "AMISIM_LINKS_CONFIG", value_name = "FILE")]
    pub links_config: Option<PathBuf>,
}

impl LinkArgs {
    /// The link table: the config file (if any), then the --link flags over it.
    pub fn table(&self) -> anyhow::Result<LinkTable> {
        let base = match &self.links_config {
            None => LinkTable::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --links-config {}", path.display()))?;
                toml::from_str::<LinkTable>(&text)
                    .with_context(|| format!("invalid --links-config {}", path.display()))?
            }
        };
        let flags = LinkTable::from_specs(self.links.iter().cloned()).context("bad --link")?;
        let table = base.overridden_by(flags.links);
        table.validate().context("invalid link table")?;
        Ok(table)
    }
}

/// One stdout line per configured link, so a run's timing is on record.
pub fn print_links(prefix: &str, table: &LinkTable) {
    println!("{prefix}: links default {}", table.default);
    for l in &table.links {
        println!("{prefix}: link {l}");
    }
}

pub async fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let routes = RegionRoutes::from_args(&args.regions).context("bad --region")?;
    let links = args.links.table()?;
    let accounts = args.accounts.load()?;
    let listener = crate::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "amisim coordinator: regions {}",
        routes.regions().collect::<Vec<_>>().join(",")
    );
    print_links("amisim coordinator", &links);
    println!("amisim coordinator: seed {}", args.seed);
    // Signal handlers first: a caller may signal as soon as it reads the next line.
    let signals = os_signal();
    println!("amisim coordinator: gateway listening on {addr}");
    let shutdown = Shutdown::new();
    println!(
        "amisim coordinator: {}",
        crate::accounts::describe(accounts.as_deref())
    );
    let mut config = CoordinatorConfig {
        links,
        accounts,
        ..CoordinatorConfig::default()
    };
    config.sagas.seed = args.seed;
    let mut server = tokio::spawn(amisim_coordinator::run_coordinator(
        routes,
        config,
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
    outcome
        .context("the coordinator task panicked")?
        .context("the coordinator failed")?;
    println!("amisim coordinator: stopped");
    Ok(())
}
