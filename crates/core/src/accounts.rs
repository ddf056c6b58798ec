//! Accounts, their bearer tokens and their place in AWS Organizations (EC2_SEMANTICS.md §1,
//! §4.1; DESIGN.md §7).
//!
//! - [`Membership`] is what the sharing rules need: which organization and which OUs (with
//!   every OU above) each account belongs to, so an organization or OU launch permission covers
//!   every account below it. Decisions and reads get it through [`crate::Ctx`] /
//!   [`crate::ReadCtx`]; without an accounts file it is empty and org/OU grants cover nobody.
//! - [`Accounts`] is the parsed accounts file (`--accounts FILE`): the token of each account
//!   (the gRPC edges authenticate `authorization: Bearer <token>` with it), the membership, and
//!   the operator token (ADR 0009): the internal `Region` and `Audit` services of a node accept
//!   only that one, and the coordinator sends it on every call it makes to a node.
//!   [`AccountsFile`] is its serde shape; reading and TOML decoding are the caller's (this crate
//!   does no I/O).
//!
//! The file, in TOML:
//!
//! ```toml
//! # Required: the operator credential of the internal services (Region, Audit). Not an
//! # account: it opens no Ec2 or Kms call, and no account token opens an internal service.
//! [operator]
//! token = "a-long-random-secret"
//!
//! [[organization]]
//! id = "o-abcde12345"
//! management_account = "111122223333"
//!
//! # Optional: OUs nested in other OUs (an OU named only by an account sits under the root).
//! [[organizational_unit]]
//! id = "ou-ab12-team0001"
//! organization = "o-abcde12345"
//! parent = "ou-ab12-dept0001"
//!
//! [[account]]
//! id = "111122223333"
//! token = "secret-of-111122223333"
//! organization = "o-abcde12345"
//! ou = "ou-ab12-team0001"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Ec2Error, ErrorCode};
use crate::ids;

/// One account's place in AWS Organizations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgMembership {
    /// `arn:aws:organizations::<management-account>:organization/o-…`.
    pub organization_arn: String,
    /// The account's OU and every OU above it (innermost first), as ARNs
    /// `arn:aws:organizations::<management-account>:ou/o-…/ou-…`. Empty: directly under the
    /// root.
    pub ou_arns: Vec<String>,
}

/// Which organization and OUs each account belongs to (accounts in none are absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    accounts: BTreeMap<String, OrgMembership>,
}

static NO_MEMBERSHIP: Membership = Membership::new();

impl Membership {
    /// Nobody is in an organization.
    pub const fn new() -> Self {
        Membership {
            accounts: BTreeMap::new(),
        }
    }

    /// The empty membership, for contexts that have none (org/OU grants then cover nobody).
    pub fn none() -> &'static Membership {
        &NO_MEMBERSHIP
    }

    /// Puts `account` into an organization (replacing what it had).
    pub fn insert(&mut self, account: impl Into<String>, org: OrgMembership) {
        self.accounts.insert(account.into(), org);
    }

    /// The organization and OUs of `account`, if it is in one.
    pub fn org_of(&self, account: &str) -> Option<&OrgMembership> {
        self.accounts.get(account)
    }

    /// True if `account` belongs to the organization `organization_arn`.
    pub fn in_organization(&self, account: &str, organization_arn: &str) -> bool {
        self.org_of(account)
            .is_some_and(|m| m.organization_arn == organization_arn)
    }

    /// True if `account` is in the OU `ou_arn` or in an OU below it.
    pub fn in_ou(&self, account: &str, ou_arn: &str) -> bool {
        self.org_of(account)
            .is_some_and(|m| m.ou_arns.iter().any(|o| o == ou_arn))
    }

    /// Accounts in some organization, in id order.
    pub fn accounts(&self) -> impl Iterator<Item = (&str, &OrgMembership)> {
        self.accounts.iter().map(|(a, m)| (a.as_str(), m))
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// The organization ARN of `o-…` managed by `management_account`.
pub fn organization_arn(management_account: &str, org_id: &str) -> String {
    format!("arn:aws:organizations::{management_account}:organization/{org_id}")
}

/// The OU ARN of `ou-…` in `o-…` managed by `management_account`.
pub fn ou_arn(management_account: &str, org_id: &str, ou_id: &str) -> String {
    format!("arn:aws:organizations::{management_account}:ou/{org_id}/{ou_id}")
}

fn lower_alnum(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `o-` + 10 to 32 lowercase letters or digits (the AWS Organizations pattern).
pub fn is_organization_id(s: &str) -> bool {
    s.strip_prefix("o-").is_some_and(|r| lower_alnum(r, 10, 32))
}

/// `ou-` + 4 to 32 lowercase letters or digits + `-` + 8 to 32 more.
pub fn is_ou_id(s: &str) -> bool {
    s.strip_prefix("ou-")
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(root, ou)| lower_alnum(root, 4, 32) && lower_alnum(ou, 8, 32))
}

/// True for a well-formed organization ARN
/// (`arn:aws:organizations::<12 digits>:organization/o-…`).
pub fn is_organization_arn(arn: &str) -> bool {
    arn.strip_prefix("arn:aws:organizations::")
        .and_then(|r| r.split_once(":organization/"))
        .is_some_and(|(acct, org)| ids::is_account_id(acct) && is_organization_id(org))
}

/// True for a well-formed OU ARN (`arn:aws:organizations::<12 digits>:ou/o-…/ou-…`).
pub fn is_ou_arn(arn: &str) -> bool {
    arn.strip_prefix("arn:aws:organizations::")
        .and_then(|r| r.split_once(":ou/"))
        .and_then(|(acct, rest)| Some((acct, rest.split_once('/')?)))
        .is_some_and(|(acct, (org, ou))| {
            ids::is_account_id(acct) && is_organization_id(org) && is_ou_id(ou)
        })
}

// -------------------------------------------------------------------------------------------
// The accounts file
// -------------------------------------------------------------------------------------------

/// The accounts file as written (see the module docs). Unknown keys are refused, so a typo
/// does not silently drop an account from its organization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountEntry>,
    #[serde(default, rename = "organization")]
    pub organizations: Vec<OrganizationEntry>,
    #[serde(default, rename = "organizational_unit")]
    pub organizational_units: Vec<OuEntry>,
    /// `[operator]`: required (a file without it is refused).
    #[serde(default)]
    pub operator: Option<OperatorEntry>,
}

/// `[operator]`: the credential of the internal services (ADR 0009).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    /// The bearer token of the `Region` and `Audit` services (non-empty visible ASCII, no
    /// account's token).
    pub token: String,
}

impl fmt::Debug for OperatorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorEntry")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `[[account]]`: an account, its token, and optionally its organization and OU.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    /// 12 digits.
    pub id: String,
    /// The bearer token that authenticates as this account (unique, non-empty, visible ASCII).
    pub token: String,
    /// `o-…`, one of the `[[organization]]` entries.
    #[serde(default)]
    pub organization: Option<String>,
    /// `ou-…`, in that organization (needs `organization`).
    #[serde(default)]
    pub ou: Option<String>,
}

impl fmt::Debug for AccountEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountEntry")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("organization", &self.organization)
            .field("ou", &self.ou)
            .finish()
    }
}

/// `[[organization]]`: an organization and its management account (which is in it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationEntry {
    /// `o-…`.
    pub id: String,
    /// 12 digits; part of every ARN of the organization.
    pub management_account: String,
}

/// `[[organizational_unit]]`: an OU's place in the tree (optional for OUs directly under the
/// root).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuEntry {
    /// `ou-…`.
    pub id: String,
    /// `o-…`.
    pub organization: String,
    /// The OU above it (`ou-…`); absent: the root.
    #[serde(default)]
    pub parent: Option<String>,
}

/// The accounts of a deployment: tokens and organization membership. Built only from a checked
/// [`AccountsFile`], so every token is unique and every membership consistent.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// token → account.
    tokens: BTreeMap<String, String>,
    accounts: BTreeSet<String>,
    membership: Membership,
    /// The `[operator]` token (always set in an `Accounts` built by [`Accounts::from_file`]).
    operator: Option<String>,
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the tokens.
        f.debug_struct("Accounts")
            .field("accounts", &self.accounts)
            .field("membership", &self.membership)
            .finish()
    }
}

/// The EC2 message of a refused credential.
const AUTH_FAILURE: &str = "AWS was not able to validate the provided access credentials";

/// The token of an `authorization` value `Bearer <token>` (scheme case-insensitive).
fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equality in time independent of where the strings differ (lengths may leak; tokens are
/// secrets of the deployment, their lengths are not).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why an accounts file was refused: the message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccountsError(pub String);

impl Accounts {
    /// Checks and indexes a parsed file: 12-digit account ids, each once; non-empty tokens of
    /// visible ASCII, each once; organization and OU ids well formed and declared; OU parents in
    /// the same organization and without cycles; a management account listed as an account is in
    /// its organization; an `[operator]` token, non-empty visible ASCII and no account's.
    pub fn from_file(file: AccountsFile) -> Result<Accounts, AccountsError> {
        let err = |m: String| Err(AccountsError(m));
        let mut orgs: BTreeMap<String, String> = BTreeMap::new();
        for o in &file.organizations {
            if !is_organization_id(&o.id) {
                return err(format!(
                    "organization id {:?} must be o- followed by 10 to 32 lowercase letters or \
                     digits",
                    o.id
                ));
            }
            if !ids::is_account_id(&o.management_account) {
                return err(format!(
                    "organization {}: management_account {:?} must be a 12-digit account id",
                    o.id, o.management_account
                ));
            }
            if orgs
                .insert(o.id.clone(), o.management_account.clone())
                .is_some()
            {
                return err(format!("organization {} is listed twice", o.id));
            }
        }
        // OU id → (organization, parent).
        let mut ous: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
        for u in &file.organizational_units {
            if !is_ou_id(&u.id) {
                return err(format!(
                    "organizational unit id {:?} must look like ou-ab12-abcdefgh",
                    u.id
                ));
            }
            if !orgs.contains_key(&u.organization) {
                return err(format!(
                    "organizational unit {}: organization {:?} is not an [[organization]]",
                    u.id, u.organization
                ));
            }
            if ous
                .insert(u.id.clone(), (u.organization.clone(), u.parent.clone()))
                .is_some()
            {
                return err(format!("organizational unit {} is listed twice", u.id));
            }
        }
        for (id, (org, parent)) in &ous {
            if let Some(p) = parent {
                match ous.get(p) {
                    Some((porg, _)) if porg == org => {}
                    Some(_) => {
                        return err(format!(
                            "organizational unit {id}: parent {p} is in another organization"
                        ))
                    }
                    None => {
                        return err(format!(
                            "organizational unit {id}: parent {p:?} is not an \
                             [[organizational_unit]]"
                        ))
                    }
                }
            }
        }
        // The chain of an OU up to the root (innermost first); a cycle is an error.
        let chain = |ou: &str| -> Result<Vec<String>, AccountsError> {
            let mut out = vec![ou.to_string()];
            let mut at = ous.get(ou).and_then(|(_, p)| p.clone());
            while let Some(p) = at {
                if out.contains(&p) {
                    return Err(AccountsError(format!(
                        "organizational unit {ou}: its parents form a cycle through {p}"
                    )));
                }
                out.push(p.clone());
                at = ous.get(&p).and_then(|(_, pp)| pp.clone());
            }
            Ok(out)
        };

        let mut accounts = Accounts::default();
        for a in &file.accounts {
            if !ids::is_account_id(&a.id) {
                return err(format!("account id {:?} must be 12 digits", a.id));
            }
            if !accounts.accounts.insert(a.id.clone()) {
                return err(format!("account {} is listed twice", a.id));
            }
            if a.token.is_empty() || !a.token.bytes().all(|b| b.is_ascii_graphic()) {
                return err(format!(
                    "account {}: the token must be non-empty visible ASCII (no spaces)",
                    a.id
                ));
            }
            if accounts
                .tokens
                .insert(a.token.clone(), a.id.clone())
                .is_some()
            {
                return err(format!(
                    "account {}: its token is also another account's",
                    a.id
                ));
            }
            let org = match (&a.organization, &a.ou) {
                // A management account is in its organization even if the entry omits it.
                (None, None) => orgs
                    .iter()
                    .find(|(_, mgmt)| **mgmt == a.id)
                    .map(|(o, _)| o.clone()),
                (None, Some(ou)) => {
                    return err(format!("account {}: ou {ou} needs organization too", a.id))
                }
                (Some(o), _) => Some(o.clone()),
            };
            let Some(org) = org else { continue };
            let Some(mgmt) = orgs.get(&org) else {
                return err(format!(
                    "account {}: organization {org:?} is not an [[organization]]",
                    a.id
                ));
            };
            if let Some((other, _)) = orgs.iter().find(|(o, m)| **m == a.id && **o != org) {
                return err(format!(
                    "account {} manages organization {other} and cannot be in {org}",
                    a.id
                ));
            }
            let mut ou_arns = Vec::new();
            if let Some(ou) = &a.ou {
                if !is_ou_id(ou) {
                    return err(format!(
                        "account {}: ou {ou:?} must look like ou-ab12-abcdefgh",
                        a.id
                    ));
                }
                if let Some((ou_org, _)) = ous.get(ou) {
                    if *ou_org != org {
                        return err(format!(
                            "account {}: ou {ou} belongs to organization {ou_org}, not {org}",
                            a.id
                        ));
                    }
                }
                for o in chain(ou)? {
                    ou_arns.push(ou_arn(mgmt, &org, &o));
                }
            }
            accounts.membership.insert(
                a.id.clone(),
                OrgMembership {
                    organization_arn: organization_arn(mgmt, &org),
                    ou_arns,
                },
            );
        }
        let Some(operator) = file.operator else {
            return err(
                "[operator] token = \"...\" is missing: with an accounts file the internal Region \
                 and Audit services accept only the operator token, and the coordinator sends it \
                 to the region nodes"
                    .into(),
            );
        };
        if operator.token.is_empty() || !operator.token.bytes().all(|b| b.is_ascii_graphic()) {
            return err("[operator]: the token must be non-empty visible ASCII (no spaces)".into());
        }
        if let Some(account) = accounts.tokens.get(&operator.token) {
            return err(format!(
                "[operator]: its token is also account {account}'s: the operator token must \
                 be its own"
            ));
        }
        accounts.operator = Some(operator.token);
        Ok(accounts)
    }

    /// The account a bearer token authenticates as.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        self.tokens.get(token).map(String::as_str)
    }

    /// The account of an `authorization` header value `Bearer <token>` (scheme
    /// case-insensitive). A missing header, another scheme or an unknown token is `AuthFailure`
    /// with EC2's message, whatever else the request says.
    pub fn authenticate_header(&self, header: Option<&str>) -> Result<&str, Ec2Error> {
        bearer(header)
            .and_then(|t| self.authenticate(t))
            .ok_or_else(|| Ec2Error::new(ErrorCode::AuthFailure, AUTH_FAILURE))
    }

    /// The `[operator]` token, which the coordinator sends to the internal services.
    pub fn operator_token(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    /// Checks that an `authorization` header value is `Bearer <operator token>` (the only
    /// credential of the internal `Region` and `Audit` services). Anything else — none, another
    /// scheme, an account's token — is `AuthFailure`.
    pub fn authenticate_operator_header(&self, header: Option<&str>) -> Result<(), Ec2Error> {
        match (bearer(header), self.operator.as_deref()) {
            (Some(given), Some(want)) if same_secret(given, want) => Ok(()),
            _ => Err(Ec2Error::new(
                ErrorCode::AuthFailure,
                format!(
                    "{AUTH_FAILURE}: this internal service accepts only the operator token \
                     ([operator] in the accounts file)"
                ),
            )),
        }
    }

    /// True if the file lists `account`.
    pub fn contains(&self, account: &str) -> bool {
        self.accounts.contains(account)
    }

    /// The listed accounts, in id order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.accounts.iter().map(String::as_str)
    }

    /// Organization membership of the listed accounts.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "o-abcde12345";
    const MGMT: &str = "999988887777";

    fn account(id: &str, token: &str, org: Option<&str>, ou: Option<&str>) -> AccountEntry {
        AccountEntry {
            id: id.into(),
            token: token.into(),
            organization: org.map(Into::into),
            ou: ou.map(Into::into),
        }
    }

    fn file(accounts: Vec<AccountEntry>, ous: Vec<OuEntry>) -> AccountsFile {
        AccountsFile {
            accounts,
            organizations: vec![OrganizationEntry {
                id: ORG.into(),
                management_account: MGMT.into(),
            }],
            organizational_units: ous,
            operator: Some(OperatorEntry {
                token: "op-secret".into(),
            }),
        }
    }

    #[test]
    fn ids_and_arns_have_the_organizations_shapes() {
        assert!(is_organization_id("o-abcde12345"));
        assert!(!is_organization_id("o-abc"));
        assert!(!is_organization_id("o-ABCDE12345"));
        assert!(is_ou_id("ou-ab12-abcdefgh"));
        assert!(!is_ou_id("ou-ab12"));
        assert!(!is_ou_id("ou-a-abcdefgh"));
        assert!(is_organization_arn(&organization_arn(MGMT, ORG)));
        assert!(!is_organization_arn(ORG), "a bare o-… is not an ARN");
        assert!(is_ou_arn(&ou_arn(MGMT, ORG, "ou-ab12-abcdefgh")));
        assert!(!is_ou_arn("ou-ab12-abcdefgh"));
        assert!(!is_ou_arn(&organization_arn(MGMT, ORG)));
        assert!(!is_organization_arn(
            "arn:aws:organizations::12:organization/o-abcde12345"
        ));
    }

    #[test]
    fn nested_ous_cover_the_accounts_below_them() {
        let a = Accounts::from_file(file(
            vec![
                account("111122223333", "t1", Some(ORG), Some("ou-ab12-team0001")),
                account("444455556666", "t2", Some(ORG), None),
                account("777788889999", "t3", None, None),
                account(MGMT, "tm", None, None),
            ],
            vec![
                OuEntry {
                    id: "ou-ab12-team0001".into(),
                    organization: ORG.into(),
                    parent: Some("ou-ab12-dept0001".into()),
                },
                OuEntry {
                    id: "ou-ab12-dept0001".into(),
                    organization: ORG.into(),
                    parent: None,
                },
            ],
        ))
        .unwrap();
        let m = a.membership();
        let org = organization_arn(MGMT, ORG);
        let team = ou_arn(MGMT, ORG, "ou-ab12-team0001");
        let dept = ou_arn(MGMT, ORG, "ou-ab12-dept0001");
        assert!(m.in_organization("111122223333", &org));
        assert!(m.in_ou("111122223333", &team));
        assert!(
            m.in_ou("111122223333", &dept),
            "an OU covers the OUs below it"
        );
        assert!(m.in_organization("444455556666", &org));
        assert!(!m.in_ou("444455556666", &dept));
        assert!(!m.in_organization("777788889999", &org));
        assert!(
            m.in_organization(MGMT, &org),
            "the management account is in its org"
        );
        assert_eq!(a.authenticate("t2"), Some("444455556666"));
        assert_eq!(a.authenticate("nope"), None);
        assert!(!format!("{a:?}").contains("t1"), "Debug never shows tokens");
    }

    #[test]
    fn bearer_headers_authenticate_only_known_tokens() {
        let a = Accounts::from_file(file(
            vec![account("111122223333", "t1", None, None)],
            vec![],
        ))
        .unwrap();
        assert_eq!(a.authenticate_header(Some("Bearer t1")), Ok("111122223333"));
        assert_eq!(
            a.authenticate_header(Some("bearer  t1 ")),
            Ok("111122223333")
        );
        for bad in [
            None,
            Some(""),
            Some("t1"),
            Some("Basic t1"),
            Some("Bearer t2"),
        ] {
            let e = a.authenticate_header(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::AuthFailure, "{bad:?}");
        }
    }

    #[test]
    fn only_the_operator_token_opens_the_internal_services() {
        let a = Accounts::from_file(file(
            vec![account("111122223333", "t1", None, None)],
            vec![],
        ))
        .unwrap();
        assert_eq!(a.operator_token(), Some("op-secret"));
        assert_eq!(
            a.authenticate_operator_header(Some("Bearer op-secret")),
            Ok(())
        );
        assert_eq!(
            a.authenticate_operator_header(Some(" bearer op-secret ")),
            Ok(())
        );
        for bad in [
            None,
            Some(""),
            Some("op-secret"),
            Some("Basic op-secret"),
            Some("Bearer t1"),
            Some("Bearer op-secre"),
            Some("Bearer op-secretx"),
        ] {
            let e = a.authenticate_operator_header(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::AuthFailure, "{bad:?}");
        }
        // The operator is no account: its token opens no Ec2 call.
        assert_eq!(a.authenticate("op-secret"), None);
        assert!(a.authenticate_header(Some("Bearer op-secret")).is_err());
        assert!(
            !format!("{a:?}").contains("op-secret"),
            "Debug never shows it"
        );
        assert!(!format!("{:?}", file(vec![], vec![])).contains("op-secret"));
        // An empty Accounts (no file was checked) lets nobody in.
        assert!(Accounts::default()
            .authenticate_operator_header(Some("Bearer "))
            .is_err());
    }

    #[test]
    fn the_operator_token_is_required_and_its_own() {
        let mut f = file(vec![account("111122223333", "t1", None, None)], vec![]);
        f.operator = None;
        let e = Accounts::from_file(f).unwrap_err();
        assert!(e.0.contains("[operator]"), "{e}");
        for (token, want) in [
            ("", "non-empty"),
            ("has space", "non-empty"),
            ("t1", "111122223333"),
        ] {
            let mut f = file(vec![account("111122223333", "t1", None, None)], vec![]);
            f.operator = Some(OperatorEntry {
                token: token.into(),
            });
            let e = Accounts::from_file(f).unwrap_err();
            assert!(e.0.contains(want), "{e} should mention {want:?}");
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_entry() {
        let cycle = vec![
            OuEntry {
                id: "ou-ab12-aaaaaaaa".into(),
                organization: ORG.into(),
                parent: Some("ou-ab12-bbbbbbbb".into()),
            },
            OuEntry {
                id: "ou-ab12-bbbbbbbb".into(),
                organization: ORG.into(),
                parent: Some("ou-ab12-aaaaaaaa".into()),
            },
        ];
        let cases: Vec<(AccountsFile, &str)> = vec![
            (
                file(vec![account("123", "t", None, None)], vec![]),
                "12 digits",
            ),
            (
                file(
                    vec![
                        account("111122223333", "t", None, None),
                        account("444455556666", "t", None, None),
                    ],
                    vec![],
                ),
                "token",
            ),
            (
                file(
                    vec![
                        account("111122223333", "a", None, None),
                        account("111122223333", "b", None, None),
                    ],
                    vec![],
                ),
                "twice",
            ),
            (
                file(vec![account("111122223333", "", None, None)], vec![]),
                "token",
            ),
            (
                file(
                    vec![account("111122223333", "t", Some("o-zzzzz99999"), None)],
                    vec![],
                ),
                "not an [[organization]]",
            ),
            (
                file(
                    vec![account("111122223333", "t", None, Some("ou-ab12-team0001"))],
                    vec![],
                ),
                "needs organization",
            ),
            (
                file(
                    vec![account("111122223333", "t", Some(ORG), Some("ou-x"))],
                    vec![],
                ),
                "ou-ab12-abcdefgh",
            ),
            (
                file(
                    vec![account(
                        "111122223333",
                        "t",
                        Some(ORG),
                        Some("ou-ab12-aaaaaaaa"),
                    )],
                    cycle,
                ),
                "cycle",
            ),
        ];
        for (f, want) in cases {
            let e = Accounts::from_file(f).unwrap_err();
            assert!(e.0.contains(want), "{e} should mention {want:?}");
        }
    }
}
