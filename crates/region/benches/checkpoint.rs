//! Projection checkpoints (issue 7: restart within 3 s): writing one (what the checkpointer's
//! thread spends every `--checkpoint-every` events, off the request path but not free on a
//! small machine) and reading one back (what a restart spends before it folds the log's tail).
//!
//! Setup (once): a state of 100,000 images registered through the domain's own RegisterImage
//! decision (random EC2-shaped ids, as a served node has them), made available. Then
//! `CheckpointStore::write` of that state to a temporary directory (encode, SHA-256, write,
//! fsync, rename) and `CheckpointStore::read` of the file it wrote.
//!
//! Run: `cargo bench -p amisim-region --bench checkpoint`. Nothing is asserted about speed.

#[path = "../../core/benches/common/mod.rs"]
mod common;

use amisim_core::Command;
use amisim_log::Head;
use amisim_region::checkpoint::CheckpointStore;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const IMAGES: usize = 100_000;

/// A region with `IMAGES` available images over the fixture's accounts, ids drawn by the
/// domain (random, so the id order is not the order of creation).
fn state() -> amisim_core::State {
    let fx = common::fixture(0);
    let mut r = fx.region;
    for i in 0..IMAGES {
        let a = i % common::ACCOUNTS;
        r.when(
            &common::account(a),
            Command::RegisterImage(common::register(&format!("img-{i:07}"), &fx.snapshots[a])),
        );
        if i % 1_000 == 999 {
            r.later(60_000);
        }
    }
    r.later(60_000);
    r.state
}

fn checkpoint(c: &mut Criterion) {
    let state = state();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = CheckpointStore::new(dir.path(), common::REGION);
    let head = Head {
        seq: state.seq,
        hash: [7; 32],
    };
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    g.throughput(Throughput::Elements(state.images.len() as u64));
    g.bench_function("write_100k_images", |b| {
        b.iter(|| {
            store
                .write(head, &state)
                .expect("the checkpoint is written")
        })
    });
    let path = store
        .write(head, &state)
        .expect("the checkpoint is written");
    g.bench_function("read_100k_images", |b| {
        b.iter(|| store.read(&path).expect("the checkpoint reads back"))
    });
    g.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
