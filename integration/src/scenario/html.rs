//! The HTML report: one self-contained page with the verdict, the tables
//! and SVG charts drawn by `plotters`, all over time: per-backend shares
//! stacked per cluster, latency per flow, statuses and 429s, reported
//! utilization, in-flight requests and the load balancer's weights. Every
//! chart marks the backend events and the traffic's flow starts, stops and
//! phase boundaries, keeps its legend beside the plot, and gives each
//! point a hover title with its value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::results::{RunResult, Totals};

pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a chart; `None` points leave a gap.
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) color: RGBColor,
    pub(crate) points: Vec<Option<(f64, f64)>>,
}

pub(crate) enum YAxis {
    Percent,
    Plain,
}

/// A vertical mark on a chart's time axis.
pub(crate) struct Mark {
    pub(crate) t: f64,
    pub(crate) label: String,
    /// Traffic (flow start/stop, phase boundary: blue dots) rather than a
    /// backend event (grey dashes).
    pub(crate) traffic: bool,
}

/// How a chart draws its lines.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Lines,
    /// Stacked areas (shares that add up to 1).
    Stacked,
}

/// A chart as an SVG string: the plot on the left, the legend in its own
/// column on the right (never over the data), vertical `marks`, and a
/// hover title on every point (`<title>`: series, time, value).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chart(
    title: &str,
    y_desc: &str,
    x_max: f64,
    y_max: f64,
    axis: YAxis,
    lines: &[Line],
    marks: &[Mark],
    style: Style,
) -> Result<String> {
    let mut svg = String::new();
    let mut hover: Vec<(i32, i32, String)> = Vec::new();
    let y_max = if y_max.is_finite() && y_max > 0.0 {
        y_max
    } else {
        1.0
    };
    let fmt_y = move |v: &f64| match axis {
        YAxis::Percent => format!("{:.0}%", v * 100.0),
        YAxis::Plain if y_max < 2.0 => format!("{v:.2}"),
        YAxis::Plain if y_max < 20.0 => format!("{v:.1}"),
        YAxis::Plain => format!("{v:.0}"),
    };
    // Stacked: each line becomes the running sum of the lines up to it.
    let drawn: Vec<Line> = match style {
        Style::Lines => lines
            .iter()
            .map(|l| Line {
                name: l.name.clone(),
                color: l.color,
                points: l.points.clone(),
            })
            .collect(),
        Style::Stacked => {
            let mut below: Vec<f64> = Vec::new();
            lines
                .iter()
                .map(|l| {
                    below.resize(l.points.len(), 0.0);
                    let points = l
                        .points
                        .iter()
                        .zip(below.iter_mut())
                        .map(|(p, b)| {
                            p.map(|(t, y)| {
                                *b += y;
                                (t, *b)
                            })
                        })
                        .collect();
                    Line {
                        name: l.name.clone(),
                        color: l.color,
                        points,
                    }
                })
                .collect()
        }
    };
    {
        let root = SVGBackend::with_string(&mut svg, (1080, 330)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (plot, legend) = root.split_horizontally(860);
        let x_max = if x_max > 0.0 { x_max } else { 1.0 };
        let mut c = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("time (s)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&fmt_y)
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        // Stacked areas from the top layer down, so each lower one shows.
        if style == Style::Stacked {
            for l in drawn.iter().rev() {
                let pts: Vec<(f64, f64)> = l.points.iter().flatten().copied().collect();
                c.draw_series(AreaSeries::new(pts, 0.0, l.color.mix(0.75)))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        for (i, m) in marks.iter().enumerate() {
            let (color, dash) = if m.traffic {
                (RGBColor(31, 90, 180), (2, 4))
            } else {
                (RGBColor(90, 90, 90), (6, 4))
            };
            c.draw_series(DashedLineSeries::new(
                vec![(m.t, 0.0), (m.t, y_max)],
                dash.0,
                dash.1,
                color.stroke_width(1),
            ))
            .map_err(|e| anyhow!("{e}"))?;
            // Labels step down so neighbours do not overwrite each other.
            let y = y_max * (0.97 - 0.07 * (i % 4) as f64);
            c.draw_series(std::iter::once(Text::new(
                format!(" {}", m.label),
                (m.t, y),
                ("sans-serif", 11).into_font().color(&color),
            )))
            .map_err(|e| anyhow!("{e}"))?;
        }
        for l in &drawn {
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for p in &l.points {
                match p {
                    Some(p) if p.0.is_finite() && p.1.is_finite() => {
                        if let Some(run) = runs.last_mut() {
                            run.push(*p);
                        }
                    }
                    _ => runs.push(Vec::new()),
                }
            }
            for run in runs.into_iter().filter(|r| !r.is_empty()) {
                let stroke = l
                    .color
                    .stroke_width(if style == Style::Stacked { 1 } else { 2 });
                if run.len() == 1 {
                    c.draw_series(std::iter::once(Circle::new(run[0], 2, stroke.filled())))
                        .map_err(|e| anyhow!("{e}"))?;
                } else {
                    c.draw_series(LineSeries::new(run, stroke))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
        }
        // Hover titles: the value of each series at each point (stacked:
        // the series' own value, not the running sum).
        for (l, own) in drawn.iter().zip(lines) {
            for (p, o) in l.points.iter().zip(&own.points).take(2000) {
                if let (Some((t, y)), Some((_, v))) = (p, o) {
                    let (px, py) = c.backend_coord(&(*t, *y));
                    hover.push((px, py, format!("{} at {t:.1} s: {}", l.name, fmt_y(v))));
                }
            }
        }
        for (i, l) in drawn.iter().enumerate() {
            let y = 40 + 20 * i as i32;
            legend
                .draw(&PathElement::new(
                    vec![(8, y), (28, y)],
                    l.color.stroke_width(4),
                ))
                .map_err(|e| anyhow!("{e}"))?;
            legend
                .draw(&Text::new(l.name.clone(), (34, y - 7), ("sans-serif", 13)))
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let mut titles = String::new();
    for (x, y, text) in hover {
        let _ = write!(
            titles,
            "<circle cx=\"{x}\" cy=\"{y}\" r=\"5\" fill=\"#000\" fill-opacity=\"0\"><title>{}</title></circle>",
            esc(&text)
        );
    }
    if let Some(at) = svg.rfind("</svg>") {
        svg.insert_str(at, &titles);
    }
    Ok(svg)
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / d as f64)
    }
}

fn totals_row(out: &mut String, name: &str, load: &str, t: &Totals) {
    let d = t.sent;
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>{}</td><td>{d}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td></tr>",
        esc(name),
        esc(load),
        t.rps,
        pct(t.status_range(200, 299), d),
        pct(t.status(429), d),
        pct(t.status_range(400, 499) - t.status(429), d),
        pct(t.status_range(500, 599), d),
        pct(t.errors(), d),
        t.p50_ms,
        t.p99_ms,
        t.max_ms,
    );
}

fn status_color(class: &str) -> RGBColor {
    match class {
        "2xx" => RGBColor(44, 160, 44),
        "429" => RGBColor(255, 127, 14),
        "4xx" => RGBColor(148, 103, 189),
        "5xx" => RGBColor(214, 39, 40),
        "3xx" => RGBColor(23, 190, 207),
        _ => RGBColor(30, 30, 30),
    }
}

/// The charts, in page order: (title, svg).
pub fn charts(r: &RunResult) -> Result<Vec<(String, String)>> {
    let s = &r.series;
    let x_max = s.t.last().map_or(1.0, |t| t + s.bucket_s / 2.0);
    // Backend events and the traffic's own marks (flows, phases).
    let mut marks: Vec<Mark> = r
        .events
        .iter()
        .map(|e| Mark {
            t: e.at_s,
            label: format!("{}: {}", e.backend, e.action),
            traffic: false,
        })
        .chain(s.marks.iter().map(|(t, label)| Mark {
            t: *t,
            label: label.clone(),
            traffic: true,
        }))
        .collect();
    marks.sort_by(|a, b| a.t.total_cmp(&b.t));
    let color_of = |name: &str| {
        let i = r
            .backends
            .iter()
            .position(|b| b.name == name)
            .unwrap_or(r.backends.len());
        PALETTE[i % PALETTE.len()]
    };
    let over_t = |v: &[Option<f64>]| -> Vec<Option<(f64, f64)>> {
        s.t.iter().zip(v).map(|(t, y)| y.map(|y| (*t, y))).collect()
    };
    // One line per backend from `[t, value]` samples, and the largest value.
    let sampled_lines = |series: &BTreeMap<String, Vec<[f64; 2]>>| -> (Vec<Line>, f64) {
        let lines = series
            .iter()
            .map(|(b, v)| Line {
                name: b.clone(),
                color: color_of(b),
                points: v.iter().map(|p| Some((p[0], p[1]))).collect(),
            })
            .collect();
        let y = series.values().flatten().fold(0.0f64, |a, p| a.max(p[1]));
        (lines, y)
    };
    let mut out = Vec::new();

    // Shares: stacked per cluster (they add up to 100% of the cluster).
    let mut clusters: Vec<&str> = Vec::new();
    for b in &r.backends {
        if s.share.contains_key(&b.name) && !clusters.contains(&b.cluster.as_str()) {
            clusters.push(&b.cluster);
        }
    }
    for cluster in clusters {
        let lines: Vec<Line> = r
            .backends
            .iter()
            .filter(|b| b.cluster == cluster)
            .filter_map(|b| {
                s.share.get(&b.name).map(|v| Line {
                    name: b.name.clone(),
                    color: color_of(&b.name),
                    points: over_t(v),
                })
            })
            .collect();
        out.push((
            format!("Shares of cluster {cluster} over time"),
            chart(
                &format!("Share of cluster {cluster}'s responses per backend (stacked)"),
                "share of the cluster",
                x_max,
                1.0,
                YAxis::Percent,
                &lines,
                &marks,
                Style::Stacked,
            )?,
        ));
    }

    let lat_colors = [
        ("p50", RGBColor(44, 160, 44)),
        ("p99", RGBColor(214, 39, 40)),
    ];
    for (flow, per) in &s.flow_latency_ms {
        let lines: Vec<Line> = lat_colors
            .iter()
            .filter_map(|(p, color)| {
                per.get(*p).map(|v| Line {
                    name: (*p).to_string(),
                    color: *color,
                    points: over_t(v),
                })
            })
            .collect();
        let y = per
            .values()
            .flatten()
            .flatten()
            .fold(0.0f64, |a, b| a.max(*b));
        out.push((
            format!("Latency of flow {flow}"),
            chart(
                &format!("Flow {flow}: client latency p50 and p99 (ms)"),
                "latency (ms)",
                x_max,
                y * 1.1,
                YAxis::Plain,
                &lines,
                &marks,
                Style::Lines,
            )?,
        ));
    }

    let lines: Vec<Line> = ["2xx", "3xx", "429", "4xx", "5xx", "error"]
        .iter()
        .filter_map(|class| {
            let v = s.status_rps.get(*class)?;
            if *class != "2xx" && v.iter().all(|x| *x == 0.0) {
                return None;
            }
            Some(Line {
                name: if *class == "4xx" {
                    "4xx (not 429)".into()
                } else {
                    (*class).to_string()
                },
                color: status_color(class),
                points: s.t.iter().zip(v).map(|(t, y)| Some((*t, *y))).collect(),
            })
        })
        .collect();
    let y = s
        .status_rps
        .values()
        .flatten()
        .fold(0.0f64, |a, b| a.max(*b));
    out.push((
        "Status codes and 429s over time".to_string(),
        chart(
            "Responses per second by status (429 = rate limited)",
            "responses/s",
            x_max,
            y * 1.1,
            YAxis::Plain,
            &lines,
            &marks,
            Style::Lines,
        )?,
    ));

    let (lines, y) = sampled_lines(&s.utilization);
    out.push((
        "Reported utilization per backend".to_string(),
        chart(
            "Utilization each backend reports (ORCA), mean per bucket",
            "utilization (1 = busy)",
            x_max,
            (y * 1.1).max(0.1),
            YAxis::Plain,
            &lines,
            &marks,
            Style::Lines,
        )?,
    ));

    let (lines, y) = sampled_lines(&s.in_flight);
    out.push((
        "Requests in flight per backend".to_string(),
        chart(
            "Requests in flight at each backend (queued + served), mean per bucket",
            "requests",
            x_max,
            (y * 1.1).max(1.0),
            YAxis::Plain,
            &lines,
            &marks,
            Style::Lines,
        )?,
    ));

    if !s.weights.is_empty() {
        let (lines, y) = sampled_lines(&s.weights);
        out.push((
            "Load-balancer weights".to_string(),
            chart(
                "Load balancer weights per endpoint (gRFC A58: qps / utilization)",
                "weight (req/s per unit of utilization)",
                x_max,
                (y * 1.1).max(0.1),
                YAxis::Plain,
                &lines,
                &marks,
                Style::Lines,
            )?,
        ));
    }
    Ok(out)
}

const STYLE: &str = r#"
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1120px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.verdict { display: inline-block; padding: 4px 12px; border-radius: 4px; color: #fff; font-weight: bold; }
.pass { background: #2ca02c; } .fail { background: #d62728; } .skip { color: #888; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
td.l { text-align: left; } tr.bad td { background: #fde8e8; }
.meta td { text-align: left; } .chart { margin: 12px 0; } .desc { color: #555; max-width: 900px; }
code { background: #f4f4f4; padding: 1px 4px; }
"#;

/// The whole page.
pub fn render(r: &RunResult) -> Result<String> {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Switchyard scenario {}</title><style>{STYLE}</style></head><body>",
        esc(&r.scenario)
    );
    let (cls, verdict) = if r.passed {
        ("pass", "PASSED")
    } else {
        ("fail", "FAILED")
    };
    let _ = writeln!(
        h,
        "<h1>Scenario <code>{}</code> <span class=\"verdict {cls}\">{verdict}</span></h1>",
        esc(&r.scenario)
    );
    if !r.description.is_empty() {
        let _ = writeln!(h, "<p class=\"desc\">{}</p>", esc(&r.description));
    }
    let _ = writeln!(h, "<table class=\"meta\">");
    let mut meta = |k: &str, v: String| {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    meta("mode", r.mode.clone());
    meta(
        "Envoy",
        format!("{} ({} runtime)", r.envoy_version, r.runtime),
    );
    meta(
        "traffic",
        format!(
            "{:.1} s planned, {:.1} s run, time scale {}",
            r.planned_s, r.elapsed_s, r.scale
        ),
    );
    meta(
        "requests",
        format!(
            "{} sent, {} answered, {:.0} req/s",
            r.totals.sent, r.totals.completed, r.totals.rps
        ),
    );
    if let Some(f) = &r.file {
        meta("scenario file", f.clone());
    }
    for (k, v) in &r.files {
        meta(k, v.clone());
    }
    h.push_str("</table>\n");

    if !r.assertions.is_empty() {
        h.push_str("<h2>Assertions</h2>\n<table><tr><th>assertion</th><th>result</th><th>measured</th><th>expected</th></tr>\n");
        for a in &r.assertions {
            let (row, res) = if a.skipped {
                ("", "<span class=\"skip\">skipped</span>")
            } else if a.passed {
                ("", "<span class=\"verdict pass\">ok</span>")
            } else {
                (" class=\"bad\"", "<span class=\"verdict fail\">FAIL</span>")
            };
            let _ = writeln!(
                h,
                "<tr{row}><td>{}</td><td class=\"l\">{res}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                esc(&a.label),
                esc(&a.measured_text),
                esc(&a.expected)
            );
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Charts</h2>\n");
    for (title, svg) in charts(r)? {
        let _ = writeln!(
            h,
            "<div class=\"chart\" title=\"{}\">{svg}</div>",
            esc(&title)
        );
    }

    h.push_str("<h2>Traffic</h2>\n<table><tr><th>flow / phase</th><th>load</th><th>requests</th><th>req/s</th><th>2xx</th><th>429</th><th>4xx</th><th>5xx</th><th>errors</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>\n");
    for f in &r.flows {
        totals_row(&mut h, &f.name, "", &f.totals);
        if f.phases.len() > 1 {
            for p in &f.phases {
                totals_row(&mut h, &format!("· {}", p.name), &p.load, &p.totals);
            }
        } else if let Some(p) = f.phases.first() {
            let _ = writeln!(
                h,
                "<tr><td>· {}</td><td>{}</td><td colspan=\"10\"></td></tr>",
                esc(&p.name),
                esc(&p.load)
            );
        }
    }
    totals_row(&mut h, "all", "", &r.totals);
    h.push_str("</table>\n");

    h.push_str("<h2>Backends</h2>\n<table><tr><th>backend</th><th>cluster</th><th>capacity</th><th>latency</th><th>latency after events</th><th>share of its cluster</th><th>served</th><th>503s</th><th>max in flight</th><th>mean reported util</th></tr>\n");
    for b in &r.backends {
        let after = if b.latency_after.is_empty() {
            "-".to_string()
        } else {
            b.latency_after.join("; ")
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.name),
            esc(&b.cluster),
            b.capacity.map_or("∞".into(), |c| c.to_string()),
            esc(&b.latency),
            esc(&after),
            b.share * 100.0,
            b.requests,
            b.errors,
            b.max_in_flight,
            b.mean_utilization.map_or("-".into(), |u| format!("{u:.2}"))
        );
    }
    h.push_str("</table>\n");

    if !r.events.is_empty() {
        h.push_str("<h2>Events</h2>\n<table><tr><th>time</th><th>backend</th><th>what</th></tr>\n");
        for e in &r.events {
            let _ = writeln!(
                h,
                "<tr><td>{:.2} s</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                e.at_s,
                esc(&e.backend),
                esc(&e.action)
            );
        }
        h.push_str("</table>\n");
    }

    if let Some(l) = &r.log {
        h.push_str("<h2>Access log</h2>\n<table class=\"meta\">");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
        };
        row("sink", l.sink.clone());
        row(
            "records collected",
            format!("{} ({} distinct request ids)", l.collected, l.unique_ids),
        );
        row(
            "lost",
            match l.expected {
                Some(e) => format!("{} of {e} answered requests", l.lost),
                None => format!("{} (dropped by the filter; sampling on)", l.lost),
            },
        );
        row("duplicates", l.duplicates.to_string());
        row(
            "arrived within",
            format!("{:.1} s after the traffic", l.settle_s),
        );
        row(
            "filter metrics",
            l.filter_metrics
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if let Some(f) = &l.records_file {
            row("records file", f.clone());
        }
        h.push_str("</table>\n");
    }

    if let Some(rep) = &r.replay {
        let _ = writeln!(
            h,
            "<h2>Replay</h2>\n<p>{} requests from <code>{}</code> at ×{}: the host/path/status mix differs by at most {:.2} points.</p>",
            rep.requests,
            esc(&rep.records_file),
            rep.speed,
            rep.mix.max_deviation * 100.0
        );
        h.push_str("<table><tr><th>host path status</th><th>recorded</th><th>replayed</th><th>diff (points)</th></tr>\n");
        for m in rep.mix.rows.iter().take(30) {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{:.2}%</td><td>{:.2}%</td><td>{:+.2}</td></tr>",
                esc(&m.key),
                m.recorded * 100.0,
                m.replayed * 100.0,
                m.diff * 100.0
            );
        }
        h.push_str("</table>\n");
        if !rep.notes.is_empty() {
            h.push_str("<details><summary>notes</summary><ul>");
            for n in &rep.notes {
                let _ = write!(h, "<li>{}</li>", esc(n));
            }
            h.push_str("</ul></details>\n");
        }
    }

    if !r.envoy_stats.is_empty() {
        h.push_str("<h2>Envoy stats</h2>\n<details><summary>Switchyard filter metrics and response counters at the end of the run</summary><table>\n");
        for (k, v) in &r.envoy_stats {
            let _ = writeln!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        h.push_str("</table></details>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}
