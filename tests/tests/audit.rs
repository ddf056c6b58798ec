//! `amisim audit` and `amisim replay --until` on the log of a real `amisim region` process:
//! the exported key verifies the log and its signed digests, the online `Audit.VerifyLog`
//! agrees, a forged digest is refused with exit 1, and replay stops at a seq or a time.

use std::time::Duration;

use amisim_proto::audit_client::AuditClient;
use amisim_proto::{GetPublicKeyRequest, VerifyLogRequest};
use amisim_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_public_key_and_replay_until() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("us-east-1");
    let mut node = start_region("us-east-1", &dir, &["--digest-every", "3"]);
    let mut ec2 = ec2(&node.url).await;
    register_image(&mut ec2, "us-east-1", "audited")
        .await
        .unwrap();
    let mut audit = AuditClient::new(connect(&node.url).await);
    let online = audit
        .verify_log(VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(online.ok, "{online:?}");
    assert!(online.digests_checked >= 1, "{online:?}");
    let online_key = audit
        .get_public_key(GetPublicKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .public_key;
    let status = node.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", node.process.logs());
    let d = dir.to_str().unwrap();

    let out = run_amisim(["audit", "public-key", "--data", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(key, online_key);

    let out = run_amisim([
        "audit",
        "verify",
        "--data",
        d,
        "--public-key",
        &key,
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = report["head_seq"].as_u64().unwrap();
    assert!(head >= 4, "{report}");
    // The clean shutdown signed the head.
    assert_eq!(report["last_digest_seq"].as_u64(), Some(head), "{report}");

    // Replay to a seq, and to the simulated time of that seq.
    let out = run_amisim(["replay", "--data", d, "--until", "2", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(at2["seq"], 2);
    let out = run_amisim([
        "replay",
        "--data",
        d,
        "--until",
        "2000-01-01T00:00:00Z",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(before["seq"], 0, "nothing happened before 2000");
    let out = run_amisim(["replay", "--data", d, "--until", "not-a-time"]);
    assert_eq!(out.status.code(), Some(2));

    // Another key (or a forged digest) fails with exit 1 and names a seq.
    let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let out = run_amisim(["audit", "verify", "--data", d, "--public-key", other]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("first bad seq 3"), "{stderr}");
}
