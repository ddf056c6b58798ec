//! Projection checkpoints: a restart from a checkpoint plus the log's tail gives exactly the
//! state a full replay gives; a checkpoint that cannot be trusted is ignored (full replay, same
//! digest); the chain is still verified over the tail.

mod common;

use std::path::Path;
use std::sync::Arc;

use amisim_core::{Command, Reply};
use amisim_log::{DiskLog, EventLog};
use amisim_proto::RegisterImageRequest;
use amisim_region::checkpoint::{CheckpointStore, CHECKPOINT_VERSION};
use amisim_region::{replay, restore, RegionConfig, RegionNode, StorageConfig};
use common::*;

fn storage(data: &Path, every: u64) -> StorageConfig {
    StorageConfig {
        checkpoint_every: every,
        ..StorageConfig::default()
    }
    .for_data_dir(data)
}

fn cfg(seed: u64, storage: StorageConfig) -> RegionConfig {
    RegionConfig {
        time_scale: 100_000.0,
        storage,
        ..config(seed)
    }
}

fn open(dir: &Path, storage: &StorageConfig) -> Arc<dyn EventLog> {
    Arc::new(DiskLog::open(dir, storage.sled_options()).unwrap())
}

/// Registers `n` images named `<prefix>-<i>` and creates one volume per 4 images.
async fn write(node: &RegionNode, prefix: &str, n: usize) {
    for i in 0..n {
        let r = RegisterImageRequest {
            name: format!("{prefix}-{i}"),
            image_location: format!("bucket/{prefix}-{i}.manifest.xml"),
            ..Default::default()
        };
        let (reply, _) = node
            .execute(OWNER, "req", Command::RegisterImage(r))
            .await
            .unwrap();
        assert!(matches!(reply, Reply::RegisterImage(_)));
        if i % 4 == 0 {
            node.execute(OWNER, "req", Command::CreateVolume(create_volume(8)))
                .await
                .unwrap();
        }
    }
}

/// A log of three lives: with checkpoints (final one at shutdown), then without (a tail the
/// checkpoint does not cover), so a start with checkpoints has something to fold.
async fn log_with_a_tail(data: &Path) -> (StorageConfig, u64) {
    let with = storage(data, 7);
    let node = RegionNode::start(cfg(1, with.clone()), open(data, &with)).unwrap();
    write(&node, "first", 40).await;
    node.shutdown().await;
    let covered = node.head_seq();
    drop(node);
    let without = StorageConfig {
        checkpoint_dir: None,
        ..with.clone()
    };
    let node = RegionNode::start(cfg(2, without.clone()), open(data, &without)).unwrap();
    write(&node, "second", 25).await;
    node.shutdown().await;
    assert!(node.head_seq() > covered);
    drop(node);
    (with, covered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_a_checkpoint_equals_a_full_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("us-east-1");
    let (with, covered) = log_with_a_tail(&data).await;
    let store = CheckpointStore::new(with.checkpoint_dir.clone().unwrap(), REGION);
    let files = store.list().unwrap();
    assert_eq!(files.first().map(|f| f.0), Some(covered), "{files:?}");
    assert!(files.len() <= amisim_region::checkpoint::KEEP);

    let log = open(&data, &with);
    let (restored, from) = restore(REGION, &with, log.as_ref()).unwrap();
    assert_eq!(from, covered, "started from the newest checkpoint");
    let full = replay(REGION, log.as_ref()).unwrap();
    assert_eq!(restored.seq, log.head().seq);
    assert_eq!(restored.digest(), full.digest());
    assert_eq!(restored, full);
    drop(log);

    // And a node started on it serves that state, then checkpoints the tail at shutdown.
    let node = RegionNode::start(cfg(3, with.clone()), open(&data, &with)).unwrap();
    assert_eq!(node.state().digest(), full.digest());
    write(&node, "third", 3).await;
    node.shutdown().await;
    assert_eq!(
        store.list().unwrap().first().map(|f| f.0),
        Some(node.head_seq())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_checkpoint_falls_back_to_a_full_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("us-east-1");
    let (with, _) = log_with_a_tail(&data).await;
    let store = CheckpointStore::new(with.checkpoint_dir.clone().unwrap(), REGION);
    let files = store.list().unwrap();
    assert!(!files.is_empty());
    let full = {
        let log = open(&data, &with);
        replay(REGION, log.as_ref()).unwrap()
    };

    // Every checkpoint damaged: a flipped byte in the middle of the newest, a future format
    // version in the others.
    for (i, (_, path)) in files.iter().enumerate() {
        let mut bytes = std::fs::read(path).unwrap();
        if i == 0 {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        } else {
            bytes[8..12].copy_from_slice(&(CHECKPOINT_VERSION + 1).to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
        assert!(store.read(path).is_err(), "{} still reads", path.display());
    }
    let log = open(&data, &with);
    let (restored, from) = restore(REGION, &with, log.as_ref()).unwrap();
    assert_eq!(from, 0, "no checkpoint used: full replay");
    assert_eq!(restored.digest(), full.digest());

    // A checkpoint of another region's name is ignored too.
    let foreign = CheckpointStore::new(with.checkpoint_dir.clone().unwrap(), "eu-west-1");
    let other = foreign.list().unwrap();
    assert!(other.iter().all(|(_, p)| foreign.read(p).is_err()));

    // The node itself starts (full replay) and serves the same state.
    let node = RegionNode::start(cfg(4, with.clone()), log).unwrap();
    assert_eq!(node.state().digest(), full.digest());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_log_is_not_trusted() {
    // Two logs with different histories; the first one's checkpoint copied beside the second.
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let sa = storage(&a, 0);
    let sb = storage(&b, 0);
    let node = RegionNode::start(cfg(5, sa.clone()), open(&a, &sa)).unwrap();
    write(&node, "a", 6).await;
    node.shutdown().await;
    drop(node);
    let node = RegionNode::start(cfg(6, sb.clone()), open(&b, &sb)).unwrap();
    write(&node, "b", 10).await;
    node.shutdown().await;
    drop(node);
    let b_dir = sb.checkpoint_dir.clone().unwrap();
    for f in std::fs::read_dir(&b_dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    for f in std::fs::read_dir(sa.checkpoint_dir.as_ref().unwrap()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), b_dir.join(f.file_name())).unwrap();
    }
    let log = open(&b, &sb);
    let full = replay(REGION, log.as_ref()).unwrap();
    let (restored, from) = restore(REGION, &sb, log.as_ref()).unwrap();
    assert_eq!(
        from, 0,
        "the foreign checkpoint's hash does not link to this log's tail"
    );
    assert_eq!(restored.digest(), full.digest());
}
