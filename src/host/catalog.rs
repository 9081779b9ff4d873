//! `models()`: the checkpoints a script could load, with sizes and the
//! architecture read from each header.
//!
//! Users think in files ("which Wan experts do I have?"); listing them with
//! what baton would load them as saves a round of `baton inspect`. Only
//! headers are read, so listing a folder of 14B checkpoints costs
//! milliseconds.

use crate::checkpoint::Header;
use std::path::{Path, PathBuf};

/// One `.safetensors` file found under a model root.
#[derive(Debug, Clone)]
pub struct Available {
    /// The path relative to its root: what `load_model` takes.
    pub name: String,
    pub path: PathBuf,
    /// The root's last component (`diffusion_models`, `vae`, ... for ComfyUI folders).
    pub folder: String,
    pub bytes: u64,
    /// e.g. "wan-dit t2v", "umt5", "wan-vae", or "?" with the reason.
    pub arch: String,
}

/// Files directly in each root and one folder below (ComfyUI users sort
/// models into subfolders), in root order, sorted by name within a root.
pub fn list(roots: &[PathBuf]) -> Vec<Available> {
    let mut out: Vec<Available> = Vec::new();
    for root in roots {
        let mut files = Vec::new();
        collect(root, 0, &mut files);
        files.sort();
        let folder = root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| root.display().to_string());
        for path in files {
            if out.iter().any(|a| a.path == path) {
                continue;
            }
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(Available {
                name,
                bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                arch: arch_label(&path),
                path,
                folder: folder.clone(),
            });
        }
    }
    out
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth < 1 && !e.file_name().to_string_lossy().starts_with('.') {
            collect(&p, depth + 1, out);
        } else if p.extension().is_some_and(|x| x == "safetensors") && p.is_file() {
            out.push(p);
        }
    }
}

/// What `load_model` would see in the file, from its header alone.
pub fn arch_label(path: &Path) -> String {
    let header = match Header::read(path) {
        Ok(h) => h,
        Err(e) => return format!("? ({e})"),
    };
    if crate::runtime::text_encoder::is_text_encoder(&header) {
        return "umt5 text encoder".into();
    }
    if crate::runtime::vae::is_vae(&header) {
        return "wan-vae".into();
    }
    // The head count only shapes attention, not what the file is; a file
    // whose count cannot be inferred (it needs `heads` at load) is still
    // labelled.
    let detected = crate::checkpoint::detect(&header, None)
        .or_else(|_| crate::checkpoint::detect(&header, Some(1)));
    match detected {
        Ok(d) => format!("{} {} {}", d.arch, d.variant, d.dtype),
        Err(_) => {
            // A LoRA has keys that name layers but no full weights.
            if header.tensors.keys().any(|k| k.contains("lora")) {
                "lora".into()
            } else {
                "? (not a model baton loads)".into()
            }
        }
    }
}
