//! `baton import`: a ComfyUI workflow becomes a baton script whose model
//! lifetimes are explicit.
//!
//! ComfyUI keeps every model it loaded until memory runs out, so a Wan 2.2
//! graph with two 14B experts holds both. The graph says exactly when each
//! model is last needed; the imported script deletes it there, so the same
//! workflow runs with one large model resident at a time.
//!
//! Pipeline: [`metadata`] finds the JSON (in a .json, PNG, WebP or MP4),
//! [`workflow`] reads either JSON form into one graph, [`lifetimes`] folds
//! constants, drops dead branches and orders the graph, [`emit`] writes the
//! script, and [`report`] explains the plan.

pub mod emit;
pub mod lifetimes;
pub mod metadata;
pub mod names;
pub mod nodes;
pub mod report;
pub mod workflow;

use crate::roots::ModelRoots;
use std::path::{Path, PathBuf};

pub use emit::{Param, SamplerSettings};

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// `--map NAME=PATH`: the workflow's file NAME becomes PATH.
    pub maps: Vec<(String, String)>,
    /// Emit a commented placeholder for unknown nodes instead of failing.
    pub allow_unknown: bool,
    /// Never delete a model (ComfyUI's way), to compare against.
    pub keep_resident: bool,
    /// `--param NAME=VALUE`: a different default for a recipe parameter.
    pub param_defaults: Vec<(String, String)>,
    /// Where files are looked for (as `baton run --models`); empty: `.`.
    pub model_roots: Vec<PathBuf>,
}

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    pub script: String,
    pub report: String,
    pub params: Vec<Param>,
    pub samplers: Vec<SamplerSettings>,
    /// Large models that the graph forces to be resident together.
    pub coexisting: Vec<(String, String)>,
    pub two_stage: bool,
}

/// Imports a workflow file (.json, or a PNG/WebP/MP4 ComfyUI wrote).
pub fn import_file(path: &Path, o: &ImportOptions) -> Result<Imported, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    import_bytes(&bytes, &name, o)
}

pub fn import_bytes(bytes: &[u8], source: &str, o: &ImportOptions) -> Result<Imported, String> {
    let text = metadata::workflow_json(bytes, source)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{source}: invalid JSON: {e}"))?;
    let mut graph = workflow::parse(&json, source)?;
    let total = graph.nodes.len() + graph.skipped.len();
    lifetimes::fold_constants(&mut graph, source)?;
    let dropped = lifetimes::prune(&mut graph).map_err(|e| format!("{source}: {e}"))?;
    let unknown: Vec<String> = graph
        .nodes
        .iter()
        .filter(|n| !nodes::is_mapped(&n.class) && !nodes::is_memory(&n.class))
        .map(|n| match nodes::unsupported_hint(&n.class) {
            Some(h) => format!("  {} ({h})", n.label()),
            None => format!("  {}", n.label()),
        })
        .collect();
    if !unknown.is_empty() && !o.allow_unknown {
        return Err(format!(
            "{source}: {} node(s) have no baton equivalent:\n{}\n(--allow-unknown imports them as commented placeholders)",
            unknown.len(),
            unknown.join("\n")
        ));
    }
    let order = lifetimes::topo_order(&graph, source)?;
    let roots = ModelRoots::with_env(&o.model_roots);
    let named = workflow_files(&graph);
    for (name, _) in &o.maps {
        if !named.contains(name) {
            return Err(format!(
                "--map {name}=...: the workflow names no such file (it names: {})",
                named.join(", ")
            ));
        }
    }
    let resolve = |name: &str, folder: &str| resolve_file(name, folder, &o.maps, &roots);
    let emit_with = |keep_resident: bool| {
        emit::emit(
            &graph,
            &order,
            &emit::EmitOptions {
                source,
                keep_resident,
                allow_unknown: o.allow_unknown,
                param_defaults: &o.param_defaults,
                file: &resolve,
            },
        )
    };
    let e = emit_with(o.keep_resident)?;
    let summary = report::Summary {
        source,
        format: graph.format,
        total,
        subgraphs: &graph.subgraphs,
        skipped: &graph.skipped,
        dropped: &dropped,
    };
    let body = report::script(&e, &summary, o.keep_resident);
    // Both variants go through the estimator: the imported plan and the
    // graph as ComfyUI would hold it.
    let resident = if o.keep_resident {
        None
    } else {
        emit_with(true).ok()
    };
    let resident_text = resident.as_ref().map(|r| report::script(r, &summary, true));
    let peaks = report::Peaks {
        imported: plan_peak(&body, source, &o.model_roots),
        all_resident: resident_text
            .as_deref()
            .and_then(|t| plan_peak(t, source, &o.model_roots)),
    };
    let report = report::render(&e, &summary, &peaks, o.keep_resident);
    let script = report::assemble(&report, &body);
    let coexisting = e
        .coexisting
        .iter()
        .map(|&(a, b)| (e.handles[a].var.clone(), e.handles[b].var.clone()))
        .collect();
    Ok(Imported {
        script,
        report,
        params: e.params,
        samplers: e.samplers,
        coexisting,
        two_stage: e.two_stage,
    })
}

/// The peak memory `baton plan` predicts for `script` (run as `source`,
/// models under `roots` and `$BATON_MODELS`, as a session searches them):
/// the report puts the imported script's peak next to the all-resident
/// one. The script runs on a dry runtime (headers only),
/// so this needs the model files, or `--map` onto files that exist; an error
/// (e.g. a model file not found) comes back for the report to print.
pub fn plan_peak(script: &str, source: &str, roots: &[PathBuf]) -> Option<Result<u64, String>> {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Some(Err(format!("no temp dir for the plan: {e}"))),
    };
    let name = Path::new(source).file_name().map_or_else(
        || "imported.rhai".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let file = dir.path().join(name);
    if let Err(e) = std::fs::write(&file, script) {
        return Some(Err(format!("writing {}: {e}", file.display())));
    }
    let cfg = crate::host::SessionConfig {
        model_roots: roots.to_vec(),
        out_dir: Some(dir.path().join("out")),
        ..Default::default()
    };
    // The dry run's load and delete lines would read as if the import had
    // loaded models: the report says what matters.
    let plan =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            crate::plan::plan_file(&file, &cfg)
        });
    Some(match plan.error {
        Some(e) => Err(e),
        None => Ok(plan.peak().0),
    })
}

/// Every file name the graph's loaders mention.
fn workflow_files(g: &workflow::Graph) -> Vec<String> {
    let mut out = Vec::new();
    for n in &g.nodes {
        for key in ["unet_name", "clip_name", "vae_name", "lora_name", "image"] {
            if let Some(workflow::Input::Value(serde_json::Value::String(s))) = n.input(key) {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
    }
    out
}

/// The path the script passes to `load_model` for a workflow file, and a
/// note for the report: mapped, found (directly under a root or in ComfyUI's
/// `models/<folder>/` layout), or not found.
fn resolve_file(
    name: &str,
    folder: &str,
    maps: &[(String, String)],
    roots: &ModelRoots,
) -> (String, String) {
    if let Some((_, path)) = maps.iter().find(|(n, _)| n == name) {
        return (path.clone(), format!("--map {name}"));
    }
    match roots.find_in(name, folder) {
        Some((rel, dir)) => (rel, format!("found in {}", dir.display())),
        None => (
            name.to_string(),
            "not found under the model roots: pass --models DIR or --map NAME=PATH".to_string(),
        ),
    }
}
