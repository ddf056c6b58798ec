//! Given / when / then for every KMS action and error (kms.proto).

use super::*;
use crate::testkit::{code, Harness, OTHER, OWNER, REGION, T0};
use crate::{Answer, Command, Query};

const DAY: u64 = 86_400_000;

// -------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------

fn create(h: &mut Harness, account: &str, r: pb::CreateKeyRequest) -> pb::KeyMetadata {
    let d = h.when(account, Command::CreateKey(r)).expect("CreateKey");
    match d.reply {
        Reply::CreateKey(r) => r.key_metadata.expect("metadata"),
        other => panic!("{other:?}"),
    }
}

fn new_key(h: &mut Harness, account: &str) -> pb::KeyMetadata {
    create(h, account, Default::default())
}

fn describe(h: &Harness, account: &str, key_id: &str) -> Ec2Result<pb::KeyMetadata> {
    match h.read(
        account,
        Query::DescribeKey(pb::DescribeKeyRequest {
            key_id: key_id.into(),
        }),
    )? {
        Answer::DescribeKey(r) => Ok(r.key_metadata.expect("metadata")),
        other => panic!("{other:?}"),
    }
}

fn create_alias(h: &mut Harness, account: &str, name: &str, target: &str) -> Ec2Result<Decision> {
    h.when(
        account,
        Command::CreateAlias(pb::CreateAliasRequest {
            alias_name: name.into(),
            target_key_id: target.into(),
        }),
    )
}

fn list_keys(
    h: &Harness,
    account: &str,
    limit: Option<i32>,
    marker: &str,
) -> Ec2Result<pb::ListKeysResponse> {
    match h.read(
        account,
        Query::ListKeys(pb::ListKeysRequest {
            limit,
            marker: marker.into(),
        }),
    )? {
        Answer::ListKeys(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

fn list_aliases(
    h: &Harness,
    account: &str,
    key_id: &str,
    limit: Option<i32>,
    marker: &str,
) -> Ec2Result<pb::ListAliasesResponse> {
    match h.read(
        account,
        Query::ListAliases(pb::ListAliasesRequest {
            key_id: key_id.into(),
            limit,
            marker: marker.into(),
        }),
    )? {
        Answer::ListAliases(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

fn enable(key_id: &str) -> Command {
    Command::EnableKey(pb::EnableKeyRequest {
        key_id: key_id.into(),
    })
}

fn disable(key_id: &str) -> Command {
    Command::DisableKey(pb::DisableKeyRequest {
        key_id: key_id.into(),
    })
}

fn schedule(key_id: &str, days: Option<i32>) -> Command {
    Command::ScheduleKeyDeletion(pb::ScheduleKeyDeletionRequest {
        key_id: key_id.into(),
        pending_window_in_days: days,
    })
}

fn cancel(key_id: &str) -> Command {
    Command::CancelKeyDeletion(pb::CancelKeyDeletionRequest {
        key_id: key_id.into(),
    })
}

fn put_policy(key_id: &str, accounts: &[&str]) -> Command {
    Command::PutKeyPolicy(pb::PutKeyPolicyRequest {
        key_id: key_id.into(),
        policy_name: String::new(),
        policy: Some(pb::KeyPolicy {
            account_ids: accounts.iter().map(|a| a.to_string()).collect(),
        }),
    })
}

fn get_policy(h: &Harness, account: &str, key_id: &str) -> Ec2Result<pb::GetKeyPolicyResponse> {
    match h.read(
        account,
        Query::GetKeyPolicy(pb::GetKeyPolicyRequest {
            key_id: key_id.into(),
            policy_name: String::new(),
        }),
    )? {
        Answer::GetKeyPolicy(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

/// The error of `cmd`, checking that it would write nothing.
fn refused(h: &mut Harness, account: &str, cmd: Command) -> Ec2Error {
    let logged = h.log.len();
    let e = h.try_decide(account, cmd).unwrap_err();
    assert_eq!(h.log.len(), logged);
    e
}

// -------------------------------------------------------------------------------------------
// CreateKey / DescribeKey
// -------------------------------------------------------------------------------------------

#[test]
fn create_key_makes_an_enabled_symmetric_customer_key() {
    let mut h = Harness::new();
    let d = h
        .when(
            OWNER,
            Command::CreateKey(pb::CreateKeyRequest {
                description: "my key".into(),
                tags: vec![pb::KeyTag {
                    tag_key: "team".into(),
                    tag_value: "blue".into(),
                }],
                ..Default::default()
            }),
        )
        .unwrap();
    let [Payload::KmsKeyCreated(e)] = d.events.as_slice() else {
        panic!("{:?}", d.events)
    };
    assert_eq!(e.owner_id, OWNER);
    assert_eq!(e.key_id.len(), 36);
    assert_eq!(
        e.arn,
        format!("arn:aws:kms:us-east-1:{OWNER}:key/{}", e.key_id)
    );
    let Reply::CreateKey(r) = &d.reply else {
        panic!("{:?}", d.reply)
    };
    let m = r.key_metadata.clone().unwrap();
    assert_eq!(m.key_id, e.key_id);
    assert_eq!(m.arn, e.arn);
    assert_eq!(m.aws_account_id, OWNER);
    assert!(m.enabled);
    assert_eq!(m.key_state, "Enabled");
    assert_eq!(m.key_usage, "ENCRYPT_DECRYPT");
    assert_eq!(m.key_spec, "SYMMETRIC_DEFAULT");
    assert_eq!(m.customer_master_key_spec, "SYMMETRIC_DEFAULT");
    assert_eq!(m.encryption_algorithms, vec!["SYMMETRIC_DEFAULT"]);
    assert_eq!(m.key_manager, "CUSTOMER");
    assert_eq!(m.origin, "AWS_KMS");
    assert_eq!(m.description, "my key");
    assert_eq!(m.creation_date, "2024-05-01T00:00:00.000Z");
    assert!(m.deletion_date.is_empty());
    // Every form of reference names it.
    create_alias(&mut h, OWNER, "alias/mine", &m.key_id).unwrap();
    for r in [
        m.key_id.clone(),
        m.arn.clone(),
        "alias/mine".to_string(),
        format!("arn:aws:kms:us-east-1:{OWNER}:alias/mine"),
    ] {
        assert_eq!(describe(&h, OWNER, &r).unwrap(), m, "{r}");
    }
    // Explicit defaults are accepted.
    let m2 = create(
        &mut h,
        OWNER,
        pb::CreateKeyRequest {
            key_usage: "ENCRYPT_DECRYPT".into(),
            key_spec: "SYMMETRIC_DEFAULT".into(),
            ..Default::default()
        },
    );
    assert_ne!(m2.key_id, m.key_id);
    h.assert_replay_equals_live();
}

#[test]
fn create_key_checks_its_parameters() {
    let mut h = Harness::new();
    let tag = |k: &str| pb::KeyTag {
        tag_key: k.into(),
        tag_value: "v".into(),
    };
    let cases: Vec<(pb::CreateKeyRequest, ErrorCode)> = vec![
        (
            pb::CreateKeyRequest {
                key_usage: "SIGN_VERIFY".into(),
                ..Default::default()
            },
            ErrorCode::KmsValidation,
        ),
        (
            pb::CreateKeyRequest {
                key_spec: "RSA_2048".into(),
                ..Default::default()
            },
            ErrorCode::KmsValidation,
        ),
        (
            pb::CreateKeyRequest {
                description: "d".repeat(8193),
                ..Default::default()
            },
            ErrorCode::KmsValidation,
        ),
        (
            pb::CreateKeyRequest {
                policy: Some(pb::KeyPolicy {
                    account_ids: vec!["12345".into()],
                }),
                ..Default::default()
            },
            ErrorCode::KmsMalformedPolicyDocument,
        ),
        (
            pb::CreateKeyRequest {
                tags: vec![tag("aws:reserved")],
                ..Default::default()
            },
            ErrorCode::KmsTag,
        ),
        (
            pb::CreateKeyRequest {
                tags: vec![tag("a"), tag("a")],
                ..Default::default()
            },
            ErrorCode::KmsTag,
        ),
        (
            pb::CreateKeyRequest {
                tags: vec![tag("")],
                ..Default::default()
            },
            ErrorCode::KmsTag,
        ),
        (
            pb::CreateKeyRequest {
                tags: (0..51).map(|i| tag(&format!("k{i}"))).collect(),
                ..Default::default()
            },
            ErrorCode::KmsTag,
        ),
    ];
    for (r, want) in cases {
        let e = refused(&mut h, OWNER, Command::CreateKey(r.clone()));
        assert_eq!(e.code, want, "{r:?}");
    }
    let e = refused(
        &mut h,
        OWNER,
        Command::CreateKey(pb::CreateKeyRequest {
            policy: Some(pb::KeyPolicy {
                account_ids: vec!["x".into()],
            }),
            ..Default::default()
        }),
    );
    assert_eq!(
        e.message,
        "Policy contains a statement with one or more invalid principals."
    );
    assert_eq!(e.code.as_str(), "MalformedPolicyDocumentException");
    // The owner in its own policy is implied, not listed.
    let m = create(
        &mut h,
        OWNER,
        pb::CreateKeyRequest {
            policy: Some(pb::KeyPolicy {
                account_ids: vec![OTHER.into(), OWNER.into(), OTHER.into()],
            }),
            ..Default::default()
        },
    );
    assert_eq!(
        get_policy(&h, OWNER, &m.key_id)
            .unwrap()
            .policy
            .unwrap()
            .account_ids,
        vec![OTHER.to_string()]
    );
}

#[test]
fn describe_key_errors_are_kmss() {
    let mut h = Harness::new();
    let mine = new_key(&mut h, OWNER);
    // Missing, malformed ARN, unknown id, unknown alias.
    assert_eq!(code(describe(&h, OWNER, "")), ErrorCode::KmsValidation);
    let e = describe(&h, OWNER, "arn:aws:s3:::bucket").unwrap_err();
    assert_eq!(e.code, ErrorCode::KmsInvalidArn);
    assert_eq!(e.message, "Invalid arn arn:aws:s3:::bucket");
    assert_eq!(
        code(describe(&h, OWNER, "arn:aws:kms:us-east-1:123:key/x")),
        ErrorCode::KmsInvalidArn
    );
    let e = describe(&h, OWNER, "44444444-4444-4444-8444-444444444444").unwrap_err();
    assert_eq!(e.code, ErrorCode::KmsNotFound);
    assert_eq!(e.code.as_str(), "NotFoundException");
    assert_eq!(
        e.message,
        format!("Key 'arn:aws:kms:us-east-1:{OWNER}:key/44444444-4444-4444-8444-444444444444' does not exist")
    );
    let e = describe(&h, OWNER, "alias/none").unwrap_err();
    assert_eq!(e.code, ErrorCode::KmsNotFound);
    assert_eq!(
        e.message,
        format!("Alias 'arn:aws:kms:us-east-1:{OWNER}:alias/none' is not found.")
    );
    // Keys are regional: the ARN of another region is not found here.
    let elsewhere = key_arn("eu-west-1", OWNER, &mine.key_id);
    assert_eq!(
        code(describe(&h, OWNER, &elsewhere)),
        ErrorCode::KmsNotFound
    );
    // Another account: its bare id names the caller's (none), its ARN is denied without the
    // policy and shown with it.
    assert_eq!(
        code(describe(&h, OTHER, &mine.key_id)),
        ErrorCode::KmsNotFound
    );
    let e = describe(&h, OTHER, &mine.arn).unwrap_err();
    assert_eq!(e.code, ErrorCode::KmsAccessDenied);
    assert_eq!(e.code.as_str(), "AccessDeniedException");
    assert!(e.message.contains("kms:DescribeKey"), "{}", e.message);
    h.when(OWNER, put_policy(&mine.key_id, &[OTHER])).unwrap();
    assert_eq!(describe(&h, OTHER, &mine.arn).unwrap().key_id, mine.key_id);
}

#[test]
fn the_aws_managed_ebs_key_is_implicit_per_account_and_region_and_cannot_be_administered() {
    let mut h = Harness::new();
    let m = describe(&h, OWNER, "alias/aws/ebs").unwrap();
    assert_eq!(m.key_manager, "AWS");
    assert_eq!(m.key_state, "Enabled");
    assert_eq!(m.key_id, aws_managed_key_id(REGION, OWNER));
    assert_eq!(m.arn, aws_managed_key_arn(REGION, OWNER));
    assert_eq!(describe(&h, OWNER, &m.key_id).unwrap(), m);
    assert_eq!(describe(&h, OWNER, &m.arn).unwrap(), m);
    // Deterministic, and different per account and per region.
    assert_eq!(aws_managed_key_id(REGION, OWNER), m.key_id);
    assert_ne!(aws_managed_key_id(REGION, OTHER), m.key_id);
    assert_ne!(aws_managed_key_id("eu-west-1", OWNER), m.key_id);
    assert!(is_aws_managed_key(&m.arn));
    assert!(is_aws_managed_key(
        "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs"
    ));
    assert!(!is_aws_managed_key(&key_arn(
        REGION,
        OWNER,
        "44444444-4444-4444-8444-444444444444"
    )));
    // Only its account may use it.
    assert_eq!(
        code(describe(&h, OTHER, &m.arn)),
        ErrorCode::KmsAccessDenied
    );
    // No administration, no aliases of it, no `alias/aws/` aliases.
    for cmd in [
        disable(&m.key_id),
        enable(&m.arn),
        schedule(&m.key_id, None),
        put_policy(&m.key_id, &[OTHER]),
    ] {
        assert_eq!(
            refused(&mut h, OWNER, cmd.clone()).code,
            ErrorCode::KmsAccessDenied,
            "{cmd:?}"
        );
    }
    assert_eq!(
        code(create_alias(&mut h, OWNER, "alias/ebs", &m.key_id)),
        ErrorCode::KmsAccessDenied
    );
    let mine = new_key(&mut h, OWNER);
    let e = create_alias(&mut h, OWNER, "alias/aws/mine", &mine.key_id).unwrap_err();
    assert_eq!(e.code, ErrorCode::KmsNotAuthorized);
    assert_eq!(e.code.as_str(), "NotAuthorizedException");
    // Its policy may be read by its account.
    assert!(get_policy(&h, OWNER, &m.key_id)
        .unwrap()
        .policy
        .unwrap()
        .account_ids
        .is_empty());
    assert!(h.state.kms_keys.len() == 1, "the managed key is not stored");
}

// -------------------------------------------------------------------------------------------
// ListKeys
// -------------------------------------------------------------------------------------------

#[test]
fn list_keys_pages_through_the_callers_keys() {
    let mut h = Harness::new();
    let mut ids: Vec<String> = (0..4).map(|_| new_key(&mut h, OWNER).key_id).collect();
    new_key(&mut h, OTHER);
    ids.push(aws_managed_key_id(REGION, OWNER));
    ids.sort();
    // Everything (default limit 100), in key id order, the AWS managed key included.
    let all = list_keys(&h, OWNER, None, "").unwrap();
    assert!(!all.truncated && all.next_marker.is_empty());
    let got: Vec<String> = all.keys.iter().map(|k| k.key_id.clone()).collect();
    assert_eq!(got, ids);
    assert!(all
        .keys
        .iter()
        .all(|k| k.key_arn == key_arn(REGION, OWNER, &k.key_id)));
    // Pages of two.
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let page = list_keys(&h, OWNER, Some(2), &marker).unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.iter().map(|k| k.key_id.clone()));
        if !page.truncated {
            assert!(page.next_marker.is_empty());
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(seen, ids);
    // Limits and markers.
    for bad in [0, 1001] {
        assert_eq!(
            code(list_keys(&h, OWNER, Some(bad), "")),
            ErrorCode::KmsValidation
        );
    }
    assert_eq!(list_keys(&h, OWNER, Some(1000), "").unwrap().keys.len(), 5);
    let e = list_keys(&h, OWNER, None, "not-a-marker").unwrap_err();
    assert_eq!(e.code, ErrorCode::KmsInvalidMarker);
    assert_eq!(e.code.as_str(), "InvalidMarkerException");
    // Another account sees only its own.
    assert_eq!(list_keys(&h, OTHER, None, "").unwrap().keys.len(), 2);
}

// -------------------------------------------------------------------------------------------
// CreateAlias / ListAliases
// -------------------------------------------------------------------------------------------

#[test]
fn create_alias_checks_name_target_and_uniqueness() {
    let mut h = Harness::new();
    let k = new_key(&mut h, OWNER);
    let theirs = new_key(&mut h, OTHER);
    let d = create_alias(&mut h, OWNER, "alias/app-1_x", &k.arn).unwrap();
    assert_eq!(
        d.events,
        vec![Payload::KmsAliasCreated(pb::KmsAliasCreated {
            owner_id: OWNER.into(),
            alias_name: "alias/app-1_x".into(),
            target_key_id: k.key_id.clone(),
            creation_date_ms: T0,
        })]
    );
    let cases: Vec<(&str, String, ErrorCode)> = vec![
        ("", k.key_id.clone(), ErrorCode::KmsValidation),
        ("alias/x", String::new(), ErrorCode::KmsValidation),
        ("mine", k.key_id.clone(), ErrorCode::KmsValidation),
        ("alias/", k.key_id.clone(), ErrorCode::KmsValidation),
        (
            "alias/white space",
            k.key_id.clone(),
            ErrorCode::KmsValidation,
        ),
        ("alias/a:b", k.key_id.clone(), ErrorCode::KmsValidation),
        ("alias/aws/x", k.key_id.clone(), ErrorCode::KmsNotAuthorized),
        // The target must be a key, not an alias.
        ("alias/x", "alias/app-1_x".into(), ErrorCode::KmsValidation),
        (
            "alias/x",
            "44444444-4444-4444-8444-444444444444".into(),
            ErrorCode::KmsNotFound,
        ),
        ("alias/x", "arn:aws:kms:x".into(), ErrorCode::KmsInvalidArn),
        // Another account's key.
        ("alias/x", theirs.arn.clone(), ErrorCode::KmsAccessDenied),
        (
            "alias/app-1_x",
            k.key_id.clone(),
            ErrorCode::KmsAlreadyExists,
        ),
    ];
    for (name, target, want) in cases {
        let logged = h.log.len();
        let e = create_alias(&mut h, OWNER, name, &target).unwrap_err();
        assert_eq!(e.code, want, "{name} → {target}");
        assert_eq!(h.log.len(), logged);
    }
    let e = create_alias(&mut h, OWNER, "alias/app-1_x", &k.key_id).unwrap_err();
    assert_eq!(
        e.message,
        format!(
            "An alias with the name arn:aws:kms:us-east-1:{OWNER}:alias/app-1_x already exists"
        )
    );
    assert_eq!(
        code(create_alias(
            &mut h,
            OWNER,
            &format!("alias/{}", "a".repeat(251)),
            &k.key_id
        )),
        ErrorCode::KmsValidation
    );
    create_alias(
        &mut h,
        OWNER,
        &format!("alias/{}", "a".repeat(250)),
        &k.key_id,
    )
    .unwrap();
    // The same name in another account is another alias.
    create_alias(&mut h, OTHER, "alias/app-1_x", &theirs.key_id).unwrap();
    // A key pending deletion takes no new alias (a disabled one does).
    h.when(OWNER, disable(&k.key_id)).unwrap();
    create_alias(&mut h, OWNER, "alias/disabled-ok", &k.key_id).unwrap();
    h.when(OWNER, schedule(&k.key_id, None)).unwrap();
    assert_eq!(
        code(create_alias(&mut h, OWNER, "alias/late", &k.key_id)),
        ErrorCode::KmsInvalidState
    );
    h.assert_replay_equals_live();
}

#[test]
fn list_aliases_shows_the_callers_and_the_aws_managed_one() {
    let mut h = Harness::new();
    let a = new_key(&mut h, OWNER);
    let b = new_key(&mut h, OWNER);
    create_alias(&mut h, OWNER, "alias/b-one", &b.key_id).unwrap();
    create_alias(&mut h, OWNER, "alias/a-one", &a.key_id).unwrap();
    create_alias(&mut h, OWNER, "alias/a-two", &a.key_id).unwrap();
    let theirs = new_key(&mut h, OTHER);
    create_alias(&mut h, OTHER, "alias/theirs", &theirs.key_id).unwrap();
    let all = list_aliases(&h, OWNER, "", None, "").unwrap();
    let names: Vec<&str> = all.aliases.iter().map(|x| x.alias_name.as_str()).collect();
    assert_eq!(
        names,
        vec!["alias/a-one", "alias/a-two", "alias/aws/ebs", "alias/b-one"]
    );
    let ebs = &all.aliases[2];
    assert_eq!(ebs.target_key_id, aws_managed_key_id(REGION, OWNER));
    assert_eq!(
        ebs.alias_arn,
        format!("arn:aws:kms:us-east-1:{OWNER}:alias/aws/ebs")
    );
    assert_eq!(all.aliases[0].target_key_id, a.key_id);
    assert_eq!(all.aliases[0].creation_date, "2024-05-01T00:00:00.000Z");
    // One key's aliases, by id or ARN.
    for r in [a.key_id.as_str(), a.arn.as_str()] {
        let only = list_aliases(&h, OWNER, r, None, "").unwrap();
        assert_eq!(only.aliases.len(), 2);
    }
    assert_eq!(
        code(list_aliases(&h, OWNER, "alias/a-one", None, "")),
        ErrorCode::KmsNotFound
    );
    assert_eq!(
        code(list_aliases(&h, OWNER, &theirs.arn, None, "")),
        ErrorCode::KmsAccessDenied
    );
    // Pages.
    let p1 = list_aliases(&h, OWNER, "", Some(3), "").unwrap();
    assert!(p1.truncated);
    assert_eq!(p1.aliases.len(), 3);
    let p2 = list_aliases(&h, OWNER, "", Some(3), &p1.next_marker).unwrap();
    assert!(!p2.truncated);
    assert_eq!(p2.aliases[0].alias_name, "alias/b-one");
    for bad in [0, 101] {
        assert_eq!(
            code(list_aliases(&h, OWNER, "", Some(bad), "")),
            ErrorCode::KmsValidation
        );
    }
    assert_eq!(
        code(list_aliases(&h, OWNER, "", None, "zz")),
        ErrorCode::KmsInvalidMarker
    );
}

// -------------------------------------------------------------------------------------------
// EnableKey / DisableKey
// -------------------------------------------------------------------------------------------

#[test]
fn enable_and_disable_change_the_state_once() {
    let mut h = Harness::new();
    let k = new_key(&mut h, OWNER);
    // Enabling an enabled key writes nothing.
    assert!(h.when(OWNER, enable(&k.key_id)).unwrap().events.is_empty());
    let d = h.when(OWNER, disable(&k.arn)).unwrap();
    assert_eq!(
        d.events,
        vec![Payload::KmsKeyDisabled(pb::KmsKeyDisabled {
            key_id: k.key_id.clone()
        })]
    );
    let m = describe(&h, OWNER, &k.key_id).unwrap();
    assert_eq!((m.key_state.as_str(), m.enabled), ("Disabled", false));
    assert!(h.when(OWNER, disable(&k.key_id)).unwrap().events.is_empty());
    let d = h.when(OWNER, enable(&k.key_id)).unwrap();
    assert_eq!(
        d.events,
        vec![Payload::KmsKeyEnabled(pb::KmsKeyEnabled {
            key_id: k.key_id.clone()
        })]
    );
    assert!(describe(&h, OWNER, &k.key_id).unwrap().enabled);
    // Key id or key ARN only; the owner only.
    create_alias(&mut h, OWNER, "alias/k", &k.key_id).unwrap();
    for cmd in [disable("alias/k"), enable("alias/k")] {
        let e = refused(&mut h, OWNER, cmd);
        assert_eq!(e.code, ErrorCode::KmsNotFound);
        assert_eq!(e.message, "Invalid keyId alias/k");
    }
    assert_eq!(
        refused(&mut h, OWNER, disable("")).code,
        ErrorCode::KmsValidation
    );
    assert_eq!(
        refused(&mut h, OWNER, disable("arn:aws:kms:us-east-1")).code,
        ErrorCode::KmsInvalidArn
    );
    assert_eq!(
        refused(
            &mut h,
            OWNER,
            disable("44444444-4444-4444-8444-444444444444")
        )
        .code,
        ErrorCode::KmsNotFound
    );
    h.when(OWNER, put_policy(&k.key_id, &[OTHER])).unwrap();
    let e = refused(&mut h, OTHER, disable(&k.arn));
    assert_eq!(e.code, ErrorCode::KmsAccessDenied);
    assert!(e.message.contains("kms:DisableKey"));
    // Pending deletion: neither.
    h.when(OWNER, schedule(&k.key_id, None)).unwrap();
    for cmd in [enable(&k.key_id), disable(&k.key_id)] {
        let e = refused(&mut h, OWNER, cmd);
        assert_eq!(e.code, ErrorCode::KmsInvalidState);
        assert_eq!(e.code.as_str(), "KMSInvalidStateException");
        assert_eq!(e.message, format!("{} is pending deletion.", k.arn));
    }
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// ScheduleKeyDeletion / CancelKeyDeletion
// -------------------------------------------------------------------------------------------

#[test]
fn schedule_key_deletion_waits_7_to_30_days_then_the_timer_deletes_the_key() {
    let mut h = Harness::new();
    let k = new_key(&mut h, OWNER);
    create_alias(&mut h, OWNER, "alias/doomed", &k.key_id).unwrap();
    for (days, msg) in [
        (6, "greater than or equal to 7"),
        (31, "less than or equal to 30"),
    ] {
        let e = refused(&mut h, OWNER, schedule(&k.key_id, Some(days)));
        assert_eq!(e.code, ErrorCode::KmsValidation);
        assert!(e.message.contains(msg), "{}", e.message);
        assert!(e.message.contains("pendingWindowInDays"));
    }
    // Default: 30 days.
    let d = h.when(OWNER, schedule(&k.key_id, None)).unwrap();
    let due = T0 + 30 * DAY;
    assert_eq!(
        d.events,
        vec![Payload::KmsKeyDeletionScheduled(
            pb::KmsKeyDeletionScheduled {
                key_id: k.key_id.clone(),
                deletion_date_ms: due,
                pending_window_in_days: 30,
            }
        )]
    );
    assert_eq!(
        d.reply,
        Reply::ScheduleKeyDeletion(pb::ScheduleKeyDeletionResponse {
            key_id: k.arn.clone(),
            deletion_date: "2024-05-31T00:00:00.000Z".into(),
            key_state: "PendingDeletion".into(),
            pending_window_in_days: 30,
        })
    );
    let m = describe(&h, OWNER, "alias/doomed").unwrap();
    assert_eq!(m.key_state, "PendingDeletion");
    assert!(!m.enabled);
    assert_eq!(m.deletion_date, "2024-05-31T00:00:00.000Z");
    assert_eq!(h.state.next_due_ms(), Some(due));
    assert_eq!(
        refused(&mut h, OWNER, schedule(&k.key_id, Some(7))).code,
        ErrorCode::KmsInvalidState
    );
    // Cancelled: Disabled (as KMS), no timer.
    let d = h.when(OWNER, cancel(&k.arn)).unwrap();
    assert_eq!(
        d.reply,
        Reply::CancelKeyDeletion(pb::CancelKeyDeletionResponse {
            key_id: k.arn.clone()
        })
    );
    let m = describe(&h, OWNER, &k.key_id).unwrap();
    assert_eq!(
        (m.key_state.as_str(), m.deletion_date.as_str()),
        ("Disabled", "")
    );
    assert_eq!(h.state.next_due_ms(), None);
    let e = refused(&mut h, OWNER, cancel(&k.key_id));
    assert_eq!(e.code, ErrorCode::KmsInvalidState);
    assert!(h.advance(31 * DAY).is_empty());
    // Scheduled for 7 days: deleted when they are over, with its aliases.
    h.when(OWNER, schedule(&k.key_id, Some(7))).unwrap();
    assert!(h.advance(7 * DAY - 1).is_empty());
    let fired = h.advance(1);
    assert_eq!(
        fired,
        vec![Payload::KmsKeyDeleted(pb::KmsKeyDeleted {
            key_id: k.key_id.clone()
        })]
    );
    assert_eq!(code(describe(&h, OWNER, &k.key_id)), ErrorCode::KmsNotFound);
    assert_eq!(
        code(describe(&h, OWNER, "alias/doomed")),
        ErrorCode::KmsNotFound
    );
    assert_eq!(list_keys(&h, OWNER, None, "").unwrap().keys.len(), 1);
    assert_eq!(
        list_aliases(&h, OWNER, "", None, "").unwrap().aliases.len(),
        1
    );
    for cmd in [
        enable(&k.key_id),
        cancel(&k.key_id),
        schedule(&k.key_id, None),
    ] {
        assert_eq!(refused(&mut h, OWNER, cmd).code, ErrorCode::KmsNotFound);
    }
    // The alias name is free again.
    let k2 = new_key(&mut h, OWNER);
    create_alias(&mut h, OWNER, "alias/doomed", &k2.key_id).unwrap();
    // Another account cannot schedule or cancel, even one the policy admits to use the key.
    h.when(OWNER, put_policy(&k2.key_id, &[OTHER])).unwrap();
    for cmd in [schedule(&k2.arn, None), cancel(&k2.arn)] {
        assert_eq!(refused(&mut h, OTHER, cmd).code, ErrorCode::KmsAccessDenied);
    }
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// PutKeyPolicy / GetKeyPolicy
// -------------------------------------------------------------------------------------------

#[test]
fn the_key_policy_is_the_set_of_accounts_that_may_use_the_key() {
    let mut h = Harness::new();
    let k = new_key(&mut h, OWNER);
    let p = get_policy(&h, OWNER, &k.key_id).unwrap();
    assert_eq!(p.policy_name, "default");
    assert!(p.policy.unwrap().account_ids.is_empty());
    let doc: serde_json::Value = serde_json::from_str(&p.policy_document).unwrap();
    assert_eq!(doc["Statement"].as_array().unwrap().len(), 1);
    // Put: an event with the set, sorted and without duplicates.
    let third = "777788889999";
    let d = h
        .when(OWNER, put_policy(&k.arn, &[third, OTHER, third]))
        .unwrap();
    assert_eq!(
        d.events,
        vec![Payload::KmsKeyPolicyChanged(pb::KmsKeyPolicyChanged {
            key_id: k.key_id.clone(),
            policy_account_ids: vec![OTHER.into(), third.into()],
        })]
    );
    let p = get_policy(&h, OWNER, &k.arn).unwrap();
    assert_eq!(p.policy.unwrap().account_ids, vec![OTHER, third]);
    assert!(p
        .policy_document
        .contains(&format!("arn:aws:iam::{OTHER}:root")));
    // The same set again: nothing.
    assert!(h
        .when(OWNER, put_policy(&k.key_id, &[OTHER, third]))
        .unwrap()
        .events
        .is_empty());
    // The admitted account may describe but not administer or read the policy.
    assert!(describe(&h, OTHER, &k.arn).is_ok());
    assert_eq!(
        code(get_policy(&h, OTHER, &k.arn)),
        ErrorCode::KmsAccessDenied
    );
    assert_eq!(
        refused(&mut h, OTHER, put_policy(&k.arn, &[])).code,
        ErrorCode::KmsAccessDenied
    );
    // Errors.
    let named = |name: &str| {
        Command::PutKeyPolicy(pb::PutKeyPolicyRequest {
            key_id: k.key_id.clone(),
            policy_name: name.into(),
            policy: Some(pb::KeyPolicy::default()),
        })
    };
    assert_eq!(
        refused(&mut h, OWNER, named("other")).code,
        ErrorCode::KmsNotFound
    );
    assert!(h.try_decide(OWNER, named("default")).is_ok());
    assert_eq!(
        refused(
            &mut h,
            OWNER,
            Command::PutKeyPolicy(pb::PutKeyPolicyRequest {
                key_id: k.key_id.clone(),
                ..Default::default()
            })
        )
        .code,
        ErrorCode::KmsValidation
    );
    assert_eq!(
        refused(&mut h, OWNER, put_policy(&k.key_id, &["nobody"])).code,
        ErrorCode::KmsMalformedPolicyDocument
    );
    assert_eq!(
        code(h.read(
            OWNER,
            Query::GetKeyPolicy(pb::GetKeyPolicyRequest {
                key_id: k.key_id.clone(),
                policy_name: "x".into()
            })
        )),
        ErrorCode::KmsNotFound
    );
    assert_eq!(
        code(get_policy(&h, OWNER, "alias/x")),
        ErrorCode::KmsNotFound
    );
    // Removing an account takes its use away.
    h.when(OWNER, put_policy(&k.key_id, &[])).unwrap();
    assert_eq!(
        code(describe(&h, OTHER, &k.arn)),
        ErrorCode::KmsAccessDenied
    );
    h.assert_replay_equals_live();
}

// -------------------------------------------------------------------------------------------
// Resolution for EBS
// -------------------------------------------------------------------------------------------

#[test]
fn find_for_use_names_every_reason_a_key_cannot_be_used() {
    let mut h = Harness::new();
    let k = new_key(&mut h, OWNER);
    create_alias(&mut h, OWNER, "alias/k", &k.key_id).unwrap();
    let use_ = |h: &Harness, account: &str, r: &str| {
        find_for_use(&h.state, REGION, account, r).map(|k| k.arn)
    };
    for r in [k.key_id.as_str(), k.arn.as_str(), "alias/k"] {
        assert_eq!(use_(&h, OWNER, r), Ok(k.arn.clone()));
    }
    assert_eq!(use_(&h, OWNER, "alias/none"), Err(KeyProblem::NotFound));
    assert_eq!(use_(&h, OWNER, "arn:aws:s3:::x"), Err(KeyProblem::NotFound));
    assert_eq!(
        use_(&h, OWNER, &key_arn("eu-west-1", OWNER, &k.key_id)),
        Err(KeyProblem::OtherRegion)
    );
    assert_eq!(use_(&h, OTHER, &k.arn), Err(KeyProblem::NotAdmitted));
    assert_eq!(
        use_(&h, OWNER, "alias/aws/ebs"),
        Ok(aws_managed_key_arn(REGION, OWNER))
    );
    assert_eq!(
        use_(&h, OTHER, &aws_managed_key_arn(REGION, OWNER)),
        Err(KeyProblem::NotAdmitted)
    );
    h.when(OWNER, disable(&k.key_id)).unwrap();
    assert_eq!(use_(&h, OWNER, "alias/k"), Err(KeyProblem::Disabled));
    h.when(OWNER, schedule(&k.key_id, None)).unwrap();
    assert_eq!(use_(&h, OWNER, &k.arn), Err(KeyProblem::PendingDeletion));
    assert_eq!(
        KeyProblem::PendingDeletion.kms_code(),
        ErrorCode::KmsInvalidState
    );
    assert_eq!(
        KeyProblem::Disabled.kms_code().as_str(),
        "DisabledException"
    );
    h.advance(30 * DAY);
    assert_eq!(use_(&h, OWNER, &k.arn), Err(KeyProblem::NotFound));
    // A deleted key stays recorded (so resources under it stay unusable); an unknown one is not.
    assert_eq!(
        recorded(&h.state, REGION, OWNER, &k.arn).map(|k| k.state),
        Some(KeyState::Deleted)
    );
    assert!(recorded(&h.state, REGION, OWNER, &key_arn(REGION, OWNER, "x")).is_none());
}

#[test]
fn replaying_the_kms_log_rebuilds_the_same_keys() {
    let mut h = Harness::new();
    let a = new_key(&mut h, OWNER);
    let b = create(
        &mut h,
        OTHER,
        pb::CreateKeyRequest {
            policy: Some(pb::KeyPolicy {
                account_ids: vec![OWNER.into()],
            }),
            tags: vec![pb::KeyTag {
                tag_key: "k".into(),
                tag_value: "v".into(),
            }],
            ..Default::default()
        },
    );
    create_alias(&mut h, OWNER, "alias/a", &a.key_id).unwrap();
    h.when(OWNER, disable(&a.key_id)).unwrap();
    h.when(OWNER, enable(&a.key_id)).unwrap();
    h.when(OTHER, schedule(&b.key_id, Some(10))).unwrap();
    h.when(OTHER, cancel(&b.key_id)).unwrap();
    h.when(OTHER, put_policy(&b.key_id, &[])).unwrap();
    h.when(OWNER, schedule(&a.key_id, Some(7))).unwrap();
    h.advance(8 * DAY);
    h.when(
        OWNER,
        Command::EnableEbsEncryptionByDefault(Default::default()),
    )
    .unwrap();
    h.assert_replay_equals_live();
    assert_eq!(h.state.kms_keys[&a.key_id].state, KeyState::Deleted);
    assert_eq!(h.state.kms_keys[&b.key_id].state, KeyState::Disabled);
    assert_eq!(
        h.state.kms_keys[&b.key_id]
            .tags
            .get("k")
            .map(String::as_str),
        Some("v")
    );
    assert!(h.state.kms_aliases.is_empty());
}
