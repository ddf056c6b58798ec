//! [`serve`]: the node's gRPC server on a listener the caller bound (STYLE.md 8): `Ec2`, `Kms`,
//! `Region`, `Audit`, gRPC health and server reflection.

use std::future::Future;
use std::sync::Arc;

use amisim_proto::audit_server::AuditServer;
use amisim_proto::ec2_server::Ec2Server;
use amisim_proto::kms_server::KmsServer;
use amisim_proto::region_server::RegionServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{Ec2Service, KmsService, NodeStatus, RegionError, RegionNode, RegionService};

/// Largest request message a server decodes (4 MiB); a bigger one is refused with a status
/// (`OUT_OF_RANGE`/`RESOURCE_EXHAUSTED` from tonic), never decoded.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Serves `node` on `listener` until `shutdown` resolves (then lets in-flight calls finish).
///
/// Health (`grpc.health.v1.Health`) reports `amisim.v1.Ec2`, `amisim.v1.Kms`, `amisim.v1.Region`
/// and the server (`""`) as SERVING, and turns `amisim.v1.Ec2`, `amisim.v1.Kms` and `""` to
/// NOT_SERVING if the node fail-stops (reads of the last durable state and the log stream keep
/// working). Reflection (v1 and v1alpha) describes every amisim service.
///
/// With an accounts file (`RegionConfig::accounts`), `Region` and `Audit` calls must carry
/// `authorization: Bearer <operator token>` ([`OperatorCheck`](crate::OperatorCheck)).
pub async fn serve(
    node: Arc<RegionNode>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<Ec2Server<Ec2Service>>().await;
    reporter.set_serving::<KmsServer<KmsService>>().await;
    reporter.set_serving::<RegionServer<RegionService>>().await;
    reporter
        .set_serving::<AuditServer<crate::audit::AuditService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut status = node.watch_status();
    let follow = reporter.clone();
    let health_task = tokio::spawn(async move {
        loop {
            let failed = matches!(*status.borrow_and_update(), NodeStatus::Failed(_));
            if failed {
                follow.set_not_serving::<Ec2Server<Ec2Service>>().await;
                follow.set_not_serving::<KmsServer<KmsService>>().await;
                follow
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                return;
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });

    let ec2 =
        Ec2Server::new(Ec2Service::new(node.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let kms =
        KmsServer::new(KmsService::new(node.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Live event streams never end on their own; they must end for the graceful shutdown.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        closing_tx.send_replace(true);
    };
    // With an accounts file, the internal services take only the operator token (ADR 0009).
    let operator = crate::OperatorCheck::new(node.region(), node.accounts().cloned());
    let audit = InterceptedService::new(
        AuditServer::new(
            crate::audit::AuditService::new(node.clone()).with_closing(closing.clone()),
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES),
        operator.clone(),
    );
    let region = InterceptedService::new(
        RegionServer::new(RegionService::new(node.clone()).with_closing(closing))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        operator,
    );
    let addr = listener.local_addr().ok();
    tracing::info!(region = %node.region(), addr = ?addr, "region node serving gRPC");
    let served = Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ec2)
        .add_service(kms)
        .add_service(region)
        .add_service(audit)
        // TCP_NODELAY: without it small responses wait ~40 ms for delayed ACKs.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    health_task.abort();
    tracing::info!(region = %node.region(), addr = ?addr, "region node stopped serving gRPC");
    served.map_err(RegionError::from)
}
