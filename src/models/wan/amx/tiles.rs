//! The x86_64 side of [`super`]: detection, the tile configuration, the
//! packing of `wᵀ`, the 2x2-tile inner loops and the epilogue.

use super::{Out, PANEL};
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
    static PACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
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

pub fn matmul(
    x: &[bf16],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
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
            let pack = &mut *b.borrow_mut();
            pack.resize(PANEL * k / 2, 0);
            // SAFETY: AMX is enabled (callers go through `available`);
            // every pointer below stays inside x, w, the bias, the
            // buffer and the output, whose sizes were checked above.
            unsafe { worker(x, k, w, n, bias, dst, (p0, p1), (r0, r1), pack) }
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
    bias: Option<&[f32]>,
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
    let mut c = [0f32; 32 * 32];
    for p in p0..p1 {
        let n0 = p * PANEL;
        unsafe { pack_panel(w, n, k, n0, pack) };
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
                unsafe { epilogue(&c, first_row..last_row, cols, bias, dst, (start, c0), n) };
            }
            b0 += 32;
        }
    }
}

/// Packs the panel of columns [n0, n0 + PANEL) of `wᵀ` over all of K:
/// for each 16-column tile and each 32-deep k step, 16 rows (k pairs)
/// of 16 words (columns), 1 KiB, in that order. Columns past N are zero.
///
/// Each 16x16 block of words is read as 16 row loads of `w` (sequential
/// streams the prefetcher follows; gathers from a cold weight stalled on
/// memory) and transposed in registers.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panel(w: &[bf16], n: usize, k: usize, n0: usize, out: &mut [u32]) {
    let steps = k / 32;
    for ct in 0..PANEL / 16 {
        let c0 = n0 + ct * 16;
        let valid = n.saturating_sub(c0).min(16);
        for s in 0..steps {
            let mut rows = [_mm512_setzero_si512(); 16];
            for (j, row) in rows.iter_mut().enumerate().take(valid) {
                // SAFETY: row c0 + j < n and words s·16 .. s·16 + 16 of it
                // lie within its K / 2.
                *row = unsafe { _mm512_loadu_si512(w.as_ptr().add((c0 + j) * k + s * 32).cast()) };
            }
            let t = transpose16(&rows);
            let dst = unsafe { out.as_mut_ptr().add((ct * steps + s) * 256) };
            for (r, v) in t.iter().enumerate() {
                // SAFETY: the tile's 256 words lie within the panel buffer.
                unsafe { _mm512_storeu_si512(dst.add(r * 16).cast(), *v) };
            }
        }
    }
}

/// The 16x16 transpose of 32-bit words: out[c] lane r = a[r] lane c.
#[target_feature(enable = "avx512f")]
fn transpose16(a: &[__m512i; 16]) -> [__m512i; 16] {
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

/// One row block against one column pair over `steps` k steps: `a` is
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
        let Step {
            a,
            lda,
            b,
            ldb_tile,
            steps,
        } = *self;
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let (a1, b1) = (a.add(16 * lda), b.add(ldb_tile));
            for s in 0..steps {
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(s * 64),
                    a1 = in(reg) a1.add(s * 64),
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
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c0 = in(reg) t,
                c1 = in(reg) t.add(64),
                c2 = in(reg) t.add(16 * 128),
                c3 = in(reg) t.add(16 * 128 + 64),
                ldc = in(reg) 128usize,
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

/// Rows `rows` of the 32x32 block `c` plus the bias, written at
/// (row0 + r, col0) of the [.., n] output, `cols` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue(
    c: &[f32; 1024],
    rows: std::ops::Range<usize>,
    cols: usize,
    bias: Option<&[f32]>,
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

fn mask16(valid: usize) -> u16 {
    if valid >= 16 {
        u16::MAX
    } else {
        ((1u32 << valid) - 1) as u16
    }
}
