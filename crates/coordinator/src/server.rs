//! [`run_coordinator`]: the whole coordinator on one listener — what `amisim coordinator` and
//! `amisim dev` run.
//!
//! One gRPC server serves the gateway (`amisim.v1.Ec2`, routed by `x-amisim-region`), the
//! `amisim.v1.Coordinator` service, gRPC health (`""`, `amisim.v1.Ec2`, `amisim.v1.Coordinator`)
//! and server reflection. Beside it run one follower per region (the global projection) and the
//! copy saga driver. On shutdown the server stops taking calls first, then the driver and the
//! followers stop; nothing needs saving (a restart replays the logs).

use std::future::Future;

use amisim_chaos::LinkTable;
use amisim_proto::coordinator_server::CoordinatorServer;
use tonic::transport::Server;

use crate::follower::{FollowerConfig, FollowerError, FollowerSet};
use crate::gateway::{Gateway, GatewayError, RegionRoutes};
use crate::saga::{SagaConfig, SagaDriver};
use crate::service::CoordinatorService;

/// How the coordinator runs (one serde-free struct: its parts have their own defaults).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The followers of the region logs.
    pub followers: FollowerConfig,
    /// The copy saga driver.
    pub sagas: SagaConfig,
    /// The links between regions (copy transfer times).
    pub links: LinkTable,
    /// Run the saga driver (default true). Without it the coordinator still reads and routes,
    /// but copies stay `pending` until a coordinator with one runs.
    pub drive_sagas: bool,
    /// The accounts file (default none): the Coordinator service then authenticates every call
    /// with `authorization: Bearer <token>` and resolves org/OU launch permissions with it. The
    /// gateway forwards `authorization` untouched; the region nodes check it themselves. The
    /// coordinator's own calls to the nodes (followers, saga steps, ListCopies' clock probe)
    /// send its `[operator]` token, which the nodes' `Region` service requires (ADR 0009).
    pub accounts: Option<std::sync::Arc<amisim_core::Accounts>>,
    /// The node faults of the cluster this coordinator runs in (default none): the `Chaos`
    /// service's `*Node` RPCs act through it. A stand-alone coordinator has none and refuses
    /// them (it cannot reach into the processes of its nodes).
    pub faults: Option<std::sync::Arc<dyn amisim_chaos::NodeFaults>>,
    /// The live link table to use instead of a new one made from `links` (default none). A
    /// cluster that restarts its coordinator passes the same one each time: the network's
    /// conditions are not the coordinator's state and survive its crash.
    pub link_control: Option<amisim_chaos::LinkControl>,
    /// Holds the followers and the saga driver while on (default none): a lab cluster pausing
    /// this coordinator in process ([`crate::hold`]).
    pub hold: crate::hold::Hold,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            followers: FollowerConfig::default(),
            sagas: SagaConfig::default(),
            links: LinkTable::default(),
            drive_sagas: true,
            accounts: None,
            faults: None,
            link_control: None,
            hold: None,
        }
    }
}

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No route at all: nothing to coordinate.
    #[error("no region routes: give at least one NAME=URL")]
    NoRoutes,
    /// The link table is invalid.
    #[error("invalid links: {0}")]
    Links(#[from] amisim_chaos::LinkError),
    #[error("cannot start the followers: {0}")]
    Followers(#[from] FollowerError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The reflection service could not read the descriptor set (a build problem).
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed (the listener broke, ...).
    #[error("coordinator server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Follows every routed region, drives the copy sagas and serves the gateway, the
/// `Coordinator` service, health and reflection on `listener` until `shutdown` completes; then
/// stops the driver and the followers. Needs a tokio runtime.
pub async fn run_coordinator(
    routes: RegionRoutes,
    mut config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if config.hold.is_some() {
        config.followers.hold = config.hold.clone();
        config.sagas.hold = config.hold.clone();
    }
    if routes.is_empty() {
        return Err(ServerError::NoRoutes);
    }
    // The nodes' internal services take only the operator token of the accounts file: the
    // followers and the saga driver send it (ADR 0009).
    let routes = match &config.accounts {
        Some(a) => routes.with_operator(crate::operator::OperatorAuth::from_accounts(a)),
        None => routes,
    };
    config.links.validate()?;
    // The live link table (ADR 0008): the saga driver times transfers with it, the chaos layer
    // applies its coordinator↔region links to every channel, the `Chaos` service changes it.
    // Its draws replay from the saga seed (the run's seed).
    let links = match &config.link_control {
        Some(l) => l.clone(),
        None => amisim_chaos::LinkControl::new(config.links.clone(), config.sagas.seed),
    };
    let routes = routes.with_chaos(links.clone());
    let followers = FollowerSet::follow_routes(&routes, config.followers)?;
    let projection = followers.projection();
    let sagas = config.drive_sagas.then(|| {
        SagaDriver::spawn(
            projection.clone(),
            routes.clone(),
            links.clone(),
            config.sagas,
        )
    });
    let mut chaos = crate::chaos::ChaosControl::new(routes.clone(), links.clone());
    if let Some(a) = &config.accounts {
        chaos = chaos.with_accounts(a);
    }
    if let Some(f) = &config.faults {
        chaos = chaos.with_faults(f.clone());
    }
    tracing::info!(
        seed = links.seed(),
        "link seed (chaos draws replay from it)"
    );
    // The `Audit` service over every region (ADR 0010); its streams end when shutdown begins.
    let (audit_closing, closing) = tokio::sync::watch::channel(false);
    let mut audit = crate::audit::CoordinatorAudit::new(routes.clone()).with_closing(closing);
    if let Some(a) = &config.accounts {
        audit = audit.with_accounts(a.clone());
    }
    let mut service = CoordinatorService::new(projection).with_followers(followers.monitor());
    if let Some(s) = &sagas {
        service = service.with_sagas(s.monitor());
    }
    if let Some(a) = &config.accounts {
        service = service.with_accounts(a.clone());
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
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    health_reporter
        .set_serving::<amisim_proto::chaos_server::ChaosServer<crate::chaos::ChaosControl>>()
        .await;
    health_reporter
        .set_serving::<amisim_proto::audit_server::AuditServer<crate::audit::CoordinatorAudit>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(amisim_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let regions = routes.regions().collect::<Vec<_>>().join(",");
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        regions = %regions,
        sagas = sagas.is_some(),
        "coordinator serving (gateway, Coordinator service)"
    );
    let served = Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(Gateway::new(routes.clone()).kms())
        .add_service(Gateway::new(routes))
        .add_service(service.into_server())
        .add_service(chaos.into_server())
        .add_service(audit.into_server())
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: without it small responses wait ~40 ms for delayed ACKs.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.await;
                audit_closing.send_replace(true);
            },
        )
        .await;
    // No new calls: stop the background work (nothing to save; a restart replays the logs).
    if let Some(s) = sagas {
        s.shutdown().await;
    }
    followers.shutdown().await;
    tracing::info!("coordinator stopped");
    served?;
    Ok(())
}
