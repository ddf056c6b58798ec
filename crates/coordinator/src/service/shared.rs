//! Authentication of the Coordinator service and `DescribeSharedWithAccount`.
//!
//! **Authentication** follows the region nodes (DESIGN.md §7): without an accounts file the
//! caller is `x-amisim-account` (default `123456789012`); with one
//! ([`CoordinatorService::with_accounts`]) every call — reads, digests, status, copies — must
//! carry `authorization: Bearer <token>` of a listed account, and `x-amisim-account` is
//! ignored. The accounts file's organization membership then resolves org/OU launch
//! permissions in the global reads.
//!
//! **DescribeSharedWithAccount** answers "what is shared with account X, in every region" from
//! one projection snapshot: per selected region, the core's
//! [`amisim_core::sharing::shared_with_account`] as that region's rules say, rendered at the sim
//! time of the last event applied for the region (as the global reads are).

use amisim_core::{ids, Ec2Error, ErrorCode, Membership, ReadCtx};
use amisim_proto::{DescribeSharedWithAccountRequest, DescribeSharedWithAccountResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::{account_from, select_regions, Call, CoordinatorService};

/// Request metadata: `Bearer <token>` (with an accounts file; then the only credential).
pub const AUTHORIZATION_HEADER: &str = "authorization";

impl CoordinatorService {
    /// The caller's account: bearer token with an accounts file, else `x-amisim-account`.
    pub(crate) fn caller(&self, md: &MetadataMap) -> Result<String, Ec2Error> {
        match &self.accounts {
            None => account_from(md),
            Some(accounts) => {
                let header = md.get(AUTHORIZATION_HEADER).and_then(|v| v.to_str().ok());
                accounts.authenticate_header(header).map(str::to_string)
            }
        }
    }

    /// For calls that need no account: with an accounts file they still need a valid token.
    pub(crate) fn check_token(&self, md: &MetadataMap) -> Result<(), Ec2Error> {
        if self.accounts.is_some() {
            self.caller(md)?;
        }
        Ok(())
    }

    /// Whose copies ListCopies may show: with an accounts file, an account sees only its own
    /// (`Some(account)`) and the operator token sees every account's (`None`); without one the
    /// caller is not authenticated anyway and it is an operator view (`None`).
    pub(crate) fn copies_scope(&self, md: &MetadataMap) -> Result<Option<String>, Ec2Error> {
        let Some(accounts) = &self.accounts else {
            return Ok(None);
        };
        let header = md.get(AUTHORIZATION_HEADER).and_then(|v| v.to_str().ok());
        if accounts.authenticate_operator_header(header).is_ok() {
            return Ok(None);
        }
        accounts
            .authenticate_header(header)
            .map(|a| Some(a.to_string()))
    }

    /// Organization membership of the accounts file (empty without one).
    pub(crate) fn membership(&self) -> &Membership {
        self.accounts
            .as_ref()
            .map_or(Membership::none(), |a| a.membership())
    }

    /// DescribeSharedWithAccount (see `coordinator.proto`).
    pub(super) async fn describe_shared_impl(
        &self,
        request: Request<DescribeSharedWithAccountRequest>,
        call: &Call,
    ) -> Result<Response<DescribeSharedWithAccountResponse>, Status> {
        let caller = self.caller(request.metadata()).map_err(|e| call.ec2(&e))?;
        let (md, _, body) = request.into_parts();
        let account = if body.account_id.is_empty() {
            caller.clone()
        } else if ids::is_account_id(&body.account_id) {
            body.account_id.clone()
        } else {
            return Err(call.ec2(&Ec2Error::new(
                ErrorCode::InvalidUserIdMalformed,
                format!("Invalid user id: \"{}\"", body.account_id),
            )));
        };
        // Everything that can fail without the projection fails before any wait.
        let regions = select_regions(&body.regions, &self.projection.snapshot(), call)?;
        let snap = self.prepare(&md, &body.consistency_token, call).await?;
        let membership = self.membership();
        let regions = regions
            .iter()
            .filter_map(|r| {
                let rs = snap.region(r)?;
                let ctx =
                    ReadCtx::new(r, &caller, rs.state.last_sim_time_ms).with_membership(membership);
                Some(amisim_core::sharing::shared_with_account(
                    &rs.state,
                    &ctx,
                    &account,
                    body.exclude_public,
                ))
            })
            .collect();
        Ok(call.respond(DescribeSharedWithAccountResponse {
            account_id: account,
            regions,
            consistency_token: snap.applied().to_string(),
        }))
    }
}
