//! The binary's contract with scripts: exit codes (0 ok, 1 runtime error with a clear message,
//! 2 usage), `--help` on every subcommand, and the errors a user meets first.

use std::time::Duration;

use amisim_tests::*;

#[test]
fn busy_port_is_a_runtime_error_and_bad_flags_a_usage_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = run_amisim([
        "dev",
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "stderr: {stderr}"
    );

    let out = run_amisim(["dev", "--time-scale", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_amisim(["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_amisim(["coordinator", "--region", "us-east-1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The subcommands a `--help` output lists under `Commands:` (without clap's `help`).
fn listed_subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_has_help() {
    let out = run_amisim(["--help"]);
    assert!(out.status.success());
    let top = listed_subcommands(&String::from_utf8_lossy(&out.stdout));
    // The documented commands are all there (a new one is covered by the walk below anyway).
    for known in [
        "dev",
        "region",
        "coordinator",
        "copies",
        "replay",
        "audit",
        "bench",
    ] {
        assert!(
            top.iter().any(|c| c == known),
            "{known} missing from {top:?}"
        );
    }
    // Every subcommand, and every subcommand of those (`audit verify`, ...), documents itself.
    let mut todo: Vec<Vec<String>> = top.into_iter().map(|c| vec![c]).collect();
    let mut checked = 0;
    while let Some(path) = todo.pop() {
        let mut args = path.clone();
        args.push("--help".into());
        let out = run_amisim(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let shown = path.join(" ");
        assert!(out.status.success(), "amisim {shown} --help failed");
        assert!(
            stdout.contains(&format!("Usage: amisim {shown}")),
            "amisim {shown} --help: {stdout}"
        );
        for sub in listed_subcommands(&stdout) {
            let mut deeper = path.clone();
            deeper.push(sub);
            todo.push(deeper);
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} subcommands checked");
}

#[test]
fn a_second_node_on_the_same_log_is_refused_and_replay_needs_a_stopped_node() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("eu-west-1");
    let mut first = start_region("eu-west-1", &dir, &[]);

    let out = run_amisim([
        "region",
        "--name",
        "eu-west-1",
        "--data",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot open the event log of eu-west-1"),
        "stderr: {stderr}"
    );

    let out = run_amisim(["replay", "--data", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("is a node still running on it?"),
        "stderr: {stderr}"
    );

    let status = first.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", first.process.logs());
    let out = run_amisim([
        "replay",
        "--data",
        dir.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["seq"], 0);

    let out = run_amisim(["replay", "--data", dir.to_str().unwrap(), "--until", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("beyond the log's head"), "stderr: {stderr}");

    let missing = data.path().join("no-such-region");
    let out = run_amisim(["replay", "--data", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event log at"));
}

#[test]
fn a_virtual_clock_starts_where_it_is_told_on_an_empty_log() {
    // 2030-01-01T00:00:00Z, far from the default 2024-01-01.
    const START: u64 = 1_893_456_000_000;
    let data = tempfile::tempdir().unwrap();
    let mut node = start_region(
        "eu-west-1",
        &data.path().join("eu-west-1"),
        &[
            "--clock",
            "virtual",
            "--virtual-start-ms",
            &START.to_string(),
        ],
    );
    let banner = node.process.stdout_text();
    assert!(
        banner.contains(&format!("virtual clock at {START} ms")),
        "{banner}"
    );
    let status = node.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", node.process.logs());
}

/// A report piped into a reader that is gone (`amisim replay … | head -1`) ends the process by
/// SIGPIPE, quietly, as a Unix tool does, not with a panic on the failed `println!`.
#[cfg(unix)]
#[test]
fn a_report_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("us-east-1");
    let mut node = start_region("us-east-1", &dir, &[]);
    let status = node.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", node.process.logs());

    // A pipe whose read end is closed before the child starts: its first write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(amisim_bin())
        .args(["replay", "--data", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?} {stderr}",
        out.status
    );
}

/// SIGPIPE's number on the platforms amisim runs on (Linux, macOS: 13).
#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}
