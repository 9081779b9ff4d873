//! The dtype rules of the DiT's matmuls and `Proj`, the linear layer every
//! DiT weight goes through: weights stay in the checkpoint's dtype (bf16,
//! f32 or resident fp8 with its scale); bf16 multiplies as it is on oneDNN
//! (feature) or the CPU's AMX tiles (`super::amx`), and is widened per call
//! elsewhere.
//!
//! Apart from `dit.rs` because these rules are shared beyond the blocks: the
//! activation formula (`super::memory`), the chunked attention
//! (`super::attention`), checkpoint loading and the runtime's memory ledger
//! all ask which dtype a weight computes in. `dit.rs` re-exports
//! [`compute_dtype`] and [`matmul_dtype`].

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::spans::span;

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

/// Which GEMM the CPU linears run on, for `baton bench speed`.
pub fn gemm_path() -> &'static str {
    let (amx, sgemm) = (super::amx::available(), sgemm_takes_linears());
    match (cfg!(feature = "onednn"), amx, sgemm) {
        (true, true, _) => "AMX tiles for bf16, oneDNN matmul for f32 and where the tiles decline",
        (true, false, _) => "oneDNN matmul (bf16 x bf16 and f32, f32 accumulation)",
        (false, true, true) => "AMX tiles for bf16 (f32 accumulation), AVX-512 kernel for f32",
        (false, true, false) => "AMX tiles for bf16 (f32 accumulation), gemm crate for f32",
        (false, false, true) => "AVX-512 kernel for f32 (bf16 weights widened to f32 per call)",
        (false, false, false) => "gemm crate, f32 (bf16 weights widened to f32 per call)",
    }
}

/// Whether f32 linears run on `super::sgemm`: where the CPU has AVX-512,
/// except in the `onednn` build, whose f32 matmul measured faster on the
/// DiT (0.92x PyTorch against 0.71-0.83x in the same binary); public for
/// the activation formula.
pub fn sgemm_takes_linears() -> bool {
    super::sgemm::available() && !cfg!(feature = "onednn")
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
pub(super) struct Proj {
    /// For a GGUF weight kept as stored (`quant` set) the weight here is an
    /// empty placeholder and only the bias is real.
    inner: Linear,
    /// A GGUF weight kept as its blocks (Q8_0, Q4_K, ... or a 2-D F16/BF16
    /// matrix): dequantized to `mm_dtype` per call, or multiplied by
    /// candle's quantized kernel (see [`QuantWeight`]).
    quant: Option<QuantWeight>,
    /// fp8_scaled weight scale, shaped to broadcast over the weight
    /// (`[]` per tensor or `[out, 1]` per output channel), in `mm_dtype`.
    scale: Option<Tensor>,
    act_dtype: DType,
    mm_dtype: DType,
}

impl Proj {
    pub(super) fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let act_dtype = compute_dtype(vb.dtype(), vb.device());
        let mm_dtype = matmul_dtype(act_dtype, vb.device());
        Self::build(in_dim, out_dim, vb, act_dtype, mm_dtype)
    }

    /// Always f32 in and out, whatever the checkpoint dtype (timestep path).
    pub(super) fn new_f32(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::build(in_dim, out_dim, vb, DType::F32, DType::F32)
    }

    fn build(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        act_dtype: DType,
        mm_dtype: DType,
    ) -> Result<Self> {
        let packed = format!("weight{}", crate::ggml::SUFFIX);
        if vb.contains_tensor(&packed) {
            let quant = QuantWeight::read(in_dim, out_dim, &vb, &packed)?;
            let bias = vb.get(out_dim, "bias")?;
            let empty = Tensor::zeros(0, bias.dtype(), vb.device())?;
            return Ok(Self {
                inner: Linear::new(empty, Some(bias)),
                quant: Some(quant),
                scale: None,
                act_dtype,
                mm_dtype,
            });
        }
        let lin = candle_nn::linear(in_dim, out_dim, vb.clone())?;
        Self::from_linear(lin, &vb, act_dtype, mm_dtype)
    }

    /// A layer over weights already read (the patch embedding's conv weight,
    /// flattened); `vb` is where its fp8 scale, if any, sits beside them.
    pub(super) fn from_linear(
        inner: Linear,
        vb: &VarBuilder,
        act_dtype: DType,
        mm_dtype: DType,
    ) -> Result<Self> {
        let scale = fp8_scale(vb, inner.weight(), mm_dtype)?;
        Ok(Self {
            inner,
            quant: None,
            scale,
            act_dtype,
            mm_dtype,
        })
    }

    /// The weight as held (checkpoint dtype, fp8 unscaled).
    pub(super) fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// tanh-GELU(self(x)): on our CPU kernels the GELU is applied to the f32
    /// sums in the store (one rounding, no pre-activation tensor; see
    /// `amx::linear_gelu` and `sgemm::linear`), elsewhere [`Proj::forward`]
    /// then the GELU.
    pub(super) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.on_kernels(x, true)? {
            return Ok(y);
        }
        let y = self.forward(x)?;
        span("gelu", || super::fast::gelu(&y))
    }

    /// Our CPU kernels, first in every build: bf16 on the tile unit where
    /// the CPU has one, for more than a few rows (the matvec is quicker
    /// below; it measured faster than oneDNN 3.2's AMX matmul once its loop
    /// was pipelined and the GELU fused), and f32 on AVX-512 (the bias and
    /// GELU in the store rather than candle's separate passes).
    fn on_kernels(&self, x: &Tensor, gelu: bool) -> Result<Option<Tensor>> {
        if self.quant.is_some() || self.scale.is_some() {
            return Ok(None);
        }
        let (w, b) = (self.inner.weight(), self.inner.bias());
        if w.dtype() == DType::F32 && self.act_dtype == DType::F32 {
            if !sgemm_takes_linears() {
                return Ok(None);
            }
            return span("matmul", || super::sgemm::linear(x, w, b, gelu));
        }
        if super::fast::few_rows(x) {
            return Ok(None);
        }
        span("matmul", || match gelu {
            true => super::amx::linear_gelu(x, w, b, self.act_dtype),
            false => super::amx::linear_into(x, w, b, self.act_dtype),
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.on_kernels(x, false)? {
            return Ok(y);
        }
        #[cfg(feature = "onednn")]
        if self.quant.is_none() && self.scale.is_none() {
            let (w, b) = (self.inner.weight(), self.inner.bias());
            if let Some(y) = span("matmul", || super::onednn::linear(x, w, b))? {
                return span("cast", || super::fast::cast(&y, self.act_dtype));
            }
        }
        if self.quant.is_none() && self.scale.is_none() {
            let (w, b) = (self.inner.weight(), self.inner.bias());
            if let Some(y) = span("matmul", || super::fast::matvec_bf16(x, w, b))? {
                return span("cast", || super::fast::cast(&y, self.act_dtype));
            }
        }
        let x = span("cast", || super::fast::cast(x, self.mm_dtype))?;
        let y = if let Some(q) = &self.quant {
            let b = self
                .inner
                .bias()
                .map(|b| b.to_dtype(self.mm_dtype))
                .transpose()?;
            span("matmul", || q.forward(&x, b.as_ref(), self.mm_dtype))?
        } else if self.inner.weight().dtype() == self.mm_dtype {
            span("matmul", || self.inner.forward(&x))?
        } else {
            let w = span("cast (weights)", || {
                widen(self.inner.weight(), self.mm_dtype)
            })?;
            let w = match &self.scale {
                Some(s) => w.broadcast_mul(s)?,
                None => w,
            };
            let b = self
                .inner
                .bias()
                .map(|b| b.to_dtype(self.mm_dtype))
                .transpose()?;
            span("matmul", || {
                if sgemm_takes_linears() {
                    if let Some(y) = super::sgemm::linear(&x, &w, b.as_ref(), false)? {
                        return Ok(y);
                    }
                }
                Linear::new(w, b).forward(&x)
            })?
        };
        span("cast", || super::fast::cast(&y, self.act_dtype))
    }
}

/// `w` in `dtype`; fp8 on a CUDA card goes through [`super::fp8_cuda`]
/// (candle 0.11.1's own fp8 casts fail there).
fn widen(w: &Tensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if w.dtype() == DType::F8E4M3 && w.device().is_cuda() {
        return super::fp8_cuda::widen(w, dtype);
    }
    super::fast::cast(w, dtype)
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

/// A GGUF weight kept as stored: its blocks in a `QTensor` (`[out, in]`).
///
/// The default multiplies by the weight dequantized to f32 for each call
/// (exact: the forward matches the f32 reference within 1e-4, as the
/// fixtures require); `BATON_GGUF_MATMUL=kernel` uses candle's quantized
/// kernel instead, which quantizes the activations to Q8 first (~3e-3..1e-2
/// relative per matmul, `tests/gguf_dequant.rs` prints it per type).
#[derive(Debug, Clone)]
struct QuantWeight {
    q: std::sync::Arc<candle_core::quantized::QTensor>,
    kernel: bool,
    /// LoRAs as a runtime low-rank branch, `y += (x·Aᵀ)·Bᵀ` (A [R, in],
    /// B [out, R]): the quantized weight is never requantized.
    lora: Option<(Tensor, Tensor)>,
}

impl QuantWeight {
    fn read(in_dim: usize, out_dim: usize, vb: &VarBuilder, packed: &str) -> Result<Self> {
        let p = vb.get_unchecked_dtype(packed, DType::U8)?;
        let q = crate::ggml::unpack(&p, &[out_dim, in_dim], vb.device()).map_err(|e| {
            candle_core::Error::Msg(format!(
                "tensor '{}.weight': the model expects [{out_dim}, {in_dim}]: {e}",
                vb.prefix()
            ))
        })?;
        let kernel = crate::ggml::is_quantized(q.dtype())
            && std::env::var("BATON_GGUF_MATMUL").is_ok_and(|v| v == "kernel");
        use crate::ggml::{LORA_A, LORA_B};
        let (a, b) = (format!("weight{LORA_A}"), format!("weight{LORA_B}"));
        let lora = if vb.contains_tensor(&a) {
            Some((
                vb.get_unchecked_dtype(&a, DType::F32)?,
                vb.get_unchecked_dtype(&b, DType::F32)?,
            ))
        } else {
            None
        };
        Ok(Self {
            q: std::sync::Arc::new(q),
            kernel,
            lora,
        })
    }

    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, mm_dtype: DType) -> Result<Tensor> {
        let y = if self.kernel && mm_dtype == DType::F32 {
            let mm = candle_core::quantized::QMatMul::QTensor(self.q.clone());
            let y = x.apply(&mm)?;
            match bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        } else {
            let w = self.q.dequantize(x.device())?.to_dtype(mm_dtype)?;
            Linear::new(w, bias.cloned()).forward(x)?
        };
        match &self.lora {
            Some((a, b)) => {
                let (a, b) = (a.to_dtype(mm_dtype)?, b.to_dtype(mm_dtype)?);
                let h = Linear::new(a, None).forward(x)?;
                y + Linear::new(b, None).forward(&h)?
            }
            None => Ok(y),
        }
    }
}
