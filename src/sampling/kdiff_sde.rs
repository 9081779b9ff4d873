//! ComfyUI's stochastic multistep samplers with flow (CONST) semantics:
//! `dpmpp_3m_sde`, `dpmpp_2m_sde_heun` (Brownian-tree noise, chosen by the
//! pass), `er_sde`, `seeds_2`, `seeds_3` and `sa_solver(_pece)` (the default
//! seeded generator). Formulas and f32 operation order follow
//! tests/fixtures/comfy/README.md §8.7.

use super::kdiff::{done, lambda, lerp, lin2, logit, nan_to_zero, offset_first_sigma};
use super::samplers::{div_scalar, mul_scalar, Hooks, SolverState};
use candle_core::{Result, Tensor};

/// Which correction a 2M/3M SDE step adds from the stored predictions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sde {
    Heun,
    ThreeM,
}

/// `dpmpp_2m_sde_heun` and `dpmpp_3m_sde` (η = 1, s_noise = 1).
fn dpmpp_sde_multistep(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
    kind: Sde,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        // Newest first: (D1, h1), (D2, h2).
        let prev: Vec<(Tensor, f32)> = st
            .history
            .iter()
            .rev()
            .cloned()
            .zip(st.scalars.iter().rev().copied())
            .collect();
        let mut hh = prev.first().map_or(0.0, |p| p.1);
        if sn == 0.0 {
            x = denoised.clone();
        } else {
            let (ls, lt) = (lambda(si), lambda(sn));
            hh = lt - ls;
            let he = hh * 2.0;
            let at = sn * lt.exp();
            let g = -(-he).exp_m1();
            x = lin2((sn / si) * ((-hh) * 1.0).exp(), &x, at * g, &denoised)?;
            match (kind, prev.as_slice()) {
                (Sde::ThreeM, [(d1, h1), (d2, h2), ..]) => {
                    let (r0, r1) = (h1 / hh, h2 / hh);
                    let d10 = div_scalar(&(&denoised - d1)?, r0)?;
                    let d11 = div_scalar(&(d1 - d2)?, r1)?;
                    let diff = (&d10 - &d11)?;
                    let e1 = (&d10 + div_scalar(&mul_scalar(&diff, r0)?, r0 + r1)?)?;
                    let e2 = div_scalar(&diff, r0 + r1)?;
                    let phi2 = (-he).exp_m1() / he + 1.0;
                    let phi3 = phi2 / he - 0.5;
                    x = ((x + mul_scalar(&e1, at * phi2)?)? - mul_scalar(&e2, at * phi3)?)?;
                }
                (Sde::ThreeM, [(d1, h1)]) => {
                    let r = h1 / hh;
                    let phi2 = (-he).exp_m1() / he + 1.0;
                    let dd = div_scalar(&(&denoised - d1)?, r)?;
                    x = (x + mul_scalar(&dd, at * phi2)?)?;
                }
                (Sde::Heun, [(d1, h1), ..]) => {
                    let r = h1 / hh;
                    let c = (at * (g / (-he) + 1.0)) * (1.0 / r);
                    x = (x + mul_scalar(&(&denoised - d1)?, c)?)?;
                }
                _ => {}
            }
            let n = (h.noise)(&x, si, sn)?;
            let amp = (-((-2.0 * hh) * 1.0).exp_m1()).sqrt();
            x = (x + mul_scalar(&mul_scalar(&n, sn)?, amp)?)?;
        }
        st.history.push(denoised);
        st.scalars.push(hh);
        let keep = if kind == Sde::ThreeM { 2 } else { 1 };
        let drop = st.history.len().saturating_sub(keep);
        st.history.drain(..drop);
        st.scalars.drain(..drop);
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

pub fn dpmpp_3m_sde(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    dpmpp_sde_multistep(h, x, s, st, Sde::ThreeM)
}

pub fn dpmpp_2m_sde_heun(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    dpmpp_sde_multistep(h, x, s, st, Sde::Heun)
}

/// ER-SDE's default noise scaler `v·(exp(v^0.3) + 10)`.
fn er_ns(v: f32) -> f32 {
    v * (v.powf(0.3).exp() + 10.0)
}

/// torch's `sum` of 200 f32 values, approximated by a double sum rounded to
/// f32 (torch's vectorised cascade differs by 1 ulp on about half of inputs).
fn sum_f32(v: impl Iterator<Item = f32>) -> f32 {
    v.map(f64::from).sum::<f64>() as f32
}

/// `er_sde` (the VP ER-SDE-Solver-3, s_noise = 1) on flow sigmas.
pub fn er_sde(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    const POINTS: usize = 200;
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    // L = exp(logit(σ)) = σ/(1 − σ), 0 at σ = 0.
    let big_l = |v: f32| logit(v).exp();
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        // Previous L values, newest last (at most two), and the previous D.
        let prev_l: Vec<f32> = st.scalars.clone();
        let stage = (prev_l.len() + 1).min(3);
        let ls = big_l(si);
        if sn == 0.0 {
            x = denoised.clone();
        } else {
            let lt = big_l(sn);
            let a_s = si / ls;
            let a_t = sn / lt;
            let r_alpha = a_t / a_s;
            let r = er_ns(lt) / er_ns(ls);
            x = lin2(r_alpha * r, &x, a_t * (1.0 - r), &denoised)?;
            if stage >= 2 {
                let dt = lt - ls;
                let step = (-dt) / POINTS as f32;
                let pos: Vec<f32> = (0..POINTS).map(|k| lt + (k as f32) * step).collect();
                let s1 = sum_f32(pos.iter().map(|&p| 1.0 / er_ns(p))) * step;
                let l1 = prev_l[prev_l.len() - 1];
                let d_prev = st.history.last().expect("a previous prediction");
                let dd = div_scalar(&(&denoised - d_prev)?, ls - l1)?;
                x = (x + mul_scalar(&dd, a_t * (dt + s1 * er_ns(lt)))?)?;
                if stage >= 3 {
                    let su = sum_f32(pos.iter().map(|&p| (p - ls) / er_ns(p))) * step;
                    let l2 = prev_l[prev_l.len() - 2];
                    let dd_prev = st.last_sample.as_ref().expect("a previous difference");
                    let du = div_scalar(&(&dd - dd_prev)?, (ls - l2) / 2.0)?;
                    x = (x + mul_scalar(&du, a_t * ((dt * dt) / 2.0 + su * er_ns(lt)))?)?;
                }
                st.last_sample = Some(dd);
            }
            let n = (h.noise)(&x, si, sn)?;
            let c = nan_to_zero(((lt * lt) - (ls * ls) * (r * r)).sqrt());
            x = (x + mul_scalar(&mul_scalar(&n, a_t)?, c)?)?;
        }
        st.history = vec![denoised];
        st.scalars.push(ls);
        let drop = st.scalars.len().saturating_sub(2);
        st.scalars.drain(..drop);
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

/// torch's f32 `sigmoid(v)`.
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `seeds_2` (η = 1, s_noise = 1, r = ½).
pub fn seeds_2(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        if sn == 0.0 {
            x = denoised;
        } else {
            let (ls, lt) = (lambda(si), lambda(sn));
            let hh = lt - ls;
            let he = hh * 2.0;
            let at = sn * lt.exp();
            let l1 = lerp(ls, lt, 0.5);
            let s1 = sigmoid(-l1);
            let a1 = s1 * l1.exp();
            let x2 = lin2(
                (s1 / si) * ((-0.5 * hh) * 1.0).exp(),
                &x,
                -(a1 * (-0.5 * he).exp_m1()),
                &denoised,
            )?;
            let n = (h.noise)(&x, si, s1)?;
            let z = mul_scalar(&n, (-((-hh) * 1.0).exp_m1()).sqrt())?;
            let x2 = (x2 + mul_scalar(&mul_scalar(&z, s1)?, 1.0)?)?;
            let d2 = (h.denoise)(&x2, s1)?;
            x = lin2(
                (sn / si) * ((-hh) * 1.0).exp(),
                &x,
                -(at * (-he).exp_m1()),
                &d2,
            )?;
            let f = (-0.5 * hh) * 1.0;
            let n = (h.noise)(&x, s1, sn)?;
            let z = (mul_scalar(&z, f.exp())? + mul_scalar(&n, (-(f * 2.0).exp_m1()).sqrt())?)?;
            x = (x + mul_scalar(&mul_scalar(&z, sn)?, 1.0)?)?;
        }
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

/// `seeds_3` (η = 1, s_noise = 1, r1 = 1/3, r2 = 2/3).
pub fn seeds_3(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    let (r1d, r2d) = (1.0f64 / 3.0, 2.0f64 / 3.0);
    let (r1, r2) = (r1d as f32, r2d as f32);
    let phi1 = |v: f32| v.exp_m1();
    let phi2 = |v: f32| (v.exp_m1() - v) / v;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        if sn == 0.0 {
            x = denoised;
        } else {
            let (ls, lt) = (lambda(si), lambda(sn));
            let hh = lt - ls;
            let he = hh * 2.0;
            let at = sn * lt.exp();
            let l1 = lerp(ls, lt, r1);
            let l2 = lerp(ls, lt, r2);
            let (s1, s2) = (sigmoid(-l1), sigmoid(-l2));
            let (a1, a2) = (s1 * l1.exp(), s2 * l2.exp());
            let x2 = lin2(
                (s1 / si) * ((-r1 * hh) * 1.0).exp(),
                &x,
                -(a1 * phi1(-r1 * he)),
                &denoised,
            )?;
            let n = (h.noise)(&x, si, s1)?;
            let z = mul_scalar(&n, (-((-(2.0 * r1d) as f32 * hh) * 1.0).exp_m1()).sqrt())?;
            let x2 = (x2 + mul_scalar(&mul_scalar(&z, s1)?, 1.0)?)?;
            let d2 = (h.denoise)(&x2, s1)?;
            let a32 = (r2d / r1d) as f32 * phi2(-r2 * he);
            let a31 = phi1(-r2 * he) - a32;
            let x3 = (mul_scalar(&x, (s2 / si) * ((-r2 * hh) * 1.0).exp())?
                - mul_scalar(&lin2(a31, &denoised, a32, &d2)?, a2)?)?;
            let f = (((r1d - r2d) as f32) * hh) * 1.0;
            let n = (h.noise)(&x, s1, s2)?;
            let z = (mul_scalar(&z, f.exp())? + mul_scalar(&n, (-(f * 2.0).exp_m1()).sqrt())?)?;
            let x3 = (x3 + mul_scalar(&mul_scalar(&z, s2)?, 1.0)?)?;
            let d3 = (h.denoise)(&x3, s2)?;
            let b3 = phi2(-he) / r2;
            let b1 = phi1(-he) - b3;
            x = (mul_scalar(&x, (sn / si) * ((-hh) * 1.0).exp())?
                - mul_scalar(&lin2(b1, &denoised, b3, &d3)?, at)?)?;
            let f = (((r2d - 1.0) as f32) * hh) * 1.0;
            let n = (h.noise)(&x, s2, sn)?;
            let z = (mul_scalar(&z, f.exp())? + mul_scalar(&n, (-(f * 2.0).exp_m1()).sqrt())?)?;
            x = (x + mul_scalar(&mul_scalar(&z, sn)?, 1.0)?)?;
        }
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

/// `compute_stochastic_adams_b_coeffs`: `b = a_t·V⁻¹e` with `V[p][k] = λ_k^p`
/// and `e_p = Σ_{q≤p} (−1)^{p−q}·(p!/q!)·(1+τ²)^{−(p−q)}·(λ_t^q − λ_s^q·exp(−(1+τ²)(λ_t − λ_s)))`.
/// ComfyUI solves in f32 with `torch.linalg.solve`; this solves in double
/// (README §8.8: up to ~7e-7 abs apart here).
pub fn sa_b_coeffs(sigma_next: f32, lambdas: &[f32], ls: f32, lt: f32, tau: f32) -> Vec<f32> {
    let k = lambdas.len();
    let (ls, lt, tau) = (ls as f64, lt as f64, tau as f64);
    let at = sigma_next as f64 * lt.exp();
    let g = 1.0 + tau * tau;
    let decay = (-g * (lt - ls)).exp();
    let fact = |n: usize| (1..=n).map(|v| v as f64).product::<f64>();
    let e: Vec<f64> = (0..k)
        .map(|p| {
            (0..=p)
                .map(|q| {
                    let sign = if (p - q) % 2 == 0 { 1.0 } else { -1.0 };
                    sign * (fact(p) / fact(q))
                        * g.powi(-((p - q) as i32))
                        * (lt.powi(q as i32) - ls.powi(q as i32) * decay)
                })
                .sum()
        })
        .collect();
    // Solve V b = e by Gaussian elimination with partial pivoting.
    let mut m: Vec<Vec<f64>> = (0..k)
        .map(|p| {
            let mut row: Vec<f64> = lambdas.iter().map(|&l| (l as f64).powi(p as i32)).collect();
            row.push(e[p]);
            row
        })
        .collect();
    for c in 0..k {
        let piv = (c..k)
            .max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))
            .expect("a pivot row");
        m.swap(c, piv);
        let pivot = m[c].clone();
        for row in m.iter_mut().skip(c + 1) {
            let f = row[c] / pivot[c];
            for (v, p) in row.iter_mut().zip(&pivot).skip(c) {
                *v -= f * p;
            }
        }
    }
    let mut b = vec![0f64; k];
    for r in (0..k).rev() {
        let acc: f64 = (r + 1..k).map(|j| m[r][j] * b[j]).sum();
        b[r] = (m[r][k] - acc) / m[r][r];
    }
    b.into_iter().map(|v| (at * v) as f32).collect()
}

/// `Σ_k P_k·b_k` over the newest `b.len()` predictions, oldest first, in f32.
fn adams_sum(p: &[Tensor], b: &[f32]) -> Result<Tensor> {
    let start = p.len() - b.len();
    let mut acc = mul_scalar(&p[start], b[0])?;
    for (t, &c) in p[start + 1..].iter().zip(&b[1..]) {
        acc = (acc + mul_scalar(t, c)?)?;
    }
    Ok(acc)
}

/// `sa_solver` / `sa_solver_pece` (predictor order 3, corrector order 4,
/// η = 1 inside τ's interval [shift(0.2), shift(0.8)] of the schedule).
fn sa_solver_gen(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
    pece: bool,
) -> Result<Tensor> {
    const PRED: usize = 3;
    const CORR: usize = 4;
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    let big_l: Vec<f32> = s.iter().map(|&v| lambda(v)).collect();
    // percent_to_sigma(0.2) and (0.8) in double: shift(α, 0.8), shift(α, 0.2).
    let shift = |t: f64| {
        let a = h.shift as f64;
        if a == 1.0 {
            t
        } else {
            a * t / (1.0 + (a - 1.0) * t)
        }
    };
    let (start, end) = (shift(0.8), shift(0.2));
    let tau = |sigma: f32| {
        let v = sigma as f64;
        if start >= v && v >= end {
            1.0f32
        } else {
            0.0
        }
    };
    let ends_at_zero = s[steps] == 0.0;
    let mut x = x;
    let mut xp = x.clone();
    let (mut hh, mut tau_t) = (0f32, 0f32);
    let mut z: Option<Tensor> = None;
    let mut preds: Vec<Tensor> = Vec::new();
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let mut denoised = (h.denoise)(&xp, si)?;
        preds.push(denoised.clone());
        let drop = preds.len().saturating_sub(PRED.max(CORR));
        preds.drain(..drop);
        let mut kp = PRED.min(preds.len());
        let mut kc = if i == 0 || (sn == 0.0 && !pece) {
            0
        } else {
            CORR.min(preds.len())
        };
        if ends_at_zero {
            kp = kp.min(steps + 1 - 2 - i);
            kc = kc.min(steps + 1 - 1 - i);
        }
        if kc == 0 {
            x = xp.clone();
        } else {
            let b = sa_b_coeffs(si, &big_l[i + 1 - kc..=i], big_l[i - 1], big_l[i], tau_t);
            x = (mul_scalar(&x, (si / s[i - 1]) * ((-(tau_t * tau_t)) * hh).exp())?
                + adams_sum(&preds, &b)?)?;
            if tau_t > 0.0 {
                if let Some(z) = &z {
                    x = (x + z)?;
                }
            }
            if pece {
                denoised = (h.denoise)(&x, si)?;
                *preds.last_mut().expect("a prediction") = denoised.clone();
            }
        }
        if sn == 0.0 {
            x = denoised;
        } else {
            tau_t = tau(sn);
            let b = sa_b_coeffs(sn, &big_l[i + 1 - kp..=i], big_l[i], big_l[i + 1], tau_t);
            hh = big_l[i + 1] - big_l[i];
            xp = (mul_scalar(&x, (sn / si) * ((-(tau_t * tau_t)) * hh).exp())?
                + adams_sum(&preds, &b)?)?;
            if tau_t > 0.0 {
                let n = (h.noise)(&xp, si, sn)?;
                let amp = (-((-2.0 * (tau_t * tau_t)) * hh).exp_m1()).sqrt();
                let zz = mul_scalar(&mul_scalar(&mul_scalar(&n, sn)?, amp)?, 1.0)?;
                xp = (xp + &zz)?;
                z = Some(zz);
            }
        }
        done(h, st, i, steps, s[i]);
    }
    // A pass that stops above σ = 0 hands on the predicted state at its last sigma.
    Ok(if ends_at_zero { x } else { xp })
}

pub fn sa_solver(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    sa_solver_gen(h, x, s, st, false)
}

pub fn sa_solver_pece(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    sa_solver_gen(h, x, s, st, true)
}
