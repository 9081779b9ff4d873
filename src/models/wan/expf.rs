//! `exp` for the CPU kernels: the scalar Cephes-style polynomial
//! ([`exp_poly`]), its AVX-512 form on 16 lanes ([`exp512`]), and the
//! softmax step built on them ([`exp_sub_sum`]). The attention's softmax,
//! the GELU of the feed-forward and the VAE's SiLU all use these, so they
//! live below those kernels rather than inside one of them.

/// x <- exp(x - m) in place; returns the sum. Vectorised where the CPU has
/// AVX-512 or AVX2 (a Cephes-style polynomial, ~1 ulp), else scalar `exp`.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { exp_sub_sum_avx512(x, m) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return unsafe { exp_sub_sum_avx2(x, m) };
        }
    }
    exp_sub_sum_poly(x, m)
}

/// The AVX-512 form, written with intrinsics: the auto-vectorised
/// polynomial left the round-to-integer and the saturating float-to-int
/// cast as scalar sequences and was the largest item of the bf16 forward's
/// profile (18% of its samples).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sub_sum_avx512(x: &mut [f32], m: f32) -> f32 {
    use std::arch::x86_64::*;
    let mv = _mm512_set1_ps(m);
    let mut acc = _mm512_setzero_ps();
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 16 f32; unaligned loads and stores.
        let e = unsafe { exp512(_mm512_sub_ps(_mm512_loadu_ps(p), mv)) };
        unsafe { _mm512_storeu_ps(p, e) };
        acc = _mm512_add_ps(acc, e);
    }
    let mut total = _mm512_reduce_add_ps(acc);
    for v in chunks.into_remainder() {
        let e = exp_poly(*v - m);
        *v = e;
        total += e;
    }
    total
}

/// [`exp_poly`] on 16 lanes: the same reduction and polynomial, with the
/// integer part rounded to nearest-even and applied by `vscalefps` (exact
/// for the clamped range, like the exponent-bits trick).
///
/// # Safety
/// The CPU must have AVX-512F (callers check with
/// `is_x86_feature_detected!` or are themselves compiled for it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    let x = _mm512_max_ps(x, c(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, c(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, c(0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, c(2.121_944_4e-4), r);
    let mut p = c(1.987_569_1e-4);
    p = _mm512_fmadd_ps(p, r, c(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, c(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, c(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, c(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, c(0.5));
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), c(1.0));
    _mm512_scalef_ps(y, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(x: &mut [f32], m: f32) -> f32 {
    exp_sub_sum_poly(x, m)
}

/// The polynomial exp written so the compiler vectorises it.
#[inline(always)]
fn exp_sub_sum_poly(x: &mut [f32], m: f32) -> f32 {
    let mut total = [0f32; 16];
    for chunk in x.chunks_mut(16) {
        for (i, v) in chunk.iter_mut().enumerate() {
            let e = exp_poly(*v - m);
            *v = e;
            total[i] += e;
        }
    }
    total.iter().sum()
}

/// exp(x) (Cephes expf: range reduction by ln 2, degree-5 polynomial, 2^n
/// through the exponent bits), ~1 ulp, for x clamped to [-87, 88]. The
/// softmax, GELU and the VAE's SiLU share it.
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    y * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_sum_matches_the_scalar_one() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 on this CPU: only the scalar form runs here");
            return;
        }
        // 1000 values (62 full vectors and a tail of 8), from 0 down to -100.
        let x: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.1).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        // SAFETY: the feature was detected above.
        let sa = unsafe { exp_sub_sum_avx512(&mut a, 0.5) };
        let sb = exp_sub_sum_poly(&mut b, 0.5);
        for ((a, b), x) in a.iter().zip(&b).zip(&x) {
            assert!(
                (a - b).abs() <= 4e-7 * b.max(1e-30) + 1e-38,
                "exp({x} - 0.5): {a} vs {b}"
            );
        }
        assert!((sa - sb).abs() <= 1e-6 * sb, "{sa} vs {sb}");
    }

    #[test]
    fn exp_poly_is_close() {
        for i in 0..2000 {
            let x = -(i as f32) * 0.05;
            let (a, b) = (exp_poly(x), x.exp());
            assert!((a - b).abs() <= 2e-7 * b.max(1e-30) + 1e-38, "{x}: {a} {b}");
        }
    }

    #[test]
    fn exp_poly_is_close_on_both_sides() {
        // The range the GELU and SiLU feed it (positive arguments too).
        for i in -2000..2000 {
            let x = i as f32 * 0.04;
            let (a, b) = (exp_poly(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "{x}: {a} {b}");
        }
    }
}
