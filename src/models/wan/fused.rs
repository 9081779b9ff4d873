//! Two more fused CPU passes of the DiT block, each replacing a chain of
//! candle ops (and the casts and copies between them) by one parallel pass
//! over the rows, with the same f32 arithmetic in the same order:
//!
//! - [`gated_add`]: the gated residual `x + y * gate`, in f32, stored in
//!   x's dtype (was: two widening casts, a multiply, an add, a narrowing
//!   cast);
//! - [`qk_heads`]: RMSNorm over the whole inner dim, the head split, RoPE on
//!   each head's channel pairs and the cast back to the activation dtype
//!   (was: cast, `rms_norm`, a transposing copy, `rope_i`, cast).
//!
//! Both return `None` where the device, dtypes or shapes do not fit; the
//! caller then takes candle's ops.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::fast::{from_bf16 as widen, narrow_slice as narrow_row};
use super::rope::Rope;

/// Rows of `t` (f32-castable, last dim `dim`) as an f32 vector with its
/// row count, when it broadcasts over [B, S, dim] as [B, 1, dim] or
/// [B, S, dim]; `None` otherwise.
fn rows_f32(t: &Tensor, b: usize, s: usize, dim: usize) -> Result<Option<(Vec<f32>, usize)>> {
    let rows = t.elem_count() / dim.max(1);
    if !t.elem_count().is_multiple_of(dim.max(1))
        || !(rows == b || rows == b * s)
        || t.dim(t.rank() - 1)? != dim
    {
        return Ok(None);
    }
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Some((v, rows)))
}

/// `x + y * gate` (or `x + y`) for x, y [B, S, dim] of one dtype (f32 or
/// bf16), gate f32 broadcasting as [B, 1, dim] or [B, S, dim]; computed in
/// f32 and returned in x's dtype.
pub fn gated_add(x: &Tensor, y: &Tensor, gate: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Ok((b, s, dim)) = x.dims3() else {
        return Ok(None);
    };
    if !x.device().is_cpu() || y.dims() != x.dims() || y.dtype() != x.dtype() || dim == 0 {
        return Ok(None);
    }
    let g = match gate {
        Some(g) => match rows_f32(g, b, s, dim)? {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let gate_row = |r: usize| -> Option<&[f32]> {
        g.as_ref().map(|(v, rows)| {
            let i = if *rows == b * s { r } else { r / s };
            &v[i * dim..(i + 1) * dim]
        })
    };
    let y = y.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ys, yl) = y.storage_and_layout();
    let (Some((x0, x1)), Some((y0, y1))) = (xl.contiguous_offsets(), yl.contiguous_offsets())
    else {
        return Ok(None);
    };
    let out = match (&*xs, &*ys) {
        (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(yv))) => {
            let (xv, yv) = (&xv[x0..x1], &yv[y0..y1]);
            let mut out = vec![0f32; xv.len()];
            out.par_chunks_mut(dim).enumerate().for_each(|(r, o)| {
                let (xr, yr) = (&xv[r * dim..][..dim], &yv[r * dim..][..dim]);
                match gate_row(r) {
                    Some(gr) => {
                        for i in 0..dim {
                            o[i] = xr[i] + yr[i] * gr[i];
                        }
                    }
                    None => {
                        for i in 0..dim {
                            o[i] = xr[i] + yr[i];
                        }
                    }
                }
            });
            Tensor::from_vec(out, (b, s, dim), x.device())?
        }
        (Storage::Cpu(CpuStorage::BF16(xv)), Storage::Cpu(CpuStorage::BF16(yv))) => {
            let (xv, yv) = (&xv[x0..x1], &yv[y0..y1]);
            let mut out = super::fast::bf16_zeros(xv.len());
            out.par_chunks_mut(dim).enumerate().for_each_init(
                || vec![0f32; dim],
                |row, (r, o)| {
                    let (xr, yr) = (&xv[r * dim..][..dim], &yv[r * dim..][..dim]);
                    match gate_row(r) {
                        Some(gr) => {
                            for i in 0..dim {
                                row[i] = widen(xr[i]) + widen(yr[i]) * gr[i];
                            }
                        }
                        None => {
                            for i in 0..dim {
                                row[i] = widen(xr[i]) + widen(yr[i]);
                            }
                        }
                    }
                    narrow_row(row, o);
                },
            );
            Tensor::from_vec(out, (b, s, dim), x.device())?
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

struct OutPtr<T>(*mut T);
// SAFETY: every row writes its own disjoint set of output elements.
unsafe impl<T> Sync for OutPtr<T> {}
unsafe impl<T> Send for OutPtr<T> {}

impl<T> OutPtr<T> {
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// One row: RMSNorm (f32 sum of squares, times `w`), then each head of
/// `hd` values rotated by the row's (cos, sin) pairs when given. Dispatches
/// to an AVX-512 build of the same steps where the CPU has it.
fn norm_rope_row(x: &mut [f32], w: &[f32], eps: f32, rot: Option<(&[f32], &[f32])>, hd: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected at run time.
        return unsafe { norm_rope_row_avx512(x, w, eps, rot, hd) };
    }
    norm_rope_row_generic(x, w, eps, rot, hd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_rope_row_avx512(
    x: &mut [f32],
    w: &[f32],
    eps: f32,
    rot: Option<(&[f32], &[f32])>,
    hd: usize,
) {
    let Some((c, sn)) = rot.filter(|_| hd.is_multiple_of(16)) else {
        return norm_rope_row_generic(x, w, eps, rot, hd);
    };
    norm_rope_row_generic(x, w, eps, None, hd);
    for h in x.chunks_exact_mut(hd) {
        // SAFETY: avx512f is enabled on this function; each head holds
        // hd = 16j values and (c, sn) hd / 2 each.
        unsafe { rope_head_avx512(h, c, sn) };
    }
}

/// One head's pairs (a, b) = (2i, 2i+1) rotated by (c[i], sn[i]), 8 pairs
/// per register: (a·c − b·sn, b·c + a·sn) is `x · (c, c)` minus (even
/// lanes) or plus (odd lanes) `swap(x) · (sn, sn)`, one `fmaddsub` (the
/// compiler did not vectorise the pairwise loop).
///
/// # Safety
/// AVX-512F must be available; `h.len()` a multiple of 16 and `c`, `sn`
/// at least `h.len() / 2` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rope_head_avx512(h: &mut [f32], c: &[f32], sn: &[f32]) {
    use std::arch::x86_64::*;
    debug_assert!(h.len().is_multiple_of(16) && c.len() * 2 >= h.len() && sn.len() * 2 >= h.len());
    // Lane 2i and 2i + 1 both take value i of the 8 loaded.
    let dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    for (j, p) in h.chunks_exact_mut(16).enumerate() {
        // SAFETY: 16 values of the head, 8 of each table (the caller's
        // lengths).
        unsafe {
            let x = _mm512_loadu_ps(p.as_ptr());
            let cd = _mm512_permutexvar_ps(
                dup,
                _mm512_castps256_ps512(_mm256_loadu_ps(c.as_ptr().add(8 * j))),
            );
            let sd = _mm512_permutexvar_ps(
                dup,
                _mm512_castps256_ps512(_mm256_loadu_ps(sn.as_ptr().add(8 * j))),
            );
            // (b, a) per pair.
            let swapped = _mm512_permute_ps::<0b10_11_00_01>(x);
            let y = _mm512_fmaddsub_ps(x, cd, _mm512_mul_ps(swapped, sd));
            _mm512_storeu_ps(p.as_mut_ptr(), y);
        }
    }
}

#[inline(always)]
fn norm_rope_row_generic(
    x: &mut [f32],
    w: &[f32],
    eps: f32,
    rot: Option<(&[f32], &[f32])>,
    hd: usize,
) {
    // 16 partial sums, so the reduction vectorises.
    let mut lanes = [0f32; 16];
    for c in x.chunks(16) {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let sum2: f32 = lanes.iter().sum();
    let inv = 1.0 / (sum2 / x.len() as f32 + eps).sqrt();
    for (v, w) in x.iter_mut().zip(w) {
        *v = *v * inv * w;
    }
    if let Some((c, sn)) = rot {
        for h in x.chunks_exact_mut(hd) {
            for ((p, &c), &sn) in h.chunks_exact_mut(2).zip(c).zip(sn) {
                let (a, b) = (p[0], p[1]);
                p[0] = a * c - b * sn;
                p[1] = a * sn + b * c;
            }
        }
    }
}

/// RMSNorm of each row of t [B, S, dim] (f32 sums, `weight` f32 [dim]),
/// split into `heads` heads, rotated by `rope` (pairs (2i, 2i+1), table
/// [S, head_dim / 2]) when given, returned as [B, heads, S, head_dim] in
/// t's dtype (f32 or bf16).
pub fn qk_heads(
    t: &Tensor,
    weight: &Tensor,
    eps: f64,
    heads: usize,
    rope: Option<&Rope>,
) -> Result<Option<Tensor>> {
    let Ok((b, s, dim)) = t.dims3() else {
        return Ok(None);
    };
    if !t.device().is_cpu() || heads == 0 || dim % heads != 0 || weight.elem_count() != dim {
        return Ok(None);
    }
    let hd = dim / heads;
    let w = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let table = match rope {
        Some(r) => {
            if r.cos.dims() != [s, hd / 2] || !hd.is_multiple_of(2) {
                return Ok(None);
            }
            let f = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Some((f(&r.cos)?, f(&r.sin)?))
        }
        None => None,
    };
    let eps = eps as f32;
    // One row (b, s) in f32 -> normalised, rotated, written per head.
    let row = |r: usize, x: &mut [f32], write: &dyn Fn(usize, &[f32])| {
        let si = r % s;
        let rot = table
            .as_ref()
            .map(|(cos, sin)| (&cos[si * hd / 2..][..hd / 2], &sin[si * hd / 2..][..hd / 2]));
        norm_rope_row(x, &w, eps, rot, hd);
        let bi = r / s;
        for h in 0..heads {
            write(((bi * heads + h) * s + si) * hd, &x[h * hd..(h + 1) * hd]);
        }
    };
    let t = t.contiguous()?;
    let (ts, tl) = t.storage_and_layout();
    let Some((o0, o1)) = tl.contiguous_offsets() else {
        return Ok(None);
    };
    let shape = (b, heads, s, hd);
    let out = match &*ts {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let v = &v[o0..o1];
            let mut out = vec![0f32; b * s * dim];
            let p = OutPtr(out.as_mut_ptr());
            (0..b * s).into_par_iter().for_each(|r| {
                let mut x = v[r * dim..(r + 1) * dim].to_vec();
                row(r, &mut x, &|at, src| {
                    // SAFETY: (b, h, s) segments are disjoint across rows
                    // and `at + hd` is within `out`.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.at(at), src.len()) }
                });
            });
            Tensor::from_vec(out, shape, t.device())?
        }
        Storage::Cpu(CpuStorage::BF16(v)) => {
            let v = &v[o0..o1];
            let mut out = super::fast::bf16_zeros(b * s * dim);
            let p = OutPtr(out.as_mut_ptr());
            (0..b * s).into_par_iter().for_each(|r| {
                let mut x: Vec<f32> = v[r * dim..(r + 1) * dim]
                    .iter()
                    .map(|&e| widen(e))
                    .collect();
                row(r, &mut x, &|at, src| {
                    // SAFETY: as above.
                    let dst = unsafe { std::slice::from_raw_parts_mut(p.at(at), src.len()) };
                    narrow_row(src, dst);
                });
            });
            Tensor::from_vec(out, shape, t.device())?
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let f32s = |t: &Tensor| {
            let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            t.to_vec1::<f32>().unwrap()
        };
        let (a, b) = (f32s(a), f32s(b));
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0f32, f32::max)
    }

    #[test]
    fn gated_add_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 37, 64), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (2, 37, 64), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 1, 64), &dev).unwrap();
        for dt in [DType::F32, DType::BF16] {
            let (x, y) = (x.to_dtype(dt).unwrap(), y.to_dtype(dt).unwrap());
            let want = |g: Option<&Tensor>| {
                let y = y.to_dtype(DType::F32).unwrap();
                let y = match g {
                    Some(g) => y.broadcast_mul(g).unwrap(),
                    None => y,
                };
                (x.to_dtype(DType::F32).unwrap() + y)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap()
            };
            let a = gated_add(&x, &y, Some(&g)).unwrap().unwrap();
            assert_eq!(max_rel(&a, &want(Some(&g))), 0.0, "{dt:?} gated");
            let a = gated_add(&x, &y, None).unwrap().unwrap();
            assert_eq!(max_rel(&a, &want(None)), 0.0, "{dt:?} plain");
        }
    }

    #[test]
    fn qk_heads_matches_candle() {
        let dev = Device::Cpu;
        let (b, s, heads, hd) = (2, 11, 4, 16);
        let t = Tensor::randn(0f32, 2.0, (b, s, heads * hd), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, heads * hd, &dev).unwrap();
        let ang = Tensor::randn(0f32, 1.0, (s, hd / 2), &dev).unwrap();
        let rope = Rope {
            cos: ang.cos().unwrap(),
            sin: ang.sin().unwrap(),
        };
        for dt in [DType::F32, DType::BF16] {
            let t = t.to_dtype(dt).unwrap();
            let n = candle_nn::ops::rms_norm(&t.to_dtype(DType::F32).unwrap(), &w, 1e-6).unwrap();
            let n = n
                .reshape((b, s, heads, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let r = candle_nn::rotary_emb::rope_i(&n, &rope.cos, &rope.sin).unwrap();
            let tol = if dt == DType::F32 { 1e-5 } else { 8e-3 };
            let a = qk_heads(&t, &w, 1e-6, heads, Some(&rope)).unwrap().unwrap();
            assert!(max_rel(&a, &r.to_dtype(dt).unwrap()) <= tol, "{dt:?} rope");
            let a = qk_heads(&t, &w, 1e-6, heads, None).unwrap().unwrap();
            assert!(
                max_rel(&a, &n.to_dtype(dt).unwrap()) <= tol,
                "{dt:?} no rope"
            );
        }
    }
}
