//! Fused, tiled attention on the CPU (flash-attention style): for each head
//! and tile of query rows, the keys are visited tile by tile with an online
//! softmax (running row maximum and sum), so no score matrix is ever
//! materialised. Work items (batch x head x query tile) run in parallel on
//! rayon's pool; each holds a few tiles of f32 (tens of KiB), whatever the
//! sequence length. The tile products go through the `gemm` crate (the one
//! candle's CPU matmul uses), single-threaded inside an item.
//!
//! `super::attention::attention_chunked` stays as the reference (and the
//! path on other devices); the tests compare the two.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Query rows per work item.
pub const Q_TILE: usize = 64;
/// Keys per online-softmax step.
pub const K_TILE: usize = 256;

/// Bytes of working memory the kernel holds at once beyond its output:
/// one work item's tiles (scores [rows, K_TILE], accumulator [rows, d],
/// row maxima and sums) per pool thread busy, for `items` work items.
pub fn working_bytes(batch_heads: usize, q_tokens: usize, head_dim: usize) -> usize {
    let rows = Q_TILE.min(q_tokens);
    let items = batch_heads * q_tokens.div_ceil(Q_TILE);
    let busy = rayon::current_num_threads().min(items);
    busy * 4 * (rows * K_TILE + rows * head_dim + 2 * rows)
}

struct OutPtr(*mut f32);
// SAFETY: every work item writes a disjoint set of output rows.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

impl OutPtr {
    /// The output element `i` (the method keeps closures capturing the
    /// whole wrapper, which is `Sync`, rather than its raw pointer field).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// softmax(q k^T / sqrt(d)) v per head; q [B, H, Sq, d], k/v [B, H, Sk, d].
/// Returns [B, Sq, H * d] in q's dtype; computes in f32.
pub fn attention_fused(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    fused_with(q, k, v, Q_TILE, K_TILE)
}

fn fused_with(q: &Tensor, k: &Tensor, v: &Tensor, q_tile: usize, k_tile: usize) -> Result<Tensor> {
    let dtype = q.dtype();
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    let f32c = |t: &Tensor| -> Result<Tensor> { super::fast::cast(t, DType::F32)?.contiguous() };
    // The f32 views of q, k and v (copies for bf16) are dropped before the
    // output is cast back to q's dtype.
    let out = {
        let (q, k, v) = (f32c(q)?, f32c(k)?, f32c(v)?);
        let (qs, _) = q.storage_and_layout();
        let (ks, _) = k.storage_and_layout();
        let (vs, _) = v.storage_and_layout();
        let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*qs, &*ks, &*vs) else {
            candle_core::bail!("attention_fused: CPU tensors only")
        };
        let (qs, ks, vs) = (
            &qs.as_slice::<f32>()?[q.layout().start_offset()..],
            &ks.as_slice::<f32>()?[k.layout().start_offset()..],
            &vs.as_slice::<f32>()?[v.layout().start_offset()..],
        );
        let mut out = vec![0f32; b * sq * h * d];
        let ptr = OutPtr(out.as_mut_ptr());
        let tiles = sq.div_ceil(q_tile);
        let scale = 1.0 / (d as f32).sqrt();
        (0..b * h * tiles).into_par_iter().for_each(|item| {
            let (bh, tile) = (item / tiles, item % tiles);
            let r0 = tile * q_tile;
            let rows = q_tile.min(sq - r0);
            let qt = &qs[(bh * sq + r0) * d..(bh * sq + r0 + rows) * d];
            let kh = &ks[bh * sk * d..(bh + 1) * sk * d];
            let vh = &vs[bh * sk * d..(bh + 1) * sk * d];
            let o = tile_attention(qt, kh, vh, [rows, sk, d, k_tile], scale);
            let (bi, hi) = (bh / h, bh % h);
            for r in 0..rows {
                let dst = ((bi * sq + r0 + r) * h + hi) * d;
                // SAFETY: (batch, row, head) triples are disjoint across
                // items and `dst + d` is within `out`.
                unsafe {
                    std::ptr::copy_nonoverlapping(o[r * d..].as_ptr(), ptr.at(dst), d);
                }
            }
        });
        out
    };
    super::fast::cast(&Tensor::from_vec(out, (b, sq, h * d), q.device())?, dtype)
}

/// One query tile against all keys of its head: q [rows, d], k/v [sk, d].
/// Returns the normalised output [rows, d].
fn tile_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [rows, sk, d, k_tile]: [usize; 4],
    scale: f32,
) -> Vec<f32> {
    let mut s = vec![0f32; rows * k_tile];
    let mut acc = vec![0f32; rows * d];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut k0 = 0;
    while k0 < sk {
        let n = k_tile.min(sk - k0);
        // s [rows, n] = scale * q [rows, d] . k[k0..k0+n]^T
        // SAFETY: the strides describe in-bounds row-major views of the
        // slices (q [rows, d], k tile [n, d] read transposed, s [rows, n]).
        unsafe {
            gemm::gemm(
                rows,
                n,
                d,
                s.as_mut_ptr(),
                1,
                n as isize,
                false,
                q.as_ptr(),
                1,
                d as isize,
                k[k0 * d..].as_ptr(),
                d as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for r in 0..rows {
            let row = &mut s[r * n..(r + 1) * n];
            let m_new = row.iter().fold(max[r], |m, &x| m.max(x));
            let corr = (max[r] - m_new).exp();
            max[r] = m_new;
            let rs = exp_sub_sum(row, m_new);
            sum[r] = sum[r] * corr + rs;
            if corr != 1.0 {
                acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= corr);
            }
        }
        // acc [rows, d] += p [rows, n] . v[k0..k0+n] [n, d]
        // SAFETY: as above (p [rows, n], v tile [n, d], acc [rows, d]).
        unsafe {
            gemm::gemm(
                rows,
                d,
                n,
                acc.as_mut_ptr(),
                1,
                d as isize,
                true,
                s.as_ptr(),
                1,
                n as isize,
                v[k0 * d..].as_ptr(),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        k0 += n;
    }
    for r in 0..rows {
        let inv = 1.0 / sum[r];
        acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= inv);
    }
    acc
}

/// x <- exp(x - m) in place; returns the sum. Vectorised where the CPU has
/// AVX-512 or AVX2 (a Cephes-style polynomial, ~1 ulp), else scalar `exp`.
pub(super) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
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
    use candle_core::Device;

    #[test]
    fn matches_the_chunked_reference() {
        let dev = Device::Cpu;
        for (sq, sk) in [(7, 5), (300, 300), (130, 520)] {
            let q = Tensor::randn(0f32, 1.0, (1, 2, sq, 16), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, 2, sk, 16), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, 2, sk, 16), &dev).unwrap();
            let a = attention_fused(&q, &k, &v).unwrap();
            let b = super::super::attention::attention_chunked(&q, &k, &v, 1 << 30).unwrap();
            let err = (a - &b)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let norm = b
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                (err / norm).sqrt() < 1e-6,
                "{sq}x{sk}: {}",
                (err / norm).sqrt()
            );
        }
    }

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
}
