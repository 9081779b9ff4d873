//! Scaled dot-product attention in query-row chunks, and the process-wide
//! cap on how many bytes of scores a chunk may hold.
//!
//! It lives apart from `dit.rs` because it is not Wan-specific: the Wan VAE's
//! mid-block attention (`wan_vae::model`) and the activation formula in
//! `super::memory` use the same kernel and the same chunk sizing, `baton
//! bench` reports the cap and tests lower it. `dit.rs` re-exports the public
//! items, so `models::wan::dit::attention` and friends keep working.

use candle_core::{DType, Result, Tensor};

use super::linear::matmul_dtype;

/// Bytes of attention scores (all batches and heads together) held at once;
/// longer query sequences are processed in row chunks, so a 75,600-token
/// 720p forward never materialises its 40 x 75,600 x 75,600 score matrix.
/// Scores and their softmax are both live, so attention holds twice this.
pub const ATTN_SCORE_BYTES: usize = 256 << 20;

static SCORE_CAP: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(ATTN_SCORE_BYTES);

/// The score cap [`attention`] uses now (default [`ATTN_SCORE_BYTES`]).
pub fn attention_score_cap() -> usize {
    SCORE_CAP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the process-wide score cap (at least one query row is always
/// computed): smaller trades speed for memory.
pub fn set_attention_score_cap(bytes: usize) {
    SCORE_CAP.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// Query rows per attention chunk: as many as keep `batch_heads x rows x
/// kv_tokens` scores of `score_dtype` within `cap` bytes (at least one row,
/// at most `q_tokens`).
pub fn attention_chunk_rows(
    batch_heads: usize,
    q_tokens: usize,
    kv_tokens: usize,
    score_dtype: DType,
    cap: usize,
) -> usize {
    let row = (batch_heads * kv_tokens * score_dtype.size_in_bytes()).max(1);
    (cap / row).clamp(1, q_tokens.max(1))
}

/// softmax(q k^T / sqrt(d)) v per head; q [B, H, Sq, d], k/v [B, H, Sk, d]
/// (contiguous). Returns [B, Sq, H * d] in q's dtype.
///
/// On the CPU this is the fused, tiled kernel of [`super::flash`] (no score
/// matrix); elsewhere the chunked path under the score cap.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if q.device().is_cpu() {
        #[cfg(feature = "onednn")]
        if let Some(o) = super::onednn::attention(q, k, v)? {
            return Ok(o);
        }
        return super::flash::attention_fused(q, k, v);
    }
    attention_chunked(q, k, v, attention_score_cap())
}

/// [`attention`] holding at most about `max_score_bytes` of scores at a time
/// (whole query rows, at least one per chunk); the result does not depend on
/// it. Each chunk's output is written straight into one [B, Sq, H, d]
/// buffer, so chunking adds no concatenation copy.
pub fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_score_bytes: usize,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let mm = matmul_dtype(dtype, q.device());
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    let q = (q.to_dtype(mm)? * (1.0 / (d as f64).sqrt()))?;
    let kt = k.to_dtype(mm)?.t()?;
    let v = v.to_dtype(mm)?;
    let rows = attention_chunk_rows(b * h, sq, sk, mm, max_score_bytes);
    let out = Tensor::zeros((b, sq, h, d), mm, q.device())?;
    let mut start = 0;
    while start < sq {
        let n = rows.min(sq - start);
        let qc = q.narrow(2, start, n)?.contiguous()?;
        let p = candle_nn::ops::softmax_last_dim(&qc.matmul(&kt)?)?;
        let o = p.matmul(&v)?.transpose(1, 2)?.contiguous()?;
        out.slice_set(&o, 1, start)?;
        start += n;
    }
    out.reshape((b, sq, h * d))?.to_dtype(dtype)
}

/// [B, S, H * d] -> [B, H, S, d], contiguous.
pub(super) fn split_heads(x: &Tensor, num_heads: usize) -> Result<Tensor> {
    let (b, s, dim) = x.dims3()?;
    x.reshape((b, s, num_heads, dim / num_heads))?
        .transpose(1, 2)?
        .contiguous()
}
