//! Followers: one background task per region that keeps the [`Projection`] fed with that
//! region's log (DESIGN.md §1: "subscribes to every region's log, catch-up, then live").
//!
//! Each follower:
//!
//! 1. asks the node `Region.GetRegionInfo`, and refuses a node that serves another region (a
//!    mis-wired URL would otherwise mix two logs) or whose log is shorter than what is already
//!    applied (its data was replaced: resuming would be silently wrong);
//! 2. opens `Region.StreamEvents{from_seq: received + 1, follow: true}` — the stored events
//!    first, then each new one as it becomes durable;
//! 3. hands the events to [`Projection::ingest`] in batches (whatever has already arrived, up to
//!    [`FollowerConfig::max_batch`]), which applies them causally and publishes a snapshot;
//! 4. on any failure — connect error, stream error, the node closing the stream, a gap or a
//!    foreign event refused by the merge — records it, waits an exponential backoff
//!    ([`Backoff`]: 100 ms doubling to 5 s, jittered from a seeded RNG so runs replay) and goes
//!    back to 1, resuming after the last event received. The merge ignores anything at or below
//!    that seq and refuses anything past it, so a resumed stream can neither skip nor repeat.
//!
//! When a region is held back by causality (its next event waits for another region), the
//! follower stops reading once [`FollowerConfig::max_buffered`] events wait, so a stalled
//! region costs bounded memory; the node's stream simply pauses (HTTP/2 flow control).
//!
//! Status is observable at any time ([`FollowerMonitor::status`] → [`FollowerStatus`]); the
//! `Coordinator.GetProjectionStatus` RPC reports it (STYLE.md 13: background work is named and
//! observable).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use amisim_proto::{Event, EventRef, GetRegionInfoRequest, StreamEventsRequest};
use futures::{FutureExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::gateway::{RegionChannel, RegionRoutes};
use crate::operator::OperatorAuth;
use crate::projection::Projection;

/// Largest event message a follower decodes (64 MiB; events are far smaller, but a refusal
/// here would stall the region for good).
pub const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// How followers run. The defaults suit a local cluster and tests.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// First retry delay after a failure (default 100 ms).
    pub initial_backoff: Duration,
    /// Largest retry delay (default 5 s).
    pub max_backoff: Duration,
    /// Seed of the jitter RNG (each region draws from its own stream of it), so a run's retry
    /// timing replays (STYLE.md 9).
    pub seed: u64,
    /// At most this many events per [`Projection::ingest`] (default 1024): one snapshot
    /// publication per batch, not per event, during catch-up.
    pub max_batch: usize,
    /// Stop reading a region's stream while this many of its events wait for a dependency
    /// (default 100 000).
    pub max_buffered: usize,
    /// Bound on `GetRegionInfo` and on opening the stream (default 5 s).
    pub rpc_timeout: Duration,
    /// While held, followers ingest nothing (a paused in-process coordinator; default none).
    pub hold: crate::hold::Hold,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        FollowerConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            seed: 0,
            max_batch: 1024,
            max_buffered: 100_000,
            hold: None,
            rpc_timeout: Duration::from_secs(5),
        }
    }
}

/// Exponential backoff with "equal jitter": the n-th delay is drawn uniformly from
/// `[d/2, d]` where `d = min(max, initial × 2ⁿ)`. Half the delay is guaranteed (no hammering),
/// the other half spreads retries of many followers apart.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt (and counts the attempt).
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let full = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        let spread = (full - half).as_nanos() as u64;
        half + Duration::from_nanos(self.rng.random_range(0..=spread))
    }

    /// Back to the initial delay (after the link proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A region's follower as reported by [`FollowerMonitor::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerStatus {
    pub region: String,
    /// An event stream to the node is open.
    pub connected: bool,
    /// Events `1..=applied_seq` are in the projection.
    pub applied_seq: u64,
    /// The last seq received (applied or waiting for a dependency).
    pub received_seq: u64,
    /// Received events waiting for a dependency.
    pub buffered: usize,
    /// The dependency the first waiting event needs.
    pub blocked_on: Option<EventRef>,
    /// Times the stream was lost (or could not be opened) and retried.
    pub reconnects: u64,
    /// The last failure, kept after recovery so a flapping link shows.
    pub last_error: Option<String>,
    /// The node's log head when the follower last connected.
    pub head_seq_at_connect: u64,
}

/// The part of the status only the follower knows.
#[derive(Debug, Clone, Default)]
struct Link {
    connected: bool,
    reconnects: u64,
    last_error: Option<String>,
    head_seq_at_connect: u64,
}

/// Why followers could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowerError {
    /// A source names a region the projection was not created for.
    #[error("region {0:?} is not part of the projection (create the projection with every followed region)")]
    NotInProjection(String),
    /// The same region given twice.
    #[error("region {0:?} is followed twice")]
    Duplicate(String),
}

/// A cloneable, read-only view of the followers' status (for the `Coordinator` service).
#[derive(Debug, Clone)]
pub struct FollowerMonitor {
    projection: Arc<Projection>,
    links: Arc<BTreeMap<String, watch::Receiver<Link>>>,
}

impl FollowerMonitor {
    /// One entry per followed region, sorted by region.
    pub fn status(&self) -> Vec<FollowerStatus> {
        let snap = self.projection.snapshot();
        self.links
            .iter()
            .map(|(region, link)| {
                let link = link.borrow().clone();
                let r = snap.region(region);
                FollowerStatus {
                    region: region.clone(),
                    connected: link.connected,
                    applied_seq: r.map_or(0, |r| r.applied_seq),
                    received_seq: r.map_or(0, |r| r.received_seq),
                    buffered: r.map_or(0, |r| r.buffered),
                    blocked_on: r.and_then(|r| r.blocked_on.clone()),
                    reconnects: link.reconnects,
                    last_error: link.last_error,
                    head_seq_at_connect: link.head_seq_at_connect,
                }
            })
            .collect()
    }

    /// One region's status.
    pub fn region(&self, region: &str) -> Option<FollowerStatus> {
        self.status().into_iter().find(|s| s.region == region)
    }
}

/// The running followers. Dropping it stops them (as [`FollowerSet::shutdown`] does, without
/// waiting).
pub struct FollowerSet {
    projection: Arc<Projection>,
    monitor: FollowerMonitor,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FollowerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerSet")
            .field("status", &self.monitor.status())
            .finish()
    }
}

impl FollowerSet {
    /// Creates a projection of every routed region and a follower for each, on the routes'
    /// channels (which connect lazily: regions may come up after the coordinator). The usual
    /// way to start the coordinator's global view:
    ///
    /// ```no_run
    /// # fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use amisim_coordinator::{CoordinatorService, FollowerConfig, FollowerSet, RegionRoutes};
    /// let routes = RegionRoutes::from_args(["us-east-1=http://127.0.0.1:50052"])?;
    /// let followers = FollowerSet::follow_routes(&routes, FollowerConfig::default())?;
    /// let service =
    ///     CoordinatorService::new(followers.projection()).with_followers(followers.monitor());
    /// # Ok(()) }
    /// ```
    pub fn follow_routes(
        routes: &RegionRoutes,
        config: FollowerConfig,
    ) -> Result<FollowerSet, FollowerError> {
        let projection = Arc::new(Projection::new(routes.regions()));
        let sources = routes
            .regions()
            .filter_map(|r| routes.channel(r).map(|c| (r.to_string(), c)));
        Self::spawn_as(projection, sources, config, routes.operator().clone())
    }

    /// Starts one follower per `(region, channel)` feeding `projection`. Needs a tokio runtime.
    pub fn spawn(
        projection: Arc<Projection>,
        sources: impl IntoIterator<Item = (String, impl Into<RegionChannel>)>,
        config: FollowerConfig,
    ) -> Result<FollowerSet, FollowerError> {
        Self::spawn_as(projection, sources, config, OperatorAuth::none())
    }

    /// As [`FollowerSet::spawn`], every call to the nodes authenticating with `auth` (the
    /// operator token, needed when the nodes have an accounts file; ADR 0009).
    pub fn spawn_as(
        projection: Arc<Projection>,
        sources: impl IntoIterator<Item = (String, impl Into<RegionChannel>)>,
        config: FollowerConfig,
        auth: OperatorAuth,
    ) -> Result<FollowerSet, FollowerError> {
        let mut checked: BTreeMap<String, RegionChannel> = BTreeMap::new();
        for (region, channel) in sources {
            if !projection.follows(&region) {
                return Err(FollowerError::NotInProjection(region));
            }
            if checked.insert(region.clone(), channel.into()).is_some() {
                return Err(FollowerError::Duplicate(region));
            }
        }
        let (shutdown, _) = watch::channel(false);
        let mut links = BTreeMap::new();
        let mut tasks = Vec::new();
        for (region, channel) in checked {
            let (link_tx, link_rx) = watch::channel(Link::default());
            links.insert(region.clone(), link_rx);
            let follower = Follower {
                backoff: Backoff::new(
                    config.initial_backoff,
                    config.max_backoff,
                    region_seed(config.seed, &region),
                ),
                region: region.clone(),
                channel,
                auth: auth.clone(),
                projection: projection.clone(),
                config: config.clone(),
                link: link_tx,
                shutdown: shutdown.subscribe(),
            };
            let span = tracing::info_span!("follower", region = %region);
            tasks.push(tokio::spawn(follower.run().instrument(span)));
        }
        let monitor = FollowerMonitor {
            projection: projection.clone(),
            links: Arc::new(links),
        };
        Ok(FollowerSet {
            projection,
            monitor,
            shutdown,
            tasks,
        })
    }

    /// The projection the followers feed.
    pub fn projection(&self) -> Arc<Projection> {
        self.projection.clone()
    }

    /// A view of the followers' status, to hand to services.
    pub fn monitor(&self) -> FollowerMonitor {
        self.monitor.clone()
    }

    /// Current status of every follower.
    pub fn status(&self) -> Vec<FollowerStatus> {
        self.monitor.status()
    }

    /// Stops every follower and waits for them to end. The projection stays readable.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for t in self.tasks.drain(..) {
            // A follower never panics by design; if one did, there is nothing left to stop.
            let _ = t.await;
        }
    }
}

impl Drop for FollowerSet {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Each region's jitter stream: the configured seed mixed with the region name (FNV-1a), so
/// regions do not retry in lockstep yet every run with the same seed retries the same way.
fn region_seed(seed: u64, region: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in region.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How a session with the node ended.
enum End {
    /// Asked to stop.
    Shutdown,
    /// Something failed; retry after a backoff.
    Failed(String),
}

struct Follower {
    region: String,
    channel: RegionChannel,
    auth: OperatorAuth,
    projection: Arc<Projection>,
    config: FollowerConfig,
    backoff: Backoff,
    link: watch::Sender<Link>,
    shutdown: watch::Receiver<bool>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            let end = self.session().await;
            self.link.send_modify(|l| l.connected = false);
            let why = match end {
                End::Shutdown => break,
                End::Failed(why) => why,
            };
            let delay = self.backoff.next_delay();
            tracing::warn!(
                error = %why,
                retry_in_ms = delay.as_millis() as u64,
                received_seq = self.projection.received_seq(&self.region),
                "event stream lost; reconnecting"
            );
            self.link.send_modify(|l| {
                l.reconnects += 1;
                l.last_error = Some(why);
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut self.shutdown) => break,
            }
        }
        tracing::info!("follower stopped");
    }

    /// One connection: check the node, stream from the last received event, feed the
    /// projection until something fails or shutdown.
    async fn session(&mut self) -> End {
        if *self.shutdown.borrow() {
            return End::Shutdown;
        }
        let mut client = crate::operator::region_client(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_EVENT_BYTES);
        let timeout = self.config.rpc_timeout;
        let info = tokio::select! {
            r = tokio::time::timeout(timeout, client.get_region_info(GetRegionInfoRequest {})) => r,
            _ = stopped(&mut self.shutdown) => return End::Shutdown,
        };
        let info = match info {
            Err(_) => return End::Failed(format!("GetRegionInfo timed out after {timeout:?}")),
            Ok(Err(status)) => return End::Failed(describe_status("GetRegionInfo", &status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        if info.region != self.region {
            return End::Failed(format!(
                "the node at this address serves region {:?}, not {:?}",
                info.region, self.region
            ));
        }
        let applied = self.projection.applied_seq(&self.region);
        if info.head_seq < applied {
            return End::Failed(format!(
                "the node's log ends at seq {} but {} events are already applied: \
                 its log was replaced; restart the coordinator to rebuild the projection",
                info.head_seq, applied
            ));
        }
        let from_seq = self.projection.received_seq(&self.region) + 1;
        let opened = tokio::select! {
            r = tokio::time::timeout(
                timeout,
                client.stream_events(StreamEventsRequest { from_seq, follow: true }),
            ) => r,
            _ = stopped(&mut self.shutdown) => return End::Shutdown,
        };
        let mut stream = match opened {
            Err(_) => return End::Failed(format!("StreamEvents timed out after {timeout:?}")),
            Ok(Err(status)) => return End::Failed(describe_status("StreamEvents", &status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        self.link.send_modify(|l| {
            l.connected = true;
            l.head_seq_at_connect = info.head_seq;
        });
        tracing::info!(
            from_seq,
            head_seq = info.head_seq,
            "following the event log"
        );

        loop {
            let first = tokio::select! {
                m = stream.next() => m,
                _ = stopped(&mut self.shutdown) => return End::Shutdown,
            };
            // A paused coordinator ingests nothing until it resumes.
            let mut hold = self.config.hold.clone();
            tokio::select! {
                () = crate::hold::while_held(&mut hold) => {}
                _ = stopped(&mut self.shutdown) => return End::Shutdown,
            }
            let mut batch: Vec<Event> = Vec::new();
            let mut after: Option<String> = None;
            match first {
                None => return End::Failed("the node closed the event stream".into()),
                Some(Err(status)) => return End::Failed(describe_status("StreamEvents", &status)),
                Some(Ok(e)) => batch.push(e),
            }
            // Whatever else has already arrived goes into the same batch.
            while batch.len() < self.config.max_batch {
                match stream.next().now_or_never() {
                    Some(Some(Ok(e))) => batch.push(e),
                    Some(Some(Err(status))) => {
                        after = Some(describe_status("StreamEvents", &status));
                        break;
                    }
                    Some(None) => {
                        after = Some("the node closed the event stream".into());
                        break;
                    }
                    None => break,
                }
            }
            match self.projection.ingest(&self.region, batch) {
                Ok(done) => {
                    if done.accepted > 0 {
                        // The link delivers: the next failure starts from the short delay.
                        self.backoff.reset();
                    }
                }
                Err(e) => return End::Failed(format!("refused by the merge: {e}")),
            }
            if let Some(why) = after {
                return End::Failed(why);
            }
            if !self.wait_for_room().await {
                return End::Shutdown;
            }
        }
    }

    /// Waits while too many of this region's events are held back by causality; false if
    /// shutdown came first.
    async fn wait_for_room(&mut self) -> bool {
        let mut changes = self.projection.subscribe();
        loop {
            let buffered = self
                .projection
                .snapshot()
                .region(&self.region)
                .map_or(0, |r| r.buffered);
            if buffered < self.config.max_buffered {
                return true;
            }
            tracing::debug!(buffered, "pausing the stream: events wait for a dependency");
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = stopped(&mut self.shutdown) => return false,
            }
        }
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An Err means the FollowerSet is gone: stop as well.
    let _ = shutdown.wait_for(|s| *s).await;
}

/// `StreamEvents: UNAVAILABLE: connection refused`, with the transport's cause when there is
/// one.
fn describe_status(call: &str, status: &tonic::Status) -> String {
    use std::error::Error;
    let mut s = format!("{call}: {:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        let mut nominal = Duration::from_millis(100);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} for {nominal:?}");
            nominal = (nominal * 2).min(Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_reproducible_from_its_seed() {
        let delays = |seed| {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1));
        assert_ne!(delays(1), delays(2));
    }

    #[test]
    fn backoff_survives_huge_attempt_counts() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
    }

    #[test]
    fn regions_get_distinct_jitter_streams() {
        assert_ne!(region_seed(1, "us-east-1"), region_seed(1, "eu-west-1"));
        assert_eq!(region_seed(1, "us-east-1"), region_seed(1, "us-east-1"));
    }
}
