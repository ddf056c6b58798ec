//! `amisim audit`: the auditor's offline tools on a region's data directory (the node must be
//! stopped: sled locks the directory while a node runs; use the `Audit` gRPC service online).
//!
//! - `verify`: the hash chain from seq 1 and every signed digest, of the state log and of the
//!   request log (each with its own digests); exit 1 naming, for each log, the first seq that is
//!   altered, missing (also a truncated tail, via the digests) or out of place.
//! - `public-key`: the node's ed25519 public key, to keep off the machine and pin in `verify`.
//! - `lookup`, `export`: the CloudTrail-shaped records ([`crate::trail`], ADR 0007).
//! - `as-of`: DescribeImages / DescribeSnapshots as they were at a seq, a time or a token, from a
//!   node or from the coordinator (every region; [`crate::trail`]).
//!
//! Also the process-wide `--digest-every` and `--record-reads` settings of the nodes `dev` and
//! `region` start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use amisim_log::{DiskLog, SledOptions};
use amisim_region::audit;
use anyhow::Context;
use serde_json::json;

/// Digest interval of the nodes this process starts (set from `--digest-every`).
static DIGEST_EVERY: AtomicU64 = AtomicU64::new(audit::DEFAULT_DIGEST_EVERY);

pub fn set_digest_every(every: u64) {
    DIGEST_EVERY.store(every.max(1), Ordering::Relaxed);
}

pub fn digest_every() -> u64 {
    DIGEST_EVERY.load(Ordering::Relaxed)
}

/// Whether the nodes this process starts record read-only calls (set from `--record-reads`).
static RECORD_READS: AtomicBool = AtomicBool::new(true);

pub fn set_record_reads(record: bool) {
    RECORD_READS.store(record, Ordering::Relaxed);
}

pub fn record_reads() -> bool {
    RECORD_READS.load(Ordering::Relaxed)
}

/// Audit a region's logs: verify them, export the signing key, look up and export the
/// CloudTrail-shaped records of its API calls.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    Verify(VerifyArgs),
    PublicKey(PublicKeyArgs),
    Lookup(crate::trail::LookupArgs),
    Export(crate::trail::ExportArgs),
    AsOf(crate::trail::AsOfArgs),
}

/// Verify a region's log: the hash chain from seq 1, then the signed digests (which show a
/// truncated tail). Exit 1 naming the first seq that is altered, missing or out of place.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The region's data directory (for `amisim dev`: DATA/<region>).
    #[arg(long, env = "AMISIM_DATA", value_name = "DIR")]
    pub data: PathBuf,

    /// The region's public key as exported earlier (`amisim audit public-key`, 64 hex digits).
    /// Default: the key in DIR (which an attacker with the disk could have replaced).
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,

    /// Output: one line, or a JSON object.
    #[arg(long, value_enum, default_value_t = crate::replay::Format::Table)]
    pub format: crate::replay::Format,
}

/// Print a region node's ed25519 public key (hex), which signs its log digests.
#[derive(Debug, clap::Args)]
pub struct PublicKeyArgs {
    /// The region's data directory.
    #[arg(long, env = "AMISIM_DATA", value_name = "DIR")]
    pub data: PathBuf,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify(a) => verify(a),
        AuditCommand::Lookup(a) => crate::trail::lookup(a).await,
        AuditCommand::Export(a) => crate::trail::export(a),
        AuditCommand::AsOf(a) => crate::trail::as_of(a).await,
        AuditCommand::PublicKey(a) => {
            let key = audit::read_signing_key(&a.data)?.with_context(|| {
                format!(
                    "no signing key in {} (a node creates {} at its first start)",
                    a.data.display(),
                    audit::SIGNING_KEY_FILE
                )
            })?;
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
            Ok(())
        }
    }
}

/// Opens a stopped region's log read-only in spirit (nothing is written), without verifying.
pub fn open_log(dir: &Path) -> anyhow::Result<DiskLog> {
    anyhow::ensure!(
        dir.is_dir(),
        "no event log at {}: not a directory",
        dir.display()
    );
    let opts = SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    };
    DiskLog::open_existing(dir, opts).with_context(|| {
        format!(
            "cannot open the event log at {} (is a node still running on it?)",
            dir.display()
        )
    })
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let dir = &args.data;
    let log = open_log(dir)?;
    let key = match &args.public_key {
        Some(hex_key) => Some(audit::parse_public_key(hex_key)?),
        None => audit::read_signing_key(dir)?.map(|k| k.verifying_key()),
    };
    let digests = audit::read_digests(dir)?;
    let report = audit::verify_log(&log, &digests, key.as_ref())?;
    let pinned = args.public_key.is_some();
    // The request log (ADR 0007): its own hash chain and its own signed digests.
    let requests = crate::trail::verify_requests(dir, key.as_ref())?;
    let report_json = |r: &audit::VerifyReport, n: usize| {
        json!({
            "ok": r.ok,
            "head_seq": r.head.seq,
            "head_hash": hex::encode(r.head.hash),
            "first_bad_seq": r.first_bad_seq,
            "reason": r.reason,
            "digests": n,
            "digests_checked": r.digests_checked,
            "last_digest_seq": r.last_digest_seq,
        })
    };
    match args.format {
        crate::replay::Format::Json => {
            let mut out = report_json(&report, digests.len());
            out["public_key_pinned"] = json!(pinned);
            out["request_log"] = match &requests {
                Some((r, n)) => report_json(r, *n),
                None => serde_json::Value::Null,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        crate::replay::Format::Table => {
            let line = |what: &str, r: &audit::VerifyReport| {
                if r.ok {
                    println!(
                        "ok: {what}: hash chain verified from seq 1 to {} (hash {}); {} signed \
                         digest(s) verified{}, last at seq {}",
                        r.head.seq,
                        hex::encode(r.head.hash),
                        r.digests_checked,
                        if pinned { " with the given key" } else { "" },
                        r.last_digest_seq
                    );
                } else {
                    println!(
                        "BAD: {what}: first bad seq {}: {}",
                        r.first_bad_seq.unwrap_or(0),
                        r.reason
                    );
                }
            };
            line("event log", &report);
            if let Some((r, _)) = &requests {
                line("request log", r);
            }
            if key.is_none() {
                println!(
                    "warning: no signing key in {}: digests not checked",
                    dir.display()
                );
            }
        }
    }
    let mut bad = Vec::new();
    if let Some(seq) = report.first_bad_seq {
        bad.push(format!("event log: first bad seq {seq}: {}", report.reason));
    }
    if let Some((r, _)) = &requests {
        if let Some(seq) = r.first_bad_seq {
            bad.push(format!("request log: first bad seq {seq}: {}", r.reason));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "the logs at {} are not intact: {}",
            dir.display(),
            bad.join("; ")
        )
    }
}
