//! What the in-process coordinator tests share: region nodes on in-memory logs and virtual
//! clocks, each served on its own 127.0.0.1:0 listener, and the gateway routes to them.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amisim_chaos::{Clock, VirtualClock};
use amisim_coordinator::RegionRoutes;
use amisim_log::MemoryLog;
use amisim_region::{serve, RegionConfig, RegionNode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// The dev regions.
pub const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
/// 2024-05-01T00:00:00Z.
pub const T0: u64 = 1_714_521_600_000;

/// One served region node; dropping `_stop` stops its server.
pub struct Node {
    pub node: Arc<RegionNode>,
    pub clock: VirtualClock,
    pub addr: SocketAddr,
    pub _stop: oneshot::Sender<()>,
}

/// A lazily connecting channel to `addr`.
pub fn lazy(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// One node per region of [`REGIONS`] (seeds 100, 101, …), served, and the routes to them.
pub async fn start_nodes() -> (BTreeMap<String, Node>, RegionRoutes) {
    let mut nodes = BTreeMap::new();
    let mut routes = RegionRoutes::new();
    for (i, name) in REGIONS.iter().enumerate() {
        let cfg = RegionConfig {
            seed: Some(100 + i as u64),
            ..RegionConfig::new(*name)
        };
        let clock = VirtualClock::new(T0);
        let c = clock.clone();
        let node = RegionNode::start_with_clock(cfg, Arc::new(MemoryLog::new()), move |last| {
            c.set(last);
            Arc::new(c) as Arc<dyn Clock>
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(node.clone(), listener, async move {
            let _ = stopped.await;
        }));
        routes.insert(name, lazy(&addr.to_string())).unwrap();
        nodes.insert(
            name.to_string(),
            Node {
                node,
                clock,
                addr,
                _stop: stop,
            },
        );
    }
    (nodes, routes)
}
