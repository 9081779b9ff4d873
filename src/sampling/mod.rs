//! Flow-matching sampling with ComfyUI's KSamplerAdvanced semantics, plus the
//! diffusers/official Wan flow schedulers.
//!
//! Samplers only see a model as a `denoise(x, sigma) -> x0` closure, so the
//! same code drives a resident model, a streamed one or an analytic test
//! denoiser.
pub mod brownian;
pub mod dpm_solver;
pub mod guidance;
pub mod kdiff;
pub mod kdiff_more;
pub mod kdiff_sde;
pub mod ksampler;
pub mod noise;
pub mod samplers;
pub mod schedules;
pub mod sigmas;
pub mod unipc;

use samplers::SamplerFn;

/// Every sampler `sample` accepts, by name: ComfyUI's 42
/// (`comfy.samplers.SAMPLER_NAMES`, in its order) with ComfyUI's update rules
/// on flow (CONST) models, then baton's `unipc_flow` (diffusers' UniPC). The
/// `_gpu` names differ from their base only in where ComfyUI builds the
/// Brownian tree (see [`brownian`]); baton's tree is ComfyUI's CPU one.
pub const SAMPLER_TABLE: &[(&str, SamplerFn)] = &[
    ("euler", kdiff::euler),
    ("euler_cfg_pp", kdiff_more::euler_cfg_pp),
    ("euler_ancestral", kdiff::euler_ancestral),
    ("euler_ancestral_cfg_pp", kdiff_more::euler_ancestral_cfg_pp),
    ("heun", kdiff::heun),
    ("heunpp2", kdiff_more::heunpp2),
    ("dpm_2", kdiff::dpm_2),
    ("dpm_2_ancestral", kdiff_more::dpm_2_ancestral),
    ("lms", kdiff::lms),
    ("dpm_fast", dpm_solver::dpm_fast),
    ("dpm_adaptive", dpm_solver::dpm_adaptive),
    ("dpmpp_2s_ancestral", kdiff_more::dpmpp_2s_ancestral),
    (
        "dpmpp_2s_ancestral_cfg_pp",
        kdiff_more::dpmpp_2s_ancestral_cfg_pp,
    ),
    ("dpmpp_sde", kdiff::dpmpp_sde),
    ("dpmpp_sde_gpu", kdiff::dpmpp_sde),
    ("dpmpp_2m", kdiff::dpmpp_2m),
    ("dpmpp_2m_cfg_pp", kdiff_more::dpmpp_2m_cfg_pp),
    ("dpmpp_2m_sde", kdiff::dpmpp_2m_sde),
    ("dpmpp_2m_sde_gpu", kdiff::dpmpp_2m_sde),
    ("dpmpp_2m_sde_heun", kdiff_sde::dpmpp_2m_sde_heun),
    ("dpmpp_2m_sde_heun_gpu", kdiff_sde::dpmpp_2m_sde_heun),
    ("dpmpp_3m_sde", kdiff_sde::dpmpp_3m_sde),
    ("dpmpp_3m_sde_gpu", kdiff_sde::dpmpp_3m_sde),
    ("ddpm", kdiff_more::ddpm),
    ("lcm", kdiff::lcm),
    ("ipndm", kdiff::ipndm),
    ("ipndm_v", kdiff_more::ipndm_v),
    ("deis", kdiff::deis),
    ("res_multistep", kdiff_more::res_multistep),
    ("res_multistep_cfg_pp", kdiff_more::res_multistep_cfg_pp),
    (
        "res_multistep_ancestral",
        kdiff_more::res_multistep_ancestral,
    ),
    (
        "res_multistep_ancestral_cfg_pp",
        kdiff_more::res_multistep_ancestral_cfg_pp,
    ),
    ("gradient_estimation", kdiff_more::gradient_estimation),
    (
        "gradient_estimation_cfg_pp",
        kdiff_more::gradient_estimation_cfg_pp,
    ),
    ("er_sde", kdiff_sde::er_sde),
    ("seeds_2", kdiff_sde::seeds_2),
    ("seeds_3", kdiff_sde::seeds_3),
    ("sa_solver", kdiff_sde::sa_solver),
    ("sa_solver_pece", kdiff_sde::sa_solver_pece),
    ("ddim", kdiff::euler),
    ("uni_pc", unipc::comfy_bh1),
    ("uni_pc_bh2", unipc::comfy_bh2),
    ("unipc_flow", unipc::flow),
];

/// Sampler names, in table order.
pub fn sampler_names() -> Vec<&'static str> {
    SAMPLER_TABLE.iter().map(|(n, _)| *n).collect()
}

/// ComfyUI's `*_cfg_pp` samplers, which read the uncond prediction too.
pub fn is_cfg_pp(name: &str) -> bool {
    name.ends_with("_cfg_pp")
}

/// The samplers ComfyUI gives a `BrownianTreeNoiseSampler` (torchsde); the
/// pass draws their noise from [`brownian::BrownianTree`].
pub fn uses_brownian_tree(name: &str) -> bool {
    matches!(
        name.trim_end_matches("_gpu"),
        "dpmpp_sde" | "dpmpp_2m_sde" | "dpmpp_2m_sde_heun" | "dpmpp_3m_sde"
    )
}
