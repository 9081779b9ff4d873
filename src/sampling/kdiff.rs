//! ComfyUI's k-diffusion samplers with flow (CONST) semantics.
//!
//! Each update is written in ComfyUI's float32 operation order (README of
//! tests/fixtures/comfy, section 5), so that traces match step for step.

use super::samplers::{div_scalar, Hooks, SolverState};
use candle_core::{Result, Tensor};

/// ComfyUI `euler` (s_churn = 0): `d = (x − D)/σ_i`, `x = x + d·(σ_{i+1} − σ_i)`.
/// `ddim` is the same update in ComfyUI (its extra option only matters with a mask).
pub fn euler(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len().saturating_sub(1);
    for i in 0..steps {
        let denoised = (h.denoise)(&x, s[i])?;
        let d = div_scalar(&(&x - &denoised)?, s[i])?;
        x = (x + (d * (s[i + 1] - s[i]) as f64)?)?;
        st.steps_done += 1;
        (h.on_step)(i, steps, s[i]);
    }
    Ok(x)
}
