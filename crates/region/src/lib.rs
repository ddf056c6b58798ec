//! A region node (DESIGN.md §1): owns one region's event log and in-memory state, decides every
//! write there, fires the region's timed transitions, and serves the public `Ec2` and `Kms` and
//! the internal `Region` gRPC services.
//!
//! # Why it is built this way
//!
//! - **One writer.** Every command goes through one thread ([`writer`]) that decides it against
//!   the state ([`amisim_core::decide`]), so rules such as "image names are unique" need no
//!   locks and the log order is the decision order.
//! - **Group commit.** The writer takes every command queued since its last round (up to
//!   [`RegionConfig::max_batch`]), decides them in order, and appends all their events with
//!   one [`EventLog::append`] — one flush for many requests, so throughput grows with load.
//! - **Publish before answering.** After the append, the new state is published (an O(1)
//!   `ArcSwap` of the persistent [`amisim_core::State`]) and only then are the commands
//!   answered. A client that got an answer reads its own write; readers never wait for a flush
//!   and never see an event that is not durable.
//! - **Timers from the state.** Due times live in events, so after a replay the writer knows
//!   every pending transition and fires `Tick` when the [`Clock`](amisim_chaos::Clock) reaches
//!   the earliest one.
//! - **Fail-stop.** A failed append stops the writer for good (the request gets
//!   `InternalError`, later writes `Unavailable`); a restart replays the log, which is the
//!   truth.
//!
//! # Layout
//!
//! - [`audit`] — the `Audit` service: log verification, signed digests, filtered streams,
//!   point-in-time reads.
//! - [`config`] — [`RegionConfig`], [`StorageConfig`] (sled cache, checkpoints).
//! - [`checkpoint`] — projection checkpoints: a restart folds only the log's tail.
//! - [`node`] — [`RegionNode`]: replay at start, `execute` (writes), `query` (reads), shutdown.
//! - [`writer`] — the writer loop: batch, decide, append, publish, answer; timers.
//! - [`ec2_service`] — the `Ec2` service, metadata conventions and [`status_from_ec2`].
//! - [`kms_service`] — the `Kms` service (the region's KMS keys), on the same conventions.
//! - [`region_service`] — the `Region` service (info, event stream, state digest).
//! - [`internal_auth`] — with an accounts file, `Region` and `Audit` take only the operator
//!   token (ADR 0009).
//! - [`server`] — [`serve`] on a caller-bound listener with health and reflection.
//! - [`error`] — [`RegionError`].
//!
//! [`EventLog::append`]: amisim_log::EventLog::append

pub mod affinity;
pub mod audit;
pub mod checkpoint;
pub mod config;
pub mod ec2_service;
pub mod error;
pub mod internal_auth;
pub mod kms_service;
pub mod node;
pub mod region_service;
pub mod server;
pub mod writer;

pub use config::{RegionConfig, StorageConfig, CHECKPOINT_DIR};
pub use ec2_service::{
    account_from_metadata, authenticate, consistency_token, parse_consistency_token,
    request_id_from_metadata, status_from_ec2, Ec2Service, ACCOUNT_KEY, AUTHORIZATION_KEY,
    CONSISTENCY_TOKEN_KEY, DEFAULT_ACCOUNT, ERROR_CODE_KEY, REQUEST_ID_KEY,
};
pub use error::RegionError;
pub use internal_auth::{check_operator, OperatorCheck};
pub use kms_service::KmsService;
pub use node::{replay, replay_to, restore, RegionNode};
pub use region_service::RegionService;
pub use server::{serve, MAX_MESSAGE_BYTES};
pub use writer::{NodeStatus, WriterStatsSnapshot};

/// Starts one of a node's own threads (writer, commit thread, request recorder, checkpointer)
/// named `name`. It first takes back every CPU of the process
/// ([`affinity::unpin_this_thread`]): a thread inherits the CPUs of the thread that starts it,
/// usually a runtime thread, which may be pinned (ADR 0014).
pub(crate) fn spawn_node_thread<T: Send + 'static>(
    name: String,
    run: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new().name(name).spawn(move || {
        affinity::unpin_this_thread();
        run()
    })
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux; elsewhere nothing), for
/// background threads whose work no caller waits for (checkpoints, request records): on a
/// 2-core machine they otherwise take CPU from the request path at the worst moments.
pub(crate) fn lower_thread_priority(nice: i32, what: &str) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority(2) takes plain integers; on Linux `who = 0` with PRIO_PROCESS is
        // the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc != 0 {
            tracing::debug!(thread = what, error = %std::io::Error::last_os_error(),
                "cannot lower the thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (nice, what);
}

#[cfg(all(test, target_os = "linux"))]
mod priority_tests {
    #[test]
    fn a_background_thread_runs_niced_and_the_caller_does_not() {
        // SAFETY (both calls): getpriority(2) takes plain integers; `who = 0` is this thread.
        let caller_before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let niced = std::thread::spawn(|| {
            let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            super::lower_thread_priority(7, "test");
            (before, unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) })
        })
        .join()
        .expect("thread");
        if niced.0 <= 7 {
            // Raising a nice value needs no privilege.
            assert_eq!(niced.1, 7, "{niced:?}");
        } else {
            // Lowering one needs CAP_SYS_NICE: either outcome is fine.
            assert!(niced.1 == 7 || niced.1 == niced.0, "{niced:?}");
        }
        assert_eq!(
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
            caller_before,
            "only the calling thread changes"
        );
    }
}
