//! Shared helpers of the region node's black-box tests: a served node on port 0, clients, a
//! test-double log, and polling with a deadline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amisim_chaos::{Clock, VirtualClock};
use amisim_log::{EventLog, Head, LogError, MemoryLog};
use amisim_proto::ec2_client::Ec2Client;
use amisim_proto::event::Payload;
use amisim_proto::region_client::RegionClient;
use amisim_proto::{CreateVolumeRequest, Event, VolumeCreated};
use amisim_region::{serve, RegionConfig, RegionNode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const REGION: &str = "us-east-1";
pub const OWNER: &str = "111122223333";
pub const OTHER: &str = "444455556666";
/// 2024-05-01T00:00:00Z.
pub const T0: u64 = 1_714_521_600_000;

/// A node served on 127.0.0.1:0.
pub struct Served {
    pub node: Arc<RegionNode>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), amisim_region::RegionError>>>,
}

impl Served {
    pub async fn start(node: Arc<RegionNode>) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(node.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Served {
            node,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn ec2(&self) -> Ec2Client<Channel> {
        Ec2Client::new(self.channel().await).max_encoding_message_size(64 * 1024 * 1024)
    }

    pub async fn region(&self) -> RegionClient<Channel> {
        RegionClient::new(self.channel().await)
    }

    /// Stops serving and the node's writer; returns the node (for inspection).
    pub async fn stop(mut self) -> Arc<RegionNode> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        self.node.shutdown().await;
        self.node.clone()
    }
}

pub fn config(seed: u64) -> RegionConfig {
    RegionConfig {
        seed: Some(seed),
        ..RegionConfig::new(REGION)
    }
}

/// A node on `log` whose clock only moves when the test says (it starts at `T0`, or at the last
/// logged event if that is later).
pub fn virtual_node(log: Arc<dyn EventLog>, seed: u64) -> (Arc<RegionNode>, VirtualClock) {
    let clock = VirtualClock::new(T0);
    let c = clock.clone();
    let node = RegionNode::start_with_clock(config(seed), log, move |last| {
        c.set(last);
        Arc::new(c) as Arc<dyn Clock>
    })
    .unwrap();
    (node, clock)
}

/// A request carrying `x-amisim-account`.
pub fn as_account<T>(account: &str, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-amisim-account", account.parse().unwrap());
    r
}

pub fn meta<'a>(md: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

pub fn create_volume(size: i32) -> CreateVolumeRequest {
    CreateVolumeRequest {
        availability_zone: format!("{REGION}a"),
        size: Some(size),
        ..Default::default()
    }
}

/// An envelope for events written straight into a log (as an older node would have).
pub fn envelope(sim_time_ms: u64, payload: Payload) -> Event {
    Event {
        region: REGION.into(),
        event_id: format!("test-{sim_time_ms}"),
        sim_time_ms,
        account_id: OWNER.into(),
        payload: Some(payload),
        ..Default::default()
    }
}

/// A `VolumeCreated` due to turn available at `available_at_ms`.
pub fn volume_created(id: &str, created_ms: u64, available_at_ms: u64) -> Payload {
    Payload::VolumeCreated(VolumeCreated {
        volume_id: id.into(),
        owner_id: OWNER.into(),
        availability_zone: format!("{REGION}a"),
        size: 8,
        volume_type: "gp2".into(),
        iops: 100,
        create_time_ms: created_ms,
        available_at_ms,
        written_bytes: 8 << 30,
        ..Default::default()
    })
}

/// Polls `cond` every few ms until it holds; panics after `secs`.
pub async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A test-double log: a `MemoryLog` whose appends can be made to fail or to be slow, and which
/// counts them.
#[derive(Default)]
pub struct FlakyLog {
    pub inner: MemoryLog,
    pub fail: AtomicBool,
    pub appends: AtomicUsize,
    pub delay_ms: AtomicUsize,
}

impl EventLog for FlakyLog {
    fn head(&self) -> Head {
        self.inner.head()
    }
    fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(LogError::Io(std::io::Error::other("disk on fire (test)")));
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay as u64));
        }
        self.inner.append(events)
    }
    fn read_range(&self, from: u64, to: u64) -> Result<Vec<Event>, LogError> {
        self.inner.read_range(from, to)
    }
    fn subscribe_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe_head()
    }
    fn verify(&self) -> Result<Head, LogError> {
        self.inner.verify()
    }
}
