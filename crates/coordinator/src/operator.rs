//! The coordinator's credential towards the region nodes' internal services (ADR 0009).
//!
//! With an accounts file, a node's `Region` and `Audit` services accept only
//! `authorization: Bearer <operator token>`. Everything the coordinator itself asks a node —
//! the followers (`GetRegionInfo`, `StreamEvents`), the saga driver (`ExecuteSagaStep`),
//! ListCopies' clock probe (`GetRegionInfo`) — goes through a [`RegionClient`] built by
//! [`RegionRoutes::region_client`](crate::RegionRoutes::region_client), whose [`OperatorAuth`]
//! interceptor adds that header. The gateway never uses it: it forwards the client's own
//! `authorization` to the node untouched, so a client can never borrow the operator's
//! credential.

use amisim_core::Accounts;
use amisim_proto::region_client::RegionClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A `Region` client that authenticates as the operator (when there is a token).
pub type OperatorRegionClient =
    RegionClient<InterceptedService<crate::gateway::RegionChannel, OperatorAuth>>;

/// Why a token cannot be sent (it would not fit in a header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operator token must be non-empty visible ASCII (no spaces)")]
pub struct BadOperatorToken;

/// A tonic interceptor that sets `authorization: Bearer <operator token>` on every request, or
/// does nothing ([`OperatorAuth::none`]: no accounts file, the nodes check nothing).
#[derive(Clone, Default)]
pub struct OperatorAuth {
    header: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for OperatorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("OperatorAuth")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl OperatorAuth {
    /// No credential: for nodes without an accounts file.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends `token` (as checked by the accounts file: non-empty visible ASCII).
    pub fn bearer(token: &str) -> Result<Self, BadOperatorToken> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BadOperatorToken);
        }
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}").as_str())
            .map_err(|_| BadOperatorToken)?;
        // Kept out of debug output of the request.
        value.set_sensitive(true);
        Ok(OperatorAuth {
            header: Some(value),
        })
    }

    /// The operator token of an accounts file (none if it has none).
    pub fn from_accounts(accounts: &Accounts) -> Self {
        accounts
            .operator_token()
            .and_then(|t| Self::bearer(t).ok())
            .unwrap_or_default()
    }

    /// True if it sends a token.
    pub fn is_set(&self) -> bool {
        self.header.is_some()
    }

    /// `Bearer <token>`, if there is a token (the gateway sends it as
    /// `x-amisim-forwarded-by`, never as the client's `authorization`).
    pub(crate) fn header(&self) -> Option<&AsciiMetadataValue> {
        self.header.as_ref()
    }
}

impl Interceptor for OperatorAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.header {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A `Region` client on `channel` that authenticates with `auth`.
/// The channel may be a raw [`Channel`](tonic::transport::Channel) or one through the chaos layer
/// ([`crate::gateway::RegionChannel`]).
pub fn region_client(
    channel: impl Into<crate::gateway::RegionChannel>,
    auth: OperatorAuth,
) -> OperatorRegionClient {
    RegionClient::with_interceptor(channel.into(), auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interceptor_sets_the_header_and_never_shows_the_token() {
        let mut auth = OperatorAuth::bearer("op-secret").unwrap();
        let r = auth.call(Request::new(())).unwrap();
        assert_eq!(
            r.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer op-secret")
        );
        assert!(!format!("{auth:?}").contains("op-secret"));
        let r = OperatorAuth::none().call(Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
        assert_eq!(OperatorAuth::bearer("a b").unwrap_err(), BadOperatorToken);
        assert_eq!(OperatorAuth::bearer("").unwrap_err(), BadOperatorToken);
    }
}
