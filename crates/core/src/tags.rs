//! (being written)
use crate::{error::*, state::State, Ctx, Decision};
use amisim_proto::*;
pub fn create_tags(_s: &State, _c: &mut Ctx<'_>, _r: CreateTagsRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
pub fn delete_tags(_s: &State, _c: &mut Ctx<'_>, _r: DeleteTagsRequest) -> Ec2Result<Decision> {
    Err(Ec2Error::internal("unfinished"))
}
