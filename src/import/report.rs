//! The import report (printed, and as the script's opening comment) and the
//! assembly of the script around the emitted body.

use super::emit::{Emitted, Kind};
use super::names::{literal, string};
use super::workflow::Format;

pub struct Summary<'a> {
    pub source: &'a str,
    pub format: Format,
    pub total: usize,
    pub subgraphs: &'a [String],
    pub skipped: &'a [String],
    pub dropped: &'a [String],
}

/// The estimator's answers (see `import::plan_peak`), None when not wired in.
pub struct Peaks {
    pub imported: Option<Result<u64, String>>,
    pub all_resident: Option<Result<u64, String>>,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dit => "diffusion model",
        Kind::TextEncoder => "text encoder",
        Kind::Vae => "VAE",
    }
}

fn mib(b: u64) -> String {
    format!("{} MiB", b.div_ceil(1 << 20))
}

/// The plan in words: what was read, which model lives when, what co-exists.
pub fn render(e: &Emitted, s: &Summary, peaks: &Peaks, keep_resident: bool) -> String {
    let mut r = Vec::new();
    let format = match s.format {
        Format::Ui => "UI format",
        Format::Api => "API format",
    };
    r.push(format!(
        "Imported from {} by `baton import` ({format}).",
        s.source
    ));
    let mut read = format!("{} nodes read", s.total);
    if !s.subgraphs.is_empty() {
        read.push_str(&format!(", {} subgraph(s) inlined", s.subgraphs.len()));
    }
    read.push_str(&format!(
        "; {} skipped (notes, muted, bypassed), {} unused by any output (constants folded, switch branches not taken).",
        s.skipped.len(),
        s.dropped.len()
    ));
    r.push(read);
    r.push(String::new());
    if keep_resident {
        r.push("--keep-resident: no model is ever deleted (ComfyUI's way), for comparison.".into());
    }
    r.push(if keep_resident {
        "Model uses (all loaded at the start, none deleted):".into()
    } else {
        "Model lifetimes (loaded right before the first use, deleted right after the last):"
            .to_string()
    });
    let mut order: Vec<usize> = (0..e.handles.len()).collect();
    order.sort_by_key(|&h| e.spans[h].map_or(usize::MAX, |s| s.0));
    for h in order {
        let hd = &e.handles[h];
        let mut what = format!("  {:<8} {} {}", hd.var, kind_name(hd.kind), hd.file);
        for (_, file, strength, _) in &hd.loras {
            what.push_str(&format!(" + LoRA {file} ({strength})"));
        }
        r.push(what);
        let live = match e.spans[h] {
            None => "never used".to_string(),
            Some((a, b)) if a == b => format!("used at {}", e.step_labels[a]),
            Some((a, b)) => format!("from {} to {}", e.step_labels[a], e.step_labels[b]),
        };
        let inside = if hd.in_recipe {
            " (loaded and deleted inside wan::two_stage)"
        } else {
            ""
        };
        r.push(format!("           {} {live}{inside}", hd.node));
    }
    r.push(format!("Order: {}.", e.order.join(", ")));
    if keep_resident {
        r.push(
            "Large models resident together: all of them, from the start (--keep-resident).".into(),
        );
    } else if e.coexisting.is_empty() {
        r.push("Large models resident together: none; one large model at a time.".into());
    } else {
        for &(a, b) in &e.coexisting {
            r.push(format!(
                "Large models resident together: {} and {} (the graph needs {} again after {} is first used).",
                e.handles[a].var, e.handles[b].var, e.handles[a].var, e.handles[b].var
            ));
        }
    }
    r.push(match (&peaks.imported, &peaks.all_resident) {
        (Some(Ok(a)), Some(Ok(b))) => format!(
            "Predicted peak (baton plan): {} for this script, {} with every model kept resident.",
            mib(*a),
            mib(*b)
        ),
        (Some(Ok(a)), _) => format!("Predicted peak (baton plan): {} for this script.", mib(*a)),
        (Some(Err(err)), _) => format!("Predicted peak: the estimator failed: {err}"),
        _ => "Predicted peak: not computed in this build (baton plan's estimator is not wired in yet).".into(),
    });
    if !e.memory_nodes.is_empty() {
        r.push(format!(
            "Memory nodes replaced by these lifetimes: {}.",
            e.memory_nodes.join(", ")
        ));
    }
    if !e.unsupported.is_empty() {
        r.push(format!(
            "Placeholders (no baton equivalent): {}.",
            e.unsupported.join(", ")
        ));
    }
    r.push("Files:".into());
    for (key, expr, note) in &e.files {
        r.push(format!("  {key:<12} {expr}  ({note})"));
    }
    r.join("\n")
}

/// The runnable part: stdlib import, files, parameters, body, measurement.
pub fn script(e: &Emitted, _s: &Summary, _keep_resident: bool) -> String {
    let mut out = Vec::new();
    if e.two_stage {
        out.push("import \"stdlib/wan22\" as wan;".to_string());
        out.push(String::new());
    }
    out.push(
        "// Model files, as load_model resolves them (relative names: under --models DIR,".into(),
    );
    out.push("// $BATON_MODELS or the current directory).".into());
    out.push("let files = #{".into());
    for (key, expr, _) in &e.files {
        out.push(format!("    {key}: {},", string(expr)));
    }
    out.push("};".into());
    out.push(String::new());
    if !e.params.is_empty() {
        out.push("// Recipe parameters.".into());
        let width = e.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in &e.params {
            out.push(format!(
                "let {:<width$} = param({}, {}, {});",
                p.name,
                string(&p.name),
                literal(&p.value),
                string(&p.help)
            ));
        }
        out.push(String::new());
    }
    out.push(e.body.clone());
    out.push(String::new());
    out.push("// What the run cost, from baton's ledger and /proc.".into());
    out.push("print(`offloaded at peak: ${mib(offload_peak())} MiB, peak RSS: ${mib(ram().peak_rss)} MiB`);".into());
    out.join("\n") + "\n"
}

/// The full script: doc line, the report as a comment block, the body.
pub fn assemble(report: &str, body: &str) -> String {
    let mut out =
        String::from("//! Wan 2.2 pipeline imported from a ComfyUI workflow by `baton import`.\n");
    for line in report.lines() {
        if line.is_empty() {
            out.push_str("//\n");
        } else {
            out.push_str(&format!("// {line}\n"));
        }
    }
    out.push('\n');
    out.push_str(body);
    out
}
