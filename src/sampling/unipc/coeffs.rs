//! The scalar side of a UniPC step: how a sigma maps to (α, σ, λ), the step's
//! multipliers, and the ρ weights of the predictor and corrector.
//!
//! Everything the references compute on 0-d float32 tensors is computed here
//! in f32 with the same operation order; only `b` (a recurrence of
//! near-cancelling terms) and the small linear solves run in f64.

use candle_core::Result;

/// How a sigma list is read as a diffusion time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param {
    /// ComfyUI's `SigmaConvert`: the flow sigma is taken as a VE sigma and
    /// converted to VP, `log α = 0.5·log(1/(σ²+1))`, `std = √(1 − exp(2·log α))`.
    ComfyVp,
    /// diffusers' flow sigmas: `α = 1 − σ`, `std = σ`.
    Flow,
}

/// B(h) of the UniPC paper: bh1 uses `hh`, bh2 uses `expm1(hh)` (hh = −h).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bh {
    Bh1,
    Bh2,
}

/// α(σ), std(σ) and λ(σ) = log α − log std, in the reference's f32 order.
#[derive(Clone, Copy, Debug)]
pub struct Marginal {
    pub alpha: f32,
    pub std: f32,
    pub lambda: f32,
}

pub fn marginal(p: Param, sigma: f32) -> Marginal {
    match p {
        Param::ComfyVp => {
            let log_alpha = 0.5 * (1.0 / ((sigma * sigma) + 1.0)).ln();
            // std and λ share `1 − exp(2·log α)`; it cancels badly for small σ,
            // and ComfyUI lives with that, so we do too.
            let one_minus = 1.0 - (2.0 * log_alpha).exp();
            Marginal {
                alpha: log_alpha.exp(),
                std: one_minus.sqrt(),
                lambda: log_alpha - 0.5 * one_minus.ln(),
            }
        }
        Param::Flow => {
            let alpha = 1.0 - sigma;
            // λ(1) = −∞ and λ(0) = +∞; the step formulas below take their
            // limits through IEEE arithmetic (expm1(−∞) = −1, x/∞ = 0).
            Marginal {
                alpha,
                std: sigma,
                lambda: alpha.ln() - sigma.ln(),
            }
        }
    }
}

/// The multipliers of one step from σ_s0 (newest history entry) to σ_t.
#[derive(Clone, Debug)]
pub struct Step {
    /// std_t / std_s0, the weight of x.
    pub ratio: f32,
    /// α_t·expm1(−h), the weight of the newest data prediction.
    pub a_phi: f32,
    /// α_t·B(h), the weight of the higher-order residual.
    pub a_b: f32,
    /// r_k = (λ_{s_k} − λ_{s0})/h for the older history entries, newest first.
    pub rks: Vec<f32>,
    /// Predictor weights for the D1 terms (empty for order 1).
    pub rhos_p: Vec<f32>,
    /// Corrector weights: D1 terms, then the new model output (last).
    pub rhos_c: Vec<f32>,
}

/// Coefficients of an order-`order` step from `s0` to `t`; `older` holds the
/// sigmas of the history entries before the newest, newest first (at least
/// `order − 1` of them).
pub fn step(p: Param, bh: Bh, s0: f32, t: f32, older: &[f32], order: usize) -> Result<Step> {
    if order == 0 || older.len() + 1 < order {
        candle_core::bail!(
            "UniPC: order {order} needs {} earlier predictions, have {}",
            order.saturating_sub(1),
            older.len()
        );
    }
    let ms0 = marginal(p, s0);
    let mt = marginal(p, t);
    let h = mt.lambda - ms0.lambda;
    let rks: Vec<f32> = older[..order - 1]
        .iter()
        .map(|&s| (marginal(p, s).lambda - ms0.lambda) / h)
        .collect();
    // predict_x0: the exponential integrator runs in −h.
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match bh {
        Bh::Bh1 => hh,
        Bh::Bh2 => hh.exp_m1(),
    };
    let (rhos_p, rhos_c) = rhos(bh, hh, &rks, order)?;
    Ok(Step {
        ratio: mt.std / ms0.std,
        a_phi: mt.alpha * h_phi_1,
        a_b: mt.alpha * b_h,
        rks,
        rhos_p,
        rhos_c,
    })
}

/// ρ weights. Orders 1 and 2 use the paper's fixed 0.5 (corrector order 1,
/// predictor order 2); higher orders solve `R ρ = b` with
/// `R[i][k] = r_k^i` (r = rks ++ [1]) and
/// `b_i = hφ_i(hh)·i!/B(h)`, `hφ_1 = expm1(hh)/hh − 1`, `hφ_{i+1} = hφ_i/hh − 1/(i+1)!`.
fn rhos(bh: Bh, hh: f32, rks: &[f32], order: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let predictor = match order {
        1 => vec![],
        2 => vec![0.5],
        _ => solve(
            &power_rows(rks, order - 1),
            &b_vector(bh, hh, order)[..order - 1],
        )?,
    };
    let corrector = if order == 1 {
        vec![0.5]
    } else {
        let mut r: Vec<f32> = rks.to_vec();
        r.push(1.0);
        solve(&power_rows(&r, order), &b_vector(bh, hh, order))?
    };
    Ok((predictor, corrector))
}

/// `b` in f64: in f32 each `hφ/hh − 1/k!` loses about log10(1/|hh|) digits,
/// which at the small steps of high-shift flow schedules leaves the order-3
/// weights with no correct digit (ComfyUI moved this to f64 for that reason).
/// The ComfyUI commit the fixtures come from still used f32; with its step
/// sizes the two agree with the traces to the same ~1e-6.
fn b_vector(bh: Bh, hh: f32, order: usize) -> Vec<f64> {
    let hh = hh as f64;
    let b_h = match bh {
        Bh::Bh1 => hh,
        Bh::Bh2 => hh.exp_m1(),
    };
    let mut h_phi_k = hh.exp_m1() / hh - 1.0;
    let mut factorial = 1.0;
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    b
}

/// The n×n matrix `R[i][k] = r_k^i` (f32, as `torch.pow(rks, i)`), as f64 rows.
fn power_rows(r: &[f32], n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| {
            r[..n]
                .iter()
                .map(|&v| {
                    let mut p = 1f32;
                    for _ in 0..i {
                        p *= v;
                    }
                    p as f64
                })
                .collect()
        })
        .collect()
}

/// Solves `a·x = b` (n ≤ 3 here) by LU with partial pivoting, the way LAPACK's
/// `gesv` does: only the trailing block is updated, so an infinite pivot (a
/// history entry at λ = −∞, i.e. flow σ = 1) yields a zero weight, not NaN.
pub fn solve(a: &[Vec<f64>], b: &[f64]) -> Result<Vec<f32>> {
    let n = b.len();
    let mut a: Vec<Vec<f64>> = a.iter().map(|r| r[..n].to_vec()).collect();
    let mut b = b.to_vec();
    for k in 0..n {
        let p = (k..n)
            .max_by(|&i, &j| a[i][k].abs().total_cmp(&a[j][k].abs()))
            .unwrap_or(k);
        if a[p][k] == 0.0 || a[p][k].is_nan() {
            candle_core::bail!(
                "UniPC: singular order-{n} system (repeated sigmas in the history?)"
            );
        }
        a.swap(k, p);
        b.swap(k, p);
        let pivot = a[k].clone();
        for i in k + 1..n {
            let l = a[i][k] / pivot[k];
            for (aij, akj) in a[i][k + 1..].iter_mut().zip(&pivot[k + 1..]) {
                *aij -= l * akj;
            }
            b[i] -= l * b[k];
        }
    }
    let mut x = vec![0f64; n];
    for k in (0..n).rev() {
        let mut acc = b[k];
        for j in k + 1..n {
            acc -= a[k][j] * x[j];
        }
        x[k] = acc / a[k][k];
    }
    if x.iter().any(|v| v.is_nan()) {
        candle_core::bail!("UniPC: the order-{n} weights are not finite");
    }
    Ok(x.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_matches_a_known_system() {
        let a = vec![
            vec![2.0, 1.0, 1.0],
            vec![1.0, 3.0, 2.0],
            vec![1.0, 0.0, 0.0],
        ];
        let x = solve(&a, &[4.0, 5.0, 6.0]).unwrap();
        // x = (6, 15, −23)
        assert_eq!(x, vec![6.0, 15.0, -23.0]);
    }

    #[test]
    fn infinite_pivot_gives_zero_weight() {
        let a = vec![vec![1.0, 1.0], vec![f64::NEG_INFINITY, 1.0]];
        let x = solve(&a, &[0.7, 0.3]).unwrap();
        assert_eq!(x[0], 0.0);
        assert_eq!(x[1], 0.7);
    }

    #[test]
    fn singular_system_is_an_error() {
        let a = vec![vec![1.0, 1.0], vec![1.0, 1.0]];
        assert!(solve(&a, &[1.0, 2.0]).is_err());
    }

    #[test]
    fn b_is_the_taylor_limit_for_small_steps() {
        // hφ_1(hh)/B(hh) → 1/2 and 2!·hφ_2/B → 1/3 as hh → 0 (bh1).
        let b = b_vector(Bh::Bh1, -1e-4, 3);
        assert!((b[0] - 0.5).abs() < 1e-4, "{b:?}");
        assert!((b[1] - 1.0 / 3.0).abs() < 1e-4, "{b:?}");
    }
}
