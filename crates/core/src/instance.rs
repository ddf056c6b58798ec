//! (being written)
use crate::{error::*, state::State, Ctx, Decision, ReadCtx};
use amisim_proto::*;
pub fn run_instances(_s: &State, _c: &mut Ctx<'_>, _r: RunInstancesRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn stop_instances(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: StopInstancesRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn start_instances(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: StartInstancesRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn terminate_instances(
    _s: &State,
    _c: &mut Ctx<'_>,
    _r: TerminateInstancesRequest,
) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn describe_instances(
    _s: &State,
    _c: &ReadCtx<'_>,
    _r: DescribeInstancesRequest,
) -> Ec2Result<DescribeInstancesResponse> {
    Err(Ec2Error::internal("unfinished"))
}
