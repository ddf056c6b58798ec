//! Node faults end to end: `amisim dev` and `amisim chaos node ...` as a user runs them. A
//! region killed from the command line refuses calls, comes back on the same address with every
//! acknowledged write, and the whole is in `node list`.

use std::time::Duration;

use amisim_proto::*;
use amisim_tests::*;

/// Runs `amisim chaos <args> --endpoint <gateway>`; returns stdout, or panics with stderr.
fn chaos(gateway: &str, args: &[&str]) -> String {
    let out = chaos_output(gateway, args);
    assert!(
        out.status.success(),
        "amisim chaos {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chaos_output(gateway: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["chaos"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", gateway]);
    run_amisim(all)
}

/// The state column of `node` in `amisim chaos node list`.
fn state(listing: &str, node: &str) -> String {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{node} not in {listing}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_nodes_are_killed_and_restarted_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(
        data.path(),
        &["--seed", "3", "--regions", "us-east-1,eu-west-1"],
    );
    let gw = dev.gateway.clone();
    let listing = chaos(&gw, &["node", "list"]);
    for node in ["us-east-1", "eu-west-1", "coordinator"] {
        assert_eq!(state(&listing, node), "running", "{listing}");
    }
    // The printed region address is the node's, the same across restarts.
    let us_url = dev.regions["us-east-1"].clone();
    assert!(listing.contains(&us_url), "{listing}");

    let mut ec2 = ec2(&gw).await;
    let before = ec2
        .create_volume(req(volume_request("us-east-1", 8), "us-east-1"))
        .await
        .expect("write before the kill")
        .into_inner()
        .volume_id;

    // Kill: the region refuses calls, the other one goes on.
    let out = chaos(&gw, &["node", "kill", "us-east-1"]);
    assert!(out.contains("us-east-1 killed: down"), "{out}");
    assert_eq!(state(&chaos(&gw, &["node", "list"]), "us-east-1"), "down");
    let refused = ec2
        .describe_volumes(req(DescribeVolumesRequest::default(), "us-east-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    ec2.create_volume(req(volume_request("eu-west-1", 8), "eu-west-1"))
        .await
        .expect("eu-west-1 still serves");

    // The coordinator cannot be killed through itself without --down-for.
    let out = chaos_output(&gw, &["node", "kill", "coordinator"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("down_for"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restart: same address, the acknowledged write is there, new writes work.
    let out = chaos(&gw, &["node", "restart", "us-east-1"]);
    assert!(out.contains("us-east-1 restarted: running"), "{out}");
    assert!(out.contains("1 restarts"), "{out}");
    let found = eventually(
        "the volume after the restart",
        Duration::from_secs(30),
        || {
            let mut ec2 = ec2.clone();
            let id = before.clone();
            async move {
                ec2.describe_volumes(req(
                    DescribeVolumesRequest {
                        volume_ids: vec![id],
                        ..Default::default()
                    },
                    "us-east-1",
                ))
                .await
                .ok()
            }
        },
    )
    .await
    .into_inner();
    assert_eq!(found.volumes.len(), 1);
    ec2.create_volume(req(volume_request("us-east-1", 8), "us-east-1"))
        .await
        .expect("write after the restart");

    // JSON for scripts; an unknown node is named.
    let json: serde_json::Value =
        serde_json::from_str(&chaos(&gw, &["node", "list", "--format", "json"])).unwrap();
    let us = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "us-east-1")
        .unwrap()
        .clone();
    assert_eq!(us["state"], "running");
    assert_eq!(us["restarts"], 1);
    let out = chaos_output(&gw, &["node", "pause", "mars-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mars-1"));

    let mut dev = dev;
    dev.process.terminate(Duration::from_secs(30));
    assert!(dev.process.stdout_text().contains("amisim dev: stopped"));
}
