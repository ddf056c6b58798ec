//! `amisim chaos`: the chaos laboratory from the command line. The control subcommands (`link`,
//! `node`, `clock`) are a client of a running coordinator's `amisim.v1.Chaos` service
//! (chaos.proto); each prints what the service answered, as a table or JSON.

use std::time::Duration;

use amisim_chaos::LinkSpec;
use amisim_proto::chaos_client::ChaosClient;
use amisim_proto::{
    AdvanceClockRequest, AdvanceToNextTimerRequest, ClearLinkRequest, ClockResponse,
    GetClockRequest, KillNodeRequest, ListLinksRequest, ListLinksResponse, ListNodesRequest,
    NodeInfo, PauseNodeRequest, ResetLinksRequest, RestartNodeRequest, ResumeNodeRequest,
    SetClockSkewRequest, SetLinkRequest,
};
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

/// Inject and inspect faults: links between regions, node crashes and pauses, clock skew, and
/// the simulated clock.
///
/// The control subcommands talk to a running coordinator's Chaos service (`amisim dev`, or a
/// coordinator of `amisim chaos run`): `amisim chaos link ...`, `amisim chaos node ...`,
/// `amisim chaos clock ...`. Every change is recorded in the audit trail of the home region
/// (us-east-1 if it runs).
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub command: ChaosCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    Link(LinkArgs),
    Node(NodeArgs),
    Clock(ClockArgs),
    Run(crate::chaos_run::RunArgs),
}

/// Where the Chaos service is, and how to authenticate (shared by every control subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The coordinator's address (the gateway's).
    #[arg(
        long,
        global = true,
        env = "AMISIM_COORDINATOR",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,

    /// The operator token, for a coordinator started with --accounts (sent as
    /// `authorization: Bearer <TOKEN>`; the Chaos service takes only the `[operator]` token).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long,
        global = true,
        env = "AMISIM_OPERATOR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Output: a table, or the service's answer as JSON.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Link faults between regions and between the coordinator and each region.
///
/// Between regions a link times copy transfers (simulated ms); between `coordinator` and a
/// region it acts on the coordinator's gRPC calls (wall ms). Changes act at once.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: LinkCommand,
}

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Set one directed link: FROM:TO=LATENCY_MS[,BANDWIDTH_MIB_S][,OPTION...].
    ///
    /// Options: uniform=MIN-MAX, normal=MEAN/STDDEV, pareto=SCALE/SHAPE (latency
    /// distributions, ms), jitter=MS, loss=P (0..1), partition, timeout=MS, slow_close=MS.
    /// Examples: `us-east-1:eu-west-1=30000,150`, `us-east-1:eu-west-1=0,1,partition`,
    /// `coordinator:us-east-1=5,1,loss=0.1,timeout=200`. For a two-way partition set both
    /// directions.
    Set {
        #[arg(value_name = "FROM:TO=SPEC")]
        link: LinkSpec,
    },
    /// The default link and every pair with its own, and the seed of the draws.
    List,
    /// Remove one pair's own link (it falls back to the default).
    Clear {
        #[arg(value_name = "FROM")]
        from: String,
        #[arg(value_name = "TO")]
        to: String,
    },
    /// Back to the links the coordinator started with.
    Reset,
}

/// Node faults: kill, pause, resume, restart a region node or the coordinator; skew a region's
/// clock.
///
/// Needs a coordinator that runs its nodes (`amisim dev`, `amisim chaos run`); a stand-alone
/// `amisim coordinator` refuses. A NODE is a region name (us-east-1) or `coordinator`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node with its state (running, paused, down), address, clock skew and restarts.
    List,
    /// Crash a node without a clean shutdown: its connections drop and calls in flight get no
    /// answer. It stays down until `restart`, or for --down-for ms.
    ///
    /// The coordinator can only be killed with --down-for (nothing else could restart it); it
    /// answers first and goes down right after.
    Kill {
        #[arg(value_name = "NODE")]
        node: String,
        /// Restart it by itself after this many milliseconds: for a region, simulated ones when
        /// the cluster's clock is virtual (in process; `dev --clock virtual`); wall-clock ones
        /// otherwise, and always for the coordinator (the clock is moved through it).
        #[arg(long, value_name = "MS")]
        down_for: Option<u64>,
    },
    /// Freeze a node: calls and open streams are held (not refused) and its timers stop, until
    /// `resume`.
    Pause {
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Let a paused node go on; its clock jumps to where it would be.
    Resume {
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Bring a node back on the same data and port (a running node is killed first).
    Restart {
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Set a region's clock skew in simulated ms: its clock reads the shared clock + MS.
    ///
    /// The node's clock never goes backwards: a negative skew holds it still until the shared
    /// clock catches up. Replaces the earlier skew; 0 removes it.
    Skew {
        #[arg(value_name = "REGION")]
        region: String,
        #[arg(value_name = "MS", allow_hyphen_values = true)]
        skew_ms: i64,
    },
}

/// The simulated clocks of the region nodes.
#[derive(Debug, clap::Args)]
pub struct ClockArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: ClockCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// Every region's simulated now and next due timer.
    Show,
    /// Move every virtual clock forward by MS simulated milliseconds (nodes started with
    /// --clock virtual only).
    Advance {
        #[arg(value_name = "MS")]
        ms: u64,
    },
    /// Move every virtual clock to the earliest due timer of any region.
    NextTimer,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    match args.command {
        ChaosCommand::Link(a) => link(a).await,
        ChaosCommand::Node(a) => node(a).await,
        ChaosCommand::Clock(a) => clock(a).await,
        ChaosCommand::Run(a) => crate::chaos_run::run(a).await,
    }
}

/// A connected Chaos client.
async fn client(conn: &Connection) -> anyhow::Result<ChaosClient<Channel>> {
    let url = if conn.endpoint.contains("://") {
        conn.endpoint.clone()
    } else {
        format!("http://{}", conn.endpoint)
    };
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid --endpoint URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    Ok(ChaosClient::new(channel))
}

/// `message` with the operator token, if any.
fn request<T>(conn: &Connection, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = &conn.token {
        let mut value = tonic::metadata::AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()))
            .context("--token must be non-empty visible ASCII (no spaces)")?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A refusal, named by the call.
fn failed(call: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call} failed ({:?}): {}", s.code(), s.message())
}

async fn link(args: LinkArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let mut c = client(conn).await?;
    match args.command {
        LinkCommand::Set { link } => {
            let pb = amisim_coordinator::chaos::to_pb(&link.from, &link.to, &link.model);
            let r = c
                .set_link(request(conn, SetLinkRequest { link: Some(pb) })?)
                .await
                .map_err(|s| failed("SetLink", s))?
                .into_inner();
            match conn.format {
                Format::Json => println!("{}", link_json(r.link.as_ref())),
                Format::Table => println!("link set: {link}"),
            }
        }
        LinkCommand::List => {
            let r = c
                .list_links(request(conn, ListLinksRequest {})?)
                .await
                .map_err(|s| failed("ListLinks", s))?
                .into_inner();
            print_links(conn.format, &r);
        }
        LinkCommand::Clear { from, to } => {
            let r = c
                .clear_link(request(
                    conn,
                    ClearLinkRequest {
                        from: from.clone(),
                        to: to.clone(),
                    },
                )?)
                .await
                .map_err(|s| failed("ClearLink", s))?
                .into_inner();
            match conn.format {
                Format::Json => println!("{}", json!({"cleared": r.cleared})),
                Format::Table if r.cleared => {
                    println!("link {from}:{to} cleared (back to the default)")
                }
                Format::Table => println!("link {from}:{to} had no link of its own"),
            }
        }
        LinkCommand::Reset => {
            let r = c
                .reset_links(request(conn, ResetLinksRequest {})?)
                .await
                .map_err(|s| failed("ResetLinks", s))?
                .into_inner();
            print_links(conn.format, &r);
        }
    }
    Ok(())
}

fn link_json(l: Option<&amisim_proto::Link>) -> serde_json::Value {
    let Some(l) = l else {
        return serde_json::Value::Null;
    };
    json!({
        "from": l.from,
        "to": l.to,
        "description": describe_link(l),
        "latency_ms": l.latency_ms,
        "bandwidth_bytes_per_s": l.bandwidth_bytes_per_s,
        "jitter_ms": l.jitter_ms,
        "loss": l.loss,
        "partitioned": l.partitioned,
        "timeout_ms": l.timeout_ms,
        "slow_close_ms": l.slow_close_ms,
    })
}

/// The link as the model prints it (or its fields, if the wire form does not check out).
fn describe_link(l: &amisim_proto::Link) -> String {
    let mut wire = l.clone();
    // The default link has no pair; give it one so the checked conversion applies.
    if wire.from.is_empty() {
        wire.from = "a-1".into();
        wire.to = "b-1".into();
    }
    match amisim_coordinator::chaos::from_pb(&wire) {
        Ok(spec) => spec.model.to_string(),
        Err(_) => format!(
            "{} ms + bytes / {} B/s",
            l.latency_ms, l.bandwidth_bytes_per_s
        ),
    }
}

fn print_links(format: Format, r: &ListLinksResponse) {
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "default": link_json(r.default.as_ref()),
                "links": r.links.iter().map(|l| link_json(Some(l))).collect::<Vec<_>>(),
                "seed": r.seed,
            })
        ),
        Format::Table => {
            if let Some(d) = &r.default {
                println!("default: {}", describe_link(d));
            }
            for l in &r.links {
                println!("{}:{}: {}", l.from, l.to, describe_link(l));
            }
            println!("seed: {}", r.seed);
        }
    }
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let mut c = client(conn).await?;
    let (what, answer) = match args.command {
        NodeCommand::List => {
            let r = c
                .list_nodes(request(conn, ListNodesRequest {})?)
                .await
                .map_err(|s| failed("ListNodes", s))?
                .into_inner();
            print_nodes(conn.format, &r.nodes);
            return Ok(());
        }
        NodeCommand::Kill { node, down_for } => (
            "killed",
            c.kill_node(request(
                conn,
                KillNodeRequest {
                    node,
                    down_for_ms: down_for.unwrap_or(0),
                },
            )?)
            .await
            .map_err(|s| failed("KillNode", s))?,
        ),
        NodeCommand::Pause { node } => (
            "paused",
            c.pause_node(request(conn, PauseNodeRequest { node })?)
                .await
                .map_err(|s| failed("PauseNode", s))?,
        ),
        NodeCommand::Resume { node } => (
            "resumed",
            c.resume_node(request(conn, ResumeNodeRequest { node })?)
                .await
                .map_err(|s| failed("ResumeNode", s))?,
        ),
        NodeCommand::Restart { node } => (
            "restarted",
            c.restart_node(request(conn, RestartNodeRequest { node })?)
                .await
                .map_err(|s| failed("RestartNode", s))?,
        ),
        NodeCommand::Skew { region, skew_ms } => (
            "skewed",
            c.set_clock_skew(request(conn, SetClockSkewRequest { region, skew_ms })?)
                .await
                .map_err(|s| failed("SetClockSkew", s))?,
        ),
    };
    let node = answer.into_inner().node.unwrap_or_default();
    match conn.format {
        Format::Json => println!("{}", node_json(&node)),
        Format::Table => println!(
            "{} {what}: {} ({}, clock skew {} ms, {} restarts)",
            node.name, node.state, node.url, node.clock_skew_ms, node.restarts
        ),
    }
    Ok(())
}

fn node_json(n: &NodeInfo) -> serde_json::Value {
    json!({
        "name": n.name,
        "kind": n.kind,
        "state": n.state,
        "url": n.url,
        "clock_skew_ms": n.clock_skew_ms,
        "restarts": n.restarts,
        "pid": (n.pid != 0).then_some(n.pid),
    })
}

fn print_nodes(format: Format, nodes: &[NodeInfo]) {
    match format {
        Format::Json => println!(
            "{}",
            json!({"nodes": nodes.iter().map(node_json).collect::<Vec<_>>()})
        ),
        Format::Table => {
            println!(
                "{:<16} {:<12} {:<8} {:<24} {:>12} {:>8} {:>8}",
                "NODE", "KIND", "STATE", "URL", "SKEW_MS", "RESTARTS", "PID"
            );
            for n in nodes {
                let pid = if n.pid == 0 {
                    "-".to_string()
                } else {
                    n.pid.to_string()
                };
                println!(
                    "{:<16} {:<12} {:<8} {:<24} {:>12} {:>8} {:>8}",
                    n.name, n.kind, n.state, n.url, n.clock_skew_ms, n.restarts, pid
                );
            }
        }
    }
}

async fn clock(args: ClockArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let mut c = client(conn).await?;
    let r = match args.command {
        ClockCommand::Show => c
            .get_clock(request(conn, GetClockRequest {})?)
            .await
            .map_err(|s| failed("GetClock", s))?,
        ClockCommand::Advance { ms } => c
            .advance_clock(request(conn, AdvanceClockRequest { ms })?)
            .await
            .map_err(|s| failed("AdvanceClock", s))?,
        ClockCommand::NextTimer => c
            .advance_to_next_timer(request(conn, AdvanceToNextTimerRequest {})?)
            .await
            .map_err(|s| failed("AdvanceToNextTimer", s))?,
    }
    .into_inner();
    print_clocks(conn.format, &r);
    Ok(())
}

fn print_clocks(format: Format, r: &ClockResponse) {
    match format {
        Format::Json => println!(
            "{}",
            json!({"regions": r.regions.iter().map(|c| json!({
                "region": c.region,
                "now_ms": c.now_ms,
                "next_due_ms": (c.next_due_ms > 0).then_some(c.next_due_ms),
                "virtual_clock": c.virtual_clock,
            })).collect::<Vec<_>>()})
        ),
        Format::Table => {
            println!(
                "{:<16} {:<8} {:>16} {:>16}",
                "REGION", "CLOCK", "NOW_MS", "NEXT_DUE_MS"
            );
            for c in &r.regions {
                let due = if c.next_due_ms == 0 {
                    "-".to_string()
                } else {
                    c.next_due_ms.to_string()
                };
                println!(
                    "{:<16} {:<8} {:>16} {:>16}",
                    c.region,
                    if c.virtual_clock { "virtual" } else { "scaled" },
                    c.now_ms,
                    due
                );
            }
        }
    }
}
