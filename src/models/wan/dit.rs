//! Wan 2.x text-to-video DiT, over the original Wan / ComfyUI key names.
//!
//! The forward is split into a stem (`WanStem::prepare` / `WanStem::finish`) and
//! independent blocks because the runtime streams a 14B expert's blocks from disk
//! one at a time: everything a block needs that is computed once per forward
//! (patch tokens, time modulation, embedded text, RoPE table) lives in
//! [`Prepared`], so a block can be loaded, applied and dropped on its own.
//!
//! Precision follows diffusers' bf16 mode (which is also what the original Wan
//! code does under its f32 autocast): the timestep embedding, every LayerNorm and
//! RMSNorm, RoPE, the `(1 + scale) * x + shift` modulation and the gated residual
//! adds run in f32 whatever the weight dtype; linears and attention run in the
//! weight dtype, and the residual stream is stored in that dtype between ops.
//! With f32 weights everything is f32 and the output matches diffusers to ~1e-6.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::WanConfig;

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

/// The dtype a matmul over `dtype` activations actually runs in on `device`
/// (public for the activation memory formula in `super::memory`).
///
/// candle 0.11's CPU matmul (gemm, no MKL) has no bf16 kernel (it fails with
/// `UnsupportedDTypeForOp(BF16, "matmul")`), so on the CPU bf16 linears and the
/// attention products run in f32 on the bf16-rounded weights and activations,
/// and their outputs are rounded back to bf16. Elsewhere the dtype is kept.
pub fn matmul_dtype(dtype: DType, device: &Device) -> DType {
    if dtype == DType::BF16 && device.is_cpu() {
        DType::F32
    } else {
        dtype
    }
}

/// The dtype activations are computed in for weights held in `weights`:
/// the weights' own, except fp8 resident weights (`dtype: "fp8"`), which
/// compute in the device's bf16 matmul dtype (f32 on the CPU, which has no
/// bf16 matmul; bf16 elsewhere).
pub fn compute_dtype(weights: DType, device: &Device) -> DType {
    if weights == DType::F8E4M3 {
        matmul_dtype(DType::BF16, device)
    } else {
        weights
    }
}

/// A linear layer that takes and returns activations in `act_dtype` while its
/// matmul may run in a wider dtype (see [`matmul_dtype`]). The weights stay
/// in the checkpoint's dtype and are widened per call, so resident memory is
/// what the ledger counts (bf16 stays 2 bytes per weight; fp8 resident stays
/// 1 byte, dequantised as `w_fp8 · scale` for each call).
#[derive(Debug, Clone)]
struct Proj {
    inner: Linear,
    /// fp8_scaled weight scale, shaped to broadcast over the weight
    /// (`[]` per tensor or `[out, 1]` per output channel), in `mm_dtype`.
    scale: Option<Tensor>,
    act_dtype: DType,
    mm_dtype: DType,
}

impl Proj {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let act_dtype = compute_dtype(vb.dtype(), vb.device());
        let mm_dtype = matmul_dtype(act_dtype, vb.device());
        Self::build(in_dim, out_dim, vb, act_dtype, mm_dtype)
    }

    /// Always f32 in and out, whatever the checkpoint dtype (timestep path).
    fn new_f32(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::build(in_dim, out_dim, vb, DType::F32, DType::F32)
    }

    fn build(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        act_dtype: DType,
        mm_dtype: DType,
    ) -> Result<Self> {
        let lin = candle_nn::linear(in_dim, out_dim, vb.clone())?;
        let scale = fp8_scale(&vb, lin.weight(), mm_dtype)?;
        Ok(Self {
            inner: lin,
            scale,
            act_dtype,
            mm_dtype,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.mm_dtype)?;
        let y = if self.inner.weight().dtype() == self.mm_dtype {
            self.inner.forward(&x)?
        } else {
            let w = widen(self.inner.weight(), self.mm_dtype)?;
            let w = match &self.scale {
                Some(s) => w.broadcast_mul(s)?,
                None => w,
            };
            let b = self
                .inner
                .bias()
                .map(|b| b.to_dtype(self.mm_dtype))
                .transpose()?;
            Linear::new(w, b).forward(&x)?
        };
        y.to_dtype(self.act_dtype)
    }
}

/// `w` in `dtype`; fp8 on a CUDA card goes through [`super::fp8_cuda`]
/// (candle 0.11.1's own fp8 casts fail there).
fn widen(w: &Tensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if w.dtype() == DType::F8E4M3 && w.device().is_cuda() {
        return super::fp8_cuda::widen(w, dtype);
    }
    w.to_dtype(dtype)
}

/// The scale of an fp8 weight kept resident (`weight` is F8E4M3): the
/// legacy `scale_weight` or the newer `weight_scale` beside it, per tensor
/// or per output channel; `None` for other weights and unscaled fp8.
fn fp8_scale(vb: &VarBuilder, weight: &Tensor, dtype: DType) -> Result<Option<Tensor>> {
    if weight.dtype() != DType::F8E4M3 {
        return Ok(None);
    }
    let Some(key) = ["scale_weight", "weight_scale"]
        .into_iter()
        .find(|k| vb.contains_tensor(k))
    else {
        return Ok(None);
    };
    let s = vb
        .get_unchecked_dtype(key, DType::F32)?
        .flatten_all()?
        .to_dtype(dtype)?;
    let out = weight.dim(0)?;
    match s.elem_count() {
        1 => Ok(Some(s.reshape(())?)),
        n if n == out => {
            let mut shape = vec![1; weight.rank()];
            shape[0] = n;
            Ok(Some(s.reshape(shape)?))
        }
        n => candle_core::bail!(
            "fp8 scale '{}' has {n} values; it must have 1 or {out}",
            key
        ),
    }
}

/// Everything the blocks need that is computed once per forward.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Patch-embedded video tokens [B, S, dim], in the compute dtype.
    pub tokens: Tensor,
    /// Time embedding `time_embedding(sinusoid(t))` [B, T, dim], f32 (head
    /// modulation); T = 1 for one timestep per sample, S for per-token ones.
    pub e: Tensor,
    /// `time_projection(e)` [B, T, 6, dim], f32 (block modulations).
    pub e0: Tensor,
    /// `text_embedding(context)` [B, L, dim], in the compute dtype.
    pub context: Tensor,
    pub rope: Rope,
    /// Token grid (F', H', W') after patching; S = F' * H' * W'.
    pub grid: [usize; 3],
    /// Compute dtype of the activations (the checkpoint's load dtype).
    pub dtype: DType,
}

/// RoPE table for the self-attention of one token grid.
#[derive(Debug, Clone)]
pub struct Rope {
    /// cos of the rotation angle [S, head_dim / 2], f32, one column per channel pair.
    pub cos: Tensor,
    /// sin of the rotation angle [S, head_dim / 2], f32.
    pub sin: Tensor,
}

impl Rope {
    /// (cos, sin) [S, head_dim] with each pair's value repeated for its two
    /// channels, the layout diffusers uses for its tables.
    pub fn interleaved(&self) -> Result<(Tensor, Tensor)> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (s, c) = t.dims2()?;
            t.unsqueeze(2)?.broadcast_as((s, c, 2))?.reshape((s, 2 * c))
        };
        Ok((rep(&self.cos)?, rep(&self.sin)?))
    }
}

/// Complex slots (channel pairs) of the head dim given to the (t, h, w) axes:
/// c = head_dim / 2 split as [c - 2 * (c / 3), c / 3, c / 3].
pub fn rope_axis_slots(head_dim: usize) -> [usize; 3] {
    let c = head_dim / 2;
    [c - 2 * (c / 3), c / 3, c / 3]
}

/// RoPE table for a patched grid (F', H', W'): tokens in (f, h, w) row-major
/// order, positions from 0, pairs (2i, 2i+1) rotated; within an axis of n slots
/// slot j turns at theta^(-2j / 2n). Angles in f64, cast to f32 at the end.
pub fn rope_table(cfg: &WanConfig, grid: [usize; 3], device: &Device) -> Result<Rope> {
    let head_dim = cfg.head_dim();
    if !head_dim.is_multiple_of(2) {
        candle_core::bail!("wan rope: head_dim {head_dim} is odd")
    }
    let slots = rope_axis_slots(head_dim);
    let inv_freq: Vec<Vec<f64>> = slots
        .iter()
        .map(|&n| {
            let width = (2 * n) as f64;
            (0..n)
                .map(|j| 1.0 / cfg.rope_theta.powf((2 * j) as f64 / width))
                .collect()
        })
        .collect();
    let c = head_dim / 2;
    let s = grid.iter().product::<usize>();
    let mut cos = Vec::with_capacity(s * c);
    let mut sin = Vec::with_capacity(s * c);
    for f in 0..grid[0] {
        for h in 0..grid[1] {
            for w in 0..grid[2] {
                for (pos, freqs) in [f, h, w].iter().zip(&inv_freq) {
                    for fr in freqs {
                        let a = *pos as f64 * fr;
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
    }
    Ok(Rope {
        cos: Tensor::from_vec(cos, (s, c), device)?,
        sin: Tensor::from_vec(sin, (s, c), device)?,
    })
}

/// Timestep sinusoid [B, freq_dim] = cat(cos(t f_i), sin(t f_i)), computed in
/// f32 the way diffusers does: f_i = exp(-ln(10000) * i / half).
pub fn timestep_sinusoid(t: &Tensor, freq_dim: usize) -> Result<Tensor> {
    let half = freq_dim / 2;
    let t = t.flatten_all()?.to_dtype(DType::F32)?;
    let neg_log = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((neg_log * i as f32) / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// LayerNorm over the last dim without affine parameters, in f32 (two-pass
/// variance, robust to the large per-channel offsets of the residual stream).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// RMSNorm over the last dim in f32; `weight` must be f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    candle_nn::ops::rms_norm(&x, weight, eps as f32)
}

/// `x * (1 + scale) + shift` in f32; shift/scale broadcast as [B, 1, dim].
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)
}

/// `x + y * gate` computed in f32, stored back in x's dtype.
fn gated_residual(x: &Tensor, y: &Tensor, gate: Option<&Tensor>) -> Result<Tensor> {
    let y = y.to_dtype(DType::F32)?;
    let y = match gate {
        Some(g) => y.broadcast_mul(g)?,
        None => y,
    };
    (x.to_dtype(DType::F32)? + y)?.to_dtype(x.dtype())
}

/// Rotates channel pairs (2i, 2i+1) of x [B, H, S, head_dim] (contiguous, f32).
pub fn apply_rope(x: &Tensor, rope: &Rope) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_i(x, &rope.cos, &rope.sin)
}

/// softmax(q k^T / sqrt(d)) v per head; q [B, H, Sq, d], k/v [B, H, Sk, d]
/// (contiguous). Returns [B, Sq, H * d] in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
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
fn split_heads(x: &Tensor, num_heads: usize) -> Result<Tensor> {
    let (b, s, dim) = x.dims3()?;
    x.reshape((b, s, num_heads, dim / num_heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `blocks.N.self_attn` / `blocks.N.cross_attn`: q/k/v/o linears with RMSNorm
/// over the whole inner dim on q and k (before the head split and RoPE).
#[derive(Debug, Clone)]
struct WanAttention {
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    norm_q: Tensor,
    norm_k: Tensor,
    num_heads: usize,
    eps: f64,
}

impl WanAttention {
    fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dim;
        Ok(Self {
            q: Proj::new(dim, dim, vb.pp("q"))?,
            k: Proj::new(dim, dim, vb.pp("k"))?,
            v: Proj::new(dim, dim, vb.pp("v"))?,
            o: Proj::new(dim, dim, vb.pp("o"))?,
            norm_q: vb.get(dim, "norm_q.weight")?.to_dtype(DType::F32)?,
            norm_k: vb.get(dim, "norm_k.weight")?.to_dtype(DType::F32)?,
            num_heads: cfg.num_heads,
            eps: cfg.eps,
        })
    }

    /// x [B, S, dim] queries; kv [B, L, dim] keys/values source (x itself for
    /// self-attention); RoPE on q and k when given.
    ///
    /// Each intermediate is dropped as soon as the next exists (q, k and v
    /// before the output projection), which is what the activation formula
    /// in `super::memory` counts.
    fn forward(&self, x: &Tensor, kv: &Tensor, rope: Option<&Rope>) -> Result<Tensor> {
        let dtype = x.dtype();
        let heads = |proj: &Proj, norm: &Tensor, src: &Tensor| -> Result<Tensor> {
            let t = split_heads(
                &rms_norm(&proj.forward(src)?, norm, self.eps)?,
                self.num_heads,
            )?;
            match rope {
                Some(r) => apply_rope(&t, r)?.to_dtype(dtype),
                None => t.to_dtype(dtype),
            }
        };
        let out = {
            let q = heads(&self.q, &self.norm_q, x)?;
            let k = heads(&self.k, &self.norm_k, kv)?;
            let v = split_heads(&self.v.forward(kv)?, self.num_heads)?;
            attention(&q, &k, &v)?
        };
        self.o.forward(&out)
    }
}

/// One transformer block (`blocks.N`).
#[derive(Debug, Clone)]
pub struct WanBlock {
    self_attn: WanAttention,
    cross_attn: WanAttention,
    /// Affine LayerNorm before cross-attention (f32).
    norm3_weight: Tensor,
    norm3_bias: Tensor,
    ffn_0: Proj,
    ffn_2: Proj,
    /// [1, 6, dim], f32.
    modulation: Tensor,
    eps: f64,
}

impl WanBlock {
    /// `vb` at `blocks.N`.
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dim;
        Ok(Self {
            self_attn: WanAttention::new(cfg, vb.pp("self_attn"))?,
            cross_attn: WanAttention::new(cfg, vb.pp("cross_attn"))?,
            norm3_weight: vb.get(dim, "norm3.weight")?.to_dtype(DType::F32)?,
            norm3_bias: vb.get(dim, "norm3.bias")?.to_dtype(DType::F32)?,
            ffn_0: Proj::new(dim, cfg.ffn_dim, vb.pp("ffn.0"))?,
            ffn_2: Proj::new(cfg.ffn_dim, dim, vb.pp("ffn.2"))?,
            modulation: vb.get((1, 6, dim), "modulation")?.to_dtype(DType::F32)?,
            eps: cfg.eps,
        })
    }

    /// The weight of one of the block's linears (`self_attn.q.weight`,
    /// `ffn.0.weight`, ...), for checking what a LoRA merged into it.
    pub fn linear_weight(&self, name: &str) -> Option<&Tensor> {
        let (attn, rest) = match name.split_once('.') {
            Some(("self_attn", r)) => (Some(&self.self_attn), r),
            Some(("cross_attn", r)) => (Some(&self.cross_attn), r),
            _ => (None, name),
        };
        let proj = match (attn, rest) {
            (Some(a), "q.weight") => &a.q,
            (Some(a), "k.weight") => &a.k,
            (Some(a), "v.weight") => &a.v,
            (Some(a), "o.weight") => &a.o,
            (None, "ffn.0.weight") => &self.ffn_0,
            (None, "ffn.2.weight") => &self.ffn_2,
            _ => return None,
        };
        Some(proj.inner.weight())
    }

    /// x [B, S, dim] -> [B, S, dim], same dtype as x.
    pub fn forward(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        let dtype = x.dtype();
        // [1, 1, 6, dim] + [B, T, 6, dim]; each chunk [B, T, dim] broadcasts
        // over the tokens when T = 1.
        let m = self.modulation.unsqueeze(0)?.broadcast_add(&p.e0)?;
        let chunk = |i: usize| m.narrow(2, i, 1)?.squeeze(2);
        let (shift_msa, scale_msa, gate_msa) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (shift_ffn, scale_ffn, gate_ffn) = (chunk(3)?, chunk(4)?, chunk(5)?);

        // Every [S, dim] intermediate is dropped as soon as it is used (no
        // shadowing, which would keep each alive to the end of the block).
        let x1 = {
            let y = modulate(&layer_norm(x, self.eps)?, &shift_msa, &scale_msa)?.to_dtype(dtype)?;
            let a = self.self_attn.forward(&y, &y, Some(&p.rope))?;
            drop(y);
            gated_residual(x, &a, Some(&gate_msa))?
        };
        let x2 = {
            let y = layer_norm(&x1, self.eps)?
                .broadcast_mul(&self.norm3_weight)?
                .broadcast_add(&self.norm3_bias)?
                .to_dtype(dtype)?;
            let c = self.cross_attn.forward(&y, &p.context, None)?;
            drop(y);
            gated_residual(&x1, &c, None)?
        };
        drop(x1);
        let y = modulate(&layer_norm(&x2, self.eps)?, &shift_ffn, &scale_ffn)?.to_dtype(dtype)?;
        let hidden = self.ffn_0.forward(&y)?.gelu()?;
        drop(y);
        let f = self.ffn_2.forward(&hidden)?;
        drop(hidden);
        gated_residual(&x2, &f, Some(&gate_ffn))
    }
}

/// `head`: modulated LayerNorm (with `head.modulation` + e) and a linear to
/// prod(patch) * out_dim features per token.
#[derive(Debug, Clone)]
struct Head {
    head: Proj,
    /// [1, 2, dim], f32.
    modulation: Tensor,
}

/// The non-block weights: patch, time and text embeddings and the output head.
#[derive(Debug, Clone)]
pub struct WanStem {
    patch_embedding: Proj,
    time_embedding_0: Proj,
    time_embedding_2: Proj,
    time_projection_1: Proj,
    text_embedding_0: Proj,
    text_embedding_2: Proj,
    head: Head,
    cfg: WanConfig,
    dtype: DType,
}

impl WanStem {
    /// `vb` at the model root (keys like `patch_embedding.weight`, `head.modulation`).
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dim;
        let dtype = compute_dtype(vb.dtype(), vb.device());
        let mm_dtype = matmul_dtype(dtype, vb.device());
        let [pt, ph, pw] = cfg.patch_size;
        let patch_in = cfg.in_dim * pt * ph * pw;
        // Conv3d with kernel = stride = patch is a linear over the flattened
        // (C, pt, ph, pw) patch, the weight's own memory order.
        let pvb = vb.pp("patch_embedding");
        let w = pvb
            .get((dim, cfg.in_dim, pt, ph, pw), "weight")?
            .reshape((dim, patch_in))?;
        let b = pvb.get(dim, "bias")?;
        let scale = fp8_scale(&pvb, &w, mm_dtype)?;
        let patch_embedding = Proj {
            inner: Linear::new(w, Some(b)),
            scale,
            act_dtype: dtype,
            mm_dtype,
        };
        let head = Head {
            head: Proj::new(dim, cfg.patch_features_out(), vb.pp("head.head"))?,
            modulation: vb
                .get((1, 2, dim), "head.modulation")?
                .to_dtype(DType::F32)?,
        };
        Ok(Self {
            patch_embedding,
            time_embedding_0: Proj::new_f32(cfg.freq_dim, dim, vb.pp("time_embedding.0"))?,
            time_embedding_2: Proj::new_f32(dim, dim, vb.pp("time_embedding.2"))?,
            time_projection_1: Proj::new_f32(dim, 6 * dim, vb.pp("time_projection.1"))?,
            text_embedding_0: Proj::new(cfg.text_dim, dim, vb.pp("text_embedding.0"))?,
            text_embedding_2: Proj::new(dim, dim, vb.pp("text_embedding.2"))?,
            head,
            cfg: cfg.clone(),
            dtype,
        })
    }

    pub fn config(&self) -> &WanConfig {
        &self.cfg
    }

    /// x [B, in_dim, F, H, W], t [B] (or one value for all) or per token
    /// [B, S] (TI2V-5B: first-frame tokens at t = 0 when an image conditions
    /// the clip), context [B, L, text_dim]; inputs of any float dtype.
    pub fn prepare(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Prepared> {
        let cfg = &self.cfg;
        let (b, c, f, h, w) = x.dims5()?;
        let [pt, ph, pw] = cfg.patch_size;
        if c != cfg.in_dim
            || !f.is_multiple_of(pt)
            || !h.is_multiple_of(ph)
            || !w.is_multiple_of(pw)
        {
            candle_core::bail!(
                "wan dit: latent {:?} does not fit in_dim {} / patch {:?}",
                x.dims(),
                cfg.in_dim,
                cfg.patch_size
            )
        }
        let (cb, _l, ctd) = context.dims3()?;
        if cb != b || ctd != cfg.text_dim {
            candle_core::bail!(
                "wan dit: context {:?} does not fit batch {b} / text_dim {}",
                context.dims(),
                cfg.text_dim
            )
        }
        let grid = [f / pt, h / ph, w / pw];
        let s = grid.iter().product::<usize>();

        // [B, C, F', pt, H', ph, W', pw] -> [B, F', H', W', C, pt, ph, pw]
        let patches = x
            .to_dtype(self.dtype)?
            .reshape(vec![b, c, grid[0], pt, grid[1], ph, grid[2], pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .contiguous()?
            .reshape((b, s, c * pt * ph * pw))?;
        let tokens = self.patch_embedding.forward(&patches)?;

        // Timesteps as [B, T]: T = 1 (one per sample) or S (one per token).
        let per_token = t.rank() == 2 && t.dim(1)? > 1;
        let t = t.to_dtype(DType::F32)?;
        let t = if per_token {
            match t.dims2()? {
                (tb, ts) if ts == s && (tb == b || tb == 1) => {
                    t.broadcast_as((b, s))?.contiguous()?
                }
                d => candle_core::bail!(
                    "wan dit: per-token timesteps {d:?} do not fit batch {b} x {s} tokens"
                ),
            }
        } else {
            let t = t.flatten_all()?;
            match t.dim(0)? {
                n if n == b => t.reshape((b, 1))?,
                1 => t.broadcast_as(b)?.contiguous()?.reshape((b, 1))?,
                n => candle_core::bail!("wan dit: {n} timesteps for batch {b}"),
            }
        };
        let steps = t.dim(1)?;
        let sin = timestep_sinusoid(&t.flatten_all()?, cfg.freq_dim)?;
        let e = self
            .time_embedding_2
            .forward(&self.time_embedding_0.forward(&sin)?.silu()?)?;
        let e0 = self
            .time_projection_1
            .forward(&e.silu()?)?
            .reshape((b, steps, 6, cfg.dim))?;
        let e = e.reshape((b, steps, cfg.dim))?;

        let ctx = context.to_dtype(self.dtype)?.contiguous()?;
        let ctx = self
            .text_embedding_2
            .forward(&self.text_embedding_0.forward(&ctx)?.gelu()?)?;

        Ok(Prepared {
            tokens,
            e,
            e0,
            context: ctx,
            rope: rope_table(cfg, grid, x.device())?,
            grid,
            dtype: self.dtype,
        })
    }

    /// Head output before unpatchify: [B, S, prod(patch) * out_dim] in the
    /// compute dtype.
    pub fn head(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        let m = self
            .head
            .modulation
            .unsqueeze(0)?
            .broadcast_add(&p.e.unsqueeze(2)?)?;
        let (shift, scale) = (
            m.narrow(2, 0, 1)?.squeeze(2)?,
            m.narrow(2, 1, 1)?.squeeze(2)?,
        );
        let y = modulate(&layer_norm(x, self.cfg.eps)?, &shift, &scale)?.to_dtype(p.dtype)?;
        self.head.head.forward(&y)
    }

    /// Head and unpatchify: x [B, S, dim] -> [B, out_dim, F, H, W], f32.
    pub fn finish(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        unpatchify(&self.head(x, p)?, p.grid, &self.cfg)?.to_dtype(DType::F32)
    }
}

/// [B, S, (pt, ph, pw, C)] -> [B, C, F' pt, H' ph, W' pw].
pub fn unpatchify(x: &Tensor, grid: [usize; 3], cfg: &WanConfig) -> Result<Tensor> {
    let b = x.dim(0)?;
    let [pt, ph, pw] = cfg.patch_size;
    let [f, h, w] = grid;
    let c = cfg.out_dim;
    x.reshape(vec![b, f, h, w, pt, ph, pw, c])?
        .permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?
        .contiguous()?
        .reshape((b, c, f * pt, h * ph, w * pw))
}

/// The whole model resident in memory.
#[derive(Debug, Clone)]
pub struct WanDit {
    pub stem: WanStem,
    pub blocks: Vec<WanBlock>,
}

impl WanDit {
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let stem = WanStem::new(cfg, vb.clone())?;
        let vb_b = vb.pp("blocks");
        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::new(cfg, vb_b.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stem, blocks })
    }

    /// x [B, in_dim, F, H, W], t [B] or per token [B, S], context
    /// [B, L, text_dim] -> [B, out_dim, F, H, W] f32.
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        let p = self.stem.prepare(x, t, context)?;
        let mut h = p.tokens.clone();
        for block in &self.blocks {
            h = block.forward(&h, &p)?;
        }
        self.stem.finish(&h, &p)
    }
}
