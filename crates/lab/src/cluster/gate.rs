//! [`Gate`]: the public face of one in-process node — a loopback listener that the node's
//! callers connect to, forwarding each connection to wherever the node serves now.
//!
//! Why a forwarder rather than serving on the public listener directly: a paused node must
//! hold its callers (requests and open streams wait, nothing is refused), which needs something
//! between the socket and the server that can stop passing bytes; a killed node must drop every
//! connection at once (tonic's own shutdown is graceful); and the port must stay the node's
//! across a restart, so the coordinator's channels and followers reconnect to the same address
//! (held for the cluster's life, no other program can take it while the node is down).
//!
//! - **open**: every byte is copied both ways to the node's current (inner) address;
//! - **paused**: bytes already read wait, new connections wait; nothing is closed;
//! - **down**: every connection is dropped at once (its generation ends) and new ones are
//!   accepted and closed, as a port nobody serves (the caller sees the connection reset).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes copied per read.
const BUF: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open(SocketAddr),
    Paused,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// Bumped at every kill: connections of an older generation end.
    generation: u64,
}

/// The forwarder of one node (see the module docs). Dropping it stops accepting; connections
/// already open end when the gate's state sender goes.
#[derive(Debug)]
pub(crate) struct Gate {
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
}

impl Gate {
    /// Serves `listener`, down until [`Gate::open`].
    pub(crate) fn new(listener: TcpListener) -> std::io::Result<Gate> {
        let (state, _) = watch::channel(State {
            mode: Mode::Down,
            generation: 0,
        });
        let rx = state.subscribe();
        let accept = tokio::spawn(accept_loop(listener, rx));
        Ok(Gate { state, accept })
    }

    /// Forwards to `inner` from now on (resumes held connections if it is the same node).
    pub(crate) fn open(&self, inner: SocketAddr) {
        self.state.send_modify(|s| s.mode = Mode::Open(inner));
    }

    /// Holds every connection.
    pub(crate) fn pause(&self) {
        self.state.send_modify(|s| s.mode = Mode::Paused);
    }

    /// Drops every connection; refuses new ones until [`Gate::open`].
    pub(crate) fn down(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Down;
            s.generation = s.generation.wrapping_add(1);
        });
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: watch::Receiver<State>) {
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                tokio::spawn(forward(socket, state.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "gate: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One caller's connection, for as long as its generation lives.
async fn forward(socket: TcpStream, mut state: watch::Receiver<State>) {
    // Wait for the node to be up (held while paused); a down node closes the connection.
    let (inner, generation) = loop {
        let s = *state.borrow_and_update();
        match s.mode {
            Mode::Open(a) => break (a, s.generation),
            Mode::Down => return,
            Mode::Paused => {
                if state.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let Ok(upstream) = TcpStream::connect(inner).await else {
        return;
    };
    let _ = socket.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = socket.into_split();
    let (ur, uw) = upstream.into_split();
    let both = async {
        tokio::join!(
            pump(cr, uw, state.clone(), generation),
            pump(ur, cw, state.clone(), generation)
        )
    };
    tokio::select! {
        _ = both => {}
        _ = ended(state.clone(), generation) => {}
    }
}

/// Copies one direction; waits while paused; stops when the generation ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if !passable(&mut state, generation).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// True once bytes may pass; false if the generation ended.
async fn passable(state: &mut watch::Receiver<State>, generation: u64) -> bool {
    loop {
        let s = *state.borrow_and_update();
        if s.generation != generation {
            return false;
        }
        match s.mode {
            Mode::Open(_) => return true,
            Mode::Down => return false,
            Mode::Paused => {
                if state.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Completes when the generation ends (a kill, or the gate dropped).
async fn ended(mut state: watch::Receiver<State>, generation: u64) {
    loop {
        {
            let s = *state.borrow_and_update();
            if s.generation != generation || s.mode == Mode::Down {
                return;
            }
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn forwards_holds_while_paused_and_drops_when_down() {
        let inner = echo_server().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public = listener.local_addr().unwrap();
        let gate = Gate::new(listener).unwrap();
        gate.open(inner);
        let mut c = TcpStream::connect(public).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Paused: the bytes are held, not refused.
        gate.pause();
        c.write_all(b"held").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut buf)).await;
        assert!(r.is_err(), "a paused gate answered");
        gate.open(inner);
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("resumed")
            .unwrap();
        assert_eq!(&buf, b"held");

        // Down: the connection ends; new ones are closed at once.
        gate.down();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let mut d = TcpStream::connect(public).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), d.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
