//! The gateway against fake region backends: routing by `x-amisim-region`, metadata passed
//! through both ways, the InvalidRegion and Unavailable errors, health and reflection.
//!
//! A fake backend is a raw `amisim.v1.Ec2` tower service answering every call with a
//! trailers-only status whose metadata tells which backend saw the call and what metadata it
//! received; the gateway never decodes messages, so this exercises it completely. The real
//! region nodes behind the gateway are covered by the end-to-end tests in `tests/`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use amisim_coordinator::{serve_gateway, RegionRoutes};
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::DescribeImagesRequest;
use futures::future::{ready, Ready};
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Clone)]
struct FakeRegion(&'static str);

impl NamedService for FakeRegion {
    const NAME: &'static str = "amisim.v1.Ec2";
}

impl tower::Service<http::Request<Body>> for FakeRegion {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mut md = MetadataMap::new();
        md.insert("x-fake-region", MetadataValue::from_static(self.0));
        md.insert(
            "x-fake-method",
            req.uri().path().parse().expect("ascii path"),
        );
        for (key, echoed) in [
            ("x-amisim-account", "x-fake-account"),
            ("x-amisim-request-id", "x-amisim-request-id"),
            ("x-amisim-source-ip", "x-fake-source-ip"),
            ("x-amisim-forwarded-by", "x-fake-forwarded-by"),
            ("x-amisim-user-agent", "x-fake-user-agent"),
        ] {
            if let Some(v) = req.headers().get(key) {
                md.insert(echoed, v.to_str().unwrap().parse().unwrap());
            }
        }
        md.insert(
            "x-amisim-consistency-token",
            format!("{}:7", self.0).parse().unwrap(),
        );
        md.insert(
            "x-amisim-error-code",
            MetadataValue::from_static("InvalidAMIID.NotFound"),
        );
        let status = Status::with_metadata(
            Code::NotFound,
            "InvalidAMIID.NotFound: The image id '[ami-12345678]' does not exist",
            md,
        );
        ready(Ok(status.into_http()))
    }
}

async fn start_fake(name: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FakeRegion(name))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// A gateway over two fakes (us-east-1, eu-west-1) and one dead route (ap-south-1).
async fn start_gateway() -> (Channel, tokio::sync::oneshot::Sender<()>) {
    start_gateway_from(None, amisim_coordinator::OperatorAuth::none()).await
}

/// [`start_gateway`], with the client's connection made from `local` (another loopback
/// address, so the client is not where the gateway is).
async fn start_gateway_from(
    local: Option<std::net::IpAddr>,
    operator: amisim_coordinator::OperatorAuth,
) -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let us = start_fake("us-east-1").await;
    let eu = start_fake("eu-west-1").await;
    // A port nothing listens on: bind, note, drop.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let routes = RegionRoutes::from_args([
        format!("us-east-1={us}"),
        format!("eu-west-1={eu}"),
        format!("ap-south-1={dead}"),
    ])
    .unwrap()
    .with_operator(operator);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve_gateway(routes, listener, async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(local)
        .user_agent("amisim-test/1")
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, tx)
}

/// The node sees the gateway's address; the gateway tells it the client's, for the request
/// record's `sourceIPAddress`, and drops what a client claims under the same names.
#[tokio::test]
async fn forwards_the_clients_address_and_drops_a_forged_one() {
    assert_eq!(
        amisim_coordinator::gateway::SOURCE_IP_HEADER,
        amisim_region::ec2_service::SOURCE_IP_KEY
    );
    assert_eq!(
        amisim_coordinator::gateway::FORWARDED_BY_HEADER,
        amisim_region::ec2_service::FORWARDED_BY_KEY
    );
    assert_eq!(
        amisim_coordinator::gateway::USER_AGENT_HEADER,
        amisim_region::ec2_service::FORWARDED_USER_AGENT_KEY
    );
    let client_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let (channel, _stop) =
        start_gateway_from(Some(client_ip), amisim_coordinator::OperatorAuth::none()).await;
    let mut client = Ec2Client::new(channel);
    let mut forged = request(Some("us-east-1"));
    forged
        .metadata_mut()
        .insert("x-amisim-source-ip", "6.6.6.6".parse().unwrap());
    forged
        .metadata_mut()
        .insert("x-amisim-forwarded-by", "Bearer guess".parse().unwrap());
    forged
        .metadata_mut()
        .insert("x-amisim-user-agent", "forged/1.0".parse().unwrap());
    for req in [request(Some("us-east-1")), forged] {
        let s = client.describe_images(req).await.unwrap_err();
        assert_eq!(md(&s, "x-fake-source-ip"), "127.0.0.2");
        // The client's own user agent, without the gateway's channel's addition to it.
        let agent = md(&s, "x-fake-user-agent");
        assert!(agent.starts_with("amisim-test/1 "), "{agent}");
        assert_eq!(agent.matches("tonic/").count(), 1, "{agent}");
        assert!(
            s.metadata().get("x-fake-forwarded-by").is_none(),
            "no operator token without an accounts file, and never the client's"
        );
    }

    // With an accounts file the operator token vouches for the address (the node checks it).
    let operator = amisim_coordinator::OperatorAuth::bearer("op-secret").unwrap();
    let (channel, _stop) = start_gateway_from(Some(client_ip), operator).await;
    let s = Ec2Client::new(channel)
        .describe_images(request(Some("eu-west-1")))
        .await
        .unwrap_err();
    assert_eq!(md(&s, "x-fake-source-ip"), "127.0.0.2");
    assert_eq!(md(&s, "x-fake-forwarded-by"), "Bearer op-secret");
}

fn request(region: Option<&str>) -> tonic::Request<DescribeImagesRequest> {
    let mut req = tonic::Request::new(DescribeImagesRequest::default());
    if let Some(r) = region {
        req.metadata_mut()
            .insert("x-amisim-region", r.parse().unwrap());
    }
    req.metadata_mut()
        .insert("x-amisim-account", "210987654321".parse().unwrap());
    req.metadata_mut()
        .insert("x-amisim-request-id", "req-1".parse().unwrap());
    req
}

fn md<'a>(s: &'a Status, key: &str) -> &'a str {
    s.metadata()
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {s:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn routes_by_region_and_passes_metadata_both_ways() {
    let (channel, _stop) = start_gateway().await;
    let mut client = Ec2Client::new(channel);
    for region in ["us-east-1", "eu-west-1"] {
        let s = client
            .describe_images(request(Some(region)))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().starts_with("InvalidAMIID.NotFound: "), "{s:?}");
        assert_eq!(md(&s, "x-fake-region"), region);
        assert_eq!(md(&s, "x-fake-method"), "/amisim.v1.Ec2/DescribeImages");
        assert_eq!(md(&s, "x-fake-account"), "210987654321");
        assert_eq!(md(&s, "x-amisim-request-id"), "req-1");
        assert_eq!(md(&s, "x-amisim-error-code"), "InvalidAMIID.NotFound");
        assert_eq!(md(&s, "x-amisim-consistency-token"), format!("{region}:7"));
    }
    // No header: us-east-1.
    let s = client.describe_images(request(None)).await.unwrap_err();
    assert_eq!(md(&s, "x-fake-region"), "us-east-1");
}

#[tokio::test]
async fn unknown_region_is_invalid_region() {
    let (channel, _stop) = start_gateway().await;
    let mut client = Ec2Client::new(channel);
    let s = client
        .describe_images(request(Some("xx-1")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(md(&s, "x-amisim-error-code"), "InvalidRegion");
    assert_eq!(md(&s, "x-amisim-request-id"), "req-1");
    assert_eq!(
        s.message(),
        "InvalidRegion: Unknown region 'xx-1'; known regions: ap-south-1, eu-west-1, us-east-1"
    );
}

#[tokio::test]
async fn unreachable_region_is_unavailable_and_the_gateway_keeps_serving() {
    let (channel, _stop) = start_gateway().await;
    let mut client = Ec2Client::new(channel);
    let s = client
        .describe_images(request(Some("ap-south-1")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(md(&s, "x-amisim-error-code"), "Unavailable");
    assert!(
        s.message()
            .starts_with("Unavailable: region 'ap-south-1' is unreachable"),
        "{s:?}"
    );
    let s = client
        .describe_images(request(Some("eu-west-1")))
        .await
        .unwrap_err();
    assert_eq!(md(&s, "x-fake-region"), "eu-west-1");
}

#[tokio::test]
async fn serves_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (channel, _stop) = start_gateway().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "amisim.v1.Ec2"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"amisim.v1.Ec2"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}
