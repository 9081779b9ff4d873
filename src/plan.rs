//! `baton plan`: a script's memory timeline before it runs.
//!
//! The script runs on a dry runtime (headers only, no math, no files
//! written), so every load, sample and delete happens in order and the
//! timeline records what a real run would hold. The predicted host memory
//! at each event is the process baseline, plus every model's resident and
//! host bytes, plus the operation's working memory from
//! `runtime::activations`. On the CPU device weights live in RAM, so the
//! prediction is the run's peak RSS; on a GPU it is the device's peak.

use crate::host::{Session, SessionConfig};
use crate::runtime::size::mib;
use crate::runtime::timeline::{Event, Trace};
use std::fmt::Write;
use std::path::Path;

/// What a run holds once it has computed anything, beyond the process at
/// start: the compute thread pools' stacks and buffers, and allocator
/// arenas. Measured as the RSS after a run has deleted every model (15 MiB)
/// less the RSS at start (5 MiB), with `baton run --trace`.
const RUNTIME_OVERHEAD: u64 = 10 << 20;

/// Memory a real run holds beyond weights and activations, as a fraction of
/// them: allocator slack and the script's own tensors (latents, contexts).
/// Fitted on the demo and on `scripts/wan22_t2v.rhai`.
const SLACK: f64 = 0.02;

/// A planned run.
#[derive(serde::Serialize)]
pub struct Plan {
    pub trace: Trace,
    /// The script's error, when it fails (the plan up to that point stands).
    pub error: Option<String>,
    /// Predicted memory after each event, aligned with `trace.events`.
    pub predicted: Vec<u64>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// The highest prediction and the event where it happens.
    pub fn peak(&self) -> (u64, Option<&Event>) {
        let i = self
            .predicted
            .iter()
            .enumerate()
            .max_by_key(|(_, b)| **b)
            .map(|(i, _)| i);
        match i {
            Some(i) => (self.predicted[i], self.trace.events.get(i)),
            None => (self.trace.baseline_rss, None),
        }
    }
}

/// Runs `file` on a dry runtime and predicts its memory.
pub fn plan_file(file: &Path, cfg: &SessionConfig) -> Plan {
    let baseline = crate::runtime::memstat::rss();
    let mut s = Session::new(&SessionConfig {
        dry: true,
        ..cfg.clone()
    });
    let error = s.run_file(file).err();
    let trace = s
        .runtime
        .borrow_mut()
        .timeline
        .finish(&file.display().to_string(), true, baseline);
    from_trace(trace, error)
}

/// Predictions and warnings for a recorded timeline.
/// A recorded real run (`dry: false`) has measured RSS at each event, and
/// that is what its `predicted` column holds.
pub fn from_trace(trace: Trace, error: Option<String>) -> Plan {
    let predicted = trace
        .events
        .iter()
        .map(|e| {
            if trace.dry {
                predict(trace.baseline_rss, e)
            } else {
                e.rss
            }
        })
        .collect();
    let warnings = warnings(&trace.events);
    Plan {
        trace,
        error,
        predicted,
        warnings,
    }
}

/// Memory held during an event: the planning process at that point (the
/// script's own tensors), the runtime's overhead, weights (device and host)
/// and the operation's working memory.
pub fn predict(baseline: u64, e: &Event) -> u64 {
    let baseline = baseline.max(e.rss);
    let held = e.resident() + e.host();
    let slack = ((held + e.activations) as f64 * SLACK) as u64;
    baseline + RUNTIME_OVERHEAD + held + e.activations + slack
}

/// Large models resident together, and where a `delete_model` would avoid
/// it: a model is large when it takes a quarter of the budget or more.
fn warnings(events: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.kind != "load" {
            continue;
        }
        let large: Vec<_> = e
            .models
            .iter()
            .filter(|m| (m.resident + m.offloaded + m.host) * 4 >= e.budget.max(1))
            .collect();
        let offloaded = e
            .models
            .iter()
            .find(|m| m.name == e.model)
            .map_or(0, |m| m.offloaded);
        if large.len() < 2 && offloaded == 0 {
            continue;
        }
        let mut msg = if offloaded > 0 {
            format!(
                "{}: '{}' loads partially, {} offloaded (streamed at every step), because",
                e.at,
                e.model,
                mib(offloaded)
            )
        } else {
            format!("{}: '{}' loads while", e.at, e.model)
        };
        let others: Vec<_> = e.models.iter().filter(|m| m.name != e.model).collect();
        let names: Vec<String> = others
            .iter()
            .map(|m| format!("'{}' ({})", m.name, mib(m.resident + m.host)))
            .collect();
        let _ = write!(msg, " {} still resident.", names.join(", "));
        for m in others {
            match last_use(&events[..i], &events[i + 1..], &m.name) {
                Use::Before(at) => {
                    let _ = write!(
                        msg,
                        " '{}' was last used at {at}: a delete_model({}) right after that line frees it first.",
                        m.name, m.name
                    );
                }
                Use::After(at) => {
                    let _ = write!(
                        msg,
                        " '{}' is still used at {at}: load '{}' after that line and delete_model({}) before it.",
                        m.name, e.model, m.name
                    );
                }
                Use::Never => {
                    let _ = write!(
                        msg,
                        " '{}' is never used: delete_model({}) before this line.",
                        m.name, m.name
                    );
                }
            }
        }
        out.push(msg);
    }
    out
}

enum Use {
    Before(String),
    After(String),
    Never,
}

const USES: &[&str] = &[
    "sample",
    "predict",
    "encode_text",
    "decode",
    "encode",
    "lora",
];

/// Where `model` is last used: after the event (until it is deleted), or
/// else before it.
fn last_use(before: &[Event], after: &[Event], model: &str) -> Use {
    let mut last_after = None;
    for e in after {
        if e.model != model {
            continue;
        }
        if e.kind == "delete" {
            break;
        }
        if USES.contains(&e.kind.as_str()) {
            last_after = Some(e.at.clone());
        }
    }
    if let Some(at) = last_after {
        return Use::After(at);
    }
    before
        .iter()
        .rev()
        .find(|e| e.model == model && USES.contains(&e.kind.as_str()))
        .map_or(Use::Never, |e| Use::Before(e.at.clone()))
}

/// The plan as a table, one line per event, with the peak and warnings.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let t = &plan.trace;
    let (title, column, peak_label) = if t.dry {
        ("plan for", "predicted", "predicted peak")
    } else {
        ("timeline of", "rss", "highest RSS at an event")
    };
    let _ = writeln!(
        out,
        "{title} {}{}",
        t.script,
        if t.dry {
            " (dry run: headers only, nothing computed)"
        } else {
            " (measured)"
        }
    );
    if t.dry {
        let _ = writeln!(out, "baseline {}", mib(t.baseline_rss));
    }
    let _ = writeln!(
        out,
        "{:<22} {:<12} {:<10} {:>10} {:>10} {:>10} {:>11} {:>10}  note",
        "at", "event", "model", "resident", "offloaded", "host", "activations", column
    );
    for (e, p) in t.events.iter().zip(&plan.predicted) {
        let _ = writeln!(
            out,
            "{:<22} {:<12} {:<10} {:>10} {:>10} {:>10} {:>11} {:>10}  {}",
            short(&e.at, 22),
            e.kind,
            short(&e.model, 10),
            mib(e.resident()),
            mib(e.offloaded()),
            mib(e.host()),
            mib(e.activations),
            mib(*p),
            e.note
        );
    }
    let (peak, at) = plan.peak();
    let _ = writeln!(
        out,
        "{peak_label}: {}{}",
        mib(peak),
        at.map_or(String::new(), |e| format!(
            " at {} ({} {})",
            e.at, e.kind, e.model
        ))
    );
    let offload = t.events.iter().map(Event::offloaded).max().unwrap_or(0);
    let _ = writeln!(out, "largest offload: {}", mib(offload));
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(e) = &plan.error {
        let _ = writeln!(out, "the script fails: {e}");
    }
    out
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(n - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}
