//! The invariant checker: the history of what clients were told ([`History`]) against what the
//! cluster holds once faults are healed and work has stopped ([`Observed`]).
//!
//! Each invariant gives a [`Verdict`]: pass or fail, the violations, and the smallest excerpt of
//! the history that shows the first ones (the invoke and completion of the write that was lost,
//! the read that saw too little, ...). The checks:
//!
//! | verdict | rule |
//! |---|---|
//! | `no_acknowledged_write_lost` | every ok'd RegisterImage / CopyImage / CreateSnapshot id is in its region's final state, unless a DeregisterImage / DeleteSnapshot of it may have happened (ok, info or unanswered) |
//! | `copies_terminal_exactly_once` | every ok'd copy is `available` or `failed` (or cancelled by a deregister), never pending or in flight; one copy per new image; one image per ClientToken; no copy nobody asked for |
//! | `causal_reads` | a region read shows the process's own acknowledged images; a global read with a consistency token shows the write the token came from; an `available` copy never shows in the global projection without its source |
//! | `projections_converge` | for each region, the coordinator's digest = the node's digest = a replay's digest, at the same seq; the global projection shows every region's images as the region does |
//! | `hash_chains_valid` | Audit.VerifyLog of every region is ok |
//! | `quiescence` | the run reached quiescence (no copy in flight, nothing pending, projections caught up) within its timeout |
//!
//! The checker is pure (no I/O): tests feed it hand-made histories and observations, e.g. a
//! final state missing an acknowledged image, and assert the verdict.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Entry, EntryType, History, Op};

/// Longest excerpt a verdict carries.
pub const MAX_EXCERPT: usize = 12;

/// An image as a read showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageObs {
    pub state: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_image_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_region: String,
}

/// One copy as `Coordinator.ListCopies` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyObs {
    pub copy_id: String,
    pub source_region: String,
    pub source_id: String,
    pub destination_region: String,
    pub destination_id: String,
    pub account_id: String,
    pub phase: String,
    pub requested_at_ms: u64,
    pub finished_at_ms: u64,
    pub destination_state: String,
}

/// One region's digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestObs {
    pub region: String,
    pub coordinator_seq: u64,
    pub coordinator_digest: String,
    pub region_seq: u64,
    pub region_digest: String,
    pub replay_digest: String,
    /// SHA-256 over the region's log with each event's wall time cleared (the only field a
    /// replay of the seed may change); empty if it could not be read.
    #[serde(default)]
    pub log_digest: String,
}

/// One region's Audit.VerifyLog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyObs {
    pub region: String,
    pub ok: bool,
    pub head_seq: u64,
    pub first_bad_seq: u64,
    pub reason: String,
}

/// What the cluster holds after the heal and quiescence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Region → image id → image, as each account's DescribeImages in that region shows its
    /// own images.
    pub images: BTreeMap<String, BTreeMap<String, ImageObs>>,
    /// Region → snapshot id → state.
    pub snapshots: BTreeMap<String, BTreeMap<String, String>>,
    /// Region → image id → image, from Coordinator.DescribeGlobalImages per account.
    pub global_images: BTreeMap<String, BTreeMap<String, ImageObs>>,
    pub copies: Vec<CopyObs>,
    pub digests: Vec<DigestObs>,
    pub verify: Vec<VerifyObs>,
    /// Quiescence was reached within the timeout.
    pub quiesced: bool,
    /// Why not, or how it was reached.
    pub quiescence_note: String,
}

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub pass: bool,
    /// One line: what was checked, or the first violation.
    pub summary: String,
    /// Every violation, one line each.
    pub violations: Vec<String>,
    /// The smallest part of the history that shows the first violations.
    pub excerpt: Vec<Entry>,
}

impl Verdict {
    fn new(name: &str, checked: String, violations: Vec<String>, excerpt: Vec<Entry>) -> Verdict {
        let pass = violations.is_empty();
        let summary = match violations.first() {
            None => checked,
            Some(first) if violations.len() == 1 => first.clone(),
            Some(first) => format!("{first} (and {} more)", violations.len() - 1),
        };
        let mut excerpt = excerpt;
        excerpt.sort_by_key(|e| e.index);
        excerpt.dedup_by_key(|e| e.index);
        excerpt.truncate(MAX_EXCERPT);
        Verdict {
            name: name.to_string(),
            pass,
            summary,
            violations,
            excerpt,
        }
    }
}

/// Runs every check.
pub fn check(history: &History, observed: &Observed) -> Vec<Verdict> {
    let ops = history.ops();
    vec![
        no_acknowledged_write_lost(&ops, observed),
        copies_terminal_exactly_once(&ops, observed),
        causal_reads(&ops),
        projections_converge(observed),
        hash_chains_valid(observed),
        quiescence(observed),
    ]
}

/// Ops of `f` on `id` (a `value` field `key`) that may have happened.
fn removals<'a>(ops: &[Op<'a>], f: &str, key: &str, id: &str) -> Vec<Op<'a>> {
    ops.iter()
        .filter(|o| o.invoke.f == f && o.invoke.value_str(key) == Some(id) && o.maybe_happened())
        .copied()
        .collect()
}

/// Every op mentioning `id` in its request or result, as excerpt entries.
fn mentioning(ops: &[Op<'_>], id: &str) -> Vec<Entry> {
    ops.iter()
        .filter(|o| {
            o.invoke.value.to_string().contains(id)
                || o.completion
                    .is_some_and(|c| c.value.to_string().contains(id))
        })
        .flat_map(|o| o.entries())
        .collect()
}

/// The id an ok'd create returned.
fn created_id(op: &Op<'_>) -> Option<(String, &'static str)> {
    let ok = op.ok()?;
    match op.invoke.f.as_str() {
        "register_image" | "copy_image" => {
            ok.value_str("image_id").map(|s| (s.to_string(), "image"))
        }
        "create_snapshot" => ok
            .value_str("snapshot_id")
            .map(|s| (s.to_string(), "snapshot")),
        _ => None,
    }
}

/// No acknowledged write lost.
pub fn no_acknowledged_write_lost(ops: &[Op<'_>], observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    let mut excerpt = Vec::new();
    let mut checked = 0;
    for op in ops {
        let Some((id, kind)) = created_id(op) else {
            continue;
        };
        checked += 1;
        let region = &op.invoke.region;
        let present = match kind {
            "image" => observed
                .images
                .get(region)
                .is_some_and(|m| m.contains_key(&id)),
            _ => observed
                .snapshots
                .get(region)
                .is_some_and(|m| m.contains_key(&id)),
        };
        if present {
            continue;
        }
        let removed = match kind {
            "image" => !removals(ops, "deregister_image", "image_id", &id).is_empty(),
            _ => !removals(ops, "delete_snapshot", "snapshot_id", &id).is_empty(),
        };
        if removed {
            continue;
        }
        violations.push(format!(
            "acknowledged write lost: {} {id} in {region} (ok at history index {}) is not in the final state",
            op.invoke.f,
            op.ok().map_or(0, |e| e.index)
        ));
        if excerpt.len() < MAX_EXCERPT {
            excerpt.extend(mentioning(ops, &id));
        }
    }
    Verdict::new(
        "no_acknowledged_write_lost",
        format!("{checked} acknowledged writes, all in the final state"),
        violations,
        excerpt,
    )
}

/// Every copy terminal exactly once.
pub fn copies_terminal_exactly_once(ops: &[Op<'_>], observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    let mut excerpt = Vec::new();
    let copies: Vec<&Op<'_>> = ops.iter().filter(|o| o.invoke.f == "copy_image").collect();
    let mut by_dest: BTreeMap<&str, Vec<&CopyObs>> = BTreeMap::new();
    for c in &observed.copies {
        by_dest
            .entry(c.destination_id.as_str())
            .or_default()
            .push(c);
    }
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut checked = 0;
    for op in &copies {
        let Some(ok) = op.ok() else { continue };
        let Some(id) = ok.value_str("image_id") else {
            continue;
        };
        acked.insert(id.to_string());
        checked += 1;
        let region = &op.invoke.region;
        let cancelled = !removals(ops, "deregister_image", "image_id", id).is_empty();
        let records = by_dest.get(id).map(Vec::as_slice).unwrap_or(&[]);
        if records.len() > 1 {
            violations.push(format!(
                "copy to {id} in {region} ran {} times ({})",
                records.len(),
                records
                    .iter()
                    .map(|c| c.copy_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            excerpt.extend(op.entries());
            continue;
        }
        let image_state = observed
            .images
            .get(region)
            .and_then(|m| m.get(id))
            .map(|i| i.state.as_str());
        let phase = records.first().map(|c| c.phase.as_str());
        let terminal_phase = matches!(
            phase,
            Some("available") | Some("completed") | Some("failed") | Some("cancelled")
        );
        let terminal_state = matches!(
            image_state,
            Some("available") | Some("failed") | Some("deregistered")
        );
        if cancelled && (image_state.is_none() || image_state == Some("deregistered")) {
            continue;
        }
        if !(terminal_state && (terminal_phase || phase.is_none())) {
            violations.push(format!(
                "copy to {id} in {region} is not terminal: image {}, copy phase {}",
                image_state.unwrap_or("absent"),
                phase.unwrap_or("unknown")
            ));
            excerpt.extend(op.entries());
        }
    }
    // One image per ClientToken (per account and region, as EC2 scopes it).
    let mut tokens: BTreeMap<(String, String, String), Vec<&Op<'_>>> = BTreeMap::new();
    for op in &copies {
        if let (Some(_), Some(t)) = (op.ok(), op.invoke.value_str("client_token")) {
            if !t.is_empty() {
                tokens
                    .entry((
                        op.invoke.account.clone(),
                        op.invoke.region.clone(),
                        t.to_string(),
                    ))
                    .or_default()
                    .push(op);
            }
        }
    }
    for ((account, region, token), group) in &tokens {
        let ids: BTreeSet<&str> = group
            .iter()
            .filter_map(|o| o.ok().and_then(|e| e.value_str("image_id")))
            .collect();
        if ids.len() > 1 {
            violations.push(format!(
                "ClientToken {token} of {account} in {region} gave {} images: {}",
                ids.len(),
                ids.iter().copied().collect::<Vec<_>>().join(", ")
            ));
            for o in group {
                excerpt.extend(o.entries());
            }
        }
    }
    // A copy no client was told about, where no copy call of that account and region is in
    // doubt (info or unanswered), was made twice or out of nothing.
    for c in &observed.copies {
        if acked.contains(&c.destination_id) {
            continue;
        }
        let in_doubt = copies.iter().any(|o| {
            o.invoke.region == c.destination_region
                && o.invoke.account == c.account_id
                && o.ok().is_none()
                && o.maybe_happened()
        });
        let from_workload = copies
            .iter()
            .any(|o| o.invoke.region == c.destination_region);
        if from_workload && !in_doubt {
            violations.push(format!(
                "copy {} to {} in {} was never acknowledged to a client",
                c.copy_id, c.destination_id, c.destination_region
            ));
        }
    }
    Verdict::new(
        "copies_terminal_exactly_once",
        format!(
            "{checked} acknowledged copies, each terminal once; {} ClientTokens consistent",
            tokens.len()
        ),
        violations,
        excerpt,
    )
}

/// Images a read returned: `(region, id) -> image`.
fn read_images(e: &Entry) -> BTreeMap<(String, String), ImageObs> {
    let mut out = BTreeMap::new();
    if let Some(list) = e.value.get("images").and_then(|v| v.as_array()) {
        for i in list {
            let s = |k: &str| i.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            out.insert(
                (s("region"), s("image_id")),
                ImageObs {
                    state: s("state"),
                    owner: s("owner"),
                    source_image_id: s("source_image_id"),
                    source_region: s("source_region"),
                },
            );
        }
    }
    out
}

/// Causal reads never violated.
pub fn causal_reads(ops: &[Op<'_>]) -> Verdict {
    let mut violations = Vec::new();
    let mut excerpt = Vec::new();
    let mut checked = 0;
    // Deregisters invoked before history index `i` on an image.
    let deregistered_before = |id: &str, before: u64| {
        ops.iter().any(|o| {
            o.invoke.f == "deregister_image"
                && o.invoke.value_str("image_id") == Some(id)
                && o.invoke.index < before
        })
    };
    let writer_of = |region: &str, id: &str| {
        ops.iter()
            .find(|o| {
                o.invoke.region == region
                    && o.ok().and_then(|e| e.value_str("image_id")) == Some(id)
            })
            .map(|o| o.entries())
            .unwrap_or_default()
    };
    for op in ops {
        let Some(ok) = op.ok() else { continue };
        let read_end = ok.index;
        match op.invoke.f.as_str() {
            "describe_images" => {
                checked += 1;
                let seen = read_images(ok);
                let expected = op
                    .invoke
                    .value
                    .get("image_ids")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                for id in expected.iter().filter_map(|v| v.as_str()) {
                    let key = (op.invoke.region.clone(), id.to_string());
                    if !seen.contains_key(&key) && !deregistered_before(id, read_end) {
                        violations.push(format!(
                            "read your writes: DescribeImages in {} (history index {}) did not show {id}, acknowledged earlier",
                            op.invoke.region, op.invoke.index
                        ));
                        excerpt.extend(writer_of(&op.invoke.region, id));
                        excerpt.extend(op.entries());
                    }
                }
            }
            "describe_global_images" => {
                checked += 1;
                let seen = read_images(ok);
                // The token's write.
                if let (Some(region), Some(id)) = (
                    op.invoke.value_str("expect_region"),
                    op.invoke.value_str("expect_image_id"),
                ) {
                    let key = (region.to_string(), id.to_string());
                    if !seen.contains_key(&key) && !deregistered_before(id, read_end) {
                        violations.push(format!(
                            "consistency token: DescribeGlobalImages (history index {}) with token {} did not show {id} in {region}",
                            op.invoke.index,
                            op.invoke.value_str("consistency_token").unwrap_or("")
                        ));
                        excerpt.extend(writer_of(region, id));
                        excerpt.extend(op.entries());
                    }
                }
                // Copies never before their source.
                for ((region, id), img) in &seen {
                    if img.state != "available" || img.source_image_id.is_empty() {
                        continue;
                    }
                    let src = (img.source_region.clone(), img.source_image_id.clone());
                    if !seen.contains_key(&src) && !deregistered_before(&src.1, read_end) {
                        violations.push(format!(
                            "causality: DescribeGlobalImages (history index {}) shows copy {id} in {region} available but not its source {} in {}",
                            op.invoke.index, src.1, src.0
                        ));
                        excerpt.extend(writer_of(region, id));
                        excerpt.extend(op.entries());
                    }
                }
            }
            _ => {}
        }
        if violations.len() > 50 {
            break;
        }
    }
    // A region read that failed NotFound on an image the process owns is a lost read too.
    for op in ops {
        let Some(c) = op.completion else { continue };
        if op.invoke.f == "describe_images"
            && c.kind == EntryType::Fail
            && c.error.as_deref() == Some("InvalidAMIID.NotFound")
        {
            let ids: Vec<String> = op
                .invoke
                .value
                .get("image_ids")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if ids.iter().all(|id| !deregistered_before(id, c.index)) {
                violations.push(format!(
                    "read your writes: DescribeImages in {} (history index {}) answered InvalidAMIID.NotFound for acknowledged images {}",
                    op.invoke.region,
                    op.invoke.index,
                    ids.join(",")
                ));
                for id in &ids {
                    excerpt.extend(writer_of(&op.invoke.region, id));
                }
                excerpt.extend(op.entries());
            }
        }
    }
    Verdict::new(
        "causal_reads",
        format!("{checked} reads, none saw less than it must"),
        violations,
        excerpt,
    )
}

/// All projections converge to equal digests.
pub fn projections_converge(observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    for d in &observed.digests {
        if d.coordinator_seq != d.region_seq {
            violations.push(format!(
                "{}: the coordinator's projection is at seq {}, the region's log at {}",
                d.region, d.coordinator_seq, d.region_seq
            ));
        } else if d.coordinator_digest != d.region_digest {
            violations.push(format!(
                "{}: digests differ at seq {}: coordinator {} vs region {}",
                d.region,
                d.region_seq,
                short(&d.coordinator_digest),
                short(&d.region_digest)
            ));
        }
        if !d.replay_digest.is_empty() && d.replay_digest != d.region_digest {
            violations.push(format!(
                "{}: the live state ({}) differs from a replay of its log ({})",
                d.region,
                short(&d.region_digest),
                short(&d.replay_digest)
            ));
        }
    }
    for (region, images) in &observed.images {
        let global = observed.global_images.get(region);
        for (id, img) in images {
            match global.and_then(|g| g.get(id)) {
                None => violations.push(format!(
                    "{region}: image {id} ({}) is missing from the global projection",
                    img.state
                )),
                Some(g) if g.state != img.state => violations.push(format!(
                    "{region}: image {id} is {} in the region but {} in the global projection",
                    img.state, g.state
                )),
                Some(_) => {}
            }
        }
    }
    if observed.digests.is_empty() {
        violations.push("no digest could be read".into());
    }
    Verdict::new(
        "projections_converge",
        format!(
            "{} regions: coordinator, region and replay digests equal",
            observed.digests.len()
        ),
        violations,
        Vec::new(),
    )
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

/// Hash chains valid.
pub fn hash_chains_valid(observed: &Observed) -> Verdict {
    let mut violations = Vec::new();
    for v in &observed.verify {
        if !v.ok {
            violations.push(format!(
                "{}: the log does not verify at seq {}: {}",
                v.region, v.first_bad_seq, v.reason
            ));
        }
    }
    if observed.verify.is_empty() {
        violations.push("no log could be verified".into());
    }
    Verdict::new(
        "hash_chains_valid",
        format!(
            "{} logs verified ({} events)",
            observed.verify.len(),
            observed.verify.iter().map(|v| v.head_seq).sum::<u64>()
        ),
        violations,
        Vec::new(),
    )
}

/// The run settled.
pub fn quiescence(observed: &Observed) -> Verdict {
    let violations = if observed.quiesced {
        Vec::new()
    } else {
        vec![format!("no quiescence: {}", observed.quiescence_note)]
    };
    Verdict::new(
        "quiescence",
        format!("quiescent: {}", observed.quiescence_note),
        violations,
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const R: &str = "us-east-1";
    const E: &str = "eu-west-1";

    /// A `describe_global_images` in E by process 1 as account 100000000000, invoked at `time`
    /// with `args` and answered `result` at `time + 1`.
    fn global_read(
        h: &mut History,
        time: u64,
        sim_time_ms: u64,
        args: serde_json::Value,
        result: serde_json::Value,
    ) {
        let g = h.invoke(
            "describe_global_images",
            1,
            time,
            sim_time_ms,
            E,
            "100000000000",
            None,
            args,
        );
        h.complete(g, EntryType::Ok, time + 1, sim_time_ms, result, None);
    }

    /// A small, healthy run: two registers, a copy, a share, a deregister, reads.
    fn healthy() -> (History, Observed) {
        let mut h = History::new();
        let a = h.invoke(
            "register_image",
            0,
            1,
            0,
            R,
            "100000000000",
            None,
            json!({"name": "a"}),
        );
        h.complete(
            a,
            EntryType::Ok,
            2,
            0,
            json!({"image_id": "ami-a", "token": "us-east-1:3"}),
            None,
        );
        let b = h.invoke(
            "register_image",
            0,
            3,
            0,
            R,
            "100000000000",
            None,
            json!({"name": "b"}),
        );
        h.complete(b, EntryType::Ok, 4, 0, json!({"image_id": "ami-b"}), None);
        let c = h.invoke(
            "copy_image",
            1,
            5,
            1000,
            E,
            "100000000000",
            Some(R),
            json!({"source_image_id": "ami-a", "client_token": "t1"}),
        );
        h.complete(
            c,
            EntryType::Ok,
            6,
            1000,
            json!({"image_id": "ami-c"}),
            None,
        );
        let d = h.invoke(
            "deregister_image",
            0,
            7,
            2000,
            R,
            "100000000000",
            None,
            json!({"image_id": "ami-b"}),
        );
        h.complete(d, EntryType::Ok, 8, 2000, json!({}), None);
        let r = h.invoke(
            "describe_images",
            0,
            9,
            2000,
            R,
            "100000000000",
            None,
            json!({"image_ids": ["ami-a"]}),
        );
        h.complete(
            r,
            EntryType::Ok,
            10,
            2000,
            json!({"images": [{"region": R, "image_id": "ami-a", "state": "available"}]}),
            None,
        );
        global_read(
            &mut h,
            11,
            3000,
            json!({"consistency_token": "eu-west-1:4", "expect_region": E, "expect_image_id": "ami-c"}),
            json!({"images": [
                {"region": R, "image_id": "ami-a", "state": "available"},
                {"region": E, "image_id": "ami-c", "state": "available", "source_image_id": "ami-a", "source_region": R}
            ]}),
        );
        let img = |state: &str| ImageObs {
            state: state.into(),
            owner: "100000000000".into(),
            ..Default::default()
        };
        let mut o = Observed {
            quiesced: true,
            quiescence_note: "ok".into(),
            ..Default::default()
        };
        o.images
            .insert(R.into(), [("ami-a".to_string(), img("available"))].into());
        o.images
            .insert(E.into(), [("ami-c".to_string(), img("available"))].into());
        o.global_images = o.images.clone();
        o.copies.push(CopyObs {
            copy_id: "copy-1".into(),
            source_region: R.into(),
            source_id: "ami-a".into(),
            destination_region: E.into(),
            destination_id: "ami-c".into(),
            account_id: "100000000000".into(),
            phase: "available".into(),
            requested_at_ms: 1000,
            finished_at_ms: 70_000,
            destination_state: "available".into(),
        });
        for r in [R, E] {
            o.digests.push(DigestObs {
                region: r.into(),
                coordinator_seq: 5,
                coordinator_digest: "abc".into(),
                region_seq: 5,
                region_digest: "abc".into(),
                replay_digest: "abc".into(),
                log_digest: String::new(),
            });
            o.verify.push(VerifyObs {
                region: r.into(),
                ok: true,
                head_seq: 5,
                ..Default::default()
            });
        }
        (h, o)
    }

    fn verdict<'a>(v: &'a [Verdict], name: &str) -> &'a Verdict {
        v.iter().find(|v| v.name == name).unwrap()
    }

    #[test]
    fn a_healthy_run_passes_everything() {
        let (h, o) = healthy();
        let v = check(&h, &o);
        for x in &v {
            assert!(x.pass, "{x:?}");
        }
        assert_eq!(v.len(), 6);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_with_its_excerpt() {
        // Given a final state that dropped an image the client was told about ...
        let (h, mut o) = healthy();
        o.images.get_mut(R).unwrap().remove("ami-a");
        o.global_images = o.images.clone();
        // ... the checker says so and shows that write.
        let v = check(&h, &o);
        let lost = verdict(&v, "no_acknowledged_write_lost");
        assert!(!lost.pass);
        assert!(
            lost.summary.contains("acknowledged write lost"),
            "{}",
            lost.summary
        );
        assert!(lost.summary.contains("ami-a"), "{}", lost.summary);
        assert!(lost
            .excerpt
            .iter()
            .any(|e| e.kind == EntryType::Ok && e.value_str("image_id") == Some("ami-a")));
        assert!(lost.excerpt.len() <= MAX_EXCERPT);
        // The deregistered image is not reported.
        assert!(!lost.summary.contains("ami-b"));
    }

    #[test]
    fn a_stuck_or_doubled_copy_is_caught() {
        let (h, mut o) = healthy();
        o.images.get_mut(E).unwrap().get_mut("ami-c").unwrap().state = "pending".into();
        o.copies[0].phase = "transferring".into();
        let v = copies_terminal_exactly_once(&h.ops(), &o);
        assert!(!v.pass);
        assert!(v.summary.contains("not terminal"), "{}", v.summary);

        let (h, mut o) = healthy();
        let mut twin = o.copies[0].clone();
        twin.copy_id = "copy-2".into();
        o.copies.push(twin);
        let v = copies_terminal_exactly_once(&h.ops(), &o);
        assert!(!v.pass);
        assert!(v.summary.contains("ran 2 times"), "{}", v.summary);
    }

    #[test]
    fn two_images_for_one_client_token_are_caught() {
        let (mut h, o) = healthy();
        let c = h.invoke(
            "copy_image",
            1,
            20,
            4000,
            E,
            "100000000000",
            Some(R),
            json!({"source_image_id": "ami-a", "client_token": "t1"}),
        );
        h.complete(
            c,
            EntryType::Ok,
            21,
            4000,
            json!({"image_id": "ami-z"}),
            None,
        );
        let v = copies_terminal_exactly_once(&h.ops(), &o);
        assert!(!v.pass);
        assert!(
            v.violations.iter().any(|s| s.contains("ClientToken t1")),
            "{v:?}"
        );
    }

    #[test]
    fn a_copy_visible_before_its_source_is_caught() {
        let (mut h, o) = healthy();
        global_read(
            &mut h,
            30,
            5000,
            json!({}),
            json!({"images": [
                {"region": E, "image_id": "ami-c", "state": "available", "source_image_id": "ami-a", "source_region": R}
            ]}),
        );
        let v = check(&h, &o);
        let c = verdict(&v, "causal_reads");
        assert!(!c.pass);
        assert!(c.summary.contains("causality"), "{}", c.summary);
        assert!(c
            .excerpt
            .iter()
            .any(|e| e.index == 13 && e.kind == EntryType::Ok));
    }

    #[test]
    fn a_token_read_that_misses_its_write_is_caught() {
        let (mut h, _) = healthy();
        global_read(
            &mut h,
            30,
            5000,
            json!({"consistency_token": "eu-west-1:4", "expect_region": E, "expect_image_id": "ami-c"}),
            json!({"images": []}),
        );
        let c = causal_reads(&h.ops());
        assert!(!c.pass);
        assert!(c.summary.contains("consistency token"), "{}", c.summary);
    }

    #[test]
    fn diverging_digests_and_broken_chains_fail() {
        let (h, mut o) = healthy();
        o.digests[1].coordinator_digest = "xyz".into();
        o.verify[0].ok = false;
        o.verify[0].reason = "hash mismatch".into();
        o.verify[0].first_bad_seq = 3;
        let v = check(&h, &o);
        assert!(!verdict(&v, "projections_converge").pass);
        let chain = verdict(&v, "hash_chains_valid");
        assert!(!chain.pass);
        assert!(chain.summary.contains("seq 3"), "{}", chain.summary);
    }

    #[test]
    fn an_info_deregister_excuses_an_absent_image() {
        let (mut h, mut o) = healthy();
        let d = h.invoke(
            "deregister_image",
            0,
            40,
            6000,
            R,
            "100000000000",
            None,
            json!({"image_id": "ami-a"}),
        );
        h.complete(
            d,
            EntryType::Info,
            41,
            6000,
            json!({}),
            Some("grpc:Unavailable".into()),
        );
        o.images.get_mut(R).unwrap().remove("ami-a");
        o.global_images = o.images.clone();
        let v = no_acknowledged_write_lost(&h.ops(), &o);
        assert!(v.pass, "{v:?}");
    }
}
