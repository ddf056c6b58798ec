//! The gateway: one gRPC endpoint serving `amisim.v1.Ec2` (and `amisim.v1.Kms`, [`KmsGateway`])
//! for every region.
//!
//! [`Gateway`] is a tower service mounted at the `amisim.v1.Ec2` path prefix. For each call it
//! reads `x-amisim-region` (absent: [`DEFAULT_REGION`]), looks the region up in its
//! [`RegionRoutes`] and sends the HTTP/2 request as it is to that region's
//! [`Channel`]; the response comes back as it is. It never decodes a message, so it cannot
//! change one, and a new RPC in `ec2.proto` needs no change here.
//!
//! Errors the gateway itself produces follow the region nodes' error model (DESIGN.md §7): a
//! gRPC status, the EC2-style code in `x-amisim-error-code`, a message starting with that code.
//!
//! | case | status | `x-amisim-error-code` |
//! |---|---|---|
//! | region not routed (or header not UTF-8) | INVALID_ARGUMENT | `InvalidRegion` |
//! | region node unreachable | UNAVAILABLE | `Unavailable` |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;

use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::Service;
use tracing::Instrument;

/// Request metadata naming the region a call is for.
pub const REGION_HEADER: &str = "x-amisim-region";
/// Request and response metadata carrying the EC2 RequestId.
pub const REQUEST_ID_HEADER: &str = "x-amisim-request-id";
/// Response metadata carrying the EC2 error code of a failed call.
pub const ERROR_CODE_HEADER: &str = "x-amisim-error-code";
/// Request metadata the gateway sets on a call it forwards: the client's address (the node
/// records it as `sourceIPAddress`; it would otherwise see the gateway's).
pub const SOURCE_IP_HEADER: &str = "x-amisim-source-ip";
/// Request metadata the gateway sets next to [`SOURCE_IP_HEADER`]: the client's `user-agent`
/// (its own channel appends `tonic/…` to the `user-agent` it forwards).
pub const USER_AGENT_HEADER: &str = "x-amisim-user-agent";
/// Request metadata the gateway sets next to [`SOURCE_IP_HEADER`] with an accounts file:
/// `Bearer <operator token>`, so that the node believes the address.
pub const FORWARDED_BY_HEADER: &str = "x-amisim-forwarded-by";
/// The region a call without `x-amisim-region` goes to, as in the AWS SDKs' usual default.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Why the gateway could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A `--region` argument that is not `NAME=URL`.
    #[error("invalid route '{0}': expected NAME=URL, e.g. us-east-1=http://127.0.0.1:50052")]
    BadRoute(String),
    /// A region name that is not of the form `us-east-1`.
    #[error(
        "invalid region name '{0}': expected lowercase letters, digits and '-', e.g. us-east-1"
    )]
    BadRegionName(String),
    /// The same region given twice.
    #[error("region '{0}' is routed twice")]
    DuplicateRegion(String),
    /// A URL tonic cannot connect to.
    #[error("invalid URL '{url}' for region '{region}': {source}")]
    BadUrl {
        region: String,
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// No route at all: the gateway would reject every call.
    #[error("no region routes: give at least one NAME=URL")]
    NoRoutes,
    /// The reflection service could not read the descriptor set (a build problem).
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed (the listener broke, ...).
    #[error("gateway server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Region name → channel to the node serving it. Channels connect lazily and reconnect on their
/// own, so the gateway starts before its regions and survives their restarts.
///
/// The routes also hold the coordinator's own credential towards the nodes' internal services
/// ([`RegionRoutes::with_operator`], ADR 0009): [`RegionRoutes::region_client`] sends it; the
/// gateway, which forwards the client's calls, never does.
#[derive(Clone, Default)]
pub struct RegionRoutes {
    routes: BTreeMap<String, Channel>,
    operator: crate::operator::OperatorAuth,
    /// The coordinator↔region link faults applied by [`RegionRoutes::channel`] (ADR 0008).
    chaos: Option<amisim_chaos::LinkControl>,
    /// One layer per region: its seeded draw stream is shared by every call to the region.
    layers: BTreeMap<String, amisim_chaos::ChaosLayer>,
}

/// A channel to a region node as the coordinator uses it: through the chaos layer
/// ([`amisim_chaos::layer`]) when the routes have a link control, else straight.
pub type RegionChannel = amisim_chaos::ChaosService<Channel>;

impl fmt::Debug for RegionRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionRoutes")
            .field("regions", &self.regions().collect::<Vec<_>>())
            .field("operator", &self.operator)
            .finish()
    }
}

impl RegionRoutes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route to an existing channel.
    pub fn insert(&mut self, region: &str, channel: Channel) -> Result<(), GatewayError> {
        check_region_name(region)?;
        if self.routes.contains_key(region) {
            return Err(GatewayError::DuplicateRegion(region.to_string()));
        }
        self.routes.insert(region.to_string(), channel);
        Ok(())
    }

    /// Adds a route to `url` (`http://host:port`; a bare `host:port` means `http://`), with a
    /// lazily connecting channel. Needs a tokio runtime.
    pub fn insert_url(&mut self, region: &str, url: &str) -> Result<(), GatewayError> {
        check_region_name(region)?;
        let full = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let endpoint = Endpoint::from_shared(full).map_err(|source| GatewayError::BadUrl {
            region: region.to_string(),
            url: url.to_string(),
            source,
        })?;
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        self.insert(region, channel)
    }

    /// Parses `--region` arguments of the form `NAME=URL`.
    pub fn from_args<I, S>(args: I) -> Result<Self, GatewayError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut routes = Self::new();
        for arg in args {
            let arg = arg.as_ref();
            let (name, url) = arg
                .split_once('=')
                .filter(|(n, u)| !n.is_empty() && !u.is_empty())
                .ok_or_else(|| GatewayError::BadRoute(arg.to_string()))?;
            routes.insert_url(name.trim(), url.trim())?;
        }
        Ok(routes)
    }

    /// Routed regions, sorted.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn get(&self, region: &str) -> Option<&Channel> {
        self.routes.get(region)
    }

    /// Applies the coordinator↔region links of `control` ([`amisim_chaos::COORDINATOR`]) to
    /// every channel handed out by [`RegionRoutes::channel`] and [`RegionRoutes::region_client`]
    /// (ADR 0008).
    pub fn with_chaos(mut self, control: amisim_chaos::LinkControl) -> Self {
        self.layers = self
            .routes
            .keys()
            .map(|r| (r.clone(), amisim_chaos::ChaosLayer::new(control.clone(), r)))
            .collect();
        self.chaos = Some(control);
        self
    }

    /// The link control applied to the channels, if any.
    pub fn chaos(&self) -> Option<&amisim_chaos::LinkControl> {
        self.chaos.as_ref()
    }

    /// The channel to `region` as the followers, the saga driver and the gateway use it: through
    /// the chaos layer when the routes have a link control ([`RegionRoutes::get`] is the raw one).
    pub fn channel(&self, region: &str) -> Option<RegionChannel> {
        let raw = self.routes.get(region)?.clone();
        Some(match (&self.chaos, self.layers.get(region)) {
            (Some(_), Some(layer)) => tower::Layer::layer(layer, raw),
            (Some(control), None) => {
                // A route inserted after `with_chaos`: a layer of its own.
                let layer = amisim_chaos::ChaosLayer::new(control.clone(), region);
                tower::Layer::layer(&layer, raw)
            }
            (None, _) => amisim_chaos::ChaosService::direct(raw),
        })
    }

    /// The coordinator's own calls to the nodes' `Region` service authenticate with `auth`
    /// (the operator token of the accounts file; ADR 0009).
    pub fn with_operator(mut self, auth: crate::operator::OperatorAuth) -> Self {
        self.operator = auth;
        self
    }

    /// The credential of the coordinator's own calls to the nodes.
    pub fn operator(&self) -> &crate::operator::OperatorAuth {
        &self.operator
    }

    /// A `Region` client of `region`'s node that authenticates as the operator (if the routes
    /// have a token), or `None` if the region is not routed.
    pub fn region_client(&self, region: &str) -> Option<crate::operator::OperatorRegionClient> {
        let channel = self.channel(region)?;
        Some(crate::operator::region_client(
            channel,
            self.operator.clone(),
        ))
    }
}

/// `us-east-1`-shaped: lowercase ASCII letters and digits in `-`-separated non-empty parts.
fn check_region_name(name: &str) -> Result<(), GatewayError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(GatewayError::BadRegionName(name.to_string()))
    }
}

/// The routing service, mounted as `amisim.v1.Ec2`.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    routes: RegionRoutes,
    /// `ap-south-1, eu-west-1, us-east-1`: for the InvalidRegion message.
    known: String,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.inner.routes)
            .finish()
    }
}

impl NamedService for Gateway {
    const NAME: &'static str = amisim_proto::ec2_server::SERVICE_NAME;
}

impl Gateway {
    pub fn new(routes: RegionRoutes) -> Self {
        let known = routes.regions().collect::<Vec<_>>().join(", ");
        Gateway {
            inner: Arc::new(Inner { routes, known }),
        }
    }

    pub fn routes(&self) -> &RegionRoutes {
        &self.inner.routes
    }
}

/// The same routing mounted as `amisim.v1.Kms`: KMS keys are regional (kms.proto), so a KMS call
/// goes to the region named by `x-amisim-region` exactly as an `Ec2` call does.
#[derive(Clone, Debug)]
pub struct KmsGateway(Gateway);

impl NamedService for KmsGateway {
    const NAME: &'static str = amisim_proto::kms_server::SERVICE_NAME;
}

impl Gateway {
    /// This gateway's routes, mounted as `amisim.v1.Kms`.
    pub fn kms(&self) -> KmsGateway {
        KmsGateway(self.clone())
    }
}

impl Service<http::Request<Body>> for KmsGateway {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.call(req)
    }
}

impl Service<http::Request<Body>> for Gateway {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is per region: it is awaited on the chosen channel in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.route(req).await) })
    }
}

impl Inner {
    async fn route(&self, mut req: http::Request<Body>) -> http::Response<Body> {
        self.mark_forwarded(&mut req);
        let request_id = header_str(&req, REQUEST_ID_HEADER).map(str::to_string);
        let method = req.uri().path().to_string();
        let region = match req.headers().get(REGION_HEADER) {
            None => Ok(DEFAULT_REGION.to_string()),
            Some(v) => v
                .to_str()
                .map(|s| s.trim().to_string())
                .map_err(|_| "<not UTF-8>".to_string()),
        };
        let span = tracing::info_span!(
            "gateway",
            region = region.as_deref().unwrap_or_else(|e| e.as_str()),
            method = %method,
            request_id = request_id.as_deref().unwrap_or(""),
        );
        async move {
            let region = region.unwrap_or_else(|e| e);
            let Some(mut channel) = self.routes.channel(&region) else {
                tracing::info!("rejected: unknown region");
                return error_response(
                    Code::InvalidArgument,
                    "InvalidRegion",
                    format!("Unknown region '{region}'; known regions: {}", self.known),
                    request_id.as_deref(),
                );
            };
            let sent = async {
                futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(req).await
            };
            match sent.await {
                Ok(resp) => {
                    tracing::debug!(http_status = %resp.status(), "forwarded");
                    resp
                }
                Err(e) => {
                    tracing::warn!(error = %e, "region node unreachable");
                    error_response(
                        Code::Unavailable,
                        "Unavailable",
                        format!("region '{region}' is unreachable: {}", error_chain(&e)),
                        request_id.as_deref(),
                    )
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Inner {
    /// Tells the node who the client is: the node sees the gateway's address (and a
    /// `user-agent` the gateway's channel added to), and the request record's
    /// `sourceIPAddress` and `userAgent` are the client's. Whatever the client sent under these names
    /// is dropped; with an accounts file the operator token vouches for the address
    /// (`amisim_region::ec2_service::forwarded_source_ip`).
    fn mark_forwarded(&self, req: &mut http::Request<Body>) {
        let client = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|addr| addr.ip().to_string());
        let headers = req.headers_mut();
        headers.remove(SOURCE_IP_HEADER);
        headers.remove(USER_AGENT_HEADER);
        headers.remove(FORWARDED_BY_HEADER);
        if let Some(ip) = client.and_then(|ip| http::HeaderValue::from_str(&ip).ok()) {
            headers.insert(SOURCE_IP_HEADER, ip);
            if let Some(agent) = headers.get(http::header::USER_AGENT).cloned() {
                headers.insert(USER_AGENT_HEADER, agent);
            }
            if let Some(token) = self.routes.operator.header() {
                if let Ok(mut v) = http::HeaderValue::from_bytes(token.as_encoded_bytes()) {
                    v.set_sensitive(true);
                    headers.insert(FORWARDED_BY_HEADER, v);
                }
            }
        }
    }
}

fn header_str<'a>(req: &'a http::Request<Body>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `e: cause: cause`, so "connection refused" is not hidden behind "transport error".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A trailers-only gRPC error answer in amisim's error model.
fn error_response(
    code: Code,
    ec2_code: &'static str,
    message: String,
    request_id: Option<&str>,
) -> http::Response<Body> {
    let mut md = MetadataMap::new();
    md.insert(ERROR_CODE_HEADER, MetadataValue::from_static(ec2_code));
    if let Some(id) = request_id.and_then(|id| MetadataValue::try_from(id).ok()) {
        md.insert(REQUEST_ID_HEADER, id);
    }
    Status::with_metadata(code, format!("{ec2_code}: {message}"), md).into_http()
}

/// Serves the gateway, gRPC health (`""` and `amisim.v1.Ec2`) and server reflection (v1 and
/// v1alpha) on `listener` until `shutdown` completes.
pub async fn serve_gateway(
    routes: RegionRoutes,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    if routes.is_empty() {
        return Err(GatewayError::NoRoutes);
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(
            amisim_proto::ec2_server::SERVICE_NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    health_reporter
        .set_service_status(
            amisim_proto::kms_server::SERVICE_NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let gateway = Gateway::new(routes);
    tracing::info!(regions = %gateway.inner.known, "gateway serving");
    Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(gateway.kms())
        .add_service(gateway)
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: without it small responses wait ~40 ms for delayed ACKs.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_name_equals_url() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r =
                RegionRoutes::from_args(["us-east-1=http://127.0.0.1:1", "eu-west-1=127.0.0.1:2"])
                    .unwrap();
            assert_eq!(r.regions().collect::<Vec<_>>(), ["eu-west-1", "us-east-1"]);
            assert!(matches!(
                RegionRoutes::from_args(["us-east-1"]),
                Err(GatewayError::BadRoute(_))
            ));
            assert!(matches!(
                RegionRoutes::from_args(["US_EAST=http://x:1"]),
                Err(GatewayError::BadRegionName(_))
            ));
            assert!(matches!(
                RegionRoutes::from_args(["a-1=http://x:1", "a-1=http://y:1"]),
                Err(GatewayError::DuplicateRegion(_))
            ));
        });
    }
}
