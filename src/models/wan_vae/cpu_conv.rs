//! The CPU path of the VAE's convolutions: a (kt, k, k) conv over frames as
//! a sum of kt·k·k GEMMs, one per tap, with no im2col buffer.
//!
//! Each input frame is laid out channel-major with a zero border of
//! p = (k-1)/2 pixels: plane [C, (H+2p)·(W+2p) + 2p]. Output position q of a
//! padded-width grid (row y, column x < W+2p) then reads tap (dy, dx) of every
//! channel at q + dy·(W+2p) + dx: for a run of consecutive q, that is a plain
//! [C, N] matrix (row stride = the plane, column stride 1), so every tap is an
//! ordinary GEMM `out[O, N] += w_tap[O, C] · plane[C, q0 + offset ..]` that
//! the `gemm` crate packs straight from the frame. The grid's last 2p columns
//! are discarded when a tile is written out.
//!
//! Work is split into tiles of whole output rows (sized so a tile's
//! accumulator stays in L2) and run on rayon's pool, one GEMM thread each.
//! What the model applies before a conv (RMS norm + SiLU, or nearest 2x
//! upsampling) is done while the padded planes are filled, and a residual
//! added after it seeds the accumulator, so those never take a pass of
//! their own over memory.

use rayon::prelude::*;

use crate::models::wan::expf::exp_poly;

/// Target accumulator size of one tile, in f32 (512 KiB: half an L2).
const TILE_FLOATS: usize = 1 << 17;

/// A conv's weights for the CPU path: taps in (t, dy, dx) order, each
/// [O, C] stored column-major (o fastest), and the bias.
#[derive(Debug, Clone)]
pub struct CpuKernel {
    w: Vec<f32>,
    bias: Vec<f32>,
    pub c_in: usize,
    pub c_out: usize,
    pub kt: usize,
    pub k: usize,
}

impl CpuKernel {
    /// From a [O, C, kt, k, k] weight (row-major) and [O] bias.
    pub fn new(w: &[f32], bias: Vec<f32>, [c_out, c_in, kt, k]: [usize; 4]) -> Self {
        let taps = kt * k * k;
        let mut out = vec![0f32; taps * c_out * c_in];
        for o in 0..c_out {
            for c in 0..c_in {
                for tap in 0..taps {
                    out[(tap * c_in + c) * c_out + o] = w[(o * c_in + c) * taps + tap];
                }
            }
        }
        Self {
            w: out,
            bias,
            c_in,
            c_out,
            kt,
            k,
        }
    }

    pub fn pad(&self) -> usize {
        (self.k - 1) / 2
    }
}

/// Geometry of the padded planes of one conv's input frames.
#[derive(Debug, Clone, Copy)]
pub struct Planes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub pad: usize,
}

impl Planes {
    /// Padded row length.
    pub fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }
    /// Floats per channel plane (with the trailing 2p of slack the last
    /// taps read).
    pub fn plane(&self) -> usize {
        (self.h + 2 * self.pad) * self.wp() + 2 * self.pad
    }
    /// Floats per frame.
    pub fn frame(&self) -> usize {
        self.c * self.plane()
    }
}

/// How a frame is brought into a padded plane.
#[derive(Clone, Copy)]
pub enum Fill<'a> {
    /// Copied as is ([C, H, W]).
    Copy(&'a [f32]),
    /// `silu(x / max(|x|_channels, 1e-12) * scale[c])` (Wan's RMS norm with
    /// gamma·sqrt(C) in `scale`, then SiLU).
    NormSilu(&'a [f32], &'a [f32]),
    /// Nearest 2x upsampling of a [C, H/2, W/2] frame.
    Up2(&'a [f32]),
    /// Stays zero.
    Zero,
}

/// A raw pointer that may cross threads; every use writes a region no
/// other task touches.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used for disjoint writes, documented at each use.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Fills padded planes (one frame per `fills` entry) with their borders zero.
pub fn fill_planes(g: Planes, fills: &[Fill]) -> Vec<f32> {
    let mut buf = vec![0f32; fills.len() * g.frame()];
    let (h, w, wp, plane, p) = (g.h, g.w, g.wp(), g.plane(), g.pad);
    // Units of work: (frame, band of rows); NormSilu needs every channel of
    // a pixel at once, so units span all channels.
    let band = (16384 / w.max(1)).clamp(1, h.max(1));
    let bands = h.div_ceil(band);
    let ptr = SyncPtr(buf.as_mut_ptr());
    (0..fills.len() * bands).into_par_iter().for_each(|u| {
        let (f, bi) = (u / bands, u % bands);
        let (y0, y1) = (bi * band, ((bi + 1) * band).min(h));
        // SAFETY: unit (f, band) writes rows y0..y1 of the interior of frame
        // f's planes only; units are disjoint and `buf` outlives the loop.
        let row = |c: usize, y: usize| unsafe {
            std::slice::from_raw_parts_mut(
                ptr.get().add(f * g.frame() + c * plane + (y + p) * wp + p),
                w,
            )
        };
        match fills[f] {
            Fill::Zero => {}
            Fill::Copy(src) => {
                for c in 0..g.c {
                    for y in y0..y1 {
                        row(c, y).copy_from_slice(&src[(c * h + y) * w..][..w]);
                    }
                }
            }
            Fill::Up2(src) => {
                let (hs, ws) = (h / 2, w / 2);
                for c in 0..g.c {
                    for y in y0..y1 {
                        let s = &src[(c * hs + y / 2) * ws..][..ws];
                        for (pair, v) in row(c, y).chunks_exact_mut(2).zip(s) {
                            pair[0] = *v;
                            pair[1] = *v;
                        }
                    }
                }
            }
            Fill::NormSilu(src, scale) => {
                let n = (y1 - y0) * w;
                let at = y0 * w;
                let mut acc = vec![0f32; n];
                for c in 0..g.c {
                    square_add(&mut acc, &src[c * h * w + at..][..n]);
                }
                for a in acc.iter_mut() {
                    *a = 1.0 / a.sqrt().max(1e-12);
                }
                for c in 0..g.c {
                    let s = &src[c * h * w + at..][..n];
                    let sc = scale[c];
                    for y in y0..y1 {
                        let o = (y - y0) * w;
                        silu_row(row(c, y), &s[o..o + w], &acc[o..o + w], sc);
                    }
                }
            }
        }
    });
    buf
}

/// acc[i] = fma(x[i], x[i], acc[i]): one fused multiply-add per element,
/// as `mul_add` rounds it, on the FMA unit where the CPU has one (without
/// the target feature `mul_add` compiled to a call into libm's `fmaf`).
fn square_add(acc: &mut [f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: FMA was just detected.
        return unsafe { square_add_fma(acc, x) };
    }
    for (a, v) in acc.iter_mut().zip(x) {
        *a = v.mul_add(*v, *a);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn square_add_fma(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a = v.mul_add(*v, *a);
    }
}

/// out = silu(x * inv * scale), vectorised where the CPU allows.
fn silu_row(out: &mut [f32], x: &[f32], inv: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { silu_row_avx512(out, x, inv, scale) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return unsafe { silu_row_avx2(out, x, inv, scale) };
        }
    }
    silu_row_generic(out, x, inv, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_row_avx512(out: &mut [f32], x: &[f32], inv: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    // Intrinsics: the auto-vectorised form keeps exp's rounding scalar.
    let n = out.len().min(x.len()).min(inv.len());
    let (sc, one) = (_mm512_set1_ps(scale), _mm512_set1_ps(1.0));
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n elements of each slice; unaligned accesses.
        let (xv, iv) = unsafe {
            (
                _mm512_loadu_ps(x.as_ptr().add(i)),
                _mm512_loadu_ps(inv.as_ptr().add(i)),
            )
        };
        let v = _mm512_mul_ps(_mm512_mul_ps(xv, iv), sc);
        let e = crate::models::wan::expf::exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        let y = _mm512_div_ps(v, _mm512_add_ps(one, e));
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i), y) };
        i += 16;
    }
    silu_row_generic(&mut out[i..n], &x[i..n], &inv[i..n], scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_row_avx2(out: &mut [f32], x: &[f32], inv: &[f32], scale: f32) {
    silu_row_generic(out, x, inv, scale)
}

#[inline(always)]
fn silu_row_generic(out: &mut [f32], x: &[f32], inv: &[f32], scale: f32) {
    for ((o, x), i) in out.iter_mut().zip(x).zip(inv) {
        let v = x * i * scale;
        *o = v / (1.0 + exp_poly(-v));
    }
}

/// The conv over `frames` (padded planes of geometry `g`, `None` for a zero
/// frame): output frame j reads input frames j·stride + 0..kt. Returns
/// [t_out, O, H, W]; `residual` ([t_out, O, H, W]) is added when given.
pub fn conv(
    k: &CpuKernel,
    g: Planes,
    frames: &[Option<&[f32]>],
    stride: usize,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(g.pad, k.pad(), "planes padded for the kernel");
    assert!(frames.len() >= k.kt && stride >= 1);
    let t_out = (frames.len() - k.kt) / stride + 1;
    let (o_n, c_n, h, w, wp) = (k.c_out, k.c_in, g.h, g.w, g.wp());
    let hw = h * w;
    let mut out = vec![0f32; t_out * o_n * hw];
    let rows = (TILE_FLOATS / (o_n * wp)).clamp(1, h);
    let tiles = h.div_ceil(rows);
    let ptr = SyncPtr(out.as_mut_ptr());
    (0..t_out * tiles)
        .into_par_iter()
        .for_each_init(Vec::new, |acc: &mut Vec<f32>, u| {
            let (j, ti) = (u / tiles, u % tiles);
            let (y0, y1) = (ti * rows, ((ti + 1) * rows).min(h));
            let n = (y1 - y0) * wp;
            acc.clear();
            acc.resize(o_n * n, 0.0);
            for (o, a) in acc.chunks_exact_mut(n).enumerate() {
                let b = k.bias[o];
                match residual {
                    Some(r) => {
                        let r = &r[(j * o_n + o) * hw..][..hw];
                        for (y, row) in (y0..y1).zip(a.chunks_exact_mut(wp)) {
                            for (d, s) in row[..w].iter_mut().zip(&r[y * w..(y + 1) * w]) {
                                *d = b + s;
                            }
                        }
                    }
                    None => a.fill(b),
                }
            }
            for dt in 0..k.kt {
                let Some(src) = frames[j * stride + dt] else {
                    continue;
                };
                for dy in 0..k.k {
                    for dx in 0..k.k {
                        let tap = (dt * k.k + dy) * k.k + dx;
                        let off = (y0 + dy) * wp + dx;
                        let wt = &k.w[tap * c_n * o_n..][..c_n * o_n];
                        debug_assert!(off + n + (c_n - 1) * g.plane() <= src.len());
                        // SAFETY: acc is [O, n] row-major; wt is [O, C]
                        // column-major; the rhs is [C, n] at `off` of each
                        // channel plane, in bounds as the plane has 2p of
                        // slack past its last padded row.
                        unsafe {
                            gemm::gemm(
                                o_n,
                                n,
                                c_n,
                                acc.as_mut_ptr(),
                                1,
                                n as isize,
                                true,
                                wt.as_ptr(),
                                o_n as isize,
                                1,
                                src.as_ptr().add(off),
                                1,
                                g.plane() as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                    }
                }
            }
            for o in 0..o_n {
                let a = &acc[o * n..(o + 1) * n];
                for (y, row) in (y0..y1).zip(a.chunks_exact(wp)) {
                    // SAFETY: unit (j, tile) writes rows y0..y1 of output
                    // frame j only; units are disjoint and `out` outlives
                    // the loop.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(ptr.get().add((j * o_n + o) * hw + y * w), w)
                    };
                    dst.copy_from_slice(&row[..w]);
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct summation of the same conv, for small shapes.
    fn naive(
        w: &[f32],
        bias: &[f32],
        [o_n, c_n, kt, k]: [usize; 4],
        x: &[Vec<f32>],
        h: usize,
        wd: usize,
    ) -> Vec<f32> {
        let p = (k - 1) / 2;
        let t_out = x.len() - kt + 1;
        let mut out = vec![0f32; t_out * o_n * h * wd];
        for j in 0..t_out {
            for o in 0..o_n {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut s = bias[o] as f64;
                        for dt in 0..kt {
                            for c in 0..c_n {
                                for dy in 0..k {
                                    for dx in 0..k {
                                        let (yy, xs) = (y + dy, xx + dx);
                                        if yy < p || xs < p || yy - p >= h || xs - p >= wd {
                                            continue;
                                        }
                                        let v = x[j + dt][(c * h + yy - p) * wd + xs - p];
                                        let wv = w[(((o * c_n + c) * kt + dt) * k + dy) * k + dx];
                                        s += (v * wv) as f64;
                                    }
                                }
                            }
                        }
                        out[((j * o_n + o) * h + y) * wd + xx] = s as f32;
                    }
                }
            }
        }
        out
    }

    fn seq(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32)
                    - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_direct_summation() {
        for (o_n, c_n, kt, k, h, wd, t) in [
            (5, 3, 3, 3, 7, 6, 4),
            (4, 6, 1, 1, 3, 5, 2),
            (3, 2, 3, 1, 2, 2, 3),
        ] {
            let w = seq(o_n * c_n * kt * k * k, 1);
            let bias = seq(o_n, 2);
            let x: Vec<Vec<f32>> = (0..t).map(|i| seq(c_n * h * wd, 10 + i as u32)).collect();
            let kern = CpuKernel::new(&w, bias.clone(), [o_n, c_n, kt, k]);
            let g = Planes {
                c: c_n,
                h,
                w: wd,
                pad: (k - 1) / 2,
            };
            let fills: Vec<Fill> = x.iter().map(|f| Fill::Copy(f)).collect();
            let buf = fill_planes(g, &fills);
            let frames: Vec<Option<&[f32]>> = buf.chunks_exact(g.frame()).map(Some).collect();
            let got = conv(&kern, g, &frames, 1, None);
            let want = naive(&w, &bias, [o_n, c_n, kt, k], &x, h, wd);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "{o_n} {c_n} {kt} {k}: {err}");
        }
    }
}
