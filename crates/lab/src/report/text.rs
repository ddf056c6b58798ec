//! The report as terminal text (also `report.txt`): verdicts first (what a reader wants to
//! know), then latency per operation and region pair, copies, convergence and the timeline.

use std::fmt::Write as _;

use super::Report;

fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.2}ms")
    }
}

/// Renders `r`.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    let _ = writeln!(
        o,
        "== {} (seed {}): {verdict} — {} calls, {} simulated s, {:.1} wall s",
        r.experiment,
        r.seed,
        r.calls,
        r.duration_ms / 1000,
        r.wall_ms as f64 / 1000.0
    );
    if !r.description.is_empty() {
        let _ = writeln!(o, "   {}", r.description);
    }
    let _ = writeln!(o, "\ninvariants");
    for v in &r.verdicts {
        let _ = writeln!(
            o,
            "  {} {:<30} {}",
            if v.pass { "pass" } else { "FAIL" },
            v.name,
            v.summary
        );
        if !v.pass {
            for line in v.violations.iter().skip(1).take(5) {
                let _ = writeln!(o, "       {line}");
            }
            if !v.excerpt.is_empty() {
                let _ = writeln!(o, "       history excerpt:");
                for e in &v.excerpt {
                    let _ = writeln!(
                        o,
                        "         {}",
                        serde_json::to_string(e).unwrap_or_default()
                    );
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "\n{:<24} {:<28} {:>6} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}  errors",
        "operation", "region / pair", "calls", "ok", "fail", "info", "p50", "p95", "p99", "max"
    );
    for s in &r.operations {
        let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            o,
            "{:<24} {:<28} {:>6} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}  {}",
            s.f,
            s.pair,
            s.calls,
            s.ok,
            s.fail,
            s.info,
            ms(s.p50_ms),
            ms(s.p95_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            errors.join(" ")
        );
    }
    let c = &r.copies;
    let _ = writeln!(
        o,
        "\ncopies (simulated time, request to finish): {} — {} available, {} failed, {} cancelled, {} unfinished; p50 {} p95 {} p99 {} max {}",
        c.copies,
        c.available,
        c.failed,
        c.cancelled,
        c.unfinished,
        ms(c.p50_ms),
        ms(c.p95_ms),
        ms(c.p99_ms),
        ms(c.max_ms)
    );
    for (pair, (n, p50)) in &c.by_pair {
        let _ = writeln!(o, "  {pair:<28} {n:>5} copies, p50 {}", ms(*p50));
    }
    let peak = c
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(0)
        .max(1);
    for b in &c.histogram {
        let bar = "#".repeat(((b.count * 40) / peak) as usize);
        let _ = writeln!(
            o,
            "  {:>7}-{:<7} {:>5} {bar}",
            ms(b.from_ms as f64),
            ms(b.to_ms as f64),
            b.count
        );
    }
    let v = &r.convergence;
    let _ = writeln!(
        o,
        "\nconvergence after the final heal: {} — {} simulated, {} wall ({})",
        if v.reached { "reached" } else { "NOT reached" },
        ms(v.sim_ms as f64),
        ms(v.wall_ms as f64),
        v.note
    );
    if !r.faults.is_empty() {
        let _ = writeln!(
            o,
            "\nfault timeline (simulated time since the workload began)"
        );
        for f in &r.faults {
            match f.until_ms {
                Some(u) => {
                    let _ = writeln!(
                        o,
                        "  {:>8} .. {:<8} {}",
                        ms(f.at_ms as f64),
                        ms(u as f64),
                        f.description
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        "  {:>8}             {}",
                        ms(f.at_ms as f64),
                        f.description
                    );
                }
            }
        }
    }
    if !r.fingerprint.digests.is_empty() {
        let _ = writeln!(o, "\ndigests (replay the seed to compare)");
        let _ = writeln!(o, "  schedule {}", r.fingerprint.schedule);
        for d in &r.fingerprint.digests {
            let _ = writeln!(
                o,
                "  {:<16} seq {:>6} state {} log {}",
                d.region,
                d.region_seq,
                &d.region_digest[..d.region_digest.len().min(16)],
                &d.log_digest[..d.log_digest.len().min(16)]
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_text_report_has_every_section() {
        let r = super::super::tests::sample();
        let t = super::render(&r);
        for needle in [
            "== sample (seed 7): FAIL",
            "invariants",
            "FAIL no_acknowledged_write_lost",
            "history excerpt:",
            "copy_image",
            "us-east-1->eu-west-1",
            "InvalidAMIID.NotFound=5",
            "copies (simulated time",
            "convergence after the final heal: reached",
            "fault timeline",
            "partition us-east-1 <-> eu-west-1",
        ] {
            assert!(t.contains(needle), "{needle} missing from:\n{t}");
        }
    }
}
