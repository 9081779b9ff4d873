//! Classifier-free guidance on denoised (x0) predictions, as ComfyUI's CFGGuider.

use candle_core::{Result, Tensor};

/// `uncond + (cond − uncond)·cfg`.
pub fn cfg_combine(cond: &Tensor, uncond: &Tensor, cfg: f64) -> Result<Tensor> {
    uncond + ((cond - uncond)? * cfg)?
}

/// With cfg == 1 ComfyUI skips the unconditional pass entirely.
pub fn needs_uncond(cfg: f64) -> bool {
    cfg != 1.0
}
