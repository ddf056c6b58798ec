//! Tags (EC2_SEMANTICS.md §4.5): CreateTags, DeleteTags, and `tag_specifications` of the
//! creating actions. ≤ 50 tags per resource, key 1–127 and value ≤ 256 characters,
//! case-sensitive, `aws:` prefix reserved.

use std::collections::BTreeMap;

use amisim_proto::*;

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::state::{State, Tags};
use crate::{Ctx, Decision};

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

pub fn create_tags(_s: &State, _c: &mut Ctx<'_>, _r: CreateTagsRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn delete_tags(_s: &State, _c: &mut Ctx<'_>, _r: DeleteTagsRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
