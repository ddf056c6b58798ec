//! `amisim bench --copy-completion N`: how much a cross-region copy adds to its simulated
//! duration (issue 7: "no more than its simulated transfer time plus 5 ms").
//!
//! Starts two regions and a coordinator in this process (the same wiring as `amisim dev`, on a
//! scaled clock at `--time-scale` and one link model between the regions), registers one image
//! in the source region, then copies it N times into the destination, one copy at a time. Each
//! copy is timed from the moment CopyImage answers (through the gateway) until the destination
//! node publishes the image as `available`, and compared with the simulated duration the copy
//! itself asks for, as the destination recorded it (`available_at − started_at`: the link's
//! latency + bytes ÷ bandwidth, plus EC2's delay before a copied image turns available), in
//! wall time (÷ time scale). The difference is what the machinery adds: the coordinator
//! noticing the request, reading the source, starting the copy, the timers firing, the reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amisim_chaos::LinkTable;
use amisim_core::state::{ImageState, SnapshotState, VolumeState};
use amisim_core::{Command, Reply, State};
use amisim_lab::{Cluster, ClusterClock, ClusterSpec};
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::*;
use amisim_region::RegionNode;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;

use super::BenchArgs;

const SOURCE: &str = "us-east-1";
const DEST: &str = "eu-west-1";
const ACCOUNT: &str = "100000000000";

/// Polls `node`'s published state until `done` holds (every 100 µs; a blocking thread, so the
/// poll's own granularity stays far below the 5 ms budget), or fails after `limit`.
async fn wait_for(
    node: &Arc<RegionNode>,
    what: &str,
    limit: Duration,
    done: impl Fn(&State) -> bool + Send + 'static,
) -> anyhow::Result<Instant> {
    let node = node.clone();
    let waited = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            if done(&node.state()) {
                return Some(Instant::now());
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    })
    .await
    .context("the poller panicked")?;
    waited.with_context(|| format!("{what} not reached within {limit:?}"))
}

async fn exec(node: &RegionNode, cmd: Command) -> anyhow::Result<Reply> {
    node.execute(ACCOUNT, "bench", cmd)
        .await
        .map(|(r, _)| r)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))
}

pub async fn run(args: &BenchArgs, copies: u32, seed: u64) -> anyhow::Result<()> {
    let (latency_ms, mib_s) = parse_link(&args.copy_link)?;
    let tmp = tempfile::Builder::new()
        .prefix("amisim-bench-copy-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut spec = ClusterSpec::new([SOURCE, DEST], tmp.path());
    spec.clock = ClusterClock::Scaled(args.time_scale);
    spec.seed = seed;
    spec.links = LinkTable {
        default: amisim_chaos::LinkModel::new(latency_ms, mib_s),
        links: Vec::new(),
    };
    println!(
        "amisim bench: copy completion, {copies} copies {SOURCE} → {DEST}, link {latency_ms} ms + \
         {mib_s} MiB/s (simulated), time scale {}, seed {seed}",
        args.time_scale
    );
    let cluster = Cluster::start(spec)
        .await
        .context("cannot start the cluster")?;
    let outcome = measure(&cluster, args, copies).await;
    cluster.shutdown().await.context("cluster shutdown")?;
    let report = outcome?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("amisim bench: JSON report in {}", path.display());
    }
    Ok(())
}

async fn measure(
    cluster: &Cluster,
    args: &BenchArgs,
    copies: u32,
) -> anyhow::Result<serde_json::Value> {
    let src = cluster
        .region_node(SOURCE)
        .context("no source region node")?;
    let dst = cluster
        .region_node(DEST)
        .context("no destination region node")?;
    let limit = Duration::from_secs(120);

    // The source image: a volume, its snapshot, an image registered from it.
    let vol = match exec(
        &src,
        Command::CreateVolume(CreateVolumeRequest {
            availability_zone: format!("{SOURCE}a"),
            size: Some(1),
            volume_type: "gp3".into(),
            ..Default::default()
        }),
    )
    .await?
    {
        Reply::CreateVolume(v) => v.volume_id,
        other => bail!("unexpected reply {other:?}"),
    };
    let id = vol.clone();
    wait_for(&src, "the volume available", limit, move |s| {
        s.volumes
            .get(&id)
            .is_some_and(|v| v.state == VolumeState::Available)
    })
    .await?;
    let snap = match exec(
        &src,
        Command::CreateSnapshot(CreateSnapshotRequest {
            volume_id: vol,
            ..Default::default()
        }),
    )
    .await?
    {
        Reply::CreateSnapshot(s) => s.snapshot_id,
        other => bail!("unexpected reply {other:?}"),
    };
    let id = snap.clone();
    wait_for(&src, "the snapshot completed", limit, move |s| {
        s.snapshots
            .get(&id)
            .is_some_and(|x| x.state == SnapshotState::Completed)
    })
    .await?;
    let image = match exec(
        &src,
        Command::RegisterImage(super::register_request("copy-source".into(), snap)),
    )
    .await?
    {
        Reply::RegisterImage(r) => r.image_id,
        other => bail!("unexpected reply {other:?}"),
    };
    let id = image.clone();
    wait_for(&src, "the source image available", limit, move |s| {
        s.images
            .get(id.as_str())
            .is_some_and(|i| i.state == ImageState::Available)
    })
    .await?;

    let channel = tonic::transport::Endpoint::from_shared(cluster.gateway_url())?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("cannot connect to the gateway")?;
    let mut ec2 = Ec2Client::new(channel);
    let mut overhead = Histogram::<u64>::new(3).context("histogram")?;
    let mut rows = Vec::new();
    for n in 0..copies {
        let mut req = tonic::Request::new(CopyImageRequest {
            source_image_id: image.clone(),
            source_region: SOURCE.into(),
            name: format!("copy-{n}"),
            ..Default::default()
        });
        req.metadata_mut().insert("x-amisim-region", DEST.parse()?);
        req.metadata_mut()
            .insert("x-amisim-account", ACCOUNT.parse()?);
        let new_id = ec2
            .copy_image(req)
            .await
            .map_err(|s| anyhow::anyhow!("CopyImage: {}", s.message()))?
            .into_inner()
            .image_id;
        let accepted = Instant::now();
        let id = new_id.clone();
        let done = wait_for(&dst, "the copy available", limit, move |s| {
            s.images
                .get(id.as_str())
                .is_some_and(|i| i.state != ImageState::Pending)
        })
        .await?;
        let observed = done.duration_since(accepted);
        let state = dst.state();
        let img = state
            .images
            .get(new_id.as_str())
            .context("the copy vanished")?;
        if img.state != ImageState::Available {
            bail!("copy {new_id} ended {:?}", img.state);
        }
        let task = state
            .copies
            .values()
            .find(|t| t.dest_id == new_id)
            .context("no copy task for the copy")?;
        let sim_ms = img
            .registered
            .available_at_ms
            .saturating_sub(task.requested_at_ms);
        let transfer_sim_ms = img
            .registered
            .available_at_ms
            .saturating_sub(task.started_at_ms.unwrap_or(task.requested_at_ms));
        // What the simulation itself asks for: the transfer over the link (latency + bytes ÷
        // bandwidth) and EC2's delay before a copy is available, from the moment the saga
        // started the copy. Everything before that start (the coordinator noticing the
        // request, reading the source) is overhead, though the clock ran during it.
        let expected = Duration::from_secs_f64(transfer_sim_ms as f64 / 1000.0 / args.time_scale);
        let added = observed.saturating_sub(expected);
        overhead
            .record(added.as_micros().max(1) as u64)
            .context("histogram")?;
        rows.push(json!({
            "image_id": new_id,
            "observed_ms": observed.as_secs_f64() * 1000.0,
            "simulated_ms": sim_ms,
            "simulated_from_start_ms": transfer_sim_ms,
            "expected_wall_ms": expected.as_secs_f64() * 1000.0,
            "added_ms": added.as_secs_f64() * 1000.0,
        }));
        println!(
            "copy {:>3}: observed {:>8.2} ms; simulated transfer + availability {transfer_sim_ms} ms \
             = {:>8.2} ms wall (requested → available {sim_ms} ms); added {:>6.2} ms",
            n + 1,
            observed.as_secs_f64() * 1000.0,
            expected.as_secs_f64() * 1000.0,
            added.as_secs_f64() * 1000.0
        );
    }
    let ms = |q: f64| overhead.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "amisim bench: copy completion beyond the simulated duration: p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms over {copies} copies (target: ≤ 5 ms)",
        ms(0.5),
        ms(0.99),
        overhead.max() as f64 / 1000.0
    );
    Ok(json!({
        "mode": "copy-completion",
        "time_scale": args.time_scale,
        "link": args.copy_link,
        "added_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": overhead.max() as f64 / 1000.0},
        "copies": rows,
    }))
}

/// `LATENCY_MS:MIB_PER_S`.
fn parse_link(s: &str) -> anyhow::Result<(u64, u64)> {
    let (l, b) = s
        .split_once(':')
        .with_context(|| format!("--copy-link {s:?}: expected LATENCY_MS:MIB_PER_S"))?;
    let l: u64 = l.trim().parse().context("--copy-link latency")?;
    let b: u64 = b.trim().parse().context("--copy-link bandwidth")?;
    if b == 0 {
        bail!("--copy-link bandwidth must be at least 1 MiB/s");
    }
    Ok((l, b))
}
