//! Loading a Wan VAE (2.1, or 2.2 for TI2V-5B): recognised by its keys,
//! config read back from its shapes, weights read whole (a VAE is a few
//! hundred MB and is used once per video, so it is never block-streamed).

use super::info::ModelInfo;
use crate::checkpoint::{CheckpointError, CheckpointSource, Header, TensorEntry};
use crate::models::wan_vae::layout22::{self, VaeKind};
use crate::models::wan_vae::{self, Wan22Vae, WanVae, WanVaeConfig};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// A loaded Wan VAE of either generation.
#[derive(Debug)]
pub enum AnyVae {
    V21(WanVae),
    V22(Wan22Vae),
}

impl AnyVae {
    pub fn kind(&self) -> VaeKind {
        match self {
            AnyVae::V21(v) => VaeKind::V21(v.config().clone()),
            AnyVae::V22(v) => VaeKind::V22(v.config().clone()),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            AnyVae::V21(v) => v.device(),
            AnyVae::V22(v) => v.device(),
        }
    }

    /// Raw latent mean of a video in [-1, 1].
    pub fn encode(&self, video: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            AnyVae::V21(v) => v.encode(video),
            AnyVae::V22(v) => v.encode(video),
        }
    }

    /// Decodes a raw latent one latent frame at a time, handing each chunk
    /// to `each` as it is done.
    pub fn decode_each(
        &self,
        z: &Tensor,
        clamp: bool,
        each: &mut dyn FnMut(usize, Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        match self {
            AnyVae::V21(v) => {
                for (i, c) in v.decode_chunks(z, clamp)?.enumerate() {
                    each(i, c?)?;
                }
                Ok(())
            }
            AnyVae::V22(v) => v.decode_each(z, clamp, each),
        }
    }
}

pub struct Planned {
    pub cfg: VaeKind,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub info: ModelInfo,
}

/// Whether a header holds a Wan VAE (2.1 or 2.2).
pub fn is_vae(header: &Header) -> bool {
    is_vae22(header) || wan_vae::is_wan_vae(header.tensors.keys().map(String::as_str))
}

fn is_vae22(header: &Header) -> bool {
    layout22::is_wan22_vae(
        header
            .tensors
            .keys()
            .map(|k| wan_vae::layout::strip_prefix(k)),
    )
}

/// The Wan 2.2 VAE's plan: keys to original names, config from the shapes.
fn plan22(
    header: &Header,
    dtype: DType,
    config: impl Fn(String) -> CheckpointError,
) -> Result<Planned, CheckpointError> {
    let keys = || {
        header
            .tensors
            .keys()
            .map(|k| wan_vae::layout::strip_prefix(k))
    };
    let diffusers = keys().any(|k| k.contains("up_blocks."));
    let nrb = layout22::diffusers_nrb(keys());
    let mut tensors = BTreeMap::new();
    for (file, e) in &header.tensors {
        let k = wan_vae::layout::strip_prefix(file);
        let name = if diffusers {
            layout22::to_original22(k, nrb)
                .ok_or_else(|| config(format!("wan 2.2 vae: no original name for `{file}`")))?
        } else {
            k.to_string()
        };
        tensors.insert(name, e.clone());
    }
    let shapes = tensors
        .iter()
        .map(|(k, e)| (k.clone(), e.shape.clone()))
        .collect();
    let cfg = wan_vae::Wan22VaeConfig::infer(&shapes).map_err(config)?;
    let variant = if cfg.enc_dim == 160 {
        "2.2".to_string()
    } else {
        format!("2.2 width {}", cfg.enc_dim)
    };
    let info = ModelInfo {
        arch: "wan-vae",
        variant,
        layout: if diffusers { "diffusers" } else { "original" },
        dtype,
        params: tensors.values().map(|e| e.numel() as u64).sum(),
        blocks: 0,
    };
    Ok(Planned {
        cfg: VaeKind::V22(cfg),
        tensors,
        info,
    })
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
    if is_vae22(header) {
        let dtype = if dev.is_cpu() {
            DType::F32
        } else {
            dtype.unwrap_or_else(|| crate::dtype::dominant_of(header.tensors.values()))
        };
        return plan22(header, dtype, config);
    }
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
    Ok(Planned {
        cfg: VaeKind::V21(cfg),
        tensors,
        info,
    })
}

/// Reads the weights of a planned VAE.
pub fn load(header: &Header, p: &Planned, dev: &Device) -> Result<AnyVae, String> {
    let source = CheckpointSource::open(header, p.tensors.clone()).map_err(|e| e.to_string())?;
    let vb = source.var_builder(p.info.dtype, dev);
    let vae = match &p.cfg {
        VaeKind::V21(cfg) => WanVae::new(cfg, vb).map(AnyVae::V21),
        VaeKind::V22(cfg) => Wan22Vae::new(cfg, vb).map(AnyVae::V22),
    }
    .map_err(|e| super::error::plain_error(&e))?;
    source.release("");
    source.finish_uploads();
    Ok(vae)
}
