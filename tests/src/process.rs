//! Starting, watching and stopping `amisim` processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a process may take to print its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `amisim` binary under test.
///
/// 1. `$AMISIM_BIN` if set (CI, or a release build).
/// 2. Otherwise `cargo build -p amisim --bin amisim` (a no-op when it is fresh), so that
///    `cargo test -p amisim-tests` never runs a stale binary, and the path cargo reports.
/// 3. If cargo cannot be run: `amisim` next to this test executable's `deps/` directory.
pub fn amisim_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_binary)
}

fn locate_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AMISIM_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "AMISIM_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "amisim", "--bin", "amisim"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            for line in stdout.lines() {
                let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "amisim" {
                    if let Some(exe) = msg["executable"].as_str() {
                        return PathBuf::from(exe);
                    }
                }
            }
        }
        Ok(out) => panic!("cargo build -p amisim failed: {}", out.status),
        Err(e) => eprintln!("cannot run cargo ({e}); using the binary beside the tests"),
    }
    let fallback = profile_dir.join(format!("amisim{}", std::env::consts::EXE_SUFFIX));
    assert!(
        fallback.is_file(),
        "no amisim binary at {}; run `cargo build -p amisim` or set AMISIM_BIN",
        fallback.display()
    );
    fallback
}

/// A running `amisim` child process. Its stdout lines are available to [`Amisim::wait_line`];
/// stdout and stderr are kept and printed if the test panics. Dropping it kills the process.
pub struct Amisim {
    label: String,
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Amisim {
    /// Starts `amisim <args>`. `RUST_LOG` defaults to `info` (override with `AMISIM_TEST_LOG`).
    pub fn spawn<I, S>(label: &str, args: I) -> Amisim
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(amisim_bin());
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("AMISIM_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", amisim_bin().display()));
        let (tx, lines) = mpsc::channel();
        let stdout_log = Arc::new(Mutex::new(Vec::new()));
        let stderr_log = Arc::new(Mutex::new(Vec::new()));
        {
            let out = child.stdout.take().expect("piped stdout");
            let log = stdout_log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        {
            let err = child.stderr.take().expect("piped stderr");
            let log = stderr_log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Amisim {
            label: label.to_string(),
            child,
            lines,
            stdout: stdout_log,
            stderr: stderr_log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next stdout line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line containing {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.logs()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{}: exited ({status:?}) before printing {needle:?}\n{}",
                        self.label,
                        self.logs()
                    )
                }
            }
        }
    }

    /// Sends SIGKILL (no chance to flush or clean up) and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.wait(timeout)
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{}: still running {timeout:?} after being asked to stop\n{}",
                    self.label,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        format!(
            "---- {} stdout ----\n{}\n---- {} stderr ----\n{}\n",
            self.label,
            self.stdout.lock().unwrap().join("\n"),
            self.label,
            self.stderr.lock().unwrap().join("\n")
        )
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Amisim {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The address after `listening on ` in a line.
pub fn listening_addr(line: &str) -> String {
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no 'listening on' in {line:?}"))
        .trim();
    addr.split_whitespace().next().unwrap_or(addr).to_string()
}

/// A running `amisim dev`.
pub struct Dev {
    pub process: Amisim,
    /// `http://127.0.0.1:port` of the gateway.
    pub gateway: String,
    /// Region → `http://addr` of its node (for the internal Region service).
    pub regions: BTreeMap<String, String>,
    /// Region → seed, as printed.
    pub seeds: BTreeMap<String, u64>,
}

/// Starts `amisim dev --data <data> --listen 127.0.0.1:0 --time-scale 600 <extra>` and waits for
/// the gateway line.
pub fn start_dev(data: &Path, extra: &[&str]) -> Dev {
    let mut args: Vec<String> = vec![
        "dev".into(),
        "--data".into(),
        data.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--time-scale".into(),
        "600".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = Amisim::spawn("amisim dev", &args);
    let line = process.wait_line("gateway listening on", START_TIMEOUT);
    let gateway = format!("http://{}", listening_addr(&line));
    // The region lines come before the gateway line.
    let mut regions = BTreeMap::new();
    let mut seeds = BTreeMap::new();
    for l in process.stdout_text().lines() {
        // amisim dev: region <name> on <addr>, data <dir>, seed <n>, head seq <n>
        if let Some(rest) = l.strip_prefix("amisim dev: region ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            let _on = words.next();
            let addr = words.next().unwrap_or_default().trim_end_matches(',');
            regions.insert(name.clone(), format!("http://{addr}"));
            if let Some(seed) = rest
                .split("seed ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.trim().parse().ok())
            {
                seeds.insert(name, seed);
            }
        }
    }
    Dev {
        process,
        gateway,
        regions,
        seeds,
    }
}

/// A running `amisim region`.
pub struct RegionProcess {
    pub process: Amisim,
    /// `http://127.0.0.1:port`.
    pub url: String,
}

/// Starts `amisim region --name <name> --data <data> --listen 127.0.0.1:0 --time-scale 600
/// <extra>` and waits for its `listening on` line.
pub fn start_region(name: &str, data: &Path, extra: &[&str]) -> RegionProcess {
    let mut args: Vec<String> = vec![
        "region".into(),
        "--name".into(),
        name.into(),
        "--data".into(),
        data.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--time-scale".into(),
        "600".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = Amisim::spawn(&format!("amisim region {name}"), &args);
    let line = process.wait_line("listening on", START_TIMEOUT);
    let url = format!("http://{}", listening_addr(&line));
    RegionProcess { process, url }
}

/// Runs `amisim <args>` to completion (for `replay`, usage errors, ...).
pub fn run_amisim<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(amisim_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run amisim")
}
