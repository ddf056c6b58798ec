//! The region node's audit trail (issue 5): what an auditor needs to trust the log and to use
//! its history.
//!
//! # Layout
//!
//! - [`digest`] — the node's ed25519 key and the signed digests, stored next to the log
//!   (`signing.key`, `digests.jsonl`), and [`DigestingLog`], the [`EventLog`] wrapper that
//!   signs every N events.
//! - [`verify`] — [`verify_log`]: the hash chain from seq 1, then every signed digest (so a
//!   truncated tail is caught too). Shared by `Audit.VerifyLog` and `amisim audit verify`.
//! - [`as_of`] — point-in-time reads: projection checkpoints every N events, so a read folds
//!   from the nearest one, not from seq 1.
//! - [`stream`] — server-side filters of `Audit.StreamEvents`.
//! - [`time`] — a point in history: a seq or an ISO 8601 simulated time.
//! - [`requests`] — request records (ADR 0007): the CloudTrail-shaped record of every API
//!   call, queued off the request path into the node's separate request log.
//! - [`lookup`] — LookupEvents and export over the request log and the state log's
//!   `SystemTransition` records.
//! - [`service`] — the `Audit` gRPC service (`audit.proto`).
//!
//! A node gets its [`AuditTrail`] from [`RegionNode::attach_audit`](crate::RegionNode) (the CLI
//! attaches one with a signer for every node on a data directory); a node without one (an
//! in-memory log in tests) still verifies, streams and answers as-of reads, only without
//! signed digests.
//!
//! [`EventLog`]: amisim_log::EventLog

pub mod as_of;
pub mod digest;
pub mod lookup;
pub mod requests;
pub mod resources;
pub mod service;
pub mod stream;
pub mod time;
pub mod verify;

use std::path::Path;
use std::sync::Arc;

pub use as_of::{Checkpoints, DEFAULT_CHECKPOINT_EVERY};
pub use digest::{
    parse_public_key, read_digests, read_request_digests, read_signing_key, DigestRecord,
    DigestSigner, DigestingLog, DEFAULT_DIGEST_EVERY, DIGESTS_FILE, REQUESTS_LOG,
    REQUEST_DIGESTS_FILE, SIGNING_KEY_FILE,
};
/// The public key type of the digests (`ed25519-dalek`), for callers of [`verify_log`].
pub use ed25519_dalek::VerifyingKey;
pub use lookup::{Attribute, Export, Lookup, LookupError, Record};
pub use requests::{
    default_retention, set_default_retention, ApiCall, RecorderOptions, RequestRecorder,
    DEFAULT_QUEUE_CAPACITY, DEFAULT_RETENTION, REQUESTS_DIR,
};
pub use service::AuditService;
pub use time::{parse_duration, parse_iso_ms, parse_token, Point};
pub use verify::{verify_log, verify_log_of, VerifyReport};

/// Why an audit operation failed (I/O, a bad key or digest file) — never "the log is bad",
/// which is a [`VerifyReport`].
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit signing key: {0}")]
    Key(String),
    #[error("digests file, line {line}: {reason}")]
    Digests { line: usize, reason: String },
    #[error("event log: {0}")]
    Log(#[from] amisim_log::LogError),
    #[error("an audit lock was poisoned by a panic")]
    Poisoned,
}

impl AuditError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The audit side of one node: its digest signers (if it has a data directory: one for the
/// state log, one for the request log, same key) and its projection checkpoints.
#[derive(Debug, Default)]
pub struct AuditTrail {
    signer: Option<Arc<DigestSigner>>,
    request_signer: Option<Arc<DigestSigner>>,
    checkpoints: Checkpoints,
}

impl AuditTrail {
    /// A trail without signed digests (in-memory logs).
    pub fn new() -> Self {
        Self::default()
    }

    /// A trail that signs digests with `signer`.
    pub fn with_signer(signer: Arc<DigestSigner>) -> Self {
        AuditTrail {
            signer: Some(signer),
            request_signer: None,
            checkpoints: Checkpoints::default(),
        }
    }

    /// Also signs the request log's digests with `signer` (the node's Audit service binds it to
    /// the node's [`RequestRecorder`]; or give it in [`RecorderOptions::signer`]).
    pub fn with_request_signer(mut self, signer: Arc<DigestSigner>) -> Self {
        self.request_signer = Some(signer);
        self
    }

    /// The signer of the request log's digests, if any.
    pub fn request_signer(&self) -> Option<&Arc<DigestSigner>> {
        self.request_signer.as_ref()
    }

    /// Checkpoints every `every` events instead of [`DEFAULT_CHECKPOINT_EVERY`].
    pub fn with_checkpoint_every(mut self, every: u64) -> Self {
        self.checkpoints = Checkpoints::new(every);
        self
    }

    pub fn signer(&self) -> Option<&Arc<DigestSigner>> {
        self.signer.as_ref()
    }

    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }
}

/// Opens the signers of the data directory `dir` and wraps `log` so that it signs a digest every
/// `digest_every` events. Attach the returned trail to the node started on the returned log; its
/// [`AuditTrail::request_signer`] signs the request log's digests (`request-digests.jsonl`, every
/// `digest_every` records too) once the node's Audit service binds it to the node's
/// [`RequestRecorder`].
pub fn open_signed(
    dir: &Path,
    region: &str,
    digest_every: u64,
    log: Arc<dyn amisim_log::EventLog>,
) -> Result<(Arc<dyn amisim_log::EventLog>, Arc<AuditTrail>), AuditError> {
    let signer = Arc::new(DigestSigner::open(dir, region, digest_every)?);
    let request_signer = Arc::new(DigestSigner::open_requests(dir, region, digest_every)?);
    let log: Arc<dyn amisim_log::EventLog> = Arc::new(DigestingLog::new(log, signer.clone()));
    let trail = AuditTrail::with_signer(signer).with_request_signer(request_signer);
    Ok((log, Arc::new(trail)))
}
