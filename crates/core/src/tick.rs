//! Timed transitions. The node sends [`crate::Command::Tick`] when simulated time reaches the
//! earliest due timer ([`State::next_due_ms`]); the tick turns every due timer into its event,
//! in due-time order. Because timers are derived from events, a restarted node re-arms them by
//! replaying its log.

use amisim_proto::event::Payload;
use amisim_proto::*;

use crate::error::Ec2Result;
use crate::state::{ImageState, InstanceState, SnapshotState, State, Timer};
use crate::{Ctx, Decision, Reply};

/// Fires every timer due at or before `ctx.now_ms`.
pub fn tick(state: &State, ctx: &mut Ctx<'_>) -> Ec2Result<Decision> {
    let mut scratch = state.clone();
    let events = tick_into(&mut scratch, ctx);
    Ok(Decision::new(events, Reply::Tick))
}

/// [`tick`] applied in place: fires every due timer of `state`, applies each event's payload to
/// `state` as it goes (a later timer sees what an earlier one did), and returns the payloads in
/// order. `state` then equals the caller's state with [`State::apply_payload`] of each (only
/// events change it: a timer that fires nothing stays, as it would in a replay), so a writer
/// that already owns a working copy applies a tick once instead of twice (the copy-on-write of
/// a persistent map is most of an apply); it still owes each event [`State::note_applied`]
/// once the log's seq is known.
pub fn tick_into(state: &mut State, ctx: &mut Ctx<'_>) -> Vec<Payload> {
    let mut events = Vec::new();
    // Timers handled by this tick. A fired timer's event normally removes it from
    // `state.timers`; one whose firing produced nothing (or whose event left it) is skipped
    // from then on. The earliest timer not yet handled goes next, so a timer added by an event
    // and already due fires in this tick too. A bound keeps a faulty timer from looping forever.
    let mut handled: std::collections::BTreeSet<(u64, Timer)> = std::collections::BTreeSet::new();
    // The greatest timer handled so far. Every timer before it is handled, unless an event
    // added it since: those are found by scanning before the cursor, which normally holds
    // nothing (fired timers leave the set), so a tick of k timers costs O(k log n), not
    // O(k^2) rescans from the start.
    let mut cursor: Option<(u64, Timer)> = None;
    for _ in 0..100_000 {
        let next = next_due(state, ctx.now_ms, &handled, cursor.as_ref());
        let Some(timer) = next else {
            break;
        };
        let fired = fire(state, &timer.1, ctx);
        if cursor.as_ref().is_none_or(|c| *c < timer) {
            cursor = Some(timer.clone());
        }
        handled.insert(timer);
        for e in fired {
            state.apply_payload(&e);
            events.push(e);
        }
    }
    events
}

/// [`tick_into`] as first written: each step rescans the due timers from the start for the
/// earliest one not handled yet. Tests check the faster cursor against it on every tick
/// (`testkit::Harness::when`).
#[cfg(test)]
pub(crate) fn reference_tick_into(state: &mut State, ctx: &mut Ctx<'_>) -> Vec<Payload> {
    let mut events = Vec::new();
    let mut handled: std::collections::HashSet<(u64, Timer)> = std::collections::HashSet::new();
    for _ in 0..100_000 {
        let Some((due, timer)) = state
            .timers
            .iter()
            .take_while(|(due, _)| *due <= ctx.now_ms)
            .find(|t| !handled.contains(*t))
            .cloned()
        else {
            break;
        };
        let fired = fire(state, &timer, ctx);
        handled.insert((due, timer));
        for e in fired {
            state.apply_payload(&e);
            events.push(e);
        }
    }
    events
}

/// The earliest due timer not in `handled`. Every timer up to `cursor` was handled, unless an
/// event added it since (see [`tick_into`]).
fn next_due(
    state: &State,
    now_ms: u64,
    handled: &std::collections::BTreeSet<(u64, Timer)>,
    cursor: Option<&(u64, Timer)>,
) -> Option<(u64, Timer)> {
    use std::ops::Bound;
    let unhandled = |t: &&(u64, Timer)| !handled.contains(*t);
    let Some(c) = cursor else {
        return state
            .timers
            .iter()
            .take_while(|(due, _)| *due <= now_ms)
            .find(unhandled)
            .cloned();
    };
    // Before the cursor everything is due (<= its due time <= now).
    let added = state.timers.range(..c.clone()).find(unhandled).cloned();
    added.or_else(|| {
        state
            .timers
            .range((Bound::Excluded(c.clone()), Bound::Unbounded))
            .take_while(|(due, _)| *due <= now_ms)
            .find(unhandled)
            .cloned()
    })
}

fn fire(state: &State, timer: &Timer, ctx: &Ctx<'_>) -> Vec<Payload> {
    let id = timer.id();
    match timer {
        Timer::ImageAvailable(_) => match state.images.get(id) {
            // A copy whose snapshot failed fails instead (crate::copy::image_due).
            Some(img) if img.state == ImageState::Pending => {
                vec![crate::copy::image_due(state, img)]
            }
            _ => vec![],
        },
        Timer::ImageForget(_) => match state.images.get(id) {
            Some(img) if img.state == ImageState::Deregistered => {
                vec![Payload::ImageForgotten(ImageForgotten {
                    image_id: id.to_string(),
                })]
            }
            _ => vec![],
        },
        Timer::VolumeAvailable(_) => match state.volumes.get(id) {
            Some(_) => vec![Payload::VolumeAvailable(VolumeAvailable {
                volume_id: id.to_string(),
            })],
            None => vec![],
        },
        Timer::SnapshotComplete(_) => {
            let Some(snap) = state.snapshots.get(id) else {
                return vec![];
            };
            if snap.state != SnapshotState::Pending {
                return vec![];
            }
            let mut out = vec![Payload::SnapshotCompleted(SnapshotCompleted {
                snapshot_id: id.to_string(),
            })];
            // CreateImage: the image turns available when its last snapshot completes.
            if let Some(img) = state.images.get(snap.for_image_id.as_str()) {
                let all_done = img.snapshot_ids().all(|s| {
                    s == id
                        || state
                            .snapshots
                            .get(s)
                            .is_some_and(|x| x.state == SnapshotState::Completed)
                });
                if img.state == ImageState::Pending
                    && img.registered.available_at_ms == 0
                    && all_done
                {
                    out.push(Payload::ImageAvailable(ImageAvailable {
                        image_id: img.id().to_string(),
                    }));
                }
            }
            out
        }
        Timer::KmsKeyDeletion(_) => crate::kms::deletion_due(state, id),
        Timer::InstanceTransition(_) => {
            let Some(inst) = state.instances.get(id) else {
                return vec![];
            };
            let Some((next, _)) = inst.next else {
                return vec![];
            };
            let mut out = vec![Payload::InstanceStateChanged(InstanceStateChanged {
                instance_id: id.to_string(),
                state: next.as_str().to_string(),
                state_transition_reason: inst.state_transition_reason.clone(),
                // The reason of a user stop/terminate stays with the state it leads to.
                state_reason_code: inst
                    .state_reason
                    .as_ref()
                    .map(|r| r.0.clone())
                    .unwrap_or_default(),
                state_reason_message: inst
                    .state_reason
                    .as_ref()
                    .map(|r| r.1.clone())
                    .unwrap_or_default(),
                ..Default::default()
            })];
            if next == InstanceState::Terminated {
                // DeleteOnTermination volumes go with the instance; the others are detached.
                for vol_id in inst.volumes.values() {
                    if let Some(v) = state.volumes.get(vol_id) {
                        let dot = v
                            .attachment
                            .as_ref()
                            .is_some_and(|a| a.delete_on_termination);
                        out.push(Payload::VolumeDetached(VolumeDetached {
                            volume_id: vol_id.to_string(),
                            instance_id: id.to_string(),
                        }));
                        if dot {
                            out.push(Payload::VolumeDeleted(VolumeDeleted {
                                volume_id: vol_id.to_string(),
                            }));
                        }
                    }
                }
            }
            let _ = ctx;
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn timer(due: u64, id: &str) -> (u64, Timer) {
        (due, Timer::VolumeAvailable(id.into()))
    }

    fn state_with(timers: &[(u64, Timer)]) -> State {
        let mut s = State::new();
        for t in timers {
            s.timers.insert(t.clone());
        }
        s
    }

    #[test]
    fn next_due_goes_on_after_the_cursor_and_stops_at_now() {
        let s = state_with(&[timer(10, "vol-1"), timer(20, "vol-2"), timer(30, "vol-3")]);
        let none = BTreeSet::new();
        assert_eq!(next_due(&s, 25, &none, None), Some(timer(10, "vol-1")));
        // vol-1 handled and still there (its firing produced nothing): skipped.
        let handled: BTreeSet<_> = [timer(10, "vol-1")].into();
        let cursor = timer(10, "vol-1");
        assert_eq!(
            next_due(&s, 25, &handled, Some(&cursor)),
            Some(timer(20, "vol-2"))
        );
        let handled: BTreeSet<_> = [timer(10, "vol-1"), timer(20, "vol-2")].into();
        let cursor = timer(20, "vol-2");
        assert_eq!(
            next_due(&s, 25, &handled, Some(&cursor)),
            None,
            "vol-3 is not due"
        );
    }

    #[test]
    fn a_timer_added_before_the_cursor_goes_first() {
        // The tick handled vol-5 (due 20, still pending) and an event then added vol-4 due at
        // 15 and vol-9 due at 20: the earliest not handled is vol-4, before the cursor.
        let s = state_with(&[
            timer(15, "vol-4"),
            timer(20, "vol-5"),
            timer(20, "vol-9"),
            timer(30, "vol-6"),
        ]);
        let mut handled: BTreeSet<_> = [timer(20, "vol-5")].into();
        let cursor = timer(20, "vol-5");
        assert_eq!(
            next_due(&s, 25, &handled, Some(&cursor)),
            Some(timer(15, "vol-4"))
        );
        handled.insert(timer(15, "vol-4"));
        // The cursor stays the greatest handled timer; the next is after it.
        assert_eq!(
            next_due(&s, 25, &handled, Some(&cursor)),
            Some(timer(20, "vol-9"))
        );
    }
}
