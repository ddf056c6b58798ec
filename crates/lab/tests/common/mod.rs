//! Helpers shared by the cluster tests (`cluster.rs`, `cluster_processes.rs`).

use std::time::{Duration, Instant};

use tonic::Request;

/// `msg` addressed to `region` (the `x-amisim-region` header).
pub fn req<T>(msg: T, region: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-amisim-region", region.parse().expect("ascii"));
    r
}

/// Polling at a fixed interval.
pub struct Poll(pub Duration);

impl Poll {
    /// Polls `check` until it returns `Some`, or panics after `limit`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            tokio::time::sleep(self.0).await;
        }
    }
}
