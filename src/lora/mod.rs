//! LoRAs on the Wan DiT: parsing the file formats users download, and a
//! `VarBuilder` backend that adds their deltas to checkpoint weights.
//!
//! Nothing here copies the base model: the merged weight is computed from the
//! memory-mapped checkpoint whenever a layer is (re)built, so removing a LoRA
//! is a rebuild without it and restores the original bits exactly.
pub mod backend;
pub mod keys;

pub use backend::LoraBackend;

use crate::checkpoint::{Header, TensorEntry};
use candle_core::{DType, Device, Tensor};
use keys::{Modules, Part};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a LoRA holds for one model weight (`blocks.0.self_attn.q.weight`).
#[derive(Debug, Clone, Default)]
pub struct LoraEntry {
    /// `lora_down` / `lora_A`: [rank, in...], as stored in the file.
    pub down: Option<Tensor>,
    /// `lora_up` / `lora_B`: [out, rank...].
    pub up: Option<Tensor>,
    pub alpha: Option<f32>,
    /// Full-weight delta, same shape as the weight.
    pub diff: Option<Tensor>,
    /// Bias delta, same shape as the sibling bias.
    pub diff_b: Option<Tensor>,
}

impl LoraEntry {
    pub fn rank(&self) -> Option<usize> {
        self.down.as_ref().map(|d| d.dims()[0])
    }

    /// `strength · (alpha / rank) · up @ down + strength · diff` in f32, shaped
    /// like the weight. The product comes first and is scaled after, as
    /// ComfyUI does, so the rounding matches it.
    pub fn weight_delta(&self, strength: f32, shape: &[usize]) -> candle_core::Result<Tensor> {
        let mut delta: Option<Tensor> = None;
        if let (Some(down), Some(up)) = (&self.down, &self.up) {
            let rank = down.dims()[0];
            let alpha = self.alpha.unwrap_or(rank as f32);
            let scale = strength as f64 * alpha as f64 / rank as f64;
            let down = down.to_dtype(DType::F32)?.flatten_from(1)?;
            let up = up.to_dtype(DType::F32)?.flatten_from(1)?;
            let d = (up.matmul(&down)? * scale)?.reshape(shape)?;
            delta = Some(d);
        }
        if let Some(diff) = &self.diff {
            let d = (diff.to_dtype(DType::F32)? * strength as f64)?;
            delta = Some(match delta {
                Some(x) => (x + d)?,
                None => d,
            });
        }
        match delta {
            Some(d) => Ok(d),
            None => Tensor::zeros(shape, DType::F32, &Device::Cpu),
        }
    }

    fn bytes(&self) -> u64 {
        [&self.down, &self.up, &self.diff, &self.diff_b]
            .into_iter()
            .flatten()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum()
    }
}

/// One LoRA file, resolved against a model's weights.
#[derive(Debug)]
pub struct Lora {
    pub path: PathBuf,
    /// Keyed by the canonical weight name (`blocks.N.self_attn.q.weight`).
    pub entries: BTreeMap<String, LoraEntry>,
    /// Keys that target nothing in the model (or are not LoRA keys at all).
    pub unknown_keys: Vec<String>,
    /// Bytes of the factors held in memory (what the ledger counts).
    pub bytes: u64,
}

impl Lora {
    /// Reads `path` and matches it to the model whose checkpoint tensors are
    /// `model` (canonical names). Fails on an unreadable file, on shapes that
    /// do not fit the model (naming the key and both shapes), and on a LoRA
    /// that targets nothing in the model; unknown keys are one warning.
    pub fn load(path: &Path, model: &BTreeMap<String, TensorEntry>) -> Result<Self, String> {
        let header = Header::read(path).map_err(|e| format!("LoRA {e}"))?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            format!(
                "LoRA {}: {}",
                path.display(),
                crate::runtime::error::plain_error(&e)
            )
        })?;
        let modules = Modules::new(model.keys().map(String::as_str));
        let mut entries: BTreeMap<String, LoraEntry> = BTreeMap::new();
        let mut unknown = Vec::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for key in header.tensors.keys() {
            let Some(t) = tensors.get(key) else {
                unknown.push(key.clone());
                continue;
            };
            let resolved = keys::split_part(key).and_then(|(file_module, part)| {
                Some((file_module, modules.resolve(file_module)?, part))
            });
            let Some((file_module, module, part)) = resolved else {
                unknown.push(key.clone());
                continue;
            };
            let weight = format!("{module}.weight");
            // Messages name the module as the file spells it.
            origin
                .entry(weight.clone())
                .or_insert_with(|| file_module.to_string());
            let e = entries.entry(weight).or_default();
            let t = t.clone();
            match part {
                Part::Down => e.down = Some(t),
                Part::Up => e.up = Some(t),
                Part::Diff => e.diff = Some(t),
                Part::DiffB => e.diff_b = Some(t),
                Part::Alpha => e.alpha = Some(scalar(&t, key, path)?),
            }
        }
        for (weight, e) in &entries {
            check_entry(path, &origin[weight], weight, e, model)?;
        }
        entries.retain(|_, e| e.down.is_some() || e.diff.is_some() || e.diff_b.is_some());
        if entries.is_empty() {
            let some: Vec<&String> = unknown.iter().take(5).collect();
            return Err(format!(
                "LoRA {} targets nothing in this model ({} keys, none matches a model weight; e.g. {some:?})",
                path.display(),
                header.tensors.len()
            ));
        }
        if !unknown.is_empty() {
            tracing::warn!(
                "LoRA {}: {} keys match nothing in the model and are ignored: {:?}",
                path.display(),
                unknown.len(),
                unknown
            );
        }
        let bytes = entries.values().map(LoraEntry::bytes).sum();
        Ok(Self {
            path: path.to_path_buf(),
            entries,
            unknown_keys: unknown,
            bytes,
        })
    }

    /// The name `vram()` shows: the file stem.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Whether this LoRA changes the tensor `name` (a weight or a bias).
    pub fn touches(&self, name: &str) -> bool {
        self.entry_for(name).is_some()
    }

    /// The f32 delta for model tensor `name` of `shape`, or `None` when this
    /// LoRA leaves it alone. Biases take the sibling weight's `diff_b`.
    pub fn delta(
        &self,
        name: &str,
        shape: &[usize],
        strength: f32,
    ) -> candle_core::Result<Option<Tensor>> {
        match self.entry_for(name) {
            None => Ok(None),
            Some((e, false)) => e.weight_delta(strength, shape).map(Some),
            Some((e, true)) => {
                let b = e.diff_b.as_ref().expect("entry_for checked diff_b");
                Ok(Some((b.to_dtype(DType::F32)? * strength as f64)?))
            }
        }
    }

    /// The entry for `name`, and whether `name` is its bias.
    fn entry_for(&self, name: &str) -> Option<(&LoraEntry, bool)> {
        if let Some(e) = self.entries.get(name) {
            return (e.down.is_some() || e.diff.is_some()).then_some((e, false));
        }
        let module = name.strip_suffix(".bias")?;
        let e = self.entries.get(&format!("{module}.weight"))?;
        e.diff_b.is_some().then_some((e, true))
    }

    /// Canonical names of every tensor this LoRA changes.
    pub fn targets(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.iter().flat_map(|(w, e)| {
            let weight = (e.down.is_some() || e.diff.is_some()).then(|| w.clone());
            let bias = e
                .diff_b
                .as_ref()
                .and_then(|_| w.strip_suffix(".weight"))
                .map(|m| format!("{m}.bias"));
            weight.into_iter().chain(bias)
        })
    }
}

fn scalar(t: &Tensor, key: &str, path: &Path) -> Result<f32, String> {
    let bad = || {
        format!(
            "LoRA {}: '{key}' should be one number, got shape {:?}",
            path.display(),
            t.dims()
        )
    };
    if t.elem_count() != 1 {
        return Err(bad());
    }
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|_| bad())
        .map(|v| v[0])
}

/// Shapes of one entry against the model's weight `weight` (and its bias).
fn check_entry(
    path: &Path,
    key: &str,
    weight: &str,
    e: &LoraEntry,
    model: &BTreeMap<String, TensorEntry>,
) -> Result<(), String> {
    let p = path.display();
    let w = &model[weight].shape;
    let mismatch = |what: &str, have: &[usize], want: String| {
        format!(
            "LoRA {p}: '{key}' {what} has shape {have:?} but the model's '{weight}' is {w:?} (needs {want})"
        )
    };
    match (&e.down, &e.up) {
        (Some(_), Some(_)) if w.is_empty() => {
            return Err(format!(
                "LoRA {p}: '{key}' targets '{weight}', a single number, which a LoRA cannot factor"
            ))
        }
        (Some(down), Some(up)) => {
            let (d, u) = (down.dims(), up.dims());
            let fan_in: usize = w.iter().skip(1).product();
            let d_in: usize = d.iter().skip(1).product();
            let u_rank: usize = u.iter().skip(1).product();
            if d.len() < 2 || d[0] == 0 || d_in != fan_in {
                return Err(mismatch(
                    "down (lora_down/lora_A)",
                    d,
                    format!("[rank, {fan_in}]"),
                ));
            }
            if u.len() < 2 || u[0] != w[0] || u_rank != d[0] {
                return Err(mismatch(
                    "up (lora_up/lora_B)",
                    u,
                    format!("[{}, {}] for rank {}", w[0], d[0], d[0]),
                ));
            }
        }
        (None, None) => {}
        _ => {
            return Err(format!(
                "LoRA {p}: '{key}' has only one of the two factors (down/lora_A and up/lora_B)"
            ))
        }
    }
    if let Some(diff) = &e.diff {
        if diff.dims() != w.as_slice() {
            return Err(mismatch("diff", diff.dims(), format!("{w:?}")));
        }
    }
    if let Some(db) = &e.diff_b {
        let bias = format!("{}.bias", weight.trim_end_matches(".weight"));
        match model.get(&bias) {
            Some(b) if b.shape.as_slice() == db.dims() => {}
            Some(b) => {
                return Err(format!(
                    "LoRA {p}: '{key}' diff_b has shape {:?} but the model's '{bias}' is {:?}",
                    db.dims(),
                    b.shape
                ))
            }
            None => {
                return Err(format!(
                    "LoRA {p}: '{key}' has a diff_b but the model has no '{bias}'"
                ))
            }
        }
    }
    Ok(())
}
