//! Element-wise CPU kernels the profile of a DiT forward found slow in
//! candle 0.11: bf16 <-> f32 casts (single-threaded scalar there) and the
//! tanh GELU (libm `tanhf` per element). Here they run on rayon's pool in
//! chunks the compiler vectorises, with results bit-identical to candle's
//! casts (round to nearest even, as `half` does) and the GELU within a few
//! f32 ulps of it. Other devices and layouts fall back to candle.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `x.to_dtype(dtype)`, in parallel for contiguous CPU f32 <-> bf16.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype || !x.device().is_cpu() {
        return x.to_dtype(dtype);
    }
    let out = {
        let (s, l) = x.storage_and_layout();
        let Some((a, b)) = l.contiguous_offsets() else {
            drop(s);
            return x.to_dtype(dtype);
        };
        match (&*s, dtype) {
            (Storage::Cpu(CpuStorage::BF16(v)), DType::F32) => {
                let src = &v[a..b];
                let mut out = vec![0f32; src.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, i)| {
                        for (o, i) in o.iter_mut().zip(i) {
                            *o = from_bf16(*i);
                        }
                    });
                Some(Tensor::from_vec(out, x.shape().clone(), x.device()))
            }
            (Storage::Cpu(CpuStorage::F32(v)), DType::BF16) => {
                let src = &v[a..b];
                let mut out = bf16_zeros(src.len());
                out.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, i)| narrow_slice(i, o));
                Some(Tensor::from_vec(out, x.shape().clone(), x.device()))
            }
            _ => None,
        }
    };
    match out {
        Some(t) => t,
        None => x.to_dtype(dtype),
    }
}

/// `n` zero bf16 values from the allocator's zeroed memory (`calloc`:
/// fresh pages, no fill pass), as `vec![0f32; n]` gets for f32;
/// `vec![bf16::ZERO; n]` writes every element first.
pub(crate) fn bf16_zeros(n: usize) -> Vec<bf16> {
    let v = std::mem::ManuallyDrop::new(vec![0u16; n]);
    let (ptr, len, cap) = (v.as_ptr() as *mut bf16, v.len(), v.capacity());
    // SAFETY: bf16 is a transparent u16 (same size and alignment), every
    // bit pattern of which is a bf16; the allocation moves over whole.
    unsafe { Vec::from_raw_parts(ptr, len, cap) }
}

/// bf16 -> f32 (exact: the bits shifted into place).
#[inline(always)]
pub fn from_bf16(v: bf16) -> f32 {
    f32::from_bits((v.to_bits() as u32) << 16)
}

/// f32 -> bf16 rounding to nearest even (quiet NaN kept), as `half` does.
#[inline(always)]
pub(super) fn to_bf16(x: f32) -> bf16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return bf16::from_bits(((bits >> 16) | 0x0040) as u16);
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    bf16::from_bits((bits.wrapping_add(round) >> 16) as u16)
}

/// The lane mask of the first `valid` of 16 lanes (all 16 from 16 on):
/// the tails of the AVX-512 loops.
pub(crate) fn mask16(valid: usize) -> u16 {
    if valid >= 16 {
        u16::MAX
    } else {
        ((1u32 << valid) - 1) as u16
    }
}

/// The operands of `x · wᵀ + b` as our CPU linears take them (`super::amx`,
/// `super::sgemm`): x and w contiguous, M rows of K, N outputs, the bias in
/// f32 and the output shape [.., N].
pub(crate) struct LinearOperands {
    pub x: Tensor,
    pub w: Tensor,
    pub mkn: (usize, usize, usize),
    pub bias: Option<Vec<f32>>,
    pub shape: Vec<usize>,
}

impl LinearOperands {
    /// `None` where `x` [.., K] and `w` [N, K] make no product (a rank other
    /// than 2 for w, K that differs, an empty side): the caller's next path
    /// says why. A bias of another length than N is an error naming `what`.
    pub(crate) fn new(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        what: &str,
    ) -> Result<Option<Self>> {
        if w.rank() != 2 {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        let dims = x.dims();
        if dims.last() != Some(&k) || k == 0 || n == 0 || x.elem_count() == 0 {
            return Ok(None);
        }
        let bias = match b {
            Some(b) => Some(cast(b, DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        if let Some(b) = &bias {
            if b.len() != n {
                candle_core::bail!("{what}: a bias of {} values for {n} outputs", b.len())
            }
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        Ok(Some(Self {
            x: x.contiguous()?,
            w: w.contiguous()?,
            mkn: (x.elem_count() / k, k, n),
            bias,
            shape,
        }))
    }
}

/// The contiguous CPU storage of a tensor as a slice of `T`; `None` for
/// another dtype, device or a strided layout.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a Storage,
    l: &candle_core::Layout,
) -> Option<&'a [T]> {
    let (a, b) = l.contiguous_offsets()?;
    match s {
        Storage::Cpu(c) => c.as_slice::<T>().ok().map(|v| &v[a..b]),
        _ => None,
    }
}

/// `dst[i] = to_bf16(src[i])`, bit for bit (nearest-even, quiet NaN
/// kept), 16 lanes at a time on AVX-512 (F, BW, VL): the per-element loop
/// compiled to scalar code in the passes that write bf16.
pub(crate) fn narrow_slice(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: AVX-512 BW and VL (hence F) were just detected; the
        // lengths agree.
        return unsafe { narrow_avx512(src, dst) };
    }
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = to_bf16(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn narrow_avx512(src: &[f32], dst: &mut [bf16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        // SAFETY: lanes i .. i + 16 masked to both slices.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, src.as_ptr().add(i));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            let high = _mm512_srli_epi32::<16>(_mm512_castps_si512(x));
            let quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
            let bits = _mm512_mask_mov_epi32(bf16_bits_rne(x), nan, quiet);
            _mm256_mask_storeu_epi16(
                dst.as_mut_ptr().add(i).cast(),
                m,
                _mm512_cvtepi32_epi16(bits),
            );
        }
        i += 16;
    }
}

/// The bf16 bits of 16 finite f32 lanes, rounded to nearest-even as `half`
/// does, each in the low half of a 32-bit lane (NaN lanes are the caller's).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn bf16_bits_rne(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let b = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let biased = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb);
    _mm512_srli_epi32::<16>(biased)
}

/// The tanh GELU of `x` (f32 or bf16, computed in f32 and returned in x's
/// dtype, rounded once as candle's `gelu` does).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.gelu();
    }
    let out = {
        let (s, l) = x.storage_and_layout();
        match (&*s, l.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                // Copied and computed chunk by chunk on the pool: one pass,
                // no zero-fill and no serial copy first.
                let src = &v[a..b];
                let mut out: Vec<f32> = Vec::with_capacity(src.len());
                out.spare_capacity_mut()
                    .par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, i)| {
                        for (o, i) in o.iter_mut().zip(i) {
                            o.write(*i);
                        }
                        // SAFETY: every element of `o` was just written.
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(o.as_mut_ptr().cast::<f32>(), o.len())
                        };
                        gelu_slice(o);
                    });
                // SAFETY: the chunks cover all `src.len()` elements, each written.
                unsafe { out.set_len(src.len()) };
                Some(Tensor::from_vec(out, x.shape().clone(), x.device()))
            }
            (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => {
                let src = &v[a..b];
                let mut out = bf16_zeros(src.len());
                out.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(o, i)| {
                        let mut t = [0f32; 256];
                        for (o, i) in o.chunks_mut(256).zip(i.chunks(256)) {
                            let t = &mut t[..i.len()];
                            for (t, i) in t.iter_mut().zip(i) {
                                *t = from_bf16(*i);
                            }
                            gelu_slice(t);
                            for (o, t) in o.iter_mut().zip(t.iter()) {
                                *o = to_bf16(*t);
                            }
                        }
                    });
                Some(Tensor::from_vec(out, x.shape().clone(), x.device()))
            }
            _ => None,
        }
    };
    match out {
        Some(t) => t,
        None => x.gelu(),
    }
}

fn gelu_slice(c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected at run time.
        return unsafe { gelu_avx512(c) };
    }
    gelu_generic(c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(c: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = c.chunks_exact_mut(16);
    for ch in &mut chunks {
        let p = ch.as_mut_ptr();
        // SAFETY: `ch` holds exactly 16 f32; unaligned loads and stores.
        let x = unsafe { _mm512_loadu_ps(p) };
        unsafe { _mm512_storeu_ps(p, gelu512(x)) };
    }
    gelu_generic(chunks.into_remainder())
}

/// The tanh GELU of 16 lanes: the same steps as `gelu_generic` (also for
/// the AMX linear's epilogue, `super::amx`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn gelu512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let k = _mm512_set1_ps;
    let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    let z = _mm512_mul_ps(k(0.797_884_6), _mm512_fmadd_ps(k(0.044715), x3, x));
    let e = super::expf::exp512(_mm512_min_ps(_mm512_add_ps(z, z), k(80.0)));
    let t = _mm512_sub_ps(k(1.0), _mm512_div_ps(k(2.0), _mm512_add_ps(e, k(1.0))));
    _mm512_mul_ps(_mm512_mul_ps(k(0.5), x), _mm512_add_ps(k(1.0), t))
}

#[inline(always)]
fn gelu_generic(c: &mut [f32]) {
    const S: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in c.iter_mut() {
        let x = *v;
        let z = S * (x + 0.044715 * x * x * x);
        // tanh(z) = 1 - 2 / (exp(2z) + 1), exp clamped to stay finite.
        let e = super::expf::exp_poly((2.0 * z).min(80.0));
        let t = 1.0 - 2.0 / (e + 1.0);
        *v = 0.5 * x * (1.0 + t);
    }
}

/// Rows of input up to which [`matvec_bf16`] beats widening the weight.
pub const MATVEC_ROWS: usize = 8;

/// Whether `x` [.., K] has at most [`MATVEC_ROWS`] rows (then
/// [`matvec_bf16`] is the quicker bf16 product).
pub fn few_rows(x: &Tensor) -> bool {
    let k = x.dims().last().copied().unwrap_or(0).max(1);
    x.elem_count() / k <= MATVEC_ROWS
}

/// `x · wᵀ + b` in f32 for a bf16 weight `w` [N, K] and a few rows of `x`
/// [.., K] (f32 or bf16, at most [`MATVEC_ROWS`]), reading the weight once
/// as it is: the time embedding's linears take one row, and widening their
/// whole weight to f32 per call cost more than the product (3-4% of a bf16
/// forward). `None` for other operands.
pub fn matvec_bf16(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || w.dtype() != DType::BF16 || w.rank() != 2 {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) || k == 0 {
        return Ok(None);
    }
    let m = x.elem_count() / k;
    if m == 0 || !few_rows(x) {
        return Ok(None);
    }
    let xv = cast(x, DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bv = match b {
        Some(b) => Some(cast(b, DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let w = w.contiguous()?;
    let out = {
        let (s, l) = w.storage_and_layout();
        let (Storage::Cpu(CpuStorage::BF16(v)), Some((a, e))) = (&*s, l.contiguous_offsets())
        else {
            return Ok(None);
        };
        let wv = &v[a..e];
        let mut out = vec![0f32; m * n];
        // Output columns in parallel; every row of x per weight row read.
        out.par_chunks_mut(n).enumerate().for_each(|(r, orow)| {
            let xr = &xv[r * k..(r + 1) * k];
            orow.par_chunks_mut(64).enumerate().for_each(|(c, o)| {
                for (j, o) in o.iter_mut().enumerate() {
                    let col = c * 64 + j;
                    let bias = bv.as_ref().map_or(0.0, |b| b[col]);
                    *o = bias + dot_bf16(&wv[col * k..(col + 1) * k], xr);
                }
            });
        });
        out
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = n;
    Ok(Some(Tensor::from_vec(out, shape, x.device())?))
}

/// Σ w·x with w widened lane by lane, accumulated in f32.
fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected at run time.
        return unsafe { dot_bf16_avx512(w, x) };
    }
    dot_bf16_generic(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_bf16_avx512(w: &[bf16], x: &[f32]) -> f32 {
    dot_bf16_generic(w, x)
}

#[inline(always)]
fn dot_bf16_generic(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(w, x)| from_bf16(*w) * x)
        .sum();
    for (w, x) in wc.zip(xc) {
        for i in 0..16 {
            acc[i] += from_bf16(w[i]) * x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `layer_norm(x) * mul + add` over the last dim in f32, in one parallel
/// pass per row (two-pass mean and variance, accumulated in f64): x
/// [B, S, dim] (f32 or bf16, contiguous), mul/add f32 broadcastable as
/// [B, 1, dim] or [B, S, dim]. Returns f32 [B, S, dim], or `None` where the
/// shapes or device do not fit (the caller then takes candle's ops).
pub fn norm_affine(x: &Tensor, mul: &Tensor, add: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    norm_affine_as(x, mul, add, eps, DType::F32)
}

/// [`norm_affine`] with the result in `dtype` (f32 or bf16), rounded once
/// per row as it is written: no f32 tensor and no second pass for bf16.
pub fn norm_affine_as(
    x: &Tensor,
    mul: &Tensor,
    add: &Tensor,
    eps: f64,
    dtype: DType,
) -> Result<Option<Tensor>> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Ok(None);
    }
    let Ok((b, s, dim)) = x.dims3() else {
        return Ok(None);
    };
    if !x.device().is_cpu() || dim == 0 {
        return Ok(None);
    }
    let per = |t: &Tensor| -> Result<Option<(Vec<f32>, usize)>> {
        let t = t.to_dtype(DType::F32)?;
        let rows = t.elem_count() / dim;
        if t.elem_count() % dim != 0 || !(rows == b || rows == b * s) || t.dim(t.rank() - 1)? != dim
        {
            return Ok(None);
        }
        Ok(Some((t.flatten_all()?.to_vec1::<f32>()?, rows)))
    };
    let (Some((mv, mr)), Some((av, ar))) = (per(mul)?, per(add)?) else {
        return Ok(None);
    };
    let out = {
        let (st, l) = x.storage_and_layout();
        let Some((o0, o1)) = l.contiguous_offsets() else {
            return Ok(None);
        };
        let row_of = |r: usize, rows: usize| if rows == b * s { r } else { r / s };
        let norm = |r: usize, o: &mut [f32]| {
            norm_row(
                o,
                eps,
                &mv[row_of(r, mr) * dim..][..dim],
                &av[row_of(r, ar) * dim..][..dim],
            )
        };
        let mut out = vec![0f32; if dtype == DType::F32 { b * s * dim } else { 0 }];
        let mut out16 = bf16_zeros(if dtype == DType::BF16 { b * s * dim } else { 0 });
        let mut run = |src: &(dyn Fn(usize, &mut [f32]) + Sync)| {
            if dtype == DType::F32 {
                out.par_chunks_mut(dim).enumerate().for_each(|(r, o)| {
                    src(r, o);
                    norm(r, o);
                });
            } else {
                out16.par_chunks_mut(dim).enumerate().for_each_init(
                    || vec![0f32; dim],
                    |row, (r, o)| {
                        src(r, row);
                        norm(r, row);
                        narrow_slice(row, o);
                    },
                );
            }
        };
        match &*st {
            Storage::Cpu(CpuStorage::F32(v)) => {
                let v = &v[o0..o1];
                run(&|r, o| o.copy_from_slice(&v[r * dim..(r + 1) * dim]));
            }
            Storage::Cpu(CpuStorage::BF16(v)) => {
                let v = &v[o0..o1];
                run(&|r, o| {
                    for (o, i) in o.iter_mut().zip(&v[r * dim..(r + 1) * dim]) {
                        *o = from_bf16(*i);
                    }
                });
            }
            _ => return Ok(None),
        }
        (out, out16)
    };
    Ok(Some(if dtype == DType::F32 {
        Tensor::from_vec(out.0, (b, s, dim), x.device())?
    } else {
        Tensor::from_vec(out.1, (b, s, dim), x.device())?
    }))
}

/// T5's RMS norm `x / sqrt(mean(x²) + eps) · weight` over the last dim of
/// an f32 `x`, written in bf16 (rounded once; no f32 tensor, no cast pass),
/// the sums in f32 as candle's `rms_norm`. `None` where the operands do
/// not fit (not f32, not on the CPU, weight of another length).
pub fn rms_norm_bf16(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    let dim = x.dims().last().copied().unwrap_or(0);
    if !x.device().is_cpu() || x.dtype() != DType::F32 || dim == 0 || weight.elem_count() != dim {
        return Ok(None);
    }
    let w = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let x = x.contiguous()?;
    let (st, l) = x.storage_and_layout();
    let Some(src) = cpu_slice::<f32>(&st, l) else {
        return Ok(None);
    };
    let mut out = bf16_zeros(src.len());
    out.par_chunks_mut(dim)
        .zip(src.par_chunks(dim))
        .for_each_init(
            || vec![0f32; dim],
            |row, (o, x)| {
                let ss: f32 = x.iter().map(|&v| v * v).sum();
                let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
                for ((r, &v), &w) in row.iter_mut().zip(x).zip(&w) {
                    *r = v * inv * w;
                }
                narrow_slice(row, o);
            },
        );
    let y = Tensor::from_vec(out, x.dims(), x.device())?;
    Ok(Some(y))
}

/// `a · b` for two f32 tensors of one shape, written in bf16 (umT5's gate
/// times its up projection, the input of a bf16 linear: no f32 product
/// and no cast pass). `None` where the operands do not fit.
pub fn mul_bf16(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if !a.device().is_cpu()
        || a.dtype() != DType::F32
        || b.dtype() != DType::F32
        || a.dims() != b.dims()
    {
        return Ok(None);
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some(x), Some(y)) = (cpu_slice::<f32>(&sa, la), cpu_slice::<f32>(&sb, lb)) else {
        return Ok(None);
    };
    let mut out = bf16_zeros(x.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each_init(
            || vec![0f32; CHUNK],
            |row, (o, (x, y))| {
                let row = &mut row[..o.len()];
                for ((r, &x), &y) in row.iter_mut().zip(x).zip(y) {
                    *r = x * y;
                }
                narrow_slice(row, o);
            },
        );
    let out = Tensor::from_vec(out, a.dims(), a.device())?;
    Ok(Some(out))
}

/// Σ f(x) in f64 over 8 interleaved partial sums: independent additions
/// the CPU overlaps (one running sum waited on every addition's latency,
/// the norms' slowest step), then the 8 added in order.
#[inline(always)]
fn sum8(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v as f64);
    }
    acc.iter().sum()
}

/// One row in place: (x - mean) / sqrt(var + eps) * mul + add.
fn norm_row(o: &mut [f32], eps: f64, mul: &[f32], add: &[f32]) {
    let n = o.len() as f64;
    let mean = sum8(o, |v| v) / n;
    let var = sum8(o, |v| (v - mean) * (v - mean)) / n;
    let (mean, inv) = (mean as f32, (1.0 / (var + eps).sqrt()) as f32);
    for ((o, m), a) in o.iter_mut().zip(mul).zip(add) {
        *o = (*o - mean) * inv * m + a;
    }
}

/// A value placed on a 64-byte cache line (the AMX kernels' stack buffers,
/// read and written by tile loads and stores a line per row).
#[repr(C, align(64))]
pub(crate) struct OnLine<T>(pub(crate) T);

/// A buffer kept between calls whose slices start on a 64-byte cache line:
/// the packed weight panels are read a line at a time, and a misaligned
/// panel costs two accesses per load (see `checkpoint::mapped`'s docs).
pub(crate) struct Lined<T>(Vec<T>);

impl<T: Copy + Default> Lined<T> {
    pub(crate) const fn new() -> Self {
        Self(Vec::new())
    }

    /// `len` elements from a cache line on, holding whatever the last user
    /// left; the buffer grows when it must and never shrinks.
    pub(crate) fn slice(&mut self, len: usize) -> &mut [T] {
        let slack = 64 / std::mem::size_of::<T>().max(1);
        if self.0.len() < len + slack {
            self.0.resize(len + slack, T::default());
        }
        let at = self.0.as_ptr().align_offset(64).min(slack);
        &mut self.0[at..at + len]
    }
}

/// A CPU tensor of `len` elements that `fill` writes, every one of them
/// (the kernels' contract: no zero-fill pass before they run).
pub(crate) fn written<T: candle_core::WithDType>(
    len: usize,
    shape: Vec<usize>,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> Result<Tensor> {
    let mut o: Vec<T> = Vec::with_capacity(len);
    fill(&mut o.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements.
    unsafe { o.set_len(len) };
    Tensor::from_vec(o, shape, &candle_core::Device::Cpu)
}

/// The 16x16 transpose of 32-bit words: out[c] lane r = a[r] lane c (the
/// packing of a weight panel: pairs of bf16 for the AMX linear, f32 for
/// `super::sgemm`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(
    a: &[std::arch::x86_64::__m512i; 16],
) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved by word, then by double word: u[4i + q]
    // holds, in each 128-bit lane L, rows 4i..4i+3 of column 4L + q.
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // Then the 128-bit lanes L of u[q], u[4 + q], u[8 + q], u[12 + q]
    // gathered into column 4L + q.
    let mut out = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[q], u[4 + q]);
        let v1 = _mm512_shuffle_i32x4::<0xDD>(u[q], u[4 + q]);
        let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + q], u[12 + q]);
        let v3 = _mm512_shuffle_i32x4::<0xDD>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        out[8 + q] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
        out[4 + q] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        out[12 + q] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
    }
    out
}

/// Scales a row of attention scores in place, adding the bias terms
/// `p + q` when given (`x · scale + (p + q)`), and returns its maximum: one
/// vectorised pass where a scalar fold for the maximum had been the
/// softmax's slowest step (`super::flash`, `super::amx`).
pub fn scale_max(row: &mut [f32], scale: f32, terms: Option<(&[f32], &[f32])>) -> f32 {
    if let Some((p, q)) = terms {
        assert!(p.len() >= row.len() && q.len() >= row.len());
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was just detected; the terms were checked.
        return unsafe { scale_max_avx512(row, scale, terms) };
    }
    match terms {
        Some((p, q)) => {
            for ((x, &p), &q) in row.iter_mut().zip(p).zip(q) {
                *x = *x * scale + (p + q);
            }
        }
        None => row.iter_mut().for_each(|x| *x *= scale),
    }
    row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale_max_avx512(row: &mut [f32], scale: f32, terms: Option<(&[f32], &[f32])>) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len();
    let sc = _mm512_set1_ps(scale);
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let m = mask16(n - i);
        // SAFETY: lanes i .. i + 16 masked to the row (and the terms).
        unsafe {
            let at = row.as_mut_ptr().add(i);
            let mut v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, at), sc);
            if let Some((p, q)) = terms {
                let b = _mm512_add_ps(
                    _mm512_maskz_loadu_ps(m, p.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(m, q.as_ptr().add(i)),
                );
                v = _mm512_add_ps(v, b);
            }
            _mm512_mask_storeu_ps(at, m, v);
            mx = _mm512_mask_max_ps(mx, m, mx, v);
        }
        i += 16;
    }
    _mm512_reduce_max_ps(mx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matvec_bf16_matches_the_widened_product() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (300, 517), &dev).unwrap();
        let w = w.to_dtype(DType::BF16).unwrap();
        let b = Tensor::randn(0f32, 1.0, 300, &dev).unwrap();
        for rows in [1, 3] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 517), &dev).unwrap();
            let got = matvec_bf16(&x, &w, Some(&b)).unwrap().expect("taken");
            let wf = w.to_dtype(DType::F32).unwrap();
            let want = x
                .broadcast_matmul(&wf.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            let err = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err < 1e-3, "max error {err}");
        }
        let many = Tensor::zeros((MATVEC_ROWS + 1, 517), DType::F32, &dev).unwrap();
        assert!(matvec_bf16(&many, &w, None).unwrap().is_none());
    }

    #[test]
    fn casts_and_gelu_match_candle() {
        let x = Tensor::randn(0f32, 3.0, (3, 50_000), &Device::Cpu).unwrap();
        let a = cast(&x, DType::BF16).unwrap();
        let b = x.to_dtype(DType::BF16).unwrap();
        let (a, b) = (
            a.to_dtype(DType::F32).unwrap(),
            b.to_dtype(DType::F32).unwrap(),
        );
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let w = cast(&x.to_dtype(DType::BF16).unwrap(), DType::F32).unwrap();
        assert_eq!(
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let gb = gelu(&x.to_dtype(DType::BF16).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let rb = x
            .to_dtype(DType::BF16)
            .unwrap()
            .gelu()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let d = (gb - rb)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .max_keepdim(0)
            .unwrap();
        assert!(
            d.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] < 0.07,
            "bf16 gelu"
        );
        let g = gelu(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let r = x
            .gelu()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, r) in g.iter().zip(&r) {
            assert!((g - r).abs() <= 1e-6 * r.abs().max(1.0), "{g} {r}");
        }
    }

    #[test]
    fn narrowing_matches_to_bf16_bit_for_bit() {
        let mut src: Vec<f32> = (0..1000u32)
            .map(|i| f32::from_bits(0x3f80_0000 + i * 0x8000 + (i % 3) * 0x7fff))
            .collect();
        src.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0x0000_8000),
            f32::from_bits(0x0001_7fff),
            f32::MAX,
            f32::MIN,
            1e-40,
        ]);
        let mut got = vec![bf16::ZERO; src.len()];
        narrow_slice(&src, &mut got);
        for (g, &x) in got.iter().zip(&src) {
            assert_eq!(
                g.to_bits(),
                to_bf16(x).to_bits(),
                "{x:e} ({:#x})",
                x.to_bits()
            );
        }
    }
}
