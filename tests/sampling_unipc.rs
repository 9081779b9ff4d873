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

use baton::sampling::{samplers, sigmas};
use candle_core::{Result, Tensor};
use common::comfy::*;
use common::{as_f64, eval, max_abs_diff, rel_l2};

// ---------------------------------------------------------------------------
// helpers

/// ComfyUI's uni_pc lists: `simple(steps + 1)` without its second-to-last entry.
fn discard_penultimate(steps: usize, shift: f32) -> Vec<f32> {
    sigmas::for_sampler("simple", steps, shift, "uni_pc").unwrap()
}

/// What a sampler-level run saw.
struct Run {
    out: Tensor,
    /// The denoiser's outputs, per call.
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
    let mut denoised = Vec::new();
    let mut den = |x: &Tensor, sigma: f32| -> Result<Tensor> {
        let d = denoise(x, sigma)?;
        denoised.push(d.clone());
        Ok(d)
    };
    let mut draw = |_: &Tensor, _: f32, _: f32| -> Result<Tensor> {
        candle_core::bail!("UniPC draws no noise")
    };
    let mut steps_reported = Vec::new();
    let mut on_step = |i: usize, n: usize, s: f32| steps_reported.push((i, n, s));
    let out = {
        let mut hooks = samplers::Hooks {
            denoise: &mut den,
            noise: &mut draw,
            on_step: &mut on_step,
            uncond: &|| None,
            // Only the SDE samplers ask for the model's shift; UniPC never does.
            shift: 5.0,
        };
        samplers::run(name, &mut hooks, x.clone(), s, state)?
    };
    Ok(Run {
        out,
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

/// The two variants must be told apart by the tolerance, or the trace tests
/// could not catch B(h) mixed up.
#[test]
fn bh1_and_bh2_traces_differ_beyond_the_tolerance() {
    let t = trace_setup();
    let d = max_abs_diff(
        &t.fx["trace.uni_pc.sampler_out"],
        &t.fx["trace.uni_pc_bh2.sampler_out"],
    );
    println!("uni_pc vs uni_pc_bh2 sampler_out: max abs {d:.2e}");
    assert!(d > 10.0 * TRACE_TOL);
}

#[test]
fn uni_pc_matches_comfy_trace() {
    check_comfy_trace("uni_pc");
}

#[test]
fn uni_pc_bh2_matches_comfy_trace() {
    check_comfy_trace("uni_pc_bh2");
}

// ---------------------------------------------------------------------------
// 2. ComfyUI KSamplerAdvanced passes (ksampler_split: steps 20, split 10, shift 8)

/// Same sources of difference as the traces over up to 20 steps, where the
/// order-3 weights come from smaller steps (h ≈ 0.006): still rounding-level.
const SPLIT_TOL: f64 = 1e-5;

#[test]
fn uni_pc_ksampler_advanced_passes() {
    let js = load_json("comfy/ksampler_split.json");
    let steps = js["steps"].as_u64().unwrap() as usize;
    let shift = js["shift"].as_f64().unwrap() as f32;
    let full = discard_penultimate(steps, shift);
    assert!(same_list(&full, &f32_list(&js["full_sigmas"], "uni_pc")));
    assert_eq!(check_ksampler_split("uni_pc", &full, SPLIT_TOL), 13);
}

// ---------------------------------------------------------------------------
// 3. ComfyUI samplers: passes sharing a state add up to the single run

#[test]
fn uni_pc_split_with_shared_state_equals_single_run() {
    let t = trace_setup();
    let mut model = |x: &Tensor, s: f32| t.model.guided(x, s, 1.0);
    let x_in = t.fx["initial_noise"].clone();
    for sampler in ["uni_pc", "uni_pc_bh2"] {
        for (steps, shift) in [(8usize, 5.0f32), (20, 8.0)] {
            let full = discard_penultimate(steps, shift);
            let mut st = state_for(steps, false);
            let single = run_sampler(sampler, &x_in, &full, &mut st, &mut model).unwrap();
            // A state that spans passes but gets the whole list in one pass is the same run.
            let mut st = state_for(steps, true);
            let one = run_sampler(sampler, &x_in, &full, &mut st, &mut model).unwrap();
            assert!(
                bits_equal(&one.out, &single.out),
                "{sampler}: spanning state, one pass"
            );
            for k in 1..steps {
                let mut st = state_for(steps, true);
                let a = run_sampler(sampler, &x_in, &full[..=k], &mut st, &mut model).unwrap();
                // The runtime hands the sampler's own output back (state.handoff).
                let b = run_sampler(sampler, &a.out, &full[k..], &mut st, &mut model).unwrap();
                let d = max_abs_diff(&b.out, &single.out);
                // Same operations in the same order: bit-identical.
                assert!(
                    bits_equal(&b.out, &single.out),
                    "{sampler} {steps} steps split at {k}: max abs {d:.3e}"
                );
                assert_eq!(a.denoised.len() + b.denoised.len(), steps);
                assert_eq!(st.steps_done, steps);
            }
            println!("{sampler} {steps} steps: every split bit-identical to the single run");
        }
    }
}

#[test]
fn uni_pc_fresh_state_restarts_the_history() {
    // ComfyUI's KSamplerAdvanced: pass 2 with a fresh state is a run of its own
    // (first order again, its own final steps) and differs from the single run.
    let t = trace_setup();
    let mut model = |x: &Tensor, s: f32| t.model.guided(x, s, 1.0);
    let x_in = t.fx["initial_noise"].clone();
    let full = discard_penultimate(8, 5.0);
    let mut st = state_for(8, false);
    let single = run_sampler("uni_pc", &x_in, &full, &mut st, &mut model).unwrap();
    let k = 4;
    let mut st = state_for(8, false);
    let a = run_sampler("uni_pc", &x_in, &full[..=k], &mut st, &mut model).unwrap();
    // Per-pass semantics: pass 1 is its own 4-step run (order cap 3, lower-order end),
    // so it equals a run over exactly that list with no total given.
    let mut alone = samplers::SolverState::default();
    let b_alone = run_sampler("uni_pc", &x_in, &full[..=k], &mut alone, &mut model).unwrap();
    assert!(bits_equal(&a.out, &b_alone.out));
    let mut fresh = state_for(8, false);
    let b = run_sampler("uni_pc", &a.out, &full[k..], &mut fresh, &mut model).unwrap();
    let d = max_abs_diff(&b.out, &single.out);
    println!("uni_pc split at {k} with a fresh pass-2 state: max abs {d:.3e} from the single run");
    assert!(
        d > 1e-4,
        "a restarted history should change the result, got {d:.3e}"
    );
    // Continuing pass 1's per-pass state (not fresh) keeps its history instead.
    let c = run_sampler("uni_pc", &a.out, &full[k..], &mut st, &mut model).unwrap();
    assert!(!bits_equal(&c.out, &b.out));
}

// ---------------------------------------------------------------------------
// 4. unipc_flow against diffusers WanPipeline (sampling_cases, case unipc)

struct FlowCase {
    fx: std::collections::HashMap<String, Tensor>,
    sigmas: Vec<f32>,
}

fn flow_case() -> FlowCase {
    let fx = common::load_fixture("wan_tiny/sampling_cases.safetensors");
    let sigmas = vec_of(&fx["unipc_sigmas"]);
    let js = load_json("wan_tiny/sampling_cases.json");
    assert!(same_list(
        &sigmas,
        &f32_list(&js["cases"]["unipc"], "sigmas")
    ));
    FlowCase { fx, sigmas }
}

/// Scheduler replay: the i-th call returns diffusers' data prediction
/// `x − σ·v_i` from the stored guided velocity (the runtime's `x − v·σ`).
fn replay(
    fx: &std::collections::HashMap<String, Tensor>,
) -> impl FnMut(&Tensor, f32) -> Result<Tensor> + '_ {
    let mut call = 0usize;
    move |x: &Tensor, sigma: f32| {
        let v = fx["unipc_noise_pred"].get(call)?;
        call += 1;
        x - (v * sigma as f64)?
    }
}

/// diffusers runs this in f32 too (torch expm1/log, LAPACK solve); the fixture
/// notes an independent f64 replay lands within ~1e-6. 1e-5 relative L2 leaves
/// a factor of 10 for libm-vs-torch rounding and our f64 `b`.
const FLOW_STEP_TOL: f64 = 1e-5;

#[test]
fn unipc_flow_replays_diffusers_per_step() {
    let c = flow_case();
    let steps = c.sigmas.len() - 1;
    let want = &c.fx["unipc_latents"];
    // Sampler level starts from `noise` exactly as diffusers does.
    let x0 = c.fx["noise"].clone();
    let mut den = replay(&c.fx);
    let mut st = state_for(steps, false);
    let whole = run_sampler("unipc_flow", &x0, &c.sigmas, &mut st, &mut den).unwrap();
    assert_eq!(whole.denoised.len(), steps, "one model call per step");
    // The pass reports each step once, with the sigma it left.
    let reported: Vec<usize> = whole.steps_reported.iter().map(|r| r.0).collect();
    assert_eq!(reported, (0..steps).collect::<Vec<_>>());
    assert!(whole
        .steps_reported
        .iter()
        .zip(&c.sigmas)
        .all(|(r, s)| r.1 == steps && r.2 == *s));

    // One step per pass, state shared: pass i returns diffusers' latent after step i.
    let mut den = replay(&c.fx);
    let mut st = state_for(steps, true);
    let mut x = x0.clone();
    for i in 0..steps {
        let r = run_sampler("unipc_flow", &x, &c.sigmas[i..=i + 1], &mut st, &mut den).unwrap();
        x = r.out;
        let w = want.get(i).unwrap();
        let err = rel_l2(&x, &w);
        println!(
            "unipc_flow step {i}: rel L2 {err:.2e}, max abs {:.2e}",
            max_abs_diff(&x, &w)
        );
        assert!(
            err <= FLOW_STEP_TOL,
            "step {i}: rel L2 {err:.3e} > {FLOW_STEP_TOL:.0e}"
        );
    }
    assert!(
        bits_equal(&x, &whole.out),
        "per-step passes differ from the single run"
    );
}

#[test]
fn unipc_flow_split_equals_single_run() {
    let c = flow_case();
    let steps = c.sigmas.len() - 1;
    let x0 = c.fx["noise"].clone();
    let mut st = state_for(steps, false);
    let single = run_sampler("unipc_flow", &x0, &c.sigmas, &mut st, &mut replay(&c.fx)).unwrap();
    for k in 1..steps {
        for spans in [false, true] {
            // unipc_flow always continues a non-fresh state over the whole run.
            let mut den = replay(&c.fx);
            let mut st = state_for(steps, spans);
            let a = run_sampler("unipc_flow", &x0, &c.sigmas[..=k], &mut st, &mut den).unwrap();
            let b = run_sampler("unipc_flow", &a.out, &c.sigmas[k..], &mut st, &mut den).unwrap();
            assert!(
                bits_equal(&b.out, &single.out),
                "split at {k}: max abs {:.3e}",
                max_abs_diff(&b.out, &single.out)
            );
        }
    }
    println!(
        "unipc_flow: every split at k = 1..{} bit-identical",
        steps - 1
    );
    // Without total_steps the pass is taken as the whole run, so its last step is
    // the run's last: first order. That is not the single run's step k (second order).
    let mut den = replay(&c.fx);
    let mut st = samplers::SolverState::default();
    let a = run_sampler("unipc_flow", &x0, &c.sigmas[..=3], &mut st, &mut den).unwrap();
    let b = run_sampler("unipc_flow", &a.out, &c.sigmas[3..], &mut st, &mut den).unwrap();
    assert!(!bits_equal(&b.out, &single.out));
}

/// The model timesteps: diffusers passes int64(σ·1000) truncated; the runtime
/// gives unipc_flow `trunc(timestep(σ))`.
#[test]
fn unipc_flow_model_timesteps() {
    let c = flow_case();
    let want: Vec<i64> = c.fx["unipc_model_timestep"].to_vec1::<i64>().unwrap();
    let got: Vec<i64> = c.sigmas[..c.sigmas.len() - 1]
        .iter()
        .map(|&s| sigmas::timestep(s).trunc() as i64)
        .collect();
    assert_eq!(got, want);
}

const SETUP: &str = r#"
let c = load_tensors("tests/fixtures/wan_tiny/sampling_cases.safetensors");
let high = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "high" });
"#;

#[test]
fn unipc_flow_end_to_end_matches_diffusers() {
    let (_out, mut s) = common::session_after(SETUP);
    // The runtime starts from x = σ0·noise (σ0 = 1 − 1e-6 here) where diffusers starts
    // from noise itself: a 1e-6 relative difference on top of the network's f32
    // rounding (CFG on x0 here, on v in diffusers). 1e-4 relative L2 covers both.
    let err = as_f64(eval(
        &mut s,
        r#"
        let x = sample(high, zeros_like(c.noise), #{ positive: c.context, negative: c.negative_context,
                       sigmas: to_list(c.unipc_sigmas), cfg: 3.0, sampler: "unipc_flow", noise: c.noise });
        rel_l2(x, c.unipc_latents[5])
        "#,
    ));
    println!("unipc_flow end to end: rel L2 {err:.2e}");
    assert!(err <= 1e-4, "final latent rel L2 {err:.3e}");
    // Two passes sharing a sampler_state() give the same run.
    let err = as_f64(eval(
        &mut s,
        r#"
        let o = #{ positive: c.context, negative: c.negative_context, sigmas: to_list(c.unipc_sigmas),
                   cfg: 3.0, sampler: "unipc_flow", noise: c.noise };
        let full = sample(high, zeros_like(c.noise), o);
        let st = sampler_state();
        let a = o; a.end = 2; a.leftover_noise = true; a.state = st;
        let b = o; b.start = 2; b.add_noise = false; b.state = st;
        let x = sample(high, zeros_like(c.noise), a);
        x = sample(high, x, b);
        rel_l2(x, full)
        "#,
    ));
    println!("unipc_flow split through sampler_state(): rel L2 {err:.2e} from the single run");
    assert_eq!(
        err, 0.0,
        "the runtime hands the solver's own x across, so the split is exact"
    );
}

// ---------------------------------------------------------------------------
// 5. degenerate input: errors, never panics

/// A denoiser with a fixed point, cheap enough to call anywhere.
fn toy(x: &Tensor, _: f32) -> Result<Tensor> {
    x * 0.5
}

fn toy_x() -> Tensor {
    Tensor::arange(0f32, 24.0, &candle_core::Device::Cpu)
        .unwrap()
        .reshape((1, 2, 3, 4))
        .unwrap()
}

#[test]
fn degenerate_sigma_lists_are_errors() {
    let bad: &[&[f32]] = &[
        &[],
        &[0.5],
        &[0.8, 0.8, 0.0],
        &[0.5, 0.9, 0.0],
        &[0.9, f32::NAN, 0.0],
        &[0.9, 0.0, 0.0],
        &[0.9, -0.1],
        &[f32::INFINITY, 0.5, 0.0],
    ];
    for name in ["uni_pc", "uni_pc_bh2", "unipc_flow"] {
        for s in bad {
            let mut st = samplers::SolverState::default();
            let r = run_sampler(name, &toy_x(), s, &mut st, &mut toy);
            assert!(r.is_err(), "{name} {s:?} should be an error");
            println!("{name} {s:?}: {}", r.err().unwrap());
        }
    }
    // Flow sigmas above 1 have no α = 1 − σ.
    let mut st = samplers::SolverState::default();
    assert!(run_sampler("unipc_flow", &toy_x(), &[1.5, 0.5, 0.0], &mut st, &mut toy).is_err());
    // ComfyUI's uni_pc never leaves σ0 in a 1-step run (order min(3, len − 2) = 0).
    for name in ["uni_pc", "uni_pc_bh2"] {
        let mut st = samplers::SolverState::default();
        let e = run_sampler(name, &toy_x(), &[0.9, 0.0], &mut st, &mut toy);
        assert!(e.is_err(), "{name}: a 1-step run should be refused");
    }
}

#[test]
fn short_and_edge_runs_are_finite() {
    let finite = |t: &Tensor| vec_of(t).iter().all(|v| v.is_finite());
    // One flow step to 0 is the jump to the data prediction.
    let mut st = samplers::SolverState::default();
    let r = run_sampler("unipc_flow", &toy_x(), &[0.7, 0.0], &mut st, &mut toy).unwrap();
    assert!(bits_equal(&r.out, &(toy_x() * 0.5).unwrap()));
    // σ0 = 1 (ComfyUI schedules; diffusers nudges it to 1 − 1e-6): λ = −∞ there,
    // which the weights take as a limit (first step exact DDIM, zero D1 weight).
    for steps in [2usize, 3, 8, 30] {
        let s = sigmas::schedule("simple", steps, 5.0).unwrap();
        assert_eq!(s[0], 1.0);
        for name in ["unipc_flow", "uni_pc", "uni_pc_bh2"] {
            let mut st = state_for(steps, false);
            let r = run_sampler(name, &toy_x(), &s, &mut st, &mut toy).unwrap();
            assert!(
                finite(&r.out),
                "{name} {steps} steps from σ = 1: not finite"
            );
            assert_eq!(r.denoised.len(), steps);
        }
    }
    // A continuing state refuses a pass that does not start below its last prediction.
    let s = sigmas::schedule("simple", 4, 5.0).unwrap();
    let mut st = state_for(4, true);
    let a = run_sampler("uni_pc", &toy_x(), &s[..=2], &mut st, &mut toy).unwrap();
    assert!(run_sampler("uni_pc", &a.out, &s[..=2], &mut st, &mut toy).is_err());
    // Another sampler may not continue it.
    assert!(run_sampler("unipc_flow", &a.out, &s[2..], &mut st, &mut toy).is_err());
}

/// `sampler_state()` marks its state as spanning passes, so ComfyUI's uni_pc
/// plans over the whole run and a split equals the single run; without a state
/// each pass is a run of its own (ComfyUI's KSamplerAdvanced) and differs.
#[test]
fn uni_pc_split_through_script_state() {
    let (_out, mut s) = common::session_after(SETUP);
    let v = eval(
        &mut s,
        r#"
        let o = #{ positive: c.context, negative: c.negative_context, steps: 6, shift: 5.0,
                   cfg: 3.0, sampler: "uni_pc", seed: 7 };
        let full = sample(high, zeros_like(c.noise), o);
        let st = sampler_state();
        let a = o; a.end = 3; a.leftover_noise = true; a.state = st;
        let b = o; b.start = 3; b.add_noise = false; b.state = st;
        let x = sample(high, zeros_like(c.noise), a);
        x = sample(high, x, b);
        let a2 = o; a2.end = 3; a2.leftover_noise = true;
        let b2 = o; b2.start = 3; b2.add_noise = false;
        let y = sample(high, zeros_like(c.noise), a2);
        y = sample(high, y, b2);
        [rel_l2(x, full), rel_l2(y, full)]
        "#,
    );
    let a = v.into_array().unwrap();
    let (shared, restarted) = (as_f64(a[0].clone()), as_f64(a[1].clone()));
    println!("uni_pc split at 3: shared state rel L2 {shared:.2e}, ComfyUI passes {restarted:.2e}");
    assert_eq!(shared, 0.0);
    assert!(restarted > 1e-4);
}
