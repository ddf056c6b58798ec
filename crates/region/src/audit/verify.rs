//! Log verification for auditors: the hash chain, then the signed digests.

use amisim_log::{EventLog, Head, LogError};
use ed25519_dalek::VerifyingKey;

use super::digest::DigestRecord;
use super::AuditError;

/// The outcome of [`verify_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// True when the chain and every digest verify.
    pub ok: bool,
    /// The verified head; when not `ok`, the seq before the first bad one (hash zero if unknown).
    pub head: Head,
    /// The first seq that is altered, missing or out of place (when not `ok`).
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub reason: String,
    /// Digests checked before the verdict.
    pub digests_checked: u64,
    /// Seq of the last digest checked (0: none).
    pub last_digest_seq: u64,
}

impl VerifyReport {
    fn bad(seq: u64, reason: String, head: Head, checked: u64, last: u64) -> Self {
        VerifyReport {
            ok: false,
            head,
            first_bad_seq: Some(seq),
            reason,
            digests_checked: checked,
            last_digest_seq: last,
        }
    }
}

/// Verifies `log`: first the whole hash chain from seq 1 (the first seq that is altered,
/// missing or out of place), then every digest of `digests` (oldest first): its signature with
/// `key` (when given; pin an exported key here), its link to the previous digest, and that the
/// log still holds the signed hash at the signed seq. A digest beyond the log's head means the
/// tail was cut off: the first bad seq is then the head + 1.
///
/// Read digests BEFORE calling this on a live log: a digest is only signed once its seq is
/// durable, so every digest read earlier is within the head the chain check sees.
///
/// `Err` only for a failure to read (I/O), never for a bad log.
pub fn verify_log(
    log: &dyn EventLog,
    digests: &[DigestRecord],
    key: Option<&VerifyingKey>,
) -> Result<VerifyReport, AuditError> {
    verify_log_of(log, digests, key, "")
}

/// As [`verify_log`] for the log named `which` ([`DigestRecord::log`]: empty for the state log,
/// [`super::digest::REQUESTS_LOG`] for the request log): a digest of another log is refused.
pub fn verify_log_of(
    log: &dyn EventLog,
    digests: &[DigestRecord],
    key: Option<&VerifyingKey>,
    which: &str,
) -> Result<VerifyReport, AuditError> {
    let head = match log.verify() {
        Ok(head) => head,
        Err(LogError::Corrupt { seq, reason }) => {
            let before = Head {
                seq: seq.saturating_sub(1),
                hash: amisim_log::ZERO_HASH,
            };
            return Ok(VerifyReport::bad(seq, reason, before, 0, 0));
        }
        Err(e) => return Err(e.into()),
    };
    let mut prev: Option<&DigestRecord> = None;
    let mut checked = 0u64;
    for d in digests {
        let last_seq = prev.map(|p| p.seq).unwrap_or(0);
        let bad = |reason: String| Ok(VerifyReport::bad(d.seq, reason, head, checked, last_seq));
        if d.log != which {
            return bad(format!(
                "the digest for seq {} signs the {:?} log, not this one: digests of two logs \
                 were mixed",
                d.seq, d.log
            ));
        }
        if let Some(key) = key {
            if let Err(why) = d.check_signature(key) {
                return bad(format!(
                    "the signed digest for seq {} is not authentic ({why}): the digests were \
                     altered or signed by another key",
                    d.seq
                ));
            }
        }
        let expected_prev = prev.map(|p| p.signature.as_str()).unwrap_or("");
        if d.prev_signature != expected_prev || d.seq <= last_seq {
            return bad(format!(
                "the digest for seq {} does not follow the digest for seq {last_seq}: a digest \
                 was removed, reordered or inserted",
                d.seq
            ));
        }
        if d.seq > head.seq {
            return Ok(VerifyReport::bad(
                head.seq + 1,
                format!(
                    "missing: the log ends at seq {} but a signed digest covers seq {} (hash {}, \
                     sim time {}); the tail of the log was truncated",
                    head.seq,
                    d.seq,
                    d.head_hash,
                    amisim_core::time::iso(d.sim_time_ms)
                ),
                head,
                checked,
                last_seq,
            ));
        }
        let stored = log.read_range(d.seq, d.seq)?;
        let stored_hash = stored.first().map(|e| hex::encode(&e.hash));
        if stored_hash.as_deref() != Some(d.head_hash.as_str()) {
            return bad(format!(
                "altered: the hash of seq {} is {} but the signed digest says {}; the log was \
                 rewritten after seq {last_seq} (the previous digest), at or before seq {}",
                d.seq,
                stored_hash.unwrap_or_default(),
                d.head_hash,
                d.seq
            ));
        }
        checked += 1;
        prev = Some(d);
    }
    Ok(VerifyReport {
        ok: true,
        head,
        first_bad_seq: None,
        reason: String::new(),
        digests_checked: checked,
        last_digest_seq: prev.map(|p| p.seq).unwrap_or(0),
    })
}
