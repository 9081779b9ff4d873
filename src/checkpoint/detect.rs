//! Architecture detection and config inference from tensor shapes.
//!
//! A Wan DiT is recognised by its keys, and its config is read back from the
//! shapes, so baton never trusts a file name. Only the head count is not
//! visible in shapes: it comes from the `load_model` option, a diffusers
//! `config.json` beside the file, the file's `__metadata__`, or Wan's fixed
//! head_dim of 128, in that order.

use super::layout::{detect_layout, diffusers_to_original, strip_prefix, Layout};
use super::{CheckpointError, Header, TensorEntry};
pub use crate::models::fp8_scale_stem;
use crate::models::wan::WanConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// What a checkpoint is, learned from its header alone.
#[derive(Debug, Clone)]
pub struct Detected {
    pub arch: &'static str,
    pub variant: String,
    pub layout: Layout,
    pub cfg: WanConfig,
    /// Canonical (original-layout) name -> entry in the file.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// File keys that have no place in the model (reported, not used).
    pub unmapped: Vec<String>,
    /// The dtype holding most bytes, e.g. "bf16".
    pub dtype: String,
    /// Wan 2.1 image-to-video: a CLIP image projection (`img_emb.*`) and
    /// image key/value projections in every cross-attention (`k_img`, `v_img`).
    pub clip_image: bool,
    /// Layers the header's `_quantization_metadata` or the `comfy_quant`
    /// records list (canonical stem -> format); empty for files with neither
    /// (see `checkpoint::quant`).
    pub quantized: BTreeMap<String, String>,
}

impl Detected {
    pub fn bytes_of(&self, prefix: &str) -> u64 {
        self.tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.bytes() as u64)
            .sum()
    }

    /// Bytes of block `i`'s weights in the file.
    pub fn block_bytes(&self, i: usize) -> u64 {
        self.bytes_of(&format!("blocks.{i}."))
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|e| e.bytes() as u64).sum()
    }

    pub fn param_count(&self) -> u64 {
        self.tensors.values().map(|e| e.numel() as u64).sum()
    }
}

pub fn dtype_name(d: safetensors::Dtype) -> String {
    use safetensors::Dtype::*;
    match d {
        F32 => "f32".into(),
        F16 => "f16".into(),
        BF16 => "bf16".into(),
        F64 => "f64".into(),
        F8_E4M3 => "fp8_e4m3".into(),
        F8_E5M2 => "fp8_e5m2".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A tensor's dtype as messages name it: the GGUF type for quantized
/// blocks (`q4_k`), else the safetensors dtype.
pub fn entry_dtype_name(e: &TensorEntry) -> String {
    match e.quantized() {
        Some(t) => super::gguf::type_name(t).to_lowercase(),
        None => dtype_name(e.dtype),
    }
}

/// Detects a Wan DiT and infers its config. `heads` overrides the head count.
pub fn detect(header: &Header, heads: Option<usize>) -> Result<Detected, CheckpointError> {
    let path = &header.path;
    let wrong = |reason: String| CheckpointError::WrongArchitecture {
        path: path.clone(),
        reason,
    };
    let stripped: Vec<(&str, &TensorEntry)> = header
        .tensors
        .iter()
        .map(|(k, e)| (strip_prefix(k), e))
        .collect();
    let layout = detect_layout(stripped.iter().map(|(k, _)| *k)).ok_or_else(|| {
        let sample: Vec<&str> = stripped.iter().take(4).map(|(k, _)| *k).collect();
        wrong(format!(
            "no Wan DiT keys found (looked for 'blocks.0.self_attn.q.weight' or \
             'blocks.0.attn1.to_q.weight'); the file starts with {sample:?}"
        ))
    })?;

    let mut tensors = BTreeMap::new();
    let mut unmapped = Vec::new();
    for (key, entry) in stripped {
        if is_quant_marker(key) {
            continue;
        }
        let canonical = match layout {
            Layout::Original => Some(key.to_string()),
            Layout::Diffusers => match fp8_scale_stem(key) {
                // A scale follows its weight through the layout mapping.
                Some((stem, suffix)) => diffusers_to_original(&format!("{stem}.weight"))
                    .and_then(|w| Some(format!("{}.{suffix}", w.strip_suffix(".weight")?))),
                None => diffusers_to_original(key),
            },
        };
        match canonical {
            Some(c) => {
                tensors.insert(c, entry.clone());
            }
            None => unmapped.push(key.to_string()),
        }
    }
    // The metadata first: a layer in a format baton does not read is named
    // as such, not as a bare dtype.
    let quantized = super::quant::apply(header, layout, &mut tensors)?;
    check_dtypes(path, &tensors)?;

    let shape = |key: &str, rank: usize| -> Result<Vec<usize>, CheckpointError> {
        let e = tensors
            .get(key)
            .ok_or_else(|| CheckpointError::MissingKey {
                path: path.clone(),
                key: key.to_string(),
            })?;
        if e.shape.len() != rank {
            return Err(CheckpointError::Config {
                path: path.clone(),
                reason: format!("tensor '{key}' has rank {}, expected {rank}", e.shape.len()),
            });
        }
        Ok(e.shape.clone())
    };
    let patch = shape("patch_embedding.weight", 5)?;
    let (dim, in_dim) = (patch[0], patch[1]);
    let patch_size = [patch[2], patch[3], patch[4]];
    let ffn_dim = shape("blocks.0.ffn.0.weight", 2)?[0];
    let freq_dim = shape("time_embedding.0.weight", 2)?[1];
    let text_dim = shape("text_embedding.0.weight", 2)?[1];
    let head_out = shape("head.head.weight", 2)?[0];
    let patch_numel: usize = patch_size.iter().product();
    if patch_numel == 0 || head_out % patch_numel != 0 {
        return Err(wrong(format!(
            "head.head.weight has {head_out} outputs, not a multiple of the patch size {patch_size:?}"
        )));
    }
    let num_layers = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    // Wan 2.1 I2V keeps its CLIP path under these names; diffusers calls
    // them `condition_embedder.image_embedder` and `attn2.add_k_proj`.
    let clip_image = tensors.keys().any(|k| k.starts_with("img_emb."))
        || unmapped
            .iter()
            .any(|k| k.starts_with("condition_embedder.image_embedder."));
    let num_heads = match heads {
        Some(h) => h,
        None => infer_heads(header, dim)?,
    };
    if num_heads == 0 || dim % num_heads != 0 || (dim / num_heads) % 2 != 0 {
        return Err(CheckpointError::Config {
            path: path.clone(),
            reason: format!("{num_heads} heads do not divide dim {dim} into even head dims"),
        });
    }
    let cfg = WanConfig {
        dim,
        ffn_dim,
        freq_dim,
        text_dim,
        in_dim,
        out_dim: head_out / patch_numel,
        num_heads,
        num_layers,
        patch_size,
        eps: 1e-6,
        rope_theta: 10000.0,
    };
    let variant = variant_name(&cfg, clip_image).to_string();
    let mut by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    for e in tensors.values() {
        *by_dtype.entry(entry_dtype_name(e)).or_default() += e.bytes() as u64;
    }
    // An fp8 file is an fp8 model even where its f32 norms and biases
    // outweigh the quantised linears (as in tiny test models).
    let fp8 = tensors
        .values()
        .any(|e| e.dtype == safetensors::Dtype::F8_E4M3);
    // A quantized GGUF is named for its quantized type with the most bytes
    // (its F16 embeddings may outweigh them in tiny models).
    let gguf = tensors.values().any(|e| e.quantized().is_some());
    if gguf {
        by_dtype.retain(|k, _| k.starts_with('q'));
    }
    let dtype = if fp8 {
        dtype_name(safetensors::Dtype::F8_E4M3)
    } else {
        by_dtype
            .into_iter()
            .max_by_key(|(_, b)| *b)
            .map(|(d, _)| d)
            .unwrap_or_default()
    };
    Ok(Detected {
        arch: "wan-dit",
        variant,
        layout,
        cfg,
        tensors,
        unmapped,
        dtype,
        clip_image,
        quantized,
    })
}

/// The published model a config is, by its shapes. A Wan 2.1 T2V-14B and
/// each Wan 2.2 T2V-A14B expert have the same shapes, as do a Wan 2.2
/// I2V-A14B expert and a Wan 2.1 I2V-14B without its CLIP path.
pub fn variant_name(cfg: &WanConfig, clip_image: bool) -> &'static str {
    let depth = (cfg.dim, cfg.num_layers, cfg.ffn_dim);
    match (depth, cfg.in_dim, cfg.out_dim, clip_image) {
        ((5120, 40, 13824), 16, 16, false) => "t2v-A14B",
        ((5120, 40, 13824), 36, 16, false) => "i2v-A14B",
        ((5120, 40, 13824), 36, 16, true) => "wan2.1-i2v-14B",
        ((3072, 30, 14336), 48, 48, false) => "ti2v-5B",
        ((1536, 30, 8960), 16, 16, false) => "t2v-1.3B",
        ((1536, 30, 8960), 36, 16, true) => "wan2.1-i2v-1.3B",
        (_, 36, _, true) => "custom-i2v-clip",
        (_, 36, _, false) => "custom-i2v",
        _ => "custom",
    }
}

/// ComfyUI's fp8_scaled bookkeeping that carries no weight: the legacy
/// `scaled_fp8` marker, the newer per-layer `comfy_quant` format records, and
/// activation scales (`input_scale`, used only by fp8 matmul kernels).
fn is_quant_marker(key: &str) -> bool {
    key == "scaled_fp8" || key.ends_with(".comfy_quant") || key.ends_with(".input_scale")
}

fn check_dtypes(
    path: &Path,
    tensors: &BTreeMap<String, TensorEntry>,
) -> Result<(), CheckpointError> {
    use safetensors::Dtype::*;
    for (key, e) in tensors {
        if e.quantized().is_some() {
            continue;
        }
        match e.dtype {
            // F8_E4M3 weights are dequantised at load (fp8_scaled: times their scale).
            F32 | F16 | BF16 | F8_E4M3 => {}
            other => {
                let hint = if matches!(other, F8_E5M2) {
                    " (fp8 e5m2 checkpoints are not supported; use an e4m3fn, bf16 or fp16 file)"
                } else {
                    ""
                };
                return Err(CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    dtype: dtype_name(other),
                    hint: hint.into(),
                });
            }
        }
    }
    Ok(())
}

fn infer_heads(header: &Header, dim: usize) -> Result<usize, CheckpointError> {
    if let Some(h) = header.dir().and_then(heads_from_config_json) {
        return Ok(h);
    }
    for key in ["num_heads", "num_attention_heads", "baton.num_heads"] {
        if let Some(h) = header.metadata.get(key).and_then(|v| v.parse().ok()) {
            return Ok(h);
        }
    }
    if dim.is_multiple_of(128) {
        // Every published Wan model uses head_dim 128.
        return Ok(dim / 128);
    }
    Err(CheckpointError::Config {
        path: header.path.clone(),
        reason: format!(
            "cannot tell the number of attention heads for dim {dim}: pass \
             load_model(path, #{{ heads: N }}) or put a diffusers config.json beside the file"
        ),
    })
}

/// `num_attention_heads` from a diffusers `config.json` in `dir`.
fn heads_from_config_json(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("num_attention_heads")?.as_u64().map(|h| h as usize)
}
