//! The umT5 encoder stack: token embedding, pre-norm self-attention blocks
//! with a per-block relative position bias, gated-GELU feed-forward, final
//! RMS norm. Reads the canonical (HF) key names of [`super::layout`].
//!
//! The residual stream is f32 whatever the weight dtype: umT5-XXL is known to
//! overflow in fp16 (transformers clamps its activations for that reason).
//! The weights stay in the checkpoint's dtype in memory (what the ledger
//! counts). On the CPU, f32 weights multiply on `sgemm` and bf16 weights
//! take bf16-rounded inputs on the AMX tiles (or oneDNN with the feature),
//! as PyTorch's bf16 encoder multiplies, the attention then on the tiles
//! too; elsewhere each linear widens its weight to f32 for the call, a slab
//! at a time on the CPU for bf16 (`super::widen`), the whole tensor on a
//! card.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::UmT5Config;
use crate::models::wan::spans::span;

/// A bias-free linear over the weight as loaded (see [`Proj::on_kernels`]
/// for where it multiplies as it is); a GGUF weight stays as its blocks and
/// is dequantized to f32 per call.
#[derive(Debug, Clone)]
enum Proj {
    Dense(Tensor),
    Blocks(std::sync::Arc<QTensor>),
}

impl Proj {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        if let Some(q) = kept_blocks(&vb, "weight", &[out_dim, in_dim])? {
            return Ok(Self::Blocks(std::sync::Arc::new(q)));
        }
        Ok(Self::Dense(vb.get((out_dim, in_dim), "weight")?))
    }

    /// `x` in the dtype this layer multiplies: bf16 for a bf16 weight on
    /// the CPU's bf16 units (see [`Proj::on_kernels`]), else f32. Cast once
    /// where projections share an input (q, k and v; wi_0 and wi_1) rather
    /// than by each of them.
    fn prepare(&self, x: Tensor) -> Result<Tensor> {
        match self.takes_bf16(&x) {
            true => span("cast x", || crate::models::wan::fast::cast(&x, DType::BF16)),
            false => Ok(x),
        }
    }

    /// Whether this layer multiplies `x` in bf16 (see [`Proj::prepare`]).
    fn takes_bf16(&self, x: &Tensor) -> bool {
        let units = crate::models::wan::amx::available() || cfg!(feature = "onednn");
        matches!(self, Self::Dense(w) if w.dtype() == DType::BF16 && x.device().is_cpu() && units)
    }

    /// x (bf16, as [`Proj::prepare`] left it) -> bf16 [.., out] on the tile
    /// unit (f32 sums rounded once); `None` where that does not run.
    fn forward_bf16(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match self {
            Self::Dense(w) if self.takes_bf16(x) => span("matmul", || {
                crate::models::wan::amx::linear_into(x, w, None, DType::BF16)
            }),
            _ => Ok(None),
        }
    }

    /// T5's RMS norm of `x`, in the dtype this layer multiplies (written
    /// in bf16 directly where it takes bf16).
    fn norm_input(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        if self.takes_bf16(x) {
            let y = span("rms_norm", || {
                crate::models::wan::fast::rms_norm_bf16(x, weight, eps as f32)
            })?;
            if let Some(y) = y {
                return Ok(y);
            }
        }
        self.prepare(t5_layer_norm(x, weight, eps)?)
    }

    /// x f32 (or as [`Proj::prepare`] left it) [.., in] -> f32 [.., out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// tanh-GELU(self(x)), the GELU in the store of our CPU kernels (no
    /// pre-activation tensor, no separate pass).
    fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, true)
    }

    fn forward_act(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        span("matmul", || self.product(x, gelu))
    }

    fn product(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        use crate::models::wan::{fast, sgemm};
        if let Some(y) = self.on_kernels(x, gelu)? {
            return Ok(y);
        }
        let x = &fast::cast(x, DType::F32)?;
        let y = match self {
            Self::Dense(w) => match super::widen::matmul_bf16_weight(x, w)? {
                Some(y) => y,
                None => {
                    // Widened on rayon's pool (candle's cast is one scalar loop).
                    let w = fast::cast(w, DType::F32)?;
                    match sgemm::linear(x, &w, None, gelu)? {
                        Some(y) => return Ok(y),
                        None => Linear::new(w, None).forward(x)?,
                    }
                }
            },
            Self::Blocks(q) => Linear::new(q.dequantize(x.device())?, None).forward(x)?,
        };
        if gelu {
            fast::gelu(&y)
        } else {
            Ok(y)
        }
    }

    /// Our CPU kernels: an f32 weight on AVX-512 (`sgemm`); a bf16 weight
    /// times bf16-rounded activations (f32 accumulation, f32 out), as
    /// PyTorch's bf16 encoder multiplies, on the AMX tiles where the CPU
    /// has them, else on oneDNN with the feature. `None` elsewhere (the
    /// weight is widened instead).
    fn on_kernels(&self, x: &Tensor, gelu: bool) -> Result<Option<Tensor>> {
        use crate::models::wan::{amx, fast, sgemm};
        let Self::Dense(w) = self else {
            return Ok(None);
        };
        if w.dtype() == DType::F32 {
            return sgemm::linear(x, w, None, gelu);
        }
        if !self.takes_bf16(x) {
            return Ok(None);
        }
        let xb = fast::cast(x, DType::BF16)?;
        let y = match gelu {
            true => amx::linear_gelu(&xb, w, None, DType::F32)?,
            false => amx::linear_into(&xb, w, None, DType::F32)?,
        };
        if y.is_some() {
            return Ok(y);
        }
        #[cfg(feature = "onednn")]
        if let Some(y) = crate::models::wan::onednn::linear_into(&xb, w, None, DType::F32)? {
            return Ok(Some(if gelu { fast::gelu(&y)? } else { y }));
        }
        Ok(None)
    }
}

/// A GGUF weight `name` kept as its blocks (see `crate::ggml`), if the
/// checkpoint offers it so.
fn kept_blocks(vb: &VarBuilder, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
    let packed = format!("{name}{}", crate::ggml::SUFFIX);
    if !vb.contains_tensor(&packed) {
        return Ok(None);
    }
    let p = vb.get_unchecked_dtype(&packed, DType::U8)?;
    crate::ggml::unpack(&p, shape, vb.device()).map(Some)
}

/// T5's layer norm: RMS over the last dim (no mean subtraction, no bias), in
/// f32. `weight` must be f32.
pub fn t5_layer_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    span("rms_norm", || {
        candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
    })
}

/// The bidirectional relative-position bucket of distance `n = key - query`:
/// half the buckets for each direction; in each half, distances below
/// `half / 2` get their own bucket and larger ones share logarithmically
/// sized buckets up to `max_distance`, clamped to the last.
///
/// The log is taken in f32 and truncated, as transformers and Wan do in
/// torch, so every integer distance lands in the same bucket as theirs.
pub fn relative_bucket(n: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if n > 0 { half } else { 0 };
    let a = n.abs();
    let max_exact = half / 2;
    if a < max_exact {
        bucket += a;
    } else {
        let ratio = (a as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32);
        let large = max_exact + (ratio * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as usize
}

/// Bucket index of every (query, key) pair, [q_len, k_len] u32.
pub fn bucket_table(
    q_len: usize,
    k_len: usize,
    num_buckets: usize,
    max_distance: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut idx = Vec::with_capacity(q_len * k_len);
    for i in 0..q_len {
        for j in 0..k_len {
            let n = j as i64 - i as i64;
            idx.push(relative_bucket(n, num_buckets, max_distance) as u32);
        }
    }
    Tensor::from_vec(idx, (q_len, k_len), device)
}

/// `encoder.block.N.layer.0`: RMS norm, self-attention with its own relative
/// position bias table. T5 folds the 1/sqrt(d_kv) scale into its
/// initialisation, so the logits are the raw `q k^T` plus the bias.
#[derive(Debug, Clone)]
struct SelfAttention {
    norm: Tensor,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    /// [num_buckets, num_heads], f32.
    bias_table: Tensor,
    num_heads: usize,
    d_kv: usize,
    eps: f64,
}

impl SelfAttention {
    fn new(cfg: &UmT5Config, vb: VarBuilder) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        let sa = vb.pp("SelfAttention");
        Ok(Self {
            norm: vb.get(d, "layer_norm.weight")?.to_dtype(DType::F32)?,
            q: Proj::new(d, inner, sa.pp("q"))?,
            k: Proj::new(d, inner, sa.pp("k"))?,
            v: Proj::new(d, inner, sa.pp("v"))?,
            o: Proj::new(inner, d, sa.pp("o"))?,
            bias_table: sa
                .get(
                    (cfg.num_buckets, cfg.num_heads),
                    "relative_attention_bias.weight",
                )?
                .to_dtype(DType::F32)?,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            eps: cfg.eps,
        })
    }

    /// The position bias per head as a function of the distance `j - i`,
    /// [H, 2L - 1] (index `j - i + L - 1`), read from the bucket table
    /// [L, L] (its first row holds the distances 0..L, its first column
    /// 0..-L).
    fn bias_by_distance(&self, buckets: &Tensor) -> Result<Vec<f32>> {
        let (l, lk) = buckets.dims2()?;
        if l != lk || l == 0 {
            candle_core::bail!(
                "umt5: a bucket table of {:?} for self-attention",
                buckets.dims()
            )
        }
        let ahead = buckets.i(0)?.to_vec1::<u32>()?;
        let behind = buckets.i((.., 0))?.to_vec1::<u32>()?;
        let table = self.bias_table.flatten_all()?.to_vec1::<f32>()?;
        let h = self.num_heads;
        let span = 2 * l - 1;
        let mut out = vec![0f32; h * span];
        for at in 0..span {
            let bucket = if at + 1 >= l {
                ahead[at + 1 - l]
            } else {
                behind[l - 1 - at]
            } as usize;
            let Some(row) = table.get(bucket * h..(bucket + 1) * h) else {
                candle_core::bail!("umt5: bucket {bucket} outside the bias table")
            };
            for (hi, &t) in row.iter().enumerate() {
                out[hi * span + at] = t;
            }
        }
        Ok(out)
    }

    /// Position bias [1, H, L, L] from the bucket table [L, L] (off the CPU).
    fn position_bias(&self, buckets: &Tensor) -> Result<Tensor> {
        let (l, _) = buckets.dims2()?;
        self.bias_table
            .embedding(&buckets.flatten_all()?)?
            .reshape((l, l, self.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// x [B, L, d] f32; `key_mask` [B, 1, 1, L] f32 (0 or f32::MIN);
    /// `buckets` [L, L]. Returns the residual branch [B, L, d].
    fn forward(&self, x: &Tensor, key_mask: &Tensor, buckets: &Tensor) -> Result<Tensor> {
        use crate::models::wan::{amx, flash};
        let (b, l, _) = x.dims3()?;
        let h = self.q.norm_input(x, &self.norm, self.eps)?;
        let heads = |t: Tensor| -> Result<Tensor> {
            span("heads (copies)", || {
                t.reshape((b, l, self.num_heads, self.d_kv))?
                    .transpose(1, 2)?
                    .contiguous()
            })
        };
        // On the CPU the fused attention with the bias as a function of
        // distance: no [B, H, L, L] bias, scores or probabilities.
        let parts = match x.device().is_cpu() {
            true => Some((
                self.bias_by_distance(buckets)?,
                key_mask.flatten_all()?.to_vec1::<f32>()?,
            )),
            false => None,
        };
        let bias = parts
            .as_ref()
            .map(|(by_distance, mask)| flash::DistanceBias { by_distance, mask });
        // bf16 weights on the tile unit: q, k and v written in bf16 and the
        // attention on the tiles too, its bf16 output the input of the
        // output projection, as PyTorch's bf16 encoder rounds them.
        if let Some(bias) = &bias {
            let tiles = amx::takes_attention(DType::BF16, l, l, self.d_kv);
            if tiles && self.q.takes_bf16(&h) && h.dtype() == DType::BF16 {
                let (q, k, v) = (
                    self.q.forward_bf16(&h)?,
                    self.k.forward_bf16(&h)?,
                    self.v.forward_bf16(&h)?,
                );
                if let (Some(q), Some(k), Some(v)) = (q, k, v) {
                    let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
                    let out = span("attention", || {
                        amx::attention_with(&q, &k, &v, 1.0, Some(bias))
                    })?;
                    if let Some(out) = out {
                        return self.o.forward(&out);
                    }
                }
            }
        }
        let (q, k, v) = (
            self.q.forward(&h)?,
            self.k.forward(&h)?,
            self.v.forward(&h)?,
        );
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        if let Some(bias) = bias {
            let out = span("attention", || {
                flash::attention_fused_with(&q, &k, &v, 1.0, Some(bias))
            })?;
            return self.o.forward(&self.o.prepare(out)?);
        }
        // Elsewhere: the scores, the broadcast bias and mask, the softmax.
        let scores = q
            .matmul(&k.t()?)?
            .broadcast_add(&self.position_bias(buckets)?)?
            .broadcast_add(key_mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = p
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.d_kv))?;
        self.o.forward(&out)
    }
}

/// `encoder.block.N.layer.1`: RMS norm and the gated-GELU feed-forward
/// `wo(gelu_tanh(wi_0 x) * wi_1 x)`.
#[derive(Debug, Clone)]
struct GatedFfn {
    norm: Tensor,
    wi_0: Proj,
    wi_1: Proj,
    wo: Proj,
    eps: f64,
}

impl GatedFfn {
    fn new(cfg: &UmT5Config, vb: VarBuilder) -> Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let dense = vb.pp("DenseReluDense");
        Ok(Self {
            norm: vb.get(d, "layer_norm.weight")?.to_dtype(DType::F32)?,
            wi_0: Proj::new(d, ff, dense.pp("wi_0"))?,
            wi_1: Proj::new(d, ff, dense.pp("wi_1"))?,
            wo: Proj::new(ff, d, dense.pp("wo"))?,
            eps: cfg.eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.wi_0.norm_input(x, &self.norm, self.eps)?;
        // candle's `gelu` is the tanh approximation (HF `gelu_new`, Wan's GELU).
        // `fast::gelu` and the kernels' store: the same function, within a
        // few ulps.
        let gate = self.wi_0.forward_gelu(&h)?;
        let up = self.wi_1.forward(&h)?;
        let fused = match self.wo.takes_bf16(&gate) {
            true => span("gate multiply", || {
                crate::models::wan::fast::mul_bf16(&gate, &up)
            })?,
            false => None,
        };
        let gated = match fused {
            Some(g) => g,
            None => self.wo.prepare(span("gate multiply", || gate * up)?)?,
        };
        self.wo.forward(&gated)
    }
}

/// What every block needs that is computed once per forward: the embedded
/// tokens, the key mask and the relative-position buckets.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Embedded tokens [B, L, d_model], f32.
    pub x: Tensor,
    /// Additive key mask [B, 1, 1, L], f32 (0 or f32::MIN).
    pub key_mask: Tensor,
    /// Bucket index of every (query, key) pair [L, L], u32.
    pub buckets: Tensor,
}

/// One encoder block (`encoder.block.N`).
#[derive(Debug, Clone)]
pub struct UmT5Block {
    attn: SelfAttention,
    ffn: GatedFfn,
}

impl UmT5Block {
    /// `vb` at `encoder.block.N`.
    pub fn new(cfg: &UmT5Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: SelfAttention::new(cfg, vb.pp("layer.0"))?,
            ffn: GatedFfn::new(cfg, vb.pp("layer.1"))?,
        })
    }

    /// x [B, L, d] f32 -> [B, L, d] f32.
    pub fn forward(&self, x: &Tensor, p: &Prepared) -> Result<Tensor> {
        let a = self.attn.forward(x, &p.key_mask, &p.buckets)?;
        let x = span("residual", || x + a)?;
        let f = self.ffn.forward(&x)?;
        span("residual", || &x + f)
    }
}

/// The non-block weights: token embedding and final norm. Split from the
/// blocks, as the DiT's stem is, so that a runtime short of memory can load,
/// apply and drop the 24 blocks of umT5-XXL one at a time.
#[derive(Debug, Clone)]
pub struct UmT5Stem {
    /// Token embedding [vocab, d_model] in the checkpoint dtype (an empty
    /// placeholder on the device when `shared_blocks` holds it).
    shared: Tensor,
    /// A GGUF token embedding kept as its blocks: rows dequantized as looked up.
    shared_blocks: Option<std::sync::Arc<QTensor>>,
    /// f32.
    final_norm: Tensor,
    cfg: UmT5Config,
}

impl UmT5Stem {
    /// `vb` at the model root, over canonical names (`shared.weight`, ...).
    pub fn new(cfg: &UmT5Config, vb: VarBuilder) -> Result<Self> {
        let shape = [cfg.vocab_size, cfg.d_model];
        let shared_blocks = kept_blocks(&vb, "shared.weight", &shape)?.map(std::sync::Arc::new);
        let shared = match shared_blocks {
            Some(_) => Tensor::zeros(0, DType::F32, vb.device())?,
            None => vb.get((cfg.vocab_size, cfg.d_model), "shared.weight")?,
        };
        Ok(Self {
            shared,
            shared_blocks,
            final_norm: vb
                .get(cfg.d_model, "encoder.final_layer_norm.weight")?
                .to_dtype(DType::F32)?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UmT5Config {
        &self.cfg
    }

    /// Checks ids [B, L] (u32 or i64, inside the vocabulary) and mask [B, L]
    /// (0/1, any numeric dtype), embeds the ids and builds the key mask and
    /// the bucket table.
    pub fn prepare(&self, ids: &Tensor, mask: &Tensor) -> Result<Prepared> {
        let (b, l) = ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "umt5: token ids must be [batch, length], got {:?}",
                ids.dims()
            ))
        })?;
        if mask.dims() != ids.dims() {
            candle_core::bail!(
                "umt5: attention mask {:?} does not match token ids {:?}",
                mask.dims(),
                ids.dims()
            )
        }
        if l == 0 {
            candle_core::bail!("umt5: empty token sequence (a prompt always has at least EOS)")
        }
        let ids = self.checked_ids(ids)?;
        let device = self.shared.device().clone();
        let ids_flat = ids.flatten_all()?.to_device(&device)?;
        let x = match &self.shared_blocks {
            Some(q) => q.embedding(&ids_flat)?,
            None => self.shared.embedding(&ids_flat)?,
        };
        let x = x.to_dtype(DType::F32)?.reshape((b, l, self.cfg.d_model))?;
        Ok(Prepared {
            x,
            key_mask: key_mask(mask, &device)?,
            buckets: bucket_table(l, l, self.cfg.num_buckets, self.cfg.max_distance, &device)?,
        })
    }

    /// The final RMS norm: the last hidden state [B, L, d_model] f32.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        t5_layer_norm(x, &self.final_norm, self.cfg.eps)
    }

    /// Ids as u32, every one inside the vocabulary. An out-of-range id would
    /// otherwise be an index error deep in candle (or, on some backends, a
    /// read of another row); negative ids (i64) are refused the same way.
    fn checked_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let vocab = self.cfg.vocab_size;
        let flat: Vec<i64> = match ids.dtype() {
            DType::U32 => ids
                .flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I64 => ids.flatten_all()?.to_vec1::<i64>()?,
            other => candle_core::bail!("umt5: token ids must be u32 or i64, got {other:?}"),
        };
        if let Some((pos, bad)) = flat
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v as u64 >= vocab as u64)
        {
            candle_core::bail!(
                "umt5: token id {bad} at position {pos} is outside the vocabulary (0..{vocab})"
            )
        }
        let flat: Vec<u32> = flat.into_iter().map(|v| v as u32).collect();
        Tensor::from_vec(flat, ids.dims(), ids.device())
    }
}

/// The whole umT5 encoder (`UMT5EncoderModel`) resident in memory.
#[derive(Debug, Clone)]
pub struct UmT5Encoder {
    pub stem: UmT5Stem,
    pub blocks: Vec<UmT5Block>,
}

impl UmT5Encoder {
    /// `vb` at the model root, over canonical names (`shared.weight`, ...).
    pub fn new(cfg: &UmT5Config, vb: VarBuilder) -> Result<Self> {
        let stem = UmT5Stem::new(cfg, vb.clone())?;
        let vb_b = vb.pp("encoder.block");
        let blocks = (0..cfg.num_layers)
            .map(|i| UmT5Block::new(cfg, vb_b.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stem, blocks })
    }

    pub fn config(&self) -> &UmT5Config {
        self.stem.config()
    }

    /// Last hidden state [B, L, d_model] f32 of token ids [B, L] (u32 or i64)
    /// under the attention mask [B, L] (any numeric dtype, 1 = real token,
    /// 0 = padding). Padded keys are masked out of every row's attention;
    /// padded query rows are still computed (transformers does the same), so
    /// callers that want them gone use [`pipeline_context`].
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let p = self.stem.prepare(ids, mask)?;
        let mut x = p.x.clone();
        for block in &self.blocks {
            x = block.forward(&x, &p)?;
        }
        self.stem.finish(&x)
    }
}

/// Additive key mask [B, 1, 1, L] f32: 0 for real tokens, f32::MIN for padding
/// (transformers adds `finfo.min`, Wan fills it; both give padded keys zero
/// weight, and a row with every key padded still softmaxes to finite values).
fn key_mask(mask: &Tensor, device: &Device) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?.to_device(device)?;
    let vals = m.flatten_all()?.to_vec1::<f32>()?;
    if let Some(v) = vals.iter().find(|v| **v != 0.0 && **v != 1.0) {
        candle_core::bail!("umt5: attention mask values must be 0 or 1, found {v}")
    }
    ((m.ones_like()? - m)? * f64::from(f32::MIN))?.reshape((b, 1, 1, l))
}

/// The context as Wan's pipelines hand it to the DiT: each prompt's rows
/// trimmed to its real length (`mask.sum()`, EOS included) and zero-padded to
/// `pad_to` rows (512 in Wan and diffusers, their `text_len`). Output
/// [B, pad_to, d] f32.
///
/// The mask must be right-padded (ones then zeros), which every tokenizer
/// here produces; a prompt longer than `pad_to` is an error, since official
/// Wan cannot take it either (tokenize with `max_len = pad_to`, which
/// truncates and reports it).
///
/// The zero rows are not inert: the DiT has no mask on its cross-attention and
/// its text embedding maps a zero row to a non-zero vector, so the padding
/// length changes the result and must be 512 to match the reference.
///
/// ComfyUI gets the same numbers differently: its umT5 tokenizer pads the ids
/// with 0 to at least 512 (`min_length=512`; earlier versions used
/// `min_length=1`, an unpadded context) without truncating
/// (`max_length=99999999`), runs the encoder with the key mask (mask = 1 up to
/// and including the first EOS), and multiplies the output by the mask
/// (`zero_out_masked`). For prompts of at most 512 tokens that is exactly this
/// function's result; a longer prompt keeps all its rows there (the DiT takes
/// any context length), where Wan and diffusers truncate the ids to 512.
pub fn pipeline_context(hidden: &Tensor, mask: &Tensor, pad_to: usize) -> Result<Tensor> {
    let (b, l, d) = hidden.dims3()?;
    if mask.dims2()? != (b, l) {
        candle_core::bail!(
            "umt5 context: mask {:?} does not match hidden states {:?}",
            mask.dims(),
            hidden.dims()
        )
    }
    let hidden = hidden.to_dtype(DType::F32)?;
    let m = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut rows = Vec::with_capacity(b);
    for (i, row) in m.iter().enumerate() {
        let len = row.iter().take_while(|v| **v == 1.0).count();
        if row[len..].iter().any(|v| *v != 0.0) {
            candle_core::bail!(
                "umt5 context: mask row {i} is not right-padded ones then zeros: {row:?}"
            )
        }
        if len > pad_to {
            candle_core::bail!(
                "umt5 context: prompt {i} has {len} tokens, more than the {pad_to} the DiT \
                 context holds (tokenize with max_len {pad_to})"
            )
        }
        let real = hidden.i((i, ..len))?;
        let pad = Tensor::zeros((pad_to - len, d), DType::F32, hidden.device())?;
        rows.push(Tensor::cat(&[real, pad], 0)?);
    }
    Tensor::stack(&rows, 0)?
        .reshape((b, pad_to, d))?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_reference_formula() {
        // Values of transformers' `_relative_position_bucket` (bidirectional,
        // 32 buckets, max distance 128), recomputed with f32 logs.
        let cases: &[(i64, usize)] = &[
            (0, 0),
            (-1, 1),
            (1, 17),
            (-7, 7),
            (7, 23),
            (-8, 8),
            (8, 24),
            (-11, 8),
            (-12, 9),
            (-16, 10),
            (-32, 12),
            (-64, 14),
            (-90, 14),
            (-91, 15),
            (-127, 15),
            (-128, 15),
            (-1000, 15),
            (159, 31),
        ];
        for &(n, want) in cases {
            assert_eq!(relative_bucket(n, 32, 128), want, "distance {n}");
        }
    }

    #[test]
    fn context_trims_and_pads() {
        let dev = Device::Cpu;
        let h = Tensor::ones((2, 3, 2), DType::F32, &dev).unwrap();
        let m = Tensor::new(&[[1u32, 1, 0], [1, 1, 1]], &dev).unwrap();
        let c = pipeline_context(&h, &m, 5).unwrap();
        assert_eq!(c.dims(), &[2, 5, 2]);
        let s = c.sum((1, 2)).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(s, vec![4.0, 6.0]);
        assert!(pipeline_context(&h, &m, 2).is_err());
        let left = Tensor::new(&[[0u32, 1, 1], [1, 1, 1]], &dev).unwrap();
        assert!(pipeline_context(&h, &left, 5).is_err());
    }
}
