//! amisim's coordinator: the one endpoint a client needs (DESIGN.md §1).
//!
//! Today it holds the **gateway** ([`gateway`]): it serves the public `amisim.v1.Ec2` service
//! for every region and forwards each call, untouched, to the region node named by the request
//! metadata `x-amisim-region` (default `us-east-1`). The sagas (cross-region copies), the causal
//! global projection and the audit APIs described in DESIGN.md will live beside it, one module
//! each; none of them holds state that a replay of the region logs cannot rebuild.
//!
//! Why a raw HTTP/2 router rather than a second implementation of the `Ec2` trait: the gateway
//! must not know the API. It reads one header, picks the region's
//! [`tonic::transport::Channel`] and passes the gRPC request (headers, body frames, trailers)
//! through. Every method, present and future, is routed without boilerplate; request metadata
//! (`x-amisim-account`, `x-amisim-request-id`) reaches the region as sent, and the region's
//! answer (message, status, `x-amisim-consistency-token`, `x-amisim-error-code`) reaches the
//! client as sent. The multi-process deployment and `amisim dev` use this same path: in `dev`
//! the channels simply point at loopback listeners inside the process.
//!
//! Like every amisim server, [`gateway::serve_gateway`] never binds: it takes a listener and a
//! shutdown future, so tests and simulators drive it.
//!
//! Beside the gateway:
//!
//! - [`follower`] + [`projection`]: the causal global projection, one follower per region log;
//! - [`service`]: the `amisim.v1.Coordinator` service (global reads, digests, `ListCopies`);
//! - [`operator`]: the operator token the coordinator sends on its own calls to the nodes'
//!   internal `Region` service when there is an accounts file (ADR 0009);
//! - [`saga`]: the copy saga driver — watches the projection and drives every CopyImage /
//!   CopySnapshot through its idempotent steps on the source and destination nodes;
//! - [`audit`]: the `amisim.v1.Audit` service over every region (merged causal event streams,
//!   global as-of reads, LookupEvents across regions, per-region verification; ADR 0010);
//! - [`chaos`]: the `amisim.v1.Chaos` service — clock control of the nodes and the live link
//!   table, whose faults the chaos layer applies to every channel above (ADR 0008);
//! - [`server`]: [`run_coordinator`], everything above wired on one listener, as
//!   `amisim coordinator` and `amisim dev` run it.

pub mod audit;
pub mod chaos;
pub mod follower;
pub mod gateway;
pub mod hold;
pub mod operator;
pub mod projection;
pub mod saga;
pub mod server;
pub mod service;

pub use audit::CoordinatorAudit;
pub use chaos::ChaosControl;
pub use follower::{FollowerConfig, FollowerMonitor, FollowerSet, FollowerStatus};
pub use gateway::{serve_gateway, Gateway, GatewayError, KmsGateway, RegionRoutes};
pub use operator::{OperatorAuth, OperatorRegionClient};
pub use projection::{ConsistencyToken, Projection, ProjectionSnapshot};
pub use saga::{SagaConfig, SagaDriver, SagaMonitor, SagaStatus};
pub use server::{run_coordinator, CoordinatorConfig, ServerError};
pub use service::{serve_coordinator, CoordinatorService};
