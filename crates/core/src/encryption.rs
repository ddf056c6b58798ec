//! EBS encryption (EC2_SEMANTICS.md §4.2, §5.14): the per-account settings of a region
//! (EnableEbsEncryptionByDefault, DisableEbsEncryptionByDefault, GetEbsEncryptionByDefault,
//! GetEbsDefaultKmsKeyId, ModifyEbsDefaultKmsKeyId, ResetEbsDefaultKmsKeyId) and the rules that
//! give a new volume or a copied snapshot its key:
//!
//! - [`volume_key`]: CreateVolume and RunInstances.
//! - [`copy_key`]: each snapshot of CopySnapshot / CopyImage, the copy outcome table of §4.2.
//! - [`resource_key_usable`]: may an account read a resource under this key (a copy source, a
//!   snapshot a volume is restored from).
//!
//! A key EC2 is given is resolved and checked when it is used ([`crate::kms::find_for_use`]):
//! it must exist in the region, be `Enabled` and symmetric, and its policy must admit the
//! account. The resource records the key ARN. Toggling the settings never changes existing
//! resources.
//!
//! `[sim]` A key of an existing resource that KMS never recorded in this region (a log written
//! before KMS was simulated, or a hand-made test fixture) counts as usable by anyone who may
//! read the resource; a recorded key — deleted ones included — is checked.

use amisim_proto as pb;
use amisim_proto::event::Payload;
use serde::{Deserialize, Serialize};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::kms::{self, KeyProblem};
use crate::state::State;
use crate::{Ctx, Decision, ReadCtx, Reply};

/// The EBS encryption settings of one account in a region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsSettings {
    /// Encryption by default.
    pub by_default: bool,
    /// The default key as given to ModifyEbsDefaultKmsKeyId, in ARN form (empty: the AWS
    /// managed key).
    pub default_kms_key_id: String,
}

/// The settings of `account` (defaults: off, AWS managed key).
pub fn settings(state: &State, account: &str) -> EbsSettings {
    state
        .ebs_encryption
        .get(account)
        .cloned()
        .unwrap_or_default()
}

/// True if encryption by default is on for `account`.
pub fn by_default(state: &State, account: &str) -> bool {
    settings(state, account).by_default
}

/// The default key as GetEbsDefaultKmsKeyId shows it: the key set by ModifyEbsDefaultKmsKeyId,
/// else the AWS managed key's alias ARN (`[unconfirmed]` format, EC2_SEMANTICS.md §5.14).
pub fn default_key_shown(state: &State, region: &str, account: &str) -> String {
    let s = settings(state, account);
    if s.default_kms_key_id.is_empty() {
        kms::alias_arn(region, account, kms::AWS_EBS_ALIAS)
    } else {
        s.default_kms_key_id
    }
}

/// The account's default EBS key, resolved and checked now: its key ARN.
pub fn default_key(state: &State, region: &str, account: &str) -> Result<String, KeyProblem> {
    let s = settings(state, account);
    if s.default_kms_key_id.is_empty() {
        return Ok(kms::aws_managed_key_arn(region, account));
    }
    kms::find_for_use(state, region, account, &s.default_kms_key_id).map(|k| k.arn)
}

/// A key EC2 was asked to use (`KmsKeyId`), resolved and checked now: its key ARN.
pub fn requested_key(
    state: &State,
    region: &str,
    account: &str,
    reference: &str,
) -> Result<String, KeyProblem> {
    kms::find_for_use(state, region, account, reference).map(|k| k.arn)
}

/// Whether `account` may read a resource of this region encrypted under `key` (an ARN as the
/// resource recorded it): the key, if KMS recorded it, must be usable by the account. A key KMS
/// never recorded passes (`[sim]`, see the module doc).
pub fn resource_key_usable(
    state: &State,
    region: &str,
    account: &str,
    key: &str,
) -> Result<(), KeyProblem> {
    match kms::recorded(state, region, account, key) {
        Some(k) => kms::check_use(&k, account),
        None => Ok(()),
    }
}

/// The snapshot a new volume or copy comes from, as the rules need it.
#[derive(Debug, Clone, Copy)]
pub struct SourceSnapshot<'a> {
    pub owner_id: &'a str,
    pub encrypted: bool,
    pub kms_key_id: &'a str,
}

impl<'a> From<&'a crate::state::Snapshot> for SourceSnapshot<'a> {
    fn from(s: &'a crate::state::Snapshot) -> Self {
        SourceSnapshot {
            owner_id: &s.owner_id,
            encrypted: s.encrypted,
            kms_key_id: &s.kms_key_id,
        }
    }
}

/// The key of a new volume (CreateVolume, RunInstances; EC2_SEMANTICS.md §4.2, §4.1), or `None`
/// for an unencrypted one:
/// - a `KmsKeyId` given → that key (the source snapshot's key must still be readable);
/// - from an encrypted snapshot of the account → the snapshot's key;
/// - from an encrypted snapshot shared with the account → the account's default key (the
///   owner's key must admit the account to decrypt);
/// - otherwise encrypted when asked (`Encrypted=true`) or by default (EBD on), under the default
///   key. `Encrypted=false` never removes encryption.
pub fn volume_key(
    state: &State,
    region: &str,
    account: &str,
    encrypted: Option<bool>,
    kms_key_id: &str,
    snapshot: Option<SourceSnapshot<'_>>,
) -> Result<Option<String>, KeyProblem> {
    let encrypted_source = snapshot.filter(|s| s.encrypted);
    if let Some(s) = encrypted_source {
        resource_key_usable(state, region, account, s.kms_key_id)?;
    }
    if !kms_key_id.is_empty() {
        return requested_key(state, region, account, kms_key_id).map(Some);
    }
    match encrypted_source {
        Some(s) if s.owner_id == account => Ok(Some(s.kms_key_id.to_string())),
        Some(_) => default_key(state, region, account).map(Some),
        None if encrypted == Some(true) || by_default(state, account) => {
            default_key(state, region, account).map(Some)
        }
        None => Ok(None),
    }
}

/// The key of one copied snapshot: the copy outcome table of EC2_SEMANTICS.md §4.2, evaluated in
/// the destination `region` when the copy starts. `None`: unencrypted.
///
/// | source | `Encrypted` | `KmsKeyId` | result |
/// |---|---|---|---|
/// | unencrypted | omitted, EBD off | — | unencrypted |
/// | unencrypted | omitted, EBD on | — | destination default key |
/// | unencrypted | true | omitted | destination default key |
/// | any | true | K | K |
/// | encrypted, own, same region | omitted/true | omitted | the source's key |
/// | encrypted, own, other region | omitted/true | omitted | destination default key `[unconfirmed]` |
/// | encrypted, shared | omitted/true | omitted | the requester's destination default key |
///
/// `Encrypted=false` on an encrypted source is refused before (`InvalidRequest`); on an
/// unencrypted source it is the first row, or the second with EBD on (`[sim]`: EBD cannot be
/// opted out of). A key that is missing, of another region, not `Enabled` or whose policy does
/// not admit the requester is a [`KeyProblem`]: the copy fails. (Read access to the source's
/// key is checked where the source is read, in its region.)
pub fn copy_key(
    state: &State,
    region: &str,
    requester: &str,
    encrypted: Option<bool>,
    kms_key_id: &str,
    source: SourceSnapshot<'_>,
    same_region: bool,
) -> Result<Option<String>, KeyProblem> {
    if !kms_key_id.is_empty() {
        return requested_key(state, region, requester, kms_key_id).map(Some);
    }
    if source.encrypted {
        if same_region && source.owner_id == requester {
            resource_key_usable(state, region, requester, source.kms_key_id)?;
            return Ok(Some(source.kms_key_id.to_string()));
        }
        return default_key(state, region, requester).map(Some);
    }
    if encrypted == Some(true) || by_default(state, requester) {
        return default_key(state, region, requester).map(Some);
    }
    Ok(None)
}

/// The error CreateVolume answers for a key it cannot use (EC2_SEMANTICS.md §7: the synchronous
/// path). `[unconfirmed]` wording.
pub fn key_revoked(problem: KeyProblem) -> Ec2Error {
    let why = match problem {
        KeyProblem::NotFound => "does not exist in this region",
        KeyProblem::OtherRegion => "is in another region",
        KeyProblem::Disabled => "is disabled",
        KeyProblem::PendingDeletion => "is pending deletion",
        KeyProblem::NotAdmitted => "does not allow this account to use it",
        KeyProblem::NotSymmetric => "is not a symmetric encryption key",
    };
    Ec2Error::new(
        ErrorCode::CustomerKeyHasBeenRevoked,
        format!("The KMS key cannot be accessed: it {why}."),
    )
}

// -------------------------------------------------------------------------------------------
// The settings actions
// -------------------------------------------------------------------------------------------

fn set_by_default(state: &State, ctx: &Ctx<'_>, on: bool) -> Vec<Payload> {
    if by_default(state, ctx.account_id) == on {
        return vec![];
    }
    vec![Payload::EbsEncryptionByDefaultChanged(
        pb::EbsEncryptionByDefaultChanged {
            account_id: ctx.account_id.to_string(),
            enabled: on,
        },
    )]
}

/// EnableEbsEncryptionByDefault.
pub fn enable_by_default(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::EnableEbsEncryptionByDefaultRequest,
) -> Ec2Result<Decision> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(Decision::new(
        set_by_default(state, ctx, true),
        Reply::EnableEbsEncryptionByDefault(pb::EnableEbsEncryptionByDefaultResponse {
            ebs_encryption_by_default: true,
        }),
    ))
}

/// DisableEbsEncryptionByDefault.
pub fn disable_by_default(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::DisableEbsEncryptionByDefaultRequest,
) -> Ec2Result<Decision> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(Decision::new(
        set_by_default(state, ctx, false),
        Reply::DisableEbsEncryptionByDefault(pb::DisableEbsEncryptionByDefaultResponse {
            ebs_encryption_by_default: false,
        }),
    ))
}

/// ModifyEbsDefaultKmsKeyId: the key is checked when used (as EC2), so any key reference is
/// accepted; it is stored as the key ARN if it names a key of this region now, else in the ARN
/// form of the reference. Only a string that cannot name a KMS key at all is refused now.
pub fn modify_default_key(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ModifyEbsDefaultKmsKeyIdRequest,
) -> Ec2Result<Decision> {
    if r.kms_key_id.is_empty() {
        return Err(Ec2Error::missing("KmsKeyId"));
    }
    let parsed = kms::parse_ref(&r.kms_key_id).map_err(|_| {
        // [unconfirmed] code and wording.
        Ec2Error::invalid_value(
            "kmsKeyId",
            &r.kms_key_id,
            "Expected a KMS key id, key ARN, alias name or alias ARN.",
        )
    })?;
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let stored = match kms::find(state, ctx.region, ctx.account_id, parsed) {
        Ok(k) => k.arn,
        Err(_) => crate::volume::kms_key_arn(ctx.region, ctx.account_id, &r.kms_key_id),
    };
    let events = if settings(state, ctx.account_id).default_kms_key_id == stored {
        vec![]
    } else {
        vec![Payload::EbsDefaultKmsKeyChanged(
            pb::EbsDefaultKmsKeyChanged {
                account_id: ctx.account_id.to_string(),
                kms_key_id: stored.clone(),
            },
        )]
    };
    Ok(Decision::new(
        events,
        Reply::ModifyEbsDefaultKmsKeyId(pb::ModifyEbsDefaultKmsKeyIdResponse {
            kms_key_id: stored,
        }),
    ))
}

/// ResetEbsDefaultKmsKeyId: back to the AWS managed key.
pub fn reset_default_key(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ResetEbsDefaultKmsKeyIdRequest,
) -> Ec2Result<Decision> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    let events = if settings(state, ctx.account_id)
        .default_kms_key_id
        .is_empty()
    {
        vec![]
    } else {
        vec![Payload::EbsDefaultKmsKeyChanged(
            pb::EbsDefaultKmsKeyChanged {
                account_id: ctx.account_id.to_string(),
                kms_key_id: String::new(),
            },
        )]
    };
    Ok(Decision::new(
        events,
        Reply::ResetEbsDefaultKmsKeyId(pb::ResetEbsDefaultKmsKeyIdResponse {
            kms_key_id: kms::alias_arn(ctx.region, ctx.account_id, kms::AWS_EBS_ALIAS),
        }),
    ))
}

/// GetEbsEncryptionByDefault.
pub fn get_by_default(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::GetEbsEncryptionByDefaultRequest,
) -> Ec2Result<pb::GetEbsEncryptionByDefaultResponse> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(pb::GetEbsEncryptionByDefaultResponse {
        ebs_encryption_by_default: by_default(state, ctx.account_id),
    })
}

/// GetEbsDefaultKmsKeyId.
pub fn get_default_key(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::GetEbsDefaultKmsKeyIdRequest,
) -> Ec2Result<pb::GetEbsDefaultKmsKeyIdResponse> {
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(pb::GetEbsDefaultKmsKeyIdResponse {
        kms_key_id: default_key_shown(state, ctx.region, ctx.account_id),
    })
}

/// Folds an EBS settings event into the state.
pub(crate) fn apply(state: &mut State, p: &Payload) {
    match p {
        Payload::EbsEncryptionByDefaultChanged(e) => {
            let mut s = settings(state, &e.account_id);
            s.by_default = e.enabled;
            state.ebs_encryption.insert(e.account_id.clone(), s);
        }
        Payload::EbsDefaultKmsKeyChanged(e) => {
            let mut s = settings(state, &e.account_id);
            s.default_kms_key_id = e.kms_key_id.clone();
            state.ebs_encryption.insert(e.account_id.clone(), s);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
