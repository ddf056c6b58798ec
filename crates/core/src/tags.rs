//! Tags (EC2_SEMANTICS.md §4.5): CreateTags, DeleteTags, and `tag_specifications` of the
//! creating actions. ≤ 50 tags per resource, key 1–127 and value ≤ 256 characters,
//! case-sensitive, `aws:` prefix reserved.

use std::collections::BTreeMap;

use amisim_proto::event::Payload;
use amisim_proto::*;

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::ids::{self, Kind};
use crate::state::{tag_records, State, Tags};
use crate::{Ctx, Decision, Reply};

/// Tags per resource.
pub const MAX_TAGS: usize = 50;

/// Checks one tag's key and value.
pub fn check_tag(key: &str, value: &str) -> Ec2Result<()> {
    if key.is_empty() || key.chars().count() > 127 {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!("Tag key '{key}' must be between 1 and 127 characters long"),
        ));
    }
    if key.starts_with("aws:") {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            "Tag keys starting with 'aws:' are reserved for internal use",
        ));
    }
    if value.chars().count() > 256 {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!("Tag value for key '{key}' must be at most 256 characters long"),
        ));
    }
    Ok(())
}

/// Validates `tag_specifications`: each resource type must be one of `allowed` (else
/// `InvalidParameterValue` [unconfirmed code]), each type at most once, tags valid, ≤ 50 per type.
/// Returns the tags per resource type.
pub fn from_specifications(
    specs: &[TagSpecification],
    allowed: &[&str],
) -> Ec2Result<BTreeMap<String, Tags>> {
    let mut out: BTreeMap<String, Tags> = BTreeMap::new();
    for spec in specs {
        if !allowed.contains(&spec.resource_type.as_str()) {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "'{}' is not a valid taggable resource type for this operation.",
                    spec.resource_type
                ),
            ));
        }
        if out.contains_key(&spec.resource_type) {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "The tag specification for resource type '{}' is given more than once",
                    spec.resource_type
                ),
            ));
        }
        let mut tags = Tags::new();
        for t in &spec.tags {
            check_tag(&t.key, &t.value)?;
            tags.insert(t.key.clone(), t.value.clone());
        }
        if tags.len() > MAX_TAGS {
            return Err(Ec2Error::new(
                ErrorCode::TagLimitExceeded,
                format!("The maximum number of tags per resource is {MAX_TAGS}"),
            ));
        }
        out.insert(spec.resource_type.clone(), tags);
    }
    Ok(out)
}

/// Renders tags in the API's shape.
pub fn render(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// Most resource ids per CreateTags / DeleteTags call.
pub const MAX_RESOURCES: usize = 1_000;

/// Checks `resources` (1..=1000 ids, each well formed with a taggable prefix: else `InvalidID`
/// `[unconfirmed]` `The ID '<id>' is not valid`) and returns them without duplicates, in order.
fn check_resources(resources: &[String]) -> Ec2Result<Vec<String>> {
    if resources.is_empty() {
        return Err(Ec2Error::missing("ResourceId"));
    }
    if resources.len() > MAX_RESOURCES {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "Value ({}) for parameter resourceIdSet is invalid. At most {MAX_RESOURCES} \
                 resource ids may be given.",
                resources.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(resources.len());
    for id in resources {
        let taggable = match Kind::of(id) {
            Some(Kind::Reservation) | None => false,
            Some(kind) => ids::is_valid(kind, id),
        };
        if !taggable {
            return Err(Ec2Error::new(
                ErrorCode::InvalidId,
                format!("The ID '{id}' is not valid"),
            ));
        }
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// The tags of a resource the caller owns, else the `NotFound` error of its kind (a resource of
/// another account looks absent).
fn owned_tags<'s>(state: &'s State, account: &str, id: &str) -> Ec2Result<&'s Tags> {
    let found = match Kind::of(id) {
        Some(Kind::Image) => state
            .images
            .get(id)
            .filter(|r| r.owner() == account)
            .map(|r| &r.tags),
        Some(Kind::Snapshot) => state
            .snapshots
            .get(id)
            .filter(|r| r.owner_id == account)
            .map(|r| &r.tags),
        Some(Kind::Volume) => state
            .volumes
            .get(id)
            .filter(|r| r.owner_id == account)
            .map(|r| &r.tags),
        Some(Kind::Instance) => state
            .instances
            .get(id)
            .filter(|r| r.owner_id == account)
            .map(|r| &r.tags),
        Some(Kind::Reservation) | None => None,
    };
    found.ok_or_else(|| match Kind::of(id) {
        Some(Kind::Image) => Ec2Error::image_not_found(&[id]),
        Some(Kind::Snapshot) => Ec2Error::snapshot_not_found(id),
        Some(Kind::Volume) => Ec2Error::volume_not_found(id),
        Some(Kind::Instance) => Ec2Error::instance_not_found(&[id]),
        _ => Ec2Error::new(ErrorCode::InvalidId, format!("The ID '{id}' is not valid")),
    })
}

/// User tags (reserved `aws:` tags do not count toward the limit of 50).
fn user_tag_count(tags: &Tags) -> usize {
    tags.keys().filter(|k| !k.starts_with("aws:")).count()
}

/// CreateTags: adds or overwrites tags on resources the caller owns.
pub fn create_tags(state: &State, ctx: &mut Ctx<'_>, r: CreateTagsRequest) -> Ec2Result<Decision> {
    let resources = check_resources(&r.resources)?;
    if r.tags.is_empty() {
        return Err(Ec2Error::missing("Tag"));
    }
    let mut new_tags = Tags::new();
    for t in &r.tags {
        check_tag(&t.key, &t.value)?;
        new_tags.insert(t.key.clone(), t.value.clone());
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    for id in &resources {
        let existing = owned_tags(state, ctx.account_id, id)?;
        let added = new_tags
            .keys()
            .filter(|k| !existing.contains_key(*k))
            .count();
        if user_tag_count(existing) + added > MAX_TAGS {
            return Err(Ec2Error::new(
                ErrorCode::TagLimitExceeded,
                format!(
                    "The maximum number of tags per resource is {MAX_TAGS}: resource '{id}' \
                     would have {}",
                    user_tag_count(existing) + added
                ),
            ));
        }
    }
    Ok(Decision::new(
        vec![Payload::TagsCreated(TagsCreated {
            resource_ids: resources,
            tags: tag_records(&new_tags),
        })],
        Reply::CreateTags(CreateTagsResponse { r#return: true }),
    ))
}

/// DeleteTags: deletes tags (only where the value matches, when one is given); no tags means
/// every user tag. `aws:` keys cannot be deleted.
pub fn delete_tags(state: &State, ctx: &mut Ctx<'_>, r: DeleteTagsRequest) -> Ec2Result<Decision> {
    let resources = check_resources(&r.resources)?;
    let mut deletions = Vec::with_capacity(r.tags.len());
    for t in &r.tags {
        if t.key.starts_with("aws:") {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "Tag key '{}': keys starting with 'aws:' are reserved and cannot be deleted",
                    t.key
                ),
            ));
        }
        if t.key.is_empty() || t.key.chars().count() > 127 {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!(
                    "Tag key '{}' must be between 1 and 127 characters long",
                    t.key
                ),
            ));
        }
        deletions.push(TagDeletion {
            key: t.key.clone(),
            match_value: t.value.is_some(),
            value: t.value.clone().unwrap_or_default(),
        });
    }
    if r.dry_run {
        return Err(Ec2Error::dry_run());
    }
    for id in &resources {
        owned_tags(state, ctx.account_id, id)?;
    }
    Ok(Decision::new(
        vec![Payload::TagsDeleted(TagsDeleted {
            resource_ids: resources,
            tags: deletions,
        })],
        Reply::DeleteTags(DeleteTagsResponse { r#return: true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Harness, OTHER, OWNER};
    use crate::Command;

    const VOL: &str = "vol-0123456789abcdef0";
    const SNAP: &str = "snap-0123456789abcdef0";
    const AMI: &str = "ami-0123456789abcdef0";
    const INST: &str = "i-0123456789abcdef0";

    /// One resource of each kind, owned by `owner`.
    fn resources(h: &mut Harness, owner: &str) {
        h.given([
            Payload::VolumeCreated(VolumeCreated {
                volume_id: VOL.into(),
                owner_id: owner.into(),
                availability_zone: "us-east-1a".into(),
                size: 8,
                volume_type: "gp2".into(),
                ..Default::default()
            }),
            Payload::SnapshotCreated(SnapshotCreated {
                snapshot_id: SNAP.into(),
                owner_id: owner.into(),
                volume_id: VOL.into(),
                volume_size: 8,
                ..Default::default()
            }),
            Payload::ImageRegistered(ImageRegistered {
                image_id: AMI.into(),
                owner_id: owner.into(),
                name: "web".into(),
                ..Default::default()
            }),
            Payload::InstanceLaunched(InstanceLaunched {
                instance_id: INST.into(),
                reservation_id: "r-0123456789abcdef0".into(),
                owner_id: owner.into(),
                image_id: AMI.into(),
                ..Default::default()
            }),
        ]);
    }

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    fn create(ids: &[&str], tags: Vec<Tag>) -> Command {
        Command::CreateTags(CreateTagsRequest {
            resources: ids.iter().map(|s| s.to_string()).collect(),
            tags,
            dry_run: false,
        })
    }

    fn delete(ids: &[&str], tags: Vec<TagToDelete>) -> Command {
        Command::DeleteTags(DeleteTagsRequest {
            resources: ids.iter().map(|s| s.to_string()).collect(),
            tags,
            dry_run: false,
        })
    }

    fn del(k: &str, v: Option<&str>) -> TagToDelete {
        TagToDelete {
            key: k.into(),
            value: v.map(str::to_string),
        }
    }

    fn tags_of(h: &mut Harness, id: &str) -> Tags {
        h.state.tags_mut(id).cloned().unwrap_or_default()
    }

    fn rejects(h: &mut Harness, account: &str, cmd: Command, want: ErrorCode, message: &str) {
        let before = h.log.len();
        let e = h.when(account, cmd).unwrap_err();
        assert_eq!(e.code, want, "{e}");
        if !message.is_empty() {
            assert_eq!(e.message, message);
        }
        assert_eq!(h.log.len(), before, "an error wrote events");
    }

    #[test]
    fn create_tags_on_every_kind_then_overwrite() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        let all = [VOL, SNAP, AMI, INST];
        let d = h
            .when(
                OWNER,
                create(&all, vec![tag("env", "dev"), tag("team", "a")]),
            )
            .unwrap();
        assert_eq!(
            d.reply,
            Reply::CreateTags(CreateTagsResponse { r#return: true })
        );
        assert_eq!(d.events.len(), 1);
        for id in all {
            let t = tags_of(&mut h, id);
            assert_eq!(t.get("env").map(String::as_str), Some("dev"), "{id}");
            assert_eq!(t.len(), 2);
        }
        h.when(OWNER, create(&[VOL], vec![tag("env", "prod")]))
            .unwrap();
        assert_eq!(
            tags_of(&mut h, VOL).get("env").map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            tags_of(&mut h, SNAP).get("env").map(String::as_str),
            Some("dev")
        );
        // Duplicate ids are one resource.
        let d = h
            .when(OWNER, create(&[VOL, VOL], vec![tag("x", "")]))
            .unwrap();
        let Payload::TagsCreated(e) = &d.events[0] else {
            panic!()
        };
        assert_eq!(e.resource_ids, vec![VOL.to_string()]);
        h.assert_replay_equals_live();
    }

    #[test]
    fn create_tags_resource_list_checks_malformed_ids_are_invalid_id_unconfirmed() {
        let mut h = Harness::new();
        rejects(
            &mut h,
            OWNER,
            create(&[], vec![tag("a", "b")]),
            ErrorCode::MissingParameter,
            "",
        );
        let many: Vec<String> = (0..1001).map(|i| format!("vol-{i:017x}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        rejects(
            &mut h,
            OWNER,
            create(&many, vec![tag("a", "b")]),
            ErrorCode::InvalidParameterValue,
            "",
        );
        for bad in [
            "foo-12345678",
            "r-0123456789abcdef0",
            "vol-xyz",
            "ami-1",
            "nothing",
        ] {
            rejects(
                &mut h,
                OWNER,
                create(&[bad], vec![tag("a", "b")]),
                ErrorCode::InvalidId,
                &format!("The ID '{bad}' is not valid"),
            );
        }
    }

    #[test]
    fn create_tags_tag_checks() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        rejects(
            &mut h,
            OWNER,
            create(&[VOL], vec![]),
            ErrorCode::MissingParameter,
            "",
        );
        let long_key = "k".repeat(128);
        let long_value = "v".repeat(257);
        for t in [
            tag("aws:foo", "x"),
            tag("", "x"),
            tag(&long_key, "x"),
            tag("k", &long_value),
        ] {
            rejects(
                &mut h,
                OWNER,
                create(&[VOL], vec![t]),
                ErrorCode::InvalidParameterValue,
                "",
            );
        }
        assert!(h
            .when(
                OWNER,
                create(&[VOL], vec![tag(&"k".repeat(127), &"v".repeat(256))])
            )
            .is_ok());
    }

    #[test]
    fn create_tags_dry_run() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        let cmd = Command::CreateTags(CreateTagsRequest {
            resources: vec![VOL.into()],
            tags: vec![tag("a", "b")],
            dry_run: true,
        });
        rejects(
            &mut h,
            OWNER,
            cmd,
            ErrorCode::DryRunOperation,
            "Request would have succeeded, but DryRun flag is set.",
        );
        assert!(tags_of(&mut h, VOL).is_empty());
    }

    #[test]
    fn create_tags_on_missing_or_foreign_resources_is_not_found_per_kind() {
        let mut h = Harness::new();
        let cases = [
            (AMI, ErrorCode::InvalidAmiIdNotFound),
            (SNAP, ErrorCode::InvalidSnapshotNotFound),
            (VOL, ErrorCode::InvalidVolumeNotFound),
            (INST, ErrorCode::InvalidInstanceIdNotFound),
        ];
        for (id, want) in cases {
            rejects(&mut h, OWNER, create(&[id], vec![tag("a", "b")]), want, "");
        }
        resources(&mut h, OTHER);
        for (id, want) in cases {
            rejects(&mut h, OWNER, create(&[id], vec![tag("a", "b")]), want, "");
        }
        rejects(
            &mut h,
            OWNER,
            create(&[VOL], vec![tag("a", "b")]),
            ErrorCode::InvalidVolumeNotFound,
            &format!("The volume '{VOL}' does not exist."),
        );
        // One missing resource fails the whole call: nothing is tagged.
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        rejects(
            &mut h,
            OWNER,
            create(&[VOL, "vol-0000000000000000f"], vec![tag("a", "b")]),
            ErrorCode::InvalidVolumeNotFound,
            "The volume 'vol-0000000000000000f' does not exist.",
        );
        assert!(tags_of(&mut h, VOL).is_empty());
    }

    #[test]
    fn create_tags_at_most_50_user_tags_per_resource() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        let fifty: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
        h.when(OWNER, create(&[VOL], fifty)).unwrap();
        rejects(
            &mut h,
            OWNER,
            create(&[VOL, SNAP], vec![tag("k50", "v")]),
            ErrorCode::TagLimitExceeded,
            "",
        );
        assert!(tags_of(&mut h, SNAP).is_empty());
        // Overwriting an existing key adds nothing.
        assert!(h.when(OWNER, create(&[VOL], vec![tag("k0", "w")])).is_ok());
        // Reserved `aws:` tags do not count.
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        h.given([Payload::TagsCreated(TagsCreated {
            resource_ids: vec![VOL.into()],
            tags: vec![TagRecord {
                key: "aws:backup:source".into(),
                value: "x".into(),
            }],
        })]);
        let fifty: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert!(h.when(OWNER, create(&[VOL], fifty)).is_ok());
        assert_eq!(tags_of(&mut h, VOL).len(), 51);
    }

    #[test]
    fn delete_tags_by_key_and_by_value() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        h.when(
            OWNER,
            create(
                &[VOL, SNAP],
                vec![tag("a", "1"), tag("b", "2"), tag("c", ""), tag("d", "4")],
            ),
        )
        .unwrap();
        let d = h
            .when(
                OWNER,
                delete(
                    &[VOL],
                    vec![del("a", None), del("b", Some("other")), del("c", Some(""))],
                ),
            )
            .unwrap();
        assert_eq!(
            d.reply,
            Reply::DeleteTags(DeleteTagsResponse { r#return: true })
        );
        let t = tags_of(&mut h, VOL);
        assert_eq!(t.keys().cloned().collect::<Vec<_>>(), vec!["b", "d"]);
        h.when(
            OWNER,
            delete(&[VOL], vec![del("b", Some("2")), del("zz", None)]),
        )
        .unwrap();
        assert_eq!(
            tags_of(&mut h, VOL).keys().cloned().collect::<Vec<_>>(),
            vec!["d"]
        );
        assert_eq!(tags_of(&mut h, SNAP).len(), 4);
        h.assert_replay_equals_live();
    }

    #[test]
    fn delete_tags_without_tags_deletes_every_user_tag() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        h.given([Payload::TagsCreated(TagsCreated {
            resource_ids: vec![AMI.into()],
            tags: vec![TagRecord {
                key: "aws:cloudformation:stack-name".into(),
                value: "s".into(),
            }],
        })]);
        h.when(
            OWNER,
            create(&[AMI, INST], vec![tag("a", "1"), tag("b", "2")]),
        )
        .unwrap();
        h.when(OWNER, delete(&[AMI, INST], vec![])).unwrap();
        assert_eq!(
            tags_of(&mut h, AMI).keys().cloned().collect::<Vec<_>>(),
            vec!["aws:cloudformation:stack-name"]
        );
        assert!(tags_of(&mut h, INST).is_empty());
        h.assert_replay_equals_live();
    }

    #[test]
    fn delete_tags_checks() {
        let mut h = Harness::new();
        resources(&mut h, OWNER);
        h.when(OWNER, create(&[VOL], vec![tag("a", "1")])).unwrap();
        rejects(
            &mut h,
            OWNER,
            delete(&[VOL], vec![del("aws:foo", None)]),
            ErrorCode::InvalidParameterValue,
            "",
        );
        rejects(
            &mut h,
            OWNER,
            delete(&[], vec![]),
            ErrorCode::MissingParameter,
            "",
        );
        rejects(
            &mut h,
            OWNER,
            delete(&["sg-12345678"], vec![]),
            ErrorCode::InvalidId,
            "The ID 'sg-12345678' is not valid",
        );
        rejects(
            &mut h,
            OTHER,
            delete(&[VOL], vec![]),
            ErrorCode::InvalidVolumeNotFound,
            "",
        );
        rejects(
            &mut h,
            OWNER,
            delete(&[SNAP, "snap-0000000000000000f"], vec![]),
            ErrorCode::InvalidSnapshotNotFound,
            "",
        );
        let dry = Command::DeleteTags(DeleteTagsRequest {
            resources: vec![VOL.into()],
            tags: vec![],
            dry_run: true,
        });
        rejects(&mut h, OWNER, dry, ErrorCode::DryRunOperation, "");
        assert_eq!(tags_of(&mut h, VOL).len(), 1);
    }
}
