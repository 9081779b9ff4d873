//! Every sampler `sample` accepts, with the test that checks it and what
//! that test asserts and measured: `baton help samplers` and the README's
//! sampler table are generated from it, and `tests/samplers_all.rs` holds it
//! against the sampler table and the README.

use super::tables::md_cell as cell;

/// One sampler `sample` accepts: what it is, the test that checks it
/// against ComfyUI (or diffusers), and what that test asserts and measured.
pub struct SamplerDoc {
    pub name: &'static str,
    pub kind: &'static str,
    pub test: &'static str,
    pub result: &'static str,
}

const fn s(
    name: &'static str,
    kind: &'static str,
    test: &'static str,
    result: &'static str,
) -> SamplerDoc {
    SamplerDoc {
        name,
        kind,
        test,
        result,
    }
}

/// Every sampler, in `sampling::SAMPLER_TABLE` order (ComfyUI's 42 names
/// in `comfy.samplers.SAMPLER_NAMES` order, then `unipc_flow`). Each
/// ComfyUI name runs through the product's sampling pass in its test, with
/// the pass's own noise (the seeded generator, or the Brownian tree for the
/// SDE samplers). "bit-exact" and the tolerances are what the tests assert;
/// "measured" is the worst difference the test prints, on the CPU.
pub static SAMPLERS: &[SamplerDoc] = &[
    s("euler", "k-diffusion Euler", "tests/samplers_all.rs::euler", "bit-exact"),
    s("euler_cfg_pp", "Euler, CFG++ (uncond pass always on)", "tests/samplers_all.rs::euler_cfg_pp, ::cfg_pp_at_cfg_2", "bit-exact (cfg 1 and 2)"),
    s("euler_ancestral", "ancestral Euler, RF variant", "tests/samplers_all.rs::euler_ancestral", "bit-exact"),
    s("euler_ancestral_cfg_pp", "ancestral Euler, CFG++", "tests/samplers_all.rs::euler_ancestral_cfg_pp, ::cfg_pp_at_cfg_2", "≤ 1e-5 asserted; measured 4.8e-7 (cfg 1 and 2)"),
    s("heun", "Heun", "tests/samplers_all.rs::heun", "bit-exact"),
    s("heunpp2", "Heun++ (3 evaluations per step)", "tests/samplers_all.rs::heunpp2", "bit-exact"),
    s("dpm_2", "DPM-Solver-2, discard-penultimate sigmas", "tests/samplers_all.rs::dpm_2", "bit-exact"),
    s("dpm_2_ancestral", "DPM-Solver-2 ancestral, RF variant", "tests/samplers_all.rs::dpm_2_ancestral", "bit-exact"),
    s("lms", "linear multistep, order 4 (scipy quad's qk21 coefficients)", "tests/samplers_all.rs::lms, ::ksampler_advanced_splits, ::recomputed_coefficients", "bit-exact (single run and split)"),
    s("dpm_fast", "DPM-Solver-Fast, stops at the last nonzero sigma", "tests/samplers_all.rs::dpm_fast", "≤ 1e-5 asserted; measured 4.8e-7"),
    s("dpm_adaptive", "adaptive DPM-Solver-12/23, stops at the last nonzero sigma", "tests/samplers_all.rs::dpm_adaptive", "≤ 1e-5 asserted; measured 2.4e-7"),
    s("dpmpp_2s_ancestral", "DPM-Solver++(2S) ancestral, RF variant", "tests/samplers_all.rs::dpmpp_2s_ancestral", "bit-exact"),
    s("dpmpp_2s_ancestral_cfg_pp", "DPM-Solver++(2S) ancestral, CFG++", "tests/samplers_all.rs::dpmpp_2s_ancestral_cfg_pp, ::cfg_pp_at_cfg_2", "≤ 1e-5 asserted; measured 2.3e-6 (cfg 1), 3.3e-6 (cfg 2)"),
    s("dpmpp_sde", "DPM-Solver++ SDE, Brownian tree", "tests/samplers_all.rs::dpmpp_sde, tests/samplers_comfy.rs::dpmpp_sde_matches_with_its_brownian_tree", "≤ 1e-3 asserted per evaluation; measured 5.9e-4 (ill-conditioned step 0), output 6.4e-5 (≤ 1e-4 asserted)"),
    s("dpmpp_sde_gpu", "= dpmpp_sde (ComfyUI's tree on the latent's device)", "tests/samplers_all.rs::dpmpp_sde_gpu", "as dpmpp_sde (ComfyUI's CPU tree)"),
    s("dpmpp_2m", "DPM-Solver++(2M)", "tests/samplers_all.rs::dpmpp_2m, ::ksampler_advanced_splits, tests/samplers_comfy.rs", "≤ 1e-5 asserted; measured 4.8e-7, split bit-exact"),
    s("dpmpp_2m_cfg_pp", "DPM-Solver++(2M), CFG++", "tests/samplers_all.rs::dpmpp_2m_cfg_pp, ::cfg_pp_at_cfg_2", "≤ 1e-5 asserted; measured 4.8e-7 (cfg 1), 1.9e-6 (cfg 2)"),
    s("dpmpp_2m_sde", "DPM-Solver++(2M) SDE, midpoint, Brownian tree", "tests/samplers_all.rs::dpmpp_2m_sde, tests/samplers_comfy.rs::dpmpp_2m_sde_matches_with_its_brownian_tree", "≤ 1e-5 asserted; measured 7.2e-7"),
    s("dpmpp_2m_sde_gpu", "= dpmpp_2m_sde", "tests/samplers_all.rs::dpmpp_2m_sde_gpu", "as dpmpp_2m_sde (ComfyUI's CPU tree)"),
    s("dpmpp_2m_sde_heun", "DPM-Solver++(2M) SDE, Heun, Brownian tree", "tests/samplers_all.rs::dpmpp_2m_sde_heun", "≤ 1e-5 asserted; measured 4.8e-7"),
    s("dpmpp_2m_sde_heun_gpu", "= dpmpp_2m_sde_heun", "tests/samplers_all.rs::dpmpp_2m_sde_heun_gpu", "as dpmpp_2m_sde_heun (ComfyUI's CPU tree)"),
    s("dpmpp_3m_sde", "DPM-Solver++(3M) SDE, Brownian tree", "tests/samplers_all.rs::dpmpp_3m_sde, ::ksampler_advanced_splits", "≤ 1e-5 asserted; measured 4.8e-7, split ≤ 5.4e-7 (a tree per pass)"),
    s("dpmpp_3m_sde_gpu", "= dpmpp_3m_sde", "tests/samplers_all.rs::dpmpp_3m_sde_gpu", "as dpmpp_3m_sde (ComfyUI's CPU tree)"),
    s("ddpm", "DDPM (VP formulas on flow sigmas, as ComfyUI)", "tests/samplers_all.rs::ddpm", "≤ 1e-5 asserted; measured 1.3e-6"),
    s("lcm", "LCM", "tests/samplers_all.rs::lcm", "bit-exact"),
    s("ipndm", "improved PNDM, order 4", "tests/samplers_all.rs::ipndm, ::ksampler_advanced_splits", "bit-exact (single run and split)"),
    s("ipndm_v", "improved PNDM, variable step", "tests/samplers_all.rs::ipndm_v", "bit-exact"),
    s("deis", "DEIS, tab mode, order 3", "tests/samplers_all.rs::deis, ::ksampler_advanced_splits, ::recomputed_coefficients", "≤ 1e-5 asserted; measured 4.8e-7, split 1.9e-6"),
    s("res_multistep", "RES multistep", "tests/samplers_all.rs::res_multistep, ::ksampler_advanced_splits", "≤ 1e-5 asserted; measured 4.8e-7, split bit-exact"),
    s("res_multistep_cfg_pp", "RES multistep, CFG++", "tests/samplers_all.rs::res_multistep_cfg_pp, ::cfg_pp_at_cfg_2", "≤ 1e-5 asserted; measured 7.2e-7 (cfg 1), 1.4e-6 (cfg 2)"),
    s("res_multistep_ancestral", "RES multistep, ancestral (VE step)", "tests/samplers_all.rs::res_multistep_ancestral", "≤ 1e-5 asserted; measured 9.5e-7"),
    s("res_multistep_ancestral_cfg_pp", "RES multistep, ancestral, CFG++", "tests/samplers_all.rs::res_multistep_ancestral_cfg_pp, ::cfg_pp_at_cfg_2", "≤ 1e-5 asserted; measured 1.1e-6 (cfg 1), 2.6e-6 (cfg 2)"),
    s("gradient_estimation", "gradient estimation (γ = 2)", "tests/samplers_all.rs::gradient_estimation", "bit-exact"),
    s("gradient_estimation_cfg_pp", "gradient estimation, CFG++", "tests/samplers_all.rs::gradient_estimation_cfg_pp, ::cfg_pp_at_cfg_2", "bit-exact (cfg 1 and 2)"),
    s("er_sde", "ER-SDE-Solver-3", "tests/samplers_all.rs::er_sde", "≤ 1e-5 asserted; measured 1.1e-6"),
    s("seeds_2", "SEEDS-2", "tests/samplers_all.rs::seeds_2", "≤ 1e-5 asserted; measured 3.6e-7"),
    s("seeds_3", "SEEDS-3", "tests/samplers_all.rs::seeds_3", "≤ 1e-5 asserted; measured 4.8e-7"),
    s("sa_solver", "SA-Solver (predictor 3, corrector 4)", "tests/samplers_all.rs::sa_solver, ::recomputed_coefficients", "≤ 1e-5 asserted; measured 9.5e-7"),
    s("sa_solver_pece", "SA-Solver, PECE", "tests/samplers_all.rs::sa_solver_pece", "≤ 1e-5 asserted; measured 1.9e-6"),
    s("ddim", "= euler in ComfyUI (without a mask)", "tests/samplers_all.rs::ddim", "bit-exact"),
    s("uni_pc", "UniPC bh1, discard-penultimate sigmas", "tests/samplers_all.rs::uni_pc, tests/sampling_unipc.rs", "≤ 1e-5 asserted; measured 7.2e-7"),
    s("uni_pc_bh2", "UniPC bh2, discard-penultimate sigmas", "tests/samplers_all.rs::uni_pc_bh2, tests/sampling_unipc.rs", "≤ 1e-5 asserted; measured 7.2e-7"),
    s("unipc_flow", "diffusers UniPC (WanPipeline), baton's own", "tests/sampling_unipc.rs, tests/scripts/sampling_parity.rhai", "≤ 2.8e-8 rel per step replayed; ≤ 1.1e-6 rel L2 end to end"),
];

/// `baton help samplers`: the sampler table, as text or (markdown) as the
/// README's table.
pub fn render_samplers(markdown: bool) -> String {
    if markdown {
        let mut t = String::from("| sampler | what | checked by | result |\n|---|---|---|---|\n");
        for d in SAMPLERS {
            t.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                d.name,
                cell(d.kind),
                cell(d.test),
                cell(d.result)
            ));
        }
        return t;
    }
    let w = SAMPLERS.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let mut t = String::from(
        "samplers (sample's `sampler` option; ComfyUI's names with ComfyUI's semantics):\n",
    );
    for d in SAMPLERS {
        t.push_str(&format!(
            "  {:<w$}  {}\n  {:<w$}    checked by {}: {}\n",
            d.name, d.kind, "", d.test, d.result
        ));
    }
    t
}

/// README markers around the generated sampler table.
pub const README_SAMPLERS_BEGIN: &str =
    "<!-- BEGIN sampler table: generated by `baton help samplers --markdown` -->";
pub const README_SAMPLERS_END: &str = "<!-- END sampler table -->";
