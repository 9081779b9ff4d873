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
//!
//! This file holds the model's structure (stem, blocks, head) and the small
//! f32 helpers they share; the linear layer and its dtype rules are in
//! `super::linear`, the chunked attention in `super::attention` and RoPE in
//! `super::rope`, all re-exported here.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::attention::split_heads;
use super::linear::Proj;
use super::spans::span;
use super::WanConfig;

// The kernels the blocks are built from live in their own modules; their
// public items stay reachable here, where callers have always found them.
pub use super::attention::{
    attention, attention_chunk_rows, attention_chunked, attention_score_cap,
    attention_score_cap_on, auto_score_cap, set_attention_score_cap, ATTN_SCORE_BYTES,
    ATTN_SCORE_BYTES_MAX,
};
pub use super::linear::{compute_dtype, matmul_dtype};
pub use super::rope::{apply_rope, rope_axis_slots, rope_table, Rope};

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
    let x = super::fast::cast(x, DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// RMSNorm over the last dim in f32; `weight` must be f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = super::fast::cast(x, DType::F32)?.contiguous()?;
    candle_nn::ops::rms_norm(&x, weight, eps as f32)
}

/// `x * (1 + scale) + shift` in f32; shift/scale broadcast as [B, 1, dim].
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    super::fast::cast(x, DType::F32)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)
}

/// `modulate(layer_norm(x), shift, scale)` as one fused pass on the CPU
/// (`super::fast::norm_affine`), candle's ops elsewhere; f32 out.
pub fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    norm_modulate_as(x, shift, scale, eps, DType::F32)
}

/// [`norm_modulate`] with the result in `dtype`: on the CPU written in it
/// directly, elsewhere computed in f32 and cast.
pub fn norm_modulate_as(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
    dtype: DType,
) -> Result<Tensor> {
    let mul = (scale + 1.0)?;
    match super::fast::norm_affine_as(x, &mul, shift, eps, dtype)? {
        Some(y) => Ok(y),
        None => super::fast::cast(&modulate(&layer_norm(x, eps)?, shift, scale)?, dtype),
    }
}

/// `x + y * gate` computed in f32, stored back in x's dtype.
fn gated_residual(x: &Tensor, y: &Tensor, gate: Option<&Tensor>) -> Result<Tensor> {
    if let Some(out) = super::fused::gated_add(x, y, gate)? {
        return Ok(out);
    }
    let y = super::fast::cast(y, DType::F32)?;
    let y = match gate {
        Some(g) => y.broadcast_mul(g)?,
        None => y,
    };
    super::fast::cast(&(super::fast::cast(x, DType::F32)? + y)?, x.dtype())
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
            let t = proj.forward(src)?;
            let fused = span("rms_norm+rope", || {
                super::fused::qk_heads(&t, norm, self.eps, self.num_heads, rope)
            })?;
            if let Some(h) = fused {
                return super::fast::cast(&h, dtype);
            }
            let t = span("rms_norm", || rms_norm(&t, norm, self.eps))?;
            let t = span("copies", || split_heads(&t, self.num_heads))?;
            span("rope", || match rope {
                Some(r) => super::fast::cast(&apply_rope(&t, r)?, dtype),
                None => super::fast::cast(&t, dtype),
            })
        };
        let out = {
            let q = heads(&self.q, &self.norm_q, x)?;
            let k = heads(&self.k, &self.norm_k, kv)?;
            // The projection is dropped once its heads are split out.
            let v = {
                let v = self.v.forward(kv)?;
                span("copies", || split_heads(&v, self.num_heads))?
            };
            span("attention", || attention(&q, &k, &v))?
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
        Some(proj.weight())
    }

    /// x [B, S, dim] -> [B, S, dim], same dtype as x.
    pub fn forward(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        let dtype = x.dtype();
        // [1, 1, 6, dim] + [B, T, 6, dim]; each chunk [B, T, dim] broadcasts
        // over the tokens when T = 1.
        let m = span("modulation", || {
            self.modulation.unsqueeze(0)?.broadcast_add(&p.e0)
        })?;
        let chunk = |i: usize| m.narrow(2, i, 1)?.squeeze(2);
        let (shift_msa, scale_msa, gate_msa) = (chunk(0)?, chunk(1)?, chunk(2)?);
        let (shift_ffn, scale_ffn, gate_ffn) = (chunk(3)?, chunk(4)?, chunk(5)?);
        let norm_mod = |x: &Tensor, shift: &Tensor, scale: &Tensor| {
            span("norm+modulate", || {
                norm_modulate_as(x, shift, scale, self.eps, dtype)
            })
        };
        let residual = |x: &Tensor, y: &Tensor, g: Option<&Tensor>| {
            span("residual", || gated_residual(x, y, g))
        };

        // Every [S, dim] intermediate is dropped as soon as it is used (no
        // shadowing, which would keep each alive to the end of the block).
        let x1 = {
            let y = norm_mod(x, &shift_msa, &scale_msa)?;
            let a = self.self_attn.forward(&y, &y, Some(&p.rope))?;
            drop(y);
            residual(x, &a, Some(&gate_msa))?
        };
        let x2 = {
            let y = span("norm+modulate", || {
                match super::fast::norm_affine_as(
                    &x1,
                    &self.norm3_weight,
                    &self.norm3_bias,
                    self.eps,
                    dtype,
                )? {
                    Some(y) => Ok(y),
                    None => super::fast::cast(
                        &layer_norm(&x1, self.eps)?
                            .broadcast_mul(&self.norm3_weight)?
                            .broadcast_add(&self.norm3_bias)?,
                        dtype,
                    ),
                }
            })?;
            let c = self.cross_attn.forward(&y, &p.context, None)?;
            drop(y);
            residual(&x1, &c, None)?
        };
        drop(x1);
        let y = norm_mod(&x2, &shift_ffn, &scale_ffn)?;
        let hidden = self.ffn_0.forward_gelu(&y)?;
        drop(y);
        let f = self.ffn_2.forward(&hidden)?;
        drop(hidden);
        residual(&x2, &f, Some(&gate_ffn))
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
        let patch_embedding = Proj::from_linear(Linear::new(w, Some(b)), &pvb, dtype, mm_dtype)?;
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
        let patches = super::fast::cast(x, self.dtype)?
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

        // The casts go through `fast::cast` (parallel, vectorised): candle's
        // `to_dtype` to bf16 is one thread, ~2% of a bf16 forward for the
        // context alone.
        let ctx = super::fast::cast(&context.contiguous()?, self.dtype)?;
        let ctx = self
            .text_embedding_2
            .forward(&super::fast::gelu(&self.text_embedding_0.forward(&ctx)?)?)?;

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
        let y = super::fast::cast(&norm_modulate(x, &shift, &scale, self.cfg.eps)?, p.dtype)?;
        self.head.head.forward(&y)
    }

    /// Head and unpatchify: x [B, S, dim] -> [B, out_dim, F, H, W], f32.
    pub fn finish(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        super::fast::cast(
            &unpatchify(&self.head(x, p)?, p.grid, &self.cfg)?,
            DType::F32,
        )
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
