//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
//! for Fast Sampling of Diffusion Models") in data-prediction form, as
//! ComfyUI's `uni_pc`/`uni_pc_bh2` and diffusers' flow UniPC (`unipc_flow`).
//!
//! One step, written as baton's samplers see it, evaluates the model at the
//! current sigma and then:
//! 1. **corrector (UniC)**: if a predictor step led here, redo it from the
//!    sample it started at (`last_sample`) using the new data prediction too;
//!    this costs no model call, which is the point of UniPC;
//! 2. **predictor (UniP)**: a multistep exponential-integrator step to the
//!    next sigma from the newest `order` data predictions.
//!
//! Both references interleave these the same way (ComfyUI inside one call per
//! timestep, diffusers across `step` calls), so this split is exact, and it
//! makes every pass boundary a clean point to hand the state over: a pass
//! returns the *predicted* sample at its last sigma, and the next pass
//! corrects it with its first model call.
//!
//! The orders follow the references: order `p_j = min(P, n_j, T − j)` for the
//! step out of global step index j, where P is the order cap, n_j the number of
//! stored predictions (warm-up) and T the run's step count (lower order at the
//! final steps). A step to σ = 0 is always first order: it is the jump to the
//! data prediction, and higher orders there would divide by λ = ∞.

mod coeffs;

use super::samplers::{div_scalar, mul_scalar, Hooks, SolverState};
use candle_core::{Result, Tensor};
pub use coeffs::{Bh, Param};

/// ComfyUI `uni_pc` (variant bh1) with flow (CONST) models.
pub fn comfy_bh1(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    comfy(h, x, s, st, Bh::Bh1)
}

/// ComfyUI `uni_pc_bh2`.
pub fn comfy_bh2(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    comfy(h, x, s, st, Bh::Bh2)
}

/// diffusers' `UniPCMultistepScheduler` as `WanPipeline` configures it:
/// flow_prediction with flow sigmas, bh2, solver order 2, predict_x0,
/// lower_order_final, corrector on every step but the first.
///
/// The data prediction is `x − σ·v`, which is what `denoise` returns, and x
/// is integrated directly (α = 1 − σ, std = σ). The whole run's step count
/// (`total_steps`) and the step index over all passes (`steps_done`) drive the
/// lower-order-final rule, so a run split into passes that share the state
/// equals the single run.
pub fn flow(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    check_sigmas(s, Param::Flow)?;
    let steps = s.len() - 1;
    let plan = Plan {
        param: Param::Flow,
        bh: Bh::Bh2,
        max_order: 2,
        first: st.steps_done,
        total: run_total(st, steps),
        terminal: s[steps] == 0.0,
    };
    let mut x0 = |h: &mut Hooks, x: &Tensor, sigma: f32| (h.denoise)(x, sigma);
    walk(h, x, s, st, &plan, &mut x0)
}

// ---------------------------------------------------------------------------
// ComfyUI conventions (tests/fixtures/comfy README §5)

/// ComfyUI's `sample_unipc` around the solver:
/// - the solver runs on `x_vp = x/√(1+σ0²)` with VP marginals of σ read as a VE sigma;
/// - its model is the eps wrapper `eps = (x_vp·√(σ²+1) − D)/σ`, turned back into
///   a data prediction `(x_vp − std·eps)/α` (D up to f32 rounding; kept so the
///   trajectory matches ComfyUI's rounding);
/// - order cap `min(3, T − 1)`;
/// - a list ending in 0 is mutated in place to end in 0.001: the solver stops
///   there and returns `x_vp/α(0.001)`, and KSAMPLER's inverse noise scaling
///   then divides by `1 − 0.001` (it sees the mutated list). The runtime
///   divides by `1 − 0` instead, so that last division happens here.
///
/// ComfyUI restarts the solver in every KSamplerAdvanced pass (the pass is the
/// run: T, the order cap and the final lower-order steps come from the pass).
/// A state that spans passes, or one that is being continued, plans over the
/// whole run instead, so the passes add up to the single run.
fn comfy(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState, bh: Bh) -> Result<Tensor> {
    check_sigmas(s, Param::ComfyVp)?;
    let steps = s.len() - 1;
    let whole_run = st.spans_passes || !st.is_fresh();
    let (first, total) = if whole_run {
        (st.steps_done, run_total(st, steps))
    } else {
        (0, steps)
    };
    let max_order = 3.min(total.saturating_sub(1));
    if max_order == 0 {
        // ComfyUI's order min(3, len − 2) is 0 here and its loop never leaves σ0.
        candle_core::bail!(
            "uni_pc needs a run of at least 2 steps (got sigmas {s:?}); ComfyUI's uni_pc does not move in a 1-step run"
        );
    }
    let terminal = s[steps] == 0.0;
    let mut solver_sigmas = s.to_vec();
    if terminal {
        solver_sigmas[steps] = COMFY_FINAL_SIGMA;
    }
    let x_vp = match (&st.solver_x, st.is_fresh()) {
        (Some((out, inner)), false) if same_values(out, &x)? => inner.clone(),
        // `noise / sqrt(1.0 + σ0**2.0)`
        _ => div_scalar(&x, (1.0 + s[0] * s[0]).sqrt())?,
    };
    let plan = Plan {
        param: Param::ComfyVp,
        bh,
        max_order,
        first,
        total,
        terminal,
    };
    let mut x0 = |h: &mut Hooks, x_vp: &Tensor, sigma: f32| comfy_data_prediction(h, x_vp, sigma);
    let x_vp = walk(h, x_vp, &solver_sigmas, st, &plan, &mut x0)?;
    let end = solver_sigmas[steps];
    let mut out = div_scalar(&x_vp, coeffs::marginal(Param::ComfyVp, end).alpha)?;
    if terminal {
        out = div_scalar(&out, 1.0 - COMFY_FINAL_SIGMA)?;
    }
    st.solver_x = Some((out.clone(), x_vp));
    Ok(out)
}

/// The value ComfyUI writes over a terminal 0 sigma (`timesteps[-1] = 0.001`).
const COMFY_FINAL_SIGMA: f32 = 0.001;

/// ComfyUI's model wrapper in f32 order: `x_in = x_vp·(σ²+1)^½`,
/// `eps = (x_in − D(x_in, σ))/σ`, `x0 = (x_vp − std·eps)/α`.
fn comfy_data_prediction(h: &mut Hooks, x_vp: &Tensor, sigma: f32) -> Result<Tensor> {
    let x_in = mul_scalar(x_vp, ((sigma * sigma) + 1.0).sqrt())?;
    let d = (h.denoise)(&x_in, sigma)?;
    let eps = div_scalar(&(&x_in - d)?, sigma)?;
    let m = coeffs::marginal(Param::ComfyVp, sigma);
    div_scalar(&(x_vp - mul_scalar(&eps, m.std)?)?, m.alpha)
}

// ---------------------------------------------------------------------------
// the shared multistep walk

struct Plan {
    param: Param,
    bh: Bh,
    /// The order cap P.
    max_order: usize,
    /// Global index of this pass's first step.
    first: usize,
    /// Steps in the whole run (T).
    total: usize,
    /// This pass ends the run at σ = 0 (ComfyUI: at the 0.001 written over it).
    terminal: bool,
}

/// The run's step count: `total_steps` when the caller knows it, never less
/// than what this pass will have done.
fn run_total(st: &SolverState, steps: usize) -> usize {
    let at_least = st.steps_done + steps;
    st.total_steps.unwrap_or(at_least).max(at_least)
}

/// Runs the pass over `s`, updating `st` (history, last sample, order).
/// `x0` turns the solver state into a data prediction via the model.
fn walk(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
    plan: &Plan,
    x0: &mut dyn FnMut(&mut Hooks, &Tensor, f32) -> Result<Tensor>,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    if !st.is_fresh() {
        if let Some(&prev) = st.sigmas.last() {
            if s[0] >= prev {
                candle_core::bail!(
                    "UniPC: continuing a state whose last prediction is at sigma {prev}, but this pass starts at {}",
                    s[0]
                );
            }
        }
    }
    for i in 0..steps {
        let (sigma, next) = (s[i], s[i + 1]);
        let m = x0(h, &x, sigma)?;
        if let Some(last) = st.last_sample.take() {
            x = correct(plan, st, &last, &m, sigma)?;
        }
        st.history.push(m);
        st.sigmas.push(sigma);
        st.keep_last(plan.max_order);
        let j = plan.first + i;
        let order = if i + 1 == steps && plan.terminal {
            1
        } else {
            plan.max_order
                .min(st.history.len())
                .min(plan.total.saturating_sub(j))
                .max(1)
        };
        let c = step_coeffs(plan, st, sigma, next, order)?;
        let next_x = predict(st, &x, &c)?;
        st.last_sample = Some(x);
        st.last_order = order;
        x = next_x;
        st.counter = (st.counter + 1).min(plan.max_order);
        st.steps_done += 1;
        (h.on_step)(i, steps, sigma);
    }
    Ok(x)
}

/// The coefficients of the step from `s0` (the newest prediction's sigma) to `t`.
fn step_coeffs(
    plan: &Plan,
    st: &SolverState,
    s0: f32,
    t: f32,
    order: usize,
) -> Result<coeffs::Step> {
    let older: Vec<f32> = st.sigmas.iter().rev().skip(1).copied().collect();
    coeffs::step(plan.param, plan.bh, s0, t, &older, order)
}

/// `D1_k = (m_k − m0)/r_k` for the `order − 1` predictions before the newest.
fn differences(st: &SolverState, c: &coeffs::Step) -> Result<Vec<Tensor>> {
    let n = st.history.len();
    let m0 = &st.history[n - 1];
    c.rks
        .iter()
        .enumerate()
        .map(|(k, &rk)| div_scalar(&(&st.history[n - 2 - k] - m0)?, rk))
        .collect()
}

/// `Σ_k ρ_k·D1_k`, left to right (the references' tensordot/einsum over k).
fn weighted(d1s: &[Tensor], rhos: &[f32]) -> Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for (d, &r) in d1s.iter().zip(rhos) {
        let term = mul_scalar(d, r)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok(acc)
}

/// The first-order part shared by predictor and corrector:
/// `(std_t/std_s0)·x − (α_t·expm1(−h))·m0`.
fn base(st: &SolverState, x: &Tensor, c: &coeffs::Step) -> Result<Tensor> {
    let m0 = st.history.last().expect("a prediction was just stored");
    mul_scalar(x, c.ratio)? - mul_scalar(m0, c.a_phi)?
}

/// UniP: `x_t = base − (α_t·B(h))·Σ ρ_p·D1` (just `base` at order 1).
fn predict(st: &SolverState, x: &Tensor, c: &coeffs::Step) -> Result<Tensor> {
    let x_t = base(st, x, c)?;
    match weighted(&differences(st, c)?, &c.rhos_p)? {
        None => Ok(x_t),
        Some(res) => x_t - mul_scalar(&res, c.a_b)?,
    }
}

/// UniC at σ_t with the new prediction `m_t`, from the sample the last
/// predictor started at: `x_t = base − (α_t·B(h))·(Σ ρ_c·D1 + ρ_c,last·(m_t − m0))`,
/// with the last predictor's order and the history before `m_t` is stored.
fn correct(plan: &Plan, st: &SolverState, last: &Tensor, m_t: &Tensor, t: f32) -> Result<Tensor> {
    let s0 = *st
        .sigmas
        .last()
        .expect("a corrector follows a stored prediction");
    let order = st.last_order.clamp(1, st.history.len());
    let c = step_coeffs(plan, st, s0, t, order)?;
    let x_t = base(st, last, &c)?;
    let m0 = st.history.last().expect("checked above");
    let (rho_t, rhos) = c
        .rhos_c
        .split_last()
        .expect("at least one corrector weight");
    let d1_t = mul_scalar(&(m_t - m0)?, *rho_t)?;
    let res = match weighted(&differences(st, &c)?, rhos)? {
        None => d1_t,
        Some(r) => (r + d1_t)?,
    };
    x_t - mul_scalar(&res, c.a_b)?
}

/// Sigma lists UniPC can walk: at least two values, finite, strictly
/// decreasing (a repeated sigma is a zero-length step whose weights divide by
/// h = 0), nothing below 0 and only the last at 0; flow sigmas at most 1.
fn check_sigmas(s: &[f32], p: Param) -> Result<()> {
    if s.len() < 2 {
        candle_core::bail!("UniPC needs at least two sigmas, got {s:?}");
    }
    let last = s.len() - 1;
    for (i, &v) in s.iter().enumerate() {
        let low_ok = if i == last { v >= 0.0 } else { v > 0.0 };
        let high_ok = p != Param::Flow || v <= 1.0;
        if !(v.is_finite() && low_ok && high_ok) {
            candle_core::bail!("UniPC: sigma {v} at position {i} is out of range in {s:?}");
        }
    }
    // NaN was refused above, so `>=` is the negation of `<`.
    if let Some(w) = s.windows(2).find(|w| w[1] >= w[0]) {
        candle_core::bail!(
            "UniPC needs strictly decreasing sigmas, got {} then {} in {s:?}",
            w[0],
            w[1]
        );
    }
    Ok(())
}

/// Whether two tensors hold the same values (so a pass continues from the
/// exact solver state it returned).
fn same_values(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        return Ok(false);
    }
    let differing = a.ne(b)?.to_dtype(candle_core::DType::F32)?.sum_all()?;
    Ok(differing.to_scalar::<f32>()? == 0.0)
}
