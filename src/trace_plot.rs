//! `baton trace FILE.json --png OUT.png`: a recorded run as a picture.
//!
//! Bytes per model are stacked over time (each model its own colour, host
//! copies after `offload_model` in a paler shade), measured RSS is drawn on
//! top as a black line, the budget as a red line, and every load, delete and
//! offload is marked with its script line, so the picture answers "what was
//! resident when, and which line put it there".

use crate::runtime::timeline::{Event, Trace};
use plotters::prelude::*;
use plotters::style::FontTransform;
use std::path::Path;

/// DejaVu Sans Mono (Bitstream Vera licence, see assets/fonts/LICENSE):
/// embedded so the picture looks the same on every machine.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");

const PALETTE: [RGBColor; 6] = [
    RGBColor(66, 133, 244),
    RGBColor(52, 168, 83),
    RGBColor(251, 188, 5),
    RGBColor(171, 71, 188),
    RGBColor(0, 172, 193),
    RGBColor(255, 112, 67),
];

const MIB: f64 = 1048576.0;

/// Reads a trace written by `baton run --trace` (or a plan from
/// `baton plan --json`, drawn against its predictions).
pub fn read(path: &Path) -> Result<(Trace, Option<Vec<u64>>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let (trace, predicted) = match v.get("trace") {
        Some(t) => (t.clone(), v.get("predicted").cloned()),
        None => (v, None),
    };
    let trace: Trace = serde_json::from_value(trace)
        .map_err(|e| format!("{}: not a baton trace: {e}", path.display()))?;
    let predicted = predicted
        .map(serde_json::from_value::<Vec<u64>>)
        .transpose()
        .map_err(|e| format!("{}: bad predictions: {e}", path.display()))?;
    Ok((trace, predicted))
}

/// Draws the trace into a PNG of `size` pixels, written atomically.
pub fn draw(
    trace: &Trace,
    predicted: Option<&[u64]>,
    out: &Path,
    size: (u32, u32),
) -> Result<(), String> {
    // The font registry is process-wide; registering twice is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    crate::media::write_atomically(out, |tmp| render(trace, predicted, tmp, size))
}

fn render(
    trace: &Trace,
    predicted: Option<&[u64]>,
    path: &Path,
    size: (u32, u32),
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let ev = &trace.events;
    // A dry run's events are microseconds apart: space them evenly instead.
    let time = |i: usize, e: &Event| if trace.dry { i as f64 } else { e.t };
    let end = ev
        .iter()
        .enumerate()
        .map(|(i, e)| time(i, e))
        .chain(trace.rss.iter().map(|s| s.0))
        .fold(1e-3, f64::max)
        * 1.02;
    let names = model_names(ev);
    let stack_top = |e: &Event| (e.resident() + e.host()) as f64 / MIB;
    let top = ev
        .iter()
        .map(stack_top)
        .chain(
            ev.iter()
                .map(|e| e.budget as f64 / MIB)
                .filter(|b| *b < 1e6),
        )
        .chain(trace.rss.iter().map(|s| s.1 as f64 / MIB))
        .chain(ev.iter().map(|e| e.rss as f64 / MIB))
        .chain(predicted.unwrap_or(&[]).iter().map(|p| *p as f64 / MIB))
        .fold(1.0, f64::max)
        * 1.25;

    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!("{}{}", trace.script, if trace.dry { " (plan)" } else { "" });
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..end, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(if trace.dry { "event" } else { "seconds" })
        .y_desc("MiB")
        .light_line_style(WHITE.mix(0.0))
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;

    // Stacked bytes per model: a step function that changes at events.
    let mut below = vec![0f64; ev.len()];
    for (k, name) in names.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        for (part, shade) in [("resident", 0.75), ("host", 0.3)] {
            let mut upper = below.clone();
            for (i, e) in ev.iter().enumerate() {
                let b = e.models.iter().find(|m| &m.name == name).map_or(0, |m| {
                    if part == "resident" {
                        m.resident
                    } else {
                        m.host
                    }
                });
                upper[i] += b as f64 / MIB;
            }
            if upper.iter().zip(&below).all(|(u, l)| u == l) {
                continue;
            }
            let poly = step_polygon(ev, &time, &below, &upper, end);
            let label = if part == "resident" {
                name.clone()
            } else {
                format!("{name} (host RAM)")
            };
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    colour.mix(shade).filled(),
                )))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(shade).filled())
                });
            below = upper;
        }
    }

    // The budget, where one was set.
    let budget: Vec<(f64, f64)> = step_line(ev, &time, end, |e| e.budget as f64 / MIB)
        .into_iter()
        .filter(|p| p.1 < top)
        .collect();
    if !budget.is_empty() {
        chart
            .draw_series(LineSeries::new(budget, RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("budget")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED.stroke_width(2)));
    }
    // What the kernel measured, or what the plan predicts.
    let measured: Vec<(f64, f64)> = trace.rss.iter().map(|s| (s.0, s.1 as f64 / MIB)).collect();
    if !measured.is_empty() {
        chart
            .draw_series(LineSeries::new(measured, BLACK.stroke_width(1)))
            .map_err(|e| err(&e))?
            .label("RSS (measured)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK));
    }
    if let Some(p) = predicted {
        let pts: Vec<(f64, f64)> = ev
            .iter()
            .enumerate()
            .zip(p)
            .map(|((i, e), b)| (time(i, e), *b as f64 / MIB))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), BLACK.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("predicted peak per event")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|pt| Circle::new(pt, 3, BLACK.filled())))
            .map_err(|e| err(&e))?;
    }

    // Each load, delete and offload, marked with its script line.
    // Labels read downwards from the top; events closer than a label's
    // height apart get their labels nudged right so none overlap.
    let marked = ["load", "delete", "offload", "reload", "prefetch"];
    let spacing = end * 16.0 / size.0 as f64;
    let mut next_free = f64::MIN;
    for (i, e) in ev.iter().enumerate() {
        if !marked.contains(&e.kind.as_str()) {
            continue;
        }
        let x = time(i, e);
        let label_x = x.max(next_free);
        next_free = label_x + spacing;
        chart
            .draw_series(std::iter::once(PathElement::new(
                [(x, 0.0), (x, top * 0.97)],
                BLACK.mix(0.25),
            )))
            .map_err(|e| err(&e))?;
        let label = format!("{} {} {}", short_site(&e.at), e.kind, e.model);
        let style = ("sans-serif", 12)
            .into_font()
            .transform(FontTransform::Rotate90)
            .color(&BLACK);
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (label_x + spacing * 0.9, top * 0.97),
                style,
            )))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Models in the order they first appear.
fn model_names(ev: &[Event]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in ev {
        for m in &e.models {
            if !names.contains(&m.name) {
                names.push(m.name.clone());
            }
        }
    }
    names
}

/// The band between two step functions that change at the events.
fn step_polygon(
    ev: &[Event],
    time: &dyn Fn(usize, &Event) -> f64,
    lower: &[f64],
    upper: &[f64],
    end: f64,
) -> Vec<(f64, f64)> {
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for i in 0..ev.len() {
        let (x0, x1) = (
            time(i, &ev[i]),
            ev.get(i + 1).map_or(end, |n| time(i + 1, n)),
        );
        top.extend([(x0, upper[i]), (x1, upper[i])]);
        bottom.extend([(x0, lower[i]), (x1, lower[i])]);
    }
    bottom.reverse();
    top.extend(bottom);
    top
}

fn step_line(
    ev: &[Event],
    time: &dyn Fn(usize, &Event) -> f64,
    end: f64,
    f: impl Fn(&Event) -> f64,
) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    for i in 0..ev.len() {
        let x1 = ev.get(i + 1).map_or(end, |n| time(i + 1, n));
        pts.extend([(time(i, &ev[i]), f(&ev[i])), (x1, f(&ev[i]))]);
    }
    pts
}

/// "scripts/demo.rhai:37" -> "demo:37".
fn short_site(at: &str) -> String {
    let file = at.rsplit('/').next().unwrap_or(at);
    file.replace(".rhai", "")
}
