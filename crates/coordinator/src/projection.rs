//! The causal global projection (DESIGN.md §1, §4): every followed region's state, folded from
//! that region's log, merged so that no event shows before the events it depends on.
//!
//! Layout:
//!
//! - [`merge`] — [`Merge`], the pure rules (per-region order, duplicates, gaps, causal
//!   buffering). No I/O and no locks, so it is tested on its own, including a property test
//!   over random interleavings.
//! - [`token`] — [`ConsistencyToken`], the `region:seq,…` point a reader may ask for.
//! - this module — [`Projection`], the shared, concurrent face of the merge.
//!
//! Why it is built this way:
//!
//! - **Writers lock, readers do not.** Followers hand over batches of events
//!   ([`Projection::ingest`]); under a short mutex the merge takes them and applies what is
//!   ready, then an immutable [`ProjectionSnapshot`] (all regions' states plus their applied
//!   seqs) is published with one atomic pointer swap (`ArcSwap`). Readers load the current
//!   snapshot in O(1) and never wait for a follower; states are persistent maps, so a snapshot
//!   costs a few reference counts, not a copy.
//! - **Reading at a point.** Every publication bumps a `watch` generation; [`Projection::wait_for`]
//!   re-checks the latest snapshot on each bump until it reaches a [`ConsistencyToken`] or the
//!   deadline passes. A write acknowledged by a region with token `r:s` is visible to a global
//!   read passing that token as soon as the coordinator has applied `r` up to `s` — which, by
//!   causality, also implies everything that write depended on.
//! - **Nothing to persist.** The projection starts empty and the followers replay each log from
//!   seq 1 (DESIGN.md §1: the coordinator has no state a replay cannot rebuild).

pub mod merge;
pub mod token;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amisim_core::State;
use amisim_proto::{Event, EventRef};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

pub use merge::{Merge, MergeError, Offer};
pub use token::{ConsistencyToken, TokenError};

/// One region in a [`ProjectionSnapshot`].
#[derive(Debug, Clone)]
pub struct RegionSnapshot {
    /// The fold of the region's events `1..=applied_seq` (`state.seq == applied_seq`).
    pub state: State,
    /// Events `1..=applied_seq` of the region's log are applied.
    pub applied_seq: u64,
    /// Events up to this seq are received (applied or buffered).
    pub received_seq: u64,
    /// Received events held back until an event they depend on is applied.
    pub buffered: usize,
    /// The dependency the first held-back event waits for.
    pub blocked_on: Option<EventRef>,
    /// Dependencies on regions this coordinator does not follow (not waited for).
    pub foreign_dependencies: u64,
}

/// An immutable view of the whole projection at one moment: what reads are answered from.
#[derive(Debug, Clone, Default)]
pub struct ProjectionSnapshot {
    regions: BTreeMap<String, RegionSnapshot>,
    generation: u64,
}

impl ProjectionSnapshot {
    /// The followed regions with their state, sorted by name.
    pub fn regions(&self) -> impl Iterator<Item = (&str, &RegionSnapshot)> {
        self.regions.iter().map(|(r, s)| (r.as_str(), s))
    }

    /// One region (`None` if it is not followed).
    pub fn region(&self, region: &str) -> Option<&RegionSnapshot> {
        self.regions.get(region)
    }

    /// How many snapshots were published before this one (0: the initial, empty one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The point this snapshot reflects: every region with its applied seq.
    pub fn applied(&self) -> ConsistencyToken {
        self.regions
            .iter()
            .map(|(r, s)| (r.as_str(), s.applied_seq))
            .collect()
    }

    /// True if every region named by `token` is applied at least up to its seq. A region this
    /// snapshot does not hold never satisfies a non-zero requirement.
    pub fn satisfies(&self, token: &ConsistencyToken) -> bool {
        token
            .iter()
            .all(|(r, seq)| seq == 0 || self.regions.get(r).is_some_and(|s| s.applied_seq >= seq))
    }
}

/// What one [`Projection::ingest`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Events taken as the next of their region's log.
    pub accepted: usize,
    /// Events already received before (ignored).
    pub duplicates: usize,
    /// Events applied by this call, in any region (a dependency arriving releases others).
    pub applied: usize,
}

/// Why a wait for a consistency token ended without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The token names a region the projection does not follow: it would never be reached.
    #[error("the consistency token names region {region:?}, which this coordinator does not follow (it follows: {followed})")]
    UnknownRegion {
        /// The unknown region.
        region: String,
        /// The followed regions, comma-separated.
        followed: String,
    },
    /// The deadline passed first.
    #[error("the global projection did not reach consistency token {wanted} within {waited:?}; applied so far: {applied}")]
    Deadline {
        /// The token waited for.
        wanted: ConsistencyToken,
        /// What the projection had applied at the deadline.
        applied: ConsistencyToken,
        /// How long the call waited.
        waited: Duration,
    },
}

/// The global projection, shared by the followers (writing) and the services (reading).
pub struct Projection {
    merge: Mutex<Merge>,
    published: ArcSwap<ProjectionSnapshot>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("applied", &self.snapshot().applied().to_string())
            .finish()
    }
}

impl Projection {
    /// An empty projection of `regions` (each log starts at seq 1).
    pub fn new<I, S>(regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let merge = Merge::new(regions);
        let first = snapshot_of(&merge, 0);
        Projection {
            merge: Mutex::new(merge),
            published: ArcSwap::from_pointee(first),
            generation: watch::channel(0).0,
        }
    }

    /// The followed regions, sorted.
    pub fn regions(&self) -> Vec<String> {
        self.snapshot().regions.keys().cloned().collect()
    }

    /// True if `region` is followed.
    pub fn follows(&self, region: &str) -> bool {
        self.snapshot().regions.contains_key(region)
    }

    /// The latest published snapshot. O(1); never waits for a follower.
    pub fn snapshot(&self) -> Arc<ProjectionSnapshot> {
        self.published.load_full()
    }

    /// Seq of the last applied event of `region` (0 if none or not followed).
    pub fn applied_seq(&self, region: &str) -> u64 {
        self.snapshot().region(region).map_or(0, |r| r.applied_seq)
    }

    /// Seq of the last received event of `region`: a follower resumes its stream after it.
    pub fn received_seq(&self, region: &str) -> u64 {
        self.snapshot().region(region).map_or(0, |r| r.received_seq)
    }

    /// Notified (the generation) after every publication.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Takes a batch of `region`'s events in log order, applies everything that became
    /// applicable (in any region) and publishes a new snapshot.
    ///
    /// On a [`MergeError`] (a gap, another region's event) the events before the bad one are
    /// kept, the rest of the batch is dropped and the error returned: the caller resumes its
    /// stream from [`Projection::received_seq`] + 1.
    pub fn ingest(
        &self,
        region: &str,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<Ingested, MergeError> {
        let mut done = Ingested::default();
        let mut merge = self.merge.lock().unwrap_or_else(PoisonError::into_inner);
        let mut failure = None;
        for event in events {
            match merge.offer(region, event) {
                Ok(Offer::Accepted) => done.accepted += 1,
                Ok(Offer::Duplicate) => done.duplicates += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        done.applied = merge.apply_ready();
        if done.accepted > 0 {
            let generation = self.published.load().generation + 1;
            self.published
                .store(Arc::new(snapshot_of(&merge, generation)));
            drop(merge);
            self.generation.send_replace(generation);
        }
        if done.accepted > 0 || failure.is_some() {
            tracing::debug!(
                region,
                accepted = done.accepted,
                duplicates = done.duplicates,
                applied = done.applied,
                failure = failure.as_ref().map(tracing::field::display),
                "ingested"
            );
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Resolves with a snapshot that satisfies `token` as soon as one is published, or fails
    /// when `deadline` passes first, or at once if the token names a region not followed.
    pub async fn wait_for(
        &self,
        token: &ConsistencyToken,
        deadline: Instant,
    ) -> Result<Arc<ProjectionSnapshot>, WaitError> {
        let started = Instant::now();
        // Subscribe before looking, so a publication between the look and the wait is seen.
        let mut changes = self.generation.subscribe();
        let first = self.snapshot();
        if let Some((region, _)) = token.iter().find(|(r, _)| first.region(r).is_none()) {
            return Err(WaitError::UnknownRegion {
                region: region.to_string(),
                followed: first.regions.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        loop {
            let snap = self.snapshot();
            if snap.satisfies(token) {
                return Ok(snap);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`, so this cannot end; treat it as the
                // deadline rather than spin.
                Ok(Err(_)) | Err(_) => {
                    return Err(WaitError::Deadline {
                        wanted: token.clone(),
                        applied: self.snapshot().applied(),
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }
}

/// The immutable view of `merge`.
fn snapshot_of(merge: &Merge, generation: u64) -> ProjectionSnapshot {
    let regions = merge
        .regions()
        .filter_map(|r| {
            let v = merge.view(r)?;
            Some((
                r.to_string(),
                RegionSnapshot {
                    state: v.state.clone(),
                    applied_seq: v.applied_seq,
                    received_seq: v.received_seq,
                    buffered: v.buffered,
                    blocked_on: merge.blocked_on(r),
                    foreign_dependencies: v.foreign_dependencies,
                },
            ))
        })
        .collect();
    ProjectionSnapshot {
        regions,
        generation,
    }
}

#[cfg(test)]
mod tests;
