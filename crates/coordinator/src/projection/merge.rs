//! [`Merge`]: the pure core of the causal global projection — per region, the events received
//! and the state folded from those applied — with no I/O, no locks and no clock, so every rule
//! below is tested directly (unit tests and a property test over random interleavings).
//!
//! Rules (DESIGN.md §4.2, §4.3):
//!
//! - **Per region, the log order.** A region's events are offered in seq order. One already
//!   received (`seq <= received`) is a duplicate — a follower resuming after a reconnect may
//!   send it again — and is ignored. One beyond `received + 1` is a [`MergeError::Gap`]: it is
//!   refused and nothing changes, so the follower reconnects from `received + 1`.
//! - **Across regions, causality.** A received event is applied only when every
//!   `depends_on` `(region, seq)` is applied in that region's projection. Until then it waits
//!   in its region's buffer, and so does everything after it in that region (the log order is
//!   part of causality): a region's projection is always a gapless prefix of its log.
//! - **What cannot be checked is not waited for.** A dependency on a region this merge does not
//!   follow, or on the event's own region (log order already covers it), is counted as met; the
//!   first kind is counted in [`RegionView::foreign_dependencies`] so an operator sees a
//!   coordinator configured with too few regions. Waiting would freeze the region for good.
//!
//! Every region's state is the plain fold of its own log (`State::apply`, as on the region
//! node), so once everything is applied the digests do not depend on the delivery order.

use std::collections::{BTreeMap, VecDeque};

use amisim_core::State;
use amisim_proto::{Event, EventRef};

/// Why an offered event was refused. Nothing changed; the sender should resume from
/// [`Merge::received_seq`] + 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The merge does not follow this region.
    #[error("region {0:?} is not followed by this coordinator")]
    UnknownRegion(String),
    /// The event names another region than the stream it came from.
    #[error("the stream of region {expected:?} sent an event of region {found:?} (seq {seq})")]
    WrongRegion {
        expected: String,
        found: String,
        seq: u64,
    },
    /// The event is not the next one of its region's log.
    #[error("gap in the log of {region}: expected seq {expected}, got {found}")]
    Gap {
        region: String,
        expected: u64,
        found: u64,
    },
}

/// What happened to an offered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It is the next event of its region: buffered, applied by the next
    /// [`Merge::apply_ready`] once its dependencies are.
    Accepted,
    /// Already received (a re-send after a reconnect): ignored.
    Duplicate,
}

/// One region's part of the merge.
#[derive(Debug, Clone, Default)]
struct RegionLog {
    /// The fold of events `1..=state.seq`.
    state: State,
    /// Received, not yet applied, in log order (seqs `state.seq + 1 ..`).
    pending: VecDeque<Event>,
    /// Dependencies on regions the merge does not follow, counted as met.
    foreign_dependencies: u64,
}

impl RegionLog {
    fn received_seq(&self) -> u64 {
        self.state.seq + self.pending.len() as u64
    }
}

/// A read-only view of one region's merge state.
#[derive(Debug, Clone, Copy)]
pub struct RegionView<'a> {
    /// The projection: the fold of events `1..=applied_seq`.
    pub state: &'a State,
    /// Events `1..=applied_seq` are applied.
    pub applied_seq: u64,
    /// Events up to this seq have been received (applied or buffered).
    pub received_seq: u64,
    /// Received events waiting for a dependency.
    pub buffered: usize,
    /// Dependencies on regions this merge does not follow, counted as met so far.
    pub foreign_dependencies: u64,
}

/// The causal merge of several regions' logs.
#[derive(Debug, Clone, Default)]
pub struct Merge {
    regions: BTreeMap<String, RegionLog>,
}

impl Merge {
    /// A merge following `regions`, each starting from an empty log.
    pub fn new<I, S>(regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Merge {
            regions: regions
                .into_iter()
                .map(|r| (r.into(), RegionLog::default()))
                .collect(),
        }
    }

    /// The followed regions, sorted.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    pub fn follows(&self, region: &str) -> bool {
        self.regions.contains_key(region)
    }

    /// One region's state, or `None` if it is not followed.
    pub fn view(&self, region: &str) -> Option<RegionView<'_>> {
        self.regions.get(region).map(|r| RegionView {
            state: &r.state,
            applied_seq: r.state.seq,
            received_seq: r.received_seq(),
            buffered: r.pending.len(),
            foreign_dependencies: r.foreign_dependencies,
        })
    }

    /// Seq of the last applied event of `region` (0 if none or not followed).
    pub fn applied_seq(&self, region: &str) -> u64 {
        self.regions.get(region).map_or(0, |r| r.state.seq)
    }

    /// Seq of the last received event of `region` (0 if none or not followed): a follower
    /// resumes its stream at this + 1.
    pub fn received_seq(&self, region: &str) -> u64 {
        self.regions.get(region).map_or(0, RegionLog::received_seq)
    }

    /// The projection of `region`.
    pub fn state(&self, region: &str) -> Option<&State> {
        self.regions.get(region).map(|r| &r.state)
    }

    /// When `region`'s first buffered event waits, the first dependency it waits for.
    pub fn blocked_on(&self, region: &str) -> Option<EventRef> {
        let first = self.regions.get(region)?.pending.front()?;
        self.unmet(region, first).cloned()
    }

    /// Receives the next event of `region`'s log (see the module doc for duplicates and gaps).
    /// Does not apply it: call [`Merge::apply_ready`].
    pub fn offer(&mut self, region: &str, event: Event) -> Result<Offer, MergeError> {
        let log = self
            .regions
            .get_mut(region)
            .ok_or_else(|| MergeError::UnknownRegion(region.to_string()))?;
        if event.region != region {
            return Err(MergeError::WrongRegion {
                expected: region.to_string(),
                found: event.region,
                seq: event.seq,
            });
        }
        let received = log.received_seq();
        if event.seq <= received {
            return Ok(Offer::Duplicate);
        }
        if event.seq != received + 1 {
            return Err(MergeError::Gap {
                region: region.to_string(),
                expected: received + 1,
                found: event.seq,
            });
        }
        log.pending.push_back(event);
        Ok(Offer::Accepted)
    }

    /// Applies every buffered event whose dependencies are applied, repeatedly, until none is
    /// left that can be (an event applied in one region may release events in another).
    /// Returns how many were applied.
    pub fn apply_ready(&mut self) -> usize {
        self.apply_ready_with(|_, _| {})
    }

    /// As [`Merge::apply_ready`], calling `on_apply(region, event)` after each event is applied,
    /// in application order (a causal order of all regions' events).
    pub fn apply_ready_with(&mut self, mut on_apply: impl FnMut(&str, &Event)) -> usize {
        let names: Vec<String> = self.regions.keys().cloned().collect();
        let mut total = 0;
        loop {
            let mut progress = 0;
            for name in &names {
                loop {
                    let ready = match self.regions.get(name).and_then(|r| r.pending.front()) {
                        Some(front) => self.unmet(name, front).is_none(),
                        None => false,
                    };
                    if !ready {
                        break;
                    }
                    let foreign = self.foreign_count(name);
                    let Some(log) = self.regions.get_mut(name) else {
                        break;
                    };
                    let Some(event) = log.pending.pop_front() else {
                        break;
                    };
                    log.foreign_dependencies += foreign;
                    log.state.apply(&event);
                    on_apply(name, &event);
                    progress += 1;
                }
            }
            if progress == 0 {
                return total;
            }
            total += progress;
        }
    }

    /// The first dependency of `event` (of `region`'s log) not applied yet.
    fn unmet<'e>(&self, region: &str, event: &'e Event) -> Option<&'e EventRef> {
        event.depends_on.iter().find(|d| {
            d.region != region
                && self
                    .regions
                    .get(&d.region)
                    .is_some_and(|other| other.state.seq < d.seq)
        })
    }

    /// How many dependencies of `region`'s next buffered event name unfollowed regions.
    fn foreign_count(&self, region: &str) -> u64 {
        let Some(front) = self.regions.get(region).and_then(|r| r.pending.front()) else {
            return 0;
        };
        front
            .depends_on
            .iter()
            .filter(|d| d.region != region && !self.regions.contains_key(&d.region))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::event::Payload;
    use amisim_proto::VolumeCreated;

    fn ev(region: &str, seq: u64, deps: &[(&str, u64)]) -> Event {
        Event {
            seq,
            region: region.into(),
            event_id: format!("{region}-{seq}"),
            sim_time_ms: seq,
            depends_on: deps
                .iter()
                .map(|(r, s)| EventRef {
                    region: (*r).into(),
                    seq: *s,
                })
                .collect(),
            payload: Some(Payload::VolumeCreated(VolumeCreated {
                volume_id: format!("vol-{seq:017x}"),
                owner_id: "111122223333".into(),
                size: 1,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    // given a merge of us and eu
    fn merge() -> Merge {
        Merge::new(["us", "eu"])
    }

    #[test]
    fn independent_events_apply_in_log_order() {
        let mut m = merge();
        assert_eq!(m.offer("us", ev("us", 1, &[])), Ok(Offer::Accepted));
        assert_eq!(m.offer("us", ev("us", 2, &[])), Ok(Offer::Accepted));
        assert_eq!(m.apply_ready(), 2);
        assert_eq!(m.applied_seq("us"), 2);
        assert_eq!(m.state("us").map(|s| s.volumes.len()), Some(2));
    }

    #[test]
    fn an_event_waits_for_its_dependency_and_blocks_its_region() {
        let mut m = merge();
        // when eu's copy result arrives before its source in us
        m.offer("eu", ev("eu", 1, &[("us", 1)])).unwrap();
        m.offer("eu", ev("eu", 2, &[])).unwrap();
        // then nothing of eu applies, and the status says why
        assert_eq!(m.apply_ready(), 0);
        assert_eq!(m.applied_seq("eu"), 0);
        assert_eq!(m.received_seq("eu"), 2);
        assert_eq!(
            m.blocked_on("eu"),
            Some(EventRef {
                region: "us".into(),
                seq: 1
            })
        );
        // when the source arrives, both regions catch up, source first
        m.offer("us", ev("us", 1, &[])).unwrap();
        let mut order = Vec::new();
        assert_eq!(
            m.apply_ready_with(|r, e| order.push((r.to_string(), e.seq))),
            3
        );
        assert_eq!(
            order,
            [("us".into(), 1), ("eu".into(), 1), ("eu".into(), 2)]
                .map(|(r, s): (String, u64)| (r, s))
        );
        assert_eq!(m.blocked_on("eu"), None);
    }

    #[test]
    fn chains_across_regions_resolve_in_one_call() {
        let mut m = Merge::new(["a", "b", "c"]);
        m.offer("c", ev("c", 1, &[("b", 1)])).unwrap();
        m.offer("b", ev("b", 1, &[("a", 1)])).unwrap();
        assert_eq!(m.apply_ready(), 0);
        m.offer("a", ev("a", 1, &[])).unwrap();
        assert_eq!(m.apply_ready(), 3);
    }

    #[test]
    fn duplicates_are_ignored_and_gaps_refused() {
        let mut m = merge();
        m.offer("us", ev("us", 1, &[])).unwrap();
        m.apply_ready();
        // a resumed stream sends 1 again: ignored
        assert_eq!(m.offer("us", ev("us", 1, &[])), Ok(Offer::Duplicate));
        // a buffered (received, not applied) event counts as received
        m.offer("eu", ev("eu", 1, &[("us", 5)])).unwrap();
        assert_eq!(m.offer("eu", ev("eu", 1, &[])), Ok(Offer::Duplicate));
        // a gap changes nothing
        let before = m.state("us").cloned();
        assert_eq!(
            m.offer("us", ev("us", 3, &[])),
            Err(MergeError::Gap {
                region: "us".into(),
                expected: 2,
                found: 3
            })
        );
        assert_eq!(m.state("us").cloned(), before);
        assert_eq!(m.received_seq("us"), 1);
    }

    #[test]
    fn wrong_and_unknown_regions_are_refused() {
        let mut m = merge();
        assert!(matches!(
            m.offer("us", ev("eu", 1, &[])),
            Err(MergeError::WrongRegion { .. })
        ));
        assert!(matches!(
            m.offer("ap", ev("ap", 1, &[])),
            Err(MergeError::UnknownRegion(_))
        ));
        assert_eq!(m.received_seq("us"), 0);
    }

    #[test]
    fn unfollowed_and_own_region_dependencies_do_not_block() {
        let mut m = merge();
        m.offer("us", ev("us", 1, &[("ap", 9), ("us", 1)])).unwrap();
        assert_eq!(m.apply_ready(), 1);
        assert_eq!(m.view("us").map(|v| v.foreign_dependencies), Some(1));
    }

    #[test]
    fn the_state_is_the_plain_fold_of_the_log() {
        let events = [
            ev("us", 1, &[]),
            ev("us", 2, &[("eu", 1)]),
            ev("us", 3, &[]),
        ];
        let mut fold = State::new();
        for e in &events {
            fold.apply(e);
        }
        let mut m = merge();
        for e in events {
            m.offer("us", e).unwrap();
        }
        m.offer("eu", ev("eu", 1, &[])).unwrap();
        m.apply_ready();
        assert_eq!(m.state("us").map(State::digest), Some(fold.digest()));
    }
}
