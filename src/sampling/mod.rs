//! Flow-matching sampling with ComfyUI's KSamplerAdvanced semantics.
//!
//! Samplers only see a model as a `denoise(x, sigma) -> x0` closure, so the
//! same code drives a resident model, a streamed one or an analytic test
//! denoiser.
pub mod guidance;
pub mod ksampler;
pub mod noise;
pub mod samplers;
pub mod sigmas;

/// Sampler names `sample` accepts.
pub const SAMPLERS: &[&str] = &["euler"];
