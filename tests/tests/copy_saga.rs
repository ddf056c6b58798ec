//! Cross-region copies through real processes: three `amisim region` nodes and one
//! `amisim coordinator`, each SIGKILLed in the middle of the copies and restarted (the regions
//! on the same data directory and port), and every copy still ends exactly once.
//!
//! The regions run at `--time-scale 100` and the coordinator's links from us-east-1 and
//! ap-south-1 into eu-west-1 have a 900 s latency, so those transfers take ~9 s of wall time:
//! long enough to kill things in the middle, short enough for CI. The other pairs keep the
//! default link (60 s + bytes ÷ 75 MiB/s, under a second here).
//!
//! The timeline: copies requested through the coordinator's gateway (`x-amisim-region` = the
//! destination) → SIGKILL the coordinator, request more copies directly on the destination
//! node while it is down, restart it → SIGKILL the source region, request more copies that now
//! cannot be read, restart it on the same port → SIGKILL the destination while its transfers
//! run, restart it. Then every copy is terminal, each destination log holds exactly one start
//! and one terminal event per copy (Region.StreamEvents), `amisim copies` lists them all
//! finished, and the coordinator's GetStateDigest equals each node's own at the same seq.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use amisim_proto::coordinator_client::CoordinatorClient;
use amisim_proto::event::Payload;
use amisim_proto::*;
use amisim_tests::*;
use futures_lite_stream::collect_events;
use tonic::transport::Channel;

const SOURCE: &str = "us-east-1";
const DEST: &str = "eu-west-1";
const OTHER: &str = "ap-south-1";
const SCALE: &str = "100";
const SLOW_LINKS: [&str; 2] = [
    "us-east-1:eu-west-1=900000,75",
    "ap-south-1:eu-west-1=900000,75",
];
const LONG: Duration = Duration::from_secs(40);

/// Collecting a server stream without extra dependencies.
mod futures_lite_stream {
    use amisim_proto::Event;
    use tonic::Streaming;

    pub async fn collect_events(mut s: Streaming<Event>) -> Result<Vec<Event>, tonic::Status> {
        let mut out = Vec::new();
        while let Some(e) = s.message().await? {
            out.push(e);
        }
        Ok(out)
    }
}

struct Region {
    name: String,
    dir: PathBuf,
    port: u16,
    url: String,
    process: Amisim,
}

impl Region {
    /// `amisim region` on `dir`, on `port` (0: any), waiting for its `listening on` line.
    fn start(name: &str, dir: &Path, port: u16) -> Region {
        let args: Vec<String> = vec![
            "region".into(),
            "--name".into(),
            name.into(),
            "--data".into(),
            dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--time-scale".into(),
            SCALE.into(),
            "--known-regions".into(),
            format!("{SOURCE},{DEST},{OTHER}"),
        ];
        let mut process = Amisim::spawn(&format!("amisim region {name}"), &args);
        let line = process.wait_line("listening on", START_TIMEOUT);
        let addr = listening_addr(&line);
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Region {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            port,
            url: format!("http://{addr}"),
            process,
        }
    }

    /// SIGKILL, then the same data directory and port again.
    fn kill_and_restart(&mut self) {
        self.process.kill();
        let again = Region::start(&self.name, &self.dir, self.port);
        assert_eq!(again.url, self.url, "restarted on the same port");
        *self = again;
    }
}

fn start_coordinator(regions: &BTreeMap<String, Region>) -> (Amisim, String) {
    let mut args: Vec<String> = vec![
        "coordinator".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    for (name, r) in regions {
        args.push("--region".into());
        args.push(format!("{name}={}", r.url));
    }
    for l in SLOW_LINKS {
        args.push("--link".into());
        args.push(l.into());
    }
    let mut process = Amisim::spawn("amisim coordinator", &args);
    let line = process.wait_line("gateway listening on", START_TIMEOUT);
    let url = format!("http://{}", listening_addr(&line));
    (process, url)
}

/// What the test asked for: destination region, new id, kind, and whether it must fail.
#[derive(Debug, Clone)]
struct Requested {
    dest: String,
    id: String,
    kind: &'static str,
    must_fail: bool,
}

async fn request_image(
    ec2: &mut amisim_proto::ec2_client::Ec2Client<Channel>,
    dest: &str,
    source_region: &str,
    source: &str,
    name: &str,
    must_fail: bool,
) -> Requested {
    let id = ec2
        .copy_image(req(
            CopyImageRequest {
                source_image_id: source.to_string(),
                source_region: source_region.to_string(),
                name: name.to_string(),
                ..Default::default()
            },
            dest,
        ))
        .await
        .unwrap_or_else(|e| panic!("CopyImage {name} into {dest}: {e:?}"))
        .into_inner()
        .image_id;
    Requested {
        dest: dest.to_string(),
        id,
        kind: "image",
        must_fail,
    }
}

async fn request_snapshot(
    ec2: &mut amisim_proto::ec2_client::Ec2Client<Channel>,
    dest: &str,
    source_region: &str,
    source: &str,
) -> Requested {
    let id = ec2
        .copy_snapshot(req(
            CopySnapshotRequest {
                source_region: source_region.to_string(),
                source_snapshot_id: source.to_string(),
                ..Default::default()
            },
            dest,
        ))
        .await
        .unwrap_or_else(|e| panic!("CopySnapshot into {dest}: {e:?}"))
        .into_inner()
        .snapshot_id;
    Requested {
        dest: dest.to_string(),
        id,
        kind: "snapshot",
        must_fail: false,
    }
}

/// The state of a requested copy's target, read on its node ("" if unreachable for now).
async fn target_state(url: &str, r: &Requested) -> String {
    let mut ec2 = ec2(url).await;
    let res = if r.kind == "image" {
        describe_image(&mut ec2, &r.dest, &r.id)
            .await
            .map(|i| i.state)
    } else {
        describe_snapshot(&mut ec2, &r.dest, &r.id)
            .await
            .map(|s| s.state)
    };
    res.unwrap_or_default()
}

async fn copies_in(coordinator: &str, dest: &str, phase: &str) -> Vec<CopyInfo> {
    let Ok(ch) = Channel::from_shared(coordinator.to_string())
        .expect("url")
        .connect()
        .await
    else {
        return Vec::new();
    };
    CoordinatorClient::new(ch)
        .list_copies(ListCopiesRequest {
            regions: vec![dest.to_string()],
            phases: vec![phase.to_string()],
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().copies)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.destination_region == dest)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_survive_sigkill_of_the_coordinator_the_source_and_the_destination() {
    let t0 = std::time::Instant::now();
    let data = tempfile::tempdir().unwrap();
    let mut regions: BTreeMap<String, Region> = BTreeMap::new();
    for name in [SOURCE, DEST, OTHER] {
        regions.insert(
            name.to_string(),
            Region::start(name, &data.path().join(name), 0),
        );
    }
    let (mut coordinator, mut gateway) = start_coordinator(&regions);
    let mut gw = ec2(&gateway).await;

    // Sources: an AMI (and its snapshot) in us-east-1 and in ap-south-1.
    let us = register_image(&mut gw, SOURCE, "golden us").await.unwrap();
    let ap = register_image(&mut gw, OTHER, "golden ap").await.unwrap();
    for (region, id) in [(SOURCE, &us.image_id), (OTHER, &ap.image_id)] {
        eventually("the source AMI is available", LONG, || {
            let mut gw = gw.clone();
            async move {
                let state = describe_image(&mut gw, region, id).await.ok()?.state;
                (state == "available").then_some(())
            }
        })
        .await;
    }
    let mut copies: Vec<Requested> = Vec::new();

    eprintln!("[{:.1?}] 1: copies through the gateway", t0.elapsed());
    // 1. Copies through the gateway, then SIGKILL the coordinator at once.
    copies.push(request_image(&mut gw, DEST, SOURCE, &us.image_id, "c1 us to eu", false).await);
    copies.push(request_snapshot(&mut gw, DEST, SOURCE, &us.snapshot_id).await);
    copies.push(request_image(&mut gw, DEST, OTHER, &ap.image_id, "c1 ap to eu", false).await);
    copies.push(request_image(&mut gw, OTHER, SOURCE, &us.image_id, "c1 us to ap", false).await);
    copies.push(request_image(&mut gw, SOURCE, SOURCE, &us.image_id, "c1 us to us", false).await);
    copies.push(
        request_image(
            &mut gw,
            DEST,
            SOURCE,
            "ami-0123456789abcdef0",
            "c1 missing",
            true,
        )
        .await,
    );
    coordinator.kill();

    eprintln!("[{:.1?}] 2: coordinator killed", t0.elapsed());
    // 2. While it is down, more copies straight on the destination node; then restart it.
    let mut eu = ec2(&regions[DEST].url).await;
    copies.push(request_image(&mut eu, DEST, SOURCE, &us.image_id, "c2 us to eu", false).await);
    copies.push(request_snapshot(&mut eu, DEST, OTHER, &ap.snapshot_id).await);
    (coordinator, gateway) = start_coordinator(&regions);
    gw = ec2(&gateway).await;
    let resumed = eventually(
        "the restarted coordinator starts the copies made while it was down",
        LONG,
        || async {
            let n = copies_in(&gateway, DEST, "transferring").await.len();
            (n >= 5).then_some(n)
        },
    )
    .await;
    eprintln!("after the coordinator restart: {resumed} copies transferring into {DEST}");

    eprintln!("[{:.1?}] 3: killing the source", t0.elapsed());
    // 3. SIGKILL the source region; copies requested now cannot be read until it is back.
    regions.get_mut(SOURCE).unwrap().process.kill();
    let c3 = request_image(&mut gw, DEST, SOURCE, &us.image_id, "c3 us to eu", false).await;
    copies.push(c3.clone());
    copies.push(request_snapshot(&mut gw, OTHER, SOURCE, &us.snapshot_id).await);
    let waiting = eventually("the new copies wait for the source", LONG, || async {
        let w = copies_in(&gateway, DEST, "awaiting-source-read").await;
        w.iter()
            .find(|c| {
                c.saga
                    .as_ref()
                    .is_some_and(|s| s.attempts >= 2 && !s.last_error.is_empty())
            })
            .cloned()
    })
    .await;
    eprintln!(
        "waiting for the source: {} ({:?})",
        waiting.copy_id, waiting.saga
    );
    {
        let r = regions.get_mut(SOURCE).unwrap();
        let again = Region::start(SOURCE, &r.dir, r.port);
        *r = again;
    }

    eprintln!("[{:.1?}] 4: killing the destination", t0.elapsed());
    // 4. SIGKILL the destination while its transfers run; restart it on its data and port.
    let mid = eventually(
        "the copy made while the source was down transfers",
        LONG,
        || async {
            let t = copies_in(&gateway, DEST, "transferring").await;
            t.iter().any(|c| c.destination_id == c3.id).then_some(t)
        },
    )
    .await;
    eprintln!(
        "killing {DEST} with {} transfers under way: {:?}",
        mid.len(),
        mid.iter()
            .map(|c| (&c.destination_id, c.progress_percent))
            .collect::<Vec<_>>()
    );
    regions.get_mut(DEST).unwrap().kill_and_restart();

    eprintln!("[{:.1?}] waiting for every copy to end", t0.elapsed());
    // Every copy ends, as it should.
    for c in &copies {
        let url = regions[&c.dest].url.clone();
        let state = eventually(&format!("{c:?} terminal"), LONG, || async {
            let s = target_state(&url, c).await;
            ["available", "completed", "failed", "error"]
                .contains(&s.as_str())
                .then_some(s)
        })
        .await;
        let ok = if c.kind == "image" {
            "available"
        } else {
            "completed"
        };
        let want = if c.must_fail {
            if c.kind == "image" {
                "failed"
            } else {
                "error"
            }
        } else {
            ok
        };
        assert_eq!(state, want, "{c:?}");
    }

    eprintln!("[{:.1?}] checking the logs", t0.elapsed());
    // Exactly one start and one end per copy in each destination's log.
    let mut logs: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for (name, r) in &regions {
        let mut admin = region_admin(&r.url).await;
        let stream = admin
            .stream_events(StreamEventsRequest {
                from_seq: 1,
                follow: false,
            })
            .await
            .expect("StreamEvents")
            .into_inner();
        logs.insert(name.clone(), collect_events(stream).await.expect("the log"));
    }
    for c in &copies {
        let log = &logs[&c.dest];
        let copy_id = log
            .iter()
            .find_map(|e| match &e.payload {
                Some(Payload::ImageCopyRequested(r)) if r.image_id == c.id => {
                    Some(r.copy_id.clone())
                }
                Some(Payload::SnapshotCopyRequested(r)) if r.snapshot_id == c.id => {
                    Some(r.copy_id.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no request for {c:?}"));
        let starts = log
            .iter()
            .filter(|e| e.correlation_id == copy_id)
            .filter(|e| {
                matches!(
                    &e.payload,
                    Some(Payload::ImageCopyStarted(_))
                        | Some(Payload::SnapshotCopyStarted(_))
                        | Some(Payload::ImageFailed(_))
                        | Some(Payload::SnapshotFailed(_))
                )
            })
            .count();
        assert_eq!(starts, 1, "one start of {copy_id} ({c:?})");
        let ends = log
            .iter()
            .filter(|e| match &e.payload {
                Some(Payload::ImageAvailable(x)) => x.image_id == c.id,
                Some(Payload::ImageFailed(x)) => x.image_id == c.id,
                Some(Payload::SnapshotCompleted(x)) => x.snapshot_id == c.id,
                Some(Payload::SnapshotFailed(x)) => x.snapshot_id == c.id,
                _ => false,
            })
            .count();
        assert_eq!(ends, 1, "one terminal event of {copy_id} ({c:?})");
        let reads = logs
            .values()
            .flatten()
            .filter(
                |e| matches!(&e.payload, Some(Payload::CopySourceRead(r)) if r.copy_id == copy_id),
            )
            .count();
        assert_eq!(reads, 1, "one source read of {copy_id}");
    }

    eprintln!("[{:.1?}] checking the digests", t0.elapsed());
    // The coordinator's projection equals each node's state at the same seq.
    let mut coord = CoordinatorClient::new(connect(&gateway).await);
    for (name, r) in &regions {
        let mut admin = region_admin(&r.url).await;
        let own = admin
            .get_state_digest(GetStateDigestRequest { replay: true })
            .await
            .expect("node digest")
            .into_inner();
        assert_eq!(own.digest, own.replay_digest, "{name}: live != replay");
        let mine = eventually(
            &format!("the coordinator reaches {name}:{}", own.seq),
            LONG,
            || {
                let mut coord = coord.clone();
                let token = format!("{name}:{}", own.seq);
                let name = name.clone();
                async move {
                    let d = coord
                        .get_state_digest(GetGlobalStateDigestRequest {
                            regions: vec![name],
                            consistency_token: token,
                        })
                        .await
                        .ok()?
                        .into_inner();
                    d.regions.into_iter().next()
                }
            },
        )
        .await;
        assert_eq!(
            mine.seq, own.seq,
            "{name}: nothing happens after the copies"
        );
        assert_eq!(mine.digest, own.digest, "{name}: coordinator != node");
    }
    let _ = &mut coord;

    eprintln!("[{:.1?}] amisim copies", t0.elapsed());
    // `amisim copies` lists them all, finished.
    let out = run_amisim([
        "copies",
        "--coordinator",
        gateway.as_str(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "amisim copies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let listed = listed["copies"].as_array().expect("copies").clone();
    assert_eq!(listed.len(), copies.len(), "{listed:?}");
    for c in &listed {
        let phase = c["phase"].as_str().unwrap_or_default();
        assert!(["available", "completed", "failed"].contains(&phase), "{c}");
    }
    let out = run_amisim(["copies", "--coordinator", gateway.as_str()]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Client.InvalidAMIID.NotFound"), "{table}");
    assert!(table.contains("saga driver: running"), "{table}");

    let status = coordinator.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", coordinator.logs());
    for r in regions.values_mut() {
        let status = r.process.terminate(Duration::from_secs(20));
        assert!(status.success(), "{}", r.process.logs());
    }
}

/// `amisim dev` runs the same coordinator: a copy between two of its regions completes, and
/// the one port serves `Coordinator` (health, ListCopies) next to the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_drives_copies_and_serves_the_coordinator_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path(), &["--link", "us-east-1:ap-south-1=20000,150"]);
    assert!(
        dev.process
            .stdout_text()
            .contains("amisim dev: link us-east-1:ap-south-1=20000 ms + bytes / 150 MiB/s"),
        "{}",
        dev.process.logs()
    );
    let channel = connect(&dev.gateway).await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["amisim.v1.Ec2", "amisim.v1.Coordinator"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }

    let mut gw = ec2(&dev.gateway).await;
    let src = register_image(&mut gw, SOURCE, "dev golden").await.unwrap();
    eventually("the source AMI is available", LONG, || {
        let mut gw = gw.clone();
        let id = src.image_id.clone();
        async move {
            let state = describe_image(&mut gw, SOURCE, &id).await.ok()?.state;
            (state == "available").then_some(())
        }
    })
    .await;
    let copy = request_image(&mut gw, OTHER, SOURCE, &src.image_id, "dev copy", false).await;
    let image = eventually("the copy is available", LONG, || {
        let mut gw = gw.clone();
        let id = copy.id.clone();
        async move {
            let image = describe_image(&mut gw, OTHER, &id).await.ok()?;
            (image.state == "available").then_some(image)
        }
    })
    .await;
    assert_eq!(image.source_image_id, src.image_id);
    assert_eq!(image.source_image_region, SOURCE);

    // The coordinator's projection follows the region's log: it may trail the region's own
    // answer by a moment (it is eventually consistent without a consistency token).
    let listed = eventually("ListCopies shows the copy available", LONG, || {
        let mut coordinator = CoordinatorClient::new(channel.clone());
        async move {
            let listed = coordinator
                .list_copies(ListCopiesRequest::default())
                .await
                .ok()?
                .into_inner();
            (listed.copies.first()?.phase == "available").then_some(listed)
        }
    })
    .await;
    assert_eq!(listed.copies.len(), 1, "{listed:?}");
    let c = &listed.copies[0];
    assert_eq!(
        (c.source_region.as_str(), c.destination_region.as_str()),
        (SOURCE, OTHER)
    );
    assert_eq!(c.phase, "available");
    // The configured link timed it: 20 s + 1 GiB ÷ 150 MiB/s, then 10 s to available.
    assert_eq!(
        c.due_at_ms - c.started_at_ms,
        20_000 + 6_826 + 10_000,
        "{c:?}"
    );
    assert!(listed
        .saga_driver
        .is_some_and(|d| d.running && d.copies_driven == 1));
}
