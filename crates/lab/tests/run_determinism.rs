//! The experiment runner end to end on an in-process cluster with the virtual clock:
//! determinism (the same seed twice gives the same schedule and byte-identical logs; another
//! seed another schedule), and the checker catching a deliberately broken cluster.

use amisim_lab::checker::{self, Observed};
use amisim_lab::history::EntryType;
use amisim_lab::run::{run_experiment, RunOptions, RunOutcome};
use amisim_lab::spec::Experiment;

/// Small but with everything that could break determinism: copies both ways, a partition that
/// stalls some of them, shares, deregisters, timers.
const EXPERIMENT: &str = r#"
name = "determinism"
regions = ["us-east-1", "eu-west-1"]
duration = "24s"
step = "1s"
accounts = 2

[workload]
register = 1.0
copy_cross_region = 0.6
copy_same_region = 0.2
share = 0.2
deregister = 0.1
describe = 0.3
describe_global = 0.3
client_token_reuse = 0.2

[default_link]
latency_ms = 5000
bandwidth_bytes_per_s = 104857600

[[faults]]
at = "8s"
action = "partition"
from = "us-east-1"
to = "eu-west-1"

[[faults]]
at = "14s"
action = "heal"
"#;

async fn run(seed: u64) -> RunOutcome {
    let exp = Experiment::parse(EXPERIMENT, "determinism.toml", "determinism").unwrap();
    let data = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        data: Some(data.path().to_path_buf()),
        ..RunOptions::default()
    };
    let out = run_experiment(&exp, seed, &opts).await.unwrap();
    assert!(
        out.pass(),
        "seed {seed} failed:\n{}",
        amisim_lab::report::text::render(&out.report)
    );
    out
}

/// Region → (seq, state digest, log digest).
fn digests(o: &RunOutcome) -> Vec<(String, u64, String, String)> {
    o.observed
        .digests
        .iter()
        .map(|d| {
            (
                d.region.clone(),
                d.region_seq,
                d.region_digest.clone(),
                d.log_digest.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_seed_replays_byte_for_byte_and_another_seed_differs() {
    let a = run(11).await;
    let b = run(11).await;
    let c = run(12).await;

    let da = digests(&a);
    assert_eq!(da.len(), 2);
    for (region, seq, state, log) in &da {
        assert!(*seq > 10, "{region}: only {seq} events");
        assert!(!state.is_empty() && !log.is_empty(), "{region}");
    }
    // Same seed: the same calls at the same simulated times, the same answers, the same logs.
    assert_eq!(
        a.report.fingerprint.schedule, b.report.fingerprint.schedule,
        "same seed, different schedule"
    );
    assert_eq!(da, digests(&b), "same seed, different event logs");
    let answers = |o: &RunOutcome| -> Vec<String> {
        o.history
            .entries
            .iter()
            .filter(|e| e.kind != EntryType::Invoke)
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.f,
                    e.value
                        .get("image_id")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    e.error.clone().unwrap_or_default()
                )
            })
            .collect()
    };
    assert_eq!(answers(&a), answers(&b));
    assert_eq!(a.report.copies, b.report.copies);

    // Another seed: another schedule, other logs.
    assert_ne!(a.report.fingerprint.schedule, c.report.fingerprint.schedule);
    assert_ne!(da, digests(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_cluster_that_loses_an_acknowledged_write() {
    let out = run(5).await;
    // A double of the cluster's final state that dropped one image a client was told about
    // (as a log that loses an acknowledged event would): the first ok'd RegisterImage.
    let ops = out.history.ops();
    let (region, lost) = ops
        .iter()
        .filter(|o| o.invoke.f == "register_image")
        .find_map(|o| {
            o.ok()
                .and_then(|e| e.value_str("image_id"))
                .map(|id| (o.invoke.region.clone(), id.to_string()))
        })
        .expect("the run registered an image");
    let mut broken: Observed = out.observed.clone();
    let removed = broken.images.get_mut(&region).unwrap().remove(&lost);
    assert!(
        removed.is_some(),
        "{lost} was in the final state of {region}"
    );
    // Deregistered images are excused: make sure this one was not.
    assert!(!ops.iter().any(|o| o.invoke.f == "deregister_image"
        && o.invoke.value_str("image_id") == Some(lost.as_str())));

    let verdicts = checker::check(&out.history, &broken);
    let v = verdicts
        .iter()
        .find(|v| v.name == "no_acknowledged_write_lost")
        .unwrap();
    assert!(!v.pass, "{v:?}");
    assert!(
        v.summary.contains("acknowledged write lost"),
        "{}",
        v.summary
    );
    assert!(v.summary.contains(&lost), "{}", v.summary);
    // The excerpt is small and holds the write's invoke and ok.
    assert!(v.excerpt.len() <= checker::MAX_EXCERPT);
    assert!(v
        .excerpt
        .iter()
        .any(|e| e.kind == EntryType::Invoke && e.f == "register_image"));
    assert!(v
        .excerpt
        .iter()
        .any(|e| e.kind == EntryType::Ok && e.value_str("image_id") == Some(lost.as_str())));
    // And the real state passes the same check.
    assert!(checker::check(&out.history, &out.observed)
        .iter()
        .all(|v| v.pass));
}
