//! One node as a child process (`amisim region` / `amisim coordinator`), driven by signals:
//! SIGKILL (kill), SIGSTOP (pause), SIGCONT (resume), SIGTERM (clean stop). Its stdout and
//! stderr are appended to `DATA/<node>.log`; it is ready once it prints its `listening on` line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amisim_chaos::NodeKind;

use super::{invalid, io_err, node_err, ClusterClock, Inner, LabError, Node};

/// How long a child may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// A running child. Dropping it kills it (SIGKILL) and reaps it.
pub(crate) struct ChildRun {
    child: Option<Child>,
    pid: u32,
}

impl ChildRun {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn signal_stop(&self) -> Result<(), String> {
        signal(self.pid, libc::SIGSTOP)
    }

    pub(crate) fn signal_continue(&self) -> Result<(), String> {
        signal(self.pid, libc::SIGCONT)
    }

    /// Waits (polling) until the child has ended, up to `limit`; true if it has.
    async fn reaped(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                return true;
            };
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    return true;
                }
                Ok(None) => {}
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| format!("bad pid {pid}"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "signal {sig} to pid {pid} failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The flags of `node`'s child.
fn args(inner: &Inner, node: &Node) -> Result<Vec<String>, LabError> {
    let spec = &inner.spec;
    let mut a: Vec<String> = Vec::new();
    match node.kind {
        NodeKind::Region => {
            let dir = spec.data.join(&node.name);
            a.extend([
                "region".into(),
                "--name".into(),
                node.name.clone(),
                "--data".into(),
                dir.display().to_string(),
                "--listen".into(),
                node.addr.to_string(),
                "--known-regions".into(),
                inner.regions.join(","),
                "--seed".into(),
                node.seed.to_string(),
                "--digest-every".into(),
                spec.digest_every.to_string(),
                "--record-reads".into(),
                spec.record_reads.to_string(),
            ]);
            a.extend(storage_args(&spec.storage));
            match spec.clock {
                ClusterClock::Scaled(s) => a.extend(["--time-scale".into(), s.to_string()]),
                ClusterClock::Virtual { start_ms } => a.extend([
                    "--clock".into(),
                    "virtual".into(),
                    "--virtual-start-ms".into(),
                    start_ms.to_string(),
                ]),
            }
        }
        NodeKind::Coordinator => {
            a.extend([
                "coordinator".into(),
                "--listen".into(),
                node.addr.to_string(),
                // The link draws and retry jitter replay from the run's seed, as in process.
                "--seed".into(),
                spec.seed.to_string(),
            ]);
            for r in inner.nodes.iter().filter(|n| n.kind == NodeKind::Region) {
                a.extend(["--region".into(), format!("{}={}", r.name, r.url())]);
            }
            if spec.links != amisim_chaos::LinkTable::default() {
                let path = spec.data.join("links.toml");
                let text = toml::to_string(&spec.links)
                    .map_err(|e| invalid(format!("cannot write the link table as TOML: {e}")))?;
                std::fs::write(&path, text)
                    .map_err(|e| io_err(format!("cannot write {}", path.display()), e))?;
                a.extend(["--links-config".into(), path.display().to_string()]);
            }
        }
    }
    if let Some(f) = &spec.accounts_file {
        a.extend(["--accounts".into(), f.display().to_string()]);
    }
    Ok(a)
}

/// Sets the clock skew of `node`'s child through its `Region.SetClockSkew` (as the operator
/// when the cluster has an accounts file).
pub(crate) async fn set_clock_skew(inner: &Inner, node: &Node, skew_ms: i64) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_lazy();
    let auth = match &inner.spec.accounts {
        Some(a) => amisim_coordinator::OperatorAuth::from_accounts(a),
        None => amisim_coordinator::OperatorAuth::none(),
    };
    let mut client = amisim_coordinator::operator::region_client(channel, auth);
    let call = client.set_clock_skew(amisim_proto::RegionSetClockSkewRequest { skew_ms });
    tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .map_err(|_| format!("{} did not answer SetClockSkew", node.name))?
        .map_err(|s| format!("SetClockSkew on {}: {}", node.name, s.message()))?;
    Ok(())
}

/// The storage flags of a region child: the same sled cache and checkpoint interval as an
/// in-process node of the same spec (`amisim region` keeps its checkpoints in
/// `DATA/checkpoints`).
fn storage_args(storage: &amisim_region::StorageConfig) -> Vec<String> {
    vec![
        "--sled-cache-mb".into(),
        storage.sled_cache_mb.to_string(),
        "--checkpoint-every".into(),
        storage.checkpoint_every.to_string(),
    ]
}

/// Spawns `node`'s child and waits for its `listening on` line.
pub(crate) async fn spawn(inner: &Inner, node: &Node, binary: &Path) -> Result<ChildRun, LabError> {
    let spec = &inner.spec;
    std::fs::create_dir_all(&spec.data)
        .map_err(|e| io_err(format!("cannot create {}", spec.data.display()), e))?;
    let log_path = spec.data.join(format!("{}.log", node.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io_err(format!("cannot open {}", log_path.display()), e))?;
    let stderr = log
        .try_clone()
        .map_err(|e| io_err(format!("cannot open {}", log_path.display()), e))?;
    let args = args(inner, node)?;
    let mut command = Command::new(binary);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    // Not the pinned CPUs of the runtime thread that starts it (ADR 0014).
    amisim_region::affinity::child_gets_every_cpu(&mut command);
    let mut child = command.spawn().map_err(|e| {
        io_err(
            format!("cannot run {} {}", binary.display(), args.join(" ")),
            e,
        )
    })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let mut run = ChildRun {
        child: Some(child),
        pid,
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(stdout) = stdout {
        let mut log = log;
        std::thread::Builder::new()
            .name(format!("amisim-lab-{}-stdout", node.name))
            .spawn(move || {
                let mut ready = Some(ready_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "{line}");
                    if line.contains("listening on") {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            })
            .map_err(|e| io_err("cannot start a thread to read a child's output".into(), e))?;
    }
    match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
        Ok(Ok(())) => {
            tracing::info!(target: "amisim::lab", node = %node.name, pid, url = %node.url(), "child serving");
            Ok(run)
        }
        outcome => {
            let why = if outcome.is_err() {
                "did not start listening in time"
            } else {
                "exited before listening"
            };
            run.child.as_mut().map(Child::kill);
            let _ = run.reaped(TERM_TIMEOUT).await;
            Err(node_err(
                node.name.clone(),
                format!("{why}; see {}", log_path.display()),
            ))
        }
    }
}

/// Ends a child: SIGKILL (a crash) or SIGTERM (clean, SIGKILL after a while).
pub(crate) async fn stop(node: &Node, mut run: ChildRun, clean: bool) -> Result<(), LabError> {
    if clean {
        // A stopped process does not handle SIGTERM until it runs again.
        let _ = signal(run.pid, libc::SIGCONT);
        if signal(run.pid, libc::SIGTERM).is_ok() && run.reaped(TERM_TIMEOUT).await {
            return Ok(());
        }
        tracing::warn!(target: "amisim::lab", node = %node.name, "child did not stop on SIGTERM; killing it");
    }
    if let Some(child) = run.child.as_mut() {
        let _ = child.kill();
    }
    if !run.reaped(TERM_TIMEOUT).await {
        return Err(node_err(
            node.name.clone(),
            format!("pid {} did not die of SIGKILL", run.pid),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_children_get_the_specs_storage_flags() {
        let storage = amisim_region::StorageConfig {
            sled_cache_mb: 8,
            checkpoint_every: 5_000,
            checkpoint_dir: None,
        };
        assert_eq!(
            storage_args(&storage),
            ["--sled-cache-mb", "8", "--checkpoint-every", "5000"]
        );
    }
}
