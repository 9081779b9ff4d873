//! The rest of ComfyUI's k-diffusion samplers with flow (CONST) semantics:
//! the `*_cfg_pp` family, the `res_multistep` family, `gradient_estimation`,
//! `heunpp2`, the RF ancestral `dpm_2_ancestral` and `dpmpp_2s_ancestral`,
//! `ddpm` and `ipndm_v`. Formulas and their f32 operation order follow
//! tests/fixtures/comfy/README.md §8.7; scalars are f32 as torch's 0-d
//! tensors are, applied as `tensor · f32`.

use super::kdiff::{anc, done, lambda, lerp, lin2, remember, rf_step, t_of, to_d};
use super::samplers::{div_scalar, mul_scalar, Hooks, SolverState};
use candle_core::{Result, Tensor};

/// One guided evaluation and, for the cfg_pp samplers, its uncond prediction.
fn eval_pp(h: &mut Hooks, x: &Tensor, sigma: f32) -> Result<(Tensor, Tensor)> {
    let d = (h.denoise)(x, sigma)?;
    let u = (h.uncond)().ok_or_else(|| {
        candle_core::Error::Msg(
            "a cfg_pp sampler needs the uncond prediction; run it through the sampling pass".into(),
        )
    })?;
    Ok((d, u))
}

/// `euler_cfg_pp` (η = 0) and `euler_ancestral_cfg_pp` (η = 1).
fn euler_pp(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
    eta: f32,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let (d_, u) = eval_pp(h, &x, si)?;
        if sn == 0.0 {
            x = d_;
        } else {
            let a_s = si * lambda(si).exp();
            let a_t = sn * lambda(sn).exp();
            let d = div_scalar(&(&x - mul_scalar(&u, a_s)?)?, si)?;
            let (sd, su) = anc(si / a_s, sn / a_t, eta);
            let sd = a_t * sd;
            x = lin2(a_t, &d_, sd, &d)?;
            if eta > 0.0 {
                let n = (h.noise)(&x, si, sn)?;
                x = (x + mul_scalar(&mul_scalar(&n, a_t)?, su)?)?;
            }
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

pub fn euler_cfg_pp(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    euler_pp(h, x, s, st, 0.0)
}

pub fn euler_ancestral_cfg_pp(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    euler_pp(h, x, s, st, 1.0)
}

/// `dpmpp_2s_ancestral_cfg_pp`: the VE ancestral step even on flow sigmas;
/// the final update uses the second evaluation's uncond (ComfyUI's hook
/// overwrote the first).
pub fn dpmpp_2s_ancestral_cfg_pp(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let (d_, u) = eval_pp(h, &x, si)?;
        let (sd, su) = anc(si, sn, 1.0);
        if sd == 0.0 {
            x = (&d_ + mul_scalar(&div_scalar(&(&x - &u)?, si)?, sd)?)?;
        } else {
            let (t, tn) = (t_of(si), t_of(sd));
            let hh = tn - t;
            let sm = t + 0.5 * hh;
            let x2 = (mul_scalar(&(&x + (&d_ - &u)?)?, (-sm).exp() / (-t).exp())?
                - mul_scalar(&d_, ((-hh) * 0.5).exp_m1())?)?;
            let (d2, u2) = eval_pp(h, &x2, (-sm).exp())?;
            x = (mul_scalar(&(&x + (&d_ - &u2)?)?, (-tn).exp() / (-t).exp())?
                - mul_scalar(&d2, (-hh).exp_m1())?)?;
        }
        if sn > 0.0 {
            let n = (h.noise)(&x, si, sn)?;
            x = (x + mul_scalar(&n, su)?)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// `dpmpp_2m_cfg_pp`: DPM-Solver++(2M) stepping from the uncond prediction.
pub fn dpmpp_2m_cfg_pp(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let (d_, u) = eval_pp(h, &x, si)?;
        let (t, tn) = (t_of(si), t_of(sn));
        let hh = tn - t;
        let e = (-hh).exp();
        let mix = match st.history.last().zip(st.sigmas.last()) {
            Some((u_prev, &s_prev)) if sn != 0.0 => {
                let r = (t - t_of(s_prev)) / hh;
                (mul_scalar(&u, -e)?
                    - mul_scalar(&(&d_ - u_prev)?, (-hh).exp_m1() * (1.0 / (2.0 * r)))?)?
            }
            _ => mul_scalar(&u, -e)?,
        };
        x = ((d_ + mix)? + mul_scalar(&x, e)?)?;
        remember(st, si, u, 1);
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// The `res_multistep` family: η = 0 or 1, stepping from D or (cfg_pp) U.
/// ComfyUI draws noise at every step into σ > 0, even when η = 0 multiplies
/// it by 0; so does this (it advances the generator the same way).
fn res_multistep_gen(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
    eta: f32,
    cfg_pp: bool,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let (d_, u) = if cfg_pp {
            let (d, u) = eval_pp(h, &x, si)?;
            (d, Some(u))
        } else {
            ((h.denoise)(&x, si)?, None)
        };
        let (sd, su) = anc(si, sn, eta);
        let prev = st.history.last().cloned().zip(st.sigmas.last().copied());
        let sd_prev = st.scalars.last().copied();
        x = match (prev, sd_prev) {
            (Some((p, s_prev)), Some(sd_prev)) if sd != 0.0 => {
                let (t, t_old, tn, tp) = (t_of(si), t_of(sd_prev), t_of(sd), t_of(s_prev));
                let hh = tn - t;
                let c2 = (tp - t_old) / hh;
                let p1 = (-hh).exp_m1() / -hh;
                let p2 = (p1 - 1.0) / -hh;
                let b1 = super::kdiff::nan_to_zero(p1 - p2 / c2);
                let b2 = super::kdiff::nan_to_zero(p2 / c2);
                match &u {
                    Some(u) => {
                        let x = (&x + (&d_ - u)?)?;
                        (mul_scalar(&x, (-hh).exp())? + mul_scalar(&lin2(b1, u, b2, &p)?, hh)?)?
                    }
                    None => {
                        (mul_scalar(&x, (-hh).exp())? + mul_scalar(&lin2(b1, &d_, b2, &p)?, hh)?)?
                    }
                }
            }
            _ => match &u {
                Some(u) => (&d_ + mul_scalar(&div_scalar(&(&x - u)?, si)?, sd)?)?,
                None => (&x + mul_scalar(&to_d(&x, &d_, si)?, sd - si)?)?,
            },
        };
        if sn > 0.0 {
            let n = (h.noise)(&x, si, sn)?;
            x = (x + mul_scalar(&n, su)?)?;
        }
        remember(st, si, u.unwrap_or(d_), 1);
        st.scalars = vec![sd];
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// ComfyUI `res_multistep` (η = 0): a second-order exponential multistep
/// step in `t = −log σ`, Euler on the first step and into σ = 0.
pub fn res_multistep(h: &mut Hooks, x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    res_multistep_gen(h, x, s, st, 0.0, false)
}

pub fn res_multistep_cfg_pp(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    res_multistep_gen(h, x, s, st, 0.0, true)
}

pub fn res_multistep_ancestral(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    res_multistep_gen(h, x, s, st, 1.0, false)
}

pub fn res_multistep_ancestral_cfg_pp(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    res_multistep_gen(h, x, s, st, 1.0, true)
}

/// `gradient_estimation` (ge_gamma = 2), optionally cfg_pp.
fn gradient_estimation_gen(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
    cfg_pp: bool,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let (d_, d) = if cfg_pp {
            let (d_, u) = eval_pp(h, &x, si)?;
            let d = to_d(&x, &u, si)?;
            (d_, d)
        } else {
            let d_ = (h.denoise)(&x, si)?;
            let d = to_d(&x, &d_, si)?;
            (d_, d)
        };
        let dt = sn - si;
        if sn == 0.0 {
            x = d_;
        } else {
            x = if cfg_pp {
                (&d_ + mul_scalar(&d, sn)?)?
            } else {
                (&x + mul_scalar(&d, dt)?)?
            };
            if let Some(prev) = st.history.last() {
                let bar = mul_scalar(&(&d - prev)?, 1.0)?;
                x = (x + mul_scalar(&bar, dt)?)?;
            }
        }
        remember(st, si, d, 1);
        done(h, st, i, steps, si);
    }
    Ok(x)
}

pub fn gradient_estimation(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    gradient_estimation_gen(h, x, s, st, false)
}

pub fn gradient_estimation_cfg_pp(
    h: &mut Hooks,
    x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    gradient_estimation_gen(h, x, s, st, true)
}

/// `heunpp2`: Heun with a third evaluation where two sigmas remain, Euler on
/// the last step. (ComfyUI also draws `randn_like(x)` from torch's global
/// generator every step and discards it (s_churn = 0); that changes nothing
/// but the global generator, which baton does not have.)
pub fn heunpp2(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    let s_end = s[steps];
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si * 1.0)?;
        let d = to_d(&x, &denoised, si)?;
        let dt = sn - si;
        if sn == s_end {
            x = (x + mul_scalar(&d, dt)?)?;
        } else if s[i + 2] == s_end {
            let x2 = (&x + mul_scalar(&d, dt)?)?;
            let d2 = to_d(&x2, &(h.denoise)(&x2, sn)?, sn)?;
            let w = 2.0 * s[0];
            let w2 = sn / w;
            let w1 = 1.0 - w2;
            x = (&x + mul_scalar(&lin2(w1, &d, w2, &d2)?, dt)?)?;
        } else {
            let x2 = (&x + mul_scalar(&d, dt)?)?;
            let d2 = to_d(&x2, &(h.denoise)(&x2, sn)?, sn)?;
            let s2 = s[i + 2];
            let x3 = (&x2 + mul_scalar(&d2, s2 - sn)?)?;
            let d3 = to_d(&x3, &(h.denoise)(&x3, s2)?, s2)?;
            let w = 3.0 * s[0];
            let (w2, w3) = (sn / w, s2 / w);
            let w1 = (1.0 - w2) - w3;
            let sum = (lin2(w1, &d, w2, &d2)? + mul_scalar(&d3, w3)?)?;
            x = (&x + mul_scalar(&sum, dt)?)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// `dpm_2_ancestral`, RF variant (what ComfyUI picks for CONST models).
pub fn dpm_2_ancestral(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let (sd, a1, ad, rc) = rf_step(si, sn);
        let d = to_d(&x, &denoised, si)?;
        if sd == 0.0 {
            x = (&x + mul_scalar(&d, sd - si)?)?;
        } else {
            let sm = lerp(si.ln(), sd.ln(), 0.5).exp();
            let x2 = (&x + mul_scalar(&d, sm - si)?)?;
            let d2 = to_d(&x2, &(h.denoise)(&x2, sm)?, sm)?;
            x = (&x + mul_scalar(&d2, sd - si)?)?;
            let n = (h.noise)(&x, si, sn)?;
            x = lin2(a1 / ad, &x, rc, &n)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// `dpmpp_2s_ancestral`, RF variant.
pub fn dpmpp_2s_ancestral(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let (sd, a1, ad, rc) = rf_step(si, sn);
        if sn == 0.0 {
            x = (&x + mul_scalar(&to_d(&x, &denoised, si)?, sd - si)?)?;
        } else {
            let (ss, rho) = if si == 1.0 {
                (0.9999f32, (1.0 / si) * 0.9999)
            } else {
                let ti = ((1.0 - si) / si).ln();
                let td = ((1.0 - sd) / sd).ln();
                let hh = td - ti;
                let ss = 1.0 / ((ti + 0.5 * hh).exp() + 1.0);
                (ss, ss / si)
            };
            let u = lin2(rho, &x, 1.0 - rho, &denoised)?;
            let dm = (h.denoise)(&u, ss)?;
            let rd = sd / si;
            x = lin2(rd, &x, 1.0 - rd, &dm)?;
            let n = (h.noise)(&x, si, sn)?;
            x = lin2(a1 / ad, &x, rc, &n)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// `ddpm`: the VP DDPM step formulas applied to flow sigmas, as ComfyUI does.
pub fn ddpm(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let e = to_d(&x, &denoised, si)?;
        let xv = div_scalar(&x, (1.0 + si * si).sqrt())?;
        let ac = 1.0 / ((si * si) + 1.0);
        let ap = 1.0 / ((sn * sn) + 1.0);
        let alpha = ac / ap;
        let t = div_scalar(&mul_scalar(&e, 1.0 - alpha)?, (1.0 - ac).sqrt())?;
        let mut mu = mul_scalar(&(xv - t)?, (1.0 / alpha).sqrt())?;
        if sn > 0.0 {
            let n = (h.noise)(&mu, si, sn)?;
            let c = (((1.0 - alpha) * (1.0 - ap)) / (1.0 - ac)).sqrt();
            mu = (mu + mul_scalar(&n, c)?)?;
        }
        x = if sn != 0.0 {
            mul_scalar(&mu, (1.0 + sn * sn).sqrt())?
        } else {
            mu
        };
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// `ipndm_v` (max order 4): variable-step Adams–Bashforth coefficients;
/// `x = D` on the step to σ = 0.
pub fn ipndm_v(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let dc = to_d(&x, &denoised, si)?;
        let dt = sn - si;
        // Previous sigmas, newest first: σ_{i−1}, σ_{i−2}, σ_{i−3}.
        let ps: Vec<f32> = st.sigmas.iter().rev().copied().collect();
        let bs: Vec<Tensor> = st.history.iter().rev().cloned().collect();
        let k = bs.len().min(3) + 1;
        x = if sn == 0.0 {
            denoised
        } else if k == 1 {
            (&x + mul_scalar(&dc, dt)?)?
        } else {
            let hn = sn - si;
            let hn1 = si - ps[0];
            let t1 = |hn2: f32| {
                (1.0 - ((hn / (3.0 * (hn + hn1))) * (hn * (hn + hn1))) / (hn1 * (hn1 + hn2))) / 2.0
            };
            let slope = match k {
                2 => {
                    let c1 = (2.0 + hn / hn1) / 2.0;
                    let c2 = (-(hn / hn1)) / 2.0;
                    lin2(c1, &dc, c2, &bs[0])?
                }
                3 => {
                    let hn2 = ps[0] - ps[1];
                    let t = t1(hn2);
                    let c1 = (2.0 + hn / hn1) / 2.0 + t;
                    let c2 = (-(hn / hn1)) / 2.0 - (1.0 + hn1 / hn2) * t;
                    let c3 = (t * hn1) / hn2;
                    (lin2(c1, &dc, c2, &bs[0])? + mul_scalar(&bs[1], c3)?)?
                }
                _ => {
                    let hn2 = ps[0] - ps[1];
                    let hn3 = ps[1] - ps[2];
                    let t1 = t1(hn2);
                    let t2 = (((1.0 - hn / (3.0 * (hn + hn1))) / 2.0
                        + ((1.0 - hn / (2.0 * (hn + hn1))) * hn) / (6.0 * ((hn + hn1) + hn2)))
                        * ((hn * (hn + hn1)) * ((hn + hn1) + hn2)))
                        / ((hn1 * (hn1 + hn2)) * ((hn1 + hn2) + hn3));
                    let q = (hn1 * (hn1 + hn2)) / (hn2 * (hn2 + hn3));
                    let c1 = ((2.0 + hn / hn1) / 2.0 + t1) + t2;
                    let c2 = ((-(hn / hn1)) / 2.0 - (1.0 + hn1 / hn2) * t1)
                        - ((1.0 + hn1 / hn2) + q) * t2;
                    let c3 = (t1 * hn1) / hn2 + (hn1 / hn2 + q * (1.0 + hn2 / hn3)) * t2;
                    let c4 = (((-t2) * q) * hn1) / hn2;
                    ((lin2(c1, &dc, c2, &bs[0])? + mul_scalar(&bs[1], c3)?)?
                        + mul_scalar(&bs[2], c4)?)?
                }
            };
            (&x + mul_scalar(&slope, dt)?)?
        };
        remember(st, si, dc, 3);
        done(h, st, i, steps, si);
    }
    Ok(x)
}
