//! Flow-matching sampling with ComfyUI's KSamplerAdvanced semantics, plus the
//! diffusers/official Wan flow schedulers.
//!
//! Samplers only see a model as a `denoise(x, sigma) -> x0` closure, so the
//! same code drives a resident model, a streamed one or an analytic test
//! denoiser.
pub mod guidance;
pub mod brownian;
pub mod kdiff;
pub mod ksampler;
pub mod noise;
pub mod samplers;
pub mod schedules;
pub mod sigmas;
pub mod unipc;

use samplers::SamplerFn;

/// Every sampler `sample` accepts, by name. ComfyUI's names mean ComfyUI's
/// update rules with flow (CONST) model semantics.
pub const SAMPLER_TABLE: &[(&str, SamplerFn)] = &[
    ("euler", kdiff::euler),
    ("euler_ancestral", kdiff::euler_ancestral),
    ("heun", kdiff::heun),
    ("dpm_2", kdiff::dpm_2),
    ("dpmpp_2m", kdiff::dpmpp_2m),
    ("dpmpp_2m_sde", kdiff::dpmpp_2m_sde),
    ("dpmpp_sde", kdiff::dpmpp_sde),
    ("lms", kdiff::lms),
    ("ipndm", kdiff::ipndm),
    ("deis", kdiff::deis),
    ("res_multistep", kdiff::res_multistep),
    ("lcm", kdiff::lcm),
    ("ddim", kdiff::euler),
    ("uni_pc", unipc::comfy_bh1),
    ("uni_pc_bh2", unipc::comfy_bh2),
    ("unipc_flow", unipc::flow),
];

/// Sampler names, in table order.
pub fn sampler_names() -> Vec<&'static str> {
    SAMPLER_TABLE.iter().map(|(n, _)| *n).collect()
}
