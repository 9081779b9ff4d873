//! ComfyUI's k-diffusion samplers with flow (CONST) model semantics.
//!
//! Each update follows ComfyUI's float32 operation order (tests/fixtures/comfy
//! README, section 5): scalar coefficients are computed in f32 in the order
//! ComfyUI evaluates its 0-d tensors, then applied as `tensor · f32`. That is
//! what makes euler, heun, ancestral and lcm traces bit-identical, and keeps
//! the multistep ones within libm's rounding of ComfyUI.
//!
//! Multistep samplers keep their history in [`SolverState`], so a run split
//! across passes continues exactly when the state is handed over, and
//! restarts (ComfyUI's behaviour) when it is fresh.

use super::samplers::{div_scalar, mul_scalar, Hooks, SolverState};
use candle_core::{Result, Tensor};

/// The bookkeeping every sampler does after a step.
pub(crate) fn done(h: &mut Hooks, st: &mut SolverState, i: usize, steps: usize, sigma: f32) {
    st.steps_done += 1;
    (h.on_step)(i, steps, sigma);
}

/// `(x − D)/σ`: the ODE derivative k-diffusion calls `to_d`.
pub(crate) fn to_d(x: &Tensor, denoised: &Tensor, sigma: f32) -> Result<Tensor> {
    div_scalar(&(x - denoised)?, sigma)
}

/// `a·x + b·y` with f32 coefficients, evaluated as two products and one sum.
pub(crate) fn lin2(a: f32, x: &Tensor, b: f32, y: &Tensor) -> Result<Tensor> {
    mul_scalar(x, a)? + mul_scalar(y, b)?
}

/// Stores `denoised` (at `sigma`) as the newest history entry, keeping `keep`.
pub(crate) fn remember(st: &mut SolverState, sigma: f32, t: Tensor, keep: usize) {
    st.sigmas.push(sigma);
    st.history.push(t);
    st.keep_last(keep);
}

/// ComfyUI `euler` (s_churn = 0): `d = (x − D)/σ_i`, `x = x + d·(σ_{i+1} − σ_i)`.
/// `ddim` is the same update in ComfyUI (its extra option only matters with a mask).
pub fn euler(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let denoised = (h.denoise)(&x, s[i])?;
        let d = to_d(&x, &denoised, s[i])?;
        x = (x + mul_scalar(&d, s[i + 1] - s[i])?)?;
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

/// ComfyUI `euler_ancestral` for flow models (its RF variant, eta = 1):
/// step down to `σ_down = σ_{i+1}²/σ_i`, then re-noise with the flow
/// interpolation so the marginal at σ_{i+1} is right.
pub fn euler_ancestral(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        if sn == 0.0 {
            x = denoised;
        } else {
            let (sd, a1, ad, rc) = rf_step(si, sn);
            let r = sd / si;
            x = lin2(r, &x, 1.0 - r, &denoised)?;
            let n = (h.noise)(&x, si, sn)?;
            x = lin2(a1 / ad, &x, rc, &n)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// The RF ancestral coefficients at the top of a step:
/// `(σ_down, a1 = 1 − σ_{i+1}, ad = 1 − σ_down, rc)`.
pub(crate) fn rf_step(si: f32, sn: f32) -> (f32, f32, f32, f32) {
    let ratio = 1.0 + (sn / si - 1.0);
    let sd = sn * ratio;
    let a1 = 1.0 - sn;
    let ad = 1.0 - sd;
    let rc = ((sn * sn) - ((sd * sd) * (a1 * a1)) / (ad * ad)).sqrt();
    (sd, a1, ad, rc)
}

/// ComfyUI `heun`: the trapezoidal (2nd order) correction of an Euler step,
/// except into σ = 0 where the derivative there is undefined.
pub fn heun(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let d = to_d(&x, &denoised, si)?;
        let dt = sn - si;
        if sn == 0.0 {
            x = (x + mul_scalar(&d, dt)?)?;
        } else {
            let x2 = (&x + mul_scalar(&d, dt)?)?;
            let d2 = to_d(&x2, &(h.denoise)(&x2, sn)?, sn)?;
            let avg = div_scalar(&(d + d2)?, 2.0)?;
            x = (x + mul_scalar(&avg, dt)?)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// k-diffusion `dpm_2` (DPM-Solver-2, s_churn = 0): a midpoint step in log σ,
/// and a plain Euler step into σ = 0.
pub fn dpm_2(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let d = to_d(&x, &denoised, si)?;
        if sn == 0.0 {
            x = (x + mul_scalar(&d, sn - si)?)?;
        } else {
            let mid = lerp(si.ln(), sn.ln(), 0.5).exp();
            let x2 = (&x + mul_scalar(&d, mid - si)?)?;
            let d2 = to_d(&x2, &(h.denoise)(&x2, mid)?, mid)?;
            x = (x + mul_scalar(&d2, sn - si)?)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// torch's `lerp(a, b, w)` on f32: `fma(w, b − a, a)` for |w| < 0.5, else
/// `fma(−(b − a), 1 − w, b)` (one rounding each).
pub(crate) fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        w.mul_add(b - a, a)
    } else {
        (-(b - a)).mul_add(1.0 - w, b)
    }
}

/// torch's f32 `logit(σ) = log(σ/(1 − σ))`.
pub(crate) fn logit(sigma: f32) -> f32 {
    (sigma / (1.0 - sigma)).ln()
}

/// k-diffusion's `get_ancestral_step(f, t, eta)`: `(σ_down, σ_up)`. Python's
/// `min` keeps `t` when the other operand is NaN (f = ∞).
pub(crate) fn anc(f: f32, t: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (t, 0.0);
    }
    let v = eta * ((t * t) * (f * f - t * t) / (f * f)).sqrt();
    let up = if v < t { v } else { t };
    ((t * t - up * up).sqrt(), up)
}

/// `−log σ`, k-diffusion's `t_fn` (+∞ at σ = 0).
pub(crate) fn t_of(sigma: f32) -> f32 {
    -sigma.ln()
}

/// ComfyUI `dpmpp_2m`: DPM-Solver++(2M). The second-order correction uses the
/// previous data prediction, which is why a fresh pass (ComfyUI's split) takes
/// a first-order step where the single run would not.
pub fn dpmpp_2m(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let (t, tn) = (t_of(si), t_of(sn));
        let hh = tn - t;
        let q = (-tn).exp() / (-t).exp();
        let c = (-hh).exp_m1();
        let prev = st.history.last().zip(st.sigmas.last());
        x = match prev {
            Some((old, &s_prev)) if sn != 0.0 => {
                let r = (t - t_of(s_prev)) / hh;
                let k = 1.0 / (2.0 * r);
                let dd = lin2(1.0 + k, &denoised, -k, old)?;
                (mul_scalar(&x, q)? - mul_scalar(&dd, c)?)?
            }
            _ => (mul_scalar(&x, q)? - mul_scalar(&denoised, c)?)?,
        };
        remember(st, si, denoised, 1);
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// Half log-SNR of a flow sigma, `−logit(σ)`: what ComfyUI's SDE samplers step in.
pub(crate) fn lambda(sigma: f32) -> f32 {
    -logit(sigma)
}

/// ComfyUI moves a first sigma of 1 (infinite log-SNR) to the model's sigma at
/// 0.01% of the schedule: `shift(α, 1 − 1e-4)` computed in double.
pub(crate) fn offset_first_sigma(s: &[f32], shift: f32) -> Vec<f32> {
    let mut s = s.to_vec();
    if s.len() > 1 && s[0] >= 1.0 {
        let (a, t) = (shift as f64, 1.0 - 1e-4);
        s[0] = (a * t / (1.0 + (a - 1.0) * t)) as f32;
    }
    s
}

/// ComfyUI `dpmpp_2m_sde` (midpoint, eta = 1, s_noise = 1) for flow models.
/// Noise comes from `Hooks::noise` (ComfyUI uses a torchsde Brownian tree).
pub fn dpmpp_2m_sde(
    h: &mut Hooks,
    mut x: Tensor,
    s: &[f32],
    st: &mut SolverState,
) -> Result<Tensor> {
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        if sn == 0.0 {
            x = denoised.clone();
        } else {
            let (li, ln) = (lambda(si), lambda(sn));
            let hh = ln - li;
            let at = sn * ln.exp();
            let g = -(-(hh * 2.0)).exp_m1();
            x = lin2((sn / si) * (-hh).exp(), &x, at * g, &denoised)?;
            if let Some((old, &s_prev)) = st.history.last().zip(st.sigmas.last()) {
                let h_prev = li - lambda(s_prev);
                let coef = ((0.5 * at) * g) * (1.0 / (h_prev / hh));
                x = (x + mul_scalar(&(&denoised - old)?, coef)?)?;
            }
            let n = (h.noise)(&x, si, sn)?;
            let amp = (-((-2.0 * hh).exp_m1())).sqrt();
            x = (x + mul_scalar(&mul_scalar(&n, sn)?, amp)?)?;
        }
        remember(st, si, denoised, 1);
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

/// `(σ_down, σ_up)` for an ancestral step from `f` to `t` (eta = 1).
pub(crate) fn ancestral(f: f32, t: f32) -> (f32, f32) {
    anc(f, t, 1.0)
}

/// ComfyUI `dpmpp_sde` (DPM-Solver++ SDE, r = ½, eta = 1) for flow models: a
/// stochastic midpoint evaluation, then the full step. Two draws per step.
pub fn dpmpp_sde(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    let s = offset_first_sigma(s, h.shift);
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        if sn == 0.0 {
            x = denoised;
        } else {
            let (li, ln) = (lambda(si), lambda(sn));
            let hh = ln - li;
            let l1 = li + 0.5 * hh;
            let s1 = 1.0 / (1.0 + l1.exp());
            let a_s = si * li.exp();
            let a_1 = s1 * l1.exp();
            let a_t = sn * ln.exp();

            let (sd, su) = ancestral((-li).exp(), (-l1).exp());
            let h_ = -sd.ln() - li;
            let mut x2 = lin2(
                (a_1 / a_s) * (-h_).exp(),
                &x,
                -(a_1 * (-h_).exp_m1()),
                &denoised,
            )?;
            let n1 = (h.noise)(&x, si, s1)?;
            x2 = (x2 + mul_scalar(&mul_scalar(&n1, a_1)?, su)?)?;
            let d2 = (h.denoise)(&x2, s1)?;

            let (sd, su) = ancestral((-li).exp(), (-ln).exp());
            let h_ = -sd.ln() - li;
            x = lin2((a_t / a_s) * (-h_).exp(), &x, -(a_t * (-h_).exp_m1()), &d2)?;
            let n2 = (h.noise)(&x, si, sn)?;
            x = (x + mul_scalar(&mul_scalar(&n2, a_t)?, su)?)?;
        }
        done(h, st, i, steps, s[i]);
    }
    Ok(x)
}

/// ComfyUI `lcm`: jump to the prediction, then re-noise to the next sigma
/// with the flow interpolation `σ·n + (1 − σ)·x`.
pub fn lcm(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        x = (h.denoise)(&x, si)?;
        if sn > 0.0 {
            let n = (h.noise)(&x, si, sn)?;
            x = lin2(sn, &n, 1.0 - sn, &x)?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

pub(crate) fn nan_to_zero(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v
    }
}

/// Largest order the Adams-type multistep samplers (lms, ipndm) use.
const MULTISTEP_ORDER: usize = 4;

/// k-diffusion `lms` (order 4): linear multistep over the last four
/// derivatives, with coefficients integrating each Lagrange basis polynomial
/// in σ over the step; `x = D` on the step to σ = 0.
pub fn lms(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        remember(st, si, to_d(&x, &denoised, si)?, MULTISTEP_ORDER);
        if sn == 0.0 {
            x = denoised;
        } else {
            // Nodes, newest first: σ_i, σ_{i−1}, ...
            let nodes: Vec<f32> = st.sigmas.iter().rev().copied().collect();
            let mut update: Option<Tensor> = None;
            for (j, d) in st.history.iter().rev().enumerate() {
                let c = lms_coeff(&nodes, j, si, sn) as f32;
                let term = mul_scalar(d, c)?;
                update = Some(match update {
                    None => term,
                    Some(u) => (u + term)?,
                });
            }
            x = (x + update.expect("one derivative at least"))?;
        }
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// QUADPACK's 21-point Gauss–Kronrod nodes (positive half, descending) and weights.
const XGK: [f64; 11] = [
    0.9956571630258081,
    0.9739065285171717,
    0.9301574913557082,
    0.8650633666889845,
    0.7808177265864169,
    0.6794095682990244,
    0.5627571346686047,
    0.4333953941292472,
    0.2943928627014602,
    0.14887433898163122,
    0.0,
];
const WGK: [f64; 11] = [
    0.011694638867371874,
    0.032558162307964725,
    0.054755896574351995,
    0.07503967481091996,
    0.0931254545836976,
    0.10938715880229764,
    0.12349197626206584,
    0.13470921731147334,
    0.14277593857706009,
    0.14773910490133849,
    0.1494455540029169,
];

/// k-diffusion's `linear_multistep_coeff`: `∫_a^b L_j(τ) dτ` by
/// `scipy.integrate.quad(epsrel=1e-4)`, whose first 21-point Gauss–Kronrod
/// pass already meets the tolerance for these polynomials. The integrand
/// runs in f32, as numpy evaluates it on the f32 sigma array (fixture
/// README §8.8); the sum is QUADPACK's `qk21` in double.
pub fn lms_coeff(nodes: &[f32], j: usize, a: f32, b: f32) -> f64 {
    let basis = |tau: f64| -> f64 {
        if nodes.len() == 1 {
            return 1.0;
        }
        let t = tau as f32;
        let mut prod = 1.0f32;
        for (k, &tk) in nodes.iter().enumerate() {
            if k != j {
                prod *= (t - tk) / (nodes[j] - tk);
            }
        }
        prod as f64
    };
    let (a, b) = (a as f64, b as f64);
    let centr = 0.5 * (a + b);
    let hlgth = 0.5 * (b - a);
    let mut resk = WGK[10] * basis(centr);
    for jtw in [1usize, 3, 5, 7, 9].into_iter().chain([0, 2, 4, 6, 8]) {
        let absc = hlgth * XGK[jtw];
        resk += WGK[jtw] * (basis(centr - absc) + basis(centr + absc));
    }
    resk * hlgth
}

/// ComfyUI `ipndm` (max order 4): Adams–Bashforth on the derivative with
/// fixed (equal-step) coefficients; `x = D` on the step to σ = 0.
pub fn ipndm(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let d = to_d(&x, &denoised, si)?;
        let dt = sn - si;
        let b = &st.history; // previous derivatives, oldest first
        let n = b.len();
        let m = |t: &Tensor, c: f32| mul_scalar(t, c);
        x = if sn == 0.0 {
            denoised
        } else {
            let slope = match n.min(MULTISTEP_ORDER - 1) {
                0 => m(&d, dt)?,
                1 => div_scalar(&m(&(m(&d, 3.0)? - &b[n - 1])?, dt)?, 2.0)?,
                2 => {
                    let s = ((m(&d, 23.0)? - m(&b[n - 1], 16.0)?)? + m(&b[n - 2], 5.0)?)?;
                    div_scalar(&m(&s, dt)?, 12.0)?
                }
                _ => {
                    let s = (((m(&d, 55.0)? - m(&b[n - 1], 59.0)?)? + m(&b[n - 2], 37.0)?)?
                        - m(&b[n - 3], 9.0)?)?;
                    div_scalar(&m(&s, dt)?, 24.0)?
                }
            };
            (x + slope)?
        };
        remember(st, si, d, MULTISTEP_ORDER - 1);
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// Largest order ComfyUI's `deis` uses.
const DEIS_ORDER: usize = 3;

/// ComfyUI `deis` (tab mode, order 3): an exponential-integrator multistep
/// whose coefficients integrate Lagrange polynomials in the VP time of each
/// sigma, weighted by dσ/dt; a plain Euler step into σ = 0.
pub fn deis(h: &mut Hooks, mut x: Tensor, s: &[f32], st: &mut SolverState) -> Result<Tensor> {
    let steps = s.len() - 1;
    for i in 0..steps {
        let (si, sn) = (s[i], s[i + 1]);
        let denoised = (h.denoise)(&x, si)?;
        let d = to_d(&x, &denoised, si)?;
        let n = st.history.len().min(DEIS_ORDER - 1);
        if sn <= 0.0 || n == 0 {
            x = (x + mul_scalar(&d, sn - si)?)?;
        } else {
            // VP times of σ_i and the previous nodes, newest first.
            let mut nodes = vec![vp_time(si)];
            nodes.extend(st.sigmas.iter().rev().take(n).map(|&v| vp_time(v)));
            let (ta, tb) = (nodes[0], vp_time(sn));
            let mut next = x.clone();
            let hist = st.history.iter().rev();
            for (j, dj) in std::iter::once(&d).chain(hist).take(n + 1).enumerate() {
                let c = deis_coefficient(&nodes, j, ta, tb);
                next = (next + mul_scalar(dj, c)?)?;
            }
            x = next;
        }
        remember(st, si, d, DEIS_ORDER - 1);
        done(h, st, i, steps, si);
    }
    Ok(x)
}

/// DEIS's VP constants, as ComfyUI derives them from `sigma_min = 0.002`,
/// `sigma_max = 80`, `epsilon_s = 1e-3` (not the textbook 0.1 / 20):
/// `(β_d, β_0)` in double, with the first log taken in f32 as torch does.
pub fn deis_betas() -> (f64, f64) {
    let smin = 0.002f32;
    // log(f32(0.002)² + 1)/ε runs in f32 (numpy on an f32 tensor), the
    // second log in double (of the integer 6401).
    let eps = 1e-3f64;
    let l_min = (((smin * smin) + 1.0).ln() / eps as f32) as f64;
    let l_max = 6401f64.ln();
    let beta_d = 2.0 * (l_min - l_max) / (eps - 1.0);
    let beta_0 = l_max - 0.5 * beta_d;
    (beta_d, beta_0)
}

/// `edm2t`: the VP time of σ, in f32 as ComfyUI computes `t_steps`.
pub fn vp_time(sigma: f32) -> f32 {
    let (bd, b0) = deis_betas();
    let (bd, b0) = (bd as f32, b0 as f32);
    (((b0 * b0) + (2.0 * bd) * ((sigma * sigma) + 1.0).ln()).sqrt() - b0) / bd
}

/// `∫_a^b L_j(τ)·dσ/dτ dτ` over the VP time with ComfyUI's Riemann sum:
/// 10000 points of `torch.linspace(a, b)` (f32), each term in f32 as torch
/// computes it (autograd's d log α/dτ included), summed in double, times
/// `(b − a)/10000`. torch's own f32 cascade sum differs by ~1e-6 relative.
pub fn deis_coefficient(nodes: &[f32], j: usize, a: f32, b: f32) -> f32 {
    const N: usize = 10_000;
    let (bd, b0) = deis_betas();
    let b1 = (bd + b0) as f32;
    let b0 = b0 as f32;
    let taus = super::schedules::torch_linspace(a, b, N);
    let mut sum = 0f64;
    for tau in taus {
        // α(τ) = exp(−0.5τ²(β1−β0) − τβ0); d log α/dτ = −τ(β1−β0) − β0.
        let alpha = ((-0.5 * (tau * tau)) * (b1 - b0) - tau * b0).exp();
        let dlog = -(tau * (b1 - b0)) - b0;
        let integrand = (-0.5 * dlog) / (alpha * (1.0 - alpha)).sqrt();
        let mut poly = 1.0f32;
        for (k, &tk) in nodes.iter().enumerate() {
            if k != j {
                poly *= (tau - tk) / (nodes[j] - tk);
            }
        }
        sum += (integrand * poly) as f64;
    }
    (sum as f32) * ((b - a) / N as f32)
}
