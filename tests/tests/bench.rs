//! `amisim bench`: the load generator runs against an in-process region node with nothing set
//! up, prints its parameters and the result table, writes the JSON report, and refuses a bad mix
//! as a usage error.

use amisim_tests::*;

#[test]
fn an_embedded_bench_prints_its_parameters_and_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = run_amisim([
        "bench",
        "--embedded",
        "--count",
        "200",
        "--concurrency",
        "8",
        "--echo-duration",
        "0",
        "--seed",
        "7",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("amisim bench: seed 7"), "{stdout}");
    assert!(
        stdout.contains("amisim bench: mix register=50,describe-id=30"),
        "{stdout}"
    );
    assert!(stdout.contains("concurrency 8"), "{stdout}");
    let header = stdout
        .lines()
        .find(|l| l.starts_with("operation"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    for col in ["calls", "errors", "ops/s", "p50", "p99", "p99.9", "max"] {
        assert!(header.contains(col), "{header}");
    }
    let total = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total row in:\n{stdout}"));
    let calls: u64 = total.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(calls, 200, "{stdout}");
    assert!(stdout.contains("register"), "{stdout}");
    assert!(stdout.contains("echo: not measured"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["params"]["seed"], 7);
    let run = &report["runs"][0]["summary"];
    assert_eq!(run["calls"], 200);
    let register = run["ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "register")
        .expect("register in the report");
    assert_eq!(
        register["ok"], register["calls"],
        "RegisterImage never fails here: {register}"
    );
    assert!(register["latency_us"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn echo_only_and_usage_errors() {
    let out = run_amisim([
        "bench",
        "--embedded",
        "--mix",
        "echo=100",
        "--count",
        "50",
        "--concurrency",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo = stdout.lines().find(|l| l.starts_with("echo ")).unwrap();
    assert!(echo.contains("100.0%"), "{stdout}");

    let out = run_amisim(["bench", "--mix", "register=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weight of register"));
    let out = run_amisim([
        "bench",
        "--embedded",
        "--preload-images",
        "0",
        "--mix",
        "describe-id=1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--preload-images"));
    let out = run_amisim(["bench", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: amisim bench"));
}

/// `--checkpoint-every` reaches the embedded node: 0 leaves only the checkpoint of its clean
/// shutdown, a small N writes periodic ones too. The header says where the runtime runs.
#[test]
fn an_embedded_node_checkpoints_as_told_and_the_header_names_the_runtime_s_cpus() {
    let checkpoints = |every: &str| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("us-east-1");
        let out = run_amisim([
            "bench",
            "--embedded",
            "--data",
            data.to_str().unwrap(),
            "--checkpoint-every",
            every,
            "--mix",
            "register=100",
            "--count",
            "300",
            "--concurrency",
            "4",
            "--echo-duration",
            "0",
            "--seed",
            "3",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("amisim bench: async runtime: "), "{stdout}");
        let n = std::fs::read_dir(data.join("checkpoints"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
            .count();
        (n, stdout)
    };
    let (only_at_shutdown, _) = checkpoints("0");
    assert_eq!(only_at_shutdown, 1);
    let (periodic, stdout) = checkpoints("100");
    assert!(periodic >= 2, "{periodic} checkpoint(s)\n{stdout}");
    let out = run_amisim(["bench", "--checkpoint-every", "5"]);
    assert_eq!(out.status.code(), Some(2), "needs --embedded");
}
