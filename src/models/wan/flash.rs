//! Fused, tiled attention on the CPU (flash-attention style): for each head
//! and tile of query rows, the keys are visited tile by tile with an online
//! softmax (running row maximum and sum), so no score matrix is ever
//! materialised. Work items (batch x head x query tile) run in parallel on
//! rayon's pool; each holds a few tiles of f32 (tens of KiB), whatever the
//! sequence length. The tile products run on the calling thread, on our
//! AVX-512 kernel (`super::sgemm`) where the CPU has it, else on the `gemm`
//! crate (the one candle's CPU matmul uses).
//!
//! `super::attention::attention_chunked` stays as the reference (and the
//! path on other devices); the tests compare the two.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::expf::exp_sub_sum;

/// Query rows per work item.
pub const Q_TILE: usize = 64;
/// Keys per online-softmax step.
pub const K_TILE: usize = 256;

/// Bytes of working memory the kernel holds at once beyond its output:
/// one work item's tiles (scores [rows, K_TILE], accumulator [rows, d],
/// row maxima and sums) per pool thread busy, for `items` work items, and
/// (without `super::sgemm`) the buffer the `gemm` crate allocates inside
/// each tile product to pack its left operand (rows x the inner dimension,
/// K_TILE for p·v or d for q·kᵀ, in f32, plus its alignment slack,
/// measured under 4 KiB).
pub fn working_bytes(batch_heads: usize, q_tokens: usize, head_dim: usize) -> usize {
    let rows = Q_TILE.min(q_tokens);
    let items = batch_heads * q_tokens.div_ceil(Q_TILE);
    let busy = rayon::current_num_threads().min(items);
    // Our kernel packs into its kept per-thread buffer; the `gemm` crate
    // (without AVX-512) allocates per product.
    let gemm_pack = if super::sgemm::available() {
        0
    } else {
        4 * rows * K_TILE.max(head_dim) + 4096
    };
    busy * (4 * (rows * K_TILE + rows * head_dim + 2 * rows) + gemm_pack)
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
    let d = q.dim(3)?;
    attention_fused_with(q, k, v, 1.0 / (d as f32).sqrt(), None)
}

/// An additive score bias of T5's kind, a function of the key's distance
/// from the query per head plus a mask per key: the score of query i and
/// key j in head h of batch b gains `by_distance[h][j - i + Sq - 1] +
/// mask[b][j]`. Built in O(H·(Sq + Sk) + B·Sk), where the bias tensor it
/// replaces is [B, H, Sq, Sk].
pub struct DistanceBias<'a> {
    /// [H, Sq + Sk - 1].
    pub by_distance: &'a [f32],
    /// [B, Sk] (0, or a large negative number for a padded key).
    pub mask: &'a [f32],
}

/// softmax(scale · q kᵀ (+ bias)) v per head, as [`attention_fused`]
/// (umT5's self-attention: no 1/√d, a [`DistanceBias`]).
pub fn attention_fused_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    bias: Option<DistanceBias>,
) -> Result<Tensor> {
    let (q_tile, k_tile) = (Q_TILE, K_TILE);
    let dtype = q.dtype();
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    if let Some(bias) = &bias {
        if bias.by_distance.len() != h * (sq + sk - 1) || bias.mask.len() != b * sk {
            candle_core::bail!(
                "attention: a distance bias of {} and a mask of {} values for {b}x{h} heads of {sq} queries over {sk} keys",
                bias.by_distance.len(),
                bias.mask.len()
            )
        }
    }
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
        (0..b * h * tiles).into_par_iter().for_each(|item| {
            let (bh, tile) = (item / tiles, item % tiles);
            let r0 = tile * q_tile;
            let rows = q_tile.min(sq - r0);
            let qt = &qs[(bh * sq + r0) * d..(bh * sq + r0 + rows) * d];
            let kh = &ks[bh * sk * d..(bh + 1) * sk * d];
            let vh = &vs[bh * sk * d..(bh + 1) * sk * d];
            let (bi, hi) = (bh / h, bh % h);
            let row_bias = bias.as_ref().map(|bias| bias.tile((bi, hi), (sq, sk), r0));
            let o = tile_attention(qt, kh, vh, [rows, sk, d, k_tile], scale, row_bias);
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

/// A [`DistanceBias`] seen from one query tile of one head: row r, key j
/// gains `by_distance[first - r + j] + mask[j]` (also the AMX kernel's).
pub(super) struct RowBias<'a> {
    by_distance: &'a [f32],
    first: usize,
    mask: &'a [f32],
}

impl RowBias<'_> {
    /// Row r's two bias terms for keys k0 .. k0 + n.
    pub(super) fn terms(&self, r: usize, k0: usize, n: usize) -> (&[f32], &[f32]) {
        let at = self.first - r + k0;
        (&self.by_distance[at..at + n], &self.mask[k0..k0 + n])
    }
}

impl DistanceBias<'_> {
    /// The bias of the tile of queries from row `r0` of head `hi` in batch
    /// `bi`: row r's keys start at distance -(r0 + r), index
    /// Sq - 1 - r0 - r of its head's table.
    pub(super) fn tile(
        &self,
        (bi, hi): (usize, usize),
        (sq, sk): (usize, usize),
        r0: usize,
    ) -> RowBias<'_> {
        let span = sq + sk - 1;
        RowBias {
            by_distance: &self.by_distance[hi * span..(hi + 1) * span],
            first: sq - 1 - r0,
            mask: &self.mask[bi * sk..(bi + 1) * sk],
        }
    }
}

/// One query tile against all keys of its head: q [rows, d], k/v [sk, d].
/// Returns the normalised output [rows, d].
fn tile_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [rows, sk, d, k_tile]: [usize; 4],
    scale: f32,
    bias: Option<RowBias>,
) -> Vec<f32> {
    let mut s = vec![0f32; rows * k_tile];
    let mut acc = vec![0f32; rows * d];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut k0 = 0;
    while k0 < sk {
        let n = k_tile.min(sk - k0);
        // s [rows, n] = scale * q [rows, d] . k[k0..k0+n]^T
        let kt = &k[k0 * d..(k0 + n) * d];
        if !super::sgemm::tile_scores(q, kt, &mut s, (rows, n, d), scale) {
            // SAFETY: the strides describe in-bounds row-major views of
            // the slices (q [rows, d], k tile [n, d] read transposed, s
            // [rows, n]).
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
                    kt.as_ptr(),
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
        }
        for r in 0..rows {
            let row = &mut s[r * n..(r + 1) * n];
            let terms = bias.as_ref().map(|b| b.terms(r, k0, n));
            let m_new = super::fast::scale_max(row, 1.0, terms).max(max[r]);
            let corr = (max[r] - m_new).exp();
            max[r] = m_new;
            let rs = exp_sub_sum(row, m_new);
            sum[r] = sum[r] * corr + rs;
            if corr != 1.0 {
                acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= corr);
            }
        }
        // acc [rows, d] += p [rows, n] . v[k0..k0+n] [n, d]
        let vt = &v[k0 * d..(k0 + n) * d];
        if !super::sgemm::tile_update(&s, vt, &mut acc, (rows, n, d)) {
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
                    vt.as_ptr(),
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
        }
        k0 += n;
    }
    for r in 0..rows {
        let inv = 1.0 / sum[r];
        acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= inv);
    }
    acc
}

/// A distance bias for tests: [H, Sq + Sk - 1] values in [-1.5, 1.5] and
/// a mask that pads every seventh key.
#[cfg(test)]
pub(super) fn test_bias(b: usize, h: usize, sq: usize, sk: usize) -> (Vec<f32>, Vec<f32>) {
    let by_distance = (0..h * (sq + sk - 1))
        .map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.5)
        .collect();
    let mask = (0..b * sk)
        .map(|i| if i % 7 == 3 { f32::MIN } else { 0.0 })
        .collect();
    (by_distance, mask)
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

    /// A distance bias against the plain computation: scores with the bias
    /// tensor it stands for built in full, softmax, then v; with padded
    /// keys (a large negative mask) and a scale other than 1/√d.
    #[test]
    fn distance_bias_matches_the_full_bias() {
        let dev = Device::Cpu;
        for (b, h, sq, sk, d) in [(1, 2, 7, 5, 16), (2, 3, 70, 300, 32)] {
            let q = Tensor::randn(0f32, 1.0, (b, h, sq, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, h, sk, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, h, sk, d), &dev).unwrap();
            let span = sq + sk - 1;
            let (by_distance, mask) = test_bias(b, h, sq, sk);
            let mut full = vec![0f32; b * h * sq * sk];
            for (bi, hi, i, j) in indices(b, h, sq, sk) {
                full[((bi * h + hi) * sq + i) * sk + j] =
                    by_distance[hi * span + j + sq - 1 - i] + mask[bi * sk + j];
            }
            let full = Tensor::from_vec(full, (b, h, sq, sk), &dev).unwrap();
            let scale = 0.7f32;
            let scores =
                ((q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap() + full).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let want = p
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, sq, h * d))
                .unwrap();
            let bias = DistanceBias {
                by_distance: &by_distance,
                mask: &mask,
            };
            let got = attention_fused_with(&q, &k, &v, scale, Some(bias)).unwrap();
            let err = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            let err = err.to_scalar::<f32>().unwrap();
            assert!(err < 1e-5, "{b}x{h}x{sq}x{sk}x{d}: max abs {err}");
        }
    }

    fn indices(b: usize, h: usize, sq: usize, sk: usize) -> Vec<(usize, usize, usize, usize)> {
        let mut v = Vec::new();
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..sq {
                    for j in 0..sk {
                        v.push((bi, hi, i, j));
                    }
                }
            }
        }
        v
    }
}
