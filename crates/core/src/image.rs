//! (being written)
use crate::{error::*, state::State, Ctx, Decision, ReadCtx};
use amisim_proto::*;
pub fn register_image(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: RegisterImageRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn create_image(_s: &State, _c: &mut Ctx<'_>, _r: CreateImageRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn deregister_image(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: DeregisterImageRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn describe_images(
    _s: &State,
    _c: &ReadCtx<'_>,
    _r: DescribeImagesRequest,
) -> Ec2Result<DescribeImagesResponse> {
    Err(Ec2Error::internal("unfinished"))
}
