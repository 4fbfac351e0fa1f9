//! `report.html`: the drill report as one self-contained page (inline CSS
//! and an inline SVG timeline, no scripts, no external assets), readable
//! offline and attachable to a ticket.
//!
//! Owns: the page's layout and the timeline drawing (scenario bands, one
//! lane per member coloured by role, fault/detection/promotion markers,
//! fences, write successes and failures, passive lag).
//! Must never: reference anything outside the file, or put unescaped text
//! from the cluster into the markup.

use super::report::Report;
use super::timeline::BUCKET_MS;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const WIDTH: f64 = 1160.0;
const LEFT: f64 = 110.0;
const LANE: f64 = 26.0;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn role_colour(role: &str) -> &'static str {
    match role {
        "active" => "#2e9d4a",
        "passive" => "#4a7fd1",
        "candidate" => "#e69b22",
        "fenced" => "#c9372c",
        "witness" => "#8a63c9",
        "down" => "#9a9a9a",
        _ => "#cccccc",
    }
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>understudy drill: {verdict}</title>\n<style>\
         body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}\
         h1 .pass{{color:#2e9d4a}} h1 .fail{{color:#c9372c}}\
         table{{border-collapse:collapse;margin:12px 0}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}}\
         th{{background:#f3f3f3}} td.fail{{color:#c9372c;font-weight:bold}} td.pass{{color:#2e9d4a;font-weight:bold}}\
         svg text{{font-size:11px;font-family:system-ui,sans-serif}}\
         .legend span{{display:inline-block;margin-right:14px;font-size:12px}}\
         .legend i{{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}}\
         </style></head><body>\n",
        verdict = esc(r.verdict)
    );
    let _ = writeln!(
        h,
        "<h1>understudy drill: <span class=\"{v}\">{V}</span></h1>\n<p>{mode} drill, {n} members ({members}){w} on {backend}; heartbeat {hb} ms, lease {lease} ms, failover {fo} ms; {dur:.1} s.</p>",
        v = esc(r.verdict),
        V = esc(&r.verdict.to_uppercase()),
        mode = esc(r.setup.mode),
        n = r.setup.members.len(),
        members = esc(&r.setup.members.join(", ")),
        w = if r.setup.witness {
            " incl. a witness"
        } else {
            ""
        },
        backend = esc(&r.setup.backend),
        hb = r.setup.heartbeat_ms,
        lease = r.setup.lease_timeout_ms,
        fo = r.setup.failover_timeout_ms,
        dur = r.duration_ms as f64 / 1000.0,
    );
    if !r.reasons.is_empty() {
        h.push_str("<h2>Why it failed</h2><ul>");
        for reason in &r.reasons {
            let _ = write!(h, "<li>{}</li>", esc(reason));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<h2>Scenarios</h2>\n<table><tr><th>scenario</th><th>result</th><th>detection</th><th>promotion</th><th>unavailable</th><th>lost</th><th>divergent</th><th>checksums</th><th>writes ok / all</th><th>active</th><th>epoch</th></tr>\n");
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    for s in &r.scenarios {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} &rarr; {}</td><td>{} &rarr; {}</td></tr>",
            esc(&s.name),
            s.verdict,
            s.verdict,
            ms(s.detection_ms),
            ms(s.promotion_ms),
            s.unavailable_ms,
            s.lost_changes,
            s.divergent_changes,
            if s.checksums_match { "match" } else { "DIFFER" },
            s.writes_committed,
            s.writes_committed + s.writes_failed,
            esc(s.old_active.as_deref().unwrap_or("?")),
            esc(s.new_active.as_deref().unwrap_or("?")),
            s.epoch_before.map_or("?".into(), |e| e.to_string()),
            s.epoch_after.map_or("?".into(), |e| e.to_string()),
        );
    }
    h.push_str("</table>\n<h2>Timeline</h2>\n<div class=\"legend\">");
    for role in [
        "active",
        "passive",
        "candidate",
        "fenced",
        "witness",
        "down",
    ] {
        let _ = write!(
            h,
            "<span><i style=\"background:{}\"></i>{role}</span>",
            role_colour(role)
        );
    }
    h.push_str("<span><i style=\"background:#2e9d4a\"></i>writes ok</span><span><i style=\"background:#c9372c\"></i>writes failed</span><span><i style=\"background:#d1495b;width:2px\"></i>fault</span><span><i style=\"background:#2e9d4a;width:2px\"></i>promoted</span></div>\n");
    h.push_str(&svg(r));
    h.push_str("\n<h2>Events</h2>\n<table><tr><th>t (ms)</th><th>scenario</th><th>event</th><th>member</th><th>detail</th></tr>\n");
    for e in &r.events {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.t_ms,
            esc(e.scenario.as_deref().unwrap_or("")),
            esc(&e.kind),
            esc(e.member.as_deref().unwrap_or("")),
            esc(&e.detail)
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

/// The inline SVG timeline.
fn svg(r: &Report) -> String {
    let end = r.duration_ms.max(1) as f64;
    let plot = WIDTH - LEFT - 10.0;
    let x = |t: u64| LEFT + (t as f64 / end) * plot;
    let members = &r.setup.members;
    let top = 48.0;
    let lanes_end = top + members.len() as f64 * LANE;
    let writes_mid = lanes_end + 40.0;
    let lag_top = writes_mid + 44.0;
    let lag_h = 60.0;
    let height = lag_top + lag_h + 42.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"drill timeline\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    // Scenario bands.
    for (i, sc) in r.scenarios.iter().enumerate() {
        let (x0, x1) = (x(sc.start_ms), x(sc.end_ms));
        let fill = if i % 2 == 0 { "#f4f6fb" } else { "#fbf7f0" };
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.1}\" y=\"14\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/><text x=\"{:.1}\" y=\"{}\" font-weight=\"bold\" class=\"scenario\">{} ({})</text>",
            (x1 - x0).max(1.0),
            height - 34.0,
            x0 + 4.0,
            // Short scenarios side by side: alternate rows so names do not overlap.
            if i % 2 == 0 { 26 } else { 40 },
            esc(&sc.name),
            sc.verdict
        );
    }
    // Member lanes: role segments from the monitor's samples.
    let mut by_member: BTreeMap<&str, Vec<(u64, &str, u64)>> = BTreeMap::new();
    for rs in &r.series.roles {
        by_member.entry(rs.member.as_str()).or_default().push((
            rs.t_ms,
            rs.role.as_str(),
            rs.epoch,
        ));
    }
    for (i, m) in members.iter().enumerate() {
        let y = top + i as f64 * LANE;
        let _ = writeln!(
            s,
            "<text x=\"8\" y=\"{:.1}\" class=\"member\">member {}</text>",
            y + 16.0,
            esc(m)
        );
        let samples = by_member.get(m.as_str()).cloned().unwrap_or_default();
        for (j, (t, role, epoch)) in samples.iter().enumerate() {
            let t_end = samples.get(j + 1).map_or(r.duration_ms, |n| n.0);
            let (x0, x1) = (x(*t), x(t_end));
            let _ = writeln!(
                s,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"18\" fill=\"{}\"><title>{} {role} (epoch {epoch}) from {t} ms</title></rect>",
                y + 3.0,
                (x1 - x0).max(0.5),
                role_colour(role),
                esc(m)
            );
        }
    }
    // Fences on the member lanes.
    for e in r.events.iter().filter(|e| e.kind == "fence") {
        if let Some(i) = e
            .member
            .as_ref()
            .and_then(|m| members.iter().position(|x| x == m))
        {
            let (cx, cy) = (x(e.t_ms), top + i as f64 * LANE + 1.0);
            let _ = writeln!(
                s,
                "<path d=\"M{:.1} {:.1} l5 -8 l-10 0 z\" fill=\"#c9372c\"><title>fence: {}</title></path>",
                cx,
                cy + 1.0,
                esc(&e.detail)
            );
        }
    }
    // Writes: ok above the axis, failed below, per bucket.
    let max_w = r
        .series
        .writes
        .iter()
        .map(|b| b.ok.max(b.failed))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bw = (plot * BUCKET_MS as f64 / end).max(0.5);
    let _ = writeln!(
        s,
        "<text x=\"8\" y=\"{:.1}\">writes</text><line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{writes_mid}\" y2=\"{writes_mid}\" stroke=\"#999\"/>",
        writes_mid + 4.0,
        LEFT + plot
    );
    for b in &r.series.writes {
        let bx = x(b.t_ms);
        if b.ok > 0 {
            let hgt = 28.0 * b.ok as f64 / max_w;
            let _ = writeln!(
                s,
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{hgt:.1}\" fill=\"#2e9d4a\"><title>{} ok at {} ms</title></rect>",
                writes_mid - hgt,
                b.ok,
                b.t_ms
            );
        }
        if b.failed > 0 {
            let hgt = 28.0 * b.failed as f64 / max_w;
            let _ = writeln!(
                s,
                "<rect x=\"{bx:.1}\" y=\"{writes_mid:.1}\" width=\"{bw:.1}\" height=\"{hgt:.1}\" fill=\"#c9372c\"><title>{} failed at {} ms</title></rect>",
                b.failed, b.t_ms
            );
        }
    }
    // Lag of the passives (ms), one polyline each.
    let max_lag = r
        .series
        .lag
        .iter()
        .map(|l| l.lag_ms)
        .max()
        .unwrap_or(0)
        .max(10) as f64;
    let _ = writeln!(
        s,
        "<text x=\"8\" y=\"{:.1}\">lag (max {max_lag} ms)</text><line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>",
        lag_top + lag_h / 2.0,
        LEFT + plot,
        lag_top + lag_h,
        lag_top + lag_h
    );
    let mut lag_by: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for l in &r.series.lag {
        lag_by
            .entry(l.member.as_str())
            .or_default()
            .push((l.t_ms, l.lag_ms));
    }
    let palette = [
        "#4a7fd1", "#e69b22", "#8a63c9", "#2a9d8f", "#d1495b", "#6c757d", "#264653",
    ];
    for (k, (m, pts)) in lag_by.iter().enumerate() {
        let points: Vec<String> = pts
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    x(*t),
                    lag_top + lag_h - lag_h * (*v as f64 / max_lag)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>lag of {}</title></polyline>",
            palette[k % palette.len()],
            points.join(" "),
            esc(m)
        );
    }
    // Fault, detection and promotion markers across every lane.
    let mut label_row = 0;
    for e in &r.events {
        let (colour, label) = match e.kind.as_str() {
            "fault" => ("#d1495b", format!("fault: {}", e.detail)),
            "detected" => ("#e69b22", "detected".to_string()),
            "promoted" => (
                "#2e9d4a",
                format!("promoted {}", e.member.as_deref().unwrap_or("")),
            ),
            "injected" => ("#000000", "injected loss".to_string()),
            _ => continue,
        };
        let ex = x(e.t_ms);
        let _ = writeln!(
            s,
            "<line x1=\"{ex:.1}\" x2=\"{ex:.1}\" y1=\"30\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"1.5\" stroke-dasharray=\"4 2\"><title>{}</title></line>",
            lag_top + lag_h,
            esc(&e.detail)
        );
        if e.kind != "detected" {
            let ly = lag_top + lag_h + 12.0 + (label_row % 3) as f64 * 11.0;
            label_row += 1;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{ly:.1}\" fill=\"{colour}\" class=\"event\">{}</text>",
                ex + 2.0,
                esc(&label)
            );
        }
    }
    // Time axis ticks every 5 s.
    let mut t = 0;
    while t <= r.duration_ms {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"10\" fill=\"#666\">{} s</text>",
            x(t),
            t / 1000
        );
        t += 5000;
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::report::{Report, ScenarioResult, Setup};
    use crate::drill::timeline::Timeline;

    #[test]
    fn the_page_is_self_contained_and_escapes_text() {
        let tl = Timeline::new();
        tl.set_scenario(Some("kill-active"));
        tl.event("fault", Some("a"), "kill -9 of <a>");
        tl.role(std::time::Instant::now(), "a", "down", 1);
        tl.write(std::time::Instant::now(), true);
        let mut s = ScenarioResult::new("kill-active", 0);
        s.checksums_match = true;
        s.judge();
        let r = Report::new(
            Setup {
                mode: "local",
                backend: "sqlite".into(),
                members: vec!["a".into(), "b".into()],
                witness: true,
                heartbeat_ms: 200,
                lease_timeout_ms: 1000,
                failover_timeout_ms: 1500,
            },
            0,
            10,
            vec![s],
            vec![],
            tl.recorded(),
        );
        let page = render(&r);
        assert!(page.contains("<svg"));
        assert!(page.contains("kill -9 of &lt;a&gt;"));
        assert!(!page.contains("<a>"));
        assert!(!page.contains("src=") && !page.contains("href=") && !page.contains("<script"));
    }
}
