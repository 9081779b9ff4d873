//! Loading a Wan 2.1 VAE: recognised by its keys, config read back from its
//! shapes, weights read whole (a VAE is a few hundred MB and is used once per
//! video, so it is never block-streamed).

use super::info::ModelInfo;
use crate::checkpoint::{CheckpointError, CheckpointSource, Header, TensorEntry};
use crate::models::wan_vae::{self, WanVae, WanVaeConfig};
use candle_core::{DType, Device};
use std::collections::BTreeMap;

pub struct Planned {
    pub cfg: WanVaeConfig,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub info: ModelInfo,
}

/// Whether a header holds a Wan VAE.
pub fn is_vae(header: &Header) -> bool {
    wan_vae::is_wan_vae(header.tensors.keys().map(String::as_str))
}

/// Maps the keys and infers the config from the header alone. On the CPU
/// the weights are held in f32 whatever the file's dtype (candle has no
/// half-precision conv kernels there), and the ledger counts them so.
pub fn plan(
    header: &Header,
    dtype: Option<DType>,
    dev: &Device,
) -> Result<Planned, CheckpointError> {
    let config = |reason: String| CheckpointError::Config {
        path: header.path.clone(),
        reason,
    };
    let names = wan_vae::layout::canonical_names(header.tensors.keys().map(String::as_str))
        .map_err(config)?;
    let layout = if header.tensors.keys().any(|k| k.contains("up_blocks.")) {
        "diffusers"
    } else {
        "original"
    };
    let tensors: BTreeMap<String, TensorEntry> = names
        .iter()
        .map(|(canon, file)| (canon.clone(), header.tensors[file].clone()))
        .collect();
    let shapes: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(k, e)| (k.clone(), e.shape.clone()))
        .collect();
    let cfg = wan_vae::infer(&shapes).map_err(config)?;
    let dtype = if dev.is_cpu() {
        DType::F32
    } else {
        dtype.unwrap_or_else(|| crate::dtype::dominant_of(tensors.values()))
    };
    let variant = if cfg.base_dim == WanVaeConfig::wan21().base_dim {
        "2.1".to_string()
    } else {
        format!("2.1 width {}", cfg.base_dim)
    };
    let info = ModelInfo {
        arch: "wan-vae",
        variant,
        layout,
        dtype,
        params: tensors.values().map(|e| e.numel() as u64).sum(),
        blocks: 0,
    };
    Ok(Planned { cfg, tensors, info })
}

/// Reads the weights of a planned VAE.
pub fn load(header: &Header, p: &Planned, dev: &Device) -> Result<WanVae, String> {
    let source = CheckpointSource::open(header, p.tensors.clone()).map_err(|e| e.to_string())?;
    let vae = WanVae::new(&p.cfg, source.var_builder(p.info.dtype, dev))
        .map_err(|e| super::error::plain_error(&e))?;
    source.release("");
    Ok(vae)
}
