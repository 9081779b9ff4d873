//! f32 linears on AVX-512, in the default build: `x · wᵀ + b` (then the
//! tanh GELU, for the feed-forward) for f32 `x` [M, K] and an f32 weight
//! `w` [N, K] as loaded, written once into a fresh output.
//!
//! Why not candle's `Linear`: its matmul (the `gemm` crate) runs at the
//! same speed as this kernel on one product, but the layer around it does
//! not. The bias is a second, single-threaded pass over the output
//! (`broadcast_add`), with a second output tensor; the GELU is a third. In
//! the f32 DiT forward those passes and the page faults of the extra
//! outputs took ~40% of the "matmul" span (see the README's speed table).
//!
//! The kernel is the classic register-blocked one: 14 rows of `x` times a
//! panel of 32 output columns, the 28 accumulators in zmm registers, each k
//! step two loads of the packed panel and 14 broadcasts of `x` read in
//! place. Each worker packs a panel of `wᵀ` (K x 32, 16x16 in-register
//! transposes of 16 row loads) into its packing buffer, kept per thread as
//! the AMX kernel keeps its own (32·K·4 bytes, 1.7 MiB at K = 13,824), then
//! sweeps every row block over all of K. Blocking K so the panel stays in
//! L1 measured slower here (the panel streams well from L2). Work is split
//! over panels, or over rows when there are fewer panels than threads.
//!
//! Taken where the CPU has AVX-512F; `BATON_SGEMM=0` turns it off, for A/B
//! runs. Elsewhere [`linear`] answers `None` and the caller keeps candle's.

use super::fast::{cpu_slice, LinearOperands};
use candle_core::{DType, Result, Tensor};

/// Output columns per packed panel (two zmm registers).
const NR: usize = 32;
/// Rows of `x` per register block (28 of the 32 zmm registers accumulate).
const MR: usize = 14;
const _: () = assert!(MR == 14, "Block::sums14 is written for 14 rows");

/// Whether f32 linears run here: the CPU has AVX-512F and `BATON_SGEMM` is
/// not `0`. Asked once per process.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("BATON_SGEMM").map_or(true, |v| v != "0") && kernel::detected()
    })
}

/// `x · wᵀ + b`, then the tanh GELU when `gelu`, in f32: `x` [.., K] and
/// `w` [N, K] f32 on the CPU, `b` [N] any float dtype. `None` for other
/// operands or where the kernel is not [`available`].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, gelu: bool) -> Result<Option<Tensor>> {
    if !available() || x.dtype() != DType::F32 || w.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let Some(ops) = LinearOperands::new(x, w, b, "f32 linear")? else {
        return Ok(None);
    };
    let ((m, k, n), bias, shape) = (ops.mkn, ops.bias, ops.shape);
    let (xs, xl) = ops.x.storage_and_layout();
    let (ws, wl) = ops.w.storage_and_layout();
    let (Some(xv), Some(wv)) = (cpu_slice::<f32>(&xs, xl), cpu_slice::<f32>(&ws, wl)) else {
        return Ok(None);
    };
    let y = super::fast::written::<f32>(m * n, shape, |o| {
        kernel::matmul((xv, m, k), (wv, n), (bias.as_deref(), gelu), o)
    })?;
    Ok(Some(y))
}

/// `s` [rows, n] = `alpha` · q [rows, d] · kᵀ for keys `k` [n, d], on the
/// calling thread: the fused attention's scores (`super::flash`). `false`
/// where the kernel is not [`available`] (the caller multiplies instead).
pub fn tile_scores(
    q: &[f32],
    k: &[f32],
    s: &mut [f32],
    dims: (usize, usize, usize),
    alpha: f32,
) -> bool {
    available() && {
        kernel::tile_qk(q, k, s, dims, alpha);
        true
    }
}

/// `acc` [rows, d] += p [rows, n] · v [n, d] on the calling thread, v read
/// in place: the fused attention's update. `false` as [`tile_scores`].
pub fn tile_update(p: &[f32], v: &[f32], acc: &mut [f32], dims: (usize, usize, usize)) -> bool {
    available() && {
        kernel::tile_pv(p, v, acc, dims);
        true
    }
}

/// Off x86_64 there is no AVX-512.
#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub fn detected() -> bool {
        false
    }
    pub fn matmul(
        _: (&[f32], usize, usize),
        _: (&[f32], usize),
        _: (Option<&[f32]>, bool),
        _: &mut [std::mem::MaybeUninit<f32>],
    ) {
        unreachable!("sgemm::available() is false off x86_64")
    }
    pub fn tile_qk(_: &[f32], _: &[f32], _: &mut [f32], _: (usize, usize, usize), _: f32) {
        unreachable!("sgemm::available() is false off x86_64")
    }
    pub fn tile_pv(_: &[f32], _: &[f32], _: &mut [f32], _: (usize, usize, usize)) {
        unreachable!("sgemm::available() is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
/// One k step of [`Block::sums14`]'s loop as assembly text: B's two
/// registers from `$b`, then each of the 14 rows broadcast (at byte
/// offset `$off` past its pointer) and multiplied into its two
/// accumulators (zmm0-13, zmm14-27).
macro_rules! step14 {
    ($off:literal, $b:literal) => {
        concat!(
            "vmovups zmm28, [",
            $b,
            "]\n",
            "vmovups zmm29, [",
            $b,
            " + 64]\n",
            "vbroadcastss zmm30, dword ptr [{r0}",
            $off,
            "]\n",
            "vfmadd231ps zmm0, zmm30, zmm28\n",
            "vfmadd231ps zmm14, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r0} + {l}",
            $off,
            "]\n",
            "vfmadd231ps zmm1, zmm31, zmm28\n",
            "vfmadd231ps zmm15, zmm31, zmm29\n",
            "vbroadcastss zmm30, dword ptr [{r0} + {l}*2",
            $off,
            "]\n",
            "vfmadd231ps zmm2, zmm30, zmm28\n",
            "vfmadd231ps zmm16, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r3}",
            $off,
            "]\n",
            "vfmadd231ps zmm3, zmm31, zmm28\n",
            "vfmadd231ps zmm17, zmm31, zmm29\n",
            "vbroadcastss zmm30, dword ptr [{r3} + {l}",
            $off,
            "]\n",
            "vfmadd231ps zmm4, zmm30, zmm28\n",
            "vfmadd231ps zmm18, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r3} + {l}*2",
            $off,
            "]\n",
            "vfmadd231ps zmm5, zmm31, zmm28\n",
            "vfmadd231ps zmm19, zmm31, zmm29\n",
            "vbroadcastss zmm30, dword ptr [{r6}",
            $off,
            "]\n",
            "vfmadd231ps zmm6, zmm30, zmm28\n",
            "vfmadd231ps zmm20, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r6} + {l}",
            $off,
            "]\n",
            "vfmadd231ps zmm7, zmm31, zmm28\n",
            "vfmadd231ps zmm21, zmm31, zmm29\n",
            "vbroadcastss zmm30, dword ptr [{r6} + {l}*2",
            $off,
            "]\n",
            "vfmadd231ps zmm8, zmm30, zmm28\n",
            "vfmadd231ps zmm22, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r9}",
            $off,
            "]\n",
            "vfmadd231ps zmm9, zmm31, zmm28\n",
            "vfmadd231ps zmm23, zmm31, zmm29\n",
            "vbroadcastss zmm30, dword ptr [{r9} + {l}",
            $off,
            "]\n",
            "vfmadd231ps zmm10, zmm30, zmm28\n",
            "vfmadd231ps zmm24, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r9} + {l}*2",
            $off,
            "]\n",
            "vfmadd231ps zmm11, zmm31, zmm28\n",
            "vfmadd231ps zmm25, zmm31, zmm29\n",
            "vbroadcastss zmm30, dword ptr [{r12}",
            $off,
            "]\n",
            "vfmadd231ps zmm12, zmm30, zmm28\n",
            "vfmadd231ps zmm26, zmm30, zmm29\n",
            "vbroadcastss zmm31, dword ptr [{r12} + {l}",
            $off,
            "]\n",
            "vfmadd231ps zmm13, zmm31, zmm28\n",
            "vfmadd231ps zmm27, zmm31, zmm29\n",
        )
    };
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::super::fast::{mask16, Lined};
    use super::{MR, NR};
    use rayon::prelude::*;
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::mem::MaybeUninit;

    pub fn detected() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    thread_local! {
        /// One panel of wᵀ, K x [`NR`], per rayon thread (kept between calls).
        static PACK: RefCell<Lined<f32>> = const { RefCell::new(Lined::new()) };
    }

    /// The output, shared by workers that write disjoint blocks.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: workers write disjoint (row, column) blocks.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    impl Out {
        /// Element `i` (a method, so closures capture the `Sync` wrapper
        /// rather than its raw pointer field).
        fn at(self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }

    /// `x · wᵀ (+ bias) (then GELU)` for `x` [M, K] and `w` [N, K] into
    /// `out` [M, N], every element written.
    pub fn matmul(
        (x, m, k): (&[f32], usize, usize),
        (w, n): (&[f32], usize),
        (bias, gelu): (Option<&[f32]>, bool),
        out: &mut [MaybeUninit<f32>],
    ) {
        assert!(
            x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
            "f32 linear: bad operands"
        );
        assert!(detected(), "f32 linear: no AVX-512F");
        let dst = Out(out.as_mut_ptr().cast());
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads().max(1);
        // Over panels when there are enough to share; otherwise over rows,
        // each worker packing every panel.
        let by_rows = panels < 2 * threads && m >= 2 * MR;
        let groups = if by_rows {
            threads.min(m / MR)
        } else {
            threads.min(panels)
        };
        (0..groups).into_par_iter().for_each(|g| {
            let (p0, p1, r0, r1) = if by_rows {
                (0, panels, m * g / groups, m * (g + 1) / groups)
            } else {
                (panels * g / groups, panels * (g + 1) / groups, 0, m)
            };
            PACK.with(|b| {
                let mut kept = b.borrow_mut();
                let pack = kept.slice(NR * k);
                for p in p0..p1 {
                    let (n0, cols) = (p * NR, (n - p * NR).min(NR));
                    let ep = Epilogue {
                        alpha: 1.0,
                        bias: bias.map(|b| b[n0..].as_ptr()),
                        gelu,
                        accumulate: false,
                    };
                    // SAFETY: AVX-512F was detected above; the pointers
                    // below stay inside x, w, the bias and the output,
                    // whose sizes were checked.
                    unsafe {
                        pack_panel(w, k, n0, cols, pack);
                        let a = x[r0 * k..].as_ptr();
                        let c = dst.at(r0 * n + n0);
                        sweep((a, k), (pack.as_ptr(), NR), k, r1 - r0, (c, n, cols), &ep);
                    }
                }
            });
        });
    }

    /// `s` [rows, n] = `alpha` · q [rows, d] · kᵀ for a tile of keys
    /// `k` [n, d], on this thread (the flash attention's scores).
    pub fn tile_qk(
        q: &[f32],
        k: &[f32],
        s: &mut [f32],
        (rows, n, d): (usize, usize, usize),
        alpha: f32,
    ) {
        assert!(q.len() >= rows * d && k.len() >= n * d && s.len() >= rows * n);
        assert!(detected(), "f32 tile: no AVX-512F");
        let ep = Epilogue {
            alpha,
            bias: None,
            gelu: false,
            accumulate: false,
        };
        PACK.with(|b| {
            let mut kept = b.borrow_mut();
            let pack = kept.slice(NR * d);
            for n0 in (0..n).step_by(NR) {
                let cols = (n - n0).min(NR);
                // SAFETY: AVX-512F was detected; the bounds were checked.
                unsafe {
                    pack_panel(k, d, n0, cols, pack);
                    let c = s.as_mut_ptr().add(n0);
                    sweep(
                        (q.as_ptr(), d),
                        (pack.as_ptr(), NR),
                        d,
                        rows,
                        (c, n, cols),
                        &ep,
                    );
                }
            }
        });
    }

    /// `acc` [rows, d] += p [rows, n] · v [n, d], on this thread (the flash
    /// attention's update): v's rows are read in place, no packing.
    pub fn tile_pv(p: &[f32], v: &[f32], acc: &mut [f32], (rows, n, d): (usize, usize, usize)) {
        assert!(p.len() >= rows * n && v.len() >= n * d && acc.len() >= rows * d);
        assert!(detected(), "f32 tile: no AVX-512F");
        let ep = Epilogue {
            alpha: 1.0,
            bias: None,
            gelu: false,
            accumulate: true,
        };
        for c0 in (0..d).step_by(NR) {
            let cols = (d - c0).min(NR);
            // SAFETY: AVX-512F was detected; the bounds were checked (the
            // loads of v are masked to the panel's columns).
            unsafe {
                let c = acc.as_mut_ptr().add(c0);
                sweep(
                    (p.as_ptr(), n),
                    (v.as_ptr().add(c0), d),
                    n,
                    rows,
                    (c, d, cols),
                    &ep,
                );
            }
        }
    }

    /// What a block does with its sums: `alpha · sums (+ bias) (then
    /// GELU)`, added to what `c` holds when `accumulate`.
    struct Epilogue {
        alpha: f32,
        bias: Option<*const f32>,
        gelu: bool,
        accumulate: bool,
    }

    /// `rows` rows of A (`a`, row stride `lda`) against one panel of B over
    /// `k` steps (`b`, step stride `ldb`: [`NR`] packed, or a row-major
    /// matrix read in place) into `c` (row stride `ldc`, `cols` ≤ [`NR`]
    /// columns), in blocks of [`MR`] rows and one shorter block at the end.
    #[target_feature(enable = "avx512f")]
    unsafe fn sweep(
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        k: usize,
        rows: usize,
        (c, ldc, cols): (*mut f32, usize, usize),
        ep: &Epilogue,
    ) {
        let mut r = 0;
        while r < rows {
            let blk = Block {
                // SAFETY: row r < rows of A and of C.
                a: unsafe { a.add(r * lda) },
                lda,
                b,
                ldb,
                k,
                c: unsafe { c.add(r * ldc) },
                ldc,
                cols,
            };
            unsafe { blk.run((rows - r).min(MR), ep) };
            r += MR;
        }
    }

    /// One register block: rows of A from `a` (stride `lda`) against B from
    /// `b` (stride `ldb` per step) over `k` steps, into `c` (stride `ldc`),
    /// `cols` (≤ [`NR`]) columns.
    struct Block {
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    }

    impl Block {
        #[target_feature(enable = "avx512f")]
        unsafe fn run(&self, rows: usize, ep: &Epilogue) {
            let masks = (mask16(self.cols), mask16(self.cols.saturating_sub(16)));
            // SAFETY (all arms): the block's rows and columns lie in A, B
            // and C (the caller's promise).
            macro_rules! rows {
                ($($r:literal)*) => {
                    match rows {
                        $($r => unsafe {
                            let (acc0, acc1) = self.sums::<$r>(masks);
                            self.store(&acc0, &acc1, masks, ep)
                        },)*
                        _ => unreachable!("a block has 1 to {MR} rows"),
                    }
                };
            }
            if rows == MR && self.cols == NR {
                // SAFETY: as below.
                unsafe {
                    let (acc0, acc1) = self.sums14();
                    return self.store(&acc0, &acc1, masks, ep);
                }
            }
            rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
        }

        /// The sums of a block of `R` rows (a full block takes
        /// [`Self::sums14`]).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn sums<const R: usize>(&self, (m0, m1): (u16, u16)) -> ([__m512; R], [__m512; R]) {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            let (mut a, mut b) = (self.a, self.b);
            for _ in 0..self.k {
                // SAFETY: a step reads A's column for the block's rows and
                // B's row of the panel's `cols` columns.
                let (b0, b1) = unsafe {
                    (
                        _mm512_maskz_loadu_ps(m0, b),
                        _mm512_maskz_loadu_ps(m1, b.add(16)),
                    )
                };
                for i in 0..R {
                    let v = _mm512_set1_ps(unsafe { *a.add(i * self.lda) });
                    acc0[i] = _mm512_fmadd_ps(v, b0, acc0[i]);
                    acc1[i] = _mm512_fmadd_ps(v, b1, acc1[i]);
                }
                (a, b) = (a.wrapping_add(1), b.wrapping_add(self.ldb));
            }
            (acc0, acc1)
        }

        /// [`Self::sums`] for a full block (14 rows, 32 columns) in
        /// assembly: k unrolled by two, the 14 rows addressed from five base
        /// pointers (row `3j + i` is base `j` plus `i · lda`), so a step
        /// issues its 14 broadcasts and 28 FMAs without a pointer update per
        /// row (the compiled loop spent one add per row and step; with
        /// intrinsics the unrolled form spilled accumulators).
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn sums14(&self) -> ([__m512; 14], [__m512; 14]) {
            let mut acc0 = [_mm512_setzero_ps(); 14];
            let mut acc1 = [_mm512_setzero_ps(); 14];
            let l = self.lda * 4;
            // SAFETY: the 14 rows of A and the k rows of B's 32 columns lie
            // in their buffers (the caller's promise); only they are read.
            unsafe {
                asm!(
                    "test {pairs}, {pairs}",
                    "jz 3f",
                    "2:",
                    step14!("", "{b}"),
                    step14!(" + 4", "{b} + {ldb}"),
                    "add {r0}, 8",
                    "add {r3}, 8",
                    "add {r6}, 8",
                    "add {r9}, 8",
                    "add {r12}, 8",
                    "lea {b}, [{b} + {ldb}*2]",
                    "dec {pairs}",
                    "jnz 2b",
                    "3:",
                    "test {odd}, {odd}",
                    "jz 4f",
                    step14!("", "{b}"),
                    "4:",
                    r0 = inout(reg) self.a => _,
                    r3 = inout(reg) self.a.add(3 * self.lda) => _,
                    r6 = inout(reg) self.a.add(6 * self.lda) => _,
                    r9 = inout(reg) self.a.add(9 * self.lda) => _,
                    r12 = inout(reg) self.a.add(12 * self.lda) => _,
                    b = inout(reg) self.b => _,
                    l = in(reg) l,
                    ldb = in(reg) self.ldb * 4,
                    pairs = inout(reg) self.k / 2 => _,
                    odd = in(reg) self.k % 2,
                    inout("zmm0") acc0[0],
                    inout("zmm1") acc0[1],
                    inout("zmm2") acc0[2],
                    inout("zmm3") acc0[3],
                    inout("zmm4") acc0[4],
                    inout("zmm5") acc0[5],
                    inout("zmm6") acc0[6],
                    inout("zmm7") acc0[7],
                    inout("zmm8") acc0[8],
                    inout("zmm9") acc0[9],
                    inout("zmm10") acc0[10],
                    inout("zmm11") acc0[11],
                    inout("zmm12") acc0[12],
                    inout("zmm13") acc0[13],
                    inout("zmm14") acc1[0],
                    inout("zmm15") acc1[1],
                    inout("zmm16") acc1[2],
                    inout("zmm17") acc1[3],
                    inout("zmm18") acc1[4],
                    inout("zmm19") acc1[5],
                    inout("zmm20") acc1[6],
                    inout("zmm21") acc1[7],
                    inout("zmm22") acc1[8],
                    inout("zmm23") acc1[9],
                    inout("zmm24") acc1[10],
                    inout("zmm25") acc1[11],
                    inout("zmm26") acc1[12],
                    inout("zmm27") acc1[13],
                    out("zmm28") _,
                    out("zmm29") _,
                    out("zmm30") _,
                    out("zmm31") _,
                    options(nostack, readonly),
                );
            }
            (acc0, acc1)
        }

        /// `alpha · sums (+ bias) (then GELU) (+ C)` into C's rows.
        #[target_feature(enable = "avx512f")]
        unsafe fn store<const R: usize>(
            &self,
            acc0: &[__m512; R],
            acc1: &[__m512; R],
            (m0, m1): (u16, u16),
            ep: &Epilogue,
        ) {
            let (bb0, bb1) = match ep.bias {
                // SAFETY: the bias holds the panel's `cols` values.
                Some(p) => unsafe {
                    (
                        _mm512_maskz_loadu_ps(m0, p),
                        _mm512_maskz_loadu_ps(m1, p.add(16)),
                    )
                },
                None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            };
            let alpha = _mm512_set1_ps(ep.alpha);
            for i in 0..R {
                // SAFETY: row i's `cols` columns lie in C.
                let c = unsafe { self.c.add(i * self.ldc) };
                let (mut v0, mut v1) = (
                    _mm512_fmadd_ps(acc0[i], alpha, bb0),
                    _mm512_fmadd_ps(acc1[i], alpha, bb1),
                );
                if ep.accumulate {
                    // SAFETY: as above.
                    unsafe {
                        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c.add(16)));
                    }
                }
                if ep.gelu {
                    (v0, v1) = (
                        super::super::fast::gelu512(v0),
                        super::super::fast::gelu512(v1),
                    );
                }
                // SAFETY: as above.
                unsafe {
                    _mm512_mask_storeu_ps(c, m0, v0);
                    _mm512_mask_storeu_ps(c.add(16), m1, v1);
                }
            }
        }
    }

    /// Packs wᵀ for output columns [n0, n0 + cols) over all of K into
    /// `out` [K][`NR`] (columns past `cols` zero): 16x16 blocks read as 16
    /// row loads (K tails masked) and transposed in registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_panel(w: &[f32], k: usize, n0: usize, cols: usize, out: &mut [f32]) {
        assert!(out.len() >= k * NR && w.len() >= (n0 + cols) * k);
        for half in 0..NR / 16 {
            let c0 = half * 16;
            let valid = cols.saturating_sub(c0).min(16);
            let mut k0 = 0;
            while k0 < k {
                let len = (k - k0).min(16);
                let km = mask16(len);
                let mut rows = [_mm512_setzero_si512(); 16];
                for (j, row) in rows.iter_mut().enumerate().take(valid) {
                    // SAFETY: row n0 + c0 + j < n0 + cols, words k0 .. k0 + len.
                    *row = unsafe {
                        _mm512_maskz_loadu_epi32(km, w.as_ptr().add((n0 + c0 + j) * k + k0).cast())
                    };
                }
                let t = super::super::fast::transpose16(&rows);
                for (r, v) in t.iter().enumerate().take(len) {
                    // SAFETY: step k0 + r < K, columns c0 .. c0 + 16 ≤ NR.
                    unsafe {
                        _mm512_storeu_si512(out.as_mut_ptr().add((k0 + r) * NR + c0).cast(), *v)
                    };
                }
                k0 += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    fn seq(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Against candle's `Linear` (the `gemm` crate) and its GELU, over row
    /// counts below, at and off the 14-row block, column tails off the
    /// 32-column panel, K off the 16-word pack step, with and without bias.
    #[test]
    fn matches_candles_linear() {
        let dev = Device::Cpu;
        for &(m, k, n, with_bias) in &[
            (1, 64, 32, true),
            (5, 17, 40, false),
            (14, 128, 96, true),
            (28, 37, 64, true),
            (29, 100, 33, true),
            (77, 256, 200, false),
            (300, 96, 48, true),
        ] {
            let x = Tensor::from_vec(seq(m * k, 1), (1, m, k), &dev).unwrap();
            let w = Tensor::from_vec(seq(n * k, 2), (n, k), &dev).unwrap();
            let b = with_bias.then(|| Tensor::from_vec(seq(n, 3), n, &dev).unwrap());
            let want = candle_nn::Linear::new(w.clone(), b.clone())
                .forward(&x)
                .unwrap();
            for gelu in [false, true] {
                let got = linear(&x, &w, b.as_ref(), gelu).unwrap();
                if !available() {
                    assert!(
                        got.is_none(),
                        "declines without AVX-512F or with BATON_SGEMM=0"
                    );
                    continue;
                }
                let got = got.expect("AVX-512F takes f32 operands");
                assert_eq!(got.dims(), &[1, m, n]);
                let want = if gelu {
                    super::super::fast::gelu(&want).unwrap()
                } else {
                    want.clone()
                };
                let diff = (got - &want).unwrap().abs().unwrap();
                let err = diff
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let scale = scale.to_scalar::<f32>().unwrap();
                assert!(
                    err <= 1e-5 * scale.max(1.0),
                    "{m}x{k}x{n} gelu {gelu}: {err} of {scale}"
                );
            }
        }
    }

    #[test]
    fn declines_other_operands() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 8), DType::BF16, &dev).unwrap();
        let w = Tensor::zeros((8, 8), DType::BF16, &dev).unwrap();
        assert!(linear(&x, &w, None, false).unwrap().is_none());
        let x = Tensor::zeros((4, 9), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((8, 8), DType::F32, &dev).unwrap();
        assert!(
            linear(&x, &w, None, false).unwrap().is_none(),
            "K mismatch is the caller's error"
        );
    }
}
