//! Samplers: update rules over a sigma list, given a denoiser.

use candle_core::{Result, Tensor};

/// Called after each step with (step index within the pass, total steps, sigma).
pub type StepCallback<'a> = dyn FnMut(usize, usize, f32) + 'a;

/// ComfyUI `euler` (s_churn = 0): `d = (x − D)/σ_i`, `x = x + d·(σ_{i+1} − σ_i)`.
pub fn euler(
    denoise: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
    mut x: Tensor,
    sigmas: &[f32],
    on_step: &mut StepCallback,
) -> Result<Tensor> {
    let steps = sigmas.len().saturating_sub(1);
    for i in 0..steps {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = denoise(&x, s)?;
        let d = div_scalar(&(&x - &denoised)?, s)?;
        x = (x + (d * (s_next - s) as f64)?)?;
        on_step(i, steps, s);
    }
    Ok(x)
}

/// Dispatches on a sampler name (see `sampling::SAMPLERS`).
pub fn run(
    name: &str,
    denoise: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
    x: Tensor,
    sigmas: &[f32],
    on_step: &mut StepCallback,
) -> Result<Tensor> {
    match name {
        "euler" => euler(denoise, x, sigmas, on_step),
        other => candle_core::bail!(
            "unknown sampler '{other}' (available: {})",
            super::SAMPLERS.join(", ")
        ),
    }
}

/// `x / s` as a true f32 division (candle's `Tensor / f64` multiplies by the
/// reciprocal, which is not bit-identical to ComfyUI's division).
pub fn div_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    x.broadcast_div(&Tensor::new(s, x.device())?.to_dtype(x.dtype())?)
}
