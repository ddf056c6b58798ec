//! `amisim`: the one binary (DESIGN.md §2).
//!
//! | subcommand | module | what |
//! |---|---|---|
//! | `dev` | [`dev`] | the embedded default: every region node and the gateway in one process |
//! | `region` | [`region`] | one region node as its own process |
//! | `coordinator` | [`coordinator`] | the coordinator (gateway, global projection, copy sagas) in front of region nodes given by URL |
//! | `copies` | [`copies`] | list the copies a coordinator knows (`Coordinator.ListCopies`) |
//! | `replay` | [`replay`] | verify a region's log and fold it offline: head, digest, resources |
//! | `audit` | [`audit`], [`trail`] | verify a region's log (hash chain and signed digests), export its public key; look up and export its CloudTrail-shaped records |
//! | `bench` | [`bench`] | load generator: operation mix, latency percentiles, ratio to bare gRPC |
//! | `chaos` | [`chaos`] | the chaos laboratory: link faults, node faults (kill, pause, restart, clock skew) and the clock of a running coordinator |
//!
//! Conventions every subcommand keeps, so scripts and tests can drive it:
//! - **stdout** carries only the few facts a caller needs, one per line (`... listening on
//!   127.0.0.1:50051`, seeds, data directories) or a report (`replay`); **stderr** carries the
//!   `tracing` log (`RUST_LOG`, default `info`; `--log-format json` for machines).
//! - **exit codes**: 0 done, 1 runtime error (the message names the cause: the address in use,
//!   the first corrupt seq, ...), 2 usage error (clap's).
//! - Servers stop gracefully on Ctrl-C or SIGTERM: in-flight calls finish, logs are closed.
//!
//! Every flag has an `AMISIM_*` environment fallback (shown in `--help`).

/// mimalloc instead of glibc's malloc: under load the node allocates on one thread and frees on
/// another (requests, events, records), where glibc's arenas spent ~25 % of all CPU
/// (`malloc_consolidate`, `unlink_chunk`; docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod accounts;
mod audit;
mod bench;
mod chaos;
mod chaos_run;
mod coordinator;
mod copies;
mod dev;
mod logging;
mod region;
mod replay;
mod shutdown;
mod trail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Simulator of the EC2 AMI / EBS snapshot control plane across regions.
///
/// Each region is a gRPC node with its own append-only event log; a gateway routes the public
/// `amisim.v1.Ec2` API to the region named by the request metadata `x-amisim-region`.
/// Start with `amisim dev`, then point any gRPC client at the printed address.
#[derive(Debug, Parser)]
#[command(name = "amisim", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text, env = "AMISIM_LOG_FORMAT")]
    log_format: logging::LogFormat,

    /// Worker threads of the async runtime (gRPC servers, clients, the coordinator). Default:
    /// the machine's cores minus one, at least one: a region node keeps two busy threads of its
    /// own (the writer and the commit thread), and on 2 cores a second runtime worker only
    /// competes with them (durable RegisterImage at 64 in flight +15 %, reads -6 %;
    /// docs/performance.md).
    #[arg(long, global = true, value_name = "N", env = "AMISIM_RUNTIME_THREADS",
          value_parser = clap::value_parser!(u16).range(1..))]
    runtime_threads: Option<u16>,

    /// CPUs of the async runtime's threads: `auto` (default) keeps them off the CPUs that
    /// serve the disks' interrupts when the others are enough for them (a VM whose disk
    /// interrupts all land on one CPU completes every fsync there: on 2 cores, durable
    /// RegisterImage ran ~30 % faster with the runtime on the other CPU; docs/performance.md),
    /// `all` pins nothing, or a list such as `0` or `0-2,4`. The node's own threads and child
    /// processes always keep every CPU. Linux only.
    #[arg(
        long,
        global = true,
        value_name = "auto|all|LIST",
        default_value = "auto",
        env = "AMISIM_RUNTIME_CPUS"
    )]
    runtime_cpus: amisim_region::affinity::RuntimeCpus,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Dev(dev::DevArgs),
    Region(region::RegionArgs),
    Coordinator(coordinator::CoordinatorArgs),
    Copies(copies::CopiesArgs),
    Replay(replay::ReplayArgs),
    Audit(audit::AuditArgs),
    Bench(bench::BenchArgs),
    Chaos(chaos::ChaosArgs),
}

/// The runtime's worker threads: `flag` if given, else the cores minus one (at least one).
fn runtime_threads(flag: Option<u16>) -> usize {
    match flag {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1),
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Replay(_) | Command::Audit(_) | Command::Copies(_)
    ) {
        die_quietly_on_a_closed_stdout();
    }
    let default_level = match cli.command {
        Command::Replay(_)
        | Command::Audit(_)
        | Command::Copies(_)
        | Command::Bench(_)
        | Command::Chaos(_) => "warn",
        _ => "info",
    };
    logging::init(cli.log_format, default_level);
    let log_format = cli.log_format;
    let workers = runtime_threads(cli.runtime_threads);
    match amisim_region::affinity::plan(&cli.runtime_cpus, workers) {
        amisim_region::affinity::Placement::Pinned {
            cpus,
            interrupt_cpus,
        } => tracing::info!(
            cpus = %amisim_region::affinity::format_cpu_list(&cpus),
            disk_interrupt_cpus = %amisim_region::affinity::format_cpu_list(&interrupt_cpus),
            workers, "async runtime pinned (--runtime-cpus)"
        ),
        amisim_region::affinity::Placement::Everywhere(why) => {
            tracing::debug!(%why, workers, "async runtime not pinned");
        }
    }
    // The main thread polls the runtime's top-level future: it runs where the runtime runs.
    amisim_region::affinity::pin_runtime_thread();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("amisim")
        .on_thread_start(amisim_region::affinity::pin_runtime_thread)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amisim: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => {
                audit::set_digest_every(args.sim.digest_every);
                audit::set_record_reads(args.sim.record_reads);
                amisim_region::audit::set_default_retention(args.sim.trail_retention);
                dev::run(args).await
            }
            Command::Region(args) => {
                audit::set_digest_every(args.sim.digest_every);
                audit::set_record_reads(args.sim.record_reads);
                amisim_region::audit::set_default_retention(args.sim.trail_retention);
                region::run(args).await
            }
            Command::Coordinator(args) => coordinator::run(args).await,
            Command::Copies(args) => copies::run(args).await,
            Command::Replay(args) => replay::run(args),
            Command::Audit(args) => audit::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Chaos(args) => chaos::run(args).await,
        }
    });
    // Do not wait for detached blocking work (sled's flusher, ...) longer than needed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = error_chain(&e);
            if log_format == logging::LogFormat::Json {
                tracing::error!(error = %message, "exiting");
            }
            eprintln!("amisim: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// `context: cause: cause`, skipping a cause whose text its parent already shows (many error
/// types print their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Binds a TCP listener, with an error that names the address (and the usual cause).
pub(crate) async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another amisim or program already using it?)")
    })
}

/// A report piped into `head` (or any reader that stops early) ends the process quietly, as a
/// Unix tool does, instead of `println!` panicking on the broken pipe. Only for the commands
/// that print reports and serve nothing: Rust ignores SIGPIPE so that a server's write to a
/// closed connection is an error, not its death, and `dev`, `region`, `coordinator`, `bench`
/// and `chaos` keep that.
fn die_quietly_on_a_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: signal(2) with the default disposition; no handler of ours is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Turns transparent huge pages off for this process. The allocator asks for them, and each
/// first touch of a huge page clears 2 MiB inside a page fault: on the durable RegisterImage
/// load that was ~5 % of the CPU, in stalls of the commit thread that went straight into the
/// tail latency (p99 11–12 ms with them, 7–8 ms without; docs/performance.md). Best effort: a
/// kernel without the call leaves things as they were.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_threads_take_the_flag_else_leave_a_core_to_the_node() {
        assert_eq!(runtime_threads(Some(3)), 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(runtime_threads(None), cores.saturating_sub(1).max(1));
        let cli = Cli::try_parse_from(["amisim", "--runtime-threads", "2", "copies"]).unwrap();
        assert_eq!(cli.runtime_threads, Some(2));
        assert!(Cli::try_parse_from(["amisim", "--runtime-threads", "0", "copies"]).is_err());
    }
}
