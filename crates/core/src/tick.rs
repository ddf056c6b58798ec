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
