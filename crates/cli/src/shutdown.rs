//! Graceful shutdown: one trigger, any number of server futures waiting on it.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// A shutdown switch. [`Shutdown::signal`] gives the `shutdown` future the servers take.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }

    /// Completes once [`Shutdown::trigger`] was called (at once if it already was).
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// Ctrl-C (SIGINT) or SIGTERM, as a future that says which. The handlers are installed when
/// this is called, not when the future is first polled: call it before printing `listening
/// on`, so a caller that signals as soon as it reads that line gets a clean shutdown rather
/// than the default action (death by SIGTERM, a failed exit status).
pub fn os_signal() -> Pin<Box<dyn Future<Output = &'static str> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => "Ctrl-C",
                    _ = term.recv() => "SIGTERM",
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}
