//! `amisim replay`: verify a region's log and fold it into a fresh state, offline.
//!
//! The digest it prints is the same canonical digest a live node reports
//! (`Region.GetStateDigest`), so "the node's state equals a replay of its log" can be checked
//! from outside the node, by a process that shares no code path with the node's writer.

use std::io::IsTerminal;
use std::path::PathBuf;

use amisim_core::State;
use amisim_log::{DiskLog, EventLog, SledOptions};
use anyhow::Context;
use serde_json::json;

/// Events read from the log per chunk.
const CHUNK: u64 = 4096;

/// Verify a region's event log and replay it: head seq, state digest and resources.
///
/// The node must be stopped (the log's directory is locked while a node runs). The hash chain is
/// verified from seq 1 first; a broken log fails with the first bad seq. Nothing is written.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The region's log directory (for `amisim dev`: DATA/<region>).
    #[arg(long, env = "AMISIM_DATA", value_name = "DIR")]
    pub data: PathBuf,

    /// Replay only up to this point: a seq (events 1..=SEQ) or an ISO 8601 simulated time
    /// (`2024-05-01T12:00:00Z`: every event at or before it). Default: up to the head.
    #[arg(long, value_name = "SEQ|TIME")]
    pub until: Option<amisim_region::audit::Point>,

    /// Output: a human-readable table, or one JSON object
    /// (`{"region","seq","digest","head_seq","counts",...}`).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let dir = &args.data;
    anyhow::ensure!(
        dir.is_dir(),
        "no event log at {}: not a directory",
        dir.display()
    );
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    let log = DiskLog::open_existing(dir, opts).with_context(|| {
        format!(
            "cannot open the event log at {} (is a node still running on it?)",
            dir.display()
        )
    })?;
    let head = log
        .verify()
        .with_context(|| format!("the event log at {} does not verify", dir.display()))?;
    let until = match args.until {
        Some(amisim_region::audit::Point::Seq(seq)) if seq > head.seq => {
            anyhow::bail!("--until {seq} is beyond the log's head (seq {})", head.seq)
        }
        Some(point) => amisim_region::audit::as_of::resolve(&log, point)
            .context("cannot find the --until point in the log")?,
        None => head.seq,
    };

    let progress = Progress::new(until);
    let mut state = State::new();
    let mut region = String::new();
    let mut next = 1;
    while next <= until {
        let to = (next + CHUNK - 1).min(until);
        let events = log
            .read_range(next, to)
            .with_context(|| format!("cannot read events {next}..={to}"))?;
        anyhow::ensure!(
            events.len() as u64 == to - next + 1,
            "the log returned {} events for {next}..={to}",
            events.len()
        );
        for event in &events {
            if region.is_empty() {
                region = event.region.clone();
            }
            state.apply(event);
        }
        next = to + 1;
        progress.update(to);
    }
    progress.finish();
    if region.is_empty() {
        // An empty log names no region; the directory usually does (DATA/<region>).
        region = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    let report = Report {
        region,
        seq: until,
        head_seq: head.seq,
        head_hash: hex::encode(head.hash),
        digest: state.digest(),
        state,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report.json())?),
        Format::Table => report.print_table(),
    }
    Ok(())
}

struct Report {
    region: String,
    seq: u64,
    head_seq: u64,
    head_hash: String,
    digest: String,
    state: State,
}

impl Report {
    fn json(&self) -> serde_json::Value {
        let s = &self.state;
        json!({
            "region": self.region,
            "seq": self.seq,
            "digest": self.digest,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "chain_verified": true,
            "sim_time_ms": s.last_sim_time_ms,
            "counts": {
                "images": s.images.len(),
                "snapshots": s.snapshots.len(),
                "volumes": s.volumes.len(),
                "instances": s.instances.len(),
                "pending_timers": s.timers.len(),
            },
            "images": s.images.values().map(|i| json!({
                "image_id": i.id(),
                "state": i.state.as_str(),
                "owner_id": i.owner(),
                "name": i.registered.name,
                "root_device_type": i.registered.root_device_type,
                "snapshot_ids": i.snapshot_ids().collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "snapshots": s.snapshots.values().map(|sn| json!({
                "snapshot_id": sn.snapshot_id,
                "state": sn.state.as_str(),
                "owner_id": sn.owner_id,
                "volume_id": sn.volume_id,
                "volume_size": sn.volume_size,
            })).collect::<Vec<_>>(),
            "volumes": s.volumes.values().map(|v| json!({
                "volume_id": v.volume_id,
                "state": v.state.as_str(),
                "owner_id": v.owner_id,
                "size": v.size,
                "volume_type": v.volume_type,
                "availability_zone": v.availability_zone,
            })).collect::<Vec<_>>(),
            "instances": s.instances.values().map(|i| json!({
                "instance_id": i.instance_id,
                "state": i.state.as_str(),
                "owner_id": i.owner_id,
                "image_id": i.image_id,
            })).collect::<Vec<_>>(),
        })
    }

    fn print_table(&self) {
        let s = &self.state;
        let until = if self.seq == self.head_seq {
            String::from("(the head)")
        } else {
            format!("(head is {})", self.head_seq)
        };
        println!("region    {}", self.region);
        println!("seq       {} {until}, hash chain verified", self.seq);
        println!("digest    {}", self.digest);
        println!(
            "resources images {}, snapshots {}, volumes {}, instances {}, pending timers {}",
            s.images.len(),
            s.snapshots.len(),
            s.volumes.len(),
            s.instances.len(),
            s.timers.len()
        );
        if !s.images.is_empty() {
            println!();
            println!(
                "{:<22} {:<12} {:<13} {:<9} NAME",
                "IMAGE", "STATE", "OWNER", "ROOT"
            );
            for i in s.images.values() {
                println!(
                    "{:<22} {:<12} {:<13} {:<9} {}",
                    i.id(),
                    i.state.as_str(),
                    i.owner(),
                    i.registered.root_device_type,
                    i.registered.name
                );
            }
        }
        if !s.snapshots.is_empty() {
            println!();
            println!(
                "{:<23} {:<10} {:<13} {:>8} VOLUME",
                "SNAPSHOT", "STATE", "OWNER", "SIZE GiB"
            );
            for sn in s.snapshots.values() {
                println!(
                    "{:<23} {:<10} {:<13} {:>8} {}",
                    sn.snapshot_id,
                    sn.state.as_str(),
                    sn.owner_id,
                    sn.volume_size,
                    sn.volume_id
                );
            }
        }
    }
}

/// A progress bar on stderr for long replays (indicatif; drawn only when stderr is a terminal
/// and the replay is long enough to notice).
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// Below this many events a replay is too quick for a bar.
    const MIN_EVENTS: u64 = 20_000;

    fn new(total: u64) -> Self {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let bar = if total >= Self::MIN_EVENTS && std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(5));
            if let Ok(style) = ProgressStyle::with_template(
                "replaying {bar:40} {pos}/{len} events ({percent}%, {per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar }
    }

    fn update(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
