//! Authentication of the internal services (`Region`, `Audit`; ADR 0009).
//!
//! With an accounts file, every call to them must carry `authorization: Bearer <operator
//! token>` (`[operator]` in the file): they show every account's events and write saga steps
//! as the system, so no account's token opens them. [`serve`](crate::serve) mounts both behind
//! [`OperatorCheck`]; without an accounts file it lets every call through, as before.

use std::sync::Arc;

use amisim_core::{Accounts, Ec2Error};
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::ec2_service::{request_id_from_metadata, status_from_ec2, AUTHORIZATION_KEY};

/// Checks the operator token of `md` against `accounts` (`None`: no accounts file, every call
/// passes). A missing or wrong credential is `AuthFailure`.
pub fn check_operator(md: &MetadataMap, accounts: Option<&Accounts>) -> Result<(), Ec2Error> {
    match accounts {
        None => Ok(()),
        Some(accounts) => {
            let header = md.get(AUTHORIZATION_KEY).and_then(|v| v.to_str().ok());
            accounts.authenticate_operator_header(header)
        }
    }
}

/// The tonic interceptor in front of the `Region` and `Audit` services: [`check_operator`],
/// refusing with UNAUTHENTICATED, `x-amisim-error-code: AuthFailure` and the request id, like
/// every other amisim error.
#[derive(Clone)]
pub struct OperatorCheck {
    region: Arc<str>,
    accounts: Option<Arc<Accounts>>,
}

impl std::fmt::Debug for OperatorCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorCheck")
            .field("region", &self.region)
            .field("enforced", &self.accounts.is_some())
            .finish()
    }
}

impl OperatorCheck {
    /// Checks calls to `region`'s node against `accounts` (`None`: lets every call through).
    pub fn new(region: &str, accounts: Option<Arc<Accounts>>) -> Self {
        OperatorCheck {
            region: region.into(),
            accounts,
        }
    }
}

impl Interceptor for OperatorCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match check_operator(request.metadata(), self.accounts.as_deref()) {
            Ok(()) => Ok(request),
            Err(e) => {
                let request_id = request_id_from_metadata(request.metadata());
                tracing::warn!(region = %self.region, request_id = %request_id,
                    "internal service call refused: no operator token");
                Err(status_from_ec2(&e, &request_id))
            }
        }
    }
}
