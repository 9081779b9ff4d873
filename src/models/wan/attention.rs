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

/// Bytes of attention scores (all batches and heads together) held at once
/// on the CPU, and the least a card gets; longer query sequences are
/// processed in row chunks, so a 75,600-token 720p forward never
/// materialises its 40 x 75,600 x 75,600 score matrix. Scores and their
/// softmax are both live, so attention holds twice this.
pub const ATTN_SCORE_BYTES: usize = 256 << 20;

/// The most a card's chunks hold, however much is free: past a few GiB a
/// chunk is already a wide GEMM, and more only delays the rest of the
/// forward's allocations.
pub const ATTN_SCORE_BYTES_MAX: usize = 8 << 30;

/// 0: automatic (see [`auto_score_cap`]); else the cap a caller fixed.
static SCORE_CAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The score cap on the CPU now: the fixed one, else [`ATTN_SCORE_BYTES`].
pub fn attention_score_cap() -> usize {
    attention_score_cap_with(None)
}

/// The score cap the chunked path uses on `dev` now: the fixed one, else
/// sized from the device's free memory (a card) or [`ATTN_SCORE_BYTES`].
pub fn attention_score_cap_on(dev: &candle_core::Device) -> usize {
    attention_score_cap_with(device_free_bytes(dev))
}

fn attention_score_cap_with(free: Option<u64>) -> usize {
    match SCORE_CAP.load(std::sync::atomic::Ordering::Relaxed) {
        0 => auto_score_cap(free),
        fixed => fixed,
    }
}

/// Fixes the process-wide score cap (at least one query row is always
/// computed): smaller trades speed for memory. 0 goes back to automatic.
pub fn set_attention_score_cap(bytes: usize) {
    SCORE_CAP.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The automatic cap for a device with `free` bytes free (`None`: the CPU,
/// whose attention is the fused kernel and whose chunked path is the
/// reference): a quarter of the free memory, since scores and softmax are
/// both live and the forward's other activations need the rest, within
/// [`ATTN_SCORE_BYTES`] and [`ATTN_SCORE_BYTES_MAX`]. At 40 heads x 75,600
/// keys in bf16 a 256 MiB cap gives 44 query rows per chunk, ~1,700 thin
/// GEMMs; 8 GiB gives ~1,400 rows, 54 chunks.
pub fn auto_score_cap(free: Option<u64>) -> usize {
    match free {
        None => ATTN_SCORE_BYTES,
        Some(f) => {
            ((f / 4).min(usize::MAX as u64) as usize).clamp(ATTN_SCORE_BYTES, ATTN_SCORE_BYTES_MAX)
        }
    }
}

/// Free bytes on a card (the driver's count), `None` on the CPU.
#[cfg(feature = "cuda")]
fn device_free_bytes(dev: &candle_core::Device) -> Option<u64> {
    match dev {
        candle_core::Device::Cuda(c) => c
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn device_free_bytes(_dev: &candle_core::Device) -> Option<u64> {
    None
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
/// On the CPU: bf16 on the AMX tiles where the CPU has them
/// ([`super::amx::attention`]; it measured faster than oneDNN's), then
/// oneDNN's with the feature (where it takes the shape), else the fused,
/// tiled f32 kernel of [`super::flash`] (none holds a score matrix); on a card bf16 and f16 at head dims 64 and 128 take the fused
/// NVRTC kernel (`flash_cuda`, with the `cuda` feature); everything else
/// the chunked path under the device's score cap
/// ([`attention_score_cap_on`]).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if q.device().is_cpu() {
        if let Some(o) = super::amx::attention(q, k, v)? {
            return Ok(o);
        }
        #[cfg(feature = "onednn")]
        if let Some(o) = super::onednn::attention(q, k, v)? {
            return Ok(o);
        }
        return super::flash::attention_fused(q, k, v);
    }
    #[cfg(feature = "cuda")]
    if super::flash_cuda::takes(q.dtype(), q.dim(3)?, q.device()) {
        if let Some(out) = super::flash_cuda::attention(q, k, v) {
            return Ok(out);
        }
    }
    attention_chunked(q, k, v, attention_score_cap_on(q.device()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_cap_follows_free_memory_within_bounds() {
        assert_eq!(auto_score_cap(None), ATTN_SCORE_BYTES);
        // A quarter of what is free...
        assert_eq!(auto_score_cap(Some(8 << 30)), 2 << 30);
        // ...never below the CPU's cap (one row always runs anyway)...
        assert_eq!(auto_score_cap(Some(100 << 20)), ATTN_SCORE_BYTES);
        // ...nor above the ceiling on a nearly empty 141 GB card.
        assert_eq!(auto_score_cap(Some(139 << 30)), ATTN_SCORE_BYTES_MAX);
        // 14B dims at 75,600 tokens, bf16 scores: rows per chunk grow with the cap.
        let rows = |cap| attention_chunk_rows(40, 75_600, 75_600, DType::BF16, cap);
        assert_eq!(rows(ATTN_SCORE_BYTES), 44);
        assert_eq!(rows(ATTN_SCORE_BYTES_MAX), 1420);
    }
}
