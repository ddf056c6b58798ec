//! (being written)
use crate::{error::*, state::State, Ctx, Decision, ReadCtx};
use amisim_proto::*;
pub fn create_volume(_s: &State, _c: &mut Ctx<'_>, _r: CreateVolumeRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn delete_volume(_s: &State, _c: &mut Ctx<'_>, _r: DeleteVolumeRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn attach_volume(_s: &State, _c: &mut Ctx<'_>, _r: AttachVolumeRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn detach_volume(_s: &State, _c: &mut Ctx<'_>, _r: DetachVolumeRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn describe_volumes(
    _s: &State,
    _c: &ReadCtx<'_>,
    _r: DescribeVolumesRequest,
) -> Ec2Result<DescribeVolumesResponse> {
    Err(Ec2Error::internal("unfinished"))
}
