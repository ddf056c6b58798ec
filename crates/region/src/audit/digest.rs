//! Signed digests: the node's ed25519 key and the digests it signs, stored next to the log.
//!
//! A hash chain shows that an event in the middle was altered, removed or moved, but a log cut
//! short at the end is still a valid chain. So every [`DigestSigner::every`] events (and at
//! clean shutdown) the node signs "the log of REGION had HASH at SEQ" with its own key, outside
//! the log; [`super::verify_log`] then checks that the log still reaches every signed seq with
//! the signed hash. (CloudTrail's digest files play this role for its log files.)
//!
//! # Files in the region's data directory (beside sled's own files)
//!
//! - [`SIGNING_KEY_FILE`] (`signing.key`): the 32-byte ed25519 secret key in lowercase hex and a
//!   newline, mode 0600. Created at the node's first start from the operating system's random
//!   source (not from the node's seed: the key is a secret, not part of the simulation, and
//!   signatures never influence state). Export the public key (`amisim audit public-key`,
//!   `Audit.GetPublicKey`) and keep it, with the digests, away from the machine: a verifier
//!   that pins it (`amisim audit verify --public-key`) cannot be fooled by a replaced key.
//! - [`DIGESTS_FILE`] (`digests.jsonl`): one JSON [`DigestRecord`] per line, oldest first,
//!   appended and fsynced. Each digest names the previous one's signature, so the digests form
//!   a chain of their own.
//! - [`REQUEST_DIGESTS_FILE`] (`request-digests.jsonl`): the same for the request log
//!   (ADR 0007), signed by the same key with another first line (`amisim-request-digest-v1`),
//!   so a state-log digest can never pass for a request-log one. Kept beside, not inside,
//!   `requests/` (sled's directory).
//!
//! The signed bytes are documented in `audit.proto` (`SignedDigest`) so any language can verify.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use amisim_log::{Event, EventLog, Head, LogError};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::AuditError;

/// The secret key file in a region's data directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// The signed digests file in a region's data directory.
pub const DIGESTS_FILE: &str = "digests.jsonl";
/// The signed digests of the request log, in a region's data directory.
pub const REQUEST_DIGESTS_FILE: &str = "request-digests.jsonl";
/// [`DigestRecord::log`] of a request-log digest.
pub const REQUESTS_LOG: &str = "requests";
/// Digests are signed every this many events by default (`--digest-every`).
pub const DEFAULT_DIGEST_EVERY: u64 = 1000;
/// First line of the signed bytes; names the format version.
const DOMAIN: &str = "amisim-digest-v1";
/// First line of the signed bytes of a request-log digest.
const REQUEST_DOMAIN: &str = "amisim-request-digest-v1";

/// One signed digest (a line of [`DIGESTS_FILE`]; `SignedDigest` in `audit.proto`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRecord {
    pub region: String,
    pub seq: u64,
    /// Hex hash of the event at `seq`.
    pub head_hash: String,
    /// Simulated time of the event at `seq`.
    pub sim_time_ms: u64,
    /// Hex signature of the previous digest (empty for the first).
    pub prev_signature: String,
    /// Hex ed25519 signature over [`DigestRecord::signed_bytes`].
    pub signature: String,
    /// Hex public key that signed it.
    pub public_key: String,
    /// Which log: empty for the state log, [`REQUESTS_LOG`] for the request log. Not written
    /// for the state log, so older digest files read unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

impl DigestRecord {
    /// The bytes the signature covers (see `SignedDigest` in `audit.proto`).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let domain = if self.log.is_empty() {
            DOMAIN
        } else {
            REQUEST_DOMAIN
        };
        format!(
            "{domain}\n{}\n{}\n{}\n{}\n{}",
            self.region, self.seq, self.head_hash, self.sim_time_ms, self.prev_signature
        )
        .into_bytes()
    }

    /// Checks the signature with `key`.
    pub fn check_signature(&self, key: &VerifyingKey) -> Result<(), String> {
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "the signature is not 64 hex-encoded bytes".to_string())?;
        key.verify(&self.signed_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| "the signature does not verify with the public key".to_string())
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> amisim_proto::SignedDigest {
        amisim_proto::SignedDigest {
            region: self.region.clone(),
            seq: self.seq,
            head_hash: self.head_hash.clone(),
            sim_time_ms: self.sim_time_ms,
            prev_signature: self.prev_signature.clone(),
            signature: self.signature.clone(),
            public_key: self.public_key.clone(),
            log: self.log.clone(),
        }
    }
}

/// Parses a hex public key (64 hex digits).
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, AuditError> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key("a public key is 64 hex digits (32 bytes)".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| AuditError::Key(format!("not a valid ed25519 public key: {e}")))
}

/// Reads the signing key of the data directory `dir` (`None` if there is none).
pub fn read_signing_key(dir: &Path) -> Result<Option<SigningKey>, AuditError> {
    let path = dir.join(SIGNING_KEY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io(&path, e)),
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            AuditError::Key(format!(
                "{} does not hold 64 hex digits (a 32-byte ed25519 key)",
                path.display()
            ))
        })?;
    Ok(Some(SigningKey::from_bytes(&bytes)))
}

/// Reads every digest of the data directory `dir`, oldest first (none if there is no file).
pub fn read_digests(dir: &Path) -> Result<Vec<DigestRecord>, AuditError> {
    read_digests_file(&dir.join(DIGESTS_FILE))
}

/// Reads every request-log digest of the data directory `dir`, oldest first.
pub fn read_request_digests(dir: &Path) -> Result<Vec<DigestRecord>, AuditError> {
    read_digests_file(&dir.join(REQUEST_DIGESTS_FILE))
}

/// Reads a digests file, oldest first (none if there is no file).
pub fn read_digests_file(path: &Path) -> Result<Vec<DigestRecord>, AuditError> {
    let path = path.to_path_buf();
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(&path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| AuditError::io(&path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| AuditError::Digests {
            line: i + 1,
            reason: e.to_string(),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Signs and stores the digests of one region's log. Shared as `Arc<DigestSigner>`.
#[derive(Debug)]
pub struct DigestSigner {
    region: String,
    /// [`DigestRecord::log`] of what it signs.
    log: String,
    /// The digests file.
    path: PathBuf,
    every: u64,
    key: SigningKey,
    public_key: String,
    inner: Mutex<SignerFile>,
}

#[derive(Debug)]
struct SignerFile {
    file: File,
    last: Option<DigestRecord>,
    /// A write failed: digests stop (the node goes on; `VerifyLog` reports it).
    failed: Option<String>,
}

impl DigestSigner {
    /// Opens the signer of the data directory `dir`: loads its key (creating it at first start)
    /// and the last digest. `every` 0 reads as [`DEFAULT_DIGEST_EVERY`].
    pub fn open(dir: &Path, region: &str, every: u64) -> Result<DigestSigner, AuditError> {
        Self::open_for(dir, region, every, "")
    }

    /// The signer of the request log of `dir` (same key, [`REQUEST_DIGESTS_FILE`]).
    pub fn open_requests(dir: &Path, region: &str, every: u64) -> Result<DigestSigner, AuditError> {
        Self::open_for(dir, region, every, REQUESTS_LOG)
    }

    fn open_for(
        dir: &Path,
        region: &str,
        every: u64,
        log: &str,
    ) -> Result<DigestSigner, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let key = match read_signing_key(dir)? {
            Some(key) => key,
            None => create_key(dir)?,
        };
        let path = dir.join(if log.is_empty() {
            DIGESTS_FILE
        } else {
            REQUEST_DIGESTS_FILE
        });
        let last = read_digests_file(&path)?.pop();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| AuditError::io(&path, e))?;
        let public_key = hex::encode(key.verifying_key().as_bytes());
        tracing::info!(
            region,
            log,
            public_key = %public_key,
            last_digest_seq = last.as_ref().map(|d| d.seq).unwrap_or(0),
            "audit digests: signing key loaded"
        );
        Ok(DigestSigner {
            region: region.to_string(),
            log: log.to_string(),
            path,
            every: if every == 0 {
                DEFAULT_DIGEST_EVERY
            } else {
                every
            },
            key,
            public_key,
            inner: Mutex::new(SignerFile {
                file,
                last,
                failed: None,
            }),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// [`DigestRecord::log`] of the digests it signs (empty: the state log).
    pub fn log(&self) -> &str {
        &self.log
    }

    /// Digests are signed every this many events.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Hex of the public key.
    pub fn public_key_hex(&self) -> &str {
        &self.public_key
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Every digest signed so far, oldest first (read back from the file).
    pub fn digests(&self) -> Result<Vec<DigestRecord>, AuditError> {
        // Hold the lock so no line is half written while reading.
        let _guard = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        read_digests_file(&self.path)
    }

    /// Why signing stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.lock().ok().and_then(|i| i.failed.clone())
    }

    /// Signs that the log's event `seq` has `hash` (a no-op if a digest at or beyond `seq`
    /// exists). Stored durably before it returns.
    pub fn sign(&self, seq: u64, hash: &[u8], sim_time_ms: u64) -> Result<(), AuditError> {
        let mut inner = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        if seq == 0 || inner.last.as_ref().is_some_and(|d| d.seq >= seq) {
            return Ok(());
        }
        let mut record = DigestRecord {
            region: self.region.clone(),
            seq,
            head_hash: hex::encode(hash),
            sim_time_ms,
            prev_signature: inner
                .last
                .as_ref()
                .map(|d| d.signature.clone())
                .unwrap_or_default(),
            signature: String::new(),
            public_key: self.public_key.clone(),
            log: self.log.clone(),
        };
        record.signature = hex::encode(self.key.sign(&record.signed_bytes()).to_bytes());
        let mut line = serde_json::to_string(&record)
            .map_err(|e| AuditError::Key(format!("cannot encode a digest: {e}")))?;
        line.push('\n');
        let path = self.path.clone();
        let written = inner
            .file
            .write_all(line.as_bytes())
            .and_then(|()| inner.file.sync_data());
        if let Err(e) = written {
            let e = AuditError::io(&path, e);
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        tracing::debug!(region = %self.region, log = %self.log, seq, "audit digest signed");
        inner.last = Some(record);
        Ok(())
    }

    /// Signs the events of a fresh batch that fall on a multiple of [`Self::every`].
    pub fn after_append(&self, events: &[Event]) {
        for e in events.iter().filter(|e| e.seq % self.every == 0) {
            if let Err(err) = self.sign(e.seq, &e.hash, e.sim_time_ms) {
                tracing::error!(region = %self.region, seq = e.seq, error = %err,
                    "cannot store a signed audit digest");
            }
        }
    }

    /// Signs the head of `log` (clean shutdown).
    pub fn seal(&self, log: &dyn EventLog) -> Result<(), AuditError> {
        let head = log.head();
        if head.seq == 0 {
            return Ok(());
        }
        let sim_time_ms = log
            .read_range(head.seq, head.seq)?
            .first()
            .map(|e| e.sim_time_ms)
            .unwrap_or(0);
        self.sign(head.seq, &head.hash, sim_time_ms)
    }
}

fn create_key(dir: &Path) -> Result<SigningKey, AuditError> {
    let secret: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&secret);
    let path = dir.join(SIGNING_KEY_FILE);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(|e| AuditError::io(&path, e))?;
    file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AuditError::io(&path, e))?;
    Ok(key)
}

/// An [`EventLog`] that signs a digest after every append that crosses a multiple of
/// [`DigestSigner::every`]. Everything else is the inner log's.
pub struct DigestingLog {
    inner: Arc<dyn EventLog>,
    signer: Arc<DigestSigner>,
}

impl DigestingLog {
    pub fn new(inner: Arc<dyn EventLog>, signer: Arc<DigestSigner>) -> Self {
        DigestingLog { inner, signer }
    }
}

impl EventLog for DigestingLog {
    fn head(&self) -> Head {
        self.inner.head()
    }

    fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        let stamped = self.inner.append(events)?;
        self.signer.after_append(&stamped);
        Ok(stamped)
    }

    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        self.inner.read_range(from, to)
    }

    fn subscribe_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe_head()
    }

    fn verify(&self) -> Result<Head, LogError> {
        self.inner.verify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_digests_survive_reopen_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let signer = DigestSigner::open(dir.path(), "us-east-1", 2).unwrap();
        let pk = signer.public_key_hex().to_string();
        signer.sign(2, &[1; 32], 10).unwrap();
        signer.sign(2, &[1; 32], 10).unwrap(); // no-op
        signer.sign(4, &[2; 32], 20).unwrap();
        drop(signer);
        let signer = DigestSigner::open(dir.path(), "us-east-1", 2).unwrap();
        assert_eq!(signer.public_key_hex(), pk);
        signer.sign(3, &[3; 32], 30).unwrap(); // behind the last: no-op
        let digests = signer.digests().unwrap();
        assert_eq!(digests.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(digests[1].prev_signature, digests[0].signature);
        let key = parse_public_key(&pk).unwrap();
        for d in &digests {
            d.check_signature(&key).unwrap();
        }
        let mut forged = digests[1].clone();
        forged.seq = 3;
        assert!(forged.check_signature(&key).is_err());
    }

    #[test]
    fn bad_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SIGNING_KEY_FILE), "zz").unwrap();
        assert!(matches!(
            DigestSigner::open(dir.path(), "us-east-1", 2),
            Err(AuditError::Key(_))
        ));
        assert!(parse_public_key("abc").is_err());
    }
}
