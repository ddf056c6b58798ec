//! Global Describe reads: one EC2 Describe request answered from every selected region's
//! projection with that region's own rules, merged into one list tagged by region.
//!
//! Why through the core's [`amisim_core::query`] and not a second implementation: visibility
//! (ownership, launch permissions, public snapshots), filters and rendering are EC2 rules, and
//! every EC2 rule is implemented once, in `crates/core`. What this module adds is only what
//! "global" means:
//!
//! - **Validation once, in EC2's order**: syntax and filters (the core, on an empty state),
//!   then paging combinations, then DryRun — so a bad request fails the same way whatever the
//!   regions hold.
//! - **Explicit ids across regions**: an id is looked up in the regions that hold it (ids are
//!   generated per region and do not repeat); an id no selected region holds is `NotFound` for
//!   the whole call, as an unknown id is in one region.
//! - **Paging over the merged list**: ordered by (region, id), with the core's own token
//!   format, so `max_results`/`next_token` behave as in a region and a page boundary is stable
//!   while the projection grows.
//! - **Time**: each region is rendered at the sim time of the last event the coordinator
//!   applied for it (the coordinator has no clock of its own), so pending progress shows as of
//!   that event; the answer is a deterministic function of the snapshot.

use std::panic::{catch_unwind, AssertUnwindSafe};

use amisim_core::filter::{page, paginate, Page};
use amisim_core::{Answer, Ec2Error, ErrorCode, Membership, Query, ReadCtx, State};
use amisim_proto::{DescribeImagesRequest, DescribeSnapshotsRequest, GlobalImage, GlobalSnapshot};

use crate::projection::ProjectionSnapshot;

/// The smallest `max_results` EC2 accepts for these Describe calls.
const MIN_RESULTS: i32 = 5;

/// Sort and page key: region, then id. NUL sorts before every character of a region name, so
/// the key order is the (region, id) order.
fn key(region: &str, id: &str) -> String {
    format!("{region}\u{0}{id}")
}

/// Runs a core query, turning a panic of the domain into an internal error (a read must never
/// take the coordinator down).
fn run(state: &State, ctx: &ReadCtx<'_>, q: Query) -> Result<Answer, Ec2Error> {
    catch_unwind(AssertUnwindSafe(|| amisim_core::query(state, ctx, q))).unwrap_or_else(|_| {
        tracing::error!(
            region = ctx.region,
            "the domain panicked answering a global read"
        );
        Err(Ec2Error::internal("An internal error has occurred"))
    })
}

fn mismatch() -> Ec2Error {
    Ec2Error::internal("An internal error has occurred (unexpected answer kind)")
}

/// The checks of a DescribeImages that do not depend on any state, in EC2's order: syntax and
/// filters (the core itself, on an empty state, where a well-formed id is merely unknown), then
/// paging combinations, then DryRun. Cheap: the service runs it before waiting for a token, so a
/// bad request fails at once.
pub fn check_images(account: &str, req: &DescribeImagesRequest) -> Result<Page, Ec2Error> {
    let mut probe = req.clone();
    probe.max_results = None;
    probe.next_token.clear();
    probe.dry_run = false;
    let ctx = ReadCtx::new("", account, 0);
    match run(&State::new(), &ctx, Query::DescribeImages(probe)) {
        Err(e) if e.code != ErrorCode::InvalidAmiIdNotFound => return Err(e),
        _ => {}
    }
    let page = page(
        req.max_results,
        &req.next_token,
        !req.image_ids.is_empty(),
        MIN_RESULTS,
    )?;
    if req.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(page)
}

/// As [`check_images`], for DescribeSnapshots.
pub fn check_snapshots(account: &str, req: &DescribeSnapshotsRequest) -> Result<Page, Ec2Error> {
    let mut probe = req.clone();
    probe.max_results = None;
    probe.next_token.clear();
    probe.dry_run = false;
    let ctx = ReadCtx::new("", account, 0);
    match run(&State::new(), &ctx, Query::DescribeSnapshots(probe)) {
        Err(e) if e.code != ErrorCode::InvalidSnapshotNotFound => return Err(e),
        _ => {}
    }
    let page = page(
        req.max_results,
        &req.next_token,
        !req.snapshot_ids.is_empty(),
        MIN_RESULTS,
    )?;
    if req.dry_run {
        return Err(Ec2Error::dry_run());
    }
    Ok(page)
}

/// The ids (each once, in request order) that no region of `regions` holds, by `held`.
fn missing_ids<'a>(
    snap: &ProjectionSnapshot,
    regions: &[String],
    ids: &'a [String],
    held: impl Fn(&amisim_core::State, &str) -> bool,
) -> Vec<&'a str> {
    let mut missing: Vec<&str> = Vec::new();
    for id in ids {
        let found = regions
            .iter()
            .any(|r| snap.region(r).is_some_and(|s| held(&s.state, id)));
        if !found && !missing.contains(&id.as_str()) {
            missing.push(id);
        }
    }
    missing
}

/// DescribeImages over `regions` (already checked to be in `snap`) as `account`, with no
/// organization membership (see [`describe_images_with`]).
pub fn describe_images(
    snap: &ProjectionSnapshot,
    regions: &[String],
    account: &str,
    req: DescribeImagesRequest,
) -> Result<(Vec<GlobalImage>, String), Ec2Error> {
    describe_images_with(snap, regions, account, Membership::none(), req)
}

/// DescribeImages over `regions` as `account`, org/OU launch permissions resolved with
/// `membership` (the accounts file's).
pub fn describe_images_with(
    snap: &ProjectionSnapshot,
    regions: &[String],
    account: &str,
    membership: &Membership,
    req: DescribeImagesRequest,
) -> Result<(Vec<GlobalImage>, String), Ec2Error> {
    let page = check_images(account, &req)?;
    let ids_given = !req.image_ids.is_empty();
    if ids_given {
        let missing = missing_ids(snap, regions, &req.image_ids, |s, id| {
            s.images.contains_key(id)
        });
        if !missing.is_empty() {
            return Err(Ec2Error::image_not_found(&missing));
        }
    }
    let mut items: Vec<(String, GlobalImage)> = Vec::new();
    for region in regions {
        let Some(rs) = snap.region(region) else {
            continue;
        };
        let mut q = req.clone();
        q.max_results = None;
        q.next_token.clear();
        if ids_given {
            q.image_ids
                .retain(|id| rs.state.images.contains_key(id.as_str()));
            if q.image_ids.is_empty() {
                continue;
            }
        }
        let ctx =
            ReadCtx::new(region, account, rs.state.last_sim_time_ms).with_membership(membership);
        let Answer::DescribeImages(answer) = run(&rs.state, &ctx, Query::DescribeImages(q))? else {
            return Err(mismatch());
        };
        items.extend(answer.images.into_iter().map(|image| {
            (
                key(region, &image.image_id),
                GlobalImage {
                    region: region.clone(),
                    image: Some(image),
                },
            )
        }));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(paginate(items.into_iter(), &page))
}

/// DescribeSnapshots over `regions` (already checked to be in `snap`) as `account`, with no
/// organization membership (snapshots have no org/OU grants; see [`describe_snapshots_with`]).
pub fn describe_snapshots(
    snap: &ProjectionSnapshot,
    regions: &[String],
    account: &str,
    req: DescribeSnapshotsRequest,
) -> Result<(Vec<GlobalSnapshot>, String), Ec2Error> {
    describe_snapshots_with(snap, regions, account, Membership::none(), req)
}

/// DescribeSnapshots over `regions` as `account`, with the deployment's `membership`.
pub fn describe_snapshots_with(
    snap: &ProjectionSnapshot,
    regions: &[String],
    account: &str,
    membership: &Membership,
    req: DescribeSnapshotsRequest,
) -> Result<(Vec<GlobalSnapshot>, String), Ec2Error> {
    let page = check_snapshots(account, &req)?;
    let ids_given = !req.snapshot_ids.is_empty();
    if ids_given {
        let missing = missing_ids(snap, regions, &req.snapshot_ids, |s, id| {
            s.snapshots.contains_key(id)
        });
        if !missing.is_empty() {
            return Err(Ec2Error::snapshot_not_found(&missing.join(", ")));
        }
    }
    let mut items: Vec<(String, GlobalSnapshot)> = Vec::new();
    for region in regions {
        let Some(rs) = snap.region(region) else {
            continue;
        };
        let mut q = req.clone();
        q.max_results = None;
        q.next_token.clear();
        if ids_given {
            q.snapshot_ids
                .retain(|id| rs.state.snapshots.contains_key(id));
            if q.snapshot_ids.is_empty() {
                continue;
            }
        }
        let ctx =
            ReadCtx::new(region, account, rs.state.last_sim_time_ms).with_membership(membership);
        let Answer::DescribeSnapshots(answer) = run(&rs.state, &ctx, Query::DescribeSnapshots(q))?
        else {
            return Err(mismatch());
        };
        items.extend(answer.snapshots.into_iter().map(|snapshot| {
            (
                key(region, &snapshot.snapshot_id),
                GlobalSnapshot {
                    region: region.clone(),
                    snapshot: Some(snapshot),
                },
            )
        }));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(paginate(items.into_iter(), &page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Projection;
    use amisim_proto::event::Payload;
    use amisim_proto::{Event, Filter, SnapshotCreated};

    const OWNER: &str = "111122223333";
    const OTHER: &str = "444455556666";

    fn snapshot_event(region: &str, seq: u64, id: &str, owner: &str) -> Event {
        Event {
            seq,
            region: region.into(),
            sim_time_ms: 1_714_521_600_000 + seq,
            payload: Some(Payload::SnapshotCreated(SnapshotCreated {
                snapshot_id: id.into(),
                owner_id: owner.into(),
                volume_id: "vol-ffffffff".into(),
                volume_size: 8,
                start_time_ms: 1_714_521_600_000,
                complete_at_ms: 1_714_521_700_000,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// given: us holds two snapshots (one of OTHER), eu one.
    fn given() -> (Projection, Vec<String>) {
        let p = Projection::new(["us-east-1", "eu-west-1"]);
        p.ingest(
            "us-east-1",
            [
                snapshot_event("us-east-1", 1, "snap-0000000000000000b", OWNER),
                snapshot_event("us-east-1", 2, "snap-0000000000000000c", OTHER),
            ],
        )
        .unwrap();
        p.ingest(
            "eu-west-1",
            [snapshot_event(
                "eu-west-1",
                1,
                "snap-0000000000000000a",
                OWNER,
            )],
        )
        .unwrap();
        let regions = p.regions();
        (p, regions)
    }

    fn ids(found: &[GlobalSnapshot]) -> Vec<(String, String)> {
        found
            .iter()
            .map(|g| {
                (
                    g.region.clone(),
                    g.snapshot
                        .as_ref()
                        .map(|s| s.snapshot_id.clone())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn merges_regions_with_each_regions_visibility() {
        let (p, regions) = given();
        let (found, next) = describe_snapshots(
            &p.snapshot(),
            &regions,
            OWNER,
            DescribeSnapshotsRequest::default(),
        )
        .unwrap();
        assert_eq!(next, "");
        assert_eq!(
            ids(&found),
            [
                ("eu-west-1".into(), "snap-0000000000000000a".into()),
                ("us-east-1".into(), "snap-0000000000000000b".into()),
            ]
        );
    }

    #[test]
    fn explicit_ids_are_found_in_whichever_region_holds_them() {
        let (p, regions) = given();
        let req = DescribeSnapshotsRequest {
            snapshot_ids: vec![
                "snap-0000000000000000b".into(),
                "snap-0000000000000000a".into(),
            ],
            ..Default::default()
        };
        let (found, _) = describe_snapshots(&p.snapshot(), &regions, OWNER, req).unwrap();
        assert_eq!(found.len(), 2);

        let req = DescribeSnapshotsRequest {
            snapshot_ids: vec!["snap-0000000000000000f".into()],
            ..Default::default()
        };
        let err = describe_snapshots(&p.snapshot(), &regions, OWNER, req).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidSnapshotNotFound);

        // a region filter hides the other region's ids
        let req = DescribeSnapshotsRequest {
            snapshot_ids: vec!["snap-0000000000000000a".into()],
            ..Default::default()
        };
        let err = describe_snapshots(&p.snapshot(), &["us-east-1".into()], OWNER, req).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidSnapshotNotFound);
    }

    #[test]
    fn pages_through_the_merged_list() {
        let p = Projection::new(["us-east-1", "eu-west-1"]);
        for region in ["us-east-1", "eu-west-1"] {
            let events: Vec<Event> = (1..=4)
                .map(|i| snapshot_event(region, i, &format!("snap-{i:017x}"), OWNER))
                .collect();
            p.ingest(region, events).unwrap();
        }
        let regions = p.regions();
        let mut token = String::new();
        let mut all = Vec::new();
        loop {
            let req = DescribeSnapshotsRequest {
                max_results: Some(5),
                next_token: token.clone(),
                ..Default::default()
            };
            let (found, next) = describe_snapshots(&p.snapshot(), &regions, OWNER, req).unwrap();
            assert!(found.len() <= 5);
            all.extend(ids(&found));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(all.len(), 8);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
    }

    #[test]
    fn bad_requests_fail_as_in_one_region() {
        let (p, regions) = given();
        let snap = p.snapshot();
        let bad_filter = DescribeSnapshotsRequest {
            filters: vec![Filter {
                name: "colour".into(),
                values: vec!["red".into()],
            }],
            ..Default::default()
        };
        assert_eq!(
            describe_snapshots(&snap, &regions, OWNER, bad_filter)
                .unwrap_err()
                .code,
            ErrorCode::InvalidParameterValue
        );
        let dry = DescribeSnapshotsRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(
            describe_snapshots(&snap, &regions, OWNER, dry)
                .unwrap_err()
                .code,
            ErrorCode::DryRunOperation
        );
        let bad_token = DescribeImagesRequest {
            next_token: "nope".into(),
            ..Default::default()
        };
        assert_eq!(
            describe_images(&snap, &regions, OWNER, bad_token)
                .unwrap_err()
                .code,
            ErrorCode::InvalidNextToken
        );
        let malformed = DescribeImagesRequest {
            image_ids: vec!["ami-zz".into()],
            ..Default::default()
        };
        assert_eq!(
            describe_images(&snap, &regions, OWNER, malformed)
                .unwrap_err()
                .code,
            ErrorCode::InvalidAmiIdMalformed
        );
        let unknown = DescribeImagesRequest {
            image_ids: vec!["ami-0123456789abcdef0".into()],
            ..Default::default()
        };
        assert_eq!(
            describe_images(&snap, &regions, OWNER, unknown)
                .unwrap_err()
                .code,
            ErrorCode::InvalidAmiIdNotFound
        );
    }
}
