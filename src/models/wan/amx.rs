//! bf16 linears and attention on Intel AMX, in the default build:
//! `x · wᵀ + b` for bf16 `x` [M, K] and a bf16 weight `w` [N, K] as loaded,
//! accumulated in f32 by the tile unit (`tdpbf16ps`), written once in bf16
//! or f32; and softmax(q kᵀ / √d) v as a flash-attention pass whose two
//! products run on the tiles (see [`attention`]).
//!
//! Why a kernel of our own: candle 0.11's CPU matmul has no bf16 kernel and
//! the `gemm` crate none either (f16 only), so without the `onednn` feature
//! every bf16 linear widened its weight to f32 per call (0.17x PyTorch's
//! bf16 forward). Rust has no stable AMX intrinsics; the few instructions
//! are written as inline assembly (the tile registers are invisible to the
//! compiler, which never touches them).
//!
//! The product is blocked as AMX wants it: 2x2 tiles of 16x16 f32 in the
//! accumulators (`tmm0..3`), two 16x32 bf16 tiles of `x` read in place
//! (`tmm4`, `tmm5`) and two 32x16 tiles of `wᵀ` (`tmm6`, `tmm7`) in the
//! pair-interleaved ("VNNI") layout the instruction reads. `w`'s rows hold
//! each k pair as one 32-bit word, so that layout is the transpose of `w`
//! read as u32: each worker packs a panel of [`PANEL`] output columns over
//! all of K into its packing buffer (16 row loads and an in-register
//! transpose per 16x16 block of words), then sweeps every
//! 32-row block of `x` over it. Work is split over panels (over rows when
//! there are fewer panels than threads).
//!
//! The packing buffer is per rayon thread and kept between calls, as the
//! `gemm` crate keeps its own: `PANEL · K · 2` bytes, 1.7 MiB for a 14B
//! expert's feed-forward (K = 13,824). It is not an activation.
//!
//! Both are taken where the CPU has AMX-BF16 and AVX512-BF16 and Linux
//! grants the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); `BATON_AMX=0`
//! turns them off, for A/B runs. Elsewhere [`linear_into`] and
//! [`attention`] answer `None` and the callers keep their paths.

use super::fast::{cpu_slice, LinearOperands};
use candle_core::{DType, Result, Tensor};
use half::bf16;

/// Output columns one worker packs and sweeps at a time (a multiple of 32).
pub const PANEL: usize = 64;
/// The largest head dim [`attention`] takes (its per-tile buffers are on
/// the stack).
pub const MAX_HEAD_DIM: usize = 256;

/// Whether bf16 linears run here: the CPU has the tile unit, the kernel
/// grants it, and `BATON_AMX` is not `0`. Asked once per process.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("BATON_AMX").map_or(true, |v| v != "0") && tiles::enable())
}

/// `x · wᵀ + b` with the output in `out` (bf16 or f32): `x` [.., K] and `w`
/// [N, K] both bf16 and on the CPU, K a multiple of 32. `None` when the
/// operands are of another kind or AMX is not [`available`] (the caller
/// keeps its own path).
pub fn linear_into(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    out: DType,
) -> Result<Option<Tensor>> {
    linear_act(x, w, b, out, false)
}

/// tanh-GELU(`x · wᵀ + b`) in `out`, the GELU applied to the f32 sums
/// before the one rounding (the feed-forward's first linear: no separate
/// GELU pass and no pre-activation tensor); `None` as [`linear_into`].
pub fn linear_gelu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    out: DType,
) -> Result<Option<Tensor>> {
    linear_act(x, w, b, out, true)
}

fn linear_act(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    out: DType,
    gelu: bool,
) -> Result<Option<Tensor>> {
    if !available()
        || x.dtype() != DType::BF16
        || w.dtype() != DType::BF16
        || !matches!(out, DType::BF16 | DType::F32)
        || !x.device().is_cpu()
    {
        return Ok(None);
    }
    let Some(ops) = LinearOperands::new(x, w, b, "AMX linear")? else {
        return Ok(None);
    };
    let ((m, k, n), bias, shape) = (ops.mkn, ops.bias, ops.shape);
    if !k.is_multiple_of(32) {
        return Ok(None);
    }
    let (xs, xl) = ops.x.storage_and_layout();
    let (ws, wl) = ops.w.storage_and_layout();
    let (Some(xv), Some(wv)) = (cpu_slice::<bf16>(&xs, xl), cpu_slice::<bf16>(&ws, wl)) else {
        return Ok(None);
    };
    let run = |o: Out| tiles::matmul((xv, m, k), (wv, n), (bias.as_deref(), gelu), o);
    let y = match out {
        DType::BF16 => super::fast::written::<bf16>(m * n, shape, |o| run(Out::Bf16(o)))?,
        _ => super::fast::written::<f32>(m * n, shape, |o| run(Out::F32(o)))?,
    };
    Ok(Some(y))
}

/// Whether [`attention`] takes queries of `sq` rows of head dim `d` over
/// `sk` keys in `dtype` (public for the activation formula).
pub fn takes_attention(dtype: DType, sq: usize, sk: usize, d: usize) -> bool {
    available()
        && dtype == DType::BF16
        && sq >= 32
        && sk > 0
        && d.is_multiple_of(32)
        && d <= MAX_HEAD_DIM
}

/// Bytes [`attention`] holds beyond q, k, v and its output: one head's k
/// and v packed, Sk rounded up to 64 (the per-tile buffers are on the
/// stack).
pub fn attention_working_bytes(sk: usize, d: usize) -> usize {
    2 * sk.div_ceil(64) * 64 * d * 2
}

/// softmax(q kᵀ / √d) v on the tile unit for bf16 q [B, H, Sq, d] and
/// k, v [B, H, Sk, d]: [B, Sq, H·d] in bf16, or `None` where it does not
/// [`takes_attention`] (the caller keeps the fused f32 kernel). The
/// probabilities are rounded to bf16 before P·v, as in PyTorch's bf16
/// attention.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    let d = q.dim(3)?;
    attention_with(q, k, v, 1.0 / (d as f32).sqrt(), None)
}

/// softmax(scale · q kᵀ (+ bias)) v as [`attention`] (umT5's
/// self-attention: no 1/√d, its position bias as a function of distance).
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    bias: Option<&super::flash::DistanceBias>,
) -> Result<Option<Tensor>> {
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    if !q.device().is_cpu()
        || k.dtype() != DType::BF16
        || v.dtype() != DType::BF16
        || !takes_attention(q.dtype(), sq, sk, d)
    {
        return Ok(None);
    }
    if k.dims4()? != (b, h, sk, d) || v.dims4()? != (b, h, sk, d) {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} do not agree",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Some(qv), Some(kv), Some(vv)) = (
        cpu_slice::<bf16>(&qs, ql),
        cpu_slice::<bf16>(&ks, kl),
        cpu_slice::<bf16>(&vs, vl),
    ) else {
        return Ok(None);
    };
    if let Some(bias) = bias {
        if bias.by_distance.len() != h * (sq + sk - 1) || bias.mask.len() != b * sk {
            candle_core::bail!(
                "attention: a distance bias of {} and a mask of {} values for {b}x{h} heads of {sq} queries over {sk} keys",
                bias.by_distance.len(),
                bias.mask.len()
            )
        }
    }
    let shape = vec![b, sq, h * d];
    let o = super::fast::written::<bf16>(b * sq * h * d, shape, |o| {
        tiles::attention(qv, kv, vv, (b, h, sq, sk, d), (scale, bias), o)
    })?;
    Ok(Some(o))
}

/// Where the product goes, [M, N] row-major, every element written.
pub enum Out<'a> {
    Bf16(&'a mut [std::mem::MaybeUninit<bf16>]),
    F32(&'a mut [std::mem::MaybeUninit<f32>]),
}

/// Off x86_64 there is no tile unit.
#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    use half::bf16;
    pub fn enable() -> bool {
        false
    }
    pub fn matmul(
        _: (&[bf16], usize, usize),
        _: (&[bf16], usize),
        _: (Option<&[f32]>, bool),
        _: super::Out,
    ) {
        unreachable!("AMX is never available off x86_64")
    }
    pub fn attention(
        _: &[bf16],
        _: &[bf16],
        _: &[bf16],
        _: (usize, usize, usize, usize, usize),
        _: (f32, Option<&super::super::flash::DistanceBias>),
        _: &mut [std::mem::MaybeUninit<bf16>],
    ) {
        unreachable!("AMX is never available off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The largest |got - want| (got read as f32) and the largest |want|.
    fn max_error(got: &Tensor, want: &Tensor) -> (f32, f32) {
        let max = |t: Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let got = got.to_dtype(DType::F32).unwrap();
        (max((&got - want).unwrap()), max(want.clone()))
    }

    /// Standard normal values rounded to bf16, [b, h, n, d].
    fn randn_bf16(b: usize, h: usize, n: usize, d: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (b, h, n, d), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    }

    /// ‖got − want‖ / ‖want‖, got read as f32.
    fn rel_l2(got: &Tensor, want: &Tensor) -> f32 {
        let got = got.to_dtype(DType::F32).unwrap();
        let sum_sq = |t: Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        (sum_sq((got - want).unwrap()) / sum_sq(want.clone())).sqrt()
    }

    /// The AMX product against the widened f32 product of the same
    /// bf16-rounded operands, at shapes that cover row tails (fewer than 16,
    /// fewer than 32, a partial last block), column tails and both outputs.
    #[test]
    fn matches_the_widened_product() {
        if !available() {
            // Nothing to compare on a CPU without AMX: the callers' paths
            // are the ones their own tests cover.
            assert!(linear_into(
                &Tensor::zeros((2, 32), DType::BF16, &Device::Cpu).unwrap(),
                &Tensor::zeros((4, 32), DType::BF16, &Device::Cpu).unwrap(),
                None,
                DType::BF16
            )
            .unwrap()
            .is_none());
            return;
        }
        let dev = Device::Cpu;
        for &(m, k, n) in &[
            (1, 32, 16),
            (7, 64, 40),
            (20, 96, 64),
            (45, 128, 100),
            (300, 256, 257),
            (64, 1024, 130),
        ] {
            let x = (Tensor::arange(0f32, (m * k) as f32, &dev).unwrap() * 0.37)
                .unwrap()
                .sin()
                .unwrap();
            let x = x.reshape((m, k)).unwrap().to_dtype(DType::BF16).unwrap();
            let w = (Tensor::arange(0f32, (n * k) as f32, &dev).unwrap() * 0.11)
                .unwrap()
                .cos()
                .unwrap();
            let w = w.reshape((n, k)).unwrap().to_dtype(DType::BF16).unwrap();
            let b = (Tensor::arange(0f32, n as f32, &dev).unwrap() * 0.05).unwrap();
            let want = x
                .to_dtype(DType::F32)
                .unwrap()
                .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            for out in [DType::F32, DType::BF16] {
                let got = linear_into(&x, &w, Some(&b), out).unwrap().expect("taken");
                assert_eq!(got.dims(), &[m, n]);
                let (err, scale) = max_error(&got, &want);
                // f32 accumulation in another order; bf16 out adds one rounding.
                let tol = if out == DType::F32 { 1e-5 } else { 4e-3 };
                assert!(
                    err <= tol * scale,
                    "{m}x{k}x{n} {out:?}: max error {err} of {scale}"
                );
            }
            // The fused GELU against candle's tanh GELU of the product.
            let want = want.gelu().unwrap();
            let got = linear_gelu(&x, &w, Some(&b), DType::BF16)
                .unwrap()
                .expect("taken");
            let (err, scale) = max_error(&got, &want);
            assert!(
                err <= 4e-3 * scale,
                "{m}x{k}x{n} GELU: max error {err} of {scale}"
            );
        }
        // Operands the kernel does not take.
        let x = Tensor::zeros((4, 48), DType::BF16, &dev).unwrap();
        let w = Tensor::zeros((8, 48), DType::BF16, &dev).unwrap();
        assert!(
            linear_into(&x, &w, None, DType::BF16).unwrap().is_none(),
            "K = 48"
        );
        let x = Tensor::zeros((4, 32), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((8, 32), DType::BF16, &dev).unwrap();
        assert!(
            linear_into(&x, &w, None, DType::BF16).unwrap().is_none(),
            "f32 x"
        );
        let q = Tensor::zeros((1, 1, 31, 64), DType::BF16, &dev).unwrap();
        assert!(
            attention(&q, &q, &q).unwrap().is_none(),
            "fewer than 32 queries"
        );
        let q = Tensor::zeros((1, 1, 64, 48), DType::BF16, &dev).unwrap();
        assert!(attention(&q, &q, &q).unwrap().is_none(), "head dim 48");
    }

    /// The tile attention with a scale other than 1/√d and a distance bias
    /// with padded keys against the fused f32 kernel on the same bf16
    /// inputs.
    #[test]
    fn biased_attention_matches_the_fused_kernel() {
        let (b, h, sq, sk, d) = (2, 3, 70, 300, 64);
        let mk = |n: usize| randn_bf16(b, h, n, d);
        let (q, k, v) = (mk(sq), mk(sk), mk(sk));
        let (by_distance, mask) = super::super::flash::test_bias(b, h, sq, sk);
        let bias = super::super::flash::DistanceBias {
            by_distance: &by_distance,
            mask: &mask,
        };
        let got = attention_with(&q, &k, &v, 0.125, Some(&bias)).unwrap();
        if !available() {
            assert!(got.is_none());
            return;
        }
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want =
            super::super::flash::attention_fused_with(&f(&q), &f(&k), &f(&v), 0.125, Some(bias))
                .unwrap();
        let rel = rel_l2(&got.expect("taken"), &want);
        // bf16 probabilities and a bf16 output, as without a bias.
        assert!(rel < 5e-3, "rel. L2 {rel}");
    }

    /// The tile attention against the chunked f32 reference on the same
    /// bf16 inputs: query tails (a last tile overlapping the one before),
    /// key counts below, at and past a 64-key panel and a 256-key step,
    /// head dims 32 to 128, two batches.
    #[test]
    fn attention_matches_the_chunked_reference() {
        let dev = Device::Cpu;
        if !available() {
            let q = Tensor::zeros((1, 1, 64, 64), DType::BF16, &dev).unwrap();
            assert!(attention(&q, &q, &q).unwrap().is_none());
            return;
        }
        for &(b, h, sq, sk, d) in &[
            (1, 2, 32, 5, 64),
            (1, 1, 64, 64, 64),
            (1, 1, 32, 256, 64),
            (1, 2, 40, 300, 64),
            (1, 3, 96, 77, 128),
            (2, 2, 33, 512, 32),
            (1, 1, 130, 600, 128),
        ] {
            let mk = |n: usize| randn_bf16(b, h, n, d);
            let (q, k, v) = (mk(sq), mk(sk), mk(sk));
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = super::super::attention::attention_chunked(&f(&q), &f(&k), &f(&v), 1 << 30)
                .unwrap();
            let got = attention(&q, &k, &v).unwrap().expect("taken");
            assert_eq!(got.dims(), want.dims());
            let rel = rel_l2(&got, &want);
            // bf16 probabilities and a bf16 output: ~2e-3 measured.
            assert!(rel < 5e-3, "{b}x{h}x{sq}x{sk}x{d}: rel. L2 {rel}");
        }
    }
}
