//! The x86_64 side of [`super`]: detection, the tile configuration, the
//! packing of `wᵀ`, the 2x2-tile inner loops and the epilogue.

use super::super::fast::{mask16, transpose16, Lined, OnLine};
use super::super::flash::{DistanceBias, RowBias};
use super::{Out, MAX_HEAD_DIM, PANEL};
use half::bf16;
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// CPUID leaf 7's AMX-BF16 and AMX-TILE bits, AVX512-BF16, then the
/// kernel's permission for the tile data state (Linux ≥ 5.16).
pub fn enable() -> bool {
    // CPUID leaf 7 answers zeros where the CPU lacks it.
    let l7 = __cpuid_count(7, 0);
    let (tile, bf) = ((l7.edx >> 24) & 1 == 1, (l7.edx >> 22) & 1 == 1);
    if !(tile
        && bf
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("avx512bw"))
    {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it changes nothing else and
    // fails cleanly on kernels without it.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The 64-byte tile configuration (palette 1): every tile 64 bytes wide;
/// `r0` rows in the first row tiles (tmm0, tmm1, tmm4), `r1` in the
/// second (tmm2, tmm3, tmm5), 16 in the weight tiles (tmm6, tmm7).
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn new(r0: usize, r1: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = match t {
                0 | 1 | 4 => r0,
                2 | 3 | 5 => r1.max(1),
                _ => 16,
            } as u8;
        }
        Self(c)
    }
}

/// The tile unit configured for this thread until dropped.
struct Tiles;

impl Tiles {
    /// # Safety
    /// AMX must be enabled (see [`enable`]).
    unsafe fn load(cfg: &Config) -> Self {
        // SAFETY: the caller's promise; `cfg` is a valid palette-1 config.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `load`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

thread_local! {
    /// A worker's packing buffer, kept between calls (see the module docs).
    static PACK: RefCell<Lined<u32>> = const { RefCell::new(Lined::new()) };
}

/// The output as a raw pointer the workers share: each writes a
/// disjoint set of elements.
#[derive(Clone, Copy)]
enum Dst {
    Bf16(*mut bf16),
    F32(*mut f32),
}
// SAFETY: workers write disjoint (row, column) blocks.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// `x · wᵀ (+ bias) (then GELU)` for `x` [M, K] and `w` [N, K] (K a
/// multiple of 32) into `out` [M, N], every element written.
pub fn matmul(
    (x, m, k): (&[bf16], usize, usize),
    (w, n): (&[bf16], usize),
    (bias, gelu): (Option<&[f32]>, bool),
    out: Out,
) {
    assert!(
        k.is_multiple_of(32) && x.len() >= m * k && w.len() >= n * k,
        "AMX matmul: bad operands"
    );
    let dst = match out {
        Out::Bf16(o) => {
            assert!(o.len() >= m * n);
            Dst::Bf16(o.as_mut_ptr().cast())
        }
        Out::F32(o) => {
            assert!(o.len() >= m * n);
            Dst::F32(o.as_mut_ptr().cast())
        }
    };
    let panels = n.div_ceil(PANEL);
    let threads = rayon::current_num_threads().max(1);
    // Over panels when there are enough to share; otherwise over rows
    // (32-row blocks), each worker packing every panel.
    let by_rows = panels < 2 * threads && m >= 64;
    let groups = if by_rows {
        threads.min(m / 32)
    } else {
        threads.min(panels)
    };
    (0..groups).into_par_iter().for_each(|g| {
        let (p0, p1, r0, r1) = if by_rows {
            let blocks = m / 32;
            let (b0, b1) = (blocks * g / groups, blocks * (g + 1) / groups);
            let r1 = if g + 1 == groups { m } else { b1 * 32 };
            (0, panels, b0 * 32, r1)
        } else {
            (panels * g / groups, panels * (g + 1) / groups, 0, m)
        };
        PACK.with(|b| {
            let mut kept = b.borrow_mut();
            let pack = kept.slice(PANEL * k / 2);
            // SAFETY: AMX is enabled (callers go through `available`);
            // every pointer below stays inside x, w, the bias, the
            // buffer and the output, whose sizes were checked above.
            unsafe { worker(x, k, w, n, (bias, gelu), dst, (p0, p1), (r0, r1), pack) }
        });
    });
}

/// Panels [p0, p1) over rows [r0, r1): each panel packed once, then every
/// 32-row block against each of its column pairs over all of K.
///
/// (Blocking K so a pair's packed `wᵀ` stays in L1 across row blocks, with
/// partial sums spilled between k blocks, measured no faster here.)
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn worker(
    x: &[bf16],
    k: usize,
    w: &[bf16],
    n: usize,
    (bias, gelu): (Option<&[f32]>, bool),
    dst: Dst,
    (p0, p1): (usize, usize),
    (r0, r1): (usize, usize),
    pack: &mut [u32],
) {
    let rows = r1 - r0;
    // Fewer than 32 rows in all: tiles of fewer rows, no overlap.
    let cfg = if rows < 32 {
        Config::new(rows.min(16), rows.saturating_sub(16))
    } else {
        Config::new(16, 16)
    };
    let half = rows <= 16;
    // SAFETY: AMX is enabled (the caller's promise).
    let _tiles = unsafe { Tiles::load(&cfg) };
    let steps = k / 32;
    let mut line = OnLine([0f32; 32 * 32]);
    let c = &mut line.0;
    for p in p0..p1 {
        let n0 = p * PANEL;
        unsafe { pack_panel(w, n, k, n0, PANEL, pack) };
        let mut b0 = r0;
        while b0 < r1 {
            // The last block of a range ends at r1, overlapping the one
            // before it (rows written twice, equal).
            let start = if b0 + 32 > r1 && rows >= 32 {
                r1 - 32
            } else {
                b0
            };
            let a = unsafe { x.as_ptr().add(start * k) }.cast::<u8>();
            for pair in 0..PANEL / 32 {
                let c0 = n0 + pair * 32;
                if c0 >= n {
                    break;
                }
                let cols = (n - c0).min(32);
                let b = unsafe { pack.as_ptr().add(pair * 2 * steps * 256) }.cast::<u8>();
                let step = Step {
                    a,
                    lda: k * 2,
                    b,
                    ldb_tile: steps * 1024,
                    steps,
                };
                unsafe {
                    if half {
                        step.half_block(c.as_mut_ptr())
                    } else {
                        step.block(c.as_mut_ptr())
                    }
                }
                let (first_row, last_row) = (b0 - start, (r1 - start).min(32));
                let bias = bias.map(|b| &b[c0..c0 + cols]);
                unsafe {
                    epilogue(
                        c,
                        first_row..last_row,
                        cols,
                        (bias, gelu),
                        dst,
                        (start, c0),
                        n,
                    )
                };
            }
            b0 += 32;
        }
    }
}

/// One row block against one column pair over `steps` (≥ 1) k steps: `a` is
/// the block's first row of `x` at the first step (rows `lda` bytes apart),
/// `b` the pair's first packed tile at that step (its second column tile
/// `ldb_tile` bytes further).
#[derive(Clone, Copy)]
struct Step {
    a: *const u8,
    lda: usize,
    b: *const u8,
    ldb_tile: usize,
    steps: usize,
}

impl Step {
    /// The 32x32 f32 product A · B into `to` (row stride 128 bytes).
    #[inline(always)]
    unsafe fn block(&self, to: *mut f32) {
        unsafe { self.block_at(to, 128, false) }
    }

    /// A · B into the 32x32 f32 block at `to` whose rows are `ldc` bytes
    /// apart, added to what is there when `add`.
    #[inline(always)]
    unsafe fn block_at(&self, to: *mut f32, ldc: usize, add: bool) {
        let Step {
            a,
            lda,
            b,
            ldb_tile,
            steps,
        } = *self;
        let t = to.cast::<u8>();
        unsafe {
            if add {
                asm!(
                    "tileloadd tmm0, [{c0} + {ldc}*1]",
                    "tileloadd tmm1, [{c1} + {ldc}*1]",
                    "tileloadd tmm2, [{c2} + {ldc}*1]",
                    "tileloadd tmm3, [{c3} + {ldc}*1]",
                    c0 = in(reg) t,
                    c1 = in(reg) t.add(64),
                    c2 = in(reg) t.add(16 * ldc),
                    c3 = in(reg) t.add(16 * ldc + 64),
                    ldc = in(reg) ldc,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            // Software-pipelined: each step's tiles are loaded as soon as
            // the products of the step before have read the register they
            // replace (tile registers are not renamed), ~10% faster than
            // four loads then four products.
            let (a1, b1) = (a.add(16 * lda), b.add(ldb_tile));
            asm!(
                "tileloadd tmm4, [{a0} + {lda}*1]",
                "tileloadd tmm6, [{b0} + {ldb}*1]",
                "tileloadd tmm7, [{b1} + {ldb}*1]",
                "tileloadd tmm5, [{a1} + {lda}*1]",
                a0 = in(reg) a,
                a1 = in(reg) a1,
                b0 = in(reg) b,
                b1 = in(reg) b1,
                lda = in(reg) lda,
                ldb = in(reg) 64usize,
                options(nostack, readonly),
            );
            for s in 1..steps {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    a0 = in(reg) a.add(s * 64),
                    a1 = in(reg) a1.add(s * 64),
                    b0 = in(reg) b.add(s * 1024),
                    b1 = in(reg) b1.add(s * 1024),
                    lda = in(reg) lda,
                    ldb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem),
            );
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c0 = in(reg) t,
                c1 = in(reg) t.add(64),
                c2 = in(reg) t.add(16 * ldc),
                c3 = in(reg) t.add(16 * ldc + 64),
                ldc = in(reg) ldc,
                options(nostack),
            );
        }
    }

    /// [`Step::block`] for at most 16 rows (the first row tiles only).
    #[inline(always)]
    unsafe fn half_block(&self, to: *mut f32) {
        let Step {
            a,
            lda,
            b,
            ldb_tile,
            steps,
        } = *self;
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
            let b1 = b.add(ldb_tile);
            for s in 0..steps {
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    a0 = in(reg) a.add(s * 64),
                    b0 = in(reg) b.add(s * 1024),
                    b1 = in(reg) b1.add(s * 1024),
                    lda = in(reg) lda,
                    ldb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            let t = to.cast::<u8>();
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                c0 = in(reg) t,
                c1 = in(reg) t.add(64),
                ldc = in(reg) 128usize,
                options(nostack),
            );
        }
    }
}

/// Rows `rows` of the 32x32 block `c` plus the bias (then the tanh GELU
/// when `gelu`), written at
/// (row0 + r, col0) of the [.., n] output, `cols` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue(
    c: &[f32; 1024],
    rows: std::ops::Range<usize>,
    cols: usize,
    (bias, gelu): (Option<&[f32]>, bool),
    dst: Dst,
    (row0, col0): (usize, usize),
    n: usize,
) {
    let mut bv = [0f32; 32];
    if let Some(b) = bias {
        bv[..cols].copy_from_slice(&b[..cols]);
    }
    let (m0, m1) = (mask16(cols), mask16(cols.saturating_sub(16)));
    let (b0, b1) = (
        _mm512_loadu_ps(bv.as_ptr()),
        _mm512_loadu_ps(bv[16..].as_ptr()),
    );
    for r in rows {
        let at = (row0 + r) * n + col0;
        let v0 = _mm512_add_ps(_mm512_loadu_ps(c[r * 32..].as_ptr()), b0);
        let v1 = _mm512_add_ps(_mm512_loadu_ps(c[r * 32 + 16..].as_ptr()), b1);
        let (v0, v1) = if gelu {
            (
                super::super::fast::gelu512(v0),
                super::super::fast::gelu512(v1),
            )
        } else {
            (v0, v1)
        };
        // SAFETY: (row0 + r, col0 .. col0 + cols) lies in the m·n output.
        unsafe {
            match dst {
                Dst::F32(o) => {
                    _mm512_mask_storeu_ps(o.add(at), m0, v0);
                    _mm512_mask_storeu_ps(o.add(at + 16), m1, v1);
                }
                Dst::Bf16(o) => {
                    let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
                    _mm512_mask_storeu_epi16(
                        o.add(at).cast(),
                        (m0 as u32) | ((m1 as u32) << 16),
                        h,
                    );
                }
            }
        }
    }
}

/// Keys per online-softmax step of [`attention`] (a multiple of 64).
pub const KEYS: usize = 256;

/// softmax(scale · q kᵀ (+ bias)) v for bf16 q [B·H, Sq, d] and k, v [B·H, Sk, d]
/// (contiguous), written in bf16 to `out` [B, Sq, H·d]. Needs Sq ≥ 32,
/// d a multiple of 32 up to `MAX_HEAD_DIM`.
///
/// Head by head: k and v are packed once (k as the linear's weights are,
/// v pair-interleaved along the keys; `2·Sk'·d·2` bytes, Sk' = Sk rounded
/// up to 64), then each 32-row tile of queries runs on the pool as one
/// flash-attention pass: scores for [`KEYS`] keys at a time on the tiles,
/// an online softmax in f32 (running max and sum, the probabilities
/// rounded to bf16 as PyTorch's bf16 attention does), and P·v added to an
/// f32 accumulator on the tiles. No score matrix beyond one tile's.
pub fn attention(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    (b, h, sq, sk, d): (usize, usize, usize, usize, usize),
    (scale, bias): (f32, Option<&DistanceBias>),
    out: &mut [std::mem::MaybeUninit<bf16>],
) {
    assert!(
        sq >= 32 && sk > 0 && d % 32 == 0 && d <= MAX_HEAD_DIM,
        "AMX attention: unsupported shape"
    );
    assert!(q.len() >= b * h * sq * d && k.len() >= b * h * sk * d && v.len() >= b * h * sk * d);
    assert!(out.len() >= b * sq * h * d);
    let skp = sk.div_ceil(64) * 64;
    let mut kp = vec![0u32; skp * d / 2];
    let mut vp = vec![0u32; skp * d / 2];
    let dst = SendPtr(out.as_mut_ptr().cast::<bf16>());
    let tiles = sq.div_ceil(32);
    for bh in 0..b * h {
        let kh = &k[bh * sk * d..(bh + 1) * sk * d];
        let vh = &v[bh * sk * d..(bh + 1) * sk * d];
        let panel = 64 * d / 2;
        // SAFETY: each chunk is one panel of the buffer (see `pack_panel`).
        kp.par_chunks_mut(panel)
            .enumerate()
            .for_each(|(p, buf)| unsafe { pack_panel(kh, sk, d, p * 64, 64, buf) });
        let vsteps = skp / 32;
        // SAFETY: each chunk is one 16-column tile's steps (see `pack_kn`).
        vp.par_chunks_mut(vsteps * 256)
            .enumerate()
            .for_each(|(ct, buf)| unsafe { pack_kn(vh, sk, d, ct * 16, vsteps, buf) });
        let qh = &q[bh * sq * d..(bh + 1) * sq * d];
        let (kp, vp) = (&kp, &vp);
        (0..tiles).into_par_iter().for_each(|t| {
            let nominal = t * 32;
            let start = nominal.min(sq - 32);
            // SAFETY: AMX is enabled (callers go through `available`);
            // rows start..start + 32 are in q, the packed buffers hold
            // Sk' keys, and this tile writes only rows nominal.. of its
            // head, which no other tile writes.
            let (bi, hi) = (bh / h, bh % h);
            let bias = bias.map(|b| b.tile((bi, hi), (sq, sk), start));
            unsafe {
                attention_tile(
                    qh,
                    (kp, vp),
                    (sk, skp, d),
                    (start, nominal - start),
                    (bi, hi, h, sq),
                    (scale, bias),
                    dst,
                )
            }
        });
    }
}

/// The output pointer the query tiles share (disjoint rows).
#[derive(Clone, Copy)]
struct SendPtr(*mut bf16);
// SAFETY: tiles write disjoint (row, head) slices.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// One 32-row query tile of one head over all keys.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vl")]
unsafe fn attention_tile(
    qh: &[bf16],
    (kp, vp): (&[u32], &[u32]),
    (sk, skp, d): (usize, usize, usize),
    (start, skip): (usize, usize),
    (bi, hi, h, sq): (usize, usize, usize, usize),
    (scale, bias): (f32, Option<RowBias>),
    dst: SendPtr,
) {
    let _tiles = unsafe { Tiles::load(&Config::new(16, 16)) };
    let (ksteps, vsteps) = (d / 32, skp / 32);
    // Scores, probabilities and the accumulator, each on cache lines.
    let (mut s_line, mut p_line, mut o_line) = (
        OnLine([0f32; 32 * KEYS]),
        OnLine([bf16::ZERO; 32 * KEYS]),
        OnLine([0f32; 32 * MAX_HEAD_DIM]),
    );
    let (s, p, o) = (&mut s_line.0, &mut p_line.0, &mut o_line.0);
    let mut max = [f32::NEG_INFINITY; 32];
    let mut sum = [0f32; 32];
    let a_q = unsafe { qh.as_ptr().add(start * d) }.cast::<u8>();
    let mut k0 = 0;
    while k0 < skp {
        let nk = KEYS.min(skp - k0);
        let valid = nk.min(sk - k0);
        // Scores of the 32 rows against keys k0..k0 + nk, 32 at a time.
        for pair in 0..nk / 32 {
            // The 64-key panels lie as one: 16-key tile t at t·ksteps·256.
            let tile = (k0 + pair * 32) / 16 * ksteps * 256;
            let step = Step {
                a: a_q,
                lda: d * 2,
                b: unsafe { kp.as_ptr().add(tile) }.cast(),
                ldb_tile: ksteps * 1024,
                steps: ksteps,
            };
            unsafe { step.block_at(s.as_mut_ptr().add(pair * 32), KEYS * 4, false) };
        }
        for r in 0..32 {
            let row = &mut s[r * KEYS..r * KEYS + valid];
            let terms = bias.as_ref().map(|b| b.terms(r, k0, valid));
            let m = super::super::fast::scale_max(row, scale, terms);
            let m_new = max[r].max(m);
            let corr = (max[r] - m_new).exp();
            let rs = super::super::expf::exp_sub_sum(row, m_new);
            sum[r] = sum[r] * corr + rs;
            max[r] = m_new;
            if corr != 1.0 {
                o[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= corr);
            }
            let pr = &mut p[r * KEYS..r * KEYS + nk];
            // SAFETY: `pr` holds nk >= valid elements.
            unsafe { to_bf16_row(&s[r * KEYS..r * KEYS + valid], pr.as_mut_ptr()) };
            pr[valid..].fill(bf16::ZERO);
        }
        // o += P · v for these keys, 32 output dims at a time.
        for pair in 0..d / 32 {
            let step = Step {
                a: p.as_ptr().cast(),
                lda: KEYS * 2,
                b: unsafe { vp.as_ptr().add((2 * pair * vsteps + k0 / 32) * 256) }.cast(),
                ldb_tile: vsteps * 1024,
                steps: nk / 32,
            };
            unsafe { step.block_at(o.as_mut_ptr().add(pair * 32), d * 4, true) };
        }
        k0 += nk;
    }
    for r in skip..32 {
        let inv = 1.0 / sum[r];
        let row = &mut o[r * d..(r + 1) * d];
        row.iter_mut().for_each(|x| *x *= inv);
        let at = ((bi * sq + start + r) * h + hi) * d;
        // SAFETY: row (start + r) of head hi, d elements, lies in the
        // output, and only this tile writes it.
        unsafe { to_bf16_row(row, dst.0.add(at)) };
    }
}

/// `src` rounded to bf16 (to nearest even) at `dst`, 16 lanes at a time;
/// written through the pointer, so `dst` may be uninitialised.
///
/// # Safety
/// `dst` must be valid for `src.len()` writes.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn to_bf16_row(src: &[f32], dst: *mut bf16) {
    let n = src.len();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: lanes i..i + 16 are in `src` and, by the caller, `dst`.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(dst.add(i).cast(), h);
        }
        i += 16;
    }
    for (j, &x) in src.iter().enumerate().skip(i) {
        // SAFETY: j < n, within `dst` by the caller.
        unsafe { dst.add(j).write(bf16::from_f32(x)) };
    }
}

/// Packs the panel of columns [n0, n0 + cols) of `wᵀ` (`cols` a multiple
/// of 16) over all of K: for each 16-column tile and each 32-deep k step,
/// 16 rows (k pairs) of 16 words (columns), 1 KiB, in that order. Columns
/// past N are zero. Panels packed one after the other therefore lay out as
/// one wider panel would: tile t of step s at word (t·K/32 + s)·256.
///
/// Each 16x16 block of words is read as 16 row loads of `w` (sequential
/// streams the prefetcher follows; gathers from a cold weight stalled on
/// memory) and transposed in registers.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panel(w: &[bf16], n: usize, k: usize, n0: usize, cols: usize, out: &mut [u32]) {
    let steps = k / 32;
    for ct in 0..cols / 16 {
        let c0 = n0 + ct * 16;
        let valid = n.saturating_sub(c0).min(16);
        for s in 0..steps {
            let mut rows = [_mm512_setzero_si512(); 16];
            for (j, row) in rows.iter_mut().enumerate().take(valid) {
                // SAFETY: row c0 + j < n, words s·16 .. s·16 + 16 in it.
                *row = unsafe { _mm512_loadu_si512(w.as_ptr().add((c0 + j) * k + s * 32).cast()) };
            }
            let t = transpose16(&rows);
            let dst = unsafe { out.as_mut_ptr().add((ct * steps + s) * 256) };
            for (r, v) in t.iter().enumerate() {
                // SAFETY: the tile's 256 words lie within `out`.
                unsafe { _mm512_storeu_si512(dst.add(r * 16).cast(), *v) };
            }
        }
    }
}

/// Packs columns [c0, c0 + 16) of a row-major [K, N] matrix `m` (K = `kn`
/// rows, N = `n` columns) as the right operand of the tile product:
/// `steps` tiles of 16 rows (k pairs) of 16 words, word j of row r
/// holding m[2r][c0 + j] (low half) and m[2r + 1][c0 + j]. Rows past `kn`
/// are zero.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_kn(m: &[bf16], kn: usize, n: usize, c0: usize, steps: usize, out: &mut [u32]) {
    let row = |r: usize| -> __m512i {
        if r < kn {
            // SAFETY: row r < kn, columns c0 .. c0 + 16 <= n.
            let v = unsafe { _mm256_loadu_si256(m.as_ptr().add(r * n + c0).cast()) };
            _mm512_cvtepu16_epi32(v)
        } else {
            _mm512_setzero_si512()
        }
    };
    for s in 0..steps {
        for r in 0..16 {
            let k0 = s * 32 + 2 * r;
            let w = _mm512_or_si512(row(k0), _mm512_slli_epi32::<16>(row(k0 + 1)));
            // SAFETY: word (s·16 + r)·16 .. + 16 lies within `out`.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add((s * 16 + r) * 16).cast(), w) };
        }
    }
}
