//! k-diffusion's DPM-Solver as ComfyUI's `dpm_fast` and `dpm_adaptive` run
//! it (eta = 0): in `t = −log σ`, from σ0 to the last *nonzero* sigma, with
//! no final step to 0 (so the result still holds that noise level; ComfyUI
//! returns it that way). The noise draws they take are multiplied by 0 but
//! still advance the generator. README §8.7 of tests/fixtures/comfy.

use super::kdiff::done;
use super::samplers::{div_scalar, mul_scalar, Hooks, SolverState};
use super::schedules::torch_linspace;
use candle_core::{Result, Tensor};

/// `σ(t) = exp(−t)`.
fn sig(t: f32) -> f32 {
    (-t).exp()
}

/// `(x − D(x, σ(t)))/σ(t)`, the solver's noise prediction.
fn eps(h: &mut Hooks, x: &Tensor, t: f32) -> Result<Tensor> {
    let s = sig(t);
    let d = (h.denoise)(x, s)?;
    div_scalar(&(x - d)?, s)
}

/// `x − (σ(tn)·expm1(h))·E0`, the first-order part every step shares.
fn first(x: &Tensor, tn: f32, hh: f32, e0: &Tensor) -> Result<Tensor> {
    x - mul_scalar(e0, sig(tn) * hh.exp_m1())?
}

/// `(u1, E1)` at `s1 = t + r1·h`.
fn stage1(h: &mut Hooks, x: &Tensor, t: f32, hh: f32, r1: f32, e0: &Tensor) -> Result<Tensor> {
    let s1 = t + r1 * hh;
    let u1 = (x - mul_scalar(e0, sig(s1) * (r1 * hh).exp_m1())?)?;
    eps(h, &u1, s1)
}

/// DPM-Solver-2 from `x` at `t` to `tn`, given `E0` and `E1` at `t + r1·h`.
fn step2(x: &Tensor, tn: f32, hh: f32, two_r1: f32, e0: &Tensor, e1: &Tensor) -> Result<Tensor> {
    first(x, tn, hh, e0)? - mul_scalar(&(e1 - e0)?, (sig(tn) / two_r1) * hh.exp_m1())?
}

/// DPM-Solver-3 (r1 = 1/3, r2 = 2/3) given `E0` and `E1`.
fn step3(h: &mut Hooks, x: &Tensor, t: f32, tn: f32, e0: &Tensor, e1: &Tensor) -> Result<Tensor> {
    let hh = tn - t;
    let r2 = (2.0f64 / 3.0) as f32;
    let s2 = t + r2 * hh;
    let u2 = ((x - mul_scalar(e0, sig(s2) * (r2 * hh).exp_m1())?)?
        - mul_scalar(
            &(e1 - e0)?,
            (sig(s2) * 2.0) * ((r2 * hh).exp_m1() / (r2 * hh) - 1.0),
        )?)?;
    let e2 = eps(h, &u2, s2)?;
    first(x, tn, hh, e0)? - mul_scalar(&(e2 - e0)?, (sig(tn) / r2) * (hh.exp_m1() / hh - 1.0))?
}

/// The last nonzero sigma, where both solvers stop.
fn sigma_min(s: &[f32]) -> f32 {
    let last = s[s.len() - 1];
    if last == 0.0 && s.len() > 1 {
        s[s.len() - 2]
    } else {
        last
    }
}

/// `x + 0·n`: the draw is taken (it advances the generator) and discarded.
fn zero_noise(h: &mut Hooks, x: Tensor, t: f32, tn: f32) -> Result<Tensor> {
    let n = (h.noise)(&x, sig(t), sig(tn))?;
    x + mul_scalar(&n, 0.0)?
}

/// ComfyUI `dpm_fast` (DPM-Solver-Fast, nfe = steps, orders 3…3,2,1 or 3…3,k).
pub fn dpm_fast(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let nfe = s.len() - 1;
    let (t0, t1) = (-s[0].ln(), -sigma_min(s).ln());
    let m = nfe / 3 + 1;
    let ts = torch_linspace(t0, t1, m + 1);
    let mut orders = if nfe.is_multiple_of(3) {
        let mut o = vec![3; m.saturating_sub(2)];
        o.extend([2, 1]);
        o
    } else {
        let mut o = vec![3; m - 1];
        o.push(nfe % 3);
        o
    };
    orders.truncate(ts.len() - 1);
    let n = orders.len();
    for (k, &order) in orders.iter().enumerate() {
        let (t, tn) = (ts[k], ts[k + 1]);
        let hh = tn - t;
        let e0 = eps(h, &x, t)?;
        x = match order {
            1 => first(&x, tn, hh, &e0)?,
            2 => {
                let e1 = stage1(h, &x, t, hh, 0.5, &e0)?;
                step2(&x, tn, hh, 1.0, &e0, &e1)?
            }
            _ => {
                let e1 = stage1(h, &x, t, hh, (1.0f64 / 3.0) as f32, &e0)?;
                step3(h, &x, t, tn, &e0, &e1)?
            }
        };
        x = zero_noise(h, x, t, tn)?;
        done(h, st, k, n, sig(t));
    }
    Ok(x)
}

/// ComfyUI `dpm_adaptive` (order 3, rtol 0.05, atol 0.0078, h_init 0.05,
/// PID (0, 1, 0), accept_safety 0.81): embedded 2nd/3rd-order pairs with
/// k-diffusion's step-size controller.
pub fn dpm_adaptive(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    const ORDER: f64 = 3.0;
    let (atol, rtol) = (0.0078f32, 0.05f32);
    let (b1, b2, b3) = (1.0 / ORDER, -0.0 / ORDER, 0.0 / ORDER);
    let (t_start, t_end) = (-s[0].ln(), -sigma_min(s).ln());
    let mut sv = t_start;
    let mut x_prev = x.clone();
    let mut hstep = 0.05f64;
    let mut errs: Vec<f64> = Vec::new();
    let r1 = (1.0f64 / 3.0) as f32;
    let two_r1 = (2.0f64 / 3.0) as f32;
    let mut attempt = 0usize;
    let numel_sqrt = (x.elem_count() as f64).sqrt() as f32;
    while sv < t_end - 1e-5f32 {
        let t = t_end.min(sv + hstep as f32);
        let hh = t - sv;
        let e0 = eps(h, &x, sv)?;
        let e1 = stage1(h, &x, sv, hh, r1, &e0)?;
        let x_low = step2(&x, t, hh, two_r1, &e0, &e1)?;
        let x_high = step3(h, &x, sv, t, &e0, &e1)?;
        let delta = x_low
            .abs()?
            .maximum(&x_prev.abs()?)?
            .affine(rtol as f64, 0.0)?
            .maximum(atol as f64)?;
        let ratio = ((&x_low - &x_high)? / delta)?;
        let norm = ratio
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt() as f32;
        let error = (norm / numel_sqrt) as f64;
        let inv = 1.0 / (error + 1e-8);
        if errs.is_empty() {
            errs = vec![inv; 3];
        }
        errs[0] = inv;
        let factor = errs[0].powf(b1) * errs[1].powf(b2) * errs[2].powf(b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= 0.81;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        hstep *= factor;
        let s_old = sv;
        if accept {
            x_prev = x_low;
            x = zero_noise(h, x_high, sv, t)?;
            sv = t;
        }
        done(h, st, attempt, attempt + 1, sig(s_old));
        attempt += 1;
    }
    Ok(x)
}
