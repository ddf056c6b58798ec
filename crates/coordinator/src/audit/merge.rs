//! [`StreamMerge`]: the pure core of the coordinator's merged `Audit.StreamEvents` — every
//! region's event stream in, one causal order out. No I/O and no clock, so the rules are tested
//! directly.
//!
//! Rules:
//!
//! - **Per region, the log order.** Each region's events arrive in seq order from its start seq
//!   (a duplicate is ignored, a gap refused), and leave in that order.
//! - **Across regions, causality.** An event leaves only when every `depends_on` `(region, seq)`
//!   it names is met: the dependency's region is this event's own (log order covers it), or a
//!   region the merge does not stream (not waited for: it would never come), or a seq before
//!   that region's start (the stream began after it), or already emitted.
//! - **Ties, deterministically.** Among the heads that may leave, the smallest
//!   `(sim_time_ms, region, seq)` goes first. While a region is catching up (it has not yet
//!   delivered the events up to its head at open) and nothing of it is buffered, the merge waits
//!   for it rather than guess, so the catch-up part of a stream is the same on every run.
//! - **Without `follow`**, each region ends after its head at open (`until`); when an event
//!   depends on a later event of another region, that region's `until` grows to cover it (the
//!   dependency exists: it was durable before the event that names it), so the stream is closed
//!   under causality and still ends.

use std::collections::{BTreeMap, VecDeque};

use amisim_proto::Event;

/// Why an offered event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamMergeError {
    #[error("region {0:?} is not part of this stream")]
    UnknownRegion(String),
    #[error("the stream of {region} skipped from seq {expected} to {found}")]
    Gap {
        region: String,
        expected: u64,
        found: u64,
    },
}

/// What the merge can do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// This event leaves now.
    Emit(Box<Event>),
    /// More input is needed first (from any region that [`StreamMerge::wants`] it).
    NeedInput,
    /// Without `follow`: every region reached its end and everything left.
    Done,
}

/// One region's lane.
#[derive(Debug, Clone)]
struct Lane {
    /// The first seq of the region's stream: dependencies before it are met.
    start: u64,
    /// The last seq that left (start − 1 before any).
    emitted: u64,
    /// The last seq received (start − 1 before any).
    received: u64,
    /// The head when the stream opened: up to it the region is catching up.
    catch_up: u64,
    /// Without follow: the last seq to deliver (grows with dependencies).
    until: Option<u64>,
    buffer: VecDeque<Event>,
}

impl Lane {
    /// The seq up to which an empty buffer makes the merge wait for this region.
    fn must_reach(&self) -> u64 {
        match self.until {
            Some(u) => u,
            None => self.catch_up,
        }
    }
}

/// The causal merge of several regions' event streams.
#[derive(Debug, Clone)]
pub struct StreamMerge {
    lanes: BTreeMap<String, Lane>,
    follow: bool,
    /// A region stops being read while this many of its events wait.
    max_buffered: usize,
}

impl StreamMerge {
    /// A merge of `lanes`: (region, first seq of its stream, its head when the stream opened).
    /// Without `follow` each region ends after that head (plus what others depend on).
    pub fn new(lanes: impl IntoIterator<Item = (String, u64, u64)>, follow: bool) -> Self {
        let lanes = lanes
            .into_iter()
            .map(|(region, start, head)| {
                let start = start.max(1);
                let lane = Lane {
                    start,
                    emitted: start - 1,
                    received: start - 1,
                    catch_up: head,
                    until: (!follow).then_some(head),
                    buffer: VecDeque::new(),
                };
                (region, lane)
            })
            .collect();
        StreamMerge {
            lanes,
            follow,
            max_buffered: 100_000,
        }
    }

    /// At most `n` events of a region wait before its stream is paused (default 100,000).
    pub fn with_max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n.max(1);
        self
    }

    /// The regions, sorted.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.lanes.keys().map(String::as_str)
    }

    /// The next seq a resumed stream of `region` should start at (after the last emitted).
    pub fn resume_seq(&self, region: &str) -> u64 {
        self.lanes.get(region).map_or(1, |l| l.emitted + 1)
    }

    /// True if the merge takes more events of `region` now: it has room, and (without follow)
    /// the region has not reached its end.
    pub fn wants(&self, region: &str) -> bool {
        self.lanes.get(region).is_some_and(|l| {
            l.buffer.len() < self.max_buffered && l.until.is_none_or(|u| l.received < u)
        })
    }

    /// Takes the next event of `region`'s stream.
    pub fn offer(&mut self, region: &str, event: Event) -> Result<(), StreamMergeError> {
        let lane = self
            .lanes
            .get_mut(region)
            .ok_or_else(|| StreamMergeError::UnknownRegion(region.to_string()))?;
        if event.seq <= lane.received {
            return Ok(());
        }
        if event.seq != lane.received + 1 {
            return Err(StreamMergeError::Gap {
                region: region.to_string(),
                expected: lane.received + 1,
                found: event.seq,
            });
        }
        lane.received = event.seq;
        lane.buffer.push_back(event);
        Ok(())
    }

    /// True if `(dep_region, seq)` no longer holds back an event of `region`.
    fn met(&self, region: &str, dep_region: &str, seq: u64) -> bool {
        if dep_region == region {
            return true;
        }
        match self.lanes.get(dep_region) {
            None => true,
            Some(l) => seq < l.start || l.emitted >= seq,
        }
    }

    /// Decides what happens next (see the module docs): an event to emit, a wait, or the end.
    pub fn step(&mut self) -> Next {
        // Without follow, a head that needs a later event of another region extends that
        // region's end to cover it.
        if !self.follow {
            let mut grow: Vec<(String, u64)> = Vec::new();
            for (region, lane) in &self.lanes {
                let Some(head) = lane.buffer.front() else {
                    continue;
                };
                for d in &head.depends_on {
                    if d.region != *region {
                        if let Some(other) = self.lanes.get(&d.region) {
                            if other.until.is_some_and(|u| u < d.seq) && d.seq >= other.start {
                                grow.push((d.region.clone(), d.seq));
                            }
                        }
                    }
                }
            }
            for (region, seq) in grow {
                if let Some(l) = self.lanes.get_mut(&region) {
                    l.until = Some(l.until.map_or(seq, |u| u.max(seq)));
                }
            }
        }
        // A region still short of what it must deliver, with nothing buffered: wait for it.
        if self
            .lanes
            .values()
            .any(|l| l.buffer.is_empty() && l.received < l.must_reach())
        {
            return Next::NeedInput;
        }
        let mut best: Option<(u64, &str, u64)> = None;
        for (region, lane) in &self.lanes {
            let Some(head) = lane.buffer.front() else {
                continue;
            };
            if !head
                .depends_on
                .iter()
                .all(|d| self.met(region, &d.region, d.seq))
            {
                continue;
            }
            let key = (head.sim_time_ms, region.as_str(), head.seq);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        if let Some((_, region, _)) = best {
            let region = region.to_string();
            if let Some(lane) = self.lanes.get_mut(&region) {
                if let Some(event) = lane.buffer.pop_front() {
                    lane.emitted = event.seq;
                    return Next::Emit(Box::new(event));
                }
            }
        }
        let finished = !self.follow
            && self
                .lanes
                .values()
                .all(|l| l.buffer.is_empty() && l.until.is_none_or(|u| l.received >= u));
        if finished {
            Next::Done
        } else {
            Next::NeedInput
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::EventRef;

    fn ev(region: &str, seq: u64, time: u64, deps: &[(&str, u64)]) -> Event {
        Event {
            seq,
            region: region.into(),
            sim_time_ms: time,
            depends_on: deps
                .iter()
                .map(|(r, s)| EventRef {
                    region: (*r).into(),
                    seq: *s,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn drain(m: &mut StreamMerge) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Next::Emit(e) = m.step() {
            out.push((e.region, e.seq));
        }
        out
    }

    #[test]
    fn a_dependent_event_waits_for_its_source_even_when_earlier_in_time() {
        // given: eu's event 1 (t=5) depends on us 2 (t=10); us has 2 events
        let mut m = StreamMerge::new([("eu".into(), 1, 1), ("us".into(), 1, 2)], false);
        m.offer("eu", ev("eu", 1, 5, &[("us", 2)])).unwrap();
        // us has not delivered yet: wait
        assert_eq!(m.step(), Next::NeedInput);
        m.offer("us", ev("us", 1, 1, &[])).unwrap();
        m.offer("us", ev("us", 2, 10, &[])).unwrap();
        assert_eq!(
            drain(&mut m),
            [("us".into(), 1), ("us".into(), 2), ("eu".into(), 1)]
        );
        assert_eq!(m.step(), Next::Done);
    }

    #[test]
    fn ties_go_by_time_then_region_and_catch_up_waits_for_every_region() {
        let mut m = StreamMerge::new([("a".into(), 1, 2), ("b".into(), 1, 2)], true);
        m.offer("b", ev("b", 1, 1, &[])).unwrap();
        // a is catching up with nothing buffered: no guess
        assert_eq!(m.step(), Next::NeedInput);
        m.offer("a", ev("a", 1, 1, &[])).unwrap();
        m.offer("a", ev("a", 2, 3, &[])).unwrap();
        m.offer("b", ev("b", 2, 2, &[])).unwrap();
        assert_eq!(
            drain(&mut m),
            [
                ("a".into(), 1),
                ("b".into(), 1),
                ("b".into(), 2),
                ("a".into(), 2)
            ]
        );
        // caught up and following: waits for live events, never Done
        assert_eq!(m.step(), Next::NeedInput);
        m.offer("b", ev("b", 3, 9, &[])).unwrap();
        assert_eq!(drain(&mut m), [("b".into(), 3)]);
        assert_eq!(m.resume_seq("b"), 4);
    }

    #[test]
    fn without_follow_the_end_grows_to_cover_dependencies() {
        // us had 1 event at open, eu 1; eu 1 depends on us 2 (written in between)
        let mut m = StreamMerge::new([("eu".into(), 1, 1), ("us".into(), 1, 1)], false);
        m.offer("us", ev("us", 1, 1, &[])).unwrap();
        m.offer("eu", ev("eu", 1, 2, &[("us", 2)])).unwrap();
        assert_eq!(drain(&mut m), [("us".into(), 1)]);
        assert!(!m.wants("eu"));
        assert_eq!(m.step(), Next::NeedInput);
        assert!(m.wants("us"), "us must now deliver seq 2");
        m.offer("us", ev("us", 2, 2, &[])).unwrap();
        assert!(!m.wants("us"));
        assert_eq!(drain(&mut m), [("us".into(), 2), ("eu".into(), 1)]);
        assert_eq!(m.step(), Next::Done);
    }

    #[test]
    fn dependencies_before_the_start_or_outside_are_met() {
        let mut m = StreamMerge::new([("eu".into(), 1, 1), ("us".into(), 5, 5)], false);
        m.offer("eu", ev("eu", 1, 1, &[("us", 3), ("ap", 9)]))
            .unwrap();
        m.offer("us", ev("us", 5, 7, &[])).unwrap();
        assert_eq!(drain(&mut m), [("eu".into(), 1), ("us".into(), 5)]);
        assert_eq!(m.step(), Next::Done);
    }

    #[test]
    fn duplicates_are_ignored_and_gaps_refused() {
        let mut m = StreamMerge::new([("us".into(), 1, 3)], true);
        m.offer("us", ev("us", 1, 1, &[])).unwrap();
        m.offer("us", ev("us", 1, 1, &[])).unwrap();
        assert!(matches!(
            m.offer("us", ev("us", 3, 1, &[])),
            Err(StreamMergeError::Gap { .. })
        ));
        assert!(matches!(
            m.offer("xx", ev("xx", 1, 1, &[])),
            Err(StreamMergeError::UnknownRegion(_))
        ));
        assert_eq!(drain(&mut m), [("us".into(), 1)]);
    }
}
