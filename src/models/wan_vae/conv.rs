//! Causal 3-D convolution and the per-call-site temporal cache.
//!
//! candle has no conv3d. Activations here are kept frame-major, [B, T, C, H, W],
//! so a group of frames is a batch of images without a copy, and a conv with a
//! (kt, kh, kw) kernel is the sum over its kt temporal taps of a 2-D conv of
//! the input shifted by that tap ([`Conv3dImpl::PerTap`]).
//!
//! The alternative, folding the taps into the channel axis (one 2-D conv over
//! `cat(x[t], x[t+1], x[t+2])` with a [O, kt*C, kh, kw] kernel,
//! [`Conv3dImpl::Folded`]), does one larger GEMM per tile instead of kt
//! smaller ones but first copies the input kt times, and loses everywhere.
//! Measured with `cargo bench --bench vae_decode -- conv` on the 2-core
//! AMD EPYC dev box (f32, candle 0.11's tiled-im2col conv2d, median of 3,
//! kernel 3x3x3 with 2 history frames, seconds):
//!
//! | layer (C -> O, frames x H x W)             | per-tap | folded |
//! |--------------------------------------------|---------|--------|
//! | 96 -> 96, 4 x 120 x 208                    | 5.73    | 7.65   |
//! | 192 -> 192, 4 x 120 x 208 (real stage 3)   | 11.06   | 15.46  |
//! | 384 -> 384, 1 x 60 x 104 (real middle)     | 1.87    | 2.10   |
//! | 16 -> 16, 4 x 240 x 416 (width-16 VAE)     | 1.18    | 2.35   |
//!
//! Peak memory per conv is the input's NHWC copy inside candle's conv2d plus
//! one output per tap being summed; candle tiles the im2col buffer itself.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// How a 3-D conv is lowered to candle's conv2d.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv3dImpl {
    /// Sum over temporal taps of conv2d(x shifted by the tap, w[:, :, tap]).
    PerTap,
    /// One conv2d over the taps stacked along channels.
    Folded,
}

/// The lowering used by the model (see the module docs for the measurement).
pub const DEFAULT_IMPL: Conv3dImpl = Conv3dImpl::PerTap;

/// Temporal state of one causal call site across the chunks of a decode or
/// encode (Wan's `feat_cache[idx]`).
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// Not visited yet (first chunk).
    #[default]
    Fresh,
    /// Visited, but the conv did not run (upsample3d on the first chunk): the
    /// conv's history starts at the next chunk, as if preceded by zeros.
    Skipped,
    /// The last input frames the conv has seen, [B, n, C, H, W].
    Frames(Tensor),
}

impl Slot {
    fn frames(&self) -> Option<&Tensor> {
        match self {
            Slot::Frames(t) => Some(t),
            _ => None,
        }
    }
}

/// The slots of one chunked pass, handed out in call order: each module asks
/// for its slots in the same order on every chunk, so slot n always belongs
/// to the same call site.
#[derive(Debug, Default)]
pub struct FeatCache {
    slots: Vec<Slot>,
    cursor: usize,
}

impl FeatCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewinds to the first slot; call before each chunk.
    pub fn begin_chunk(&mut self) {
        self.cursor = 0;
    }

    /// The next call site's slot.
    pub fn next_slot(&mut self) -> &mut Slot {
        if self.cursor == self.slots.len() {
            self.slots.push(Slot::Fresh);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    /// Bytes held by cached frames (activation memory that persists between
    /// chunks).
    pub fn bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(Slot::frames)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// `CausalConv3d`: a Conv3d padded by (kh-1)/2, (kw-1)/2 in space and by
/// kt-1 frames in front only, in time.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// The weights in the layout `imp` uses; only that one is kept, so a
    /// loaded VAE holds each weight once (the ledger counts it once).
    kernel: Kernel,
    /// [1, O, 1, 1].
    bias: Tensor,
    c_in: usize,
    c_out: usize,
    kt: usize,
    pad: usize,
}

/// A causal conv's weights, lowered for one strategy.
#[derive(Debug, Clone)]
enum Kernel {
    /// kt × [O, C, kh, kw], contiguous.
    Taps(Vec<Tensor>),
    /// [O, kt·C, kh, kw].
    Folded(Tensor),
}

impl CausalConv3d {
    /// `vb` at the conv (keys `weight` [O, C, kt, kh, kw], `bias` [O]); kh == kw, odd.
    pub fn new(c_in: usize, c_out: usize, kernel: [usize; 3], vb: VarBuilder) -> Result<Self> {
        let [kt, kh, kw] = kernel;
        let w = vb.get((c_out, c_in, kt, kh, kw), "weight")?;
        let bias = vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?;
        Self::from_weights(w, bias, DEFAULT_IMPL)
    }

    /// From a [O, C, kt, kh, kw] weight and [.., O, ..] bias.
    pub fn from_weights(w: Tensor, bias: Tensor, imp: Conv3dImpl) -> Result<Self> {
        let (c_out, c_in, kt, kh, kw) = w.dims5()?;
        if kh != kw || kh % 2 == 0 {
            candle_core::bail!("wan vae: conv kernel {:?} is not square and odd", w.dims())
        }
        let kernel = match imp {
            Conv3dImpl::PerTap => Kernel::Taps(
                (0..kt)
                    .map(|k| w.narrow(2, k, 1)?.squeeze(2)?.contiguous())
                    .collect::<Result<Vec<_>>>()?,
            ),
            Conv3dImpl::Folded => Kernel::Folded(
                w.permute((0, 2, 1, 3, 4))?
                    .contiguous()?
                    .reshape((c_out, kt * c_in, kh, kw))?,
            ),
        };
        Ok(Self {
            kernel,
            bias: bias.reshape((1, c_out, 1, 1))?,
            c_in,
            c_out,
            kt,
            pad: (kh - 1) / 2,
        })
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// The conv over x [B, T, C, H, W] with no temporal padding ("valid" in
    /// time), temporal stride `stride`; returns [B, T_out, O, H, W].
    pub fn forward_valid(&self, x: &Tensor, stride: usize) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        if c != self.c_in {
            candle_core::bail!(
                "wan vae: conv expects {} channels, got input {:?}",
                self.c_in,
                x.dims()
            )
        }
        if t < self.kt || stride == 0 {
            candle_core::bail!(
                "wan vae: conv over {t} frames needs at least {} (input {:?})",
                self.kt,
                x.dims()
            )
        }
        let t_out = (t - self.kt) / stride + 1;
        // Frames k, k + stride, ... k + (t_out - 1) * stride as a batch of images.
        let shifted = |k: usize| -> Result<Tensor> {
            let xs = if stride == 1 {
                x.narrow(1, k, t_out)?
            } else {
                let idx: Vec<u32> = (0..t_out).map(|j| (k + j * stride) as u32).collect();
                x.index_select(&Tensor::new(idx, x.device())?, 1)?
            };
            xs.reshape((b * t_out, c, h, w))
        };
        let y = match &self.kernel {
            Kernel::Taps(taps) => {
                let mut acc: Option<Tensor> = None;
                for (k, wk) in taps.iter().enumerate() {
                    let y = shifted(k)?.conv2d(wk, self.pad, 1, 1, 1)?;
                    acc = Some(match acc {
                        None => y,
                        Some(a) => (a + y)?,
                    });
                }
                acc.expect("kt >= 1 by construction")
            }
            Kernel::Folded(folded) => {
                let parts = (0..self.kt)
                    .map(|k| shifted(k)?.reshape((b, t_out, c, h, w)))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 2)?
                    .reshape((b * t_out, self.kt * c, h, w))?
                    .conv2d(folded, self.pad, 1, 1, 1)?
            }
        };
        y.broadcast_add(&self.bias)?
            .reshape((b, t_out, self.c_out, h, w))
    }

    /// The causal conv over the whole sequence x [B, T, C, H, W] (zeros before
    /// the first frame); returns [B, T, O, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_cached(x, &mut Slot::Fresh)
    }

    /// The causal conv over one chunk, continuing the sequence whose last input
    /// frames are in `slot`; updates `slot` with this chunk's. Chunk by chunk
    /// this equals [`CausalConv3d::forward`] over the concatenated chunks.
    pub fn forward_cached(&self, x: &Tensor, slot: &mut Slot) -> Result<Tensor> {
        let need = self.kt - 1;
        if need == 0 {
            return self.forward_valid(x, 1);
        }
        let (b, _, c, h, w) = x.dims5()?;
        let hist = slot.frames().cloned();
        let have = hist.as_ref().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
        let mut parts = Vec::with_capacity(3);
        if have < need {
            parts.push(Tensor::zeros(
                (b, need - have, c, h, w),
                x.dtype(),
                x.device(),
            )?);
        }
        if let Some(hist) = hist {
            parts.push(hist);
        }
        parts.push(x.clone());
        let full = Tensor::cat(&parts, 1)?;
        drop(parts);
        let n = full.dim(1)?;
        // A copy, so the cache does not keep the whole padded chunk alive.
        *slot = Slot::Frames(full.narrow(1, n - need, need)?.copy()?);
        self.forward_valid(&full, 1)
    }
}

/// A Conv2d over frames: x [N, C, H, W].
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    /// [1, O, 1, 1].
    bias: Tensor,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, k, k), "weight")?,
            bias: vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?,
            stride,
            pad,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.pad, self.stride, 1, 1)?
            .broadcast_add(&self.bias)
    }
}

/// Dtype the VAE computes in on a device: f32 on the CPU, whose conv2d and
/// matmul have no bf16/f16 kernels in candle 0.11.
pub fn compute_dtype(dtype: DType, device: &candle_core::Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        dtype
    }
}
