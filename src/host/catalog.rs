//! `models()`: the checkpoints a script could load, with sizes and the
//! architecture read from each header.
//!
//! Users think in files ("which Wan experts do I have?"); listing them with
//! what baton would load them as saves a round of `baton inspect`. Only
//! headers are read, so listing a folder of 14B checkpoints costs
//! milliseconds.

use crate::checkpoint::Header;
use crate::roots::files_under;
use std::path::{Path, PathBuf};

/// One `.safetensors` file found under a model root, with what it holds.
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

/// The files under the model roots `roots` (as [`files_under`] lists
/// them), each labelled from its header.
pub fn list(roots: &[PathBuf]) -> Vec<Available> {
    files_under(roots)
        .into_iter()
        .map(|f| Available {
            arch: arch_label(&f.path),
            name: f.name,
            path: f.path,
            folder: f.folder,
            bytes: f.bytes,
        })
        .collect()
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
