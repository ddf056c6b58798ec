//! KMS keys of one region (kms.proto; EC2_SEMANTICS.md §1, §4.2, §10.2): CreateKey,
//! DescribeKey, ListKeys, CreateAlias, ListAliases, EnableKey, DisableKey, ScheduleKeyDeletion,
//! CancelKeyDeletion, PutKeyPolicy, GetKeyPolicy, and how EBS resolves a key reference
//! ([`find_for_use`]).
//!
//! Keys are regional: each region's state holds the keys of every account in that region. A
//! key reference is a key id, key ARN, alias name or alias ARN ([`KeyRef`]); ids and alias names
//! are the caller's, ARNs may name another account's key.
//!
//! Errors are KMS's own codes (`NotFoundException`, `DisabledException`,
//! `KMSInvalidStateException`, …; [`ErrorCode`]`::Kms*`), never EC2's: an EC2 action that meets
//! a bad key fails in EC2's way instead ([`crate::encryption`]).
//!
//! `[sim]` Decisions named here and in the tests:
//! - The AWS managed key `alias/aws/ebs` is **implicit**: it exists for every account in every
//!   region without an event, with a key id derived from (region, account)
//!   ([`aws_managed_key_id`]), `Enabled`, created at the epoch, admitting only its account and
//!   refusing administration (`AccessDeniedException`). DescribeKey, ListKeys and ListAliases
//!   show it. (KMS creates it on first use; an implicit key needs no event in every decision
//!   that might be the first use, and a read can show it too.)
//! - A key policy is the set of accounts, besides the owner, that may use the key.
//! - Only symmetric `ENCRYPT_DECRYPT` keys are simulated.
//! - A deleted key stays in the state as a tombstone (never shown), so a resource under it
//!   stays unusable ([`crate::encryption`] treats keys KMS never recorded as usable: logs from
//!   before KMS was simulated).
//! - DisableKey and ScheduleKeyDeletion fail every copy in flight into this region under the
//!   key in the same decision (EC2_SEMANTICS.md §10.2); copies not started yet fail when they
//!   start.

use std::collections::BTreeSet;

use amisim_proto as pb;
use amisim_proto::event::Payload;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::state::{tag_records, tags_from, State, Tags, Timer};
use crate::time::iso;
use crate::{Ctx, Decision, ReadCtx, Reply};

/// The AWS managed key of EBS.
pub const AWS_EBS_ALIAS: &str = "alias/aws/ebs";
/// Alias names under this prefix belong to AWS.
pub const RESERVED_ALIAS_PREFIX: &str = "alias/aws/";
pub const KEY_USAGE: &str = "ENCRYPT_DECRYPT";
pub const KEY_SPEC: &str = "SYMMETRIC_DEFAULT";
/// ScheduleKeyDeletion's window: 7–30 days, default 30.
pub const MIN_PENDING_WINDOW_DAYS: i32 = 7;
pub const MAX_PENDING_WINDOW_DAYS: i32 = 30;
pub const DEFAULT_PENDING_WINDOW_DAYS: i32 = 30;
pub const MAX_DESCRIPTION: usize = 8192;
pub const MAX_TAGS: usize = 50;
pub const MAX_ALIAS_NAME: usize = 256;
const DAY_MS: u64 = 86_400_000;
const AWS_MANAGED_DESCRIPTION: &str =
    "Default master key that protects my EBS volumes when no other key is defined";

// -------------------------------------------------------------------------------------------
// The projection
// -------------------------------------------------------------------------------------------

/// A key's state (KMS `KeyState`); `Deleted` is amisim's tombstone, never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    Deleted,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::Deleted => "Deleted",
        }
    }
}

/// A KMS key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub key_id: String,
    pub owner_id: String,
    pub arn: String,
    pub description: String,
    pub key_usage: String,
    pub key_spec: String,
    pub creation_date_ms: u64,
    pub state: KeyState,
    /// Set while `PendingDeletion`.
    pub deletion_date_ms: Option<u64>,
    pub pending_window_in_days: i32,
    /// `[sim]` Accounts besides the owner that may use the key.
    pub policy_account_ids: BTreeSet<String>,
    pub tags: Tags,
    /// The implicit AWS managed key (`alias/aws/ebs`).
    pub aws_managed: bool,
}

impl Key {
    /// True if `account` may use the key (encrypt, decrypt, describe).
    pub fn admits(&self, account: &str) -> bool {
        self.owner_id == account || (!self.aws_managed && self.policy_account_ids.contains(account))
    }
}

/// An alias of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub target_key_id: String,
    pub creation_date_ms: u64,
}

/// The key ARN of `key_id`.
pub fn key_arn(region: &str, account: &str, key_id: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:key/{key_id}")
}

/// The alias ARN of `alias_name` (`alias/<name>`).
pub fn alias_arn(region: &str, account: &str, alias_name: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:{alias_name}")
}

/// `[sim]` The key id of the AWS managed EBS key of `account` in `region`: a UUID (version 4
/// form) derived from both, so every node and every replay agree without an event.
pub fn aws_managed_key_id(region: &str, account: &str) -> String {
    let d = Sha256::digest(format!("amisim:aws/ebs:{region}:{account}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    crate::ids::uuid_v4_string(b)
}

/// The key ARN of the AWS managed EBS key of `account` in `region`.
pub fn aws_managed_key_arn(region: &str, account: &str) -> String {
    key_arn(region, account, &aws_managed_key_id(region, account))
}

/// The implicit AWS managed EBS key.
pub fn aws_managed_key(region: &str, account: &str) -> Key {
    let key_id = aws_managed_key_id(region, account);
    Key {
        arn: key_arn(region, account, &key_id),
        key_id,
        owner_id: account.to_string(),
        description: AWS_MANAGED_DESCRIPTION.into(),
        key_usage: KEY_USAGE.into(),
        key_spec: KEY_SPEC.into(),
        creation_date_ms: 0,
        state: KeyState::Enabled,
        deletion_date_ms: None,
        pending_window_in_days: 0,
        policy_account_ids: BTreeSet::new(),
        tags: Tags::new(),
        aws_managed: true,
    }
}

/// True if `arn` names an AWS managed EBS key: its key ARN (the id derived from the ARN's
/// region and account) or the alias ARN `…:alias/aws/ebs` (as resources recorded it before KMS
/// was simulated). For the sharing rules (EC2_SEMANTICS.md §4.2: such snapshots cannot be
/// shared).
pub fn is_aws_managed_key(arn: &str) -> bool {
    match parse_ref(arn) {
        Ok(KeyRef::KeyArn {
            region,
            account,
            key_id,
        }) => key_id == aws_managed_key_id(region, account),
        Ok(KeyRef::AliasArn { alias, .. }) => alias == AWS_EBS_ALIAS,
        _ => false,
    }
}

// -------------------------------------------------------------------------------------------
// Key references
// -------------------------------------------------------------------------------------------

/// A parsed key reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// A bare key id: the caller's.
    KeyId(&'a str),
    KeyArn {
        region: &'a str,
        account: &'a str,
        key_id: &'a str,
    },
    /// `alias/<name>`: the caller's.
    AliasName(&'a str),
    AliasArn {
        region: &'a str,
        account: &'a str,
        alias: &'a str,
    },
}

impl KeyRef<'_> {
    fn is_alias(&self) -> bool {
        matches!(self, KeyRef::AliasName(_) | KeyRef::AliasArn { .. })
    }
}

fn validation(message: impl Into<String>) -> Ec2Error {
    Ec2Error::new(ErrorCode::KmsValidation, message)
}

fn null_member(member: &str) -> Ec2Error {
    validation(format!(
        "1 validation error detected: Value null at '{member}' failed to satisfy constraint: \
         Member must not be null"
    ))
}

fn invalid_arn(s: &str) -> Ec2Error {
    Ec2Error::new(ErrorCode::KmsInvalidArn, format!("Invalid arn {s}"))
}

/// Parses a key reference. An ARN that is not a KMS key or alias ARN is `InvalidArnException`;
/// any other string is taken as a key id (an unknown one is then not found).
pub fn parse_ref(s: &str) -> Ec2Result<KeyRef<'_>> {
    if s.is_empty() {
        return Err(null_member("keyId"));
    }
    if let Some(rest) = s.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let [partition, service, region, account, resource] = parts.as_slice() else {
            return Err(invalid_arn(s));
        };
        if partition.is_empty()
            || *service != "kms"
            || region.is_empty()
            || !crate::ids::is_account_id(account)
        {
            return Err(invalid_arn(s));
        }
        if let Some(key_id) = resource.strip_prefix("key/").filter(|k| !k.is_empty()) {
            return Ok(KeyRef::KeyArn {
                region,
                account,
                key_id,
            });
        }
        if resource.starts_with("alias/") && resource.len() > "alias/".len() {
            return Ok(KeyRef::AliasArn {
                region,
                account,
                alias: resource,
            });
        }
        return Err(invalid_arn(s));
    }
    if s.starts_with("alias/") {
        return Ok(KeyRef::AliasName(s));
    }
    Ok(KeyRef::KeyId(s))
}

fn key_not_found(arn: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::KmsNotFound,
        format!("Key '{arn}' does not exist"),
    )
}

fn alias_not_found(arn: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::KmsNotFound,
        format!("Alias '{arn}' is not found."),
    )
}

/// A live (not deleted) key by owner and id, the implicit AWS managed key included.
fn live_key(state: &State, region: &str, account: &str, key_id: &str) -> Option<Key> {
    if key_id == aws_managed_key_id(region, account) {
        return Some(aws_managed_key(region, account));
    }
    state
        .kms_keys
        .get(key_id)
        .filter(|k| k.owner_id == account && k.state != KeyState::Deleted)
        .cloned()
}

/// The live key of an alias of `account`.
fn alias_key(state: &State, region: &str, account: &str, alias: &str) -> Option<Key> {
    if alias == AWS_EBS_ALIAS {
        return Some(aws_managed_key(region, account));
    }
    let a = state
        .kms_aliases
        .get(&(account.to_string(), alias.to_string()))?;
    live_key(state, region, account, &a.target_key_id)
}

/// The key a reference names in `region`, as `caller` (ids and alias names are the caller's),
/// without checking that the caller may use it. `NotFoundException` if there is none here (a
/// reference to another region's key is not found here either).
pub fn find(state: &State, region: &str, caller: &str, r: KeyRef<'_>) -> Ec2Result<Key> {
    match r {
        KeyRef::KeyId(id) => live_key(state, region, caller, id)
            .ok_or_else(|| key_not_found(&key_arn(region, caller, id))),
        KeyRef::KeyArn {
            region: r,
            account,
            key_id,
        } => {
            let arn = key_arn(r, account, key_id);
            if r != region {
                return Err(key_not_found(&arn));
            }
            live_key(state, region, account, key_id).ok_or_else(|| key_not_found(&arn))
        }
        KeyRef::AliasName(alias) => alias_key(state, region, caller, alias)
            .ok_or_else(|| alias_not_found(&alias_arn(region, caller, alias))),
        KeyRef::AliasArn {
            region: r,
            account,
            alias,
        } => {
            let arn = alias_arn(r, account, alias);
            if r != region {
                return Err(alias_not_found(&arn));
            }
            alias_key(state, region, account, alias).ok_or_else(|| alias_not_found(&arn))
        }
    }
}

fn access_denied(caller: &str, action: &str, arn: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::KmsAccessDenied,
        format!(
            "User: arn:aws:iam::{caller}:root is not authorized to perform: kms:{action} on \
             resource: {arn} because no resource-based policy allows the kms:{action} action"
        ),
    )
}

fn pending_deletion(k: &Key) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::KmsInvalidState,
        format!("{} is pending deletion.", k.arn),
    )
}

/// Why EBS cannot use a key ([`find_for_use`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// No such key (or alias) in this region.
    NotFound,
    /// The reference names a key of another region.
    OtherRegion,
    Disabled,
    PendingDeletion,
    /// The key policy does not admit the account.
    NotAdmitted,
    /// Not a symmetric encryption key.
    NotSymmetric,
}

impl KeyProblem {
    /// The KMS error a KMS call would have answered (for logs and tests).
    pub fn kms_code(self) -> ErrorCode {
        match self {
            KeyProblem::NotFound | KeyProblem::OtherRegion => ErrorCode::KmsNotFound,
            KeyProblem::Disabled => ErrorCode::KmsDisabled,
            KeyProblem::PendingDeletion | KeyProblem::NotSymmetric => ErrorCode::KmsInvalidState,
            KeyProblem::NotAdmitted => ErrorCode::KmsAccessDenied,
        }
    }
}

/// The key a reference names, if `account` may use it now for EBS encryption in `region`:
/// it exists here, is `Enabled`, symmetric, and its policy admits the account.
pub fn find_for_use(
    state: &State,
    region: &str,
    account: &str,
    reference: &str,
) -> Result<Key, KeyProblem> {
    let r = parse_ref(reference).map_err(|_| KeyProblem::NotFound)?;
    let other_region = match r {
        KeyRef::KeyArn { region: x, .. } | KeyRef::AliasArn { region: x, .. } => x != region,
        _ => false,
    };
    if other_region {
        return Err(KeyProblem::OtherRegion);
    }
    let key = find(state, region, account, r).map_err(|_| KeyProblem::NotFound)?;
    check_use(&key, account)?;
    Ok(key)
}

/// Whether `account` may use `key` now.
pub fn check_use(key: &Key, account: &str) -> Result<(), KeyProblem> {
    match key.state {
        KeyState::Enabled => {}
        KeyState::Disabled => return Err(KeyProblem::Disabled),
        KeyState::PendingDeletion => return Err(KeyProblem::PendingDeletion),
        KeyState::Deleted => return Err(KeyProblem::NotFound),
    }
    if key.key_spec != KEY_SPEC || key.key_usage != KEY_USAGE {
        return Err(KeyProblem::NotSymmetric);
    }
    if !key.admits(account) {
        return Err(KeyProblem::NotAdmitted);
    }
    Ok(())
}

/// A key KMS has recorded in this region under this reference (deleted ones included), if any:
/// `None` for a reference KMS never saw (see `crate::encryption::resource_key_usable`).
pub fn recorded(state: &State, region: &str, account: &str, reference: &str) -> Option<Key> {
    let r = parse_ref(reference).ok()?;
    let (key_region, owner) = match r {
        KeyRef::KeyId(_) | KeyRef::AliasName(_) => (region, account),
        KeyRef::KeyArn {
            region: r,
            account: a,
            ..
        }
        | KeyRef::AliasArn {
            region: r,
            account: a,
            ..
        } => (r, a),
    };
    if key_region != region {
        return None;
    }
    let key_id = match r {
        KeyRef::KeyId(id) | KeyRef::KeyArn { key_id: id, .. } => id.to_string(),
        KeyRef::AliasName(alias) | KeyRef::AliasArn { alias, .. } => {
            if alias == AWS_EBS_ALIAS {
                return Some(aws_managed_key(region, owner));
            }
            state
                .kms_aliases
                .get(&(owner.to_string(), alias.to_string()))?
                .target_key_id
                .clone()
        }
    };
    if key_id == aws_managed_key_id(region, owner) {
        return Some(aws_managed_key(region, owner));
    }
    state
        .kms_keys
        .get(&key_id)
        .filter(|k| k.owner_id == owner)
        .cloned()
}

// -------------------------------------------------------------------------------------------
// Checks shared by the writes
// -------------------------------------------------------------------------------------------

/// Normalises a simplified policy: 12-digit account ids, sorted, without the owner.
fn check_policy(owner: &str, p: Option<&pb::KeyPolicy>) -> Ec2Result<BTreeSet<String>> {
    let Some(p) = p else {
        return Ok(BTreeSet::new());
    };
    let mut out = BTreeSet::new();
    for a in &p.account_ids {
        let a = a.trim();
        if !crate::ids::is_account_id(a) {
            return Err(Ec2Error::new(
                ErrorCode::KmsMalformedPolicyDocument,
                "Policy contains a statement with one or more invalid principals.",
            ));
        }
        if a != owner {
            out.insert(a.to_string());
        }
    }
    Ok(out)
}

fn check_tags(tags: &[pb::KeyTag]) -> Ec2Result<Tags> {
    let tag_error = |m: String| Ec2Error::new(ErrorCode::KmsTag, m);
    if tags.len() > MAX_TAGS {
        return Err(tag_error(format!(
            "Tag count exceeds the limit of {MAX_TAGS} tags per key."
        )));
    }
    let mut out = Tags::new();
    for t in tags {
        let len = t.tag_key.chars().count();
        if len == 0 || len > 128 {
            return Err(tag_error(format!(
                "Tag key '{}' must be 1 to 128 characters long.",
                t.tag_key
            )));
        }
        if t.tag_value.chars().count() > 256 {
            return Err(tag_error(format!(
                "Tag value of '{}' must be at most 256 characters long.",
                t.tag_key
            )));
        }
        if t.tag_key.starts_with("aws:") {
            return Err(tag_error("Tags beginning with aws: are reserved.".into()));
        }
        if out.insert(t.tag_key.clone(), t.tag_value.clone()).is_some() {
            return Err(tag_error(format!("Duplicate tag key '{}'.", t.tag_key)));
        }
    }
    Ok(out)
}

/// The key a key administration call names (key id or key ARN only, as KMS), which the caller
/// must own; the AWS managed key cannot be administered.
fn admin_key(
    state: &State,
    region: &str,
    caller: &str,
    key_id: &str,
    action: &str,
) -> Ec2Result<Key> {
    let r = parse_ref(key_id)?;
    if r.is_alias() {
        return Err(Ec2Error::new(
            ErrorCode::KmsNotFound,
            format!("Invalid keyId {key_id}"),
        ));
    }
    let key = find(state, region, caller, r)?;
    if key.owner_id != caller || key.aws_managed {
        return Err(access_denied(caller, action, &key.arn));
    }
    Ok(key)
}

// -------------------------------------------------------------------------------------------
// Rendering
// -------------------------------------------------------------------------------------------

/// KeyMetadata as DescribeKey shows it.
pub fn render_key(k: &Key) -> pb::KeyMetadata {
    pb::KeyMetadata {
        aws_account_id: k.owner_id.clone(),
        key_id: k.key_id.clone(),
        arn: k.arn.clone(),
        creation_date: iso(k.creation_date_ms),
        enabled: k.state == KeyState::Enabled,
        description: k.description.clone(),
        key_usage: k.key_usage.clone(),
        key_state: k.state.as_str().to_string(),
        deletion_date: k.deletion_date_ms.map(iso).unwrap_or_default(),
        origin: "AWS_KMS".into(),
        key_manager: if k.aws_managed { "AWS" } else { "CUSTOMER" }.into(),
        key_spec: k.key_spec.clone(),
        customer_master_key_spec: k.key_spec.clone(),
        encryption_algorithms: vec!["SYMMETRIC_DEFAULT".into()],
        multi_region: false,
    }
}

fn render_policy(k: &Key) -> pb::KeyPolicy {
    pb::KeyPolicy {
        account_ids: k.policy_account_ids.iter().cloned().collect(),
    }
}

/// The simplified policy as a KMS key policy document.
fn policy_document(k: &Key) -> String {
    let mut statements = vec![serde_json::json!({
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{}:root", k.owner_id)},
        "Action": "kms:*",
        "Resource": "*",
    })];
    if !k.policy_account_ids.is_empty() {
        let principals: Vec<String> = k
            .policy_account_ids
            .iter()
            .map(|a| format!("arn:aws:iam::{a}:root"))
            .collect();
        statements.push(serde_json::json!({
            "Sid": "Allow use of the key",
            "Effect": "Allow",
            "Principal": {"AWS": principals},
            "Action": [
                "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"
            ],
            "Resource": "*",
        }));
    }
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": statements,
    })
    .to_string()
}

// -------------------------------------------------------------------------------------------
// Writes
// -------------------------------------------------------------------------------------------

/// CreateKey: a symmetric customer managed key of the caller, `Enabled`.
pub fn create_key(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CreateKeyRequest,
) -> Ec2Result<Decision> {
    if r.description.chars().count() > MAX_DESCRIPTION {
        return Err(validation(format!(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: \
             Member must have length less than or equal to {MAX_DESCRIPTION}"
        )));
    }
    if !r.key_usage.is_empty() && r.key_usage != KEY_USAGE {
        return Err(validation(format!(
            "1 validation error detected: Value '{}' at 'keyUsage' failed to satisfy constraint: \
             Member must satisfy enum value set: [ENCRYPT_DECRYPT] (only symmetric encryption \
             keys are simulated)",
            r.key_usage
        )));
    }
    if !r.key_spec.is_empty() && r.key_spec != KEY_SPEC {
        return Err(validation(format!(
            "1 validation error detected: Value '{}' at 'keySpec' failed to satisfy constraint: \
             Member must satisfy enum value set: [SYMMETRIC_DEFAULT] (only symmetric encryption \
             keys are simulated)",
            r.key_spec
        )));
    }
    let policy = check_policy(ctx.account_id, r.policy.as_ref())?;
    let tags = check_tags(&r.tags)?;
    let managed = aws_managed_key_id(ctx.region, ctx.account_id);
    let key_id = loop {
        let id = ctx.new_uuid();
        if !state.kms_keys.contains_key(&id) && id != managed {
            break id;
        }
    };
    let event = pb::KmsKeyCreated {
        arn: key_arn(ctx.region, ctx.account_id, &key_id),
        key_id: key_id.clone(),
        owner_id: ctx.account_id.to_string(),
        description: r.description,
        key_usage: KEY_USAGE.into(),
        key_spec: KEY_SPEC.into(),
        policy_account_ids: policy.into_iter().collect(),
        tags: tag_records(&tags),
        creation_date_ms: ctx.now_ms,
    };
    let events = vec![Payload::KmsKeyCreated(event)];
    let after = crate::preview(state, &events);
    let key_metadata = after.kms_keys.get(&key_id).map(render_key);
    Ok(Decision::new(
        events,
        Reply::CreateKey(pb::CreateKeyResponse { key_metadata }),
    ))
}

/// CreateAlias: `alias/<name>` of the caller for one of its keys.
pub fn create_alias(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CreateAliasRequest,
) -> Ec2Result<Decision> {
    let name = r.alias_name.as_str();
    if name.is_empty() {
        return Err(null_member("aliasName"));
    }
    if r.target_key_id.is_empty() {
        return Err(null_member("targetKeyId"));
    }
    // [unconfirmed] wording.
    if !name.starts_with("alias/") {
        return Err(validation(
            "Alias must start with the prefix \"alias/\". Please see \
             https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html",
        ));
    }
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'));
    if name.len() > MAX_ALIAS_NAME || name.len() == "alias/".len() || !chars_ok {
        return Err(validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9/_-]+$ and \
             have length less than or equal to {MAX_ALIAS_NAME}"
        )));
    }
    if name.starts_with(RESERVED_ALIAS_PREFIX) {
        // [unconfirmed] code (as moto) and wording.
        return Err(Ec2Error::new(
            ErrorCode::KmsNotAuthorized,
            format!("The alias {name} is reserved: the prefix alias/aws/ is for AWS managed keys."),
        ));
    }
    let target = parse_ref(&r.target_key_id)?;
    if target.is_alias() {
        return Err(validation("Aliases must refer to keys. Not aliases"));
    }
    let key = find(state, ctx.region, ctx.account_id, target)?;
    if key.owner_id != ctx.account_id || key.aws_managed {
        return Err(access_denied(ctx.account_id, "CreateAlias", &key.arn));
    }
    if state
        .kms_aliases
        .contains_key(&(ctx.account_id.to_string(), name.to_string()))
    {
        return Err(Ec2Error::new(
            ErrorCode::KmsAlreadyExists,
            format!(
                "An alias with the name {} already exists",
                alias_arn(ctx.region, ctx.account_id, name)
            ),
        ));
    }
    if key.state == KeyState::PendingDeletion {
        return Err(pending_deletion(&key));
    }
    Ok(Decision::new(
        vec![Payload::KmsAliasCreated(pb::KmsAliasCreated {
            owner_id: ctx.account_id.to_string(),
            alias_name: name.to_string(),
            target_key_id: key.key_id,
            creation_date_ms: ctx.now_ms,
        })],
        Reply::CreateAlias(pb::CreateAliasResponse {}),
    ))
}

/// EnableKey: `Disabled` → `Enabled`.
pub fn enable_key(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::EnableKeyRequest,
) -> Ec2Result<Decision> {
    let key = admin_key(state, ctx.region, ctx.account_id, &r.key_id, "EnableKey")?;
    let events = match key.state {
        KeyState::PendingDeletion => return Err(pending_deletion(&key)),
        KeyState::Disabled => vec![Payload::KmsKeyEnabled(pb::KmsKeyEnabled {
            key_id: key.key_id,
        })],
        _ => vec![],
    };
    Ok(Decision::new(
        events,
        Reply::EnableKey(pb::EnableKeyResponse {}),
    ))
}

/// DisableKey: `Enabled` → `Disabled`; every copy in flight under the key fails now.
pub fn disable_key(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::DisableKeyRequest,
) -> Ec2Result<Decision> {
    let key = admin_key(state, ctx.region, ctx.account_id, &r.key_id, "DisableKey")?;
    let mut events = match key.state {
        KeyState::PendingDeletion => return Err(pending_deletion(&key)),
        KeyState::Enabled => vec![Payload::KmsKeyDisabled(pb::KmsKeyDisabled {
            key_id: key.key_id.clone(),
        })],
        _ => vec![],
    };
    if !events.is_empty() {
        events.extend(fail_copies_under(state, &key.arn));
    }
    Ok(Decision::new(
        events,
        Reply::DisableKey(pb::DisableKeyResponse {}),
    ))
}

/// ScheduleKeyDeletion: `PendingDeletion` for 7–30 days (default 30), then deleted by a timer;
/// every copy in flight under the key fails now.
pub fn schedule_key_deletion(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::ScheduleKeyDeletionRequest,
) -> Ec2Result<Decision> {
    let days = r
        .pending_window_in_days
        .unwrap_or(DEFAULT_PENDING_WINDOW_DAYS);
    if days < MIN_PENDING_WINDOW_DAYS {
        return Err(validation(format!(
            "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to \
             satisfy constraint: Member must have value greater than or equal to \
             {MIN_PENDING_WINDOW_DAYS}"
        )));
    }
    if days > MAX_PENDING_WINDOW_DAYS {
        return Err(validation(format!(
            "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to \
             satisfy constraint: Member must have value less than or equal to \
             {MAX_PENDING_WINDOW_DAYS}"
        )));
    }
    let key = admin_key(
        state,
        ctx.region,
        ctx.account_id,
        &r.key_id,
        "ScheduleKeyDeletion",
    )?;
    if key.state == KeyState::PendingDeletion {
        return Err(pending_deletion(&key));
    }
    let deletion_date_ms = ctx
        .now_ms
        .saturating_add(u64::try_from(days).unwrap_or(0).saturating_mul(DAY_MS));
    let mut events = vec![Payload::KmsKeyDeletionScheduled(
        pb::KmsKeyDeletionScheduled {
            key_id: key.key_id.clone(),
            deletion_date_ms,
            pending_window_in_days: days,
        },
    )];
    events.extend(fail_copies_under(state, &key.arn));
    Ok(Decision::new(
        events,
        Reply::ScheduleKeyDeletion(pb::ScheduleKeyDeletionResponse {
            key_id: key.arn,
            deletion_date: iso(deletion_date_ms),
            key_state: KeyState::PendingDeletion.as_str().into(),
            pending_window_in_days: days,
        }),
    ))
}

/// CancelKeyDeletion: `PendingDeletion` → `Disabled` (as KMS).
pub fn cancel_key_deletion(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::CancelKeyDeletionRequest,
) -> Ec2Result<Decision> {
    let key = admin_key(
        state,
        ctx.region,
        ctx.account_id,
        &r.key_id,
        "CancelKeyDeletion",
    )?;
    if key.state != KeyState::PendingDeletion {
        // [unconfirmed] wording.
        return Err(Ec2Error::new(
            ErrorCode::KmsInvalidState,
            format!("{} is not pending deletion.", key.arn),
        ));
    }
    Ok(Decision::new(
        vec![Payload::KmsKeyDeletionCancelled(
            pb::KmsKeyDeletionCancelled { key_id: key.key_id },
        )],
        Reply::CancelKeyDeletion(pb::CancelKeyDeletionResponse { key_id: key.arn }),
    ))
}

fn check_policy_name(name: &str) -> Ec2Result<()> {
    if name.is_empty() || name == "default" {
        Ok(())
    } else {
        // As moto; [unconfirmed] for KMS.
        Err(Ec2Error::new(
            ErrorCode::KmsNotFound,
            "No such policy exists",
        ))
    }
}

/// PutKeyPolicy: replaces the simplified policy. `[unconfirmed]` allowed while `PendingDeletion`
/// (KMS lists PutKeyPolicy among the calls a key pending deletion still answers).
pub fn put_key_policy(
    state: &State,
    ctx: &mut Ctx<'_>,
    r: pb::PutKeyPolicyRequest,
) -> Ec2Result<Decision> {
    check_policy_name(&r.policy_name)?;
    let Some(policy) = r.policy.as_ref() else {
        return Err(null_member("policy"));
    };
    let key = admin_key(state, ctx.region, ctx.account_id, &r.key_id, "PutKeyPolicy")?;
    let accounts = check_policy(&key.owner_id, Some(policy))?;
    let events = if accounts == key.policy_account_ids {
        vec![]
    } else {
        vec![Payload::KmsKeyPolicyChanged(pb::KmsKeyPolicyChanged {
            key_id: key.key_id,
            policy_account_ids: accounts.into_iter().collect(),
        })]
    };
    Ok(Decision::new(
        events,
        Reply::PutKeyPolicy(pb::PutKeyPolicyResponse {}),
    ))
}

/// The events that fail every copy in flight into this region whose new snapshot is under
/// `key_arn` (EC2_SEMANTICS.md §10.2): each such snapshot `error` with `Given key ID is not
/// accessible`, its image copy `failed` (through [`crate::copy::fail_copy_snapshot`]).
pub fn fail_copies_under(state: &State, key_arn: &str) -> Vec<Payload> {
    let mut targets: Vec<String> = Vec::new();
    for task in state.copies_in_flight() {
        if task.started_at_ms.is_none() {
            // Not started: StartCopy checks the key.
            continue;
        }
        match task.kind {
            crate::copy::CopyKind::Snapshot => targets.push(task.dest_id.clone()),
            crate::copy::CopyKind::Image => {
                if let Some(img) = state.images.get(task.dest_id.as_str()) {
                    targets.extend(img.snapshot_ids().map(str::to_string));
                }
            }
        }
    }
    let mut scratch = state.clone();
    let mut out = Vec::new();
    for id in targets {
        let under = scratch.snapshots.get(&id).is_some_and(|s| {
            s.state == crate::state::SnapshotState::Pending && s.kms_key_id == key_arn
        });
        if !under {
            continue;
        }
        for e in crate::copy::fail_copy_snapshot(&scratch, &id, crate::copy::KEY_NOT_ACCESSIBLE) {
            scratch.apply_payload(&e);
            out.push(e);
        }
    }
    out
}

/// The timer of a key pending deletion: `KmsKeyDeleted` if it still is.
pub(crate) fn deletion_due(state: &State, key_id: &str) -> Vec<Payload> {
    match state.kms_keys.get(key_id) {
        Some(k) if k.state == KeyState::PendingDeletion => {
            vec![Payload::KmsKeyDeleted(pb::KmsKeyDeleted {
                key_id: key_id.to_string(),
            })]
        }
        _ => vec![],
    }
}

// -------------------------------------------------------------------------------------------
// Reads
// -------------------------------------------------------------------------------------------

/// DescribeKey: by key id, key ARN, alias name or alias ARN; another account's key only if its
/// policy admits the caller.
pub fn describe_key(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::DescribeKeyRequest,
) -> Ec2Result<pb::DescribeKeyResponse> {
    let key = find(state, ctx.region, ctx.account_id, parse_ref(&r.key_id)?)?;
    if !key.admits(ctx.account_id) {
        return Err(access_denied(ctx.account_id, "DescribeKey", &key.arn));
    }
    Ok(pb::DescribeKeyResponse {
        key_metadata: Some(render_key(&key)),
    })
}

/// A validated `limit` (1..=`hi`, default `default`).
fn limit(limit: Option<i32>, hi: i32, default: i32) -> Ec2Result<usize> {
    let n = limit.unwrap_or(default);
    if n < 1 {
        return Err(validation(format!(
            "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: \
             Member must have value greater than or equal to 1"
        )));
    }
    if n > hi {
        return Err(validation(format!(
            "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: \
             Member must have value less than or equal to {hi}"
        )));
    }
    Ok(usize::try_from(n).unwrap_or(1))
}

fn invalid_marker() -> Ec2Error {
    Ec2Error::new(
        ErrorCode::KmsInvalidMarker,
        "The request was rejected because the marker that specifies where pagination should \
         next begin is not valid.",
    )
}

/// The marker of a page: the hex of the last item's sort key.
fn encode_marker(last: &str) -> String {
    hex::encode(format!("kms1:{last}"))
}

fn decode_marker(marker: &str) -> Ec2Result<Option<String>> {
    if marker.is_empty() {
        return Ok(None);
    }
    hex::decode(marker)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("kms1:").map(str::to_string))
        .map(Some)
        .ok_or_else(invalid_marker)
}

/// One page of `(sort key, item)` sorted by key, after `after`: (items, next marker).
fn page<T>(items: Vec<(String, T)>, after: Option<String>, max: usize) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    let mut last = String::new();
    for (k, item) in items {
        if after.as_ref().is_some_and(|a| k <= *a) {
            continue;
        }
        if out.len() >= max {
            return (out, Some(encode_marker(&last)));
        }
        last = k;
        out.push(item);
    }
    (out, None)
}

/// The caller's live keys in this region, the AWS managed key included, by key id.
fn own_keys(state: &State, region: &str, account: &str) -> Vec<Key> {
    let mut keys: Vec<Key> = state
        .kms_keys
        .values()
        .filter(|k| k.owner_id == account && k.state != KeyState::Deleted)
        .cloned()
        .collect();
    keys.push(aws_managed_key(region, account));
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    keys
}

/// ListKeys: the caller's keys, by key id; `limit` 1–1000 (default 100).
pub fn list_keys(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::ListKeysRequest,
) -> Ec2Result<pb::ListKeysResponse> {
    let max = limit(r.limit, 1000, 100)?;
    let after = decode_marker(&r.marker)?;
    let items = own_keys(state, ctx.region, ctx.account_id)
        .into_iter()
        .map(|k| {
            (
                k.key_id.clone(),
                pb::KeyListEntry {
                    key_id: k.key_id,
                    key_arn: k.arn,
                },
            )
        })
        .collect();
    let (keys, next) = page(items, after, max);
    Ok(pb::ListKeysResponse {
        keys,
        truncated: next.is_some(),
        next_marker: next.unwrap_or_default(),
    })
}

/// ListAliases: the caller's aliases (or one key's), by name; `limit` 1–100 (default 50).
/// `alias/aws/ebs` is always listed (`[sim]`).
pub fn list_aliases(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::ListAliasesRequest,
) -> Ec2Result<pb::ListAliasesResponse> {
    let max = limit(r.limit, 100, 50)?;
    let after = decode_marker(&r.marker)?;
    let only = if r.key_id.is_empty() {
        None
    } else {
        let target = parse_ref(&r.key_id)?;
        if target.is_alias() {
            return Err(Ec2Error::new(
                ErrorCode::KmsNotFound,
                format!("Invalid keyId {}", r.key_id),
            ));
        }
        let key = find(state, ctx.region, ctx.account_id, target)?;
        if key.owner_id != ctx.account_id {
            return Err(access_denied(ctx.account_id, "ListAliases", &key.arn));
        }
        Some(key.key_id)
    };
    let mut all: Vec<(String, String, u64)> = state
        .kms_aliases
        .iter()
        .filter(|((owner, _), _)| owner == ctx.account_id)
        .map(|((_, name), a)| (name.clone(), a.target_key_id.clone(), a.creation_date_ms))
        .collect();
    all.push((
        AWS_EBS_ALIAS.to_string(),
        aws_managed_key_id(ctx.region, ctx.account_id),
        0,
    ));
    all.sort();
    let items = all
        .into_iter()
        .filter(|(_, target, _)| only.as_ref().is_none_or(|k| k == target))
        .map(|(name, target, created)| {
            (
                name.clone(),
                pb::AliasListEntry {
                    alias_arn: alias_arn(ctx.region, ctx.account_id, &name),
                    alias_name: name,
                    target_key_id: target,
                    creation_date: iso(created),
                    last_updated_date: iso(created),
                },
            )
        })
        .collect();
    let (aliases, next) = page(items, after, max);
    Ok(pb::ListAliasesResponse {
        aliases,
        truncated: next.is_some(),
        next_marker: next.unwrap_or_default(),
    })
}

/// GetKeyPolicy: the simplified policy (owner only; the AWS managed key's too).
pub fn get_key_policy(
    state: &State,
    ctx: &ReadCtx<'_>,
    r: pb::GetKeyPolicyRequest,
) -> Ec2Result<pb::GetKeyPolicyResponse> {
    check_policy_name(&r.policy_name)?;
    let parsed = parse_ref(&r.key_id)?;
    if parsed.is_alias() {
        return Err(Ec2Error::new(
            ErrorCode::KmsNotFound,
            format!("Invalid keyId {}", r.key_id),
        ));
    }
    let key = find(state, ctx.region, ctx.account_id, parsed)?;
    if key.owner_id != ctx.account_id {
        return Err(access_denied(ctx.account_id, "GetKeyPolicy", &key.arn));
    }
    Ok(pb::GetKeyPolicyResponse {
        policy_name: "default".into(),
        policy: Some(render_policy(&key)),
        policy_document: policy_document(&key),
    })
}

// -------------------------------------------------------------------------------------------
// Projection (called by State::apply_payload)
// -------------------------------------------------------------------------------------------

/// Folds a KMS event into the state. Total: an event naming an unknown key changes nothing.
pub(crate) fn apply(state: &mut State, p: &Payload) {
    match p {
        Payload::KmsKeyCreated(e) => {
            state.kms_keys.insert(
                e.key_id.clone(),
                Key {
                    key_id: e.key_id.clone(),
                    owner_id: e.owner_id.clone(),
                    arn: e.arn.clone(),
                    description: e.description.clone(),
                    key_usage: e.key_usage.clone(),
                    key_spec: e.key_spec.clone(),
                    creation_date_ms: e.creation_date_ms,
                    state: KeyState::Enabled,
                    deletion_date_ms: None,
                    pending_window_in_days: 0,
                    policy_account_ids: e.policy_account_ids.iter().cloned().collect(),
                    tags: tags_from(&e.tags),
                    aws_managed: false,
                },
            );
        }
        Payload::KmsAliasCreated(e) => {
            let live = state
                .kms_keys
                .get(&e.target_key_id)
                .is_some_and(|k| k.owner_id == e.owner_id && k.state != KeyState::Deleted);
            if live {
                state.kms_aliases.insert(
                    (e.owner_id.clone(), e.alias_name.clone()),
                    Alias {
                        target_key_id: e.target_key_id.clone(),
                        creation_date_ms: e.creation_date_ms,
                    },
                );
            }
        }
        Payload::KmsKeyEnabled(e) => {
            if let Some(k) = state.kms_keys.get_mut(&e.key_id) {
                if k.state == KeyState::Disabled {
                    k.state = KeyState::Enabled;
                }
            }
        }
        Payload::KmsKeyDisabled(e) => {
            if let Some(k) = state.kms_keys.get_mut(&e.key_id) {
                if k.state == KeyState::Enabled {
                    k.state = KeyState::Disabled;
                }
            }
        }
        Payload::KmsKeyDeletionScheduled(e) => {
            if let Some(k) = state.kms_keys.get_mut(&e.key_id) {
                if matches!(k.state, KeyState::Enabled | KeyState::Disabled) {
                    k.state = KeyState::PendingDeletion;
                    k.deletion_date_ms = Some(e.deletion_date_ms);
                    k.pending_window_in_days = e.pending_window_in_days;
                    state.timers.insert((
                        e.deletion_date_ms,
                        Timer::KmsKeyDeletion(e.key_id.as_str().into()),
                    ));
                }
            }
        }
        Payload::KmsKeyDeletionCancelled(e) => {
            if let Some(k) = state.kms_keys.get_mut(&e.key_id) {
                if k.state == KeyState::PendingDeletion {
                    if let Some(at) = k.deletion_date_ms.take() {
                        state
                            .timers
                            .remove(&(at, Timer::KmsKeyDeletion(e.key_id.as_str().into())));
                    }
                    k.state = KeyState::Disabled;
                    k.pending_window_in_days = 0;
                }
            }
        }
        Payload::KmsKeyDeleted(e) => {
            if let Some(k) = state.kms_keys.get_mut(&e.key_id) {
                if let Some(at) = k.deletion_date_ms.take() {
                    state
                        .timers
                        .remove(&(at, Timer::KmsKeyDeletion(e.key_id.as_str().into())));
                }
                k.state = KeyState::Deleted;
                let owner = k.owner_id.clone();
                let gone: Vec<(String, String)> = state
                    .kms_aliases
                    .iter()
                    .filter(|((o, _), a)| *o == owner && a.target_key_id == e.key_id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for a in gone {
                    state.kms_aliases.remove(&a);
                }
            }
        }
        Payload::KmsKeyPolicyChanged(e) => {
            if let Some(k) = state.kms_keys.get_mut(&e.key_id) {
                k.policy_account_ids = e.policy_account_ids.iter().cloned().collect();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
