//! Every ComfyUI sampler name against ComfyUI's own trace of it
//! (tests/fixtures/comfy/sampler_traces_ext.*, README §8 there: KSampler,
//! steps 8, simple, shift 5, seed 42, latent [1,16,1,2,4], the analytic
//! denoiser standing in for the network), run through the product's
//! sampling pass (`KSampler::run`, what `sample` runs) with the analytic
//! denoiser as its model. Nothing is replayed: the default-generator draws
//! and the Brownian-tree draws are the pass's own, and so are the lms, deis,
//! sa_solver and er_sde coefficients ComfyUI computes with scipy/torch.
//!
//! Each run is compared at every model evaluation (its input `x` and its
//! guided output, `calls.*` in the fixture, or the per-step `x`/`denoised`
//! when those are the same), at the evaluation sigmas (bit for bit) and at
//! `sampler_out`. Per name, the check is bit-exact or within the absolute
//! tolerance in [`TOL`]; the test prints the measured worst difference.
mod common;

use baton::sampling::sigmas;
use candle_core::{Device, Tensor};
use common::comfy::*;
use serde_json::Value;
use std::collections::HashMap;

/// Names whose updates use no transcendental function (or only ones libm
/// and torch round alike here) are bit-exact; the rest use log/exp/expm1/
/// sqrt/pow where torch's vectorised f32 results are not correctly rounded
/// (fixture README §7), or coefficients ComfyUI gets from scipy/torch
/// reductions (deis, sa_solver, er_sde: README §8.8).
const TOL: &[(&str, f64)] = &[
    ("euler", 0.0),
    ("euler_cfg_pp", 0.0),
    ("euler_ancestral", 0.0),
    ("euler_ancestral_cfg_pp", 1e-5),
    ("heun", 0.0),
    ("heunpp2", 0.0),
    ("dpm_2", 0.0),
    ("dpm_2_ancestral", 0.0),
    ("lms", 0.0),
    ("dpm_fast", 1e-5),
    ("dpm_adaptive", 1e-5),
    ("dpmpp_2s_ancestral", 0.0),
    ("dpmpp_2s_ancestral_cfg_pp", 1e-5),
    // Step 0 cancels t² − su² ≈ 5e-4 out of numbers near 1225: one ulp of
    // torch's sqrt moves the midpoint evaluation by ~6e-4 (README §5, §7).
    ("dpmpp_sde", 1e-3),
    ("dpmpp_sde_gpu", 1e-3),
    ("dpmpp_2m", 1e-5),
    ("dpmpp_2m_cfg_pp", 1e-5),
    ("dpmpp_2m_sde", 1e-5),
    ("dpmpp_2m_sde_gpu", 1e-5),
    ("dpmpp_2m_sde_heun", 1e-5),
    ("dpmpp_2m_sde_heun_gpu", 1e-5),
    ("dpmpp_3m_sde", 1e-5),
    ("dpmpp_3m_sde_gpu", 1e-5),
    ("ddpm", 1e-5),
    ("lcm", 0.0),
    ("ipndm", 0.0),
    ("ipndm_v", 0.0),
    ("deis", 1e-5),
    ("res_multistep", 1e-5),
    ("res_multistep_cfg_pp", 1e-5),
    ("res_multistep_ancestral", 1e-5),
    ("res_multistep_ancestral_cfg_pp", 1e-5),
    ("gradient_estimation", 0.0),
    ("gradient_estimation_cfg_pp", 0.0),
    ("er_sde", 1e-5),
    ("seeds_2", 1e-5),
    ("seeds_3", 1e-5),
    ("sa_solver", 1e-5),
    ("sa_solver_pece", 1e-5),
    ("ddim", 0.0),
    ("uni_pc", 1e-5),
    ("uni_pc_bh2", 1e-5),
];

fn tol(name: &str) -> f64 {
    TOL.iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name}: no tolerance"))
        .1
}

struct Ext {
    js: Value,
    fx: HashMap<String, Tensor>,
    model: Analytic,
}

fn ext() -> Ext {
    let js = load_json("comfy/sampler_traces_ext.json");
    let fx = common::load_fixture("comfy/sampler_traces_ext.safetensors");
    let model = Analytic::load(&fx);
    Ext { js, fx, model }
}

fn latent() -> Tensor {
    Tensor::zeros((1, 16, 1, 2, 4), candle_core::DType::F32, &Device::Cpu).unwrap()
}

/// Compares a pass with the fixture run `prefix` (JSON `run`): every
/// evaluation sigma bit for bit, every evaluation's x and output and the
/// sampler output within `tol` (0: bit for bit). Returns the worst difference.
fn compare(pass: &Pass, ext: &Ext, run: &Value, prefix: &str, tol: f64) -> f64 {
    let calls = &run["calls"];
    let want_sigmas = f32_list(calls, "sigma");
    // Sigmas computed with exp/log (the midpoints, dpm_fast's σ(t)) may be
    // 1 ulp from torch's where the run is not bit-exact.
    let sigma_ok = pass.call_sigmas.len() == want_sigmas.len()
        && pass.call_sigmas.iter().zip(&want_sigmas).all(|(a, b)| {
            if tol == 0.0 {
                a.to_bits() == b.to_bits()
            } else {
                (a - b).abs() as f64 <= tol
            }
        });
    assert!(
        sigma_ok,
        "{prefix}: model called at {:?}, ComfyUI at {want_sigmas:?}",
        pass.call_sigmas
    );
    let key = |k: &str| format!("{prefix}.{k}");
    let (xs, ds) = if calls["same_as_steps"].as_bool() == Some(true) {
        (&ext.fx[&key("x")], &ext.fx[&key("denoised")])
    } else {
        (&ext.fx[&key("calls.x")], &ext.fx[&key("calls.denoised")])
    };
    assert_eq!(
        xs.dim(0).unwrap(),
        pass.call_x.len(),
        "{prefix}: evaluations"
    );
    let mut worst = 0f64;
    let mut check = |a: &Tensor, b: &Tensor, what: String| {
        let d = common::max_abs_diff(a, b);
        worst = worst.max(d);
        if tol == 0.0 {
            assert_bit_exact(a, b, &what);
        } else {
            assert!(d <= tol, "{what}: max abs {d:.3e} > {tol:.1e}");
        }
    };
    for k in 0..pass.call_x.len() {
        check(
            &pass.call_x[k],
            &xs.get(k).unwrap(),
            format!("{prefix} eval {k} x"),
        );
        check(
            &pass.call_denoised[k],
            &ds.get(k).unwrap(),
            format!("{prefix} eval {k} denoised"),
        );
    }
    let out = pass.out.as_ref().expect("a non-empty pass");
    check(
        out,
        &ext.fx[&key("sampler_out")],
        format!("{prefix}.sampler_out"),
    );
    worst
}

/// Runs `name` on the §8 setup at `cfg` and compares with `prefix`.
fn check(name: &str, cfg: f64, prefix: &str, run: &Value) {
    let ext = ext();
    let steps = ext.js["setup"]["steps"].as_u64().unwrap() as usize;
    let full = sigmas::for_sampler("simple", steps, 5.0, name).unwrap();
    assert!(
        same_list(&full, &f32_list(run, "sigmas_in")),
        "{name}: sigmas"
    );
    let pass = ksampler_pass(
        &ext.model,
        &latent(),
        &PassArgs {
            full: &full,
            start: 0,
            end: None,
            leftover_noise: false,
            add_noise: true,
            seed: 42,
            cfg,
            sampler: name,
            draws: None,
        },
    );
    let t = tol(name);
    let worst = compare(&pass, &ext, run, prefix, t);
    if t == 0.0 {
        println!("{prefix}: bit-exact ({} evaluations)", pass.call_x.len());
    } else {
        println!("{prefix}: worst max abs {worst:.2e} (tolerance {t:.0e})");
    }
}

/// One traced sampler at cfg 1. `_gpu` names are checked against their
/// base's trace, which the fixture marks bit-identical on the CPU.
fn check_name(name: &str) {
    let ext = ext();
    let run = ext.js["samplers"][name].clone();
    let prefix = match run.get("same_as").and_then(Value::as_str) {
        Some(base) => {
            assert_eq!(run["bit_identical_on_cpu"], true);
            base.to_string()
        }
        None => format!("trace.{name}"),
    };
    let base = prefix.trim_start_matches("trace.");
    let run = ext.js["samplers"][base].clone();
    check(name, 1.0, &prefix, &run);
}

macro_rules! traced {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_name(stringify!($name));
        }
    )*};
}

traced!(
    euler,
    euler_cfg_pp,
    euler_ancestral,
    euler_ancestral_cfg_pp,
    heun,
    heunpp2,
    dpm_2,
    dpm_2_ancestral,
    lms,
    dpm_fast,
    dpm_adaptive,
    dpmpp_2s_ancestral,
    dpmpp_2s_ancestral_cfg_pp,
    dpmpp_sde,
    dpmpp_sde_gpu,
    dpmpp_2m,
    dpmpp_2m_cfg_pp,
    dpmpp_2m_sde,
    dpmpp_2m_sde_gpu,
    dpmpp_2m_sde_heun,
    dpmpp_2m_sde_heun_gpu,
    dpmpp_3m_sde,
    dpmpp_3m_sde_gpu,
    ddpm,
    lcm,
    ipndm,
    ipndm_v,
    deis,
    res_multistep,
    res_multistep_cfg_pp,
    res_multistep_ancestral,
    res_multistep_ancestral_cfg_pp,
    gradient_estimation,
    gradient_estimation_cfg_pp,
    er_sde,
    seeds_2,
    seeds_3,
    sa_solver,
    sa_solver_pece,
    ddim,
    uni_pc,
    uni_pc_bh2,
);

/// The cfg_pp samplers at cfg 2 (`cfg2.<name>`).
#[test]
fn cfg_pp_at_cfg_2() {
    let ext = ext();
    let cases = ext.js["cfg_cases"].as_object().unwrap();
    assert_eq!(cases.len(), 7);
    for (key, run) in cases {
        let name = key.trim_end_matches("_cfg2");
        check(name, 2.0, &format!("cfg2.{name}"), run);
    }
}

/// KSamplerAdvanced splits (steps 6, pass 1 = 0..2 with leftover noise,
/// pass 2 = 2..end on pass 1's node output, add_noise off): each pass is a
/// fresh sampler call, multistep history and Brownian tree included.
#[test]
fn ksampler_advanced_splits() {
    let ext = ext();
    for (name, split) in ext.js["splits"].as_object().unwrap() {
        let steps = split["steps"].as_u64().unwrap() as usize;
        let at = split["split_at"].as_u64().unwrap() as usize;
        let full = sigmas::for_sampler("simple", steps, 5.0, name).unwrap();
        let args = |start, end: Option<usize>, add_noise| PassArgs {
            full: &full,
            start,
            end,
            leftover_noise: end.is_some(),
            add_noise,
            seed: 42,
            cfg: 1.0,
            sampler: name,
            draws: None,
        };
        let t = tol(name);
        let p1 = ksampler_pass(&ext.model, &latent(), &args(0, Some(at), true));
        let w1 = compare(
            &p1,
            &ext,
            &split["pass1"],
            &format!("split.{name}.pass1"),
            t,
        );
        let pass1_node_out = &ext.fx[&format!("split.{name}.pass1.node_out")];
        let latent_in = ext.model.process_in(pass1_node_out);
        assert_bit_exact(
            &latent_in,
            &ext.fx[&format!("split.{name}.pass2.latent_in")],
            "latent_in",
        );
        let p2 = ksampler_pass(&ext.model, &latent_in, &args(at, None, false));
        let w2 = compare(
            &p2,
            &ext,
            &split["pass2"],
            &format!("split.{name}.pass2"),
            t,
        );
        let single = ksampler_pass(&ext.model, &latent(), &args(0, None, true));
        let d = common::max_abs_diff(
            single.out.as_ref().unwrap(),
            &ext.fx[&format!("split.{name}.single.sampler_out")],
        );
        assert!(
            if t == 0.0 { d == 0.0 } else { d <= t },
            "{name} single: {d:.3e}"
        );
        println!("split.{name}: pass 1 {w1:.2e}, pass 2 {w2:.2e}, single {d:.2e}");
    }
}

/// Every name ComfyUI offers is in the product's table, and the table has
/// nothing else but baton's own `unipc_flow`.
#[test]
fn every_comfy_name_is_a_sampler() {
    let ext = ext();
    let names: Vec<&str> = ext.js["sampler_names"]["SAMPLER_NAMES"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 42);
    let ours = baton::sampling::sampler_names();
    for n in &names {
        assert!(ours.contains(n), "{n} missing");
        tol(n);
    }
    assert_eq!(ours.len(), 43);
}

/// The coefficients ComfyUI gets from scipy (lms), a torch Riemann sum
/// (deis) and an f32 `linalg.solve` (sa_solver), as the product computes
/// them, against the recorded ones (README §8.8).
#[test]
fn recomputed_coefficients() {
    use baton::sampling::{kdiff, kdiff_sde};
    let ext = ext();
    // lms: QUADPACK's qk21 pass over the f32 integrand.
    let mut runs: Vec<&Value> = vec![&ext.js["samplers"]["lms"]];
    runs.extend(["pass1", "pass2", "single"].map(|p| &ext.js["splits"]["lms"][p]));
    let (mut n, mut bad) = (0, 0);
    for run in runs {
        let s = f32_list(run, "sigmas_in");
        for c in run["lms_coeffs"].as_array().unwrap() {
            let (order, i, j) = (
                c["order"].as_u64().unwrap() as usize,
                c["i"].as_u64().unwrap() as usize,
                c["j"].as_u64().unwrap() as usize,
            );
            let nodes: Vec<f32> = (0..order).map(|k| s[i - k]).collect();
            let got = kdiff::lms_coeff(&nodes, j, s[i], s[i + 1]);
            let want = c["coeff_f64"].as_f64().unwrap();
            // The update uses f32(c): that must be ComfyUI's exactly.
            assert_eq!(
                (got as f32).to_bits(),
                (want as f32).to_bits(),
                "lms ({order}, {i}, {j})"
            );
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "lms ({order}, {i}, {j}): {got} vs {want}");
            if ulps != 0 {
                bad += 1;
            }
            n += 1;
        }
    }
    println!(
        "lms: {n} coefficients equal as f32; as f64 {} bit-exact, the rest within 2 ulp",
        n - bad
    );
    assert!(n >= 45);

    // deis: ComfyUI's β (not 0.1/20), the VP times and the coefficients.
    let run = &ext.js["samplers"]["deis"];
    let edm = &run["deis_edm2t"];
    let (bd, b0) = kdiff::deis_betas();
    let want_b0 = edm["beta_0"].as_f64().unwrap();
    let want_b1 = edm["beta_1"].as_f64().unwrap();
    println!(
        "deis β0 {b0} (ComfyUI {want_b0}), β1 {} (ComfyUI {want_b1})",
        bd + b0
    );
    // One f32 ulp of numpy's log(1.000004)/1e-3 apart: ≤ 5e-10 (not 0.1/20).
    assert!((b0 - want_b0).abs() <= 1e-9 && (bd + b0 - want_b1).abs() <= 1e-9);
    let s = f32_list(run, "sigmas_in");
    let t_want = f32_list(edm, "t_steps");
    let t: Vec<f32> = s.iter().map(|&v| kdiff::vp_time(v)).collect();
    let t_err = t
        .iter()
        .zip(&t_want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("deis t_steps: max abs {t_err:.2e}");
    assert!(t_err <= 1e-6);
    let mut worst = 0f64;
    for (i, row) in run["deis_coeffs"].as_array().unwrap().iter().enumerate() {
        let row = row.as_array().unwrap();
        if row.is_empty() || i + 1 >= s.len() - 1 {
            continue; // order 1, and the last step (Euler into 0)
        }
        let nodes: Vec<f32> = (0..row.len()).map(|k| t_want[i - k]).collect();
        for (j, c) in row.iter().enumerate() {
            let want = c.as_f64().unwrap();
            let got = kdiff::deis_coefficient(&nodes, j, t_want[i], t_want[i + 1]) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
    }
    println!("deis coefficients: max rel {worst:.2e}");
    assert!(worst <= 1e-6, "deis coefficients {worst:.3e}");

    // sa_solver: the double solve against torch's f32 one.
    let mut worst = 0f64;
    for name in ["sa_solver", "sa_solver_pece"] {
        for c in ext.js["samplers"][name]["sa_solver_b_coeffs"]
            .as_array()
            .unwrap()
        {
            let lambdas = f32_list(c, "curr_lambdas");
            let got = kdiff_sde::sa_b_coeffs(
                c["sigma_next"].as_f64().unwrap() as f32,
                &lambdas,
                c["lambda_s"].as_f64().unwrap() as f32,
                c["lambda_t"].as_f64().unwrap() as f32,
                c["tau_t"].as_f64().unwrap() as f32,
            );
            for (g, w) in got.iter().zip(f32_list(c, "b")) {
                worst = worst.max((g - w).abs() as f64);
            }
        }
    }
    println!("sa_solver b coefficients: max abs {worst:.2e}");
    assert!(worst <= 1e-6, "sa_solver b {worst:.3e}");
}

/// The sampler table (`baton help samplers`, the README) lists every sampler
/// in table order, names tests that exist, and claims what they assert.
#[test]
fn sampler_docs_match_the_tests() {
    use baton::host::docs;
    let names = baton::sampling::sampler_names();
    let listed: Vec<&str> = docs::SAMPLERS.iter().map(|d| d.name).collect();
    assert_eq!(listed, names, "docs::SAMPLERS must follow SAMPLER_TABLE");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in docs::SAMPLERS {
        let mut file = String::new();
        for part in d.test.split(", ") {
            let (f, func) = match part.split_once("::") {
                Some(("", func)) => (file.clone(), Some(func)),
                Some((f, func)) => (f.to_string(), Some(func)),
                None => (part.to_string(), None),
            };
            file = f.clone();
            let text = std::fs::read_to_string(root.join(&f))
                .unwrap_or_else(|e| panic!("{}: {f}: {e}", d.name));
            if let Some(func) = func {
                let found = text.contains(&format!("fn {func}()"))
                    || text.contains(&format!("\n    {func},\n"));
                assert!(found, "{}: no test {func} in {f}", d.name);
            }
        }
        if let Some(&(_, t)) = TOL.iter().find(|(n, _)| *n == d.name) {
            if t == 0.0 {
                assert!(
                    d.result.starts_with("bit-exact"),
                    "{}: {}",
                    d.name,
                    d.result
                );
            } else {
                let claim = format!("≤ {t:e}");
                assert!(
                    d.result.contains(&claim) || d.result.starts_with("as "),
                    "{}: '{}' should say {claim}",
                    d.name,
                    d.result
                );
            }
        }
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find(docs::README_SAMPLERS_BEGIN)
        .expect("README sampler table")
        + docs::README_SAMPLERS_BEGIN.len();
    let end = readme.find(docs::README_SAMPLERS_END).unwrap();
    assert_eq!(
        readme[start..end].trim(),
        docs::render_samplers(true).trim(),
        "README's sampler table is stale: regenerate it with `baton help samplers --markdown`"
    );
    let text = docs::help_text(Some("samplers"), false).unwrap();
    for n in names {
        assert!(text.contains(n), "baton help samplers misses {n}");
    }
}

/// Every draw ComfyUI takes is taken, at the same (σ, σ_next), including
/// the ones multiplied by 0 (res_multistep, dpm_fast, dpm_adaptive: they
/// advance the generator) and none it does not take (euler_cfg_pp creates
/// a generator and never draws; the last step of most samplers draws nothing).
#[test]
fn noise_draws_match_comfy() {
    let ext = ext();
    let mut checked = 0;
    for (name, run) in ext.js["samplers"].as_object().unwrap() {
        if run.get("same_as").is_some() {
            continue;
        }
        let full = sigmas::for_sampler("simple", 8, 5.0, name).unwrap();
        let cfg = 1.0;
        let seen = ksampler_draw_sigmas(
            &ext.model,
            &latent(),
            &PassArgs {
                full: &full,
                start: 0,
                end: None,
                leftover_noise: false,
                add_noise: true,
                seed: 42,
                cfg,
                sampler: name,
                draws: None,
            },
        );
        let want: Vec<(f32, f32)> = match run.get("noise_draw_sigmas_bits") {
            Some(v) => v
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let b = |v: &Value| {
                        f32::from_bits(
                            u32::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16)
                                .unwrap(),
                        )
                    };
                    (b(&p[0]), b(&p[1]))
                })
                .collect(),
            None => Vec::new(),
        };
        assert_eq!(
            seen.len(),
            want.len(),
            "{name}: {} draws, ComfyUI {}",
            seen.len(),
            want.len()
        );
        let t = tol(name);
        for (k, (a, b)) in seen.iter().zip(&want).enumerate() {
            let close = |x: f32, y: f32| {
                if t == 0.0 {
                    x.to_bits() == y.to_bits()
                } else {
                    (x - y).abs() as f64 <= t
                }
            };
            assert!(
                close(a.0, b.0) && close(a.1, b.1),
                "{name} draw {k}: {a:?} vs {b:?}"
            );
        }
        checked += 1;
    }
    println!("{checked} samplers: draw counts and sigmas as ComfyUI's");
    assert!(checked >= 38);
}
