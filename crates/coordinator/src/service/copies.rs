//! `ListCopies`: every copy the projection knows, in flight or recently finished, with its
//! phase, progress and what the saga driver did about it.
//!
//! A copy lives in its destination region's state ([`State::copies`]); its source read, in the
//! source region's ([`State::copy_reads`]). The phase comes from the core
//! ([`State::copy_phase`]), split once more by whether the source read is recorded, so an
//! operator sees which side a stuck copy waits for.
//!
//! Time: the projection has no clock. Progress is computed against the destination's "now",
//! which the service asks the destination node for (its simulated clock) and which falls back
//! to the latest simulated time in that region's log. The listing itself is a pure function of
//! the snapshot, those "now"s and the driver's status, so it is tested directly.

use std::collections::{BTreeMap, BTreeSet};

use amisim_core::copy::{CopyKind, CopyPhase, CopyTask};
use amisim_core::state::{ImageState, SnapshotState};
use amisim_core::timing::progress_percent;
use amisim_core::{ids, Ec2Error, State};
use amisim_proto::{CopyInfo, CopySagaStatus, EventRef};

use crate::projection::ProjectionSnapshot;
use crate::saga::{CopyDrive, SagaMonitor};

/// Finished copies are listed this long (simulated ms) after they finished, by default (24 h).
pub const DEFAULT_FINISHED_WITHIN_MS: u64 = 24 * 3_600_000;

/// The phases a copy can be in (`CopyInfo.phase`).
pub const PHASES: [&str; 7] = [
    "awaiting-source-read",
    "awaiting-start",
    "transferring",
    "available",
    "completed",
    "failed",
    "cancelled",
];
/// Phases of copies not finished yet.
pub const IN_FLIGHT: [&str; 3] = ["awaiting-source-read", "awaiting-start", "transferring"];

/// A ListCopies request, checked.
#[derive(Debug, Clone, Default)]
pub struct CopyFilter {
    /// Source or destination in this set (empty: any).
    pub regions: BTreeSet<String>,
    /// Phase in this set (empty: any).
    pub phases: BTreeSet<&'static str>,
    /// Finished copies at most this old (simulated ms) at their destination's now.
    pub finished_within_ms: u64,
    /// Requested by one of these accounts (empty: any).
    pub accounts: BTreeSet<String>,
}

impl CopyFilter {
    /// Checks the request's phases and accounts (regions are checked by the service against
    /// what it follows). `finished_within_ms` absent means the default.
    pub fn new(
        regions: &[String],
        phases: &[String],
        finished_within_ms: Option<u64>,
        accounts: &[String],
    ) -> Result<Self, Ec2Error> {
        let mut wanted = BTreeSet::new();
        for p in phases {
            let p = p.trim();
            match p {
                "in-flight" => wanted.extend(IN_FLIGHT),
                "finished" => wanted.extend(PHASES.iter().filter(|x| !IN_FLIGHT.contains(x))),
                _ => match PHASES.iter().find(|x| **x == p) {
                    Some(x) => {
                        wanted.insert(*x);
                    }
                    None => {
                        return Err(Ec2Error::invalid_value(
                            "phases",
                            p,
                            &format!("Valid values: {}, in-flight, finished.", PHASES.join(", ")),
                        ))
                    }
                },
            }
        }
        for a in accounts {
            if !ids::is_account_id(a.trim()) {
                return Err(Ec2Error::invalid_value(
                    "accountIds",
                    a,
                    "Expected a 12-digit account id.",
                ));
            }
        }
        Ok(CopyFilter {
            regions: regions.iter().map(|r| r.trim().to_string()).collect(),
            phases: wanted,
            finished_within_ms: finished_within_ms.unwrap_or(DEFAULT_FINISHED_WITHIN_MS),
            accounts: accounts.iter().map(|a| a.trim().to_string()).collect(),
        })
    }
}

/// The destination regions whose copies the filter may list (for asking their clocks).
pub fn destinations(snap: &ProjectionSnapshot, filter: &CopyFilter) -> Vec<String> {
    snap.regions()
        .filter(|(dest, r)| {
            r.state.copies.values().any(|t| {
                filter.regions.is_empty()
                    || filter.regions.contains(*dest)
                    || filter.regions.contains(&t.source_region)
            })
        })
        .map(|(dest, _)| dest.to_string())
        .collect()
}

/// The copies `filter` selects, ordered by destination region, request time, copy id. `now`:
/// each destination's simulated now when known (else the latest sim time of its log).
pub fn list(
    snap: &ProjectionSnapshot,
    now: &BTreeMap<String, u64>,
    filter: &CopyFilter,
    saga: Option<&SagaMonitor>,
) -> Vec<CopyInfo> {
    let mut out = Vec::new();
    for (dest, region) in snap.regions() {
        let state = &region.state;
        let dest_now = now
            .get(dest)
            .copied()
            .unwrap_or(0)
            .max(state.last_sim_time_ms);
        let mut tasks: Vec<&CopyTask> = state
            .copies
            .values()
            .filter(|t| {
                filter.regions.is_empty()
                    || filter.regions.contains(dest)
                    || filter.regions.contains(&t.source_region)
            })
            .filter(|t| filter.accounts.is_empty() || filter.accounts.contains(&t.owner_id))
            .collect();
        tasks.sort_by(|a, b| (a.requested_at_ms, &a.copy_id).cmp(&(b.requested_at_ms, &b.copy_id)));
        for t in tasks {
            let source_state = snap.region(&t.source_region).map(|r| &r.state);
            let info = describe(dest, state, source_state, t, dest_now);
            if !filter.phases.is_empty() && !filter.phases.contains(info.phase.as_str()) {
                continue;
            }
            let finished = !IN_FLIGHT.contains(&info.phase.as_str());
            let age = dest_now.saturating_sub(info.finished_at_ms);
            if finished && (filter.finished_within_ms == 0 || age > filter.finished_within_ms) {
                continue;
            }
            let mut info = info;
            info.saga = saga.and_then(|m| m.copy(&t.copy_id)).map(saga_status);
            out.push(info);
        }
    }
    out
}

fn saga_status(d: CopyDrive) -> CopySagaStatus {
    CopySagaStatus {
        step: d.step.as_str().to_string(),
        attempts: d.attempts,
        last_error: d.last_error.unwrap_or_default(),
        outcome: d.outcome.unwrap_or_default(),
    }
}

/// One copy as `ListCopies` shows it (without the driver's part).
pub fn describe(
    dest: &str,
    state: &State,
    source_state: Option<&State>,
    t: &CopyTask,
    now_ms: u64,
) -> CopyInfo {
    let read = source_state
        .and_then(|s| s.copy_reads.get(&t.copy_id))
        .filter(|r| r.seq > 0);
    let core_phase = state.copy_phase(t);
    let phase = match core_phase {
        CopyPhase::AwaitingStart if read.is_some() => "awaiting-start",
        CopyPhase::AwaitingStart => "awaiting-source-read",
        CopyPhase::Transferring => "transferring",
        CopyPhase::Done => match t.kind {
            CopyKind::Image => "available",
            CopyKind::Snapshot => "completed",
        },
        CopyPhase::Failed => "failed",
        CopyPhase::Gone => "cancelled",
    };
    let started = t.started_at_ms.unwrap_or(0);
    let mut info = CopyInfo {
        copy_id: t.copy_id.clone(),
        kind: t.kind.as_str().to_string(),
        source_region: t.source_region.clone(),
        source_id: t.source_id.clone(),
        destination_region: dest.to_string(),
        destination_id: t.dest_id.clone(),
        account_id: t.owner_id.clone(),
        phase: phase.to_string(),
        requested_at_ms: t.requested_at_ms,
        started_at_ms: started,
        requested_event: (t.requested_seq > 0).then(|| EventRef {
            region: dest.to_string(),
            seq: t.requested_seq,
        }),
        source_read_event: read.map(|r| EventRef {
            region: t.source_region.clone(),
            seq: r.seq,
        }),
        ..Default::default()
    };
    // The latest time known of the copy (for a failure, which records none).
    let mut latest = t.requested_at_ms.max(started);
    match t.kind {
        CopyKind::Image => {
            if let Some(img) = state.images.get(t.dest_id.as_str()) {
                info.destination_state = img.state.as_str().to_string();
                if started > 0 {
                    info.due_at_ms = img.registered.available_at_ms;
                }
                for id in img.snapshot_ids() {
                    if let Some(s) = state.snapshots.get(id) {
                        info.transfer_bytes = info
                            .transfer_bytes
                            .saturating_add(u64::try_from(s.transferred_bytes).unwrap_or(0));
                        if let Some(c) = s.completion_time_ms {
                            latest = latest.max(c);
                        }
                    }
                }
                if img.state == ImageState::Failed {
                    if let Some((code, message)) = img.state_reason.as_deref() {
                        info.failure_code = code.clone();
                        info.failure_message = message.clone();
                    }
                }
            }
        }
        CopyKind::Snapshot => {
            if let Some(s) = state.snapshots.get(&t.dest_id) {
                info.destination_state = s.state.as_str().to_string();
                if started > 0 {
                    info.due_at_ms = s.complete_at_ms;
                    info.transfer_bytes = u64::try_from(s.transferred_bytes).unwrap_or(0);
                }
                if let Some(c) = s.completion_time_ms {
                    latest = latest.max(c);
                }
                if s.state == SnapshotState::Error {
                    info.failure_message = s.state_message.clone();
                }
            }
        }
    }
    match core_phase {
        CopyPhase::Transferring => {
            info.progress_percent = progress_percent(started, info.due_at_ms, now_ms);
        }
        CopyPhase::Done => {
            info.progress_percent = 100;
            info.finished_at_ms = match t.kind {
                CopyKind::Image => info.due_at_ms.max(latest),
                CopyKind::Snapshot => latest.max(info.due_at_ms.min(now_ms)),
            };
        }
        CopyPhase::Failed | CopyPhase::Gone => info.finished_at_ms = latest,
        CopyPhase::AwaitingStart => {}
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_groups_are_checked() {
        let f = CopyFilter::new(&[], &["in-flight".into()], None, &[]).unwrap();
        assert_eq!(f.phases.len(), 3);
        assert_eq!(f.finished_within_ms, DEFAULT_FINISHED_WITHIN_MS);
        let f = CopyFilter::new(&[], &["finished".into(), "failed".into()], Some(0), &[]).unwrap();
        assert_eq!(f.phases.len(), 4);
        assert_eq!(f.finished_within_ms, 0);
        let e = CopyFilter::new(&[], &["done".into()], None, &[]).unwrap_err();
        assert_eq!(e.code, amisim_core::ErrorCode::InvalidParameterValue);
        assert!(e.message.contains("in-flight"), "{}", e.message);
        let e = CopyFilter::new(&[], &[], None, &["root".into()]).unwrap_err();
        assert_eq!(e.code, amisim_core::ErrorCode::InvalidParameterValue);
    }
}
