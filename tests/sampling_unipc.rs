//! The UniPC samplers against their references.
//!
//! - `uni_pc` / `uni_pc_bh2` (ComfyUI): `tests/fixtures/comfy/sampler_traces.*`
//!   (`trace.uni_pc*`: every step's state and data prediction, 8 steps) and the
//!   uni_pc cases of `ksampler_split.*` (KSamplerAdvanced start/end/leftover
//!   passes over 20 steps), with the fixtures' analytic denoiser standing in
//!   for the network (fixture README §4–§6).
//! - `unipc_flow` (diffusers `UniPCMultistepScheduler` in `WanPipeline`):
//!   `tests/fixtures/wan_tiny/sampling_cases.*` case `unipc`, replayed at
//!   sampler level on the stored guided predictions and run end to end through
//!   a script with the tiny Wan model.
//! - Splitting a run into passes that share one solver state reproduces the
//!   single run; a fresh state restarts the history (ComfyUI's passes).
//!
//! Tolerances are stated where they are used; every test prints what it measured.
mod common;

use baton::sampling::{noise, samplers, sigmas};
use candle_core::{Device, Result, Tensor};
use common::comfy::*;
use common::{as_f64, eval, max_abs_diff, rel_l2, run, session_with};

// ---------------------------------------------------------------------------
// helpers

/// ComfyUI's uni_pc lists: `simple(steps + 1)` without its second-to-last entry.
fn discard_penultimate(steps: usize, shift: f32) -> Vec<f32> {
    sigmas::for_sampler("simple", steps, shift, "uni_pc").unwrap()
}

/// What a sampler-level run saw.
struct Run {
    out: Tensor,
    /// The denoiser's inputs and outputs, per call.
    inputs: Vec<Tensor>,
    denoised: Vec<Tensor>,
    steps_reported: Vec<(usize, usize, f32)>,
}

/// Runs sampler `name` over `s` from `x` with `denoise`, continuing `state`.
fn run_sampler(
    name: &str,
    x: &Tensor,
    s: &[f32],
    state: &mut samplers::SolverState,
    denoise: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
) -> Result<Run> {
    let mut inputs = Vec::new();
    let mut denoised = Vec::new();
    let mut den = |x: &Tensor, sigma: f32| -> Result<Tensor> {
        let d = denoise(x, sigma)?;
        inputs.push(x.clone());
        denoised.push(d.clone());
        Ok(d)
    };
    let mut draw = |_: &Tensor, _: f32, _: f32| -> Result<Tensor> {
        candle_core::bail!("UniPC draws no noise")
    };
    let mut steps_reported = Vec::new();
    let mut on_step = |i: usize, n: usize, s: f32| steps_reported.push((i, n, s));
    let mut hooks = samplers::Hooks {
        denoise: &mut den,
        noise: &mut draw,
        on_step: &mut on_step,
    };
    let out = samplers::run(name, &mut hooks, x.clone(), s, state)?;
    drop(hooks);
    Ok(Run {
        out,
        inputs,
        denoised,
        steps_reported,
    })
}

fn state_for(total: usize, spans: bool) -> samplers::SolverState {
    samplers::SolverState {
        total_steps: Some(total),
        spans_passes: spans,
        ..Default::default()
    }
}

fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
    count_diff(a, b) == 0
}

// ---------------------------------------------------------------------------
// 1. ComfyUI traces (sampler_traces: steps 8, simple, shift 5, seed 42, cfg 1)

/// README §7: ComfyUI solves the order-3 systems with torch.linalg.solve (f32
/// LAPACK) and evaluates exp/log/expm1 with its own vectorised f32 kernels;
/// we solve in f64 and use libm. Both are rounding-level differences in the
/// coefficients (~1e-7 relative); 1e-5 absolute on unit-scale latents leaves
/// a factor of ~10 over what they can grow to in 8 steps.
const TRACE_TOL: f64 = 1e-5;

fn check_comfy_trace(sampler: &str) {
    let t = trace_setup();
    let prefix = format!("trace.{sampler}");
    let full = discard_penultimate(8, 5.0);
    assert!(same_list(
        &full,
        &vec_of(&t.fx[&format!("{prefix}.sigmas_in")])
    ));
    let xs = &t.fx[&format!("{prefix}.x")];
    let ds = &t.fx[&format!("{prefix}.denoised")];
    let steps = full.len() - 1;
    let init = &t.fx["initial_noise"];
    // KSAMPLER's x = σ0·noise + (1 − σ0)·0 with σ0 = 1.
    let x_in = ((init * full[0] as f64).unwrap()
        + (zeros_latent() * (1.0 - full[0]) as f64).unwrap())
    .unwrap();
    let mut model = |x: &Tensor, s: f32| t.model.guided(x, s, 1.0);

    // (a) the whole run in one pass, as ComfyUI's KSampler runs it.
    let mut st = state_for(steps, false);
    let whole = run_sampler(sampler, &x_in, &full, &mut st, &mut model).unwrap();
    assert_eq!(whole.denoised.len(), steps, "{sampler}: model calls");
    let mut worst = 0f64;
    for i in 0..steps {
        // The trace's `denoised` is the solver's data prediction (x_vp − std·eps)/α,
        // which equals the model's D up to f32 rounding of that round trip.
        let d = max_abs_diff(&whole.denoised[i], &ds.get(i).unwrap());
        println!("{prefix} step {i}: denoised max abs {d:.2e}");
        worst = worst.max(d);
    }
    let want_out = &t.fx[&format!("{prefix}.sampler_out")];
    let d_out = max_abs_diff(&whole.out, want_out);
    println!("{prefix}: sampler_out max abs {d_out:.2e}");

    // (b) the same run one step per pass with a state spanning the passes:
    // the state after pass k exposes the corrected sample at σ_{k−1}, which is
    // what ComfyUI's callback reported as x[k−1] (x[7] is the final VP state).
    let mut st = state_for(steps, true);
    let mut x = x_in.clone();
    for k in 1..=steps {
        let r = run_sampler(sampler, &x, &full[k - 1..=k], &mut st, &mut model).unwrap();
        x = r.out;
        let (got, what) = if k < steps {
            (st.last_sample.clone().unwrap(), k - 1)
        } else {
            (st.solver_x.clone().unwrap().1, steps - 1)
        };
        let d = max_abs_diff(&got, &xs.get(what).unwrap());
        println!("{prefix} x[{what}] max abs {d:.2e}");
        assert!(
            d <= TRACE_TOL,
            "{prefix}.x[{what}]: max abs {d:.3e} > {TRACE_TOL:.0e}"
        );
    }
    assert!(
        bits_equal(&x, &whole.out),
        "{sampler}: one step per pass differs from the single run by {:.3e}",
        max_abs_diff(&x, &whole.out)
    );
    assert!(worst <= TRACE_TOL, "{prefix}.denoised: max abs {worst:.3e}");
    assert_max_abs(
        &whole.out,
        want_out,
        TRACE_TOL,
        &format!("{prefix}.sampler_out"),
    );
    let node = t.model.process_out(&whole.out);
    assert_max_abs(
        &node,
        &t.fx[&format!("{prefix}.node_out")],
        // process_out multiplies by the channel std (≤ ~3.5 for Wan21).
        4.0 * TRACE_TOL,
        &format!("{prefix}.node_out"),
    );
}

#[test]
fn uni_pc_matches_comfy_trace() {
    check_comfy_trace("uni_pc");
}

#[test]
fn uni_pc_bh2_matches_comfy_trace() {
    check_comfy_trace("uni_pc_bh2");
}
