//! Crash safety of a region node: SIGKILL in the middle of a write load loses no acknowledged
//! write, and the state after restart equals a replay of the log (live, in the node, and
//! offline, with `amisim replay`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amisim_proto::*;
use amisim_tests::*;

const REGION: &str = "us-east-1";
/// Writers doing CreateVolume + CreateTags.
const VOLUME_WRITERS: usize = 8;
/// Per writer, below the per-account volume quota.
const MAX_VOLUMES_PER_WRITER: usize = 1500;

#[derive(Default)]
struct Acked {
    /// volume id → account.
    volumes: BTreeMap<String, String>,
    /// volume id → acknowledged `load` tag value.
    tags: BTreeMap<String, String>,
    /// image ids from acknowledged RegisterImage calls.
    images: Vec<String>,
}

fn account(writer: usize) -> String {
    format!("1000000000{writer:02}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_write_load_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join(REGION);
    let mut node = start_region(REGION, &dir, &[]);
    let acked = Arc::new(Mutex::new(Acked::default()));

    let mut writers = Vec::new();
    for w in 0..VOLUME_WRITERS {
        // Separate connections, like separate clients.
        let mut ec2 = ec2(&node.url).await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let account = account(w);
            for n in 0..MAX_VOLUMES_PER_WRITER {
                let Ok(v) = ec2
                    .create_volume(req_as(
                        volume_request(REGION, 1 + (n % 8) as i32),
                        REGION,
                        &account,
                    ))
                    .await
                else {
                    return;
                };
                let id = v.into_inner().volume_id;
                acked
                    .lock()
                    .unwrap()
                    .volumes
                    .insert(id.clone(), account.clone());
                let value = format!("w{w}-n{n}");
                let tag = CreateTagsRequest {
                    resources: vec![id.clone()],
                    tags: vec![Tag {
                        key: "load".into(),
                        value: value.clone(),
                    }],
                    dry_run: false,
                };
                if ec2
                    .create_tags(req_as(tag, REGION, &account))
                    .await
                    .is_err()
                {
                    return;
                }
                acked.lock().unwrap().tags.insert(id, value);
            }
        }));
    }
    // One writer going through the whole AMI flow (volume → snapshot → RegisterImage).
    {
        let mut ec2 = ec2(&node.url).await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                match register_image(&mut ec2, REGION, &format!("load image {n}")).await {
                    Ok(r) => acked.lock().unwrap().images.push(r.image_id),
                    Err(_) => return,
                }
            }
        }));
    }

    // Let the load run until there is a good number of acknowledged writes, then kill -9.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = acked.lock().unwrap().volumes.len();
        if n >= 400 || started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    node.process.kill();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.volumes.len() >= 20,
        "too few writes acknowledged before the kill ({}): is the node writing?\n{}",
        acked.volumes.len(),
        node.process.logs()
    );
    eprintln!(
        "killed with {} volumes, {} tags, {} images acknowledged",
        acked.volumes.len(),
        acked.tags.len(),
        acked.images.len()
    );

    // Restart on the same directory: every acknowledged write is there.
    let mut node = start_region(REGION, &dir, &[]);
    let mut client = ec2(&node.url).await;
    for w in 0..VOLUME_WRITERS {
        let account = account(w);
        let found: BTreeMap<String, Volume> = client
            .describe_volumes(req_as(DescribeVolumesRequest::default(), REGION, &account))
            .await
            .expect("DescribeVolumes after restart")
            .into_inner()
            .volumes
            .into_iter()
            .map(|v| (v.volume_id.clone(), v))
            .collect();
        for (id, owner) in acked.volumes.iter().filter(|(_, a)| **a == account) {
            let v = found
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged volume {id} of {owner} lost"));
            if let Some(value) = acked.tags.get(id) {
                assert!(
                    v.tags.iter().any(|t| t.key == "load" && t.value == *value),
                    "acknowledged tag load={value} on {id} lost: {v:?}"
                );
            }
        }
    }
    for id in &acked.images {
        describe_image(&mut client, REGION, id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged image {id} lost: {e:?}"));
    }

    // The live state equals a replay of the log, in the node...
    let mut admin = region_admin(&node.url).await;
    let d = admin
        .get_state_digest(GetStateDigestRequest { replay: true })
        .await
        .expect("GetStateDigest")
        .into_inner();
    assert_eq!(d.region, REGION);
    assert!(d.seq >= acked.volumes.len() as u64, "{d:?}");
    assert_eq!(
        d.digest, d.replay_digest,
        "live state != replay at seq {}",
        d.seq
    );

    // ... and offline, in another process reading the same log.
    let status = node.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}\n{}", node.process.logs());
    let out = run_amisim([
        "replay",
        "--data",
        dir.to_str().unwrap(),
        "--until",
        &d.seq.to_string(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "amisim replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    assert_eq!(report["region"], REGION);
    assert_eq!(report["seq"], d.seq);
    assert_eq!(report["digest"], d.digest.as_str());
    assert!(report["head_seq"].as_u64().unwrap() >= d.seq);

    // The table form works on the same log.
    let out = run_amisim(["replay", "--data", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("hash chain verified"), "{table}");
}
