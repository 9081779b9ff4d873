//! The runtime's typed options: what a script's options map becomes once the
//! host has checked it (`host/api/*` builds these; nothing below the host
//! sees a script value).

use super::error::RuntimeError;
use crate::sampling::ksampler::KSampler;
use crate::sampling::samplers::SharedState;
use candle_core::{DType, Tensor};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadPolicy {
    /// Keep as many whole blocks resident as fit, stream the rest.
    Auto,
    /// Fail when the model does not fit.
    Never,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub name: Option<String>,
    pub offload: OffloadPolicy,
    /// Resident dtype; `None` keeps the file's dtype.
    pub dtype: Option<DType>,
    pub heads: Option<usize>,
    /// A SentencePiece model for a text encoder that carries none.
    pub tokenizer: Option<PathBuf>,
    /// Scan every weight for NaN/Inf before loading (reads the whole file).
    pub check_weights: bool,
    /// Read streamed blocks one ahead on a helper thread (two buffers).
    pub prefetch: bool,
    /// The path as the script wrote it (`builtin:...` or a name searched
    /// for), for the run manifest; the resolved path when `None`.
    pub requested: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            name: None,
            offload: OffloadPolicy::Auto,
            dtype: None,
            heads: None,
            tokenizer: None,
            check_weights: false,
            prefetch: true,
            requested: None,
        }
    }
}

/// `sample` settings: the contexts, KSamplerAdvanced's settings (see
/// `sampling::ksampler`) and the solver state to continue.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub positive: Tensor,
    pub negative: Option<Tensor>,
    /// What an image-to-video DiT gets besides `x` (ComfyUI's `c_concat`:
    /// 4 mask channels, then the normalised image latent), from
    /// `image_to_video` or `first_last_to_video`.
    pub image_cond: Option<Tensor>,
    pub pass: KSampler,
    /// The solver history to continue and update; None starts fresh, as ComfyUI does.
    pub state: Option<SharedState>,
}

impl SampleOptions {
    /// A pass that evaluates the uncond prediction needs a negative context:
    /// at cfg ≠ 1, and for the cfg_pp samplers at any cfg.
    pub fn check_guidance(&self) -> Result<(), RuntimeError> {
        if !self.pass.needs_uncond() || self.negative.is_some() {
            return Ok(());
        }
        let why = if crate::sampling::guidance::needs_uncond(self.pass.cfg) {
            format!("cfg {}", self.pass.cfg)
        } else {
            format!(
                "sampler '{}' (it uses the uncond prediction at any cfg)",
                self.pass.sampler.name()
            )
        };
        Err(RuntimeError::Input(format!(
            "{why} needs a negative context: pass negative: <tensor>, or cfg: 1.0"
        )))
    }
}

/// What one `sample` call did, for the log and the summary.
#[derive(Debug, Clone, Default)]
pub struct SampleReport {
    pub steps_run: usize,
    pub model_calls: usize,
    pub streamed_bytes: u64,
    pub seconds: f64,
}

/// `decode` settings.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// The latent is in the VAE's raw space already (no denormalisation).
    pub raw: bool,
    /// Clamp the decoded video to [-1, 1].
    pub clamp: bool,
}

/// `encode_text` settings.
#[derive(Debug, Clone, Copy)]
pub struct TextOptions {
    /// Clean the prompt as Wan's pipelines do.
    pub clean: bool,
    /// Rows of context handed to the DiT (zero-padded).
    pub rows: usize,
}

/// `image_to_video`, `first_last_to_video` and `ti2v_latent` settings:
/// the images (baton's [B, 3, F, H, W] in [-1, 1]) and the video size.
#[derive(Debug, Clone)]
pub struct FrameCondOptions {
    pub start: Option<Tensor>,
    pub end: Option<Tensor>,
    pub width: usize,
    pub height: usize,
    pub length: usize,
    pub batch: usize,
}

/// What the conditioning verbs return: the latent to sample (model space)
/// and `image_cond` (I2V) or `noise_mask` (TI2V).
#[derive(Debug, Clone)]
pub struct FrameCond {
    pub latent: Tensor,
    pub image_cond: Option<Tensor>,
    pub noise_mask: Option<Tensor>,
}
