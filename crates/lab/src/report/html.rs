//! The report as one self-contained HTML page: inline CSS, inline SVG, no script, no external
//! resource of any kind (fonts are the reader's own sans-serif), so the file can be attached to
//! a design review or opened from a CI artifact as it is.
//!
//! Charts:
//! - **latency over simulated time**: one dot per call (wall ms, log scale), coloured by
//!   outcome; fault bands (partitions, degraded links, nodes down or paused) as shaded
//!   rectangles with their label, moments (heals, restarts, skews) as dashed lines;
//! - **CopyImage completion time**: the histogram of [`super::CopyStats`].

use std::fmt::Write as _;

use super::{escape, Report};

const W: f64 = 1200.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.pass{color:#137333}.fail{color:#b3261e}.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff}
.badge.pass{background:#137333}.badge.fail{background:#b3261e}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #edf0f4;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;border:1px solid #e3e7ed;padding:8px;overflow-x:auto;font-size:12px}
.muted{color:#5f6b7a;font-size:13px}svg{background:#fcfcfd;border:1px solid #e3e7ed}
.legend span{display:inline-block;margin-right:14px;font-size:13px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
"#;

fn fmt_ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn band_color(action: &str) -> &'static str {
    match action {
        "partition" => "#e53935",
        "link" => "#fb8c00",
        "kill" => "#6d4c41",
        "pause" => "#8e24aa",
        _ => "#1e88e5",
    }
}

fn outcome_color(o: &str) -> &'static str {
    match o {
        "ok" => "#1a73e8",
        "fail" => "#d93025",
        _ => "#f9ab00",
    }
}

/// The latency-over-time chart.
pub fn latency_chart(r: &Report) -> String {
    let mut s = String::new();
    let x_max = r
        .points
        .iter()
        .map(|p| p.at_ms)
        .max()
        .unwrap_or(0)
        .max(r.duration_ms)
        .max(1) as f64;
    let y_max = r
        .points
        .iter()
        .map(|p| p.latency_ms)
        .fold(1.0_f64, f64::max);
    // Log scale from 0.1 ms to the next power of ten above the maximum.
    let y_lo = 0.1_f64.log10();
    let y_hi = 10f64.powf(y_max.log10().ceil()).max(10.0).log10();
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |ms: f64| LEFT + ms / x_max * pw;
    let y = |lat: f64| {
        let v = lat.max(0.1).log10();
        TOP + ph - (v - y_lo) / (y_hi - y_lo) * ph
    };
    let _ = write!(
        s,
        r#"<svg class="chart" id="latency-chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="latency over simulated time">"#
    );
    // Fault bands first, under the dots.
    for f in &r.faults {
        if let Some(until) = f.until_ms {
            let (x0, x1) = (x(f.at_ms as f64), x(until as f64));
            let _ = write!(
                s,
                r#"<g class="fault-band" data-action="{a}"><rect x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{ph}" fill="{c}" fill-opacity="0.13"/><text x="{tx:.1}" y="{ty}" font-size="11" fill="{c}">{label}</text><title>{label}</title></g>"#,
                a = escape(&f.action),
                w = (x1 - x0).max(1.0),
                c = band_color(&f.action),
                tx = x0 + 3.0,
                ty = TOP + 12.0,
                label = escape(&f.description)
            );
        } else {
            let x0 = x(f.at_ms as f64);
            let _ = write!(
                s,
                r##"<g class="fault-marker" data-action="{a}"><line x1="{x0:.1}" y1="{TOP}" x2="{x0:.1}" y2="{yb}" stroke="#455a64" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty}" font-size="11" fill="#455a64">{label}</text><title>{label}</title></g>"##,
                a = escape(&f.action),
                yb = TOP + ph,
                tx = x0 + 3.0,
                ty = TOP + ph - 6.0,
                label = escape(&f.description)
            );
        }
    }
    // Axes and grid.
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#8a94a3"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{yb}" stroke="#8a94a3"/>"##,
        yb = TOP + ph,
        xr = LEFT + pw
    );
    let mut decade = y_lo.ceil() as i32;
    while f64::from(decade) <= y_hi {
        let v = 10f64.powi(decade);
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{xr}" y2="{yy:.1}" stroke="#e6e9ee"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#5f6b7a">{label}</text>"##,
            xr = LEFT + pw,
            tx = LEFT - 6.0,
            ty = yy + 4.0,
            label = fmt_ms(v)
        );
        decade += 1;
    }
    let ticks = 10;
    for k in 0..=ticks {
        let ms = x_max * f64::from(k) / f64::from(ticks);
        let xx = x(ms);
        let _ = write!(
            s,
            r##"<text x="{xx:.1}" y="{ty}" font-size="11" text-anchor="middle" fill="#5f6b7a">{label}</text>"##,
            ty = TOP + ph + 16.0,
            label = format_args!("{:.0}s", ms / 1000.0)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{cx}" y="{ty}" font-size="12" text-anchor="middle" fill="#1d2430">simulated time since the workload began</text><text x="14" y="{cy}" font-size="12" text-anchor="middle" fill="#1d2430" transform="rotate(-90 14 {cy})">call latency (wall, log)</text>"##,
        cx = LEFT + pw / 2.0,
        ty = H - 8.0,
        cy = TOP + ph / 2.0
    );
    // Dots.
    let _ = write!(s, r#"<g class="points">"#);
    for p in &r.points {
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{}" fill-opacity="0.7"/>"#,
            x(p.at_ms as f64),
            y(p.latency_ms),
            outcome_color(&p.outcome)
        );
    }
    s.push_str("</g></svg>");
    s
}

/// The copy completion-time histogram.
pub fn histogram_chart(r: &Report) -> String {
    let h = 260.0;
    let ph = h - TOP - BOTTOM;
    let pw = W - LEFT - RIGHT;
    let mut s = format!(
        r#"<svg class="chart" id="completion-histogram" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="CopyImage completion time histogram">"#
    );
    let bars = &r.copies.histogram;
    let peak = bars.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#8a94a3"/>"##,
        yb = TOP + ph,
        xr = LEFT + pw
    );
    if bars.is_empty() {
        let _ = write!(
            s,
            r##"<text x="{cx}" y="{cy}" font-size="13" text-anchor="middle" fill="#5f6b7a">no finished copies</text>"##,
            cx = LEFT + pw / 2.0,
            cy = TOP + ph / 2.0
        );
    }
    let bw = pw / bars.len().max(1) as f64;
    for (i, b) in bars.iter().enumerate() {
        let bh = b.count as f64 / peak * ph;
        let x0 = LEFT + i as f64 * bw;
        let _ = write!(
            s,
            r##"<g class="bar"><rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{bh:.1}" fill="#1a73e8"/><title>{from}–{to}: {n}</title><text x="{cx:.1}" y="{ty:.1}" font-size="11" text-anchor="middle" fill="#1d2430">{n}</text><text x="{cx:.1}" y="{lx:.1}" font-size="10" text-anchor="middle" fill="#5f6b7a">{from_s}</text></g>"##,
            y0 = TOP + ph - bh,
            w = (bw - 2.0).max(1.0),
            from = fmt_ms(b.from_ms as f64),
            to = fmt_ms(b.to_ms as f64),
            n = b.count,
            cx = x0 + bw / 2.0,
            ty = TOP + ph - bh - 3.0,
            lx = TOP + ph + 14.0,
            from_s = format_args!("{:.0}s", b.from_ms as f64 / 1000.0)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{cx}" y="{ty}" font-size="12" text-anchor="middle" fill="#1d2430">simulated time from CopyImage to available / failed</text></svg>"##,
        cx = LEFT + pw / 2.0,
        ty = h - 10.0
    );
    s
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let status = if r.pass { "pass" } else { "fail" };
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>amisim chaos run: {name} (seed {seed})</title><style>{STYLE}</style></head><body>",
        name = escape(&r.experiment),
        seed = r.seed
    );
    let _ = write!(
        o,
        r#"<h1>{name} <span class="badge {status}">{upper}</span></h1><div class="muted">seed {seed} · {calls} calls · {dur:.0} simulated s · {wall:.1} wall s</div><p>{desc}</p>"#,
        name = escape(&r.experiment),
        upper = status.to_uppercase(),
        seed = r.seed,
        calls = r.calls,
        dur = r.duration_ms as f64 / 1000.0,
        wall = r.wall_ms as f64 / 1000.0,
        desc = escape(&r.description)
    );
    // Verdicts.
    o.push_str(
        "<h2>Invariants</h2><table><tr><th>verdict</th><th>invariant</th><th>summary</th></tr>",
    );
    for v in &r.verdicts {
        let cls = if v.pass { "pass" } else { "fail" };
        let _ = write!(
            o,
            r#"<tr><td class="{cls}">{}</td><td>{}</td><td>{}</td></tr>"#,
            if v.pass { "pass" } else { "FAIL" },
            escape(&v.name),
            escape(&v.summary)
        );
    }
    o.push_str("</table>");
    for v in r.verdicts.iter().filter(|v| !v.pass) {
        let _ = write!(
            o,
            "<h3 class=\"fail\">{} — violations</h3><pre>",
            escape(&v.name)
        );
        for line in v.violations.iter().take(20) {
            let _ = writeln!(o, "{}", escape(line));
        }
        o.push_str("</pre>");
        if !v.excerpt.is_empty() {
            o.push_str(
                "<div class=\"muted\">smallest history excerpt</div><pre class=\"excerpt\">",
            );
            for e in &v.excerpt {
                let _ = writeln!(
                    o,
                    "{}",
                    escape(&serde_json::to_string(e).unwrap_or_default())
                );
            }
            o.push_str("</pre>");
        }
    }
    // Charts.
    o.push_str("<h2>Latency over time</h2><div class=\"legend\">");
    for (label, color) in [("ok", "#1a73e8"), ("fail", "#d93025"), ("info", "#f9ab00")] {
        let _ = write!(
            o,
            r#"<span><i class="sw" style="background:{color}"></i>{label}</span>"#
        );
    }
    for (label, color) in [
        ("partition", band_color("partition")),
        ("degraded link", band_color("link")),
        ("node down", band_color("kill")),
        ("node paused", band_color("pause")),
    ] {
        let _ = write!(
            o,
            r#"<span><i class="sw" style="background:{color};opacity:.35"></i>{label}</span>"#
        );
    }
    o.push_str("</div>");
    o.push_str(&latency_chart(r));
    o.push_str("<h2>CopyImage completion time</h2>");
    let c = &r.copies;
    let _ = write!(
        o,
        r#"<div class="muted">{} copies: {} available, {} failed, {} cancelled, {} unfinished · p50 {} · p95 {} · p99 {} · max {}</div>"#,
        c.copies,
        c.available,
        c.failed,
        c.cancelled,
        c.unfinished,
        fmt_ms(c.p50_ms),
        fmt_ms(c.p95_ms),
        fmt_ms(c.p99_ms),
        fmt_ms(c.max_ms)
    );
    o.push_str(&histogram_chart(r));
    if !c.by_pair.is_empty() {
        o.push_str(
            "<table><tr><th>pair</th><th class=\"n\">copies</th><th class=\"n\">p50</th></tr>",
        );
        for (pair, (n, p50)) in &c.by_pair {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td class="n">{n}</td><td class="n">{}</td></tr>"#,
                escape(pair),
                fmt_ms(*p50)
            );
        }
        o.push_str("</table>");
    }
    // Operations.
    o.push_str("<h2>Latency and errors per operation and region pair</h2><table><tr><th>operation</th><th>region / pair</th><th class=\"n\">calls</th><th class=\"n\">ok</th><th class=\"n\">fail</th><th class=\"n\">info</th><th class=\"n\">p50</th><th class=\"n\">p95</th><th class=\"n\">p99</th><th class=\"n\">max</th><th>errors by code</th></tr>");
    for s in &r.operations {
        let errors: Vec<String> = s
            .errors
            .iter()
            .map(|(k, v)| format!("{}={v}", escape(k)))
            .collect();
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            escape(&s.f),
            escape(&s.pair),
            s.calls,
            s.ok,
            s.fail,
            s.info,
            fmt_ms(s.p50_ms),
            fmt_ms(s.p95_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms),
            errors.join(" ")
        );
    }
    o.push_str("</table>");
    // Convergence and timeline.
    let v = &r.convergence;
    let _ = write!(
        o,
        "<h2>Convergence after the final heal</h2><p class=\"{}\">{} — {} simulated, {} wall. {}</p>",
        if v.reached { "pass" } else { "fail" },
        if v.reached { "reached" } else { "NOT reached" },
        fmt_ms(v.sim_ms as f64),
        fmt_ms(v.wall_ms as f64),
        escape(&v.note)
    );
    o.push_str("<h2>Fault timeline</h2><table><tr><th class=\"n\">from</th><th class=\"n\">until</th><th>fault</th></tr>");
    for f in &r.faults {
        let _ = write!(
            o,
            r#"<tr><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            fmt_ms(f.at_ms as f64),
            f.until_ms.map(|u| fmt_ms(u as f64)).unwrap_or_default(),
            escape(&f.description)
        );
    }
    o.push_str("</table>");
    if !r.fingerprint.digests.is_empty() {
        o.push_str("<h2>Digests</h2><table><tr><th>region</th><th class=\"n\">seq</th><th>state digest</th><th>log digest</th></tr>");
        for d in &r.fingerprint.digests {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td class="n">{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>"#,
                escape(&d.region),
                d.region_seq,
                escape(&d.region_digest),
                escape(&d.log_digest)
            );
        }
        let _ = write!(
            o,
            "</table><div class=\"muted\">schedule <code>{}</code></div>",
            escape(&r.fingerprint.schedule)
        );
    }
    o.push_str("<h2>Parameters</h2><pre>");
    for p in &r.parameters {
        let _ = writeln!(o, "{}", escape(p));
    }
    let _ = writeln!(o, "seed {}", r.seed);
    o.push_str("</pre></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open and close tags of `name` balance.
    fn balanced(html: &str, name: &str) -> bool {
        let open =
            html.matches(&format!("<{name}>")).count() + html.matches(&format!("<{name} ")).count();
        let close = html.matches(&format!("</{name}>")).count();
        open == close
    }

    #[test]
    fn the_page_is_well_formed_self_contained_and_has_the_charts() {
        let r = crate::report::tests::sample();
        let html = render(&r);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        for tag in [
            "html", "head", "body", "table", "tr", "td", "svg", "g", "pre", "h2", "text",
        ] {
            assert!(balanced(&html, tag), "unbalanced <{tag}>");
        }
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains("id=\"latency-chart\""));
        assert!(html.contains("id=\"completion-histogram\""));
        // The partition and the kill are bands; the heal and the restart are markers.
        assert_eq!(html.matches("class=\"fault-band\"").count(), 2);
        assert!(html.contains("data-action=\"partition\""));
        assert!(html.matches("class=\"fault-marker\"").count() >= 2);
        assert!(html.matches("<circle").count() >= 40);
        // Escaped text, and nothing fetched from elsewhere (the SVG namespace is a name).
        assert!(html.contains("a &lt;test&gt; &amp; more"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("<link"));
        let external = html
            .replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
            .contains("http");
        assert!(!external, "the page refers to an external resource");
        assert!(html.contains("smallest history excerpt"));
    }
}
