//! The link faults on the coordinator's gRPC channels, as a [`tower::Layer`].
//!
//! [`ChaosLayer`] wraps the channel the coordinator uses to reach one region (followers, saga
//! steps, the gateway all go through it). Each call looks up two directed links in the shared
//! [`LinkControl`]: `coordinator → region` for the request and `region → coordinator` for the
//! answer (see [`COORDINATOR`]), and:
//!
//! - request link partitioned, or the request drawn lost: the call fails UNAVAILABLE (after the
//!   link's `timeout_ms`, as a silent network does) and never reaches the region;
//! - otherwise it waits the request link's drawn latency and is sent;
//! - answer link partitioned, or the answer drawn lost: the region did the work but the caller
//!   gets UNAVAILABLE (so callers must retry idempotently — the copy saga does);
//! - otherwise it waits the answer link's drawn latency; the answer's body then **stalls** while
//!   the answer link is partitioned (a live event stream stops and resumes when it heals) and its
//!   end is held back `slow_close_ms`.
//!
//! Delays here are wall-clock milliseconds: they slow real RPCs and change no simulated time, so
//! a virtual-clock run stays reproducible in its logs. Draws come from one seeded stream per
//! channel (`rpc/<region>`); with concurrent calls their order, and so which call is lost,
//! depends on scheduling (ADR 0008).
//!
//! Only coordinator links listed in the table count (the table's default is the region↔region
//! transfer model); an unlisted one is [`LinkModel::CLEAN`]. A [`ChaosService`] without a
//! control ([`ChaosService::direct`]) passes every call through.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use rand_chacha::ChaCha8Rng;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::control::LinkControl;
use crate::link::{LinkModel, COORDINATOR};

/// The `x-amisim-error-code` of a call the layer failed.
pub const INJECTED_ERROR_CODE: &str = "Unavailable";

/// Wraps a channel to `region` with the faults of its coordinator links.
#[derive(Debug, Clone)]
pub struct ChaosLayer {
    link: Arc<Link>,
}

impl ChaosLayer {
    /// The layer for the channel to `region`.
    pub fn new(control: LinkControl, region: &str) -> Self {
        let rng = control.rng(&format!("rpc/{region}"));
        ChaosLayer {
            link: Arc::new(Link {
                control,
                region: region.to_string(),
                rng: Mutex::new(rng),
            }),
        }
    }
}

impl<S> tower::Layer<S> for ChaosLayer {
    type Service = ChaosService<S>;

    fn layer(&self, inner: S) -> ChaosService<S> {
        ChaosService {
            inner,
            link: Some(self.link.clone()),
        }
    }
}

/// One channel's link state: shared by every clone of the service.
#[derive(Debug)]
struct Link {
    control: LinkControl,
    region: String,
    rng: Mutex<ChaCha8Rng>,
}

/// What one call drew, decided when it is made.
#[derive(Debug, Clone, Copy)]
struct Draw {
    up: LinkModel,
    up_latency: u64,
    up_lost: bool,
    down_latency: u64,
    down_lost: bool,
}

impl Link {
    /// Only listed coordinator links count: the table's default is the region↔region transfer
    /// model (a minute of latency), not the control plane's.
    fn up(&self) -> LinkModel {
        self.control
            .get_listed(COORDINATOR, &self.region)
            .unwrap_or(LinkModel::CLEAN)
    }

    fn down(&self) -> LinkModel {
        self.control
            .get_listed(&self.region, COORDINATOR)
            .unwrap_or(LinkModel::CLEAN)
    }

    fn draw(&self) -> Draw {
        let (up, down) = (self.up(), self.down());
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        Draw {
            up,
            up_latency: up.sample_latency_ms(&mut *rng),
            up_lost: up.sample_lost(&mut *rng),
            down_latency: down.sample_latency_ms(&mut *rng),
            down_lost: down.sample_lost(&mut *rng),
        }
    }

    fn failure(&self, why: &str) -> http::Response<Body> {
        let mut md = MetadataMap::new();
        md.insert(
            "x-amisim-error-code",
            MetadataValue::from_static(INJECTED_ERROR_CODE),
        );
        Status::with_metadata(
            Code::Unavailable,
            format!(
                "{INJECTED_ERROR_CODE}: chaos: {why} on the link to region '{}'",
                self.region
            ),
            md,
        )
        .into_http()
    }
}

/// A channel with link faults (or, [`ChaosService::direct`], without).
#[derive(Debug, Clone)]
pub struct ChaosService<S> {
    inner: S,
    link: Option<Arc<Link>>,
}

impl<S> ChaosService<S> {
    /// No faults: every call passes through.
    pub fn direct(inner: S) -> Self {
        ChaosService { inner, link: None }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl From<tonic::transport::Channel> for ChaosService<tonic::transport::Channel> {
    fn from(c: tonic::transport::Channel) -> Self {
        ChaosService::direct(c)
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Waits `v` ms; no wait at all for 0. (A zero `tokio::time::sleep` still waits for the
/// timer's next tick, up to 1 ms: on a clean link that was 1 ms per direction of every call
/// through the gateway and of every saga step.)
async fn delay(v: u64) {
    if v > 0 {
        tokio::time::sleep(ms(v)).await;
    }
}

impl<S, B> tower::Service<http::Request<B>> for ChaosService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(link) = self.link.clone() else {
            return Box::pin(self.inner.call(req));
        };
        // The readied service makes the call; a fresh clone takes its place (tower's pattern).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let d = link.draw();
        Box::pin(async move {
            if d.up.partitioned || d.up_lost {
                delay(d.up.timeout_ms).await;
                let why = if d.up.partitioned {
                    "partitioned"
                } else {
                    "request lost"
                };
                return Ok(link.failure(why));
            }
            delay(d.up_latency).await;
            let resp = inner.call(req).await?;
            let down = link.down();
            if down.partitioned || d.down_lost {
                delay(down.timeout_ms).await;
                let why = if down.partitioned {
                    "partitioned (answer)"
                } else {
                    "answer lost"
                };
                return Ok(link.failure(why));
            }
            delay(d.down_latency).await;
            Ok(resp.map(|body| {
                Body::new(ChaosBody {
                    inner: body,
                    link,
                    wait: None,
                    closing: None,
                    held: None,
                })
            }))
        })
    }
}

/// An answer body that stalls while the answer link is partitioned and closes slowly.
struct ChaosBody {
    inner: Body,
    link: Arc<Link>,
    /// Waiting for the answer link to heal.
    wait: Option<BoxFuture<'static, ()>>,
    /// Holding back the end of the answer (slow close).
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The trailers frame held back by a slow close (`Some(None)`: the bare end).
    held: Option<Option<Frame<Bytes>>>,
}

impl http_body::Body for ChaosBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(c) = this.closing.as_mut() {
                ready!(c.as_mut().poll(cx));
                this.closing = None;
                return Poll::Ready(this.held.take().flatten().map(Ok));
            }
            if let Some(w) = this.wait.as_mut() {
                ready!(w.as_mut().poll(cx));
                this.wait = None;
            }
            let down = this.link.down();
            if down.partitioned {
                let link = this.link.clone();
                this.wait = Some(Box::pin(async move {
                    let mut changes = link.control.changes();
                    while link.down().partitioned {
                        if changes.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                }));
                continue;
            }
            let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            let is_end = match &frame {
                None => true,
                Some(Ok(f)) => f.is_trailers(),
                Some(Err(_)) => false,
            };
            if is_end && down.slow_close_ms > 0 && this.held.is_none() {
                this.held = Some(frame.and_then(Result::ok));
                this.closing = Some(Box::pin(tokio::time::sleep(ms(down.slow_close_ms))));
                continue;
            }
            return Poll::Ready(frame);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.closing.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkTable;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::{Layer, Service, ServiceExt};

    /// A fake region: counts calls, answers 200 with a two-chunk body and OK trailers.
    #[derive(Clone, Default)]
    struct Region {
        calls: Arc<AtomicU32>,
    }

    impl Service<http::Request<()>> for Region {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await;
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"b")))).await;
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = tx.send(Ok(Frame::trailers(t))).await;
                });
                let body = http_body_util::StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                );
                Ok(http::Response::new(Body::new(body)))
            })
        }
    }

    fn grpc_status(r: &http::Response<Body>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    async fn call(svc: &mut ChaosService<Region>) -> http::Response<Body> {
        svc.ready().await.unwrap();
        svc.call(http::Request::new(())).await.unwrap()
    }

    fn setup(table: &str) -> (LinkControl, Region, ChaosService<Region>) {
        let specs = table
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap());
        let control = LinkControl::new(LinkTable::from_specs(specs).unwrap(), 7);
        let region = Region::default();
        let svc = ChaosLayer::new(control.clone(), "us-east-1").layer(region.clone());
        (control, region, svc)
    }

    #[tokio::test]
    async fn a_clean_link_passes_calls_and_bodies_through() {
        let (_, region, mut svc) = setup("");
        let r = call(&mut svc).await;
        assert_eq!(grpc_status(&r), None);
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&body.to_bytes()[..], b"ab");
        assert_eq!(region.calls.load(Ordering::SeqCst), 1);
        let mut direct = ChaosService::direct(region.clone());
        let _ = call(&mut direct).await;
        assert_eq!(region.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_partitioned_request_link_fails_unavailable_without_reaching_the_region() {
        let (control, region, mut svc) = setup("coordinator:us-east-1=0,1,partition");
        let r = call(&mut svc).await;
        assert_eq!(grpc_status(&r), Some("14"), "UNAVAILABLE");
        assert_eq!(r.headers()["x-amisim-error-code"], INJECTED_ERROR_CODE);
        assert_eq!(region.calls.load(Ordering::SeqCst), 0);
        // Healed: calls go through again.
        control.reset();
        control.clear(COORDINATOR, "us-east-1");
        let r = call(&mut svc).await;
        assert_eq!(grpc_status(&r), None);
        assert_eq!(region.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_partitioned_answer_link_loses_answers_of_calls_that_ran() {
        let (_, region, mut svc) = setup("us-east-1:coordinator=0,1,partition");
        let r = call(&mut svc).await;
        assert_eq!(grpc_status(&r), Some("14"));
        assert_eq!(region.calls.load(Ordering::SeqCst), 1, "the work was done");
    }

    #[tokio::test]
    async fn loss_fails_about_its_rate_of_calls() {
        let (_, region, mut svc) = setup("coordinator:us-east-1=0,1,loss=0.5");
        let mut failed = 0;
        for _ in 0..200 {
            if grpc_status(&call(&mut svc).await) == Some("14") {
                failed += 1;
            }
        }
        assert!((60..=140).contains(&failed), "{failed}");
        assert_eq!(region.calls.load(Ordering::SeqCst), 200 - failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_link_adds_no_wait_at_all() {
        // Not even a timer tick: with the clock paused between two ticks, any sleep (a zero one
        // too: the timer rounds its deadline up to the next millisecond) would move it.
        let (_, region, mut svc) = setup("coordinator:us-east-1=0,1 us-east-1:coordinator=0,1");
        tokio::time::advance(Duration::from_micros(500)).await;
        let t0 = tokio::time::Instant::now();
        let r = call(&mut svc).await;
        assert_eq!(grpc_status(&r), None);
        assert_eq!(region.calls.load(Ordering::SeqCst), 1);
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_timeouts_delay_calls() {
        let (_, _, mut svc) = setup("coordinator:us-east-1=300,1 us-east-1:coordinator=200,1");
        let t0 = tokio::time::Instant::now();
        let _ = call(&mut svc).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(500));

        let (_, _, mut svc) = setup("coordinator:us-east-1=0,1,partition,timeout=1000");
        let t0 = tokio::time::Instant::now();
        let r = call(&mut svc).await;
        assert_eq!(grpc_status(&r), Some("14"));
        assert_eq!(t0.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_stream_stalls_during_a_partition_and_closes_slowly() {
        let (control, _, mut svc) = setup("us-east-1:coordinator=0,1,slow_close=250");
        let r = call(&mut svc).await;
        let mut body = r.into_body();
        use http_body_util::BodyExt;
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        control
            .set(
                "us-east-1:coordinator=0,1,partition,slow_close=250"
                    .parse()
                    .unwrap(),
            )
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
        assert!(next.is_err(), "stalled while partitioned");
        control
            .set("us-east-1:coordinator=0,1,slow_close=250".parse().unwrap())
            .unwrap();
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "b");
        let t0 = tokio::time::Instant::now();
        let trailers = body.frame().await.unwrap().unwrap();
        assert!(trailers.is_trailers());
        assert_eq!(t0.elapsed(), Duration::from_millis(250));
        assert!(body.frame().await.is_none());
    }
}
