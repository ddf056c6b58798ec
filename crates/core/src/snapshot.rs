//! (being written)
use crate::{error::*, state::State, Ctx, Decision, ReadCtx};
use amisim_proto::*;
pub fn create_snapshot(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: CreateSnapshotRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn delete_snapshot(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: DeleteSnapshotRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn describe_snapshots(
    _s: &State,
    _c: &ReadCtx<'_>,
    _r: DescribeSnapshotsRequest,
) -> Ec2Result<DescribeSnapshotsResponse> {
    Err(Ec2Error::internal("unfinished"))
}
